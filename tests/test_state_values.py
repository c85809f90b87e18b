"""The checkpoint store by value: what it writes, reads back, bills and says when it cannot.

Real Parquet parts in a temporary folder, no emulator: each test pins one thing a resumed
run relies on (the bill of a job, the latest event, the manifest's fields, a refusal's
message) by comparing values, so that a change to ``batchata_df/state.py`` that alters
them is caught (issue 10, mutation testing of ``state.py``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from batchata_df import state as state_module
from batchata_df.errors import StateError, StateLockedError
from batchata_df.state import (
    JOB_EVENTS,
    LOCK_FILE,
    Manifest,
    StateStore,
    WriterLock,
    adopt_schema,
    check_part,
    damaged_error,
    find_damaged,
    read_manifest,
    spent_usd,
)

FP = {"model": "m", "prompt": "p"}


def _part(folder, ns: int, frame: pl.DataFrame) -> None:
    """Write ``frame`` as an event part named for ``ns`` (as an older version might have)."""
    frame.write_parquet(folder / f"part-{ns:020d}-abcdef.parquet")


# -- billing -------------------------------------------------------------------------------


def _billing_folder(tmp_path) -> StateStore:
    store = StateStore(tmp_path / "st", FP)
    store.append_jobs(pl.DataFrame({
        "job_id": ["a", "b", "c", "d", "e"], "batch_key": "b1", "status": "assigned",
    }))
    store.append_jobs(pl.DataFrame({
        "job_id": ["a", "b", "c"], "batch_key": "b1",
        "status": ["completed", "failed", "completed"],
        "cost_usd": [0.5, 0.25, None], "input_tokens": [10, 20, 30],
        "output_tokens": [3, 4, 5], "reasoning_tokens": [1, None, 2],
    }))
    # "a" sent again in another batch (retry_failed / after a cancel): billed twice.
    store.append_jobs(pl.DataFrame({
        "job_id": ["a"], "batch_key": "b2", "status": "completed", "cost_usd": 0.125,
        "input_tokens": 11, "output_tokens": 6, "reasoning_tokens": 2,
    }))
    # Events of older versions without a batch key: billed when they carry a cost or usage.
    store.append_jobs(pl.DataFrame({
        "job_id": ["d", "e"], "batch_key": [None, None], "status": "completed",
        "cost_usd": [0.0625, None], "input_tokens": [None, 7], "output_tokens": [None, 8],
    }, schema_overrides={"batch_key": pl.String}))
    return store


BILLED = pl.DataFrame(
    {
        "job_id": ["a", "b", "c", "d", "e"],
        "cost_usd": [0.625, 0.25, None, 0.0625, None],
        "input_tokens": [21, 20, 30, None, 7],
        "output_tokens": [9, 4, 5, None, 8],
        "reasoning_tokens": [3, None, 2, None, None],
        "attempts": [2, 1, 1, 1, 1],
    },
    schema={"job_id": pl.String, "cost_usd": pl.Float64, "input_tokens": pl.Int64,
            "output_tokens": pl.Int64, "reasoning_tokens": pl.Int64, "attempts": pl.Int64},
)


def test_billed_sums_every_attempt_per_job_with_every_usage_column(tmp_path):
    store = _billing_folder(tmp_path)
    assert_frame_equal(store.billed().sort("job_id"), BILLED)
    assert store.spent() == pytest.approx(0.625 + 0.25 + 0.0625)
    assert spent_usd(store.root) == pytest.approx(0.9375)


def test_snapshot_bills_what_billed_bills_and_keeps_each_jobs_last_event(tmp_path):
    store = _billing_folder(tmp_path)
    state, billed = store.snapshot()
    assert_frame_equal(billed.sort("job_id"), BILLED)
    assert state.schema == JOB_EVENTS
    assert state.sort("job_id").select("job_id", "batch_key", "status", "cost_usd").rows() == [
        ("a", "b2", "completed", 0.125), ("b", "b1", "failed", 0.25),
        ("c", "b1", "completed", None),
        ("d", None, "completed", 0.0625), ("e", None, "completed", None),
    ]


def test_a_job_sent_again_and_still_in_flight_keeps_the_bill_of_its_finished_attempt(tmp_path):
    """Its last event is not terminal, so the count of billed jobs by last event differs
    from the count of terminal events; each job still has one billed attempt."""
    store = StateStore(tmp_path / "st", FP)
    store.append_jobs(pl.DataFrame({"job_id": ["a", "b"], "batch_key": "b1",
                                    "status": "completed", "cost_usd": [0.5, 0.25],
                                    "input_tokens": [10, 20], "output_tokens": [1, 2]}))
    store.append_jobs(pl.DataFrame({"job_id": ["a"], "batch_key": "b2", "status": "assigned"}))
    state, billed = store.snapshot()
    want = BILLED.head(0).vstack(pl.DataFrame(
        {"job_id": ["a", "b"], "cost_usd": [0.5, 0.25], "input_tokens": [10, 20],
         "output_tokens": [1, 2], "reasoning_tokens": [None, None], "attempts": [1, 1]},
        schema=BILLED.schema))
    assert_frame_equal(billed.sort("job_id"), want)
    assert_frame_equal(store.billed().sort("job_id"), want)
    assert state.sort("job_id")["status"].to_list() == ["assigned", "completed"]


@pytest.mark.parametrize("billable", ["cost_usd", "input_tokens"])
def test_an_event_without_batch_key_is_billed_by_either_its_cost_or_its_tokens(tmp_path, billable):
    store = StateStore(tmp_path / "st", FP)
    values = {"cost_usd": 0.5, "input_tokens": 9}
    store.append_jobs(pl.DataFrame(
        {"job_id": ["x"], "batch_key": [None], "status": ["completed"],
         billable: [values[billable]]},
        schema_overrides={"batch_key": pl.String},
    ))
    # Without cost, usage nor batch: nothing was billed for it (a record of an old version).
    store.append_jobs(pl.DataFrame({"job_id": ["y"], "batch_key": [None], "status": ["failed"]},
                                   schema_overrides={"batch_key": pl.String}))
    for billed in (store.billed(), store.snapshot()[1]):
        assert billed.get_column("job_id").to_list() == ["x"]
        assert billed.row(0, named=True)[billable] == values[billable]


def test_a_snapshot_of_parts_whose_seq_runs_backwards_takes_the_highest_seq(tmp_path):
    """Parts are read in name order; after a clock step or a compaction of older parts the
    seq order differs from it, and the latest event is still the one with the highest seq."""
    store = StateStore(tmp_path / "st", FP)
    jobs = tmp_path / "st" / "jobs"
    _part(jobs, 1, pl.DataFrame({"seq": [20], "job_id": ["a"], "batch_key": ["b1"],
                                 "status": ["completed"], "cost_usd": [0.5]}))
    _part(jobs, 2, pl.DataFrame({"seq": [10], "job_id": ["a"], "batch_key": ["b1"],
                                 "status": ["assigned"], "cost_usd": [None]},
                                schema_overrides={"cost_usd": pl.Float64}))
    state, billed = store.snapshot()
    assert state.select("seq", "status").rows() == [(20, "completed")]
    assert billed.select("job_id", "cost_usd", "attempts").rows() == [("a", 0.5, 1)]
    assert store.latest_status(pl.Series(["a"])).select("seq", "status").rows() == [
        (20, "completed")]


def test_latest_status_gives_one_row_per_job_its_latest(tmp_path):
    store = StateStore(tmp_path / "st", FP)
    store.append_jobs(pl.DataFrame({"job_id": ["a", "b", "c"], "batch_key": "b1",
                                    "status": "assigned", "est_cost_usd": 0.5}))
    store.append_jobs(pl.DataFrame({"job_id": ["a", "b"], "batch_key": "b1",
                                    "status": ["completed", "failed"], "error": [None, "boom"],
                                    "cost_usd": [0.25, 0.125]}))
    got = store.latest_status(pl.Series(["b", "a", "zz"]))
    assert got.columns == list(state_module.STATUS_COLUMNS)
    assert got.sort("job_id").select("job_id", "status", "error", "cost_usd").rows() == [
        ("a", "completed", None, 0.25), ("b", "failed", "boom", 0.125)]


# -- sequence numbers and parts ------------------------------------------------------------


def test_seq_numbers_stay_consecutive_when_the_clock_stands_still(tmp_path, monkeypatch):
    """Each append reserves exactly as many seq numbers as events, after every recorded one,
    even when the clock does not move (or is behind an earlier call's)."""
    store = StateStore(tmp_path / "st", FP)
    monkeypatch.setattr(state_module.time, "time_ns", lambda: 1_000)
    store.append_jobs(pl.DataFrame({"job_id": ["a", "b"], "status": "assigned"}))
    store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": "completed"}))
    store.append_batch(batch_key="k", status="intent")
    store.append_batch(batch_key="k", status="submitted")
    assert store.job_events()["seq"].to_list() == [1_000, 1_001, 1_002]
    assert store.batch_state()["seq"].to_list() == [1_004]
    reopened = StateStore(tmp_path / "st", FP)
    reopened.append_jobs(pl.DataFrame({"job_id": ["b"], "status": "failed"}))
    assert reopened.job_events()["seq"].to_list() == [1_000, 1_001, 1_002, 1_005]


def test_append_batch_refuses_unknown_fields_by_name(tmp_path):
    store = StateStore(tmp_path / "st", FP)
    with pytest.raises(ValueError, match=r"^unknown batch event fields \['bogus', 'nope'\]$"):
        store.append_batch(batch_key="k", status="intent", nope=1, bogus=2)
    assert store.batch_state().height == 0


def test_compaction_keeps_the_events_of_parts_written_before_newer_columns(tmp_path):
    store = StateStore(tmp_path / "st", FP)
    # An older version's part: no reasoning_tokens, citations, raw, response, mode, ...
    _part(tmp_path / "st" / "jobs", 1, pl.DataFrame({
        "seq": [1], "job_id": ["old"], "batch_key": ["b0"], "status": ["completed"],
        "cost_usd": [0.5]}))
    store.append_jobs(pl.DataFrame({"job_id": ["new"], "batch_key": "b1", "status": "completed",
                                    "cost_usd": 0.25, "reasoning_tokens": 4, "mode": "realtime"}))
    before = store.job_events()
    assert store.compact() == 2
    assert len(list((tmp_path / "st" / "jobs").glob("part-*.parquet"))) == 1
    after = StateStore(tmp_path / "st", FP).job_events()
    assert_frame_equal(after, before)
    assert after.select("job_id", "reasoning_tokens", "mode").rows() == [
        ("old", None, None), ("new", 4, "realtime")]


def test_spent_counts_the_parts_an_older_version_wrote(tmp_path):
    """A folder started by an older version (parts without ``ts``, ``mode``, ``raw`` ...) and
    resumed with a cost cap: what was spent must be read, not refused as unreadable."""
    store = StateStore(tmp_path / "st", FP)
    _part(tmp_path / "st" / "jobs", 1, pl.DataFrame({
        "seq": [1], "job_id": ["a"], "batch_key": ["b0"], "status": ["completed"],
        "cost_usd": [0.5]}))
    store.append_jobs(pl.DataFrame({"job_id": ["b"], "batch_key": "b1", "status": "completed",
                                    "cost_usd": 0.25}))
    assert store.spent() == 0.75
    assert spent_usd(tmp_path / "st") == 0.75


def test_a_part_carrying_a_column_this_version_does_not_know_reads_without_it(tmp_path):
    store = StateStore(tmp_path / "st", FP)
    _part(tmp_path / "st" / "jobs", 1, pl.DataFrame({
        "seq": [1], "job_id": ["a"], "batch_key": ["b0"], "status": ["completed"],
        "cost_usd": [0.5], "dropped_column": ["x"]}))
    store = StateStore(tmp_path / "st", FP)
    store.append_jobs(pl.DataFrame({"job_id": ["b"], "batch_key": "b1", "status": "assigned"}))
    assert store.job_events().schema == JOB_EVENTS
    assert store.job_events().select("seq", "job_id", "status").rows()[0] == (1, "a", "completed")
    state, billed = store.snapshot(pl.Series(["a"]))
    assert state.select("job_id", "status").rows() == [("a", "completed")]
    assert billed.select("job_id", "cost_usd").rows() == [("a", 0.5)]
    assert store.latest_status(pl.Series(["a", "b"])).select("job_id", "status").rows() == [
        ("a", "completed"), ("b", "assigned")]
    assert store.spent() == 0.5


# -- damage -------------------------------------------------------------------------------


def test_a_part_with_a_column_of_the_wrong_type_is_damaged(tmp_path):
    store = StateStore(tmp_path / "st", FP)
    store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": "assigned"}))
    bad = tmp_path / "st" / "jobs" / "part-99999999999999999999-abcdef.parquet"
    pl.DataFrame({"seq": [5], "job_id": ["b"], "status": ["completed"],
                  "cost_usd": ["0.5"]}).write_parquet(bad)
    assert check_part(bad) == "column 'cost_usd' is String, not Float64"
    batch = tmp_path / "st" / "batches" / "part-99999999999999999999-abcdef.parquet"
    pl.DataFrame({"seq": [5], "status": ["intent"], "detail": [None]}).write_parquet(batch)
    assert check_part(batch) == "not a batches event part: no column batch_key"
    assert check_part(batch.with_name("nothing.parquet")).startswith("unreadable Parquet (")
    batch.unlink()
    assert find_damaged(tmp_path / "st") == [state_module.Damage(bad, check_part(bad))]
    with pytest.raises(StateError, match="1 damaged event part"):
        StateStore(tmp_path / "st", FP)


def test_a_damaged_part_error_lists_five_parts_and_counts_the_rest(tmp_path):
    damage = [state_module.Damage(tmp_path / f"p{i}", f"problem {i}") for i in range(7)]
    msg = str(damaged_error(tmp_path, damage))
    listed = "; ".join(f"{tmp_path / f'p{i}'}: problem {i}" for i in range(5))
    assert msg == (
        f"checkpoint folder {str(tmp_path)!r} has 7 damaged event part(s): {listed} (and 2 "
        "more). Do not delete them by hand (their batches would be paid again): run "
        f"`batchata-df repair {tmp_path}` to see what it will do, then with --apply to move "
        "them aside and recover what they held from the provider")
    assert "p5" not in msg and "problem 6" not in msg
    five = str(damaged_error(tmp_path, damage[:5]))
    assert "more)" not in five and "problem 4. Do not delete" in five


def test_spent_on_a_part_whose_data_is_damaged_names_the_part(tmp_path):
    """Footer and schema readable, the values not: only a deep check finds it, and the error
    must still name the part and the fix (not a bare read error)."""
    store = StateStore(tmp_path / "st", FP)
    store.append_jobs(pl.DataFrame({"job_id": [f"j{i}" for i in range(50)], "batch_key": "b",
                                    "status": "completed", "cost_usd": 0.5}))
    (part,) = (tmp_path / "st" / "jobs").glob("part-*.parquet")
    data = bytearray(part.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    data[4 : len(data) - 8 - footer] = b"\xa5" * (len(data) - 12 - footer)
    part.write_bytes(bytes(data))
    assert check_part(part) is None and check_part(part, deep=True) is not None
    with pytest.raises(StateError, match=r"has 1 damaged event part\(s\): .*part-.*unreadable "
                                         r"Parquet data.*batchata-df repair"):
        spent_usd(tmp_path / "st")
    with pytest.raises(StateError, match="unreadable Parquet data"):
        store.spent()


def test_spent_on_a_sound_folder_that_fails_to_scan_names_the_folder_and_the_error(
    tmp_path, monkeypatch
):
    """A read error with no damaged part behind it (e.g. out of memory, a file changed
    under the scan) is a StateError naming the folder and Polars' own message."""
    StateStore(tmp_path / "st", FP).append_jobs(
        pl.DataFrame({"job_id": ["a"], "status": "completed", "cost_usd": 0.5}))

    def fails(root):
        raise pl.exceptions.ComputeError("the scan broke")

    monkeypatch.setattr(state_module, "_billed_total", fails)
    with pytest.raises(StateError) as caught:
        spent_usd(tmp_path / "st")
    assert str(caught.value) == (
        f"cannot read the checkpoint folder {str(tmp_path / 'st')!r}: the scan broke")


# -- manifest -----------------------------------------------------------------------------


def test_the_manifest_file_is_sorted_indented_json_of_its_fields(tmp_path):
    m = Manifest(run_id="r1", fingerprint={"z": "1", "a": "2"}, created_at=12.5)
    assert m.to_json() == (
        '{\n  "created_at": 12.5,\n  "fingerprint": {\n    "a": "2",\n    "z": "1"\n  },\n'
        '  "format_version": 2,\n  "run_id": "r1"\n}'
    )


def test_read_manifest_gives_back_every_field_written(tmp_path):
    store = StateStore(tmp_path / "st", FP)
    back = read_manifest(tmp_path / "st" / "manifest.json")
    assert back == store.manifest
    assert back.created_at == store.manifest.created_at > 0
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"run_id": "r", "created_at": 7, "format_version": 1}))
    assert read_manifest(path) == Manifest("r", {}, 1, 7.0)
    # A creation time that is not a number (null, text) reads as unknown (0), not an error.
    for created in (None, "2026-11-29"):
        path.write_text(json.dumps({"run_id": "r", "created_at": created, "format_version": 1}))
        assert read_manifest(path) == Manifest("r", {}, 1, 0.0)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "is not a readable batchata-df manifest"),
        ("[1, 2]", "is not a batchata-df manifest (a JSON list)"),
        ('{"fingerprint": {}}', "has no run_id"),
        ('{"run_id": "r", "fingerprint": {"a": 1}}', "has an unreadable fingerprint"),
    ],
)
def test_a_damaged_manifest_names_the_file_and_the_repair_command(tmp_path, text, problem):
    path = tmp_path / "manifest.json"
    path.write_text(text)
    with pytest.raises(StateError) as caught:
        read_manifest(path)
    msg = str(caught.value)
    assert msg.startswith(f"{str(path)!r} {problem}")
    assert msg.endswith(
        f": run `batchata-df repair {tmp_path}` to see how it would be rebuilt from the event "
        "parts, then with --apply")


