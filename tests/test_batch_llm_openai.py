"""batch_llm end to end through the official openai SDK against the emulator over HTTP."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Literal, Optional

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import (
    ColumnError,
    ConfigError,
    CredentialsError,
    ModelError,
    SchemaError,
    StateMismatchError,
    batch_llm,
)
from batchata_df.frame import META_COLUMNS


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    city: str
    zip_code: Optional[str]
    since: dt.date


class Everything(BaseModel):
    name: str
    count: int
    score: float
    ok: bool
    mood: Literal["positive", "negative", "neutral"]
    color: Color
    maybe: Optional[int]
    tags: list[str]
    address: Address
    history: list[Address]
    day: dt.date
    at: dt.datetime
    price: decimal.Decimal


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    rating: int
    summary: str


def posts(emu, suffix="/batches"):
    return [
        e for e in emu.log() if e["method"] == "POST" and e["path"].endswith(suffix)
    ]


def frame(n=5):
    return pl.DataFrame({"id": list(range(n)), "text": [f"review number {i}" for i in range(n)]})


def test_every_field_type_round_trips(emu, tmp_path):
    out = frame(4).pipe(
        batch_llm, schema=Everything, model="gpt-4.1-mini", prompt="Describe {text}",
        state=tmp_path / "s",
    )
    expected = {
        "name": pl.String, "count": pl.Int64, "score": pl.Float64, "ok": pl.Boolean,
        "mood": pl.Enum(["positive", "negative", "neutral"]),
        "color": pl.Enum(["red", "blue"]), "maybe": pl.Int64, "tags": pl.List(pl.String),
        "address": pl.Struct({"city": pl.String, "zip_code": pl.String, "since": pl.Date}),
        "history": pl.List(
            pl.Struct({"city": pl.String, "zip_code": pl.String, "since": pl.Date})
        ),
        "day": pl.Date, "at": pl.Datetime("us", "UTC"), "price": pl.Decimal(38, 9),
    }
    for name, dtype in expected.items():
        assert out.schema[name] == dtype, name
    assert out.columns == ["id", "text", *expected, *META_COLUMNS]
    assert out["_status"].to_list() == ["completed"] * 4
    assert out["_error"].null_count() == 4
    # Every answer re-validates against the model.
    for row in out.select(list(expected)).to_dicts():
        Everything.model_validate(row)
    assert out["name"].null_count() == 0
    assert (out["_input_tokens"] > 0).all() and (out["_output_tokens"] > 0).all()
    assert out["_batch_id"].str.starts_with("batch_").all()
    # gpt-4.1-mini batch price from genai-prices: $0.20 in / $0.80 out per 1M tokens.
    expect_cost = (out["_input_tokens"] * 0.2 + out["_output_tokens"] * 0.8) / 1e6
    assert (out["_cost_usd"] - expect_cost).abs().max() < 1e-12


def test_text_answers_without_schema(emu):
    out = frame(3).pipe(batch_llm, model="gpt-4.1-mini", prompt="Say something about {text}")
    assert out.columns == ["id", "text", "response", *META_COLUMNS]
    assert out.schema["response"] == pl.String
    assert out["response"].str.len_chars().min() > 0
    assert out["_status"].to_list() == ["completed"] * 3


def test_row_order_duplicates_and_cost_on_first_row(emu):
    df = pl.DataFrame({"text": ["b", "a", "b", "c", "a"]})
    out = df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}")
    assert out["text"].to_list() == ["b", "a", "b", "c", "a"]
    assert out["_job_id"][0] == out["_job_id"][2]
    assert out["summary"][0] == out["summary"][2]
    assert out["_cost_usd"][0] > 0 and out["_cost_usd"][2] == 0
    # Three distinct requests were sent, in one batch.
    assert len(posts(emu)) == 1
    lines = [e for e in emu.log() if e["path"].endswith("/files") and e["method"] == "POST"]
    assert len(lines) == 1


def test_invalid_and_errored_rows_are_data_not_exceptions(emu):
    df = pl.DataFrame(
        {"text": ["fine", "[[emulator:invalid]]", "[[emulator:error]]", "[[emulator:truncate]]"]}
    )
    out = df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}")
    assert out["_status"].to_list() == ["completed", "failed", "failed", "failed"]
    assert out["_error"][0] is None
    assert out["_error"][1].startswith("schema_validation:")
    assert out["_error"][2] is not None
    assert out["_error"][3].startswith("truncated:")
    assert out["rating"][1] is None and out["rating"][0] is not None


def test_null_prompt_value_fails_that_row_without_sending_it(emu):
    df = pl.DataFrame({"text": ["x", None]})
    out = df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}")
    assert out["_status"].to_list() == ["completed", "failed"]
    assert "null" in out["_error"][1]
    assert out["_cost_usd"][1] == 0


def test_prompt_templates_expressions_system_and_params(emu, tmp_path):
    df = pl.DataFrame({"a": ["x"], "b": [1]})
    out = df.pipe(
        batch_llm,
        model="gpt-4.1-mini",
        prompt=pl.format("{} / {}", pl.col("a"), pl.col("b")),
        system="Be brief.",
        params={"temperature": 0.0, "max_tokens": 64},
    )
    assert out["_status"][0] == "completed"
    # {{ escapes a brace; the rendered prompt is what the job id hashes.
    out2 = df.pipe(batch_llm, model="gpt-4.1-mini", prompt="{{literal}} {a}")
    assert out2["_status"][0] == "completed"
    with pytest.raises(ConfigError, match="temprature.*did you mean 'temperature'"):
        df.pipe(batch_llm, model="gpt-4.1-mini", prompt="{a}", params={"temprature": 0})


def test_caller_mistakes_fail_before_any_request(emu, monkeypatch):
    df = pl.DataFrame({"review_text": ["x"]})
    with pytest.raises(ColumnError, match="did you mean 'review_text'"):
        df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{review_txt}")
    with pytest.raises(ColumnError, match="rating"):
        df.with_columns(rating=1).pipe(
            batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{review_text}"
        )
    with pytest.raises(ColumnError, match="_status"):
        df.with_columns(_status=1).pipe(batch_llm, model="gpt-4.1-mini", prompt="{review_text}")
    with pytest.raises(ModelError, match="openai:"):
        df.pipe(batch_llm, model="llama-3", prompt="{review_text}")
    with pytest.raises(SchemaError, match="dict"):
        class Bad(BaseModel):
            d: dict[str, int]

        df.pipe(batch_llm, schema=Bad, model="gpt-4.1-mini", prompt="{review_text}")
    with pytest.raises(ConfigError, match="state="):
        df.pipe(batch_llm, model="gpt-4.1-mini", prompt="{review_text}", wait=False)
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.chdir(Path(__file__).parent)  # no .env here
    with pytest.raises(CredentialsError, match="OPENAI_API_KEY"):
        df.pipe(batch_llm, model="gpt-4.1-mini", prompt="{review_text}")
    assert emu.log() == []


def test_resume_sends_nothing_again(emu, tmp_path):
    state = tmp_path / "run"
    first = frame(6).pipe(
        batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}", state=state,
        items_per_batch=4,
    )
    assert len(posts(emu)) == 2
    emu.reset()
    again = frame(6).pipe(
        batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}", state=state,
        items_per_batch=4,
    )
    assert emu.log() == []  # finished batches are not even polled again
    assert again.equals(first)
    # New rows: only they are sent.
    more = frame(8).pipe(
        batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}", state=state,
        items_per_batch=4,
    )
    assert len(posts(emu)) == 1
    assert more.head(6).equals(first)
    assert (Path(state) / "manifest.json").is_file()
    assert list((Path(state) / "jobs").glob("*.parquet"))


def test_state_written_for_another_run_is_refused(emu, tmp_path):
    state = tmp_path / "run"
    frame(2).pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}", state=state)
    for kwargs in (
        {"model": "gpt-4.1", "prompt": "{text}"},
        {"model": "gpt-4.1-mini", "prompt": "Other: {text}"},
        {"model": "gpt-4.1-mini", "prompt": "{text}", "params": {"temperature": 1.0}},
        {"model": "gpt-4.1-mini", "prompt": "{text}", "schema": None},
    ):
        kwargs.setdefault("schema", Review)
        with pytest.raises(StateMismatchError, match="new state folder") as caught:
            frame(2).pipe(batch_llm, state=state, **kwargs)
        # Deleting a folder of paid answers means paying for them again: said, not advised.
        assert "delete this one" not in str(caught.value)
        assert "deleting it throws away the answers already paid for" in str(caught.value)


def test_wait_false_submits_then_collects(emu, tmp_path):
    emu.configure(latency=1000.0)
    state = tmp_path / "later"
    out = frame(3).pipe(
        batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}", state=state, wait=False
    )
    assert out["_status"].to_list() == ["pending"] * 3
    assert out["rating"].null_count() == 3
    assert out["_batch_id"].null_count() == 0
    emu.advance(1000.0)  # the batch ends on the emulator's clock, not after a sleep
    done = frame(3).pipe(
        batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}", state=state
    )
    assert done["_status"].to_list() == ["completed"] * 3
    assert len(posts(emu)) == 1


def test_split_by_count_and_parallel_limit(emu):
    out = frame(10).pipe(
        batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}",
        items_per_batch=3, max_parallel_batches=2,
    )
    assert out["_status"].to_list() == ["completed"] * 10
    assert out["_batch_id"].n_unique() == 4
    assert out.group_by("_batch_id").len()["len"].sort().to_list() == [1, 3, 3, 3]


def test_time_limit_cancels_and_ends_rows_cancelled(emu, engine_clock):
    emu.configure(latency=30)
    out = frame(6).pipe(
        batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}",
        items_per_batch=3, max_parallel_batches=1, time_limit=1.0,
    )
    # Not waited out: the batch sent would take 30 s, the one after it was never sent.
    assert set(out["_status"].to_list()) <= {"completed", "cancelled"}
    assert (out["_status"] == "cancelled").sum() >= 3
    assert out.filter(pl.col("_status") == "cancelled")["_error"].str.contains("time_limit").all()
    assert len(posts(emu)) == 1  # the second batch was never submitted
    assert len(posts(emu, "/cancel")) == 1


SCRIPT = textwrap.dedent(
    """
    import sys, polars as pl
    from typing import Literal
    from pydantic import BaseModel
    from batchata_df import batch_llm

    class Review(BaseModel):
        sentiment: Literal["positive", "negative", "neutral"]
        rating: int
        summary: str

    df = pl.DataFrame({"text": [f"review {i}" for i in range(7)]})
    out = df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}",
                  state=sys.argv[1], items_per_batch=3)
    print("FINISHED", out["_status"].to_list())
    """
)


def _run_child(tmp_path, state, env_extra):
    script = tmp_path / "child.py"
    script.write_text(SCRIPT)
    env = {**os.environ, **env_extra}
    return subprocess.Popen(
        [sys.executable, str(script), str(state)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def _resume(state):
    df = pl.DataFrame({"text": [f"review {i}" for i in range(7)]})
    return df.pipe(
        batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}", state=state,
        items_per_batch=3,
    )


def _submitted(state):
    """How many batches the state folder holds as submitted (parts are renamed in whole)."""
    # (not the hidden .tmp-* names a part is written under before its rename)
    parts = sorted(
        p for p in (state / "batches").glob("*.parquet") if not p.name.startswith(".")
    ) if (state / "batches").exists() else []
    if not parts:
        return 0
    events = pl.concat([pl.read_parquet(p, columns=["batch_key", "status"]) for p in parts])
    return events.filter(pl.col("status") == "submitted")["batch_key"].n_unique()


def test_sigkill_after_submission_then_resume_submits_nothing_twice(emu, tmp_path):
    emu.configure(latency=4.0)
    state = tmp_path / "killed"
    child = _run_child(tmp_path, state, {})
    try:
        deadline = time.monotonic() + 60
        # 7 rows / 3 per batch = 3 batches, each checkpointed as submitted before the kill
        while len(posts(emu)) < 3 or _submitted(state) < 3:
            assert time.monotonic() < deadline, child.stderr.read() if child.poll() else "slow"
            time.sleep(0.05)
    finally:  # killed here also when the wait failed: no child outlives the test
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        child.stderr.close()
    emu.advance(4.0)  # the 3 batches end on the emulator's clock: no real 4 s wait to collect
    out = _resume(state)
    assert out["_status"].to_list() == ["completed"] * 7
    assert len(posts(emu)) == 3


def test_crash_between_create_and_checkpoint_finds_the_orphan(emu, tmp_path):
    emu.configure(latency=0.5)
    state = tmp_path / "orphan"
    child = _run_child(tmp_path, state, {"BATCHATA_DF_FAILPOINT": "after_submit"})
    _, err = child.communicate(timeout=240)
    assert child.returncode != 0
    assert len(posts(emu)) == 1  # the provider accepted one batch; we never recorded its id
    out = _resume(state)
    assert out["_status"].to_list() == ["completed"] * 7
    # The orphan was re-attached, only the two other batches were created.
    assert len(posts(emu)) == 3
    created = [e for e in emu.log() if e["method"] == "GET" and e["path"].endswith("/batches")]
    assert created, "resume must list batches to look for the orphan"


def test_split_by_bytes(emu, monkeypatch, tmp_path):
    from batchata_df.providers.openai import OpenAIProvider

    monkeypatch.setattr(OpenAIProvider, "max_bytes", 3000)
    df = pl.DataFrame({"text": [f"{i} " + "x" * 400 for i in range(12)]})
    out = df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}",
                  state=tmp_path / "s")
    assert out["_status"].to_list() == ["completed"] * 12
    uploads = [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith("/files")]
    assert out["_batch_id"].n_unique() == len(uploads) >= 4
    sizes = pl.read_parquet(tmp_path / "s" / "batches" / "*.parquet").filter(
        pl.col("status") == "submitted")["n_bytes"]
    assert sizes.max() <= 3000 and sizes.sum() > 3000 * 3


def test_transient_provider_errors_are_retried(emu):
    emu.inject_fault(method="GET", path_regex=r"/openai/v1/batches/", status=503, times=1,
                     retry_after_ms=10)
    emu.inject_fault(method="POST", path_regex=r"/openai/v1/files$", status=429, times=1,
                     retry_after_ms=10)
    out = frame(3).pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}")
    assert out["_status"].to_list() == ["completed"] * 3
    statuses = [e["status"] for e in emu.log()]
    assert 503 in statuses and 429 in statuses
    assert len(posts(emu)) == 1


def test_missing_provider_sdk_is_a_clear_error_before_anything_is_sent(emu, monkeypatch):
    import batchata_df.providers as providers

    monkeypatch.setattr(providers, "_installed", lambda module: module != "anthropic")
    with pytest.raises(ConfigError, match=r"pip install 'batchata-df\[anthropic\]'"):
        frame(2).pipe(batch_llm, model="claude-haiku-4-5", prompt="{text}")
    assert emu.log() == []
