"""Provider limits on the size and shape of an answer schema, checked before any request.

A schema a provider refuses fails every request of a batch *after* the batch ran (hours,
with batch latency), so the limits that are published are checked up front and raise a
:class:`~batchata_df.errors.SchemaError` that names the limit and the fix.

Limits, per provider
--------------------
OpenAI strict structured outputs ("Supported schemas" in the Structured Outputs guide,
https://platform.openai.com/docs/guides/structured-outputs#supported-schemas; summarised
with the same numbers by jsonschemaprofiles.unitvectorylabs.com/schemas/openai, 2026-02):

* at most 5,000 object properties in total;
* at most 10 levels of object nesting;
* at most 120,000 characters in total over property names, definition names, enum values
  and const values;
* at most 1,000 enum values in total;
* for a single string enum of more than 250 values, at most 15,000 characters in total
  over its values.

Anthropic structured outputs (``output_config.format``; the structured-outputs guide,
https://platform.claude.com/docs/en/build-with-claude/structured-outputs, "Schema
complexity limits", as quoted by hex.pm lang_schema 0.7.1 ``LangSchema.Converter.Anthropic``):

* at most 24 optional parameters (properties not in ``required``) across the schema;
* at most 16 parameters using ``anyOf`` or type arrays across the schema -- every
  ``Optional[...]`` field is one (``anyOf: [T, null]``), so a model with 17 optional-valued
  fields is refused by Claude;
* (at most 20 strict tools per request: we send none.)

Beyond these, Anthropic refuses a schema whose "compiled grammar is too large, which would
cause performance issues" (anthropics/anthropic-sdk-python issue 1185, a 5-level schema;
github.com/TanStack/ai issue 682) and publishes no size for it. Until it does, the OpenAI
limits above are applied to Claude models as well, as a conservative bound (a schema within
them is small; one beyond them is refused before spend rather than after the batch ran).
Recursive schemas are refused for every provider by
:class:`~batchata_df.schema.AnswerSchema`. Gemini refuses recursive required fields
(``providers.gemini._check_acyclic``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batchata_df.errors import SchemaError

__all__ = [
    "ANTHROPIC_LIMITS",
    "OPENAI_STRICT_LIMITS",
    "SchemaSize",
    "anthropic_counts",
    "check_schema_limits",
    "measure",
]

OPENAI_STRICT_LIMITS: Mapping[str, int] = {
    "properties": 5_000,
    "depth": 10,
    "string_length": 120_000,
    "enum_values": 1_000,
    "large_enum_values": 250,
    "large_enum_length": 15_000,
}
"""OpenAI's strict structured-output limits (see the module docstring for the source)."""

ANTHROPIC_LIMITS: Mapping[str, int] = {
    "optional_properties": 24,
    "union_properties": 16,
}
"""Anthropic's published structured-output limits (see the module docstring)."""


def anthropic_counts(schema: Mapping[str, Any]) -> tuple[int, int]:
    """``(optional, union-typed)`` properties of ``schema``, as Anthropic's limits count them.

    Every ``properties`` entry at any level (definitions once each) counts: optional when
    its object does not list it in ``required``, union-typed when its schema has ``anyOf``
    or a list of types.

    Examples
    --------
    >>> s = {"type": "object", "required": ["a"], "properties": {
    ...     "a": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
    ...     "b": {"type": ["string", "null"]}, "c": {"type": "string"}}}
    >>> anthropic_counts(s)
    (2, 2)
    """
    optional = unions = 0

    def walk(node: object) -> None:
        nonlocal optional, unions
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, Mapping):
            return
        props = node.get("properties")
        if isinstance(props, Mapping):
            required = set(node.get("required") or [])
            for name, sub in props.items():
                optional += name not in required
                if isinstance(sub, Mapping) and (
                    "anyOf" in sub or isinstance(sub.get("type"), list)
                ):
                    unions += 1
        for key, value in node.items():
            if key in ("enum", "const"):
                continue
            if key in ("properties", "$defs", "definitions") and isinstance(value, Mapping):
                for sub in value.values():
                    walk(sub)
            else:
                walk(value)

    walk(schema)
    return optional, unions


@dataclass(frozen=True)
class SchemaSize:
    """What OpenAI's limits count in one JSON schema."""

    depth: int
    """Levels of object nesting; the root object is level 1."""
    properties: int
    """Object properties in total (each ``properties`` entry, definitions included)."""
    enum_values: int
    """Enum values in total."""
    string_length: int
    """Characters of property names, definition names, enum values and const values."""
    large_enum_length: int
    """Characters of the values of the longest string enum with more than 250 values."""


