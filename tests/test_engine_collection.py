"""Collection: polls -> results -> terminal job events with cost; what ends which way."""

from __future__ import annotations

from types import SimpleNamespace

import polars as pl
import pytest
from engine_fakes import (
    COST_PER_JOB,
    SPEC,
    FakeProvider,
    batch_events,
    in_flight,
    job_events,
    make_jobs,
    make_run,
)
from pydantic import BaseModel

from batchata_df.cost import Price
from batchata_df.engine.admission import Admission
from batchata_df.engine.clock import FakeClock
from batchata_df.engine.collection import THINKING_ADVICE, Collector, outcomes_to_events
from batchata_df.engine.collection import TRUNCATED_ADVICE as ADVICE
from batchata_df.engine.ledger import Ledger
from batchata_df.engine.planning import Requeue
from batchata_df.engine.run import PackedIds, RunOptions, report
from batchata_df.errors import ProviderError
from batchata_df.providers.base import BatchPoll, BatchTag, ProviderState, RequestSpec
from batchata_df.providers.base import empty_results as _empty
from batchata_df.schema import AnswerSchema

JOBS = ["j000", "j001", "j002"]


def setup(tmp_path, options=None, n_batches=1):
    provider = FakeProvider(FakeClock())
    ctx, state = make_run(tmp_path, provider, options)
    state.jobs = make_jobs(10)
    requeue = Requeue(ctx.clock, ctx.backoff)
    admission = Admission(state, None)
    collector = Collector(ctx, state, admission, Ledger(ctx, state), requeue)
    for i in range(1, n_batches + 1):
        members = [f"j{i * 100 + k:03d}" for k in range(3)] if i > 1 else JOBS
        tag = BatchTag("r", f"k_fb_{i}", 0.0)
        batch_id = provider.submit(
            pl.Series([f'{{"custom_id":"{j}"}}' for j in members]), model="fake-model", tag=tag
        )
        state.in_flight.append(in_flight(ctx, batch_id, members, reserved=0.3))
        state.reserved += 0.3
    provider.calls.clear()
    return provider, ctx, state, collector, requeue


def test_an_ended_batch_becomes_completed_events_with_cost_and_frees_its_reservation(tmp_path):
    provider, ctx, state, collector, _ = setup(tmp_path)
    provider.end("fb_1")
    collector.poll_due()
    events = job_events(ctx)
    assert events.select("job_id", "status", "answer", "provider_batch_id").rows() == [
        (j, "completed", f"answer to {j}", "fb_1") for j in JOBS
    ]
    assert events["cost_usd"].to_list() == pytest.approx([COST_PER_JOB] * 3)
    assert batch_events(ctx) == [("collected", "fb_1", None)]
    assert state.in_flight == [] and state.reserved == 0.0
    assert state.spent == pytest.approx(3 * COST_PER_JOB)
    assert state.done["completed"] == 3
    assert provider.methods() == ["poll", "results"]


def test_only_due_batches_are_polled_and_running_ones_back_off(tmp_path):
    provider, ctx, state, collector, _ = setup(tmp_path, n_batches=2)
    collector.poll_due()
    assert provider.methods() == ["poll", "poll"]
    assert [b.next_poll for b in state.in_flight] == [1001.0, 1001.0]  # 1 s after now
    provider.clock.advance(0.5)
    collector.poll_due()
    assert provider.methods() == ["poll", "poll"]  # nothing due yet
    provider.clock.advance(0.5)
    state.in_flight[1].next_poll = 5000.0
    collector.poll_due()
    assert provider.calls[-1] == ("poll", "fb_1")
    assert state.in_flight[0].next_poll == 1001.0 + 1.6


def test_without_waiting_every_batch_is_polled_once_per_round(tmp_path):
    provider, ctx, state, collector, _ = setup(tmp_path, RunOptions(wait=False), n_batches=2)
    for b in state.in_flight:
        b.next_poll = 9e9
    collector.poll_due()
    assert provider.methods() == ["poll", "poll"]


