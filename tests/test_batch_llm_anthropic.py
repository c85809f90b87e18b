"""batch_llm end to end through the official anthropic SDK against the emulator over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Literal

import anthropic
import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import (
    ConfigError,
    CredentialsError,
    OrphanedBatchError,
    batch_llm,
)
from batchata_df.frame import META_COLUMNS
from batchata_df.providers import make_provider
from batchata_df.providers.anthropic import AnthropicProvider, decode_results
from batchata_df.providers.base import BatchTag, ProviderState, RequestSpec
from batchata_df.schema import AnswerSchema

MODEL = "claude-haiku-4-5"


class Address(BaseModel):
    city: str
    zip_code: str | None
    since: dt.date


class Profile(BaseModel):
    name: str
    age: int
    score: float
    active: bool
    mood: Literal["happy", "sad"]
    tags: list[str]
    address: Address
    history: list[Address]
    nickname: str | None


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    rating: int
    summary: str


def creates(emu) -> list[dict]:
    return [
        e for e in emu.log() if e["method"] == "POST" and e["path"].endswith("/v1/messages/batches")
    ]


def frame(n: int = 5) -> pl.DataFrame:
    return pl.DataFrame({"id": list(range(n)), "text": [f"review number {i}" for i in range(n)]})


def test_nested_schema_becomes_typed_columns(emu, tmp_path):
    out = frame(4).pipe(
        batch_llm, schema=Profile, model=MODEL, prompt="Profile {text}", state=tmp_path / "s"
    )
    address = pl.Struct({"city": pl.String, "zip_code": pl.String, "since": pl.Date})
    expected = {
        "name": pl.String,
        "age": pl.Int64,
        "score": pl.Float64,
        "active": pl.Boolean,
        "mood": pl.Enum(["happy", "sad"]),
        "tags": pl.List(pl.String),
        "address": address,
        "history": pl.List(address),
        "nickname": pl.String,
    }
    assert out.columns == ["id", "text", *expected, *META_COLUMNS]
    for name, dtype in expected.items():
        assert out.schema[name] == dtype, name
    assert out["_status"].to_list() == ["completed"] * 4
    assert out["_error"].null_count() == 4
    for row in out.select(list(expected)).to_dicts():
        Profile.model_validate(row)
    assert out["_batch_id"].str.starts_with("msgbatch_").all()
    assert (out["_input_tokens"] > 0).all()
    assert (out["_output_tokens"] > 0).all()
    # claude-haiku-4-5 batch price: $0.50 in / $2.50 out per 1M tokens.
    expect = (out["_input_tokens"] * 0.5 + out["_output_tokens"] * 2.5) / 1e6
    assert (out["_cost_usd"] - expect).abs().max() < 1e-12
    assert len(creates(emu)) == 1


def test_thinking_models_and_text_answers(emu):
    # Opus answers start with an empty thinking block: the text is selected by type.
    out = frame(3).pipe(batch_llm, schema=Review, model="claude-opus-4-5", prompt="{text}")
    assert out["_status"].to_list() == ["completed"] * 3
    assert out["rating"].null_count() == 0
    text = frame(2).pipe(batch_llm, model="anthropic:claude-opus-4-5", prompt="Say {text}")
    assert text.columns == ["id", "text", "response", *META_COLUMNS]
    assert text["response"].str.starts_with("Emulated answer").all()


def test_failed_rows_are_data(emu):
    df = pl.DataFrame(
        {
            "text": [
                "fine",
                "[[emulator:invalid]]",
                "[[emulator:error]]",
                "[[emulator:truncate]]",
                "[[emulator:refusal]]",
                "[[emulator:error:400]]",
            ]
        }
    )
    out = df.pipe(batch_llm, schema=Review, model=MODEL, prompt="{text}")
    assert out["_status"].to_list() == ["completed"] + ["failed"] * 5
    errors = out["_error"].to_list()
    assert errors[0] is None
    assert errors[1].startswith("schema_validation:")
    assert errors[2].startswith("api_error: ")
    assert errors[3].startswith("truncated:")
    assert errors[4].startswith("refusal: ")
    assert errors[5].startswith("invalid_request_error: ")
    assert out["rating"][0] is not None
    assert out["rating"].null_count() == 5
    # An errored request did not run: no usage, no cost.
    assert out["_input_tokens"][2] is None
    assert out["_cost_usd"][2] == 0


def test_params_system_and_request_encoding(emu):
    df = pl.DataFrame({"a": ['say "hi"\n'], "b": [1]})
    out = df.pipe(
        batch_llm,
        schema=Review,
        model=MODEL,
        prompt=pl.format("{} / {}", pl.col("a"), pl.col("b")),
        system="Be brief.",
        # No sampling parameter: Claude takes none under API version 2026-10-21
        # (tests/test_anthropic_api_version.py); the encoder still maps them (below).
        params={"stop": "END", "max_tokens": 300},
    )
    assert out["_status"][0] == "completed"
    with pytest.raises(ConfigError, match="seed"):
        df.pipe(batch_llm, model=MODEL, prompt="{a}", params={"seed": 1})
    # What the provider sends: the SDK's create params, with our names mapped.
    provider = AnthropicProvider(api_key="k", base_url="http://127.0.0.1:9")
    spec = RequestSpec(AnswerSchema(Review), {"max_tokens": 300, "stop": "END", "top_k": 5})
    jobs = pl.DataFrame(
        {
            "job_id": ["j1", "j2"],
            "model": [MODEL, MODEL],
            "prompt": ['say "hi"\n', "plain"],
            "system": ["Be brief.", None],
        }
    )
    lines = [json.loads(line) for line in provider.encode(jobs, spec)]
    first, second = lines
    assert first["custom_id"] == "j1"
    params = first["params"]
    assert params["model"] == MODEL
    assert params["messages"] == [{"role": "user", "content": 'say "hi"\n'}]
    assert params["system"] == "Be brief."
    assert "system" not in second["params"]
    assert params["max_tokens"] == 300
    assert params["stop_sequences"] == ["END"]
    assert params["top_k"] == 5
    fmt = params["output_config"]["format"]
    assert fmt["type"] == "json_schema"
    assert fmt["schema"] == anthropic.transform_schema(AnswerSchema(Review).json_schema)
    assert provider.line_overhead() == 1
    assert "k" not in repr(provider)


def test_resume_sends_nothing_again(emu, tmp_path):
    state = tmp_path / "run"
    kw = {"schema": Review, "model": MODEL, "prompt": "{text}", "state": state}
    first = frame(6).pipe(batch_llm, items_per_batch=4, **kw)
    assert len(creates(emu)) == 2
    again = frame(6).pipe(batch_llm, items_per_batch=4, **kw)
    assert len(creates(emu)) == 2
    assert again.equals(first)
    more = frame(8).pipe(batch_llm, items_per_batch=4, **kw)
    assert len(creates(emu)) == 3
    assert more.head(6).equals(first)


def test_time_limit_cancels_and_salvages(emu, engine_clock):
    emu.configure(latency=30)
    out = frame(6).pipe(
        batch_llm,
        schema=Review,
        model=MODEL,
        prompt="{text}",
        items_per_batch=3,
        max_parallel_batches=1,
        time_limit=1.0,
    )
    # Not waited out: Anthropic answers only when the whole batch ends (30 s away), so
    # every row of the one batch sent, and the batch never sent, ends cancelled.
    assert set(out["_status"].to_list()) <= {"completed", "cancelled"}
    cancelled = out.filter(pl.col("_status") == "cancelled")
    assert cancelled.height >= 3
    assert cancelled["_error"].str.contains("time_limit").all()
    assert len(creates(emu)) == 1
    assert len([e for e in emu.log() if e["path"].endswith("/cancel")]) == 1


def test_expired_batch_keeps_finished_rows(emu, tmp_path):
    emu.configure(latency=48 * 3600)
    state = tmp_path / "slow"
    kw = {"schema": Review, "model": MODEL, "prompt": "{text}", "state": state}
    pending = frame(4).pipe(batch_llm, wait=False, **kw)
    assert pending["_status"].to_list() == ["pending"] * 4
    emu.advance(24 * 3600 + 1)  # half of the requests ran before the 24 h window closed
    out = frame(4).pipe(batch_llm, **kw)
    assert out["_status"].to_list() == ["completed", "completed", "failed", "failed"]
    assert out["_error"][2].startswith("expired:")
    assert out["rating"].head(2).null_count() == 0
    assert len(creates(emu)) == 1


def test_credentials_and_lazy_import(emu, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.chdir(Path(__file__).parent)  # no .env here
    with pytest.raises(CredentialsError, match="ANTHROPIC_API_KEY"):
        frame(1).pipe(batch_llm, model=MODEL, prompt="{text}")
    with pytest.raises(CredentialsError, match="ANTHROPIC_API_KEY"):
        make_provider("anthropic")
    assert emu.log() == []
    code = "import sys, batchata_df; print('anthropic' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_bad_key_is_a_credentials_error_without_the_key(emu, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-invalid-secret")
    with pytest.raises(CredentialsError, match="ANTHROPIC_API_KEY") as info:
        frame(1).pipe(batch_llm, model=MODEL, prompt="{text}")
    assert "sk-invalid-secret" not in str(info.value)


def test_decode_results_selects_text_by_type_and_maps_usage():
    def line(custom_id: str, result: dict) -> str:
        return json.dumps({"custom_id": custom_id, "result": result})

    usage = {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_creation_input_tokens": 3,
        "cache_read_input_tokens": 20,
        "service_tier": "batch",
    }
    message = {
        "content": [
            {"type": "thinking", "thinking": "", "signature": "s"},
            {"type": "text", "text": '{"a": ', "citations": None},
            {"type": "tool_use", "id": "t", "name": "x", "input": {"k": 1}},
            {"type": "text", "text": "1}"},
        ],
        "stop_reason": "end_turn",
        "usage": usage,
    }
    data = "\n".join(
        [
            line("ok", {"type": "succeeded", "message": message}),
            line("cut", {"type": "succeeded", "message": {**message, "stop_reason": "max_tokens"}}),
            line(
                "err",
                {
                    "type": "errored",
                    "error": {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "busy"},
                    },
                },
            ),
            line("can", {"type": "canceled"}),
            line("exp", {"type": "expired"}),
        ]
    ).encode()
    rows = {r["job_id"]: r for r in decode_results(data).to_dicts()}
    assert rows["ok"]["outcome"] == "succeeded"
    assert rows["ok"]["text"] == '{"a": 1}'
    assert rows["ok"]["truncated"] is False
    assert rows["ok"]["input_tokens"] == 33  # input + cache reads + cache writes
    assert rows["ok"]["cached_tokens"] == 20
    assert rows["ok"]["output_tokens"] == 5
    assert rows["cut"]["truncated"] is True
    assert rows["err"]["outcome"] == "errored"
    assert rows["err"]["error"] == "overloaded_error: busy"
    assert rows["err"]["input_tokens"] is None
    assert rows["can"]["outcome"] == "canceled"
    assert rows["exp"]["outcome"] == "expired"
    assert rows["exp"]["error"].startswith("expired:")
    assert decode_results(b"").height == 0


# -- crash recovery -------------------------------------------------------------------------------

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
    out = df.pipe(batch_llm, schema=Review, model="claude-haiku-4-5", prompt="{text}",
                  state=sys.argv[1], items_per_batch=3)
    print("FINISHED", out["_status"].to_list())
    """
)


