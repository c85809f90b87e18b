#!/usr/bin/env python3
"""Set up and run batchata-df's demo or test suite with nothing but Python 3.11+.

Usage::

    python3 dev.py demo     # create .venv, install, run the demo on the bundled emulator
    python3 dev.py test     # create .venv, install with dev extras, lint, type-check, test
    python3 dev.py bench    # the benchmarks (slow; writes benchmarks/results/)
    python3 dev.py notebooks [name ...]   # re-execute notebooks/*.ipynb, save with outputs
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def sh(*args: str | Path) -> None:
    """Run a command in the repository, echoing it; fail on a non-zero exit."""
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], cwd=ROOT, check=True)


def setup(extra: str) -> None:
    """Create .venv if needed and install the package with ``extra`` when it changed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - users may run an older python3
        sys.exit(f"batchata-df needs Python 3.11+, this is {sys.version.split()[0]}")
    if not PY.exists():
        venv.create(VENV, with_pip=True)
    stamp = VENV / f".installed-{extra}"
    inputs = [ROOT / "pyproject.toml", ROOT / "constraints.txt"]
    if not stamp.exists() or any(stamp.stat().st_mtime < p.stat().st_mtime for p in inputs):
        sh(
            PY, "-m", "pip", "install", "-q", "--disable-pip-version-check",
            "-c", "constraints.txt", "-e", f".[{extra}]",
        )
        stamp.touch()


def execute_notebooks(names: list[str], folder: Path = ROOT / "notebooks") -> None:
    """Execute notebooks in ``folder`` (all, or ``names``) in a Jupyter kernel; save them.

    Each runs with ``folder`` as its working directory against the bundled emulator (the
    notebooks start it), and is written back with its outputs.
    """
    import nbclient  # type: ignore[import-not-found, unused-ignore]
    import nbformat  # type: ignore[import-not-found, unused-ignore]

    paths = [folder / f"{n.removesuffix('.ipynb')}.ipynb" for n in names] or sorted(
        folder.glob("*.ipynb")
    )
    for path in paths:
        print(f"executing {path.relative_to(ROOT)}", flush=True)
        nb = nbformat.read(path, as_version=4)
        nbclient.NotebookClient(
            nb,
            timeout=300,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": str(folder)}},
        ).execute()
        nbformat.write(nb, path)


def main() -> None:
    """Dispatch ``demo``, ``test`` or ``bench``."""
    what = sys.argv[1] if len(sys.argv) > 1 else "help"
    if what == "demo":
        setup("all")
        sh(PY, "-m", "batchata_df.demo", *sys.argv[2:])
    elif what == "test":
        setup("dev")
        sh(BIN / "ruff", "check", "batchata_df", "tests", "benchmarks", "dev.py")
        sh(BIN / "mypy")
        # Tests run in one worker process per core, up to 4 (pytest-xdist; each worker
        # starts its own emulators). They are CPU-bound (the CLI, scripts and emulators they
        # start as children, hypothesis): 884 s on CI's 2 cores (2026-12-02); measured per
        # test at load 8-10, ~1,800 CPU-s for 2,954 of its 3,504 tests, waits a few percent.
        # Later arguments win: `python3 dev.py test -n 0` runs them in this process.
        workers = str(min(4, os.cpu_count() or 1))
        sh(PY, "-m", "pytest", "-n", workers, *sys.argv[2:])
    elif what == "notebooks":
        setup("dev")
        sh(PY, __file__, "_execute-notebooks", *sys.argv[2:])
    elif what == "_execute-notebooks":  # runs inside .venv (needs nbclient)
        execute_notebooks(sys.argv[2:])
    elif what == "bench":
        setup("dev")
        sh(PY, "benchmarks/bench_tokens.py")
        # --pin (the emulator on a core of its own) where there are two cores or more: how
        # the README's table was measured (benchmarks/PROFILE.md, seventeenth pass).
        # (Linux only: os.sched_getaffinity is not on macOS or Windows.)
        cores = getattr(os, "sched_getaffinity", lambda _: set())(0)
        pin = ["--pin"] if len(cores) > 1 else []
        sh("nice", "-n", "19", str(PY), "benchmarks/bench_overhead.py", *pin, *sys.argv[2:])
        sh(PY, "benchmarks/report_overhead.py")
    else:
        print(__doc__)
        sys.exit(0 if what in ("help", "-h", "--help") else 2)


if __name__ == "__main__":
    main()
