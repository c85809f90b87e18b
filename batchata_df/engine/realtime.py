"""Realtime: the same jobs, one request at a time through the providers' standard endpoints.

``batch_llm(mode="realtime")`` answers in seconds at the standard (not the batch) price.
:class:`RealtimeEngine` is its driver, composed from the batch engine's units rather than
branching inside them:

* **planning** -- the :class:`~batchata_df.engine.planning.Planner` encodes the very
  request lines a batch would send (grouped by provider and model, small slices);
* **admission** -- :class:`~batchata_df.engine.admission.Admission` holds each request's
  worst case against ``max_cost_usd`` from before it is sent until its actual cost is
  known, so requests in flight can never take spend past the cap (a request waiting to
  retry past a date change is priced again as of the day it is sent:
  :meth:`RealtimeEngine._price_waiting`);
* **ledger** -- :class:`~batchata_df.engine.ledger.Ledger` writes terminal events with
  their cost (realtime prices) exactly as collection does; answers are decoded by the
  provider's batch decoder and judged by
  :func:`~batchata_df.engine.collection.outcomes_to_events`, so typed columns, citations,
  truncation and refusals read the same in both modes;
* **stopping** -- :class:`~batchata_df.engine.stopping.Stopper` (time limit, Ctrl+C): nothing
  more is sent, requests in flight finish, the rest end ``cancelled``.

Never pay twice
---------------
Before a request is sent its job gets an ``assigned`` event with ``mode="realtime"``. A
request has no id a later call could look up, so one still ``assigned`` when a call starts
(the process died while it was in flight) ends ``failed`` with ``lost:`` -- the provider
may have billed it -- instead of being sent again (:func:`resolve_lost`, run by both
drivers; ``retry_failed=True`` sends it again on purpose). Likewise a request whose answer
was lost on the way (a timeout or a dropped connection after sending) is never retried.
Answers that say the provider refused the work are retried: HTTP 429, 503 and 529
(overloaded) after the provider's ``Retry-After`` (or a growing backoff) for up to
``provider_patience``, and a refused connection. A 500/502/504 is sent again up to
:data:`SERVER_ERROR_ATTEMPTS` times, but it may follow an answer the provider computed and
billed (a gateway timing out after the model answered): each such attempt is recorded
(``failed`` "server_error: ..." under its own key ``<key>.<n>``), counts at its worst case
under ``max_cost_usd`` in this call and later ones, and the next attempt goes only when its
worst case fits (:meth:`RealtimeEngine._send_due`). Jobs in a provider batch that may still
be running are not sent here (their rows stay ``pending``); jobs answered in either mode
are settled for both.

Batches in flight
-----------------
Batches an earlier call left in flight are polled once first (never waited for: a
realtime call answers in seconds) and those that have ended are collected at batch
prices; their rows that ended ``cancelled`` are sent here. Rows of batches still running
stay ``pending``, saying that ``mode="batch"`` or ``"auto"`` waits for them; their worst
case (recorded on their ``assigned`` events) is held against the cap for the whole call
(:func:`batches_worst`), since they may yet bill it (``mode="auto"``'s realtime phase too).

Concurrency
-----------
At most ``concurrency`` requests are in flight at once (a thread pool running one blocking
SDK call per request); a rate-limit answer pauses new requests to that provider until its
``Retry-After`` has passed. Waits read time through the run's
:class:`~batchata_df.engine.clock.Clock`, so tests replace it and never sleep.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, MutableMapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date
from typing import Any, cast

import polars as pl

from batchata_df.cost import PriceTable
from batchata_df.engine.admission import Admission, Calibration
from batchata_df.engine.clock import Backoff, Clock, SystemClock
from batchata_df.engine.collection import outcomes_to_events
from batchata_df.engine.ledger import Ledger
from batchata_df.engine.planning import Planner, Repricer, new_batch_key
from batchata_df.engine.recovery import busy_jobs, resolve_lost, settled, spent_on_lost
from batchata_df.engine.run import (
    IN_FLIGHT,
    BatchPhase,
    InFlightBatch,
    PackedIds,
    ProgressSnapshot,
    RunContext,
    RunOptions,
    RunState,
    report,
)
from batchata_df.engine.stopping import Stopper
from batchata_df.errors import CredentialsError
from batchata_df.providers.base import (
    BatchPoll,
    Provider,
    ProviderState,
    RealtimeFailure,
    RealtimeProvider,
    RequestSpec,
)
from batchata_df.state import StateStore

__all__ = [
    "DEFAULT_CONCURRENCY",
    "SERVER_ERROR_ATTEMPTS",
    "RealtimeEngine",
    "batches_worst",
]

DEFAULT_CONCURRENCY = 8
"""Realtime requests in flight at once unless ``concurrency=`` says otherwise: well inside
the lowest tiers' request-per-minute limits of the three providers at typical latencies."""
SERVER_ERROR_ATTEMPTS = 4
"""Tries of a request the provider keeps failing with 500/502/504 before its row fails (each
may have been billed: under a cap, fewer when the next one's worst case would not fit)."""
SLICE = 256
"""Jobs encoded at a time (a realtime run sends a few at once; no need for big slices)."""
_POLL_S = 0.5
"""Longest real wait for answers in flight before the stop event is looked at again."""


