"""Admission under the cost cap: pure arithmetic first, then what is reserved and admitted."""

from __future__ import annotations

import polars as pl
import pytest
from engine_fakes import MODEL, SPEC, FakeProvider, in_flight, make_jobs, make_run

from batchata_df.engine.admission import Admission, Calibration, billed_input, fitting
from batchata_df.engine.clock import FakeClock
from batchata_df.engine.planning import PlannedBatch, plan_batches
from batchata_df.engine.run import RunState


def plan_of(jobs: pl.DataFrame) -> PlannedBatch:
    return next(plan_batches(jobs, {"openai": FakeProvider(FakeClock())}, SPEC, None))


@pytest.mark.parametrize(
    ("worst", "room", "fit"),
    [
        ([0.25, 0.25, 0.25, 0.25], 1.0, 4),  # exactly at the cap fits
        ([0.25, 0.25, 0.25, 0.25], 0.74, 2),
        ([0.5, 0.1, 0.1], 0.55, 1),  # leading jobs only: no skipping ahead to cheaper ones
        ([2.0], 1.0, 0),
        ([0.1, 0.2], 0.0, 0),
        ([0.1], -1.0, 0),  # overspent already
    ],
)
def test_fitting_counts_the_leading_jobs_within_the_room(worst, room, fit):
    assert fitting(pl.Series(worst), room) == fit


def test_without_a_cap_everything_is_admitted_whatever_was_spent():
    state = RunState(started=0.0, spent=100.0, reserved=100.0)
    plan = plan_of(make_jobs(3, worst=1.0))
    assert Admission(state, None).admit(plan) is plan


def test_spent_plus_reserved_plus_this_batch_must_fit_the_cap():
    state = RunState(started=0.0, spent=0.30, reserved=0.20)
    admission = Admission(state, cap=1.0)
    plan = plan_of(make_jobs(6, worst=0.1))
    admitted = admission.admit(plan)
    assert admitted is not None
    assert admitted.job_ids.to_list() == ["j000", "j001", "j002", "j003", "j004"]
    assert admitted.batch_key != plan.batch_key  # the head is a batch of its own
    state.reserved = 0.25
    assert len(admission.admit(plan) or []) == 4
    state.spent = 0.75
    assert admission.admit(plan) is None


def test_a_whole_batch_that_fits_is_admitted_as_planned():
    state = RunState(started=0.0, spent=0.4)
    plan = plan_of(make_jobs(6, worst=0.1))
    assert Admission(state, cap=1.0).admit(plan) is plan


def test_reserving_holds_the_batch_worst_case_and_release_gives_it_back():
    state = RunState(started=0.0, reserved=0.5)
    admission = Admission(state, cap=10.0)
    held = admission.reserve(plan_of(make_jobs(4, worst=0.25)))
    assert held == pytest.approx(1.0)
    assert state.reserved == pytest.approx(1.5)
    state.release(held)
    assert state.reserved == pytest.approx(0.5)
    state.release(99.0)
    assert state.reserved == 0.0  # never below zero


def test_recovered_batches_hold_their_jobs_worst_case_unknown_jobs_the_largest(tmp_path):
    ctx, state = make_run(tmp_path, FakeProvider(FakeClock()))
    admission = Admission(state, cap=10.0)
    known = pl.DataFrame({"job_id": ["j000", "j001", "j002"], "worst_usd": [0.1, 0.3, 0.2],
                          "est_input_tokens": [7, 9, 11]})  # fmt: skip
    a = in_flight(ctx, "fb_1", ["j001", "j000"])
    b = in_flight(ctx, "fb_2", ["j000", "zzz"])  # zzz: another call's job
    admission.hold_recovered([a, b], known)
    assert a.reserved == pytest.approx(0.4)
    assert b.reserved == pytest.approx(0.1 + 0.3)
    assert state.reserved == pytest.approx(0.8)
    # Each carries its jobs' input estimates, in its own order (none for another call's).
    assert a.est_input is not None and a.est_input.to_list() == [9, 7]
    assert b.est_input is not None and b.est_input.to_list() == [7, None]


