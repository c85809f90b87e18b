"""What a row is billed, by value: rates, tiers, cache reads and writes, overrides, estimates.

Fast, no emulator: the money arithmetic of ``batchata_df.cost`` on its own, with rates
chosen so that every token kind and every tier has a different price (a rate taken from
the wrong field, or a tier picked at the wrong threshold, changes the amount).
"""

from __future__ import annotations

from decimal import Decimal

import polars as pl
import pytest
from genai_prices.types import ModelPrice, Tier, TieredPrices

from batchata_df.cost import (
    Price,
    PriceTable,
    PriceTier,
    _coerce,
    _lookup,
    _rate_at,
    cost_expr,
    estimate_expr,
    price_from_genai,
    with_usage_columns,
)
from batchata_df.errors import ConfigError, PriceError

# Base rates, and two tiers, each rate distinct (USD per million tokens).
TIERED = Price(
    input=1.0, output=10.0, cached_input=0.1, cache_write=1.25, source="test",
    tiers=(
        PriceTier(above=1_000, input=2.0, output=20.0, cached_input=0.2, cache_write=2.5),
        PriceTier(above=5_000, input=4.0, output=40.0),  # cache rates: the tier's input
    ),
)


def usd(value: float) -> float:
    return round(value, 12)


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (0, Price(1.0, 10.0, 0.1, 1.25, "test")),
        (1_000, Price(1.0, 10.0, 0.1, 1.25, "test")),  # "exceeds": the threshold is base
        (1_001, Price(2.0, 20.0, 0.2, 2.5, "test")),
        (5_000, Price(2.0, 20.0, 0.2, 2.5, "test")),
        (5_001, Price(4.0, 40.0, None, None, "test")),
    ],
)
def test_at_picks_the_highest_tier_the_input_exceeds(tokens: int, expected: Price) -> None:
    assert TIERED.at(tokens) == expected


def test_rate_defaults_cache_rates_to_the_input_rate() -> None:
    flat = Price(input=3.0, output=9.0)
    assert [flat.rate(n) for n in ("input", "output", "cached_input", "cache_write")] == [
        3.0, 9.0, 3.0, 3.0
    ]
    cached = Price(input=3.0, output=9.0, cached_input=0.3, cache_write=3.75)
    assert [cached.rate(n) for n in ("cached_input", "cache_write")] == [0.3, 3.75]


def test_cost_prices_each_token_kind_at_its_own_rate_and_tier() -> None:
    # base tier: 600 uncached + 300 cached + 100 written (1000 input, not above 1000)
    assert usd(TIERED.cost(input_tokens=1_000, output_tokens=50, cached_tokens=300,
                           cache_write_tokens=100)) == usd(
        (600 * 1.0 + 300 * 0.1 + 100 * 1.25 + 50 * 10.0) / 1e6
    )
    # cached tokens count toward the threshold: 1001 input tokens is the first tier
    assert usd(TIERED.cost(input_tokens=1_001, output_tokens=7, cached_tokens=1_000)) == usd(
        (1 * 2.0 + 1_000 * 0.2 + 7 * 20.0) / 1e6
    )
    # second tier: cache rates fall back to that tier's input rate
    assert usd(TIERED.cost(input_tokens=6_000, output_tokens=1, cached_tokens=1_000,
                           cache_write_tokens=2_000)) == usd(
        (3_000 * 4.0 + 1_000 * 4.0 + 2_000 * 4.0 + 1 * 40.0) / 1e6
    )
    # more cached+written than input (a provider's rounding) never bills negative input
    assert usd(Price(1.0, 2.0, 0.5, 3.0).cost(
        input_tokens=10, output_tokens=0, cached_tokens=8, cache_write_tokens=8
    )) == usd((8 * 0.5 + 8 * 3.0) / 1e6)


