"""The result decoders give exactly the frames of the code path they replaced (tenth pass).

Random result files of every kind a provider sends (answers, refusals, content filters,
truncation, stopped answers, HTTP and line errors, expired and cancelled requests, thinking
blocks and parts, citations, several choices / candidates / blocks, missing and null
fields), framed in every way (LF or CRLF, blank lines, leading blank space, no final
newline) and sometimes holding a line pyarrow refuses (a ``null`` line, a count given as a
string), are decoded by each provider's decoder and by the decoders as they were before
the tenth pass (``tests/decode_reference.py``, verbatim): the frames are equal, with and
without the verbatim lines (``responses=True``), or both fail with the same error. No test
here measures time.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import decode_reference as ref
import polars as pl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from pydantic import BaseModel

from batchata_df.providers import anthropic, gemini, openai
from batchata_df.providers.base import (
    DownloadBuffer,
    RequestSpec,
    _read_jsonl_arrow,
    has_null_line,
)
from batchata_df.schema import AnswerSchema

_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12
) | st.sampled_from(["", '{"a": 1}', "line\nbreak", "null", "quote \" back \\", "é 漢 🙂"])
_maybe_text = st.none() | _text
_count = st.none() | st.integers(0, 10**6)
_ids = st.text("abc0123", min_size=1, max_size=6)


def _some(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object holding any subset of ``fields`` (a missing field and a null one)."""
    return st.fixed_dictionaries({}, optional=fields)


# -- OpenAI: output-file and error-file lines --------------------------------------------------

_openai_choice = _some(
    index=st.just(0),
    finish_reason=st.sampled_from(["stop", "length", "content_filter", "tool_calls", None]),
    message=st.none()
    | _some(role=st.just("assistant"), content=_maybe_text, refusal=st.none() | _text),
)
_openai_usage = _some(
    prompt_tokens=_count,
    completion_tokens=_count,
    total_tokens=_count,
    prompt_tokens_details=st.none()
    | _some(cached_tokens=_count, cache_write_tokens=_count, audio_tokens=_count),
    completion_tokens_details=st.none() | _some(reasoning_tokens=_count),
)
_openai_body_error = _some(
    message=_maybe_text, type=_maybe_text, code=st.none() | st.sampled_from(["bad", "x"])
)
_openai_response = st.fixed_dictionaries(
    {"status_code": st.sampled_from([200, 200, 200, 400, 429, 500, None])},
    optional={
        "request_id": st.just("req_1"),
        "body": st.none()
        | _some(
            id=st.just("chatcmpl-1"),
            choices=st.none() | st.lists(_openai_choice, max_size=3),
            usage=st.none() | _openai_usage,
            error=st.none() | _openai_body_error,
        ),
    },
)
_openai_line_error = _some(
    code=st.sampled_from(["batch_expired", "batch_cancelled", "server_error", None]),
    message=_maybe_text,
)


@st.composite
def _openai_line(draw: st.DrawFn) -> dict[str, Any]:
    line: dict[str, Any] = {"id": "batch_req_1", "custom_id": draw(_ids)}
    if draw(st.booleans()):
        line["response"] = draw(_openai_response)
        line["error"] = None
    else:
        line["response"] = None
        line["error"] = draw(st.none() | _openai_line_error)
    return line


# -- Anthropic: results lines ------------------------------------------------------------------

_citation = _some(
    type=st.just("char_location"),
    cited_text=_text,
    document_index=st.integers(0, 2),
    document_title=_maybe_text,
    start_char_index=st.integers(0, 5),
    end_char_index=st.integers(5, 9),
)
_block_types = st.sampled_from(["text", "text", "thinking", "redacted_thinking", "tool_use", None])


def _anthropic_block(citations: bool) -> st.SearchStrategy[dict[str, Any]]:
    extra = {"citations": st.none() | st.lists(_citation, max_size=2)} if citations else {}
    return st.fixed_dictionaries(
        {"type": _block_types},
        optional={"text": _maybe_text, "thinking": _text, "signature": st.just("s"), **extra},
    )


