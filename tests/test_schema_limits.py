"""Recursive and over-complex schemas are a SchemaError before anything is sent (issue 8.5).

What users saw: a self-referencing model raised a bare ``RecursionError``; a schema past
OpenAI's strict limits was sent, and every row failed after the batch had run. The
emulator refuses such schemas per request as OpenAI does; the client refuses them first.
"""

from __future__ import annotations

from typing import Literal

import polars as pl
import pytest
from pydantic import BaseModel, create_model

import batchata_df.frame
from batchata_df import SchemaError, batch_llm
from batchata_df.schema_limits import OPENAI_STRICT_LIMITS, measure


class Node(BaseModel):
    name: str
    children: list[Node]


class Outer(BaseModel):
    label: str
    inner: Inner | None


class Inner(BaseModel):
    back: Outer


Node.model_rebuild()
Outer.model_rebuild()


def _deep(levels: int) -> type[BaseModel]:
    """A model whose objects nest ``levels`` deep (the root is level 1)."""
    model: type[BaseModel] = create_model("Level1", leaf=(str, ...))
    for i in range(2, levels + 1):
        model = create_model(f"Level{i}", child=(model, ...))
    return model


def _run(emu, schema, model="gpt-4.1-mini", **kw):
    df = pl.DataFrame({"t": ["a", "b"]})
    return df.pipe(batch_llm, schema=schema, model=model, prompt="{t}", **kw)


@pytest.mark.parametrize("model", ["gpt-4.1-mini", "claude-haiku-4-5", "gemini-2.5-flash"])
@pytest.mark.parametrize("schema", [Node, Outer], ids=["self", "mutual"])
def test_recursive_model_is_a_schema_error_before_any_request(emu, model, schema):
    with pytest.raises(SchemaError, match="recursive") as info:
        _run(emu, schema, model=model)
    assert "fixed depth" in str(info.value)  # the fix
    assert not isinstance(info.value.__cause__, RecursionError)
    assert emu.log() == []


def test_too_deep_schema_failed_every_row_after_the_batch_ran(emu, monkeypatch):
    # Reproduces what users saw (the client check switched off): the emulator, like OpenAI,
    # refuses the schema per request once the batch runs.
    monkeypatch.setattr(batchata_df.frame, "check_schema_limits", lambda *a, **k: None)
    out = _run(emu, _deep(11))
    assert out["_status"].to_list() == ["failed", "failed"]
    assert out["_error"].str.contains("11 levels of nesting exceeds limit of 10").all()


def test_too_deep_schema_is_refused_before_spend(emu):
    with pytest.raises(SchemaError, match="11 levels deep; OpenAI .* at most 10"):
        _run(emu, _deep(11))
    assert emu.log() == []
    # Ten levels are within the limit and run; Gemini publishes no such limit.
    assert _run(emu, _deep(10))["_status"].to_list() == ["completed"] * 2
    emu.reset()
    assert _run(emu, _deep(11), model="gemini-2.5-flash")["_status"].to_list() == [
        "completed"] * 2


def test_too_many_enum_values_is_refused_before_spend(emu, monkeypatch):
    big = create_model("Big", **{f"f{i}": (Literal[tuple(f"v{j}" for j in range(101))], ...)
                                 for i in range(10)})  # 1,010 enum values
    assert measure(_schema(big)).enum_values == 1010
    with pytest.raises(SchemaError, match="1010 enum .* at most 1000"):
        _run(emu, big)
    assert emu.log() == []
    monkeypatch.setattr(batchata_df.frame, "check_schema_limits", lambda *a, **k: None)
    out = _run(emu, big)
    assert out["_error"].str.contains("at most 1000 enum values").all()


def test_too_many_properties_is_refused_before_spend(emu):
    n = OPENAI_STRICT_LIMITS["properties"] + 1
    wide = create_model("Wide", **{f"p{i}": (int, ...) for i in range(n)})
    with pytest.raises(SchemaError, match=f"{n} object properties .* at most 5000"):
        _run(emu, wide)
    assert emu.log() == []


def test_long_enum_and_total_characters_are_refused_before_spend(emu):
    long_values = tuple(f"{j:04d}" + "x" * 56 for j in range(300))  # 300 x 60 = 18,000
    one_big = create_model("OneBig", pick=(Literal[long_values], ...))
    with pytest.raises(SchemaError, match="more than 250 values totalling 18000 .* 15000"):
        _run(emu, one_big)
    many = tuple(f"{j:03d}" + "y" * 697 for j in range(200))  # 200 x 700 = 140,000
    wordy = create_model("Wordy", pick=(Literal[many], ...))
    with pytest.raises(SchemaError, match=r"140004 characters .* at most 120000"):
        _run(emu, wordy)
    assert emu.log() == []


def _schema(model):
    from batchata_df.schema import AnswerSchema

    return AnswerSchema(model).json_schema


# -- Anthropic: published complexity limits, and OpenAI's as the bound for the grammar ----

def _optional_fields(n: int, name: str = "Opt"):
    return create_model(name, **{f"f{i}": (int | None, ...) for i in range(n)})


def test_anthropic_union_typed_fields_limit_is_published_and_checked_before_spend(
    emu, monkeypatch
):
    # Every Optional[...] field is anyOf [T, null]: 17 of them pass Anthropic's 16.
    assert _run(emu, _optional_fields(16), model="claude-haiku-4-5")["_status"].to_list() == [
        "completed"] * 2
    emu.reset()
    with pytest.raises(SchemaError, match="17 fields whose type is a union .* at most 16"):
        _run(emu, _optional_fields(17), model="claude-haiku-4-5")
    assert emu.log() == []
    # What users saw without the check: every row failed after the batch ran.
    original = batchata_df.frame.check_schema_limits
    monkeypatch.setattr(batchata_df.frame, "check_schema_limits", lambda *a, **k: None)
    out = _run(emu, _optional_fields(17), model="claude-haiku-4-5")
    assert out["_status"].to_list() == ["failed", "failed"]
    assert out["_error"].str.contains("too many parameters with union types").all()
    # OpenAI and Gemini have no such limit: the same schema runs there.
    monkeypatch.setattr(batchata_df.frame, "check_schema_limits", original)
    emu.reset()
    assert _run(emu, _optional_fields(17))["_status"].to_list() == ["completed"] * 2


def test_anthropic_optional_fields_limit():
    from batchata_df.schema_limits import anthropic_counts, check_schema_limits

    props = {f"p{i}": {"type": "string"} for i in range(25)}
    schema = {"type": "object", "properties": props, "required": [],
              "additionalProperties": False}
    assert anthropic_counts(schema) == (25, 0)
    with pytest.raises(SchemaError, match="25 optional fields; Anthropic .* at most 24"):
        check_schema_limits(schema, ["anthropic"], name="Loose")
    # With citations the schema goes in the prompt: no structured-output limit applies.
    check_schema_limits(schema, ["anthropic"], name="Loose", citations=True)
    check_schema_limits(schema, ["gemini"], name="Loose")


def test_anthropic_grammar_size_is_bounded_by_openais_limits(emu):
    # Anthropic publishes no size for its compiled grammar; OpenAI's limits bound it.
    with pytest.raises(SchemaError, match="11 levels deep; Anthropic publishes no size limit"):
        _run(emu, _deep(11), model="claude-haiku-4-5")
    assert emu.log() == []
    assert _run(emu, _deep(10), model="claude-haiku-4-5")["_status"].to_list() == [
        "completed"] * 2