def test_a_transient_poll_failure_tries_again_later_a_permanent_one_fails_the_rows(tmp_path):
    provider, ctx, state, collector, _ = setup(tmp_path)
    provider.poll_errors.append(ProviderError("502", status_code=502))
    collector.poll_due()
    [batch] = state.in_flight
    assert batch.failures == 1 and batch.next_poll == 1001.0
    assert job_events(ctx).height == 0
    provider.clock.advance(1.0)
    provider.poll_errors.append(ProviderError("404 no such batch", status_code=404))
    collector.poll_due()
    assert state.in_flight == [] and state.reserved == 0.0
    assert job_events(ctx).select("status", "error").unique().rows() == [
        ("failed", "provider_error: 404 no such batch")
    ]
    assert batch_events(ctx) == [("collected", "fb_1", "provider_error: 404 no such batch")]


def test_results_that_cannot_be_downloaded_now_are_fetched_later(tmp_path):
    provider, ctx, state, collector, _ = setup(tmp_path)
    provider.end("fb_1")
    provider.results_errors.append(ProviderError("500", status_code=500))
    collector.poll_due()
    assert len(state.in_flight) == 1 and state.in_flight[0].failures == 1
    provider.clock.advance(1.0)
    provider.results_errors.append(ProviderError("403 gone", status_code=403))
    collector.poll_due()
    assert state.in_flight == []
    assert set(job_events(ctx)["error"]) == {"results_unavailable: 403 gone"}


def test_a_batch_s_ids_are_decoded_once_when_collected_not_per_poll(tmp_path, monkeypatch):
    # A batch in flight holds its ids packed (12 bytes an id); decoding them costs ~40 ns
    # an id. Polls while it runs and downloads that fail must not decode them, and the
    # collection decodes them once for the events and the calibration both.
    decoded = []
    real = PackedIds.series
    monkeypatch.setattr(PackedIds, "series", lambda self: decoded.append(1) or real(self))
    provider, ctx, state, collector, _ = setup(tmp_path)
    state.in_flight[0].est_input = pl.Series([10, 20, 30])  # calibrated when collected
    for _ in range(3):  # running
        collector.poll_due()
        provider.clock.advance(60.0)
    provider.end("fb_1")
    provider.results_errors.append(ProviderError("500", status_code=500))
    collector.poll_due()  # ended, its download failed: fetched later
    assert len(state.in_flight) == 1 and decoded == []
    provider.clock.advance(60.0)
    collector.poll_due()
    assert state.in_flight == [] and len(decoded) == 1
    assert job_events(ctx)["job_id"].to_list() == JOBS


def test_a_cancelled_batch_keeps_its_finished_rows_and_cancels_the_rest(tmp_path):
    provider, ctx, state, collector, _ = setup(tmp_path)
    provider.end("fb_1", ProviderState.CANCELLED, finished=1)
    state.in_flight[0].cancel_reason = "time_limit"
    collector.poll_due()
    assert job_events(ctx).select("job_id", "status", "error").rows() == [
        ("j000", "completed", None),
        ("j001", "cancelled", "cancelled: time_limit"),
        ("j002", "cancelled", "cancelled: time_limit"),
    ]
    assert job_events(ctx)["cost_usd"].to_list() == pytest.approx([COST_PER_JOB, 0.0, 0.0])


def test_a_failed_batch_fails_every_row_with_the_provider_reason(tmp_path):
    provider, ctx, state, collector, _ = setup(tmp_path)
    provider.end("fb_1", ProviderState.FAILED, detail="invalid_request: bad line 2")
    collector.poll_due()
    assert set(job_events(ctx)["error"]) == {
        "batch_failed: the provider rejected the batch: invalid_request: bad line 2"
    }
    assert "results" not in provider.methods()