def measure(schema: Mapping[str, Any]) -> SchemaSize:
    """Measure a (non-recursive) JSON schema the way OpenAI's limits count it.

    Examples
    --------
    >>> s = {"type": "object", "properties": {"a": {"type": "string", "enum": ["x", "yy"]},
    ...      "b": {"type": "object", "properties": {"c": {"type": "integer"}}}}}
    >>> measure(s)
    SchemaSize(depth=2, properties=3, enum_values=2, string_length=6, large_enum_length=0)
    """
    defs: Mapping[str, Any] = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    properties = enum_values = string_length = large_enum = 0
    for name in defs:
        string_length += len(name)

    def count(node: object) -> None:
        nonlocal properties, enum_values, string_length, large_enum
        if isinstance(node, list):
            for item in node:
                count(item)
            return
        if not isinstance(node, Mapping):
            return
        props = node.get("properties")
        if isinstance(props, Mapping):
            properties += len(props)
            string_length += sum(len(str(k)) for k in props)
        enum = node.get("enum")
        if isinstance(enum, list):
            enum_values += len(enum)
            chars = sum(len(v) for v in enum if isinstance(v, str))
            string_length += chars
            if len(enum) > OPENAI_STRICT_LIMITS["large_enum_values"]:
                large_enum = max(large_enum, chars)
        if isinstance(node.get("const"), str):
            string_length += len(node["const"])
        for key, value in node.items():
            if key in ("enum", "const"):
                continue
            if key in ("properties", "$defs", "definitions") and isinstance(value, Mapping):
                for sub in value.values():
                    count(sub)
            else:
                count(value)

    count(schema)

    def depth(node: object, seen: frozenset[str]) -> int:
        if isinstance(node, list):
            return max((depth(item, seen) for item in node), default=0)
        if not isinstance(node, Mapping):
            return 0
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            if name in seen or name not in defs:  # recursion is refused elsewhere
                return 0
            return depth(defs[name], seen | {name})
        is_object = node.get("type") == "object" or "properties" in node
        inner = 0
        for key, value in node.items():
            if key in ("$defs", "definitions", "enum", "const"):
                continue
            if key == "properties" and isinstance(value, Mapping):
                inner = max([inner, *(depth(v, seen) for v in value.values())])
            else:
                inner = max(inner, depth(value, seen))
        return inner + (1 if is_object else 0)

    return SchemaSize(
        depth=depth(schema, frozenset()),
        properties=properties,
        enum_values=enum_values,
        string_length=string_length,
        large_enum_length=large_enum,
    )


def check_schema_limits(
    schema: Mapping[str, Any] | None,
    providers: Iterable[str],
    *,
    name: str,
    citations: bool = False,
) -> None:
    """Raise :class:`SchemaError` if ``schema`` breaks a limit of a provider in use.

    With ``citations`` no schema is sent to Anthropic as structured output (it goes in the
    prompt), so Anthropic's limits do not apply.

    Examples
    --------
    >>> deep: dict = {"type": "string"}
    >>> for _ in range(11):
    ...     deep = {"type": "object", "properties": {"x": deep}}
    >>> try:
    ...     check_schema_limits(deep, ["openai"], name="Deep")
    ... except SchemaError as e:
    ...     print(str(e)[:40])
    schema Deep nests objects 11 levels deep
    >>> check_schema_limits(deep, ["gemini"], name="Deep")  # no published limit
    """
    if schema is None:
        return
    used = set(providers)
    if "anthropic" in used and not citations:
        _check_anthropic(schema, name)
    if "openai" in used:
        problem = _openai_problem(measure(schema), "OpenAI structured outputs")
    elif "anthropic" in used and not citations:
        problem = _openai_problem(
            measure(schema),
            "Anthropic publishes no size limit for its compiled schema grammar, so "
            "batchata-df applies OpenAI's published limits as a conservative bound: they",
        )
    else:
        problem = None
    if problem is not None:
        msg = f"schema {name} {problem}"
        raise SchemaError(msg)


def _check_anthropic(schema: Mapping[str, Any], name: str) -> None:
    optional, unions = anthropic_counts(schema)
    lim = ANTHROPIC_LIMITS
    if unions > lim["union_properties"]:
        msg = (
            f"schema {name} has {unions} fields whose type is a union (every Optional[...] "
            f"field is one); Anthropic structured outputs allow at most "
            f"{lim['union_properties']}; make some fields required (not Optional) or split "
            "the model into smaller ones run separately"
        )
        raise SchemaError(msg)
    if optional > lim["optional_properties"]:
        msg = (
            f"schema {name} has {optional} optional fields; Anthropic structured outputs allow "
            f"at most {lim['optional_properties']}; make some fields required or split the "
            "model"
        )
        raise SchemaError(msg)


def _openai_problem(size: SchemaSize, who: str) -> str | None:
    lim = OPENAI_STRICT_LIMITS
    fix = "split the model into smaller ones run separately, or use a Gemini model"
    if size.depth > lim["depth"]:
        return (
            f"nests objects {size.depth} levels deep; {who} allow at most "
            f"{lim['depth']}; flatten the nested models (fewer levels of BaseModel fields)"
        )
    if size.properties > lim["properties"]:
        return (
            f"has {size.properties} object properties in total; {who} "
            f"allow at most {lim['properties']}; {fix}"
        )
    if size.enum_values > lim["enum_values"]:
        return (
            f"has {size.enum_values} enum (Literal/Enum) values in total; {who} "
            f"allow at most {lim['enum_values']}; use a str field for the long "
            "lists of choices (the prompt can name them), or split the model"
        )
    if size.large_enum_length > lim["large_enum_length"]:
        return (
            f"has a Literal/Enum of more than {lim['large_enum_values']} values totalling "
            f"{size.large_enum_length} characters; {who} allow at most "
            f"{lim['large_enum_length']} for such an enum; shorten the values or use a str "
            "field"
        )
    if size.string_length > lim["string_length"]:
        return (
            f"has {size.string_length} characters of property names, definition names and "
            f"enum/const values; {who} allow at most "
            f"{lim['string_length']}; shorten names and values, or {fix}"
        )
    return None
