"""Answer schemas: Pydantic models to strict JSON Schema, Polars dtypes, and decoding.

One :class:`AnswerSchema` is built per run from the user's Pydantic model (or ``None`` for a
plain text answer). It knows

* the strict JSON Schema the providers receive (every property required, optionals as
  ``anyOf [..., null]``, ``additionalProperties: false``, no ``default``);
* the Polars dtype of every output column (nested model -> Struct, list -> List,
  Literal/Enum -> Enum, date/datetime/time/Decimal -> the matching temporal/decimal dtype);
* how to validate one raw answer and re-serialise it canonically, so that a whole column of
  validated answers can be decoded at once with ``str.json_decode``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import hashlib
import json
import math
import re
import types
import typing
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import polars as pl
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from batchata_df.errors import SchemaError

# The name of decode's struct column, defined where the answers are stored (so reading a
# folder, ``batchata-df status``, imports no pydantic) and importable from here as before.
from batchata_df.state import DECODED as DECODED

__all__ = ["AnswerSchema", "TEXT_COLUMN"]

TEXT_COLUMN = "response"
"""Name of the single output column when ``schema=None``."""

Converter = Callable[[pl.Expr], pl.Expr]


Check = Callable[[Any], "tuple[str, str] | None"]
"""Asked about a validated value: ``None`` when its column holds it, else
``(location, problem)`` with the location as Pydantic writes it (``items.0.price``)."""


@dataclass(frozen=True)
class _FieldType:
    """The final dtype of a value, its dtype as decoded from JSON, and the conversion.

    ``check`` (when set) is asked about each validated value and names what the column
    cannot hold (``None``: it fits), so the row fails instead of the value being cut.
    """

    final: pl.DataType
    wire: pl.DataType
    convert: Converter | None  # None: wire dtype is already final
    check: Check | None = None


DECIMAL_PRECISION = 38
"""Digits a Polars decimal holds at most (and the precision of a Decimal column)."""

DECIMAL_SCALE = 9
"""Places after the point of a Decimal field that declares no ``decimal_places``."""


def _decimal_type(where: str, metadata: Sequence[Any]) -> _FieldType:
    """``Decimal(precision, scale)`` sized by the field's ``max_digits``/``decimal_places``.

    Without ``decimal_places`` the column keeps 9 places; an answer with more (or with more
    digits before the point than the column holds) fails its row naming the declaration
    that keeps it, rather than being rounded or nulled when decoded.
    """
    limits: dict[str, int] = {}
    for item in metadata:
        for source in (item, *getattr(item, "metadata", ())):
            for key in ("max_digits", "decimal_places"):
                value = getattr(source, key, None)
                if isinstance(value, int):
                    limits[key] = value
    scale = limits.get("decimal_places", DECIMAL_SCALE)
    max_digits = limits.get("max_digits")
    precision = max(DECIMAL_PRECISION if max_digits is None else max_digits, scale)
    if precision > DECIMAL_PRECISION:
        msg = (
            f"{where}: a Decimal column holds at most {DECIMAL_PRECISION} digits, the field "
            f"declares {precision} (max_digits={max_digits}, decimal_places={scale}); "
            f"declare at most {DECIMAL_PRECISION}, or make the field a str"
        )
        raise SchemaError(msg)
    target = pl.Decimal(precision, scale)
    whole = precision - scale

    def check(value: Any) -> tuple[str, str] | None:
        if not isinstance(value, decimal.Decimal) or not value.is_finite():
            return None
        _, digits, exponent = value.normalize().as_tuple()
        assert isinstance(exponent, int)
        places = max(-exponent, 0)
        before = max(len(digits) + exponent, 0)
        shown = format(value, "f")  # as answered, never 1E-10
        if places > scale:
            return "", (
                f"{shown} has {places} decimal places, the {target} column keeps {scale}: "
                f"declare the field with Field(decimal_places={places}) (then reparse(): "
                "nothing is sent again)"
            )
        if before > whole:
            return "", (
                f"{shown} has {before} digits before the point, the {target} column holds "
                f"{whole}: declare a larger max_digits or fewer decimal_places"
            )
        return None

    return _FieldType(
        target, pl.String(), lambda e: e.str.to_decimal(scale=scale).cast(target), check
    )


def _datetime_convert(e: pl.Expr) -> pl.Expr:
    # Pydantic dumps aware datetimes with an offset (or "Z") and naive ones without; both
    # become UTC instants (naive values are taken to be UTC already).
    aware = e.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", strict=False, time_zone="UTC")
    naive = e.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False).dt.replace_time_zone("UTC")
    return pl.coalesce(aware, naive)


def _time_convert(e: pl.Expr) -> pl.Expr:
    # A time with an offset ("12:00:00+05:30", "...Z") is taken to UTC like a datetime
    # (06:30:00): a Polars Time has no zone. A time without one is kept as it is.
    return _datetime_convert(pl.concat_str([pl.lit("2000-01-01T"), e])).dt.time()


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _int64_check(value: Any) -> tuple[str, str] | None:
    """An int answer outside Int64 fails its row (decoding would make it null).

    >>> _int64_check(2**63)[1].split(":")[0]
    '9223372036854775808 does not fit an Int64 column (-9223372036854775808 to 9223372036854775807)'
    >>> _int64_check(-(2**63)) is None
    True
    """
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        return "", (
            f"{value} does not fit an Int64 column ({INT64_MIN} to {INT64_MAX}): make the "
            "field a Decimal or a str"
        )
    return None


def _finite_check(value: Any) -> tuple[str, str] | None:
    """A float answer that is not finite fails its row (its JSON would be null).

    Pydantic reads ``1e400`` as ``inf`` (and ``NaN``, ``Infinity`` as such) and writes
    them as JSON ``null``, so the column would get a null the model never answered.

    >>> _finite_check(float("inf"))[1].split(";")[0]
    'the answer is not a finite number (inf: a value beyond a float, or NaN)'
    >>> _finite_check(1e308) is None
    True
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "", (
            f"the answer is not a finite number ({value}: a value beyond a float, or NaN); "
            "ask again with retry_failed=True"
        )
    return None


