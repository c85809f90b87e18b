"""A fresh start takes only its own jobs out of a group folder another script's Batch shares.

Under ``results_dir/state`` a group folder is named by its jobs' parameters, not by the
Batch: two Batches with the same parameters (here: the same model, no others) write one
folder. When B asks ``reuse_state=False`` and A (``reuse_state=True``, the default) is not
live at that moment (run and released earlier in the script), moving the folder aside (as
a fresh start does with a folder of B's jobs alone) took A's answers with it, so A sent and
paid for its jobs again at every run of the script. B's fresh start now copies the folder
whole to ``state.previous-<time>`` (nothing lost: B's earlier answers and bills are
there) and takes B's jobs out of the live folder (``StateStore.drop_jobs``,
tests/test_state_drop_jobs.py); A's stay, counted under B's cost limit as any job of a
folder B resumes. Refused while one of B's jobs is in flight there. B's earlier job whose
prompt was edited since has another id: it stays, like another Batch's job, and is not sent
again.
"""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm, sql
from batchata_df.compat import Batch
from batchata_df.errors import StateError
from batchata_df.frame import job_ids_of
from batchata_df.state import StateStore, read_manifest, spent_usd

_ONE_ANSWER_USD = 0.0016028
"""What one truncated answer of :func:`_batch` is billed (2000 output tokens)."""


def _run(tmp_path: Path, prompt: str, *, fresh: bool) -> None:
    batch = Batch(results_dir=tmp_path / "out").set_default_params(model="gpt-4.1-mini")
    if fresh:
        batch.set_state(reuse_state=False)
    batch.add_job(prompt=prompt).run()


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


def _posts(emu) -> int:
    return sum(1 for e in emu.log() if e["method"] == "POST" and e["path"].endswith("/batches"))


def _batch(tmp_path: Path, prompt: str, *, fresh: bool = False) -> Batch:
    """One truncated job (billed $0.0016028, its text still returned) on ``tmp_path/out``:
    every such Batch has the same parameters, so one group folder."""
    batch = Batch(results_dir=tmp_path / "out").set_default_params(
        model="gpt-4.1-mini", max_tokens=2000
    )
    if fresh:
        batch.set_state(reuse_state=False)
    return batch.add_job(prompt=f"{prompt} [[emulator:truncate]]")


def _ran(batch: Batch, usd: float = _ONE_ANSWER_USD) -> str:
    """Run ``batch``, drop it (no live Batch holds the folder), return its answer's text."""
    (result,) = batch.run().results()["failed"]  # truncated: answered and billed
    del batch
    gc.collect()
    assert result.cost_usd == pytest.approx(usd, rel=1e-9)
    return str(result.raw_response)


def _the_folder(tmp_path: Path) -> Path:
    (folder,) = (tmp_path / "out" / "state").iterdir()
    return folder


def _events(folder: Path) -> pl.DataFrame:
    fingerprint = read_manifest(folder / "manifest.json").fingerprint
    return StateStore(folder, fingerprint, readonly=True).job_events()


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "writer.lock"
    }


def test_the_fresh_start_keeps_the_folder_aside_and_the_other_jobs_in_place(emu, tmp_path):
    """A and B answered once each in their shared folder; B starts afresh. The folder as it
    was is copied whole aside (both answers, both bills, the same events); the live folder
    keeps A's events as they were and B's new answer, readable by ``sql``; A's script
    again sends nothing: 3 bills."""
    assert "'one" in _ran(_batch(tmp_path, "one"))
    assert "'two" in _ran(_batch(tmp_path, "two"))
    folder = _the_folder(tmp_path)
    before, files = _events(folder), _files(folder)
    a_id, b_id = before.filter(pl.col("status") != "assigned").get_column("job_id")
    assert "'two" in _ran(_batch(tmp_path, "two", fresh=True))
    (aside,) = (tmp_path / "out").glob("state.previous-*")
    assert [p.name for p in aside.iterdir()] == [folder.name]
    assert _files(aside / folder.name) == files  # the same parts, manifest, events
    assert spent_usd(aside / folder.name) == pytest.approx(2 * _ONE_ANSWER_USD, rel=1e-9)
    after = _events(folder)
    assert after.filter(pl.col("job_id") == a_id).equals(before.filter(pl.col("job_id") == a_id))
    b_new = after.filter(pl.col("job_id") == b_id)
    assert b_new.get_column("seq").min() > before.get_column("seq").max()  # sent again
    assert spent_usd(folder) == pytest.approx(2 * _ONE_ANSWER_USD, rel=1e-9)  # A's, B's new
    jobs = sql("SELECT job_id, status, cost_usd FROM jobs ORDER BY job_id", str(folder))
    want = [(a_id, "failed", _ONE_ANSWER_USD), (b_id, "failed", _ONE_ANSWER_USD)]
    assert jobs.rows() == sorted(want)
    assert "'one" in _ran(_batch(tmp_path, "one"))
    assert _posts(emu) == 3 and len(emu.billing()) == 3


