"""An index of a checkpoint folder's job events by job id, built once per call.

A streaming run looks its jobs up one chunk at a time: which are settled (before sending)
and their answers (to write the sink). Filtering the whole folder's events by each chunk's
ids scans every ``job_id`` of the folder per chunk: O(folder x chunks), which made resuming
a finished ten-million-row folder cost as much CPU as running it. :class:`JobIndex` scans
the ``job_id`` column once and keeps, per event, one 64-bit word: the high bits a hash of
its job id, the low bits its position in the folder (part, row). Sorted, it answers "where
are the events of these ids" by binary search; each part is then read only in the row
groups that hold them (``pyarrow.parquet.ParquetFile.read_row_groups``), and the rows are
checked against the ids themselves, so a hash collision costs a row read, never a wrong
row. Memory: 8 bytes per event (160 MB for 20 million events: ten million jobs, each
``assigned`` then ``completed``), plus each part's row-group boundaries.

The index sees the parts present when it was built; parts written later are not in it
(a streaming run builds one before sending, whose chunks' jobs no later part of the call
can hold, see :class:`~batchata_df.engine.source.Feeder`, and one after compacting,
before writing the sink).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

__all__ = ["HASH_SEED", "JobIndex"]

HASH_SEED = 0x5EED
"""Seed of the job-id hash (Polars' ``Series.hash``; stable within one process)."""


class JobIndex:
    """Where each job's events are in a folder's job parts (see the module).

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

    def __init__(self, parts: Sequence[Path]) -> None:
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        self.parts = list(parts)
        self._files: list[Any] = [pq.ParquetFile(p) for p in self.parts]
        sizes = [f.metadata.num_rows for f in self._files]
        self.offsets = np.cumsum([0, *sizes], dtype=np.int64)
        """Global position of each part's first event (and the total, last)."""
        self.group_starts = [
            np.cumsum(
                [0, *(f.metadata.row_group(g).num_rows for g in range(f.num_row_groups))],
                dtype=np.int64,
            )
            for f in self._files
        ]
        self.columns = [set(f.schema_arrow.names) for f in self._files]
        total = int(self.offsets[-1])
        self.row_bits = max(self.min_row_bits, total.bit_length())
        self._mask = np.uint64((1 << self.row_bits) - 1)
        if total == 0:
            self.words = np.zeros(0, dtype=np.uint64)
            return
        # One scan of the job ids, hashed a million at a time into one array: what is held
        # is 8 bytes per event, plus a million ids while they are hashed.
        words = np.empty(total, dtype=np.uint64)
        shift = np.uint64(self.row_bits)
        for part, path in enumerate(self.parts):
            at = int(self.offsets[part])
            scan = pl.scan_parquet(
                path, schema={"job_id": pl.String()}, missing_columns="insert",
                extra_columns="ignore",
            ).select(pl.col("job_id").hash(seed=HASH_SEED))
            for batch in scan.collect_batches(chunk_size=1 << 20, maintain_order=True):
                n = batch.height
                block = words[at : at + n]
                np.right_shift(batch.to_series().to_numpy(), shift, out=block)
                block <<= shift
                block |= np.arange(at, at + n, dtype=np.uint64)
                at += n
        words.sort()
        self.words = words

    @property
    def n_events(self) -> int:
        """Events indexed."""
        return int(self.offsets[-1])

    @property
    def nbytes(self) -> int:
        """Bytes the index holds."""
        return int(self.words.nbytes) + sum(int(g.nbytes) for g in self.group_starts)

    def positions(self, job_ids: pl.Series) -> np.ndarray:
        """Global positions (sorted) of the events whose job id hashes like one of ``job_ids``."""
        if self.words.size == 0 or job_ids.len() == 0:
            return np.zeros(0, dtype=np.int64)
        hashed = job_ids.drop_nulls().unique().hash(seed=HASH_SEED).to_numpy()
        shift = np.uint64(self.row_bits)
        keys = (np.asarray(hashed, dtype=np.uint64) >> shift) << shift
        # Distinct ids can share a key (their hashes' high bits: over a ten-million-event
        # folder, about one slice of 50,000 ids in two): each key is searched once, or its
        # events would come back twice. Sorted, the searches stay near each other in memory.
        keys = np.unique(keys)
        lo = np.searchsorted(self.words, keys, side="left")
        hi = np.searchsorted(self.words, keys | self._mask, side="right")
        counts = hi - lo
        n = int(counts.sum())
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
        found = self.words[starts + np.arange(n)] & self._mask
        return np.sort(found.astype(np.int64))

    def events(self, job_ids: pl.Series, columns: Sequence[str]) -> pl.DataFrame:
        """The events of ``job_ids`` (``columns`` of them), in folder order.

        Columns a part lacks (written by an older version) come back as nulls; the caller
        conforms types. Rows are those whose ``job_id`` is one of ``job_ids`` exactly.
        """
        wanted = list(dict.fromkeys(["job_id", *columns]))
        found = self.positions(job_ids)
        frames: list[pl.DataFrame] = []
        part_of = np.searchsorted(self.offsets, found, side="right") - 1
        for part in np.unique(part_of):
            local = found[part_of == part] - self.offsets[part]
            starts = self.group_starts[part]
            group_of = np.searchsorted(starts, local, side="right") - 1
            present = [c for c in wanted if c in self.columns[part]]
            absent = [pl.lit(None).alias(c) for c in wanted if c not in self.columns[part]]
            # One row group at a time, taking its rows at once: what is held is one group
            # of the columns asked for, plus the rows found.
            for group in np.unique(group_of):
                table = self._files[part].read_row_groups([int(group)], columns=present)
                frame = pl.from_arrow(table.take(local[group_of == group] - starts[group]))
                del table
                assert isinstance(frame, pl.DataFrame)
                frames.append(frame.with_columns(absent).select(wanted))
        if not frames:
            return pl.DataFrame({c: [] for c in wanted})
        events = pl.concat(frames, how="vertical_relaxed")
        return events.filter(pl.col("job_id").is_in(job_ids.implode())).select(list(columns))
