"""Where one client's CPU, system CPU and page faults go, stage by stage (issue 14, point 3).

Runs one client of ``bench_overhead.py`` (batch_llm, or ``--floor``) in a fresh process
against the emulator (latency 0), with wrappers around its stages that add up, per stage,
user CPU, system CPU and minor page faults (``getrusage`` of the whole process, Polars'
threads included), *exclusive* of the stages nested inside it. ``TOTAL`` is the process.

    python benchmarks/profile_stages.py --provider openai --rows 1000000
    python benchmarks/profile_stages.py --provider openai --rows 1000000 --floor
    python benchmarks/profile_stages.py --provider openai --rows 1000000 --cap 1e9
    python benchmarks/profile_stages.py --rows 1000000 --stream
    python benchmarks/profile_stages.py --provider anthropic --rows 1000000 --fine

``--stream`` profiles the streaming child of ``bench_stream.py`` (``RUN``: Parquet in,
``sink=`` Parquet out, OpenAI) with the streaming path's stages added (:data:`STREAM`).

The floor's own steps are module code, not functions: for it only the SDK's upload and
download, pyarrow's JSON reader and ``Series.to_list`` are timed. ``benchmarks/PROFILE.md``
(eighth pass) has what it showed. Take the benchmark mutex on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# The models measured (gemini-2.5-flash, gpt-4.1-mini) have announced shutdowns
# (batchata_df.models.SCHEDULED); the emulator and the client read them at this date, the
# date the benchmarks were measured at, so later sittings measure the same requests (and
# the README's numbers stay comparable) instead of a refusal or Gemini's routed successor.
os.environ.setdefault("BATCHATA_DF_TODAY", "2026-10-31")

HERE = Path(__file__).resolve().parent

STAGES = {
    # name: (module, class or "", attribute)
    "job ids": ("batchata_df.jobs", "", "job_ids"),
    "build jobs (rest)": ("batchata_df.jobs", "", "build_jobs"),
    "estimates (cap)": ("batchata_df.frame", "", "with_estimates"),
    "encode lines": ("batchata_df.providers.{p}", "{P}Provider", "encode"),
    "submit (join, upload, create)": ("batchata_df.providers.{p}", "{P}Provider", "submit"),
    "results (normalise)": ("batchata_df.providers.{p}", "{P}Provider", "results"),
    "read_jsonl (rest)": ("batchata_df.providers.base", "", "read_jsonl"),
    "outcomes_to_events (validation)": ("batchata_df.engine.collection", "", "outcomes_to_events"),
    "Ledger.terminal (cost)": ("batchata_df.engine.ledger", "Ledger", "terminal"),
    "Admission.settle": ("batchata_df.engine.admission", "Admission", "settle"),
    "part writes": ("batchata_df.state", "StateStore", "_write_part"),
    "polls": ("batchata_df.engine.collection", "Collector", "poll"),
    "final states": ("batchata_df.state", "StateStore", "written_states"),
    "snapshot": ("batchata_df.state", "StateStore", "snapshot"),
    "Engine.run (rest)": ("batchata_df.engine.driver", "Engine", "run"),
    "output frame": ("batchata_df.frame", "", "_assemble"),
    "batch_llm (rest)": ("batchata_df.frame", "", "batch_llm"),
}
"""batchata_df's stages; ``{p}``/``{P}``: the provider's module / class name."""

STREAM = {
    "stream: read input chunk (rest)": ("batchata_df.stream", "ChunkSource", "_read"),
    "stream: spill chunk (write_parquet)": ("polars", "DataFrame", "write_parquet"),
    "stream: SeenIds (later)": ("batchata_df.stream", "SeenIds", "check_and_add"),
    "stream: next_chunk (rest)": ("batchata_df.stream", "ChunkSource", "next_chunk"),
    "feeder: latest_status": ("batchata_df.state", "StateStore", "latest_status"),
    "feeder: _unsettled (rest)": ("batchata_df.engine.source", "Feeder", "_unsettled"),
    "job index (build)": ("batchata_df.state", "StateStore", "job_index"),
    "job index: events": ("batchata_df.jobindex", "JobIndex", "events"),
    "job index: prefetch": ("batchata_df.jobindex", "JobIndex", "prefetch"),
    "compact": ("batchata_df.state", "StateStore", "compact"),
    "sink: job_states_of": ("batchata_df.engine.driver", "", "job_states_of"),
    "sink: summary": ("batchata_df.summary", "SummaryWriter", "add"),
    "sink: summary close": ("batchata_df.summary", "SummaryWriter", "close"),
    "sink: ParquetWriter": ("batchata_df.stream", "SinkWriter", "write"),
    "sink: _write_sink (rest)": ("batchata_df.stream", "", "_write_sink"),
    "Engine.run_source (rest)": ("batchata_df.engine.driver", "Engine", "run_source"),
    "stream_llm (rest)": ("batchata_df.stream", "", "stream_llm"),
}
"""The streaming path's stages (``--stream``), besides :data:`STAGES`."""

