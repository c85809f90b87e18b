"""Validation of one Message Batches request's ``params``, as the real API does it.

``params`` is validated against the SDK's ``MessageCreateParamsNonStreaming`` with unknown
keys forbidden at every level (``temperature``, ``top_p`` and ``top_k``, which this SDK's
type no longer lists, are checked by hand), plus what the type cannot say: ``temperature`` and
``top_p`` in 0..1, ``top_k`` >= 0, ``thinking.budget_tokens`` >= 1,024, at least one
message, citations enabled on all documents or on none, and an ``output_config.format``
schema inside the subset the API compiles (the keywords :func:`anthropic.transform_schema`
keeps; every object closed with ``additionalProperties: false``). Messages are worded like
the API's own: ``"messages.0.role: Input should be 'user' or 'assistant'"``.

The lines of a batch nearly always share everything but ``messages``: that part is
validated once per distinct shape. Without the ``anthropic`` package installed only the
hand-written rules apply.

Examples
--------
>>> check = ParamsChecker()
>>> ok = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
>>> check(ok) is None
True
>>> check({**ok, "temperature": 3.5})
'temperature: Input should be less than or equal to 1'
>>> check({**ok, "bogus": 1})
'bogus: Extra inputs are not permitted'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from pydantic_core import SchemaValidator, ValidationError

from batchata_df.emulator.sdk_params import BUILD_LOCK, Problem, first_error, strict_validator

__all__ = [
    "API_VERSIONS", "SAMPLING_REMOVED_IN", "ParamsChecker", "schema_error", "version_error", "warm",
]  # fmt: skip

_CACHE_LIMIT: Final = 256
MIN_THINKING_BUDGET: Final = 1024
"""The least ``thinking.budget_tokens`` the Messages API takes."""
_SIMPLE_ROLES: Final = frozenset({"user", "assistant"})
_RANGES: Final = (("temperature", 0, 1), ("top_p", 0, 1), ("top_k", 0, None))
#: sampling parameters the API takes that this SDK's param type no longer lists
_SAMPLING: Final = frozenset({"temperature", "top_p", "top_k"})

SAMPLING_REMOVED_IN: Final = "2026-10-21"
"""The ``anthropic-version`` from which ``temperature``, ``top_p`` and ``top_k`` are refused.

API version 2026-10-21 (released 2026-10-21 with the SDK majors that send it by default:
Python 2.0.0, which is why anthropic 2.14's ``MessageCreateParams`` lists none of them and
its ``_constants.ANTHROPIC_API_VERSION`` is ``"2026-10-21"``) removed the three sampling
parameters from the Messages API, token counting and Message Batches: any of them, at any
value, is a 400 ("temperature: Extra inputs are not permitted", even ``temperature: 1.0``),
on every model. Requests sent with ``2023-06-01`` keep the per-model rules
(:func:`batchata_df.emulator.model_rules.anthropic_refusal`). Sources: Anthropic's migration
guide as quoted by developersdigest.tech/blog/claude-api-version-2026-10-21-sdk-migration
("for Messages API, token counting and Message Batch requests sent with 2026-10-21:
temperature, top_p, top_k removed | 400 error, even at t[heir defaults]"),
codersera.com/blog/anthropic-api-2026-10-21-sdk-migration-guide-2026, and the wording
measured on Sonnet 4.6 and Sonnet 5.5 (qiita.com/Synthorai/items/01a0067e88747257a4e6)."""

API_VERSIONS: Final = frozenset({"2023-01-01", "2023-06-01", SAMPLING_REMOVED_IN})
"""The ``anthropic-version`` values Anthropic published (platform.claude.com/docs/en/api/
versioning: 2026-10-21, 2023-06-01, 2023-01-01). Any other is a 400 on every route,
``anthropic-version: "2023-10-01" is not a valid version`` (directus-labs/extensions#285;
with the header sent twice, ``"2023-06-01, 2023-06-01" is not a valid version``,
decolua/9router#1227; "400 'invalid version' for any date that isn't in their published
list", sseshachala/conductai#2179)."""

#: the JSON Schema keywords ``output_config.format.schema`` may use
SCHEMA_KEYWORDS: Final = frozenset(
    {
        "type",
        "enum",
        "const",
        "anyOf",
        "allOf",
        "description",
        "title",
        "properties",
        "additionalProperties",
        "required",
        "format",
        "items",
        "minItems",
        "$defs",
        "$ref",
    }
)
STRING_FORMATS: Final = frozenset(
    {
        "date-time",
        "time",
        "date",
        "duration",
        "email",
        "hostname",
        "uri",
        "ipv4",
        "ipv6",
        "uuid",
    }
)
_TYPES: Final = frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})

