"""Result files that end early *at a line boundary* (or empty): downloaded again, never lost.

A download that ends at a line boundary, or an empty 200 body, decodes without error, so
``decoded_download`` cannot see it. Its requests with no line ended ``failed`` with
``missing_result``, though they ran and were paid; a second call kept them failed and
downloaded nothing more (only ``retry_failed=True`` recovered them, paying twice). When
the provider's own final counts prove the file short (``whole_download``: OpenAI's
``request_counts.completed + failed``, Anthropic's ``request_counts`` sum, Gemini's
``batchStats`` successful + failed), it is a transient ``ProviderError``: the engine
downloads it again, and past the provider patience leaves the rows pending with the
reason, for a later call to collect. A cancelled batch whose unrun requests are in no file
(the emulator's ``cancel_unfinished="omit"``) counts them in neither number, so its rows end
as before.
"""

from __future__ import annotations

import re
import time
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import ProviderUnavailableWarning, batch_llm
from batchata_df.engine.collection import outcomes_to_events
from batchata_df.errors import ProviderError
from batchata_df.providers import make_provider
from batchata_df.providers.base import BatchTag, ProviderState, RequestSpec
from batchata_df.providers.gemini import GeminiProvider
from batchata_df.schema import AnswerSchema

MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5",
          "gemini": "gemini-2.5-flash"}
DOWNLOADS = {"openai": r"/openai/v1/files/[^/]+/content",
             "anthropic": r"/messages/batches/[^/]+/results",
             "gemini": r"(:download|/download/)"}
PROVIDERS = ["openai", "anthropic", "gemini"]


@pytest.fixture(autouse=True)
def _gemini_through_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    # Gemini returns a small batch's results inline; every batch here has a result file.
    monkeypatch.setattr(GeminiProvider, "inline_max_bytes", 10)


class _A(BaseModel):
    label: str


def _submit(p: Any, provider: str, n: int) -> str:
    model = MODELS[provider]
    spec = RequestSpec(AnswerSchema(None), {})
    jobs = pl.DataFrame({"job_id": [f"j{i}" for i in range(n)], "model": [model] * n,
                         "prompt": [f"prompt {i}" for i in range(n)], "system": [None] * n})
    bid: str = p.submit(p.encode(jobs, spec), model=model,
                        tag=BatchTag("run", "k", time.time(), n_jobs=n, members=jobs["job_id"]))
    return bid


def _ended(p: Any, provider: str, n: int) -> str:
    bid = _submit(p, provider, n)
    while p.poll(bid).state is ProviderState.RUNNING:
        time.sleep(0.05)
    return bid


def _whole_body(p: Any, provider: str, bid: str) -> bytes:
    """The batch's results download, read apart through the SDK (one file here)."""
    if provider == "anthropic":
        with p.client.messages.batches.with_streaming_response.results(bid) as r:
            return bytes(r.read())
    if provider == "gemini":
        return bytes(p.client.files.download(file=p.client.batches.get(name=bid).dest.file_name))
    b = p.client.batches.retrieve(bid)
    assert b.error_file_id is None  # every request succeeded: one file
    return bytes(p.client.files.content(b.output_file_id).read())


def _downloads(emu: Any, provider: str) -> list[dict[str, Any]]:
    return [e for e in emu.log() if re.search(DOWNLOADS[provider], e["path"])]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("kept", [0, 2], ids=["empty", "two_lines"])
