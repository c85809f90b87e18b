"""The emulator's own picture of what each model generation accepts, and how it thinks.

Kept apart from the client's table (:mod:`batchata_df.models`) on purpose: the suite runs
the client against the emulator, so a wrong rule in the client's table shows up as a
failed request here instead of being repeated on both sides. The rules are those of the
providers' migration guides as of late 2026 (sources named per rule; the client's table
cites the same facts independently):

OpenAI (Chat Completions)
    Reasoning models (o-series, GPT-5 and later) refuse ``temperature``, ``top_p``,
    ``presence_penalty``, ``frequency_penalty``, ``logprobs`` and ``stop`` while they
    reason, and
    ``max_tokens`` always (``max_completion_tokens`` instead): "Unsupported parameter:
    'temperature' is not supported with this model." GPT-5.1 to 5.4 reason only when
    ``reasoning_effort`` is set (5.1: none to high; 5.2 to 5.4: none to xhigh, no
    ``minimal``); GPT-5.5+, GPT-6 reason by default and accept ``none``; GPT-5, o-series,
    GPT-6 Astra and GPT-6.1 Sol always reason; ``gpt-5.x-chat-latest`` always reasons at
    ``medium`` and takes no other value; ``gpt-5-chat-latest`` does not reason. A refused
    value gets Chat Completions' wording ("Unsupported value: 'reasoning_effort' does not
    support 'xhigh' with this model. Supported values are: ..."). Chat Completions takes
    no ``max``. Models
    that do not reason refuse ``reasoning_effort``. The -pro and codex models are
    Responses-only (``openai_api``), the realtime and image models not chat models at all
    (``openai_api.NOT_CHAT``: 404); ``json_schema`` needs gpt-4o-mini / gpt-4o-2024-08-06
    or later, and o1-mini / o1-preview take neither it nor a system or developer message.
Anthropic
    Under API version 2026-10-21 (what anthropic 2.x sends) no model takes ``temperature``,
    ``top_p`` or ``top_k`` (``anthropic_checks.SAMPLING_REMOVED_IN``); under 2023-06-01,
    Claude Sonnet/Haiku/Opus 4.5 and Sonnet/Opus 4.6 take ``temperature`` or ``top_p``,
    not both; Opus 4.7+ and every Claude 5 model take none of ``temperature``, ``top_p``,
    ``top_k``. No sampling parameter while thinking. Claude 4.6+ and 5.x think
    ``adaptive`` (budget thinking refused on 4.7+ and 5.x); the 5.x models think without
    being asked, at ``medium`` (Opus 5.5, Haiku 5.5) or ``high`` (the others); Opus 5.5 and
    Fable cannot turn thinking off; Opus 5 and Haiku 5.5 turn it off only at effort
    ``high`` or below; Sonnet 5.5 turns it off with ``between_tools``, not ``disabled``;
    ``budget_tokens`` must be below ``max_tokens``. Structured outputs start at Opus 4.1 and
    the 4.5 models.
Gemini
    2.5 takes ``thinkingBudget`` (0 is off, except 2.5 Pro; else 128..32,768 on Pro,
    512..24,576 on Flash-Lite, which does not think unless given one, 1..24,576 on Flash,
    or -1, dynamic: up to 8,192 tokens) and refuses ``thinkingLevel``; 3.x and 4 take
    ``thinkingLevel`` and a ``thinkingBudget`` alone (backwards compatibility), never both
    together; 3.7+ Flash, 3.x Pro and 4 have no ``MINIMAL``; ``gemini-3-pro-preview`` has
    only ``LOW`` and ``HIGH``; no model takes ``XHIGH``. Default levels: 3.5/3.6, 3.7 and
    3.8 Flash and Gemini 4 ``MEDIUM``, Flash-Lite ``MINIMAL``, the rest ``HIGH``.

A request longer than the model's context window (:func:`context_window`) is refused per
request with each provider's wording, its tokens counted by :func:`window_tokens` (exact
for OpenAI with the model's BPE; approximations for Claude and Gemini).

Thinking spends :data:`THOUGHT_TOKENS` per effort, inside the output limit; an output
limit above the model's ceiling (:func:`max_output`) is refused as the providers do.

Which models each provider serves (:func:`serves`) comes from genai-prices' model list
per provider (a maintained, dependency-pinned source the client prices with too), not
from a hand list: a name the provider's list does not match is refused the way that
provider refuses an unknown model (``openai_api``, ``anthropic_api``, ``gemini_api``
say how, with their sources).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal

from batchata_df.emulator import answers

__all__ = [
    "RETIRED",
    "SCHEDULED",
    "SERVE_RETIRED_VAR",
    "TODAY_VAR",
    "THOUGHT_TOKENS",
    "Rules",
    "anthropic_refusal",
    "anthropic_rules",
    "anthropic_thinking",
    "context_window",
    "over_window",
    "retired",
    "routed",
    "today",
    "window_room",
    "window_tokens",
    "GEMINI_DYNAMIC_CAP",
    "gemini_refusal",
    "gemini_rules",
    "gemini_thoughts",
    "max_output",
    "openai_effort",
    "openai_refusal",
    "openai_rules",
    "serve_retired",
    "serves",
    "successor",
]

THOUGHT_TOKENS: Final = {
    "minimal": 64,
    "low": 256,
    "medium": 1024,
    "high": 2048,
    "xhigh": 4096,
    "max": 8192,
}
"""Thinking tokens the emulator spends per effort (deterministic, so tests can count)."""


@dataclass(frozen=True)
class Rules:
    """What one model accepts."""

    reasons: bool = False
    default_effort: str | None = None
    """The effort used when the request sets none (``None``: no thinking by default)."""
    can_turn_off: bool = True
    efforts: frozenset[str] = frozenset()
    sampling: Literal["all", "one", "none"] = "all"
    thinking: Literal["", "budget", "adaptive", "budget_or_adaptive", "level"] = ""
    off_type: str = "disabled"
    off_efforts: frozenset[str] | None = None
    """Efforts at which ``off_type`` is taken (``None``: at any effort)."""


_OPENAI_SAMPLING: Final = ("temperature", "top_p", "presence_penalty", "frequency_penalty",
                           "logprobs", "top_logprobs", "logit_bias", "stop")  # fmt: skip

_OPENAI: Final[tuple[tuple[str, Rules], ...]] = (
    (r"gpt-6-astra|gpt-6\.1-sol", Rules(True, "medium", False,
                                        frozenset({"low", "medium", "high", "xhigh"}))),
    (r"gpt-6|gpt-5\.[5-9]", Rules(True, "medium", True,
                                  frozenset({"low", "medium", "high", "xhigh"}))),
    (r"gpt-5(\.\d+)?-pro", Rules(True, "high", False, frozenset({"medium", "high", "xhigh"}))),
    # The -chat-latest models of 5.1+ reason at a fixed 'medium' (Laisky/one-api#266, #285:
    # "Supported values are: 'medium'."); gpt-5-chat-latest does not reason (pydantic-ai-slim
    # 2.68 profiles/openai.py 'gpt-5-chat': _NO_REASONING).
    (r"gpt-5\.\d+-chat", Rules(True, "medium", False, frozenset({"medium"}))),
    (r"gpt-5-chat", Rules()),
    # gpt-5.1: none/low/medium/high (CortexReach/memory-lancedb-pro#201, anomalyco/opencode
    # #4451); 5.2 to 5.4 add xhigh, no minimal (CherryHQ/cherry-studio#11864).
    (r"gpt-5\.1", Rules(True, None, True, frozenset({"low", "medium", "high"}))),
    (r"gpt-5\.[2-4]", Rules(True, None, True, frozenset({"low", "medium", "high", "xhigh"}))),
    (r"gpt-5", Rules(True, "medium", False, frozenset({"minimal", "low", "medium", "high"}))),
    (r"o\d", Rules(True, "medium", False, frozenset({"low", "medium", "high"}))),
)  # fmt: skip


def openai_rules(model: str) -> Rules:
    """The rules of an OpenAI model (models that do not reason take everything)."""
    for pattern, rules in _OPENAI:
        if re.match(pattern, model):
            return rules
    return Rules()


_OPENAI_NO_SCHEMA: Final = re.compile(
    r"gpt-3\.5|gpt-4(-turbo|-\d{4}|-32k|$)|gpt-4o-2024-05-13|o1-(mini|preview)"
)
"""OpenAI models without Structured Outputs: json_schema needs gpt-4o-mini, gpt-4o-2024-08-06
or later (OpenAI's Structured Outputs guide, as quoted by langchain-openai's
``withStructuredOutput`` reference); the refusal's wording is langchain-ai/langchain#31490,
and o1-mini's the same (dzhng/deep-research#96; typedef-ai/fenic#208: "o1-mini does not
support json_schema"; o1-preview too, crewAIInc/crewAI#6357)."""

