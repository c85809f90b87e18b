"""The checkpoint folder: a manifest plus append-only Parquet event parts.

Layout (format version 2; version 1 differs in ``raw`` and stores every column, below)::

    <state>/
      manifest.json                      format version, run id, fingerprint
      jobs/part-<ns>-<rand>.parquet      job events        (schema: JOB_EVENTS)
      batches/part-<ns>-<rand>.parquet   batch events      (schema: BATCH_EVENTS)

Every part records its run id, the fingerprint and the folder's format version in its
Parquet key-value metadata (:data:`PART_RUN_KEY`, :data:`PART_FINGERPRINT_KEY`,
:data:`PART_FORMAT_KEY`; parts written before the last key existed are version 1), so
that ``repair`` rebuilds a lost manifest with all three.

**Format versions.** New folders are version 2 (:data:`FORMAT_VERSION`). A folder keeps
the version it was created with: a version 1 folder is read as written and appended to as
version 1 (its manifest is never upgraded); any other version is refused
(:func:`check_version`). In version 2, a ``completed`` job
event whose ``raw`` equals its ``answer`` (almost every one: the provider's text was
already the canonical JSON) stores ``raw`` null, which means "the answer"
(:func:`stored_raw`); every reader gives the text back (:func:`read_raw`: the store's
reads, :meth:`StateStore.restored` for events a caller reads itself, per folder in the SQL
views of :mod:`batchata_df.query`). A ``raw`` that differs is stored, and so is every
other event's. In version 1 every ``raw`` is stored as it is, and a ``completed`` event's
null ``raw`` (written before the column existed) stays null. The answer text was stored
twice before: a 100,000-job terminal part took 4.4 MB, 3.0 MB in version 2
(``benchmarks/PROFILE.md``). A version 2 job event part also leaves out the columns that
are null in every one of its rows, except :data:`ALWAYS_STORED` (:func:`stored_columns`;
an ``assigned`` part stores 9 of the 23); every reader inserts a missing column as nulls
of its type, as it does for the columns parts of older versions lack.

Every part is written to a hidden temporary name, flushed to disk and renamed, so a reader
(a resumed run, or DuckDB while a run is in flight) sees whole parts or nothing. Parts are
never rewritten: the current state of a job or batch is its latest event (highest ``seq``).
Writing costs O(events written), never O(run size), unlike a state file rewritten per
batch.

``est_cost_usd`` is set on ``assigned`` events when the run had estimates (a cost cap or a
dry run): the worst case (estimated input, ``max_tokens`` output) that admission control
held against the cap.

``reasoning_tokens`` is the thinking part of ``output_tokens`` (which include it, as the
providers bill it); parts written before it existed read as null.

``citations`` is set on ``completed`` events of runs with ``citations=True``: JSON text
``{"field": [citation, ...]}`` (see :mod:`batchata_df.citations`); null otherwise. Parts
written before it existed read as null.

``raw`` is the text the provider returned for the request, whatever became of it: the
answer of a ``completed`` event (``answer`` holds it validated and canonical; from format
version 2, stored null when it is the answer, see above), and of a ``failed`` one the
answer that did not validate, was truncated, or (OpenAI, Anthropic) the refusal. Null
when the provider returned no text. Parts written before it existed (version 1) read as
null.

``mode`` is ``"realtime"`` on the events of requests sent one by one through the
providers' standard endpoints (``batch_llm(mode="realtime")``; their ``batch_key`` names
the call's realtime requests of one model, ``provider_batch_id`` is null) and null on batch
events (parts written before it existed read as null too) and on the ``cancelled`` events
of jobs never sent (a stop or the cost cap before their turn: no batch key either, but the
``provider`` and ``model`` they were for). A ``realtime`` ``assigned``
event is written before the request is sent; one left without a later event (the process
died while the request was in flight) ends ``failed`` with ``lost:`` on the next call,
because the provider may have billed it (see :mod:`batchata_df.engine.realtime`).

Job event statuses: ``assigned`` (put in a provider batch, written *before* submitting),
``completed``, ``failed``, ``cancelled``. Batch event statuses: ``intent`` (written before
the provider is called), ``submitted`` (the provider's batch id, written right after),
``cancel_requested``, ``collected`` (results stored), ``abandoned`` (an intent that never
reached the provider). A batch whose results download came not UTF-8 gets an event that
repeats its status (``submitted`` or ``cancel_requested``) with ``detail``
``results_not_utf8 <digest>: <download>`` (:func:`damaged_detail`): a later process that is
served the same bytes again knows they are the provider's (:meth:`StateStore.damaged_downloads`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import secrets
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import polars as pl

from batchata_df.errors import ConfigError, StateError, StateLockedError, StateMismatchError
from batchata_df.redact import scrub_expr

if TYPE_CHECKING:
    from batchata_df.jobindex import JobIndex

__all__ = [
    "BATCH_EVENTS",
    "FORMAT_VERSION",
    "JOB_EVENTS",
    "READ_VERSIONS",
    "LOCK_FILE",
    "LockHolder",
    "StateStore",
    "adopt_schema",
    "damaged_detail",
    "folder_version",
    "part_versions",
    "join_by_job",
    "lined_up",
    "lost_attempts",
    "lost_usd",
    "read_raw",
    "restore_raw",
    "stored_raw",
    "stored_columns",
    "WriterLock",
    "spent_usd",
]

log = logging.getLogger("batchata_df")

LOCK_FILE = "writer.lock"
"""The writer lock's file in a checkpoint folder (holds the holder's pid, host, start)."""

FORMAT_VERSION = 2
"""The format of the folders this version creates (see the module: version 2 stores a
``completed`` event's ``raw`` once when it is its ``answer``)."""

READ_VERSIONS = (1, 2)
"""The format versions this version reads and appends to (each folder in its own)."""

RAW_IS_ANSWER_SINCE = 2
"""The first format version whose ``completed`` events store ``raw`` null when it is the
``answer`` (:func:`stored_raw`, :func:`read_raw`)."""

NULL_COLUMNS_LEFT_OUT_SINCE = 2
"""The first format version whose job event parts leave out the columns that are null in
every row of the part (:func:`stored_columns`); readers insert them as nulls."""

ALWAYS_STORED = ("seq", "ts", "job_id", "status", "answer", "raw")
"""The job event columns every part stores, null or not: the ones a part is recognised by
(:data:`REQUIRED`) and those the SQL views read ``raw`` from (:mod:`batchata_df.query`)."""

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
        "cache_write_tokens": pl.Int64(),
        "reasoning_tokens": pl.Int64(),
        "cost_usd": pl.Float64(),
        "est_cost_usd": pl.Float64(),
        "cache_saved_usd": pl.Float64(),  # cost without the prompt cache minus cost_usd
        "citations": pl.String(),
        "raw": pl.String(),
        "response": pl.String(),
        "mode": pl.String(),
        # The model that answered, when not ``model`` (the one asked): a provider routed
        # the request to a successor (batchata_df.models.SCHEDULED, "routed"); the event's
        # cost_usd is at its price. Null otherwise, and in parts written before it existed
        # (read with the column null: every reader inserts missing columns).
        "answered_by": pl.String(),
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
        # The date (batchata_df.models.today) the batch was sent, on its ``intent`` and
        # ``submitted`` events: its requests ran between it and the end of its window
        # (cost.window_days), so rows collected later are priced at most at the window's
        # last day (engine.ledger). Null on other events, and in parts written before it
        # existed (read with the column null: every reader inserts missing columns).
        "sent_on": pl.Date(),
    }
)
"""Schema of a batch event part (public, versioned by ``FORMAT_VERSION``)."""

TERMINAL_JOB = ("completed", "failed", "cancelled")

DECODED = "\x00answer"
"""The name of :meth:`AnswerSchema.decode <batchata_df.schema.AnswerSchema.decode>`'s struct
column (never an input column): the answers decoded, which a writer may give
:meth:`StateStore.append_jobs` with the events and get back from the terminal parts it wrote.
Here, not in ``schema``, so that reading a folder does not import pydantic."""

DAMAGED_DETAIL = "results_not_utf8 "
"""The start of a batch event's ``detail`` recording a results download that was not UTF-8."""


def damaged_detail(download: str, digest: bytes) -> str:
    """The ``detail`` recording that ``download`` came not UTF-8 with ``digest``.

    Examples
    --------
    >>> damaged_detail("OpenAI's result file f of batch b", bytes(range(16)))
    "results_not_utf8 000102030405060708090a0b0c0d0e0f: OpenAI's result file f of batch b"
    """
    return f"{DAMAGED_DETAIL}{digest.hex()}: {download}"


# The ``detail`` of a ``submitted`` event of a batch a lookup found at the provider rather
# than one we created. They are stored in the folder and read back by the next call
# (engine.recovery), and written by ``repair``: here, so that repair (and doctor) need not
# import the engine.
FOUND_AFTER_CRASH = "found at the provider after a crash"
"""The detail of the ``submitted`` event of a batch adopted by :meth:`Provider.find`: its
membership is not known for sure (:attr:`InFlightBatch.adopted`), in this call or later."""
FOUND_AFTER_FAILED_CREATE = "found at the provider after a create whose outcome was unknown"
"""The same for a batch a live call's lookup found (the engine's, or the provider's own
inside :meth:`Provider.submit`: :meth:`Provider.found_not_created`)."""
FOUND_BY_REPAIR = "found at the provider by repair"
"""The same for a batch ``repair`` found."""
ADOPTED_DETAILS = (FOUND_AFTER_CRASH, FOUND_AFTER_FAILED_CREATE, FOUND_BY_REPAIR)
"""The details that mark a batch as adopted: found by a lookup, not created by us."""

USAGE_COLUMNS = (
    "seq", "job_id", "batch_key", "status", "cost_usd", "input_tokens", "output_tokens",
    "reasoning_tokens",
)
"""The columns billing reads (:func:`billed_from_events`)."""

STATUS_COLUMNS = (
    "seq", "job_id", "batch_key", "provider", "model", "status", "error", "cost_usd",
    "est_cost_usd", "mode",
)
"""The columns :meth:`StateStore.latest_status` reads: everything but the answers."""

