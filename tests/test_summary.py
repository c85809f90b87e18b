"""The per-job summary a streaming run writes for ``sql`` (``batchata_df.summary``).

What is checked: over any history of job events (retries, failures, cancellations,
re-collected batches, realtime jobs, jobs in flight, missing values), the summary's rows
are the rows the ``jobs`` view groups from the events (hypothesis, against real DuckDB
over real Parquet parts); a streaming run writes a valid summary and ``sql`` reads it (and
gives what the grouping gives); a part written afterwards makes it stale, and the view
groups the events again; a folder holding jobs that the call's input did not have gets no
summary; a summary is read per folder, beside folders without one.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from pydantic import BaseModel

from batchata_df import batch_llm, sql
from batchata_df import summary as summary_module
from batchata_df.jobindex import JobIndex
from batchata_df.state import JOB_EVENTS, StateStore, table_parts
from batchata_df.summary import SUMMARY_DIR, SUMMARY_FILE, SummaryWriter, summarize, valid_summary

ALL = "SELECT * FROM jobs ORDER BY run, job_id"


def _summary_path(folder: Path) -> Path:
    return folder / SUMMARY_DIR / SUMMARY_FILE


def write_summary(folder: Path) -> bool:
    """Summarize every event of ``folder`` (as a streaming run's sink pass does, per job)."""
    parts = table_parts(folder / "jobs")
    index = JobIndex(parts)
    writer = SummaryWriter(folder, parts, index.n_events)
    events = StateStore(folder, {"model": "m"}).job_events()
    ids = events.get_column("job_id").drop_nulls().unique(maintain_order=True)
    for start in range(0, ids.len(), 3):  # in slices of jobs, as the sink pass does
        some = ids.slice(start, 3)
        writer.add(events.filter(pl.col("job_id").is_in(some.implode())))
    return writer.close()


def grouped(folder: Path) -> pl.DataFrame:
    """The jobs view grouped from the events (any summary moved out of the way)."""
    path = _summary_path(folder)
    aside = path.with_name("aside.parquet")
    if path.exists():
        path.rename(aside)
    try:
        assert valid_summary(folder) is None
        return sql(ALL, folder)
    finally:
        if aside.exists():
            aside.rename(path)


def assert_same_jobs(got: pl.DataFrame, expected: pl.DataFrame) -> None:
    # Sums of several attempts' costs may differ in the last bit (addition order).
    assert_frame_equal(got, expected, check_exact=False, rel_tol=1e-12, abs_tol=1e-15)


# -- any event history: summary rows == the view's grouping ---------------------------

STATUS = st.sampled_from(["assigned", "completed", "failed", "cancelled", None])
MAYBE_TEXT = st.one_of(st.none(), st.sampled_from(["x", "y", "refusal: no", '{"a":1}']))
MAYBE_INT = st.one_of(st.none(), st.integers(0, 1000))
MAYBE_USD = st.one_of(st.none(), st.floats(0, 1, allow_nan=False).map(lambda v: round(v, 6)))
EVENT = st.fixed_dictionaries(
    {
        "job_id": st.sampled_from(["a", "b", "c", "d"]),
        "status": STATUS,
        "batch_key": st.one_of(st.none(), st.sampled_from(["k1", "k2", "k3"])),
        "provider": st.one_of(st.none(), st.sampled_from(["openai", "anthropic"])),
        "model": st.one_of(st.none(), st.sampled_from(["m1", "m2"])),
        "provider_batch_id": st.one_of(st.none(), st.sampled_from(["batch_1", "batch_2"])),
        "error": MAYBE_TEXT,
        "answer": MAYBE_TEXT,
        "raw": MAYBE_TEXT,
        "response": MAYBE_TEXT,
        "input_tokens": MAYBE_INT,
        "output_tokens": MAYBE_INT,
        "cached_tokens": MAYBE_INT,
        "cache_write_tokens": MAYBE_INT,
        "reasoning_tokens": MAYBE_INT,
        "cost_usd": MAYBE_USD,
        "est_cost_usd": MAYBE_USD,
        "cache_saved_usd": MAYBE_USD,
        "mode": st.one_of(st.none(), st.just("realtime")),
        "answered_by": st.one_of(st.none(), st.sampled_from(["g1", "g2"])),
    }
)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip


@FAST
@given(parts=st.lists(st.lists(EVENT, min_size=1, max_size=6), min_size=1, max_size=4))
def test_summary_rows_equal_the_jobs_view_over_any_event_history(tmp_path_factory, parts):
    folder = tmp_path_factory.mktemp("s")
    store = StateStore(folder, {"model": "m"})
    for events in parts:  # each list one part, written in order (seq and ts increase)
        store.append_jobs(pl.DataFrame(events, schema=JOB_EVENTS, orient="row").drop("seq", "ts"))
    expected = grouped(folder)

    assert write_summary(folder)
    assert valid_summary(folder) == _summary_path(folder)
    got = sql(ALL, folder)

    assert got.height == expected.height == len({e["job_id"] for p in parts for e in p})
    assert_same_jobs(got, expected)


def test_a_job_billed_in_two_batches_and_recollected_once_adds_each_batch_once(tmp_path):
    """The grouped path of :func:`summarize` (a job with two billed attempts), by hand."""
    store = StateStore(tmp_path, {"model": "m"})
    base = {"job_id": "a", "provider": "openai", "model": "m1"}
    store.append_jobs(pl.DataFrame([{**base, "status": "assigned", "batch_key": "k1",
                                     "est_cost_usd": 0.5}]))  # fmt: skip
    failed = {**base, "status": "failed", "batch_key": "k1", "error": "expired: late",
              "cost_usd": 0.25, "input_tokens": 10}  # fmt: skip
    store.append_jobs(pl.DataFrame([failed]))
    store.append_jobs(pl.DataFrame([failed]))  # the batch collected again after a crash
    store.append_jobs(pl.DataFrame([{**base, "status": "assigned", "batch_key": "k2"}]))
    store.append_jobs(pl.DataFrame([{**base, "status": "completed", "batch_key": "k2",
                                     "answer": "{}", "cost_usd": 0.5, "input_tokens": 12}]))
    summary = summarize(store.job_events()).row(0, named=True)
    assert summary["attempts"] == 2
    assert summary["cost_usd"] == 0.75
    assert summary["input_tokens"] == 22
    assert summary["status"] == "completed"
    assert summary["error"] is None
    assert summary["est_cost_usd"] == 0.5
    assert summary["batch_key"] == "k2"
    assert summary["n_events"] == 5
    assert write_summary(tmp_path)
    assert_same_jobs(sql(ALL, tmp_path), grouped(tmp_path))



def test_answered_by_is_the_latest_events_so_a_retry_answered_by_the_model_asked_clears_it(
    tmp_path,
):
    """``answered_by`` names the model that gave the row's latest answer (the event the
    ``answer``, ``raw`` and ``error`` come from): a first attempt a provider routed to a
    successor, retried and answered by the model asked, shows null in the summary and in
    the view's grouping alike, and the routed one while it is the latest."""
    store = StateStore(tmp_path, {"model": "m"})
    base = {"job_id": "a", "provider": "gemini", "model": "gemini-2.5-pro"}
    routed = {**base, "batch_key": "k1", "answered_by": "gemini-3.8-flash", "cost_usd": 0.5,
              "input_tokens": 10}  # fmt: skip
    store.append_jobs(pl.DataFrame([{**base, "status": "assigned", "batch_key": "k1"}]))
    store.append_jobs(pl.DataFrame([{**routed, "status": "failed", "error": "invalid"}]))
    store.append_jobs(pl.DataFrame([{**base, "status": "assigned", "batch_key": "k2"}]))
    # In flight again: no answer yet, so no model that gave it.
    assert summarize(store.job_events()).row(0, named=True)["answered_by"] is None
    store.append_jobs(pl.DataFrame([{**base, "status": "completed", "batch_key": "k2",
                                     "answer": "{}", "cost_usd": 0.25, "input_tokens": 12}]))
    store.append_jobs(pl.DataFrame([{**routed, "job_id": "b", "status": "completed",
                                     "answer": "{}"}]))  # fmt: skip
    summary = summarize(store.job_events()).sort("job_id")
    assert summary.select("job_id", "status", "answered_by", "attempts").rows() == [
        ("a", "completed", None, 2), ("b", "completed", "gemini-3.8-flash", 1)]
    assert sql(ALL, tmp_path).select("job_id", "answered_by").rows() == [
        ("a", None), ("b", "gemini-3.8-flash")]
    assert write_summary(tmp_path)
    assert_same_jobs(sql(ALL, tmp_path), grouped(tmp_path))

# -- the pairs without grouping (summary._paired) against the grouping ----------------

MAYBE_TS = st.one_of(st.none(), st.integers(0, 10**6))
PAIR_FIELDS = {k: v for k, v in EVENT.wrapped_strategy.mapping.items() if k != "job_id"}  # type: ignore[attr-defined]


def _history(firsts: list[dict], seconds: list[dict], stamps: list[int | None]) -> pl.DataFrame:
    """Events in seq order: every ``firsts`` event, then the ``seconds`` ones."""
    events = pl.DataFrame([*firsts, *seconds], schema=JOB_EVENTS, orient="row")
    ts = pl.Series("ts", stamps, dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))
    return events.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).mul(7).alias("seq"), ts)


