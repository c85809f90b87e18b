"""Checkpoint format version 2: a ``completed`` event's ``raw`` equal to its ``answer`` is
stored once (``raw`` null on disk, meaning "the answer"), and every reader gives it back.

Version 1 folders are read as written (a ``completed`` event with ``raw`` null there was
written before ``raw`` existed: it stays null), appended to as version 1 and never
upgraded. The Parquet files are read directly (pyarrow) to see what is on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

import batchata_df
from batchata_df import StateError, batch_llm, reparse
from batchata_df.state import (
    BATCH_EVENTS,
    JOB_EVENTS,
    PART_FORMAT_KEY,
    StateStore,
    table_parts,
)

FP = {"model": "m"}


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    rating: int


class FixedReview(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"] | None = None
    rating: int


def on_disk(folder: Path, table: str = "jobs") -> pl.DataFrame:
    """Every event of ``table`` as the Parquet files hold it (pyarrow, no batchata_df).

    With every column of the table's schema, in its order: a version 2 part leaves out
    the columns null in every one of its rows (tests/test_format_v2_null_columns.py).
    """
    frames = [pl.from_arrow(pq.read_table(p)) for p in table_parts(folder / table)]
    events = pl.concat(frames, how="diagonal_relaxed")  # type: ignore[arg-type]
    schema = JOB_EVENTS if table == "jobs" else BATCH_EVENTS
    return events.select(
        pl.col(c) if c in events.columns else pl.lit(None, dtype=t).alias(c)
        for c, t in schema.items()
    ).sort("seq")


def part_formats(folder: Path) -> set[str | None]:
    """The ``batchata_format`` key of every part of the folder (``None``: absent)."""
    found: set[str | None] = set()
    for table in ("jobs", "batches"):
        for part in table_parts(folder / table):
            meta = pq.read_metadata(part).metadata or {}
            value = meta.get(PART_FORMAT_KEY.encode())
            found.add(value.decode() if value is not None else None)
    return found


def manifest_version(folder: Path) -> object:
    return json.loads((folder / "manifest.json").read_text())["format_version"]


def as_version_1(folder: Path, *, drop_raw_of: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Make ``folder`` what version 1 wrote: every ``raw`` stored as is, no format key in
    the parts, ``format_version`` 1 in the manifest. The completed events of the jobs in
    ``drop_raw_of`` get ``raw`` null, as parts written before ``raw`` existed hold them."""
    for table in ("jobs", "batches"):
        for part in table_parts(folder / table):
            data = pq.read_table(part)
            meta = {
                k: v for k, v in (pq.read_metadata(part).metadata or {}).items()
                if k not in (PART_FORMAT_KEY.encode(), b"ARROW:schema")
            }  # fmt: skip
            frame = pl.from_arrow(data)
            assert isinstance(frame, pl.DataFrame)
            if table == "jobs":
                done = pl.col("status") == "completed"
                frame = frame.with_columns(
                    pl.when(done & pl.col("job_id").is_in(list(drop_raw_of)))
                    .then(pl.lit(None, dtype=pl.String))
                    .when(done)
                    .then(pl.coalesce("raw", "answer"))
                    .otherwise(pl.col("raw"))
                    .alias("raw")
                )
            pq.write_table(frame.to_arrow().replace_schema_metadata(meta), part)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 1
    (folder / "manifest.json").write_text(json.dumps(manifest))


# -- the store ------------------------------------------------------------------------------


EVENTS = pl.DataFrame(
    {
        "job_id": ["a", "b", "c", "d"],
        "status": ["completed", "completed", "failed", "cancelled"],
        "answer": ['{"x":1}', '{"x":2}', None, None],
        # b's text is not its canonical answer (spaces): kept; c's did not validate.
        "raw": ['{"x":1}', '{"x": 2}', '{"y":3}', None],
    }
)
RAW = ['{"x":1}', '{"x": 2}', '{"y":3}', None]