def _scalar_type(tp: Any, where: str, metadata: Sequence[Any] = ()) -> _FieldType | None:
    if tp is bool:
        return _FieldType(pl.Boolean(), pl.Boolean(), None)
    if tp is int:
        return _FieldType(pl.Int64(), pl.Int64(), None, _int64_check)
    if tp is float:
        return _FieldType(pl.Float64(), pl.Float64(), None, _finite_check)
    if tp is str or tp is uuid.UUID:
        return _FieldType(pl.String(), pl.String(), None)
    if tp is dt.datetime:
        return _FieldType(pl.Datetime("us", "UTC"), pl.String(), _datetime_convert)
    if tp is dt.date:
        return _FieldType(pl.Date(), pl.String(), lambda e: e.str.to_date("%Y-%m-%d"))
    if tp is dt.time:
        return _FieldType(pl.Time(), pl.String(), _time_convert)
    if tp is decimal.Decimal:
        return _decimal_type(where, metadata)
    return None


def _literal_type(values: Sequence[Any], where: str) -> _FieldType:
    if all(isinstance(v, str) for v in values):
        target = pl.Enum(list(dict.fromkeys(values)))
        return _FieldType(target, pl.String(), lambda e: e.cast(target))
    if all(isinstance(v, bool) for v in values):
        return _FieldType(pl.Boolean(), pl.Boolean(), None)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return _FieldType(pl.Int64(), pl.Int64(), None)
    msg = (
        f"{where}: Literal values {list(values)!r} mix types; use only strings, only ints "
        "or only bools"
    )
    raise SchemaError(msg)


