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

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import polars as pl
import pytest

from batchata_df import batch_llm
from batchata_df.emulator.answers import request_key
from batchata_df.errors import CapSerialisedWarning, StateError

MODEL = "gpt-4.1-mini"
PRICES = {MODEL: (100.0, 400.0)}  # batch USD per million tokens; realtime is twice that
N = 40
TEXTS = [f"lost row {i:03d}" for i in range(N)]
KW: dict[str, object] = dict(
    model=MODEL, prompt="{text}", params={"max_tokens": 40}, progress=False,
    prices=PRICES,
)  # fmt: skip

SCRIPT = textwrap.dedent(
    """
    import sys
    import polars as pl
    from batchata_df import batch_llm

    df = pl.DataFrame({"text": [f"lost row {i:03d}" for i in range(int(sys.argv[2]))]})
    batch_llm(df, model="gpt-4.1-mini", prompt="{text}", params={"max_tokens": 40},
              state=sys.argv[1], progress=False, mode="realtime", concurrency=8,
              prices={"gpt-4.1-mini": (100.0, 400.0)},
              max_cost_usd=float(sys.argv[3]) if len(sys.argv) > 3 else None)
    """
)


def _kill_mid_flight(emu, tmp_path: Path, state: Path, procs, cap: float | None = None) -> int:
    """Run the realtime call (uncapped) in a child, SIGKILL it with requests in flight.

    Returns how many requests were in flight (the provider finishes and bills them).
    """
    emu.configure(realtime_latency=0.5)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    log = tmp_path / "child.log"
    with open(log, "wb") as out:
        child = subprocess.Popen(
            [sys.executable, str(script), str(state), str(N), *([str(cap)] if cap else [])],
            env={**os.environ, **emu.env()}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    procs.append(child)
    give_up = time.monotonic() + 120
    while time.monotonic() < give_up:
        stats = emu.realtime_stats()
        if stats["served"] >= 8 and stats["in_flight"] >= 4:
            break
        assert child.poll() is None, log.read_text()
        time.sleep(0.02)
    else:
        raise AssertionError(f"the realtime run never got going: {emu.realtime_stats()}")
    in_flight = emu.realtime_stats()["in_flight"]
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    give_up = time.monotonic() + 60
    while emu.realtime_stats()["in_flight"] and time.monotonic() < give_up:
        time.sleep(0.02)
    assert emu.realtime_stats()["served"] < N
    return int(in_flight)


def _billed_usd(ledger: list[dict[str, object]]) -> float:
    """What ``ledger`` (``emu.billing()``) bills, each request at the price of its answer.

    The emulator is deterministic: a fresh realtime run of every row (no state folder; run
    after the ledger was read) gets the usage each billed request was billed for. A batch
    request is billed the same usage at the batch price: half the realtime one here.
    """
    ref = batch_llm(pl.DataFrame({"text": TEXTS}), mode="realtime", **KW)  # type: ignore[arg-type]
    cost = {
        request_key("openai", MODEL, t): float(c)
        for t, c in zip(ref["text"], ref["_cost_usd"], strict=True)
    }
    return sum(
        cost[str(e["request"])] * (1.0 if e["mode"] == "realtime" else 0.5) for e in ledger
    )


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
            pl.DataFrame({"text": TEXTS}), state=str(state), mode=mode, concurrency=8,
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
