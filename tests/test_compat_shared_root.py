"""Two compat ``Batch``es of one script sharing a state root are not each other's leftovers.

The compat layer counts a group folder an earlier ``run()`` left under the state root (a
parameter changed since) under the cost limit and names it in a ``KeptStateWarning``
(tests/test_compat.py). A folder another live ``Batch`` uses (in this process, or a run
writing it in another process) is not left behind: that Batch reads its answers and counts
its money under its own limit.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from batchata_df.compat import Batch
from batchata_df.errors import KeptStateWarning


def _posts(emu, suffix: str) -> list[dict[str, object]]:
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith(suffix)]


def _batch(tmp_path: Path, temperature: float, prompt: str, limit: float | None) -> Batch:
    """One truncated job ($0.0016 at 2000 tokens); a $0.003 limit holds one such answer."""
    batch = Batch(results_dir=tmp_path / "out").set_default_params(
        model="gpt-4.1-mini", max_tokens=2000, temperature=temperature
    )
    if limit is not None:
        batch.add_cost_limit(usd=limit)
    return batch.add_job(prompt=f"{prompt} [[emulator:truncate]]")


@pytest.mark.parametrize("limit", [0.003, None])
def test_two_live_batches_on_one_root_neither_warns_nor_counts_the_other(emu, tmp_path, limit):
    """A script's two Batches (temperatures 0.0 and 0.5: two groups, one root): A's batch
    is in flight (``run(wait=False)``) when B runs. B's job is sent and billed under B's
    own $0.003 limit (A's $0.0016 worst case is A's, under A's limit), and no warning
    calls A's folder left behind by B; A then collects its own answer, sending nothing."""
    emu.configure(latency=1000.0)
    a = _batch(tmp_path, 0.0, "one", limit)
    b = _batch(tmp_path, 0.5, "two", limit)
    assert a.run(wait=False).status()["pending"] == 1
    emu.configure(latency=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeptStateWarning)
        plan = b.run(dry_run=True).to_polars()
        assert plan["_within_cap"].to_list() == [True if limit else None]  # None: no cap
        ran = b.run()
    (answer,) = ran.results()["failed"]  # truncated at max_tokens: answered, billed
    assert str(answer.error).startswith("truncated") and "'two" in str(answer.raw_response)
    assert answer.cost_usd == pytest.approx(0.0016028, rel=1e-9)
    assert len(_posts(emu, "/batches")) == 2  # A's, then B's
    emu.advance(1000.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeptStateWarning)
        back = a.run()  # B's folder is B's: A does not warn of it either
    (earlier,) = back.results()["failed"]
    assert "'one" in str(earlier.raw_response)
    assert earlier.cost_usd == pytest.approx(0.0016028, rel=1e-9)
    assert len(_posts(emu, "/batches")) == 2  # A sent nothing again
    assert len(emu.billing()) == 2


def test_a_batch_dropped_leaves_its_group_behind_again(emu, tmp_path):
    """Only a live Batch on the same root holds its groups: once the first one is gone (an
    edited script's earlier parameters), its paid batch counts under the next one's limit,
    and is named."""
    import gc

    emu.configure(latency=1000.0)
    a = _batch(tmp_path, 0.0, "one", 0.003)
    a.run(wait=False)
    del a
    gc.collect()
    # A live Batch of the same parameters on another root does not hold this root's group.
    elsewhere = _batch(tmp_path / "elsewhere", 0.0, "one", 0.003)
    emu.configure(latency=0.0)
    with pytest.warns(KeptStateWarning, match=r"1 job .* not collected"):
        ran = _batch(tmp_path, 0.5, "two", 0.003).run()
    assert [r.error for r in ran.results()["cancelled"]] == ["cancelled: cost_limit"]
    assert len(_posts(emu, "/batches")) == 1
    assert len(elsewhere) == 1


def test_a_group_another_process_is_writing_is_not_left_behind(emu, tmp_path):
    """A folder whose writer lock a live call of another process holds is that run's: not
    counted under this Batch's limit, not named; once that process is gone it is."""
    emu.configure(latency=1000.0)
    a = _batch(tmp_path, 0.0, "one", 0.003)
    a.run(wait=False)
    del a
    (folder,) = [p for p in (tmp_path / "out" / "state").iterdir() if p.is_dir()]
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from batchata_df.state import WriterLock
            with WriterLock({str(folder)!r}):
                print("held", flush=True)
                sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        emu.configure(latency=0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("error", KeptStateWarning)
            ran = _batch(tmp_path, 0.5, "two", 0.003).run()
        assert ran.status()["failed"] == 1  # sent, billed: the other run's money is its own
        assert len(_posts(emu, "/batches")) == 2
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    with pytest.warns(KeptStateWarning, match=r"1 job .* not collected"):
        _batch(tmp_path, 0.5, "two", 0.003).run()
