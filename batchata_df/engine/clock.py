"""Time, as the engine reads it: a clock object that tests replace with one they advance.

Every time-dependent rule of the engine -- the time limit, polling backoff waits, submit
patience, rate-limit patience, the grace period after a stop -- reads time through a
:class:`Clock`. :class:`SystemClock` is the real one; :class:`FakeClock` never sleeps and
moves only when told to (or when the engine waits on it), so unit tests are deterministic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Backoff", "Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """What the engine needs to know about time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (deadlines, patience, backoff)."""
        ...

    def time(self) -> float:
        """Unix time (bounds a provider-side search for a batch created by a crashed run)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait ``seconds`` or until ``event`` is set; return whether it is set."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.time`, real waits."""

    def monotonic(self) -> float:
        """:func:`time.monotonic`."""
        return time.monotonic()

    def time(self) -> float:
        """:func:`time.time`."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """:func:`time.sleep`."""
        time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """:meth:`threading.Event.wait`."""
        return event.wait(seconds)


class FakeClock:
    """A clock that moves only when advanced: waits return at once, time jumps ahead.

    ``on_wait`` callbacks run after every wait with the new time, so a test can act "at"
    a point in time (set a stop event, finish a fake batch).

    Examples
    --------
    >>> clock = FakeClock()
    >>> t0 = clock.monotonic()
    >>> clock.sleep(5.0)
    >>> clock.monotonic() - t0
    5.0
    >>> stop = threading.Event()
    >>> clock.on_wait.append(lambda now: stop.set() if now - t0 >= 8 else None)
    >>> clock.wait(stop, 2.0), clock.wait(stop, 2.0), clock.monotonic() - t0
    (False, True, 9.0)
    """

    def __init__(self, start: float = 1000.0, wall: float = 1_800_000_000.0) -> None:
        self.now = start
        self._wall_offset = wall - start
        self.waits: list[float] = []
        """Every wait or sleep asked for, in seconds (what the engine would have slept)."""
        self.on_wait: list[Callable[[float], None]] = []

    def monotonic(self) -> float:
        """The current fake time."""
        return self.now

    def time(self) -> float:
        """Fake Unix time, moving with :meth:`monotonic`."""
        return self.now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        """Jump ``seconds`` ahead at once."""
        self.waits.append(seconds)
        self.now += max(0.0, seconds)
        for hook in list(self.on_wait):
            hook(self.now)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Jump ``seconds`` ahead unless ``event`` is set already; return whether it is set."""
        if event.is_set():
            return True
        self.sleep(seconds)
        return event.is_set()


class Backoff:
    """Polling intervals growing geometrically from ``initial`` to ``maximum`` seconds.

    Examples
    --------
    >>> b = Backoff(1.0, 60.0, 2.0)
    >>> [b.next() for _ in range(8)]
    [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    """

    def __init__(self, initial: float, maximum: float, factor: float) -> None:
        self.initial, self.maximum, self.factor = initial, maximum, factor
        self._current = initial

    def next(self) -> float:
        """The next interval."""
        value = min(self._current, self.maximum)
        self._current = min(self._current * self.factor, self.maximum)
        return value