def every_reader(folder: Path) -> dict[str, list[str | None]]:
    """``raw`` of jobs a-d as each reader of the folder gives it."""
    store = StateStore(folder, FP, readonly=True)
    ids = pl.Series("job_id", ["a", "b", "c", "d"])

    def by_id(frame: pl.DataFrame) -> list[str | None]:
        latest = frame.filter(pl.col("job_id").is_in(ids.implode())).unique(
            "job_id", keep="last", maintain_order=True
        )
        raw = dict(zip(latest["job_id"].to_list(), latest["raw"].to_list(), strict=True))
        return [raw.get(j) for j in ids.to_list()]

    index = store.job_index()
    try:
        indexed = store.snapshot(ids, index)[0]
    finally:
        index.close()
    return {
        "job_events": by_id(store.job_events()),
        "job_state": by_id(store.job_state()),
        "snapshot": by_id(store.snapshot()[0]),
        "snapshot_ids": by_id(store.snapshot(ids)[0]),
        "snapshot_index": by_id(indexed),
        "sql_jobs": by_id(batchata_df.sql("select job_id, raw from jobs", folder)),
        "sql_events": by_id(
            batchata_df.sql("select job_id, raw from job_events order by seq", folder)
        ),
    }


def test_a_new_folder_is_version_2_and_stores_an_answer_s_raw_once(tmp_path):
    folder = tmp_path / "s"
    store = StateStore(folder, FP)
    assert store.manifest.format_version == 2 and manifest_version(folder) == 2
    store.append_jobs(pl.DataFrame({"job_id": ["a", "b", "c", "d"], "status": "assigned"}))
    store.append_jobs(EVENTS)
    store.append_batch(batch_key="k", status="intent")
    disk = on_disk(folder).filter(pl.col("status") != "assigned")
    assert disk["raw"].to_list() == [None, '{"x": 2}', '{"y":3}', None]
    assert disk["answer"].to_list() == EVENTS["answer"].to_list()
    assert part_formats(folder) == {"2"}
    for reader, raw in every_reader(folder).items():
        assert raw == RAW, reader


def test_written_states_give_the_raw_texts(tmp_path):
    store = StateStore(tmp_path / "s", FP)
    assert store.record_jobs()
    store.append_jobs(pl.DataFrame({"job_id": ["a", "b", "c", "d"], "status": "assigned"}))
    store.append_jobs(EVENTS)
    known = store.written_states(pl.Series("job_id", ["a", "b", "c", "d"]))
    assert known is not None
    assert known[0]["raw"].to_list() == RAW


def test_compaction_keeps_the_format(tmp_path):
    folder = tmp_path / "s"
    store = StateStore(folder, FP)
    store.append_jobs(pl.DataFrame({"job_id": ["a", "b", "c", "d"], "status": "assigned"}))
    store.append_jobs(EVENTS)
    store.append_batch(batch_key="k", status="intent")
    store.append_batch(batch_key="k", status="submitted")
    assert store.compact() == 4
    assert len(table_parts(folder / "jobs")) == 1
    assert part_formats(folder) == {"2"}
    assert on_disk(folder)["raw"].to_list()[4:] == [None, '{"x": 2}', '{"y":3}', None]
    for reader, raw in every_reader(folder).items():
        assert raw == RAW, reader


def test_a_version_1_folder_is_read_as_written_and_appended_as_version_1(tmp_path):
    folder = tmp_path / "s"
    store = StateStore(folder, FP)
    store.append_jobs(pl.DataFrame({"job_id": ["a", "b", "c", "d"], "status": "assigned"}))
    store.append_jobs(EVENTS)
    # a's raw was written before raw existed: null, and must stay so (not its answer).
    as_version_1(folder, drop_raw_of={"a"})
    assert part_formats(folder) == {None}
    old = [None, *RAW[1:]]
    for reader, raw in every_reader(folder).items():
        assert raw == old, reader

    again = StateStore(folder, FP)
    assert again.manifest.format_version == 1
    again.append_jobs(
        pl.DataFrame({"job_id": ["e"], "status": "completed", "answer": "1", "raw": "1"})
    )
    assert manifest_version(folder) == 1  # not upgraded
    assert on_disk(folder).filter(job_id="e")["raw"].to_list() == ["1"]  # stored as is
    assert part_formats(folder) == {None, "1"}
    assert StateStore(folder, FP).job_state().filter(job_id="e")["raw"].to_list() == ["1"]
    for reader, raw in every_reader(folder).items():
        assert raw == old, reader


