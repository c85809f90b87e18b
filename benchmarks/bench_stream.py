"""Streaming Parquet -> Parquet at 1M and 10M rows: peak RSS, CPU, state folder, sql.

Each point calls ``batch_llm(pl.scan_parquet(IN), ..., sink=OUT, state=STATE)`` in fresh
child processes against one emulator process (latency 0):

* ``run``: one uninterrupted run on a folder of its own; besides the figures below, the
  child's peak RSS in each phase of the call (``peak_rss_mb_by_phase``: ``send`` (reading,
  sending and collecting), ``compact``, ``job_index``, ``write_sink``), sampled every 0.5 s;
* ``floor``: the leanest streamed client of the same rows (``bench_overhead.STREAM_FLOORS``:
  the official SDK, pyarrow and Polars, no checkpoints; the input read batch by batch to
  send, and again beside each batch's answers as they arrive, written to one Parquet
  file); recorded like ``run``, with its output checked (rows, order, labels) and the
  requests billed, and ``ratio_to_floor`` (``run`` over ``floor``: wall, CPU, peak RSS)
  when both ran;
* ``killed``: a run on a fresh folder (the emulator reset), killed with SIGKILL as soon as
  half its job event parts are written (each batch writes two: its jobs ``assigned``, then
  their results; a point of progress, not of time, so a busy machine does not move it);
* ``kill_resumed``: the same call again, in a fresh process: it finishes the run. Recorded:
  its peak RSS, the requests the emulator billed over both processes (must equal the rows:
  nothing sent twice) and how many were distinct, and the output's row count and order
  (the input's row numbers, read back from the sink, must be 0..N-1 in order);
* ``resume_finished``: the same call once more on that finished folder (sends nothing;
  reads the input again chunk by chunk and rewrites the sink);
* ``sql``: ``batchata_df.sql`` of cost and status over the folder.

Recorded per process: wall and client CPU seconds (user + system of the child), the
child's peak RSS (``vm_hwm_mb``: ``VmHWM`` of its own address space; ``ru_maxrss`` from
``wait4`` is kept too but overstates it: Linux carries the parent's high-water mark over
fork+exec), its RSS every 10 s; per point the emulator's CPU seconds of the clean run
(``/proc/<pid>/stat``), the state folder's size and part count after a run (compacted) and
the biggest part count seen while it ran, the input and output sizes, requests billed, and
the machine's load average before each phase (other work on the machine slows the
timings, not the memory figures). Each phase is written to the JSON as soon as it ends,
so a point cut short keeps what finished.

With ``--pin`` the emulator runs on the last core and every client on the others, as in
``bench_overhead.py --pin`` (recorded as ``"pinned"``): unpinned, batch_llm's CPU seconds
move with how the scheduler interleaves it with the busy emulator, far more than the
floor's (``benchmarks/PROFILE.md``, seventeenth and twenty-sixth passes). batchata_df is
byte-compiled before the first child, as there.

Workload: N distinct ~150-character prompts with strict structured output for a 3-field
model, batches of the provider's most (OpenAI 50,000; Anthropic and Gemini 100,000), 32
batches in flight. ``killed`` kills at half the provider's batch count in job parts.

    python benchmarks/bench_stream.py --sizes 1000000 10000000 \
        [--phases run floor killed resume_finished sql] [--model claude-haiku-4-5] [--cap 1e9] [--pin]

``--cap USD`` runs every call with ``max_cost_usd=USD`` (``1e9``: a cap that never binds,
to measure what the cap's estimates, admission and calibration cost).

Results: ``benchmarks/results/bench_stream.json``: one object per size, model and cap
(``max_cost_usd``, absent without one), replaced when measured again (the one it replaces
kept under ``previous``, and the ones that one replaced under its ``previous``). ``--phases`` measures
some phases only (``sql`` then reads the clean run's folder unless ``killed`` is asked).

``--runs N`` measures every size N times in one sitting (sizes inner: 1M, 10M, 1M, 10M,
...), ``run`` and ``floor`` in turn first; each run is an entry of its own, tagged with
the sitting (``sitting``: ``started``, ``run``, ``of``), so the current entry and the
ones under its ``previous`` hold the sitting's runs, and ``report_overhead.py`` gives
their medians.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The models measured (gemini-2.5-flash, gpt-4.1-mini) have announced shutdowns
# (batchata_df.models.SCHEDULED); the emulator and the client read them at this date, the
# date the benchmarks were measured at, so later sittings measure the same requests (and
# the README's numbers stay comparable) instead of a refusal or Gemini's routed successor.
os.environ.setdefault("BATCHATA_DF_TODAY", "2026-10-31")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_overhead import PROVIDERS, STREAM_FLOORS, _code, child_env, pin_emulator  # noqa: E402

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

# The peak RSS of each phase of the call (sampled every 0.5 s in this process, and at
# each phase's end): sending and collecting, compaction, the job-id index, the sink pass.
import threading
from batchata_df import stream
from batchata_df.state import StateStore
PHASE, PEAK = ["send"], {}
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
def sample(stop):
    while not stop.wait(0.5):
        PEAK[PHASE[0]] = max(PEAK.get(PHASE[0], 0.0), rss())
def mark(obj, attr, name):
    inner = getattr(obj, attr)
    def wrapped(*a, **k):
        before, PHASE[0] = PHASE[0], name
        try:
            return inner(*a, **k)
        finally:
            PEAK[name] = max(PEAK.get(name, 0.0), rss())
            PHASE[0] = before
    setattr(obj, attr, wrapped)
mark(StateStore, "compact", "compact")
mark(StateStore, "job_index", "job_index")
mark(stream, "_write_sink", "write_sink")
stop = threading.Event()
threading.Thread(target=sample, args=(stop,), daemon=True).start()

src, sink, state, model = sys.argv[1:5]
cap = float(sys.argv[5]) if sys.argv[5:] and sys.argv[5] else None
t0 = time.perf_counter()
out = batch_llm(pl.scan_parquet(src), schema=Answer, model=model, prompt="{text}",
                state=state, sink=sink, max_parallel_batches=32, max_cost_usd=cap)
PHASE[0] = "after"
counts = out.group_by("_status").len().collect(engine="streaming")
stop.set()
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "status": dict(counts.iter_rows()), **HWM(),
                  "peak_rss_mb_by_phase": {k: round(v, 1) for k, v in PEAK.items()}}))
'''

SQL = HWM + r'''
import json, sys, time
from batchata_df import sql
t0 = time.perf_counter()
r = sql("SELECT status, count(*) AS n, sum(cost_usd) AS usd FROM jobs GROUP BY status",
        sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": r.to_dicts(), **HWM()}))
'''


CHECK = r"""
import json, sys
import polars as pl
out = pl.scan_parquet(sys.argv[1])
n = pl.len()
row = out.select(
    n.alias("rows"),
    (pl.col("text").str.extract(r"^Review (\d+):").cast(pl.Int64) == pl.int_range(n))
    .all().alias("in_order"),
    (pl.col("_status") == "completed").sum().alias("completed"),
    pl.col("label").is_not_null().sum().alias("labelled"),
).collect(engine="streaming").row(0, named=True)
print(json.dumps(row))
"""
"""The output read back: its rows, whether they are in input order, how many completed
(0 for the floor's output, which has no ``_status``) and how many have a label."""
FLOOR_CHECK = CHECK.replace('(pl.col("_status") == "completed")', "pl.lit(None, pl.UInt32)")


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of a running process (and its waited-for children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(v) for v in fields[11:15]) / ticks


def run_child(code: str, args: list[str], env: dict[str, str], watch: Path | None = None,
              kill_at_parts: int | None = None) -> dict[str, object]:
    """Run one client in a fresh process: wall, CPU and peak RSS of that process.

    With ``kill_at_parts``, the process is killed with SIGKILL as soon as the state folder
    ``watch`` holds that many job event parts (a crash mid-run, at a point of progress
    rather than of time, so a busy machine does not move it); the figures are then those
    up to the kill.
    """
    most_parts = 0
    samples: list[tuple[float, float]] = []
    at_kill: dict[str, float] = {}
    done = threading.Event()
    pid = 0

    def parts(table: str) -> int:
        folder = watch / table if watch is not None else None
        return len(list(folder.glob("part-*.parquet"))) if folder and folder.is_dir() else 0

    def watch_child() -> None:
        """Every 10 s: the child's RSS (a curve, not only the peak) and the part count;
        every second the part count, when it decides the kill."""
        nonlocal most_parts
        last = 0.0
        while not done.wait(10.0 if kill_at_parts is None else 1.0):
            if kill_at_parts is not None and parts("jobs") >= kill_at_parts:
                with contextlib.suppress(OSError, IndexError, ValueError):
                    status = Path(f"/proc/{pid}/status").read_text()
                    at_kill["vm_hwm_mb_at_kill"] = round(
                        int(status.split("VmHWM:")[1].split()[0]) / 1024, 1)
                at_kill["job_parts_at_kill"] = parts("jobs")
                os.kill(pid, signal.SIGKILL)
                return
            if time.perf_counter() - last < 10.0:
                continue
            last = time.perf_counter()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                rss = int(status.split("VmRSS:")[1].split()[0]) / 1024
            except (OSError, IndexError, ValueError):
                continue
            samples.append((round(time.perf_counter() - t0, 1), round(rss, 1)))
            print(f"  t={samples[-1][0]:>7}s rss={rss:8.1f} MB", file=sys.stderr, flush=True)
            most_parts = max(most_parts, parts("jobs") + parts("batches"))

    watcher = threading.Thread(target=watch_child, daemon=True)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=out,
                                stderr=err)
        pid = proc.pid
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        done.set()
        if kill_at_parts is not None and os.waitstatus_to_exitcode(status) == -signal.SIGKILL:
            return {"wall_s": round(wall, 2),
                    "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                    "killed_after_s": round(wall, 1), **at_kill,
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
    # The ledger of a 10M-row point is 10M entries: the emulator's own client gives a
    # control call 60 s, which a busy machine passes; this read gets 15 minutes.
    with emu._opener.open(emu.url + "/_emulator/billing", timeout=900) as response:  # type: ignore[attr-defined]
        bills = json.loads(response.read())
    return {"billed": len(bills), "distinct": len({b["request"] for b in bills})}


PHASES = ("run", "floor", "killed", "resume_finished", "sql")
"""``run``: the uninterrupted run; ``floor``: the streamed floor on the same input;
``killed``: killed at half and resumed; then the finished folder resumed; then ``sql``
(over the killed-and-resumed folder, or the clean run's when ``killed`` is not asked
for)."""


def point(n: int, work: Path, emu: object, env: dict[str, str],
          save: Callable[[dict[str, object]], None], *, phases: Sequence[str],
          model: str, cap: float | None = None,
          pinned: dict[str, list[int]] | None = None,
          sitting: dict[str, object] | None = None,
          floor_first: bool = False) -> dict[str, object]:
    """One size and model: the ``phases`` asked for (see :data:`PHASES`), in that order
    (``floor`` before ``run`` when ``floor_first``: a sitting's runs alternate the first
    client, as ``bench_overhead.py``'s do).

    Each phase is saved as soon as it ends. ``cap``: every call runs with
    ``max_cost_usd=cap`` (the cap's admission, estimates and calibration measured).
    ``sitting`` (``started``, ``run``, ``of``) is recorded: the runs of one ``--runs N``
    sitting, which the report takes the medians of.
    """
    src = work / f"in-{n}"
    if not src.exists():  # a sitting's later runs read the same files
        make_input(n, src)
    args = [str(src / "*.parquet")]
    tail = [] if cap is None else [repr(cap)]  # the RUN child's max_cost_usd
    row: dict[str, object] = {
        "rows": n,
        "model": model,
        **({} if cap is None else {"max_cost_usd": cap}),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "input_mb": _size_mb(src),
        "phases": list(phases),
        "code": _code(),
        "pinned": pinned,
        **({} if sitting is None else {"sitting": sitting}),
    }
    pid = emu._proc.pid  # type: ignore[attr-defined]
    state = work / f"state-{n}-{model}"

    def run() -> None:
        emu.reset()  # type: ignore[attr-defined]
        sink = work / f"out-{n}-{model}.parquet"
        # A fresh folder and sink: an earlier run's folder would be resumed, sending nothing.
        shutil.rmtree(state, ignore_errors=True)
        sink.unlink(missing_ok=True)
        row["loadavg_before_run"] = [round(x, 2) for x in os.getloadavg()]
        emu_cpu0 = _cpu_of(pid)
        row["run"] = run_child(RUN, [*args, str(sink), str(state), model, *tail], env,
                               watch=state)
        row["emulator_cpu_s"] = round(_cpu_of(pid) - emu_cpu0, 2)
        save(row)  # before the checks: a check that fails does not lose the run's figures
        row.update(_finished(state, sink, emu, env))
        save(row)
        wrong = output_faults(row, n)
        if wrong:
            raise SystemExit(f"{n:,} {model}: the output is wrong: {'; '.join(wrong)}")

    def floor() -> None:
        # The leanest streamed client of the same rows and model, no checkpoints.
        emu.reset()  # type: ignore[attr-defined]
        sink = work / f"floor-{n}-{model}.parquet"
        row["loadavg_before_floor"] = [round(x, 2) for x in os.getloadavg()]
        emu_cpu0 = _cpu_of(pid)
        measured = run_child(STREAM_FLOORS[_provider(model)], [str(n), args[0], str(sink)],
                             env)
        measured["emulator_cpu_s"] = round(_cpu_of(pid) - emu_cpu0, 2)
        measured["billed_requests"] = _billing(emu)["billed"]
        measured["output_check"] = run_child(FLOOR_CHECK, [str(sink)], env)
        row["floor"] = measured
        save(row)

    first = [f for f in ((floor, run) if floor_first else (run, floor))
             if f.__name__ in phases]  # fmt: skip
    for phase in first:
        phase()
    if "run" in row and "floor" in row:
        row["ratio_to_floor"] = ratio_to_floor(row, n)
        save(row)
        wrong = output_faults(row, n)
        if wrong:  # saved (nothing measured is lost), but never read as a valid point
            raise SystemExit(f"{n:,} {model}: the outputs are wrong: {'; '.join(wrong)}")

    if "killed" in phases:
        # A crash mid-stream: SIGKILL once half the job event parts are written (every
        # batch writes two: its jobs assigned, then their results), then the same call.
        emu.reset()  # type: ignore[attr-defined]
        state, sink = work / f"killed-{n}-{model}", work / f"killed-{n}-{model}.parquet"
        call = [*args, str(sink), str(state), model, *tail]
        batches = -(-n // _batch_size(model))
        row["loadavg_before_killed_run"] = [round(x, 2) for x in os.getloadavg()]
        killed = run_child(RUN, call, env, watch=state, kill_at_parts=batches)
        killed["billed_at_kill"] = _billing(emu)["billed"]
        row["killed"] = killed
        save(row)
        row["loadavg_before_kill_resume"] = [round(x, 2) for x in os.getloadavg()]
        resumed = run_child(RUN, call, env, watch=state)
        billed = _billing(emu)
        resumed["billed_both_processes"] = billed["billed"]
        resumed["distinct_requests"] = billed["distinct"]
        row["kill_resumed"] = resumed
        after = _finished(state, sink, emu, env)
        resumed["output_check"] = after.pop("output_check")
        row["after_kill_resume"] = after
        save(row)

    if "resume_finished" in phases:
        # The finished folder, resumed again: sends nothing.
        sink = work / f"again-{n}-{model}.parquet"
        row["loadavg_before_resume_finished"] = [round(x, 2) for x in os.getloadavg()]
        row["resume_finished"] = run_child(RUN, [*args, str(sink), str(state), model, *tail],
                                           env)
        row["billed_after_resume_finished"] = _billing(emu)["billed"]
        save(row)
    if "sql" in phases:
        row["loadavg_before_sql"] = [round(x, 2) for x in os.getloadavg()]
        row["sql"] = run_child(SQL, [str(state)], env)
        save(row)
    return row


def output_faults(row: dict[str, Any], n: int) -> list[str]:
    """What is wrong with the outputs of a point's ``run`` and ``floor`` (empty: nothing).

    A run's output must hold ``n`` rows in input order, every one ``completed`` and
    labelled, each request billed once; the floor's the same (its output has no status).
    A phase not measured is not checked.

    >>> good = {"rows": 3, "in_order": True, "completed": 3, "labelled": 3}
    >>> output_faults({"output_check": good, "billed_requests": 3, "distinct_requests": 3}, 3)
    []
    >>> floor = {"output_check": {**good, "completed": None, "labelled": 2},
    ...          "billed_requests": 3}
    >>> output_faults({"floor": floor}, 3)
    ['floor: 2 of 3 rows labelled']
    """
    faults: list[str] = []
    phases = {"run": row} if "output_check" in row else {}
    if isinstance(row.get("floor"), dict):
        phases["floor"] = row["floor"]
    for name, got in phases.items():
        check = got.get("output_check") or {}
        if check.get("rows") != n:
            faults.append(f"{name}: {check.get('rows')} rows, not {n}")
        if not check.get("in_order"):
            faults.append(f"{name}: rows out of input order")
        if name == "run" and check.get("completed") != n:
            faults.append(f"run: {check.get('completed')} of {n} rows completed")
        if check.get("labelled") != n:
            faults.append(f"{name}: {check.get('labelled')} of {n} rows labelled")
        if got.get("billed_requests") != n:
            faults.append(f"{name}: {got.get('billed_requests')} requests billed, not {n}")
        if name == "run" and row.get("distinct_requests") != n:
            faults.append(f"run: {row.get('distinct_requests')} distinct requests, not {n}")
    return faults


def ratio_to_floor(row: dict[str, Any], n: int) -> dict[str, float] | None:
    """``run`` over ``floor`` (wall, client CPU, peak RSS) of one point, or ``None`` when
    either output is wrong (:func:`output_faults`) or either phase is missing: a ratio is
    only taken between two clients that did the same work.

    >>> ok = {"rows": 2, "in_order": True, "completed": 2, "labelled": 2}
    >>> run = {"wall_s": 3.0, "cpu_s": 2.0, "vm_hwm_mb": 300.0}
    >>> floor = {"wall_s": 2.0, "cpu_s": 1.0, "vm_hwm_mb": 200.0, "billed_requests": 2,
    ...          "output_check": {**ok, "completed": None}}
    >>> point = {"run": run, "floor": floor, "output_check": ok, "billed_requests": 2,
    ...          "distinct_requests": 2}
    >>> ratio_to_floor(point, 2)
    {'wall_s': 1.5, 'cpu_s': 2.0, 'vm_hwm_mb': 1.5}
    >>> ratio_to_floor({**point, "billed_requests": 4}, 2) is None
    True
    """
    ours, floor = row.get("run"), row.get("floor")
    measured = isinstance(ours, dict) and isinstance(floor, dict) and "output_check" in row
    if not measured or output_faults(row, n):
        return None
    return {k: round(ours[k] / floor[k], 3) for k in ("wall_s", "cpu_s", "vm_hwm_mb")}


def _provider(model: str) -> str:
    """The provider of a model name: ``"anthropic"``, ``"gemini"`` or ``"openai"``."""
    if model.startswith("claude"):
        return "anthropic"
    if model.startswith("gemini"):
        return "gemini"
    return "openai"


def _batch_size(model: str) -> int:
    """Most requests in one batch of the model's provider (OpenAI 50,000; others 100,000)."""
    from batchata_df.providers.anthropic import AnthropicProvider
    from batchata_df.providers.gemini import GeminiProvider
    from batchata_df.providers.openai import OpenAIProvider

    return {"anthropic": AnthropicProvider, "gemini": GeminiProvider,
            "openai": OpenAIProvider}[_provider(model)].max_requests


def _finished(state: Path, sink: Path, emu: object, env: dict[str, str]) -> dict[str, object]:
    """A finished folder and output: billing, parts, sizes, the output's rows and order."""
    billed = _billing(emu)
    return {
        "billed_requests": billed["billed"],
        "distinct_requests": billed["distinct"],
        "state_parts_after_run": {
            t: len(list((state / t).glob("part-*.parquet"))) for t in ("jobs", "batches")
        },
        "state_mb": _size_mb(state),
        "output_mb": round(sink.stat().st_size / 1e6, 2),
        "output_check": run_child(CHECK, [str(sink)], env),
    }


def main() -> None:
    """Run the points and write the results JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (large)")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES),
                        help="which measurements, in this order (default: all)")
    parser.add_argument("--model", default="gpt-4.1-mini",
                        help="model (so provider) of the run, e.g. claude-haiku-4-5")
    parser.add_argument("--cap", type=float, default=None, metavar="USD",
                        help="run every call with max_cost_usd=USD (a separate entry of the "
                             "results, beside the uncapped one of the same size and model)")
    parser.add_argument("--pin", action="store_true",
                        help="the emulator on the last core, the clients on the others "
                             "(as bench_overhead.py --pin)")
    parser.add_argument("--runs", type=int, default=1,
                        help="measure each size this many times, one after another, the first "
                             "client alternating (run then floor, floor then run, ...): "
                             "each run its own entry, the report takes their medians")
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in this folder and keep it (inputs, state folders, sinks)")
    args = parser.parse_args()
    if "floor" in args.phases and PROVIDERS[_provider(args.model)] != args.model:
        parser.error(f"the floor sends {PROVIDERS[_provider(args.model)]}: run --phases "
                     f"floor with that model, or without floor")

    from batchata_df.emulator import Emulator

    results_file = HERE / "results" / "bench_stream.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else []
    keep = contextlib.nullcontext(str(args.keep)) if args.keep else None
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    scratch_dir = keep or tempfile.TemporaryDirectory(dir=args.work)
    pinned = pin_emulator() if args.pin else None
    with scratch_dir as scratch, Emulator(latency=0.0) as emu:
        if pinned is not None:
            os.sched_setaffinity(0, pinned["clients"])  # every client inherits this
        env = child_env(emu.env())
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        for i, n in itertools.product(range(args.runs), args.sizes):
            key = (n, args.model, args.cap)
            # The entry this point replaces is kept under "previous", with the ones it
            # replaced under its own "previous": nothing measured is dropped.
            previous = next((r for r in results if _key(r) == key), None)

            def save(row: dict[str, object], previous: dict[str, object] | None = previous,
                     ) -> None:
                nonlocal results
                results = replaced(results, row, previous)
                results_file.parent.mkdir(exist_ok=True)
                results_file.write_text(json.dumps(results, indent=2) + "\n")

            sitting = {"started": started, "run": i + 1, "of": args.runs}
            row = point(n, Path(scratch), emu, env, save, phases=args.phases, model=args.model,
                        cap=args.cap, pinned=pinned, sitting=sitting, floor_first=i % 2 == 1)
            print(json.dumps({k: v for k, v in row.items() if k != "run"}), flush=True)


def replaced(results: list[dict[str, Any]], row: dict[str, Any],
             previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``results`` with ``row`` in place of its size, model and cap's entry, in file order.

    ``previous`` (the entry that was there when the point started, with its own
    ``previous`` chain) is kept under ``row["previous"]``: nothing measured is dropped,
    however often a point is measured again.

    >>> old = {"rows": 10, "model": "m", "code": "a", "previous": {"rows": 10, "code": "z"}}
    >>> new = replaced([old], {"rows": 10, "model": "m", "code": "b"}, old)
    >>> [new[0]["code"], new[0]["previous"]["code"], new[0]["previous"]["previous"]["code"]]
    ['b', 'a', 'z']
    """
    entry = {**row, "previous": previous} if previous else row
    out = [r for r in results if _key(r) != _key(row)] + [entry]
    out.sort(key=_order)
    return out


def _key(entry: dict[str, object]) -> tuple[int, str, float | None]:
    """Results are one entry per size, model and cap (older entries: OpenAI's gpt-4.1-mini,
    no cap)."""
    cap = entry.get("max_cost_usd")
    return (int(entry["rows"]), str(entry.get("model", "gpt-4.1-mini")),  # type: ignore[call-overload]
            None if cap is None else float(cap))  # type: ignore[arg-type]


def _order(entry: dict[str, object]) -> tuple[int, str, float]:
    """The file's order: by size, model, then uncapped before capped."""
    rows, model, cap = _key(entry)
    return rows, model, -1.0 if cap is None else cap

if __name__ == "__main__":
    main()
