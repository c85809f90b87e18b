"""A realtime run killed with requests in flight, for the lost-request tests.

``tests/test_lost_spend_cap.py`` and ``tests/test_lost_retried_cap.py`` both start the same
realtime call in a child process, wait until requests are in flight at the emulator, then
SIGKILL it: the provider finishes and bills the requests the child never heard back from.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import polars as pl

from batchata_df import batch_llm
from batchata_df.emulator.answers import request_key

MODEL = "gpt-4.1-mini"
PRICES = {MODEL: (100.0, 400.0)}  # batch USD per million tokens; realtime is twice that
N = 40
TEXTS = [f"lost row {i:03d}" for i in range(N)]
KW: dict[str, object] = dict(
    model=MODEL, prompt="{text}", params={"max_tokens": 40}, progress=False, prices=PRICES,
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


def kill_mid_flight(
    emu: Any, tmp_path: Path, state: Path, procs: list[Any], *,
    cap: float | None = None, min_in_flight: int = 4,
) -> int:  # fmt: skip
    """Run the realtime call in a child; SIGKILL it with requests in flight (then billed).

    Waits until the emulator has served 8 requests and holds at least ``min_in_flight``
    more, kills the child, then waits for the emulator to finish those. Returns how many
    requests were in flight at the kill.
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
        if stats["served"] >= 8 and stats["in_flight"] >= min_in_flight:
            break
        assert child.poll() is None, log.read_text()
        time.sleep(0.02)
    else:
        raise AssertionError(f"the realtime run never got going: {emu.realtime_stats()}")
    in_flight = int(emu.realtime_stats()["in_flight"])
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    give_up = time.monotonic() + 60
    while emu.realtime_stats()["in_flight"] and time.monotonic() < give_up:
        time.sleep(0.02)
    assert emu.realtime_stats()["served"] < N
    emu.configure(realtime_latency=0.0)
    return in_flight


def billed_usd(ledger: list[dict[str, object]], texts: list[str]) -> float:
    """What ``ledger`` (``emu.billing()``) bills, each request at the price of its answer.

    The emulator is deterministic: a fresh realtime run of ``texts`` (no state folder; run
    after the ledger was read) gets the usage each billed request was billed for. A batch
    request is billed the same usage at the batch price: half the realtime one here.
    """
    cost = _realtime_costs(tuple(texts))
    return sum(
        cost[str(e["request"])] * (1.0 if e["mode"] == "realtime" else 0.5) for e in ledger
    )


_COSTS: dict[tuple[str, ...], dict[str, float]] = {}


def _realtime_costs(texts: tuple[str, ...]) -> dict[str, float]:
    """Each of ``texts``' request keys -> the realtime cost of its answer, from a fresh
    realtime run (no state folder) of ``texts``. The emulator is deterministic, so the run
    is made once per process for the same texts (it bills the emulator: made after the
    caller read the ledger)."""
    if texts not in _COSTS:
        ref = batch_llm(pl.DataFrame({"text": list(texts)}), mode="realtime", **KW)  # type: ignore[arg-type]
        _COSTS[texts] = {
            request_key("openai", MODEL, t): float(c)
            for t, c in zip(ref["text"], ref["_cost_usd"], strict=True)
        }
    return _COSTS[texts]
