"""The cap's numbers, end to end on the emulator: calibration and every reservation.

When the offline estimates run low, each collected batch raises the next batches' worst
case by the input tokens the provider billed over those estimated (only ever upwards);
batches re-attached after a kill are held at their jobs' worst case from the new call's
table (a job not in it at the largest worst case known) or, streamed, at the worst case
recorded when they were sent. These tests pin the figures the progress callback reports
(``reserved_usd``) against what the emulator billed, so that how the engine holds its
per-job estimates can change without the money changing.
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
MODEL = "gpt-4.1-mini"
INPUT_USD = 0.2 / 1e6  # gpt-4.1-mini's batch price per input token (test_cost_control)


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    rating: int


def _texts(n: int) -> pl.DataFrame:
    # Different lengths, so that every batch's billed input differs from the others'.
    return pl.DataFrame({"text": [f"{i} " + "long input text " * (20 + 7 * i) for i in range(n)]})


def _uploads(seen: list[ProgressSnapshot]) -> list[float]:
    """What the cap held as each batch was uploaded, in order (one snapshot per upload)."""
    return [s.reserved_usd for s in seen if s.activity.startswith("uploading batch")]


def _low_estimates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Estimates far too low, and different for every row: a token per 50 characters."""
    import batchata_df.tokens as tokens

    monkeypatch.setattr(tokens, "estimate_request_tokens",
                        lambda prompt, *a, **k: prompt.str.len_chars().cast(pl.Int64) // 50)


def test_each_collected_batch_calibrates_the_next_reservation_by_the_billed_input(
    emu, monkeypatch
):
    _low_estimates(monkeypatch)
    df = _texts(8)
    kwargs = {"schema": Review, "model": MODEL, "prompt": "{text}",
              "params": {"max_tokens": 20}, "items_per_batch": 2, "max_parallel_batches": 1}
    plan = df.pipe(batch_llm, dry_run=True, **kwargs)
    est = plan["_est_input_tokens"].to_list()
    assert est == [len(t) // 50 for t in df["text"]] and len(set(est)) == 8
    worst = plan["_est_cost_usd"].to_list()  # the offline worst case of each row

    seen: list[ProgressSnapshot] = []
    out = df.pipe(batch_llm, max_cost_usd=1.0, progress=seen.append, **kwargs)
    assert out["_status"].to_list() == ["completed"] * 8
    batches = out["_batch_id"].unique(maintain_order=True).to_list()
    assert len(batches) == 4
    assert out["_batch_id"].to_list() == [b for b in batches for _ in range(2)]
    billed = out["_input_tokens"].to_list()
    assert all(b > 5 * e for b, e in zip(billed, est, strict=True))  # estimates ran low

    # Batch k is held at its rows' worst case with the input part scaled by the ratio of
    # input billed / estimated over batches 1..k-1.
    expected, ratios = [], []
    for k in range(4):
        ratio = max(1.0, sum(billed[: 2 * k]) / sum(est[: 2 * k])) if k else 1.0
        ratios.append(ratio)
        expected.append(
            sum(worst[j] + INPUT_USD * est[j] * (ratio - 1.0) for j in (2 * k, 2 * k + 1))
        )
    assert ratios[1] > 5 and len(set(ratios)) == 4  # each batch moved the ratio
    assert _uploads(seen) == pytest.approx(expected, rel=1e-9)
    assert seen[-1].reserved_usd == 0.0  # every reservation settled

    # What the cap admits follows: a cap with room, after the first batch's cost, for 3/4
    # of the second batch's calibrated worst case admits one of its rows (row 2, the
    # smaller), then nothing fits with nothing in flight: the rest end cancelled.
    emu.reset()
    first_cost = float(out["_cost_usd"].head(2).sum())
    cap = first_cost + 0.75 * expected[1]
    capped: list[ProgressSnapshot] = []
    again = df.pipe(batch_llm, max_cost_usd=cap, progress=capped.append, **kwargs)
    sizes = again.filter(pl.col("_status") == "completed").group_by(
        "_batch_id", maintain_order=True).len()["len"].to_list()
    assert sizes == [2, 1]
    assert again["_status"].to_list() == ["completed"] * 3 + ["cancelled"] * 5
    assert _uploads(capped)[:2] == pytest.approx(
        [expected[0], worst[2] + INPUT_USD * est[2] * (ratios[1] - 1.0)], rel=1e-9
    )
    assert float(again["_cost_usd"].sum()) <= cap


CHILD = textwrap.dedent(
    """
    import sys, polars as pl
    from typing import Literal
    from pydantic import BaseModel
    from batchata_df import batch_llm

    class Review(BaseModel):
        sentiment: Literal["positive", "negative", "neutral"]
        rating: int

    df = pl.DataFrame({"text": [f"{i} " + "long input text " * (20 + 7 * i) for i in range(3)]})
    cap = float(sys.argv[2]) if sys.argv[2] else None
    df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}",
            state=sys.argv[1], params={"max_tokens": 20}, max_cost_usd=cap)
    print("FINISHED")
    """
)


def _killed_after_submit(state: Path, tmp_path: Path, cap: float | None) -> None:
    """A child that dies right after its one batch (rows 0-2) was created."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "BATCHATA_DF_FAILPOINT": "after_submit", "PYTHONPATH": str(ROOT)}
    child = subprocess.run([sys.executable, str(script), str(state), str(cap or "")],
                           env=env, capture_output=True, text=True, timeout=240)
    assert child.returncode == 75, child.stderr  # died at the failpoint
    assert "FINISHED" not in child.stdout


@pytest.mark.parametrize("path", ["frame", "sink"])
def test_a_batch_re_attached_after_a_kill_is_held_at_its_jobs_worst_case(
    emu, tmp_path, path
):
    """In memory, the re-attached batch's rows 0 and 1 are held at this call's worst case of
    each, row 2 (not in this call's frame) at the largest one of the frame (row 5's); the
    child sent without a cap, so nothing was recorded. Streamed, the child's cap recorded
    each row's worst case with its batch: it is held at those.

    Its collection then calibrates the next batches: in memory rows 0 and 1 have this call's
    estimates, row 2 none (its billed input counts, its estimate does not); streamed, none
    of its rows is in a chunk this call sends, so only their billed input counts."""
    state = tmp_path / "state"
    _killed_after_submit(state, tmp_path, cap=None if path == "frame" else 10.0)
    sent = _texts(3)
    df = pl.concat([sent.head(2), _texts(6).tail(3)])  # rows 0, 1, 3, 4, 5
    kwargs = {"schema": Review, "model": MODEL, "prompt": "{text}",
              "params": {"max_tokens": 20}, "max_parallel_batches": 1}
    dry = _texts(6).pipe(batch_llm, dry_run=True, **kwargs)
    worst, est = dry["_est_cost_usd"].to_list(), dry["_est_input_tokens"].to_list()
    seen: list[ProgressSnapshot] = []
    if path == "sink":
        held = worst[0] + worst[1] + worst[2]  # as recorded when it was sent
        out = batch_llm(df.lazy(), state=state, sink=tmp_path / "out.parquet",
                        max_cost_usd=10.0, progress=seen.append, items_per_batch=2,
                        **kwargs).collect()  # fmt: skip
    else:
        held = worst[0] + worst[1] + max(worst[j] for j in (0, 1, 3, 4, 5))
        out = df.pipe(batch_llm, state=state, max_cost_usd=10.0, progress=seen.append,
                      items_per_batch=2, **kwargs)  # fmt: skip
    assert out["_status"].to_list() == ["completed"] * 5
    assert worst[2] < worst[5]  # row 2's own worst case is not the largest of the frame
    # The first snapshot comes before anything new was sent (one slot, taken by it).
    first = next(s for s in seen if s.phase == "running")
    assert first.reserved_usd == pytest.approx(held, rel=1e-9)

    b = dict(zip([0, 1, 3, 4, 5], out["_input_tokens"].to_list(), strict=True))
    # By the table's schema, as README says: a format 2 part leaves out its all-null columns.
    events = pl.scan_parquet(state / "jobs" / "*.parquet", schema=JOB_EVENTS,
                             missing_columns="insert", extra_columns="ignore").collect()
    b[2] = int(events.filter(pl.col("status") == "completed")["input_tokens"].sum()) - sum(
        b.values()
    )
    assert b[2] > 0
    estimated = [0, 1] if path == "frame" else []  # rows of the re-attached batch with one

    def upload(rows, seen_rows, seen_est):
        ratio = sum(b[j] for j in seen_rows) / sum(est[j] for j in seen_est)
        return sum(worst[j] + INPUT_USD * est[j] * (max(ratio, 1.0) - 1.0) for j in rows)

    expected = [
        upload([3, 4], [0, 1, 2], estimated) if estimated else worst[3] + worst[4],
        upload([5], [0, 1, 2, 3, 4], [*estimated, 3, 4]),
    ]
    assert _uploads(seen) == pytest.approx(expected, rel=1e-9)


def test_a_streamed_batch_refused_for_the_queue_limit_is_calibrated_with_its_estimates(
    emu, monkeypatch, tmp_path, settled
):
    """Jobs refused for the provider's queue limit are planned again from the spilled
    chunks (``ChunkSource.lookup``), estimates included: every collected batch sets its
    billed input beside the estimates of exactly its jobs, the dry run's."""
    _low_estimates(monkeypatch)
    df = _texts(6)
    kwargs = {"schema": Review, "model": MODEL, "prompt": "{text}",
              "params": {"max_tokens": 20}, "items_per_batch": 3}
    dry = df.pipe(batch_llm, dry_run=True, **kwargs)
    one = int(df.head(1).pipe(batch_llm, **kwargs)["_input_tokens"][0])
    emu.reset()
    settled.clear()  # that call's batch
    emu.configure(latency=1.0, openai={"max_enqueued_tokens": 4 * one})  # one batch at a time
    try:
        out = batch_llm(df.lazy(), state=tmp_path / "s", sink=tmp_path / "out.parquet",
                        max_cost_usd=10.0, chunk_rows=3, **kwargs).collect()
    finally:
        emu.configure(openai={"max_enqueued_tokens": 10**12})
    assert out["_status"].to_list() == ["completed"] * 6
    creates = [e for e in emu.log()
               if e["method"] == "POST" and e["path"] == "/openai/v1/batches"]
    assert len(creates) > 2  # a batch was refused and sent again
    est = dict(zip(out["_job_id"], dry["_est_input_tokens"], strict=True))
    billed = dict(zip(out["_job_id"], out["_input_tokens"], strict=True))
    assert sorted(j for ids, _, _ in settled for j in ids) == sorted(est)  # each once
    for ids, estimates, got in settled:
        assert estimates == [est[j] for j in ids]
        assert got == (sum(est[j] for j in ids), sum(billed[j] for j in ids))
