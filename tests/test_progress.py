"""The progress display rendered to in-memory rich consoles."""

from __future__ import annotations

import io
import sys
import types
from typing import Any

import pytest

from batchata_df.engine import ProgressSnapshot
from batchata_df.progress import ProgressDisplay, format_line, make_display

rich_console = pytest.importorskip("rich.console")


def snap(done: int = 3, *, phase: str = "running", cost: float = 0.5) -> ProgressSnapshot:
    return ProgressSnapshot(
        total=10,
        completed=done,
        failed=1,
        cancelled=0,
        pending=10 - done - 1,
        batches={"in_progress": 2, "collected": 1},
        cost_usd=cost,
        elapsed_s=125.0,
        phase=phase,
    )


def terminal(out: io.StringIO) -> Any:
    return rich_console.Console(file=out, force_terminal=True, width=100, color_system=None)


def test_terminal_panel_updates_in_place() -> None:
    out = io.StringIO()
    show = make_display(max_cost_usd=2.0, console=terminal(out))
    assert show.mode == "terminal"
    show(snap(3))
    show(snap(9, phase="done", cost=1.9))
    text = out.getvalue()
    assert "4/10 jobs (40%)" in text
    assert "10/10 jobs (100%)" in text
    assert "completed 9" in text
    assert "failed 1" in text
    assert "in_progress 2" in text
    assert "collected 1" in text
    assert "$1.9000 of $2.00 cap (95%)" in text
    assert "2m05s" in text
    assert "\x1b[" in text  # cursor movement: redrawn in place, not appended
    assert "\x1b[?25h" in text  # cursor shown again once done


def test_close_is_idempotent_and_stops_updates() -> None:
    out = io.StringIO()
    with make_display(console=terminal(out)) as show:
        show(snap(1))
    size = len(out.getvalue())
    show.close()
    show(snap(5))
    assert len(out.getvalue()) == size


def test_lines_when_not_a_terminal_rate_limited() -> None:
    out = io.StringIO()
    console = rich_console.Console(file=out, width=200)
    show = make_display(max_cost_usd=1.0, console=console, min_interval_s=3600)
    assert show.mode == "lines"
    show(snap(1))
    show(snap(2))  # within the interval: held back
    show(snap(3))
    show(snap(8, phase="done"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("2/10 jobs (completed 1, failed 1, cancelled 0)")
    assert lines[1] == format_line(snap(8, phase="done"), 1.0)
    assert "\x1b" not in out.getvalue()


def test_lines_flush_held_back_state_on_close() -> None:
    out = io.StringIO()
    show = make_display(console=rich_console.Console(file=out, width=200), min_interval_s=3600)
    show(snap(1))
    show(snap(4))
    show.close()
    assert out.getvalue().splitlines()[-1].startswith("5/10 jobs")


def test_lines_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich.console", None)
    show = make_display()
    assert show.mode == "lines"
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    show(snap(2, phase="done"))
    assert err.getvalue().startswith("3/10 jobs")


def test_notebook_updates_one_output(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[Any] = []

    class Handle:
        def update(self, obj: Any) -> None:
            shown.append(("update", obj))

    def display(obj: Any, display_id: bool = False) -> Handle:
        assert display_id
        shown.append(("display", obj))
        return Handle()

    class ZMQInteractiveShell:
        pass

    ipython = types.ModuleType("IPython")
    ipython.get_ipython = ZMQInteractiveShell  # type: ignore[attr-defined]
    ipython_display = types.ModuleType("IPython.display")
    ipython_display.display = display  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipython_display)

    show = make_display(max_cost_usd=5.0)
    assert show.mode == "notebook"
    show(snap(2))
    show(snap(6, phase="done"))
    assert [kind for kind, _ in shown] == ["display", "update"]
    bundle = shown[-1][1]._repr_mimebundle_()
    assert "7/10 jobs" in bundle["text/plain"]
    assert "of $5.00 cap" in bundle["text/plain"]
    assert "<pre" in bundle["text/html"]


def test_display_is_a_progress_callable() -> None:
    show: ProgressDisplay = make_display(console=rich_console.Console(file=io.StringIO()))
    assert callable(show)


def test_importing_progress_does_not_import_rich() -> None:
    import subprocess

    code = "import batchata_df.progress, sys; print('rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_snapshots_report_local_activity_and_projection(emu):
    import polars as pl
    from pydantic import BaseModel

    from batchata_df import batch_llm

    class A(BaseModel):
        n: int

    seen = []
    pl.DataFrame({"t": [str(i) for i in range(6)]}).pipe(
        batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}", items_per_batch=2,
        max_parallel_batches=1, progress=seen.append,
    )
    activities = [s.activity for s in seen if s.activity]
    assert any(a.startswith("uploading batch 1 to openai (2 requests") for a in activities)
    assert any(a.startswith("downloading results of batch_") for a in activities)
    assert seen[-1].phase == "done"
    assert seen[-1].completed == 6
    assert any(s.projected_cost_usd for s in seen[:-1])
