"""The driver loop, end to end on an in-memory provider and a fake clock: no sleeps."""

from __future__ import annotations

import threading

import polars as pl
import pytest
from engine_fakes import COST_PER_JOB, PRICES, SPEC, FakeProvider, make_jobs

from batchata_df.engine import Engine, FakeClock, RunOptions
from batchata_df.engine.driver import job_states_of
from batchata_df.errors import ProviderError
from batchata_df.state import StateStore


def engine(tmp_path, provider, *, progress=None, stop=None, **options):
    store = StateStore(tmp_path / "state", {"test": "1"})
    return Engine(store, {"openai": provider}, SPEC, PRICES, RunOptions(**options),
                  progress=progress, stop_event=stop, clock=provider.clock)


def by_status(out: pl.DataFrame) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for job_id, status in out.sort("job_id").select("job_id", "status").iter_rows():
        groups.setdefault(status, []).append(job_id)
    return groups


def test_a_run_waits_on_the_poll_backoff_and_collects_everything(tmp_path):
    provider = FakeProvider(FakeClock(), latency=10.0)
    out = engine(tmp_path, provider, items_per_batch=2).run(make_jobs(5))
    assert by_status(out) == {"completed": [f"j00{i}" for i in range(5)]}
    assert out["cost_usd"].to_list() == pytest.approx([COST_PER_JOB] * 5)
    assert out["provider_batch_id"].drop_nulls().len() == 5
    # Polls at 0, 1, 2.6, 5.16, 9.26, 15.8 s: ended at the first poll after 10 s.
    assert provider.clock.waits == pytest.approx([1.0, 1.6, 2.56, 4.096, 6.5536])
    assert provider.methods().count("submit") == 3


def test_progress_reports_counts_and_elapsed_time_on_the_clock(tmp_path):
    provider = FakeProvider(FakeClock(), latency=3.0)
    seen = []
    engine(tmp_path, provider, progress=seen.append).run(make_jobs(4))
    last = seen[-1]
    assert last.phase == "done" and last.completed == 4 and last.pending == 0
    assert last.elapsed_s == provider.clock.monotonic() - 1000.0 == pytest.approx(1.0 + 1.6 + 2.56)
    assert last.cost_usd == pytest.approx(4 * COST_PER_JOB)
    assert any(s.activity.startswith("uploading batch 1 to openai (4 requests") for s in seen)
    assert [s.phase for s in seen] == ["running"] * (len(seen) - 1) + ["done"]


def test_the_time_limit_cancels_in_flight_keeps_finished_rows_cancels_unsent(tmp_path):
    # Deterministic version of the emulator test: a batch runs 100 s, the limit is 30 s.
    provider = FakeProvider(FakeClock(), latency=100.0)
    out = engine(tmp_path, provider, items_per_batch=10, max_parallel_batches=1,
                 time_limit_s=30.0).run(make_jobs(20))
    groups = by_status(out)
    # At 30.01 s, 3 of the first batch's 10 requests had run (30 %).
    assert groups["completed"] == ["j000", "j001", "j002"]
    assert groups["cancelled"] == [f"j{i:03d}" for i in range(3, 20)]
    assert set(out.filter(pl.col("status") == "cancelled")["error"]) == {"cancelled: time_limit"}
    assert provider.methods().count("submit") == 1 and provider.methods().count("cancel") == 1
    assert provider.clock.monotonic() - 1000.0 == pytest.approx(30.01)


def test_ctrl_c_stops_like_the_time_limit_with_its_own_reason(tmp_path):
    provider = FakeProvider(FakeClock(), latency=100.0)
    stop = threading.Event()
    provider.clock.on_wait.append(lambda now: stop.set() if now >= 1020.0 else None)
    out = engine(tmp_path, provider, stop=stop, items_per_batch=10,
                 max_parallel_batches=1).run(make_jobs(20))
    assert set(out.filter(pl.col("status") == "cancelled")["error"]) == {"cancelled: interrupted"}
    assert by_status(out)["completed"] == [f"j00{i}" for i in range(2)]  # 20.something s


def test_cancelled_batches_that_do_not_end_are_left_pending_after_the_grace(tmp_path):
    provider = FakeProvider(FakeClock(), latency=100.0)
    provider.cancel = lambda batch_id: None  # type: ignore[method-assign]  # never ends
    out = engine(tmp_path, provider, time_limit_s=5.0, cancel_grace_s=60.0).run(make_jobs(3))
    assert by_status(out) == {"assigned": ["j000", "j001", "j002"]}  # a later call collects
    waited = provider.clock.monotonic() - 1000.0
    assert 65.0 <= waited < 65.0 + 60.0


def test_the_cap_sends_what_fits_and_cancels_what_never_can(tmp_path):
    provider = FakeProvider(FakeClock(), latency=2.0)
    jobs = make_jobs(5, worst=0.3)
    out = engine(tmp_path, provider, max_cost_usd=1.0, items_per_batch=5).run(jobs)
    groups = by_status(out)
    # 3 x 0.3 fit under $1; the other 2 wait until the first batch's actual cost
    # ($0.00006) replaces its $0.9 reservation, then go in a second batch.
    assert groups == {"completed": [f"j00{i}" for i in range(5)]}
    assert [c[2] for c in provider.calls if c[0] == "submit"] == [3, 2]


def test_jobs_that_can_never_fit_the_cap_end_cancelled_cost_limit(tmp_path):
    provider = FakeProvider(FakeClock(), latency=2.0)
    # j000 fits; j001 and j002 alone would be over the cap even with nothing spent.
    jobs = make_jobs(3, worst=0.6).with_columns(
        pl.when(pl.col("job_id") == "j000").then(0.6).otherwise(1.2).alias("worst_usd"))
    seen = []
    out = engine(tmp_path, provider, max_cost_usd=1.0, progress=seen.append).run(jobs)
    groups = by_status(out)
    assert groups["completed"] == ["j000"]
    assert groups["cancelled"] == ["j001", "j002"]
    assert set(out.filter(pl.col("status") == "cancelled")["error"]) == {"cancelled: cost_limit"}
    # The progress says the two wait while j000's batch holds the budget, and stops saying
    # so once nothing is left in flight to free any (they are cancelled, not waiting).
    waits = [(s.phase, s.cap_waiting, s.cancelled) for s in seen]
    assert ("running", 2, 0) in waits
    assert [w for w in waits if w[2] == 2] and all(w[1] == 0 for w in waits if w[2] == 2)


