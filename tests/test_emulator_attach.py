"""Test sessions that attach to running emulators (what ``tools/mutation.py`` relies on)."""

from __future__ import annotations

import threading

from batchata_df.emulator import Emulator
from conftest import _leased


def test_an_attached_emulator_is_controlled_but_never_stopped():
    with Emulator(startup_timeout=120.0) as owner:
        guest = Emulator.attach(owner.url + "/")
        assert guest.url == owner.url
        guest.configure(latency=7.0)
        assert owner.settings()["latency"] == 7.0
        guest.stop()
        assert owner.running
        assert owner.settings()["latency"] == 7.0  # still serving


def test_sessions_at_once_lease_different_emulators_and_a_third_waits(tmp_path):
    urls = ["http://127.0.0.1:9", "http://127.0.0.1:13"]  # only their lock files are used
    got: list[str] = []
    with _leased(urls, tmp_path) as first, _leased(urls, tmp_path) as second:
        assert {first, second} == set(urls)
        waiter = threading.Thread(target=lambda: got.extend(_lease_once(urls, tmp_path)))
        waiter.start()
        waiter.join(timeout=0.2)
        assert got == []  # both are held: it cannot have one
    waiter.join(timeout=60)
    assert got and got[0] in urls


def _lease_once(urls: list[str], where) -> list[str]:
    with _leased(urls, where) as url:
        return [url]
