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
