"""Client overhead of batch_llm beside the leanest floor, per provider and size (issue 14).

Every client is a fresh process (imports included) against ONE emulator process with zero
latency (``Emulator(latency=0.0)``, reset before every client). Per size and provider, the
floor and batch_llm run alternately, ``--runs`` times each (default 3), so each ratio is
measured side by side in the same run; which of the two goes first alternates from run to
run (``"first"`` in each run). Recorded per client run: wall seconds, client CPU
seconds (user + system from the child's own ``rusage``: its work, whatever the emulator
does), peak RSS (``ru_maxrss`` of the child), emulator CPU seconds during the run (from
``/proc/<pid>/stat``) and, for batch_llm, the checkpoint folder's size. The load average
(``os.getloadavg``) is recorded before and after every point: the machine is shared.

Workload: N chat requests (~150-character prompts, built with a Polars expression in both
clients) with strict structured output for a 3-field model (str, float, 3-value enum).

**The floor** (``FLOORS``) is what a good engineer would write with the official SDK and
Polars when nothing but speed matters, and no checkpoints:

* request lines are one ``pl.concat_str`` per batch (the prompt JSON-escaped with
  ``struct.json_encode``), carrying the same body batch_llm sends (same model, schema and
  output limit), 50,000 requests per batch, all batches submitted before polling; only
  one batch's lines exist at a time (encoding all of a run's lines at once held ~0.7 GB
  more at 1M rows);
* each batch's input is one ``"\\n".join`` of the lines (the fastest join measured) sent
  as bytes: OpenAI ``files.create``, Anthropic the SDK's ``client.post`` with the
  pre-encoded body (``messages.batches.create`` would build one dict per request), Gemini
  ``files.upload`` of a JSONL file (never inlined requests, which the SDK parses per row);
* results are downloaded as bytes (OpenAI ``files.content``, Anthropic
  ``with_streaming_response.results``, Gemini ``files.download``) and decoded by
  pyarrow's JSON reader against an explicit schema of only the fields needed, on one
  thread (about half the CPU of Polars' ``str.json_decode`` of the same fields, a quarter
  of ``read_ndjson``'s: ``benchmarks/PROFILE.md``);
* each batch's answers are decoded into typed columns (one ``str.json_decode``) as the
  batch is collected, so that no batch's JSON text outlives it, and put beside the input
  rows in order (the custom id is the row number). Decoding them all at the end, as the
  floor did until 2026-12-02, held ~0.7 GB more at 1M rows (its peak RSS 1,242 against
  568 MB, Gemini): the floor issue 14 called heavier than it needs to be
  (``benchmarks/PROFILE.md``, twenty-fifth pass).

The same clients fed from Parquet files, batch by batch, and writing a Parquet file as
each batch's answers arrive (``STREAM_FLOORS``: nothing held but the batch at hand) are
the floor ``benchmarks/bench_stream.py`` runs beside ``batch_llm(..., sink=)``.

batchata_df does the same work plus what the floor leaves out: job ids (content hashes),
checkpoints (Parquet parts, manifest, lock), validation against the Pydantic model, cost
and token columns, the status/error of every row, prompt-cache planning.

**The seed library** (``batchata`` 0.4.7 on PyPI, ``--seed``): every release declares
``Requires-Python >=3.12`` but the wheel is pure Python and runs on 3.11, so it is
downloaded for 3.12 and installed with ``--ignore-requires-python`` into a venv of its own
(``SEED_INSTALL``; never a dependency of batchata_df). It runs beside batch_llm on the
same emulator with a model it knows (``SEED_MODELS``), its state file and results
directory on, at 1k and 10k rows (its per-job Python objects and one JSON file per result
make larger runs take hours here); results in ``benchmarks/results/overhead_seed.json``.

    python benchmarks/bench_overhead.py                          # 10k/100k/1M x 3 providers
    python benchmarks/bench_overhead.py --sizes 10000 --runs 1   # a quick look
    python benchmarks/bench_overhead.py --pin                    # emulator on a core of its own
    python benchmarks/bench_overhead.py --providers gemini --out /tmp/g.json   # one provider
    python benchmarks/bench_overhead.py --merge /tmp/o.json /tmp/a.json /tmp/g.json
    python benchmarks/bench_overhead.py --replace /tmp/g.json --note "what the commit is"
    python benchmarks/bench_overhead.py --seed                   # beside batchata, 1k/10k
    python benchmarks/report_overhead.py                         # plot + README table

**Pinning** (``--pin``, on a machine of two or more cores): the emulator runs on the last
core and every client on the others (``os.sched_setaffinity``, inherited by the children),
so the emulator's work, which a real provider does on its own machines, does not compete
with the client for a core. Unpinned, the emulator (one busy core for most of a 1M run)
and the client share the machine's two cores and the client's CPU seconds depend on how
the scheduler interleaves them (``benchmarks/PROFILE.md``, seventeenth pass). Each point
records whether it was pinned (``"pinned"``).

Results go to ``benchmarks/results/overhead.json`` (``--out``); 10M rows belong to the
streaming path (``benchmarks/bench_stream.py``).

**Bytecode.** Before any client runs, batchata_df's modules are byte-compiled
(:func:`compile_bytecode`), as ``pip install`` does for every package it installs: the SDKs,
Polars and pyarrow the floor loads were compiled when they were installed, but batchata_df
is installed editable from the work tree, and where ``PYTHONDONTWRITEBYTECODE`` is set (it
is on the team's machines) every batch_llm child compiled its ~40 modules from source,
0.06-0.1 s of CPU per run that no user of the installed package pays
(``benchmarks/PROFILE.md``, seventh pass). The children still write no bytecode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The models measured (gemini-2.5-flash, gpt-4.1-mini) have announced shutdowns
# (batchata_df.models.SCHEDULED); the emulator and the client read them at this date, the
# date the benchmarks were measured at, so later sittings measure the same requests (and
# the README's numbers stay comparable) instead of a refusal or Gemini's routed successor.
os.environ.setdefault("BATCHATA_DF_TODAY", "2026-10-31")

HERE = Path(__file__).resolve().parent

NAMES = {"openai": "OpenAI", "anthropic": "Anthropic", "gemini": "Gemini"}
PROVIDERS = {
    "openai": "gpt-4.1-mini",
    "anthropic": "claude-haiku-4-5",
    "gemini": "gemini-2.5-flash",
}

FRAME = r'''
import sys
import polars as pl
n = int(sys.argv[1])
df = pl.select(
    pl.concat_str([pl.lit("Review "), pl.int_range(n).cast(pl.String),
                   pl.lit(": " + "the product arrived on time and works well, " * 3)])
    .alias("text")
)
'''

FLOOR_BODY = r'''
import io, json, time
import pyarrow as pa
import pyarrow.json as pj
SCHEMA = {"type": "object", "additionalProperties": False,
          "required": ["summary", "score", "label"],
          "properties": {"summary": {"type": "string"}, "score": {"type": "number"},
                         "label": {"type": "string", "enum": ["pos", "neg", "neu"]}}}
ANSWER = pl.Struct({"summary": pl.String, "score": pl.Float64,
                    "label": pl.Enum(["pos", "neg", "neu"])})
PER_BATCH = 50_000

def quoted(e):
    return pl.struct(e.alias("s")).struct.json_encode().str.strip_prefix('{"s":').str.strip_suffix("}")

def lines_of(start, rows, head, tail):
    """The request lines of one batch (``rows``, numbered from ``start``): one concat_str."""
    return rows.with_row_index("i", offset=start).select(pl.concat_str([
        pl.lit(head[0]), pl.col("i").cast(pl.String), pl.lit(head[1]), quoted(pl.col("text")),
        pl.lit(tail)])).to_series()

def decode(data, line_schema, pick):
    """JSONL bytes -> (i, typed answer columns): pyarrow's JSON reader with only the fields
    needed, then the batch's answers decoded at once, so no batch's JSON text outlives it."""
    table = pj.read_json(
        io.BytesIO(data), read_options=pj.ReadOptions(use_threads=False, block_size=1 << 20),
        parse_options=pj.ParseOptions(explicit_schema=line_schema,
                                      unexpected_field_behavior="ignore"))
    return (pl.from_arrow(table).select(pick())
            .select("i", pl.col("text").str.json_decode(ANSWER).alias("a")).unnest("a"))
'''
"""What every floor shares: the request lines and the answers' decoding. Each floor then
defines ``chunks()`` (the input, ``(first row number, rows)`` of ``PER_BATCH`` rows at
most), ``parts`` (where each batch's decoded answers go, in the order sent) and
``finish()``."""

FLOOR_COMMON = FRAME + FLOOR_BODY + r'''
def chunks():
    return ((start, df.slice(start, PER_BATCH)) for start in range(0, n, PER_BATCH))

parts = []

def finish():
    got = pl.concat(parts).sort("i")
    assert got.height == n and got["i"][-1] == n - 1, got.height
    out = df.hstack(got.drop("i"))
    assert out.height == n and out["label"].null_count() == 0
    print(json.dumps({"rows": out.height}))
'''
"""The in-memory floor: the frame of ``FRAME``, every answer kept, the output built whole."""

STREAM_FLOOR_COMMON = r'''
import glob, sys
import polars as pl
import pyarrow.parquet as pq
n, SRC, SINK = int(sys.argv[1]), sys.argv[2], sys.argv[3]
''' + FLOOR_BODY + r'''
def chunks():
    """The input files' rows, PER_BATCH at most at a time, each read once per pass."""
    start = 0
    for path in sorted(glob.glob(SRC)):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=PER_BATCH):
            yield start, pl.from_arrow(batch)
            start += batch.num_rows

