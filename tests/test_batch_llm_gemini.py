"""batch_llm end to end through the official google-genai SDK against the emulator over HTTP."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import os
import subprocess
import sys
import textwrap
import time
from typing import Literal

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import CredentialsError, SchemaError, batch_llm
from batchata_df.frame import META_COLUMNS
from batchata_df.providers.base import BatchTag, RequestSpec
from batchata_df.providers.gemini import GeminiProvider, gemini_json_schema
from batchata_df.schema import AnswerSchema

MODEL = "gemini-2.5-flash"


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    city: str
    zip_code: str | None
    since: dt.date


class Everything(BaseModel):
    name: str
    count: int
    score: float
    ok: bool
    mood: Literal["positive", "negative", "neutral"]
    color: Color
    maybe: int | None
    tags: list[str]
    address: Address
    history: list[Address]
    day: dt.date
    at: dt.datetime
    price: decimal.Decimal


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    rating: int
    summary: str


def creates(emu):
    return [
        e
        for e in emu.log()
        if e["method"] == "POST" and e["path"].endswith(":batchGenerateContent")
    ]


def uploads(emu):
    return [e for e in emu.log() if "/upload/" in e["path"]]


def frame(n=5):
    return pl.DataFrame({"id": list(range(n)), "text": [f"review number {i}" for i in range(n)]})


def run(df, state=None, **kw):
    kw.setdefault("schema", Review)
    return df.pipe(batch_llm, model=MODEL, prompt="{text}", state=state, **kw)


def test_every_field_type_round_trips(emu, tmp_path):
    out = frame(4).pipe(
        batch_llm,
        schema=Everything,
        model=MODEL,
        prompt="Describe {text}",
        state=tmp_path / "s",
        system="Answer in JSON.",
    )
    expected = {
        "name": pl.String,
        "count": pl.Int64,
        "score": pl.Float64,
        "ok": pl.Boolean,
        "mood": pl.Enum(["positive", "negative", "neutral"]),
        "color": pl.Enum(["red", "blue"]),
        "maybe": pl.Int64,
        "tags": pl.List(pl.String),
        "address": pl.Struct({"city": pl.String, "zip_code": pl.String, "since": pl.Date}),
        "history": pl.List(pl.Struct({"city": pl.String, "zip_code": pl.String, "since": pl.Date})),
        "day": pl.Date,
        "at": pl.Datetime("us", "UTC"),
        "price": pl.Decimal(38, 9),
    }
    for name, dtype in expected.items():
        assert out.schema[name] == dtype, name
    assert out.columns == ["id", "text", *expected, *META_COLUMNS]
    assert out["_status"].to_list() == ["completed"] * 4
    for row in out.select(list(expected)).to_dicts():
        Everything.model_validate(row)
    assert (out["_input_tokens"] > 0).all()
    assert (out["_output_tokens"] > 0).all()
    assert out["_batch_id"].str.starts_with("batches/").all()
    assert out["_batch_id"].n_unique() == 1
    assert len(creates(emu)) == 1
    assert uploads(emu) == []  # small: sent inline
    assert creates(emu)[0]["path"] == f"/gemini/v1beta/models/{MODEL}:batchGenerateContent"


def test_text_answers_without_schema(emu):
    out = run(frame(3), schema=None, params={"temperature": 0.2, "top_k": 5, "stop": "END"})
    assert out.columns == ["id", "text", "response", *META_COLUMNS]
    assert out["response"].str.starts_with("Emulated answer").all()
    assert out["_status"].to_list() == ["completed"] * 3


def test_invalid_and_errored_rows_are_data_not_exceptions(emu):
    df = pl.DataFrame(
        {
            "text": [
                "fine",
                "[[emulator:invalid]]",
                "[[emulator:error]]",
                "[[emulator:truncate]]",
                "[[emulator:refusal]]",
                "[[emulator:error:429]]",
            ]
        }
    )
    out = run(df)
    assert out["_status"].to_list() == ["completed"] + ["failed"] * 5
    errors = out["_error"].to_list()
    assert errors[0] is None
    assert errors[1].startswith("schema_validation:")
    assert errors[2].startswith("error_500:")
    assert errors[3].startswith("truncated:")
    assert "SAFETY" in errors[4]
    assert errors[5].startswith("error_429:")
    assert out["rating"][1] is None
    assert out["rating"][0] is not None
    assert out["_input_tokens"][2] is None  # an errored request has no usage


def test_resume_sends_nothing_again(emu, tmp_path):
    state = tmp_path / "run"
    first = run(frame(6), state, items_per_batch=4)
    assert len(creates(emu)) == 2
    again = run(frame(6), state, items_per_batch=4)
    assert len(creates(emu)) == 2
    assert again.equals(first)
    more = run(frame(8), state, items_per_batch=4)
    assert len(creates(emu)) == 3
    assert more.head(6).equals(first)


def test_large_payload_goes_through_an_uploaded_file(emu, monkeypatch):
    monkeypatch.setattr(GeminiProvider, "inline_max_bytes", 500)
    out = run(frame(6), items_per_batch=4)
    assert out["_status"].to_list() == ["completed"] * 6
    assert len(creates(emu)) == 2
    assert len(uploads(emu)) == 4  # start + finalize per batch
    downloads = [e for e in emu.log() if e["path"].endswith(":download")]
    assert len(downloads) == 2
    assert [e["auth"] for e in uploads(emu)] == [True, False] * 2
    for row in out.select("sentiment", "rating", "summary").to_dicts():
        Review.model_validate(row)


def test_expired_batch_ends_rows_failed(emu, tmp_path):
    emu.configure(latency=49 * 3600)
    state = tmp_path / "slow"
    pending = run(frame(2), state, wait=False)
    assert pending["_status"].to_list() == ["pending"] * 2
    emu.advance(48 * 3600 + 1)
    out = run(frame(2), state)
    assert out["_status"].to_list() == ["failed"] * 2
    assert out["_error"].str.starts_with("expired:").all()
    assert len(creates(emu)) == 1


def test_time_limit_cancels_the_batch(emu, engine_clock):
    emu.configure(latency=60)
    out = run(frame(3), time_limit=0.5)
    assert out["_status"].to_list() == ["cancelled"] * 3
    assert out["_error"].str.contains("time_limit").all()
    assert [e["path"].endswith(":cancel") for e in emu.log() if e["method"] == "POST"] == [
        False,
        True,
    ]


def test_transient_server_errors_are_retried(emu, monkeypatch):
    monkeypatch.setattr(GeminiProvider, "retry_initial_delay", 0.01)
    monkeypatch.setattr(GeminiProvider, "retry_max_delay", 0.05)
    emu.inject_fault(method="POST", path_regex=r":batchGenerateContent", status=503, times=2)
    out = run(frame(2))
    assert out["_status"].to_list() == ["completed"] * 2
    assert [e["status"] for e in creates(emu)] == [503, 503, 200]


def test_missing_key_is_a_caller_error(emu, monkeypatch, tmp_path):
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(CredentialsError, match="GEMINI_API_KEY"):
        run(frame(1))
    assert emu.log() == []


def test_schema_is_rewritten_to_the_gemini_subset():
    allowed = {
        "$id",
        "$defs",
        "$ref",
        "$anchor",
        "type",
        "format",
        "title",
        "description",
        "enum",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "minimum",
        "maximum",
        "anyOf",
        "oneOf",
        "properties",
        "additionalProperties",
        "required",
        "propertyOrdering",
        "pattern",
        "minLength",
        "maxLength",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "uniqueItems",
    }

    def walk(node, inside_properties=False):
        if isinstance(node, dict):
            if not inside_properties:
                assert set(node) <= allowed, set(node) - allowed
                if "$ref" in node:
                    assert set(node) == {"$ref"}
            for key, value in node.items():
                if key in ("properties", "$defs"):
                    for sub in value.values():
                        walk(sub)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    schema = gemini_json_schema(AnswerSchema(Everything).json_schema)
    walk(schema)
    assert schema["propertyOrdering"] == list(Everything.model_fields)
    config = GeminiProvider(api_key="k").generation_config(
        RequestSpec(AnswerSchema(Review), {"max_tokens": 10, "stop": "x", "seed": 1})
    )
    assert '"maxOutputTokens":10' in config
    assert '"stopSequences":["x"]' in config
    assert '"responseMimeType":"application/json"' in config


def test_recursive_schema_is_refused():
    schema = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
            }
        },
        "$ref": "#/$defs/Node",
    }
    with pytest.raises(SchemaError, match="recursive"):
        gemini_json_schema(schema)


def test_import_does_not_load_the_sdk():
    code = "import sys, batchata_df; print('google.genai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


SCRIPT = textwrap.dedent(
    """
    import sys, polars as pl
    from typing import Literal
    from pydantic import BaseModel
    from batchata_df import batch_llm

    class Review(BaseModel):
        sentiment: Literal["positive", "negative", "neutral"]
        rating: int
        summary: str

    df = pl.DataFrame({"text": [f"review {i}" for i in range(7)]})
    out = df.pipe(batch_llm, schema=Review, model="gemini-2.5-flash", prompt="{text}",
                  state=sys.argv[1], items_per_batch=3)
    print("FINISHED", out["_status"].to_list())
    """
)


def test_crash_between_create_and_checkpoint_finds_the_orphan(emu, tmp_path):
    emu.configure(latency=0.5)
    state = tmp_path / "orphan"
    script = tmp_path / "child.py"
    script.write_text(SCRIPT)
    child = subprocess.run(
        [sys.executable, str(script), str(state)],
        env={**os.environ, "BATCHATA_DF_FAILPOINT": "after_submit"},
        capture_output=True,
        timeout=240,
        check=False,
    )
    assert child.returncode != 0, child.stderr
    assert b"FINISHED" not in child.stdout
    assert len(creates(emu)) == 1  # Gemini accepted one batch; we never recorded its name
    df = pl.DataFrame({"text": [f"review {i}" for i in range(7)]})
    out = df.pipe(
        batch_llm, schema=Review, model=MODEL, prompt="{text}", state=state, items_per_batch=3
    )
    assert out["_status"].to_list() == ["completed"] * 7
    assert len(creates(emu)) == 3  # the orphan was re-attached: two more, not three
    listed = [e for e in emu.log() if e["method"] == "GET" and e["path"].endswith("/batches")]
    assert listed, "resume must list batches to look for the orphan"
    orphan_batch = out["_batch_id"][0]
    assert (out["_batch_id"] == orphan_batch).sum() == 3


def test_a_running_batch_reports_its_request_counts_from_batch_stats(emu):
    emu.configure(latency=100)
    provider = GeminiProvider()
    spec = RequestSpec(AnswerSchema(None), {"max_tokens": 50})
    jobs = pl.DataFrame({
        "job_id": ["a", "b", "c"], "model": [MODEL] * 3, "system": [None] * 3,
        "prompt": ["x", "[[emulator:error:400]] y", "z"],
    })
    tag = BatchTag("run", "k1", time.time(), n_jobs=3)
    batch_id = provider.submit(provider.encode(jobs, spec), model=MODEL, tag=tag)
    seen = [provider.poll(batch_id).counts]
    # Counts move in steps of 30 s of simulated time: each poll is 10 s or more from the
    # next step, so real seconds passing on a slow host do not change what it sees.
    for step in (50, 40):
        emu.advance(step)
        seen.append(provider.poll(batch_id).counts)
    emu.advance(10)
    ended = provider.poll(batch_id)
    provider.close()
    assert seen == [
        {"total": 3, "pending": 3, "completed": 0, "failed": 0},
        {"total": 3, "pending": 2, "completed": 1, "failed": 0},
        {"total": 3, "pending": 1, "completed": 1, "failed": 1},
    ]
    assert ended.counts == {}  # only a running batch is counted
