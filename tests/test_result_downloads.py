"""Result downloads broken off midway (eleventh pass): fetched again, then a ProviderError.

OpenAI's result files and Anthropic's results are streamed into the memory the previous
download used (``DownloadBuffer``). The SDK retries what happens before a streamed body,
not the body: :func:`~batchata_df.providers.base.streamed_download` fetches a body that
stops midway again from the start (as the SDK did for OpenAI's ``files.content().read()``,
whose body it read inside its retries), then raises ``ProviderError``, which the engine
retries later. Before, Anthropic's broken-off body escaped as ``httpx2.RemoteProtocolError``.
The emulator's fault action ``"cut"`` sends a real answer's headers and half its body, then
drops the connection. Every frame is compared with the frozen decoders of
``tests/decode_reference.py`` on the same batch downloaded apart by the SDK.

A download can also end early without any error: ``"cut_clean"`` sends the half body
close-delimited (no ``content-length``) and ends the connection in order, so the SDK
reads a shorter body. Its cut-off last line escaped as a raw Polars ``ComputeError``; it
is a ``ProviderError`` naming the batch and file (``decoded_download``), for every
provider's download, and a run leaves such a batch's rows pending (never failed, never
sent again) until a later call reads the file whole.

No test waits: the waits between attempts are recorded (``waits``), not slept.
"""

from __future__ import annotations

import gc
import re
import time
import tracemalloc
import types
from typing import Any

import decode_reference as ref
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import BaseModel

from batchata_df import ProviderUnavailableWarning, batch_llm
from batchata_df.errors import ProviderError
from batchata_df.providers import base, make_provider
from batchata_df.providers.base import BatchTag, DownloadBuffer, ProviderState, RequestSpec
from batchata_df.providers.gemini import GeminiProvider
from batchata_df.schema import AnswerSchema

MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5",
          "gemini": "gemini-2.5-flash"}
DOWNLOADS = {"openai": r"/openai/v1/files/[^/]+/content",
             "anthropic": r"/messages/batches/[^/]+/results",
             "gemini": r"(:download|/download/)"}
CREATES = {"openai": r"^/openai/v1/batches$", "anthropic": r"/messages/batches$",
           "gemini": r":batchGenerateContent$"}
_MARKED = ["", "[[emulator:error]] ", "[[emulator:refusal]] ", "[[emulator:truncate]] "]


