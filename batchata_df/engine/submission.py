"""Submission: create provider batches without ever paying twice.

For each admitted batch: an ``intent`` batch event and ``assigned`` job events are written
*before* the provider is called, the provider's batch id right after. If the create call
fails, the provider is asked whether the batch exists anyway (a lost answer); if not, the
intent is ``abandoned`` and the jobs either go again later as a new batch (a transient
failure, with backoff, for up to ``provider_patience_s``) or end ``failed`` with the
provider's reason (a permanent refusal of the whole batch). A lookup that cannot be
answered is tried again with backoff for up to ``provider_patience_s`` (``wait=True``);
then nothing more is submitted in this call (:attr:`Submitter.blocked`) and the rows of
the open intent stay pending with ``provider_unavailable: <last error>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import polars as pl

from batchata_df.engine.admission import Admission
from batchata_df.engine.ledger import Ledger
from batchata_df.engine.planning import PlannedBatch, Planner
from batchata_df.engine.recovery import FOUND_AFTER_FAILED_CREATE
from batchata_df.engine.run import (
    BatchPhase,
    InFlightBatch,
    PackedIds,
    RunContext,
    RunState,
    failpoint,
    report,
)
from batchata_df.errors import ProviderError
from batchata_df.models import today
from batchata_df.providers.base import BatchTag

__all__ = ["SubmitOutcome", "Submitter"]

SubmitOutcome = InFlightBatch | Literal["retry", "ended", "blocked"]
"""What became of a batch sent to :meth:`Submitter.submit`: in flight, to be sent again
(``"retry"``), its jobs ended failed (``"ended"``), or held by an open intent
(``"blocked"``)."""


class Submitter:
    """Sends admitted batches to their providers, recording each step first."""

    def __init__(
        self,
        ctx: RunContext,
        state: RunState,
        admission: Admission,
        ledger: Ledger,
        pause: Callable[[float], bool] | None = None,
    ) -> None:
        self.ctx, self.state, self.admission, self.ledger = ctx, state, admission, ledger
        self.pause = pause or self._sleep
        """Waits between lookups; returns ``True`` when the run must stop instead."""
        self.blocked: str | None = None
        """Why nothing more may be submitted in this call
        (``"provider_unavailable: <last error>"``)."""
        self.retry_at = 0.0
        """Clock reading before which no create is tried again (after a failed one)."""
        self._first_failure: float | None = None
        self.last_error: ProviderError | None = None
        """The last transient create failure (cleared by a successful create)."""
        self._backoff = ctx.backoff()
        self._n_submitted = 0

    def _sleep(self, seconds: float) -> bool:
        self.ctx.clock.sleep(seconds)
        return False

    def retrying(self) -> bool:
        """Whether a failed create is waiting for its next attempt."""
        return self.ctx.clock.monotonic() < self.retry_at

    def fill(self, planner: Planner) -> None:
        """Submit while a slot is free and the cap admits the planner's next jobs."""
        in_flight = self.state.in_flight
        while (
            plan := planner.current()
        ) is not None and len(in_flight) < self.ctx.options.max_parallel_batches:
            if self.retrying() or self.blocked:
                break
            admitted = self.admission.admit(plan)
            if admitted is None:
                break
            outcome = self.submit(admitted)
            if outcome == "retry":
                # Nothing reached the provider: the same jobs go again later, as a new batch.
                planner.resend()
                break
            if isinstance(outcome, InFlightBatch):
                in_flight.append(outcome)
            # "ended" and "blocked": the admitted jobs are settled or held by an open intent.
            planner.took(len(admitted))

    def submit(self, plan: PlannedBatch) -> SubmitOutcome:
        """Record the intent, create the provider batch, record its id."""
        ctx, store = self.ctx, self.ctx.store
        provider = ctx.providers[plan.provider]
        tag = BatchTag(store.manifest.run_id, plan.batch_key, ctx.clock.time(), n_jobs=len(plan))
        sent_on = today()  # the day the reservation priced it at (PriceTable.worst)
        store.append_batch(
            batch_key=plan.batch_key,
            provider=plan.provider,
            model=plan.model,
            status=BatchPhase.INTENT.value,
            n_jobs=len(plan),
            n_bytes=plan.n_bytes,
            sent_on=sent_on,
        )
        store.append_jobs(
            pl.DataFrame({"job_id": plan.job_ids}).with_columns(
                pl.lit(plan.batch_key).alias("batch_key"),
                pl.lit(plan.provider).alias("provider"),
                pl.lit(plan.model).alias("model"),
                pl.lit("assigned").alias("status"),
                plan.worst.alias("est_cost_usd") if plan.has_estimates else pl.lit(None),
            )
        )
        reserved = self.admission.reserve(plan)
        self._n_submitted += 1
        self.state.activity = (
            f"uploading batch {self._n_submitted} to {plan.provider} "
            f"({len(plan):,} requests, {plan.n_bytes / 1e6:,.1f} MB)"
        )
        report(ctx, self.state, "running")
        # The tag carries what a lookup needs to tell our batch from this run's others (the
        # provider may look it up itself when a create fails).
        tag = self.lookup_tag(tag, plan)
        found: str | None = None
        try:
            batch_id = provider.submit(plan.lines, model=plan.model, tag=tag)
        except ProviderError as e:
            self.state.release(reserved)
            if not e.permanent:  # a 4xx created nothing; otherwise the answer may be lost
                try:
                    found = self._look_up(plan, tag)
                except ProviderError as lost:  # OrphanedBatchError included
                    # We cannot tell whether the batch exists: submit nothing more in this
                    # call. Its jobs stay with the open intent, which the next call
                    # resolves before sending anything.
                    reason = f"provider_unavailable: {lost}"
                    self.blocked = reason
                    self.state.unavailable[plan.batch_key] = reason
                    return "blocked"
            if found is None:
                return self._failed(plan, e)
            self.state.reserved += reserved
            batch_id = found
        # A batch found by a lookup (ours, or the provider's inside submit) rather than
        # answered by its create may be another process's where the lookup goes by size
        # and time (Anthropic): adopted, so that one holding none of our requests is
        # abandoned and its rows sent again, in this call or a later one.
        # A lookup by our own tag (OpenAI, Gemini) finds only ours: not adopted.
        adopted = (
            found is not None and not provider.find_is_exact
        ) or provider.found_not_created(batch_id)
        self._first_failure = None
        self.last_error = None
        self._backoff = ctx.backoff()
        self.state.known_ids.add(batch_id)
        failpoint("after_submit")
        store.append_batch(
            batch_key=plan.batch_key,
            provider=plan.provider,
            model=plan.model,
            provider_batch_id=batch_id,
            status=BatchPhase.SUBMITTED.value,
            n_jobs=len(plan),
            n_bytes=plan.n_bytes,
            detail=FOUND_AFTER_FAILED_CREATE if found is not None or adopted else None,
            sent_on=sent_on,
        )
        self.state.batch_status[plan.batch_key] = "submitted"
        self.state.activity = ""  # uploaded: the "now" line must not go stale
        if self.state.first_submit_at is None:
            self.state.first_submit_at = ctx.clock.monotonic()
        return InFlightBatch(
            batch_key=plan.batch_key,
            provider=plan.provider,
            model=plan.model,
            provider_batch_id=batch_id,
            ids=PackedIds.of(plan.job_ids),
            backoff=ctx.backoff(),
            reserved=reserved,
            est_input=plan.est_input,
            adopted=adopted,
            sent_on=sent_on,
        )

    def _look_up(self, plan: PlannedBatch, tag: BatchTag) -> str | None:
        """Ask whether a failed create made the batch anyway, for up to the patience.

        Raises the last :class:`ProviderError` when the provider stayed unreachable (at once
        with ``wait=False``, or when the run is stopping).
        """
        ctx = self.ctx
        since = ctx.clock.monotonic()
        backoff = ctx.backoff()
        while True:
            try:
                return ctx.providers[plan.provider].find(tag)
            except ProviderError as e:
                waited = ctx.clock.monotonic() - since
                if not ctx.options.wait or waited >= ctx.options.provider_patience_s:
                    raise
                self.state.activity = (
                    f"{plan.provider} unreachable for {waited:.0f}s (provider_unavailable: "
                    f"{e}); checking whether batch {plan.batch_key} was created"
                )
                report(ctx, self.state, "running")
                if self.pause(backoff.next()):
                    raise

    def lookup_tag(self, tag: BatchTag, plan: PlannedBatch) -> BatchTag:
        """``tag`` with what a lookup needs to tell our batch from others of the same size.

        The members go as the column the plan has: a provider makes a set of them only
        when it looks a batch up (:meth:`BatchTag.member_ids`).
        """
        return dataclasses.replace(
            tag,
            members=plan.job_ids,
            known_batch_ids=frozenset(self.state.known_ids),
        )

    def _failed(self, plan: PlannedBatch, error: ProviderError) -> Literal["retry", "ended"]:
        """The create call failed and no batch exists: abandon the intent, decide what next."""
        self.ctx.store.append_batch(
            batch_key=plan.batch_key,
            provider=plan.provider,
            model=plan.model,
            status=BatchPhase.ABANDONED.value,
            detail=f"submit failed: {error}",
        )
        if error.permanent:
            self.ledger.fail_unrun(
                plan.job_ids,
                f"submit_failed: {error}",
                batch_key=plan.batch_key,
                provider=plan.provider,
                model=plan.model,
                provider_batch_id=None,
            )
            return "ended"
        self.last_error = error
        now = self.ctx.clock.monotonic()
        if self._first_failure is None:
            self._first_failure = now
        if now - self._first_failure > self.ctx.options.provider_patience_s:
            # The provider has refused creates for too long: stop trying in this call; the
            # unsent rows end cancelled (provider_unavailable) and a later call sends them.
            self.blocked = f"provider_unavailable: {error}"
            return "retry"
        self.state.activity = f"{plan.provider} refused a create (provider_unavailable: {error})"
        self.retry_at = now + self._backoff.next()
        return "retry"
