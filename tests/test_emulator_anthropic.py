"""The emulator's Anthropic Message Batches protocol, checked with the official SDK over HTTP.

Every answer is also validated from its raw JSON with the SDK's own pydantic types, so a
shape the SDK would only tolerate (it parses leniently) still fails here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import anthropic
import httpx2
import pytest
from anthropic.types import Message
from anthropic.types.messages import (
    DeletedMessageBatch,
    MessageBatch,
    MessageBatchIndividualResponse,
)
from pydantic import BaseModel

V = {"anthropic-version": "2023-06-01"}  # the real API refuses a request without it
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["label", "score", "tags"],
    "properties": {
        "label": {"enum": ["good", "bad"]},
        "score": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}


class Answer(BaseModel):
    label: Literal["good", "bad"]
    score: int
    tags: list[str]


def req(
    custom_id: str,
    text: str = "hello",
    *,
    model: str = "claude-haiku-4-5",
    max_tokens: int = 256,
    **params: Any,
) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "params": {
            "model": model,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}],
            **params,
        },
    }


def structured(custom_id: str, text: str = "rate this", **kw: Any) -> dict[str, Any]:
    fmt = {"format": {"type": "json_schema", "schema": SCHEMA}}
    return req(custom_id, text, output_config=fmt, **kw)


@pytest.fixture
def client(emu) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(api_key="sk-ant-test", base_url=emu.anthropic_base_url, max_retries=2)
    yield c
    c.close()


@pytest.fixture
def settings_restored(emu) -> Iterator[None]:
    yield
    emu.configure(
        latency=0.0,
        cancel_delay=0.0,
        anthropic={"max_requests": 100_000, "max_bytes": 256 * 1024 * 1024},
    )


def create_raw(client: anthropic.Anthropic, requests: list[dict[str, Any]]) -> MessageBatch:
    raw = client.messages.batches.with_raw_response.create(requests=requests)  # type: ignore[arg-type]
    return MessageBatch.model_validate(json.loads(raw.http_response.text))


def retrieve_raw(client: anthropic.Anthropic, batch_id: str) -> MessageBatch:
    raw = client.messages.batches.with_raw_response.retrieve(batch_id)
    # strict: no coercion (timestamps are RFC 3339 strings, which JSON-mode strict accepts)
    return MessageBatch.model_validate_json(raw.http_response.text, strict=True)


def result_lines(
    batch: MessageBatch, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Fetch results_url over plain HTTP and validate every line with the SDK types."""
    assert batch.results_url is not None
    with httpx2.stream(
        "GET", batch.results_url, headers=headers or {"x-api-key": "sk-ant-test", **V}
    ) as r:
        assert r.status_code == 200
        assert r.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in r.headers
        body = r.read()
    text = body.decode()
    assert text.endswith("\n")
    lines = text.split("\n")[:-1]
    assert all(line.strip() for line in lines), "a blank line crashes the SDK's JSONL decoder"
    out = []
    for line in lines:
        obj = json.loads(line)
        MessageBatchIndividualResponse.model_validate_json(line, strict=True)
        if obj["result"]["type"] == "succeeded":
            Message.model_validate(obj["result"]["message"], strict=True)
        out.append(obj)
    return out


def by_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {line["custom_id"]: line["result"] for line in lines}


# -- lifecycle -----------------------------------------------------------------------------------


