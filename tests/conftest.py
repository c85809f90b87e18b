"""Shared fixtures: one emulator process per test session, reset for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from batchata_df.emulator import Emulator

# The seed README's examples are scripts that tests run in a subprocess, not test modules.
collect_ignore = ["seed_examples"]


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    # A generous start-up wait: a loaded CI host can take more than the 30 s default to
    # import the emulator; a healthy one answers in about a second either way.
    with Emulator(latency=0.0, startup_timeout=120.0) as emu:
        yield emu


@pytest.fixture
def emu(emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[Emulator]:
    """The session emulator, reset, with the provider env vars pointing at it."""
    emulator.reset()
    emulator.configure(latency=0.0, log_bodies=False, realtime_latency=0.0)
    for key, value in emulator.env().items():
        monkeypatch.setenv(key, value)
    for key in ("GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    yield emulator


@pytest.fixture
def engine_clock(monkeypatch: pytest.MonkeyPatch):
    """The batch engine on a :class:`FakeClock`: its time moves only when it waits.

    A test of ``time_limit`` then sees the first submissions happen "at once" however slow
    the machine is (a real half-second limit can pass before the first batch is created).
    """
    from batchata_df.engine import driver
    from batchata_df.engine.clock import FakeClock

    fake = FakeClock()
    monkeypatch.setattr(driver, "SystemClock", lambda: fake)
    return fake