def test_a_batch_adopted_by_mistake_is_abandoned_and_writes_no_job_events(tmp_path):
    provider, ctx, state, collector, _ = setup(tmp_path)
    provider.batches["fb_1"].job_ids = ["x1", "x2", "x3"]  # someone else's requests
    state.in_flight[0].adopted = True  # found after a crash (recovery.recover)
    provider.end("fb_1")
    collector.poll_due()
    assert job_events(ctx).height == 0
    assert batch_events(ctx) == [
        ("abandoned", "fb_1", "the batch found by a lookup holds none of our requests")
    ]
    assert state.in_flight == [] and state.reserved == 0.0 and state.spent == 0.0


def test_a_batch_we_recorded_ourselves_is_never_abandoned_for_ids_none_of_ours(tmp_path):
    """Ours (its id recorded at submit, not adopted): lines under other ids are billed
    spend kept as unmatched, and its rows fail missing_result instead of going back to the
    queue to be paid again."""
    provider, ctx, state, collector, _ = setup(tmp_path)
    provider.batches["fb_1"].job_ids = ["x1", "x2", "x3"]  # ids rewritten on their way
    provider.end("fb_1")
    collector.poll_due()
    assert batch_events(ctx)[-1][0] == "collected"
    events = job_events(ctx)
    assert sorted(events.filter(pl.col("job_id").is_in(JOBS))["error"].str.slice(0, 15)) == [
        "missing_result:"] * 3  # fmt: skip
    kept = events.filter(pl.col("job_id").str.starts_with("unmatched:"))
    assert kept.height == 3 and state.spent == pytest.approx(3 * COST_PER_JOB)
    assert state.in_flight == [] and state.reserved == 0.0


def test_a_batch_adopted_by_mistake_leaves_no_finished_requests_in_the_progress(tmp_path):
    """Its requests the provider reported finished are none of ours: not counted as done."""
    provider, ctx, state, collector, _ = setup(tmp_path)
    snapshots: list = []
    ctx.progress = snapshots.append
    state.total = 10
    provider.batches["fb_1"].job_ids = ["x1", "x2", "x3"]  # someone else's requests
    state.in_flight[0].adopted = True  # found after a crash (recovery.recover)
    provider.end("fb_1", counts={"total": 3, "completed": 3})  # finished, by its poll
    collector.poll_due()
    assert batch_events(ctx)[-1][0] == "abandoned"
    assert snapshots[-1].in_flight_done == 3  # reported while its results downloaded
    report(ctx, state, "running")  # the driver's report after the poll round
    assert state.in_flight_finished == {}
    assert snapshots[-1].in_flight_done == 0 and snapshots[-1].pending == 10


def test_a_queue_limit_refusal_requeues_the_jobs_unbilled(tmp_path):
    provider, ctx, state, collector, requeue = setup(tmp_path)
    detail = "token_limit_exceeded: Enqueued token limit reached. Limit: 90,000"
    provider.end("fb_1", ProviderState.FAILED, detail=detail)
    collector.poll_due()
    assert job_events(ctx).height == 0
    assert batch_events(ctx) == [("collected", "fb_1", f"requeued: {detail}")]
    assert state.reserved == 0.0 and state.in_flight == []
    [item] = requeue.items
    assert item.job_ids.to_list() == JOBS and item.max_items == 1  # alone: halved


def test_a_lone_request_bigger_than_the_named_limit_fails_rate_limited(tmp_path):
    provider, ctx, state, collector, requeue = setup(tmp_path)
    provider.batches["fb_1"].job_ids = ["j000"]
    state.in_flight[0].ids = PackedIds.of(pl.Series("job_id", ["j000"]))
    state.jobs = make_jobs(1).with_columns(pl.lit("word " * 500).alias("prompt"))
    detail = "token_limit_exceeded: Enqueued token limit reached. Limit: 100"
    provider.end("fb_1", ProviderState.FAILED, detail=detail)
    collector.poll_due()
    assert requeue.items == []
    assert job_events(ctx).select("status", "error").rows() == [
        ("failed", f"rate_limited: {detail}")
    ]


