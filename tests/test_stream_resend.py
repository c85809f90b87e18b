"""A streaming call (``sink=``) sends the rows a double Ctrl+C left ``cancelled``.

The second Ctrl+C aborts without waiting for the cancels it asked for: the provider
batches stay "cancel requested" in the state folder. The next streaming call collects them
(their answered rows) and, in that same call, sends the rows that ended ``cancelled``,
whether the chunk holding them was read before the batch was collected (looked up in the
spilled chunks) or after (sent from the chunk when it is read). Nothing answered is sent
or billed again, a call killed after sending them pays for nothing twice, and the sink
keeps every row in input order.

Real SIGINTs to a real process, the official Anthropic SDK against the emulator over
HTTP, judged by the emulator's billing ledger and the sink's values.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm


class Answer(BaseModel):
    label: str


KW = {"schema": Answer, "model": "claude-haiku-4-5", "prompt": "{t}", "progress": False}

CHILD = textwrap.dedent(
    """
    import sys, polars as pl
    from pydantic import BaseModel
    from batchata_df import batch_llm

    class Answer(BaseModel):
        label: str

    lf = pl.DataFrame({"t": [f"row {i}" for i in range(20)]}).lazy()
    batch_llm(lf, schema=Answer, model="claude-haiku-4-5", prompt="{t}", sink=sys.argv[2],
              chunk_rows=5, items_per_batch=int(sys.argv[3]), state=sys.argv[1], progress=False)
    """
)

ABORTED_BATCH = "5"  # the call a double Ctrl+C aborts: 4 batches of 5 rows
# The call after the double Ctrl+C, killed (os._exit, as kill -9: nothing cleaned up) right
# after the provider accepted its first batch, before recording the batch's id. The
# cancelled rows go in one batch (items_per_batch=50): that batch.
KILLED_BATCH = "50"


def batch_posts(emu) -> list[dict]:
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith("/batches")]


def cancels(emu) -> int:
    return len([e for e in emu.log() if e["path"].endswith("/cancel")])


def billed_once(emu) -> Counter:
    counts = Counter(e["request"] for e in emu.billing())
    assert counts and max(counts.values()) == 1, counts.most_common(3)
    return counts


def wait_for(check, proc: subprocess.Popen[str], deadline: float) -> None:
    while not check():
        assert time.monotonic() < deadline, "timed out"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)


def double_ctrl_c(emu, tmp_path: Path, procs) -> tuple[Path, Path, set[str]]:
    """A streaming call of 20 rows (4 chunks, 4 batches of 5) stopped by two SIGINTs.

    Returns the state folder, the sink and the batch ids it left cancel-requested.
    """
    # Long batches on the emulator's clock: a loaded machine's slow start (tens of real
    # seconds) must not let them run out before the test moves the clock.
    emu.configure(latency=600.0, cancel_delay=5.0)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    state, sink = tmp_path / "s", tmp_path / "out.parquet"
    child = subprocess.Popen([sys.executable, str(script), str(state), str(sink), ABORTED_BATCH],
                             env=dict(os.environ), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    procs.append(child)
    deadline = time.monotonic() + 90
    wait_for(lambda: len(batch_posts(emu)) >= 4, child, deadline)
    emu.advance(150.0)  # a request or so of each batch has run (of 5 spread over 600 s)
    child.send_signal(signal.SIGINT)
    wait_for(lambda: cancels(emu) >= 4, child, deadline)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode != 0, err  # aborted before the cancels were seen
    assert not sink.exists()
    emu.advance(60.0)  # the cancels have taken effect at the provider
    emu.configure(latency=0.0)  # the batches of later calls end at once
    # (The ledger counts a batch's requests as run until the batch is next looked at.)
    aborted = {e["batch_id"] for e in emu.billing()}
    assert len(aborted) == 4
    return state, sink, aborted


def ran_in(emu, aborted: set[str]) -> int:
    """Requests the aborted batches ran (billed), once a call has collected them."""
    ran = len([e for e in emu.billing() if e["batch_id"] in aborted])
    assert 0 < ran < 20  # some rows answered, some cancelled unrun
    return ran


def rows(n: int, start: int = 0) -> pl.DataFrame:
    return pl.DataFrame({"t": [f"row {i}" for i in range(start, start + n)]})


@pytest.mark.parametrize("order", ["same input", "their chunks read after collection"])
def test_the_next_streaming_call_sends_the_rows_a_double_ctrl_c_left_cancelled(
    emu, tmp_path: Path, procs, order: str
) -> None:
    state, sink, aborted = double_ctrl_c(emu, tmp_path, procs)
    if order == "same input":
        # Every chunk is read (all its rows in re-attached batches) before any is collected:
        # the cancelled rows are found in the spilled chunks.
        frame, parallel = rows(20), 8
    else:
        # Ten new rows come first and one batch goes at a time: the re-attached batches are
        # collected before the chunks holding their rows are read; the rows go from there.
        frame, parallel = pl.concat([rows(10, start=100), rows(20)]), 1
    out = batch_llm(
        frame.lazy(), sink=sink, state=state, chunk_rows=5, items_per_batch=5,
        max_parallel_batches=parallel, **KW,  # type: ignore[arg-type]
    ).collect()
    assert out["t"].to_list() == frame["t"].to_list()  # every row, in input order
    assert out["_status"].to_list() == ["completed"] * frame.height, out["_error"].to_list()
    assert out["label"].null_count() == 0
    counts = billed_once(emu)  # nothing answered was sent again, nothing paid twice
    assert len(counts) == frame.height
    # What the aborted batches ran was collected; the rest went in batches of this call.
    ran = ran_in(emu, aborted)
    assert len(emu.billing()) == frame.height and ran < 20
    assert Counter(e["mode"] for e in emu.billing()) == {"batch": frame.height}


def test_a_call_killed_after_sending_them_pays_for_nothing_twice(
    emu, tmp_path: Path, procs
) -> None:
    state, sink, aborted = double_ctrl_c(emu, tmp_path, procs)
    script = tmp_path / "killed.py"
    script.write_text(CHILD)
    env = {**os.environ, "BATCHATA_DF_FAILPOINT": "after_submit"}
    killed = subprocess.run([sys.executable, str(script), str(state), str(sink), KILLED_BATCH],
                            env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert killed.returncode == 75, killed.stderr  # died at the failpoint
    # Its first batch is the cancelled rows sent again: the aborted batches were collected.
    posts = batch_posts(emu)
    assert len(posts) == 5
    ran = ran_in(emu, aborted)  # collected by the killed call
    # That batch has run at the provider (latency 0), nobody collected it: the rows the
    # aborted batches never ran are billed now, once.
    assert len(billed_once(emu)) == 20
    out = batch_llm(
        rows(20).lazy(), sink=sink, state=state, chunk_rows=5, items_per_batch=50, **KW
    ).collect()
    assert out["t"].to_list() == rows(20)["t"].to_list()
    assert out["_status"].to_list() == ["completed"] * 20, out["_error"].to_list()
    assert len(billed_once(emu)) == 20  # the killed call's batch was found, not sent again
    assert len(batch_posts(emu)) == 5
    assert ran_in(emu, aborted) == ran
