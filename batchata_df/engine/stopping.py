"""Stopping: the time limit and Ctrl+C (a stop event), and what a stop does.

On a stop nothing more is submitted, batches in flight are asked to cancel (their finished
rows are still collected), and every job not in a provider batch ends ``cancelled`` with
the reason. Cancelled batches get ``cancel_grace_s`` to end; those that do not (or cannot
be observed) are left in flight, their rows ``pending`` for a later call to collect.
"""

from __future__ import annotations

import contextlib
import threading

from batchata_df.engine.ledger import Ledger
from batchata_df.engine.planning import Planner, Requeue
from batchata_df.engine.run import BatchPhase, RunContext, RunState
from batchata_df.errors import ProviderError

__all__ = ["Stopper"]

STUCK_POLLS = 5
"""After a stop, a batch whose polls failed this many times in a row is not waited for."""


class Stopper:
    """Knows when to stop, carries the stop out, and times the waits in between."""

    def __init__(
        self, ctx: RunContext, state: RunState, ledger: Ledger, stop_event: threading.Event
    ) -> None:
        self.ctx, self.state, self.ledger, self.stop_event = ctx, state, ledger, stop_event
        self.stopped_at: float | None = None

    def reason(self) -> str | None:
        """Why the run must stop now (``"interrupted"``, ``"time_limit"``), or ``None``."""
        if self.stop_event.is_set():
            return "interrupted"
        limit = self.ctx.options.time_limit_s
        now = self.ctx.clock.monotonic()
        if limit is not None and now - self.state.started >= limit:
            return "time_limit"
        if self.ctx.stop_when is not None:
            return self.ctx.stop_when(self.state, now)
        return None

    def stop(self, reason: str, planner: Planner, requeue: Requeue) -> None:
        """Cancel what is in flight and end every unsent job ``cancelled: <reason>``.

        Called on every round after the stop: a batch is asked to cancel once.
        """
        self.state.stop_reason = reason
        for batch in self.state.in_flight:
            if batch.cancel_reason is None:
                batch.cancel_reason = reason
                # It may have ended meanwhile; the next poll tells.
                with contextlib.suppress(ProviderError):
                    self.ctx.providers[batch.provider].cancel(batch.provider_batch_id)
                self.ledger.batch(batch, status=BatchPhase.CANCEL_REQUESTED.value, detail=reason)
                batch.next_poll = 0.0
        self.cancel_unsent(reason, planner, requeue)

    def cancel_unsent(
        self, reason: str, planner: Planner, requeue: Requeue | None = None
    ) -> None:
        """End the planner's jobs, then the requeued ones, ``cancelled: <reason>``."""
        groups = planner.drain_groups() + (requeue.drain_groups() if requeue else [])
        for provider, model, job_ids in groups:
            self.ledger.cancel_unsent(job_ids, reason, provider=provider, model=model)

    def past_grace(self) -> bool:
        """After a stop, whether waiting for the cancelled batches has gone on long enough."""
        now = self.ctx.clock.monotonic()
        if self.stopped_at is None:
            self.stopped_at = now
        in_flight = self.state.in_flight
        stuck = bool(in_flight) and all(b.failures >= STUCK_POLLS for b in in_flight)
        return now - self.stopped_at >= self.ctx.options.cancel_grace_s or stuck

    def sleep(self, seconds: float) -> None:
        """Sleep until the next poll, waking early at the deadline or on a stop request."""
        clock = self.ctx.clock
        if self.stop_event.is_set():
            clock.sleep(seconds)  # already stopping: the event would not block any more
            return
        limit = self.ctx.options.time_limit_s
        if limit is not None:
            left = self.state.started + limit - clock.monotonic()
            if left > 0:
                seconds = min(seconds, left + 0.01)
        clock.wait(self.stop_event, seconds)
