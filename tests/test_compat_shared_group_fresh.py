"""Known bug: a fresh start moves aside a group folder it shares with another script's Batch.

Under ``results_dir/state`` a group folder is named by its jobs' parameters, not by the
Batch: two Batches with the same parameters (here: the same model, no others) write one
folder. When B asks ``reuse_state=False`` and A (``reuse_state=True``, the default) is not
live at that moment (run and released earlier in the script), B's fresh start moves the
folder aside with A's answers in it, so A sends and pays for its jobs again at every run
of the script. Not fixed in this pass: the folder cannot tell B's own earlier jobs (a
prompt edited since) from A's, so neither moving it nor keeping it is right without a
folder per Batch (or the jobs of the folder read and split).
"""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import pytest

from batchata_df.compat import Batch


def _run(tmp_path: Path, prompt: str, *, fresh: bool) -> None:
    batch = Batch(results_dir=tmp_path / "out").set_default_params(model="gpt-4.1-mini")
    if fresh:
        batch.set_state(reuse_state=False)
    batch.add_job(prompt=prompt).run()


@pytest.mark.xfail(strict=True, reason="B's fresh start moves the group folder A shares")
def test_a_script_s_resumed_batch_pays_once_beside_a_fresh_one(emu, tmp_path):
    """The script runs A (resumed) then B (fresh), three times: A's job is billed once,
    B's at every run (it asks to start afresh): 1 + 3 bills."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            _run(tmp_path, "A's job", fresh=False)
            gc.collect()
            _run(tmp_path, "B's job", fresh=True)
            gc.collect()
    assert len(emu.billing()) == 4
