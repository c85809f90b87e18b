"""CPU of decoding results downloads, per provider, code trees side by side (tenth pass).

First captures real downloads: a ``batch_llm`` run of ``--rows`` rows against the emulator
(latency 0) with the bytes each decoder is given written to ``--data`` (one file per
batch; OpenAI's batches are 50,000 requests, Anthropic's and Gemini's 100,000). Then, for
each code tree given (a checkout: ``git archive`` of main into /tmp, the work tree), a
fresh child process decodes the provider's first download ``--times`` times, each time from
freshly read bytes (as a download is), and reports user / system CPU and minor page faults
of the decode calls alone, and of pyarrow's ``read_json`` inside them. Trees alternate,
``--runs`` times; the 1-minute load is printed with each run. The download itself (SDK,
HTTP) is not in these numbers: ``profile_stages.py`` has it in "results (normalise)".

    python benchmarks/bench_decode.py --provider anthropic --times 10 /tmp/main .

At 10 downloads of 100,000 lines (20 of 50,000 for OpenAI) this is the decode of 1M rows.
``benchmarks/PROFILE.md`` (tenth pass) has what it showed. Take the benchmark mutex on a
shared machine.
"""

from __future__ import annotations

import argparse
import json
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

MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}

CAPTURE = r'''
import sys, pathlib
import polars as pl
from typing import Literal
from pydantic import BaseModel
from batchata_df import batch_llm
import batchata_df.providers.openai as po, batchata_df.providers.anthropic as pa_
import batchata_df.providers.gemini as pg

n, model, out, state = int(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3]), sys.argv[4]
count = [0]
def saver(mod, name):
    orig = getattr(mod, name)
    def save(data, *a, **k):
        if len(data) > 1000:
            (out / f"{count[0]}.jsonl").write_bytes(bytes(data))
            count[0] += 1
        return orig(data, *a, **k)
    setattr(mod, name, save)
saver(po, "decode_lines"); saver(pg, "decode_lines"); saver(pa_, "decode_results")

class Answer(BaseModel):
    summary: str
    score: float
    label: Literal["pos", "neg", "neu"]

df = pl.select(pl.concat_str([pl.lit("Review "), pl.int_range(n).cast(pl.String),
                              pl.lit(": " + "the product arrived on time and works well, " * 3)])
               .alias("text"))
got = df.pipe(batch_llm, schema=Answer, model=model, prompt="{text}", state=state,
              progress=False, max_parallel_batches=32)
assert (got["_status"] == "completed").all()
'''

CHILD = r'''
import json, resource, sys
import pyarrow.json as pj
from batchata_df.providers import anthropic, gemini, openai
from batchata_df.providers.base import RequestSpec
from batchata_df.schema import AnswerSchema

provider, path, times = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = RequestSpec(schema=AnswerSchema(None), params={})
decode = {"openai": openai.decode_lines, "gemini": gemini.decode_lines,
          "anthropic": lambda data: anthropic.decode_results(data, spec)}[provider]

def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return (r.ru_utime, r.ru_stime, r.ru_minflt)

inner = [0.0, 0.0, 0]
read_json = pj.read_json
def timed(*a, **k):
    t0 = usage()
    try:
        return read_json(*a, **k)
    finally:
        t1 = usage()
        for i in range(3):
            inner[i] += t1[i] - t0[i]
pj.read_json = timed
total, rows = [0.0, 0.0, 0], 0
for _ in range(times):
    with open(path, "rb") as f:
        data = f.read()
    t0 = usage()
    rows += decode(data).height
    t1 = usage()
    for i in range(3):
        total[i] += t1[i] - t0[i]
    del data
print(json.dumps({"rows": rows, "user": round(total[0], 3), "sys": round(total[1], 3),
                  "faults": total[2], "read_json_user": round(inner[0], 3),
                  "read_json_sys": round(inner[1], 3), "rest_user": round(total[0] - inner[0], 3),
                  "rest_sys": round(total[1] - inner[1], 3)}))
'''


def capture(provider: str, rows: int, data: Path) -> Path:
    """The first download of a ``rows``-row run (captured once per provider and size)."""
    from batchata_df.emulator import Emulator

    folder = data / f"{provider}_{rows}"
    first = folder / "0.jsonl"
    if first.exists():
        return first
    folder.mkdir(parents=True, exist_ok=True)
    with Emulator(latency=0.0) as emu, tempfile.TemporaryDirectory() as work:
        subprocess.run(
            [sys.executable, "-c", CAPTURE, str(rows), MODELS[provider], str(folder),
             str(Path(work) / "state")],
            env={**os.environ, **emu.env()}, check=True,
        )  # fmt: skip
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trees", nargs="+", help="checkouts of batchata_df to compare")
    parser.add_argument("--provider", choices=list(MODELS), default="anthropic")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the captured run")
    parser.add_argument("--times", type=int, default=10, help="downloads decoded per child")
    parser.add_argument("--runs", type=int, default=2, help="children per tree (alternating)")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "bench_decode")
    args = parser.parse_args()
    download = capture(args.provider, args.rows, args.data)
    for _ in range(args.runs):
        for tree in args.trees:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, args.provider, str(download), str(args.times)],
                env={**os.environ, "PYTHONPATH": str(Path(tree).resolve())},
                cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True,
            )  # fmt: skip
            result = {"tree": tree, "provider": args.provider, **json.loads(out.stdout),
                      "load": round(os.getloadavg()[0], 1)}  # fmt: skip
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
