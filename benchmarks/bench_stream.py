"""Streaming Parquet -> Parquet at 1M and 10M rows: peak RSS, CPU, state folder, sql time.

Each point runs ``batch_llm(pl.scan_parquet(IN), ..., sink=OUT, state=STATE)`` in a fresh
child process against one emulator process (latency 0), then, in further fresh children:

* ``resume``: the same call again on the finished state folder (sends nothing; reads the
  input again chunk by chunk and rewrites the sink);
* ``sql``: ``batchata_df.sql`` of cost and status over the folder;
* ``killed``: the same run on a fresh folder (the emulator reset), killed with SIGKILL
  once about half of the first run's wall time has passed, then ``resumed`` by the same
  call in a fresh process. Recorded: the resumed process's peak RSS, the requests the
  emulator billed over both processes (must equal the rows: nothing sent twice) and how
  many of them were distinct, and the output's row count and order (the input's row
  numbers, read back in the sink, must be 0..N-1 in order).

Recorded per point: wall and client CPU seconds (user + system of the child), the child's
peak RSS (``vm_hwm_mb``: ``VmHWM`` of its own address space; ``ru_maxrss`` from ``wait4``
is kept too but overstates it: Linux carries the parent's high-water mark over fork+exec),
its RSS every 10 s, the emulator's CPU seconds (``/proc/<pid>/stat``),
the state folder's size and part count after the run (compacted) and the biggest part count
seen while it ran, the input and output sizes, requests the emulator billed (must equal
the rows: every row is a distinct request), and the machine's load average before each
point (other work on the machine slows the timings, not the memory figures). Each phase's
figures are written to the JSON as soon as they are known, so a point cut short keeps what
finished.

Workload: N distinct ~150-character prompts with strict structured output for a 3-field
model, batches of at most 50,000 (OpenAI's limit), 32 batches in flight.

    nice -n 19 python benchmarks/bench_stream.py --sizes 1000000 10000000

Results: ``benchmarks/results/bench_stream.json`` (one object per point, replaced per size).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
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


CHECK = r'''
import json, sys
import polars as pl
out = pl.scan_parquet(sys.argv[1])
n = pl.len()
row = out.select(
    n.alias("rows"),
    (pl.col("text").str.extract(r"^Review (\d+):").cast(pl.Int64) == pl.int_range(n))
    .all().alias("in_order"),
    (pl.col("_status") == "completed").sum().alias("completed"),
).collect(engine="streaming").row(0, named=True)
print(json.dumps(row))
'''


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of a running process (and its waited-for children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(v) for v in fields[11:15]) / ticks


def run_child(code: str, args: list[str], env: dict[str, str], watch: Path | None = None,
              kill_after: float | None = None) -> dict[str, object]:
    """Run one client in a fresh process: wall, CPU and peak RSS of that process.

    With ``kill_after``, the process is killed with SIGKILL after that many seconds (a
    crash mid-run); the figures are then those up to the kill.
    """
    most_parts = 0
    samples: list[tuple[float, float]] = []
    hwm_at_kill: list[float] = []
    done = threading.Event()
    pid = 0

    def watch_child() -> None:
        """Every 10 s: the child's RSS (a curve, not only the peak) and the part count."""
        nonlocal most_parts
        while not done.wait(10.0 if kill_after is None else min(10.0, kill_after / 20)):
            if kill_after is not None and time.perf_counter() - t0 >= kill_after:
                with contextlib.suppress(OSError, IndexError, ValueError):
                    status = Path(f"/proc/{pid}/status").read_text()
                    hwm_at_kill.append(int(status.split("VmHWM:")[1].split()[0]) / 1024)
                os.kill(pid, signal.SIGKILL)
                return
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
        if kill_after is not None and os.waitstatus_to_exitcode(status) == -signal.SIGKILL:
            return {"wall_s": round(wall, 2),
                    "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                    "killed_after_s": round(wall, 1),
                    "vm_hwm_mb_at_kill": round(hwm_at_kill[0], 1) if hwm_at_kill else None,
                    "rss_mb_every_10s": samples}
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


