"""The live display as people see it: a real terminal (a pty, rendered by pyte) and a real
Jupyter kernel (nbclient + ipykernel). Assertions read what was rendered, never timings."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path

import nbclient
import nbformat
import pyte
import pytest

COLS, ROWS = 140, 40

CHILD = textwrap.dedent(
    """
    import sys
    import polars as pl
    from pydantic import BaseModel
    from batchata_df import batch_llm

    class A(BaseModel):
        n: int

    n = int(sys.argv[1])
    out = pl.DataFrame({"t": [str(i) for i in range(n)]}).pipe(
        batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}", items_per_batch=n // 2,
        max_parallel_batches=2, progress=True, state=sys.argv[2],
    )
    print("CHILD-DONE", dict(out["_status"].value_counts().iter_rows()), flush=True)
    """
)


class Terminal:
    """A child process on a pty of COLS x ROWS, its output rendered by a VT emulator."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.screen = pyte.Screen(COLS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        pid, fd = pty.fork()
        if pid == 0:  # the child: its stdin/stdout/stderr are the pty, it is the session leader
            fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
            os.execve(argv[0], argv, env)
        self.pid, self.fd = pid, fd
        self.status: int | None = None
        self._watch: str | None = None  # wait_for's pattern, looked for after each frame
        self._seen: str | None = None  # the first screen that matched it

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def read(self, timeout: float = 0.2) -> bool:
        """Feed what the child wrote to the screen; False once it has closed the pty."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child is gone
            return False
        if not data:
            return False
        self.raw += data
        # A slow reader (a loaded machine) gets several frames in one read: fed whole, the
        # screen would show only the last. Each of rich's redraws starts with "\r" and an
        # erase of the line, so the screen is looked at before each of them.
        for piece in re.split(rb"(?=\r\x1b\[2K)", data):
            self.stream.feed(piece)
            watching = self._watch is not None and self._seen is None
            if watching and re.search(str(self._watch), self.text()):
                self._seen = self.text()
        return True

    def wait_for(self, pattern: str, limit: float = 120.0) -> str:
        """Read until the rendered screen matches ``pattern`` (the limit only guards a hang)."""
        if re.search(pattern, self.text()):
            return self.text()
        self._watch, self._seen = pattern, None
        try:
            deadline = time.monotonic() + limit
            while self._seen is None and time.monotonic() < deadline:
                if not self.read():
                    break
            if self._seen is not None:
                return self._seen
        finally:
            self._watch = None
        raise AssertionError(f"{pattern!r} never appeared; screen:\n{self.text()}")

    def finish(self, limit: float = 120.0) -> str:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and self.read():
            pass
        _, status = os.waitpid(self.pid, 0)
        self.status = status
        os.close(self.fd)
        return self.text()

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _child(tmp_path: Path, n: int, *, sink: bool = False) -> Terminal:
    script = tmp_path / "child.py"
    script.write_text(CHILD if not sink else CHILD.replace(
        "state=sys.argv[2],", "state=sys.argv[2], sink=sys.argv[2] + '.parquet',"
    ).replace(
        'print("CHILD-DONE", dict(out["_status"].value_counts().iter_rows()), flush=True)',
        'print("CHILD-DONE", out, flush=True)',
    ))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    return Terminal([sys.executable, str(script), str(n), str(tmp_path / "state")], env)


def test_terminal_display_in_a_real_pty(emu, tmp_path):
    term = _child(tmp_path, 30)
    try:
        # the whole first frame (its last line is the ETA), not a frame half painted
        first = term.wait_for(r"requests finished[\s\S]*ETA\s+\S")
        assert re.search(r"batch_llm\s+\S+\s+0/30 requests finished \(0%\)", first)
        assert re.search(r"ETA\s+unknown", first)
        screen = term.finish()
    finally:
        term.kill()
    assert "CHILD-DONE {'completed': 30}" in screen
    assert re.search(r"result\s+finished after \d+s: 30 of 30 jobs completed, 0 failed, "
                     r"0 cancelled", screen)
    assert re.search(r"batch_llm\s+━+\s+30/30 jobs answered \(100%\)", screen)
    assert re.search(r"jobs\s+completed 30  failed 0  cancelled 0  pending 0", screen)
    assert re.search(r"batches\s+collected 2", screen)
    # Drawn in place: the panel appears once on the final screen, not once per update.
    assert screen.count("result ") == 1 and screen.count("batch_llm ") == 1


def test_ctrl_c_in_a_real_pty_reports_the_stop_truthfully(emu, tmp_path):
    emu.configure(latency=1000.0, cancel_delay=0.0)
    term = _child(tmp_path, 200)
    try:
        term.wait_for(r"batches\s+running 2")
        emu.advance(400.0)  # about a third of each batch has run
        term.wait_for(r"requests finished")
        os.write(term.fd, b"\x03")  # Ctrl+C, typed into the terminal
        screen = term.finish()
    finally:
        term.kill()
    match = re.search(
        r"result\s+stopped \(interrupted\) after \S+: (\d+) of 200 jobs completed, 0 failed, "
        r"(\d+) cancelled", screen
    )
    assert match, screen
    completed, cancelled = int(match.group(1)), int(match.group(2))
    assert completed + cancelled == 200 and completed > 0 and cancelled > 0
    assert "200/200" not in screen and "(100%)" not in screen
    assert f"jobs answered ({completed / 200:.0%})" in screen
    assert "batchata-df: stopping" in screen
    assert f"'cancelled': {cancelled}" in screen and f"'completed': {completed}" in screen


@pytest.mark.parametrize("sink", [False, True])
def test_a_second_ctrl_c_draws_an_aborted_frame_saying_what_to_do(emu, tmp_path, sink):
    """After the abort the panel must not stay on a running frame (``ETA``, ``running``);
    a streaming call (``sink=``) too."""
    emu.configure(latency=1000.0, cancel_delay=10_000.0)  # the cancel does not end soon
    term = _child(tmp_path, 200, sink=sink)
    try:
        term.wait_for(r"batches\s+running 2")
        emu.advance(400.0)
        term.wait_for(r"requests finished")
        os.write(term.fd, b"\x03")  # Ctrl+C: stopping, cancelling the batches
        term.wait_for(r"batchata-df: stopping")
        os.write(term.fd, b"\x03")  # again: abort without waiting for the cancels
        screen = term.finish()
    finally:
        term.kill()
    # The traceback scrolls the panel off the screen: read what was written.
    written = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", term.raw.decode(errors="replace"))
    flat = " ".join(written.split())
    assert re.search(r"result aborted \(Ctrl\+C pressed again\) after \S+: 0 of 200 jobs "
                     r"completed, 0 failed, 0 cancelled, 200 not collected", flat), screen
    assert "call again with the same state=" in flat and "without paying twice" in flat
    assert "KeyboardInterrupt" in screen and "CHILD-DONE" not in screen
    # The panel's last frame is the last one drawn before the traceback; the traceback's
    # own source lines can say "batch_llm" and "running" (the second Ctrl+C may land while
    # a running frame is being drawn), so they are not read as a frame.
    panel = written[: written.index("Traceback (most recent call last)")]
    last_frame = panel[panel.rindex("batch_llm"):]
    assert re.search(r"result\s+aborted", last_frame), last_frame
    assert "ETA" not in last_frame and "running" not in last_frame, last_frame
    # The batches the cancel did not reach (cancel_delay) are said to be left there.
    assert re.search(r"batches\s+left at the provider 2", last_frame), last_frame


def test_jupyter_kernel_stores_the_panel_as_html(emu, tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            textwrap.dedent(
                """
                import polars as pl
                from pydantic import BaseModel
                from batchata_df import batch_llm

                class A(BaseModel):
                    n: int

                out = pl.DataFrame({"t": [str(i) for i in range(20)]}).pipe(
                    batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}",
                    items_per_batch=10, progress=True, max_cost_usd=1.0,
                )
                """
            )
        ),
        nbformat.v4.new_code_cell("out['_status'].to_list().count('completed')"),
    ]
    client = nbclient.NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = nb.cells[0].outputs
    displays = [o for o in outputs if o.output_type == "display_data"]
    assert len(displays) == 1, outputs  # one panel, updated in place
    html = displays[0].data["text/html"]
    text = displays[0].data["text/plain"]
    assert "<pre" in html and len(html) > 500
    for shown in (html, text):
        assert "20 of 20 jobs completed, 0 failed, 0 cancelled" in shown
        assert "completed 20" in shown and "pending 0" in shown
        assert "of $1.00 cap" in shown
    assert nb.cells[1].outputs[0].data["text/plain"] == "20"


MONOTONIC_CHILD = textwrap.dedent(
    """
    import functools
    import sys
    import polars as pl
    from pydantic import BaseModel
    from batchata_df import batch_llm, frame
    from batchata_df.engine import RunOptions

    # Poll every 50 ms: the emulator's clock, moved by the test, sets the pace.
    frame.RunOptions = functools.partial(
        RunOptions, poll_initial_s=0.05, poll_max_s=0.05, poll_factor=1.0
    )

    class A(BaseModel):
        n: int

    out = pl.DataFrame({"t": [str(i) for i in range(20)]}).pipe(
        batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}", items_per_batch=5,
        max_parallel_batches=4, progress=True, state=sys.argv[1],
    )
    print("CHILD-DONE", dict(out["_status"].value_counts().iter_rows()), flush=True)
    """
)


def test_the_terminal_bars_done_count_never_goes_back(emu, tmp_path):
    """A reviewer saw 15/20, then 12/20, 17/20, 14/20: a batch that ended dropped its
    "done in running batches" count before its rows counted completed (while its results
    downloaded). Every frame drawn on a real terminal, in order, must not go back."""
    emu.configure(latency=1000.0)
    script = tmp_path / "child.py"
    script.write_text(MONOTONIC_CHILD)
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    term = Terminal([sys.executable, str(script), str(tmp_path / "state")], env)
    try:
        term.wait_for(r"batches\s+running 4")
        alive = True
        while alive:
            emu.advance(120.0)  # an eighth of each batch's run: several frames per batch
            until = time.monotonic() + 0.6
            while alive and time.monotonic() < until:
                alive = term.read(0.1)
            if "CHILD-DONE" in term.text():
                break
        screen = term.finish()
    finally:
        term.kill()
    assert "CHILD-DONE {'completed': 20}" in screen
    frames = term.raw.decode("utf-8", "replace")
    shown = [int(n) for n in re.findall(r"(\d+)/20 (?:requests finished|jobs answered)", frames)]
    changes = [n for i, n in enumerate(shown) if i == 0 or shown[i - 1] != n]
    assert changes[-1] == 20, changes
    assert any(0 < n < 20 for n in changes), changes  # the bar moved while batches ran
    assert changes == sorted(changes), f"{changes}"


class _RecordingClient(nbclient.NotebookClient):
    """Keeps every text of every display update, in order (nbclient keeps the last)."""

    shown: list[str]

    def _update_display_id(self, display_id, msg):  # type: ignore[no-untyped-def]
        self.shown.append(msg["content"]["data"].get("text/plain", ""))
        super()._update_display_id(display_id, msg)


def test_the_notebook_panels_done_count_never_goes_back(emu, tmp_path):
    """The reviewer's case in Jupyter: 20 rows, items_per_batch=5, batches ending while
    others run. Every update of the one output cell, in order, must not go back."""
    emu.configure(latency=1000.0)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(MONOTONIC_CHILD.replace("sys.argv[1]", "'state'"))]
    client = _RecordingClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.shown = []
    finished = threading.Event()

    def move_the_clock() -> None:  # the kernel runs in the test's thread (nbclient's loop)
        while not finished.wait(0.6):
            if any("batches" in text and "submitted" not in text for text in client.shown):
                emu.advance(120.0)  # an eighth of each batch's run per step

    mover = threading.Thread(target=move_the_clock, daemon=True)
    mover.start()
    try:
        client.execute()
    finally:
        finished.set()
        mover.join()
    out = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert "CHILD-DONE {'completed': 20}" in out, nb.cells[0].outputs
    shown = [int(m.group(1)) for text in client.shown
             if (m := re.search(r"(\d+)/20 (?:requests finished|jobs answered)", text))]
    changes = [n for i, n in enumerate(shown) if i == 0 or shown[i - 1] != n]
    assert changes[-1] == 20, changes
    assert any(0 < n < 20 for n in changes), changes
    assert changes == sorted(changes), f"{changes}"


def test_the_harness_sees_a_frame_that_arrived_with_later_ones_in_one_read():
    """The Terminal looks at each of rich's frames, not only at the last of a read.

    On a loaded machine the test reads seldom, and a status shown for a moment (a download
    tried again) arrives in one read with the frames after it.
    """
    script = textwrap.dedent(
        """
        from rich.console import Console
        from rich.live import Live
        with Live("waiting\\nfor it", console=Console(), auto_refresh=False) as live:
            for word in ("brief-status", "later-1", "later-2"):
                live.update(word + "\\nsecond line", refresh=True)
        print("CHILD-DONE", flush=True)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    term = Terminal([sys.executable, "-c", script], env)
    try:
        _, status = os.waitpid(term.pid, 0)  # every frame is written before the first read
        term.status = status
        shown = term.wait_for(r"brief-status")
        term.wait_for(r"CHILD-DONE")
    finally:
        os.close(term.fd)
    assert "later" not in shown
    assert "brief-status" not in term.text()  # the screen has moved on since


