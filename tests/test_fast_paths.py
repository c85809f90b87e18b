"""The vectorised hot paths give exactly what the slower reference paths give.

Each fast path added for issue 14 (``benchmarks/PROFILE.md``) is compared value by value
with the path it replaced: ``read_jsonl`` with ``pl.read_ndjson`` on the providers' real
result-line schemas, including escapes, unicode, control characters, CRLF line ends,
blank lines and fields outside the schema; ``AnswerSchema.validate`` (column-wise fast
path for flat models) with Pydantic's own ``model_validate_json`` -> ``model_dump_json``
and error message, row by row. No test here measures time.
"""

from __future__ import annotations

import io
import json
from typing import Any, Literal

import polars as pl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal, assert_series_equal
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    computed_field,
    field_validator,
)

from batchata_df.providers import anthropic as anthropic_provider
from batchata_df.providers import gemini as gemini_provider
from batchata_df.providers import openai as openai_provider
from batchata_df.providers.base import (
    ARROW_BLOCK_BYTES,
    JSONL_SLICE_BYTES,
    RequestSpec,
    _read_jsonl_arrow,
    _read_jsonl_polars,
    read_jsonl,
    strip_ends,
)
from batchata_df.schema import AnswerSchema, _describe

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
    # Both decoders read_jsonl chooses between give that frame (pyarrow takes these lines).
    arrow = _read_jsonl_arrow(data, schema)
    assert arrow is not None
    assert_frame_equal(arrow, want)
    assert_frame_equal(_read_jsonl_polars(data, schema), want)
    assert got.get_column("custom_id").to_list() == [r[0] for r in rows]
    assert got.get_column("response").struct.field("body").struct.field("choices").list.first(
    ).struct.field("message").struct.field("content").to_list() == [r[1] for r in rows]