def test_create_retrieve_and_results_validate_with_sdk_types(emu, client):
    batch = create_raw(client, [structured("a-1"), req("b_2", "plain text please")])
    assert batch.processing_status == "in_progress"
    assert batch.type == "message_batch"
    assert batch.id.startswith("msgbatch_")
    assert batch.request_counts.processing == 2
    assert batch.results_url is None
    assert batch.ended_at is None
    assert (batch.expires_at - batch.created_at).total_seconds() == 24 * 3600

    ended = retrieve_raw(client, batch.id)
    assert ended.processing_status == "ended"
    counts = ended.request_counts
    assert (counts.processing, counts.succeeded, counts.errored) == (0, 2, 0)
    assert ended.ended_at is not None
    assert ended.ended_at >= ended.created_at
    assert ended.archived_at is None
    assert ended.cancel_initiated_at is None
    # Absolute, on the emulator's own host:port (the SDK follows it as is).
    assert ended.results_url == (f"{emu.anthropic_base_url}/v1/messages/batches/{batch.id}/results")

    results = by_id(result_lines(ended))
    assert set(results) == {"a-1", "b_2"}
    message = Message.model_validate(results["a-1"]["message"])
    assert message.role == "assistant"
    assert message.stop_reason == "end_turn"
    texts = [b.text for b in message.content if b.type == "text"]
    Answer.model_validate_json("".join(texts))
    usage = message.usage
    assert usage.service_tier == "batch"
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    assert usage.cache_creation_input_tokens == 0
    assert usage.cache_read_input_tokens == 0
    plain = Message.model_validate(results["b_2"]["message"])
    text = "".join(b.text for b in plain.content if b.type == "text")
    assert text.startswith("Emulated answer")

    # The SDK's own results() (retrieve, then follow results_url) agrees.
    via_sdk = {r.custom_id: r for r in client.messages.batches.results(batch.id)}
    assert set(via_sdk) == {"a-1", "b_2"}
    assert via_sdk["a-1"].result.type == "succeeded"
    # Two requests: the implicit retrieve and the absolute results_url.
    paths = [e["path"] for e in emu.log()[-2:]]
    assert paths == [
        f"/anthropic/v1/messages/batches/{batch.id}",
        f"/anthropic/v1/messages/batches/{batch.id}/results",
    ]


def test_results_are_not_in_request_order_and_split_across_chunks(emu, client):
    batch = client.messages.batches.create(
        requests=[req(f"r{i:03d}", "x" * 2000) for i in range(60)]  # type: ignore[misc]
    )
    ended = retrieve_raw(client, batch.id)
    ids = [line["custom_id"] for line in result_lines(ended)]
    assert sorted(ids) == [f"r{i:03d}" for i in range(60)]
    assert ids != sorted(ids), "results come in arbitrary order: clients must key on custom_id"
    assert [r.custom_id for r in client.messages.batches.results(batch.id)] == ids


def test_both_auth_headers_are_accepted_and_missing_or_bad_keys_get_401(emu, client):
    batch = client.messages.batches.create(requests=[req("a")])  # SDK 2.x: Authorization: Bearer
    url = f"{emu.anthropic_base_url}/v1/messages/batches/{batch.id}"
    for headers in ({"x-api-key": "sk-ant-1", **V}, {"Authorization": "Bearer sk-ant-2", **V}):
        r = httpx2.get(url, headers=headers)
        assert r.status_code == 200
        MessageBatch.model_validate(r.json())
        lines = result_lines(MessageBatch.model_validate(r.json()), headers)
        assert len(lines) == 1
    for headers in ({}, {"Authorization": "Basic abc"}, {"x-api-key": ""}):
        r = httpx2.get(url, headers=headers)
        assert r.status_code == 401
        body = r.json()
        assert body["type"] == "error"
        assert body["error"]["type"] == "authentication_error"
        assert body["request_id"].startswith("req_")
    bad = anthropic.Anthropic(api_key="sk-invalid-1", base_url=emu.anthropic_base_url)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.batches.list()
    assert "sk-invalid-1" not in str(info.value)
    bad.close()


