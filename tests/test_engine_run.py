"""The progress figures of a run (:meth:`RunState.snapshot`), value by value, on set states.

Each test builds a :class:`RunState` by hand and reads one snapshot at a given clock
reading: no engine, no clock, no I/O. And the crash-test hook (:func:`failpoint`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from batchata_df.engine.run import RunState, _eta, failpoint


def state(**kw: Any) -> RunState:
    """A run that started at 100.0 on the clock, with ``kw`` set (``done``: some counts)."""
    done = kw.pop("done", {})
    s = RunState(started=100.0, **kw)
    s.done.update(done)
    return s


def test_the_projected_cost_spreads_the_average_of_answered_rows_over_the_rest() -> None:
    # 2 completed and 1 failed cost $6 (cancelled rows cost nothing and are not averaged):
    # $2 a row, and 6 rows still pending.
    s = state(total=10, cost=6.0, done={"completed": 2, "failed": 1, "cancelled": 1})
    snap = s.snapshot("running", now=130.0)
    assert (snap.completed, snap.failed, snap.cancelled, snap.pending) == (2, 1, 1, 6)
    assert snap.projected_cost_usd == pytest.approx(6.0 + 2.0 * 6)
    assert snap.cost_usd == 6.0
    assert snap.elapsed_s == 30.0
    # Nothing answered yet: no average to go by.
    nothing = state(total=10, done={"cancelled": 3}).snapshot("running", 130.0)
    assert nothing.projected_cost_usd is None


def test_the_eta_counts_rows_ended_by_this_call_and_those_finished_in_running_batches() -> None:
    # 20 rows had ended before this call; 10 more ended since its first submit 20 s ago,
    # and the running batches report 5 + 5 requests done: 20 in 20 s, 60 left -> 60 s.
    s = state(total=100, done={"completed": 25, "failed": 5}, done_at_start=20,
              first_submit_at=110.0, in_flight_finished={"k1": 5, "k2": 5})  # fmt: skip
    snap = s.snapshot("running", now=130.0)
    assert snap.in_flight_done == 10
    assert snap.pending == 70  # finished inside a running batch is still pending
    assert snap.eta_s == pytest.approx(60 * 20.0 / 20)


def test_requests_reported_done_in_flight_never_exceed_the_rows_pending() -> None:
    s = state(total=10, done={"completed": 8}, first_submit_at=100.0,
              in_flight_finished={"k1": 7})  # fmt: skip
    snap = s.snapshot("running", now=110.0)
    assert snap.in_flight_done == 2
    assert snap.eta_s == 0.0  # nothing left to wait for


def test_the_final_snapshot_clears_what_only_a_running_call_has() -> None:
    s = state(total=4, done={"completed": 3}, first_submit_at=100.0,
              in_flight_finished={"k1": 1}, activity="polling 1 batch", reserved=0.25,
              cap_waiting=2, cap_rounds=3)  # fmt: skip
    running = s.snapshot("running", now=110.0)
    assert (running.activity, running.in_flight_done, running.reserved_usd) == (
        "polling 1 batch", 1, 0.25)  # fmt: skip
    assert running.cap_waiting == 2 and running.eta_s is not None
    done = s.snapshot("done", now=110.0)
    assert (done.activity, done.in_flight_done, done.eta_s, done.reserved_usd) == ("", 0, None, 0.0)
    assert done.cap_waiting == 0
    assert done.cap_rounds == 3  # what happened stays
    s.stop_reason = "time_limit"
    stopping = s.snapshot("running", now=110.0)
    assert stopping.eta_s is None and stopping.stop_reason == "time_limit"
    assert stopping.activity == "polling 1 batch"


@pytest.mark.parametrize(
    ("progressed", "left", "seconds", "eta"),
    [
        (1, 3, 2.0, 6.0),  # one row is already a rate
        (50, 150, 10.0, 30.0),
        (4, -2, 10.0, 0.0),  # never negative
        (0, 10, 10.0, None),  # nothing done yet
        (5, 10, 0.0, None),  # no time has passed
        (5, 10, None, None),  # nothing submitted
    ],
)
def test_the_eta_is_the_time_left_at_the_observed_rate(
    progressed: int, left: int, seconds: float | None, eta: float | None
) -> None:
    assert _eta(progressed=progressed, left=left, seconds=seconds) == eta


def test_a_failpoint_kills_the_process_with_exit_code_75_only_where_it_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BATCHATA_DF_FAILPOINT", raising=False)
    failpoint("after_submit")  # not asked for: nothing happens
    code = (
        "from batchata_df.engine.run import failpoint\n"
        "failpoint('before_submit')\n"
        "print('passed the other point', flush=True)\n"
        "failpoint('after_submit')\n"
        "print('alive')\n"
    )
    env = {**os.environ, "BATCHATA_DF_FAILPOINT": "after_submit"}
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=120, check=False)  # fmt: skip
    # 75 is what the crash tests look for (``returncode == 75``): died at the point named.
    assert (child.returncode, child.stdout) == (75, "passed the other point\n"), child.stderr


def test_the_fake_clock_moves_only_forward_by_what_was_waited_and_keeps_wall_time_in_step():
    from batchata_df.engine.clock import FakeClock

    clock = FakeClock(start=1000.0, wall=1_800_000_000.0)
    clock.sleep(5.0)
    clock.sleep(2.5)
    clock.sleep(-3.0)  # a negative wait waits nothing
    clock.advance(0.5)
    assert clock.monotonic() == 1008.0
    assert clock.time() == 1_800_000_008.0
    assert clock.waits == [5.0, 2.5, -3.0]


def test_one_answered_row_is_already_an_average_for_the_projected_cost() -> None:
    # 1 completed row cost $2: 3 rows left at $2 each.
    one = state(total=4, cost=2.0, done={"completed": 1}).snapshot("running", now=110.0)
    assert one.projected_cost_usd == pytest.approx(2.0 + 2.0 * 3)
    # A failed row is answered too (its cost counts in the average).
    failed = state(total=4, cost=1.0, done={"failed": 1}).snapshot("running", now=110.0)
    assert failed.projected_cost_usd == pytest.approx(1.0 + 1.0 * 3)


def test_a_running_snapshot_carries_every_figure_of_the_run_by_value() -> None:
    from batchata_df.engine.run import ProgressSnapshot

    s = state(total=10, done={"completed": 3, "failed": 1, "cancelled": 1}, cost=4.0,
              cache_saved=0.5, reserved=0.25, cap_waiting=2, cap_rounds=3, expected_usd=1.5,
              worst_usd=3.0, realtime_in_flight=4, activity="polling 3 batches",
              batch_status={"k1": "submitted", "k2": "submitted", "k3": "cancel_requested"},
              in_flight_finished={"k1": 2}, first_submit_at=110.0, done_at_start=1)  # fmt: skip
    # 5 ended, 4 of them answered for $4: $1 a row, 5 rows left. 1 ended before this call,
    # 4 since its first submit 20 s ago and 2 inside a running batch: 6 in 20 s, 3 left.
    assert s.snapshot("running", now=130.0) == ProgressSnapshot(
        total=10, completed=3, failed=1, cancelled=1, pending=5,
        batches={"submitted": 2, "cancel_requested": 1}, cost_usd=4.0, elapsed_s=30.0,
        phase="running", activity="polling 3 batches", projected_cost_usd=4.0 + 1.0 * 5,
        in_flight_done=2, eta_s=3 * 20.0 / 6, stop_reason=None, cache_saved_usd=0.5,
        reserved_usd=0.25, cap_waiting=2, cap_rounds=3, expected_cost_usd=1.5,
        worst_case_usd=3.0, realtime_in_flight=4,
    )  # fmt: skip
    # The last one keeps what happened and clears what only a running call has.
    s.stop_reason = "time_limit"
    assert s.snapshot("done", now=140.0) == ProgressSnapshot(
        total=10, completed=3, failed=1, cancelled=1, pending=5,
        batches={"submitted": 2, "cancel_requested": 1}, cost_usd=4.0, elapsed_s=40.0,
        phase="done", activity="", projected_cost_usd=9.0, in_flight_done=0, eta_s=None,
        stop_reason="time_limit", cache_saved_usd=0.5, reserved_usd=0.0, cap_waiting=0,
        cap_rounds=3, expected_cost_usd=1.5, worst_case_usd=3.0, realtime_in_flight=4,
    )  # fmt: skip


def test_a_release_gives_back_what_was_held_and_never_goes_below_nothing() -> None:
    s = state(reserved=1.0)
    s.release(0.25)
    assert s.reserved == 0.75
    s.release(2.0)  # more than is held (a batch priced above its reservation)
    assert s.reserved == 0.0


def test_job_rows_come_from_the_job_table_or_from_the_source_s_lookup() -> None:
    import polars as pl

    jobs = pl.DataFrame({"job_id": ["a", "b", "c"], "prompt": ["1", "2", "3"]})
    s = state(jobs=jobs)
    assert s.job_rows(pl.Series(["c", "a"])).rows() == [("a", "1"), ("c", "3")]
    assert state().job_rows(pl.Series(["a"])).height == 0  # no table (after the run)
    asked: list[list[str]] = []

    def lookup(ids: pl.Series) -> pl.DataFrame:
        asked.append(ids.to_list())
        return jobs.head(1)

    streamed = state(jobs=jobs, lookup=lookup)
    assert streamed.job_rows(pl.Series(["b"])).rows() == [("a", "1")]  # the lookup's answer
    assert asked == [["b"]]


def test_run_options_default_to_what_batch_llm_and_the_docs_promise() -> None:
    import inspect

    from batchata_df import batch_llm
    from batchata_df.engine.run import RunContext, RunOptions

    o = RunOptions()
    assert (o.items_per_batch, o.max_parallel_batches, o.wait, o.time_limit_s,
            o.retry_failed, o.max_cost_usd) == (None, 8, True, None, False, None)  # fmt: skip
    defaults = inspect.signature(batch_llm).parameters
    assert o.max_parallel_batches == defaults["max_parallel_batches"].default
    assert o.wait == defaults["wait"].default
    assert o.retry_failed == defaults["retry_failed"].default
    # OpenAI takes up to 10 minutes to cancel; a provider may be down 10 minutes.
    assert (o.cancel_grace_s, o.provider_patience_s) == (900.0, 600.0)
    # Polls 1 s after a submit, then 1.6 times further apart, at most a minute.
    ctx = RunContext(store=None, providers={}, spec=None, prices=None, options=o,  # type: ignore[arg-type]
                     clock=None)  # type: ignore[arg-type]  # fmt: skip
    backoff = ctx.backoff()
    waits = [backoff.next() for _ in range(12)]
    assert waits[:3] == pytest.approx([1.0, 1.6, 2.56])
    assert waits[-3:] == [60.0, 60.0, 60.0]
    assert 40.0 < waits[-4] < 60.0


def test_the_fake_clock_waits_only_for_an_event_not_yet_set() -> None:
    import threading

    from batchata_df.engine.clock import FakeClock

    clock = FakeClock()
    event = threading.Event()
    assert clock.wait(event, 2.0) is False  # not set: the whole wait passes
    assert (clock.monotonic(), clock.waits) == (1002.0, [2.0])
    clock.on_wait.append(lambda now: event.set() if now >= 1005.0 else None)
    assert clock.wait(event, 3.0) is True  # set during the wait
    assert clock.wait(event, 3.0) is True  # set already: no time passes
    assert (clock.monotonic(), clock.waits) == (1005.0, [2.0, 3.0])


def test_a_backoff_starting_above_its_maximum_waits_the_maximum() -> None:
    from batchata_df.engine.clock import Backoff

    b = Backoff(5.0, 2.0, 2.0)
    assert [b.next(), b.next()] == [2.0, 2.0]
