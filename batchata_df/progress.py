"""Progress display for ``batch_llm(..., progress=True)``.

:func:`make_display` returns a :class:`ProgressDisplay`, a callable taking
:class:`~batchata_df.engine.ProgressSnapshot` s. It picks one of three modes:

``"terminal"``
    The console is a terminal: a rich panel updated in place (jobs bar, counts by status,
    provider batch statuses, cost against the cap, elapsed time).
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
import sys
import time
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal

from batchata_df.engine import ProgressSnapshot

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

__all__ = ["DisplayMode", "ProgressDisplay", "format_line", "make_display"]

DisplayMode = Literal["terminal", "notebook", "lines"]


def _duration(seconds: float) -> str:
    s = int(max(seconds, 0))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _batches(s: ProgressSnapshot) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(s.batches.items())) or "none yet"


def _cost(s: ProgressSnapshot, max_cost_usd: float | None) -> str:
    text = f"${s.cost_usd:,.4f}"
    if max_cost_usd is not None and max_cost_usd > 0:
        text += f" of ${max_cost_usd:,.2f} cap ({s.cost_usd / max_cost_usd:.0%})"
    return text


def format_line(s: ProgressSnapshot, max_cost_usd: float | None = None) -> str:
    """One plain-text line summarising a snapshot (the ``"lines"`` mode).

    Examples
    --------
    >>> from batchata_df.engine import ProgressSnapshot
    >>> snap = ProgressSnapshot(total=10, completed=6, failed=1, cancelled=0, pending=3,
    ...     batches={"in_progress": 1, "collected": 1}, cost_usd=0.25, elapsed_s=75.0,
    ...     phase="running")
    >>> print(format_line(snap, max_cost_usd=1.0))
    7/10 jobs (completed 6, failed 1, cancelled 0) | batches: collected 1, in_progress 1 | cost $0.2500 of $1.00 cap (25%) | 1m15s
    """  # noqa: E501
    done = s.completed + s.failed + s.cancelled
    return (
        f"{done}/{s.total} jobs (completed {s.completed}, failed {s.failed}, cancelled "
        f"{s.cancelled}) | batches: {_batches(s)} | cost {_cost(s, max_cost_usd)} | "
        f"{_duration(s.elapsed_s)}" + (f" | {s.activity}" if s.activity else "")
    )


def _panel(s: ProgressSnapshot, max_cost_usd: float | None) -> RenderableType:
    """The rich view of a snapshot (terminal and notebook modes)."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    done = s.completed + s.failed + s.cancelled
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(s.total, 1), completed=done, width=40),
        Text(f"{done:,}/{s.total:,} jobs" + (f" ({done / s.total:.0%})" if s.total else "")),
    )
    grid.add_row("batch_llm", bar)
    counts = Text.assemble(
        (f"completed {s.completed:,}", "green"),
        "  ",
        (f"failed {s.failed:,}", "red" if s.failed else ""),
        "  ",
        (f"cancelled {s.cancelled:,}", "yellow" if s.cancelled else ""),
        "  ",
        (f"pending {s.pending:,}", "dim"),
    )
    grid.add_row("jobs", counts)
    grid.add_row("batches", Text(_batches(s)))
    near_cap = max_cost_usd is not None and s.cost_usd >= 0.9 * max_cost_usd
    grid.add_row("cost", Text(_cost(s, max_cost_usd), style="bold red" if near_cap else ""))
    if s.projected_cost_usd is not None and s.phase != "done":
        grid.add_row("projected", Text(f"${s.projected_cost_usd:,.4f} at the current rate"))
    if s.activity:
        grid.add_row("now", Text(s.activity, style="cyan"))
    grid.add_row("elapsed", Text(_duration(s.elapsed_s) + ("  done" if s.phase == "done" else "")))
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
        self.text = console.export_text(styles=False)
        self.html = console.export_html(
            inline_styles=True, code_format="<pre style='line-height:1.3'>{code}</pre>"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, str]:
        return {"text/plain": self.text, "text/html": self.html}


class ProgressDisplay:
    """A progress callback that draws :class:`ProgressSnapshot` s (see module docs).

    Make one with :func:`make_display`.
    """

    def __init__(
        self,
        mode: DisplayMode,
        *,
        max_cost_usd: float | None = None,
        console: Console | None = None,
        stream: IO[str] | None = None,
        min_interval_s: float = 5.0,
    ) -> None:
        self.mode: DisplayMode = mode
        self.max_cost_usd = max_cost_usd
        self.min_interval_s = min_interval_s
        self._console = console
        self._stream = stream
        self._live: Live | None = None
        self._handle: Any = None
        self._last_text = ""
        self._last_time = float("-inf")
        self._pending: ProgressSnapshot | None = None
        self._closed = False

    def __call__(self, snapshot: ProgressSnapshot) -> None:
        """Show ``snapshot``; a ``phase="done"`` snapshot is shown and closes the display."""
        if self._closed:
            return
        if self.mode == "lines":
            self._line(snapshot)
        elif self.mode == "terminal":
            self._terminal(snapshot)
        else:
            self._notebook(snapshot)
        if snapshot.phase == "done":
            self.close()

    def close(self) -> None:
        """Stop updating in place, and print the last state if rate limiting held it back."""
        if self._closed:
            return
        self._closed = True
        if self._pending is not None:
            self._emit(format_line(self._pending, self.max_cost_usd))
            self._pending = None
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
        now = time.monotonic()
        if s.phase != "done" and now - self._last_time < self.min_interval_s:
            self._pending = s
            return
        self._last_text, self._last_time, self._pending = text, now, None
        self._emit(text)

    def _terminal(self, s: ProgressSnapshot) -> None:
        from rich.live import Live

        view = _panel(s, self.max_cost_usd)
        if self._live is None:
            # No refresh thread: the view changes only when a snapshot arrives, and a run
            # that dies without close() leaves nothing redrawing over the user's prompt.
            self._live = Live(view, console=self._console, auto_refresh=False, transient=False)
            self._live.start()
        self._live.update(view, refresh=True)

    def _notebook(self, s: ProgressSnapshot) -> None:
        from IPython.display import display  # type: ignore[import-not-found, unused-ignore]

        view = _NotebookView(_panel(s, self.max_cost_usd))
        if self._handle is None:
            self._handle = display(view, display_id=True)
        else:
            self._handle.update(view)


def make_display(
    *,
    max_cost_usd: float | None = None,
    mode: DisplayMode | None = None,
    console: Console | None = None,
    min_interval_s: float = 5.0,
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

    Examples
    --------
    >>> import io
    >>> from rich.console import Console
    >>> from batchata_df.engine import ProgressSnapshot
    >>> out = io.StringIO()
    >>> show = make_display(max_cost_usd=2.0, console=Console(file=out, width=100))
    >>> show.mode
    'lines'
    >>> show(ProgressSnapshot(total=4, completed=4, failed=0, cancelled=0, pending=0,
    ...                       batches={"collected": 1}, cost_usd=0.5, elapsed_s=3.2,
    ...                       phase="done"))
    >>> print(out.getvalue().strip())
    4/4 jobs (completed 4, failed 0, cancelled 0) | batches: collected 1 | cost $0.5000 of $2.00 cap (25%) | 3s
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
        mode, max_cost_usd=max_cost_usd, console=console, min_interval_s=min_interval_s
    )
