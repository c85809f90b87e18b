"""A per-job summary of a checkpoint folder: the ``jobs`` view, written when a run ends.

:func:`batchata_df.sql`'s ``jobs`` view groups every job event by job: over a folder of
ten million jobs (twenty million events) that took DuckDB 26 s of CPU per query. A
streaming run (``batch_llm(lf, ..., sink=...)``) reads every job's events anyway when it
writes its sink, so it writes, beside them, one row per job with exactly the ``jobs``
view's columns (:data:`SUMMARY`) to ``<state>/summary/jobs.parquet``; the view reads that
file instead of grouping the events, when it is valid.

Valid means: it summarizes exactly the job event parts the folder holds now. The file
records the names of those parts (Parquet key-value metadata :data:`PARTS_KEY`); a part
written afterwards (a resumed run, ``reparse``) or a compaction changes the list, and the
view then groups the events as before, so a stale summary is never read. It is written
only when it covers every event of the folder (the events it summarized add up to the
folder's), so a folder holding jobs that the last call's input did not have is grouped too.

:func:`summarize` is the Polars twin of the view's SQL (``batchata_df.query``); the tests
check that both give the same rows (retries, failures, jobs in flight, re-collected
batches, realtime jobs).

Examples
--------
>>> import tempfile
>>> from batchata_df.state import StateStore
>>> folder = tempfile.mkdtemp()
>>> store = StateStore(folder, {"model": "gpt-5.4-mini"})
>>> store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": "assigned", "batch_key": "k"}))
>>> store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": "completed", "batch_key": "k",
...                                 "cost_usd": [0.5]}))
>>> summarize(store.job_events()).select("job_id", "status", "cost_usd", "attempts").row(0)
('a', 'completed', 0.5, 1)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import polars as pl

from batchata_df.state import TERMINAL_JOB, table_parts

__all__ = [
    "PARTS_KEY", "SUMMARY", "SummaryWriter", "dictionary_columns", "summarize", "valid_summary",
]  # fmt: skip

SUMMARY_DIR = "summary"
SUMMARY_FILE = "jobs.parquet"

PARTS_KEY = "batchata_summary_of"
"""Parquet key-value metadata of the summary: the job part names it summarizes (JSON)."""

USAGE = (
    "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
    "reasoning_tokens", "cost_usd", "cache_saved_usd",
)  # fmt: skip

SUMMARY = pl.Schema(
    {
        "job_id": pl.String(),
        "status": pl.String(),
        "error": pl.String(),
        "provider": pl.String(),
        "model": pl.String(),
        "batch_key": pl.String(),
        "provider_batch_id": pl.String(),
        "answer": pl.String(),
        "raw": pl.String(),
        "response": pl.String(),
        "input_tokens": pl.Int64(),
        "output_tokens": pl.Int64(),
        "cached_tokens": pl.Int64(),
        "cache_write_tokens": pl.Int64(),
        "reasoning_tokens": pl.Int64(),
        "cost_usd": pl.Float64(),
        "cache_saved_usd": pl.Float64(),
        "attempts": pl.Int64(),
        "est_cost_usd": pl.Float64(),
        "first_seen_at": pl.Datetime("us", "UTC"),
        "updated_at": pl.Datetime("us", "UTC"),
        "mode": pl.String(),
        "answered_by": pl.String(),
    }
)
"""Columns of the summary: the ``jobs`` view's, but ``run`` (see :mod:`batchata_df.query`)."""


def _latest_known(name: str) -> pl.Expr:
    # DuckDB's arg_max(x, seq): the value of the latest event that has one.
    return pl.col(name).drop_nulls().last().alias(name)


def summarize(events: pl.DataFrame) -> pl.DataFrame:
    """One row per job of ``events`` (all of each job's events), as the ``jobs`` view has it.

    Also returns ``n_events``: how many events each row summarizes. ``events`` need not be
    sorted; null job ids are left out.

    No grouping when each job has the same two events (:func:`_paired`: a streaming
    run's slices, almost always); one grouping by job when no job was billed twice, else
    the view's grouping by billed attempt as well. The order of the rows is not part of
    the result.
    """
    ev = events.filter(pl.col("job_id").is_not_null())
    if not ev.get_column("seq").is_sorted():
        ev = ev.sort("seq", maintain_order=True)
    paired = _paired(ev)
    return paired if paired is not None else _grouped(ev)