def test_a_results_file_starting_with_a_null_line_never_reaches_pyarrow() -> None:
    # pyarrow 26's JSON reader kills the process (SIGSEGV) on it; the Polars path reads it
    # (the null line has no id: collection ends its row as missing, nothing crashes).
    schema = pl.Schema({"id": pl.String, "n": pl.Int64})
    for data in (b'null\n{"id":"a","n":1}\n', b"null", b' \nnull\n'):
        assert _read_jsonl_arrow(data, schema) is None
        assert_frame_equal(read_jsonl(data, schema), _read_jsonl_polars(data, schema))
    assert read_jsonl(b'null\n{"id":"a","n":1}\n', schema).drop_nulls().rows() == [("a", 1)]
    # A null line anywhere crashes it too once it starts a block (here: the second).
    line = b'{"id":"a","n":1}\n'
    big = line * (ARROW_BLOCK_BYTES // len(line) + 1) + b"null\n" + line
    assert _read_jsonl_arrow(big, schema) is None
    assert read_jsonl(big, schema).drop_nulls().height == big.count(b'"id"')
    # Data that starts with an object (after blank space) still goes to pyarrow.
    assert _read_jsonl_arrow(b' \r\n{"id":"a","n":1}', schema) is not None


@pytest.mark.parametrize(
    "spelling", [b"null", b" null", b"\tnull", b"  null", b"\t\tnull", b" \t null"]
)
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_a_null_line_in_any_spelling_never_reaches_pyarrow(spelling: bytes, newline: bytes) -> None:
    # Every spelling of a `null` line pyarrow is kept from (it crashes on one that starts a
    # block), wherever it is, goes to the Polars path; `null` values inside lines do not
    # (those files stay on the fast path). The guard is one search, not one per spelling.
    schema = pl.Schema({"id": pl.String, "n": pl.Int64})
    line = b'{"id":"a","n":null}' + newline
    assert _read_jsonl_arrow(line * 3, schema) is not None
    for at in (1, JSONL_SLICE_BYTES // len(line) + 1, ARROW_BLOCK_BYTES // len(line) + 1):
        data = line * at + spelling + newline + line
        assert _read_jsonl_arrow(data, schema) is None, (spelling, at)
        got = read_jsonl(data, schema)
        assert_frame_equal(got, _read_jsonl_polars(data, schema))
        assert got.drop_nulls("id").height == at + 1


def test_read_jsonl_builds_its_columns_in_the_system_pool_not_pyarrows_default() -> None:
    # pyarrow's default pool (mimalloc) faulted each download's columns in afresh as huge
    # pages: ~0.3 s of system CPU per 1M Gemini rows (PROFILE.md, twenty-first pass). The
    # reader takes the system's allocator instead; the process's default pool is untouched.
    # An Int64 column without nulls stays in the reader's buffer (Polars takes it without a
    # copy), so while the frame lives its bytes show in the pool that allocated them.
    import pyarrow as pa

    rows = 100_000
    data = b"".join(b'{"id":"a%d","n":%d}\n' % (i, i) for i in range(rows))
    system, default = pa.system_memory_pool(), pa.default_memory_pool()
    system_before, default_before = system.bytes_allocated(), default.bytes_allocated()
    frame = read_jsonl(data, pl.Schema({"id": pl.String, "n": pl.Int64}))
    assert frame.height == rows and frame["n"].sum() == rows * (rows - 1) // 2
    assert system.bytes_allocated() - system_before >= 8 * rows
    assert default.bytes_allocated() - default_before < 8 * rows // 10
    del frame


def test_a_null_line_after_a_bare_cr_never_reaches_pyarrow() -> None:
    # pyarrow splits its blocks at a bare CR too: `}\rnull` at a block's start killed the
    # process (SIGSEGV; the guard looked for `\nnull` only; decode review, tenth pass).
    # Providers end lines with LF, so such a file is damaged: an error, never a crash.
    schema = pl.Schema({"id": pl.String, "n": pl.Int64})
    line = b'{"id":"a","n":null}\r'
    for at in (1, ARROW_BLOCK_BYTES // len(line) + 1):
        data = line * at + b"null\r" + line
        assert _read_jsonl_arrow(data, schema) is None, at
        with pytest.raises(pl.exceptions.ComputeError):
            read_jsonl(data, schema)


def test_read_jsonl_spans_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    # Many slices of a few lines each: every line is kept once, in order.
    monkeypatch.setattr("batchata_df.providers.base.JSONL_SLICE_BYTES", 50)
    data = "\n".join(json.dumps({"id": f"r{i}", "n": i}) for i in range(500)).encode()
    got = read_jsonl(data, pl.Schema({"id": pl.String, "n": pl.Int64}))
    assert got.get_column("id").to_list() == [f"r{i}" for i in range(500)]
    assert got.get_column("n").to_list() == list(range(500))


_json_value = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(
    allow_nan=False, allow_infinity=False
) | text | st.lists(st.integers(0, 3), max_size=2) | st.fixed_dictionaries({"x": st.integers()})


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(st.tuples(_json_value, _json_value, _json_value), min_size=1, max_size=6))
def test_read_jsonl_with_values_of_other_types_is_the_polars_decoder(
    rows: list[tuple[Any, Any, Any]],
) -> None:
    # Values of another JSON type than the schema's (which pyarrow refuses and
    # str.json_decode may convert: false -> 0, 5 -> "5"), integers past Int64, nested
    # values where a scalar is expected: read_jsonl gives what the Polars decoder gives
    # (the pyarrow reader only where it agrees), or fails as it fails.
    schema = pl.Schema(
        {"s": pl.String, "n": pl.Int64, "o": pl.Struct({"x": pl.Int64, "l": pl.List(pl.Int64)})}
    )
    data = "\n".join(
        json.dumps({"s": a, "n": b, "o": {"x": c, "l": c}}, ensure_ascii=False)
        for a, b, c in rows
    ).encode()
    try:
        want = _read_jsonl_polars(data, schema)
    except pl.exceptions.PolarsError as e:
        with pytest.raises(type(e)):
            read_jsonl(data, schema)
        return
    assert_frame_equal(read_jsonl(data, schema), want)
    arrow = _read_jsonl_arrow(data, schema)
    if arrow is not None:
        assert_frame_equal(arrow, want)


def test_provider_result_files_take_the_arrow_decoder() -> None:
    # The faster decoder is the one used for ordinary result lines (not the fallback).
    data = "\n".join(
        json.dumps(_openai_line(str(i), '{"a": 1}', 7)) for i in range(3)
    ).encode()
    got = _read_jsonl_arrow(data, openai_provider._LINE_SCHEMA)
    assert got is not None
    assert got.get_column("custom_id").to_list() == ["0", "1", "2"]


def test_read_jsonl_malformed_line_raises_like_read_ndjson() -> None:
    data = b'{"id":"a"}\n{"id":\n'
    schema = pl.Schema({"id": pl.String})
    with pytest.raises(pl.exceptions.ComputeError):
        pl.read_ndjson(io.BytesIO(data), schema=schema)
    with pytest.raises(pl.exceptions.ComputeError):
        read_jsonl(data, schema)


@pytest.mark.parametrize(
    "schema",
    [
        openai_provider._LINE_SCHEMA,
        anthropic_provider._line_schema(anthropic_provider._TEXT_BLOCK),
        anthropic_provider._line_schema(anthropic_provider._CITED_BLOCK),
        gemini_provider._LINE_SCHEMA,
    ],
    ids=["openai", "anthropic", "anthropic-cited", "gemini"],
)
def test_read_jsonl_nulls_for_every_provider_schema(schema: pl.Schema) -> None:
    # Lines that miss every field, or give nulls, decode to all-null rows of the full
    # nested schema, as read_ndjson decodes them.
    data = b'{}\n{"unrelated": {"x": [1, "y"]}}\n' + json.dumps(
        {name: None for name in schema}
    ).encode()
    assert_frame_equal(read_jsonl(data, schema), pl.read_ndjson(io.BytesIO(data), schema=schema))


_RESULT_LINES = {
    "openai": (
        b'{"custom_id":"a","response":{"status_code":200,"body":{"choices":[{"message":'
        b'{"content":"{\\"x\\": 1}","refusal":null},"finish_reason":"stop"}],"usage":'
        b'{"prompt_tokens":7,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":2},'
        b'"completion_tokens_details":{"reasoning_tokens":1}}}},"error":null}\n'
        b'{"custom_id":"b","response":{"status_code":500,"body":{"error":{"message":"boom"}}},'
        b'"error":null}'
    ),
    "anthropic": (
        b'{"custom_id":"a","result":{"type":"succeeded","message":{"content":[{"type":"text",'
        b'"text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1,'
        b'"cache_creation_input_tokens":0,"cache_read_input_tokens":4}}}}\n'
        b'{"custom_id":"b","result":{"type":"errored","error":{"type":"error",'
        b'"error":{"type":"api_error","message":"boom"}}}}'
    ),
    "gemini": (
        b'{"key":"a","response":{"candidates":[{"content":{"parts":[{"text":"hi"}]},'
        b'"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,'
        b'"candidatesTokenCount":2}}}\n'
        b'{"key":"b","error":{"code":400,"message":"bad"}}'
    ),
}


def _decode(provider: str, data: bytes, *, responses: bool) -> pl.DataFrame:
    if provider == "openai":
        return openai_provider.decode_lines(data, responses=responses)
    if provider == "gemini":
        return gemini_provider.decode_lines(data, responses=responses)
    spec = RequestSpec(schema=AnswerSchema(None), params={}, keep_responses=responses)
    return anthropic_provider.decode_results(data, spec)


@pytest.mark.parametrize("responses", [False, True])
@pytest.mark.parametrize("provider", sorted(_RESULT_LINES))
@pytest.mark.parametrize(
    ("head", "tail"),
    [(b"", b"\n"), (b"", b""), (b" \r\n\n\t", b"\r\n \n\n"), (b"\n", b" \n"), (b"", b"\r\n")],
)
def test_result_files_decode_as_their_stripped_text(
    provider: str, responses: bool, head: bytes, tail: bytes
) -> None:
    # A download ending in one newline is decoded without the copy data.strip() made; any
    # download gives the frame its stripped text gave, verbatim lines included.
    data = head + _RESULT_LINES[provider] + tail
    got = _decode(provider, data, responses=responses)
    assert got.height == 2 and got["job_id"].to_list() == ["a", "b"]
    assert got["outcome"].to_list() == ["succeeded", "errored"]
    if provider != "anthropic":  # which never stripped (a line keeps its own whitespace)
        assert_frame_equal(got, _decode(provider, data.strip(), responses=responses))
        if responses:
            assert got["response"].to_list() == _RESULT_LINES[provider].decode().split("\n")
    for blank in (b"", b"\n", b" \r\n\t \n"):
        assert _decode(provider, blank, responses=responses).height == 0


def test_strip_ends_copies_only_when_more_than_a_final_newline_goes() -> None:
    for data in (b'{"a":1}\n', b'{"a":1}', b'{"a":1}\n{"a":2}\n'):
        assert strip_ends(data) is data
    for data in (b"", b"\n", b" \n", b'\n{"a":1}\n', b'{"a":1}\r\n', b'{"a":1}\n\n', b'{"a":1} '):
        assert strip_ends(data) == data.strip()


# -- schema validation: the column-wise fast path gives what Pydantic gives, row by row -----


class Flat(BaseModel):
    summary: str
    score: float
    count: int
    ok: bool
    label: Literal["pos", "neg", "a b-c."]
    maybe: float | None


def _pydantic_only(model: type[BaseModel], texts: list[str | None]) -> tuple[list, list]:
    canonical: list[str | None] = []
    errors: list[str | None] = []
    for text in texts:
        if text is None:
            canonical.append(None)
            errors.append("schema_validation: the answer is empty")
            continue
        try:
            canonical.append(model.model_validate_json(text).model_dump_json())
            errors.append(None)
        except ValidationError as e:
            canonical.append(None)
            errors.append(_describe(e))
    return canonical, errors


number = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0.0, -0.0, 1e16, 1e-7, 5e-324, 1.5, 100.0])
)
value = number | text | st.booleans() | st.none() | st.sampled_from(["pos", "neg", "a b-c.", "x"])


