"""The batch lifecycle: plan -> (admit) -> submit -> poll -> collect, and its driver.

The pure parts -- splitting jobs into provider batches, turning provider results into job
outcomes, the polling backoff -- are plain functions without I/O, unit-tested directly. The
:class:`Engine` is the thin driver that calls a :class:`~batchata_df.providers.base.Provider`
and records every step in the :class:`~batchata_df.state.StateStore` *before* acting on it:

* an ``intent`` batch event and ``assigned`` job events are written before ``submit``;
* the provider's batch id is written right after ``submit`` returns;
* on resume, an ``intent`` without an id is looked up at the provider (``find``) before
  anything else is submitted, so a crash between "created" and our checkpoint never makes
  us pay twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl

from batchata_df.cost import PriceTable, cost_expr, with_usage_columns
from batchata_df.errors import ProviderError
from batchata_df.providers.base import (
    BatchPoll,
    BatchTag,
    Provider,
    ProviderState,
    RequestSpec,
)
from batchata_df.state import TERMINAL_JOB, StateStore

__all__ = [
    "Backoff",
    "BatchPhase",
    "Engine",
    "ProgressSnapshot",
    "RunOptions",
    "outcomes_to_events",
    "busy_jobs",
    "plan_batches",
    "settled",
    "split_sizes",
]


class BatchPhase(enum.StrEnum):
    """Our view of a provider batch (the ``status`` of batch events)."""

    INTENT = "intent"
    SUBMITTED = "submitted"
    CANCEL_REQUESTED = "cancel_requested"
    COLLECTED = "collected"
    ABANDONED = "abandoned"


IN_FLIGHT = (BatchPhase.SUBMITTED.value, BatchPhase.CANCEL_REQUESTED.value)
RATE_LIMIT_PATIENCE_S = 900.0
"""How long a request refused for a provider queue limit keeps waiting for room."""


@dataclass(frozen=True)
class RunOptions:
    """Run-level knobs of :func:`~batchata_df.batch_llm` that the engine honours."""

    items_per_batch: int | None = None
    max_parallel_batches: int = 8
    wait: bool = True
    time_limit_s: float | None = None
    retry_failed: bool = False
    max_cost_usd: float | None = None
    cancel_grace_s: float = 900.0
    submit_patience_s: float = 600.0
    """How long creates may keep failing (after the SDKs' own retries) before the unsent
    rows of this call end ``cancelled: provider_unavailable``."""
    """After a stop, how long to wait for cancelled batches to end (OpenAI: up to 10 min)."""
    poll_initial_s: float = 1.0
    poll_max_s: float = 60.0
    poll_factor: float = 1.6


@dataclass(frozen=True)
class ProgressSnapshot:
    """What a progress callback receives, after every poll round and state change."""

    total: int
    completed: int
    failed: int
    cancelled: int
    pending: int
    batches: dict[str, int]
    cost_usd: float
    elapsed_s: float
    phase: str
    activity: str = ""
    """The local step under way, e.g. ``"uploading batch 3/20 (180.2 MB)"``."""
    projected_cost_usd: float | None = None
    """Spent so far plus the remaining jobs at the average actual cost per finished job."""


# -- pure logic --------------------------------------------------------------------------------


def split_sizes(sizes: pl.Series, *, max_requests: int, max_bytes: int) -> list[tuple[int, int]]:
    """Split consecutive items into ``[start, end)`` ranges by count and by bytes.

    Every range holds at most ``max_requests`` items whose sizes sum to at most
    ``max_bytes``; an item larger than ``max_bytes`` on its own gets a range of its own (the
    provider will reject it, which fails that row only).

    Examples
    --------
    >>> split_sizes(pl.Series([4, 4, 4, 4, 4]), max_requests=2, max_bytes=100)
    [(0, 2), (2, 4), (4, 5)]
    >>> split_sizes(pl.Series([6, 6, 6]), max_requests=10, max_bytes=12)
    [(0, 2), (2, 3)]
    """
    n = sizes.len()
    cum = pl.concat([pl.Series([0], dtype=pl.Int64), sizes.cast(pl.Int64).cum_sum()])
    out: list[tuple[int, int]] = []
    start = 0
    while start < n:
        limit = int(cum[start]) + max_bytes
        by_bytes = int(cum.search_sorted(limit, side="right")) - 1
        end = max(min(start + max_requests, by_bytes, n), start + 1)
        out.append((start, end))
        start = end
    return out


class Backoff:
    """Polling intervals growing geometrically from ``initial`` to ``maximum`` seconds.

    Examples
    --------
    >>> b = Backoff(1.0, 60.0, 2.0)
    >>> [b.next() for _ in range(8)]
    [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    """

    def __init__(self, initial: float, maximum: float, factor: float) -> None:
        self.initial, self.maximum, self.factor = initial, maximum, factor
        self._current = initial

    def next(self) -> float:
        """The next interval."""
        value = min(self._current, self.maximum)
        self._current = min(self._current * self.factor, self.maximum)
        return value


def outcomes_to_events(
    members: pl.DataFrame,
    results: pl.DataFrame,
    poll: BatchPoll,
    spec: RequestSpec,
    *,
    cancel_reason: str | None = None,
) -> pl.DataFrame:
    """Turn a finished batch's provider results into terminal job events.

    ``members`` lists the batch's ``job_id`` s; a member with no result line ends according
    to the batch's final state, so no row is ever lost. Answers are validated against the
    schema: a succeeded request whose answer does not validate ends ``failed``.
    """
    joined = members.select("job_id").join(results, on="job_id", how="left")
    if "citations" not in joined.columns:  # results built without the optional column
        joined = joined.with_columns(pl.lit(None, dtype=pl.String).alias("citations"))
    succeeded = joined.filter(pl.col("outcome") == "succeeded")
    canonical, errors = spec.schema.validate(succeeded.get_column("text").to_list())
    max_tokens = spec.params.get("max_tokens")
    validated = succeeded.select("job_id").with_columns(
        pl.Series("answer", canonical, dtype=pl.String),
        pl.Series("verr", errors, dtype=pl.String),
    )
    joined = joined.join(validated, on="job_id", how="left")
    if poll.state is ProviderState.FAILED:
        missing_error = f"batch_failed: the provider rejected the batch: {poll.detail}"
        missing_status = "failed"
    elif poll.state is ProviderState.CANCELLED:
        missing_error = f"cancelled: {cancel_reason or 'provider_cancelled'}"
        missing_status = "cancelled"
    elif poll.state is ProviderState.EXPIRED:
        missing_error = "expired: the provider did not finish this request in its window"
        missing_status = "failed"
    else:
        missing_error = "missing_result: the provider returned no result for this request"
        missing_status = "failed"
    truncated = pl.col("truncated").fill_null(False)
    status = (
        pl.when(pl.col("outcome").is_null())
        .then(pl.lit(missing_status))
        .when(pl.col("outcome") == "canceled")
        .then(pl.lit("cancelled"))
        .when((pl.col("outcome") == "succeeded") & pl.col("verr").is_null())
        .then(pl.lit("completed"))
        .otherwise(pl.lit("failed"))
    )
    truncated_msg = (
        f"truncated: the answer hit max_tokens={max_tokens} before it was complete; "
        "raise params={'max_tokens': ...}"
    )
    error = (
        pl.when(pl.col("outcome").is_null())
        .then(pl.lit(missing_error))
        .when(pl.col("outcome") == "canceled")
        .then(pl.lit(f"cancelled: {cancel_reason or 'provider_cancelled'}"))
        .when((pl.col("outcome") == "succeeded") & pl.col("verr").is_not_null() & truncated)
        .then(pl.lit(truncated_msg))
        .when(pl.col("outcome") == "succeeded")
        .then(pl.col("verr"))
        .otherwise(pl.col("error"))
    )
    return joined.select(
        "job_id",
        status.alias("status"),
        error.alias("error"),
        pl.when(status == "completed").then(pl.col("answer")).alias("answer"),
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "cache_write_tokens",
        pl.when(status == "completed").then(pl.col("citations")).alias("citations"),
    )


def settled(state: pl.DataFrame, *, retry_failed: bool) -> pl.DataFrame:
    """The jobs (latest events) a new call must not send again.

    Completed jobs, and failed ones unless ``retry_failed``. Cancelled jobs (cost cap, time
    limit, interrupt, provider cancel) got no answer and were not billed for it, so a later
    call sends them again. The dry run uses the same rule.
    """
    keep = ["completed"] if retry_failed else ["completed", "failed"]
    return state.filter(pl.col("status").is_in(keep))


def busy_jobs(store: StateStore, state: pl.DataFrame) -> pl.DataFrame:
    """Jobs whose latest event (``state``) puts them in a batch that may still be running.

    Columns ``job_id`` and ``est_cost_usd`` (the worst case held for it when it was sent).
    Unresolved intents count as busy: offline, we cannot tell whether they reached the
    provider.
    """
    batches = store.batch_state()
    if batches.height == 0:
        return pl.DataFrame(schema={"job_id": pl.String, "est_cost_usd": pl.Float64})
    open_keys = batches.filter(
        pl.col("status").is_in([*IN_FLIGHT, BatchPhase.INTENT.value])
    ).get_column("batch_key")
    return state.filter(
        (pl.col("status") == "assigned") & pl.col("batch_key").is_in(open_keys.implode())
    ).select("job_id", "est_cost_usd")


# -- the driver ---------------------------------------------------------------------------------


@dataclass
class _Planned:
    batch_key: str
    provider: str
    model: str
    job_ids: pl.Series
    lines: pl.Series
    n_bytes: int
    worst: pl.Series
    """Worst-case cost in USD of each job (``max_tokens`` as output)."""
    has_estimates: bool = False
    est_input_usd: pl.Series | None = None
    """The input part of ``worst``, which calibration scales by actual/estimated tokens."""

    def head(self, n: int) -> _Planned:
        """The first ``n`` jobs as a batch of their own."""
        return _Planned(
            _new_batch_key(), self.provider, self.model, self.job_ids.head(n),
            self.lines.head(n), int(self.lines.head(n).str.len_bytes().sum()) + n,
            self.worst.head(n),
            self.has_estimates,
            None if self.est_input_usd is None else self.est_input_usd.head(n),
        )

    def tail(self, n: int) -> _Planned:
        """All but the first ``n`` jobs, as a batch of their own."""
        rest = self.job_ids.len() - n
        return _Planned(
            _new_batch_key(), self.provider, self.model, self.job_ids.tail(rest),
            self.lines.tail(rest), int(self.lines.tail(rest).str.len_bytes().sum()) + rest,
            self.worst.tail(rest),
            self.has_estimates,
            None if self.est_input_usd is None else self.est_input_usd.tail(rest),
        )


@dataclass
class _InFlight:
    batch_key: str
    provider: str
    model: str
    provider_batch_id: str
    job_ids: pl.Series
    backoff: Backoff
    next_poll: float = 0.0
    cancel_reason: str | None = None
    status: str = "submitted"
    reserved: float = 0.0
    """Worst-case cost held against the cap until the batch's actual cost is known."""
    failures: int = 0
    """Consecutive failed polls or downloads."""


@dataclass
class _Requeued:
    """Jobs of a batch the provider refused for its queue limit, to plan again."""

    job_ids: pl.Series
    provider: str
    model: str
    max_items: int
    gate: int
    """Plan them again once fewer than this many batches of the model are in flight."""
    not_before: float


def _rate_limited(poll: BatchPoll) -> bool:
    """Whether a failed batch was refused for a queue/rate limit (nothing ran)."""
    detail = (poll.detail or "").lower()
    return "token_limit_exceeded" in detail or "rate_limit" in detail


@dataclass
class _Counters:
    total: int = 0
    done: dict[str, int] = field(default_factory=lambda: {s: 0 for s in TERMINAL_JOB})
    cost: float = 0.0


def _failpoint(name: str) -> None:
    """Die here if ``BATCHATA_DF_FAILPOINT`` names this point (crash-recovery tests)."""
    if os.environ.get("BATCHATA_DF_FAILPOINT") == name:
        os._exit(75)


def _new_batch_key() -> str:
    return f"b{time.time_ns():x}{secrets.token_hex(3)}"


def plan_batches(
    todo: pl.DataFrame,
    providers: Mapping[str, Provider],
    spec: RequestSpec,
    items_per_batch: int | None,
) -> Iterator[_Planned]:
    """Yield provider batches lazily: lines are encoded only when a batch is needed.

    Jobs are grouped by provider and model (one model per provider batch), encoded in
    slices of the provider's count limit, and each slice split by count and bytes.
    """
    for (provider_name, model), group in todo.group_by(
        ["provider", "model"], maintain_order=True
    ):
        provider = providers[str(provider_name)]
        limit = provider.max_requests
        if items_per_batch:
            limit = min(limit, items_per_batch)
        overhead = provider.line_overhead()
        if "payload_bytes" in group.columns:
            # Big per-job payloads (files): bound each slice by bytes before expanding it.
            slices = split_sizes(
                group.get_column("payload_bytes"),
                max_requests=provider.max_requests,
                max_bytes=provider.max_bytes,
            )
        else:
            slices = [
                (o, min(o + provider.max_requests, group.height))
                for o in range(0, group.height, provider.max_requests)
            ]
        for offset, stop in slices:
            chunk = group.slice(offset, stop - offset)
            if spec.prepare is not None:
                chunk = spec.prepare(chunk)
            lines = provider.encode(chunk, spec)
            worst = (
                chunk.get_column("worst_usd")
                if "worst_usd" in chunk.columns
                else pl.Series("worst_usd", [0.0] * chunk.height, dtype=pl.Float64)
            )
            sizes = lines.str.len_bytes().cast(pl.Int64) + overhead
            for start, end in split_sizes(sizes, max_requests=limit, max_bytes=provider.max_bytes):
                yield _Planned(
                    batch_key=_new_batch_key(),
                    provider=str(provider_name),
                    model=str(model),
                    job_ids=chunk.get_column("job_id").slice(start, end - start),
                    lines=lines.slice(start, end - start),
                    n_bytes=int(sizes.slice(start, end - start).sum()),
                    worst=worst.slice(start, end - start),
                    has_estimates="worst_usd" in chunk.columns,
                    est_input_usd=(
                        chunk.get_column("est_input_usd").slice(start, end - start)
                        if "est_input_usd" in chunk.columns
                        else None
                    ),
                )


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
    """

    def __init__(
        self,
        store: StateStore,
        providers: Mapping[str, Provider],
        spec: RequestSpec,
        prices: PriceTable,
        options: RunOptions,
        progress: Callable[[ProgressSnapshot], None] | None = None,
        stop_event: threading.Event | None = None,
        make_provider: Callable[[str], Provider] | None = None,
    ) -> None:
        self.store = store
        self.providers = providers
        self.spec = spec
        self.prices = prices
        self.options = options
        self.progress = progress
        self.stop_event = stop_event or threading.Event()
        self.make_provider = make_provider
        self._stopped_at: float | None = None
        self._started = time.monotonic()
        self._counters = _Counters()
        self._batch_status: dict[str, str] = {}
        self._spent = 0.0
        self._reserved = 0.0
        self._worst: dict[str, float] = {}
        self._est_input: dict[str, int] = {}
        self._calibration: dict[tuple[str, str], tuple[int, int]] = {}
        self._input_ratio: dict[tuple[str, str], float] = {}
        self._activity = ""
        self._n_submitted = 0
        self._requeue: list[_Requeued] = []
        self._first_submit_failure: float | None = None
        # Every provider batch id this state folder has recorded, kept up to date in memory
        # so that a submit never re-reads the batch parts (that would grow with the run).
        self._known_ids: set[str] = set()
        self._rate_limited_since: dict[tuple[str, str], float] = {}
        self._rate_backoff: dict[tuple[str, str], Backoff] = {}
        self._submit_blocked: str | None = None
        self._retry_submit_at = 0.0
        self._submit_backoff = self._backoff()
        self._in_flight_view: list[_InFlight] = []
        self._jobs = pl.DataFrame()

    # -- public -------------------------------------------------------------------------------

    def run(self, jobs: pl.DataFrame) -> pl.DataFrame:
        """Run ``jobs`` (unique ``job_id``, ``provider``, ``model``, ``prompt``, ``system``).

        Returns the latest state of every job (one row per ``job_id``; jobs never submitted
        because of ``wait=False`` have no row).
        """
        self._counters.total = jobs.height
        self._jobs = jobs
        in_flight = self._recover()
        self._in_flight_view = in_flight
        state, billed = self.store.snapshot()
        terminal = settled(state, retry_failed=self.options.retry_failed)
        busy = pl.concat([f.job_ids for f in in_flight]) if in_flight else pl.Series(
            "job_id", [], dtype=pl.String
        )
        todo = jobs.filter(
            ~pl.col("job_id").is_in(terminal.get_column("job_id").implode())
            & ~pl.col("job_id").is_in(busy.implode())
        )
        self._count_done(jobs, terminal)
        # The cap covers everything this state folder has paid for, earlier calls and
        # earlier attempts of retried jobs included.
        self._spent = float(billed.get_column("cost_usd").fill_null(0.0).sum())
        if "worst_usd" in jobs.columns:
            self._worst = dict(
                zip(jobs.get_column("job_id").to_list(), jobs.get_column("worst_usd").to_list(),
                    strict=True)
            )
        if "est_input_tokens" in jobs.columns:
            self._est_input = dict(
                zip(
                    jobs.get_column("job_id").to_list(),
                    jobs.get_column("est_input_tokens").to_list(),
                    strict=True,
                )
            )
        fallback = max(self._worst.values(), default=0.0)
        for batch in in_flight:
            batch.reserved = sum(self._worst.get(j, fallback) for j in batch.job_ids.to_list())
            self._reserved += batch.reserved
        planned = self._plan(todo)
        self._drive(planned, in_flight)
        self._jobs = pl.DataFrame()  # the job table is only needed while driving
        # The latest event gives status and answer; cost and tokens add up every attempt.
        latest, billed = self.store.snapshot()
        state = latest.drop("cost_usd", "input_tokens", "output_tokens").join(
            billed, on="job_id", how="left"
        )
        batches = self.store.batch_state()
        if batches.height == 0:
            return state
        # Jobs in flight have only their "assigned" event, written before the provider
        # gave the batch its id: take the id from the batch events.
        ids = batches.select("batch_key", pl.col("provider_batch_id").alias("_pbid"))
        return (
            state.join(ids, on="batch_key", how="left")
            .with_columns(pl.coalesce("provider_batch_id", "_pbid").alias("provider_batch_id"))
            .drop("_pbid")
        )

    # -- recovery -----------------------------------------------------------------------------

    def _recover(self) -> list[_InFlight]:
        """Re-attach batches in flight; resolve intents left by a crash before submitting."""
        batches = self.store.batch_state()
        self._known_ids = set(batches.get_column("provider_batch_id").drop_nulls().to_list())
        if batches.height == 0:
            return []
        job_events = self.store.job_events().filter(pl.col("status") == "assigned")
        members = job_events.group_by("batch_key").agg(pl.col("job_id"))
        member_map = {
            row[0]: pl.Series("job_id", row[1], dtype=pl.String)
            for row in members.iter_rows()
        }
        out: list[_InFlight] = []
        for row in batches.iter_rows(named=True):
            key, status = row["batch_key"], row["status"]
            provider = self._provider_for(row["provider"], status)
            if status == BatchPhase.INTENT and provider is not None:
                members_of = member_map.get(key, pl.Series("job_id", [], pl.String))
                tag = BatchTag(
                    run_id=self.store.manifest.run_id,
                    batch_key=key,
                    created_after=row["ts"].timestamp(),
                    n_jobs=row["n_jobs"],
                    job_ids=frozenset(members_of.to_list()),
                    known_batch_ids=frozenset(self._known_ids),
                )
                found = provider.find(tag)
                if found is None:
                    self.store.append_batch(
                        batch_key=key,
                        provider=row["provider"],
                        model=row["model"],
                        status=BatchPhase.ABANDONED.value,
                        detail="the submit never reached the provider",
                    )
                    continue
                self.store.append_batch(
                    batch_key=key,
                    provider=row["provider"],
                    model=row["model"],
                    provider_batch_id=found,
                    status=BatchPhase.SUBMITTED.value,
                    detail="found at the provider after a crash",
                )
                row["provider_batch_id"], status = found, BatchPhase.SUBMITTED.value
                self._known_ids.add(found)
            if status in IN_FLIGHT and provider is not None:
                out.append(
                    _InFlight(
                        batch_key=key,
                        provider=row["provider"],
                        model=row["model"],
                        provider_batch_id=row["provider_batch_id"],
                        job_ids=member_map.get(key, pl.Series("job_id", [], pl.String)),
                        backoff=self._backoff(),
                        status=status,
                        cancel_reason=(
                            row["detail"] if status == BatchPhase.CANCEL_REQUESTED else None
                        ),
                    )
                )
        return out

    def _provider_for(self, name: str | None, status: str) -> Provider | None:
        """The provider of a recorded batch, created if this call's rows do not need it.

        A batch in flight (or an unresolved intent) must be re-attached even when the
        current frame has no rows for its provider: its worst case still counts against the
        cap, and its orphan must still be looked for.
        """
        if name is None:
            return None
        needed = status in (BatchPhase.INTENT, *IN_FLIGHT)
        if name not in self.providers and self.make_provider is not None and needed:
            self.providers[name] = self.make_provider(name)  # type: ignore[index]
        return self.providers.get(name)

    # -- planning -----------------------------------------------------------------------------

    def _backoff(self) -> Backoff:
        o = self.options
        return Backoff(o.poll_initial_s, o.poll_max_s, o.poll_factor)

    def _plan(self, todo: pl.DataFrame) -> Iterator[_Planned]:
        return plan_batches(todo, self.providers, self.spec, self.options.items_per_batch)

    # -- the loop -----------------------------------------------------------------------------

    def _deadline_passed(self) -> str | None:
        if self.stop_event.is_set():
            return "interrupted"
        limit = self.options.time_limit_s
        if limit is not None and time.monotonic() - self._started >= limit:
            return "time_limit"
        return None

    def _admit(self, plan: _Planned, in_flight: list[_InFlight]) -> _Planned | None:
        """The part of ``plan`` that fits under the cost cap now (``None``: nothing does).

        Worst case of everything in flight plus what was spent plus this batch must fit. A
        batch that does not fit whole is split: its leading jobs that fit go now.
        """
        cap = self.options.max_cost_usd
        if cap is None:
            return plan
        budget = cap - self._spent - self._reserved
        cum = self._calibrated_worst(plan).cum_sum()
        fit = int((cum <= budget + 1e-12).sum())
        if fit == plan.job_ids.len():
            return plan
        if fit == 0:
            return None
        return plan.head(fit)

    def _calibrated_worst(self, plan: _Planned) -> pl.Series:
        """Worst case of each job, its input part scaled up if estimates ran low so far.

        Calibration only ever raises the worst case (never below the offline estimate), so
        it can only make the cap safer.
        """
        worst = plan.worst.fill_null(0.0)
        ratio = self._input_ratio.get((plan.provider, plan.model), 1.0)
        if ratio <= 1.0 or plan.est_input_usd is None:
            return worst
        return worst + plan.est_input_usd.fill_null(0.0) * (ratio - 1.0)

    def _calibrate(self, batch: _InFlight, events: pl.DataFrame) -> None:
        """Learn actual/estimated input tokens per model from a collected batch."""
        if not self._est_input:
            return
        usage = events.filter(pl.col("input_tokens").is_not_null()).select(
            "job_id", "input_tokens"
        )
        est = sum(self._est_input.get(j, 0) for j in usage.get_column("job_id").to_list())
        actual = int(usage.get_column("input_tokens").sum())
        key = (batch.provider, batch.model)
        seen_est, seen_actual = self._calibration.get(key, (0, 0))
        seen_est, seen_actual = seen_est + est, seen_actual + actual
        self._calibration[key] = (seen_est, seen_actual)
        if seen_est > 0:
            self._input_ratio[key] = seen_actual / seen_est

    def _take_requeued(
        self, in_flight: list[_InFlight], planned: Iterator[_Planned]
    ) -> tuple[Iterator[_Planned], _Planned | None]:
        """Plan requeued jobs again once the provider has room (fewer batches in flight)."""
        if not self._requeue:
            return planned, None
        item = self._requeue[0]
        same = [b for b in in_flight if (b.provider, b.model) == (item.provider, item.model)]
        if (same and len(same) >= item.gate) or time.monotonic() < item.not_before:
            return planned, None
        self._requeue.pop(0)
        subset = self._jobs.filter(pl.col("job_id").is_in(item.job_ids.implode()))
        fresh = plan_batches(subset, self.providers, self.spec, item.max_items)
        return fresh, next(fresh, None)

    def _drop_requeued(self, reason: str) -> None:
        """End requeued jobs ``cancelled`` (a stop came before they could be sent again)."""
        if self._requeue:
            self._cancel_unsent(pl.concat([item.job_ids for item in self._requeue]), reason)
        self._requeue.clear()

    def _fill_slots(
        self,
        pending: _Planned | None,
        planned: Iterator[_Planned],
        in_flight: list[_InFlight],
    ) -> _Planned | None:
        """Submit while a slot is free and the cap admits the next jobs; return the rest."""
        while pending is not None and len(in_flight) < self.options.max_parallel_batches:
            if time.monotonic() < self._retry_submit_at or self._submit_blocked:
                break
            admitted = self._admit(pending, in_flight)
            if admitted is None:
                break
            outcome = self._submit(admitted)
            if outcome == "retry":
                # Nothing reached the provider: the same jobs go again later, as a new batch.
                pending = pending.head(pending.job_ids.len())
                break
            if isinstance(outcome, _InFlight):
                in_flight.append(outcome)
            # "ended" and "blocked": the admitted jobs are settled or held by an open intent.
            n = admitted.job_ids.len()
            pending = next(planned, None) if n == pending.job_ids.len() else pending.tail(n)
        return pending

    def _drive(self, planned: Iterator[_Planned], in_flight: list[_InFlight]) -> None:
        opts = self.options
        pending: _Planned | None = next(planned, None)
        stop_reason: str | None = None
        while True:
            stop_reason = stop_reason or self._deadline_passed()
            if stop_reason is not None:
                self._stop(stop_reason, in_flight, pending, planned)
                pending = None
                self._drop_requeued(stop_reason)
            if pending is None and stop_reason is None:
                planned, pending = self._take_requeued(in_flight, planned)
            pending = self._fill_slots(pending, planned, in_flight)
            if self._submit_blocked and pending is not None:
                self._end_unsent(self._submit_blocked, pending, planned)
                pending = None
            if self._submit_blocked:
                self._drop_requeued(self._submit_blocked)
            retrying = pending is not None and time.monotonic() < self._retry_submit_at
            if pending is not None and not in_flight and not retrying:
                # Nothing in flight will free budget: what does not fit now never will.
                self._end_unsent("cost_limit", pending, planned)
                pending = None
            self._report("running")
            if not in_flight and not retrying and not (self._requeue and stop_reason is None):
                break
            now = time.monotonic()
            for batch in [b for b in in_flight if b.next_poll <= now or not opts.wait]:
                poll = self._poll(batch)
                if poll is None:
                    if batch.status == BatchPhase.COLLECTED:
                        in_flight.remove(batch)
                    continue
                if poll.state is ProviderState.RUNNING:
                    batch.next_poll = time.monotonic() + batch.backoff.next()
                    continue
                if self._collect(batch, poll):
                    in_flight.remove(batch)
            if stop_reason is not None and self._past_grace(in_flight):
                # Cancelled batches that will not end (or cannot be observed) in the grace
                # period are left in flight: their rows stay pending and a later call with
                # the same state folder collects them, so nothing is paid twice.
                break
            if not opts.wait:
                # Submit now, collect later: one round of polls and submits, then return.
                if stop_reason is None:
                    pending = self._fill_slots(pending, planned, in_flight)
                break
            wakes = [b.next_poll for b in in_flight]
            if retrying:
                wakes.append(self._retry_submit_at)
            if self._requeue and stop_reason is None:
                wakes.append(self._requeue[0].not_before)
            if wakes:
                self._sleep(max(0.0, min(wakes) - time.monotonic()))
        self._report("done")

    def _past_grace(self, in_flight: list[_InFlight]) -> bool:
        """After a stop, whether waiting for the cancelled batches has gone on long enough."""
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
        waited = time.monotonic() - self._stopped_at
        stuck = all(b.failures >= 5 for b in in_flight) and bool(in_flight)
        return waited >= self.options.cancel_grace_s or stuck

    def _sleep(self, seconds: float) -> None:
        """Sleep until the next poll, waking early at the deadline or on a stop request."""
        if self.stop_event.is_set():
            time.sleep(seconds)  # already stopping: the event would not block any more
            return
        limit = self.options.time_limit_s
        if limit is not None:
            left = self._started + limit - time.monotonic()
            if left > 0:
                seconds = min(seconds, left + 0.01)
        self.stop_event.wait(seconds)

    def _stop(
        self,
        reason: str,
        in_flight: list[_InFlight],
        pending_plan: _Planned | None,
        planned: Iterator[_Planned],
    ) -> None:
        """Stop submitting, cancel what is in flight, and end unsubmitted jobs cancelled."""
        for batch in in_flight:
            if batch.cancel_reason is None:
                batch.cancel_reason = reason
                # It may have ended meanwhile; the next poll tells.
                with contextlib.suppress(ProviderError):
                    self.providers[batch.provider].cancel(batch.provider_batch_id)
                self._record(
                    batch,
                    status=BatchPhase.CANCEL_REQUESTED.value,
                    detail=reason,
                )
                batch.next_poll = 0.0
        if pending_plan is not None:
            self._end_unsent(reason, pending_plan, planned)

    def _end_unsent(self, reason: str, first: _Planned, planned: Iterator[_Planned]) -> None:
        """End every job not yet submitted as ``cancelled`` with ``reason``."""
        self._cancel_unsent(pl.concat([first.job_ids, *[p.job_ids for p in planned]]), reason)

    def _cancel_unsent(self, job_ids: pl.Series, reason: str) -> None:
        """End jobs that are in no provider batch ``cancelled`` with ``reason``."""
        events = pl.DataFrame(
            {"job_id": job_ids, "status": "cancelled", "error": f"cancelled: {reason}"}
        )
        self._write_terminal(
            events,
            batch_key=None,
            provider=None,
            model=None,
            provider_batch_id=None,
        )

    def _submit(self, plan: _Planned) -> _InFlight | Literal["retry", "ended", "blocked"]:
        """Record the intent, create the provider batch, record its id.

        If the create call fails, the provider is asked whether the batch exists anyway
        (a lost answer); if not, the intent is abandoned and the jobs are either sent again
        later (a transient failure: ``"retry"``) or end failed with the provider's reason (a
        permanent refusal of the whole batch: ``"ended"``).
        """
        provider = self.providers[plan.provider]
        tag = BatchTag(
            self.store.manifest.run_id, plan.batch_key, time.time(), n_jobs=plan.job_ids.len()
        )
        self.store.append_batch(
            batch_key=plan.batch_key,
            provider=plan.provider,
            model=plan.model,
            status=BatchPhase.INTENT.value,
            n_jobs=plan.job_ids.len(),
            n_bytes=plan.n_bytes,
        )
        self.store.append_jobs(
            pl.DataFrame({"job_id": plan.job_ids}).with_columns(
                pl.lit(plan.batch_key).alias("batch_key"),
                pl.lit(plan.provider).alias("provider"),
                pl.lit(plan.model).alias("model"),
                pl.lit("assigned").alias("status"),
                plan.worst.alias("est_cost_usd") if plan.has_estimates else pl.lit(None),
            )
        )
        reserved = float(self._calibrated_worst(plan).sum())
        self._reserved += reserved
        self._n_submitted += 1
        self._activity = (
            f"uploading batch {self._n_submitted} to {plan.provider} "
            f"({plan.job_ids.len():,} requests, {plan.n_bytes / 1e6:,.1f} MB)"
        )
        self._report("running")
        # The tag carries what a lookup needs to tell our batch from this run's others (the
        # provider may look it up itself when a create fails).
        tag = self._lookup_tag(tag, plan)
        try:
            batch_id = provider.submit(plan.lines, model=plan.model, tag=tag)
        except ProviderError as e:
            self._reserved = max(0.0, self._reserved - reserved)
            found = None
            if not e.permanent:  # a 4xx created nothing; otherwise the answer may be lost
                try:
                    found = provider.find(tag)
                except ProviderError:  # OrphanedBatchError included
                    # We cannot tell whether the batch exists: submit nothing more in this
                    # call. Its jobs stay with the open intent, which the next call
                    # resolves before sending anything.
                    self._submit_blocked = "provider_unavailable"
                    return "blocked"
            if found is None:
                return self._submit_failed(plan, e)
            self._reserved += reserved
            batch_id = found
        self._first_submit_failure = None
        self._submit_backoff = self._backoff()
        self._known_ids.add(batch_id)
        _failpoint("after_submit")
        self.store.append_batch(
            batch_key=plan.batch_key,
            provider=plan.provider,
            model=plan.model,
            provider_batch_id=batch_id,
            status=BatchPhase.SUBMITTED.value,
            n_jobs=plan.job_ids.len(),
            n_bytes=plan.n_bytes,
        )
        self._batch_status[plan.batch_key] = "submitted"
        return _InFlight(
            batch_key=plan.batch_key,
            provider=plan.provider,
            model=plan.model,
            provider_batch_id=batch_id,
            job_ids=plan.job_ids,
            backoff=self._backoff(),
            reserved=reserved,
        )

    def _lookup_tag(self, tag: BatchTag, plan: _Planned) -> BatchTag:
        """``tag`` with what a lookup needs to tell our batch from others of the same size."""
        return dataclasses.replace(
            tag,
            job_ids=frozenset(plan.job_ids.to_list()),
            known_batch_ids=frozenset(self._known_ids),
        )

    def _submit_failed(self, plan: _Planned, error: ProviderError) -> Literal["retry", "ended"]:
        """The create call failed and no batch exists: abandon the intent, decide what next."""
        self.store.append_batch(
            batch_key=plan.batch_key,
            provider=plan.provider,
            model=plan.model,
            status=BatchPhase.ABANDONED.value,
            detail=f"submit failed: {error}",
        )
        if error.permanent:
            self._fail_unrun(
                plan.job_ids,
                f"submit_failed: {error}",
                batch_key=plan.batch_key,
                provider=plan.provider,
                model=plan.model,
                provider_batch_id=None,
            )
            return "ended"
        now = time.monotonic()
        if self._first_submit_failure is None:
            self._first_submit_failure = now
        if now - self._first_submit_failure > self.options.submit_patience_s:
            # The provider has refused creates for too long: stop trying in this call; the
            # unsent rows end cancelled (provider_unavailable) and a later call sends them.
            self._submit_blocked = "provider_unavailable"
            return "retry"
        self._retry_submit_at = now + self._submit_backoff.next()
        return "retry"

    def _record(self, batch: _InFlight, **values: Any) -> None:
        """Append a batch event for ``batch`` (its key, provider, model and id filled in)."""
        self.store.append_batch(
            batch_key=batch.batch_key,
            provider=batch.provider,
            model=batch.model,
            provider_batch_id=batch.provider_batch_id,
            **values,
        )

    def _poll(self, batch: _InFlight) -> BatchPoll | None:
        """Observe a batch; ``None`` when the provider could not tell this time."""
        try:
            poll = self.providers[batch.provider].poll(batch.provider_batch_id)
        except ProviderError as e:
            if e.permanent:
                # E.g. 404: the provider no longer knows the batch. Its rows cannot end
                # otherwise; they fail with the reason (retry_failed sends them again).
                self._end_batch(batch, f"provider_error: {e}")
                return None
            # Transient, after the SDK's own retries: try again later; the batch is safe
            # at the provider and its id is checkpointed.
            batch.failures += 1
            batch.next_poll = time.monotonic() + batch.backoff.next()
            return None
        batch.failures = 0
        self._batch_status[batch.batch_key] = poll.provider_status
        return poll

    def _fail_unrun(
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
        nothing_ran = pl.lit(None, dtype=pl.Int64)
        events = pl.DataFrame({"job_id": job_ids, "status": "failed", "error": error})
        self._write_terminal(
            events.with_columns(
                nothing_ran.alias("input_tokens"),
                nothing_ran.alias("output_tokens"),
                nothing_ran.alias("cached_tokens"),
                nothing_ran.alias("cache_write_tokens"),
            ),
            batch_key=batch_key,
            provider=provider,
            model=model,
            provider_batch_id=provider_batch_id,
        )

    def _end_batch(self, batch: _InFlight, error: str) -> None:
        """End every job of ``batch`` failed with ``error`` and record the batch ended."""
        self._fail_unrun(
            batch.job_ids,
            error,
            batch_key=batch.batch_key,
            provider=batch.provider,
            model=batch.model,
            provider_batch_id=batch.provider_batch_id,
        )
        self._record(
            batch,
            status=BatchPhase.COLLECTED.value,
            detail=error,
        )
        self._reserved = max(0.0, self._reserved - batch.reserved)
        batch.status = BatchPhase.COLLECTED.value

    def _collect(self, batch: _InFlight, poll: BatchPoll) -> bool:
        """Store a finished batch's outcomes; ``False`` if its results must be fetched later."""
        provider = self.providers[batch.provider]
        if poll.state is ProviderState.FAILED and _rate_limited(poll):
            return self._requeue_batch(batch, poll)
        if poll.state is ProviderState.FAILED:
            from batchata_df.providers.base import empty_results

            results = empty_results()
        else:
            self._activity = f"downloading results of {batch.provider_batch_id}"
            self._report("running")
            try:
                results = provider.results(batch.provider_batch_id, self.spec)
            except ProviderError as e:
                if e.permanent:
                    self._end_batch(batch, f"results_unavailable: {e}")
                    return True
                batch.failures += 1
                batch.next_poll = time.monotonic() + batch.backoff.next()
                return False
            members = batch.job_ids.implode()
            if results.height and not results.get_column("job_id").is_in(members).any():
                # Adopted after a crash by size and time alone (Anthropic), and it is not
                # ours: forget it; its jobs go back to the queue of the next call.
                self._record(
                    batch,
                    status=BatchPhase.ABANDONED.value,
                    detail="the batch found after a crash holds none of our requests",
                )
                self._reserved = max(0.0, self._reserved - batch.reserved)
                return True
        events = outcomes_to_events(
            pl.DataFrame({"job_id": batch.job_ids}),
            results,
            poll,
            self.spec,
            cancel_reason=batch.cancel_reason,
        )
        actual = self._write_terminal(
            events,
            batch_key=batch.batch_key,
            provider=batch.provider,
            model=batch.model,
            provider_batch_id=batch.provider_batch_id,
        )
        self._spent += actual
        self._reserved = max(0.0, self._reserved - batch.reserved)
        self._calibrate(batch, events)
        self._rate_limited_since.pop((batch.provider, batch.model), None)
        self._rate_backoff.pop((batch.provider, batch.model), None)
        self._activity = ""
        self._record(
            batch,
            status=BatchPhase.COLLECTED.value,
            provider_status=poll.provider_status,
            n_jobs=batch.job_ids.len(),
            detail=poll.detail,
        )
        self._batch_status[batch.batch_key] = poll.provider_status
        return True

    def _requeue_batch(self, batch: _InFlight, poll: BatchPoll) -> bool:
        """A batch refused for the provider's queue limit: send its jobs again later.

        Nothing was run or billed. The limit is per model and may be shared with other
        work, so the jobs wait: until one of this run's batches of the same model ends, or
        on a growing timer when none is in flight (a batch alone is also halved, in case it
        is too big for the limit by itself). After ``RATE_LIMIT_PATIENCE_S`` of refusals
        the jobs fail with the provider's reason.
        """
        key = (batch.provider, batch.model)
        others = [
            b
            for b in self._in_flight_view
            if b is not batch and (b.provider, b.model) == key
        ]
        n = batch.job_ids.len()
        now = time.monotonic()
        since = self._rate_limited_since.setdefault(key, now)
        too_big = n == 1 and self._over_limit(batch, poll)
        if too_big or now - since > RATE_LIMIT_PATIENCE_S:
            self._end_batch(batch, f"rate_limited: {poll.detail}")
            return True
        self._record(batch, status=BatchPhase.COLLECTED.value, detail=f"requeued: {poll.detail}")
        self._reserved = max(0.0, self._reserved - batch.reserved)
        backoff = self._rate_backoff.setdefault(key, self._backoff())
        self._requeue.append(
            _Requeued(
                job_ids=batch.job_ids,
                provider=batch.provider,
                model=batch.model,
                max_items=n if others else max(1, n // 2),
                gate=len(others),
                not_before=now if others else now + backoff.next(),
            )
        )
        return True

    def _over_limit(self, batch: _InFlight, poll: BatchPoll) -> bool:
        """Whether a lone request is bigger than the limit the provider names (never fits)."""
        match = re.search(r"Limit: ([\d,]+)", poll.detail or "")
        row = self._jobs.filter(pl.col("job_id") == batch.job_ids[0])
        if match is None or row.height == 0:
            return False
        from batchata_df.tokens import estimate_request_tokens

        tokens = estimate_request_tokens(
            row.get_column("prompt"), batch.provider, batch.model, system=row.get_column("system")
        )
        return int(tokens[0]) > int(match.group(1).replace(",", ""))

    def _write_terminal(
        self,
        events: pl.DataFrame,
        *,
        batch_key: str | None,
        provider: str | None,
        model: str | None,
        provider_batch_id: str | None,
    ) -> float:
        """Append terminal job events with their cost; return the cost they add."""
        price = self.prices.get(provider, model) if provider and model else None
        frame = events.with_columns(
            pl.lit(batch_key, dtype=pl.String).alias("batch_key"),
            pl.lit(provider, dtype=pl.String).alias("provider"),
            pl.lit(model, dtype=pl.String).alias("model"),
            pl.lit(provider_batch_id, dtype=pl.String).alias("provider_batch_id"),
        )
        if "input_tokens" in frame.columns:
            frame = with_usage_columns(frame).with_columns(cost_expr(price).alias("cost_usd"))
        self.store.append_jobs(frame)
        for status in TERMINAL_JOB:
            self._counters.done[status] += int((frame.get_column("status") == status).sum())
        added = 0.0
        if "cost_usd" in frame.columns:
            added = float(frame.get_column("cost_usd").fill_null(0.0).sum())
            self._counters.cost += added
        return added

    # -- progress -----------------------------------------------------------------------------

    def _count_done(self, jobs: pl.DataFrame, terminal: pl.DataFrame) -> None:
        done = terminal.filter(pl.col("job_id").is_in(jobs.get_column("job_id").implode()))
        for status in TERMINAL_JOB:
            self._counters.done[status] = int((done.get_column("status") == status).sum())
        self._counters.cost = float(done.get_column("cost_usd").fill_null(0.0).sum())

    def _report(self, phase: str) -> None:
        if self.progress is None:
            return
        c = self._counters
        statuses: dict[str, int] = {}
        for s in self._batch_status.values():
            statuses[s] = statuses.get(s, 0) + 1
        finished = sum(c.done.values())
        projected = None
        if c.done["completed"] + c.done["failed"] > 0:
            per_job = c.cost / (c.done["completed"] + c.done["failed"])
            projected = c.cost + per_job * (c.total - finished)
        self.progress(
            ProgressSnapshot(
                total=c.total,
                completed=c.done["completed"],
                failed=c.done["failed"],
                cancelled=c.done["cancelled"],
                pending=c.total - finished,
                batches=statuses,
                cost_usd=c.cost,
                elapsed_s=time.monotonic() - self._started,
                phase=phase,
                activity="" if phase == "done" else self._activity,
                projected_cost_usd=projected,
            )
        )

