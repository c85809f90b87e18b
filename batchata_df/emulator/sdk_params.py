"""Strict validators built from the providers' SDK request ``TypedDict`` types.

The real APIs reject unknown parameters and wrongly typed values; the SDK param types
describe what they accept. :func:`strict_validator` turns such a type into a pydantic-core
validator that forbids unknown keys at every level and validates ``Iterable[...]`` fields
eagerly (pydantic validates them lazily by default, i.e. never, for a plain dict).
:func:`first_error` reduces a :class:`pydantic_core.ValidationError` to one problem with
a path into the *data* (union-branch names dropped), which each protocol module words in
its provider's style.

Examples
--------
>>> from typing_extensions import TypedDict
>>> class Point(TypedDict):
...     x: int
>>> v = strict_validator(Point)
>>> v.validate_python({"x": 1})
{'x': 1}
>>> try:
...     v.validate_python({"x": 1, "y": 2}, strict=True)
... except Exception as e:
...     first_error(e, {"x": 1, "y": 2})
Problem(kind='unknown', path=('y',), value=2, expected='', detail='Extra inputs are not permitted')
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import TypeAdapter
from pydantic_core import SchemaValidator, ValidationError

__all__ = [
    "BUILD_LOCK",
    "Problem",
    "first_error",
    "path_text",
    "strict_validator",
    "warm_in_background",
]

BUILD_LOCK = threading.RLock()
"""Held while an SDK's request types are imported and their validators built, by the warm-up
thread and by a request thread that needs a validator not built yet. Two threads importing
the same SDK modules at once can see a module half initialised (``ImportError: cannot
import name ... (most likely due to a circular import)``): that failed a request whose
batch arrived while the warm-up was importing (the suite, under load)."""

ProblemKind = Literal["unknown", "missing", "type", "value"]


def _harden(node: object) -> None:
    if isinstance(node, dict):
        kind = node.get("type")
        if kind == "typed-dict":
            node["extra_behavior"] = "forbid"
        elif kind == "generator":  # Iterable[X]: validate now, as a list
            node["type"] = "list"
        for value in node.values():
            _harden(value)
    elif isinstance(node, list):
        for value in node:
            _harden(value)


def warm_in_background(warm: Callable[[], object], name: str) -> None:
    """Build validators on a daemon thread, so the first batch does not pay the imports.

    Importing an SDK and compiling its request types takes 0.3 to 1 s; doing it while the
    emulator starts (without delaying the start) keeps batch creation at its usual speed.
    Failures are ignored: the validators are then built on first use, as usual.
    """

    def run() -> None:
        with BUILD_LOCK, contextlib.suppress(Exception):  # best effort: first use builds them
            warm()

    threading.Thread(target=run, name=f"emulator-warm-{name}", daemon=True).start()


def strict_validator(tp: Any) -> SchemaValidator:
    """A validator for ``tp`` that forbids unknown keys and checks iterables eagerly."""
    schema = copy.deepcopy(TypeAdapter(tp).core_schema)
    _harden(schema)
    return SchemaValidator(schema)


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation problem, located in the request data.

    ``kind`` is ``unknown`` (a key the API does not know), ``missing`` (a required key),
    ``type`` (wrong JSON type) or ``value`` (right type, value not allowed); ``expected``
    lists allowed literals or names the expected type.
    """

    kind: ProblemKind
    path: tuple[str | int, ...]
    value: object
    expected: str
    detail: str


_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "typed_dict_type": "an object",
    "none_required": "null",
}


def _data_path(loc: tuple[str | int, ...], data: object) -> tuple[tuple[str | int, ...], bool]:
    """Keep the ``loc`` items that step into ``data``; also say whether the last one did."""
    path: list[str | int] = []
    node = data
    stepped = True
    for item in loc:
        if (isinstance(node, dict) and isinstance(item, str) and item in node) or (
            isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node)
        ):
            path.append(item)
            node = node[item]  # type: ignore[index]
            stepped = True
        else:
            stepped = False
            last = item
    if not stepped and isinstance(node, dict) and isinstance(last, str) and not _is_tag(last):
        path.append(last)  # a missing or unknown key
    return tuple(path), stepped


