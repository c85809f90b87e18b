"""Progress display for ``batch_llm(..., progress=True)``.

:func:`make_display` returns a :class:`ProgressDisplay`, a callable taking
:class:`~batchata_df.engine.ProgressSnapshot` s. It picks one of three modes:

``"terminal"``
    The console is a terminal: a rich panel updated in place (jobs bar, counts by status,
    provider batches by state, cost against the cap, elapsed time).
``"notebook"``
    Running in Jupyter (or Colab): the same panel, updated in place in one output cell
    through ``IPython.display`` (no ipywidgets needed).
``"lines"``
    Anything else (CI logs, a file, rich not installed): one plain line when something
    changed, at most every ``min_interval_s`` seconds, and always the final state.

rich and IPython are imported only when a display is made, so an unused display costs
nothing. Call :meth:`ProgressDisplay.close` (or use the display as a context manager) when
the run ends or fails; the final ``phase="done"`` snapshot closes it too.
"""

from __future__ import annotations

import io
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal

from batchata_df.engine import ProgressSnapshot

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

__all__ = [
    "DisplayMode",
    "PlanSummary",
    "ProgressDisplay",
    "format_line",
    "make_display",
    "outcome_line",
    "plan_table",
    "plan_text",
]

DisplayMode = Literal["terminal", "notebook", "lines"]


def _duration(seconds: float) -> str:
    s = int(max(seconds, 0))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _batches(s: ProgressSnapshot) -> str:
    """The batches by state, for the display.

    On an aborted call's last frame the batches last seen running are said to be left at
    the provider: the call no longer watches them.

    Examples
    --------
    >>> from batchata_df.engine import ProgressSnapshot
    >>> snap = ProgressSnapshot(total=9, completed=3, failed=0, cancelled=0, pending=6,
    ...     batches={"running": 2, "collected": 1}, cost_usd=0.0, elapsed_s=3.0,
    ...     phase="running")
    >>> _batches(snap)
    'collected 1, running 2'
    >>> from dataclasses import replace
    >>> _batches(replace(snap, phase="done", stop_reason=ABORTED))
    'collected 1, left at the provider 2'
    """
    counts = s.batches
    if s.stop_reason == ABORTED and "running" in counts:
        counts = {("left at the provider" if k == "running" else k): v for k, v in counts.items()}
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none yet"


def _realtime(s: ProgressSnapshot) -> str:
    """The realtime part of a run, for the display (``mode="realtime"`` / ``"auto"``).

    Examples
    --------
    >>> from batchata_df.engine import ProgressSnapshot
    >>> snap = ProgressSnapshot(total=20, completed=12, failed=0, cancelled=0, pending=8,
    ...     batches={}, cost_usd=0.01, elapsed_s=3.0, phase="running", realtime_in_flight=8)
    >>> _realtime(snap)
    '8 requests in flight (standard price)'
    """
    if s.phase == "done":
        return "answered one request at a time (standard price)"
    return f"{s.realtime_in_flight:,} requests in flight (standard price)"


def _cap(usd: float) -> str:
    """A cap as the user wrote it: ``$5.00``, ``$0.0006`` (never rounded to ``$0.00``).

    Examples
    --------
    >>> _cap(5), _cap(1234.5), _cap(0.0006), _cap(0.002)
    ('$5.00', '$1,234.50', '$0.0006', '$0.002')
    """
    return f"${usd:,.2f}" if round(usd, 2) == usd else f"${usd:,.6g}"


def usd(cost: float, *, thousands: bool = True) -> str:
    """A cost in dollars for people: four decimals, more for a cost too small to show.

    A known non-zero cost never reads as zero: below $0.001 it is shown to two
    significant digits. Zero is ``$0.0000``.

    Examples
    --------
    >>> usd(0.0123), usd(0.0), usd(1234.5), usd(1234.5, thousands=False)
    ('$0.0123', '$0.0000', '$1,234.5000', '$1234.5000')
    >>> usd(0.00012), usd(3.456e-06), usd(9.996e-07), usd(0.00099999)
    ('$0.00012', '$0.0000035', '$0.0000010', '$0.0010')
    """
    shown = float(f"{cost:.1e}") if cost > 0 and math.isfinite(cost) else cost
    if shown <= 0 or not math.isfinite(shown) or shown >= 0.001:
        return f"${cost:,.4f}" if thousands else f"${cost:.4f}"
    decimals = 1 - math.floor(math.log10(shown))  # two significant digits
    return f"${shown:.{decimals}f}"