def test_adopt_schema_replaces_the_fingerprint_and_keeps_the_rest(tmp_path):
    store = StateStore(tmp_path / "st", FP)
    adopt_schema(tmp_path / "st", {"model": "m", "schema": "s2"})
    back = read_manifest(tmp_path / "st" / "manifest.json")
    assert back == Manifest(store.manifest.run_id, {"model": "m", "schema": "s2"}, 2,
                            store.manifest.created_at)
    assert StateStore(tmp_path / "st", {"model": "m", "schema": "s2"}).manifest == back
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{")
    with pytest.raises(StateError, match="manifest.json' is not a readable batchata-df manifest"):
        adopt_schema(tmp_path / "bad", FP)


# -- the writer lock ----------------------------------------------------------------------


def _ago(text: str) -> str:
    """``text`` with the holder's age (which depends on when it is read) left out."""
    return re.sub(r"\(\d+ s ago\)", "(N s ago)", text)


def test_a_refusal_after_waiting_says_how_long_and_how_to_wait_longer(tmp_path):
    with WriterLock(tmp_path), pytest.raises(StateLockedError) as caught:
        WriterLock(tmp_path, timeout=0.05).acquire()
    holder = caught.value.holder
    assert holder is not None and holder.pid == os.getpid()
    assert _ago(str(caught.value)) == _ago(
        f"checkpoint folder {str(tmp_path)!r} is being written by another call: "
        f"{holder.describe()} after waiting 0.05 s. Two calls on one folder would send the "
        "same rows twice. Let it finish, or pass lock_timeout=<seconds> (None: as long as it "
        "takes) to wait for it, or use another state folder. Reading (batchata_df.sql, "
        "`batchata-df status`, dry_run=True) works without waiting"
    )


def test_a_lock_file_of_garbage_bytes_is_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_bytes(b"\xff\xfe\x00 not a record \xc3")
    lock = WriterLock(tmp_path)
    with lock:
        assert lock.previous is None
        assert lock.holder() is not None and lock.holder().pid == os.getpid()


def test_taking_over_a_lock_left_by_another_process_is_logged(tmp_path, caplog):
    gone = {"pid": 4_000_000, "host": "elsewhere", "since": 1.0}
    (tmp_path / LOCK_FILE).write_text(json.dumps(gone))
    with caplog.at_level(logging.INFO, logger="batchata_df"), WriterLock(tmp_path) as lock:
        assert lock.previous == state_module.LockHolder(4_000_000, "elsewhere", 1.0)
    assert [_ago(r.getMessage()) for r in caplog.records] == [
        f"batchata-df: {tmp_path}: took over the writer lock last held by pid 4000000 on host "
        "elsewhere since 1970-01-01 00:00:01 UTC (N s ago) (no longer held)"
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="batchata_df"), WriterLock(tmp_path):
        pass  # last held by this process: nothing taken over
    assert caplog.records == []
    assert socket.gethostname() != "elsewhere"


def test_spent_in_slices_of_jobs_equals_spent_in_one_pass(tmp_path, monkeypatch):
    """A folder of more events than one slice is added up in slices by a hash of the job
    id: every job's attempts land in one slice, so nothing is counted twice or dropped."""
    store = StateStore(tmp_path / "st", FP)
    ids = [f"j{i}" for i in range(12)]
    store.append_jobs(pl.DataFrame({"job_id": ids, "batch_key": "b1", "status": "completed",
                                    "cost_usd": [0.5 * (i + 1) for i in range(12)]}))
    # Re-collected after a crash (same batch: counted once) and retried (another batch).
    store.append_jobs(pl.DataFrame({"job_id": ids[:4], "batch_key": "b1", "status": "completed",
                                    "cost_usd": [0.5 * (i + 1) for i in range(4)]}))
    store.append_jobs(pl.DataFrame({"job_id": ids[:3], "batch_key": "b2", "status": "completed",
                                    "cost_usd": 0.25}))
    # An event without a job id is still billed (it lands in the first slice).
    store.append_jobs(pl.DataFrame({"job_id": [None], "batch_key": ["b3"], "status": "failed",
                                    "cost_usd": [2.0]}, schema_overrides={"job_id": pl.String}))
    want = sum(0.5 * (i + 1) for i in range(12)) + 3 * 0.25 + 2.0
    assert spent_usd(store.root) == pytest.approx(want)
    for events_per_slice in (1, 5, 19, 20):  # 20 events: 20, 4, 2 and 1 slices
        monkeypatch.setattr(state_module, "SPENT_SLICE_EVENTS", events_per_slice)
        assert spent_usd(store.root) == pytest.approx(want), events_per_slice
    assert spent_usd(tmp_path / "nothing-here") == 0.0


def test_parts_are_zstd_without_statistics_and_name_their_run(tmp_path, monkeypatch):
    """The physical layout of the parts (what DuckDB and the job index read): zstd at the
    chosen level, no column statistics, the run id and fingerprint in the metadata; a
    compacted part in row groups of COMPACT_ROW_GROUP_ROWS rows."""
    import pyarrow.parquet as pq

    store = StateStore(tmp_path / "st", FP)
    for start in (0, 3):
        store.append_jobs(pl.DataFrame({"job_id": [f"j{i}" for i in range(start, start + 3)],
                                        "status": "assigned"}))
    store.append_batch(batch_key="k", status="intent")
    identity = {
        b"batchata_run": store.manifest.run_id.encode(),
        b"batchata_fingerprint": b'{"model": "m", "prompt": "p"}',
        b"batchata_format": b"2",
    }
    parts = sorted((tmp_path / "st" / "jobs").glob("part-*.parquet"))
    for part in [*parts, *(tmp_path / "st" / "batches").glob("part-*.parquet")]:
        meta = pq.ParquetFile(part).metadata
        assert {k: v for k, v in meta.metadata.items() if k.startswith(b"batchata")} == identity
        column = meta.row_group(0).column(0)
        assert (column.compression, column.is_stats_set) == ("ZSTD", False)
    monkeypatch.setattr(state_module, "COMPACT_ROW_GROUP_ROWS", 2)
    assert store.compact() == 2
    (merged,) = (tmp_path / "st" / "jobs").glob("part-*.parquet")
    assert merged.name == f"part-{parts[0].name[5:-8]}~{parts[1].name[5:-8]}.parquet"
    meta = pq.ParquetFile(merged).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [2, 2, 2]
    assert {k: v for k, v in meta.metadata.items() if k.startswith(b"batchata")} == identity
    column = meta.row_group(0).column(0)
    assert (column.compression, column.is_stats_set) == ("ZSTD", False)
    assert store.job_events()["job_id"].to_list() == [f"j{i}" for i in range(6)]


def test_compaction_merges_consecutive_parts_up_to_the_target_size(tmp_path):
    store = StateStore(tmp_path / "st", FP)
    for i in range(5):
        store.append_jobs(pl.DataFrame({"job_id": [f"j{i}"], "status": "assigned"}))
    jobs = tmp_path / "st" / "jobs"
    parts = sorted(jobs.glob("part-*.parquet"))
    size = max(p.stat().st_size for p in parts)
    assert store.compact(target_bytes=size) == 0  # no two fit together: nothing to merge
    assert sorted(jobs.glob("part-*.parquet")) == parts
    assert store.compact(target_bytes=2 * size) == 4  # [0, 1], [2, 3], [4]
    stem = [p.name[5:-8] for p in parts]
    assert sorted(p.name for p in jobs.glob("part-*.parquet")) == [
        f"part-{stem[0]}~{stem[1]}.parquet", f"part-{stem[2]}~{stem[3]}.parquet",
        parts[4].name]
    merged = sorted(jobs.glob("part-*.parquet"))
    assert store.compact() == 3  # compacted parts merge again: one range over all five
    (whole,) = jobs.glob("part-*.parquet")
    assert whole.name == f"part-{stem[0]}~{stem[4]}.parquet"
    assert whole not in merged
    assert store.job_events()["job_id"].to_list() == [f"j{i}" for i in range(5)]
    assert store.compact() == 0


def test_compaction_merges_consecutive_parts_up_to_the_target_rows(tmp_path, monkeypatch):
    """A part compaction merges holds at most COMPACT_TARGET_ROWS events (128 row groups),
    however small its bytes: every lookup by job id reads a part's whole footer, which grows
    with its row groups (a ten-million-job folder's 256 MB parts had 1,029; PROFILE.md,
    thirtieth pass)."""
    import pyarrow.parquet as pq

    assert state_module.COMPACT_TARGET_ROWS == 128 * state_module.COMPACT_ROW_GROUP_ROWS
    store = StateStore(tmp_path / "st", FP)
    for i in range(5):
        store.append_jobs(pl.DataFrame({"job_id": [f"j{i}-{k}" for k in range(3)],
                                        "status": "assigned"}))
    jobs = tmp_path / "st" / "jobs"
    parts = sorted(jobs.glob("part-*.parquet"))
    stem = [p.name[5:-8] for p in parts]
    assert store.compact(target_rows=5) == 0  # 3 + 3 events: no two fit together
    assert sorted(jobs.glob("part-*.parquet")) == parts
    monkeypatch.setattr(state_module, "COMPACT_ROW_GROUP_ROWS", 2)
    monkeypatch.setattr(state_module, "COMPACT_TARGET_ROWS", 6)  # the default, read per call
    assert store.compact() == 4  # [0, 1], [2, 3], [4]: far under the bytes' target
    now = sorted(jobs.glob("part-*.parquet"))
    assert [p.name for p in now] == [
        f"part-{stem[0]}~{stem[1]}.parquet", f"part-{stem[2]}~{stem[3]}.parquet", parts[4].name]
    assert [pq.ParquetFile(p).metadata.num_rows for p in now] == [6, 6, 3]
    assert [pq.ParquetFile(p).num_row_groups for p in now] == [3, 3, 1]
    assert store.compact() == 0  # 6 + 6 and 6 + 3 are over: each stays
    assert store.compact(target_rows=12) == 2  # the first two merge again
    assert store.job_events()["job_id"].to_list() == [
        f"j{i}-{k}" for i in range(5) for k in range(3)]


def test_compaction_names_a_part_damaged_since_the_store_opened(tmp_path):
    """Compaction reads each part's row count from its footer (pyarrow): a part damaged
    while the run went on is a StateError naming it and `repair`, not pyarrow's own error
    (review of 4706f47)."""
    store = StateStore(tmp_path / "st", FP)
    for i in range(3):
        store.append_jobs(pl.DataFrame({"job_id": [f"j{i}"], "status": "assigned"}))
    parts = sorted((tmp_path / "st" / "jobs").glob("part-*.parquet"))
    parts[1].write_bytes(parts[1].read_bytes()[:40])  # cut short
    with pytest.raises(StateError, match="damaged event part") as raised:
        store.compact()
    assert parts[1].name in str(raised.value) and "batchata-df repair" in str(raised.value)
    assert sorted((tmp_path / "st" / "jobs").glob("part-*.parquet")) == parts  # nothing merged


def test_compaction_merges_the_parts_it_wrote_around_a_foreign_one_that_sorts_first(tmp_path):
    store = StateStore(tmp_path / "st", FP)
    for i in range(2):
        store.append_jobs(pl.DataFrame({"job_id": [f"j{i}"], "status": "assigned"}))
    jobs = tmp_path / "st" / "jobs"
    foreign = jobs / "part--by-hand.parquet"  # '-' sorts before every digit
    pl.read_parquet(next(jobs.glob("part-0*.parquet"))).head(0).write_parquet(foreign)
    assert state_module.table_parts(jobs)[0] == foreign
    assert store.compact() == 2  # the foreign part is skipped, not the end of the list
    assert len(list(jobs.glob("part-0*~*.parquet"))) == 1 and foreign.exists()


def test_parts_hidden_by_a_compacted_part_are_skipped_then_collected(tmp_path):
    """A crash after a compacted part was renamed leaves the parts it replaced: readers skip
    them, the next writer deletes them; hidden temporary files and foreign names stay."""
    store = StateStore(tmp_path / "st", FP)
    for i in range(3):
        store.append_jobs(pl.DataFrame({"job_id": [f"j{i}"], "status": "assigned"}))
    jobs = tmp_path / "st" / "jobs"
    p0, p1, p2 = sorted(jobs.glob("part-*.parquet"))
    store.compact()
    (merged,) = jobs.glob("part-*.parquet")
    # As if the process died before deleting what it merged: all three come back.
    for p in (p0, p1, p2):
        pl.read_parquet(merged).filter(pl.col("job_id") == "j0").write_parquet(p)
    foreign = jobs / "part-from-elsewhere.parquet"
    pl.read_parquet(merged).head(0).write_parquet(foreign)
    (jobs / f".tmp-{p2.name}").write_bytes(b"half written")
    (jobs / "notes.txt").write_text("not a part")
    assert state_module.table_parts(jobs) == sorted([merged, foreign])
    assert state_module.list_parts(tmp_path / "st") == sorted([merged, foreign])
    assert state_module._hidden([p0, p1, p2, merged, foreign]) == {p0, p1, p2}
    assert state_module._hidden([foreign, p0, merged, p1, p2]) == {p0, p1, p2}  # any order
    assert StateStore(tmp_path / "st", FP, readonly=True).job_events().height == 3
    assert {p.name for p in jobs.iterdir()} >= {p0.name, p1.name, p2.name}  # a reader keeps them
    assert state_module.collect_compacted(tmp_path / "st") == 3
    assert sorted(jobs.iterdir()) == sorted(
        [merged, foreign, jobs / f".tmp-{p2.name}", jobs / "notes.txt"])
    assert state_module.collect_compacted(tmp_path / "st") == 0


def test_part_names_give_their_range_and_foreign_names_none():
    part_range = state_module._part_range
    assert part_range("part-00000000000000000042-abc123.parquet") == (42, 42)
    assert part_range("part-00000000000000000005-abc~00000000000000000009-def.parquet") == (5, 9)
    assert part_range("part-x-abc.parquet") is None
    assert part_range("part-00000000000000000005-a~y-b.parquet") is None
    hidden = state_module._hidden
    a, b, c = (Path(f"part-{n:020d}-aa.parquet") for n in (4, 5, 10))
    big = Path(f"part-{5:020d}-aa~{9:020d}-bb.parquet")
    inner = Path(f"part-{6:020d}-aa~{7:020d}-bb.parquet")
    assert hidden([a, b, c, big, inner]) == {b, inner}


def test_a_new_part_sorts_after_the_folders_parts_whatever_the_clock(tmp_path, monkeypatch):
    store = StateStore(tmp_path / "st", FP)
    jobs = tmp_path / "st" / "jobs"
    late = 9_000_000_000_000_000_000
    _part(jobs, late, pl.DataFrame({"seq": [late], "job_id": ["a"], "status": ["assigned"]}))
    batches = tmp_path / "st" / "batches"
    _part(batches, late + 5, pl.DataFrame({"seq": [late + 7], "batch_key": ["k"],
                                           "status": ["intent"]}))
    monkeypatch.setattr(state_module.time, "time_ns", lambda: 1_000)  # a clock far behind
    store = StateStore(tmp_path / "st", FP)
    store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": "completed"}))
    names = sorted(p.name for p in jobs.glob("part-*.parquet"))
    assert names[0].startswith(f"part-{late:020d}-")
    assert names[1].startswith(f"part-{late + 6:020d}-")
    assert store.job_events().select("seq", "status").rows() == [
        (late, "assigned"), (late + 8, "completed")]
    assert store.job_state()["status"].to_list() == ["completed"]


def test_job_events_keep_their_ts_and_batch_events_a_given_ts(tmp_path, monkeypatch):
    import datetime as dt

    store = StateStore(tmp_path / "st", FP)
    monkeypatch.setattr(state_module.time, "time_ns", lambda: 1_700_000_000_123_456_789)
    store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": "assigned"}))
    store.append_jobs(pl.DataFrame({"job_id": [], "status": []},
                                   schema={"job_id": pl.String, "status": pl.String}))
    assert len(list((tmp_path / "st" / "jobs").glob("part-*"))) == 1  # nothing empty written
    now = dt.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=dt.UTC)
    assert store.job_events()["ts"].to_list() == [now]
    given = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    store.append_batch(batch_key="k", provider="openai", status="intent", ts=given, n_jobs=3)
    store.append_batch(batch_key="j", provider="openai", status="intent")
    got = store.batch_state().select("batch_key", "ts", "n_jobs", "provider").rows()
    assert got == [("k", given, 3, "openai"), ("j", now, None, "openai")]


