"""What a new user runs first works the same on a later date than the suite's pinned one.

The suite pins the date the shutdown schedules and genai-prices' dated prices are read at
(root ``conftest.py``); a user cloning the project in 2027 runs unpinned, on the real date.
These run, each in a child process, at :data:`LATER`, after every shutdown announced
before mid-2027 (``batchata_df.models.SCHEDULED``): the README's first command (the demo)
and the docstring examples that run against the emulator (``--noconftest``: the root
conftest would pin the date again). The notebooks run at that date in
``tests/test_notebooks.py``, which also checks the models the README, the notebooks, the
CLI's help and the docstrings' ``model=`` examples name against the schedules.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from batchata_df.models import BASE_URL_VARS, SCHEDULED, TODAY_VAR

REPO = Path(__file__).resolve().parents[1]
LATER = "2027-06-30"


def later_env() -> dict[str, str]:
    """This environment at :data:`LATER`, without the session emulator's base URLs."""
    env = {k: v for k, v in os.environ.items() if k not in BASE_URL_VARS.values()}
    return {**env, TODAY_VAR: LATER}


def test_later_is_after_every_shutdown_announced_before_mid_2027():
    dates = [date for _, _, date, *_ in SCHEDULED]
    assert [d for d in dates if d < "2027-07-01"] == [d for d in dates if d <= LATER]
    assert max(d for d in dates if d < "2027-07-01") < LATER


def test_the_demo_runs_the_same_after_the_announced_shutdowns(tmp_path):
    # README: "python3 dev.py demo" runs `python -m batchata_df.demo` in the venv.
    demo = subprocess.run(
        [sys.executable, "-m", "batchata_df.demo", "--latency", "0.2", "--state",
         str(tmp_path / "state")],
        cwd=tmp_path, env=later_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    shown = demo.stdout + demo.stderr
    assert demo.returncode == 0, shown
    assert "38 of 38 jobs completed, 0 failed, 0 cancelled" in shown, shown
    assert "Warning" not in demo.stderr, demo.stderr


def test_the_docstring_examples_on_the_emulator_pass_after_the_announced_shutdowns():
    runs_emulator = re.compile(r"^\s*(>>>|\.\.\.) .*\bEmulator\(", re.M)
    modules = sorted(
        str(p.relative_to(REPO)) for p in (REPO / "batchata_df").rglob("*.py")
        if runs_emulator.search(p.read_text())
    )  # fmt: skip
    # batch_llm, reparse, df.llm.batch and the compat Batch: what a user copies first.
    assert {"batchata_df/frame.py", "batchata_df/namespace.py", "batchata_df/compat.py"} <= set(
        modules
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
         "--noconftest", *modules],
        cwd=REPO, env=later_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert re.search(r"\d+ passed", run.stdout), run.stdout[-2000:]
