"""The realtime engine and ``mode="auto"``'s choice, on the in-memory provider: no I/O.

What each request leaves in the state folder (the events, value by value), how a resumed
call counts what earlier calls did, and what a stop or a crash before this call does to
the realtime phase of ``mode="auto"``. The same paths through the official SDKs and the
emulator are in ``test_realtime.py`` and ``test_auto_mode.py``.
"""

from __future__ import annotations

import json
import re
import threading

import polars as pl
import pytest
from engine_fakes import COST_PER_JOB, MODEL, PRICES, SPEC, FakeProvider, make_jobs

from batchata_df.engine.auto import AUTO_REALTIME_MAX_JOBS, AutoEngine
from batchata_df.engine.clock import FakeClock
from batchata_df.engine.collection import TRUNCATED_ADVICE
from batchata_df.engine.realtime import SERVER_ERROR_ATTEMPTS, RealtimeEngine
from batchata_df.engine.recovery import LOST
from batchata_df.engine.run import ProgressSnapshot, RunOptions
from batchata_df.providers.base import RealtimeFailure
from batchata_df.state import StateStore


def store(tmp_path) -> StateStore:
    return StateStore(tmp_path / "state", {"test": "1"})


def realtime(tmp_path, provider, *, progress=None, **options) -> RealtimeEngine:
    return RealtimeEngine(store(tmp_path), {"openai": provider}, SPEC, PRICES.realtime(),
                          RunOptions(**options), progress=progress, clock=provider.clock,
                          concurrency=2)  # fmt: skip


def events(tmp_path) -> pl.DataFrame:
    return store(tmp_path).job_events().sort("seq")


def test_a_request_that_never_answers_ends_at_a_known_zero_cost_recorded_as_realtime(tmp_path):
    provider = FakeProvider(FakeClock())
    failure = RealtimeFailure("server_error", "HTTP 500 boom")
    provider.realtime_failures["j001"] = [failure] * SERVER_ERROR_ATTEMPTS
    out = realtime(tmp_path, provider).run(make_jobs(2)).sort("job_id")
    assert out.select("job_id", "status").rows() == [("j000", "completed"), ("j001", "failed")]
    assert [c for c in provider.calls if c[0] == "answer"].count(("answer", "j001")) == 4
    cols = ["job_id", "status", "error", "mode", "provider", "model", "cost_usd",
            "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens"]  # fmt: skip
    ended = (
        events(tmp_path).filter(pl.col("status") != "assigned")
        .group_by("job_id").agg(pl.all().sort_by("seq").last())
        .sort("job_id").select(cols)
    )  # fmt: skip
    realtime_cost = PRICES.realtime().get("openai", MODEL)
    assert realtime_cost is not None
    assert ended.rows() == [
        ("j000", "completed", None, "realtime", "openai", MODEL,
         pytest.approx((10 * realtime_cost.input + 5 * realtime_cost.output) / 1e6), 10, 5, 0,
         None),
        # No usage, yet a known price: it cost nothing (null would read "unknown").
        ("j001", "failed", "server_error: HTTP 500 boom (4 attempts)", "realtime", "openai",
         MODEL, 0.0, None, None, None, None),
    ]  # fmt: skip
    # Each attempt answered 5xx may have been billed: recorded failed under its own key
    # (<key>, <key>.2, ...), each assigned before it was sent; the answer under the
    # provider and model's key.
    key = events(tmp_path).filter(pl.col("job_id") == "j000")["batch_key"][0]
    j001 = events(tmp_path).filter(pl.col("job_id") == "j001")
    assert j001.select("batch_key", "status").rows() == [
        (k, s) for k in (key, f"{key}.2", f"{key}.3", f"{key}.4")
        for s in ("assigned", "failed")
    ]
    assert j001.filter(pl.col("status") == "failed")["error"].to_list()[:-1] == [
        f"server_error: HTTP 500 boom (attempt {n}; the provider may have billed it; to be "
        "sent again: if the call stops first, retry_failed=True sends it)" for n in (1, 2, 3)
    ]


def test_each_request_is_assigned_to_its_provider_and_model_before_it_is_sent(tmp_path):
    provider = FakeProvider(FakeClock())
    realtime(tmp_path, provider, max_cost_usd=1.0).run(make_jobs(3, worst=0.01))
    assigned = events(tmp_path).filter(pl.col("status") == "assigned")
    cols = ["job_id", "provider", "model", "mode", "est_cost_usd"]
    assert assigned.sort("job_id").select(cols).rows() == [
        (f"j00{i}", "openai", MODEL, "realtime", 0.01) for i in range(3)
    ]
    assert assigned["batch_key"].str.starts_with("r").all()
    assert assigned["batch_key"].n_unique() == 1  # one key per provider and model
    # Sent from the engine's own named pool, never from the caller's thread.
    assert len(provider.answered_on) == 3
    assert all(name.startswith("batchata-rt") for name in provider.answered_on)


def test_a_resumed_call_counts_earlier_rows_at_their_known_cost_and_unknown_as_zero(tmp_path):
    provider = FakeProvider(FakeClock())
    # Rows of a model without a price: answered, at an unknown (null) cost.
    unpriced = make_jobs(2, model="unpriced-model")
    realtime(tmp_path, provider).run(pl.concat([make_jobs(2, start=2), unpriced]))
    assert events(tmp_path).filter(pl.col("status") == "completed")["cost_usd"].null_count() == 2
    seen: list[ProgressSnapshot] = []
    realtime(tmp_path, provider, progress=seen.append).run(
        pl.concat([make_jobs(2, start=2), unpriced, make_jobs(1, start=4)])
    )
    first = seen[0]
    assert (first.total, first.completed, first.pending) == (5, 4, 1)
    rate = PRICES.realtime().get("openai", MODEL)
    assert rate is not None
    known = 2 * (10 * rate.input + 5 * rate.output) / 1e6
    assert first.cost_usd == pytest.approx(known)  # the unknown ones add nothing
    assert seen[-1].cost_usd == pytest.approx(known * 1.5)
    assert seen[-1].completed == 5


# ---- mode="auto"


def auto(tmp_path, provider, *, stop=None, **options) -> AutoEngine:
    return AutoEngine(store(tmp_path), {"openai": provider}, SPEC, PRICES, RunOptions(**options),
                      deadline_s=None, stop_event=stop, clock=provider.clock)  # fmt: skip


def test_a_stop_before_the_realtime_phase_sends_nothing_and_cancels_every_row(tmp_path):
    provider = FakeProvider(FakeClock())
    stop = threading.Event()
    stop.set()  # Ctrl+C as the call starts
    engine = auto(tmp_path, provider, stop=stop)
    out = engine.run(make_jobs(3))
    assert engine.decision.endswith("realtime")
    assert set(out["status"]) == {"cancelled"}
    assert set(out["error"]) == {"cancelled: interrupted"}
    assert provider.calls == []


