"""A realtime 5xx may follow a billed answer: the cap counts every such attempt.

A gateway 502/504 (or a 500) can arrive after the provider computed, and billed, the
answer; none of the three providers documents a 5xx as unbilled. The emulator plays it with
``inject_fault(..., when="after")``: the request is answered and billed, the client gets
the 5xx. Each attempt answered 5xx counts at its worst case under ``max_cost_usd`` (in this
call and, recorded in the folder, in later calls), a retry is sent only while the worst
case of another attempt fits, and ``query.lost_requests`` / ``batchata-df status`` list
those attempts. The emulator's billing ledger is the judge.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from rich.console import Console

import batchata_df.engine.realtime as realtime_module
from batchata_df import batch_llm, query
from batchata_df.cli import cli
from batchata_df.engine.clock import FakeClock
from batchata_df.progress import make_display
from batchata_df.state import lost_usd, spent_usd

PATHS = {"openai": r"/chat/completions$", "anthropic": r"/v1/messages$",
         "gemini": r":generateContent$"}  # fmt: skip
MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5",
          "gemini": "gemini-2.5-flash-lite"}  # fmt: skip
TEXTS = [f"row {i}" for i in range(10)]
KW: dict[str, Any] = {"prompt": "{text}", "params": {"max_tokens": 64}, "progress": False}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The realtime engine's clock (retry backoffs pass without sleeping)."""
    fake = FakeClock()
    monkeypatch.setattr(realtime_module, "SystemClock", lambda: fake)
    return fake


def _reference(emu: Any, provider: str) -> dict[str, float]:
    """What the emulator bills for each row's request (an undisturbed realtime run)."""
    model = MODELS[provider]
    ref = batch_llm(pl.DataFrame({"text": TEXTS}), model=model, mode="realtime",
                    concurrency=1, **KW)  # fmt: skip
    assert ref["_status"].to_list() == ["completed"] * len(TEXTS)
    # One request at a time: the ledger bills the rows in order.
    keys = [str(e["request"]) for e in emu.billing()]
    assert len(set(keys)) == len(TEXTS)
    return {k: float(c) for k, c in zip(keys, ref["_cost_usd"], strict=True)}


def _billed(ledger: list[dict[str, Any]], cost: dict[str, float]) -> float:
    return sum(cost[str(e["request"])] for e in ledger)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_5xx_after_a_billed_answer_never_takes_spend_past_the_cap(
    emu, tmp_path, clock, provider
) -> None:
    cost = _reference(emu, provider)
    emu.reset()
    cap = round(sum(cost.values()) * 1.5, 8)
    emu.inject_fault(path_regex=PATHS[provider], method="POST", status=504, when="after",
                     times=None)  # fmt: skip
    state = tmp_path / "state"
    df = pl.DataFrame({"text": TEXTS})
    out = batch_llm(df, model=MODELS[provider], mode="realtime", concurrency=1,
                    max_cost_usd=cap, state=str(state), **KW)  # fmt: skip
    ledger = emu.billing()
    assert ledger, "the provider billed the attempts it answered with a 504"
    assert _billed(ledger, cost) <= cap
    # Rows sent end failed "server_error: ..."; those the cap never reached, cancelled.
    failed = out.filter(pl.col("_status") == "failed")
    assert failed.height >= 2
    assert failed["_error"].str.starts_with("server_error:").all()
    rest = out.filter(pl.col("_status") != "failed")
    assert rest["_error"].str.starts_with("cancelled: cost_limit").all()
    assert failed["_cost_usd"].sum() == 0  # no answer: what a 5xx billed is unknown
    # A row whose next attempt would not fit ends naming the cause and the fix.
    stopped = failed.filter(pl.col("_error").str.contains("would pass max_cost_usd"))
    assert stopped.height >= 1
    assert stopped["_error"].str.contains("retry_failed=True").all()
    # Every billed attempt is listed with the worst case the cap counted for it.
    lost = query.lost_requests(str(state))
    assert lost.height == len(ledger)
    assert lost["est_cost_usd"].null_count() == 0
    assert lost["est_cost_usd"].sum() <= cap
    assert (lost["est_cost_usd"] >= min(cost.values())).all()  # a worst case, not $0
    assert set(lost["attempt_error"].str.slice(0, 13)) == {"server_error:"}
    # A later capped call on the folder starts with those attempts spent: with the cap
    # already counted in full, it sends nothing, even told to retry the failed rows.
    emu.reset()
    again = batch_llm(df, model=MODELS[provider], mode="realtime", concurrency=1,
                      max_cost_usd=cap, state=str(state), retry_failed=True, **KW)  # fmt: skip
    assert emu.billing() == []
    assert set(again["_status"]) == {"cancelled"}


