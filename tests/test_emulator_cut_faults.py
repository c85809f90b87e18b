"""The emulator's cut faults: ``cut`` and ``cut_clean`` through the official SDK.

Both answer the request and send half its body. ``cut`` keeps the ``content-length`` and
drops the connection (the HTTP library raises); ``cut_clean`` sends no length, so the
body is close-delimited, and ends the connection in order: the SDK reads a shorter body
without any error, the case a result decoder must notice itself. Both honour
``delay_ms`` (wait, then send the half answer) and, since they answer the request first,
are ``when="after"``: ``when="before"`` is refused when the fault is configured, never
silently ignored.
"""

from __future__ import annotations

import time
from typing import Any

import httpx2
import openai
import polars as pl
import pytest

from batchata_df.emulator import EmulatorError
from batchata_df.providers import make_provider
from batchata_df.providers.base import BatchTag, ProviderState, RequestSpec
from batchata_df.schema import AnswerSchema

CONTENT = r"/openai/v1/files/[^/]+/content"


def _result_file(emu: Any) -> tuple[openai.OpenAI, str, bytes]:
    """An OpenAI client (no retries), a finished batch's output file id and its bytes."""
    p = make_provider("openai")
    spec = RequestSpec(AnswerSchema(None), {})
    jobs = pl.DataFrame({"job_id": [f"j{i}" for i in range(8)], "model": ["gpt-4.1-mini"] * 8,
                         "prompt": [f"prompt {i}" for i in range(8)], "system": [None] * 8})
    bid = p.submit(p.encode(jobs, spec), model="gpt-4.1-mini",
                   tag=BatchTag("run", "k", time.time(), n_jobs=8, members=jobs["job_id"]))
    while p.poll(bid).state is ProviderState.RUNNING:
        time.sleep(0.05)
    client = openai.OpenAI(**{**_client_args(emu), "max_retries": 0})
    fid = client.batches.retrieve(bid).output_file_id
    assert fid is not None
    p.close()
    return client, fid, client.files.content(fid).read()


def _client_args(emu: Any) -> dict[str, Any]:
    env = emu.env()
    return {"api_key": env["OPENAI_API_KEY"], "base_url": env["OPENAI_BASE_URL"]}


def test_a_cut_clean_body_reads_as_a_clean_shorter_body(emu) -> None:
    client, fid, whole = _result_file(emu)
    emu.inject_fault(method="GET", path_regex=CONTENT, action="cut_clean")
    raw = client.files.with_raw_response.content(fid)  # no error: a clean end
    assert raw.headers.get("content-length") is None
    assert raw.headers.get("transfer-encoding") is None
    assert raw.http_response.content == whole[: len(whole) // 2]
    assert [e["status"] for e in emu.log() if e.get("fault")] == [200]


def test_a_cut_body_is_an_error_of_the_http_library(emu) -> None:
    # The difference cut_clean makes: the same half body, with its length promised.
    client, fid, _ = _result_file(emu)
    emu.inject_fault(method="GET", path_regex=CONTENT, action="cut")
    with pytest.raises(httpx2.RemoteProtocolError), \
            client.files.with_streaming_response.content(fid) as response:
        response.read()


@pytest.mark.parametrize("action", ["cut", "cut_clean"])
def test_a_cut_waits_its_delay_before_it_answers(emu, action: str) -> None:
    client, fid, whole = _result_file(emu)
    fault = emu.inject_fault(method="GET", path_regex=CONTENT, action=action, delay_ms=600)
    assert (fault["delay_ms"], fault["when"]) == (600, "after")
    start = time.monotonic()
    with client.files.with_streaming_response.content(fid) as response:
        waited = time.monotonic() - start  # the status and headers came after the delay
        got = b""
        try:
            for chunk in response.iter_bytes():
                got += chunk
        except httpx2.RemoteProtocolError:
            assert action == "cut"
    assert waited >= 0.6
    assert got == whole[: len(whole) // 2]


@pytest.mark.parametrize("action", ["cut", "cut_clean", "corrupt", "corrupt_id"])
def test_a_cut_before_the_request_runs_is_refused_when_configured(emu, action: str) -> None:
    with pytest.raises(EmulatorError, match=r"HTTP 400.*when must be 'after'.*'disconnect'"):
        emu.inject_fault(path_regex=CONTENT, action=action, when="before")
    assert emu.faults() == []
    # Left out, `when` is "after" for a cut and "before" for the others, as documented.
    assert emu.inject_fault(path_regex=CONTENT, action=action)["when"] == "after"
    assert emu.inject_fault(path_regex=CONTENT, action=action, when="after")["when"] == "after"
    assert emu.inject_fault(path_regex=CONTENT)["when"] == "before"
    assert emu.inject_fault(path_regex=CONTENT, action="disconnect")["when"] == "before"


def test_an_unknown_fault_action_is_refused_with_the_choices(emu) -> None:
    choices = r"'error', 'disconnect', 'cut', 'cut_clean', 'corrupt' or 'corrupt_id'"
    with pytest.raises(EmulatorError, match=choices):
        emu.inject_fault(path_regex=CONTENT, action="truncate")  # type: ignore[arg-type]
