"""Estimates people can plan with: the expected cost beside the worst case, and cap advice.

The cost cap reserves the **worst case** of every request in flight: its estimated input
plus ``max_tokens`` of output (thinking included), so that spend can never pass the cap.
Real answers are usually far shorter, so the worst case alone misleads planning, and a
tight cap serialises a run (batches wait for earlier ones to free their reservation).

This module gives the **expected** figures beside it:

* expected output tokens per request: the answers already observed in the state folder for
  that model (:func:`observed_output`: mean, 99th percentile and maximum of
  ``output_tokens``, reasoning included) once there are at least
  :data:`MIN_OBSERVED` of them, else the schema's answer size (:func:`answer_tokens`), plus
  for a model that thinks a guess of a quarter of the remaining ``max_tokens`` (labelled as
  such);
* expected prompt caching: the first request of each shared prefix writes it (Anthropic) or
  pays it in full, later ones read it (:mod:`batchata_df.caching`);
* cap advice (:func:`suggest_max_tokens`): a ``max_tokens`` that the observed answers fit
  with a margin (:data:`MARGIN`), rounded up to a multiple of 64.

The worst case and the cap are unchanged by all of this: estimates inform, the reservation
decides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import polars as pl

__all__ = [
    "MARGIN",
    "MIN_OBSERVED",
    "Observed",
    "TodoTotals",
    "answer_tokens",
    "count_todo",
    "expected_cache_tokens",
    "input_ratio",
    "observed_output",
    "suggest_max_tokens",
]

MIN_OBSERVED: Final = 5
"""Answers of a model needed before its observed distribution replaces the schema guess."""
MARGIN: Final = 1.25
"""Suggested ``max_tokens`` = largest observed answer (reasoning included) x this margin."""
THINKING_SHARE: Final = 0.25
"""Without observations, a model that thinks is expected to use this share of the room
``max_tokens`` leaves after the answer."""

_FREE_TEXT_TOKENS: Final = 256
_STRING_TOKENS: Final = 12


def answer_tokens(schema: Mapping[str, Any] | None, *, _depth: int = 0) -> int:
    """A typical answer's size in tokens for a JSON schema (``None``: free text).

    A rough, documented guess: strings ~12 tokens (fewer with a small ``maxLength``),
    numbers 3, booleans 1, an enum its longest value, arrays 3 items, objects their
    properties plus keys and punctuation.

    Examples
    --------
    >>> answer_tokens({"type": "object", "properties": {"label": {"enum": ["good", "bad"]},
    ...     "score": {"type": "number"}}})
    13
    >>> answer_tokens(None)
    256
    """
    if schema is None:
        return _FREE_TEXT_TOKENS
    if _depth > 20:
        return _STRING_TOKENS
    for combo in ("anyOf", "oneOf"):
        options = schema.get(combo)
        if isinstance(options, list) and options:
            return max(answer_tokens(o, _depth=_depth + 1) for o in options if isinstance(o, dict))
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return max(1 + len(str(v)) // 4 for v in schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        inner = sum(
            2 + len(name) // 4 + answer_tokens(p, _depth=_depth + 1)
            for name, p in props.items()
            if isinstance(p, dict)
        )
        return 2 + inner
    if kind == "array":
        items = schema.get("items")
        n = schema.get("minItems", 3) if isinstance(schema.get("minItems"), int) else 3
        n = max(n, 1)
        return 2 + n * (1 + answer_tokens(items if isinstance(items, dict) else {}, _depth=_depth))
    if kind in ("number", "integer"):
        return 3
    if kind == "boolean":
        return 1
    if kind == "null":
        return 1
    limit = schema.get("maxLength")
    if isinstance(limit, int) and limit > 0:
        return max(1, min(_STRING_TOKENS, math.ceil(limit / 4)))
    return _STRING_TOKENS


@dataclass(frozen=True)
class Observed:
    """Output tokens (reasoning included) of a model's answers already in the folder."""

    n: int
    mean: float
    p99: int
    max: int
    reasoning_max: int
    inputs: pl.DataFrame | None = None
    """``job_id`` and billed ``input_tokens`` of those answers (and ``answered_by``, where
    the folder records it): the expected input is the offline estimate scaled by
    actual/estimated tokens of the same jobs."""


