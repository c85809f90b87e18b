"""Realtime requests waiting to retry while the date moves: priced on the day they are sent.

``max_cost_usd`` holds each realtime request's worst case from before it is sent: the
highest price of the days it may run on, the day it is sent and the next
(``PriceTable.worst``, ``cost.window_days``). A request refused with a 429 (or answered
5xx) waits to be sent again, for up to ``provider_patience``. When it waits past a date
change, the day it is sent again is not the day it was priced: gemini-4-argon doubles on
2026-12-01, so a request priced on 2026-11-29 (its window 11-29 .. 11-30: the old price)
and sent again on 2026-12-01 is billed twice what was held for it. Before the fix the
retry kept that reservation: 4 truncated rows under a cap of their 11-29 worst case
billed 0.01407 USD against a 0.0124 cap. Now a request waiting to retry is priced again
when the date changes what its model's estimate depends on (``PriceTable.terms``), as the
planner's unsent jobs are (``planning.Repricer``); the difference is held before it is
sent, or the row ends ``cancelled: cost_limit`` (a 5xx's next attempt: ``failed``,
naming the cap) when it cannot fit.

The date moves on the engine's clock (:class:`~batchata_df.engine.clock.FakeClock`): the
retry's wait jumps the clock by the days passed, and the test sets the client's and the
emulator's date as it does (no real sleeping). Every row is ``[[emulator:truncate]]``,
billed its whole ``max_tokens``: what a row bills is then close to its worst case, so a
retry billed at a price its reservation did not cover shows in the total.
"""

from __future__ import annotations

import warnings
from typing import Any

import polars as pl
import pytest

import batchata_df.engine.auto as auto_module
import batchata_df.engine.realtime as realtime_module
from batchata_df import batch_llm
from batchata_df.engine.clock import FakeClock
from batchata_df.engine.run import ProgressSnapshot
from batchata_df.state import JOB_EVENTS, lost_usd, spent_usd

DAY = 86_400.0
MODEL = "gemini-4-argon"  # doubles on 2026-12-01 (genai-prices' StartDateConstraint)
GENERATE = r":generateContent$"
ROWS = pl.DataFrame(
    {"text": [f"row {i}: [[emulator:truncate]] " + "lorem ipsum " * 300 for i in range(4)]}
)
KW: dict[str, Any] = {"model": MODEL, "prompt": "{text}", "params": {"max_tokens": 100},
                      "concurrency": 4, "provider_patience": 3 * DAY}  # fmt: skip


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The clock of the realtime engine, and of the auto engine's realtime phase."""
    fake = FakeClock()
    monkeypatch.setattr(realtime_module, "SystemClock", lambda: fake)
    monkeypatch.setattr(auto_module, "SystemClock", lambda: fake)
    return fake


def _worst(on: Any, day: str) -> float:
    """The cap's worst case of one row sent realtime on ``day`` (the dry run's)."""
    on(day)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = ROWS.pipe(batch_llm, dry_run=True, mode="realtime", progress=False, **KW)
    worst = plan["_est_cost_usd"].unique().to_list()
    assert len(worst) == 1  # the rows are alike: one worst case
    return float(worst[0])


class _Run:
    """A capped call: one of its requests is refused (or 5xx'd), retried after the date moved."""

    def __init__(self, emu: Any, on: Any, clock: FakeClock, before: str, after: str) -> None:
        self.emu, self.on, self.clock = emu, on, clock
        self.before, self.after = before, after
        self.snapshots: list[ProgressSnapshot] = []
        self.held_while_waiting: list[float] = []
        self.flipped = False
        self.flipped_at = 0

    def _midnight(self, now: float) -> None:
        # The retry's wait: nothing else in flight (the engine only sleeps on its clock
        # when no request is running). What is held now is what the retry was priced at.
        if self.flipped:
            return
        self.flipped = True
        self.held_while_waiting.append(self.snapshots[-1].reserved_usd)
        self.flipped_at = len(self.snapshots)
        days = pl.Series([self.after]).str.to_date() - pl.Series([self.before]).str.to_date()
        self.clock.advance(days.dt.total_days().item() * DAY)
        self.on(self.after)

    def call(self, state: str, cap: float, mode: str = "realtime") -> pl.DataFrame:
        self.on(self.before)
        self.clock.on_wait.append(self._midnight)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the cap's cancelled rows
            out = ROWS.pipe(
                batch_llm, state=state, max_cost_usd=cap, mode=mode,
                progress=self.snapshots.append, **KW,
            )  # fmt: skip
        assert self.flipped, "no request waited to retry: the test would prove nothing"
        return out

    def last_running(self) -> ProgressSnapshot:
        """The last snapshot before "done" (which shows 0 held, whatever is held)."""
        return [s for s in self.snapshots if s.phase == "running"][-1]

    def in_flight_after(self) -> set[float]:
        """What was held while requests were in flight after the date moved (rounded)."""
        return {round(s.reserved_usd, 12) for s in self.snapshots[self.flipped_at :]
                if s.realtime_in_flight}  # fmt: skip