def test_a_collected_batch_resets_the_model_s_rate_limit_patience(tmp_path):
    provider, ctx, state, collector, requeue = setup(tmp_path)
    requeue.patience_s = 10.0
    batch = state.in_flight[0]
    assert requeue.refused(batch, others=0, too_big=False)
    provider.clock.advance(11.0)
    provider.end("fb_1")
    collector.poll_due()
    assert requeue.refused(batch, others=0, too_big=False)  # patience started over


def test_empty_results_of_an_ended_batch_fail_rows_as_missing(tmp_path, monkeypatch):
    provider, ctx, state, collector, _ = setup(tmp_path)
    provider.end("fb_1")
    monkeypatch.setattr(provider, "results", lambda batch_id, spec: _empty())
    collector.poll_due()
    assert set(job_events(ctx)["error"]) == {
        "missing_result: the provider returned no result for this request"
    }


def test_rows_of_an_ended_batch_are_recorded_failed_with_its_ids_unbilled(tmp_path):
    provider, ctx, state, collector, _ = setup(tmp_path)
    batch = state.in_flight[0]
    Ledger(ctx, state).end_batch(batch, "provider_error: 404 no such batch")
    rows = job_events(ctx).select(
        "job_id", "status", "error", "batch_key", "provider", "model", "provider_batch_id",
        "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
        "reasoning_tokens", "cost_usd", "cache_saved_usd",
    ).rows()
    assert rows == [
        (j, "failed", "provider_error: 404 no such batch", "k_fb_1", "openai", "fake-model",
         "fb_1", None, None, None, None, None, 0.0, 0.0)
        for j in JOBS
    ]
    assert batch_events(ctx) == [("collected", "fb_1", "provider_error: 404 no such batch")]
    assert state.done == {"completed": 0, "failed": 3, "cancelled": 0}
    assert state.reserved == pytest.approx(0.0) and batch.status == "collected"
    assert state.cost == 0.0


def test_a_batch_unreachable_for_exactly_the_patience_is_left_pending_with_the_reason(tmp_path):
    options = RunOptions(provider_patience_s=4.0, poll_initial_s=2.0, poll_factor=1.0)
    provider, ctx, state, collector, _ = setup(tmp_path, options)
    for failed in (1, 2):  # t = 1000, 1002: within the patience
        provider.poll_errors.append(ProviderError("502 bad gateway", status_code=502))
        collector.poll_due()
        assert [b.failures for b in state.in_flight] == [failed]
        assert state.unavailable == {}
        provider.clock.advance(2.0)
    provider.poll_errors.append(ProviderError("502 bad gateway", status_code=502))
    collector.poll_due()  # t = 1004: unreachable for the whole patience
    assert state.unavailable == {
        "k_fb_1": "provider_unavailable: 502 bad gateway; batch fb_1 is at the provider: "
        "call again with the same state to collect it"
    }
    assert state.in_flight == [] and job_events(ctx).height == 0  # rows stay pending


def test_a_refused_batch_beside_others_of_its_model_waits_for_one_of_them_whole(tmp_path):
    provider, ctx, state, collector, requeue = setup(tmp_path, n_batches=2)
    detail = "token_limit_exceeded: Enqueued token limit reached. Limit: 90,000"
    provider.end("fb_1", ProviderState.FAILED, detail=detail)
    collector.poll_due()
    [item] = requeue.items
    assert item.job_ids.to_list() == JOBS
    assert (item.gate, item.max_items) == (1, 3)  # not halved: fb_2 of the model runs


