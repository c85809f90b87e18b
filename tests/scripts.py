"""Load the project's scripts (benchmarks, tools) as modules for the tests to call.

The scripts under ``benchmarks/`` and ``tools/`` are not a package: each is run as a file.
The tests that check them load one by path, with a fresh module every call (a test may
monkeypatch module globals without leaking them into the next test). The module is
registered in ``sys.modules`` under ``name`` while it runs, which ``dataclasses`` and
``pickle`` need.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str, name: str) -> ModuleType:
    """Execute the script at ``ROOT / relative`` as a new module called ``name``.

    Parameters
    ----------
    relative
        The script's path from the repository root, e.g. ``"benchmarks/bench_overhead.py"``.
    name
        The module's name; it replaces any module of that name in ``sys.modules``.

    Returns
    -------
    ModuleType
        The freshly executed module.

    Examples
    --------
    >>> report = load_script("benchmarks/report_overhead.py", "report_overhead")
    >>> report.RESULTS.name
    'overhead.json'
    >>> load_script("benchmarks/report_overhead.py", "report_overhead") is report
    False
    """
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {relative}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]  # no half-run module left for the next test to find
        raise
    return module
