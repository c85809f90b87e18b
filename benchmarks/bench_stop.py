"""What a stop costs at 1M jobs in memory: the unsent jobs handed back to be cancelled.

On a stop (time limit, Ctrl+C) the engine ends every job it has not sent ``cancelled``, one
group per provider and model (``Planner.drain_groups``). This measures that call after the
first batch went, with 950,000 jobs left, in a fresh process per way, side by side:

* ``ids``: ``drain_groups`` as it is (the job ids each ``add`` was given, less those of the
  batches planned, grouped by model; nothing encoded);
* ``encode``: what it did before 1707e91, the baseline: every batch left encoded (its
  request lines built) to read its ids.

Recorded per way: wall and CPU seconds of the call, and RSS before and after it (the call's
growth). No emulator, no network: the OpenAI encoder of a 3-field strict schema.

    python benchmarks/bench_stop.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r'''
import gc, json, sys, time
from typing import Literal
import polars as pl
from pydantic import BaseModel
from batchata_df.engine.planning import Planner
from batchata_df.jobs import build_jobs
from batchata_df.providers.base import RequestSpec
from batchata_df.providers.openai import OpenAIProvider
from batchata_df.schema import AnswerSchema

class Answer(BaseModel):
    summary: str
    score: float
    label: Literal["pos", "neg", "neu"]

way, n = sys.argv[1], int(sys.argv[2])
df = pl.select(pl.format("Review {}: " + "the product arrived on time and works well, " * 3,
                         pl.int_range(0, n)).alias("text"))
jobs = build_jobs(df, model="gpt-4.1-mini", prompt="{text}", system=None, salt="s",
                  scheme="hmac-sha256-v2").filter(pl.col("input_error").is_null())
spec = RequestSpec(schema=AnswerSchema(Answer), params={"max_tokens": 100})
provider = OpenAIProvider(api_key="sk-bench", base_url="http://127.0.0.1:9")
planner = Planner({"openai": provider}, spec, None)
planner.add(jobs)
first = planner.current()
planner.took(len(first))  # the first batch went; the next one is encoded
del first
gc.collect()

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0

before = rss()
t, c = time.perf_counter(), time.process_time()
if way == "ids":
    groups = planner.drain_groups()
else:  # the baseline: every batch left encoded to read its ids
    rest = [planner.current()] + [p for source in planner._sources for p in source]
    groups = [(p.provider, p.model, p.job_ids) for p in rest]
wall, cpu = time.perf_counter() - t, time.process_time() - c
print(json.dumps({"way": way, "jobs": sum(len(g[2]) for g in groups), "wall_s": round(wall, 3),
                  "cpu_s": round(cpu, 3), "rss_before_mb": round(before),
                  "growth_mb": round(rss() - before)}))
'''


def main() -> None:
    """Run both ways, each in a fresh process, and print them with their ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    rows = []
    for way in ("ids", "encode"):
        done = subprocess.run([sys.executable, "-c", CHILD, way, str(args.rows)],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    ids, encode = rows
    if ids["jobs"] != encode["jobs"]:
        sys.exit(f"the two ways handed back different job counts: {ids['jobs']} / {encode['jobs']}")
    print(f"encode / ids: CPU {encode['cpu_s'] / max(ids['cpu_s'], 1e-3):.0f}x, "
          f"growth {encode['growth_mb']} MB against {ids['growth_mb']} MB")


if __name__ == "__main__":
    main()