def test_requests_a_crash_left_in_flight_are_not_counted_as_left_to_send(tmp_path):
    n = AUTO_REALTIME_MAX_JOBS + 2
    provider = FakeProvider(FakeClock(), latency=1.0)  # (batches, if any, end at once)
    # An earlier call died with two realtime requests in flight: they are not sent again,
    # so what is left (50) is small enough for realtime.
    store(tmp_path).append_jobs(pl.DataFrame({
        "job_id": ["j000", "j001"], "batch_key": "rk", "provider": "openai", "model": MODEL,
        "status": "assigned", "mode": "realtime", "est_cost_usd": 0.5,
    }))  # fmt: skip
    engine = auto(tmp_path, provider)
    out = engine.run(make_jobs(n)).sort("job_id")
    assert engine.decision == f"{AUTO_REALTIME_MAX_JOBS} jobs to send: at most 50, realtime"
    assert out.head(2).select("status", "error").rows() == [("failed", LOST)] * 2
    assert out.tail(n - 2)["status"].to_list() == ["completed"] * (n - 2)
    assert sorted(c[1] for c in provider.calls) == [f"j{i:03d}" for i in range(2, n)]
    assert out.tail(n - 2)["cost_usd"].to_list() == pytest.approx([COST_PER_JOB * 2] * (n - 2))


# ---- stopping, the cap and progress in realtime (value tests for the mutation survivors)


