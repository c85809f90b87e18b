"""The checkpoint folder: a manifest plus append-only Parquet event parts.

Layout (format version 1)::

    <state>/
      manifest.json                      format version, run id, fingerprint
      jobs/part-<ns>-<rand>.parquet      job events        (schema: JOB_EVENTS)
      batches/part-<ns>-<rand>.parquet   batch events      (schema: BATCH_EVENTS)

Every part is written to a hidden temporary name, flushed to disk and renamed, so a reader
(a resumed run, or DuckDB while a run is in flight) sees whole parts or nothing. Parts are
never rewritten: the current state of a job or batch is its latest event (highest ``seq``).
Writing costs O(events written), never O(run size), unlike a state file rewritten per
batch.

``est_cost_usd`` is set on ``assigned`` events when the run had estimates (a cost cap or a
dry run): the worst case (estimated input, ``max_tokens`` output) that admission control
held against the cap.

``citations`` is set on ``completed`` events of runs with ``citations=True``: JSON text
``{"field": [citation, ...]}`` (see :mod:`batchata_df.citations`); null otherwise. Parts
written before it existed read as null.

Job event statuses: ``assigned`` (put in a provider batch, written *before* submitting),
``completed``, ``failed``, ``cancelled``. Batch event statuses: ``intent`` (written before
the provider is called), ``submitted`` (the provider's batch id, written right after),
``cancel_requested``, ``collected`` (results stored), ``abandoned`` (an intent that never
reached the provider).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import polars as pl

from batchata_df.errors import StateError, StateMismatchError
from batchata_df.redact import scrub_expr

__all__ = ["BATCH_EVENTS", "FORMAT_VERSION", "JOB_EVENTS", "StateStore", "spent_usd"]

FORMAT_VERSION = 1

JOB_EVENTS = pl.Schema(
    {
        "seq": pl.Int64(),
        "ts": pl.Datetime("us", "UTC"),
        "job_id": pl.String(),
        "batch_key": pl.String(),
        "provider": pl.String(),
        "model": pl.String(),
        "provider_batch_id": pl.String(),
        "status": pl.String(),
        "error": pl.String(),
        "answer": pl.String(),
        "input_tokens": pl.Int64(),
        "output_tokens": pl.Int64(),
        "cached_tokens": pl.Int64(),
        "cost_usd": pl.Float64(),
        "est_cost_usd": pl.Float64(),
        "citations": pl.String(),
    }
)
"""Schema of a job event part (public, versioned by ``FORMAT_VERSION``)."""

BATCH_EVENTS = pl.Schema(
    {
        "seq": pl.Int64(),
        "ts": pl.Datetime("us", "UTC"),
        "batch_key": pl.String(),
        "provider": pl.String(),
        "model": pl.String(),
        "provider_batch_id": pl.String(),
        "status": pl.String(),
        "provider_status": pl.String(),
        "n_jobs": pl.Int64(),
        "n_bytes": pl.Int64(),
        "detail": pl.String(),
    }
)
"""Schema of a batch event part (public, versioned by ``FORMAT_VERSION``)."""

TERMINAL_JOB = ("completed", "failed", "cancelled")


@dataclass
class Manifest:
    """Contents of ``manifest.json``."""

    run_id: str
    fingerprint: dict[str, str]
    format_version: int = FORMAT_VERSION
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        """Serialise to JSON text."""
        return json.dumps(
            {
                "format_version": self.format_version,
                "run_id": self.run_id,
                "created_at": self.created_at,
                "fingerprint": self.fingerprint,
            },
            indent=2,
            sort_keys=True,
        )


class StateStore:
    """Append-only Parquet checkpoint store for one run.

    Parameters
    ----------
    root
        The checkpoint folder; created if missing.
    fingerprint
        What identifies the run (model, prompt, schema, params hashes). A folder written by
        a run with another fingerprint is refused with :class:`StateMismatchError`.

    Examples
    --------
    >>> import tempfile
    >>> store = StateStore(tempfile.mkdtemp(), {"model": "m"})
    >>> store.job_state().height
    0
    """

    def __init__(self, root: str | os.PathLike[str], fingerprint: Mapping[str, str]) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._last_seq = 0
        try:
            (self.root / "jobs").mkdir(parents=True, exist_ok=True)
            (self.root / "batches").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            msg = f"cannot create the checkpoint folder {str(self.root)!r}: {e}"
            raise StateError(msg) from e
        self.manifest = self._open_manifest(dict(fingerprint))
        # Order must survive a clock that is behind the one of an earlier call (another
        # machine, an NTP step): new events always sort after every recorded one.
        self._last_seq = max(self._max_seq("jobs"), self._max_seq("batches"))

    # -- manifest -------------------------------------------------------------------------

    def _open_manifest(self, fingerprint: dict[str, str]) -> Manifest:
        path = self.root / "manifest.json"
        if not path.exists():
            manifest = Manifest(run_id=secrets.token_hex(8), fingerprint=fingerprint)
            try:
                self._atomic_write(path, manifest.to_json().encode())
            except OSError as e:
                msg = (
                    f"cannot write the manifest of the checkpoint folder {str(self.root)!r} "
                    f"({type(e).__name__}: {e.strerror or e}); make the folder writable or "
                    "pass another state="
                )
                raise StateError(msg) from e
            return manifest
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            msg = f"{str(path)!r} is not a readable batchata-df manifest: {e}"
            raise StateError(msg) from e
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            msg = (
                f"checkpoint folder {str(self.root)!r} has format version {version!r}; this "
                f"batchata-df reads version {FORMAT_VERSION}. Use a new state folder, or the "
                "batchata-df version that wrote it"
            )
            raise StateError(msg)
        old = raw.get("fingerprint", {})
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if diff:
            msg = (
                f"checkpoint folder {str(self.root)!r} was written for a run with a different "
                f"{', '.join(diff)}; resuming it would mix answers. Pass the same arguments as "
                "before, or use a new state folder (or delete this one) to start over"
            )
            raise StateMismatchError(msg)
        return Manifest(
            run_id=raw["run_id"],
            fingerprint=old,
            format_version=version,
            created_at=raw.get("created_at", 0.0),
        )

    # -- writing --------------------------------------------------------------------------

    def _next_seq(self, n: int) -> int:
        """Reserve ``n`` increasing sequence numbers; returns the first."""
        with self._lock:
            start = max(time.time_ns(), self._last_seq + 1)
            self._last_seq = start + n - 1
            return start

    @staticmethod
    def _atomic_write(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _write_part(self, table: str, frame: pl.DataFrame) -> None:
        name = f"part-{time.time_ns():020d}-{secrets.token_hex(3)}.parquet"
        final = self.root / table / name
        tmp = final.with_name(f".tmp-{name}")
        # Messages are scrubbed of secrets before they reach the disk (batchata_df.redact).
        frame = frame.with_columns(
            scrub_expr(pl.col(c)) for c in ("error", "detail") if c in frame.columns
        )
        try:
            frame.write_parquet(tmp, compression="zstd", statistics=False)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            msg = (
                f"cannot write to the checkpoint folder {str(self.root)!r} "
                f"({type(e).__name__}: {e.strerror or e}); make it writable again (or free "
                "space) and call again with the same state: rows already sent are collected, "
                "not paid twice"
            )
            raise StateError(msg) from e

    def append_jobs(self, events: pl.DataFrame) -> None:
        """Append job events; missing columns are filled with nulls."""
        if events.height == 0:
            return
        start = self._next_seq(events.height)
        now = pl.lit(time.time_ns() // 1000).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        frame = events.with_columns(
            pl.int_range(start, start + events.height, dtype=pl.Int64).alias("seq"),
            now.alias("ts"),
        )
        self._write_part("jobs", _conform(frame, JOB_EVENTS))

    def append_batch(self, **values: Any) -> None:
        """Append one batch event."""
        seq = self._next_seq(1)
        row = {name: values.get(name) for name in BATCH_EVENTS}
        row["seq"] = seq
        row["ts"] = None
        frame = pl.DataFrame([row], schema=BATCH_EVENTS, orient="row").with_columns(
            pl.lit(time.time_ns() // 1000)
            .cast(pl.Datetime("us"))
            .dt.replace_time_zone("UTC")
            .alias("ts")
        )
        unknown = set(values) - set(BATCH_EVENTS)
        if unknown:
            msg = f"unknown batch event fields {sorted(unknown)!r}"
            raise ValueError(msg)
        self._write_part("batches", frame)

    # -- reading --------------------------------------------------------------------------

    def _max_seq(self, table: str) -> int:
        parts = sorted((self.root / table).glob("part-*.parquet"))
        if not parts:
            return 0
        top = pl.scan_parquet(parts).select(pl.col("seq").max()).collect().item()
        return int(top or 0)

    def _lazy(self, table: str, schema: pl.Schema) -> pl.LazyFrame:
        parts = sorted(p for p in (self.root / table).glob("part-*.parquet"))
        if not parts:
            return pl.LazyFrame(schema=schema)
        # Parts written by older versions may lack newer columns (or carry dropped ones).
        return pl.scan_parquet(
            parts, schema=schema, missing_columns="insert", extra_columns="ignore"
        ).select(list(schema))

    def _scan(self, table: str, schema: pl.Schema) -> pl.DataFrame:
        return _conform(self._lazy(table, schema).collect(), schema)

    def job_events(self) -> pl.DataFrame:
        """Every job event ever written, in write order."""
        return self._scan("jobs", JOB_EVENTS).sort("seq")

    def job_state(self, events: pl.DataFrame | None = None) -> pl.DataFrame:
        """The latest event of every job (from ``events`` if given, else read)."""
        events = self.job_events() if events is None else events
        # Events are sorted by seq: the last row of each job is its state.
        return events.unique("job_id", keep="last", maintain_order=True)

    def billed(self) -> pl.DataFrame:
        """What each job was billed over all its attempts.

        Columns ``job_id``, ``cost_usd``, ``input_tokens``, ``output_tokens``, ``attempts``.
        A job sent again (``retry_failed``, or after a cancel) has one terminal event per
        provider batch it was in; each is billed. Re-collecting the same batch after a crash
        writes the same events again, so events count once per (job, batch).
        """
        return billed_from_events(self.job_events())

    def snapshot(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """``(job_state(), billed())``, reading only what they need.

        Only the latest event of each job is materialized with its answer, and billing reads
        the usage columns alone, so a run of millions of jobs is not held in memory twice.
        """
        lazy = self._lazy("jobs", JOB_EVENTS)
        last = lazy.group_by("job_id").agg(pl.col("seq").max())
        latest = lazy.join(last, on=["job_id", "seq"], how="semi").sort("seq")
        usage = lazy.select(
            "seq", "job_id", "batch_key", "status", "cost_usd", "input_tokens", "output_tokens"
        )
        state, billed = pl.collect_all([latest, billed_from_events(usage)])
        return _conform(state, JOB_EVENTS), billed

    def batch_state(self) -> pl.DataFrame:
        """The latest event of every batch, with the first known provider batch id."""
        events = self._scan("batches", BATCH_EVENTS).sort("seq")
        if events.height == 0:
            return events
        ids = events.group_by("batch_key").agg(
            pl.col("provider_batch_id").drop_nulls().first().alias("_pbid")
        )
        latest = events.group_by("batch_key").agg(pl.all().sort_by("seq").last())
        return (
            latest.join(ids, on="batch_key", how="left")
            .with_columns(pl.coalesce("provider_batch_id", "_pbid").alias("provider_batch_id"))
            .drop("_pbid")
            .sort("seq")
        )


@overload
def billed_from_events(events: pl.DataFrame) -> pl.DataFrame: ...
@overload
def billed_from_events(events: pl.LazyFrame) -> pl.LazyFrame: ...
def billed_from_events(events: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
    """Per job, the cost and tokens of every billed attempt, summed (see ``billed``)."""
    billable = (
        pl.col("batch_key").is_not_null()
        | pl.col("cost_usd").is_not_null()
        | pl.col("input_tokens").is_not_null()
    )
    terminal = events.filter(pl.col("status").is_in(TERMINAL_JOB) & billable).with_columns(
        pl.col("batch_key").fill_null("")
    )
    per_attempt = terminal.group_by("job_id", "batch_key").agg(
        pl.col("cost_usd", "input_tokens", "output_tokens").sort_by("seq").last()
    )

    def total(col: str) -> pl.Expr:
        # Null when no attempt reported it (no price known, or no usage reported).
        known = pl.col(col).null_count() < pl.len()
        return pl.when(known).then(pl.col(col).sum()).alias(col)

    return per_attempt.group_by("job_id").agg(
        total("cost_usd"),
        total("input_tokens"),
        total("output_tokens"),
        pl.len().cast(pl.Int64).alias("attempts"),
    )


def spent_usd(root: str | os.PathLike[str]) -> float:
    """What a checkpoint folder's jobs were billed, every attempt counted (0 if none).

    Reads the parts directly, without checking the manifest's fingerprint.
    """
    parts = sorted(Path(root, "jobs").glob("part-*.parquet"))
    if not parts:
        return 0.0
    events = pl.scan_parquet(
        parts, schema=JOB_EVENTS, missing_columns="insert", extra_columns="ignore"
    ).collect()
    return float(billed_from_events(events).get_column("cost_usd").fill_null(0.0).sum())


def _conform(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """Select ``schema``'s columns in order, casting and adding missing ones as nulls."""
    cols = []
    for name, dtype in schema.items():
        if name in frame.columns:
            cols.append(pl.col(name).cast(dtype))
        else:
            cols.append(pl.lit(None, dtype=dtype).alias(name))
    return frame.select(cols)
