"""Dry runs: the plan and its worst-case cost, without sending anything."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from batchata_df.engine import RunOptions, busy_jobs, plan_batches, settled
from batchata_df.engine.recovery import as_lost
from batchata_df.providers import make_provider
from batchata_df.providers.base import RequestSpec
from batchata_df.state import StateStore

if TYPE_CHECKING:
    from batchata_df.progress import PlanSummary

__all__ = ["PLAN_COLUMNS", "dry_run_plan"]

PLAN_COLUMNS = (
    "_status",
    "_job_id",
    "_provider",
    "_model",
    "_est_input_tokens",
    "_est_output_tokens_max",
    "_est_output_tokens_expected",
    "_est_cost_usd",
    "_expected_cost_usd",
    "_batch_index",
    "_within_cap",
    "_mode",
)
"""Columns a dry run appends to the input frame.

``_status`` is ``planned`` (would be sent), ``duplicate`` (same request as an earlier row:
sent once), ``done`` (answered in the state folder: the run returns it ``completed``),
``in_flight`` (in a batch that may still be running; a later call collects it), or
``failed`` (the run returns it ``failed`` without sending it: bad input, or it failed in
an earlier call on the state folder and is kept so, as without ``retry_failed`` the run
keeps it; with ``retry_failed`` such a row is ``planned``, its cost counted).
``_est_cost_usd`` is the worst case: estimated input tokens plus ``max_tokens`` of output
at the model's batch price (what the cap reserves). ``_expected_cost_usd`` is the
expected cost: ``_est_output_tokens_expected`` output tokens (the mean of the answers
already in the state folder for the model, else the schema's answer size) and the
expected prompt-cache reads and writes (:mod:`batchata_df.estimates`).
``_within_cap`` says whether the request fits under ``max_cost_usd`` (null without a cap)
at the worst case: a real run may fit more, as actual costs come in below the worst case.
``_mode`` is how a planned request would be sent: ``"batch"`` or ``"realtime"`` (at the
standard price; ``_batch_index`` is then null). With ``mode="auto"`` it is what the run
would decide at the start (small jobs and a near deadline: realtime); batches still
unfinished near the deadline go realtime later, which a plan cannot foresee.
"""


def _recorded(
    state: str | os.PathLike[str] | None,
    fingerprint: dict[str, str],
    retry_failed: bool,
    sendable: pl.DataFrame,
) -> tuple[set[str], set[str], set[str], float]:
    """From an existing state folder: settled, kept failed and busy job ids, money held.

    Kept failed: the settled jobs the run returns ``failed`` (:func:`failed_ids`). The
    same rules as the engine (:func:`~batchata_df.engine.settled`,
    :func:`~batchata_df.engine.busy_jobs`); held = billed so far plus the worst case of
    batches that may still be running.
    """
    if state is None or not Path(state).is_dir():
        return set(), set(), set(), 0.0
    # Validates the fingerprint, refuses a damaged folder; writes nothing, needs no lock.
    store = StateStore(state, fingerprint, readonly=True)
    current, billed = store.snapshot()
    # Realtime requests left in flight are lost: the run does not send them again.
    current = as_lost(current)
    done = settled(current, retry_failed=retry_failed)
    busy = busy_jobs(store, current)
    held = float(billed.get_column("cost_usd").fill_null(0.0).sum())
    # Busy jobs hold their worst case, priced now as the engine does (the recorded estimate
    # is missing when the call that sent them had no cap).
    if "worst_usd" in sendable.columns and busy.height:
        worst = sendable.select("job_id", "worst_usd")
        fallback = float(worst.get_column("worst_usd").max() or 0.0)  # type: ignore[arg-type]
        priced = busy.join(worst, on="job_id", how="left").select(
            pl.coalesce("worst_usd", "est_cost_usd", pl.lit(fallback))
        )
        held += float(priced.to_series().sum())
    else:
        held += float(busy.get_column("est_cost_usd").fill_null(0.0).sum())
    return (
        set(done.get_column("job_id").to_list()),
        set(failed_ids(done).to_list()),
        set(busy.get_column("job_id").to_list()),
        held,
    )


def failed_ids(settled_jobs: pl.DataFrame) -> pl.Series:
    """The job ids of :func:`~batchata_df.engine.settled` jobs that a run keeps ``failed``.

    A run returns them failed with their stored error and sends nothing (without
    ``retry_failed``; with it, :func:`~batchata_df.engine.settled` leaves them out and
    they are planned): the plan labels them ``failed``, not ``done``.
    """
    return settled_jobs.filter(pl.col("status") == "failed").get_column("job_id")


def dry_run_plan(
    frame: pl.DataFrame,
    jobs: pl.DataFrame,
    sendable: pl.DataFrame,
    spec: RequestSpec,
    options: RunOptions,
    state: str | os.PathLike[str] | None,
    fingerprint: dict[str, str],
    show: Callable[[PlanSummary], None] | None = None,
    *,
    mode: str = "batch",
    realtime_jobs: pl.DataFrame | None = None,
    concurrency: int | None = None,
    deadline_s: float | None = None,
) -> pl.DataFrame:
    """Plan the run and return the plan; ``show`` receives a summary for people.

    ``realtime_jobs`` are ``sendable`` priced at realtime rates (``mode="auto"``).
    """
    from batchata_df.engine.auto import AUTO_REALTIME_MAX_JOBS, realtime_seconds
    from batchata_df.engine.realtime import DEFAULT_CONCURRENCY

    done, kept, busy, spent = _recorded(state, fingerprint, options.retry_failed, sendable)
    spent += options.stored_unpriced_usd  # priced at prices= (none without a cap)
    from batchata_df.frame import _observed

    observed = _observed(state, fingerprint)
    todo = sendable.filter(~pl.col("job_id").is_in(list(done | busy)))
    concurrency = concurrency or DEFAULT_CONCURRENCY
    plan_mode = mode
    if mode == "auto":
        near = deadline_s is not None and realtime_seconds(todo.height, concurrency) >= deadline_s
        plan_mode = "realtime" if todo.height <= AUTO_REALTIME_MAX_JOBS or near else "batch"
        if plan_mode == "realtime" and realtime_jobs is not None:
            sendable = realtime_jobs
            todo = sendable.filter(~pl.col("job_id").is_in(list(done | busy)))
    providers = {
        name: make_provider(name, offline=True)
        for name in todo.get_column("provider").unique().to_list()
    }
    rows: list[pl.DataFrame] = []
    batches: list[dict[str, object]] = []
    planned_batches = plan_batches(todo, providers, spec, options.items_per_batch)
    if plan_mode == "realtime":  # one request at a time: no batches to number
        planned_batches = iter(())
        rows.append(
            todo.select("job_id").with_columns(pl.lit(None, dtype=pl.Int64).alias("batch_index"))
        )
    for index, planned in enumerate(planned_batches):
        rows.append(
            pl.DataFrame({"job_id": planned.job_ids}).with_columns(
                pl.lit(index, dtype=pl.Int64).alias("batch_index")
            )
        )
        batches.append(
            {
                "batch": index,
                "provider": planned.provider,
                "model": planned.model,
                "jobs": planned.job_ids.len(),
                "MB": round(planned.n_bytes / 1e6, 3),
                "est_cost_usd": float(planned.worst.sum()),
            }
        )
    index_of = (
        pl.concat(rows)
        if rows
        else pl.DataFrame(schema={"job_id": pl.String, "batch_index": pl.Int64})
    )
    planned_jobs = todo.join(index_of, on="job_id", how="left")
    if plan_mode == "batch":
        planned_jobs = planned_jobs.sort("batch_index", maintain_order=True)
    cap = options.max_cost_usd
    within = (
        (planned_jobs.get_column("worst_usd").cum_sum() + spent <= cap + 1e-12)
        if cap is not None
        else pl.Series([None] * planned_jobs.height, dtype=pl.Boolean)
    )
    planned_jobs = planned_jobs.with_columns(within.alias("within_cap"))

    first = pl.col("job_id").is_first_distinct()
    per_row = jobs.select("job_id", "input_error", "provider", "model").join(
        planned_jobs.select(
            "job_id",
            "est_input_tokens",
            "est_output_tokens_max",
            "worst_usd",
            "est_output_tokens_expected",
            "expected_usd",
            "expected_cache_saved_usd",
            "expected_source",
            "batch_index",
            "within_cap",
        ),
        on="job_id",
        how="left",
        maintain_order="left",
    )
    status = plan_status(
        pl.Series(list(done), dtype=pl.String),
        pl.Series(list(busy), dtype=pl.String),
        ~first,
        kept=pl.Series(list(kept), dtype=pl.String),
    )
    out = per_row.select(plan_columns(status, plan_mode))
    result = pl.concat([frame, out], how="horizontal")
    if show is not None:
        extra = per_row.filter(status == "planned").select(
            "provider", "model", "expected_cache_saved_usd", "expected_source"
        )
        summary = summarize(result, batches, cap, spent, extra=extra, observed=observed)
        show(dataclasses.replace(summary, mode=plan_mode, concurrency=concurrency))
    return result



def plan_status(
    done: pl.Series, busy: pl.Series, repeated: pl.Expr, *, kept: pl.Series
) -> pl.Expr:
    """A plan row's ``_status`` (see :data:`PLAN_COLUMNS`) over a frame of jobs.

    ``done`` and ``busy`` are job ids settled or in flight in the state folder; ``kept``
    those of ``done`` that failed there and that the run keeps failed (:func:`failed_ids`):
    labelled ``failed``, as the run returns them. ``repeated`` marks rows whose request an
    earlier row already has.
    """
    return (
        pl.when(pl.col("input_error").is_not_null() | pl.col("job_id").is_in(kept.implode()))
        .then(pl.lit("failed"))
        .when(pl.col("job_id").is_in(done.implode()))
        .then(pl.lit("done"))
        .when(pl.col("job_id").is_in(busy.implode()))
        .then(pl.lit("in_flight"))
        .when(repeated)
        .then(pl.lit("duplicate"))
        .otherwise(pl.lit("planned"))
    )


def plan_columns(status: pl.Expr, mode: str) -> list[pl.Expr]:
    """The :data:`PLAN_COLUMNS`, in order, from jobs joined with their estimates.

    Estimates and batch figures count only on rows that would be sent (``planned``).
    """
    sent = status == "planned"
    return [
        status.alias("_status"),
        pl.when(pl.col("input_error").is_null()).then(pl.col("job_id")).alias("_job_id"),
        pl.col("provider").alias("_provider"),
        pl.col("model").alias("_model"),
        pl.when(sent).then(pl.col("est_input_tokens")).otherwise(0).alias("_est_input_tokens"),
        pl.when(sent)
        .then(pl.col("est_output_tokens_max"))
        .otherwise(0)
        .alias("_est_output_tokens_max"),
        pl.when(sent)
        .then(pl.col("est_output_tokens_expected"))
        .otherwise(0)
        .alias("_est_output_tokens_expected"),
        pl.when(sent).then(pl.col("worst_usd")).otherwise(0.0).alias("_est_cost_usd"),
        pl.when(sent).then(pl.col("expected_usd")).otherwise(0.0).alias("_expected_cost_usd"),
        pl.when(sent).then(pl.col("batch_index")).alias("_batch_index"),
        pl.when(sent).then(pl.col("within_cap")).alias("_within_cap"),
        pl.when(sent).then(pl.lit(mode)).alias("_mode"),
    ]

def summarize(
    plan: pl.DataFrame,
    batches: list[dict[str, object]],
    cap: float | None,
    held: float,
    *,
    extra: pl.DataFrame | None = None,
    observed: Mapping[tuple[str, str], Any] | None = None,
) -> PlanSummary:
    """The figures a person reads from a plan (see :class:`~batchata_df.progress.PlanSummary`)."""
    from batchata_df.progress import PlanSummary

    planned = plan.filter(pl.col("_status") == "planned")
    order = ["planned", "duplicate", "done", "in_flight", "failed"]
    counts = dict(plan.group_by("_status").len().iter_rows())
    rows_by_status = {k: int(counts[k]) for k in order if counts.get(k)}
    n_batches: dict[tuple[object, object], int] = {}
    for b in batches:
        key = (b["provider"], b["model"])
        n_batches[key] = n_batches.get(key, 0) + 1
    by_model = [
        {
            "provider": row["_provider"],
            "model": row["_model"],
            "jobs": int(row["jobs"]),
            "batches": n_batches.get((row["_provider"], row["_model"]), 0),
            "est_input_tokens": int(row["est_input_tokens"] or 0),
            "max_output_tokens": int(row["max_output_tokens"] or 0),
            "worst_case_usd": float(row["worst_case_usd"] or 0.0),
        }
        for row in planned.group_by("_provider", "_model")
        .agg(
            pl.len().alias("jobs"),
            pl.col("_est_input_tokens").sum().alias("est_input_tokens"),
            pl.col("_est_output_tokens_max").sum().alias("max_output_tokens"),
            pl.col("_est_cost_usd").sum().alias("worst_case_usd"),
        )
        .sort("_provider", "_model")
        .iter_rows(named=True)
    ]
    sources: dict[tuple[str, str], str] = {}
    saved = 0.0
    if extra is not None and extra.height:
        saved = float(extra.get_column("expected_cache_saved_usd").fill_null(0.0).sum())
        for row in extra.group_by("provider", "model").agg(
            pl.col("expected_source").first()
        ).iter_rows(named=True):
            sources[(str(row["provider"]), str(row["model"]))] = str(row["expected_source"])
    for m in by_model:
        m["expected_source"] = sources.get((str(m["provider"]), str(m["model"])), "")
    advice = []
    from batchata_df.estimates import MIN_OBSERVED, suggest_max_tokens

    for m in by_model:
        seen = (observed or {}).get((str(m["provider"]), str(m["model"])))
        if seen is None or seen.n < MIN_OBSERVED or not m["jobs"]:
            continue
        current = int(m["max_output_tokens"]) // int(m["jobs"])
        suggested = suggest_max_tokens(seen)
        if suggested < current:
            advice.append(
                f"{m['model']}: the {seen.n:,} answers in the folder used at most {seen.max:,} "
                f"output tokens (reasoning included); params={{'max_tokens': {suggested}}} "
                f"fits them with a 25% margin (now {current:,}; pass it with a new state= "
                "folder: this one refuses other parameters)"
            )
    within = planned.get_column("_within_cap")
    expected = (
        float(planned.get_column("_expected_cost_usd").fill_null(0.0).sum())
        if "_expected_cost_usd" in planned.columns
        and planned.get_column("_expected_cost_usd").null_count() < planned.height
        else None
    )
    return PlanSummary(
        rows_by_status=rows_by_status,
        by_model=by_model,
        n_batches=len(batches),
        worst_case_usd=float(planned.get_column("_est_cost_usd").sum()),
        held_usd=held,
        max_cost_usd=cap,
        within_cap=planned.height if cap is None else int(within.fill_null(False).sum()),
        expected_usd=expected,
        expected_cache_saved_usd=saved,
        advice=tuple(advice),
    )
