"""Submission: intent and assigned events before the create call, the id after, and what
happens when a create fails (lookup, retry with backoff, abandon, patience, blocked)."""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

import numpy as np
import polars as pl
import pytest
from engine_fakes import (
    SPEC,
    FakeProvider,
    batch_events,
    job_events,
    make_jobs,
    make_run,
)

from batchata_df.engine.admission import Admission
from batchata_df.engine.clock import FakeClock
from batchata_df.engine.ledger import Ledger
from batchata_df.engine.planning import Planner
from batchata_df.engine.recovery import FOUND_AFTER_FAILED_CREATE
from batchata_df.engine.run import InFlightBatch, PackedIds, RunOptions
from batchata_df.engine.submission import Submitter
from batchata_df.errors import OrphanedBatchError, ProviderError
from batchata_df.state import BATCH_EVENTS


def setup(tmp_path, *, cap=None, options=None, jobs=None, per_batch=None):
    provider = FakeProvider(FakeClock())
    ctx, state = make_run(tmp_path, provider, options or RunOptions(max_cost_usd=cap))
    admission = Admission(state, cap)
    submitter = Submitter(ctx, state, admission, Ledger(ctx, state))
    planner = Planner(ctx.providers, SPEC, per_batch)
    planner.add(jobs if jobs is not None else make_jobs(3, worst=0.1))
    return provider, ctx, state, submitter, planner


def test_intent_and_assigned_are_recorded_before_the_create_call_and_the_id_after(tmp_path):
    provider, ctx, state, submitter, planner = setup(tmp_path)
    seen_at_create = []
    provider.on_submit.append(
        lambda tag: seen_at_create.append((batch_events(ctx), job_events(ctx)))
    )
    plan = planner.current()
    outcome = submitter.submit(plan)
    [(batches, jobs)] = seen_at_create
    assert batches == [("intent", None, None)]
    assert jobs.select("job_id", "status", "batch_key", "est_cost_usd").rows() == [
        (j, "assigned", plan.batch_key, 0.1) for j in ["j000", "j001", "j002"]
    ]
    assert batch_events(ctx) == [("intent", None, None), ("submitted", "fb_1", None)]
    assert isinstance(outcome, InFlightBatch)
    assert outcome.provider_batch_id == "fb_1"
    assert outcome.job_ids.to_list() == ["j000", "j001", "j002"]
    assert outcome.reserved == pytest.approx(0.3) == state.reserved
    assert state.known_ids == {"fb_1"}
    assert state.batch_status == {plan.batch_key: "submitted"}


def test_the_tag_lets_a_lookup_tell_this_batch_from_the_run_s_others(tmp_path):
    provider, ctx, state, submitter, planner = setup(tmp_path)
    state.known_ids.add("fb_old")
    tags = []
    provider.on_submit.append(tags.append)
    provider.clock.advance(50.0)
    plan = planner.current()
    submitter.submit(plan)
    [tag] = tags
    assert tag.run_id == ctx.store.manifest.run_id and tag.batch_key == plan.batch_key
    assert tag.created_after == provider.clock.time()
    assert tag.n_jobs == 3 and tag.member_ids() == frozenset({"j000", "j001", "j002"})
    # The members travel as the plan's column: no set is made for a batch that is just sent.
    assert tag.job_ids == frozenset() and tag.members is plan.job_ids
    assert tag.known_batch_ids == frozenset({"fb_old"})


def test_a_lost_create_answer_is_found_by_lookup_and_never_sent_twice(tmp_path):
    provider, ctx, state, submitter, planner = setup(tmp_path)
    provider.submit_errors.append(ProviderError("connection reset", status_code=None))
    provider.created_despite_error = True
    outcome = submitter.submit(planner.current())
    assert isinstance(outcome, InFlightBatch) and outcome.provider_batch_id == "fb_1"
    assert provider.methods() == ["submit", "find"]
    assert len(provider.batches) == 1
    # Found, not answered by its create: adopted (a lookup may find another process's
    # batch; the collector abandons one that holds none of our requests), in this call
    # and, through the event's detail, in later ones.
    assert batch_events(ctx) == [
        ("intent", None, None), ("submitted", "fb_1", FOUND_AFTER_FAILED_CREATE),
    ]
    assert outcome.adopted
    assert state.reserved == pytest.approx(0.3)


