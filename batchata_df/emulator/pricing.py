"""What the emulated providers bill for one answered request, in USD.

The emulator's ledger (:meth:`batchata_df.emulator.Emulator.billing`) says *which*
requests were billed; this says *how much* one of them costs, from the usage the emulator
reported for it, the way the providers price it. It is written apart from the client's
:mod:`batchata_df.cost` (it prices with ``genai_prices.calc_price`` directly), so a test can
compare the client's ``_cost_usd`` with what the provider bills.

The rule (sources in :mod:`batchata_df.cost`, "Batch prices"):

* a realtime request pays genai-prices' standard price;
* a batch request pays genai-prices' batch price where it lists one for the model (the
  provider's published batch table, cache rates included as the table gives them);
* otherwise half the standard price of *every* token kind -- input, output, cache reads
  and cache writes: Anthropic "all usage is charged at 50% of the standard API prices"
  (https://docs.claude.com/en/docs/build-with-claude/batch-processing#pricing), OpenAI
  "50% cost discount" (https://platform.openai.com/docs/guides/batch) with the Batch
  table's cached rates at half the standard ones on every model that lists them, Gemini
  "50% of the standard cost" (https://ai.google.dev/gemini-api/docs/batch-mode) with
  "Batch halves input, output and context caching" for its current models.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from batchata_df.emulator import model_rules

__all__ = ["BATCH_SHARE", "billed_usd"]

BATCH_SHARE = Decimal("0.5")
"""A batch request's price over the standard one where no batch table lists the model."""

_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google"}


def billed_usd(
    provider: str,
    model: str,
    *,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
    mode: str = "batch",
    on: date | None = None,
) -> float:
    """USD billed for one request's usage (``input_tokens`` counts cache reads and writes).

    Examples
    --------
    >>> billed_usd("openai", "gpt-5.3", input_tokens=1_000_000, output_tokens=0,
    ...            cached_tokens=1_000_000)  # standard cached input $0.175 / MTok, halved
    0.0875
    >>> billed_usd("openai", "gpt-5.3", input_tokens=1_000_000, output_tokens=0,
    ...            cached_tokens=1_000_000, mode="realtime")
    0.175
    """
    from genai_prices import Usage, calc_price

    usage = Usage(
        input_tokens=input_tokens,
        cache_read_tokens=cached_tokens,
        cache_write_tokens=cache_write_tokens,
        output_tokens=output_tokens,
    )
    provider_id = _PROVIDER_IDS.get(provider, provider)
    # genai-prices' dated prices are read at ``on``, the day the request ran (the
    # emulator's ``today`` then, server.LedgerEntry.days), else the emulator's date now
    # (model_rules.today: BATCHATA_DF_TODAY, else today's UTC date).
    day = model_rules.today() if on is None else on
    now = datetime.combine(day, datetime.now(tz=UTC).time(), UTC)
    standard = calc_price(
        usage, model_ref=model, provider_id=provider_id, genai_request_timestamp=now
    )
    if mode == "realtime":
        return float(standard.total_price)
    batch = calc_price(
        usage,
        model_ref=model,
        provider_id=provider_id,
        price_context={"processing": "batch"},
        genai_request_timestamp=now,
    )
    if batch.model_price != standard.model_price:  # the model's batch table
        return float(batch.total_price)
    return float(standard.total_price * BATCH_SHARE)
