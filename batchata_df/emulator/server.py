"""Provider-agnostic core of the loopback emulator: HTTP server, routing, log, faults, clock.

The server is a stdlib :class:`~http.server.ThreadingHTTPServer` speaking HTTP/1.1 with
keep-alive, bound to ``127.0.0.1`` only. Each provider protocol is an *app*: an object
with a ``handle(request) -> Response`` method, mounted at one or more path prefixes.

Adding a provider
-----------------
Write a module ``batchata_df/emulator/<provider>_api.py`` exposing
``create_app(core: EmulatorCore) -> App`` and list it in :data:`PROVIDERS` with its path
prefixes. The app receives requests whose ``route`` is the path *below* its prefix, and
implements the :class:`App` protocol (``provider``, ``handle``, ``error_response``,
``reset``, ``configure``, ``settings``). Shared services live on the
:class:`EmulatorCore`: the settings (``core.config``), the simulated clock
(``core.clock``), blob storage for large files (``core.blobs``) and :meth:`EmulatorCore.new_id`.
Until a provider module exists, its prefix answers 501 in that provider's error envelope
(and fault injection on it still works).

Control endpoints (no auth, never logged)
-----------------------------------------
``GET /_emulator/health``
    ``{"ok": true, "providers": {...}}``.
``GET /_emulator/log[?since=SEQ]`` / ``DELETE /_emulator/log``
    Every provider request: ``{seq, ts, method, path, query, status, provider, auth,
    retry_count, fault}``. ``auth`` only says whether a credential (header or ``?key=``-like
    query parameter) was present; key values are never stored: credential query
    parameters are logged as ``key=REDACTED``. ``status`` is 0 when a fault dropped the connection.
``GET /_emulator/billing[?usd=1]``
    The billing ledger: one ``{provider, batch_id, custom_id, mode, request, model}`` (with
    ``usd=1`` also ``usd``, :meth:`EmulatorCore.billing`) per request
    of every batch the provider accepted (a cancelled or expired batch: only the requests
    that ran; never a request that failed with an error, which no provider bills:
    :attr:`LedgerEntry.unbilled`) and per
    answered realtime request (``mode="realtime"``, no batch or custom
    id), so tests can prove that nothing was paid twice: a ``custom_id`` twice, or a
    ``request`` key (what was asked, the same in both modes) twice, is a double bill.
``POST /_emulator/faults`` / ``GET`` / ``DELETE``
    Add, list or clear faults. A fault spec is ``{"method": "GET" | "*", "path_regex": str,
    "status": 503, "times": 1, "retry_after_ms": 20, "retry_after": 1, "body": {...} |
    str, "headers": {...}, "delay_ms": 0, "action": "error" | "disconnect" | "cut" |
    "cut_clean" | "corrupt", "when": "before" | "after", "echo_key": false}``; only
    ``path_regex`` is required. ``"cut"`` answers the request, then sends its status, its
    headers and only the first half of its body before dropping the connection (a
    download broken off midway: the client sees fewer bytes than the ``content-length``
    or chunks it was promised). ``"cut_clean"`` sends the same half body with no
    ``content-length`` (a close-delimited body) and then closes the connection in order:
    the client sees a clean end of a shorter body, as behind a proxy that ends a stream
    early without an error. ``"corrupt"`` sends the whole answer with two bytes that are
    never UTF-8 (hex ``ff fe``) inside its first answer text (:func:`corrupted`; a result
    file's first line, a realtime answer, a stream's first ``text_delta``, a Gemini batch
    resource's inline results): complete JSON lines, not UTF-8. ``"corrupt_id"`` puts
    them inside the first result id instead (``custom_id``, Gemini's ``key``:
    :func:`corrupted_id`), so that the line matches no request. All four answer the
    request first, so they are ``when="after"`` (their default; an explicit ``"before"``
    is refused), and ``delay_ms`` waits before the answer is sent.
    ``echo_key`` makes the error echo the request's credential (the ``Authorization``,
    ``x-api-key`` or ``x-goog-api-key`` value, or ``?key=``), as some gateways and proxies
    do: the default message then ends with it, and ``{key}`` in a custom ``body`` is
    replaced by it. The request log still never holds it. ``when="after"`` lets
    the request take effect and then replaces the answer (the "created, but the client
    never heard" case). Retry hints are capped at 60 s because the Anthropic SDK sleeps
    for any ``Retry-After`` however large.
``GET /_emulator/realtime``
    ``{"in_flight", "max_in_flight", "served"}``: requests to the realtime endpoints being
    answered now, the most at once, and how many were answered.
``GET|POST /_emulator/config``
    ``{"latency": s, "cancel_delay": s, "cancel_unfinished": "error_file" | "omit",
    "log_bodies": bool, "realtime_latency": s, "serve_retired": bool, "today": "YYYY-MM-DD" | "",
    "<provider>": {...}}``.
    Unknown keys are a 400, never ignored.
``POST /_emulator/reset``
    Drop all provider state, files, faults and the log, and reset the clock; settings stay.
``GET|POST /_emulator/clock``
    ``{"advance": seconds}`` moves simulated time forward; batches progress with it.

Examples
--------
>>> from batchata_df.emulator.server import make_server
>>> server = make_server(port=0)
>>> server.url.startswith("http://127.0.0.1:")
True
>>> server.server_close(); server.core.close()
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import importlib
import itertools
import json
import math
import random
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, Literal, Protocol, cast
from urllib.parse import parse_qsl, unquote_plus

from batchata_df.emulator import model_rules

__all__ = [
    "CONTROL_PREFIX",
    "PROVIDERS",
    "App",
    "BlobStore",
    "Clock",
    "EmulatorConfig",
    "EmulatorCore",
    "EmulatorServer",
    "Fault",
    "Headers",
    "Request",
    "Response",
    "error_envelope",
    "json_body",
    "json_response",
    "make_server",
    "updated_limits",
]

CONTROL_PREFIX: Final = "/_emulator"
LOOPBACK: Final = "127.0.0.1"
MAX_RETRY_HINT_SECONDS: Final = 60.0
MAX_FAULT_DELAY_MS: Final = 60_000

#: provider -> (module implementing it, path prefixes it is mounted at)
PROVIDERS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "openai": ("batchata_df.emulator.openai_api", ("/openai/v1", "/v1")),
    "anthropic": ("batchata_df.emulator.anthropic_api", ("/anthropic",)),
    "gemini": ("batchata_df.emulator.gemini_api", ("/gemini",)),
}

ErrorStyle = Literal["openai", "anthropic", "gemini", "plain"]
CancelUnfinished = Literal["error_file", "omit"]
ListOrder = Literal["newest_first", "oldest_first", "shuffled"]
LIST_ORDERS: tuple[str, ...] = ("newest_first", "oldest_first", "shuffled")


# --------------------------------------------------------------------------------------
# Request / Response


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only HTTP headers (repeated headers are joined by ``, ``).

    Examples
    --------
    >>> h = Headers([("Content-Type", "application/json")])
    >>> h["content-type"], h.get("CONTENT-TYPE"), "Content-type" in h
    ('application/json', 'application/json', True)
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: dict[str, str] = {}
        for key, value in items:
            low = key.lower()
            self._items[low] = f"{self._items[low]}, {value}" if low in self._items else value

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({sorted(self._items)!r})"


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request as the apps see it.

    Attributes
    ----------
    method
        Upper-case HTTP method.
    path
        Full path without the query string, e.g. ``/openai/v1/batches``.
    query
        Query parameters (the first value of each).
    headers
        Case-insensitive headers.
    body
        Raw body bytes (``b""`` when there is none).
    route
        The path below the app's mount prefix, e.g. ``/batches`` (set by the router).
    base_url
        ``http://127.0.0.1:PORT`` of this server, for absolute URLs in answers.

    Examples
    --------
    >>> r = Request("POST", "/v1/x", {}, Headers(), b"")
    >>> r.json() is None
    True
    """

    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    body: bytes
    route: str = ""
    base_url: str = ""
    query_string: str = ""

    def json(self) -> object:
        """Parse the body as JSON; an empty (or whitespace) body gives ``None``.

        Raises
        ------
        ValueError
            The body is not valid JSON.
        """
        if not self.body.strip():
            return None
        return json.loads(self.body)


