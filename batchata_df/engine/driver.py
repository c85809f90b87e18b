"""The driver: one loop composing the units (recover, plan, admit, submit, collect, stop).

Each round: stop if the time limit passed or a stop was asked for; give requeued jobs back
to the planner when the provider has room; submit while slots are free and the cap admits;
poll the batches that are due and collect finished ones; sleep until the next thing is due.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING

import polars as pl

from batchata_df.cost import PriceTable
from batchata_df.engine.admission import Admission, Calibration
from batchata_df.engine.clock import Clock, SystemClock
from batchata_df.engine.collection import Collector
from batchata_df.engine.ledger import Ledger
from batchata_df.engine.planning import Planner, Repricer, Requeue
from batchata_df.engine.recovery import recover, resolve_lost, settled, spent_on_lost
from batchata_df.engine.run import (
    InFlightBatch,
    ProgressSnapshot,
    RunContext,
    RunOptions,
    RunState,
    report,
)
from batchata_df.engine.source import Feeder, JobSource
from batchata_df.engine.stopping import Stopper
from batchata_df.engine.submission import Submitter
from batchata_df.estimates import count_todo
from batchata_df.providers.base import Provider, RequestSpec
from batchata_df.state import StateStore, join_by_job

if TYPE_CHECKING:
    from batchata_df.jobindex import JobIndex

__all__ = ["Engine", "job_states_of"]


class Engine:
    """Drives provider batches for one run, checkpointing every step.

    Parameters
    ----------
    store
        The run's checkpoint store.
    providers
        Provider instances by name (``"openai"``, ...), created by the caller.
    spec
        The request spec shared by every job.
    prices
        Batch prices, for ``_cost_usd``.
    options
        Run options.
    progress
        Optional callback receiving :class:`ProgressSnapshot` s.
    stop_event
        Set it (from another thread or a signal handler) to stop gracefully.
    make_provider
        Creates a provider a recorded batch needs that this call's rows do not.
    clock
        Where time is read (a :class:`~batchata_df.engine.clock.FakeClock` in tests).
    stop_when
        A further stop rule (:attr:`RunContext.stop_when`).
    collect_only
        Send nothing: re-attach the batches earlier calls left in flight and collect them
        (``mode="auto"`` and ``"realtime"`` do this before deciding what to send). Their
        rows that end ``cancelled`` are then left for the caller to send.
    """

    def __init__(
        self,
        store: StateStore,
        providers: MutableMapping[str, Provider],
        spec: RequestSpec,
        prices: PriceTable,
        options: RunOptions,
        progress: Callable[[ProgressSnapshot], None] | None = None,
        stop_event: threading.Event | None = None,
        make_provider: Callable[[str], Provider] | None = None,
        clock: Clock | None = None,
        stop_when: Callable[[RunState, float], str | None] | None = None,
        *,
        collect_only: bool = False,
        reprice: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    ) -> None:
        self.collect_only = collect_only
        self.ctx = RunContext(
            store=store,
            providers=providers,
            spec=spec,
            prices=prices,
            options=options,
            clock=clock or SystemClock(),
            progress=progress,
            make_provider=make_provider,
            stop_when=stop_when,
            reprice=reprice,
        )
        self._repricer = Repricer(reprice)
        self.stop_event = stop_event or threading.Event()
        self.state = RunState(started=self.ctx.clock.monotonic(), waits=self.ctx.options.wait)

    def run(self, jobs: pl.DataFrame) -> pl.DataFrame:
        """Run ``jobs`` (unique ``job_id``, ``provider``, ``model``, ``prompt``, ``system``).

        Returns the latest state of every job (one row per ``job_id``; jobs never submitted
        because of ``wait=False`` have no row).
        """
        ctx, state = self.ctx, self.state
        state.total, state.jobs = jobs.height, jobs
        state.in_flight = recover(ctx, state)
        if state.in_flight:  # throughput (ETA) counts from the start for re-attached batches
            state.first_submit_at = state.started
        recorded, billed = ctx.store.snapshot()
        # Realtime requests left in flight by a crash: never sent again blindly.
        recorded = resolve_lost(ctx.store, recorded)
        terminal = settled(recorded, retry_failed=ctx.options.retry_failed)
        busy = pl.concat([f.job_ids for f in state.in_flight]) if state.in_flight else pl.Series(
            "job_id", [], dtype=pl.String
        )
        todo = jobs.filter(
            ~pl.col("job_id").is_in(terminal.get_column("job_id").implode())
            & ~pl.col("job_id").is_in(busy.implode())
        )
        if self.collect_only:
            todo = todo.clear()
        else:  # rows of re-attached batches that end cancelled go again in this call
            ctx.resend_cancelled = True
        # Rows of re-attached batches are counted when their batch is collected, even one
        # with an outcome already (a batch reopened by ``repair`` with some outcomes left).
        self._count_done(jobs, terminal.filter(~pl.col("job_id").is_in(busy.implode())))
        del busy  # the batches hold their ids packed (InFlightBatch.ids): not as text too
        count_todo(state.todo_totals, todo)
        if "expected_usd" in todo.columns:  # the estimates of what is still to send
            state.expected_usd = float(todo.get_column("expected_usd").fill_null(0.0).sum())
            state.worst_usd = float(todo.get_column("worst_usd").fill_null(0.0).sum())
        # The cap covers everything this state folder has paid for, earlier calls and
        # earlier attempts of retried jobs included.
        state.spent = float(billed.get_column("cost_usd").fill_null(0.0).sum())
        state.spent += spent_on_lost(ctx) + ctx.options.stored_unpriced_usd
        state.spent_at_start = state.spent
        admission = Admission(state, ctx.options.max_cost_usd, Calibration())
        # Re-attached batches are held at their jobs' worst case in this call's table (by a
        # join; a job not in it at the largest one) and carry their input estimates.
        admission.hold_recovered(state.in_flight, _known(jobs))
        planner = Planner(ctx.providers, ctx.spec, ctx.options.items_per_batch)
        planner.add(todo)
        # A folder with no job events yet: every event is this call's, so the final states
        # can come from the events it writes, without searching the folder for each job's
        # latest one (StateStore.written_states says when that is exact).
        ctx.store.record_jobs(text=ctx.options.answer_text)
        try:
            unsent = self._drive(planner, admission)
            known = ctx.store.written_states(jobs.get_column("job_id"))
        finally:
            ctx.store.record_jobs_stop()
        state.jobs = pl.DataFrame()  # the job table is only needed while driving
        states = _job_states(ctx.store, known=known)
        return with_unavailable(states, state.unavailable, unsent)

    def run_source(self, source: JobSource) -> pl.DataFrame | None:
        """Run the jobs of ``source``, one chunk at a time (a streaming run).

        Nothing per job of the whole input is held: each chunk is checked against the state
        folder by its own job ids and planned when the previous one has gone. Results stay
        in the state folder (read them back by job id: :func:`job_states_of`). Returns the
        jobs left unsent after failed creates with ``wait=False`` (``job_id``, ``error``),
        like :meth:`run`'s extra rows, or ``None``.
        """
        ctx, state = self.ctx, self.state
        state.in_flight = recover(ctx, state)
        if state.in_flight:
            state.first_submit_at = state.started
        # Only the cap reads what was spent: without one, resuming does not add it up.
        state.spent = (
            ctx.store.spent() + ctx.options.stored_unpriced_usd
            if ctx.options.max_cost_usd is not None
            else 0.0
        )
        state.spent_at_start = state.spent
        planner = Planner(ctx.providers, ctx.spec, ctx.options.items_per_batch)
        feeder = Feeder(ctx, state, source, planner)
        # Rows of re-attached batches that end cancelled go again in this call: from the
        # spilled chunks if read already, else from their chunk when it is read (_resend).
        ctx.resend_cancelled = True
        feeder.feed()  # the first chunk: its worst cases price re-attached batches
        # Re-attached batches hold the worst case recorded when they were sent; jobs sent
        # without a cap have none and are held at the largest worst case known. Their jobs
        # have no estimates here (none of them is sent from a chunk): calibration counts
        # their billed input only.
        admission = Admission(state, ctx.options.max_cost_usd, Calibration())
        _hold_recorded(admission, ctx.store, state.in_flight, feeder.max_worst)
        try:
            return self._drive(planner, admission, feeder)
        finally:
            feeder.index.close()  # its spilled partitions, if any

    def _drive(
        self, planner: Planner, admission: Admission, feeder: Feeder | None = None
    ) -> pl.DataFrame | None:
        """Run the loop; return the jobs left unsent (``wait=False``) after failed creates.

        Those have no event: the returned ``job_id`` / ``error`` frame gives their reason.
        With a ``feeder`` (streaming), the next chunk is planned whenever the planner runs
        dry, and on a stop every chunk not yet read ends ``cancelled`` like unsent jobs.
        """
        ctx, state, opts = self.ctx, self.state, self.ctx.options
        ledger = Ledger(ctx, state)
        requeue = Requeue(ctx.clock, ctx.backoff)
        stopper = Stopper(ctx, state, ledger, self.stop_event)

        def pause(seconds: float) -> bool:
            stopper.sleep(seconds)
            return stopper.reason() is not None

        submitter = Submitter(ctx, state, admission, ledger, pause=pause)
        collector = Collector(ctx, state, admission, ledger, requeue)
        planner.current()  # encode the first batch before the first round

        def fill() -> None:
            """Send what fits; while slots are left and the planner runs dry, read on."""
            submitter.fill(planner)
            while (
                feeder is not None
                and planner.current() is None
                and not submitter.blocked
                and len(state.in_flight) < opts.max_parallel_batches
                and feeder.feed()
            ):
                submitter.fill(planner)  # slots left: the next chunk goes this round

        stop_reason: str | None = None
        while True:
            stop_reason = stop_reason or stopper.reason()
            if stop_reason is not None:
                stopper.stop(stop_reason, planner, requeue)
                while feeder is not None and feeder.feed():  # the chunks not read yet
                    stopper.cancel_unsent(stop_reason, planner)
            elif planner.current() is None and (again := requeue.take(state.in_flight)):
                job_ids, max_items = again
                planner.add(
                    self._repricer.rows(state.job_rows, job_ids), items_per_batch=max_items
                )
            if stop_reason is None:
                self._resend(planner, feeder)
            if stop_reason is None and feeder is not None and planner.current() is None:
                feeder.feed()
            if stop_reason is None:
                self._repricer(planner, state.job_rows)
                fill()
            else:
                submitter.fill(planner)
            if submitter.blocked:
                stopper.cancel_unsent(submitter.blocked, planner, requeue)
            retrying = planner.current() is not None and submitter.retrying()
            if planner.current() is not None and not state.in_flight and not retrying:
                # Nothing in flight will free budget: what does not fit now never will.
                stopper.cancel_unsent("cost_limit", planner)
                while feeder is not None and feeder.feed():  # nor will any later chunk
                    stopper.cancel_unsent("cost_limit", planner)
            report(ctx, state, "running")
            waiting_requeue = bool(requeue.items) and stop_reason is None
            if not state.in_flight and not retrying and not waiting_requeue:
                if feeder is None or feeder.exhausted or not opts.wait or planner.current():
                    break
                continue  # a chunk with nothing to send: read the next one
            collector.poll_due()
            if stop_reason is not None and stopper.past_grace():
                # Cancelled batches that will not end (or cannot be observed) in the grace
                # period are left in flight: their rows stay pending and a later call with
                # the same state folder collects them, so nothing is paid twice.
                break
            if not opts.wait:
                # Submit now, collect later: one round of polls and submits, then return;
                # the slots the polls freed are filled, from later chunks too.
                if stop_reason is None:
                    self._resend(planner, feeder)
                    fill()
                break
            wakes = [b.next_poll for b in state.in_flight]
            if retrying:
                wakes.append(submitter.retry_at)
            if stop_reason is None and (first := requeue.next_wake(state.in_flight)) is not None:
                wakes.append(first)
            if wakes:
                stopper.sleep(max(0.0, min(wakes) - ctx.clock.monotonic()))
        report(ctx, state, "done")
        if submitter.last_error is not None and planner.current() is not None:
            # wait=False after a failed create: these jobs go with the next call.
            reason = f"provider_unavailable: {submitter.last_error}"
            unsent = planner.unsent()
            assert unsent is not None  # the planner has a current batch
            return pl.DataFrame({"job_id": unsent}).with_columns(
                pl.lit(reason).alias("error")
            )
        return None

    def _resend(self, planner: Planner, feeder: Feeder | None = None) -> None:
        """Plan again this call's rows that re-attached batches ended ``cancelled``.

        They were counted ``cancelled`` when collected; they are pending again. A streaming
        call (``feeder``) finds those of the chunks read so far in the spilled chunks; the
        others go when their chunk is read (:meth:`Feeder.resend`), never twice: a job is
        in the chunks read or in those to come, and is given to the engine once.
        """
        state = self.state
        if not state.resend:
            return
        ids = pl.concat(state.resend)
        state.resend.clear()
        rows = self._repricer.rows(state.job_rows, ids)  # a new date: priced again
        if rows.height:
            state.done["cancelled"] -= rows.height
            planner.add(rows)
        if feeder is not None:
            found = rows.get_column("job_id") if rows.height else ids.clear()
            feeder.resend(ids.filter(~ids.is_in(found.implode())))

    def _count_done(self, jobs: pl.DataFrame, terminal: pl.DataFrame) -> None:
        # A folder with no settled job (every first call) counts nothing: the filter would
        # still hash every id of the call's table (0.19 s of CPU at 1M rows; PROFILE.md,
        # tenth pass) to keep none of the no rows it filters.
        done = terminal if terminal.height == 0 else terminal.filter(
            pl.col("job_id").is_in(jobs.get_column("job_id").implode())
        )
        for status in self.state.done:
            self.state.done[status] = int((done.get_column("status") == status).sum())
        self.state.cost = float(done.get_column("cost_usd").fill_null(0.0).sum())
        self.state.cost_at_start = self.state.cost
        self.state.done_at_start = sum(self.state.done.values())


def _known(jobs: pl.DataFrame) -> pl.DataFrame:
    """The job table's worst cases and input estimates, for re-attached batches (columns)."""
    if "worst_usd" not in jobs.columns:
        return pl.DataFrame(schema={"job_id": pl.String, "worst_usd": pl.Float64})
    estimates = [c for c in ["est_input_tokens"] if c in jobs.columns]
    return jobs.select("job_id", "worst_usd", *estimates)