_validators: dict[str, SchemaValidator | None] = {}


def _validator(name: str) -> SchemaValidator | None:
    if name in _validators:
        return _validators[name]
    with BUILD_LOCK:  # never beside the warm-up's imports (see BUILD_LOCK)
        return _build_validator(name)


def _build_validator(name: str) -> SchemaValidator | None:
    if name in _validators:
        return _validators[name]
    try:
        from anthropic.types import MessageParam
        from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
    except ImportError:  # the optional SDK is missing: hand-written rules only
        found = None
    else:
        tp = MessageCreateParamsNonStreaming if name == "params" else MessageParam
        found = strict_validator(tp)
    _validators[name] = found
    return found


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in path)


def _worded(problem: Problem, prefix: tuple[str | int, ...] = ()) -> str:
    path = _dotted((*prefix, *problem.path))
    if problem.kind == "unknown":
        detail = "Extra inputs are not permitted"
    elif problem.kind == "missing":
        detail = "Field required"
    else:
        detail = problem.detail
    return f"{path}: {detail}" if path else detail


def schema_error(schema: object, ctx: str = "output_config.format.schema") -> str | None:
    """Why ``schema`` is outside the structured-output subset, or ``None``.

    Examples
    --------
    >>> schema_error({"type": "object", "properties": {}, "additionalProperties": False})
    >>> schema_error({"type": "object", "properties": {"n": {"type": "integer"}}})
    "output_config.format.schema: For 'object' type, 'additionalProperties' must be \
explicitly set to false"
    >>> schema_error({"type": "string", "minLength": 3})
    "output_config.format.schema: Unsupported keyword 'minLength'"
    """
    if not isinstance(schema, dict):
        return f"{ctx}: Input should be a valid dictionary"
    for key in schema:
        if key not in SCHEMA_KEYWORDS:
            return f"{ctx}: Unsupported keyword {key!r}"
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for k in kinds:
        if k not in _TYPES:
            return f"{ctx}: Unsupported type {k!r}"
    if (
        not kinds
        and not any(k in schema for k in ("anyOf", "allOf", "enum", "const", "$ref"))
        and ctx.endswith("schema")
    ):
        return f"{ctx}: Schema must have a 'type', 'anyOf', 'allOf', '$ref', 'const' or 'enum'"
    fmt = schema.get("format")
    if fmt is not None and fmt not in STRING_FORMATS:
        return f"{ctx}: Unsupported string format {fmt!r}"
    min_items = schema.get("minItems")
    if min_items is not None and min_items not in (0, 1):
        return f"{ctx}: minItems values other than 0 or 1 are not supported"
    if "object" in kinds or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return (
                f"{ctx}: For 'object' type, 'additionalProperties' must be explicitly set to false"
            )
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            return f"{ctx}.properties: Input should be a valid dictionary"
        for name, sub in props.items():
            found = schema_error(sub, f"{ctx}.properties.{name}")
            if found:
                return found
        required = schema.get("required", [])
        if not isinstance(required, list) or any(r not in props for r in required):
            return f"{ctx}.required: every required key must be one of 'properties'"
    if "items" in schema:
        found = schema_error(schema["items"], f"{ctx}.items")
        if found:
            return found
    for key in ("anyOf", "allOf"):
        variants = schema.get(key)
        if variants is None:
            continue
        if not isinstance(variants, list) or not variants:
            return f"{ctx}.{key}: Input should be a non-empty list"
        for i, sub in enumerate(variants):
            found = schema_error(sub, f"{ctx}.{key}.{i}")
            if found:
                return found
    defs = schema.get("$defs")
    if isinstance(defs, dict):
        for name, sub in defs.items():
            found = schema_error(sub, f"{ctx}.$defs.{name}")
            if found:
                return found
    return None