def _cost(s: ProgressSnapshot, max_cost_usd: float | None) -> str:
    """The cost line; after a resume this call's spend and the total with earlier calls.

    Examples
    --------
    >>> from batchata_df.engine import ProgressSnapshot
    >>> print(_cost(ProgressSnapshot(total=4, completed=4, failed=0, cancelled=0, pending=0,
    ...     batches={}, cost_usd=0.03, elapsed_s=1.0, phase="done", earlier_cost_usd=0.02),
    ...     max_cost_usd=1.0))
    $0.0100 this call; $0.0300 with earlier calls' answers, of $1.00 cap (3%)
    """
    text = usd(s.cost_usd)
    if s.earlier_cost_usd > 0:
        # The CLI's summary says both too (cli._cost_summary): a resumed call that sent
        # little must not look as if it spent the folder's whole bill.
        text = (
            f"{usd(max(s.cost_usd - s.earlier_cost_usd, 0.0))} this call; {text} with "
            "earlier calls' answers"
        )
        if max_cost_usd is not None and max_cost_usd > 0:
            text += ","
    if max_cost_usd is not None and max_cost_usd > 0:
        text += f" of {_cap(max_cost_usd)} cap ({s.cost_usd / max_cost_usd:.0%})"
    if s.reserved_usd > 0:
        text += f", {usd(s.reserved_usd)} held (worst case in flight)"
    if s.cache_saved_usd > 0:
        text += f", {usd(s.cache_saved_usd)} saved by caching"
    return text + _possibly_billed(s)


def _possibly_billed(s: ProgressSnapshot) -> str:
    """The call's realtime attempts answered 5xx or lost, beside the cost ("" for none).

    The provider may have billed them and no cost is known: at the worst case the cap
    counts for them, or unknown when none was recorded (never $0).

    Examples
    --------
    >>> from batchata_df.engine import ProgressSnapshot
    >>> snap = ProgressSnapshot(total=3, completed=3, failed=0, cancelled=0, pending=0,
    ...     batches={}, cost_usd=0.01, elapsed_s=1.0, phase="done", unknown_billed=1,
    ...     unknown_billed_usd=0.002)
    >>> _possibly_billed(snap)
    ', plus up to $0.0020 for 1 attempt answered 5xx or lost (possibly billed)'
    >>> import dataclasses
    >>> _possibly_billed(dataclasses.replace(snap, unknown_billed=2, unknown_billed_usd=0.0,
    ...                                      unknown_billed_unpriced=2))
    ', plus an unknown amount for 2 attempts answered 5xx or lost (possibly billed)'
    """
    n = s.unknown_billed
    if not n:
        return ""
    amount = f"up to {usd(s.unknown_billed_usd)}"
    if s.unknown_billed_unpriced == n:
        amount = "an unknown amount"
    elif s.unknown_billed_unpriced:
        amount += " and an unknown amount"
    attempts = "1 attempt" if n == 1 else f"{n:,} attempts"
    return f", plus {amount} for {attempts} answered 5xx or lost (possibly billed)"


def cap_line(s: ProgressSnapshot) -> str:
    """What the cap's worst-case reservation is doing to the run ("" when nothing).

    Examples
    --------
    >>> from batchata_df.engine import ProgressSnapshot
    >>> print(cap_line(ProgressSnapshot(total=500, completed=96, failed=0, cancelled=0,
    ...     pending=404, batches={}, cost_usd=0.1, elapsed_s=9.0, phase="running",
    ...     cap_waiting=404, cap_rounds=1)))
    cap serialises the run: 404 requests wait for the worst case held by batches in flight
    """
    if s.cap_waiting and s.phase != "done":
        return (
            f"cap serialises the run: {s.cap_waiting:,} requests wait for the worst case "
            "held by batches in flight"
        )
    return ""