def test_recovered_batches_fall_back_to_the_given_worst_case_without_estimates(tmp_path):
    ctx, state = make_run(tmp_path, FakeProvider(FakeClock()))
    recorded = pl.DataFrame({"job_id": ["j000"], "worst_usd": [0.1]})
    a = in_flight(ctx, "fb_1", ["j000", "j001", "j002"])
    Admission(state, cap=10.0).hold_recovered([a], recorded, fallback=0.25)
    assert a.reserved == pytest.approx(0.1 + 2 * 0.25)
    assert a.est_input is None  # nothing to calibrate with: its billed input counts only
    empty = pl.DataFrame(schema={"job_id": pl.String, "worst_usd": pl.Float64})
    b = in_flight(ctx, "fb_2", ["j000"])
    Admission(state, cap=10.0).hold_recovered([b], empty)
    assert b.reserved == 0.0  # nothing known at all: the largest known is nothing


def test_settling_replaces_the_reservation_by_the_actual_cost(tmp_path):
    ctx, state = make_run(tmp_path, FakeProvider(FakeClock()))
    state.spent, state.reserved = 1.0, 0.7
    batch = in_flight(ctx, "fb_1", ["j000"], reserved=0.5)
    events = pl.DataFrame({"job_id": ["j000"], "input_tokens": [10]})
    Admission(state, cap=5.0).settle(batch, 0.02, events)
    assert state.spent == pytest.approx(1.02)
    assert state.reserved == pytest.approx(0.2)


def test_calibration_scales_the_input_part_up_when_estimates_ran_low():
    cal = Calibration()
    worst, est_input = pl.Series([1.0, 1.0]), pl.Series([0.4, 0.2])
    assert cal.worst("openai", MODEL, worst, est_input).to_list() == [1.0, 1.0]
    cal.observe("openai", MODEL, estimated=200, actual=400)
    assert cal.ratio("openai", MODEL) == 2.0
    assert cal.worst("openai", MODEL, worst, est_input).to_list() == [1.4, 1.2]
    assert cal.ratio("openai", "other-model") == 1.0  # per model
    cal.observe("openai", MODEL, estimated=50, actual=50)  # cumulative: 450 / 250
    assert cal.ratio("openai", MODEL) == pytest.approx(1.8)


def test_calibration_never_lowers_the_offline_worst_case():
    cal = Calibration()
    cal.observe("openai", MODEL, estimated=100, actual=50)
    assert cal.ratio("openai", MODEL) == 0.5
    assert cal.worst("openai", MODEL, pl.Series([1.0]), pl.Series([0.4])).to_list() == [1.0]


def test_a_collected_batch_that_ran_over_its_estimate_makes_admission_stricter(tmp_path):
    ctx, state = make_run(tmp_path, FakeProvider(FakeClock()))
    jobs = make_jobs(4, worst=0.2, est_input_tokens=100_000)  # input part $0.10 a job
    admission = Admission(state, cap=0.9)
    plan = plan_of(jobs)
    assert plan.est_input is not None and plan.est_input.to_list() == [100_000] * 4
    assert len(admission.admit(plan) or []) == 4  # 4 x 0.2 = 0.8 fits
    events = pl.DataFrame({"job_id": ["j000", "j001"], "input_tokens": [300_000, 300_000]})
    sent = plan.head(2)
    admission.settle(in_flight(ctx, "fb_1", sent.job_ids.to_list(),
                               est_input=sent.est_input.to_list()), 0.0, events)  # fmt: skip
    # Input ran 3x the estimate: each job's worst case is now 0.2 + 0.1 * 2 = 0.4.
    assert admission.worst(plan).to_list() == pytest.approx([0.4] * 4)
    assert len(admission.admit(plan) or []) == 2
    assert admission.reserve(plan) == pytest.approx(1.6)