class Sink:
    """The output file, written batch by batch as the answers arrive (in the order sent):
    each batch's input rows, read again, beside its answers; nothing else is held."""
    def __init__(self):
        self.inputs, self.writer, self.rows = chunks(), None, 0
    def append(self, part):
        part = part.sort("i")
        start, rows = next(self.inputs)
        assert part["i"].equals(pl.int_range(start, start + rows.height, eager=True)), start
        assert part["label"].null_count() == 0, start  # as the in-memory floor's finish()
        table = rows.hstack(part.drop("i")).to_arrow()
        if self.writer is None:
            self.writer = pq.ParquetWriter(SINK, table.schema, compression="zstd")
        self.writer.write_table(table)
        self.rows += rows.height

parts = Sink()

def finish():
    parts.writer.close()
    assert parts.rows == n, parts.rows
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            hwm = round(int(line.split()[1]) / 1024, 1)
    print(json.dumps({"rows": parts.rows, "vm_hwm_mb": hwm}))
'''
"""The streamed floor (``bench_stream.py``'s ``floor`` phase): ``argv`` is the row count,
a glob of the input Parquet files and the output file. The input is read twice, batch by
batch (to send, then beside the answers), never whole; the output is written as each
batch's answers arrive."""

FLOOR_CLIENTS = {
    "openai": r'''
