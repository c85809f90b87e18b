"""How a cap prices the answers a state folder holds without a cost (``check_spend_is_priced``).

The folders here are job event parts written as a run writes them (real Parquet files
with the public ``JOB_EVENTS`` schema), each event made up so that every rule changes the
total: realtime answers at the realtime rate, each billed attempt of a retried job once
per batch (its latest terminal event), output-only usage, several unpriced models, and the
same total when a large folder is read in slices of its jobs. Prices are per million
tokens and usage is in millions, so each answer costs its price.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from batchata_df import state as state_module
from batchata_df.errors import PriceError
from batchata_df.state import JOB_EVENTS
from batchata_df.validate import check_spend_is_priced

M = 1_000_000
PRICES = {"gpt-6-terra": (1.0, 2.0), "gpt-6-luna": (3.0, 4.0)}  # batch; realtime is x2


def _event(seq: int, job: str, batch: str | None, status: str, model: str = "gpt-6-terra",
           *, mode: str = "batch", inp: int = 0, out: int = 0,
           cost: float | None = None) -> dict[str, object]:
    return {"seq": seq, "job_id": job, "batch_key": batch, "status": status,
            "provider": "openai", "model": model, "mode": mode, "input_tokens": inp,
            "output_tokens": out, "cached_tokens": 0, "cache_write_tokens": 0,
            "cost_usd": cost}


EVENTS = [
    # $1: a batch answer of gpt-6-terra, stored without a cost
    _event(1, "j1", "b1", "assigned"),
    _event(2, "j1", "b1", "completed", inp=M),
    # $2: a realtime answer (no batch), at the realtime rate (twice the batch one)
    _event(3, "j2", None, "completed", mode="realtime", inp=M),
    # $2 + $1: a job failed with output billed in b1, retried and answered in b2
    _event(4, "j3", "b1", "failed", out=M),
    _event(5, "j3", "b2", "completed", inp=M),
    # $3: another model (prices= overrides what the tables say): its own total is added
    _event(6, "j4", "b1", "completed", "gpt-6-luna", inp=M),
    # $0: its latest terminal event in the batch has a cost (counted by the engine)
    _event(7, "j5", "b1", "failed", inp=M),
    _event(8, "j5", "b1", "completed", inp=M, cost=0.5),
    # $0: priced when collected
    _event(9, "j6", "b2", "completed", inp=M, out=M, cost=0.7),
    # $1: an event after the answer that is not an outcome leaves the answer its latest
    _event(10, "j8", "b3", "completed", inp=M),
    _event(11, "j8", "b3", "assigned"),
]
TOTAL = 1.0 + 2.0 + 3.0 + 3.0 + 1.0


def _folder(tmp_path: Path, events: list[dict[str, object]]) -> Path:
    root = tmp_path / "st"
    (root / "jobs").mkdir(parents=True)
    frame = pl.DataFrame(events, schema={k: JOB_EVENTS[k] for k in events[0]})
    frame = frame.select(
        pl.col(name) if name in frame.columns else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in JOB_EVENTS.items()
    )
    for i, part in enumerate(frame.iter_slices(3)):  # a few parts, as a run leaves
        part.write_parquet(root / "jobs" / f"part-{i + 1:020d}-abc123.parquet")
    return root


def test_each_answer_stored_without_a_cost_is_priced_once_at_its_rate(tmp_path: Path) -> None:
    assert check_spend_is_priced(_folder(tmp_path, EVENTS), PRICES) == pytest.approx(TOTAL)


def test_a_large_folder_read_in_slices_gives_the_same_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read in slices of its jobs (bounded memory), each job in one slice only."""
    monkeypatch.setattr(state_module, "SPENT_SLICE_EVENTS", 3)
    assert check_spend_is_priced(_folder(tmp_path, EVENTS), PRICES) == pytest.approx(TOTAL)


def test_every_model_without_a_price_is_named(tmp_path: Path) -> None:
    events = [*EVENTS, _event(12, "j7", "b2", "completed", "my-finetune", inp=M)]
    with pytest.raises(PriceError) as info:
        check_spend_is_priced(_folder(tmp_path, events), {})
    assert "(5 of gpt-6-terra, 1 of my-finetune:" in str(info.value), info.value
    assert (info.value.model, info.value.stored) == ("gpt-6-terra", 5)
