"""A dry run leaves nothing in the temporary folder once its plan is no longer needed.

A streamed dry run (``batch_llm(lf, sink=..., dry_run=True)``) writes its plan, about the
input's size, to ``plan.parquet`` in a new folder under ``TMPDIR`` and returns a LazyFrame
over it. The folder stayed until the Python process exited: a notebook, a service or a
program calling the CLI's ``main`` in-process re-running dry runs filled the disk. Now it
goes with the last LazyFrame that reads it (a frame derived from the plan, a filter or a
select, keeps it); the in-memory dry run writes nothing there. A process killed with
SIGKILL runs no clean-up and leaves its folder: the next dry run, in any process, removes
it (its lock is free), never the folder of a live process that still reads its plan.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
import pytest

from batchata_df import batch_llm
from batchata_df.cli import main

TEXTS = [f"item {i}" for i in range(9)]
KW: dict[str, object] = {"model": "gpt-4.1-mini", "prompt": "Say {text}", "progress": False}


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR, as the process reads it (``tempfile`` caches it at the first look)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _listed(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


HOLDER = """
import json, os, sys
import polars as pl
from batchata_df import batch_llm

plan = batch_llm(pl.scan_parquet(sys.argv[1]), sink=sys.argv[2], chunk_rows=4, dry_run=True,
                 model="gpt-4.1-mini", prompt="Say {text}", progress=False)