def _field_type(
    tp: Any, where: str, seen: tuple[type[BaseModel], ...] = (), metadata: Sequence[Any] = ()
) -> _FieldType:
    """Map a Python annotation to its Polars representation.

    ``seen`` holds the models being mapped around this field, to catch a recursive model;
    ``metadata`` the field's constraints (``Field(decimal_places=...)`` sizes a Decimal).
    """
    if isinstance(tp, str | typing.ForwardRef):
        msg = (
            f"{where}: the annotation {tp!r} is an unresolved forward reference; define the "
            "types it names before the model, or call Model.model_rebuild() first"
        )
        raise SchemaError(msg)
    origin = get_origin(tp)
    if origin is typing.Annotated:
        inner, *extra = get_args(tp)
        return _field_type(inner, where, seen, (*metadata, *extra))
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return _field_type(members[0], where, seen, metadata)
        msg = (
            f"{where}: unions of several types ({tp!r}) have no single column type; "
            "use one type, Optional[T], or a Literal"
        )
        raise SchemaError(msg)
    if origin is Literal:
        return _literal_type(get_args(tp), where)
    if origin in (list, tuple, set, frozenset, Sequence, typing.Sequence):
        args = get_args(tp)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            msg = f"{where}: fixed-length tuples are not supported; use list[T]"
            raise SchemaError(msg)
        if not args:
            msg = f"{where}: give the item type of the list, e.g. list[str]"
            raise SchemaError(msg)
        inner = _field_type(args[0], where + "[]", seen)
        list_check = None if inner.check is None else _list_check(inner.check)
        if inner.convert is None:
            return _FieldType(pl.List(inner.final), pl.List(inner.wire), None, list_check)
        conv = inner.convert
        return _FieldType(
            pl.List(inner.final),
            pl.List(inner.wire),
            lambda e: e.list.eval(conv(pl.element())),
            list_check,
        )
    if origin in (dict, typing.Mapping) or tp is dict:
        msg = (
            f"{where}: dict fields cannot be strict structured output (providers require "
            "fixed keys); use a nested BaseModel"
        )
        raise SchemaError(msg)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = [m.value for m in tp]
        return _literal_type(values, where)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if tp in seen:
            cycle = " -> ".join(m.__name__ for m in (*seen[seen.index(tp) :], tp))
            msg = (
                f"{where}: the answer model is recursive ({cycle}). A recursive model has no "
                "fixed column type, and Anthropic's and Gemini's structured output refuse "
                "recursive schemas; give the nesting a fixed depth (a separate class per "
                "level, e.g. Node -> Child -> Leaf) or make the field a str holding JSON"
            )
            raise SchemaError(msg)
        return _model_type(tp, where, seen)
    scalar = _scalar_type(tp, where, metadata)
    if scalar is not None:
        return scalar
    msg = (
        f"{where}: type {tp!r} is not supported in an answer schema; use str, int, float, "
        "bool, Literal, Enum, date, datetime, time, Decimal, list[...] or a nested BaseModel"
    )
    raise SchemaError(msg)


def _model_type(
    model: type[BaseModel], where: str, seen: tuple[type[BaseModel], ...] = ()
) -> _FieldType:
    inner = (*seen, model)
    fields = {
        name: _field_type(f.annotation, f"{where}.{name}", inner, f.metadata)
        for name, f in model.model_fields.items()
    }
    final = pl.Struct({n: f.final for n, f in fields.items()})
    wire = pl.Struct({n: f.wire for n, f in fields.items()})
    conversions = {n: f.convert for n, f in fields.items() if f.convert is not None}
    checks = {n: f.check for n, f in fields.items() if f.check is not None}
    model_check = _model_check(checks) if checks else None
    if not conversions:
        return _FieldType(final, wire, None, model_check)

    def convert(e: pl.Expr) -> pl.Expr:
        return e.struct.with_fields(
            *[conv(pl.field(name)).alias(name) for name, conv in conversions.items()]
        )

    return _FieldType(final, wire, convert, model_check)


def _within(step: str, found: tuple[str, str]) -> tuple[str, str]:
    where, problem = found
    return (f"{step}.{where}" if where else step), problem


def _list_check(check: Check) -> Check:
    def each(values: Any) -> tuple[str, str] | None:
        for i, value in enumerate(values or ()):
            found = check(value)
            if found is not None:
                return _within(str(i), found)
        return None

    return each


def _model_check(checks: dict[str, Check]) -> Check:
    def each(obj: Any) -> tuple[str, str] | None:
        if obj is None:
            return None
        for name, check in checks.items():
            found = check(getattr(obj, name))
            if found is not None:
                return _within(name, found)
        return None

    return each


