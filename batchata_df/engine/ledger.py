"""Writing what happened: terminal job events with their cost, and batch events.

Every unit that ends jobs (collection, submission after a refusal, stopping) writes them
through :class:`Ledger`, so the cost of each event and the progress counters are computed
in one place.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl

from batchata_df.cost import Price, cost_expr, window_days, with_usage_columns
from batchata_df.engine.run import BatchPhase, InFlightBatch, RunContext, RunState
from batchata_df.errors import UnpricedAnswerWarning, warn_user
from batchata_df.models import today
from batchata_df.state import TERMINAL_JOB

__all__ = ["Ledger"]


class Ledger:
    """Appends a run's job and batch events to its state store."""

    def __init__(self, ctx: RunContext, state: RunState) -> None:
        self.ctx, self.state = ctx, state
        self._unpriced_said: set[tuple[str, str]] = set()

    def terminal(
        self,
        events: pl.DataFrame,
        *,
        batch_key: str | None,
        provider: str | None,
        model: str | None,
        provider_batch_id: str | None,
        rows: bool = True,
        sent_on: dt.date | None = None,
    ) -> float:
        """Append terminal job events with their cost; return the cost they add.

        ``rows=False``: events of no row of the call (billed result lines that matched
        none, :func:`~batchata_df.engine.collection.unmatched_events`): their cost counts,
        the progress's row counts do not.

        Rows are priced as on the day they are collected (:func:`batchata_df.models.today`),
        but at most the last day of the window of a batch sent on ``sent_on``
        (:func:`~batchata_df.cost.window_days`): its requests ran by then, so a price
        change after it is not what they were billed at. Within the window the later day
        is taken (the provider bills each request at the day it ran, which the results do
        not say): what is counted as spent is then at least the bill.
        """
        day = self._pricing_day(provider, sent_on)
        price = self.ctx.prices.get(provider, model, day) if provider and model else None
        frame = events.with_columns(
            pl.lit(batch_key, dtype=pl.String).alias("batch_key"),
            pl.lit(provider, dtype=pl.String).alias("provider"),
            pl.lit(model, dtype=pl.String).alias("model"),
            pl.lit(provider_batch_id, dtype=pl.String).alias("provider_batch_id"),
        )
        unpriced: list[tuple[str, int]] = []
        if "input_tokens" in frame.columns:
            priced, unpriced = self._answered_prices(frame, provider, price, day)

            def row_cost() -> pl.Expr:
                # Each row at the price of the model that answered it (answered_by, set
                # when the provider routed the request to another model), else the
                # model's own.
                expr = cost_expr(price)
                for name, other in priced.items():
                    answered = pl.col("answered_by") == name
                    expr = pl.when(answered).then(cost_expr(other)).otherwise(expr)
                return expr

            frame = with_usage_columns(frame).with_columns(row_cost().alias("cost_usd"))
            # What the same usage would have cost without the prompt cache (cache reads and
            # writes at the input rate): "saved by caching" (negative if writes went unread).
            uncached = with_usage_columns(
                frame.with_columns(
                    pl.col("cached_tokens").fill_null(0) * 0,
                    pl.col("cache_write_tokens").fill_null(0) * 0,
                )
            ).select(row_cost()).to_series()
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
        for name, n in unpriced:  # said once the events are stored
            if provider is not None and model is not None:
                self._say_unpriced(provider, model, name, n)
        return added

    def _pricing_day(self, provider: str | None, sent_on: dt.date | None) -> dt.date | None:
        """The day rows of a batch sent on ``sent_on`` are priced at (``None``: today)."""
        if provider is None or sent_on is None:
            return None
        last = window_days(provider, self.ctx.prices.processing, sent_on)[-1]
        return min(today(), last)

    def _answered_prices(
        self, frame: pl.DataFrame, provider: str | None, price: Price | None,
        day: dt.date | None = None,
    ) -> tuple[dict[str, Price], list[tuple[str, int]]]:
        """Prices of the models that answered rows instead of the one asked, and the rest.

        ``answered_by`` names them; those without a known price come back with their row
        counts.

        A row answered by a model without a known price stays at the price of the model
        asked for (what the cap reserved for it: a null cost would count as free), and
        the call warns (:class:`~batchata_df.errors.UnpricedAnswerWarning`).
        """
        if provider is None or "answered_by" not in frame.columns:
            return {}, []
        names = frame.get_column("answered_by")
        if names.null_count() == names.len():
            return {}, []
        priced: dict[str, Price] = {}
        unpriced: list[tuple[str, int]] = []
        for name, rows in names.drop_nulls().value_counts(sort=True).iter_rows():
            found = self.ctx.prices.get(provider, str(name), day)
            if found is not None:
                priced[str(name)] = found
            elif price is not None:
                unpriced.append((str(name), int(rows)))
        return priced, unpriced

    def _say_unpriced(self, provider: str, model: str, name: str, rows: int) -> None:
        if (model, name) in self._unpriced_said:
            return
        self._unpriced_said.add((model, name))
        msg = (
            f"{rows} row{'s' if rows != 1 else ''} sent to {model!r} were answered by "
            f"{name!r} (the provider routed {model!r} to it), whose price is not known: "
            f"their _cost_usd is at {model!r}'s price, which may differ from what the "
            f"provider bills; pass prices={{{name!r}: (input_usd_per_mtok, "
            "output_usd_per_mtok)} (batch prices) to price them at its own"
        )
        warn_user(msg, UnpricedAnswerWarning)

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
