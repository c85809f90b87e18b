"""Gemini thinking that no budget bounds: dynamic thinking (2.5) and levels (3.x, 4).

Thinking counts inside ``maxOutputTokens`` (googleapis/python-genai#811 for 2.5, #2062
for 3 Flash). A fixed ``thinkingBudget`` that ``max_tokens`` cannot hold is refused before
sending (tests/test_gemini_thinking_budget.py). Without one, running out is likely but not
certain, so the client warns before anything is sent (:class:`ThinkingRoomWarning`):

* Gemini 2.5 Flash / Pro without ``reasoning_effort`` think dynamically, "Auto (up to 8,192
  tokens)" (Vertex AI thinking guide, quoted in juspay/neurolink#1707; 2.5 Flash answered
  ``thoughtsTokenCount: 8192`` at ``maxOutputTokens: 8192``, discuss.google.dev #189244);
* Gemini 3.x levels name no token count (gemini-3.7-flash at HIGH filled 4,096,
  NousResearch/hermes-agent#87209).

It warns until ``max_tokens`` holds the thinking plus the answer's 4,096
(``DEFAULT_MAX_TOKENS``): 8,193 on 2.5 left one token to answer in. Every fix the message
names (in Python, or in the CLI's flags) is enough alone as worded: checked over every
Gemini model that thinks, each effort and a grid of ``max_tokens``.

The emulator thinks its small fixed amounts on ordinary prompts and as long as the model
may on a prompt marked ``[[emulator:think]]`` (8,192 for 2.5's dynamic thinking, until
``maxOutputTokens`` at a level): the rows the warning is about.

And the emulator is as strict as Google per generation: a level and a budget together are
refused with the live wording ("thinking_budget and thinking_level are not supported
together.", QwenLM/qwen-code#9094), a level on 2.5 and a level the model does not list
(``XHIGH`` is in google-genai 3.6.1's ``ThinkingLevel`` but no model's list) are refused,
and a budget alone is taken by 3.x (ai.google.dev thinking guide: "accepted for backwards
compatibility"; measured on gemini-3.5-flash, dhyansraj/mcp-mesh#1346).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from test_gemini_thinking_budget import sent_configs

from batchata_df import ParamError, ThinkingRoomWarning, batch_llm
from batchata_df.emulator.model_rules import GEMINI_DYNAMIC_CAP, THOUGHT_TOKENS, gemini_rules
from batchata_df.models import (
    DEFAULT_MAX_TOKENS,
    FAMILIES,
    GEMINI_DYNAMIC_THINKING,
    check_model_params,
    effective_params,
    thinking_room_warning,
)

THINK = "[[emulator:think]]"
EXE = Path(sys.executable).with_name("batchata-df")
REPO = Path(__file__).resolve().parents[1]


def run(model: str, tmp_path: Path, params: dict[str, Any], *, prompt: str = "{text}",
        name: str = "s") -> pl.DataFrame:
    return pl.DataFrame({"text": ["row 0", "row 1", "row 2"]}).pipe(
        batch_llm, model=model, prompt=prompt, state=tmp_path / name, params=params
    )


def sdk_client(emu: Any) -> Any:
    from google import genai
    from google.genai import types

    return genai.Client(
        api_key="k",
        http_options=types.HttpOptions(base_url=emu.gemini_base_url, api_version="v1beta"),
    )


def one(emu: Any, model: str, thinking: dict[str, Any] | None, *,
        max_tokens: int | None = 4096, prompt: str = "hi") -> Any:
    """One inlined request through google-genai's batches API; its inlined response."""
    config: dict[str, Any] = {} if max_tokens is None else {"max_output_tokens": max_tokens}
    if thinking is not None:
        config["thinking_config"] = thinking
    client = sdk_client(emu)
    job = client.batches.create(model=model, src=[{"contents": prompt, "config": config}])
    job = client.batches.get(name=str(job.name))
    return job.dest.inlined_responses[0]


# -- Gemini 2.5: dynamic thinking -----------------------------------------------------------


