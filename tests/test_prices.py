"""Prices by request: every request at the tier of its own input size (issue 8, point 4).

Each tiered model family genai-prices lists for our providers runs through the emulator
with the real SDK: short prompts must be billed at the base batch rates, long ones at the
long-context rates, and the reported ``_cost_usd``, the dry run's ``_est_cost_usd`` and the
cost cap must agree on that. The expected rates are written out (the issue's numbers, and
genai-prices 0.2.3's batch data for the others), not read back from the code under test.

Claude's cache-write rates per tier are priced with claude-haiku-5-5 (the cost expressions
below). (Claude Sonnet 4.5's long tier was never run: it needed Anthropic's 1M-context beta
header, which batchata-df does not send; the model retired on 2026-11-30.)
"""

from __future__ import annotations

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm
from batchata_df.cost import Price, PriceTable, PriceTier, cost_expr


class Summary(BaseModel):
    summary: str


# (provider prefix, model, threshold, base (in, out), long tier (in, out)) per MTok, batch.
TIERED = [
    # The issue: 0.625/5.00 up to 200k, 1.25/7.50 above.
    ("gemini", "gemini-2.5-pro", 200_000, (0.625, 5.0), (1.25, 7.5)),
    # genai-prices 0.2.3: gpt-6 family, 272k threshold.
    ("openai", "gpt-6-sol", 272_000, (1.0, 5.0), (2.0, 7.5)),
    # genai-prices 0.2.3: claude-haiku-5-5, 100k threshold.
    ("anthropic", "claude-haiku-5-5", 100_000, (0.05, 0.25), (0.25, 1.25)),
    # genai-prices 0.2.3 batch: gpt-5.4 (and gpt-5.5/5.6), 272k threshold.
    ("openai", "gpt-5.4", 272_000, (1.25, 7.5), (2.5, 11.25)),
    # Gemini 3 Pro: genai-prices 0.2.3 has no batch price; standard 2.00/12.00 up to 200k,
    # 4.00/18.00 above, halved by Gemini's documented batch discount.
    ("gemini", "gemini-3-pro-preview", 200_000, (1.0, 6.0), (2.0, 9.0)),
]
# The worst case prices OpenAI input at the higher of input and cache-write rates.
WORST_INPUT_FACTOR = {"gpt-6-sol": 1.25}  # gpt-6-sol cache_write_mtok is 1.25x input


