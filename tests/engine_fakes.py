"""An in-memory provider and run builders for the engine's unit tests.

:class:`FakeProvider` implements the ``Provider`` protocol of ``providers/base.py`` without
I/O: batches live in a dict, progress follows a :class:`FakeClock`, failures are scripted,
and every call is logged (``calls``) so tests can check what was asked in which order.
The end-to-end behaviour against the official SDKs is tested on the emulator elsewhere.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import polars as pl

from batchata_df.cost import PriceTable
from batchata_df.engine.clock import FakeClock
from batchata_df.engine.run import InFlightBatch, PackedIds, RunContext, RunOptions, RunState
from batchata_df.errors import ProviderError
from batchata_df.providers.base import (
    BatchPoll,
    BatchTag,
    ProviderState,
    RealtimeFailure,
    RequestSpec,
    conform_results,
    empty_results,
)
from batchata_df.schema import AnswerSchema
from batchata_df.state import StateStore

MODEL = "fake-model"
PRICES = PriceTable({MODEL: (1.0, 2.0), "other-model": (1.0, 2.0)})
"""USD per million tokens: a request of 10 input and 5 output tokens costs $0.00002."""
COST_PER_JOB = (10 * 1.0 + 5 * 2.0) / 1e6


@dataclass
class FakeBatch:
    id: str
    model: str
    job_ids: list[str]
    tag: BatchTag
    created: float
    state: ProviderState = ProviderState.RUNNING
    detail: str | None = None
    finished: int | None = None
    """Requests that had run when the batch was cancelled (``None``: still running)."""
    counts: dict[str, int] = field(default_factory=dict)
    """The request counts its polls report (``BatchPoll.counts``; none by default)."""


@dataclass
class FakeProvider:
    """A provider whose batches run for ``latency`` seconds of the fake clock."""

    clock: FakeClock
    latency: float | None = None
    """Seconds from create to ended; ``None``: batches run until a test ends them."""
    name: ClassVar[str] = "openai"
    max_requests: ClassVar[int] = 1000
    max_bytes: ClassVar[int] = 1_000_000
    batches: dict[str, FakeBatch] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    submit_errors: list[ProviderError | None] = field(default_factory=list)
    """Raised by the next submits, one each (``None``: that one succeeds)."""
    created_despite_error: bool = False
    """A failing submit still creates the batch (the answer was lost)."""
    find_error: ProviderError | None = None
    poll_errors: list[ProviderError] = field(default_factory=list)
    results_errors: list[ProviderError] = field(default_factory=list)
    on_submit: list[Any] = field(default_factory=list)
    """Callables ``f(tag)`` run when ``submit`` is called, before anything is created."""
    encoded: int = 0
    """Rows encoded so far (lazy planning)."""
    realtime_failures: dict[str, list[RealtimeFailure]] = field(default_factory=dict)
    """Per job id, what its next realtime requests get instead of an answer, one each."""
    answered_on: list[str] = field(default_factory=list)
    """The name of the thread each realtime request was sent from."""

    def encode(self, jobs: pl.DataFrame, spec: RequestSpec) -> pl.Series:
        self.encoded += jobs.height
        return jobs.select(
            pl.concat_str(
                pl.lit('{"custom_id":"'), "job_id", pl.lit('","prompt":"'), "prompt", pl.lit('"}')
            ).alias("line")
        ).to_series()

    def line_overhead(self) -> int:
        return 1

    def submit(self, lines: pl.Series, *, model: str, tag: BatchTag) -> str:
        self.calls.append(("submit", tag.batch_key, lines.len()))
        for hook in self.on_submit:
            hook(tag)
        error = self.submit_errors.pop(0) if self.submit_errors else None
        if error is None or self.created_despite_error:
            ids = lines.str.json_decode(pl.Struct({"custom_id": pl.String})).struct.field(
                "custom_id"
            )
            batch_id = f"fb_{len(self.batches) + 1}"
            self.batches[batch_id] = FakeBatch(
                batch_id, model, ids.to_list(), tag, self.clock.monotonic()
            )
        if error is not None:
            raise error
        return batch_id

    def answer(
        self, line: str, *, model: str, spec: RequestSpec
    ) -> pl.DataFrame | RealtimeFailure:
        """A realtime request: the row its batch would have had, or a scripted failure."""
        job_id = json.loads(line)["custom_id"]
        self.calls.append(("answer", job_id))  # list.append: safe from the engine's threads
        self.answered_on.append(threading.current_thread().name)
        failures = self.realtime_failures.get(job_id)
        if failures:
            return failures.pop(0)
        return conform_results(
            pl.DataFrame(
                {
                    "job_id": [job_id],
                    "outcome": "succeeded",
                    "text": f"answer to {job_id}",
                    "truncated": False,
                    "input_tokens": 10,
                    "output_tokens": 5,
                    "cached_tokens": 0,
                }
            )
        )

    def _advance(self, batch: FakeBatch) -> None:
        if (
            batch.state is ProviderState.RUNNING
            and self.latency is not None
            and self.clock.monotonic() >= batch.created + self.latency
        ):
            batch.state = ProviderState.ENDED

    def poll(self, batch_id: str) -> BatchPoll:
        self.calls.append(("poll", batch_id))
        if self.poll_errors:
            raise self.poll_errors.pop(0)
        batch = self.batches[batch_id]
        self._advance(batch)
        return BatchPoll(batch.state, batch.state.value, batch.detail, dict(batch.counts))

    def results(self, batch_id: str, spec: RequestSpec) -> pl.DataFrame:
        self.calls.append(("results", batch_id))
        if self.results_errors:
            raise self.results_errors.pop(0)
        batch = self.batches[batch_id]
        ran = batch.job_ids if batch.finished is None else batch.job_ids[: batch.finished]
        if batch.state is ProviderState.FAILED or not ran:
            return empty_results()
        return conform_results(
            pl.DataFrame(
                {
                    "job_id": ran,
                    "outcome": "succeeded",
                    "text": [f"answer to {j}" for j in ran],
                    "truncated": False,
                    "input_tokens": 10,
                    "output_tokens": 5,
                    "cached_tokens": 0,
                }
            )
        )

    def cancel(self, batch_id: str) -> None:
        self.calls.append(("cancel", batch_id))
        batch = self.batches[batch_id]
        self._advance(batch)
        if batch.state is ProviderState.RUNNING:
            batch.state = ProviderState.CANCELLED
            if batch.finished is None:
                batch.finished = self._ran(batch)

    def _ran(self, batch: FakeBatch) -> int:
        if self.latency is None or self.latency <= 0:
            return 0
        share = (self.clock.monotonic() - batch.created) / self.latency
        return min(len(batch.job_ids), int(len(batch.job_ids) * share))

    find_is_exact = False  # the worst case: what it finds may be another process's

    def found_not_created(self, batch_id: str) -> bool:
        return False

    def find(self, tag: BatchTag) -> str | None:
        self.calls.append(("find", tag.batch_key))
        if self.find_error is not None:
            raise self.find_error
        for batch in self.batches.values():
            if batch.tag.batch_key == tag.batch_key and batch.id not in tag.known_batch_ids:
                return batch.id
        return None

    def close(self) -> None:
        self.calls.append(("close",))

    # -- test controls ---------------------------------------------------------------------

    def end(self, batch_id: str, state: ProviderState = ProviderState.ENDED, **kw: Any) -> None:
        """End a batch now (``detail=``, ``finished=``, ``counts=`` may be given)."""
        batch = self.batches[batch_id]
        batch.state = state
        for key, value in kw.items():
            setattr(batch, key, value)

    def methods(self) -> list[str]:
        return [c[0] for c in self.calls]


def make_jobs(n: int, *, worst: float | None = None, model: str = MODEL,
              start: int = 0, est_input_tokens: int | None = None) -> pl.DataFrame:
    """A job table of ``n`` jobs ``j000``... (with ``worst_usd`` when ``worst`` is given)."""
    frame = pl.DataFrame(
        {
            "job_id": [f"j{i:03d}" for i in range(start, start + n)],
            "provider": "openai",
            "model": model,
            "prompt": [f"prompt {i}" for i in range(start, start + n)],
            "system": pl.Series([None] * n, dtype=pl.String),
        }
    )
    if worst is not None:
        frame = frame.with_columns(pl.lit(worst).alias("worst_usd"))
    if est_input_tokens is not None:
        frame = frame.with_columns(
            pl.lit(est_input_tokens, dtype=pl.Int64).alias("est_input_tokens"),
            pl.lit(est_input_tokens * 1.0 / 1e6).alias("est_input_usd"),
        )
    return frame


SPEC = RequestSpec(schema=AnswerSchema(None), params={"max_tokens": 100})


def make_run(
    tmp_path: Path,
    provider: FakeProvider,
    options: RunOptions | None = None,
) -> tuple[RunContext, RunState]:
    """A context over a real StateStore in ``tmp_path``, and a fresh run state."""
    ctx = RunContext(
        store=StateStore(tmp_path / "state", {"test": "1"}),
        providers={"openai": provider},
        spec=SPEC,
        prices=PRICES,
        options=options or RunOptions(),
        clock=provider.clock,
    )
    return ctx, RunState(started=provider.clock.monotonic())


def in_flight(ctx: RunContext, batch_id: str, job_ids: list[str], *, reserved: float = 0.0,
              model: str = MODEL, key: str | None = None,
              est_input: list[int] | None = None) -> InFlightBatch:
    """An in-flight record for a batch the fake provider holds (``est_input``: its jobs'
    estimated input tokens)."""
    return InFlightBatch(
        batch_key=key or f"k_{batch_id}",
        provider="openai",
        model=model,
        provider_batch_id=batch_id,
        ids=PackedIds.of(pl.Series("job_id", job_ids, dtype=pl.String)),
        backoff=ctx.backoff(),
        reserved=reserved,
        est_input=None if est_input is None else pl.Series(est_input, dtype=pl.Int64),
    )


def batch_events(ctx: RunContext) -> list[tuple[str, str | None, str | None]]:
    """(status, provider_batch_id, detail) of every batch event, in order."""
    events = ctx.store._scan("batches", _batch_schema()).sort("seq")
    return list(events.select("status", "provider_batch_id", "detail").iter_rows())


def _batch_schema() -> pl.Schema:
    from batchata_df.state import BATCH_EVENTS

    return BATCH_EVENTS


def job_events(ctx: RunContext) -> pl.DataFrame:
    """Every job event, in order."""
    return ctx.store.job_events().sort("seq")
