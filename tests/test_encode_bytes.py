"""The request bytes stay what they were: encoders against main's, payloads against a join.

The encoders leave out of their expressions what no row of a batch uses (a system prompt,
prompt-cache marks, a cache key) and encode a batch's one model once; the payload of a
batch is joined by Polars into one buffer that the SDKs read as a file
(:class:`~batchata_df.providers.base.JoinedLines`). Neither may change a byte:

* every provider's ``encode`` gives, line for line, the lines of main's encoders
  (``tests/encode_reference.py``, frozen) over generated batches: prompts of any text,
  system prompts on none / some / every row, conversation histories, file contents, the
  prompt-cache columns in every combination, one model or several, parameters and
  reasoning efforts, answer schemas or text, citations;
* :class:`JoinedLines` reads, in pieces of any size, the bytes of
  ``prefix + sep.join(lines).encode() + suffix``;
* the bodies the emulator received (its SHA-256 of each, read from its log) are those
  bytes for the lines each provider was given to submit: OpenAI's uploaded file,
  Anthropic's ``requests`` body, Gemini's uploaded file.
"""

from __future__ import annotations

import gc
import hashlib
import json
import weakref
from typing import Any, Literal

import encode_reference as ref
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from batchata_df import batch_llm
from batchata_df.providers.anthropic import AnthropicProvider
from batchata_df.providers.base import JoinedLines, RequestSpec
from batchata_df.providers.gemini import GeminiProvider
from batchata_df.providers.openai import OpenAIProvider
from batchata_df.schema import AnswerSchema


class Answer(BaseModel):
    summary: str
    score: float
    label: Literal["pos", "neg", "neu"]


PROVIDERS: dict[str, Any] = {
    "anthropic": (lambda: AnthropicProvider(api_key="test-key"), ref.anthropic_encode),
    "openai": (lambda: OpenAIProvider(api_key="test-key"), ref.openai_encode),
    "gemini": (lambda: GeminiProvider(api_key="test-key"), ref.gemini_encode),
}
MODELS = {
    "anthropic": ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-3-5-haiku-latest"],
    "openai": ["gpt-4.1-mini", "o4-mini", "gpt-5.4-mini"],
    "gemini": ["gemini-2.5-flash", "gemini-3.5-flash", "gemini-2.0-flash"],
}
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
"""Any text: quotes, backslashes, control characters, non-ASCII (no lone surrogates,
which a Polars string cannot hold)."""
ROLE = st.sampled_from(["user", "assistant"])


def _blocks(provider: str, prompt: str, n_files: int) -> str:
    """A ``content_json`` as the files module writes it: file blocks, then the prompt."""
    if provider == "anthropic":
        files: list[dict[str, Any]] = [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                            "data": f"doc {i} \"q\""}}
            for i in range(n_files)
        ]  # fmt: skip
        blocks = [*files, {"type": "text", "text": prompt}]
    elif provider == "openai":
        files = [{"type": "file", "file": {"filename": f"f{i}.pdf", "file_data": "data:x"}}
                 for i in range(n_files)]  # fmt: skip
        blocks = [*files, {"type": "text", "text": prompt}]
    else:
        files = [{"inlineData": {"mimeType": "image/png", "data": "AAAA"}} for _ in range(n_files)]
        blocks = [*files, {"text": prompt}]
    return json.dumps(blocks, ensure_ascii=False, separators=(",", ":"))


