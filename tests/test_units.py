"""Pure logic: schema mapping, splitting, backoff, the state store, job keys."""

from __future__ import annotations

import datetime as dt
import json
from typing import Literal, Optional

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from batchata_df.engine import Backoff, split_sizes
from batchata_df.errors import SchemaError, StateError, StateMismatchError
from batchata_df.jobs import build_jobs, parse_model, template_columns
from batchata_df.schema import AnswerSchema
from batchata_df.state import JOB_EVENTS, StateStore


class Inner(BaseModel):
    when: dt.date
    tags: list[str]


class Outer(BaseModel):
    label: Literal["a", "b"]
    inner: Inner
    items: list[Inner]
    maybe: Optional[float] = None


def test_strict_schema_shape():
    s = AnswerSchema(Outer).json_schema
    assert s["additionalProperties"] is False
    assert s["required"] == ["label", "inner", "items", "maybe"]
    inner = s["$defs"]["Inner"]
    assert inner["additionalProperties"] is False and inner["required"] == ["when", "tags"]
    assert "default" not in json.dumps(s)


def test_validate_and_decode_nested():
    schema = AnswerSchema(Outer)
    good = Outer(label="a", inner=Inner(when=dt.date(2024, 2, 3), tags=["x"]),
                 items=[Inner(when=dt.date(2020, 1, 1), tags=[])])
    canonical, errors = schema.validate([good.model_dump_json(), '{"label": "zzz"}', "nope"])
    assert errors[0] is None and canonical[1] is None and canonical[2] is None
    assert errors[1].startswith("schema_validation:")
    out = pl.DataFrame({"a": canonical}).select(schema.decode(pl.col("a")))
    assert out.schema["label"] == pl.Enum(["a", "b"])
    assert out["inner"][0] == {"when": dt.date(2024, 2, 3), "tags": ["x"]}
    assert out["items"][0][0]["when"] == dt.date(2020, 1, 1)
    assert out["maybe"][0] is None


@pytest.mark.parametrize("annotation", [dict[str, int], int | str, tuple[int, str]])
def test_unsupported_types_are_schema_errors(annotation):
    model = type("M", (BaseModel,), {"__annotations__": {"x": annotation}})
    with pytest.raises(SchemaError, match="x"):
        AnswerSchema(model)


@given(st.lists(st.integers(1, 50), min_size=0, max_size=200), st.integers(1, 20),
       st.integers(1, 200))
@settings(max_examples=200, deadline=None)
def test_split_sizes_respects_both_limits(sizes, max_requests, max_bytes):
    ranges = split_sizes(pl.Series(sizes, dtype=pl.Int64), max_requests=max_requests,
                         max_bytes=max_bytes)
    covered = [i for a, b in ranges for i in range(a, b)]
    assert covered == list(range(len(sizes)))
    for a, b in ranges:
        assert b - a <= max_requests
        assert sum(sizes[a:b]) <= max_bytes or b - a == 1


def test_backoff_grows_to_cap():
    b = Backoff(1.0, 60.0, 1.6)
    values = [b.next() for _ in range(20)]
    assert values[0] == 1.0 and values[-1] == 60.0
    assert values == sorted(values)


def test_parse_model_and_templates():
    assert parse_model("claude-opus-5-5") == ("anthropic", "claude-opus-5-5")
    assert parse_model("gemini:custom") == ("gemini", "custom")
    assert template_columns("{a} {{b}} {c}") == ["a", "c"]


@pytest.mark.parametrize("scheme", ["blake2b", "hmac-sha256"])
def test_job_ids_are_content_hashes(scheme):
    df = pl.DataFrame({"t": ["x", "y", "x"]})
    a = build_jobs(df, model="gpt-4.1-mini", prompt="{t}", system=None, salt="s1", scheme=scheme)
    b = build_jobs(df, model="gpt-4.1-mini", prompt="{t}", system=None, salt="s1", scheme=scheme)
    c = build_jobs(df, model="gpt-4.1-mini", prompt="{t}", system=None, salt="s2", scheme=scheme)
    assert a["job_id"].to_list() == b["job_id"].to_list()
    assert a["job_id"][0] == a["job_id"][2] != a["job_id"][1]
    assert a["job_id"][0] != c["job_id"][0]


