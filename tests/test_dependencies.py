"""What a plain ``pip install batchata-df`` gives must be enough for the core paths.

The test venv holds the ``dev`` extra, which pulls in packages the library never declares
(numpy came only through matplotlib, so ``sink=`` and the CLI's ``run`` failed with
``No module named 'numpy'`` on an install without it). These tests run the installed CLI
and a streamed ``batch_llm`` in a child whose imports are limited to the standard library,
batchata_df and the distributions its core ``dependencies`` require (transitively, without
extras): any other installed package raises ``ModuleNotFoundError``, as it would on a
user's machine where it is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import polars as pl
import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "batchata-df"


def _core_closure() -> set[str]:
    """Normalised names of batchata-df's core dependencies and everything they require."""
    env = {**default_environment(), "extra": ""}
    seen: set[str] = set()
    todo = [r for r in metadata.requires("batchata-df") or [] if "extra ==" not in r]
    while todo:
        req = Requirement(todo.pop())
        name = req.name.lower().replace("_", "-")
        if name in seen or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        seen.add(name)
        todo.extend(metadata.requires(req.name) or [])
    return seen


def _blocked_modules() -> list[str]:
    """Top-level modules installed here by distributions outside the core closure."""
    allowed = _core_closure() | {"batchata-df"}
    blocked: set[str] = set()
    for module, dists in metadata.packages_distributions().items():
        names = {d.lower().replace("_", "-") for d in dists}
        if not names & allowed and module not in sys.stdlib_module_names:
            blocked.add(module)
    return sorted(blocked)


HOOK = """
import importlib.abc, sys
BLOCKED = frozenset({blocked!r})

class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not a declared "
                                      "dependency of batchata-df)", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""


@pytest.fixture
def core_only(emu, tmp_path: Path) -> dict[str, str]:
    """Environment for a child that sees only the core install (and the emulator's env)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK.format(blocked=_blocked_modules()))
    env = dict(os.environ)
    env.update(emu.env())
    env["PYTHONPATH"] = os.pathsep.join([str(hook), str(REPO)])
    return env


def test_the_block_list_holds_what_the_dev_extra_adds_and_not_the_core() -> None:
    blocked = set(_blocked_modules())
    assert {"matplotlib", "pytest", "hypothesis", "duckdb", "rich"} <= blocked
    assert not {"polars", "pyarrow", "pydantic", "openai", "click", "filelock"} & blocked
    assert "numpy" not in blocked  # declared: the streaming path imports it


def test_the_cli_runs_a_parquet_file_with_the_core_install_alone(
    core_only: dict[str, str], tmp_path: Path, emu
) -> None:
    pl.DataFrame({"text": ["a", "b", "c"]}).write_parquet(tmp_path / "in.parquet")
    done = subprocess.run(
        [str(EXE), "run", "in.parquet", "out.parquet", "--model", "gpt-4.1-mini",
         "--prompt", "Say: {text}", "--no-progress"],
        cwd=tmp_path, env=core_only, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out.get_column("text").to_list() == ["a", "b", "c"]
    assert out.get_column("_status").to_list() == ["completed"] * 3
    assert len(emu.billing()) == 3


def test_a_streamed_call_and_an_in_memory_call_run_with_the_core_install_alone(
    core_only: dict[str, str], tmp_path: Path
) -> None:
    pl.DataFrame({"text": ["a", "b"]}).write_parquet(tmp_path / "in.parquet")
    script = textwrap.dedent(
        """
        import sys
        import polars as pl
        from batchata_df import batch_llm
        lf = pl.scan_parquet("in.parquet")
        streamed = batch_llm(lf, model="gpt-4.1-mini", prompt="Say: {text}",
                             sink="out.parquet", progress=False).collect()
        in_memory = batch_llm(lf.collect(), model="gpt-4.1-mini", prompt="Say: {text}",
                              progress=False)
        print(streamed.get_column("_status").to_list(), in_memory.get_column("_status").to_list())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=core_only,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['completed',", "'completed']", "['completed',",
                                   "'completed']"]
