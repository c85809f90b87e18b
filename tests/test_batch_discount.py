"""Batch prices where genai-prices has none, and cache tokens priced as reported (issue 8).

genai-prices 0.2.3 lists some current models without a batch price (asked for one, it
answers the standard price): a run on gemini-3.5-flash was reported, estimated and capped
at about twice what Gemini bills. The expected numbers here are computed from genai-prices'
*standard* price and the providers' documented batch discount (50 %), independently of the
batch lookup under test, and compared with what the emulator served (its usage, through
``keep_responses``) and billed (its ledger).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import polars as pl
import pytest
from genai_prices import Usage, calc_price
from pydantic import BaseModel

from batchata_df import batch_llm, sql, tokens
from batchata_df.caching import OPENAI_MIN, OPENAI_STEP
from batchata_df.cost import PriceTable, cost_expr, with_usage_columns
from batchata_df.emulator import model_rules
from batchata_df.emulator.pricing import billed_usd
from batchata_df.models import TODAY_VAR, today
from batchata_df.providers import anthropic as anthropic_provider
from batchata_df.providers import gemini as gemini_provider
from batchata_df.providers import openai as openai_provider


class Summary(BaseModel):
    summary: str


def _standard_usd(provider_id: str, model: str, **usage: int) -> float:
    """What genai-prices says the usage costs at the *standard* (not batch) price, on the
    suite's pinned date (as the client and the emulator read it: some prices are dated)."""
    at = datetime.combine(today(), datetime.now(tz=UTC).time(), UTC)
    calc = calc_price(Usage(**usage), model_ref=model, provider_id=provider_id,
                      genai_request_timestamp=at)
    return float(calc.total_price)


# Models genai-prices 0.2.3 lists without a batch variant (its batch lookup returns the
# standard price), one or more per provider.
NO_BATCH_PRICE = [
    ("gemini", "google", "gemini-3.5-flash"),
    ("gemini", "google", "gemini-3.7-flash"),
    ("openai", "openai", "gpt-5.3"),
    ("anthropic", "anthropic", "claude-opus-4-1"),
]


@pytest.mark.parametrize(("provider", "provider_id", "model"), NO_BATCH_PRICE,
                         ids=[m for _, _, m in NO_BATCH_PRICE])
def test_models_without_a_batch_price_get_the_documented_discount(provider, provider_id, model):
    price = PriceTable().get(provider, model)
    assert price is not None
    assert price.source.endswith("(standard x 0.5)")
    standard = _standard_usd(provider_id, model, input_tokens=1_000_000, output_tokens=1_000_000)
    assert price.cost(input_tokens=1_000_000, output_tokens=1_000_000) == pytest.approx(
        standard / 2)


def test_gemini_batch_cache_reads_are_halved_without_a_batch_price():
    price = PriceTable().get("gemini", "gemini-3.5-flash")
    assert price is not None
    # Standard: 1.50 in, 9.00 out, 0.15 cache read (genai-prices 0.2.3); the batch tab
    # halves all three ("Batch halves input, output and context caching").
    assert (price.input, price.output, price.cached_input) == (0.75, 4.5, 0.075)


@pytest.mark.parametrize(("provider", "without", "with_batch"), [
    # Same standard price, one with a batch variant in genai-prices 0.2.3, one without.
    ("openai", "gpt-5.3", "gpt-5.2"),                # 1.75 / 14 / 0.175 cached
    ("gemini", "gemini-3.7-flash", "gemini-3.6-flash"),  # 0.75 / 3.75 / 0.075 cached
])
def test_a_model_without_a_batch_price_is_priced_like_its_sibling_with_one(
        provider, without, with_batch):
    table = PriceTable()
    a, b = table.get(provider, without), table.get(provider, with_batch)
    assert a is not None and b is not None
    assert a.source.endswith("(standard x 0.5)") and not b.source.endswith("(standard x 0.5)")
    assert (a.input, a.output, a.cached_input) == (b.input, b.output, b.cached_input)