FINE = {
    # Engine.run's own steps (the tenth pass: "Engine.run (rest)" taken apart).
    "run: recover": ("batchata_df.engine.recovery", "", "recover"),
    "run: resolve_lost": ("batchata_df.engine.recovery", "", "resolve_lost"),
    "run: settled": ("batchata_df.engine.recovery", "", "settled"),
    "run: _count_done": ("batchata_df.engine.driver", "Engine", "_count_done"),
    "run: Admission.hold_recovered": ("batchata_df.engine.admission", "Admission",
                                      "hold_recovered"),
    "run: Planner.add": ("batchata_df.engine.planning", "Planner", "add"),
    "run: _job_states": ("batchata_df.engine.driver", "", "_job_states"),
    "run: with_unavailable": ("batchata_df.engine.driver", "", "with_unavailable"),
    "drive: Planner.current (rest)": ("batchata_df.engine.planning", "Planner", "current"),
    "drive: Planner.took": ("batchata_df.engine.planning", "Planner", "took"),
    "drive: Admission.admit": ("batchata_df.engine.admission", "Admission", "admit"),
    "drive: Submitter.submit (rest)": ("batchata_df.engine.submission", "Submitter", "submit"),
    "drive: Submitter.fill (rest)": ("batchata_df.engine.submission", "Submitter", "fill"),
    "drive: Collector.collect (rest)": ("batchata_df.engine.collection", "Collector",
                                        "collect"),
    "drive: Collector.poll_due (rest)": ("batchata_df.engine.collection", "Collector",
                                         "poll_due"),
    "drive: report": ("batchata_df.engine.run", "", "report"),
    "drive: Engine._drive (rest)": ("batchata_df.engine.driver", "Engine", "_drive"),
    "store: append_jobs (rest)": ("batchata_df.state", "StateStore", "append_jobs"),
    "store: append_batch (rest)": ("batchata_df.state", "StateStore", "append_batch"),
    "store: _conform": ("batchata_df.state", "", "_conform"),
    "store: WrittenJobs.add": ("batchata_df.state", "WrittenJobs", "add"),
    "store: WrittenJobs.answers": ("batchata_df.state", "WrittenJobs", "answers"),
    "store: write_parquet": ("polars", "DataFrame", "write_parquet"),
    "store: os.fsync": ("os", "", "fsync"),
    "store: StateStore()": ("batchata_df.state", "StateStore", "__init__"),
    "validation: _FastPath.checked": ("batchata_df.schema", "_FastPath", "checked"),
    "validation: _FastPath._decoded": ("batchata_df.schema", "_FastPath", "_decoded"),
    "cost: with_usage_columns": ("batchata_df.cost", "", "with_usage_columns"),
    # batch_llm's own steps ("batch_llm (rest)").
    "batch_llm: _check_models": ("batchata_df.frame", "", "_check_models"),
    "batch_llm: _warn_serialised": ("batchata_df.frame", "", "_warn_serialised"),
    "batch_llm: _warn_unavailable": ("batchata_df.frame", "", "_warn_unavailable"),
    "batch_llm: _job_salt": ("batchata_df.frame", "", "_job_salt"),
    "batch_llm: check_run_arguments": ("batchata_df.frame", "", "check_run_arguments"),
    "any: DataFrame.unique": ("polars", "DataFrame", "unique"),
    "any: DataFrame.filter": ("polars", "DataFrame", "filter"),
    "batch_llm: make_provider": ("batchata_df.frame", "", "make_provider"),
}
"""Finer stages (``--fine``): what "Engine.run (rest)" and "batch_llm (rest)" are made of.
``DataFrame.unique`` / ``filter`` and ``os.fsync`` count wherever they are called."""

