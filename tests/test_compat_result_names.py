"""Two compat ``Batch``es on one ``results_dir`` never overwrite each other's result files.

A Batch numbers its jobs ``job-000000``, ``job-000001``, ... and writes
``<results_dir>/<job_id>.json`` (and ``raw_files/responses/<job_id>_raw.json``); scripts
read those names, so a Batch alone keeps them. The seed's job ids were random, so two of
its Batches never shared one: here a second live Batch on the same ``results_dir`` numbers
its jobs after the first one's, unless the job under that name is the same job.
"""

from __future__ import annotations

import json
from pathlib import Path

from batchata_df.compat import Batch


def _posts(emu, suffix: str) -> list[dict[str, object]]:
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith(suffix)]


def _batch(tmp_path: Path, temperature: float, *prompts: str) -> Batch:
    batch = Batch(results_dir=tmp_path / "out").set_default_params(
        model="gpt-4.1-mini", max_tokens=2000, temperature=temperature
    )
    for prompt in prompts:
        batch.add_job(prompt=f"{prompt} [[emulator:truncate]]")
    return batch


def _saved(tmp_path: Path, job_id: str) -> tuple[str, str]:
    """The answer text of ``job_id``'s result file and of its raw provider line."""
    out = tmp_path / "out"
    saved = json.loads((out / f"{job_id}.json").read_text())
    assert saved["job_id"] == job_id
    raw = json.loads((out / "raw_files" / "responses" / f"{job_id}_raw.json").read_text())
    return saved["raw_response"], raw["response"]["body"]["choices"][0]["message"]["content"]


def test_a_second_batch_on_one_results_dir_keeps_the_first_one_s_files(emu, tmp_path):
    """A (two jobs) runs, then B (one job, other parameters) on the same results_dir: B's
    job is ``job-000002``, and A's files still hold A's answers after B ran."""
    a = _batch(tmp_path, 0.0, "alpha", "beta")
    b = _batch(tmp_path, 0.5, "gamma")
    a_run = a.run()
    b_run = b.run()
    for job_id, word in (("job-000000", "alpha"), ("job-000001", "beta")):
        text, raw = _saved(tmp_path, job_id)
        assert f"'{word}" in text and f"'{word}" in raw, (job_id, text)
    assert [r.job_id for r in a_run.results()["failed"]] == ["job-000000", "job-000001"]
    (b_result,) = b_run.results()["failed"]
    assert b_result.job_id == "job-000002"
    assert "'gamma" in str(b_result.raw_response)
    text, raw = _saved(tmp_path, "job-000002")
    assert "'gamma" in text and "'gamma" in raw
    assert sorted(p.name for p in (tmp_path / "out").glob("job-*.json")) == [
        "job-000000.json", "job-000001.json", "job-000002.json"]  # fmt: skip
    assert len(_posts(emu, "/batches")) == 2


def test_interleaved_add_job_of_two_batches_gives_each_its_own_names(emu, tmp_path):
    """Jobs added in turn to A and B (one loop): every name is taken once, in the order
    added, and each file holds its own job's answer."""
    a = _batch(tmp_path, 0.0)
    b = _batch(tmp_path, 0.5)
    for word in ("one", "two"):
        a.add_job(prompt=f"a-{word} [[emulator:truncate]]")
        b.add_job(prompt=f"b-{word} [[emulator:truncate]]")
    b.run()
    a.run()
    named = {
        r.job_id: str(r.raw_response)
        for run in (a.run(), b.run()) for r in run.results()["failed"]
    }  # fmt: skip
    assert sorted(named) == ["job-000000", "job-000001", "job-000002", "job-000003"]
    expect = {"job-000000": "a-one", "job-000001": "b-one", "job-000002": "a-two",
              "job-000003": "b-two"}  # fmt: skip
    for job_id, word in expect.items():
        assert f"'{word}" in named[job_id]
        assert f"'{word}" in _saved(tmp_path, job_id)[0]


def test_a_batch_built_again_with_the_same_jobs_keeps_their_names(emu, tmp_path):
    """A notebook cell run again builds the same Batch while the earlier one is still
    referenced: the same jobs keep their names (the same answers, from the same
    checkpoint: nothing sent again)."""
    first = _batch(tmp_path, 0.0, "alpha", "beta")
    first.run()
    again = _batch(tmp_path, 0.0, "alpha", "beta")
    results = again.run().results()["failed"]
    assert [r.job_id for r in results] == ["job-000000", "job-000001"]
    assert "'alpha" in _saved(tmp_path, "job-000000")[0]
    assert len(_posts(emu, "/batches")) == 1
    assert len(first) == 2


def test_a_batch_alone_on_a_results_dir_keeps_its_names_after_another_is_gone(emu, tmp_path):
    """Only a live Batch holds its names: the script's next Batch (the earlier one dropped,
    as in a script run again) writes ``job-000000.json`` again, as it always did."""
    import gc

    _batch(tmp_path, 0.0, "alpha").run()
    gc.collect()
    (result,) = _batch(tmp_path, 0.5, "gamma").run().results()["failed"]
    assert result.job_id == "job-000000"
    assert "'gamma" in _saved(tmp_path, "job-000000")[0]


def test_the_same_job_on_another_state_folder_gets_its_own_name(emu, tmp_path):
    """A and B ask the same job on one ``results_dir`` but checkpoint in folders of their
    own (``set_state(file=...)``): each sends and pays for it, so the answers are two,
    and B's must not replace A's file: B's job is ``job-000001``."""
    a = _batch(tmp_path, 0.0).set_state(file=tmp_path / "a.json")
    a.add_job(prompt="alpha [[emulator:truncate]]")
    b = _batch(tmp_path, 0.0).set_state(file=tmp_path / "b.json")
    b.add_job(prompt="alpha [[emulator:truncate]]")
    (a_result,) = a.run().results()["failed"]
    (b_result,) = b.run().results()["failed"]
    assert len(_posts(emu, "/batches")) == 2  # one batch each
    assert a_result.batch_id != b_result.batch_id
    assert (a_result.job_id, b_result.job_id) == ("job-000000", "job-000001")
    out = tmp_path / "out"
    assert json.loads((out / "job-000000.json").read_text())["batch_id"] == a_result.batch_id
    assert json.loads((out / "job-000001.json").read_text())["batch_id"] == b_result.batch_id
