"""Where a streaming run's memory goes: RSS sampled in-process, with phase markers.

Runs ``batch_llm(pl.scan_parquet(IN), ..., sink=OUT, state=STATE)`` in this process
against an emulator process (latency 0), samples its own ``VmRSS`` every 0.2 s and marks
the phases of a streaming run (sending; the chunks never read; compaction; the job-id
index; the sink pass), so the peak of each phase can be compared between sizes:

    python benchmarks/profile_stream_memory.py --rows 3000000 --work /tmp/prof

Prints one JSON line: per phase its start, end and peak RSS (MB), and the overall peak.
With ``--keep-uncompacted`` the state folder is copied just before it is compacted (to
replay the end of a run: ``--replay FOLDER`` runs compaction, the index and a sink pass of
that copy's jobs without the engine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The models measured (gemini-2.5-flash, gpt-4.1-mini) have announced shutdowns
# (batchata_df.models.SCHEDULED); the emulator and the client read them at this date, the
# date the benchmarks were measured at, so later sittings measure the same requests (and
# the README's numbers stay comparable) instead of a refusal or Gemini's routed successor.
os.environ.setdefault("BATCHATA_DF_TODAY", "2026-10-31")

PHASES: list[list[Any]] = []  # [name, start, end, peak_mb]
_PHASE = ["start"]
_PEAK: dict[str, float] = {}
TIMELINE: list[tuple[float, int, str]] = []


def _rss_mb() -> float:
    for line in open("/proc/self/status"):  # noqa: SIM115 - tiny file read per sample
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _sampler(stop: threading.Event) -> None:
    while not stop.wait(0.2):
        rss = _rss_mb()
        name = _PHASE[0]
        _PEAK[name] = max(_PEAK.get(name, 0.0), rss)
        TIMELINE.append((round(time.perf_counter() - T0, 1), round(rss), name))


def _mark(obj: Any, attr: str, name: str) -> None:
    """Wrap ``obj.attr`` so the time inside it counts as phase ``name``."""
    inner: Callable[..., Any] = getattr(obj, attr)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        before = _PHASE[0]
        _PHASE[0] = name
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            PHASES.append([name, round(t0 - T0, 1), round(time.perf_counter() - T0, 1)])
            _PEAK[name] = max(_PEAK.get(name, 0.0), _rss_mb())
            _PHASE[0] = before

    setattr(obj, attr, wrapped)


T0 = time.perf_counter()


def main() -> None:
    """Run one streaming call with phase markers, or replay the end of one."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--keep-uncompacted", action="store_true")
    parser.add_argument("--timeline", type=float, default=0.0,
                        help="print the RSS every this many seconds")
    parser.add_argument("--resume", action="store_true",
                        help="call again on the finished state folder (sends nothing)")
    args = parser.parse_args()

    import polars as pl
    from pydantic import BaseModel

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_stream import make_input  # type: ignore[import-not-found]

    from batchata_df import batch_llm, stream
    from batchata_df.emulator import Emulator
    from batchata_df.state import StateStore

    class Answer(BaseModel):
        summary: str
        score: float
        label: str

    src = args.work / f"in-{args.rows}"
    if not src.exists():
        make_input(args.rows, src)
    state = args.work / f"state-{args.rows}"
    if not args.resume:
        shutil.rmtree(state, ignore_errors=True)
    sink = args.work / f"out-{args.rows}.parquet"

    _mark(stream.ChunkSource, "read_rest", "read_rest")
    _mark(StateStore, "job_index", "job_index")
    _mark(stream, "_write_sink", "write_sink")
    from batchata_df import frame

    _mark(stream, "job_states_of", "sink:job_states_of")
    _mark(frame, "_assemble", "sink:assemble")
    _mark(stream.SinkWriter, "write", "sink:write")
    compact = StateStore.compact

    def compact_keep(self: StateStore, **kw: Any) -> int:
        if args.keep_uncompacted:
            shutil.rmtree(args.work / f"uncompacted-{args.rows}", ignore_errors=True)
            shutil.copytree(self.root, args.work / f"uncompacted-{args.rows}")
        return compact(self, **kw)

    StateStore.compact = compact_keep  # type: ignore[method-assign]
    _mark(StateStore, "compact", "compact")

    stop = threading.Event()
    threading.Thread(target=_sampler, args=(stop,), daemon=True).start()
    with Emulator(latency=0.0) as emu:
        import os

        os.environ.update(emu.env())
        _PHASE[0] = "run"
        batch_llm(
            pl.scan_parquet(src / "*.parquet"), schema=Answer, model="gpt-4.1-mini",
            prompt="{text}", state=state, sink=sink, max_parallel_batches=32,
        )
        _PHASE[0] = "after"
    stop.set()
    hwm = 0.0
    for line in open("/proc/self/status"):  # noqa: SIM115
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    print(json.dumps({
        "rows": args.rows, "vm_hwm_mb": round(hwm, 1),
        "peak_mb_by_phase": {k: round(v, 1) for k, v in _PEAK.items()},
        "phases": [p for p in PHASES if not p[0].startswith("sink:")],
    }))
    if args.timeline:
        last = -1.0
        for t, rss, name in TIMELINE:
            if t - last >= args.timeline:
                print(t, rss, name)
                last = t


if __name__ == "__main__":
    main()
