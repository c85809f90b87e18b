"""``batchata-df run`` killed for real leaves nothing beside OUTPUT once it is run again.

The installed command runs in a subprocess against the emulator and is SIGKILLed at points
the test observes: after the state folder shows a submitted batch, or (through a
``sitecustomize`` hook put on the child's ``PYTHONPATH``, which prints where it is and then
waits for a line on stdin that never comes) while the result is being written beside
OUTPUT. Its hidden files there (the Parquet result as it is assembled, the CSV it is
converted to) go with the next run writing the same OUTPUT; a live run's never do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from batchata_df import sql

EXE = Path(sys.executable).with_name("batchata-df")
REPO = Path(__file__).resolve().parents[1]
N = 40
BATCHES = 4  # a chunk of 10 rows each

# Pauses the child at a point of the output writing, named by BATCHATA_TEST_PAUSE.
HOOK = textwrap.dedent(
    """
    import os, sys

    def _pause(where):
        print(where, flush=True)
        sys.stdin.readline()  # never answered: the test kills the process here
        os._exit(99)  # the test is gone: leave without finishing

    _at = os.environ.get("BATCHATA_TEST_PAUSE")
    if _at == "sink":  # the first rows are in the hidden file the result is assembled in
        from batchata_df import stream

        _write = stream.SinkWriter.write

        def _write_then_pause(self, frame):
            _write(self, frame)
            _pause(self.tmp)

        stream.SinkWriter.write = _write_then_pause
    elif _at == "convert":  # the CSV is written under its hidden name, not yet renamed
        import polars as pl

        _sink_csv = pl.LazyFrame.sink_csv

        def _sink_csv_then_pause(self, path, *args, **kwargs):
            out = _sink_csv(self, path, *args, **kwargs)
            _pause(path)
            return out

        pl.LazyFrame.sink_csv = _sink_csv_then_pause
    """
)


@pytest.fixture
def work(emu, tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    pl.DataFrame({"id": range(N), "text": [f"ticket {i}" for i in range(N)]}).write_parquet(
        folder / "in.parquet"
    )
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    return folder


def _env(emu, work: Path, pause: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BATCHATA_TEST_PAUSE"}
    env.update(emu.env())
    env["PYTHONPATH"] = os.pathsep.join([str(work.parent / "hook"), str(REPO)])
    if pause is not None:
        env["BATCHATA_TEST_PAUSE"] = pause
    return env


def _args(output: str, *extra: str) -> list[str]:
    return [str(EXE), "run", "in.parquet", output, "--model", "gpt-4.1-mini",
            "--prompt", "Route: {text}", "--chunk-rows", "10",
            "--no-progress", *extra]


def _run(emu, work: Path, output: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_args(output, *extra), cwd=work, env=_env(emu, work, None),
                          capture_output=True, text=True, timeout=240)


def _start(emu, work: Path, output: str, pause: str | None) -> subprocess.Popen[str]:
    return subprocess.Popen(_args(output), cwd=work, env=_env(emu, work, pause),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _paused_at(proc: subprocess.Popen[str], work: Path) -> Path:
    """The file the child was writing when it stopped (it says so on stdout)."""
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, f"the run ended before the pause: {proc.communicate(timeout=60)}"
    return work / line  # as the child named it: relative to its working folder, or not


def _left(work: Path) -> dict[str, int]:
    """Everything under OUTPUT's folder but the state folders: {relative path: bytes}."""
    return {
        str(p.relative_to(work)): p.stat().st_size
        for p in sorted(work.rglob("*"))
        if p.is_file() and not any(part.endswith(".state") for part in p.relative_to(work).parts)
    }


def _billed_once(emu) -> Counter[str]:
    billed = Counter(e["custom_id"] for e in emu.billing())
    assert set(billed.values()) == {1}, "a request was billed twice"
    return billed


