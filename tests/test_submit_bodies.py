"""The request bodies of a submit: their bytes in pieces, their framing, and a resend.

A batch's lines are joined into the request body a piece at a time
(:mod:`batchata_df.providers.base`): OpenAI and Gemini upload a file that the SDKs read
(:class:`~batchata_df.providers.base.JoinedLines`), Anthropic sends an iterable of whole
pieces (:class:`~batchata_df.providers.base.JoinedChunks`) with its length. Checked here:

* :class:`JoinedChunks` gives the bytes of a plain join, one item per piece, as often as
  it is iterated;
* Anthropic's create carries a ``Content-Length`` (never chunked transfer encoding) and is
  sent as those pieces;
* a body sent again, by the SDK's own retry (OpenAI's upload, Gemini's chunk upload), by
  the provider's create loop (Anthropic) or by a new submit after a dropped connection,
  carries the same bytes as the first attempt, which are the lines joined (the
  emulator's SHA-256 of every attempt, from its log).
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
from batchata_df.providers import make_provider
from batchata_df.providers.base import BatchTag, JoinedChunks, JoinedLines, RequestSpec
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
    # One item per piece of lines (the prefix with the first, the suffix with the last),
    # none empty.
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
    assert len(items) == math.ceil(lines.len() / (100_000 // (sum(items) // lines.len())))
    assert len(items) >= 3 and min(items[:-1]) > 65_536  # the last: what is left
    assert _received(emu, "anthropic") == [(200, expected)]