def test_all_four_result_types_cancel_with_partial_results(emu, client, settings_restored):
    emu.configure(latency=100)
    batch = client.messages.batches.create(
        requests=[
            structured("ok-0"),
            req("err-1", "[[emulator:error:429]]"),
            req("late-2"),
            req("late-3"),
        ]
    )
    emu.advance(55)  # requests finish evenly over the latency: two have run
    canceled = MessageBatch.model_validate(
        json.loads(client.messages.batches.with_raw_response.cancel(batch.id).http_response.text)
    )
    assert canceled.processing_status == "canceling"
    assert canceled.cancel_initiated_at is not None
    assert canceled.results_url is None
    ended = retrieve_raw(client, batch.id)
    assert ended.processing_status == "ended"
    c = ended.request_counts
    assert (c.processing, c.succeeded, c.errored, c.canceled, c.expired) == (0, 1, 1, 2, 0)
    results = by_id(result_lines(ended))
    assert results["ok-0"]["type"] == "succeeded"
    assert results["err-1"] == {
        "type": "errored",
        "error": {
            "type": "error",
            "error": {
                "type": "rate_limit_error",
                "message": results["err-1"]["error"]["error"]["message"],
            },
            "request_id": results["err-1"]["error"]["request_id"],
        },
    }
    assert results["late-2"] == {"type": "canceled"}
    assert results["late-3"] == {"type": "canceled"}
    with pytest.raises(anthropic.BadRequestError, match="already ended"):
        client.messages.batches.cancel(batch.id)

    # Not done within 24 h: the requests that had not run are expired.
    emu.configure(latency=48 * 3600)
    slow = client.messages.batches.create(requests=[req(f"s{i}") for i in range(4)])
    assert retrieve_raw(client, slow.id).processing_status == "in_progress"
    emu.advance(24 * 3600 + 1)
    ended = retrieve_raw(client, slow.id)
    assert ended.processing_status == "ended"
    assert ended.ended_at == ended.expires_at
    assert ended.request_counts.expired == 2
    assert ended.request_counts.succeeded == 2
    kinds = sorted(r["type"] for r in by_id(result_lines(ended)).values())
    assert kinds == ["expired", "expired", "succeeded", "succeeded"]


def test_cancel_delay_keeps_the_batch_canceling(emu, client, settings_restored):
    emu.configure(latency=100, cancel_delay=30)
    batch = client.messages.batches.create(requests=[req("a"), req("b")])
    client.messages.batches.cancel(batch.id)
    assert retrieve_raw(client, batch.id).processing_status == "canceling"
    # Cancelling again returns the batch unchanged.
    again = client.messages.batches.cancel(batch.id)
    assert again.processing_status == "canceling"
    assert again.cancel_initiated_at == retrieve_raw(client, batch.id).cancel_initiated_at
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        client.messages.batches.results(batch.id)
    emu.advance(31)
    ended = retrieve_raw(client, batch.id)
    assert ended.processing_status == "ended"
    assert ended.request_counts.canceled == 2
    assert ended.ended_at is not None
    assert ended.cancel_initiated_at is not None
    assert round((ended.ended_at - ended.cancel_initiated_at).total_seconds()) == 30