def test_a_result_file_short_at_a_line_boundary_is_a_provider_error(
    emu, provider: str, kept: int
) -> None:
    # The body served is the first ``kept`` whole lines of the real file (0: an empty 200
    # body), which decodes without error; the provider's count proves it short.
    p = make_provider(provider)
    spec = RequestSpec(AnswerSchema(None), {})
    bid = _ended(p, provider, 5)
    whole = _whole_body(p, provider, bid)
    lines = whole.splitlines(keepends=True)
    assert len(lines) == 5
    emu.inject_fault(method="GET", path_regex=DOWNLOADS[provider], status=200,
                     body=b"".join(lines[:kept]).decode(), times=1)
    with pytest.raises(ProviderError, match="ended early") as caught:
        p.results(bid, spec)
    error = caught.value
    assert not error.permanent  # the engine downloads it again later
    assert f"holds {kept} result lines where the provider counts 5" in str(error)
    assert bid in str(error) and "downloaded again at the next poll" in str(error)
    assert emu.faults() == []
    again = p.results(bid, spec)
    assert sorted(again["job_id"]) == [f"j{i}" for i in range(5)]
    assert set(again["outcome"]) == {"succeeded"}
    p.close()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_run_whose_result_file_comes_back_empty_once_completes_in_the_same_call(
    emu, tmp_path, provider: str
) -> None:
    # The repro: a 3-row run whose download is an empty 200 body once ended 3 x
    # "failed missing_result"; the next poll downloads it again and every row completes.
    df = pl.DataFrame({"t": [f"review {i}" for i in range(3)]})
    emu.inject_fault(method="GET", path_regex=DOWNLOADS[provider], status=200, body="",
                     times=1)
    out = df.pipe(batch_llm, schema=_A, model=MODELS[provider], prompt="{t}",
                  state=tmp_path / "s")
    assert emu.faults() == []
    assert out["_status"].to_list() == ["completed"] * 3, out["_error"].to_list()
    assert len(_downloads(emu, provider)) == 2
    billed = [b["custom_id"] for b in emu.billing()]
    assert len(billed) == 3 and len(set(billed)) == 3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_run_whose_result_file_stays_empty_leaves_its_rows_pending_then_collects_them(
    emu, tmp_path, provider: str
) -> None:
    # Past the provider patience the rows stay pending with the reason (never failed
    # missing_result); a second call with the same state downloads the file again and
    # completes them, the batch sent and paid once.
    df = pl.DataFrame({"t": [f"review {i}" for i in range(3)]})
    kwargs: dict[str, Any] = {"schema": _A, "model": MODELS[provider], "prompt": "{t}",
                              "state": tmp_path / "s"}
    emu.inject_fault(method="GET", path_regex=DOWNLOADS[provider], status=200, body="",
                     times=None)
    with pytest.warns(ProviderUnavailableWarning, match="3 pending"):
        out = df.pipe(batch_llm, provider_patience=0.5, **kwargs)
    assert out["_status"].to_list() == ["pending"] * 3
    assert out["_error"].str.contains(
        "holds 0 result lines where the provider counts 3 answered requests"
    ).all(), out["_error"][0]
    assert not out["_error"].str.contains("missing_result").any()
    emu.clear_faults()
    again = df.pipe(batch_llm, **kwargs)
    assert again["_status"].to_list() == ["completed"] * 3, again["_error"].to_list()
    billed = [b["custom_id"] for b in emu.billing()]
    assert len(billed) == 3 and len(set(billed)) == 3  # each request paid once


# -- missing lines that are legitimate ----------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_a_cancelled_batch_that_omits_its_unrun_requests_still_ends_them_cancelled(
    emu, provider: str
) -> None:
    # With cancel_unfinished="omit" the requests a cancelled batch never ran are in no
    # file, and in neither count: the results are whole, and those rows end cancelled.
    emu.configure(latency=100.0, cancel_delay=10.0, cancel_unfinished="omit")
    p = make_provider(provider)
    spec = RequestSpec(AnswerSchema(None), {})
    bid = _submit(p, provider, 10)
    emu.advance(30)  # a few have run
    p.cancel(bid)
    emu.advance(60)
    poll = p.poll(bid)
    assert poll.state is ProviderState.CANCELLED
    results = p.results(bid, spec)  # no ProviderError
    ran = results.height
    assert 0 < ran < 10
    events = outcomes_to_events(pl.DataFrame({"job_id": [f"j{i}" for i in range(10)]}),
                                results, poll, spec)
    assert events["status"].value_counts().sort("status").rows() == sorted(
        [("completed", ran), ("cancelled", 10 - ran)])
    p.close()


def test_a_cancelled_anthropic_batch_has_a_line_for_every_request(emu) -> None:
    # Anthropic writes a "canceled" line for each request that never ran: the counts sum
    # to the lines, and nothing is taken as short.
    emu.configure(latency=100.0, cancel_delay=10.0)
    p = make_provider("anthropic")
    spec = RequestSpec(AnswerSchema(None), {})
    bid = _submit(p, "anthropic", 10)
    emu.advance(30)
    p.cancel(bid)
    emu.advance(60)
    poll = p.poll(bid)
    assert poll.state is ProviderState.CANCELLED
    results = p.results(bid, spec)
    assert results.height == 10 and "canceled" in set(results["outcome"])
    p.close()