def with_unavailable(
    states: pl.DataFrame, unavailable: dict[str, str], unsent: pl.DataFrame | None
) -> pl.DataFrame:
    """``states`` with the reason on rows left pending because the provider was unreachable.

    Rows of a batch (or open intent) in ``unavailable`` that are still ``assigned`` get its
    reason in ``error``; ``unsent`` jobs get theirs: added when they have no event yet,
    and on their ``assigned`` row when their batch's create failed.
    """
    if unavailable:
        reasons = pl.DataFrame(
            {"batch_key": list(unavailable), "_why": list(unavailable.values())},
            schema={"batch_key": pl.String, "_why": pl.String},
        )
        states = (
            states.join(reasons, on="batch_key", how="left")
            .with_columns(
                pl.when(pl.col("status") == "assigned")
                .then(pl.col("_why"))
                .otherwise(pl.col("error"))
                .alias("error")
            )
            .drop("_why")
        )
    if unsent is not None and unsent.height:
        # A job whose create failed has an intent (``assigned``) but no batch: it is as
        # unsent as the jobs planned behind it, and says why in the same words.
        why = unsent.select("job_id", pl.col("error").alias("_unsent"))
        states = (
            states.join(why, on="job_id", how="left")
            .with_columns(
                pl.when((pl.col("status") == "assigned") & pl.col("_unsent").is_not_null())
                .then(pl.col("_unsent"))
                .otherwise(pl.col("error"))
                .alias("error")
            )
            .drop("_unsent")
        )
        states = pl.concat(
            [states, unsent.filter(~pl.col("job_id").is_in(states["job_id"].implode()))],
            how="diagonal_relaxed",
        )
    return states