_COMPLEXITY = {"optional": 24, "union": 16}


def complexity_error(schema: object) -> str | None:
    """Anthropic's published schema complexity limits, or ``None`` when within them.

    At most 24 optional parameters and 16 parameters using ``anyOf`` or type arrays across
    the schema (structured-outputs guide, "Schema complexity limits"; see
    :mod:`batchata_df.schema_limits`). The wording of the message is the emulator's; the
    API's is not published.

    Examples
    --------
    >>> many = {f"f{i}": {"anyOf": [{"type": "integer"}, {"type": "null"}]} for i in range(17)}
    >>> complexity_error({"type": "object", "properties": many, "required": list(many),
    ...                   "additionalProperties": False})[:60]
    'output_config.format.schema: Schemas contains too many param'
    """
    if not isinstance(schema, dict):
        return None
    optional = unions = 0
    stack: list[object] = [schema]
    while stack:  # every object schema anywhere in the tree, definitions included
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        props = node.get("properties")
        if isinstance(props, dict):
            required = node.get("required") or []
            optional += sum(1 for key in props if key not in required)
            unions += sum(
                1 for sub in props.values()
                if isinstance(sub, dict) and ("anyOf" in sub or isinstance(sub.get("type"), list))
            )
        for key, value in node.items():
            if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
                stack.extend(value.values())  # schemas by name
            elif key not in ("enum", "const"):
                stack.append(value)
    if unions > _COMPLEXITY["union"]:
        return (
            "output_config.format.schema: Schemas contains too many parameters with union "
            f"types ({unions} parameters with type arrays or anyOf). This would result in an "
            "excessively large compiled grammar. Reduce to at most "
            f"{_COMPLEXITY['union']} parameters with union types."
        )
    if optional > _COMPLEXITY["optional"]:
        return (
            f"output_config.format.schema: Schemas contains too many optional parameters "
            f"({optional}). This would result in an excessively large compiled grammar. "
            f"Reduce to at most {_COMPLEXITY['optional']} optional parameters."
        )
    return None


# Empty and blank text, as the Messages API refuses it (400 invalid_request_error). The
# wording is the API's, as users report it verbatim:
# - a message whose content is "" or [] (any but a final assistant turn, which may be empty
#   to prefill): "messages.0: all messages must have non-empty content except for the
#   optional final assistant message" (anthropics/claude-code#3196, #6774;
#   dspinellis/ai-cli-lib#16; corespeed-io/zypher-agent#122 on the final-turn exception);
# - a text block whose text is "": "messages: text content blocks must be non-empty"
#   (anthropics/claude-code#59812, AnswerDotAI/claudette#59, anthropic-sdk-python#461);
# - a message whose only text is whitespace (a " " string, or text blocks none of which has
#   a non-blank character): "messages: text content blocks must contain non-whitespace
#   text" (LibreChat-AI/agents#124 tried each shape against messages.create: [text:' ']
#   and [text:'\n'] refused, [text:' ', text:'real'] accepted; home-assistant/core#175637
#   for a whitespace-only user message);
# - the system prompt: the same two block messages under "system:" (agentjido/req_llm#711
#   for whitespace blocks; NousResearch/hermes-agent#86643), and a blank system string
#   refused as "system: text content blocks must contain non-whitespace text"
#   (BoltAI/BoltAI#165: an empty system prompt setting; the fix was to put text in it).
_EMPTY_MESSAGE: Final = (
    "messages.{i}: all messages must have non-empty content except for the optional final "
    "assistant message"
)
_EMPTY_BLOCK: Final = "{where}: text content blocks must be non-empty"
_BLANK_BLOCK: Final = "{where}: text content blocks must contain non-whitespace text"