LIBRARY = {
    "SDK upload": ("openai.resources.files", "Files", "create"),
    "SDK download": ("openai.resources.files", "Files", "content"),
    "pyarrow read_json": ("pyarrow.json", "", "read_json"),
    "Series.to_list": ("polars", "Series", "to_list"),
}
"""Library calls both clients make (the SDK's only for OpenAI)."""

# Runs in the client's process, before the client's code (``exec``'d with its path).
WRAPPER = r'''
import collections, functools, importlib, resource, sys

_acc = collections.defaultdict(lambda: [0.0, 0.0, 0, 0])
_stack = []

def _usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return (r.ru_utime, r.ru_stime, r.ru_minflt)

def _wrap(name, f):
    @functools.wraps(f)
    def timed(*a, **k):
        t0 = _usage()
        _stack.append([0.0, 0.0, 0])
        try:
            return f(*a, **k)
        finally:
            t1, inner = _usage(), _stack.pop()
            d = [t1[i] - t0[i] for i in range(3)]
            for i in range(3):
                _acc[name][i] += d[i] - inner[i]
                if _stack:
                    _stack[-1][i] += d[i]
            _acc[name][3] += 1
    return timed

def _patch_everywhere(orig, new):
    # Every module that imported the function by name gets the wrapper too.
    for module in list(sys.modules.values()):
        for key, value in list(getattr(module, "__dict__", {}).items()):
            if value is orig:
                setattr(module, key, new)

def _install(stages):
    import pkgutil
    import batchata_df
    for info in pkgutil.walk_packages(batchata_df.__path__, "batchata_df."):
        if not any(s in info.name for s in ("emulator", "demo", "cli", "notebook")):
            try:
                importlib.import_module(info.name)
            except Exception:
                pass
    for name, (mod, cls, attr) in stages.items():
        try:
            module = importlib.import_module(mod)
        except ImportError:
            continue
        owner = getattr(module, cls, None) if cls else module
        if owner is None or not hasattr(owner, attr):
            continue
        if cls:
            setattr(owner, attr, _wrap(name, getattr(owner, attr)))
        else:
            _patch_everywhere(getattr(owner, attr), _wrap(name, getattr(owner, attr)))

def _report():
    total = _usage()
    print(f"{'stage':34} {'user s':>7} {'sys s':>7} {'minor faults':>13} {'calls':>6}",
          file=sys.stderr)
    for name, (u, s, f, n) in sorted(_acc.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
        print(f"{name:34} {u:7.2f} {s:7.2f} {f:13d} {n:6d}", file=sys.stderr)
    print(f"{'TOTAL (process)':34} {total[0]:7.2f} {total[1]:7.2f} {total[2]:13d}",
          file=sys.stderr)
'''


