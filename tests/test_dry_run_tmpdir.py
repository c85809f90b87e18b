"""A dry run leaves nothing in the temporary folder once its plan is no longer needed.

A streamed dry run (``batch_llm(lf, sink=..., dry_run=True)``) writes its plan, about the
input's size, to ``plan.parquet`` in a new folder under ``TMPDIR`` and returns a LazyFrame
over it. The folder stayed until the Python process exited: a notebook, a service or a
program calling the CLI's ``main`` in-process re-running dry runs filled the disk. Now it
goes with the last LazyFrame that reads it (a frame derived from the plan, a filter or a
select, keeps it); the in-memory dry run writes nothing there.
"""

from __future__ import annotations

import gc
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
