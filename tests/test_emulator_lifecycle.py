"""The emulator's process stops when asked, and when the process that started it is gone.

A test run stopped with SIGKILL (a CI timeout, a developer's ``kill -9``) cannot stop the
emulator it started; before ``--exit-with-parent`` such servers kept running, one more each time,
on a shared machine. These tests kill the parent for real and wait for the server to go.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

from batchata_df.emulator import Emulator

CHILD = textwrap.dedent(
    """
    import sys, time
    from batchata_df.emulator import Emulator

    emu = Emulator().start()
    print(emu._proc.pid, emu.url, flush=True)
    time.sleep(600)
    """
)


def _gone(pid: int, within_s: float) -> bool:
    """Whether process ``pid`` has ended (or is a zombie) within ``within_s`` seconds."""
    give_up = time.monotonic() + within_s
    while time.monotonic() < give_up:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_a_server_whose_parent_was_killed_stops_itself(procs) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, env=dict(os.environ)
    )
    procs.append(parent)
    assert parent.stdout is not None
    pid_text, url = parent.stdout.readline().decode().split()
    server = int(pid_text)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{url}/_emulator/health", timeout=30) as answer:
        assert answer.status == 200  # it serves
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    if not _gone(server, within_s=30):
        os.kill(server, signal.SIGKILL)  # leave nothing behind, then fail
        raise AssertionError("the emulator kept running after its parent was killed")


def test_a_server_stops_on_sigterm_with_exit_code_0() -> None:
    emu = Emulator().start()
    try:
        assert emu._proc is not None
        emu._proc.send_signal(signal.SIGTERM)
        assert emu._proc.wait(timeout=30) == 0
    finally:
        emu.stop()