def _bills(emu: Any) -> list[float]:
    bills = emu.billing(usd=True)
    keys = [b["request"] for b in bills]
    assert len(keys) == len(set(keys)), "a request was billed twice"
    return [float(b["usd"]) for b in bills]


@pytest.mark.parametrize(
    ("before", "after", "billed_rows"),
    [
        # No price change at this midnight (argon's terms equal): nothing is priced again.
        ("2026-11-27", "2026-11-28", 4),
        # One midnight into the rise: the retry's reservation (11-30 .. 12-01) covers it.
        ("2026-11-30", "2026-12-01", 4),
        # Two midnights: priced at 11-29 (old price), sent on 12-01 (double): its new
        # worst case does not fit beside what the others spent, so it is never sent.
        ("2026-11-29", "2026-12-01", 3),
        # One midnight, before the rise: sent on 11-30 it may run into 12-01 (the window
        # of a request sent that day), as a row first sent on 11-30 is priced: the same.
        ("2026-11-29", "2026-11-30", 3),
    ],
)
def test_a_429_retry_across_a_date_change_never_bills_past_the_cap(
    emu, on, clock, tmp_path, before, after, billed_rows
) -> None:
    worst_before, worst_after = _worst(on, before), _worst(on, after)
    cap = round(4 * worst_before * 1.0001, 10)  # every row fits at the first day's prices
    emu.inject_fault(path_regex=GENERATE, method="POST", status=429, times=1, retry_after=60)
    run = _Run(emu, on, clock, before, after)
    state = str(tmp_path / "s")
    out = run.call(state, cap)

    bills = _bills(emu)
    assert sum(bills) <= cap
    assert len(bills) == billed_rows
    # Every row ends billed once (truncated: the whole max_tokens) or cancelled by the cap.
    billed = out.filter(pl.col("_cost_usd") > 0)
    assert billed.height == billed_rows
    assert billed["_error"].str.starts_with("truncated:").all()
    unbilled = out.filter(pl.col("_cost_usd") == 0)
    assert unbilled["_error"].to_list() == ["cancelled: cost_limit"] * (4 - billed_rows)
    assert unbilled["_status"].to_list() == ["cancelled"] * (4 - billed_rows)
    # What the frame and the folder say was spent is what the emulator billed.
    assert out["_cost_usd"].sum() == pytest.approx(sum(bills), rel=1e-12)
    assert spent_usd(state) == pytest.approx(sum(bills), rel=1e-12)
    # The retry held its worst case while it waited (not released early) ...
    assert run.held_while_waiting == [pytest.approx(worst_before, rel=1e-12)]
    # ... and, sent again, held the new day's once (not both days' worst cases).
    in_flight = run.in_flight_after()
    assert in_flight == ({round(worst_after, 12)} if billed_rows == 4 else set())
    assert run.last_running().reserved_usd == 0  # nothing left held (no leak)


