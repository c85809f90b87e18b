"""Run the emulator: ``python -m batchata_df.emulator --port N [--latency S]``.

Prints exactly one line, ``batchata-df emulator listening on http://127.0.0.1:PORT``, once
the socket accepts connections (``batchata-df emulator`` adds the ``export`` lines that
point a run at it), then serves until SIGTERM or SIGINT (or, with
``--exit-with-parent``, until the process that started it is gone).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

from batchata_df.emulator.server import make_server

__all__ = ["exit_now", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m batchata_df.emulator",
        description="Loopback emulator of the OpenAI, Anthropic and Gemini batch APIs.",
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: pick a free one)")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds from batch creation to completion"
    )
    parser.add_argument("--host", default="127.0.0.1", help="127.0.0.1 or localhost only")
    parser.add_argument(
        "--cancel-unfinished",
        choices=("error_file", "omit"),
        default="error_file",
        help="what a cancelled batch does with requests that never ran",
    )
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop once the process that started the server is gone",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, show_env: bool = False) -> int:
    """Start the server and block until SIGTERM/SIGINT; return the exit code.

    With ``show_env`` (``batchata-df emulator``), the ready line is followed by the
    ``export`` lines that point a run at it (:func:`batchata_df.emulator.env_for`); a
    parent that reads only the ready line (:class:`~batchata_df.emulator.Emulator`) runs
    without it.

    Examples
    --------
    >>> main(["--host", "0.0.0.0"])  # doctest: +SKIP
    2
    """
    parent = os.getppid()  # first thing: the process that started this one
    args = _parser().parse_args(argv)
    if args.latency < 0:
        print(f"error: --latency must be >= 0, got {args.latency}", file=sys.stderr)
        return 2
    try:
        server = make_server(args.host, args.port, latency=args.latency)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot listen on port {args.port}: {e}", file=sys.stderr)
        return 1
    server.core.configure({"cancel_unfinished": args.cancel_unfinished})
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start_in_thread()
    print(f"batchata-df emulator listening on {server.url}", flush=True)
    if show_env:
        from batchata_df.emulator import env_for

        lines = [f"export {k}={v}" for k, v in env_for(server.url).items()]
        print(
            "Point batchata-df (and the OpenAI, Anthropic and Gemini SDKs) at it: run these\n"
            "in the shell that runs batchata-df (emulator keys, not real ones; Ctrl+C stops\n"
            "the emulator):\n  " + "\n  ".join(lines),
            flush=True,
        )
    # Nothing else goes to stdout: a parent that read the ready line from a pipe need
    # not drain it, and a stray print can never fill the pipe and block the server.
    with contextlib.suppress(OSError, ValueError):
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        # A parent killed with SIGKILL (a test run stopped by a timeout) cannot stop its
        # server: with --exit-with-parent the server notices it was orphaned (its parent
        # changed: re-parented to init or a subreaper) and stops itself. The parent is the
        # one seen at start, not a pid passed in: a launcher between the two (a Windows
        # venv's python.exe) would otherwise look like an orphaning.
        while not stop.wait(0.5):
            if args.exit_with_parent and os.getppid() != parent:
                break
    finally:
        server.stop()
    return 0


def exit_now(code: int) -> NoReturn:
    """Leave the process with ``code`` once :func:`main` returned, skipping the teardown.

    The socket is closed and the stored files removed by then: the interpreter's teardown
    would only free every request the server holds (a 1M-row emulator took many seconds to
    exit on SIGTERM, and looked as if it ignored it; 20,000 stored requests took 1.4 s
    against 0.08 s). ``python -m batchata_df.emulator`` and ``batchata-df emulator`` both
    leave through here.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