def test_job_ids_are_the_keyed_blake2b_that_older_folders_hold():
    # A checkpoint resumes by job id: the id of a row must never change between versions.
    # It is BLAKE2b (12 bytes, keyed by the run's salt) of provider, model, system (\x01
    # when none) and prompt joined by NUL, whatever way it is computed.
    import hashlib

    df = pl.DataFrame({"t": ["x", "é 漢 🙂", "", "a\x00b"]})
    jobs = build_jobs(df, model="gpt-4.1-mini", prompt="Q: {t}", system=None, salt="s" * 70,
                      scheme="blake2b")
    want = [
        hashlib.blake2b(
            f"openai\x00gpt-4.1-mini\x00\x01\x00Q: {t}".encode(),
            digest_size=12,
            key=("s" * 70).encode()[:64],
        ).hexdigest()
        for t in df["t"]
    ]
    assert jobs["job_id"].to_list() == want
    one = build_jobs(pl.DataFrame({"t": ["x"]}), model="gpt-4.1-mini", prompt="{t}",
                     system="sys", salt="salt", scheme="blake2b")  # fmt: skip
    assert one["job_id"].to_list() == ["4238ce54363b0cc898e1b6a8"]  # main before this change


def test_state_store_append_and_latest(tmp_path):
    store = StateStore(tmp_path, {"model": "m"})
    store.append_jobs(pl.DataFrame({"job_id": ["a", "b"], "status": ["assigned", "assigned"]}))
    store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": ["completed"], "answer": ["{}"]}))
    latest = store.job_state().sort("job_id")
    assert latest["status"].to_list() == ["completed", "assigned"]
    assert latest.schema == JOB_EVENTS
    store.append_batch(batch_key="k", provider="openai", status="intent")
    store.append_batch(batch_key="k", provider="openai", status="submitted",
                       provider_batch_id="batch_1")
    store.append_batch(batch_key="k", provider="openai", status="collected")
    b = store.batch_state()
    assert b["status"].to_list() == ["collected"]
    assert b["provider_batch_id"].to_list() == ["batch_1"]
    assert not list(tmp_path.glob("**/.tmp-*"))
    # Reopen: same fingerprint is fine, another one is refused.
    assert StateStore(tmp_path, {"model": "m"}).manifest.run_id == store.manifest.run_id
    with pytest.raises(StateMismatchError, match="model"):
        StateStore(tmp_path, {"model": "other"})


def test_state_store_refuses_other_format_versions(tmp_path):
    StateStore(tmp_path, {})
    manifest = tmp_path / "manifest.json"
    data = json.loads(manifest.read_text())
    data["format_version"] = 99
    manifest.write_text(json.dumps(data))
    with pytest.raises(StateError, match="format version 99"):
        StateStore(tmp_path, {})


@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.sampled_from(
    ["assigned", "completed", "failed", "cancelled"]), st.one_of(st.none(), st.text(max_size=20)),
    st.one_of(st.none(), st.integers(0, 10**9))), max_size=30))
@settings(max_examples=40, deadline=None)
def test_job_events_round_trip(tmp_path_factory, rows):
    store = StateStore(tmp_path_factory.mktemp("s"), {})
    frame = pl.DataFrame(rows, schema=["job_id", "status", "answer", "input_tokens"],
                         orient="row")
    store.append_jobs(frame)
    back = store.job_events()
    assert back.select("job_id", "status", "answer", "input_tokens").to_dicts() == \
        frame.cast({"input_tokens": pl.Int64}).to_dicts()


def test_parts_with_older_columns_stay_readable(tmp_path):
    store = StateStore(tmp_path, {})
    old = pl.DataFrame({"seq": [1], "job_id": ["a"], "status": ["completed"]})
    old.write_parquet(tmp_path / "jobs" / "part-00000000000000000001-aaaaaa.parquet")
    store.append_jobs(pl.DataFrame({"job_id": ["b"], "status": ["failed"], "est_cost_usd": [0.1]}))
    events = store.job_events()
    assert events["job_id"].to_list() == ["a", "b"]
    assert events["est_cost_usd"].to_list() == [None, 0.1]


def test_constraints_strict_mode_rejects_move_into_the_description():
    from pydantic import Field

    class C(BaseModel):
        code: str = Field(min_length=2, max_length=5, description="a short code")
        tags: set[str]
        n: int = Field(ge=1, le=5)

    s = AnswerSchema(C).json_schema
    code = s["properties"]["code"]
    assert "minLength" not in code and "maxLength" not in code
    assert code["description"] == "a short code (maxLength: 5; minLength: 2)"
    assert "uniqueItems" not in s["properties"]["tags"]
    assert s["properties"]["n"]["minimum"] == 1 and s["properties"]["n"]["maximum"] == 5
    # Still enforced on answers, by the Pydantic model.
    _, errors = AnswerSchema(C).validate(['{"code": "x", "tags": [], "n": 3}'])
    assert errors[0].startswith("schema_validation: code")
