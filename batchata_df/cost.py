"""Prices, and usage to cost.

Prices come from `genai-prices <https://pypi.org/project/genai-prices/>`_ (a maintained,
offline price database that knows the providers' batch rates through its
``price_context={"processing": "batch"}``), unless the caller overrides them with
``prices={"model": (input_usd_per_mtok, output_usd_per_mtok)}``.

Meaning of the normalized usage (the same for every provider):

* ``input_tokens`` -- every prompt token billed, cached ones included;
* ``cached_tokens`` -- the part of ``input_tokens`` read from the provider's prompt cache,
  billed at the cached rate where the provider reports it;
* ``output_tokens`` -- every generated token billed (reasoning/thinking included).

Tiered prices (some models bill long prompts at a higher rate) are not modelled: the base
tier is used, which is documented as a limitation of estimates and costs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import polars as pl

from batchata_df.errors import ConfigError, PriceError

__all__ = ["Price", "PriceTable", "cost_expr"]

_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google"}


@dataclass(frozen=True)
class Price:
    """Batch prices of one model, in USD per million tokens.

    Examples
    --------
    >>> p = Price(input=0.2, output=0.8)
    >>> round(p.cost(input_tokens=1_000_000, output_tokens=500_000), 6)
    0.6
    """

    input: float
    output: float
    cached_input: float | None = None
    source: str = "override"

    def cost(self, *, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        """Cost in USD of one usage record."""
        cached_rate = self.cached_input if self.cached_input is not None else self.input
        uncached = max(input_tokens - cached_tokens, 0)
        return (
            uncached * self.input + cached_tokens * cached_rate + output_tokens * self.output
        ) / 1e6


PriceOverride = Price | tuple[float, float] | Mapping[str, float]


def _coerce(model: str, value: PriceOverride) -> Price:
    if isinstance(value, Price):
        return value
    from batchata_df.validate import check_price_value as num

    if isinstance(value, tuple) and len(value) == 2:
        return Price(input=num(model, "input", value[0]), output=num(model, "output", value[1]))
    if isinstance(value, Mapping) and {"input", "output"} <= set(value):
        cached = value.get("cached_input")
        return Price(
            input=num(model, "input", value["input"]),
            output=num(model, "output", value["output"]),
            cached_input=None if cached is None else num(model, "cached_input", cached),
        )
    msg = (
        f"prices[{model!r}] = {value!r} is not a price; give (input_usd_per_mtok, "
        "output_usd_per_mtok) or {'input': ..., 'output': ..., 'cached_input': ...}"
    )
    raise ConfigError(msg)


@lru_cache(maxsize=256)
def _lookup(provider: str, model: str) -> Price | None:
    try:
        from genai_prices import Usage, calc_price
    except ImportError:  # pragma: no cover - genai-prices is a core dependency
        return None
    provider_id = _PROVIDER_IDS.get(provider, provider)
    ctx = {"processing": "batch"}
    mtok = 1_000_000
    try:
        base = calc_price(
            Usage(input_tokens=mtok, output_tokens=mtok),
            model_ref=model,
            provider_id=provider_id,
            price_context=ctx,
        )
        cached = calc_price(
            Usage(input_tokens=mtok, cache_read_tokens=mtok, output_tokens=0),
            model_ref=model,
            provider_id=provider_id,
            price_context=ctx,
        )
    except LookupError:
        return None
    return Price(
        input=float(base.input_price),
        output=float(base.output_price),
        cached_input=float(cached.input_price),
        source=f"genai-prices:{base.model.id}",
    )


class PriceTable:
    """Batch prices per model, from overrides first, then genai-prices.

    Parameters
    ----------
    overrides
        ``{model: (input_usd_per_mtok, output_usd_per_mtok)}``; wins over the database.

    Examples
    --------
    >>> t = PriceTable({"my-model": (1.0, 2.0)})
    >>> t.get("openai", "my-model").output
    2.0
    >>> t.get("openai", "gpt-4.1-mini").input  # from genai-prices, batch rate
    0.2
    """

    def __init__(self, overrides: Mapping[str, PriceOverride] | None = None) -> None:
        self._overrides = {m: _coerce(m, v) for m, v in (overrides or {}).items()}

    def get(self, provider: str, model: str) -> Price | None:
        """The price of ``model``, or ``None`` when nothing is known."""
        if model in self._overrides:
            return self._overrides[model]
        return _lookup(provider, model)

    def require(self, provider: str, model: str, why: str) -> Price:
        """The price of ``model``; raise :class:`PriceError` naming the fix if unknown."""
        price = self.get(provider, model)
        if price is None:
            msg = (
                f"no batch price is known for model {model!r} ({provider}), and {why} needs "
                f"one; pass prices={{{model!r}: (input_usd_per_mtok, output_usd_per_mtok)}}"
            )
            raise PriceError(msg)
        return price


def cost_expr(price: Price | None) -> pl.Expr:
    """Per-row cost in USD from the ``input_tokens``, ``cached_tokens``, ``output_tokens``.

    A row without usage (the request never ran) costs 0; an unknown price gives null.

    Examples
    --------
    >>> df = pl.DataFrame({"input_tokens": [1000, None], "output_tokens": [500, None],
    ...                    "cached_tokens": [0, None]})
    >>> df.select(cost_expr(Price(input=1.0, output=2.0))).to_series().to_list()
    [0.002, 0.0]
    """
    if price is None:
        return pl.lit(None, dtype=pl.Float64)
    cached_rate = price.cached_input if price.cached_input is not None else price.input
    has_usage = pl.col("input_tokens").is_not_null() | pl.col("output_tokens").is_not_null()
    cached = pl.col("cached_tokens").fill_null(0)
    uncached = (pl.col("input_tokens").fill_null(0) - cached).clip(lower_bound=0)
    cost = (
        uncached * price.input
        + cached * cached_rate
        + pl.col("output_tokens").fill_null(0) * price.output
    ) / 1e6
    return pl.when(has_usage).then(cost).otherwise(pl.lit(0.0))