from openai import OpenAI
client = OpenAI()
fmt = {"type": "json_schema", "json_schema": {"name": "Answer", "strict": True, "schema": SCHEMA}}
head = ('{"custom_id":"', '","method":"POST","url":"/v1/chat/completions",'
        '"body":{"model":"gpt-4.1-mini","messages":[{"role":"user","content":')
tail = '}],"response_format":' + json.dumps(fmt) + ',"max_completion_tokens":4096}}'
ids = []
for start, rows in chunks():
    payload = "\n".join(lines_of(start, rows, head, tail).to_list()).encode()
    f = client.files.create(file=("in.jsonl", payload), purpose="batch")
    ids.append(client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                     completion_window="24h").id)
LINE = pa.schema({"custom_id": pa.string(), "response": pa.struct({"body": pa.struct({
    "choices": pa.list_(pa.struct({"message": pa.struct({"content": pa.string()})}))})})})
def pick():
    return [pl.col("custom_id").cast(pl.Int64).alias("i"),
            pl.col("response").struct.field("body").struct.field("choices")
            .list.first().struct.field("message").struct.field("content").alias("text")]
for bid in ids:
    while (b := client.batches.retrieve(bid)).status != "completed":
        time.sleep(0.2)
    parts.append(decode(client.files.content(b.output_file_id).read(), LINE, pick))
finish()
''',
    "anthropic": r'''
from anthropic import Anthropic
from anthropic.types.messages import MessageBatch
client = Anthropic()
fmt = {"format": {"type": "json_schema", "schema": SCHEMA}}
head = ('{"custom_id":"', '","params":{"model":"claude-haiku-4-5",'
        '"messages":[{"role":"user","content":')
tail = '}],"max_tokens":4096,"output_config":' + json.dumps(fmt) + '}}'
ids = []
for start, rows in chunks():
    body = b'{"requests":[' + ",".join(lines_of(start, rows, head, tail).to_list()).encode() + b"]}"
    ids.append(client.post("/v1/messages/batches", cast_to=MessageBatch, content=body,
                           options={"headers": {"content-type": "application/json"}}).id)
LINE = pa.schema({"custom_id": pa.string(), "result": pa.struct({"message": pa.struct({
    "content": pa.list_(pa.struct({"type": pa.string(), "text": pa.string()}))})})})
def pick():
    blocks = pl.col("result").struct.field("message").struct.field("content")
    return [pl.col("custom_id").cast(pl.Int64).alias("i"),
            blocks.list.eval(pl.element().filter(pl.element().struct.field("type") == "text")
                             .struct.field("text")).list.join("").alias("text")]