_OPENAI_NO_SYSTEM: Final = re.compile(r"o1-(mini|preview)")
"""OpenAI models that take no system (nor developer) message: o1-mini and o1-preview
("Unsupported value: 'messages[0].role' does not support 'system' with this model.",
unsupported_value, param messages[0].role: animalnots/BetterChatGPT-PLUS#90,
chatboxai/chatbox#1529; 'developer' refused the same way: QuantumNous/new-api#847;
typedef-ai/fenic#207: o1-mini "doesn't support system messages")."""


def openai_refusal(
    model: str, body: dict[str, object]
) -> tuple[int, str | None, str, str | None] | None:
    """The error line a Chat Completions ``body`` gets for ``model``, or None."""
    rules = openai_rules(model)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and (
        _OPENAI_NO_SCHEMA.match(model)
    ):
        return (400, None, "Invalid parameter: 'response_format' of type 'json_schema' is not "
                "supported with this model. Learn more about supported models at the Structured "
                "Outputs guide: https://platform.openai.com/docs/guides/structured-outputs", None)
    messages = body.get("messages")
    if _OPENAI_NO_SYSTEM.match(model) and isinstance(messages, list):
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role in ("system", "developer"):
                return (400, "unsupported_value", f"Unsupported value: 'messages[{i}].role' does "
                        f"not support '{role}' with this model.", f"messages[{i}].role")
    effort = body.get("reasoning_effort")
    ceiling = max_output("openai", model)
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if ceiling is not None and isinstance(value, int) and value > ceiling:
            return (400, "invalid_value", f"{name} is too large: {value}. This model supports "
                    f"at most {ceiling} completion tokens, whereas you provided {value}.", name)
    if not rules.reasons:
        if effort is not None:
            return _unsupported("reasoning_effort")
        return None
    if "max_tokens" in body:
        return (400, "unsupported_parameter", "Unsupported parameter: 'max_tokens' is not "
                "supported with this model. Use 'max_completion_tokens' instead.", "max_tokens")
    if effort is not None and not (
        effort in rules.efforts or (effort == "none" and rules.can_turn_off)
    ):
        order = ["none", *THOUGHT_TOKENS]
        allowed = sorted(rules.efforts | ({"none"} if rules.can_turn_off else set()),
                         key=order.index)
        # Chat Completions' wording (param reasoning_effort): "Unsupported value:
        # 'reasoning_effort' does not support 'high' with this model. Supported values are:
        # 'medium'." (egoist/chatwise-releases#1257, GPT-5.2 Chat; livekit/agents#3966,
        # gpt-5.1: "... 'none', 'low', 'medium', and 'high'."). The Responses API words it
        # "'minimal' is not supported with the 'gpt-5.1' model" (param reasoning.effort,
        # openai/openai-agents-python#2089): not this endpoint's.
        return (400, "unsupported_value", "Unsupported value: 'reasoning_effort' does not "
                f"support {effort!r} with this model. Supported values are: "
                f"{_listed(allowed)}.", "reasoning_effort")
    if openai_effort(model, body) is not None:
        for name in _OPENAI_SAMPLING:
            if name in body:
                return _unsupported(name)
    return None


_CEILINGS: Final[tuple[tuple[str, str, int], ...]] = (
    # (provider, model pattern, most output tokens per answer, thinking included)
    ("openai", r"gpt-5(\.\d+)?-chat", 16_384),  # docs.oxen.ai gpt-5-2-chat-latest page
    ("openai", r"gpt-6|gpt-5", 128_000),
    ("openai", r"o1-mini", 65_536),  # developers.openai.com models/o1-mini
    ("openai", r"o\d", 100_000),
    ("openai", r"gpt-4\.1", 32_768),
    ("anthropic", r"claude-(opus|sonnet)-4-[6-9]|claude-(opus|sonnet|haiku)-5", 128_000),
    ("anthropic", r"claude-(sonnet|haiku|opus)-4-5", 64_000),
    # Opus 4 / 4.1: 32,000; Sonnet 4 and 3.7: 64,000 (Anthropic's models overview, as
    # mirrored in docs.rs mixtape-core models/claude.rs output_tokens).
    ("anthropic", r"claude-opus-4(-[01])?(-\d{8})?$", 32_000),
    ("anthropic", r"claude-sonnet-4(-0)?(-\d{8})?$|claude-3-7-sonnet", 64_000),
    ("gemini", r"gemini-(2\.5|3|4)", 65_536),
)
"""Output ceilings of the generations above (the providers' model pages); older models
have none here."""