print(json.dumps(sorted(os.listdir(os.environ["TMPDIR"]))), flush=True)
sys.stdin.readline()  # holds the plan until told to read it
got = plan.collect()
print(json.dumps([got["i"].to_list(), got["_status"].to_list()]), flush=True)
"""
"""A process that makes a streamed dry run, says what TMPDIR holds, and keeps the plan
(its LazyFrame) until a line comes on stdin; then it reads the plan and prints it."""


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "in.parquet"
    pl.DataFrame({"i": range(9), "text": TEXTS}).write_parquet(path)
    return path


def _holder(source: Path, sink: Path) -> tuple[subprocess.Popen[str], list[str]]:
    """A :data:`HOLDER` process (TMPDIR and the emulator's settings from the environment)
    holding its plan, and what TMPDIR held once it was made."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(source), str(sink)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.kill()
        _, err = child.communicate()
        raise AssertionError(err[-3000:])
    return child, json.loads(line)


def test_a_killed_dry_runs_plan_is_removed_by_the_next_dry_run_in_another_process(
    emu, tmp_path, tmp, source
):
    child, listed = _holder(source, tmp_path / "out.parquet")
    (left,) = listed
    assert left.startswith("batchata-df-plan-") and (tmp / left / "plan.parquet").is_file()
    os.kill(child.pid, signal.SIGKILL)  # no finally, no atexit, no finalizer runs
    child.communicate()
    assert child.returncode == -signal.SIGKILL
    assert _listed(tmp) == [left]  # what a kill -9 leaves (about the input's size)
    # A new dry run, in another process: it sees only its own plan, and then nothing.
    other, listed = _holder(source, tmp_path / "out.parquet")
    out, err = other.communicate("read\n", timeout=240)
    assert other.returncode == 0, err[-3000:]
    (mine,) = listed
    assert mine != left and mine.startswith("batchata-df-plan-")
    assert json.loads(out) == [list(range(9)), ["planned"] * 9]
    assert _listed(tmp) == []  # the new one's own plan went at its exit
    assert emu.billing() == []


def test_a_dry_run_never_removes_the_plan_of_a_live_process(emu, tmp_path, tmp, source):
    child, (held,) = _holder(source, tmp_path / "out.parquet")
    try:
        # Here, another process: two dry runs, each making its plan folder (and sweeping).
        for _ in range(2):
            plan = batch_llm(pl.scan_parquet(source), sink=tmp_path / "out.parquet",  # type: ignore[arg-type]
                             chunk_rows=4, dry_run=True, **KW)  # fmt: skip
            assert held in _listed(tmp) and len(_listed(tmp)) == 2
            # And a second plan in one process leaves the first (flock: per descriptor).
            later = batch_llm(pl.scan_parquet(source), sink=tmp_path / "out.parquet",  # type: ignore[arg-type]
                              chunk_rows=4, dry_run=True, **KW)  # fmt: skip
            assert plan.collect()["i"].to_list() == list(range(9))
            assert later.collect()["i"].to_list() == list(range(9))
            del plan, later
            gc.collect()
        assert _listed(tmp) == [held]
        out, err = child.communicate("read\n", timeout=240)
        assert child.returncode == 0, err[-3000:]
        assert json.loads(out) == [list(range(9)), ["planned"] * 9]  # its plan still reads
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert _listed(tmp) == []
    assert emu.billing() == []


def test_a_streamed_plan_lives_as_long_as_a_frame_reads_it(emu, tmp_path, tmp):
    source = tmp_path / "in.parquet"
    pl.DataFrame({"i": range(9), "text": TEXTS}).write_parquet(source)
    sink = tmp_path / "out.parquet"
    plan = batch_llm(pl.scan_parquet(source), sink=sink, chunk_rows=4, dry_run=True, **KW)  # type: ignore[arg-type]
    assert isinstance(plan, pl.LazyFrame)
    (folder,) = _listed(tmp)
    assert folder.startswith("batchata-df-plan-")
    # A frame derived from the plan (the original dropped) still reads it, whole and
    # filtered, in memory or streamed, as many times as asked.
    later = plan.filter(pl.col("i") >= 5).select("i", "_status", "_est_cost_usd")
    whole = plan.collect()
    del plan
    gc.collect()
    assert whole["_status"].to_list() == ["planned"] * 9 and whole["i"].to_list() == list(range(9))
    assert float(whole["_est_cost_usd"].sum()) > 0
    for engine in ("in-memory", "streaming"):
        got = later.collect(engine=engine)  # type: ignore[arg-type]
        assert got.columns == ["i", "_status", "_est_cost_usd"]
        assert got["i"].to_list() == [5, 6, 7, 8]
        assert got["_est_cost_usd"].to_list() == whole["_est_cost_usd"][5:].to_list()
    assert _listed(tmp) == [folder]
    del later
    gc.collect()
    assert _listed(tmp) == []  # gone with the last frame over it, not at the process's exit
    assert not sink.exists() and emu.billing() == []


def test_an_in_memory_dry_run_writes_nothing_in_tmpdir(emu, tmp):
    for frame in (pl.DataFrame({"text": TEXTS}), pl.LazyFrame({"text": TEXTS})):
        plan = batch_llm(frame, dry_run=True, **KW)  # type: ignore[arg-type]
        assert isinstance(plan, pl.DataFrame) and plan.height == 9
        assert _listed(tmp) == []
    assert emu.billing() == []


@pytest.mark.parametrize("plan_file", [False, True], ids=["summary", "plan_file"])
@pytest.mark.parametrize("mode", ["batch", "realtime"])
def test_the_cli_dry_run_called_in_process_leaves_tmpdir_empty(emu, tmp_path, tmp, mode, plan_file):
    """``batchata_df.cli.main([...])`` from a long-lived program: each dry run's plan is
    gone when it returns (the exit's clean-up never comes)."""
    pl.DataFrame({"text": TEXTS}).write_parquet(tmp_path / "in.parquet")
    plan = ["--plan", str(tmp_path / "plan.parquet")] if plan_file else []
    for _ in range(2):
        code = main(["run", str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"),
                     "--model", "gpt-4.1-mini", "--prompt", "Say {text}", "--mode", mode,
                     "--dry-run", "--no-progress", *plan])  # fmt: skip
        assert code == 0
        gc.collect()
        assert _listed(tmp) == []
    if plan_file:
        written = pl.read_parquet(tmp_path / "plan.parquet")
        assert written["_status"].to_list() == ["planned"] * 9
    assert not (tmp_path / "out.parquet").exists() and emu.billing() == []


FORKER = """
import json, os, sys
import polars as pl
from batchata_df import batch_llm

plan = batch_llm(pl.scan_parquet(sys.argv[1]), sink=sys.argv[2], chunk_rows=4, dry_run=True,
                 model="gpt-4.1-mini", prompt="Say {text}", progress=False)
pid = os.fork()
if pid == 0:  # a helper the script forks: it ends normally (its exit's clean-up runs)
    sys.exit(0)
os.waitpid(pid, 0)
print(json.dumps(sorted(os.listdir(os.environ["TMPDIR"]))), flush=True)
print(json.dumps(plan.collect()["i"].to_list()), flush=True)
"""
"""A script that makes a streamed dry run, forks a child that exits, then reads its plan."""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
def test_a_forked_child_ending_never_removes_its_parent_s_plan(emu, tmp_path, tmp, source):
    """The child inherits the plan's object and its clean-up at exit; the plan is the
    parent's, which still reads it: the child's exit leaves the folder (the parent's own
    clean-up removes it at its exit)."""
    done = subprocess.run(
        [sys.executable, "-c", FORKER, str(source), str(tmp_path / "out.parquet")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    listed, got = (json.loads(line) for line in done.stdout.splitlines())
    assert len(listed) == 1 and listed[0].startswith("batchata-df-plan-")
    assert got == list(range(9))
    assert _listed(tmp) == []  # the parent's exit removed it
