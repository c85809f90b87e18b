"""``StateStore.drop_jobs``: some jobs taken out of a checkpoint folder, the others kept.

A compat ``Batch`` starting afresh in a group folder another script's Batch shares takes
only its own jobs out (tests/test_compat_shared_group_fresh.py). The folder is rewritten
the way compaction merges parts (a hidden file, renamed over the range it replaces): every
other event stays with its ``seq`` and values, every reader still reads the folder, and a
crash at any point leaves a readable folder, as it was or without the jobs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from batchata_df import sql
from batchata_df.errors import StateError
from batchata_df.state import StateStore, WriterLock, spent_usd, table_parts
from batchata_df.summary import SUMMARY_DIR, SUMMARY_FILE

FINGERPRINT = {"model": "m"}


def _folder(root: Path) -> StateStore:
    """Jobs a, b (answered, $0.25 and $0.5), c (failed, $0.125), in three parts; batches."""
    store = StateStore(root, FINGERPRINT)
    store.append_batch(batch_key="k1", status="intent", provider="openai", n_jobs=3)
    store.append_jobs(
        pl.DataFrame({"job_id": ["a", "b", "c"], "batch_key": "k1", "status": "assigned",
                      "provider": "openai", "model": "gpt-4.1-mini",
                      "est_cost_usd": [0.5, 1.0, 0.25]})
    )  # fmt: skip
    store.append_batch(batch_key="k1", status="collected", provider="openai", n_jobs=3)
    store.append_jobs(
        pl.DataFrame({"job_id": ["a", "b"], "batch_key": "k1", "status": "completed",
                      "provider": "openai", "model": "gpt-4.1-mini",
                      "answer": ['"A"', '"B"'], "cost_usd": [0.25, 0.5]})
    )  # fmt: skip
    store.append_jobs(
        pl.DataFrame({"job_id": ["c"], "batch_key": "k1", "status": "failed",
                      "provider": "openai", "model": "gpt-4.1-mini",
                      "error": ["truncated: max_tokens"], "cost_usd": [0.125]})
    )  # fmt: skip
    return store


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "writer.lock"
    }


def test_the_jobs_go_and_every_other_event_stays_as_it_was(tmp_path):
    store = _folder(tmp_path)
    before = store.job_events()
    batches = store._scan("batches", store.batch_state().schema)  # the batch events
    with WriterLock(tmp_path):
        dropped = StateStore(tmp_path, FINGERPRINT).drop_jobs(pl.Series(["b", "x"]))
    assert dropped == 2  # b's assigned and completed events; x has none
    after = StateStore(tmp_path, FINGERPRINT, readonly=True)
    assert after.job_events().equals(before.filter(pl.col("job_id") != "b"))
    assert after._scan("batches", batches.schema).equals(batches)  # untouched
    (part,) = table_parts(tmp_path / "jobs")  # one part, in place of the three
    assert "~" in part.name
    meta = pl.read_parquet_metadata(part)  # names its run, as every part: `repair` reads it
    assert meta["batchata_run"] == after.manifest.run_id
    assert spent_usd(tmp_path) == pytest.approx(0.375)  # a's and c's bills, not b's
    jobs = sql("SELECT job_id, status, cost_usd FROM jobs ORDER BY job_id", str(tmp_path))
    assert jobs.rows() == [("a", "completed", 0.25), ("c", "failed", 0.125)]
    # Writing goes on after it: a new part sorts after the merged one, not inside its range.
    again = StateStore(tmp_path, FINGERPRINT)
    again.append_jobs(pl.DataFrame({"job_id": ["b"], "status": "completed", "cost_usd": [0.5]}))
    assert len(table_parts(tmp_path / "jobs")) == 2
    assert spent_usd(tmp_path) == pytest.approx(0.875)


def test_nothing_is_written_when_none_of_the_jobs_is_there(tmp_path):
    _folder(tmp_path)
    before = _files(tmp_path)
    with WriterLock(tmp_path):
        assert StateStore(tmp_path, FINGERPRINT).drop_jobs(pl.Series(["x", None])) == 0
    assert _files(tmp_path) == before


def test_a_job_in_flight_is_refused_and_nothing_changes(tmp_path):
    store = _folder(tmp_path)
    store.append_jobs(
        pl.DataFrame({"job_id": ["d"], "batch_key": "k2", "status": "assigned",
                      "est_cost_usd": [2.0]})
    )  # fmt: skip
    before = _files(tmp_path)
    with WriterLock(tmp_path), pytest.raises(StateError, match=r"1 of them are in flight.*: d\)"):
        StateStore(tmp_path, FINGERPRINT).drop_jobs(pl.Series(["a", "d"]))
    assert _files(tmp_path) == before


def test_one_compacted_part_is_replaced_in_place(tmp_path):
    """A folder already compacted into one part: the merged part has that part's name
    (its range), so it replaces it; the old one must not be deleted after the rename."""
    store = _folder(tmp_path)
    assert store.compact() == 5  # three job parts, two batch parts
    (compacted,) = table_parts(tmp_path / "jobs")
    with WriterLock(tmp_path):
        assert StateStore(tmp_path, FINGERPRINT).drop_jobs(pl.Series(["a"])) == 2
    assert table_parts(tmp_path / "jobs") == [compacted]
    events = StateStore(tmp_path, FINGERPRINT, readonly=True).job_events()
    assert sorted(set(events.get_column("job_id"))) == ["b", "c"]


def test_the_summary_is_removed(tmp_path):
    """A summary names the parts it summarizes; the merged part may take such a name (the
    one compacted part it replaces): left, it would be read with the dropped jobs in it."""
    store = _folder(tmp_path)
    store.compact()
    summary = tmp_path / SUMMARY_DIR / SUMMARY_FILE
    summary.parent.mkdir()
    summary.write_bytes(b"stand-in")
    with WriterLock(tmp_path):
        StateStore(tmp_path, FINGERPRINT).drop_jobs(pl.Series(["a"]))
    assert not summary.exists()


def test_a_folder_mixing_older_parts_is_rewritten_readable_by_every_reader(tmp_path):
    """A part an older version wrote lacks later columns (``answered_by``, ``response``...):
    the merged part has the table's whole schema, the older values kept, the new null."""
    _folder(tmp_path)
    first = table_parts(tmp_path / "jobs")[0]
    table = pq.read_table(first)
    later = ["answered_by", "response", "mode", "reasoning_tokens"]
    # (A format 2 part already leaves out those of them that are null in all its rows.)
    old = table.drop_columns([c for c in later if c in table.column_names])
    assert not set(later) & set(old.column_names)
    pq.write_table(old.replace_schema_metadata(table.schema.metadata), first)
    with WriterLock(tmp_path):
        assert StateStore(tmp_path, FINGERPRINT).drop_jobs(pl.Series(["c"])) == 2
    after = StateStore(tmp_path, FINGERPRINT, readonly=True)
    events = after.job_events()
    assert events.get_column("job_id").to_list() == ["a", "b", "a", "b"]
    assert events.get_column("est_cost_usd").to_list() == [0.5, 1.0, None, None]
    assert events.get_column("answered_by").null_count() == 4
    jobs = sql(
        "SELECT job_id, status, answer, cost_usd FROM jobs ORDER BY job_id", str(tmp_path)
    )
    assert jobs.rows() == [("a", "completed", '"A"', 0.25), ("b", "completed", '"B"', 0.5)]
    n = sql("SELECT count(*) AS n FROM job_events", str(tmp_path)).item()
    assert n == 4