@pytest.mark.parametrize("version", [1, 2])
def test_dropping_jobs_keeps_the_folder_s_format(tmp_path, version):
    folder = tmp_path / "s"
    store = StateStore(folder, FP)
    store.append_jobs(pl.DataFrame({"job_id": ["a", "b", "c", "d"], "status": "assigned"}))
    store.append_jobs(EVENTS)
    store.append_jobs(pl.DataFrame({"job_id": ["z"], "status": "completed", "answer": "1",
                                    "raw": "1"}))  # fmt: skip
    expected = RAW
    if version == 1:
        as_version_1(folder, drop_raw_of={"a"})
        expected = [None, *RAW[1:]]
    before = on_disk(folder).filter(pl.col("job_id") != "z")
    assert StateStore(folder, FP).drop_jobs(pl.Series(["z"])) == 1
    assert manifest_version(folder) == version
    assert part_formats(folder) == {str(version)}
    assert on_disk(folder).equals(before)  # the rest as stored: raw not read back
    for reader, raw in every_reader(folder).items():
        assert raw == expected, reader


@pytest.mark.parametrize("version", [3, 0, "2", True, None])
def test_other_format_versions_are_refused(tmp_path, version):
    folder = tmp_path / "s"
    StateStore(folder, FP)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = version
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StateError) as caught:
        StateStore(folder, FP)
    assert str(caught.value) == (
        f"checkpoint folder {str(folder)!r} has format version {version!r}; this batchata-df "
        "reads versions 1 and 2. Use a new state folder, or the batchata-df version that "
        "wrote it"
    )


def test_sql_over_version_1_and_2_folders_gives_each_its_raw(tmp_path):
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    for folder in (v1, v2):
        store = StateStore(folder, FP)
        store.append_jobs(EVENTS)
    as_version_1(v1, drop_raw_of={"a"})
    query = "select run, job_id, raw from {} order by run, job_id"
    for view in ("jobs", "job_events"):
        got = batchata_df.sql(query.format(view), [v1, v2])
        assert got["run"].to_list() == [str(v1)] * 4 + [str(v2)] * 4
        assert got["raw"].to_list() == [None, *RAW[1:], *RAW], view
    runs = batchata_df.sql("select run, format_version from runs order by run", [v1, v2])
    assert runs["format_version"].to_list() == [1, 2]


@pytest.mark.parametrize("version", [1, 2])
def test_repair_rebuilds_a_lost_manifest_with_the_folder_s_version(tmp_path, version):
    folder = tmp_path / "s"
    store = StateStore(folder, FP)
    store.append_jobs(EVENTS)
    store.append_batch(batch_key="k", status="intent")
    expected = RAW
    if version == 1:
        as_version_1(folder, drop_raw_of={"a"})
        StateStore(folder, FP).append_jobs(pl.DataFrame({"job_id": ["x"], "status": "assigned"}))
        assert part_formats(folder) == {None, "1"}
        expected = [None, *RAW[1:]]
    (folder / "manifest.json").unlink()
    plan = batchata_df.repair(folder)
    assert plan.manifest is not None and plan.manifest.format_version == version
    batchata_df.repair(folder, apply=True)
    assert manifest_version(folder) == version
    for reader, raw in every_reader(folder).items():
        assert raw == expected, reader


