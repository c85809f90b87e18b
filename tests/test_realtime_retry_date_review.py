"""Review of the realtime retry priced again across a date change (twenty-first pass).

Attacks on ``RealtimeEngine._price_waiting`` / ``_hold`` / ``_send_due`` through the
emulator and the google-genai SDK: several requests refused at once and retried after
gemini-4-argon's price doubled (2026-12-01), a 429 followed by a 5xx on the retry, and
the money each row and the folder report against what the emulator billed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from typing import Any

import polars as pl
import pytest

import batchata_df.engine.realtime as realtime_module
from batchata_df import batch_llm
from batchata_df.engine.clock import FakeClock
from batchata_df.engine.run import ProgressSnapshot
from batchata_df.state import lost_usd, spent_usd

DAY = 86_400.0
MODEL = "gemini-4-argon"  # doubles on 2026-12-01
GENERATE = r":generateContent$"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(realtime_module, "SystemClock", lambda: fake)
    return fake


def _worst(on: Any, day: str, rows: pl.DataFrame, kw: dict[str, Any]) -> float:
    on(day)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = rows.pipe(batch_llm, dry_run=True, mode="realtime", progress=False, **kw)
    worst = plan["_est_cost_usd"].unique().to_list()
    assert len(worst) == 1
    return float(worst[0])


def _flip(clock: FakeClock, on: Any, days: int, after: str, seen: list[ProgressSnapshot]):
    """On the first wait with nothing in flight, move the date ``days`` on (once)."""
    done: list[float] = []

    def hook(now: float) -> None:
        if done:
            return
        done.append(seen[-1].reserved_usd if seen else 0.0)
        clock.advance(days * DAY)
        on(after)

    clock.on_wait.append(hook)
    return done


def _over_two_midnights(
    clock: FakeClock, on: Any, rows: pl.DataFrame, state: str, cap: float, kw: dict[str, Any]
) -> tuple[pl.DataFrame, list[ProgressSnapshot], list[float]]:
    """A capped realtime call begun on 2026-11-29 whose first wait moves it to 12-01: its
    frame, its progress snapshots, and what was held at that wait (:func:`_flip`)."""
    on("2026-11-29")
    seen: list[ProgressSnapshot] = []
    held = _flip(clock, on, 2, "2026-12-01", seen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = rows.pipe(batch_llm, state=state, max_cost_usd=cap, mode="realtime",
                        progress=seen.append, **kw)  # fmt: skip
    return out, seen, held


def _last_running(seen: list[ProgressSnapshot]) -> ProgressSnapshot:
    """The last snapshot before "done" (which shows 0 held whatever is held)."""
    return [s for s in seen if s.phase == "running"][-1]


def _bills(emu: Any, once: bool = True) -> list[float]:
    bills = emu.billing(usd=True)
    keys = [b["request"] for b in bills]
    assert not once or len(keys) == len(set(keys)), "a request was billed twice"
    return [float(b["usd"]) for b in bills]


SHORT = pl.DataFrame({"text": [f"say hello {i}" for i in range(2)]})
SHORT_KW: dict[str, Any] = {"model": MODEL, "prompt": "{text}", "concurrency": 2,
                            # Thinks 256 tokens (the emulator's "low"): a tenth of max_tokens.
                            "params": {"max_tokens": 4000, "reasoning_effort": "low"},
                            "provider_patience": 3 * DAY}  # fmt: skip


def test_a_retry_that_does_not_fit_yet_waits_for_another_retry_sent_beside_it(
    emu, on, clock, tmp_path
) -> None:
    # Both requests refused (429) on 2026-11-29, both sent again on 12-01 at double the
    # worst case. The cap holds one of them at the new worst case beside the other's old
    # one, not both: the first goes; the second must wait for its answer (short: it
    # bills a fraction of its worst case), not end "cancelled: cost_limit" at once
    # because nothing was *already* in flight.
    wb = _worst(on, "2026-11-29", SHORT, SHORT_KW)
    wa = _worst(on, "2026-12-01", SHORT, SHORT_KW)
    assert wa == pytest.approx(2 * wb, rel=1e-9)
    cap = round(3.5 * wb, 10)
    emu.inject_fault(path_regex=GENERATE, method="POST", status=429, times=2, retry_after=60)
    state = str(tmp_path / "s")
    out, seen, held = _over_two_midnights(clock, on, SHORT, state, cap, SHORT_KW)
    assert held == [pytest.approx(2 * wb, rel=1e-12)], "both retries waited, held at 11-29's"
    bills = _bills(emu)
    assert sum(bills) <= cap
    assert max(bills) < wb / 2  # short answers: far below the worst case
    assert out["_status"].to_list() == ["completed", "completed"], out["_error"].to_list()
    assert len(bills) == 2
    assert out["_cost_usd"].sum() == pytest.approx(sum(bills), rel=1e-12)
    assert spent_usd(state) == pytest.approx(sum(bills), rel=1e-12)
    assert _last_running(seen).reserved_usd == 0  # nothing left held (no leak)
    # Never held more than the cap, nor both at the new worst case at once.
    assert max(s.reserved_usd + s.cost_usd + s.unknown_billed_usd for s in seen) <= cap + 1e-12


TRUNC = pl.DataFrame(
    {"text": [f"row {i}: [[emulator:truncate]] " + "lorem ipsum " * 300 for i in range(4)]}
)
TRUNC_KW: dict[str, Any] = {"model": MODEL, "prompt": "{text}", "params": {"max_tokens": 100},
                            "provider_patience": 3 * DAY}  # fmt: skip


@pytest.mark.parametrize("concurrency", [4, 2])
@pytest.mark.parametrize("refused", [2, 3])
def test_several_retries_across_the_rise_never_bill_past_the_cap(
    emu, on, clock, tmp_path, concurrency, refused
) -> None:
    # Several requests refused at once, all waiting past 11-30 into 12-01: each is priced
    # again; what fits goes, the rest end cancelled, and nothing bills past the cap.
    kw = {**TRUNC_KW, "concurrency": concurrency}
    wb, wa = _worst(on, "2026-11-29", TRUNC, kw), _worst(on, "2026-12-01", TRUNC, kw)
    cap = round(5.5 * wb, 10)
    emu.inject_fault(path_regex=GENERATE, method="POST", status=429, times=refused,
                     retry_after=60)  # fmt: skip
    state = str(tmp_path / "s")
    out, seen, _ = _over_two_midnights(clock, on, TRUNC, state, cap, kw)
    bills = _bills(emu)
    assert sum(bills) <= cap
    assert out["_cost_usd"].sum() == pytest.approx(sum(bills), rel=1e-12)
    assert spent_usd(state) == pytest.approx(sum(bills), rel=1e-12)
    assert lost_usd(state) == 0
    done = out.filter(pl.col("_cost_usd") > 0)
    assert done.height == len(bills)
    assert done["_error"].str.starts_with("truncated:").all()
    rest = out.filter(pl.col("_cost_usd") == 0)
    assert rest["_error"].to_list() == ["cancelled: cost_limit"] * rest.height
    assert rest["_status"].to_list() == ["cancelled"] * rest.height  # never answered
    assert all(b <= wa for b in bills)
    assert _last_running(seen).reserved_usd == 0  # nothing left held (no leak)
    assert max(s.reserved_usd + s.cost_usd + s.unknown_billed_usd for s in seen) <= cap + 1e-12


def test_a_429_then_a_5xx_on_the_retry_priced_again_counts_the_new_worst_case(
    emu, on, clock, tmp_path
) -> None:
    # Row 0 refused (429) on 11-29; sent again on 12-01 at the new worst case, answered
    # 502 after the provider billed it (doubled price). The cap counts that attempt at the
    # worst case it was sent with (12-01's), the folder records it so, the next attempt
    # goes if it fits, and what everything billed stays under the cap.
    kw = {**TRUNC_KW, "concurrency": 1}
    wb, wa = _worst(on, "2026-11-29", TRUNC, kw), _worst(on, "2026-12-01", TRUNC, kw)
    assert wa == pytest.approx(2 * wb, rel=1e-9)
    # Every row is sent on 12-01 (one at a time: the others after the retry): 4 rows
    # and the 502'd attempt at 12-01's worst case fit.
    cap = round(5 * wa * 1.0001, 10)
    emu.inject_fault(path_regex=GENERATE, method="POST", status=429, times=1, retry_after=60)
    emu.inject_fault(path_regex=GENERATE, method="POST", status=502, when="after", times=1)
    state = str(tmp_path / "s")
    out, seen, _ = _over_two_midnights(clock, on, TRUNC, state, cap, kw)
    bills = _bills(emu, once=False)
    assert len(bills) == 5  # 4 rows, one of them twice (the 502 followed its answer)
    assert sum(bills) <= cap
    assert out["_error"].str.starts_with("truncated:").all(), out["_error"].to_list()
    assert out["_cost_usd"].sum() == pytest.approx(sum(bills) - bills[0], rel=1e-12)
    assert lost_usd(state) == pytest.approx(wa, rel=1e-12)
    assert spent_usd(state) == pytest.approx(sum(bills) - bills[0], rel=1e-12)  # known costs
    last = seen[-1]
    assert (last.unknown_billed, last.unknown_billed_usd) == (1, pytest.approx(wa))
    assert _last_running(seen).reserved_usd == 0
    assert max(s.reserved_usd + s.cost_usd + s.unknown_billed_usd for s in seen) <= cap + 1e-12


CHILD = textwrap.dedent(
    """
    import os, sys
    import polars as pl
    import batchata_df.engine.realtime as realtime
    from batchata_df import batch_llm, models
    from batchata_df.engine.clock import FakeClock
    from batchata_df.emulator import Emulator

    models._custom_endpoint = lambda provider: False  # as the tests' `on` fixture
    emu = Emulator.attach(sys.argv[2])
    clock = FakeClock()
    realtime.SystemClock = lambda: clock

    def midnight(now):
        # Two days on, and the re-priced retry then takes 8 s to answer: killed meanwhile
        # (the parent polls every 0.05 s; at 30 s it then waited 30 s for the answer).
        if clock.waits and len(clock.waits) == 1:
            clock.advance(2 * 86400.0)
            os.environ["BATCHATA_DF_TODAY"] = "2026-12-01"
            emu.configure(today="2026-12-01", realtime_latency=8.0)

    clock.on_wait.append(midnight)
    os.environ["BATCHATA_DF_TODAY"] = "2026-11-29"
    rows = pl.DataFrame({"text": [f"row {i}: [[emulator:truncate]] " + "lorem ipsum " * 300
                                  for i in range(4)]})
    batch_llm(rows, model="gemini-4-argon", prompt="{text}", params={"max_tokens": 100},
              concurrency=4, provider_patience=3 * 86400.0, state=sys.argv[1],
              max_cost_usd=float(sys.argv[3]), mode="realtime", progress=False)
    """
)


def test_sigkill_while_a_retry_priced_again_is_in_flight_counts_it_at_its_new_worst_case(
    emu, on, tmp_path, procs
) -> None:
    # Refused on 11-29, priced again and sent on 12-01 (its new worst case, double, held
    # and recorded 'assigned'), then the process is killed while the provider answers it.
    # The next call ends it lost at the worst case it was sent with (12-01's), sends it
    # not again, and the cap counts it so: nothing billed twice, nothing past the cap.
    wb = _worst(on, "2026-11-29", TRUNC, {**TRUNC_KW, "concurrency": 4})
    wa = _worst(on, "2026-12-01", TRUNC, {**TRUNC_KW, "concurrency": 4})
    cap = round(5 * wb * 1.0001, 10)
    emu.inject_fault(path_regex=GENERATE, method="POST", status=429, times=1, retry_after=60)
    on("2026-11-29")
    state = tmp_path / "s"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log = tmp_path / "child.log"
    with open(log, "wb") as out_file:
        child = subprocess.Popen(
            [sys.executable, str(script), str(state), emu.url, repr(cap)],
            env=dict(os.environ), stdout=out_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    procs.append(child)
    give_up = time.monotonic() + 120
    while time.monotonic() < give_up:
        if emu.settings()["today"] == "2026-12-01" and emu.realtime_stats()["in_flight"]:
            break
        assert child.poll() is None, log.read_text()
        time.sleep(0.05)
    else:
        raise AssertionError(f"the retry was never sent: {log.read_text()}")
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    while emu.realtime_stats()["in_flight"] and time.monotonic() < give_up + 60:
        time.sleep(0.1)  # the provider finishes (and bills) the request it was sent
    emu.configure(realtime_latency=0.0)
    first = _bills(emu)
    assert len(first) == 4  # 3 rows on 11-29, the retry on 12-01 (its answer lost)
    assert max(first) == pytest.approx(2 * min(first), rel=1e-9)
    assert lost_usd(state) == pytest.approx(wa, rel=1e-12)  # at the worst case it was sent with

    on("2026-12-01")
    seen: list[ProgressSnapshot] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = TRUNC.pipe(batch_llm, state=str(state), max_cost_usd=cap, mode="realtime",
                         progress=seen.append, **{**TRUNC_KW, "concurrency": 4})  # fmt: skip
    assert _bills(emu) == first  # nothing sent again
    lost = out.filter(pl.col("_error").str.starts_with("lost:").fill_null(False))
    assert lost.height == 1 and lost["_status"].to_list() == ["failed"]
    assert out.filter(pl.col("_cost_usd") > 0).height == 3
    assert out["_cost_usd"].sum() == pytest.approx(sum(first) - max(first), rel=1e-12)
    assert spent_usd(str(state)) + lost_usd(str(state)) <= cap
    assert sum(first) <= cap
    assert lost_usd(str(state)) == pytest.approx(wa, rel=1e-12)


def test_a_5xx_next_attempt_that_does_not_fit_yet_waits_for_one_sent_beside_it(
    emu, on, clock, tmp_path
) -> None:
    # Both requests answered 502 after being billed (11-29); their next attempts wait
    # their backoff past 12-01 and are priced again at double. The cap (5x the 11-29
    # worst case: 2 counted for the 502'd attempts) holds one new attempt at a time: the
    # second waits for the first's short answer, then fits, instead of failing at once.
    wb = _worst(on, "2026-11-29", SHORT, SHORT_KW)
    cap = round(5 * wb, 10)
    emu.inject_fault(path_regex=GENERATE, method="POST", status=502, when="after", times=2)
    state = str(tmp_path / "s")
    out, seen, _ = _over_two_midnights(clock, on, SHORT, state, cap, SHORT_KW)
    assert out["_status"].to_list() == ["completed", "completed"], out["_error"].to_list()
    bills = _bills(emu, once=False)
    assert len(bills) == 4 and sum(bills) <= cap
    assert lost_usd(state) == pytest.approx(2 * wb, rel=1e-12)  # the 502'd attempts
    assert out["_cost_usd"].sum() == pytest.approx(sum(sorted(bills)[2:]), rel=1e-12)
    assert _last_running(seen).reserved_usd == 0