def _crash(root: Path, failpoint: str) -> int:
    script = textwrap.dedent(f"""
        import polars as pl
        from batchata_df.state import StateStore, WriterLock
        with WriterLock({str(root)!r}):
            StateStore({str(root)!r}, {FINGERPRINT!r}).drop_jobs(pl.Series(["b"]))
    """)
    env = {**os.environ, "BATCHATA_DF_FAILPOINT": failpoint}
    return subprocess.run([sys.executable, "-c", script], env=env, check=False).returncode


@pytest.mark.parametrize(
    ("failpoint", "dropped"),
    [("compact_before_rename", False), ("compact_after_rename", True)],
)
def test_a_crash_midway_leaves_a_readable_folder(tmp_path, failpoint, dropped):
    """Killed before the rename: the folder as it was (the hidden file is no part);
    after it: the folder without the jobs, the replaced parts hidden, then deleted by the
    next writer."""
    before = _folder(tmp_path).job_events()
    assert _crash(tmp_path, failpoint) == 75
    want = before.filter(pl.col("job_id") != "b") if dropped else before
    assert StateStore(tmp_path, FINGERPRINT, readonly=True).job_events().equals(want)
    jobs = sql("SELECT job_id FROM jobs ORDER BY job_id", str(tmp_path))
    assert jobs.get_column("job_id").to_list() == (["a", "c"] if dropped else ["a", "b", "c"])
    StateStore(tmp_path, FINGERPRINT)  # a writer: collects the replaced parts
    assert len(table_parts(tmp_path / "jobs")) == (1 if dropped else 3)
    assert len(list((tmp_path / "jobs").glob("part-*"))) == (1 if dropped else 3)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["fingerprint"] == FINGERPRINT