def _crash_after_submit(tmp_path: Path, state: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "BATCHATA_DF_FAILPOINT": "after_submit"}
    child = subprocess.run(
        [sys.executable, str(script), str(state)], env=env, capture_output=True, timeout=240
    )
    assert child.returncode != 0, child.stdout
    assert b"FINISHED" not in child.stdout


def _resume(state: Path) -> pl.DataFrame:
    df = pl.DataFrame({"text": [f"review {i}" for i in range(7)]})
    return df.pipe(
        batch_llm, schema=Review, model=MODEL, prompt="{text}", state=state, items_per_batch=3
    )


def _decoy_batch(emu) -> anthropic.types.messages.MessageBatch:
    """Another batch of the same size (3 requests), created in the same window by someone
    else (with another key)."""
    client = anthropic.Anthropic(api_key="sk-ant-other", base_url=emu.anthropic_base_url)
    batch = client.messages.batches.create(
        requests=[
            {
                "custom_id": f"other-{i}",
                "params": {
                    "model": MODEL,
                    "max_tokens": 10,
                    "messages": [{"role": "user", "content": "x"}],
                },
            }
            for i in range(3)
        ]
    )
    client.close()
    return batch


def test_crash_between_create_and_checkpoint_finds_the_orphan(emu, tmp_path):
    emu.configure(latency=0.5)
    state = tmp_path / "orphan"
    _crash_after_submit(tmp_path, state)
    assert len(creates(emu)) == 1  # Anthropic accepted a batch; its id was never recorded
    out = _resume(state)
    assert out["_status"].to_list() == ["completed"] * 7
    assert len(creates(emu)) == 3  # the orphan was re-attached: only two more batches
    listed = [e for e in emu.log() if e["method"] == "GET" and e["path"].endswith("/batches")]
    assert listed, "resume must list batches to look for the orphan"
    assert out["_batch_id"].n_unique() == 3