def test_in_progress_batches_show_only_processing_counts(emu, client, settings_restored):
    emu.configure(latency=100)
    batch = client.messages.batches.create(requests=[req("a"), req("b"), req("c")])
    emu.advance(50)
    seen = retrieve_raw(client, batch.id)
    assert seen.processing_status == "in_progress"
    c = seen.request_counts
    assert (c.processing, c.succeeded, c.errored, c.canceled, c.expired) == (3, 0, 0, 0, 0)
    r = httpx2.get(
        f"{emu.anthropic_base_url}/v1/messages/batches/{batch.id}/results",
        headers={"x-api-key": "k", **V},
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    emu.advance(51)
    assert retrieve_raw(client, batch.id).request_counts.succeeded == 3


# -- answers -------------------------------------------------------------------------------------


def test_thinking_models_start_with_an_empty_thinking_block(emu, client):
    batch = client.messages.batches.create(
        requests=[
            # Opus 5.5 always thinks (high effort) inside max_tokens: leave it room.
            structured("opus", model="claude-opus-5-5", max_tokens=8192),
            structured("haiku", model="claude-haiku-4-5"),
            req(
                "think",
                model="claude-haiku-4-5",  # Claude 4.5: thinking budgets
                thinking={"type": "enabled", "budget_tokens": 1024},
                max_tokens=2048,  # above the budget, as the API requires
            ),
        ]
    )
    results = by_id(result_lines(retrieve_raw(client, batch.id)))
    opus = Message.model_validate(results["opus"]["message"])
    assert [b.type for b in opus.content] == ["thinking", "text"]
    assert opus.content[0].type == "thinking"
    assert opus.content[0].thinking == ""
    assert opus.content[0].signature
    Answer.model_validate_json("".join(b.text for b in opus.content if b.type == "text"))
    haiku = Message.model_validate(results["haiku"]["message"])
    assert [b.type for b in haiku.content] == ["text"]
    think = Message.model_validate(results["think"]["message"])
    assert think.content[0].type == "thinking"


def test_markers_truncate_invalid_refusal_and_max_tokens(emu, client):
    batch = client.messages.batches.create(
        requests=[
            structured("cut", "[[emulator:truncate]]"),
            structured("inv", "[[emulator:invalid]]"),
            structured("no", "[[emulator:refusal]]"),
            req("tiny", "hello", max_tokens=3),
            req("e400", "[[emulator:error:400]]"),
            req("e500", "[[emulator:error]]"),
            req("e529", "[[emulator:error:529]]"),
        ]
    )
    results = by_id(result_lines(retrieve_raw(client, batch.id)))

    def text_of(cid: str) -> tuple[str, Message]:
        m = Message.model_validate(results[cid]["message"])
        return "".join(b.text for b in m.content if b.type == "text"), m

    text, m = text_of("cut")
    assert m.stop_reason == "max_tokens"
    with pytest.raises(ValueError, match=r"Invalid JSON|EOF|json"):
        Answer.model_validate_json(text)
    text, m = text_of("inv")
    assert m.stop_reason == "end_turn"
    json.loads(text)
    with pytest.raises(ValueError, match="validation error"):
        Answer.model_validate_json(text)
    _, m = text_of("no")
    assert m.stop_reason == "refusal"
    assert m.stop_details is not None
    assert m.stop_details.type == "refusal"
    _, m = text_of("tiny")
    assert m.stop_reason == "max_tokens"
    assert m.usage.output_tokens <= 3
    kinds = {cid: results[cid]["error"]["error"]["type"] for cid in ("e400", "e500", "e529")}
    assert kinds == {
        "e400": "invalid_request_error",
        "e500": "api_error",
        "e529": "overloaded_error",
    }


def test_errors_found_when_a_request_runs_are_errored_results(emu, client):
    doc = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "The sky is blue."},
        "citations": {"enabled": True},
    }
    tool = {"name": "rate", "input_schema": SCHEMA}
    batch = client.messages.batches.create(
        requests=[
            {
                **structured("cite"),
                "params": {
                    **structured("cite")["params"],
                    "messages": [
                        {"role": "user", "content": [doc, {"type": "text", "text": "Colour?"}]}
                    ],
                },
            },
            req(
                "forced-opus",
                model="claude-opus-5-5",
                tools=[tool],
                tool_choice={"type": "tool", "name": "rate"},
            ),
            req("forced", tools=[tool], tool_choice={"type": "tool", "name": "rate"}),
            req("empty") | {"params": {**req("empty")["params"], "messages": []}},
        ]
    )
    ended = retrieve_raw(client, batch.id)
    assert ended.request_counts.errored == 3
    results = by_id(result_lines(ended))
    for cid in ("cite", "forced-opus", "empty"):
        assert results[cid]["type"] == "errored", cid
        assert results[cid]["error"]["error"]["type"] == "invalid_request_error"
    forced = Message.model_validate(results["forced"]["message"])
    assert forced.stop_reason == "tool_use"
    block = forced.content[0]
    assert block.type == "tool_use"
    assert block.name == "rate"
    Answer.model_validate(block.input)


