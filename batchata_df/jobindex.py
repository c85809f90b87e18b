"""An index of a checkpoint folder's job events by job id, built once per call.

A streaming run looks its jobs up one chunk at a time: which are settled (before sending)
and their answers (to write the sink). Filtering the whole folder's events by each chunk's
ids scans every ``job_id`` of the folder per chunk: O(folder x chunks), which made resuming
a finished ten-million-row folder cost as much CPU as running it. :class:`JobIndex` scans
the ``job_id`` column once and keeps, per event, one 64-bit word: the high bits a hash of
its job id, the low bits its position in the folder (part, row). Sorted, it answers "where
are the events of these ids" by binary search; each part is then read only in the row
groups that hold them (Polars' reader, those groups' rows pushed into the scan), and the
rows are checked against the ids themselves, so a hash collision costs a row read, never a
wrong row.

Memory does not grow with the folder: up to :data:`INDEX_PARTITION_WORDS` events (a
million jobs) the words are held (8 bytes an event, 16 MB); past that they are spilled to
files (``<dir>/.stream-index-<random>/``), partitioned by the top bits of the hash so that
each partition holds about :data:`INDEX_PARTITION_WORDS` words or fewer, each sorted on
its own. A lookup then reads one partition at a time (into one reused buffer) and keeps
only what it found: what is held is one partition, the ids asked for and their events'
positions, whatever the size of the folder (held whole, twenty million events took 160
MB). Each lookup reads every partition its ids hash into (all of them, for more than a few
ids): a caller with many small lookups over the same ids asks once for all of them
(:meth:`JobIndex.prefetch`) and then looks up subsets of them from what was found.

The index sees the parts present when it was built; parts written later are not in it
(a streaming run builds one before sending, whose chunks' jobs no later part of the call
can hold, see :class:`~batchata_df.engine.source.Feeder`, and one after compacting,
before writing the sink).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import polars as pl

__all__ = ["HASH_SEED", "INDEX_PARTITION_WORDS", "READ_WINDOW_ROWS", "JobIndex"]

HASH_SEED = 0x5EED
"""Seed of the job-id hash (Polars' ``Series.hash``; stable within one process)."""

INDEX_PARTITION_WORDS = 1 << 21
"""Most index words (events) held in memory (16 MB); a bigger folder's index is spilled to
partitions of about this many words or fewer (see the module)."""

READ_WINDOW_ROWS = 1 << 16
"""Most rows of a part :meth:`JobIndex.events` reads at once (more if one row group is
larger): neighbouring row groups that hold events asked for are read together up to this
(one read of Polars' reader per window, not per group)."""


class JobIndex:
    """Where each job's events are in a folder's job parts (see the module).

    Not for use from several threads at once (a part compacted away is read through its one
    open file).

    Parameters
    ----------
    parts
        The job event parts, in read order (:func:`batchata_df.state.table_parts`).

    Examples
    --------
    >>> import tempfile
    >>> from batchata_df.state import StateStore, table_parts
    >>> folder = tempfile.mkdtemp()
    >>> store = StateStore(folder, {"model": "m"})
    >>> store.append_jobs(pl.DataFrame({"job_id": ["a", "b"], "status": "assigned"}))
    >>> store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": "completed"}))
    >>> index = JobIndex(table_parts(f"{folder}/jobs"))
    >>> index.events(pl.Series(["a"]), ["job_id", "status"])["status"].to_list()
    ['assigned', 'completed']
    """

    min_row_bits = 1
    """Fewest low bits of a word kept for the position (more leave fewer for the hash: a
    subclass raising it makes ids share hash keys, as a big folder's ids sometimes do)."""

    def __init__(self, parts: Sequence[Path], spill: str | Path | None = None) -> None:
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        self.parts = list(parts)
        # Each part's file stays open (a part compacted away since is still read through it,
        # see _read), but its footer is not kept: decoded, a footer took ~830 bytes a column
        # chunk, 23 columns a row group (30 MB for a ten-million-job folder's 1,222 groups,
        # benchmarks/PROFILE.md, thirtieth pass). What is kept of it is the row groups' sizes
        # and the column names.
        self._files: list[BinaryIO] = []
        # Closed by close(), or when the index is collected (also if this raises midway).
        self._close_files = weakref.finalize(self, _close_all, self._files)
        self.group_starts: list[np.ndarray] = []
        """Each part's row groups' first rows (and its row count, last)."""
        self.columns: list[set[str]] = []
        for path in self.parts:
            handle = open(path, "rb")  # noqa: SIM115 (closed by close() or when collected)
            self._files.append(handle)
            meta = pq.ParquetFile(handle).metadata
            groups = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            self.group_starts.append(np.cumsum([0, *groups], dtype=np.int64))
            self.columns.append(set(meta.schema.to_arrow_schema().names))
            del meta
        self.offsets = np.cumsum([0, *(int(g[-1]) for g in self.group_starts)], dtype=np.int64)
        """Global position of each part's first event (and the total, last)."""
        total = int(self.offsets[-1])
        self.row_bits = max(self.min_row_bits, total.bit_length())
        self._mask = np.uint64((1 << self.row_bits) - 1)
        # Partitions by the top bits of the hash: a power of two, each about
        # INDEX_PARTITION_WORDS words or fewer (one, held in memory, for a small folder).
        n_partitions = 1
        while total > n_partitions * INDEX_PARTITION_WORDS and n_partitions < 1 << 16:
            n_partitions *= 2
        self.partition_bits = n_partitions.bit_length() - 1
        self.words = np.zeros(0, dtype=np.uint64)
        """The sorted words, when held in memory (one partition); else empty."""
        self.partition_sizes = np.zeros(n_partitions, dtype=np.int64)
        self.spilled = n_partitions > 1
        """Whether the words are in partition files rather than in memory."""
        self._dir: Path | None = None
        self._cleanup: weakref.finalize[Any, Any] | None = None
        self._found: tuple[np.ndarray, np.ndarray] | None = None
        if total == 0:
            return
        if n_partitions == 1:
            self.words = self._scan(total)
            self.words.sort()
            self.partition_sizes[0] = total
            return
        self._dir = Path(tempfile.mkdtemp(prefix=".stream-index-", dir=spill))
        # Removed on close, or when the index is collected (a killed process leaves it:
        # the next streaming call on the folder removes every ".stream-*").
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        self._spill(total, n_partitions)

    def _batches(self) -> Any:
        """The words of every event, part by part, a million at a time (unsorted)."""
        shift = np.uint64(self.row_bits)
        at = 0
        for path in self.parts:
            scan = pl.scan_parquet(
                path, schema={"job_id": pl.String()}, missing_columns="insert",
                extra_columns="ignore", glob=False,
            ).select(pl.col("job_id").hash(seed=HASH_SEED))
            for batch in scan.collect_batches(chunk_size=1 << 20, maintain_order=True):
                n = batch.height
                block = np.right_shift(batch.to_series().to_numpy(), shift)
                block <<= shift
                block |= np.arange(at, at + n, dtype=np.uint64)
                at += n
                yield block

    def _scan(self, total: int) -> np.ndarray:
        """Every word in one array (a small folder): 8 bytes per event."""
        words = np.empty(total, dtype=np.uint64)
        at = 0
        for block in self._batches():
            words[at : at + block.size] = block
            at += block.size
        return words

    def _path(self, partition: int) -> Path:
        if self._dir is None:
            msg = "this job index was closed: its spilled partitions are gone"
            raise RuntimeError(msg)
        return self._dir / f"{partition:05d}.u64"

    def _spill(self, total: int, n_partitions: int) -> None:
        """Append each batch's words to its partition's file, then sort each file."""
        top = np.uint64(64 - self.partition_bits)
        bounds = np.arange(n_partitions + 1, dtype=np.uint64)
        files = [open(self._path(p), "wb") for p in range(n_partitions)]  # noqa: SIM115
        try:
            for block in self._batches():
                block.sort()  # partitions are then runs of it
                cuts = np.searchsorted(block >> top, bounds[1:-1], side="left")
                for p, run in enumerate(np.split(block, cuts)):
                    if run.size:
                        files[p].write(run.tobytes())
                        self.partition_sizes[p] += run.size
        finally:
            for f in files:
                f.close()
        # Each partition sorted on its own (its runs are sorted: a stable sort merges them).
        for p in range(n_partitions):
            words = np.fromfile(self._path(p), dtype=np.uint64)
            words.sort(kind="stable")
            words.tofile(self._path(p))
            del words

    def close(self) -> None:
        """Remove the spilled partitions and close the parts (also done when collected)."""
        self._found = None
        self._close_files()
        if self._cleanup is not None:
            self._cleanup()
            self._dir = self._cleanup = None

    @property
    def n_events(self) -> int:
        """Events indexed."""
        return int(self.offsets[-1])

    @property
    def nbytes(self) -> int:
        """Bytes the index holds."""
        found = sum(int(a.nbytes) for a in self._found) if self._found is not None else 0
        return int(self.words.nbytes) + found + sum(int(g.nbytes) for g in self.group_starts)

    def _keys(self, job_ids: pl.Series) -> np.ndarray:
        """The distinct hash keys of ``job_ids`` (high bits of the hash), sorted."""
        # No `unique` of the ids first: equal ids hash alike, and _distinct below keeps
        # each key once whatever the repeats (hashing the strings twice cost more).
        hashed = job_ids.drop_nulls().hash(seed=HASH_SEED).to_numpy()
        shift = np.uint64(self.row_bits)
        # Distinct ids can share a key (their hashes' high bits: over a ten-million-event
        # folder, about one slice of 50,000 ids in two): each key is searched once, or its
        # events would come back twice. Sorted, the searches stay near each other in memory.
        keys = (np.asarray(hashed, dtype=np.uint64) >> shift) << shift
        keys.sort()
        return _distinct(keys)

    def _search(self, words: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """The words of ``words`` (sorted) whose key is one of ``keys`` (sorted), sorted."""
        lo = np.searchsorted(words, keys, side="left")
        hi = np.searchsorted(words, keys | self._mask, side="right")
        counts = hi - lo
        n = int(counts.sum())
        if n == 0:
            return np.zeros(0, dtype=np.uint64)
        starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
        return words[starts + np.arange(n)]

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        """The words of ``keys`` (sorted, distinct), sorted: read partition by partition."""
        if not self.spilled:
            return self._search(self.words, keys)
        top = np.uint64(64 - self.partition_bits)
        of = keys >> top
        cuts = np.searchsorted(of, np.arange(1, self.partition_sizes.size, dtype=np.uint64))
        buffer = np.empty(int(self.partition_sizes.max()), dtype=np.uint64)
        found: list[np.ndarray] = []
        for p, part_keys in enumerate(np.split(keys, cuts)):
            size = int(self.partition_sizes[p])
            if not part_keys.size or not size:
                continue
            words = buffer[:size]
            with open(self._path(p), "rb") as f:
                f.readinto(words.data.cast("B"))
            found.append(self._search(words, part_keys))
        del buffer
        return np.concatenate(found) if found else np.zeros(0, dtype=np.uint64)

    def prefetch(self, job_ids: pl.Series) -> None:
        """Look ``job_ids`` up now: later lookups of any of them are answered from this.

        For a spilled index, which reads every partition per lookup: a caller about to
        look up many subsets of some ids (a chunk, slice by slice) reads the partitions
        once. What is kept is each found event's key and position (16 bytes an event).
        Replaces the previous prefetch; ids outside it are looked up as usual.
        """
        if not self.spilled:
            return
        self._found = None
        keys = self._keys(job_ids)
        self._found = (keys, self._lookup(keys))

    def positions(self, job_ids: pl.Series) -> np.ndarray:
        """Global positions (sorted) of the events whose job id hashes like one of ``job_ids``."""
        if self.n_events == 0 or job_ids.len() == 0:
            return np.zeros(0, dtype=np.int64)
        keys = self._keys(job_ids)
        if self._found is not None and _within(keys, self._found[0]):
            # Its words are sorted (by key, then position): searched like a partition.
            found = self._search(self._found[1], keys)
        else:
            found = self._lookup(keys)
        return np.sort((found & self._mask).astype(np.int64))

    def events(self, job_ids: pl.Series, columns: Sequence[str]) -> pl.DataFrame:
        """The events of ``job_ids`` (``columns`` of them), in folder order.

        Columns a part lacks (written by an older version) come back as nulls; the caller
        conforms types. Rows are those whose ``job_id`` is one of ``job_ids`` exactly.
        Values are as the parts store them: ``raw`` in the folder's format, which the
        caller reads (:meth:`StateStore.restored <batchata_df.state.StateStore.restored>`).
        """
        wanted = list(dict.fromkeys(["job_id", *columns]))
        found = self.positions(job_ids)
        frames: list[pl.DataFrame] = []
        part_of = np.searchsorted(self.offsets, found, side="right") - 1
        for part in _distinct(part_of):  # sorted, as the positions are
            local = found[part_of == part] - self.offsets[part]  # sorted
            present = [c for c in wanted if c in self.columns[part]]
            absent = [pl.lit(None).alias(c) for c in wanted if c not in self.columns[part]]
            # One window of row groups at a time, taking its rows at once: what is held is
            # one window of the columns asked for, plus the rows found.
            for start, stop in self._windows(int(part), local):
                lo, hi = np.searchsorted(local, [start, stop], side="left")
                frame = _take(self._read(int(part), start, stop, present), local[lo:hi] - start)
                frames.append(frame.with_columns(absent).select(wanted))
        if not frames:
            return pl.DataFrame({c: [] for c in wanted})
        events = pl.concat(frames, how="vertical_relaxed")
        return events.filter(pl.col("job_id").is_in(job_ids.implode())).select(list(columns))

    def _windows(self, part: int, local: np.ndarray) -> list[tuple[int, int]]:
        """Row ranges of ``part`` to read for its rows ``local`` (sorted).

        Whole row groups, neighbours merged while a range stays within
        :data:`READ_WINDOW_ROWS` rows.
        """
        starts = self.group_starts[part]
        windows: list[tuple[int, int]] = []
        for group in _distinct(np.searchsorted(starts, local, side="right") - 1):
            lo, hi = int(starts[group]), int(starts[group + 1])
            if windows and windows[-1][1] == lo and hi - windows[-1][0] <= READ_WINDOW_ROWS:
                windows[-1] = (windows[-1][0], hi)
            else:
                windows.append((lo, hi))
        return windows

    def _read(self, part: int, start: int, stop: int, columns: list[str]) -> pl.DataFrame:
        """Rows ``start`` to ``stop`` of ``part`` (whole row groups), ``columns`` of them.

        Polars' reader, the slice pushed into the scan (only those row groups are read):
        for the same rows it took a third of the CPU of pyarrow's ``read_row_groups`` and
        the conversion of its table (``benchmarks/PROFILE.md``, ninth pass).
        """
        scan = pl.scan_parquet(self.parts[part], glob=False).select(columns)
        try:
            return scan.slice(start, stop - start).collect()
        except FileNotFoundError:
            # Compacted away since the index was built (a read-only caller, such as a dry
            # run, beside a run that ended): the handle opened then still reads it.
            import pyarrow.parquet as pq

            handle = self._files[part]
            handle.seek(0)
            table = pq.ParquetFile(handle).read(columns=columns)
            return pl.DataFrame(pl.from_arrow(table)).slice(start, stop - start)


def _take(frame: pl.DataFrame, rows: np.ndarray) -> pl.DataFrame:
    """The rows ``rows`` (sorted, distinct positions) of ``frame``, in that order.

    A window's rows asked for are mostly one run (a batch's events were written
    together): then a slice, which copies nothing; otherwise a mask, which keeps the same
    rows in the same order as gathering them (the positions are sorted and distinct) for
    a seventh of the CPU (a 50,000-of-65,536-row take of the job events' 22 columns:
    1.2 against 8.4 ms; ``benchmarks/PROFILE.md``, eleventh pass).

    Examples
    --------
    >>> frame = pl.DataFrame({"x": [10, 11, 12, 13, 14]})
    >>> _take(frame, np.array([1, 2, 3]))["x"].to_list()
    [11, 12, 13]
    >>> _take(frame, np.array([0, 3, 4]))["x"].to_list()
    [10, 13, 14]
    """
    if not rows.size:
        return frame.clear()
    first, last = int(rows[0]), int(rows[-1])
    if last - first + 1 == rows.size:  # one run: sorted and distinct, so contiguous
        return frame.slice(first, rows.size)
    keep = np.zeros(frame.height, dtype=bool)
    keep[rows] = True
    return frame.filter(pl.Series(keep))


def _close_all(files: list[BinaryIO]) -> None:
    for handle in files:
        handle.close()


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values of ``values`` (sorted), in order.

    ``np.unique`` without its sort: numpy 2.4's took 38 ms for 200,000 ``uint64`` where this
    takes 0.1 ms on sorted ones (1.5 ms with the sort), and the index gave it 4 s of a
    ten-million-job sink pass (``benchmarks/PROFILE.md``, thirtieth pass).

    Examples
    --------
    >>> _distinct(np.array([1, 1, 2, 5, 5, 5, 7])).tolist()
    [1, 2, 5, 7]
    >>> _distinct(np.array([], dtype=np.int64)).tolist()
    []
    """
    if values.size < 2:
        return values
    first = np.empty(values.size, dtype=bool)
    first[0] = True
    np.not_equal(values[1:], values[:-1], out=first[1:])
    return values[first]


def _within(keys: np.ndarray, known: np.ndarray) -> bool:
    """Whether every one of ``keys`` is in ``known`` (both sorted)."""
    if not keys.size:
        return True
    if not known.size:
        return False
    at = np.minimum(np.searchsorted(known, keys), known.size - 1)
    return bool((known[at] == keys).all())
