"""The per-call index of a folder's job events by job id (:mod:`batchata_df.jobindex`).

Checked against the plain filtered scan it replaces, on real Parquet parts: several parts
and row groups, jobs retried in another batch, a part written by an older version without
the newer columns, ids absent from the folder, and hash collisions (every event a
candidate) that must never return another job's rows.
"""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from batchata_df import jobindex as jobindex_module
from batchata_df import state as state_module
from batchata_df.jobindex import JobIndex
from batchata_df.state import JOB_EVENTS, STATUS_COLUMNS, StateStore, table_parts


@pytest.fixture(params=["held", "spilled"])
def spilled(request, monkeypatch) -> bool:
    """Each test with the index held in memory, and spilled to partition files."""
    if request.param == "spilled":
        # 186 events in partitions of about 16 or fewer: 16 partitions.
        monkeypatch.setattr(jobindex_module, "INDEX_PARTITION_WORDS", 16)
    return request.param == "spilled"


def _folder(tmp_path, n: int = 90) -> StateStore:
    store = StateStore(tmp_path / "st", {"model": "m"})
    ids = [f"{i:024x}" for i in range(n)]
    # A part an older version wrote: no reasoning_tokens, citations, raw, response, mode.
    old = pl.DataFrame({
        "seq": [1, 2], "job_id": [ids[0], ids[1]], "status": ["assigned", "assigned"],
        "batch_key": ["b0", "b0"],
    })
    old.write_parquet(tmp_path / "st" / "jobs" / "part-00000000000000000001-aaaaaa.parquet")
    for start in range(0, n, 30):
        chunk = ids[start : start + 30]
        store.append_jobs(pl.DataFrame({"job_id": chunk, "batch_key": f"b{start}",
                                        "status": "assigned"}))
        store.append_jobs(pl.DataFrame({
            "job_id": chunk, "batch_key": f"b{start}", "status": "completed",
            "answer": [f'{{"n": {i}}}' for i in range(start, start + len(chunk))],
            "cost_usd": 0.5, "reasoning_tokens": 3,
        }))
    # Retried in another batch: two billed attempts.
    store.append_jobs(pl.DataFrame({"job_id": ids[5:9], "batch_key": "retry",
                                    "status": "completed", "cost_usd": 0.25}))
    return StateStore(tmp_path / "st", {"model": "m"})


@pytest.mark.parametrize("compacted", [False, True])
def test_snapshot_and_status_through_the_index_equal_the_filtered_scan(
    tmp_path, monkeypatch, compacted, spilled
):
    monkeypatch.setattr(state_module, "COMPACT_ROW_GROUP_ROWS", 16)
    store = _folder(tmp_path)
    if compacted:
        assert store.compact() > 1
    index = store.job_index()
    assert index.n_events == 2 + 180 + 4
    assert index.spilled is spilled
    everyone = [f"{i:024x}" for i in range(90)]
    rng = random.Random(7)
    for _ in range(5):
        ids = pl.Series("job_id", [*rng.sample(everyone, 25), "not-in-the-folder"])
        latest, billed = store.snapshot(ids, index)
        want_latest, want_billed = store.snapshot(ids)
        assert latest.height == 25
        assert_frame_equal(latest, want_latest)
        assert_frame_equal(billed.sort("job_id"), want_billed.sort("job_id"))
        assert_frame_equal(store.latest_status(ids, index), store.latest_status(ids))
    retried = store.snapshot(pl.Series([everyone[6]]), index)[1]
    assert retried.row(0, named=True)["cost_usd"] == 0.75  # both attempts billed
    assert retried.row(0, named=True)["attempts"] == 2


