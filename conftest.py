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
