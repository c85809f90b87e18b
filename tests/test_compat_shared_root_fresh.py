"""``reuse_state=False`` on a state root another ``Batch`` shares discards only its own groups.

A compat ``Batch`` keeps one checkpoint folder per group of jobs under its state root; two
Batches on one ``results_dir`` share that root (tests/test_compat_shared_root.py). The
fresh start of one of them must not move aside the other's group folder: the other would
no longer find its checkpoint, and send and pay for its jobs again (or lose the answers
of the batch it has in flight).
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from batchata_df.compat import Batch
from batchata_df.errors import KeptStateWarning, StateError, StateLockedError

_ONE_ANSWER_USD = 0.0016028
"""What one truncated answer of :func:`_batch` is billed (2000 output tokens)."""


def _posts(emu, suffix: str) -> list[dict[str, object]]:
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith(suffix)]


def _batch(tmp_path: Path, temperature: float, prompt: str, *, state: Path | None = None) -> Batch:
    """One truncated job (billed $0.0016, its text still returned) on ``tmp_path/out``."""
    batch = Batch(results_dir=tmp_path / "out").set_default_params(
        model="gpt-4.1-mini", max_tokens=2000, temperature=temperature
    )
    if state is not None:
        batch.set_state(file=state)
    return batch.add_job(prompt=f"{prompt} [[emulator:truncate]]")


def _group_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "manifest.json").is_file())


def _answer_of(run) -> tuple[str, float]:
    (result,) = run.results()["failed"]  # truncated at max_tokens: answered and billed
    assert str(result.error).startswith("truncated")
    return str(result.raw_response), result.cost_usd


@pytest.mark.parametrize("explicit", [False, True], ids=["results_dir", "set_state"])
def test_a_fresh_start_never_moves_a_live_batch_s_group_in_flight(emu, tmp_path, explicit):
    """A's job is in flight (``run(wait=False)``) when B, on the same root, starts afresh
    (``reuse_state=False``). B's job is sent and billed; A's folder stays where A looks for
    it, so A collects its answer sending nothing again: two batches, two bills in all."""
    state = tmp_path / "state.json" if explicit else None
    root = tmp_path / "state" if explicit else tmp_path / "out" / "state"
    emu.configure(latency=1000.0)
    a = _batch(tmp_path, 0.0, "one", state=state)
    assert a.run(wait=False).status()["pending"] == 1
    (a_folder,) = _group_folders(root)
    emu.configure(latency=0.0)
    b = _batch(tmp_path, 0.5, "two", state=state).set_state(file=state, reuse_state=False)
    text, cost = _answer_of(b.run())
    assert "'two" in text and cost == pytest.approx(_ONE_ANSWER_USD, rel=1e-9)
    assert len(_posts(emu, "/batches")) == 2  # A's, then B's
    emu.advance(1000.0)
    text, cost = _answer_of(a.run())
    assert "'one" in text and cost == pytest.approx(_ONE_ANSWER_USD, rel=1e-9)
    assert len(_posts(emu, "/batches")) == 2  # A sent nothing again
    assert len(emu.billing()) == 2  # one bill each, no third
    assert a_folder.is_dir()


def test_a_fresh_start_moves_its_own_earlier_group_aside(emu, tmp_path):
    """B's own group folder (its key) is what ``reuse_state=False`` starts afresh: moved to
    ``state.previous-<time>`` (kept), and B's job sent and billed again."""
    _batch(tmp_path, 0.5, "two").run()
    root = tmp_path / "out" / "state"
    (first,) = _group_folders(root)
    b = _batch(tmp_path, 0.5, "two").set_state(reuse_state=False)
    text, _ = _answer_of(b.run())
    assert "'two" in text
    assert len(_posts(emu, "/batches")) == 2 and len(emu.billing()) == 2
    (aside,) = (tmp_path / "out").glob("state.previous-*")
    assert [p.name for p in _group_folders(aside)] == [first.name]
    assert [p.name for p in _group_folders(root)] == [first.name]  # the fresh one


def test_a_fresh_start_refuses_to_discard_its_group_a_live_batch_has_in_flight(emu, tmp_path):
    """Same parameters: A and B share one group folder. B's fresh start cannot move it aside
    without A losing its batch in flight: refused before anything is sent."""
    emu.configure(latency=1000.0)
    a = _batch(tmp_path, 0.0, "one")
    a.run(wait=False)
    b = _batch(tmp_path, 0.0, "two").set_state(reuse_state=False)
    for dry_run in (True, False):
        with pytest.raises(StateError, match="another live Batch") as caught:
            b.run(dry_run=dry_run)
        assert "nothing was sent" in str(caught.value)
    assert len(_posts(emu, "/batches")) == 1
    emu.advance(1000.0)
    text, _ = _answer_of(a.run())
    assert "'one" in text and len(_posts(emu, "/batches")) == 1