@st.composite
def answers(draw: st.DrawFn) -> str | None:
    if draw(st.integers(0, 30)) == 0:
        return None
    obj: dict[str, Any] = {
        "summary": draw(text | value),
        "score": draw(number | value),
        "count": draw(st.integers(-(2**66), 2**66) | value),
        "ok": draw(st.booleans() | value),
        "label": draw(st.sampled_from(["pos", "neg", "a b-c."]) | value),
        "maybe": draw(st.none() | number | value),
    }
    keys = list(obj)
    if draw(st.booleans()):
        keys = draw(st.permutations(keys))
    if draw(st.integers(0, 5)) == 0:
        keys = keys[:-1]  # a field missing
    out = {k: obj[k] for k in keys}
    if draw(st.integers(0, 5)) == 0:
        out["extra"] = draw(value)
    compact = draw(st.integers(0, 3)) > 0
    dumped = json.dumps(
        out,
        separators=(",", ":") if compact else (", ", ": "),
        ensure_ascii=draw(st.booleans()),
    )
    if draw(st.integers(0, 10)) == 0:
        dumped = dumped[: draw(st.integers(0, len(dumped)))]  # truncated
    return dumped


def _through_pydantic(texts: list[str | None]) -> tuple[list, list]:
    """The same schema with every answer through Pydantic, and the column checks after it
    (an int past Int64 fails its row there: Pydantic alone would take it)."""
    schema = AnswerSchema(Flat)
    schema._fast = None
    canonical, errors = schema.validate_series(pl.Series(texts, dtype=pl.String))
    return canonical.to_list(), errors.to_list()