LONG = "You rate things carefully and explain nothing. " * 400  # 19,200 chars: 4,800 tokens


def _usages(client: anthropic.Anthropic, batch_id: str) -> dict[str, Any]:
    return {
        cid: Message.model_validate(r["message"]).usage
        for cid, r in by_id(result_lines(retrieve_raw(client, batch_id))).items()
    }


def test_cached_system_prompt_usage(emu, client):
    """A marked system prompt above the model's minimum: one write, then reads."""
    system = [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]
    batch = client.messages.batches.create(
        requests=[req(f"c{i}", f"item {i}", system=system) for i in range(3)]
    )
    usages = _usages(client, batch.id)
    prefix = len(LONG) // 4
    # In batch (file) order: the first request writes the prefix, the others read it.
    assert [usages[f"c{i}"].cache_creation_input_tokens for i in range(3)] == [prefix, 0, 0]
    assert [usages[f"c{i}"].cache_read_input_tokens for i in range(3)] == [0, prefix, prefix]
    assert usages["c0"].cache_creation.ephemeral_5m_input_tokens == prefix
    # input_tokens are only what follows the breakpoint ("item 0" and the separator).
    assert all(u.input_tokens < 10 for u in usages.values())
    assert all(u.service_tier == "batch" for u in usages.values())
    # A later batch within the cache's lifetime reads it too.
    again = client.messages.batches.create(requests=[req("d", "other", system=system)])
    later = _usages(client, again.id)["d"]
    assert (later.cache_read_input_tokens, later.cache_creation_input_tokens) == (prefix, 0)


def test_cache_needs_a_marker_and_the_model_minimum(emu, client):
    """Strict: unmarked prefixes and marked ones under the minimum are not cached."""
    unmarked = [{"type": "text", "text": LONG}]
    short = [{"type": "text", "text": LONG[:8000], "cache_control": {"type": "ephemeral"}}]
    batch = client.messages.batches.create(
        requests=[req(f"u{i}", system=unmarked) for i in range(2)]
        + [req(f"s{i}", system=short) for i in range(2)]  # 2,000 tokens < 4,096 (Haiku 4.5)
        + [req(f"n{i}", model="claude-sonnet-4-6", system=short) for i in range(2)]  # >= 1,024
    )
    usages = _usages(client, batch.id)
    for cid in ("u0", "u1", "s0", "s1"):
        assert usages[cid].cache_creation_input_tokens == 0, cid
        assert usages[cid].cache_read_input_tokens == 0, cid
        assert usages[cid].input_tokens >= 2000, cid
    assert usages["n0"].cache_creation_input_tokens == 2000
    assert usages["n1"].cache_read_input_tokens == 2000


def test_cache_breakpoint_in_the_user_turn_and_a_different_prefix(emu, client):
    """A marked leading user block caches system + that block; another text misses."""
    doc = "Clause: the supplier delivers on time. " * 500
    def ask(cid: str, text: str, question: str) -> dict[str, Any]:
        content = [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}},
                   {"type": "text", "text": question}]  # fmt: skip
        r = req(cid, system="Answer briefly.")
        r["params"]["messages"] = [{"role": "user", "content": content}]
        return r
    batch = client.messages.batches.create(
        requests=[ask("a", doc, "Who?"), ask("b", doc, "When?"), ask("c", doc + "x", "Who?")]
    )
    usages = _usages(client, batch.id)
    prefix = (len("Answer briefly.") + 1 + len(doc)) // 4
    assert usages["a"].cache_creation_input_tokens == prefix
    assert usages["b"].cache_read_input_tokens == prefix
    assert usages["c"].cache_read_input_tokens == 0
    assert usages["c"].cache_creation_input_tokens > 0