@pytest.fixture(autouse=True)
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits ``streamed_download`` asks for between attempts, in order; none is slept.

    Only the ``time`` that ``providers/base.py`` sees is replaced: the SDKs' and the
    engine's own waits are untouched.
    """
    asked: list[float] = []
    fake = types.SimpleNamespace(**{k: v for k, v in vars(time).items() if not k.startswith("__")})
    fake.sleep = asked.append
    monkeypatch.setattr(base, "time", fake)
    return asked


@pytest.fixture(autouse=True)
def _gemini_through_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    # Gemini returns a small batch's results inline in the batch; every batch here has a
    # result file to download.
    monkeypatch.setattr(GeminiProvider, "inline_max_bytes", 10)


def _batch(p: Any, provider: str, n: int, *, marked: bool = True) -> str:
    """A finished batch of ``n`` requests; ``marked``: some answer errors, refusals, cuts.

    Unmarked, every request succeeds, so an OpenAI batch has no error file: one download.
    """
    model = MODELS[provider]
    marks = _MARKED if marked else [""]
    spec = RequestSpec(AnswerSchema(None), {})
    jobs = pl.DataFrame({
        "job_id": [f"j{i}" for i in range(n)],
        "model": [model] * n,
        "prompt": [f"{marks[i % len(marks)]}prompt {i} " + "words " * (i % 9)
                   for i in range(n)],
        "system": [None] * n,
    })
    bid: str = p.submit(p.encode(jobs, spec), model=model,
                        tag=BatchTag("run", "k", time.time(), n_jobs=n, members=jobs["job_id"]))
    while p.poll(bid).state is ProviderState.RUNNING:
        time.sleep(0.05)
    return bid


def _reference(p: Any, provider: str, bid: str, spec: RequestSpec) -> pl.DataFrame:
    """The batch's frame by the frozen decoders, from the SDK's own (unbroken) download."""
    if provider == "anthropic":
        with p.client.messages.batches.with_streaming_response.results(bid) as r:
            return ref.anthropic_decode_results(bytes(r.read()), spec)
    if provider == "gemini":
        name = p.client.batches.get(name=bid).dest.file_name
        data = p.client.files.download(file=name)
        return ref.gemini_decode_lines(data, responses=spec.keep_responses)
    b = p.client.batches.retrieve(bid)
    frames = [
        ref.openai_decode_lines(p.client.files.content(fid).read() if fid else b"",
                                responses=spec.keep_responses)
        for fid in (b.output_file_id, b.error_file_id)
    ]
    return pl.concat(frames, how="vertical")


def _downloads(emu: Any, provider: str) -> list[dict[str, Any]]:
    return [e for e in emu.log() if re.search(DOWNLOADS[provider], e["path"])]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_download_cut_midway_is_fetched_again_into_the_same_memory(emu, provider: str) -> None:
    # The second attempt is written from the start of the memory the first one half filled:
    # the frame is the batch's own, verbatim lines included.
    p = make_provider(provider)
    spec = RequestSpec(AnswerSchema(None), {}, keep_responses=True)
    bid = _batch(p, provider, 40)
    p.results(bid, spec)  # the memory holds a whole download before the broken one
    emu.clear_log()
    emu.inject_fault(method="GET", path_regex=DOWNLOADS[provider], action="cut", times=1)
    got = p.results(bid, spec)
    assert emu.faults() == []
    assert [e["status"] for e in _downloads(emu, provider)][:2] == [200, 200]
    assert got.height == 40 and set(got["outcome"]) == {"succeeded", "errored"}
    assert_frame_equal(got, _reference(p, provider, bid, spec))
    p.close()


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_download_cut_every_time_is_a_provider_error_and_the_next_one_whole(
    emu, provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = make_provider(provider)
    monkeypatch.setattr(type(p), "sdk_max_retries", 2)
    spec = RequestSpec(AnswerSchema(None), {})
    bid = _batch(p, provider, 12)
    emu.clear_log()
    emu.inject_fault(method="GET", path_regex=DOWNLOADS[provider], action="cut", times=None)
    with pytest.raises(ProviderError, match="failed to download") as caught:
        p.results(bid, spec)
    assert not caught.value.permanent  # the engine tries again later
    assert "RemoteProtocolError" in str(caught.value)
    assert len(_downloads(emu, provider)) == 3  # the first attempt and the SDK's 2 retries
    emu.clear_faults()
    assert_frame_equal(p.results(bid, spec), _reference(p, provider, bid, spec))
    p.close()


class _A(BaseModel):
    label: str


def test_a_run_whose_download_is_cut_past_the_retries_is_collected_later(
    emu, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No retry inside the provider: the cut download is the engine's ProviderError, tried
    # again at the next poll; the run ends with every row answered, as an unbroken run.
    from batchata_df.providers.openai import OpenAIProvider

    monkeypatch.setattr(OpenAIProvider, "sdk_max_retries", 0)
    df = pl.DataFrame({"t": [f"review {i}" for i in range(6)]})
    kwargs: dict[str, Any] = {"schema": _A, "model": "gpt-4.1-mini", "prompt": "{t}"}
    whole = df.pipe(batch_llm, state=tmp_path / "whole", **kwargs)
    emu.clear_log()
    emu.inject_fault(method="GET", path_regex=DOWNLOADS["openai"], action="cut", times=1)
    out = df.pipe(batch_llm, state=tmp_path / "cut", **kwargs)
    assert emu.faults() == []
    assert out["_status"].to_list() == ["completed"] * 6
    assert out.select("t", "label").equals(whole.select("t", "label"))


# -- the waits between attempts (DOWNLOAD_RETRY_SECONDS) --------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_download_cut_twice_is_fetched_three_times_with_the_documented_waits(
    emu, provider: str, waits: list[float]
) -> None:
    # 0.5 s before the second attempt, 1 s before the third (each less up to a quarter at
    # random), the first attempt at once and nothing after the whole one.
    p = make_provider(provider)
    spec = RequestSpec(AnswerSchema(None), {})
    bid = _batch(p, provider, 12, marked=False)
    emu.clear_log()
    emu.inject_fault(method="GET", path_regex=DOWNLOADS[provider], action="cut", times=2)
    got = p.results(bid, spec)
    assert [e["fault"] is not None for e in _downloads(emu, provider)] == [True, True, False]
    assert len(waits) == 2
    assert 0.375 <= waits[0] <= 0.5 and 0.75 <= waits[1] <= 1.0, waits
    assert_frame_equal(got, _reference(p, provider, bid, spec))
    p.close()


def test_the_waits_double_up_to_the_longest_and_none_follows_the_last_attempt(
    emu, monkeypatch: pytest.MonkeyPatch, waits: list[float]
) -> None:
    from batchata_df.providers.openai import OpenAIProvider

    monkeypatch.setattr(OpenAIProvider, "sdk_max_retries", 6)
    p = make_provider("openai")
    bid = _batch(p, "openai", 6)
    emu.clear_log()
    emu.inject_fault(method="GET", path_regex=DOWNLOADS["openai"], action="cut", times=None)
    with pytest.raises(ProviderError, match="failed to download"):
        p.results(bid, RequestSpec(AnswerSchema(None), {}))
    assert len(_downloads(emu, "openai")) == 7  # the first attempt and 6 more
    first, longest = base.DOWNLOAD_RETRY_SECONDS
    assert (first, longest) == (0.5, 8.0)  # the SDKs' own waits, as documented
    expected = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert len(waits) == len(expected)
    for wait, full in zip(waits, expected, strict=True):
        assert 0.75 * full <= wait <= full, (waits, expected)
    p.close()


# -- downloads that end early without an error ---------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_a_download_that_ends_early_without_an_error_is_a_provider_error_naming_it(
    emu, provider: str, waits: list[float]
) -> None:
    import polars.exceptions

    p = make_provider(provider)
    spec = RequestSpec(AnswerSchema(None), {}, keep_responses=True)
    bid = _batch(p, provider, 20)
    emu.clear_log()
    emu.inject_fault(method="GET", path_regex=DOWNLOADS[provider], action="cut_clean")
    with pytest.raises(ProviderError, match="could not be decoded") as caught:
        p.results(bid, spec)
    error = caught.value
    assert not error.permanent  # the engine downloads it again later
    assert bid in str(error) and "downloaded again at the next poll" in str(error)
    assert isinstance(error.__cause__, polars.exceptions.ComputeError)
    # The HTTP library saw a whole (shorter) body: one download, no retry, no wait.
    assert [e["status"] for e in _downloads(emu, provider)] == [200]
    assert waits == []
    assert_frame_equal(p.results(bid, spec), _reference(p, provider, bid, spec))
    p.close()


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_a_run_whose_result_file_stays_malformed_leaves_its_rows_pending_then_collects_them(
    emu, tmp_path, provider: str
) -> None:
    # Every download ends early: the call keeps trying for the provider patience, then
    # returns with the rows pending and the reason (not a Polars traceback, not rows
    # failed); a later call with the same state collects the batch it sent once.
    df = pl.DataFrame({"t": [f"review {i}" for i in range(5)]})
    kwargs: dict[str, Any] = {"schema": _A, "model": MODELS[provider], "prompt": "{t}",
                              "state": tmp_path / "s"}
    emu.inject_fault(method="GET", path_regex=DOWNLOADS[provider], action="cut_clean",
                     times=None)
    with pytest.warns(ProviderUnavailableWarning, match="5 pending"):
        out = df.pipe(batch_llm, provider_patience=0.5, **kwargs)
    assert out["_status"].to_list() == ["pending"] * 5
    assert out["_error"].str.contains("could not be decoded").all(), out["_error"][0]
    assert out["_batch_id"].is_not_null().all()
    assert len(_downloads(emu, provider)) >= 2  # downloaded again, then given up for now
    emu.clear_faults()
    again = df.pipe(batch_llm, **kwargs)
    assert again["_status"].to_list() == ["completed"] * 5
    creates = [e for e in emu.log()
               if e["method"] == "POST" and re.search(CREATES[provider], e["path"])]
    assert len(creates) == 1
    billed = [b["custom_id"] for b in emu.billing()]
    assert len(billed) == 5 and len(set(billed)) == 5  # each request paid once


POLLS = {"openai": r"^/openai/v1/batches/[^/]+$", "anthropic": r"/messages/batches/[^/]+$",
         "gemini": r"/v1beta/batches/[^/:?]+$"}


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_a_batch_answer_that_ends_early_is_a_transient_provider_error(
    emu, provider: str
) -> None:
    # The same clean early end on the batch's own JSON (a poll; Anthropic's and Gemini's
    # results start with it): OpenAI's and Anthropic's SDKs raised json's JSONDecodeError
    # raw, and Gemini's was a permanent error, which ends the rows of a paid batch failed.
    p = make_provider(provider)
    bid = _batch(p, provider, 4)
    emu.inject_fault(method="GET", path_regex=POLLS[provider], action="cut_clean")
    with pytest.raises(ProviderError, match="its answer is not whole JSON") as caught:
        p.poll(bid)
    assert not caught.value.permanent
    assert p.poll(bid).state is ProviderState.ENDED
    p.close()


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_a_run_whose_batch_answers_end_early_leaves_its_rows_pending_then_collects_them(
    emu, tmp_path, provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Gemini's small batches come back inline, in the batch's own JSON: no file at all.
    monkeypatch.setattr(GeminiProvider, "inline_max_bytes", 256 * 1024)
    df = pl.DataFrame({"t": [f"review {i}" for i in range(5)]})
    kwargs: dict[str, Any] = {"schema": _A, "model": MODELS[provider], "prompt": "{t}",
                              "state": tmp_path / "s"}
    emu.inject_fault(method="GET", path_regex=POLLS[provider], action="cut_clean", times=None)
    with pytest.warns(ProviderUnavailableWarning, match="5 pending"):
        out = df.pipe(batch_llm, provider_patience=0.5, **kwargs)
    assert out["_status"].to_list() == ["pending"] * 5
    assert out["_error"].str.contains("not whole JSON").all(), out["_error"][0]
    emu.clear_faults()
    again = df.pipe(batch_llm, **kwargs)
    assert again["_status"].to_list() == ["completed"] * 5
    billed = [b["custom_id"] for b in emu.billing()]
    assert len(billed) == 5 and len(set(billed)) == 5  # sent once, paid once


# -- the kept memory given back (DownloadBuffer.release, the provider's close) ------------------


def _traced_after(action: Any) -> tuple[int, int]:
    """Memory traced before and after ``action()`` (garbage collected first, both times)."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    action()
    gc.collect()
    return before, tracemalloc.get_traced_memory()[0]