def test_a_lookup_reads_only_the_row_groups_of_its_ids(tmp_path, monkeypatch, spilled):
    monkeypatch.setattr(state_module, "COMPACT_ROW_GROUP_ROWS", 16)
    store = _folder(tmp_path)
    store.compact()
    index = store.job_index()
    groups = [len(g) - 1 for g in index.group_starts]
    assert sum(groups) >= 12  # 186 events in groups of 16

    read: list[tuple[int, int, int]] = []
    original = JobIndex._read

    def spy(self, part, start, stop, columns):  # type: ignore[no-untyped-def]
        frame = original(self, part, start, stop, columns)
        assert frame.height == stop - start
        read.append((part, start, stop))
        return frame

    monkeypatch.setattr(JobIndex, "_read", spy)
    ids = pl.Series([f"{i:024x}" for i in range(60, 64)])  # 4 jobs of one batch
    events = index.events(ids, ["job_id", "status", "answer"])
    assert events.height == 8
    # Exactly the row groups holding their events (their assigned events and their
    # results), each once: no group between them, none twice.
    holding = set()
    for at in index.positions(ids):
        part = int(np.searchsorted(index.offsets, at, side="right") - 1)
        starts = index.group_starts[part]
        group = int(np.searchsorted(starts, at - index.offsets[part], side="right") - 1)
        holding.add((part, int(starts[group]), int(starts[group + 1])))
    assert 2 <= len(holding) <= 4
    groups_read = [
        (part, int(lo), int(hi))
        for part, start, stop in read
        for lo, hi in zip(index.group_starts[part][:-1], index.group_starts[part][1:], strict=True)
        if start <= lo and hi <= stop
    ]
    assert sorted(groups_read) == sorted(holding)
    # A whole batch: its 30 assigned events, then its 30 results, span neighbouring groups,
    # read together (one read of Polars' reader, not one per group).
    read.clear()
    batch = pl.Series([f"{i:024x}" for i in range(60, 90)])
    assert index.events(batch, ["job_id", "status"]).height == 60
    assert len(read) == 1 and read[0][2] - read[0][1] >= 60
    # ... up to READ_WINDOW_ROWS rows at once (what a lookup holds of the folder).
    monkeypatch.setattr(jobindex_module, "READ_WINDOW_ROWS", 32)
    read.clear()
    assert index.events(batch, ["job_id", "status"]).height == 60
    assert len(read) >= 2 and all(stop - start <= 32 for _, start, stop in read)


def test_hash_collisions_never_return_another_jobs_events(tmp_path, monkeypatch, spilled):
    store = _folder(tmp_path)
    index = store.job_index()
    # Every event a candidate (as if every id hashed alike): the ids themselves decide.
    monkeypatch.setattr(
        JobIndex, "positions", lambda self, ids: pl.int_range(0, self.n_events, eager=True)
        .cast(pl.Int64).to_numpy()
    )
    ids = pl.Series([f"{i:024x}" for i in (3, 40)])
    events = index.events(ids, list(STATUS_COLUMNS))
    assert sorted(set(events["job_id"].to_list())) == ids.sort().to_list()
    assert events.height == 4


class _TwoHashBits(JobIndex):
    """Only two bits of each id's hash kept: every few ids share a key."""

    min_row_bits = 62


def test_ids_sharing_a_hash_key_return_each_event_once(tmp_path, spilled):
    # Over 20 million events a slice of 50,000 ids held two sharing a key about one time
    # in two: their events came back twice (and the folder's summary was not written).
    _folder(tmp_path)
    index = _TwoHashBits(table_parts(tmp_path / "st" / "jobs"))
    assert index.row_bits == 62
    ids = pl.Series([f"{i:024x}" for i in range(10, 30)])  # 20 ids, 4 keys: they share
    events = index.events(ids, ["job_id", "seq", "status"])
    assert events.height == 40  # assigned and completed, once each
    assert events["seq"].n_unique() == 40
    assert index.positions(ids).size == np.unique(index.positions(ids)).size


def test_an_empty_folder_and_an_empty_lookup(tmp_path, spilled):
    store = StateStore(tmp_path / "st", {"model": "m"})
    index = store.job_index()
    assert index.n_events == 0
    latest, billed = store.snapshot(pl.Series(["a"]), index)
    assert latest.height == 0 and latest.schema == JOB_EVENTS
    assert billed.height == 0
    assert table_parts(tmp_path / "st" / "jobs") == []
    store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": "assigned"}))
    index = store.job_index()
    assert store.latest_status(pl.Series([], dtype=pl.String), index).height == 0
    assert store.latest_status(pl.Series(["a"]), index)["status"].to_list() == ["assigned"]


def test_a_big_folders_index_is_spilled_sorted_partitions_and_answers_like_one_array(
    tmp_path, monkeypatch
):
    store = _folder(tmp_path)
    held = store.job_index()
    assert not held.spilled and held.words.size == 186
    monkeypatch.setattr(jobindex_module, "INDEX_PARTITION_WORDS", 16)

    index = store.job_index()

    assert index.spilled and index.words.size == 0  # nothing per event held
    folder = tmp_path / "st"
    (spill,) = folder.glob(".stream-index-*")  # in the state folder: the next call clears it
    files = sorted(spill.iterdir())
    assert len(files) == index.partition_sizes.size == 16  # 186 / 16 -> 12 -> 16, a power of 2
    words = [np.fromfile(f, dtype=np.uint64) for f in files]
    assert [w.size for w in words] == index.partition_sizes.tolist()
    assert all((np.diff(w.astype(np.float64)) >= 0).all() for w in words)  # each sorted
    assert_frame_equal(pl.Series(np.concatenate(words)).to_frame(),
                       pl.Series(held.words).to_frame())  # together: the held array
    everyone = pl.Series([f"{i:024x}" for i in range(90)])
    rng = random.Random(3)
    for _ in range(5):
        some = pl.Series(rng.sample(everyone.to_list(), 20))
        assert (index.positions(some) == held.positions(some)).all()

    index.close()
    assert not spill.exists()


