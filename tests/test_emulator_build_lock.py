"""The emulator builds its SDK validators under one lock (``sdk_params.BUILD_LOCK``).

Its warm-up thread imports the SDKs' request types while the first requests arrive; two
threads importing the same modules at once can see one half initialised (``ImportError:
... most likely due to a circular import``), which failed a request now and then under load.
Each test checks, from a second thread, that the lock is held while a validator is built.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from batchata_df.emulator import anthropic_checks, gemini_checks, openai_checks, sdk_params
from batchata_df.emulator.sdk_params import BUILD_LOCK


def held_by_another_thread() -> bool:
    """Whether a thread other than this one holds :data:`BUILD_LOCK` now."""
    got: list[bool] = []

    def probe() -> None:
        ok = BUILD_LOCK.acquire(blocking=False)
        if ok:
            BUILD_LOCK.release()
        got.append(not ok)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return got[0]


def spy_on_builds(
    monkeypatch: pytest.MonkeyPatch, module: Any, builder: str, cache: str
) -> list[bool]:
    """Empty ``module``'s cache and record, at each ``builder`` call, whether the lock is held."""
    seen: list[bool] = []
    real = getattr(module, builder)

    def spy(tp: Any) -> Any:
        seen.append(held_by_another_thread())
        return real(tp)

    monkeypatch.setattr(module, cache, {})
    monkeypatch.setattr(module, builder, spy)
    return seen


def test_openai_validators_are_built_holding_the_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = spy_on_builds(monkeypatch, openai_checks, "strict_validator", "_validators")
    openai_checks._message_validator("user")
    assert seen == [True]


def test_anthropic_validators_are_built_holding_the_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = spy_on_builds(monkeypatch, anthropic_checks, "strict_validator", "_validators")
    assert anthropic_checks._validator("message") is not None
    assert seen == [True]


def test_gemini_adapters_are_built_holding_the_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = spy_on_builds(monkeypatch, gemini_checks, "TypeAdapter", "_adapters")
    assert gemini_checks._adapter("content") is not None
    assert seen and all(seen)


def test_the_warm_up_runs_holding_the_lock() -> None:
    seen: list[bool] = []
    done = threading.Event()

    def warm() -> None:
        seen.append(held_by_another_thread())
        done.set()

    sdk_params.warm_in_background(warm, "test")
    assert done.wait(30)
    assert seen == [True]
