"""What prompt caching saves: a 10,000-row job with a 4,000-token shared prefix.

Each row asks one question about the same contract: the prompt is the contract (about
4,000 tokens as the emulator counts them: 16,000 characters) followed by a short question.
The job runs twice per provider against the emulator (latency 0, its strict prompt caches:
:mod:`batchata_df.emulator.prompt_cache`), once with ``prompt_caching=True`` (the default)
and once with ``prompt_caching=False``, each in a fresh emulator and state folder. Recorded
per run: the cost billed (``_cost_usd``), cache reads/writes, ``cache_saved_usd``, and the
estimate accuracy: the dry run's expected and worst-case cost before anything ran (answer
sizes from the schema), and again after a 1% sample ran (answer sizes observed in the
folder) against what the remaining 99% cost; wall seconds (sample + run).

    python benchmarks/bench_caching.py                      # 10,000 rows, three providers
    python benchmarks/bench_caching.py --rows 1000 --providers anthropic

Results are written to ``benchmarks/results/caching.json`` and printed as a table. Prices
are genai-prices' batch prices (cache reads and writes at each provider's batch cache
rates), so the dollar figures are what the providers would bill for these token counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import polars as pl  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from batchata_df import batch_llm, sql  # noqa: E402
from batchata_df.emulator import Emulator  # noqa: E402

# The models measured (gemini-2.5-flash, gpt-4.1-mini) have announced shutdowns
# (batchata_df.models.SCHEDULED); the emulator and the client read them at this date, the
# date the benchmarks were measured at, so later sittings measure the same requests (and
# the README's numbers stay comparable) instead of a refusal or Gemini's routed successor.
os.environ.setdefault("BATCHATA_DF_TODAY", "2026-10-31")

MODELS = {
    "anthropic": "claude-sonnet-4-6",
    "openai": "gpt-4.1-mini",
    "gemini": "gemini-2.5-flash",
}
CLAUSE = (
    "Clause {n}. The supplier shall deliver the goods described in schedule {n} within "
    "thirty days of the order date, packed and labelled as agreed. "
)


class Answer(BaseModel):
    answer: str
    clause: int


def contract() -> str:
    text = "".join(CLAUSE.format(n=n) for n in range(1, 200))
    return text[:16_000]  # 4,000 tokens as the emulator counts them (4 characters a token)


def frame(rows: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "contract": [contract()] * rows,
            "question": [f"Which clause covers schedule {i % 199 + 1}? (#{i})" for i in
                         range(rows)],
        }
    )  # fmt: skip


PROMPT = "Read this contract:\n{contract}\n\nQuestion: {question}"


def run(provider: str, rows: int, caching: bool) -> dict[str, Any]:
    model = MODELS[provider]
    df = frame(rows)
    kwargs: dict[str, Any] = {
        "schema": Answer, "model": model, "prompt": PROMPT, "prompt_caching": caching,
        "params": {"max_tokens": 2000},
    }  # fmt: skip
    sample_rows = max(rows // 100, 10)
    with tempfile.TemporaryDirectory() as tmp, Emulator(latency=0.0) as emu, emu.environ():
        state = Path(tmp) / "s"
        # Estimates before anything ran: answer sizes from the schema.
        plan = df.pipe(batch_llm, dry_run=True, state=state, **kwargs)
        t0 = time.perf_counter()
        df.head(sample_rows).pipe(batch_llm, state=state, **kwargs)  # a sample first
        # Estimates once the sample's answers are in the folder: observed answer sizes.
        later = df.pipe(batch_llm, dry_run=True, state=state, **kwargs)
        out = df.pipe(batch_llm, state=state, **kwargs)
        wall = time.perf_counter() - t0
        usage = sql(
            "SELECT sum(input_tokens) AS input, sum(output_tokens) AS output, "
            "sum(cached_tokens) AS cached, sum(cache_write_tokens) AS written, "
            "sum(cost_usd) AS cost, sum(cache_saved_usd) AS saved FROM jobs",
            state,
        ).row(0, named=True)
    completed = int((out["_status"] == "completed").sum())
    cost = float(out["_cost_usd"].sum())
    rest = float(out["_cost_usd"].tail(rows - sample_rows).sum())
    expected = float(plan["_expected_cost_usd"].sum())
    expected_rest = float(later["_expected_cost_usd"].sum())
    return {
        "provider": provider,
        "model": model,
        "rows": rows,
        "prompt_caching": caching,
        "completed": completed,
        "input_tokens": int(usage["input"] or 0),
        "output_tokens": int(usage["output"] or 0),
        "cached_tokens": int(usage["cached"] or 0),
        "cache_write_tokens": int(usage["written"] or 0),
        "cost_usd": round(cost, 6),
        "cache_saved_usd": round(float(usage["saved"] or 0.0), 6),
        "estimate_before_any_answer": {
            "expected_usd": round(expected, 6),
            "worst_case_usd": round(float(plan["_est_cost_usd"].sum()), 6),
            "expected_over_actual": round(expected / cost, 4) if cost else None,
        },
        "estimate_after_sample": {
            "sample_rows": sample_rows,
            "expected_usd_rest": round(expected_rest, 6),
            "actual_usd_rest": round(rest, 6),
            "worst_case_usd_rest": round(float(later["_est_cost_usd"].sum()), 6),
            "expected_over_actual": round(expected_rest / rest, 4) if rest else None,
        },
        "wall_s": round(wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--providers", nargs="+", default=list(MODELS))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "caching.json")
    args = parser.parse_args()
    results = []
    for provider in args.providers:
        for caching in (False, True):
            r = run(provider, args.rows, caching)
            results.append(r)
            print(json.dumps(r), flush=True)
    summary = []
    for provider in args.providers:
        off, on = (next(r for r in results if r["provider"] == provider
                        and r["prompt_caching"] is c) for c in (False, True))  # fmt: skip
        summary.append(
            {
                "provider": provider,
                "model": on["model"],
                "rows": args.rows,
                "cost_without_caching_usd": off["cost_usd"],
                "cost_with_caching_usd": on["cost_usd"],
                "saved_usd": round(off["cost_usd"] - on["cost_usd"], 6),
                "saved_share": round(1 - on["cost_usd"] / off["cost_usd"], 4),
            }
        )
    doc = {
        "benchmark": "bench_caching",
        "workload": (
            f"{args.rows:,} rows, one structured answer each; every prompt starts with the "
            "same 16,000-character contract (4,000 emulator tokens), then a short question"
        ),
        "emulator": {"latency_s": 0.0},
        "python": platform.python_version(),
        "summary": summary,
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print()
    print(f"{'provider':<10} {'model':<20} {'without':>12} {'with':>12} {'saved':>8}")
    for s in summary:
        print(
            f"{s['provider']:<10} {s['model']:<20} ${s['cost_without_caching_usd']:>11,.4f} "
            f"${s['cost_with_caching_usd']:>11,.4f} {s['saved_share']:>7.1%}"
        )


if __name__ == "__main__":
    main()