_CANONICAL = '{"summary":"a","score":1.5,"count":2,"ok":true,"label":"pos","maybe":null}'
_REWRITTEN = '{"summary": "a", "score": 1, "count": 2, "ok": true, "label": "pos", "maybe": 0}'
_PAST_INT64 = (
    '{"summary":"","score":0.0,"count":9223372036854775808,"ok":false,"label":"pos","maybe":null}'
)


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(answers(), max_size=20))
@example([_PAST_INT64, _CANONICAL])  # the draws can make it: Pydantic alone was the wrong reference
def test_fast_validation_equals_pydantic(texts: list[str | None]) -> None:
    schema = AnswerSchema(Flat)
    assert schema._fast is not None
    assert schema.validate(texts) == _through_pydantic(texts)
    assert schema.validate(pl.Series(texts, dtype=pl.String)) == _through_pydantic(texts)
    if not any(t == _PAST_INT64 for t in texts):
        return
    # and the reference itself is Pydantic's reading, but for the Int64 check
    assert _pydantic_only(Flat, texts)[1][texts.index(_PAST_INT64)] is None


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(answers(), max_size=20))
@example([_CANONICAL, _REWRITTEN, None, "{", _REWRITTEN.replace("2", '"2"')])  # Pydantic's too
@example([_REWRITTEN])  # no answer the fast path takes
@example([_PAST_INT64, _CANONICAL])
def test_answers_decoded_by_the_validation_equal_the_output_s_decode(
    texts: list[str | None],
) -> None:
    # The run keeps the struct the fast path decoded (and decodes Pydantic's answers) so
    # that the output does not decode the canonical answers again: row for row it is what
    # the output's own decode of the canonical text gives, typed the same way.
    schema = AnswerSchema(Flat)
    canonical, errors, decoded = schema.validate_decoded(pl.Series(texts, dtype=pl.String))
    assert (canonical.to_list(), errors.to_list()) == _through_pydantic(texts)
    if not texts:
        assert decoded is None  # nothing to carry: the output decodes (nothing)
        return
    assert decoded is not None
    from_text = pl.select(schema.decoded(pl.lit(canonical))).to_series()
    from_struct = pl.select(schema.typed(pl.lit(decoded))).to_series()
    assert from_struct.to_list() == from_text.to_list()
    assert_series_equal(from_struct, from_text)


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(answers(), max_size=20), rows=st.integers(1, 8))
@example([_CANONICAL] * 5 + [None, _REWRITTEN, _CANONICAL, "{"], 2)
@example([_CANONICAL] * 7, 3)  # every answer taken: returned without a mask
@example([None] * 4, 3)
@example(['{"summary":"","score":0.0,"count":9223372036854775808,"ok":false,"label":"pos",'
          '"maybe":null}', _CANONICAL], 1)  # past Int64: the decode refuses, Pydantic decides
def test_answers_checked_in_slices_equal_pydantic_and_the_whole_decode(
    texts: list[str | None], rows: int
) -> None:
    # The fast path decodes DECODE_SLICE_ROWS answers at a time (5,000 in a run; here a
    # few, so that the lists span slices): the same answers, errors and decoded values as
    # Pydantic and as one decode of the canonical texts, row for row.
    from unittest import mock

    from batchata_df import schema as schema_module

    schema = AnswerSchema(Flat)
    series = pl.Series(texts, dtype=pl.String)
    with mock.patch.object(schema_module, "DECODE_SLICE_ROWS", rows):
        canonical, errors, decoded = schema.validate_decoded(series)
        assert schema._fast is not None
        fast = schema._fast.canonical(series).to_list()
    # the reference: the same schema with every answer through Pydantic (and the column
    # checks after it: an int past Int64 fails the row)
    pydantic = AnswerSchema(Flat)
    pydantic._fast = None
    assert [s.to_list() for s in (canonical, errors)] == [
        s.to_list() for s in pydantic.validate_series(series)]
    # what the fast path took, it took as it was, and Pydantic gives it back unchanged
    assert all(f is None or f == t == c
               for f, t, c in zip(fast, texts, canonical.to_list(), strict=True))
    if texts and all(t == _CANONICAL for t in texts):
        assert fast == texts
    if not texts:
        return
    assert decoded is not None
    # in one chunk, as one decode gives it (the run holds them all to the end: in chunks
    # they took ~20 % more at a 1M call's peak)
    assert decoded.n_chunks() == 1
    from_text = pl.select(schema.decoded(pl.lit(canonical))).to_series()
    assert_series_equal(pl.select(schema.typed(pl.lit(decoded))).to_series(), from_text)


class AllOptional(BaseModel):
    n: int | None
    label: Literal["pos", "neg"] | None


_C2 = '{"summary":"b","score":2.0,"count":3,"ok":false,"label":"neg","maybe":1e+20}'
_ADVERSARIAL = [
    # the fast path decodes without the layout regex: what the regex refused, its checks
    # of the decode refuse, or Pydantic decides
    _CANONICAL.replace('"summary":"a"', '"summary":null'),  # null for a required field
    _CANONICAL.replace('"count":2', '"count":null'),
    _CANONICAL.replace('"ok":true', '"ok":null'),
    _CANONICAL.replace('"label":"pos"', '"label":null'),
    "null",  # the whole answer null: decodes to a null row, which encodes as "null"
    _CANONICAL.replace('"label":"pos"', '"label":"x"'),  # a Literal value outside the set
    _CANONICAL.replace('"label":"pos"', '"label":"Pos"'),
    _CANONICAL.replace('"label":"pos"', '"label":"po\\u0073"'),  # the value, escaped
    _CANONICAL.replace('{"summary":"a"', '{"summary":"a","summary":"a"'),  # duplicate key
    _CANONICAL.replace('"maybe":null}', '"maybe":null,"maybe":null}'),
    " " + _CANONICAL, _CANONICAL + " ", _CANONICAL + "\n", _CANONICAL.replace(",", ", "),
    _CANONICAL.replace('"score":1.5', '"score":5'),  # 5 for a float: Pydantic's 5.0
    _CANONICAL.replace('"count":2', '"count":2.0'),  # 2.0 for an int
    _CANONICAL.replace('"count":2', '"count":-0'),
    _CANONICAL.replace('"count":2', '"count":02'),
    _CANONICAL.replace('"count":2', '"count":9223372036854775808'),  # past Int64
    _CANONICAL.replace('"count":2', '"count":-9223372036854775809'),
    _CANONICAL.replace('"count":2', '"count":99999999999999999999999'),
    _CANONICAL.replace('"count":2', '"count":"2"'),
    _CANONICAL.replace('"ok":true', '"ok":1'),
    _CANONICAL.replace('"summary":"a"', '"summary":5'),
    _CANONICAL.replace('"summary":"a"', '"summary":{"k":1}'),
    _CANONICAL.replace('"score":1.5', '"score":NaN'),
    _CANONICAL.replace('"score":1.5', '"score":Infinity'),
    _CANONICAL.replace('"maybe":null', '"maybe":-Infinity'),
    _CANONICAL.replace('"score":1.5', '"score":1.50'),
    _CANONICAL.replace('"score":1.5', '"score":15e-1'),
    _CANONICAL.replace('"summary":"a"', '"summary":"\\u0061"'),  # escapes Pydantic does not write
    _CANONICAL.replace('"summary":"a"', '"summary":"a\\/b"'),
    _CANONICAL.replace('"summary":"a"', '"summary":"\\ud800"'),  # a lone surrogate
    _CANONICAL.replace('"summary":"a"', '"summary":"a\tb"'),  # a raw control character
    _CANONICAL.replace('"summary":"a"', '"summary":"a\\tb"'),  # Pydantic's spelling: taken
    "", "5", '"x"', "[1]", "{}", "[" + _CANONICAL + "]",
    _CANONICAL[:-1],  # truncated
    _CANONICAL + "," + _CANONICAL,  # two answers in one text: the decoder makes them two rows
    _CANONICAL + ",null",
]


