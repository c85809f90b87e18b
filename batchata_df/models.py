"""What each model accepts: one capability table per model family, applied before sending.

Every request parameter a model refuses is a :class:`~batchata_df.errors.ParamError`
raised before anything is sent (never dropped quietly: a run that asked for
``temperature=0`` and silently got the model's default would change answers without
anyone noticing, and a warning scrolls by unread in a pipeline; an error costs nothing
before the batch is created and names the fix).

The table
---------
:data:`FAMILIES` is the one place where we keep model facts by hand. A model name is
matched against each family's ``pattern`` (a regular expression, ``re.match``) in order,
so unknown new names (``gpt-6-terra``, ``claude-opus-5-9``) get the rules of their
family; a name of a known provider that matches no family gets the permissive
``*-other`` family of its provider (older models keep working as before). Each family
records its ``sources``: the SDK file or documentation page each rule comes from.

Why not a maintained source for everything: ``pydantic-ai-slim`` 2.68 (its
``profiles/openai.py`` ``_REASONING_SUPPORT_BY_PREFIX``, ``profiles/anthropic.py``
``anthropic_model_profile`` and ``profiles/google.py`` ``google_model_profile``) holds most
of these facts, live-verified, and we read it for them (cited below). Depending on it for
profiles alone would pull ~8 packages (httpx2, griffelib, opentelemetry-api,
pydantic-graph, ...) into a data library, its profiles are private helpers
(``_reasoning_support``) that change with its weekly releases, and it lacks facts we
need (OpenAI/Gemini output ceilings, temperature XOR top_p on Claude 4.5/4.6, batch
wire names). Context windows come from genai-prices (already a dependency; see
:func:`context_window`).

One reasoning knob
------------------
``params={"reasoning_effort": ...}`` with ``"none"`` (thinking off, where the model allows
it), ``"minimal"``, ``"low"``, ``"medium"``, ``"high"``, ``"xhigh"``, ``"max"`` is mapped
per family (:func:`thinking_fields`):

* OpenAI: ``reasoning_effort`` as is (Chat Completions; ``openai`` 3.57
  ``types/shared/reasoning_effort.py`` lists ``none`` ... ``max``).
* Anthropic, adaptive families (Claude 4.6+ and 5.x): ``thinking={"type": "adaptive"}``
  plus ``output_config.effort``; budget families (Claude 4.5 and older):
  ``thinking={"type": "enabled", "budget_tokens": N}`` with N from
  :data:`ANTHROPIC_BUDGETS`; ``"none"`` is ``{"type": "disabled"}`` (Sonnet 5.5:
  ``{"type": "between_tools"}``) (``anthropic`` 2.14 ``types/thinking_config_*.py``,
  ``types/output_config_param.py``).
* Gemini 2.5: ``thinkingConfig.thinkingBudget`` (``0`` is off; 2.5 Pro cannot turn it
  off); Gemini 3+: ``thinkingConfig.thinkingLevel`` (``google-genai`` 3.6.1
  ``types.py`` ``ThinkingConfig``, ``ThinkingLevel``).

Thinking tokens count against the output limit on all three providers, so the default
``max_tokens`` (:func:`default_max_tokens`) leaves room for them: 4,096 for an answer
without thinking, more with thinking (:data:`DEFAULT_MAX_TOKENS_BY_EFFORT`), never above
the model's output ceiling. Where a request carries a fixed budget
(:func:`thinking_budget`: Claude ``budget_tokens``, Gemini 2.5 ``thinkingBudget``), a
``max_tokens`` not above it is refused before sending; dynamic thinking and levels name no
token count, so nothing is known before the answer there.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from batchata_df.errors import ModelError, ParamError

__all__ = [
    "ANTHROPIC_BUDGETS",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MAX_TOKENS_BY_EFFORT",
    "EFFORTS",
    "FAMILIES",
    "Family",
    "GEMINI_BUDGETS",
    "GEMINI_DYNAMIC_THINKING",
    "BATCH_WINDOW_HOURS",
    "RETIRED",
    "SCHEDULED",
    "SHUTDOWN_HORIZON_DAYS",
    "TODAY_VAR",
    "anthropic_budget",
    "capabilities_table",
    "check_endpoint",
    "check_model_params",
    "check_provider",
    "check_retired",
    "context_window",
    "default_max_tokens",
    "effective_params",
    "effort_of",
    "family_of",
    "retirement",
    "shut_down_message",
    "SHUT_DOWN_ERRORS",
    "scheduled_shutdown",
    "shutdown_warning",
    "thinking_budget",
    "thinking_room_fixes",
    "thinking_room_warning",
    "today",
    "thinking_fields",
]

Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
EFFORTS: tuple[Effort, ...] = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
"""Values of ``params["reasoning_effort"]``, least thinking first."""

DEFAULT_MAX_TOKENS = 4096
"""``max_tokens`` of a model that does not think (and the answer's share otherwise)."""

DEFAULT_MAX_TOKENS_BY_EFFORT: dict[str, int] = {
    "none": 4096,
    "minimal": 8192,
    "low": 8192,
    "medium": 16_384,
    "high": 32_768,
    "xhigh": 65_536,
    "max": 65_536,
}
"""Default ``max_tokens`` when the model thinks at that effort: 4,096 for the answer plus
room for thinking (capped at the model's output ceiling). Worst-case estimates and the
cost cap use it, so thinking is always inside the worst case."""

ANTHROPIC_BUDGETS: dict[str, int] = {
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 16_384,
    "xhigh": 32_768,
    "max": 32_768,
}
"""``budget_tokens`` sent to Claude models with budget thinking (at least 1,024, the API's
minimum: ``anthropic`` 2.14 ``types/thinking_config_enabled_param.py``)."""

GEMINI_BUDGETS: dict[str, int] = {
    "minimal": 512,
    "low": 1024,
    "medium": 8192,
    "high": 24_576,
    "xhigh": 24_576,
    "max": 24_576,
}
"""``thinkingBudget`` sent to Gemini 2.5 models for ``reasoning_effort``; each value is inside
every 2.5 model's range, which the API enforces ("The thinking budget 128 is invalid. Please
choose a value between 512 and 24576.", earendil-works/pi#2838): 2.5 Pro 128..32,768 (cannot
turn thinking off), 2.5 Flash 1..24,576 (0 is off), 2.5 Flash-Lite 512..24,576 (0 is off),
and -1 (dynamic) on all three (https://ai.google.dev/gemini-api/docs/thinking, table
"Thinking budgets", quoted in juspay/neurolink#1707; Pro's range:
GoogleCloudPlatform/generative-ai#2119; Flash's on Vertex AI: "thinking_budget is out of
range; supported values are integers from 1 to 24576", su-kaka/gcli2api#108). google-genai
3.6.1 ``types.py`` ``ThinkingConfig.thinking_budget``: "0 is DISABLED. -1 is AUTOMATIC. The
default values and allowed ranges are model dependent." The budget counts inside
``maxOutputTokens``, so ``max_tokens`` must be above it (:func:`check_model_params`)."""

GEMINI_DYNAMIC_THINKING = 8192
"""Most tokens Gemini 2.5 Flash and Pro think when no ``thinkingBudget`` is sent (the
library sends none without ``reasoning_effort``): they then think dynamically, as with
``-1``, "Auto (up to 8,192 tokens)" (Vertex AI thinking guide, table of budgets per model,
quoted in juspay/neurolink#1707); 2.5 Flash without a budget answered
``thoughtsTokenCount: 8192`` at ``maxOutputTokens: 8192``, nothing left for the answer
(discuss.google.dev/t/how-can-i-set-0-thinkingbudget-with-vertex-ai-gemini-2-5flash-i-
wanna-disable-it/189244). Thinking counts inside ``maxOutputTokens``
(googleapis/python-genai#811), so a ``max_tokens`` below it plus the answer's
:data:`DEFAULT_MAX_TOKENS` may leave nothing to answer (:func:`thinking_room_warning`)."""

OPENAI_SAMPLING = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "stop")
"""Refused by OpenAI reasoning models while they reason (pydantic-ai-slim 2.68
``profiles/openai.py`` ``SAMPLING_PARAMS``; https://platform.openai.com/docs/guides/reasoning;
``stop``: "Unsupported parameter: 'stop' is not supported with this model." on gpt-5-mini,
https://github.com/huggingface/smolagents/issues/1671, and accepted with
``reasoning_effort='none'``, https://github.com/BerriAI/litellm/pull/28662)."""
ANTHROPIC_SAMPLING = ("temperature", "top_p", "top_k")
"""Claude sampling parameters (pydantic-ai-slim 2.68 ``profiles/anthropic.py``
``ANTHROPIC_SAMPLING_PARAMS``), refused on every Claude model: the anthropic SDK this library
needs (2.x) sends ``anthropic-version: 2026-10-21`` (anthropic 2.14
``_constants.ANTHROPIC_API_VERSION``), the API version that removed them from the Messages
API and Message Batches, at any value ("temperature: Extra inputs are not permitted";
sources: :data:`batchata_df.emulator.anthropic_checks.SAMPLING_REMOVED_IN`). Under the
previous version, 2023-06-01, Claude 4.5 / 4.6 took temperature or top_p (not both) and no
sampling parameter while thinking, and Opus 4.7+ and 5.x none at all."""

Thinking = Literal[
    "none",  # the model does not think
    "openai",  # reasoning_effort
    "anthropic_budget",  # thinking enabled + budget_tokens
    "anthropic_adaptive",  # thinking adaptive + output_config.effort
    "gemini_budget",  # thinkingConfig.thinkingBudget
    "gemini_level",  # thinkingConfig.thinkingLevel
]
Sampling = Literal[
    "any",  # every sampling parameter
    "no",  # none at all (every Claude model, API version 2026-10-21: ANTHROPIC_SAMPLING)
    "not_thinking",  # only while the model does not think (OpenAI reasoning models)
]


@dataclass(frozen=True)
class Family:
    """The rules of one model family (see the module docstring)."""

    provider: Literal["openai", "anthropic", "gemini"]
    name: str
    pattern: str
    """Regular expression matched (``re.match``) against the model name."""
    examples: tuple[str, ...]
    thinking: Thinking = "none"
    thinks_by_default: bool = False
    """Thinks when ``reasoning_effort`` is not given."""
    default_effort: Effort = "none"
    """The effort the model uses when ``reasoning_effort`` is not given."""
    can_disable: bool = True
    """Accepts ``reasoning_effort="none"`` (thinking off)."""
    efforts: tuple[Effort, ...] = ()
    """Accepted ``reasoning_effort`` values other than ``"none"``."""
    sampling: Sampling = "any"
    off_switch: str = "disabled"
    """Anthropic: the ``thinking.type`` that turns thinking off."""
    max_output_tokens: int = 4096
    context: int | None = None
    """Input tokens per request, where genai-prices' number is wrong (else genai-prices')."""
    structured_output: bool = True
    system_prompt: bool = True
    """Takes a system prompt (``system=``): OpenAI's o1-mini takes none."""
    pdf: bool = True
    images: bool = True
    citations: bool = False
    sources: tuple[str, ...] = field(default=())

    def matches(self, model: str) -> bool:
        """Whether ``model`` belongs to this family."""
        return re.match(self.pattern, model) is not None


_PAI = "pydantic-ai-slim 2.68.0 pydantic_ai/profiles/"
_OAI_DOCS = "https://developers.openai.com/api/docs/models/"
_CLAUDE_DOCS = "https://platform.claude.com/docs/"
_G = "https://docs.cloud.google.com/gemini-enterprise-agent-platform/models/guides/gemini-3-5-flash"
_OPENAI_5_6: tuple[Effort, ...] = ("low", "medium", "high", "xhigh")
_ANTHROPIC_NEW: tuple[Effort, ...] = ("low", "medium", "high", "xhigh", "max")
_ANTHROPIC_46: tuple[Effort, ...] = ("low", "medium", "high", "max")
_ANTHROPIC_BUDGET: tuple[Effort, ...] = ("minimal", "low", "medium", "high", "xhigh", "max")
_GEMINI_LEVELS_4: tuple[Effort, ...] = ("minimal", "low", "medium", "high")
_GEMINI_LEVELS_3: tuple[Effort, ...] = ("low", "medium", "high")