def observed_output(events: pl.DataFrame | pl.LazyFrame) -> dict[tuple[str, str], Observed]:
    """Per (provider, model), the output tokens of completed answers in ``events``.

    ``events`` are job events (the state folder's ``jobs`` parts): one row per billed
    attempt is enough; rows without usage are ignored. A LazyFrame (a streamed run's
    folder, :meth:`~batchata_df.state.StateStore.answer_usage`) is aggregated without
    holding its rows, and gives no :attr:`Observed.inputs`.

    Examples
    --------
    >>> ev = pl.DataFrame({"provider": ["openai"] * 3, "model": ["m"] * 3,
    ...     "status": ["completed"] * 3, "output_tokens": [10, 30, 20],
    ...     "reasoning_tokens": [0, 5, 0]})
    >>> observed_output(ev)[("openai", "m")].max
    30
    >>> observed_output(ev.lazy())[("openai", "m")].reasoning_max
    5
    """
    needed = {"provider", "model", "status", "output_tokens"}
    columns = set(events.collect_schema().names())
    if not needed <= columns or (isinstance(events, pl.DataFrame) and events.height == 0):
        return {}
    reasoning = (
        pl.col("reasoning_tokens").fill_null(0) if "reasoning_tokens" in columns else pl.lit(0)
    )
    done = events.filter(
        (pl.col("status") == "completed") & pl.col("output_tokens").is_not_null()
    ).with_columns(reasoning.alias("_r"))
    stats = (
        done.lazy()
        .group_by("provider", "model")
        .agg(
            pl.len().alias("n"),
            pl.col("output_tokens").mean().alias("mean"),
            pl.col("output_tokens").quantile(0.99, "higher").alias("p99"),
            pl.col("output_tokens").max().alias("max"),
            pl.col("_r").max().alias("rmax"),
        )
    )
    out: dict[tuple[str, str], Observed] = {}
    for row in stats.collect(engine="streaming").iter_rows(named=True):
        inputs = None
        if isinstance(done, pl.DataFrame) and {"job_id", "input_tokens"} <= columns:
            # Which model answered each (answered_by: a routed model's successor, whose
            # count of the same input may differ; null: the model asked), for input_ratio.
            by = ["answered_by"] if "answered_by" in columns else []
            inputs = done.filter(
                (pl.col("provider") == row["provider"]) & (pl.col("model") == row["model"])
                & pl.col("input_tokens").is_not_null()
            ).select("job_id", "input_tokens", *by)  # fmt: skip
        out[(str(row["provider"]), str(row["model"]))] = Observed(
            n=int(row["n"]),
            mean=float(row["mean"]),
            p99=int(row["p99"]),
            max=int(row["max"]),
            reasoning_max=int(row["rmax"] or 0),
            inputs=inputs,
        )
    return out


@dataclass
class TodoTotals:
    """What the cap advice needs of one model's jobs a call set out to send.

    Sums and a maximum, added up a chunk at a time (a streamed run holds no job table):
    the worst case at another ``max_tokens`` is linear in them (:func:`worst_at`).
    """

    requests: int = 0
    input_usd: float = 0.0
    """Their estimated input cost (``est_input_usd``)."""
    worst_usd: float = 0.0
    """Their worst case (``worst_usd``: input plus ``max_tokens`` of output)."""
    max_tokens: int = 0
    """The largest output allowance among them (``est_output_tokens_max``)."""

    def worst_at(self, max_tokens: int) -> float:
        """Their worst case with output allowances scaled to ``max_tokens``."""
        output = self.worst_usd - self.input_usd
        return self.input_usd + output * max_tokens / max(self.max_tokens, 1)