_anthropic_usage = _some(
    input_tokens=_count,
    output_tokens=_count,
    cache_creation_input_tokens=_count,
    cache_read_input_tokens=_count,
    cache_creation=st.none() | _some(ephemeral_5m_input_tokens=_count),
    output_tokens_details=st.none() | _some(thinking_tokens=_count),
)
_stop_reasons = st.sampled_from(
    ["end_turn", "max_tokens", "refusal", "model_context_window_exceeded", "stop_sequence", None]
)


@st.composite
def _anthropic_line(draw: st.DrawFn, citations: bool) -> dict[str, Any]:
    kind = draw(st.sampled_from(["succeeded", "succeeded", "errored", "expired", "canceled"]))
    result: dict[str, Any] = {"type": kind}
    if kind == "succeeded":
        result["message"] = draw(
            _some(
                id=st.just("msg_1"),
                content=st.none() | st.lists(_anthropic_block(citations), max_size=3),
                stop_reason=_stop_reasons,
                stop_sequence=st.none(),
                usage=st.none() | _anthropic_usage,
            )
        )
    elif kind == "errored":
        result["error"] = draw(
            _some(
                type=st.just("error"),
                error=st.none()
                | _some(type=st.sampled_from(["api_error", "invalid_request_error"]),
                        message=_maybe_text),
            )
        )
    return {"custom_id": draw(_ids), "result": result}


# -- Gemini: result-file lines -----------------------------------------------------------------

_gemini_part = _some(text=_maybe_text, thought=st.none() | st.booleans())
_gemini_candidate = _some(
    content=st.none() | _some(parts=st.none() | st.lists(_gemini_part, max_size=3), role=_text),
    finishReason=st.sampled_from(
        ["STOP", "MAX_TOKENS", "SAFETY", "RECITATION", "FINISH_REASON_UNSPECIFIED", None]
    ),
    index=st.just(0),
)
_gemini_response = _some(
    candidates=st.none() | st.lists(_gemini_candidate, max_size=2),
    promptFeedback=st.none() | _some(blockReason=st.none() | st.sampled_from(["SAFETY", "OTHER"])),
    usageMetadata=st.none()
    | _some(
        promptTokenCount=_count,
        candidatesTokenCount=_count,
        cachedContentTokenCount=_count,
        thoughtsTokenCount=_count,
        totalTokenCount=_count,
    ),
    modelVersion=st.just("gemini-2.5-flash"),
)


@st.composite
def _gemini_line(draw: st.DrawFn) -> dict[str, Any]:
    line: dict[str, Any] = {"key": draw(st.none() | _ids)}
    if draw(st.booleans()):
        line["response"] = draw(_gemini_response)
    else:
        line["error"] = draw(
            _some(code=st.sampled_from([1, 400, 499, 500, None]), message=_maybe_text)
        )
    return line


# -- files ---------------------------------------------------------------------------------------


@st.composite
def _file(draw: st.DrawFn, lines: st.SearchStrategy[dict[str, Any]]) -> bytes:
    """Result lines framed as a download: LF/CRLF, blank lines, maybe a line pyarrow refuses."""
    ascii_only = draw(st.booleans())
    texts = [json.dumps(x, ensure_ascii=ascii_only) for x in draw(st.lists(lines, max_size=8))]
    for _ in range(draw(st.integers(0, 2))):
        spot = draw(st.integers(0, len(texts)))
        texts.insert(spot, draw(st.sampled_from(["", "  ", "\t"])))
    odd = draw(st.sampled_from(["none", "none", "null line", "string count"]))
    if odd == "null line" and texts:
        texts.insert(draw(st.integers(1, len(texts))), draw(st.sampled_from(["null", " null"])))
    if odd == "string count":  # pyarrow refuses a string where a count is: the Polars path
        texts = [re.sub(r'("(?:prompt_tokens|input_tokens|promptTokenCount)": )(\d+)', r'\1"\2"', t)
                 for t in texts]
    sep = draw(st.sampled_from(["\n", "\r\n"]))
    head = draw(st.sampled_from(["", "", "\n", " \r\n"]))
    tail = draw(st.sampled_from(["", sep, sep + sep]))
    return (head + sep.join(texts) + tail).encode()


