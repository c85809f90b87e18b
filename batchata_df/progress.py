"""Progress display: a live terminal/notebook view, or plain lines when rich is missing."""

from __future__ import annotations

import sys
from collections.abc import Callable

from batchata_df.engine import ProgressSnapshot

__all__ = ["make_display"]


def _line(s: ProgressSnapshot) -> str:
    done = s.completed + s.failed + s.cancelled
    batches = ", ".join(f"{k}={v}" for k, v in sorted(s.batches.items())) or "-"
    return (
        f"{done}/{s.total} jobs (completed {s.completed}, failed {s.failed}, cancelled "
        f"{s.cancelled}) | batches: {batches} | cost ${s.cost_usd:.4f} | {s.elapsed_s:.0f}s"
    )


def make_display() -> Callable[[ProgressSnapshot], None]:
    """A progress callback printing a one-line summary to stderr when it changes."""
    last: list[str] = [""]

    def show(s: ProgressSnapshot) -> None:
        text = _line(s)
        if text != last[0] or s.phase == "done":
            last[0] = text
            print(text, file=sys.stderr, flush=True)

    return show
