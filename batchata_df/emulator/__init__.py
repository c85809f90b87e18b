"""Loopback emulator of the providers' batch APIs, for offline tests, demos and benchmarks.

The emulator is a local HTTP server that speaks the OpenAI Batch API (and, as their
modules land, Anthropic Message Batches and Gemini batch mode) well enough for the
official SDKs. Answers are deterministic fakes that validate against the request's JSON
schema; magic markers in a prompt force per-request outcomes (see
:mod:`batchata_df.emulator.answers`), and control endpoints inject faults, change the
latency and read the request log (see :mod:`batchata_df.emulator.server`).

:class:`Emulator` runs it in a background process so that it never competes with the
code under test for the GIL.

Examples
--------
>>> from openai import OpenAI
>>> from batchata_df.emulator import Emulator
>>> with Emulator(latency=0.0) as emu:
...     client = OpenAI(api_key="sk-test", base_url=emu.openai_base_url)
...     page = client.batches.list()
...     client.close()
...     [entry["path"] for entry in emu.log()]
['/openai/v1/batches']
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from batchata_df.emulator.server import FaultAction

__all__ = ["Emulator", "EmulatorError", "env_for"]

_READY_PREFIX = b"batchata-df emulator listening on "


def env_for(url: str) -> dict[str, str]:
    """Environment variables that point all three SDKs at the emulator serving ``url``.

    The base URLs the SDKs read (``/openai/v1``, ``/anthropic``, ``/gemini``), keys the
    emulator takes (never a real one: the SDKs refuse to start without a key), and
    ``NO_PROXY`` so that a proxy set for the internet is not asked for 127.0.0.1.
    :meth:`Emulator.env` and ``batchata-df emulator`` (which prints them as ``export``
    lines) both give these.

    Examples
    --------
    >>> env_for("http://127.0.0.1:8765")["OPENAI_BASE_URL"]
    'http://127.0.0.1:8765/openai/v1'
    """
    return {
        "OPENAI_BASE_URL": url + "/openai/v1",
        "OPENAI_API_KEY": "sk-emulator",
        "ANTHROPIC_BASE_URL": url + "/anthropic",
        "ANTHROPIC_API_KEY": "sk-ant-emulator",
        "GOOGLE_GEMINI_BASE_URL": url + "/gemini",
        "GEMINI_API_KEY": "emulator-key",
        "NO_PROXY": "127.0.0.1,localhost",
    }


class EmulatorError(RuntimeError):
    """The emulator process could not start, or a control request was refused."""


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM: the server closes its socket and removes its files
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


class Emulator:
    """Run the loopback emulator in a background process.

    Parameters
    ----------
    latency
        Seconds from a batch's creation to its completion. ``0`` completes a batch on its
        first retrieve.
    port
        TCP port on 127.0.0.1; ``0`` picks a free one.
    cancel_unfinished
        What a cancelled batch does with requests that never ran: ``"error_file"`` (one
        ``batch_cancelled`` error line each) or ``"omit"`` (in no file).
    startup_timeout
        Seconds to wait for the server to report that it is listening.

    Examples
    --------
    >>> emu = Emulator(latency=1.0).start()
    >>> emu.url.startswith("http://127.0.0.1:")
    True
    >>> emu.openai_base_url == emu.url + "/openai/v1"
    True
    >>> emu.stop()
    """

    def __init__(
        self,
        latency: float = 0.0,
        *,
        port: int = 0,
        cancel_unfinished: Literal["error_file", "omit"] = "error_file",
        startup_timeout: float = 30.0,
    ) -> None:
        if latency < 0:
            msg = f"latency must be >= 0 seconds, got {latency!r}"
            raise ValueError(msg)
        self.latency = float(latency)
        self.port = port
        self.cancel_unfinished = cancel_unfinished
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._url: str | None = None
        # Never route loopback control calls through an HTTP(S)_PROXY from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # ---- lifecycle

    def start(self) -> Emulator:
        """Start the server process and wait until it listens; returns ``self``.

        Raises
        ------
        EmulatorError
            The process exited or did not report readiness within ``startup_timeout``.
        """
        if self._proc is not None:
            return self
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        cmd = [
            sys.executable,
            "-m",
            "batchata_df.emulator",
            "--port",
            str(self.port),
            "--latency",
            repr(self.latency),
            "--cancel-unfinished",
            self.cancel_unfinished,
            "--exit-with-parent",  # the server stops itself if this process is killed
        ]
        # Its own session, so a signal to this process's group does not reach it: Jupyter's
        # Kernel -> Interrupt is os.killpg(kernel's group, SIGINT) (jupyter_client 8.10
        # provisioning/local_provisioner.py, LocalProvisioner.send_signal), and an emulator
        # started in a notebook died with the interrupted cell. --exit-with-parent still
        # stops it with this process: it watches its parent pid, not its group.
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env,
            start_new_session=os.name == "posix",
        )
        self._proc = proc
        self._finalizer = weakref.finalize(self, _terminate, proc)
        try:
            self._url = self._wait_ready(proc)
        except BaseException:
            self.stop()
            raise
        return self

    @classmethod
    def attach(cls, url: str, latency: float = 0.0) -> Emulator:
        """An emulator that another process runs at ``url``, controlled but not owned.

        ``stop()`` then only forgets the address; the server keeps running. Tools that
        run the test suite many times (mutation testing) start the emulator once and let
        each run attach to it instead of starting its own.

        Parameters
        ----------
        url
            ``http://127.0.0.1:PORT`` as :attr:`url` of the running emulator gives it.
        latency
            The latency that emulator was started with (for :attr:`latency` only).

        Examples
        --------
        >>> with Emulator() as owner:
        ...     guest = Emulator.attach(owner.url)
        ...     guest.reset()
        ...     guest.stop()
        ...     owner.running
        True
        """
        emu = cls(latency)
        emu._url = url.rstrip("/")
        return emu

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> str:
        assert proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    msg = f"the emulator did not start within {self.startup_timeout} s"
                    raise EmulatorError(msg)
                if not selector.select(remaining):
                    continue
                line = proc.stdout.readline()
                if not line:
                    code = proc.wait()
                    msg = f"the emulator exited with code {code} before listening (see stderr)"
                    raise EmulatorError(msg)
                if line.startswith(_READY_PREFIX):
                    proc.stdout.close()  # the server writes nothing more to stdout
                    return line[len(_READY_PREFIX) :].decode().strip()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s). Safe to call twice."""
        if self._finalizer is not None:
            self._finalizer()
        self._proc = None
        self._finalizer = None
        self._url = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # ---- addresses

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running server."""
        if self._url is None:
            msg = "the emulator is not running: use `with Emulator() as emu:` or call .start()"
            raise EmulatorError(msg)
        return self._url

    @property
    def openai_base_url(self) -> str:
        """Base URL for ``OpenAI(base_url=...)``: ``url + "/openai/v1"``."""
        return self.url + "/openai/v1"

    @property
    def anthropic_base_url(self) -> str:
        """Base URL for ``Anthropic(base_url=...)``: ``url + "/anthropic"``."""
        return self.url + "/anthropic"

    @property
    def gemini_base_url(self) -> str:
        """Base URL for ``genai.Client(http_options=HttpOptions(base_url=...))``."""
        return self.url + "/gemini"

    def env(self) -> dict[str, str]:
        """Environment variables that point all three SDKs at this emulator.

        Examples
        --------
        >>> with Emulator() as emu:
        ...     sorted(emu.env())[:3]
        ['ANTHROPIC_API_KEY', 'ANTHROPIC_BASE_URL', 'GEMINI_API_KEY']
        """
        return env_for(self.url)

    @contextlib.contextmanager
    def environ(self) -> Iterator[dict[str, str]]:
        """Set :meth:`env` in ``os.environ`` for the duration of a ``with`` block.

        Previous values (or their absence) are restored on exit.

        Examples
        --------
        >>> import os
        >>> with Emulator() as emu, emu.environ():
        ...     os.environ["OPENAI_BASE_URL"] == emu.openai_base_url
        True
        """
        values = self.env()
        saved = {key: os.environ.get(key) for key in values}
        os.environ.update(values)
        try:
            yield values
        finally:
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old

    # ---- control endpoints

    def _call(self, method: str, path: str, payload: object = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.url + "/_emulator/" + path,
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        try:
            with self._opener.open(request, timeout=60) as response:
                body = response.read()
        except urllib.error.HTTPError as e:
            with e:
                detail = e.read().decode("utf-8", "replace")
            msg = f"emulator refused {method} /_emulator/{path}: HTTP {e.code}: {detail}"
            raise EmulatorError(msg) from None
        return json.loads(body) if body else None

    def log(self, since: int = 0) -> list[dict[str, Any]]:
        """Every provider request so far: ``{seq, ts, method, path, query, status, provider, ...}``.

        With ``configure(log_bodies=True)`` entries also hold ``body`` or ``lines``, and
        ``sha256``: the hex SHA-256 of the body (of an upload's file part) as it arrived.

        Parameters
        ----------
        since
            Only entries with ``seq`` greater than this.

        Examples
        --------
        >>> with Emulator() as emu:
        ...     emu.log()
        []
        """
        entries: list[dict[str, Any]] = self._call("GET", f"log?since={int(since)}")
        return entries

    def billing(self, usd: bool = False) -> list[dict[str, Any]]:
        """The billing ledger: one ``{provider, batch_id, custom_id, mode, request, model}`` each.

        One per bill; with ``usd``, also ``usd``: what it is billed, where the emulator
        recorded the usage it answered with (Gemini's requests; else ``None``).

        Every request of every batch the provider accepted counts (a batch cancelled or
        expired early: only the requests that ran; Anthropic's ``errored`` requests, which
        "will not be billed", never), including batches nobody collected, and
        every answered realtime request (``mode="realtime"``, billed at the standard price;
        no batch or custom id). A ``custom_id`` that appears twice was paid twice; so was a
        ``request`` (a digest of what was asked, the same in either mode) that appears
        twice.

        Examples
        --------
        >>> with Emulator() as emu:
        ...     emu.billing()
        []
        """
        entries: list[dict[str, Any]] = self._call("GET", "billing?usd=1" if usd else "billing")
        return entries

    def realtime_stats(self) -> dict[str, int]:
        """Realtime endpoints: ``{in_flight, max_in_flight, served}`` since the last reset.

        ``max_in_flight`` is the most requests answered at once (with
        ``configure(realtime_latency=...)`` each takes that long), so a test can check a
        client's concurrency bound.

        Examples
        --------
        >>> with Emulator() as emu:
        ...     emu.realtime_stats()
        {'in_flight': 0, 'max_in_flight': 0, 'served': 0}
        """
        stats: dict[str, int] = self._call("GET", "realtime")
        return stats

    def clear_log(self) -> None:
        """Empty the request log."""
        self._call("DELETE", "log")

    def inject_fault(
        self,
        *,
        path_regex: str,
        method: str = "*",
        status: int = 503,
        times: int | None = 1,
        retry_after_ms: int | None = None,
        retry_after: float | None = None,
        body: object = None,
        headers: Mapping[str, str] | None = None,
        delay_ms: int = 0,
        action: FaultAction = "error",
        when: Literal["before", "after"] | None = None,
        echo_key: bool = False,
    ) -> dict[str, Any]:
        """Make the next ``times`` matching requests fail; returns the registered fault.

        Parameters
        ----------
        path_regex
            Searched (``re.search``) in the request path plus ``?query``.
        method
            HTTP method to match, or ``"*"``.
        status
            HTTP status of the error; the body is the provider's error envelope unless
            ``body`` is given. 200 is allowed with a ``body`` (a text ``body`` with
            ``headers={"content-type": "text/event-stream"}`` serves a stream of the test's
            own, e.g. one that ends early or carries an ``error`` event).
        times
            How many requests to fail; ``None`` for every one until cleared.
        retry_after_ms, retry_after
            Send ``retry-after-ms`` / ``retry-after`` headers (at most 60 s).
        body
            Custom error body (JSON value, or text).
        headers
            Extra response headers, e.g. ``{"x-should-retry": "false"}``.
        delay_ms
            Wait this long before answering (to trip client timeouts); a cut waits before
            it sends its half answer.
        action
            ``"disconnect"`` drops the connection instead of answering; ``"cut"`` answers,
            but sends only the first half of the body before dropping the connection (the
            client sees the body broken off); ``"cut_clean"`` sends that half body without
            a ``content-length`` and closes the connection in order (the client sees a
            clean end of a shorter body); ``"corrupt"`` sends the whole answer with bytes
            that are never UTF-8 inside its first answer text (a result file's first
            line, a realtime answer, a streamed answer's first ``text_delta``, a Gemini
            batch's inline results: complete JSON, not UTF-8); ``"corrupt_id"`` puts
            them inside the first result id (``custom_id``, Gemini's ``key``) instead: a
            line that matches no request.
        when
            ``"after"`` lets the request take effect (e.g. the batch *is* created) and
            then replaces the answer: the "provider accepted, client never heard" case.
            ``None``: ``"after"`` for the cuts and the corruptions (which answer first and
            refuse ``"before"``), else ``"before"``.
        echo_key
            Echo the request's credential in the error, as some gateways do: the default
            message ends with it and ``{key}`` in ``body`` is replaced by it.

        Examples
        --------
        >>> with Emulator() as emu:
        ...     emu.inject_fault(method="GET", path_regex=r"/batches/", retry_after_ms=20)["times"]
        1
        """
        spec: dict[str, object] = {
            "path_regex": path_regex,
            "method": method,
            "status": status,
            "times": times,
            "delay_ms": delay_ms,
            "action": action,
        }
        if when is not None:
            spec["when"] = when
        if echo_key:
            spec["echo_key"] = True
        if retry_after_ms is not None:
            spec["retry_after_ms"] = retry_after_ms
        if retry_after is not None:
            spec["retry_after"] = retry_after
        if body is not None:
            spec["body"] = body
        if headers:
            spec["headers"] = dict(headers)
        fault: dict[str, Any] = self._call("POST", "faults", spec)
        return fault

    def faults(self) -> list[dict[str, Any]]:
        """Faults that still have requests to fail."""
        faults: list[dict[str, Any]] = self._call("GET", "faults")
        return faults

    def clear_faults(self) -> None:
        """Remove every pending fault."""
        self._call("DELETE", "faults")

    def configure(
        self,
        *,
        latency: float | None = None,
        cancel_delay: float | None = None,
        cancel_unfinished: Literal["error_file", "omit"] | None = None,
        log_bodies: bool | None = None,
        list_order: Literal["newest_first", "oldest_first", "shuffled"] | None = None,
        realtime_latency: float | None = None,
        serve_retired: bool | None = None,
        today: str | None = None,
        openai: Mapping[str, object] | None = None,
        anthropic: Mapping[str, object] | None = None,
        gemini: Mapping[str, object] | None = None,
    ) -> dict[str, Any]:
        """Change settings at run time and return all settings.

        Batches already created keep the latency they were created with.

        Parameters
        ----------
        latency
            Seconds from batch creation to completion, for batches created from now on.
        cancel_delay
            Seconds a cancelled batch stays ``cancelling``.
        cancel_unfinished
            ``"error_file"`` or ``"omit"``; see the class parameters.
        log_bodies
            Keep request bodies in :meth:`log` (``body``: parsed JSON; ``lines``: JSON
            Lines such as an uploaded batch file; ``sha256``: of its bytes), with credentials
            redacted. Off by default (memory).
        list_order
            ``"newest_first"`` (default), ``"oldest_first"`` or ``"shuffled"``: the order
            of the OpenAI and Gemini batch lists, which neither provider documents.
        realtime_latency
            Real seconds each realtime answer takes (0 by default), so that a client's
            concurrency shows in :meth:`realtime_stats`.
        serve_retired
            Serve the models their provider has retired (a gateway that still serves
            them); off by default, as the providers refuse them
            (:data:`~batchata_df.emulator.model_rules.RETIRED`).
        today
            The date (``YYYY-MM-DD``) announced shutdowns are read at
            (:data:`~batchata_df.emulator.model_rules.SCHEDULED`); ``""``: the real date.
            Starts as ``BATCHATA_DF_TODAY`` in the emulator's environment. A batch in
            flight when it reaches its model's shutdown fails the requests not run by the
            first such moment, even if it moves on or back later
            (``EmulatorCore.gone_since``).
        openai, anthropic, gemini
            Provider settings, e.g. ``openai={"max_requests": 10}``.

        Examples
        --------
        >>> with Emulator() as emu:
        ...     emu.configure(latency=2.0)["latency"]
        2.0
        """
        payload: dict[str, object] = {}
        for key, value in (
            ("latency", latency),
            ("cancel_delay", cancel_delay),
            ("cancel_unfinished", cancel_unfinished),
            ("log_bodies", log_bodies),
            ("list_order", list_order),
            ("realtime_latency", realtime_latency),
            ("serve_retired", serve_retired),
            ("today", today),
            ("openai", None if openai is None else dict(openai)),
            ("anthropic", None if anthropic is None else dict(anthropic)),
            ("gemini", None if gemini is None else dict(gemini)),
        ):
            if value is not None:
                payload[key] = value
        settings: dict[str, Any] = self._call("POST", "config", payload)
        return settings

    def settings(self) -> dict[str, Any]:
        """All current settings."""
        settings: dict[str, Any] = self._call("GET", "config")
        return settings

    def advance(self, seconds: float) -> float:
        """Move the emulator's clock forward; returns the new simulated time.

        Examples
        --------
        >>> with Emulator(latency=3600) as emu:
        ...     emu.advance(3600) > 0
        True
        """
        state: dict[str, float] = self._call("POST", "clock", {"advance": seconds})
        return state["now"]

    def reset(self) -> None:
        """Forget all batches, files, faults and the log, and reset the clock (settings stay)."""
        self._call("POST", "reset")

    def __repr__(self) -> str:
        where = self._url or "not running"
        return f"Emulator(latency={self.latency!r}, {where})"