FAMILIES: tuple[Family, ...] = (
    # ---- OpenAI (Chat Completions; `max_tokens` is always sent as max_completion_tokens,
    # which every current model takes and reasoning models require: pydantic-ai-slim 2.68
    # profiles/openai.py `openai_chat_supports_max_completion_tokens`).
    Family(
        "openai", "GPT-6 Astra, GPT-6.1 Sol", r"gpt-6(-astra|\.1-sol)",
        ("gpt-6-astra", "gpt-6.1-sol"),
        thinking="openai", thinks_by_default=True, default_effort="medium", can_disable=False,
        efforts=_OPENAI_5_6, sampling="not_thinking", max_output_tokens=128_000,
        sources=(f"{_PAI}openai.py _REASONING_SUPPORT_BY_PREFIX['gpt-6-astra'] (no effort "
                 "'none'; Chat Completions rejects 'max': "
                 "openai_chat_supports_max_reasoning_effort)",
                 f"{_OAI_DOCS}gpt-6-sol (128,000 max output tokens)"),
    ),
    Family(
        "openai", "GPT-6 (Sol, Luna, ...), GPT-6.1 Terra", r"gpt-6", ("gpt-6-sol", "gpt-6-luna"),
        thinking="openai", thinks_by_default=True, default_effort="medium",
        efforts=_OPENAI_5_6, sampling="not_thinking", max_output_tokens=128_000,
        sources=(f"{_OAI_DOCS}gpt-6-sol (reasoning.effort none..max, medium default; "
                 "128,000 max output tokens)",
                 f"{_PAI}openai.py _REASONING_SUPPORT_BY_PREFIX['gpt-6-sol'], SAMPLING_PARAMS"),
    ),
    Family(
        "openai", "GPT-5.x Pro", r"gpt-5(\.\d+)?-pro", ("gpt-5.5-pro",),
        thinking="openai", thinks_by_default=True, default_effort="high", can_disable=False,
        efforts=("medium", "high", "xhigh"), sampling="not_thinking", max_output_tokens=128_000,
        sources=(f"{_PAI}openai.py _GPT_5_PRO_EFFORTS, _REASONING_SUPPORT_BY_PREFIX['gpt-5-pro']",),
    ),
    Family(
        "openai", "GPT-5.5, GPT-5.6", r"gpt-5\.[5-9]", ("gpt-5.5", "gpt-5.6-sol"),
        thinking="openai", thinks_by_default=True, default_effort="medium",
        efforts=_OPENAI_5_6, sampling="not_thinking", max_output_tokens=128_000,
        context=1_050_000,
        sources=(f"{_PAI}openai.py _REASONING_SUPPORT_BY_PREFIX['gpt-5.6'], ['gpt-5.5']",
                 "https://docs.oxen.ai/inference-api/reference/models/gpt-5-5-2026-04-23.md "
                 "and https://runware.ai/docs/models/openai-gpt-5-5 (GPT-5.5: 1,050,000 "
                 "context, 128,000 max output tokens; genai-prices 0.2.3 says 1,000,000; "
                 "gpt-5.6-*: 1,050,000 there too)"),
    ),
    Family(
        "openai", "GPT-5.1 to 5.3 Chat", r"gpt-5\.\d+-chat", ("gpt-5.1-chat-latest",
                                                              "gpt-5.2-chat-latest"),
        thinking="openai", thinks_by_default=True, default_effort="medium", can_disable=False,
        efforts=("medium",), sampling="not_thinking", max_output_tokens=16_384, context=128_000,
        sources=(f"{_PAI}openai.py _REASONING_SUPPORT_BY_PREFIX['gpt-5.1-chat'] ('always reason "
                 "at a fixed medium effort: they reject sampling parameters and any other "
                 "reasoning.effort value, including none', live-verified 2026-07)",
                 "https://github.com/Laisky/one-api/issues/266 and /285 (\"Unsupported value: "
                 "'high' is not supported with the 'gpt-5.1-chat-latest' model. Supported values "
                 "are: 'medium'.\")",
                 "https://docs.oxen.ai/inference-api/reference/models/gpt-5-2-chat-latest.md "
                 "(128,000 context, 16,384 max output tokens; genai-prices 0.2.3 says 400,000 "
                 "for 5.1/5.2)"),
    ),
    Family(
        "openai", "GPT-5 Chat", r"gpt-5-chat", ("gpt-5-chat-latest",), max_output_tokens=16_384,
        context=128_000,
        sources=("https://vercel.com/ai-gateway/models/gpt-5-chat/faq (128K context; "
                 "genai-prices 0.2.3 says 400,000, the GPT-5 reasoning models' window)",
                 f"{_PAI}openai.py _REASONING_SUPPORT_BY_PREFIX['gpt-5-chat'] (_NO_REASONING: "
                 "'gpt-5-chat-latest doesn't reason at all')",),
    ),
    Family(
        "openai", "GPT-5.1", r"gpt-5\.1", ("gpt-5.1",),
        thinking="openai", thinks_by_default=False, default_effort="none",
        efforts=("low", "medium", "high"), sampling="not_thinking", max_output_tokens=128_000,
        sources=(f"{_PAI}openai.py _OPT_IN_REASONING (reasoning off by default, sampling "
                 "parameters allowed with effort 'none')",
                 "https://github.com/CortexReach/memory-lancedb-pro/issues/201 and "
                 "https://github.com/anomalyco/opencode/issues/4451 (\"Unsupported value: "
                 "'xhigh' [/'minimal'] is not supported with the 'gpt-5.1' model. Supported "
                 "values are: 'none', 'low', 'medium', and 'high'.\")",
                 f"{_OAI_DOCS}gpt-5.1 (reasoning.effort none (default), low, medium, high)"),
    ),
    Family(
        "openai", "GPT-5.2 to GPT-5.4", r"gpt-5\.[2-4]", ("gpt-5.2", "gpt-5.4", "gpt-5.4-mini"),
        thinking="openai", thinks_by_default=False, default_effort="none",
        efforts=_OPENAI_5_6, sampling="not_thinking", max_output_tokens=128_000,
        sources=(f"{_PAI}openai.py _OPT_IN_REASONING (reasoning off by default, sampling "
                 "parameters allowed with effort 'none')",
                 "https://github.com/CherryHQ/cherry-studio/issues/11864 and /11870 "
                 "(\"Unsupported value: 'minimal' is not supported with the 'gpt-5.2' model. "
                 "Supported values are: 'none', 'low', 'medium', 'high', and 'xhigh'.\")",
                 "https://github.com/anomalyco/models.dev/pull/2351 (GPT-5.4, mini, nano: none, "
                 "low, medium, high, xhigh)"),
    ),
    Family(
        "openai", "GPT-5", r"gpt-5", ("gpt-5", "gpt-5-mini", "gpt-5-nano"),
        thinking="openai", thinks_by_default=True, default_effort="medium", can_disable=False,
        efforts=("minimal", "low", "medium", "high"), sampling="not_thinking",
        max_output_tokens=128_000,
        sources=(f"{_PAI}openai.py _REASONING_SUPPORT_BY_PREFIX['gpt-5']",
                 "https://platform.openai.com/docs/guides/reasoning"),
    ),
    Family(
        "openai", "o1-mini", r"o1-mini", ("o1-mini",),
        thinking="openai", thinks_by_default=True, default_effort="medium", can_disable=False,
        efforts=("low", "medium", "high"), sampling="not_thinking", max_output_tokens=65_536,
        structured_output=False, system_prompt=False,
        sources=(f"{_OAI_DOCS}o1-mini (65,536 max output tokens)",
                 "no json_schema: dzhng/deep-research#96 ('Invalid parameter: "
                 "'response_format' of type 'json_schema' is not supported with this model.'),"
                 " typedef-ai/fenic#208",
                 "no system or developer message: animalnots/BetterChatGPT-PLUS#90 "
                 "(\"Unsupported value: 'messages[0].role' does not support 'system' with this "
                 "model.\"), QuantumNous/new-api#847 (developer), typedef-ai/fenic#207"),
    ),
    Family(
        "openai", "o-series", r"o\d", ("o3", "o4-mini"),
        thinking="openai", thinks_by_default=True, default_effort="medium", can_disable=False,
        efforts=("low", "medium", "high"), sampling="not_thinking", max_output_tokens=100_000,
        sources=(f"{_PAI}openai.py _O_SERIES_REASONING",),
    ),
    Family(
        "openai", "GPT-4.1", r"gpt-4\.1", ("gpt-4.1", "gpt-4.1-mini"), max_output_tokens=32_768,
        context=1_047_576,
        sources=(f"{_OAI_DOCS}gpt-4.1 (1,047,576 context window, 32,768 max output tokens; no "
                 "reasoning; genai-prices 0.2.3 says 1,000,000)",),
    ),
    Family(
        "openai", "GPT-4 Turbo, GPT-4, GPT-3.5 Turbo",
        r"gpt-3\.5|gpt-4(-turbo|-\d{4}|-32k|$)|gpt-4o-2024-05-13",
        ("gpt-4-turbo", "gpt-3.5-turbo"), structured_output=False,
        sources=("https://reference.langchain.com/javascript/langchain-openai/ChatOpenAI/"
                 "withStructuredOutput (json_schema 'only supported with the gpt-4o-mini, "
                 "gpt-4o-mini-2024-07-18, and gpt-4o-2024-08-06 model snapshots and later')",
                 "https://github.com/langchain-ai/langchain/issues/31490 (\"Invalid parameter: "
                 "'response_format' of type 'json_schema' is not supported with this model.\")"),
    ),
    Family(
        "openai", "other OpenAI models", r"", ("gpt-4o",), max_output_tokens=16_384,
        sources=(f"{_OAI_DOCS}gpt-4o (16,384 max output tokens)",),
    ),
    # ---- Anthropic (default efforts: the models' pages, table "How it compares", column
    # "Default effort": Opus 5.5 and Haiku 5.5 medium, Fable 5.1, Sonnet 5.5, Opus 5,
    # Sonnet 5 high; the default max_tokens leaves room for that thinking).
    Family(
        "anthropic", "Claude Opus 5.5", r"claude-opus-5-[5-9]", ("claude-opus-5-5",),
        thinking="anthropic_adaptive", thinks_by_default=True, default_effort="medium",
        can_disable=False, efforts=_ANTHROPIC_NEW, sampling="no", max_output_tokens=128_000,
        citations=True,
        sources=(f"{_PAI}anthropic.py thinking_always_enabled, disallows_sampling_settings, "
                 "max_output_tokens",
                 f"{_CLAUDE_DOCS}zh-CN/models/opus-5-5/overview (\"Adaptive (always on)\", "
                 "default effort medium, 128K max output) and /whats-new-opus-5-5 (\"the "
                 "default on this model is medium\"; thinking.type.disabled is a 400)"),
    ),
    Family(
        "anthropic", "Claude Fable, Mythos", r"claude-(fable|mythos)-",
        ("claude-fable-5-1", "claude-mythos-5-2"),
        thinking="anthropic_adaptive", thinks_by_default=True, default_effort="high",
        can_disable=False, efforts=_ANTHROPIC_NEW, sampling="no", max_output_tokens=128_000,
        citations=True,
        sources=(f"{_PAI}anthropic.py thinking_always_enabled, disallows_sampling_settings",
                 f"{_CLAUDE_DOCS}en/models/fable-5/migration-guide (thinking disabled or "
                 "enabled with budget_tokens: 400 on claude-fable-5 and claude-mythos-5)",
                 f"{_CLAUDE_DOCS}en/models/haiku-5-5/overview (Fable 5.1: \"Adaptive (always "
                 "on)\", default effort high, 128K max output)"),
    ),
    Family(
        "anthropic", "Claude Sonnet 5.5", r"claude-sonnet-5-[5-9]", ("claude-sonnet-5-5",),
        thinking="anthropic_adaptive", thinks_by_default=True, default_effort="high",
        off_switch="between_tools", efforts=_ANTHROPIC_NEW, sampling="no",
        max_output_tokens=128_000, citations=True,
        sources=(f"{_PAI}anthropic.py disables_thinking_with_between_tools, "
                 "disallows_sampling_settings",
                 "anthropic 2.14 types/thinking_config_between_tools_param.py"),
    ),
    Family(
        "anthropic", "Claude Haiku 5.5", r"claude-haiku-5", ("claude-haiku-5-5",),
        thinking="anthropic_adaptive", thinks_by_default=True, default_effort="medium",
        efforts=_ANTHROPIC_NEW, sampling="no", max_output_tokens=128_000, citations=True,
        sources=(f"{_PAI}anthropic.py thinking_enabled_by_default, disallows_sampling_settings, "
                 "disallows_budget_thinking",
                 f"{_CLAUDE_DOCS}en/models/haiku-5-5/overview (adaptive thinking, default "
                 "effort medium, 128K max output)",
                 "https://openrouter.ai/anthropic/claude-haiku-5.5-20261007:batch (thinking "
                 "\"can be turned off at low, medium, and high effort\": 'none' sends "
                 "thinking disabled with no effort, so the default medium)"),
    ),
    Family(
        "anthropic", "Claude Opus 5, Sonnet 5", r"claude-(opus-5|sonnet-5)",
        ("claude-opus-5", "claude-sonnet-5"),
        thinking="anthropic_adaptive", thinks_by_default=True, default_effort="high",
        efforts=_ANTHROPIC_NEW, sampling="no", max_output_tokens=128_000, citations=True,
        sources=(f"{_PAI}anthropic.py thinking_enabled_by_default, disallows_sampling_settings, "
                 "disallows_budget_thinking",
                 f"{_CLAUDE_DOCS}zh-CN/models/sonnet-5/overview (Opus 5 and Sonnet 5: "
                 "adaptive, default effort high)"),
    ),
    Family(
        "anthropic", "Claude Opus 4.7, 4.8", r"claude-opus-4-[7-9]",
        ("claude-opus-4-7", "claude-opus-4-8"),
        thinking="anthropic_adaptive", efforts=_ANTHROPIC_NEW, sampling="no",
        max_output_tokens=128_000, citations=True,
        sources=(f"{_PAI}anthropic.py disallows_sampling_settings, disallows_budget_thinking "
                 "(Opus 4.7/4.8: no temperature/top_p/top_k)",),
    ),
    Family(
        "anthropic", "Claude Sonnet 4.6, Opus 4.6", r"claude-(sonnet|opus)-4-6",
        ("claude-sonnet-4-6", "claude-opus-4-6"),
        thinking="anthropic_adaptive", efforts=_ANTHROPIC_46, sampling="no",
        max_output_tokens=128_000, citations=True,
        sources=(f"{_PAI}anthropic.py supports_adaptive, supports_effort (no xhigh)",
                 "https://github.com/browseros-ai/BrowserOS/issues/208 ('temperature and top_p "
                 "cannot both be specified for this model')"),
    ),
    Family(
        "anthropic", "Claude Sonnet 4.5, Haiku 4.5, Opus 4.5", r"claude-(sonnet|haiku|opus)-4-5",
        ("claude-haiku-4-5", "claude-opus-4-5", "claude-sonnet-4-5"),  # Sonnet 4.5: retired
        thinking="anthropic_budget", efforts=_ANTHROPIC_BUDGET, sampling="no",
        max_output_tokens=64_000, citations=True,
        sources=(f"{_PAI}anthropic.py max_output_tokens 64,000 (4.5)",
                 "https://github.com/open-webui/functions/pull/9 (Claude 4.5: temperature XOR "
                 "top_p)", "anthropic 2.14 types/thinking_config_enabled_param.py"),
    ),
    Family(
        "anthropic", "Claude Opus 4.1", r"claude-opus-4-1", ("claude-opus-4-1",),
        thinking="anthropic_budget", efforts=_ANTHROPIC_BUDGET, sampling="no",
        max_output_tokens=32_000, citations=True,
        sources=("https://platform.claude.com/docs/en/build-with-claude/extended-thinking",
                 "docs.rs mixtape-core models/claude.rs (Opus 4 and 4.1: 32,000 output tokens)",
                 f"{_PAI}anthropic.py models_that_support_json_schema_output (claude-opus-4-1 "
                 "is in it; https://github.com/vercel/ai/pull/10502: structured outputs "
                 "launched for Sonnet 4.5 and Opus 4.1)"),
    ),
    Family(
        "anthropic", "Claude Opus 4", r"claude-opus-4", ("claude-opus-4-0",),
        thinking="anthropic_budget", efforts=_ANTHROPIC_BUDGET, sampling="no",
        max_output_tokens=32_000, structured_output=False, citations=True,
        sources=("https://platform.claude.com/docs/en/build-with-claude/extended-thinking",
                 "docs.rs mixtape-core models/claude.rs (32,000 output tokens)",
                 f"{_PAI}anthropic.py models_that_support_json_schema_output (not listed)"),
    ),
    Family(
        "anthropic", "Claude Sonnet 4, Sonnet 3.7", r"claude-(sonnet-4|3-7)",
        ("claude-sonnet-4-0", "claude-3-7-sonnet-latest"),
        thinking="anthropic_budget", efforts=_ANTHROPIC_BUDGET, sampling="no",
        max_output_tokens=64_000, structured_output=False, citations=True,
        sources=("https://platform.claude.com/docs/en/build-with-claude/extended-thinking",
                 "docs.rs mixtape-core models/claude.rs (Sonnet 4 and 3.7: 64,000 output "
                 "tokens)",
                 f"{_PAI}anthropic.py models_that_support_json_schema_output (not listed)"),
    ),
    Family(
        "anthropic", "other Claude models", r"", ("claude-3-5-haiku-latest",),
        sampling="no", max_output_tokens=8192, structured_output=False, citations=True,
        sources=(f"{_PAI}anthropic.py models_that_support_json_schema_output",),
    ),
    # ---- Gemini
    Family(
        "gemini", "Gemini 2.5 Pro", r"gemini-2\.5-pro", ("gemini-2.5-pro",),
        thinking="gemini_budget", thinks_by_default=True, default_effort="medium",
        can_disable=False, efforts=("minimal", "low", "medium", "high"),
        max_output_tokens=65_536, context=1_048_576,
        sources=("https://ai.google.dev/gemini-api/docs/thinking (2.5 Pro cannot turn thinking "
                 "off; budget 128..32,768)", f"{_PAI}google.py thinking_always_enabled",
                 "https://github.com/google-gemini/gemini-cli/issues/6678 (\"The input token "
                 "count (1200293) exceeds the maximum number of tokens allowed (1048576).\", "
                 "gemini-2.5-pro; genai-prices 0.2.3 has no window)"),
    ),
    Family(
        "gemini", "Gemini 2.5 Flash-Lite", r"gemini-2\.5-flash-lite",
        ("gemini-2.5-flash-lite", "gemini-2.5-flash-lite-preview-09-2025"),
        thinking="gemini_budget", thinks_by_default=False, default_effort="none",
        efforts=("minimal", "low", "medium", "high"), max_output_tokens=65_536,
        context=1_048_576,
        sources=("https://ai.google.dev/gemini-api/docs/models/gemini-2.5-flash-lite (input "
                 "token limit 1,048,576; genai-prices 0.2.3 says 1,000,000)",
                 "https://ai.google.dev/gemini-api/docs/thinking (table 'Thinking budgets', "
                 "updated 2025-11-18: 2.5 Flash Lite 'Model does not think' when no budget is "
                 "set; range 512 to 24576, 0 turns it off, -1 dynamic)",
                 "https://github.com/earendil-works/pi/issues/2838 (\"The thinking budget 128 "
                 "is invalid. Please choose a value between 512 and 24576.\")"),
    ),
    Family(
        "gemini", "Gemini 2.5 Flash", r"gemini-2\.5", ("gemini-2.5-flash",),
        thinking="gemini_budget", thinks_by_default=True, default_effort="medium",
        efforts=("minimal", "low", "medium", "high"), max_output_tokens=65_536,
        sources=("https://ai.google.dev/gemini-api/docs/thinking (thinkingBudget 0 turns it off;"
                 " range 0 to 24576)",
                 "google-genai 3.6.1 types.py ThinkingConfig.thinking_budget"),
    ),
    Family(
        "gemini", "Gemini 3 Pro", r"gemini-3-pro", ("gemini-3-pro-preview",),
        thinking="gemini_level", thinks_by_default=True, default_effort="high", can_disable=False,
        efforts=("low", "high"), max_output_tokens=65_536, context=1_048_576,
        sources=("https://ai.google.dev/gemini-api/docs/models/gemini-3-pro-preview (input "
                 "token limit 1,048,576; genai-prices 0.2.3 has no window)",
                 "https://github.com/egoist/chatwise-releases/issues/1206 (\"Thinking level "
                 "MEDIUM is not supported for this model. Please retry with other thinking "
                 "level.\", 400 INVALID_ARGUMENT)",
                 "https://github.com/langchain-ai/langchainjs/pull/10101 (MEDIUM came with "
                 "3.1 Pro)", f"{_PAI}google.py _MODELS_WITHOUT_MINIMAL_THINKING_LEVEL"),
    ),
    Family(
        "gemini", "Gemini 4", r"gemini-4", ("gemini-4-argon",),
        thinking="gemini_level", thinks_by_default=True, default_effort="medium",
        can_disable=False, efforts=_GEMINI_LEVELS_3, max_output_tokens=65_536,
        context=1_048_576,
        sources=("https://ai.google.dev/gemini-api/docs/generate-content/latest-model (Gemini "
                 "4 Argon: thinking levels low, medium, high; \"Default thinking level\": "
                 "medium; a unified 1M input-output token limit)",
                 "https://docs.cloud.google.com/gemini-enterprise-agent-platform/models/start/"
                 "get-started-with-gemini-4 (the 1,048,576-token window is shared by input, "
                 "thinking and output; a synchronous request generates at most 65,536)"),
    ),
    Family(
        "gemini", "Gemini 3.x Pro", r"gemini-3[\d.]*-pro", ("gemini-3.1-pro-preview",),
        thinking="gemini_level", thinks_by_default=True, default_effort="high", can_disable=False,
        efforts=_GEMINI_LEVELS_3, max_output_tokens=65_536, context=1_048_576,
        sources=(f"{_PAI}google.py _MODEL_THINKING_LEVELS (LOW/MEDIUM/HIGH), "
                 "thinking_always_enabled", "google-genai 3.6.1 types.py ThinkingLevel",
                 f"{_G} (3.1 Pro: LOW, MEDIUM, HIGH; default HIGH)",
                 "https://ai.google.dev/gemini-api/docs/models/gemini-3.1-pro-preview (input "
                 "token limit 1,048,576, output 65,536; genai-prices 0.2.3 has no window)"),
    ),
    Family(
        "gemini", "Gemini 3.x Flash-Lite", r"gemini-3(\.\d+)?-flash-lite",
        ("gemini-3.1-flash-lite", "gemini-3.5-flash-lite"),
        thinking="gemini_level", thinks_by_default=True, default_effort="minimal",
        can_disable=False, efforts=_GEMINI_LEVELS_4, max_output_tokens=65_536,
        sources=(f"{_G} (3.1 Flash-Lite: MINIMAL, LOW, MEDIUM, HIGH; default MINIMAL)",
                 "https://docs.cloud.google.com/gemini-enterprise-agent-platform/models/gemini/"
                 "3-5-flash-lite (3.5 Flash-Lite thinks minimally by default)"),
    ),
    Family(
        "gemini", "Gemini 3.7 Flash", r"gemini-3\.7", ("gemini-3.7-flash",),
        thinking="gemini_level", thinks_by_default=True, default_effort="medium",
        can_disable=False, efforts=_GEMINI_LEVELS_3, max_output_tokens=65_536,
        sources=("https://ai.google.dev/gemini-api/docs/generate-content/whats-new-gemini-3.7 "
                 "(default thinking level medium; low, medium, high)",
                 f"{_PAI}google.py _MODELS_WITHOUT_MINIMAL_THINKING_LEVEL"),
    ),
    Family(
        "gemini", "Gemini 3.8+ Flash", r"gemini-3\.([89]|\d\d)", ("gemini-3.8-flash",),
        thinking="gemini_level", thinks_by_default=True, default_effort="medium",
        can_disable=False, efforts=_GEMINI_LEVELS_3, max_output_tokens=65_536,
        context=1_048_576,
        sources=("https://ai.google.dev/gemini-api/docs/models/gemini-3.8-flash (input token "
                 "limit 1,048,576, output 65,536, as quoted by docs.apiyi.com live/2026-09/"
                 "gemini-3-8-flash-official-specs; genai-prices 0.2.3 says 1,000,000)",
                 "https://github.com/dzivkovi/video-intel/releases/tag/v2.7.1 (3.8 Flash "
                 "rejects MINIMAL with a 400, as 3.7 does)",
                 "https://docs.cloud.google.com/gemini-enterprise-agent-platform/models/"
                 "thinking (table of supported thinking_level values: 3.8 Flash LOW, MEDIUM, "
                 "HIGH, default MEDIUM; read 2026-11-30)"),
    ),
    Family(
        "gemini", "Gemini 3.5, 3.6 Flash", r"gemini-3\.[56]", ("gemini-3.5-flash",
                                                                "gemini-3.6-flash"),
        thinking="gemini_level", thinks_by_default=True, default_effort="medium",
        can_disable=False, efforts=_GEMINI_LEVELS_4, max_output_tokens=65_536,
        sources=(f"{_G} (3.5 Flash: MINIMAL, LOW, MEDIUM, HIGH; default MEDIUM; 3.5 is "
                 "routed to 3.6)", "google-genai 3.6.1 types.py ThinkingLevel"),
    ),
    Family(
        "gemini", "Gemini 3 Flash", r"gemini-3", ("gemini-3-flash-preview",),
        thinking="gemini_level", thinks_by_default=True, default_effort="high", can_disable=False,
        efforts=_GEMINI_LEVELS_4, max_output_tokens=65_536, context=1_048_576,
        sources=("https://docs.cloud.google.com/gemini-enterprise-agent-platform/models/gemini/"
                 "3-flash (gemini-3-flash-preview: context window 1,048,576, output 65,536; "
                 "genai-prices 0.2.3 says 1,000,000)",
                 "https://ai.google.dev/gemini-api/docs/thinking (thinkingLevel; Gemini 3 uses "
                 "levels, not budgets; MINIMAL is the least)",
                 "https://hexdocs.pm/gemini_ex/Gemini.Types.Enums.ThinkingLevel.html (Gemini 3 "
                 "Flash: minimal, low, medium, high; high the default)"),
    ),
    Family(
        "gemini", "other Gemini models", r"", ("gemini-2.0-flash",), max_output_tokens=8192,
        sources=(f"{_PAI}google.py (Gemini 2.0 and older do not think)",),
    ),
)  # fmt: skip
"""Model families, most specific pattern first within each provider."""