def test_dynamic_thinking_under_a_small_max_tokens_warns_before_anything_is_sent(emu, tmp_path):
    emu.configure(log_bodies=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ThinkingRoomWarning)
        with pytest.raises(ThinkingRoomWarning) as info:
            run("gemini-2.5-flash", tmp_path, {"max_tokens": 1500})
    assert str(info.value) == (
        "model 'gemini-2.5-flash' (Gemini 2.5 Flash) thinks dynamically without "
        "reasoning_effort (no thinkingBudget is sent), up to 8,192 tokens, inside "
        "max_tokens=1500: a row whose thinking takes all of it is billed for 1,500 output "
        "tokens and answers nothing; pass params={'reasoning_effort': 'minimal'} (a fixed "
        "512-token budget), params={'reasoning_effort': 'none'} (no thinking), or "
        "max_tokens=12288 or more (8,192 for thinking and 4,096 for the answer)"
    )
    assert emu.log() == []  # raised (as an error here) before any request
    assert emu.billing() == []


def test_dynamic_thinking_is_sent_as_asked_and_the_rows_that_think_long_are_billed_empty(
    emu, tmp_path
):
    """A warning, not a refusal: the request goes as asked (no thinkingConfig at all), the
    rows that think little are answered, and those that think to the cap are billed for
    all of max_tokens with no answer, which is what the warning said."""
    emu.configure(log_bodies=True)
    with pytest.warns(ThinkingRoomWarning, match="up to 8,192 tokens"):
        easy = run("gemini-2.5-flash", tmp_path, {"max_tokens": 1500})
    assert [c.get("thinkingConfig") for c in sent_configs(emu)] == [None] * 3
    assert [c["maxOutputTokens"] for c in sent_configs(emu)] == [1500] * 3
    assert easy["_status"].to_list() == ["completed"] * 3
    assert easy["_reasoning_tokens"].to_list() == [THOUGHT_TOKENS["medium"]] * 3
    assert len(emu.billing()) == 3

    emu.reset()
    with pytest.warns(ThinkingRoomWarning):
        hard = run("gemini-2.5-flash", tmp_path, {"max_tokens": 1500},
                   prompt="{text} " + THINK, name="hard")
    assert hard["_status"].to_list() == ["failed"] * 3
    assert hard["_error"].str.starts_with("truncated: thinking used 1500 of max_tokens=1500").all()
    assert hard["_output_tokens"].to_list() == [1500] * 3
    assert hard["_reasoning_tokens"].to_list() == [1500] * 3
    assert (hard["_cost_usd"] > 0).all()
    assert len(emu.billing()) == 3


def test_a_streamed_run_warns_once_at_the_callers_line(emu, tmp_path):
    """Chunks of a streamed run share one check before anything is sent: one warning,
    pointing at the line that called batch_llm (errors.warn_user), not at our code."""
    lf = pl.DataFrame({"text": [f"row {i}" for i in range(6)]}).lazy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = batch_llm(lf, model="gemini-2.5-flash", prompt="{text}", state=tmp_path / "s",
                        sink=tmp_path / "out.parquet", chunk_rows=2,
                        params={"max_tokens": 1500}).collect()  # fmt: skip
    room = [w for w in caught if issubclass(w.category, ThinkingRoomWarning)]
    assert len(room) == 1
    assert room[0].filename == __file__
    assert out["_status"].to_list() == ["completed"] * 6
    assert len(emu.billing()) == 6


def test_above_the_dynamic_cap_and_the_answer_room_there_is_no_warning_and_it_fits(
    emu, tmp_path
):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ThinkingRoomWarning)
        out = run("gemini-2.5-flash", tmp_path,
                  {"max_tokens": GEMINI_DYNAMIC_THINKING + DEFAULT_MAX_TOKENS},
                  prompt="{text} " + THINK)
    assert out["_status"].to_list() == ["completed"] * 3
    assert out["_reasoning_tokens"].to_list() == [GEMINI_DYNAMIC_CAP] * 3
    assert len(emu.billing()) == 3


