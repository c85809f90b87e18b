"""DuckDB views over real checkpoint folders written by StateStore."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

# The duckdb extra is installed for the tests: a missing one must fail, not skip.
import duckdb
import polars as pl
import pytest

from batchata_df.errors import StateError
from batchata_df.query import (
    batch_durations,
    connect,
    cost_by_status,
    estimated_vs_actual,
    failures_by_error,
    sql,
)
from batchata_df.state import BATCH_EVENTS, JOB_EVENTS, StateStore


def _run(folder: Path) -> StateStore:
    """A small run: 3 jobs, one retried into a second batch, one failed."""
    store = StateStore(folder, {"model": "gpt-4.1-mini"})
    meta = {"provider": "openai", "model": "gpt-4.1-mini"}
    store.append_batch(batch_key="k1", status="intent", n_jobs=3, **meta)
    store.append_jobs(
        pl.DataFrame({"job_id": ["a", "b", "c"], "status": "assigned", "batch_key": "k1", **meta})
    )
    store.append_batch(batch_key="k1", status="submitted", provider_batch_id="batch_1", **meta)
    store.append_jobs(
        pl.DataFrame(
            {
                "job_id": ["a", "b", "c"],
                "status": ["completed", "failed", "failed"],
                "error": [None, "refusal: no", "expired: too slow"],
                "provider_batch_id": "batch_1",
                "input_tokens": [100, 50, None],
                "output_tokens": [10, 0, None],
                "cost_usd": [0.01, 0.001, None],
            }
        )
    )
    store.append_batch(batch_key="k1", status="collected", provider_status="completed", **meta)
    # c is retried: re-assigned to a new batch, superseding its failure
    store.append_batch(batch_key="k2", status="intent", n_jobs=1, **meta)
    store.append_jobs(
        pl.DataFrame({"job_id": ["c"], "status": "assigned", "batch_key": "k2", **meta})
    )
    return store


def test_jobs_view_is_latest_event_per_job(tmp_path: Path) -> None:
    _run(tmp_path)
    jobs = sql("SELECT * FROM jobs ORDER BY job_id", tmp_path)
    assert jobs.get_column("status").to_list() == ["completed", "failed", "assigned"]
    assert jobs.get_column("error").to_list() == [None, "refusal: no", None]
    assert jobs.get_column("batch_key").to_list() == ["k1", "k1", "k2"]
    # values not repeated by later events are kept (a's completion carries no batch_key)
    assert jobs.get_column("provider").to_list() == ["openai"] * 3
    assert jobs.get_column("provider_batch_id").to_list() == ["batch_1", "batch_1", "batch_1"]
    assert jobs.get_column("cost_usd").to_list() == [0.01, 0.001, None]
    assert jobs.get_column("run").to_list() == [str(tmp_path)] * 3
    assert jobs.get_column("updated_at").dtype == pl.Datetime("us", "UTC")
    assert jobs.get_column("est_cost_usd").null_count() == 3
    expected = {
        "run", "job_id", "status", "error", "provider", "model", "batch_key",
        "provider_batch_id", "answer", "raw", "response", "input_tokens", "output_tokens",
        "cached_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd", "cache_saved_usd",
        "attempts", "est_cost_usd", "first_seen_at", "updated_at", "mode", "answered_by",
    }  # fmt: skip
    assert set(jobs.columns) == expected
    assert jobs.get_column("mode").to_list() == ["batch"] * 3


def test_event_views_and_batches(tmp_path: Path) -> None:
    _run(tmp_path)
    events = sql("SELECT * FROM job_events", tmp_path)
    assert events.height == 7
    assert events.columns == ["run", *JOB_EVENTS]
    assert sql("SELECT * FROM batch_events", tmp_path).columns == ["run", *BATCH_EVENTS]
    batches = sql("SELECT * FROM batches ORDER BY batch_key", tmp_path)
    k1, k2 = batches.rows(named=True)
    assert k1["status"] == "collected"
    assert k1["provider_batch_id"] == "batch_1"
    assert k1["provider_status"] == "completed"
    assert k1["n_jobs"] == 3
    assert k1["submitted_at"] <= k1["collected_at"]
    assert k1["duration_s"] >= 0
    assert k2["status"] == "intent"
    assert k2["submitted_at"] is None
    assert k2["duration_s"] is None
    runs = sql("SELECT * FROM runs", tmp_path)
    assert runs.height == 1
    assert len(runs.item(0, "run_id")) == 16
    assert '"model": "gpt-4.1-mini"' in runs.item(0, "fingerprint")


def test_empty_folder_has_typed_empty_views(tmp_path: Path) -> None:
    StateStore(tmp_path, {})
    for view, schema in (("job_events", JOB_EVENTS), ("batch_events", BATCH_EVENTS)):
        out = sql(f"SELECT * FROM {view}", tmp_path)
        assert out.height == 0
        assert out.schema == pl.Schema({"run": pl.String(), **schema})
    jobs = sql("SELECT * FROM jobs", tmp_path)
    assert jobs.height == 0
    assert jobs.schema["cost_usd"] == pl.Float64
    assert sql("SELECT * FROM batches", tmp_path).height == 0
    assert cost_by_status(tmp_path).height == 0
    # a folder without even the table subfolders (copied manifest only)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "manifest.json").write_bytes((tmp_path / "manifest.json").read_bytes())
    assert sql("SELECT count(*) AS n FROM jobs", bare).item() == 0


def test_hidden_temporary_parts_are_ignored(tmp_path: Path) -> None:
    _run(tmp_path)
    (tmp_path / "jobs" / ".tmp-part-0001.parquet").write_bytes(b"half written")
    assert sql("SELECT count(*) FROM job_events", tmp_path).item() == 7


def test_several_folders_and_glob(tmp_path: Path) -> None:
    _run(tmp_path / "shard-0")
    _run(tmp_path / "shard-1")
    StateStore(tmp_path / "shard-2", {})
    by_run = sql(
        "SELECT run, count(*) AS n FROM jobs GROUP BY run ORDER BY run", tmp_path / "shard-*"
    )
    assert by_run.rows() == [(str(tmp_path / "shard-0"), 3), (str(tmp_path / "shard-1"), 3)]
    listed = sql("SELECT count(*) FROM jobs", [tmp_path / "shard-0", str(tmp_path / "shard-1")])
    assert listed.item() == 6
    assert sql("SELECT count(*) FROM runs", str(tmp_path / "shard-*")).item() == 3


def test_extra_columns_from_newer_parts(tmp_path: Path) -> None:
    _run(tmp_path)
    # a part written by a later version that records the admission estimate
    part = pl.DataFrame(
        {"seq": [1], "job_id": ["a"], "status": ["assigned"], "est_cost_usd": [0.02]}
    ).with_columns(pl.lit(None, dtype=pl.Datetime("us", "UTC")).alias("ts"))
    part.write_parquet(tmp_path / "jobs" / "part-00000000000000000001-aaaaaa.parquet")
    jobs = sql("SELECT job_id, status, est_cost_usd FROM jobs ORDER BY job_id", tmp_path)
    assert jobs.rows() == [("a", "completed", 0.02), ("b", "failed", None), ("c", "assigned", None)]
    est = estimated_vs_actual(tmp_path)
    assert est.select("n_jobs", "n_estimated", "est_cost_usd", "cost_usd").row(0) == (
        1, 1, 0.02, 0.01,
    )  # fmt: skip
    assert est.item(0, "actual_over_estimate") == pytest.approx(0.5)


def test_ready_made_queries(tmp_path: Path) -> None:
    _run(tmp_path)
    costs = cost_by_status(tmp_path)
    assert costs.select("status", "n_jobs", "input_tokens", "cost_usd").rows() == [
        ("assigned", 1, None, None),
        ("completed", 1, 100, 0.01),
        ("failed", 1, 50, 0.001),
    ]
    assert failures_by_error(tmp_path).select("error_class", "n_jobs").rows() == [("refusal", 1)]
    assert estimated_vs_actual(tmp_path).item(0, "est_cost_usd") is None
    durations = batch_durations(tmp_path)
    assert durations.get_column("batch_key").to_list() == ["k1", "k2"]


def test_snapshot_is_consistent_while_parts_are_written(tmp_path: Path) -> None:
    store = StateStore(tmp_path, {})
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        i = 0
        while not stop.is_set():
            ids = [f"j{i}-{k}" for k in range(20)]
            store.append_jobs(pl.DataFrame({"job_id": ids, "status": "assigned"}))
            store.append_jobs(pl.DataFrame({"job_id": ids, "status": "completed", "cost_usd": 1.0}))
            i += 1
            written[0] = i

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(8):
            con = connect(tmp_path)
            n_events = con.execute("SELECT count(*) FROM job_events").fetchall()[0][0]
            # Wait (on the writer's progress, not a clock) until more parts were written
            # after this connection opened: its views must not see them.
            seen = written[0]
            deadline = time.monotonic() + 60
            while written[0] < seen + 2:
                assert time.monotonic() < deadline and thread.is_alive()
                time.sleep(0.005)
            again = con.execute("SELECT count(*) FROM job_events").fetchall()[0][0]
            assert again == n_events
            jobs, distinct = con.execute(
                "SELECT (SELECT count(*) FROM jobs), "
                "(SELECT count(DISTINCT job_id) FROM job_events)"
            ).fetchall()[0]
            assert jobs == distinct
            assert n_events % 20 == 0  # whole parts only
            con.close()
    finally:
        stop.set()
        thread.join()
    assert written[0] > 0
    final = sql("SELECT count(*) AS n, sum(cost_usd) AS c FROM jobs", tmp_path)
    assert final.row(0) == (written[0] * 20, written[0] * 20.0)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="does not exist"):
        sql("SELECT 1", tmp_path / "nope")
    with pytest.raises(StateError, match="no checkpoint folder"):
        sql("SELECT 1", [])


def test_missing_duckdb_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    StateStore(tmp_path, {})
    monkeypatch.setitem(sys.modules, "duckdb", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'batchata-df\[duckdb\]'"):
        sql("SELECT 1", tmp_path)


def test_importing_query_does_not_import_duckdb() -> None:
    import subprocess

    code = "import batchata_df.query, sys; print('duckdb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_jobs_view_adds_up_every_billed_attempt(tmp_path: Path) -> None:
    store = StateStore(tmp_path, {"model": "m"})
    for key, cost in (("k1", 0.5), ("k2", 0.25)):
        store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": ["assigned"],
                                        "batch_key": [key]}))
        store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": ["failed"],
                                        "batch_key": [key], "cost_usd": [cost],
                                        "input_tokens": [10], "output_tokens": [5]}))
    # A crash between writing the outcomes and the batch's "collected" event makes the
    # resumed run write the same outcomes again: they count once.
    store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": ["failed"], "batch_key": ["k2"],
                                    "cost_usd": [0.25], "input_tokens": [10],
                                    "output_tokens": [5]}))
    row = sql("SELECT * FROM jobs", tmp_path).row(0, named=True)
    assert row["cost_usd"] == 0.75 and row["attempts"] == 2 and row["input_tokens"] == 20
    assert store.billed()["cost_usd"].to_list() == [0.75]


def _many_jobs(folder: Path, n: int) -> StateStore:
    """``n`` jobs, each assigned then completed, a tenth of them collected twice."""
    store = StateStore(folder, {"model": "gpt-4.1-mini"})
    ids = pl.Series("job_id", [f"job-{i:07d}" for i in range(n)])
    base = pl.DataFrame({"job_id": ids, "batch_key": "k1", "provider": "openai",
                         "model": "gpt-4.1-mini"})
    store.append_jobs(base.with_columns(pl.lit("assigned").alias("status")))
    done = base.with_columns(
        pl.lit("completed").alias("status"),
        pl.concat_str(pl.lit('{"label": "'), pl.col("job_id"), pl.lit('"}')).alias("answer"),
        pl.lit(1000).alias("input_tokens"),
        pl.lit(100).alias("output_tokens"),
        pl.lit(0.25).alias("cost_usd"),
    )
    store.append_jobs(done)
    store.append_jobs(done.head(n // 10))  # re-collected after a crash: billed once
    return store


def test_connections_are_memory_bounded_and_spill_with_the_same_answers(
    tmp_path: Path,
) -> None:
    """A connection we create has a memory limit and a private spill folder; a query that
    does not fit spills and gives the same answer; the folder goes with the connection."""
    import tempfile

    n = 400_000
    _many_jobs(tmp_path / "st", n)
    query = "SELECT status, count(*) AS n, sum(cost_usd) AS usd FROM jobs GROUP BY status"
    con = connect(tmp_path / "st")
    limit, spill, ordered = con.execute(
        "SELECT current_setting('memory_limit'), current_setting('temp_directory'), "
        "current_setting('preserve_insertion_order')"
    ).fetchone()  # type: ignore[misc]
    assert limit == "953.6 MiB"  # 1GB, as DuckDB prints it
    assert Path(spill).parent == Path(tempfile.gettempdir())
    assert Path(spill).name.startswith("batchata-df-duckdb-")
    assert ordered is False
    roomy = con.execute(query).fetchall()
    # Squeezed well below what grouping every job needs in memory (more than 100MB here):
    # without a place to spill it fails, with the spill folder it gives the same answer.
    squeeze = ["SET memory_limit = '60MB'", "SET threads = 1"]
    nowhere = connect(tmp_path / "st")
    for setting in [*squeeze, "SET temp_directory = ''"]:
        nowhere.execute(setting)
    with pytest.raises(duckdb.OutOfMemoryException):
        nowhere.execute(query).fetchall()
    nowhere.close()
    for setting in squeeze:
        con.execute(setting)
    squeezed = con.execute(query).fetchall()
    assert roomy == squeezed == [("completed", n, pytest.approx(0.25 * n))]
    assert Path(spill).is_dir()
    con.close()
    assert not Path(spill).exists()
    assert sql(query, tmp_path / "st").rows() == roomy
    assert not list(Path(tempfile.gettempdir()).glob(f"batchata-df-duckdb-{os.getpid()}-*"))


def test_a_connection_passed_in_keeps_its_settings(tmp_path: Path) -> None:
    _run(tmp_path)
    own = duckdb.connect(":memory:", config={"memory_limit": "3GB"})
    con = connect(tmp_path, connection=own)
    assert con.execute("SELECT current_setting('memory_limit')").fetchone() == ("2.7 GiB",)
    assert con.execute("SELECT count(*) FROM jobs").fetchone() == (3,)
