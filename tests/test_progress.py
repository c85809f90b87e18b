"""The progress display: rendered to in-memory rich consoles, and its snapshots from real runs."""

from __future__ import annotations

import io
import re
import signal
import sys
import types
from typing import Any

import polars as pl
import pytest
import rich.console as rich_console
from pydantic import BaseModel

from batchata_df import batch_llm
from batchata_df.engine import ProgressSnapshot
from batchata_df.progress import ProgressDisplay, format_line, make_display, outcome_line, usd


class A(BaseModel):
    n: int


def snap(
    done: int = 3, *, phase: str = "running", cost: float = 0.5, **kw: Any
) -> ProgressSnapshot:
    values: dict[str, Any] = {
        "total": 10,
        "completed": done,
        "failed": 1,
        "cancelled": 0,
        "pending": 10 - done - 1,
        "batches": {"in_progress": 2, "collected": 1},
        "cost_usd": cost,
        "elapsed_s": 125.0,
        "phase": phase,
    }
    values.update(kw)
    return ProgressSnapshot(**values)


class Clock:
    """A clock the test moves by hand: no assertion depends on the machine's speed."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def flat(out: io.StringIO) -> str:
    """What was drawn, with runs of spaces (the panel's column padding) as one."""
    return re.sub(r"[ \t]+", " ", out.getvalue())


def terminal(out: io.StringIO) -> Any:
    return rich_console.Console(file=out, force_terminal=True, width=120, color_system=None)


def test_terminal_panel_updates_in_place() -> None:
    out = io.StringIO()
    show = make_display(max_cost_usd=2.0, console=terminal(out), refresh_s=0)
    assert show.mode == "terminal"
    show(snap(3, in_flight_done=2))
    show(snap(9, phase="done", cost=1.9, pending=0))
    text = out.getvalue()
    assert "6/10 requests finished (60%)" in text  # 3 completed + 1 failed + 2 not yet collected
    assert "(of which 2 done in batches not yet collected)" in text
    assert "finished after 2m05s: 9 of 10 jobs completed, 1 failed, 0 cancelled" in text
    assert "in_progress 2" in text
    assert "collected 1" in text
    assert "$1.9000 of $2.00 cap (95%)" in text
    assert "\x1b[" in text  # cursor movement: redrawn in place, not appended
    assert "\x1b[?25h" in text  # cursor shown again once done


def test_eta_unknown_until_there_is_data_then_counts_down() -> None:
    clock = Clock()
    out = io.StringIO()
    show = make_display(console=terminal(out), refresh_s=0, clock=clock)
    show(snap(0, failed=0, pending=10, eta_s=None))
    assert "ETA unknown" in flat(out)
    show(snap(4, failed=0, pending=6, eta_s=90.0))
    assert "ETA ~1m30s" in flat(out)
    clock.now += 30  # no new snapshot: the next redraw moves the ETA and the clock
    show.tick()
    assert "ETA ~1m00s" in flat(out)
    assert "elapsed 2m35s" in flat(out)


def test_clock_ticks_between_snapshots() -> None:
    clock = Clock()
    out = io.StringIO()
    show = make_display(console=terminal(out), refresh_s=0, clock=clock)
    show(snap(3, elapsed_s=10.0))
    assert "elapsed 10s" in flat(out)
    for _ in range(3):
        clock.now += 20
        show.tick()
    assert "elapsed 1m10s" in flat(out)
    show(snap(3, phase="done", elapsed_s=75.0, pending=6))
    clock.now += 500
    show.tick()  # closed: nothing more is drawn
    assert "elapsed 9m" not in flat(out)


def test_terminal_refreshes_on_its_own() -> None:
    """rich Live redraws from render() without a new snapshot (the clock moves)."""
    clock = Clock()
    out = io.StringIO()
    show = make_display(console=terminal(out), refresh_s=0.05, clock=clock)
    show(snap(3, elapsed_s=10.0))
    clock.now += 50
    import time

    deadline = time.monotonic() + 30
    while "elapsed 1m00s" not in flat(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    show.close()
    assert "elapsed 1m00s" in flat(out)


def test_stopped_run_reads_as_stopped_not_complete() -> None:
    out = io.StringIO()
    show = make_display(console=terminal(out), refresh_s=0)
    final = ProgressSnapshot(
        total=2000, completed=424, failed=0, cancelled=1576, pending=0, batches={},
        cost_usd=0.1, elapsed_s=61.0, phase="done", stop_reason="interrupted",
    )
    show(final)
    text = out.getvalue()
    assert "stopped (interrupted) after 1m01s: 424 of 2,000 jobs completed, 0 failed, " \
        "1,576 cancelled" in text
    assert "2,000/2,000" not in text and "100%" not in text
    assert outcome_line(final).startswith("stopped (interrupted)")


def test_wait_false_outcome_names_pending_rows() -> None:
    line = outcome_line(snap(0, failed=0, pending=10, phase="done"))
    assert line.endswith("0 of 10 jobs completed, 0 failed, 0 cancelled, 10 pending "
                         "(call again with the same state= to collect)")


def test_close_is_idempotent_and_stops_updates() -> None:
    out = io.StringIO()
    with make_display(console=terminal(out), refresh_s=0) as show:
        show(snap(1))
    size = len(out.getvalue())
    show.close()
    show(snap(5))
    assert len(out.getvalue()) == size


def test_lines_when_not_a_terminal_rate_limited() -> None:
    out = io.StringIO()
    console = rich_console.Console(file=out, width=300)
    show = make_display(max_cost_usd=1.0, console=console, min_interval_s=3600)
    assert show.mode == "lines"
    show(snap(1))
    show(snap(2))  # within the interval: held back
    show(snap(3))
    show(snap(8, phase="done", pending=1))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("2/10 finished (completed 1, failed 1, cancelled 0, pending 8)")
    assert "ETA unknown" in lines[0]
    assert lines[1] == format_line(snap(8, phase="done", pending=1), 1.0)
    assert lines[1].startswith("finished after 2m05s: 8 of 10 jobs completed, 1 failed")
    assert "\x1b" not in out.getvalue()


def test_lines_flush_held_back_state_on_close() -> None:
    out = io.StringIO()
    show = make_display(console=rich_console.Console(file=out, width=300), min_interval_s=3600)
    show(snap(1))
    show(snap(4))
    show.close()
    assert out.getvalue().splitlines()[-1].startswith("5/10 finished")


def test_lines_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich.console", None)
    show = make_display()
    assert show.mode == "lines"
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    show(snap(2, phase="done"))
    assert err.getvalue().startswith("finished after 2m05s: 2 of 10 jobs completed")


def test_notebook_view_carries_the_panel_in_html_and_text(monkeypatch: pytest.MonkeyPatch) -> None:
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

    show = make_display(max_cost_usd=5.0, refresh_s=0)
    assert show.mode == "notebook"
    show(snap(2))
    show(snap(6, phase="done", pending=3))
    assert [kind for kind, _ in shown] == ["display", "update"]
    bundle = shown[-1][1]._repr_mimebundle_()
    assert "6 of 10 jobs completed, 1 failed" in bundle["text/plain"]
    assert "of $5.00 cap" in bundle["text/plain"]
    # The HTML is not empty (export_text used to clear the buffer before export_html).
    assert "6 of 10 jobs completed, 1 failed" in bundle["text/html"]
    assert "of $5.00 cap" in bundle["text/html"]


def test_display_is_a_progress_callable(emu) -> None:
    """A display made by hand is accepted as ``progress=`` and draws the real run's outcome."""
    out = io.StringIO()
    show: ProgressDisplay = make_display(
        max_cost_usd=1.0, console=rich_console.Console(file=out, width=300), min_interval_s=0
    )
    result = pl.DataFrame({"t": ["1", "2", "3"]}).pipe(
        batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}", progress=show,
        max_cost_usd=1.0,
    )
    assert result["_status"].to_list() == ["completed"] * 3
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("0/3 finished (completed 0, failed 0, cancelled 0, pending 3)")
    cost = result["_cost_usd"].sum()
    assert lines[-1].startswith("finished after ")
    assert lines[-1].endswith(
        f": 3 of 3 jobs completed, 0 failed, 0 cancelled | cost {usd(cost)} of $1.00 cap "
        f"({cost / 1.0:.0%})"
    ), lines[-1]
    # A known cost of a few millionths reads as itself, never as $0.0000.
    shown = float(lines[-1].split("| cost $")[1].split()[0])
    assert 0 < cost < 0.001 and shown == pytest.approx(cost, rel=0.05)
    show(snap(1))  # the run's last snapshot closed it: nothing more is drawn
    assert out.getvalue().splitlines() == lines


def test_importing_progress_does_not_import_rich() -> None:
    import subprocess

    code = "import batchata_df.progress, sys; print('rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_snapshots_report_local_activity_and_projection(emu):
    seen: list[ProgressSnapshot] = []
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


@pytest.fixture
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Poll every 50 ms: the emulator's clock, moved by the test, sets the pace."""
    import functools

    from batchata_df import frame
    from batchata_df.engine import RunOptions

    monkeypatch.setattr(
        frame, "RunOptions",
        functools.partial(RunOptions, poll_initial_s=0.05, poll_max_s=0.05, poll_factor=1.0),
    )


def _advancing(emu: Any, seen: list[ProgressSnapshot], step: float):
    """A progress callback that moves the emulator's clock ``step`` s per running snapshot.

    Progress then depends on how many polls were made, not on how fast this machine is.
    """

    def callback(s: ProgressSnapshot) -> None:
        seen.append(s)
        if s.phase == "running" and s.batches:
            emu.advance(step)

    return callback


@pytest.mark.parametrize("model", ["gpt-4.1-mini", "gemini-2.5-flash"])
def test_in_flight_request_counts_move_while_a_batch_runs(emu, quick_polls, model):
    emu.configure(latency=1000.0)
    seen: list[ProgressSnapshot] = []
    out = pl.DataFrame({"t": [str(i) for i in range(20)]}).pipe(
        batch_llm, schema=A, model=model, prompt="{t}",
        progress=_advancing(emu, seen, 150.0),
    )
    assert out["_status"].to_list() == ["completed"] * 20
    running = [s.in_flight_done for s in seen if s.phase == "running"]
    partial = [n for n in running if 0 < n < 20]
    assert partial, running  # the bar moved before the batch ended
    assert partial == sorted(partial)
    # Never back, also when a batch ends before its rows count completed.
    finished = [s.completed + s.failed + s.cancelled + s.in_flight_done for s in seen
                if s.phase == "running"]
    assert finished == sorted(finished), finished
    # The ETA is unknown until something finished, then known.
    first_progress = next(i for i, s in enumerate(seen) if s.in_flight_done)
    assert all(s.eta_s is None for s in seen[:first_progress])
    assert seen[first_progress].eta_s is not None
    assert seen[-1].phase == "done" and seen[-1].in_flight_done == 0


def test_a_collected_batchs_count_goes_when_its_rows_count(emu, quick_polls):
    """A batch's provider count is kept until its rows count completed, and not after: the
    first batch (1,000 s) is collected while three others (50,000 s) have run ~nothing."""
    emu.configure(latency=1000.0)
    seen: list[ProgressSnapshot] = []

    def callback(s: ProgressSnapshot) -> None:
        seen.append(s)
        if s.activity.startswith("uploading batch 2 "):
            emu.configure(latency=50_000.0)  # the later ones run on (within the 24 h)
        if s.phase == "running" and s.batches:
            emu.advance(150.0 if s.completed < 5 else 50_000.0)

    out = pl.DataFrame({"t": [str(i) for i in range(20)]}).pipe(
        batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}", items_per_batch=5,
        max_parallel_batches=4, progress=callback,
    )
    assert out["_status"].to_list() == ["completed"] * 20, out["_error"].unique().to_list()
    after_first = [s for s in seen if s.completed == 5 and s.batches.get("collected") == 1
                   and "ended" not in s.batches]
    assert after_first, f"{[(s.completed, s.batches, s.in_flight_done) for s in seen]}"
    assert all(s.in_flight_done == 0 for s in after_first), [
        (s.batches, s.in_flight_done, s.activity) for s in after_first
    ]
    ended_first = [s for s in seen if s.completed == 0 and s.batches.get("ended") == 1]
    assert ended_first and all(s.in_flight_done == 5 for s in ended_first)