def test_which_rates_the_discount_halves_per_provider():
    table = PriceTable()
    # Anthropic bills "all usage" of a batch at half price: claude-opus-4-1 standard
    # 15 / 75 / 1.50 cache read / 18.75 cache write (genai-prices 0.2.3), all halved.
    opus = table.get("anthropic", "claude-opus-4-1")
    assert opus is not None
    assert (opus.input, opus.output, opus.cached_input, opus.cache_write) == (
        7.5, 37.5, 0.75, 9.375)
    # OpenAI gpt-5.3 standard 1.75 / 14.00 / 0.175 cached: all halved, as OpenAI's Batch
    # table halves the cached rate of every model it lists one for (gpt-5.2: 0.0875).
    gpt = table.get("openai", "gpt-5.3")
    assert gpt is not None
    assert (gpt.input, gpt.output, gpt.cached_input, gpt.cache_write) == (
        0.875, 7.0, 0.0875, None)


@pytest.mark.parametrize(("provider", "model"), [
    ("gemini", "gemini-2.5-flash"), ("openai", "gpt-4.1-mini"),
    ("anthropic", "claude-haiku-4-5"),
])
def test_models_with_a_batch_price_keep_it(provider, model):
    price = PriceTable().get(provider, model)
    assert price is not None and not price.source.endswith("(standard x 0.5)")


def test_gemini_3_5_flash_run_costs_half_the_standard_price(emu, tmp_path):
    df = pl.DataFrame({"text": ["the parcel came late", "great service, thanks", "meh"]})
    out = df.pipe(batch_llm, schema=Summary, model="gemini-3.5-flash", prompt="{text}",
                  state=tmp_path / "s", keep_responses=True)
    assert out["_status"].to_list() == ["completed"] * 3
    # What Gemini reported, priced at half the standard price (cache reads: standard).
    expected = []
    for line in out["_response"].to_list():
        usage = json.loads(line)["response"]["usageMetadata"]
        output = usage.get("candidatesTokenCount", 0) + usage.get("thoughtsTokenCount", 0)
        expected.append(_standard_usd("google", "gemini-3.5-flash",
                                      input_tokens=usage["promptTokenCount"],
                                      output_tokens=output) / 2)
    assert out["_cost_usd"].to_list() == pytest.approx(expected)
    # One billed request per row at the provider, none twice.
    billed = sorted(e["custom_id"] for e in emu.billing())
    assert billed == sorted(out["_job_id"].to_list())
    # The dry run and the cap price the same way: the worst case is under half the
    # standard price of the same tokens.
    plan = df.pipe(batch_llm, schema=Summary, model="gemini-3.5-flash", prompt="{text}",
                   dry_run=True)
    est_in, est_out = plan["_est_input_tokens"], plan["_est_output_tokens_max"]
    for worst, i, o in zip(plan["_est_cost_usd"].to_list(), est_in.to_list(), est_out.to_list(),
                           strict=True):
        standard = _standard_usd("google", "gemini-3.5-flash", input_tokens=i, output_tokens=o)
        assert worst == pytest.approx(standard / 2)


# -- cache tokens reported by a provider are billed at the cache rates --------------------

def _priced(results: pl.DataFrame, provider: str, model: str) -> float:
    price = PriceTable().get(provider, model)
    frame = with_usage_columns(results.select(
        "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens"))
    return float(frame.select(cost_expr(price)).item())


def test_openai_reported_cache_reads_and_writes_are_billed_at_their_rates():
    line = {
        "id": "batch_req_1", "custom_id": "a", "error": None,
        "response": {"status_code": 200, "request_id": "r", "body": {
            "id": "c", "object": "chat.completion", "created": 0, "model": "gpt-5.6",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": '{"summary":"x"}',
                                     "refusal": None}}],
            "usage": {"prompt_tokens": 10_000, "completion_tokens": 500,
                      "total_tokens": 10_500,
                      "prompt_tokens_details": {"cached_tokens": 6_000,
                                                "cache_write_tokens": 3_000},
                      "completion_tokens_details": {"reasoning_tokens": 200}}}},
    }
    results = openai_provider.decode_lines(json.dumps(line).encode())
    price = PriceTable().get("openai", "gpt-5.6")
    assert price is not None and price.cache_write is not None
    expected = (1_000 * price.input + 6_000 * price.rate("cached_input")
                + 3_000 * price.cache_write + 500 * price.output) / 1e6
    assert _priced(results, "openai", "gpt-5.6") == pytest.approx(expected)
    # Not the same as pricing every prompt token at the input rate.
    assert expected != pytest.approx((10_000 * price.input + 500 * price.output) / 1e6)


