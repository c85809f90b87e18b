"""compat.Batch and group folders an earlier run() left behind: unreadable, or set aside.

A group folder no group of this run uses is read only to count its money under the
cost limit and to say what it holds in flight. Without a limit nothing needs its money:
a damaged part in it must not stop every later run() of the Batch (it did not before
such folders were read), it is named instead. With a limit its money cannot be counted,
so the run is refused before anything is sent, naming the folder and the fix.
"""

from __future__ import annotations

import gc
import warnings

import pytest

from batchata_df.compat import Batch
from batchata_df.errors import KeptStateWarning, StateError


def _posts(emu, suffix):
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith(suffix)]


def _one_group(tmp_path, temperature: float, limit: float | None = None) -> Batch:
    batch = Batch(results_dir=tmp_path / "out").set_default_params(
        model="gpt-4.1-mini", max_tokens=50
    )
    if limit is not None:
        batch.add_cost_limit(usd=limit)
    return batch.add_job(prompt="one", temperature=temperature)


def _damage_left_behind(emu, tmp_path):
    _one_group(tmp_path, 0.0).run()
    root = tmp_path / "out" / "state"
    (old,) = [p for p in root.iterdir() if p.is_dir()]
    bad = old / "jobs" / "part-99999999999999999999-zzzzzzzz.parquet"
    bad.write_bytes(b"not parquet at all")
    assert len(_posts(emu, "/batches")) == 1
    return old


def test_a_damaged_folder_left_behind_does_not_stop_a_run_without_a_limit(emu, tmp_path):
    old = _damage_left_behind(emu, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = _one_group(tmp_path, 0.5).run()  # temperature changed: another group
    assert run.status()["completed"] == 1
    assert len(_posts(emu, "/batches")) == 2  # the edited job was sent
    named = [w.message for w in caught if isinstance(w.message, KeptStateWarning)]
    assert [w.folder for w in named] == [str(old)]
    said = str(named[0])
    assert "cannot be read" in said and "batchata-df repair" in said, said


def test_a_damaged_folder_left_behind_refuses_a_limited_run_naming_it(emu, tmp_path):
    old = _damage_left_behind(emu, tmp_path)
    with pytest.raises(StateError, match="batchata-df repair") as caught:
        _one_group(tmp_path, 0.5, limit=1.0).run()
    said = str(caught.value)
    assert str(old) in said and "add_cost_limit" in said and "nothing was sent" in said, said
    assert len(_posts(emu, "/batches")) == 1  # nothing was sent


def test_a_fresh_start_s_dry_run_counts_no_folder_left_behind(emu, tmp_path):
    """``reuse_state=False`` with its own state (``set_state(file=...)``, one Batch's, as
    the seed's state file): the run moves the folders an earlier run() left there aside
    before it sends, so they count no more; its dry run plans that (no warning, nothing of
    theirs under the limit), as the run then does."""
    state = tmp_path / "state.json"
    _one_group(tmp_path, 0.0).set_state(file=state).run()  # answered and billed
    batch = _one_group(tmp_path, 0.5, limit=1.0).set_state(file=state, reuse_state=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeptStateWarning)
        plan = batch.run(dry_run=True).to_polars()
        assert plan["_status"].to_list() == ["planned"]
        run = batch.run()
    assert run.status()["completed"] == 1
    assert len(_posts(emu, "/batches")) == 2
    assert len(list(tmp_path.glob("state.previous-*"))) == 1


def test_a_fresh_start_s_dry_run_treats_a_folder_under_results_dir_as_its_run_does(emu, tmp_path):
    """Under ``results_dir/state`` a folder no live Batch holds may be another script's:
    ``reuse_state=False`` leaves it in place. What it spent or holds is from before the
    fresh start: not under the new limit (tests/test_compat_fresh_start_limit.py). Its
    job in flight is named, by the dry run as by the run, neither counting it."""
    emu.configure(latency=1000.0)
    _one_group(tmp_path, 0.0).run(wait=False)  # in flight: its worst case held
    gc.collect()
    emu.configure(latency=0.0)
    batch = _one_group(tmp_path, 0.5, limit=1.0).set_state(reuse_state=False)
    for dry_run in (True, False):
        with pytest.warns(KeptStateWarning, match=r"1 job in flight") as caught:
            batch.run(dry_run=dry_run)
        said = " ".join(str(w.message) for w in caught)
        assert "counts under add_cost_limit" not in said, said
    assert len(_posts(emu, "/batches")) == 2
    assert not list((tmp_path / "out").glob("state.previous-*"))


def test_a_fresh_start_runs_beside_a_damaged_folder_it_does_not_count(emu, tmp_path):
    """A damaged folder under ``results_dir/state`` a fresh start leaves in place is not
    counted under its limit, so it cannot refuse the run: it is named, and the job sent."""
    old = _damage_left_behind(emu, tmp_path)
    batch = _one_group(tmp_path, 0.5, limit=1.0).set_state(reuse_state=False)
    with pytest.warns(KeptStateWarning, match="cannot be read") as caught:
        run = batch.run()
    assert [w.message.folder for w in caught if isinstance(w.message, KeptStateWarning)] == [
        str(old)
    ]
    assert run.status()["completed"] == 1
    assert len(_posts(emu, "/batches")) == 2