def test_orphan_is_told_apart_from_a_lookalike_by_its_results(emu, tmp_path):
    state = tmp_path / "orphan"
    _crash_after_submit(tmp_path, state)
    decoy = _decoy_batch(emu)
    out = _resume(state)
    assert out["_status"].to_list() == ["completed"] * 7
    assert decoy.id not in out["_batch_id"].to_list()
    assert len(creates(emu)) == 4  # orphan, decoy, and the two batches never submitted


def test_a_lost_create_is_told_apart_from_a_lookalike_by_the_batch_s_own_ids(emu):
    # The create's answer is lost (500 after it took effect) while someone else's ended
    # batch of the same size sits in the same window: the lookup before the retry reads
    # each candidate's first result and keeps the one holding our requests. The engine
    # gives the batch's ids as its column (a set is made only for this lookup).
    decoy = _decoy_batch(emu)
    emu.inject_fault(method="POST", path_regex=r"/v1/messages/batches$", status=500, when="after")
    out = frame(3).pipe(batch_llm, schema=Review, model=MODEL, prompt="{text}")
    assert out["_status"].to_list() == ["completed"] * 3
    assert out["_batch_id"].n_unique() == 1 and decoy.id not in out["_batch_id"].to_list()
    assert [e["status"] for e in creates(emu)] == [200, 500]  # the decoy, ours: no second