def test_calibration_learns_only_from_jobs_it_has_an_estimate_for(tmp_path):
    ctx, state = make_run(tmp_path, FakeProvider(FakeClock()))
    admission, cal = Admission(state, cap=1.0), Calibration()
    admission.calibration = cal
    other = in_flight(ctx, "fb_1", ["zzz"])  # another call's job: no estimate
    admission.settle(other, 0.0, pl.DataFrame({"job_id": ["zzz"], "input_tokens": [500]}))
    assert cal.ratio("openai", MODEL) == 1.0  # nothing to compare
    one = in_flight(ctx, "fb_2", ["a", "b"], model="other-model", est_input=[1, 100])
    # Even a one-token estimate is a ratio; b was not billed (no usage): not compared.
    events = pl.DataFrame({"job_id": ["a", "b"], "input_tokens": [3, None]})
    admission.settle(one, 0.0, events)
    assert cal.ratio("openai", "other-model") == 3.0
    # The billed input of a job without an estimate still counts (more cautious).
    mixed = in_flight(ctx, "fb_3", ["c", "zzz2"], est_input=[10, None])
    admission.settle(mixed, 0.0, pl.DataFrame({"job_id": ["c", "zzz2"],
                                               "input_tokens": [20, 30]}))  # fmt: skip
    assert cal.ratio("openai", MODEL) == (500 + 20 + 30) / 10


def test_the_billed_input_is_matched_to_the_estimates_by_job_id_in_any_order(tmp_path):
    ctx, _ = make_run(tmp_path, FakeProvider(FakeClock()))
    batch = in_flight(ctx, "fb_1", ["a", "b", "c"], est_input=[10, 20, 30])
    lined = pl.DataFrame({"job_id": ["a", "b", "c"], "input_tokens": [11, 22, None]})
    assert billed_input(batch, lined) == (30, 33)
    # Out of order, with a job given twice (its last event counts, once) and one unknown.
    shuffled = pl.DataFrame({"job_id": ["c", "a", "c", "x"],
                             "input_tokens": [1, 11, 33, 5]})  # fmt: skip
    assert billed_input(batch, shuffled) == (40, 11 + 33 + 5)
    assert billed_input(in_flight(ctx, "fb_2", ["a"]), lined.head(1)) == (0, 11)


def test_the_cap_counts_the_jobs_it_holds_back_and_each_round_that_releases_some():
    state = RunState(started=0.0)
    admission = Admission(state, cap=0.35)
    plan = plan_of(make_jobs(6, worst=0.1))
    first = admission.admit(plan)  # 3 fit, 3 wait (tail(n): all but the first n)
    assert first is not None and len(first) == 3
    assert (state.cap_waiting, state.cap_rounds, state.cap_first_fit) == (3, 0, 3)
    state.reserved = 0.3  # the first three hold the budget (requests, not batches here)
    assert admission.admit(plan.tail(3), holding=True) is None  # nothing fits: all wait
    assert (state.cap_waiting, state.cap_rounds) == (3, 0)
    # With nothing holding budget, what does not fit never will: nothing is waiting.
    assert admission.admit(plan.tail(3)) is None
    assert (state.cap_waiting, state.cap_rounds) == (0, 0)
    assert admission.admit(plan.tail(3), holding=True) is None
    state.reserved = 0.15
    part = admission.admit(plan.tail(3))  # room for two after waiting: a round
    assert part is not None and len(part) == 2
    assert (state.cap_waiting, state.cap_rounds) == (1, 1)
    state.reserved = 0.0
    assert admission.admit(plan.tail(5)) is not None  # the last one, whole: another round
    assert (state.cap_waiting, state.cap_rounds, state.cap_first_fit) == (0, 2, 3)
    assert admission.admit(plan.tail(5)) is not None  # nothing was waiting: no round
    assert (state.cap_waiting, state.cap_rounds) == (0, 2)


def test_a_job_without_an_input_estimate_keeps_its_worst_case_after_calibration():
    # Only the estimated input part is scaled up: a job with no estimate adds nothing.
    cal = Calibration()
    cal.observe("openai", "m", estimated=200, actual=400)
    assert cal.ratio("openai", "m") == 2.0
    worst = cal.worst("openai", "m", pl.Series([1.0, 1.0, None]), pl.Series([0.25, None, 0.5]))
    assert worst.to_list() == [1.25, 1.0, 0.5]