@pytest.mark.parametrize(("recorded", "seen"), [(b"3", "2 and 3"), (b"1", "1 and 2")])
def test_repair_refuses_parts_of_a_version_it_does_not_read_or_of_several(tmp_path, recorded, seen):
    folder = tmp_path / "s"
    store = StateStore(folder, FP)
    store.append_jobs(EVENTS)
    store.append_jobs(EVENTS)
    part = table_parts(folder / "jobs")[0]  # the other stays version 2
    data = pq.read_table(part)
    meta = {**(pq.read_metadata(part).metadata or {}), PART_FORMAT_KEY.encode(): recorded}
    del meta[b"ARROW:schema"]
    pq.write_table(data.replace_schema_metadata(meta), part)
    (folder / "manifest.json").unlink()
    plan = batchata_df.repair(folder)
    assert plan.pending == [
        f"the event parts record format version {seen} (batchata_format); this batchata-df "
        "reads versions 1 and 2, one per folder: the manifest is not rebuilt (use the "
        "batchata-df version that wrote the parts)"
    ]
    with pytest.raises(StateError, match="cannot repair yet"):
        batchata_df.repair(folder, apply=True)
    assert not (folder / "manifest.json").exists()


# -- runs against the emulator -------------------------------------------------------------


TEXTS = ["fine", "[[emulator:invalid]] no sentiment", "also fine", "[[emulator:refusal]] no"]


def provider_posts(emu) -> int:
    return len([e for e in emu.log()
                if not e["path"].startswith("/_emulator") and e["method"] == "POST"])  # fmt: skip


def test_a_run_gives_raw_back_from_a_version_2_folder(emu, tmp_path):
    state = tmp_path / "s"
    df = pl.DataFrame({"text": TEXTS})
    args = {"model": "gpt-4.1-mini", "prompt": "{text}", "state": state, "keep_raw": True}
    first = df.pipe(batch_llm, schema=Review, **args)
    assert first["_status"].to_list() == ["completed", "failed", "completed", "failed"]
    answers = [
        Review(sentiment=s, rating=r).model_dump_json() if s else None
        for s, r in zip(first["sentiment"], first["rating"], strict=True)
    ]
    raw = first["_raw"].to_list()
    assert [raw[0], raw[2]] == [answers[0], answers[2]]
    assert raw[1] and "sentiment" not in json.loads(raw[1]) and raw[3]
    disk = on_disk(state).filter(pl.col("status") != "assigned").sort("job_id")
    ids = first["_job_id"].to_list()
    by_id = dict(zip(disk["job_id"].to_list(), disk["raw"].to_list(), strict=True))
    assert [by_id[j] for j in ids] == [None, raw[1], None, raw[3]]  # answers stored once
    assert part_formats(state) == {"2"}

    posts = provider_posts(emu)
    again = df.pipe(batch_llm, schema=Review, **args)  # resumed: read from the folder
    assert provider_posts(emu) == posts
    assert again["_raw"].to_list() == raw
    jobs = batchata_df.sql("select job_id, raw from jobs", state)
    got = dict(zip(jobs["job_id"].to_list(), jobs["raw"].to_list(), strict=True))
    assert [got[j] for j in ids] == raw

    # reparse reads raw back (the answers too) and stores what it validated.
    fixed = df.pipe(reparse, schema=FixedReview, **args)
    assert provider_posts(emu) == posts
    assert fixed["_status"].to_list() == ["completed", "completed", "completed", "failed"]
    assert fixed["_raw"].to_list() == raw
    assert fixed["rating"][1] == json.loads(raw[1])["rating"]
    latest = on_disk(state).unique("job_id", keep="last").sort("job_id")
    stored = dict(zip(latest["job_id"].to_list(), latest["raw"].to_list(), strict=True))
    # The fixed row's raw (no sentiment) differs from its new answer: kept on disk.
    assert stored[ids[1]] == raw[1] and fixed["sentiment"][1] is None


