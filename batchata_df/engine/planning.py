"""Planning: jobs -> provider batches, lazily, and jobs refused for a queue limit again.

Jobs are grouped by provider and model (one model per provider batch), encoded in slices
of the provider's count limit, and each slice is split by count and bytes. Nothing here
does I/O: :class:`Planner` is a queue that accepts jobs at any time (:meth:`Planner.add`)
and hands out one planned batch at a time, encoding a slice only when it is needed;
:class:`Requeue` holds the jobs of batches the provider refused for its queue limit until
they may be planned again.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING

import polars as pl

from batchata_df.engine.clock import Backoff, Clock
from batchata_df.engine.run import InFlightBatch
from batchata_df.providers.base import BatchPoll, Provider, RequestSpec

if TYPE_CHECKING:
    from batchata_df.cost import PriceTable

__all__ = [
    "DatedEstimate",
    "RATE_LIMIT_PATIENCE_S",
    "PlannedBatch",
    "Planner",
    "Repricer",
    "Requeue",
    "Requeued",
    "groups_by_model",
    "only_model",
    "over_named_limit",
    "plan_batches",
    "queue_limit_refusal",
    "split_sizes",
]

RATE_LIMIT_PATIENCE_S = 900.0
"""How long a request refused for a provider queue limit keeps waiting for room."""


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


def new_batch_key() -> str:
    """A fresh key naming one planned batch in the state folder."""
    return f"b{time.time_ns():x}{secrets.token_hex(3)}"


@dataclass
class PlannedBatch:
    """Encoded requests of one model, ready to be sent as one provider batch."""

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
    est_input: pl.Series | None = None
    """Estimated input tokens of each job (calibration compares them with those billed)."""

    def __len__(self) -> int:
        return self.job_ids.len()

    def head(self, n: int) -> PlannedBatch:
        """The first ``n`` jobs as a batch of their own (a new key)."""
        return PlannedBatch(
            new_batch_key(), self.provider, self.model, self.job_ids.head(n),
            self.lines.head(n), int(self.lines.head(n).str.len_bytes().sum()) + n,
            self.worst.head(n),
            self.has_estimates,
            None if self.est_input_usd is None else self.est_input_usd.head(n),
            None if self.est_input is None else self.est_input.head(n),
        )

    def tail(self, n: int) -> PlannedBatch:
        """All but the first ``n`` jobs, as a batch of their own (a new key)."""
        rest = self.job_ids.len() - n
        return PlannedBatch(
            new_batch_key(), self.provider, self.model, self.job_ids.tail(rest),
            self.lines.tail(rest), int(self.lines.tail(rest).str.len_bytes().sum()) + rest,
            self.worst.tail(rest),
            self.has_estimates,
            None if self.est_input_usd is None else self.est_input_usd.tail(rest),
            None if self.est_input is None else self.est_input.tail(rest),
        )


def groups_by_model(
    todo: pl.DataFrame,
) -> Iterator[tuple[tuple[object, ...], pl.DataFrame]]:
    """``todo.group_by(["provider", "model"], maintain_order=True)``: key and rows of each.

    A table of one provider and one model (the usual run) is its only group, as it is:
    two comparisons per row tell, where grouping hashes every row's pair and gathers
    every column into a copy (0.05 s at 1M rows; ``benchmarks/PROFILE.md``, tenth pass).

    Examples
    --------
    >>> jobs = pl.DataFrame({"provider": ["openai", "openai"], "model": ["m", "m"],
    ...                      "job_id": ["a", "b"]})
    >>> [(key, group.height) for key, group in groups_by_model(jobs)]
    [(('openai', 'm'), 2)]
    >>> mixed = jobs.with_columns(model=pl.Series(["m", "n"]))
    >>> [(key, group.height) for key, group in groups_by_model(mixed)]
    [(('openai', 'm'), 1), (('openai', 'n'), 1)]
    """
    key = only_model(todo)
    if key is not None:
        yield key, todo
        return
    yield from todo.group_by(["provider", "model"], maintain_order=True)


def only_model(jobs: pl.DataFrame) -> tuple[object, object] | None:
    """The one ``(provider, model)`` of every row of ``jobs``, or ``None``.

    ``None`` when there are no rows, two pairs, or a null in either column. Two
    comparisons per row: what :func:`groups_by_model` and the run's model checks ask before
    they hash every row's pair.

    Examples
    --------
    >>> only_model(pl.DataFrame({"provider": ["openai"] * 2, "model": ["m", "m"]}))
    ('openai', 'm')
    >>> only_model(pl.DataFrame({"provider": ["openai"] * 2, "model": ["m", None]})) is None
    True
    """
    if not jobs.height:
        return None
    provider, model = jobs.get_column("provider"), jobs.get_column("model")
    key = (provider[0], model[0])
    if (
        None not in key
        and provider.null_count() == 0
        and model.null_count() == 0
        and bool((provider == key[0]).all())
        and bool((model == key[1]).all())
    ):
        return key
    return None


def plan_batches(
    todo: pl.DataFrame,
    providers: Mapping[str, Provider],
    spec: RequestSpec,
    items_per_batch: int | None,
) -> Iterator[PlannedBatch]:
    """Yield provider batches lazily: lines are encoded only when a batch is needed.

    Jobs are grouped by provider and model (one model per provider batch), encoded in
    slices of the provider's count limit, and each slice split by count and bytes.
    """
    for (provider_name, model), group in groups_by_model(todo):
        if spec.prompt_caching:
            from batchata_df.caching import cache_plan, cluster_order

            # Shared prefixes next to each other (and marked): see batchata_df.caching.
            if "cache_key" in group.columns:
                group = cluster_order(group)
            else:
                group = cache_plan(group, str(provider_name), str(model))
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
                # Zeros without a Python list of them (~2 ms a 100,000-job slice).
                else pl.repeat(0.0, chunk.height, dtype=pl.Float64, eager=True).alias("worst_usd")
            )
            sizes = lines.str.len_bytes().cast(pl.Int64) + overhead
            for start, end in split_sizes(sizes, max_requests=limit, max_bytes=provider.max_bytes):
                yield PlannedBatch(
                    batch_key=new_batch_key(),
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
                    est_input=(
                        chunk.get_column("est_input_tokens").slice(start, end - start)
                        if "est_input_tokens" in chunk.columns
                        else None
                    ),
                )


class Planner:
    """The jobs still to send, as a queue of planned batches.

    :meth:`add` may be called at any time (jobs arriving in chunks); :meth:`current` is the
    next batch to send, encoded on first use. After a send, :meth:`took` moves on by the
    jobs that went; :meth:`resend` re-keys the current batch (nothing reached the provider);
    :meth:`drain_groups` hands back every unsent job id by provider and model (a stop: they
    end cancelled), :meth:`unsent` every one in order (a new date: priced again). Neither
    encodes a batch.
    """

    def __init__(
        self, providers: Mapping[str, Provider], spec: RequestSpec, items_per_batch: int | None
    ) -> None:
        self.providers, self.spec, self.items_per_batch = providers, spec, items_per_batch
        self._sources: deque[Iterator[PlannedBatch]] = deque()
        self._ids: deque[tuple[pl.DataFrame, list[pl.Series]]] = deque()
        """Per source: every job it was given (``job_id``, ``provider``, ``model``), and the
        job ids of the batches it yielded."""
        self._current: PlannedBatch | None = None

    def add(self, jobs: pl.DataFrame, *, items_per_batch: int | None = None) -> None:
        """Queue ``jobs`` to be sent after everything queued so far."""
        per_batch = items_per_batch if items_per_batch is not None else self.items_per_batch
        self._sources.append(plan_batches(jobs, self.providers, self.spec, per_batch))
        self._ids.append((jobs.select("job_id", "provider", "model"), []))

    def current(self) -> PlannedBatch | None:
        """The next batch to send (``None``: nothing left)."""
        while self._current is None and self._sources:
            self._current = next(self._sources[0], None)
            if self._current is None:
                self._sources.popleft()
                self._ids.popleft()
            else:
                self._ids[0][1].append(self._current.job_ids)
        return self._current

    def _take_unsent(self) -> tuple[PlannedBatch | None, list[pl.DataFrame]]:
        """The current batch (its rest), and each source's jobs not yielded yet; empties the queue.

        The jobs are those each source was given, less the ones of the batches it yielded: no
        batch is encoded to read its ids (at 1M jobs in memory, encoding every batch left held
        ~0.5 GB at once, and read every file of a run with files).
        """
        current, rest = self._current, []
        for i, (given, yielded) in enumerate(self._ids):
            if i == 0 and yielded:
                given = given.filter(~pl.col("job_id").is_in(pl.concat(yielded).implode()))
            rest.append(given)
        self._current = None
        self._sources.clear()
        self._ids.clear()
        return current, rest

    def unsent(self) -> pl.Series | None:
        """Every unsent job id in order (``None``: none), emptying the queue, encoding nothing.

        The current batch's rest first, then the jobs of each source in the order given.
        """
        current, rest = self._take_unsent()
        parts = [] if current is None else [current.job_ids]
        parts += [given.get_column("job_id") for given in rest]
        ids = pl.concat(parts) if parts else None
        return ids if ids is not None and ids.len() else None

    def drain_groups(self) -> list[tuple[str, str, pl.Series]]:
        """Every unsent job as ``(provider, model, job ids)``; empties the queue, encodes nothing.

        The current batch's rest first, then each source's jobs, by model.
        """
        current, rest = self._take_unsent()
        groups = [] if current is None else [(current.provider, current.model, current.job_ids)]
        for given in rest:
            for (provider, model), jobs in groups_by_model(given):
                groups.append((str(provider), str(model), jobs.get_column("job_id")))
        return [g for g in groups if g[2].len()]

    def took(self, n: int) -> None:
        """The first ``n`` jobs of the current batch were dealt with: move on."""
        current = self.current()
        if current is None:
            msg = "took() with no batch planned"
            raise RuntimeError(msg)
        if n == len(current):
            self._current = None
            self.current()  # encode the next batch now, as the run goes on to send it
        else:
            self._current = current.tail(n)

    def resend(self) -> None:
        """The current batch goes again later, under a new key (its create failed)."""
        if self._current is not None:
            self._current = self._current.head(len(self._current))


class DatedEstimate:
    """The cap's estimate of jobs (``estimate``), and what it depends on by date.

    Called as ``estimate`` is, and it remembers the ``(provider, model)`` pairs it has
    priced (with ``pairs``, those priced before). :meth:`terms` reads, for a day, what the
    estimate of a job of each of those models sent that day depends on
    (:meth:`~batchata_df.cost.PriceTable.terms`): two days with equal terms give the jobs
    equal worst cases (what the cap reserves), so :class:`Repricer` keeps the plan when a
    call runs past a midnight that changes nothing for its models.

    ``priced_on``: the day the jobs a driver is given were priced, when that is before
    the driver starts (the call's job table is priced before it waits for the state
    folder's lock, and before an auto call's batch or realtime phase, which may start
    days later, after collecting batches in flight); a :class:`Repricer` counts from it,
    not from the day it is made. ``None``: the jobs are priced when read (a streamed call).
    """

    def __init__(
        self,
        estimate: Callable[[pl.DataFrame], pl.DataFrame],
        prices: PriceTable,
        pairs: pl.DataFrame | None = None,
        priced_on: date | None = None,
    ) -> None:
        self.estimate, self.prices, self.priced_on = estimate, prices, priced_on
        self.pairs: set[tuple[str, str]] = set()
        if pairs is not None:
            self.remember(pairs)

    def remember(self, jobs: pl.DataFrame) -> None:
        """Count ``jobs``' models among those :meth:`terms` reads."""
        pairs = jobs.select("provider", "model").unique().drop_nulls()
        self.pairs.update((str(p), str(m)) for p, m in pairs.iter_rows())

    def __call__(self, jobs: pl.DataFrame) -> pl.DataFrame:
        """``estimate(jobs)``, their models remembered."""
        self.remember(jobs)
        return self.estimate(jobs)

    def terms(self, day: date) -> tuple[object, ...]:
        """What the estimate of every priced model's job sent on ``day`` depends on."""
        return tuple(self.prices.terms(p, m, day) for p, m in sorted(self.pairs))


