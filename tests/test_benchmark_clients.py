"""The side-by-side benchmark's floor clients run, and send and decode what they should.

``benchmarks/bench_overhead.py`` measures ``batch_llm`` beside a floor per provider (the
official SDK and Polars, no checkpoints). A floor that broke, or that quietly did less
work, would make every ratio of the README's table wrong without a test noticing: each
one is run here against the emulator, at a size small enough for one batch, and what it
billed and decoded is checked. No test measures time or memory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
N = 150


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "bench_overhead_clients", ROOT / "benchmarks" / "bench_overhead.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_the_floor_bills_each_row_once_and_decodes_every_answer(emu, provider):
    bench = _bench()
    # The date the benchmark measures at (its models' shutdowns come later).
    emu.configure(today=os.environ.get("BATCHATA_DF_TODAY", "2026-10-31"))
    probe = bench.FLOORS[provider].replace(
        '    print(json.dumps({"rows": out.height}))',
        '    print(json.dumps({"rows": out.height, "labels": out["label"].cast(pl.String)'
        '.to_list(), "first": out.row(0, named=True)["text"]}))',
    )
    assert probe != bench.FLOORS[provider]  # the line the probe extends is there
    env = {**os.environ, **emu.env(), "BATCHATA_DF_TODAY": "2026-10-31"}
    run = subprocess.run(
        [sys.executable, "-c", probe, str(N)], env=env, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout)
    assert got["rows"] == N
    assert set(got["labels"]) <= {"pos", "neg", "neu"} and len(got["labels"]) == N
    assert got["first"].startswith("Review 0: the product arrived")
    bills = emu.billing()
    assert len(bills) == N
    assert max(Counter(b["request"] for b in bills).values()) == 1
