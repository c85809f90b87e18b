"""A provider call that fails says which call it was, per provider, through the real SDKs.

The reason a row ends ``pending`` or ``failed``, or a run stops, is the provider error's
message: "OpenAI failed to retrieve the batch: HTTP 400: ...". A user reading it must know
which of the calls broke (creating, polling, downloading, cancelling), so every client
method is driven here against an emulator route that refuses it, and the message is
compared with the expected text.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm
from batchata_df.errors import OrphanedBatchError, ProviderError
from batchata_df.providers import make_provider
from batchata_df.providers.base import BatchTag, Provider, RequestSpec
from batchata_df.providers.gemini import GeminiProvider
from batchata_df.schema import AnswerSchema


class A(BaseModel):
    label: str


SPEC = RequestSpec(AnswerSchema(A), {"max_tokens": 50})


@dataclasses.dataclass(frozen=True)
class Case:
    name: str  # as messages spell it
    model: str
    poll: str  # the route of one batch (GET: retrieve, POST: cancel)
    cancel: str
    download: str


CASES = {
    "openai": Case("OpenAI", "gpt-4.1-mini", r"^/openai/v1/batches/[^/]+$",
                   r"^/openai/v1/batches/[^/]+/cancel$", r"^/openai/v1/files/[^/]+/content"),
    "anthropic": Case("Anthropic", "claude-haiku-4-5", r"/messages/batches/[^/]+$",
                      r"/messages/batches/[^/]+/cancel$", r"/messages/batches/[^/]+/results"),
    "gemini": Case("Gemini", "gemini-2.5-flash", r"/v1beta/batches/[^/:?]+$",
                   r"/v1beta/batches/[^/:?]+:cancel$", r"(:download|/download/)"),
}

# provider -> [(what is called, HTTP method, route attribute, the words of the message)]
CALLS: dict[str, list[tuple[str, str, str, str]]] = {
    "openai": [
        ("poll", "GET", "poll", "retrieve the batch"),
        ("results", "GET", "poll", "retrieve the batch"),
        ("results", "GET", "download", "download a result file"),
        ("cancel", "POST", "cancel", "cancel the batch"),
    ],
    "anthropic": [
        ("poll", "GET", "poll", "retrieve the message batch"),
        ("results", "GET", "download", "download the batch results"),
        ("cancel", "POST", "cancel", "cancel the message batch"),
    ],
    "gemini": [
        ("poll", "GET", "poll", "retrieve the batch"),
        ("results", "GET", "poll", "retrieve the batch"),
        ("cancel", "POST", "cancel", "cancel the batch"),
    ],
}


def submitted(emu, provider: str, tmp_path, *, latency: float = 0.0) -> str:
    """The id of a real batch of two rows, created through ``batch_llm`` (wait=False)."""
    emu.configure(latency=latency)
    out = pl.DataFrame({"t": ["a", "b"]}).pipe(
        batch_llm, schema=A, model=CASES[provider].model, prompt="{t}",
        state=tmp_path / "s", wait=False,
    )
    (batch_id,) = out["_batch_id"].unique().to_list()
    return str(batch_id)


def refusing(emu, method: str, route: str) -> None:
    emu.inject_fault(method=method, path_regex=route, status=400, times=None)


def call(p: Provider, what: str, batch_id: str) -> Callable[[], object]:
    if what == "poll":
        return lambda: p.poll(batch_id)
    if what == "results":
        return lambda: p.results(batch_id, SPEC)
    return lambda: p.cancel(batch_id)


@pytest.mark.parametrize(
    ("provider", "what", "method", "route", "words"),
    [(p, *c) for p, calls in sorted(CALLS.items()) for c in calls],
)
def test_a_refused_call_names_what_was_being_done(emu, tmp_path, provider, what, method,
                                                  route, words):
    case = CASES[provider]
    # results and downloads need an ended batch; a cancel needs a running one
    batch_id = submitted(emu, provider, tmp_path, latency=1000.0 if what == "cancel" else 0.0)
    refusing(emu, method, getattr(case, route))
    p = make_provider(provider)
    try:
        with pytest.raises(ProviderError) as info:
            call(p, what, batch_id)()
    finally:
        p.close()
    message = str(info.value)
    assert message.startswith(f"{case.name} failed to {words}: HTTP 400"), message
    assert [e["status"] for e in emu.log() if e.get("fault")], "the refusal never fired"


def lines_for(provider: str, n: int) -> pl.Series:
    p = make_provider(provider, offline=True)
    jobs = pl.DataFrame({
        "job_id": [f"job{i}" for i in range(n)],
        "model": [CASES[provider].model] * n,
        "prompt": [f"question {i}" for i in range(n)],
        "system": [None] * n,
    })
    return p.encode(jobs, SPEC)


@pytest.mark.parametrize("provider", sorted(CASES))
def test_a_refused_create_names_it(emu, provider):
    case = CASES[provider]
    route = {"openai": r"^/openai/v1/batches$", "anthropic": r"/messages/batches$",
             "gemini": r":batchGenerateContent$"}[provider]
    refusing(emu, "POST", route)
    p = make_provider(provider)
    tag = BatchTag("run", "b0", time.time(), n_jobs=2)
    try:
        with pytest.raises(ProviderError) as info:
            p.submit(lines_for(provider, 2), model=case.model, tag=tag)
    finally:
        p.close()
    words = "create the message batch" if provider == "anthropic" else "create the batch"
    assert str(info.value).startswith(f"{case.name} failed to {words}: HTTP 400"), info.value


def test_a_refused_upload_names_it(emu, monkeypatch):
    monkeypatch.setattr(GeminiProvider, "inline_max_bytes", 10)  # through a file
    refusing(emu, "POST", r"/upload/")
    p = make_provider("gemini")
    try:
        with pytest.raises(ProviderError) as info:
            p.submit(lines_for("gemini", 2), model=CASES["gemini"].model,
                     tag=BatchTag("run", "b0", time.time(), n_jobs=2))
    finally:
        p.close()
    assert str(info.value).startswith("Gemini failed to upload the batch input file: HTTP 400")


def test_gemini_cancelling_a_batch_that_already_ended_is_not_an_error(emu, tmp_path):
    # Gemini answers 400 FAILED_PRECONDITION for a batch in a final state: the batch ended
    # between the poll and the cancel, and the next poll collects it.
    batch_id = submitted(emu, "gemini", tmp_path)
    p = make_provider("gemini")
    try:
        assert p.poll(batch_id).state == "ended"
        p.cancel(batch_id)  # no error
        assert [e["status"] for e in emu.log() if e["path"].endswith(":cancel")] == [400]
        # ...but any other refusal of a cancel is one
        emu.inject_fault(method="POST", path_regex=r":cancel$", status=400, times=1,
                         body={"error": {"code": 400, "message": "bad", "status":
                                         "INVALID_ARGUMENT"}})
        with pytest.raises(ProviderError, match=r"^Gemini failed to cancel the batch: HTTP 400"):
            p.cancel(batch_id)
    finally:
        p.close()


@pytest.mark.parametrize("extra", [-1, 0])
def test_gemini_sends_a_batch_inline_only_below_the_inline_limit(emu, monkeypatch, extra):
    # The size counted is the request lines joined by newlines, as the file would be: at
    # exactly the limit the batch goes through an uploaded file, one byte less inline.
    lines = lines_for("gemini", 3)
    size = sum(len(s.encode()) for s in lines.to_list()) + len(lines)
    monkeypatch.setattr(GeminiProvider, "inline_max_bytes", size - extra)
    p = make_provider("gemini")
    try:
        p.submit(lines, model=CASES["gemini"].model,
                 tag=BatchTag("run", "b0", time.time(), n_jobs=3))
    finally:
        p.close()
    uploads = [e for e in emu.log() if "/upload/" in e["path"]]
    assert bool(uploads) == (extra == 0)  # a resumable upload is two POSTs


def test_an_ambiguous_orphan_message_says_when_the_batch_was_submitted(emu):
    # Two Anthropic batches of the same size in the window of a lost create, neither ended:
    # the message names the submit time in UTC.
    p = make_provider("anthropic")
    emu.configure(latency=1000.0)
    created_after = time.time()
    try:
        for key in ("x", "y"):
            p.submit(lines_for("anthropic", 2), model=CASES["anthropic"].model,
                     tag=BatchTag("other", key, created_after, n_jobs=2))
        fresh = make_provider("anthropic")  # a new process: it did not create them
        try:
            tag = BatchTag("run", "b0", created_after, n_jobs=2,
                           job_ids=frozenset({"job0", "job1"}))
            with pytest.raises(OrphanedBatchError) as info:
                fresh.find(tag)
        finally:
            fresh.close()
    finally:
        p.close()
    when = dt.datetime.fromtimestamp(created_after, dt.UTC).isoformat(timespec="seconds")
    assert f"submitting batch 'b0' (2 requests, at {when})" in str(info.value), info.value
    assert when.endswith("+00:00")