def test_a_failing_create_is_retried_on_the_clock_then_succeeds(tmp_path):
    provider = FakeProvider(FakeClock(), latency=0.0)
    provider.submit_errors.extend([ProviderError("503", status_code=503)] * 3)
    out = engine(tmp_path, provider).run(make_jobs(2))
    assert by_status(out) == {"completed": ["j000", "j001"]}
    assert provider.clock.waits[:3] == pytest.approx([1.0, 1.6, 2.56])
    assert provider.methods().count("submit") == 4


def test_creates_failing_beyond_the_patience_end_rows_provider_unavailable(tmp_path):
    provider = FakeProvider(FakeClock(), latency=0.0)
    provider.submit_errors.extend([ProviderError("503", status_code=503)] * 100)
    out = engine(tmp_path, provider, provider_patience_s=30.0, poll_max_s=10.0).run(make_jobs(2))
    assert set(out["error"]) == {"cancelled: provider_unavailable: 503"}
    assert 30.0 < provider.clock.monotonic() - 1000.0 <= 40.0


def test_without_waiting_one_round_submits_and_returns_rows_with_their_batch_ids(tmp_path):
    provider = FakeProvider(FakeClock(), latency=100.0)
    out = engine(tmp_path, provider, wait=False, items_per_batch=2).run(make_jobs(3))
    assert by_status(out) == {"assigned": ["j000", "j001", "j002"]}
    assert provider.methods() == ["submit", "submit", "poll", "poll"]
    assert provider.clock.waits == []
    # Only "assigned" events (written before the provider named the batch): the id comes
    # from the batch events.
    assert out.sort("job_id")["provider_batch_id"].to_list() == ["fb_1", "fb_1", "fb_2"]
    assert "provider_batch_id" in out.columns and len(out.columns) == len(set(out.columns))


def test_without_waiting_a_failed_create_leaves_every_row_it_kept_pending_with_the_reason(
    tmp_path,
):
    # The first create fails (transient): its row has an intent (assigned) and the rows
    # behind it were never planned into a batch. All three say why they are still pending,
    # and the next call sends each of them once.
    provider = FakeProvider(FakeClock(), latency=0.0)
    provider.submit_errors.append(ProviderError("503 down", status_code=503))
    out = engine(tmp_path, provider, wait=False, items_per_batch=1).run(make_jobs(3))
    assert out.sort("job_id").select("job_id", "status", "error").rows() == [
        ("j000", "assigned", "provider_unavailable: 503 down"),
        ("j001", None, "provider_unavailable: 503 down"),
        ("j002", None, "provider_unavailable: 503 down"),
    ]
    assert provider.methods() == ["submit", "find"]
    again = engine(tmp_path, provider, items_per_batch=1).run(make_jobs(3))
    assert by_status(again) == {"completed": ["j000", "j001", "j002"]}
    assert again["error"].null_count() == 3
    assert provider.methods().count("submit") == 1 + 3


def test_a_second_call_collects_what_the_first_left_in_flight(tmp_path):
    provider = FakeProvider(FakeClock(), latency=100.0)
    engine(tmp_path, provider, wait=False).run(make_jobs(3))
    provider.clock.advance(100.0)
    provider.calls.clear()
    out = engine(tmp_path, provider).run(make_jobs(3))
    assert by_status(out) == {"completed": ["j000", "j001", "j002"]}
    assert "submit" not in provider.methods()  # never paid twice


def _refusing_the_first_batch_once() -> FakeProvider:
    """A provider that refuses its first batch once for its queue limit, then takes all."""
    from batchata_df.providers.base import ProviderState

    provider = FakeProvider(FakeClock(), latency=5.0)
    refuse = {"n": 1}
    real_poll = provider.poll

    def poll(batch_id):
        if refuse["n"] and batch_id == "fb_1":
            refuse["n"] -= 1
            provider.end(batch_id, ProviderState.FAILED,
                         detail="token_limit_exceeded: Enqueued token limit reached")
        return real_poll(batch_id)

    provider.poll = poll  # type: ignore[method-assign]
    return provider


def test_queue_limit_refusals_go_again_when_the_provider_has_room(tmp_path):
    provider = _refusing_the_first_batch_once()
    out = engine(tmp_path, provider).run(make_jobs(4))
    assert by_status(out) == {"completed": ["j000", "j001", "j002", "j003"]}
    sizes = [c[2] for c in provider.calls if c[0] == "submit"]
    assert sizes == [4, 2, 2]  # alone, the refused batch is halved


def test_a_later_call_sends_only_what_is_not_settled(tmp_path):
    provider = FakeProvider(FakeClock(), latency=0.0)
    engine(tmp_path, provider).run(make_jobs(3))
    provider.calls.clear()
    out = engine(tmp_path, provider).run(make_jobs(5))
    assert [c[2] for c in provider.calls if c[0] == "submit"] == [2]
    assert provider.batches["fb_2"].job_ids == ["j003", "j004"]
    assert by_status(out) == {"completed": [f"j00{i}" for i in range(5)]}