@lru_cache(maxsize=512)
def family_of(provider: str, model: str) -> Family:
    """The family whose rules apply to ``model``.

    Examples
    --------
    >>> family_of("openai", "gpt-6-terra").name
    'GPT-6 (Sol, Luna, ...), GPT-6.1 Terra'
    >>> family_of("anthropic", "claude-opus-5-9").name
    'Claude Opus 5.5'
    >>> family_of("gemini", "models/gemini-2.5-pro") == family_of("gemini", "gemini-2.5-pro")
    True
    """
    # Gemini's own resource name ``models/<id>`` names the same model as ``<id>``
    # (google-genai SDK ``_transformers.t_model``: "models/" is prepended when absent), as
    # :func:`retirement` and :func:`listed_under` read it.
    name = model.removeprefix("models/") if provider == "gemini" else model
    for family in FAMILIES:
        if family.provider == provider and family.matches(name):
            return family
    msg = f"no model family for provider {provider!r}"  # pragma: no cover - catch-alls
    raise AssertionError(msg)  # pragma: no cover


def effort_of(family: Family, params: Mapping[str, Any]) -> str:
    """The effort a request runs at: the knob's value, else the family's default."""
    value = params.get("reasoning_effort")
    return str(value) if value is not None else family.default_effort


def thinks(family: Family, params: Mapping[str, Any]) -> bool:
    """Whether the model thinks for a request with ``params``."""
    return family.thinking != "none" and effort_of(family, params) != "none"