class _SlowFirst(FakeProvider):
    """j000's answer waits until the test lets it go (or 30 s, a test failure)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.release = threading.Event()
        self.order: list[str] = []

    def answer(self, line, *, model, spec):  # type: ignore[no-untyped-def]
        if '"j000"' in line:
            self.order.append("released" if self.release.wait(30) else "gave up waiting")
        return super().answer(line, model=model, spec=spec)


def test_a_stop_is_seen_while_a_request_is_still_in_flight_and_the_rest_is_cancelled(tmp_path):
    provider = _SlowFirst(FakeClock())
    stop = threading.Event()
    seen: list[ProgressSnapshot] = []

    def progress(snap: ProgressSnapshot) -> None:
        seen.append(snap)
        if snap.realtime_in_flight == 1 and not stop.is_set():
            stop.set()  # Ctrl+C while j000 is still waiting for its answer
        elif snap.activity.startswith("stopping") and not provider.release.is_set():
            provider.order.append("stop seen")
            provider.release.set()

    engine = RealtimeEngine(store(tmp_path), {"openai": provider}, SPEC, PRICES.realtime(),
                            RunOptions(), progress=progress, stop_event=stop,
                            clock=provider.clock, concurrency=1)  # fmt: skip
    out = engine.run(make_jobs(3)).sort("job_id")
    # The stop was noticed while the answer was still out (not only once it came back).
    assert provider.order == ["stop seen", "released"]
    assert out.select("job_id", "status", "error").rows() == [
        ("j000", "completed", None),  # in flight: it finishes and is kept
        ("j001", "cancelled", "cancelled: interrupted"),
        ("j002", "cancelled", "cancelled: interrupted"),
    ]
    assert [c for c in provider.calls if c[0] == "answer"] == [("answer", "j000")]
    assert "stopping (interrupted): 1 realtime requests finishing" in [s.activity for s in seen]
    assert seen[-1].phase == "done" and seen[-1].stop_reason == "interrupted"


def test_a_request_that_can_never_fit_the_cap_ends_cancelled_cost_limit(tmp_path):
    provider = FakeProvider(FakeClock())
    jobs = make_jobs(2, worst=0.1).with_columns(pl.Series("worst_usd", [0.1, 0.5]))
    out = realtime(tmp_path, provider, max_cost_usd=0.3).run(jobs).sort("job_id")
    assert out.select("job_id", "status", "error").rows() == [
        ("j000", "completed", None),
        ("j001", "cancelled", "cancelled: cost_limit"),
    ]
    assert [c[1] for c in provider.calls if c[0] == "answer"] == ["j000"]


def test_the_cap_counts_earlier_answers_of_unpriced_models_as_nothing_spent(tmp_path):
    provider = FakeProvider(FakeClock())
    realtime(tmp_path, provider).run(make_jobs(2, model="unpriced-model"))
    assert events(tmp_path).filter(pl.col("status") == "completed")["cost_usd"].null_count() == 2
    # A capped call on the same folder: the unknown costs are not taken as spent money.
    out = realtime(tmp_path, provider, max_cost_usd=0.25).run(make_jobs(2, start=2, worst=0.1))
    assert out.sort("job_id")["status"].to_list() == ["completed"] * 4


def test_a_capped_resume_counts_a_lost_request_at_its_worst_case(tmp_path):
    """A request a crash left in flight may have been billed: its worst case is spent."""
    provider = FakeProvider(FakeClock())
    store(tmp_path).append_jobs(pl.DataFrame({
        "job_id": ["j000"], "batch_key": "rk", "provider": "openai", "model": MODEL,
        "status": "assigned", "mode": "realtime", "est_cost_usd": 0.5,
    }))  # fmt: skip
    # 0.5 of the 0.7 cap is gone: one more 0.15 request fits at a time, never two at once.
    jobs = make_jobs(3, worst=0.15)
    out = realtime(tmp_path, provider, max_cost_usd=0.7).run(jobs).sort("job_id")
    assert out.select("job_id", "status").rows() == [
        ("j000", "failed"), ("j001", "completed"), ("j002", "completed")]
    assert [c[1] for c in provider.calls if c[0] == "answer"] == ["j001", "j002"]
    # j001 and j002 went one after the other: never both held against the cap.
    assigned = events(tmp_path).filter(
        (pl.col("status") == "assigned") & (pl.col("job_id") != "j000"))
    ended = events(tmp_path).filter(pl.col("status") == "completed")
    assert assigned.filter(pl.col("job_id") == "j002")["seq"][0] > ended.filter(
        pl.col("job_id") == "j001")["seq"][0]


def test_realtime_worst_cases_are_raised_by_the_input_tokens_actually_used(tmp_path):
    """Estimates said 5 input tokens, answers used 10: later requests are held higher."""
    provider = FakeProvider(FakeClock())
    jobs = make_jobs(3, worst=0.1, est_input_tokens=5)
    engine = RealtimeEngine(store(tmp_path), {"openai": provider}, SPEC, PRICES.realtime(),
                            RunOptions(max_cost_usd=10.0), clock=provider.clock,
                            concurrency=1)  # fmt: skip
    engine.run(jobs)
    assigned = events(tmp_path).filter(pl.col("status") == "assigned").sort("seq")
    est_input_usd = 5 * 1.0 / 1e6  # make_jobs: est_input_usd = tokens * 1.0 / 1e6
    assert assigned.select("job_id", "est_cost_usd").rows() == [
        ("j000", pytest.approx(0.1)),  # nothing learnt yet
        ("j001", pytest.approx(0.1 + est_input_usd * (10 / 5 - 1))),
        ("j002", pytest.approx(0.1 + est_input_usd * (10 / 5 - 1))),
    ]


def test_each_realtime_answer_is_calibrated_with_its_own_request_s_estimate(tmp_path, settled):
    """Requests sent together (concurrency 3) are settled with each one's own input
    estimate beside its job, however their answers are grouped into rounds."""
    provider = FakeProvider(FakeClock())
    jobs = make_jobs(7, worst=0.1, est_input_tokens=1).with_columns(
        pl.Series("est_input_tokens", [3, 5, 7, 11, 13, 17, 19], dtype=pl.Int64))
    est = dict(zip(jobs["job_id"], jobs["est_input_tokens"], strict=True))
    engine = RealtimeEngine(store(tmp_path), {"openai": provider}, SPEC, PRICES.realtime(),
                            RunOptions(max_cost_usd=10.0), clock=provider.clock,
                            concurrency=3)  # fmt: skip
    engine.run(jobs)
    assert sorted(j for ids, _, _ in settled for j in ids) == sorted(est)  # each once
    for ids, estimates, got in settled:
        assert estimates == [est[j] for j in ids]
        assert got == (sum(estimates), 10 * len(ids))


def test_activity_names_requests_in_flight_and_those_waiting_to_retry(tmp_path):
    provider = FakeProvider(FakeClock())
    provider.realtime_failures["j000"] = [RealtimeFailure("server_error", "HTTP 500 once")]
    seen: list[ProgressSnapshot] = []
    out = realtime(tmp_path, provider, progress=seen.append).run(make_jobs(3))
    assert out["status"].to_list() == ["completed"] * 3
    both = [s.activity for s in seen if "waiting to retry" in s.activity]
    assert both
    for text in both:
        assert re.fullmatch(
            r"realtime: [012] requests in flight \(at most 2\), 1 waiting to retry "
            r"\(openai: HTTP 500 once; retrying in 1s\)",
            text,
        ), text


def test_auto_mode_s_realtime_phase_waits_on_the_call_s_clock(tmp_path):
    provider = FakeProvider(FakeClock())
    provider.realtime_failures["j000"] = [
        RealtimeFailure("rate_limited", "HTTP 429", retry_after=5.0)]
    engine = auto(tmp_path, provider)
    out = engine.run(make_jobs(2))
    assert engine.decision == "2 jobs to send: at most 50, realtime"
    assert out["status"].to_list() == ["completed"] * 2
    assert provider.clock.waits == [5.0]  # the retry waited on the fake clock, not in real time


def test_a_batch_late_for_the_deadline_goes_on_realtime_and_both_phases_report(tmp_path):
    n = AUTO_REALTIME_MAX_JOBS + 10
    provider = FakeProvider(FakeClock())  # the batch never ends by itself
    seen: list[ProgressSnapshot] = []
    engine = AutoEngine(store(tmp_path), {"openai": provider}, SPEC, PRICES, RunOptions(),
                        deadline_s=3600.0, progress=seen.append, clock=provider.clock)  # fmt: skip
    out = engine.run(make_jobs(n))
    assert engine.decision == "batch, then realtime for what the deadline would not wait for"
    assert out["status"].to_list() == ["completed"] * n
    assert provider.methods().count("submit") == 1 and "cancel" in provider.methods()
    assert sorted(c[1] for c in provider.calls if c[0] == "answer") == [
        f"j{i:03d}" for i in range(n)]
    # Progress came from the batch phase (a batch submitted) and from the realtime phase.
    assert any(s.batches.get("submitted") for s in seen)
    assert any(s.realtime_in_flight for s in seen)


def test_every_answer_of_a_round_is_read_and_a_bad_key_among_them_ends_the_call(tmp_path):
    """Answers that came back together are all sorted out in that round: one unreadable
    answer does not leave the others (a bad key among them) for later."""
    from concurrent.futures import Future

    from batchata_df.engine.ledger import Ledger
    from batchata_df.engine.realtime import _Request
    from batchata_df.engine.stopping import Stopper
    from batchata_df.errors import CredentialsError

    provider = FakeProvider(FakeClock())
    engine = realtime(tmp_path, provider)
    running = {}
    for job_id, error in [("a", ValueError("unreadable")), ("b", CredentialsError("bad key")),
                          ("c", ValueError("unreadable too"))]:  # fmt: skip
        future: Future[object] = Future()
        future.set_exception(error)
        running[future] = _Request(job_id, "{}", "openai", MODEL, "rk", 0.1,
                                   engine.ctx.backoff())  # fmt: skip
    stopper = Stopper(engine.ctx, engine.state, Ledger(engine.ctx, engine.state),
                      engine.stop_event)  # fmt: skip
    finished = engine._wait(running, [], stopper)
    assert running == {}
    assert sorted((r.job_id, status, error) for r, status, error in finished.ended) == [
        ("a", "failed", "client_error: ValueError: unreadable"),
        ("b", "cancelled", "cancelled: bad key"),
        ("c", "failed", "client_error: ValueError: unreadable too"),
    ]
    assert isinstance(engine._fatal, CredentialsError)


def test_under_the_cap_a_request_waiting_to_retry_keeps_the_rest_waiting_not_cancelled(tmp_path):
    """j000 and j001 (0.1 each) go; j000 fails once (its 5xx attempt counts 0.1 as spent)
    and waits to retry while holding its worst case; j002 (0.2) does not fit beside them,
    but will once they are answered: it must wait, not end."""
    provider = FakeProvider(FakeClock())
    provider.realtime_failures["j000"] = [RealtimeFailure("server_error", "HTTP 500 once")]
    jobs = make_jobs(3, worst=0.1).with_columns(pl.Series("worst_usd", [0.1, 0.1, 0.2]))
    out = realtime(tmp_path, provider, max_cost_usd=0.35).run(jobs).sort("job_id")
    assert out.select("job_id", "status", "error").rows() == [
        ("j000", "completed", None), ("j001", "completed", None), ("j002", "completed", None)]
    calls = [c[1] for c in provider.calls if c[0] == "answer"]
    assert sorted(calls[:3]) == ["j000", "j000", "j001"] and calls[3:] == ["j002"]


def _late_batch(tmp_path, provider, **options):
    """Auto mode with a deadline in an hour; the batch never ends by itself."""
    n = AUTO_REALTIME_MAX_JOBS + 10
    engine = AutoEngine(store(tmp_path), {"openai": provider}, SPEC, PRICES,
                        RunOptions(**options), deadline_s=3600.0, clock=provider.clock)  # fmt: skip
    return engine, engine.run(make_jobs(n)).sort("job_id")


def test_the_time_limit_counts_from_the_call_s_start_in_the_realtime_phase(tmp_path):
    provider = FakeProvider(FakeClock())
    # Every request is refused for 100 s first: by then the call's 3,330 s are up.
    for i in range(AUTO_REALTIME_MAX_JOBS + 10):
        provider.realtime_failures[f"j{i:03d}"] = [
            RealtimeFailure("rate_limited", "HTTP 429", retry_after=100.0)]
    engine, out = _late_batch(tmp_path, provider, time_limit_s=3330.0)
    assert engine.decision == "batch, then realtime for what the deadline would not wait for"
    switched = engine.realtime.state.started - 1000.0  # the fake clock starts at 1000
    assert 3330.0 - 100.0 < switched < 3330.0  # retrying would pass the call's limit
    assert set(out["status"]) == {"cancelled"}
    assert set(out["error"]) == {"cancelled: time_limit"}
    assert provider.clock.monotonic() - 1000.0 <= 3330.0 + 1.0


class _Uncancellable(FakeProvider):
    """A provider whose batches go on running after a cancel."""

    def cancel(self, batch_id: str) -> None:
        self.calls.append(("cancel", batch_id))


def test_the_deadline_switch_waits_at_most_a_minute_for_a_cancelled_batch(tmp_path):
    provider = _Uncancellable(FakeClock())
    engine, out = _late_batch(tmp_path, provider)
    assert "cancel" in provider.methods()
    # The batch is still running: its rows stay with it (never sent twice), and the call
    # gave up waiting for it after DEADLINE_CANCEL_GRACE_S, not the default 900 s.
    assert set(out["status"]) == {"assigned"}
    # (The switch comes ~360 s before the deadline; 900 s of grace would end past it.)
    assert provider.clock.monotonic() - 1000.0 <= 3600.0


def test_a_request_whose_answer_was_lost_counts_its_worst_case_against_the_cap(tmp_path):
    provider = FakeProvider(FakeClock())
    lost = ("lost: the request was sent but no answer came back (timeout); the provider may "
            "have billed it")  # fmt: skip
    provider.realtime_failures["j000"] = [RealtimeFailure("lost", lost)]
    # 0.15 lets one 0.1 request out at a time; j000 may have been billed its 0.1.
    out = realtime(tmp_path, provider, max_cost_usd=0.15).run(make_jobs(2, worst=0.1))
    assert out.sort("job_id").select("job_id", "status", "error").rows() == [
        ("j000", "failed", lost),
        ("j001", "cancelled", "cancelled: cost_limit"),  # 0.1 + 0.1 would pass 0.15
    ]
    assert [c[1] for c in provider.calls if c[0] == "answer"] == ["j000"]


class _SecondBatchNeverEnds(FakeProvider):
    """fb_1 ends at its first poll; fb_2 runs until it is cancelled."""

    def poll(self, batch_id: str):  # type: ignore[no-untyped-def]
        if batch_id == "fb_1":
            self.end("fb_1")
        return super().poll(batch_id)


def test_the_deadline_switch_counts_only_the_jobs_left_down_to_the_last_one(tmp_path):
    """50 of 51 jobs are answered by the batch; the last one is switched to realtime when
    the deadline is as near as one realtime request takes (30 s + 120 s margin)."""
    provider = _SecondBatchNeverEnds(FakeClock())
    n = AUTO_REALTIME_MAX_JOBS + 1
    engine = AutoEngine(store(tmp_path), {"openai": provider}, SPEC, PRICES,
                        RunOptions(items_per_batch=AUTO_REALTIME_MAX_JOBS, time_limit_s=7200.0),
                        deadline_s=3600.0, clock=provider.clock)  # fmt: skip
    out = engine.run(make_jobs(n)).sort("job_id")
    assert engine.decision == "batch, then realtime for what the deadline would not wait for"
    assert out["status"].to_list() == ["completed"] * n
    assert [c[1] for c in provider.calls if c[0] == "answer"] == [f"j{n - 1:03d}"]
    # Switched when 150 s were left (a poll late at most), not earlier: 1 job left, not 51+.
    assert engine.realtime is not None
    switched = engine.realtime.state.started - 1000.0
    assert 3600.0 - 150.0 - 60.0 - 60.0 <= switched <= 3600.0  # the poll, the cancel grace


def test_a_capped_realtime_resume_counts_what_earlier_calls_were_billed(tmp_path):
    provider = FakeProvider(FakeClock())
    store(tmp_path).append_jobs(pl.DataFrame({
        "job_id": ["j000"], "batch_key": "rk", "provider": "openai", "model": MODEL,
        "status": "completed", "mode": "realtime", "cost_usd": 0.5, "input_tokens": 10,
        "output_tokens": 5,
    }))  # fmt: skip
    # 0.5 of the 0.7 cap was billed before: the two 0.15 requests go one after the other.
    out = realtime(tmp_path, provider, max_cost_usd=0.7).run(make_jobs(3, worst=0.15))
    assert out.sort("job_id")["status"].to_list() == ["completed"] * 3
    assert [c[1] for c in provider.calls if c[0] == "answer"] == ["j001", "j002"]
    assigned = events(tmp_path).filter(pl.col("status") == "assigned")
    ended = events(tmp_path).filter(pl.col("status") == "completed")
    assert assigned.filter(pl.col("job_id") == "j002")["seq"][0] > ended.filter(
        pl.col("job_id") == "j001")["seq"][0]


# ---- value tests for the gaps the hold-out samples found


def test_the_deadline_switch_comes_when_the_time_left_is_exactly_what_realtime_needs(tmp_path):
    from batchata_df.engine.auto import realtime_seconds
    from batchata_df.engine.run import RunState

    provider = FakeProvider(FakeClock())
    engine = AutoEngine(store(tmp_path), {"openai": provider}, SPEC, PRICES, RunOptions(),
                        deadline_s=3600.0, concurrency=8, clock=provider.clock)  # fmt: skip
    rule = engine._switch_rule()
    deadline = 1000.0 + 3600.0  # the fake clock starts at 1000
    # 20 jobs, 4 ended and 6 reported finished inside a running batch: 10 left.
    state = RunState(started=1000.0, total=20, in_flight_finished={"k": 6})
    state.done.update({"completed": 3, "cancelled": 1})
    needed = realtime_seconds(10, 8)
    assert needed == 2 * 30.0 + 120.0
    assert rule(state, deadline - needed) == "deadline"  # exactly at the boundary
    assert rule(state, deadline - needed - 0.5) is None  # half a second earlier: not yet
    assert rule(state, deadline + 10.0) == "deadline"  # late: at once
    # 17 left need 3 latencies (not 2): the switch comes 30 s earlier.
    state.in_flight_finished = {}
    state.done.update({"completed": 2, "cancelled": 1})
    assert rule(state, deadline - realtime_seconds(17, 8)) == "deadline"
    assert rule(state, deadline - needed) == "deadline"
    assert rule(state, deadline - realtime_seconds(17, 8) - 0.5) is None
    # Running batches reporting more finished than is left count only what is left.
    state.in_flight_finished = {"k": 50}
    assert rule(state, deadline) is None  # nothing left: nothing to switch


def test_realtime_progress_has_an_eta_paced_from_the_first_request_sent(tmp_path):
    provider = FakeProvider(FakeClock())
    # j000 is refused for 5 s: the clock moves, so there is a rate to go by.
    provider.realtime_failures["j000"] = [
        RealtimeFailure("rate_limited", "HTTP 429", retry_after=5.0)]
    seen: list[ProgressSnapshot] = []
    engine = RealtimeEngine(store(tmp_path), {"openai": provider}, SPEC, PRICES.realtime(),
                            RunOptions(), progress=seen.append, clock=provider.clock,
                            concurrency=1)  # fmt: skip
    out = engine.run(make_jobs(3))
    assert out["status"].to_list() == ["completed"] * 3
    assert engine.state.first_submit_at == 1000.0  # the first request, at the start
    paced = [s for s in seen if s.eta_s is not None]
    # j000 answered at 5 s, 2 left: 10 s; j001 at 5 s as well: 1 left, 2.5 s; then none.
    assert [(s.completed, s.eta_s) for s in paced] == [(1, 10.0), (2, 2.5), (3, 0.0)]
    assert seen[-1].phase == "done" and seen[-1].eta_s is None


def test_realtime_leaves_rows_of_a_batch_still_running_assigned_with_the_reason(tmp_path):
    from batchata_df.engine.driver import Engine

    provider = FakeProvider(FakeClock())  # the batch runs until the test ends it
    Engine(store(tmp_path), {"openai": provider}, SPEC, PRICES, RunOptions(wait=False),
           clock=provider.clock).run(make_jobs(2))  # fmt: skip
    provider.calls.clear()
    # This call asks for j001 and j002; j000 (same batch) is the folder's, not the call's.
    out = realtime(tmp_path, provider).run(make_jobs(2, start=1)).sort("job_id")
    why = ("in a provider batch that is still running: call again with the same state and "
           "mode='batch' or mode='auto' (they wait for it and collect it), or "
           "mode='realtime' once it has ended")  # fmt: skip
    assert out.select("job_id", "status", "error").rows() == [
        ("j000", "assigned", None),
        ("j001", "assigned", why),
        ("j002", "completed", None),
    ]
    # Polled once (still running: not waited for), never sent twice.
    assert provider.calls == [("poll", "fb_1"), ("answer", "j002")]


def test_activity_names_the_requests_in_flight_when_none_waits(tmp_path):
    provider = FakeProvider(FakeClock())
    seen: list[ProgressSnapshot] = []
    out = realtime(tmp_path, provider, progress=seen.append).run(make_jobs(3))
    assert out["status"].to_list() == ["completed"] * 3
    running = [s for s in seen if s.phase == "running"]
    assert running[0].activity == "realtime: 2 requests in flight (at most 2)"
    for snap in running:  # the line agrees with the count reported beside it
        n = snap.realtime_in_flight
        assert snap.activity == (f"realtime: {n} requests in flight (at most 2)" if n else "")
    assert running[-1].realtime_in_flight == 0  # all answered before the last report
    assert seen[-1].activity == ""


def test_auto_mode_s_batch_phase_re_attaches_a_batch_of_a_provider_the_call_does_not_use(
    tmp_path,
):
    from batchata_df.engine.driver import Engine

    openai = FakeProvider(FakeClock(), latency=1.0)
    Engine(store(tmp_path), {"openai": openai}, SPEC, PRICES, RunOptions(wait=False),
           clock=openai.clock).run(make_jobs(2))  # fmt: skip
    assert openai.methods() == ["submit", "poll"]
    # The next call's rows all go to another provider, by batch (more than 50).
    other = FakeProvider(openai.clock, latency=1.0)
    made: list[str] = []

    def make(name: str) -> FakeProvider:
        made.append(name)
        return openai

    jobs = make_jobs(AUTO_REALTIME_MAX_JOBS + 1, start=100).with_columns(
        pl.lit("other").alias("provider"))  # fmt: skip
    engine = AutoEngine(store(tmp_path), {"other": other}, SPEC, PRICES, RunOptions(),
                        deadline_s=None, make_provider=make, clock=openai.clock)  # fmt: skip
    out = engine.run(jobs).sort("job_id")
    assert engine.decision == "batch"
    assert made == ["openai"]
    assert ("results", "fb_1") in openai.calls  # the earlier batch was collected
    assert out.head(2).select("job_id", "status").rows() == [
        ("j000", "completed"), ("j001", "completed")]
    assert out.height == 2 + AUTO_REALTIME_MAX_JOBS + 1
    assert set(out.tail(AUTO_REALTIME_MAX_JOBS + 1)["status"]) == {"completed"}


def test_realtime_seconds_count_one_latency_per_round_of_requests_plus_the_margin():
    from batchata_df.engine.auto import realtime_seconds

    assert realtime_seconds(80, 8) == 10 * 30.0 + 120.0
    assert realtime_seconds(81, 8) == 11 * 30.0 + 120.0  # a partial round is a round
    assert realtime_seconds(1, 8) == 30.0 + 120.0
    assert realtime_seconds(10, 8, latency_s=10.0) == 2 * 10.0 + 120.0
    assert realtime_seconds(0, 8) == 0.0  # nothing to send takes no time
    assert realtime_seconds(-1, 8) == 0.0


def _auto(tmp_path, provider, *, deadline_s=None, concurrency=8, progress=None, stop=None,
          **options) -> AutoEngine:  # fmt: skip
    return AutoEngine(store(tmp_path), {"openai": provider}, SPEC, PRICES, RunOptions(**options),
                      deadline_s=deadline_s, concurrency=concurrency, progress=progress,
                      stop_event=stop, clock=provider.clock)  # fmt: skip


def test_auto_goes_realtime_when_the_deadline_is_exactly_what_realtime_needs(tmp_path):
    n = AUTO_REALTIME_MAX_JOBS + 1  # 7 rounds of 8: 7 x 30 s + 120 s = 330 s
    provider = FakeProvider(FakeClock())
    engine = _auto(tmp_path, provider, deadline_s=330.0)
    out = engine.run(make_jobs(n))
    assert engine.decision == (
        f"{n} jobs need about 330s realtime and the deadline is in 330s: realtime")
    assert "submit" not in provider.methods()
    assert out["status"].to_list() == ["completed"] * n
    # A second more and a batch goes first.
    later = FakeProvider(FakeClock(), latency=7200.0)  # (ends, should the switch not come)
    engine = _auto(tmp_path / "later", later, deadline_s=331.0)
    engine.run(make_jobs(n))
    assert later.methods()[0] == "submit"
    assert engine.decision.startswith("batch")


def test_ctrl_c_stops_auto_mode_s_batch_phase_and_sends_nothing_realtime(tmp_path):
    n = AUTO_REALTIME_MAX_JOBS + 1
    provider = FakeProvider(FakeClock(), latency=100.0)
    stop = threading.Event()
    provider.clock.on_wait.append(lambda now: stop.set() if now >= 1020.0 else None)
    engine = _auto(tmp_path, provider, stop=stop)
    out = engine.run(make_jobs(n))
    assert engine.decision == "batch"
    assert "answer" not in provider.methods()
    cancelled = out.filter(pl.col("status") == "cancelled")
    assert cancelled.height > n // 2  # 20 s of a 100 s batch had run
    assert set(cancelled["error"]) == {"cancelled: interrupted"}
    assert provider.clock.monotonic() < 1100.0  # not waited out until the batch ended


def test_auto_mode_s_realtime_phase_sends_at_the_call_s_concurrency(tmp_path):
    provider = FakeProvider(FakeClock())
    seen: list[ProgressSnapshot] = []
    _auto(tmp_path, provider, concurrency=3, progress=seen.append).run(make_jobs(5))
    assert seen[0].activity == "realtime: 3 requests in flight (at most 3)"
    assert max(s.realtime_in_flight or 0 for s in seen) == 3


def test_auto_counts_as_left_only_jobs_not_settled_nor_in_a_running_batch(tmp_path):
    from batchata_df.engine.driver import Engine

    n = AUTO_REALTIME_MAX_JOBS + 3
    provider = FakeProvider(FakeClock())  # batches run until the test ends them
    # j000 was answered, j001 failed, j002 is in a batch still running: 50 left.
    Engine(store(tmp_path), {"openai": provider}, SPEC, PRICES, RunOptions(wait=False),
           clock=provider.clock).run(make_jobs(2))  # fmt: skip
    provider.end("fb_1")
    Engine(store(tmp_path), {"openai": provider}, SPEC, PRICES, RunOptions(),
           clock=provider.clock).run(make_jobs(2))  # fmt: skip
    store(tmp_path).append_jobs(pl.DataFrame({
        "job_id": ["j001"], "batch_key": "rk", "provider": "openai", "model": MODEL,
        "status": "failed", "error": "refused", "mode": "realtime", "input_tokens": 0,
    }))  # fmt: skip
    Engine(store(tmp_path), {"openai": provider}, SPEC, PRICES, RunOptions(wait=False),
           clock=provider.clock).run(make_jobs(3))  # fmt: skip
    assert provider.batches["fb_2"].job_ids == ["j002"]
    provider.calls.clear()
    # 50 left to send; j002's batch (1 job) is in flight.
    assert _auto(tmp_path, provider)._left(make_jobs(n)) == (AUTO_REALTIME_MAX_JOBS, 1)
    assert _auto(tmp_path, provider, retry_failed=True)._left(make_jobs(n)) == (51, 1)
    provider.latency = 1000.0  # (so that a wrong turn to batch mode ends, on the fake clock)
    engine = _auto(tmp_path, provider)
    out = engine.run(make_jobs(n)).sort("job_id")
    assert engine.decision == f"{AUTO_REALTIME_MAX_JOBS} jobs to send: at most 50, realtime"
    # j002's batch was collected first (waited for), then the 50 others went realtime.
    assert out.head(3).select("job_id", "status").rows() == [
        ("j000", "completed"), ("j001", "failed"), ("j002", "completed")]
    assert engine.collector is not None and provider.methods()[-1] == "answer"
    answered = sorted(c[1] for c in provider.calls if c[0] == "answer")
    assert answered == [f"j{i:03d}" for i in range(3, n)]
    assert not [c for c in provider.calls if c[0] == "submit"]
    # Now all is settled; with retry_failed, j001 is left.
    assert _auto(tmp_path, provider)._left(make_jobs(n)) == (0, 0)
    assert _auto(tmp_path, provider, retry_failed=True)._left(make_jobs(n)) == (1, 0)


class _Timed(FakeProvider):
    """Records when (on the fake clock, from the start) each realtime request was sent."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.sent_at: list[tuple[str, float]] = []

    def answer(self, line, *, model, spec):  # type: ignore[no-untyped-def]
        self.sent_at.append((line.split('"')[3], self.clock.monotonic() - 1000.0))
        return super().answer(line, model=model, spec=spec)


