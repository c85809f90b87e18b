"""Field-name validation of Gemini ``GenerateContentRequest`` objects, as the real API does it.

Proto JSON parsing refuses names it does not know, at any depth: ``Invalid JSON payload
received. Unknown name "X" at 'generation_config': Cannot find field.`` Both spellings
(``generationConfig`` / ``generation_config``) are known names. Nested messages are checked
with the google-genai types (``Content``, ``GenerationConfig``, ``SafetySetting``, ``Tool``,
``ToolConfig``), which forbid unknown keys and accept both spellings. Paths in messages are
snake_case, like the real ones.

Requests of one batch nearly always share everything but ``contents``: that part is checked
once per distinct shape, and text-only ``contents`` are checked by hand.

Examples
--------
>>> check = RequestChecker()
>>> check({"contents": [{"parts": [{"text": "hi"}]}]}) is None
True
>>> print(check({"contents": [], "generationConfig": {"notAField": 1}}))
Invalid JSON payload received. Unknown name "notAField" at 'generation_config': Cannot find field.
>>> print(check({"contents": [], "extra": 1}, "requests[0].request"))
Invalid JSON payload received. Unknown name "extra" at 'requests[0].request': Cannot find field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from batchata_df.emulator.sdk_params import BUILD_LOCK, first_error

__all__ = ["RequestChecker", "snake", "unknown_name", "warm"]

_CAMEL: Final = re.compile(r"(?<!^)(?=[A-Z])")
_CACHE_LIMIT: Final = 256

#: GenerateContentRequest fields (camelCase; snake_case is accepted too) -> the genai type
_REQUEST_FIELDS: Final = {
    "model": "str",
    "contents": "contents",
    "systemInstruction": "content",
    "generationConfig": "generation_config",
    "safetySettings": "safety_settings",
    "tools": "tools",
    "toolConfig": "tool_config",
    "cachedContent": "str",
    "labels": "labels",
    "serviceTier": "str",
}


def snake(name: str) -> str:
    """``generationConfig`` -> ``generation_config``.

    Examples
    --------
    >>> snake("responseJsonSchema"), snake("already_snake")
    ('response_json_schema', 'already_snake')
    """
    return _CAMEL.sub("_", name).lower()


_KNOWN: Final = {snake(k): v for k, v in _REQUEST_FIELDS.items()}


def unknown_name(name: str, where: str) -> str:
    """The real API's message for an unknown field ``name`` in the message at ``where``."""
    at = f" at '{where}'" if where else ""
    return f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.'


def _join(where: str, path: tuple[str | int, ...]) -> str:
    out = where
    for item in path:
        if isinstance(item, int):
            out += f"[{item}]"
        else:
            out += f".{snake(item)}" if out else snake(item)
    return out


_adapters: dict[str, TypeAdapter[Any] | None] = {}


def _adapter(kind: str) -> TypeAdapter[Any] | None:
    if kind in _adapters:
        return _adapters[kind]
    with BUILD_LOCK:  # never beside the warm-up's imports (see BUILD_LOCK)
        return _build_adapter(kind)


def _build_adapter(kind: str) -> TypeAdapter[Any] | None:
    if kind in _adapters:
        return _adapters[kind]
    try:
        from google.genai import types
    except ImportError:  # the optional SDK is missing: top-level names only
        _adapters[kind] = None
        return None
    factories: dict[str, Callable[[], Any]] = {
        "content": lambda: types.Content,
        "contents": lambda: list[types.Content],
        "generation_config": lambda: types.GenerationConfig,
        "safety_settings": lambda: list[types.SafetySetting],
        "tools": lambda: list[types.Tool],
        "tool_config": lambda: types.ToolConfig,
        "labels": lambda: dict[str, str],
        "str": lambda: str,
    }
    found: TypeAdapter[Any] = TypeAdapter(factories[kind]())
    _adapters[kind] = found
    return found


def _text_only(contents: object) -> bool:
    """Whether ``contents`` is the common shape: roles and text parts only."""
    if type(contents) is not list:
        return False
    for content in contents:
        if type(content) is not dict or not content.keys() <= {"parts", "role"}:
            return False
        parts = content.get("parts")
        if type(parts) is not list:
            return False
        for part in parts:
            if type(part) is not dict or len(part) != 1 or type(part.get("text")) is not str:
                return False
    return True


VALID_ROLES = ("user", "model")
"""The roles Gemini takes in ``contents`` (``Content.role``: "Must be either 'user' or
'model'", ai.google.dev/api/caching#Content); another one is a 400 INVALID_ARGUMENT with
this message (as users of the API report it verbatim)."""