def count_todo(totals: dict[tuple[str, str], TodoTotals], jobs: pl.DataFrame) -> None:
    """Add ``jobs`` (estimated: ``worst_usd``, ...) to ``totals`` per (provider, model).

    Jobs without estimates (no cap) add nothing.

    Examples
    --------
    >>> totals: dict[tuple[str, str], TodoTotals] = {}
    >>> jobs = pl.DataFrame({"provider": ["openai"] * 2, "model": ["m"] * 2,
    ...     "est_input_usd": [0.1, 0.1], "worst_usd": [0.5, 0.3],
    ...     "est_output_tokens_max": [100, 50]})
    >>> count_todo(totals, jobs); count_todo(totals, jobs.head(1))
    >>> t = totals[("openai", "m")]
    >>> t.requests, round(t.worst_usd, 6), t.max_tokens, round(t.worst_at(50), 6)
    (3, 1.3, 100, 0.8)
    """
    needed = {"provider", "model", "est_input_usd", "worst_usd", "est_output_tokens_max"}
    if jobs.height == 0 or not needed <= set(jobs.columns):
        return
    sums = jobs.group_by("provider", "model").agg(
        pl.len().alias("n"),
        pl.col("est_input_usd").fill_null(0.0).sum().alias("input"),
        pl.col("worst_usd").fill_null(0.0).sum().alias("worst"),
        pl.col("est_output_tokens_max").max().alias("most"),
    )
    for provider, model, n, inp, worst, most in sums.iter_rows():
        total = totals.setdefault((str(provider), str(model)), TodoTotals())
        total.requests += int(n)
        total.input_usd += float(inp)
        total.worst_usd += float(worst)
        total.max_tokens = max(total.max_tokens, int(most or 0))


def input_ratio(
    observed: Observed | None, estimated: pl.DataFrame, successor: str | None = None
) -> float:
    """Actual over estimated input tokens of the observed jobs (1.0: nothing to go by).

    ``estimated`` has ``job_id`` and ``est_input_tokens`` (this call's estimates).
    ``successor``: the model a routed model's requests are answered by
    (``frame.with_estimates``); ``estimated`` then has ``est_input_tokens`` by the asked
    model's rules and ``est_input_tokens_successor`` by the successor's, and each answer
    is set against the count of the model that answered it (``answered_by``): a small
    image is 258 tokens on Gemini 2.5, 1,120 on Gemini 3, so the asked model's bills over
    the successor's count would scale the successor's expected input down ~4x.
    """
    if observed is None or observed.inputs is None or observed.n < MIN_OBSERVED:
        return 1.0
    both = observed.inputs.join(estimated, on="job_id", how="inner")
    if successor is not None:
        answered = pl.lit(False)
        if "answered_by" in both.columns:
            name = successor.removeprefix("models/")
            answered = pl.col("answered_by").str.strip_prefix("models/") == name
        both = both.with_columns(
            pl.when(answered.fill_null(False))
            .then(pl.col("est_input_tokens_successor"))
            .otherwise(pl.col("est_input_tokens"))
            .alias("est_input_tokens")
        )
    est = float(both.get_column("est_input_tokens").sum())
    return float(both.get_column("input_tokens").sum()) / est if est else 1.0


def suggest_max_tokens(observed: Observed) -> int:
    """A ``max_tokens`` the observed answers fit with :data:`MARGIN` (multiple of 64).

    Examples
    --------
    >>> suggest_max_tokens(Observed(n=50, mean=80.0, p99=140, max=150, reasoning_max=0))
    192
    """
    return max(64, math.ceil(observed.max * MARGIN / 64) * 64)


def expected_cache_tokens(jobs: pl.DataFrame, provider: str) -> tuple[pl.Expr, pl.Expr]:
    """Expected (read, written) prompt-cache tokens per job, from the cache plan columns.

    The first job of each ``cache_key`` (in send order) writes the prefix (Anthropic; the
    others pay it in full), later ones read it: OpenAI in 128-token steps from 1,024.
    """
    if "cache_key" not in jobs.columns:
        zero = pl.lit(0, dtype=pl.Int64)
        return zero, zero
    key = pl.col("cache_key")
    tokens = pl.col("cache_prefix_tokens").fill_null(0)
    first = key.is_not_null() & key.is_first_distinct()
    later = key.is_not_null() & ~key.is_first_distinct()
    if provider == "openai":
        from batchata_df.caching import OPENAI_MIN, OPENAI_STEP

        steps = OPENAI_MIN + (tokens - OPENAI_MIN) // OPENAI_STEP * OPENAI_STEP
        read = pl.when(later & (tokens >= OPENAI_MIN)).then(steps).otherwise(0)
    else:
        read = pl.when(later).then(tokens).otherwise(0)
    written = pl.when(first).then(tokens).otherwise(0) if provider == "anthropic" else pl.lit(0)
    return read.cast(pl.Int64), written.cast(pl.Int64)