@st.composite
def batches(draw: st.DrawFn, provider: str) -> tuple[pl.DataFrame, RequestSpec]:
    """A batch of jobs as the engine hands it to ``encode``, and the run's request spec."""
    n = draw(st.integers(0, 6))
    prompts = draw(st.lists(TEXT, min_size=n, max_size=n))
    ids = draw(st.lists(st.text("0123456789abcdef", min_size=1, max_size=24),
                        min_size=n, max_size=n))  # fmt: skip
    one_model = draw(st.booleans())
    models = (
        [draw(st.sampled_from(MODELS[provider]))] * n
        if one_model
        else draw(st.lists(st.sampled_from(MODELS[provider]), min_size=n, max_size=n))
    )
    system_kind = draw(st.sampled_from(["none", "some", "all"]))
    systems = [
        None if system_kind == "none" else draw(TEXT if system_kind == "all" else st.none() | TEXT)
        for _ in range(n)
    ]
    columns: dict[str, pl.Series] = {
        "job_id": pl.Series(ids, dtype=pl.String),
        "provider": pl.Series([provider] * n, dtype=pl.String),
        "model": pl.Series(models, dtype=pl.String),
        "prompt": pl.Series(prompts, dtype=pl.String),
        "system": pl.Series(systems, dtype=pl.String),
    }
    if draw(st.booleans()):
        turn = st.fixed_dictionaries({"role": ROLE, "content": TEXT})
        history = draw(st.lists(st.none() | st.lists(turn, max_size=2), min_size=n, max_size=n))
        columns["history"] = pl.Series(
            history, dtype=pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
        )
    if draw(st.booleans()):
        n_files = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
        columns["content_json"] = pl.Series(
            [_blocks(provider, p, k) for p, k in zip(prompts, n_files, strict=True)],
            dtype=pl.String,
        )
    if draw(st.booleans()):  # the prompt-cache plan's columns (batchata_df.caching)
        flags = st.none() | st.booleans()
        splits = [draw(st.none() | st.integers(0, len(p))) for p in prompts]
        columns["cache_split"] = pl.Series(splits, dtype=pl.Int64)
        columns["cache_system"] = pl.Series(draw(st.lists(flags, min_size=n, max_size=n)),
                                            dtype=pl.Boolean)  # fmt: skip
        columns["cache_files"] = pl.Series(draw(st.lists(flags, min_size=n, max_size=n)),
                                           dtype=pl.Boolean)  # fmt: skip
        columns["cache_key"] = pl.Series(
            draw(st.lists(st.none() | st.text("abc", min_size=1, max_size=4), min_size=n,
                          max_size=n)),
            dtype=pl.String,
        )  # fmt: skip
    params: dict[str, Any] = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "max_tokens": st.integers(1, 9000),
                "temperature": st.sampled_from([0.0, 0.5, 1.0]),
                "stop": st.sampled_from(["END", ["a", "b"]]),
                "reasoning_effort": st.sampled_from(["none", "low", "high"]),
            },
        )
    )
    schema = AnswerSchema(Answer if draw(st.booleans()) else None)
    citations = provider == "anthropic" and draw(st.booleans())
    spec = RequestSpec(schema=schema, params=params, citations=citations)
    return pl.DataFrame(columns), spec


def _outcome(encode: Any, provider: Any, jobs: pl.DataFrame, spec: RequestSpec) -> object:
    """The lines, or the error an encoder raised (a parameter a model refuses)."""
    try:
        return encode(provider, jobs, spec).to_list()
    except Exception as e:  # the same refusal either way
        return (type(e).__name__, str(e))