@dataclass(slots=True)
class Response:
    r"""An HTTP answer. ``body`` may be bytes or an iterable of byte chunks (sent chunked).

    Examples
    --------
    >>> Response(204).status
    204
    >>> chunked = Response(200, {"content-type": "application/x-ndjson"}, iter([b"{}\n"]))
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Iterable[bytes] = b""


class CutResponse(Response):
    """A :class:`Response` sent with half of its body, then its connection dropped.

    The fault action ``"cut"``: a download broken off after its headers.
    """

    __slots__ = ()


class CleanCutResponse(CutResponse):
    """A :class:`CutResponse` whose half body is close-delimited and ends in order.

    The fault action ``"cut_clean"``: no ``content-length`` and no chunked encoding, so
    the end of the connection is the end of the body, and the client reads a shorter body
    without any error.
    """

    __slots__ = ()


_dumps_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def json_response(
    obj: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """Build a JSON :class:`Response`.

    Examples
    --------
    >>> json_response({"ok": True}).body
    b'{"ok":true}'
    """
    out = {"content-type": "application/json"}
    if headers:
        out.update(headers)
    return Response(status, out, _dumps_compact(obj).encode("utf-8"))


def updated_limits(
    provider: str, current: Mapping[str, int], settings: Mapping[str, object]
) -> dict[str, int]:
    """``current`` updated with ``settings``: known keys, positive integers only.

    Examples
    --------
    >>> updated_limits("openai", {"max_requests": 50_000}, {"max_requests": 10})
    {'max_requests': 10}
    """
    new = dict(current)
    for key, value in settings.items():
        if key not in new:
            msg = f"unknown {provider} setting {key!r}; valid: {sorted(new)!r}"
            raise ValueError(msg)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            msg = f"{provider} setting {key!r} must be a positive integer, got {value!r}"
            raise ValueError(msg)
        new[key] = value
    return new


def json_body(request: Request) -> dict[str, Any]:
    """Parse a request body that must be a JSON object (empty body -> ``{}``).

    Raises
    ------
    ValueError
        The body is not JSON, or not an object.
    """
    data = request.json()
    if data is None:
        return {}
    if not isinstance(data, dict):
        msg = f"expected a JSON object body, got {type(data).__name__}"
        raise ValueError(msg)
    return data


_OPENAI_TYPES: Final = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    422: "invalid_request_error",
    429: "requests",
}
_ANTHROPIC_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_GEMINI_STATUS: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_envelope(
    style: ErrorStyle,
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    error_type: str | None = None,
) -> dict[str, Any]:
    """Return the error body a provider sends with an HTTP error (provider-wire.md §0.4).

    Examples
    --------
    >>> error_envelope("openai", 404, "No such batch", param="batch_id")["error"]["type"]
    'invalid_request_error'
    >>> error_envelope("anthropic", 529, "Overloaded")["error"]["type"]
    'overloaded_error'
    >>> error_envelope("gemini", 503, "busy")["error"]["status"]
    'UNAVAILABLE'
    """
    if style == "openai":
        kind = (
            error_type
            or _OPENAI_TYPES.get(status)
            or ("invalid_request_error" if 400 <= status < 500 else "server_error")
        )
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}
    if style == "anthropic":
        kind = error_type or _ANTHROPIC_TYPES.get(status, "api_error")
        return {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": f"req_{uuid.uuid4().hex[:24]}",
        }
    if style == "gemini":
        state = error_type or _GEMINI_STATUS.get(
            status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"
        )
        return {"error": {"code": status, "message": message, "status": state}}
    return {"error": {"message": message, "code": code or status}}


# --------------------------------------------------------------------------------------
# Apps


class App(Protocol):
    """What a provider protocol module plugs into the server.

    ``handle`` must be thread-safe: the server runs one thread per connection.
    """

    #: Provider name, used in the request log and as its settings key.
    provider: str

    def handle(self, request: Request) -> Response:
        """Answer one request whose ``route`` is relative to the app's mount prefix."""
        ...

    def error_response(self, status: int, message: str) -> Response:
        """Return an HTTP error in this provider's envelope (used for injected faults)."""
        ...

    def reset(self) -> None:
        """Forget every object (batches, files, ...) the app holds."""
        ...

    def configure(self, settings: Mapping[str, object]) -> None:
        """Apply provider-specific settings; raise ``ValueError`` for unknown keys/values."""
        ...

    def settings(self) -> dict[str, object]:
        """Return the provider-specific settings currently in force."""
        ...


class _Unavailable:
    """Stand-in for a provider whose module is not written yet: 501 in its envelope."""

    def __init__(self, provider: str, style: ErrorStyle) -> None:
        self.provider = provider
        self._style: ErrorStyle = style

    def handle(self, request: Request) -> Response:
        return self.error_response(501, f"the emulator has no {self.provider} protocol yet")

    def error_response(self, status: int, message: str) -> Response:
        return json_response(error_envelope(self._style, status, message), status)

    def reset(self) -> None:
        pass

    def configure(self, settings: Mapping[str, object]) -> None:
        if settings:
            msg = f"no settings for {self.provider!r}: its emulator module is not available"
            raise ValueError(msg)

    def settings(self) -> dict[str, object]:
        return {}


# --------------------------------------------------------------------------------------
# Shared services


@dataclass(slots=True)
class EmulatorConfig:
    """Settings shared by all providers.

    Attributes
    ----------
    latency
        Seconds from batch creation to completion (simulated clock). 0 means a batch is
        complete on its first retrieve.
    cancel_delay
        Seconds a cancelled batch stays ``cancelling`` before it is ``cancelled``
        (0: the next retrieve already shows it cancelled).
    cancel_unfinished
        What happens to requests that had not run when a batch was cancelled:
        ``"error_file"`` writes one error line per request (OpenAI code
        ``batch_cancelled``); ``"omit"`` leaves them out of every result file.
    log_bodies
        Keep each request's body in the log (parsed JSON as ``body``, JSON Lines, also
        inside a multipart upload, as ``lines``), with any credential sent in the
        request's headers or query replaced by ``REDACTED``. Off by default: a
        million-row benchmark must not hold every request in memory.
    realtime_latency
        Real seconds each answer of a realtime endpoint (OpenAI ``/chat/completions``
        and ``/responses``, Anthropic ``/v1/messages``, Gemini ``:generateContent``)
        takes, so that a client's concurrency can be observed
        (``GET /_emulator/realtime``). 0 by default.
    list_order
        Order of the OpenAI and Gemini batch lists: ``"newest_first"`` (what they do in
        practice), ``"oldest_first"`` or ``"shuffled"`` (stable while no batch is added).
        Neither provider documents the order, so clients must not rely on it; Anthropic
        documents newest first and always lists so.
    serve_retired
        Serve the models their provider has retired
        (:data:`~batchata_df.emulator.model_rules.RETIRED`), as a gateway or a partner
        cloud that still serves them would. Off by default: the providers refuse them as
        unknown models. Starts on when ``BATCHATA_EMULATOR_SERVE_RETIRED`` is set.
    today
        The date (``YYYY-MM-DD``) the announced shutdowns
        (:data:`~batchata_df.emulator.model_rules.SCHEDULED`) are read at: from it on such
        a model is refused like a retired one (or, where the provider routes it, answered
        by its successor). ``""``: the real UTC date. Starts as ``BATCHATA_DF_TODAY``.
    """

    latency: float = 0.0
    cancel_delay: float = 0.0
    cancel_unfinished: CancelUnfinished = "error_file"
    log_bodies: bool = False
    list_order: ListOrder = "newest_first"
    realtime_latency: float = 0.0
    serve_retired: bool = field(default_factory=model_rules.serve_retired)
    today: str = field(default_factory=lambda: model_rules._TODAY[0] or "")

    def as_dict(self) -> dict[str, object]:
        """The settings as JSON-ready data."""
        return {
            "latency": self.latency,
            "cancel_delay": self.cancel_delay,
            "cancel_unfinished": self.cancel_unfinished,
            "log_bodies": self.log_bodies,
            "list_order": self.list_order,
            "realtime_latency": self.realtime_latency,
            "serve_retired": self.serve_retired,
            "today": self.today,
        }