def test_a_batch_answered_by_its_create_is_not_adopted(tmp_path):
    provider, ctx, state, submitter, planner = setup(tmp_path)
    outcome = submitter.submit(planner.current())
    assert isinstance(outcome, InFlightBatch) and not outcome.adopted
    assert batch_events(ctx) == [("intent", None, None), ("submitted", "fb_1", None)]


def test_a_transient_failure_abandons_the_intent_and_retries_after_a_backoff(tmp_path):
    provider, ctx, state, submitter, planner = setup(tmp_path)
    provider.submit_errors.append(ProviderError("503 overloaded", status_code=503))
    first = planner.current()
    submitter.fill(planner)
    assert provider.methods() == ["submit", "find"]
    assert batch_events(ctx) == [
        ("intent", None, None),
        ("abandoned", None, "submit failed: 503 overloaded"),
    ]
    assert state.in_flight == [] and state.reserved == 0.0
    assert submitter.retry_at == provider.clock.monotonic() + 1.0
    again = planner.current()
    assert again.job_ids.to_list() == first.job_ids.to_list()
    assert again.batch_key != first.batch_key  # a new batch, never the abandoned key
    submitter.fill(planner)  # too early: nothing is tried
    assert provider.methods() == ["submit", "find"]
    provider.clock.advance(1.0)
    submitter.fill(planner)
    assert [b.provider_batch_id for b in state.in_flight] == ["fb_1"]
    assert provider.batches["fb_1"].tag.batch_key == again.batch_key
    assert job_events(ctx).filter(pl.col("status") != "assigned").height == 0


def test_a_permanent_refusal_fails_the_batch_rows_without_a_lookup(tmp_path):
    provider, ctx, state, submitter, planner = setup(tmp_path)
    provider.submit_errors.append(ProviderError("400 invalid model", status_code=400))
    assert submitter.submit(planner.current()) == "ended"
    assert provider.methods() == ["submit"]
    ended = job_events(ctx).filter(pl.col("status") != "assigned")
    assert ended.select("job_id", "status", "error", "cost_usd").rows() == [
        (j, "failed", "submit_failed: 400 invalid model", 0.0)
        for j in ["j000", "j001", "j002"]
    ]
    assert state.done["failed"] == 3 and state.reserved == 0.0


def test_an_unanswerable_lookup_blocks_submitting_and_keeps_the_intent_open(tmp_path):
    # The lookup is asked again with backoff (t = 0, 4, 8, 12) for the provider patience.
    options = RunOptions(provider_patience_s=10.0, poll_initial_s=4.0, poll_factor=1.0)
    provider, ctx, state, submitter, planner = setup(tmp_path, per_batch=1, options=options)
    provider.submit_errors.append(ProviderError("timeout", status_code=None))
    provider.find_error = OrphanedBatchError("two candidates")
    submitter.fill(planner)
    assert submitter.blocked == "provider_unavailable: two candidates"
    assert batch_events(ctx) == [("intent", None, None)]  # resolved by the next call
    assert provider.methods() == ["submit"] + ["find"] * 4
    assert state.unavailable == {planner_key(ctx): "provider_unavailable: two candidates"}
    assert planner.current().job_ids.to_list() == ["j001"]  # j000 stays with its intent
    submitter.fill(planner)
    assert provider.methods() == ["submit"] + ["find"] * 4


