"""A crash after a batch's results are stored but before the batch is recorded collected.

The child dies at the ``after_results`` failpoint: the first finished batch's job events
(answers, usage, cost) are in the state folder, its ``collected`` batch event is not. The
next call must not download or count those results again: progress shows each row once,
the cost once, and the provider is asked for that batch's output once in all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm
from batchata_df.engine.run import ProgressSnapshot
from batchata_df.state import JOB_EVENTS

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import sys, polars as pl
    from typing import Literal
    from pydantic import BaseModel
    from batchata_df import batch_llm

    class Review(BaseModel):
        sentiment: Literal["positive", "negative", "neutral"]
        rating: int

    df = pl.DataFrame({"text": [f"review {i}" for i in range(7)]})
    cap = float(sys.argv[3]) if sys.argv[3] else None
    if sys.argv[2] == "sink":
        batch_llm(df.lazy(), schema=Review, model="gpt-4.1-mini", prompt="{text}",
                  state=sys.argv[1], items_per_batch=3, sink=sys.argv[1] + ".out.parquet",
                  chunk_rows=7, max_cost_usd=cap)
    else:
        df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}",
                state=sys.argv[1], items_per_batch=3, max_cost_usd=cap)
    print("FINISHED")
    """
)


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    rating: int


def _downloads(emu) -> list[str]:
    """The output files the client downloaded, one entry per download."""
    return [
        e["path"]
        for e in emu.log()
        if e["method"] == "GET" and e["path"].endswith("/content")
    ]


def _terminal_events(state) -> pl.DataFrame:
    """Every terminal job event in the folder, counted per status."""
    from batchata_df import sql

    return sql(
        "select status, count(*) as n, count(distinct job_id) as jobs from job_events "
        "where status in ('completed', 'failed', 'cancelled') group by 1",
        state=state,
    )


def _crash(state: Path, path: str, tmp_path: Path, cap: float | None = None) -> None:
    """Run the child until it dies at ``after_results``; check what that left behind."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {
        **os.environ,
        "BATCHATA_DF_FAILPOINT": "after_results",
        "PYTHONPATH": str(ROOT),  # this checkout's package, whatever the venv points at
    }
    args = [sys.executable, str(script), str(state), path, str(cap or "")]
    child = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert child.returncode == 75, child.stderr  # died at the failpoint
    assert "FINISHED" not in child.stdout
    # By the table's schema, as README says: a format 2 part leaves out its all-null columns.
    stored = pl.scan_parquet(state / "jobs" / "*.parquet", schema=JOB_EVENTS,
                             missing_columns="insert", extra_columns="ignore").collect()
    first = stored.filter(pl.col("status") == "completed")
    assert first.height == 3  # the first batch: 3 answers with their cost
    assert first["cost_usd"].sum() > 0
    batches = pl.read_parquet(state / "batches" / "*.parquet")
    assert batches.filter(pl.col("status") == "submitted").height == 3
    assert batches.filter(pl.col("status") == "collected").height == 0  # not recorded yet


@pytest.mark.parametrize("path", ["frame", "sink"])
def test_a_crash_after_storing_results_counts_and_downloads_them_once(emu, tmp_path, path):
    state = tmp_path / "state"
    _crash(state, path, tmp_path)
    assert len(_downloads(emu)) == 1  # one batch's results stored, then the crash

    seen: list[ProgressSnapshot] = []
    df = pl.DataFrame({"text": [f"review {i}" for i in range(7)]})
    if path == "sink":
        out = batch_llm(
            df.lazy(), schema=Review, model="gpt-4.1-mini", prompt="{text}", state=state,
            items_per_batch=3, sink=tmp_path / "out.parquet", chunk_rows=7,
            progress=seen.append,
        ).collect()
    else:
        out = df.pipe(
            batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}", state=state,
            items_per_batch=3, progress=seen.append,
        )
    assert out["_status"].to_list() == ["completed"] * 7
    last = seen[-1]
    assert (last.total, last.completed, last.failed, last.pending) == (7, 7, 0, 0)
    assert last.cost_usd == pytest.approx(out["_cost_usd"].sum(), rel=1e-9)
    # Each batch's output was downloaded once in all (3 batches: 3, 3 and 1 rows).
    downloads = _downloads(emu)
    assert len(downloads) == len(set(downloads)) == 3
    # The crashed batch is recorded collected, and its jobs carry one terminal event each.
    events = _terminal_events(state)
    assert events.select("status", "n", "jobs").rows() == [("completed", 7, 7)]
    batches = pl.read_parquet(state / "batches" / "*.parquet")
    collected = batches.filter(pl.col("status") == "collected")
    assert collected["batch_key"].n_unique() == 3
    assert collected.height == 3


def test_dry_runs_after_a_crash_after_storing_results_agree_with_the_engine(emu, tmp_path):
    """In memory and streamed, a dry run counts the stored batch's rows done, not in
    flight, and does not hold their worst case under the cap (its cost is spent), as the
    engine does: with a cap that just fits 3 new rows, both plan them within the cap."""
    state = tmp_path / "state"
    _crash(state, "sink", tmp_path, cap=10.0)
    df = pl.DataFrame({"text": [f"review {i}" for i in range(10)]})  # 3 new rows
    kw = dict(schema=Review, model="gpt-4.1-mini", prompt="{text}", state=state,
              items_per_batch=3, dry_run=True)  # fmt: skip
    plan = df.pipe(batch_llm, **kw)
    events = pl.scan_parquet(state / "jobs" / "*.parquet", schema=JOB_EVENTS,
                             missing_columns="insert", extra_columns="ignore").collect()
    spent = events.filter(pl.col("status") == "completed")["cost_usd"].sum()
    in_flight = events.filter(
        (pl.col("status") == "assigned")
        & ~pl.col("job_id").is_in(events.filter(pl.col("status") == "completed")["job_id"])
    )["est_cost_usd"].sum()
    new = plan.filter(pl.col("_status") == "planned")["_est_cost_usd"].sum()
    cap = (spent + in_flight + new) * 1.0001
    memory = df.pipe(batch_llm, **kw, max_cost_usd=cap)
    streamed = batch_llm(
        df.lazy(), **kw, max_cost_usd=cap, sink=tmp_path / "plan.parquet", chunk_rows=7
    ).collect()
    expected = [("done", None)] * 3 + [("in_flight", None)] * 4 + [("planned", True)] * 3
    assert memory.select("_status", "_within_cap").rows() == expected
    assert streamed.select("_status", "_within_cap").rows() == expected
    out = batch_llm(
        df.lazy(), schema=Review, model="gpt-4.1-mini", prompt="{text}", state=state,
        items_per_batch=3, max_cost_usd=cap, sink=tmp_path / "out.parquet", chunk_rows=7,
    ).collect()
    assert out["_status"].to_list() == ["completed"] * 10