def listed(ids: list[str], order: str) -> list[str]:
    """``ids`` (oldest first, as created) in the configured list order.

    Examples
    --------
    >>> listed(["a", "b", "c"], "newest_first")
    ['c', 'b', 'a']
    >>> sorted(listed(["a", "b", "c"], "shuffled"))
    ['a', 'b', 'c']
    """
    if order == "oldest_first":
        return list(ids)
    if order == "shuffled":
        out = list(ids)
        # Seeded by the ids, so that paging through an unchanged list is consistent.
        random.Random("\n".join(ids)).shuffle(out)
        return out
    return list(reversed(ids))


class Clock:
    """Wall-clock time plus an offset that tests can advance.

    Examples
    --------
    >>> c = Clock(); t = c.now(); c.advance(3600)
    >>> c.now() - t >= 3600
    True
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        """Current simulated time (unix seconds, float)."""
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move simulated time forward by ``seconds`` (must be >= 0)."""
        if seconds < 0:
            msg = f"the clock only moves forward, got advance={seconds!r}"
            raise ValueError(msg)
        self.offset += seconds

    def reset(self) -> None:
        """Go back to wall-clock time."""
        self.offset = 0.0


class BlobStore:
    """File contents kept on disk in a private temporary folder, not in memory.

    Batches of 50k-100k lines produce files of tens to hundreds of MB; keeping them on
    disk (the page cache makes this cheap) keeps the emulator's memory flat under a
    million-request benchmark.
    """

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._lock = threading.Lock()

    def _root(self) -> Path:
        with self._lock:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="batchata-df-emulator-"))
            return self._dir

    def put(self, key: str, data: bytes | memoryview | Iterable[bytes]) -> int:
        """Store ``data`` under ``key`` and return its size in bytes."""
        path = self._root() / key
        with path.open("wb") as f:
            if isinstance(data, bytes | memoryview):
                f.write(data)
            else:
                f.writelines(data)
            return f.tell()

    def get(self, key: str) -> bytes:
        """Return the stored bytes; ``KeyError`` if there are none."""
        try:
            return (self._root() / key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""
        with contextlib.suppress(FileNotFoundError):
            (self._root() / key).unlink()

    def clear(self) -> None:
        """Remove every blob."""
        with self._lock:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    close = clear


FaultAction = Literal["error", "disconnect", "cut", "cut_clean", "corrupt", "corrupt_id"]
"""What an injected fault does (see the module docstring)."""
CUT_ACTIONS: Final = frozenset({"cut", "cut_clean"})
"""The fault actions that answer the request and then break its body off."""
ANSWERING_ACTIONS: Final = CUT_ACTIONS | {"corrupt", "corrupt_id"}
"""The fault actions that answer the request first and then damage its answer."""
NOT_UTF8: Final = b"\xff\xfe"
"""The bytes the ``corrupt`` action puts into an answer: neither can occur in UTF-8."""
_ANSWER_STRING = re.compile(rb'"(?:text|content)"\s*:\s*"(?=[^"])')
"""Where a (non-empty) answer text starts in a result line or an answer of the three
protocols: OpenAI's ``message.content``, Anthropic's ``content[].text`` (a streamed
answer's ``text_delta.text``), Gemini's ``parts[].text``."""
_ANY_STRING = re.compile(rb':\s*"')


_ID_STRING = re.compile(rb'"(?:custom_id|key)"\s*:\s*"(?=[^"])')
"""Where a result's id starts: OpenAI's and Anthropic's ``custom_id``, Gemini's ``key``
(a result file's line, or ``metadata.key`` of a batch resource's inline results)."""


def corrupted_id(body: bytes) -> bytes:
    r"""``body`` with :data:`NOT_UTF8` put inside its first result id (fault ``corrupt_id``).

    Right after the opening quote of the first ``custom_id`` or ``key`` string value:
    the line is complete JSON, not UTF-8, and its id, read with the damaged bytes
    replaced, is no request's. A body without one is returned as it is.

    Examples
    --------
    >>> corrupted_id(b'{"custom_id":"a","text":"hi"}\n{"custom_id":"b"}\n')
    b'{"custom_id":"\xff\xfea","text":"hi"}\n{"custom_id":"b"}\n'
    >>> corrupted_id(b'{"metadata": {"key": "j1"}}')
    b'{"metadata": {"key": "\xff\xfej1"}}'
    """
    found = _ID_STRING.search(body)
    if found is None:
        return body
    return body[: found.end()] + NOT_UTF8 + body[found.end() :]


def corrupted(body: bytes) -> bytes:
    r"""``body`` with :data:`NOT_UTF8` put inside its first answer text (the fault ``corrupt``).

    The bytes go right after the opening quote of the first line's first answer string;
    a body whose first line holds none (a streamed answer's ``event: message_start``, a
    pretty-printed JSON answer's ``{``) gets them in its first answer string anywhere,
    else in the first line's first string value. The line is still complete JSON (the
    event still a whole event) but not UTF-8: the damage a faulty proxy or a flipped bit
    in transit would leave, in a result file, a realtime answer or a batch resource
    holding inline results alike.

    Examples
    --------
    >>> corrupted(b'{"id":"a","text":"hi"}\n{"id":"b","text":"ok"}\n')
    b'{"id":"a","text":"\xff\xfehi"}\n{"id":"b","text":"ok"}\n'
    >>> corrupted(b'{"id":"a"}')
    b'{"id":"\xff\xfea"}'
    >>> corrupted(b'event: start\ndata: {"text":""}\n\nevent: delta\ndata: {"text":"hi"}\n\n')
    b'event: start\ndata: {"text":""}\n\nevent: delta\ndata: {"text":"\xff\xfehi"}\n\n'
    """
    end = body.find(b"\n")
    first = body if end < 0 else body[:end]
    found = (_ANSWER_STRING.search(first) or _ANSWER_STRING.search(body)
             or _ANY_STRING.search(first))  # fmt: skip
    if found is None:
        return NOT_UTF8 + body  # no string at all: the body's first bytes
    return body[: found.end()] + NOT_UTF8 + body[found.end() :]


@dataclass(slots=True)
class Fault:
    """One injected fault; see the module docstring for the JSON spec."""

    id: int
    path_regex: str
    method: str = "*"
    status: int = 503
    times: int | None = 1
    retry_after_ms: int | None = None
    retry_after: float | None = None
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_ms: int = 0
    action: FaultAction = "error"
    when: Literal["before", "after"] = "before"
    echo_key: bool = False
    hits: int = 0
    pattern: re.Pattern[str] = field(default=re.compile(""), repr=False)

    def as_dict(self) -> dict[str, object]:
        """The fault as JSON-ready data (``hits`` counts the requests it failed)."""
        return {
            "id": self.id,
            "method": self.method,
            "path_regex": self.path_regex,
            "status": self.status,
            "times": self.times,
            "retry_after_ms": self.retry_after_ms,
            "retry_after": self.retry_after,
            "body": self.body,
            "headers": self.headers,
            "delay_ms": self.delay_ms,
            "action": self.action,
            "when": self.when,
            "echo_key": self.echo_key,
            "hits": self.hits,
        }


_FAULT_KEYS: Final = frozenset(
    {"method", "path_regex", "status", "times", "retry_after_ms", "retry_after", "body",
     "headers", "delay_ms", "action", "when", "echo_key"}
)  # fmt: skip


def _parse_fault(spec: Mapping[str, Any], fault_id: int) -> Fault:
    unknown = sorted(set(spec) - _FAULT_KEYS)
    if unknown:
        msg = f"unknown fault keys {unknown!r}; valid keys: {sorted(_FAULT_KEYS)!r}"
        raise ValueError(msg)
    regex = spec.get("path_regex")
    if not isinstance(regex, str):
        msg = "a fault needs 'path_regex' (a regular expression searched in the request path)"
        raise ValueError(msg)
    try:
        pattern = re.compile(regex)
    except re.error as e:
        msg = f"invalid path_regex {regex!r}: {e}"
        raise ValueError(msg) from e
    status = int(spec.get("status", 503))
    # 200 only with a body of the test's own: an answer that goes wrong inside itself, such
    # as a server-sent stream that breaks off or carries an ``error`` event.
    if not (400 <= status <= 599 or (status == 200 and spec.get("body") is not None)):
        msg = f"fault status must be 400..599 (or 200 with a body), got {status!r}"
        raise ValueError(msg)
    times = spec.get("times", 1)
    if times is not None and (not isinstance(times, int) or times < 1):
        msg = f"'times' must be a positive integer or null (forever), got {times!r}"
        raise ValueError(msg)
    ra_ms = spec.get("retry_after_ms")
    ra_s = spec.get("retry_after")
    for name, value, limit in (
        ("retry_after_ms", ra_ms, MAX_RETRY_HINT_SECONDS * 1000),
        ("retry_after", ra_s, MAX_RETRY_HINT_SECONDS),
    ):
        if value is not None and (not isinstance(value, int | float) or not 0 <= value <= limit):
            msg = f"{name} must be between 0 and {limit:g}, got {value!r} (SDKs obey large hints)"
            raise ValueError(msg)
    delay = int(spec.get("delay_ms", 0))
    if not 0 <= delay <= MAX_FAULT_DELAY_MS:
        msg = f"delay_ms must be between 0 and {MAX_FAULT_DELAY_MS}, got {delay!r}"
        raise ValueError(msg)
    action = spec.get("action", "error")
    if action not in ("error", "disconnect", *sorted(ANSWERING_ACTIONS)):
        msg = (
            "action must be 'error', 'disconnect', 'cut', 'cut_clean', 'corrupt' or "
            "'corrupt_id', "
            f"got {action!r}"
        )
        raise ValueError(msg)
    # A cut breaks off, a corruption damages, the request's own answer: it has run first.
    when = spec.get("when", "after" if action in ANSWERING_ACTIONS else "before")
    if when not in ("before", "after"):
        msg = f"when must be 'before' or 'after', got {when!r}"
        raise ValueError(msg)
    if action in ANSWERING_ACTIONS and when != "after":
        what = "damages" if action.startswith("corrupt") else "sends half of"
        msg = (
            f"action {action!r} {what} the request's own answer, so the request runs "
            f"first: when must be 'after' (the default for {action!r}), got {when!r}; use "
            "action 'disconnect' to drop the connection before the request runs"
        )
        raise ValueError(msg)
    echo_key = spec.get("echo_key", False)
    if not isinstance(echo_key, bool):
        msg = f"echo_key must be true or false, got {echo_key!r}"
        raise ValueError(msg)
    headers = spec.get("headers") or {}
    if not isinstance(headers, dict):
        msg = f"headers must be an object, got {headers!r}"
        raise ValueError(msg)
    return Fault(
        id=fault_id,
        path_regex=regex,
        method=str(spec.get("method") or "*").upper(),
        status=status,
        times=times,
        retry_after_ms=None if ra_ms is None else int(ra_ms),
        retry_after=None if ra_s is None else float(ra_s),
        body=spec.get("body"),
        headers={str(k): str(v) for k, v in headers.items()},
        delay_ms=delay,
        action=action,
        when=when,
        echo_key=echo_key,
        pattern=pattern,
    )


# --------------------------------------------------------------------------------------
# The core: routing, log, faults, control endpoints


_AUTH_HEADERS: Final = ("authorization", "x-api-key", "x-goog-api-key", "api-key")
#: query parameters that carry a credential (Gemini accepts ``?key=``); matched
#: case-insensitively, their values are replaced by ``REDACTED`` before logging
_AUTH_QUERY_PARAMS: Final = frozenset(
    {"key", "api_key", "apikey", "api-key", "access_token", "token", "auth", "password", "secret"}
)
_REDACTED: Final = "REDACTED"


def _credential(request: Request) -> str:
    """The credential a request carries (header or query parameter), for echoing faults."""
    for name in _AUTH_HEADERS:
        value = request.headers.get(name)
        if value:
            return value.removeprefix("Bearer ").removeprefix("bearer ")
    for part in request.query_string.split("&"):
        name, _, value = part.partition("=")
        if unquote_plus(name).lower() in _AUTH_QUERY_PARAMS and value:
            return unquote_plus(value)
    return ""


def _redact_query(query_string: str) -> tuple[str, bool]:
    """Return ``query_string`` with credential values replaced, and whether one was present.

    Examples
    --------
    >>> _redact_query("pageSize=2&key=AIzaSECRET")
    ('pageSize=2&key=REDACTED', True)
    >>> _redact_query("after=x")
    ('after=x', False)
    """
    if not query_string:
        return query_string, False
    found = False
    parts = query_string.split("&")
    for i, part in enumerate(parts):
        name, eq, _ = part.partition("=")
        if unquote_plus(name).lower() in _AUTH_QUERY_PARAMS:
            found = True
            parts[i] = f"{name}{eq}{_REDACTED}" if eq else name
    return "&".join(parts), found


@dataclass(slots=True)
class LedgerEntry:
    """The requests of one accepted batch, for the billing ledger (``/_emulator/billing``)."""

    provider: str
    batch_id: str | None
    custom_ids: list[str | None]
    ran: int | None = None
    """Requests executed when a cancel or expiry ended the batch early (``None``: all)."""
    requests: list[str] | None = None
    """Per request, its :func:`~batchata_df.emulator.answers.request_key` (what was asked,
    whatever the mode): the same row billed in a batch and in realtime shows the same key."""
    mode: str = "batch"
    """``"batch"`` or ``"realtime"`` (billed at the provider's standard price)."""
    unbilled: frozenset[int] = frozenset()
    """Positions of requests that are not billed because they failed (no answer, no usage):
    a request with its own error (a body that fails validation, a fault marker, a model
    that cannot answer it) or whose model was shut down before it ran. No provider bills
    them: Anthropic's ``errored`` results ("Request encountered an error and a message was
    not created. [...] You will not be billed for these requests.",
    https://platform.claude.com/docs/en/build-with-claude/batch-processing, "Retrieving
    batch results"); OpenAI's error-file lines (its Batch API FAQ,
    https://help.openai.com/en/articles/9197833: "Developers will be charged for any
    completed work"; an error-file line is not completed work and carries no usage, and the
    batch's ``usage`` leaves it out); Gemini's failed requests (its billing FAQ,
    https://ai.google.dev/gemini-api/docs/billing: "Am I charged for failed requests? If
    your request fails with a 400 or 500 error, you won't be charged for the tokens
    used."). An answer is billed whatever it says (a refusal, one cut by the output limit
    or a safety filter): it has usage."""
    model: str | None = None
    """The model the requests were sent to (billed at its prices unless :attr:`routed`)."""
    routed: tuple[int, str] | None = None
    """``(position, successor)``: the requests from that position on were answered, and are
    billed, by the successor (``EmulatorCore.routed_since``)."""
    usage: list[tuple[int, int, int] | None] | None = None
    """Per request, the usage it was answered with, ``(input, output, cached)`` tokens
    (``None``: not answered yet, or not recorded): what :meth:`EmulatorCore.billing` prices
    with ``usd=True``. Recorded by the Gemini app."""
    days: tuple[tuple[int, dt.date], ...] = ()
    """``(position, day)`` ascending: the requests from that position on ran on that day
    (the ``today`` setting in force when they ran, :meth:`EmulatorCore.days_since`), and
    are billed at the prices in force then (genai-prices' dated prices); the providers
    bill a request at the price of the day it ran, not of the day the bill is read.
    Recorded at acceptance (the day then), refined by the Gemini app when its batch ends."""

    def model_at(self, position: int) -> str | None:
        """The model billed for the request at ``position``."""
        if self.routed is not None and position >= self.routed[0]:
            return self.routed[1]
        return self.model

    def day_at(self, position: int) -> dt.date | None:
        """The day the request at ``position`` ran (``None``: not recorded)."""
        found = None
        for start, day in self.days:
            if start <= position:
                found = day
        return found


def _credentials(request: Request) -> list[str]:
    """The credential values a request carries (auth headers, key-like query parameters)."""
    found: list[str] = []
    for header in _AUTH_HEADERS:
        value = request.headers.get(header)
        if value:
            found.append(value)
            scheme, _, rest = value.partition(" ")
            if rest and scheme.lower() in ("bearer", "basic", "token"):
                found.append(rest.strip())
    for name, value in parse_qsl(request.query_string, keep_blank_values=True):
        if name.lower() in _AUTH_QUERY_PARAMS and value:
            found.append(value)
    return sorted({v for v in found if len(v) >= 4}, key=len, reverse=True)


def _json_lines(text: str) -> list[object] | None:
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        return [json.loads(line) for line in lines]
    except ValueError:
        return None


def _loggable_body(request: Request) -> dict[str, object]:
    """``{"body": json}`` or ``{"lines": [json, ...]}`` (or ``{"body_text": str}``), redacted.

    A multipart upload (OpenAI's ``/files``) is logged by its file part. Credentials the
    request carried in headers or query are replaced by ``REDACTED`` wherever they appear
    in the body, so a client that leaks its key into a request is visible in the log
    without the log holding the key. ``sha256`` is the hex SHA-256 of the (redacted) body
    or file part as it arrived, byte for byte: the parsed JSON cannot show a byte that
    differs without changing the value (an escape, a space, the order of the lines).

    Examples
    --------
    >>> r = Request("POST", "/x", {}, Headers([("x-api-key", "sk-123456")]),
    ...             b'{"a": "sk-123456"}')
    >>> _loggable_body(r)["body"]
    {'a': 'REDACTED'}
    >>> _loggable_body(r)["sha256"] == hashlib.sha256(b'{"a": "REDACTED"}').hexdigest()
    True
    >>> bad = [Request("POST", "/x", {}, Headers([]), b'{"a": "' + c + b'"}')
    ...        for c in (bytes([255]), bytes([254]))]  # not UTF-8: still two hashes
    >>> len({_loggable_body(r)["sha256"] for r in bad})
    2
    """
    raw = request.body
    ctype = request.headers.get("content-type", "")
    if ctype.lower().startswith("multipart/"):
        from batchata_df.emulator.openai_api import parse_multipart

        try:
            parts = parse_multipart(raw, ctype)
        except ValueError:
            parts = {}
        files = [bytes(data) for filename, data in parts.values() if filename is not None]
        if files:
            raw = files[0]
    redacted = bytes(raw)
    for secret in _credentials(request):  # on the bytes: a decode would merge bad bytes
        redacted = redacted.replace(secret.encode(), _REDACTED.encode())
    digest = hashlib.sha256(redacted).hexdigest()
    text = redacted.decode("utf-8", "replace")
    if raw is not request.body:  # an uploaded file: JSON Lines even when it has one line
        lines = _json_lines(text)
        if lines is not None:
            return {"lines": lines, "sha256": digest}
        return {"body_text": text, "sha256": digest}
    try:
        return {"body": json.loads(text), "sha256": digest}
    except ValueError:
        pass
    lines = _json_lines(text)
    if lines is not None:
        return {"lines": lines, "sha256": digest}
    return {"body_text": text, "sha256": digest}


class EmulatorCore:
    """Routing, request log, faults, settings and shared services for all provider apps.

    Parameters
    ----------
    config
        Initial shared settings.
    load_providers
        Mount the provider apps listed in :data:`PROVIDERS` (default True).
    """

    def __init__(
        self, config: EmulatorConfig | None = None, *, load_providers: bool = True
    ) -> None:
        self.config = config or EmulatorConfig()
        self.clock = Clock()
        self.blobs = BlobStore()
        self._routes: list[tuple[str, App]] = []
        self._apps: dict[str, App] = {}
        self._log: list[dict[str, object]] = []
        self._seq = itertools.count(1)
        self._faults: list[Fault] = []
        self._fault_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._ledger: list[LedgerEntry] = []
        self._epoch = 0
        """How many resets so far (:attr:`epoch`)."""
        self._rt_in_flight = self._rt_max = self._rt_served = 0
        self._served_log: list[tuple[float, str, bool]] = []
        """``(since, today, serve_retired)``: the settings that decide what is served, each
        from the simulated time (:attr:`clock`) it was set at; :meth:`gone_since` replays
        them. The first entry holds from the start (``-inf``)."""
        self._log_settings(-math.inf)
        if load_providers:
            for provider, (module, prefixes) in PROVIDERS.items():
                app = _load_app(self, provider, module)
                for prefix in prefixes:
                    self.register(prefix, app)

    # ---- registry

    def register(self, prefix: str, app: App) -> None:
        """Mount ``app`` at ``prefix`` (e.g. ``"/openai/v1"``), replacing an existing mount."""
        prefix = "/" + prefix.strip("/")
        self._routes = [(p, a) for p, a in self._routes if p != prefix]
        self._routes.append((prefix, app))
        self._routes.sort(key=lambda item: len(item[0]), reverse=True)  # longest prefix wins
        self._apps[app.provider] = app

    @property
    def apps(self) -> dict[str, App]:
        """Mounted apps by provider name."""
        return dict(self._apps)

    def route(self, path: str) -> tuple[App, str] | None:
        """Return the app serving ``path`` and the path below its prefix."""
        for prefix, app in self._routes:
            if path == prefix or path.startswith(prefix + "/"):
                return app, path[len(prefix) :] or "/"
        return None

    @staticmethod
    def new_id(prefix: str, nbytes: int = 12) -> str:
        """Return a fresh random id such as ``batch_3f2a...``.

        Examples
        --------
        >>> EmulatorCore.new_id("file-").startswith("file-")
        True
        """
        return prefix + uuid.uuid4().hex[: nbytes * 2]

    # ---- model shutdowns during a batch

    def _log_settings(self, since: float) -> None:
        entry = (since, self.config.today, self.config.serve_retired)
        if since == -math.inf:
            self._served_log = [entry]
        else:
            self._served_log.append(entry)

    def day(self) -> dt.date:
        """The date the emulator reads now: ``today``, or the UTC date of its clock.

        On the real date (``""``) it is the date of :attr:`clock` (which tests advance),
        never the machine's: what is served and routed at a request's creation goes by it,
        as :meth:`gone_since`, :meth:`routed_since` and the bills go by the clock.
        """
        return _day(self.config.today, self.clock.now())

    def served_now(self) -> Callable[[str, str], bool]:
        """``serves(provider, model)`` as of the settings in force now, kept for later.

        A batch validated in the background is validated as of its creation, not as of a
        ``today`` set after it was sent (the shutdown then is :meth:`gone_since`'s).
        """
        on = self.day()
        keep = self.config.serve_retired
        return lambda provider, model: model_rules.serves(provider, model, on, keep)

    def routed_now(self, provider: str, model: str) -> str:
        """The model that answers a request for ``model`` created now (:meth:`day`).

        :func:`~batchata_df.emulator.model_rules.routed` as of the settings in force now;
        a batch created before the routing and run after it is :meth:`routed_since`'s.
        """
        return model_rules.routed(provider, model, self.day(), self.config.serve_retired)

    def gone_since(self, provider: str, model: str, created: float) -> float | None:
        """When ``model``, in a batch created at ``created``, stopped being served, or None.

        A batch is accepted only for a model served then; when the ``today`` setting has
        since reached the model's shutdown (:data:`~batchata_df.emulator.model_rules.SCHEDULED`;
        ``serve_retired`` turned off), the requests it had not run by then fail one by one
        with the provider's model-not-found error and are not billed (each provider module
        says how, with its sources). The shutdown takes effect at the FIRST moment since
        the batch's creation that the settings in force no longer served the model: moving
        ``today`` further forward later does not move it. When the settings in force at its
        creation already did not serve it, at its creation: none of its requests ran on the
        model (the strict reading where a provider's page does not say what becomes of a
        batch still queued at a shutdown). With the real date (``today`` ``""``), at the
        first UTC midnight of the emulator's clock from which the model is not served
        (:meth:`_first_day`): the date each request ran on, not the date it is read on.
        Moving ``today`` back before the shutdown serves the model again for batches
        created from then on, but does not undo it for a batch it already overtook (a real
        shutdown is not undone; strict and simple). A model routed to a successor is
        served (answered by it).
        """
        def gone(on: dt.date, keep: bool) -> bool:
            return not model_rules.serves(provider, model, on=on, serve_retired=keep)

        for start, end, day, keep in self._settings_since(created):
            at = self._first_day(start, end, day, keep, gone)
            if at is not None:
                return at
        return None

    def routed_since(
        self, provider: str, model: str, created: float
    ) -> tuple[float, str] | None:
        """When ``model``, in a batch created at ``created``, began to be routed, and to what.

        ``(since, successor)``; ``None`` while the model answers itself.

        The routed counterpart of :meth:`gone_since`, read the same way: from the FIRST
        moment since the batch's creation that the settings in force route the model
        (:func:`~batchata_df.emulator.model_rules.routed`), the requests it had not run by
        then are answered, and billed, by the successor. Google's page says requests to
        a routed model are answered by the replacement from its shutdown date, "billed at
        the new model's rates" (model_rules.SCHEDULED cites the reads); it does not carve
        out batches queued before the date, so none is made. Requests run before the
        date keep the model asked for (with the real date, those run before the UTC
        midnight it begins on by the emulator's clock, however late the batch is read).
        """
        def answering(on: dt.date, keep: bool) -> str:
            return model_rules.routed(provider, model, on=on, serve_retired=keep)

        for start, end, day, keep in self._settings_since(created):
            at = self._first_day(start, end, day, keep, lambda on, k: answering(on, k) != model)
            if at is not None:
                return at, answering(_day(day, at), keep)
        return None

    def _settings_since(self, created: float) -> list[tuple[float, float, str, bool]]:
        """``(start, end, today, serve_retired)``: the settings in force from ``created`` on."""
        log = tuple(self._served_log)
        first = 0
        for i, (since, _, _) in enumerate(log):
            if since <= created:
                first = i  # the settings in force when the batch was created
        ends = [since for since, _, _ in log[first + 1 :]] + [math.inf]
        return [(max(since, created), end, day, keep)
                for (since, day, keep), end in zip(log[first:], ends, strict=True)]  # fmt: skip

    def _first_day(
        self, start: float, end: float, day: str, keep: bool, hit: Callable[[dt.date, bool], bool]
    ) -> float | None:
        """The first moment from ``start`` (before ``end`` and now) whose date ``hit`` holds.

        A pinned ``today`` is one date throughout. The real date (``""``) is the UTC date
        of the emulator's clock at each moment, so it changes at midnight: a batch sent
        before a shutdown date and read after it is answered as of the date each request
        ran on (those run before midnight as the model asked for), not as of the date it
        is read on.
        """
        if day:
            return start if hit(_day(day), keep) else None
        t, stop = start, min(end, self.clock.now())
        while t < stop:
            on = _day(day, t)
            if hit(on, keep):
                return t
            t = _midnight_after(on)
        return None

    def days_since(self, created: float) -> list[tuple[float, dt.date]]:
        """``(since, day)``: the ``today`` settings in force from ``created`` on.

        Read as :meth:`routed_since` reads them: the first is the setting in force at
        ``created`` (its ``since`` is ``created``), then each later change from the
        simulated time it was made. The real date (``""``) changes at each UTC midnight of
        the emulator's clock (:meth:`_first_day`), up to now.
        """
        days: list[tuple[float, dt.date]] = []
        for start, end, day, _ in self._settings_since(created):
            t, stop = start, min(end, self.clock.now())
            days.append((t, _day(day, t)))
            while not day:
                t = _midnight_after(days[-1][1])
                if t >= stop:
                    break
                days.append((t, _day(day, t)))
        return days

    # ---- billing

    @property
    def epoch(self) -> int:
        """How many times :meth:`reset` ran: work begun before a reset reads another number.

        A provider app that bills outside the request that created a batch (OpenAI's
        preparation worker) passes the epoch the batch was created in to :meth:`bill`, so
        that a batch a reset forgot is never billed after it, into the next test's ledger.
        """
        with self._lock:
            return self._epoch

    def bill(
        self,
        provider: str,
        batch_id: str,
        custom_ids: list[str],
        requests: list[str] | None = None,
        model: str | None = None,
        failing: Iterable[int] = (),
        epoch: int | None = None,
    ) -> LedgerEntry:
        """Record the requests of a batch the provider accepted (and so will bill).

        The returned entry's ``ran`` is set when a cancel or expiry ends the batch with only
        its first ``ran`` requests executed; until then every accepted request counts.
        ``requests`` are the requests' :func:`~batchata_df.emulator.answers.request_key` s;
        ``model`` the model they were sent to (bare, as the provider prices it); ``failing``
        the positions of requests that will fail with their own error, never billed
        (:attr:`LedgerEntry.unbilled`); ``epoch`` the :attr:`epoch` the batch was created
        in: when a reset came since, the entry is returned but not recorded.
        """
        day = self.day()  # the emulator's clock, not the machine's
        entry = LedgerEntry(
            provider, batch_id, list[str | None](custom_ids), requests=requests, model=model,
            unbilled=frozenset(failing), days=((0, day),),
        )  # fmt: skip
        with self._lock:
            if epoch is None or epoch == self._epoch:
                self._ledger.append(entry)
        return entry

    def bill_realtime(
        self,
        provider: str,
        request_key: str,
        model: str | None = None,
        usage: tuple[int, int, int] | None = None,
    ) -> None:
        """Record one answered realtime request (billed at the standard price)."""
        day = self.day()  # the emulator's clock, not the machine's
        entry = LedgerEntry(
            provider, None, [None], requests=[request_key], mode="realtime", model=model,
            usage=None if usage is None else [usage], days=((0, day),),
        )  # fmt: skip
        with self._lock:
            self._ledger.append(entry)

    def billing(self, usd: bool = False) -> list[dict[str, object]]:
        """Every billed request, in acceptance order.

        ``{provider, batch_id, custom_id, mode, request, model}``: realtime requests have
        no batch id or custom id; ``request`` (:func:`~batchata_df.emulator.answers.request_key`)
        names what was asked in either mode; ``model`` the model billed (the successor for
        a request a routed model's successor answered; ``None`` where not recorded). With
        ``usd``, also ``usd``: what the request is billed
        (:func:`~batchata_df.emulator.pricing.billed_usd` of ``model`` and the usage it
        was answered with, at the prices of the day it ran, :attr:`LedgerEntry.days`;
        ``None`` where the usage is not recorded: only Gemini's is).
        """
        with self._lock:
            entries = list(self._ledger)
        out: list[dict[str, object]] = []
        for e in entries:
            n = len(e.custom_ids) if e.ran is None else e.ran
            keys: list[str | None] = [None] * len(e.custom_ids)
            if e.requests is not None:
                keys = list(e.requests)
            for i, (cid, key) in enumerate(zip(e.custom_ids[:n], keys[:n], strict=True)):
                if i in e.unbilled:
                    continue
                model = e.model_at(i)
                item: dict[str, object] = {
                    "provider": e.provider, "batch_id": e.batch_id, "custom_id": cid,
                    "mode": e.mode, "request": key, "model": model,
                }  # fmt: skip
                if usd:
                    used = e.usage[i] if e.usage is not None and i < len(e.usage) else None
                    day = e.day_at(i) or self.day()
                    item["usd"] = (
                        None if used is None or model is None
                        else _billed_usd(e.provider, model, *used, e.mode, day)
                    )  # fmt: skip
                out.append(item)
        return out

    # ---- realtime endpoints

    @contextlib.contextmanager
    def realtime_call(self) -> Iterator[None]:
        """Count one realtime request in flight while it is answered (its latency included).

        ``GET /_emulator/realtime`` reports the count, the most seen at once and how many
        were served, so a test can check a client's concurrency bound.
        """
        with self._lock:
            self._rt_in_flight += 1
            self._rt_max = max(self._rt_max, self._rt_in_flight)
        try:
            if self.config.realtime_latency:
                time.sleep(self.config.realtime_latency)
            yield
        finally:
            with self._lock:
                self._rt_in_flight -= 1
                self._rt_served += 1

    def realtime_stats(self) -> dict[str, int]:
        """``{in_flight, max_in_flight, served}`` of the realtime endpoints."""
        with self._lock:
            return {
                "in_flight": self._rt_in_flight,
                "max_in_flight": self._rt_max,
                "served": self._rt_served,
            }

    # ---- dispatch

    def handle(self, request: Request) -> Response | None:
        """Answer one request; ``None`` means "drop the connection" (an injected fault)."""
        if request.path == CONTROL_PREFIX or request.path.startswith(CONTROL_PREFIX + "/"):
            return self._control(request)
        routed = self.route(request.path)
        app = routed[0] if routed else None
        fault = self._take_fault(request)
        response: Response | None
        if fault is not None and fault.when == "before":  # never a cut (_parse_fault)
            response = self._fault_response(fault, app, request)
        else:
            if routed is None:
                response = json_response(
                    error_envelope("plain", 404, f"no emulated provider serves {request.path!r}"),
                    404,
                )
            else:
                response = self._call_app(routed[0], request, routed[1])
            if fault is not None and fault.action in CUT_ACTIONS:
                if fault.delay_ms:
                    time.sleep(fault.delay_ms / 1000)
                kind = CleanCutResponse if fault.action == "cut_clean" else CutResponse
                response = kind(response.status, response.headers, response.body)
            elif fault is not None and fault.action in ("corrupt", "corrupt_id"):
                if fault.delay_ms:
                    time.sleep(fault.delay_ms / 1000)
                body = response.body
                whole = bytes(body) if isinstance(body, bytes | bytearray) else b"".join(body)
                headers = {k: v for k, v in response.headers.items()
                           if k.lower() != "content-length"}  # fmt: skip
                damage = corrupted if fault.action == "corrupt" else corrupted_id
                response = Response(response.status, headers, damage(whole))
            elif fault is not None:
                response = self._fault_response(fault, app, request)
        self._record(request, app, response, fault)
        return response

    def _call_app(self, app: App, request: Request, route: str) -> Response:
        sub = Request(
            request.method,
            request.path,
            request.query,
            request.headers,
            request.body,
            route,
            request.base_url,
            request.query_string,
        )
        try:
            return app.handle(sub)
        except Exception as e:  # an emulator bug must not kill the connection thread
            traceback.print_exc(file=sys.stderr)
            return app.error_response(500, f"emulator internal error: {type(e).__name__}: {e}")

    def _take_fault(self, request: Request) -> Fault | None:
        if not self._faults:
            return None
        target = request.path + ("?" + request.query_string if request.query_string else "")
        with self._lock:
            for fault in self._faults:
                if fault.method not in ("*", request.method):
                    continue
                if not fault.pattern.search(target):
                    continue
                fault.hits += 1
                if fault.times is not None and fault.hits >= fault.times:
                    self._faults.remove(fault)
                return fault
        return None

    @staticmethod
    def _fault_response(fault: Fault, app: App | None, request: Request) -> Response | None:
        if fault.delay_ms:
            time.sleep(fault.delay_ms / 1000)
        if fault.action == "disconnect":
            return None
        message = f"Emulated fault #{fault.id}: HTTP {fault.status}"
        body = fault.body
        if fault.echo_key:
            key = _credential(request)
            message += f": the gateway refused credential {key}"
            if isinstance(body, str):
                body = body.replace("{key}", key)
            elif body is not None:
                body = json.loads(json.dumps(body).replace("{key}", key))
        if body is None:
            if app is not None:
                response = app.error_response(fault.status, message)
            else:
                response = json_response(
                    error_envelope("plain", fault.status, message), fault.status
                )
        elif isinstance(body, str):
            response = Response(fault.status, {"content-type": "text/plain"}, body.encode())
        else:
            response = json_response(body, fault.status)
        if fault.retry_after_ms is not None:
            response.headers["retry-after-ms"] = str(fault.retry_after_ms)
        if fault.retry_after is not None:
            response.headers["retry-after"] = f"{fault.retry_after:g}"
        response.headers.update(fault.headers)
        return response

    def _record(
        self, request: Request, app: App | None, response: Response | None, fault: Fault | None
    ) -> None:
        retry = request.headers.get("x-stainless-retry-count")
        query, query_auth = _redact_query(request.query_string)
        entry: dict[str, object] = {
            "seq": next(self._seq),
            "ts": time.time(),
            "method": request.method,
            "path": request.path,
            "query": query,
            "status": 0 if response is None else response.status,
            "provider": app.provider if app is not None else None,
            "auth": query_auth or any(h in request.headers for h in _AUTH_HEADERS),
            "retry_count": int(retry) if retry is not None and retry.isdigit() else None,
            "fault": fault.id if fault is not None else None,
        }
        if self.config.log_bodies and request.body:
            entry.update(_loggable_body(request))
        self._log.append(entry)  # list.append is atomic under the GIL

    # ---- control endpoints

    def _control(self, request: Request) -> Response:
        name = request.path[len(CONTROL_PREFIX) :].strip("/")
        method = request.method
        try:
            if name == "health" and method == "GET":
                return json_response({"ok": True, "providers": sorted(self._apps)})
            if name == "log":
                if method == "GET":
                    since = int(request.query.get("since", "0"))
                    return json_response(
                        [e for e in list(self._log) if cast(int, e["seq"]) > since]
                    )
                if method == "DELETE":
                    self._log.clear()
                    return json_response({"ok": True})
            if name == "faults":
                return self._control_faults(request)
            if name == "billing" and method == "GET":
                return json_response(self.billing(usd=request.query.get("usd") == "1"))
            if name == "realtime" and method == "GET":
                return json_response(self.realtime_stats())
            if name == "config":
                if method == "POST":
                    self.configure(json_body(request))
                if method in ("GET", "POST"):
                    return json_response(self.settings())
            if name == "reset" and method == "POST":
                self.reset()
                return json_response({"ok": True})
            if name == "clock" and method in ("GET", "POST"):
                if method == "POST":
                    body = json_body(request)
                    self.clock.advance(float(body.get("advance", 0)))
                return json_response({"now": self.clock.now(), "offset": self.clock.offset})
        except (ValueError, TypeError) as e:
            return json_response({"error": {"message": str(e)}}, 400)
        msg = f"unknown control endpoint {method} {request.path}"
        return json_response({"error": {"message": msg}}, 404)

    def _control_faults(self, request: Request) -> Response:
        if request.method == "POST":
            fault = self.add_fault(json_body(request))
            return json_response(fault.as_dict())
        if request.method == "GET":
            with self._lock:
                return json_response([f.as_dict() for f in self._faults])
        if request.method == "DELETE":
            with self._lock:
                self._faults.clear()
            return json_response({"ok": True})
        return json_response({"error": {"message": "use GET, POST or DELETE"}}, 405)

    def add_fault(self, spec: Mapping[str, Any]) -> Fault:
        """Validate and register a fault spec (see the module docstring)."""
        fault = _parse_fault(spec, next(self._fault_ids))
        with self._lock:
            self._faults.append(fault)
        return fault

    def settings(self) -> dict[str, object]:
        """Shared settings plus each provider's own, under its name."""
        out = self.config.as_dict()
        for provider, app in sorted(self._apps.items()):
            out[provider] = app.settings()
        return out

    def configure(self, settings: Mapping[str, Any]) -> None:
        """Validate everything first, then apply; unknown keys raise ``ValueError``."""
        shared = {k: v for k, v in settings.items() if k not in self._apps}
        valid = set(self.config.as_dict())
        unknown = sorted(set(shared) - valid)
        if unknown:
            msg = f"unknown settings {unknown!r}; valid: {sorted(valid | set(self._apps))!r}"
            raise ValueError(msg)
        new = EmulatorConfig(
            self.config.latency,
            self.config.cancel_delay,
            self.config.cancel_unfinished,
            self.config.log_bodies,
            self.config.list_order,
            self.config.realtime_latency,
            self.config.serve_retired,
            self.config.today,
        )
        for key in ("latency", "cancel_delay", "realtime_latency"):
            if key in shared:
                value = shared[key]
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    msg = f"{key} must be a number of seconds >= 0, got {value!r}"
                    raise ValueError(msg)
                setattr(new, key, float(value))
        if "cancel_unfinished" in shared:
            value = shared["cancel_unfinished"]
            if value not in ("error_file", "omit"):
                msg = f"cancel_unfinished must be 'error_file' or 'omit', got {value!r}"
                raise ValueError(msg)
            new.cancel_unfinished = value
        for key in ("log_bodies", "serve_retired"):
            if key in shared:
                value = shared[key]
                if not isinstance(value, bool):
                    msg = f"{key} must be true or false, got {value!r}"
                    raise ValueError(msg)
                setattr(new, key, value)
        if "today" in shared:
            value = shared["today"]
            try:
                if not isinstance(value, str):
                    raise ValueError
                if value:
                    dt.date.fromisoformat(value)
            except ValueError:
                msg = f"today must be a date YYYY-MM-DD, or \"\" for the real date, got {value!r}"
                raise ValueError(msg) from None
            new.today = value
        if "list_order" in shared:
            value = shared["list_order"]
            if value not in LIST_ORDERS:
                msg = f"list_order must be one of {list(LIST_ORDERS)!r}, got {value!r}"
                raise ValueError(msg)
            new.list_order = value
        for provider, app in self._apps.items():
            if provider in settings:
                sub = settings[provider]
                if not isinstance(sub, Mapping):
                    msg = f"settings for {provider!r} must be an object, got {sub!r}"
                    raise ValueError(msg)
                app.configure(sub)
        changed = (new.today, new.serve_retired) != (self.config.today, self.config.serve_retired)
        self.config = new
        if changed:
            self._log_settings(self.clock.now())  # what is served changed now (gone_since)
        model_rules.serve_retired(new.serve_retired)
        model_rules.today(new.today or None)

    def reset(self) -> None:
        """Forget all provider state, files, faults and the log; keep settings."""
        for app in self._apps.values():
            app.reset()
        with self._lock:
            self._faults.clear()
            self._ledger.clear()
            self._epoch += 1
            self._rt_in_flight = self._rt_max = self._rt_served = 0
        self._log.clear()
        self.clock.reset()
        self._log_settings(-math.inf)
        self.blobs.clear()

    def close(self) -> None:
        """Release resources (the blob folder)."""
        self.blobs.close()


@functools.lru_cache(maxsize=4096)
def _billed_usd(
    provider: str, model: str, inp: int, out: int, cached: int, mode: str, day: dt.date
) -> float:
    # ``day``: the day the request ran, whose genai-prices' dated prices it is billed at.
    from batchata_df.emulator.pricing import billed_usd

    return billed_usd(
        provider, model, input_tokens=inp, output_tokens=out, cached_tokens=cached, mode=mode,
        on=day,
    )  # fmt: skip


def _midnight_after(day: dt.date) -> float:
    """The UTC midnight that ends ``day`` (unix seconds)."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp()


def _day(today: str, at: float | None = None) -> dt.date:
    """The date a ``today`` setting means (``""``: the real date, now or ``at``)."""
    if today:
        return dt.date.fromisoformat(today)
    moment = dt.datetime.now(dt.UTC) if at is None else dt.datetime.fromtimestamp(at, dt.UTC)
    return moment.date()


def _load_app(core: EmulatorCore, provider: str, module_name: str) -> App:
    style = cast(ErrorStyle, provider if provider in ("openai", "anthropic", "gemini") else "plain")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:  # a real import error inside the module: surface it
            raise
        return _Unavailable(provider, style)
    factory = cast(Callable[[EmulatorCore], App], module.create_app)
    return factory(core)


# --------------------------------------------------------------------------------------
# HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "batchata-df-emulator"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Small JSON answers on keep-alive connections would otherwise wait for the
        # client's delayed ACK (Nagle), adding ~40 ms per request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the core keeps a structured log; stderr stays quiet

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        server = cast(EmulatorServer, self.server)
        raw_path, _, query_string = self.path.partition("?")
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        request = Request(
            method=self.command,
            path=raw_path,
            query=dict(parse_qsl(query_string, keep_blank_values=True)),
            headers=Headers(self.headers.items()),
            body=body,
            base_url=server.url,
            query_string=query_string,
        )
        response = server.core.handle(request)
        if response is None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            self._write(response)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        if isinstance(response, CutResponse):
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)

    def _write(self, response: Response) -> None:
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        body = response.body
        cut = isinstance(response, CutResponse)
        if isinstance(response, CleanCutResponse):
            # Close-delimited: the connection's orderly end (see _dispatch) ends the body.
            if isinstance(body, bytes | bytearray | memoryview):
                whole = bytes(body)
            else:
                whole = b"".join(body)
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(whole[: len(whole) // 2])
            return
        if isinstance(body, bytes | bytearray | memoryview):
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body[: len(body) // 2] if cut else body)  # one write
            return
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        whole = b"".join(body) if cut else b""
        for chunk in [whole[: len(whole) // 2]] if cut else body:
            if chunk:
                self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        if not cut:
            self.wfile.write(b"0\r\n\r\n")


class EmulatorServer(ThreadingHTTPServer):
    """The HTTP server; bound to ``127.0.0.1`` only.

    Parameters
    ----------
    port
        TCP port; 0 picks a free one.
    core
        The routing core; a fresh one with the default providers when omitted.
    """

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, port: int = 0, core: EmulatorCore | None = None) -> None:
        self.core = core or EmulatorCore()
        super().__init__((LOOPBACK, port), _Handler)
        self.url = f"http://{LOOPBACK}:{self.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start_in_thread(self) -> EmulatorServer:
        """Serve from a daemon thread of this process (for in-process use); returns self."""
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and remove stored files."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()
        self.core.close()


def make_server(
    host: str = LOOPBACK,
    port: int = 0,
    *,
    latency: float = 0.0,
    load_providers: bool = True,
) -> EmulatorServer:
    """Create (but do not start) an emulator server.

    Parameters
    ----------
    host
        Must be ``127.0.0.1`` or ``localhost``: the emulator never listens on a network.
    port
        TCP port; 0 picks a free one.
    latency
        Initial batch latency in seconds.
    load_providers
        Mount the provider apps (default True).

    Raises
    ------
    ValueError
        ``host`` is not a loopback name.

    Examples
    --------
    >>> make_server(host="0.0.0.0")
    Traceback (most recent call last):
    ...
    ValueError: the emulator binds to 127.0.0.1 only, got host='0.0.0.0'
    """
    if host not in (LOOPBACK, "localhost"):
        msg = f"the emulator binds to 127.0.0.1 only, got host={host!r}"
        raise ValueError(msg)
    core = EmulatorCore(EmulatorConfig(latency=float(latency)), load_providers=load_providers)
    try:
        return EmulatorServer(port, core)
    except OSError:
        core.close()
        raise