@pytest.mark.parametrize("rows", [1, 2, 3, 5_000])
@pytest.mark.parametrize("bad", _ADVERSARIAL)
def test_answers_the_layout_regex_refused_are_pydantic_s_among_canonical_ones(
    bad: str, rows: int
) -> None:
    # The fast path no longer runs the layout regex first: each text the decoder takes is
    # decoded as it is and kept only when it encodes back to itself and its nulls and
    # literals are allowed. An adversarial answer amid canonical ones (in slices of
    # `rows`): the answers and errors are Pydantic's, the decoded struct the canonical
    # texts' own, and the canonical answers are still taken by the fast path.
    from unittest import mock

    from batchata_df import schema as schema_module

    texts = [_CANONICAL, bad, _C2, None, _CANONICAL]
    series = pl.Series(texts, dtype=pl.String)
    schema = AnswerSchema(Flat)
    assert schema._fast is not None
    with mock.patch.object(schema_module, "DECODE_SLICE_ROWS", rows):
        canonical, errors, decoded = schema.validate_decoded(series)
        fast = schema._fast.canonical(series).to_list()
    assert [canonical.to_list(), errors.to_list()] == list(_through_pydantic(texts))
    assert fast[1] in (None, bad)
    assert fast[1] is None or canonical.to_list()[1] == bad  # taken: Pydantic's own dump
    assert [fast[i] for i in (0, 2, 3, 4)] == [_CANONICAL, _C2, None, _CANONICAL]
    assert decoded is not None
    from_text = pl.select(schema.decoded(pl.lit(canonical))).to_series()
    assert_series_equal(pl.select(schema.typed(pl.lit(decoded))).to_series(), from_text)


@pytest.mark.parametrize("bad", ["null", '{"n":null,"label":null}', '{"n":1,"label":"x"}',
                                 '{"n":1}', '{"label":null,"n":null}', '{"n":1,"label":"neg"}'])
def test_an_all_optional_model_s_null_answer_is_pydantic_s(bad: str) -> None:
    # "null" decodes to a null row, which Polars encodes back as "null": without the
    # regex, only the check that the decode is not null keeps it from the fast path
    texts = [bad, '{"n":null,"label":"pos"}']
    schema = AnswerSchema(AllOptional)
    assert schema._fast is not None
    assert schema.validate(texts) == _pydantic_only(AllOptional, texts)
    fast = schema._fast.canonical(pl.Series(texts, dtype=pl.String)).to_list()
    assert fast[1] == texts[1]
    assert fast[0] == (bad if bad in ('{"n":null,"label":null}', '{"n":1,"label":"neg"}')
                       else None)


def test_answers_that_shift_the_decoder_s_rows_are_never_taken_for_another_s() -> None:
    # Polars decodes a column by joining its texts into one JSON array: a text of two
    # objects is two rows, and a text left open takes the next one in. Here the counts
    # even out (5 texts, 5 rows), so the rows are shifted: a row is kept only when it
    # encodes back to its own text, i.e. when it is that text's value.
    opened = _CANONICAL[:-1] + ',"x":[1'
    closed = "2]}"
    texts = [opened, closed, _C2, _C2 + "," + _C2, _CANONICAL]
    series = pl.Series(texts, dtype=pl.String)
    rows = series.str.json_decode(pl.Struct({"summary": pl.String})).struct.field("summary")
    assert rows.to_list() == ["a", "b", "b", "b", "a"]  # "2]}" came out as "b"
    assert series.head(3).str.json_decode(pl.Struct({"summary": pl.String})).len() == 2
    schema = AnswerSchema(Flat)
    assert schema.validate(texts) == _through_pydantic(texts)
    for n in range(1, len(texts) + 1):
        head = texts[:n]
        canonical, errors, decoded = schema.validate_decoded(pl.Series(head, dtype=pl.String))
        assert [canonical.to_list(), errors.to_list()] == list(_through_pydantic(head))
        assert decoded is not None
        from_text = pl.select(schema.decoded(pl.lit(canonical))).to_series()
        assert_series_equal(pl.select(schema.typed(pl.lit(decoded))).to_series(), from_text)


def test_without_a_fast_path_nothing_decoded_is_kept() -> None:
    # A model the fast path cannot vouch for, or text answers: the output decodes the text.
    assert AnswerSchema(Nested).validate_decoded(['{"inner":{"x":1}}'])[2] is None
    assert AnswerSchema(None).validate_decoded(["x"])[2] is None