def _blank_text_error(blocks: list[Any], where: str) -> str | None:
    """The refusal of ``blocks`` holding an empty text block or only blank text, or None."""
    texts: list[str] = [
        b["text"] for b in blocks
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    ]  # fmt: skip
    if any(t == "" for t in texts):
        return _EMPTY_BLOCK.format(where=where)
    if texts and not any(t.strip() for t in texts):
        return _BLANK_BLOCK.format(where=where)
    return None


def _empty_content_error(i: int, message: Mapping[str, Any], *, final: bool) -> str | None:
    """Why message ``i``'s content is refused as empty or blank, or None.

    Examples
    --------
    >>> _empty_content_error(0, {"role": "user", "content": ""}, final=True)
    'messages.0: all messages must have non-empty content except for the optional final \
assistant message'
    >>> _empty_content_error(0, {"role": "user", "content": "   "}, final=True)
    'messages: text content blocks must contain non-whitespace text'
    >>> _empty_content_error(1, {"role": "assistant", "content": ""}, final=True) is None
    True
    """
    content = message.get("content")
    if final and message.get("role") == "assistant":
        return None  # an empty final assistant turn is allowed (a prefill)
    if content == "" or content == []:
        return _EMPTY_MESSAGE.format(i=i)
    if isinstance(content, str):
        return None if content.strip() else _BLANK_BLOCK.format(where="messages")
    if isinstance(content, list):
        return _blank_text_error(content, "messages")
    return None


def _system_error(system: object) -> str | None:
    """Why ``system`` is refused as empty or blank, or None (no system prompt is fine).

    Examples
    --------
    >>> _system_error(""), _system_error("Be brief.") is None
    ('system: text content blocks must contain non-whitespace text', True)
    >>> _system_error([{"type": "text", "text": ""}])
    'system: text content blocks must be non-empty'
    """
    if isinstance(system, str):
        return None if system.strip() else _BLANK_BLOCK.format(where="system")
    if isinstance(system, list):
        return _blank_text_error(system, "system")
    return None


def warm() -> None:
    """Build the validators (see :func:`.warm_in_background`)."""
    _validator("params")
    _validator("message")


def version_error(params: Mapping[str, Any], version: str) -> str | None:
    """What API ``version`` (the request's ``anthropic-version``) refuses in ``params``.

    Examples
    --------
    >>> version_error({"model": "m", "temperature": 1.0}, "2026-10-21")
    'temperature: Extra inputs are not permitted'
    >>> version_error({"model": "m", "temperature": 1.0}, "2023-06-01") is None
    True
    """
    if version < SAMPLING_REMOVED_IN:
        return None
    for name in ("temperature", "top_p", "top_k"):
        if name in params:
            return f"{name}: Extra inputs are not permitted"
    return None


