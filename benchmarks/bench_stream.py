"""Streaming Parquet -> Parquet at 1M and 10M rows: peak RSS, CPU, state folder, sql time.

Each point runs ``batch_llm(pl.scan_parquet(IN), ..., sink=OUT, state=STATE)`` in a fresh
child process against one emulator process (latency 0), then, in further fresh children:

* ``resume``: the same call again on the finished state folder (sends nothing; reads the
  input again chunk by chunk and rewrites the sink);
* ``sql``: ``batchata_df.sql`` of cost and status over the folder.

Recorded per point: wall and client CPU seconds (user + system of the child), the child's
peak RSS (``vm_hwm_mb``: ``VmHWM`` of its own address space; ``ru_maxrss`` from ``wait4``
is kept too but overstates it: Linux carries the parent's high-water mark over fork+exec),
its RSS every 10 s, the emulator's CPU seconds (``/proc/<pid>/stat``),
the state folder's size and part count after the run (compacted) and the biggest part count
seen while it ran, the input and output sizes, and requests the emulator billed (must equal
the rows: every row is a distinct request).

Workload: N distinct ~150-character prompts with strict structured output for a 3-field
model, batches of at most 50,000 (OpenAI's limit), 32 batches in flight.

    nice -n 19 python benchmarks/bench_stream.py --sizes 1000000 10000000

Results: ``benchmarks/results/bench_stream.json`` (one object per point, replaced per size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The child's own peak: VmHWM of its address space. (ru_maxrss from wait4 is not used as
# the peak: Linux carries the parent's high-water mark over fork+exec into it.)
HWM = r'''
def HWM():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return {"vm_hwm_mb": round(int(line.split()[1]) / 1024, 1)}
    return {}
'''

RUN = HWM + r'''
import json, sys, time
from typing import Literal
import polars as pl
from pydantic import BaseModel
from batchata_df import batch_llm

class Answer(BaseModel):
    summary: str
    score: float
    label: Literal["pos", "neg", "neu"]

src, sink, state = sys.argv[1:4]
t0 = time.perf_counter()
out = batch_llm(pl.scan_parquet(src), schema=Answer, model="gpt-4.1-mini", prompt="{text}",
                state=state, sink=sink, max_parallel_batches=32)
counts = out.group_by("_status").len().collect(engine="streaming")
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "status": dict(counts.iter_rows()), **HWM()}))
'''

SQL = HWM + r'''
import json, sys, time
from batchata_df import sql
t0 = time.perf_counter()
r = sql("SELECT status, count(*) AS n, sum(cost_usd) AS usd FROM jobs GROUP BY status",
        sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": r.to_dicts(), **HWM()}))
'''


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of a running process (and its waited-for children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(v) for v in fields[11:15]) / ticks


def run_child(code: str, args: list[str], env: dict[str, str], watch: Path | None = None
              ) -> dict[str, object]:
    """Run one client in a fresh process: wall, CPU and peak RSS of that process."""
    most_parts = 0
    samples: list[tuple[float, float]] = []
    done = threading.Event()
    pid = 0

    def watch_child() -> None:
        """Every 10 s: the child's RSS (a curve, not only the peak) and the part count."""
        nonlocal most_parts
        while not done.wait(10.0):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                rss = int(status.split("VmRSS:")[1].split()[0]) / 1024
            except (OSError, IndexError, ValueError):
                continue
            samples.append((round(time.perf_counter() - t0, 1), round(rss, 1)))
            print(f"  t={samples[-1][0]:>7}s rss={rss:8.1f} MB", file=sys.stderr, flush=True)
            if watch is not None:
                with_parts = [watch / "jobs", watch / "batches"]
                n = sum(len(list(d.glob("part-*.parquet"))) for d in with_parts if d.is_dir())
                most_parts = max(most_parts, n)

    watcher = threading.Thread(target=watch_child, daemon=True)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=out,
                                stderr=err)
        pid = proc.pid
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"benchmark child failed:\n{err.read().decode()[-3000:]}")
        out.seek(0)
        reported = json.loads(out.read().decode().strip().splitlines()[-1])
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "ru_maxrss_mb": round(usage.ru_maxrss / 1024, 1),
        "most_parts_while_running": most_parts,
        "rss_mb_every_10s": samples,
        **reported,
    }


def _size_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 2)


def make_input(n: int, folder: Path) -> Path:
    """``n`` distinct prompts in Parquet files of 1M rows (written outside the timings)."""
    import polars as pl

    folder.mkdir(parents=True, exist_ok=True)
    step = 1_000_000
    for start in range(0, n, step):
        size = min(step, n - start)
        pl.select(
            pl.format(
                "Review {}: " + "the product arrived on time and works well, " * 3,
                pl.int_range(start, start + size),
            ).alias("text")
        ).write_parquet(folder / f"in-{start // step:04d}.parquet")
    return folder


def point(n: int, work: Path, emu: object, env: dict[str, str]) -> dict[str, object]:
    """One size: run, resume, sql."""
    emu.reset()  # type: ignore[attr-defined]
    src = make_input(n, work / f"in-{n}")
    state, sink = work / f"state-{n}", work / f"out-{n}.parquet"
    pid = emu._proc.pid  # type: ignore[attr-defined]
    emu_cpu0 = _cpu_of(pid)
    first = run_child(RUN, [str(src / "*.parquet"), str(sink), str(state)], env, watch=state)
    emu_cpu = _cpu_of(pid) - emu_cpu0
    billed = len(emu.billing())  # type: ignore[attr-defined]
    parts = {t: len(list((state / t).glob("part-*.parquet"))) for t in ("jobs", "batches")}
    folder_mb = _size_mb(state)
    resumed = run_child(RUN, [str(src / "*.parquet"), str(sink), str(state)], env)
    billed_after_resume = len(emu.billing())  # type: ignore[attr-defined]
    query = run_child(SQL, [str(state)], env)
    return {
        "rows": n,
        "run": first,
        "emulator_cpu_s": round(emu_cpu, 2),
        "billed_requests": billed,
        "billed_after_resume": billed_after_resume,
        "state_mb": folder_mb,
        "state_parts_after_run": parts,
        "input_mb": _size_mb(src),
        "output_mb": round(sink.stat().st_size / 1e6, 2),
        "resume_finished": resumed,
        "sql": query,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def main() -> None:
    """Run the points and write the results JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (large)")
    args = parser.parse_args()

    from batchata_df.emulator import Emulator

    results_file = HERE / "results" / "bench_stream.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else []
    with tempfile.TemporaryDirectory(dir=args.work) as scratch, Emulator(latency=0.0) as emu:
        env = {**os.environ, **emu.env()}
        for n in args.sizes:
            row = point(n, Path(scratch), emu, env)
            print(json.dumps({k: v for k, v in row.items() if k != "run"}), flush=True)
            results = [r for r in results if r.get("rows") != n] + [row]
            results.sort(key=lambda r: int(r["rows"]))
            results_file.parent.mkdir(exist_ok=True)
            results_file.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