def test_polars_escapes_every_character_as_pydantic_does() -> None:
    # The fast path takes an escaped string when Polars' decode -> encode gives it back
    # unchanged; that is Pydantic's own spelling only if both encoders escape every
    # character alike. All of Unicode (surrogates aside), one string per character.
    chars = [chr(i) for i in range(0x110000) if not 0xD800 <= i < 0xE000]
    dumped = TypeAdapter(list[str]).dump_json(chars).decode()
    decoder, theirs, at = json.JSONDecoder(), [], 1
    while at < len(dumped) - 1:
        _, end = decoder.raw_decode(dumped, at)
        theirs.append(dumped[at:end])
        at = end + 1
    ours = (
        pl.DataFrame({"s": chars})
        .select(pl.struct("s").struct.json_encode().str.slice(5).str.strip_suffix("}"))
        .to_series()
        .to_list()
    )
    assert len(theirs) == len(chars)
    assert [c for c, a, b in zip(chars, theirs, ours, strict=True) if a != b] == []


def test_fast_validation_series_equals_the_lists() -> None:
    texts = [
        '{"summary":"a \\"q\\"","score":1.5,"count":1,"ok":true,"label":"pos","maybe":null}',
        '{"summary":"a","score":1,"count":1,"ok":true,"label":"pos","maybe":null}',
        None,
        '{"summary":"a"}',
    ]
    schema = AnswerSchema(Flat)
    canonical, errors = schema.validate_series(pl.Series(texts))
    assert (canonical.name, errors.name) == ("answer", "error")
    assert (canonical.to_list(), errors.to_list()) == _pydantic_only(Flat, texts)
    assert canonical.to_list()[1] == texts[1].replace('"score":1,', '"score":1.0,')
    text_only = AnswerSchema(None).validate_series(pl.Series(["x", None]))
    assert [s.to_list() for s in text_only] == [["x", None], [None, "empty answer"]]


def test_fast_validation_takes_canonical_answers_without_pydantic() -> None:
    texts = [
        Flat(summary=f"é {i} 🙂", score=i / 7, count=i, ok=i % 2 == 0, label="a b-c.",
             maybe=None if i % 3 else i * 1e20).model_dump_json()
        for i in range(300)
    ]
    schema = AnswerSchema(Flat)
    assert schema._fast is not None
    assert schema._fast.canonical(pl.Series(texts)).to_list() == texts
    # Escaped the way Pydantic escapes (quotes, backslashes, controls): canonical too.
    escaped = [
        Flat(summary=t, score=1.5, count=1, ok=True, label="pos", maybe=None).model_dump_json()
        for t in ['a "quote"', "back\\slash", "line\nbreak\ttab", "\x00\x1f\x7f", "a/b"]
    ]
    assert all("\\" in t for t in escaped[:4])
    assert schema._fast.canonical(pl.Series(escaped)).to_list() == escaped
    # Not canonical (an int for a float, spaces, escapes Pydantic does not write): left
    # to Pydantic.
    others = ['{"summary":"a","score":1,"count":1,"ok":true,"label":"pos","maybe":null}',
              '{"summary": "a", "score": 1.5, "count": 1, "ok": true, "label": "pos", '
              '"maybe": null}',
              '{"summary":"a\\/b\\u00e9","score":1.5,"count":1,"ok":true,"label":"pos",'
              '"maybe":null}',
              '{"summary":"a","score":1.5,"count":99999999999999999999,"ok":true,'
              '"label":"pos","maybe":null}']
    assert schema._fast.canonical(pl.Series(others)).to_list() == [None] * 4
    assert schema._fast.canonical(pl.Series(others[:3])).to_list() == [None] * 3
    canonical, errors = schema.validate(texts + others)
    expected, no_errors = _pydantic_only(Flat, texts + others[:3])
    assert (canonical[:-1], errors[:-1]) == (expected, no_errors)
    # Pydantic takes an int past Int64, which the column cannot hold: the row fails
    assert canonical[-1] is None
    assert errors[-1] == (
        "schema_validation: count: 99999999999999999999 does not fit an Int64 column "
        "(-9223372036854775808 to 9223372036854775807): make the field a Decimal or a str"
    )


class Shouting(BaseModel):
    word: str

    @field_validator("word")
    @classmethod
    def upper(cls, v: str) -> str:
        return v.upper()


class Short(BaseModel):
    word: str = Field(max_length=3)


class Nested(BaseModel):
    inner: Short


class Aliased(BaseModel):
    word: str = Field(alias="w")


class Stripping(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)
    word: str


class Computed(BaseModel):
    word: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def size(self) -> int:
        return len(self.word)


@pytest.mark.parametrize("model", [Shouting, Short, Nested, Aliased, Stripping, Computed])
def test_models_the_fast_path_cannot_vouch_for_go_through_pydantic(
    model: type[BaseModel],
) -> None:
    schema = AnswerSchema(model)
    assert schema._fast is None
    texts = ['{"word":"abcd"}', '{"word":" ab "}', '{"w":"ab"}', '{"inner":{"word":"abcd"}}']
    assert schema.validate(texts) == _pydantic_only(model, texts)


def test_shouting_answer_is_the_validators_value() -> None:
    canonical, errors = AnswerSchema(Shouting).validate(['{"word":"abc"}'])
    assert canonical == ['{"word":"ABC"}']
    assert errors == [None]


class Review(BaseModel):
    summary: str
    score: float
    stars: int
    recommend: bool
    label: Literal["pos", "neg", "neu"]
    note: str | None


