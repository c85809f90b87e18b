"""Property: any interleaving of events and crashes replays to the same checkpoint state.

A crash while a part is written leaves a hidden ``.tmp-*`` file (half written, never
renamed); a crash between writes leaves whole parts. Either way a store opened afterwards
must read exactly the events whose parts were completed, in the order they were written.
"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from batchata_df.repair import doctor
from batchata_df.state import (
    JOB_EVENTS,
    StateStore,
    _billed_sorted,
    _conform,
    billed_from_events,
    join_by_job,
)

FP = {"model": "m", "prompt": "p"}
JOBS = [f"j{i}" for i in range(6)]
BATCHES = ["b0", "b1", "b2"]

job_event = st.fixed_dictionaries(
    {
        "job_id": st.sampled_from(JOBS),
        "batch_key": st.sampled_from(BATCHES),
        "status": st.sampled_from(["assigned", "completed", "failed", "cancelled"]),
        "cost_usd": st.one_of(st.none(), st.floats(0, 1, allow_nan=False)),
        "answer": st.one_of(st.none(), st.text(max_size=8)),
    }
)
op = st.one_of(
    st.tuples(st.just("jobs"), st.lists(job_event, min_size=1, max_size=4)),
    st.tuples(
        st.just("batch"),
        st.fixed_dictionaries(
            {
                "batch_key": st.sampled_from(BATCHES),
                "status": st.sampled_from(["intent", "submitted", "collected", "abandoned"]),
                "provider_batch_id": st.one_of(st.none(), st.sampled_from(["x1", "x2"])),
            }
        ),
    ),
    # A crash while writing a part: its events never count. `cut` is how much got written.
    st.tuples(st.just("crash_in_write"), st.lists(job_event, min_size=1, max_size=3),
              st.floats(0, 0.99)),
    st.tuples(st.just("crash"), st.none()),  # between writes: the next call reopens
)


def _half_written(store: StateStore, events: list[dict[str, object]], cut: float) -> None:
    """What a process killed inside ``_write_part`` leaves: a truncated hidden temp file."""
    frame = pl.DataFrame(events).with_columns(pl.lit(1, dtype=pl.Int64).alias("seq"))
    tmp = store.root / "jobs" / f".tmp-part-{secrets.token_hex(4)}.parquet"
    frame.write_parquet(tmp)
    data = tmp.read_bytes()
    tmp.write_bytes(data[: int(len(data) * cut)])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=12))
def test_any_interleaving_of_events_and_crashes_replays_to_the_same_state(ops):
    with tempfile.TemporaryDirectory() as root:
        store = StateStore(root, FP)
        expected_jobs: dict[str, dict[str, object]] = {}
        written: list[dict[str, object]] = []
        expected_batches: dict[str, str] = {}
        for kind, payload, *rest in ops:
            if kind == "jobs":
                store.append_jobs(pl.DataFrame(payload, schema_overrides={
                    "cost_usd": pl.Float64, "answer": pl.String}))
                for event in payload:
                    expected_jobs[event["job_id"]] = event
                    written.append(event)
            elif kind == "batch":
                store.append_batch(**payload)
                expected_batches[payload["batch_key"]] = payload["status"]
            elif kind == "crash_in_write":
                _half_written(store, payload, rest[0])
                store = StateStore(root, FP)
            else:
                store = StateStore(root, FP)

        replayed = StateStore(root, FP)  # a fresh process reading the folder
        state = replayed.job_state()
        got = {r["job_id"]: r for r in state.iter_rows(named=True)}
        assert set(got) == set(expected_jobs)
        for job_id, event in expected_jobs.items():
            for col in ("batch_key", "status", "cost_usd", "answer"):
                assert got[job_id][col] == event[col], (job_id, col)
        events = replayed.job_events()
        assert events.height == len(written)
        assert events["seq"].is_sorted() and events["seq"].n_unique() == events.height
        assert events["job_id"].to_list() == [e["job_id"] for e in written]
        snap_state, billed = replayed.snapshot()
        assert snap_state.sort("job_id").equals(state.sort("job_id"))
        assert snap_state.schema == JOB_EVENTS
        batches = replayed.batch_state()
        assert dict(zip(batches["batch_key"], batches["status"], strict=True)) == (
            expected_batches
        )
        # Per (job, batch) the last terminal event is billed once.
        want: dict[str, float] = {}
        last: dict[tuple[str, str], dict[str, object]] = {}
        for e in written:
            if e["status"] != "assigned":
                last[(e["job_id"], e["batch_key"])] = e
        for (job_id, _), e in last.items():
            want[job_id] = want.get(job_id, 0.0) + float(e["cost_usd"] or 0.0)
        got_billed = dict(zip(billed["job_id"], billed["cost_usd"].fill_null(0.0), strict=True))
        assert got_billed.keys() == want.keys()
        for job_id, cost in want.items():
            assert abs(got_billed[job_id] - cost) < 1e-9
        # Leftover temp files are not damage: they are simply not part of the state.
        assert doctor(Path(root)).damaged == []


billing_event_keys = ["job_id", "batch_key", "status", "cost_usd", "input_tokens",
                      "output_tokens", "reasoning_tokens"]
billing_event = st.fixed_dictionaries(
    {
        "job_id": st.one_of(st.sampled_from(JOBS), st.none()),
        "batch_key": st.one_of(st.sampled_from(BATCHES), st.none()),
        "status": st.sampled_from(["assigned", "completed", "failed", "cancelled"]),
        "cost_usd": st.one_of(st.none(), st.floats(0, 1, allow_nan=False)),
        "input_tokens": st.one_of(st.none(), st.integers(0, 10**6)),
        "output_tokens": st.one_of(st.none(), st.integers(0, 10**6)),
        "reasoning_tokens": st.one_of(st.none(), st.integers(0, 10**3)),
    }
)


@settings(max_examples=150, deadline=None)
@given(events=st.lists(billing_event, max_size=14), once=st.booleans())
def test_snapshot_bill_without_hashing_ids_equals_the_grouped_bill(events, once):
    """``snapshot``'s bill skips the id count when each job's only bill is its last event.

    Whatever the events (retries, a batch collected twice, nulls, events without a batch
    or a job id), the bill is the grouped one of :func:`billed_from_events`; ``once``
    draws folders where every job has one event, the case the shortcut takes.
    """
    if once:  # one event per job: the shortcut's case (and null ids, which it must refuse)
        seen: set[object] = set()
        events = [e for e in events if not (e["job_id"] in seen or seen.add(e["job_id"]))]
    frame = _conform(
        pl.DataFrame(events, schema={k: JOB_EVENTS[k] for k in billing_event_keys}).with_columns(
            pl.int_range(pl.len(), dtype=pl.Int64).alias("seq")
        ),
        JOB_EVENTS,
    )
    latest = frame.filter(pl.col("job_id").is_last_distinct() & pl.col("job_id").is_not_null())
    got = _billed_sorted(frame, latest).sort("job_id", nulls_last=True)
    want = billed_from_events(frame).sort("job_id", nulls_last=True)
    assert got.schema == want.schema
    assert got.to_dicts() == want.to_dicts() or _close(got, want)


def _close(got: pl.DataFrame, want: pl.DataFrame) -> bool:
    """Equal but for float rounding of summed costs."""
    if got.drop("cost_usd").to_dicts() != want.drop("cost_usd").to_dicts():
        return False
    pairs = zip(got["cost_usd"].to_list(), want["cost_usd"].to_list(), strict=True)
    return all((a is None) == (b is None) and (a is None or abs(a - b) < 1e-9) for a, b in pairs)


@settings(max_examples=150, deadline=None)
@given(
    left_ids=st.lists(st.one_of(st.sampled_from(JOBS), st.none()), max_size=8),
    data=st.data(),
)
def test_join_by_job_equals_the_left_join(left_ids, data):
    """Aligned ids (the shortcut), permuted, missing, extra, duplicated or null: same frame."""
    how = data.draw(st.sampled_from(["aligned", "permuted", "any"]))
    if how == "any":
        right_ids = data.draw(st.lists(st.sampled_from(JOBS), unique=True, max_size=6))
    else:
        unique = list(dict.fromkeys(i for i in left_ids if i is not None))
        right_ids = unique if how == "aligned" else data.draw(st.permutations(unique))
        if how == "aligned":
            left_ids = unique  # each job once, in the right's order: the shortcut's case
    left = pl.DataFrame(
        {"job_id": left_ids, "x": list(range(len(left_ids)))},
        schema={"job_id": pl.String, "x": pl.Int64},
    )
    right = pl.DataFrame(
        {"job_id": right_ids, "y": [f"v{i}" for i in right_ids], "z": [1.5] * len(right_ids)},
        schema={"job_id": pl.String, "y": pl.String, "z": pl.Float64},
    )
    want = left.join(right, on="job_id", how="left", maintain_order="left")
    assert_frame_equal(join_by_job(left, right), want)


# -- the final read-back from what a call wrote (StateStore.written_states) ------------------

end_event = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["completed", "failed", "cancelled"]),
        "batch_key": st.one_of(st.none(), st.sampled_from(BATCHES)),
        "cost_usd": st.one_of(st.none(), st.floats(0, 1, allow_nan=False)),
        "input_tokens": st.one_of(st.none(), st.integers(0, 10**6)),
        "answer": st.one_of(st.none(), st.text(max_size=8)),
        "error": st.one_of(st.none(), st.sampled_from(["x", "key sk-abcdefghijklmnopqrstuv"])),
    }
)
JOB_SCHEMA = {"job_id": pl.String, "status": pl.String, "batch_key": pl.String,
              "cost_usd": pl.Float64, "input_tokens": pl.Int64, "answer": pl.String,
              "error": pl.String}

Row = tuple[str, str] | tuple[str, str, dict[str, object]]
"""One job event: ``(job_id, status)``, or with more of its columns."""
Write = tuple[str, list[Row]] | tuple[str, int] | tuple[str]
"""What happens to the folder, in order: ``("earlier", rows)`` (a part written before the
call starts recording), ``("jobs", rows)`` (a part the call's store writes), ``("other",
rows)`` (a part another writer writes), ``("compact",)``, ``("remove", k)`` (the ``k``-th
part, counted round the folder's parts in name order, deleted)."""
Case = tuple[int, str, list[Write]]
"""``(n, spoiler, writes)``: the call's jobs are ``j0`` .. ``j{n-1}``."""


def _a_run(draw: st.DrawFn, n: int) -> list[list[Row]]:
    """A call's parts: each job assigned (maybe again after a failed create), then ended
    once, in batches, in any order; the ends of a batch in any order."""
    jobs = [f"j{i}" for i in range(n)]
    order = draw(st.permutations(jobs))
    cuts = sorted(draw(st.sets(st.integers(1, max(n - 1, 1)), max_size=3)))
    batches = [order[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True) if order[a:b]]
    parts: list[list[Row]] = []
    pending: list[list[str]] = []

    def assign(batch: list[str]) -> list[Row]:
        return [(j, "assigned", {"batch_key": "b0"}) for j in batch]

    def end(batch: list[str]) -> list[Row]:
        rows: list[Row] = []
        for j in batch:
            event = draw(end_event)
            rows.append((j, event["status"], {k: v for k, v in event.items() if k != "status"}))
        return rows

    for batch in batches:
        if draw(st.booleans()):  # a create that failed: assigned once more, later
            parts.append(assign(batch))
        parts.append(assign(batch))
        pending.append(batch)
        while pending and draw(st.booleans()):  # collected before the next is sent
            done = pending.pop(draw(st.integers(0, len(pending) - 1)))
            parts.append(end(draw(st.permutations(done))))
    parts.extend(end(draw(st.permutations(done))) for done in pending)
    return parts


spoiler = st.sampled_from([
    "none", "none", "none",  # the case the shortcut is for, most of the time
    "earlier_call", "other_writer", "compact", "twice", "assigned_after_end", "mixed",
    "unended", "stranger", "removed",
])


@st.composite
def a_call(draw: st.DrawFn) -> Case:
    """A call's writes (:func:`_a_run`) and one thing that breaks ``written_states``'
    premises, anywhere; an event after the call's last one (another writer's, or an
    assigned one) at the end, where it changes a job's latest event."""
    n = draw(st.integers(1, 7))
    spoil = draw(spoiler)
    ids = [f"j{i}" for i in range(n)]
    parts = _a_run(draw, n)
    writes: list[Write] = []
    if spoil == "earlier_call":
        writes.append(("earlier", [(ids[0], "failed")]))
    late_spoil = spoil in ("other_writer", "assigned_after_end")
    spoil_at = len(parts) if late_spoil else draw(st.integers(0, len(parts)))
    for i, rows in enumerate([*parts, None]):
        if i == spoil_at:
            victim = draw(st.sampled_from(ids))
            spoiled: Write | None = {
                "other_writer": ("other", [(victim, "assigned")]),
                "compact": ("compact",),
                "twice": ("jobs", [(victim, "failed")]),
                "assigned_after_end": ("jobs", [(victim, "assigned")]),
                "mixed": ("jobs", [(victim, "assigned"), (victim, "completed")]),
                "stranger": ("jobs", [("zz", "failed")]),
            }.get(spoil)
            if spoiled is not None:
                writes.append(spoiled)
            if spoil == "unended" and rows is not None and rows[0][1] != "assigned":
                rows = rows[1:]
        if rows:
            writes.append(("jobs", rows))
    if spoil == "removed":
        writes.append(("remove", draw(st.integers(0, len(writes)))))
    return n, spoil, writes


def _part(rows: list[Row]) -> pl.DataFrame:
    events = [{"job_id": r[0], "status": r[1], **(r[2] if len(r) > 2 else {})} for r in rows]
    return pl.DataFrame(events, schema=JOB_SCHEMA)


AB = [("j0", "assigned"), ("j1", "assigned")]
ENDED: list[Write] = [("jobs", AB), ("jobs", [("j0", "completed"), ("j1", "failed")])]
"""j0 and j1 assigned, then ended: what each example below spoils."""


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=a_call())
# The shortcut's own case, an error holding a key: it answers, scrubbed as written.
@example(case=(2, "none", [("jobs", AB), ("jobs", [
    ("j0", "completed"), ("j1", "failed", {"error": "key sk-abcdefghijklmnopqrstuv"})])]))