for bid in ids:
    while client.messages.batches.retrieve(bid).processing_status != "ended":
        time.sleep(0.2)
    with client.messages.batches.with_streaming_response.results(bid) as r:
        parts.append(decode(r.read(), LINE, pick))
finish()
''',
    "gemini": r'''
from google import genai
from google.genai import types
client = genai.Client()
config = {"responseMimeType": "application/json", "responseJsonSchema": SCHEMA,
          "maxOutputTokens": 16384}
head = ('{"key":"', '","request":{"contents":[{"role":"user","parts":[{"text":')
tail = '}]}],"generationConfig":' + json.dumps(config) + '}}'
names = []
for start, rows in chunks():
    payload = io.BytesIO("\n".join(lines_of(start, rows, head, tail).to_list()).encode())
    up = client.files.upload(file=payload, config=types.UploadFileConfig(mime_type="text/plain"))
    names.append(client.batches.create(model="gemini-2.5-flash", src=up.name).name)
LINE = pa.schema({"key": pa.string(), "response": pa.struct({"candidates": pa.list_(pa.struct({
    "content": pa.struct({"parts": pa.list_(pa.struct({"text": pa.string(),
                                                      "thought": pa.bool_()}))})}))})})
def pick():
    parts = (pl.col("response").struct.field("candidates").list.first()
             .struct.field("content").struct.field("parts"))
    return [pl.col("key").cast(pl.Int64).alias("i"),
            parts.list.eval(pl.element().filter(~pl.element().struct.field("thought")
                                                .fill_null(False)).struct.field("text"))
            .list.join("").alias("text")]
for name in names:
    while (job := client.batches.get(name=name)).state.name != "JOB_STATE_SUCCEEDED":
        assert job.state.name not in ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED"), job.state
        time.sleep(0.2)
    parts.append(decode(client.files.download(file=job.dest.file_name), LINE, pick))
finish()
''',
}

FLOORS = {provider: FLOOR_COMMON + client for provider, client in FLOOR_CLIENTS.items()}
"""Each provider's in-memory floor: ``argv`` is the row count (the frame of ``FRAME``)."""
STREAM_FLOORS = {provider: STREAM_FLOOR_COMMON + client
                 for provider, client in FLOOR_CLIENTS.items()}
"""Each provider's streamed floor, Parquet files in and a Parquet file out (``bench_stream.py``)."""

OURS = FRAME + r'''
import json
from typing import Literal
from pydantic import BaseModel
from batchata_df import batch_llm

class Answer(BaseModel):
    summary: str
    score: float
    label: Literal["pos", "neg", "neu"]

# "text" (the seed comparison on a model without structured output): answers as text.
schema = None if sys.argv[4:] == ["text"] else Answer
out = df.pipe(batch_llm, schema=schema, model=sys.argv[3], prompt="{text}", state=sys.argv[2],
              max_parallel_batches=32, progress=False)
assert out.height == n and (out["_status"] == "completed").all(), out["_status"].value_counts()
print(json.dumps({"rows": out.height}))
'''

SEED_VERSION = "0.4.7"
SEED_TEXT = {"anthropic"}
"""Where batch_llm runs with ``schema=None``: batchata knows no Claude model that takes
structured output (it asks for JSON in the system prompt), and batch_llm refuses a JSON
schema for claude-3-5-haiku, which has no structured output."""
SEED_MODELS = {
    # batchata 0.4.7 knows these model names only (its providers/*/models.py); batch_llm
    # runs the same model beside it.
    "openai": "gpt-4.1-nano-2025-04-14",
    "anthropic": "claude-3-5-haiku-20241022",
    "gemini": "gemini-2.5-flash",
}
SEED_INSTALL = [
    # Every batchata release declares Requires-Python >=3.12; its wheel is pure Python and
    # imports on 3.11, so it is fetched for 3.12 and installed without that check into a
    # venv of its own (never a dependency of batchata_df), SDKs pinned as ours.
    "python3 -m venv {venv}",
    "{venv}/bin/pip download --no-deps --python-version 3.12 --only-binary=:all: "
    f"batchata=={SEED_VERSION} -d {{venv}}/wheels",
    "{venv}/bin/pip install -c constraints.txt --ignore-requires-python "
    f"{{venv}}/wheels/batchata-{SEED_VERSION}-py3-none-any.whl polars",
]

SEED_CLIENT = FRAME + r'''
import json
from typing import Literal
from pydantic import BaseModel
from batchata import Batch

class Answer(BaseModel):
    summary: str
    score: float
    label: Literal["pos", "neg", "neu"]