_WINDOWS: Final[tuple[tuple[str, str, int], ...]] = (
    # (provider, model pattern, most input tokens per request), from the providers' own
    # refusals and model pages (the client's numbers come from genai-prices instead):
    ("openai", r"gpt-5(\.\d+)?-chat", 128_000),  # docs.oxen.ai gpt-5-2-chat-latest page
    # gpt-5.4-mini / nano: 400,000 (docs.oxen.ai gpt-5-4-mini page, openrouter.ai
    # openai/gpt-5.4-mini; genai-prices 0.2.3 agrees), not GPT-5.4's 1,050,000.
    ("openai", r"gpt-5\.4-(mini|nano)", 400_000),
    ("openai", r"gpt-5\.[4-9]|gpt-6", 1_050_000),  # developers.openai.com models/gpt-5.4
    ("openai", r"gpt-5", 400_000),  # developers.openai.com models/gpt-5.1, gpt-5-mini
    ("openai", r"gpt-4\.1", 1_047_576),  # developers.openai.com models/gpt-4.1
    ("openai", r"o1-mini", 128_000),  # developers.openai.com models/o1-mini
    ("openai", r"o\d", 200_000),  # developers.openai.com models/o3
    # "This model's maximum context length is 128000 tokens." (bytedance/deer-flow#310)
    ("openai", r"gpt-4o|gpt-4-turbo|chatgpt-4o", 128_000),
    ("openai", r"gpt-3\.5-turbo", 16_385),  # "maximum context length is 16385" (vanna#320)
    # 1M on Claude 4.6+ and 5 (their model pages); 200k on older ones without the 1M beta
    # header: "prompt is too long: 208310 tokens > 200000 maximum" (anthropics/claude-code
    # #12186, Sonnet 4.5).
    ("anthropic", r"claude-(opus|sonnet)-4-[6-9]|claude-(opus|sonnet|haiku|fable|mythos)-5",
     1_000_000),
    ("anthropic", r"claude-", 200_000),
    # "The input token count (1200293) exceeds the maximum number of tokens allowed
    # (1048576)." (google-gemini/gemini-cli#6678, gemini-2.5-pro); Gemini 4 Argon: a
    # 1,048,576-token window shared by input and output (docs.cloud.google.com gemini-
    # enterprise-agent-platform/models/start/get-started-with-gemini-4).
    ("gemini", r"gemini-(2\.[05]|3|4)", 1_048_576),
)  # fmt: skip


CLAUDE_TOKENS_PER_O200K: Final = 1.16
"""Claude tokens per ``o200k_base`` token in the emulator's window check (an approximation).

Anthropic publishes no offline tokenizer; Vantage's comparison of Claude 3.5 Sonnet with
GPT-4o (reported by VentureBeat, 2025) measured Claude's tokenizer at +16 % on English, +21 %
on math and +30 % on Python. The emulator takes the English figure."""


def window_tokens(provider: str, model: str, text: str) -> int:
    """The input tokens of ``text`` as the emulator counts them against ``model``'s window.

    * OpenAI: exactly, with the model's own BPE (``o200k_base`` / ``cl100k_base``, the
      ``bpe-openai`` package batchata-df ships; :func:`batchata_df.tokens.estimate_tokens`),
      as OpenAI counts it; ``len // 4`` if that package is missing.
    * Anthropic: ``ceil(o200k_base count * CLAUDE_TOKENS_PER_O200K)`` (an approximation:
      :data:`CLAUDE_TOKENS_PER_O200K`).
    * Gemini: ``len(text) // 4``, Google's "a token is about 4 characters" (Gemini API
      docs, "Understand and count tokens") -- an approximation.

    Examples
    --------
    >>> window_tokens("openai", "gpt-4o-mini", "word " * 1_000)
    1001
    >>> window_tokens("anthropic", "claude-haiku-4-5", "word " * 1_000)
    1162
    >>> window_tokens("gemini", "gemini-2.5-flash", "word " * 1_000)
    1250
    """
    from batchata_df.emulator.answers import count_tokens

    if provider == "gemini":
        return count_tokens(text)
    from batchata_df.tokens import _counter, openai_encoding_name

    encoding = openai_encoding_name(model) if provider == "openai" else "o200k_base"
    count = _counter(encoding)
    if count is None:  # pragma: no cover - bpe-openai is a core dependency
        return count_tokens(text)
    if provider == "openai":
        return count(text)
    return math.ceil(count(text) * CLAUDE_TOKENS_PER_O200K)


OPENAI_TOKENS_PER_MESSAGE = 3
"""Tokens OpenAI's chat format adds around every message, besides its role and content
(``<|start|>{role}<|message|>{content}<|end|>``), for gpt-3.5-turbo-0613 and every later
model: OpenAI cookbook, "How to count tokens with tiktoken"
(examples/How_to_count_tokens_with_tiktoken.ipynb, ``num_tokens_from_messages``:
``tokens_per_message = 3``, plus the tokens of every value of the message, role
included)."""

OPENAI_TOKENS_PER_NAME = 1
"""A message's ``name`` adds its own tokens plus one (the same cookbook function)."""

OPENAI_TOKENS_PER_REPLY = 3
"""Tokens that prime the reply, once per request (``<|start|>assistant<|message|>``; the
same cookbook function)."""


@lru_cache(maxsize=64)
def openai_counter(model: str) -> Callable[[str], int]:
    """The exact BPE token count of a text for ``model`` (its own vocabulary).

    ``len // 4`` if the ``bpe-openai`` package is missing (a core dependency).

    Examples
    --------
    >>> openai_counter("gpt-4o-mini")("word " * 1_000)
    1001
    """
    from batchata_df.emulator.answers import count_tokens
    from batchata_df.tokens import _counter, openai_encoding_name

    count = _counter(openai_encoding_name(model))
    return count_tokens if count is None else count


@lru_cache(maxsize=4096)
def openai_short_tokens(model: str, text: str) -> int:
    """:func:`openai_counter` of a text many requests repeat (roles, system prompts)."""
    return openai_counter(model)(text)


def over_window(provider: str, model: str, text: str, extra: int) -> int | None:
    """The request's input tokens when they exceed ``model``'s window, else ``None``.

    The tokens are :func:`window_tokens` of ``text`` plus ``extra`` (files, schema).
    Usage is still billed as :func:`~batchata_df.emulator.answers.count_tokens`; only the
    refusal counts tokens this way, and only for a text whose UTF-8 bytes could reach the
    window (a BPE token covers at least one byte), so short requests cost one length.

    Examples
    --------
    >>> over_window("openai", "gpt-4o-mini", "word " * 110_000, 0) is None  # 110,001 tokens
    True
    >>> over_window("openai", "gpt-4o-mini", "word " * 130_000, 0)
    130001
    """
    window = context_window(provider, model)
    if window is None:
        return None
    factor = CLAUDE_TOKENS_PER_O200K if provider == "anthropic" else 1.0
    if provider != "gemini" and math.ceil(len(text.encode()) * factor) + extra <= window:
        return None
    tokens = window_tokens(provider, model, text) + extra
    return tokens if tokens > window else None


def window_room(provider: str, model: str, text: str, extra: int, max_tokens: int) -> int | None:
    """Output tokens left in the window when input plus ``max_tokens`` exceed it, else None.

    Claude Sonnet 4.5 and every later model (all the Claude models served today) accept
    such a request and stop generating where the window is full, with ``stop_reason``
    ``model_context_window_exceeded``: "This stop reason is available by default in Sonnet
    4.5 and newer models" (platform.claude.com/docs/en/build-with-claude/handling-stop-
    reasons, "model_context_window_exceeded"; anthropic 2.14 ``types/stop_reason.py``).
    Older Claude models refused it ("input length and `max_tokens` exceed context limit:
    178959 + 64000 > 200000, decrease input length or `max_tokens` and try again",
    docker/docker-agent#569); they are all retired (:data:`RETIRED`), so the emulator never
    refuses it. Tokens are counted as :func:`over_window` counts them.

    Examples
    --------
    >>> window_room("anthropic", "claude-haiku-4-5", "hi", 0, 64_000) is None
    True
    >>> window_room("anthropic", "claude-haiku-4-5", "word " * 172_000, 0, 64_000)
    478
    """
    window = context_window(provider, model)
    if window is None:
        return None
    factor = CLAUDE_TOKENS_PER_O200K if provider == "anthropic" else 1.0
    most = math.ceil(len(text.encode()) * factor) + extra  # a token is at least a byte
    if provider != "gemini" and most + max_tokens <= window:
        return None
    tokens = window_tokens(provider, model, text) + extra
    return window - tokens if tokens + max_tokens > window else None