def test_a_second_interrupt_in_jupyter_ends_the_panel_on_an_aborted_frame(emu, tmp_path):
    """Kernel -> Interrupt twice: the one output cell's last update says aborted and what to
    do; before, it stayed on ``... ETA unknown ... running 2``."""
    emu.configure(latency=1000.0, cancel_delay=10_000.0)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(CHILD.replace("int(sys.argv[1])", "40")
                                          .replace("sys.argv[2]", "'state'"))]
    client = _RecordingClient(
        nb, timeout=240, kernel_name="python3", allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.shown = []
    finished = threading.Event()

    def interrupt() -> None:
        # What Kernel -> Interrupt does (jupyter_client 8.10 LocalProvisioner.send_signal:
        # os.killpg of the kernel's group); km.interrupt_kernel is a coroutine here.
        group = os.getpgid(client.km.provisioner.process.pid)
        assert group != os.getpgrp()  # never this test's own group
        os.killpg(group, signal.SIGINT)

    def interrupt_twice() -> None:
        while not finished.wait(0.3):
            if any("running 2" in text for text in client.shown):
                break
        interrupt()  # Kernel -> Interrupt: stopping
        while not finished.wait(0.3):
            if any("stopping (interrupted)" in text for text in client.shown):
                break
        interrupt()  # again: abort

    worker = threading.Thread(target=interrupt_twice, daemon=True)
    worker.start()
    try:
        client.execute()
    finally:
        finished.set()
        worker.join()
    errors = [o for o in nb.cells[0].outputs if o.output_type == "error"]
    assert errors and errors[0].ename == "KeyboardInterrupt", nb.cells[0].outputs
    last = " ".join(client.shown[-1].split())
    assert "aborted (Ctrl+C pressed again)" in last, client.shown[-3:]
    assert "0 of 40 jobs completed" in last and "40 not collected" in last
    assert "call again with the same state=" in last
    assert "ETA" not in last, last