def _eta(s: ProgressSnapshot, since: float) -> str:
    if s.phase == "done":
        return ""
    if s.stop_reason:
        return f"stopping ({s.stop_reason})"
    if s.eta_s is None:
        return "unknown"
    return "~" + _duration(max(s.eta_s - since, 0.0))


def _finished(s: ProgressSnapshot) -> int:
    """Requests finished: ended jobs plus those done in batches not yet collected."""
    return s.completed + s.failed + s.cancelled + s.in_flight_done


ABORTED = "aborted"
"""The ``stop_reason`` of the frame drawn when a second Ctrl+C aborted the call."""


def outcome_line(s: ProgressSnapshot) -> str:
    """The final line of a run: what became of its jobs, stated plainly.

    Examples
    --------
    >>> from batchata_df.engine import ProgressSnapshot
    >>> print(outcome_line(ProgressSnapshot(total=2000, completed=424, failed=0,
    ...     cancelled=1576, pending=0, batches={}, cost_usd=0.0, elapsed_s=61.0,
    ...     phase="done", stop_reason="interrupted")))
    stopped (interrupted) after 1m01s: 424 of 2,000 jobs completed, 0 failed, 1,576 cancelled
    >>> print(outcome_line(ProgressSnapshot(total=120, completed=0, failed=0, cancelled=0,
    ...     pending=120, batches={}, cost_usd=0.0, elapsed_s=5.0, phase="done",
    ...     stop_reason=ABORTED)))  # doctest: +NORMALIZE_WHITESPACE
    aborted (Ctrl+C pressed again) after 5s: 0 of 120 jobs completed, 0 failed, 0 cancelled,
    120 not collected; batches already sent stay at the provider (cancelled if the cancel got
    there): call again with the same state= (or the folder the error names) to collect what
    they answered and send the rest, without paying twice
    """
    if s.stop_reason == ABORTED:
        return (
            f"aborted (Ctrl+C pressed again) after {_duration(s.elapsed_s)}: {s.completed:,} "
            f"of {s.total:,} jobs completed, {s.failed:,} failed, {s.cancelled:,} cancelled, "
            f"{s.pending:,} not collected; batches already sent stay at the provider "
            "(cancelled if the cancel got there): call again with the same state= (or the "
            "folder the error names) to collect what they answered and send the rest, "
            "without paying twice"
        )
    if not s.waited and not s.stop_reason and s.pending:
        return (
            f"submitted, not waited for (wait=False), after {_duration(s.elapsed_s)}: "
            f"{s.completed:,} of {s.total:,} jobs completed, {s.failed:,} failed, "
            f"{s.cancelled:,} cancelled, {s.pending:,} pending; call again with the same "
            "state= to collect them"
        )
    how = f"stopped ({s.stop_reason})" if s.stop_reason else "finished"
    text = (
        f"{how} after {_duration(s.elapsed_s)}: {s.completed:,} of {s.total:,} jobs completed, "
        f"{s.failed:,} failed, {s.cancelled:,} cancelled"
    )
    if s.pending:
        text += f", {s.pending:,} pending (call again with the same state= to collect)"
    return text


def format_line(s: ProgressSnapshot, max_cost_usd: float | None = None, since: float = 0.0) -> str:
    """One plain-text line summarising a snapshot (the ``"lines"`` mode).

    Examples
    --------
    >>> from batchata_df.engine import ProgressSnapshot
    >>> snap = ProgressSnapshot(total=10, completed=6, failed=1, cancelled=0, pending=3,
    ...     batches={"running": 1, "collected": 1}, cost_usd=0.25, elapsed_s=75.0,
    ...     phase="running", in_flight_done=1, eta_s=20.0)
    >>> print(format_line(snap, max_cost_usd=1.0))
    8/10 finished (completed 6, failed 1, cancelled 0, pending 3) | batches: collected 1, running 1 | cost $0.2500 of $1.00 cap (25%) | ETA ~20s | 1m15s
    """  # noqa: E501
    if s.phase == "done":
        return f"{outcome_line(s)} | cost {_cost(s, max_cost_usd)}"
    sending = (
        f"realtime: {_realtime(s)}" if s.realtime_in_flight is not None and not s.batches
        else f"batches: {_batches(s)}"
    )
    return (
        f"{_finished(s):,}/{s.total:,} finished (completed {s.completed:,}, failed {s.failed:,}, "
        f"cancelled {s.cancelled:,}, pending {s.pending:,}) | {sending} | "
        f"cost {_cost(s, max_cost_usd)} | ETA {_eta(s, since)} | "
        f"{_duration(s.elapsed_s + since)}" + (f" | {s.activity}" if s.activity else "")
        + (f" | {cap_line(s)}" if cap_line(s) else "")
    )


