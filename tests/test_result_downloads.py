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
"""

from __future__ import annotations

import time
from typing import Any

import decode_reference as ref
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import BaseModel

from batchata_df import batch_llm
from batchata_df.errors import ProviderError
from batchata_df.providers import make_provider
from batchata_df.providers.base import BatchTag, ProviderState, RequestSpec
from batchata_df.schema import AnswerSchema

MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5"}
DOWNLOADS = {"openai": r"/openai/v1/files/[^/]+/content",
             "anthropic": r"/messages/batches/[^/]+/results"}
_MARKED = ["", "[[emulator:error]] ", "[[emulator:refusal]] ", "[[emulator:truncate]] "]


@pytest.fixture(autouse=True)
def _no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    # The waits between attempts (0.5 s, doubling) are not what these tests look at.
    monkeypatch.setattr("batchata_df.providers.base.DOWNLOAD_RETRY_SECONDS", (0.0, 0.0))


def _batch(p: Any, provider: str, n: int) -> str:
    model = MODELS[provider]
    spec = RequestSpec(AnswerSchema(None), {})
    jobs = pl.DataFrame({
        "job_id": [f"j{i}" for i in range(n)],
        "model": [model] * n,
        "prompt": [f"{_MARKED[i % len(_MARKED)]}prompt {i} " + "words " * (i % 9)
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
    b = p.client.batches.retrieve(bid)
    frames = [
        ref.openai_decode_lines(p.client.files.content(fid).read() if fid else b"",
                                responses=spec.keep_responses)
        for fid in (b.output_file_id, b.error_file_id)
    ]
    return pl.concat(frames, how="vertical")


def _downloads(emu: Any, provider: str) -> list[dict[str, Any]]:
    import re

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
