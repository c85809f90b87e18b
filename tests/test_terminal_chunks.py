"""A run's terminal events are kept in one chunk per batch, whatever the download's blocks.

Results that come back in the order the requests went are put beside the batch's ids
(``outcomes_to_events``, no join): the decoded columns are in one chunk per block of the
download (pyarrow's JSON reader, ``ARROW_BLOCK_BYTES``), the ids and literals in one. They
are put in one chunk there, so the run's terminal events (``written_states``: the bill,
the validation's decoded answers, the output frame) are never rechunked all at once
(``benchmarks/PROFILE.md``, fifteenth pass). These tests run Gemini, whose emulator
returns results in request order, through the official SDK, and compare the values with
a run read in one block.
"""

from __future__ import annotations

from typing import Literal

import polars as pl
from polars.testing import assert_frame_equal
from pydantic import BaseModel

from batchata_df import batch_llm
from batchata_df.providers import base
from batchata_df.state import StateStore

MODEL = "gemini-2.5-flash"


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    rating: int
    summary: str


def _frame(n: int) -> pl.DataFrame:
    return pl.DataFrame({"id": list(range(n)), "text": [f"review number {i}" for i in range(n)]})


def _run(monkeypatch, tmp_path, name: str, block: int):
    """batch_llm over 300 rows (two batches), downloads read in ``block``-byte blocks."""
    monkeypatch.setattr(base, "ARROW_BLOCK_BYTES", block)
    decoded_chunks: list[int] = []
    read = base._read_jsonl_arrow

    def reading(data, *args, **kwargs):  # type: ignore[no-untyped-def]
        frame = read(data, *args, **kwargs)
        assert frame is not None  # pyarrow read it (not the Polars path)
        decoded_chunks.append(frame.get_column(frame.columns[0]).n_chunks())
        return frame

    monkeypatch.setattr(base, "_read_jsonl_arrow", reading)
    ended: list[pl.DataFrame] = []
    written = StateStore.written_states

    def keeping(self, job_ids):  # type: ignore[no-untyped-def]
        known = written(self, job_ids)
        assert known is not None  # the run's own events give the final states
        ended.append(known[0])
        return known

    monkeypatch.setattr(StateStore, "written_states", keeping)
    out = _frame(300).pipe(
        batch_llm, schema=Review, model=MODEL, prompt="{text}", state=tmp_path / name,
        items_per_batch=150,
    )  # fmt: skip
    return out, ended[0], decoded_chunks


def test_terminal_events_of_results_read_in_many_blocks_are_in_one_chunk_per_batch(
    emu, monkeypatch, tmp_path
) -> None:
    out, ended, chunks = _run(monkeypatch, tmp_path, "small", 4096)
    assert len(chunks) == 2 and min(chunks) > 5  # each download came in several blocks
    assert (out["_status"] == "completed").all() and out.height == 300
    # Every column of the run's terminal events: one chunk per batch, as the ids (Polars
    # may put a column of nulls in one), never one per block of the downloads.
    layout = {name: ended.get_column(name).n_chunks() for name in ended.columns}
    assert layout["job_id"] == 2 and max(layout.values()) == 2, layout
    # The same values as a run whose downloads were each read in one block.
    whole, ended_whole, chunks_whole = _run(monkeypatch, tmp_path, "whole", 64 << 20)
    assert chunks_whole == [1, 1]
    assert_frame_equal(out.drop("_batch_id"), whole.drop("_batch_id"))  # the provider names batches
    same = [c for c in ended.columns if c not in ("seq", "ts", "provider_batch_id", "batch_key")]
    assert_frame_equal(ended.select(same), ended_whole.select(same))
