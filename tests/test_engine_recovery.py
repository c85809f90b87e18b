"""Recovery: re-attach batches in flight and resolve intents a crash left behind."""

from __future__ import annotations

import polars as pl
import pytest
from engine_fakes import MODEL, FakeProvider, batch_events, make_run

from batchata_df.engine.clock import FakeClock
from batchata_df.engine.recovery import (
    ADOPTED_DETAILS,
    LOST,
    busy_jobs,
    recover,
    resolve_lost,
    settled,
    spent_on_lost,
)
from batchata_df.providers.base import BatchTag


def assign(ctx, key, job_ids, *, status="intent", batch_id=None, detail=None, worst=None):
    """What a run records for a batch: its batch event and its jobs' ``assigned`` events."""
    ctx.store.append_batch(batch_key=key, provider="openai", model=MODEL, status=status,
                           provider_batch_id=batch_id, n_jobs=len(job_ids), detail=detail)
    ctx.store.append_jobs(pl.DataFrame({
        "job_id": job_ids, "batch_key": key, "provider": "openai", "model": MODEL,
        "status": "assigned", "est_cost_usd": worst,
    }))


def test_batches_in_flight_are_re_attached_with_their_jobs(tmp_path):
    provider = FakeProvider(FakeClock())
    ctx, state = make_run(tmp_path, provider)
    assign(ctx, "k1", ["a", "b"], status="submitted", batch_id="fb_7")
    assign(ctx, "k2", ["c"], status="cancel_requested", batch_id="fb_8", detail="time_limit")
    assign(ctx, "k3", ["d"], status="collected", batch_id="fb_9")
    out = recover(ctx, state)
    assert [(b.batch_key, b.provider_batch_id, b.job_ids.to_list(), b.status, b.cancel_reason)
            for b in out] == [
        ("k1", "fb_7", ["a", "b"], "submitted", None),
        ("k2", "fb_8", ["c"], "cancel_requested", "time_limit"),
    ]
    assert state.known_ids == {"fb_7", "fb_8", "fb_9"}
    assert provider.calls == []  # nothing to look up


def test_a_batch_whose_outcomes_were_stored_before_a_crash_is_recorded_collected(tmp_path):
    # The crash fell between the batch's terminal job events and its "collected" event: it
    # must not be re-attached (its results would be fetched and counted a second time).
    # A batch whose jobs have outcomes under another batch's key (k3: "d" under k0), only
    # their assigned events (k4), or outcomes for some of them (k5) is still re-attached.
    provider = FakeProvider(FakeClock())
    ctx, state = make_run(tmp_path, provider)
    assign(ctx, "k1", ["a", "b"], status="submitted", batch_id="fb_7")
    assign(ctx, "k2", ["c"], status="submitted", batch_id="fb_8")
    ctx.store.append_batch(batch_key="k2", provider="openai", model=MODEL,  # as Stopper does
                           provider_batch_id="fb_8", status="cancel_requested", detail="time_limit")
    assign(ctx, "k3", ["d"], status="submitted", batch_id="fb_9")
    assign(ctx, "k4", ["e"], status="submitted", batch_id="fb_10")
    assign(ctx, "k5", ["f", "g"], status="submitted", batch_id="fb_11")
    ctx.store.append_jobs(pl.DataFrame({
        "job_id": ["a", "b", "c", "d", "g"], "batch_key": ["k1", "k1", "k2", "k0", "k5"],
        "status": ["completed", "failed", "cancelled", "completed", "completed"],
    }))
    out = recover(ctx, state)
    # k5: "f" has no outcome yet (e.g. a batch reopened by repair after a damaged part):
    # collected again, or "f" would be sent and paid a second time.
    assert [(b.batch_key, b.job_ids.to_list()) for b in out] == [
        ("k3", ["d"]), ("k4", ["e"]), ("k5", ["f", "g"])
    ]
    events = batch_events(ctx)
    assert events[-2:] == [
        ("collected", "fb_7",
         "its results were stored before a crash; recorded collected on resume"),
        ("collected", "fb_8",
         "its results were stored before a crash; recorded collected on resume"),
    ]
    assert ctx.store.batch_state().filter(pl.col("status") == "collected").select(
        "batch_key", "n_jobs"
    ).sort("batch_key").rows() == [("k1", 2), ("k2", 1)]
    assert provider.calls == []
    # Recorded once: a second recovery re-attaches the same two and records nothing more.
    assert [b.batch_key for b in recover(ctx, state)] == ["k3", "k4", "k5"]
    assert len(batch_events(ctx)) == len(events)