@pytest.mark.parametrize("output", ["out.parquet", "out.csv"])
def test_a_run_killed_while_its_batches_are_in_flight_resumes_and_leaves_only_output(
    emu, work, procs, output
):
    """SIGKILL once the state folder shows every batch submitted; the same command again
    collects them (nothing sent twice) and OUTPUT's folder then holds OUTPUT only."""
    emu.configure(latency=1000.0)
    proc = _start(emu, work, output, None)
    procs.append(proc)
    state = work / f"{output}.state"
    deadline = time.monotonic() + 120
    while True:  # poll what the child has checkpointed (reading needs no lock)
        assert proc.poll() is None, proc.communicate(timeout=60)
        assert time.monotonic() < deadline, "no batch was submitted"
        if (state / "batches").is_dir() and sql(
            "select count(*) as n from batches where status = 'submitted'", state
        )["n"][0] == BATCHES:
            break
        time.sleep(0.05)
    _kill(proc)
    emu.advance(1000.0)
    r = _run(emu, work, output)
    assert r.returncode == 0, r.stderr
    assert _left(work).keys() == {"in.parquet", output}
    assert [p.name for p in work.iterdir() if p.is_dir()] == [f"{output}.state"]
    assert len(_billed_once(emu)) == N
    assert len([e for e in emu.log() if e["method"] == "POST" and e["path"].endswith("/batches")
                ]) == BATCHES  # the batches the killed run sent, not sent again
    out = pl.read_parquet(work / output) if output.endswith(".parquet") else pl.read_csv(
        work / output)
    assert out["id"].to_list() == list(range(N))
    assert set(out["_status"].to_list()) == {"completed"}


@pytest.mark.parametrize(
    ("output", "pause"),
    [("out.parquet", "sink"), ("out.csv", "sink"), ("out.csv", "convert")],
)
def test_a_run_killed_while_writing_output_leaves_files_the_next_run_removes(
    emu, work, procs, output, pause
):
    """SIGKILL while the result is written beside OUTPUT (assembled as Parquet, or converted
    to CSV): its hidden files stay until the next run writing OUTPUT, which removes them
    (they were gigabytes at 10M rows, and each kill added more); OUTPUT itself never
    appears half written."""
    proc = _start(emu, work, output, pause)
    procs.append(proc)
    at = _paused_at(proc, work)
    assert at.exists()
    _kill(proc)
    left = _left(work)
    assert output not in left  # never half written under its name
    hidden = set(left) - {"in.parquet"}
    assert hidden, left  # what the killed run left: its result, written so far
    assert all(Path(p).parts[0].startswith(".") for p in hidden), hidden
    sent = len(_billed_once(emu))
    assert sent == N

    r = _run(emu, work, output)
    assert r.returncode == 0, r.stderr
    assert _left(work).keys() == {"in.parquet", output}
    assert [p.name for p in work.iterdir() if p.is_dir()] == [f"{output}.state"]
    assert len(_billed_once(emu)) == N  # nothing sent again


def test_a_live_runs_files_are_never_removed_by_another_run_in_the_same_folder(
    emu, work, procs
):
    """While a run writes its result (paused there), other runs in the same folder never
    touch its files: one writing the same OUTPUT (another state folder) refuses (exit 75,
    nothing sent: two runs on one OUTPUT would each pay for every row), one writing another
    OUTPUT finishes; once it is killed, the next run on its OUTPUT removes them."""
    proc = _start(emu, work, "out.parquet", "sink")
    procs.append(proc)
    at = _paused_at(proc, work)
    before = _left(work)
    mine = {p: size for p, size in before.items() if p != "in.parquet"}
    assert mine and all(Path(p).parts[0].startswith(".") for p in mine), before
    assert any((work / p).resolve() == at.resolve() for p in mine), (at, mine)

    sent = len(_billed_once(emu))
    same = _run(emu, work, "out.parquet", "--state", "other.state")
    assert same.returncode == 75, same.stderr
    assert "is being written by another run" in same.stderr
    assert len(_billed_once(emu)) == sent
    other = _run(emu, work, "other.csv")
    assert other.returncode == 0, other.stderr
    assert _left(work) == {**before, "other.csv": (work / "other.csv").stat().st_size}
    assert proc.poll() is None  # it was alive all along

    _kill(proc)
    r = _run(emu, work, "out.parquet")
    assert r.returncode == 0, r.stderr
    assert _left(work).keys() == {"in.parquet", "out.parquet", "other.csv"}
    assert sorted(p.name for p in work.iterdir() if p.is_dir()) == [
        "other.csv.state", "out.parquet.state"]


def _dead_folder(target: Path, hex8: str = "0badcafe") -> Path:
    """The hidden folder a run killed while writing ``target`` leaves (its lock file in it,
    held by nobody)."""
    from batchata_df.stream import FOLDER_LOCK

    dead = target.with_name(f".tmp-{target.name}-{hex8}")
    dead.mkdir()
    (dead / FOLDER_LOCK).write_bytes(b"")
    (dead / "result.parquet").write_bytes(b"PAR1")
    return dead