def test_without_waiting_an_unanswerable_lookup_blocks_at_once(tmp_path):
    provider, ctx, state, submitter, planner = setup(
        tmp_path, per_batch=1, options=RunOptions(wait=False)
    )
    provider.submit_errors.append(ProviderError("timeout", status_code=None))
    provider.find_error = OrphanedBatchError("two candidates")
    submitter.fill(planner)
    assert submitter.blocked == "provider_unavailable: two candidates"
    assert provider.methods() == ["submit", "find"]


def planner_key(ctx) -> str:
    """The batch key of the only intent recorded."""
    return ctx.store.batch_state().get_column("batch_key")[0]


def test_creates_failing_past_the_patience_stop_submitting(tmp_path):
    options = RunOptions(provider_patience_s=10.0, poll_initial_s=4.0, poll_factor=1.0)
    provider, ctx, state, submitter, planner = setup(tmp_path, options=options)
    provider.submit_errors.extend(ProviderError("503", status_code=503) for _ in range(4))
    for _ in range(3):  # t = 0, 4, 8: within the patience
        submitter.fill(planner)
        assert submitter.blocked is None
        provider.clock.advance(4.0)
    submitter.fill(planner)  # t = 12: more than 10 s of failures
    assert submitter.blocked == "provider_unavailable: 503"
    assert [s for s, _, _ in batch_events(ctx)].count("abandoned") == 4


def test_a_success_resets_the_create_backoff(tmp_path):
    provider, ctx, state, submitter, planner = setup(tmp_path, per_batch=1)
    provider.submit_errors.extend([ProviderError("503", status_code=503)] * 2)
    submitter.fill(planner)
    provider.clock.advance(1.0)
    submitter.fill(planner)
    assert submitter.retry_at == provider.clock.monotonic() + 1.6  # growing
    provider.clock.advance(1.6)
    submitter.fill(planner)  # succeeds, then fills the other slots
    assert len(state.in_flight) == 3
    provider.submit_errors.append(ProviderError("503", status_code=503))
    planner.add(make_jobs(1, start=7))
    submitter.fill(planner)
    assert submitter.retry_at == provider.clock.monotonic() + 1.0  # back to the start


def test_fill_stops_at_the_parallel_limit_and_at_the_cap(tmp_path):
    options = RunOptions(max_parallel_batches=2, max_cost_usd=0.25)
    provider, ctx, state, submitter, planner = setup(
        tmp_path, options=options, cap=0.25, jobs=make_jobs(6, worst=0.05), per_batch=2
    )
    submitter.fill(planner)
    assert [b.job_ids.to_list() for b in state.in_flight] == [["j000", "j001"], ["j002", "j003"]]
    assert state.reserved == pytest.approx(0.2)
    state.in_flight.pop()  # a slot frees; only one more job fits under the cap
    submitter.fill(planner)
    assert state.in_flight[-1].job_ids.to_list() == ["j004"]
    assert state.reserved == pytest.approx(0.25)
    assert planner.current().job_ids.to_list() == ["j005"]
    submitter.fill(planner)
    assert len(provider.batches) == 3


def test_a_success_restarts_the_patience_for_later_failures(tmp_path):
    options = RunOptions(provider_patience_s=10.0)
    provider, ctx, state, submitter, planner = setup(tmp_path, options=options, per_batch=1)
    provider.submit_errors.append(ProviderError("503", status_code=503))
    submitter.fill(planner)  # fails at t = 0
    provider.clock.advance(1.0)
    provider.submit_errors.extend([None, ProviderError("503", status_code=503)])
    provider.clock.advance(60.0)
    submitter.fill(planner)  # j000 goes, then j001 fails 61 s after the first failure
    assert [b.job_ids.to_list() for b in state.in_flight] == [["j000"]]
    assert submitter.blocked is None