def main() -> None:
    sys.path.insert(0, str(HERE))
    import bench_overhead as bo

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--provider", choices=list(bo.PROVIDERS), default="openai")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--floor", action="store_true", help="profile the floor instead")
    parser.add_argument("--cap", type=float, default=None, help="batch_llm's max_cost_usd")
    parser.add_argument("--fine", action="store_true",
                        help="add the finer stages of Engine.run and batch_llm (FINE)")
    parser.add_argument("--stream", action="store_true",
                        help="profile bench_stream.py's streaming child (sink=) instead")
    parser.add_argument("--pin", action="store_true",
                        help="the emulator on the last core, the client on the others "
                        "(as bench_overhead.py --pin)")
    args = parser.parse_args()
    if args.stream:
        stream(args.rows, args.cap, args.pin)
        return

    from batchata_df.emulator import Emulator

    provider = args.provider
    title = {"openai": "OpenAI", "anthropic": "Anthropic", "gemini": "Gemini"}[provider]
    chosen = {**STAGES, **(FINE if args.fine else {})}
    stages = {} if args.floor else {
        name: (mod.format(p=provider), cls.format(P=title), attr)
        for name, (mod, cls, attr) in chosen.items()
    }  # fmt: skip
    stages.update(LIBRARY)
    client = bo.FLOORS[provider] if args.floor else bo.OURS
    if args.cap is not None and not args.floor:
        client = client.replace("progress=False", f"progress=False, max_cost_usd={args.cap!r}")
    bo.compile_bytecode()
    cores = sorted(os.sched_getaffinity(0))
    if args.pin:
        if len(cores) < 2:
            raise SystemExit(f"--pin needs two cores or more; this process may use {cores}")
        os.sched_setaffinity(0, cores[-1:])  # the emulator inherits it at start
    with Emulator(latency=0.0) as emu, tempfile.TemporaryDirectory() as work:
        if args.pin:
            os.sched_setaffinity(0, cores[:-1])  # the client inherits this
        script = Path(work) / "client.py"
        script.write_text(
            WRAPPER + f"\n_install({stages!r})\nimport atexit\natexit.register(_report)\n"
            + client
        )
        state = str(Path(work) / "state")
        argv = [str(args.rows)] if args.floor else [str(args.rows), state,
                                                    bo.PROVIDERS[provider]]
        proc = subprocess.Popen(
            [sys.executable, str(script), *argv], env=bo.child_env(emu.env()),
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("the client failed (its error is above)")
    print(
        f"{'floor' if args.floor else 'batch_llm'} {provider} {args.rows:,} rows: "
        f"user {usage.ru_utime:.2f} s, system {usage.ru_stime:.2f} s, "
        f"{usage.ru_minflt:,} minor faults, peak RSS {usage.ru_maxrss / 1024:,.0f} MB, "
        f"load {os.getloadavg()[0]:.1f}"
    )


def stream(rows: int, cap: float | None, pin: bool = False) -> None:
    """Profile ``bench_stream.RUN`` (OpenAI, ``rows`` distinct prompts, Parquet to Parquet)."""
    sys.path.insert(0, str(HERE))
    import bench_overhead as bo
    import bench_stream as bs

    from batchata_df.emulator import Emulator

    stages = {
        name: (mod.format(p="openai"), cls.format(P="OpenAI"), attr)
        for name, (mod, cls, attr) in {**STAGES, **STREAM}.items()
    }
    stages.update(LIBRARY)
    bo.compile_bytecode()
    cores = sorted(os.sched_getaffinity(0))
    if pin:
        if len(cores) < 2:
            raise SystemExit(f"--pin needs two cores or more; this process may use {cores}")
        os.sched_setaffinity(0, cores[-1:])  # the emulator inherits it at start
    with Emulator(latency=0.0) as emu, tempfile.TemporaryDirectory() as work:
        if pin:
            os.sched_setaffinity(0, cores[:-1])  # the client inherits this
        src = bs.make_input(rows, Path(work) / "in")
        script = Path(work) / "client.py"
        script.write_text(
            WRAPPER + f"\n_install({stages!r})\nimport atexit\natexit.register(_report)\n"
            + bs.RUN
        )
        argv = [str(src / "*.parquet"), str(Path(work) / "out.parquet"),
                str(Path(work) / "state"), "gpt-4.1-mini", *([] if cap is None else [repr(cap)])]
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen([sys.executable, str(script), *argv],
                                    env=bo.child_env(emu.env()), stdout=out)
            _, status, usage = os.wait4(proc.pid, 0)
            out.seek(0)
            reported = out.read().decode().strip().splitlines()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("the client failed (its error is above)")
    print(reported[-1])
    print(
        f"batch_llm sink= openai {rows:,} rows: user {usage.ru_utime:.2f} s, system "
        f"{usage.ru_stime:.2f} s, {usage.ru_minflt:,} minor faults, peak RSS "
        f"{usage.ru_maxrss / 1024:,.0f} MB, load {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
