"""Secret scrubbing: one function applied wherever a message leaves our hands.

Providers and the gateways in front of them sometimes echo the request's credential in an
error body ("Incorrect API key provided: sk-..."). Such a message must never be stored
(job events ``error``, batch events ``detail``), shown (``_error``), logged, warned or
raised. :func:`scrub` replaces

* the value of every environment variable that holds a credential: the providers' keys
  (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``GEMINI_API_KEY``, ``GOOGLE_API_KEY``) and
  any variable whose name ends in ``_KEY``, ``_TOKEN``, ``_SECRET`` or ``_PASSWORD``;
* keys given in code (``api_key=``), which the providers :func:`register_secret`;
* anything shaped like a provider key: ``sk-...`` / ``sk-ant-...`` (OpenAI, Anthropic) and
  ``AIza...`` (Google);

with :data:`REDACTED`. It is applied at the boundaries, not sprinkled: the providers'
translation of SDK exceptions (:func:`scrub_exception` on the SDK exception, whose message
and body carry the echo), the state store's writes (:func:`scrub_expr`), the exception tree
(every :class:`~batchata_df.errors.BatchataError` message) and ``batch_llm`` itself, which
scrubs the whole ``__cause__``/``__context__`` chain of anything it raises.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import polars as pl

__all__ = [
    "REDACTED",
    "register_secret",
    "scrub_http_logs",
    "scrub",
    "scrub_exception",
    "scrub_expr",
    "scrubbed",
    "scrubbing",
    "secret_values",
]

REDACTED = "[redacted]"
"""What a secret is replaced with."""

_SECRET_NAME = re.compile(r"(_KEY|_TOKEN|_SECRET|_PASSWORD|_APIKEY)$", re.IGNORECASE)
_PROVIDER_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")
_MIN_SECRET_LEN = 8
"""Shorter values (``"1"``, ``"true"``) are flags, not secrets; replacing them would garble
every message."""
# Written for both Python's ``re`` and Polars' Rust regex engine (no look-behind).
KEY_PATTERN = r"\b(?:sk-ant-[A-Za-z0-9_\-]{6,}|sk-[A-Za-z0-9_\-]{6,}|AIza[A-Za-z0-9_\-]{10,})"
"""Strings shaped like an OpenAI/Anthropic (``sk-``) or Google (``AIza``) key."""
_KEY_RE = re.compile(KEY_PATTERN)

P = ParamSpec("P")
R = TypeVar("R")

_registered: set[str] = set()
_registered_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Treat ``value`` (a key given in code rather than in the environment) as a secret."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _registered_lock:
            _registered.add(value)


def secret_values() -> list[str]:
    """The secrets to replace, longest first (so a key is not half-replaced by its prefix).

    Examples
    --------
    >>> import os
    >>> os.environ["EXAMPLE_SERVICE_TOKEN"] = "tok-0123456789"
    >>> "tok-0123456789" in secret_values()
    True
    >>> del os.environ["EXAMPLE_SERVICE_TOKEN"]
    """
    found = set(_registered)
    for name, value in os.environ.items():
        if name in _PROVIDER_KEYS or _SECRET_NAME.search(name):
            found.add(value)
            # what an SDK that strips the key (google-genai) sends, and so what is echoed
            found.add(value.strip())
    return sorted((v for v in found if len(v) >= _MIN_SECRET_LEN), key=len, reverse=True)


def scrub(text: str) -> str:
    """``text`` with every secret replaced by :data:`REDACTED`.

    Examples
    --------
    >>> scrub("Incorrect API key provided: sk-proj-abcdef0123456789.")
    'Incorrect API key provided: [redacted].'
    >>> scrub("API key not valid: AIzaSyA-0123456789abcdefghij")
    'API key not valid: [redacted]'
    >>> scrub("nothing secret here")
    'nothing secret here'
    """
    for value in secret_values():
        if value in text:
            text = text.replace(value, REDACTED)
    return _KEY_RE.sub(REDACTED, text)


def scrub_expr(expr: pl.Expr) -> pl.Expr:
    """A Polars expression scrubbing a string column (vectorised :func:`scrub`).

    Examples
    --------
    >>> df = pl.DataFrame({"e": ["key sk-abcdef0123456789 refused", None]})
    >>> df.select(scrub_expr(pl.col("e"))).to_series().to_list()
    ['key [redacted] refused', None]
    """
    for value in secret_values():
        expr = expr.str.replace_all(value, REDACTED, literal=True)
    return expr.str.replace_all(KEY_PATTERN, REDACTED)


def _scrub_value(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return value
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_value(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(_scrub_value(v, depth + 1) for v in value)
    return value


def scrub_exception(exc: BaseException | None) -> None:
    """Scrub ``exc`` and its whole ``__cause__``/``__context__`` chain in place.

    Rewrites each exception's ``args``, its notes, and its plain-data attributes (SDK
    exceptions keep the error ``message`` and the parsed ``body``), so that neither
    ``str()``, ``repr()`` nor a printed traceback can show a secret. The chain is kept (it
    is what one debugs with); only the secrets go.

    Examples
    --------
    >>> try:
    ...     try:
    ...         raise RuntimeError("bad key sk-abcdef0123456789")
    ...     except RuntimeError as e:
    ...         raise ValueError("wrapped") from e
    ... except ValueError as outer:
    ...     scrub_exception(outer)
    ...     str(outer.__cause__)
    'bad key [redacted]'
    """
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        _scrub_one(current)
        stack.extend((current.__cause__, current.__context__))


def _scrub_one(exc: BaseException) -> None:
    with contextlib.suppress(AttributeError, TypeError):  # exotic exception types
        exc.args = tuple(_scrub_value(a) for a in exc.args)
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        notes[:] = [scrub(n) if isinstance(n, str) else n for n in notes]
    for name, value in list(getattr(exc, "__dict__", {}).items()):
        if isinstance(value, str | dict | list | tuple):
            with contextlib.suppress(AttributeError, TypeError):  # read-only attributes
                setattr(exc, name, _scrub_value(value))


@contextlib.contextmanager
def scrubbing() -> Iterator[None]:
    """Scrub (:func:`scrub_exception`) whatever is raised inside the block, then re-raise."""
    try:
        yield
    except BaseException as e:
        scrub_exception(e)
        raise


def scrubbed(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a public entry point so that nothing it raises can carry a secret."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with scrubbing():
            return fn(*args, **kwargs)

    return wrapper


# The loggers of the provider SDKs and of the HTTP stack under them that write request or
# response details at DEBUG: httpcore's trace of every step (``receive_response_headers
# .complete return_value=(..., [(b'x-...', b'...')])``, ``send_request_headers.failed
# exception=LocalProtocolError("Illegal header value b'Bearer <key>'")``, in
# ``httpcore/_trace.py``), the SDKs' ``HTTP Response: ... Headers({...})`` lines
# (``anthropic/_base_client.py``), google-genai's client. A logger's filter sees only its
# own records, not its children's, so every logger is named. Both spellings of httpx /
# httpcore are listed (the forks ``httpx2``/``httpcore2`` that the SDKs pin today).
_HTTP_LOGGERS = (
    *(
        f"{core}.{part}"
        for core in ("httpcore", "httpcore2")
        for part in ("http11", "http2", "connection", "connection_pool", "proxy", "socks")
    ),
    "httpx",
    "httpx2",
    "openai",
    "openai._base_client",
    "openai._response",
    "anthropic",
    "anthropic._base_client",
    "anthropic._response",
    "google.genai",
    "google_genai._api_client",
    "google_genai._common",
    "google_genai.batches",
    "google_genai.files",
    "google_genai.models",
)


class _ScrubRecords(logging.Filter):
    """Scrub a record's message (and its formatted exception) in place; drop nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose own formatting fails: let logging report it
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            # what a Formatter shows for exc_info (it reuses exc_text when set); left
            # unset when clean, for a handler's own formatException
            shown = logging.Formatter().formatException(record.exc_info)
            if scrub(shown) != shown:
                record.exc_text = scrub(shown)
        return True