def test_ambiguous_orphan_stops_before_paying_twice(emu, tmp_path):
    emu.configure(latency=100)
    state = tmp_path / "orphan"
    _crash_after_submit(tmp_path, state)
    decoy = _decoy_batch(emu)
    with pytest.raises(OrphanedBatchError, match="Wait until these batches have ended") as info:
        _resume(state)
    assert decoy.id in str(info.value)
    assert len(creates(emu)) == 2  # nothing was submitted
    emu.advance(101)  # both ended: their results tell which one is ours
    emu.configure(latency=0)
    out = _resume(state)
    assert out["_status"].to_list() == ["completed"] * 7
    assert decoy.id not in out["_batch_id"].to_list()
    assert len(creates(emu)) == 4


def test_find_contract(emu):
    provider = AnthropicProvider()
    spec = RequestSpec(AnswerSchema(None), {"max_tokens": 50})
    jobs = pl.DataFrame(
        {"job_id": ["a1", "a2"], "model": [MODEL] * 2, "prompt": ["x", "y"], "system": [None] * 2}
    )
    t0 = time.time()
    tag = BatchTag("run", "b1", t0, n_jobs=2, job_ids=frozenset({"a1", "a2"}))
    assert provider.find(tag) is None  # nothing was created
    batch_id = provider.submit(provider.encode(jobs, spec), model=MODEL, tag=tag)
    fresh = AnthropicProvider()  # a resumed run: a new process knows nothing
    assert fresh.find(tag) == batch_id
    assert fresh.find(BatchTag("run", "b1", t0, n_jobs=3)) is None  # another size
    assert fresh.find(BatchTag("run", "b1", t0 + 2 * 3600 + 1200, n_jobs=2)) is None  # too old
    known = BatchTag("run", "b1", t0, n_jobs=2, known_batch_ids=frozenset({batch_id}))
    assert fresh.find(known) is None
    assert provider.poll(batch_id).state is ProviderState.ENDED
    results = provider.results(batch_id, spec)
    assert sorted(results["job_id"].to_list()) == ["a1", "a2"]
    provider.close()
    fresh.close()


