"""A capped call that runs for days prices what it sends on each day at that day's figures.

The cap's worst case was estimated once, when the call started (``frame.with_estimates``):
a gemini-2.5-flash call started on 2026-11-28 (its batch window ends 2026-11-30, so
``PriceTable.answering`` named gemini-2.5-flash alone) counted each 300x300 image at 258
tokens. A batch it sent later, on 2026-11-30 (the call waiting for a slot, or for the
cap), runs into 2026-12-01 and is answered by gemini-3.5-flash-lite, which counts the
image at 1,120: billed ~2.2x what was reserved for it. The same held for a dated price
change reached by a batch sent on a later day of the call (gemini-4-argon doubles on
2026-12-01). Now, when the date moves, the jobs not sent yet are priced again
(``engine.planning.Repricer``, ``RunContext.reprice``), by a realtime call too. Each test
moves the date in steps no longer than a Gemini batch's 48 h window, as a real call sees
it: a batch in flight never runs past its window.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import polars as pl
import pytest

from batchata_df import batch_llm
from batchata_df.engine import ProgressSnapshot
from batchata_df.state import spent_usd

OLD, NEW = "gemini-2.5-flash", "gemini-3.5-flash-lite"


def _days(on, steps: dict[int, str]) -> tuple[Callable[[ProgressSnapshot], None], list[str]]:
    """A progress callback moving the client's and the emulator's date as jobs end."""
    moved: list[str] = []

    def progress(snap: ProgressSnapshot) -> None:
        for ended, day in steps.items():
            if snap.completed + snap.failed >= ended and day not in moved:
                moved.append(day)
                on(day)

    return progress, moved


def _estimates_counted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Each ``frame.with_estimates`` call from now on: the client's date and the rows."""
    from batchata_df import frame, models

    estimated: list[tuple[str, int]] = []
    real = frame.with_estimates

    def counting(jobs: pl.DataFrame, *args: object, **kwargs: object) -> pl.DataFrame:
        estimated.append((models.today().isoformat(), jobs.height))
        return real(jobs, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(frame, "with_estimates", counting)
    return estimated


def _twelve_rows_over_two_midnights(on, tmp_path, **kw: object) -> pl.DataFrame:
    """A capped (1 USD) call of 12 rows started on 2026-11-28, the date moving to 11-29
    after 2 rows end and to 11-30 after 6; its output, read whole."""
    rows = pl.DataFrame({"text": [f"row {i}" for i in range(12)]})
    on("2026-11-28")
    progress, moved = _days(on, {2: "2026-11-29", 6: "2026-11-30"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the thinking-room advice
        out = rows.pipe(
            batch_llm, prompt="{text}", state=str(tmp_path / "s"), progress=progress,
            params={"max_tokens": 2000, "reasoning_effort": "low"}, max_cost_usd=1.0, **kw,
        )  # fmt: skip
    assert moved == ["2026-11-29", "2026-11-30"]
    return out.collect() if isinstance(out, pl.LazyFrame) else out


@pytest.mark.parametrize("streamed", [False, True])
def test_a_call_running_across_the_routing_date_stays_under_the_cap(
    on, emu, tmp_path, streamed
) -> None:
    from PIL import Image

    img = tmp_path / "small.png"
    Image.new("RGB", (300, 300), (10, 20, 30)).save(img)
    rows = pl.DataFrame({"text": [f"row {i}" for i in range(12)], "file": [str(img)] * 12})
    state = str(tmp_path / "s")
    on("2026-11-28")
    progress, moved = _days(on, {2: "2026-11-30", 4: "2026-12-01"})
    cap = 0.0012  # ~11 rows at 2.5's counts (0.000103 each), ~5 at the successor's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shutdown warning; the cap's cancelled rows
        rows.pipe(
            batch_llm, model=OLD, prompt="Describe: {text}", files="file", state=state,
            progress=progress, params={"max_tokens": 50}, items_per_batch=2,
            max_parallel_batches=1, max_cost_usd=cap,
            sink=str(tmp_path / "out.parquet") if streamed else None,
        )  # fmt: skip
    bills = emu.billing(usd=True)
    assert moved == ["2026-11-30", "2026-12-01"] and NEW in {b["model"] for b in bills}
    billed = sum(float(b["usd"]) for b in bills)  # type: ignore[arg-type]
    assert spent_usd(state) == pytest.approx(billed, rel=1e-9)
    assert billed <= cap  # 0.00133 USD under the 0.0012 cap before


def test_a_call_running_across_a_dated_price_change_stays_under_the_cap(
    on, emu, tmp_path
) -> None:
    # gemini-4-argon's price doubles on 2026-12-01 (genai-prices): a call started on
    # 2026-11-28 reserved at the old price what it sent on 11-30, billed at the new one.
    rows = pl.DataFrame({"text": [f"row {i} " + "lorem ipsum " * 200 for i in range(12)]})
    kw = {"model": "gemini-4-argon", "prompt": "{text}", "progress": False,
          "params": {"max_tokens": 50, "reasoning_effort": "low"}}  # fmt: skip
    on("2026-11-28")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the thinking-room advice
        plan = rows.pipe(batch_llm, dry_run=True, **kw)  # type: ignore[arg-type]
    cap = float(plan["_est_cost_usd"][0]) * 5  # five rows at the price of 2026-11-28
    progress, moved = _days(on, {2: "2026-11-30", 4: "2026-12-01"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cap's cancelled rows
        rows.pipe(
            batch_llm, state=str(tmp_path / "s"), items_per_batch=2, max_parallel_batches=1,
            max_cost_usd=cap, **{**kw, "progress": progress},
        )  # fmt: skip
    assert moved == ["2026-11-30", "2026-12-01"]
    bills = emu.billing(usd=True)
    assert len(bills) >= 4  # sent on each of the days
    billed = sum(float(b["usd"]) for b in bills)  # type: ignore[arg-type]
    assert billed <= cap  # 0.00511 USD under a 0.00473 cap before


@pytest.mark.parametrize("mode", ["realtime", "auto"])  # auto: 12 jobs go realtime
def test_a_realtime_call_running_across_a_dated_price_change_stays_under_the_cap(
    on, emu, tmp_path, mode
) -> None:
    # A realtime request is reserved at the higher of today's and tomorrow's price: one
    # started on 2026-11-28 reserved gemini-4-argon's old price for the requests it sent
    # on 12-01, billed at the doubled one.
    rows = pl.DataFrame({"text": [f"row {i} " + "lorem ipsum " * 200 for i in range(12)]})
    kw = {"model": "gemini-4-argon", "prompt": "{text}", "mode": "realtime",
          "params": {"max_tokens": 50, "reasoning_effort": "low"}}  # fmt: skip
    on("2026-11-28")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the thinking-room advice
        plan = rows.pipe(batch_llm, dry_run=True, progress=False, **kw)  # type: ignore[arg-type]
    # Eight and a half rows at the price of 2026-11-28: a realtime call is admitted one
    # request at a time against what was billed, so it overshoots by the last request's
    # underestimate only: here the one sent on 12-01 with room for the old price.
    cap = float(plan["_est_cost_usd"][0]) * 8.5
    progress, moved = _days(on, {2: "2026-11-30", 4: "2026-12-01"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cap's cancelled rows
        rows.pipe(
            batch_llm, state=str(tmp_path / "s"), concurrency=1, max_cost_usd=cap,
            progress=progress, **{**kw, "mode": mode},
        )  # fmt: skip
    assert moved == ["2026-11-30", "2026-12-01"]
    bills = emu.billing(usd=True)
    assert len(bills) >= 4  # sent on each of the days
    billed = sum(float(b["usd"]) for b in bills)  # type: ignore[arg-type]
    assert billed <= cap  # 0.01702 USD under a 0.01608 cap before


@pytest.mark.parametrize(
    ("model", "streamed", "mode"),
    [
        ("gemini-3.5-flash", False, "batch"),
        ("gemini-3.5-flash", True, "batch"),
        ("gemini-3.5-flash", False, "realtime"),
        ("gemini-4-argon", False, "batch"),  # the control: its price moves on these days
    ],
)
def test_a_midnight_that_changes_no_price_prices_nothing_again(
    on, emu, tmp_path, monkeypatch, model, streamed, mode
) -> None:
    # gemini-3.5-flash has no dated price change or routing (genai-prices,
    # models.SCHEDULED): a capped call running from 2026-11-28 into 11-30 estimates each
    # row once, when it is read, and keeps its plan; re-pricing every midnight cost ~3.6 s
    # of CPU at 1M unsent rows and could split cached prefixes. gemini-4-argon's window
    # reaches its 12-01 rise from 11-29 on: its unsent rows are priced again.
    counted = _estimates_counted(monkeypatch)
    out = _twelve_rows_over_two_midnights(
        on, tmp_path, model=model, items_per_batch=2, max_parallel_batches=1, mode=mode,
        **({"sink": str(tmp_path / "out.parquet")} if streamed else {}),
        **({"concurrency": 1} if mode == "realtime" else {}),
    )  # fmt: skip
    assert out.get_column("_status").to_list() == ["completed"] * 12
    estimated = [height for _, height in counted]
    if streamed:  # the probe's price check, before anything is read
        assert estimated[0] == 1
        estimated = estimated[1:]
    if model == "gemini-3.5-flash":
        assert sum(estimated) == 12  # each row once: nothing priced again
    else:
        assert sum(estimated) > 12 and estimated[0] == 12
    billed = sum(float(b["usd"]) for b in emu.billing(usd=True))  # type: ignore[arg-type]
    assert spent_usd(str(tmp_path / "s")) == pytest.approx(billed, rel=1e-9)


@pytest.mark.parametrize(
    ("n", "phase", "rows_of_cap"),
    [
        (64, "batch", 24),  # 60 rows left after collecting: a batch phase
        (16, "realtime", 12.5),  # 12 left: realtime (at most AUTO_REALTIME_MAX_JOBS)
    ],
)
def test_an_auto_phase_started_on_a_later_day_prices_from_the_day_the_call_priced(
    on, emu, tmp_path, monkeypatch, n, phase, rows_of_cap
) -> None:
    # An auto call first collects the batch an earlier call left in flight, then sends
    # the rest in a batch or realtime phase. The call priced its rows on 2026-11-28
    # (gemini-4-argon's old price: a batch window ending 11-30, a realtime one 11-29);
    # the collection ran to 11-30 and the phase started on 12-01, the price doubled. Its
    # driver counted the date from the day it was made (12-01), so it never priced its
    # rows again: 0.023828 USD billed under a 0.022704 cap (batch), 0.023828 under
    # 0.02365 (realtime).
    import batchata_df.engine.auto as auto_module
    from batchata_df.engine.clock import FakeClock

    clock = FakeClock()
    monkeypatch.setattr(auto_module, "SystemClock", lambda: clock)
    emu.configure(latency=3600)  # the earlier call's batch waits for this one
    rows = pl.DataFrame({"text": [f"row {i} " + "lorem ipsum " * 200 for i in range(n)]})
    kw: dict[str, Any] = {"model": "gemini-4-argon", "prompt": "{text}",
                          "params": {"max_tokens": 50, "reasoning_effort": "low"}}  # fmt: skip
    state = str(tmp_path / "s")
    on("2026-11-28")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the thinking-room advice
        plan = rows.pipe(batch_llm, dry_run=True, progress=False, mode=phase, **kw)
        first = rows.head(4).pipe(batch_llm, state=state, wait=False, progress=False, **kw)
    assert first.get_column("_status").to_list() == ["pending"] * 4
    cap = float(plan["_est_cost_usd"][0]) * rows_of_cap  # at the price of 11-28
    moved: list[str] = []

    def collecting(now: float) -> None:  # the earlier batch ends on 11-30
        if not moved:
            moved.append("2026-11-30")
            on("2026-11-30")
        emu.advance(3600)

    def progress(snap: ProgressSnapshot) -> None:  # collected: the phase starts on 12-01
        if snap.completed + snap.failed >= 4 and "2026-12-01" not in moved:
            moved.append("2026-12-01")
            on("2026-12-01")

    clock.on_wait.append(collecting)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cap's cancelled rows
        out = rows.pipe(
            batch_llm, mode="auto", state=state, max_cost_usd=cap, concurrency=1,
            items_per_batch=5, max_parallel_batches=1, progress=progress, **kw,
        )  # fmt: skip
    assert moved == ["2026-11-30", "2026-12-01"]
    assert out.get_column("_mode").drop_nulls().unique().sort().to_list() == sorted(
        {"batch", phase}
    )
    bills = emu.billing(usd=True)
    billed = sum(float(b["usd"]) for b in bills)  # type: ignore[arg-type]
    assert spent_usd(state) == pytest.approx(billed, rel=1e-9)
    assert billed <= cap


def test_an_auto_calls_realtime_phase_prices_again_when_the_realtime_window_moves(
    on, emu, tmp_path, monkeypatch
) -> None:
    # 12 rows of an auto call go realtime, held at realtime figures: a realtime request's
    # window (its day and the next, sent at 23:59) reaches gemini-4-argon's 12-01 rise
    # from 11-30 on, not from 11-29 as a batch's 48 h window does. The realtime phase
    # prices its unsent rows again on 11-30 (its terms moved), not on 11-29.
    estimated = _estimates_counted(monkeypatch)
    out = _twelve_rows_over_two_midnights(
        on, tmp_path, model="gemini-4-argon", mode="auto", concurrency=1
    )
    assert out.get_column("_mode").to_list() == ["realtime"] * 12
    # At the start, at batch and at realtime prices; then the rows left, on 11-30 only.
    assert estimated[:2] == [("2026-11-28", 12)] * 2
    again = estimated[2:]
    assert [day for day, _ in again] == ["2026-11-30"] and 0 < again[0][1] <= 6


def test_a_call_that_waited_for_the_lock_past_a_price_rise_stays_under_the_cap(
    on, emu, tmp_path, monkeypatch
) -> None:
    # The call prices its rows on 2026-11-28 (gemini-4-argon's old price, a batch window
    # to 11-30), then waits for the state folder's lock (lock_timeout=) into 12-01, the
    # price doubled: its engine, made on 12-01, prices the rows again before sending.
    from batchata_df import frame
    from batchata_df.state import WriterLock

    class Waited(WriterLock):
        def __enter__(self) -> WriterLock:
            on("2026-12-01")  # the date when the other holder let go
            return super().__enter__()

    monkeypatch.setattr(frame, "WriterLock", Waited)
    rows = pl.DataFrame({"text": [f"row {i} " + "lorem ipsum " * 200 for i in range(12)]})
    kw: dict[str, Any] = {"model": "gemini-4-argon", "prompt": "{text}", "progress": False,
                          "params": {"max_tokens": 50, "reasoning_effort": "low"}}  # fmt: skip
    on("2026-11-28")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the thinking-room advice
        plan = rows.pipe(batch_llm, dry_run=True, **kw)
    cap = float(plan["_est_cost_usd"][0]) * 5  # five rows at the price of 2026-11-28
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cap's cancelled rows
        rows.pipe(
            batch_llm, state=str(tmp_path / "s"), items_per_batch=2, max_parallel_batches=1,
            max_cost_usd=cap, lock_timeout=60, **kw,
        )  # fmt: skip
    bills = emu.billing(usd=True)
    assert bills and {b["model"] for b in bills} == {"gemini-4-argon"}
    billed = sum(float(b["usd"]) for b in bills)  # type: ignore[arg-type]
    assert spent_usd(str(tmp_path / "s")) == pytest.approx(billed, rel=1e-9)
    assert billed <= cap
