"""The command line, run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import polars as pl


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "batchata_df.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_run_status_and_sql(emu, tmp_path):
    src = tmp_path / "in.parquet"
    pl.DataFrame({"text": ["a", "b", "c"]}).write_parquet(src)
    (tmp_path / "schema_mod.py").write_text(
        "from pydantic import BaseModel\nclass A(BaseModel):\n    label: str\n    n: int\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = tmp_path / "out.parquet"
    r = cli("run", str(src), str(out), "--model", "gpt-4.1-mini", "--prompt", "{text}",
            "--schema", "schema_mod:A", "--state", str(tmp_path / "s"), "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    result = pl.read_parquet(out)
    assert result["_status"].to_list() == ["completed"] * 3
    assert result.schema["n"] == pl.Int64
    r = cli("status", str(tmp_path / "s"), env=env)
    assert r.returncode == 0 and "completed" in r.stdout
    r = cli("sql", "select count(*) as n from jobs", str(tmp_path / "s"), env=env)
    assert r.returncode == 0 and "3" in r.stdout


def test_errors_are_one_line_and_exit_2(emu, tmp_path):
    src = tmp_path / "in.parquet"
    pl.DataFrame({"text": ["a"]}).write_parquet(src)
    r = cli("run", str(src), "--model", "gpt-4.1-mini", "--prompt", "{txt}",
            "--state", str(tmp_path / "s"), "--quiet")
    assert r.returncode == 2
    assert "did you mean 'text'" in r.stderr and "Traceback" not in r.stderr
