"""Raw answers are kept (checkpoint, ``_raw``, ``jobs.raw``) and re-validated by ``reparse``
without sending anything; the ``df.llm`` / ``lf.llm`` namespace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

import polars as pl
import pytest
from pydantic import BaseModel

import batchata_df
from batchata_df import ConfigError, StateMismatchError, batch_llm, reparse


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    rating: int


class FixedReview(BaseModel):
    """The schema after the fix: the model sometimes leaves ``sentiment`` out."""

    sentiment: Literal["positive", "negative", "neutral"] | None = None
    rating: int


TEXTS = [
    "fine",
    "[[emulator:invalid]] no sentiment",
    "[[emulator:truncate]] cut off",
    "[[emulator:refusal]] no",
    "[[emulator:error]] boom",
]


def provider_calls(emu) -> list[dict]:
    return [e for e in emu.log() if not e["path"].startswith("/_emulator")]


def test_raw_answers_are_kept_for_every_outcome_openai(emu, tmp_path):
    df = pl.DataFrame({"text": TEXTS})
    out = df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}",
                  state=tmp_path / "s", keep_raw=True)
    assert out.columns[-1] == "_raw"
    assert out["_status"].to_list() == ["completed", "failed", "failed", "failed", "failed"]
    raw = out["_raw"].to_list()
    assert Review.model_validate_json(raw[0]).rating == out["rating"][0]
    invalid = json.loads(raw[1])  # what the model wrote: valid JSON, no sentiment
    assert "sentiment" not in invalid and isinstance(invalid["rating"], int)
    assert out["_error"][1].startswith("schema_validation:")
    assert raw[2] and out["_error"][2].startswith("truncated:")
    with pytest.raises(ValueError):
        json.loads(raw[2])  # the cut-off text itself
    assert raw[3] and out["_error"][3] == f"refusal: {raw[3]}"  # the refusal's own text
    assert raw[4] is None  # a provider error returned no text
    # Always reachable through SQL, whether or not keep_raw was set.
    jobs = batchata_df.sql(
        "select job_id, status, answer, raw from jobs", state=tmp_path / "s"
    )
    by_id = {r["job_id"]: r for r in jobs.iter_rows(named=True)}
    for i, job_id in enumerate(out["_job_id"].to_list()):
        assert by_id[job_id]["raw"] == raw[i]
    assert by_id[out["_job_id"][0]]["answer"] is not None
    assert all(by_id[j]["answer"] is None for j in out["_job_id"].to_list()[1:])


@pytest.mark.parametrize("model", ["claude-haiku-4-5", "gemini-2.5-flash"])
def test_raw_answers_are_kept_anthropic_gemini(emu, tmp_path, model):
    df = pl.DataFrame({"text": TEXTS[:3]})
    out = df.pipe(batch_llm, schema=Review, model=model, prompt="{text}", keep_raw=True)
    assert out["_status"].to_list() == ["completed", "failed", "failed"]
    assert "sentiment" not in json.loads(out["_raw"][1])
    assert out["_raw"][2]  # the truncated text
    assert out["_raw"].null_count() == 0


def test_no_raw_column_unless_asked(emu):
    out = pl.DataFrame({"text": ["a"]}).pipe(
        batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}"
    )
    assert "_raw" not in out.columns


def test_keep_raw_collision_is_an_error_before_sending(emu):
    with pytest.raises(batchata_df.ColumnError, match="_raw"):
        pl.DataFrame({"text": ["a"], "_raw": ["x"]}).pipe(
            batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}", keep_raw=True
        )
    assert emu.log() == []


def test_reparse_completes_fixed_rows_without_sending_or_billing(emu, tmp_path):
    state = tmp_path / "s"
    df = pl.DataFrame({"text": TEXTS[:4]})
    args = {"model": "gpt-4.1-mini", "prompt": "{text}", "state": state}
    first = df.pipe(batch_llm, schema=Review, **args)
    assert first["_status"].to_list() == ["completed", "failed", "failed", "failed"]
    paid = batchata_df.sql("select sum(cost_usd) as usd from jobs", state=state)["usd"][0]
    calls = len(provider_calls(emu))

    fixed = df.pipe(reparse, schema=FixedReview, keep_raw=True, **args)
    assert len(provider_calls(emu)) == calls  # 0 requests: nothing sent, nothing polled
    assert fixed["_status"].to_list() == ["completed", "completed", "failed", "failed"]
    assert fixed["sentiment"][1] is None and fixed["rating"][1] == json.loads(
        fixed["_raw"][1]
    )["rating"]
    assert fixed["sentiment"][0] == first["sentiment"][0]
    assert fixed["_error"][2].startswith("truncated:")  # still cut off: same reason
    assert fixed["_error"][3].startswith("refusal:")  # nothing to re-read
    assert fixed["_cost_usd"].to_list() == first["_cost_usd"].to_list()  # billed once
    again = batchata_df.sql("select sum(cost_usd) as usd from jobs", state=state)["usd"][0]
    assert again == pytest.approx(paid)

    # The folder now belongs to the fixed schema: resuming with it sends nothing ...
    resumed = df.pipe(batch_llm, schema=FixedReview, **args)
    assert len(provider_calls(emu)) == calls
    assert resumed["_status"].to_list() == fixed["_status"].to_list()
    assert resumed["_job_id"].to_list() == first["_job_id"].to_list()
    # ... a new row is sent on its own, and the old schema is refused.
    more = pl.concat([df, pl.DataFrame({"text": ["new"]})]).pipe(
        batch_llm, schema=FixedReview, **args
    )
    assert more["_status"].to_list()[-1] == "completed"
    posts = [e for e in provider_calls(emu) if e["method"] == "POST"
             and e["path"].endswith("/batches")]
    assert len(posts) == 2
    with pytest.raises(StateMismatchError, match="schema"):
        df.pipe(batch_llm, schema=Review, **args)


def test_reparse_takes_the_original_call_s_keyword_arguments(emu, tmp_path):
    """The docs say: call reparse "with the arguments of the original call"."""
    df = pl.DataFrame({"text": TEXTS[:2]})
    call = {"model": "gpt-4.1-mini", "prompt": "{text}", "state": tmp_path / "s",
            "progress": False, "max_cost_usd": 5.0, "items_per_batch": 10, "mode": "batch",
            "max_parallel_batches": 2, "prompt_caching": True}  # fmt: skip
    first = df.pipe(batch_llm, schema=Review, **call)
    calls = len(provider_calls(emu))
    fixed = df.pipe(reparse, schema=FixedReview, **call)
    assert len(provider_calls(emu)) == calls
    assert fixed["_status"].to_list() == ["completed", "completed"]
    assert fixed["_cost_usd"].to_list() == first["_cost_usd"].to_list()
    with pytest.raises(ConfigError, match="write_parquet"):
        df.pipe(reparse, schema=FixedReview, sink=tmp_path / "o.parquet", **call)
    with pytest.raises(TypeError, match="max_cost"):
        df.pipe(reparse, schema=FixedReview, max_cost=1.0, **call)
    # As batch_llm: df by keyword, and keep_responses gives the _response column.
    kept = reparse(df=df, schema=FixedReview, keep_responses=True, **call)
    assert kept.columns[-1] == "_response"  # null here: the first call kept no responses
    assert kept["_status"].to_list() == ["completed", "completed"]


def test_reparse_needs_the_same_call(emu, tmp_path):
    state = tmp_path / "s"
    df = pl.DataFrame({"text": ["a"]})
    df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}", state=state)
    with pytest.raises(StateMismatchError, match="prompt"):
        df.pipe(reparse, schema=FixedReview, model="gpt-4.1-mini", prompt="Other: {text}",
                state=state)
    with pytest.raises(batchata_df.StateError, match="manifest"):
        df.pipe(reparse, schema=FixedReview, model="gpt-4.1-mini", prompt="{text}",
                state=tmp_path / "nothing-here")


def test_parts_written_before_raw_existed_still_read(emu, tmp_path):
    state = tmp_path / "s"
    df = pl.DataFrame({"text": ["a", "b"]})
    args = {"schema": Review, "model": "gpt-4.1-mini", "prompt": "{text}", "state": state}
    first = df.pipe(batch_llm, **args)
    for part in Path(state, "jobs").glob("part-*.parquet"):  # as an older version wrote them
        pl.read_parquet(part).drop("raw").write_parquet(part)
    manifest = json.loads((state / "manifest.json").read_text())  # a version 1 folder
    (state / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    again = df.pipe(batch_llm, keep_raw=True, **args)
    assert again["_status"].to_list() == ["completed", "completed"]
    assert again["rating"].to_list() == first["rating"].to_list()
    assert again["_raw"].to_list() == [None, None]
    raw = batchata_df.sql("select raw from jobs", state=state)["raw"].to_list()
    assert raw == [None, None]


def test_namespace_forwards_to_batch_llm(emu, tmp_path):
    df = pl.DataFrame({"text": ["good", "bad"]})
    args = {"schema": Review, "model": "gpt-4.1-mini", "prompt": "{text}"}
    piped = df.pipe(batch_llm, **args).drop("_batch_id")  # a new provider batch each call
    via = df.llm.batch(**args)
    assert via.drop("_batch_id").equals(piped)
    lazy = df.lazy().llm.batch(**args)
    assert isinstance(lazy, pl.LazyFrame)
    assert lazy.collect().drop("_batch_id").equals(piped)
    assert len([e for e in emu.log() if e["method"] == "POST"
                and e["path"].endswith("/batches")]) == 3
    assert batchata_df.batch_llm.__doc__ == pl.DataFrame.llm.batch.__doc__  # type: ignore[attr-defined]


def test_namespace_reparse(emu, tmp_path):
    df = pl.DataFrame({"text": TEXTS[:2]})
    args = {"model": "gpt-4.1-mini", "prompt": "{text}", "state": tmp_path / "s"}
    df.llm.batch(schema=Review, **args)
    fixed = df.lazy().llm.reparse(schema=FixedReview, **args).collect()
    assert fixed["_status"].to_list() == ["completed", "completed"]


def test_namespace_is_registered_on_import():
    code = (
        "import polars as pl, sys; assert not hasattr(pl.DataFrame, 'llm'); "
        "import batchata_df; print(hasattr(pl.DataFrame, 'llm'), hasattr(pl.LazyFrame, 'llm'),"
        " 'openai' in sys.modules, 'duckdb' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "False", "False"]


def test_reparse_with_files_finds_the_same_jobs(emu, tmp_path):
    """File contents are part of the job id: reparse re-reads them to find the jobs."""
    notes = []
    for i, text in enumerate(["a calm note", "[[emulator:invalid]] a loud note"]):
        path = tmp_path / f"note{i}.txt"
        path.write_text(text)
        notes.append(str(path))
    df = pl.DataFrame({"doc": notes})
    args = {"model": "claude-haiku-4-5", "prompt": "Rate the note", "files": "doc",
            "state": tmp_path / "s"}
    first = df.pipe(batch_llm, schema=Review, **args)
    assert first["_status"].to_list() == ["completed", "failed"]
    calls = len(provider_calls(emu))
    fixed = df.pipe(reparse, schema=FixedReview, **args)
    assert len(provider_calls(emu)) == calls
    assert fixed["_status"].to_list() == ["completed", "completed"]
    assert fixed["_job_id"].to_list() == first["_job_id"].to_list()


def test_reparsed_folder_keeps_its_job_ids_through_a_rebuilt_manifest(emu, tmp_path):
    state = tmp_path / "s"
    df = pl.DataFrame({"text": TEXTS[:2]})
    args = {"model": "gpt-4.1-mini", "prompt": "{text}", "state": state}
    df.pipe(batch_llm, schema=Review, **args)
    df.pipe(reparse, schema=FixedReview, **args)
    manifest = json.loads((state / "manifest.json").read_text())
    assert manifest["fingerprint"]["job_salt"]
    (state / "manifest.json").unlink()  # lost: repair rebuilds it from the parts
    batchata_df.repair(state, apply=True)
    assert json.loads((state / "manifest.json").read_text())["fingerprint"] == (
        manifest["fingerprint"]
    )
    calls = len(provider_calls(emu))
    again = df.pipe(batch_llm, schema=FixedReview, **args)
    assert again["_status"].to_list() == ["completed", "completed"]
    assert len([e for e in provider_calls(emu)[calls:] if e["method"] == "POST"]) == 0
