"""What the engine's units share: options, batch phases, and one run's context and state.

:class:`RunContext` is what a run works *with* (store, providers, spec, prices, options,
clock); :class:`RunState` is what it *changes* (the job table, the batches in flight, money
spent and held, progress counters). Every unit takes both; nothing else is shared.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import polars as pl

from batchata_df.cost import PriceTable
from batchata_df.engine.clock import Backoff, Clock
from batchata_df.estimates import TodoTotals
from batchata_df.jobs import id_ints, ids_of_ints
from batchata_df.providers.base import BatchPoll, Provider, ProviderState, RequestSpec
from batchata_df.state import TERMINAL_JOB, StateStore

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "IN_FLIGHT",
    "BatchPhase",
    "InFlightBatch",
    "PackedIds",
    "ProgressSnapshot",
    "RunContext",
    "RunOptions",
    "RunState",
    "batch_word",
    "failpoint",
    "report",
]


class BatchPhase(enum.StrEnum):
    """Our view of a provider batch (the ``status`` of batch events)."""

    INTENT = "intent"
    SUBMITTED = "submitted"
    CANCEL_REQUESTED = "cancel_requested"
    COLLECTED = "collected"
    ABANDONED = "abandoned"


RESIDUE_USD = 1e-12
"""Below this, a reservation left after its releases is the float sum's rounding: none.
(Admission's comparisons allow the same: ``engine.admission``, ``engine.realtime``.)"""

IN_FLIGHT = (BatchPhase.SUBMITTED.value, BatchPhase.CANCEL_REQUESTED.value)


@dataclass(frozen=True)
class RunOptions:
    """Run-level knobs of :func:`~batchata_df.batch_llm` that the engine honours."""

    items_per_batch: int | None = None
    max_parallel_batches: int = 8
    wait: bool = True
    time_limit_s: float | None = None
    retry_failed: bool = False
    max_cost_usd: float | None = None
    stored_unpriced_usd: float = 0.0
    """What the state folder's answers stored without a cost cost at ``prices=``
    (:func:`batchata_df.validate.check_spend_is_priced`, read with the writer lock held):
    the cap counts it as spent, beside the costs the folder stores."""
    cancel_grace_s: float = 900.0
    """After a stop, how long to wait for cancelled batches to end (OpenAI: up to 10 min)."""
    provider_patience_s: float = 600.0
    """How long a provider may stay unreachable (creates, lookups, polls or downloads
    failing after the SDKs' own retries) before this call gives up on what it could not
    do: unsent rows end ``cancelled: provider_unavailable: <last error>``, rows whose batch
    may exist stay ``pending`` with ``provider_unavailable: <last error>``."""
    poll_initial_s: float = 1.0
    poll_max_s: float = 60.0
    poll_factor: float = 1.6
    answer_text: bool = True
    """Whether the final states the engine returns carry the answers' text (``answer``,
    ``raw``). ``False``: where the validation decoded them (a
    :data:`~batchata_df.state.DECODED` column), the text may come as nulls, and is not held
    while the run goes on (~0.13 GB at 1M rows); ``batch_llm`` asks for it only for
    ``keep_raw`` or answers it does not decode."""


@dataclass(frozen=True)
class ProgressSnapshot:
    """What a progress callback receives, after every poll round and state change."""

    total: int
    completed: int
    failed: int
    cancelled: int
    pending: int
    batches: dict[str, int]
    """This call's provider batches by state, in one vocabulary for every provider
    (:func:`batch_word`): ``submitted``, ``running``, ``cancelling``, ``ended`` (results
    not downloaded yet), ``cancelled``, ``expired``, ``failed`` and ``collected`` (its rows
    counted). The provider's own word (``in_progress``, ``JOB_STATE_SUCCEEDED``, ...) is
    the ``provider_status`` of the folder's batch events."""
    cost_usd: float
    elapsed_s: float
    phase: str
    activity: str = ""
    """The local step under way, e.g. ``"uploading batch 3/20 (180.2 MB)"``."""
    projected_cost_usd: float | None = None
    """Spent so far plus the remaining jobs at the average actual cost per finished job."""
    in_flight_done: int = 0
    """Requests the providers report finished inside batches not yet collected (their
    request counts: OpenAI ``request_counts``, Gemini ``batchStats``; Anthropic reports them
    only when a whole batch ends), an ended batch's until its rows are counted, so
    ``completed + failed + cancelled + in_flight_done`` never goes back within a call.
    Counted in ``pending`` until their batch is collected."""
    eta_s: float | None = None
    """Seconds left at the throughput observed since this call's first submit; ``None``
    until something has finished (and while stopping)."""
    stop_reason: str | None = None
    """Why the run stopped or is stopping (``"interrupted"``, ``"time_limit"``, ...)."""
    cache_saved_usd: float = 0.0
    """What the finished jobs would have cost more without the prompt cache."""
    reserved_usd: float = 0.0
    """The worst case the cap holds for batches in flight (``max_tokens`` per request)."""
    cap_waiting: int = 0
    """Requests of the next batch the cap holds back until reservations free up."""
    cap_rounds: int = 0
    """Times the cap made requests wait for batches in flight (the run was serialised)."""
    expected_cost_usd: float | None = None
    """Expected cost of what this call sends (with a cap or estimates; else ``None``)."""
    worst_case_usd: float | None = None
    """The worst case of what this call sends: every answer using ``max_tokens``."""
    realtime_in_flight: int | None = None
    """Realtime requests in flight (``mode="realtime"``, or the realtime phase of
    ``mode="auto"``); ``None`` when nothing is sent realtime."""
    earlier_cost_usd: float = 0.0
    """The part of ``cost_usd`` earlier calls paid: this call's rows they answered (a
    resume). This call's own spend is ``cost_usd - earlier_cost_usd``."""
    waited: bool = True
    """``False`` for a ``wait=False`` call: it submitted and returned without waiting."""
    unknown_billed: int = 0
    """This call's realtime attempts answered 5xx or lost in flight: the provider may have
    billed them, with no cost known (not in ``cost_usd``)."""
    unknown_billed_usd: float = 0.0
    """Their worst case, as ``max_cost_usd`` counts them (0 for those with none: a call
    without a cap or estimates)."""
    unknown_billed_unpriced: int = 0
    """Those of them with no worst case (sent without a cap or estimates)."""


def batch_word(poll: BatchPoll, batch: InFlightBatch) -> str:
    """A polled batch's state in the words every provider's batches are counted in.

    Each provider has its own (OpenAI ``validating``/``in_progress``/``completed``,
    Anthropic ``in_progress``/``ended``, Gemini ``JOB_STATE_PENDING``/``JOB_STATE_SUCCEEDED``):
    counted as they come, a mixed run showed ``JOB_STATE_SUCCEEDED 4, completed 3, ended 3``
    and the seed-style callback counted none of them finished. A batch still running after
    this call asked to cancel it is ``cancelling``; a collected one is ``collected``.

    Examples
    --------
    >>> b = InFlightBatch("k", "gemini", "m", "batches/1",
    ...                   PackedIds.of(pl.Series([], dtype=pl.String)), Backoff(1.0, 60.0, 1.6))
    >>> batch_word(BatchPoll(ProviderState.RUNNING, "JOB_STATE_PENDING"), b)
    'running'
    >>> batch_word(BatchPoll(ProviderState.ENDED, "JOB_STATE_SUCCEEDED"), b)
    'ended'
    >>> b.cancel_reason = "interrupted"
    >>> batch_word(BatchPoll(ProviderState.RUNNING, "cancelling"), b)
    'cancelling'
    """
    if poll.state is ProviderState.RUNNING and batch.cancel_reason is not None:
        return "cancelling"
    return poll.state.value


@dataclass(frozen=True, eq=False)
class PackedIds:
    """A batch's job ids as held while it is in flight: 12 bytes an id.

    Every batch in flight holds its ids from its submission to its collection, a day at
    most: up to 3.2 million ids at Anthropic's queue limit. As Polars text an id takes 40
    bytes (a 16-byte view and its 24 digits); as the 96-bit value of
    :func:`~batchata_df.jobs.id_ints`, 12 (benchmarks/PROFILE.md, twenty-ninth pass). Ids
    that are not 24 lowercase hex digits (names some tests give) are kept as text.

    Examples
    --------
    >>> ids = pl.Series("job_id", ["0123456789abcdef00000001", "ffffffffffffffffffffffff"])
    >>> packed = PackedIds.of(ids)
    >>> len(packed), packed.text is None, packed.series().equals(ids)
    (2, True, True)
    >>> PackedIds.of(pl.Series(["a", "b"])).series().to_list()
    ['a', 'b']
    """

    hi: np.ndarray
    lo: np.ndarray
    text: pl.Series | None = None
    """The ids as given, when they are not all :func:`~batchata_df.jobs.job_ids`' form."""

    @classmethod
    def of(cls, ids: pl.Series) -> PackedIds:
        """Pack ``ids`` (~90 ns an id: a regular expression and two integer parses)."""
        ints = id_ints(ids)
        if ints is None:
            import numpy as np

            none = np.empty(0, dtype=np.uint64)
            return cls(none, none.astype(np.uint32), ids.alias("job_id"))
        return cls(*ints)

    def __len__(self) -> int:
        return int(self.hi.size) if self.text is None else self.text.len()

    def series(self) -> pl.Series:
        """The ids as a ``job_id`` text Series, in their order (decoded at each call)."""
        return ids_of_ints(self.hi, self.lo) if self.text is None else self.text


@dataclass
class InFlightBatch:
    """A provider batch of this run that has an id and has not been collected yet."""

    batch_key: str
    provider: str
    model: str
    provider_batch_id: str
    ids: PackedIds
    """Its jobs' ids (:attr:`job_ids` as text)."""
    backoff: Backoff
    next_poll: float = 0.0
    cancel_reason: str | None = None
    status: str = "submitted"
    reserved: float = 0.0
    """Worst-case cost held against the cap until the batch's actual cost is known."""
    est_input: pl.Series | None = None
    """Estimated input tokens of each job, in ``job_ids``' order (``None``: no estimates);
    calibration compares them with the billed ones when the batch is collected."""
    failures: int = 0
    """Consecutive failed polls or downloads."""
    unreachable_since: float | None = None
    """Clock reading of the first of the current run of failed polls or downloads."""
    recovered: bool = False
    """Re-attached at the call's start (an earlier call sent it): its rows that end
    ``cancelled`` are this call's to send again (:attr:`RunContext.resend_cancelled`)."""
    sent_on: dt.date | None = None
    """The date (:func:`batchata_df.models.today`) it was sent, from its ``submitted`` event
    (``None``: not recorded, e.g. an intent rebuilt by ``repair``): its rows are priced at
    most at its window's last day (:meth:`~batchata_df.engine.ledger.Ledger.terminal`)."""
    adopted: bool = False
    """Found at the provider by a lookup that can find another process's batch (Anthropic's,
    by size and time alone: :attr:`Provider.find_is_exact` false), after a crash
    (:func:`~batchata_df.engine.recovery.recover`), after a create whose answer was lost,
    or by ``repair``: it may be someone else's, and is abandoned when its results hold
    none of our requests. A batch answered by its create, or found by our own tag, is ours
    whatever its result lines' ids say."""

    @property
    def job_ids(self) -> pl.Series:
        """Its jobs' ids as text, decoded at each call (~40 ns an id): keep the Series."""
        return self.ids.series()

    @property
    def n_jobs(self) -> int:
        """How many jobs it holds."""
        return len(self.ids)


@dataclass
class RunContext:
    """What one run works with; fixed for the run (a provider may be added on recovery)."""

    store: StateStore
    providers: MutableMapping[str, Provider]
    spec: RequestSpec
    prices: PriceTable
    options: RunOptions
    clock: Clock
    progress: Callable[[ProgressSnapshot], None] | None = None
    make_provider: Callable[[str], Provider] | None = None
    stop_when: Callable[[RunState, float], str | None] | None = None
    """A further stop rule, asked every round with the state and the clock's reading: a
    reason to stop (``mode="auto"``: ``"deadline"``), or ``None``."""
    reprice: Callable[[pl.DataFrame], pl.DataFrame] | None = None
    """The cap's worst case of some jobs as of today (``frame.with_estimates``), or None
    (no cap). A call runs for days; a batch it sends on a later day may run into a price
    change or a routing to a successor its first day's window did not reach: when the
    date moves, the engines price the jobs not sent yet again with it
    (:class:`~batchata_df.engine.planning.Repricer`)."""
    resend_cancelled: bool = False
    """Whether rows of re-attached batches that end ``cancelled`` are planned again in this
    call (:attr:`RunState.resend`): an earlier call's stop cancelled them, nothing answered
    or billed them, and the README promises that the next call sends them."""

    def backoff(self) -> Backoff:
        """A fresh polling backoff with the run's settings."""
        o = self.options
        return Backoff(o.poll_initial_s, o.poll_max_s, o.poll_factor)


@dataclass
class RunState:
    """Everything one run changes as it goes, shared by the engine's units."""

    started: float
    """The clock's reading when the run began (time limit, elapsed time)."""
    jobs: pl.DataFrame = field(default_factory=pl.DataFrame)
    """The job table, while driving (requeued jobs are planned again from it)."""
    in_flight: list[InFlightBatch] = field(default_factory=list)
    known_ids: set[str] = field(default_factory=set)
    """Every provider batch id this state folder has recorded, kept in memory so that a
    submit never re-reads the batch parts (that would grow with the run)."""
    spent: float = 0.0
    """Billed so far by this state folder, earlier calls included."""
    reserved: float = 0.0
    """Worst case held for batches in flight (and the one being created)."""
    total: int = 0
    done: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TERMINAL_JOB, 0))
    cost: float = 0.0
    """Cost of this call's jobs (the progress display's figure), earlier calls' answers to
    them included."""
    cost_at_start: float = 0.0
    """The part of :attr:`cost` paid by earlier calls (answers this call found settled)."""
    waits: bool = True
    """``wait=True``: the call waits for its batches (``False``: it submits and returns)."""
    cache_saved: float = 0.0
    """What this call's jobs would have cost more without the prompt cache."""
    cap_waiting: int = 0
    """Jobs of the next planned batch that the cap holds back right now (0: none)."""
    cap_rounds: int = 0
    """Times the cap made planned jobs wait for batches in flight (serialised rounds)."""
    cap_first_fit: int | None = None
    """Jobs in flight or admitted when the cap first held jobs back (what fit at once)."""
    todo_totals: dict[tuple[str, str], TodoTotals] = field(default_factory=dict)
    """Per (provider, model), the estimates of those jobs added up (a streaming run's
    chunks as they are read): what the cap's warning advises from
    (:func:`~batchata_df.estimates.count_todo`)."""
    resend: list[pl.Series] = field(default_factory=list)
    """Job ids of re-attached batches collected ``cancelled``, for the driver to plan again
    (:attr:`RunContext.resend_cancelled`)."""
    spent_at_start: float = 0.0
    """What the state folder had billed when this call started."""
    unknown_billed: int = 0
    """Realtime attempts of this call answered 5xx or lost: possibly billed, no cost known
    (:attr:`ProgressSnapshot.unknown_billed`)."""
    unknown_billed_usd: float = 0.0
    """Their worst case (what the cap counts for them)."""
    unknown_billed_unpriced: int = 0
    """Those of them sent without a worst case (no cap or estimates)."""
    expected_usd: float | None = None
    """Expected cost of the jobs this call sends (estimates, :mod:`batchata_df.estimates`)."""
    worst_usd: float | None = None
    """Their worst case (``max_tokens`` of output each): what the cap would reserve."""
    batch_status: dict[str, str] = field(default_factory=dict)
    activity: str = ""
    unavailable: dict[str, str] = field(default_factory=dict)
    """``batch_key`` -> ``provider_unavailable: <last error>`` for batches (or open
    intents) whose rows stay pending because the provider could not be reached."""
    in_flight_finished: dict[str, int] = field(default_factory=dict)
    """Per batch not yet collected, the requests its provider reports finished (progress):
    kept after the batch ends until its rows are counted in ``done`` (``Ledger.terminal``), so
    the display's finished count never goes back while results download."""
    first_submit_at: float | None = None
    """When this call first submitted (or re-attached) a batch: throughput counts from it."""
    done_at_start: int = 0
    """Jobs already ended before this call (they say nothing about throughput)."""
    stop_reason: str | None = None
    realtime_in_flight: int | None = None
    """Realtime requests in flight (``None``: this run sends none realtime)."""
    lookup: Callable[[pl.Series], pl.DataFrame] | None = None
    """Where job rows come from when ``jobs`` is not the whole table (a streaming run's
    :class:`~batchata_df.engine.source.JobSource`); see :meth:`job_rows`."""

    def job_rows(self, job_ids: pl.Series) -> pl.DataFrame:
        """The job table's rows of ``job_ids`` (requeued jobs, a refused request)."""
        if self.lookup is not None:
            return self.lookup(job_ids)
        if self.jobs.height == 0:
            return self.jobs
        return self.jobs.filter(pl.col("job_id").is_in(job_ids.implode()))

    def release(self, amount: float) -> None:
        """Give back a reservation (the batch ended, was refused, or never got created).

        What is left below :data:`RESIDUE_USD` is the float sum's rounding (the same
        amounts added and taken back in another order), not money: nothing is held.

        Examples
        --------
        >>> state = RunState(started=0.0)
        >>> for usd in (0.1, 0.2, 0.3):
        ...     state.reserved += usd
        >>> for usd in (0.3, 0.1, 0.2):
        ...     state.release(usd)
        >>> state.reserved
        0.0
        """
        left = self.reserved - amount
        self.reserved = left if left > RESIDUE_USD else 0.0

    def snapshot(self, phase: str, now: float) -> ProgressSnapshot:
        """The progress figures at ``now`` (a clock reading)."""
        statuses: dict[str, int] = {}
        for s in self.batch_status.values():
            statuses[s] = statuses.get(s, 0) + 1
        finished = sum(self.done.values())
        projected = None
        if self.done["completed"] + self.done["failed"] > 0:
            per_job = self.cost / (self.done["completed"] + self.done["failed"])
            projected = self.cost + per_job * (self.total - finished)
        in_flight_done = min(sum(self.in_flight_finished.values()), self.total - finished)
        eta = _eta(
            progressed=finished - self.done_at_start + in_flight_done,
            left=self.total - finished - in_flight_done,
            seconds=None if self.first_submit_at is None else now - self.first_submit_at,
        )
        done = phase == "done"
        return ProgressSnapshot(
            total=self.total,
            completed=self.done["completed"],
            failed=self.done["failed"],
            cancelled=self.done["cancelled"],
            pending=self.total - finished,
            batches=statuses,
            cost_usd=self.cost,
            elapsed_s=now - self.started,
            phase=phase,
            activity="" if phase == "done" else self.activity,
            projected_cost_usd=projected,
            in_flight_done=0 if done else in_flight_done,
            eta_s=None if done or self.stop_reason else eta,
            stop_reason=self.stop_reason,
            cache_saved_usd=self.cache_saved,
            reserved_usd=0.0 if done else self.reserved,
            cap_waiting=0 if done else self.cap_waiting,
            cap_rounds=self.cap_rounds,
            expected_cost_usd=self.expected_usd,
            worst_case_usd=self.worst_usd,
            realtime_in_flight=self.realtime_in_flight,
            unknown_billed=self.unknown_billed,
            unknown_billed_usd=self.unknown_billed_usd,
            unknown_billed_unpriced=self.unknown_billed_unpriced,
            earlier_cost_usd=self.cost_at_start,
            waited=self.waits,
        )

    def possibly_billed(self, worst: float | None) -> None:
        """Count one realtime attempt answered 5xx or lost, for the display.

        ``worst``: its recorded worst case (``None``: none known). The cap counts its held
        worst case in ``spent`` apart.
        """
        self.unknown_billed += 1
        if worst is None:
            self.unknown_billed_unpriced += 1
        else:
            self.unknown_billed_usd += worst


def _eta(*, progressed: int, left: int, seconds: float | None) -> float | None:
    """Seconds left at the observed rate; ``None`` until there is a rate to go by.

    Examples
    --------
    >>> _eta(progressed=50, left=150, seconds=10.0)
    30.0
    >>> _eta(progressed=0, left=150, seconds=10.0) is None
    True
    """
    if seconds is None or seconds <= 0 or progressed <= 0:
        return None
    return max(left, 0) * seconds / progressed


def report(ctx: RunContext, state: RunState, phase: str) -> None:
    """Send a progress snapshot to the run's callback, if any."""
    if ctx.progress is not None:
        ctx.progress(state.snapshot(phase, ctx.clock.monotonic()))


def failpoint(name: str) -> None:
    """Die here if ``BATCHATA_DF_FAILPOINT`` names this point (crash-recovery tests)."""
    if os.environ.get("BATCHATA_DF_FAILPOINT") == name:
        os._exit(75)
