"""Offline token counting speed: µs per row for exact OpenAI counts (bpe-openai).

    python benchmarks/bench_tokens.py              # 20,000 rows of ~150 characters
    python benchmarks/bench_tokens.py --rows 200000

The vocabulary is loaded before timing. Appends a JSON line to
``benchmarks/results/bench_tokens.jsonl`` and prints it. Moved here from the test suite,
which asserts counts only (no wall-clock assertions in tests). Measured about 4 µs per
150-character row on the project's machines.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import polars as pl

from batchata_df.tokens import estimate_tokens

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--model", default="gpt-4o")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    texts = pl.Series(
        [f"row {i}: " + "a fairly ordinary product review text " * 4 for i in range(args.rows)]
    )
    estimate_tokens(texts.head(10), "openai", args.model)  # load the vocabulary first
    best = float("inf")
    for _ in range(args.repeat):
        start = time.perf_counter()
        out = estimate_tokens(texts, "openai", args.model)
        best = min(best, time.perf_counter() - start)
    assert out.len() == texts.len()
    record = {
        "bench": "openai_token_counting",
        "rows": args.rows,
        "model": args.model,
        "seconds": round(best, 4),
        "us_per_row": round(best / args.rows * 1e6, 2),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (HERE / "results").mkdir(exist_ok=True)
    with (HERE / "results" / "bench_tokens.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