def test_a_prefetch_answers_its_subsets_without_reading_the_partitions_again(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(jobindex_module, "INDEX_PARTITION_WORDS", 16)
    store = _folder(tmp_path)
    index = store.job_index()
    chunk = pl.Series([f"{i:024x}" for i in range(20, 80)])
    index.prefetch(chunk)
    reads: list[str] = []
    monkeypatch.setattr(JobIndex, "_lookup", lambda self, keys: reads.append("read"))

    for start in range(0, 60, 7):  # slices of the chunk
        some = chunk.slice(start, 7)
        events = index.events(some, ["job_id", "status"])
        assert sorted(set(events["job_id"].to_list())) == some.sort().to_list()
        want = store.latest_status(some)
        assert_frame_equal(store.latest_status(some, index), want)
    assert reads == []  # every slice answered from the prefetch
    with pytest.raises(TypeError):  # an id outside it is looked up (the spy returns None)
        index.positions(pl.Series([f"{5:024x}"]))
    assert reads == ["read"]


def test_an_index_reads_parts_a_writer_compacted_away_after_it_was_built(tmp_path):
    """A read-only caller (a streamed dry run beside a run) keeps an index while the run
    ends and compacts: the parts it points at are gone by name, and are read through the
    handles the index opened (reviewer's finding: FileNotFoundError)."""
    store = StateStore(tmp_path, {"model": "m"})
    for k in range(5):
        store.append_jobs(pl.DataFrame({"job_id": [f"j{k}", "x"], "status": "assigned"}))
    index = StateStore(tmp_path, {"model": "m"}, readonly=True).job_index()
    before = index.events(pl.Series(["x", "j3"]), ["job_id", "status"])
    store.compact()
    assert not set(index.parts) & set(table_parts(tmp_path / "jobs"))  # all gone by name
    after = index.events(pl.Series(["x", "j3"]), ["job_id", "status"])
    assert_frame_equal(after, before)
    assert sorted(after.get_column("job_id").to_list()) == ["j3", "x", "x", "x", "x", "x"]


def test_an_index_keeps_each_parts_row_groups_and_columns_not_its_footer(tmp_path, monkeypatch):
    """Decoded, a footer took ~830 bytes a column chunk: held for each part, the index of a
    ten-million-job folder held 30 MB of them through its sink pass (PROFILE.md, thirtieth
    pass). What it keeps is each part's row groups' first rows, its column names and an open
    file; the events it gives are the filtered scan's."""
    import gc

    import pyarrow.parquet as pq

    monkeypatch.setattr(state_module, "COMPACT_ROW_GROUP_ROWS", 16)
    store = _folder(tmp_path)
    store.compact()
    parts = table_parts(tmp_path / "st" / "jobs")
    index = store.job_index()
    for part, starts, columns in zip(parts, index.group_starts, index.columns, strict=True):
        meta = pq.ParquetFile(part).metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        assert starts.tolist() == np.cumsum([0, *sizes]).tolist()
        assert columns == set(meta.schema.to_arrow_schema().names)
    assert len(index.group_starts[0]) > 5  # several row groups
    # Nothing reachable from the index is a decoded footer or a reader holding one.
    seen, todo = set(), list(vars(index).values())
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type | np.ndarray | str | bytes):
            continue
        seen.add(id(obj))
        assert not isinstance(obj, pq.ParquetFile | pq.FileMetaData | pq.RowGroupMetaData), obj
        if isinstance(obj, list | tuple | dict | set):
            todo.extend(gc.get_referents(obj))
    ids = pl.Series(["0" * 23 + "5", f"{40:024x}"])
    expected = store.job_events().filter(pl.col("job_id").is_in(ids.implode()))
    got = index.events(ids, ["job_id", "status", "batch_key"])
    assert got.to_dicts() == expected.select("job_id", "status", "batch_key").to_dicts()
    assert got.height == 2 + 2 + 1  # 5: assigned, completed, and its retry
    index.close()
    assert all(handle.closed for handle in index._files)
    # One never closed (a dry run's, a call that raised) closes its files when collected.
    files = store.job_index()._files
    gc.collect()
    assert files and all(handle.closed for handle in files)