def test_the_advice_works_a_fixed_budget_bounds_the_thinking(emu, tmp_path):
    """params={'reasoning_effort': 'minimal'}, as the warning says: thinkingBudget 512 is
    sent, no warning, and even a prompt that thinks as long as it may answers."""
    emu.configure(log_bodies=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ThinkingRoomWarning)
        out = run("gemini-2.5-flash", tmp_path,
                  {"max_tokens": 1500, "reasoning_effort": "minimal"}, prompt="{text} " + THINK)
    assert [c["thinkingConfig"] for c in sent_configs(emu)] == [{"thinking_budget": 512}] * 3
    assert out["_status"].to_list() == ["completed"] * 3
    assert out["_reasoning_tokens"].to_list() == [512] * 3
    assert len(emu.billing()) == 3


@pytest.mark.parametrize(
    ("model", "max_tokens", "advice"),
    [
        # 2.5 Pro cannot turn thinking off, and no budget fits in half of 500.
        ("gemini-2.5-pro", 500, "pass max_tokens=12288 or more (8,192 for thinking and 4,096 "
                                "for the answer)"),
        ("gemini-2.5-pro", 3000, "pass params={'reasoning_effort': 'low'} (a fixed 1,024-token "
                                 "budget), or max_tokens=12288 or more (8,192 for thinking and "
                                 "4,096 for the answer)"),
        ("gemini-2.5-flash", 300, "pass params={'reasoning_effort': 'none'} (no thinking), or "
                                  "max_tokens=12288 or more (8,192 for thinking and 4,096 for "
                                  "the answer)"),
        # Above the cap, no room to answer: the largest budget that leaves half to answer.
        ("gemini-2.5-flash", 8193, "pass params={'reasoning_effort': 'low'} (a fixed 1,024-"
                                   "token budget), params={'reasoning_effort': 'none'} (no "
                                   "thinking), or max_tokens=12288 or more (8,192 for thinking "
                                   "and 4,096 for the answer)"),
    ],
)  # fmt: skip
def test_the_advice_names_only_what_the_model_takes(model, max_tokens, advice):
    message = thinking_room_warning("gemini", model, {"max_tokens": max_tokens})
    assert message is not None
    assert message.endswith(advice)


@pytest.mark.parametrize(
    "params",
    [
        {"max_tokens": 12_288},  # the dynamic cap plus the answer's 4,096
        {"max_tokens": 600, "reasoning_effort": "minimal"},  # a fixed budget, checked instead
        {"max_tokens": 50, "reasoning_effort": "none"},  # no thinking
        {},  # the default max_tokens leaves room
    ],
)
def test_no_warning_where_a_budget_or_the_limit_bounds_the_thinking(params):
    assert thinking_room_warning("gemini", "gemini-2.5-flash", params) is None
    # Flash-Lite does not think unless asked (tests/test_models.py).
    assert thinking_room_warning("gemini", "gemini-2.5-flash-lite", {"max_tokens": 50}) is None


# -- Gemini 3.x and 4: levels ---------------------------------------------------------------


def test_a_level_under_a_small_max_tokens_warns_and_is_sent_as_a_level(emu, tmp_path):
    emu.configure(log_bodies=True)
    with pytest.warns(ThinkingRoomWarning) as caught:
        out = run("gemini-3.5-flash", tmp_path, {"max_tokens": 500, "reasoning_effort": "high"},
                  prompt="{text} " + THINK)
    assert [str(w.message) for w in caught] == [
        "model 'gemini-3.5-flash' (Gemini 3.5, 3.6 Flash) thinks at level HIGH (a level names "
        "no token count; this library's default max_tokens at 'high' leaves 28,672 tokens "
        "for it), inside max_tokens=500: a row whose thinking takes all of it is billed for "
        "500 output tokens and answers nothing; pass params={'reasoning_effort': 'minimal'} "
        "(the least thinking it takes), or max_tokens=32768 or more (28,672 for thinking and "
        "4,096 for the answer)"
    ]
    assert [c["thinkingConfig"] for c in sent_configs(emu)] == [{"thinking_level": "HIGH"}] * 3
    assert out["_status"].to_list() == ["failed"] * 3
    assert out["_error"].str.starts_with("truncated: thinking used 500 of max_tokens=500").all()
    assert out["_output_tokens"].to_list() == [500] * 3
    assert len(emu.billing()) == 3


