"""A run that reads only the decoded answers does not hold their text until it ends.

``StateStore.record_jobs(text=False)`` keeps the terminal events a call writes without
``answer`` and ``raw``; ``written_states`` then gives them as nulls beside the decoded
answers (``DECODED``), and gives ``None`` (read the folder) where some completed answers
came without them. ``batch_llm`` asks for this unless ``keep_raw`` or the answers are not
decoded; its output must be the one it gives from the folder.
"""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import BaseModel

import batchata_df
from batchata_df import batch_llm
from batchata_df.state import DECODED, StateStore

FP = {"model": "m"}
IDS = ["a", "b", "c"]
ASSIGNED = pl.DataFrame({"job_id": IDS, "status": "assigned"})
STRUCT = pl.Struct({"x": pl.Int64})


def _ended(decoded: bool) -> pl.DataFrame:
    frame = pl.DataFrame({
        "job_id": IDS, "status": ["completed", "completed", "failed"],
        "answer": ['{"x":1}', '{"x":2}', None], "raw": [None, '{"x": 2}', "not json"],
        "error": [None, None, "schema_validation: bad"], "input_tokens": [3, 4, 5],
    })  # fmt: skip
    if decoded:
        values = pl.Series(DECODED, [{"x": 1}, {"x": 2}, None], dtype=STRUCT)
        frame = frame.with_columns(values)
    return frame


def test_without_text_the_states_are_the_snapshot_s_but_for_the_answers_text(tmp_path):
    store = StateStore(tmp_path / "s", FP)
    assert store.record_jobs(text=False)
    store.append_jobs(ASSIGNED)
    store.append_jobs(_ended(decoded=True))
    held = store._written
    assert held is not None and len(held.terminal) == 1
    assert {"answer", "raw"}.isdisjoint(held.terminal[0].columns)  # not held meanwhile
    known = store.written_states(pl.Series("job_id", IDS))
    assert known is not None
    latest, billed = StateStore(tmp_path / "s", FP, readonly=True).snapshot()
    assert latest["answer"].to_list() == ['{"x":1}', '{"x":2}', None]  # on disk, whole
    assert latest["raw"].to_list() == ['{"x":1}', '{"x": 2}', "not json"]
    assert known[0][DECODED].to_list() == [{"x": 1}, {"x": 2}, None]
    assert known[0]["answer"].null_count() == known[0]["raw"].null_count() == 3
    blank = pl.lit(None, dtype=pl.String)
    assert_frame_equal(
        known[0].drop(DECODED), latest.with_columns(blank.alias("answer"), blank.alias("raw"))
    )
    assert_frame_equal(known[1], billed)


def test_with_text_the_written_states_keep_it(tmp_path):
    store = StateStore(tmp_path / "s", FP)
    assert store.record_jobs()
    store.append_jobs(ASSIGNED)
    store.append_jobs(_ended(decoded=True))
    known = store.written_states(pl.Series("job_id", IDS))
    assert known is not None
    assert known[0]["answer"].to_list() == ['{"x":1}', '{"x":2}', None]
    assert known[0]["raw"].to_list() == ['{"x":1}', '{"x": 2}', "not json"]


def test_without_text_completed_answers_not_decoded_send_the_reader_to_the_folder(tmp_path):
    store = StateStore(tmp_path / "s", FP)
    assert store.record_jobs(text=False)
    store.append_jobs(ASSIGNED)
    store.append_jobs(_ended(decoded=False))
    assert store.written_states(pl.Series("job_id", IDS)) is None


def test_without_text_a_part_with_no_completed_answer_needs_none_decoded(tmp_path):
    store = StateStore(tmp_path / "s", FP)
    assert store.record_jobs(text=False)
    store.append_jobs(ASSIGNED)
    store.append_jobs(_ended(decoded=True).head(2))
    store.append_jobs(pl.DataFrame({"job_id": ["c"], "status": ["failed"], "error": ["x"]}))
    known = store.written_states(pl.Series("job_id", IDS))
    assert known is not None
    assert known[0][DECODED].to_list() == [{"x": 1}, {"x": 2}, None]
    assert known[0]["status"].to_list() == ["completed", "completed", "failed"]


class Item(BaseModel):
    label: str
    score: int


@pytest.mark.parametrize("keep_raw", [False, True])
def test_batch_llm_output_equals_the_one_read_from_the_folder(emu, tmp_path, monkeypatch,
                                                              keep_raw):
    asked: list[bool] = []
    record = StateStore.record_jobs

    def spy(self, *, text=True):  # type: ignore[no-untyped-def]
        asked.append(text)
        return record(self, text=text)

    monkeypatch.setattr(StateStore, "record_jobs", spy)
    frame = pl.DataFrame({"text": [f"item {i}" for i in range(40)]})
    kw = {"schema": Item, "model": "gpt-4.1-mini", "prompt": "Rate: {text}",
          "state": str(tmp_path / "s"), "progress": False, "keep_raw": keep_raw}
    first = frame.pipe(batch_llm, **kw)
    assert asked == [keep_raw]  # the text is held only for _raw
    assert first["_status"].to_list() == ["completed"] * 40
    assert first["label"].null_count() == 0 and first["score"].null_count() == 0
    # The same call again: nothing is sent, the states come from the folder.
    again = frame.pipe(batch_llm, **kw)
    assert len(emu.billing()) == 40
    assert_frame_equal(first, again)
    if keep_raw:
        stored = batchata_df.sql("select job_id, raw from jobs", str(tmp_path / "s"))
        by_id = dict(zip(stored["job_id"], stored["raw"], strict=True))
        assert all(by_id.values())
        assert first["_raw"].to_list() == [by_id[j] for j in first["_job_id"]]