SPENT_SLICE_EVENTS = 2_000_000
"""Events :meth:`StateStore.spent` de-duplicates at a time (bounds its memory)."""

COMPACT_TARGET_BYTES = 256 * 1024 * 1024
"""Size :meth:`StateStore.compact` merges parts up to."""

COMPACT_TARGET_ROWS = 1 << 21
"""Most events (rows) :meth:`StateStore.compact` merges into one part: 128 row groups of
:data:`COMPACT_ROW_GROUP_ROWS`. Every lookup by job id reads a part's whole footer, whose
size follows its row groups: 256 MB parts of a ten-million-job folder had 1,029 groups, and
a read of one group took 5.6 ms, against 3.0 ms in a 123-group part
(``benchmarks/PROFILE.md``, thirtieth pass). The parts' count then grows with the folder
(ten for ten million jobs), each footer does not."""

COMPACT_ROW_GROUP_ROWS = 16_384
"""Rows per row group of a compacted part: the unit a lookup by job id reads
(:class:`~batchata_df.jobindex.JobIndex`), and of DuckDB's parallel scans. A streaming
run's sink pass looks up 50,000 jobs at a time (:data:`batchata_df.stream.SINK_SLICE_ROWS`),
whose events lie in two runs (their batch's ``assigned`` part and its results); each run
reads its row groups whole, so groups much smaller than a slice keep what is read near
what is needed: 65,536-row groups read each event 2.6 times over a 1M-row run (the
largest stage of its sink pass, ``benchmarks/PROFILE.md``, ninth pass)."""

PART_ZSTD_LEVEL = 1
"""zstd level of the Parquet parts. Level 1 wrote a 50,000-event part in 60 % of the CPU
time of Polars' default level (3) and the file came out no larger (1.01 against
1.03 MB for answered jobs; ``benchmarks/PROFILE.md``): the answers are short, varied JSON
texts and the ids random hex, which higher levels do not compress further."""


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


_RECORD_WIDTH = 512
"""Bytes of the holder record in the lock file (JSON padded with spaces)."""


