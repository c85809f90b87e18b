"""The example notebooks run top to bottom in a real Jupyter kernel against the bundled
emulator, and the committed copies carry their outputs. The committed files are never
rewritten here (``python3 dev.py notebooks`` does that)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import threading
import time
from pathlib import Path

import nbclient
import nbformat
import pytest

from batchata_df.models import TODAY_VAR

FOLDER = Path(__file__).parent.parent / "notebooks"
LATER_TODAY = "2027-06-30"
"""The date the notebooks run at here: after every shutdown announced before mid-2027
(``batchata_df.models.SCHEDULED``), when a new user may well run them."""
NOTEBOOKS = ["quickstart", "documents", "cost_control", "long_runs", "realtime"]

# What each notebook must show when it runs (plain-text outputs, joined).
EXPECTED = {
    "quickstart": [
        "38 of 38 jobs completed, 0 failed, 0 cancelled",
        "provider batches created by the second call: 0",
        "same answers: True",
        "'sentiment': \"Enum(categories=['positive', 'negative', 'neutral'])\"",
    ],
    "documents": [
        "3 of 3 jobs completed",
        "supplier_audit.pdf",
        "page 1",
        "chars ",
        "not cited",
    ],
    "cost_control": [
        "dry run, nothing was sent. rows: 37 planned, 3 duplicate",
        "cap $0.02: ",
        "cancelled: cost_limit",
        "stopped (time_limit)",
        "cancelled: time_limit",
        "gpt-6-luna",
        "claude-sonnet-4-6",
        "CapSerialisedWarning: max_cost_usd=0.02 serialised this run",
    ],
    "long_runs": [
        "submit_failed",
        "schema_validation",
        "requests sent by reparse: 0",
        "11 of 11 jobs completed, 0 failed, 0 cancelled",
    ],
    "realtime": [
        "20 rows realtime in ",
        "s: {'completed': 20}",
        "full frame in ",
        "rows by mode: {'realtime': 21, 'batch': 19}",
        "realtime requests sent by the batch call: 0",
        "requests billed twice: 0",
        "usd_per_request",
    ],
}


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.output_type == "stream":
                out.append(o.text)
            elif "data" in o:
                out.append(o.data.get("text/plain", ""))
                out.append(o.data.get("text/html", ""))
    return "\n".join(out)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_carries_its_outputs(name):
    nb = nbformat.read(FOLDER / f"{name}.ipynb", as_version=4)
    intro = nb.cells[0].source
    assert nb.cells[0].cell_type == "markdown" and "emulated" in intro
    setup = nb.cells[1].source
    assert "Emulator(" in setup and "_API_KEY" in setup  # the one line to change
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "run python3 dev.py notebooks"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    text = _text(nb)
    for expected in EXPECTED[name]:
        assert expected in text, expected
    # an example never teaches settings the library warns about before sending
    assert not re.search(r"(ThinkingRoom|ModelShutdown)Warning", text), name
    if name == "cost_control":  # a picture, not a table
        assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)


def _execute(name: str, work: Path) -> object:
    nb = nbformat.read(work / f"{name}.ipynb", as_version=4)
    for cell in nb.cells:  # run from a clean slate, not the committed outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        # A kernel starting beside others on a loaded machine can take minutes (the
        # default startup_timeout, 60 s, then tore the client down, which can hang).
        nb, timeout=300, startup_timeout=600, kernel_name="python3", record_timing=False,
        resources={"metadata": {"path": str(work)}},
    )
    # A loop of this thread's own, closed at the end (raises CellExecutionError on errors).
    # The kernel (and the emulator the notebook starts) reads the shutdown schedules and
    # genai-prices' dated prices at LATER_TODAY, not the suite's pinned date: a user
    # re-running the notebooks after every announced shutdown must get the same run.
    env = {**os.environ, TODAY_VAR: LATER_TODAY}
    asyncio.run(client.async_execute(env=env))
    return nb


NOTEBOOKS_DEADLINE_S = 1200
"""How long the kernels may take in all before their notebooks fail as hung."""


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict[str, object]:
    """Every notebook executed on a copy, all kernels at once (they mostly wait on the
    emulator's batch latency, so running them side by side saves minutes of the suite).

    Each runs in a daemon thread, waited for until :data:`NOTEBOOKS_DEADLINE_S`: a kernel
    that hangs fails its notebook's test instead of the suite. (jupyter_client's heartbeat
    thread can block forever on a kernel that never answered, and joining it hung a
    ``ThreadPoolExecutor``'s exit, the test's timeout included, which raised into that exit.)
    """
    work = tmp_path_factory.mktemp("nb") / "notebooks"
    shutil.copytree(FOLDER, work, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    before = {n: _digest(FOLDER / f"{n}.ipynb") for n in NOTEBOOKS}
    out: dict[str, object] = {}

    def run(name: str) -> None:
        try:
            out[name] = _execute(name, work)
        except Exception as e:  # reported by the test of that notebook
            out[name] = e

    threads = {n: threading.Thread(target=run, args=(n,), name=f"notebook {n}", daemon=True)
               for n in NOTEBOOKS}  # fmt: skip
    for thread in threads.values():
        thread.start()
    deadline = time.monotonic() + NOTEBOOKS_DEADLINE_S
    for n, thread in threads.items():
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            out[n] = TimeoutError(f"notebook {n} did not finish in {NOTEBOOKS_DEADLINE_S} s")
    # The committed notebooks were not touched.
    assert {n: _digest(FOLDER / f"{n}.ipynb") for n in NOTEBOOKS} == before
    return out


@pytest.mark.timeout(NOTEBOOKS_DEADLINE_S + 120)  # the first one sets up ``executed``
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_against_the_emulator(name, executed):
    nb = executed[name]
    if isinstance(nb, Exception):
        raise nb
    text = _text(nb)
    for expected in EXPECTED[name]:
        assert expected in text, expected
    # an example never teaches settings the library warns about before sending
    assert not re.search(r"(ThinkingRoom|ModelShutdown)Warning", text), name


_MODEL = r"(?<![\w.-])((?:gpt|o\d|claude|gemini)[\w.-]*)(?![\w.-])"


def _example_code() -> list[tuple[str, str]]:
    """(where, code) of every notebook code cell, every code block of the README, the
    installed CLI's help of every command (its examples) and every docstring example
    line of the package that passes ``model=``."""
    import re
    import subprocess
    import sys

    out = []
    for name in NOTEBOOKS:
        nb = nbformat.read(FOLDER / f"{name}.ipynb", as_version=4)
        out += [(f"{name}.ipynb", c.source) for c in nb.cells if c.cell_type == "code"]
    readme = (FOLDER.parent / "README.md").read_text()
    out += [("README.md", m) for m in re.findall(r"```(?:python|bash)\n(.*?)```", readme, re.S)]
    exe = Path(sys.executable).with_name("batchata-df")
    from batchata_df.cli import cli

    for args in [["--help"]] + [[name, "--help"] for name in sorted(cli.commands)]:
        shown = subprocess.run([exe, *args], capture_output=True, text=True, check=True).stdout
        out.append((f"batchata-df {' '.join(args)}", shown))
    package = FOLDER.parent / "batchata_df"
    for path in sorted(package.rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*(>>>|\.\.\.) .*\bmodel=", line):
                out.append((f"{path.relative_to(package.parent)}:{n}", line))
    return out


def test_examples_teach_no_model_with_an_announced_shutdown():
    """What a new user copies (the notebooks, the README's code) names models that stay:
    none in SCHEDULED (announced shutdowns) or RETIRED, whatever the date."""
    import re

    from batchata_df.models import RETIRED, scheduled_shutdown

    found = []
    for where, code in _example_code():
        code = re.sub(r"(^|\s)#.*", "", code)  # a comment may name a retired model
        for model in set(re.findall(_MODEL, code)):
            for provider in ("openai", "anthropic", "gemini"):
                gone = any(p == provider and re.fullmatch(r, model) for p, r, *_ in RETIRED)
                if gone or scheduled_shutdown(provider, model):
                    found.append((where, model))
    assert not found
