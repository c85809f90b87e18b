"""What one streamed call sends, and what it leaves in the state folder.

``wait=False``: each call fills every free slot, reading chunks as needed.

A scheduler that calls ``batch_llm(..., wait=False)`` every few hours must not lose a
cycle: when a call's polls free slots, the rows of later chunks go into them in the same
call, as the in-memory path sends what fits (reviewer's finding: the second call sent one
batch with three slots free and rows left, so the run needed an extra call).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm


class Item(BaseModel):
    label: str


KW: dict[str, object] = {"schema": Item, "model": "gpt-4.1-mini", "prompt": "Rate: {text}"}


def creates(emu) -> int:
    return sum(
        1 for e in emu.log() if e["method"] == "POST" and e["path"] == "/openai/v1/batches"
    )


def test_each_no_wait_call_fills_the_slots_its_polls_free_from_later_chunks(
    emu, tmp_path: Path
) -> None:
    # 200 rows in chunks of 50, 20 per batch: 3 batches a chunk (20, 20, 10), 12 in all.
    frame = pl.DataFrame({"i": range(200), "text": [f"row {i}" for i in range(200)]})
    kw = {"sink": tmp_path / "out.parquet", "state": tmp_path / "st", "chunk_rows": 50,
          "items_per_batch": 20, "max_parallel_batches": 4, "wait": False, **KW}
    emu.configure(latency=3600.0)

    sent = []
    for _ in range(4):
        before = creates(emu)
        out = batch_llm(frame.lazy(), **kw).collect()  # type: ignore[arg-type]
        sent.append(creates(emu) - before)
        emu.advance(3600)  # everything in flight ends before the next call
    # Each call collects the 4 batches of the call before and sends 4 more while rows
    # are left: 4, 4, 4, then nothing (before the fix: 4, 2, 3, 3).
    assert sent == [4, 4, 4, 0]
    billed = Counter(e["custom_id"] for e in emu.billing())
    assert len(billed) == 200 and set(billed.values()) == {1}
    assert out.get_column("i").to_list() == list(range(200))
    assert out.get_column("_status").to_list() == ["completed"] * 200


def test_an_interrupted_call_leaves_no_spilled_chunks(
    emu, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second Ctrl+C raises KeyboardInterrupt through the call: its spill folder (the
    chunks read so far) goes with it, as when the call ends (reviewer's finding: an empty
    ``.stream-*`` folder stayed until the next call)."""
    from batchata_df.state import StateStore

    def interrupted(self: StateStore) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(StateStore, "compact", interrupted)  # after sending, before the sink
    frame = pl.DataFrame({"text": [f"row {i}" for i in range(30)]})
    with pytest.raises(KeyboardInterrupt):
        batch_llm(frame.lazy(), sink=tmp_path / "out.parquet", state=tmp_path / "st",
                  chunk_rows=10, **KW)  # type: ignore[arg-type]
    assert len(emu.billing()) == 30  # it got as far as sending
    left = sorted(p.name for p in (tmp_path / "st").iterdir())
    assert "jobs" in left  # the folder itself stays, with what was paid for
    assert not [n for n in left if n.startswith(".stream-")], left