def test_anthropic_counts_only_at_the_end_as_documented(emu, quick_polls):
    """Anthropic reports ``processing`` until the whole batch ends (anthropic 2.14
    ``MessageBatchRequestCounts``: "zero until processing of the entire Message Batch has
    ended"), so nothing is counted while it runs; once it ended its count is kept until
    its rows are counted (the results download in between)."""
    emu.configure(latency=1000.0)
    seen: list[ProgressSnapshot] = []
    pl.DataFrame({"t": [str(i) for i in range(5)]}).pipe(
        batch_llm, schema=A, model="claude-haiku-4-5", prompt="{t}",
        progress=_advancing(emu, seen, 300.0),
    )
    assert all(s.in_flight_done == 0 for s in seen if s.batches.get("running"))
    downloading = [s for s in seen if s.activity.startswith("downloading results")]
    assert downloading and all(
        (s.batches, s.in_flight_done, s.completed) == ({"ended": 1}, 5, 0) for s in downloading
    )
    assert seen[-1].completed == 5


def test_interrupted_run_reports_stop_and_cancelled_counts(emu, quick_polls):
    emu.configure(latency=1000.0, cancel_delay=0.0)
    seen: list[ProgressSnapshot] = []

    def callback(s: ProgressSnapshot) -> None:
        seen.append(s)
        if s.phase != "running" or s.stop_reason or not s.batches:
            return
        if s.in_flight_done:
            emu.advance(300.0)  # about half of each running batch is done
            signal.raise_signal(signal.SIGINT)  # Ctrl+C, once
        else:
            emu.advance(100.0)  # through OpenAI's validating phase (10% of the latency)

    out = pl.DataFrame({"t": [str(i) for i in range(40)]}).pipe(
        batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}", items_per_batch=10,
        max_parallel_batches=2, progress=callback,
    )
    final = seen[-1]
    counts = out["_status"].value_counts().sort("_status").rows()
    assert final.phase == "done" and final.stop_reason == "interrupted"
    assert final.completed + final.failed + final.cancelled == 40
    assert final.cancelled > 0 and final.completed > 0
    assert dict(counts) == {"cancelled": final.cancelled, "completed": final.completed}
    # Once both batches were uploaded the "now" line no longer says "uploading".
    assert not any(
        x.activity.startswith("uploading") for x in seen if x.batches.get("validating") == 2
    )
    assert outcome_line(final).startswith(
        f"stopped (interrupted) after {outcome_line(final).split(' after ')[1].split(':')[0]}: "
        f"{final.completed} of 40 jobs completed, 0 failed, {final.cancelled} cancelled"
    )


