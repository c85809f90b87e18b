"""What comes back: decoded columns equal the answered JSON, value by value.

The emulator answers every field type with varied values (datetimes and times with
offsets other than ``Z``, Decimals with up to 9 places, unicode and empty strings, empty
lists, nulls, nested models, enums). Each test reads the raw answer of every row straight
from the provider through the official SDK (the OpenAI output file, the Anthropic results
stream, the Gemini inlined responses), validates it with Pydantic and compares it with the
decoded Polars row. Error classes in ``_error`` are asserted exactly.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import os
from typing import Any, Literal

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm
from batchata_df.engine.collection import TRUNCATED_ADVICE

ROWS = 48
UTC = dt.UTC


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Inner(BaseModel):
    name: str
    tags: list[str]
    when: dt.datetime | None


class Everything(BaseModel):
    text: str
    count: int
    ratio: float
    flag: bool
    day: dt.date
    at: dt.datetime
    clock: dt.time
    price: decimal.Decimal
    kind: Literal["a", "b", "c"]
    color: Color
    maybe: int | None
    maybe_text: str | None
    words: list[str]
    numbers: list[float]
    inner: Inner
    inners: list[Inner]
    note: Inner | None


def _expected(value: Any) -> Any:
    """A validated Python value as the decoded Polars column holds it."""
    if isinstance(value, BaseModel):
        return {name: _expected(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, list):
        return [_expected(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.datetime):
        # aware -> the same instant in UTC; naive values are taken as UTC
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, dt.time):
        offset = value.utcoffset()
        naive = dt.datetime.combine(dt.date(2000, 1, 1), value.replace(tzinfo=None))
        return (naive - offset).time() if offset is not None else naive.time()
    return value


def _raw_answers_openai(batch_ids: set[str]) -> dict[str, str]:
    from openai import OpenAI

    client = OpenAI()
    out: dict[str, str] = {}
    try:
        for batch_id in batch_ids:
            batch = client.batches.retrieve(batch_id)
            assert batch.output_file_id is not None
            for line in client.files.content(batch.output_file_id).text.splitlines():
                row = json.loads(line)
                message = row["response"]["body"]["choices"][0]["message"]
                out[row["custom_id"]] = message["content"]
    finally:
        client.close()
    return out


def _raw_answers_anthropic(batch_ids: set[str]) -> dict[str, str]:
    from anthropic import Anthropic

    client = Anthropic()
    out: dict[str, str] = {}
    try:
        for batch_id in batch_ids:
            for entry in client.messages.batches.results(batch_id):
                assert entry.result.type == "succeeded"
                block = entry.result.message.content[0]
                assert block.type == "text"
                out[entry.custom_id] = block.text
    finally:
        client.close()
    return out


def _raw_answers_gemini(batch_ids: set[str]) -> dict[str, str]:
    from google import genai
    from google.genai import types

    client = genai.Client(
        api_key=os.environ["GEMINI_API_KEY"],
        http_options=types.HttpOptions(base_url=os.environ["GOOGLE_GEMINI_BASE_URL"]),
    )
    out: dict[str, str] = {}
    for batch_id in batch_ids:
        job = client.batches.get(name=batch_id)
        assert job.dest is not None and job.dest.inlined_responses
        for item in job.dest.inlined_responses:
            assert item.response is not None and item.metadata is not None
            text = item.response.text
            assert text is not None
            out[item.metadata["key"]] = text
    return out


RAW = {
    "gpt-4.1-mini": _raw_answers_openai,
    "claude-haiku-4-5": _raw_answers_anthropic,
    "gemini-2.5-flash": _raw_answers_gemini,
}


@pytest.mark.parametrize("model", list(RAW))
def test_decoded_columns_equal_the_answered_values(emu, model: str) -> None:
    frame = pl.DataFrame({"item": [f"item {i} ünïcode" for i in range(ROWS)]})
    out = frame.pipe(batch_llm, schema=Everything, model=model, prompt="Describe {item}")
    assert out["_status"].to_list() == ["completed"] * ROWS, out["_error"].to_list()
    raw = RAW[model](set(out["_batch_id"].to_list()))
    fields = list(Everything.model_fields)
    seen: dict[str, set[Any]] = {"offsets": set(), "places": set()}
    empties = nulls = unicode = 0
    for row in out.iter_rows(named=True):
        text = raw[row["_job_id"]]
        answered = Everything.model_validate_json(text)
        expected = _expected(answered)
        got = {name: row[name] for name in fields}
        assert got == expected, text
        # the answers really vary (otherwise this test could not notice a lost offset)
        plain = json.loads(text)
        seen["offsets"].add(plain["at"][19:].lstrip(".0123456789"))
        seen["places"].add(len(plain["price"].partition(".")[2]))
        empties += plain["words"] == [] or plain["numbers"] == []
        nulls += plain["maybe"] is None or plain["note"] is None
        unicode += not plain["text"].isascii() or plain["text"] == ""
    assert {"Z", "+05:30", "-08:00"} <= seen["offsets"], seen
    assert max(seen["places"]) >= 6, seen
    assert empties and nulls and unicode


def test_emulator_answers_vary_every_field_type() -> None:
    """The answer generator itself: offsets, many places, unicode, empty lists, nulls."""
    from batchata_df.emulator.answers import AnswerGenerator
    from batchata_df.schema import AnswerSchema

    schema = AnswerSchema(Everything).json_schema
    assert schema is not None
    gen = AnswerGenerator(schema)
    values = [gen.value(f"seed-{i}") for i in range(300)]
    for value in values:
        Everything.model_validate(value)  # every answer is valid for the model
    offsets = {v["at"][-6:] if v["at"][-1] != "Z" else "Z" for v in values}
    assert {"Z", "+05:30", "-08:00"} <= offsets
    clock_offsets = {v["clock"][-6:] for v in values if v["clock"][-1] != "Z"}
    assert "+05:30" in clock_offsets
    assert max(len(v["price"].partition(".")[2]) for v in values) == 9
    assert any(v["price"].startswith("-") for v in values)
    assert {"", "日本語", "café"} <= {v["text"] for v in values}
    assert any(v["words"] == [] for v in values)
    assert any(v["maybe"] is None for v in values) and any(v["note"] is None for v in values)
    assert {v["color"] for v in values} == {"red", "green", "blue"}
    assert any(len(str(v["ratio"])) > 10 for v in values)  # full double precision too


# ---- error classes, exactly

MARKERS = [
    "[[emulator:error]]",
    "[[emulator:error:400]]",
    "[[emulator:refusal]]",
    "[[emulator:invalid]]",
    "[[emulator:truncate]]",
    "fine",
]
TRUNCATED = (
    "truncated: the answer hit max_tokens=4096 before it was complete; " + TRUNCATED_ADVICE
)
# gemini-2.5-flash is a thinking model: its default max_tokens leaves room for thinking
TRUNCATED_THINKING = TRUNCATED.replace("4096", "16384")
ERRORS = {
    "gpt-4.1-mini": [
        "http_500: The server had an error while processing your request.",
        "http_400: Emulated error (HTTP 400) for this request.",
        "refusal: I'm sorry, but I can't help with that request.",
        "schema_validation: label: Field required",
        TRUNCATED,
        None,
    ],
    "claude-haiku-4-5": [
        "api_error: Emulated api_error (HTTP 500) for this request.",
        "invalid_request_error: Emulated invalid_request_error (HTTP 400) for this request.",
        "refusal: I can't help with that request.",
        "schema_validation: label: Field required",
        TRUNCATED,
        None,
    ],
    "gemini-2.5-flash": [
        "error_500: Emulated error (HTTP 500) for this request.",
        "error_400: Emulated error (HTTP 400) for this request.",
        "safety: Gemini stopped the answer (finishReason SAFETY)",  # models-prices: finish reasons
        "schema_validation: label: Field required",
        TRUNCATED_THINKING,
        None,
    ],
}


class Label(BaseModel):
    label: str


@pytest.mark.parametrize("model", list(ERRORS))
def test_error_classes_and_provider_messages_are_exact(emu, model: str) -> None:
    frame = pl.DataFrame({"text": MARKERS})
    out = frame.pipe(batch_llm, schema=Label, model=model, prompt="{text}")
    assert out["_error"].to_list() == ERRORS[model]
    assert out["_status"].to_list() == ["failed"] * 5 + ["completed"]
    assert out["label"].null_count() == 5