def _one_at_a_time(tmp_path, provider, *, progress=None, **options) -> RealtimeEngine:
    return RealtimeEngine(store(tmp_path), {"openai": provider}, SPEC, PRICES.realtime(),
                          RunOptions(**options), progress=progress, clock=provider.clock,
                          concurrency=1)  # fmt: skip


def test_a_rate_limit_holds_every_request_to_the_provider_a_server_error_only_its_own(tmp_path):
    limited = _Timed(FakeClock())
    limited.realtime_failures["j000"] = [
        RealtimeFailure("rate_limited", "HTTP 429", retry_after=5.0)]
    _one_at_a_time(tmp_path, limited).run(make_jobs(3))
    # Nothing goes to the provider for the 5 s it asked for; j000 goes first again.
    assert limited.sent_at == [("j000", 0.0), ("j000", 5.0), ("j001", 5.0), ("j002", 5.0)]
    failing = _Timed(FakeClock())
    failing.realtime_failures["j000"] = [RealtimeFailure("server_error", "HTTP 500")]
    engine = _one_at_a_time(tmp_path / "500", failing)
    out = engine.run(make_jobs(3))
    # The others go on at once; j000 again after the poll backoff's first step (1 s).
    assert failing.sent_at == [("j000", 0.0), ("j001", 0.0), ("j002", 0.0), ("j000", 1.0)]
    assert out["status"].to_list() == ["completed"] * 3
    assert engine.sent == 4  # retries count