def test_batches_left_in_flight_hold_their_worst_case_against_the_cap(tmp_path):
    provider = FakeProvider(FakeClock(), latency=10.0)
    engine(tmp_path, provider, wait=False, max_cost_usd=1.0).run(make_jobs(3, worst=0.3))
    provider.calls.clear()
    jobs = make_jobs(5, worst=0.3)
    out = engine(tmp_path, provider, max_cost_usd=1.0).run(jobs)
    # 3 x 0.3 are still held when the call starts: the 2 new jobs wait for that batch.
    submits = [(c[2], i) for i, c in enumerate(provider.calls) if c[0] == "submit"]
    first_results = provider.calls.index(("results", "fb_1"))
    assert submits[0][0] == 2 and submits[0][1] > first_results
    assert by_status(out) == {"completed": [f"j00{i}" for i in range(5)]}


@pytest.mark.parametrize("step", ["poll", "results"])
def test_polls_or_downloads_failing_past_the_patience_leave_rows_pending_with_the_reason(
    tmp_path, step
):
    provider = FakeProvider(FakeClock(), latency=0.0)
    errors = provider.poll_errors if step == "poll" else provider.results_errors
    errors.extend([ProviderError("503 down", status_code=503)] * 100)
    out = engine(tmp_path, provider, provider_patience_s=30.0, poll_max_s=10.0).run(
        make_jobs(2)
    )
    assert set(out["status"]) == {"assigned"}  # the batch is left at the provider
    assert out["error"].str.starts_with("provider_unavailable: 503 down").all()
    assert 30.0 <= provider.clock.monotonic() - 1000.0 <= 45.0  # gave up after the patience
    provider.poll_errors.clear()
    provider.results_errors.clear()
    again = engine(tmp_path, provider).run(make_jobs(2))  # the next call collects it
    assert by_status(again) == {"completed": ["j000", "j001"]}
    assert provider.methods().count("submit") == 1


def test_a_poll_that_recovers_within_the_patience_loses_nothing(tmp_path):
    provider = FakeProvider(FakeClock(), latency=0.0)
    provider.poll_errors.extend([ProviderError("503 down", status_code=503)] * 3)
    out = engine(tmp_path, provider, provider_patience_s=30.0).run(make_jobs(2))
    assert by_status(out) == {"completed": ["j000", "j001"]}
    assert out["error"].is_null().all()


def test_progress_gives_the_expected_and_worst_cost_of_what_this_call_still_sends(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1.0)
    jobs = make_jobs(4).with_columns(
        pl.Series("expected_usd", [0.1, 0.2, 0.3, None]),
        pl.Series("worst_usd", [1.0, 2.0, 3.0, 4.0]),
    )
    engine(tmp_path, provider).run(jobs.head(1))  # j000 is settled before the second call
    seen = []
    engine(tmp_path, provider, progress=seen.append).run(jobs)
    # j001..j003 only; an expected cost that is missing adds nothing.
    assert seen
    assert [(s.expected_cost_usd, s.worst_case_usd) for s in seen] == [
        (pytest.approx(0.2 + 0.3), pytest.approx(2.0 + 3.0 + 4.0))
    ] * len(seen)
    # Without estimates there is nothing to say.
    seen.clear()
    engine(tmp_path / "plain", provider, progress=seen.append).run(make_jobs(2))
    assert seen and {(s.expected_cost_usd, s.worst_case_usd) for s in seen} == {(None, None)}


class ListSource:
    """A streaming run's jobs, from a list of chunks (``engine.source.JobSource``)."""

    def __init__(self, chunks: list[pl.DataFrame]) -> None:
        self.chunks = list(chunks)
        self.expected_rows = sum(c.height for c in chunks)
        self.rows_seen = 0
        self.all = pl.concat(chunks)

    def next_chunk(self) -> pl.DataFrame | None:
        if not self.chunks:
            return None
        chunk = self.chunks.pop(0)
        self.rows_seen += chunk.height
        return chunk

    def lookup(self, job_ids: pl.Series) -> pl.DataFrame:
        return self.all.filter(pl.col("job_id").is_in(job_ids.implode()))


def test_a_streaming_call_holds_re_attached_batches_at_the_worst_case_they_were_sent_with(
    tmp_path,
):
    provider = FakeProvider(FakeClock())  # batches run until the test ends them
    sent = make_jobs(2).with_columns(pl.Series("worst_usd", [0.1, 0.5]))
    engine(tmp_path, provider, wait=False, max_cost_usd=10.0).run(sent)
    assert provider.methods().count("submit") == 1
    # The next call streams other rows of a larger worst case; the batch in flight is held
    # at what its own rows were sent with (0.1 + 0.5), not at the largest worst case known.
    more = make_jobs(1, start=2, worst=0.7)
    resumed = engine(tmp_path, provider, wait=False, max_cost_usd=10.0)
    resumed.run_source(ListSource([more]))
    (old, new) = sorted(resumed.state.in_flight, key=lambda b: b.provider_batch_id)
    assert old.job_ids.to_list() == ["j000", "j001"]
    assert old.reserved == pytest.approx(0.6)
    assert new.reserved == pytest.approx(0.7)
    assert resumed.state.reserved == pytest.approx(1.3)


def test_re_attached_batches_are_priced_from_their_records_and_their_ids_not_copied(tmp_path):
    from batchata_df.engine.driver import recorded_worst
    from batchata_df.engine.planning import Planner
    from batchata_df.engine.recovery import recover
    from batchata_df.engine.source import Feeder

    provider = FakeProvider(FakeClock())  # batches run until the test ends them
    sent = make_jobs(3).with_columns(pl.Series("worst_usd", [0.1, 0.5, 0.25]))
    engine(tmp_path, provider, wait=False, max_cost_usd=10.0, items_per_batch=2).run(sent)
    resumed = engine(tmp_path, provider, wait=False)
    in_flight = recover(resumed.ctx, resumed.state)
    assert len(in_flight) == 2

    # What each job was sent with.
    recorded = recorded_worst(resumed.ctx.store, in_flight).sort("job_id")
    assert recorded.rows() == [("j000", 0.1), ("j001", 0.5), ("j002", 0.25)]
    assert recorded_worst(resumed.ctx.store, []).height == 0
    # The feeder keeps the re-attached batches' keys, not their ids (the batches hold those).
    resumed.state.in_flight = in_flight
    planner = Planner(resumed.ctx.providers, resumed.ctx.spec, None)
    feeder = Feeder(resumed.ctx, resumed.state, ListSource([make_jobs(1, start=9)]), planner)
    assert sorted(feeder.reattached.to_list()) == sorted(b.batch_key for b in in_flight)


