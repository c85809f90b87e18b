"""Batches the client makes stay within what each provider takes, as the emulator enforces it.

OpenAI takes at most 50,000 requests and 200 MB per batch input file, Anthropic at most
100,000 requests and 256 MB per batch (the emulator's defaults, from the providers' pages:
``batchata_df.emulator.openai_api`` and ``anthropic_api``). A batch over either is refused
whole, so the client splits before sending (``engine.planning.split_sizes``, from each
provider's ``max_requests`` and ``max_bytes``).
"""

from __future__ import annotations

from collections import Counter

import polars as pl
import pytest

from batchata_df import batch_llm
from batchata_df.providers.anthropic import AnthropicProvider
from batchata_df.providers.openai import OpenAIProvider


def test_the_client_limits_are_within_the_limits_the_emulator_enforces(emu) -> None:
    settings = emu.configure()
    openai, anthropic = settings["openai"], settings["anthropic"]
    assert OpenAIProvider.max_requests == openai["max_requests"] == 50_000
    assert OpenAIProvider.max_bytes <= openai["max_file_bytes"]
    assert AnthropicProvider.max_requests == anthropic["max_requests"] == 100_000
    assert AnthropicProvider.max_bytes <= anthropic["max_bytes"]


@pytest.mark.slow
def test_50001_openai_rows_go_in_two_batches_none_over_50000_requests(emu, tmp_path) -> None:
    n = 50_001  # one more than OpenAI takes in a batch
    out = pl.DataFrame({"i": [f"row {i}" for i in range(n)]}).pipe(
        batch_llm, model="gpt-4.1-mini", prompt="{i}", state=tmp_path / "s", progress=False
    )
    assert out.height == n
    assert out["_status"].value_counts().rows() == [("completed", n)]
    sizes = Counter(e["batch_id"] for e in emu.billing())
    assert sorted(sizes.values()) == [1, 50_000]