def test_a_provider_refusing_for_the_whole_patience_ends_the_row_cancelled(tmp_path):
    provider = _Timed(FakeClock())
    provider.realtime_failures["j000"] = [
        RealtimeFailure("unreachable", "connection refused", retry_after=5.0)] * 10
    out = _one_at_a_time(tmp_path, provider, provider_patience_s=10.0).run(make_jobs(1))
    # Refused at 0, 5 and 10 s: 10 s is the patience, so no fourth try.
    assert provider.sent_at == [("j000", 0.0), ("j000", 5.0), ("j000", 10.0)]
    assert out.select("status", "error", "cost_usd").rows() == [
        ("cancelled", "cancelled: provider_unavailable: connection refused", 0.0)]


def test_a_retry_after_of_zero_is_retried_at_once(tmp_path):
    provider = _Timed(FakeClock())
    provider.realtime_failures["j000"] = [
        RealtimeFailure("rate_limited", "HTTP 429", retry_after=0.0)]
    out = _one_at_a_time(tmp_path, provider).run(make_jobs(1))
    assert provider.sent_at == [("j000", 0.0), ("j000", 0.0)]
    assert out["status"].to_list() == ["completed"]


def test_each_attempt_answered_5xx_keeps_its_worst_case_spent_and_retries_only_if_it_fits(
    tmp_path,
):
    provider = FakeProvider(FakeClock())
    provider.realtime_failures["j000"] = [
        RealtimeFailure("server_error", "HTTP 500")] * SERVER_ERROR_ATTEMPTS
    # 0.55: j000's four attempts count 0.4 (each may have been billed); j001 fits after.
    out = realtime(tmp_path, provider, max_cost_usd=0.55).run(make_jobs(2, worst=0.1))
    assert out.sort("job_id").select("job_id", "status").rows() == [
        ("j000", "failed"), ("j001", "completed")]
    assert sorted(c[1] for c in provider.calls) == ["j000"] * SERVER_ERROR_ATTEMPTS + ["j001"]
    # 0.15: after one 5xx (0.1 counted) another attempt (0.1) would pass the cap: j000
    # ends failed naming the cap and the fix; j001 can never fit.
    provider = FakeProvider(FakeClock())
    provider.realtime_failures["j000"] = [
        RealtimeFailure("server_error", "HTTP 500")] * SERVER_ERROR_ATTEMPTS
    out = realtime(tmp_path / "b", provider, max_cost_usd=0.15).run(make_jobs(2, worst=0.1))
    rows = out.sort("job_id").select("job_id", "status", "error").rows()
    assert rows[0][:2] == ("j000", "failed")
    assert "server_error: HTTP 500 (1 attempt; not sent again" in rows[0][2]
    assert "would pass max_cost_usd=0.15" in rows[0][2] and "retry_failed=True" in rows[0][2]
    assert rows[1] == ("j001", "cancelled", "cancelled: cost_limit")
    assert [c[1] for c in provider.calls] == ["j000"]


