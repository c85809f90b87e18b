"""The emulator's OpenAI Batch protocol, driven through the official openai SDK over HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, Literal

import openai
import pytest
from openai import OpenAI
from openai.lib._parsing._completions import type_to_response_format_param
from openai.lib._parsing._responses import type_to_text_format_param
from openai.types import Batch, FileObject
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from batchata_df.emulator import Emulator, EmulatorError, answers
from batchata_df.emulator.model_rules import THOUGHT_TOKENS
from batchata_df.emulator.openai_api import parse_multipart

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MODEL = "gpt-6-luna"


# --------------------------------------------------------------------------------------
# Answer models: nested objects, arrays, enums, nullable, dates, decimals


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str
    zip_code: str | None


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    qty: int = Field(ge=1, le=10)
    price: float


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["open", "closed", "pending"]
    priority: Priority
    placed_on: dt.date
    updated_at: dt.datetime
    total: Decimal
    tags: list[str]
    items: list[Item]
    address: Address | None
    notes: str | None
    paid: bool


class Review(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sentiment: Literal["positive", "negative", "neutral"]
    rating: int
    summary: str


def chat_format(model: type[BaseModel]) -> dict[str, Any]:
    return dict(type_to_response_format_param(model))  # type: ignore[arg-type]


def text_format(model: type[BaseModel]) -> dict[str, Any]:
    return dict(type_to_text_format_param(model))


def chat_line(
    custom_id: str,
    prompt: str,
    *,
    schema: type[BaseModel] | None = Order,
    model: str = MODEL,
    url: str = CHAT,
    **body: Any,
) -> dict[str, Any]:
    request: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if schema is not None:
        request["response_format"] = chat_format(schema)
    request.update(body)
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": request}


def responses_line(
    custom_id: str, prompt: str, *, schema: type[BaseModel] | None = Order, **body: Any
) -> dict[str, Any]:
    request: dict[str, Any] = {"model": MODEL, "input": prompt}
    if schema is not None:
        request["text"] = {"format": text_format(schema)}
    request.update(body)
    return {"custom_id": custom_id, "method": "POST", "url": RESPONSES, "body": request}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


# --------------------------------------------------------------------------------------
# Fixtures and helpers


DEFAULTS: dict[str, Any] = {
    "latency": 0.0,
    "cancel_delay": 0.0,
    "cancel_unfinished": "error_file",
    "openai": {"max_requests": 50_000, "max_file_bytes": 200 * 1024 * 1024},
}


@pytest.fixture
def oa(emulator: Emulator) -> Iterator[OpenAI]:
    """The session emulator, reset to defaults, and an SDK client pointed at it.

    The settings are restored afterwards too: other test files share the emulator.
    """
    emulator.reset()
    emulator.clear_faults()
    emulator.configure(**DEFAULTS)
    client = OpenAI(api_key="sk-test", base_url=emulator.openai_base_url, max_retries=2)
    yield client
    client.close()
    emulator.clear_faults()
    emulator.configure(**DEFAULTS)


def submit(
    client: OpenAI,
    lines: list[dict[str, Any]],
    endpoint: str = CHAT,
    metadata: dict[str, str] | None = None,
) -> Batch:
    upload = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=upload.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata=metadata,
    )


def raw_batch(client: OpenAI, batch_id: str) -> Batch:
    """Retrieve a batch and validate the raw JSON (not an SDK-constructed object)."""
    raw = client.batches.with_raw_response.retrieve(batch_id)
    data = json.loads(raw.content)
    return Batch.model_validate(data, strict=True)


def read_lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    assert text.endswith("\n")
    assert "\n\n" not in text, "no blank lines: JSONL decoders choke on them"
    return [json.loads(line) for line in text.splitlines()]


def by_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {line["custom_id"]: line for line in lines}


def http(
    emu: Emulator,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """A raw request with urllib (no SDK), returning status, headers and parsed JSON."""
    request = urllib.request.Request(
        emu.url + path, data=body, method=method, headers=headers or {}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), json.loads(e.read() or b"null")


# --------------------------------------------------------------------------------------
# Lifecycle and strict shapes


def test_chat_batch_full_lifecycle(oa: OpenAI, emulator: Emulator) -> None:
    lines = [chat_line(f"row-{i}", f"Describe order number {i} in detail.") for i in range(25)]
    created = submit(oa, lines, metadata={"job": "lifecycle"})
    assert created.status == "validating"
    assert created.metadata == {"job": "lifecycle"}

    batch = raw_batch(oa, created.id)
    assert batch.status == "completed"
    assert batch.model == MODEL
    assert batch.metadata == {"job": "lifecycle"}
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (25, 25)
    assert batch.request_counts.failed == 0
    assert batch.error_file_id is None
    assert batch.in_progress_at
    assert batch.finalizing_at
    assert batch.completed_at

    out = read_lines(oa, batch.output_file_id)
    assert sorted(line["custom_id"] for line in out) == sorted(f"row-{i}" for i in range(25))
    prompt_tokens = completion_tokens = 0
    for line in out:
        assert line["id"].startswith("batch_req_")
        assert line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200
        assert response["request_id"].startswith("req_")
        completion = ChatCompletion.model_validate(response["body"], strict=True)
        assert completion.model == MODEL
        choice = completion.choices[0]
        assert choice.finish_reason == "stop"
        assert choice.message.content is not None
        Order.model_validate_json(choice.message.content)  # the answer obeys the schema
        usage = completion.usage
        assert usage is not None
        assert usage.prompt_tokens > 0
        assert usage.completion_tokens > 0
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        assert usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == 0
        assert usage.completion_tokens_details is not None
        # gpt-6-luna reasons by default (medium effort): reasoning is inside the completion.
        assert usage.completion_tokens_details.reasoning_tokens == THOUGHT_TOKENS["medium"]
        assert usage.completion_tokens > THOUGHT_TOKENS["medium"]
        prompt_tokens += usage.prompt_tokens
        completion_tokens += usage.completion_tokens
    assert batch.usage is not None
    assert batch.usage.input_tokens == prompt_tokens
    assert batch.usage.output_tokens == completion_tokens
    assert batch.usage.total_tokens == prompt_tokens + completion_tokens

    posts = [e for e in emulator.log() if e["method"] == "POST"]
    assert [e["path"] for e in posts] == ["/openai/v1/files", "/openai/v1/batches"]


def test_responses_batch_full_lifecycle(oa: OpenAI) -> None:
    lines = [responses_line(f"r{i}", f"Summarise order {i}.") for i in range(10)]
    lines.append(responses_line("plain", "Say something.", schema=None, instructions="Be brief."))
    batch = submit(oa, lines, RESPONSES)
    batch = raw_batch(oa, batch.id)
    assert batch.status == "completed"
    assert batch.endpoint == RESPONSES
    out = by_id(read_lines(oa, batch.output_file_id))
    assert len(out) == 11
    for custom_id, line in out.items():
        response = Response.model_validate(line["response"]["body"], strict=True)
        assert response.status == "completed"
        assert response.usage is not None
        assert response.usage.input_tokens_details.cached_tokens == 0
        # gpt-6-luna reasons by default (medium effort), inside the output tokens.
        assert response.usage.output_tokens_details.reasoning_tokens == THOUGHT_TOKENS["medium"]
        assert response.usage.total_tokens == (
            response.usage.input_tokens + response.usage.output_tokens
        )
        if custom_id == "plain":
            assert response.output_text
            assert not response.output_text.startswith("{")
            assert response.instructions == "Be brief."
        else:
            Order.model_validate_json(response.output_text)
            assert response.text is not None
            assert response.text.format is not None
            assert response.text.format.type == "json_schema"


def test_answers_are_deterministic_and_plain_text_without_schema(oa: OpenAI) -> None:
    lines = [chat_line(f"t{i}", f"Tell me about topic {i}.", schema=None) for i in range(5)]
    lines += [chat_line(f"s{i}", f"Review {i}: great product.", schema=Review) for i in range(5)]
    first = by_id(read_lines(oa, raw_batch(oa, submit(oa, lines).id).output_file_id))
    second = by_id(read_lines(oa, raw_batch(oa, submit(oa, lines).id).output_file_id))

    def content(line: dict[str, Any]) -> str:
        return str(line["response"]["body"]["choices"][0]["message"]["content"])

    assert {k: content(v) for k, v in first.items()} == {k: content(v) for k, v in second.items()}
    for i in range(5):
        text = content(first[f"t{i}"])
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)
        Review.model_validate_json(content(first[f"s{i}"]))


def test_magic_markers(oa: OpenAI) -> None:
    lines = [
        chat_line("ok", "A normal order."),
        chat_line("err", "Break this one [[emulator:error]]"),
        chat_line("err400", "Reject this one [[emulator:error:400]]"),
        chat_line("bad", "Answer wrongly [[emulator:invalid]]"),
        chat_line("cut", "Run out of tokens [[emulator:truncate]]"),
        chat_line("no", "Refuse [[emulator:refusal]]"),
    ]
    batch = raw_batch(oa, submit(oa, lines).id)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (4, 2)
    out = by_id(read_lines(oa, batch.output_file_id))
    errors = by_id(read_lines(oa, batch.error_file_id))
    assert set(out) == {"ok", "bad", "cut", "no"}
    assert set(errors) == {"err", "err400"}

    server_error = errors["err"]
    assert server_error["error"] is None
    assert server_error["id"].startswith("batch_req_")
    assert server_error["response"]["status_code"] == 500
    assert server_error["response"]["body"]["error"]["code"] == "server_error"
    assert server_error["response"]["body"]["error"]["type"] == "server_error"
    assert errors["err400"]["response"]["status_code"] == 400
    assert errors["err400"]["response"]["body"]["error"]["type"] == "invalid_request_error"

    def message(custom_id: str) -> Any:
        body = ChatCompletion.model_validate(out[custom_id]["response"]["body"], strict=True)
        return body.choices[0]

    Order.model_validate_json(message("ok").message.content or "")
    invalid = message("bad").message.content or ""
    json.loads(invalid)  # parses ...
    with pytest.raises(ValidationError):  # ... but does not validate
        Order.model_validate_json(invalid)
    truncated = message("cut")
    assert truncated.finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(truncated.message.content or "")
    refused = message("no")
    assert refused.message.content is None
    assert refused.message.refusal


def test_markers_on_responses(oa: OpenAI) -> None:
    lines = [
        responses_line("cut", "[[emulator:truncate]] order"),
        responses_line("no", "[[emulator:refusal]]"),
        responses_line("err", "[[emulator:error]]"),
    ]
    batch = raw_batch(oa, submit(oa, lines, RESPONSES).id)
    out = by_id(read_lines(oa, batch.output_file_id))
    cut = Response.model_validate(out["cut"]["response"]["body"], strict=True)
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.output_text)
    refusal = Response.model_validate(out["no"]["response"]["body"], strict=True)
    assert refusal.output[0].type == "message"
    assert refusal.output[0].content[0].type == "refusal"
    assert [e["custom_id"] for e in read_lines(oa, batch.error_file_id)] == ["err"]


def test_max_tokens_caps_the_answer(oa: OpenAI) -> None:
    lines = [chat_line("short", "Long answer please.", max_completion_tokens=3)]
    batch = raw_batch(oa, submit(oa, lines).id)
    body = ChatCompletion.model_validate(
        read_lines(oa, batch.output_file_id)[0]["response"]["body"]
    )
    assert body.choices[0].finish_reason == "length"
    assert body.usage is not None
    assert body.usage.completion_tokens == 3


def test_request_body_errors_are_per_request_not_batch_failures(oa: OpenAI) -> None:
    no_messages = chat_line("x", "ignored")
    del no_messages["body"]["messages"]
    batch = raw_batch(oa, submit(oa, [no_messages, chat_line("y", "fine")]).id)
    assert batch.status == "completed"
    (line,) = read_lines(oa, batch.error_file_id)
    assert line["custom_id"] == "x"
    assert line["response"]["status_code"] == 400
    assert line["response"]["body"]["error"]["param"] == "messages"


_LOOSE_SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
    "required": ["a"],
}
_STRICT_SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "string"}},
    "required": ["a"],
    "additionalProperties": False,
}
_USER = [{"role": "user", "content": "hi"}]


def _chat_body(**body: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": _USER, **body}


def _rf(schema: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"strict": True, "schema": schema, **spec}}


# The real API rejects each of these bodies with a 400 error-file line.
@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (_chat_body(bogus_param=1), "unknown_parameter", "bogus_param"),
        (_chat_body(temperature="hot"), "invalid_type", "temperature"),
        (_chat_body(temperature=9), "decimal_above_max_value", "temperature"),
        (_chat_body(top_p=-0.1), "decimal_below_min_value", "top_p"),
        (_chat_body(max_tokens=-3), "integer_below_min_value", "max_tokens"),
        (_chat_body(max_completion_tokens=0), "integer_below_min_value", "max_completion_tokens"),
        (
            _chat_body(messages=[{"role": "wizard", "content": "hi"}]),
            "invalid_value",
            "messages[0].role",
        ),
        (
            _chat_body(messages=[{"role": "user", "content": "hi", "nick": "x"}]),
            "unknown_parameter",
            "messages[0].nick",
        ),
        (
            _chat_body(messages=[{"role": "user", "content": [{"type": "txt", "text": "a"}]}]),
            "invalid_value",
            "messages[0].content[0].type",
        ),
        (_chat_body(messages=[]), "empty_array", "messages"),
        (
            _chat_body(response_format=_rf(_STRICT_SCHEMA)),
            "missing_required_parameter",
            "response_format.json_schema.name",
        ),
        (
            _chat_body(response_format=_rf(_STRICT_SCHEMA, name="bad name!")),
            "invalid_value",
            "response_format.json_schema.name",
        ),
        (
            _chat_body(response_format=_rf(_LOOSE_SCHEMA, name="x")),
            "invalid_json_schema",
            "response_format",
        ),
        (
            _chat_body(
                response_format=_rf(
                    {**_STRICT_SCHEMA, "properties": {"a": {"type": "string", "minLength": 2}}},
                    name="x",
                )
            ),
            "invalid_json_schema",
            "response_format",
        ),
        (
            _chat_body(response_format=_rf({"type": "array", "items": {}}, name="x")),
            "invalid_json_schema",
            "response_format",
        ),
        (_chat_body(response_format={"type": "json_object"}), "invalid_value", "messages"),
        (_chat_body(response_format={"type": "yaml"}), "invalid_value", "response_format.type"),
    ],
    ids=[
        "unknown-key",
        "temperature-type",
        "temperature-range",
        "top-p-range",
        "max-tokens",
        "max-completion-tokens",
        "role",
        "message-key",
        "part-type",
        "no-messages",
        "schema-name-missing",
        "schema-name-pattern",
        "strict-not-closed",
        "strict-keyword",
        "strict-root-array",
        "json-object-without-json",
        "format-type",
    ],
)
def test_chat_bodies_the_real_api_rejects(
    oa: OpenAI, body: dict[str, Any], code: str, param: str
) -> None:
    line = {"custom_id": "bad", "method": "POST", "url": CHAT, "body": body}
    good = chat_line("good", "fine", schema=Review)
    batch = raw_batch(oa, submit(oa, [line, good]).id)
    assert batch.status == "completed", batch.errors
    (err,) = read_lines(oa, batch.error_file_id)
    assert err["custom_id"] == "bad"
    assert err["response"]["status_code"] == 400
    error = err["response"]["body"]["error"]
    assert (error["code"], error["param"], error["type"]) == (
        code,
        param,
        "invalid_request_error",
    ), error
    assert error["message"]
    assert [o["custom_id"] for o in read_lines(oa, batch.output_file_id)] == ["good"]


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"model": MODEL, "input": "hi", "bogus": 1}, "unknown_parameter", "bogus"),
        (
            {"model": MODEL, "input": "hi", "max_output_tokens": 5},
            "integer_below_min_value",
            "max_output_tokens",
        ),
        (
            {
                "model": MODEL,
                "input": "hi",
                "text": {"format": {"type": "json_schema", "schema": _STRICT_SCHEMA}},
            },
            "missing_required_parameter",
            "text.format.name",
        ),
        (
            {
                "model": MODEL,
                "input": "hi",
                "text": {
                    "format": {
                        "type": "json_schema",
                        "name": "x",
                        "strict": True,
                        "schema": _LOOSE_SCHEMA,
                    }
                },
            },
            "invalid_json_schema",
            "text.format.schema",
        ),
        (
            {"model": MODEL, "input": [{"role": "user", "content": "hi", "extra": 1}]},
            "unknown_parameter",
            "input[0].extra",
        ),
        (
            {"model": MODEL, "input": "hi", "text": {"format": {"type": "json_object"}}},
            "invalid_value",
            "input",
        ),
    ],
    ids=["unknown-key", "max-output-tokens", "no-name", "strict", "item-key", "json"],
)
def test_responses_bodies_the_real_api_rejects(
    oa: OpenAI, body: dict[str, Any], code: str, param: str
) -> None:
    line = {"custom_id": "bad", "method": "POST", "url": RESPONSES, "body": body}
    batch = raw_batch(oa, submit(oa, [line, responses_line("ok", "fine")], RESPONSES).id)
    (err,) = read_lines(oa, batch.error_file_id)
    error = err["response"]["body"]["error"]
    assert (error["code"], error["param"], error["type"]) == (
        code,
        param,
        "invalid_request_error",
    ), error


def test_valid_bodies_still_pass(oa: OpenAI) -> None:
    rich = _chat_body(
        messages=[
            {"role": "system", "content": "be terse"},
            {"role": "user", "content": [{"type": "text", "text": "reply in json"}], "name": "u"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "again"},
        ],
        temperature=0,
        top_p=1,
        reasoning_effort="none",  # gpt-6-luna takes sampling parameters only with this
        max_completion_tokens=50,
        seed=3,
        response_format={"type": "json_object"},
        metadata=None,
    )
    loose = _chat_body(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "loose", "schema": _LOOSE_SCHEMA},
        }
    )
    lines = [
        {"custom_id": "rich", "method": "POST", "url": CHAT, "body": rich},
        {"custom_id": "loose", "method": "POST", "url": CHAT, "body": loose},
        chat_line("lib", "x", schema=Order),
    ]
    batch = raw_batch(oa, submit(oa, lines).id)
    assert batch.error_file_id is None, read_lines(oa, batch.error_file_id)
    assert len(read_lines(oa, batch.output_file_id)) == 3


def _multipart(fields: dict[str, str], filename: str = "a.jsonl") -> bytes:
    out = b""
    for name, value in fields.items():
        out += (f'--X\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n').encode()
    out += (
        f'--X\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n\r\n'
    ).encode()
    return out + b"{}\n\r\n--X--\r\n"


@pytest.mark.parametrize(
    ("fields", "filename", "code", "param"),
    [
        ({"purpose": "batch"}, "in.txt", "invalid_file_format", "file"),
        (
            {
                "purpose": "batch",
                "expires_after[anchor]": "bogus",
                "expires_after[seconds]": "3600",
            },
            "a.jsonl",
            "invalid_value",
            "expires_after.anchor",
        ),
        (
            {
                "purpose": "batch",
                "expires_after[anchor]": "created_at",
                "expires_after[seconds]": "-5",
            },
            "a.jsonl",
            "integer_below_min_value",
            "expires_after.seconds",
        ),
        (
            {
                "purpose": "batch",
                "expires_after[anchor]": "created_at",
                "expires_after[seconds]": "2592001",
            },
            "a.jsonl",
            "integer_above_max_value",
            "expires_after.seconds",
        ),
    ],
    ids=["txt", "anchor", "seconds-low", "seconds-high"],
)
def test_uploads_the_real_api_rejects(
    oa: OpenAI, emulator: Emulator, fields: dict[str, str], filename: str, code: str, param: str
) -> None:
    status, headers, body = http(
        emulator,
        "POST",
        "/openai/v1/files",
        _multipart(fields, filename),
        {"authorization": "Bearer sk-test", "content-type": "multipart/form-data; boundary=X"},
    )
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert (body["error"]["code"], body["error"]["param"]) == (code, param)
    assert headers["x-request-id"].startswith("req_")
    if filename == "in.txt":
        assert body["error"]["message"] == "Invalid file format for Batch API. Must be .jsonl"


def test_upload_with_valid_expiry(oa: OpenAI) -> None:
    raw = oa.files.with_raw_response.create(
        file=("in.jsonl", jsonl([chat_line("a", "x")])),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    data = json.loads(raw.http_response.text)
    FileObject.model_validate(data, strict=True)
    assert data["expires_at"] == data["created_at"] + 3600
    assert raw.http_response.headers["x-request-id"]


def test_create_rejects_unknown_and_missing_arguments(oa: OpenAI, emulator: Emulator) -> None:
    upload = oa.files.create(file=("in.jsonl", jsonl([chat_line("a", "x")])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as info:
        oa.batches.create(
            input_file_id=upload.id,
            endpoint=CHAT,
            completion_window="24h",
            extra_body={"totally_unknown": True},
        )
    error = info.value.body
    assert isinstance(error, dict)
    assert error["message"] == "Unrecognized request argument supplied: totally_unknown"
    assert error["type"] == "invalid_request_error"
    headers = {"authorization": "Bearer sk-test", "content-type": "application/json"}
    status, _h, body = http(
        emulator,
        "POST",
        "/openai/v1/batches",
        json.dumps({"endpoint": CHAT, "completion_window": "24h"}).encode(),
        headers,
    )
    assert status == 400
    assert body["error"]["code"] == "missing_required_parameter"
    assert body["error"]["param"] == "input_file_id"
    # Every 4xx is an invalid_request_error; every answer carries x-request-id.
    status, h, body = http(emulator, "GET", "/openai/v1/batches/batch_x/cancel", None, headers)
    assert status == 405
    assert body["error"]["type"] == "invalid_request_error"
    assert h["x-request-id"]
    status, h, _ = http(emulator, "GET", "/openai/v1/batches", None, headers)
    assert status == 200
    assert h["x-request-id"].startswith("req_")


def test_raw_file_and_batch_objects_validate_strictly(oa: OpenAI, emulator: Emulator) -> None:
    emulator.configure(latency=100)
    raw = oa.files.with_raw_response.create(
        file=("in.jsonl", jsonl([chat_line("a", "x")])), purpose="batch"
    )
    upload = FileObject.model_validate(json.loads(raw.http_response.text), strict=True)
    raw = oa.batches.with_raw_response.create(
        input_file_id=upload.id, endpoint=CHAT, completion_window="24h"
    )
    created = Batch.model_validate(json.loads(raw.http_response.text), strict=True)
    assert created.status == "validating"
    raw = oa.batches.with_raw_response.cancel(created.id)
    cancelled = Batch.model_validate(json.loads(raw.http_response.text), strict=True)
    assert cancelled.status == "cancelling"
    FileObject.model_validate(
        json.loads(oa.files.with_raw_response.retrieve(upload.id).http_response.text),
        strict=True,
    )


@pytest.mark.parametrize(
    "model", ["emulator-unknown-model", "claude-haiku-4-5", "gemini-2.5-flash", "gpt-4.1-mimi"]
)
def test_a_model_openai_does_not_serve_fails_the_batch_in_validation(
    oa: OpenAI, model: str
) -> None:
    # Another provider's model, a typo and the magic name alike: the whole batch fails
    # while validating (model_not_found on the first line naming it), nothing runs.
    lines = [chat_line(f"r{i}", "x", model=model) for i in range(2)]
    batch = raw_batch(oa, submit(oa, lines).id)
    assert batch.status == "failed"
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.request_counts is not None and batch.request_counts.total == 0
    assert batch.errors is not None and batch.errors.data is not None
    assert [e.model_dump() for e in batch.errors.data] == [{
        "code": "model_not_found",
        "line": 1,
        "message": f"The provided model '{model}' is not supported by the Batch API.",
        "param": "body.model",
    }]


@pytest.mark.parametrize(
    "model", ["gpt-4.1-mini-2025-04-14", "ft:gpt-4.1-mini-2025-04-14:acme::abc123", "o3"]
)
def test_dated_snapshots_and_fine_tunes_of_served_models_run(oa: OpenAI, model: str) -> None:
    batch = raw_batch(oa, submit(oa, [chat_line("r0", "x", model=model, schema=None)]).id)
    assert batch.status == "completed", batch.errors
    assert batch.request_counts is not None and batch.request_counts.completed == 1


def test_real_time_call_with_an_unserved_model_is_a_404(oa: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oa.chat.completions.create(
            model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 404
    assert info.value.body == {
        "message": "The model `claude-haiku-4-5` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }


# --------------------------------------------------------------------------------------
# Input validation


@pytest.mark.parametrize(
    ("mutate", "code", "line", "param"),
    [
        (lambda ls: ls[2].update(custom_id="r0"), "duplicate_custom_id", 3, "custom_id"),
        (lambda ls: ls[1]["body"].update(model="gpt-other"), "model_mismatch", 2, "body.model"),
        (lambda ls: ls[2].update(url=RESPONSES), "url_mismatch", 3, "url"),
        (lambda ls: ls[0]["body"].update(stream=True), "stream_unsupported", 1, "body.stream"),
        (lambda ls: ls[1].pop("custom_id"), "missing_required_parameter", 2, "custom_id"),
        (lambda ls: ls[1].update(method="GET"), "invalid_method", 2, "method"),
    ],
    ids=["duplicate", "two-models", "url", "stream", "no-custom-id", "method"],
)
def test_input_rejections(oa: OpenAI, mutate: Any, code: str, line: int, param: str) -> None:
    lines = [chat_line(f"r{i}", f"prompt {i}", schema=Review) for i in range(4)]
    mutate(lines)
    batch = submit(oa, lines)
    assert batch.status == "validating"
    batch = raw_batch(oa, batch.id)
    assert batch.status == "failed"
    assert batch.failed_at is not None
    assert batch.output_file_id is None
    assert batch.error_file_id is None
    assert batch.errors is not None
    assert batch.errors.data
    error = batch.errors.data[0]
    assert (error.code, error.line, error.param) == (code, line, param)
    assert error.message


def test_malformed_json_line(oa: OpenAI) -> None:
    good = jsonl([chat_line("a", "x", schema=Review)])
    upload = oa.files.create(
        file=("in.jsonl", good + b'{"custom_id": "b", oops\n'), purpose="batch"
    )
    batch = oa.batches.create(input_file_id=upload.id, endpoint=CHAT, completion_window="24h")
    batch = raw_batch(oa, batch.id)
    assert batch.status == "failed"
    assert batch.errors is not None
    assert batch.errors.data is not None
    assert (batch.errors.data[0].code, batch.errors.data[0].line) == ("invalid_json_line", 2)


def test_more_than_50000_requests_fail(oa: OpenAI) -> None:
    base = chat_line("x", "hi", schema=None)
    lines = [{**base, "custom_id": f"c{i}"} for i in range(50_001)]
    batch = raw_batch(oa, submit(oa, lines).id)
    assert batch.status == "failed"
    assert batch.errors is not None
    assert batch.errors.data is not None
    assert batch.errors.data[0].code == "too_many_tasks"
    assert "50000" in (batch.errors.data[0].message or "")


def test_file_over_the_size_limit_fails(oa: OpenAI, emulator: Emulator) -> None:
    emulator.configure(openai={"max_file_bytes": 1000})
    lines = [chat_line(f"r{i}", "x" * 200, schema=None) for i in range(10)]
    batch = raw_batch(oa, submit(oa, lines).id)
    assert batch.status == "failed"
    assert batch.errors is not None
    assert batch.errors.data is not None
    assert batch.errors.data[0].code == "file_too_large"


def test_create_errors_use_the_openai_envelope(oa: OpenAI) -> None:
    upload = oa.files.create(file=("in.jsonl", jsonl([chat_line("a", "x")])), purpose="batch")
    with pytest.raises(openai.NotFoundError) as missing:
        oa.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    assert missing.value.status_code == 404
    assert isinstance(missing.value.body, dict)
    assert missing.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as window:
        oa.batches.create(input_file_id=upload.id, endpoint=CHAT, completion_window="48h")  # type: ignore[arg-type]
    assert isinstance(window.value.body, dict)
    assert window.value.body["param"] == "completion_window"
    with pytest.raises(openai.BadRequestError) as endpoint:
        oa.batches.create(input_file_id=upload.id, endpoint="/v1/nothing", completion_window="24h")  # type: ignore[arg-type]
    assert isinstance(endpoint.value.body, dict)
    assert endpoint.value.body["param"] == "endpoint"
    with pytest.raises(openai.NotFoundError):
        oa.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        oa.files.content("file-nope")


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
    ],
    ids=["17-pairs", "long-key", "long-value"],
)
def test_metadata_limits(oa: OpenAI, metadata: dict[str, str]) -> None:
    upload = oa.files.create(file=("in.jsonl", jsonl([chat_line("a", "x")])), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        oa.batches.create(
            input_file_id=upload.id, endpoint=CHAT, completion_window="24h", metadata=metadata
        )


def test_metadata_at_the_limits_is_echoed(oa: OpenAI) -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    batch = submit(oa, [chat_line("a", "x")], metadata=metadata)
    assert batch.metadata == metadata
    assert raw_batch(oa, batch.id).metadata == metadata
    listed = oa.batches.list(limit=1).data[0]
    assert listed.metadata == metadata


# --------------------------------------------------------------------------------------
# Listing, cancel, latency, expiry


def test_list_pagination_newest_first(oa: OpenAI, emulator: Emulator) -> None:
    ids = [submit(oa, [chat_line("a", f"batch {i}", schema=None)]).id for i in range(5)]
    page = oa.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2]
    assert page.has_more is True
    assert page.first_id == ids[4]
    assert page.last_id == ids[3]
    assert [b.id for b in page] == ids[::-1]  # auto-pagination follows `after`
    status, _, last = http(
        emulator,
        "GET",
        f"/openai/v1/batches?limit=2&after={ids[1]}",
        headers={"Authorization": "Bearer k"},
    )
    assert status == 200
    assert [b["id"] for b in last["data"]] == [ids[0]]
    assert last["has_more"] is False
    for item in last["data"]:
        Batch.model_validate(item, strict=True)
    afters = [e["query"] for e in emulator.log() if e["path"] == "/openai/v1/batches"]
    assert any("after=" in q for q in afters)


def test_latency_lifecycle_with_simulated_clock(oa: OpenAI, emulator: Emulator) -> None:
    emulator.configure(latency=100.0)
    lines = [chat_line(f"r{i}", f"prompt {i}", schema=Review) for i in range(100)]
    lines[10]["body"]["messages"][0]["content"] += " [[emulator:error]]"
    batch = submit(oa, lines)
    assert raw_batch(oa, batch.id).status == "validating"
    emulator.advance(50)  # 10 % validating, then 80 % in progress: 50 s -> half done
    mid = raw_batch(oa, batch.id)
    assert mid.status == "in_progress"
    assert mid.in_progress_at is not None
    assert mid.output_file_id is None
    assert mid.request_counts is not None
    assert (mid.request_counts.total, mid.request_counts.completed) == (100, 49)
    assert mid.request_counts.failed == 1
    emulator.advance(45)
    assert raw_batch(oa, batch.id).status == "finalizing"
    emulator.advance(10)
    done = raw_batch(oa, batch.id)
    assert done.status == "completed"
    assert done.completed_at is not None
    assert done.finalizing_at is not None
    assert done.completed_at - done.created_at == 100
    assert len(read_lines(oa, done.output_file_id)) == 99


def test_latency_in_wall_clock_time(oa: OpenAI, emulator: Emulator) -> None:
    import time

    emulator.configure(latency=1.0)
    batch = submit(oa, [chat_line("a", "x", schema=Review)])
    assert batch.status == "validating"
    # Nobody moves the emulator's clock: real time alone ends the batch, 1 s after creation.
    deadline = time.monotonic() + 60
    while (done := raw_batch(oa, batch.id)).status != "completed":
        assert time.monotonic() < deadline, done.status
        time.sleep(0.1)
    assert done.completed_at - done.created_at == 1


def test_cancel_gives_partial_output(oa: OpenAI, emulator: Emulator) -> None:
    emulator.configure(latency=100.0)
    lines = [chat_line(f"r{i:03d}", f"prompt {i}", schema=Review) for i in range(100)]
    batch = submit(oa, lines)
    emulator.advance(50)
    cancelling = oa.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at is not None
    cancelled = raw_batch(oa, batch.id)
    assert cancelled.status == "cancelled"
    assert cancelled.cancelled_at is not None
    assert cancelled.request_counts is not None
    assert cancelled.request_counts.model_dump() == {"total": 100, "completed": 50, "failed": 50}
    out = read_lines(oa, cancelled.output_file_id)
    assert sorted(line["custom_id"] for line in out) == [f"r{i:03d}" for i in range(50)]
    unrun = read_lines(oa, cancelled.error_file_id)
    assert sorted(line["custom_id"] for line in unrun) == [f"r{i:03d}" for i in range(50, 100)]
    for line in unrun:
        assert line["response"] is None
        assert line["error"]["code"] == "batch_cancelled"
        assert line["id"].startswith("batch_req_")
    assert cancelled.usage is not None
    assert cancelled.usage.output_tokens > 0
    # Idempotent once cancelled; a finished batch cannot be cancelled.
    assert oa.batches.cancel(batch.id).status == "cancelled"
    done = submit(oa, [chat_line("z", "x")])
    emulator.advance(200)
    assert raw_batch(oa, done.id).status == "completed"
    with pytest.raises(openai.BadRequestError):
        oa.batches.cancel(done.id)


def test_cancel_can_omit_unrun_requests_and_take_time(oa: OpenAI, emulator: Emulator) -> None:
    emulator.configure(latency=100.0, cancel_delay=30.0, cancel_unfinished="omit")
    lines = [chat_line(f"r{i}", f"prompt {i}", schema=Review) for i in range(10)]
    batch = submit(oa, lines)
    emulator.advance(30)  # (30 - 10) / 80 -> 2 of 10 have run
    oa.batches.cancel(batch.id)
    emulator.advance(10)
    assert raw_batch(oa, batch.id).status == "cancelling"
    emulator.advance(25)
    cancelled = raw_batch(oa, batch.id)
    assert cancelled.status == "cancelled"
    assert cancelled.request_counts is not None
    assert cancelled.request_counts.model_dump() == {"total": 10, "completed": 2, "failed": 0}
    assert cancelled.error_file_id is None
    assert len(read_lines(oa, cancelled.output_file_id)) == 2


def test_cancel_while_validating_runs_nothing(oa: OpenAI, emulator: Emulator) -> None:
    emulator.configure(latency=100.0)
    batch = submit(oa, [chat_line("a", "x"), chat_line("b", "y")])
    oa.batches.cancel(batch.id)
    cancelled = raw_batch(oa, batch.id)
    assert cancelled.status == "cancelled"
    assert cancelled.in_progress_at is None
    assert cancelled.output_file_id is None
    assert {e["custom_id"] for e in read_lines(oa, cancelled.error_file_id)} == {"a", "b"}


def test_expiry_after_24_hours(oa: OpenAI, emulator: Emulator) -> None:
    emulator.configure(latency=3 * 86_400.0)
    lines = [chat_line(f"r{i}", f"prompt {i}", schema=Review) for i in range(30)]
    batch = submit(oa, lines)
    emulator.advance(86_400 + 1)
    expired = raw_batch(oa, batch.id)
    assert expired.status == "expired"
    assert expired.expired_at == expired.expires_at
    ran = len(read_lines(oa, expired.output_file_id))
    unrun = read_lines(oa, expired.error_file_id)
    assert 0 < ran < 30
    assert ran + len(unrun) == 30
    assert {line["error"]["code"] for line in unrun} == {"batch_expired"}


# --------------------------------------------------------------------------------------
# Auth, faults, log


def test_auth_is_required(oa: OpenAI, emulator: Emulator) -> None:
    status, _, body = http(emulator, "GET", "/openai/v1/batches")
    assert status == 401
    assert set(body["error"]) == {"message", "type", "param", "code"}
    status, _, _ = http(emulator, "GET", "/openai/v1/batches", headers={"Authorization": "Bearer "})
    assert status == 401
    with (
        OpenAI(api_key="sk-invalid-key", base_url=emulator.openai_base_url) as bad,
        pytest.raises(openai.AuthenticationError) as refused,
    ):
        bad.batches.list()
    assert "sk-invalid-key" not in str(refused.value)


def test_log_never_holds_key_values(oa: OpenAI, emulator: Emulator) -> None:
    with OpenAI(api_key="sk-secret-value-123", base_url=emulator.openai_base_url) as client:
        client.batches.list()
    log = emulator.log()
    assert log
    assert all(entry["auth"] for entry in log)
    assert "sk-secret-value-123" not in json.dumps(log)
    assert {entry["provider"] for entry in log} == {"openai"}


def test_sdk_retries_an_injected_503(oa: OpenAI, emulator: Emulator) -> None:
    batch = submit(oa, [chat_line("a", "x", schema=Review)])
    fault = emulator.inject_fault(
        method="GET", path_regex=r"/batches/", status=503, times=1, retry_after_ms=20
    )
    before = len(emulator.log())
    assert oa.batches.retrieve(batch.id).status == "completed"
    retrieves = [e for e in emulator.log()[before:] if e["method"] == "GET"]
    assert [(e["status"], e["retry_count"], e["fault"]) for e in retrieves] == [
        (503, 0, fault["id"]),
        (200, 1, None),
    ]
    assert emulator.faults() == []
    assert sum(1 for e in emulator.log() if e["path"] == "/openai/v1/batches") == 1


def test_fault_body_and_headers_and_no_retry(oa: OpenAI, emulator: Emulator) -> None:
    emulator.inject_fault(path_regex=r"/batches$", status=429, headers={"x-should-retry": "false"})
    with pytest.raises(openai.RateLimitError) as limited:
        oa.batches.list()
    assert isinstance(limited.value.body, dict)
    assert limited.value.body["type"] == "requests"
    emulator.inject_fault(path_regex=r"/batches", status=500, times=None, retry_after=0.01)
    with pytest.raises(openai.InternalServerError):
        oa.batches.list()
    assert [e["status"] for e in emulator.log()[-3:]] == [500, 500, 500]  # 1 try + 2 retries
    emulator.clear_faults()
    assert oa.batches.list().data == []


def test_fault_after_the_request_took_effect(oa: OpenAI, emulator: Emulator) -> None:
    """The provider accepted the batch, but the client never heard: the double-pay hazard."""
    upload = oa.files.create(file=("in.jsonl", jsonl([chat_line("a", "x")])), purpose="batch")
    emulator.inject_fault(method="POST", path_regex=r"/batches$", status=502, when="after")
    with (
        OpenAI(api_key="k", base_url=emulator.openai_base_url, max_retries=0) as once,
        pytest.raises(openai.InternalServerError),
    ):
        once.batches.create(input_file_id=upload.id, endpoint=CHAT, completion_window="24h")
    assert len(oa.batches.list().data) == 1


def test_dropped_connection_is_retried(oa: OpenAI, emulator: Emulator) -> None:
    emulator.inject_fault(method="GET", path_regex=r"/batches", action="disconnect")
    assert oa.batches.list().data == []
    assert [e["status"] for e in emulator.log()] == [0, 200]


def test_faults_use_each_providers_envelope(oa: OpenAI, emulator: Emulator) -> None:
    emulator.inject_fault(path_regex=r"^/anthropic/", status=529, retry_after_ms=10)
    status, headers, body = http(emulator, "GET", "/anthropic/v1/messages/batches")
    assert status == 529
    assert body["type"] == "error"
    assert body["error"]["type"] == "overloaded_error"
    assert headers["retry-after-ms"] == "10"
    emulator.inject_fault(path_regex=r"^/gemini/", status=503)
    status, _, body = http(emulator, "GET", "/gemini/v1beta/batches")
    assert (status, body["error"]["code"], body["error"]["status"]) == (503, 503, "UNAVAILABLE")


def test_fault_specs_are_validated(oa: OpenAI, emulator: Emulator) -> None:
    with pytest.raises(EmulatorError, match="retry_after"):
        emulator.inject_fault(path_regex="x", retry_after=3600)
    with pytest.raises(EmulatorError, match="path_regex"):
        emulator.inject_fault(path_regex="(")
    status, _, body = http(
        emulator, "POST", "/_emulator/config", json.dumps({"latncy": 1}).encode()
    )
    assert status == 400
    assert "latncy" in body["error"]["message"]
    assert emulator.faults() == []


def test_control_endpoints(oa: OpenAI, emulator: Emulator) -> None:
    submit(oa, [chat_line("a", "x")])
    settings = emulator.configure(latency=2.5, openai={"max_requests": 10})
    assert settings["latency"] == 2.5
    assert settings["openai"]["max_requests"] == 10
    assert emulator.settings()["cancel_unfinished"] == "error_file"
    with pytest.raises(EmulatorError):
        emulator.configure(openai={"max_requestz": 1})
    status, _, _ = http(emulator, "GET", "/_emulator/nothing")
    assert status == 404
    emulator.reset()
    assert emulator.log() == []
    assert oa.batches.list().data == []
    assert emulator.settings()["latency"] == 2.5  # reset keeps settings


# --------------------------------------------------------------------------------------
# Files, real-time endpoints, async client, the server process


def test_files_endpoints(oa: OpenAI) -> None:
    data = jsonl([chat_line("a", "x")])
    upload = oa.files.create(file=("mine.jsonl", data), purpose="batch")
    assert (upload.filename, upload.bytes, upload.purpose) == ("mine.jsonl", len(data), "batch")
    assert oa.files.retrieve(upload.id) == upload
    assert oa.files.content(upload.id).content == data
    assert [f.id for f in oa.files.list()] == [upload.id]
    batch = raw_batch(oa, submit(oa, [chat_line("b", "y")]).id)
    assert batch.output_file_id is not None
    output = oa.files.retrieve(batch.output_file_id)
    assert output.purpose == "batch_output"
    assert oa.files.delete(upload.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        oa.files.retrieve(upload.id)


def test_upload_of_a_large_file_is_exact(oa: OpenAI) -> None:
    data = b"".join(
        b'{"custom_id": "%d", "pad": "%s"}\n' % (i, b"\xc3\xa9" * 300) for i in range(20_000)
    )
    upload = oa.files.create(file=("big.jsonl", data, "application/jsonl"), purpose="batch")
    assert upload.bytes == len(data)
    assert oa.files.content(upload.id).content == data


def test_realtime_endpoints(oa: OpenAI) -> None:
    completion = oa.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Review: fine."}],
        response_format=chat_format(Review),  # type: ignore[arg-type]
    )
    Review.model_validate_json(completion.choices[0].message.content or "")
    response = oa.responses.create(
        model=MODEL, input="Review: bad.", text={"format": text_format(Review)}
    )  # type: ignore[typeddict-item]
    Review.model_validate_json(response.output_text)
    with pytest.raises(openai.InternalServerError):
        oa.with_options(max_retries=0).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "[[emulator:error]]"}]
        )


def test_async_client(emulator: Emulator, oa: OpenAI) -> None:
    async def run() -> str:
        async with openai.AsyncOpenAI(api_key="k", base_url=emulator.openai_base_url) as client:
            upload = await client.files.create(
                file=("a.jsonl", jsonl([chat_line("a", "x")])), purpose="batch"
            )
            batch = await client.batches.create(
                input_file_id=upload.id, endpoint=CHAT, completion_window="24h"
            )
            return (await client.batches.retrieve(batch.id)).status

    assert asyncio.run(run()) == "completed"


def test_emulator_object() -> None:
    emu = Emulator(latency=1.0)
    with pytest.raises(EmulatorError, match="not running"):
        emu.url  # noqa: B018
    emu.start()
    try:
        assert emu.running
        env = emu.env()
        assert env["OPENAI_BASE_URL"] == emu.url + "/openai/v1"
        assert env["ANTHROPIC_BASE_URL"] == emu.url + "/anthropic"
        assert env["GOOGLE_GEMINI_BASE_URL"] == emu.url + "/gemini"
        assert env["NO_PROXY"] == "127.0.0.1,localhost"
        assert {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"} <= set(env)
        assert emu.settings()["latency"] == 1.0
        # The OpenAI app is also mounted at /v1 for a dedicated port.
        with OpenAI(api_key="k", base_url=emu.url + "/v1") as client:
            assert client.batches.list().data == []
    finally:
        emu.stop()
    emu.stop()
    assert not emu.running


def test_server_refuses_non_loopback_hosts() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "batchata_df.emulator", "--host", "0.0.0.0"],
        capture_output=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 2
    assert b"127.0.0.1 only" in result.stderr
    assert result.stdout == b""


# --------------------------------------------------------------------------------------
# answers.py and the multipart parser, without HTTP


class Node(BaseModel):
    name: str
    children: list[Node]


class Everything(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order: Order
    tree: Node
    counts: dict[str, int]
    pair: tuple[int, str]
    maybe: int | None = None
    ratio: float = Field(gt=0, lt=1)
    code: str = Field(pattern=r"^[A-Z]{3}-\d{3}$", default="ABC-123")
    short: str = Field(min_length=3, max_length=5)
    choice: Literal[1, 2, 3]
    items: list[Item] = Field(min_length=2, max_length=4)


@pytest.mark.parametrize("model", [Order, Review, Node, Everything])
def test_fake_value_validates_for_pydantic_schemas(model: type[BaseModel]) -> None:
    adapter = TypeAdapter(model)
    schemas = [model.model_json_schema()]
    if model is not Everything:  # strict mode has no dict[str, X]; the rest also as sent
        schemas.append(chat_format(model)["json_schema"]["schema"])
    for schema in schemas:
        for i in range(200):
            adapter.validate_python(answers.fake_value(schema, f"seed-{i}"))
        assert answers.fake_value(schema, "same") == answers.fake_value(schema, "same")
        text, quoted, tokens = answers.generator_for(schema).pooled("row")
        adapter.validate_json(text)
        assert json.loads(quoted) == text
        assert tokens == answers.count_tokens(text)
        with pytest.raises(ValidationError):
            adapter.validate_python(answers.fake_invalid_value(schema, "seed"))


def test_fake_value_covers_nullable_branches() -> None:
    schema = chat_format(Order)["json_schema"]["schema"]
    addresses = [answers.fake_value(schema, f"s{i}")["address"] for i in range(100)]  # type: ignore[index]
    assert any(a is None for a in addresses)
    assert any(a is not None for a in addresses)
    statuses = {answers.fake_value(schema, f"s{i}")["status"] for i in range(100)}  # type: ignore[index]
    assert statuses == {"open", "closed", "pending"}


def test_markers_and_tokens() -> None:
    assert answers.find_marker("nothing here") is None
    assert answers.find_marker("x [[emulator:invalid]]") == "invalid"
    assert answers.find_marker("[[emulator:bogus]]") is None
    assert answers.marker_status("[[emulator:error:503]]") == 503
    assert answers.count_tokens("") == 1
    assert answers.count_tokens("a" * 40) == 10
    assert answers.fake_text("p", "s") == answers.fake_text("p", "s")


def test_parse_multipart_edge_cases() -> None:
    body = (
        b"a preamble to ignore\r\n--XyZ\r\n"
        b'Content-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--XyZ\r\n'
        b'Content-Disposition: form-data; name="file"; filename="f.jsonl"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
        b"line1 --XyZ inside a line is data\r\nline2\r\n--XyZ--\r\n"
    )
    parts = parse_multipart(body, 'multipart/form-data; boundary="XyZ"')
    assert bytes(parts["purpose"][1]) == b"batch"
    assert parts["file"][0] == "f.jsonl"
    assert bytes(parts["file"][1]) == b"line1 --XyZ inside a line is data\r\nline2"
    with pytest.raises(ValueError, match="boundary"):
        parse_multipart(body, "multipart/form-data")
    with pytest.raises(ValueError, match="unterminated"):
        parse_multipart(body[:-12], "multipart/form-data; boundary=XyZ")


def test_public_api_is_exactly_all() -> None:
    import types

    import batchata_df.emulator as package

    defined_here = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", "") == package.__name__
    }
    assert sorted(package.__all__) == sorted(defined_here) == [
        "Emulator", "EmulatorError", "env_for"
    ]
    for module in (answers, package.server, package.openai_api):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.__all__ lists missing {name!r}"


class _Echo:
    """A minimal provider app: what the Anthropic/Gemini modules plug in the same way."""

    provider = "echo"

    def handle(self, request: Any) -> Any:
        from batchata_df.emulator.server import Response

        if request.route == "/stream":
            return Response(
                200, {"content-type": "application/x-ndjson"}, iter([b'{"a":', b"1}\n"])
            )
        return Response(
            200, {"content-type": "text/plain"}, f"{request.method} {request.route}".encode()
        )

    def error_response(self, status: int, message: str) -> Any:
        from batchata_df.emulator.server import error_envelope, json_response

        return json_response(error_envelope("plain", status, message), status)

    def reset(self) -> None:
        pass

    def configure(self, settings: Any) -> None:
        pass

    def settings(self) -> dict[str, object]:
        return {}


def test_apps_register_by_prefix_and_may_stream() -> None:
    from batchata_df.emulator.server import make_server

    server = make_server(port=0, load_providers=False)
    server.core.register("/echo", _Echo())
    server.start_in_thread()
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(server.url + "/echo/a/b?x=1", timeout=10) as response:
            assert response.read() == b"GET /a/b"
        with opener.open(server.url + "/echo/stream", timeout=10) as response:
            assert response.headers["transfer-encoding"] == "chunked"
            assert json.loads(response.read()) == {"a": 1}
        with pytest.raises(urllib.error.HTTPError) as missing:
            opener.open(server.url + "/nowhere", timeout=10)
        missing.value.close()
        assert missing.value.code == 404
        with opener.open(server.url + "/_emulator/log", timeout=10) as response:
            entries = json.loads(response.read())
        assert [(e["path"], e["provider"], e["query"]) for e in entries] == [
            ("/echo/a/b", "echo", "x=1"),
            ("/echo/stream", "echo", ""),
            ("/nowhere", None, ""),
        ]
    finally:
        server.stop()


# --------------------------------------------------------------------------------------
# Prompt caching: strict (a key, 1,024 tokens, 128-token steps)

SHARED = "Policy: refunds within thirty days of delivery only. " * 130  # 1,301 BPE tokens


def _cached(line: dict[str, Any]) -> int:
    body = line["response"]["body"]
    if "usage" in body and "prompt_tokens_details" in body["usage"]:
        usage = ChatCompletion.model_validate(body, strict=True).usage
        assert usage is not None and usage.prompt_tokens_details is not None
        return int(usage.prompt_tokens_details.cached_tokens or 0)
    response = Response.model_validate(body, strict=True)
    assert response.usage is not None
    return int(response.usage.input_tokens_details.cached_tokens)


def test_cached_tokens_for_a_shared_prefix_under_one_prompt_cache_key(oa: OpenAI) -> None:
    lines = [
        chat_line(f"k{i}", SHARED + f"Question {i}?", schema=None, prompt_cache_key="policy")
        for i in range(3)
    ]
    lines.append(chat_line("nokey", SHARED + "Question 9?", schema=None))
    lines.append(chat_line("other", SHARED + "Question 8?", schema=None, prompt_cache_key="x"))
    lines.append(responses_line("resp", SHARED + "Question 7?", schema=None,
                                prompt_cache_key="policy"))  # fmt: skip
    batch = submit(oa, lines[:5], CHAT)
    out = by_id(read_lines(oa, raw_batch(oa, batch.id).output_file_id))
    # The shared prefix (SHARED + "Question ") is 1,302 BPE tokens: 1,024 + 2 steps of 128
    assert [_cached(out[f"k{i}"]) for i in range(3)] == [0, 1280, 1280]
    assert _cached(out["nokey"]) == 0  # no key: no shared cache
    assert _cached(out["other"]) == 0  # a key nobody used before
    resp = submit(oa, lines[5:], RESPONSES)
    out = by_id(read_lines(oa, raw_batch(oa, resp.id).output_file_id))
    assert _cached(out["resp"]) == 1280  # same model, key and prefix: a later batch reads it


def test_no_cached_tokens_below_1024(oa: OpenAI) -> None:
    short = SHARED[:3000]  # 567 BPE tokens
    lines = [
        chat_line(f"s{i}", short + f"Q{i}", schema=None, prompt_cache_key="k") for i in range(2)
    ]
    batch = submit(oa, lines, CHAT)
    out = by_id(read_lines(oa, raw_batch(oa, batch.id).output_file_id))
    assert [_cached(out["s0"]), _cached(out["s1"])] == [0, 0]



def test_a_batch_prepared_across_a_reset_is_not_billed_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # OpenAI batches are validated and answered by one worker thread, in order, after the
    # create request returned. A reset while the worker prepares one (the next test's
    # reset, after a test whose large batch was still being prepared) must not bill that
    # batch into the ledger after it: seen as 2,600 foreign entries in a test's
    # `billing()` (the emulator in-process here, so the worker can be held).
    import threading
    import time

    from batchata_df.emulator import openai_api
    from batchata_df.emulator.server import EmulatorServer

    entered, release = threading.Event(), threading.Event()
    render = openai_api._render

    def held(*args: Any, **kwargs: Any) -> Any:
        if not entered.is_set():  # the first batch only
            entered.set()
            assert release.wait(10)
        return render(*args, **kwargs)

    monkeypatch.setattr(openai_api, "_render", held)
    server = EmulatorServer(0).start_in_thread()
    client = OpenAI(api_key="sk-test", base_url=server.url + "/openai/v1", max_retries=0)
    try:
        submit(client, [chat_line("a", "hello"), chat_line("b", "again")])
        assert entered.wait(10)  # the worker holds the first batch, not billed yet
        server.core.reset()
        release.set()
        second = submit(client, [chat_line("c", "hello")])
        # One worker, in order: once the second batch is billed, the first is done.
        deadline = time.monotonic() + 10
        while not server.core.billing() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [(b["batch_id"], b["custom_id"]) for b in server.core.billing()] == [
            (second.id, "c")
        ]
    finally:
        release.set()
        client.close()
        server.stop()
