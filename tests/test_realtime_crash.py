"""Never pay twice across modes: SIGKILL a realtime run mid-way, resume it in batch mode.

The emulator's billing ledger (one entry per billed request, each with a digest of what
was asked, the same in both modes) and its request log are the judges: no request is
billed twice, no row answered in realtime is sent in a batch, and the requests that were
in flight when the process died (and may have been billed) are not sent again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import polars as pl
from pydantic import BaseModel

from batchata_df import batch_llm

N = 12


class Answer(BaseModel):
    label: str


SCRIPT = textwrap.dedent(
    """
    import sys
    import polars as pl
    from pydantic import BaseModel
    from batchata_df import batch_llm

    class Answer(BaseModel):
        label: str

    df = pl.DataFrame({"t": [f"row {i}" for i in range(int(sys.argv[2]))]})
    df.pipe(batch_llm, schema=Answer, model="gpt-4.1-mini", prompt="Say {t}",
            state=sys.argv[1], mode="realtime", concurrency=2)
    """
)


def test_sigkill_mid_realtime_then_resume_in_batch_bills_no_row_twice(emu, tmp_path) -> None:
    emu.configure(realtime_latency=0.5)
    state = tmp_path / "state"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, **emu.env()}
    log = tmp_path / "child.log"
    with open(log, "wb") as out_file:
        child = subprocess.Popen(
            [sys.executable, str(script), str(state), str(N)],
            env=env, stdout=out_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        # Wait (bounded) until some answers are back and two requests are in flight.
        give_up = time.monotonic() + 120
        while time.monotonic() < give_up:
            stats = emu.realtime_stats()
            if stats["served"] >= 4 and stats["in_flight"] >= 1:
                break
            assert child.poll() is None, log.read_text()
            time.sleep(0.05)
        else:
            raise AssertionError(f"the realtime run never got going: {emu.realtime_stats()}")
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=240)
    assert child.returncode == -signal.SIGKILL
    # Let the requests the dead process left in flight finish (the provider bills them).
    give_up = time.monotonic() + 60
    while emu.realtime_stats()["in_flight"] and time.monotonic() < give_up:
        time.sleep(0.05)
    answered_before = emu.realtime_stats()["served"]
    assert 4 <= answered_before < N

    emu.configure(log_bodies=True)
    df = pl.DataFrame({"t": [f"row {i}" for i in range(N)]})
    out = df.pipe(batch_llm, schema=Answer, model="gpt-4.1-mini", prompt="Say {t}", state=state)

    # No request billed twice, in either mode; every bill is one of our rows.
    billed = emu.billing()
    counts = Counter(e["request"] for e in billed)
    assert max(counts.values()) == 1, counts
    modes = Counter(e["mode"] for e in billed)
    assert modes["realtime"] == answered_before
    assert modes["realtime"] + modes["batch"] == len(billed) <= N
    # Rows answered in realtime were not in the batch that followed.
    batch_ids = {
        line["custom_id"] for e in emu.log() for line in e.get("lines") or [] if "custom_id" in line
    }
    realtime_rows = out.filter(pl.col("_mode") == "realtime")
    assert not batch_ids & set(realtime_rows["_job_id"].to_list())
    # Every row ended: realtime answers kept, in-flight ones "lost" (maybe billed, not resent),
    # the rest answered by the batch.
    by_status = Counter(zip(out["_mode"], out["_status"], strict=True))
    lost = out.filter(pl.col("_error").str.starts_with("lost:").fill_null(False))
    assert by_status[("batch", "completed")] == modes["batch"] == len(batch_ids)
    # A lost row was marked sent before its request left; the kill may come before or after
    # the provider got (and billed) it, so the bills lie between the two counts.
    done_rt = by_status[("realtime", "completed")]
    assert done_rt <= modes["realtime"] <= done_rt + lost.height
    assert lost["_mode"].to_list() == ["realtime"] * lost.height
    assert sum(by_status.values()) == N
    assert set(out["_status"]) <= {"completed", "failed"}
    assert lost.height <= 2  # at most the concurrency was in flight
