"""The side-by-side benchmark's floor clients run, and send and decode what they should.

``benchmarks/bench_overhead.py`` measures ``batch_llm`` beside a floor per provider (the
official SDK and Polars, no checkpoints). A floor that broke, or that quietly did less
work, would make every ratio of the README's table wrong without a test noticing: each
one is run here against the emulator, in batches of 60 requests (three batches), and what
it billed and decoded is checked against batch_llm's answers to the same rows. No test
measures time or memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from typing import Literal

import polars as pl
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel
from scripts import load_script

from batchata_df import batch_llm

N = 150


class Answer(BaseModel):
    """The floors' answer schema (``bench_overhead.SCHEMA``) as batch_llm takes it."""

    summary: str
    score: float
    label: Literal["pos", "neg", "neu"]


def _bench():  # type: ignore[no-untyped-def]
    return load_script("benchmarks/bench_overhead.py", "bench_overhead_clients")


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_the_floor_bills_each_row_once_and_decodes_every_answer(emu, provider, tmp_path):
    # The in-memory floor of bench_overhead.py, 60 requests a batch: three batches (60, 60,
    # 30), each decoded as it arrives, put back in input order at the end.
    bench = _bench()
    # The date the benchmark measures at (its models' shutdowns come later).
    emu.configure(today=os.environ.get("BATCHATA_DF_TODAY", "2026-10-31"))
    probe = bench.FLOORS[provider].replace(
        '    print(json.dumps({"rows": out.height}))',
        '    print(json.dumps({"rows": out.height, "out": out.with_columns(pl.col("label")'
        '.cast(pl.String)).to_dicts()}))',
    ).replace("PER_BATCH = 50_000", "PER_BATCH = 60")
    assert probe.count("PER_BATCH = 60") == 1 and '"out": out' in probe  # both replaced
    env = {**os.environ, **emu.env(), "BATCHATA_DF_TODAY": "2026-10-31"}
    run = subprocess.run(
        [sys.executable, "-c", probe, str(N)], env=env, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout)
    assert got["rows"] == N
    out = pl.DataFrame(got["out"])
    assert out.columns == ["text", "summary", "score", "label"]
    assert out["text"][0].startswith("Review 0: the product arrived")
    assert out["text"].str.extract(r"^Review (\d+):").cast(pl.Int64).to_list() == list(range(N))
    bills = emu.billing()
    assert len(bills) == N
    assert max(Counter(b["request"] for b in bills).values()) == 1
    assert sorted(Counter(b["batch_id"] for b in bills).values()) == [30, 60, 60]
    # Each answer sits beside its own row: batch_llm's answers to the same prompts.
    ours = batch_llm(
        out.select("text"), schema=Answer, model=bench.PROVIDERS[provider], prompt="{text}",
        state=str(tmp_path / "state"), progress=False,
    )
    assert ours["_status"].to_list() == ["completed"] * N
    assert out["summary"].n_unique() > N // 3  # answers differ by row: a shift would show
    assert out.select("summary", "score", "label").equals(
        ours.select("summary", "score", ours["label"].cast(pl.String))
    )


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_the_streamed_floor_writes_every_row_in_order_billed_once(emu, provider, tmp_path):
    # bench_stream.py's floor: Parquet files in, batch by batch, one Parquet file out. Two
    # input files of 90 and 60 rows and 60 requests a batch: three batches (60, 30, 60).
    bench = _bench()
    emu.configure(today=os.environ.get("BATCHATA_DF_TODAY", "2026-10-31"))
    text = pl.select(
        pl.format("Review {}: the product arrived on time", pl.int_range(N)).alias("text")
    )
    # The first file in row groups of 40 rows: a batch is read across row groups.
    text.slice(0, 90).write_parquet(tmp_path / "in-0.parquet", row_group_size=40)
    text.slice(90).write_parquet(tmp_path / "in-1.parquet")
    assert pq.ParquetFile(tmp_path / "in-0.parquet").num_row_groups == 3
    code = bench.STREAM_FLOORS[provider].replace("PER_BATCH = 50_000", "PER_BATCH = 60")
    assert code != bench.STREAM_FLOORS[provider]
    sink = tmp_path / "out.parquet"
    env = {**os.environ, **emu.env(), "BATCHATA_DF_TODAY": "2026-10-31"}
    run = subprocess.run(
        [sys.executable, "-c", code, str(N), str(tmp_path / "in-*.parquet"), str(sink)],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    reported = json.loads(run.stdout)
    assert reported["rows"] == N and reported["vm_hwm_mb"] > 0
    out = pl.read_parquet(sink)
    assert out.columns == ["text", "summary", "score", "label"]
    assert out["text"].to_list() == text["text"].to_list()  # every row, in input order
    assert out["label"].cast(pl.String).is_in(["pos", "neg", "neu"]).all()
    assert out["summary"].null_count() == 0
    assert pq.ParquetFile(sink).num_row_groups == 3  # written batch by batch
    bills = emu.billing()
    assert len(bills) == N
    assert max(Counter(b["request"] for b in bills).values()) == 1
    assert sorted(Counter(b["batch_id"] for b in bills).values()) == [30, 60, 60]
    assert sorted(int(b["custom_id"]) for b in bills) == list(range(N))
    # Each answer sits beside its own row: batch_llm's answers to the same prompts (the
    # emulator answers by the prompt and the schema, and the floor sends batch_llm's body).
    ours = batch_llm(
        pl.scan_parquet(tmp_path / "in-*.parquet"), schema=Answer,
        model=bench.PROVIDERS[provider], prompt="{text}", state=str(tmp_path / "state"),
        progress=False,
    )
    assert ours["_status"].to_list() == ["completed"] * N
    assert out["summary"].n_unique() > N // 3  # answers differ by row: a shift would show
    assert out.select("summary", "score", out["label"].cast(pl.String)).equals(
        ours.select("summary", "score", ours["label"].cast(pl.String))
    )


def test_a_sitting_measures_each_run_afresh_and_alternates_the_first_client(emu, tmp_path):
    # bench_stream.py --runs N: the same size N times in one scratch folder. Each run must
    # send every row (a folder left by the run before would be resumed, sending nothing),
    # and the first client alternates: run then floor, then floor then run.
    bench = load_script("benchmarks/bench_stream.py", "bench_stream_sitting")
    emu.configure(today=os.environ.get("BATCHATA_DF_TODAY", "2026-10-31"))
    env = {**os.environ, **emu.env(), "BATCHATA_DF_TODAY": "2026-10-31"}
    saved: list[list[str]] = []
    rows = []
    for i in range(2):
        rows.append(bench.point(
            40, tmp_path, emu, env, lambda row: saved.append(list(row)),
            phases=["run", "floor"], model=bench.PROVIDERS["openai"],
            sitting={"started": "2026-12-03T21:00:00", "run": i + 1, "of": 2},
            floor_first=i == 1,
        ))  # fmt: skip
    first, second = rows
    for row in rows:
        assert row["run"]["status"] == {"completed": 40}
        assert row["billed_requests"] == row["distinct_requests"] == 40
        assert row["floor"]["billed_requests"] == 40
        assert row["ratio_to_floor"]["cpu_s"] > 0
    assert [k for k in first if k.startswith("loadavg")] == [
        "loadavg_before_run", "loadavg_before_floor"]
    assert [k for k in second if k.startswith("loadavg")] == [
        "loadavg_before_floor", "loadavg_before_run"]
    # each run saved 4 times (run, its checks, floor, the ratio): the second run's first
    # save holds the floor and not yet the run
    assert len(saved) == 8
    assert "run" in saved[0] and "floor" not in saved[0]
    assert "floor" in saved[4] and "run" not in saved[4]
    assert second["sitting"] == {"started": "2026-12-03T21:00:00", "run": 2, "of": 2}