def test_more_than_four_breakpoints_is_an_error(emu, client):
    mark = {"cache_control": {"type": "ephemeral"}}
    system = [{"type": "text", "text": f"part {i}", **mark} for i in range(5)]
    batch = client.messages.batches.create(requests=[req("x", system=system)])
    result = by_id(result_lines(retrieve_raw(client, batch.id)))["x"]
    assert result["type"] == "errored"
    assert result["error"]["error"]["message"] == (
        "A maximum of 4 blocks with cache_control may be provided. Found 5."
    )


# -- list, delete -------------------------------------------------------------------------------


def test_list_paginates_newest_first_with_cursors(emu, client):
    ids = [client.messages.batches.create(requests=[req("a")]).id for _ in range(5)]
    newest_first = ids[::-1]
    # The SDK follows after_id=last_id page by page.
    assert [b.id for b in client.messages.batches.list(limit=2)] == newest_first
    base = f"{emu.anthropic_base_url}/v1/messages/batches"
    h = {"x-api-key": "k", **V}
    page = httpx2.get(base, params={"limit": 2}, headers=h).json()
    assert set(page) == {"data", "has_more", "first_id", "last_id"}
    for item in page["data"]:
        MessageBatch.model_validate(item)
    assert [b["id"] for b in page["data"]] == newest_first[:2]
    assert page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (newest_first[0], newest_first[1])
    last = httpx2.get(base, params={"limit": 2, "after_id": newest_first[3]}, headers=h).json()
    assert [b["id"] for b in last["data"]] == newest_first[4:]
    assert last["has_more"] is False
    back = httpx2.get(base, params={"limit": 2, "before_id": newest_first[3]}, headers=h).json()
    assert [b["id"] for b in back["data"]] == newest_first[1:3]
    assert back["has_more"] is True
    # Paging backwards: each page is the `limit` batches just before the cursor.
    backwards = client.messages.batches.list(limit=2, before_id=newest_first[4])
    assert [b.id for b in backwards] == newest_first[2:4] + newest_first[0:2]
    default = httpx2.get(base, headers=h).json()
    assert len(default["data"]) == 5
    assert default["has_more"] is False
    for bad in ({"limit": 0}, {"limit": 1001}, {"after_id": "msgbatch_nope"}):
        r = httpx2.get(base, params=bad, headers=h)
        assert r.status_code == 400, bad
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_delete_only_after_the_batch_ended(emu, client, settings_restored):
    emu.configure(latency=100)
    batch = client.messages.batches.create(requests=[req("a")])
    with pytest.raises(anthropic.BadRequestError, match="cancel"):
        client.messages.batches.delete(batch.id)
    client.messages.batches.cancel(batch.id)
    raw = client.messages.batches.with_raw_response.delete(batch.id)
    deleted = DeletedMessageBatch.model_validate(json.loads(raw.http_response.text))
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.batches.retrieve(batch.id)
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert list(client.messages.batches.list()) == []


def test_results_are_archived_after_29_days(emu, client):
    batch = client.messages.batches.create(requests=[req("a")])
    assert retrieve_raw(client, batch.id).archived_at is None
    emu.advance(29 * 24 * 3600 + 1)
    archived = retrieve_raw(client, batch.id)
    assert archived.archived_at is not None
    with pytest.raises(anthropic.NotFoundError, match="archived"):
        list(client.messages.batches.results(batch.id))


# -- validation ----------------------------------------------------------------------------------


def _without(request: dict[str, Any], key: str) -> dict[str, Any]:
    params = {k: v for k, v in request["params"].items() if k != key}
    return {**request, "params": params}


@pytest.mark.parametrize(
    ("requests", "match"),
    [
        ([], "at least 1"),
        ([req("same"), req("same")], "Duplicate custom_id"),
        ([req("has space")], "should match pattern"),
        ([req("x" * 65)], "should match pattern"),
        ([req("")], "should match pattern"),
        ([{"params": req("a")["params"]}], "custom_id: Field required"),
        ([{"custom_id": "a"}], "params: Field required"),
        ([{**req("a"), "extra": 1}], "requests.0.extra: Extra inputs are not permitted"),
        ([{"custom_id": "a", "params": []}], "params: Input should be a valid dictionary"),
    ],
)
def test_invalid_batches_are_rejected_with_400(emu, client, requests, match):
    with pytest.raises(anthropic.BadRequestError, match=match) as info:
        client.messages.batches.create(requests=requests)
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert list(client.messages.batches.list()) == []


