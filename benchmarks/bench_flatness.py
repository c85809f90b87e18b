"""Per-row client CPU of batch_llm in memory from 10k to 10M rows, one sitting (issue 14).

Issue 14 point 3 asks for per-row CPU flat within ±20 % from 10k to 10M rows.
``bench_overhead.py`` measures the in-memory path beside the floor at 10k, 100k and 1M,
in sittings that may differ, and ``bench_stream.py`` the streamed path up to 10M. This
script runs **batch_llm alone, in memory, at every size up to 10M in one sitting, on one
commit**, so that the marginal CPU per extra row between successive sizes compares like
with like. The floor is left out: it is not what flatness is asked of, and at 10M it holds
every request and answer in memory at once.

The client is ``bench_overhead.OURS`` (the same child as the side-by-side benchmark: a
fresh process, the same workload, a checkpoint folder), against one emulator with zero
latency, reset before every run; recorded per run are the client's CPU (user + system),
peak RSS, wall, the emulator's CPU and the 1-minute load before and after.

    python benchmarks/bench_flatness.py                      # OpenAI, 10k x3 ... 10M x1
    python benchmarks/bench_flatness.py --providers gemini --out /tmp/g.json
    python benchmarks/bench_flatness.py --sizes 10000 100000 1000000   # without 10M
    python benchmarks/bench_flatness.py --stream --pin   # streamed (sink=), emulator pinned
    python benchmarks/report_overhead.py                     # README block and plot

``--stream`` runs the streamed path instead (``STREAMED``: the same rows, prompts, model
and schema, read with ``pl.scan_parquet`` from Parquet files of 1M rows written before the
timings, and written to a Parquet ``sink=``; its results default to
``results/flatness_stream.json``). ``--pin`` puts the emulator on the last core and the
client on the others, as ``bench_overhead.py --pin`` does.

A 10M run takes 15-25 minutes here (the emulator's share is most of it) and ~10 GB of
memory for the client and the emulator together. Results: ``results/flatness.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_overhead as bench

HERE = Path(__file__).resolve().parent
PLAN = ((10_000, 3), (100_000, 3), (1_000_000, 2), (10_000_000, 1))

STREAMED = r'''
import json, sys
from typing import Literal
import polars as pl
from pydantic import BaseModel
from batchata_df import batch_llm

class Answer(BaseModel):
    summary: str
    score: float
    label: Literal["pos", "neg", "neu"]

n, src, state, model, sink = int(sys.argv[1]), *sys.argv[2:6]
out = batch_llm(pl.scan_parquet(src), schema=Answer, model=model, prompt="{text}",
                state=state, sink=sink, max_parallel_batches=32, progress=False)
counts = dict(out.group_by("_status").len().collect().iter_rows())
assert counts == {"completed": n}, counts
print(json.dumps({"rows": n}))
'''
"""The streamed client: ``bench_overhead.OURS``'s call with ``sink=`` on a Parquet scan."""


def make_input(n: int, folder: Path) -> str:
    """``bench_overhead.FRAME``'s ``n`` prompts as Parquet files of 1M rows; their glob."""
    import polars as pl

    folder.mkdir(parents=True, exist_ok=True)
    step = 1_000_000
    for start in range(0, n, step):
        pl.select(
            pl.concat_str([pl.lit("Review "), pl.int_range(start, min(n, start + step))
                           .cast(pl.String), pl.lit(": " + "the product arrived on time "
                                                    "and works well, " * 3)]).alias("text")
        ).write_parquet(folder / f"in-{start // step:04d}.parquet")
    return str(folder / "*.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--providers", nargs="+", default=["openai"], choices=bench.PROVIDERS)
    parser.add_argument("--out", type=Path, default=None,
                        help="default results/flatness.json (flatness_stream.json with --stream)")
    parser.add_argument("--stream", action="store_true",
                        help="the streamed path (Parquet in, sink= out) instead of in memory")
    parser.add_argument("--pin", action="store_true",
                        help="the emulator on the last core, the client on the others")
    parser.add_argument("--sizes", type=int, nargs="+", default=[n for n, _ in PLAN],
                        help="row counts, each run as often as PLAN says (once if not in it)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="where the checkpoint folders go (default: the system's temp)")
    args = parser.parse_args()
    out = args.out or HERE / "results" / (
        "flatness_stream.json" if args.stream else "flatness.json"
    )

    from batchata_df.emulator import Emulator

    doc: dict[str, Any] = {
        "what": (
            "Per-row client CPU of batch_llm "
            f"{'streamed (sink=)' if args.stream else 'in memory'} from 10k to 10M rows, "
            "one sitting (issue 14)."
        ),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code": bench._code(),
        "path": "streamed" if args.stream else "in memory",
        "runs": [],
    }
    pinned = bench.pin_emulator() if args.pin else None
    doc["pinned"] = pinned
    inputs = tempfile.TemporaryDirectory(dir=args.state_dir)
    with inputs, Emulator(latency=0.0) as emu:
        if pinned is not None:
            os.sched_setaffinity(0, pinned["clients"])  # every client inherits this
        env = bench.child_env(emu.env())
        emu_pid = emu._proc.pid if emu._proc is not None else 0
        for provider in args.providers:
            model = bench.PROVIDERS[provider]
            for rows in args.sizes:
                times = dict(PLAN).get(rows, 1)
                src = make_input(rows, Path(inputs.name) / str(rows)) if args.stream else ""
                for _ in range(times):
                    emu.reset()
                    load_before = round(os.getloadavg()[0], 2)
                    with tempfile.TemporaryDirectory(dir=args.state_dir) as state:
                        if args.stream:
                            sink = str(Path(state) / "out.parquet")
                            run = bench.run_child(STREAMED, [str(rows), src, f"{state}/s",
                                                             model, sink], env, emu_pid)
                        else:
                            run = bench.run_child(bench.OURS, [str(rows), state, model], env,
                                                  emu_pid)
                    run.update(
                        provider=provider, model=model, rows=rows, load_before=load_before,
                        load_after=round(os.getloadavg()[0], 2),
                        at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    )
                    doc["runs"].append(run)
                    # Written after every run: an interrupted sitting keeps what it measured.
                    out.write_text(json.dumps(doc, indent=1) + "\n")
                    print(json.dumps(run), flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
