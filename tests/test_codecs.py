"""Request encoders and result decoders of the three providers, by value, without I/O.

The emulator tests (``test_requests_sent.py``, ``test_values_roundtrip.py``) check the same
shapes end to end through the SDKs; these run in milliseconds, so that mutation testing
(``tools/mutation.py``) can afford them for every mutant of ``providers/``. Every expected
body and every expected result row is written out by hand from the providers' documented
wire shapes (OpenAI Batch JSONL ``/v1/chat/completions``, Anthropic Message Batches
``params`` and results lines, Gemini ``GenerateContentRequest`` / result-file lines), never
derived from the encoders or decoders themselves.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df.citations import instruction
from batchata_df.jobs import HISTORY_DTYPE
from batchata_df.models import effective_params
from batchata_df.providers import anthropic as anthropic_mod
from batchata_df.providers import base, make_provider
from batchata_df.providers import gemini as gemini_mod
from batchata_df.providers import openai as openai_mod
from batchata_df.providers.base import RESULTS, RequestSpec
from batchata_df.schema import AnswerSchema


class Answer(BaseModel):
    label: str
    score: float


ANSWER_SCHEMA = {
    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
    "required": ["label", "score"],
    "type": "object",
    "additionalProperties": False,
}
HISTORY = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 'he said "yo"'}]


def _spec(params: dict[str, Any], **kw: Any) -> RequestSpec:
    return RequestSpec(schema=AnswerSchema(kw.pop("schema", Answer)), params=params, **kw)


def _jobs(model: str, **extra: list[Any]) -> pl.DataFrame:
    cols: dict[str, Any] = {
        "job_id": ["a", "b"],
        "model": [model, model],
        "prompt": ['Say "x" ✓\n', "two"],
        "system": ["Be terse.", None],
    }
    schema: dict[str, Any] = {k: pl.String for k in cols}
    for name, values in extra.items():
        cols[name] = values
        schema[name] = HISTORY_DTYPE if name == "history" else None
    return pl.DataFrame(cols, schema_overrides={k: v for k, v in schema.items() if v})


def _lines(series: pl.Series) -> list[dict[str, Any]]:
    assert series.dtype == pl.String
    return [json.loads(line) for line in series.to_list()]


def _rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    assert frame.schema == RESULTS
    return frame.to_dicts()


def _row(**values: Any) -> dict[str, Any]:
    """A RESULTS row: every column named, the ones not given null."""
    return {name: values.get(name) for name in RESULTS}


def _jsonl(*objs: Any) -> bytes:
    return ("\n".join(json.dumps(o, ensure_ascii=False) for o in objs) + "\n").encode()


# ============================================================================ OpenAI

OPENAI_PARAMS = {
    "max_tokens": 300,
    "temperature": 0.2,
    "top_p": 0.9,
    "seed": 7,
    "stop": ["END"],
    "frequency_penalty": 0.5,
    "presence_penalty": -0.5,
}
OPENAI_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "Answer", "strict": True, "schema": ANSWER_SCHEMA},
}


def test_openai_lines_carry_system_history_prompt_cache_key_and_every_parameter() -> None:
    provider = make_provider("openai", offline=True)
    jobs = _jobs("gpt-4.1-mini", history=[HISTORY, None], cache_key=["k1", None])
    lines = _lines(provider.encode(jobs, _spec(OPENAI_PARAMS)))
    tail = {
        "response_format": OPENAI_FORMAT,
        "max_completion_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["END"],
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
    }
    assert lines == [
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4.1-mini",
                "messages": [
                    {"role": "system", "content": "Be terse."},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": 'he said "yo"'},
                    {"role": "user", "content": 'Say "x" ✓\n'},
                ],
                "prompt_cache_key": "k1",
                **tail,
            },
        },
        {
            "custom_id": "b",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4.1-mini",
                "messages": [{"role": "user", "content": "two"}],
                **tail,
            },
        },
    ]
    # the members after "messages" come in the documented order, as one shared tail
    assert list(lines[1]["body"]) == ["model", "messages", *tail]


def test_openai_content_parts_replace_the_prompt_and_reasoning_models_get_their_effort() -> None:
    provider = make_provider("openai", offline=True)
    parts = '[{"type":"text","text":"doc"},{"type":"text","text":"q"}]'
    jobs = _jobs("o4-mini", content_json=[parts, parts])
    spec = _spec({"reasoning_effort": "low"}, schema=None)
    default = effective_params("openai", "o4-mini", spec.params)["max_tokens"]
    lines = _lines(provider.encode(jobs, spec))
    assert [line["body"] for line in lines] == [
        {
            "model": "o4-mini",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": json.loads(parts)},
            ],
            "max_completion_tokens": default,  # the model's default, filled in
            "reasoning_effort": "low",
        },
        {
            "model": "o4-mini",
            "messages": [{"role": "user", "content": json.loads(parts)}],
            "max_completion_tokens": default,
            "reasoning_effort": "low",
        },
    ]
    # Without a model (a plan of no jobs) the parameters are passed through by name.
    assert provider.request_body_constant(spec) == ',"reasoning_effort":"low"'
    # A model that does not reason is not sent the effort (it would refuse the request).
    (line, _) = _lines(provider.encode(_jobs("gpt-4.1-mini"), spec))
    assert line["body"] == {
        "model": "gpt-4.1-mini",
        "messages": [{"role": "system", "content": "Be terse."},
                     {"role": "user", "content": 'Say "x" ✓\n'}],
        "max_completion_tokens": effective_params("openai", "gpt-4.1-mini", spec.params)[
            "max_tokens"],
    }
    assert provider.encode(jobs.clear(), spec).to_list() == []
    assert provider.line_overhead() == 1


def test_openai_schema_names_are_sanitised_for_the_api() -> None:
    assert openai_mod._schema_name("My Answer.v2") == "My_Answer_v2"
    assert openai_mod._schema_name("x" * 70) == "x" * 64
    assert openai_mod._schema_name("") == "answer"


def _openai_ok(cid: str, content: str | None, finish: str = "stop", **body: Any) -> dict[str, Any]:
    message = {"role": "assistant", "content": content, "refusal": body.pop("refusal", None)}
    return {
        "id": "batch_req_" + cid,
        "custom_id": cid,
        "response": {
            "status_code": body.pop("status_code", 200),
            "request_id": "req",
            "body": {
                "choices": [{"index": 0, "finish_reason": finish, "message": message}],
                **body,
            },
        },
        "error": None,
    }


def test_openai_result_lines_decode_to_exact_rows() -> None:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 3},
    }
    lines = [
        _openai_ok("ok", '{"label":"é"}', usage=usage),
        _openai_ok("long", '{"lab', finish="length", usage={"prompt_tokens": 1,
                                                             "completion_tokens": 2}),
        _openai_ok("refused", None, refusal="I can't help.", usage=usage),
        _openai_ok("filtered", '{"label":', finish="content_filter"),
        {"custom_id": "exp", "response": None,
         "error": {"code": "batch_expired", "message": "This request expired."}},
        {"custom_id": "can", "response": None,
         "error": {"code": "batch_cancelled", "message": "Cancelled."}},
        {"custom_id": "other", "response": None, "error": {"code": None, "message": "m"}},
        {"custom_id": "http", "response": {"status_code": 400, "body": {"error": {
            "message": "Unsupported parameter: 'temperature'", "type": "invalid_request_error",
            "param": "temperature", "code": "unsupported_parameter"}}}, "error": None},
        {"custom_id": "http2", "response": {"status_code": 500, "body": {}}, "error": None},
        {"custom_id": "expbody", "response": {"status_code": 400, "body": {"error": {
            "message": "late", "code": "batch_expired"}}}, "error": None},
    ]
    assert _rows(openai_mod.decode_lines(_jsonl(*lines))) == [
        _row(job_id="ok", outcome="succeeded", text='{"label":"é"}', truncated=False,
             input_tokens=10, output_tokens=5, cached_tokens=4, cache_write_tokens=2,
             reasoning_tokens=3),
        _row(job_id="long", outcome="succeeded", text='{"lab', truncated=True, input_tokens=1,
             output_tokens=2, cache_write_tokens=0, reasoning_tokens=0),
        _row(job_id="refused", outcome="errored", text="I can't help.",
             error="refusal: I can't help.", truncated=False, input_tokens=10,
             output_tokens=5, cached_tokens=4, cache_write_tokens=2, reasoning_tokens=3),
        _row(job_id="filtered", outcome="errored", text='{"label":',
             error="content_filter: OpenAI's content filter stopped the answer (finish_reason "
             "content_filter); the partial answer is kept as the raw answer", truncated=False),
        _row(job_id="exp", outcome="expired", error="batch_expired: This request expired.",
             truncated=False),
        _row(job_id="can", outcome="canceled", error="batch_cancelled: Cancelled.",
             truncated=False),
        _row(job_id="other", outcome="errored", error="error: m", truncated=False),
        _row(job_id="http", outcome="errored",
             error="http_400: Unsupported parameter: 'temperature'", truncated=False),
        _row(job_id="http2", outcome="errored", error="http_500: request failed",
             truncated=False),
        _row(job_id="expbody", outcome="expired", error="http_400: late", truncated=False),
    ]


def test_openai_kept_responses_are_the_lines_as_sent_and_blank_input_is_no_rows() -> None:
    first = '{"custom_id":"x","response":{"status_code":200,"body":{"choices":[{"finish_reason"' \
        ':"stop","message":{"content":"{}"}}]}},"error":null}'
    second = '{"custom_id":"y","response":null,"error":{"code":"e","message":"m"}}'
    data = f"\n{first}\r\n\n{second}\n".encode()
    decoded = openai_mod.decode_lines(data, responses=True)
    assert decoded.select("job_id", "outcome", "text", "response").rows() == [
        ("x", "succeeded", "{}", first),
        ("y", "errored", None, second),
    ]
    assert openai_mod.decode_lines(data)["response"].to_list() == [None, None]
    assert _rows(openai_mod.decode_lines(b" \n\n")) == []


def test_openai_error_bodies_become_one_readable_message() -> None:
    assert openai_mod._error_message({"error": {"message": "bad"}}) == "bad"
    assert openai_mod._error_message({"error": {"code": 1}}) == "{'code': 1}"
    assert openai_mod._error_message({"message": "top"}) == "top"
    assert openai_mod._error_message({"error": "plain"}) == "{'error': 'plain'}"
    assert openai_mod._error_message("text") == "text"
    assert openai_mod._model_of(_jobs("gpt-4.1")) == "gpt-4.1"
    assert openai_mod._model_of(_jobs("gpt-4.1").clear()) is None


# ============================================================================ Anthropic

ANTHROPIC_PARAMS = {"max_tokens": 300, "temperature": 0.2, "top_p": 0.8, "top_k": 5,
                    "stop": "END"}
ANTHROPIC_FORMAT = {
    "format": {
        "type": "json_schema",
        "schema": {
            "type": "object",
            "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
            "additionalProperties": False,
            "required": ["label", "score"],
        },
    }
}
ANTHROPIC_TAIL = {
    "max_tokens": 300,
    "temperature": 0.2,
    "top_p": 0.8,
    "top_k": 5,
    "stop_sequences": ["END"],  # a single stop string is sent as a list
}


def test_anthropic_params_carry_history_system_every_parameter_and_the_schema() -> None:
    provider = make_provider("anthropic", offline=True)
    jobs = _jobs("claude-haiku-4-5", history=[HISTORY, []])
    lines = _lines(provider.encode(jobs, _spec(ANTHROPIC_PARAMS)))
    assert lines == [
        {
            "custom_id": "a",
            "params": {
                "model": "claude-haiku-4-5",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": 'he said "yo"'},
                    {"role": "user", "content": 'Say "x" ✓\n'},
                ],
                "system": "Be terse.",
                **ANTHROPIC_TAIL,
                "output_config": ANTHROPIC_FORMAT,
            },
        },
        {
            "custom_id": "b",
            "params": {
                "model": "claude-haiku-4-5",
                "messages": [{"role": "user", "content": "two"}],
                **ANTHROPIC_TAIL,
                "output_config": ANTHROPIC_FORMAT,
            },
        },
    ]
    assert provider.line_overhead() == 1
    assert provider.encode(jobs.clear(), _spec(ANTHROPIC_PARAMS)).to_list() == []


def test_anthropic_citations_put_the_schema_in_the_system_prompt_instead() -> None:
    provider = make_provider("anthropic", offline=True)
    spec = _spec({"max_tokens": 10}, citations=True)
    lines = _lines(provider.encode(_jobs("claude-haiku-4-5"), spec))
    ours = instruction(ANSWER_SCHEMA)
    assert [line["params"] for line in lines] == [
        {
            "model": "claude-haiku-4-5",
            "messages": [{"role": "user", "content": 'Say "x" ✓\n'}],
            "system": ours + "\n\nBe terse.",
            "max_tokens": 10,
        },
        {
            "model": "claude-haiku-4-5",
            "messages": [{"role": "user", "content": "two"}],
            "system": ours,
            "max_tokens": 10,
        },
    ]
    # Citations without a schema: the user's system prompt alone, no instruction.
    plain = _lines(provider.encode(_jobs("claude-haiku-4-5"), _spec(
        {"max_tokens": 10}, citations=True, schema=None)))
    assert [line["params"].get("system") for line in plain] == ["Be terse.", None]


def test_anthropic_reasoning_effort_becomes_thinking_and_output_config_effort() -> None:
    provider = make_provider("anthropic", offline=True)
    spec = _spec({"reasoning_effort": "high"})
    (line, _) = _lines(provider.encode(_jobs("claude-opus-4-7"), spec))
    params = line["params"]
    assert {k: v for k, v in params.items() if k not in ("model", "messages", "system")} == {
        "max_tokens": effective_params("anthropic", "claude-opus-4-7", spec.params)["max_tokens"],
        "thinking": {"type": "adaptive"},
        "output_config": {**ANTHROPIC_FORMAT, "effort": "high"},
    }
    no_schema = _spec({"reasoning_effort": "high", "max_tokens": 9}, schema=None)
    (line, _) = _lines(provider.encode(_jobs("claude-opus-4-7"), no_schema))
    assert line["params"]["output_config"] == {"effort": "high"}
    # Without a model (no jobs) the effort is not a Messages API member and is left out.
    assert provider.request_params_constant(no_schema) == ',"max_tokens":9'


def test_anthropic_cache_breakpoints_mark_system_split_prompt_and_last_file() -> None:
    provider = make_provider("anthropic", offline=True)
    mark = {"type": "ephemeral"}
    jobs = _jobs("claude-haiku-4-5", cache_split=[4, None], cache_system=[True, True],
                 cache_files=[False, False])
    lines = _lines(provider.encode(jobs, _spec({"max_tokens": 10}, schema=None)))
    assert [line["params"] for line in lines] == [
        {
            "model": "claude-haiku-4-5",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": 'Say ', "cache_control": mark},
                {"type": "text", "text": '"x" ✓\n'},
            ]}],
            "system": [{"type": "text", "text": "Be terse.", "cache_control": mark}],
            "max_tokens": 10,
        },
        {   # no system prompt to mark, no shared prefix: sent as without caching
            "model": "claude-haiku-4-5",
            "messages": [{"role": "user", "content": "two"}],
            "max_tokens": 10,
        },
    ]
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                          "data": "d"}}
    content = json.dumps([doc, {"type": "text", "text": "q"}], separators=(",", ":"))
    jobs = _jobs("claude-haiku-4-5", content_json=[content, content], cache_split=[None, 2],
                 cache_system=[False, False], cache_files=[True, False])
    lines = _lines(provider.encode(jobs, _spec({"max_tokens": 10}, schema=None)))
    assert [line["params"]["messages"][0]["content"] for line in lines] == [
        [{**doc, "cache_control": mark}, {"type": "text", "text": "q"}],
        [doc, {"type": "text", "text": "q"}],  # content parts are never split
    ]
    assert [line["params"].get("system") for line in lines] == ["Be terse.", None]


def _claude(cid: str, blocks: list[dict[str, Any]], stop: str = "end_turn",
            usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"custom_id": cid, "result": {"type": "succeeded", "message": {
        "id": "msg", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": blocks, "stop_reason": stop, "stop_sequence": None,
        "usage": usage or {"input_tokens": 3, "output_tokens": 2}}}}


def test_anthropic_result_lines_decode_to_exact_rows() -> None:
    usage = {"input_tokens": 3, "output_tokens": 20, "cache_creation_input_tokens": 5,
             "cache_read_input_tokens": 7, "output_tokens_details": {"thinking_tokens": 12}}
    thinking = {"type": "thinking", "thinking": "hmm", "signature": "s"}
    text = [{"type": "text", "text": '{"label":'}, {"type": "text", "text": '"é"}'}]
    lines = [
        _claude("ok", [thinking, *text], usage=usage),
        _claude("think", [{"type": "redacted_thinking", "data": "x"}, *text]),
        _claude("long", text[:1], stop="max_tokens"),
        _claude("refused", [{"type": "text", "text": "No."}], stop="refusal"),
        _claude("empty-refusal", [], stop="refusal"),
        _claude("full", text[:1], stop="model_context_window_exceeded"),
        {"custom_id": "err", "result": {"type": "errored", "error": {"type": "error",
         "error": {"type": "invalid_request_error", "message": "max_tokens: too big"}}}},
        {"custom_id": "err2", "result": {"type": "errored", "error": {"type": "error",
         "error": {}}}},
        {"custom_id": "exp", "result": {"type": "expired"}},
        {"custom_id": "can", "result": {"type": "canceled"}},
    ]
    no_think = {"input_tokens": 3, "output_tokens": 2, "cached_tokens": 0,
                "cache_write_tokens": 0, "reasoning_tokens": 0}
    assert _rows(anthropic_mod.decode_results(_jsonl(*lines))) == [
        _row(job_id="ok", outcome="succeeded", text='{"label":"é"}', truncated=False,
             input_tokens=15, output_tokens=20, cached_tokens=7, cache_write_tokens=5,
             reasoning_tokens=12),
        # a thinking block but no breakdown: the thinking share is unknown, not 0
        _row(job_id="think", outcome="succeeded", text='{"label":"é"}', truncated=False,
             input_tokens=3, output_tokens=2, cached_tokens=0, cache_write_tokens=0),
        _row(job_id="long", outcome="succeeded", text='{"label":', truncated=True, **no_think),
        _row(job_id="refused", outcome="errored", text="No.", error="refusal: No.",
             truncated=False, **no_think),
        _row(job_id="empty-refusal", outcome="errored", error="refusal: ", truncated=False,
             **no_think),
        _row(job_id="full", outcome="errored", text='{"label":',
             error="model_context_window_exceeded: the prompt and the answer filled the "
             "model's context window before the answer was complete; shorten the prompt or "
             "files", truncated=False, **no_think),
        _row(job_id="err", outcome="errored",
             error="invalid_request_error: max_tokens: too big", truncated=False),
        _row(job_id="err2", outcome="errored", error="error: ", truncated=False),
        _row(job_id="exp", outcome="expired",
             error="expired: the batch expired (24 h) before this request ran", truncated=False),
        _row(job_id="can", outcome="canceled",
             error="cancelled: the batch was cancelled before this request ran",
             truncated=False),
    ]
    assert _rows(anthropic_mod.decode_results(b"\n \n")) == []


def test_anthropic_kept_responses_and_citations_by_field() -> None:
    first = json.dumps(_claude("a", [{"type": "text", "text": "{}"}]))
    data = f"{first}\n\n".encode()
    kept = anthropic_mod.decode_results(data, _spec({}, keep_responses=True))
    assert kept["response"].to_list() == [first]
    assert anthropic_mod.decode_results(data, _spec({}))["response"].to_list() == [None]
    assert anthropic_mod.decode_results(data)["citations"].to_list() == [None]
    # Citations on: the text blocks' citations go to the field whose value they back.
    cite = {"type": "char_location", "cited_text": "Paris", "document_index": 0,
            "document_title": "doc.txt", "start_char_index": 4, "end_char_index": 9}
    blocks = [
        {"type": "text", "text": '{"label": "'},
        {"type": "text", "text": "Paris", "citations": [cite]},
        {"type": "text", "text": '", "score": 1}'},
    ]
    data = _jsonl(_claude("c", blocks), {"custom_id": "e", "result": {"type": "expired"}})
    decoded = anthropic_mod.decode_results(data, _spec({}, citations=True))
    assert decoded["text"].to_list() == ['{"label": "Paris", "score": 1}', None]
    cited = decoded["citations"].to_list()
    assert cited[1] is None
    assert json.loads(cited[0]) == {
        "label": [{"cited_text": "Paris", "document_index": 0, "document_title": "doc.txt",
                   "start_page": None, "end_page": None, "start_char": 4, "end_char": 9,
                   "start_block": None, "end_block": None}],
        "score": [],
    }


def test_anthropic_error_bodies_and_batch_states() -> None:
    from anthropic.types.messages import MessageBatch

    assert anthropic_mod._error_message(
        {"type": "error", "error": {"type": "not_found_error", "message": "no batch"}}
    ) == "not_found_error: no batch"
    assert anthropic_mod._error_message({"message": "m"}) == "error: m"
    assert anthropic_mod._error_message({"error": {"type": "t"}}) == "t: {'type': 't'}"
    assert anthropic_mod._error_message({"error": "x"}) == "{'error': 'x'}"
    assert anthropic_mod._error_message(None) == "None"

    def batch(status: str, cancelled: bool = False, **counts: int) -> MessageBatch:
        c = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        return MessageBatch.model_validate({
            "id": "msgbatch_1", "type": "message_batch", "processing_status": status,
            "request_counts": {**c, **counts}, "created_at": "2026-01-01T00:00:00Z",
            "expires_at": "2026-01-02T00:00:00Z", "ended_at": None, "archived_at": None,
            "cancel_initiated_at": "2026-01-01T01:00:00Z" if cancelled else None,
            "results_url": None,
        })

    running = anthropic_mod._poll_of(batch("in_progress", processing=3, succeeded=2))
    assert running == base.BatchPoll(base.ProviderState.RUNNING, "in_progress", None, {
        "total": 5, "processing": 3, "succeeded": 2, "errored": 0, "canceled": 0,
        "expired": 0})
    assert running.finished == 2
    counts = {"total": 10, "processing": 0, "succeeded": 1, "errored": 2, "canceled": 3,
              "expired": 4}
    kw = {k: v for k, v in counts.items() if k != "total"}
    assert anthropic_mod._poll_of(batch("ended", cancelled=True, **kw)) == base.BatchPoll(
        base.ProviderState.CANCELLED, "ended", "canceled", counts)
    assert anthropic_mod._poll_of(batch("ended", **kw)) == base.BatchPoll(
        base.ProviderState.EXPIRED, "ended",
        "4 requests expired before the batch finished (24 h)", counts)
    assert anthropic_mod._poll_of(batch("ended", succeeded=2)) == base.BatchPoll(
        base.ProviderState.ENDED, "ended", None,
        {"total": 2, "processing": 0, "succeeded": 2, "errored": 0, "canceled": 0,
         "expired": 0})


# ============================================================================ Gemini

GEMINI_PARAMS = {"max_tokens": 3000, "temperature": 0.2, "top_p": 0.9, "top_k": 5,
                 "stop": "END", "seed": 7}
GEMINI_CONFIG = {
    "responseMimeType": "application/json",
    "responseJsonSchema": {**ANSWER_SCHEMA, "propertyOrdering": ["label", "score"]},
    "maxOutputTokens": 3000,
    "temperature": 0.2,
    "topP": 0.9,
    "topK": 5,
    "stopSequences": ["END"],
    "seed": 7,
}


def test_gemini_lines_carry_history_system_parts_and_the_generation_config() -> None:
    provider = make_provider("gemini", offline=True)
    jobs = _jobs("gemini-2.5-flash", history=[HISTORY, None])
    lines = _lines(provider.encode(jobs, _spec(GEMINI_PARAMS)))
    assert lines == [
        {
            "key": "a",
            "request": {
                "contents": [
                    {"role": "user", "parts": [{"text": "hi"}]},
                    {"role": "model", "parts": [{"text": 'he said "yo"'}]},
                    {"role": "user", "parts": [{"text": 'Say "x" ✓\n'}]},
                ],
                "systemInstruction": {"parts": [{"text": "Be terse."}]},
                "generationConfig": GEMINI_CONFIG,
            },
        },
        {
            "key": "b",
            "request": {
                "contents": [{"role": "user", "parts": [{"text": "two"}]}],
                "generationConfig": GEMINI_CONFIG,
            },
        },
    ]
    assert list(lines[0]["request"]["generationConfig"]) == list(GEMINI_CONFIG)
    # unicode is sent as is (not \u-escaped): the config is one shared JSON text
    assert "✓" in provider.encode(jobs, _spec(GEMINI_PARAMS)).to_list()[0]
    assert provider.line_overhead() == 1
    # the inline form the SDK takes: contents, config with the system, metadata key
    inline = gemini_mod._inlined_request(provider.encode(jobs, _spec(GEMINI_PARAMS))[0])
    assert inline == {
        "contents": lines[0]["request"]["contents"],
        "config": {**GEMINI_CONFIG, "systemInstruction": {"parts": [{"text": "Be terse."}]}},
        "metadata": {"key": "a"},
    }
    inline = gemini_mod._inlined_request(provider.encode(jobs, _spec(GEMINI_PARAMS))[1])
    assert inline["config"] == GEMINI_CONFIG


def test_gemini_content_parts_and_thinking_config() -> None:
    provider = make_provider("gemini", offline=True)
    parts = '[{"text":"doc"},{"inlineData":{"data":"AA==","mime_type":"image/png"}}]'
    jobs = _jobs("gemini-2.5-flash", content_json=[parts, parts])
    spec = _spec({"reasoning_effort": "none", "stop": ["A", "B"]}, schema=None)
    lines = _lines(provider.encode(jobs, spec))
    assert [line["request"]["contents"] for line in lines] == [
        [{"role": "user", "parts": json.loads(parts)}]
    ] * 2
    assert lines[0]["request"]["generationConfig"] == {
        "stopSequences": ["A", "B"],
        "maxOutputTokens": effective_params("gemini", "gemini-2.5-flash", spec.params)[
            "max_tokens"
        ],
        "thinkingConfig": {"thinkingBudget": 0},
    }
    # No model (no jobs): parameters by their wire names, the effort left out.
    assert json.loads(provider.generation_config(spec)) == {"stopSequences": ["A", "B"]}
    assert provider.encode(jobs.clear(), spec).to_list() == []


def test_gemini_schema_dialect_rewrites() -> None:
    rewrite = gemini_mod.gemini_json_schema
    assert rewrite({"type": "object", "properties": {"b": {"const": True},
                                                     "n": {"const": None},
                                                     "s": {"const": "x"},
                                                     "e": {"enum": [True, False]},
                                                     "f": {"enum": ["p", "q"]}}}) == {
        "type": "object",
        "properties": {"b": {"type": "boolean"}, "n": {"type": "null"}, "s": {"enum": ["x"]},
                       "e": {"type": "boolean"}, "f": {"enum": ["p", "q"]}},
        "propertyOrdering": ["b", "n", "s", "e", "f"],
    }
    assert rewrite({"type": ["string", "null"], "title": "T", "default": 1}) == {
        "anyOf": [{"type": "string"}, {"type": "null"}], "title": "T"}
    assert rewrite({"$ref": "#/$defs/A", "description": "d", "$comment": "c"}) == {
        "$ref": "#/$defs/A", "$comment": "c"}
    decimal = {"anyOf": [{"type": "number"}, {"type": "string", "pattern": "^-?\\d+$"}],
               "description": "amount"}
    assert rewrite(decimal) == {"type": "number", "description": "amount"}
    assert rewrite({"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "x"},
                              {"type": "null"}]}) == {
        "anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert rewrite({"anyOf": [{"type": "string"}, {"type": "string", "pattern": "x"}]}) == {
        "anyOf": [{"type": "string"}, {"type": "string", "pattern": "x",
                                       "description": "pattern: x"}]}
    assert rewrite({"allOf": [{"type": "string", "title": "A"}, {"title": "B",
                                                                  "format": "date"}]}) == {
        "type": "string", "title": "A", "format": "date"}
    assert rewrite({"type": "string", "minLength": 2, "maxLength": 5,
                    "description": "code"}) == {
        "type": "string", "minLength": 2, "maxLength": 5,
        "description": "code (minLength: 2; maxLength: 5)"}
    assert rewrite({"type": "array", "items": [{"const": 1}], "uniqueItems": True}) == {
        "type": "array", "items": [{"enum": [1]}], "uniqueItems": True,
        "description": "uniqueItems: True"}
    assert rewrite({"type": "object", "properties": {}}) == {"type": "object",
                                                            "properties": {}}
    nested = {"$defs": {"A": {"type": "object", "properties": {"x": {"const": 2}}}},
              "properties": {"a": {"$ref": "#/$defs/A"}}}
    assert rewrite(nested) == {
        "$defs": {"A": {"type": "object", "properties": {"x": {"enum": [2]}},
                        "propertyOrdering": ["x"]}},
        "properties": {"a": {"$ref": "#/$defs/A"}}, "propertyOrdering": ["a"]}


def test_gemini_refuses_recursive_models_naming_the_cycle() -> None:
    from batchata_df.errors import SchemaError

    ok = {"$defs": {"A": {"properties": {"b": {"$ref": "#/$defs/B"}}},
                    "B": {"properties": {"c": {"$ref": "#/$defs/C"}}},
                    "C": {"type": "string"}},
          "properties": {"a": {"$ref": "#/$defs/A"}, "a2": {"$ref": "#/$defs/A"}}}
    assert gemini_mod.gemini_json_schema(ok)["propertyOrdering"] == ["a", "a2"]
    cyclic = {"$defs": {"Top": {"properties": {"a": {"$ref": "#/$defs/A"}}},
                        "A": {"properties": {"b": {"items": [{"$ref": "#/$defs/B"}]}}},
                        "B": {"properties": {"a": {"$ref": "#/$defs/A"}}}}}
    with pytest.raises(SchemaError) as info:
        gemini_mod.gemini_json_schema(cyclic)
    assert str(info.value) == (
        "the answer model is recursive (A -> B -> A); Gemini structured output cannot "
        "express a recursive model whose fields are all required: give the nested model a "
        "fixed depth (separate classes per level)"
    )


def _gem(key: str | None, parts: list[dict[str, Any]] | None, finish: str | None = "STOP",
         **response: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {"index": 0}
    if parts is not None:
        candidate["content"] = {"role": "model", "parts": parts}
    if finish is not None:
        candidate["finishReason"] = finish
    return {"key": key, "response": {"candidates": [candidate], **response}}


def test_gemini_result_lines_decode_to_exact_rows() -> None:
    usage = {"promptTokenCount": 11, "candidatesTokenCount": 4, "thoughtsTokenCount": 6,
             "cachedContentTokenCount": 8, "totalTokenCount": 21}
    text = [{"text": '{"label":'}, {"text": '"é"}'}]
    lines = [
        _gem("ok", [{"text": "plan", "thought": True}, *text], usageMetadata=usage),
        _gem("long", text[:1], finish="MAX_TOKENS",
             usageMetadata={"promptTokenCount": 2}),
        _gem("safety", text[:1], finish="SAFETY"),
        {"key": "blocked", "response": {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                                        "usageMetadata": {"promptTokenCount": 3}}},
        _gem("empty", [], finish=None),
        _gem("thought-only", [{"text": "t", "thought": True}], finish="STOP"),
        {"key": "can", "error": {"code": 499, "message": "cancelled"}},
        {"key": "can1", "error": {"code": 1}},
        {"key": "bad", "error": {"code": 400, "message": "Invalid JSON payload"}},
        {"key": "nocode", "error": {"message": "x"}},
        # A line without its key that holds a response was billed: kept with a null id, so
        # its usage counts as unmatched spend (engine.collection); without one: dropped.
        {"key": None, "response": {}},
        {"key": None, "error": {"code": 500, "message": "no key"}},
        _gem("unspec", text, finish="FINISH_REASON_UNSPECIFIED"),
    ]
    assert _rows(gemini_mod.decode_lines(_jsonl(*lines))) == [
        _row(job_id="ok", outcome="succeeded", text='{"label":"é"}', truncated=False,
             input_tokens=11, output_tokens=10, cached_tokens=8, reasoning_tokens=6),
        _row(job_id="long", outcome="succeeded", text='{"label":', truncated=True,
             input_tokens=2, output_tokens=0, cached_tokens=0, reasoning_tokens=0),
        _row(job_id="safety", outcome="errored",
             error="safety: Gemini stopped the answer (finishReason SAFETY)", truncated=False),
        _row(job_id="blocked", outcome="errored",
             error="blocked: the prompt was blocked (PROHIBITED_CONTENT)", truncated=False,
             input_tokens=3, output_tokens=0, cached_tokens=0, reasoning_tokens=0),
        _row(job_id="empty", outcome="errored",
             error="no_answer: the model returned no text (finish reason unknown)",
             truncated=False),
        _row(job_id="thought-only", outcome="errored",
             error="no_answer: the model returned no text (finish reason STOP)",
             truncated=False),
        _row(job_id="can", outcome="canceled", error="error_499: cancelled", truncated=False),
        _row(job_id="can1", outcome="canceled", error="error_1: request failed",
             truncated=False),
        _row(job_id="bad", outcome="errored", error="error_400: Invalid JSON payload",
             truncated=False),
        _row(job_id="nocode", outcome="errored", error="error_?: x", truncated=False),
        _row(job_id=None, outcome="errored",
             error="no_answer: the model returned no text (finish reason unknown)",
             truncated=False),
        _row(job_id="unspec", outcome="succeeded", text='{"label":"é"}', truncated=False),
    ]
    assert _rows(gemini_mod.decode_lines(b"  \n")) == []


def test_gemini_kept_responses_inlined_lines_and_error_details() -> None:
    from google.genai import types

    first = json.dumps(_gem("a", [{"text": "{}"}]))
    second = '{"key":"b","error":{"code":400,"message":"m"}}'
    data = f"{first}\n\n{second}\n".encode()
    assert gemini_mod.decode_lines(data, responses=True)["response"].to_list() == [
        first, second]
    assert gemini_mod.decode_lines(data)["response"].to_list() == [None, None]
    inlined = [
        types.InlinedResponse.model_validate({
            "metadata": {"key": "a"},
            "response": {"candidates": [{"content": {"role": "model",
                                                     "parts": [{"text": "{}"}]},
                                         "finishReason": "STOP"}]},
        }),
        types.InlinedResponse.model_validate({
            "metadata": {"key": "b"}, "error": {"code": 400, "message": "m"}}),
    ]
    lines = gemini_mod._inlined_lines(inlined).decode().split("\n")
    assert [json.loads(line) for line in lines] == [
        {"key": "a", "response": {"candidates": [{"content": {"role": "model", "parts": [
            {"text": "{}"}]}, "finishReason": "STOP"}]}},
        {"key": "b", "error": {"code": 400, "message": "m"}},
    ]
    assert gemini_mod._stringify_details(
        [{"error": {"details": [{"b": 1, "a": 2}, "s"], "code": 3}}, 5, "x"]
    ) == [{"error": {"details": ['{"a": 2, "b": 1}', "s"], "code": 3}}, 5, "x"]
    assert gemini_mod._stringify_details({"error": {"details": "d"}, "n": {"error": 1}}) == {
        "error": {"details": "d"}, "n": {"error": 1}}


# ============================================================================ base


def test_batch_poll_counts_finished_requests_per_provider_vocabulary() -> None:
    poll = base.BatchPoll
    running = base.ProviderState.RUNNING
    assert poll(running, "x").finished == 0
    assert poll(running, "x", counts={"total": 10, "processing": 4}).finished == 6
    assert poll(running, "x", counts={"processing": 4}).finished == 0
    assert poll(running, "x", counts={"total": 10, "pending": 7}).finished == 3
    assert poll(running, "x", counts={"pending": 7}).finished == 0
    assert poll(running, "x", counts={"total": 10, "completed": 3, "failed": 2}).finished == 5
    assert poll(running, "x", counts={"total": 10, "failed": 2}).finished == 2
    assert poll(running, "x", counts={"total": 10, "completed": 3}).finished == 3


def test_history_messages_and_json_strings() -> None:
    jobs = pl.DataFrame({"history": [HISTORY, [], None]}, schema={"history": HISTORY_DTYPE})
    plain = jobs.select(base.history_messages(jobs)).to_series().to_list()
    assert plain == [
        '{"role":"user","content":"hi"},{"role":"assistant","content":"he said \\"yo\\""},',
        "",
        "",
    ]
    gem = jobs.select(base.history_messages(jobs, gemini=True)).to_series().to_list()
    assert gem == [
        '{"role":"user","parts":[{"text":"hi"}]},'
        '{"role":"model","parts":[{"text":"he said \\"yo\\""}]},',
        "",
        "",
    ]
    none = pl.DataFrame({"prompt": ["p"]})
    assert none.select(base.history_messages(none)).to_series().to_list() == [""]
    texts = pl.DataFrame({"s": ['a "b"\n\\ é', None]})
    assert texts.select(base.json_string(pl.col("s"))).to_series().to_list() == [
        json.dumps('a "b"\n\\ é', ensure_ascii=False), "null"]  # callers guard nulls


def test_result_lines_read_jsonl_and_conform(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b'{"id":"a","n":1,"x":[1]}\r\n\n  \n{"id":"b","n":null}\n{"id":"c","n":3}'
    assert base.result_lines(data).to_list() == [
        '{"id":"a","n":1,"x":[1]}', '{"id":"b","n":null}', '{"id":"c","n":3}']
    assert base.result_lines(data).name == "response"
    schema = pl.Schema({"id": pl.String, "n": pl.Int64})
    monkeypatch.setattr(base, "JSONL_SLICE_BYTES", 5)  # several slices, whole lines each
    read = base.read_jsonl(data, schema)
    assert read.schema == schema
    assert read.rows() == [("a", 1), ("b", None), ("c", 3)]
    assert base.read_jsonl(b"", schema).schema == schema
    decoded = pl.DataFrame({"id": ["a", "b"]})
    lines = pl.Series(["l1", "l2"])
    assert base.with_result_lines(decoded, lines)[base.LINE_COLUMN].to_list() == ["l1", "l2"]
    assert base.with_result_lines(decoded, lines[:1])[base.LINE_COLUMN].to_list() == [
        None, None]
    conformed = base.conform_results(pl.DataFrame({"text": ["t"], "input_tokens": [1.0]}))
    assert conformed.schema == RESULTS
    assert conformed.rows() == [(None, None, "t", None, None, 1, None, None, None, None, None,
                                 None, None)]
    assert base.empty_results().schema == RESULTS
    assert base.empty_results().height == 0


def test_realtime_failure_classification() -> None:
    assert base.retry_after_seconds(None) is None
    assert base.retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert base.retry_after_seconds({"retry-after-ms": "-5"}) == 0.0
    assert base.retry_after_seconds({"retry-after-ms": "soon", "retry-after": "3"}) == 3.0
    assert base.retry_after_seconds({"retry-after": "-3"}) == 0.0
    assert base.retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert base.retry_after_seconds({"retry-after": "Fri, 01 Jan 9999 00:00:00 GMT"}) > 1e9
    assert base.retry_after_seconds({"retry-after": "later"}) is None
    assert [base.failure_kind(s) for s in (429, 503, 529, 500, 502, 504, 408, 409, 400, 404,
                                           None)] == [
        "rate_limited", "rate_limited", "rate_limited", "server_error", "server_error",
        "server_error", "server_error", "server_error", None, None, None]

    class ConnectError(Exception):
        pass

    class ReadTimeout(Exception):
        pass

    try:
        try:
            raise ConnectError("refused")
        except ConnectError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        wrapped = outer
    assert base.transport_failure(wrapped, "openai") == base.RealtimeFailure(
        "unreachable", "openai: RuntimeError: wrapped")
    assert base.transport_failure(ReadTimeout("slow"), "gemini") == base.RealtimeFailure(
        "lost",
        "lost: the request was sent but no answer came back (gemini: ReadTimeout: slow); the "
        "provider may have billed it, so it is not sent again automatically "
        "(retry_failed=True sends it)",
    )
    # A connect timeout and a refused connection (in any link of the chain) also prove that
    # nothing was sent, as the SDKs raise them (httpx, or the socket error underneath).
    class ConnectTimeout(Exception):  # httpx's name for it
        pass

    assert base.transport_failure(ConnectTimeout("t"), "anthropic").kind == "unreachable"
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError:
            raise OSError("the connection failed") from None
    except OSError as e:  # the refusal is only the context here, not the cause
        refused = e
    assert refused.__cause__ is None and isinstance(refused.__context__, ConnectionRefusedError)
    assert base.transport_failure(refused, "gemini").kind == "unreachable"
    row = pl.DataFrame({"job_id": ["a"]})
    assert base.kept_response(row, "{}", _spec({}, keep_responses=True))["response"].to_list() \
        == ["{}"]
    assert base.kept_response(row, "{}", _spec({}))["response"].to_list() == [None]


def test_bounded_listing_stops_with_an_error_past_its_bounds() -> None:
    from batchata_df.errors import OrphanedBatchError

    assert list(base.bounded_listing(range(3), provider="p", what="w", max_listed=3,
                                     seconds=60)) == [0, 1, 2]
    listed = base.bounded_listing(range(5), provider="OpenAI", what="key k", max_listed=2,
                                  seconds=60)
    assert next(listed) == 0
    assert next(listed) == 1
    with pytest.raises(OrphanedBatchError) as info:
        next(listed)
    assert str(info.value) == (
        "a OpenAI batch (key k) may already exist (created by this call or an earlier one "
        "just before an error or a stop); 2 batches were listed in the account without "
        "finding or ruling it out (the search "
        "stops after 2 batches or 60 s). Look for it in the provider's batch list: if it "
        "exists, let it finish and run again later; if not, run again with a new state folder"
    )
    timed = base.bounded_listing(range(5), provider="p", what="w", max_listed=10, seconds=-1)
    with pytest.raises(OrphanedBatchError):
        next(timed)


# ============================================================================ SDK errors
# The one place SDK exceptions become our typed errors: real SDK exception objects (built
# from an httpx response, as the SDKs build them), never a network call.

KEY = "sk-codecs-test-not-a-secret-1234567890"


def _response(status: int, body: dict[str, Any]) -> Any:
    import httpx2 as httpx

    request = httpx.Request("POST", "http://127.0.0.1:9/v1/x")
    return httpx.Response(status, json=body, request=request)


def _raise(error: BaseException) -> Any:
    def fn() -> Any:
        raise error

    return fn


def test_openai_sdk_errors_become_typed_errors_naming_the_fix() -> None:
    import openai

    from batchata_df.errors import CredentialsError, ProviderError

    provider = openai_mod.OpenAIProvider(api_key=KEY, base_url="http://127.0.0.1:9/v1")
    assert provider._call("list batches", lambda: 7) == 7
    auth = openai.AuthenticationError(
        "bad key", response=_response(401, {"error": {"message": "bad key"}}), body=None)
    with pytest.raises(CredentialsError) as info:
        provider._call("create a batch", _raise(auth))
    assert str(info.value) == (
        "OpenAI rejected the API key while trying to create a batch: check OPENAI_API_KEY")
    body = {"error": {"message": "Too many requests", "type": "rate_limit"}}
    limited = openai.RateLimitError("x", response=_response(429, body), body=body)
    with pytest.raises(ProviderError) as info:
        provider._call("upload the input file", _raise(limited))
    assert str(info.value) == (
        "OpenAI failed to upload the input file: HTTP 429: Too many requests")
    assert (info.value.status_code, info.value.permanent) == (429, False)
    body = {"error": {"message": "No such batch"}}
    missing = openai.NotFoundError("x", response=_response(404, body), body=body)
    with pytest.raises(ProviderError) as info:
        provider._call("poll", _raise(missing))
    assert (info.value.status_code, info.value.permanent) == (404, True)
    import httpx2 as httpx

    lost = openai.APIConnectionError(request=httpx.Request("GET", "http://127.0.0.1:9"))
    with pytest.raises(ProviderError) as info:
        provider._call("poll", _raise(lost))
    assert str(info.value) == "OpenAI failed to poll: APIConnectionError: Connection error."
    assert info.value.status_code is None
    with pytest.raises(KeyError):  # not an SDK error: not ours to translate
        provider._call("poll", _raise(KeyError("x")))


def test_anthropic_sdk_errors_become_typed_errors_and_creates_are_classified() -> None:
    import anthropic
    import httpx2 as httpx

    from batchata_df.errors import CredentialsError, ProviderError

    provider = anthropic_mod.AnthropicProvider(api_key=KEY, base_url="http://127.0.0.1:9")
    assert provider._call("list batches", lambda: "ok") == "ok"

    def status(cls: Any, code: int, kind: str, message: str) -> Any:
        body = {"type": "error", "error": {"type": kind, "message": message}}
        return cls(message, response=_response(code, body), body=body)

    with pytest.raises(CredentialsError) as info:
        provider._call("create a batch", _raise(status(
            anthropic.AuthenticationError, 401, "authentication_error", "invalid x-api-key")))
    assert str(info.value) == (
        "Anthropic rejected the API key while trying to create a batch: check "
        "ANTHROPIC_API_KEY")
    overloaded = status(anthropic.InternalServerError, 529, "overloaded_error", "Overloaded")
    with pytest.raises(ProviderError) as info:
        provider._call("poll", _raise(overloaded))
    assert str(info.value) == "Anthropic failed to poll: HTTP 529: overloaded_error: Overloaded"
    assert info.value.status_code == 529
    lost = anthropic.APIConnectionError(request=httpx.Request("GET", "http://127.0.0.1:9"))
    with pytest.raises(ProviderError) as info:
        provider._call("poll", _raise(lost))
    assert str(info.value) == "Anthropic failed to poll: APIConnectionError: Connection error."
    assert info.value.status_code is None

    classify = anthropic_mod._create_failure
    assert classify(status(anthropic.RateLimitError, 429, "rate_limit_error", "m")) == "refused"
    assert classify(status(anthropic.OverloadedError, 529, "overloaded_error", "m")) == "refused"
    assert classify(lost) == "unknown"
    assert classify(anthropic.APITimeoutError(request=httpx.Request("GET", "http://x"))) == (
        "unknown")
    for code, expected in ((500, "unknown"), (503, "unknown"), (408, "unknown"),
                           (409, "unknown"), (400, "final"), (413, "final"), (499, "final")):
        error = status(anthropic.APIStatusError, code, "e", "m")
        assert classify(error) == expected, code
    assert classify(None) == "final"
    assert classify(ValueError("x")) == "final"


def test_gemini_sdk_errors_become_typed_errors_and_unparsable_reads_are_permanent() -> None:
    import httpx2 as httpx
    from google.genai import errors

    from batchata_df.errors import CredentialsError, ProviderError

    provider = gemini_mod.GeminiProvider(api_key=KEY, base_url="http://127.0.0.1:9")
    assert provider._call("poll", lambda: 1) == 1

    def api(code: int, status: str, message: str) -> Any:
        return errors.APIError(code, {"error": {"code": code, "status": status,
                                                "message": message}})

    for error in (api(403, "PERMISSION_DENIED", "denied"),
                  api(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid key.")):
        with pytest.raises(CredentialsError) as info:
            provider._call("create a batch", _raise(error))
        assert str(info.value) == (
            "Gemini rejected the API key while trying to create a batch: check "
            f"GEMINI_API_KEY (or GOOGLE_API_KEY): HTTP {error.code} {error.status}")
    with pytest.raises(CredentialsError):
        provider._call("poll", _raise(api(401, "UNAUTHENTICATED", "who")))
    with pytest.raises(ProviderError) as info:
        provider._call("poll", _raise(api(429, "RESOURCE_EXHAUSTED", "quota")))
    assert str(info.value) == "Gemini failed to poll: HTTP 429 RESOURCE_EXHAUSTED: quota"
    assert (info.value.status_code, info.value.permanent) == (429, False)
    with pytest.raises(ProviderError) as info:
        provider._call("poll", _raise(errors.APIError(500, {})))
    assert str(info.value) == "Gemini failed to poll: HTTP 500 None: 500 None. {}"
    lost = httpx.ConnectError("refused")
    with pytest.raises(ProviderError) as info:
        provider._call("poll", _raise(lost))
    assert str(info.value) == "Gemini failed to poll: ConnectError: refused"
    assert (info.value.status_code, info.value.permanent) == (None, False)
    for what, permanent in (("poll", True), ("download results", True),
                            ("create a batch", False), ("upload the input", False)):
        with pytest.raises(ProviderError) as info:
            provider._call(what, _raise(KeyError("file")))
        assert str(info.value) == (
            f"Gemini failed to {what}: google-genai raised KeyError: 'file'")
        assert info.value.permanent is permanent
    assert httpx.HTTPError in gemini_mod._transport_errors()  # httpx2, what the SDK uses


def test_providers_need_a_key_never_show_it_and_configure_the_sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batchata_df.errors import ConfigError, CredentialsError, ModelError

    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY",
                 "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "GOOGLE_GEMINI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    messages = {
        openai_mod.OpenAIProvider: "no OpenAI API key: set the OPENAI_API_KEY environment "
        "variable (or put it in a .env file) before running an OpenAI model",
        anthropic_mod.AnthropicProvider: "no Anthropic API key: set the ANTHROPIC_API_KEY "
        "environment variable (or put it in a .env file) before running a Claude model",
        gemini_mod.GeminiProvider: "no Gemini API key: set the GEMINI_API_KEY (or "
        "GOOGLE_API_KEY) environment variable (or put it in a .env file) before running a "
        "Gemini model",
    }
    for cls, message in messages.items():
        with pytest.raises(CredentialsError) as info:
            cls()
        assert str(info.value) == message
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:8")
    oa = openai_mod.OpenAIProvider()
    an = anthropic_mod.AnthropicProvider(base_url="http://127.0.0.1:7")
    ge = gemini_mod.GeminiProvider()
    assert [repr(p) for p in (oa, an, ge)] == [
        "OpenAIProvider(base_url='http://127.0.0.1:9/v1')",
        "AnthropicProvider(base_url='http://127.0.0.1:7')",
        "GeminiProvider(base_url='http://127.0.0.1:8')",
    ]
    assert repr(anthropic_mod.AnthropicProvider()) == "AnthropicProvider(base_url=None)"
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("GOOGLE_API_KEY", KEY + "g")
    assert gemini_mod.GeminiProvider()._api_key == KEY + "g"  # the SDK's order: GOOGLE first
    # The SDK clients get the key, the base URL and our retry settings (no request made).
    assert oa.client.api_key == KEY
    assert str(oa.client.base_url) == "http://127.0.0.1:9/v1/"
    assert oa.client.max_retries == openai_mod.OpenAIProvider.sdk_max_retries == 5
    assert oa.client is oa.client
    assert an.client.api_key == KEY
    assert str(an.client.base_url) == "http://127.0.0.1:7"
    assert an.client.max_retries == 5
    assert ge.client._api_client.api_key == KEY
    assert ge.client._api_client._http_options.base_url == "http://127.0.0.1:8"
    assert ge.client is ge.client
    for p in (oa, an, ge):
        p.close()
        assert p._client is None
        p.close()  # closing twice is harmless
    assert gemini_mod.GeminiProvider.display_name(
        base.BatchTag(run_id="r1", batch_key="k2", created_after=0.0)) == "batchata-r1-k2"
    # make_provider: offline providers need no key; unknown names say what exists
    offline = make_provider("gemini", offline=True)
    assert repr(offline) == "GeminiProvider(base_url='http://offline.invalid')"
    with pytest.raises(ModelError) as info:
        make_provider("mistral")
    assert str(info.value) == (
        "provider 'mistral' is not available in this version; use an OpenAI, Anthropic "
        "(claude-...) or Gemini (gemini-...) model")
    from batchata_df import providers

    assert providers._installed("polars") is True
    assert providers._installed("no_such_module_x") is False
    assert providers._installed("no_such_parent.child") is False
    monkeypatch.setattr(providers, "_installed", lambda module: False)
    with pytest.raises(ConfigError) as info:
        make_provider("anthropic")
    assert str(info.value) == (
        "anthropic models need the 'anthropic' package, which is not installed: "
        "pip install 'batchata-df[anthropic]'")
    assert isinstance(make_provider("openai", offline=True), openai_mod.OpenAIProvider)


def test_result_lines_of_a_download_that_is_not_utf8_are_kept_with_replacement_characters():
    # A byte that is not UTF-8 must not lose the line (or the download): it reads as U+FFFD.
    assert base.result_lines(b'{"a":"caf\xe9"}\n{"a":"ok"}\n').to_list() == [
        '{"a":"caf\ufffd"}', '{"a":"ok"}']


def test_result_lines_that_cannot_be_matched_to_rows_are_a_typed_null_column():
    decoded = pl.DataFrame({"job_id": ["a", "b"]})
    one_line = pl.Series(["x"], dtype=pl.String)
    out = base.with_result_lines(decoded, one_line)
    assert out.schema[base.LINE_COLUMN] == pl.String
    assert out[base.LINE_COLUMN].to_list() == [None, None]
    both = base.with_result_lines(decoded, pl.Series(["x", "y"]))
    assert both[base.LINE_COLUMN].to_list() == ["x", "y"]


def test_gemini_one_provider_encodes_each_schema_with_its_own_rewrite() -> None:
    # The rewrite is cached per schema object: a second schema must not get the first's.
    class First(BaseModel):
        a: int

    class Second(BaseModel):
        b: str

    provider = make_provider("gemini", offline=True)
    jobs = _jobs("gemini-2.5-flash")
    for model, field in ((First, "a"), (Second, "b"), (First, "a")):
        spec = RequestSpec(AnswerSchema(model), {"max_tokens": 10})
        config = _lines(provider.encode(jobs, spec))[0]["request"]["generationConfig"]
        assert list(config["responseJsonSchema"]["properties"]) == [field]


def test_openai_a_200_without_choices_is_a_failed_request_not_a_content_filter() -> None:
    # No choice means no finish_reason: that is not OpenAI's content filter.
    line = {"custom_id": "a", "response": {"status_code": 200, "body": {"choices": []}},
            "error": None}
    decoded = openai_mod.decode_lines(json.dumps(line).encode())
    assert decoded.select("outcome", "text", "error").rows() == [
        ("errored", None, "http_200: request failed")]