def test_a_batch_found_after_a_crash_is_re_attached_later_with_no_cancel_reason(tmp_path):
    # Its last event carries a detail ("found at the provider after a crash"), which is not
    # a cancel reason: a stop must still ask the provider to cancel it (Stopper.stop asks
    # only batches without one) and its unanswered rows must say the stop's reason.
    provider = FakeProvider(FakeClock())
    ctx, state = make_run(tmp_path, provider)
    assign(ctx, "k1", ["a"], status="submitted", batch_id="fb_7",
           detail="found at the provider after a crash")
    [batch] = recover(ctx, state)
    assert (batch.status, batch.cancel_reason) == ("submitted", None)


@pytest.mark.parametrize("found", ADOPTED_DETAILS)
def test_only_a_batch_found_after_a_crash_is_re_attached_as_adopted(tmp_path, found):
    # Adopted by find() (after a crash, after a create whose outcome was unknown, or by
    # repair) and re-attached by a later call, even after further events of its own:
    # still not known to be ours. One whose id we recorded at submit is ours: never
    # abandoned for result ids none of its requests' (a gateway rewriting custom_id).
    provider = FakeProvider(FakeClock())
    ctx, state = make_run(tmp_path, provider)
    assign(ctx, "k1", ["a"], status="submitted", batch_id="fb_7", detail=found)
    ctx.store.append_batch(batch_key="k1", provider="openai", model=MODEL,
                           provider_batch_id="fb_7", status="submitted", detail="later")
    assign(ctx, "k2", ["b"], status="submitted", batch_id="fb_8")
    assert [(b.batch_key, b.adopted) for b in recover(ctx, state)] == [
        ("k1", True), ("k2", False)
    ]


def test_an_intent_whose_batch_exists_is_adopted_not_sent_again(tmp_path):
    provider = FakeProvider(FakeClock())
    ctx, state = make_run(tmp_path, provider)
    assign(ctx, "k1", ["a", "b"])
    # The crashed run's create reached the provider; its answer was lost.
    provider.submit(pl.Series(['{"custom_id":"a"}', '{"custom_id":"b"}']), model=MODEL,
                    tag=BatchTag("r", "k1", 0.0))
    tags = []
    provider_find = provider.find
    provider.find = lambda tag: tags.append(tag) or provider_find(tag)  # type: ignore[method-assign]
    [batch] = recover(ctx, state)
    assert batch.provider_batch_id == "fb_1" and batch.job_ids.to_list() == ["a", "b"]
    assert batch.adopted  # found by find(): may be someone else's (Collector.collect)
    assert batch_events(ctx) == [
        ("intent", None, None),
        ("submitted", "fb_1", "found at the provider after a crash"),
    ]
    [tag] = tags
    assert tag.batch_key == "k1" and tag.n_jobs == 2 and tag.job_ids == frozenset({"a", "b"})
    assert tag.run_id == ctx.store.manifest.run_id and tag.created_after > 0
    assert state.known_ids == {"fb_1"}


def test_an_intent_that_never_reached_the_provider_is_abandoned(tmp_path):
    provider = FakeProvider(FakeClock())
    ctx, state = make_run(tmp_path, provider)
    assign(ctx, "k1", ["a"])
    assert recover(ctx, state) == []
    assert batch_events(ctx) == [
        ("intent", None, None),
        ("abandoned", None, "the submit never reached the provider"),
    ]


