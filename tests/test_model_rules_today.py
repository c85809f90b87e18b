"""Requests the real services refuse today (the review of 2026-11-30), refused before spend.

Each rule is checked twice, on its own side: the emulator refuses the request body through
the official SDK with the provider's error (so a wrong client rule fails a run here), and
the client raises a typed error naming the fix before anything is sent. Sources are cited
next to each rule in :mod:`batchata_df.models` and :mod:`batchata_df.emulator.model_rules`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import polars as pl
import pytest
from pydantic import BaseModel

import batchata_df.frame
from batchata_df import ModelError, ParamError, SchemaError, batch_llm
from batchata_df.models import check_model_params, effective_params


class Label(BaseModel):
    label: str


def rows(n: int = 2) -> pl.DataFrame:
    return pl.DataFrame({"text": [f"item {i}" for i in range(n)]})


def run(model: str, tmp_path: Path, **kw: Any) -> pl.DataFrame:
    return rows().pipe(
        batch_llm, schema=Label, model=model, prompt="Label {text}", state=tmp_path / "s", **kw
    )


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
        "message": f"Unsupported value: '{effort}' is not supported with the '{model}' model. "
        f"Supported values are: {allowed}.",
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
    response = openai_error({"model": model, "reasoning_effort": effort})
    assert response["status_code"] == 400
    assert response["body"]["error"] == unsupported_value(effort, model, allowed)


@pytest.mark.parametrize(
    ("model", "effort"),
    [("gpt-5.1", "high"), ("gpt-5.1", "none"), ("gpt-5.2", "xhigh"), ("gpt-5.4", "xhigh"),
     ("gpt-5-mini", "minimal"), ("gpt-5.1-chat-latest", "medium")],
)  # fmt: skip
def test_emulator_takes_the_efforts_a_version_has(emu, model, effort):
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
    assert out["_error"].str.contains("'xhigh' is not supported with the 'gpt-5.1'").all()


# -- 2. the -chat-latest models -----------------------------------------------------------


def test_emulator_chat_latest_reasons_at_medium_and_refuses_sampling(emu):
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
    schema = {"type": "object", "properties": {}, "additionalProperties": False}
    fmt = {"format": {"type": "json_schema", "schema": schema}}
    result = anthropic_result({"model": model, "output_config": fmt})
    assert result.type == "errored"
    assert result.error.error.message.startswith("output_config.format: structured outputs")
    assert anthropic_result({"model": "claude-opus-4-1", "output_config": fmt}).type == (
        "succeeded"
    )


@pytest.mark.parametrize(
    "model", ["gpt-4-turbo", "gpt-3.5-turbo", "claude-sonnet-4-0", "claude-3-7-sonnet-latest",
              "claude-opus-4-0"],
)  # fmt: skip
def test_the_client_refuses_a_schema_on_them_before_anything_is_sent(emu, tmp_path, model):
    with pytest.raises(SchemaError, match="does not take structured output"):
        run(model, tmp_path)
    assert emu.log() == []
    out = rows().pipe(batch_llm, model=model, prompt="Label {text}", state=tmp_path / "t")
    assert out["_status"].to_list() == ["completed"] * 2


def test_what_users_saw_for_a_schema_on_gpt_4_turbo(emu, tmp_path, monkeypatch):
    from batchata_df import models

    monkeypatch.setattr(batchata_df.frame, "family_of", lambda p, m: models.family_of(p, "gpt-4o"))
    out = run("gpt-4-turbo", tmp_path)
    assert out["_status"].to_list() == ["failed"] * 2
    assert out["_error"].str.contains("'json_schema' is not supported with this model").all()
