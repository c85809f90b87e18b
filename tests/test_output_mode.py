"""Outputs get the mode any file the user writes gets (0666 less the umask), not 0600.

A pipeline's result is often read by another account of the same group; ``tempfile``'s
private 0600 files, renamed into place, would lock it out (reviewer's finding).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from batchata_df import batch_llm

REPO = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "batchata-df"


@pytest.fixture
def umask() -> Iterator[int]:
    mask = 0o027
    old = os.umask(mask)
    try:
        yield mask
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_sink_gets_the_umask_s_mode(emu, tmp_path: Path, umask: int) -> None:
    out = tmp_path / "out.parquet"
    batch_llm(pl.LazyFrame({"text": ["a", "b"]}), model="gpt-4.1-mini", prompt="{text}",
              sink=out).collect()
    assert _mode(out) == 0o666 & ~umask == 0o640


@pytest.mark.parametrize("name", ["out.parquet", "out.csv", "out.ndjson"])
def test_the_cli_s_output_gets_the_umask_s_mode(
    emu, tmp_path: Path, umask: int, name: str
) -> None:
    pl.DataFrame({"text": ["a", "b"]}).write_parquet(tmp_path / "in.parquet")
    env = {**os.environ, **emu.env(), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [str(EXE), "run", "in.parquet", name, "--model", "gpt-4.1-mini", "--prompt", "{text}",
         "--no-progress"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert _mode(tmp_path / name) == 0o640
