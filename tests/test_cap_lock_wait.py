"""A capped call that waits for the state folder's writer lock counts what was stored meanwhile.

A call without a cap may run a model without a price: its answers are stored without a
cost, and a capped call on the folder prices them at ``prices=`` (or is refused). That was
done while checking the arguments, before the folder's lock was taken: a capped call that
waited for another process's run counted that run's answers as $0 and spent past its cap
(reviewer: $0.362 at the given price in a folder capped at $0.30). Both sides here are real
processes against the emulator; the waiting one says when it reaches the lock, and the
emulator holds the first one's batch until then.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RATES = (1000.0, 1000.0)  # batch USD per million tokens for gpt-6-terra (no price known)
CAP = 0.3

# argv: role (first | memory | sink), state folder.
CHILD = textwrap.dedent(
    f"""
    import sys

    import polars as pl

    from batchata_df import batch_llm, frame, stream
    from batchata_df.errors import PriceError


    class Loud(frame.WriterLock):
        def __enter__(self):
            print("LOCKING", flush=True)  # the test lets the first run finish after this
            return super().__enter__()


    frame.WriterLock = stream.WriterLock = Loud
    role, state = sys.argv[1], sys.argv[2]
    params = {{"max_tokens": 50, "reasoning_effort": "none"}}
    kw = dict(model="gpt-6-terra", prompt="{{text}}", state=state, params=params,
              progress=False)
    if role == "first":
        out = batch_llm(pl.DataFrame({{"text": [f"a{{i}}" for i in range(5)]}}), **kw)
        print("DONE", out["_status"].to_list(), flush=True)
        sys.exit(0)
    rows = pl.DataFrame({{"text": [f"a{{i}}" for i in range(20)]}})
    kw.update(max_cost_usd={CAP}, lock_timeout=None, prices={{"gpt-6-terra": {RATES}}})
    try:
        if role == "sink":
            batch_llm(rows.lazy(), sink="out.parquet", **kw)
        else:
            batch_llm(rows, **kw)
    except PriceError as e:
        print("REFUSED", e.stored, "|", e, flush=True)
        sys.exit(7)
    print("DONE", flush=True)
    """
)


def _start(emu, work: Path, role: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.update(emu.env())
    env["PYTHONPATH"] = str(REPO)
    return subprocess.Popen(
        [sys.executable, "child.py", role, "st"], cwd=work, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _stored_at(state: Path, rates: tuple[float, float]) -> float:
    """What the folder's answers stored without a cost cost at ``rates``."""
    from batchata_df import sql

    jobs = sql("select input_tokens, output_tokens from jobs where cost_usd is null "
               "and input_tokens > 0", state)
    return float(((jobs["input_tokens"] * rates[0] + jobs["output_tokens"] * rates[1])
                  / 1e6).sum())


@pytest.mark.parametrize("role", ["memory", "sink"])
def test_a_capped_call_counts_the_answers_stored_while_it_waited_for_the_lock(
    emu, tmp_path: Path, procs, role: str
) -> None:
    """An uncapped run of a model without a price has its batch in flight (it holds the
    lock); a capped call on the same folder waits for the lock. When it gets it, the first
    run's answers (stored without a cost) are counted at prices=: the folder's bill at that
    price stays under the cap, and some rows are still sent.

    (A capped call without a price for them is refused before anything is sent, checked
    again under the lock; but a folder holds one call's arguments, and a capped call needs
    a price for its own model, so in a folder it can only wait on a call of the same
    models: the refusal is tested in ``test_state_none.py``.)"""
    (tmp_path / "child.py").write_text(CHILD)
    emu.configure(latency=1000.0)
    first = _start(emu, tmp_path, "first")
    procs.append(first)
    deadline = time.monotonic() + 120
    while len(emu.billing()) < 5:  # its batch is in flight, answered when the clock moves
        assert first.poll() is None, first.communicate(timeout=60)
        assert time.monotonic() < deadline, "the first run never submitted its batch"
        time.sleep(0.05)
    waiting = _start(emu, tmp_path, role)
    procs.append(waiting)
    assert waiting.stdout is not None
    assert waiting.stdout.readline() == "LOCKING\n", waiting.communicate(timeout=60)
    assert len(emu.billing()) == 5  # the capped call sent nothing before the lock
    while waiting.poll() is None or first.poll() is None:  # both run to the end
        emu.advance(1000.0)
        time.sleep(0.2)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0 and out.startswith("LOCKING\nDONE"), (out, err)
    out, err = waiting.communicate(timeout=60)
    state = tmp_path / "st"
    assert waiting.returncode == 0 and out == "DONE\n", (out, err)
    from batchata_df import sql

    earlier = _stored_at(state, RATES)
    assert 0 < earlier < CAP
    sent = len(emu.billing()) - 5
    assert 0 < sent < 15, (sent, earlier)
    new_cost = float(sql("select sum(cost_usd) as usd from jobs", state)["usd"][0] or 0.0)
    assert earlier + new_cost <= CAP, (earlier, new_cost)