def context_window(provider: str, model: str) -> int | None:
    """The most input tokens ``model`` takes per request, if the emulator knows it."""
    name = model.removeprefix("models/")
    for who, pattern, window in _WINDOWS:
        if who == provider and re.match(pattern, name):
            return window
    return None


def max_output(provider: str, model: str) -> int | None:
    """The most output tokens ``model`` generates per answer, if the emulator knows it."""
    name = model.removeprefix("models/")
    for who, pattern, ceiling in _CEILINGS:
        if who == provider and re.match(pattern, name):
            return ceiling
    return None


def openai_effort(model: str, body: dict[str, object]) -> str | None:
    """The effort a request runs at, or None when the model does not reason for it."""
    rules = openai_rules(model)
    if not rules.reasons:
        return None
    effort = body.get("reasoning_effort")
    value = effort if isinstance(effort, str) else rules.default_effort
    return None if value in (None, "none") else value


def _listed(values: list[str]) -> str:
    quoted = [repr(v) for v in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return f"{', '.join(quoted[:-1])}, and {quoted[-1]}"


def _unsupported(name: str) -> tuple[int, str, str, str]:
    return (400, "unsupported_parameter",
            f"Unsupported parameter: '{name}' is not supported with this model.", name)  # fmt: skip


_CLAUDE_EFFORTS: Final = frozenset({"low", "medium", "high", "xhigh", "max"})
_UP_TO_HIGH: Final = frozenset({"low", "medium", "high"})

_ANTHROPIC: Final[tuple[tuple[str, Rules], ...]] = (
    # Default efforts: Anthropic's model pages, table "How it compares", column "Default
    # effort" (platform.claude.com/docs/en/models/haiku-5-5/overview; /docs/zh-CN/models/
    # opus-5-5/overview; "What's new in Claude Opus 5.5": "the default on this model is
    # medium"): Opus 5.5 and Haiku 5.5 medium; Fable 5.1, Sonnet 5.5, Opus 5, Sonnet 5 high.
    (r"claude-opus-5-[5-9]", Rules(True, "medium", False, _CLAUDE_EFFORTS, "none", "adaptive")),
    (r"claude-(fable|mythos)", Rules(True, "high", False, _CLAUDE_EFFORTS, "none", "adaptive")),
    (r"claude-sonnet-5-[5-9]",
     Rules(True, "high", True, _CLAUDE_EFFORTS, "none", "adaptive", "between_tools")),
    # Opus 5 takes thinking off only at effort high or below ("What's new in Claude Opus
    # 5.5": "On Claude Opus 5, thinking is on by default and accepts thinking: {type:
    # disabled} when effort is high or lower"; its migration guide: disabled with effort
    # xhigh/max is a 400); Haiku 5.5 likewise ("it can be turned off at low, medium, and
    # high effort", openrouter.ai anthropic/claude-haiku-5.5). No such rule is published
    # for Sonnet 5.
    (r"claude-haiku-5",
     Rules(True, "medium", True, _CLAUDE_EFFORTS, "none", "adaptive", off_efforts=_UP_TO_HIGH)),
    (r"claude-opus-5",
     Rules(True, "high", True, _CLAUDE_EFFORTS, "none", "adaptive", off_efforts=_UP_TO_HIGH)),
    (r"claude-sonnet-5", Rules(True, "high", True, _CLAUDE_EFFORTS, "none", "adaptive")),
    (r"claude-opus-4-[7-9]",
     Rules(True, None, True, frozenset({"low", "medium", "high", "xhigh", "max"}), "none",
           "adaptive")),
    (r"claude-(sonnet|opus)-4-6",
     Rules(True, None, True, frozenset({"low", "medium", "high", "max"}), "one",
           "budget_or_adaptive")),
    (r"claude-(sonnet|haiku|opus)-4-5", Rules(True, None, True, frozenset(), "one", "budget")),
    (r"claude-(opus-4|sonnet-4|3-7)", Rules(True, None, True, frozenset(), "all", "budget")),
)  # fmt: skip


def anthropic_rules(model: str) -> Rules:
    """The rules of a Claude model (older ones take every parameter and do not think)."""
    for pattern, rules in _ANTHROPIC:
        if re.match(pattern, model):
            return rules
    return Rules()


_ANTHROPIC_NO_SCHEMA: Final = re.compile(
    r"claude-(opus-4(-0)?(-\d{8})?$|sonnet-4(-0)?(-\d{8})?$|3-)"
)
"""Claude models without structured outputs (``output_config.format``): the list of
pydantic-ai-slim 2.68 ``profiles/anthropic.py`` ``models_that_support_json_schema_output``
starts at Opus 4.1 and Sonnet/Haiku 4.5 (vercel/ai#10502: launched for Sonnet 4.5 and
Opus 4.1). No first-party refusal text was found; the wording below is the emulator's."""


def anthropic_refusal(model: str, params: dict[str, object]) -> str | None:
    """The ``invalid_request_error`` message for ``params`` on ``model``, or None."""
    rules = anthropic_rules(model)
    config = params.get("output_config")
    if isinstance(config, dict) and "format" in config and _ANTHROPIC_NO_SCHEMA.match(model):
        return f"output_config.format: structured outputs are not supported for {model}."
    ceiling = max_output("anthropic", model)
    max_tokens = params.get("max_tokens")
    if ceiling is not None and isinstance(max_tokens, int) and max_tokens > ceiling:
        return (f"max_tokens: {max_tokens} > {ceiling}, which is the maximum allowed number of "
                f"output tokens for {model}")
    sampling = [p for p in ("temperature", "top_p", "top_k") if p in params]
    thinking = params.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    config = params.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    if sampling and rules.sampling == "none":
        return f"{sampling[0]}: this model does not support sampling parameters; remove it."
    if rules.sampling == "one" and "temperature" in params and "top_p" in params:
        return "temperature and top_p cannot both be specified for this model. Please use only one."
    if kind is not None and not rules.reasons:
        return "thinking: this model does not support thinking."
    # The wording of an adaptive-only model's refusals: "What's new in Claude Opus 5.5"
    # (platform.claude.com, "Thinking cannot be disabled") quotes both, and Claude Code's
    # docs the first on Opus 4.7 (anthropics/claude-code#56497).
    if kind == "enabled" and rules.thinking == "adaptive":
        return ('"thinking.type.enabled" is not supported for this model. Use '
                '"thinking.type.adaptive" and "output_config.effort" to control thinking '
                "behavior.")
    if kind == "adaptive" and rules.thinking == "budget":
        return "thinking.type.adaptive is not supported for this model."
    if kind == "disabled" and not rules.can_turn_off and rules.thinking == "adaptive":
        return ('"thinking.type.disabled" is not supported for this model. Use '
                '"thinking.type.adaptive" and "output_config.effort" to control thinking '
                "behavior.")
    if kind in ("disabled", "between_tools") and (
        not rules.can_turn_off or kind != rules.off_type
    ):
        return f"thinking.type.{kind} is not supported for this model."
    if kind == rules.off_type and rules.off_efforts is not None and isinstance(effort, str) and (
        effort not in rules.off_efforts
    ):
        # No first-party wording was found; the rule is the one cited at _ANTHROPIC.
        return (f'"thinking.type.{kind}" is not supported with output_config.effort '
                f"{effort!r} for this model. Use effort 'high' or lower, or omit thinking.")
    if kind == "enabled":
        budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
        max_tokens = params.get("max_tokens")
        if isinstance(budget, int) and isinstance(max_tokens, int) and budget >= max_tokens:
            return "`max_tokens` must be greater than `thinking.budget_tokens`."
    if effort is not None and effort not in rules.efforts:
        return f"output_config.effort: {effort!r} is not supported for this model."
    if sampling and anthropic_thinking(model, params) is not None:
        return (f"`{sampling[0]}` may only be set to 1 when thinking is enabled. Please consult"
                " our documentation at https://docs.claude.com/en/docs/build-with-claude/"
                "extended-thinking")
    return None


def anthropic_thinking(model: str, params: dict[str, object]) -> int | None:
    """Thinking tokens a request spends, or None when the model does not think for it."""
    rules = anthropic_rules(model)
    if not rules.reasons:
        return None
    thinking = params.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    config = params.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    if kind in ("disabled", "between_tools"):
        return None
    if kind == "enabled" and isinstance(thinking, dict):
        budget = thinking.get("budget_tokens")
        return min(int(budget), THOUGHT_TOKENS["medium"]) if isinstance(budget, int) else None
    if kind == "adaptive" or rules.default_effort is not None:
        return THOUGHT_TOKENS[str(effort or rules.default_effort or "high")]
    return None


_GEMINI: Final[tuple[tuple[str, Rules], ...]] = (
    (r"gemini-2\.5-pro", Rules(True, "medium", False, frozenset(), "all", "budget")),
    (r"gemini-2\.5-flash-image", Rules()),
    # 2.5 Flash-Lite thinks only when asked (ai.google.dev/gemini-api/docs/thinking, table
    # "Thinking budgets": "Model does not think" by default; budget 512..24576, 0 off).
    (r"gemini-2\.5-flash-lite", Rules(True, None, True, frozenset(), "all", "budget")),
    (r"gemini-2\.5", Rules(True, "medium", True, frozenset(), "all", "budget")),
    # gemini-3-pro-preview: LOW and HIGH ("Thinking level MEDIUM is not supported for this
    # model.", egoist/chatwise-releases#1206); 3.1 Pro adds MEDIUM (langchainjs#10101).
    (r"gemini-3-pro", Rules(True, "high", False, frozenset({"LOW", "HIGH"}), "all", "level")),
    (r"gemini-3[\d.]*-pro",
     Rules(True, "high", False, frozenset({"LOW", "MEDIUM", "HIGH"}), "all", "level")),
    # Gemini 4 Argon: LOW, MEDIUM, HIGH, default MEDIUM (ai.google.dev/gemini-api/docs/
    # generate-content/latest-model, "Default thinking level": medium).
    (r"gemini-4",
     Rules(True, "medium", False, frozenset({"LOW", "MEDIUM", "HIGH"}), "all", "level")),
    # Default levels (Google's 3.5 Flash guide: 3.5 Flash MEDIUM, 3.1 Flash-Lite MINIMAL;
    # ai.google.dev whats-new-gemini-3.7: 3.7 Flash medium, no MINIMAL). 3.8 Flash: LOW,
    # MEDIUM, HIGH, default MEDIUM (docs.cloud.google.com/gemini-enterprise-agent-platform/
    # models/thinking, table "supported thinking_level values", read 2026-11-30).
    (r"gemini-3\.([7-9]|\d\d)", Rules(True, "medium", False, frozenset({"LOW", "MEDIUM", "HIGH"}),
                                    "all", "level")),
    (r"gemini-3(\.\d+)?-flash-lite",
     Rules(True, "minimal", False, frozenset({"MINIMAL", "LOW", "MEDIUM", "HIGH"}), "all",
           "level")),
    (r"gemini-3\.[56]", Rules(True, "medium", False,
                              frozenset({"MINIMAL", "LOW", "MEDIUM", "HIGH"}), "all", "level")),
    (r"gemini-3", Rules(True, "high", False, frozenset({"MINIMAL", "LOW", "MEDIUM", "HIGH"}),
                        "all", "level")),
)  # fmt: skip


def gemini_rules(model: str) -> Rules:
    """The rules of a Gemini model (2.0 and older do not think)."""
    name = model.removeprefix("models/")
    for pattern, rules in _GEMINI:
        if re.match(pattern, name):
            return rules
    return Rules()


def gemini_refusal(model: str, config: dict[str, object]) -> str | None:
    """The per-request error message for a ``thinkingConfig`` on ``model``, or None.

    What Google refuses, per generation (sources beside each rule): a level on a model
    without levels (2.5), a level the model does not list (``XHIGH`` is in google-genai
    3.6.1 ``types.py`` ``ThinkingLevel`` but in no model's list), a budget and a level
    together, a budget outside a 2.5 model's range, and turning thinking off where it
    cannot be. A ``thinkingBudget`` alone is taken by 3.x and 4 too (kept for backwards
    compatibility, and honoured: see :func:`gemini_thoughts`).
    """
    rules = gemini_rules(model)
    ceiling = max_output("gemini", model)
    limit = config.get("maxOutputTokens", config.get("max_output_tokens"))
    if ceiling is not None and isinstance(limit, int) and limit > ceiling:
        return (f"Unable to submit request because it has a maxOutputTokens value of {limit} but"
                f" the supported range is from 1 (inclusive) to {ceiling + 1} (exclusive).")
    budget, level = _gemini_thinking(config)
    if (budget is not None or level is not None) and not rules.reasons:
        return "Thinking is not enabled for this model."
    if budget is not None and level is not None:
        # The live API's wording (QwenLM/qwen-code#9094 review; Vertex AI prefixes it with
        # "Unable to submit request because "): Google's thinking guide says the two are
        # mutually exclusive (spring-projects/spring-ai#4983 quotes it).
        return "thinking_budget and thinking_level are not supported together."
    if level is not None and rules.thinking != "level":
        # Measured on every live 2.5 model (dhyansraj/mcp-mesh#1346, 2026-07-20).
        return "Thinking level is not supported for this model."
    if level is not None and str(level).upper() not in rules.efforts:
        # egoist/chatwise-releases#1206 quotes this wording (400 INVALID_ARGUMENT).
        return (f"Thinking level {str(level).upper()} is not supported for this model. Please "
                "retry with other thinking level.")
    name = model.removeprefix("models/")
    # 2.5 Pro's wording; Gemini 3 Pro cannot turn thinking off either ("You cannot disable
    # thinking for Gemini 3 Pro", ai.google.dev/gemini-api/docs/thinking, quoted in
    # spring-projects/spring-ai#4983). The 3.x Flash models take budget 0 and think none
    # (gemini-3.5-flash: "budget:0 -> field absent", dhyansraj/mcp-mesh#1346).
    if budget == 0 and not rules.can_turn_off and (
        rules.thinking == "budget" or re.match(r"gemini-(3[\d.]*-pro|4)", name)
    ):
        return "Budget 0 is invalid. This model only works in thinking mode."
    span = _GEMINI_BUDGET_RANGE.get(_gemini_budget_family(name)) if budget else None
    if budget is not None and span is not None and budget != -1 and not (
        span[0] <= budget <= span[1]
    ):
        # earendil-works/pi#2838 quotes this wording (gemini-2.5-flash-lite, budget 128).
        return (f"The thinking budget {budget} is invalid. Please choose a value between "
                f"{span[0]} and {span[1]}.")
    return None


_GEMINI_BUDGET_RANGE: Final = {
    "pro": (128, 32_768),
    "flash-lite": (512, 24_576),
    "flash": (1, 24_576),
}
"""``thinkingBudget`` values other than 0 (off, where allowed) and -1 (dynamic) that 2.5
models take (ai.google.dev/gemini-api/docs/thinking, table "Thinking budgets")."""


def _gemini_budget_family(name: str) -> str:
    if name.startswith("gemini-2.5-pro"):
        return "pro"
    if name.startswith("gemini-2.5-flash-lite"):
        return "flash-lite"
    return "flash" if name.startswith("gemini-2.5") else ""


GEMINI_DYNAMIC_CAP: Final = 8192
"""Most thinking tokens Gemini 2.5 spends when no ``thinkingBudget`` is sent or it is -1
(dynamic thinking): the Vertex AI thinking guide's table gives "Auto (up to 8,192 tokens)"
as the default of 2.5 Flash, Pro and Flash-Lite (quoted in juspay/neurolink#1707), and 2.5
Flash without a budget answered ``thoughtsTokenCount: 8192`` at ``maxOutputTokens: 8192``
(discuss.google.dev/t/how-can-i-set-0-thinkingbudget-with-vertex-ai-gemini-2-5flash-i-
wanna-disable-it/189244). The emulator spends it on prompts marked ``[[emulator:think]]``."""


def gemini_thoughts(model: str, config: dict[str, object], *, deep: bool = False) -> int:
    """Thinking tokens a request spends (0 when it does not think), before the output limit.

    ``deep`` is a prompt that makes the model think as long as it may (the
    ``[[emulator:think]]`` marker): dynamic thinking on 2.5 spends
    :data:`GEMINI_DYNAMIC_CAP`; a level names no token count, so thinking at a level (or
    on 3.x and 4 without one) runs until ``maxOutputTokens`` stops it (gemini-3-flash-
    preview, googleapis/python-genai#2062; gemini-3.7-flash at HIGH filled
    ``max_tokens=4096``, NousResearch/hermes-agent#87209); a fixed budget bounds it (a
    soft bound on 3.x: gemini-3-pro-preview thought 2,000-3,000 tokens at budget 512,
    googleapis/python-genai#1795; the emulator holds it to the budget).
    """
    rules = gemini_rules(model)
    if not rules.reasons:
        return 0
    budget, level = _gemini_thinking(config)
    if budget is not None and budget >= 0:
        return min(budget, THOUGHT_TOKENS["medium"]) if not deep else budget
    if rules.thinking == "level" and (budget is None or budget == -1):
        if deep:
            return _UNBOUNDED
        effort = str(level).lower() if level is not None else rules.default_effort
        return THOUGHT_TOKENS.get(str(effort or "high"), 0)  # an unknown level is refused
    if budget == -1 or rules.default_effort:  # 2.5's dynamic thinking
        if deep:
            return GEMINI_DYNAMIC_CAP
        return THOUGHT_TOKENS[str(rules.default_effort or "medium")]
    return 0


_UNBOUNDED: Final = 1 << 30  # thinking that only the output limit stops


def _gemini_thinking(config: dict[str, object]) -> tuple[int | None, object]:
    cfg = config.get("thinkingConfig", config.get("thinking_config"))
    if not isinstance(cfg, dict):
        return None, None
    budget = cfg.get("thinkingBudget", cfg.get("thinking_budget"))
    level = cfg.get("thinkingLevel", cfg.get("thinking_level"))
    if isinstance(level, str) and level.upper() == "THINKING_LEVEL_UNSPECIFIED":
        level = None  # a proto3 enum's zero value is the field unset (google-genai 3.6.1
        # types.py ThinkingLevel.THINKING_LEVEL_UNSPECIFIED): the model's default level
    return (budget if isinstance(budget, int) else None), level


RETIRED: Final[tuple[tuple[str, str, str], ...]] = (
    # (provider, model pattern (re.fullmatch), shutdown date): models whose shutdown
    # date has passed (as of 2026-11-30), aliases and dated snapshots alike.
    # Anthropic, platform.claude.com/docs/en/about-claude/model-deprecations, "Model
    # status" (retired: "Requests to retired models will fail").
    ("anthropic", r"claude-(instant-)?1(\.\d)?|claude-v1.*", "2024-11-06"),
    ("anthropic", r"claude-2(\.[01])?|claude-3-sonnet.*", "2025-07-21"),
    ("anthropic", r"claude-3-5-sonnet.*", "2025-10-28"),
    ("anthropic", r"claude-3-opus.*", "2026-01-05"),
    ("anthropic", r"claude-3-7-sonnet.*|claude-3-5-haiku.*", "2026-02-19"),
    ("anthropic", r"claude-3-haiku.*", "2026-04-20"),
    ("anthropic", r"claude-(opus|sonnet)-4(-0)?(-20250514)?", "2026-06-15"),
    ("anthropic", r"claude-opus-4-1(-20250805)?", "2026-08-05"),
    # "| claude-sonnet-4-5-20250929 | Deprecated | September 30, 2026 | November 30, 2026 |":
    # the shutdown is today (2026-11-30); alias and dated snapshot.
    ("anthropic", r"claude-sonnet-4-5(-20250929)?", "2026-11-30"),
    # OpenAI, developers.openai.com/api/docs/deprecations ("At the time of the shut down,
    # the model or endpoint will no longer be accessible"); chat models only (realtime,
    # image and embedding models are refused as not chat models anyway).
    ("openai", r"gpt-3\.5-turbo-(0301|0613|16k-0613)", "2024-09-13"),
    ("openai", r"gpt-4(-1106)?-vision-preview", "2024-12-06"),
    ("openai", r"gpt-4-32k.*", "2025-06-06"),
    ("openai", r"gpt-4\.5-preview.*", "2025-07-14"),
    ("openai", r"o1-preview.*", "2025-07-28"),
    ("openai", r"o1-mini.*", "2025-10-27"),
    ("openai", r"codex-mini-latest", "2026-02-12"),
    ("openai", r"chatgpt-4o-latest", "2026-02-17"),
    ("openai", r"gpt-4-(0314|0125-preview|turbo-preview)", "2026-03-26"),
    ("openai", r"gpt-4o(-mini)?-audio-preview.*", "2026-05-07"),
    ("openai", r"gpt-5(\.1)?-chat-latest|gpt-5(\.[12])?-codex.*|gpt-4o(-mini)?-search-preview.*"
     r"|o[34](-mini)?-deep-research.*|computer-use-preview.*", "2026-07-23"),
    ("openai", r"gpt-5\.[23]-chat-latest", "2026-08-10"),
    ("openai", r"gpt-3\.5-turbo-(instruct.*|1106)|babbage-002|davinci-002", "2026-09-28"),
    ("openai", r"gpt-3\.5-turbo(-0125)?|gpt-4(-0613|-1106-preview)?|gpt-4-turbo.*"
     r"|gpt-4\.1-nano.*|gpt-4o-2024-05-13|o1(-2024-12-17)?|o1-pro.*|o3-mini.*"
     r"|o4-mini(-2025-04-16)?", "2026-10-23"),
    # Gemini, ai.google.dev/gemini-api/docs/deprecations ("Once a model is 'shutdown', it
    # is completely turned off, and the endpoint is no longer available"). gemini-2.5-pro
    # and -flash are left served: their shutdown date differs between sources
    # (2026-10-16, 2026-12-01).
    # 1.0 and 1.5 (the last of them, 1.5, on 2025-09-24)
    ("gemini", r"gemini-(1\.[05]|pro|flash-1\.5|pro-1\.5).*", "2025-09-24"),
    ("gemini", r"gemini-2\.5-pro-preview-.*", "2025-12-02"),
    ("gemini", r"gemini-3-pro-preview", "2026-03-09"),
    ("gemini", r"gemini-2\.0-flash.*", "2026-06-01"),
    ("gemini", r"gemini-3(\.1)?-(pro|flash)-image-preview", "2026-06-25"),
    ("gemini", r"gemini-2\.5-flash-image.*", "2026-10-02"),
)  # fmt: skip
"""Models each provider no longer serves (shut down), with the date; :func:`serves` refuses
them as the provider refuses an unknown model (they are in genai-prices' lists, which keep
retired models for pricing old usage)."""


SCHEDULED: Final[tuple[tuple[str, str, str, str | None], ...]] = (
    # (provider, model pattern (re.fullmatch), shutdown date, the model answering instead
    # from that date (None: refused)): announced shutdowns of models still served on
    # 2026-11-30. From the date on (:func:`today`) they are refused as retired, or routed.
    # Gemini 2.5 Pro / Flash: Google's page as read on 2026-11-05 / 2026-11-10
    # (samarthputhraya/Modelpin release 0.5.2; dev.to/aideprecations, "What to Do Before
    # Gemini 2.5 Pro and 2.5 Flash Are Retired on December 1, 2026"): shut down on
    # 2026-12-01, "requests to gemini-2.5-pro are automatically routed to gemini-3.8-flash
    # and requests to gemini-2.5-flash to gemini-3.5-flash-lite, billed at the new model's
    # rates"; gemini-2.5-flash-lite "is not deprecated" (earlier reads said 2026-06-17, then
    # 2026-10-16). ai.google.dev/gemini-api/docs/deprecations.
    ("gemini", r"gemini-2\.5-pro", "2026-12-01", "gemini-3.8-flash"),
    ("gemini", r"gemini-2\.5-flash", "2026-12-01", "gemini-3.5-flash-lite"),
    ("gemini", r"gemini-3\.1-flash-lite", "2027-05-07", None),  # the page: "May 7, 2027"
    # OpenAI: openai 3.57 types/shared/chat_model.py, "Deprecated values" ("Announced
    # shutdown date: 2026-12-11" for gpt-5, -mini, -nano and o3 with their snapshots;
    # "2027-01-14" for gpt-4.1, gpt-4.1-mini, gpt-4o, gpt-4o-mini and theirs; "2027-04-01"
    # for gpt-5.1 and gpt-5.4-nano).
    ("openai", r"gpt-5(-mini|-nano)?(-2025-08-07)?|o3(-2025-04-16)?", "2026-12-11", None),
    ("openai", r"gpt-4\.1(-mini)?(-2025-04-14)?|gpt-4o(-2024-11-20|-2024-08-06)?"
     r"|gpt-4o-mini(-2024-07-18)?", "2027-01-14", None),
    ("openai", r"gpt-5\.1(-2025-11-13)?|gpt-5\.4-nano(-2026-03-17)?", "2027-04-01", None),
    # Anthropic: anthropic 2.14 _data/deprecated_models.py ("claude-opus-4-5": "January
    # 22nd, 2027", alias and -20251101).
    ("anthropic", r"claude-opus-4-5(-20251101)?", "2027-01-22", None),
)  # fmt: skip
"""Announced shutdowns (:func:`retired` once the date is reached, :func:`routed`)."""

TODAY_VAR: Final = "BATCHATA_DF_TODAY"
"""Set (``YYYY-MM-DD``) in the emulator's environment, the date it reads :data:`SCHEDULED`
at (the ``today`` setting's default); unset, the real UTC date. The client reads the same
variable (``batchata_df.models.TODAY_VAR``): the test suite pins both."""

_TODAY: list[str | None] = [os.environ.get(TODAY_VAR, "").strip() or None]


def today(value: str | bool | None = False) -> dt.date:
    """The date :data:`SCHEDULED` is read at; ``value`` pins it (``None``: the real date).

    The emulator's ``today`` setting. ``False`` (the default) only reads it.

    Examples
    --------
    >>> before = _TODAY[0]
    >>> today("2026-12-02")
    datetime.date(2026, 12, 2)
    >>> _ = today(before)
    """
    if value is not False:
        if value is not None:
            dt.date.fromisoformat(str(value))  # ValueError for a non-date
        _TODAY[0] = None if value is None else str(value)
    pinned = _TODAY[0]
    return dt.date.fromisoformat(pinned) if pinned else dt.datetime.now(dt.UTC).date()


@lru_cache(maxsize=1024)  # asked once per request line: a million-line batch asks often
def _scheduled(provider: str, name: str) -> tuple[str, str | None] | None:
    for who, pattern, date, successor in SCHEDULED:
        if who == provider and re.fullmatch(pattern, name):
            return date, successor
    return None


def routed(
    provider: str, model: str, on: dt.date | None = None, serve_retired: bool | None = None
) -> str:
    """The model that answers for ``model``: its successor once the provider routes it.

    Gemini answers the shut-down 2.5 Pro and Flash with gemini-3.8-flash and
    gemini-3.5-flash-lite (:data:`SCHEDULED`); ``models/`` is kept. ``on`` and
    ``serve_retired`` ask as of that date and setting (default: :func:`today` and
    :func:`serve_retired`'s): ``EmulatorCore.routed_since`` replays past settings.

    Examples
    --------
    >>> before = _TODAY[0]
    >>> _ = today("2026-12-01"); routed("gemini", "models/gemini-2.5-flash")
    'models/gemini-3.5-flash-lite'
    >>> _ = today("2026-11-30"); routed("gemini", "gemini-2.5-flash")
    'gemini-2.5-flash'
    >>> _ = today(before)
    """
    prefix = "models/" if provider == "gemini" and model.startswith("models/") else ""
    found = _scheduled(provider, model.removeprefix(prefix))
    keep = _SERVING_RETIRED[0] if serve_retired is None else serve_retired
    if found is None or found[1] is None or keep:
        return model
    if dt.date.fromisoformat(found[0]) > (today() if on is None else on):
        return model
    return prefix + found[1]


def successor(provider: str, model: str) -> str | None:
    """The model the provider routes ``model`` to from its shutdown date, whatever the date.

    Examples
    --------
    >>> successor("gemini", "models/gemini-2.5-pro"), successor("openai", "gpt-5-nano")
    ('gemini-3.8-flash', None)
    """
    name = model.removeprefix("models/") if provider == "gemini" else model
    found = _scheduled(provider, name)
    return None if found is None else found[1]


SERVE_RETIRED_VAR: Final = "BATCHATA_EMULATOR_SERVE_RETIRED"
"""Set (non-empty) in the emulator's environment, it starts serving retired models (the
``serve_retired`` setting's default): for comparing with an old client that knows only
retired names (``benchmarks/bench_overhead.py``'s seed library)."""

_SERVING_RETIRED: list[bool] = [bool(os.environ.get(SERVE_RETIRED_VAR))]


def serve_retired(flag: bool | None = None) -> bool:
    """Whether :func:`serves` serves retired models; ``flag`` sets it.

    The emulator's ``serve_retired`` setting: a gateway, or a partner cloud, that still
    serves them. Off unless asked: the providers refuse them.
    """
    if flag is not None:
        _SERVING_RETIRED[0] = flag
    return _SERVING_RETIRED[0]


def retired(provider: str, model: str, on: dt.date | None = None) -> str | None:
    """The shutdown date of a retired ``model`` (``None`` while it is served).

    Retired: in :data:`RETIRED`, or in :data:`SCHEDULED` (not routed) with its date on or
    before ``on`` (default :func:`today`). An OpenAI fine-tune
    (``ft:<base>:<org>:<suffix>:<id>``) is retired with its base model (:func:`serves` asks
    with the fine-tune's name): OpenAI's deprecations page (the fine-tuning wind-down
    posted 2026-05-07) says inference on fine-tuned models stays available "until the
    underlying base models are deprecated" (as reported by techscurrent.com 2026/07,
    "OpenAI fine-tuning cutoff", and aihola.com "openai-ends-fine-tuning-2027"), and a
    fine-tune of a shut-down base is answered 404 ``model_not_found`` "The model
    `ft:gpt-3.5-turbo-0613:langchain::7qqjIosa` does not exist or you do not have access to
    it." (langchain-ai/twitter-finetune issue 2, after gpt-3.5-turbo-0613's shutdown). The
    client's ``models.retirement`` refuses them so too.

    Examples
    --------
    >>> retired("anthropic", "claude-3-opus-20240229"), retired("openai", "gpt-4-32k")
    ('2026-01-05', '2025-06-06')
    >>> retired("gemini", "models/gemini-1.0-pro"), retired("openai", "gpt-5.4-mini")
    ('2025-09-24', None)
    >>> retired("openai", "ft:gpt-3.5-turbo-0613:acme::abc123")
    '2024-09-13'
    """
    name = model.removeprefix("models/") if provider == "gemini" else model
    if provider == "openai" and name.startswith("ft:") and name.count(":") >= 2:
        name = name.split(":")[1]
    for who, pattern, date in RETIRED:
        if who == provider and re.fullmatch(pattern, name):
            return date
    found = _scheduled(provider, name)
    day = today() if on is None else on
    if found is not None and found[1] is None and dt.date.fromisoformat(found[0]) <= day:
        return found[0]  # shut down (a routed model is answered: :func:`routed`)
    return None


SERVED_EXTRA: Final[dict[str, frozenset[str]]] = {
    "openai": frozenset({"gpt-6-terra"}),
    "anthropic": frozenset(),
    "gemini": frozenset(),
}
"""Names served although genai-prices lists no price for them: the suite's deliberate
"new model without a published price" (the CLI's and the cost cap's unknown-price paths
need a model the provider answers and nobody prices)."""

_GENAI_PROVIDER: Final = {"openai": "openai", "anthropic": "anthropic", "gemini": "google"}


def serves(
    provider: str, model: str, on: dt.date | None = None, serve_retired: bool | None = None
) -> bool:
    """Whether ``provider``'s API serves ``model`` (a batch of it is accepted).

    ``on`` and ``serve_retired`` ask as of that date and setting (default: :func:`today`
    and :func:`serve_retired`'s): ``EmulatorCore.gone_since`` replays past settings.

    A name matches when genai-prices lists it under the provider (its own match rules:
    dated snapshots such as ``gpt-4.1-mini-2025-04-14`` or
    ``claude-haiku-4-5-20251001`` match their model). OpenAI fine-tunes
    (``ft:<base>:<org>::<id>``) are served when their base model is. Gemini takes
    ``models/`` names and the caller's own ``tunedModels/``; genai-prices' ``google``
    list also prices Claude on Vertex AI, which the Gemini API does not serve.

    Examples
    --------
    >>> serves("openai", "gpt-5.4-mini"), serves("anthropic", "gpt-5.4-mini")
    (True, False)
    >>> serves("gemini", "models/gemini-3.5-flash"), serves("gemini", "claude-haiku-4-5")
    (True, False)
    >>> serves("openai", "ft:gpt-5.4-mini-2026-03-17:acme::abc123")
    True
    """
    if model == answers.UNKNOWN_MODEL or not model.strip():
        return False
    if model in SERVED_EXTRA.get(provider, frozenset()):
        return True
    name = model
    if provider == "openai" and name.startswith("ft:"):
        name = name.split(":")[1] if name.count(":") >= 2 else ""
    if provider == "gemini":
        if name.startswith("tunedModels/"):
            return True
        name = name.removeprefix("models/")
        if name.lower().startswith("claude"):
            return False
    if not name:
        return False
    keep = _SERVING_RETIRED[0] if serve_retired is None else serve_retired
    # ``model`` as given: retired() itself takes a fine-tune to its base model.
    if not keep and retired(provider, model, on) is not None:
        return False
    return _genai_lists(provider, name)


@lru_cache(maxsize=1024)
def _genai_lists(provider: str, name: str) -> bool:
    from genai_prices import data_snapshot

    try:
        data_snapshot.get_snapshot().find_provider_model(
            name, None, _GENAI_PROVIDER.get(provider, provider), None
        )
    except LookupError:
        return False
    return True