def test_the_default_level_is_named_as_the_default(emu, tmp_path):
    """No reasoning_effort: no thinkingConfig is sent and the model thinks at its default
    level (3.8 Flash: MEDIUM, Vertex AI's table of thinking_level values)."""
    emu.configure(log_bodies=True)
    with pytest.warns(ThinkingRoomWarning) as caught:
        out = run("gemini-3.8-flash", tmp_path, {"max_tokens": 2000})
    (message,) = [str(w.message) for w in caught]
    assert "thinks at level MEDIUM, its default (a level names no token count; this " \
        "library's default max_tokens at 'medium' leaves 12,288 tokens for it)" in message
    assert message.endswith(
        "pass params={'reasoning_effort': 'low'} and max_tokens=8192 or more (its lowest "
        "level), or max_tokens=16384 or more (12,288 for thinking and 4,096 for the answer)"
    )
    assert [c.get("thinkingConfig") for c in sent_configs(emu)] == [None] * 3
    assert out["_status"].to_list() == ["completed"] * 3
    assert out["_reasoning_tokens"].to_list() == [THOUGHT_TOKENS["medium"]] * 3


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("gemini-3.5-flash-lite", {"max_tokens": 200}),  # MINIMAL: close to no thinking
        ("gemini-3.5-flash", {"max_tokens": 300, "reasoning_effort": "minimal"}),
        ("gemini-3.7-flash", {"max_tokens": 8192, "reasoning_effort": "low"}),
        ("gemini-3.1-pro-preview", {"max_tokens": 32_768}),
        ("gemini-3.1-pro-preview", {}),
    ],
)
def test_no_warning_at_minimal_or_above_the_room_the_level_is_given(model, params):
    assert thinking_room_warning("gemini", model, params) is None


def test_at_the_lowest_level_only_max_tokens_is_advised():
    message = thinking_room_warning(
        "gemini", "gemini-3.7-flash", {"max_tokens": 4096, "reasoning_effort": "low"}
    )
    assert message is not None
    assert message.endswith("and answers nothing; pass max_tokens=8192 or more (4,096 for "
                            "thinking and 4,096 for the answer)")


def test_the_default_max_tokens_never_warns():
    """Every family, every effort it takes and its default: the default max_tokens leaves
    the room the warning asks for."""
    for family in FAMILIES:
        if family.provider != "gemini":
            continue
        for effort in (None, *family.efforts):
            params = {} if effort is None else {"reasoning_effort": effort}
            full = effective_params("gemini", family.examples[0], params)
            assert thinking_room_warning("gemini", family.examples[0], full) is None, (
                family.name, effort)


def test_client_and_emulator_agree_on_each_families_default_level_and_levels():
    """Written apart on purpose (emulator/model_rules.py); here they must agree, so a
    default the client gets wrong shows up (3.8 Flash was 'high' on both sides before
    Vertex AI's table said MEDIUM)."""
    for family in FAMILIES:
        if family.provider != "gemini" or family.thinking != "gemini_level":
            continue
        for model in family.examples:
            rules = gemini_rules(model)
            assert rules.default_effort == family.default_effort, model
            assert rules.efforts == {e.upper() for e in family.efforts}, model


