"""The ``emu`` fixture gives every test the emulator as it started, whatever ran before.

A test run by the same worker after one that set ``cancel_delay=10`` and
``cancel_unfinished="omit"`` (``test_emulator_gemini.py``) once saw its cancelled batches
stay ``cancelling`` and billed in full: ``reset()`` keeps settings, and the fixture restored
only some of them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from batchata_df.emulator import Emulator

pytest_plugins = ["pytester"]

TESTS = '''
def test_a_changes_every_setting(emu):
    emu.configure(
        latency=100.0, cancel_delay=10.0, cancel_unfinished="omit", log_bodies=True,
        list_order="oldest_first", realtime_latency=1.0, openai={"max_requests": 3},
        anthropic={"max_bytes": 2000}, gemini={"max_inline_bytes": 2000},
    )


def test_b_sees_the_start_settings(emu):
    assert emu.settings() == START
'''


def test_each_test_gets_the_settings_the_emulator_started_with(
    emulator: Emulator, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = emulator.settings()
    shutil.copy(Path(__file__).with_name("conftest.py"), pytester.path / "conftest.py")
    pytester.makepyfile(test_order=f"START = {start!r}\n" + TESTS)
    # The inner session attaches to this session's emulator (as mutation runs do).
    monkeypatch.setenv("BATCHATA_DF_TEST_EMULATORS", emulator.url)
    monkeypatch.setenv("BATCHATA_DF_TEST_EMULATOR_SETTINGS", "{}")
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:xdist", "-q")
    result.assert_outcomes(passed=2)
    emulator.configure(**start)  # type: ignore[arg-type]