def test_a_lost_answer_is_recorded_at_its_worst_case_and_a_later_capped_call_counts_it(
    tmp_path,
):
    provider = FakeProvider(FakeClock())
    lost = "lost: the request was sent but no answer came back (timeout)"
    provider.realtime_failures["j000"] = [RealtimeFailure("lost", lost)]
    realtime(tmp_path, provider, max_cost_usd=1.0).run(make_jobs(1, worst=0.1))
    ended = events(tmp_path).filter(pl.col("status") != "assigned")
    assert ended.select("job_id", "status", "error", "est_cost_usd", "cost_usd").rows() == [
        ("j000", "failed", lost, 0.1, 0.0)]
    # The next call may spend 0.15: 0.1 of it may be gone already, so j001 (0.1) cannot go.
    out = realtime(tmp_path, provider, max_cost_usd=0.15).run(make_jobs(1, start=1, worst=0.1))
    assert out.filter(pl.col("job_id") == "j001").select("status", "error").rows() == [
        ("cancelled", "cancelled: cost_limit")]


def test_requests_sent_without_estimates_record_no_worst_case(tmp_path):
    provider = FakeProvider(FakeClock())
    realtime(tmp_path, provider).run(make_jobs(2))
    assigned = events(tmp_path).filter(pl.col("status") == "assigned")
    assert assigned.height == 2 and assigned["est_cost_usd"].null_count() == 2