def recorded_worst(store: StateStore, in_flight: list[InFlightBatch]) -> pl.DataFrame:
    """The worst case recorded for each job of ``in_flight`` when it was sent (none: absent).

    ``job_id`` and ``worst_usd``, one row per job (its last ``assigned`` event of those
    batches that recorded one).
    """
    keys = pl.Series([b.batch_key for b in in_flight], dtype=pl.String)
    if not keys.len():
        return pl.DataFrame(schema={"job_id": pl.String, "worst_usd": pl.Float64})
    return (
        store.assigned(keys)
        .filter(pl.col("est_cost_usd").is_not_null())
        .select("job_id", pl.col("est_cost_usd").cast(pl.Float64).alias("worst_usd"))
        .unique("job_id", keep="last", maintain_order=True)
    )


def _hold_recorded(
    admission: Admission, store: StateStore, in_flight: list[InFlightBatch], largest: float
) -> None:
    """Hold re-attached batches at their recorded worst cases (a streaming call's start).

    Jobs without one are held at the largest worst case known: ``largest`` (the first
    chunk's) or a recorded one. A function of its own so that the members' ``assigned``
    events it reads (one row per job of every batch re-attached: 1.6 million at 32 batches
    of 50,000) are let go before the run goes on, instead of staying referenced while it
    drives.
    """
    recorded = recorded_worst(store, in_flight)
    top = recorded.get_column("worst_usd").max()
    fallback = largest if top is None else max(largest, float(top))  # type: ignore[arg-type]
    admission.hold_recovered(in_flight, recorded, fallback=fallback)