_BILLABLE = pl.col("status").is_in(TERMINAL_JOB) & (
    pl.col("batch_key").is_not_null()
    | pl.col("cost_usd").is_not_null()
    | pl.col("input_tokens").is_not_null()
)
"""An event the view bills (a terminal event of a batch, or one that reported usage)."""

_MODE = pl.coalesce(
    pl.col("mode"), pl.when(pl.col("batch_key").is_not_null()).then(pl.lit("batch"))
)
"""How an event's job was sent: realtime events say so; batch events have a batch key."""


def _grouped(ev: pl.DataFrame) -> pl.DataFrame:
    """:func:`summarize` by grouping the events (``ev`` sorted by ``seq``, no null id)."""
    billable, mode = _BILLABLE, _MODE
    latest = ev.with_columns(billable.fill_null(False).alias("_billable")).group_by("job_id").agg(
        _latest_known("status"),
        pl.col("error").last(),
        _latest_known("provider"),
        _latest_known("model"),
        _latest_known("batch_key"),
        _latest_known("provider_batch_id"),
        pl.col("answer").last(),
        pl.col("raw").last(),
        pl.col("response").last(),
        pl.col("answered_by").last(),
        _latest_known("est_cost_usd"),
        pl.col("ts").min().alias("first_seen_at"),
        pl.col("ts").max().alias("updated_at"),
        mode.drop_nulls().last().alias("mode"),
        pl.len().cast(pl.Int64).alias("n_events"),
        pl.col("_billable").last(),
        pl.col(*USAGE).last(),
    )
    ends = int(latest.get_column("_billable").sum())
    if ends == int(ev.select(billable.sum()).item()):
        # Each job whose last event is billed has one billed event (the counts agree), the
        # others none: one attempt, the last event's usage.
        out = latest.with_columns(
            *[pl.when("_billable").then(pl.col(c)).alias(c) for c in USAGE],
            pl.col("_billable").cast(pl.Int64).alias("attempts"),
        )
    else:
        out = latest.drop(*USAGE).join(_billed(ev, billable), on="job_id", how="left")
        out = out.with_columns(pl.col("attempts").fill_null(0))
    return out.select(*[pl.col(c).cast(t) for c, t in SUMMARY.items()], "n_events")


_KNOWN = ("status", "provider", "model", "batch_key", "provider_batch_id", "est_cost_usd")
"""The columns :func:`summarize` takes from the latest event that has them."""


def _paired(ev: pl.DataFrame) -> pl.DataFrame | None:
    """:func:`summarize`'s rows without grouping, when every job has the same two events.

    ``ev`` (sorted by ``seq``, no null id) is the common case of a streaming run's slice:
    each job ``assigned``, then one result. When its ``assigned`` events and its other
    events hold the same ids in the same order, each id once, and each job's ``assigned``
    event comes first, every job has exactly those two events: its row is the pair's
    values side by side (the later event's, or the earlier's where the later has none),
    which is what the grouping gives, without hashing the ids into groups (a 100,000-event
    slice: ~6 against ~21 ms; ``benchmarks/PROFILE.md``, eleventh pass). Rows come in the
    order of the ``assigned`` events. ``None`` (group as usual) for any other history.
    (An ``assigned`` event is never billed, so each job has at most one billed event:
    the grouping's one-attempt case.)
    """
    marked = ev.with_columns(_BILLABLE.fill_null(False).alias("_billable"), _MODE.alias("_mode"))
    first = (pl.col("status") == "assigned").fill_null(False)
    earlier = marked.filter(first)
    later = marked.filter(~first)
    ids = earlier.get_column("job_id")
    if (
        earlier.height != later.height
        or not ids.equals(later.get_column("job_id"), check_names=False)
        or not bool((earlier.get_column("seq") < later.get_column("seq")).fill_null(False).all())
        or ids.n_unique() != ids.len()
    ):
        return None
    before = earlier.select(*_KNOWN, "ts", "_mode")
    pair = later.with_columns(
        *[pl.coalesce(pl.col(c), before.get_column(c)).alias(c) for c in _KNOWN],
        pl.min_horizontal(pl.col("ts"), before.get_column("ts")).alias("first_seen_at"),
        pl.max_horizontal(pl.col("ts"), before.get_column("ts")).alias("updated_at"),
        pl.coalesce(pl.col("_mode"), before.get_column("_mode")).alias("mode"),
        pl.lit(2, dtype=pl.Int64).alias("n_events"),
    )
    # As the grouping's one-attempt case: the later event's usage when it is billed.
    out = pair.with_columns(
        *[pl.when("_billable").then(pl.col(c)).alias(c) for c in USAGE],
        pl.col("_billable").cast(pl.Int64).alias("attempts"),
    )
    return out.select(*[pl.col(c).cast(t) for c, t in SUMMARY.items()], "n_events")