def test_failed_rows_are_sent_again_in_realtime_only_with_retry_failed(tmp_path):
    provider = FakeProvider(FakeClock())
    provider.realtime_failures["j000"] = [
        RealtimeFailure("server_error", "HTTP 500")] * SERVER_ERROR_ATTEMPTS
    realtime(tmp_path, provider).run(make_jobs(1))
    provider.calls.clear()
    out = realtime(tmp_path, provider).run(make_jobs(1))
    assert provider.calls == [] and out["status"].to_list() == ["failed"]
    out = realtime(tmp_path, provider, retry_failed=True).run(make_jobs(1))
    assert provider.calls == [("answer", "j000")]
    assert out.select("status", "error").rows() == [("completed", None)]


def test_a_bad_key_ends_the_realtime_call_with_the_error_and_cancels_the_rest(tmp_path):
    from batchata_df.errors import CredentialsError

    class _BadKey(FakeProvider):
        def answer(self, line, *, model, spec):  # type: ignore[no-untyped-def]
            if '"j000"' in line:
                self.calls.append(("answer", "j000"))
                raise CredentialsError("openai: the API key was refused")
            return super().answer(line, model=model, spec=spec)

    provider = _BadKey(FakeClock())
    with pytest.raises(CredentialsError, match="the API key was refused"):
        _one_at_a_time(tmp_path, provider).run(make_jobs(3))
    latest = (events(tmp_path).filter(pl.col("status") != "assigned").sort("job_id")
              .select("job_id", "status", "error"))  # fmt: skip
    assert latest.rows() == [
        ("j000", "cancelled", "cancelled: openai: the API key was refused"),
        ("j001", "cancelled", "cancelled: error"),
        ("j002", "cancelled", "cancelled: error"),
    ]
    assert provider.calls == [("answer", "j000")]


def test_a_resumed_realtime_call_paces_its_eta_by_its_own_rows(tmp_path):
    provider = FakeProvider(FakeClock())
    realtime(tmp_path, provider).run(make_jobs(2))
    provider.realtime_failures["j002"] = [
        RealtimeFailure("rate_limited", "HTTP 429", retry_after=4.0)]
    seen: list[ProgressSnapshot] = []
    _one_at_a_time(tmp_path, provider, progress=seen.append).run(make_jobs(5))
    # 2 settled before; this call's 3 took 4 s in all (the 429's wait).
    paced = [(s.completed, s.pending, s.eta_s) for s in seen if s.eta_s is not None]
    assert paced == [(3, 2, 2 * 4.0 / 1), (4, 1, 1 * 4.0 / 2), (5, 0, 0.0)]


def test_activity_says_why_requests_wait_to_retry(tmp_path):
    provider = FakeProvider(FakeClock())
    provider.realtime_failures["j000"] = [
        RealtimeFailure("rate_limited", "HTTP 429 too many requests", retry_after=5.0)]
    seen: list[ProgressSnapshot] = []
    _one_at_a_time(tmp_path, provider, progress=seen.append).run(make_jobs(1))
    assert [s.activity for s in seen] == [
        "realtime: 1 requests in flight (at most 1)",
        "realtime: 0 requests in flight (at most 1), 1 waiting to retry "
        "(openai: HTTP 429 too many requests; retrying in 5s)",
        "realtime: 1 requests in flight (at most 1)",
        "",  # answered: nothing in flight, nothing waiting (not a stale "1 in flight")
        "",  # the last report, phase done
    ]
    assert [s.phase for s in seen] == ["running"] * 4 + ["done"]


def test_a_paused_provider_holds_a_retry_due_earlier_until_the_pause_ends(tmp_path):
    provider = _Timed(FakeClock())
    provider.realtime_failures["j000"] = [
        RealtimeFailure("rate_limited", "HTTP 429", retry_after=5.0)]
    provider.realtime_failures["j001"] = [RealtimeFailure("server_error", "HTTP 500")]
    out = realtime(tmp_path, provider).run(make_jobs(2))
    assert out["status"].to_list() == ["completed"] * 2
    # j001 would be due after 1 s, but the provider asked for 5: one wait, then both.
    assert provider.clock.waits == [5.0]
    assert sorted(provider.sent_at) == [("j000", 0.0), ("j000", 5.0), ("j001", 0.0),
                                        ("j001", 5.0)]  # fmt: skip


def test_retries_due_go_earliest_first_and_only_into_free_slots(tmp_path):
    from concurrent.futures import Future, ThreadPoolExecutor

    from batchata_df.engine.realtime import _Request

    provider = FakeProvider(FakeClock())
    engine = realtime(tmp_path, provider)  # concurrency 2
    now = provider.clock.monotonic()

    def request(job_id: str, not_before: float) -> _Request:
        line = f'{{"custom_id":"{job_id}","prompt":"p"}}'
        r = _Request(job_id, line, "openai", MODEL, "rk", 0.0, engine.ctx.backoff())
        r.not_before = not_before
        return r

    busy: Future[object] = Future()
    late, early, exact = request("late", now - 1.0), request("early", now - 5.0), request(
        "exact", now)
    running = {busy: request("busy", 0.0)}
    waiting = [late, early, exact]
    with ThreadPoolExecutor(2) as pool:
        engine._send_due(pool, running, waiting, {})  # one slot free: the earliest goes
        assert [r.job_id for r in running.values()] == ["busy", "early"]
        assert waiting == [late, exact]
        engine._send_due(pool, running, waiting, {})  # no slot free: nothing goes
        assert waiting == [late, exact]
        del running[busy]
        running.pop(next(iter(running)))
        engine._paused["openai"] = now + 1.0  # the provider asked for a pause
        engine._send_due(pool, running, waiting, {})
        assert waiting == [late, exact] and running == {}
        engine._paused["openai"] = now  # the pause ends now: both are due (one exactly)
        engine._send_due(pool, running, waiting, {})
        assert sorted(r.job_id for r in running.values()) == ["exact", "late"]
        assert waiting == []


class _AllAtOnce(FakeProvider):
    """Answers only once ``n`` requests are being answered at the same time."""

    def __init__(self, clock: FakeClock, n: int) -> None:
        super().__init__(clock)
        self.together = threading.Barrier(n, timeout=20.0)

    def answer(self, line, *, model, spec):  # type: ignore[no-untyped-def]
        self.together.wait()  # raises BrokenBarrierError if fewer ever run at once
        return super().answer(line, model=model, spec=spec)


def test_as_many_requests_run_at_once_as_the_concurrency_asks(tmp_path):
    # 40 is above any default thread pool (min(32, cpus + 4)): the pool must be sized by
    # the call's concurrency, or fewer requests run at once than the progress says.
    provider = _AllAtOnce(FakeClock(), 40)
    engine = RealtimeEngine(store(tmp_path), {"openai": provider}, SPEC, PRICES.realtime(),
                            RunOptions(), clock=provider.clock, concurrency=40)  # fmt: skip
    out = engine.run(make_jobs(40))
    assert out["status"].to_list() == ["completed"] * 40
    assert not provider.together.broken


