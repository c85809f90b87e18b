"""Anthropic realtime requests are streamed: the SDK, the emulator's events, the answers.

anthropic 2.14 refuses a non-streaming ``messages.create`` whose ``max_tokens`` could run
past 10 minutes (``_calculate_nonstreaming_timeout``: above 21,333), which every Claude 5
default (32,768) is; the realtime path streams every request instead. These tests drive
the official SDK against the emulator over HTTP: the events the emulator streams, the
message the SDK rebuilds from them (equal to the non-streaming answer), and ``batch_llm``
runs whose bodies, answers and bills are checked.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

import batchata_df.engine.realtime as realtime_module
from batchata_df import batch_llm
from batchata_df.engine.clock import FakeClock


class Answer(BaseModel):
    label: str
    score: float


KW: dict[str, Any] = {"schema": Answer, "prompt": "Rate: {text}"}
ROWS = pl.DataFrame({"text": ["great product", "awful service"]})


def message_posts(emu) -> list[dict[str, Any]]:
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith("/v1/messages")]


def client(emu):
    import anthropic

    return anthropic.Anthropic(api_key="sk-ant-test", base_url=emu.anthropic_base_url,
                               max_retries=0)  # fmt: skip


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(realtime_module, "SystemClock", lambda: fake)
    return fake


# ---- batch_llm: the reported failure, fixed


@pytest.mark.parametrize("mode", ["realtime", "auto"])
def test_claude_5_realtime_with_its_default_max_tokens_completes_billed_once(emu, mode) -> None:
    # max_tokens 32,768 (claude-sonnet-5-5's default): the SDK refuses it without streaming
    emu.configure(log_bodies=True)
    out = ROWS.pipe(batch_llm, model="claude-sonnet-5-5", mode=mode, state="s", **KW)
    assert out["_status"].to_list() == ["completed", "completed"], out["_error"].to_list()
    assert out["label"].null_count() == 0
    posts = message_posts(emu)
    assert [p["body"]["max_tokens"] for p in posts] == [32_768, 32_768]
    assert [p["body"]["stream"] for p in posts] == [True, True]
    bills = emu.billing()
    assert [(b["provider"], b["mode"]) for b in bills] == [("anthropic", "realtime")] * 2
    assert len({b["request"] for b in bills}) == 2  # each row billed once


def test_the_streamed_body_is_the_batch_line_params_plus_stream(emu) -> None:
    # The body is the batch line's params (sent as the SDK's extra_body) plus stream. No
    # sampling parameter: Claude takes none under API version 2026-10-21, which anthropic
    # 2.x sends (tests/test_anthropic_api_version.py).
    emu.configure(log_bodies=True)
    params = {"max_tokens": 300, "stop": ["END"]}
    out = ROWS[:1].pipe(batch_llm, model="claude-haiku-4-5", mode="realtime", params=params,
                        system="Be terse.", **KW)  # fmt: skip
    assert out["_status"].to_list() == ["completed"], out["_error"].to_list()
    (post,) = message_posts(emu)
    body = post["body"]
    assert body.pop("stream") is True
    assert body == {
        "model": "claude-haiku-4-5",
        "messages": [{"role": "user", "content": "Rate: great product"}],
        "system": "Be terse.",
        "max_tokens": 300,
        "stop_sequences": ["END"],
        "output_config": {"format": {"type": "json_schema", "schema": body["output_config"][
            "format"]["schema"]}},
    }


def test_streamed_answers_equal_the_batch_answers(emu) -> None:
    kw = {"model": "claude-sonnet-5-5", **KW}
    realtime = ROWS.pipe(batch_llm, mode="realtime", **kw)
    batch = ROWS.pipe(batch_llm, mode="batch", **kw)
    cols = ["text", "label", "score", "_status", "_input_tokens", "_output_tokens"]
    assert realtime.select(cols).equals(batch.select(cols))


def test_keep_responses_keeps_the_message_rebuilt_from_the_stream(emu) -> None:
    out = ROWS[:1].pipe(batch_llm, model="claude-sonnet-5-5", mode="realtime",
                        keep_responses=True, **KW)  # fmt: skip
    kept = json.loads(out["_response"][0])
    assert kept["type"] == "message"
    assert kept["stop_reason"] == "end_turn"
    assert [b["type"] for b in kept["content"]] == ["thinking", "text"]  # Claude 5 thinks
    assert json.loads(kept["content"][1]["text"]) == {"label": out["label"][0],
                                                      "score": out["score"][0]}  # fmt: skip
    assert kept["usage"]["output_tokens"] == out["_output_tokens"][0]


def test_a_stream_broken_midway_is_lost_and_never_sent_again(emu, clock) -> None:
    emu.inject_fault(path_regex=r"/v1/messages$", action="cut", times=1)
    out = ROWS[:1].pipe(batch_llm, model="claude-sonnet-5-5", mode="realtime", state="s", **KW)
    assert out["_status"].to_list() == ["failed"]
    assert out["_error"][0].startswith("lost: the request was sent but no answer came back")
    assert len(emu.billing()) == 1  # it ran: billed
    again = ROWS[:1].pipe(batch_llm, model="claude-sonnet-5-5", mode="realtime", state="s", **KW)
    assert again["_status"].to_list() == ["failed"]
    assert len(message_posts(emu)) == 1


def test_an_error_before_the_stream_is_still_retried(emu, clock) -> None:
    emu.inject_fault(path_regex=r"/v1/messages$", status=529, times=1)
    out = ROWS[:1].pipe(batch_llm, model="claude-sonnet-5-5", mode="realtime", **KW)
    assert out["_status"].to_list() == ["completed"]
    assert len(message_posts(emu)) == 2
    assert len(emu.billing()) == 1


# ---- the emulator's events, through the SDK


def _raw_events(emu, params: dict[str, Any]) -> list[dict[str, Any]]:
    with client(emu).messages.create(**params, stream=True) as stream:
        return [event.to_dict() for event in stream]


BASE: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 200,
                        "messages": [{"role": "user", "content": "Say hello"}]}  # fmt: skip


def test_the_emulator_streams_the_documented_event_sequence(emu) -> None:
    events = _raw_events(emu, BASE)
    kinds = [e["type"] for e in events]
    # ping is dropped by the SDK's Stream; the rest in the streaming guide's order
    assert kinds[0] == "message_start"
    assert kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    start = events[0]["message"]
    assert (start["content"], start["stop_reason"], start["role"]) == ([], None, "assistant")
    assert start["usage"]["input_tokens"] > 0
    assert events[1]["content_block"] == {"type": "text", "text": ""}
    delta = events[-2]
    assert delta["delta"]["stop_reason"] == "end_turn"
    text = "".join(e["delta"]["text"] for e in events[2:-3])
    plain = client(emu).messages.create(**BASE)
    assert text == plain.content[0].text
    assert delta["usage"]["output_tokens"] == plain.usage.output_tokens
    assert delta["usage"]["input_tokens"] == plain.usage.input_tokens


def test_the_emulator_sends_pings_and_sse_framing(emu) -> None:
    import urllib.request

    url = emu.anthropic_base_url.rstrip("/") + "/v1/messages"
    headers = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01",
               "content-type": "application/json"}  # fmt: skip
    body = json.dumps({**BASE, "stream": True}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, body, headers)) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    frames = [f for f in text.split("\n\n") if f]
    names = [f.split("\n")[0] for f in frames]
    assert names[:3] == ["event: message_start", "event: content_block_start", "event: ping"]
    for f in frames:  # each frame: an event line and a data line whose type matches
        event, data = f.split("\n")
        assert json.loads(data.removeprefix("data: "))["type"] == event.removeprefix("event: ")


@pytest.mark.parametrize("extra", [
    {},
    {"output_config": {"format": {"type": "json_schema", "schema": {
        "type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
        "additionalProperties": False}}}},
    {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 3000},
    {"tools": [{"name": "put", "input_schema": {"type": "object", "properties": {
        "a": {"type": "integer"}}}}], "tool_choice": {"type": "tool", "name": "put"}},
    {"messages": [{"role": "user", "content": "x [[emulator:truncate]]"}]},
])
def test_the_sdk_rebuilds_the_non_streaming_message_from_the_events(emu, extra) -> None:
    params = {**BASE, **extra}
    sdk = client(emu)
    plain = sdk.messages.create(**params).to_dict()
    with sdk.messages.stream(**params) as stream:
        rebuilt = stream.get_final_message().to_dict()
    for message in (plain, rebuilt):
        message.pop("id")
        for block in message["content"]:
            block.pop("signature", None)
            block.pop("id", None)
            if block.get("citations") is None:
                block.pop("citations", None)
    assert rebuilt == plain


def test_cited_answers_stream_their_citations(emu) -> None:
    doc = {"type": "document", "citations": {"enabled": True},
           "source": {"type": "text", "media_type": "text/plain",
                      "data": "The sky is blue. Grass is green."}}  # fmt: skip
    params = {**BASE, "messages": [{"role": "user", "content": [doc, {
        "type": "text", "text": "What colour is the sky?"}]}]}
    sdk = client(emu)
    plain = sdk.messages.create(**params).to_dict()
    with sdk.messages.stream(**params) as stream:
        rebuilt = stream.get_final_message().to_dict()
    cited = [b["citations"] for b in plain["content"] if b.get("citations")]
    assert cited  # the answer does cite
    assert [b.get("citations") or None for b in rebuilt["content"]] == [
        b.get("citations") or None for b in plain["content"]]


# ---- streams that end badly (served by an injected fault as server-sent events)


def _sse(*events: dict[str, Any]) -> str:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)


START = {"type": "message_start", "message": {
    "id": "msg_x", "type": "message", "role": "assistant", "model": "claude-sonnet-5-5",
    "content": [], "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": 5, "output_tokens": 1}}}  # fmt: skip
SSE_HEADERS = {"content-type": "text/event-stream"}


def test_a_stream_that_ends_before_message_stop_is_lost(emu, clock) -> None:
    body = _sse(START, {"type": "content_block_start", "index": 0,
                        "content_block": {"type": "text", "text": ""}},
                {"type": "content_block_delta", "index": 0,
                 "delta": {"type": "text_delta", "text": '{"label": "x"'}})  # fmt: skip
    emu.inject_fault(path_regex=r"/v1/messages$", status=200, body=body, headers=SSE_HEADERS)
    out = ROWS[:1].pipe(batch_llm, model="claude-sonnet-5-5", mode="realtime", **KW)
    assert out["_status"].to_list() == ["failed"]
    assert out["_error"][0].startswith("lost: the request was sent but no answer came back")
    assert "ended before its message_stop event" in out["_error"][0]
    assert len(message_posts(emu)) == 1  # never sent again


def test_an_overloaded_error_event_inside_the_stream_is_retried(emu, clock) -> None:
    # Anthropic's errors page: an error can arrive after a 200, inside the stream, e.g.
    # overloaded_error, which outside a stream is a 529
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    emu.inject_fault(path_regex=r"/v1/messages$", status=200, body=_sse(START, error),
                     headers=SSE_HEADERS)  # fmt: skip
    out = ROWS[:1].pipe(batch_llm, model="claude-sonnet-5-5", mode="realtime", **KW)
    assert out["_status"].to_list() == ["completed"], out["_error"].to_list()
    assert len(message_posts(emu)) == 2
    assert len(emu.billing()) == 1


def test_an_invalid_request_error_event_fails_the_row_with_its_message(emu, clock) -> None:
    error = {"type": "error", "error": {"type": "invalid_request_error", "message": "Bad."}}
    emu.inject_fault(path_regex=r"/v1/messages$", status=200, body=_sse(START, error),
                     headers=SSE_HEADERS)  # fmt: skip
    out = ROWS[:1].pipe(batch_llm, model="claude-sonnet-5-5", mode="realtime",
                        keep_responses=True, **KW)  # fmt: skip
    assert out.select("_status", "_error").rows() == [("failed", "invalid_request_error: Bad.")]
    assert json.loads(out["_response"][0]) == error  # the event's data is the error's body
    assert len(message_posts(emu)) == 1