def estimate_text(s: ProgressSnapshot) -> str:
    """The call's expected cost beside its worst case (what the cap reserves).

    Examples
    --------
    >>> from batchata_df.engine import ProgressSnapshot
    >>> print(estimate_text(ProgressSnapshot(total=1, completed=0, failed=0, cancelled=0,
    ...     pending=1, batches={}, cost_usd=0.0, elapsed_s=0.0, phase="running",
    ...     expected_cost_usd=0.012, worst_case_usd=0.9)))
    expected $0.0120, worst case $0.9000 (what the cap reserves)
    """
    return (
        f"expected {usd(s.expected_cost_usd or 0.0)}, worst case {usd(s.worst_case_usd or 0.0)} "
        "(what the cap reserves)"
    )


def _panel(s: ProgressSnapshot, max_cost_usd: float | None, since: float = 0.0) -> RenderableType:
    """The rich view of a snapshot (terminal and notebook modes).

    ``since`` is the time since the snapshot arrived: the clock and the ETA move with it
    between polls (which back off to a minute).
    """
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    done = s.phase == "done"
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    bar = Table.grid(padding=(0, 1))
    if done:
        # Only answered jobs fill the bar: a stopped run must not look complete.
        answered = s.completed + s.failed
        pct = f" ({answered / s.total:.0%})" if s.total else ""
        bar.add_row(
            ProgressBar(total=max(s.total, 1), completed=answered, width=40),
            Text(f"{answered:,}/{s.total:,} jobs answered{pct}"),
        )
    else:
        finished = _finished(s)
        pct = f" ({finished / s.total:.0%})" if s.total else ""
        bar.add_row(
            ProgressBar(total=max(s.total, 1), completed=finished, width=40),
            Text(f"{finished:,}/{s.total:,} requests finished{pct}"),
        )
    grid.add_row("batch_llm", bar)
    if done:
        style = "bold yellow" if s.stop_reason or s.pending else "bold green"
        grid.add_row("result", Text(outcome_line(s), style=style))
    counts = Text.assemble(
        (f"completed {s.completed:,}", "green"),
        "  ",
        (f"failed {s.failed:,}", "red" if s.failed else ""),
        "  ",
        (f"cancelled {s.cancelled:,}", "yellow" if s.cancelled else ""),
        "  ",
        (f"pending {s.pending:,}", "dim"),
    )
    if s.in_flight_done and not done:
        counts.append(f"  (of which {s.in_flight_done:,} done in batches not yet collected)",
                      "dim")
    grid.add_row("jobs", counts)
    if s.batches or s.realtime_in_flight is None:
        grid.add_row("batches", Text(_batches(s)))
    if s.realtime_in_flight is not None:
        grid.add_row("realtime", Text(_realtime(s)))
    near_cap = max_cost_usd is not None and s.cost_usd >= 0.9 * max_cost_usd
    grid.add_row("cost", Text(_cost(s, max_cost_usd), style="bold red" if near_cap else ""))
    if s.projected_cost_usd is not None and not done:
        grid.add_row("projected", Text(f"{usd(s.projected_cost_usd)} at the current rate"))
    if s.expected_cost_usd is not None and not done:
        grid.add_row("estimate", Text(estimate_text(s)))
    if cap_line(s):
        grid.add_row("cap", Text(cap_line(s), style="yellow"))
    if not done:
        grid.add_row("ETA", Text(_eta(s, since)))
    if s.activity and not done:
        grid.add_row("now", Text(s.activity, style="cyan"))
    grid.add_row("elapsed", Text(_duration(s.elapsed_s + (0.0 if done else since))))
    return grid


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (or Colab); never imports IPython itself."""
    ipython_module = sys.modules.get("IPython")
    if ipython_module is None:
        return False
    get_ipython = getattr(ipython_module, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    if shell is None:
        return False
    kind = type(shell)
    return kind.__name__ == "ZMQInteractiveShell" or "google.colab" in kind.__module__


class _NotebookView:
    """An object IPython displays as the panel, in HTML and plain text."""

    def __init__(self, renderable: RenderableType) -> None:
        from rich.console import Console

        console = Console(
            file=io.StringIO(),
            record=True,
            width=100,
            force_terminal=False,
            force_jupyter=False,
            color_system="truecolor",
        )
        console.print(renderable)
        # Both exports read the record buffer: only the last may clear it.
        self.text = console.export_text(styles=False, clear=False)
        self.html = console.export_html(
            inline_styles=True, code_format="<pre style='line-height:1.3'>{code}</pre>"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, str]:
        return {"text/plain": self.text, "text/html": self.html}


class ProgressDisplay:
    """A progress callback that draws :class:`ProgressSnapshot` s (see module docs).

    Make one with :func:`make_display`. Between snapshots (polls back off to a minute) the
    terminal and notebook views are redrawn every ``refresh_s`` seconds, so the elapsed
    time and the ETA keep moving; ``clock`` is the time source (tests pass a fake one).
    """

    def __init__(
        self,
        mode: DisplayMode,
        *,
        max_cost_usd: float | None = None,
        console: Console | None = None,
        stream: IO[str] | None = None,
        min_interval_s: float = 5.0,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mode: DisplayMode = mode
        self.max_cost_usd = max_cost_usd
        self.min_interval_s = min_interval_s
        self.refresh_s = refresh_s
        self._clock = clock
        self._console = console
        self._stream = stream
        self._live: Live | None = None
        self._handle: Any = None
        self._last_text = ""
        self._last_time = float("-inf")
        self._pending: ProgressSnapshot | None = None
        self._closed = False
        # (snapshot, when it arrived), replaced as one object: render() reads it without a
        # lock, because rich's refresh thread calls render() while holding Live's own lock.
        self._latest: tuple[ProgressSnapshot, float] | None = None
        self._lock = threading.RLock()
        self._ticker: threading.Thread | None = None
        self._stop_ticking = threading.Event()

    def __call__(self, snapshot: ProgressSnapshot) -> None:
        """Show ``snapshot``; a ``phase="done"`` snapshot is shown and closes the display."""
        with self._lock:
            if self._closed:
                return
            self._latest = (snapshot, self._clock())
            if self.mode == "lines":
                self._line(snapshot)
            elif self.mode == "terminal":
                self._terminal()
            else:
                self._notebook()
        if snapshot.phase == "done":
            self.close()

    def render(self) -> RenderableType:
        """The rich view of the latest snapshot, its clock moved to now."""
        latest = self._latest
        if latest is None:
            from rich.text import Text

            return Text("batch_llm: starting")
        s, received = latest
        return _panel(s, self.max_cost_usd, since=self._clock() - received)

    def tick(self) -> None:
        """Redraw the latest snapshot with the time moved on (the refresh does this)."""
        with self._lock:
            if self._closed or self._latest is None:
                return
            if self.mode == "terminal" and self._live is not None:
                self._live.refresh()
            elif self.mode == "notebook" and self._handle is not None:
                self._handle.update(_NotebookView(self.render()))

    def close(self) -> None:
        """Stop updating in place, and print the last state if rate limiting held it back."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop_ticking.set()
            if self._pending is not None:
                self._emit(format_line(self._pending, self.max_cost_usd))
                self._pending = None
            live, self._live = self._live, None
        if live is not None:
            # Outside our lock: stop() joins rich's refresh thread, which may be drawing.
            live.stop()

    def abort(self) -> None:
        """Draw a last frame saying the call was aborted (a second Ctrl+C), then close.

        Without it the panel stayed on its last running frame (``ETA unknown``, batches
        ``running``), as if the call still ran, and said nothing of what to do next.
        """
        with self._lock:
            latest = self._latest
            if self._closed or latest is None:
                pass
            else:
                s, received = latest
                final = replace(
                    s, phase="done", stop_reason=ABORTED,
                    elapsed_s=s.elapsed_s + (self._clock() - received),
                )
                self._pending = None
                self._latest = (final, self._clock())
                if self.mode == "lines":
                    self._emit(format_line(final, self.max_cost_usd))
                elif self.mode == "terminal" and self._live is not None:
                    self._live.refresh()
                elif self.mode == "notebook" and self._handle is not None:
                    self._handle.update(_NotebookView(self.render()))
        self.close()

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def show_plan(self, plan: PlanSummary) -> None:
        """Show a dry run's summary: a table in a terminal or notebook, plain text otherwise."""
        if self.mode == "lines":
            self._emit(plan_text(plan))
        elif self.mode == "terminal" and self._console is not None:
            self._console.print(plan_table(plan))
        else:
            from IPython.display import display  # type: ignore[import-not-found, unused-ignore]

            display(_NotebookView(plan_table(plan)))  # type: ignore[no-untyped-call, unused-ignore]

    # -- modes ---------------------------------------------------------------------------------

    def _emit(self, text: str) -> None:
        if self._console is not None:
            self._console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            stream = self._stream if self._stream is not None else sys.stderr
            print(text, file=stream, flush=True)

    def _line(self, s: ProgressSnapshot) -> None:
        text = format_line(s, self.max_cost_usd)
        if text == self._last_text:
            self._pending = None  # back to what is already printed
            return
        now = self._clock()
        if s.phase != "done" and now - self._last_time < self.min_interval_s:
            self._pending = s
            return
        self._last_text, self._last_time, self._pending = text, now, None
        self._emit(text)

    def _terminal(self) -> None:
        from rich.live import Live

        if self._live is None:
            # Live redraws from render() on its own thread every refresh_s: the clock moves
            # between polls. batch_llm closes the display in a finally, so no refresh is
            # left drawing over the prompt after a failure.
            self._live = Live(
                get_renderable=self.render,
                console=self._console,
                auto_refresh=self.refresh_s > 0,
                refresh_per_second=1 / self.refresh_s if self.refresh_s > 0 else 1,
                transient=False,
                # print()s while the view is up (the Ctrl+C notice) go above it.
                redirect_stdout=True,
                redirect_stderr=True,
            )
            self._live.start()
        self._live.refresh()

    def _notebook(self) -> None:
        from IPython.display import display  # type: ignore[import-not-found, unused-ignore]

        view = _NotebookView(self.render())
        if self._handle is None:
            self._handle = display(view, display_id=True)  # type: ignore[no-untyped-call, unused-ignore]
            if self.refresh_s > 0:
                self._ticker = threading.Thread(
                    target=self._tick_loop, name="batchata-df-progress", daemon=True
                )
                self._ticker.start()
        else:
            self._handle.update(view)

    def _tick_loop(self) -> None:
        while not self._stop_ticking.wait(self.refresh_s):
            self.tick()


