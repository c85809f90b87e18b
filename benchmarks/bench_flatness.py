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
    python benchmarks/report_overhead.py                     # README block and plot

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--providers", nargs="+", default=["openai"], choices=bench.PROVIDERS)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "flatness.json")
    parser.add_argument("--sizes", type=int, nargs="+", default=[n for n, _ in PLAN],
                        help="row counts, each run as often as PLAN says (once if not in it)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="where the checkpoint folders go (default: the system's temp)")
    args = parser.parse_args()

    from batchata_df.emulator import Emulator

    doc: dict[str, Any] = {
        "what": __doc__.split("\n\n")[0],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code": bench._code(),
        "runs": [],
    }
    with Emulator(latency=0.0) as emu:
        env = bench.child_env(emu.env())
        emu_pid = emu._proc.pid if emu._proc is not None else 0
        for provider in args.providers:
            model = bench.PROVIDERS[provider]
            for rows in args.sizes:
                times = dict(PLAN).get(rows, 1)
                for _ in range(times):
                    emu.reset()
                    load_before = round(os.getloadavg()[0], 2)
                    with tempfile.TemporaryDirectory(dir=args.state_dir) as state:
                        run = bench.run_child(bench.OURS, [str(rows), state, model], env, emu_pid)
                    run.update(
                        provider=provider, model=model, rows=rows, load_before=load_before,
                        load_after=round(os.getloadavg()[0], 2),
                        at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    )
                    doc["runs"].append(run)
                    # Written after every run: an interrupted sitting keeps what it measured.
                    args.out.write_text(json.dumps(doc, indent=1) + "\n")
                    print(json.dumps(run), flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