def _same(new: Any, old: Any, data: bytes) -> None:
    """``new(data)`` equals ``old(data)``, or both raise the same type of error."""
    try:
        want = old(data)
    except pl.exceptions.PolarsError as e:
        with pytest.raises(type(e)):
            new(data)
        return
    assert_frame_equal(new(data), want)


class _Facts(BaseModel):
    name: str
    year: int


_ONE_BLOCK = (
    b'{"custom_id":"a","result":{"type":"succeeded","message":{"content":[{"type":"text"}]}}}'
)
_TWO_BLOCKS = (
    b'{"custom_id":"a","result":{"type":"succeeded","message":{"content":[{"type":"thinking"},'
    b'{"type":"text","text":"x"},{"type":"text"}],"usage":{"input_tokens":1}}}}'
)


@settings(max_examples=150, deadline=None)
@given(data=_file(_openai_line()), responses=st.booleans())
@example(data=b'{"custom_id":"a","response":{"status_code":200,"body":{"choices":[{"message":'
         b'{"content":"x","refusal":"no"},"finish_reason":"stop"}]}}}', responses=False)
@example(data=b'{"custom_id":"a","response":{"status_code":200,"body":{"choices":[]}}}',
         responses=False)
def test_openai_decode_equals_the_previous_decoder(data: bytes, responses: bool) -> None:
    _same(lambda d: openai.decode_lines(d, responses=responses),
          lambda d: ref.openai_decode_lines(d, responses=responses), data)


@settings(max_examples=150, deadline=None)
@given(data=_file(_anthropic_line(citations=False)), responses=st.booleans())
@example(data=_ONE_BLOCK, responses=False)  # a text block without text: "" (one-block path)
@example(data=_TWO_BLOCKS, responses=False)  # the general path: thinking, then two texts
@example(data=_ONE_BLOCK.replace(b'"text"', b'"thinking"') + b"\n" + _ONE_BLOCK, responses=False)
# the one-block path with a redacted_thinking block alone, usage given: its reasoning
# tokens are unknown (null), not 0 (decode review: `== "thinking"` there went unseen)
@example(data=_ONE_BLOCK.replace(b'"text"}]', b'"redacted_thinking"}],"usage":{"output_tokens":5}'),
         responses=False)
def test_anthropic_decode_equals_the_previous_decoder(data: bytes, responses: bool) -> None:
    spec = RequestSpec(AnswerSchema(None), {}, keep_responses=responses)
    _same(lambda d: anthropic.decode_results(d, spec),
          lambda d: ref.anthropic_decode_results(d, spec), data)


@settings(max_examples=60, deadline=None)
@given(data=_file(_anthropic_line(citations=True)), responses=st.booleans())
def test_anthropic_decode_with_citations_equals_the_previous_decoder(
    data: bytes, responses: bool
) -> None:
    spec = RequestSpec(AnswerSchema(_Facts), {}, citations=True, keep_responses=responses)
    _same(lambda d: anthropic.decode_results(d, spec),
          lambda d: ref.anthropic_decode_results(d, spec), data)


@settings(max_examples=150, deadline=None)
@given(data=_file(_gemini_line()), responses=st.booleans())
@example(data=b'{"key":"a","response":{"candidates":[{"finishReason":"SAFETY","content":'
         b'{"parts":[{"text":"x"}]}}]}}', responses=False)
def test_gemini_decode_equals_the_previous_decoder(data: bytes, responses: bool) -> None:
    _same(lambda d: gemini.decode_lines(d, responses=responses),
          lambda d: ref.gemini_decode_lines(d, responses=responses), data)


@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.sampled_from([b"\n", b"\r", b" ", b"\t", b"  ", b"null", b"nul", b"l",
                                      b"{", b'"', b"\xff", b"\xc3", b"\x00", b"a"]),
                     max_size=12).map(b"".join))
