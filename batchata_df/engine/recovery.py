"""Recovery: what an earlier call left behind, before anything new is sent.

Batches in flight are re-attached; an ``intent`` without a provider id (a crash between
"created" and our checkpoint) is looked up at the provider (``find``) and either adopted
or abandoned. :func:`settled` and :func:`busy_jobs` say which jobs a new call must not
send again; the dry run uses the same rules.
"""

from __future__ import annotations

import polars as pl

from batchata_df.engine.run import (
    IN_FLIGHT,
    BatchPhase,
    InFlightBatch,
    PackedIds,
    RunContext,
    RunState,
)
from batchata_df.providers.base import BatchTag, Provider, remember_damaged
from batchata_df.state import (  # the details are stored in the folder: state's vocabulary
    ADOPTED_DETAILS,
    FOUND_AFTER_CRASH,
    FOUND_AFTER_FAILED_CREATE,
    FOUND_BY_REPAIR,
    StateStore,
    lost_usd,
)

__all__ = [
    "ADOPTED_DETAILS", "FOUND_AFTER_CRASH", "FOUND_AFTER_FAILED_CREATE", "FOUND_BY_REPAIR",
    "LOST", "as_lost", "busy_jobs", "recover", "resolve_lost", "settled", "spent_on_lost",
]

LOST = (
    "lost: a realtime request was in flight when an earlier call stopped; the provider may "
    "have answered and billed it, so it is not sent again automatically (retry_failed=True "
    "sends it again)"
)


def settled(state: pl.DataFrame, *, retry_failed: bool) -> pl.DataFrame:
    """The jobs (latest events) a new call must not send again.

    Completed jobs, and failed ones unless ``retry_failed``. Cancelled jobs (cost cap, time
    limit, interrupt, provider cancel) got no answer and were not billed for it, so a later
    call sends them again. The dry run uses the same rule.
    """
    keep = ["completed"] if retry_failed else ["completed", "failed"]
    return state.filter(pl.col("status").is_in(keep))


def resolve_lost(store: StateStore, latest: pl.DataFrame) -> pl.DataFrame:
    """End realtime requests an earlier call left in flight ``failed`` with :data:`LOST`.

    ``latest`` is the latest event of every job (``StateStore.snapshot``); the jobs whose
    latest event is a realtime ``assigned`` get a ``failed`` event, and ``latest`` is
    returned with it. A realtime request has no id to look up at the provider, so it is
    never sent again blindly (that could pay twice), in either mode.
    """
    if "mode" not in latest.columns:
        return latest
    rows = latest.filter(_LEFT_IN_FLIGHT)
    if rows.height == 0:
        return latest
    events = rows.select("job_id", "batch_key", "provider", "model", "est_cost_usd").with_columns(
        pl.lit("failed").alias("status"),
        pl.lit(LOST).alias("error"),
        pl.lit("realtime").alias("mode"),
    )
    store.append_jobs(events)
    return as_lost(latest)


_LEFT_IN_FLIGHT = (pl.col("status") == "assigned") & (pl.col("mode") == "realtime")


def as_lost(latest: pl.DataFrame) -> pl.DataFrame:
    """``latest`` with the realtime requests left in flight ended ``failed`` :data:`LOST`.

    As :func:`resolve_lost` ends them, writing nothing: what a dry run plans from, as the
    run will see them.
    """
    if "mode" not in latest.columns:
        return latest
    return latest.with_columns(
        pl.when(_LEFT_IN_FLIGHT).then(pl.lit("failed")).otherwise(pl.col("status")).alias("status"),
        pl.when(_LEFT_IN_FLIGHT).then(pl.lit(LOST)).otherwise(pl.col("error")).alias("error"),
    )


def spent_on_lost(ctx: RunContext) -> float:
    """What a run counts as spent for the folder's lost realtime requests (their worst case).

    Every attempt recorded in the folder that the provider may have billed with no cost
    stored (:func:`~batchata_df.state.lost_usd`): lost in flight or answered 5xx, also one
    whose row was sent again and answered since (the provider may have billed both). The
    same figure with or without a cap, as ``batchata-df status`` and
    :data:`~batchata_df.query.LOST_REQUESTS` show it (a folder of batch runs reads its
    ``mode`` column's statistics only: a few ms at 1M jobs). Not read from the jobs' latest
    events: a 5xx attempt's event is no longer its job's latest once the row went again.
    """
    return lost_usd(ctx.store.root)


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