def _billed(ev: pl.DataFrame, billable: pl.Expr) -> pl.DataFrame:
    """Per job, usage added up over its billed attempts (one per provider batch), as SQL."""
    # One row per billed attempt (job, provider batch): the attempt's latest values.
    attempts = (
        ev.filter(billable)
        .with_columns(pl.col("batch_key").fill_null("").alias("_attempt"))
        .group_by("job_id", "_attempt")
        .agg(pl.col(*USAGE).last())
    )

    def total(name: str) -> pl.Expr:
        # SQL's sum: null when no attempt reported it.
        return pl.when(pl.col(name).null_count() < pl.len()).then(pl.col(name).sum()).alias(name)

    return attempts.group_by("job_id").agg(
        pl.len().cast(pl.Int64).alias("attempts"), *[total(c) for c in USAGE]
    )


DICTIONARY_PAGE_BYTES = 1 << 20
"""pyarrow's ``dictionary_pagesize_limit`` when none is given: 1 MiB (Arrow C++
``kDefaultDictionaryPageSizeLimit``; ARROW-7150, ARROW-15855). A column chunk whose dictionary
grows past it falls back to plain encoding for the rest of the chunk."""


def dictionary_columns(frame: pl.DataFrame) -> bool | list[str]:
    """``use_dictionary`` for a pyarrow ``ParquetWriter`` whose first frame is ``frame``.

    A string column whose distinct values in ``frame`` would not fit in one dictionary page
    (each value's bytes plus its 4-byte length, as in a PLAIN dictionary page) is left out:
    pyarrow would build a dictionary for it, overflow it within the row group and fall
    back to plain encoding, having encoded part of it twice (the input's prompts and the
    job ids of a 50,000-row sink slice: 10-20 % of both writers' CPU, the files 7 % larger;
    ``benchmarks/PROFILE.md``, thirteenth pass). Every other column keeps its dictionary,
    as ``True`` gives. The values read back are the same either way; only the encoding of
    the column's pages differs. With a nested column (whose Parquet paths are not its
    name), ``True``.

    Examples
    --------
    >>> ids = pl.Series("id", [f"{i:024x}" for i in range(50_000)])
    >>> dictionary_columns(pl.DataFrame({"id": ids, "status": "completed", "n": 1}))
    ['status', 'n']
    >>> dictionary_columns(pl.DataFrame({"id": ids.head(10), "status": "completed"}))
    True
    """
    if any(dtype.is_nested() for dtype in frame.schema.dtypes()):
        return True
    keep: list[str] = []
    for name, dtype in frame.schema.items():
        if dtype == pl.String:
            distinct = frame.get_column(name).drop_nulls().unique()
            size = int(distinct.str.len_bytes().sum() or 0) + 4 * distinct.len()
            if size > DICTIONARY_PAGE_BYTES:
                continue
        keep.append(name)
    return True if len(keep) == frame.width else keep


