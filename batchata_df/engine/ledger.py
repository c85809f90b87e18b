"""Writing what happened: terminal job events with their cost, and batch events.

Every unit that ends jobs (collection, submission after a refusal, stopping) writes them
through :class:`Ledger`, so the cost of each event and the progress counters are computed
in one place.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from batchata_df.cost import cost_expr, with_usage_columns
from batchata_df.engine.run import BatchPhase, InFlightBatch, RunContext, RunState
from batchata_df.state import TERMINAL_JOB

__all__ = ["Ledger"]


class Ledger:
    """Appends a run's job and batch events to its state store."""

    def __init__(self, ctx: RunContext, state: RunState) -> None:
        self.ctx, self.state = ctx, state

    def terminal(
        self,
        events: pl.DataFrame,
        *,
        batch_key: str | None,
        provider: str | None,
        model: str | None,
        provider_batch_id: str | None,
        rows: bool = True,
    ) -> float:
        """Append terminal job events with their cost; return the cost they add.

        ``rows=False``: events of no row of the call (billed result lines that matched
        none, :func:`~batchata_df.engine.collection.unmatched_events`): their cost counts,
        the progress's row counts do not.
        """
        price = self.ctx.prices.get(provider, model) if provider and model else None
        frame = events.with_columns(
            pl.lit(batch_key, dtype=pl.String).alias("batch_key"),
            pl.lit(provider, dtype=pl.String).alias("provider"),
            pl.lit(model, dtype=pl.String).alias("model"),
            pl.lit(provider_batch_id, dtype=pl.String).alias("provider_batch_id"),
        )
        if "input_tokens" in frame.columns:
            frame = with_usage_columns(frame).with_columns(cost_expr(price).alias("cost_usd"))
            # What the same usage would have cost without the prompt cache (cache reads and
            # writes at the input rate): "saved by caching" (negative if writes went unread).
            uncached = with_usage_columns(
                frame.with_columns(
                    pl.col("cached_tokens").fill_null(0) * 0,
                    pl.col("cache_write_tokens").fill_null(0) * 0,
                )
            ).select(cost_expr(price)).to_series()
            frame = frame.with_columns(
                pl.when(pl.col("cost_usd").is_not_null())
                .then(uncached - pl.col("cost_usd"))
                .alias("cache_saved_usd")
            )
        self.ctx.store.append_jobs(frame)
        for status in TERMINAL_JOB if rows else ():
            self.state.done[status] += int((frame.get_column("status") == status).sum())
        if batch_key is not None and rows:
            # Its rows are counted now: the provider's count of them goes (progress stays
            # monotonic: RunState.in_flight_finished).
            self.state.in_flight_finished.pop(batch_key, None)
        added = 0.0
        if "cost_usd" in frame.columns:
            added = float(frame.get_column("cost_usd").fill_null(0.0).sum())
            self.state.cost += added
            saved = frame.get_column("cache_saved_usd").fill_null(0.0).sum()
            self.state.cache_saved += float(saved)
        return added

    def fail_unrun(
        self,
        job_ids: pl.Series,
        error: str,
        *,
        batch_key: str,
        provider: str,
        model: str,
        provider_batch_id: str | None,
    ) -> None:
        """End jobs that never ran ``failed``: no usage, so they cost 0 at a known price."""
        # A usage column, null: the cost is then known and 0 (``terminal`` prices frames that
        # carry usage; the other usage columns it adds itself, null).
        events = pl.DataFrame(
            {"job_id": job_ids, "status": "failed", "error": error, "input_tokens": None},
            schema_overrides={"input_tokens": pl.Int64},
        )
        self.terminal(
            events,
            batch_key=batch_key,
            provider=provider,
            model=model,
            provider_batch_id=provider_batch_id,
        )

    def cancel_unsent(
        self, job_ids: pl.Series, reason: str, *, provider: str, model: str
    ) -> None:
        """End jobs of ``provider``/``model`` in no provider batch ``cancelled: <reason>``.

        They were never sent: no batch key, no provider batch id, no mode (the jobs view's
        ``mode`` is how a job was last sent, null if it never was), but the provider and
        model they were for, so that a query grouping by them counts them there.
        """
        events = pl.DataFrame(
            {"job_id": job_ids, "status": "cancelled", "error": f"cancelled: {reason}"}
        )
        self.terminal(
            events,
            batch_key=None,
            provider=provider,
            model=model,
            provider_batch_id=None,
        )

    def batch(self, batch: InFlightBatch, **values: Any) -> None:
        """Append a batch event for ``batch`` (its key, provider, model and id filled in)."""
        self.ctx.store.append_batch(
            batch_key=batch.batch_key,
            provider=batch.provider,
            model=batch.model,
            provider_batch_id=batch.provider_batch_id,
            **values,
        )

    def end_batch(self, batch: InFlightBatch, error: str) -> None:
        """End every job of ``batch`` failed with ``error``; record it ended, release it."""
        self.fail_unrun(
            batch.job_ids,
            error,
            batch_key=batch.batch_key,
            provider=batch.provider,
            model=batch.model,
            provider_batch_id=batch.provider_batch_id,
        )
        self.batch(batch, status=BatchPhase.COLLECTED.value, detail=error)
        self.state.release(batch.reserved)
        batch.status = BatchPhase.COLLECTED.value