def _strict(node: Any, defs: dict[str, Any]) -> Any:
    """Rewrite a Pydantic JSON schema into the strict dialect of structured outputs."""
    if isinstance(node, list):
        return [_strict(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node and len(node) > 1:
        # Strict mode forbids keywords beside $ref: inline the referenced definition.
        name = node["$ref"].rsplit("/", 1)[-1]
        merged = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
        return _strict(merged, defs)
    out: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in node.items():
        if key in ("default", "title"):
            continue
        if key in ("properties", "$defs"):
            out[key] = {k: _strict(v, defs) for k, v in value.items()}
        elif key == "format" and value not in STRICT_FORMATS:
            notes.append(f"format: {value}")
        elif key not in STRICT_KEYWORDS:
            # Strict mode rejects the keyword: tell the model in words instead. The answer
            # is still validated against the Pydantic model, so the constraint holds.
            notes.append(f"{key}: {json.dumps(value)}")
        else:
            out[key] = _strict(value, defs)
    if notes:
        described = out.get("description", "")
        out["description"] = (described + " " if described else "") + f"({'; '.join(notes)})"
    if out.get("type") == "object" or "properties" in out:
        out["additionalProperties"] = False
        out["required"] = list(out.get("properties", {}))
    return out


STRICT_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "enum", "const",
        "anyOf", "$ref", "$defs", "description", "pattern", "format", "multipleOf",
        "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum", "minItems", "maxItems",
    }
)  # fmt: skip
"""JSON Schema keywords that strict structured outputs accept (OpenAI's published list);
others (``minLength``, ``uniqueItems``, ...) move into the description."""

STRICT_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
)


DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]{1,%d})?$"
"""A decimal string with at most as many places as its column keeps (``% scale``)."""


class _StrictGenerator(GenerateJsonSchema):
    """Pydantic's JSON Schema, with Decimal as a plain decimal string.

    Pydantic allows ``number | string`` for Decimal; a model may then answer any string.
    A pattern-constrained string keeps every digit and always validates; its places are
    limited to what the column keeps (``decimal_places``, else 9), so that structured
    output does not produce an answer the row would then fail for.
    """

    def decimal_schema(self, schema: core_schema.DecimalSchema) -> JsonSchemaValue:
        places = schema.get("decimal_places")
        scale = places if isinstance(places, int) else DECIMAL_SCALE
        return {"type": "string", "pattern": DECIMAL_PATTERN % scale}


