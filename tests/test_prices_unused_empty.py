"""``prices=`` on a call with no rows: the call's model is still the one it names.

A pipeline calls ``batch_llm`` with the same ``model=`` and ``prices=`` every day; on a
day its frame has no rows, the typo check of ``prices=`` (7bb46d0) found no model in the
rows and refused the price of the very model the call names ("this call's models:
none"): the empty call, which sends nothing, used to return an empty frame. With a
literal ``model=`` its model is known without rows (a typo is still refused); with a
per-row model expression no row names one, so no key can be told a typo.

Through the public API against the emulator, with the official SDKs.
"""

from __future__ import annotations

import polars as pl
import pytest

from batchata_df import batch_llm
from batchata_df.errors import PriceError

MODEL, TYPO = "gpt-5.4-mini", "gpt-5.4-mnii"
EMPTY = pl.DataFrame({"text": [], "m": []}, schema={"text": pl.String, "m": pl.String})
KW = {"prompt": "Summarise: {text}", "progress": False, "params": {"max_tokens": 50}}
HOW = [
    ("batch", {}),
    ("capped", {"max_cost_usd": 1.0}),
    ("dry run", {"dry_run": True}),
    ("realtime", {"mode": "realtime"}),
    ("streamed", {"sink": "out.parquet"}),
]


def _rows(out: pl.DataFrame | pl.LazyFrame | None) -> int:
    if out is None:  # sink=: the result is in the file
        return pl.read_parquet("out.parquet").height
    return (out.collect() if isinstance(out, pl.LazyFrame) else out).height


@pytest.mark.parametrize(("how", "extra"), HOW, ids=[h for h, _ in HOW])
@pytest.mark.parametrize("model", [MODEL, f"openai:{MODEL}", pl.col("m")], ids=str)
def test_an_empty_frame_takes_the_price_of_its_model(emu, how, extra, model):
    out = batch_llm(EMPTY, model=model, prices={MODEL: (0.1, 0.4)}, **KW, **extra)  # type: ignore[arg-type]
    assert _rows(out) == 0
    assert emu.log() == [] and emu.billing() == []


@pytest.mark.parametrize(("how", "extra"), HOW, ids=[h for h, _ in HOW])
def test_an_empty_frame_still_refuses_a_typo_of_its_model(emu, how, extra):
    with pytest.raises(PriceError, match=rf"prices\['{TYPO}'\].*Did you mean '{MODEL}'"):
        batch_llm(EMPTY, model=MODEL, prices={TYPO: (0.1, 0.4)}, **KW, **extra)  # type: ignore[arg-type]
    assert emu.log() == [] and emu.billing() == []