def test_create_answered_with_an_error_after_it_took_effect_is_not_sent_twice(emu):
    # The provider created the batch, but the client saw a 500: retrying blindly would pay
    # twice. The provider looks the batch up before any retry.
    emu.inject_fault(method="POST", path_regex=r"/v1/messages/batches$", status=500, when="after")
    out = frame(3).pipe(batch_llm, schema=Review, model=MODEL, prompt="{text}")
    assert out["_status"].to_list() == ["completed"] * 3
    assert len(creates(emu)) == 1


def test_overloaded_create_is_retried_and_a_rejected_one_stops_the_run(emu, tmp_path):
    emu.inject_fault(
        method="POST", path_regex=r"/v1/messages/batches$", status=529, retry_after_ms=10
    )
    out = frame(2).pipe(batch_llm, schema=Review, model=MODEL, prompt="{text}")
    assert out["_status"].to_list() == ["completed"] * 2
    assert [e["status"] for e in creates(emu)] == [529, 200]

    emu.reset()
    emu.inject_fault(method="POST", path_regex=r"/v1/messages/batches$", status=400)
    state = tmp_path / "s"
    kw = {"schema": Review, "model": MODEL, "prompt": "{text}", "state": state}
    # A refused create is looked up (nothing there), then its rows fail with the reason;
    # the run goes on and the rows can be sent again.
    failed = frame(2).pipe(batch_llm, **kw)
    assert failed["_status"].to_list() == ["failed"] * 2
    assert failed["_error"].str.contains("HTTP 400").all()
    out = frame(2).pipe(batch_llm, retry_failed=True, **kw)
    assert out["_status"].to_list() == ["completed"] * 2
    assert [e["status"] for e in creates(emu)] == [400, 200]


def test_find_reads_past_newer_batches_and_other_sizes_down_to_the_window_start(emu):
    # Listed newest first: a batch created after the window and one of another size come
    # before ours and are passed over, not where the search stops; a batch created exactly
    # at the window's start (created_after - CLOCK_SKEW_S) is still a candidate.
    import math

    from batchata_df.providers.anthropic import CLOCK_SKEW_S, SUBMIT_WINDOW_S

    spec = RequestSpec(AnswerSchema(None), {"max_tokens": 50})

    def jobs(n: int, prefix: str) -> pl.DataFrame:
        return pl.DataFrame({"job_id": [f"{prefix}{i}" for i in range(n)], "model": [MODEL] * n,
                             "prompt": ["x"] * n, "system": [None] * n})

    maker = AnthropicProvider()
    tag = BatchTag("run", "b1", time.time(), n_jobs=2, job_ids=frozenset({"ours0", "ours1"}))
    ours = maker.submit(maker.encode(jobs(2, "ours"), spec), model=MODEL, tag=tag)
    emu.advance(10)
    maker.submit(maker.encode(jobs(3, "bigger"), spec), model=MODEL, tag=tag)
    emu.advance(SUBMIT_WINDOW_S + 3 * CLOCK_SKEW_S)  # past hi = after + window + skew
    maker.submit(maker.encode(jobs(2, "later"), spec), model=MODEL, tag=tag)
    client = anthropic.Anthropic(base_url=emu.anthropic_base_url)
    created = client.messages.batches.retrieve(ours).created_at.timestamp()
    client.close()
    maker.close()
    # created_after whose window starts exactly at our batch's creation
    after = created + CLOCK_SKEW_S
    for _ in range(64):
        if after - CLOCK_SKEW_S == created:
            break
        after = math.nextafter(after, math.inf if after - CLOCK_SKEW_S < created else -math.inf)
    assert after - CLOCK_SKEW_S == created
    fresh = AnthropicProvider()  # a resumed run: it created none of them
    try:
        found = fresh.find(BatchTag("run", "b1", after, n_jobs=2,
                                    job_ids=frozenset({"ours0", "ours1"})))
    finally:
        fresh.close()
    assert found == ours
