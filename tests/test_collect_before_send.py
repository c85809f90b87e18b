"""Batches an earlier call left in flight are collected before a call decides what to send.

* ``mode="auto"`` collects them first (waiting for them, as batch mode does), then sends
  realtime or by batch only what is still unanswered; a scheduler re-running
  ``batchata-df run --mode auto`` on exit 5 finishes.
* ``mode="realtime"`` collects those that have ended (one poll, never a wait) and leaves
  the rows of batches still running ``pending``, saying which call collects them.
* Rows of a batch an earlier call cancelled (a double Ctrl+C: aborted before the cancel
  was observed) that ended ``cancelled`` are sent again by the call that collects it, not
  only by the one after; rows the batch answered are never sent (or billed) again.

Judged by the emulator's billing ledger and each row's ``_status`` / ``_mode``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm, sql
from batchata_df.emulator.pricing import billed_usd


class Answer(BaseModel):
    label: str


KW = {"schema": Answer, "prompt": "auto {t}", "model": "gpt-4.1-mini"}


def frame(n: int) -> pl.DataFrame:
    return pl.DataFrame({"t": [f"row {i}" for i in range(n)]})


def batch_posts(emu) -> list[dict]:
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith("/batches")]


def billed_once(emu) -> Counter:
    counts = Counter(e["request"] for e in emu.billing())
    assert max(counts.values()) == 1, counts.most_common(3)
    return counts


def test_auto_collects_a_batch_in_flight_and_sends_only_the_rest(emu, tmp_path: Path) -> None:
    emu.configure(latency=5.0)
    state = tmp_path / "s"
    first = frame(4).pipe(batch_llm, wait=False, state=state, **KW)
    assert first["_status"].to_list() == ["pending"] * 4
    emu.advance(10.0)  # the batch has ended at the provider, not yet collected
    out = frame(10).pipe(batch_llm, mode="auto", state=state, **KW)
    assert out["_status"].to_list() == ["completed"] * 10
    assert out["_mode"].to_list() == ["batch"] * 4 + ["realtime"] * 6
    assert len(batch_posts(emu)) == 1  # the 6 others went realtime, not as a batch
    assert len(billed_once(emu)) == 10
    assert Counter(e["mode"] for e in emu.billing()) == {"batch": 4, "realtime": 6}


def test_auto_waits_for_a_batch_still_running_instead_of_leaving_it_pending(
    emu, tmp_path: Path
) -> None:
    emu.configure(latency=3.0)  # still running when the auto call starts (real seconds)
    state = tmp_path / "s"
    frame(4).pipe(batch_llm, wait=False, state=state, **KW)
    out = frame(4).pipe(batch_llm, mode="auto", state=state, **KW)
    assert out["_status"].to_list() == ["completed"] * 4
    assert out["_mode"].to_list() == ["batch"] * 4
    assert len(billed_once(emu)) == 4 and len(batch_posts(emu)) == 1


def test_realtime_collects_ended_batches_and_names_a_call_that_collects_running_ones(
    emu, tmp_path: Path
) -> None:
    emu.configure(latency=3600.0)
    state = tmp_path / "s"
    frame(4).pipe(batch_llm, wait=False, state=state, **KW)
    running = frame(6).pipe(batch_llm, mode="realtime", state=state, **KW)
    assert running["_status"].to_list() == ["pending"] * 4 + ["completed"] * 2
    why = running["_error"][0]
    assert "mode='auto'" in why and "mode='batch'" in why
    emu.advance(3600.0)  # the batch ends: a realtime call now collects it without waiting
    out = frame(8).pipe(batch_llm, mode="realtime", state=state, **KW)
    assert out["_status"].to_list() == ["completed"] * 8
    assert out["_mode"].to_list() == ["batch"] * 4 + ["realtime"] * 4
    assert len(billed_once(emu)) == 8 and len(batch_posts(emu)) == 1


def test_a_scheduler_rerunning_cli_auto_on_exit_5_finishes(emu, tmp_path: Path) -> None:
    emu.configure(latency=2.0)
    exe = Path(sys.executable).with_name("batchata-df")
    frame(6).write_parquet(tmp_path / "in.parquet")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = [str(exe), "run", "in.parquet", "out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "auto {t}", "--no-progress", "--state", "st"]  # fmt: skip

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*args, *extra], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=240)  # fmt: skip

    first = run("--no-wait")
    assert first.returncode == 5, first.stderr
    auto = run("--mode", "auto")
    assert auto.returncode == 0, auto.stdout + auto.stderr
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out["_status"].to_list() == ["completed"] * 6
    assert out["_mode"].to_list() == ["batch"] * 6
    assert len(billed_once(emu)) == 6 and len(batch_posts(emu)) == 1


ABORTED = textwrap.dedent(
    """
    import sys, polars as pl
    from pydantic import BaseModel
    from batchata_df import batch_llm

    class Answer(BaseModel):
        label: str

    df = pl.DataFrame({"t": [f"row {i}" for i in range(20)]})
    df.pipe(batch_llm, schema=Answer, model="claude-haiku-4-5", prompt="{t}",
            items_per_batch=5, state=sys.argv[1], progress=False)
    """
)


def test_rows_a_double_ctrl_c_left_cancelled_are_sent_by_the_call_that_collects_them(
    emu, tmp_path: Path, procs
) -> None:
    # The second Ctrl+C aborts without waiting for the cancels it asked for: the batches
    # stay "cancel requested" in the folder. The next call collects them (their answered
    # rows) and sends the rows that ended cancelled, never one that was answered.
    emu.configure(latency=15.0, cancel_delay=5.0)
    script = tmp_path / "child.py"
    script.write_text(ABORTED)
    state = tmp_path / "s"
    child = subprocess.Popen([sys.executable, str(script), str(state)], env=dict(os.environ),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    procs.append(child)
    deadline = time.monotonic() + 60
    while len(batch_posts(emu)) < 4:
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.05)
    emu.advance(3.0)  # some requests of each batch have run (of 5 spread over 15 s)
    child.send_signal(signal.SIGINT)
    while len([e for e in emu.log() if e["path"].endswith("/cancel")]) < 4:
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode != 0, err  # aborted
    emu.advance(60.0)  # the cancels have taken effect at the provider
    out = pl.DataFrame({"t": [f"row {i}" for i in range(20)]}).pipe(
        batch_llm, schema=Answer, model="claude-haiku-4-5", prompt="{t}",
        items_per_batch=5, state=state, progress=lambda _: emu.advance(20.0),
    )  # fmt: skip
    assert out["_status"].to_list() == ["completed"] * 20
    counts = billed_once(emu)  # nothing answered was sent again
    assert len(counts) == 20
    assert Counter(e["mode"] for e in emu.billing()) == {"batch": 20}
    # The 4 cancelled batches ran some requests (billed once, collected, not sent again);
    # the others went in new batches of this call.
    bills = emu.billing()  # in the order the batches were accepted
    aborted = list(dict.fromkeys(e["batch_id"] for e in bills))[:4]
    ran = [e for e in bills if e["batch_id"] in aborted]
    assert 0 < len(ran) < 20
    assert len(batch_posts(emu)) > 4


def test_a_realtime_call_prices_the_batch_rows_it_collects_at_the_batch_rate(
    emu, tmp_path: Path
) -> None:
    """Rows a realtime call collects from an ended batch cost what the batch billed.

    The realtime call's price table is the standard one; the collected batch's rows are
    priced with ``PriceTable.batch()`` (half the standard rate), as the emulator bills them.
    """
    emu.configure(latency=5.0)
    state = tmp_path / "s"
    frame(4).pipe(batch_llm, wait=False, state=state, **KW)
    emu.advance(10.0)  # ended at the provider, collected by the realtime call below
    out = frame(6).pipe(batch_llm, mode="realtime", state=state, **KW)
    assert out["_status"].to_list() == ["completed"] * 6, out["_error"].to_list()
    assert out["_mode"].to_list() == ["batch"] * 4 + ["realtime"] * 2
    usage = sql("SELECT job_id, input_tokens, output_tokens FROM jobs", state)
    by_id = {r["job_id"]: r for r in usage.iter_rows(named=True)}
    for job_id, mode, cost in out.select("_job_id", "_mode", "_cost_usd").iter_rows():
        u = by_id[job_id]
        billed = billed_usd("openai", "gpt-4.1-mini", input_tokens=u["input_tokens"],
                            output_tokens=u["output_tokens"], mode=mode)  # fmt: skip
        assert cost == pytest.approx(billed, rel=1e-12), (mode, cost, billed)
    assert Counter(e["mode"] for e in emu.billing()) == {"batch": 4, "realtime": 2}