def recover(ctx: RunContext, state: RunState) -> list[InFlightBatch]:
    """Re-attach batches in flight; resolve intents left by a crash before submitting.

    A batch whose outcomes are already stored (a crash before its ``collected`` event) is
    recorded collected instead of re-attached: its results are not fetched again and its
    jobs are not counted twice.

    Fills ``state.known_ids`` with every provider batch id recorded so far.
    """
    store = ctx.store
    batches = store.batch_state()
    state.known_ids = set(batches.get_column("provider_batch_id").drop_nulls().to_list())
    if batches.height == 0:
        return []
    # Only the members of batches still open are needed: read them alone, not the folder.
    open_keys = batches.filter(
        pl.col("status").is_in([*IN_FLIGHT, BatchPhase.INTENT.value])
    ).get_column("batch_key")
    if open_keys.len() == 0:  # every batch ended: nothing to re-attach or resolve
        return []
    # Results downloads an earlier process found not UTF-8: the same bytes served again
    # are then the provider's at once (only their lines' rows fail), never pending forever.
    for download, digest in store.damaged_downloads():
        remember_damaged(download, digest)
    assigned, outcomes = store.members_and_outcomes(open_keys)
    stored = _outcomes_stored(assigned, outcomes)
    # Each batch's members straight into its Series: never a Python object per job id (a
    # killed 10M-row run leaves 1.6M ids in flight: as Python strings, +202 MB measured apart).
    members = assigned.select("batch_key", "job_id")
    del assigned, outcomes
    member_map = {
        str(key): part.get_column("job_id")
        for (key,), part in members.partition_by(
            "batch_key", as_dict=True, maintain_order=True, include_key=False
        ).items()
    }
    del members
    # Adopted by an earlier call and still open: still not known to be ours.
    adopted = store.batch_keys_with_detail(*ADOPTED_DETAILS)
    out: list[InFlightBatch] = []
    for row in batches.iter_rows(named=True):
        key, status = row["batch_key"], row["status"]
        if key in stored and status in IN_FLIGHT:
            store.append_batch(
                batch_key=key,
                provider=row["provider"],
                model=row["model"],
                provider_batch_id=row["provider_batch_id"],
                status=BatchPhase.COLLECTED.value,
                n_jobs=member_map[key].len(),
                detail="its results were stored before a crash; recorded collected on resume",
            )
            continue
        provider = provider_for(ctx, row["provider"], status)
        if status == BatchPhase.INTENT and provider is not None:
            members_of = member_map.get(key, pl.Series("job_id", [], pl.String))
            tag = BatchTag(
                run_id=store.manifest.run_id,
                batch_key=key,
                created_after=row["ts"].timestamp(),
                n_jobs=row["n_jobs"],
                job_ids=frozenset(members_of.to_list()),
                known_batch_ids=frozenset(state.known_ids),
            )
            found = provider.find(tag)
            if found is None:
                store.append_batch(
                    batch_key=key,
                    provider=row["provider"],
                    model=row["model"],
                    status=BatchPhase.ABANDONED.value,
                    detail="the submit never reached the provider",
                )
                continue
            store.append_batch(
                batch_key=key,
                provider=row["provider"],
                model=row["model"],
                provider_batch_id=found,
                status=BatchPhase.SUBMITTED.value,
                detail=FOUND_AFTER_CRASH,
                sent_on=row["sent_on"],  # the intent's: sent (if at all) that day
            )
            row["provider_batch_id"], status = found, BatchPhase.SUBMITTED.value
            adopted.add(key)
            state.known_ids.add(found)
        if status in IN_FLIGHT and provider is not None:
            out.append(
                InFlightBatch(
                    batch_key=key,
                    provider=row["provider"],
                    model=row["model"],
                    provider_batch_id=row["provider_batch_id"],
                    ids=PackedIds.of(member_map.get(key, pl.Series("job_id", [], pl.String))),
                    backoff=ctx.backoff(),
                    status=status,
                    cancel_reason=(
                        row["detail"] if status == BatchPhase.CANCEL_REQUESTED else None
                    ),
                    recovered=True,
                    sent_on=row["sent_on"],
                    # found by a lookup that may find another's (not by our own tag)
                    adopted=key in adopted and not provider.find_is_exact,
                )
            )
    return out


def _outcomes_stored(assigned: pl.DataFrame, outcomes: pl.DataFrame) -> set[str]:
    """The batches whose every job has a terminal event under the batch's key.

    A crash after a batch's outcomes were stored (one part, written whole), before it was
    recorded collected, leaves such a batch: it is recorded collected on resume, so that
    its results are neither fetched nor counted again. A batch with some jobs still
    without one (e.g. reopened by ``repair`` after a damaged part) is collected again.
    """
    if outcomes.height == 0:
        return set()
    missing = assigned.join(outcomes, on=["batch_key", "job_id"], how="anti")
    # The batches' keys, each once (not a Python string per member: 1.6M at 10M rows).
    keys = set(outcomes.get_column("batch_key").unique().to_list())
    return keys - set(missing.get_column("batch_key").unique().to_list())


def provider_for(ctx: RunContext, name: str | None, status: str) -> Provider | None:
    """The provider of a recorded batch, created if this call's rows do not need it.

    A batch in flight (or an unresolved intent) must be re-attached even when the current
    frame has no rows for its provider: its worst case still counts against the cap, and
    its orphan must still be looked for.
    """
    if name is None:
        return None
    needed = status in (BatchPhase.INTENT, *IN_FLIGHT)
    if name not in ctx.providers and ctx.make_provider is not None and needed:
        ctx.providers[name] = ctx.make_provider(name)
    return ctx.providers.get(name)
