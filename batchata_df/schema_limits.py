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

Anthropic publishes no numeric limit: its structured outputs refuse recursive schemas
(which :class:`~batchata_df.schema.AnswerSchema` already refuses for every provider) and a
schema whose "compiled grammar is too large" (the request's 400 message, e.g.
github.com/TanStack/ai issue 682) -- a size it does not state, so it cannot be checked
here. Gemini refuses recursive required fields (``providers.gemini._check_acyclic``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batchata_df.errors import SchemaError

__all__ = ["OPENAI_STRICT_LIMITS", "SchemaSize", "check_schema_limits", "measure"]

OPENAI_STRICT_LIMITS: Mapping[str, int] = {
    "properties": 5_000,
    "depth": 10,
    "string_length": 120_000,
    "enum_values": 1_000,
    "large_enum_values": 250,
    "large_enum_length": 15_000,
}
"""OpenAI's strict structured-output limits (see the module docstring for the source)."""


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
    schema: Mapping[str, Any] | None, providers: Iterable[str], *, name: str
) -> None:
    """Raise :class:`SchemaError` if ``schema`` breaks a limit of a provider in use.

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
    >>> check_schema_limits(deep, ["anthropic"], name="Deep")  # no published limit
    """
    if schema is None or "openai" not in set(providers):
        return
    size = measure(schema)
    lim = OPENAI_STRICT_LIMITS
    fix = "split the model into smaller ones run separately, or use a Claude or Gemini model"
    problem = None
    if size.depth > lim["depth"]:
        problem = (
            f"nests objects {size.depth} levels deep; OpenAI structured outputs allow at most "
            f"{lim['depth']}; flatten the nested models (fewer levels of BaseModel fields)"
        )
    elif size.properties > lim["properties"]:
        problem = (
            f"has {size.properties} object properties in total; OpenAI structured outputs "
            f"allow at most {lim['properties']}; {fix}"
        )
    elif size.enum_values > lim["enum_values"]:
        problem = (
            f"has {size.enum_values} enum (Literal/Enum) values in total; OpenAI structured "
            f"outputs allow at most {lim['enum_values']}; use a str field for the long "
            "lists of choices (the prompt can name them), or split the model"
        )
    elif size.large_enum_length > lim["large_enum_length"]:
        problem = (
            f"has a Literal/Enum of more than {lim['large_enum_values']} values totalling "
            f"{size.large_enum_length} characters; OpenAI structured outputs allow at most "
            f"{lim['large_enum_length']} for such an enum; shorten the values or use a str "
            "field"
        )
    elif size.string_length > lim["string_length"]:
        problem = (
            f"has {size.string_length} characters of property names, definition names and "
            f"enum/const values; OpenAI structured outputs allow at most "
            f"{lim['string_length']}; shorten names and values, or {fix}"
        )
    if problem is not None:
        msg = f"schema {name} {problem}"
        raise SchemaError(msg)