def _rows(threshold: int) -> pl.DataFrame:
    # The emulator bills len(text) // 4 tokens; the long row is well above the threshold
    # (also by the offline estimate), the short ones far below it.
    long_text = "the parcel came late " * (threshold * 4 * 16 // 10 // 21)
    return pl.DataFrame({"text": ["short review one", "short review two", long_text]})


def _expected(out: pl.DataFrame, threshold: int, base, long) -> pl.Series:
    inp, outp = out["_input_tokens"], out["_output_tokens"]
    is_long = inp > threshold
    rate_in = pl.Series([long[0] if x else base[0] for x in is_long])
    rate_out = pl.Series([long[1] if x else base[1] for x in is_long])
    return (inp * rate_in + outp * rate_out) / 1e6


@pytest.mark.parametrize(("provider", "model", "threshold", "base", "long"), TIERED,
                         ids=[t[1] for t in TIERED])
@pytest.mark.filterwarnings("ignore::batchata_df.errors.ThinkingRoomWarning")  # not the subject
def test_each_request_is_billed_at_its_own_tier(emu, provider, model, threshold, base, long):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    df = _rows(threshold)
    out = df.pipe(batch_llm, schema=Summary, model=f"{provider}:{model}", prompt="{text}",
                  params={"max_tokens": 4000})
    assert out["_status"].to_list() == ["completed"] * 3
    tokens = out["_input_tokens"].to_list()
    assert tokens[0] < threshold and tokens[1] < threshold and tokens[2] > threshold
    expected = _expected(out, threshold, base, long)
    assert (out["_cost_usd"] - expected).abs().max() < 1e-12
    # The short rows are billed at the base rate, exactly.
    short = out.head(1)
    assert short["_cost_usd"][0] == pytest.approx(
        (short["_input_tokens"][0] * base[0] + short["_output_tokens"][0] * base[1]) / 1e6
    )


@pytest.mark.parametrize(("provider", "model", "threshold", "base", "long"), TIERED,
                         ids=[t[1] for t in TIERED])
@pytest.mark.filterwarnings("ignore::batchata_df.errors.ThinkingRoomWarning")  # not the subject
def test_dry_run_and_cap_use_each_requests_tier(emu, tmp_path, provider, model, threshold,
                                                base, long):
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    df = _rows(threshold)
    kwargs = {"schema": Summary, "model": f"{provider}:{model}", "prompt": "{text}",
              "params": {"max_tokens": 4000}}
    plan = df.pipe(batch_llm, dry_run=True, **kwargs)
    est_in = plan["_est_input_tokens"]
    assert est_in[0] < threshold < est_in[2]
    rate_in = pl.Series([long[0] if x > threshold else base[0] for x in est_in])
    rate_out = pl.Series([long[1] if x > threshold else base[1] for x in est_in])
    # Anthropic and Gemini models here list a cache-write rate only for Anthropic; the
    # worst case prices input at the higher of input and cache-write only for OpenAI.
    rate_in = rate_in * WORST_INPUT_FACTOR.get(model, 1.0)
    expected = (est_in * rate_in + 4000 * rate_out) / 1e6
    assert (plan["_est_cost_usd"] - expected).abs().max() < 1e-12

    # The cap admits exactly what the dry run priced, row by row: each row alone runs
    # under a cap at its own worst case and is cancelled just below it.
    for i in (0, 2):
        row = df.slice(i, 1)
        worst = float(plan["_est_cost_usd"][i])
        emu.reset()
        out = row.pipe(batch_llm, max_cost_usd=worst * 1.000001,
                       state=tmp_path / f"fits{i}", **kwargs)
        assert out["_status"].to_list() == ["completed"]
        if provider != "openai":  # the emulator bills len/4 tokens, above OpenAI's exact BPE
            assert float(out["_cost_usd"][0]) <= worst
        out = row.pipe(batch_llm, max_cost_usd=worst * 0.999,
                       state=tmp_path / f"tight{i}", **kwargs)
        assert out["_status"].to_list() == ["cancelled"]
        assert "cost_limit" in out["_error"][0]


def test_prices_are_derived_from_genai_prices_tiers():
    table = PriceTable()
    haiku = table.get("anthropic", "claude-haiku-5-5")
    assert haiku is not None
    assert (haiku.input, haiku.output, haiku.cached_input, haiku.cache_write) == (
        0.05, 0.25, 0.005, 0.0625)
    assert haiku.tiers == (PriceTier(100_000, 0.25, 1.25, 0.025, 0.3125),)
    pro = table.get("gemini", "gemini-2.5-pro")
    assert pro is not None
    # Gemini bills batch cache hits at the standard cache rate, not halved.
    assert (pro.input, pro.output, pro.cached_input) == (0.625, 5.0, 0.125)
    assert pro.tiers == (PriceTier(200_000, 1.25, 7.5, 0.25, None),)
    flat = table.get("openai", "gpt-4.1-mini")
    assert flat is not None and flat.tiers == ()


def test_cost_expr_prices_cache_reads_and_writes_per_tier():
    haiku = PriceTable().get("anthropic", "claude-haiku-5-5")  # long tier above 100k
    assert haiku is not None
    usage = pl.DataFrame({
        "input_tokens": [10_000, 250_000, None],
        "cached_tokens": [4_000, 100_000, None],
        "cache_write_tokens": [2_000, 50_000, None],
        "output_tokens": [1_000, 1_000, None],
    })
    got = usage.select(cost_expr(haiku)).to_series().to_list()
    short = (4_000 * 0.05 + 4_000 * 0.005 + 2_000 * 0.0625 + 1_000 * 0.25) / 1e6
    long = (100_000 * 0.25 + 100_000 * 0.025 + 50_000 * 0.3125 + 1_000 * 1.25) / 1e6
    assert got == [pytest.approx(short), pytest.approx(long), 0.0]
    # The scalar form agrees with the expression.
    assert haiku.cost(input_tokens=250_000, output_tokens=1_000, cached_tokens=100_000,
                       cache_write_tokens=50_000) == pytest.approx(long)


def test_override_with_cache_write_rate():
    table = PriceTable({"m": {"input": 1.0, "output": 2.0, "cache_write": 1.5}})
    price = table.get("openai", "m")
    assert price == Price(input=1.0, output=2.0, cache_write=1.5)
