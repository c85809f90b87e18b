"""Model capabilities (issue 8 points 1, 2, 3, 7): rules per family, the reasoning knob,
thinking tokens in every number, and the emulator applying the same rules on its own."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import anthropic
import openai
import polars as pl
import pytest
from pydantic import BaseModel

import batchata_df
from batchata_df import ParamError, ThinkingRoomWarning, batch_llm
from batchata_df.cost import PriceTable, estimate_expr
from batchata_df.emulator.model_rules import THOUGHT_TOKENS
from batchata_df.engine.collection import THINKING_ADVICE
from batchata_df.jobs import parse_model
from batchata_df.models import (
    FAMILIES,
    capabilities_table,
    check_model_params,
    context_window,
    default_max_tokens,
    family_of,
)
from batchata_df.providers import make_provider
from batchata_df.providers.base import RequestSpec
from batchata_df.schema import AnswerSchema

README = Path(__file__).resolve().parents[1] / "README.md"


class Label(BaseModel):
    label: str


def rows(n: int = 3) -> pl.DataFrame:
    return pl.DataFrame({"text": [f"item {i}" for i in range(n)]})


def run(model: str, tmp_path: Path, **kw: Any) -> pl.DataFrame:
    return rows().pipe(
        batch_llm, schema=Label, model=model, prompt="Label {text}", state=tmp_path / "s", **kw
    )


def sent(provider: str, model: str, params: dict[str, Any]) -> dict[str, Any]:
    """The request body the client would send for ``model`` (the encoded batch line)."""
    jobs = pl.DataFrame(
        {"job_id": ["j"], "model": [model], "prompt": ["hi"], "system": [None]},
        schema={"job_id": pl.String, "model": pl.String, "prompt": pl.String,
                "system": pl.String},
    )  # fmt: skip
    line = make_provider(provider, offline=True).encode(
        jobs, RequestSpec(AnswerSchema(Label), params)
    )[0]
    obj = json.loads(line)
    return obj.get("body") or obj.get("params") or obj["request"]


# -- the reports, reproduced against the emulator (which refuses them itself) ----------


def test_emulator_refuses_temperature_on_gpt_6_sol_as_openai_does(emu):
    client = openai.OpenAI()
    body = {"model": "gpt-6-sol", "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.2}  # fmt: skip
    line = {"custom_id": "r", "method": "POST", "url": "/v1/chat/completions", "body": body}
    upload = client.files.create(file=("b.jsonl", json.dumps(line).encode()), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    err = json.loads(client.files.content(str(batch.error_file_id)).read())
    assert err["response"]["status_code"] == 400
    assert err["response"]["body"]["error"] == {
        "message": "Unsupported parameter: 'temperature' is not supported with this model.",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "unsupported_parameter",
    }


@pytest.mark.parametrize(
    ("model", "params", "message"),
    [
        ("claude-sonnet-5-5", {"temperature": 0.2}, "does not support sampling parameters"),
        (
            "claude-haiku-4-5",
            {"temperature": 0.2, "top_p": 0.9},
            "temperature and top_p cannot both be specified for this model",
        ),
        (
            "claude-opus-4-7",
            {"thinking": {"type": "enabled", "budget_tokens": 2048}, "max_tokens": 4096},
            '"thinking.type.enabled" is not supported',  # Anthropic's wording, quoted
        ),
        ("claude-opus-5-5", {"thinking": {"type": "disabled"}}, "thinking.type.disabled"),
        (
            "claude-haiku-4-5",
            {"thinking": {"type": "enabled", "budget_tokens": 2048}, "temperature": 0.5,
             "max_tokens": 4096},
            "may only be set to 1 when thinking is enabled",
        ),
    ],
)  # fmt: skip
def test_emulator_refuses_claude_params_per_generation(emu, model, params, message):
    # The per-model rules of API version 2023-06-01: under 2026-10-21, which anthropic 2.x
    # sends, every sampling parameter is refused (tests/test_anthropic_api_version.py).
    client = anthropic.Anthropic(default_headers={"anthropic-version": "2023-06-01"})
    request = {"model": model, "max_tokens": 256,
               "messages": [{"role": "user", "content": "hi"}], **params}  # fmt: skip
    batch = client.messages.batches.create(requests=[{"custom_id": "r", "params": request}])
    (result,) = list(client.messages.batches.results(batch.id))
    assert result.result.type == "errored"
    assert result.result.error.error.type == "invalid_request_error"
    assert message in result.result.error.error.message


def test_emulator_refuses_output_limits_above_the_models_ceiling(emu):
    from batchata_df.emulator import model_rules

    assert model_rules.openai_refusal("gpt-6-sol", {"max_completion_tokens": 128_001})[1] == (
        "invalid_value"
    )
    assert model_rules.openai_refusal("gpt-6-sol", {"max_completion_tokens": 128_000}) is None
    assert "64000" in str(model_rules.anthropic_refusal("claude-haiku-4-5", {"max_tokens": 64_001}))
    assert model_rules.gemini_refusal("gemini-3.5-flash", {"maxOutputTokens": 70_000})
    # The client's ceilings agree with the emulator's for every family both know.
    for family in FAMILIES:
        for example in family.examples:
            theirs = model_rules.max_output(family.provider, example)
            if theirs is not None:
                assert family.max_output_tokens == theirs, example


def test_emulator_accepts_what_each_claude_generation_takes(emu):
    client = anthropic.Anthropic(default_headers={"anthropic-version": "2023-06-01"})
    ok = [
        ("claude-haiku-4-5", {"temperature": 0.2}),
        ("claude-sonnet-4-6", {"top_p": 0.9}),
        ("claude-sonnet-5-5", {"thinking": {"type": "between_tools"}}),
        ("claude-opus-4-7", {"thinking": {"type": "adaptive"},
                             "output_config": {"effort": "low"}}),
    ]  # fmt: skip
    requests = [
        {"custom_id": f"r{i}", "params": {"model": m, "max_tokens": 4096,
                                          "messages": [{"role": "user", "content": "hi"}], **p}}
        for i, (m, p) in enumerate(ok)
    ]  # fmt: skip
    batch = client.messages.batches.create(requests=requests)
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert [results[f"r{i}"].type for i in range(len(ok))] == ["succeeded"] * len(ok)
    adaptive = results["r3"].message  # type: ignore[union-attr]
    assert [b.type for b in adaptive.content] == ["thinking", "text"]
    assert adaptive.usage.output_tokens_details.thinking_tokens == THOUGHT_TOKENS["low"]
    between = results["r2"].message  # type: ignore[union-attr]
    assert [b.type for b in between.content] == ["text"]


def test_emulator_gemini_thinking_rules_and_tokens(emu):
    from google import genai
    from google.genai import types

    client = genai.Client(
        api_key="k",
        http_options=types.HttpOptions(base_url=emu.gemini_base_url, api_version="v1beta"),
    )

    def one(model: str, thinking: dict[str, Any], max_tokens: int = 4096) -> Any:
        request = {"contents": "hi",
                   "config": {"max_output_tokens": max_tokens, "thinking_config": thinking}}
        job = client.batches.create(model=model, src=[request])  # type: ignore[arg-type]
        job = client.batches.get(name=str(job.name))
        return job.dest.inlined_responses[0]  # type: ignore[union-attr,index]

    refused = one("gemini-2.5-pro", {"thinking_budget": 0})
    assert refused.error is not None
    assert "only works in thinking mode" in refused.error.message
    assert "not supported" in one("gemini-2.5-flash", {"thinking_level": "LOW"}).error.message
    assert "MINIMAL" in one("gemini-3.8-flash", {"thinking_level": "MINIMAL"}).error.message
    low = one("gemini-3.5-flash", {"thinking_level": "LOW"}).response
    assert low.usage_metadata.thoughts_token_count == THOUGHT_TOKENS["low"]
    off = one("gemini-2.5-flash", {"thinking_budget": 0}).response
    assert not off.usage_metadata.thoughts_token_count
    # Thinking counts against maxOutputTokens: with no room left there is no answer.
    starved = one("gemini-3.5-flash", {"thinking_level": "HIGH"}, max_tokens=100).response
    assert starved.candidates[0].finish_reason == "MAX_TOKENS"
    assert starved.usage_metadata.thoughts_token_count == 100
    assert not starved.text


def test_emulator_gemini_2_5_budget_ranges_and_flash_lite_off_by_default(emu):
    """ai.google.dev/gemini-api/docs/thinking, table "Thinking budgets": 2.5 Flash-Lite does
    not think unless given a budget (512..24,576); 2.5 Pro takes 128..32,768; -1 is dynamic."""
    from google import genai
    from google.genai import types

    client = genai.Client(
        api_key="k",
        http_options=types.HttpOptions(base_url=emu.gemini_base_url, api_version="v1beta"),
    )

    def one(model: str, thinking: dict[str, Any] | None, max_tokens: int = 4096) -> Any:
        config: dict[str, Any] = {"max_output_tokens": max_tokens}
        if thinking is not None:
            config["thinking_config"] = thinking
        job = client.batches.create(model=model, src=[{"contents": "hi", "config": config}])  # type: ignore[list-item]
        job = client.batches.get(name=str(job.name))
        return job.dest.inlined_responses[0]  # type: ignore[union-attr,index]

    lite = one("gemini-2.5-flash-lite", None, max_tokens=50).response
    assert not lite.usage_metadata.thoughts_token_count
    assert lite.candidates[0].finish_reason != "MAX_TOKENS" and lite.text
    flash = one("gemini-2.5-flash", None).response
    assert flash.usage_metadata.thoughts_token_count == THOUGHT_TOKENS["medium"]
    low = one("gemini-2.5-flash-lite", {"thinking_budget": 128}).error
    assert low.message == (
        "The thinking budget 128 is invalid. Please choose a value between 512 and 24576."
    )
    assert "between 128 and 32768" in one("gemini-2.5-pro", {"thinking_budget": 64}).error.message
    high = one("gemini-2.5-flash", {"thinking_budget": 30_000}).error
    assert "between 1 and 24576" in high.message
    ok = one("gemini-2.5-flash-lite", {"thinking_budget": 512}).response
    assert ok.usage_metadata.thoughts_token_count == 512
    dynamic = one("gemini-2.5-flash-lite", {"thinking_budget": -1}).response
    assert dynamic.usage_metadata.thoughts_token_count == THOUGHT_TOKENS["medium"]
    off = one("gemini-2.5-flash-lite", {"thinking_budget": 0}).response
    assert not off.usage_metadata.thoughts_token_count


def test_flash_lite_runs_without_thinking_by_default(emu, tmp_path):
    """A 50-token answer limit is enough on 2.5 Flash-Lite: it does not think unless asked
    (every row failed as "thinking used 50 of 50" when the library thought it did)."""
    out = pl.DataFrame({"text": ["a", "b"]}).pipe(
        batch_llm, model="gemini-2.5-flash-lite", prompt="{text}", state=tmp_path / "s",
        params={"max_tokens": 50},
    )  # fmt: skip
    assert out["_status"].to_list() == ["completed", "completed"]
    assert out["_reasoning_tokens"].fill_null(0).to_list() == [0, 0]
    default = sent("gemini", "gemini-2.5-flash-lite", {})["generationConfig"]
    assert "thinkingConfig" not in default
    assert default["maxOutputTokens"] == 4096  # no room kept for thinking it will not do
    asked = sent("gemini", "gemini-2.5-flash-lite", {"reasoning_effort": "minimal"})
    assert asked["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 512}


# -- the client refuses them before anything is sent ---------------------------------------


@pytest.mark.parametrize(
    ("model", "params", "param"),
    [
        ("gpt-6-sol", {"temperature": 0.2}, "temperature"),
        ("claude-sonnet-5-5", {"temperature": 0.2}, "temperature"),
        ("claude-haiku-4-5", {"temperature": 0.2, "top_p": 0.9}, "temperature"),
        ("gemini-2.5-pro", {"reasoning_effort": "none"}, "reasoning_effort"),
    ],
)
def test_refused_params_fail_before_anything_is_sent(emu, tmp_path, model, params, param):
    with pytest.raises(ParamError) as info:
        run(model, tmp_path, params=params)
    assert info.value.model == model
    assert info.value.param == param
    assert model in str(info.value)
    assert f"params[{param!r}]" in str(info.value)
    assert emu.log() == []


def test_sampling_is_fine_once_reasoning_is_off(emu, tmp_path):
    out = run("gpt-6-sol", tmp_path, params={"temperature": 0.2, "reasoning_effort": "none"})
    assert out["_status"].to_list() == ["completed"] * 3
    assert out["_reasoning_tokens"].to_list() == [0, 0, 0]
    assert sent("openai", "gpt-6-sol", {"temperature": 0.2, "reasoning_effort": "none"})[
        "temperature"
    ] == 0.2


# -- one rule per test, as the table states them -------------------------------------------


RULES: list[tuple[str, str, dict[str, Any], str | None]] = [
    # (provider, model, params, None if accepted else the refused param)
    ("openai", "gpt-4.1-mini", {"temperature": 0.2, "top_p": 0.5}, None),
    ("openai", "gpt-4.1-mini", {"reasoning_effort": "low"}, "reasoning_effort"),
    ("openai", "gpt-6-sol", {"top_p": 0.5}, "top_p"),
    ("openai", "gpt-6-terra", {"temperature": 0.5}, "temperature"),  # unknown: GPT-6 rules
    ("openai", "gpt-6-luna", {"reasoning_effort": "max"}, "reasoning_effort"),  # chat: no max
    ("openai", "gpt-6-astra", {"reasoning_effort": "none"}, "reasoning_effort"),
    ("openai", "gpt-5.4", {"temperature": 0.5}, None),  # reasons only on request
    ("openai", "gpt-5.4", {"temperature": 0.5, "reasoning_effort": "low"}, "temperature"),
    ("openai", "gpt-5-mini", {"reasoning_effort": "none"}, "reasoning_effort"),
    ("openai", "o4-mini", {"presence_penalty": 0.1}, "presence_penalty"),
    ("openai", "gpt-5-mini", {"stop": "END"}, "stop"),
    ("openai", "gpt-6-sol", {"stop": "END", "reasoning_effort": "none"}, None),
    ("openai", "o3", {"reasoning_effort": "minimal"}, "reasoning_effort"),
    ("openai", "gpt-6-sol", {"max_tokens": 200_000}, "max_tokens"),
    # Every Claude model: API version 2026-10-21 (anthropic 2.x) takes no sampling parameter.
    ("anthropic", "claude-haiku-4-5", {"temperature": 0.5}, "temperature"),
    ("anthropic", "claude-sonnet-4-6", {"temperature": 0.5, "top_p": 0.9}, "temperature"),
    ("anthropic", "claude-opus-4-6", {"top_p": 0.9}, "top_p"),
    ("anthropic", "claude-opus-4-7", {"top_k": 5}, "top_k"),
    ("anthropic", "claude-opus-5-9", {"temperature": 0.5}, "temperature"),  # unknown 5.x
    ("anthropic", "claude-opus-5-5", {"reasoning_effort": "none"}, "reasoning_effort"),
    ("anthropic", "claude-sonnet-5-5", {"reasoning_effort": "none"}, None),
    ("anthropic", "claude-sonnet-4-6", {"reasoning_effort": "xhigh"}, "reasoning_effort"),
    ("anthropic", "claude-haiku-4-5", {"reasoning_effort": "low", "temperature": 0.5},
     "temperature"),
    ("anthropic", "claude-haiku-4-5", {"reasoning_effort": "high", "max_tokens": 8000},
     "max_tokens"),
    ("anthropic", "claude-haiku-4-5", {"max_tokens": 64_001}, "max_tokens"),
    ("gemini", "gemini-2.5-flash", {"reasoning_effort": "none", "temperature": 0.3}, None),
    ("gemini", "gemini-2.5-pro", {"reasoning_effort": "none"}, "reasoning_effort"),
    ("gemini", "gemini-3.5-flash", {"reasoning_effort": "minimal"}, None),
    ("gemini", "gemini-3.5-flash", {"reasoning_effort": "none"}, "reasoning_effort"),
    ("gemini", "gemini-3.8-flash", {"reasoning_effort": "minimal"}, "reasoning_effort"),
    ("gemini", "gemini-2.0-flash", {"reasoning_effort": "low"}, "reasoning_effort"),
]  # fmt: skip


@pytest.mark.parametrize(("provider", "model", "params", "refused"), RULES)
def test_rule(provider, model, params, refused):
    if refused is None:
        check_model_params(provider, model, params)
        return
    with pytest.raises(ParamError) as info:
        check_model_params(provider, model, params)
    assert info.value.param == refused
    assert model in str(info.value)


def test_every_family_names_its_sources_and_is_reachable():
    for family in FAMILIES:
        assert family.sources, family.name
        for example in family.examples:
            assert family_of(family.provider, example) is family, example


def test_model_names_in_tables_exist_in_genai_prices():
    # The families' examples are real model names (genai-prices 0.2.3 knows them).
    missing = [
        (f.provider, e)
        for f in FAMILIES
        for e in f.examples
        if context_window(f.provider, e) is None and PriceTable().get(f.provider, e) is None
    ]
    assert missing == []


# -- the reasoning knob on the wire ---------------------------------------------------------


def test_reasoning_effort_maps_to_each_providers_field():
    oa = sent("openai", "gpt-6-sol", {"reasoning_effort": "low"})
    assert oa["reasoning_effort"] == "low"
    assert oa["max_completion_tokens"] == 8192  # reasoning models refuse max_tokens
    assert "max_tokens" not in oa
    assert "reasoning_effort" not in sent("openai", "gpt-4.1-mini", {"reasoning_effort": "none"})
    budget = sent("anthropic", "claude-haiku-4-5", {"reasoning_effort": "medium"})
    assert budget["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert budget["max_tokens"] == 8192 + 4096  # the default leaves room for the answer
    adaptive = sent("anthropic", "claude-opus-4-7", {"reasoning_effort": "high"})
    assert adaptive["thinking"] == {"type": "adaptive"}
    assert adaptive["output_config"]["effort"] == "high"
    assert adaptive["output_config"]["format"]["type"] == "json_schema"
    off = sent("anthropic", "claude-sonnet-5-5", {"reasoning_effort": "none"})
    assert off["thinking"] == {"type": "between_tools"}
    assert sent("anthropic", "claude-haiku-5-5", {"reasoning_effort": "none"})["thinking"] == {
        "type": "disabled"
    }
    g25 = sent("gemini", "gemini-2.5-flash", {"reasoning_effort": "none"})["generationConfig"]
    assert g25["thinkingConfig"] == {"thinkingBudget": 0}
    assert g25["maxOutputTokens"] == 4096
    g3 = sent("gemini", "gemini-3.5-flash", {"reasoning_effort": "low"})["generationConfig"]
    assert g3["thinkingConfig"] == {"thinkingLevel": "LOW"}


@pytest.mark.parametrize(
    ("model", "effort", "expected"),
    [
        ("gpt-6-sol", "low", THOUGHT_TOKENS["low"]),
        ("gpt-6-sol", None, THOUGHT_TOKENS["medium"]),  # the model's default effort
        ("claude-opus-4-7", "low", THOUGHT_TOKENS["low"]),
        ("claude-opus-5-5", None, THOUGHT_TOKENS["medium"]),  # its default effort
        ("claude-haiku-5-5", "none", 0),
        ("gemini-3.5-flash", "low", THOUGHT_TOKENS["low"]),
        ("gemini-2.5-flash", "none", 0),
    ],
)
def test_knob_reaches_the_provider_and_thinking_is_counted(emu, tmp_path, model, effort, expected):
    params = {} if effort is None else {"reasoning_effort": effort}
    out = run(model, tmp_path, params=params)
    assert out["_status"].to_list() == ["completed"] * 3
    assert out["_reasoning_tokens"].to_list() == [expected] * 3
    # Output tokens include thinking, and the cost is priced on them.
    assert (out["_output_tokens"] >= expected).all()
    assert (out["_output_tokens"] > out["_reasoning_tokens"]).all()
    provider = parse_model(model)[0]
    price = PriceTable().require(provider, model, "test")
    expected_cost = [
        price.cost(input_tokens=i, output_tokens=o)
        for i, o in zip(out["_input_tokens"], out["_output_tokens"], strict=True)
    ]
    assert out["_cost_usd"].to_list() == pytest.approx(expected_cost)
    jobs = batchata_df.sql(
        "select sum(reasoning_tokens) as r, sum(output_tokens) as o from jobs", state=tmp_path / "s"
    )
    assert jobs["r"].item() == 3 * expected
    assert jobs["o"].item() == out["_output_tokens"].sum()


def test_thinking_that_uses_the_budget_fails_with_what_to_raise(emu, tmp_path):
    out = run("gpt-6-sol", tmp_path, params={"reasoning_effort": "high", "max_tokens": 1000})
    assert out["_status"].to_list() == ["failed"] * 3
    error = out["_error"][0]
    assert error.startswith("truncated: thinking used 1000 of max_tokens=1000")
    assert error.endswith(THINKING_ADVICE)
    assert out["_reasoning_tokens"].to_list() == [1000] * 3
    assert out["_output_tokens"].to_list() == [1000] * 3


def test_gemini_thinking_that_uses_the_budget_says_so(emu, tmp_path):
    with pytest.warns(ThinkingRoomWarning, match="thinks at level MEDIUM, its default"):
        out = run("gemini-3.5-flash", tmp_path, params={"max_tokens": 500})
    assert out["_status"].to_list() == ["failed"] * 3
    assert out["_error"][0].startswith("truncated: thinking used 500 of max_tokens=500")


def test_default_max_tokens_leaves_room_for_thinking(tmp_path):
    plan = pl.DataFrame({"text": ["a"], "m": ["gpt-6-sol"]}).vstack(
        pl.DataFrame({"text": ["b"], "m": ["gpt-4.1-mini"]})
    ).pipe(batch_llm, schema=Label, model=pl.col("m"), prompt="{text}", dry_run=True)
    assert plan["_est_output_tokens_max"].to_list() == [16_384, 4096]
    # The worst case the cap holds is priced on that output, thinking included.
    for i, model in enumerate(["gpt-6-sol", "gpt-4.1-mini"]):
        price = PriceTable().require("openai", model, "test")
        worst, _ = estimate_expr(
            price, pl.lit(plan["_est_input_tokens"][i]), pl.lit(plan["_est_output_tokens_max"][i]),
            provider="openai",
        )
        assert plan["_est_cost_usd"][i] == pytest.approx(pl.select(worst).item())
        assert plan["_est_cost_usd"][i] > plan["_est_output_tokens_max"][i] * price.output / 1e6
    assert default_max_tokens(family_of("anthropic", "claude-opus-5-5"), {}) == 16_384
    assert default_max_tokens(family_of("anthropic", "claude-sonnet-5-5"), {}) == 32_768
    assert default_max_tokens(family_of("gemini", "gemini-2.5-flash"),
                              {"reasoning_effort": "none"}) == 4096  # fmt: skip


def test_default_max_tokens_never_exceeds_the_models_output_ceiling():
    # Every provider refuses a max_tokens above the model's output ceiling: the default
    # (the answer's 4,096 plus room for thinking) is cut to it. No family in the table has
    # a ceiling below its default today, so families with a low one are made from real ones.
    low = replace(family_of("openai", "gpt-6-sol"), max_output_tokens=10_000)
    assert default_max_tokens(low, {}) == 10_000  # thinks at medium: 16,384 otherwise
    assert default_max_tokens(low, {"reasoning_effort": "none"}) == 4096
    small = replace(family_of("openai", "gpt-4.1-mini"), max_output_tokens=2048)
    assert default_max_tokens(small, {}) == 2048
    for family in FAMILIES:  # and every real family, at every effort it takes
        for effort in (None, *family.efforts):
            params = {} if effort is None else {"reasoning_effort": effort}
            assert default_max_tokens(family, params) <= family.max_output_tokens, family.name


def test_old_checkpoints_without_reasoning_tokens_still_read(emu, tmp_path):
    out = run("gpt-4.1-mini", tmp_path)
    parts = list((tmp_path / "s" / "jobs").glob("part-*.parquet"))
    for part in parts:  # rewrite as a version without the column would have
        # (strict=False: a format 2 part whose reasoning_tokens were all null left it out)
        pl.read_parquet(part).drop("reasoning_tokens", strict=False).write_parquet(part)
    assert not any("reasoning_tokens" in pl.read_parquet_schema(p) for p in parts)
    again = run("gpt-4.1-mini", tmp_path)
    assert again["_status"].to_list() == out["_status"].to_list()
    assert again["_reasoning_tokens"].to_list() == [None] * 3
    view = batchata_df.sql("select reasoning_tokens from jobs", state=tmp_path / "s")
    assert view["reasoning_tokens"].to_list() == [None] * 3


def test_readme_table_is_generated_from_the_capability_data():
    text = README.read_text()
    match = re.search(
        r"<!-- models-table:start -->\n(.*?)\n<!-- models-table:end -->", text, re.S
    )
    assert match is not None, "README.md lacks the model table markers"
    assert match.group(1) == capabilities_table(), (
        "README model table is stale: python -c 'from batchata_df.models import "
        "capabilities_table; print(capabilities_table())'"
    )
