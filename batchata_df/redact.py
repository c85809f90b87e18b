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
import os
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import polars as pl

__all__ = [
    "REDACTED",
    "register_secret",
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