# Another writer's event after the ends, or a part removed: the parts check.
@example(case=(2, "other_writer", [*ENDED, ("other", [("j0", "assigned")])]))
@example(case=(2, "removed", [*ENDED, ("remove", 1)]))
# j0 assigned again after its end: the late events' seq check.
@example(case=(2, "assigned_after_end", [*ENDED, ("jobs", [("j0", "assigned")])]))
# A stranger assigned after the ends: a late event with no end to compare (fill_null).
@example(case=(2, "stranger", [*ENDED, ("jobs", [("zz", "assigned")])]))
# A part holding an end (j1) and another job's assigned event (j0): the mixed-part check.
@example(case=(2, "mixed", [("jobs", AB), ("jobs", [("j0", "completed"), ("j1", "completed")]),
                            ("jobs", [("j1", "failed"), ("j0", "assigned")])]))
# j0 ended twice, j1 never: as many ends as jobs, all the call's (the n_unique check).
@example(case=(2, "twice", [("jobs", AB), ("jobs", [("j0", "completed")]),
                            ("jobs", [("j0", "failed")])]))
# A stranger ends, j1 never: as many distinct ends as jobs (the membership check).
@example(case=(2, "stranger", [("jobs", AB), ("jobs", [("j0", "completed"), ("zz", "failed")])]))
# An end without a job id, j1 never: Polars' all() would skip the null (the null-id check).
@example(case=(2, "stranger", [("jobs", AB), ("jobs", [("j0", "completed"), (None, "failed")])]))
def test_the_states_a_call_wrote_equal_the_folder_s_snapshot(case: Case) -> None:
    """``written_states`` (no read, no search) is exactly ``snapshot`` whenever it answers.

    A call's writes (assigned parts, failed creates assigned again, terminal parts in any
    order, batches collected before others are sent) are given it, and then one thing that
    breaks its premises: events of an earlier call, another writer, a compaction, a job
    ended twice, an assigned event after a job's end, a part mixing both, a job never
    ended, a job that is not the call's, a part removed. Whenever it answers, it is what a
    fresh reader's ``snapshot`` of the folder gives; without a spoiler it must answer.
    """
    n, spoil, writes = case
    ids = [f"j{i}" for i in range(n)]
    with tempfile.TemporaryDirectory() as root:
        store = StateStore(root, FP)
        earlier = [w for w in writes if w[0] == "earlier"]
        for write in earlier:
            store.append_jobs(_part(write[1]))
        assert store.record_jobs() == (not earlier)
        for write in writes[len(earlier):]:
            if write[0] == "jobs":
                store.append_jobs(_part(write[1]))
            elif write[0] == "other":
                StateStore(root, FP).append_jobs(_part(write[1]))
            elif write[0] == "compact":
                store.compact()
            elif write[0] == "remove":
                parts = sorted(Path(root, "jobs").glob("part-*.parquet"))
                parts[write[1] % len(parts)].unlink()
        got = store.written_states(pl.Series("job_id", ids))
        assert store.written_states(pl.Series("job_id", ids)) is None  # it stopped recording
        if spoil == "none":
            assert got is not None
        if got is not None:
            latest, billed = StateStore(root, FP, readonly=True).snapshot()
            assert_frame_equal(got[0], latest)
            assert_frame_equal(got[1], billed)