@pytest.mark.parametrize("model", ["gpt-4.1-mini", "claude-haiku-4-5", "gemini-2.5-flash"])
def test_stored_answers_are_pydantics_canonical_json_end_to_end(emu, tmp_path, model) -> None:
    # Through the SDKs and the emulator: every stored answer (the fast path's output, or
    # Pydantic's for rows it left) is what Pydantic makes of the raw answer, and the typed
    # columns hold the same values.
    from batchata_df import batch_llm, sql

    assert AnswerSchema(Review)._fast is not None
    df = pl.DataFrame({"text": [f"review {i}: fine, é 🙂" for i in range(40)]})
    state = tmp_path / "run"
    out = batch_llm(df, schema=Review, model=model, prompt="{text}", state=state,
                    progress=False)
    assert out["_status"].to_list() == ["completed"] * 40
    stored = sql("select job_id, raw, answer from jobs", state)
    assert stored.height == 40
    fast = AnswerSchema(Review)._fast
    assert fast is not None
    taken = fast.canonical(stored.get_column("raw")).drop_nulls().len()
    assert taken > 0  # the emulator's answers (like the providers') are mostly canonical
    for raw, answer in stored.select("raw", "answer").iter_rows():
        assert answer == Review.model_validate_json(raw).model_dump_json()
    by_job = dict(stored.select("job_id", "answer").iter_rows())
    for row in out.iter_rows(named=True):
        want = Review.model_validate_json(by_job[row["_job_id"]]).model_dump()
        assert {k: row[k] for k in want} == want


@pytest.mark.parametrize("model", ["gpt-4.1-mini", "claude-haiku-4-5"])
def test_the_output_from_answers_decoded_once_equals_the_output_decoding_them(
    emu, tmp_path, model, monkeypatch
) -> None:
    # A fresh folder: the output takes the answers the validation decoded (carried with
    # the events the call wrote) instead of decoding the stored text again. The same run
    # without them (the stored text decoded, as before) gives the same frame, value for
    # value, with answers the fast path takes, answers Pydantic rewrites (invalid ones fail).
    from batchata_df import batch_llm
    from batchata_df.schema import DECODED
    from batchata_df.state import StateStore

    marks = ["", "", "", "[[emulator:invalid]]", "[[emulator:error]]", "[[emulator:truncate]]"]
    df = pl.DataFrame(
        {"text": [f'review {i}: "fine", é 🙂\\ \n{marks[i % 6]}' for i in range(40)]}
    )
    kw = {"schema": Review, "model": model, "prompt": "{text}", "progress": False,
          "items_per_batch": 7}  # several batches, each its answers
    carried: list[bool] = []
    real = StateStore.written_states

    def spy(self, job_ids):  # type: ignore[no-untyped-def]
        got = real(self, job_ids)
        carried.append(got is not None and DECODED in got[0].columns)
        return got

    monkeypatch.setattr(StateStore, "written_states", spy)
    once = batch_llm(df, state=tmp_path / "once", **kw)
    assert carried == [True]
    monkeypatch.setattr(StateStore, "record_jobs", lambda self, **_: False)  # read back, decode
    twice = batch_llm(df, state=tmp_path / "twice", **kw)
    assert set(once["_status"]) == {"completed", "failed"}  # both kinds of rows
    assert once["_batch_id"].null_count() == twice["_batch_id"].null_count() == 0
    assert_frame_equal(once.drop("_batch_id"), twice.drop("_batch_id"))  # ids: other batches


@pytest.mark.parametrize("keep_raw", [True, False], ids=["keep_raw", "decoded_only"])
@pytest.mark.parametrize("model", ["gpt-4.1-mini", "claude-haiku-4-5", "gemini-2.5-flash"])
def test_a_batch_with_nothing_decoded_comes_out_decoded_from_its_stored_answers(
    emu, tmp_path, model, monkeypatch, keep_raw
) -> None:
    # One answer holds 1e400 (past a double): Polars refuses the decode of its whole batch,
    # so Pydantic decides each answer there (that one fails, the others complete) and the
    # batch keeps nothing decoded, while the other batch keeps its struct. With keep_raw the
    # call holds the answers' text, and the states still come from what the call wrote;
    # without, it holds only decoded answers, so it reads the folder back. Either way the
    # output must decode that batch's stored answers (not give its completed rows null
    # fields).
    from batchata_df import batch_llm, sql
    from batchata_df.schema import DECODED
    from batchata_df.state import StateStore, WrittenJobs

    overflow = 9
    df = pl.DataFrame({"text": [f"review {i}" + (" [[emulator:overflow]]" if i == overflow else "")
                                for i in range(14)]})
    kept: list[list[bool]] = []
    carried: list[tuple[bool, bool]] = []
    real_answers, real_states = WrittenJobs.answers, StateStore.written_states

    def answers_spy(self):  # type: ignore[no-untyped-def]
        kept.append(sorted(d is not None for d in self.decoded))
        return real_answers(self)

    def states_spy(self, job_ids):  # type: ignore[no-untyped-def]
        got = real_states(self, job_ids)
        carried.append((got is not None, got is not None and DECODED in got[0].columns))
        return got

    monkeypatch.setattr(WrittenJobs, "answers", answers_spy)
    monkeypatch.setattr(StateStore, "written_states", states_spy)
    state = tmp_path / "run"
    out = batch_llm(df, schema=Review, model=model, prompt="{text}", state=state,
                    progress=False, items_per_batch=7, keep_raw=keep_raw)
    stored = sql("select job_id, raw from jobs where status <> 'assigned'", state)
    raw = dict(stored.iter_rows())
    fields = list(Review.model_fields)
    for i, row in enumerate(out.iter_rows(named=True)):
        if i == overflow:
            assert '"score":1e400' in raw[row["_job_id"]]
            assert row["_status"] == "failed"
            assert row["_error"].startswith(
                "schema_validation: score: the answer is not a finite number (inf")
            assert all(row[f] is None for f in fields)
        else:
            assert row["_status"] == "completed", row
            want = Review.model_validate_json(raw[row["_job_id"]]).model_dump()
            assert {f: row[f] for f in fields} == want
            assert row["summary"] is not None
    # What was asserted came by the path named: one batch decoded, one not; the states
    # from the call's writes, without the decoded answers (keep_raw), or from the folder.
    if keep_raw:
        assert out["_raw"].to_list() == [raw[j] for j in out["_job_id"]]
        assert kept == [[False, True]]
        assert carried == [(True, False)]
    else:
        assert kept == []
        assert carried == [(False, False)]


