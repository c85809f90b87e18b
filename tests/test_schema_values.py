"""schema.py by value: column dtypes, the strict wire schema, validation messages, decoding.

Fast (no emulator), for the mutation run of ``schema.py`` (``tools/mutation.py``). Decoded
values are compared with the values answered (offsets other than ``Z``, many decimal places,
unicode, empty lists, nulls); errors with the exact message that names the fix.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import hashlib
import json
import typing
import uuid
from typing import Annotated, Any, Literal, Optional, Union

import polars as pl
import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from batchata_df.errors import SchemaError
from batchata_df.schema import TEXT_COLUMN, AnswerSchema, _describe, _FastPath


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.Enum):
    LOW = 1
    HIGH = 2


class Item(BaseModel):
    """An item."""

    name: str = Field(title="Name", description="what it is", min_length=1)
    price: decimal.Decimal = Field(decimal_places=3)
    at: dt.datetime


class Everything(BaseModel):
    flag: bool
    n: int
    x: float
    s: str
    u: uuid.UUID
    when: dt.datetime
    day: dt.date
    clock: dt.time
    amount: decimal.Decimal
    lit: Literal["b", "a", "b"]
    lit_int: Literal[1, 2]
    lit_bool: Literal[True]
    color: Color
    level: Level
    tags: list[str]
    days: list[dt.date]
    items: list[Item]
    one: Item
    maybe: Optional[int] = None
    either: str | None = None
    seq: tuple[int, ...] = ()
    wrapped: Annotated[decimal.Decimal, Field(max_digits=5, decimal_places=2)] = decimal.Decimal(0)


ITEM = pl.Struct({"name": pl.String, "price": pl.Decimal(38, 3),
                  "at": pl.Datetime("us", "UTC")})


def test_every_field_type_has_its_column_dtype() -> None:
    s = AnswerSchema(Everything)
    assert s.name == "Everything"
    assert s.columns == list(Everything.model_fields)
    assert s.dtypes == {
        "flag": pl.Boolean,
        "n": pl.Int64,
        "x": pl.Float64,
        "s": pl.String,
        "u": pl.String,
        "when": pl.Datetime("us", "UTC"),
        "day": pl.Date,
        "clock": pl.Time,
        "amount": pl.Decimal(38, 9),
        "lit": pl.Enum(["b", "a"]),
        "lit_int": pl.Int64,
        "lit_bool": pl.Boolean,
        "color": pl.Enum(["red", "blue"]),
        "level": pl.Int64,
        "tags": pl.List(pl.String),
        "days": pl.List(pl.Date),
        "items": pl.List(ITEM),
        "one": ITEM,
        "maybe": pl.Int64,
        "either": pl.String,
        "seq": pl.List(pl.Int64),
        "wrapped": pl.Decimal(5, 2),
    }
    assert [e.meta.output_name() for e in s.empty_columns()] == s.columns
    assert pl.select(s.empty_columns()).schema == pl.Schema(s.dtypes)
    assert pl.select(s.empty_columns()).row(0) == (None,) * len(s.columns)


def test_plain_text_answers_have_one_response_column() -> None:
    s = AnswerSchema(None)
    assert (s.name, s.json_schema, s.columns, s.dtypes) == (
        "response", None, [TEXT_COLUMN], {TEXT_COLUMN: pl.String})
    assert TEXT_COLUMN == "response"
    assert s.fingerprint == "text"
    assert s.validate(["a", None]) == (["a", None], [None, "empty answer"])
    assert s.validate(pl.Series(["b"])) == (["b"], [None])
    frame = pl.DataFrame({"raw": ["hello"]})
    assert frame.select(s.decode(pl.col("raw"))).to_dict(as_series=False) == {
        "response": ["hello"]}
    assert pl.select(s.empty_columns()).schema == pl.Schema({"response": pl.String})


def test_the_wire_schema_is_strict_and_constraints_move_into_descriptions() -> None:
    class Inner(BaseModel):
        code: str = Field(pattern="^[A-Z]+$", max_length=3)

    class Answer(BaseModel):
        model_config = ConfigDict(title="Custom")
        name: str = Field(title="Name", description="who", min_length=2)
        tags: list[str] = Field(default_factory=list, min_length=1, max_length=4)
        when: dt.date
        mail: str = Field(json_schema_extra={"format": "email"})
        host: str = Field(json_schema_extra={"format": "uri"})
        inner: Inner = Field(description="the inner one")
        plain: Inner
        maybe: Optional[Inner] = None
        price: decimal.Decimal = Field(decimal_places=2)
        ratio: float = Field(ge=0, lt=1, multiple_of=0.5)

    inner = {
        "type": "object",
        "properties": {"code": {"pattern": "^[A-Z]+$", "type": "string",
                                "description": "(maxLength: 3)"}},
        "required": ["code"],
        "additionalProperties": False,
    }
    s = AnswerSchema(Answer)
    assert s.json_schema == {
        "$defs": {"Inner": inner},
        "properties": {
            "name": {"description": "who (minLength: 2)", "type": "string"},
            "tags": {"items": {"type": "string"}, "maxItems": 4, "minItems": 1,
                     "type": "array"},
            "when": {"format": "date", "type": "string"},
            "mail": {"format": "email", "type": "string"},
            "host": {"type": "string", "description": "(format: uri)"},
            "inner": {**inner, "description": "the inner one"},
            "plain": {"$ref": "#/$defs/Inner"},
            "maybe": {"anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}]},
            "price": {"pattern": "^-?[0-9]+(\\.[0-9]{1,2})?$", "type": "string"},
            "ratio": {"exclusiveMaximum": 1, "minimum": 0, "multipleOf": 0.5,
                      "type": "number"},
        },
        "required": ["name", "tags", "when", "mail", "host", "inner", "plain", "maybe",
                     "price", "ratio"],
        "type": "object",
        "additionalProperties": False,
    }
    blob = json.dumps(s.json_schema, sort_keys=True).encode()
    assert s.fingerprint == hashlib.sha256(blob).hexdigest()[:16]
    assert AnswerSchema(Answer).fingerprint == s.fingerprint
    assert AnswerSchema(Inner).fingerprint != s.fingerprint
    plain_decimal = AnswerSchema(Everything).json_schema
    assert plain_decimal is not None
    assert plain_decimal["properties"]["amount"] == {
        "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?$"}


def test_answers_decode_to_the_values_answered() -> None:
    answers = [
        {
            "flag": True, "n": -(2**62), "x": 1e-300, "s": "ünï \"q\" 日本 🎉",
            "u": "12345678-1234-5678-1234-567812345678",
            "when": "2024-03-01T23:30:00.123456+05:30", "day": "2024-02-29",
            "clock": "12:00:00+05:30", "amount": "-12345678901234567890.123456789",
            "lit": "a", "lit_int": 2, "lit_bool": True, "color": "blue", "level": 2,
            "tags": [], "days": ["1999-12-31"],
            "items": [{"name": "é", "price": "0.125", "at": "2024-01-01T00:00:00Z"}],
            "one": {"name": "o", "price": "7", "at": "2024-01-01T10:00:00-02:00"},
            "maybe": None, "either": None, "seq": [3, 1], "wrapped": "123.45",
        },
        {
            "flag": False, "n": 0, "x": -2.5, "s": "", "u": "00000000-0000-0000-0000-000000000000",
            "when": "2024-01-01T00:00:00", "day": "0001-01-01", "clock": "23:59:59.5",
            "amount": "0.000000001", "lit": "b", "lit_int": 1, "lit_bool": True,
            "color": "red", "level": 1, "tags": ["x", ""], "days": [], "items": [],
            "one": {"name": "p", "price": "-0.001", "at": "2023-12-31T23:00:00-01:00"},
            "maybe": 5, "either": "e", "seq": [], "wrapped": "-999.99",
        },
    ]
    s = AnswerSchema(Everything)
    canonical, errors = s.validate([json.dumps(a) for a in answers])
    assert errors == [None, None]
    frame = pl.DataFrame({"c": canonical}).select(s.decode(pl.col("c")))
    utc = dt.UTC
    assert frame.to_dicts() == [
        {
            "flag": True, "n": -(2**62), "x": 1e-300, "s": "ünï \"q\" 日本 🎉",
            "u": "12345678-1234-5678-1234-567812345678",
            "when": dt.datetime(2024, 3, 1, 18, 0, 0, 123456, tzinfo=utc),
            "day": dt.date(2024, 2, 29), "clock": dt.time(6, 30),
            "amount": decimal.Decimal("-12345678901234567890.123456789"),
            "lit": "a", "lit_int": 2, "lit_bool": True, "color": "blue", "level": 2,
            "tags": [], "days": [dt.date(1999, 12, 31)],
            "items": [{"name": "é", "price": decimal.Decimal("0.125"),
                       "at": dt.datetime(2024, 1, 1, tzinfo=utc)}],
            "one": {"name": "o", "price": decimal.Decimal("7.000"),
                    "at": dt.datetime(2024, 1, 1, 12, tzinfo=utc)},
            "maybe": None, "either": None, "seq": [3, 1],
            "wrapped": decimal.Decimal("123.45"),
        },
        {
            "flag": False, "n": 0, "x": -2.5, "s": "",
            "u": "00000000-0000-0000-0000-000000000000",
            "when": dt.datetime(2024, 1, 1, tzinfo=utc), "day": dt.date(1, 1, 1),
            "clock": dt.time(23, 59, 59, 500000),
            "amount": decimal.Decimal("0.000000001"), "lit": "b", "lit_int": 1,
            "lit_bool": True, "color": "red", "level": 1, "tags": ["x", ""], "days": [],
            "items": [],
            "one": {"name": "p", "price": decimal.Decimal("-0.001"),
                    "at": dt.datetime(2024, 1, 1, 0, tzinfo=utc)},
            "maybe": 5, "either": "e", "seq": [], "wrapped": decimal.Decimal("-999.99"),
        },
    ]
    assert frame.schema == pl.Schema(s.dtypes)


def test_invalid_answers_fail_their_row_with_pydantics_location_and_the_fix() -> None:
    s = AnswerSchema(Item)
    good = '{"name":"a","price":"1.5","at":"2024-01-01T00:00:00Z"}'
    texts = [
        good,
        None,
        '{"name":"a"}',
        '{"name":"","price":"1","at":"2024-01-01T00:00:00Z"}',
        '{"name":"a","price":"1.2345","at":"2024-01-01T00:00:00Z"}',
        "not json",
    ]
    canonical, errors = s.validate(texts)
    assert canonical == [
        '{"name":"a","price":"1.5","at":"2024-01-01T00:00:00Z"}', None, None, None, None, None]
    assert errors == [
        None,
        "schema_validation: the answer is empty",
        "schema_validation: price: Field required (+1 more)",
        "schema_validation: name: String should have at least 1 character",
        "schema_validation: price: Decimal input should have no more than 3 decimal places",
        "schema_validation: <root>: Invalid JSON: expected ident at line 1 column 2",
    ]


class Priced(BaseModel):
    price: decimal.Decimal


class Money(BaseModel):
    amount: decimal.Decimal = Field(max_digits=6, decimal_places=2)


class Basket(BaseModel):
    lines: list[Priced]
    total: Optional[Money] = None


def test_values_a_column_cannot_hold_fail_the_row_naming_the_declaration() -> None:
    s = AnswerSchema(Basket)
    ten_places = "0.0000000001"
    texts = [
        json.dumps({"lines": [{"price": "1"}, {"price": ten_places}]}),
        json.dumps({"lines": [], "total": {"amount": "1234.5"}}),
        json.dumps({"lines": [{"price": "1E+3"}], "total": None}),
        json.dumps({"lines": [{"price": "123456789012345678901234567890.1"}]}),
        json.dumps({"lines": [{"price": "NaN"}]}),
        json.dumps({"lines": [{"price": "100"}, {"price": "-0.000000001"}]}),
    ]
    canonical, errors = s.validate(texts)
    assert errors == [
        "schema_validation: lines.1.price: 0.0000000001 has 10 decimal places, the "
        "Decimal(precision=38, scale=9) column keeps 9: declare the field with "
        "Field(decimal_places=10) (then reparse(): nothing is sent again)",
        None,
        None,
        "schema_validation: lines.0.price: 123456789012345678901234567890.1 has 30 digits "
        "before the point, the Decimal(precision=38, scale=9) column holds 29: declare a "
        "larger max_digits or fewer decimal_places",
        "schema_validation: lines.0.price: Input should be a finite number",
        None,
    ]
    assert canonical[1] == '{"lines":[],"total":{"amount":"1234.5"}}'
    frame = pl.DataFrame({"c": [canonical[1], canonical[2], canonical[5]]}).select(
        s.decode(pl.col("c")))
    assert frame.to_dicts() == [
        {"lines": [], "total": {"amount": decimal.Decimal("1234.50")}},
        {"lines": [{"price": decimal.Decimal("1000")}], "total": None},
        {"lines": [{"price": decimal.Decimal("100")}, {"price": decimal.Decimal("-1E-9")}],
         "total": None},
    ]
    top = AnswerSchema(Money)
    assert top.validate(['{"amount":"12345.6"}'])[1] == [
        "schema_validation: amount: Decimal input should have no more than 4 digits before the "
        "decimal point"]


def test_a_decimal_beyond_what_a_column_holds_at_the_root_is_located_as_root() -> None:
    s = AnswerSchema(Basket)
    assert s._struct is not None and s._struct.check is not None
    assert s._struct.check(None) is None
    assert s._struct.check(Basket(lines=[])) is None


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (Union[int, str], "Bad.f: unions of several types (typing.Union[int, str]) have no "  # noqa: UP007
         "single column type; use one type, Optional[T], or a Literal"),
        (tuple[int, str], "Bad.f: fixed-length tuples are not supported; use list[T]"),
        (typing.List, "Bad.f: give the item type of the list, e.g. list[str]"),  # noqa: UP006
        (dict[str, int], "Bad.f: dict fields cannot be strict structured output (providers "
         "require fixed keys); use a nested BaseModel"),
        (Literal[1, "a"], "Bad.f: Literal values [1, 'a'] mix types; use only strings, only "
         "ints or only bools"),
        (bytes, "Bad.f: type <class 'bytes'> is not supported in an answer schema; use str, "
         "int, float, bool, Literal, Enum, date, datetime, time, Decimal, list[...] or a "
         "nested BaseModel"),
        (list[dict[str, int]], "Bad.f[]: dict fields cannot be strict structured output "
         "(providers require fixed keys); use a nested BaseModel"),
        (Annotated[decimal.Decimal, Field(max_digits=40)], "Bad.f: a Decimal column holds at "
         "most 38 digits, the field declares 40 (max_digits=40, decimal_places=9); declare "
         "at most 38, or make the field a str"),
    ],
)
def test_unsupported_annotations_are_schema_errors_naming_the_fix(
    annotation: Any, message: str
) -> None:
    from pydantic import create_model

    bad = create_model("Bad", f=(annotation, ...))
    with pytest.raises(SchemaError) as info:
        AnswerSchema(bad)
    assert str(info.value) == message


def test_recursive_models_forward_references_and_non_models_are_refused() -> None:
    class Node(BaseModel):
        children: list[Node]

    with pytest.raises(SchemaError) as info:
        AnswerSchema(Node)
    assert str(info.value).startswith(
        "Node.children[]: the answer model is recursive (Node -> Node). A recursive model "
        "has no fixed column type")
    assert "make the field a str holding JSON" in str(info.value)
    for bad in (dict, "Answer", Item(name="a", price=decimal.Decimal(1),
                                     at=dt.datetime(2024, 1, 1))):
        with pytest.raises(SchemaError) as info:
            AnswerSchema(bad)  # type: ignore[arg-type]
        assert str(info.value) == (
            f"schema must be a pydantic BaseModel subclass or None, got {bad!r}; define "
            "`class Answer(BaseModel): ...` and pass schema=Answer")
    from batchata_df.schema import _field_type

    with pytest.raises(SchemaError) as info:
        _field_type("Later", "M.f")
    assert str(info.value) == (
        "M.f: the annotation 'Later' is an unresolved forward reference; define the types it "
        "names before the model, or call Model.model_rebuild() first")


class Flat(BaseModel):
    label: Literal["pos", "neg"]
    score: float
    n: Optional[int]
    ok: bool
    note: str


def test_canonical_answers_are_recognised_column_wise_and_others_by_pydantic() -> None:
    s = AnswerSchema(Flat)
    assert s._fast is not None
    texts = [
        '{"label":"pos","score":0.5,"n":null,"ok":true,"note":"plain"}',
        '{"label": "pos","score":0.5,"n":null,"ok":true,"note":"spaced"}',
        '{"label":"neg","score":5,"n":3,"ok":false,"note":"int for a float"}',
        '{"label":"neg","score":1e-07,"n":-1,"ok":false,"note":"esc\\u00e9"}',
        '{"label":"maybe","score":1,"n":1,"ok":true,"note":"x"}',
        None,
    ]
    fast = s._fast.canonical(pl.Series(texts, dtype=pl.String)).to_list()
    assert fast == [texts[0], None, None, None, None, None]
    canonical, errors = s.validate(texts)
    pydantic = [
        None if t is None else Flat.model_validate_json(t).model_dump_json()
        for t in texts[:4]
    ]
    assert canonical == [*pydantic, None, None]
    assert errors[:4] == [None] * 4
    assert errors[4] == "schema_validation: label: Input should be 'pos' or 'neg'"
    assert errors[5] == "schema_validation: the answer is empty"
    assert s.validate([]) == ([], [])
    big = '{"label":"pos","score":1,"n":99999999999999999999,"ok":true,"note":"x"}'
    assert s._fast.canonical(pl.Series([big])).to_list() == [None]


def test_models_the_fast_path_cannot_vouch_for() -> None:
    class Extra(BaseModel):
        model_config = ConfigDict(extra="forbid")
        a: str

    class Titled(BaseModel):
        model_config = ConfigDict(title="T", frozen=True)
        a: str

    class Validated(BaseModel):
        a: str

        @field_validator("a")
        @classmethod
        def upper(cls, v: str) -> str:
            return v.upper()

    class Dumped(BaseModel):
        a: str

        def model_dump_json(self, **kw: Any) -> str:  # type: ignore[override]
            return "{}"

    class Child(Dumped):
        b: int

    class Aliased(BaseModel):
        a: str = Field(alias="A")

    class Constrained(BaseModel):
        a: str = Field(max_length=3)

    class Dated(BaseModel):
        a: dt.date

    class Union3(BaseModel):
        a: int | str | None

    class Empty(BaseModel):
        pass

    class Escaped(BaseModel):
        a: Literal['say "x"']

    for model in (Extra, Validated, Dumped, Child, Aliased, Constrained, Dated, Union3, Empty,
                  Escaped):
        assert _FastPath.of(model) is None, model
    titled = _FastPath.of(Titled)
    assert titled is not None
    assert titled.pattern == (
        '^\\{"a":"(?:[^"\\\\\\x00-\\x1f]|\\\\(?:["\\\\/bfnrt]|u[0-9a-fA-F]{4}))*"\\}$'
    )
    assert titled.wire == pl.Struct({"a": pl.String})
    flat = _FastPath.of(Flat)
    assert flat is not None
    assert flat.wire == pl.Struct({"label": pl.String, "score": pl.Float64, "n": pl.Int64,
                                   "ok": pl.Boolean, "note": pl.String})
    assert flat.pattern == (
        '^\\{"label":"(?:pos|neg)","score":-?(?:0|[1-9][0-9]*)(?:\\.[0-9]+)?(?:[eE][+-]?[0-9]+)?'
        ',"n":(?:null|-?(?:0|[1-9][0-9]*)),"ok":(?:true|false),'
        '"note":"(?:[^"\\\\\\x00-\\x1f]|\\\\(?:["\\\\/bfnrt]|u[0-9a-fA-F]{4}))*"\\}$'
    )


class Sized(BaseModel):
    prices: list[Annotated[decimal.Decimal, Field(max_digits=6, decimal_places=2)]]
    maybe: Optional[decimal.Decimal] = Field(default=None, decimal_places=2)
    cents: decimal.Decimal = Field(decimal_places=0)
    frac: decimal.Decimal = Field(max_digits=2, decimal_places=2)


def test_decimal_sizes_reach_list_items_optionals_and_edge_scales() -> None:
    # A Decimal's declaration is found inside list[Annotated[...]] and through Optional;
    # whole numbers fit a column with no places, and 0.05 one with no digits before the point.
    s = AnswerSchema(Sized)
    assert s.dtypes == {
        "prices": pl.List(pl.Decimal(6, 2)),
        "maybe": pl.Decimal(38, 2),
        "cents": pl.Decimal(38, 0),
        "frac": pl.Decimal(2, 2),
    }
    texts = [
        '{"prices":["1.25","-9999.99"],"maybe":null,"cents":"5","frac":"0.05"}',
        '{"prices":[],"maybe":"1.5","cents":"-120","frac":"-0.5"}',
        '{"prices":["1.234"],"maybe":null,"cents":"0","frac":"0.1"}',
    ]
    canonical, errors = s.validate(texts)
    assert errors == [
        None,
        None,
        "schema_validation: prices.0: Decimal input should have no more than 2 decimal places",
    ]
    assert canonical[:2] == texts[:2]
    frame = pl.DataFrame({"c": canonical[:2]}).select(s.decode(pl.col("c")))
    assert frame.to_dicts() == [
        {"prices": [decimal.Decimal("1.25"), decimal.Decimal("-9999.99")], "maybe": None,
         "cents": decimal.Decimal(5), "frac": decimal.Decimal("0.05")},
        {"prices": [], "maybe": decimal.Decimal("1.50"), "cents": decimal.Decimal(-120),
         "frac": decimal.Decimal("-0.50")},
    ]


class CycleRoot(BaseModel):
    a: CycleA


class CycleA(BaseModel):
    b: list[CycleB]


class CycleB(BaseModel):
    back: Optional[CycleA] = None


CycleRoot.model_rebuild()
CycleA.model_rebuild()


def test_recursion_through_several_models_names_the_whole_cycle() -> None:
    with pytest.raises(SchemaError) as info:
        AnswerSchema(CycleRoot)
    assert str(info.value) == (
        "CycleRoot.a.b[].back: the answer model is recursive (CycleA -> CycleB -> CycleA). "
        "A recursive model has no fixed column type, and Anthropic's and Gemini's structured "
        "output refuse recursive schemas; give the nesting a fixed depth (a separate class "
        "per level, e.g. Node -> Child -> Leaf) or make the field a str holding JSON"
    )


def test_the_fast_path_stands_aside_for_models_that_parse_or_dump_differently() -> None:
    class ValidationAliased(BaseModel):
        a: str = Field(validation_alias="v")

    class SerializationAliased(BaseModel):
        a: str = Field(serialization_alias="S")

    class Excluded(BaseModel):
        a: str
        b: str = Field(exclude=True)

    class ParsesItself(BaseModel):
        a: str

        @classmethod
        def model_validate_json(cls, json_data: Any, **kw: Any) -> ParsesItself:
            return cls(a=json.loads(json_data)["a"].strip())

    class PostInit(BaseModel):
        a: str

        def model_post_init(self, context: Any, /) -> None:
            self.a = self.a.upper()

    class Mixed(BaseModel):
        a: int | str

    for model in (ValidationAliased, SerializationAliased, Excluded, ParsesItself, PostInit,
                  Mixed):
        assert _FastPath.of(model) is None, model
    # What Pydantic makes of an answer the fast path would have passed through unchanged:
    assert AnswerSchema(ValidationAliased).validate(['{"a":"x"}']) == (
        [None], ["schema_validation: v: Field required"])
    assert AnswerSchema(Excluded).validate(['{"a":"x","b":"y"}']) == (['{"a":"x"}'], [None])
    assert AnswerSchema(ParsesItself).validate(['{"a":" x "}']) == (['{"a":"x"}'], [None])
    assert AnswerSchema(PostInit).validate(['{"a":"x"}']) == (['{"a":"X"}'], [None])


def test_the_fast_path_takes_harmless_config_and_any_identifier_case() -> None:
    class Harmless(BaseModel):
        model_config = ConfigDict(title="T", json_schema_extra={"examples": []}, frozen=True,
                                  use_attribute_docstrings=True)
        Upper: str
        """A field with a docstring."""

    fast = _FastPath.of(Harmless)
    assert fast is not None
    assert fast.pattern == (
        '^\\{"Upper":"(?:[^"\\\\\\x00-\\x1f]|\\\\(?:["\\\\/bfnrt]|u[0-9a-fA-F]{4}))*"\\}$'
    )
    assert fast.canonical(pl.Series(['{"Upper":"x"}'])).to_list() == ['{"Upper":"x"}']


def test_fast_path_batches_of_any_shape_give_one_result_per_answer() -> None:
    s = AnswerSchema(Flat)
    assert s._fast is not None
    plain = '{"label":"pos","score":0.5,"n":null,"ok":true,"note":"plain"}'
    spaced = '{"label": "neg","score":0.5,"n":1,"ok":false,"note":"spaced"}'
    # exactly one candidate: recognised
    assert s._fast.canonical(pl.Series([plain])).to_list() == [plain]
    # no candidate at all, or only empty answers: every answer still gets its result
    assert s.validate([spaced]) == ([Flat.model_validate_json(spaced).model_dump_json()], [None])
    assert s.validate([None, None]) == (
        [None, None], ["schema_validation: the answer is empty"] * 2)
    # a number Polars cannot decode (past float64) sends the whole batch to Pydantic, which
    # decides each answer as it always does (and the number past a float fails its row)
    huge = '{"label":"pos","score":1e400,"n":1,"ok":true,"note":"x"}'
    assert s._fast.canonical(pl.Series([huge, plain])).to_list() == [None, None]
    canonical, errors = s.validate([huge, plain])
    assert canonical == [None, plain]
    assert errors[1] is None
    assert errors[0] is not None
    assert errors[0].startswith("schema_validation: score: the answer is not a finite number")


class Times(BaseModel):
    at: dt.datetime
    ats: list[dt.datetime]


def test_naive_and_aware_datetimes_in_any_order_decode_to_utc() -> None:
    # The first value of a column must not decide how the others are read.
    s = AnswerSchema(Times)
    texts = [
        '{"at":"2024-01-01T00:00:00","ats":["2024-01-01T08:00:00","2024-01-01T08:00:00-03:00"]}',
        '{"at":"2024-03-01T23:30:00.5+05:30","ats":["2024-06-01T00:00:00Z"]}',
    ]
    canonical, errors = s.validate(texts)
    assert errors == [None, None]
    frame = pl.DataFrame({"c": canonical}).select(s.decode(pl.col("c")))
    utc = dt.UTC
    assert frame.to_dicts() == [
        {"at": dt.datetime(2024, 1, 1, tzinfo=utc),
         "ats": [dt.datetime(2024, 1, 1, 8, tzinfo=utc), dt.datetime(2024, 1, 1, 11, tzinfo=utc)]},
        {"at": dt.datetime(2024, 3, 1, 18, 0, 0, 500000, tzinfo=utc),
         "ats": [dt.datetime(2024, 6, 1, tzinfo=utc)]},
    ]


def test_every_object_node_becomes_closed_with_all_properties_required() -> None:
    # Pydantic writes "type": "object" and "properties" together; the rule holds for either.
    from batchata_df.schema import _strict

    assert _strict({"type": "object"}, {}) == {
        "type": "object", "additionalProperties": False, "required": []}
    assert _strict({"properties": {"a": {"type": "string", "title": "A"}}}, {}) == {
        "properties": {"a": {"type": "string"}}, "additionalProperties": False,
        "required": ["a"]}
    assert _strict({"type": "string"}, {}) == {"type": "string"}


def test_expand_puts_the_fields_where_the_answer_struct_was() -> None:
    s = AnswerSchema(Priced)
    frame = pl.DataFrame(
        {"id": [1, 2], "c": ['{"price":"1.5"}', None], "meta": [{"k": 1}, {"k": 2}]}
    ).select("id", s.decoded(pl.col("c")), "meta")
    out = s.expand(frame)
    assert out.columns == ["id", "price", "meta"]
    assert out.to_dicts() == [
        {"id": 1, "price": decimal.Decimal("1.5"), "meta": {"k": 1}},
        {"id": 2, "price": None, "meta": {"k": 2}},
    ]
    text = AnswerSchema(None)
    plain = pl.DataFrame({"c": ["hi"], "meta": [{"k": 1}]}).select(
        text.decoded(pl.col("c")), "meta")
    assert text.expand(plain).to_dicts() == [{"response": "hi", "meta": {"k": 1}}]


def test_nested_models_may_be_named_like_json_schema_keywords() -> None:
    # Definitions are keyed by class name; a class named "format" or "type" is still a
    # definition, not a keyword.
    from pydantic import create_model

    fmt = create_model("format", x=(int, ...))
    typ = create_model("type", y=(str, ...))
    outer = create_model("Outer", a=(fmt, ...), b=(list[typ], ...))  # type: ignore[valid-type]
    closed = {"type": "object", "additionalProperties": False}
    s = AnswerSchema(outer)
    assert s.json_schema == {
        "$defs": {
            "format": {"properties": {"x": {"type": "integer"}}, "required": ["x"], **closed},
            "type": {"properties": {"y": {"type": "string"}}, "required": ["y"], **closed},
        },
        "properties": {"a": {"$ref": "#/$defs/format"},
                       "b": {"items": {"$ref": "#/$defs/type"}, "type": "array"}},
        "required": ["a", "b"],
        **closed,
    }
    assert s.dtypes == {"a": pl.Struct({"x": pl.Int64}), "b": pl.List(pl.Struct({"y": pl.String}))}


class _Numbers(BaseModel):
    score: float
    n: int
    xs: list[float] = []
    maybe: float | None = None


@pytest.mark.parametrize(("answer", "error"), [
    ('{"score":1e400,"n":1}', "score: the answer is not a finite number (inf"),
    ('{"score":-1e400,"n":1}', "score: the answer is not a finite number (-inf"),
    ('{"score":NaN,"n":1}', "score: the answer is not a finite number (nan"),
    ('{"score":1.5,"n":1,"maybe":Infinity}', "maybe: the answer is not a finite number (inf"),
    ('{"score":1.5,"n":1,"xs":[1.0,1e999]}', "xs.1: the answer is not a finite number (inf"),
    ('{"score":1.5,"n":9223372036854775808}',
     "n: 9223372036854775808 does not fit an Int64 column"),
    ('{"score":1.5,"n":-9223372036854775809}',
     "n: -9223372036854775809 does not fit an Int64 column"),
])
def test_a_number_its_column_cannot_hold_fails_the_row_instead_of_becoming_null(answer, error):
    # Pydantic reads 1e400 as inf and writes it as JSON null; Int64 cannot hold 2**63: both
    # decoded to a null the model never answered, with no error.
    canonical, errors = AnswerSchema(_Numbers).validate([answer])
    assert canonical == [None]
    assert errors[0] is not None and errors[0].startswith(f"schema_validation: {error}"), errors
    # and each names what to do
    fix = ("): make the field a Decimal or a str" if "Int64" in error
           else ": a value beyond a float, or NaN); ask again with retry_failed=True")
    assert errors[0].endswith(fix), errors


def test_the_largest_numbers_a_column_holds_are_kept_by_value():
    schema = AnswerSchema(_Numbers)
    answers = ['{"score":1.7976931348623157e308,"n":9223372036854775807,"maybe":-5e-324}',
               '{"score":-1.5,"n":-9223372036854775808,"xs":[0.1]}']
    canonical, errors = schema.validate(answers)
    assert errors == [None, None]
    frame = pl.DataFrame({"c": canonical}).select(schema.decode(pl.col("c")))
    assert frame.to_dicts() == [
        {"score": 1.7976931348623157e308, "n": 2**63 - 1, "xs": [], "maybe": -5e-324},
        {"score": -1.5, "n": -(2**63), "xs": [0.1], "maybe": None},
    ]


def test_a_series_of_only_nulls_typed_null_is_answers_that_are_empty():
    # pl.Series([None, None]) is typed Null, not String: the fast path refused it
    canonical, errors = AnswerSchema(_Numbers).validate(pl.Series([None, None]))
    assert canonical == [None, None]
    assert errors == ["schema_validation: the answer is empty"] * 2


@pytest.mark.parametrize("schema", [AnswerSchema(None), AnswerSchema(Flat), AnswerSchema(Item)],
                         ids=["text", "fast-path", "pydantic-only"])
@pytest.mark.parametrize("as_series", [False, True], ids=["list", "series"])
def test_validate_series_gives_named_string_columns_equal_to_validate(schema, as_series) -> None:
    """The column-wise form of validate: an ``answer`` and an ``error`` String column with
    the same values, whatever came in (a list, a Series, nothing, only nulls typed Null)."""
    flat_ok = '{"label":"pos","score":0.5,"n":null,"ok":true,"note":"x"}'
    item_ok = '{"name":"a","price":"1.250","at":"2026-01-02T03:04:05Z"}'
    cases: list[list[str | None]] = [
        [], [None], [None, None], [flat_ok], [item_ok], ["plain text", None, "{"],
        [flat_ok, item_ok, None, '{"label":"pos"}', flat_ok],
    ]
    for texts in cases:
        given = pl.Series(texts, dtype=pl.String) if as_series else texts
        answer, error = schema.validate_series(given)
        assert (answer.name, answer.dtype, error.name, error.dtype) == (
            "answer", pl.String, "error", pl.String), texts
        assert (answer.to_list(), error.to_list()) == schema.validate(texts), texts
    # A Series of only nulls may come typed Null: the same answers.
    answer, error = schema.validate_series(pl.Series([None, None]))
    assert (answer.dtype, error.dtype) == (pl.String, pl.String)
    assert (answer.to_list(), error.to_list()) == schema.validate([None, None])


@pytest.mark.parametrize("text", ["null", " null", "true", "1", '"x"', "[]", "{}"])
def test_an_answer_that_is_not_an_object_fails_like_pydantic_says(text) -> None:
    """A bare JSON null (or any non-object) is not an answer: the fast path must not take
    it as canonical (its decode gives a null row that encodes back to ``null``)."""
    schema = AnswerSchema(Flat)
    assert schema._fast is not None  # the column-wise path is the one under test
    canonical, errors = schema.validate([text])
    assert canonical == [None]
    with pytest.raises(ValidationError) as refused:
        Flat.model_validate_json(text)
    assert errors == [_describe(refused.value)]


def test_a_schema_without_fields_is_refused_before_anything_is_sent(emu, tmp_path) -> None:
    from batchata_df import batch_llm

    class Empty(BaseModel):
        pass

    with pytest.raises(SchemaError, match=r"Empty has no fields.*schema=None"):
        pl.DataFrame({"text": ["a"]}).pipe(
            batch_llm, schema=Empty, model="gpt-4.1-mini", prompt="{text}", state=tmp_path / "s"
        )
    assert emu.log() == [] and emu.billing() == []
