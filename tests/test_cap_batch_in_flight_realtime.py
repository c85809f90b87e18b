"""A realtime call holds the worst case of the folder's batches still in flight.

``max_cost_usd`` counts everything in flight (README). A batch an earlier call left
running (``wait=False``) may still bill up to its rows' worst case; a ``mode="realtime"``
(or ``mode="auto"`` realtime phase) call on the same state folder must hold that, not only
what is already billed, or the batch's bill lands on top of the realtime spend and the
folder ends past the cap. Judged by what the emulator billed (each row's usage priced by
:func:`batchata_df.emulator.pricing.billed_usd`) and by how many requests were sent.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from batchata_df import batch_llm
from batchata_df.emulator.pricing import billed_usd

CAP = 0.0008
PROMPT = (
    "Please write one short, warm and friendly greeting for the person named {t}, in plain "
    "English, without any emoji, lists or headings, and in no more than ten words so that "
    "it fits on a single line of a small printed card."
)
KW = {"prompt": PROMPT, "model": "gpt-4.1-mini", "params": {"max_tokens": 20}}


def fr(n: int) -> pl.DataFrame:
    return pl.DataFrame({"t": [f"row {i}" for i in range(n)]})


def billed(rows: pl.DataFrame) -> float:
    """What the provider billed for ``rows``: their usage at the emulator's prices."""
    total = 0.0
    for r in rows.filter(pl.col("_input_tokens") > 0).iter_rows(named=True):
        usd = billed_usd("openai", "gpt-4.1-mini", input_tokens=r["_input_tokens"],
                         output_tokens=r["_output_tokens"], mode=r["_mode"])  # fmt: skip
        assert r["_cost_usd"] == pytest.approx(usd)
        total += usd
    return total


def test_realtime_holds_a_running_batch_worst_case_under_the_cap(emu, tmp_path: Path) -> None:
    emu.configure(latency=30.0)
    state = tmp_path / "s"
    worst = {  # each row's worst case (the same prompt length for all), per mode
        m: fr(1).pipe(batch_llm, mode=m, dry_run=True, progress=False, **KW)["_est_cost_usd"][0]
        for m in ("batch", "realtime")
    }
    fr(40).pipe(batch_llm, wait=False, state=state, max_cost_usd=CAP, **KW)
    # The cap lets only part of the 40 rows go in the batch (the rest wait: wait=False).
    in_batch = sum(e["path"].endswith("/batches") for e in emu.log() if e["method"] == "POST")
    assert in_batch == 1
    held = int(CAP / worst["batch"] + 1e-9) * worst["batch"]  # what batch mode holds
    second = fr(80).pipe(batch_llm, mode="realtime", state=state, max_cost_usd=CAP, **KW)
    # The batch may still bill its worst case: the realtime call sends only what fits
    # beside it (here nothing: the batch holds nearly all of the cap).
    sent = sum(1 for e in emu.billing() if e["mode"] == "realtime")
    assert sent == int((second["_mode"] == "realtime").sum())
    assert held + sent * worst["realtime"] <= CAP + 1e-12
    assert sent == int((CAP - held) / worst["realtime"] + 1e-9)
    emu.advance(40.0)
    out = fr(80).pipe(batch_llm, mode="batch", state=state, max_cost_usd=CAP, **KW)
    assert int((out["_mode"] == "batch").sum()) == int(CAP / worst["batch"] + 1e-9)
    assert len(emu.billing()) == int((out["_input_tokens"] > 0).sum())
    assert billed(out) <= CAP + 1e-12
    assert out["_cost_usd"].fill_null(0.0).sum() <= CAP + 1e-12
