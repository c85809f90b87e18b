"""Decimal answers keep every digit or fail their row naming the fix, never rounded or nulled.

A Decimal column is ``Decimal(38, 9)`` unless the field declares ``decimal_places`` (the
scale) and ``max_digits`` (the precision). What the column cannot hold (more places than
its scale, more digits before the point than it has room for) used to be cut to 9 places,
or decoded as null, silently. Now the wire schema limits the places a model may write, and
an answer that still does not fit fails its row with ``schema_validation``, naming the
declaration that keeps it.
"""

from __future__ import annotations

import decimal
import json
from typing import Annotated

import polars as pl
import pytest
from pydantic import BaseModel, Field, condecimal

from batchata_df import SchemaError, batch_llm
from batchata_df.schema import AnswerSchema

D = decimal.Decimal


class Plain(BaseModel):
    price: D


class Money(BaseModel):
    amount: D = Field(max_digits=6, decimal_places=2)


class Line(BaseModel):
    rates: list[Annotated[D, Field(decimal_places=12)]]
    fee: condecimal(decimal_places=4) | None  # type: ignore[valid-type]


class Leg(BaseModel):
    cost: D


class Order(BaseModel):
    lines: list[Line]
    legs: list[Leg]
    total: D


def decoded(schema: AnswerSchema, answers: list[str]) -> tuple[pl.DataFrame, list[str | None]]:
    canonical, errors = schema.validate(answers)
    frame = pl.DataFrame({"c": canonical}, schema={"c": pl.String}).select(
        schema.decode(pl.col("c"))
    )
    return frame, errors


def test_column_dtypes_follow_the_declared_places_and_digits() -> None:
    assert AnswerSchema(Plain).dtypes == {"price": pl.Decimal(38, 9)}
    assert AnswerSchema(Money).dtypes == {"amount": pl.Decimal(6, 2)}
    order = AnswerSchema(Order).dtypes
    assert order["total"] == pl.Decimal(38, 9)
    assert order["legs"] == pl.List(pl.Struct({"cost": pl.Decimal(38, 9)}))
    assert order["lines"] == pl.List(
        pl.Struct({"rates": pl.List(pl.Decimal(38, 12)), "fee": pl.Decimal(38, 4)})
    )


def test_the_wire_schema_limits_places_to_what_the_column_keeps() -> None:
    def pattern(schema: dict[str, object], *path: str) -> object:
        node: object = schema
        for key in path:
            assert isinstance(node, dict)
            node = node[key]
        return node

    plain = AnswerSchema(Plain).json_schema
    assert plain is not None
    assert pattern(plain, "properties", "price") == {
        "type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?$"
    }
    money = AnswerSchema(Money).json_schema
    assert money is not None
    assert pattern(money, "properties", "amount", "pattern") == r"^-?[0-9]+(\.[0-9]{1,2})?$"
    line = AnswerSchema(Line).json_schema
    assert line is not None
    assert pattern(line, "properties", "rates", "items", "pattern") == (
        r"^-?[0-9]+(\.[0-9]{1,12})?$"
    )


def test_values_that_fit_decode_exactly() -> None:
    answers = ["1.123456789", "-0.000000001", "12345678901234567890123456789.5", "7", "1.50"]
    frame, errors = decoded(AnswerSchema(Plain), [json.dumps({"price": a}) for a in answers])
    assert errors == [None] * 5
    assert frame["price"].to_list() == [D(a) for a in answers]
    assert frame["price"].dtype == pl.Decimal(38, 9)


def test_more_places_than_the_column_keeps_fail_the_row_naming_the_fix() -> None:
    frame, errors = decoded(
        AnswerSchema(Plain), ['{"price": "1.123456789123"}', '{"price": "2.5"}']
    )
    assert errors == [
        "schema_validation: price: 1.123456789123 has 12 decimal places, the "
        "Decimal(precision=38, scale=9) column keeps 9: declare the field with "
        "Field(decimal_places=12) (then reparse(): nothing is sent again)",
        None,
    ]
    assert frame["price"].to_list() == [None, D("2.5")]  # the failed row is not cut