def _usage(rows: list[tuple[int | None, int | None, int | None, int | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"input_tokens": pl.Int64, "output_tokens": pl.Int64,
                "cached_tokens": pl.Int64, "cache_write_tokens": pl.Int64},
        orient="row",
    )


def test_cost_expr_bills_every_row_at_its_own_tier_as_price_cost_does() -> None:
    rows = [
        (1_000, 50, 300, 100),
        (1_001, 7, 1_000, 0),
        (6_000, 1, 1_000, 2_000),
        (10, 0, 8, 8),
        (0, 5, 0, 0),
    ]
    got = _usage(rows).select(cost_expr(TIERED)).to_series().to_list()
    expected = [
        TIERED.cost(input_tokens=i, output_tokens=o, cached_tokens=c, cache_write_tokens=w)
        for i, o, c, w in rows
    ]
    assert [usd(g) for g in got] == [usd(e) for e in expected]
    assert usd(got[0]) == usd((600 * 1.0 + 300 * 0.1 + 100 * 1.25 + 50 * 10.0) / 1e6)


def test_cost_expr_rows_without_usage_cost_zero_and_unknown_prices_null() -> None:
    frame = _usage([(None, None, None, None), (None, 40, None, None), (100, None, None, None)])
    got = frame.select(cost_expr(Price(input=1.0, output=3.0))).to_series().to_list()
    assert [usd(g) for g in got] == [0.0, usd(40 * 3.0 / 1e6), usd(100 * 1.0 / 1e6)]
    nulls = frame.with_columns(cost_expr(None).alias("cost"))["cost"]
    assert nulls.to_list() == [None, None, None] and nulls.dtype == pl.Float64


def test_rate_expr_per_row_with_tier_fallbacks() -> None:
    frame = pl.DataFrame({"n": [0, 1_000, 1_001, 5_000, 5_001]})
    rates = {
        name: frame.select(TIERED.rate_expr(name, pl.col("n"))).to_series().to_list()
        for name in ("input", "output", "cached_input", "cache_write")
    }
    assert rates == {
        "input": [1.0, 1.0, 2.0, 2.0, 4.0],
        "output": [10.0, 10.0, 20.0, 20.0, 40.0],
        "cached_input": [0.1, 0.1, 0.2, 0.2, 4.0],
        "cache_write": [1.25, 1.25, 2.5, 2.5, 4.0],
    }
    flat = Price(input=3.0, output=9.0, cached_input=None)
    out = frame.head(2).with_columns(flat.rate_expr("cached_input", pl.col("n")))["literal"]
    assert out.to_list() == [3.0, 3.0] and out.dtype == pl.Float64


def test_with_usage_columns_adds_only_the_missing_ones_as_null_integers() -> None:
    frame = pl.DataFrame({"output_tokens": [5], "input_tokens": [7]})
    out = with_usage_columns(frame)
    assert out.to_dicts() == [{"output_tokens": 5, "input_tokens": 7, "cached_tokens": None,
                               "cache_write_tokens": None}]
    assert out.schema["cached_tokens"] == pl.Int64
    assert out.schema["cache_write_tokens"] == pl.Int64
    complete = with_usage_columns(out)
    assert complete.equals(out)


def test_estimate_is_a_bound_where_the_provider_may_write_the_cache_unasked() -> None:
    est = pl.DataFrame({"est": [1_000, 1_001]})
    openai_worst, openai_input = estimate_expr(TIERED, pl.col("est"), pl.lit(100),
                                               provider="openai")
    other_worst, other_input = estimate_expr(TIERED, pl.col("est"), pl.lit(100),
                                             provider="anthropic")
    got = est.select(
        openai_worst.alias("ow"), openai_input.alias("oi"),
        other_worst.alias("aw"), other_input.alias("ai"),
    )
    # OpenAI: input at max(input, cache_write) = 1.25 (base) / 2.5 (first tier)
    assert [usd(v) for v in got["oi"]] == [usd(1_000 * 1.25 / 1e6), usd(1_001 * 2.5 / 1e6)]
    assert [usd(v) for v in got["ow"]] == [
        usd((1_000 * 1.25 + 100 * 10.0) / 1e6), usd((1_001 * 2.5 + 100 * 20.0) / 1e6)
    ]
    # The bound never drops below the input rate, whatever the cache-write rate is.
    cheap_write = Price(input=2.0, output=1.0, cache_write=0.5)
    worst, input_usd = estimate_expr(cheap_write, pl.col("est"), pl.lit(0), provider="openai")
    assert [usd(v) for v in est.select(input_usd).to_series()] == [
        usd(1_000 * 2.0 / 1e6), usd(1_001 * 2.0 / 1e6)
    ]
    # Anthropic writes only blocks marked for caching: the input rate
    assert [usd(v) for v in got["ai"]] == [usd(1_000 * 1.0 / 1e6), usd(1_001 * 2.0 / 1e6)]
    assert [usd(v) for v in got["aw"]] == [
        usd((1_000 * 1.0 + 100 * 10.0) / 1e6), usd((1_001 * 2.0 + 100 * 20.0) / 1e6)
    ]


def test_overrides_coerce_tuples_and_mappings_and_refuse_anything_else() -> None:
    assert _coerce("m", (0.5, 1.5)) == Price(input=0.5, output=1.5)
    assert _coerce("m", {"input": 1, "output": 2, "cached_input": 0.1, "cache_write": 1.25}) == (
        Price(input=1.0, output=2.0, cached_input=0.1, cache_write=1.25)
    )
    assert _coerce("m", {"input": 1, "output": 2}) == Price(input=1.0, output=2.0)
    given = Price(input=9.0, output=9.0, source="mine")
    assert _coerce("m", given) is given
    for bad in ((1.0,), (1.0, 2.0, 3.0), {"input": 1.0}, "cheap"):
        with pytest.raises(ConfigError) as err:
            _coerce("my-model", bad)  # type: ignore[arg-type]
        assert str(err.value) == (
            f"prices['my-model'] = {bad!r} is not a price; give (input_usd_per_mtok, "
            "output_usd_per_mtok) or {'input': ..., 'output': ..., 'cached_input': ..., "
            "'cache_write': ...}"
        )
    with pytest.raises(ConfigError) as err:
        _coerce("m", (-1, 2))
    assert str(err.value) == (
        "prices['m'] input must be a finite number >= 0 (USD per million tokens), got -1"
    )
    with pytest.raises(ConfigError) as err:
        _coerce("m", (1, "x"))
    assert str(err.value) == (
        "prices['m'] output must be a finite number >= 0 (USD per million tokens), got 'x'"
    )
    good = {"input": 1, "output": 2, "cached_input": 0.1, "cache_write": 1.25}
    for rate in good:
        with pytest.raises(ConfigError) as err:
            _coerce("m", {**good, rate: -1})
        assert str(err.value) == (
            f"prices['m'] {rate} must be a finite number >= 0 (USD per million tokens), got -1"
        )


def test_table_prefers_overrides_and_names_the_fix_for_unknown_models() -> None:
    table = PriceTable({"gpt-4.1-mini": (7.0, 8.0), "house-model": (1.0, 2.0)})
    assert table.get("openai", "gpt-4.1-mini") == Price(input=7.0, output=8.0)
    assert table.get("anthropic", "house-model") == Price(input=1.0, output=2.0)
    assert table.get("openai", "no-such-model-xyz") is None
    assert table.require("openai", "house-model", "the cost cap") == Price(1.0, 2.0)
    with pytest.raises(PriceError) as err:
        table.require("openai", "no-such-model-xyz", "max_cost_usd")
    assert str(err.value) == (
        "no batch price is known for model 'no-such-model-xyz' (openai), and max_cost_usd "
        "needs one; pass prices={'no-such-model-xyz': (input_usd_per_mtok, "
        "output_usd_per_mtok)}"
    )
    assert PriceTable().get("openai", "gpt-4.1-mini") == _lookup("openai", "gpt-4.1-mini")
    # A price is looked up at the provider the row goes to, not at whoever lists the name.
    assert PriceTable().get("anthropic", "claude-haiku-4-5") is not None
    assert PriceTable().get("openai", "claude-haiku-4-5") is None


def test_database_prices_are_the_batch_rates_per_provider() -> None:
    # genai-prices batch rates (half the real-time ones), with each provider's own id.
    assert _lookup("openai", "gpt-4.1-mini") == Price(
        input=0.2, output=0.8, cached_input=0.1, source="genai-prices:gpt-4.1-mini"
    )
    # claude-haiku-5-5: $0.10/$0.50 per MTok up to 100k input, $0.50/$2.50 above (cache
    # read 0.1x, write 1.25x of input), halved for batches.
    haiku = _lookup("anthropic", "claude-haiku-5-5")
    assert haiku == Price(
        input=0.05, output=0.25, cached_input=0.005, cache_write=0.0625,
        source="genai-prices:claude-haiku-5-5",
        tiers=(PriceTier(100_000, 0.25, 1.25, cached_input=0.025, cache_write=0.3125),),
    )
    gemini = _lookup("gemini", "gemini-2.5-pro")
    assert gemini is not None and gemini.source == "genai-prices:gemini-2.5-pro"
    assert (gemini.input, gemini.output, gemini.cached_input) == (0.625, 5.0, 0.125)
    assert gemini.tiers == (PriceTier(200_000, 1.25, 7.5, cached_input=0.25),)
    assert _lookup("openai", "no-such-model-xyz") is None


def test_rate_at_follows_genai_prices_tier_rule() -> None:
    tiered = TieredPrices(base=Decimal("1.5"), tiers=[Tier(start=100, price=Decimal("3")),
                                                      Tier(start=500, price=Decimal("6"))])
    assert [_rate_at(tiered, n) for n in (0, 100, 101, 500, 501)] == [1.5, 1.5, 3.0, 3.0, 6.0]
    assert _rate_at(Decimal("0.25"), 10**9) == 0.25
    assert _rate_at(None, 5) is None


def test_price_from_genai_makes_a_tier_at_every_threshold_of_any_rate() -> None:
    model_price = ModelPrice(
        input_mtok=TieredPrices(base=Decimal("1"), tiers=[Tier(start=100, price=Decimal("2"))]),
        output_mtok=TieredPrices(base=Decimal("10"),
                                 tiers=[Tier(start=300, price=Decimal("30"))]),
        cache_read_mtok=Decimal("0.1"),
        cache_write_mtok=None,
    )
    price = price_from_genai(model_price, "genai-prices:x")
    assert price == Price(
        input=1.0, output=10.0, cached_input=0.1, cache_write=None, source="genai-prices:x",
        tiers=(
            PriceTier(above=100, input=2.0, output=10.0, cached_input=0.1, cache_write=None),
            PriceTier(above=300, input=2.0, output=30.0, cached_input=0.1, cache_write=None),
        ),
    )
    assert usd(price.cost(input_tokens=301, output_tokens=1)) == usd((301 * 2.0 + 30.0) / 1e6)
    empty = price_from_genai(ModelPrice(), "genai-prices:free")
    assert empty == Price(input=0.0, output=0.0, source="genai-prices:free")
    # A rate the model does not list (an embedding model's output) bills 0 in every tier.
    embedding = price_from_genai(
        ModelPrice(input_mtok=TieredPrices(base=Decimal("1"),
                                           tiers=[Tier(start=100, price=Decimal("2"))])),
        "genai-prices:e",
    )
    assert embedding.tiers == (PriceTier(above=100, input=2.0, output=0.0),)
    output_only = price_from_genai(
        ModelPrice(output_mtok=TieredPrices(base=Decimal("5"),
                                            tiers=[Tier(start=100, price=Decimal("6"))])),
        "genai-prices:o",
    )
    assert output_only.tiers == (PriceTier(above=100, input=0.0, output=6.0),)


def test_realtime_doubles_every_rate_of_an_override_tiers_and_cache_rates_included() -> None:
    """A ``prices=`` override is a batch price; its realtime price doubles each rate.

    Cached input and cache writes included: priced at the batch rate in a realtime call,
    they would bill half what the provider bills and the cap would count too little.
    """
    from batchata_df.cost import Price, PriceTable, PriceTier

    batch_price = Price(
        input=1.0, output=2.0, cached_input=0.1, cache_write=1.25, source="override",
        tiers=(PriceTier(200_000, 2.0, 3.0, 0.2, 2.5), PriceTier(500_000, 4.0, 6.0)),
    )  # fmt: skip
    table = PriceTable({"m": batch_price})
    live = table.realtime().get("openai", "m")
    assert live is not None
    assert (live.input, live.output, live.cached_input, live.cache_write) == (2.0, 4.0, 0.2, 2.5)
    assert [(t.above, t.input, t.output, t.cached_input, t.cache_write) for t in live.tiers] == [
        (200_000, 4.0, 6.0, 0.4, 5.0), (500_000, 8.0, 12.0, None, None),
    ]  # fmt: skip
    again = table.realtime().batch().get("openai", "m")
    assert again is not None and (again.input, again.cached_input, again.tiers) == (
        1.0, 0.1, batch_price.tiers,
    )  # fmt: skip
    # The mapping form, as users write it.
    mapped = PriceTable({"m": {"input": 1, "output": 2, "cached_input": 0.1, "cache_write": 1.25}})
    rt = mapped.realtime().get("openai", "m")
    assert rt is not None and (rt.cached_input, rt.cache_write) == (0.2, 2.5)


_TIERED = Price(1.0, 4.0, tiers=(PriceTier(200_000, 2.0, 8.0),))


@pytest.mark.parametrize(
    ("after", "same"),
    [
        (Price(1.0, 4.0, tiers=(PriceTier(200_000, 3.0, 8.0),)), False),  # a tier's rate
        (Price(1.0, 4.0, tiers=(PriceTier(128_000, 2.0, 8.0),)), False),  # a threshold
        (Price(1.0, 4.0, tiers=(PriceTier(200_000, 2.0, 8.0, cache_write=2.5),)), False),
        # A cache rate left out is the input rate (Price.rate, estimate_expr): the same
        # bill, and only the source differs: the same terms.
        (Price(1.0, 4.0, 1.0, 1.0, "other", (PriceTier(200_000, 2.0, 8.0, 2.0, 2.0),)), True),
    ],
)
def test_terms_differ_where_the_rates_billed_differ(after: Price, same: bool) -> None:
    # PriceTable.terms decides whether a capped call running past midnight prices its
    # unsent jobs again: every rate of every tier, and the tiers' thresholds, count.
    from datetime import date

    class Dated(PriceTable):
        def get(self, provider: str, model: str, on: date | None = None) -> Price | None:
            assert on is not None
            return after if on >= date(2026, 12, 1) else _TIERED

    table = Dated()
    before, later = (table.terms("openai", "m", date(2026, 11, d)) for d in (27, 28))
    assert before == later  # the windows (to 11-28, 11-29) both before the change
    changed = table.terms("openai", "m", date(2026, 12, 2))
    assert (changed == before) is same
