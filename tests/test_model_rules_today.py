"""Requests the real services refuse today (the review of 2026-11-30), refused before spend.

Each rule is checked twice, on its own side: the emulator refuses the request body through
the official SDK with the provider's error (so a wrong client rule fails a run here), and
the client raises a typed error naming the fix before anything is sent. Sources are cited
next to each rule in :mod:`batchata_df.models` and :mod:`batchata_df.emulator.model_rules`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import anthropic
import openai
import polars as pl
import pytest
from model_calls import Label, encoded, rows, run
from pydantic import BaseModel

import batchata_df.frame
from batchata_df import ModelError, ParamError, SchemaError, batch_llm
from batchata_df.models import check_model_params, effective_params


def openai_error(body: dict[str, Any]) -> dict[str, Any]:
    """The error line the emulator's batch gives one chat-completions ``body`` (via the SDK)."""
    client = openai.OpenAI()
    body = {"messages": [{"role": "user", "content": "hi"}], **body}
    line = {"custom_id": "r", "method": "POST", "url": "/v1/chat/completions", "body": body}
    upload = client.files.create(file=("b.jsonl", json.dumps(line).encode()), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    if batch.error_file_id is None:
        return {}
    err = json.loads(client.files.content(batch.error_file_id).read())
    response: dict[str, Any] = err["response"]
    return response


def unsupported_value(effort: str, model: str, allowed: str) -> dict[str, Any]:
    return {
        # Chat Completions' wording (egoist/chatwise-releases#1257, livekit/agents#3966).
        "message": f"Unsupported value: 'reasoning_effort' does not support '{effort}' with "
        f"this model. Supported values are: {allowed}.",
        "type": "invalid_request_error",
        "param": "reasoning_effort",
        "code": "unsupported_value",
    }


# -- 1. reasoning_effort values per GPT-5.x version ---------------------------------------

EFFORTS_51 = "'none', 'low', 'medium', and 'high'"
EFFORTS_52 = "'none', 'low', 'medium', 'high', and 'xhigh'"


@pytest.mark.parametrize(
    ("model", "effort", "allowed"),
    [
        ("gpt-5.1", "xhigh", EFFORTS_51),  # CortexReach/memory-lancedb-pro#201
        ("gpt-5.1", "minimal", EFFORTS_51),  # anomalyco/opencode#4451
        ("gpt-5.2", "minimal", EFFORTS_52),  # CherryHQ/cherry-studio#11864
        ("gpt-5.4", "minimal", EFFORTS_52),  # anomalyco/models.dev#2351
        ("gpt-5.1-chat-latest", "high", "'medium'"),  # Laisky/one-api#266
        ("gpt-5.2-chat-latest", "none", "'medium'"),  # pydantic-ai 2.68 'gpt-5.2-chat'
    ],
)
def test_emulator_refuses_efforts_a_version_lacks(emu, model, effort, allowed):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    response = openai_error({"model": model, "reasoning_effort": effort})
    assert response["status_code"] == 400
    assert response["body"]["error"] == unsupported_value(effort, model, allowed)


@pytest.mark.parametrize(
    ("model", "effort"),
    [("gpt-5.1", "high"), ("gpt-5.1", "none"), ("gpt-5.2", "xhigh"), ("gpt-5.4", "xhigh"),
     ("gpt-5-mini", "minimal"), ("gpt-5.1-chat-latest", "medium")],
)  # fmt: skip
def test_emulator_takes_the_efforts_a_version_has(emu, model, effort):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    assert openai_error({"model": model, "reasoning_effort": effort}) == {}


@pytest.mark.parametrize(
    ("model", "effort"),
    [("gpt-5.1", "xhigh"), ("gpt-5.1", "minimal"), ("gpt-5.2", "minimal"),
     ("gpt-5.4-mini", "minimal"), ("gpt-5.1-chat-latest", "high"),
     ("gpt-5.3-chat-latest", "none"), ("gpt-5-chat-latest", "low")],
)  # fmt: skip
def test_the_client_refuses_them_before_anything_is_sent(emu, tmp_path, model, effort):
    with pytest.raises(ParamError) as info:
        run(model, tmp_path, params={"reasoning_effort": effort})
    assert info.value.param == "reasoning_effort"
    assert info.value.model == model
    assert emu.log() == []


def test_the_suggested_values_are_the_ones_the_model_takes(emu, tmp_path):
    with pytest.raises(ParamError) as info:
        check_model_params("openai", "gpt-5.1", {"reasoning_effort": "xhigh"})
    assert "use one of ['low', 'medium', 'high'] or 'none'" in str(info.value)
    with pytest.raises(ParamError) as info:
        check_model_params("openai", "gpt-5.2", {"reasoning_effort": "minimal"})
    assert "use one of ['low', 'medium', 'high', 'xhigh'] or 'none'" in str(info.value)
    out = run("gpt-5.1", tmp_path, params={"reasoning_effort": "high"})
    assert out["_status"].to_list() == ["completed"] * 2


def test_what_users_saw_the_batch_ran_and_every_row_failed(emu, tmp_path, monkeypatch):
    monkeypatch.setattr(batchata_df.frame, "check_model_params", lambda *a: None)
    out = run("gpt-5.1", tmp_path, params={"reasoning_effort": "xhigh"})
    assert out["_status"].to_list() == ["failed"] * 2
    assert out["_error"].str.contains("'reasoning_effort' does not support 'xhigh' with this").all()


# -- 2. the -chat-latest models -----------------------------------------------------------


def test_emulator_chat_latest_reasons_at_medium_and_refuses_sampling(emu):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    response = openai_error({"model": "gpt-5.2-chat-latest", "temperature": 0.2})
    assert response["body"]["error"]["param"] == "temperature"
    assert response["body"]["error"]["code"] == "unsupported_parameter"
    # gpt-5-chat-latest does not reason: it takes temperature and refuses the knob.
    assert openai_error({"model": "gpt-5-chat-latest", "temperature": 0.2}) == {}
    response = openai_error({"model": "gpt-5-chat-latest", "reasoning_effort": "low"})
    assert response["body"]["error"]["message"] == (
        "Unsupported parameter: 'reasoning_effort' is not supported with this model."
    )


def test_the_client_treats_chat_latest_as_it_is(emu, tmp_path):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    with pytest.raises(ParamError) as info:
        run("gpt-5.1-chat-latest", tmp_path, params={"temperature": 0.2})
    assert info.value.param == "temperature"
    assert "it always reasons" in str(info.value)
    assert emu.log() == []
    out = run("gpt-5.1-chat-latest", tmp_path / "a")
    assert out["_status"].to_list() == ["completed"] * 2
    assert out["_reasoning_tokens"].to_list() == [1024] * 2  # medium, by default
    out = run("gpt-5-chat-latest", tmp_path / "b", params={"temperature": 0.2})
    assert out["_status"].to_list() == ["completed"] * 2
    assert out["_reasoning_tokens"].to_list() == [0] * 2


# -- 3. codex models: Responses API only --------------------------------------------------


@pytest.mark.parametrize(
    "model",
    ["gpt-5-codex", "gpt-5.1-codex", "gpt-5.1-codex-max", "gpt-5.1-codex-mini",
     "gpt-5.2-codex", "gpt-5.3-codex", "codex-mini-latest"],
)  # fmt: skip
def test_emulator_answers_codex_on_chat_completions_as_openai_does(emu, model):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    response = openai_error({"model": model})
    assert response["status_code"] == 404
    assert response["body"]["error"] == {
        "message": "This model is only supported in v1/responses and not in "
        "v1/chat/completions.",
        "type": "invalid_request_error",
        "param": "model",
        "code": None,
    }


@pytest.mark.parametrize(
    ("model", "instead"),
    [("gpt-5-codex", "use 'gpt-5' with params={'reasoning_effort': 'high'} instead"),
     ("gpt-5.1-codex-mini", "use 'gpt-5.1' with params={'reasoning_effort': 'high'} instead"),
     ("gpt-5.3-codex", "use 'gpt-5.3' with params={'reasoning_effort': 'high'} (or 'xhigh')"),
     ("openai:codex-mini-latest", "use 'gpt-5-mini' with params={'reasoning_effort': 'high'}")],
)  # fmt: skip
def test_the_client_refuses_codex_before_anything_is_sent(emu, tmp_path, model, instead):
    with pytest.raises(ModelError, match="Responses API only") as info:
        run(model, tmp_path)
    assert instead in str(info.value)
    assert emu.log() == []


def test_what_users_saw_for_codex(emu, tmp_path, monkeypatch):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    monkeypatch.setattr(batchata_df.frame, "check_endpoint", lambda *a: None)
    out = run("gpt-5.1-codex", tmp_path)
    assert out["_status"].to_list() == ["failed"] * 2
    assert out["_error"].str.contains("only supported in v1/responses").all()


# -- 5. Anthropic budget thinking on the 32k-output Claude models -------------------------


def anthropic_result(params: dict[str, Any]) -> Any:
    client = anthropic.Anthropic()
    request = {"max_tokens": 256, "messages": [{"role": "user", "content": "hi"}], **params}
    batch = client.messages.batches.create(requests=[{"custom_id": "r", "params": request}])
    (result,) = list(client.messages.batches.results(batch.id))
    return result.result


def test_emulator_refuses_what_the_old_default_sent_on_opus_4_1(emu):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    # What 'max' sent before: max_tokens at the 32,000 ceiling, budget 32,768 above it.
    thinking = {"type": "enabled", "budget_tokens": 32_768}
    result = anthropic_result(
        {"model": "claude-opus-4-1", "max_tokens": 32_000, "thinking": thinking}
    )
    assert result.type == "errored"
    assert result.error.error.message == (
        "`max_tokens` must be greater than `thinking.budget_tokens`."
    )
    result = anthropic_result({"model": "claude-opus-4-1", "max_tokens": 36_864})
    assert result.error.error.message == (
        "max_tokens: 36864 > 32000, which is the maximum allowed number of output tokens for "
        "claude-opus-4-1"
    )


@pytest.mark.parametrize("effort", ["xhigh", "max"])
def test_the_top_efforts_fit_under_opus_4_1s_ceiling(emu, tmp_path, effort):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    out = run("claude-opus-4-1", tmp_path, params={"reasoning_effort": effort})
    assert out["_status"].to_list() == ["completed"] * 2
    from batchata_df.providers import make_provider
    from batchata_df.providers.base import RequestSpec
    from batchata_df.schema import AnswerSchema

    jobs = pl.DataFrame({"job_id": ["j"], "model": ["claude-opus-4-1"], "prompt": ["hi"],
                         "system": [None]}, schema={"job_id": pl.String, "model": pl.String,
                         "prompt": pl.String, "system": pl.String})  # fmt: skip
    line = make_provider("anthropic", offline=True).encode(
        jobs, RequestSpec(AnswerSchema(Label), effective_params(
            "anthropic", "claude-opus-4-1", {"reasoning_effort": effort}))
    )[0]
    params = json.loads(line)["params"]
    assert params["max_tokens"] == 32_000
    assert params["thinking"] == {"type": "enabled", "budget_tokens": 27_904}


def test_a_max_tokens_under_the_budget_is_refused_with_the_capped_budget(emu, tmp_path):
    with pytest.raises(ParamError, match="above its thinking budget \\(27,904 tokens"):
        run("claude-opus-4-1", tmp_path, params={"reasoning_effort": "max", "max_tokens": 20_000})
    assert emu.log() == []
    # Sonnet 4 and 3.7 write 64,000 tokens, not 32,000 as the old shared family said.
    check_model_params("anthropic", "claude-sonnet-4-0", {"max_tokens": 64_000})
    with pytest.raises(ParamError):
        check_model_params("anthropic", "claude-opus-4-0", {"max_tokens": 32_001})


# -- 4. structured output where the model has none ----------------------------------------


@pytest.mark.parametrize("model", ["gpt-4-turbo", "gpt-3.5-turbo", "gpt-4o-2024-05-13"])
def test_emulator_refuses_json_schema_on_models_before_structured_outputs(emu, model):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    fmt = {"type": "json_schema", "json_schema": {"name": "L", "schema": {"type": "object"}}}
    response = openai_error({"model": model, "response_format": fmt})
    assert response["status_code"] == 400
    assert response["body"]["error"] == {
        "message": "Invalid parameter: 'response_format' of type 'json_schema' is not supported "
        "with this model. Learn more about supported models at the Structured Outputs guide: "
        "https://platform.openai.com/docs/guides/structured-outputs",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert openai_error({"model": "gpt-4o-mini", "response_format": fmt}) == {}


@pytest.mark.parametrize("model", ["claude-sonnet-4-0", "claude-opus-4-20250514",
                                   "claude-3-7-sonnet-latest"])  # fmt: skip
def test_emulator_refuses_output_format_on_claude_before_4_1(emu, model):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    schema = {"type": "object", "properties": {}, "additionalProperties": False}
    fmt = {"format": {"type": "json_schema", "schema": schema}}
    result = anthropic_result({"model": model, "output_config": fmt})
    assert result.type == "errored"
    assert result.error.error.message.startswith("output_config.format: structured outputs")
    assert anthropic_result({"model": "claude-opus-4-1", "output_config": fmt}).type == (
        "succeeded"
    )


@pytest.mark.parametrize("model", ["gpt-4-turbo", "gpt-3.5-turbo"])
def test_the_client_refuses_a_schema_on_them_before_anything_is_sent(emu, tmp_path, model):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    with pytest.raises(SchemaError, match="does not take structured output"):
        run(model, tmp_path)
    assert emu.log() == []
    out = rows().pipe(batch_llm, model=model, prompt="Label {text}", state=tmp_path / "t")
    assert out["_status"].to_list() == ["completed"] * 2


class Review(BaseModel):
    label: Literal["pos", "neg"]
    score: int


@pytest.mark.parametrize("model", ["claude-sonnet-4-20250514", "claude-3-7-sonnet-latest",
                                   "claude-opus-4-0"])  # fmt: skip
@pytest.mark.parametrize("mode", ["batch", "realtime"])
def test_claude_without_structured_output_gets_the_schema_in_the_system_prompt(
    emu, tmp_path, model, mode
):
    """As the seed library did for every Claude model (its default was Sonnet 4): the JSON
    Schema goes in the system prompt, the answer (fenced or not) is validated as any."""
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    emu.configure(log_bodies=True)
    frame = pl.DataFrame({"text": [f"item {i}" for i in range(12)] + ["x [[emulator:invalid]]"]})
    out = frame.pipe(
        batch_llm, schema=Review, model=model, prompt="Rate {text}", system="Be brief.",
        state=tmp_path / "s", mode=mode, keep_responses=True,
    )  # fmt: skip
    assert out["_status"].to_list() == ["completed"] * 12 + ["failed"]
    assert set(out["label"].drop_nulls().to_list()) <= {"pos", "neg"}
    assert out["score"].dtype == pl.Int64 and out["score"][:12].null_count() == 0
    assert out["_error"][12] is not None and out["_error"][12].startswith("schema")
    bodies = [e["body"] for e in emu.log() if isinstance(e.get("body"), dict)]
    params = [r["params"] for b in bodies for r in b.get("requests", [])]
    params += [b for b in bodies if "messages" in b]  # realtime: one request per call
    assert len(params) == 13
    for p in params:
        assert "output_config" not in p or "format" not in p["output_config"]
        system = p["system"] if isinstance(p["system"], str) else p["system"][0]["text"]
        assert system.startswith("Answer with ONLY a JSON object")
        assert "<answer_json_schema>" in system and "citing" not in system
        assert system.endswith("Be brief.")
    # Some answers came fenced (```json ... ```): they were read as the others.
    fenced = out.filter(pl.col("_response").str.contains("```json", literal=True))
    assert 0 < fenced.height < 12 and (fenced["_status"] == "completed").all()
    assert len(emu.billing()) == 13


def test_what_users_saw_for_a_schema_on_gpt_4_turbo(emu, tmp_path, monkeypatch):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    from batchata_df import models

    monkeypatch.setattr(batchata_df.frame, "family_of", lambda p, m: models.family_of(p, "gpt-4o"))
    out = run("gpt-4-turbo", tmp_path)
    assert out["_status"].to_list() == ["failed"] * 2
    assert out["_error"].str.contains("'json_schema' is not supported with this model").all()


# -- 6. requests longer than the model's context window -----------------------------------

LONG = "word " * 140_000  # 140,000 o200k tokens; 700,000 characters


def test_emulator_refuses_a_prompt_over_the_window_per_request(emu):
    response = openai_error({"model": "gpt-4o-mini",
                             "messages": [{"role": "user", "content": LONG}]})  # fmt: skip
    assert response["status_code"] == 400
    assert response["body"]["error"] == {
        # Counted with gpt-4o-mini's own BPE (o200k_base), as OpenAI counts: 140,001 of
        # text, 4 of the message's framing and role, 3 priming the reply.
        "message": "This model's maximum context length is 128000 tokens. However, your "
        "messages resulted in 140008 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    result = anthropic_result({"model": "claude-haiku-4-5",
                               "messages": [{"role": "user", "content": LONG * 2}]})  # fmt: skip
    # o200k_base 280,001 x 1.16 (model_rules.CLAUDE_TOKENS_PER_O200K), an approximation.
    assert result.error.error.message == "prompt is too long: 324802 tokens > 200000 maximum"
    # Claude 4.6 takes 1M tokens; the shorter prompt fits gpt-4.1's 1M window.
    assert anthropic_result({"model": "claude-sonnet-4-6",
                             "messages": [{"role": "user", "content": LONG * 2}]}).type == (
        "succeeded"
    )  # fmt: skip
    assert openai_error({"model": "gpt-4.1-mini",
                         "messages": [{"role": "user", "content": LONG}]}) == {}  # fmt: skip


# gemini-4-argon: its 1,048,576-token window, shared by input and output (models.py's source)
@pytest.mark.parametrize("model", ["gemini-2.5-flash", "gemini-4-argon"])
def test_emulator_refuses_a_gemini_prompt_over_the_window(emu, model):
    from google import genai

    client = genai.Client()
    text = "word " * 900_000  # 1,125,000 of the emulator's tokens
    job = client.batches.create(
        model=model,
        src=[{"contents": [{"role": "user", "parts": [{"text": text}]}]},
             {"contents": [{"role": "user", "parts": [{"text": "short"}]}]}],
    )  # fmt: skip
    job = client.batches.get(name=str(job.name))
    assert job.dest is not None and job.dest.inlined_responses is not None
    responses = job.dest.inlined_responses
    assert responses[0].error is not None
    assert responses[0].error.code == 400
    assert responses[0].error.message == (
        "The input token count (1125000) exceeds the maximum number of tokens allowed (1048576)."
    )
    assert responses[1].error is None


@pytest.mark.parametrize(
    ("model", "times", "why"),
    [("gpt-4o-mini", 1, "the request is 140,008 tokens, over the context window of "
      "'gpt-4o-mini' (128,000 tokens)"),
     ("claude-haiku-4-5", 2, "the request is at least 280,008 tokens, over the context "
      "window of 'claude-haiku-4-5' (200,000 tokens)"),
     ("gpt-5.1-chat-latest", 1, "over the context window of 'gpt-5.1-chat-latest' "
      "(128,000 tokens)"),
     # genai-prices 0.2.3 has no window for it: the model page's 1,048,576 (models.py)
     ("gemini-3.1-pro-preview", 10, "over the context window of 'gemini-3.1-pro-preview' "
      "(1,048,576 tokens)")],
)  # fmt: skip
def test_an_over_long_row_fails_as_data_and_the_others_run(emu, tmp_path, model, times, why):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    emu.configure(log_bodies=True)
    frame = pl.DataFrame({"text": ["short one", LONG * times, "short two"]})
    out = frame.pipe(batch_llm, model=model, prompt="{text}", state=tmp_path / "s")
    assert out["_status"].to_list() == ["completed", "failed", "completed"]
    assert out["_error"][1].startswith("input: the request is ")
    assert out["_error"][1].endswith(
        f"{why}; shorten the prompt or use a model with a larger window"
    )
    assert out["_cost_usd"][1] == 0
    sent = json.dumps([e.get("lines") or e.get("body") for e in emu.log()])
    assert "short one" in sent
    assert "word word" not in sent  # the long row was never sent


def test_what_users_saw_the_long_row_was_sent_and_refused(emu, tmp_path, monkeypatch):
    monkeypatch.setattr(batchata_df.frame, "_over_window", lambda jobs, spec, recorded=None: jobs)
    frame = pl.DataFrame({"text": ["short one", LONG]})
    out = frame.pipe(batch_llm, model="gpt-4o-mini", prompt="{text}", state=tmp_path / "s")
    assert out["_status"].to_list() == ["completed", "failed"]
    assert "maximum context length is 128000 tokens" in out["_error"][1]


def test_short_rows_are_not_counted(emu, monkeypatch):
    # Rows whose bytes cannot reach the window are never tokenized for the check.
    import batchata_df.tokens

    calls: list[int] = []
    real = batchata_df.tokens.estimate_request_tokens

    def counting(prompt: pl.Series, *a: Any, **kw: Any) -> pl.Series:
        calls.append(prompt.len())
        return real(prompt, *a, **kw)

    monkeypatch.setattr(batchata_df.tokens, "estimate_request_tokens", counting)
    frame = pl.DataFrame({"text": ["a", "b", LONG]})
    from batchata_df.frame import _over_window
    from batchata_df.jobs import build_jobs
    from batchata_df.providers.base import RequestSpec
    from batchata_df.schema import AnswerSchema

    jobs = build_jobs(frame, model="gpt-4o-mini", prompt="{text}", system=None, salt="s",
                      scheme="blake2b")  # fmt: skip
    out = _over_window(jobs, RequestSpec(AnswerSchema(None), {}))
    assert calls == [1]
    assert out["input_error"].is_null().to_list() == [True, True, False]
    assert out["job_id"].is_null().to_list() == [False, False, True]


def test_a_row_near_the_window_is_left_to_the_provider_where_the_count_is_approximate(
    emu, tmp_path
):
    # ~220,000 tokens by the planner's Claude estimate (which leans high), 132,001 by
    # o200k_base (the lower bound, under 200,000): sent, and the emulator finds it fits.
    frame = pl.DataFrame({"text": ["short one", "word " * 132_000]})
    out = frame.pipe(batch_llm, model="claude-haiku-4-5", prompt="{text}", state=tmp_path / "s")
    assert out["_status"].to_list() == ["completed", "completed"]


# -- 7. default efforts and levels --------------------------------------------------------


def test_emulator_refuses_medium_on_gemini_3_pro_preview(emu):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    from google import genai

    client = genai.Client()
    requests = [{"contents": "hi", "config": {"thinking_config": {"thinking_level": level}}}
                for level in ("MEDIUM", "HIGH")]  # fmt: skip
    job = client.batches.create(model="gemini-3-pro-preview", src=requests)  # type: ignore[arg-type]
    medium, high = client.batches.get(name=str(job.name)).dest.inlined_responses
    assert medium.error.message == (
        "Thinking level MEDIUM is not supported for this model. Please retry with other "
        "thinking level."
    )
    assert high.error is None


def test_the_client_refuses_medium_on_gemini_3_pro_preview(emu, tmp_path):
    with pytest.raises(ParamError, match="use one of \\['low', 'high'\\]"):
        run("gemini-3-pro-preview", tmp_path, params={"reasoning_effort": "medium"})
    assert emu.log() == []
    check_model_params("gemini", "gemini-3.1-pro-preview", {"reasoning_effort": "medium"})


@pytest.mark.parametrize(
    ("model", "effort", "max_tokens"),
    [("gemini-3.5-flash", "medium", 16_384), ("gemini-3.7-flash", "medium", 16_384),
     ("gemini-3.1-flash-lite", "minimal", 8192), ("gemini-3-flash-preview", "high", 32_768)],
)  # fmt: skip
def test_gemini_3_flash_default_levels(emu, tmp_path, model, effort, max_tokens):
    from batchata_df.emulator.model_rules import THOUGHT_TOKENS

    assert encoded("gemini", model, {})["generationConfig"]["maxOutputTokens"] == max_tokens
    out = run(model, tmp_path)
    assert out["_reasoning_tokens"].to_list() == [THOUGHT_TOKENS[effort]] * 2


def test_a_streamed_run_fails_the_over_long_row_as_the_in_memory_run_does(emu, tmp_path):
    frame = pl.DataFrame({"text": ["short one", LONG, "short two"]})
    frame.write_parquet(tmp_path / "in.parquet")
    out = batch_llm(
        pl.scan_parquet(tmp_path / "in.parquet"), model="gpt-4o-mini", prompt="{text}",
        sink=tmp_path / "out.parquet", state=tmp_path / "s", chunk_rows=2,
    ).collect()  # fmt: skip
    assert out["_status"].to_list() == ["completed", "failed", "completed"]
    assert out["_error"][1].startswith("input: the request is 140,008 tokens, over the context")


def test_earlier_turns_count_toward_the_window(emu, tmp_path, monkeypatch):
    import batchata_df.tokens

    calls: list[int] = []
    real = batchata_df.tokens.estimate_request_tokens

    def counting(prompt: pl.Series, *a: Any, **kw: Any) -> pl.Series:
        calls.append(prompt.len())
        return real(prompt, *a, **kw)

    monkeypatch.setattr(batchata_df.tokens, "estimate_request_tokens", counting)
    turns = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    frame = pl.DataFrame(
        {"text": ["a", "b", "c"],
         "h": [[{"role": "user", "content": "hi"}], [{"role": "user", "content": LONG}], None]},
        schema={"text": pl.String, "h": turns},
    )  # fmt: skip
    out = frame.pipe(batch_llm, model="gpt-4o-mini", prompt="{text}", history="h",
                     state=tmp_path / "s")  # fmt: skip
    assert out["_status"].to_list() == ["completed", "failed", "completed"]
    assert "over the context window of 'gpt-4o-mini'" in out["_error"][1]
    assert calls == [1]  # only the row whose turns could reach the window was counted


# -- 6b. the window check after review: stored answers win, lower bounds, exact counts ----

FITS = "word " * 100_000  # 100,007 tokens on gpt-4o-mini: fits its 128,000


def smaller_client_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's window for gpt-4o-mini drops to 50,000 (a later release, or a folder
    written before the check): FITS is then over it."""
    import batchata_df.models

    real = batchata_df.models.context_window
    monkeypatch.setattr(
        batchata_df.models, "context_window",
        lambda p, m: 50_000 if m == "gpt-4o-mini" else real(p, m),
    )  # fmt: skip


@pytest.mark.parametrize("streamed", [False, True])
def test_a_stored_answer_wins_over_a_window_that_shrank(emu, tmp_path, monkeypatch, streamed):
    frame = pl.DataFrame({"text": ["short one", FITS]})
    frame.write_parquet(tmp_path / "in.parquet")

    def go(n: int) -> pl.DataFrame:
        if not streamed:
            return frame.pipe(batch_llm, model="gpt-4o-mini", prompt="{text}",
                              state=tmp_path / "s")  # fmt: skip
        return batch_llm(
            pl.scan_parquet(tmp_path / "in.parquet"), model="gpt-4o-mini", prompt="{text}",
            state=tmp_path / "s", sink=tmp_path / f"out{n}.parquet", chunk_rows=1,
        ).collect()  # fmt: skip

    first = go(1)
    assert first["_status"].to_list() == ["completed"] * 2
    sent = len(emu.log())
    smaller_client_window(monkeypatch)
    again = go(2)
    assert len(emu.log()) == sent  # nothing sent again
    assert again["_status"].to_list() == ["completed"] * 2
    assert again["_job_id"].to_list() == first["_job_id"].to_list()
    assert again["_cost_usd"].to_list() == first["_cost_usd"].to_list()
    assert again["_cost_usd"][1] > 0
    assert again["response"].to_list() == first["response"].to_list()
    # A new folder has nothing stored: there the row is refused before sending.
    fresh = frame.pipe(batch_llm, model="gpt-4o-mini", prompt="{text}", state=tmp_path / "n")
    assert fresh["_status"].to_list() == ["completed", "failed"]
    assert "over the context window of 'gpt-4o-mini' (50,000 tokens)" in fresh["_error"][1]


@pytest.mark.parametrize("streamed", [False, True])
def test_a_batch_in_flight_wins_over_a_window_that_shrank(emu, tmp_path, monkeypatch, streamed):
    frame = pl.DataFrame({"text": ["short one", FITS]})
    frame.write_parquet(tmp_path / "in.parquet")

    def go(n: int, **kw: Any) -> pl.DataFrame:
        if not streamed:
            return frame.pipe(batch_llm, model="gpt-4o-mini", prompt="{text}",
                              state=tmp_path / "s", **kw)  # fmt: skip
        return batch_llm(
            pl.scan_parquet(tmp_path / "in.parquet"), model="gpt-4o-mini", prompt="{text}",
            state=tmp_path / "s", sink=tmp_path / f"out{n}.parquet", **kw,
        ).collect()  # fmt: skip

    emu.configure(latency=1000.0)
    first = go(1, wait=False)
    assert first["_status"].to_list() == ["pending"] * 2
    smaller_client_window(monkeypatch)
    emu.advance(1000.0)  # the batch ends on the emulator's clock
    again = go(2)
    assert again["_status"].to_list() == ["completed"] * 2
    assert again["_job_id"].to_list() == first["_job_id"].to_list()
    assert again["_cost_usd"][1] > 0


def test_a_failed_row_is_checked_again_when_it_would_be_sent(emu, tmp_path, monkeypatch):
    # retry_failed=True sends failed rows again: those are checked like new ones.
    frame = pl.DataFrame({"text": ["short one", "[[emulator:error]] " + FITS]})
    first = frame.pipe(batch_llm, model="gpt-4o-mini", prompt="{text}", state=tmp_path / "s")
    assert first["_status"].to_list() == ["completed", "failed"]
    smaller_client_window(monkeypatch)
    kept = frame.pipe(batch_llm, model="gpt-4o-mini", prompt="{text}", state=tmp_path / "s")
    assert kept["_error"][1] == first["_error"][1]  # the stored failure, not sent again
    retried = frame.pipe(batch_llm, model="gpt-4o-mini", prompt="{text}",
                         state=tmp_path / "s", retry_failed=True)  # fmt: skip
    assert "over the context window" in retried["_error"][1]


def python_source(o200k: int) -> str:
    """Python code of about ``o200k`` o200k_base tokens (this project's own source)."""
    from batchata_df.tokens import estimate_tokens

    src = Path(batchata_df.frame.__file__).read_text() * 20
    count = int(estimate_tokens(pl.Series([src]), "openai", "gpt-4o")[0])
    return src[: int(len(src) * o200k / count)]


def test_python_near_the_claude_window_is_sent(emu, tmp_path):
    # ~140,000 o200k_base tokens of Python: Claude counts ~1.3x (182,000 < 200,000). The
    # planner's estimate (~1.8x, ~253,000) is not a reason to refuse it.
    from batchata_df.tokens import estimate_tokens

    code = python_source(140_000)
    estimate = int(estimate_tokens(pl.Series([code]), "anthropic", "claude-haiku-4-5")[0])
    assert estimate > 200_000  # over the window by the planner's estimate alone
    out = pl.DataFrame({"code": [code]}).pipe(
        batch_llm, model="claude-haiku-4-5", prompt="Review:\n{code}", state=tmp_path / "s"
    )
    assert out["_status"].to_list() == ["completed"]


def test_a_row_the_client_cannot_rule_out_is_left_to_the_provider(emu, tmp_path):
    # 180,001 o200k_base tokens: under 200,000, so sent; the emulator counts it as Claude
    # would (~1.16x: 208,802) and refuses that row alone, as that row's error.
    frame = pl.DataFrame({"text": ["short one", "word " * 180_000]})
    out = frame.pipe(batch_llm, model="claude-haiku-4-5", prompt="{text}", state=tmp_path / "s")
    assert out["_status"].to_list() == ["completed", "failed"]
    assert "prompt is too long: 208802 tokens > 200000 maximum" in out["_error"][1]
    assert not out["_error"][1].startswith("input:")


# 172,409 o200k_base tokens: 199,995 as the emulator counts Claude (x1.16), 5 below
# Haiku 4.5's 200,000 window, so any max_tokens above 5 asks for more than the window.
NEAR_WINDOW = "word " * 172_408


def test_claude_input_and_max_tokens_over_the_window_stop_at_the_window(emu):
    # Sonnet 4.5 and later (every Claude served today) take it and stop where the window
    # is full: stop_reason model_context_window_exceeded, "available by default in Sonnet
    # 4.5 and newer models" (Anthropic, handling stop reasons). Not the 400 "input length
    # and `max_tokens` exceed context limit" of the (retired) older models.
    result = anthropic_result({"model": "claude-haiku-4-5", "max_tokens": 64_000,
                               "messages": [{"role": "user", "content": NEAR_WINDOW}]})
    assert result.type == "succeeded"
    assert result.message.stop_reason == "model_context_window_exceeded"
    assert result.message.usage.output_tokens == 5  # the rest of the window, billed
    short = anthropic_result({"model": "claude-haiku-4-5", "max_tokens": 64_000})
    assert short.message.stop_reason == "end_turn"


def test_a_row_whose_answer_fills_the_window_is_failed_and_billed(emu, tmp_path):
    # The client does not refuse input + max_tokens over the window (the provider takes
    # it); the row whose answer the window cut is failed, and costs what was billed.
    from batchata_df.emulator.pricing import billed_usd

    emu.configure(log_bodies=True)
    out = pl.DataFrame({"text": ["short one", NEAR_WINDOW]}).pipe(
        batch_llm, model="claude-haiku-4-5", prompt="{text}", state=tmp_path / "s",
        params={"max_tokens": 64_000},
    )
    assert out["_status"].to_list() == ["completed", "failed"]
    assert out["_error"][1].startswith("model_context_window_exceeded: ")
    body = next(e["body"] for e in emu.log() if isinstance(e.get("body"), dict)
                and "requests" in e["body"])
    assert [r["params"]["max_tokens"] for r in body["requests"]] == [64_000, 64_000]
    assert sorted(b["custom_id"] for b in emu.billing()) == sorted(out["_job_id"].to_list())
    assert out["_output_tokens"][1] == 5
    assert out["_cost_usd"][1] == pytest.approx(billed_usd(
        "anthropic", "claude-haiku-4-5", input_tokens=out["_input_tokens"][1],
        output_tokens=5), rel=1e-12)


def blank_pdf(path: Path, pages: int) -> Path:
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(612, 792)
    writer.write(path)
    return path


def test_pdf_pages_are_not_counted_against_the_window_by_assumption(emu, tmp_path):
    # Five blank pages: 135,015 tokens by the planner's dense-page assumption on gpt-4o-mini
    # (1,500 text + a page image each), but a blank page has no text.
    pdf = blank_pdf(tmp_path / "p5.pdf", 5)
    frame = pl.DataFrame({"text": ["a"], "f": [str(pdf)]})
    out = frame.pipe(batch_llm, model="gpt-4o-mini", prompt="Summarize {text}", files="f",
                     state=tmp_path / "s")  # fmt: skip
    assert out["_error"][0] is None or not out["_error"][0].startswith("input:")


def over_window(prompt: str, model: str = "gpt-4o-mini", *, schema: Any = None,
                **columns: Any) -> pl.DataFrame:  # fmt: skip
    from batchata_df.frame import _over_window
    from batchata_df.jobs import build_jobs
    from batchata_df.providers.base import RequestSpec
    from batchata_df.schema import AnswerSchema

    frame = pl.DataFrame({"text": [prompt], **columns})
    jobs = build_jobs(frame, model=model, prompt="{text}", system=None, salt="s",
                      scheme="blake2b", history="h" if "h" in columns else None)  # fmt: skip
    return _over_window(jobs, RequestSpec(AnswerSchema(schema), {}))


def test_a_row_of_exactly_the_window_fits():
    # "word " * 127,992: 127,993 tokens + 7 of chat framing = 128,000, gpt-4o-mini's window.
    assert over_window("word " * 127_992)["input_error"][0] is None
    assert "128,001 tokens" in over_window("word " * 127_993)["input_error"][0]


def described(words: int) -> type[BaseModel]:
    """An answer schema whose description is ``words`` tokens long."""
    return type("Described", (BaseModel,), {"__doc__": "word " * words,
                                            "__annotations__": {"label": str}})  # fmt: skip


def test_the_schema_counts_toward_the_window():
    # A short prompt with a schema of 130,000 tokens: only the schema's bytes can tell.
    assert "over the context window" in over_window("hi", schema=described(130_000))[
        "input_error"
    ][0]
    # 100,007 tokens of prompt fit; with 30,000 of schema they do not.
    assert over_window(FITS)["input_error"][0] is None
    assert "over the context window" in over_window(FITS, schema=described(30_000))[
        "input_error"
    ][0]


def test_earlier_turns_framing_counts_toward_the_window():
    # 40,000 one-byte turns: 40,000 bytes, but 5 tokens each with their framing (200,000).
    turns = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    h = pl.Series("h", [[{"role": "user", "content": "a"}] * 40_000], dtype=turns)
    out = over_window("hi", h=h)
    assert "over the context window of 'gpt-4o-mini'" in out["input_error"][0]


def test_a_row_pushed_over_by_its_text_document_is_refused(emu, tmp_path):
    frame = pl.DataFrame({"text": ["short one", "short two"],
                          "f": [None, ("word " * 140_000).encode()]})  # fmt: skip
    out = frame.pipe(batch_llm, model="gpt-4o-mini", prompt="{text}", files="f",
                     state=tmp_path / "s")  # fmt: skip
    assert out["_status"].to_list() == ["completed", "failed"]
    assert out["_error"][1].startswith("input: the request is at least 140,")
    assert "over the context window of 'gpt-4o-mini'" in out["_error"][1]


def test_the_emulator_counts_openai_tokens_with_the_models_bpe(emu):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    # 110,001 o200k_base tokens (550,000 characters: 137,500 by len // 4) fit 128,000.
    assert openai_error({"model": "gpt-4o-mini",
                         "messages": [{"role": "user", "content": "word " * 110_000}]}) == {}
    # The o-series take 200,000; gpt-5-chat-latest 128,000 (not GPT-5's 400,000).
    assert openai_error({"model": "o3",
                         "messages": [{"role": "user", "content": LONG}]}) == {}  # fmt: skip
    refused = openai_error({"model": "gpt-5-chat-latest",
                            "messages": [{"role": "user", "content": LONG}]})  # fmt: skip
    assert refused["body"]["error"]["code"] == "context_length_exceeded"
    assert "maximum context length is 128000 tokens" in refused["body"]["error"]["message"]


def test_the_emulator_takes_a_claude_prompt_of_exactly_the_window(emu):
    from batchata_df.emulator.model_rules import over_window as emulated

    # 172,413 o200k_base tokens x 1.16 = 199,999.08: 200,000 Claude tokens, the window.
    exact = "word " * 172_412
    assert emulated("anthropic", "claude-haiku-4-5", exact, 0) is None
    assert emulated("anthropic", "claude-haiku-4-5", exact, 1) == 200_001
    assert anthropic_result({"model": "claude-haiku-4-5",
                             "messages": [{"role": "user", "content": exact}]}).type == (
        "succeeded"
    )  # fmt: skip


def test_gpt_5_chat_latest_has_a_128k_window_in_the_client():
    from batchata_df.models import context_window

    assert context_window("openai", "gpt-5-chat-latest") == 128_000
    assert "(128,000 tokens)" in over_window(LONG, "gpt-5-chat-latest")["input_error"][0]


def test_windows_from_the_model_pages():
    from batchata_df.emulator import model_rules
    from batchata_df.models import context_window

    # OpenAI's GPT-4.1 page: 1,047,576 (genai-prices: 1,000,000); Google's Gemini 2.5 Pro
    # refusal and Gemini 3 Pro page: 1,048,576 (genai-prices: none).
    assert context_window("openai", "gpt-4.1-mini") == 1_047_576
    assert context_window("gemini", "gemini-2.5-pro") == 1_048_576
    assert context_window("gemini", "gemini-3-pro-preview") == 1_048_576
    # The emulator agrees with the client on GPT-5.4 mini and nano (400,000).
    for model in ("gpt-5.4-mini", "gpt-5.4-nano", "gpt-5.4", "gpt-4.1"):
        assert model_rules.context_window("openai", model) == context_window("openai", model)


def _bodies(emu: Any) -> dict[str, dict[str, Any]]:
    """Each Anthropic request's params sent so far, by model."""
    out: dict[str, dict[str, Any]] = {}
    for e in emu.log():
        body = e.get("body")
        if isinstance(body, dict):
            for r in body.get("requests", []):
                out[r["params"]["model"]] = r["params"]
    return out


def test_the_schema_travels_per_model_and_any_call_unfences_what_it_collects(emu, tmp_path):
    """One old Claude row changes nothing for the others' structured output, and the answers
    of its batch are read alike by a later call that no longer holds that row."""
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    emu.configure(log_bodies=True, latency=50)
    models = ["claude-haiku-4-5"] * 9 + ["claude-sonnet-4-20250514"] * 9 + ["gpt-4.1-mini"]
    df = pl.DataFrame({"text": [f"item {i}" for i in range(len(models))], "m": models})
    call = {"schema": Review, "model": pl.col("m"), "prompt": "Rate {text}",
            "state": tmp_path / "s", "keep_responses": True}  # fmt: skip
    first = df.pipe(batch_llm, wait=False, **call)
    assert set(first["_status"].to_list()) == {"pending"}
    sent = _bodies(emu)
    assert sent["claude-haiku-4-5"]["output_config"]["format"]["type"] == "json_schema"
    assert "system" not in sent["claude-haiku-4-5"]
    assert "output_config" not in sent["claude-sonnet-4-20250514"]
    assert "<answer_json_schema>" in json.dumps(sent["claude-sonnet-4-20250514"]["system"])
    emu.advance(60)
    # Collected by a call holding only the old model's rows, then by one holding none of them.
    old = df.filter(pl.col("m") == "claude-sonnet-4-20250514").pipe(batch_llm, **call)
    assert old["_status"].to_list() == ["completed"] * 9
    assert old.filter(pl.col("_response").str.contains("```json", literal=True)).height > 0
    rest = df.filter(pl.col("m") != "claude-sonnet-4-20250514").pipe(batch_llm, **call)
    assert rest["_status"].to_list() == ["completed"] * 10
    assert len(emu.billing()) == len(models)


class Wide(BaseModel):
    """17 Optional fields: beyond Anthropic's 16 union-typed parameters of structured output."""

    f0: int | None
    f1: int | None
    f2: int | None
    f3: int | None
    f4: int | None
    f5: int | None
    f6: int | None
    f7: int | None
    f8: int | None
    f9: int | None
    f10: int | None
    f11: int | None
    f12: int | None
    f13: int | None
    f14: int | None
    f15: int | None
    f16: int | None


@pytest.mark.parametrize("stream", [False, True])
def test_structured_output_limits_do_not_bind_a_schema_sent_in_the_prompt(emu, tmp_path, stream):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    frame = pl.DataFrame({"text": ["a", "b"]})
    source: Any = frame
    kw: dict[str, Any] = {}
    if stream:
        frame.write_parquet(tmp_path / "in.parquet")
        source, kw = pl.scan_parquet(tmp_path / "in.parquet"), {"sink": tmp_path / "o.parquet"}
    out = batch_llm(source, schema=Wide, model="claude-sonnet-4-20250514", prompt="{text}",
                    state=tmp_path / "s", **kw)  # fmt: skip
    if stream:
        out = out.collect()  # type: ignore[union-attr]
    assert out["_status"].to_list() == ["completed"] * 2
    with pytest.raises(SchemaError, match="at most 16"):
        batch_llm(source, schema=Wide, model="claude-haiku-4-5", prompt="{text}",
                  state=tmp_path / "t", **kw)  # fmt: skip


def test_estimates_and_the_window_count_the_instruction_sent(emu, tmp_path, monkeypatch):
    from batchata_df.citations import instruction
    from batchata_df.schema import AnswerSchema
    from batchata_df.tokens import estimate_tokens

    frame = pl.DataFrame({"text": ["rate this please"]})

    def est(model: str, schema: Any) -> int:
        plan = frame.pipe(batch_llm, schema=schema, model=model, prompt="{text}",
                          dry_run=True)  # fmt: skip
        return int(plan["_est_input_tokens"][0])

    wire = AnswerSchema(Review).json_schema
    assert wire is not None
    told = instruction(wire, cite=False)
    for model, sent in (("claude-sonnet-4-20250514", told),
                        ("claude-haiku-4-5", json.dumps(wire))):  # fmt: skip
        extra = int(estimate_tokens(pl.Series([sent]), "anthropic", model)[0])
        assert est(model, Review) - est(model, None) == extra, model
    # The context-window check counts it too (a lower bound, in o200k tokens): a window
    # that fits the prompt with the schema's JSON but not with the instruction refuses the
    # row before anything is sent.
    from batchata_df import models

    def o200k(text: str) -> int:
        return int(estimate_tokens(pl.Series([text]), "openai", "gpt-4o")[0])

    window = o200k("Rate rate this please") + (o200k(json.dumps(wire)) + o200k(told)) // 2
    monkeypatch.setattr(models, "context_window", lambda p, m: window)
    out = frame.pipe(batch_llm, schema=Review, model="claude-sonnet-4-20250514",
                     prompt="{text}", state=tmp_path / "w")  # fmt: skip
    assert out["_status"].to_list() == ["failed"]
    assert out["_error"][0].startswith("input: the request is")
    assert emu.billing() == []
