"""The demo: a bundled review dataset through ``batch_llm`` on the bundled emulator.

Run it with ``python3 dev.py demo`` (sets everything up) or ``python -m batchata_df.demo``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, Field

from batchata_df import batch_llm
from batchata_df.emulator import Emulator


class Review(BaseModel):
    """What we want to know about each review."""

    sentiment: Literal["positive", "negative", "neutral"]
    rating: int = Field(ge=1, le=5, description="1 (worst) to 5 (best)")
    summary: str = Field(description="one short sentence")
    issues: list[str] = Field(description="product problems mentioned, if any")


def load_reviews() -> pl.DataFrame:
    """The bundled dataset: 40 short product reviews."""
    data = resources.files("batchata_df").joinpath("data/reviews.csv").read_bytes()
    return pl.read_csv(data)


BANNER = """\
================================================================================
 batchata-df demo -- the provider is EMULATED.
 Requests go through the official openai SDK to the bundled emulator on
 {url} (loopback only): no network, no cost. The answers are
 deterministic placeholders that satisfy the schema, not real model output.

 To use the real OpenAI Batch API instead, unset OPENAI_BASE_URL and set
 OPENAI_API_KEY (or put it in a .env file), then run the same code.
================================================================================"""


def main(argv: list[str] | None = None) -> None:
    """Run the demo."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", default=None, help="checkpoint folder (default: temp)")
    parser.add_argument("--latency", type=float, default=2.0, help="emulated batch time (s)")
    args = parser.parse_args(argv)

    reviews = load_reviews()
    with Emulator(latency=args.latency) as emu:
        print(BANNER.format(url=emu.url))
        os.environ.update(emu.env())
        state = Path(args.state or tempfile.mkdtemp(prefix="batchata-demo-"))
        print(f"\n{reviews.height} reviews -> gpt-6-luna batch, checkpoints in {state}\n")
        out = reviews.pipe(
            batch_llm,
            schema=Review,
            model="gpt-6-luna",
            prompt="Classify this review of a {product}:\n\n{text}",
            system="You are a careful product analyst.",
            # A reasoning model: little thinking is enough to classify a review. The
            # thinking tokens are in _output_tokens (and _cost_usd) and in _reasoning_tokens.
            params={"reasoning_effort": "low"},
            state=state,
            items_per_batch=15,
            progress=True,
        )
        with pl.Config(tbl_rows=12, tbl_cols=10, fmt_str_lengths=40, tbl_width_chars=160):
            print(out.select("review_id", "product", "sentiment", "rating", "summary",
                             "issues", "_status", "_reasoning_tokens", "_cost_usd"))
            print("\nschema of the result:")
            for name, dtype in out.schema.items():
                print(f"  {name:<16} {dtype}")
            summary = out.group_by("_status").agg(
                pl.len().alias("rows"), pl.col("_cost_usd").sum().alias("cost_usd")
            )
            print("\n", summary, sep="")
        print(
            f"\nTotal (emulated) batch cost: ${out['_cost_usd'].sum():.6f}. Run the same call "
            "again with the same state folder and nothing is sent twice."
        )


if __name__ == "__main__":
    main()