def test_a_batch_of_a_provider_this_call_does_not_use_is_still_re_attached(tmp_path):
    provider = FakeProvider(FakeClock())
    ctx, state = make_run(tmp_path, provider)
    ctx.providers = {}
    made = []

    def make(name):
        made.append(name)
        return provider

    ctx.make_provider = make
    ctx.store.append_batch(batch_key="k0", provider="gemini", model="g", status="collected",
                           provider_batch_id="batches/0")
    assign(ctx, "k1", ["a"], status="submitted", batch_id="fb_5")
    [batch] = recover(ctx, state)
    assert batch.provider_batch_id == "fb_5"
    assert made == ["openai"]  # for the batch in flight; none for a collected one
    assert ctx.providers == {"openai": provider}


def test_settled_jobs_are_completed_and_failed_ones_unless_retried():
    state = pl.DataFrame({"job_id": ["a", "b", "c", "d"],
                          "status": ["completed", "failed", "cancelled", "assigned"]})
    assert settled(state, retry_failed=False)["job_id"].to_list() == ["a", "b"]
    assert settled(state, retry_failed=True)["job_id"].to_list() == ["a"]


def test_busy_jobs_are_those_in_open_batches_and_unresolved_intents(tmp_path):
    ctx, _ = make_run(tmp_path, FakeProvider(FakeClock()))
    assign(ctx, "k1", ["a"], status="submitted", batch_id="fb_1", worst=0.5)
    assign(ctx, "k2", ["b"], worst=0.25)  # intent: may have reached the provider
    assign(ctx, "k3", ["c"], status="abandoned")
    assign(ctx, "k4", ["d"], status="collected", batch_id="fb_4")
    latest = ctx.store.job_state()
    busy = busy_jobs(ctx.store, latest).sort("job_id")
    assert busy.rows() == [("a", 0.5), ("b", 0.25)]


def test_a_folder_with_one_open_batch_has_its_jobs_busy_and_one_without_batches_none(tmp_path):
    ctx, _ = make_run(tmp_path, FakeProvider(FakeClock()))
    none = busy_jobs(ctx.store, ctx.store.job_state())
    assert none.schema == pl.Schema({"job_id": pl.String, "est_cost_usd": pl.Float64})
    assert none.height == 0
    assign(ctx, "k1", ["a", "b"], status="submitted", batch_id="fb_1", worst=0.5)
    busy = busy_jobs(ctx.store, ctx.store.job_state()).sort("job_id")
    assert busy.rows() == [("a", 0.5), ("b", 0.5)]


def test_realtime_requests_left_in_flight_end_failed_lost_and_nothing_else_changes(tmp_path):
    ctx, _ = make_run(tmp_path, FakeProvider(FakeClock()))
    ctx.store.append_jobs(pl.DataFrame({
        "job_id": ["rt", "bt", "done", "gone"], "batch_key": ["rk", "bk", "rk", "bk"],
        "provider": "openai", "model": MODEL,
        "status": ["assigned", "assigned", "completed", "failed"],
        "mode": ["realtime", "batch", "realtime", "batch"],
        "est_cost_usd": [0.5, 0.25, 0.125, 0.25], "error": [None, None, None, "expired: x"],
    }))
    latest, _ = ctx.store.snapshot()
    out = resolve_lost(ctx.store, latest.sort("job_id"))
    assert out.select("job_id", "status", "error").rows() == [
        ("bt", "assigned", None), ("done", "completed", None), ("gone", "failed", "expired: x"),
        ("rt", "failed", LOST),
    ]
    assert out.columns == latest.columns
    # One event, for the lost request alone, keeping what it was held for.
    [event] = ctx.store.job_events().sort("seq").tail(1).select(
        "job_id", "status", "error", "mode", "batch_key", "provider", "model", "est_cost_usd"
    ).rows()
    assert event == ("rt", "failed", LOST, "realtime", "rk", "openai", MODEL, 0.5)
    assert ctx.store.job_events().height == 5
    assert LOST.startswith("lost: a realtime request was in flight when an earlier call ")
    assert spent_on_lost(ctx) == 0.5  # its worst case counts as spent (no cap here)
    # Nothing lost: the same frame back and nothing written.
    again, _ = ctx.store.snapshot()
    assert resolve_lost(ctx.store, again).equals(again)
    assert ctx.store.job_events().height == 5
    no_mode = again.drop("mode")
    assert resolve_lost(ctx.store, no_mode) is no_mode


