"""One writer per state folder: a second call is refused (or waits), never pays twice."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm, sql
from batchata_df.errors import ConfigError, StateError, StateLockedError


class A(BaseModel):
    label: str


CHILD = textwrap.dedent(
    """
    import sys, json
    import polars as pl
    from pydantic import BaseModel
    from batchata_df import batch_llm
    from batchata_df.errors import StateLockedError

    class A(BaseModel):
        label: str

    state, wait, timeout = sys.argv[1], sys.argv[2] == "wait", sys.argv[3]
    go = sys.argv[4]
    while not __import__("os").path.exists(go):  # start together
        pass
    df = pl.DataFrame({"t": [f"row {i}" for i in range(6)]})
    try:
        out = df.pipe(batch_llm, schema=A, model=sys.argv[5], prompt="{t}", state=state,
                      items_per_batch=2, wait=wait,
                      lock_timeout=None if timeout == "none" else float(timeout))
    except StateLockedError as e:
        h = e.holder
        print("LOCKED", json.dumps({"msg": str(e), "pid": h and h.pid, "host": h and h.host,
                                    "since": h and h.since}))
    else:
        print("DONE", out["_status"].to_list())
    """
)


def creates(emu):
    paths = ("/openai/v1/batches", "/messages/batches", ":batchGenerateContent")
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith(paths)
            and e["status"] == 200]


def start_two(tmp_path, state, model, modes, *, first_holds_lock=False):
    """Start two calls together; with ``first_holds_lock`` the second starts only once the
    first holds the folder's lock (otherwise which one wins is a race)."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    gos = [tmp_path / "go0", tmp_path / ("go1" if first_holds_lock else "go0")]
    children = [
        subprocess.Popen([sys.executable, str(script), str(state), wait, timeout, str(go), model],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ))
        for (wait, timeout), go in zip(modes, gos, strict=True)
    ]
    time.sleep(0.3)
    gos[0].write_text("")
    if first_holds_lock:
        from batchata_df.state import LOCK_FILE, LockHolder

        lock = state / LOCK_FILE
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            holder = LockHolder.parse(lock.read_text()) if lock.exists() else None
            if holder is not None and holder.pid == children[0].pid:
                break
            time.sleep(0.02)
        gos[1].write_text("")
    outs = []
    with reaped(*children):
        for child in children:
            out, err = child.communicate(timeout=240)
            assert child.returncode == 0, err
            outs.append(out.strip().splitlines()[-1])
    return outs, [c.pid for c in children]


@contextlib.contextmanager
def reaped(*children):
    """Kill and wait for children still running when the block ends (a failed assertion
    must not leave a child submitting batches into the next test's emulator)."""
    try:
        yield
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.communicate()


# The chaos suite (tests/test_chaos.py) runs the same race for the other two providers.
@pytest.mark.parametrize("model", ["gpt-4.1-mini"])
def test_two_processes_on_one_folder_one_runs_the_other_is_refused(emu, tmp_path, model):
    emu.configure(latency=1.5)
    state = tmp_path / "s"
    outs, pids = start_two(tmp_path, state, model, [("wait", "0"), ("wait", "0")])
    done = [o for o in outs if o.startswith("DONE")]
    locked = [o for o in outs if o.startswith("LOCKED")]
    assert len(done) == 1 and len(locked) == 1, outs
    assert done[0] == "DONE " + str(["completed"] * 6)
    import json

    info = json.loads(locked[0].split(" ", 1)[1])
    winner = pids[outs.index(done[0])]
    assert info["pid"] == winner and info["host"] == socket.gethostname()
    assert f"pid {winner}" in info["msg"] and "lock_timeout" in info["msg"]
    assert abs(info["since"] - time.time()) < 120
    assert len(creates(emu)) == 3  # 6 rows / 2 per batch, sent once


def test_a_poller_told_to_wait_runs_after_the_run_and_submits_nothing_again(emu, tmp_path):
    emu.configure(latency=1.5)
    state = tmp_path / "s"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    (tmp_path / "go").write_text("")

    def child(wait, timeout):
        return subprocess.Popen(
            [sys.executable, str(script), str(state), wait, timeout, str(tmp_path / "go"),
             "gpt-4.1-mini"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ))

    run = child("wait", "0")
    with reaped(run):
        deadline = time.monotonic() + 60
        while not creates(emu):  # the run holds the folder
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.02)
        # A wait=False poller beside it, told to wait for the lock (lock_timeout=None).
        poller = child("nowait", "none")
        with reaped(poller):
            outs = [p.communicate(timeout=240)[0].strip().splitlines()[-1]
                    for p in (run, poller)]
    assert outs == ["DONE " + str(["completed"] * 6)] * 2  # the poller found it all done
    assert len(creates(emu)) == 3


