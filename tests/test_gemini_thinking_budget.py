"""Gemini 2.5: a thinking budget the library picks that max_tokens cannot hold is refused.

Thinking tokens count inside ``maxOutputTokens`` on Gemini 2.5 and 3.x
(googleapis/python-genai#811, #626, #1405 for 2.5; #2062 for 3 Flash), and no source read
shows the API refusing a ``thinkingBudget`` above ``maxOutputTokens``: every row is billed
and ends ``MAX_TOKENS`` with no answer (the review of 2026-11-30: ``gemini-2.5-pro`` at
``reasoning_effort='high'`` (budget 24,576) with ``max_tokens=500``). The same mistake on
Claude was already a :class:`~batchata_df.errors.ParamError` before sending; now the Gemini
budget families take the same check (:func:`batchata_df.models.check_model_params`).
Dynamic thinking (no ``reasoning_effort`` on 2.5) and Gemini 3's ``thinkingLevel`` set no
fixed budget, so nothing is certain before sending: those run after a ThinkingRoomWarning
(tests/test_gemini_thinking_dynamic.py), and a starved row says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

import batchata_df.frame
from batchata_df import ParamError, ThinkingRoomWarning, batch_llm
from batchata_df.models import (
    FAMILIES,
    GEMINI_BUDGETS,
    check_model_params,
    effective_params,
)


def rows(n: int = 3) -> pl.DataFrame:
    return pl.DataFrame({"text": [f"row {i}" for i in range(n)]})


def run(model: str, tmp_path: Path, params: dict[str, Any]) -> pl.DataFrame:
    return rows().pipe(
        batch_llm, model=model, prompt="{text}", state=tmp_path / "s", params=params
    )


def sent_configs(emu: Any) -> list[dict[str, Any]]:
    """The ``generationConfig`` of every request the emulator received (inline batches).

    google-genai 3.6.1 copies ``thinking_config`` into an inlined request as it is
    (``batches.py`` ``_GenerateContentConfig_to_mldev``), so its fields arrive snake_case
    (``thinking_budget``); the API's JSON parser takes both spellings.
    """
    configs: list[dict[str, Any]] = []
    for entry in emu.log():
        body = entry.get("body")
        if entry["method"] != "POST" or not isinstance(body, dict) or "batch" not in body:
            continue
        for request in body["batch"]["inputConfig"]["requests"]["requests"]:
            configs.append(request["request"]["generationConfig"])
    return configs


# -- refused before anything is sent ------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "effort", "max_tokens", "budget", "fix"),
    [
        # The review's two cases.
        ("gemini-2.5-pro", "high", 500, 24_576,
         "raise max_tokens above 24576 or lower reasoning_effort"),
        ("gemini-2.5-flash", "minimal", 50, 512,
         "raise max_tokens above 512 or lower reasoning_effort"),
        # At the budget exactly: no token left for the answer.
        ("gemini-2.5-flash-lite", "low", 1024, 1024,
         "raise max_tokens above 1024 or lower reasoning_effort"),
        # 2.5 Pro cannot turn thinking off and 'minimal' is its least: only max_tokens helps.
        ("gemini-2.5-pro", "minimal", 300, 512,
         "raise max_tokens above 512 (the model takes no lower reasoning_effort)"),
    ],
)  # fmt: skip
def test_a_budget_max_tokens_cannot_hold_is_refused_with_nothing_billed(
    emu, tmp_path, model, effort, max_tokens, budget, fix
):
    emu.configure(log_bodies=True)
    with pytest.raises(ParamError) as info:
        run(model, tmp_path, {"reasoning_effort": effort, "max_tokens": max_tokens})
    assert info.value.model == model
    assert info.value.param == "max_tokens"
    assert str(info.value).startswith(f"model {model!r} (Gemini 2.5 ")
    assert str(info.value).endswith(
        f"needs max_tokens above its thinking budget ({budget:,} tokens at "
        f"reasoning_effort={effort!r}): params['max_tokens']; {fix}"
    )
    assert emu.billing() == []
    assert emu.log() == []


def test_the_message_has_the_shape_of_claudes(emu, tmp_path):
    """One code path for both providers: the same words, only the numbers differ."""
    messages = []
    for model in ("claude-haiku-4-5", "gemini-2.5-pro"):
        with pytest.raises(ParamError) as info:
            run(model, tmp_path, {"reasoning_effort": "high", "max_tokens": 500})
        messages.append(str(info.value).split(") ", 1)[1])
    assert messages == [
        "needs max_tokens above its thinking budget (16,384 tokens at "
        "reasoning_effort='high'): params['max_tokens']; raise max_tokens above 16384 or "
        "lower reasoning_effort",
        "needs max_tokens above its thinking budget (24,576 tokens at "
        "reasoning_effort='high'): params['max_tokens']; raise max_tokens above 24576 or "
        "lower reasoning_effort",
    ]
    assert emu.billing() == []


def test_what_users_saw_every_row_billed_and_truncated(emu, tmp_path, monkeypatch):
    """Without the check the real service (and the emulator, as strict as it) takes the
    request, bills it, and every row ends with thinking that filled max_tokens."""
    monkeypatch.setattr(batchata_df.frame, "check_model_params", lambda *a: None)
    out = run("gemini-2.5-pro", tmp_path, {"reasoning_effort": "high", "max_tokens": 500})
    assert out["_status"].to_list() == ["failed"] * 3
    assert out["_error"].str.starts_with("truncated: thinking used 500 of max_tokens=500").all()
    assert len(emu.billing()) == 3
    assert (out["_cost_usd"] > 0).all()


# -- valid combinations are sent as asked -------------------------------------------------


@pytest.mark.parametrize(
    ("model", "effort", "max_tokens", "budget"),
    [
        ("gemini-2.5-pro", "high", 24_577, 24_576),  # one token above the budget is enough
        ("gemini-2.5-flash", "minimal", 600, 512),
        ("gemini-2.5-flash-lite", "low", 5000, 1024),
    ],
)
def test_a_budget_under_max_tokens_is_sent_and_answered(
    emu, tmp_path, model, effort, max_tokens, budget
):
    emu.configure(log_bodies=True)
    out = run(model, tmp_path, {"reasoning_effort": effort, "max_tokens": max_tokens})
    assert out["_status"].to_list() == ["completed"] * 3
    configs = sent_configs(emu)
    assert len(configs) == 3
    for config in configs:
        assert config["maxOutputTokens"] == max_tokens
        assert config["thinkingConfig"] == {"thinking_budget": budget}
    assert len(emu.billing()) == 3


def test_the_default_max_tokens_holds_every_budget(emu, tmp_path):
    """Without max_tokens, every effort of every 2.5 family gets one above its budget."""
    emu.configure(log_bodies=True)
    out = run("gemini-2.5-pro", tmp_path, {"reasoning_effort": "high"})
    assert out["_status"].to_list() == ["completed"] * 3
    (config, *_) = sent_configs(emu)
    assert config["thinkingConfig"] == {"thinking_budget": 24_576}
    assert config["maxOutputTokens"] == 32_768
    for family in FAMILIES:
        if family.thinking != "gemini_budget":
            continue
        for effort in family.efforts:
            model = family.examples[0]
            params = effective_params("gemini", model, {"reasoning_effort": effort})
            assert params["max_tokens"] > GEMINI_BUDGETS[effort], (model, effort)
            check_model_params("gemini", model, params)


# -- no fixed budget, nothing to check before sending -------------------------------------


def test_dynamic_thinking_and_thinking_levels_are_sent(emu, tmp_path):
    """2.5 without reasoning_effort thinks dynamically (no thinkingConfig is sent: the model
    decides, maybe a few tokens) and 3.x levels are not token budgets: a small max_tokens
    may be right there, so it is sent, with a ThinkingRoomWarning before sending
    (tests/test_gemini_thinking_dynamic.py); a row that thinking starves fails as data."""
    emu.configure(log_bodies=True)
    with pytest.warns(ThinkingRoomWarning, match="thinks dynamically"):
        flash = run("gemini-2.5-flash", tmp_path, {"max_tokens": 1500})
    assert flash["_status"].to_list() == ["completed"] * 3
    assert [c.get("thinkingConfig") for c in sent_configs(emu)] == [None] * 3
    emu.reset()
    emu.configure(log_bodies=True)
    with pytest.warns(ThinkingRoomWarning, match="thinks at level HIGH"):
        level = run(
            "gemini-3.5-flash", tmp_path / "l", {"reasoning_effort": "high", "max_tokens": 500}
        )
    assert [c["thinkingConfig"] for c in sent_configs(emu)] == [{"thinking_level": "HIGH"}] * 3
    assert level["_status"].to_list() == ["failed"] * 3
    assert level["_error"].str.starts_with("truncated: thinking used 500 of max_tokens=500").all()


def test_every_budget_the_library_picks_is_inside_each_models_range():
    """The API refuses a budget outside the model's range (ai.google.dev/gemini-api/docs/
    thinking, table "Thinking budgets"; the emulator refuses it too, see
    tests/test_models.py::test_emulator_gemini_2_5_budget_ranges_and_flash_lite_off_by_default).
    """
    from batchata_df.emulator.model_rules import gemini_refusal

    for family in FAMILIES:
        if family.thinking != "gemini_budget":
            continue
        for effort in family.efforts:
            config: dict[str, object] = {
                "maxOutputTokens": GEMINI_BUDGETS[effort] + 1,
                "thinkingConfig": {"thinkingBudget": GEMINI_BUDGETS[effort]},
            }
            assert gemini_refusal(family.examples[0], config) is None, (family.name, effort)