@pytest.mark.parametrize("version", [1, 2])
def test_a_streamed_run_resumes_a_folder_of_either_version(emu, tmp_path, version):
    state, sink = tmp_path / "s", tmp_path / "out.parquet"
    source = tmp_path / "in.parquet"
    texts = [f"row {i}" for i in range(30)]
    pl.DataFrame({"text": texts[:20]}).write_parquet(source)
    args = {"schema": Review, "model": "gpt-4.1-mini", "prompt": "{text}", "state": state,
            "keep_raw": True, "chunk_rows": 7, "items_per_batch": 5}  # fmt: skip
    first = batch_llm(pl.scan_parquet(source), sink=sink, **args).collect()  # type: ignore[arg-type]
    assert first["_status"].to_list() == ["completed"] * 20
    answers = [Review(sentiment=s, rating=r).model_dump_json()
               for s, r in zip(first["sentiment"], first["rating"], strict=True)]  # fmt: skip
    assert first["_raw"].to_list() == answers
    assert on_disk(state).filter(status="completed")["raw"].null_count() == 20
    old_ids = set(first["_job_id"].to_list())
    if version == 1:
        as_version_1(state, drop_raw_of=set(first["_job_id"].to_list()[:3]))

    pl.DataFrame({"text": texts}).write_parquet(source)
    out = batch_llm(pl.scan_parquet(source), sink=sink, **args).collect()  # type: ignore[arg-type]
    assert out["_status"].to_list() == ["completed"] * 30
    assert out["_job_id"].to_list()[:20] == first["_job_id"].to_list()
    new_answers = [Review(sentiment=s, rating=r).model_dump_json()
                   for s, r in zip(out["sentiment"], out["rating"], strict=True)]  # fmt: skip
    expected = [None] * 3 + new_answers[3:] if version == 1 else new_answers
    assert out["_raw"].to_list() == expected
    assert manifest_version(state) == version
    new = on_disk(state).filter(
        (pl.col("status") == "completed") & ~pl.col("job_id").is_in(list(old_ids))
    )
    assert new.height == 10
    # Version 1 keeps writing raw; version 2 stores it once.
    assert new["raw"].to_list() == (new["answer"].to_list() if version == 1 else [None] * 10)
    # (The run compacts the folder as it ends: merged parts record the folder's version.)
    assert part_formats(state) - {None} == {str(version)}
    # The folder's summary for sql holds the values read (its rows, not the events, are
    # what the view reads: raw is not left to a status that is the latest known one).
    summary = pl.from_arrow(pq.read_table(state / "summary" / "jobs.parquet"))
    assert isinstance(summary, pl.DataFrame) and summary.height == 30
    stored = dict(zip(summary["job_id"].to_list(), summary["raw"].to_list(), strict=True))
    assert [stored[j] for j in out["_job_id"].to_list()] == expected
    jobs = batchata_df.sql("select job_id, raw from jobs", state)  # from the summary
    got = dict(zip(jobs["job_id"].to_list(), jobs["raw"].to_list(), strict=True))
    assert [got[j] for j in out["_job_id"].to_list()] == expected


def test_only_a_completed_event_s_raw_is_stored_once(tmp_path):
    # A failed or cancelled event whose raw equals its answer keeps raw on disk: readers
    # give a null raw back as the answer only for a completed event.
    folder = tmp_path / "s"
    store = StateStore(folder, FP)
    store.append_jobs(pl.DataFrame({"job_id": ["a", "b", "c"], "status": "assigned"}))
    store.append_jobs(
        pl.DataFrame(
            {
                "job_id": ["a", "b", "c"],
                "status": ["failed", "cancelled", "completed"],
                "answer": ['{"x":1}', '{"x":2}', '{"x":3}'],
                "raw": ['{"x":1}', '{"x":2}', '{"x":3}'],
            }
        )
    )
    disk = on_disk(folder).filter(pl.col("status") != "assigned")
    assert disk["raw"].to_list() == ['{"x":1}', '{"x":2}', None]
    events = (
        StateStore(folder, FP, readonly=True).job_events().filter(pl.col("status") != "assigned")
    )
    assert events.sort("job_id")["raw"].to_list() == ['{"x":1}', '{"x":2}', '{"x":3}']
    got = batchata_df.sql("select job_id, raw from jobs order by job_id", folder)
    assert got["raw"].to_list() == ['{"x":1}', '{"x":2}', '{"x":3}']
