"""``mode="auto"``: batch at half price, realtime where a batch is not worth it or too slow.

Two rules decide, and each row's ``_mode`` says which way it went:

* **Too small for a batch.** When at most :data:`AUTO_REALTIME_MAX_JOBS` jobs are left to
  send, they go realtime: a provider batch takes minutes to hours, and on so few rows the
  batch discount is worth cents (50 rows of a few thousand tokens at the standard price of
  mid-size models cost well under a dollar; half of that is the most a batch could save).
* **A deadline** (``deadline=``, or ``time_limit=`` when no deadline is given). Sending
  ``n`` jobs realtime takes about ``ceil(n / concurrency)`` request latencies
  (:func:`realtime_seconds`: :data:`REALTIME_LATENCY_S` each, plus a margin for the
  cancel and the last poll). When that time is more than the time left, everything goes
  realtime at once; otherwise the jobs go as batches, and at the last moment when the
  jobs still unanswered could be finished realtime, the batches in flight are cancelled
  (:attr:`~batchata_df.engine.run.RunContext.stop_when`, stop reason ``"deadline"``),
  their finished rows collected, and the rest sent realtime.

Batches an earlier call left in flight (``wait=False``, a stop, a crash) are collected
first, waiting for them as batch mode does (``wait=False``: one poll), with the deadline
rule as the stop rule; only then are the rules applied to what is left (rows those batches
ended ``cancelled`` included). Without that, a call with at most 50 rows left went straight
to realtime, which does not collect batches, and their rows stayed ``pending`` for good.

Nothing is paid twice across the two phases: rows whose batch may still be running after
the cancel's grace period are not sent realtime (they stay ``pending`` for a later call to
collect), and rows answered in either phase are settled for both.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, MutableMapping

import polars as pl

from batchata_df.cost import PriceTable
from batchata_df.engine.clock import Clock, SystemClock
from batchata_df.engine.driver import Engine
from batchata_df.engine.realtime import DEFAULT_CONCURRENCY, RealtimeEngine
from batchata_df.engine.recovery import busy_jobs, settled
from batchata_df.engine.run import ProgressSnapshot, RunOptions, RunState
from batchata_df.providers.base import Provider, RequestSpec
from batchata_df.state import StateStore

__all__ = [
    "AUTO_REALTIME_MAX_JOBS",
    "REALTIME_LATENCY_S",
    "AutoEngine",
    "realtime_seconds",
]

AUTO_REALTIME_MAX_JOBS = 50
"""Jobs left to send at or below which ``mode="auto"`` sends them realtime."""
REALTIME_LATENCY_S = 30.0
"""Assumed seconds per realtime request when planning for a deadline (reasoning models
answer in tens of seconds; plain ones faster, which only leaves more room)."""
SWITCH_MARGIN_S = 120.0
"""Time kept back for cancelling batches, collecting their finished rows and the last poll."""
DEADLINE_CANCEL_GRACE_S = 60.0
"""After the deadline switch, how long cancelled batches get to end before their rows are
left to a later call (they are never sent realtime while their batch may still run)."""


def realtime_seconds(n_jobs: int, concurrency: int, latency_s: float = REALTIME_LATENCY_S) -> float:
    """About how long ``n_jobs`` realtime requests take, with the switch margin.

    Examples
    --------
    >>> realtime_seconds(80, 8)
    420.0
    >>> realtime_seconds(0, 8)
    0.0
    """
    if n_jobs <= 0:
        return 0.0
    return math.ceil(n_jobs / concurrency) * latency_s + SWITCH_MARGIN_S


class AutoEngine:
    """Batch first, realtime for small jobs and for what a deadline would not wait for.

    Parameters
    ----------
    store, providers, spec, options, progress, stop_event, make_provider, clock
        As for :class:`~batchata_df.engine.driver.Engine`.
    prices
        Batch prices (realtime ones are derived: :meth:`PriceTable.realtime`).
    deadline_s
        Seconds from the start by which every row should be answered (``None``: only the
        small-job rule applies).
    concurrency
        Realtime requests in flight at once.
    """

    def __init__(
        self,
        store: StateStore,
        providers: MutableMapping[str, Provider],
        spec: RequestSpec,
        prices: PriceTable,
        options: RunOptions,
        *,
        deadline_s: float | None,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: Callable[[ProgressSnapshot], None] | None = None,
        stop_event: threading.Event | None = None,
        make_provider: Callable[[str], Provider] | None = None,
        clock: Clock | None = None,
        reprice: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
        reprice_realtime: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    ) -> None:
        self.store, self.providers, self.spec = store, providers, spec
        # The cap's worst case as of today, at batch and at realtime prices, for a phase
        # that runs into a later date (RunContext.reprice).
        self.reprice, self.reprice_realtime = reprice, reprice_realtime
        self.prices, self.options = prices, options
        self.deadline_s, self.concurrency = deadline_s, concurrency
        self.progress, self.make_provider = progress, make_provider
        self.stop_event = stop_event or threading.Event()
        self.clock = clock or SystemClock()
        self.started = self.clock.monotonic()
        self.decision = ""
        """What was decided and why (for the progress display and tests)."""
        self.batch: Engine | None = None
        self.collector: Engine | None = None
        """The batch driver that collected batches in flight first (``None``: none were)."""
        self.realtime: RealtimeEngine | None = None

    def run(self, jobs: pl.DataFrame, realtime_jobs: pl.DataFrame | None = None) -> pl.DataFrame:
        """Run ``jobs``; the latest state of every job (see :meth:`Engine.run`).

        ``realtime_jobs`` are the same jobs with their worst case at realtime prices (a
        cost cap needs it: the realtime phase holds that against the cap).
        """
        rt_jobs = jobs if realtime_jobs is None else realtime_jobs
        left, busy = self._left(jobs)
        if busy:
            # Batches in flight first: realtime never collects them, and their rows that
            # end cancelled are left to send. A stop here (Ctrl+C, time limit, deadline)
            # ends what is left in the phase below, which sees the same stop.
            self.collector = self._engine(collect_only=True)
            self.collector.run(jobs)
            if self.collector.state.stop_reason is not None:
                # The deadline: the rest goes realtime. Ctrl+C or the time limit: the
                # realtime phase sees the same stop and ends the unsent rows cancelled,
                # without sending or waiting for the cancelled batches again.
                reason = self.collector.state.stop_reason
                self.decision = f"collected batches in flight, then realtime ({reason})"
                return self._realtime(rt_jobs)
            left, _ = self._left(jobs)
        time_left = None
        if self.deadline_s is not None:
            time_left = self.deadline_s - (self.clock.monotonic() - self.started)
        if left <= AUTO_REALTIME_MAX_JOBS:
            self.decision = f"{left} jobs to send: at most {AUTO_REALTIME_MAX_JOBS}, realtime"
            return self._realtime(rt_jobs)
        if time_left is not None:
            needed = realtime_seconds(left, self.concurrency)
            if needed >= time_left:
                self.decision = (
                    f"{left} jobs need about {needed:.0f}s realtime and the deadline is in "
                    f"{time_left:.0f}s: realtime"
                )
                return self._realtime(rt_jobs)
        self.decision = "batch"
        self.batch = self._engine(collect_only=False)
        states = self.batch.run(jobs)
        if self.batch.state.stop_reason != "deadline":
            return states
        self.decision = "batch, then realtime for what the deadline would not wait for"
        return self._realtime(rt_jobs)

    def _engine(self, *, collect_only: bool) -> Engine:
        """The batch driver, its time limit counted from the call's start."""
        options = self._options()
        stop_when = None
        if self.deadline_s is not None:
            options = dataclasses.replace(
                options, cancel_grace_s=min(options.cancel_grace_s, DEADLINE_CANCEL_GRACE_S)
            )
            stop_when = self._switch_rule()
        return Engine(
            self.store,
            self.providers,
            self.spec,
            self.prices,
            options,
            progress=self.progress,
            stop_event=self.stop_event,
            make_provider=self.make_provider,
            clock=self.clock,
            stop_when=stop_when,
            collect_only=collect_only,
            reprice=self.reprice,
        )

    def _options(self) -> RunOptions:
        """The options with the time limit left of the call's (it counts from its start)."""
        options = self.options
        if options.time_limit_s is not None:
            # Once it is spent (0 left), a phase stops before sending anything.
            spent = self.clock.monotonic() - self.started
            options = dataclasses.replace(
                options, time_limit_s=max(options.time_limit_s - spent, 0.0)
            )
        return options

    def _switch_rule(self) -> Callable[[RunState, float], str | None]:
        deadline = self.started + (self.deadline_s or 0.0)

        def rule(state: RunState, now: float) -> str | None:
            finished = sum(state.done.values())
            in_flight_done = min(sum(state.in_flight_finished.values()), state.total - finished)
            remaining = state.total - finished - in_flight_done
            if remaining > 0 and deadline - now <= realtime_seconds(remaining, self.concurrency):
                return "deadline"
            return None

        return rule

    def _left(self, jobs: pl.DataFrame) -> tuple[int, int]:
        """Jobs not yet settled and not in a provider batch; jobs of the folder in one.

        A read-only look at the folder. The second count is every job whose batch (or open
        intent) may still be running, of this call's rows or not: recovery re-attaches them
        all.
        """
        latest, _ = self.store.snapshot()
        done = settled(latest, retry_failed=self.options.retry_failed).get_column("job_id")
        busy = busy_jobs(self.store, latest).get_column("job_id")
        lost = latest.filter(
            (pl.col("status") == "assigned") & (pl.col("mode") == "realtime")
        ).get_column("job_id")
        out = jobs.filter(
            ~pl.col("job_id").is_in(done.implode())
            & ~pl.col("job_id").is_in(busy.implode())
            & ~pl.col("job_id").is_in(lost.implode())
        )
        return out.height, busy.len()

    def _realtime(self, jobs: pl.DataFrame) -> pl.DataFrame:
        self.realtime = RealtimeEngine(
            self.store,
            self.providers,
            self.spec,
            self.prices.realtime(),
            self._options(),
            concurrency=self.concurrency,
            progress=self.progress,
            stop_event=self.stop_event,
            make_provider=self.make_provider,
            clock=self.clock,
            collect_first=False,  # collected above (or nothing was in flight)
            reprice=self.reprice_realtime,
        )
        return self.realtime.run(jobs)