def test_polls_due_in_under_a_second_wait_exactly_that_long(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1.0)
    out = engine(tmp_path, provider, poll_initial_s=0.25, poll_factor=2.0).run(make_jobs(1))
    assert by_status(out) == {"completed": ["j000"]}
    # Polls at 0, 0.25, 0.75 and 1.75 s: ended at the first poll after 1 s.
    assert provider.clock.waits == pytest.approx([0.25, 0.5, 1.0])


def test_rows_left_pending_by_an_unreachable_provider_leave_other_rows_errors_alone(tmp_path):
    from batchata_df.providers.base import ProviderState

    provider = FakeProvider(FakeClock())  # batches run until the test ends them
    engine(tmp_path, provider, wait=False).run(make_jobs(1))
    provider.end("fb_1", ProviderState.FAILED, detail="input file invalid")
    failed = engine(tmp_path, provider).run(make_jobs(1))
    (error,) = failed["error"].to_list()
    assert error is not None and "input file invalid" in error
    # The next call's new batch cannot be polled for longer than the patience.
    provider.poll_errors.extend([ProviderError("503 down", status_code=503)] * 100)
    out = engine(tmp_path, provider, provider_patience_s=30.0, poll_max_s=10.0).run(
        make_jobs(2)
    ).sort("job_id")
    assert out.select("job_id", "status").rows() == [("j000", "failed"), ("j001", "assigned")]
    assert out["error"][0] == error  # the earlier failure keeps its reason
    assert out["error"][1].startswith("provider_unavailable: 503 down")


def test_a_streamed_resume_counts_the_rows_settled_earlier_in_its_progress_by_value(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1.0)
    engine(tmp_path, provider).run(make_jobs(2))
    seen = []
    resumed = engine(tmp_path, provider, progress=seen.append)
    # Two chunks: the first is the two rows already answered plus one new, then one more.
    resumed.run_source(ListSource([make_jobs(3), make_jobs(1, start=3)]))
    assert provider.methods().count("submit") == 3  # 1 earlier, then one per new row
    last = seen[-1]
    assert last.phase == "done"
    assert (last.completed, last.pending, last.failed) == (4, 0, 0)
    assert last.cost_usd == pytest.approx(4 * COST_PER_JOB)
    # The first report already holds what the earlier call paid for, never less.
    assert seen[0].cost_usd == pytest.approx(2 * COST_PER_JOB)
    assert min(s.cost_usd for s in seen) == pytest.approx(2 * COST_PER_JOB)
    # The time left is paced by this call's own rows only: the two settled earlier took
    # none of its time (the batch went out at the call's start, on the fake clock).
    paced = [s for s in seen if s.eta_s is not None]
    assert paced
    for s in paced:
        assert s.eta_s == pytest.approx(s.pending * s.elapsed_s / (s.completed - 2))


def test_a_capped_batch_call_counts_a_lost_realtime_request_at_its_worst_case(tmp_path):
    """A realtime request a crash left in flight may have been billed: a later batch call
    holds its worst case as spent, so less of the cap is left for batches."""
    provider = FakeProvider(FakeClock(), latency=1.0)
    StateStore(tmp_path / "state", {"test": "1"}).append_jobs(pl.DataFrame({
        "job_id": ["j000"], "batch_key": "rk", "provider": "openai", "model": "fake-model",
        "status": "assigned", "mode": "realtime", "est_cost_usd": 0.5,
    }))  # fmt: skip
    out = engine(tmp_path, provider, max_cost_usd=0.7).run(
        make_jobs(3, worst=0.15)
    ).sort("job_id")
    assert out.select("job_id", "status").rows() == [
        ("j000", "failed"), ("j001", "completed"), ("j002", "completed")]
    # 0.2 of the cap was left: one 0.15 job per batch, never both at once.
    assert [c[2] for c in provider.calls if c[0] == "submit"] == [1, 1]


def test_a_streamed_call_holds_batches_sent_without_estimates_at_the_largest_worst_case_read(
    tmp_path,
):
    provider = FakeProvider(FakeClock())  # batches run until the test ends them
    engine(tmp_path, provider, wait=False).run(make_jobs(2))  # no estimates recorded
    resumed = engine(tmp_path, provider, wait=False, max_cost_usd=10.0)
    chunks = [make_jobs(1, start=2, worst=0.3), make_jobs(1, start=3, worst=0.7)]
    resumed.run_source(ListSource(chunks))
    old = next(b for b in resumed.state.in_flight if b.provider_batch_id == "fb_1")
    # Its two jobs have no recorded worst case: each is held at the largest one the first
    # chunk read (0.3), not at nothing.
    assert old.reserved == pytest.approx(0.6)
    assert resumed.state.reserved == pytest.approx(0.6 + 0.3 + 0.7)


def test_a_streamed_call_holds_batches_without_estimates_at_the_largest_recorded_worst_case(
    tmp_path,
):
    provider = FakeProvider(FakeClock())  # batches run until the test ends them
    # fb_1 went out under a cap (its worst case, 0.9, is recorded); fb_2 without one.
    engine(tmp_path, provider, wait=False, max_cost_usd=10.0).run(make_jobs(1, worst=0.9))
    engine(tmp_path, provider, wait=False).run(make_jobs(1, start=1))
    resumed = engine(tmp_path, provider, wait=False, max_cost_usd=10.0)
    resumed.run_source(ListSource([make_jobs(1, start=2, worst=0.1)]))
    held = {b.provider_batch_id: b.reserved for b in resumed.state.in_flight}
    # fb_2's job is held at the largest worst case known, recorded ones included (0.9),
    # not only at the largest this call read (0.1).
    assert held == {"fb_1": pytest.approx(0.9), "fb_2": pytest.approx(0.9),
                    "fb_3": pytest.approx(0.1)}


