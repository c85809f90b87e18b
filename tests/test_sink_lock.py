"""One live writer per sink file: ``batch_llm(sink=...)`` and ``batchata-df run``.

The command held OUTPUT for a whole run (its locked hidden folder beside it), but a
``sink=`` call showed itself only while it assembled the sink, after paying: a library call
and a run (or two library calls) with different state folders on one file both sent every
row. A ``sink=`` call now holds the same kind of folder for the whole call and looks for
another writer before anything is sent. Each side here is a real process (the library in a
Python child, the installed command) against the emulator, counting what it billed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

EXE = Path(sys.executable).with_name("batchata-df")
REPO = Path(__file__).resolve().parents[1]
N = 20

# A library call in a child: batch_llm(sink=SINK, state=STATE, lock_timeout=SECONDS).
LIBRARY = textwrap.dedent(
    """
    import sys

    import polars as pl

    from batchata_df import SinkLockedError, batch_llm

    sink, state, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    try:
        out = batch_llm(pl.scan_parquet("in.parquet"), sink=sink, state=state,
                        model="gpt-4.1-mini", prompt="{text}", lock_timeout=timeout,
                        progress=False)
    except SinkLockedError as e:
        print("REFUSED", e.holder.pid if e.holder else None, "|", e, flush=True)
        sys.exit(7)
    print("OK", out.select(pl.len()).collect().item(), flush=True)
    """
)


def _env(emu) -> dict[str, str]:
    env = dict(os.environ)
    env.update(emu.env())
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture
def work(emu, tmp_path: Path) -> Path:
    pl.DataFrame({"id": range(N), "text": [f"ticket {i}" for i in range(N)]}).write_parquet(
        tmp_path / "in.parquet"
    )
    (tmp_path / "library.py").write_text(LIBRARY)
    return tmp_path


def _library(emu, work: Path, sink: str, state: str, timeout: float = 0.0
             ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "library.py", sink, state, str(timeout)], cwd=work, env=_env(emu),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _run(emu, work: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(EXE), "run", "in.parquet", "out.parquet", "--model", "gpt-4.1-mini",
         "--prompt", "{text}", "--no-progress", *args],
        cwd=work, env=_env(emu), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _batch_posts(emu) -> int:
    return len([e for e in emu.log() if e["method"] == "POST" and e["path"].endswith("/batches")])


def _billed(emu) -> Counter[str]:
    return Counter(e["custom_id"] for e in emu.billing())


def _in_flight(emu, proc: subprocess.Popen[str]) -> None:
    """Wait until ``proc`` has its batch in flight (the emulator holds it: latency).

    The request is logged when it arrives and billed as it is handled: both are waited for.
    """
    deadline = time.monotonic() + 120
    while _batch_posts(emu) < 1 or sum(_billed(emu).values()) < N:
        assert proc.poll() is None, proc.communicate(timeout=60)
        assert time.monotonic() < deadline, "the first writer never submitted its batch"
        time.sleep(0.05)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


@pytest.mark.parametrize("first", ["run", "library"])
def test_a_sink_call_and_a_run_on_one_file_never_both_pay(emu, work, procs, first):
    """A run (or a sink= call) has its batch in flight on out.parquet; a sink= call on the
    same file with another state folder is refused before sending (SinkLockedError naming
    the other process and the fix); so is a run (exit 75) beside a sink= call."""
    emu.configure(latency=1000.0)
    holder = _run(emu, work, "--state", "s1") if first == "run" else _library(
        emu, work, "out.parquet", "s1")
    procs.append(holder)
    _in_flight(emu, holder)
    assert sum(_billed(emu).values()) == N

    if first == "run":
        code, out, err = _finish(_library(emu, work, "out.parquet", "s2"))
        assert code == 7, (code, out, err)
        assert out.startswith(f"REFUSED {holder.pid} | sink='out.parquet' is being written "
                              "by another call or run: batchata-df run, "), out
        assert "lock_timeout=<seconds>" in out and "write another sink" in out
        assert "Nothing was sent" in out
    else:
        code, out, err = _finish(_run(emu, work, "--state", "s2", "--no-wait"))
        assert code == 75, (code, out, err)
        assert f"batch_llm(sink=...), pid {holder.pid} " in err, err
        assert "s1" in err and "--lock-timeout SECONDS" in err
    assert _batch_posts(emu) == 1 and sum(_billed(emu).values()) == N  # nothing sent
    assert not (work / "s2").exists()

    emu.advance(1000.0)
    code, out, err = _finish(holder)
    assert code == 0, (code, out, err)
    assert pl.read_parquet(work / "out.parquet")["id"].to_list() == list(range(N))
    assert sorted(p.name for p in work.iterdir()) == [
        "in.parquet", "library.py", "out.parquet", "s1"]


def test_two_sink_calls_on_one_file_one_refuses_or_waits(emu, work, procs):
    """Two library calls on one sink: the second is refused at once, naming the first;
    with lock_timeout it waits for it, and with the first's state folder pays nothing."""
    emu.configure(latency=1000.0)
    holder = _library(emu, work, "out.parquet", "s1")
    procs.append(holder)
    _in_flight(emu, holder)

    code, out, err = _finish(_library(emu, work, "out.parquet", "s2"))
    assert code == 7, (code, out, err)
    assert out.startswith(f"REFUSED {holder.pid} | sink='out.parquet' is being written by "
                          "another call or run: batch_llm(sink=...), "), out
    assert _batch_posts(emu) == 1 and sum(_billed(emu).values()) == N

    waiter = _library(emu, work, "out.parquet", "s1", timeout=600)
    procs.append(waiter)
    time.sleep(1.0)  # it looks, finds the holder, and waits (nothing to observe but this)
    assert waiter.poll() is None and _batch_posts(emu) == 1
    emu.advance(1000.0)
    assert _finish(holder)[:2] == (0, f"OK {N}\n")
    assert _finish(waiter)[:2] == (0, f"OK {N}\n")
    assert _batch_posts(emu) == 1
    assert set(_billed(emu).values()) == {1} and len(_billed(emu)) == N
    assert sorted(p.name for p in work.iterdir()) == [
        "in.parquet", "library.py", "out.parquet", "s1"]