def test_an_abandoned_intent_names_its_batch_provider_and_model(tmp_path):
    provider, ctx, state, submitter, planner = setup(tmp_path)
    error = ProviderError("503 overloaded", status_code=503)
    provider.submit_errors.append(error)
    plan = planner.current()
    assert submitter.submit(plan) == "retry"
    events = ctx.store._scan("batches", ctx.store.batch_state().schema).sort("seq")
    assert events.select("batch_key", "provider", "model", "status", "detail").rows() == [
        (plan.batch_key, "openai", "fake-model", "intent", None),
        (plan.batch_key, "openai", "fake-model", "abandoned", "submit failed: 503 overloaded"),
    ]
    assert submitter.last_error is error  # what the rows are told if creates never work


def test_creates_failing_for_exactly_the_patience_are_still_retried(tmp_path):
    options = RunOptions(provider_patience_s=8.0, poll_initial_s=4.0, poll_factor=1.0)
    provider, ctx, state, submitter, planner = setup(tmp_path, options=options)
    provider.submit_errors.extend(ProviderError("503", status_code=503) for _ in range(4))
    for _ in range(3):  # t = 0, 4, 8: 8 s of failures is within a patience of 8 s
        submitter.fill(planner)
        assert submitter.blocked is None
        provider.clock.advance(4.0)
    submitter.fill(planner)  # t = 12
    assert submitter.blocked == "provider_unavailable: 503"


def test_a_lookup_unanswered_for_exactly_the_patience_gives_up_and_reports_progress(tmp_path):
    options = RunOptions(provider_patience_s=8.0, poll_initial_s=4.0, poll_factor=1.0)
    provider, ctx, state, submitter, planner = setup(tmp_path, per_batch=1, options=options)
    seen = []
    ctx.progress = lambda snap: seen.append((snap.phase, snap.activity))
    provider.submit_errors.append(ProviderError("timeout", status_code=None))
    provider.find_error = OrphanedBatchError("two candidates")
    submitter.fill(planner)
    # Looked up at t = 0, 4 and 8; at 8 s unanswered the patience is used up.
    assert provider.methods() == ["submit"] + ["find"] * 3
    assert submitter.blocked == "provider_unavailable: two candidates"
    key = planner_key(ctx)
    assert seen[1:] == [
        ("running", f"openai unreachable for {t}s (provider_unavailable: two candidates); "
                    f"checking whether batch {key} was created")
        for t in (0, 4)
    ]
    assert seen[0][0] == "running" and seen[0][1].startswith("uploading batch 1 to openai")


def test_both_batch_events_carry_who_and_how_big_and_the_upload_shows_while_it_runs(tmp_path):
    provider, ctx, state, submitter, planner = setup(tmp_path)
    seen = []
    ctx.progress = lambda snap: seen.append(snap.activity)
    plan = planner.current()
    provider.clock.advance(5.0)
    submitter.submit(plan)
    events = ctx.store._scan("batches", BATCH_EVENTS).sort("seq").select(
        "status", "provider", "model", "n_jobs", "n_bytes").rows()
    assert events == [("intent", "openai", "fake-model", 3, plan.n_bytes),
                      ("submitted", "openai", "fake-model", 3, plan.n_bytes)]
    assert plan.n_bytes > 0
    mb = f"{plan.n_bytes / 1e6:,.1f}"
    assert seen == [f"uploading batch 1 to openai (3 requests, {mb} MB)"]
    assert state.activity == ""
    assert state.first_submit_at == provider.clock.monotonic()
    provider.clock.advance(5.0)
    planner.took(len(plan))
    planner.add(make_jobs(1, worst=0.1, start=3))
    submitter.submit(planner.current())  # a later batch keeps the first time
    assert state.first_submit_at == provider.clock.monotonic() - 5.0


class _Died(Exception):
    """Stands in for the process exit at a crash point."""