def job_states_of(
    store: StateStore,
    job_ids: pl.Series | None = None,
    batches: pl.DataFrame | None = None,
    index: JobIndex | None = None,
    events: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The latest state of jobs (all, or ``job_ids``), cost and tokens over every attempt.

    ``batches`` is ``store.batch_state()`` when the caller already has it (a streaming run
    reads it once for all its chunks); ``index`` is ``store.job_index()``, to read only
    the row groups of ``job_ids`` (see :meth:`StateStore.snapshot`); ``events``, those
    jobs' events already read (then nothing is read).
    """
    return _job_states(store, job_ids, batches, index, events)


def _job_states(
    store: StateStore,
    job_ids: pl.Series | None = None,
    batches: pl.DataFrame | None = None,
    index: JobIndex | None = None,
    events: pl.DataFrame | None = None,
    *,
    known: tuple[pl.DataFrame, pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """The latest state of every job, with cost and tokens added up over every attempt.

    ``known`` is the ``(latest, billed)`` pair of :meth:`StateStore.snapshot` when the
    caller has it (:meth:`StateStore.written_states`): then the folder is not read.
    """
    latest, billed = known if known is not None else store.snapshot(job_ids, index, events)
    state = join_by_job(
        latest.drop("cost_usd", "input_tokens", "output_tokens", "reasoning_tokens"), billed
    )
    if state.get_column("provider_batch_id").null_count() == 0:
        return state  # every job has its batch's id already: nothing to take from batches
    if batches is None:
        batches = store.batch_state()
    if batches.height == 0:
        return state
    # Jobs in flight have only their "assigned" event, written before the provider gave
    # the batch its id: take the id from the batch events.
    ids = batches.select("batch_key", pl.col("provider_batch_id").alias("_pbid"))
    return (
        state.join(ids, on="batch_key", how="left")
        .with_columns(pl.coalesce("provider_batch_id", "_pbid").alias("provider_batch_id"))
        .drop("_pbid")
    )
