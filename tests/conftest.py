"""Shared fixtures: one emulator process per test session, reset for every test."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from filelock import FileLock, Timeout

from batchata_df.emulator import Emulator, model_rules
from batchata_df.models import BASE_URL_VARS, TODAY_VAR

#: The date the whole suite reads the providers' shutdown schedules at, pinned by the
#: project's root ``conftest.py`` before anything is imported (why: there).
SUITE_TODAY = os.environ[TODAY_VAR]

model_rules.today(SUITE_TODAY)  # also if a plugin imported it before the line above


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Test ids without whitespace: a node id can then be passed on any command line.

    mutmut (``tools/mutation.py``) and shell loops select tests by node id; an id such as
    ``[kwargs0-mode must be one of ...]`` would be split into several arguments.
    """
    text = val.decode("latin-1") if isinstance(val, bytes) else val
    if isinstance(text, str) and any(c.isspace() for c in text):
        # as pytest shows it (escapes), with each space an underscore
        return text.encode("unicode_escape").decode("ascii").replace(" ", "_")
    return None

# The seed README's examples are scripts that tests run in a subprocess, not test modules.
collect_ignore = ["seed_examples"]


#: Emulators already running (``http://127.0.0.1:PORT``, comma-separated) for this session
#: to use instead of starting its own; ``tools/mutation.py`` sets it, since a mutation run
#: is thousands of short test sessions and one emulator start costs more than their tests.
ATTACH_ENV = "BATCHATA_DF_TEST_EMULATORS"
#: Their settings when they started (JSON, as ``Emulator.settings()`` gives them): each
#: session restores them, as if its emulator were new (``reset()`` keeps settings).
SETTINGS_ENV = "BATCHATA_DF_TEST_EMULATOR_SETTINGS"


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    urls = [u for u in os.environ.get(ATTACH_ENV, "").split(",") if u]
    if urls:
        with _leased(urls) as url:
            emu = Emulator.attach(url)
            emu.configure(**json.loads(os.environ.get(SETTINGS_ENV, "{}")))
            emu.configure(today=SUITE_TODAY)  # one started elsewhere: the suite's date
            _START_SETTINGS[id(emu)] = emu.settings()
            yield emu
        return
    # A generous start-up wait: a loaded CI host can take more than the 30 s default to
    # import the emulator; a healthy one answers in about a second either way.
    with Emulator(latency=0.0, startup_timeout=120.0) as emu:
        _START_SETTINGS[id(emu)] = emu.settings()
        yield emu


#: Each session emulator's settings as it started, which the ``emu`` fixture restores for
#: every test: ``reset()`` keeps settings, and a test that set (say) ``cancel_delay`` must
#: not leave it to whichever test the same worker runs next.
_START_SETTINGS: dict[int, dict[str, object]] = {}


@contextlib.contextmanager
def _leased(urls: list[str], where: Path | None = None) -> Iterator[str]:
    """One of ``urls`` that no other test session uses while this one runs.

    Sessions running at once (mutmut's workers) each reset the emulator for every test, so
    they must never share one: each holds a file lock on its emulator for its lifetime.
    """
    locks = [
        FileLock((where or Path(tempfile.gettempdir()))
                 / f"batchata-df-emulator-{urlsplit(u).port}.lock")
        for u in urls
    ]
    index = next((i for i, lock in enumerate(locks) if _try_acquire(lock)), None)
    if index is None:  # all busy: wait for one
        index = os.getpid() % len(locks)
        locks[index].acquire(timeout=600)  # a Timeout fails the session, never hangs it
    try:
        yield urls[index]
    finally:
        locks[index].release()


def _try_acquire(lock: FileLock) -> bool:
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    return True


@pytest.fixture
def emu(emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[Emulator]:
    """The session emulator, reset to how it started (batches, faults, clock and every
    setting), with the provider env vars pointing at it."""
    emulator.reset()
    emulator.configure(**_START_SETTINGS[id(emulator)])  # type: ignore[arg-type]
    for key, value in emulator.env().items():
        monkeypatch.setenv(key, value)
    for key in ("GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    yield emulator
    # Fixtures that use the session emulator without this one must not inherit a test's
    # settings: serve_retired=True (retired models served), a later ``today`` (the models
    # shut down by then refused: the next test on gpt-4.1-mini failed, in whatever order
    # xdist ran them), or any other.
    start = _START_SETTINGS[id(emulator)]
    now = emulator.settings()
    changed = {key: value for key, value in start.items() if now.get(key) != value}
    if changed:
        emulator.configure(**changed)  # type: ignore[arg-type]


@pytest.fixture
def official(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As against the providers themselves: no base URL anywhere (not even in a .env) and
    no key, so nothing could be sent (the checks that a gateway would skip run)."""
    for var in (*BASE_URL_VARS.values(), "OPENAI_API_KEY", "ANTHROPIC_API_KEY",
                "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes a test starts (append them): those still running when it ends (a
    failed assertion) are killed, so that no run outlives its test and its emulator."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)


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


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], list[int], tuple[int, int]]]:
    """Every collected batch's calibration input, in order: its job ids, the input estimates
    it carries beside them, and what ``billed_input`` gave (estimated, billed tokens)."""
    from batchata_df.engine import admission

    seen: list[tuple[list[str], list[int], tuple[int, int]]] = []
    real = admission.billed_input

    def spy(batch, events, job_ids=None):  # type: ignore[no-untyped-def]
        got = real(batch, events, job_ids)
        est = batch.est_input.to_list() if batch.est_input is not None else []
        # the ids the caller decoded (collection, realtime) are the batch's own
        assert job_ids is None or job_ids.to_list() == batch.job_ids.to_list()
        seen.append((batch.job_ids.to_list(), est, got))
        return got

    monkeypatch.setattr(admission, "billed_input", spy)
    return seen


@pytest.fixture
def on(emu, monkeypatch):
    """Set the date for the client and the emulator, as against the providers themselves
    (the client skips its model checks when a base URL points at a gateway, as the
    emulator's is: that skip is turned off here)."""
    from batchata_df import models as client_models

    monkeypatch.setattr(client_models, "_custom_endpoint", lambda provider: False)

    def set_date(date: str) -> None:
        monkeypatch.setenv(TODAY_VAR, date)
        emu.configure(today=date)

    return set_date