def test_the_after_submit_crash_point_falls_between_the_create_call_and_its_checkpoint(
    tmp_path, monkeypatch
):
    """The crash-recovery tests kill a child at ``after_submit``: that must be after the
    provider created the batch and before its id is checkpointed (an orphan to find)."""
    import batchata_df.engine.run as run

    def die(code: int) -> None:
        raise _Died(code)

    monkeypatch.setenv("BATCHATA_DF_FAILPOINT", "after_submit")
    monkeypatch.setattr(run.os, "_exit", die)
    provider, ctx, _, submitter, planner = setup(tmp_path)
    with pytest.raises(_Died, match="75"):
        submitter.submit(planner.current())
    assert provider.methods() == ["submit"] and list(provider.batches) == ["fb_1"]
    assert batch_events(ctx) == [("intent", None, None)]


def test_the_upload_size_is_shown_in_megabytes_of_a_million_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(FakeProvider, "max_bytes", 2_000_000)
    job = make_jobs(1, worst=0.1).with_columns(pl.lit("x" * 1_049_967).alias("prompt"))
    provider, ctx, _, submitter, planner = setup(tmp_path, jobs=job)
    seen = []
    ctx.progress = lambda snap: seen.append(snap.activity)
    plan = planner.current()
    assert plan.n_bytes == 1_050_000  # 1.05 MB: shown rounded to 1.1
    submitter.submit(plan)
    assert seen == ["uploading batch 1 to openai (1 requests, 1.1 MB)"]


def _bytes_held(value: Any) -> int:
    """Bytes of column data ``value`` holds: a Series' Arrow buffers (views and the text
    they point into), an array's, and those of a dataclass's fields, recursively."""
    if isinstance(value, pl.Series):
        array = value.to_arrow(compat_level=pl.CompatLevel.newest())
        return sum(b.size for b in array.buffers() if b is not None)
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(_bytes_held(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 0


@pytest.mark.parametrize("est", [None, 120])
def test_a_batch_in_flight_holds_12_bytes_an_id_and_gives_them_back_as_sent(tmp_path, est):
    # Every batch in flight holds its ids until it is collected: up to 3.2M ids at once
    # (Anthropic's queue limit). As text each held 40 bytes (a 16-byte view, 24 digits) and
    # kept its chunk's buffers alive: the 1M -> 10M peak grew with them.
    n = 1_000  # the fake provider's batch size
    ids = [secrets.token_hex(12) for _ in range(n)]  # 24 lowercase hex digits, as job_ids
    jobs = make_jobs(n, worst=0.1, est_input_tokens=est).with_columns(pl.Series("job_id", ids))
    provider, ctx, state, submitter, planner = setup(tmp_path, jobs=jobs)
    outcome = submitter.submit(planner.current())
    assert isinstance(outcome, InFlightBatch)
    assert outcome.n_jobs == n
    assert outcome.job_ids.to_list() == ids == provider.batches["fb_1"].job_ids
    assert outcome.job_ids.dtype == pl.String and outcome.job_ids.name == "job_id"
    estimates = 0 if est is None else _bytes_held(outcome.est_input)
    assert _bytes_held(outcome) - estimates == 12 * n
    assert job_events(ctx).get_column("job_id").to_list() == ids  # assigned: the same ids


def test_ids_not_made_by_job_ids_are_held_and_given_back_as_they_are(tmp_path):
    odd = ["j000", "0123456789ABCDEF00000001", "+123456789abcdef00000001", "e" * 23]
    jobs = make_jobs(len(odd), worst=0.1).with_columns(pl.Series("job_id", odd))
    provider, ctx, state, submitter, planner = setup(tmp_path, jobs=jobs)
    outcome = submitter.submit(planner.current())
    assert isinstance(outcome, InFlightBatch)
    assert outcome.job_ids.to_list() == odd == provider.batches["fb_1"].job_ids
    for one in [*odd[1:], None]:  # each alone is kept as text too: it would not come back
        assert PackedIds.of(pl.Series([one, "0" * 24])).series().to_list() == [one, "0" * 24]