def test_a_lone_request_within_the_named_limit_waits_instead_of_failing(tmp_path):
    provider, ctx, state, collector, requeue = setup(tmp_path)
    provider.batches["fb_1"].job_ids = ["j000"]
    state.in_flight[0].ids = PackedIds.of(pl.Series("job_id", ["j000"]))
    detail = "token_limit_exceeded: Enqueued token limit reached. Limit: 90,000"
    provider.end("fb_1", ProviderState.FAILED, detail=detail)
    collector.poll_due()
    [item] = requeue.items
    assert item.job_ids.to_list() == ["j000"] and job_events(ctx).height == 0


def _results(**extra):
    """A provider's results for members a (answered) and b (cut off): c has no line."""
    return pl.DataFrame({
        "job_id": ["a", "b"], "outcome": ["succeeded", "errored"], "text": ["hi", None],
        "truncated": [False, True], "error": [None, "cut off"], "input_tokens": [10, 20],
        "output_tokens": [5, 100], "cached_tokens": [0, 0],
        "cache_write_tokens": pl.Series([None, None], dtype=pl.Int64), **extra,
    })


def test_results_without_optional_columns_become_complete_events_by_value():
    members = pl.DataFrame({"job_id": ["a", "b", "c"]})
    ended = BatchPoll(ProviderState.ENDED, "ended", None)

    def cut(limit: int) -> str:
        return f"truncated: the answer hit max_tokens={limit} before it was complete; " + ADVICE

    missing = "missing_result: the provider returned no result for this request"
    # No citations, response, reasoning or model columns: they come back null, typed.
    out = outcomes_to_events(members, _results(), ended, SPEC)
    assert out.schema == pl.Schema({
        "job_id": pl.String, "status": pl.String, "error": pl.String, "answer": pl.String,
        "input_tokens": pl.Int64, "output_tokens": pl.Int64, "cached_tokens": pl.Int64,
        "cache_write_tokens": pl.Int64, "reasoning_tokens": pl.Int64, "citations": pl.String,
        "raw": pl.String, "response": pl.String, "answered_by": pl.String,
    })
    assert out.rows() == [
        ("a", "completed", None, "hi", 10, 5, 0, None, None, None, "hi", None, None),
        ("b", "failed", cut(100), None, 20, 100, 0, None, None, None, None, None, None),
        ("c", "failed", missing, None, None, None, None, None, None, None, None, None, None),
    ]
    # A line answered by another model than the batch's names it (Gemini's modelVersion
    # of a routed model); the batch's own model, or none said, is not recorded.
    said = _results(model=["gemini-2.5-pro", "gemini-3.8-flash"])
    out = outcomes_to_events(members, said, ended, SPEC, provider="gemini",
                             model="models/gemini-2.5-pro")
    assert out["answered_by"].to_list() == [None, "gemini-3.8-flash", None]
    # Reasoning tokens the provider reported are kept.
    out = outcomes_to_events(members, _results(reasoning_tokens=[7, 10]), ended, SPEC)
    assert out["reasoning_tokens"].to_list() == [7, 10, None]
    # The batch's model gives the max_tokens named when the call did not set one.
    no_limit = RequestSpec(schema=AnswerSchema(None), params={})
    out = outcomes_to_events(members, _results(), ended, no_limit,
                             provider="anthropic", model="claude-haiku-4-5")
    assert out["error"][1] == cut(4096)  # the model's default (models.py)


class _Score(BaseModel):
    score: int


def _ends(poll, results, *, spec=SPEC, members=("a", "b", "c"), **kw):
    out = outcomes_to_events(pl.DataFrame({"job_id": list(members)}), results, poll, spec, **kw)
    return out.select("job_id", "status", "error").rows()


@pytest.mark.parametrize(("state", "detail", "reason", "missing"), [
    (ProviderState.EXPIRED, None, None,
     ("failed", "expired: the provider did not finish this request in its window")),
    (ProviderState.FAILED, "bad jsonl", None,
     ("failed", "batch_failed: the provider rejected the batch: bad jsonl")),
    (ProviderState.CANCELLED, None, None, ("cancelled", "cancelled: provider_cancelled")),
    (ProviderState.CANCELLED, None, "time_limit", ("cancelled", "cancelled: time_limit")),
])
def test_a_member_without_a_result_line_ends_as_its_batch_did(state, detail, reason, missing):
    poll = BatchPoll(state, state.value, detail)
    rows = _ends(poll, _results(), cancel_reason=reason)
    assert rows[2] == ("c", *missing)
    assert rows[0] == ("a", "completed", None)


