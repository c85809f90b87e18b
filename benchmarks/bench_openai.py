"""End-to-end client overhead: batch_llm (checkpoints on) beside a bare SDK + Polars floor.

Both clients run as separate processes (imports included, like the anchors in
``shared/reference/anchors.md``) against ONE emulator process with zero latency, one after
the other at each size, so their ratio is measured side by side in the same run. Recorded
per run: wall seconds, client CPU seconds (user + system of the child: the client's own
work, whatever the emulator is doing), peak RSS (MB, ``ru_maxrss`` of the child), µs per row.

Workload: N chat requests (~150-character prompts) with strict structured output for a
3-field model (str, float, 3-value enum), split into provider batches of at most 50,000.

    python benchmarks/bench_openai.py                 # 10k and 100k rows
    python benchmarks/bench_openai.py --sizes 1000000 # the 1M-row check (slow)

Results are appended as JSON lines to ``benchmarks/results/bench_openai.jsonl`` and printed
as a table.
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

FLOOR = r'''
import io, json, sys, time
import polars as pl
from openai import OpenAI

n = int(sys.argv[1])
t0 = time.perf_counter()
client = OpenAI()
df = pl.DataFrame({"text": [f"Review {i}: " + "the product arrived on time and works well, " * 3
                            for i in range(n)]})
schema = {"type": "object", "additionalProperties": False, "required": ["summary", "score", "label"],
          "properties": {"summary": {"type": "string"}, "score": {"type": "number"},
                         "label": {"type": "string", "enum": ["pos", "neg", "neu"]}}}
tail = json.dumps({"type": "json_schema", "json_schema": {"name": "a", "strict": True, "schema": schema}})
lines = df.with_row_index("i").select(pl.concat_str([
    pl.lit('{"custom_id":"r'), pl.col("i").cast(pl.String),
    pl.lit('","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4.1-mini","messages":[{"role":"user","content":'),
    pl.struct(pl.col("text").alias("s")).struct.json_encode().str.strip_prefix('{"s":').str.strip_suffix("}"),
    pl.lit('}],"response_format":' + tail + '}}')]).alias("line"))["line"]
ids = []
for start in range(0, n, 50_000):
    payload = "\n".join(lines.slice(start, 50_000).to_list()).encode()
    f = client.files.create(file=("in.jsonl", payload), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    ids.append(b.id)
frames = []
for bid in ids:
    while (b := client.batches.retrieve(bid)).status != "completed":
        time.sleep(0.2)
    data = client.files.content(b.output_file_id).read()
    raw = pl.read_ndjson(io.BytesIO(data))
    frames.append(raw.select(
        pl.col("custom_id"),
        pl.col("response").struct.field("body").struct.field("choices").list.first()
        .struct.field("message").struct.field("content")
        .str.json_decode(pl.Struct({"summary": pl.String, "score": pl.Float64, "label": pl.String}))
        .alias("a")).unnest("a"))
out = pl.concat(frames)
assert out.height == n, out.height
print(json.dumps({"rows": out.height, "seconds": time.perf_counter() - t0}))
'''

OURS = r'''
import json, sys, time
from typing import Literal
import polars as pl
from pydantic import BaseModel
from batchata_df import batch_llm

class Answer(BaseModel):
    summary: str
    score: float
    label: Literal["pos", "neg", "neu"]

n, state = int(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
df = pl.DataFrame({"text": [f"Review {i}: " + "the product arrived on time and works well, " * 3
                            for i in range(n)]})
out = df.pipe(batch_llm, schema=Answer, model="gpt-4.1-mini", prompt="{text}", state=state,
              max_parallel_batches=32)
assert out.height == n and (out["_status"] == "completed").all(), out["_status"].value_counts()
print(json.dumps({"rows": out.height, "seconds": time.perf_counter() - t0}))
'''


def run_child(code: str, args: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run one client in a fresh process; return its wall seconds and its own peak RSS."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args], env=env, stdout=subprocess.DEVNULL, stderr=err
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"benchmark child failed:\n{err.read().decode()[-3000:]}")
    return {
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    from batchata_df.emulator import Emulator

    results = []
    with Emulator(latency=0.0) as emu:
        env = {**os.environ, **emu.env()}
        for n in args.sizes:
            for _ in range(args.repeat):
                # Order: the floor first, then ours; the emulator is reset between runs.
                emu.reset()
                floor = run_child(FLOOR, [str(n)], env)
                emu.reset()
                with tempfile.TemporaryDirectory() as state:
                    ours = run_child(OURS, [str(n), state], env)
                    state_mb = sum(p.stat().st_size for p in Path(state).rglob("*")) / 1e6
                row = {
                    "rows": n,
                    "floor_wall_s": round(floor["wall_s"], 3),
                    "ours_wall_s": round(ours["wall_s"], 3),
                    "ratio": round(ours["wall_s"] / floor["wall_s"], 3),
                    "floor_us_per_row": round(floor["wall_s"] / n * 1e6, 1),
                    "ours_us_per_row": round(ours["wall_s"] / n * 1e6, 1),
                    "floor_cpu_s": round(floor["cpu_s"], 3),
                    "ours_cpu_s": round(ours["cpu_s"], 3),
                    "cpu_ratio": round(ours["cpu_s"] / floor["cpu_s"], 3),
                    "floor_peak_rss_mb": round(floor["peak_rss_mb"], 1),
                    "ours_peak_rss_mb": round(ours["peak_rss_mb"], 1),
                    "state_mb": round(state_mb, 2),
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
                results.append(row)
                print(json.dumps(row), flush=True)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    with open(out_dir / "bench_openai.jsonl", "a") as f:
        for row in results:
            f.write(json.dumps(row) + "\n")
    print(f"\n{'rows':>9} {'floor s':>8} {'ours s':>8} {'ratio':>6} {'floor us/row':>13} "
          f"{'ours us/row':>12} {'floor cpu':>10} {'ours cpu':>9} {'cpu ratio':>9} "
          f"{'floor MB':>9} {'ours MB':>8}")
    for r in results:
        print(f"{r['rows']:>9} {r['floor_wall_s']:>8} {r['ours_wall_s']:>8} {r['ratio']:>6} "
              f"{r['floor_us_per_row']:>13} {r['ours_us_per_row']:>12} "
              f"{r['floor_cpu_s']:>10} {r['ours_cpu_s']:>9} {r['cpu_ratio']:>9} "
              f"{r['floor_peak_rss_mb']:>9} {r['ours_peak_rss_mb']:>8}")


if __name__ == "__main__":
    main()
