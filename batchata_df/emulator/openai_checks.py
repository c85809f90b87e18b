"""Per-request body validation for the OpenAI batch endpoints, as the real API does it.

Each body is validated against the SDK param types
(``CompletionCreateParamsNonStreaming`` / ``ResponseCreateParamsNonStreaming``) with unknown
keys forbidden at every level, plus the rules the types cannot express: value ranges,
message roles, a ``name`` on every ``json_schema`` format, the strict structured-output
schema subset, and the word "json" in the messages for ``json_object``. A violation is an
error-file line with HTTP 400 and an ``invalid_request_error`` body, as the real service
reports it when the request runs.

Speed: the lines of one batch nearly always share everything but ``messages`` / ``input``,
so that part is validated once per distinct shape (a dict comparison with the previous
line, then a small cache); messages in the common shape (``role`` + string ``content``) are
checked by hand, others by the SDK type of their role.

Examples
--------
>>> check = BodyChecker("/v1/chat/completions")
>>> check({"model": "m", "messages": [{"role": "user", "content": "hi"}]}) is None
True
>>> check({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temprature": 1})
(400, 'unknown_parameter', 'Unrecognized request argument supplied: temprature', 'temprature')
>>> check({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]})[1:3]
('invalid_value', "Invalid value: 'wizard'. Supported values are: 'developer', 'system', \
'user', 'assistant', 'tool', and 'function'.")
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from pydantic_core import SchemaValidator, ValidationError

from batchata_df.emulator.sdk_params import (
    BUILD_LOCK,
    Problem,
    first_error,
    path_text,
    strict_validator,
)

__all__ = ["BodyChecker", "Error", "strict_schema_error", "warm"]

Error = tuple[int, str, str, str | None]  # status, code, message, param

CHAT: Final = "/v1/chat/completions"
ROLES: Final = ("developer", "system", "user", "assistant", "tool", "function")
_SIMPLE_ROLES: Final = frozenset({"developer", "system", "user", "assistant"})
_NAME_RE: Final = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_CACHE_LIMIT: Final = 256

#: strict structured outputs: the JSON Schema keywords the API accepts
STRICT_KEYWORDS: Final = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "anyOf",
        "$ref",
        "$defs",
        "definitions",
        "description",
        "title",
        "pattern",
        "format",
        "multipleOf",
        "maximum",
        "exclusiveMaximum",
        "minimum",
        "exclusiveMinimum",
        "minItems",
        "maxItems",
    }
)
STRICT_FORMATS: Final = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
)
_JSON_TYPES: Final = frozenset(
    {"string", "number", "integer", "boolean", "object", "array", "null"}
)

# (param, minimum, maximum, integer?) checked when present and not null
MAX_STOP: Final = 4
"""Most ``stop`` sequences a Chat Completions request may carry."""
_CHAT_RANGES: Final = (
    ("temperature", 0, 2, False),
    ("top_p", 0, 1, False),
    ("frequency_penalty", -2, 2, False),
    ("presence_penalty", -2, 2, False),
    ("n", 1, 128, True),
    ("max_tokens", 1, None, True),
    ("max_completion_tokens", 1, None, True),
    ("top_logprobs", 0, 20, True),
)
_RESPONSES_RANGES: Final = (
    ("temperature", 0, 2, False),
    ("top_p", 0, 1, False),
    ("max_output_tokens", 16, None, True),
    ("top_logprobs", 0, 20, True),
)

_validators: dict[str, SchemaValidator] = {}


def _validator(name: str, factory: Callable[[], Any]) -> SchemaValidator:
    found = _validators.get(name)
    if found is None:
        with BUILD_LOCK:  # never beside the warm-up's imports (see BUILD_LOCK)
            found = _validators.get(name)
            if found is None:
                found = _validators[name] = strict_validator(factory())
    return found


def _chat_params() -> Any:
    from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming

    return CompletionCreateParamsNonStreaming


def _responses_params() -> Any:
    from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming

    return ResponseCreateParamsNonStreaming


def _message_types() -> dict[str, Any]:
    from openai.types import chat

    return {
        "developer": chat.ChatCompletionDeveloperMessageParam,
        "system": chat.ChatCompletionSystemMessageParam,
        "user": chat.ChatCompletionUserMessageParam,
        "assistant": chat.ChatCompletionAssistantMessageParam,
        "tool": chat.ChatCompletionToolMessageParam,
        "function": chat.ChatCompletionFunctionMessageParam,
    }


def _message_validator(role: str) -> SchemaValidator:
    return _validator(f"message:{role}", lambda: _message_types()[role])


def _input_item() -> Any:
    from openai.types.responses import ResponseInputItemParam

    return ResponseInputItemParam


def _quoted_list(values: list[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) < 2:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _problem_error(problem: Problem, chat: bool, prefix: str = "") -> Error:
    """Word one validation problem like the real API."""
    param = path_text(problem.path, prefix) or None
    if problem.kind == "unknown":
        if chat and len(problem.path) == 1 and not prefix:
            return (
                400,
                "unknown_parameter",
                f"Unrecognized request argument supplied: {param}",
                param,
            )
        return 400, "unknown_parameter", f"Unknown parameter: '{param}'.", param
    if problem.kind == "missing":
        return 400, "missing_required_parameter", f"Missing required parameter: '{param}'.", param
    if problem.kind == "type":
        expected = problem.expected or "a valid value"
        got = _describe(problem.value)
        msg = f"Invalid type for '{param}': expected {expected}, but got {got} instead."
        return 400, "invalid_type", msg, param
    allowed = re.findall(r"'([^']*)'", problem.expected)
    if allowed:
        msg = (
            f"Invalid value: {json.dumps(problem.value)[:100]!s}. "
            f"Supported values are: {_quoted_list(allowed)}."
        ).replace('"', "'")
        return 400, "invalid_value", msg, param
    return 400, "invalid_value", f"Invalid value for '{param}': {problem.detail}.", param


def _range_error(
    body: Mapping[str, Any], ranges: tuple[tuple[str, Any, Any, bool], ...]
) -> Error | None:
    for name, low, high, integer in ranges:
        value = body.get(name)
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        kind = "integer" if integer else "decimal"
        if low is not None and value < low:
            msg = (
                f"Invalid '{name}': {kind} below minimum value. Expected a value >= {low}, "
                f"but got {value} instead."
            )
            return 400, f"{kind}_below_min_value", msg, name
        if high is not None and value > high:
            msg = (
                f"Invalid '{name}': {kind} above maximum value. Expected a value <= {high}, "
                f"but got {value} instead."
            )
            return 400, f"{kind}_above_max_value", msg, name
    return None


def strict_schema_error(schema: Mapping[str, Any]) -> str | None:
    """Why ``schema`` is not valid for strict structured outputs, or ``None``.

    Examples
    --------
    >>> ok = {"type": "object", "properties": {"a": {"type": "string"}},
    ...       "required": ["a"], "additionalProperties": False}
    >>> strict_schema_error(ok) is None
    True
    >>> strict_schema_error({**ok, "required": []})
    "In context=(), 'required' is required to be supplied and to be an array including every \
key in properties. Missing 'a'."
    >>> strict_schema_error({**ok, "properties": {"a": {"type": "string", "minLength": 2}}})
    "In context=('properties', 'a'), 'minLength' is not permitted."
    """
    root_type = schema.get("type")
    if root_type != "object" or "anyOf" in schema:
        shown = json.dumps(root_type) if root_type is not None else "None"
        return f"schema must be a JSON Schema of 'type: \"object\"', got 'type: {shown}'."
    return _strict_node(schema, ()) or _size_error(schema)


# The size limits of strict structured outputs (Structured Outputs guide, "Supported
# schemas": 5,000 properties, 10 nesting levels, 120,000 characters of names and enum/const
# values, 1,000 enum values, 15,000 characters for one string enum over 250 values). The
# wording follows the API's own 400s as users quote them ("6 levels of nesting exceeds
# limit of 5", tidyverse/ellmer#671; "Expected at most 500 enum values in total within a
# single schema when using structured outputs, but received 520. ...", OpenAI community
# forum, from before the limits were raised).
_OPT_OUT = (
    "Consider reducing the size of your schema, or use 'strict: false' to opt out of "
    "structured outputs."
)


def _size_error(schema: Mapping[str, Any]) -> str | None:
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    totals = {"props": 0, "enums": 0, "chars": sum(len(k) for k in defs), "big_enum": 0}
    levels = 0
    # Walk every node once (definitions where they are written), and every path from the
    # root for the nesting depth (references followed, cycles cut).
    stack: list[tuple[object, int, tuple[str, ...]]] = [(schema, 0, ())]
    counted: set[int] = set()
    while stack:
        node, level, via = stack.pop()
        if isinstance(node, list):
            stack.extend((n, level, via) for n in node)
            continue
        if not isinstance(node, dict):
            continue
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            if name in defs and name not in via:
                stack.append((defs[name], level, (*via, name)))
            continue
        if "properties" in node or node.get("type") == "object":
            level += 1
            levels = max(levels, level)
        first = id(node) not in counted
        counted.add(id(node))
        if first:
            props = node.get("properties")
            if isinstance(props, dict):
                totals["props"] += len(props)
                totals["chars"] += sum(len(k) for k in props)
            enum = node.get("enum")
            if isinstance(enum, list):
                totals["enums"] += len(enum)
                chars = sum(len(v) for v in enum if isinstance(v, str))
                totals["chars"] += chars
                if len(enum) > 250:
                    totals["big_enum"] = max(totals["big_enum"], chars)
            if isinstance(node.get("const"), str):
                totals["chars"] += len(node["const"])
        for key, value in node.items():
            if key in ("$defs", "definitions"):
                if first and isinstance(value, dict):
                    # Counted as written, not walked for depth (only references nest).
                    for sub in value.values():
                        stack.append((sub, -10**6, ("$defs",)))
            elif key == "properties" and isinstance(value, dict):
                stack.extend((v, level, via) for v in value.values())
            elif key not in ("enum", "const"):
                stack.append((value, level, via))
    if levels > 10:
        return f"{levels} levels of nesting exceeds limit of 10."
    if totals["props"] > 5000:
        return (
            "Expected at most 5000 properties in total within a single schema when using "
            f"structured outputs, but received {totals['props']}. {_OPT_OUT}"
        )
    if totals["enums"] > 1000:
        return (
            "Expected at most 1000 enum values in total within a single schema when using "
            f"structured outputs, but received {totals['enums']}. {_OPT_OUT}"
        )
    if totals["big_enum"] > 15000:
        return (
            "Expected at most 15000 characters in total for the values of an enum with more "
            f"than 250 values, but received {totals['big_enum']}. {_OPT_OUT}"
        )
    if totals["chars"] > 120000:
        return (
            "Expected at most 120000 characters in total for property names, definition "
            "names, enum values and const values within a single schema, but received "
            f"{totals['chars']}. {_OPT_OUT}"
        )
    return None


def _strict_node(node: object, ctx: tuple[str, ...]) -> str | None:
    if not isinstance(node, dict):
        return f"In context={ctx!r}, schema must be an object, got {_describe(node)}."
    for key in node:
        if key not in STRICT_KEYWORDS:
            return f"In context={ctx!r}, '{key}' is not permitted."
    if "$ref" in node and len(node) > 1:
        return f"In context={ctx!r}, '$ref' cannot have keywords {sorted(set(node) - {'$ref'})}."
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for k in kinds:
        if k not in _JSON_TYPES:
            return f"In context={ctx!r}, type {k!r} is not a valid JSON Schema type."
    fmt = node.get("format")
    if fmt is not None and fmt not in STRICT_FORMATS:
        return f"In context={ctx!r}, format {fmt!r} is not permitted."
    if "object" in kinds or "properties" in node:
        if node.get("additionalProperties") is not False:
            return (
                f"In context={ctx!r}, 'additionalProperties' is required to be supplied "
                "and to be false."
            )
        props = node.get("properties", {})
        if not isinstance(props, dict):
            return f"In context={ctx!r}, 'properties' must be an object."
        required = node.get("required")
        req = required if isinstance(required, list) else []
        missing = [k for k in props if k not in req]
        if missing or not isinstance(required, list):
            miss = f" Missing '{missing[0]}'." if missing else ""
            return (
                f"In context={ctx!r}, 'required' is required to be supplied and to be an "
                f"array including every key in properties.{miss}"
            )
        extra = [k for k in req if k not in props]
        if extra:
            return f"In context={ctx!r}, Extra required key '{extra[0]}' supplied."
        for name, sub in props.items():
            found = _strict_node(sub, (*ctx, "properties", name))
            if found:
                return found
    if "items" in node:
        found = _strict_node(node["items"], (*ctx, "items"))
        if found:
            return found
    any_of = node.get("anyOf")
    if any_of is not None:
        if not isinstance(any_of, list) or not any_of:
            return f"In context={ctx!r}, 'anyOf' must be a non-empty array."
        for i, sub in enumerate(any_of):
            found = _strict_node(sub, (*ctx, "anyOf", str(i)))
            if found:
                return found
    for defs in ("$defs", "definitions"):
        table = node.get(defs)
        if isinstance(table, dict):
            for name, sub in table.items():
                found = _strict_node(sub, (*ctx, defs, name))
                if found:
                    return found
    return None


def _format_error(fmt: Mapping[str, Any], where: str, chat: bool) -> Error | None:
    """Rules of a ``json_schema`` format the SDK types cannot express."""
    name = fmt.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        param = f"{where}.name"
        msg = (
            f"Invalid '{param}': string does not match pattern. Expected a string that "
            "matches the pattern '^[a-zA-Z0-9_-]+$' (at most 64 characters)."
        )
        return 400, "invalid_value", msg, param
    schema = fmt.get("schema")
    if fmt.get("strict") is True:
        if not isinstance(schema, dict):
            param = f"{where}.schema"
            return (
                400,
                "missing_required_parameter",
                f"Missing required parameter: '{param}'.",
                param,
            )
        why = strict_schema_error(schema)
        if why is not None:
            param = "response_format" if chat else "text.format.schema"
            msg = f"Invalid schema for response_format '{name}': {why}"
            return 400, "invalid_json_schema", msg, param
    return None


def warm() -> None:
    """Build the validators the common bodies need (see :func:`.warm_in_background`)."""
    for endpoint in (CHAT, "/v1/responses"):
        BodyChecker(endpoint)({"model": "m", "messages": [], "input": "x"})
    _message_validator("user")


class BodyChecker:
    """Validate request bodies of one endpoint; ``checker(body)`` is an :data:`Error` or None."""

    def __init__(self, endpoint: str) -> None:
        self.chat = endpoint == CHAT
        self.items_key = "messages" if self.chat else "input"
        self._last_rest: dict[str, Any] | None = None
        self._last_error: Error | None = None
        self._cache: dict[str, Error | None] = {}

    def __call__(self, body: dict[str, Any]) -> Error | None:
        """The first problem of ``body`` as ``(status, code, message, param)``, or None."""
        key = self.items_key
        rest = {k: v for k, v in body.items() if k != key}
        if rest != self._last_rest:
            text = json.dumps(rest, sort_keys=True, default=str)
            if text in self._cache:
                error = self._cache[text]
            else:
                error = self._rest_error(rest)
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[text] = error
            self._last_rest, self._last_error = rest, error
        if self._last_error is not None:
            return self._last_error
        if key not in body:
            return 400, "missing_required_parameter", f"Missing required parameter: '{key}'.", key
        return self._messages_error(body[key]) if self.chat else self._input_error(body[key])

    # ---- everything but the messages

    def _rest_error(self, rest: dict[str, Any]) -> Error | None:
        if self.chat:
            probe = {**rest, "messages": [{"role": "user", "content": "x"}]}
            validator = _validator("chat", _chat_params)
        else:
            probe = {**rest, "input": "x"}
            validator = _validator("responses", _responses_params)
        try:
            validator.validate_python(probe, strict=True)
        except ValidationError as e:
            return _problem_error(first_error(e, probe), self.chat)
        model = rest.get("model")
        if not isinstance(model, str) or not model:
            return (
                400,
                "missing_required_parameter",
                "Missing required parameter: 'model'.",
                "model",
            )
        found = _range_error(rest, _CHAT_RANGES if self.chat else _RESPONSES_RANGES)
        if found is not None:
            return found
        stop = rest.get("stop")
        if self.chat and isinstance(stop, list) and len(stop) > MAX_STOP:
            # "Up to 4 sequences" (openai 3.57 chat/completion_create_params.py ``stop``);
            # the API's refusal, code and param: continuedev/continue#2461.
            msg = (
                f"Invalid 'stop': array too long. Expected an array with maximum length "
                f"{MAX_STOP}, but got an array with length {len(stop)} instead."
            )
            return 400, "array_above_max_length", msg, "stop"
        if self.chat:
            fmt = rest.get("response_format")
            if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
                return _format_error(fmt["json_schema"], "response_format.json_schema", True)
        else:
            text = rest.get("text")
            fmt = text.get("format") if isinstance(text, dict) else None
            if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
                return _format_error(fmt, "text.format", False)
        return None

    # ---- messages / input

    def _messages_error(self, messages: object) -> Error | None:
        if not isinstance(messages, list):
            return _problem_error(Problem("type", ("messages",), messages, "an array", ""), True)
        if not messages:
            msg = "Invalid 'messages': empty array. Expected an array with minimum length 1."
            return 400, "empty_array", msg, "messages"
        for i, message in enumerate(messages):
            if (
                type(message) is dict
                and len(message) == 2
                and type(message.get("content")) is str
                and message.get("role") in _SIMPLE_ROLES
            ):
                continue  # the common shape, checked by hand
            if not isinstance(message, dict):
                problem = Problem("type", ("messages", i), message, "an object", "")
                return _problem_error(problem, True)
            role = message.get("role")
            if role is None:
                return _problem_error(
                    Problem("missing", ("messages", i, "role"), None, "", ""), True
                )
            if role not in ROLES:
                allowed = ", ".join(f"'{r}'" for r in ROLES)
                problem = Problem("value", ("messages", i, "role"), role, allowed, "")
                return _problem_error(problem, True)
            validator = _message_validator(role)
            try:
                validator.validate_python(message, strict=True)
            except ValidationError as e:
                problem = first_error(e, message)
                return _problem_error(
                    Problem(
                        problem.kind,
                        ("messages", i, *problem.path),
                        problem.value,
                        problem.expected,
                        problem.detail,
                    ),
                    True,
                )
        return None

    def _input_error(self, items: object) -> Error | None:
        if isinstance(items, str):
            return None
        if not isinstance(items, list):
            problem = Problem("type", ("input",), items, "a string or an array", "")
            return _problem_error(problem, False)
        validator = _validator("input-item", _input_item)
        for i, item in enumerate(items):
            if (
                type(item) is dict
                and len(item) == 2
                and type(item.get("content")) is str
                and item.get("role") in _SIMPLE_ROLES
            ):
                continue
            try:
                validator.validate_python(item, strict=True)
            except ValidationError as e:
                problem = first_error(e, item)
                return _problem_error(
                    Problem(
                        problem.kind,
                        ("input", i, *problem.path),
                        problem.value,
                        problem.expected,
                        problem.detail,
                    ),
                    False,
                )
        return None