def anthropic_budget(family: Family, effort: str) -> int:
    """``budget_tokens`` for a budget-thinking Claude model at ``effort``.

    :data:`ANTHROPIC_BUDGETS`, capped so that the budget plus the answer's 4,096 fit under
    the model's output ceiling: the API refuses a budget that is not below ``max_tokens``
    ("`max_tokens` must be greater than `thinking.budget_tokens`."), and ``max_tokens``
    cannot exceed the ceiling, so on Opus 4 / 4.1 (32,000) ``xhigh`` and ``max`` think with
    27,904 tokens instead of 32,768 (which no request could carry).

    Examples
    --------
    >>> anthropic_budget(family_of("anthropic", "claude-opus-4-1"), "max")
    27904
    >>> anthropic_budget(family_of("anthropic", "claude-haiku-4-5"), "max")
    32768
    """
    return min(ANTHROPIC_BUDGETS[effort], family.max_output_tokens - DEFAULT_MAX_TOKENS)


def thinking_budget(family: Family, params: Mapping[str, Any]) -> int | None:
    """The fixed thinking budget a request of ``family`` sends, or ``None`` if it sends none.

    Claude 4.5 and older: ``thinking.budget_tokens`` (:func:`anthropic_budget`) whenever
    the model thinks. Gemini 2.5: ``thinkingBudget`` (:data:`GEMINI_BUDGETS`) when
    ``reasoning_effort`` is given. ``None`` where no number bounds the thinking: thinking
    off; Gemini 2.5 without ``reasoning_effort`` (no ``thinkingConfig`` is sent, and the
    model thinks dynamically, as with ``-1``); levels and adaptive thinking (Gemini 3+,
    Claude 4.6+, OpenAI's ``reasoning_effort``), which name no token count.

    Examples
    --------
    >>> thinking_budget(family_of("gemini", "gemini-2.5-pro"), {"reasoning_effort": "high"})
    24576
    >>> thinking_budget(family_of("gemini", "gemini-2.5-pro"), {}) is None  # dynamic
    True
    >>> thinking_budget(family_of("anthropic", "claude-haiku-4-5"),
    ...                 {"reasoning_effort": "low"})
    2048
    """
    if not thinks(family, params):
        return None
    if family.thinking == "anthropic_budget":
        return anthropic_budget(family, effort_of(family, params))
    effort = params.get("reasoning_effort")
    if family.thinking == "gemini_budget" and effort is not None:
        return GEMINI_BUDGETS[str(effort)]
    return None


def default_max_tokens(family: Family, params: Mapping[str, Any]) -> int:
    """``max_tokens`` when ``params`` sets none: room for the answer and for thinking.

    Examples
    --------
    >>> default_max_tokens(family_of("openai", "gpt-5.4-mini"), {})
    4096
    >>> default_max_tokens(family_of("openai", "gpt-6-sol"), {})  # thinks at medium
    16384
    >>> default_max_tokens(family_of("anthropic", "claude-haiku-4-5"),
    ...                    {"reasoning_effort": "medium"})  # budget 8,192 + 4,096
    12288
    """
    if not thinks(family, params):
        return min(DEFAULT_MAX_TOKENS, family.max_output_tokens)
    effort = effort_of(family, params)
    if family.thinking == "anthropic_budget":
        value = anthropic_budget(family, effort) + DEFAULT_MAX_TOKENS
    else:
        value = DEFAULT_MAX_TOKENS_BY_EFFORT[effort]
    return min(value, family.max_output_tokens)