@st.composite
def paired_history(draw: st.DrawFn) -> pl.DataFrame:
    """Each job ``assigned`` then one other event (any status but ``assigned``), in order."""
    n = draw(st.integers(0, 6))
    ids = [f"j{i}" for i in draw(st.permutations(range(n)))]
    firsts = [{**draw(st.fixed_dictionaries(PAIR_FIELDS)), "job_id": j, "status": "assigned"}
              for j in ids]  # fmt: skip
    later_status = st.sampled_from(["completed", "failed", "cancelled", None])
    seconds = [{**draw(st.fixed_dictionaries(PAIR_FIELDS)), "job_id": j,
                "status": draw(later_status)} for j in ids]  # fmt: skip
    stamps = draw(st.lists(MAYBE_TS, min_size=2 * n, max_size=2 * n))  # any order, nulls
    return _history(firsts, seconds, stamps)


def _by_job(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort("job_id")


@FAST
@given(events=paired_history())
def test_pairs_are_summarized_without_grouping_to_the_grouping_s_rows(events):
    """Each job assigned then one result: the pairs side by side equal the grouping.

    Caught when broken: the earlier event's value taken before the later's, the first /
    last timestamps swapped, the mode not falling back, usage kept for unbilled events,
    ``n_events`` or ``attempts`` wrong, the pairs never recognised (``None``), and
    ``summarize`` grouping them anyway.
    """
    paired = summary_module._paired(events)
    assert paired is not None
    assert paired.get_column("job_id").to_list() == events.filter(
        pl.col("status") == "assigned"
    ).get_column("job_id").to_list()
    grouped_rows = summary_module._grouped(events)
    assert_frame_equal(_by_job(paired), _by_job(grouped_rows))
    with pytest.MonkeyPatch.context() as mp:  # summarize takes the pairs: no grouping
        mp.setattr(summary_module, "_grouped", lambda _: pytest.fail("grouped"))
        assert_frame_equal(summarize(events), paired)


@st.composite
def almost_paired_history(draw: st.DrawFn) -> pl.DataFrame:
    """A paired history changed in one way that makes it something else."""
    events = draw(paired_history().filter(lambda e: e.height >= 4))
    rows = events.drop("seq", "ts").to_dicts()
    half = len(rows) // 2
    change = draw(st.sampled_from(["swap results", "result first", "job twice", "extra event",
                                   "one missing", "assigned twice"]))  # fmt: skip
    i, j = draw(st.permutations(range(half)))[:2]
    if change == "swap results":  # the same ids, another order
        rows[half + i], rows[half + j] = rows[half + j], rows[half + i]
    elif change == "result first":  # a job's result before its assigned event
        rows.insert(0, rows.pop(half + i))
    elif change == "job twice":  # a job's pair repeated: the ids still line up
        rows = [*rows[:half], rows[i], *rows[half:], rows[half + i]]
    elif change == "extra event":
        rows.append({**rows[half + i], "status": "completed"})
    elif change == "one missing":
        rows.pop(half + i)
    else:  # a second assigned event instead of a result
        rows[half + i] = {**rows[half + i], "status": "assigned"}
    stamps = draw(st.lists(MAYBE_TS, min_size=len(rows), max_size=len(rows)))
    return _history(rows[:half], rows[half:], stamps)


@FAST
@given(events=almost_paired_history())
def test_histories_that_are_not_pairs_are_grouped(events):
    """Anything but exact pairs is grouped: results in another order, a result before its
    job's ``assigned`` event, a job twice, an extra or a missing event, two ``assigned``.

    Caught when broken: any of ``_paired``'s checks dropped (each change above gets past
    all but one of them), which gives a row per pair instead of per job, or the pair's
    values in place of the history's.
    """
    assert_frame_equal(_by_job(summarize(events)), _by_job(summary_module._grouped(events)))


# -- written by streaming runs, read by sql -------------------------------------------


class Item(BaseModel):
    label: str
    score: int


KW: dict[str, object] = {"schema": Item, "model": "gpt-4.1-mini", "prompt": "Rate: {text}"}


def rows(n: int = 60) -> pl.DataFrame:
    """Repeats within and across chunks, answers that fail, null prompts."""
    text = [
        None if i % 23 == 7 else
        f"item {i % 25}" + (" [[emulator:invalid]]" if i % 25 == 13 else "")
        for i in range(n)
    ]
    return pl.DataFrame({"i": list(range(n)), "text": text})


def distinct(source: pl.DataFrame) -> int:
    """Distinct requests (jobs) of some input rows."""
    return source.get_column("text").drop_nulls().n_unique()


def stream(source: pl.DataFrame, tmp_path: Path, **kw: object) -> pl.DataFrame:
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "in.parquet"
    source.write_parquet(src)
    out = batch_llm(
        pl.scan_parquet(src), sink=tmp_path / "out.parquet", chunk_rows=17,
        items_per_batch=10, state=tmp_path / "st", **{**KW, **kw},  # type: ignore[arg-type]
    )
    return out.collect()


def test_a_streaming_run_writes_a_summary_that_sql_reads_with_the_same_rows(emu, tmp_path):
    out = stream(rows(), tmp_path)
    folder = tmp_path / "st"

    assert valid_summary(folder) == _summary_path(folder)
    summary = pl.read_parquet(_summary_path(folder))
    assert summary.height == summary["job_id"].n_unique() == 25  # each job once
    got = sql(ALL, folder)
    assert_same_jobs(got, grouped(folder))
    # The sink's cost and statuses add up to the same as the view's.
    assert got["cost_usd"].sum() == pytest.approx(out["_cost_usd"].sum())
    assert dict(got.group_by("status").len().iter_rows()) == {"completed": 24, "failed": 1}
    assert not list((folder / SUMMARY_DIR).glob(".tmp-*"))


def test_retrying_failed_rows_rewrites_the_summary_with_both_attempts(emu, tmp_path):
    stream(rows(), tmp_path)
    stream(rows(), tmp_path, retry_failed=True)
    folder = tmp_path / "st"

    assert valid_summary(folder) is not None
    got = sql(ALL, folder)
    assert_same_jobs(got, grouped(folder))
    assert got.filter(pl.col("status") == "failed")["attempts"].to_list() == [2]


def test_a_part_written_after_the_summary_makes_sql_group_the_events_again(emu, tmp_path):
    stream(rows(), tmp_path)
    folder = tmp_path / "st"
    job = sql("SELECT job_id FROM jobs WHERE status = 'completed' LIMIT 1", folder).item()
    assert valid_summary(folder) is not None

    _append(folder, job)

    assert valid_summary(folder) is None
    row = sql(f"SELECT status, attempts FROM jobs WHERE job_id = '{job}'", folder).row(0)
    assert row == ("cancelled", 2)


def _append(folder: Path, job: str) -> None:
    import json

    fingerprint = json.loads((folder / "manifest.json").read_text())["fingerprint"]
    StateStore(folder, fingerprint).append_jobs(
        pl.DataFrame({"job_id": [job], "status": ["cancelled"], "batch_key": ["late"],
                      "cost_usd": [1.0]})
    )


def test_no_summary_when_the_folder_has_jobs_the_input_did_not(emu, tmp_path):
    stream(rows(), tmp_path)
    folder = tmp_path / "st"
    assert valid_summary(folder) is not None

    stream(rows().head(20), tmp_path)  # a subset: the folder holds jobs it does not

    assert not _summary_path(folder).exists()
    got = sql(ALL, folder)
    assert got.height == 25
    assert_same_jobs(got, grouped(folder))


def test_folders_with_and_without_a_summary_are_queried_together(emu, tmp_path):
    stream(rows(), tmp_path / "a")
    stream(rows().head(30), tmp_path / "b")
    (tmp_path / "b" / "st" / SUMMARY_DIR / SUMMARY_FILE).unlink()

    got = sql(ALL, tmp_path / "*" / "st")
    assert dict(got.group_by("run").len().iter_rows()) == {
        str(tmp_path / "a" / "st"): 25, str(tmp_path / "b" / "st"): distinct(rows().head(30))}
    expected = pl.concat([grouped(tmp_path / "a" / "st"), grouped(tmp_path / "b" / "st")])
    assert_same_jobs(got, expected)


# -- leftovers and failures: the summary is an optimisation, the sink and state the truth


def test_a_half_written_summary_left_by_a_killed_run_is_removed_by_the_next_run(emu, tmp_path):
    folder = tmp_path / "st"
    (folder / SUMMARY_DIR).mkdir(parents=True)
    # What a run SIGKILLed in its sink pass leaves: the summary's hidden temporary file.
    stale = folder / SUMMARY_DIR / f".tmp-0badcafe-{SUMMARY_FILE}"
    stale.write_bytes(b"PAR1 half a file")

    stream(rows(), tmp_path)

    assert not list((folder / SUMMARY_DIR).glob(".tmp-*"))
    assert valid_summary(folder) == _summary_path(folder)
    assert_same_jobs(sql(ALL, folder), grouped(folder))


def test_a_summary_that_cannot_be_written_warns_and_the_sink_and_sql_are_still_right(
    emu, tmp_path
):
    from batchata_df import SummaryWarning

    expected = stream(rows(), tmp_path / "calm")
    folder = tmp_path / "st"
    folder.mkdir(parents=True)
    (folder / SUMMARY_DIR).write_text("a file where the summary folder goes")  # mkdir fails

    wording = r"summary.*not written.*groups the job events"
    with pytest.warns(SummaryWarning, match=wording) as caught:
        out = stream(rows(), tmp_path)

    assert len(caught) == 1
    assert caught[0].filename == __file__  # stream()'s batch_llm line, not summary.py's
    assert_frame_equal(out.drop("_batch_id"), expected.drop("_batch_id"))
    assert valid_summary(folder) is None
    # The events grouped: the same jobs, answers and bills as the folder with a summary.
    same = ["job_id", "status", "error", "answer", "cost_usd", "input_tokens", "attempts"]
    got = sql(ALL, folder).select(same)
    assert got.height == 25
    assert_same_jobs(got, sql(ALL, tmp_path / "calm" / "st").select(same))


@pytest.mark.parametrize("step", ["summarize", "add", "close"])
def test_a_failure_at_any_step_of_the_summary_leaves_no_summary_and_fails_nothing(
    emu, tmp_path, monkeypatch, step
):
    from batchata_df import SummaryWarning
    from batchata_df import summary as summary_module

    stream(rows(), tmp_path)  # a valid summary from an earlier call
    folder = tmp_path / "st"
    assert valid_summary(folder) is not None

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    if step == "summarize":
        monkeypatch.setattr(summary_module, "summarize", boom)
    elif step == "add":
        monkeypatch.setattr(summary_module.SummaryWriter, "_append", boom)
    else:
        import os
        import types

        # The rename into place fails (only the summary's: the module sees this os).
        monkeypatch.setattr(summary_module, "os", types.SimpleNamespace(
            **{**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")}, "replace": boom}))

    with pytest.warns(SummaryWarning, match="No space left on device"):
        out = stream(rows(), tmp_path, retry_failed=True)  # new parts: a new summary due

    assert out.height == 60
    assert not list((folder / SUMMARY_DIR).glob(".tmp-*"))
    assert valid_summary(folder) is None  # the old one summarizes other parts
    assert_same_jobs(sql(ALL, folder), grouped(folder))


def test_dictionaries_are_left_out_only_for_string_columns_that_overflow_a_page(
    tmp_path, monkeypatch
):
    """``dictionary_columns``: a string column whose distinct values (bytes + 4 each) pass
    the page limit is left out, repeats counted once and nulls not at all; any other
    column keeps its dictionary; a nested column keeps them all. Written either way, the
    file reads back the same values."""
    import pyarrow.parquet as pq

    from batchata_df.summary import dictionary_columns

    monkeypatch.setattr(summary_module, "DICTIONARY_PAGE_BYTES", 100)
    ids = [f"{i:08d}" for i in range(9)]  # 9 x (8 + 4) = 108 bytes > 100
    frame = pl.DataFrame({
        "id": ids, "few": ["a", "b", "a"] * 3, "n": list(range(9)),
        "none": pl.Series([None] * 9, dtype=pl.String),
    })  # fmt: skip
    assert dictionary_columns(frame) == ["few", "n", "none"]
    assert dictionary_columns(frame.head(8)) is True  # 96 bytes: fits
    repeated = pl.DataFrame({"id": ids[:8] * 5 + [None] * 10})
    assert dictionary_columns(repeated) is True
    nested = frame.with_columns(pl.struct("id", "n").alias("s"))
    assert dictionary_columns(nested) is True

    for name, use in [("chosen", dictionary_columns(frame)), ("all", True)]:
        path = tmp_path / f"{name}.parquet"
        with pq.ParquetWriter(path, frame.to_arrow().schema, use_dictionary=use) as writer:
            writer.write_table(frame.to_arrow())
        assert_frame_equal(pl.read_parquet(path), frame)
        column = {c: pq.ParquetFile(path).metadata.row_group(0).column(k).has_dictionary_page
                  for k, c in enumerate(frame.columns)}
        assert column == {"id": name == "all", "few": True, "n": True, "none": True}


def test_the_cli_prints_a_summary_warning_as_its_own_line_not_clicks_source(emu, tmp_path):
    """Every batchata-df warning reaches a CLI user as one ``batchata-df: warning:`` line.

    In the command the first frame outside batchata-df is click's: a warning pointed at
    the caller's line showed ``click/core.py:911: SummaryWarning`` and click's source line.
    """
    import os
    import shutil
    import subprocess
    import sys

    pl.DataFrame({"t": [f"row {i}" for i in range(5)]}).write_parquet(tmp_path / "in.parquet")
    env = {**os.environ, **emu.env()}
    exe = Path(sys.executable).with_name("batchata-df")
    run = [str(exe), "run", "in.parquet", "out.parquet", "--model", "gpt-4.1-mini",
           "--prompt", "{t}"]  # fmt: skip
    first = subprocess.run([*run, "--no-wait"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=240)
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "out.parquet.state"
    shutil.rmtree(folder / SUMMARY_DIR, ignore_errors=True)
    (folder / SUMMARY_DIR).write_text("a file where the summary folder goes")  # mkdir fails
    again = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=240)
    assert again.returncode == 0, again.stderr
    notes = [x for x in again.stderr.splitlines() if "SummaryWarning" in x or "summary" in x]
    assert notes and all(x.startswith("batchata-df: warning: the folder's summary for sql")
                         for x in notes), again.stderr  # fmt: skip
    assert len(notes) == 1 and "click" not in again.stderr and ".py:" not in again.stderr
    assert pl.read_parquet(tmp_path / "out.parquet")["_status"].to_list() == ["completed"] * 5