def _is_tag(name: str) -> bool:
    """Whether a ``loc`` item names a union branch rather than a key."""
    return (
        name[:1].isupper()
        or "[" in name
        or name
        in {
            "str",
            "int",
            "float",
            "bool",
            "list",
            "dict",
            "none",
            "function-wrap",
            "is-instance",
            "json-or-python",
            "typed-dict",
            "chain",
            "nullable",
        }
    )


def _lookup(data: object, path: tuple[str | int, ...]) -> object:
    node = data
    for item in path:
        if isinstance(node, dict) and isinstance(item, str):
            node = node.get(item)
        elif isinstance(node, list) and isinstance(item, int):
            node = node[item]
        else:
            return None
    return node


def first_error(error: ValidationError | Exception, data: object) -> Problem:
    """The most telling problem of ``error`` (raised validating ``data``).

    With unions pydantic reports every branch. A branch whose literal ``type``/``role``
    does not match is not the one the caller meant, so its other errors are dropped; when
    no branch matches, the problem is that discriminator's value (all allowed values
    listed). Among the rest, the deepest into the data wins, then unknown < missing <
    type < value.
    """
    if not isinstance(error, ValidationError):
        return Problem("value", (), data, "", str(error))
    rank = {"unknown": 0, "missing": 1, "type": 2, "value": 3}
    candidates: list[tuple[tuple[str, ...], Problem]] = []
    mismatched: list[tuple[tuple[str, ...], Problem]] = []
    for err in error.errors(include_url=False):
        loc = tuple(err["loc"])
        tags = tuple(x for x in loc if isinstance(x, str) and _is_tag(x))
        path, _ = _data_path(loc, data)
        etype = err["type"]
        expected = ""
        kind: ProblemKind
        if etype == "extra_forbidden":
            kind = "unknown"
        elif etype == "missing":
            kind = "missing"
        elif etype in ("literal_error", "enum"):
            kind = "value"
            expected = str(err.get("ctx", {}).get("expected", ""))
        elif etype in _TYPE_NAMES:
            kind = "type"
            expected = _TYPE_NAMES[etype]
        else:
            kind = "value"
        value = _lookup(data, path) if kind != "missing" else None
        problem = Problem(kind, path, value, expected, err["msg"])
        if etype == "literal_error" and path and path[-1] in ("type", "role") and tags:
            mismatched.append((tags, problem))
        else:
            candidates.append((tags, problem))
    dead = {tags for tags, _ in mismatched}
    alive = [
        p
        for tags, p in candidates
        if not any(tags[: len(d)] == d for d in dead)
        # a JSON-type mismatch of one union branch while another got deeper into the value
        and not (
            p.kind == "type"
            and any(m.path[: len(p.path)] == p.path != m.path for _, m in mismatched)
        )
    ]
    if not alive and mismatched:
        deepest = max(len(p.path) for _, p in mismatched)
        same = [p for _, p in mismatched if len(p.path) == deepest]
        allowed: list[str] = []
        for p in same:
            for item in p.expected.replace(" or ", ", ").split(", "):
                if item and item not in allowed:
                    allowed.append(item)
        return Problem("value", same[0].path, same[0].value, ", ".join(allowed), same[0].detail)
    pool = alive or [p for _, p in candidates]
    return min(pool, key=lambda p: (-len(p.path), rank[p.kind]))


def path_text(path: tuple[str | int, ...], prefix: str = "") -> str:
    """``('messages', 0, 'role')`` -> ``messages[0].role`` (after ``prefix``).

    Examples
    --------
    >>> path_text(("messages", 0, "content", 1, "type"))
    'messages[0].content[1].type'
    >>> path_text(("max_tokens",), "params")
    'params.max_tokens'
    """
    out = prefix
    for item in path:
        if isinstance(item, int):
            out += f"[{item}]"
        else:
            out += f".{item}" if out else item
    return out