@pytest.mark.parametrize("name", list(PROVIDERS))
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_encoded_lines_are_main_s_lines_byte_for_byte(name: str, data: st.DataObject) -> None:
    make, reference = PROVIDERS[name]
    provider = make()
    jobs, spec = data.draw(batches(name))
    expected = _outcome(reference, provider, jobs, spec)
    got = _outcome(type(provider).encode, provider, jobs, spec)
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(TEXT, max_size=8),
    sep=st.sampled_from([",", "\n"]),
    prefix=st.binary(max_size=14),
    suffix=st.binary(max_size=3),
    sizes=st.lists(st.integers(-1, 40), min_size=1, max_size=12),
    chunked=st.booleans(),
    piece=st.none() | st.integers(1, 60),
)
def test_joined_lines_read_the_bytes_of_a_plain_join(
    lines: list[str],
    sep: str,
    prefix: bytes,
    suffix: bytes,
    sizes: list[int],
    chunked: bool,
    piece: int | None,
) -> None:
    """In reads of any size, after seeks anywhere, with lines joined a few at a time."""
    series = pl.Series(lines, dtype=pl.String)
    if chunked and len(lines) > 1:  # lines of several chunks, as a batch sliced from a frame
        series = pl.concat([series.head(1), series.tail(len(lines) - 1)], rechunk=False)
    expected = prefix + sep.join(lines).encode() + suffix
    body = JoinedLines(series, sep, prefix=prefix, suffix=suffix, piece_bytes=piece)
    assert len(body) == len(expected)
    got = b""
    for size in sizes:
        assert body.tell() == min(len(got), len(expected))
        got += body.read(size)
    got += body.read()
    assert got == expected
    assert body.read(5) == b""
    assert body.seek(0) == 0 and body.read() == expected
    assert body.seek(-len(suffix), 2) == len(expected) - len(suffix) and body.read() == suffix
    buffer = bytearray(len(expected) + 3)
    body.seek(0)
    assert body.readinto(buffer) == len(expected) and bytes(buffer[: len(expected)]) == expected
    for at in sorted({0, len(expected) // 2, len(expected) // 3, len(expected)}, reverse=True):
        assert body.seek(at) == at and body.read(7) == expected[at : at + 7]
        assert body.seek(at // 2) == at // 2 and body.read() == expected[at // 2 :]


def test_joined_lines_are_freed_without_the_cycle_collector() -> None:
    """A body read, half read or not read at all is freed when its last reference goes:
    a reference cycle (its piece generator holding it) kept batches' lines alive."""
    lines = pl.Series([f'{{"n":{i}}}' for i in range(50)])
    gc.disable()
    try:
        for read in (None, 40, -1):
            body = JoinedLines(lines, "\n", piece_bytes=30)
            if read is not None:
                body.read(read)
            gone = weakref.ref(body)
            del body
            assert gone() is None
    finally:
        gc.enable()


def test_joined_lines_refuse_a_null_line() -> None:
    with pytest.raises(ValueError, match="null"):
        JoinedLines(pl.Series(["{}", None]), "\n")


# ---- what the emulator received

SUBMITTED: dict[str, tuple[bytes, bytes, str]] = {
    "openai": (b"", b"", "\n"),
    "anthropic": (b'{"requests":[', b"]}", ","),
    "gemini": (b"", b"", "\n"),
}
MODEL = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
SUFFIX = {"openai": "/files", "anthropic": "/messages/batches", "gemini": "/files"}
LONG = "the product arrived on time and works well, naïve café ✓ \"q\" \\ \t " * 12


@pytest.mark.parametrize("name", list(PROVIDERS))
@pytest.mark.parametrize("kind", ["plain", "system_some", "cached_prefix"])
def test_the_bodies_the_emulator_received_are_the_joined_lines(
    emu: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, name: str, kind: str
) -> None:
    """Payloads over 64 KB (the HTTP client's read size), in batches of several sizes."""
    from batchata_df.providers import anthropic, gemini, openai

    if kind == "plain":  # lines joined 7,000 bytes at a time: many pieces per read
        monkeypatch.setattr(JoinedLines, "PIECE_BYTES", 7_000)

    cls = {"openai": openai.OpenAIProvider, "anthropic": anthropic.AnthropicProvider,
           "gemini": gemini.GeminiProvider}[name]  # fmt: skip
    monkeypatch.setattr(gemini.GeminiProvider, "inline_max_bytes", 0)  # through a file
    sent: list[list[str]] = []
    submit = cls.submit

    def recording(self: Any, lines: pl.Series, **kwargs: Any) -> str:
        sent.append(lines.to_list())
        return submit(self, lines, **kwargs)

    monkeypatch.setattr(cls, "submit", recording)
    emu.configure(log_bodies=True)
    n = 260
    prompts = [f"{i}: {LONG}" if kind != "cached_prefix" else f"{LONG * 8} {i}" for i in range(n)]
    frame = pl.DataFrame({"text": prompts, "sys": [None if i % 3 else "Be terse ✓." for i in
                                                   range(n)]})  # fmt: skip
    out = frame.pipe(
        batch_llm, schema=Answer, model=MODEL[name], prompt="{text}",
        system=pl.col("sys") if kind == "system_some" else None,
        state=str(tmp_path / "state"), items_per_batch=97, progress=False,
    )  # fmt: skip
    assert (out["_status"] == "completed").all()
    prefix, suffix, sep = SUBMITTED[name]
    expected = [
        hashlib.sha256(prefix + sep.join(lines).encode() + suffix).hexdigest() for lines in sent
    ]
    received = [
        e["sha256"] for e in emu.log() if e["method"] == "POST" and e["path"].endswith(SUFFIX[name])
        and "sha256" in e and (name != "gemini" or "lines" in e or "body_text" in e)
    ]  # fmt: skip
    assert len(sent) == 3 and sorted(received) == sorted(expected)
    assert max(len(sep.join(lines)) for lines in sent) > 65_536