def test_a_canceled_line_ends_cancelled_with_the_reason():
    results = _results().with_columns(outcome=pl.Series(["canceled", "errored"]),
                                      text=pl.Series([None, None], dtype=pl.String))
    ended = BatchPoll(ProviderState.CANCELLED, "cancelled", None)
    assert _ends(ended, results, members=("a",)) == [
        ("a", "cancelled", "cancelled: provider_cancelled")]
    assert _ends(ended, results, members=("a",), cancel_reason="cost_limit") == [
        ("a", "cancelled", "cancelled: cost_limit")]


def test_truncation_names_thinking_only_when_it_took_half_the_limit_or_more():
    ended = BatchPoll(ProviderState.ENDED, "ended", None)
    tail = " of max_tokens=100 tokens before the answer was complete; " + THINKING_ADVICE
    plain = "truncated: the answer hit max_tokens=100 before it was complete; " + ADVICE
    for used, error in ((50, "truncated: thinking used 50" + tail), (49, plain), (0, plain)):
        rows = _ends(ended, _results(reasoning_tokens=[None, used]), members=("b",))
        assert rows == [("b", "failed", error)]
    # Unknown thinking (null) counts as none, even against a tiny limit.
    tiny = RequestSpec(schema=AnswerSchema(None), params={"max_tokens": 2})
    rows = _ends(ended, _results(reasoning_tokens=[None, None]), spec=tiny, members=("b",))
    assert rows == [("b", "failed", plain.replace("=100", "=2"))]
    # A line that does not say whether it was cut off was not.
    unknown = _results().with_columns(truncated=pl.Series([None, None], dtype=pl.Boolean))
    assert _ends(ended, unknown, members=("b",)) == [("b", "failed", "cut off")]


def test_a_truncated_answer_that_validates_still_fails_with_its_text_kept():
    # Without a schema any text validates, "" included (an OpenAI reasoning model that
    # spent the limit on reasoning): the provider's truncation alone fails the row.
    ended = BatchPoll(ProviderState.ENDED, "ended", None)
    spec = RequestSpec(schema=AnswerSchema(None), params={"max_tokens": 100})
    results = pl.DataFrame({
        "job_id": ["a", "b", "c"], "outcome": ["succeeded"] * 3,
        "text": ["whole", "cut sho", ""], "truncated": [False, True, True],
        "error": pl.Series([None] * 3, dtype=pl.String), "input_tokens": [1, 1, 1],
        "output_tokens": [5, 100, 100], "cached_tokens": [0, 0, 0],
        "cache_write_tokens": pl.Series([None] * 3, dtype=pl.Int64),
        "reasoning_tokens": [0, 0, 100],
    })
    out = outcomes_to_events(pl.DataFrame({"job_id": ["a", "b", "c"]}), results, ended, spec)
    assert out.select("status", "answer", "raw", "output_tokens").rows() == [
        ("completed", "whole", "whole", 5), ("failed", None, "cut sho", 100),
        ("failed", None, "", 100)]
    assert out["error"].to_list() == [
        None,
        "truncated: the answer hit max_tokens=100 before it was complete; " + ADVICE,
        "truncated: thinking used 100 of max_tokens=100 tokens before the answer was "
        "complete; " + THINKING_ADVICE,
    ]