def test_a_download_buffer_keeps_its_memory_until_release_gives_it_back() -> None:
    size = 8 << 20
    buffer = DownloadBuffer()
    tracemalloc.start()
    try:
        def download() -> None:
            with buffer.receive() as sink:
                sink.write(bytes(size))

        before, kept = _traced_after(download)
        _, after = _traced_after(buffer.release)
    finally:
        tracemalloc.stop()
    # (Within a few bytes: tracemalloc counts the allocator's blocks, not the bytearray.)
    assert kept - before >= size - 1024  # kept for the next download...
    assert kept - after >= size - 1024  # ...and given back by release()
    with buffer.receive() as sink:  # the next download starts from fresh memory
        sink.write(b"{}")
        assert sink.getvalue() == b"{}"


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_closing_a_provider_gives_its_download_memory_back(emu, provider: str) -> None:
    p = make_provider(provider)
    spec = RequestSpec(AnswerSchema(None), {})
    bid = _batch(p, provider, 200, marked=False)  # one download (no OpenAI error file)
    size = _download_size(p, provider, bid)
    assert size > 50_000
    tracemalloc.start()
    try:
        _traced_after(lambda: p.results(bid, spec))  # the frame is dropped at once
        held, after = _traced_after(p.close)
    finally:
        tracemalloc.stop()
    assert held - after >= size


def _download_size(p: Any, provider: str, bid: str) -> int:
    """The bytes of the batch's results download, read apart through the SDK."""
    if provider == "anthropic":
        with p.client.messages.batches.with_streaming_response.results(bid) as r:
            return len(r.read())
    if provider == "gemini":
        return len(p.client.files.download(file=p.client.batches.get(name=bid).dest.file_name))
    return len(p.client.files.content(p.client.batches.retrieve(bid).output_file_id).read())