@pytest.mark.parametrize("name", ["out.csv", "(x)+ é.csv"])
def test_write_frame_removes_a_dead_writers_hidden_folder_never_a_live_ones(
    tmp_path: Path, name: str
):
    """``write_frame`` (the command's one writer of whole frames) writes through the same
    hidden folder: a killed process's folder for the same file goes (whatever characters
    the name holds), a live one's (held here, in this process: the lock is per open
    descriptor) and another file's stay."""
    from batchata_df.cli import write_frame
    from batchata_df.stream import hidden_folder

    target = tmp_path / "new" / name  # a folder that does not exist yet: made
    frame = pl.DataFrame({"a": [1, 2], "b": [["x"], []]})
    write_frame(frame, target)
    folder = target.parent
    assert [p.name for p in folder.iterdir()] == [name]
    _dead_folder(target)
    elsewhere = _dead_folder(folder / "other.csv")  # another OUTPUT's: not this writer's
    write_frame(frame, target)
    assert sorted(p.name for p in folder.iterdir()) == sorted([name, elsewhere.name])
    with hidden_folder(target) as live:
        (live / "result.parquet").write_bytes(b"PAR1")
        write_frame(frame, target)
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [name, live.name, elsewhere.name])
        assert (live / "result.parquet").read_bytes() == b"PAR1"
    assert sorted(p.name for p in folder.iterdir()) == sorted([name, elsewhere.name])
    assert pl.read_csv(target.read_bytes()).to_dicts() == [
        {"a": 1, "b": '["x"]'}, {"a": 2, "b": "[]"}]


def test_a_hidden_folders_lock_is_on_a_file_in_it_which_nfs_shares_between_hosts(
    tmp_path: Path,
):
    """The lock a live run holds is on a regular file in its folder, not on the folder: on
    NFS a lock on a folder's descriptor is local to one machine (Linux's NFS client has no
    flock for folders), so a run on another host would take a live folder for a dead one.
    A folder whose lock file is missing is no writer's: it is left alone."""
    from filelock import lock_descriptor

    from batchata_df.stream import FOLDER_LOCK, hidden_folder, remove_stale_sink_files

    target = tmp_path / "out.parquet"
    with hidden_folder(target) as folder:
        fd = os.open(folder / FOLDER_LOCK, os.O_RDONLY)
        try:
            assert lock_descriptor(fd, blocking=False) is False  # held by the live run
        finally:
            os.close(fd)
        fd = os.open(folder, os.O_RDONLY)
        try:
            assert lock_descriptor(fd, blocking=False) is True  # the folder itself: not
        finally:
            os.close(fd)
        assert remove_stale_sink_files(target) == []
    unlocked = target.with_name(f".tmp-{target.name}-abcdef12")
    unlocked.mkdir()
    assert remove_stale_sink_files(target) == []
    assert unlocked.is_dir()


def test_a_pipe_with_a_hidden_name_is_left_alone_without_waiting(tmp_path: Path):
    """Opening a named pipe for reading waits for a writer: the cleanup must not."""
    from batchata_df.stream import remove_stale_sink_files

    target = tmp_path / "out.parquet"
    pipe = target.with_name(f".tmp-{target.name}-0badcafe")
    os.mkfifo(pipe)
    assert remove_stale_sink_files(target) == []
    assert pipe.exists()


def test_a_hidden_folder_where_locks_are_refused_is_used_and_never_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """On a file system that refuses locks (some network mounts) the folder is still made
    and removed at the end; another writer, unable to lock it, leaves it alone."""
    import errno

    import filelock

    from batchata_df.stream import hidden_folder, remove_stale_sink_files

    def no_locks(fd: int, *, blocking: bool = True) -> bool:
        raise OSError(errno.ENOSYS, "no locks here")

    monkeypatch.setattr(filelock, "lock_descriptor", no_locks)
    target = tmp_path / "out.parquet"
    with hidden_folder(target) as folder:
        assert folder.is_dir() and folder.parent == tmp_path
        assert remove_stale_sink_files(target) == []
        assert folder.is_dir()
    assert list(tmp_path.iterdir()) == []