def _first_look_misses(monkeypatch) -> None:
    """The other process takes the writer lock just after the fresh start looked at it:
    the look says "not written" once per folder, then the truth."""
    from batchata_df import compat

    real, looked = compat._being_written, set()

    def racing(folder: Path) -> bool:
        if folder in looked:
            return real(folder)
        looked.add(folder)
        return False

    monkeypatch.setattr(compat, "_being_written", racing)


@pytest.mark.parametrize("raced", [False, True], ids=["locked", "locked-after-the-look"])
@pytest.mark.parametrize("explicit", [False, True], ids=["results_dir", "set_state"])
def test_a_fresh_start_leaves_a_folder_another_process_writes(
    emu, tmp_path, monkeypatch, explicit, raced
):
    """A folder whose writer lock a call of another process holds is that run's: B's fresh
    start leaves it in place whatever its key (the move itself takes the lock: also when
    the lock was taken after the look); B's own group (same key) is refused."""
    state = tmp_path / "state.json" if explicit else None
    emu.configure(latency=1000.0)
    a = _batch(tmp_path, 0.0, "one", state=state)
    a.run(wait=False)
    del a
    gc.collect()
    root = tmp_path / "state" if explicit else tmp_path / "out" / "state"
    (folder,) = _group_folders(root)
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
        if raced:
            _first_look_misses(monkeypatch)
        with pytest.raises(StateLockedError, match="another (call|process)"):
            _batch(tmp_path, 0.0, "one", state=state).set_state(file=state, reuse_state=False).run()
        assert len(_posts(emu, "/batches")) == 1
        if raced and explicit:  # under results_dir/state it does not look at others'
            _first_look_misses(monkeypatch)
        with warnings.catch_warnings():
            warnings.simplefilter("error", KeptStateWarning)
            ran = (
                _batch(tmp_path, 0.5, "two", state=state)
                .set_state(file=state, reuse_state=False)
                .run()
            )
        assert "'two" in _answer_of(ran)[0]
        assert folder.is_dir() and not list(root.parent.glob("state.previous-*"))
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    emu.advance(1000.0)
    text, _ = _answer_of(_batch(tmp_path, 0.0, "one", state=state).run())  # its script again
    assert "'one" in text
    assert len(_posts(emu, "/batches")) == 2  # its batch collected, not sent again
    assert len(emu.billing()) == 2


def test_an_unowned_folder_under_results_dir_stays_and_is_named(emu, tmp_path):
    """Under ``results_dir/state`` (a root the seed does not have: its ``results_dir`` may
    be shared by Batches) a folder no live Batch holds and no call writes may be another
    script's between two runs: B's fresh start leaves it in place, and names its job in
    flight as any folder left behind; that script's next run collects it, paying nothing."""
    emu.configure(latency=1000.0)
    _batch(tmp_path, 0.0, "one").run(wait=False)  # its Batch dropped: no live owner
    gc.collect()
    emu.configure(latency=0.0)
    b = _batch(tmp_path, 0.5, "two").set_state(reuse_state=False)
    with pytest.warns(KeptStateWarning, match=r"1 job .* not collected"):
        assert "'two" in _answer_of(b.run())[0]
    emu.advance(1000.0)
    text, _ = _answer_of(_batch(tmp_path, 0.0, "one").run())
    assert "'one" in text
    assert len(_posts(emu, "/batches")) == 2 and len(emu.billing()) == 2


def test_an_unowned_folder_under_its_own_state_file_is_moved_aside(emu, tmp_path):
    """``set_state(file=...)`` names this Batch's own state, as the seed's state file is
    (one Batch's): a folder there that no live Batch holds and no call writes is this
    Batch's earlier state (a parameter changed since), and a fresh start moves it aside
    with its own (kept): not counted, not named."""
    state = tmp_path / "state.json"
    _batch(tmp_path, 0.0, "one", state=state).run()
    gc.collect()
    (old,) = _group_folders(tmp_path / "state")
    b = _batch(tmp_path, 0.5, "two", state=state).set_state(file=state, reuse_state=False)
    b.add_cost_limit(usd=0.002)  # room for B's answer only if the old one is not counted
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeptStateWarning)
        assert "'two" in _answer_of(b.run())[0]
    (aside,) = tmp_path.glob("state.previous-*")
    assert [p.name for p in _group_folders(aside)] == [old.name]
    assert len(_posts(emu, "/batches")) == 2