_log_filter = _ScrubRecords()
_log_filter_lock = threading.Lock()
_log_filter_installed = False


def scrub_http_logs() -> None:
    """Scrub (:func:`scrub`) every record of the SDKs' and HTTP stack's loggers.

    A response header or an exception that carries a key (a gateway echoing the credential,
    h11 quoting a refused header) is logged by httpcore at DEBUG before any code of ours
    sees it; this filter replaces the secret in the record itself, so that no handler
    (the caller's, pytest's ``caplog``) gets it. Idempotent; costs nothing while those
    loggers are quieter than DEBUG (a filter runs only for a record that is emitted).

    Examples
    --------
    >>> import io
    >>> scrub_http_logs()
    >>> stream = io.StringIO()
    >>> handler = logging.StreamHandler(stream)
    >>> log = logging.getLogger("httpcore.http11")
    >>> log.addHandler(handler); log.setLevel(logging.DEBUG)
    >>> log.debug("return_value=%r", [(b"x-echo", b"sk-abcdef0123456789")])
    >>> print(stream.getvalue(), end="")
    return_value=[(b'x-echo', b'[redacted]')]
    >>> try:
    ...     raise ValueError("Illegal header value b'Bearer sk-abcdef0123456789 '")
    ... except ValueError:
    ...     log.debug("send_request_headers.failed", exc_info=True)
    >>> "sk-abcdef" in stream.getvalue(), "b'Bearer [redacted] '" in stream.getvalue()
    (False, True)
    >>> log.removeHandler(handler); log.setLevel(logging.NOTSET)
    """
    global _log_filter_installed
    with _log_filter_lock:
        if _log_filter_installed:
            return
        for name in _HTTP_LOGGERS:
            logging.getLogger(name).addFilter(_log_filter)
        _log_filter_installed = True
