"""``mode="auto"``: small jobs and what a batch would not finish by the deadline go realtime.

The deadline switch runs on an injected clock (the emulator's batches never finish on
their own: latency one hour), so the test decides when "late" is without waiting.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import openai
import polars as pl
import pytest
from pydantic import BaseModel

import batchata_df.engine.auto as auto_module
from batchata_df import batch_llm
from batchata_df.engine.auto import AUTO_REALTIME_MAX_JOBS, realtime_seconds
from batchata_df.engine.clock import FakeClock


class Answer(BaseModel):
    label: str


KW = {"schema": Answer, "prompt": "Say {t}", "model": "gpt-4.1-mini"}


def frame(n: int) -> pl.DataFrame:
    return pl.DataFrame({"t": [f"row {i}" for i in range(n)]})


def batches_created(emu) -> int:
    return len([e for e in emu.log() if e["method"] == "POST" and e["path"].endswith("/batches")])


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(auto_module, "SystemClock", lambda: fake)
    return fake


def test_a_job_too_small_for_a_batch_goes_realtime(emu) -> None:
    out = frame(AUTO_REALTIME_MAX_JOBS).pipe(batch_llm, mode="auto", **KW)
    assert out["_status"].to_list() == ["completed"] * AUTO_REALTIME_MAX_JOBS
    assert out["_mode"].to_list() == ["realtime"] * AUTO_REALTIME_MAX_JOBS
    assert batches_created(emu) == 0


def test_a_larger_job_without_deadline_goes_by_batch(emu) -> None:
    n = AUTO_REALTIME_MAX_JOBS + 1
    out = frame(n).pipe(batch_llm, mode="auto", **KW)
    assert out["_mode"].to_list() == ["batch"] * n
    assert batches_created(emu) == 1
    assert [e["mode"] for e in emu.billing()] == ["batch"] * n


def test_a_deadline_too_near_for_a_batch_sends_everything_realtime(emu) -> None:
    n = 60
    assert realtime_seconds(n, 8) > 200
    out = frame(n).pipe(batch_llm, mode="auto", deadline=200, **KW)
    assert out["_mode"].to_list() == ["realtime"] * n
    assert batches_created(emu) == 0


def test_batches_late_for_the_deadline_are_cancelled_and_the_rest_sent_realtime(
    emu, tmp_path: Path, clock: FakeClock
) -> None:
    emu.configure(latency=3600)  # the batch will not finish by itself
    n, deadline = 60, 1000.0
    switch = deadline - realtime_seconds(n, 8)
    state = tmp_path / "s"
    out = frame(n).pipe(batch_llm, mode="auto", deadline=deadline, state=state, **KW)
    assert out["_status"].to_list() == ["completed"] * n
    assert out["_mode"].to_list() == ["realtime"] * n
    # It waited for the batch until the last moment that leaves time to answer in realtime.
    assert switch <= clock.now - 1000.0 < switch + 61
    cancels = [e for e in emu.log() if e["path"].endswith("/cancel")]
    assert batches_created(emu) == 1 and len(cancels) == 1
    assert Counter(e["mode"] for e in emu.billing()) == {"realtime": n}  # none ran in batch
    again = frame(n).pipe(batch_llm, mode="auto", deadline=deadline, state=state, **KW)
    assert again.equals(out)
    assert len(emu.billing()) == n


def test_rows_answered_by_the_batch_before_the_switch_are_not_sent_again(
    emu, tmp_path: Path, clock: FakeClock
) -> None:
    n = 60
    emu.configure(latency=3600)
    state = tmp_path / "s"
    first = frame(n).pipe(batch_llm, state=state, wait=False, **KW)  # half the rows ...
    assert first["_status"].to_list() == ["pending"] * n
    emu.advance(3600)  # ... answered by a batch
    more = frame(2 * n)
    out = more.pipe(batch_llm, mode="auto", deadline=1000.0, state=state, **KW)
    assert out["_status"].to_list() == ["completed"] * (2 * n)
    assert out["_mode"].to_list() == ["batch"] * n + ["realtime"] * n
    counts = Counter(e["request"] for e in emu.billing())
    assert max(counts.values()) == 1 and len(counts) == 2 * n


def test_auto_dry_run_says_which_rows_would_go_realtime(emu) -> None:
    small = frame(10).pipe(batch_llm, mode="auto", dry_run=True, **KW)
    big = frame(60).pipe(batch_llm, mode="auto", dry_run=True, **KW)
    assert small["_mode"].to_list() == ["realtime"] * 10
    assert big["_mode"].to_list() == ["batch"] * 60
    assert emu.log() == []


def test_cli_runs_realtime_and_auto(emu, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("batchata-df")
    frame(3).write_parquet(tmp_path / "in.parquet")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    base = [str(exe), "run", "in.parquet"]
    args = ["--model", "gpt-4.1-mini", "--prompt", "Say {t}", "--no-progress"]
    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *extra], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=240)  # fmt: skip

    rt = run("rt.parquet", *args, "--mode", "realtime", "--concurrency", "2")
    assert rt.returncode == 0, rt.stderr
    auto = run("auto.parquet", *args, "--mode", "auto", "--deadline", "10m")
    assert auto.returncode == 0, auto.stderr
    for name in ("rt.parquet", "auto.parquet"):
        out = pl.read_parquet(tmp_path / name)
        assert out["_mode"].to_list() == ["realtime"] * 3
        assert out["_status"].to_list() == ["completed"] * 3
    bad = run("x.parquet", *args, "--deadline", "10m")
    assert bad.returncode == 2
    # In the command's words: its options, not batch_llm's arguments.
    assert "--deadline is for --mode auto" in bad.stderr, bad.stderr
    assert "use --time-limit" in bad.stderr and "deadline=" not in bad.stderr
    assert batches_created(emu) == 0


def test_cli_refuses_concurrency_with_the_batch_mode_in_its_options(emu, tmp_path: Path) -> None:
    """``--concurrency`` with the default ``--mode batch`` bounds nothing (batches are sent);
    exit 2 before anything is sent, naming the options to fix it, not ``concurrency=``."""
    exe = Path(sys.executable).with_name("batchata-df")
    frame(3).write_parquet(tmp_path / "in.parquet")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for extra in ((), ("--mode", "batch"), ("--dry-run",)):
        bad = subprocess.run(
            [str(exe), "run", "in.parquet", "out.parquet", "--model", "gpt-4.1-mini",
             "--prompt", "Say {t}", "--no-progress", "--concurrency", "4", *extra],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert bad.returncode == 2, (extra, bad.stderr)
        said = bad.stderr
        assert "--concurrency is for --mode realtime or --mode auto" in said, said
        assert "drop --concurrency" in said and "--max-parallel-batches" in said, said
        assert "concurrency=" not in said and "mode='" not in said, said
    assert emu.log() == []
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("how", ["in_memory", "streamed", "dry_run", "namespace"])
def test_concurrency_with_the_batch_mode_is_refused_before_anything_is_sent(
    emu, tmp_path: Path, how: str
) -> None:
    """``concurrency=`` bounds realtime requests; ``mode="batch"`` sends batches, so it meant
    nothing there (the in-memory call took it and ignored it, the streamed one refused it):
    both refuse it, with the fix, before anything is sent."""
    from batchata_df.errors import ConfigError

    kw = dict(KW, concurrency=4, state=tmp_path / "s")
    with pytest.raises(ConfigError) as info:
        if how == "streamed":
            frame(3).lazy().pipe(batch_llm, sink=tmp_path / "o.parquet", **kw)
        elif how == "namespace":
            frame(3).llm.batch(**kw)
        else:
            frame(3).pipe(batch_llm, dry_run=how == "dry_run", **kw)
    said = str(info.value)
    assert said.startswith("concurrency= is for mode='realtime' or mode='auto'"), said
    assert "got mode='batch'" in said and "drop concurrency=" in said, said
    assert "max_parallel_batches=" in said, said
    assert emu.log() == []
    assert not (tmp_path / "s").exists() and not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize("mode", ["realtime", "auto"])
def test_concurrency_still_bounds_the_realtime_requests_of_realtime_and_auto(
    emu, mode: str
) -> None:
    """What the refusal must leave alone: realtime and auto's realtime part take it."""
    emu.configure(realtime_latency=0.05)
    out = frame(6).pipe(batch_llm, mode=mode, concurrency=2, **KW)
    assert out["_status"].to_list() == ["completed"] * 6
    assert out["_mode"].to_list() == ["realtime"] * 6
    assert 1 <= emu.realtime_stats()["max_in_flight"] <= 2


