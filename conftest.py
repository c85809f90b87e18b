"""What every test of the project needs before anything is imported.

For tests/, the modules' doctests and tools/ alike: ``pytest batchata_df/frame.py`` loads
this file, not ``tests/conftest.py``.

The date the providers' shutdown schedules are read at (``batchata_df.models.TODAY_VAR``,
read by the client and the emulator alike) is pinned here, before batchata_df is imported,
so the session emulator, every child process (they inherit the environment) and the client
see it, and no test's outcome depends on the day it runs (genai-prices' dated prices are
read at it too: gemini-3.7-flash's rise on 2027-01-01, ...): a month before any scheduled
shutdown of the models the tests and examples use (gemini-2.5-flash's is 2026-12-01,
beyond ``SHUTDOWN_HORIZON_DAYS``; gpt-4.1-mini's 2027-01-14), so no test warns unless it
moves the date. What a new user runs unpinned (the demo, the notebooks, the docstrings'
emulator examples) is run at a later date by ``tests/test_later_dates.py`` and
``tests/test_notebooks.py``.
"""

import os

os.environ["BATCHATA_DF_TODAY"] = "2026-10-31"


def pytest_configure(config: object) -> None:
    """Byte-compile batchata_df once, before any test starts a process that imports it.

    Hundreds of tests start Python children (the CLI, the emulator, example scripts): where
    ``PYTHONDONTWRITEBYTECODE`` is set (it is on the team's machines and CI), each compiled
    the ~40 modules it imports from source, about 0.35 s of CPU per child that no user of
    the installed package pays (``pip install`` compiles it; an editable install does not).
    The children still write no bytecode. Checked by the source's hash, not its mtime: a
    module edited since (``tools/mutation.py`` writes a mutant and the original back, the
    same size within a second) is compiled from source again, never run from stale code.
    xdist's workers skip it: the controller ran it before it started them.
    """
    if "PYTEST_XDIST_WORKER" in os.environ:
        return
    import compileall
    import py_compile
    from pathlib import Path

    compileall.compile_dir(
        Path(__file__).parent / "batchata_df", quiet=1, force=True,  # mtime-checked ones too
        invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
    )