def test_unknown_top_level_key_is_a_400(emu, client):
    with pytest.raises(anthropic.BadRequestError, match="also: Extra inputs are not permitted"):
        client.messages.batches.create(requests=[req("a")], extra_body={"also": 2})


_DOC = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "A."}}
_LOOSE = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


# The real API runs each of these requests and reports it ``errored`` (the batch is created).
@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (req("a", max_tokens=0), "max_tokens: Input should be greater than or equal to 1"),
        (_without(req("a"), "max_tokens"), "max_tokens: Field required"),
        (_without(req("a"), "model"), "model: Field required"),
        (_without(req("a"), "messages"), "messages: Field required"),
        (req("a", stream=True), "stream"),
        (req("a", bogus=1), "bogus: Extra inputs are not permitted"),
        (req("a", response_format={"type": "json"}), "response_format: Extra inputs"),
        # API version 2026-10-21 (the SDK's) refuses any sampling parameter
        # (anthropic_checks.SAMPLING_REMOVED_IN); 2023-06-01's ranges: the test below.
        (req("a", temperature=0.5), "temperature: Extra inputs are not permitted"),
        (req("a", top_k=5), "top_k: Extra inputs are not permitted"),
        (
            req("a", messages=[{"role": "system", "content": "x"}]),
            "messages.0.role: Input should be 'user' or 'assistant'",
        ),
        (
            req("a", messages=[{"role": "user", "content": "hi", "name": "bob"}]),
            "messages.0.name: Extra inputs are not permitted",
        ),
        (
            req("a", messages=[{"role": "user", "content": [{"type": "txt", "text": "x"}]}]),
            "messages.0.content",
        ),
        (
            req("a", output_config={"format": {"type": "json_schema", "schema": _LOOSE}}),
            "'additionalProperties' must be explicitly set to false",
        ),
        (
            req(
                "a",
                output_config={
                    "format": {
                        "type": "json_schema",
                        "schema": {
                            **SCHEMA,
                            "properties": {"s": {"type": "string", "minLength": 3}},
                            "required": ["s"],
                        },
                    }
                },
            ),
            "Unsupported keyword 'minLength'",
        ),
        (
            req(
                "a",
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {**_DOC, "citations": {"enabled": True}},
                            _DOC,
                            {"type": "text", "text": "q"},
                        ],
                    }
                ],
            ),
            "Citations must be enabled on all documents or on none",
        ),
    ],
)
def test_invalid_params_are_errored_results(emu, client, request_, match):
    batch = client.messages.batches.create(requests=[request_, req("ok")])
    ended = retrieve_raw(client, batch.id)
    assert (ended.request_counts.errored, ended.request_counts.succeeded) == (1, 1)
    result = by_id(result_lines(ended))["a"]
    assert result["type"] == "errored"
    error = result["error"]["error"]
    assert error["type"] == "invalid_request_error"
    assert match in error["message"]


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (req("a", temperature=3.5), "temperature: Input should be less than or equal to 1"),
        (req("a", temperature="hot"), "temperature: Input should be a valid number"),
        (req("a", top_k=-1), "top_k: Input should be greater than or equal to 0"),
        (req("a", top_p=1.5), "top_p: Input should be less than or equal to 1"),
    ],
)
def test_sampling_ranges_under_api_version_2023_06_01(emu, request_, match):
    client = anthropic.Anthropic(
        api_key="sk-ant-test", base_url=emu.anthropic_base_url,
        default_headers={"anthropic-version": "2023-06-01"},
    )  # fmt: skip
    batch = client.messages.batches.create(requests=[request_, req("ok")])
    ended = retrieve_raw(client, batch.id)
    assert (ended.request_counts.errored, ended.request_counts.succeeded) == (1, 1)
    error = by_id(result_lines(ended))["a"]["error"]["error"]
    assert error["type"] == "invalid_request_error"
    assert match in error["message"]


