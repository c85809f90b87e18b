"""Default efforts and limits of today's newest models (the audit of 2026-12-01).

Each fact is checked on its own side, as in ``test_model_rules_today.py``: the emulator
through the official SDK (a request without an effort thinks at the provider's default;
what the provider refuses is refused), and the client's own numbers (the default
``max_tokens`` that leaves room for that thinking, the level its warnings name). Sources:

* Claude Opus 5.5 and Haiku 5.5 think at ``medium`` when no effort is sent (Sonnet 5.5,
  Opus 5, Sonnet 5 and Fable 5.1 at ``high``): Anthropic's model pages, table "How it
  compares", column "Default effort" (platform.claude.com/docs/en/models/haiku-5-5/overview,
  /docs/zh-CN/models/opus-5-5/overview), and "What's new in Claude Opus 5.5" ("the default
  on this model is medium").
* Claude Opus 5 (and Haiku 5.5) take ``thinking: {"type": "disabled"}`` only at effort
  ``high`` or below ("What's new in Claude Opus 5.5": "On Claude Opus 5, thinking is on by
  default and accepts thinking: {type: disabled} when effort is high or lower"; Anthropic's
  Opus 5 migration guide as summarised by apidog.com "claude-opus-5-migration-opus-4-8":
  "thinking: disabled + effort xhigh/max: HTTP 400"; Haiku 5.5: openrouter.ai
  anthropic/claude-haiku-5.5, "it can be turned off at low, medium, and high effort").
* Gemini 4 Argon thinks at ``medium`` when no level is sent, and its 1,048,576-token
  window is shared by input and output (ai.google.dev/gemini-api/docs/generate-content/
  latest-model, table "Default thinking level": medium; docs.cloud.google.com
  gemini-enterprise-agent-platform/models/start/get-started-with-gemini-4).
"""

from __future__ import annotations

from typing import Any

import anthropic
import polars as pl
import pytest
from model_calls import encoded, run

from batchata_df.emulator.model_rules import THOUGHT_TOKENS
from batchata_df.models import (
    default_max_tokens,
    family_of,
    thinking_room_warning,
)


def claude_output_tokens(model: str, **extra: Any) -> int:
    """Output tokens (thinking included) of one realtime answer, through the SDK."""
    client = anthropic.Anthropic()
    message = client.messages.create(
        model=model, max_tokens=8192, messages=[{"role": "user", "content": "hi"}], **extra
    )
    return message.usage.output_tokens


# -- Claude: the default effort -------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "default"),
    [("claude-opus-5-5", "medium"), ("claude-haiku-5-5", "medium"),
     ("claude-sonnet-5-5", "high"), ("claude-opus-5", "high"), ("claude-sonnet-5", "high"),
     ("claude-fable-5-1", "high")],
)  # fmt: skip
def test_emulator_thinks_at_the_models_default_effort(emu, model, default):
    unset = claude_output_tokens(model)
    assert unset == claude_output_tokens(model, output_config={"effort": default})
    other = "high" if default == "medium" else "medium"
    assert unset != claude_output_tokens(model, output_config={"effort": other})


@pytest.mark.parametrize(
    ("model", "effort", "max_tokens"),
    [("claude-opus-5-5", "medium", 16_384), ("claude-haiku-5-5", "medium", 16_384),
     ("claude-sonnet-5-5", "high", 32_768), ("claude-opus-5", "high", 32_768)],
)  # fmt: skip
def test_the_client_leaves_room_for_the_default_effort(emu, tmp_path, model, effort, max_tokens):
    assert default_max_tokens(family_of("anthropic", model), {}) == max_tokens
    body = encoded("anthropic", model, {})
    assert body["max_tokens"] == max_tokens
    assert "effort" not in body.get("output_config", {})  # the model's default is used
    out = run(model, tmp_path)
    assert out["_status"].to_list() == ["completed"] * 2
    assert out["_reasoning_tokens"].to_list() == [THOUGHT_TOKENS[effort]] * 2


def test_the_capabilities_table_names_the_default_effort():
    from batchata_df.models import capabilities_table

    table = capabilities_table()
    opus = next(line for line in table.splitlines() if "`claude-opus-5-5`" in line)
    haiku = next(line for line in table.splitlines() if "`claude-haiku-5-5`" in line)
    assert "(default medium)" in opus
    assert "(default medium)" in haiku


# -- Claude: thinking off only at effort high or below ---------------------------------------


@pytest.mark.parametrize("model", ["claude-opus-5", "claude-haiku-5-5"])
@pytest.mark.parametrize("effort", ["xhigh", "max"])
def test_emulator_refuses_thinking_off_above_high_effort(emu, model, effort):
    client = anthropic.Anthropic()
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(
            model=model, max_tokens=1024, messages=[{"role": "user", "content": "hi"}],
            thinking={"type": "disabled"}, output_config={"effort": effort},
        )  # fmt: skip
    assert refused.value.status_code == 400
    body = refused.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "invalid_request_error"
    assert "thinking.type.disabled" in body["error"]["message"]
    assert "effort" in body["error"]["message"]