def test_a_retry_after_a_5xx_is_sent_while_it_fits_and_both_attempts_are_counted(
    emu, tmp_path, clock
) -> None:
    cost = _reference(emu, "openai")
    emu.reset()
    emu.inject_fault(path_regex=PATHS["openai"], method="POST", status=502, when="after",
                     times=1)  # fmt: skip
    state = tmp_path / "state"
    df = pl.DataFrame({"text": TEXTS[:3]})
    cap = 1.0
    out = batch_llm(df, model=MODELS["openai"], mode="realtime", concurrency=1,
                    max_cost_usd=cap, state=str(state), **KW)  # fmt: skip
    assert out["_status"].to_list() == ["completed"] * 3
    ledger = emu.billing()
    assert len(ledger) == 4  # the first row was billed twice: the 502 followed its answer
    lost = query.lost_requests(str(state))
    assert lost.height == 1
    assert lost.row(0, named=True)["job_status"] == "completed"
    worst = float(lost["est_cost_usd"][0])
    assert worst >= max(cost.values())
    # The frame's cost is what is known to be billed; the cap also counts the worst case.
    assert out["_cost_usd"].sum() == pytest.approx(
        sum(list(cost.values())[:3]))  # the reference billed the rows in order
    # What a capped call counts as spent for the folder: billed costs plus that worst case.
    r = CliRunner().invoke(cli, ["status", str(state)])
    assert r.exit_code == 0, r.output
    assert "answered 5xx" in r.output and "n_server_error" in r.output


def test_without_a_cap_the_5xx_attempts_are_still_recorded(emu, tmp_path, clock) -> None:
    emu.inject_fault(path_regex=PATHS["openai"], method="POST", status=500, when="after",
                     times=None)  # fmt: skip
    state = tmp_path / "state"
    seen: list[Any] = []
    out = batch_llm(pl.DataFrame({"text": TEXTS[:2]}), model=MODELS["openai"],
                    mode="realtime", state=str(state),
                    **{**KW, "progress": seen.append})  # fmt: skip
    assert out["_status"].to_list() == ["failed", "failed"]
    assert out["_error"].str.ends_with("(4 attempts)").all()
    assert len(emu.billing()) == 8
    assert query.lost_requests(str(state)).height == 8
    # The progress counts all 8 (3 retried and the last of each row), none with a worst case.
    assert (seen[-1].unknown_billed, seen[-1].unknown_billed_unpriced) == (8, 8)


