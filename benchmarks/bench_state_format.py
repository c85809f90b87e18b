"""Checkpoint format 1 against format 2: what storing a completed answer's raw text once saves.

Format 2 (``batchata_df.state``) stores a ``completed`` job event's ``raw`` null when it
equals its ``answer``; format 1 stored the text twice. Two measurements, each on a folder
of either format (a format 1 folder is made as version 1 made them: its manifest says 1
before the first call opens it, and the call keeps it):

1. **A run's folder.** ``--rows`` rows (default 100,000) of ``bench_overhead.py``'s
   workload (its prompts, its 3-field answer model, its model per provider; Gemini by
   default) through ``batch_llm`` against the emulator (latency 0), in this process, into a
   folder of each format: the folder's bytes (parts and manifest).
2. **One terminal part.** The run's ``completed`` events as read back (``raw`` equal to
   ``answer``, as the emulator's answers are canonical JSON, like almost every provider
   answer) written again as one part by ``StateStore.append_jobs`` into an empty folder
   of each format, the formats alternating, ``--repeat`` times each (default 7): median
   wall and CPU (user + system of the process, Polars' threads included) milliseconds of
   the write, ``fsync`` included, and the part's megabytes.

    python benchmarks/bench_state_format.py                       # Gemini, 100k rows
    python benchmarks/bench_state_format.py --provider openai --rows 10000

Prints one JSON document (``--out`` writes it too). ``benchmarks/PROFILE.md`` has what it
showed. Take the benchmark mutex on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("BATCHATA_DF_TODAY", "2026-10-31")  # as bench_overhead.py: same models

import polars as pl
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import PROVIDERS

from batchata_df import batch_llm
from batchata_df.emulator import Emulator
from batchata_df.state import StateStore, read_manifest, table_parts


class Answer(BaseModel):
    summary: str
    score: float
    label: Literal["pos", "neg", "neu"]


def frame(n: int) -> pl.DataFrame:
    """``bench_overhead.py``'s input rows."""
    return pl.select(
        pl.concat_str([pl.lit("Review "), pl.int_range(n).cast(pl.String),
                       pl.lit(": " + "the product arrived on time and works well, " * 3)])
        .alias("text")
    )  # fmt: skip


def new_folder(root: Path, version: int) -> Path:
    """An empty checkpoint folder of format ``version`` (no settings yet: the first call
    states them, as for a manifest ``repair`` rebuilt)."""
    root.mkdir(parents=True)
    manifest = {"format_version": version, "run_id": secrets.token_hex(8),
                "created_at": time.time(), "fingerprint": {}}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_into(folder: Path, rows: int, model: str) -> dict[str, Any]:
    start = time.perf_counter()
    out = frame(rows).pipe(batch_llm, schema=Answer, model=model, prompt="{text}",
                           state=folder, max_parallel_batches=32, progress=False)  # fmt: skip
    assert (out["_status"] == "completed").all()
    return {"wall_s": round(time.perf_counter() - start, 2)}


def write_once(events: pl.DataFrame, version: int, work: Path) -> tuple[float, float, int]:
    """(wall ms, CPU ms, bytes) of one terminal part written into a new folder."""
    folder = new_folder(work / secrets.token_hex(4), version)
    store = StateStore(folder, {})
    wall, used = time.perf_counter(), cpu()
    store.append_jobs(events)
    wall, used = time.perf_counter() - wall, cpu() - used
    (part,) = table_parts(folder / "jobs")
    return wall * 1e3, used * 1e3, part.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", default="gemini", choices=sorted(PROVIDERS))
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = PROVIDERS[args.provider]
    doc: dict[str, Any] = {"benchmark": "bench_state_format", "provider": args.provider,
                           "model": model, "rows": args.rows, "repeat": args.repeat,
                           "loadavg_before": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, Emulator(latency=0.0) as emu:
        work = Path(tmp)
        os.environ.update(emu.env())
        folders: dict[int, dict[str, Any]] = {}
        for version in (1, 2):
            emu.reset()
            folder = new_folder(work / f"run-v{version}", version)
            timing = run_into(folder, args.rows, model)
            assert json.loads((folder / "manifest.json").read_text())["format_version"] == version
            jobs = sum(p.stat().st_size for p in table_parts(folder / "jobs"))
            folders[version] = {**timing, "folder_mb": round(folder_bytes(folder) / 1e6, 3),
                                "job_parts_mb": round(jobs / 1e6, 3)}  # fmt: skip
        doc["folder"] = folders
        doc["folder_change"] = round(folders[2]["folder_mb"] / folders[1]["folder_mb"] - 1, 4)
        # The run's completed events, as read back (raw given back in both formats).
        events = (
            StateStore(work / "run-v2", read_manifest(work / "run-v2" / "manifest.json")
                       .fingerprint, readonly=True).job_events()
            .filter(pl.col("status") == "completed").drop("seq", "ts")
        )  # fmt: skip
        assert events.height == args.rows
        assert (events["raw"] == events["answer"]).all()
        samples: dict[int, list[tuple[float, float, int]]] = {1: [], 2: []}
        for _ in range(args.repeat):
            for version in (1, 2):
                samples[version].append(write_once(events, version, work))
        doc["terminal_part"] = {
            version: {
                "wall_ms": round(statistics.median(s[0] for s in got), 1),
                "cpu_ms": round(statistics.median(s[1] for s in got), 1),
                "mb": round(statistics.median(s[2] for s in got) / 1e6, 3),
                "wall_ms_all": [round(s[0], 1) for s in got],
            }
            for version, got in samples.items()
        }
    doc["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(doc, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
