"""Stopping: time limit and stop event, cancel in flight once, cancel unsent, grace, sleep."""

from __future__ import annotations

import threading

import polars as pl
import pytest
from engine_fakes import (
    SPEC,
    FakeProvider,
    batch_events,
    in_flight,
    job_events,
    make_jobs,
    make_run,
)

from batchata_df.engine.clock import FakeClock
from batchata_df.engine.ledger import Ledger
from batchata_df.engine.planning import Planner, Requeue
from batchata_df.engine.run import RunOptions
from batchata_df.engine.stopping import Stopper
from batchata_df.errors import ProviderError
from batchata_df.providers.base import BatchTag


def setup(tmp_path, **options):
    provider = FakeProvider(FakeClock())
    ctx, state = make_run(tmp_path, provider, RunOptions(**options))
    stop = threading.Event()
    return provider, ctx, state, Stopper(ctx, state, Ledger(ctx, state), stop), stop


def running_batch(provider, ctx, state, job_ids, key):
    batch_id = provider.submit(pl.Series([f'{{"custom_id":"{j}"}}' for j in job_ids]),
                               model="fake-model", tag=BatchTag("r", key, 0.0))
    batch = in_flight(ctx, batch_id, job_ids, key=key)
    batch.next_poll = 500.0
    state.in_flight.append(batch)
    return batch


def test_the_stop_event_and_the_time_limit_give_the_reason(tmp_path):
    provider, ctx, state, stopper, stop = setup(tmp_path, time_limit_s=60.0)
    assert stopper.reason() is None
    provider.clock.advance(59.9)
    assert stopper.reason() is None
    provider.clock.advance(0.1)
    assert stopper.reason() == "time_limit"
    stop.set()
    assert stopper.reason() == "interrupted"  # Ctrl+C wins over the time limit


def test_no_time_limit_never_stops(tmp_path):
    provider, ctx, state, stopper, stop = setup(tmp_path)
    provider.clock.advance(1e9)
    assert stopper.reason() is None


def test_a_stop_cancels_each_batch_once_and_ends_every_unsent_job(tmp_path):
    provider, ctx, state, stopper, stop = setup(tmp_path)
    a = running_batch(provider, ctx, state, ["j100"], "ka")
    b = running_batch(provider, ctx, state, ["j200"], "kb")
    provider.calls.clear()
    planner = Planner(ctx.providers, SPEC, 2)
    planner.add(make_jobs(3))
    requeue = Requeue(ctx.clock, ctx.backoff)
    refused = in_flight(ctx, "fb_x", ["j050", "j051"])
    requeue.refused(refused, others=0, too_big=False)
    stopper.stop("time_limit", planner, requeue)
    stopper.stop("time_limit", planner, requeue)  # every round after the stop calls it
    assert provider.calls == [("cancel", "fb_1"), ("cancel", "fb_2")]
    assert batch_events(ctx) == [
        ("cancel_requested", "fb_1", "time_limit"),
        ("cancel_requested", "fb_2", "time_limit"),
    ]
    assert (a.cancel_reason, b.cancel_reason) == ("time_limit", "time_limit")
    assert a.next_poll == 0.0 and b.next_poll == 0.0  # polled at once to collect
    ended = job_events(ctx)
    assert ended.select("job_id", "status", "error").rows() == [
        (j, "cancelled", "cancelled: time_limit")
        for j in ["j000", "j001", "j002", "j050", "j051"]
    ]
    assert ended["batch_key"].null_count() == 5
    assert state.done["cancelled"] == 5
    assert planner.current() is None and requeue.items == []
    assert state.snapshot("stopping", ctx.clock.monotonic()).stop_reason == "time_limit"


def test_a_batch_that_ended_before_the_cancel_is_still_collected(tmp_path):
    provider, ctx, state, stopper, stop = setup(tmp_path)
    batch = running_batch(provider, ctx, state, ["j100"], "ka")
    provider.cancel = lambda batch_id: (_ for _ in ()).throw(  # type: ignore[method-assign]
        ProviderError("400 cannot cancel a completed batch", status_code=400))
    stopper.stop("interrupted", Planner(ctx.providers, SPEC, None), Requeue(ctx.clock, ctx.backoff))
    assert batch.cancel_reason == "interrupted" and batch in state.in_flight
    assert batch_events(ctx) == [("cancel_requested", "fb_1", "interrupted")]


def test_the_grace_period_runs_from_the_first_check_after_the_stop(tmp_path):
    provider, ctx, state, stopper, stop = setup(tmp_path, cancel_grace_s=30.0)
    running_batch(provider, ctx, state, ["j100"], "ka")
    provider.clock.advance(100.0)  # the stop came late in the run
    assert not stopper.past_grace()
    provider.clock.advance(29.9)
    assert not stopper.past_grace()
    provider.clock.advance(0.1)
    assert stopper.past_grace()


def test_batches_that_cannot_be_observed_are_not_waited_for(tmp_path):
    provider, ctx, state, stopper, stop = setup(tmp_path, cancel_grace_s=900.0)
    a = running_batch(provider, ctx, state, ["j100"], "ka")
    b = running_batch(provider, ctx, state, ["j200"], "kb")
    a.failures, b.failures = 5, 4
    assert not stopper.past_grace()
    b.failures = 5
    assert stopper.past_grace()


def test_sleep_wakes_at_the_deadline_not_after_the_full_interval(tmp_path):
    provider, ctx, state, stopper, stop = setup(tmp_path, time_limit_s=10.0)
    provider.clock.advance(8.0)
    stopper.sleep(60.0)
    assert provider.clock.waits == [2.0 + 0.01]
    assert stopper.reason() == "time_limit"
    stopper.sleep(60.0)  # past the deadline: the full interval
    assert provider.clock.waits[-1] == 60.0


def test_after_a_stop_the_sleep_still_waits_instead_of_spinning(tmp_path):
    provider, ctx, state, stopper, stop = setup(tmp_path)
    provider.clock.on_wait.append(lambda now: stop.set())
    stopper.sleep(60.0)
    assert stop.is_set()
    stop_time = provider.clock.monotonic()
    # Already stopping: the event would not block, so the sleep is a plain sleep.
    stopper.sleep(5.0)
    assert provider.clock.monotonic() == stop_time + 5.0


def test_sleep_is_cut_to_the_deadline_under_a_second_before_it_and_not_at_it(tmp_path):
    provider, ctx, state, stopper, stop = setup(tmp_path, time_limit_s=10.0)
    provider.clock.advance(9.5)
    stopper.sleep(60.0)  # half a second left: woken at the deadline
    assert provider.clock.waits == [pytest.approx(0.51)]
    provider, ctx, state, stopper, stop = setup(tmp_path / "at", time_limit_s=10.0)
    provider.clock.advance(10.0)
    stopper.sleep(60.0)  # at the deadline already: the stop is under way, a plain wait
    assert provider.clock.waits == [60.0]