class SummaryWriter:
    """Writes a folder's summary while a streaming run writes its sink (see the module).

    ``parts`` are the job event parts the summary is of (nothing may write one while it is
    written: the run holds the writer lock) and ``n_events`` the events they hold.
    :meth:`add` takes the events of jobs not added before (each job's whole history) and
    appends their summary rows; :meth:`close` renames the file into place if the rows
    summarize all ``n_events`` events, and otherwise removes it and any older summary.

    The summary is an optimisation: the sink and the state folder are the truth. A failure
    writing it (a full disk, a ``summary`` path that is not a folder, anything raised while
    summarizing) never fails the run: the writer stops, removes what it wrote, and
    :meth:`close` warns once (:class:`~batchata_df.errors.SummaryWarning`); ``sql`` then
    groups the events as for a folder without a summary. Hidden temporary files that a
    killed run left in the summary folder are removed when a writer starts (the caller
    holds the folder's writer lock, so no other writer is using them).
    """

    def __init__(self, root: str | os.PathLike[str], parts: list[Path], n_events: int) -> None:
        self.folder = Path(root) / SUMMARY_DIR
        self.final = self.folder / SUMMARY_FILE
        self.tmp = self.folder / f".tmp-{secrets.token_hex(4)}-{SUMMARY_FILE}"
        self.parts = sorted(p.name for p in parts)
        self.n_events = n_events
        self.events = 0
        self.error: Exception | None = None
        """What stopped the writer (the summary is then not written)."""
        self._writer: Any = None
        if self.folder.is_dir():
            for stale in self.folder.glob(".tmp-*"):  # left by a killed run
                self._guard(lambda stale=stale: stale.unlink(missing_ok=True))

    def _guard(self, step: Any) -> Any:
        """Run ``step``; on any error, stop writing (see the class) and return ``None``."""
        try:
            return step()
        except Exception as error:  # an optimisation must not fail the run
            if self.error is None:
                self.error = error
            self.discard()
            return None

    def add(self, events: pl.DataFrame) -> None:
        """Summarize ``events`` (every event of the jobs they hold) and append the rows."""
        if self.error is None:
            self._guard(lambda: self._append(summarize(events)))

    def _append(self, rows: pl.DataFrame) -> None:
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        if rows.height == 0:
            return
        self.events += int(rows.get_column("n_events").sum())
        rows = rows.select(list(SUMMARY))
        table = rows.to_arrow()
        if self._writer is None:
            self.folder.mkdir(exist_ok=True)
            schema = table.schema.with_metadata({PARTS_KEY: json.dumps(self.parts)})
            self._writer = pq.ParquetWriter(
                self.tmp, schema, compression="zstd", use_dictionary=dictionary_columns(rows)
            )
        self._writer.write_table(table.cast(self._writer.schema))

    def close(self) -> bool:
        """Finish: keep the summary if it covers every event of the parts; ``True`` if kept.

        Warns (:class:`~batchata_df.errors.SummaryWarning`) if writing it failed.
        """
        kept = self.error is None and bool(self._guard(self._finish))
        if not kept:
            self.discard()
            with contextlib.suppress(OSError):
                self.final.unlink(missing_ok=True)  # a stale one would never be read: tidy up
        if self.error is not None:
            from batchata_df.errors import SummaryWarning, warn_user

            msg = (
                f"the folder's summary for sql (summary/{SUMMARY_FILE}) was not written "
                f"({type(self.error).__name__}: {self.error}); the sink and the state folder "
                "are complete, and sql groups the job events instead (slower on big folders)"
            )
            warn_user(msg, SummaryWarning)
        return kept

    def _finish(self) -> bool:
        if self._writer is None or self.events != self.n_events:
            return False
        self._writer.close()
        self._writer = None
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.final)
        return True

    def discard(self) -> None:
        """Stop without keeping what was written (an error while writing the sink)."""
        writer, self._writer = self._writer, None
        with contextlib.suppress(Exception):
            if writer is not None:
                writer.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink(missing_ok=True)


def valid_summary(root: str | os.PathLike[str]) -> Path | None:
    """The folder's summary if it summarizes exactly the job parts there now, else ``None``."""
    import pyarrow.parquet as pq

    path = Path(root) / SUMMARY_DIR / SUMMARY_FILE
    try:
        meta = pq.read_schema(path).metadata or {}
        recorded = json.loads(meta.get(PARTS_KEY.encode(), b"null"))
    except (OSError, ValueError):
        return None
    current = sorted(p.name for p in table_parts(Path(root) / "jobs"))
    return path if recorded == current and current else None