def test_a_streamed_call_of_a_free_model_holds_batches_without_estimates_at_nothing(tmp_path):
    # A model priced at 0 (prices={model: (0, 0)} is accepted) gives every row a worst case
    # of 0.0: a batch sent earlier without estimates is held at that, not at a made-up
    # dollar that would keep this call's rows from going under a small cap.
    provider = FakeProvider(FakeClock())  # batches run until the test ends them
    engine(tmp_path, provider, wait=False).run(make_jobs(2))  # no cap: nothing recorded
    resumed = engine(tmp_path, provider, wait=False, max_cost_usd=0.5)
    resumed.run_source(ListSource([make_jobs(2, start=2, worst=0.0)]))
    held = {b.provider_batch_id: b.reserved for b in resumed.state.in_flight}
    assert held == {"fb_1": 0.0, "fb_2": 0.0}
    assert provider.methods().count("submit") == 2


def test_a_streamed_run_calibrates_on_batches_sent_from_an_earlier_chunk(tmp_path):
    """Chunk 1's batch is still running when chunk 2 is read: its jobs' input estimates
    (5 tokens) are kept, so when it is collected (10 tokens used) chunk 2's worst cases
    are raised (by 5e-6 each) before they are admitted."""
    provider = FakeProvider(FakeClock(), latency=10.0)
    chunks = [make_jobs(2, worst=0.1, est_input_tokens=5),
              make_jobs(2, start=2, worst=0.1, est_input_tokens=5)]
    # Room for chunk 1 (0.2), then for 0.2 + 5e-6 but not for the raised 0.2 + 1e-5.
    cap = 0.2 + 2 * COST_PER_JOB + 5e-6
    engine(tmp_path, provider, max_cost_usd=cap).run_source(ListSource(chunks))
    assert [c[2] for c in provider.calls if c[0] == "submit"] == [2, 1, 1]


def test_a_streamed_resume_counts_earlier_rows_of_unknown_cost_as_nothing(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1.0)
    unpriced = make_jobs(2, model="unpriced-model").with_columns(
        pl.Series("job_id", ["u000", "u001"]))  # answered at an unknown (null) cost
    engine(tmp_path, provider).run(pl.concat([make_jobs(1), unpriced]))
    seen = []
    resumed = engine(tmp_path, provider, progress=seen.append)
    # j000 and the unpriced rows were answered before; j001 is new.
    resumed.run_source(ListSource([pl.concat([make_jobs(2), unpriced])]))
    assert provider.methods().count("submit") == 3  # 2 before (one per model), then j001
    assert seen[0].cost_usd == pytest.approx(COST_PER_JOB)
    assert seen[-1].cost_usd == pytest.approx(2 * COST_PER_JOB)
    assert (seen[-1].completed, seen[-1].total) == (4, 4)


def test_a_streamed_chunk_with_nothing_left_to_send_goes_on_to_the_next_chunk(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1.0)
    engine(tmp_path, provider).run(make_jobs(2))
    resumed = engine(tmp_path, provider)
    # The first chunk was all answered before; the second is new.
    resumed.run_source(ListSource([make_jobs(2), make_jobs(2, start=2)]))
    assert provider.methods().count("submit") == 2
    assert job_states_of(resumed.ctx.store, pl.Series([f"j{i:03d}" for i in range(4)])).sort(
        "job_id")["status"].to_list() == ["completed"] * 4


def test_an_in_memory_resume_counts_earlier_rows_of_unknown_cost_as_nothing(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1.0)
    unpriced = make_jobs(2, model="unpriced-model").with_columns(
        pl.Series("job_id", ["u000", "u001"]))  # answered at an unknown (null) cost
    engine(tmp_path, provider).run(pl.concat([make_jobs(1), unpriced]))
    seen = []
    # j000 and the unpriced rows were answered before; j001 is new.
    engine(tmp_path, provider, progress=seen.append).run(pl.concat([make_jobs(2), unpriced]))
    assert provider.methods().count("submit") == 3  # 2 before (one per model), then j001
    assert (seen[0].completed, seen[0].pending) == (3, 1)
    assert seen[0].cost_usd == pytest.approx(COST_PER_JOB)
    assert seen[-1].cost_usd == pytest.approx(2 * COST_PER_JOB)
    assert (seen[-1].completed, seen[-1].total) == (4, 4)


def test_a_streamed_call_never_resends_nor_counts_twice_the_rows_of_a_re_attached_batch(
    tmp_path,
):
    """j003 was answered by an earlier call; j000 and j001 were left in a batch (fb_2) that
    this call re-attaches and collects before it reads the chunk holding them beside j003.
    None of them is sent again, and each counts once in the progress."""
    provider = FakeProvider(FakeClock(), latency=5.0)
    engine(tmp_path, provider).run(make_jobs(1, start=3))  # fb_1: j003, completed
    engine(tmp_path, provider, wait=False).run(make_jobs(2))  # fb_2: j000, j001, in flight
    provider.calls.clear()
    seen = []
    resumed = engine(tmp_path, provider, progress=seen.append, max_parallel_batches=2,
                     items_per_batch=1)  # fmt: skip
    # Chunk 1 (j002, j004) keeps the planner busy until fb_2 has been collected.
    chunks = [pl.concat([make_jobs(1, start=2), make_jobs(1, start=4)]),
              pl.concat([make_jobs(2), make_jobs(1, start=3)])]  # fmt: skip
    resumed.run_source(ListSource(chunks))
    submitted = [provider.batches[b].job_ids for b in sorted(provider.batches)][2:]
    assert submitted == [["j002"], ["j004"]]
    assert provider.methods().count("submit") == 2
    assert provider.calls.index(("results", "fb_2")) < provider.calls.index(
        ("submit", provider.batches["fb_4"].tag.batch_key, 1))
    last = seen[-1]
    assert (last.total, last.completed, last.pending) == (5, 5, 0)
    assert last.cost_usd == pytest.approx(5 * COST_PER_JOB)
    states = job_states_of(resumed.ctx.store, pl.Series([f"j{i:03d}" for i in range(5)]))
    assert states.sort("job_id")["status"].to_list() == ["completed"] * 5