def _cli_run(tmp_path: Path, *extra: str) -> tuple[str, Path]:
    """``batchata-df run`` (the installed console script) in realtime, one at a time."""
    pl.DataFrame({"text": TEXTS[:3]}).write_csv(tmp_path / "in.csv")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    exe = Path(sys.executable).with_name("batchata-df")
    done = subprocess.run(
        [str(exe), "run", "in.csv", "out.csv", "--model", MODELS["openai"], "--prompt", "{text}",
         "--mode", "realtime", "--concurrency", "1", "--max-tokens", "64", *extra],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stderr, tmp_path / "out.csv.state"


def _dollars(text: str) -> float:
    return float(text.lstrip("$"))


def test_the_cli_summary_shows_the_5xx_attempts_the_cap_counts(emu, tmp_path) -> None:
    # The first request is answered and billed, then the client gets a 502: the row is sent
    # again and answered. The summary said "$<the 3 answers>", what the frame holds; the
    # provider billed 4 requests, and max_cost_usd counted the 502'd one at its worst case.
    emu.inject_fault(path_regex=PATHS["openai"], method="POST", status=502, when="after",
                     times=1)  # fmt: skip
    said, state = _cli_run(tmp_path, "--max-cost-usd", "1")
    found = re.search(
        r"3 completed; (\$[\d.]+), plus up to (\$[\d.]+) for 1 realtime attempt answered 5xx "
        r"or lost in flight \(the provider may have billed it", said,
    )  # fmt: skip
    assert found, said
    answers, worst = _dollars(found[1]), _dollars(found[2])  # 2 significant digits
    out = pl.read_csv(tmp_path / "out.csv")
    assert answers == pytest.approx(out["_cost_usd"].sum(), rel=0.05)
    # The same figures as the cap counts for the folder: billed answers + that worst case.
    recorded = float(query.lost_requests(str(state))["est_cost_usd"].sum())
    assert lost_usd(state) == recorded and spent_usd(state) == pytest.approx(
        out["_cost_usd"].sum())
    assert worst == pytest.approx(recorded, rel=0.05)
    # Never less than the provider's bill: one request more than the answers, at most the
    # cost of the largest answer (the worst case bounds it).
    assert len(emu.billing()) == 4
    assert spent_usd(state) + recorded >= out["_cost_usd"].sum() + out["_cost_usd"].max()
    # `status` shows the same worst case.
    n_lost, n_without, shown = _status_row(state)[2:5]
    assert (n_lost, n_without) == ("1", "0") and float(shown) == pytest.approx(recorded, rel=0.01)


def _status_row(state: Path) -> list[str]:
    """The cells of ``batchata-df status``'s line of lost attempts of gpt-4.1-mini."""
    shown = CliRunner().invoke(cli, ["status", str(state)])
    assert shown.exit_code == 0, shown.output
    rows = shown.output.split("n_server_error")[1].splitlines()
    line = next(x for x in rows if MODELS["openai"] in x)
    return [c.strip(" │") for c in line.split("┆")]


def test_the_cli_summary_of_an_uncapped_run_says_the_5xx_attempt_cost_is_unknown(
    emu, tmp_path
) -> None:
    # Sent without a cap, the attempt has no worst case recorded: never shown as $0.
    emu.inject_fault(path_regex=PATHS["openai"], method="POST", status=502, when="after",
                     times=1)  # fmt: skip
    said, state = _cli_run(tmp_path)
    assert re.search(
        r"3 completed; \$[\d.]+, plus an unknown amount \(sent without a worst case recorded\) "
        r"for 1 realtime attempt answered 5xx or lost in flight", said,
    ), said  # fmt: skip
    assert len(emu.billing()) == 4
    # n_lost, n_without_worst_case, worst_case_usd (null: none recorded, not $0.0), ...
    assert _status_row(state)[2:5] == ["1", "1", "null"]


@pytest.mark.parametrize("cap", [1.0, None], ids=["capped", "uncapped"])
def test_the_progress_shows_the_5xx_attempts_beside_the_cost(emu, tmp_path, clock, cap) -> None:
    # The frame's costs are the 3 answers; a 4th request was billed before its 502. The
    # progress said "cost $<answers>" alone; it now adds the attempt at the worst case the
    # cap counts for it (recorded in the folder), or "an unknown amount" without one.
    emu.inject_fault(path_regex=PATHS["openai"], method="POST", status=502, when="after",
                     times=1)  # fmt: skip
    state = tmp_path / "state"
    seen: list[Any] = []
    out = batch_llm(pl.DataFrame({"text": TEXTS[:3]}), model=MODELS["openai"],
                    mode="realtime", concurrency=1, max_cost_usd=cap, state=str(state),
                    **{**KW, "progress": seen.append})  # fmt: skip
    assert out["_status"].to_list() == ["completed"] * 3 and len(emu.billing()) == 4
    last = seen[-1]
    assert last.unknown_billed == 1
    assert last.cost_usd == pytest.approx(out["_cost_usd"].sum())
    recorded = query.lost_requests(str(state))["est_cost_usd"]
    if cap is None:
        assert recorded.null_count() == 1
        assert (last.unknown_billed_unpriced, last.unknown_billed_usd) == (1, 0.0)
        said = "plus an unknown amount for 1 attempt answered 5xx or lost"
    else:
        assert last.unknown_billed_usd == pytest.approx(lost_usd(state)) and lost_usd(state) > 0
        assert last.unknown_billed_usd == pytest.approx(float(recorded.sum()))
        said = "plus up to $"
    out_text = io.StringIO()
    show = make_display(max_cost_usd=cap, console=Console(file=out_text, width=200))
    show(last)
    assert said in out_text.getvalue() and "(possibly billed)" in out_text.getvalue()


def test_the_cli_summary_sums_the_5xx_attempts_and_splits_a_later_run_from_them(
    emu, tmp_path
) -> None:
    # Run 1: every attempt of the one row is answered (billed) and then 502'd: no answer
    # stored, 4 attempts each counted at the row's worst case. The summary states their
    # sum (not the largest of them).
    pl.DataFrame({"text": TEXTS[:1]}).write_csv(tmp_path / "in.csv")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    exe = Path(sys.executable).with_name("batchata-df")
    cmd = [str(exe), "run", "in.csv", "out.csv", "--model", MODELS["openai"], "--prompt",
           "{text}", "--mode", "realtime", "--concurrency", "1", "--max-tokens", "64",
           "--max-cost-usd", "1"]  # fmt: skip
    emu.inject_fault(path_regex=PATHS["openai"], method="POST", status=502, when="after",
                     times=None, retry_after=0)  # fmt: skip
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=240)  # fmt: skip
    assert first.returncode == 3, first.stderr  # the row failed
    state = tmp_path / "out.csv.state"
    recorded = query.lost_requests(str(state))["est_cost_usd"]
    n = recorded.len()
    assert n >= 2 and n == len(emu.billing()) and recorded.null_count() == 0
    assert recorded.n_unique() == 1  # one row's worst case, n times: sum = n * max
    found = re.search(
        rf"1 failed; \$0\.0000, plus up to (\$[\d.]+) for {n} realtime attempts answered 5xx",
        first.stderr,
    )
    assert found, first.stderr
    assert _dollars(found[1]) == pytest.approx(float(recorded.sum()), rel=0.05)
    # Run 2, the row sent again and answered: the folder held no answer before, only those
    # attempts; this run's cost is told apart from the folder's, which still counts them.
    emu.clear_faults()
    again = subprocess.run([*cmd, "--retry-failed"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=240)  # fmt: skip
    assert again.returncode == 0, again.stderr
    answer = float(pl.read_csv(tmp_path / "out.csv")["_cost_usd"].sum())
    found = re.search(
        r"1 completed; this run (\$[\d.]+); the state folder in all, with earlier runs: "
        rf"(\$[\d.]+), plus up to (\$[\d.]+) for {n} realtime attempts answered 5xx",
        again.stderr,
    )  # fmt: skip
    assert found, again.stderr
    assert _dollars(found[1]) == pytest.approx(answer, rel=0.05)
    assert _dollars(found[2]) == pytest.approx(answer, rel=0.05)
    assert _dollars(found[3]) == pytest.approx(float(recorded.sum()), rel=0.05)


def test_a_5xx_attempt_whose_next_attempt_does_not_fit_is_counted_once(
    emu, tmp_path, clock
) -> None:
    # One row, a cap of 1.5 worst cases: its first attempt is billed, then answered 502,
    # and counts at its worst case; the next one would pass the cap, so it is never sent.
    # The progress counted that one attempt twice (when its 5xx came back, and again when
    # its row ended "server_error: ... not sent again"): "plus up to $<2 worst cases>".
    df = pl.DataFrame({"text": TEXTS[:1]})
    plan = batch_llm(df, model=MODELS["openai"], mode="realtime", dry_run=True, **KW)
    worst = float(plan["_est_cost_usd"][0])
    emu.inject_fault(path_regex=PATHS["openai"], method="POST", status=502, when="after",
                     times=1)  # fmt: skip
    state = tmp_path / "state"
    seen: list[Any] = []
    out = batch_llm(df, model=MODELS["openai"], mode="realtime", concurrency=1,
                    max_cost_usd=1.5 * worst, state=str(state),
                    **{**KW, "progress": seen.append})  # fmt: skip
    assert len(emu.billing()) == 1
    assert out["_status"].to_list() == ["failed"]
    assert "would pass max_cost_usd" in out["_error"][0]
    assert lost_usd(state) == pytest.approx(worst)
    last = seen[-1]
    assert (last.unknown_billed, last.unknown_billed_usd) == (1, pytest.approx(lost_usd(state)))