def test_assigned_lists_the_members_of_the_batches_asked_in_write_order(tmp_path):
    store = StateStore(tmp_path / "st", FP)
    store.append_jobs(pl.DataFrame({"job_id": ["c", "a"], "batch_key": "b1",
                                    "status": "assigned", "est_cost_usd": [0.5, 0.25]}))
    store.append_jobs(pl.DataFrame({"job_id": ["b", "d"], "batch_key": ["b2", "b3"],
                                    "status": "assigned"}))
    store.append_jobs(pl.DataFrame({"job_id": ["c"], "batch_key": "b1", "status": "completed"}))
    got = store.assigned(pl.Series(["b1", "b2"]))
    assert got.columns == ["job_id", "batch_key", "est_cost_usd"]
    assert got.rows() == [("c", "b1", 0.5), ("a", "b1", 0.25), ("b", "b2", None)]


def test_batch_state_keeps_the_first_provider_id_and_orders_by_latest_event(tmp_path):
    store = StateStore(tmp_path / "st", FP)
    store.append_batch(batch_key="k1", status="intent")
    store.append_batch(batch_key="k2", status="intent")
    store.append_batch(batch_key="k1", status="submitted", provider_batch_id="pb1")
    store.append_batch(batch_key="k2", status="submitted", provider_batch_id="pb2")
    store.append_batch(batch_key="k1", status="collected", provider_status="ended")
    got = store.batch_state()
    assert sorted(got.columns) == sorted(state_module.BATCH_EVENTS)
    assert got.select("batch_key", "status", "provider_batch_id", "provider_status").rows() == [
        ("k2", "submitted", "pb2", None), ("k1", "collected", "pb1", "ended")]
    assert StateStore(tmp_path / "empty", FP).batch_state().schema == state_module.BATCH_EVENTS


