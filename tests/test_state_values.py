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


# -- damage -------------------------------------------------------------------------------


def test_a_part_with_a_column_of_the_wrong_type_is_damaged(tmp_path):
    store = StateStore(tmp_path / "st", FP)
    store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": "assigned"}))
    bad = tmp_path / "st" / "jobs" / "part-99999999999999999999-abcdef.parquet"
    pl.DataFrame({"seq": [5], "job_id": ["b"], "status": ["completed"],
                  "cost_usd": ["0.5"]}).write_parquet(bad)
    assert check_part(bad) == "column 'cost_usd' is String, not Float64"
    assert find_damaged(tmp_path / "st") == [state_module.Damage(bad, check_part(bad))]
    with pytest.raises(StateError, match="1 damaged event part"):
        StateStore(tmp_path / "st", FP)


def test_a_damaged_part_error_lists_five_parts_and_counts_the_rest(tmp_path):
    damage = [state_module.Damage(tmp_path / f"p{i}", f"problem {i}") for i in range(7)]
    msg = str(damaged_error(tmp_path, damage))
    listed = "; ".join(f"{tmp_path / f'p{i}'}: problem {i}" for i in range(5))
    assert f"has 7 damaged event part(s): {listed} (and 2 more). Do not delete" in msg
    assert "p5" not in msg and "problem 6" not in msg
    assert f"`batchata-df repair {tmp_path}`" in msg
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


# -- manifest -----------------------------------------------------------------------------


def test_the_manifest_file_is_sorted_indented_json_of_its_fields(tmp_path):
    m = Manifest(run_id="r1", fingerprint={"z": "1", "a": "2"}, created_at=12.5)
    assert m.to_json() == (
        '{\n  "created_at": 12.5,\n  "fingerprint": {\n    "a": "2",\n    "z": "1"\n  },\n'
        '  "format_version": 1,\n  "run_id": "r1"\n}'
    )


def test_read_manifest_gives_back_every_field_written(tmp_path):
    store = StateStore(tmp_path / "st", FP)
    back = read_manifest(tmp_path / "st" / "manifest.json")
    assert back == store.manifest
    assert back.created_at == store.manifest.created_at > 0
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"run_id": "r", "created_at": 7, "format_version": 1}))
    assert read_manifest(path) == Manifest("r", {}, 1, 7.0)


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
    assert back == Manifest(store.manifest.run_id, {"model": "m", "schema": "s2"}, 1,
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