def test_a_streaming_run_refuses_realtime_before_sending(emu, tmp_path: Path) -> None:
    from batchata_df.errors import ConfigError

    with pytest.raises(ConfigError, match="mode='realtime' does not stream"):
        frame(3).lazy().pipe(batch_llm, mode="realtime", sink=tmp_path / "o.parquet", **KW)
    # concurrency= with the batch mode: the message names concurrency= and the fix.
    with pytest.raises(ConfigError, match=r"^concurrency= is for mode='realtime' or .*drop conc"):
        frame(3).lazy().pipe(batch_llm, concurrency=2, sink=tmp_path / "o.parquet", **KW)
    assert emu.log() == []


def test_rows_left_after_collecting_batches_that_used_most_of_the_deadline_go_realtime(
    emu, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch-or-realtime choice after collecting counts the time collecting took.

    An earlier call left two batches in flight: one of 60 rows the provider cancelled
    (its rows are still to send) and one of 4 that ends late in this call's deadline
    (1000 s). Once both are collected the deadline is nearer than the 60 rows need in
    realtime (though the whole deadline is not): no new batch, they go realtime at once.
    """
    emu.configure(latency=3600, cancel_delay=0.0)
    state = tmp_path / "s"
    n, left, deadline = 64, 60, 1000.0
    first = frame(n).pipe(batch_llm, state=state, wait=False, items_per_batch=left, **KW)
    assert first["_status"].to_list() == ["pending"] * n
    sdk = openai.OpenAI(api_key="sk-test", base_url=emu.openai_base_url, max_retries=0)
    sizes = {b.id: len(sdk.files.content(b.input_file_id).text.splitlines())
             for b in sdk.batches.list()}  # fmt: skip
    big = [b for b, size in sizes.items() if size == left]
    assert len(big) == 1 and batches_created(emu) == 2
    sdk.batches.cancel(big[0])  # before any of its requests ran
    needed = realtime_seconds(left, 8)
    assert left > AUTO_REALTIME_MAX_JOBS and needed < deadline
    start = clock.now
    ended: list[float] = []

    def end_late(now: float) -> None:  # the small batch ends when less time is left
        if not ended and deadline - (now - start) < needed:
            ended.append(now - start)
            emu.advance(3600)

    clock.on_wait.append(end_late)
    decisions: list[str] = []
    run = auto_module.AutoEngine.run

    def spy(self, *args, **kwargs):
        try:
            return run(self, *args, **kwargs)
        finally:
            decisions.append(self.decision)

    monkeypatch.setattr(auto_module.AutoEngine, "run", spy)
    out = frame(n).pipe(batch_llm, mode="auto", deadline=deadline, state=state, **KW)
    assert ended and clock.now - start == ended[0]  # no wait after the collection
    assert len(decisions) == 1 and f"{left} jobs need about" in decisions[0], decisions
    assert out["_status"].to_list() == ["completed"] * n, out["_error"].to_list()
    assert out["_mode"].to_list() == ["realtime"] * left + ["batch"] * (n - left)
    assert batches_created(emu) == 2  # the earlier call's: none for the rows left
    assert len([e for e in emu.log() if e["path"].endswith("/cancel")]) == 1  # ours above
    assert Counter(e["mode"] for e in emu.billing()) == {"batch": n - left, "realtime": left}
