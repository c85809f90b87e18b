"""A cap counts realtime requests lost in flight by an uncapped call at their worst case.

A realtime run without a cap records no worst case for its requests. SIGKILL it while
requests are in flight: the provider answers (and bills) them, the folder never learns
what they cost, and the next call ends them ``failed`` "lost: ...". A capped call on the
same folder must count them at the worst case it holds for a new request (input estimate
plus ``max_tokens`` of output at the realtime price), computed from its own rows, or refuse
before sending when it cannot. The emulator's billing ledger is the judge: what it billed
in total, every request priced at what the emulator bills for it, stays within the cap.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import polars as pl
import pytest
from lost_requests import KW, TEXTS, billed_usd, kill_mid_flight

from batchata_df import batch_llm
from batchata_df.errors import CapSerialisedWarning, StateError


def _kill_mid_flight(emu, tmp_path: Path, state: Path, procs, cap: float | None = None) -> int:
    return kill_mid_flight(emu, tmp_path, state, procs, cap=cap, min_in_flight=4)


def _billed_usd(ledger: list[dict[str, object]]) -> float:
    return billed_usd(ledger, TEXTS)


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_a_capped_call_counts_requests_lost_by_an_uncapped_run_at_their_worst_case(
    emu, tmp_path, procs, mode
) -> None:
    state = tmp_path / "state"
    _kill_mid_flight(emu, tmp_path, state, procs)
    ledger = emu.billing()  # the lost requests included: the provider finished them
    # Room for a few rows once the lost requests count at their worst case (~$0.034 each,
    # billed ~$0.02): counted at $0 they would leave room for what they were billed (~$0.16) more.
    cap = round(_billed_usd(ledger) + 0.25, 6)
    emu.reset()
    with warnings.catch_warnings():  # a batch of few rows the cap serialises: said apart
        warnings.simplefilter("ignore", CapSerialisedWarning)
        out = batch_llm(
            pl.DataFrame({"text": TEXTS}), state=str(state), mode=mode,
            **({"concurrency": 8} if mode == "realtime" else {}),  # batch: refused
            max_cost_usd=cap, **KW,  # type: ignore[arg-type]
        )  # fmt: skip
    ledger += emu.billing()
    lost = out.filter(pl.col("_error").str.starts_with("lost:").fill_null(False))
    assert lost.height >= 4
    assert len(emu.billing()) >= 1  # the cap left room for some rows
    emu.reset()
    assert _billed_usd(ledger) <= cap


def test_a_lost_request_not_among_the_rows_refuses_a_capped_call_before_sending(
    emu, tmp_path, procs
) -> None:
    state = tmp_path / "state"
    _kill_mid_flight(emu, tmp_path, state, procs)
    emu.reset()
    with pytest.raises(StateError, match=r"lost in flight.*Include the rows.*Nothing was sent"):
        batch_llm(
            pl.DataFrame({"text": TEXTS[:2]}), state=str(state), mode="realtime",
            max_cost_usd=10.0, **KW,  # type: ignore[arg-type]
        )  # fmt: skip
    assert emu.billing() == []
    # A streamed call cannot read its rows first: refused as well, naming batch_llm.
    src = tmp_path / "in.parquet"
    pl.DataFrame({"text": TEXTS}).write_parquet(src)
    with pytest.raises(StateError, match=r"streamed call cannot compute it.*batch_llm"):
        batch_llm(
            pl.scan_parquet(src), sink=tmp_path / "out.parquet", state=str(state),
            max_cost_usd=10.0, **KW,  # type: ignore[arg-type]
        )  # fmt: skip
    assert emu.billing() == []
    # Without a cap nothing needs the worst case: the call runs.
    out = batch_llm(
        pl.DataFrame({"text": TEXTS[:2]}), state=str(state), mode="realtime", **KW,  # type: ignore[arg-type]
    )  # fmt: skip
    assert out.height == 2


def test_a_streamed_capped_call_counts_the_recorded_worst_case_of_lost_requests(
    emu, tmp_path, procs
) -> None:
    # A capped realtime run records each request's worst case before sending it; a
    # streamed call (batch mode, the rows read as it goes) counts those of the lost ones.
    state = tmp_path / "state"
    _kill_mid_flight(emu, tmp_path, state, procs, cap=100.0)
    ledger = emu.billing()
    cap = round(_billed_usd(ledger) + 0.25, 6)
    emu.reset()
    src = tmp_path / "in.parquet"
    pl.DataFrame({"text": TEXTS}).write_parquet(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CapSerialisedWarning)
        batch_llm(
            pl.scan_parquet(src), sink=tmp_path / "out.parquet", state=str(state),
            max_cost_usd=cap, **KW,  # type: ignore[arg-type]
        )  # fmt: skip
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out.filter(pl.col("_error").str.starts_with("lost:").fill_null(False)).height >= 4
    ledger += emu.billing()
    assert len(emu.billing()) >= 1
    emu.reset()
    assert _billed_usd(ledger) <= cap
