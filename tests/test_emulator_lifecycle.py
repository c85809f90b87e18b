"""The emulator's process stops when asked, and when the process that started it is gone.

A test run stopped with SIGKILL (a CI timeout, a developer's ``kill -9``) cannot stop the
emulator it started; before ``--exit-with-parent`` such servers kept running, one more each time,
on a shared machine. These tests kill the parent for real and wait for the server to go.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from openai import OpenAI

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


KERNEL = textwrap.dedent(
    """
    import signal, sys, time
    from batchata_df.emulator import Emulator

    signal.signal(signal.SIGINT, lambda signum, frame: None)  # a kernel survives Interrupt
    emu = Emulator().start()
    print(emu._proc.pid, emu.url, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.skipif(os.name != "posix", reason="process groups and killpg are POSIX")
def test_interrupting_the_kernel_leaves_the_emulator_serving(procs) -> None:
    """Jupyter's Kernel -> Interrupt signals the kernel's whole process group (jupyter_client
    8.10 ``provisioning/local_provisioner.py`` ``LocalProvisioner.send_signal``:
    ``os.killpg(self.pgid, signum)``): an emulator started inside the kernel must not get it,
    or the next cell gets Connection refused."""
    parent = subprocess.Popen(
        [sys.executable, "-c", KERNEL], stdout=subprocess.PIPE, env=dict(os.environ),
        start_new_session=True,  # the "kernel" leads its own group, as a kernel does
    )
    procs.append(parent)
    assert parent.stdout is not None
    pid_text, url = parent.stdout.readline().decode().split()
    server = int(pid_text)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    os.killpg(parent.pid, signal.SIGINT)  # Kernel -> Interrupt
    time.sleep(1.5)  # the server polls its stop flag every 0.5 s
    try:
        with opener.open(f"{url}/_emulator/health", timeout=30) as answer:
            assert answer.status == 200  # still serving
        assert parent.poll() is None
    finally:
        parent.send_signal(signal.SIGKILL)  # and it still goes with its parent
        parent.wait(timeout=30)
        if not _gone(server, within_s=30):
            os.kill(server, signal.SIGKILL)
            raise AssertionError("the emulator kept running after its parent was killed")


def test_a_server_stops_on_sigterm_with_exit_code_0() -> None:
    emu = Emulator().start()
    try:
        assert emu._proc is not None
        emu._proc.send_signal(signal.SIGTERM)
        assert emu._proc.wait(timeout=30) == 0
    finally:
        emu.stop()


# Imported first by every Python process started with this folder on PYTHONPATH: the line
# is written only if the interpreter's teardown runs (``os._exit`` skips atexit handlers).
TEARDOWN_MARKER = "teardown-ran"
SITECUSTOMIZE = (
    "import atexit, sys\n"
    f"atexit.register(lambda: print({TEARDOWN_MARKER!r}, file=sys.stderr, flush=True))\n"
)


@pytest.mark.parametrize(
    ("command", "stop"),
    [("cli", signal.SIGTERM), ("cli", signal.SIGINT), ("module", signal.SIGTERM)],
    ids=["cli-sigterm", "cli-sigint", "module-sigterm"],
)
def test_an_emulator_holding_requests_exits_on_a_signal_without_teardown(
    command: str, stop: signal.Signals, procs, tmp_path: Path
) -> None:
    """``batchata-df emulator`` leaves as ``python -m batchata_df.emulator`` does.

    The interpreter's teardown frees every request the server holds: with 20,000 stored
    requests it took 1.4 s to exit on SIGTERM (0.08 s without), and a 1M-row emulator many
    seconds. Skipping it is not timed here (no timing assertions): the teardown's own
    atexit handler must not run, and the exit code is 0.
    """
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(hook)
    exe = Path(sys.executable).with_name("batchata-df")  # the console script pip installed
    argv = (
        [str(exe), "emulator"] if command == "cli"
        else [sys.executable, "-m", "batchata_df.emulator"]
    )  # fmt: skip
    server = subprocess.Popen(
        [*argv, "--port", "0"], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    procs.append(server)
    assert server.stdout is not None
    url = server.stdout.readline().split()[-1]
    # It holds a batch of requests and their results, through the official SDK.
    client = OpenAI(api_key="sk-test", base_url=f"{url}/openai/v1")
    lines = b"".join(
        json.dumps({
            "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4.1-mini", "max_tokens": 20,
                     "messages": [{"role": "user", "content": f"row {i}"}]},
        }).encode() + b"\n"
        for i in range(500)
    )  # fmt: skip
    upload = client.files.create(file=("in.jsonl", lines), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    give_up = time.monotonic() + 60
    while batch.status != "completed" and time.monotonic() < give_up:
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts is not None
    assert batch.request_counts.completed == 500
    server.send_signal(stop)
    _, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    assert TEARDOWN_MARKER not in err, "the emulator ran the interpreter's teardown"


def test_the_teardown_marker_is_written_by_an_ordinary_exit(tmp_path: Path) -> None:
    """The check above can fail: a CLI command that returns normally writes the marker."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(hook)
    exe = Path(sys.executable).with_name("batchata-df")
    done = subprocess.run(
        [str(exe), "emulator", "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and TEARDOWN_MARKER in done.stderr