def test_a_wait_false_panel_says_submitted_not_finished(emu, tmp_path):
    emu.configure(latency=1000.0)
    out = io.StringIO()
    display = ProgressDisplay("lines", stream=out, min_interval_s=0.0)
    pl.DataFrame({"t": [str(i) for i in range(6)]}).pipe(
        batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}", state=tmp_path / "s",
        wait=False, progress=display,
    )
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("submitted, not waited for (wait=False), after "), last
    assert "0 of 6 jobs completed, 0 failed, 0 cancelled, 6 pending; call again with the " \
        "same state= to collect them" in last
    assert "finished" not in last


def test_a_resumed_calls_panel_shows_its_own_cost_beside_the_folders(emu, tmp_path):
    state = tmp_path / "s"
    rows = pl.DataFrame({"t": [f"question {i}" for i in range(4)]})
    first = rows.head(2).pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}",
                              state=state)
    before = emu.billing()
    seen: list[ProgressSnapshot] = []
    second = rows.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}", state=state,
                       progress=seen.append)
    final = seen[-1]
    earlier = float(first["_cost_usd"].sum())
    assert final.earlier_cost_usd == pytest.approx(earlier) and earlier > 0
    assert final.cost_usd == pytest.approx(float(second["_cost_usd"].sum()))
    this_call = float(second["_cost_usd"].tail(2).sum())
    assert len(emu.billing()) == len(before) + 2  # the new rows billed, the old ones not again
    line = format_line(final, max_cost_usd=None)
    assert f"cost {usd(this_call)} this call; {usd(final.cost_usd)} with earlier calls' " \
        "answers" in line, line