def test_the_cli_prints_the_warning_once_on_stderr(emu, tmp_path):
    """One ``batchata-df: warning: ...`` line for the whole command, as the shutdown notice
    (not once per chunk), and the run goes on: a dry run here, against Google itself (no
    base URL, no key: nothing could be sent)."""
    pl.DataFrame({"text": [f"row {i}" for i in range(6)]}).write_parquet(tmp_path / "in.parquet")
    env = {k: v for k, v in {**os.environ, **emu.env(), "PYTHONPATH": str(REPO)}.items()
           if k != "GOOGLE_GEMINI_BASE_URL"}
    dry = subprocess.run(
        [str(EXE), "run", "in.parquet", "--model", "gemini-3.5-flash", "--prompt", "{text}",
         "--chunk-rows", "2", "--max-tokens", "500", "--dry-run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    notes = [x for x in dry.stderr.splitlines() if "warning:" in x]
    assert notes == [
        "batchata-df: warning: "
        + str(thinking_room_warning("gemini", "gemini-3.5-flash", {"max_tokens": 500}, cli=True))
    ]
    assert "thinks at level MEDIUM, its default" in notes[0]


# -- the emulator, as strict as Google, through google-genai -----------------------------


def test_a_budget_and_a_level_together_are_refused_with_googles_words(emu):
    answer = one(emu, "gemini-3.5-flash", {"thinking_budget": 512, "thinking_level": "LOW"})
    assert answer.response is None
    assert answer.error.code == 400
    assert answer.error.message == (
        "thinking_budget and thinking_level are not supported together."
    )


def test_levels_google_does_not_list_are_refused(emu):
    assert one(emu, "gemini-2.5-flash", {"thinking_level": "LOW"}).error.message == (
        "Thinking level is not supported for this model."
    )
    # XHIGH is in google-genai 3.6.1's ThinkingLevel, and in no model's list of levels.
    for model in ("gemini-3.5-flash", "gemini-3.1-pro-preview", "gemini-3.8-flash",
                  "gemini-4-argon"):
        refused = one(emu, model, {"thinking_level": "XHIGH"}).error
        assert refused.message == (
            "Thinking level XHIGH is not supported for this model. Please retry with other "
            "thinking level."
        ), model
    assert "MINIMAL" in one(emu, "gemini-3.8-flash", {"thinking_level": "MINIMAL"}).error.message


def test_a_budget_alone_is_taken_and_honoured_by_gemini_3(emu):
    """ai.google.dev thinking guide: thinkingBudget is "accepted for backwards
    compatibility" on Gemini 3; measured on gemini-3.5-flash (dhyansraj/mcp-mesh#1346):
    budget 512 thinks less than the default, 0 not at all, -1 as the default."""
    fixed = one(emu, "gemini-3.5-flash", {"thinking_budget": 512}, prompt="hi " + THINK)
    assert fixed.error is None
    assert fixed.response.usage_metadata.thoughts_token_count == 512
    off = one(emu, "gemini-3.5-flash", {"thinking_budget": 0}).response
    assert not off.usage_metadata.thoughts_token_count
    dynamic = one(emu, "gemini-3.5-flash", {"thinking_budget": -1}).response
    assert dynamic.usage_metadata.thoughts_token_count == THOUGHT_TOKENS["medium"]
    # Gemini 3 Pro cannot turn thinking off ("You cannot disable thinking for Gemini 3 Pro").
    assert one(emu, "gemini-3.1-pro-preview", {"thinking_budget": 0}).error.message == (
        "Budget 0 is invalid. This model only works in thinking mode."
    )


def test_an_unspecified_level_is_the_models_default(emu):
    answer = one(emu, "gemini-3.8-flash", {"thinking_level": "THINKING_LEVEL_UNSPECIFIED"})
    assert answer.error is None
    assert answer.response.usage_metadata.thoughts_token_count == THOUGHT_TOKENS["medium"]


def test_thinking_to_the_cap_is_spent_inside_max_output_tokens(emu):
    """2.5's dynamic thinking stops at 8,192; a level only at maxOutputTokens. What is
    thought is in thoughtsTokenCount, and a cut answer is MAX_TOKENS with no text."""
    dynamic = one(emu, "gemini-2.5-pro", None, max_tokens=20_000, prompt="hi " + THINK).response
    assert dynamic.usage_metadata.thoughts_token_count == GEMINI_DYNAMIC_CAP
    assert dynamic.candidates[0].finish_reason == "STOP" and dynamic.text
    level = one(emu, "gemini-3.1-pro-preview", {"thinking_level": "LOW"}, max_tokens=20_000,
                prompt="hi " + THINK).response
    assert level.usage_metadata.thoughts_token_count == 20_000
    assert level.candidates[0].finish_reason == "MAX_TOKENS"
    assert not level.text
    assert level.usage_metadata.candidates_token_count == 0
    # No maxOutputTokens: the model's own ceiling (65,536) stops it.
    unbounded = one(emu, "gemini-3.5-flash", None, max_tokens=None, prompt="hi " + THINK)
    assert unbounded.response.usage_metadata.thoughts_token_count == 65_536
    assert unbounded.response.candidates[0].finish_reason == "MAX_TOKENS"


# -- the room the answer needs, and advice that holds when followed ------------------------


def test_dynamic_thinking_warns_until_max_tokens_leaves_the_answer_room(emu, tmp_path):
    """max_tokens=8193 is above the 8,192 dynamic cap but leaves one token to answer in: a
    row that thinks to the cap fails and is billed. It warns, and the max_tokens the
    warning names (the cap plus DEFAULT_MAX_TOKENS for the answer) does not, and answers."""
    with pytest.warns(ThinkingRoomWarning) as caught:
        cut = run("gemini-2.5-flash", tmp_path, {"max_tokens": 8193}, prompt="{text} " + THINK)
    (message,) = [str(w.message) for w in caught]
    assert message.endswith("or max_tokens=12288 or more (8,192 for thinking and 4,096 for "
                            "the answer)")
    assert cut["_status"].to_list() == ["failed"] * 3
    assert cut["_error"].str.starts_with("truncated: thinking used 8192 of max_tokens=8193").all()
    assert len(emu.billing()) == 3

    emu.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ThinkingRoomWarning)
        out = run("gemini-2.5-flash", tmp_path, {"max_tokens": 12288},
                  prompt="{text} " + THINK, name="fits")
    assert out["_status"].to_list() == ["completed"] * 3
    assert out["_reasoning_tokens"].to_list() == [GEMINI_DYNAMIC_CAP] * 3
    assert (out["_output_tokens"] > GEMINI_DYNAMIC_CAP).all()  # an answer after the thinking
    assert len(emu.billing()) == 3


PY_FIX = re.compile(r",\s(?:or\s)?(?=params=|max_tokens=)")
CLI_FIX = re.compile(r",\s(?:or\s)?(?=--)")


def parsed_fixes(message: str, *, cli: bool) -> list[dict[str, Any]]:
    """Each fix the message offers, as the params it sets (read from the text, as a user
    would: ``params={...}`` / ``max_tokens=N`` or ``--param NAME=VALUE`` / ``--max-tokens
    N``)."""
    advice = message.split("; pass ", 1)[1]
    fixes = []
    for part in (CLI_FIX if cli else PY_FIX).split(advice):
        fix: dict[str, Any] = {}
        if cli:
            for name, value in re.findall(r"--param (\w+)=(\w+)", part):
                fix[name] = value
            found = re.findall(r"--max-tokens (\d+)", part)
        else:
            for literal in re.findall(r"params=(\{[^}]*\})", part):
                fix.update(ast.literal_eval(literal))
            found = re.findall(r"max_tokens=(\d+)", part)
        if found:
            fix["max_tokens"] = int(found[0])
        assert fix, part
        fixes.append(fix)
    return fixes


GRID = (1, 100, 300, 400, 500, 1000, 1500, 2048, 3000, 4096, 4097, 8192, 8193, 12287,
        12288, 16383, 16384, 20000, 28672, 28673, 32767)


def test_every_fix_the_warning_offers_stops_the_warning_when_applied_alone():
    """Every Gemini model that thinks, every effort it takes and its default, a grid of
    max_tokens: each fix the message names, in Python and in the CLI's words, applied
    alone as worded, neither warns again nor is refused; one token below the max_tokens it
    names still warns (the bar is the thinking plus the answer's 4,096, not the thinking)."""
    warned = 0
    for family in FAMILIES:
        if family.provider != "gemini" or family.thinking == "none":
            continue
        for model in family.examples:
            for effort in (None, *family.efforts):
                for max_tokens in GRID:
                    params: dict[str, Any] = {"max_tokens": max_tokens}
                    if effort is not None:
                        params["reasoning_effort"] = effort
                    try:
                        check_model_params("gemini", model, params)
                    except ParamError:
                        continue  # a fixed budget max_tokens cannot hold: refused instead
                    message = thinking_room_warning("gemini", model, params)
                    if message is None:
                        continue
                    warned += 1
                    cli = thinking_room_warning("gemini", model, params, cli=True)
                    assert cli is not None
                    assert "params=" not in cli and "--param" not in message
                    fixes = parsed_fixes(message, cli=False)
                    assert fixes == parsed_fixes(cli, cli=True), message
                    for fix in fixes:
                        fixed = {**params, **fix}
                        check_model_params("gemini", model, fixed)
                        assert thinking_room_warning("gemini", model, fixed) is None, (
                            message, fix)
                    # The max_tokens named is exactly where the warning stops.
                    (least,) = [f["max_tokens"] for f in fixes if list(f) == ["max_tokens"]]
                    below = {**params, "max_tokens": least - 1}
                    assert thinking_room_warning("gemini", model, below) is not None, message
    assert warned > 200


@pytest.mark.parametrize(
    ("model", "params", "advice"),
    [
        # 'low' alone at 400 still warns (its room is 8,192): the level and the max_tokens.
        ("gemini-3.1-pro-preview", {"max_tokens": 400, "reasoning_effort": "medium"},
         "pass params={'reasoning_effort': 'low'} and max_tokens=8192 or more (its lowest "
         "level), or max_tokens=16384 or more (12,288 for thinking and 4,096 for the answer)"),
        # At 20,000 'medium' alone is enough where 'high' is not.
        ("gemini-3.1-pro-preview", {"max_tokens": 20_000},
         "pass params={'reasoning_effort': 'medium'} (a lower level), or max_tokens=32768 or "
         "more (28,672 for thinking and 4,096 for the answer)"),
    ],
)  # fmt: skip
def test_a_lower_level_that_is_not_enough_alone_comes_with_its_max_tokens(model, params, advice):
    message = thinking_room_warning("gemini", model, params)
    assert message is not None
    assert message.endswith(advice)


def test_the_cli_names_its_own_flags_and_following_them_stops_the_warning(emu, tmp_path):
    """A CLI user gets ``--param reasoning_effort=...`` and ``--max-tokens N``, not Python;
    the command re-run with each fix as printed warns no more."""
    pl.DataFrame({"text": ["row 0"]}).write_parquet(tmp_path / "in.parquet")
    env = {k: v for k, v in {**os.environ, **emu.env(), "PYTHONPATH": str(REPO)}.items()
           if k != "GOOGLE_GEMINI_BASE_URL"}
    base = [str(EXE), "run", "in.parquet", "--model", "gemini-2.5-flash", "--prompt", "{text}",
            "--dry-run"]

    def notes(*extra: str) -> list[str]:
        done = subprocess.run([*base, *extra], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=240)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return [x for x in done.stderr.splitlines() if "warning:" in x]

    (line,) = notes("--max-tokens", "300")
    assert line.endswith(
        "pass --param reasoning_effort=none (no thinking), or --max-tokens 12288 or more "
        "(8,192 for thinking and 4,096 for the answer)"
    )
    assert "params=" not in line
    advice = line.split("; pass ", 1)[1]
    fixes = [part.split(" (")[0] for part in CLI_FIX.split(advice)]
    assert fixes == ["--param reasoning_effort=none", "--max-tokens 12288 or more"]
    assert notes("--max-tokens", "300", "--param", "reasoning_effort=none") == []
    assert notes("--max-tokens", "12288") == []