def _billing(emu: object) -> dict[str, int]:
    """Requests the emulator billed, and how many distinct requests they were."""
    bills = emu.billing()  # type: ignore[attr-defined]
    return {"billed": len(bills), "distinct": len({b["request"] for b in bills})}


def point(n: int, work: Path, emu: object, env: dict[str, str],
          save: Callable[[dict[str, object]], None]) -> dict[str, object]:
    """One size: run, resume the finished folder, sql; then a run killed and resumed."""
    emu.reset()  # type: ignore[attr-defined]
    src = make_input(n, work / f"in-{n}")
    state, sink = work / f"state-{n}", work / f"out-{n}.parquet"
    row: dict[str, object] = {
        "rows": n,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "input_mb": _size_mb(src),
    }
    pid = emu._proc.pid  # type: ignore[attr-defined]
    emu_cpu0 = _cpu_of(pid)
    row["run"] = run_child(RUN, [str(src / "*.parquet"), str(sink), str(state)], env,
                           watch=state)
    row["emulator_cpu_s"] = round(_cpu_of(pid) - emu_cpu0, 2)
    billed = _billing(emu)
    row["billed_requests"] = billed["billed"]
    row["distinct_requests"] = billed["distinct"]
    row["state_parts_after_run"] = {
        t: len(list((state / t).glob("part-*.parquet"))) for t in ("jobs", "batches")
    }
    row["state_mb"] = _size_mb(state)
    row["output_mb"] = round(sink.stat().st_size / 1e6, 2)
    row["output_check"] = run_child(CHECK, [str(sink)], env)
    save(row)
    row["loadavg_before_resume"] = [round(x, 2) for x in os.getloadavg()]
    row["resume_finished"] = run_child(RUN, [str(src / "*.parquet"), str(sink), str(state)],
                                       env)
    row["billed_after_resume"] = _billing(emu)["billed"]
    save(row)
    row["sql"] = run_child(SQL, [str(state)], env)
    save(row)

    # A crash mid-stream: SIGKILL at about half the run, then the same call again.
    emu.reset()  # type: ignore[attr-defined]
    killed_state, killed_sink = work / f"killed-{n}", work / f"killed-{n}.parquet"
    half = float(row["run"]["wall_s"]) / 2  # type: ignore[index]
    args = [str(src / "*.parquet"), str(killed_sink), str(killed_state)]
    killed = run_child(RUN, args, env, watch=killed_state, kill_after=half)
    killed["billed_at_kill"] = _billing(emu)["billed"]
    row["killed"] = killed
    save(row)
    row["loadavg_before_kill_resume"] = [round(x, 2) for x in os.getloadavg()]
    row["kill_resumed"] = run_child(RUN, args, env, watch=killed_state)
    billed = _billing(emu)
    row["kill_resumed"]["billed_both_processes"] = billed["billed"]  # type: ignore[index]
    row["kill_resumed"]["distinct_requests"] = billed["distinct"]  # type: ignore[index]
    row["kill_resumed"]["output_check"] = run_child(CHECK, [str(killed_sink)], env)  # type: ignore[index]
    save(row)
    return row


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

            def save(row: dict[str, object], n: int = n) -> None:
                nonlocal results
                results = [r for r in results if r.get("rows") != n] + [row]
                results.sort(key=lambda r: int(r["rows"]))  # type: ignore[call-overload]
                results_file.parent.mkdir(exist_ok=True)
                results_file.write_text(json.dumps(results, indent=2) + "\n")

            row = point(n, Path(scratch), emu, env, save)
            print(json.dumps({k: v for k, v in row.items() if k != "run"}), flush=True)


if __name__ == "__main__":
    main()