def effective_params(provider: str, model: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with the model's default ``max_tokens`` filled in."""
    out = dict(params)
    if out.get("max_tokens") is None:
        out["max_tokens"] = default_max_tokens(family_of(provider, model), params)
    return out


def _refuse(model: str, family: Family, param: str, why: str, fix: str) -> ParamError:
    msg = f"model {model!r} ({family.name}) {why}: params[{param!r}]; {fix}"
    return ParamError(msg, model=model, param=param)


OPENAI_RESPONSES_ONLY = re.compile(
    r"^(o1-pro|o3-pro|gpt-5(\.\d+)?-(pro|codex)|codex-mini)(-|$)"
)
"""OpenAI models served by the Responses API only. The -pro models: OpenAI's model pages for
o1-pro, o3-pro and gpt-5-pro say each is "available in the Responses API only", and chat
completions answer "This model is only supported in v1/responses and not in
v1/chat/completions." (run-llama/llama_index pull 21922, which also lists gpt-5.2-pro and
gpt-5.4-pro; langchain-ai/langchain pull 34306 for gpt-5.2-pro). The codex models
(gpt-5-codex, gpt-5.1-codex, -max, -mini, gpt-5.2-codex, gpt-5.3-codex, codex-mini-latest)
get the same answer: alvinunreal/tmuxai issue 82 (gpt-5-codex), HeyPuter/puter issue 2110
(gpt-5.1-codex-mini), aaif-goose/goose issue 2564 (codex-mini-latest), MadAppGang/claudish
pull 174 (gpt-5.3-codex: 404 on /v1/chat/completions). batchata-df sends OpenAI batches to
``/v1/chat/completions`` only."""


OPENAI_NOT_CHAT = re.compile(r"^(gpt-realtime|gpt-4o(-mini)?-realtime|gpt-image-|chatgpt-image-)")
"""OpenAI models that are not chat models: the Realtime API's (WebSocket / WebRTC) and the
Images API's. OpenAI answers them on /v1/chat/completions with 404 "This is not a chat
model and thus not supported in the v1/chat/completions endpoint." (SciSharp/BotSharp#959,
danny-avila/LibreChat#5326 for the realtime models). The search-preview models
(``gpt-4o-mini-search-preview``) are chat models and pass."""


def check_endpoint(provider: str, model: str) -> None:
    """Raise :class:`~batchata_df.errors.ModelError` for a model our batch endpoint lacks.

    Examples
    --------
    >>> check_endpoint("openai", "gpt-5.4")
    >>> check_endpoint("openai", "gpt-5.4-pro")
    Traceback (most recent call last):
    ...
    batchata_df.errors.ModelError: model 'gpt-5.4-pro' is served by OpenAI's Responses API \
only, and batchata-df sends OpenAI batches to /v1/chat/completions, where every request \
would fail after the batch ran; use 'gpt-5.4' with params={'reasoning_effort': 'high'} \
(or 'xhigh') instead
    >>> check_endpoint("openai", "gpt-image-1")
    Traceback (most recent call last):
    ...
    batchata_df.errors.ModelError: model 'gpt-image-1' is not a chat model (it is served by \
OpenAI's Images API), and batchata-df sends OpenAI requests to /v1/chat/completions, which \
answers it with 404 'This is not a chat model'; use a chat model such as 'gpt-4.1-mini'
    >>> check_endpoint("openai", "gpt-5.1-codex-max")
    Traceback (most recent call last):
    ...
    batchata_df.errors.ModelError: model 'gpt-5.1-codex-max' is served by OpenAI's Responses \
API only, and batchata-df sends OpenAI batches to /v1/chat/completions, where every \
request would fail after the batch ran; use 'gpt-5.1' with \
params={'reasoning_effort': 'high'} instead
    """
    name = model.strip().lower().removeprefix("openai:")
    if provider == "openai" and OPENAI_NOT_CHAT.match(name):
        api = "Images" if "image" in name else "Realtime"
        msg = (
            f"model {model!r} is not a chat model (it is served by OpenAI's {api} API), and "
            "batchata-df sends OpenAI requests to /v1/chat/completions, which answers it "
            "with 404 'This is not a chat model'; use a chat model such as 'gpt-4.1-mini'"
        )
        raise ModelError(msg)
    if provider != "openai" or not OPENAI_RESPONSES_ONLY.match(name):
        return
    base = re.sub(r"-(pro|codex)(-.*)?$", "", name)
    if name.startswith("codex-mini"):
        base = "gpt-5-mini"
    more = " (or 'xhigh')" if "xhigh" in family_of("openai", base).efforts else ""
    msg = (
        f"model {model!r} is served by OpenAI's Responses API only, and batchata-df sends "
        "OpenAI batches to /v1/chat/completions, where every request would fail after the "
        f"batch ran; use {base!r} with params={{'reasoning_effort': 'high'}}{more} instead"
    )
    raise ModelError(msg)


_PROVIDER_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic", "gemini": "Gemini"}
BASE_URL_VARS = {
    "openai": "OPENAI_BASE_URL",
    "anthropic": "ANTHROPIC_BASE_URL",
    "gemini": "GOOGLE_GEMINI_BASE_URL",
}
"""The environment variable that points each provider's SDK at another endpoint."""


@lru_cache(maxsize=512)
def listed_under(provider: str, model: str) -> bool:
    """Whether genai-prices lists ``model`` under ``provider`` (its own match rules).

    genai-prices' ``google`` list also prices Claude on Vertex AI, which the Gemini API
    does not serve, so a ``claude`` name is never a Gemini model here.

    Examples
    --------
    >>> listed_under("openai", "gpt-5.4-mini"), listed_under("anthropic", "gpt-5.4-mini")
    (True, False)
    >>> listed_under("gemini", "claude-haiku-4-5")
    False
    """
    try:
        from genai_prices import Usage, calc_price
    except ImportError:  # pragma: no cover - genai-prices is a core dependency
        return False
    name = model.removeprefix("models/") if provider == "gemini" else model
    if provider == "gemini" and name.lower().startswith("claude"):
        return False
    provider_id = {"gemini": "google"}.get(provider, provider)
    try:
        calc_price(Usage(input_tokens=1), model_ref=name, provider_id=provider_id)
    except LookupError:
        return False
    return True


def _custom_endpoint(provider: str) -> bool:
    """Whether ``provider``'s SDK is pointed away from the provider (a gateway, a proxy)."""
    var = BASE_URL_VARS[provider]
    if os.environ.get(var):
        return True
    try:
        from dotenv import dotenv_values
    except ImportError:
        return False
    return bool(dotenv_values(".env").get(var))  # what the run will load before sending


def check_provider(provider: str, model: str) -> None:
    """Raise :class:`~batchata_df.errors.ModelError` for another provider's model.

    ``"anthropic:gpt-4.1-mini"`` would have every row refused by Anthropic after the
    batch was created (``not_found_error``); genai-prices, which prices our runs, lists
    ``gpt-4.1-mini`` under OpenAI only, so this is known before anything is sent. A name
    genai-prices does not list at all (a new model, a fine-tune) passes: only the provider
    can tell. So does everything when the provider's base URL is set
    (:data:`BASE_URL_VARS`): a gateway may serve any model under any protocol.

    Examples
    --------
    >>> check_provider("openai", "gpt-5.4-mini")
    >>> check_provider("anthropic", "my-finetune")
    >>> check_provider("anthropic", "gpt-5.4-mini")  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    batchata_df.errors.ModelError: model 'gpt-5.4-mini' is OpenAI's (genai-prices lists it \
under OpenAI, not Anthropic), but the run sends it to Anthropic, whose batch API would fail \
every row; write model='gpt-4.1-mini' (or 'openai:gpt-4.1-mini')
    """
    if provider not in _PROVIDER_NAMES or listed_under(provider, model):
        return
    owners = [p for p in _PROVIDER_NAMES if p != provider and listed_under(p, model)]
    if not owners or _custom_endpoint(provider):
        return
    owner = owners[0]
    prefixed = f"{owner}:{model}"
    from batchata_df.jobs import parse_model

    try:
        inferred = parse_model(model)[0] == owner
    except ModelError:
        inferred = False
    fix = f"model={model!r} (or {prefixed!r})" if inferred else f"model={prefixed!r}"
    msg = (
        f"model {model!r} is {_PROVIDER_NAMES[owner]}'s (genai-prices lists it under "
        f"{_PROVIDER_NAMES[owner]}, not {_PROVIDER_NAMES[provider]}), but the run sends it "
        f"to {_PROVIDER_NAMES[provider]}, whose batch API would fail every row; write {fix}"
    )
    raise ModelError(msg)


_RETIREMENT_PAGES = {
    "anthropic": "https://platform.claude.com/docs/en/about-claude/model-deprecations",
    "openai": "https://developers.openai.com/api/docs/deprecations",
    "gemini": "https://ai.google.dev/gemini-api/docs/deprecations",
}
"""Each provider's list of retired ("shut down") models, the source of :data:`RETIRED`."""

RETIRED: tuple[tuple[str, str, str, str], ...] = (
    # (provider, model pattern (re.fullmatch), shutdown date, the page's replacement), for
    # the shutdown dates passed by 2026-11-30. Anthropic's page: "Requests to retired
    # models will fail".
    ("anthropic", r"claude-(instant-)?1(\.\d)?|claude-v1.*", "2024-11-06", "claude-haiku-4-5"),
    ("anthropic", r"claude-2(\.[01])?", "2025-07-21", "claude-opus-4-8"),
    ("anthropic", r"claude-3-sonnet.*", "2025-07-21", "claude-sonnet-4-6"),
    ("anthropic", r"claude-3-5-sonnet.*", "2025-10-28", "claude-sonnet-4-6"),
    ("anthropic", r"claude-3-opus.*", "2026-01-05", "claude-opus-4-8"),
    ("anthropic", r"claude-3-7-sonnet.*", "2026-02-19", "claude-sonnet-4-6"),
    ("anthropic", r"claude-3-5-haiku.*", "2026-02-19", "claude-haiku-4-5"),
    ("anthropic", r"claude-3-haiku.*", "2026-04-20", "claude-haiku-4-5"),
    ("anthropic", r"claude-opus-4(-0)?(-20250514)?", "2026-06-15", "claude-opus-4-8"),
    ("anthropic", r"claude-sonnet-4(-0)?(-20250514)?", "2026-06-15", "claude-sonnet-4-6"),
    ("anthropic", r"claude-opus-4-1(-20250805)?", "2026-08-05", "claude-opus-4-8"),
    # The page: "| claude-sonnet-4-5-20250929 | Deprecated | September 30, 2026 | November
    # 30, 2026 |" and "| November 30, 2026 | `claude-sonnet-4-5-20250929` |
    # `claude-sonnet-5-5` |": retired today, 2026-11-30 (alias and dated snapshot).
    ("anthropic", r"claude-sonnet-4-5(-20250929)?", "2026-11-30", "claude-sonnet-5-5"),
    # OpenAI's page: "At the time of the shut down, the model or endpoint will no longer be
    # accessible". Chat models (the others are refused by check_endpoint or never chat).
    ("openai", r"gpt-3\.5-turbo-(0301|0613|16k-0613)", "2024-09-13", "gpt-5.4-mini"),
    ("openai", r"gpt-4(-1106)?-vision-preview", "2024-12-06", "gpt-4o"),
    ("openai", r"gpt-4-32k.*", "2025-06-06", "gpt-4o"),
    ("openai", r"gpt-4\.5-preview.*", "2025-07-14", "gpt-4.1"),
    ("openai", r"o1-preview.*", "2025-07-28", "o3"),
    ("openai", r"o1-mini.*", "2025-10-27", "gpt-5.4-mini"),
    ("openai", r"codex-mini-latest", "2026-02-12", "gpt-5.4-mini"),
    ("openai", r"chatgpt-4o-latest", "2026-02-17", "gpt-5.5"),
    ("openai", r"gpt-4-(0314|0125-preview|turbo-preview)", "2026-03-26", "gpt-5.5"),
    ("openai", r"gpt-4o(-mini)?-audio-preview.*", "2026-05-07", "gpt-audio"),
    ("openai", r"gpt-5(\.1)?-chat-latest|gpt-5(\.[12])?-codex.*", "2026-07-23", "gpt-5.5"),
    ("openai", r"gpt-4o(-mini)?-search-preview.*|o[34](-mini)?-deep-research.*"
     r"|computer-use-preview.*", "2026-07-23", "gpt-5.4-mini"),
    ("openai", r"gpt-5\.[23]-chat-latest", "2026-08-10", "gpt-5.5"),
    ("openai", r"gpt-3\.5-turbo-(instruct.*|1106)|babbage-002|davinci-002", "2026-09-28",
     "gpt-5.4-mini"),
    ("openai", r"gpt-3\.5-turbo(-0125)?|o4-mini(-2025-04-16)?", "2026-10-23", "gpt-5.6-terra"),
    ("openai", r"gpt-4\.1-nano.*", "2026-10-23", "gpt-5.6-luna"),
    ("openai", r"gpt-4(-0613|-1106-preview)?|gpt-4-turbo.*|gpt-4o-2024-05-13"
     r"|o1(-2024-12-17)?|o1-pro.*|o3-mini.*", "2026-10-23", "gpt-5.6-sol"),
    # Gemini's page: "Once a model is 'shutdown', it is completely turned off". Gemini
    # 2.5 Pro / Flash are not listed: their shutdown date differs between sources.
    ("gemini", r"gemini-(1\.[05]|pro|flash-1\.5|pro-1\.5).*", "2025-09-24", "gemini-3.5-flash"),
    ("gemini", r"gemini-2\.5-pro-preview-.*", "2025-12-02", "gemini-3.1-pro-preview"),
    ("gemini", r"gemini-3-pro-preview", "2026-03-09", "gemini-3.1-pro-preview"),
    ("gemini", r"gemini-2\.0-flash-lite.*", "2026-06-01", "gemini-3.1-flash-lite"),
    ("gemini", r"gemini-2\.0-flash.*", "2026-06-01", "gemini-3.5-flash"),
    ("gemini", r"gemini-3(\.1)?-(pro|flash)-image-preview", "2026-06-25", "gemini-3.5-flash"),
    ("gemini", r"gemini-2\.5-flash-image.*", "2026-10-02", "gemini-3.5-flash"),
)  # fmt: skip
"""Retired models: requests to them fail at the provider (:data:`_RETIREMENT_PAGES`)."""


SCHEDULED: tuple[tuple[str, str, str, str, str, str], ...] = (
    # (provider, model pattern (re.fullmatch), shutdown date, the provider's replacement,
    # what happens from that date ("fail", or "routed": answered by the replacement, at its
    # prices and parameter rules), source): models deprecated but still served on
    # 2026-11-30 whose announced shutdown falls before mid-2027. From the date on
    # (:func:`today`) they are treated as retired (:func:`retirement`); within
    # SHUTDOWN_HORIZON_DAYS of it a call warns (:func:`shutdown_warning`).
    # Gemini 2.5 Pro / Flash: the sources disagree (2026-06-17 on the first page, then
    # "no earlier than October 16, 2026" (Vertex AI mail, gcpstudyhub.com), 2026-10-16 on
    # aiweekly.co); the latest reads of Google's page give 2026-12-01 with requests routed
    # to the replacement from then on and 2.5 Flash-Lite "not deprecated": samarthputhraya/
    # Modelpin release 0.5.2 (read 2026-11-05) and dev.to/aideprecations "What to Do Before
    # Gemini 2.5 Pro and 2.5 Flash Are Retired on December 1, 2026" (read 2026-11-10).
    ("gemini", r"gemini-2\.5-pro", "2026-12-01", "gemini-3.8-flash", "routed",
     "https://ai.google.dev/gemini-api/docs/deprecations"),
    ("gemini", r"gemini-2\.5-flash", "2026-12-01", "gemini-3.5-flash-lite", "routed",
     "https://ai.google.dev/gemini-api/docs/deprecations"),
    # OpenAI: dates from openai 3.57 types/shared/chat_model.py ("Announced shutdown date:
    # 2026-12-11" / "2027-01-14" / "2027-04-01"), replacements from the deprecations page
    # ("| Dec 11, 2026 | gpt-5, gpt-5-2025-08-07 | Deprecated | gpt-6.1-sol |", gpt-5-mini:
    # gpt-6.1-terra; Modelpin 0.5.4: gpt-5-nano gpt-6-luna; codersera.com and dev.to/max_bob:
    # gpt-4o / 4.1 and their minis, gpt-6-luna). gpt-5-pro / o3-pro are Responses-only
    # (check_endpoint refuses them first). The page names no replacement for gpt-5.1 and
    # gpt-5.4-nano in what we could read: the error points at the page.
    ("openai", r"gpt-5(-2025-08-07)?|o3(-2025-04-16)?", "2026-12-11", "gpt-6.1-sol", "fail",
     "https://developers.openai.com/api/docs/deprecations"),
    ("openai", r"gpt-5-mini(-2025-08-07)?", "2026-12-11", "gpt-6.1-terra", "fail",
     "https://developers.openai.com/api/docs/deprecations"),
    ("openai", r"gpt-5-nano(-2025-08-07)?", "2026-12-11", "gpt-6-luna", "fail",
     "https://developers.openai.com/api/docs/deprecations"),
    ("openai", r"gpt-4\.1(-mini)?(-2025-04-14)?|gpt-4o(-2024-11-20|-2024-08-06)?"
     r"|gpt-4o-mini(-2024-07-18)?", "2027-01-14", "gpt-6-luna", "fail",
     "https://developers.openai.com/api/docs/deprecations"),
    ("openai", r"gpt-5\.1(-2025-11-13)?|gpt-5\.4-nano(-2026-03-17)?", "2027-04-01", "", "fail",
     "https://developers.openai.com/api/docs/deprecations"),
    # Anthropic: anthropic 2.14 _data/deprecated_models.py ("claude-opus-4-5": "January
    # 22nd, 2027", alias and -20251101); replacement claude-opus-5-5 (Modelpin 0.5.7,
    # "tentative retirement date", read from Anthropic's page on 2026-11-26).
    ("anthropic", r"claude-opus-4-5(-20251101)?", "2027-01-22", "claude-opus-5-5", "fail",
     "https://platform.claude.com/docs/en/about-claude/model-deprecations"),
    # Gemini 3.1 Flash-Lite: "| gemini-3.1-flash-lite | May 7, 2026 | May 7, 2027 |" on
    # Google's page (an earliest date; no replacement named).
    ("gemini", r"gemini-3\.1-flash-lite", "2027-05-07", "", "fail",
     "https://ai.google.dev/gemini-api/docs/deprecations"),
)  # fmt: skip
"""Announced shutdowns of models still served (:func:`scheduled_shutdown`)."""

TODAY_VAR = "BATCHATA_DF_TODAY"
"""Environment variable pinning the date (``YYYY-MM-DD``) the shutdown tables are read at
(:func:`today`), and genai-prices' dated prices (:mod:`batchata_df.cost`), for the client
and the emulator alike
(:data:`batchata_df.emulator.model_rules.TODAY_VAR` is the same name): the test suite pins
it so that its outcome never depends on the day it runs; unset, the real UTC date."""

SHUTDOWN_HORIZON_DAYS = 30
"""How near an announced shutdown must be for :func:`shutdown_warning` to warn: a month
warns a monthly job at least once before its model goes away, while the providers' notices
(OpenAI: at least 6 months for GA models; Anthropic: at least 60 days) are far longer, so a
warning for every call of those months would be noise (and an error under
``-W error``)."""

BATCH_WINDOW_HOURS = {"openai": 24, "anthropic": 24, "gemini": 48}
"""How long a batch may run before the provider gives up on it: OpenAI's
``completion_window="24h"`` (the only value), Anthropic's ``expires_at`` (created + 24 h:
"batches expire after 24 hours"), Gemini's 48 h expiry (the batch mode's 24 h is a target;
``emulator.gemini_api.EXPIRY_SECONDS`` cites it)."""


def today() -> dt.date:
    """The date the shutdown tables are read at: :data:`TODAY_VAR`, else the UTC date.

    Raises :class:`~batchata_df.errors.ModelError` for a pinned value that is not a date.

    Examples
    --------
    >>> import os
    >>> before = os.environ.get(TODAY_VAR, "")
    >>> os.environ[TODAY_VAR] = "2026-10-31"; today()
    datetime.date(2026, 10, 31)
    >>> os.environ[TODAY_VAR] = before
    """
    pinned = os.environ.get(TODAY_VAR, "").strip()
    if not pinned:
        return dt.datetime.now(dt.UTC).date()
    try:
        return dt.date.fromisoformat(pinned)
    except ValueError:
        msg = f"{TODAY_VAR}={pinned!r} is not a date; write YYYY-MM-DD, or unset it"
        raise ModelError(msg) from None


def _bare_name(provider: str, model: str) -> str:
    name = model.strip()
    if provider == "openai" and name.startswith("ft:") and name.count(":") >= 2:
        name = name.split(":")[1]
    if provider == "gemini":
        name = name.removeprefix("models/")
    return name


def scheduled_shutdown(provider: str, model: str) -> tuple[str, str, str, str] | None:
    """``(date, replacement, after, source)`` of a model with an announced shutdown.

    ``after`` is ``"fail"`` (requests fail from that date) or ``"routed"`` (answered by the
    replacement). Whether the date has passed is not looked at (:func:`retirement` does).

    Examples
    --------
    >>> scheduled_shutdown("openai", "gpt-5-mini-2025-08-07")[:2]
    ('2026-12-11', 'gpt-6.1-terra')
    >>> scheduled_shutdown("gemini", "models/gemini-2.5-flash")[:3]
    ('2026-12-01', 'gemini-3.5-flash-lite', 'routed')
    >>> scheduled_shutdown("gemini", "gemini-2.5-flash-lite") is None
    True
    """
    name = _bare_name(provider, model)
    for who, pattern, date, replacement, after, source in SCHEDULED:
        if who == provider and re.fullmatch(pattern, name):
            return date, replacement, after, source
    return None


def _listed_retired(provider: str, name: str) -> tuple[str, str] | None:
    """``(shutdown date, replacement)`` of a bare model name in :data:`RETIRED`."""
    for who, pattern, date, replacement in RETIRED:
        if who == provider and re.fullmatch(pattern, name):
            return date, replacement
    return None


def retirement(provider: str, model: str) -> tuple[str, str] | None:
    """``(shutdown date, replacement)`` of a retired ``model``, or ``None`` while served.

    Retired: in :data:`RETIRED`, or in :data:`SCHEDULED` with its date on or before
    :func:`today`. OpenAI fine-tunes (``ft:<base>:...``) go with their base model.

    Examples
    --------
    >>> retirement("anthropic", "claude-3-opus-20240229")
    ('2026-01-05', 'claude-opus-4-8')
    >>> retirement("openai", "ft:gpt-3.5-turbo-0125:acme::x1")
    ('2026-10-23', 'gpt-5.6-terra')
    >>> import os
    >>> before = os.environ.get(TODAY_VAR, "")
    >>> os.environ[TODAY_VAR] = "2026-11-30"; retirement("gemini", "gemini-2.5-flash") is None
    True
    >>> os.environ[TODAY_VAR] = "2026-12-01"; retirement("gemini", "gemini-2.5-flash")
    ('2026-12-01', 'gemini-3.5-flash-lite')
    >>> os.environ[TODAY_VAR] = before
    """
    name = _bare_name(provider, model)
    listed = _listed_retired(provider, name)
    if listed is not None:
        return listed
    found = scheduled_shutdown(provider, name)
    if found is not None and dt.date.fromisoformat(found[0]) <= today():
        return found[0], found[1]
    return None


def shutdown_warning(
    provider: str, model: str, *, now: dt.datetime | None = None, batch: bool = True
) -> str | None:
    """The warning for a model whose announced shutdown is near, else ``None``.

    Near: at most :data:`SHUTDOWN_HORIZON_DAYS` days after :func:`today` (a date already
    reached is :func:`retirement`'s, not a warning). The shutdown is taken to begin at
    00:00 UTC on its date (the providers give a day, not an hour); when that is before a
    batch submitted ``now`` could end (``now`` plus :data:`BATCH_WINDOW_HOURS`), the
    message says that the rows not finished by then fail (or, where the provider routes
    the model, are answered by another model: the emulator answers and bills them so, and
    the client prices each such row at the model its response names, recorded in the job
    events' ``answered_by``). ``now``: :func:`today` at the current UTC
    time of day. ``batch=False`` (a realtime run, answered in seconds): no batch window.
    Not given when the provider's base URL is set (a gateway decides).

    Examples
    --------
    >>> import datetime as dt
    >>> at = dt.datetime(2026, 11, 30, 9, tzinfo=dt.UTC)
    >>> print(shutdown_warning("openai", "gpt-5-nano", now=at))  # doctest: +NORMALIZE_WHITESPACE
    model 'gpt-5-nano' is deprecated: OpenAI shuts it down on 2026-12-11 (in 11 days);
    use 'gpt-6-luna' instead (https://developers.openai.com/api/docs/deprecations)
    >>> shutdown_warning("openai", "gpt-4.1-mini", now=at) is None  # 2027-01-14: 45 days
    True
    """
    if provider not in _PROVIDER_NAMES or _custom_endpoint(provider):
        return None
    found = scheduled_shutdown(provider, model)
    if found is None:
        return None
    date, replacement, after, source = found
    if now is None:
        clock = dt.datetime.now(dt.UTC)
        now = dt.datetime.combine(today(), clock.time(), dt.UTC)
    shutdown = dt.datetime.combine(dt.date.fromisoformat(date), dt.time(), dt.UTC)
    days = (shutdown.date() - now.date()).days
    if days <= 0 or days > SHUTDOWN_HORIZON_DAYS:
        return None
    name = _PROVIDER_NAMES[provider]
    use = f"use {replacement!r} instead" if replacement else "use a newer model"
    msg = (
        f"model {model!r} is deprecated: {name} shuts it down on {date} (in {days} "
        f"day{'s' if days != 1 else ''}); {use} ({source})"
    )
    window = BATCH_WINDOW_HOURS[provider]
    if batch and now + dt.timedelta(hours=window) > shutdown:
        fate = (
            f"are answered by {replacement!r} instead, at its prices and parameter rules"
            if after == "routed"
            else "will fail"
        )
        msg += (
            f". A batch submitted now may take up to {window} h, past the shutdown: rows "
            f"{name} has not finished by {date} 00:00 UTC {fate}"
        )
    return msg


def _table_mark(provider: str, model: str) -> str:
    """The README table's mark of ``model``, whatever the date.

    " (retired)", " (shutdown <date>)" or " (routed to <successor> from <date>)". The
    table must not change with the day it is generated on: a scheduled shutdown is shown
    as its date (:data:`SCHEDULED`; a model the provider then answers with a successor,
    ``"routed"``, names it), "(retired)" only for :data:`RETIRED`.

    Examples
    --------
    >>> _table_mark("gemini", "gemini-2.5-pro"), _table_mark("openai", "o3")
    (' (routed to gemini-3.8-flash from 2026-12-01)', ' (shutdown 2026-12-11)')
    """
    name = _bare_name(provider, model)
    if _listed_retired(provider, name) is not None:
        return " (retired)"
    scheduled = scheduled_shutdown(provider, name)
    if scheduled is None:
        return ""
    if scheduled[2] == "routed" and scheduled[1]:
        return f" (routed to {scheduled[1]} from {scheduled[0]})"
    return f" (shutdown {scheduled[0]})"


def check_retired(provider: str, model: str) -> None:
    """Raise :class:`~batchata_df.errors.ModelError` for a model the provider has retired.

    The provider refuses every request to it (Anthropic: ``not_found_error``, OpenAI:
    ``model_not_found``, Gemini: 404 ``NOT_FOUND``), after the batch was created; the error
    names the shutdown date and the provider's recommended replacement. Not checked when
    the provider's base URL is set (:data:`BASE_URL_VARS`): a gateway may still serve it.

    Examples
    --------
    >>> check_retired("anthropic", "claude-haiku-4-5")
    >>> check_retired("openai", "o1-mini")  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    batchata_df.errors.ModelError: model 'o1-mini' was retired by OpenAI on 2025-10-27: \
every request to it would fail (https://developers.openai.com/api/docs/deprecations); use \
'gpt-5.4-mini' instead
    """
    if provider not in _PROVIDER_NAMES:
        return
    found = retirement(provider, model)
    if found is None or _custom_endpoint(provider):
        return
    date, replacement = found
    scheduled = scheduled_shutdown(provider, model)
    if scheduled is not None and scheduled[0] == date and scheduled[2] == "routed":
        fate = (
            f"its requests are answered by {replacement!r} instead, at that model's prices "
            "and parameter rules"
        )
    else:
        fate = "every request to it would fail"
    use = f"use {replacement!r} instead" if replacement else "use a newer model"
    msg = (
        f"model {model!r} was retired by {_PROVIDER_NAMES[provider]} on {date}: {fate} "
        f"({_RETIREMENT_PAGES[provider]}); {use}"
    )
    raise ModelError(msg)


def routed_successor(provider: str, model: str) -> str | None:
    """The model answering ``model``'s requests now that it is retired and routed, or None.

    Google routes gemini-2.5-pro / -flash to a successor from their shutdown date
    (:data:`SCHEDULED`, ``"routed"``): a request to them is still answered, by the
    successor, at its prices and parameter rules. ``None`` for a model still served, one
    whose requests fail once it is retired, and behind a base URL (:func:`check_retired`
    lets those through).

    Examples
    --------
    >>> import os
    >>> before = os.environ.get(TODAY_VAR, "")
    >>> os.environ[TODAY_VAR] = "2026-12-01"; routed_successor("gemini", "gemini-2.5-flash")
    'gemini-3.5-flash-lite'
    >>> os.environ[TODAY_VAR] = "2026-11-30"; routed_successor("gemini", "gemini-2.5-flash")
    >>> routed_successor("openai", "o1-mini")  # retired, its requests fail
    >>> os.environ[TODAY_VAR] = before
    """
    if provider not in _PROVIDER_NAMES or _custom_endpoint(provider):
        return None
    found = retirement(provider, model)
    scheduled = scheduled_shutdown(provider, model)
    if found is None or scheduled is None or scheduled[:3] != (found[0], found[1], "routed"):
        return None
    return found[1] or None


def routed_resume_warning(
    provider: str, model: str, successor: str, *, dry_run: bool = False
) -> str:
    """What a resumed call says when it sends a routed model's remaining rows.

    Examples
    --------
    >>> print(routed_resume_warning("gemini", "gemini-2.5-flash", "gemini-3.5-flash-lite"))
    ... # doctest: +NORMALIZE_WHITESPACE
    model 'gemini-2.5-flash' was retired by Gemini on 2026-12-01 and its requests are
    answered by 'gemini-3.5-flash-lite' instead: the rows this state folder had not sent are
    sent now and answered by it, at its prices and parameter rules (each row's cost is at the
    model that answered it: `answered_by` in the jobs view of batchata_df.sql;
    https://ai.google.dev/gemini-api/docs/deprecations)
    >>> "would be sent (this is a dry run)" in routed_resume_warning(
    ...     "gemini", "gemini-2.5-flash", "gemini-3.5-flash-lite", dry_run=True)
    True
    """
    found = scheduled_shutdown(provider, model)
    date = found[0] if found is not None else "its shutdown date"
    name = _PROVIDER_NAMES.get(provider, provider)
    return (
        f"model {model!r} was retired by {name} on {date} and its requests are answered by "
        f"{successor!r} instead: the rows this state folder had not sent "
        f"{'would be sent (this is a dry run)' if dry_run else 'are sent now'} and "
        "answered by it, at its prices and parameter rules (each row's cost is at the model "
        "that answered it: `answered_by` in the jobs view of batchata_df.sql; "
        f"{_RETIREMENT_PAGES.get(provider, '')})"
    )


SHUT_DOWN_ERRORS: dict[str, str] = {
    "openai": r"^http_404: The model `[^`]*` (?:has been deprecated|does not exist)",
    "anthropic": r"^not_found_error: model: ",
    "gemini": r"^error_404: \S+ is not found for API version ",
}
"""Each provider's per-request error for a model it does not serve, as a row's ``_error``
starts (OpenAI: 404 ``model_not_found``, "The model `x` has been deprecated" or "does not
exist"; Anthropic: ``not_found_error`` "model: x"; Gemini: 404 "models/x is not found for
API version ..."); :func:`shut_down_message` says what it means for a retired model."""


def shut_down_message(provider: str, model: str, error: str) -> str | None:
    """A row's ``_error`` when ``model`` was shut down before its request, in a batch, ran.

    ``None`` unless the batch was sent before the shutdown as far as the library knows:
    ``model`` is retired (:func:`retirement`) and no base URL is set (without one,
    :func:`check_retired` never lets a retired model be sent, so its batch went before the
    date; through a gateway it may have gone after, or a name the tables do not know may
    never have been served: the provider's words stay). The message names the date and
    the replacement, says that nothing ran and nothing was billed, and keeps the provider's
    own words (``error``).

    Examples
    --------
    >>> import os
    >>> before = os.environ.get(TODAY_VAR, "")
    >>> os.environ[TODAY_VAR] = "2026-12-11"
    >>> print(shut_down_message("openai", "gpt-5-nano", "http_404: The model ..."))
    ... # doctest: +SKIP
    model_shut_down: OpenAI shut 'gpt-5-nano' down on 2026-12-11, before this request of a \
batch sent earlier ran: it was not run and not billed. Send the row again with \
model='gpt-6-luna', its replacement (https://developers.openai.com/api/docs/deprecations); \
the provider said: http_404: The model ...
    >>> os.environ[TODAY_VAR] = "2026-12-10"
    >>> shut_down_message("openai", "gpt-5-nano", "http_404: ...") is None  # still served
    True
    >>> os.environ[TODAY_VAR] = before
    """
    found = retirement(provider, model)
    if found is None or provider not in _PROVIDER_NAMES or _custom_endpoint(provider):
        return None
    date, replacement = found
    base = _bare_name(provider, model)
    what, use = repr(model), "a newer model"
    if base != model.strip() and provider == "openai":  # a fine-tune: its base went
        what = f"{base!r}, the base model of {model!r},"
        if replacement:
            use = f"a fine-tune of {replacement!r}, the base model's replacement"
    elif replacement:
        use = f"model={replacement!r}, its replacement"
    return (
        f"model_shut_down: {_PROVIDER_NAMES[provider]} shut {what} down on {date}, before "
        f"this request of a batch sent earlier ran: it was not run and not billed. Send the "
        f"row again with {use} ({_RETIREMENT_PAGES[provider]}); the provider said: {error}"
    )


def check_model_params(provider: str, model: str, params: Mapping[str, Any]) -> None:
    """Raise :class:`~batchata_df.errors.ParamError` if ``model`` refuses any of ``params``.

    Checks which parameters the model accepts (not their value ranges): sampling
    parameters of models that think, temperature with top_p where only one is allowed,
    the reasoning knob's values, and ``max_tokens`` against the output ceiling and the
    thinking budget.

    Examples
    --------
    >>> check_model_params("openai", "gpt-5.4-mini", {"temperature": 0.2})
    >>> check_model_params("openai", "gpt-6-sol", {"temperature": 0.2})
    Traceback (most recent call last):
    ...
    batchata_df.errors.ParamError: model 'gpt-6-sol' (GPT-6 (Sol, Luna, ...), GPT-6.1 Terra) \
does not accept temperature while it reasons (it reasons unless \
reasoning_effort='none'): params['temperature']; remove it, or pass \
params={'reasoning_effort': 'none'} to turn reasoning off
    """
    family = family_of(provider, model)
    effort = params.get("reasoning_effort")
    if effort is not None:
        _check_effort(model, family, effort)
    thinking = thinks(family, params)
    sampling_names = OPENAI_SAMPLING if provider == "openai" else ANTHROPIC_SAMPLING
    given = [p for p in sampling_names if params.get(p) is not None]
    if given and provider in ("openai", "anthropic"):
        if family.sampling == "no":
            raise _refuse(
                model, family, given[0],
                "does not accept temperature, top_p or top_k: Anthropic's API version "
                "2026-10-21, which the anthropic SDK 2.x sends, refuses them on every model, "
                "at any value ('temperature: Extra inputs are not permitted')",
                "remove it (the model samples with its own settings)",
            )
        if thinking and family.sampling == "not_thinking":
            if family.can_disable:
                when = (
                    "it reasons unless reasoning_effort='none'"
                    if family.thinks_by_default
                    else "reasoning_effort is set"
                )
                fix = (
                    "remove it, or pass params={'reasoning_effort': 'none'} to turn "
                    "reasoning off"
                )
            else:
                when, fix = "it always reasons", "remove it"
            raise _refuse(
                model, family, given[0],
                f"does not accept {given[0]} while it reasons ({when})", fix,
            )
    _check_max_tokens(model, family, params, thinking)


def _check_effort(model: str, family: Family, effort: object) -> None:
    if effort not in EFFORTS:
        msg = (
            f"params['reasoning_effort'] must be one of {list(EFFORTS)!r}, got {effort!r}"
        )
        raise ParamError(msg, model=model, param="reasoning_effort")
    if family.thinking == "none":
        if effort == "none":
            return
        raise _refuse(
            model, family, "reasoning_effort", "does not think",
            "remove it, or use a reasoning model",
        )
    if effort == "none":
        if not family.can_disable:
            lowest = family.efforts[0]
            raise _refuse(
                model, family, "reasoning_effort", "cannot turn thinking off ('none')",
                f"use the lowest effort it takes, {lowest!r}",
            )
        return
    if effort not in family.efforts:
        raise _refuse(
            model, family, "reasoning_effort", f"does not take {effort!r}",
            f"use one of {list(family.efforts)!r}"
            + (" or 'none'" if family.can_disable else ""),
        )


def _check_max_tokens(
    model: str, family: Family, params: Mapping[str, Any], thinking: bool
) -> None:
    max_tokens = params.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        return
    if max_tokens > family.max_output_tokens:
        raise _refuse(
            model, family, "max_tokens",
            f"generates at most {family.max_output_tokens:,} tokens per answer",
            f"use max_tokens <= {family.max_output_tokens}",
        )
    budget = thinking_budget(family, params) if thinking else None
    if budget is not None and max_tokens <= budget:
        # Claude refuses the request ("`max_tokens` must be greater than
        # `thinking.budget_tokens`."); Gemini 2.5 takes it (no source read shows a refusal)
        # and thinking counts inside maxOutputTokens, so rows it fills are billed and end
        # MAX_TOKENS with empty text (googleapis/python-genai#811, #626, #1405).
        effort = effort_of(family, params)
        lower = family.efforts.index(effort) > 0 or family.can_disable
        fix = f"raise max_tokens above {budget}" + (
            " or lower reasoning_effort" if lower
            else " (the model takes no lower reasoning_effort)"
        )
        raise _refuse(
            model, family, "max_tokens",
            f"needs max_tokens above its thinking budget ({budget:,} tokens at "
            f"reasoning_effort={effort!r})", fix,
        )


def thinking_room_fixes(
    provider: str, model: str, params: Mapping[str, Any]
) -> tuple[tuple[dict[str, Any], str], ...]:
    """The fixes :func:`thinking_room_warning` offers, each ``(params to set, why)``.

    Empty when there is no warning. Each fix, applied alone to ``params``, stops the
    warning and is taken by :func:`check_model_params` (tests/test_gemini_thinking_dynamic.py
    applies every one over a grid of models, efforts and ``max_tokens``).

    Examples
    --------
    >>> thinking_room_fixes("gemini", "gemini-2.5-flash", {"max_tokens": 300})
    (({'reasoning_effort': 'none'}, 'no thinking'), ({'max_tokens': 12288}, '8,192 for \
thinking and 4,096 for the answer'))
    """
    room = _thinking_room(provider, model, params)
    return () if room is None else room[1]


def _thinking_room(
    provider: str, model: str, params: Mapping[str, Any]
) -> tuple[str, tuple[tuple[dict[str, Any], str], ...]] | None:
    """What may starve the answer (the message's head) and the fixes, or ``None``."""
    if provider != "gemini":
        return None
    family = family_of(provider, model)
    max_tokens = params.get("max_tokens")
    if (
        not isinstance(max_tokens, int)
        or isinstance(max_tokens, bool)
        or not thinks(family, params)
        or thinking_budget(family, params) is not None
    ):
        return None
    effort = effort_of(family, params)
    head = f"model {model!r} ({family.name})"
    cost = (
        f"inside max_tokens={max_tokens}: a row whose thinking takes all of it is billed "
        f"for {max_tokens:,} output tokens and answers nothing"
    )
    fixes: list[tuple[dict[str, Any], str]] = []
    if family.thinking == "gemini_budget":  # no reasoning_effort: dynamic thinking
        room = GEMINI_DYNAMIC_THINKING
        need = min(room + DEFAULT_MAX_TOKENS, family.max_output_tokens)
        if max_tokens >= need:
            return None
        # A fixed budget leaving at least half of max_tokens for the answer.
        fits = [e for e in family.efforts if GEMINI_BUDGETS[e] <= max_tokens // 2]
        if fits:
            budget = GEMINI_BUDGETS[fits[-1]]
            fixes.append(({"reasoning_effort": fits[-1]}, f"a fixed {budget:,}-token budget"))
        if family.can_disable:
            fixes.append(({"reasoning_effort": "none"}, "no thinking"))
        fixes.append((
            {"max_tokens": need},
            f"{room:,} for thinking and {need - room:,} for the answer",
        ))  # fmt: skip
        what = (
            f"{head} thinks dynamically without reasoning_effort (no thinkingBudget is "
            f"sent), up to {room:,} tokens, {cost}"
        )
        return what, tuple(fixes)
    if family.thinking != "gemini_level" or effort == "minimal":
        return None
    need = _level_need(family, effort)
    if max_tokens >= need:
        return None
    room = need - DEFAULT_MAX_TOKENS
    lower = family.efforts[: family.efforts.index(effort)]
    alone = [e for e in lower if e == "minimal" or _level_need(family, e) <= max_tokens]
    if alone:
        why = ("the least thinking it takes" if alone[-1] == "minimal"
               else "its lowest level" if alone[-1] == lower[0] else "a lower level")
        fixes.append(({"reasoning_effort": alone[-1]}, why))
    elif lower:
        fixes.append((
            {"reasoning_effort": lower[0], "max_tokens": _level_need(family, lower[0])},
            "its lowest level",
        ))  # fmt: skip
    fixes.append((
        {"max_tokens": need},
        f"{room:,} for thinking and {DEFAULT_MAX_TOKENS:,} for the answer",
    ))  # fmt: skip
    given = "" if params.get("reasoning_effort") is not None else ", its default"
    what = (
        f"{head} thinks at level {effort.upper()}{given} (a level names no token count; "
        f"this library's default max_tokens at {effort!r} leaves {room:,} tokens for it), "
        f"{cost}"
    )
    return what, tuple(fixes)


def _level_need(family: Family, effort: str) -> int:
    """``max_tokens`` that stops the warning at a Gemini level.

    This library's default there: room for the level's thinking plus
    :data:`DEFAULT_MAX_TOKENS` for the answer.
    """
    return min(DEFAULT_MAX_TOKENS_BY_EFFORT[effort], family.max_output_tokens)


def _render_fix(fix: Mapping[str, Any], why: str, *, cli: bool) -> str:
    parts = []
    for name, value in fix.items():
        if name == "max_tokens":
            parts.append(f"--max-tokens {value} or more" if cli else f"max_tokens={value} or more")
        else:
            parts.append(f"--param {name}={value}" if cli else f"params={{{name!r}: {value!r}}}")
    return " and ".join(parts) + f" ({why})"


def thinking_room_warning(
    provider: str, model: str, params: Mapping[str, Any], *, cli: bool = False
) -> str | None:
    """Why ``max_tokens`` may be all thinking on a Gemini model, or ``None``.

    Where the request carries a fixed budget (:func:`thinking_budget`) a ``max_tokens``
    that cannot hold it is refused (:func:`check_model_params`): every row would be
    billed for nothing. Where no number bounds the thinking, running out is only likely,
    so it is said here, before sending (:class:`~batchata_df.errors.ThinkingRoomWarning`),
    until ``max_tokens`` holds the thinking plus :data:`DEFAULT_MAX_TOKENS` for the answer
    (the share this library's default ``max_tokens`` gives the answer):

    * Gemini 2.5 Flash / Pro without ``reasoning_effort`` think dynamically, up to
      :data:`GEMINI_DYNAMIC_THINKING` tokens: warned below 8,192 + 4,096 = 12,288
      (``max_tokens=8193`` left one token to answer in).
    * Gemini 3.x / 4 think at a level, which names no token count: thinking at ``HIGH``
      "uses tokens up to its maximum level" (ai.google.dev/gemini-api/docs/thinking), and
      filled ``max_tokens=4096`` on gemini-3.7-flash (NousResearch/hermes-agent#87209);
      gemini-3-pro-preview thought 2,000-3,000 tokens at ``LOW``
      (googleapis/python-genai#1795). Warned below this library's default ``max_tokens``
      at that level (:data:`DEFAULT_MAX_TOKENS_BY_EFFORT`: the answer's 4,096 plus room
      for thinking). ``MINIMAL`` thinks "as few tokens as possible; close to no thinking"
      (Google's thinking guide) and is not warned about.

    The message names each fix (:func:`thinking_room_fixes`), every one enough alone as
    worded (a lower level that is not says ``and`` the ``max_tokens`` it needs), in
    Python's words or, with ``cli=True``, the ``batchata-df run`` flags (``--param
    reasoning_effort=...``, ``--max-tokens N``).

    Examples
    --------
    >>> thinking_room_warning("gemini", "gemini-2.5-flash", {"max_tokens": 12288}) is None
    True
    >>> print(thinking_room_warning("gemini", "gemini-2.5-flash", {"max_tokens": 1500}))
    model 'gemini-2.5-flash' (Gemini 2.5 Flash) thinks dynamically without \
reasoning_effort (no thinkingBudget is sent), up to 8,192 tokens, inside \
max_tokens=1500: a row whose thinking takes all of it is billed for 1,500 output tokens \
and answers nothing; pass params={'reasoning_effort': 'minimal'} (a fixed 512-token \
budget), params={'reasoning_effort': 'none'} (no thinking), or max_tokens=12288 or more \
(8,192 for thinking and 4,096 for the answer)
    >>> print(thinking_room_warning("gemini", "gemini-3.8-flash", {"max_tokens": 400},
    ...                             cli=True).split("; pass ")[1])
    --param reasoning_effort=low and --max-tokens 8192 or more (its lowest level), \
or --max-tokens 16384 or more (12,288 for thinking and 4,096 for the answer)
    """
    room = _thinking_room(provider, model, params)
    if room is None:
        return None
    what, fixes = room
    shown = [_render_fix(fix, why, cli=cli) for fix, why in fixes]
    advice = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + ", or " + shown[-1]
    return f"{what}; pass {advice}"


def thinking_fields(provider: str, model: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The provider's request fields for the reasoning knob (wire names).

    OpenAI: ``{"reasoning_effort": ...}``; Anthropic: ``{"thinking": {...}}`` and
    ``{"effort": ...}`` (the provider puts it in ``output_config``); Gemini:
    ``{"thinkingConfig": {...}}``. Empty when the knob is not set (the model's default).

    Examples
    --------
    >>> thinking_fields("anthropic", "claude-haiku-4-5", {"reasoning_effort": "low"})
    {'thinking': {'type': 'enabled', 'budget_tokens': 2048}}
    >>> thinking_fields("anthropic", "claude-opus-4-7", {"reasoning_effort": "high"})
    {'thinking': {'type': 'adaptive'}, 'effort': 'high'}
    >>> thinking_fields("gemini", "gemini-2.5-flash", {"reasoning_effort": "none"})
    {'thinkingConfig': {'thinkingBudget': 0}}
    >>> thinking_fields("gemini", "gemini-3.5-flash", {"reasoning_effort": "low"})
    {'thinkingConfig': {'thinkingLevel': 'LOW'}}
    """
    effort = params.get("reasoning_effort")
    family = family_of(provider, model)
    if effort is None or family.thinking == "none":
        return {}
    effort = str(effort)
    if family.thinking == "openai":
        return {"reasoning_effort": effort}
    if family.thinking in ("anthropic_budget", "anthropic_adaptive"):
        if effort == "none":
            return {"thinking": {"type": family.off_switch}}
        if family.thinking == "anthropic_budget":
            budget = anthropic_budget(family, effort)
            return {"thinking": {"type": "enabled", "budget_tokens": budget}}
        return {"thinking": {"type": "adaptive"}, "effort": effort}
    if family.thinking == "gemini_budget":
        return {"thinkingConfig": {"thinkingBudget": thinking_budget(family, params) or 0}}
    return {"thinkingConfig": {"thinkingLevel": effort.upper()}}


_PROVIDERS = frozenset({"openai", "anthropic", "gemini"})


@lru_cache(maxsize=512)
def context_window(provider: str, model: str) -> int | None:
    """The model's context window in tokens, from genai-prices (``None`` if unknown).

    Examples
    --------
    >>> context_window("openai", "gpt-6-sol")
    1050000
    >>> context_window("gemini", "models/gemini-2.5-flash") == context_window(
    ...     "gemini", "gemini-2.5-flash") == 1048576
    True
    """
    if provider == "gemini":  # google-genai's t_model takes either spelling
        model = model.removeprefix("models/")
    known = family_of(provider, model).context if provider in _PROVIDERS else None
    if known is not None:
        return known
    try:
        from genai_prices import Usage, calc_price
    except ImportError:  # pragma: no cover - genai-prices is a core dependency
        return None
    provider_id = {"gemini": "google"}.get(provider, provider)
    try:
        found = calc_price(Usage(input_tokens=1), model_ref=model, provider_id=provider_id)
    except LookupError:
        return None
    window = found.model.context_window
    return int(window) if window is not None else None


def capabilities_table(families: Iterable[Family] = FAMILIES) -> str:
    """The README's table of model families and their rules, as Markdown.

    ``tests/test_models.py`` checks that README.md contains exactly this text.
    """
    rows = [
        "| provider | family (e.g.) | sampling parameters | `reasoning_effort` | default "
        "`max_tokens` | max output | context | JSON schema / PDF / images / citations |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for f in families:
        sampling = {
            "any": "all",
            "no": "none",
            "not_thinking": "only with `reasoning_effort='none'`"
            if f.can_disable
            else "none (always reasons)",
        }[f.sampling]
        if f.thinking == "none":
            knob = "—"
        else:
            values = ([*(["none"] if f.can_disable else []), *f.efforts])
            knob = ", ".join(values) + f" (default {f.default_effort})"
        context = context_window(f.provider, f.examples[0])
        docs = "/".join(
            "yes" if v else "no"
            for v in (f.structured_output, f.pdf, f.images, f.citations)
        )
        example = ", ".join(f"`{e}`{_table_mark(f.provider, e)}" for e in f.examples)
        rows.append(
            f"| {f.provider} | {f.name} ({example}) | {sampling} | {knob} | "
            f"{default_max_tokens(f, {}):,} | {f.max_output_tokens:,} | "
            f"{f'{context:,}' if context else '?'} | {docs} |"
        )
    return "\n".join(rows)