class ParamsChecker:
    """``checker(params)``: the ``invalid_request_error`` message for ``params``, or None."""

    def __init__(self) -> None:
        self._last_rest: dict[str, Any] | None = None
        self._last_error: str | None = None
        self._cache: dict[str, str | None] = {}

    def __call__(self, params: Mapping[str, Any]) -> str | None:
        """The first problem of ``params``, worded like the API, or ``None``."""
        rest = {k: v for k, v in params.items() if k != "messages"}
        if rest != self._last_rest:
            key = json.dumps(rest, sort_keys=True, default=str)
            if key in self._cache:
                error = self._cache[key]
            else:
                error = self._rest_error(rest)
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[key] = error
            self._last_rest, self._last_error = rest, error
        if self._last_error is not None:
            return self._last_error
        return self._messages_error(params.get("messages"))

    @staticmethod
    def _rest_error(rest: dict[str, Any]) -> str | None:
        if "model" not in rest:
            return "model: Field required"
        if "max_tokens" not in rest:
            return "max_tokens: Field required"
        if rest.get("stream"):
            return "stream: streaming is not supported in message batches"
        validator = _validator("params")
        if validator is not None:
            probe = {k: v for k, v in rest.items() if k not in _SAMPLING}
            probe["messages"] = [{"role": "user", "content": "x"}]
            try:
                validator.validate_python(probe, strict=True)
            except ValidationError as e:
                return _worded(first_error(e, probe))
        found = _system_error(rest.get("system"))
        if found is not None:
            return found
        thinking = rest.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") == "enabled":
            budget = thinking.get("budget_tokens")
            if isinstance(budget, int) and budget < MIN_THINKING_BUDGET:
                # "Must be ≥1024" (anthropic 2.14 types/thinking_config_enabled_param.py);
                # the API's words: danny-avila/LibreChat#8346, themaximalist/llm.js#30.
                return (
                    "thinking.enabled.budget_tokens: Input should be greater than or equal "
                    f"to {MIN_THINKING_BUDGET}"
                )
        model, max_tokens = rest["model"], rest["max_tokens"]
        if not isinstance(model, str) or not model:
            return "model: Input should be a valid string"
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            return "max_tokens: Input should be a valid integer"
        if max_tokens < 1:
            return "max_tokens: Input should be greater than or equal to 1"
        for name, low, high in _RANGES:
            value = rest.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"{name}: Input should be a valid number"
            if name == "top_k" and not isinstance(value, int):
                return f"{name}: Input should be a valid integer"
            if value < low:
                return f"{name}: Input should be greater than or equal to {low}"
            if high is not None and value > high:
                return f"{name}: Input should be less than or equal to {high}"
        config = rest.get("output_config")
        fmt = config.get("format") if isinstance(config, dict) else None
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            return schema_error(fmt.get("schema")) or complexity_error(fmt.get("schema"))
        return None

    @staticmethod
    def _messages_error(messages: object) -> str | None:
        if messages is None:
            return "messages: Field required"
        if not isinstance(messages, list):
            return "messages: Input should be a valid list"
        if not messages:
            return "messages: at least one message is required"
        documents: list[bool] = []
        last = len(messages) - 1
        for i, message in enumerate(messages):
            if (
                type(message) is dict
                and len(message) == 2
                and type(message.get("content")) is str
                and message.get("role") in _SIMPLE_ROLES
            ):
                if not message["content"].strip():
                    found = _empty_content_error(i, message, final=i == last)
                    if found is not None:
                        return found
                continue
            if not isinstance(message, dict):
                return f"messages.{i}: Input should be a valid dictionary"
            if message.get("role") not in _SIMPLE_ROLES:
                return f"messages.{i}.role: Input should be 'user' or 'assistant'"
            validator = _validator("message")
            if validator is not None:
                try:
                    validator.validate_python(message, strict=True)
                except ValidationError as e:
                    return _worded(first_error(e, message), ("messages", i))
            content = message.get("content")
            found = _empty_content_error(i, message, final=i == last)
            if found is not None:
                return found
            if isinstance(content, list):
                for block in content:
                    if isinstance(block, dict) and block.get("type") == "document":
                        cite = block.get("citations")
                        documents.append(isinstance(cite, dict) and cite.get("enabled") is True)
        if documents and any(documents) and not all(documents):
            return (
                "Citations must be enabled on all documents or on none: "
                f"{sum(documents)} of {len(documents)} documents enable them."
            )
        return None