def _role_error(contents: object) -> str | None:
    """The 400 message for a ``contents`` turn whose role is not ``user``/``model``.

    Examples
    --------
    >>> _role_error([{"role": "assistant", "parts": [{"text": "hi"}]}])
    'Please use a valid role: user, model.'
    >>> _role_error([{"parts": [{"text": "hi"}]}, {"role": "model", "parts": []}]) is None
    True
    """
    if type(contents) is not list:
        return None
    for content in contents:
        if type(content) is dict and "role" in content and content["role"] not in VALID_ROLES:
            return "Please use a valid role: user, model."
    return None


_NO_DATA: Final = (
    "* GenerateContentRequest.{where}.parts[{j}].data: required oneof field 'data' must have "
    "one initialized field"
)
"""A part without data: ``{"text": ""}`` is one, as proto3 JSON reads an empty string as
the field left unset. The 400 INVALID_ARGUMENT's wording as users report it verbatim
(router-for-me/CLIProxyAPI#1292 and #3485, QuantumNous/new-api#632 for ``contents``;
songquanpeng/one-api#2243 for ``system_instruction``). Whitespace is data: ``" "`` is
taken."""


def _empty_part_error(content: object, where: str) -> str | None:
    """The 400 message for an empty text part of ``content`` (one turn), or None.

    Examples
    --------
    >>> print(_empty_part_error({"parts": [{"text": "hi"}, {"text": ""}]}, "contents[0]"))
    * GenerateContentRequest.contents[0].parts[1].data: required oneof field 'data' must \
have one initialized field
    >>> _empty_part_error({"parts": [{"text": " "}]}, "system_instruction") is None
    True
    """
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return None
    for j, part in enumerate(parts):
        if isinstance(part, dict) and part.get("text") == "" and len(part) == 1:
            return _NO_DATA.format(where=where, j=j)
    return None


def _empty_data_error(request: Mapping[str, Any]) -> str | None:
    """The first empty text part of the system instruction or of ``contents``, or None."""
    for key in ("systemInstruction", "system_instruction"):
        found = _empty_part_error(request.get(key), "system_instruction")
        if found is not None:
            return found
    contents = request.get("contents")
    if isinstance(contents, list):
        for i, content in enumerate(contents):
            found = _empty_part_error(content, f"contents[{i}]")
            if found is not None:
                return found
    return None


def warm() -> None:
    """Build the validators (see :func:`.warm_in_background`)."""
    for kind in ("content", "contents", "generation_config"):
        _adapter(kind)


class RequestChecker:
    """``checker(request, where)``: the 400 message for a request's field names, or None."""

    def __init__(self) -> None:
        self._last_rest: dict[str, Any] | None = None
        self._last_error: str | None = None
        self._cache: dict[str, str | None] = {}

    def __call__(self, request: Mapping[str, Any], where: str = "") -> str | None:
        """The first problem of ``request`` (located under ``where``), or None."""
        rest = {k: v for k, v in request.items() if k != "contents"}
        if rest != self._last_rest:
            key = json.dumps(rest, sort_keys=True, default=str)
            if key in self._cache:
                error = self._cache[key]
            else:
                error = self._fields_error(rest)
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[key] = error
            self._last_rest, self._last_error = rest, error
        if self._last_error is not None:
            return self._relocated(self._last_error, where)
        contents = request.get("contents")
        role_error = _role_error(contents)
        if role_error is not None:
            return role_error
        data_error = _empty_data_error(request)
        if data_error is not None:
            return data_error
        if contents is None or _text_only(contents):
            return None
        found = self._field_error("contents", "contents", contents)
        return None if found is None else self._relocated(found, where)

    @staticmethod
    def _relocated(message: str, where: str) -> str:
        """Put ``where`` in front of the (request-relative) location in ``message``."""
        if not where:
            return message
        if " at '" in message:
            return message.replace(" at '", f" at '{where}.", 1)
        return message.replace(": Cannot find field.", f" at '{where}': Cannot find field.", 1)

    def _fields_error(self, rest: Mapping[str, Any]) -> str | None:
        for name, value in rest.items():
            kind = _KNOWN.get(snake(name))
            if kind is None:
                return unknown_name(name, "")
            found = self._field_error(name, kind, value)
            if found is not None:
                return found
        return None

    @staticmethod
    def _field_error(name: str, kind: str, value: object) -> str | None:
        adapter = _adapter(kind)
        if adapter is None or value is None:
            return None
        try:
            adapter.validate_python(value)
        except ValidationError as e:
            problem = first_error(e, value)
            if problem.kind == "unknown":
                leaf = problem.path[-1]
                return unknown_name(str(leaf), _join(snake(name), problem.path[:-1]))
            where = _join(snake(name), problem.path)
            return f"Invalid value at '{where}': {problem.detail}"
        return None
