"""``reuse_state=False`` under ``results_dir/state`` starts afresh under the cost limit too.

The seed's ``reuse_state=False`` forgets the earlier state: its cost limit counts what the
new run spends. Under ``results_dir/state`` a folder of no group of this Batch stays (it
may be another script's, tests/test_compat_shared_root_fresh.py); what it spent before
this fresh start is not this run's spending, so it must not take the new limit's room.
"""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import pytest

from batchata_df.compat import Batch
from batchata_df.errors import KeptStateWarning

_ONE_ANSWER_USD = 0.0016028
"""What one truncated answer of :func:`_batch` is billed (2000 output tokens)."""


def _posts(emu, suffix: str) -> list[dict[str, object]]:
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith(suffix)]


def _batch(tmp_path: Path, temperature: float) -> Batch:
    """The script: one truncated job (billed $0.0016, its text still returned)."""
    return (
        Batch(results_dir=tmp_path / "out")
        .set_default_params(model="gpt-4.1-mini", max_tokens=2000, temperature=temperature)
        .add_job(prompt="two [[emulator:truncate]]")
    )


def test_a_fresh_start_after_a_parameter_change_gets_its_whole_cost_limit(emu, tmp_path):
    """The script ran once (temperature 0, $0.0016 billed), then the user changed the
    temperature and asked ``reuse_state=False`` with a $0.002 limit: the job is sent and
    answered, not cancelled because the discarded run's bill took the limit's room."""
    _batch(tmp_path, 0.0).run()
    gc.collect()
    assert len(emu.billing()) == 1
    again = _batch(tmp_path, 0.5).set_state(reuse_state=False).add_cost_limit(usd=0.002)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeptStateWarning)  # nothing of it counts: not named
        results = again.run().results()
    assert results["cancelled"] == []
    (result,) = results["failed"]  # truncated at max_tokens: answered and billed
    assert result.cost_usd == pytest.approx(_ONE_ANSWER_USD, rel=1e-9)
    assert len(_posts(emu, "/batches")) == 2 and len(emu.billing()) == 2
