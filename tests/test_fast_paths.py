"""The vectorised hot paths give exactly what the slower reference paths give.

Each fast path added for issue 14 (``benchmarks/PROFILE.md``) is compared value by value
with the path it replaced: ``read_jsonl`` with ``pl.read_ndjson`` on the providers' real
result-line schemas, including escapes, unicode, control characters, CRLF line ends,
blank lines and fields outside the schema. No test here measures time.
"""

from __future__ import annotations

import io
import json
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from batchata_df.providers import anthropic as anthropic_provider
from batchata_df.providers import gemini as gemini_provider
from batchata_df.providers import openai as openai_provider
from batchata_df.providers.base import read_jsonl

text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40
) | st.sampled_from(['{"a": 1}', "line\nbreak", "tab\t\x1f\x00", "quote \" back \\", "é 漢 🙂"])


def _openai_line(custom_id: str, content: str | None, tokens: int | None) -> dict[str, Any]:
    return {
        "id": "batch_req_x",
        "custom_id": custom_id,
        "response": {
            "status_code": 200,
            "body": {
                "choices": [
                    {"finish_reason": "stop", "message": {"content": content, "refusal": None}}
                ],
                "usage": {"prompt_tokens": tokens, "completion_tokens": 3, "extra": [1, 2]},
            },
        },
        "error": None,
    }


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(text, st.none() | text, st.none() | st.integers(0, 2**40)),
                  max_size=12),
    crlf=st.booleans(),
    blank=st.booleans(),
)
def test_read_jsonl_equals_read_ndjson(
    rows: list[tuple[str, str | None, int | None]], crlf: bool, blank: bool
) -> None:
    sep = "\r\n" if crlf else "\n"
    lines = [json.dumps(_openai_line(*r), ensure_ascii=False) for r in rows]
    if blank and lines:
        lines.insert(len(lines) // 2, "  ")
    data = (sep.join(lines) + sep).encode()
    schema = openai_provider._LINE_SCHEMA
    got = read_jsonl(data, schema)
    assert got.schema == schema
    if not lines:
        assert got.height == 0
        return
    want = pl.read_ndjson(io.BytesIO(data), schema=schema)
    assert_frame_equal(got, want)
    assert got.get_column("custom_id").to_list() == [r[0] for r in rows]
    assert got.get_column("response").struct.field("body").struct.field("choices").list.first(
    ).struct.field("message").struct.field("content").to_list() == [r[1] for r in rows]


def test_read_jsonl_spans_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    # Many slices of a few lines each: every line is kept once, in order.
    monkeypatch.setattr("batchata_df.providers.base.JSONL_SLICE_BYTES", 50)
    data = "\n".join(json.dumps({"id": f"r{i}", "n": i}) for i in range(500)).encode()
    got = read_jsonl(data, pl.Schema({"id": pl.String, "n": pl.Int64}))
    assert got.get_column("id").to_list() == [f"r{i}" for i in range(500)]
    assert got.get_column("n").to_list() == list(range(500))


def test_read_jsonl_malformed_line_raises_like_read_ndjson() -> None:
    data = b'{"id":"a"}\n{"id":\n'
    schema = pl.Schema({"id": pl.String})
    with pytest.raises(pl.exceptions.ComputeError):
        pl.read_ndjson(io.BytesIO(data), schema=schema)
    with pytest.raises(pl.exceptions.ComputeError):
        read_jsonl(data, schema)


@pytest.mark.parametrize(
    ("module", "schema_name"),
    [
        (openai_provider, "_LINE_SCHEMA"),
        (anthropic_provider, "_LINE_SCHEMA"),
        (anthropic_provider, "_CITED_SCHEMA"),
        (gemini_provider, "_LINE_SCHEMA"),
    ],
)
def test_read_jsonl_nulls_for_every_provider_schema(module: Any, schema_name: str) -> None:
    # Lines that miss every field, or give nulls, decode to all-null rows of the full
    # nested schema, as read_ndjson decodes them.
    schema = getattr(module, schema_name)
    data = b'{}\n{"unrelated": {"x": [1, "y"]}}\n' + json.dumps(
        {name: None for name in schema}
    ).encode()
    assert_frame_equal(read_jsonl(data, schema), pl.read_ndjson(io.BytesIO(data), schema=schema))