class Repricer:
    """Prices a planner's unsent jobs again when the date has moved since they were priced.

    The cap's worst case of a job is at the highest price (and input count) of the days
    its request may run on, from the day it is priced (``PriceTable.worst``,
    ``PriceTable.answering``). A call that runs into a later day (its batches waiting for
    a slot or for the cap) would send the rest at the first day's figures, short of a
    price rise or a routing to a successor the later window reaches (a call started on
    2026-11-28 with gemini-2.5-flash images, a batch sent on 2026-11-30 answered on 12-01
    by the successor: 0.00133 USD under a 0.0012 cap). So on a new date (``models.today``)
    the planned jobs are taken back, their rows fetched, priced again with ``reprice``
    (:attr:`~batchata_df.engine.run.RunContext.reprice`) and planned again in the job
    table's order (the output is joined by job id; only the send order can move). Jobs a
    streamed call reads later are priced when read. ``reprice=None`` (no cap): nothing
    is done.

    A :class:`DatedEstimate` says whether the new date changes anything for the call's
    models (most midnights change nothing): when its terms are those of the day the jobs
    were priced on, they are left planned as they are. Re-pricing would cost ~3.6 s of
    CPU at 1M unsent jobs (``frame.with_estimates`` alone: PROFILE.md, nineteenth pass),
    and planning them again can split a cached prefix from jobs already sent
    (``prompt_caching=True``). Any other ``reprice`` prices again on every
    new date.
    """

    def __init__(self, reprice: Callable[[pl.DataFrame], pl.DataFrame] | None) -> None:
        from batchata_df.models import today

        self.reprice, self.today = reprice, today
        # The day the job table was priced (DatedEstimate.priced_on), else today's.
        first = reprice.priced_on if isinstance(reprice, DatedEstimate) else None
        self.priced_on = self.started_on = first if first is not None else today()

    def rows(
        self, job_rows: Callable[[pl.Series], pl.DataFrame], job_ids: pl.Series
    ) -> pl.DataFrame:
        """The rows of ``job_ids`` to plan again (a queue-limit refusal, a resend).

        Priced as of today when the date moved since the call priced its job table: the
        table keeps the first day's estimates, and rows waiting outside the planner
        (:class:`Requeue`, re-attached batches ending cancelled) are not seen by
        :meth:`__call__`.
        """
        rows = job_rows(job_ids)
        if self.reprice is None or not rows.height:
            return rows
        if isinstance(self.reprice, DatedEstimate):
            self.reprice.remember(rows)  # a model no read of this call has priced yet
        if self._same(self.started_on):
            return rows
        return self.reprice(rows)

    def moved(self, since: date) -> bool:
        """Whether jobs priced on ``since`` have another worst case today (``reprice`` set).

        A request priced before and sent again later (a realtime retry waiting past a
        midnight) is priced again when this is true (``RealtimeEngine._price_waiting``).
        """
        return self.reprice is not None and not self._same(since)

    def _same(self, since: date) -> bool:
        """Whether jobs priced on any day from ``since`` on are priced as they are today.

        Every day between counts: a streamed call's rows are priced on the day they are
        read.
        """
        day = self.today()
        if day == since:
            return True
        if not isinstance(self.reprice, DatedEstimate) or day < since:
            return False
        first = self.reprice.terms(since)
        days = (since + timedelta(days=k) for k in range(1, (day - since).days + 1))
        return all(self.reprice.terms(d) == first for d in days)

    def __call__(self, planner: Planner, job_rows: Callable[[pl.Series], pl.DataFrame]) -> None:
        """Re-plan ``planner``'s unsent jobs (rows from ``job_rows``) if their price moved."""
        if self.reprice is None or (day := self.today()) == self.priced_on:
            return
        same, self.priced_on = self._same(self.priced_on), day
        if same:
            return
        ids = planner.unsent()  # not encoded again to read them
        if ids is None:
            return
        rows = job_rows(ids)
        if rows.height:
            planner.add(self.reprice(rows))