def test_declared_places_keep_them() -> None:
    class Precise(BaseModel):
        price: D = Field(decimal_places=12)

    frame, errors = decoded(AnswerSchema(Precise), ['{"price": "1.123456789123"}'])
    assert errors == [None]
    assert frame["price"].to_list() == [D("1.123456789123")]
    assert frame["price"].dtype == pl.Decimal(38, 12)


def test_too_many_digits_before_the_point_fail_instead_of_decoding_as_null() -> None:
    too_big = "1" * 30  # 38 digits - 9 places = 29 before the point
    frame, errors = decoded(AnswerSchema(Plain), [json.dumps({"price": too_big})])
    assert errors == [
        f"schema_validation: price: {too_big} has 30 digits before the point, the "
        "Decimal(precision=38, scale=9) column holds 29: declare a larger max_digits or "
        "fewer decimal_places"
    ]
    assert frame["price"].to_list() == [None]


def test_nested_problems_are_located_as_pydantic_locates_them() -> None:
    schema = AnswerSchema(Order)
    ok = {"lines": [{"rates": ["0.123456789012"], "fee": "1.2345"}],
          "legs": [{"cost": "0.5"}], "total": "3"}
    bad_total = {"lines": [], "legs": [], "total": "0.0000000001"}
    bad_leg = {"lines": [], "legs": [{"cost": "1"}, {"cost": "2.0000000001"}], "total": "1"}
    bad_fee = {"lines": [{"rates": [], "fee": None}, {"rates": ["1"], "fee": "1.23456"}],
               "legs": [], "total": "1"}
    frame, errors = decoded(
        schema, [json.dumps(a) for a in (ok, bad_total, bad_leg, bad_fee)]
    )
    assert errors[0] is None
    assert errors[1] is not None
    assert errors[1].startswith("schema_validation: total: 0.0000000001 has 10 decimal places")
    assert errors[2] is not None
    assert errors[2].startswith("schema_validation: legs.1.cost: 2.0000000001 has 10 decimal ")
    # Pydantic enforces a declared decimal_places itself, with its own message and location.
    assert errors[3] == (
        "schema_validation: lines.1.fee: Decimal input should have no more than 4 decimal places"
    )
    assert frame["lines"].to_list()[0] == [{"rates": [D("0.123456789012")], "fee": D("1.2345")}]
    assert frame["legs"].to_list()[0] == [{"cost": D("0.5")}]
    assert frame["total"].to_list() == [D(3), None, None, None]


def test_more_than_38_digits_is_a_schema_error_naming_the_limit() -> None:
    class Huge(BaseModel):
        x: D = Field(max_digits=40, decimal_places=2)

    with pytest.raises(SchemaError, match=r"Huge\.x: a Decimal column holds at most 38 digits"):
        AnswerSchema(Huge)


def test_declared_decimals_round_trip_through_the_emulator(emu) -> None:
    """The request carries the narrowed pattern; decoded values equal the raw answers."""
    emu.configure(log_bodies=True)
    out = pl.DataFrame({"t": [f"item {i}" for i in range(6)]}).pipe(
        batch_llm, schema=Money, model="gpt-4.1-mini", prompt="{t}", keep_raw=True,
    )
    assert out["_status"].to_list() == ["completed"] * 6
    assert out["amount"].dtype == pl.Decimal(6, 2)
    raw = [D(json.loads(text)["amount"]) for text in out["_raw"].to_list()]
    assert out["amount"].to_list() == raw
    uploads = [e for e in emu.log() if e.get("lines")]
    sent = uploads[0]["lines"][0]["body"]["response_format"]["json_schema"]["schema"]
    assert sent["properties"]["amount"]["pattern"] == r"^-?[0-9]+(\.[0-9]{1,2})?$"
