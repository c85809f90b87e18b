"""The request bodies of a submit: their bytes in pieces, their framing, and a resend.

A batch's lines are joined into the request body a piece at a time
(:mod:`batchata_df.providers.base`): OpenAI and Gemini upload a file that the SDKs read
(:class:`~batchata_df.providers.base.JoinedLines`), Anthropic sends an iterable of whole
pieces (:class:`~batchata_df.providers.base.JoinedChunks`) with its length. Checked here:

* :class:`JoinedChunks` gives the bytes of a plain join, one item per piece, as often as
  it is iterated;
* lines laid out by :func:`~batchata_df.providers.base.request_lines` (each followed by
  the separator in Polars' buffers) are sent from those buffers, without a join: the
  bodies are still the bytes of a plain join however the lines were sliced, filtered,
  reordered or concatenated (any that cannot be, short lines among them, are joined), and
  a batch of every provider's encoded lines is sent without one;
* Anthropic's create carries a ``Content-Length`` (never chunked transfer encoding) and is
  sent as those pieces;
* a body sent again, by the SDK's own retry (OpenAI's upload, Gemini's chunk upload), by
  the provider's create loop (Anthropic) or by a new submit after a dropped connection,
  carries the same bytes as the first attempt, which are the lines joined (the
  emulator's SHA-256 of every attempt, from its log);
* the bytes the emulator received are the plain join whatever the piece size (three
  sizes, three providers), and OpenAI's multipart upload reads its body a whole piece at
  a time (not httpx's 64 KiB), set on that request's field alone.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from batchata_df.errors import ProviderError
from batchata_df.providers import base, make_provider
from batchata_df.providers.base import (
    BatchTag,
    JoinedChunks,
    JoinedLines,
    RequestSpec,
    request_lines,
)
from batchata_df.schema import AnswerSchema

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(TEXT, max_size=8),
    sep=st.sampled_from([",", "\n"]),
    prefix=st.binary(max_size=14),
    suffix=st.binary(max_size=3),
    chunked=st.booleans(),
    piece=st.none() | st.integers(1, 60),
)
def test_joined_chunks_are_the_bytes_of_a_plain_join_one_item_a_piece(
    lines: list[str], sep: str, prefix: bytes, suffix: bytes, chunked: bool, piece: int | None
) -> None:
    series = pl.Series(lines, dtype=pl.String)
    if chunked and len(lines) > 1:  # lines of several chunks, as a batch sliced from a frame
        series = pl.concat([series.head(1), series.tail(len(lines) - 1)], rechunk=False)
    expected = prefix + sep.join(lines).encode() + suffix
    body = JoinedChunks(series, sep, prefix=prefix, suffix=suffix, piece_bytes=piece)
    items = list(body)
    assert len(body) == len(expected)
    assert b"".join(items) == expected
    assert all(type(item) is bytes and item for item in items)
    assert list(body) == items  # a second iteration (a resend) starts from the first byte
    if base._line_runs(series, sep) is not None:  # a few long lines: sent as they lie
        size = piece or JoinedLines.PIECE_BYTES
        assert all(size <= len(item) <= max(size, len(prefix)) + 1 for item in items[:-1])
        return
    # Joined: one item per piece of lines (the prefix with the first, the suffix with the
    # last), none empty.
    per_line = max(1, (len(expected) - len(prefix) - len(suffix)) // len(lines)) if lines else 1
    rows = max(1, (piece or JoinedLines.PIECE_BYTES) // per_line)
    pieces = [
        (prefix if not start else sep.encode()) + sep.join(lines[start : start + rows]).encode()
        + (suffix if start + rows >= len(lines) else b"")
        for start in range(0, len(lines), rows)
    ] or [prefix + suffix]  # fmt: skip
    assert items == [p for p in pieces if p]


def test_joined_chunks_refuse_a_null_line() -> None:
    with pytest.raises(ValueError, match="null"):
        JoinedChunks(pl.Series(["{}", None]), ",")


LINE_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
"""Any text, the empty string and the separators among it (a line of at most 12 bytes is
inlined in its view by Polars, so a batch with one is joined instead)."""


@st.composite
def laid_out_lines(draw: st.DrawFn, sep: str) -> tuple[pl.Series, list[str]]:
    """Lines from :func:`request_lines`, then sliced, filtered, reordered or concatenated."""
    texts = draw(st.lists(LINE_TEXT, max_size=40))
    short = draw(st.booleans())  # else long enough never to be inlined

    def lines_of(texts: list[str]) -> pl.Series:
        line = pl.col("t") if short else pl.concat_str([pl.lit('{"custom_id":"x-'), pl.col("t")])
        return request_lines(pl.DataFrame({"t": texts}, schema={"t": pl.String}), line, sep)

    series = lines_of(texts)
    how = draw(st.sampled_from(["as is", "slice", "filter", "reverse", "concat", "repeat"]))
    n = series.len()
    if how == "slice" and n:
        start = draw(st.integers(0, n - 1))
        series = series.slice(start, draw(st.integers(0, n - start)))
    elif how == "filter":
        series = series.filter(pl.Series(draw(st.lists(st.booleans(), min_size=n, max_size=n)),
                                         dtype=pl.Boolean))  # fmt: skip
    elif how == "reverse":
        series = series.reverse()
    elif how == "concat":  # two encodes, as two input chunks: several chunks, or rechunked
        other = lines_of(draw(st.lists(LINE_TEXT, max_size=10)))
        series = pl.concat([series, other], rechunk=draw(st.booleans()))
    elif how == "repeat" and n:  # the same line twice (one place in the buffer)
        series = series.gather([0, *range(n), 0])
    return series, series.to_list()


@settings(max_examples=400, deadline=None)
@given(
    data=st.data(),
    sep=st.sampled_from([",", "\n"]),
    prefix=st.binary(max_size=14),
    suffix=st.binary(max_size=3),
    sizes=st.lists(st.integers(-1, 200), min_size=1, max_size=8),
    piece=st.none() | st.integers(1, 300),
)
def test_lines_sent_as_they_lie_are_the_bytes_of_a_plain_join(
    data: st.DataObject, sep: str, prefix: bytes, suffix: bytes, sizes: list[int],
    piece: int | None,
) -> None:
    """Whichever way the body is made (from Polars' buffers or joined), the same bytes."""
    series, lines = data.draw(laid_out_lines(sep))
    expected = prefix + sep.join(lines).encode() + suffix
    chunks = JoinedChunks(series, sep, prefix=prefix, suffix=suffix, piece_bytes=piece)
    items = list(chunks)
    assert len(chunks) == len(expected) and b"".join(items) == expected
    assert all(type(item) is bytes and item for item in items) and list(chunks) == items
    body = JoinedLines(series, sep, prefix=prefix, suffix=suffix, piece_bytes=piece)
    assert len(body) == len(expected)
    got = b"".join(body.read(size) for size in sizes) + body.read()
    assert got == expected
    at = len(expected) // 3
    assert body.seek(at) == at and body.read() == expected[at:]  # a seek back: again
    assert series.to_list() == lines  # the lines themselves are what they were


def test_request_lines_are_the_lines_and_lie_back_to_back() -> None:
    """Long lines: one run a data buffer; any short line, or another separator: joined."""
    texts = [f"{i}: naïve ✓ {',' * (i % 3)}\n" * (1 + i % 40) for i in range(3_000)]
    jobs = pl.DataFrame({"t": texts})
    line = pl.concat_str([pl.lit('{"custom_id":"'), pl.col("t"), pl.lit('"}')])
    expected = jobs.select(line).to_series()
    for sep in (",", "\n"):
        lines = request_lines(jobs, line, sep)
        assert lines.equals(expected, check_names=False)
        runs = base._line_runs(lines, sep)
        assert runs is not None and len(runs) < 20
        body = sep.encode().join(bytes(run) for run in runs)
        assert body == sep.join(expected.to_list()).encode()
        other = "\n" if sep == "," else ","
        assert base._line_runs(lines, other) is None  # what lies between is not its separator
    with_short = request_lines(pl.DataFrame({"t": [*texts[:5], "ab"]}), pl.col("t"), ",")
    assert base._line_runs(with_short, ",") is None  # "ab" is inlined in its view
    # Two encodes concatenated (big enough for Polars to keep their buffers): the
    # second's first line starts one byte after where the first's last line ends, but in
    # another buffer. Not one run.
    ids = [f"{i:06d}" + "x" * 80 for i in range(20_000)]
    first = request_lines(pl.DataFrame({"t": ids}), line, ",")
    twice = pl.DataFrame({"t": [*ids, *("y" + t[1:] for t in ids)]})
    both = pl.concat([first, request_lines(twice, line, ",").slice(len(ids))], rechunk=False)
    runs = base._line_runs(both, ",")
    assert runs is not None
    assert b",".join(bytes(run) for run in runs) == ",".join(both.to_list()).encode()


@pytest.mark.parametrize("name", ["openai", "anthropic", "gemini"])
def test_an_encoded_batch_is_sent_without_a_join(
    emu: Any, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Each provider's encoded lines, sliced as the planner slices a batch, go to the
    emulator from Polars' buffers: no ``Series.str.join`` of them, the same bytes."""
    from batchata_df.providers.gemini import GeminiProvider

    monkeypatch.setattr(JoinedLines, "PIECE_BYTES", 50_000)
    monkeypatch.setattr(GeminiProvider, "inline_max_bytes", 0)  # through a file
    emu.configure(log_bodies=True)
    encoded, _ = _lines(name, 400)
    lines = encoded.slice(37, 300)  # a batch of the planner: a slice of the encoded chunk
    prefix, suffix, sep = FRAMING[name]
    expected = hashlib.sha256(prefix + sep.join(lines.to_list()).encode() + suffix).hexdigest()
    joins: list[int] = []
    view = base._utf8_view  # the joined path's only way to the bytes of a join

    def counted(one: pl.Series) -> memoryview:
        joins.append(1)
        return view(one)

    monkeypatch.setattr(base, "_utf8_view", counted)
    make_provider(name).submit(lines, model=MODEL[name], tag=_tag("b1"))
    assert _received(emu, name) == [(200, expected)]
    assert joins == []


class Answer(BaseModel):
    label: str


SPEC = RequestSpec(AnswerSchema(Answer), {"max_tokens": 50})
MODEL = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
FRAMING: dict[str, tuple[bytes, bytes, str]] = {  # prefix, suffix, separator
    "openai": (b"", b"", "\n"),
    "anthropic": (b'{"requests":[', b"]}", ","),
    "gemini": (b"", b"", "\n"),
}
BODY_PATH = {  # where each provider's body goes (searched in the path and ?query)
    "openai": r"/openai/v1/files$",
    "anthropic": r"/anthropic/v1/messages/batches$",
    "gemini": r"/files\?.*upload_id=",  # the resumable upload's bytes, not its start
}


def _lines(name: str, n: int = 300) -> tuple[pl.Series, str]:
    """``n`` encoded request lines of ``name`` (over 64 KiB together) and their body's hash."""
    provider = make_provider(name)
    jobs = pl.DataFrame(
        {
            "job_id": [f"{i:032x}" for i in range(n)],
            "provider": [name] * n,
            "model": [MODEL[name]] * n,
            "prompt": [f"{i}: naïve café ✓ \"q\" \\ \t " * 30 for i in range(n)],
            "system": [None] * n,
        },
        schema_overrides={"system": pl.String},
    )
    lines = provider.encode(jobs, SPEC)
    prefix, suffix, sep = FRAMING[name]
    body = prefix + sep.join(lines.to_list()).encode() + suffix
    assert len(body) > 4 * 65_536
    return lines, hashlib.sha256(body).hexdigest()


def _tag(key: str) -> BatchTag:
    return BatchTag(run_id="run-submit-bodies", batch_key=key, created_after=time.time())


def _received(emu: Any, name: str) -> list[tuple[int, str]]:
    """(status, SHA-256) of every body of ``name``'s submit that reached the emulator."""
    import re

    pattern = re.compile(BODY_PATH[name])
    out = []
    for e in emu.log():
        target = e["path"] + (f"?{e['query']}" if e.get("query") else "")
        if e["method"] == "POST" and pattern.search(target) and "sha256" in e:
            out.append((e["status"], e["sha256"]))
    return out


@pytest.mark.parametrize(
    ("name", "fault"),
    [
        ("openai", {"status": 500}),
        ("openai", {"status": 429, "retry_after_ms": 10}),
        ("openai", {"action": "disconnect"}),
        ("anthropic", {"status": 429, "retry_after_ms": 10}),
        ("anthropic", {"status": 500}),
        ("anthropic", {"action": "disconnect"}),
        ("gemini", {"status": 500}),
        ("gemini", {"action": "disconnect"}),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()),
)
def test_a_body_sent_again_after_a_fault_is_the_same_bytes(
    emu: Any, monkeypatch: pytest.MonkeyPatch, name: str, fault: dict[str, Any]
) -> None:
    """Bodies of many pieces (7,000 bytes) read in many reads, sent twice or more."""
    from batchata_df.providers.anthropic import AnthropicProvider
    from batchata_df.providers.gemini import GeminiProvider

    monkeypatch.setattr(JoinedLines, "PIECE_BYTES", 7_000)
    monkeypatch.setattr(GeminiProvider, "inline_max_bytes", 0)  # through a file
    monkeypatch.setattr(AnthropicProvider, "create_retry_base_s", 0.01)
    emu.configure(log_bodies=True)
    lines, expected = _lines(name)
    emu.inject_fault(method="POST", path_regex=BODY_PATH[name], times=1, **fault)
    provider = make_provider(name)
    try:
        provider.submit(lines, model=MODEL[name], tag=_tag("b1"))
    except ProviderError:
        # Only Gemini's dropped upload is not retried inside the SDK: the engine submits
        # the batch again, a new body from the same lines.
        assert (name, fault.get("action")) == ("gemini", "disconnect")
        provider.submit(lines, model=MODEL[name], tag=_tag("b1"))
    received = _received(emu, name)
    failed = 0 if fault.get("action") == "disconnect" else fault["status"]
    assert [status for status, _ in received] == [failed, 200]
    assert [sha for _, sha in received] == [expected, expected]


def test_anthropic_sends_its_body_in_whole_pieces_with_its_length(
    emu: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a file read 64 KiB at a time, and not in chunked transfer encoding."""
    import anthropic
    import httpx2

    monkeypatch.setattr(JoinedLines, "PIECE_BYTES", 100_000)
    emu.configure(log_bodies=True)
    lines, expected = _lines("anthropic")
    items: list[int] = []
    iterate = JoinedChunks.__iter__

    def counted(self: JoinedChunks) -> Any:
        for item in iterate(self):
            items.append(len(item))
            yield item

    monkeypatch.setattr(JoinedChunks, "__iter__", counted)
    headers: list[httpx2.Headers] = []
    provider = make_provider("anthropic")
    provider._client = anthropic.Anthropic(  # type: ignore[attr-defined]  # a hooked client
        api_key="test-key", base_url=emu.anthropic_base_url,
        http_client=httpx2.Client(event_hooks={"request": [lambda r: headers.append(r.headers)]}),
    )  # fmt: skip
    provider.submit(lines, model=MODEL["anthropic"], tag=_tag("b1"))
    sent = [h for h in headers if h.get("content-type") == "application/json"
            and "content-length" in h and int(h["content-length"]) > 65_536]  # fmt: skip
    assert len(sent) == 1
    assert int(sent[0]["content-length"]) == sum(items) and "transfer-encoding" not in sent[0]
    # The lines lie back to back in Polars' buffers (request_lines): 100,000 bytes an item.
    assert len(items) == math.ceil(sum(items) / 100_000) >= 3
    assert all(100_000 <= item <= 100_001 for item in items[:-1])  # the last: what is left
    assert _received(emu, "anthropic") == [(200, expected)]


@pytest.mark.parametrize("piece", [4_093, 65_536, None], ids=["4093", "65536", "default"])
@pytest.mark.parametrize("name", ["openai", "anthropic", "gemini"])
def test_the_body_received_is_the_plain_join_at_any_piece_size(
    emu: Any, monkeypatch: pytest.MonkeyPatch, name: str, piece: int | None
) -> None:
    """The bytes the emulator received do not depend on the piece size: a size that
    divides nothing, httpx's own read size, and the default (1 MiB: a body of more than
    two pieces), each through the provider's SDK as it sends the body."""
    from batchata_df.providers.gemini import GeminiProvider

    if piece is not None:
        monkeypatch.setattr(JoinedLines, "PIECE_BYTES", piece)
    monkeypatch.setattr(GeminiProvider, "inline_max_bytes", 0)  # through a file
    emu.configure(log_bodies=True)
    lines, expected = _lines(name, 2_600)
    assert len(JoinedLines(lines, "\n")) > 2 * (1 << 20)
    make_provider(name).submit(lines, model=MODEL[name], tag=_tag("b1"))
    assert _received(emu, name) == [(200, expected)]


@pytest.mark.parametrize("piece", [7_000, None], ids=["7000", "default"])
def test_openai_reads_its_upload_a_whole_piece_at_a_time(
    emu: Any, monkeypatch: pytest.MonkeyPatch, piece: int | None
) -> None:
    """httpx's multipart encoder reads the body in pieces, not 64 KiB at a time (each read
    is one write to the socket), and the file's other uploads keep httpx's own size."""
    import httpx2._multipart

    if piece is not None:
        monkeypatch.setattr(JoinedLines, "PIECE_BYTES", piece)
    size = piece or JoinedLines.PIECE_BYTES
    emu.configure(log_bodies=True)
    lines, expected = _lines("openai", 2_600)
    reads: list[tuple[int, int]] = []  # (size asked, bytes returned)
    read = JoinedLines.read

    def counted(self: JoinedLines, n: int | None = -1) -> bytes:
        data = read(self, n)
        reads.append((-1 if n is None else n, len(data)))
        return data

    monkeypatch.setattr(JoinedLines, "read", counted)
    provider = make_provider("openai")
    provider.submit(lines, model=MODEL["openai"], tag=_tag("b1"))
    total = sum(got for _, got in reads)
    assert {asked for asked, _ in reads} == {size}
    assert [got for _, got in reads[:-2]] == [size] * (len(reads) - 2)
    assert len(reads) == math.ceil(total / size) + 1 >= 3  # the last read: b"", the end
    assert _received(emu, "openai") == [(200, expected)]
    # Set on the request's own field: httpx's class-wide size, for any other upload, is
    # untouched.
    assert httpx2._multipart.FileField.CHUNK_SIZE == 64 * 1024