@example(data=b"\n null")
@example(data=b"\n\tnull")
@example(data=b"\r\nnull")
@example(data=b"\n  null")
@example(data=b"\xff\nnull")
@example(data=b"}\rnull")
@example(data=b"\r\tnull")
@example(data=b"\r \rnull")
def test_the_null_line_guard_equals_the_regular_expression(data: bytes) -> None:
    # The guard searches the pattern as its two halves (after LF, after CR), by Arrow's RE2
    # over the bytes in place (downloads of 16 MiB or more; any size here) and by Python's
    # re (smaller ones): both answer as the whole pattern does, bytes not UTF-8 too.
    from unittest import mock

    from batchata_df.providers.base import _NULL_LINE

    expected = _NULL_LINE.search(data) is not None
    with mock.patch("batchata_df.providers.base._RE2_MIN_BYTES", 0):
        assert has_null_line(data) == expected
    with mock.patch("batchata_df.providers.base._RE2_MIN_BYTES", 1 << 30):
        assert has_null_line(data) == expected


def test_the_null_line_guard_outside_re2_s_sizes_is_python_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("batchata_df.providers.base._RE2_MIN_BYTES", 0)
    monkeypatch.setattr("batchata_df.providers.base._RE2_MAX_BYTES", 4)
    assert has_null_line(b'{"a":1}\n null') and not has_null_line(b'{"a":1}\nnul')
    monkeypatch.setattr("batchata_df.providers.base._RE2_MIN_BYTES", 1 << 20)
    monkeypatch.setattr("batchata_df.providers.base._RE2_MAX_BYTES", 1 << 30)
    assert has_null_line(b'{"a":1}\n null') and not has_null_line(b'{"a":1}\nnul')


def _decoders(provider: str) -> tuple[Any, Any]:
    """The provider's result decoder and its frozen reference (responses kept)."""
    spec = RequestSpec(AnswerSchema(None), {}, keep_responses=True)
    new = {"openai": lambda d: openai.decode_lines(d, responses=True),
           "gemini": lambda d: gemini.decode_lines(d, responses=True),
           "anthropic": lambda d: anthropic.decode_results(d, spec)}[provider]
    old = {"openai": lambda d: ref.openai_decode_lines(d, responses=True),
           "gemini": lambda d: ref.gemini_decode_lines(d, responses=True),
           "anthropic": lambda d: ref.anthropic_decode_results(d, spec)}[provider]
    return new, old