class AnswerSchema:
    """Everything the run needs to know about the answer format.

    Parameters
    ----------
    model
        A Pydantic model, or ``None`` for one plain-text column named ``response``.

    Examples
    --------
    >>> from pydantic import BaseModel
    >>> class Review(BaseModel):
    ...     rating: int
    ...     summary: str
    >>> s = AnswerSchema(Review)
    >>> s.columns
    ['rating', 'summary']
    >>> s.json_schema["required"]
    ['rating', 'summary']
    """

    def __init__(self, model: type[BaseModel] | None) -> None:
        self.model = model
        if model is None:
            self.name = "response"
            self.json_schema: dict[str, Any] | None = None
            self._struct: _FieldType | None = None
            self.columns = [TEXT_COLUMN]
            self.dtypes: dict[str, Any] = {TEXT_COLUMN: pl.String()}
            self._fast: _FastPath | None = None
            return
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            msg = (
                f"schema must be a pydantic BaseModel subclass or None, got {model!r}; "
                "define `class Answer(BaseModel): ...` and pass schema=Answer"
            )
            raise SchemaError(msg)
        if not model.model_fields:
            msg = (
                f"schema {model.__name__} has no fields, so every answer would be an empty "
                "object (billed all the same); add the fields you want as columns, or pass "
                "schema=None for text answers"
            )
            raise SchemaError(msg)
        self.name = model.__name__
        self._struct = _model_type(model, model.__name__)
        assert isinstance(self._struct.final, pl.Struct)
        self.columns = [f.name for f in self._struct.final.fields]
        self.dtypes = {f.name: f.dtype for f in self._struct.final.fields}
        raw = model.model_json_schema(schema_generator=_StrictGenerator)
        defs = raw.get("$defs", {})
        strict = _strict(raw, defs)
        if "$defs" in strict:
            strict["$defs"] = {k: _strict(v, defs) for k, v in defs.items()}
        self.json_schema = strict
        self._fast = _FastPath.of(model)

    @property
    def fingerprint(self) -> str:
        """A stable hash of the wire schema (or ``"text"``), used to guard checkpoints."""
        if self.json_schema is None:
            return "text"
        blob = json.dumps(self.json_schema, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def validate(
        self, texts: Sequence[str | None] | pl.Series
    ) -> tuple[list[str | None], list[str | None]]:
        """Validate raw answers; return canonical JSON (or text) and an error per answer.

        A valid answer gives ``(canonical, None)``; an invalid one ``(None, message)``.
        For a flat model of plain fields, answers already in canonical form are
        recognised column-wise (:class:`_FastPath`) and only the others go through
        Pydantic one by one; the result is the same either way. :meth:`validate_series`
        gives the same as two columns.
        """
        canonical, errors = self.validate_series(texts)
        return canonical.to_list(), errors.to_list()

    def validate_series(
        self, texts: Sequence[str | None] | pl.Series
    ) -> tuple[pl.Series, pl.Series]:
        """:meth:`validate` as two String columns (``answer``, ``error``), one row per text.

        The column-wise path for a run's answers: the answers the fast path takes never
        become Python objects, only the others (Pydantic's) are put in place.
        """
        canonical, errors, _ = self._validated(texts, keep_decoded=False)
        return canonical, errors

    def validate_decoded(
        self, texts: Sequence[str | None] | pl.Series
    ) -> tuple[pl.Series, pl.Series, pl.Series | None]:
        """:meth:`validate_series` and each valid answer's JSON decoded, when it is free.

        The fast path decodes the answers to check them (:class:`_FastPath`); the third
        column is that struct (and, for the answers Pydantic validated, their canonical
        text decoded), so the output need not decode the same text again: it equals
        ``canonical.str.json_decode(wire)`` row for row (null where the answer is), and
        :meth:`typed` turns it into the typed answer as :meth:`decoded` turns the text.
        ``None`` when there is no fast path for the model (the output decodes the text).
        """
        return self._validated(texts, keep_decoded=True)

    def _validated(
        self, texts: Sequence[str | None] | pl.Series, *, keep_decoded: bool
    ) -> tuple[pl.Series, pl.Series, pl.Series | None]:
        # a Series of nothing but nulls may come typed Null: it is still answers (none)
        series = (
            texts.cast(pl.String) if isinstance(texts, pl.Series)
            else pl.Series(texts, dtype=pl.String)
        )
        if self.model is None:
            empty = pl.select(
                pl.when(pl.lit(series).is_null()).then(pl.lit("empty answer", pl.String))
            ).to_series()
            return series.alias("answer"), empty.alias("error"), None
        fast = self._fast
        struct = self._struct
        keep = keep_decoded and fast is not None and struct is not None and (
            fast.wire == struct.wire
        )
        decoded: pl.Series | None = None
        if fast is not None and series.len() > 0:
            canonical, decoded = fast.checked(series, keep_decoded=keep)
            canonical = canonical.alias("answer")
        else:
            canonical = pl.Series("answer", [None] * series.len(), dtype=pl.String)
        # A column of nulls without a Python list of them (1.3 ms a 100,000-answer batch).
        errors = pl.repeat(None, series.len(), dtype=pl.String, eager=True).alias("error")
        todo = canonical.is_null().arg_true()
        if todo.len() == 0:
            return canonical, errors, (decoded.alias(DECODED) if keep and decoded is not None
                                       else None)
        done: list[str | None] = []
        why: list[str | None] = []
        model = self.model
        for text in series.gather(todo).to_list():
            value: str | None = None
            error: str | None = None
            if text is None:
                error = "schema_validation: the answer is empty"
            else:
                try:
                    obj = model.model_validate_json(text)
                except ValidationError as e:
                    error = _describe(e)
                else:
                    found = None if self._struct is None or self._struct.check is None else (
                        self._struct.check(obj)
                    )
                    if found is not None:  # valid, but its column cannot hold it: never cut it
                        error = f"schema_validation: {found[0] or '<root>'}: {found[1]}"
                    else:
                        value = obj.model_dump_json()
            done.append(value)
            why.append(error)
        taken = canonical.is_not_null()  # by the fast path
        canonical = canonical.scatter(todo, pl.Series(done, dtype=pl.String))
        errors = errors.scatter(todo, pl.Series(why, dtype=pl.String))
        if not keep or decoded is None or struct is None:
            return canonical, errors, None
        # Pydantic's answers (few): their canonical text decoded as the output would.
        try:
            decoded = pl.select(
                pl.when(pl.lit(taken))
                .then(pl.lit(decoded))
                .otherwise(pl.when(~pl.lit(taken)).then(pl.lit(canonical)).str.json_decode(
                    struct.wire))
            ).to_series()
        except pl.exceptions.PolarsError:
            return canonical, errors, None
        return canonical, errors, decoded.alias(DECODED)

    def decode(self, canonical: pl.Expr) -> list[pl.Expr]:
        """Expressions turning a column of canonical answers into the typed field columns.

        Each field's expression decodes the JSON again: for a frame, select
        :meth:`decoded` once and :meth:`expand` it.
        """
        if self._struct is None:
            return [self.decoded(canonical)]
        return [self.decoded(canonical).struct.field(name).alias(name) for name in self.columns]

    def decoded(self, canonical: pl.Expr) -> pl.Expr:
        """One expression turning canonical answers into the typed answer.

        A struct of the field columns named :data:`DECODED` (expand it with
        :meth:`expand`), or for ``schema=None`` the text column itself. One struct, not one
        expression per field: an eager ``select`` would decode the JSON once per field.
        """
        if self._struct is None:
            return canonical.alias(TEXT_COLUMN)
        struct = self._struct
        decoded = canonical.str.json_decode(struct.wire)
        if struct.convert is not None:
            decoded = struct.convert(decoded)
        return decoded.alias(DECODED)

    def typed(self, decoded: pl.Expr) -> pl.Expr:
        """:meth:`decoded` from answers already decoded (:meth:`validate_decoded`)."""
        struct = self._struct
        if struct is None:
            msg = "a text answer has nothing decoded"
            raise TypeError(msg)
        if struct.convert is not None:
            decoded = struct.convert(decoded)
        return decoded.alias(DECODED)

    def expand(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with the :meth:`decode` struct replaced, in place, by the field columns."""
        return frame if self._struct is None else frame.unnest(DECODED)

    def empty_columns(self) -> list[pl.Expr]:
        """Typed all-null columns, for frames with no answers (e.g. a dry run)."""
        return [pl.lit(None, dtype=dt_).alias(name) for name, dt_ in self.dtypes.items()]


_FAST_CONFIG = frozenset({"title", "json_schema_extra", "frozen", "use_attribute_docstrings"})
"""``model_config`` keys that change neither validation nor the JSON dump."""

_JSON_INT = r"-?(?:0|[1-9][0-9]*)"
_JSON_NUMBER = _JSON_INT + r"(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_JSON_STRING = r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"'
"""A JSON string: raw characters but controls, ``"`` and ``\\``, or escapes. Whether
it is Pydantic's own spelling is left to the round trip: Polars' encoder escapes every
character as Pydantic's does (``tests/test_fast_paths.py`` compares all of Unicode), so
a string that comes back unchanged from a decode and encode is what Pydantic writes."""


class _FastPath:
    """Column-wise recognition of answers that are already what Pydantic would dump.

    For a flat model whose fields are ``str``, ``int``, ``float``, ``bool`` or a
    ``Literal`` of plain strings (each optionally ``| None``), with no constraints,
    aliases, validators, serializers or computed fields, an answer that (1) matches a
    regex of the canonical layout (keys in field order, no whitespace, strings with
    JSON's escapes only, numbers and literals of the field's JSON type) and (2) equals its own
    ``str.json_decode`` -> ``struct.json_encode`` round trip is valid, and
    ``model_validate_json(text).model_dump_json() == text``: Pydantic would accept it
    and write it back unchanged (Polars and Pydantic write floats the same shortest
    way; ``tests/test_fast_paths.py`` checks this against Pydantic). Everything else
    (other layouts, ``5`` for a float, escapes, extra keys, wrong types) goes through
    Pydantic as before, so values and error messages are the same either way.
    """

    def __init__(
        self,
        pattern: str,
        wire: pl.Struct,
        required: Sequence[str] = (),
        literals: Mapping[str, tuple[tuple[str, ...], bool]] | None = None,
    ) -> None:
        self.pattern = pattern
        self.wire = wire
        self.required = tuple(required)
        """The fields that are not ``| None``: a ``null`` there is Pydantic's error."""
        self.literals = dict(literals or {})
        """Each ``Literal`` field's values, and whether it may also be ``null``."""

    @classmethod
    def of(cls, model: type[BaseModel]) -> _FastPath | None:
        """The fast path for ``model``, or ``None`` when it could change a value."""
        if not set(model.model_config) <= _FAST_CONFIG:
            return None
        decorators = model.__pydantic_decorators__
        if any(
            getattr(decorators, kind)
            for kind in (
                "validators", "field_validators", "root_validators", "field_serializers",
                "model_serializers", "model_validators", "computed_fields",
            )
        ):  # fmt: skip
            return None
        overridden = ("model_validate_json", "model_dump_json", "model_post_init")
        for klass in model.__mro__:
            if klass is not BaseModel and any(name in vars(klass) for name in overridden):
                return None
        parts: list[str] = []
        wire: dict[str, pl.DataType] = {}
        required: list[str] = []
        literals: dict[str, tuple[tuple[str, ...], bool]] = {}
        for name, field in model.model_fields.items():
            if (
                field.metadata
                or field.alias is not None
                or field.validation_alias is not None
                or field.serialization_alias is not None
                or field.exclude
                or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)
            ):
                return None
            value = _fast_value(field.annotation)
            if value is None:
                return None
            pattern, dtype = value
            parts.append(f'"{name}":{pattern}')
            wire[name] = dtype
            optional = _optional(field.annotation)
            if not optional:
                required.append(name)
            inner = _without_none(field.annotation)
            if get_origin(inner) is Literal:
                literals[name] = (tuple(get_args(inner)), optional)
        if not parts:
            return None
        return cls("^\\{" + ",".join(parts) + "\\}$", pl.Struct(wire), required, literals)

    def canonical(self, texts: pl.Series) -> pl.Series:
        """Each text that is already canonical, else null (to be validated by Pydantic).

        One pass over the column: texts that do not match the layout are nulled before
        the decode (so no malformed JSON reaches it), the rest are decoded, encoded again
        and kept where that gives them back unchanged.
        """
        return self.checked(texts, keep_decoded=False)[0]

    def checked(
        self, texts: pl.Series, *, keep_decoded: bool = True
    ) -> tuple[pl.Series, pl.Series | None]:
        """:meth:`canonical`, and the decoded struct of each text it keeps (else null).

        The texts are decoded :data:`DECODE_SLICE_ROWS` at a time, as they are; a text is
        kept when its decode is not null, holds a value in every field that is not ``|
        None`` and one of the values of each ``Literal`` field, and encodes back to the
        text itself. That is what the layout regex and the round trip together proved: a
        text equal to the encoding of a struct of the wire's types is JSON of exactly the
        model's keys in order, without blank space, each value spelt as Polars (and so
        Pydantic) writes it; the regex adds nothing to it but those checks of nulls and
        literals (``benchmarks/PROFILE.md``, sixteenth pass). A slice the decoder refuses
        (malformed JSON, a value of another type, an integer past Int64) or whose rows it
        miscounts (it joins the texts into one JSON array, so a text ``{...},{...}`` is
        two rows) is decoded again with the texts that do not match the layout regex
        (:attr:`pattern`) nulled first, as before; if the decoder still refuses it (a
        number past a double), every text is left to Pydantic and nothing decoded is kept,
        as before. When every text is kept (a run's answers, as a rule), the texts and the
        decoded struct are returned as they are rather than copied through a mask.
        """
        n = texts.len()
        parts: list[pl.Series] = []
        for i in range(0, n, DECODE_SLICE_ROWS):
            part = self._decoded(texts.slice(i, DECODE_SLICE_ROWS))
            if part is None:
                return pl.Series("text", [None] * n, dtype=pl.String), None
            parts.append(part)
        if not parts:
            empty = pl.Series("decoded", [], self.wire)
            return texts.alias("text"), empty if keep_decoded else None
        decoded = parts[0] if len(parts) == 1 else pl.concat(parts, rechunk=True)
        # Polars' encode of a null row is "null": a text "null" decodes to one, and is
        # Pydantic's to judge (decoded.is_not_null() is false for it).
        found = pl.DataFrame({"text": texts, "decoded": decoded})
        row = pl.col("decoded")
        checks = [row.is_not_null(), row.struct.json_encode() == pl.col("text")]
        checks += [row.struct.field(name).is_not_null() for name in self.required]
        checks += [
            row.struct.field(name).is_in(values) | (row.struct.field(name).is_null() if optional
                                                   else pl.lit(False))
            for name, (values, optional) in self.literals.items()
        ]
        same = found.select(pl.all_horizontal(checks).alias("same")).to_series()
        if (same | (texts.is_null() & decoded.is_null())).all():  # every text kept but nulls
            return texts.alias("text"), decoded.alias("decoded") if keep_decoded else None
        kept = found.select(
            pl.when(same).then(pl.col("text")).alias("text"),
            *([pl.when(same).then(row).alias("decoded")] if keep_decoded else []),
        )
        return kept.get_column("text"), kept.get_column("decoded") if keep_decoded else None

    def _decoded(self, texts: pl.Series) -> pl.Series | None:
        """``texts.str.json_decode(wire)``, row for row, else ``None`` (:meth:`checked`)."""
        try:
            decoded = texts.str.json_decode(self.wire)
            if decoded.len() == texts.len():
                return decoded
        except pl.exceptions.PolarsError:
            pass
        try:
            matches = texts.str.contains(self.pattern)
            shaped = pl.select(pl.when(pl.lit(matches)).then(pl.lit(texts))).to_series()
            decoded = shaped.str.json_decode(self.wire)
            if decoded.len() == texts.len():
                return decoded
        except pl.exceptions.PolarsError:  # e.g. a number past a double: Pydantic decides
            pass
        return None


DECODE_SLICE_ROWS = 5_000
"""Answers :meth:`_FastPath.checked` decodes at a time. Polars' ``str.json_decode`` takes a
working buffer in proportion to what it is given: 50,000 answers at once (a batch) faulted
in ~3,000 fresh pages each time, 5,000 at a time ~400, and took less CPU (user 33 -> 26 ms,
system 11 -> 1.5 ms per 50,000 three-field answers; ``benchmarks/PROFILE.md``, ninth pass).
The slices' structs are put in one chunk (a copy of the decoded values, ~1 ms for a batch):
kept in chunks, the run's decoded answers (held to the end for the output) raised a
1M-row call's peak RSS from ~950 to ~1,150 MB; in one chunk it stays as it was (ninth
pass)."""


def _optional(tp: Any) -> bool:
    """Whether a field type takes ``None`` (``X | None``)."""
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _without_none(tp: Any) -> Any:
    """``X`` of ``X | None``; any other type as it is."""
    if not _optional(tp):
        return tp
    members = [a for a in get_args(tp) if a is not type(None)]
    return members[0] if len(members) == 1 else tp


def _fast_value(tp: Any) -> tuple[str, pl.DataType] | None:
    """The canonical JSON regex and wire dtype of a plain field type, else ``None``."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if len(members) != 1 or len(get_args(tp)) != 2:
            return None
        inner = _fast_value(members[0])
        if inner is None:
            return None
        return f"(?:null|{inner[0]})", inner[1]
    if origin is Literal:
        values = get_args(tp)
        if not values or not all(
            isinstance(v, str) and re.fullmatch(r'[^"\\\x00-\x1f\x7f]*', v) for v in values
        ):
            return None
        return '"(?:' + "|".join(re.escape(v) for v in values) + ')"', pl.String()
    if tp is bool:
        return "(?:true|false)", pl.Boolean()
    if tp is int:
        return _JSON_INT, pl.Int64()
    if tp is float:
        return _JSON_NUMBER, pl.Float64()
    if tp is str:
        return _JSON_STRING, pl.String()
    return None


def _describe(e: ValidationError) -> str:
    first = e.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"schema_validation: {loc}: {first['msg']}{more}"