def test_a_429_retry_priced_again_is_sent_when_the_new_worst_case_fits(
    emu, on, clock, tmp_path
) -> None:
    # Two midnights, the cap one row's worst case roomier: the retry goes, at the new
    # day's worst case held once, and is billed the doubled price, within the cap.
    worst_before, worst_after = _worst(on, "2026-11-29"), _worst(on, "2026-12-01")
    assert worst_after == pytest.approx(2 * worst_before, rel=1e-9)  # the rise
    cap = round(5 * worst_before * 1.0001, 10)
    emu.inject_fault(path_regex=GENERATE, method="POST", status=429, times=1, retry_after=60)
    run = _Run(emu, on, clock, "2026-11-29", "2026-12-01")
    state = str(tmp_path / "s")
    out = run.call(state, cap)

    bills = _bills(emu)
    assert len(bills) == 4 and sum(bills) <= cap
    assert max(bills) == pytest.approx(2 * min(bills), rel=1e-9)  # the retry: doubled
    assert out["_cost_usd"].sum() == pytest.approx(sum(bills), rel=1e-12)
    assert spent_usd(state) == pytest.approx(sum(bills), rel=1e-12)
    assert run.held_while_waiting == [pytest.approx(worst_before, rel=1e-12)]
    assert run.in_flight_after() == {round(worst_after, 12)}
    # The folder records the retry at the worst case it was sent with: a crash while it
    # is in flight leaves it lost at that figure, not at the first day's.
    # By the table's schema, as README says: a format 2 part leaves out its all-null columns.
    jobs = pl.scan_parquet(f"{state}/jobs/*.parquet", schema=JOB_EVENTS,
                           missing_columns="insert", extra_columns="ignore").collect()
    sent = jobs.filter(pl.col("status") == "assigned").sort("seq")
    retried = sent.filter(pl.col("job_id").is_duplicated())
    assert retried["est_cost_usd"].to_list() == pytest.approx([worst_before, worst_after])
    assert lost_usd(state) == 0


def test_auto_modes_realtime_phase_prices_a_waiting_retry_on_the_day_it_is_sent(
    emu, on, clock, tmp_path
) -> None:
    # 4 rows: auto sends them realtime (at most AUTO_REALTIME_MAX_JOBS), as above.
    worst_before = _worst(on, "2026-11-29")
    cap = round(4 * worst_before * 1.0001, 10)
    emu.inject_fault(path_regex=GENERATE, method="POST", status=429, times=1, retry_after=60)
    run = _Run(emu, on, clock, "2026-11-29", "2026-12-01")
    state = str(tmp_path / "s")
    out = run.call(state, cap, mode="auto")

    bills = _bills(emu)
    assert sum(bills) <= cap and len(bills) == 3
    assert out["_mode"].drop_nulls().unique().to_list() == ["realtime"]
    assert out.filter(pl.col("_cost_usd") == 0)["_error"].to_list() == ["cancelled: cost_limit"]
    assert out["_cost_usd"].sum() == pytest.approx(sum(bills), rel=1e-12)
    assert spent_usd(state) == pytest.approx(sum(bills), rel=1e-12)
    assert run.held_while_waiting == [pytest.approx(worst_before, rel=1e-12)]


def test_a_5xx_retry_across_a_date_change_is_priced_on_the_day_it_is_sent(
    emu, on, clock, tmp_path
) -> None:
    # A 502 after the answer (billed); its next attempt waits its backoff, across two
    # midnights. The cap counts the 502'd attempt at its worst case; the next attempt,
    # at the new day's worst case, does not fit: never sent, the row fails naming the cap.
    worst_before, worst_after = _worst(on, "2026-11-29"), _worst(on, "2026-12-01")
    cap = round(5 * worst_before * 1.0001, 10)
    emu.inject_fault(path_regex=GENERATE, method="POST", status=502, when="after", times=1)
    run = _Run(emu, on, clock, "2026-11-29", "2026-12-01")
    state = str(tmp_path / "s")
    out = run.call(state, cap)

    bills = _bills(emu)
    assert len(bills) == 4 and sum(bills) <= cap  # the 502'd attempt was billed too
    failed = out.filter(pl.col("_cost_usd") == 0)
    assert failed["_status"].to_list() == ["failed"]
    error = failed["_error"][0]
    assert error.startswith("server_error:") and "would pass max_cost_usd" in error
    assert f"${worst_after:.6g}" in error  # the next attempt's worst case: the new day's
    # The frame's cost is what is known billed; the 502'd attempt counts at its worst case.
    assert out["_cost_usd"].sum() == pytest.approx(sum(bills) - min(bills), rel=1e-12)
    assert lost_usd(state) == pytest.approx(worst_before, rel=1e-12)
    last = run.snapshots[-1]  # the progress counts that attempt once, at that worst case
    assert (last.unknown_billed, last.unknown_billed_usd) == (1, pytest.approx(worst_before))
    assert run.held_while_waiting == [pytest.approx(worst_before, rel=1e-12)]
    assert run.last_running().reserved_usd == 0