# -- outcomes: results in request order are put beside the members without a join ------------


class _Pair(BaseModel):
    word: str
    n: int


result_row = st.fixed_dictionaries(
    {
        "outcome": st.sampled_from(["succeeded", "succeeded", "errored", "canceled", "expired"]),
        "text": st.sampled_from(['{"word":"a","n":1}', '{"n":1,"word":"a"}', '{"word":1}',
                                 "not json", None]),
        "error": st.one_of(st.none(), st.just("boom")),
        "truncated": st.booleans(),
        "input_tokens": st.one_of(st.none(), st.integers(0, 99)),
    }
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(result_row, max_size=6), data=st.data())
def test_outcomes_in_request_order_equal_the_joined_outcomes(rows, data) -> None:
    from batchata_df.engine.collection import outcomes_to_events
    from batchata_df.providers.base import BatchPoll, ProviderState, RequestSpec, conform_results

    ids = [f"j{i}" for i in range(len(rows))]
    members = pl.DataFrame({"job_id": ids}, schema={"job_id": pl.String})
    results = conform_results(
        pl.DataFrame([{"job_id": i, **r} for i, r in zip(ids, rows, strict=True)],
                     schema_overrides={"text": pl.String, "error": pl.String,
                                       "input_tokens": pl.Int64})
        if rows else pl.DataFrame({"job_id": []}, schema={"job_id": pl.String})
    )  # fmt: skip
    # The same results in another order, some missing, or one twice: joined as before.
    order = data.draw(st.permutations(range(len(rows))))
    drop = data.draw(st.sets(st.sampled_from(range(len(rows))), max_size=2) if rows
                     else st.just(set()))
    other = results[[i for i in order if i not in drop]]
    spec = RequestSpec(schema=AnswerSchema(_Pair), params={"max_tokens": 64})
    poll = BatchPoll(ProviderState.ENDED, "completed", None, None)

    def events(res: pl.DataFrame) -> pl.DataFrame:
        out = outcomes_to_events(members, res, poll, spec, provider="openai", model="gpt-4.1")
        return out.sort("job_id")

    lined = events(results)
    joined = members.join(results, on="job_id", how="left")  # the definition: a left join
    assert lined.height == joined.height == len(ids)
    assert_frame_equal(lined, events(results.reverse()) if len(rows) > 1 else lined)
    by_id = {r["job_id"]: r for r in lined.iter_rows(named=True)}
    for r in joined.iter_rows(named=True):
        valid = r["text"] in ('{"word":"a","n":1}', '{"n":1,"word":"a"}')
        # A truncated answer fails even when it validates (tests/test_truncation.py).
        done = r["outcome"] == "succeeded" and valid and not r["truncated"]
        assert (by_id[r["job_id"]]["status"] == "completed") == done, r
        assert by_id[r["job_id"]]["answer"] == ('{"word":"a","n":1}' if done else None)
        assert by_id[r["job_id"]]["raw"] == r["text"]
    # Results missing: those members end failed (no row lost), the others as above.
    partial = events(other)
    assert partial.height == len(ids)
    for r in partial.iter_rows(named=True):
        if int(r["job_id"][1:]) in drop:
            assert (r["status"], r["answer"]) == ("failed", None)
        else:
            assert r == by_id[r["job_id"]]


_gemini_part = st.fixed_dictionaries(
    {"text": st.sampled_from(["", "4", "2", '{"a":1}', "é"])},
    optional={"thought": st.none() | st.booleans()},
) | st.fixed_dictionaries({}, optional={"text": st.none(), "thought": st.booleans()})
_gemini_parts = st.none() | st.lists(_gemini_part, max_size=3)


def _gemini_answer(parts: list[dict[str, Any]] | None) -> str | None:
    """The documented answer: the text parts that are not thoughts, joined; else null."""
    texts = [
        p["text"] for p in parts or [] if not p.get("thought") and p.get("text") is not None
    ]
    return "".join(texts) if texts else None


@settings(max_examples=200, deadline=None)
@given(st.lists(_gemini_parts, max_size=8), st.booleans())
@example([[{"text": "4"}, {"text": "2"}]], False)
@example([[{"text": "t", "thought": True}, {"text": "4"}], [{"text": "2"}]], False)
def test_gemini_answers_equal_the_joined_non_thought_parts(
    answers: list[list[dict[str, Any]] | None], single: bool
) -> None:
    # Files whose answers are one part at most take the one-part path; any line with more
    # takes the general one: the text is the same either way.
    if single:
        answers = [None if a is None else a[:1] for a in answers]
    lines = []
    for i, parts in enumerate(answers):
        content = {} if parts is None else {"content": {"role": "model", "parts": parts}}
        lines.append({"key": f"k{i}", "response": {"candidates": [{**content,
                                                                    "finishReason": "STOP"}]}})
    data = "\n".join(json.dumps(line) for line in lines).encode()
    decoded = gemini_provider.decode_lines(data)
    expected = [_gemini_answer(parts) for parts in answers]
    assert decoded.get_column("text").to_list() == expected
    assert decoded.get_column("outcome").to_list() == [
        "succeeded" if e is not None else "errored" for e in expected
    ]