def test_a_lost_request_without_a_recorded_worst_case_counts_as_nothing_spent(tmp_path):
    # Sent without estimates (no cap then), its worst case is unknown: it adds nothing,
    # not a made-up amount, to what a later call counts as spent. A batch job's error
    # (z) is not a lost realtime request.
    ctx, _ = make_run(tmp_path, FakeProvider(FakeClock()))
    ctx.store.append_jobs(pl.DataFrame({
        "job_id": ["x", "y", "z"], "batch_key": ["kx", "ky", "kz"],
        "mode": ["realtime", "realtime", "batch"], "status": ["failed"] * 3,
        "error": [LOST, LOST, LOST], "est_cost_usd": [0.25, None, 4.0],
    }))
    assert spent_on_lost(ctx) == 0.25


def test_spent_on_lost_counts_5xx_attempts_and_attempts_retried_since_without_a_cap(tmp_path):
    # What the cap counts (state.lost_attempts): a realtime attempt answered 5xx under its
    # own key <key>.<n>, whose row was sent again and answered; a lost request whose row
    # was retried and answered. None of them is its job's latest event. Counted the same
    # way with no cap (RunOptions() here) as with one: the run's "spent" is one figure.
    ctx, _ = make_run(tmp_path, FakeProvider(FakeClock()))
    assert ctx.options.max_cost_usd is None
    ctx.store.append_jobs(pl.DataFrame({
        "job_id": ["a", "a", "a", "b", "b"],
        "batch_key": ["ka.1", "ka.2", "ka.2", "kb", "kb2"],
        "mode": "realtime",
        "status": ["failed", "assigned", "completed", "failed", "completed"],
        "error": ["server_error: 504 (attempt 1; the provider may have billed it)", None, None,
                  LOST, None],
        "est_cost_usd": [0.5, 0.5, 0.5, 0.125, 0.125],
    }))
    assert spent_on_lost(ctx) == 0.625


def test_recovery_goes_on_past_an_abandoned_intent_and_records_whose_batches_they_were(tmp_path):
    provider = FakeProvider(FakeClock())
    ctx, state = make_run(tmp_path, provider)
    assign(ctx, "k0", ["z"], status="submitted", batch_id="fb_0")
    assign(ctx, "k1", ["a"])  # never reached the provider
    assign(ctx, "k2", ["b", "c"])  # reached it
    provider.submit(pl.Series(['{"custom_id":"b"}', '{"custom_id":"c"}']), model=MODEL,
                    tag=BatchTag("r", "k2", 0.0))
    tags = []
    provider_find = provider.find
    provider.find = lambda tag: tags.append(tag) or provider_find(tag)  # type: ignore[method-assign]
    out = recover(ctx, state)
    assert [(b.batch_key, b.provider, b.model, b.provider_batch_id, b.job_ids.to_list())
            for b in out] == [("k0", "openai", MODEL, "fb_0", ["z"]),
                              ("k2", "openai", MODEL, "fb_1", ["b", "c"])]
    # What find was told: the ids this folder already knows are not the orphan.
    assert [(t.batch_key, t.known_batch_ids) for t in tags] == [
        ("k1", frozenset({"fb_0"})), ("k2", frozenset({"fb_0"}))]
    last = ctx.store.batch_state().sort("batch_key").select(
        "batch_key", "provider", "model", "status", "provider_batch_id")
    assert last.rows() == [
        ("k0", "openai", MODEL, "submitted", "fb_0"),
        ("k1", "openai", MODEL, "abandoned", None),
        ("k2", "openai", MODEL, "submitted", "fb_1"),
    ]