@pytest.mark.parametrize("model", ["claude-opus-5", "claude-haiku-5-5"])
@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_emulator_takes_thinking_off_at_high_effort_or_below(emu, model, effort):
    client = anthropic.Anthropic()
    message = client.messages.create(
        model=model, max_tokens=1024, messages=[{"role": "user", "content": "hi"}],
        thinking={"type": "disabled"}, output_config={"effort": effort},
    )  # fmt: skip
    assert [block.type for block in message.content] == ["text"]


def test_the_client_never_sends_thinking_off_with_an_effort(emu, tmp_path):
    for model in ("claude-opus-5", "claude-haiku-5-5"):
        body = encoded("anthropic", model, {"reasoning_effort": "none"})
        assert body["thinking"] == {"type": "disabled"}
        assert "effort" not in body.get("output_config", {})
    out = run("claude-haiku-5-5", tmp_path, params={"reasoning_effort": "none"})
    assert out["_status"].to_list() == ["completed"] * 2
    assert out["_reasoning_tokens"].to_list() == [0, 0]


# -- Gemini 4 Argon --------------------------------------------------------------------------


def test_emulator_gemini_4_argon_thinks_at_medium_by_default(emu):
    from google import genai

    client = genai.Client()

    def thoughts(config: dict[str, Any]) -> int | None:
        answer = client.models.generate_content(
            model="gemini-4-argon", contents="hi", config=config
        )
        assert answer.usage_metadata is not None
        return answer.usage_metadata.thoughts_token_count

    unset = thoughts({})
    assert unset == thoughts({"thinking_config": {"thinking_level": "MEDIUM"}})
    assert unset != thoughts({"thinking_config": {"thinking_level": "HIGH"}})


def test_the_client_leaves_room_for_argons_default_level(emu, tmp_path):
    family = family_of("gemini", "gemini-4-argon")
    assert default_max_tokens(family, {}) == 16_384
    config = encoded("gemini", "gemini-4-argon", {})["generationConfig"]
    assert config["maxOutputTokens"] == 16_384
    assert "thinkingConfig" not in config
    warning = thinking_room_warning("gemini", "gemini-4-argon", {"max_tokens": 8000})
    assert warning is not None
    assert "thinks at level MEDIUM, its default" in warning
    assert thinking_room_warning("gemini", "gemini-4-argon", {"max_tokens": 16_384}) is None
    out = run("gemini-4-argon", tmp_path)
    assert out["_status"].to_list() == ["completed"] * 2
    assert out["_reasoning_tokens"].to_list() == [THOUGHT_TOKENS["medium"]] * 2
    # Gemini 3.1 Pro keeps HIGH (its own default).
    assert default_max_tokens(family_of("gemini", "gemini-3.1-pro-preview"), {}) == 32_768


# -- context windows the client took from genai-prices, below the model pages' ----------------


def over_window(prompt: str, model: str) -> str | None:
    """The client's refusal of a one-row job for being over ``model``'s window, or None."""
    from batchata_df.frame import _over_window
    from batchata_df.jobs import build_jobs
    from batchata_df.providers.base import RequestSpec
    from batchata_df.schema import AnswerSchema

    frame = pl.DataFrame({"text": [prompt]})
    jobs = build_jobs(frame, model=model, prompt="{text}", system=None, salt="s",
                      scheme="blake2b", history=None)  # fmt: skip
    error: str | None = _over_window(jobs, RequestSpec(AnswerSchema(None), {}))["input_error"][0]
    return error


@pytest.mark.parametrize(
    ("provider", "model", "window"),
    [
        # developers.openai.com models/gpt-5.5 as mirrored by docs.oxen.ai (gpt-5-5-2026-04-23:
        # "Context Length 1,050,000 tokens") and runware.ai (openai-gpt-5-5); genai-prices
        # 0.2.3 says 1,000,000. The emulator's window is 1,050,000 (model_rules._WINDOWS).
        ("openai", "gpt-5.5", 1_050_000),
        # ai.google.dev/gemini-api/docs/models/gemini-3.8-flash ("input token limit
        # 1,048,576", as quoted by docs.apiyi.com live/2026-09/gemini-3-8-flash-official-specs)
        # and docs.cloud.google.com .../models/gemini/3-flash (context window 1,048,576);
        # genai-prices 0.2.3 says 1,000,000.
        ("gemini", "gemini-3.8-flash", 1_048_576),
        ("gemini", "gemini-3-flash-preview", 1_048_576),
    ],
)
def test_client_windows_are_the_model_pages(provider, model, window):
    from batchata_df.emulator import model_rules
    from batchata_df.models import context_window

    assert context_window(provider, model) == window
    assert model_rules.context_window(provider, model) == window


def test_a_gpt_5_5_row_the_api_takes_is_sent():
    # 1,020,008 tokens with the chat framing: over genai-prices' 1,000,000, under 1,050,000.
    assert over_window("word " * 1_020_000, "gpt-5.5") is None
    refused = over_window("word " * 1_050_000, "gpt-5.5")
    assert refused is not None
    assert "over the context window of 'gpt-5.5' (1,050,000 tokens)" in refused