@pytest.mark.parametrize("streamed", [False, True])
def test_a_batch_reopened_with_some_outcomes_left_counts_each_row_once(tmp_path, streamed):
    """fb_1 (j000, j001) was collected, then ``repair`` reopened it after a damaged part:
    j001's outcome survived (a reparse part, say), j000's did not. The call collects the
    batch again (j000 must not be sent twice) and counts each row once, not j001 twice."""
    provider = FakeProvider(FakeClock(), latency=0.0)
    first = engine(tmp_path, provider)
    first.run(make_jobs(2))
    store = first.ctx.store
    events = store.job_events()
    j001 = events.filter((pl.col("job_id") == "j001") & (pl.col("status") == "completed"))
    for part in (tmp_path / "state" / "jobs").glob("*.parquet"):  # the damaged part, gone
        if pl.read_parquet(part, columns=["status"])["status"].eq("completed").any():
            part.unlink()
    store.append_jobs(j001.drop("seq", "ts"))  # the surviving outcome
    store.append_batch(batch_key=j001["batch_key"][0], provider="openai",
                       model=j001["model"][0], provider_batch_id="fb_1", status="submitted",
                       n_jobs=2, detail="reopened by repair: its results are collected again")
    provider.calls.clear()
    seen = []
    resumed = engine(tmp_path, provider, progress=seen.append)
    if streamed:
        resumed.run_source(ListSource([make_jobs(2)]))
    else:
        resumed.run(make_jobs(2))
    assert provider.methods() == ["poll", "results"]  # collected again, nothing sent
    last = seen[-1]
    assert (last.total, last.completed, last.pending) == (2, 2, 0)
    assert last.cost_usd == pytest.approx(2 * COST_PER_JOB)


def test_a_streamed_call_whose_creates_are_blocked_cancels_every_later_chunk_too(tmp_path):
    """Creates refused past the patience block submitting for the call: the first chunk's
    rows end cancelled, and so do those of every chunk read after it (none is left with
    no event and no reason)."""
    provider = FakeProvider(FakeClock(), latency=0.0)
    provider.submit_errors.extend([ProviderError("503", status_code=503)] * 100)
    resumed = engine(tmp_path, provider, provider_patience_s=30.0, poll_max_s=10.0)
    chunks = [make_jobs(1), make_jobs(1, start=1), make_jobs(1, start=2)]
    resumed.run_source(ListSource(chunks))
    states = job_states_of(resumed.ctx.store, pl.Series(["j000", "j001", "j002"]))
    assert states.sort("job_id").select("job_id", "status", "error").rows() == [
        (f"j00{i}", "cancelled", "cancelled: provider_unavailable: 503") for i in range(3)
    ]
    assert provider.batches == {}  # nothing was created


@pytest.mark.parametrize("streamed", [False, True])
def test_a_call_that_only_collects_re_attached_batches_has_an_eta_from_its_start(
    tmp_path, streamed
):
    provider = FakeProvider(FakeClock(), latency=10.0)
    engine(tmp_path, provider, wait=False, items_per_batch=2).run(make_jobs(2))  # fb_1 at 0 s
    provider.clock.advance(5.0)
    engine(tmp_path, provider, wait=False, items_per_batch=2).run(make_jobs(4))  # fb_2 at 5 s
    provider.calls.clear()
    seen = []
    collect = engine(tmp_path, provider, progress=seen.append)  # sends nothing: collects both
    if streamed:
        collect.run_source(ListSource([make_jobs(4)]))
    else:
        collect.run(make_jobs(4))
    assert "submit" not in provider.methods()
    assert seen[-1].completed == 4
    # fb_1 ended at 10 s: 2 rows in the call's first ~5 s, 2 left.
    paced = [s for s in seen if s.eta_s is not None]
    assert paced and paced[0].completed == 2 and paced[0].pending == 2
    for s in paced:
        assert s.eta_s == pytest.approx(s.pending * s.elapsed_s / s.completed)


def test_a_capped_streamed_resume_counts_what_earlier_calls_were_billed(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1.0)
    StateStore(tmp_path / "state", {"test": "1"}).append_jobs(pl.DataFrame({
        "job_id": ["j000"], "batch_key": "rk", "provider": "openai", "model": "fake-model",
        "status": "completed", "mode": "realtime", "cost_usd": 0.5, "input_tokens": 10,
        "output_tokens": 5,
    }))  # fmt: skip
    # 0.5 of the 0.7 cap was billed before: j001 and j002 (0.15 each) go one at a time.
    engine(tmp_path, provider, max_cost_usd=0.7).run_source(
        ListSource([make_jobs(3, worst=0.15)]))  # fmt: skip
    assert [c[2] for c in provider.calls if c[0] == "submit"] == [1, 1]
    assert [b.job_ids for b in provider.batches.values()] == [["j001"], ["j002"]]


def test_a_stop_ends_every_chunk_not_read_yet_cancelled_with_its_reason(tmp_path):
    provider = FakeProvider(FakeClock(), latency=100.0)
    chunks = [make_jobs(1), make_jobs(1, start=1), make_jobs(1, start=2)]
    run = engine(tmp_path, provider, time_limit_s=30.0, max_parallel_batches=1)
    run.run_source(ListSource(chunks))
    states = job_states_of(run.ctx.store, pl.Series(["j000", "j001", "j002"])).sort("job_id")
    assert states.select("job_id", "status").rows() == [
        ("j000", "cancelled"), ("j001", "cancelled"), ("j002", "cancelled")]
    assert states["error"][1:].to_list() == ["cancelled: time_limit"] * 2
    assert provider.methods().count("submit") == 1  # only chunk 1 went out