def test_a_second_call_in_the_same_process_is_refused_at_once(emu, tmp_path):
    emu.configure(latency=30.0)
    state = tmp_path / "s"
    df = pl.DataFrame({"t": ["a", "b"]})
    kw = {"schema": A, "model": "gpt-4.1-mini", "prompt": "{t}", "state": state}
    box: dict[str, object] = {}
    run = threading.Thread(target=lambda: box.setdefault("out", df.pipe(batch_llm, **kw)))
    run.start()
    deadline = time.monotonic() + 30
    while not creates(emu):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    t0 = time.monotonic()
    with pytest.raises(StateLockedError, match=rf"pid {os.getpid()}") as caught:
        df.pipe(batch_llm, wait=False, **kw)
    assert time.monotonic() - t0 < 10  # at once, not after the 30 s run
    assert isinstance(caught.value, StateError)
    # Reading needs no lock: SQL and the dry run work beside the run.
    assert sql("select count(*) as n from batches", state)["n"][0] == 1
    plan = df.pipe(batch_llm, dry_run=True, **kw)
    assert plan["_status"].to_list() == ["in_flight", "in_flight"]
    emu.advance(30)
    run.join(60)
    assert box["out"]["_status"].to_list() == ["completed", "completed"]  # type: ignore[index]
    assert len(creates(emu)) == 1


def test_a_lock_left_by_a_killed_process_is_taken_over(emu, tmp_path):
    emu.configure(latency=30.0)
    state = tmp_path / "s"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    (tmp_path / "go").write_text("")
    child = subprocess.Popen(
        [sys.executable, str(script), str(state), "wait", "0", str(tmp_path / "go"),
         "gpt-4.1-mini"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    deadline = time.monotonic() + 60
    while len(creates(emu)) < 3:
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.communicate()
    holder = (state / "writer.lock").read_text()
    assert str(child.pid) in holder  # the dead process's record is still there
    emu.advance(30)
    df = pl.DataFrame({"t": [f"row {i}" for i in range(6)]})
    out = df.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}", state=state,
                  items_per_batch=2)
    assert out["_status"].to_list() == ["completed"] * 6
    assert len(creates(emu)) == 3  # resumed, nothing sent twice
    assert str(os.getpid()) in (state / "writer.lock").read_text()


def test_a_refusal_never_names_a_dead_process_from_an_old_record(tmp_path):
    """Between the kernel granting the lock and the winner writing its record, the file
    still holds the last holder (here a process that has ended): the refusal must not name
    it as the one writing now."""
    import fcntl

    from batchata_df.state import LOCK_FILE, WriterLock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / LOCK_FILE).write_text(
        f'{{"pid": {dead.pid}, "host": "{socket.gethostname()}", "since": 1.0}}')
    with open(tmp_path / LOCK_FILE, "a") as held:  # the winner, before it has recorded itself
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(StateLockedError, match="starting up") as caught:
            WriterLock(tmp_path).acquire()
    assert caught.value.holder is None and f"pid {dead.pid}" not in str(caught.value)


def test_the_holder_record_is_replaced_in_one_write_never_emptied(tmp_path):
    from batchata_df.state import LOCK_FILE, LockHolder, WriterLock

    (tmp_path / LOCK_FILE).write_text("x" * 600)  # longer than a record: no stale tail
    with WriterLock(tmp_path):
        text = (tmp_path / LOCK_FILE).read_text()
        holder = LockHolder.parse(text)
        assert holder is not None and holder.pid == os.getpid()
    assert LockHolder.parse((tmp_path / LOCK_FILE).read_text()) == holder  # kept for diagnosis


@pytest.mark.parametrize("bad", [True, -1.0, float("nan"), "5"])
def test_lock_timeout_is_validated(emu, tmp_path, bad):
    with pytest.raises(ConfigError, match="lock_timeout"):
        pl.DataFrame({"t": ["a"]}).pipe(batch_llm, model="gpt-4.1-mini", prompt="{t}",
                                        state=tmp_path / "s", lock_timeout=bad)
    assert emu.log() == []



def test_the_cli_is_refused_while_a_call_holds_the_folder(emu, tmp_path):
    from batchata_df.state import WriterLock

    src = tmp_path / "in.parquet"
    pl.DataFrame({"t": ["a"]}).write_parquet(src)
    state = tmp_path / "s"
    with WriterLock(state):  # as if a run in this process held the folder
        r = subprocess.run(
            [sys.executable, "-m", "batchata_df.cli", "run", str(src),
             str(tmp_path / "out.parquet"), "--model",
             "gpt-4.1-mini", "--prompt", "{t}", "--state", str(state), "--no-progress"],
            capture_output=True, text=True, timeout=240,
        )
    assert r.returncode == 75, r.stderr  # the CLI's documented "folder busy" exit code
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in r.stderr
    assert "Traceback" not in r.stderr
    assert emu.log() == []


def test_the_compat_batch_api_is_refused_beside_a_run(emu, tmp_path):
    from batchata_df.compat import Batch

    emu.configure(latency=30.0)
    batch = Batch(results_dir=tmp_path / "out").set_default_params(model="gpt-4.1-mini")
    batch.add_job(prompt="hello")
    box: list[object] = []
    run = threading.Thread(target=lambda: box.append(batch.run()))
    run.start()
    deadline = time.monotonic() + 30
    while not creates(emu):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        with pytest.raises(StateLockedError, match=rf"pid {os.getpid()}"):
            batch.run()
    finally:
        emu.advance(30)
        run.join(60)
    assert box and len(creates(emu)) == 1
