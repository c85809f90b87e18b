"""The long chaos run: many seeds, many SIGKILLs per provider, judged by the billing ledger.

Runs ``tests/test_chaos.py`` (the CI version kills 7 times per provider and seed) with more
kills and seeds, collects each round's figures (kills, races, crashes at the
``after_submit`` failpoint, billed requests, duplicate billings, lost rows, spend and cap)
and prints the totals for the README's "Reliability" section. Every round must pass: a
single duplicate billing, lost row or overspend fails the run.

    python benchmarks/chaos.py                       # 20 kills x 5 seeds x 3 providers
    python benchmarks/chaos.py --kills 40 --seeds 10

Figures are appended to ``benchmarks/results/chaos.jsonl`` (one line per run, with the
rounds) and printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs per round")
    parser.add_argument("--seeds", type=int, default=5, help="rounds per provider")
    parser.add_argument("--first-seed", type=int, default=1)
    args = parser.parse_args()
    seeds = ",".join(str(args.first_seed + i) for i in range(args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rounds.jsonl"
        env = {
            **os.environ,
            "BATCHATA_DF_CHAOS_KILLS": str(args.kills),
            "BATCHATA_DF_CHAOS_SEEDS": seeds,
            "BATCHATA_DF_CHAOS_REPORT": str(report),
        }
        t0 = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/test_chaos.py", "-q", "-p",
             "no:cacheprovider", "-o", "addopts=", "--timeout=3600"],
            cwd=ROOT, env=env,
        )
        wall = time.monotonic() - t0
        rounds = [json.loads(line) for line in report.read_text().splitlines()] \
            if report.exists() else []
    totals = {
        "rounds": len(rounds),
        "kills": sum(r["kills"] for r in rounds),
        "races": sum(r["races"] for r in rounds),
        "crashes": sum(r["crashes"] for r in rounds),
        "damaged_parts": sum(1 for r in rounds if r["damaged"]),
        "billed": sum(r["billed"] for r in rounds),
        "duplicates": sum(r["duplicates"] for r in rounds),
        "lost_rows": sum(r["lost_rows"] for r in rounds),
        "capped_rounds": sum(1 for r in rounds if r["cap"] is not None),
        "over_cap": sum(1 for r in rounds if r["cap"] is not None and r["spend"] > r["cap"]),
    }
    record = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "kills_per_round": args.kills, "seeds": seeds, "passed": done.returncode == 0,
        "wall_s": round(wall, 1), **totals, "per_round": rounds,
    }
    out = HERE / "results" / "chaos.jsonl"
    out.parent.mkdir(exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")
    print()
    print("| provider | rounds | SIGKILLs | races | failpoint crashes | damaged parts | "
          "billed requests | duplicate billings | lost rows | over cap |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for provider in ("openai", "anthropic", "gemini"):
        rs = [r for r in rounds if r["provider"] == provider]
        print(f"| {provider} | {len(rs)} | {sum(r['kills'] for r in rs)} | "
              f"{sum(r['races'] for r in rs)} | {sum(r['crashes'] for r in rs)} | "
              f"{sum(1 for r in rs if r['damaged'])} | {sum(r['billed'] for r in rs)} | "
              f"{sum(r['duplicates'] for r in rs)} | {sum(r['lost_rows'] for r in rs)} | "
              f"{sum(1 for r in rs if r['cap'] is not None and r['spend'] > r['cap'])} |")
    print(f"\n{json.dumps(totals)}  wall {wall:.0f} s, pytest exit {done.returncode}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