def test_answers_that_do_not_validate_fail_with_the_reason_or_the_truncation():
    ended = BatchPoll(ProviderState.ENDED, "ended", None)
    spec = RequestSpec(schema=AnswerSchema(_Score), params={"max_tokens": 100})
    results = pl.DataFrame({
        "job_id": ["a", "b"], "outcome": ["succeeded", "succeeded"],
        "text": ['{"score": "high"}', '{"score": 1'], "truncated": [False, True],
        "error": [None, None], "input_tokens": [1, 1], "output_tokens": [1, 100],
        "cached_tokens": [0, 0], "cache_write_tokens": pl.Series([None, None], dtype=pl.Int64),
    })
    out = outcomes_to_events(pl.DataFrame({"job_id": ["a", "b"]}), results, ended, spec)
    assert out["status"].to_list() == ["failed", "failed"]
    assert out["error"][0] == ("schema_validation: score: Input should be a valid integer, "
                               "unable to parse string as an integer")
    assert out["error"][1].startswith("truncated: the answer hit max_tokens=100 ")
    # No answer validated: the answer column is still typed text, all null.
    assert out.schema["answer"] == pl.String and out["answer"].to_list() == [None, None]


def test_collecting_reports_the_download_and_records_the_batch_and_its_rows_by_value(tmp_path):
    provider, ctx, state, collector, _ = setup(tmp_path)
    seen = []
    ctx.progress = lambda snap: seen.append((snap.phase, snap.activity))
    batch = state.in_flight[0]
    batch.failures, batch.unreachable_since = 2, 990.0  # it had been unreachable
    provider.end("fb_1", detail="3 of 3 done")
    collector.poll_due()
    assert ("running", "downloading results of fb_1") in seen
    assert state.activity == ""
    assert (batch.failures, batch.unreachable_since) == (0, None)
    events = job_events(ctx)
    assert events.select("batch_key", "provider", "model", "provider_batch_id").unique().rows() \
        == [("k_fb_1", "openai", "fake-model", "fb_1")]
    batches = ctx.store.batch_state()
    assert batches.select("batch_key", "provider", "model", "status", "provider_status",
                          "n_jobs", "detail").rows() \
        == [("k_fb_1", "openai", "fake-model", "collected", "ended", 3, "3 of 3 done")]
    assert state.batch_status == {"k_fb_1": "collected"}  # one word for every provider


def test_a_batch_that_answers_a_poll_again_is_reachable_again(tmp_path):
    provider, _, state, collector, _ = setup(tmp_path)
    batch = state.in_flight[0]
    batch.failures, batch.unreachable_since = 3, 990.0
    state.unavailable[batch.batch_key] = "provider_unavailable: x"
    collector.poll_due()  # still running, but it answered
    assert (batch.failures, batch.unreachable_since) == (0, None)
    assert state.unavailable == {} and state.in_flight == [batch]


def test_terminal_rows_are_priced_and_add_cost_and_cache_savings_by_value(tmp_path):
    ctx, state = make_run(tmp_path, FakeProvider(FakeClock()))
    price = Price(input=1.0, output=2.0, cached_input=0.25, cache_write=1.25)
    ctx.prices = SimpleNamespace(get=lambda provider, model, on=None: price)  # type: ignore[assignment]
    ledger = Ledger(ctx, state)
    events = pl.DataFrame({
        "job_id": ["a", "b"], "status": ["completed", "failed"], "error": [None, "x"],
        "input_tokens": [1_000_000, 1_000_000], "output_tokens": [0, 1_000_000],
        "cached_tokens": [400_000, None], "cache_write_tokens": [None, 200_000],
    })
    added = ledger.terminal(events, batch_key="k", provider="openai", model="m",
                            provider_batch_id="fb")
    # a: 600k at 1.0 + 400k cached at 0.25 = 0.70 (1.00 uncached: saved 0.30);
    # b: 800k at 1.0 + 200k written at 1.25 + 1M out at 2.0 = 3.05 (3.00: saved -0.05).
    assert added == pytest.approx(3.75)
    stored = job_events(ctx).select("job_id", "cost_usd", "cache_saved_usd").rows()
    assert [(j, round(c, 9), round(s, 9)) for j, c, s in stored] == [
        ("a", 0.7, 0.3), ("b", 3.05, -0.05)]
    assert (state.cost, state.cache_saved) == (pytest.approx(3.75), pytest.approx(0.25))
    assert (state.done["completed"], state.done["failed"]) == (1, 1)
    # A second call adds to the totals; rows of an unknown price add nothing.
    again = events.head(1).with_columns(job_id=pl.lit("c"))
    ledger.terminal(again, batch_key="k", provider="openai", model="m", provider_batch_id="fb")
    assert (state.cost, state.cache_saved) == (pytest.approx(4.45), pytest.approx(0.55))
    unpriced = ledger.terminal(again.with_columns(job_id=pl.lit("d")), batch_key="k",
                               provider=None, model=None, provider_batch_id=None)
    unsent = ledger.terminal(pl.DataFrame({"job_id": ["e"], "status": ["cancelled"]}),
                             batch_key=None, provider=None, model=None, provider_batch_id=None)
    assert (unpriced, unsent) == (0.0, 0.0)
    assert (state.cost, state.cache_saved) == (pytest.approx(4.45), pytest.approx(0.55))
    assert state.done["cancelled"] == 1


