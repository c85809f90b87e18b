"""Prices, and usage to cost.

Prices come from `genai-prices <https://pypi.org/project/genai-prices/>`_ (a maintained,
offline price database that knows the providers' batch rates through its
``price_context={"processing": "batch"}``), unless the caller overrides them with
``prices={"model": (input_usd_per_mtok, output_usd_per_mtok)}``.

Meaning of the normalized usage (the same for every provider):

* ``input_tokens`` -- every prompt token billed, cached ones and cache writes included;
* ``cached_tokens`` -- the part of ``input_tokens`` read from the provider's prompt cache
  (OpenAI ``prompt_tokens_details.cached_tokens``, Anthropic
  ``cache_read_input_tokens``, Gemini ``cachedContentTokenCount``), billed at the cache-read
  rate;
* ``cache_write_tokens`` -- the part of ``input_tokens`` written to the prompt cache
  (OpenAI ``prompt_tokens_details.cache_write_tokens``, openai 3.57
  ``types/completion_usage.py``; Anthropic ``cache_creation_input_tokens``), billed at the
  cache-write rate (Anthropic 1.25x input; newer OpenAI models list one too);
* ``output_tokens`` -- every generated token billed (reasoning/thinking included).

Price tiers
-----------
Some models bill a whole request at a higher rate when its prompt is long
(gemini-2.5-pro above 200k input tokens, gpt-5.4+ above 272k, ...). genai-prices models
this as :class:`genai_prices.types.TieredPrices`: a base price and tiers ``(start,
price)``, where a request whose *total* input tokens exceed ``start`` pays that tier's
price for *all* its tokens of that kind (``genai_prices.types.calc_unit_price``; the
threshold counts cache reads and writes, as genai-prices' ``input_tokens`` includes them).
:class:`Price` keeps those tiers, derived from genai-prices' data, and every cost here is
priced at the tier of the request's own input size: per row, as a Polars expression
(:func:`cost_expr`), never with one rate for the whole run. (claude-sonnet-4-5's tier
above 200k never applied: its 1M-context beta was retired on 2026-04-30, genai-prices'
note on the model, and the model itself on 2026-11-30.)

Batch prices
------------
Where genai-prices has a batch variant of a model (``price_context={"processing":
"batch"}``), it is used as is, cache rates included: it is each provider's published batch
table. Some of those keep cache reads at the standard rate -- Gemini 2.5, 3 Flash Preview
and 3.1 Pro Preview ("context caching stays at the standard rate" / "Same as Standard"),
OpenAI gpt-4.1, gpt-4o, o3 and o4-mini ("The Batch table publishes no cached-input rate,
so cached input keeps the standard rate") -- and gemini-3.5-flash-lite lists $0.02 (not
half of $0.03); genai-prices' ``price_comments`` on each model say so.

genai-prices 0.2.3 has no batch variant for some models it lists (gemini-3.5-flash,
gemini-3.7-flash, gemini-3-pro-preview, gemini-2.0-flash, gpt-5.3, claude-opus-4-1, ...):
asked for the batch price, it answers the standard one, and a run would be priced (and
capped) at twice what the provider bills. For those, :func:`batch_discounted` applies
:data:`BATCH_DISCOUNT` to *every* token rate -- input, output, cache read and cache
write -- on every provider, the rule each provider's batch pricing follows for its current
models:

* Anthropic: "all usage is charged at 50% of the standard API prices"
  (https://docs.claude.com/en/docs/build-with-claude/batch-processing#pricing);
  genai-prices' Anthropic note: "Prompt caching multipliers stack with the batch
  discount, so batch cache writes and cache reads are also 50% of standard".
* OpenAI: "50% cost discount compared to synchronous APIs"
  (https://platform.openai.com/docs/guides/batch). Every model whose Batch table
  (https://developers.openai.com/api/docs/pricing, as genai-prices records it, verified
  2026-10-14) lists a cached-input rate has it at half the standard one -- gpt-5, 5.1,
  5.2, 5.4 ($0.13, the page's rounding of $0.125), 5.5, 5.6-*, 6-* -- and the cache-write
  rate too (gpt-5.6-*, gpt-6-*). The models without a batch variant are of that era.
* Gemini: "50% of the standard cost" (https://ai.google.dev/gemini-api/docs/batch-mode;
  "Batch: 50% discount", https://ai.google.dev/gemini-api/docs/optimization). The Batch
  tab of https://ai.google.dev/gemini-api/docs/pricing, as genai-prices records it for
  the current models (gemini-3.1-flash-lite, 3.6-flash, 3.8-flash, 4-argon): "Batch
  halves input, output and context caching". gemini-3.5-flash and 3.7-flash are siblings
  of 3.6/3.8 Flash; gemini-3-pro-preview and 2.0-flash are shut down (genai-prices'
  notes), so no request to them is billed.

The price's ``source`` then says so (``genai-prices:<model> (standard x 0.5)``). The
emulator bills by the same rule (:mod:`batchata_df.emulator.pricing`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

import polars as pl

from batchata_df.errors import ConfigError, PriceError

__all__ = [
    "BATCH_DISCOUNT",
    "Price",
    "PriceTable",
    "PriceTier",
    "batch_discounted",
    "cost_expr",
    "highest",
    "window_days",
]

_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google"}

_RATE_FIELDS = ("input", "output", "cached_input", "cache_write")


@dataclass(frozen=True)
class PriceTier:
    """The rates of a request whose input tokens exceed ``above``, in USD per million.

    ``None`` for ``cached_input`` / ``cache_write`` means "the ``input`` rate".
    """

    above: int
    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None


@dataclass(frozen=True)
class Price:
    """Batch prices of one model, in USD per million tokens, with its long-prompt tiers.

    ``input``, ``output``, ``cached_input`` and ``cache_write`` are the base rates (a
    request at or below every tier's threshold); ``tiers`` (ascending ``above``) replace
    all of them for a request whose input tokens exceed ``above``.

    Examples
    --------
    >>> p = Price(input=0.2, output=0.8)
    >>> round(p.cost(input_tokens=1_000_000, output_tokens=500_000), 6)
    0.6
    >>> t = Price(input=1.5, output=7.5, tiers=(PriceTier(200_000, 3.0, 11.25),))
    >>> t.at(200_000).input, t.at(200_001).output
    (1.5, 11.25)
    """

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    source: str = "override"
    tiers: tuple[PriceTier, ...] = ()

    def at(self, input_tokens: int) -> Price:
        """The flat price of one request with ``input_tokens`` prompt tokens."""
        for tier in reversed(self.tiers):
            if input_tokens > tier.above:
                return Price(
                    input=tier.input,
                    output=tier.output,
                    cached_input=tier.cached_input,
                    cache_write=tier.cache_write,
                    source=self.source,
                )
        return replace(self, tiers=())

    def rate(self, name: str) -> float:
        """The base rate ``name`` (cached_input and cache_write default to input)."""
        value = getattr(self, name)
        return float(self.input if value is None else value)

    def rate_expr(self, name: str, input_tokens: pl.Expr) -> pl.Expr:
        """Rate ``name`` per row, at the tier each row's ``input_tokens`` falls in.

        Examples
        --------
        >>> t = Price(input=1.5, output=7.5, tiers=(PriceTier(200_000, 3.0, 11.25),))
        >>> df = pl.DataFrame({"n": [10, 200_001]})
        >>> df.select(t.rate_expr("input", pl.col("n"))).to_series().to_list()
        [1.5, 3.0]
        """
        if not self.tiers:
            return pl.lit(self.rate(name), dtype=pl.Float64)
        expr: Any = pl
        for tier in reversed(self.tiers):  # highest threshold first: the first match wins
            value = getattr(tier, name)
            rate = tier.input if value is None else value
            expr = expr.when(input_tokens > tier.above).then(pl.lit(float(rate)))
        return expr.otherwise(pl.lit(self.rate(name))).cast(pl.Float64)  # type: ignore[no-any-return]

    def cost(
        self,
        *,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> float:
        """Cost in USD of one usage record, at the tier of its input size."""
        flat = self.at(input_tokens)
        uncached = max(input_tokens - cached_tokens - cache_write_tokens, 0)
        return (
            uncached * flat.input
            + cached_tokens * flat.rate("cached_input")
            + cache_write_tokens * flat.rate("cache_write")
            + output_tokens * flat.output
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
        write = value.get("cache_write")
        return Price(
            input=num(model, "input", value["input"]),
            output=num(model, "output", value["output"]),
            cached_input=None if cached is None else num(model, "cached_input", cached),
            cache_write=None if write is None else num(model, "cache_write", write),
        )
    msg = (
        f"prices[{model!r}] = {value!r} is not a price; give (input_usd_per_mtok, "
        "output_usd_per_mtok) or {'input': ..., 'output': ..., 'cached_input': ..., "
        "'cache_write': ...}"
    )
    raise ConfigError(msg)


# genai-prices price keys (``genai_prices/data_units.py``) behind each of our rates.
_PRICE_KEYS = {
    "input": "input_mtok",
    "output": "output_mtok",
    "cached_input": "cache_read_mtok",
    "cache_write": "cache_write_mtok",
}


def _rate_at(value: Any, input_tokens: int) -> float | None:
    """One genai-prices price (``Decimal`` or ``TieredPrices``) for a request of that size.

    The same rule as ``genai_prices.types.calc_unit_price``: the highest tier whose
    ``start`` the request's input tokens exceed, else the base price.
    """
    from genai_prices.types import TieredPrices

    if value is None:
        return None
    if isinstance(value, TieredPrices):
        chosen: Decimal = value.base
        for tier in reversed(value.tiers):
            if input_tokens > tier.start:
                chosen = tier.price
                break
        return float(chosen)
    return float(value)


def price_from_genai(model_price: Any, source: str) -> Price:
    """A :class:`Price` with tiers from one resolved ``genai_prices.types.ModelPrice``.

    Every threshold of any of the four rates starts a :class:`PriceTier` in which each
    rate is evaluated just above it, so a model whose rates are tiered at different
    thresholds is still priced exactly.
    """
    from genai_prices.types import TieredPrices

    values = {name: getattr(model_price, key, None) for name, key in _PRICE_KEYS.items()}
    starts = sorted(
        {t.start for v in values.values() if isinstance(v, TieredPrices) for t in v.tiers}
    )

    def rates(tokens: int) -> dict[str, float | None]:
        return {name: _rate_at(value, tokens) for name, value in values.items()}

    base = rates(0)
    tiers = []
    for start in starts:
        r = rates(start + 1)
        tiers.append(
            PriceTier(
                above=start,
                input=r["input"] or 0.0,
                output=r["output"] or 0.0,
                cached_input=r["cached_input"],
                cache_write=r["cache_write"],
            )
        )
    return Price(
        input=base["input"] or 0.0,
        output=base["output"] or 0.0,
        cached_input=base["cached_input"],
        cache_write=base["cache_write"],
        source=source,
        tiers=tuple(tiers),
    )


BATCH_DISCOUNT = 0.5
"""The batch price as a share of the standard one, on every provider (module docstring)."""

# Rates the batch discount applies to, per provider: every token rate, cache reads and
# writes included (sources in the module docstring, "Batch prices").
_DISCOUNTED = {
    "openai": _RATE_FIELDS,
    "anthropic": _RATE_FIELDS,
    "gemini": _RATE_FIELDS,
}


def batch_discounted(price: Price, provider: str) -> Price:
    """``price`` (a standard price) at the provider's documented batch discount.

    Every token rate is halved, cache reads and writes included (module docstring).

    Examples
    --------
    >>> p = batch_discounted(Price(input=1.5, output=9.0, cached_input=0.15), "gemini")
    >>> p.input, p.output, p.cached_input
    (0.75, 4.5, 0.075)
    >>> batch_discounted(Price(input=1.75, output=14.0, cached_input=0.175), "openai").cached_input
    0.0875
    >>> batch_discounted(Price(input=3.0, output=15.0, cached_input=0.3), "anthropic").cached_input
    0.15
    """
    names = _DISCOUNTED.get(provider, _RATE_FIELDS)

    def cut(rates: Any) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name in _RATE_FIELDS:
            value = getattr(rates, name)  # None stays None: "the (discounted) input rate"
            out[name] = value * BATCH_DISCOUNT if name in names and value is not None else value
        return out

    tiers = tuple(PriceTier(above=t.above, **cut(t)) for t in price.tiers)  # type: ignore[arg-type]
    base = cut(price)
    return replace(
        price,
        input=float(base["input"] or 0.0),
        output=float(base["output"] or 0.0),
        cached_input=base["cached_input"],
        cache_write=base["cache_write"],
        tiers=tiers,
        source=f"{price.source} (standard x {BATCH_DISCOUNT})",
    )


def _lookup(
    provider: str, model: str, processing: str = "batch", on: date | None = None
) -> Price | None:
    """genai-prices' price of ``model`` on ``on`` (default :func:`batchata_df.models.today`).

    genai-prices dates some prices (``StartDateConstraint``: gemini-3.7-flash's rise on
    2027-01-01, ...); they are read at the date the shutdown tables are read at (pinned by
    ``BATCHATA_DF_TODAY``, else today's UTC date), so a pinned run prices as on that day.
    """
    from batchata_df.models import today

    return _lookup_on(provider, model, processing, today() if on is None else on)


@lru_cache(maxsize=256)
def _lookup_on(provider: str, model: str, processing: str, day: date) -> Price | None:
    try:
        from genai_prices import Usage, calc_price
    except ImportError:  # pragma: no cover - genai-prices is a core dependency
        return None
    provider_id = _PROVIDER_IDS.get(provider, provider)
    now = datetime.combine(day, datetime.now(tz=UTC).time(), UTC)
    try:
        # calc_price resolves the model, the batch price variant and the dated price
        # the same way genai-prices bills; its ``model_price`` is that resolved data.
        # Realtime requests (mode="realtime") pay the standard price (no price context).
        calc = calc_price(
            Usage(input_tokens=1, output_tokens=1),
            model_ref=model,
            provider_id=provider_id,
            price_context={"processing": "batch"},
            genai_request_timestamp=now,
        )
        standard = calc_price(
            Usage(input_tokens=1, output_tokens=1),
            model_ref=model,
            provider_id=provider_id,
            genai_request_timestamp=now,
        )
    except LookupError:
        return None
    if getattr(calc.model_price, "input_mtok", None) is None:
        return None
    if processing != "batch":  # realtime requests pay the standard price
        return price_from_genai(standard.model_price, f"genai-prices:{standard.model.id}")
    price = price_from_genai(calc.model_price, f"genai-prices:{calc.model.id}")
    if calc.model_price == standard.model_price:
        # No batch variant in genai-prices: the standard price came back. Apply the
        # provider's documented batch discount instead of billing twice the real price.
        return batch_discounted(price, provider)
    return price


def highest(a: Price, b: Price) -> Price:
    """The price charging at least as much as ``a`` and ``b`` for every request.

    Each rate, at every input size where either price starts a tier, is the higher of the
    two (a missing cache rate read as the input rate it means): the worst case of a
    request that may be billed at either.

    Examples
    --------
    >>> a = Price(input=1.0, output=4.0, source="a")
    >>> b = Price(input=2.0, output=3.0, cached_input=0.5,
    ...           tiers=(PriceTier(200_000, 4.0, 6.0),), source="b")
    >>> h = highest(a, b)
    >>> h.input, h.output, h.cached_input, h.at(300_000).output, h.source
    (2.0, 4.0, 1.0, 6.0, 'max(a, b)')
    """
    if a == b:
        return a
    aboves = sorted({t.above for t in (*a.tiers, *b.tiers)})

    def top(tokens: int) -> dict[str, float]:
        x, y = a.at(tokens), b.at(tokens)
        return {name: max(x.rate(name), y.rate(name)) for name in _RATE_FIELDS}

    base = top(0)
    tiers = tuple(PriceTier(above, **top(above + 1)) for above in aboves)
    source = a.source if a.source == b.source else f"max({a.source}, {b.source})"
    return Price(**base, source=source, tiers=tiers)


def window_days(provider: str, processing: str, start: date) -> list[date]:
    """The days a request sent on ``start`` may run on: what it may be billed at.

    A batch may run up to :data:`batchata_df.models.BATCH_WINDOW_HOURS` after it is sent
    (sent at 23:59, its last requests run that many hours later, on the day after the
    window's last whole day); a realtime request runs when sent, and is taken to finish
    within a day: sent at 23:59 it may run (and be billed) after midnight, so the next day
    counts too. A realtime call running longer than that (a retry loop stretching past the
    next midnight) is not covered: a price rise two days on is not reserved.

    Examples
    --------
    >>> [d.isoformat() for d in window_days("gemini", "batch", date(2026, 12, 31))]
    ['2026-12-31', '2027-01-01', '2027-01-02']
    >>> [d.isoformat() for d in window_days("openai", "batch", date(2026, 12, 31))]
    ['2026-12-31', '2027-01-01']
    >>> [d.isoformat() for d in window_days("gemini", "realtime", date(2026, 12, 31))]
    ['2026-12-31', '2027-01-01']
    """
    from batchata_df.models import BATCH_WINDOW_HOURS

    if processing != "batch":
        return [start, start + timedelta(days=1)]
    hours = BATCH_WINDOW_HOURS.get(provider, max(BATCH_WINDOW_HOURS.values()))
    return [start + timedelta(days=k) for k in range(-(-hours // 24) + 1)]


REALTIME_FACTOR = 1.0 / BATCH_DISCOUNT
"""Standard (realtime) price over batch price: OpenAI, Anthropic and Google all document
their batch APIs at 50% of the standard price. Used only for a model whose price the
caller overrides (``prices=`` gives batch prices); genai-prices knows both prices."""


class PriceTable:
    """Batch (or realtime) prices per model, from overrides first, then genai-prices.

    Parameters
    ----------
    overrides
        ``{model: (input_usd_per_mtok, output_usd_per_mtok)}`` batch prices; win over the
        database.
    processing
        ``"batch"`` (the default) or ``"realtime"``: genai-prices' standard price, and an
        override at :data:`REALTIME_FACTOR` times its batch price.

    Examples
    --------
    >>> t = PriceTable({"my-model": (1.0, 2.0)})
    >>> t.get("openai", "my-model").output
    2.0
    >>> t.get("openai", "gpt-5.4-mini").input  # from genai-prices, batch rate
    0.375
    """

    def __init__(
        self, overrides: Mapping[str, PriceOverride] | None = None, processing: str = "batch"
    ) -> None:
        self._overrides = {m: _coerce(m, v) for m, v in (overrides or {}).items()}
        self.processing = processing

    def realtime(self) -> PriceTable:
        """The same table at realtime (standard) prices.

        Examples
        --------
        >>> t = PriceTable({"my-model": (1.0, 2.0)}).realtime()
        >>> t.get("openai", "my-model").output, t.get("openai", "gpt-5.4-mini").input
        (4.0, 0.75)
        """
        table = PriceTable(processing="realtime")
        table._overrides = dict(self._overrides)
        return table

    def batch(self) -> PriceTable:
        """The same table at batch prices (a realtime call collecting earlier batches).

        Examples
        --------
        >>> t = PriceTable({"my-model": (1.0, 2.0)}).realtime().batch()
        >>> t.get("openai", "my-model").output, t.get("openai", "gpt-5.4-mini").input
        (2.0, 0.375)
        """
        table = PriceTable(processing="batch")
        table._overrides = dict(self._overrides)
        return table

    def get(self, provider: str, model: str, on: date | None = None) -> Price | None:
        """The price of ``model``, or ``None`` when nothing is known.

        ``on``: as on that day (default :func:`batchata_df.models.today`; an override has
        no date). Gemini's ``models/<id>`` is priced as ``<id>`` (the same model:
        google-genai SDK ``_transformers.t_model`` prepends "models/" when absent).
        """
        name = model.removeprefix("models/") if provider == "gemini" else model
        for key in self._keys(provider, model):
            if key in self._overrides:
                price = self._overrides[key]
                return _scaled(price, REALTIME_FACTOR) if self.processing == "realtime" else price
        return _lookup(provider, name, self.processing, on)

    @staticmethod
    def _keys(provider: str, model: str) -> tuple[str, ...]:
        """The override keys naming ``model``: Gemini's ``<id>`` and ``models/<id>`` both."""
        if provider != "gemini":
            return (model,)
        name = model.removeprefix("models/")
        return (model, name, f"models/{name}")

    @staticmethod
    def priced_by(provider: str, model: str) -> frozenset[str]:
        """The ``prices=`` keys that may price requests for ``model``, on any day.

        ``model``'s own (Gemini's ``<id>`` and ``models/<id>`` both), and its successor's
        when the provider routes it to one (:data:`batchata_df.models.SCHEDULED`,
        ``"routed"``): requests that run from the routing date on are billed at the
        successor's price (:meth:`worst`, :meth:`answering`), whatever today's date is.

        Examples
        --------
        >>> for key in sorted(PriceTable.priced_by("gemini", "gemini-2.5-flash")):
        ...     print(key)
        gemini-2.5-flash
        gemini-3.5-flash-lite
        models/gemini-2.5-flash
        models/gemini-3.5-flash-lite
        >>> sorted(PriceTable.priced_by("openai", "gpt-5-mini"))  # its requests fail after
        ['gpt-5-mini']
        """
        from batchata_df.models import scheduled_shutdown

        keys = set(PriceTable._keys(provider, model))
        scheduled = scheduled_shutdown(provider, model)
        if scheduled is not None and scheduled[2] == "routed" and scheduled[1]:
            keys.update(PriceTable._keys(provider, scheduled[1]))
        return frozenset(keys)

    def worst(self, provider: str, model: str, sent: date | None = None) -> Price | None:
        """The highest price a request sent to ``model`` today may be billed at.

        The provider bills a request at the price in force when it runs, and a batch runs
        for up to its window (:func:`window_days`): where genai-prices dates a price change
        (gemini-4-argon on 2026-12-01, Gemini 3.6-3.8 Flash on 2027-01-01, ...) inside it,
        the higher price is taken. A model the provider routes to a successor
        (:data:`batchata_df.models.SCHEDULED`, ``"routed"``) from a date inside the window
        has its requests run from then on billed at the successor's prices (Google's
        deprecations page: "billed at the new model's rates"): those count too, where
        known (an unknown one is priced at ``model``'s, as
        :class:`~batchata_df.engine.ledger.Ledger` prices its rows). ``None`` when
        ``model``'s own price is not known today. What ``max_cost_usd`` reserves.
        ``sent``: as for a request sent on that day instead (default
        :func:`batchata_df.models.today`).

        Examples
        --------
        >>> import os
        >>> from batchata_df.models import TODAY_VAR
        >>> before = os.environ.get(TODAY_VAR, "")
        >>> os.environ[TODAY_VAR] = "2026-12-31"
        >>> t, m = PriceTable(), "gemini-3.7-flash"
        >>> t.get("gemini", m).output, t.worst("gemini", m).output  # doubles on 2027-01-01
        (1.875, 3.75)
        >>> os.environ[TODAY_VAR] = "2027-01-02"
        >>> t.get("gemini", m) == t.worst("gemini", m)
        True
        >>> os.environ[TODAY_VAR] = before
        """
        from batchata_df.models import today

        sent = sent if sent is not None else today()
        own = self.get(provider, model, sent)
        if own is None:
            return None
        name = model.removeprefix("models/") if provider == "gemini" else model
        price: Price | None = None
        for day in window_days(provider, self.processing, sent):
            for answering in self.answering(provider, name, day, sent=sent):
                found = self.get(provider, answering, day)
                if found is None:  # an unpriced successor: its rows are priced at model's
                    found = self.get(provider, model, day) or own
                price = found if price is None else highest(price, found)
        return price

    def answering(
        self, provider: str, model: str, on: date | None = None, *, sent: date | None = None
    ) -> list[str]:
        """The models that may answer a request for ``model`` sent today and run up to ``on``.

        ``model`` itself, and the successor a routed model (:data:`batchata_df.models.SCHEDULED`,
        ``"routed"``) is answered by from its routing date, if that date is not after
        ``on`` (default: the last day of the batch window of a request sent on ``sent``,
        default today: :func:`window_days`). A request sent after the routing date's day
        runs after the routing: the successor alone answers it (on the date itself both
        count: at what time of the day the provider switches is not known; through a
        gateway, a base URL set, both always do: it may still serve the model). The
        successor counts a request by its own rules (a small image is 258 tokens on
        Gemini 2.5, 1,120 on Gemini 3: :func:`batchata_df.tokens.image_tokens`), so what
        ``max_cost_usd`` reserves takes the larger count (``frame.with_estimates``).

        Examples
        --------
        >>> import os
        >>> from batchata_df.models import TODAY_VAR
        >>> before = os.environ.get(TODAY_VAR, "")
        >>> os.environ[TODAY_VAR] = "2026-11-30"  # a 48 h batch runs into 2026-12-01
        >>> PriceTable().answering("gemini", "models/gemini-2.5-flash")
        ['models/gemini-2.5-flash', 'gemini-3.5-flash-lite']
        >>> os.environ[TODAY_VAR] = "2026-11-28"  # its window ends on 2026-11-30
        >>> PriceTable().answering("gemini", "gemini-2.5-flash")
        ['gemini-2.5-flash']
        >>> os.environ[TODAY_VAR] = "2026-12-02"  # sent after the routing date's day
        >>> PriceTable().answering("gemini", "gemini-2.5-flash")
        ['gemini-3.5-flash-lite']
        >>> os.environ[TODAY_VAR] = before
        """
        from batchata_df.models import _custom_endpoint, scheduled_shutdown, today

        window = window_days(provider, self.processing, sent or today())
        last = on if on is not None else window[-1]
        routed = scheduled_shutdown(provider, model)
        if (
            routed is not None
            and routed[2] == "routed"
            and routed[1]
            and date.fromisoformat(routed[0]) <= last
        ):
            if date.fromisoformat(routed[0]) < window[0] and not _custom_endpoint(provider):
                return [routed[1]]
            return [model, routed[1]]
        return [model]

    def terms(self, provider: str, model: str, sent: date) -> tuple[object, ...]:
        """What the cap's estimate of a request for ``model`` sent on ``sent`` depends on.

        Its price that day (the expected cost), the highest price of its window
        (:meth:`worst`: the worst case) and the models that may answer it
        (:meth:`answering`: whose rules count its input). Two days with equal terms give
        equal worst cases (``frame.with_estimates``), so a call running past midnight prices
        its unsent jobs again only when they differ
        (:class:`~batchata_df.engine.planning.Repricer`). The expected cost may still
        differ (a routed model's rows are expected at its successor's price from the
        routing date: gemini-2.5-pro's terms of 2026-11-30 and 12-01 are equal); nothing
        reads it after the call priced its job table but the progress display
        (``RunState.expected_usd``, set once when the engine starts).

        Examples
        --------
        >>> from datetime import date
        >>> t = PriceTable()
        >>> t.terms("openai", "gpt-5.4-mini", date(2026, 11, 28)) == t.terms(
        ...     "openai", "gpt-5.4-mini", date(2026, 11, 29))
        True
        >>> t.terms("gemini", "gemini-4-argon", date(2026, 11, 28)) == t.terms(
        ...     "gemini", "gemini-4-argon", date(2026, 11, 30))  # doubles on 2026-12-01
        False
        """
        return (
            _rates(self.get(provider, model, sent)),
            _rates(self.worst(provider, model, sent)),
            tuple(self.answering(provider, model, sent=sent)),
        )

    def require(self, provider: str, model: str, why: str) -> Price:
        """The price of ``model``; raise :class:`PriceError` naming the fix if unknown."""
        price = self.get(provider, model)
        if price is None:
            msg = (
                f"no {self.processing} price is known for model {model!r} ({provider}), and "
                f"{why} needs "
                f"one; pass prices={{{model!r}: (input_usd_per_mtok, output_usd_per_mtok)}}"
            )
            raise PriceError(msg, model=model, provider=provider, needed_by=why)
        return price


def _rates(price: Price | None) -> tuple[float, ...] | None:
    """What ``price`` bills: its rates and tiers, not where they came from (``source``).

    A cached or cache-write rate left out is read as the input rate (:meth:`Price.rate`).
    """
    if price is None:
        return None
    rates: list[float] = []
    for tier in (price.at(0), *(price.at(t.above + 1) for t in price.tiers)):
        rates += [tier.rate(name) for name in ("input", "output", "cached_input", "cache_write")]
    return (*(float(t.above) for t in price.tiers), *rates)


def _scaled(price: Price, factor: float) -> Price:
    """``price`` with every rate multiplied by ``factor``."""

    def times(value: float | None) -> float | None:
        return None if value is None else value * factor

    tiers = tuple(
        PriceTier(t.above, t.input * factor, t.output * factor, times(t.cached_input),
                  times(t.cache_write))
        for t in price.tiers
    )  # fmt: skip
    return Price(
        input=price.input * factor,
        output=price.output * factor,
        cached_input=times(price.cached_input),
        cache_write=times(price.cache_write),
        source=f"{price.source} x{factor:g} (realtime)",
        tiers=tiers,
    )


def cost_expr(price: Price | None) -> pl.Expr:
    """Per-row cost in USD from the usage columns, each row at its own price tier.

    Reads ``input_tokens``, ``cached_tokens``, ``output_tokens`` and, when the frame has
    it, ``cache_write_tokens`` (use :func:`with_usage_columns` on frames that may lack
    it). A row without usage (the request never ran) costs 0; an unknown price gives
    null. The tier is chosen per row from ``input_tokens`` (vectorised, no Python loop).

    Examples
    --------
    >>> df = pl.DataFrame({"input_tokens": [1000, None], "output_tokens": [500, None],
    ...                    "cached_tokens": [0, None], "cache_write_tokens": [0, None]})
    >>> df.select(cost_expr(Price(input=1.0, output=2.0))).to_series().to_list()
    [0.002, 0.0]
    >>> tiered = Price(input=1.5, output=7.5, tiers=(PriceTier(200_000, 3.0, 11.25),))
    >>> df = pl.DataFrame({"input_tokens": [1_000, 300_000], "output_tokens": [100, 100],
    ...                    "cached_tokens": [0, 0], "cache_write_tokens": [0, 0]})
    >>> df.select(cost_expr(tiered)).to_series().round(6).to_list()
    [0.00225, 0.901125]
    """
    if price is None:
        return pl.lit(None, dtype=pl.Float64)
    inp = pl.col("input_tokens").fill_null(0)
    has_usage = pl.col("input_tokens").is_not_null() | pl.col("output_tokens").is_not_null()
    cached = pl.col("cached_tokens").fill_null(0)
    written = pl.col("cache_write_tokens").fill_null(0)
    uncached = (inp - cached - written).clip(lower_bound=0)
    cost = (
        uncached * price.rate_expr("input", inp)
        + cached * price.rate_expr("cached_input", inp)
        + written * price.rate_expr("cache_write", inp)
        + pl.col("output_tokens").fill_null(0) * price.rate_expr("output", inp)
    ) / 1e6
    return pl.when(has_usage).then(cost).otherwise(pl.lit(0.0))


def with_usage_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with the usage columns :func:`cost_expr` reads, null where missing.

    Examples
    --------
    >>> with_usage_columns(pl.DataFrame({"input_tokens": [1]})).columns
    ['input_tokens', 'output_tokens', 'cached_tokens', 'cache_write_tokens']
    """
    missing = [
        pl.lit(None, dtype=pl.Int64).alias(name)
        for name in ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens")
        if name not in frame.columns
    ]
    return frame.with_columns(missing) if missing else frame


# Providers that may bill a prompt as a cache write without being asked: OpenAI caches
# prompts automatically (https://platform.openai.com/docs/guides/prompt-caching) and
# openai 3.57 reports ``prompt_tokens_details.cache_write_tokens``; genai-prices lists a
# cache-write rate above the input rate for gpt-5.6 and later. Anthropic writes only
# blocks marked ``cache_control`` (we mark none); Gemini's implicit cache has no write fee.
_WRITES_CACHE_UNASKED = frozenset({"openai"})


def estimate_expr(
    price: Price,
    est_input: pl.Expr,
    max_output: pl.Expr,
    *,
    provider: str,
    marked: pl.Expr | None = None,
) -> tuple[pl.Expr, pl.Expr]:
    """Worst-case cost and its input part, per row, at each row's own price tier.

    The tier is chosen from the estimated input tokens. Where the provider may bill a
    prompt as a cache write on its own (OpenAI), or the row's request marks part of its
    prompt for caching (``marked``: Anthropic ``cache_control``, written at 1.25x the input
    rate when the cache misses), the input is priced at the higher of the input and
    cache-write rates, so the worst case stays a bound.

    Examples
    --------
    >>> tiered = Price(input=1.5, output=7.5, tiers=(PriceTier(200_000, 3.0, 11.25),))
    >>> df = pl.DataFrame({"est": [1_000, 250_000]})
    >>> worst, _ = estimate_expr(tiered, pl.col("est"), pl.lit(1_000), provider="anthropic")
    >>> df.select(worst).to_series().round(6).to_list()
    [0.009, 0.76125]
    """
    in_rate = price.rate_expr("input", est_input)
    written = pl.max_horizontal(in_rate, price.rate_expr("cache_write", est_input))
    if provider in _WRITES_CACHE_UNASKED:
        in_rate = written
    elif marked is not None:
        in_rate = pl.when(marked).then(written).otherwise(in_rate)
    input_usd = est_input * in_rate / 1e6
    worst = input_usd + max_output * price.rate_expr("output", est_input) / 1e6
    return worst, input_usd
