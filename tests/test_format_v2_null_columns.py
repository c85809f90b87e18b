"""Checkpoint format version 2: a job event part leaves out the columns that are null in
every one of its rows (an ``assigned`` part held 15 of them), except those every part
stores (``state.ALWAYS_STORED``); every reader inserts them as nulls, so what is read from
a folder of such parts is what is read from the same events stored with every column.
A version 1 folder keeps storing every column. The Parquet files are read directly
(pyarrow) to see what is on disk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

import batchata_df
from batchata_df.state import (
    ALWAYS_STORED,
    JOB_EVENTS,
    StateStore,
    lost_attempts,
    spent_usd,
    table_parts,
)
from tests.test_format_v2 import as_version_1, manifest_version

FP = {"model": "m"}
IDS = [f"j{i}" for i in range(6)]


def stored(part: Path) -> list[str]:
    """The columns a part holds on disk."""
    return pq.read_schema(part).names


def write_events(folder: Path) -> None:
    """Events of every kind, each part with other columns null in every row."""
    store = StateStore(folder, FP)
    store.append_batch(batch_key="k1", provider="openai", model="m", status="intent", n_jobs=4)
    store.append_jobs(
        pl.DataFrame({"job_id": IDS[:4]}).with_columns(
            batch_key=pl.lit("k1"), provider=pl.lit("openai"), model=pl.lit("m"),
            status=pl.lit("assigned"), est_cost_usd=pl.lit(None),
        )
    )  # fmt: skip
    store.append_batch(batch_key="k1", status="submitted", provider_batch_id="b1")
    store.append_jobs(
        pl.DataFrame(
            {
                "job_id": IDS[:4],
                "batch_key": "k1",
                "provider": "openai",
                "model": "m",
                "provider_batch_id": "b1",
                "status": ["completed", "completed", "failed", "cancelled"],
                "error": [None, None, "schema_validation: no x", "cancelled: stop"],
                "answer": ['{"x":1}', '{"x":2}', None, None],
                "raw": ['{"x":1}', '{"x": 2}', '{"y":3}', None],
                "input_tokens": [10, 11, 12, None],
                "output_tokens": [5, 6, 7, None],
                "cost_usd": [0.001, 0.002, 0.003, None],
            }
        )
    )
    # A realtime request in flight (est_cost_usd set), and one of a capped run.
    store.append_jobs(
        pl.DataFrame({"job_id": [IDS[4]], "batch_key": "rt", "provider": "openai",
                      "model": "m", "status": "assigned", "mode": "realtime",
                      "est_cost_usd": 0.5})
    )  # fmt: skip
    store.append_jobs(
        pl.DataFrame({"job_id": [IDS[5]], "status": "completed", "answer": "{}",
                      "raw": "{}", "answered_by": "m2", "cost_usd": 0.0})
    )  # fmt: skip
    store.append_batch(batch_key="k1", status="collected")


def widen(folder: Path) -> None:
    """Rewrite every job part of ``folder`` with every column (as a writer that never left
    one out would have), keeping its key-value metadata."""
    for part in table_parts(folder / "jobs"):
        meta = {k: v for k, v in (pq.read_metadata(part).metadata or {}).items()
                if k != b"ARROW:schema"}  # fmt: skip
        frame = pl.from_arrow(pq.read_table(part))
        assert isinstance(frame, pl.DataFrame)
        full = frame.select(
            pl.col(c).cast(t) if c in frame.columns else pl.lit(None, dtype=t).alias(c)
            for c, t in JOB_EVENTS.items()
        )
        pq.write_table(full.to_arrow().replace_schema_metadata(meta), part)


def readings(folder: Path) -> dict[str, pl.DataFrame]:
    """What every reader gives from ``folder`` (frames, sorted where order is not kept)."""
    store = StateStore(folder, FP, readonly=True)
    ids = pl.Series("job_id", IDS)
    index = store.job_index()
    try:
        indexed = store.snapshot(ids, index)
        latest = store.latest_status(ids, index)
    finally:
        index.close()
    out = {
        "job_events": store.job_events(),
        "job_state": store.job_state(),
        "batch_state": store.batch_state(),
        "billed": store.billed().sort("job_id"),
        "snapshot": store.snapshot()[0].sort("job_id"),
        "snapshot_ids": store.snapshot(ids)[0].sort("job_id"),
        "snapshot_index": indexed[0].sort("job_id"),
        "latest_status": latest.sort("job_id"),
        "assigned": store.assigned(pl.Series(["k1", "rt"])).sort("job_id"),
        "lost_attempts": lost_attempts(folder),
        "spent": pl.DataFrame({"usd": [spent_usd(folder), store.spent()]}),
        "answer_usage": store.answer_usage().collect(),
    }
    for view in ("jobs", "job_events", "batches", "batch_events"):
        frame = batchata_df.sql(f"select * exclude (run) from {view}", folder)
        out[f"sql_{view}"] = frame.sort(frame.columns[:2] if view != "job_events" else "seq")
    return out


def test_a_version_2_part_stores_only_the_columns_not_null_in_every_row(tmp_path):
    folder = tmp_path / "s"
    write_events(folder)
    parts = table_parts(folder / "jobs")
    assert len(parts) == 4
    assigned, terminal, realtime, capped = (stored(p) for p in parts)
    assert assigned == [
        "seq", "ts", "job_id", "batch_key", "provider", "model", "status", "answer", "raw"
    ]  # fmt: skip
    assert terminal == [
        "seq", "ts", "job_id", "batch_key", "provider", "model", "provider_batch_id",
        "status", "error", "answer", "input_tokens", "output_tokens", "cost_usd", "raw",
    ]  # fmt: skip
    assert realtime == [
        "seq", "ts", "job_id", "batch_key", "provider", "model", "status", "answer",
        "est_cost_usd", "raw", "mode",
    ]  # fmt: skip
    assert capped == ["seq", "ts", "job_id", "status", "answer", "cost_usd", "raw",
                      "answered_by"]  # fmt: skip
    # raw is stored null (it is the answer) on the capped part, and kept as a column.
    assert pq.read_table(parts[3]).column("raw").to_pylist() == [None]
    # Every part keeps the columns the SQL views and the store recognise a part by.
    for part in parts:
        assert set(ALWAYS_STORED) <= set(stored(part))
    # Batch parts are not narrowed (one row each: their columns are the schema's).
    assert all(len(stored(p)) == 12 for p in table_parts(folder / "batches"))


def test_every_reader_gives_the_same_from_narrow_parts_as_from_full_ones(tmp_path):
    narrow, full = tmp_path / "narrow", tmp_path / "full"
    write_events(narrow)
    shutil.copytree(narrow, full)
    widen(full)
    assert len(stored(table_parts(full / "jobs")[0])) == len(JOB_EVENTS)
    assert len(stored(table_parts(narrow / "jobs")[0])) == 9
    got, want = readings(narrow), readings(full)
    assert got.keys() == want.keys()
    for name, frame in want.items():
        assert frame.height > 0 or name in ("lost_attempts",), name
        assert got[name].equals(frame), name
    # Spot values: the assigned events' nulls and the terminal ones' values came back.
    events = got["job_events"]
    batch_assigned = events.filter(pl.col("mode").is_null(), status="assigned")
    assert batch_assigned["error"].to_list() == [None] * 4
    assert events.filter(job_id="j5")["answered_by"].to_list() == ["m2"]
    assert got["lost_attempts"]["job_id"].to_list() == ["j4"]
    jobs = got["sql_jobs"]
    assert jobs.filter(job_id="j1")["raw"].to_list() == ['{"x": 2}']
    assert jobs.filter(job_id="j0")["raw"].to_list() == ['{"x":1}']


def test_compaction_and_dropping_jobs_read_narrow_parts_as_full_ones(tmp_path):
    narrow, full = tmp_path / "narrow", tmp_path / "full"
    write_events(narrow)
    shutil.copytree(narrow, full)
    widen(full)
    for folder in (narrow, full):
        assert StateStore(folder, FP).compact() > 0
        assert StateStore(folder, FP).drop_jobs(pl.Series(["j3"])) == 2  # its 2 events
    got, want = readings(narrow), readings(full)
    for name, frame in want.items():
        assert got[name].equals(frame), name
    assert "j3" not in got["job_events"]["job_id"].to_list()


def test_a_folder_of_only_assigned_parts_reads_in_sql_and_resumes(tmp_path):
    # A run stopped after sending: its parts hold assigned events alone (no answer or raw
    # values); the views still read raw from them.
    folder = tmp_path / "s"
    store = StateStore(folder, FP)
    store.append_jobs(pl.DataFrame({"job_id": ["a", "b"], "status": "assigned",
                                    "batch_key": "k"}))  # fmt: skip
    got = batchata_df.sql("select job_id, status, raw, answer from jobs order by job_id", folder)
    assert got.rows() == [("a", "assigned", None, None), ("b", "assigned", None, None)]
    again = StateStore(folder, FP)
    assert again.job_state()["status"].to_list() == ["assigned", "assigned"]


def test_repair_rebuilds_a_lost_manifest_from_narrow_parts(tmp_path):
    folder = tmp_path / "s"
    write_events(folder)
    before = readings(folder)
    (folder / "manifest.json").unlink()
    report = batchata_df.repair(folder, apply=True)
    assert report.manifest is not None and report.manifest.format_version == 2
    assert manifest_version(folder) == 2
    after = readings(folder)
    for name, frame in before.items():
        assert after[name].equals(frame), name


def test_a_version_1_folder_keeps_storing_every_column(tmp_path):
    folder = tmp_path / "s"
    StateStore(folder, FP).append_jobs(pl.DataFrame({"job_id": ["a"], "status": "assigned"}))
    as_version_1(folder)
    StateStore(folder, FP).append_jobs(pl.DataFrame({"job_id": ["b"], "status": "assigned"}))
    newest = table_parts(folder / "jobs")[-1]
    assert stored(newest) == list(JOB_EVENTS)
    assert json.loads((folder / "manifest.json").read_text())["format_version"] == 1


@pytest.mark.parametrize("provider_model", ["gpt-4.1-mini", "gemini-2.5-flash"])
def test_a_run_writes_narrow_assigned_parts_and_resumes_from_them(emu, tmp_path, provider_model):
    state = tmp_path / "s"
    df = pl.DataFrame({"text": [f"row {i}" for i in range(12)]})
    args = {"model": provider_model, "prompt": "{text}", "state": state, "items_per_batch": 5}
    first = df.pipe(batchata_df.batch_llm, **args)
    assert first["_status"].to_list() == ["completed"] * 12
    assigned = [
        p for p in table_parts(state / "jobs")
        if pq.read_table(p).column("status").to_pylist()[0] == "assigned"
    ]  # fmt: skip
    assert len(assigned) == 3
    for part in assigned:
        # 9 of the 23 columns: the rest were null in every row.
        assert stored(part) == ["seq", "ts", "job_id", "batch_key", "provider", "model",
                                "status", "answer", "raw"]  # fmt: skip
    posts = len([e for e in emu.log() if e["method"] == "POST"
                 and not e["path"].startswith("/_emulator")])  # fmt: skip
    again = df.pipe(batchata_df.batch_llm, **args)
    assert len([e for e in emu.log() if e["method"] == "POST"
                and not e["path"].startswith("/_emulator")]) == posts  # fmt: skip
    assert again.equals(first)