def queue_limit_refusal(poll: BatchPoll) -> bool:
    """Whether a failed batch was refused for a queue/rate limit (nothing ran)."""
    detail = (poll.detail or "").lower()
    return "token_limit_exceeded" in detail or "rate_limit" in detail


def over_named_limit(job: pl.DataFrame, provider: str, model: str, detail: str | None) -> bool:
    """Whether a lone request is bigger than the limit named in the refusal (never fits).

    ``job`` is the request's row of the job table.
    """
    match = re.search(r"Limit: ([\d,]+)", detail or "")
    if match is None or job.height == 0:
        return False
    from batchata_df.tokens import estimate_request_tokens

    tokens = estimate_request_tokens(
        job.get_column("prompt"), provider, model, system=job.get_column("system")
    )
    return int(tokens[0]) > int(match.group(1).replace(",", ""))


@dataclass
class Requeued:
    """Jobs of a batch the provider refused for its queue limit, to plan again."""

    job_ids: pl.Series
    provider: str
    model: str
    max_items: int
    gate: int
    """Plan them again once fewer than this many batches of the model are in flight."""
    not_before: float


@dataclass
class Requeue:
    """Jobs refused for a provider's queue limit, waiting for room.

    Nothing of a refused batch ran or was billed. The limit is per model and may be shared
    with other work, so the jobs wait: until one of this run's batches of the same model
    ends, or on a growing timer when none is in flight (a batch alone is also halved, in
    case it is too big for the limit by itself). After ``patience_s`` of refusals of a
    model (default :data:`RATE_LIMIT_PATIENCE_S`) the jobs fail with the provider's reason.
    """

    clock: Clock
    new_backoff: Callable[[], Backoff]
    patience_s: float | None = None
    items: list[Requeued] = field(default_factory=list)
    _since: dict[tuple[str, str], float] = field(default_factory=dict)
    _backoff: dict[tuple[str, str], Backoff] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.patience_s is None:
            self.patience_s = RATE_LIMIT_PATIENCE_S

    def refused(self, batch: InFlightBatch, *, others: int, too_big: bool) -> bool:
        """A batch was refused: ``True`` if its jobs wait to go again, ``False``: fail them.

        They fail now if a lone request is too big for the limit or patience ran out.
        ``others`` counts this run's other batches of the same model in flight.
        """
        key = (batch.provider, batch.model)
        n = batch.n_jobs
        now = self.clock.monotonic()
        since = self._since.setdefault(key, now)
        assert self.patience_s is not None
        if too_big or now - since > self.patience_s:
            return False
        backoff = self._backoff.setdefault(key, self.new_backoff())
        self.items.append(
            Requeued(
                job_ids=batch.job_ids,
                provider=batch.provider,
                model=batch.model,
                max_items=n if others else max(1, n // 2),
                gate=others,
                not_before=now if others else now + backoff.next(),
            )
        )
        return True

    def accepted(self, provider: str, model: str) -> None:
        """A batch of the model was collected: the queue had room; patience starts over."""
        self._since.pop((provider, model), None)
        self._backoff.pop((provider, model), None)

    def take(
        self, in_flight: Sequence[InFlightBatch]
    ) -> tuple[pl.Series, int] | None:
        """The first waiting jobs and their batch size, once the provider has room."""
        if not self.items:
            return None
        item = self.items[0]
        same = [b for b in in_flight if (b.provider, b.model) == (item.provider, item.model)]
        if (same and len(same) >= item.gate) or self.clock.monotonic() < item.not_before:
            return None
        self.items.pop(0)
        return item.job_ids, item.max_items

    def next_wake(self, in_flight: Sequence[InFlightBatch] = ()) -> float | None:
        """When the first waiting jobs may go at the earliest (a clock reading).

        ``None`` while they wait for this run's batches of their model (``in_flight``) to
        end: the polls of those wake the run, a time already past would spin it.
        """
        if not self.items:
            return None
        item = self.items[0]
        same = sum((b.provider, b.model) == (item.provider, item.model) for b in in_flight)
        return None if same and same >= item.gate else item.not_before

    def drain(self) -> pl.Series | None:
        """Every waiting job id (``None``: none), emptying the queue."""
        groups = self.drain_groups()
        return pl.concat([ids for _, _, ids in groups]) if groups else None

    def drain_groups(self) -> list[tuple[str, str, pl.Series]]:
        """Every waiting job as ``(provider, model, job ids)``, emptying the queue."""
        groups = [(item.provider, item.model, item.job_ids) for item in self.items]
        self.items.clear()
        return groups