def test_re_attached_batches_carry_typed_job_id_series_even_when_their_rows_are_gone(tmp_path):
    ctx, state = make_run(tmp_path, FakeProvider(FakeClock()))
    assign(ctx, "k1", ["a", "b"], status="submitted", batch_id="fb_1")
    ctx.store.append_batch(batch_key="k2", provider="openai", model=MODEL, status="submitted",
                           provider_batch_id="fb_2", n_jobs=1)  # its job parts were lost
    first, second = recover(ctx, state)
    for batch, ids in ((first, ["a", "b"]), (second, [])):
        assert (batch.job_ids.name, batch.job_ids.dtype, batch.job_ids.to_list()) \
            == ("job_id", pl.String, ids)


def test_re_attaching_batches_makes_no_python_object_per_job_id(tmp_path):
    """A killed 10M-row run leaves 32 batches of 50,000 in flight: their 1.6M ids were
    turned into Python strings once (``iter_rows``) on the way to their Series (+202 MB of
    peak, measured apart). The members go from the folder to each batch's Series in
    Polars: what Python allocates does not follow the number of members. (One batch has
    its outcomes stored, as a kill right after a results part leaves: it is recorded
    collected, and telling it apart makes no Python object per member either.)"""
    import tracemalloc

    ctx, state = make_run(tmp_path, FakeProvider(FakeClock()))
    ids = [f"{i:024x}" for i in range(20_000)]
    for k in range(4):
        assign(ctx, f"k{k}", ids[k::4], status="submitted", batch_id=f"fb_{k}")
    ctx.store.append_jobs(pl.DataFrame({
        "job_id": ids[3::4], "batch_key": "k3", "provider": "openai", "model": MODEL,
        "status": "completed",
    }))
    tracemalloc.start()
    try:
        batches = recover(ctx, state)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [b.job_ids.to_list() for b in batches] == [ids[k::4] for k in range(3)]
    assert batch_events(ctx)[-1][0] == "collected"  # k3: its outcomes were stored
    # 20,000 ids as Python strings are 1.5 MB (73 bytes each) and their lists 0.2 MB.
    assert peak < 400_000, peak


def test_a_batch_counts_as_stored_only_from_outcomes_under_its_own_key() -> None:
    """A job in two open batches, answered only under B: B is stored, A is not.

    Taking A for stored on B's outcome would record A collected without fetching its
    results: answers it was billed for never read, their cost never counted.
    """
    from batchata_df.engine.recovery import _outcomes_stored

    assigned = pl.DataFrame({
        "batch_key": ["A", "A", "B"], "job_id": ["j1", "j2", "j1"],
    })  # fmt: skip
    outcomes = pl.DataFrame({"batch_key": ["B", "A"], "job_id": ["j1", "j2"]})
    assert _outcomes_stored(assigned, outcomes) == {"B"}
    both = pl.concat([outcomes, pl.DataFrame({"batch_key": ["A"], "job_id": ["j1"]})])
    assert _outcomes_stored(assigned, both) == {"A", "B"}
    assert _outcomes_stored(assigned, outcomes.clear()) == set()


def test_a_batch_found_by_an_exact_lookup_is_ours_not_adopted(tmp_path):
    # OpenAI's and Gemini's find() match our own tag: what they found is ours for sure,
    # whatever detail its event carries (folders of earlier versions included).
    class Exact(FakeProvider):
        find_is_exact = True

    ctx, state = make_run(tmp_path, Exact(FakeClock()))
    assign(ctx, "k1", ["a"], status="submitted", batch_id="fb_7", detail=ADOPTED_DETAILS[0])
    assert [(b.batch_key, b.adopted) for b in recover(ctx, state)] == [("k1", False)]