def test_its_job_in_flight_in_the_shared_folder_is_refused_and_nothing_moves(emu, tmp_path):
    """B's earlier ``run(wait=False)`` left its job in flight in the folder A shares: taken
    out, its answer would be lost (and paid again). Refused, the dry run too, before
    anything is copied, changed or sent; once collected, the fresh start goes on."""
    _ran(_batch(tmp_path, "one"))
    emu.configure(latency=1000.0)
    b = _batch(tmp_path, "two")
    assert b.run(wait=False).status()["pending"] == 1
    del b
    gc.collect()
    folder = _the_folder(tmp_path)
    files = _files(folder)
    emu.configure(latency=0.0)
    for dry_run in (True, False):
        with pytest.raises(StateError, match="1 of its job sent by an earlier run") as caught:
            _batch(tmp_path, "two", fresh=True).run(dry_run=dry_run)
        assert "reuse_state=True (the default) to collect" in str(caught.value)
        del caught  # its traceback holds the Batch: a live Batch using the folder
        gc.collect()
        assert _files(folder) == files
        assert not list((tmp_path / "out").glob("state.previous-*"))
        assert _posts(emu) == 2
    emu.advance(1000.0)
    assert "'two" in _ran(_batch(tmp_path, "two"))  # collected: nothing sent
    assert _posts(emu) == 2
    assert "'two" in _ran(_batch(tmp_path, "two", fresh=True))
    assert _posts(emu) == 3 and len(emu.billing()) == 3


@pytest.mark.parametrize(
    ("limit", "sent"),
    [(0.0034, True), (0.0030, False)],
    ids=["room-beside-a-s-answer", "a-s-answer-counts"],
)
def test_its_cost_limit_counts_the_other_jobs_of_the_folder_not_its_own_earlier(
    emu, tmp_path, limit, sent
):
    """A's answer ($0.0016028) stays in the folder and counts under B's limit, as in any
    folder B resumes; B's earlier one (taken out) does not. B's job holds $0.001603 (its
    worst case): with $0.0034, $0.0017972 is left (sent; with B's earlier answer counted
    $0.0001944: it would not be); with $0.0030, $0.0013972 (not sent: A's answer counts).
    The dry run plans what the run does."""
    _ran(_batch(tmp_path, "one"))
    _ran(_batch(tmp_path, "two"))
    b = _batch(tmp_path, "two", fresh=True).add_cost_limit(usd=limit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = b.run(dry_run=True).frames[0][1]
    assert plan.get_column("_est_cost_usd").item() == pytest.approx(0.001603, abs=1e-6)
    assert plan.get_column("_within_cap").to_list() == [sent]
    results = b.run().results()
    assert [r.cost_usd for r in results["failed"]] == ([_ONE_ANSWER_USD] if sent else [])
    assert len(results["cancelled"]) == (0 if sent else 1)
    assert len(emu.billing()) == (3 if sent else 2)
    assert spent_usd(_the_folder(tmp_path)) == pytest.approx(
        (2 if sent else 1) * _ONE_ANSWER_USD, rel=1e-9
    )


def test_its_earlier_job_with_a_prompt_edited_since_stays_in_the_folder(emu, tmp_path):
    """B's earlier job whose prompt was edited since has another id: it cannot be told from
    another Batch's job, so it stays (its answer in the live folder, not sent again); the
    edited one is sent."""
    _ran(_batch(tmp_path, "one"))
    _ran(_batch(tmp_path, "two"))
    before = _events(_the_folder(tmp_path))
    edited = _batch(tmp_path, "two, edited", fresh=True)
    assert "'two, edited" in _ran(edited, usd=0.0016032)  # two tokens more
    after = _events(_the_folder(tmp_path))
    assert after.head(before.height).equals(before)  # nothing of the folder taken out
    assert after.get_column("job_id").n_unique() == 3
    assert len(emu.billing()) == 3


class _Answer(BaseModel):
    word: str


def test_the_ids_it_takes_out_are_the_ones_batch_llm_records(emu, tmp_path):
    """``job_ids_of`` (how the fresh start finds its jobs in the folder) gives each row the
    id the call recorded, with every argument that keys the ids: files, system, history,
    schema, params; a row the call cannot send (a blank history turn) none."""
    doc = tmp_path / "doc.txt"
    doc.write_text("The sky is blue.")
    df = pl.DataFrame(
        {
            "q": ["What colour?", "Which sky?", "Again?"],
            "f": [str(doc)] * 3,
            "h": [
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                None,
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}],
            ],
        }
    )
    args = {
        "schema": _Answer, "model": "gpt-4.1-mini", "prompt": pl.col("q"), "files": "f",
        "system": "Be brief.", "history": "h", "params": {"temperature": 0.5},
    }  # fmt: skip
    out = batch_llm(df, state=tmp_path / "s", **args)  # type: ignore[arg-type]
    ids = job_ids_of(df, state=tmp_path / "s", **args)  # type: ignore[arg-type]
    assert out.get_column("_job_id").null_count() == 1
    assert ids.to_list() == out.get_column("_job_id").to_list()
    recorded = _events(tmp_path / "s").get_column("job_id").unique().sort()
    assert recorded.to_list() == sorted(ids.drop_nulls().to_list())