@pytest.mark.parametrize("block", [None, 4096])
@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_real_downloads_decode_as_before_on_the_arrow_path(
    provider: str, block: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lines as the emulator sends them (every field a real download has), a few hundred:
    # they take pyarrow's reader, in one block or in many, and the frame is the previous
    # decoder's (which read them in blocks of 1 MiB).
    from test_fast_paths import _RESULT_LINES

    if block is not None:
        monkeypatch.setattr("batchata_df.providers.base.ARROW_BLOCK_BYTES", block)

    data = b"\n".join([_RESULT_LINES[provider]] * 200) + b"\n"
    schemas = {"openai": openai._LINE_SCHEMA, "gemini": gemini._LINE_SCHEMA,
               "anthropic": anthropic._line_schema(anthropic._TEXT_BLOCK)}
    assert _read_jsonl_arrow(data, schemas[provider]) is not None
    new, old = _decoders(provider)
    assert_frame_equal(new(data), old(data))


_ANSWERED = {provider: lines.split(b"\n")[0] for provider, lines in {
    "openai": b'{"custom_id":"a","response":{"status_code":200,"body":{"choices":[{"message":'
              b'{"content":"{\\"x\\": 1}","refusal":null},"finish_reason":"stop"}],"usage":'
              b'{"prompt_tokens":7,"completion_tokens":3,"prompt_tokens_details":'
              b'{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":1}}}},'
              b'"error":null}',
    "anthropic": b'{"custom_id":"a","result":{"type":"succeeded","message":{"content":'
                 b'[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":'
                 b'{"input_tokens":3,"output_tokens":1}}}}',
    "gemini": b'{"key":"a","response":{"candidates":[{"content":{"parts":[{"text":"hi"}]},'
              b'"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,'
              b'"candidatesTokenCount":2}}}',
}.items()}
_RARE = [  # a line holding a field that answered lines leave null or out
    ("openai", b'{"custom_id":"r","response":{"status_code":200,"body":{"choices":[{"message":'
               b'{"content":null,"refusal":"I can\'t"},"finish_reason":"stop"}]}},"error":null}'),
    ("openai", b'{"custom_id":"r","response":{"status_code":500,"body":{"error":{"message":'
               b'"boom","type":"server_error","code":"x"}}},"error":null}'),
    ("openai", b'{"custom_id":"r","response":null,"error":{"code":"batch_expired",'
               b'"message":"expired"}}'),
    ("openai", b'{"custom_id":"r","response":null,"error":"boom"}'),  # no schema reads it
    ("anthropic", b'{"custom_id":"r","result":{"type":"errored","error":{"type":"error",'
                  b'"error":{"type":"api_error","message":"boom"}}}}'),
    ("anthropic", b'{"custom_id":"r","result":{"type":"errored","error":{}}}'),
    ("gemini", b'{"key":"r","error":{"code":400,"message":"bad"}}'),
    ("gemini", b'{"key":"r","response":{"promptFeedback":{"blockReason":"SAFETY"},'
               b'"usageMetadata":{"promptTokenCount":5}}}'),
]


@pytest.mark.parametrize("where", ["none", "first", "middle", "last"])
@pytest.mark.parametrize(("provider", "rare"), _RARE)
def test_a_download_is_read_with_the_usual_schema_and_the_whole_one_when_a_line_needs_it(
    provider: str, rare: bytes, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pyarrow reads first with the rare fields (errors, refusals, blocked prompts) typed
    # Null, which costs less per line; one line holding such a field makes it refuse, and
    # the whole schema is read. The frame is the previous decoder's either way, in one
    # block and in blocks of 4 KiB (the rare line past the first block).
    import pyarrow.json as pj

    monkeypatch.setattr("batchata_df.providers.base.ARROW_BLOCK_BYTES", 4096)
    lines = [_ANSWERED[provider].replace(b'"a"', f'"a{i}"'.encode(), 1) for i in range(120)]
    at = {"none": None, "first": 0, "middle": 60, "last": 119}[where]
    if at is not None:
        lines[at] = rare
    data = b"\n".join(lines) + b"\n"
    reads: list[bool] = []  # per read: whether the schema typed a field Null
    real = pj.read_json

    def spy(*args: Any, **kwargs: Any) -> Any:
        reads.append("null" in str(kwargs["parse_options"].explicit_schema))
        return real(*args, **kwargs)

    monkeypatch.setattr(pj, "read_json", spy)
    new, old = _decoders(provider)
    try:
        got: pl.DataFrame | None = new(data)
    except pl.exceptions.ComputeError:
        got = None
    monkeypatch.setattr(pj, "read_json", real)
    # the usual schema, once; with a rare line: refused, then the whole schema (which
    # refuses a string where the error object is too: then Polars' path, and its error)
    assert reads == ([True] if at is None else [True, False])
    if got is None:
        assert at is not None and b'"boom"}' in rare
        with pytest.raises(pl.exceptions.ComputeError):
            old(data)
    else:
        assert_frame_equal(got, old(data))


# -- downloads written into reused memory (DownloadBuffer) ---------------------------------------


def test_a_download_buffer_gives_each_download_s_bytes_whatever_came_before() -> None:
    buffer = DownloadBuffer()
    for chunks in ([b"0123456789" * 3], [b"abc", b"def"], [b"x"], [], [b"yz", b"", b"w"]):
        with buffer.receive() as sink:
            for chunk in chunks:
                assert sink.write(chunk) == len(chunk)
            assert sink.getvalue() == b"".join(chunks)
    # A view of the previous download kept past its block: the next one gets fresh memory,
    # whether it is longer (the buffer cannot grow) or shorter (it cannot shrink).
    for longer in (True, False):
        with buffer.receive() as sink:
            sink.write(b"0123456789")
            held = memoryview(sink.getvalue())
        with buffer.receive() as sink:
            sink.write(b"abcdefghijklmnop" if longer else b"abc")
            assert sink.getvalue() == (b"abcdefghijklmnop" if longer else b"abc")
        held.release()
    # Another thread downloading meanwhile gets memory of its own.
    with buffer.receive() as outer, buffer.receive() as inner:
        outer.write(b"outer")
        inner.write(b"in")
        assert (outer.getvalue(), inner.getvalue()) == (b"outer", b"in")
    buffer.release()
    with buffer.receive() as sink:
        sink.write(b"after")
        assert sink.getvalue() == b"after"


_MARKED = ["", "[[emulator:error]] ", "[[emulator:refusal]] ", "[[emulator:truncate]] ",
           "[[emulator:recitation]] ", "[[emulator:filter]] "]


def _jobs(model: str, n: int, tag: str) -> pl.DataFrame:
    return pl.DataFrame({
        "job_id": [f"{tag}{i}" for i in range(n)],
        "model": [model] * n,
        "prompt": [f"{_MARKED[i % len(_MARKED)]}{tag} prompt {i} " + "words " * (i % 7)
                   for i in range(n)],
        "system": [None] * n,
    })


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "openai"])
def test_results_downloaded_into_reused_memory_are_each_batch_s_own(emu, provider: str) -> None:
    # Three batches of different sizes downloaded one after the other through one provider
    # (so into the same memory, grown and shrunk), the first again at the end: each frame
    # is the previous decoder's frame of the batch's own download (fetched apart with the
    # SDK), verbatim lines included, and a frame is unchanged by the downloads after it.
    from batchata_df.providers import make_provider
    from batchata_df.providers.base import BatchTag, ProviderState

    model = {"anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash",
             "openai": "gpt-4.1-mini"}[provider]
    p = make_provider(provider)
    if provider == "gemini":
        p.inline_max_bytes = 0  # type: ignore[attr-defined]  # result files, not inlined
    spec = RequestSpec(AnswerSchema(None), {}, keep_responses=True)
    batches = []
    for n, tag in ((12, "a"), (60, "b"), (2, "c")):
        jobs = _jobs(model, n, tag)
        bid = p.submit(p.encode(jobs, spec), model=model,
                       tag=BatchTag("run", tag, time.time(), n_jobs=n, members=jobs["job_id"]))
        while p.poll(bid).state is ProviderState.RUNNING:
            time.sleep(0.05)
        batches.append(bid)

    def downloaded(bid: str) -> bytes:
        if provider == "anthropic":
            client = p.client.messages.batches.with_streaming_response  # type: ignore[attr-defined]
            with client.results(bid) as r:
                return bytes(r.read())
        return bytes(p.client.files.download(file=p._get(bid).dest.file_name))  # type: ignore[attr-defined]

    def reference(bid: str) -> pl.DataFrame:
        if provider == "openai":  # the output file, then the error file, decoded apart
            b = p.client.batches.retrieve(bid)  # type: ignore[attr-defined]
            return pl.concat([
                ref.openai_decode_lines(
                    p.client.files.content(fid).read() if fid else b"",  # type: ignore[attr-defined]
                    responses=True,
                )
                for fid in (b.output_file_id, b.error_file_id)
            ])
        data = downloaded(bid)
        if provider == "anthropic":
            return ref.anthropic_decode_results(data, spec)
        return ref.gemini_decode_lines(data, responses=True)

    first = p.results(batches[0], spec)
    first_rows = first.rows()
    frames = [first] + [p.results(bid, spec) for bid in batches[1:]] + [p.results(batches[0], spec)]
    assert first.rows() == first_rows  # the later downloads rewrote the memory, not the frame
    for frame, bid in zip(frames, [*batches, batches[0]], strict=True):
        assert_frame_equal(frame, reference(bid))
    assert [f.height for f in frames] == [12, 60, 2, 12]
    assert set(frames[0]["outcome"]) == {"succeeded", "errored"}, frames[0]["error"].to_list()
    p.close()