def test_a_streamed_cap_that_nothing_fits_ends_the_later_chunks_as_the_in_memory_run_does(
    tmp_path,
):
    jobs = make_jobs(3, worst=0.1).with_columns(pl.Series("worst_usd", [2.0, 0.1, 0.1]))
    provider = FakeProvider(FakeClock(), latency=1.0)
    in_memory = engine(tmp_path / "mem", provider, max_cost_usd=1.0).run(jobs)
    run = engine(tmp_path / "stream", provider, max_cost_usd=1.0)
    run.run_source(ListSource([jobs.slice(i, 1) for i in range(3)]))
    streamed = job_states_of(run.ctx.store, jobs["job_id"])
    cols = ["job_id", "status", "error"]
    assert streamed.sort("job_id").select(cols).rows() == in_memory.sort("job_id").select(
        cols).rows() == [(f"j00{i}", "cancelled", "cancelled: cost_limit") for i in range(3)]
    assert "submit" not in provider.methods()


def test_without_waiting_a_slot_freed_by_the_round_s_poll_is_used_before_returning(tmp_path):
    provider = FakeProvider(FakeClock(), latency=0.0)
    out = engine(tmp_path, provider, wait=False, items_per_batch=2,
                 max_parallel_batches=1).run(make_jobs(3))  # fmt: skip
    assert provider.methods() == ["submit", "poll", "results", "submit"]
    assert out.sort("job_id").select("job_id", "status").rows() == [
        ("j000", "completed"), ("j001", "completed"), ("j002", "assigned")]


def test_an_in_memory_resume_counts_only_this_call_s_rows_settled_before(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1.0)
    engine(tmp_path, provider).run(make_jobs(3))  # j000..j002 answered
    StateStore(tmp_path / "state", {"test": "1"}).append_jobs(pl.DataFrame({
        "job_id": ["j009"], "batch_key": "rk", "provider": "openai", "model": "fake-model",
        "status": "failed", "error": "refused", "input_tokens": 0,
    }))  # fmt: skip
    seen = []
    sent_before = len(provider.batches)
    resumed = engine(tmp_path, provider, progress=seen.append)
    # j000 (answered) and j009 (failed) were settled before; j001 and j002 are not asked.
    resumed.run(pl.concat([make_jobs(1), make_jobs(2, start=9)]))
    first = seen[0]
    assert (first.total, first.completed, first.failed, first.pending) == (3, 1, 1, 1)
    assert first.cost_usd == pytest.approx(COST_PER_JOB)
    # this call set out to send j010 alone
    sent = [b.job_ids for b in list(provider.batches.values())[sent_before:]]
    assert sent == [["j010"]]
    # What the folder had billed when the call started: every earlier row, asked or not.
    assert resumed.state.spent_at_start == pytest.approx(3 * COST_PER_JOB)
    assert (seen[-1].completed, seen[-1].failed, seen[-1].pending) == (2, 1, 0)


def test_an_in_memory_run_calibrates_later_batches_on_the_input_tokens_actually_used(tmp_path):
    """As the streamed test above, in one job table: batch 1 used 10 input tokens where 5
    were estimated, so batch 2's worst cases are raised (by 5e-6 each) before admission."""
    provider = FakeProvider(FakeClock(), latency=10.0)
    jobs = make_jobs(4, worst=0.1, est_input_tokens=5)
    cap = 0.2 + 2 * COST_PER_JOB + 5e-6
    run = engine(tmp_path, provider, max_cost_usd=cap, items_per_batch=2)
    run.run(jobs)
    assert [c[2] for c in provider.calls if c[0] == "submit"] == [2, 1, 1]
    assert run.state.jobs.height == 0  # the job table is let go once the run is driven


def test_a_streamed_run_plans_jobs_refused_for_a_queue_limit_again_from_its_source(tmp_path):
    provider = _refusing_the_first_batch_once()
    run = engine(tmp_path, provider)
    run.run_source(ListSource([make_jobs(4)]))
    assert [c[2] for c in provider.calls if c[0] == "submit"] == [4, 2, 2]
    assert sorted(j for b in list(provider.batches.values())[1:] for j in b.job_ids) == [
        "j000", "j001", "j002", "j003"]
    states = job_states_of(run.ctx.store, pl.Series([f"j00{i}" for i in range(4)]))
    assert states["status"].to_list() == ["completed"] * 4


@pytest.mark.parametrize("path", ["requeued", "requeued, streamed", "create failed"])
def test_a_batch_sent_again_is_calibrated_with_its_own_jobs_estimates(tmp_path, settled, path):
    """A batch refused for the queue limit (planned again from the job table, or streamed
    from its source) or whose create failed is sent again with its jobs' input estimates:
    each collected batch sets the billed input beside the estimates of exactly its jobs
    (without them calibration would see billed tokens with no estimate: a wrong ratio)."""
    jobs = make_jobs(4, worst=0.01, est_input_tokens=1).with_columns(
        pl.Series("est_input_tokens", [3, 5, 7, 11], dtype=pl.Int64))
    est = dict(zip(jobs["job_id"], jobs["est_input_tokens"], strict=True))
    if path == "create failed":
        provider = FakeProvider(FakeClock(), latency=0.0)
        provider.submit_errors.append(ProviderError("503", status_code=503))
    else:
        provider = _refusing_the_first_batch_once()
    run = engine(tmp_path, provider, max_cost_usd=10.0)
    if path == "requeued, streamed":
        run.run_source(ListSource([jobs]))
    else:
        run.run(jobs)
    sizes = [c[2] for c in provider.calls if c[0] == "submit"]
    assert sizes == ([4, 4] if path == "create failed" else [4, 2, 2])
    assert sorted(j for ids, _, _ in settled for j in ids) == sorted(est)  # each once
    assert len(settled) == (1 if path == "create failed" else 2)
    for ids, estimates, got in settled:
        assert estimates == [est[j] for j in ids]
        assert got == (sum(est[j] for j in ids), 10 * len(ids))