class _HeldUntil(FakeProvider):
    """Holds the answer to ``job_id`` until ``release`` is set (at most 20 s)."""

    def __init__(self, clock: FakeClock, job_id: str) -> None:
        super().__init__(clock)
        self.job_id, self.release = job_id, threading.Event()

    def answer(self, line, *, model, spec):  # type: ignore[no-untyped-def]
        if f'"custom_id":"{self.job_id}"' in line:
            self.release.wait(20.0)
        return super().answer(line, model=model, spec=spec)


def _held_by_the_cap(tmp_path, n: int) -> tuple[pl.DataFrame, list[ProgressSnapshot]]:
    """``n`` requests, 2 at once, each of worst case w, under a cap of 2.5 w; j001 is
    answered only once the progress says a request waits for the cap. The output and
    every progress snapshot."""
    rate = PRICES.realtime().get("openai", MODEL)
    assert rate is not None
    worst = 1.5 * (10 * rate.input + 5 * rate.output) / 1e6
    provider = _HeldUntil(FakeClock(), "j001")
    seen: list[ProgressSnapshot] = []

    def progress(snap: ProgressSnapshot) -> None:
        seen.append(snap)
        if snap.cap_waiting:
            provider.release.set()

    out = realtime(tmp_path, provider, progress=progress, max_cost_usd=2.5 * worst).run(
        make_jobs(n, worst=worst))
    return out, seen


def test_requests_held_back_by_the_cap_while_others_run_are_shown_waiting(tmp_path):
    # Worst case w per request, actual cost 2/3 w, cap 2.5 w: j000 and j001 go; when j000
    # is answered (2/3 w spent, j001's w held) j002 does not fit and waits for j001, and the
    # progress says so. j001 is answered only once the progress has said it.
    out, seen = _held_by_the_cap(tmp_path, 3)
    assert out.sort("job_id")["status"].to_list() == ["completed"] * 3
    assert {s.cap_waiting for s in seen if s.cap_waiting} == {1}
    assert seen[-1].cap_waiting == 0 and seen[-1].cap_rounds == 1


def test_every_request_the_cap_holds_back_is_counted_not_only_the_free_slots_share(tmp_path):
    # As above with 5 requests, 2 at once: when j000 is answered one slot is free but the
    # cap admits nothing, and all three requests still to send wait for the budget j001
    # holds (as in batch mode, where the whole next batch is counted), not just one.
    out, seen = _held_by_the_cap(tmp_path, 5)
    first = next(s for s in seen if s.cap_waiting)
    assert (first.completed, first.pending, first.cap_waiting) == (1, 4, 3)
    # 5 answers at 2/3 of the worst case would pass the cap: the last ones end cost_limit.
    statuses = out.sort("job_id")["status"].to_list()
    assert statuses[:3] == ["completed"] * 3 and seen[-1].cap_waiting == 0


def test_realtime_sends_eight_requests_at_once_unless_told_otherwise(tmp_path):
    """The documented default (README: ``concurrency``, default 8), in both modes."""
    for name, make in [
        ("realtime", lambda p, seen: RealtimeEngine(
            store(tmp_path / "rt"), {"openai": p}, SPEC, PRICES.realtime(), RunOptions(),
            progress=seen.append, clock=p.clock)),
        ("auto", lambda p, seen: AutoEngine(
            store(tmp_path / "auto"), {"openai": p}, SPEC, PRICES, RunOptions(),
            deadline_s=None, progress=seen.append, clock=p.clock)),
    ]:  # fmt: skip
        provider = FakeProvider(FakeClock())
        seen: list[ProgressSnapshot] = []
        make(provider, seen).run(make_jobs(9))
        assert seen[0].activity == "realtime: 8 requests in flight (at most 8)", name


def test_with_a_deadline_the_batch_phase_waits_at_most_a_minute_for_cancelled_batches(tmp_path):
    n = AUTO_REALTIME_MAX_JOBS + 1
    grace = {}
    for name, deadline, given in [("deadline", 3600.0, 900.0), ("shorter given", 3600.0, 30.0),
                                  ("no deadline", None, 900.0)]:  # fmt: skip
        provider = FakeProvider(FakeClock(), latency=1.0)
        engine = _auto(tmp_path / name.replace(" ", "_"), provider, deadline_s=deadline,
                       cancel_grace_s=given)  # fmt: skip
        engine.run(make_jobs(n))
        assert engine.batch is not None
        grace[name] = engine.batch.ctx.options.cancel_grace_s
    assert grace == {"deadline": 60.0, "shorter given": 30.0, "no deadline": 900.0}


class _CutOff(FakeProvider):
    """Every realtime answer stops at the output limit (4,096 tokens: the model's default)."""

    def answer(self, line, *, model, spec):  # type: ignore[no-untyped-def]
        from batchata_df.providers.base import conform_results

        job_id = json.loads(line)["custom_id"]
        return conform_results(pl.DataFrame({
            "job_id": [job_id], "outcome": "errored", "text": None, "truncated": True,
            "error": "cut off", "input_tokens": 10, "output_tokens": 4096, "cached_tokens": 0,
        }))  # fmt: skip


def test_a_truncated_realtime_answer_names_the_model_s_own_output_limit(tmp_path):
    # The call set no max_tokens: the message names the limit the request was sent with
    # (the model's default, effective_params), not "max_tokens=None".
    from batchata_df.models import effective_params
    from batchata_df.providers.base import RequestSpec
    from batchata_df.schema import AnswerSchema

    limit = effective_params("openai", MODEL, {})["max_tokens"]
    provider = _CutOff(FakeClock())
    spec = RequestSpec(schema=AnswerSchema(None), params={})
    engine = RealtimeEngine(store(tmp_path), {"openai": provider}, spec, PRICES.realtime(),
                            RunOptions(), clock=provider.clock, concurrency=2)  # fmt: skip
    out = engine.run(make_jobs(1))
    assert out.select("status", "error").rows() == [(
        "failed",
        f"truncated: the answer hit max_tokens={limit} before it was complete; "
        + TRUNCATED_ADVICE,
    )]


def test_auto_mode_s_realtime_phase_sends_nothing_once_the_time_limit_is_spent(tmp_path):
    # The time limit counts from the call's start: if it is spent when the realtime phase
    # begins (here 20 s of a 10 s limit went before it), no request goes out.
    provider = FakeProvider(FakeClock())
    engine = _auto(tmp_path, provider, time_limit_s=10.0)
    provider.clock.sleep(20.0)  # what an earlier phase took
    out = engine.run(make_jobs(2))
    assert out.sort("job_id").select("job_id", "status", "error").rows() == [
        ("j000", "cancelled", "cancelled: time_limit"),
        ("j001", "cancelled", "cancelled: time_limit"),
    ]
    assert [c for c in provider.calls if c[0] == "answer"] == []


def test_doctor_finds_a_realtime_folder_healthy_and_repair_restores_nothing(tmp_path):
    # Realtime requests name a call's "r..." key that no batch event describes (they are
    # not provider batches): doctor must not take it for a batch whose intent was lost.
    from batchata_df.repair import doctor, repair

    provider = FakeProvider(FakeClock())
    out = realtime(tmp_path, provider).run(make_jobs(3))
    assert out["status"].to_list() == ["completed"] * 3
    report = doctor(store(tmp_path).root)
    assert report.healthy, str(report)
    assert report.intents == {}
    before = events(tmp_path).height
    repair(store(tmp_path).root, apply=True)
    assert events(tmp_path).height == before
    assert store(tmp_path).batch_state().height == 0