def test_a_collected_truncation_names_the_limit_the_batch_s_model_was_sent_with(tmp_path):
    """The call set no ``max_tokens``: the message names the model's own default, the one
    the requests went out with, found from the batch's provider and model."""
    from batchata_df.models import effective_params

    provider, ctx, _, collector, _ = setup(tmp_path)
    ctx.spec = RequestSpec(schema=AnswerSchema(None), params={})
    sent_with = effective_params("openai", "fake-model", {})["max_tokens"]
    assert isinstance(sent_with, int)
    provider.results = lambda batch_id, spec: _results().with_columns(  # type: ignore[method-assign]
        job_id=pl.Series(["j000", "j001"])
    )
    provider.end("fb_1")
    collector.poll_due()
    assert job_events(ctx).select("job_id", "status", "error").rows() == [
        ("j000", "completed", None),
        ("j001", "failed", f"truncated: the answer hit max_tokens={sent_with} before it was "
                           "complete; " + ADVICE),
        ("j002", "failed", "missing_result: the provider returned no result for this request"),
    ]


def test_citations_are_kept_for_completed_rows_only():
    ended = BatchPoll(ProviderState.ENDED, "ended", None)
    cited = '[{"field": "x", "text": "quoted", "start": 0, "end": 6}]'
    results = _results(citations=[cited, cited])
    out = outcomes_to_events(pl.DataFrame({"job_id": ["a", "b"]}), results, ended, SPEC)
    assert out.select("job_id", "status", "citations").rows() == [
        ("a", "completed", cited),
        ("b", "failed", None),  # cut off: what it cited is not an answer
    ]


def test_a_refusal_or_filter_that_also_hit_the_limit_stays_a_refusal():
    # OpenAI: a refusal (or the content filter) whose finish_reason is "length". Advising
    # a higher max_tokens would only pay for another refusal.
    ended = BatchPoll(ProviderState.ENDED, "ended", None)
    spec = RequestSpec(schema=AnswerSchema(None), params={"max_tokens": 100})
    results = pl.DataFrame({
        "job_id": ["a", "b"], "outcome": ["errored", "errored"], "text": [None, None],
        "truncated": [True, True],
        "error": ["refusal: I can't help with that", "content_filter: OpenAI's filter"],
        "input_tokens": [1, 1], "output_tokens": [100, 100], "cached_tokens": [0, 0],
        "cache_write_tokens": pl.Series([None] * 2, dtype=pl.Int64),
    })
    out = outcomes_to_events(pl.DataFrame({"job_id": ["a", "b"]}), results, ended, spec)
    assert out["status"].to_list() == ["failed", "failed"]
    assert out["error"].to_list() == ["refusal: I can't help with that",
                                      "content_filter: OpenAI's filter"]