def test_anthropic_reported_cache_reads_and_writes_are_billed_at_their_rates():
    line = {"custom_id": "a", "result": {"type": "succeeded", "message": {
        "id": "m", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": '{"summary":"x"}'}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 1_000, "output_tokens": 500,
                  "cache_read_input_tokens": 6_000, "cache_creation_input_tokens": 3_000}}}}
    results = anthropic_provider.decode_results(json.dumps(line).encode())
    # genai-prices 0.2.3, claude-haiku-4-5 batch: 0.50 in, 2.50 out, 0.05 read, 0.625 write.
    expected = (1_000 * 0.5 + 6_000 * 0.05 + 3_000 * 0.625 + 500 * 2.5) / 1e6
    assert _priced(results, "anthropic", "claude-haiku-4-5") == pytest.approx(expected)


@pytest.mark.parametrize(("model", "rates"), [
    # (input, output, cache read) per MTok, batch. gemini-2.5-flash's batch tab keeps
    # context caching at the standard rate (genai-prices' batch variant); gemini-3.5-flash
    # has no batch variant: every rate halved.
    ("gemini-2.5-flash", (0.15, 1.25, 0.03)),
    ("gemini-3.5-flash", (0.75, 4.5, 0.075)),
])
def test_gemini_reported_cache_hits_are_billed_at_the_batch_cache_rate(model, rates):
    line = {"key": "a", "response": {
        "candidates": [{"content": {"role": "model", "parts": [{"text": '{"summary":"x"}'}]},
                        "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 10_000, "candidatesTokenCount": 400,
                          "thoughtsTokenCount": 100, "cachedContentTokenCount": 6_000}}}
    results = gemini_provider.decode_lines(json.dumps(line).encode())
    i, o, c = rates
    expected = (4_000 * i + 6_000 * c + 500 * o) / 1e6
    assert _priced(results, "gemini", model) == pytest.approx(expected)


# -- cached rows of models without a batch price, end to end -----------------------------

DOC = "The supplier shall deliver the goods within thirty days of the order date. " * 250
CACHED_FRAME = pl.DataFrame({
    "doc": [DOC, "A short note.", DOC, DOC],
    "q": ["Amount?", "Sender?", "Date?", "Place?"],
})
CACHED_TEMPLATE = "Read this contract:\n{doc}\n\nQuestion: {q}"

# Batch USD per MTok (input, output, cache read), by hand: genai-prices 0.2.3's standard
# price halved for every token kind (batchata_df.cost, "Batch prices").
HAND_RATES = {
    ("openai", "gpt-5.3"): (0.875, 7.0, 0.0875),  # standard 1.75 / 14 / 0.175
    ("gemini", "gemini-3.7-flash"): (0.375, 1.875, 0.0375),  # standard 0.75 / 3.75 / 0.075
}


@pytest.mark.parametrize(("provider", "model"), list(HAND_RATES), ids=[m for _, m in HAND_RATES])
def test_cached_rows_cost_what_the_emulator_bills(emu, tmp_path, provider, model):
    state = tmp_path / "s"
    out = CACHED_FRAME.pipe(batch_llm, model=model, prompt=CACHED_TEMPLATE, state=state)
    assert out["_status"].to_list() == ["completed"] * 4, out["_error"].to_list()
    usage = sql("SELECT job_id, input_tokens, output_tokens, cached_tokens, "
                "cache_write_tokens FROM jobs", state)
    by_id = {r["job_id"]: r for r in usage.iter_rows(named=True)}
    rows = [by_id[j] | {"_cost_usd": c}
            for j, c in zip(out["_job_id"], out["_cost_usd"], strict=True)]
    # The DOC rows after the first read the shared prefix (send order = input order here).
    cached = [r["cached_tokens"] or 0 for r in rows]
    assert [c > 1_000 for c in cached] == [False, False, True, True], cached
    i, o, c = HAND_RATES[(provider, model)]
    for r in rows:
        read, inp, outp = r["cached_tokens"] or 0, r["input_tokens"], r["output_tokens"]
        assert (r["cache_write_tokens"] or 0) == 0
        by_hand = ((inp - read) * i + read * c + outp * o) / 1e6
        assert r["_cost_usd"] == pytest.approx(by_hand, rel=1e-12)
        assert r["_cost_usd"] == pytest.approx(billed_usd(
            provider, model, input_tokens=inp, output_tokens=outp, cached_tokens=read),
            rel=1e-12)
    # Every row billed once by the emulator.
    assert sorted(e["custom_id"] for e in emu.billing()) == sorted(out["_job_id"].to_list())
    # The dry run prices its expected cache reads (the prefix's estimated tokens; OpenAI in
    # 128-token steps from 1,024) at the same cached rate; the worst case reads nothing.
    prefix = CACHED_TEMPLATE.split("{doc}")[0] + DOC + "\n\nQuestion: "
    shared = tokens.estimate_tokens(pl.Series([prefix]), provider, model).item()
    if provider == "openai":
        shared = OPENAI_MIN + (shared - OPENAI_MIN) // OPENAI_STEP * OPENAI_STEP
    plan = CACHED_FRAME.pipe(batch_llm, model=model, prompt=CACHED_TEMPLATE,
                             state=tmp_path / "dry", dry_run=True)
    for p, read in zip(plan.iter_rows(named=True), [0, 0, shared, shared], strict=True):
        est, exp_out = p["_est_input_tokens"], p["_est_output_tokens_expected"]
        worst_out = p["_est_output_tokens_max"]
        assert p["_expected_cost_usd"] == pytest.approx(
            ((est - read) * i + read * c + exp_out * o) / 1e6, rel=1e-9)
        assert p["_est_cost_usd"] == pytest.approx((est * i + worst_out * o) / 1e6, rel=1e-9)


@pytest.mark.parametrize(("provider", "model", "cached_rate"), [
    # USD per MTok of cached input in batch, from each model's batch table (genai-prices
    # 0.2.3): OpenAI's lists none for gpt-4.1 (standard 0.50 kept), halves gpt-5.2's;
    # Gemini 2.5 keeps the standard 0.03 ("Same as Standard"), 3.6 Flash halves 0.075.
    ("openai", "gpt-4.1", 0.5),
    ("openai", "gpt-5.2", 0.0875),
    ("gemini", "gemini-2.5-flash", 0.03),
    ("gemini", "gemini-3.6-flash", 0.0375),
    ("anthropic", "claude-haiku-4-5", 0.05),
])
def test_client_and_emulator_price_cache_reads_from_the_batch_table(provider, model,
                                                                   cached_rate):
    price = PriceTable().get(provider, model)
    assert price is not None and price.rate("cached_input") == pytest.approx(cached_rate)
    usage = {"input_tokens": 1_000_000, "output_tokens": 0, "cached_tokens": 1_000_000}
    assert billed_usd(provider, model, **usage) == pytest.approx(cached_rate)
    assert price.cost(**usage) == pytest.approx(cached_rate)


@pytest.mark.parametrize("mode", ["batch", "realtime"])
def test_dated_prices_are_read_at_the_pinned_date_not_the_real_one(monkeypatch, mode):
    # genai-prices 0.2.3 raises gemini-3.7-flash's standard price on 2027-01-01 (0.75 /
    # 3.75 per MTok before, 1.50 / 7.50 from then; StartDateConstraint). The client and the
    # emulator read it at the pinned date (BATCHATA_DF_TODAY), so the suite's prices do not
    # change with the day it runs, and a run pinned to a date prices as on that date.
    share = 0.5 if mode == "batch" else 1.0
    for day, (rate_in, rate_out) in (("2026-12-31", (0.75, 3.75)), ("2027-01-01", (1.5, 7.5))):
        monkeypatch.setenv(TODAY_VAR, day)  # the client's date (batchata_df.models.today)
        monkeypatch.setattr(model_rules, "_TODAY", [day])  # the emulator's
        table = PriceTable() if mode == "batch" else PriceTable(processing="realtime")
        price = table.get("gemini", "gemini-3.7-flash")
        assert price is not None
        assert (price.input, price.output) == (rate_in * share, rate_out * share), day
        billed = billed_usd("gemini", "gemini-3.7-flash", input_tokens=1_000_000,
                            output_tokens=1_000_000, mode=mode)
        assert billed == pytest.approx((rate_in + rate_out) * share), day