state, model = sys.argv[2], sys.argv[3]
batch = (
    Batch(results_dir=state + "/results", max_parallel_batches=32,
          items_per_batch=min(n, 50_000))
    .set_state(file=state + "/state.json", reuse_state=False)  # its checkpoint
    .set_default_params(model=model, max_tokens=4096)
    .set_verbosity("error")
)
for text in df.get_column("text").to_list():
    batch.add_job(messages=[{"role": "user", "content": text}], response_model=Answer)
ids = [job.id for job in batch.jobs]
results = batch.run().results()
assert not results["failed"] and not results["cancelled"], results["failed"][:2]
by_id = {r.job_id: r.parsed_response for r in results["completed"]}
assert len(by_id) == n, len(by_id)
# batchata asks Anthropic for JSON in the system prompt (no structured output), so the
# emulator's Claude answers in prose and those rows come back unparsed (None or a dict):
# they become nulls here, as a user would get them.
empty = {"summary": None, "score": None, "label": None}
rows = [by_id[i].model_dump() if isinstance(by_id[i], BaseModel) else empty for i in ids]
out = df.hstack(pl.DataFrame(rows, schema={"summary": pl.String, "score": pl.Float64,
                                           "label": pl.String}))
assert out.height == n
print(json.dumps({"rows": out.height, "parsed": n - out["label"].null_count()}))
'''

SEED = {
    "package": "batchata",
    "version": SEED_VERSION,
    "install": SEED_INSTALL,
    "models": SEED_MODELS,
    "runtime_downloads": (
        "none: tokencost 0.1.26 (its price library) reads its bundled model_prices.json; "
        "it fetches prices only when refresh_prices() is called, which batchata does not"
    ),
    "results": "benchmarks/results/overhead_seed.json (python benchmarks/bench_overhead.py --seed)",
    "gemini": (
        "batchata's GeminiProvider.estimate_cost calls google-genai models.count_tokens "
        "(POST models/{model}:countTokens) once per job, sequentially, before each batch is "
        "sent (the emulator serves it since 98f7020, free, as the Gemini API does); it also "
        "needs GOOGLE_API_KEY (without it batchata silently registers no Gemini models)"
    ),
}


def seed_python(venv: Path) -> Path:
    """The seed library's interpreter: a venv of its own, created on first use."""
    python = venv / "bin" / "python"
    if not python.exists():
        for step in SEED_INSTALL:
            cmd = step.format(venv=venv, python=sys.executable).split()
            subprocess.run(cmd, check=True, cwd=HERE.parent)
    return python


def compile_bytecode(package: Path = HERE.parent / "batchata_df") -> None:
    """Byte-compile ``package`` (its ``__pycache__``), as ``pip install`` does on install.

    The children then load batchata_df's bytecode, as they load the SDKs' (see the module
    docstring), also where ``PYTHONDONTWRITEBYTECODE`` keeps them from writing it.
    """
    import compileall

    if not compileall.compile_dir(package, quiet=1):
        raise SystemExit(f"could not byte-compile {package}")


def pin_emulator() -> dict[str, list[int]]:
    """``--pin``: this process (so the emulator it starts next) on the last core.

    Returns the cores: ``"emulator"``, and ``"clients"`` (the others), to which the caller
    moves itself once the emulator runs, so that every client it starts inherits them.
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit(f"--pin needs two cores or more; this process may use {cores}")
    pinned = {"emulator": cores[-1:], "clients": cores[:-1]}
    os.sched_setaffinity(0, pinned["emulator"])  # the emulator inherits it at start
    return pinned


def child_env(emulator_env: dict[str, str]) -> dict[str, str]:
    """The clients' environment (this one and the emulator's), batchata_df byte-compiled."""
    compile_bytecode()
    return {**os.environ, **emulator_env}


def _code(root: Path = HERE.parent) -> str:
    """The commit measured (short hash), with ``+dirty`` when the library or the clients
    (this file, ``bench_stream.py``) have uncommitted changes; ``root`` is the repository's
    top folder."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=root).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "batchata_df", "benchmarks/bench_overhead.py",
         "benchmarks/bench_stream.py"],
        capture_output=True, text=True, cwd=root,
    ).stdout.strip()
    return head + ("+dirty" if dirty else "")


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_child(
    code: str, args: list[str], env: dict[str, str], emu_pid: int, python: str | Path = ""
) -> dict[str, float]:
    """Run one client in a fresh process; its wall, CPU, peak RSS and the emulator's CPU."""
    with tempfile.TemporaryFile() as err:
        emu0 = _proc_cpu(emu_pid)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [str(python or sys.executable), "-c", code, *args], env=env,
            stdout=subprocess.DEVNULL, stderr=err,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        emu_cpu = _proc_cpu(emu_pid) - emu0
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"benchmark child failed:\n{err.read().decode()[-3000:]}")
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "emulator_cpu_s": round(emu_cpu, 3),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per client and the medians of the per-run (side-by-side) ratios."""
    out: dict[str, Any] = {}
    for who in ("floor", "ours"):
        out[who] = {
            k: round(statistics.median(r[who][k] for r in runs), 3)
            for k in ("wall_s", "cpu_s", "peak_rss_mb", "emulator_cpu_s")
        }
    out["ours"]["state_mb"] = round(statistics.median(r["ours"]["state_mb"] for r in runs), 2)
    out["ratio"] = {
        k: round(statistics.median(r["ours"][k] / r["floor"][k] for r in runs), 3)
        for k in ("wall_s", "cpu_s", "peak_rss_mb")
    }
    return out


def _document(started: str, runs: int, points: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "benchmark": "bench_overhead",
        "started_utc": started,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "note": "shared by several engineers while measured: see loadavg per point",
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        },
        "workload": "N chat requests, ~150-char prompts, strict 3-field structured output; "
        "emulator latency 0; checkpoints on for batch_llm",
        "runs_per_point": runs,
        "seed_library": SEED,
        "points": points,
    }


def _pooled(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points of the same provider and size made one: their runs together, medians again.

    For a point measured in several sittings (e.g. a third run added later). Each run
    keeps the load average and the code of its sitting (``loadavg_before``, ``code``); the
    point's ``loadavg_before`` is the highest of them.
    """
    by_key: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for pt in points:
        by_key.setdefault((pt["provider"], pt["rows"]), []).append(pt)
    pooled: list[dict[str, Any]] = []
    for group in by_key.values():
        if len(group) == 1:
            pooled.append(group[0])
            continue
        runs = [
            {**run, "loadavg_before": run.get("loadavg_before", pt["loadavg_before"]),
             "code": run.get("code", pt.get("code"))}
            for pt in group for run in pt["runs"]
        ]  # fmt: skip
        first = group[0]
        pooled.append({
            "provider": first["provider"], "model": first["model"], "rows": first["rows"],
            "n_runs": len(runs), "runs": runs, **summarise(runs),
            "loadavg_before": max((pt["loadavg_before"] for pt in group), key=lambda x: x[0]),
            "loadavg_after": max((pt["loadavg_after"] for pt in group), key=lambda x: x[0]),
            "code": "+".join(dict.fromkeys(str(pt.get("code")) for pt in group)),
            "bytecode": "+".join(dict.fromkeys(pt.get("bytecode", "source") for pt in group)),
        })  # fmt: skip
    return pooled


def merge(
    paths: list[Path], out: Path, note: str | None = None, *, pool: bool = False
) -> None:
    """One document from several partial ones (e.g. one process per provider).

    With ``pool``, points of the same provider and size are made one (:func:`_pooled`).
    """
    docs = [json.loads(p.read_text()) for p in paths]
    points = sorted(
        (pt for d in docs for pt in d["points"]),
        key=lambda pt: (pt["rows"], list(PROVIDERS).index(pt["provider"])),
    )
    for pt in points:
        pt.setdefault("n_runs", len(pt["runs"]))
    keys = [(pt["provider"], pt["rows"]) for pt in points]
    if len(set(keys)) != len(keys):
        if not pool:
            msg = f"the partial results overlap (pool them with --pool): {sorted(keys)}"
            raise SystemExit(msg)
        points = _pooled(points)
    doc = _document(min(d["started_utc"] for d in docs), docs[0]["runs_per_point"], points)
    doc["finished_utc"] = max(d["finished_utc"] for d in docs)
    doc["machine"]["uptime"] = [d["machine"]["uptime"] for d in docs]
    if note:
        doc["note"] = note
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")


def replace(paths: list[Path], out: Path, context: str = "") -> None:
    """New points into an existing results document, each replacing its provider and size.

    The point replaced moves to ``replaced_points`` (nothing measured is dropped), and a
    sentence per new point is appended to ``note``: when it was measured, on which commit,
    the load before and after, its ratios per run and what it replaced, with ``context``
    (what the commit is, what ran beside it) said once for all of them.
    """
    doc = json.loads(out.read_text())
    doc.setdefault("replaced_points", [])
    sentences: list[str] = []
    for path in paths:
        new = json.loads(path.read_text())
        for pt in new["points"]:
            pt.setdefault("n_runs", len(pt["runs"]))
            key = (pt["provider"], pt["rows"])
            old = [p for p in doc["points"] if (p["provider"], p["rows"]) == key]
            doc["points"] = [p for p in doc["points"] if (p["provider"], p["rows"]) != key]
            doc["replaced_points"].extend(old)
            doc["points"].append(pt)
            per_run = " / ".join(
                f"{r['ours']['cpu_s'] / r['floor']['cpu_s']:.2f}x" for r in pt["runs"]
            )
            was = "; ".join(
                f"the point it replaces, {o.get('code')}: {o['ratio']['cpu_s']:.3f}x, RSS "
                f"{o['ratio']['peak_rss_mb']:.3f}x, is kept under replaced_points"
                for o in old
            ) or "a new point"
            sentences.append(
                f"{NAMES.get(pt['provider'], pt['provider'])} at {pt['rows']:,}: re-measured "
                f"{new['started_utc']} to {new['finished_utc']} on {pt.get('code')}, "
                f"{pt['n_runs']} runs, load {pt['loadavg_before'][0]} before, "
                f"{pt['loadavg_after'][0]} after: {pt['ratio']['cpu_s']:.3f}x the floor's CPU "
                f"({per_run}), peak RSS {pt['ratio']['peak_rss_mb']:.3f}x ({was})."
            )
        doc["started_utc"] = min(doc["started_utc"], new["started_utc"])
        doc["finished_utc"] = max(doc["finished_utc"], new["finished_utc"])
        uptime = doc["machine"].get("uptime")
        doc["machine"]["uptime"] = [*(uptime if isinstance(uptime, list) else [uptime]),
                                    new["machine"]["uptime"]]  # fmt: skip
    doc["points"].sort(key=lambda pt: (pt["rows"], list(PROVIDERS).index(pt["provider"])))
    text = " ".join([*([context] if context else []), *sentences])
    doc["note"] = f"{doc['note']} {text}" if doc.get("note") else text
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}: {len(sentences)} points replaced or added")


def run_seed(sizes: list[int], providers: list[str], runs: int, out: Path, venv: Path) -> None:
    """batch_llm beside the seed library (same model, both checkpointing), alternating."""
    from batchata_df.emulator import Emulator

    python = seed_python(venv)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    points: list[dict[str, Any]] = []
    # The points of other providers and sizes already in ``out`` are kept (each point
    # says when and at which commit it was measured); those measured now replace theirs.
    previous: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    now = {(provider, n) for provider in providers for n in sizes}
    kept = [pt for pt in previous.get("points", []) if (pt["provider"], pt["rows"]) not in now]
    code = _code()
    # The seed library knows only names its providers have since retired (SEED_MODELS):
    # this emulator serves them (SERVE_RETIRED_VAR); batch_llm runs the same names here.
    from unittest import mock

    from batchata_df.emulator.model_rules import SERVE_RETIRED_VAR

    with mock.patch.dict(os.environ, {SERVE_RETIRED_VAR: "1"}), Emulator(latency=0.0) as emu:
        env = child_env(emu.env())
        # batchata's Gemini provider reads GOOGLE_API_KEY (and is silently left out
        # without it); google-genai takes the emulator's GOOGLE_GEMINI_BASE_URL.
        seed_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
        seed_env["GOOGLE_API_KEY"] = env["GEMINI_API_KEY"]
        emu_pid = emu._proc.pid if emu._proc is not None else 0
        for n in sizes:
            for provider in providers:
                model = SEED_MODELS[provider]
                load_before = [round(x, 2) for x in os.getloadavg()]
                point_started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                pairs: list[dict[str, Any]] = []
                for _ in range(runs):
                    emu.reset()
                    with tempfile.TemporaryDirectory() as state:
                        seed = run_child(SEED_CLIENT, [str(n), state, model], seed_env, emu_pid,
                                         python)  # fmt: skip
                    emu.reset()
                    with tempfile.TemporaryDirectory() as state:
                        text = ["text"] if provider in SEED_TEXT else []
                        ours = run_child(OURS, [str(n), state, model, *text], env, emu_pid)
                    pairs.append({"seed": seed, "ours": ours})
                    point = {
                        "provider": provider, "model": model, "rows": n, "n_runs": len(pairs),
                        "batch_llm_schema": None if provider in SEED_TEXT else "Answer",
                        "runs": pairs,
                        **{who: {k: round(statistics.median(r[who][k] for r in pairs), 3)
                                 for k in ("wall_s", "cpu_s", "peak_rss_mb", "emulator_cpu_s")}
                           for who in ("seed", "ours")},
                        "ratio_seed_to_ours": {
                            k: round(statistics.median(r["seed"][k] / r["ours"][k] for r in pairs), 3)
                            for k in ("wall_s", "cpu_s", "peak_rss_mb")
                        },
                        "loadavg_before": load_before,
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                        "code": code,
                        "measured_utc": [point_started, time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                      time.gmtime())],
                    }  # fmt: skip
                    finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    doc = {
                        **previous,
                        "benchmark": "bench_overhead --seed",
                        "started_utc": previous.get("started_utc", started),
                        "finished_utc": finished,
                        "machine": _document(started, runs, [])["machine"],
                        "seed_library": {k: v for k, v in SEED.items() if k != "results"},
                        "points": sorted(
                            [*kept, *points, point],
                            key=lambda pt: (pt["rows"], list(PROVIDERS).index(pt["provider"])),
                        ),
                    }
                    out.write_text(json.dumps(doc, indent=1) + "\n")
                points.append(point)
                print(json.dumps({k: v for k, v in point.items() if k != "runs"}), flush=True)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "overhead.json")
    parser.add_argument("--merge", type=Path, nargs="+", help="merge these partial results")
    parser.add_argument("--note", help="with --merge or --replace: what the reader must know "
                        "(recorded; --replace appends it to the document's note)")
    parser.add_argument("--replace", type=Path, nargs="+",
                        help="put these results' points into --out, each replacing the point "
                        "of its provider and size (kept under replaced_points)")
    parser.add_argument("--pool", action="store_true",
                        help="with --merge: pool the runs of points measured more than once")
    parser.add_argument("--pin", action="store_true",
                        help="the emulator on the last core, the clients on the others")
    parser.add_argument("--seed", action="store_true",
                        help="batch_llm beside the seed library (default sizes 1k, 10k)")
    parser.add_argument("--seed-venv", type=Path, default=Path(tempfile.gettempdir()) / "batchata-seed")
    args = parser.parse_args()
    if args.seed:
        sizes = args.sizes if args.sizes != parser.get_default("sizes") else [1_000, 10_000]
        out = args.out if args.out != parser.get_default("out") else (
            HERE / "results" / "overhead_seed.json"
        )
        run_seed(sizes, args.providers, args.runs, out, args.seed_venv)
        return
    if args.merge:
        merge(args.merge, args.out, args.note, pool=args.pool)
        return
    if args.replace:
        replace(args.replace, args.out, args.note or "")
        return

    from batchata_df.emulator import Emulator

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    points: list[dict[str, Any]] = []
    args.out.parent.mkdir(exist_ok=True)
    pinned = pin_emulator() if args.pin else None
    with Emulator(latency=0.0) as emu:
        if pinned is not None:
            os.sched_setaffinity(0, pinned["clients"])  # every client inherits this
        env = child_env(emu.env())
        emu_pid = emu._proc.pid if emu._proc is not None else 0
        for n in args.sizes:
            for provider in args.providers:
                model = PROVIDERS[provider]
                load_before = [round(x, 2) for x in os.getloadavg()]
                runs: list[dict[str, Any]] = []
                for i in range(args.runs):
                    # Which client goes first alternates from run to run: neither always
                    # meets the emulator (or the machine) as the other left it.
                    pair: dict[str, Any] = {}
                    for who in ("floor", "ours") if i % 2 == 0 else ("ours", "floor"):
                        emu.reset()
                        if who == "floor":
                            pair["floor"] = run_child(FLOORS[provider], [str(n)], env, emu_pid)
                            continue
                        with tempfile.TemporaryDirectory() as state:
                            ours = run_child(OURS, [str(n), state, model], env, emu_pid)
                            ours["state_mb"] = round(
                                sum(p.stat().st_size for p in Path(state).rglob("*")) / 1e6, 2
                            )
                        pair["ours"] = ours
                    runs.append({"floor": pair["floor"], "ours": pair["ours"], "first": (
                        "floor" if i % 2 == 0 else "ours")})
                    point = {
                        "provider": provider,
                        "model": model,
                        "rows": n,
                        "n_runs": len(runs),
                        "runs": runs,
                        **summarise(runs),
                        "loadavg_before": load_before,
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                        "code": _code(),
                        # batchata_df's bytecode: "compiled" before the runs (points of
                        # earlier sittings have no key: loaded from source, see docstring)
                        "bytecode": "compiled",
                        "pinned": pinned,
                    }
                    # Written after every run: a long run interrupted keeps what it measured
                    # (a point with fewer runs than asked says so in n_runs).
                    doc = _document(started, args.runs, [*points, point])
                    args.out.write_text(json.dumps(doc, indent=1) + "\n")
                points.append(point)
                print(json.dumps({k: v for k, v in point.items() if k != "runs"}), flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