@dataclass
class _Request:
    """One job sent (or to be sent again) through a realtime endpoint."""

    job_id: str
    line: str
    provider: str
    model: str
    batch_key: str
    worst: float
    backoff: Backoff
    server_errors: int = 0
    refused_since: float | None = None
    not_before: float = 0.0
    est_input: int | None = None
    """Its estimated input tokens (calibration), ``None`` without estimates."""
    estimated: bool = True
    """Whether ``worst`` is its worst case (the run had estimates); else ``worst`` is 0."""
    attempt: int = 1
    """Which attempt this is: each one sent after a 5xx is recorded as its own attempt
    (``batch_key`` ``<key>.<attempt>``), since the provider may have billed the one before."""
    announce: bool = False
    """Answered 5xx: its next attempt needs room under the cap and an ``assigned`` event."""
    priced_on: date | None = None
    """The day ``worst`` was priced for (``None``: not priced by date, no cap)."""
    repriced: bool = False
    """``worst`` was priced again (a new date) since its ``assigned`` event recorded it."""
    sent_worst: float = 0.0
    """The worst case its latest attempt was sent with (``worst`` may since be priced
    again): what its ending records for that attempt, which may have been billed."""

    def next_attempt(self) -> None:
        """Move on to the next attempt: its own key, ``<key>.<attempt>``."""
        self.attempt += 1
        base = self.batch_key.rsplit(".", 1)[0] if self.attempt > 2 else self.batch_key
        self.batch_key = f"{base}.{self.attempt}"


@dataclass
class _Finished:
    """Results and endings of one round, written together (one part per model)."""

    results: dict[tuple[str, str, str], list[pl.DataFrame]] = field(default_factory=dict)
    requests: dict[tuple[str, str, str], list[_Request]] = field(default_factory=dict)
    ended: list[tuple[_Request, str, str]] = field(default_factory=list)
    """``(request, status, error)`` of requests that end without an answer."""
    server_errors: list[tuple[_Request, str]] = field(default_factory=list)
    """``(request, error)`` of attempts answered 5xx that may be sent again (cap allowing)."""


def batches_worst(in_batches: pl.DataFrame, jobs: pl.DataFrame) -> float:
    """The worst case the folder's batches in flight may still bill (held against the cap).

    ``in_batches`` is :func:`~batchata_df.engine.recovery.busy_jobs`: each job's worst case
    recorded when its batch was sent. A job sent without one (a call without a cap) is
    held at the largest worst case known, recorded or of ``jobs`` (``worst_usd``), as
    batch mode holds the batches it re-attaches
    (:meth:`~batchata_df.engine.admission.Admission.hold_recovered`).

    Examples
    --------
    >>> busy = pl.DataFrame({"job_id": ["a", "b"], "est_cost_usd": [0.25, None]})
    >>> batches_worst(busy, pl.DataFrame({"job_id": ["c"], "worst_usd": [0.5]}))
    0.75
    >>> batches_worst(busy.head(0), pl.DataFrame({"job_id": ["c"]}))
    0.0
    """
    worst = in_batches.get_column("est_cost_usd").cast(pl.Float64)
    if worst.null_count():
        known = [worst.max()]
        if "worst_usd" in jobs.columns:
            known.append(jobs.get_column("worst_usd").max())
        fallback = max((float(k) for k in known if k is not None), default=0.0)  # type: ignore[arg-type]
        worst = worst.fill_null(fallback)
    return float(worst.sum())


