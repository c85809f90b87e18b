"""Provider queue limits: batches refused for the enqueued-token limit are sent again."""

from __future__ import annotations

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm


class A(BaseModel):
    label: str


def creates(emu):
    return [e for e in emu.log() if e["method"] == "POST" and e["path"] == "/openai/v1/batches"]


@pytest.fixture
def limited(emu):
    def limit(tokens: int) -> None:
        emu.configure(openai={"max_enqueued_tokens": tokens})

    yield limit
    emu.configure(openai={"max_enqueued_tokens": 10**12})


def per_job_tokens(emu, df):
    out = df.head(1).pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}")
    emu.reset()
    return int(out["_input_tokens"][0])


def test_batches_over_the_queue_limit_wait_for_room(emu, limited):
    df = pl.DataFrame({"t": [f"row {i:03d}" for i in range(20)]})
    tokens = per_job_tokens(emu, df)
    emu.configure(latency=1.0)
    limited(tokens * 11)  # room for two batches of 5 at a time
    out = df.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}", items_per_batch=5)
    assert out["_status"].to_list() == ["completed"] * 20
    assert out.group_by("_batch_id").len()["len"].max() <= 5
    assert len(creates(emu)) > 4  # some were refused and sent again later
    assert (out["_cost_usd"] > 0).all()


def test_a_batch_too_big_for_the_limit_is_split(emu, limited, tmp_path):
    df = pl.DataFrame({"t": [f"row {i:03d}" for i in range(8)]})
    tokens = per_job_tokens(emu, df)
    limited(tokens * 3)
    out = df.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}",
                  state=tmp_path / "s")
    assert out["_status"].to_list() == ["completed"] * 8
    assert out.group_by("_batch_id").len()["len"].max() <= 3


def test_a_single_request_over_the_limit_fails_with_the_reason(emu, limited):
    df = pl.DataFrame({"t": ["row 000 " + "word " * 200]})
    tokens = per_job_tokens(emu, df)
    limited(tokens // 4)  # the request alone is several times the limit
    out = df.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}")
    assert out["_status"].to_list() == ["failed"]
    assert out["_error"][0].startswith("rate_limited: token_limit_exceeded")
    assert out["_cost_usd"][0] == 0


def test_emulator_refuses_a_batch_over_the_enqueued_limit_like_the_api(emu, limited):
    import json
    import time

    from openai import OpenAI
    from openai.types import Batch

    emu.configure(latency=5.0)
    limited(60)
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4.1-mini",
                     "messages": [{"role": "user", "content": "x " * 400}]}}
    with OpenAI(api_key="sk-test", base_url=emu.openai_base_url) as client:
        f = client.files.create(file=("in.jsonl", json.dumps(line).encode()), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
        deadline = time.monotonic() + 20
        while (b := client.batches.retrieve(b.id)).status == "validating":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        raw = client.batches.with_raw_response.retrieve(b.id).http_response.json()
    Batch.model_validate(raw, strict=False)
    assert b.status == "failed"
    assert b.errors.data[0].code == "token_limit_exceeded"
    assert "Enqueued token limit reached for gpt-4.1-mini" in b.errors.data[0].message


def test_a_queue_filled_by_other_work_is_waited_for_not_failed(emu, limited, tmp_path,
                                                              monkeypatch):
    import batchata_df.engine.planning as engine

    monkeypatch.setattr(engine, "RATE_LIMIT_PATIENCE_S", 60.0)
    df = pl.DataFrame({"t": [f"row {i:03d}" for i in range(4)]})
    tokens = per_job_tokens(emu, df)
    emu.configure(latency=2.0)
    limited(tokens * 5)
    # Another workload (another state folder) holds the queue for about two seconds.
    other = pl.DataFrame({"t": [f"other {i:03d}" for i in range(4)]})
    other.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}", wait=False,
               state=tmp_path / "other")
    out = df.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}",
                  state=tmp_path / "mine")
    assert out["_status"].to_list() == ["completed"] * 4