def test_messages_and_answers_of_providers_are_scrubbed_before_they_reach_disk(tmp_path):
    store = StateStore(tmp_path / "st", FP)
    key = "sk-proj-" + "a1b2c3d4" * 4
    store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": "failed",
                                    "error": [f"auth: bad key {key}"],
                                    "response": [f'{{"key": "{key}"}}'],
                                    "answer": ["kept as answered"]}))
    store.append_batch(batch_key="k", status="abandoned", detail=f"refused {key}")
    raw = b"".join(p.read_bytes() for p in (tmp_path / "st").rglob("part-*.parquet"))
    assert key.encode() not in raw
    row = store.job_events().row(0, named=True)
    assert (row["error"], row["response"], row["answer"]) == (
        "auth: bad key [redacted]", '{"key": "[redacted]"}', "kept as answered")
    assert store.batch_state()["detail"].to_list() == ["refused [redacted]"]


def test_a_column_with_some_secrets_among_nulls_is_scrubbed_and_one_of_nulls_stays_null(
    tmp_path, monkeypatch
):
    # Columns of nulls are not searched for secrets (nothing to find); a column holding
    # one secret among nulls still is, wherever the secret sits, with keys in the
    # environment (each searched literally) and shaped like a key (the pattern).
    env_key = "tok-" + "e5f6a7b8" * 3
    monkeypatch.setenv("EXAMPLE_SERVICE_TOKEN", env_key)
    store = StateStore(tmp_path / "st", FP)
    key = "sk-proj-" + "a1b2c3d4" * 4
    n = 1000
    errors = [None] * n
    errors[0], errors[n - 1] = f"bad key {key}", f"bad token {env_key}"
    responses: list[str | None] = [None] * n
    responses[n // 2] = f'{{"key": "{key}", "token": "{env_key}"}}'
    store.append_jobs(pl.DataFrame({
        "job_id": [f"j{i}" for i in range(n)], "status": "failed", "error": errors,
        "response": responses,
    }))
    store.append_jobs(pl.DataFrame({"job_id": ["k"], "status": "completed"}))
    store.append_batch(batch_key="k", status="collected", detail=None)
    events = store.job_events()
    assert events["error"].to_list() == (
        ["bad key [redacted]"] + [None] * (n - 2) + ["bad token [redacted]"] + [None]
    )
    assert events["response"].to_list()[n // 2] == (
        '{"key": "[redacted]", "token": "[redacted]"}'
    )
    assert events["response"].null_count() == n
    assert events.filter(pl.col("job_id") == "k")["error"].to_list() == [None]
    assert store.batch_state()["detail"].to_list() == [None]


def _previous_part(store: StateStore, path: Path, frame: pl.DataFrame) -> None:
    """``frame`` written as ``_write_part`` wrote it before columns of nulls were skipped by
    the secrets scrub (main at e1ef122): every message column scrubbed, same options (and
    the format key, ``raw`` as format 2 stores it and the columns it stores)."""
    from batchata_df.redact import scrub_expr

    stored = frame.with_columns(state_module.stored_raw(store.format_version)).with_columns(
        scrub_expr(pl.col(c)) for c in ("error", "detail", "response") if c in frame.columns
    )
    stored.select(state_module.stored_columns(stored, store.format_version)).write_parquet(
        path, compression="zstd", compression_level=state_module.PART_ZSTD_LEVEL,
        statistics=False, metadata={
            state_module.PART_RUN_KEY: store.manifest.run_id,
            state_module.PART_FINGERPRINT_KEY: json.dumps(store.manifest.fingerprint,
                                                          sort_keys=True),
            state_module.PART_FORMAT_KEY: str(store.format_version),
        },
    )


def test_a_part_is_the_file_the_previous_writer_wrote_and_folders_mixing_both_read_back(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("EXAMPLE_SERVICE_TOKEN", "tok-" + "e5f6a7b8" * 3)
    store = StateStore(tmp_path / "st", FP)
    events = state_module._conform(pl.DataFrame({
        "seq": [1, 2, 3], "job_id": ["a", "b", "c"], "batch_key": "b1", "status": "completed",
        "answer": ['{"x":1}', '{"x":2}', None], "error": [None, None, "bad"],
        "input_tokens": [5, 6, 7], "cost_usd": [0.5, 0.25, 0.125],
    }), JOB_EVENTS)
    # the same frame, written now and as before: the same file, byte for byte
    path, _ = store._write_part("jobs", events)
    old = tmp_path / "old.parquet"
    _previous_part(store, old, events)
    assert path.read_bytes() == old.read_bytes()
    path.unlink()
    # A folder holding a part of the previous writer (first) and parts of this one
    _previous_part(store, tmp_path / "st" / "jobs" / f"part-{1:020d}-abcdef.parquet",
                   events.with_columns(pl.lit("assigned").alias("status"),
                                       pl.lit(None, pl.Float64).alias("cost_usd")))
    store = StateStore(tmp_path / "st", FP)
    store.append_jobs(events.drop("seq", "ts"))
    states, billed = store.snapshot()
    assert states.select("job_id", "status", "answer", "error").rows() == [
        ("a", "completed", '{"x":1}', None), ("b", "completed", '{"x":2}', None),
        ("c", "completed", None, "bad")]
    assert billed.sort("job_id")["cost_usd"].to_list() == [0.5, 0.25, 0.125]
    assert store.job_events()["status"].to_list() == ["assigned"] * 3 + ["completed"] * 3
    from batchata_df.query import sql

    got = sql("SELECT job_id, status, cost_usd FROM jobs ORDER BY job_id", tmp_path / "st")
    assert got.rows() == [("a", "completed", 0.5), ("b", "completed", 0.25),
                          ("c", "completed", 0.125)]
    index = store.job_index()
    assert index.events(pl.Series(["b"]), ["job_id", "status"])["status"].to_list() == [
        "assigned", "completed"]


def test_a_read_only_store_writes_nothing(tmp_path):
    store = StateStore(tmp_path / "st", FP, readonly=True)
    assert not (tmp_path / "st").exists()  # not even the manifest
    with pytest.raises(StateError, match="was opened read-only"):
        store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": "assigned"}))
    with pytest.raises(StateError, match="was opened read-only"):
        store.compact()
    assert not (tmp_path / "st").exists()


def test_an_unwritable_folder_is_a_state_error_that_names_the_fix(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StateError, match=r"^cannot create the checkpoint folder '.*file/st'"):
        StateStore(tmp_path / "file" / "st", FP)
    store = StateStore(tmp_path / "st", FP)
    (tmp_path / "st" / "jobs").rmdir()
    (tmp_path / "st" / "jobs").write_text("in the way")  # writes fail with NotADirectoryError
    with pytest.raises(StateError) as caught:
        store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": "assigned"}))
    msg = str(caught.value)
    assert msg.startswith(
        f"cannot write to the checkpoint folder {str(tmp_path / 'st')!r} (OSError: Not a "
        "directory")
    assert msg.endswith(
        "); make it writable again (or free space) and call again with the same state: rows "
        "already sent are collected, not paid twice")
    assert isinstance(caught.value.__cause__, OSError)


def test_opening_a_folder_checks_parts_manifest_and_fingerprint(tmp_path):
    root = tmp_path / "st"
    store = StateStore(root, FP)
    store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": "assigned"}))
    with pytest.raises(state_module.StateMismatchError) as caught:
        StateStore(root, {"model": "m2", "prompt": "p2", "extra": "x"})
    assert str(caught.value).startswith(
        f"checkpoint folder {str(root)!r} was written for a run with a different extra, "
        "model, prompt; resuming it would mix answers")
    manifest = (root / "manifest.json").read_text()
    # A manifest rebuilt by `repair` without the settings: the next run states them again.
    restated = json.loads(manifest) | {"fingerprint": {}}
    (root / "manifest.json").write_text(json.dumps(restated))
    # A reader (dry run, status) takes the settings as the run would, and writes nothing.
    assert StateStore(root, {"model": "m"}, readonly=True).manifest.fingerprint == {"model": "m"}
    assert json.loads((root / "manifest.json").read_text())["fingerprint"] == {}
    again = StateStore(root, {"model": "m"})
    assert again.manifest == Manifest(store.manifest.run_id, {"model": "m"}, 2,
                                      store.manifest.created_at)
    assert read_manifest(root / "manifest.json") == again.manifest
    (root / "manifest.json").unlink()
    with pytest.raises(StateError) as caught:
        StateStore(root, FP)
    assert str(caught.value).startswith(
        f"checkpoint folder {str(root)!r} holds 1 event parts but no manifest.json: its run id")
    assert str(caught.value).endswith(
        f"Run `batchata-df repair {root}` to see how the manifest would be rebuilt from the "
        "parts, then the same command with --apply")


def test_lock_timeouts_holders_and_liveness(monkeypatch):
    check = state_module.check_lock_timeout
    assert (check(None), check(0), check(5), check(2.5)) == (None, 0.0, 5.0, 2.5)
    assert isinstance(check(0), float)
    for bad in (True, -1, -0.5, float("nan"), "5"):
        with pytest.raises(state_module.ConfigError) as caught:
            check(bad)
        assert str(caught.value).endswith(f"or None (wait as long as it takes), got {bad!r}")
    holder = state_module.LockHolder
    assert holder.parse('{"pid": "12", "host": 5, "since": 3}') == holder(12, "5", 3.0)
    for text in ("", "{", "[]", '{"pid": 1, "host": "h"}', '{"pid": "x", "host": "h", "since": 1}'):
        assert holder.parse(text) is None
    monkeypatch.setattr(state_module.time, "time", lambda: 1_764_356_000.0)
    assert holder(123, "h", 1_764_355_988.4).describe() == (
        "pid 123 on host h since 2025-11-28 18:53:08 UTC (12 s ago)")
    assert holder(7, "h", 1_764_356_100.0).describe().endswith("(0 s ago)")  # clock behind
    here = socket.gethostname()
    assert state_module._alive(holder(os.getpid(), here, 0.0))
    assert state_module._alive(holder(os.getpid() + 10**7, "another-host", 0.0))
    assert not state_module._alive(holder(2**22 + 12345, here, 0.0))  # no such process


def test_a_dry_run_on_a_folder_repaired_without_its_settings_plans_like_the_run(tmp_path):
    """``repair`` rebuilds a manifest with an empty fingerprint from parts that did not
    record the settings; the next run states them again. A dry run before it must plan as
    that run would, not refuse the folder as written "for a different model"."""
    from pydantic import BaseModel

    from batchata_df import batch_llm

    class A(BaseModel):
        label: str

    root = tmp_path / "st"
    StateStore(root, {}).append_jobs(pl.DataFrame({"job_id": ["elsewhere"], "status": "assigned"}))
    manifest = (root / "manifest.json").read_text()
    plan = pl.DataFrame({"t": ["a", "b"]}).pipe(
        batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}", state=root, dry_run=True)
    assert plan["_status"].to_list() == ["planned", "planned"]
    assert (root / "manifest.json").read_text() == manifest  # a dry run writes nothing


def test_every_file_is_on_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """Crash safety needs the data of a part, manifest or compacted part flushed before the
    rename that makes it visible (and the folder after a compaction's rename), and the
    lock's holder record flushed: the calls are recorded, then made for real."""
    calls: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        calls.append(("replace", str(src), str(dst)))
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    root = tmp_path / "st"
    with WriterLock(root):
        assert calls == [("fsync", str(root / LOCK_FILE))]
        calls.clear()
        store = StateStore(root, FP)
        store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": "assigned"}))
        store.append_batch(batch_key="k", status="intent")
        store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": "completed"}))
        store.compact()
    renames = [c for c in calls if c[0] == "replace"]
    assert [Path(dst).parent.name for _, _, dst in renames] == [
        "st", "jobs", "batches", "jobs", "jobs"]
    for _, src, dst in renames:
        at = calls.index(("replace", src, dst))
        assert ("fsync", src) in calls[:at], src
    (merged,) = (root / "jobs").glob("part-*~*.parquet")
    assert calls[-1] == ("fsync", str(root / "jobs"))
    assert calls[-2] == ("replace", calls[-2][1], str(merged))


def test_latest_events_come_in_the_order_they_were_written(tmp_path):
    """``job_state`` and ``latest_status`` are deterministic: one row per job, in the order
    of each job's latest event."""
    store = StateStore(tmp_path / "st", FP)
    ids = ["c", "a", "b", "e", "d", "f", "h", "g"]
    store.append_jobs(pl.DataFrame({"job_id": ids, "batch_key": "b1", "status": "assigned"}))
    store.append_jobs(pl.DataFrame({"job_id": ["a", "e", "c", "g"], "batch_key": "b1",
                                    "status": "completed"}))
    want = ["b", "d", "f", "h", "a", "e", "c", "g"]
    assert store.job_state()["job_id"].to_list() == want
    assert store.job_state(store.job_events())["status"].to_list() == ["assigned"] * 4 + [
        "completed"] * 4
    assert store.latest_status(pl.Series(ids))["job_id"].to_list() == want


def test_a_manifest_that_cannot_be_written_is_a_state_error_that_names_the_fix(
    tmp_path, monkeypatch
):
    """The manifest goes through a temporary file first; a folder where it cannot be made
    (here a directory is in the way of the temporary name) is refused before anything runs."""
    monkeypatch.setattr(state_module.secrets, "token_hex", lambda n: "f" * (2 * n))
    root = tmp_path / "st"
    (root / ".tmp-manifest.json-ffffffff").mkdir(parents=True)
    with pytest.raises(StateError) as caught:
        StateStore(root, FP)
    assert str(caught.value) == (
        f"cannot write the manifest of the checkpoint folder {str(root)!r} (IsADirectoryError: "
        "Is a directory); make the folder writable or pass another state=")
    assert isinstance(caught.value.__cause__, IsADirectoryError)
    assert not (root / "manifest.json").exists()


def test_a_refused_call_waits_for_the_winner_to_record_itself(tmp_path, monkeypatch):
    """Between the kernel granting the lock and the winner writing its record, the file
    names the previous (ended) holder: the refused call reads again until the record names
    a live process, so the refusal names the winner rather than "starting up"."""
    import fcntl
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": here, "since": 1.0}))

    def winner_records_itself(_seconds: float) -> None:  # what happens while it waits
        (tmp_path / LOCK_FILE).write_text(
            json.dumps({"pid": os.getpid(), "host": here, "since": 2.0}))

    monkeypatch.setattr(state_module.time, "sleep", winner_records_itself)
    monkeypatch.setattr(state_module.time, "monotonic", lambda: 50.0)  # well within a second
    with open(tmp_path / LOCK_FILE, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(StateLockedError) as caught:
            WriterLock(tmp_path).acquire()
    assert caught.value.holder == state_module.LockHolder(os.getpid(), here, 2.0)
    assert f"another call: pid {os.getpid()} on host {here} since 1970-01-01" in str(caught.value)


def test_a_folder_that_cannot_be_locked_is_a_state_error_naming_it(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    root = tmp_path / "file" / "st"
    with pytest.raises(StateError) as caught:
        WriterLock(root).acquire()
    assert str(caught.value).startswith(f"cannot lock the checkpoint folder {str(root)!r}: ")
    assert isinstance(caught.value.__cause__, OSError)


def test_ids_line_up_only_when_they_are_the_same_ids_in_the_same_order_none_null() -> None:
    from batchata_df.state import lined_up

    ids = pl.DataFrame({"job_id": ["a", "b", "c"]})
    assert lined_up(ids, ids.with_columns(pl.lit(1).alias("x")))
    assert not lined_up(ids, ids.reverse())  # same height, another order
    assert not lined_up(ids, pl.DataFrame({"job_id": ["a", "b", "d"]}))
    assert not lined_up(ids, ids.head(2)) and not lined_up(ids.head(2), ids)
    nulls = pl.DataFrame({"job_id": ["a", None]})
    assert not lined_up(nulls, nulls)  # a null id matches nothing in a join
    assert not lined_up(ids, ids.with_columns(pl.col("job_id").cast(pl.Categorical)))