def test_a_streamed_run_sends_the_next_chunks_in_the_same_round_while_slots_are_free(tmp_path):
    provider = FakeProvider(FakeClock(), latency=10.0)
    chunks = [make_jobs(1), make_jobs(1, start=1), make_jobs(1, start=2)]
    engine(tmp_path, provider, max_parallel_batches=2).run_source(ListSource(chunks))
    # Two slots: chunks 1 and 2 go before the first poll, chunk 3 when a slot frees up.
    methods = provider.methods()
    assert methods[:3] == ["submit", "submit", "poll"]
    assert methods.count("submit") == 3
    assert methods.index("submit", 2) > methods.index("results")


def test_a_streamed_total_is_the_jobs_read_when_the_input_had_more_than_expected(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1.0)
    source = ListSource([make_jobs(1), make_jobs(2, start=1)])
    source.expected_rows = 1  # an estimate below what came
    seen = []
    engine(tmp_path, provider, progress=seen.append).run_source(source)
    assert seen[0].total == 1  # at first, as expected
    assert (seen[-1].total, seen[-1].completed, seen[-1].pending) == (3, 3, 0)


def _spoiled_by_a_permanent_poll_error(provider: FakeProvider) -> None:
    real_poll = provider.poll

    def poll(batch_id):
        if batch_id == "fb_2":
            raise ProviderError("not found", status_code=404)
        return real_poll(batch_id)

    provider.poll = poll


RUNS = {
    # name: (provider setup, engine options, jobs, the final states come from what the call wrote)
    "plain, batches collected while others wait for a slot": (
        lambda p: None, {"items_per_batch": 2, "max_parallel_batches": 2}, 7, True),
    "creates failing, then sent again": (
        lambda p: p.submit_errors.extend([ProviderError("503", status_code=503)] * 2),
        {"items_per_batch": 3}, 7, True),
    "a batch refused for the queue limit, sent again": (None, {}, 4, True),
    "a batch the provider lost (permanent poll error)": (
        _spoiled_by_a_permanent_poll_error, {"items_per_batch": 2}, 5, True),
    "the time limit: cancelled in flight and unsent": (
        lambda p: setattr(p, "latency", 100.0),
        {"items_per_batch": 3, "max_parallel_batches": 1, "time_limit_s": 30.0}, 9, True),
    "the cap cancels what never fits": (lambda p: None, {"max_cost_usd": 1.0}, 3, True),
    "without waiting: rows left in flight": (
        lambda p: setattr(p, "latency", 100.0), {"wait": False, "items_per_batch": 2}, 3, False),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_final_states_from_what_the_call_wrote_equal_the_folder_read_back(tmp_path, name):
    # A call on an empty folder writes every event of it: its final states come from the
    # events it wrote (no read-back, no search of each job's latest event) when every job
    # ended once, and they are what a fresh reader of the folder finds, whatever happened.
    from polars.testing import assert_frame_equal

    setup, options, n, shortcut = RUNS[name]
    provider = _refusing_the_first_batch_once() if setup is None else FakeProvider(
        FakeClock(), latency=5.0)
    if setup is not None:
        setup(provider)
    jobs = make_jobs(n)
    if name.startswith("the cap"):
        jobs = jobs.with_columns(
            pl.when(pl.col("job_id") == "j000").then(0.6).otherwise(1.2).alias("worst_usd"))
    run = engine(tmp_path, provider, **options)
    answered = []
    real = run.ctx.store.written_states
    run.ctx.store.written_states = lambda ids: answered.append(real(ids)) or answered[-1]
    out = run.run(jobs)
    assert (answered[0] is not None) == shortcut
    reader = StateStore(tmp_path / "state", {"test": "1"}, readonly=True)
    assert_frame_equal(out, job_states_of(reader))
    assert out.height == n


def test_jobs_refused_for_the_queue_limit_before_a_new_date_go_at_that_date_s_worst_case(
    tmp_path, monkeypatch
):
    # A capped call that runs into a later date prices its unsent jobs again
    # (planning.Repricer). Jobs refused for the queue limit wait outside the planner
    # (Requeue) and come back from the job table (RunState.job_rows), which holds the
    # first day's estimates: they must be priced again too, or the cap reserves them at
    # the old day's (lower) worst case.
    from batchata_df.models import TODAY_VAR

    monkeypatch.setenv(TODAY_VAR, "2026-11-28")
    provider = _refusing_the_first_batch_once()
    refusing_poll = provider.poll

    def poll(batch_id):
        if batch_id == "fb_2":  # fb_1 is refused; its jobs wait for fb_2 to end
            monkeypatch.setenv(TODAY_VAR, "2026-11-30")
        return refusing_poll(batch_id)

    provider.poll = poll  # type: ignore[method-assign]
    asked: list[list[str]] = []

    def reprice(rows: pl.DataFrame) -> pl.DataFrame:
        asked.append(sorted(rows.get_column("job_id").to_list()))
        return rows.with_columns(pl.lit(0.6).alias("worst_usd"))

    store = StateStore(tmp_path / "state", {"test": "1"})
    options = RunOptions(max_cost_usd=1.0, items_per_batch=2)
    eng = Engine(store, {"openai": provider}, SPEC, PRICES, options, clock=provider.clock,
                 reprice=reprice)  # fmt: skip
    out = eng.run(make_jobs(4, worst=0.1))
    assert by_status(out) == {"completed": ["j000", "j001", "j002", "j003"]}
    # Sent on 11-28 at 0.1 each (2 x 0.2 under the 1.0 cap), fb_1 refused; on 11-30 each
    # job's worst case is 0.6: its jobs go one at a time under the cap, never two (1.2).
    sizes = [c[2] for c in provider.calls if c[0] == "submit"]
    assert sizes == [2, 2, 1, 1], (sizes, asked)
    assert asked == [["j000"], ["j001"]] or ["j000", "j001"] in asked
