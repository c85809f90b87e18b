"""A state folder never loses its identity; damage is a StateError; repair pays nothing twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import BaseModel

from batchata_df import batch_llm, doctor, repair
from batchata_df.errors import StateError, StateMismatchError

MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5",
          "gemini": "gemini-2.5-flash"}


class A(BaseModel):
    label: str
    n: int


def creates(emu):
    paths = ("/openai/v1/batches", "/messages/batches", ":batchGenerateContent")
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith(paths)
            and e["status"] == 200]


def frame(n=6):
    return pl.DataFrame({"t": [f"row {i}" for i in range(n)]})


def kw(state, model="gpt-4.1-mini", **more):
    return {"schema": A, "model": model, "prompt": "{t}", "state": state,
            "items_per_batch": 2, **more}


CRASH = textwrap.dedent(
    """
    import sys
    import polars as pl
    from pydantic import BaseModel
    from batchata_df import batch_llm

    class A(BaseModel):
        label: str
        n: int

    df = pl.DataFrame({"t": [f"row {i}" for i in range(6)]})
    df.pipe(batch_llm, schema=A, model=sys.argv[2], prompt="{t}", state=sys.argv[1],
            items_per_batch=2)
    """
)


def crash_after_first_create(tmp_path, state, model):
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    child = subprocess.run(
        [sys.executable, str(script), str(state), model], capture_output=True, text=True,
        env={**os.environ, "BATCHATA_DF_FAILPOINT": "after_submit"}, timeout=240,
    )
    assert child.returncode != 0


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_a_deleted_manifest_is_refused_then_rebuilt_and_nothing_is_paid_twice(
    emu, tmp_path, provider
):
    # The case: a crash between "batch created" and our checkpoint, then the
    # manifest is gone. A new run id would make the orphan lookup miss the batch.
    model = MODELS[provider]
    state = tmp_path / "s"
    crash_after_first_create(tmp_path, state, model)
    assert len(creates(emu)) == 1
    run_id = json.loads((state / "manifest.json").read_text())["run_id"]
    (state / "manifest.json").unlink()

    with pytest.raises(StateError, match=r"no manifest\.json.*batchata-df repair"):
        frame().pipe(batch_llm, **kw(state, model))
    assert not (state / "manifest.json").exists()  # not silently recreated
    with pytest.raises(StateError, match="no manifest"):
        frame().pipe(batch_llm, dry_run=True, **kw(state, model))

    plan = repair(state)
    assert plan.manifest is not None and plan.manifest.run_id == run_id
    assert f"will: write manifest.json with run id {run_id}" in str(plan)
    assert not (state / "manifest.json").exists()  # showing changes nothing

    done = repair(state, apply=True)
    assert done.applied and json.loads((state / "manifest.json").read_text())["run_id"] == run_id
    out = frame().pipe(batch_llm, **kw(state, model))
    assert out["_status"].to_list() == ["completed"] * 6
    assert len(creates(emu)) == 3  # the orphan was found: 1 + 2, not 1 + 3
    # The settings check is back: another prompt is refused.
    with pytest.raises(StateMismatchError):
        frame().pipe(batch_llm, **{**kw(state, model), "prompt": "other {t}"})


def _write(path, content):
    path.write_bytes(content)


DAMAGE = {
    "truncated part": lambda p: _write(p, p.read_bytes()[: len(p.read_bytes()) // 2]),
    "garbage part": lambda p: _write(p, b"not parquet at all" * 10),
    "empty part": lambda p: _write(p, b""),
    "wrong schema": lambda p: pl.DataFrame({"a": [1, 2]}).write_parquet(p),
    "wrong dtype": lambda p: pl.read_parquet(p).with_columns(pl.col("seq").cast(pl.String))
    .write_parquet(p),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_part_is_a_state_error_naming_the_file_and_the_fix(emu, tmp_path, kind):
    state = tmp_path / "s"
    frame(2).pipe(batch_llm, **kw(state))
    n = len(emu.log())
    victim = sorted((state / "jobs").glob("part-*.parquet"))[0]
    DAMAGE[kind](victim)
    for call in (lambda: frame(2).pipe(batch_llm, **kw(state)),
                 lambda: frame(2).pipe(batch_llm, dry_run=True, **kw(state))):
        with pytest.raises(StateError) as caught:
            call()
        assert str(victim) in str(caught.value)
        assert "batchata-df repair" in str(caught.value)
    assert len(emu.log()) == n  # refused before any request
    report = doctor(state)
    assert [d.path for d in report.damaged] == [victim]


@pytest.mark.parametrize(
    ("kind", "content", "problem"),
    [
        ("a JSON list", b"[1, 2]", "a JSON list"),
        ("no run_id", b'{"format_version": 1, "fingerprint": {}}', "no run_id"),
        ("garbage", b"\x00\x01{{", "not a readable"),
        ("bad fingerprint", b'{"format_version": 1, "run_id": "x", "fingerprint": [1]}',
         "unreadable fingerprint"),
    ],
)
def test_a_damaged_manifest_is_a_state_error_and_repair_rebuilds_it(
    emu, tmp_path, kind, content, problem
):
    state = tmp_path / "s"
    first = frame(2).pipe(batch_llm, **kw(state))
    run_id = json.loads((state / "manifest.json").read_text())["run_id"]
    (state / "manifest.json").write_bytes(content)
    n = len(emu.log())
    with pytest.raises(StateError, match=problem) as caught:
        frame(2).pipe(batch_llm, **kw(state))
    assert "manifest.json" in str(caught.value) and "repair" in str(caught.value)
    assert len(emu.log()) == n
    repair(state, apply=True)
    assert json.loads((state / "manifest.json").read_text())["run_id"] == run_id
    assert list((state / "damaged").rglob("manifest.json"))  # kept, not deleted
    again = frame(2).pipe(batch_llm, **kw(state))
    assert_frame_equal(again, first)
    assert len(creates(emu)) == 1


def _parts_of(state, table, batch_key, statuses):
    out = []
    for part in sorted((state / table).glob("part-*.parquet")):
        events = pl.read_parquet(part)
        if ((events["batch_key"] == batch_key) & events["status"].is_in(statuses)).any():
            out.append(part)
    return out


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_damaged_job_parts_are_moved_aside_and_recovered_from_the_provider(
    emu, tmp_path, provider
):
    model = MODELS[provider]
    state = tmp_path / "s"
    first = frame().pipe(batch_llm, **kw(state, model))
    assert len(creates(emu)) == 3
    key = pl.read_parquet(state / "batches" / "*.parquet")["batch_key"].unique().sort()[1]
    # Lose everything the folder knew about one batch's jobs: who was in it, what came back.
    victims = _parts_of(state, "jobs", key, ["assigned", "completed", "failed"])
    assert len(victims) >= 2
    for part in victims:
        DAMAGE["truncated part"](part)
    with pytest.raises(StateError, match="damaged event part"):
        frame().pipe(batch_llm, **kw(state, model))

    shown = repair(state)
    assert not shown.applied and all(p.exists() for p in victims)
    assert shown.to_list == {key: 2} and shown.recovered == {key: 2}
    assert shown.reopened == [key]
    text = str(shown)
    assert "will: move aside" in text and f"batch {key}: restore 2 job(s)" in text

    done = repair(state, apply=True)
    assert done.applied
    assert not any(p.exists() for p in victims)
    kept = sorted((state / "damaged").rglob("part-*.parquet"))
    assert [p.name for p in kept] == sorted(p.name for p in victims)  # moved, not deleted
    assert doctor(state).healthy

    out = frame().pipe(batch_llm, **kw(state, model))
    assert len(creates(emu)) == 3  # nothing sent again
    assert_frame_equal(out, first)  # same answers, same costs


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_a_lost_batch_part_is_restored_as_an_intent_and_the_batch_found(
    emu, tmp_path, provider
):
    model = MODELS[provider]
    emu.configure(latency=2.0)
    state = tmp_path / "s"
    frame().pipe(batch_llm, wait=False, **kw(state, model))
    assert len(creates(emu)) == 3
    key = pl.read_parquet(state / "batches" / "*.parquet")["batch_key"].unique().sort()[0]
    for part in _parts_of(state, "batches", key, ["intent", "submitted"]):
        DAMAGE["garbage part"](part)
    shown = repair(state)
    assert "restore its intent" in shown.intents[key]
    repair(state, apply=True)
    emu.advance(5)
    out = frame().pipe(batch_llm, **kw(state, model))
    assert out["_status"].to_list() == ["completed"] * 6
    assert len(creates(emu)) == 3  # the batch was looked up and re-attached


def test_parts_from_before_run_ids_were_recorded_take_the_run_id_from_the_provider(
    emu, tmp_path
):
    state = tmp_path / "s"
    crash_after_first_create(tmp_path, state, "gpt-4.1-mini")
    emu.clear_log()
    # Let the crashed batch be found by a run that records its id, then forget everything
    # the parts say about the run, as parts written by older versions.
    run_id = json.loads((state / "manifest.json").read_text())["run_id"]
    frame().pipe(batch_llm, wait=False, **kw(state))
    for part in sorted(state.glob("*/part-*.parquet")):
        pl.read_parquet(part).write_parquet(part)  # no key-value metadata
    (state / "manifest.json").unlink()
    shown = repair(state)
    assert shown.manifest is not None and shown.manifest.run_id == run_id
    assert "read from the provider's batch" in shown.run_id_source
    repair(state, apply=True)
    out = frame().pipe(batch_llm, **kw(state))  # states the settings again
    assert out["_status"].to_list() == ["completed"] * 6
    with pytest.raises(StateMismatchError):
        frame().pipe(batch_llm, **{**kw(state), "prompt": "other {t}"})


def test_doctor_and_repair_on_the_command_line(emu, tmp_path):
    state = tmp_path / "s"
    frame(2).pipe(batch_llm, **kw(state))
    run_id = json.loads((state / "manifest.json").read_text())["run_id"]
    (state / "manifest.json").unlink()

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "batchata_df.cli", *args],
                              capture_output=True, text=True, timeout=240)

    r = cli("doctor", str(state))
    assert r.returncode == 1 and "manifest.json is missing" in r.stdout
    r = cli("repair", str(state))
    assert r.returncode == 1 and f"will: write manifest.json with run id {run_id}" in r.stdout
    assert "--apply" in r.stdout and not (state / "manifest.json").exists()
    r = cli("repair", str(state), "--apply")
    assert r.returncode == 0, r.stderr
    assert f"done: write manifest.json with run id {run_id}" in r.stdout
    r = cli("doctor", str(state))
    assert r.returncode == 0 and "healthy" in r.stdout


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_an_unresolved_intent_that_lost_its_jobs_is_found_by_repair(emu, tmp_path, provider):
    # A crash between "created" and our checkpoint, then the part listing the batch's jobs
    # is damaged: the engine would find the batch but not know its jobs, and send them again.
    model = MODELS[provider]
    state = tmp_path / "s"
    crash_after_first_create(tmp_path, state, model)
    assert len(creates(emu)) == 1
    key = pl.read_parquet(state / "batches" / "*.parquet")["batch_key"][0]
    (victim,) = _parts_of(state, "jobs", key, ["assigned"])
    DAMAGE["garbage part"](victim)
    shown = repair(state)
    pbid = creates(emu)[0]  # the only batch the provider holds
    assert list(shown.found) == [key]
    assert shown.recovered == {key: 2}
    assert f"batch {key}: record {shown.found[key]}, found at the provider" in str(shown)
    repair(state, apply=True)
    out = frame().pipe(batch_llm, **kw(state, model))
    assert out["_status"].to_list() == ["completed"] * 6
    assert len(creates(emu)) == 3, pbid  # the found batch was not sent again


def test_reading_a_damaged_folder_is_a_state_error_too(emu, tmp_path):
    from batchata_df import sql
    from batchata_df.state import spent_usd

    state = tmp_path / "s"
    frame(2).pipe(batch_llm, **kw(state))
    victim = sorted((state / "jobs").glob("part-*.parquet"))[-1]
    DAMAGE["truncated part"](victim)
    for read in (lambda: sql("select count(*) from jobs", state), lambda: spent_usd(state)):
        with pytest.raises(StateError, match="batchata-df repair") as caught:
            read()
        assert str(victim) in str(caught.value)