def test_the_read_window_default_and_its_limit_are_pinned(tmp_path, monkeypatch):
    """READ_WINDOW_ROWS is 65,536 rows (what one read holds of a part: ARCHITECTURE.md and
    the ninth pass of benchmarks/PROFILE.md measured it), and neighbouring row groups are
    read together while the window stays at or under it: a window of exactly the limit is
    one read, one row more is two."""
    assert jobindex_module.READ_WINDOW_ROWS == 1 << 16  # change it on purpose, with numbers
    monkeypatch.setattr(state_module, "COMPACT_ROW_GROUP_ROWS", 16)
    store = StateStore(tmp_path / "st", {"model": "m"})
    ids = [f"{i:024x}" for i in range(64)]
    for start in (0, 32):
        store.append_jobs(pl.DataFrame({"job_id": ids[start : start + 32], "status": "assigned"}))
    store.compact()
    index = store.job_index()
    assert [g.tolist() for g in index.group_starts] == [[0, 16, 32, 48, 64]]

    read: list[tuple[int, int]] = []
    original = JobIndex._read

    def spy(self, part, start, stop, columns):  # type: ignore[no-untyped-def]
        read.append((start, stop))
        return original(self, part, start, stop, columns)

    monkeypatch.setattr(JobIndex, "_read", spy)
    every = pl.Series(ids)
    for limit, windows in (
        (32, [(0, 32), (32, 64)]),  # two groups of 16: exactly the limit, read together
        (31, [(0, 16), (16, 32), (32, 48), (48, 64)]),  # one row over: each group alone
        (47, [(0, 32), (32, 64)]),
        (48, [(0, 48), (48, 64)]),
        (64, [(0, 64)]),
    ):
        monkeypatch.setattr(jobindex_module, "READ_WINDOW_ROWS", limit)
        read.clear()
        events = index.events(every, ["job_id", "status"])
        assert sorted(events["job_id"].to_list()) == ids
        assert read == windows, (limit, read)


@pytest.mark.parametrize("seed", range(40))
def test_a_windows_rows_are_taken_as_a_gather_of_them_takes_them(seed):
    """``_take`` (a slice for one run of rows, a mask otherwise) against a plain gather.

    Rows are what a lookup finds in one window: sorted and distinct, one run (a batch's
    events), several runs, single rows, the first or last rows, none. Caught when broken:
    a run of rows taken one place off or one row short, runs with a gap taken as one, the
    mask keeping other rows.
    """
    rng = np.random.default_rng(seed)
    height = int(rng.integers(1, 300))
    frame = pl.DataFrame({
        "seq": np.arange(height, dtype=np.int64),
        "job_id": [f"{i:024x}" for i in rng.integers(0, 1 << 40, height)],
        "answer": [None if i % 3 else f'{{"k": {i}}}' for i in range(height)],
    })  # fmt: skip
    shape = seed % 4
    if shape == 0:  # one run anywhere (the whole window included)
        lo = int(rng.integers(0, height))
        rows = np.arange(lo, int(rng.integers(lo + 1, height + 1)), dtype=np.int64)
    elif shape == 1:  # a run with one row missing inside (two runs)
        lo = int(rng.integers(0, height))
        rows = np.arange(lo, height, dtype=np.int64)
        if rows.size > 2:
            rows = np.delete(rows, int(rng.integers(1, rows.size - 1)))
    elif shape == 2:  # scattered
        rows = np.flatnonzero(rng.random(height) < rng.random())
    else:  # none, or one row
        rows = rng.integers(0, height, int(rng.integers(0, 2))).astype(np.int64)
    got = jobindex_module._take(frame, rows)
    assert_frame_equal(got, frame[rows] if rows.size else frame.clear())


def test_a_lookup_of_contiguous_and_scattered_events_equals_the_filtered_scan(tmp_path):
    """Through ``events``: a batch's events (one run per window) and scattered ones."""
    store = StateStore(tmp_path / "st", {"model": "m"})
    ids = [f"{i:024x}" for i in range(400)]
    store.append_jobs(pl.DataFrame({"job_id": ids, "status": "assigned", "batch_key": "b"}))
    store.append_jobs(pl.DataFrame({"job_id": ids, "status": "completed", "batch_key": "b",
                                    "answer": [f"a{i}" for i in range(400)]}))  # fmt: skip
    store.compact(target_bytes=1 << 30)
    index = store.job_index()
    events = store.job_events()
    for asked in (ids[100:300], ids[::7], ids[5:6], [*ids[:3], *ids[397:]]):
        some = pl.Series(asked)
        expected = events.filter(pl.col("job_id").is_in(some.implode()))
        # As stored: ``raw`` is read by the store (format 2: a completed event's answer).
        got = store.restored(index.events(some, list(JOB_EVENTS)))
        assert_frame_equal(got.with_columns(pl.col("ts").cast(JOB_EVENTS["ts"])), expected)
