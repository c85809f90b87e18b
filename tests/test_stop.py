"""time_limit and Ctrl+C: stop submitting, cancel in flight, salvage finished rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Literal

import polars as pl
from pydantic import BaseModel

from batchata_df import batch_llm


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    rating: int


def frame(n):
    return pl.DataFrame({"text": [f"review {i}" for i in range(n)]})


def posts(emu, suffix="/batches"):
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith(suffix)]


def test_time_limit_salvages_rows_finished_before_the_cancel(emu):
    # Deterministic: the batch's progress is set on the emulator's clock, not left to how
    # fast this machine is. With latency 1000 s, 20 requests run from 100 s to 900 s after
    # creation; once the batch is submitted the emulator's clock jumps 500 s ahead, so
    # exactly 10 have finished (the next one is 40 real seconds away) when the cancel
    # arrives at the 2 s time limit.
    emu.configure(latency=1000.0)
    jumped = []

    def on_progress(snapshot):
        if snapshot.batches.get("submitted") and not jumped:
            jumped.append(emu.advance(500.0))

    out = frame(40).pipe(
        batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}",
        items_per_batch=20, max_parallel_batches=1, time_limit=2.0, progress=on_progress,
    )
    assert jumped
    completed = out.filter(pl.col("_status") == "completed")
    cancelled = out.filter(pl.col("_status") == "cancelled")
    # The first 10 rows finished before the cancel; the other 10 of that batch were
    # cancelled, and the second batch of 20 was never sent.
    assert completed["text"].to_list() == [f"review {i}" for i in range(10)]
    assert cancelled["text"].to_list() == [f"review {i}" for i in range(10, 40)]
    assert (cancelled["_error"] == "cancelled: time_limit").all()
    assert completed["rating"].null_count() == 0
    assert completed["_cost_usd"].min() > 0 and cancelled["_cost_usd"].sum() == 0
    assert len(posts(emu)) == 1 and len(posts(emu, "/cancel")) == 1


def test_time_limit_works_outside_the_main_thread(emu):
    emu.configure(latency=30.0)
    box = {}

    def work():
        box["out"] = frame(5).pipe(batch_llm, schema=Review, model="gpt-4.1-mini",
                                   prompt="{text}", time_limit=1.0)

    t = threading.Thread(target=work)
    t.start()
    t.join(30)
    assert not t.is_alive()
    assert box["out"]["_status"].to_list() == ["cancelled"] * 5


CHILD = textwrap.dedent(
    """
    import sys, polars as pl
    from pydantic import BaseModel
    from batchata_df import batch_llm

    class A(BaseModel):
        rating: int

    df = pl.DataFrame({"text": [f"r{i}" for i in range(30)]})
    out = df.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{text}",
                  items_per_batch=10, max_parallel_batches=1, state=sys.argv[1])
    print("STATUSES", sorted(set(out["_status"].to_list())))
    print("ERRORS", sorted(set(e for e in out["_error"].to_list() if e)))
    """
)


def test_ctrl_c_cancels_and_returns_the_frame(emu, tmp_path):
    emu.configure(latency=30.0)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(tmp_path / "s")],
                             env=dict(os.environ), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not posts(emu):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=240)
    assert child.returncode == 0, err
    assert "STATUSES ['cancelled']" in out
    assert "cancelled: interrupted" in out
    assert "stopping" in err
    assert len(posts(emu)) == 1 and len(posts(emu, "/cancel")) == 1