def test_version_header_is_required(emu):
    base = emu.anthropic_base_url
    r = httpx2.get(f"{base}/v1/messages/batches", headers={"x-api-key": "k"})
    assert r.status_code == 400
    body = r.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in body["error"]["message"]
    assert r.headers["request-id"] == body["request_id"]
    ok = httpx2.get(f"{base}/v1/messages/batches", headers={"x-api-key": "k", **V})
    assert ok.is_success
    assert ok.headers["request-id"].startswith("req_")  # on every answer, like the real API


def test_count_and_size_limits(emu, client, settings_restored):
    emu.configure(anthropic={"max_requests": 3})
    with pytest.raises(anthropic.BadRequestError, match="at most 3 items"):
        client.messages.batches.create(requests=[req(f"r{i}") for i in range(4)])
    client.messages.batches.create(requests=[req(f"r{i}") for i in range(3)])
    emu.configure(anthropic={"max_requests": 100_000, "max_bytes": 2000})
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.batches.create(requests=[req("big", "x" * 3000)])
    assert info.value.status_code == 413
    assert info.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    assert len(list(client.messages.batches.list())) == 1
    assert emu.settings()["anthropic"]["max_bytes"] == 2000


def test_unknown_routes_and_methods(emu, client):
    base = emu.anthropic_base_url
    h = {"x-api-key": "k", **V}
    assert httpx2.get(f"{base}/v1/nothing", headers=h).status_code == 404
    r = httpx2.get(f"{base}/v1/messages/batches/msgbatch_missing", headers=h)
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found_error"
    assert httpx2.put(f"{base}/v1/messages/batches", headers=h).status_code == 405


def test_sdk_retries_overloaded_and_the_realtime_endpoint(emu, client):
    batch = client.messages.batches.create(requests=[req("a")])
    emu.inject_fault(method="GET", path_regex=r"/messages/batches/msgbatch_", status=529,
                     retry_after_ms=10)  # fmt: skip
    assert client.messages.batches.retrieve(batch.id).processing_status == "ended"
    retried = [e for e in emu.log() if e["fault"] is not None]
    assert len(retried) == 1
    assert retried[0]["status"] == 529
    message = client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": "hi"}],
        output_config={"format": {"type": "json_schema", "schema": SCHEMA}},
    )
    Answer.model_validate_json("".join(b.text for b in message.content if b.type == "text"))


@pytest.mark.parametrize(
    "model", ["emulator-unknown-model", "gpt-4.1-mini", "gemini-2.5-flash", "claude-sonet-4-5"]
)
def test_a_model_anthropic_does_not_serve_is_an_errored_not_found(emu, client, model):
    # The batch is created; the request naming the model ends errored, the others run.
    batch = client.messages.batches.create(requests=[req("a", model=model), req("b")])
    results = by_id(result_lines(retrieve_raw(client, batch.id)))
    assert results["a"]["type"] == "errored"
    assert results["a"]["error"]["type"] == "error"
    assert results["a"]["error"]["error"] == {
        "type": "not_found_error", "message": f"model: {model}",
    }
    assert results["b"]["type"] == "succeeded"
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(
            model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 404
    assert info.value.body["error"] == {  # type: ignore[index]
        "type": "not_found_error", "message": f"model: {model}",
    }


def test_dated_snapshots_of_served_claude_models_run(client):
    batch = client.messages.batches.create(
        requests=[req("a", model="claude-opus-4-5-20251101"),
                  req("b", model="claude-haiku-4-5-20251001")]
    )
    results = by_id(result_lines(retrieve_raw(client, batch.id)))
    assert {k: v["type"] for k, v in results.items()} == {"a": "succeeded", "b": "succeeded"}
