"""The end of a streaming run alone: compaction, then the sink pass (issue 14, point 3).

A streamed run's last two steps (``StateStore.compact`` and ``stream._write_sink``: the
job-id index, each slice's events read back, states, summary, decode, the sink written)
cost the same whatever ran before them, so they are measured apart, on a copy of one
finished run's folder, many times, without sending anything again:

    python benchmarks/profile_sink_pass.py build --rows 1000000 --work /tmp/sinkpass
    python benchmarks/profile_sink_pass.py measure --work /tmp/sinkpass [--check]

``build`` runs ``bench_stream.py``'s workload once (OpenAI, emulator latency 0) and keeps
the state folder as it was before compaction and the spilled chunks. ``measure`` copies
that folder, compacts it and writes the sink from the chunks, printing the user / system
CPU of each step and the peak RSS; ``--check`` also compares the sink with the run's own
(every column and value, in order). To compare two versions of the code, run ``measure``
with ``PYTHONPATH`` set to each checkout (the script's folder, not the current one, comes
first on ``sys.path``). ``benchmarks/PROFILE.md`` (ninth pass) has what it showed. Take
the benchmark mutex on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel

# The models measured (gemini-2.5-flash, gpt-4.1-mini) have announced shutdowns
# (batchata_df.models.SCHEDULED); the emulator and the client read them at this date, the
# date the benchmarks were measured at, so later sittings measure the same requests (and
# the README's numbers stay comparable) instead of a refusal or Gemini's routed successor.
os.environ.setdefault("BATCHATA_DF_TODAY", "2026-10-31")

HERE = Path(__file__).resolve().parent


class Answer(BaseModel):
    """``bench_stream.py``'s answer model."""

    summary: str
    score: float
    label: Literal["pos", "neg", "neu"]


def build(rows: int, work: Path) -> None:
    """One finished streamed run; its folder before compaction and its chunks kept."""
    sys.path.insert(0, str(HERE))
    import bench_stream as bs

    from batchata_df import batch_llm, stream
    from batchata_df.emulator import Emulator
    from batchata_df.state import StateStore

    work.mkdir(parents=True, exist_ok=True)
    src = bs.make_input(rows, work / "in")
    compact, write_sink = StateStore.compact, stream._write_sink

    def keep_folder(self: StateStore, **kwargs: Any) -> int:
        shutil.copytree(self.root, work / "raw-state",
                        ignore=shutil.ignore_patterns(".stream-*", "*lock*"))
        return compact(self, **kwargs)

    def keep_chunks(sink: Path, chunks: list[Path], *args: Any, **kwargs: Any) -> Any:
        (work / "chunks").mkdir(exist_ok=True)
        for chunk in chunks:
            shutil.copy(chunk, work / "chunks" / chunk.name)
        return write_sink(sink, chunks, *args, **kwargs)

    StateStore.compact = keep_folder  # type: ignore[method-assign]
    stream._write_sink = keep_chunks
    with Emulator(latency=0.0) as emu:
        os.environ.update(emu.env())
        batch_llm(pl.scan_parquet(str(src / "*.parquet")), schema=Answer, model="gpt-4.1-mini",
                  prompt="{text}", state=str(work / "state"), sink=str(work / "out.parquet"),
                  progress=False, max_parallel_batches=32)


def measure(work: Path, *, check: bool) -> None:
    """Compact a copy of the kept folder, write the sink: CPU of each, peak RSS."""
    from batchata_df import stream
    from batchata_df.schema import AnswerSchema
    from batchata_df.state import StateStore, read_manifest

    def usage() -> tuple[float, float]:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime, r.ru_stime

    with tempfile.TemporaryDirectory(dir=work) as scratch:
        folder = Path(scratch) / "state"
        shutil.copytree(work / "raw-state", folder)
        store = StateStore(folder, read_manifest(folder / "manifest.json").fingerprint)
        chunks = sorted((work / "chunks").glob("chunk-*.parquet"))
        sink = Path(scratch) / "out.parquet"
        t0 = usage()
        store.compact()
        t1 = usage()
        stream._write_sink(sink, chunks, store, {}, None, AnswerSchema(Answer),
                           pl.DataFrame(schema={"text": pl.String}), citations=False,
                           keep_raw=False, keep_responses=False)
        t2 = usage()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if check:
            from polars.testing import assert_frame_equal

            assert_frame_equal(pl.read_parquet(sink), pl.read_parquet(work / "out.parquet"))
    print(f"{stream.__file__}: compact user {t1[0] - t0[0]:.2f} s, sys {t1[1] - t0[1]:.2f} s; "
          f"sink pass user {t2[0] - t1[0]:.2f} s, sys {t2[1] - t1[1]:.2f} s; peak RSS "
          f"{peak:,.0f} MB; load {os.getloadavg()[0]:.1f}" + ("; same sink" if check else ""))


def main() -> None:
    """``build`` or ``measure`` (see the module)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=["build", "measure"])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--check", action="store_true", help="compare with the run's sink")
    args = parser.parse_args()
    if args.step == "build":
        build(args.rows, args.work)
    else:
        measure(args.work, check=args.check)


if __name__ == "__main__":
    main()