def _alive(holder: LockHolder) -> bool:
    """Whether the recorded holder may still run (always true for another host)."""
    if holder.host != socket.gethostname():
        return True
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a checkpoint folder's writer lock."""

    pid: int
    host: str
    since: float
    """When the lock was taken (seconds since the epoch)."""

    def describe(self) -> str:
        """``pid 123 on host h since 2026-11-28 18:50:01 UTC (12 s ago)``."""
        when = dt.datetime.fromtimestamp(self.since, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        ago = max(0.0, time.time() - self.since)
        return f"pid {self.pid} on host {self.host} since {when} ({ago:.0f} s ago)"

    @staticmethod
    def parse(text: str) -> LockHolder | None:
        """The holder recorded in a lock file's text, or ``None`` if there is none."""
        try:
            raw = json.loads(text)
            return LockHolder(int(raw["pid"]), str(raw["host"]), float(raw["since"]))
        except (ValueError, TypeError, KeyError):
            return None


def check_lock_timeout(value: object) -> float | None:
    """Validate ``lock_timeout``: seconds >= 0 (0 = refuse at once) or ``None`` (no limit)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or (
        value < 0
    ):
        msg = (
            "lock_timeout must be a number of seconds >= 0 (0 refuses at once when another "
            f"call is writing to the state folder) or None (wait as long as it takes), got "
            f"{value!r}"
        )
        raise ConfigError(msg)
    return float(value)


class WriterLock:
    """The exclusive writer lock of a checkpoint folder, held for a whole call.

    Two calls writing one folder would both submit the rows neither has finished, and pay
    twice; so a writing call holds this lock from before it reads the folder until it
    returns. It is an OS lock (``flock`` through the maintained ``filelock`` package) on
    ``<state>/writer.lock``: the kernel releases it when its process ends, however it ends,
    so a lock left by a killed process is taken over by the next call without any stale-lock
    guessing; the file keeps the holder's pid, host and start time for the error message.
    Reading (:func:`batchata_df.sql`, ``batchata-df status``, ``dry_run=True``) never takes
    it. On a file system without ``flock`` (some network mounts) taking it fails with a
    :class:`StateError` rather than running unprotected: ``filelock``'s soft-lock fallback
    is off, because a soft lock left by a killed process would block every later call.

    Parameters
    ----------
    root
        The checkpoint folder (created if missing).
    timeout
        Seconds to wait for another holder: ``0`` refuses at once, ``None`` waits forever.

    Raises
    ------
    StateLockedError
        On entering, when another call (in this or another process) holds the lock past
        ``timeout``; its ``holder`` names it.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with WriterLock(folder):
    ...     try:
    ...         WriterLock(folder).acquire()
    ...     except StateLockedError as e:
    ...         print(e.holder.pid == os.getpid())
    True
    """

    taken = 0
    """How many writer locks this process has taken: a caller that saw it unchanged knows
    that it sent nothing meanwhile (sending needs the lock; see :func:`read_unlocked`)."""

    def __init__(self, root: str | os.PathLike[str], timeout: float | None = 0.0) -> None:
        from filelock import FileLock

        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self.timeout = timeout
        self.previous: LockHolder | None = None
        """The holder recorded by the last call before this one took the lock."""
        self._lock = FileLock(
            self.path,
            timeout=-1 if timeout is None else timeout,
            thread_local=False,
            fallback_to_soft=False,  # a soft lock would outlive a killed process
            preserve_lock_file=True,
            on_acquired=self._record,
        )

    def _record(self, fd: int) -> None:
        old = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        self.previous = LockHolder.parse(old)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        # One write of a fixed width over the old record (never truncate first): a reader
        # sees the old holder or the new one, never an empty or half-written file.
        data = json.dumps(me).encode().ljust(_RECORD_WIDTH)
        os.pwrite(fd, data, 0)
        if os.fstat(fd).st_size > len(data):  # a longer file from elsewhere: drop its tail
            os.ftruncate(fd, len(data))
        os.fsync(fd)

    def acquire(self) -> None:
        """Take the lock (see the class); raises :class:`StateLockedError`."""
        from filelock import Timeout

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except Timeout:
            holder = self._current_holder()
            who = holder.describe() if holder else "another process (starting up)"
            waited = "" if not self.timeout else f" after waiting {self.timeout:g} s"
            msg = (
                f"checkpoint folder {str(self.root)!r} is being written by another call: "
                f"{who}{waited}. Two calls on one folder would send the same rows twice. "
                "Let it finish, or pass lock_timeout=<seconds> (None: as long as it takes) "
                "to wait for it, or use another state folder. Reading (batchata_df.sql, "
                "`batchata-df status`, dry_run=True) works without waiting"
            )
            raise StateLockedError(msg, holder=holder) from None
        except OSError as e:
            msg = f"cannot lock the checkpoint folder {str(self.root)!r}: {e}"
            raise StateError(msg) from e
        WriterLock.taken += 1
        previous = self.previous
        if previous is not None and (previous.pid, previous.host) != (
            os.getpid(),
            socket.gethostname(),
        ):
            log.info(
                "batchata-df: %s: took over the writer lock last held by %s (no longer held)",
                self.root,
                previous.describe(),
            )

    def release(self) -> None:
        """Let the lock go (the holder record stays in the file, for diagnosis)."""
        self._lock.release()

    def _current_holder(self) -> LockHolder | None:
        """The live holder, waiting briefly for it to record itself.

        The winner writes its record just after the kernel grants it the lock, so a call
        refused in between reads the previous holder (or nothing). A record naming a process
        that is gone (on this host) is such a leftover; wait up to a second for the new one.
        """
        deadline = time.monotonic() + 1.0
        while True:
            holder = self.holder()
            if holder is not None and _alive(holder):
                return holder
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)

    def holder(self) -> LockHolder | None:
        """The holder recorded in the lock file (the current one while it is held)."""
        try:
            return LockHolder.parse(self.path.read_text())
        except OSError:
            return None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def stored_raw(version: int) -> pl.Expr:
    """``raw`` as a job event part of format ``version`` stores it.

    From version 2 (:data:`RAW_IS_ANSWER_SINCE`) a ``completed`` event whose ``raw`` is
    its ``answer`` (almost every one: the provider's text was the canonical JSON already)
    stores ``raw`` null, which :func:`read_raw` reads back as the answer; any other
    ``raw`` is stored as it is. Version 1 stores every ``raw`` as it is.

    Examples
    --------
    >>> events = pl.DataFrame({"status": ["completed", "completed", "failed"],
    ...                        "answer": ['{"a":1}', '{"a":1}', None],
    ...                        "raw": ['{"a":1}', '{"a": 1}', '{"a":']})
    >>> events.select(stored_raw(2))["raw"].to_list()
    [None, '{"a": 1}', '{"a":']
    >>> events.select(stored_raw(1))["raw"].to_list()
    ['{"a":1}', '{"a": 1}', '{"a":']
    """
    raw = pl.col("raw")
    if version < RAW_IS_ANSWER_SINCE:
        return raw
    same = (pl.col("status") == "completed") & (raw == pl.col("answer"))
    return (
        pl.when(same.fill_null(False))
        .then(pl.lit(None, dtype=pl.String))
        .otherwise(raw)
        .alias("raw")
    )


def stored_columns(events: pl.DataFrame, version: int) -> list[str]:
    """The columns of job ``events`` that a part of format ``version`` stores, in order.

    From version 2 (:data:`NULL_COLUMNS_LEFT_OUT_SINCE`) a column that is null in every
    row is left out, unless it is one of :data:`ALWAYS_STORED` (an ``assigned`` part of
    100,000 events held 15 such columns, a third of its write time: ``benchmarks/PROFILE.md``,
    twenty-fourth pass); every reader inserts a missing column as nulls of its type.
    Version 1 stores every column.

    Examples
    --------
    >>> events = pl.DataFrame({"seq": [1, 2], "job_id": ["a", "b"], "status": "assigned",
    ...                        "error": pl.Series([None, None], dtype=pl.String),
    ...                        "answer": pl.Series([None, None], dtype=pl.String),
    ...                        "model": ["m", None]})
    >>> stored_columns(events, 2)
    ['seq', 'job_id', 'status', 'answer', 'model']
    >>> stored_columns(events, 1)
    ['seq', 'job_id', 'status', 'error', 'answer', 'model']
    """
    if version < NULL_COLUMNS_LEFT_OUT_SINCE:
        return events.columns
    height = events.height
    return [
        c.name for c in events.iter_columns()
        if c.name in ALWAYS_STORED or c.null_count() < height
    ]  # fmt: skip


def read_raw(version: int) -> pl.Expr:
    """``raw`` of job events read from a part of format ``version`` (:func:`stored_raw`).

    Version 2: a ``completed`` event's null ``raw`` is its ``answer``. Version 1: as
    stored (there a ``completed`` event's null ``raw`` was written before ``raw``
    existed: it stays null). Reading it twice gives the same values.

    Examples
    --------
    >>> stored = pl.DataFrame({"status": ["completed", "completed", "failed"],
    ...                        "answer": ['{"a":1}', '{"a":1}', None],
    ...                        "raw": [None, '{"a": 1}', None]})
    >>> stored.select(read_raw(2))["raw"].to_list()
    ['{"a":1}', '{"a": 1}', None]
    >>> stored.select(read_raw(1))["raw"].to_list()
    [None, '{"a": 1}', None]
    """
    raw = pl.col("raw")
    if version < RAW_IS_ANSWER_SINCE:
        return raw
    return (
        pl.when(pl.col("status") == "completed")
        .then(pl.coalesce(raw, pl.col("answer")))
        .otherwise(raw)
        .alias("raw")
    )


def restore_raw(events: pl.DataFrame, version: int) -> pl.DataFrame:
    """``events`` (job events read from a folder of format ``version``) with ``raw`` read.

    Unchanged when they lack ``raw`` or when the version stores it as it is; ``status``
    and ``answer`` must be there otherwise (a ``ValueError`` if not: the values could not
    be given back).
    """
    if version < RAW_IS_ANSWER_SINCE or "raw" not in events.columns:
        return events
    missing = {"status", "answer"} - set(events.columns)
    if missing:
        msg = f"raw cannot be read without {sorted(missing)!r} (format version {version})"
        raise ValueError(msg)
    return events.with_columns(read_raw(version))


@dataclass
class WrittenJobs:
    """The job event parts a store wrote while recording (:meth:`StateStore.record_jobs`)."""

    parts: list[Path] = field(default_factory=list)
    terminal: list[pl.DataFrame] = field(default_factory=list)
    """The parts of terminal events, as written, in write order."""
    decoded: list[pl.Series | None] = field(default_factory=list)
    """Beside each terminal part, its completed answers decoded (if the writer had them)."""
    late: list[pl.DataFrame] = field(default_factory=list)
    """``job_id``, ``seq`` of the other events written after the first terminal part."""
    mixed: bool = False
    """A part held terminal and other events: the shortcut is not taken."""
    text: bool = True
    """Keep the answers' text (``answer``, ``raw``). ``False``: the terminal parts are kept
    without them, given back as nulls; for a caller that reads the decoded answers only
    (:meth:`StateStore.record_jobs`)."""
    text_needed: bool = False
    """``text`` is off but a part had completed answers and none decoded: the shortcut is
    not taken (the answers could be given neither decoded nor as text)."""

    def add(self, path: Path, frame: pl.DataFrame, decoded: pl.Series | None = None) -> None:
        """Record a job event part ``path`` holding ``frame`` (and its answers ``decoded``)."""
        self.parts.append(path)
        status = frame.get_column("status")
        # One comparison per terminal status: a third of the CPU of ``is_in`` of the tuple.
        ended = sum(int((status == s).sum()) for s in TERMINAL_JOB)
        if ended == frame.height:
            if not self.text:
                if decoded is None and bool((status == "completed").any()):
                    self.text_needed = True
                # ~0.13 GB at 1M short answers, held until the run ends otherwise.
                frame = frame.drop("answer", "raw", strict=False)
            self.terminal.append(frame)
            self.decoded.append(decoded)
        elif ended:
            self.mixed = True
        elif self.terminal:
            self.late.append(frame.select("job_id", "seq"))

    def answers(self) -> pl.Series | None:
        """The terminal parts' answers decoded, row for row, or ``None`` if some lack them.

        A part written without them (jobs failed or cancelled without an answer) gets
        nulls; one with a completed answer and nothing decoded gives ``None``.
        """
        given = [d for d in self.decoded if d is not None]
        if not given:
            return None
        dtype = given[0].dtype
        columns: list[pl.Series] = []
        for frame, decoded in zip(self.terminal, self.decoded, strict=True):
            if decoded is None:
                if (frame.get_column("status") == "completed").any():
                    return None
                decoded = pl.Series(DECODED, [None] * frame.height, dtype=dtype)
            if decoded.dtype != dtype or decoded.len() != frame.height:
                return None
            columns.append(decoded)
        return pl.concat(columns).alias(DECODED)


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

    def __init__(
        self,
        root: str | os.PathLike[str],
        fingerprint: Mapping[str, str],
        *,
        readonly: bool = False,
    ) -> None:
        self.root = Path(root)
        self.readonly = readonly
        self._lock = threading.Lock()
        self._written: WrittenJobs | None = None
        self._last_seq = 0
        self._last_part_ns = 0
        if not readonly:
            try:
                (self.root / "jobs").mkdir(parents=True, exist_ok=True)
                (self.root / "batches").mkdir(parents=True, exist_ok=True)
            except OSError as e:
                msg = f"cannot create the checkpoint folder {str(self.root)!r}: {e}"
                raise StateError(msg) from e
        damaged = find_damaged(self.root)
        if damaged:
            raise damaged_error(self.root, damaged)
        self.manifest = self._open_manifest(dict(fingerprint))
        # Order must survive a clock that is behind the one of an earlier call (another
        # machine, an NTP step): new events always sort after every recorded one.
        self._last_seq = max(self._max_seq("jobs"), self._max_seq("batches"))
        self._last_part_ns = max(
            (
                r[1]
                for t in TABLES
                for p in _part_files(self.root / t)
                if (r := _part_range(p.name)) is not None
            ),
            default=0,
        )
        if not readonly:
            collect_compacted(self.root)

    # -- manifest -------------------------------------------------------------------------

    def _open_manifest(self, fingerprint: dict[str, str]) -> Manifest:
        path = self.root / "manifest.json"
        if not path.exists():
            parts = list_parts(self.root)
            if parts:
                msg = (
                    f"checkpoint folder {str(self.root)!r} holds {len(parts)} event parts but "
                    "no manifest.json: its run id is needed to find batches a crash left at "
                    "the provider, so starting a new run here could pay for rows twice. Run "
                    f"`batchata-df repair {self.root}` to see how the manifest would be "
                    "rebuilt from the parts, then the same command with --apply"
                )
                raise StateError(msg)
            manifest = Manifest(run_id=secrets.token_hex(8), fingerprint=fingerprint)
            if not self.readonly:
                try:
                    self._atomic_write(path, manifest.to_json().encode())
                except OSError as e:
                    msg = (
                        f"cannot write the manifest of the checkpoint folder "
                        f"{str(self.root)!r} ({type(e).__name__}: {e.strerror or e}); make "
                        "the folder writable or pass another state="
                    )
                    raise StateError(msg) from e
            return manifest
        old_manifest = read_manifest(path)
        check_version(self.root, old_manifest.format_version)
        old = old_manifest.fingerprint
        if not old and fingerprint:
            # Rebuilt by `repair` from parts that did not record the settings: the first
            # run that opens the folder states them again (a reader, such as a dry run,
            # takes them as that run would, and writes nothing).
            old_manifest.fingerprint = dict(fingerprint)
            if not self.readonly:
                self._atomic_write(path, old_manifest.to_json().encode())
            return old_manifest
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if diff:
            msg = (
                f"checkpoint folder {str(self.root)!r} was written for a run with a different "
                f"{', '.join(diff)}; resuming it would mix answers. Pass the same arguments as "
                "before, or use a new state folder to start over (keep this one: deleting it "
                "throws away the answers already paid for in it, and sending them again is "
                "paid again)"
            )
            raise StateMismatchError(msg)
        return old_manifest

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

    @property
    def format_version(self) -> int:
        """The folder's format version: what its parts hold and how new ones are written."""
        return self.manifest.format_version

    def restored(self, events: pl.DataFrame) -> pl.DataFrame:
        """Job events read from this folder's parts with their ``raw`` read (:func:`read_raw`)."""
        return restore_raw(events, self.format_version)

    def _identity(self) -> dict[str, str]:
        """The key-value metadata of every part this store writes."""
        # Every part names its run, so a lost manifest can be rebuilt (`repair`), and its
        # format, so that it is rebuilt with the right one.
        return {
            PART_RUN_KEY: self.manifest.run_id,
            PART_FINGERPRINT_KEY: json.dumps(self.manifest.fingerprint, sort_keys=True),
            PART_FORMAT_KEY: str(self.format_version),
        }

    def _write_part(self, table: str, frame: pl.DataFrame) -> tuple[Path, pl.DataFrame]:
        """Write ``frame`` as a new part of ``table``; the part's path and what it holds.

        What it holds is ``frame`` with secrets scrubbed; a job event part stores ``raw``
        as the folder's format does (:func:`stored_raw`), which readers read back
        (:meth:`restored`).
        """
        if self.readonly:
            msg = f"checkpoint folder {str(self.root)!r} was opened read-only"
            raise StateError(msg)
        with self._lock:
            # Names sort after every part already there, whatever the clock does: a
            # compacted part hides the parts whose names fall in its range.
            ns = max(time.time_ns(), self._last_part_ns + 1)
            self._last_part_ns = ns
        name = f"part-{ns:020d}-{secrets.token_hex(3)}.parquet"
        final = self.root / table / name
        tmp = final.with_name(f".tmp-{name}")
        # Messages and the providers' own answers are scrubbed of secrets before they
        # reach the disk (batchata_df.redact). A column of nulls has nothing to scrub:
        # skipped, since each secret's search still visits every row of it (17 ms for a
        # 50,000-event part with three keys in the environment; benchmarks/PROFILE.md).
        frame = frame.with_columns(
            scrub_expr(pl.col(c))
            for c in ("error", "detail", "response")
            if c in frame.columns and frame.get_column(c).null_count() < frame.height
        )
        stored = frame
        if table == "jobs" and self.format_version >= RAW_IS_ANSWER_SINCE:
            stored = frame.with_columns(stored_raw(self.format_version))
        if table == "jobs":
            stored = stored.select(stored_columns(stored, self.format_version))
        try:
            stored.write_parquet(
                tmp,
                compression="zstd",
                compression_level=PART_ZSTD_LEVEL,
                statistics=False,
                metadata=self._identity(),
            )
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
            return final, frame
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
        path, written = self._write_part("jobs", _conform(frame, JOB_EVENTS))
        if self._written is not None:
            decoded = events.get_column(DECODED) if DECODED in events.columns else None
            # As a reader of the part gets it back (a completed event's null raw is its
            # answer from format 2 on), so that written_states are the snapshot's; the
            # text is not restored when it is not kept.
            kept = self.restored(written) if self._written.text else written
            self._written.add(path, kept, decoded)

    def append_batch(self, **values: Any) -> None:
        """Append one batch event."""
        seq = self._next_seq(1)
        row = {name: values.get(name) for name in BATCH_EVENTS}
        row["seq"] = seq
        ts = values.get("ts")  # set by `repair` for an intent it reconstructs
        row["ts"] = None
        micros = int(ts.timestamp() * 1e6) if ts is not None else time.time_ns() // 1000
        frame = pl.DataFrame([row], schema=BATCH_EVENTS, orient="row").with_columns(
            pl.lit(micros).cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("ts")
        )
        unknown = set(values) - set(BATCH_EVENTS)
        if unknown:
            msg = f"unknown batch event fields {sorted(unknown)!r}"
            raise ValueError(msg)
        self._write_part("batches", frame)

    # -- reading --------------------------------------------------------------------------

    def _max_seq(self, table: str) -> int:
        parts = table_parts(self.root / table)
        if not parts:
            return 0
        with self._reading():
            # Parts of other versions have other columns: read ``seq`` alone, whatever else.
            top = (
                pl.scan_parquet(
                    parts, schema={"seq": pl.Int64()}, missing_columns="insert",
                    extra_columns="ignore", glob=False,
                )
                .select(pl.col("seq").max())
                .collect()
                .item()
            )
        return int(top or 0)

    def _reading(self) -> contextlib.AbstractContextManager[None]:
        """Turn a Polars read error into a :class:`StateError` naming the damaged parts."""
        return reading_folder(self.root)

    def _lazy(self, table: str, schema: pl.Schema) -> pl.LazyFrame:
        parts = table_parts(self.root / table)
        if not parts:
            return pl.LazyFrame(schema=schema)
        # Parts written by older versions may lack newer columns (or carry dropped ones).
        lazy = pl.scan_parquet(
            parts, schema=schema, missing_columns="insert", extra_columns="ignore",
            glob=False,
        ).select(list(schema))
        if table == "jobs" and self.format_version >= RAW_IS_ANSWER_SINCE:
            # Only computed (``answer`` only read) when ``raw`` is selected.
            lazy = lazy.with_columns(read_raw(self.format_version))
        return lazy

    def _scan(self, table: str, schema: pl.Schema) -> pl.DataFrame:
        with self._reading():
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

        Columns ``job_id``, ``cost_usd``, ``input_tokens``, ``output_tokens``,
        ``reasoning_tokens``, ``attempts``.
        A job sent again (``retry_failed``, or after a cancel) has one terminal event per
        provider batch it was in; each is billed. Re-collecting the same batch after a crash
        writes the same events again, so events count once per (job, batch).
        """
        return billed_from_events(self.job_events())

    def answer_usage(self) -> pl.LazyFrame:
        """Every job event's ``provider``, ``model``, ``status`` and output usage, lazily.

        For :func:`~batchata_df.estimates.observed_output` over a folder too big to read
        whole (a streamed run): aggregated as it is scanned, the answers never read. A
        batch re-collected after a crash wrote its events twice: both are here.
        """
        columns = ["provider", "model", "status", "output_tokens", "reasoning_tokens"]
        return self._lazy("jobs", JOB_EVENTS).select(columns)

    def job_index(self) -> JobIndex:
        """An index of the job events present now, by job id (see :mod:`batchata_df.jobindex`).

        Built with one scan of the ``job_id`` column; :meth:`snapshot` and
        :meth:`latest_status` given it read only the row groups holding the ids asked for.
        Parts written after it was built are not in it. A big folder's index is spilled to
        ``<folder>/.stream-index-<random>/`` (removed when the index is closed or collected;
        a killed call's is removed by the next streaming call), or to the system's
        temporary folder for a read-only store.
        """
        from batchata_df.jobindex import JobIndex

        with self._reading():
            return JobIndex(
                table_parts(self.root / "jobs"), spill=None if self.readonly else self.root
            )

    def snapshot(
        self,
        job_ids: pl.Series | None = None,
        index: JobIndex | None = None,
        events: pl.DataFrame | None = None,
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """``(job_state(), billed())``, reading only what they need.

        Only the latest event of each job is materialized with its answer, and billing reads
        the usage columns alone, so a run of millions of jobs is not held in memory twice.
        With ``job_ids``, only those jobs are read, in one scan with the filter applied while
        scanning (a streaming run looks up one chunk at a time: memory follows the chunk,
        not the folder). With an ``index`` (:meth:`job_index`) as well, only the row groups
        holding those jobs' events are read, not a scan of the folder's ``job_id`` column.
        ``events`` (every event of some jobs, :data:`JOB_EVENTS`' columns, ``raw`` read:
        :meth:`restored`) are used instead of reading (a caller that needs them for
        something else reads them once).
        """
        if events is None and job_ids is not None and index is not None:
            with self._reading():
                events = _conform(index.events(job_ids, list(JOB_EVENTS)), JOB_EVENTS)
            events = self.restored(events)
        elif events is None:
            lazy = self._lazy("jobs", JOB_EVENTS)
            if job_ids is not None:
                lazy = lazy.filter(pl.col("job_id").is_in(job_ids.implode()))
            with self._reading():
                events = lazy.collect()
        # Parts are read in name order, which is write order: already sorted but after a
        # clock step or a compaction of older parts; sort only then (strings are moved).
        if not events.get_column("seq").is_sorted():
            events = events.sort("seq")
        # One pass over the events, in seq order: each job's last event is its state.
        latest = events.filter(
            pl.col("job_id").is_last_distinct() & pl.col("job_id").is_not_null()
        )
        return _conform(latest, JOB_EVENTS), _billed_sorted(events, latest)

    def record_jobs(self, *, text: bool = True) -> bool:
        """Keep what this store writes from now on, when the folder has no job events yet.

        Returns whether recording started. Then every job event of the folder is one this
        store writes, and :meth:`written_states` can give the final states without reading
        the folder back or searching each job's latest event (for the run's own events, as
        written, in memory: the terminal events of a call that ends every job).
        ``text=False`` keeps the terminal events without the answers' text (``answer``,
        ``raw``: :meth:`written_states` gives them as nulls), for a caller that reads only
        the answers decoded by the writer (:data:`DECODED`); where some completed answers
        come without them, :meth:`written_states` gives ``None``.
        """
        self._written = None
        if self.readonly or table_parts(self.root / "jobs"):
            return False
        self._written = WrittenJobs(text=text)
        return True

    @property
    def recording(self) -> bool:
        """Whether :meth:`record_jobs` is keeping what this store writes."""
        return self._written is not None

    def record_jobs_stop(self) -> None:
        """Stop recording (:meth:`record_jobs`) and let go of what was kept."""
        self._written = None

    def written_states(self, job_ids: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame] | None:
        """:meth:`snapshot` from what this store wrote since :meth:`record_jobs`, or ``None``.

        Stops the recording. Given only when it is what :meth:`snapshot` reads, by
        construction: the folder's job parts are exactly the ones recorded (no other
        writer, no compaction, none removed); every part held either only terminal events
        or none; the terminal events hold each of ``job_ids`` (unique) exactly once and
        nothing else; and every other event of a job came before its terminal one (parts
        written before the first terminal part trivially; later ones are checked against
        the terminal events' ``seq``). Each job's latest event is then its one terminal
        event, in write order, and billed once: what the snapshot finds by searching the
        folder's events (``tests/test_state_property.py`` compares the two). When the
        writer gave each terminal part's answers decoded (``DECODED`` column of the events
        appended), they come as one more column, :data:`DECODED`, so
        the output need not decode them again. Otherwise
        ``None``: read the folder (:meth:`snapshot`). ``job_ids`` are unique (a run's jobs).
        """
        log, self._written = self._written, None
        if log is None or log.mixed or log.text_needed or not log.terminal:
            return None
        if set(table_parts(self.root / "jobs")) != set(log.parts):
            return None
        ended = pl.concat(log.terminal)
        if not log.text:  # the columns left out, as nulls (scalar columns: nothing held)
            columns = [*ended.columns]
            ended = ended.with_columns(
                pl.lit(None, dtype=pl.String).alias("answer"),
                pl.lit(None, dtype=pl.String).alias("raw"),
            ).select(*[c for c in JOB_EVENTS if c in {*columns, "answer", "raw"}])
        ids = ended.get_column("job_id")
        if ended.height != job_ids.len() or ids.null_count() or job_ids.null_count():
            return None
        if not ids.equals(job_ids, check_names=False) and not (
            ids.is_in(job_ids.implode()).all()
            and ids.n_unique() == ended.height == job_ids.n_unique()
        ):
            return None
        if log.late:
            late = pl.concat(log.late).join(
                ended.select("job_id", pl.col("seq").alias("_end")), on="job_id", how="left"
            )
            if not (late.get_column("_end") > late.get_column("seq")).fill_null(False).all():
                return None
        billed = _billed_sorted(ended, ended)
        decoded = log.answers()
        if decoded is not None:
            ended = ended.with_columns(decoded)
        return ended, billed

    def latest_status(self, job_ids: pl.Series, index: JobIndex | None = None) -> pl.DataFrame:
        """The latest event of each of ``job_ids`` without its answer (:data:`STATUS_COLUMNS`).

        What a streaming run needs to know of a chunk before sending it (settled, lost
        realtime, in flight): only the small columns are read (never ``answer``, ``raw``,
        ``response`` or ``citations``), with the filter applied while scanning, so resuming a
        finished run does not read its answers back into memory. With an ``index``
        (:meth:`job_index`), only the row groups holding them are read.
        """
        if index is not None:
            status_schema = pl.Schema({c: JOB_EVENTS[c] for c in STATUS_COLUMNS})
            with self._reading():
                events = _conform(index.events(job_ids, STATUS_COLUMNS), status_schema)
        else:
            lazy = (
                self._lazy("jobs", JOB_EVENTS)
                .select(*STATUS_COLUMNS)
                .filter(pl.col("job_id").is_in(job_ids.implode()))
            )
            with self._reading():
                events = lazy.collect()
        return events.sort("seq").unique("job_id", keep="last", maintain_order=True)

    def spent(self) -> float:
        """What every job of the folder was billed so far, all attempts (see ``billed``).

        Bounded memory whatever the folder's size: see :func:`spent_usd`.
        """
        with self._reading():
            return _billed_total(self.root)

    def assigned(self, batch_keys: pl.Series) -> pl.DataFrame:
        """The ``assigned`` events of ``batch_keys``: ``job_id``, ``batch_key``, ``est_cost_usd``.

        Read with the filter applied while scanning (recovery needs the members of the few
        batches still open, never the whole folder).
        """
        return self._events_of(batch_keys, ["assigned"]).drop("status")

    def members_and_outcomes(self, batch_keys: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
        """:meth:`assigned` of ``batch_keys``, and the jobs with a terminal event under one.

        One scan of the folder. The second frame has ``batch_key`` and ``job_id``, once
        each. Recovery asks this of the batches still open: a crash between storing a
        batch's outcomes and recording it collected leaves a batch whose every job has one.
        """
        events = self._events_of(batch_keys, ["assigned", *TERMINAL_JOB])
        assigned = events.filter(pl.col("status") == "assigned").drop("status")
        outcomes = (
            events.filter(pl.col("status") != "assigned")
            .select("batch_key", "job_id")
            .unique(maintain_order=True)
        )
        return assigned, outcomes

    def _events_of(self, batch_keys: pl.Series, statuses: list[str]) -> pl.DataFrame:
        """Job events of ``batch_keys`` with one of ``statuses``, in write order."""
        lazy = (
            self._lazy("jobs", JOB_EVENTS)
            .filter(
                pl.col("status").is_in(statuses)
                & pl.col("batch_key").is_in(batch_keys.implode())
            )
            .select("seq", "job_id", "batch_key", "est_cost_usd", "status")
        )
        with self._reading():
            return lazy.collect().sort("seq").drop("seq")

    def damaged_downloads(self) -> list[tuple[str, bytes]]:
        """``(download, digest)`` of every results download recorded not UTF-8, oldest first.

        The batch events whose ``detail`` is a :func:`damaged_detail`; a download recorded
        more than once comes once per record, the latest last.
        """
        detail = pl.col("detail")
        found = (
            self._lazy("batches", BATCH_EVENTS)
            .filter(detail.str.starts_with(DAMAGED_DETAIL))
            .select("seq", detail.str.strip_prefix(DAMAGED_DETAIL))
        )
        with self._reading():
            rows = found.collect().sort("seq").get_column("detail").to_list()
        out: list[tuple[str, bytes]] = []
        for row in rows:
            digest, sep, download = str(row).partition(": ")
            with contextlib.suppress(ValueError):
                if sep:
                    out.append((download, bytes.fromhex(digest)))
        return out

    def batch_keys_with_detail(self, *details: str) -> set[str]:
        """The keys of the batches with an event whose ``detail`` is one of ``details``."""
        keys = self._scan("batches", BATCH_EVENTS).filter(pl.col("detail").is_in(details))
        return set(keys.get_column("batch_key").unique().to_list())

    def batch_state(self) -> pl.DataFrame:
        """The latest event of every batch, with its first known provider batch id.

        ``sent_on`` is the day it was sent: its latest ``intent`` / ``submitted`` event's.
        """
        events = self._scan("batches", BATCH_EVENTS).sort("seq")
        if events.height == 0:
            return events
        ids = events.group_by("batch_key").agg(
            pl.col("provider_batch_id").drop_nulls().first().alias("_pbid"),
            pl.col("sent_on").drop_nulls().last().alias("_sent"),
        )
        latest = events.group_by("batch_key").agg(pl.all().sort_by("seq").last())
        return (
            latest.join(ids, on="batch_key", how="left")
            .with_columns(
                pl.coalesce("provider_batch_id", "_pbid").alias("provider_batch_id"),
                pl.coalesce("sent_on", "_sent").alias("sent_on"),
            )
            .drop("_pbid", "_sent")
            .sort("seq")
        )

    def compact(
        self, *, target_bytes: int = COMPACT_TARGET_BYTES, target_rows: int | None = None
    ) -> int:
        """Merge each table's parts into few large ones; return how many parts were merged.

        Every event is kept (same ``seq``, same values): only the number of files changes,
        so a folder that took thousands of small parts during a run is read (and queried
        with :func:`batchata_df.sql`) as a handful. Consecutive parts are merged into parts
        of about ``target_bytes`` and at most ``target_rows`` events (by default
        :data:`COMPACT_TARGET_ROWS`; a part already larger stays as it is).

        Crash-safe: the merged part is written to a hidden temporary file, flushed, and
        renamed to ``part-<first>~<last>.parquet``. From the rename on, it hides the parts
        it replaced (:func:`table_parts`), which are deleted afterwards; a crash before the
        rename leaves the old parts, a crash after it leaves parts that nobody reads and the
        next writer deletes (:func:`collect_compacted`). Nothing is lost or read twice.
        Call it holding the writer lock (``batch_llm`` does, when a run ends).
        """
        if self.readonly:
            msg = f"checkpoint folder {str(self.root)!r} was opened read-only"
            raise StateError(msg)
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        if target_rows is None:
            target_rows = COMPACT_TARGET_ROWS
        merged = 0
        for table, schema in TABLES.items():
            groups: list[list[Path]] = [[]]
            size = rows = 0
            for part in table_parts(self.root / table):
                if _part_range(part.name) is None:
                    continue
                part_size = part.stat().st_size
                with self._reading():  # a part damaged since the store opened: named
                    part_rows = pq.read_metadata(part).num_rows
                if groups[-1] and (
                    size + part_size > target_bytes or rows + part_rows > target_rows
                ):
                    groups.append([])
                    size = rows = 0
                groups[-1].append(part)
                size += part_size
                rows += part_rows
            for group in groups:
                if len(group) > 1:
                    self._merge(table, schema, group)
                    merged += len(group)
        return merged

    def drop_jobs(self, job_ids: pl.Series) -> int:
        """Rewrite the job parts without any event of ``job_ids``; return how many went.

        For a fresh start of some jobs in a folder other jobs share
        (:meth:`batchata_df.compat.Batch.run` with ``reuse_state=False``): their answers,
        bills and attempts leave the folder, every other job's events stay as they were
        (same ``seq``, same values). The batch events stay (they hold no money; a batch
        whose jobs all went reads as a batch without jobs). Copy the folder first to keep
        what is dropped: this deletes it.

        Every job part is merged into one part without those events, the way
        :meth:`compact` merges (a hidden temporary file, flushed, then renamed to
        ``part-<first>~<last>.parquet``, which hides every part it replaces): a crash before
        the rename leaves the folder as it was, one after it the folder without the jobs
        (the replaced parts, hidden, are deleted by the next writer). The folder's summary
        (``summary/jobs.parquet``) is removed first: the merged part may take the name of
        the part it summarized. Nothing is written when none of ``job_ids`` has an event.
        The folder keeps its format version: the events kept are copied as stored (``raw``
        of format 2 not read back), into a part of the folder's format. Call it holding
        the writer lock, as :meth:`compact`.

        Raises
        ------
        StateError
            One of ``job_ids`` is in flight (its latest event ``assigned``: in a batch
            that may still be answered and billed), or a job part has a name this version
            does not write (it could not be hidden); nothing is changed.
        """
        if self.readonly:
            msg = f"checkpoint folder {str(self.root)!r} was opened read-only"
            raise StateError(msg)
        ids = job_ids.cast(pl.String).drop_nulls().unique()
        parts = table_parts(self.root / "jobs")
        if ids.len() == 0 or not parts:
            return 0
        foreign = [p.name for p in parts if _part_range(p.name) is None]
        if foreign:
            msg = (
                f"cannot take jobs out of checkpoint folder {str(self.root)!r}: its job parts "
                f"{foreign[:3]!r} have names this batchata-df does not write; nothing was "
                "changed. Move them out of the folder (or use a new state folder)"
            )
            raise StateError(msg)
        theirs = pl.col("job_id").is_in(ids.implode())
        with self._reading():
            events = (
                self._lazy("jobs", JOB_EVENTS).select("seq", "job_id", "status")
                .filter(theirs).collect()
            )  # fmt: skip
        if events.height == 0:
            return 0
        latest = events.sort("seq").unique("job_id", keep="last")
        busy = latest.filter(~pl.col("status").is_in(TERMINAL_JOB))
        if busy.height:
            shown = sorted(busy.get_column("job_id").to_list())[:3]
            msg = (
                f"cannot take jobs out of checkpoint folder {str(self.root)!r}: "
                f"{busy.height} of them are in flight (sent, not collected yet: "
                f"{', '.join(shown)}{', ...' if busy.height > 3 else ''}); nothing was changed. "
                "Collect them first (a call on the folder with the same arguments sends "
                "nothing again), then take them out"
            )
            raise StateError(msg)
        from batchata_df.summary import SUMMARY_DIR, SUMMARY_FILE

        (self.root / SUMMARY_DIR / SUMMARY_FILE).unlink(missing_ok=True)
        self._merge("jobs", JOB_EVENTS, parts, keep=(~theirs).fill_null(True))
        return events.height

    def _merge(
        self, table: str, schema: pl.Schema, group: list[Path], keep: pl.Expr | None = None
    ) -> None:
        """Merge ``group`` (consecutive parts of ``table``) into one part hiding them.

        ``keep``: only the events it holds true for (:meth:`drop_jobs`); every one without.
        """
        first, last = group[0].name, group[-1].name
        lo = first[len("part-") : -len(".parquet")].split(COMPACTED_SEP)[0]
        hi = last[len("part-") : -len(".parquet")].split(COMPACTED_SEP)[-1]
        final = self.root / table / f"part-{lo}{COMPACTED_SEP}{hi}.parquet"
        tmp = final.with_name(f".tmp-compact-{secrets.token_hex(4)}.parquet")
        identity = self._identity()
        # As stored: ``raw`` is not read (:func:`read_raw`); the parts are of the folder's
        # format, and so is the merged part (drop_jobs keeps the folder's version).
        merged = pl.scan_parquet(
            group, schema=schema, missing_columns="insert", extra_columns="ignore", glob=False
        ).select(list(schema))
        if keep is not None:
            merged = merged.filter(keep)
        with self._reading():
            merged.sink_parquet(
                tmp,
                compression="zstd",
                compression_level=PART_ZSTD_LEVEL,
                statistics=False,
                metadata=identity,
                row_group_size=COMPACT_ROW_GROUP_ROWS,
            )
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _failpoint("compact_before_rename")
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        _failpoint("compact_after_rename")
        for path in group:
            if path == final:  # one compacted part rewritten (drop_jobs): replaced in place
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _failpoint(name: str) -> None:
    """Die here if ``BATCHATA_DF_FAILPOINT`` names this point (crash tests)."""
    if os.environ.get("BATCHATA_DF_FAILPOINT") == name:
        os._exit(75)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: A frame of events, eager or lazy: :func:`billed_from_events` answers in the same kind.
#: (A constrained type variable rather than ``@overload``: mutmut's trampoline puts code
#: between overloads and their implementation, which mypy rejects, so the mutation run
#: could not filter this module's mutants with mypy.)
Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)
_T = TypeVar("_T")


def billed_from_events(events: Frame) -> Frame:
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
        pl.col("cost_usd", "input_tokens", "output_tokens", "reasoning_tokens")
        .sort_by("seq")
        .last()
    )

    def total(col: str) -> pl.Expr:
        # Null when no attempt reported it (no price known, or no usage reported).
        known = pl.col(col).null_count() < pl.len()
        return pl.when(known).then(pl.col(col).sum()).alias(col)

    return per_attempt.group_by("job_id").agg(
        total("cost_usd"),
        total("input_tokens"),
        total("output_tokens"),
        total("reasoning_tokens"),
        pl.len().cast(pl.Int64).alias("attempts"),
    )


def _billed_sorted(events: pl.DataFrame, latest: pl.DataFrame | None = None) -> pl.DataFrame:
    """:func:`billed_from_events`, without grouping when no job was billed twice.

    A job with one billed attempt (almost every job) is billed that attempt's own values,
    which is what the grouping gives for one attempt; only a folder where some job has
    several terminal events (retries, a batch collected twice) is grouped.

    ``latest`` (each job's last event, as :meth:`StateStore.snapshot` has it) spares
    hashing the ids to find out: each job whose last event is terminal and billable has
    at least one such event, so when their number equals the number of terminal billable
    events, no job has two (and none has one that is not its last). When the counts
    differ, the ids are counted as before.
    """
    billable = (
        pl.col("batch_key").is_not_null()
        | pl.col("cost_usd").is_not_null()
        | pl.col("input_tokens").is_not_null()
    )
    usage = ["job_id", "cost_usd", "input_tokens", "output_tokens", "reasoning_tokens"]
    terminal = events.select("seq", "batch_key", "status", *usage).filter(
        pl.col("status").is_in(TERMINAL_JOB) & billable
    )
    if latest is not None:
        ends = latest.filter(pl.col("status").is_in(TERMINAL_JOB) & billable).height
        if ends == terminal.height:
            return terminal.select(*usage, pl.lit(1, dtype=pl.Int64).alias("attempts"))
    if terminal.get_column("job_id").n_unique() < terminal.height:
        return billed_from_events(terminal)
    return terminal.select(*usage, pl.lit(1, dtype=pl.Int64).alias("attempts"))


def join_by_job(left: pl.DataFrame, right: pl.DataFrame) -> pl.DataFrame:
    """``left.join(right, on="job_id", how="left", maintain_order="left")``, ``right``'s ids unique.

    When ``right`` holds exactly ``left``'s ids in the same order (a run whose batches
    came back in the order they went, each job once), the join is ``right``'s columns put
    beside ``left``'s: one comparison of the id columns instead of hashing both and
    gathering every column. Otherwise it is that join.

    Examples
    --------
    >>> left = pl.DataFrame({"job_id": ["a", "b"], "x": [1, 2]})
    >>> join_by_job(left, pl.DataFrame({"job_id": ["a", "b"], "y": [3, 4]})).rows()
    [('a', 1, 3), ('b', 2, 4)]
    >>> join_by_job(left, pl.DataFrame({"job_id": ["b", "a"], "y": [4, 3]})).rows()
    [('a', 1, 3), ('b', 2, 4)]
    """
    if lined_up(left, right):
        return pl.concat([left, right.drop("job_id")], how="horizontal")
    return left.join(right, on="job_id", how="left", maintain_order="left")


def lined_up(left: pl.DataFrame, right: pl.DataFrame) -> bool:
    """Whether ``right`` holds exactly ``left``'s ``job_id`` s in the same order, none null.

    Then a left join of ``right`` (its ids unique) onto ``left`` is the two side by side.

    Examples
    --------
    >>> ids = pl.DataFrame({"job_id": ["a", "b"]})
    >>> lined_up(ids, ids), lined_up(ids, ids.reverse()), lined_up(ids, ids.head(1))
    (True, False, False)
    """
    ids, theirs = left.get_column("job_id"), right.get_column("job_id")
    return (
        left.height == right.height
        and ids.dtype == theirs.dtype
        and ids.null_count() == 0
        and ids.equals(theirs, check_names=False)
    )


def adopt_schema(root: str | os.PathLike[str], fingerprint: Mapping[str, str]) -> None:
    """Rewrite a folder's manifest for a new answer schema (``batchata_df.reparse``).

    The fingerprint becomes ``fingerprint`` (the new schema's, with the ``job_salt`` that
    keeps the folder's job ids); every other manifest field is kept. The file is replaced
    atomically; parts written from now on carry the new fingerprint.
    """
    path = Path(root) / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        msg = f"{str(path)!r} is not a readable batchata-df manifest: {e}"
        raise StateError(msg) from e
    data["fingerprint"] = dict(fingerprint)
    StateStore._atomic_write(path, json.dumps(data, indent=2, sort_keys=True).encode())


def spent_usd(root: str | os.PathLike[str]) -> float:
    """What a checkpoint folder's jobs were billed, every attempt counted (0 if none).

    Reads the parts directly, without checking the manifest's fingerprint. Aggregated while
    scanning the usage columns alone; counting each (job, batch) once needs a table of the
    jobs, so a folder of more than :data:`SPENT_SLICE_EVENTS` events is added up in slices
    of its jobs (by a hash of ``job_id``, one scan each): memory stays bounded whatever the
    folder's size.
    """
    with reading_folder(root):
        return _billed_total(Path(root))


@contextlib.contextmanager
def reading_folder(root: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a Polars (or pyarrow) error while reading folder ``root`` into a :class:`StateError`.

    The error names the damaged parts (:func:`damaged_error`) when a deep check finds
    any, else the folder and the reader's message. Footers are read with pyarrow
    (:class:`~batchata_df.jobindex.JobIndex`, :meth:`StateStore.compact`): its errors are
    turned the same way.
    """
    try:
        yield
    except Exception as e:
        arrow = sys.modules.get("pyarrow")  # loaded if it raised
        if not isinstance(e, pl.exceptions.PolarsError) and not (
            arrow is not None and isinstance(e, arrow.ArrowException)
        ):
            raise
        damaged = find_damaged(root, deep=True)
        if damaged:
            raise damaged_error(Path(root), damaged) from e
        msg = f"cannot read the checkpoint folder {str(root)!r}: {e}"
        raise StateError(msg) from e


READ_ATTEMPTS = 5
"""Times :func:`read_unlocked` reads folders whose parts a writer keeps replacing."""


def _part_names(roots: Sequence[str | os.PathLike[str]]) -> set[str]:
    """The part files present (raw names); what cannot be listed counts as none."""
    names: set[str] = set()
    for root in roots:
        for table in TABLES:
            try:
                names.update(e.path for e in os.scandir(Path(root, table)))
            except OSError:  # missing, or not a folder: the read says what is wrong
                continue
    return names


def read_unlocked(
    roots: Sequence[str | os.PathLike[str]],
    read: Callable[[], _T],
    *,
    errors: tuple[type[BaseException], ...] = (),
    again: Callable[[], bool] = lambda: True,
    suspect: Callable[[_T], bool] = lambda _: False,
) -> _T:
    """``read()`` of checkpoint folders without their lock; again if a writer replaced parts.

    Reading takes no lock (``sql``, ``batchata-df status``, a dry run), but the writer
    may merge parts into one and delete them (:meth:`StateStore.compact`, as a streamed
    run ends; :func:`collect_compacted`) between a reader's listing of the parts and its
    reading of them: the read then fails on a file that no longer exists (DuckDB's or
    Polars' "No such file", or a part that looks damaged because it vanished). When the
    parts present changed during a failed read, the folders are read again; a failure with
    the same parts present (a damaged part, a mistake) is raised at once, and so is the
    last of :data:`READ_ATTEMPTS` reads, a :class:`StateLockedError` and a
    :class:`StateMismatchError` (no vanished part causes them).

    Parameters
    ----------
    roots
        The folders ``read`` reads.
    read
        Lists the parts and reads them (every attempt lists them again).
    errors
        Exception types besides ``OSError``, Polars' and :class:`StateError` that a
        vanished part raises in ``read`` (``duckdb.Error``).
    again
        Whether a failed ``read`` may be done again (``batch_llm``: only while it took no
        writer lock, before which it reads and sends nothing).
    suspect
        Whether a result may come from a vanished part rather than the folder
        (:func:`batchata_df.repair.doctor`: a part that vanished after it was listed reads
        as damaged). Such a result is read again like a failure when the parts present
        changed, and returned as it is otherwise (or on the last attempt).
    """
    caught: tuple[type[BaseException], ...] = (
        OSError, pl.exceptions.PolarsError, StateError, *errors
    )
    for attempt in range(1, READ_ATTEMPTS + 1):
        before = _part_names(roots)
        try:
            result = read()
        except (StateLockedError, StateMismatchError):
            raise
        except caught:
            if attempt == READ_ATTEMPTS or not again() or _part_names(roots) == before:
                raise
            continue
        if (
            not suspect(result)
            or attempt == READ_ATTEMPTS
            or not again()
            or _part_names(roots) == before
        ):
            return result
    raise AssertionError  # pragma: no cover (the last attempt returns or raises)


def _billed_total(root: Path) -> float:
    parts = table_parts(root / "jobs")
    if not parts:
        return 0.0
    # Parts written by other versions have other columns: read with the schema, whatever
    # else they hold (a plain scan refuses a folder whose parts' columns differ).
    usage = pl.scan_parquet(
        parts, schema=JOB_EVENTS, missing_columns="insert", extra_columns="ignore",
        glob=False,
    ).select(*USAGE_COLUMNS)
    n_events = int(usage.select(pl.len()).collect().item())
    slices = max(1, -(-n_events // SPENT_SLICE_EVENTS))
    total = 0.0
    for i in range(slices):
        part = usage
        if slices > 1:
            part = usage.filter((pl.col("job_id").hash(seed=0) % slices).fill_null(0) == i)
        summed = billed_from_events(part).select(pl.col("cost_usd").fill_null(0.0).sum())
        total += float(summed.collect(engine="streaming").item() or 0.0)
    return total


UNKNOWN_BILLING = ("lost:", "server_error:")
"""Error prefixes of realtime attempts the provider may have billed with no cost known."""


def _unknown_billing(error: pl.Expr) -> pl.Expr:
    """Whether a realtime ``failed`` event's ``error`` says it may have been billed."""
    return pl.any_horizontal(*(error.str.starts_with(p) for p in UNKNOWN_BILLING))


def lost_attempts(root: str | os.PathLike[str]) -> pl.DataFrame:
    """Every realtime request of folder ``root`` that may have been billed with no cost stored.

    One row per attempt (job, ``batch_key``), whatever became of the job afterwards: a
    request in flight when its process died (the attempt's last event a realtime
    ``assigned``, which the next call ends ``failed`` "lost: ...") or whose answer never
    came back (a realtime ``failed`` "lost: ...") or came back 5xx (``failed``
    "server_error: ...": a gateway 502/504 may follow an answer the provider billed; each
    attempt is its own ``batch_key``). A row sent again and answered
    (``retry_failed=True``) keeps its lost attempt here: the provider may have billed both.
    Columns ``job_id`` and ``est_cost_usd`` (the worst case recorded when it was sent: null
    when that call had no cap or dry run's estimates). Realtime events are read alone (a
    folder of batch runs reads its ``mode`` column only), in slices of the folder's jobs as
    :func:`spent_usd`: bounded memory. A damaged part is a :class:`StateError` naming it
    (:func:`reading_folder`).
    """
    with reading_folder(root):
        return _lost_attempts(Path(root))


def _lost_attempts(root: Path) -> pl.DataFrame:
    empty = pl.DataFrame(schema={"job_id": pl.String, "est_cost_usd": pl.Float64})
    parts = table_parts(root / "jobs")
    if not parts:
        return empty
    events = (
        pl.scan_parquet(
            parts, schema=JOB_EVENTS, missing_columns="insert", extra_columns="ignore",
            glob=False,
        )
        .filter(pl.col("mode") == "realtime")
        .select("seq", "job_id", "batch_key", "status", "error", "est_cost_usd")
    )  # fmt: skip
    n_events = int(events.select(pl.len()).collect().item())
    if not n_events:
        return empty
    slices = max(1, -(-n_events // SPENT_SLICE_EVENTS))
    lost = (
        (pl.col("status") == "assigned")
        | ((pl.col("status") == "failed") & _unknown_billing(pl.col("error")))
    ).fill_null(False)
    found = [empty]
    for i in range(slices):
        part = events
        if slices > 1:
            part = events.filter((pl.col("job_id").hash(seed=0) % slices).fill_null(0) == i)
        found.append(
            part.group_by("job_id", "batch_key")
            .agg(pl.all().sort_by("seq").last())
            .filter(lost)
            .select("job_id", pl.col("est_cost_usd").cast(pl.Float64))
            .collect()
        )
    return pl.concat(found)


def lost_usd(root: str | os.PathLike[str]) -> float:
    """The recorded worst case of every lost attempt of folder ``root`` (:func:`lost_attempts`).

    What a cap counts for them as spent; those with none recorded count 0 here (see
    :func:`batchata_df.validate.price_lost_requests`).
    """
    with reading_folder(root):
        lost = lost_attempts(root)
    return float(lost.get_column("est_cost_usd").fill_null(0.0).sum())


PART_RUN_KEY = "batchata_run"
"""Parquet key-value metadata of every part: the run id of the folder's manifest."""
PART_FINGERPRINT_KEY = "batchata_fingerprint"
"""Parquet key-value metadata of every part: the manifest's fingerprint (JSON)."""
PART_FORMAT_KEY = "batchata_format"
"""Parquet key-value metadata of every part: the folder's format version (decimal text)."""

TABLES = {"jobs": JOB_EVENTS, "batches": BATCH_EVENTS}
REQUIRED = {"jobs": ("seq", "job_id", "status"), "batches": ("seq", "batch_key", "status")}


COMPACTED_SEP = "~"
"""A compacted part is named ``part-<first>~<last>.parquet`` after the first and last
parts it replaced (``<ns>-<rand>`` each): it holds their events, and hides every part
whose name falls in that range (see :func:`table_parts`)."""


def _part_files(folder: Path) -> list[Path]:
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    return [
        Path(e.path)
        for e in entries
        if e.name.startswith("part-") and e.name.endswith(".parquet") and e.is_file()
    ]


def _part_range(name: str) -> tuple[int, int] | None:
    """The (first, last) nanosecond stamps a part name covers (equal for a plain part).

    ``None`` for a name this version did not write (never hidden, never compacted).

    Examples
    --------
    >>> _part_range("part-00000000000000000005-abc123.parquet")
    (5, 5)
    >>> _part_range("part-00000000000000000005-abc123~00000000000000000009-def456.parquet")
    (5, 9)
    """
    stem = name[len("part-") : -len(".parquet")]
    lo, _, hi = stem.partition(COMPACTED_SEP)
    try:
        first = int(lo.split("-", 1)[0])
        return first, int(hi.split("-", 1)[0]) if hi else first
    except ValueError:
        return None


def _hidden(parts: list[Path]) -> set[Path]:
    """Parts replaced by a compacted part (it covers their name range)."""
    ranges = {p: _part_range(p.name) for p in parts}
    compacted = [(p, r) for p, r in ranges.items() if r is not None and COMPACTED_SEP in p.name]
    out: set[Path] = set()
    for p, r in ranges.items():
        if r is None:
            continue
        for q, (qlo, qhi) in compacted:
            if q != p and qlo <= r[0] and r[1] <= qhi:
                out.add(p)
                break
    return out


def table_parts(folder: str | os.PathLike[str]) -> list[Path]:
    """The event parts of one table folder that hold its events, in name order.

    Hidden ``.tmp-*`` files are still being written; parts a compacted part replaced
    (left behind by a crash during compaction, before they were deleted) are not read.
    """
    parts = _part_files(Path(folder))
    hidden = _hidden(parts)
    return sorted((p for p in parts if p not in hidden), key=lambda p: p.name)


def collect_compacted(root: str | os.PathLike[str]) -> int:
    """Delete parts a compacted part replaced (a crash left them); returns how many.

    Only a writer (holding the lock) calls this; readers skip such parts anyway.
    """
    n = 0
    for table in TABLES:
        for path in _hidden(_part_files(Path(root, table))):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                n += 1
    return n


def list_parts(root: str | os.PathLike[str]) -> list[Path]:
    """Every event part of a checkpoint folder (not temporary files), jobs then batches."""
    return [p for table in TABLES for p in table_parts(Path(root, table))]


def is_state_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a checkpoint folder (holds ``manifest.json``, ``jobs/`` or ``batches/``).

    A folder whose manifest was lost but whose parts remain is one: ``repair`` rebuilds its
    manifest. A streaming run's folder holds the same, and ``summary/`` besides.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> is_state_folder(folder)
    False
    >>> _ = StateStore(folder, {"model": "m"})
    >>> is_state_folder(folder), is_state_folder(Path(folder) / "jobs")
    (True, False)
    """
    p = Path(path)
    return (p / "manifest.json").is_file() or (p / "jobs").is_dir() or (p / "batches").is_dir()


SEARCH_DEPTH = 3
"""How deep :func:`state_folders_below` looks (``results_dir/state/<group>`` is 2 deep)."""

SEARCH_FOLDERS = 2000
"""How many folders :func:`state_folders_below` opens at most (a data folder may be huge)."""


def state_folders_below(root: str | os.PathLike[str]) -> list[Path]:
    """The checkpoint folders under ``root``, in name order.

    Such as the run folders of a results folder, ``compat``'s ``results_dir/state/<group>``
    folders. Looks :data:`SEARCH_DEPTH` levels down and opens at most :data:`SEARCH_FOLDERS`
    folders; hidden folders and symbolic links are skipped, and so is the inside of a
    checkpoint folder.
    """
    found: list[Path] = []
    level = [Path(root)]
    opened = 0
    for _ in range(SEARCH_DEPTH):
        below: list[Path] = []
        for folder in level:
            if opened >= SEARCH_FOLDERS:
                break
            opened += 1
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                child = Path(folder, entry.name)
                if is_state_folder(child):
                    found.append(child)
                else:
                    below.append(child)
        level = below
    return sorted(found)


def not_a_state_folder(
    path: str | os.PathLike[str], *, command: str | None, shown: int = 5
) -> StateError | None:
    """The error for ``path`` when it is not a checkpoint folder, else ``None``.

    The error names the path, what is missing and the fix: the checkpoint folders below it
    (``shown`` of them, then how many more) to pass (to ``batchata-df COMMAND`` when
    ``command`` is given, else as a list or a glob pattern), or the
    ``.state`` folder beside a file given instead of its folder. Reads only.

    Examples
    --------
    >>> import tempfile
    >>> results = Path(tempfile.mkdtemp())
    >>> for name in ("a", "b"):
    ...     _ = StateStore(results / "state" / name, {"model": "m"})
    >>> print(not_a_state_folder(results, command="doctor"))  # doctest: +ELLIPSIS
    '...' is not a batchata-df state folder (it holds no manifest.json, jobs/ or batches/); the state folders below it are '.../state/a' and '.../state/b': pass one of them, e.g. `batchata-df doctor .../state/a`
    >>> not_a_state_folder(results / "state" / "a", command="doctor") is None
    True
    """  # noqa: E501
    p = Path(path)
    text = os.fspath(path)
    if is_state_folder(p):
        return None
    fix = (
        "pass the state folder of a run (the `state=` of batch_llm, OUTPUT.state of "
        "`batchata-df run`, results_dir/state/<group> of compat.Batch)"
    )
    beside = Path(text + ".state")
    if not p.is_dir():
        what = "does not exist" if not p.exists() else "is not a folder"
        if is_state_folder(beside):
            fix = f"did you mean the state folder {str(beside)!r}?"
        return StateError(f"{text!r} {what}; {fix}")
    below = state_folders_below(p)
    if below:
        names = [repr(str(f)) for f in below[:shown]]
        more = len(below) - len(names)
        listed = (
            f"{', '.join(names)} and {more} more" if more
            else names[0] if len(names) == 1
            else f"{', '.join(names[:-1])} and {names[-1]}"
        )
        noun = "folder below it is" if len(below) == 1 else "folders below it are"
        fix = f"the state {noun} {listed}: pass " + (
            f"one of them, e.g. `batchata-df {command} {shlex.quote(str(below[0]))}`"
            if command
            else "one of them, or a list or glob pattern of them"
        )
    elif is_state_folder(p.parent):
        fix = f"pass the state folder it is in: {str(p.parent)!r}"
    elif (p / LOCK_FILE).is_file():  # locked by a call killed (or starting) before it wrote
        fix = (
            f"it holds only the {LOCK_FILE} of a call that wrote nothing to it yet (nothing "
            f"was sent from it: there is nothing to read or repair); {fix}"
        )
    return StateError(
        f"{text!r} is not a batchata-df state folder (it holds no manifest.json, jobs/ or "
        f"batches/); {fix}"
    )


@dataclass(frozen=True)
class Damage:
    """A file of a checkpoint folder that cannot be used, and why."""

    path: Path
    problem: str


def check_part(path: Path, *, deep: bool = False) -> str | None:
    """Why a part cannot be used (unreadable, or not an event part), or ``None``.

    The footer and schema are always read; ``deep`` also reads every value.
    """
    table = path.parent.name
    schema = TABLES[table]
    try:
        # From an open file: given a path, Polars would expand ``[``, ``*``, ``?`` in it
        # (a folder named ``runs[1]`` matched nothing, and every part looked damaged).
        with path.open("rb") as file:
            found = pl.read_parquet_schema(file)
    except (OSError, pl.exceptions.PolarsError) as e:
        return f"unreadable Parquet ({e})"
    missing = [c for c in REQUIRED[table] if c not in found]
    if missing:
        return f"not a {table} event part: no column {', '.join(missing)}"
    for name, dtype in found.items():
        want = schema.get(name)
        if want is not None and dtype != want and dtype != pl.Null():
            return f"column {name!r} is {dtype}, not {want}"
    if deep:
        try:
            pl.read_parquet(path, glob=False)
        except (OSError, pl.exceptions.PolarsError) as e:
            return f"unreadable Parquet data ({e})"
    return None


def find_damaged(root: str | os.PathLike[str], *, deep: bool = False) -> list[Damage]:
    """The event parts of a folder that cannot be read as events (see :func:`check_part`)."""
    out = []
    for path in list_parts(root):
        problem = check_part(path, deep=deep)
        if problem is not None:
            out.append(Damage(path, problem))
    return out


def damaged_error(root: Path, damaged: list[Damage]) -> StateError:
    """The error for damaged parts: names them and the fix."""
    listed = "; ".join(f"{d.path}: {d.problem}" for d in damaged[:5])
    more = f" (and {len(damaged) - 5} more)" if len(damaged) > 5 else ""
    msg = (
        f"checkpoint folder {str(root)!r} has {len(damaged)} damaged event part(s): "
        f"{listed}{more}. Do not delete them by hand (their batches would be paid again): run "
        f"`batchata-df repair {root}` to see what it will do, then with --apply to move them "
        "aside and recover what they held from the provider"
    )
    return StateError(msg)


def check_version(root: str | os.PathLike[str], version: object) -> int:
    """``version``, a format this version reads (:data:`READ_VERSIONS`); else a StateError."""
    if type(version) is not int or version not in READ_VERSIONS:
        readable = " and ".join(str(v) for v in READ_VERSIONS)
        msg = (
            f"checkpoint folder {str(root)!r} has format version {version!r}; this "
            f"batchata-df reads versions {readable}. Use a new state folder, or the "
            "batchata-df version that wrote it"
        )
        raise StateError(msg)
    return version


def part_version(metadata: Mapping[str, str]) -> int | str:
    """The format version of a part with key-value ``metadata``, as it records it.

    A part written before the key existed is version 1; a value that is not a number is
    given back as it is (a format nobody reads).

    Examples
    --------
    >>> part_version({PART_FORMAT_KEY: "2"}), part_version({}), part_version({PART_FORMAT_KEY: "x"})
    (2, 1, 'x')
    """
    value = metadata.get(PART_FORMAT_KEY)
    if value is None:
        return 1
    try:
        return int(value)
    except ValueError:
        return value


def part_versions(parts: Sequence[Path]) -> set[int | str]:
    """The format versions ``parts`` record (:func:`part_version`); footers read only."""
    found: set[int | str] = set()
    for part in parts:
        with part.open("rb") as file:  # not the path: Polars would expand ``[`` etc. in it
            found.add(part_version(pl.read_parquet_metadata(file)))
    return found


def folder_version(root: str | os.PathLike[str]) -> int:
    """The format version of checkpoint folder ``root``, to read its parts with.

    Its manifest's; without a readable manifest (lost, damaged: ``repair`` rebuilds it),
    the one its parts record (:data:`PART_FORMAT_KEY`), and :data:`FORMAT_VERSION` when
    it has none. A version not read here, or parts that disagree, is a
    :class:`StateError`: a folder is never read in a format it was not written in.
    """
    path = Path(root) / "manifest.json"
    manifest: Manifest | None = None
    with contextlib.suppress(StateError):
        manifest = read_manifest(path) if path.exists() else None
    if manifest is not None:
        return check_version(root, manifest.format_version)
    found = part_versions(list_parts(root))
    if not found:
        return FORMAT_VERSION
    if len(found) > 1:
        seen = ", ".join(sorted(repr(v) for v in found))
        msg = (
            f"checkpoint folder {str(root)!r} holds parts of format versions {seen} and no "
            f"readable manifest: run `batchata-df repair {root}` to see what it finds"
        )
        raise StateError(msg)
    return check_version(root, found.pop())


def read_manifest(path: Path) -> Manifest:
    """Read ``manifest.json``; any damage is a :class:`StateError` naming the file and fix."""
    fix = (
        f"run `batchata-df repair {path.parent}` to see how it would be rebuilt from the "
        "event parts, then with --apply"
    )
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        msg = f"{str(path)!r} is not a readable batchata-df manifest ({e}): {fix}"
        raise StateError(msg) from e
    if not isinstance(raw, dict):
        msg = f"{str(path)!r} is not a batchata-df manifest (a JSON {type(raw).__name__}): {fix}"
        raise StateError(msg)
    run_id, fingerprint = raw.get("run_id"), raw.get("fingerprint", {})
    if not isinstance(run_id, str) or not run_id:
        msg = f"{str(path)!r} has no run_id: {fix}"
        raise StateError(msg)
    if fingerprint is None:
        fingerprint = {}
    if not isinstance(fingerprint, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in fingerprint.items()
    ):
        msg = f"{str(path)!r} has an unreadable fingerprint: {fix}"
        raise StateError(msg)
    created = raw.get("created_at", 0.0)
    return Manifest(
        run_id=run_id,
        fingerprint=fingerprint,
        format_version=raw.get("format_version"),  # type: ignore[arg-type]
        created_at=float(created) if isinstance(created, int | float) else 0.0,
    )


def _conform(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """Select ``schema``'s columns in order, casting and adding missing ones as nulls."""
    cols = []
    for name, dtype in schema.items():
        if name in frame.columns:
            cols.append(pl.col(name).cast(dtype))
        else:
            cols.append(pl.lit(None, dtype=dtype).alias(name))
    return frame.select(cols)