def make_display(
    *,
    max_cost_usd: float | None = None,
    mode: DisplayMode | None = None,
    console: Console | None = None,
    min_interval_s: float = 5.0,
    refresh_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> ProgressDisplay:
    """A live progress display for :func:`~batchata_df.batch_llm`.

    Parameters
    ----------
    max_cost_usd
        The run's cost cap, shown next to the cost so far.
    mode
        ``"terminal"``, ``"notebook"`` or ``"lines"``; by default a notebook when running in
        Jupyter, else a terminal when the console (standard error) is one, else lines.
        Without rich installed (``pip install 'batchata-df[progress]'``) always lines.
    console
        The rich console to draw on (default: standard error).
    min_interval_s
        In ``"lines"`` mode, the least time between two lines.
    refresh_s
        In the terminal and notebook modes, how often the view is redrawn between
        snapshots (the clock and ETA move); ``0`` redraws only on snapshots.
    clock
        The time source for that redraw (``time.monotonic``).

    Examples
    --------
    >>> import io
    >>> from rich.console import Console
    >>> from batchata_df.engine import ProgressSnapshot
    >>> out = io.StringIO()
    >>> show = make_display(max_cost_usd=2.0, console=Console(file=out, width=120))
    >>> show.mode
    'lines'
    >>> show(ProgressSnapshot(total=4, completed=4, failed=0, cancelled=0, pending=0,
    ...                       batches={"collected": 1}, cost_usd=0.5, elapsed_s=3.2,
    ...                       phase="done"))
    >>> print(out.getvalue().strip())
    finished after 3s: 4 of 4 jobs completed, 0 failed, 0 cancelled | cost $0.5000 of $2.00 cap (25%)
    """  # noqa: E501
    try:
        from rich.console import Console
    except ImportError:
        return ProgressDisplay("lines", max_cost_usd=max_cost_usd, min_interval_s=min_interval_s)
    if mode is None:
        if console is None and _in_notebook():
            mode = "notebook"
        else:
            if console is None:
                console = Console(stderr=True)
            mode = "terminal" if console.is_terminal else "lines"
    if console is None:
        console = Console(stderr=True)
    return ProgressDisplay(
        mode,
        max_cost_usd=max_cost_usd,
        console=console,
        min_interval_s=min_interval_s,
        refresh_s=refresh_s,
        clock=clock,
    )


# -- dry runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanSummary:
    """What a dry run would do, for people (the plan itself is the returned frame)."""

    rows_by_status: dict[str, int]
    """Input rows by plan status: ``planned``, ``duplicate``, ``done``, ``in_flight``,
    ``failed``."""
    by_model: list[dict[str, Any]]
    """Per provider and model: ``provider``, ``model``, ``jobs``, ``batches``,
    ``est_input_tokens``, ``max_output_tokens``, ``worst_case_usd``."""
    n_batches: int
    worst_case_usd: float
    held_usd: float
    """Already spent, or held by batches in flight, in the state folder."""
    max_cost_usd: float | None
    within_cap: int
    """Planned requests that fit under the cap at the worst case (all without a cap)."""
    expected_usd: float | None = None
    """Expected cost of the planned requests (:mod:`batchata_df.estimates`)."""
    expected_cache_saved_usd: float = 0.0
    """What prompt caching is expected to save on them."""
    advice: tuple[str, ...] = ()
    """Per model, a ``max_tokens`` the answers observed in the folder fit with a margin."""
    mode: str = "batch"
    """How the planned requests would be sent: ``"batch"`` or ``"realtime"``."""
    concurrency: int = 8
    """Realtime requests in flight at once (``mode="realtime"``)."""


def _plan_lines(p: PlanSummary) -> list[str]:
    planned = p.rows_by_status.get("planned", 0)
    lines = [
        f"{planned:,} requests would be sent in {p.n_batches:,} provider "
        f"batch{'es' if p.n_batches != 1 else ''}, worst case {usd(p.worst_case_usd)} "
        "(every answer using max_tokens)"
    ]
    if p.mode == "realtime":
        lines = [
            f"{planned:,} requests would be sent realtime ({p.concurrency} at a time, standard "
            f"price), worst case {usd(p.worst_case_usd)} (every answer using max_tokens)"
        ]
    if p.expected_usd is not None:
        sources = sorted({str(m.get("expected_source", "")) for m in p.by_model} - {""})
        text = f"expected {usd(p.expected_usd)} (answer sizes: {', '.join(sources) or 'n/a'})"
        if p.expected_cache_saved_usd > 0:
            text += f", of which prompt caching saves ~{usd(p.expected_cache_saved_usd)}"
        lines.append(text)
    if p.held_usd:
        lines.append(f"already spent or held by batches in flight: {usd(p.held_usd)}")
    if p.max_cost_usd is not None:
        if p.within_cap >= planned:
            lines.append(f"cap {_cap(p.max_cost_usd)}: everything fits")
        elif p.within_cap == 0:
            lines.append(
                f"cap {_cap(p.max_cost_usd)}: not one request fits at its worst case; they "
                "would end cancelled (cost_limit): raise the cap or lower max_tokens"
            )
        elif p.expected_usd is not None and p.expected_usd + p.held_usd <= p.max_cost_usd:
            rounds = -(-planned // p.within_cap)
            lines.append(
                f"cap {_cap(p.max_cost_usd)} serialises the run: at the worst case only "
                f"{p.within_cap:,} of {planned:,} requests fit at once, so the rest wait for "
                f"earlier batches to be collected (about {rounds:,} rounds instead of 1); the "
                "expected cost fits the cap, so all are expected to be sent"
            )
        elif p.expected_usd is not None:
            lines.append(
                f"cap {_cap(p.max_cost_usd)}: {p.within_cap:,} of {planned:,} requests fit at the "
                "worst case at once; the expected cost is above the cap, so some would end "
                "cancelled (cost_limit)"
            )
        else:
            lines.append(
                f"cap {_cap(p.max_cost_usd)}: {p.within_cap:,} of {planned:,} requests fit at the "
                "worst case at once; the rest wait for earlier batches' actual costs and end "
                "cancelled (cost_limit) if those leave no room"
            )
    lines.extend(p.advice)
    return lines


def _rows(p: PlanSummary) -> str:
    return ", ".join(f"{n:,} {status}" for status, n in p.rows_by_status.items())


def plan_text(p: PlanSummary) -> str:
    """A dry run's summary as plain text.

    Examples
    --------
    >>> print(plan_text(PlanSummary(rows_by_status={"planned": 38, "duplicate": 2},
    ...     by_model=[{"provider": "openai", "model": "gpt-5-mini", "jobs": 38, "batches": 1,
    ...                "est_input_tokens": 1900, "max_output_tokens": 155648,
    ...                "worst_case_usd": 0.1561}],
    ...     n_batches=1, worst_case_usd=0.1561, held_usd=0.0, max_cost_usd=0.05,
    ...     within_cap=12)))
    dry run, nothing was sent. rows: 38 planned, 2 duplicate
      openai gpt-5-mini: 38 jobs in 1 batch, ~1,900 input tokens, <= 155,648 output tokens, worst case $0.1561
    38 requests would be sent in 1 provider batch, worst case $0.1561 (every answer using max_tokens)
    cap $0.05: 12 of 38 requests fit at the worst case at once; the rest wait for earlier batches' actual costs and end cancelled (cost_limit) if those leave no room
    """  # noqa: E501
    out = [f"dry run, nothing was sent. rows: {_rows(p)}"]
    for m in p.by_model:
        out.append(
            f"  {m['provider']} {m['model']}: {m['jobs']:,} jobs in {m['batches']:,} "
            f"batch{'es' if m['batches'] != 1 else ''}, ~{m['est_input_tokens']:,} input "
            f"tokens, <= {m['max_output_tokens']:,} output tokens, worst case "
            f"{usd(m['worst_case_usd'])}"
        )
    out.extend(_plan_lines(p))
    return "\n".join(out)


def plan_table(p: PlanSummary) -> RenderableType:
    """A dry run's summary as a rich table (terminal and notebook)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"dry run, nothing was sent. rows: {_rows(p)}", title_justify="left")
    for name, justify in (
        ("provider", "left"),
        ("model", "left"),
        ("jobs", "right"),
        ("batches", "right"),
        ("est. input tokens", "right"),
        ("max output tokens", "right"),
        ("worst case USD", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for m in p.by_model:
        table.add_row(
            str(m["provider"]),
            str(m["model"]),
            f"{m['jobs']:,}",
            f"{m['batches']:,}",
            f"{m['est_input_tokens']:,}",
            f"{m['max_output_tokens']:,}",
            f"{usd(m['worst_case_usd'])}",
        )
    return Group(table, *(Text(line) for line in _plan_lines(p)))