class RealtimeEngine:
    """Sends jobs one request at a time, at most ``concurrency`` at once, checkpointing.

    Parameters
    ----------
    store, providers, spec, options, progress, stop_event, make_provider, clock
        As for :class:`~batchata_df.engine.driver.Engine`.
    prices
        Realtime (standard) prices (:meth:`batchata_df.cost.PriceTable.realtime`).
    concurrency
        Most requests in flight at once.
    collect_first
        Poll batches earlier calls left in flight once and collect those that ended, before
        sending (``mode="auto"`` collects them itself and passes ``False``).
    """

    def __init__(
        self,
        store: StateStore,
        providers: MutableMapping[str, Provider],
        spec: RequestSpec,
        prices: PriceTable,
        options: RunOptions,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: Callable[[ProgressSnapshot], None] | None = None,
        stop_event: threading.Event | None = None,
        make_provider: Callable[[str], Provider] | None = None,
        clock: Clock | None = None,
        collect_first: bool = True,
        reprice: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    ) -> None:
        self.collect_first = collect_first
        self.ctx = RunContext(
            store=store,
            providers=providers,
            spec=spec,
            prices=prices,
            options=options,
            clock=clock or SystemClock(),
            progress=progress,
            make_provider=make_provider,
            reprice=reprice,
        )
        self._repricer = Repricer(reprice)  # a call running into a later date
        self.concurrency = concurrency
        self.stop_event = stop_event or threading.Event()
        self.state = RunState(started=self.ctx.clock.monotonic())
        self._paused: dict[str, float] = {}
        self._keys: dict[tuple[str, str], str] = {}
        self._fatal: BaseException | None = None
        self._retry_why = ""
        """Why the latest request waiting to retry was not answered (the activity line)."""
        self.sent = 0
        """Requests sent by this call (retries included)."""
        self._last_error: dict[str, str] = {}
        """The latest 5xx of each request waiting to be sent again (its row's error)."""

    def run(self, jobs: pl.DataFrame) -> pl.DataFrame:
        """Send ``jobs`` (as :meth:`Engine.run <batchata_df.engine.driver.Engine.run>`).

        Returns the latest state of every job; jobs held by a provider batch that may
        still be running stay ``assigned`` with the reason in ``error``.
        """
        from batchata_df.engine.driver import _job_states

        ctx, state = self.ctx, self.state
        if self.collect_first:
            self._collect_ended(jobs)
        state.total, state.jobs = jobs.height, jobs
        recorded, billed = ctx.store.snapshot()
        recorded = resolve_lost(ctx.store, recorded)
        terminal = settled(recorded, retry_failed=ctx.options.retry_failed)
        in_batches = busy_jobs(ctx.store, recorded)
        busy = in_batches.get_column("job_id")
        todo = jobs.filter(
            ~pl.col("job_id").is_in(terminal.get_column("job_id").implode())
            & ~pl.col("job_id").is_in(busy.implode())
        )
        done = terminal.filter(pl.col("job_id").is_in(jobs.get_column("job_id").implode()))
        for status in state.done:
            state.done[status] = int((done.get_column("status") == status).sum())
        state.cost = float(done.get_column("cost_usd").fill_null(0.0).sum())
        state.cost_at_start = state.cost
        state.done_at_start = sum(state.done.values())
        state.spent = float(billed.get_column("cost_usd").fill_null(0.0).sum())
        state.spent += spent_on_lost(ctx) + ctx.options.stored_unpriced_usd
        # Each request carries its input estimate (calibration): nothing per job of the
        # whole table here; requests held by batches in flight are never sent (busy).
        admission = Admission(state, ctx.options.max_cost_usd, Calibration())
        # Batches still in flight may yet bill their worst case, and this call never
        # collects them: hold it for the whole call, as batch mode holds re-attached ones.
        state.reserved += batches_worst(in_batches, jobs)
        planner = Planner(ctx.providers, ctx.spec, SLICE)
        planner.add(todo)
        try:
            self._drive(planner, admission)
        finally:
            state.jobs = pl.DataFrame()
        if self._fatal is not None:
            raise self._fatal
        states = _job_states(ctx.store)
        held = busy.filter(busy.is_in(jobs.get_column("job_id").implode()))
        if held.len():
            why = (
                "in a provider batch that is still running: call again with the same state "
                "and mode='batch' or mode='auto' (they wait for it and collect it), or "
                "mode='realtime' once it has ended"
            )
            states = states.with_columns(
                pl.when(pl.col("job_id").is_in(held.implode()) & (pl.col("status") == "assigned"))
                .then(pl.lit(why))
                .otherwise(pl.col("error"))
                .alias("error")
            )
        return states

    def _collect_ended(self, jobs: pl.DataFrame) -> None:
        """Collect the batches earlier calls left in flight that have ended (one poll each).

        A batch driver that sends nothing and does not wait (``wait=False``), at batch
        prices; it re-attaches every open batch of the folder, as batch mode does.
        """
        from batchata_df.engine.driver import Engine

        ctx = self.ctx
        batches = ctx.store.batch_state()
        if not batches.get_column("status").is_in([*IN_FLIGHT, BatchPhase.INTENT.value]).any():
            return  # nothing in flight (the batch events only: no job events read)
        Engine(
            ctx.store,
            ctx.providers,
            ctx.spec,
            ctx.prices.batch(),
            dataclasses.replace(ctx.options, wait=False),
            progress=ctx.progress,
            stop_event=self.stop_event,
            make_provider=ctx.make_provider,
            clock=ctx.clock,
            collect_only=True,
        ).run(jobs)

    # -- the loop -------------------------------------------------------------------------

    def _drive(self, planner: Planner, admission: Admission) -> None:
        ctx, state = self.ctx, self.state
        ledger = Ledger(ctx, state)
        stopper = Stopper(ctx, state, ledger, self.stop_event)
        running: dict[Future[Any], _Request] = {}
        waiting: list[_Request] = []
        reserved: dict[str, float] = {}
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="batchata-rt") as pool:
            while True:
                reason = state.stop_reason or stopper.reason()
                if self._fatal is not None and reason is None:
                    reason = "error"
                if reason is not None:
                    state.stop_reason = reason
                    stopper.cancel_unsent(reason, planner)
                    for request in waiting:
                        if request.announce:  # its next attempt was never sent
                            request.next_attempt()
                        self._end([(request, "cancelled", f"cancelled: {reason}")], ledger,
                                  admission, reserved)  # fmt: skip
                    waiting.clear()
                else:
                    self._price_waiting(waiting, reserved, admission)
                    ended = self._send_due(pool, running, waiting, reserved)
                    if ended:
                        self._end(ended, ledger, admission, reserved)
                    self._repricer(planner, state.job_rows)
                    self._send_new(pool, planner, admission, running, reserved)
                    if planner.current() is not None and not running and not waiting:
                        # Nothing in flight will free budget: what does not fit never will.
                        stopper.cancel_unsent("cost_limit", planner)
                self._activity(running, waiting)
                state.realtime_in_flight = len(running)
                report(ctx, state, "running")
                if not running and not waiting and (reason or planner.current() is None):
                    break
                finished = self._wait(running, waiting, stopper)
                self._record(finished, ledger, admission, reserved, waiting)
        state.activity = ""
        report(ctx, state, "done")

    def _send_due(
        self,
        pool: ThreadPoolExecutor,
        running: dict[Future[Any], _Request],
        waiting: list[_Request],
        reserved: dict[str, float],
    ) -> list[tuple[_Request, str, str]]:
        """Send again the requests whose retry time has come (free slots permitting).

        A new attempt after a 5xx must fit under the cap beside everything spent and held
        (each attempt answered 5xx counts at its worst case): it waits while requests in
        flight (or sent in this round) may free budget, else its row ends ``failed`` naming
        the cap and the fix (returned, for :meth:`_end`). So must a request priced again on
        a new date (:meth:`_price_waiting`) whose higher worst case could not be held yet:
        else its row ends ``cancelled: cost_limit`` (it was never answered).
        """
        state, cap = self.state, self.ctx.options.max_cost_usd
        now = self.ctx.clock.monotonic()
        due: list[_Request] = []
        ended: list[tuple[_Request, str, str]] = []
        for request in sorted(waiting, key=lambda r: r.not_before):
            if len(running) + len(due) >= self.concurrency:
                break
            if request.not_before > now or self._paused.get(request.provider, 0.0) > now:
                continue
            if not self._hold(request, reserved):
                # Answers in flight may free budget: wait for them, also for those of the
                # requests sent this round (``due``: two retries priced again on a new
                # date, room for one at a time).
                if running or due:
                    continue
                waiting.remove(request)
                state.release(reserved.pop(request.job_id, 0.0))  # never sent: not spent
                if not request.announce:
                    ended.append((request, "cancelled", "cancelled: cost_limit"))
                    continue
                n = request.server_errors
                ended.append((request, "failed", (
                    f"server_error: {self._last_error.get(request.job_id, '5xx')} "
                    f"({n} attempt{'s' if n > 1 else ''}; not sent again: the provider "
                    "may have billed each attempt answered 5xx, so max_cost_usd counts "
                    "each at its worst case, and another attempt (worst case "
                    f"${request.worst:.6g}) would pass max_cost_usd={cap:g}: raise "
                    "max_cost_usd, or call again with retry_failed=True)"
                )))  # fmt: skip
                continue
            if request.announce:
                request.next_attempt()
            due.append(request)
        # A new attempt after a 5xx is recorded before it is sent, as a first one is: a
        # crash while it is in flight then leaves it ``assigned`` (lost), never unseen. A
        # request priced again on a new date is recorded again with its new worst case
        # (what a later call counts for it if it is lost in flight).
        fresh = [r for r in due if r.announce or r.repriced]
        if fresh:
            self.ctx.store.append_jobs(
                pl.DataFrame(
                    {
                        "job_id": [r.job_id for r in fresh],
                        "batch_key": [r.batch_key for r in fresh],
                        "provider": [r.provider for r in fresh],
                        "model": [r.model for r in fresh],
                        "status": "assigned",
                        "mode": "realtime",
                        "est_cost_usd": [r.worst if r.estimated else None for r in fresh],
                    },
                    schema_overrides={"est_cost_usd": pl.Float64},
                )
            )
        for request in due:
            request.announce = request.repriced = False
            waiting.remove(request)
            running[self._submit(pool, request)] = request
        return ended

    def _hold(self, request: _Request, reserved: dict[str, float]) -> bool:
        """Hold ``request``'s worst case against the cap (what it holds counted); whether it is.

        A request holding more than its worst case (priced again lower) gives the rest
        back; one holding less takes the difference only if it fits beside everything
        spent and held, else it keeps what it holds and ``False`` is returned.
        """
        state, cap = self.state, self.ctx.options.max_cost_usd
        held = reserved.get(request.job_id)
        need = request.worst - (held or 0.0)
        if held is not None and need <= 1e-12:
            if need < 0:
                state.release(-need)
                reserved[request.job_id] = request.worst
            return True
        if cap is not None and need > cap - state.spent - state.reserved + 1e-12:
            return False
        reserved[request.job_id] = request.worst
        state.reserved += need
        return True

    def _price_waiting(
        self, waiting: list[_Request], reserved: dict[str, float], admission: Admission
    ) -> None:
        """Price again, as of today, the requests waiting to retry that were priced before.

        A request holds the worst case of the days it may run on from the day it was
        priced: that day and the next (``PriceTable.worst``). Refused (429) or answered 5xx,
        it may wait past midnight (``provider_patience`` can be days): sent again two
        days later, its old worst case no longer covers a price rise in between
        (gemini-4-argon priced on 2026-11-29 at the old price, sent again on 12-01 and
        billed double). When the date changes what its model's estimate depends on
        (:meth:`Repricer.moved <batchata_df.engine.planning.Repricer.moved>`), its row
        is priced again (``RunContext.reprice``, calibrated as admission does) and what
        it holds follows: a rise is held now if it fits, else :meth:`_send_due` waits
        for room or ends the row.
        """
        repricer = self._repricer
        if repricer.reprice is None or not waiting:
            return
        today = repricer.today()
        stale = [(r, r.priced_on) for r in waiting if r.priced_on not in (None, today)]
        moved = [r for r, day in stale if r.estimated and day and repricer.moved(day)]
        for request, _ in stale:
            request.priced_on = today
        if not moved:
            return
        rows = repricer.reprice(self.state.job_rows(pl.Series([r.job_id for r in moved])))
        columns = [c for c in ("est_input_usd", "est_input_tokens") if c in rows.columns]
        priced = {row["job_id"]: row for row in
                  rows.select("job_id", "worst_usd", *columns).iter_rows(named=True)}  # fmt: skip
        for request in moved:
            row = priced.get(request.job_id)
            if row is None:
                continue
            part = row.get("est_input_usd")
            worst = admission.calibration.worst(
                request.provider, request.model, pl.Series([row["worst_usd"]], dtype=pl.Float64),
                None if part is None else pl.Series([part], dtype=pl.Float64),
            )  # fmt: skip
            if row.get("est_input_tokens") is not None:
                request.est_input = int(row["est_input_tokens"])
            amount = float(worst[0] or 0.0)
            if amount != request.worst:
                request.worst, request.repriced = amount, True
            if request.job_id in reserved:
                self._hold(request, reserved)

    def _send_new(
        self,
        pool: ThreadPoolExecutor,
        planner: Planner,
        admission: Admission,
        running: dict[Future[Any], _Request],
        reserved: dict[str, float],
    ) -> None:
        """Admit and send planned jobs while slots are free and the cap allows."""
        ctx, state = self.ctx, self.state
        while (free := self.concurrency - len(running)) > 0:
            plan = planner.current()
            if plan is None:
                return
            if self._paused.get(plan.provider, 0.0) > ctx.clock.monotonic():
                return
            head = plan if len(plan) <= free else plan.head(free)
            admitted = admission.admit(head, holding=bool(reserved))
            if state.cap_waiting:  # the cap holds back the rest of the plan too, as in
                state.cap_waiting += len(plan) - len(head)  # batch mode, not one slot's share
            if admitted is None:
                return
            key = self._keys.setdefault((plan.provider, plan.model), "r" + new_batch_key())
            worst = admission.worst(admitted)
            ctx.store.append_jobs(
                pl.DataFrame({"job_id": admitted.job_ids}).with_columns(
                    pl.lit(key).alias("batch_key"),
                    pl.lit(plan.provider).alias("provider"),
                    pl.lit(plan.model).alias("model"),
                    pl.lit("assigned").alias("status"),
                    pl.lit("realtime").alias("mode"),
                    worst.alias("est_cost_usd") if admitted.has_estimates else pl.lit(None),
                )
            )
            admission.reserve(admitted)
            if state.first_submit_at is None:
                state.first_submit_at = ctx.clock.monotonic()
            estimates = (
                admitted.est_input.to_list()
                if admitted.est_input is not None
                else [None] * len(admitted)
            )
            for job_id, line, amount, est in zip(
                admitted.job_ids.to_list(),
                admitted.lines.to_list(),
                worst.to_list(),
                estimates,
                strict=True,
            ):
                reserved[job_id] = float(amount or 0.0)
                request = _Request(
                    job_id, line, plan.provider, plan.model, key, float(amount or 0.0),
                    ctx.backoff(), est_input=est, estimated=admitted.has_estimates,
                    priced_on=self._repricer.priced_on,
                )  # fmt: skip
                running[self._submit(pool, request)] = request
            planner.took(len(admitted))

    def _submit(self, pool: ThreadPoolExecutor, request: _Request) -> Future[Any]:
        provider = cast(RealtimeProvider, self.ctx.providers[request.provider])
        self.sent += 1
        request.sent_worst = request.worst
        return pool.submit(provider.answer, request.line, model=request.model, spec=self.ctx.spec)

    def _wait(
        self,
        running: dict[Future[Any], _Request],
        waiting: list[_Request],
        stopper: Stopper,
    ) -> _Finished:
        """Wait for answers (or the next retry time); sort out what came back."""
        clock = self.ctx.clock
        finished = _Finished()
        if running:
            done, _ = wait(list(running), timeout=_POLL_S, return_when=FIRST_COMPLETED)
        else:
            wakes = [max(r.not_before, self._paused.get(r.provider, 0.0)) for r in waiting]
            if wakes:
                stopper.sleep(max(0.0, min(wakes) - clock.monotonic()))
            return finished
        now = clock.monotonic()
        for future in done:
            request = running.pop(future)
            try:
                outcome = future.result()
            except CredentialsError as e:
                # A bad key ends the call (as it does in batch mode); nothing ran for it.
                self._fatal = self._fatal or e
                finished.ended.append((request, "cancelled", f"cancelled: {e}"))
                continue
            except Exception as e:  # an answer the SDK could not read: that row only
                error = f"client_error: {type(e).__name__}: {e}"
                finished.ended.append((request, "failed", error))
                continue
            if isinstance(outcome, RealtimeFailure):
                self._failed(request, outcome, now, waiting, finished)
                continue
            group = (request.provider, request.model, request.batch_key)
            finished.results.setdefault(group, []).append(outcome)
            finished.requests.setdefault(group, []).append(request)
        return finished

    def _failed(
        self,
        request: _Request,
        failure: RealtimeFailure,
        now: float,
        waiting: list[_Request],
        finished: _Finished,
    ) -> None:
        """Decide what a request the provider did not answer becomes."""
        opts = self.ctx.options
        if failure.kind == "lost":
            finished.ended.append((request, "failed", failure.error))
            return
        if failure.kind == "server_error":
            request.server_errors += 1
            if request.server_errors >= SERVER_ERROR_ATTEMPTS:
                error = f"server_error: {failure.error} ({request.server_errors} attempts)"
                finished.ended.append((request, "failed", error))
                return
        else:  # rate_limited, unreachable: the provider as a whole; wait within patience
            if request.refused_since is None:
                request.refused_since = now
            if now - request.refused_since >= opts.provider_patience_s:
                error = f"cancelled: provider_unavailable: {failure.error}"
                finished.ended.append((request, "cancelled", error))
                return
        delay = request.backoff.next()
        if failure.retry_after is not None:
            delay = max(failure.retry_after, 0.0)
        request.not_before = now + delay
        if failure.kind == "rate_limited":
            paused = self._paused.get(request.provider, 0.0)
            self._paused[request.provider] = max(paused, request.not_before)
        self._retry_why = f"{request.provider}: {failure.error}; retrying in {delay:.0f}s"
        if failure.kind == "server_error":  # sent again by _send_due, if the cap allows
            self._last_error[request.job_id] = failure.error
            finished.server_errors.append((request, failure.error))
            return
        waiting.append(request)

    # -- recording ------------------------------------------------------------------------

    def _record(
        self,
        finished: _Finished,
        ledger: Ledger,
        admission: Admission,
        reserved: dict[str, float],
        waiting: list[_Request],
    ) -> None:
        """Write this round's answers (one part per model) and endings; settle their money."""
        answered = BatchPoll(ProviderState.ENDED, "answered")
        for (provider, model, key), frames in finished.results.items():
            requests = finished.requests[(provider, model, key)]
            members = pl.DataFrame({"job_id": [r.job_id for r in requests]})
            events = outcomes_to_events(
                members, pl.concat(frames), answered, self.ctx.spec,
                provider=provider, model=model,
            )  # fmt: skip
            actual = ledger.terminal(
                events.with_columns(pl.lit("realtime").alias("mode")),
                batch_key=key,
                provider=provider,
                model=model,
                provider_batch_id=None,
            )
            held = sum(reserved.pop(r.job_id, 0.0) for r in requests)
            estimates = pl.Series([r.est_input for r in requests], dtype=pl.Int64)
            ids = members.get_column("job_id")
            admission.settle(
                InFlightBatch(key, provider, model, "", PackedIds.of(ids), self.ctx.backoff(),
                              reserved=held, est_input=estimates),
                actual,
                events,
                ids,
            )  # fmt: skip
        if finished.server_errors:
            self._server_errors(finished, reserved, waiting)
        if finished.ended:
            self._end(finished.ended, ledger, admission, reserved)

    def _server_errors(
        self,
        finished: _Finished,
        reserved: dict[str, float],
        waiting: list[_Request],
    ) -> None:
        """Count attempts answered 5xx as spent and record them; they wait to be sent again.

        A 5xx may follow an answer the provider computed and billed (a gateway 502/504
        after the model answered; no provider documents a 5xx as unbilled), and how much it
        billed is unknown: the attempt counts at its worst case, recorded in the folder (a
        ``failed`` "server_error: ..." event under its own attempt key, which
        :func:`~batchata_df.state.lost_attempts` lists). The next attempt holds nothing yet:
        :meth:`_send_due` sends it only when its worst case fits under ``max_cost_usd``.
        """
        state, cap = self.state, self.ctx.options.max_cost_usd
        for request, _ in finished.server_errors:
            held = reserved.pop(request.job_id, 0.0)
            state.release(held)
            state.spent += held  # it may have been billed: its worst case counts as spent
            state.possibly_billed(request.worst if request.estimated else None)
            request.announce = True
            # The next attempt's worst case is held while it waits, when it fits now (new
            # jobs then wait for it, as for any request waiting to retry).
            if cap is None or request.worst <= cap - state.spent - state.reserved + 1e-12:
                reserved[request.job_id] = request.worst
                state.reserved += request.worst
            waiting.append(request)
        self.ctx.store.append_jobs(
            pl.DataFrame(
                {
                    "job_id": [r.job_id for r, _ in finished.server_errors],
                    "batch_key": [r.batch_key for r, _ in finished.server_errors],
                    "provider": [r.provider for r, _ in finished.server_errors],
                    "model": [r.model for r, _ in finished.server_errors],
                    "status": "failed",
                    "error": [
                        f"server_error: {e} (attempt {r.attempt}; the provider may have "
                        "billed it; to be sent again: if the call stops first, "
                        "retry_failed=True sends it)"
                        for r, e in finished.server_errors
                    ],
                    "mode": "realtime",
                    "est_cost_usd": [
                        r.worst if r.estimated else None for r, _ in finished.server_errors
                    ],
                },
                schema_overrides={"est_cost_usd": pl.Float64},
            )
        )

    def _end(
        self,
        ended: list[tuple[_Request, str, str]],
        ledger: Ledger,
        admission: Admission,
        reserved: dict[str, float],
    ) -> None:
        """End requests without an answer; a lost one keeps its worst case as spent."""
        del admission
        by_group: dict[tuple[str, str, str], list[tuple[_Request, str, str]]] = {}
        for item in ended:
            r = item[0]
            by_group.setdefault((r.provider, r.model, r.batch_key), []).append(item)
        for (provider, model, key), items in by_group.items():
            # A usage column, null: the cost is then known and 0 (``terminal`` prices frames
            # that carry usage; the other usage columns it adds itself, null).
            events = pl.DataFrame(
                {
                    "job_id": [r.job_id for r, _, _ in items],
                    "status": [s for _, s, _ in items],
                    "error": [e for _, _, e in items],
                    # A run without estimates records none (null), not $0: a later cap
                    # then prices the lost request from its row or refuses the folder.
                    "est_cost_usd": [r.sent_worst if r.estimated else None for r, _, _ in items],
                    "input_tokens": None,
                    "mode": "realtime",
                },
                schema_overrides={"input_tokens": pl.Int64, "est_cost_usd": pl.Float64},
            )
            ledger.terminal(
                events, batch_key=key, provider=provider, model=model, provider_batch_id=None
            )
            for r, _, error in items:
                held = reserved.pop(r.job_id, 0.0)
                self.state.release(held)
                # A 5xx's next attempt never sent (``announce``) ends with that 5xx's error,
                # but the attempt was counted when its 5xx came back (:meth:`_server_errors`).
                if error.startswith(("lost:", "server_error:")) and not r.announce:
                    # It may have been billed: count its worst case as spent (the cap).
                    self.state.spent += held
                    self.state.possibly_billed(r.sent_worst if r.estimated else None)

    def _activity(self, running: dict[Future[Any], _Request], waiting: list[_Request]) -> None:
        if self.state.stop_reason:
            self.state.activity = (
                f"stopping ({self.state.stop_reason}): {len(running)} realtime requests "
                "finishing"
            )
            return
        text = ""  # nothing in flight or waiting: no stale "in flight" line
        if running or waiting:
            text = f"realtime: {len(running)} requests in flight (at most {self.concurrency})"
            if waiting:
                text += f", {len(waiting)} waiting to retry ({self._retry_why})"
        self.state.activity = text
