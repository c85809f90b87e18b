"""A new user's review of ``batchata-df`` (session 16), through the installed command.

Each test runs the console script in a subprocess against the emulator, on real files:
a dry run never replaces a result, an input that Polars reads as one (Spark's column
orders, an all-null column) is taken, and the messages say what is wrong.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

EXE = Path(sys.executable).with_name("batchata-df")
REPO = Path(__file__).resolve().parents[1]
N = 6

MODELS = """\
from typing import Literal
from pydantic import BaseModel

class Ticket(BaseModel):
    category: Literal["billing", "bug", "other"]
    urgency: int
"""


def _env(emu) -> dict[str, str]:
    env = dict(os.environ)
    env.update(emu.env())
    env["PYTHONPATH"] = str(REPO)
    return env


def cli(emu, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *map(str, args)], cwd=cwd,
                          env=_env(emu), capture_output=True, text=True, timeout=240)


def one_line_error(r: subprocess.CompletedProcess[str], code: int) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("batchata-df: error: "), lines
    return lines[0]


@pytest.fixture
def work(emu, tmp_path: Path) -> Path:
    (tmp_path / "models.py").write_text(MODELS)
    pl.DataFrame({
        "id": range(N),
        "subject": [f"subject {i}" for i in range(N)],
        "body": [f"body {i}" for i in range(N)],
    }).write_parquet(tmp_path / "t.parquet")
    return tmp_path


RUN = ["run", "t.parquet", "o.parquet", "--model", "gpt-4.1-mini", "--prompt",
       "Route {subject} {body}", "--schema", "models:Ticket"]


# -- P1: a dry run never replaces a result ---------------------------------------------------


def test_a_dry_run_of_the_same_command_leaves_the_result_as_it_is(work, emu):
    """The same command with --dry-run (the help's "what would it cost?") replaced
    o.parquet, a finished result, with the plan: exit 0, "plan written to o.parquet", and
    the answers' columns gone for whatever reads o.parquet next. A dry run writes nothing
    to OUTPUT (it only names the run, and its state folder); --plan FILE writes the plan."""
    r = cli(emu, *RUN, "--no-progress", cwd=work)
    assert r.returncode == 0, r.stderr
    result = (work / "o.parquet").read_bytes()
    assert {"category", "urgency", "_cost_usd"} <= set(pl.read_parquet(work / "o.parquet").columns)
    billed = len(emu.billing())
    assert billed == N

    r = cli(emu, *RUN, "--dry-run", cwd=work)
    assert r.returncode == 0, r.stderr
    assert (work / "o.parquet").read_bytes() == result
    assert "plan written to o.parquet" not in r.stderr
    assert "o.parquet was not written" in r.stderr and "--plan FILE" in r.stderr, r.stderr
    assert f"{N} done" in r.stdout + r.stderr or "done" in r.stdout + r.stderr
    assert len(emu.billing()) == billed

    # The plan where asked: every row already done (the state folder of o.parquet).
    r = cli(emu, *RUN, "--dry-run", "--no-progress", "--plan", "plan.csv", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "plan written to plan.csv" in r.stderr
    assert pl.read_csv(work / "plan.csv")["_status"].to_list() == ["done"] * N
    assert (work / "o.parquet").read_bytes() == result
    assert len(emu.billing()) == billed
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []


def test_a_dry_run_never_creates_output(work, emu):
    """Before the first run a dry run made o.parquet hold the plan: a pipeline waiting
    for o.parquet would have read the plan as the answers."""
    r = cli(emu, *RUN, "--dry-run", "--no-progress", cwd=work)
    assert r.returncode == 0, r.stderr
    assert not (work / "o.parquet").exists()
    assert not (work / "o.parquet.state").exists()
    assert emu.log() == []
    r = cli(emu, "run", "t.parquet", "--model", "gpt-4.1-mini", "--prompt", "{body}",
            "--dry-run", "--no-progress", "--plan", "plan.parquet", cwd=work)
    assert r.returncode == 0, r.stderr
    assert pl.read_parquet(work / "plan.parquet")["_status"].to_list() == ["planned"] * N
    assert emu.log() == []


@pytest.mark.parametrize(("extra", "needle"), [
    (["--plan", "plan.parquet"], "--plan writes a dry run's plan: add --dry-run"),
    (["--dry-run", "--plan", "o.parquet"], "--plan 'o.parquet' is OUTPUT"),
    (["--dry-run", "--plan", "./o.parquet"], "--plan './o.parquet' is OUTPUT"),
    (["--dry-run", "--plan", "t.parquet"], "is the INPUT file 't.parquet'"),
    (["--dry-run", "--plan", "plan.xlsx"], "unsupported file type '.xlsx'"),
])
def test_a_plan_file_that_would_do_harm_is_refused(work, emu, extra, needle):
    line = one_line_error(cli(emu, *RUN, "--no-progress", *extra, cwd=work), 2)
    assert needle in line, line
    assert emu.log() == []
    assert not (work / "o.parquet").exists() and not (work / "plan.parquet").exists()
