"""Gemini: what the SDK cannot parse fails rows with a reason, never the run (issue 8.5).

The API sends per-request errors with ``google.rpc`` ``details`` objects; google-genai
3.6.1's ``JobError.details`` is ``list[str]``, so parsing the finished batch raises a
pydantic ``ValidationError`` inside ``batches.get``. The emulator sends such details for
``[[emulator:details]]``.
"""

from __future__ import annotations

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm
from batchata_df.errors import ProviderUnavailableWarning


class A(BaseModel):
    label: str


def test_an_error_with_unparseable_details_fails_that_row_only(emu, tmp_path):
    df = pl.DataFrame({"t": ["bad [[emulator:details]]", "good one", "good two"]})
    out = df.pipe(batch_llm, schema=A, model="gemini-2.5-flash", prompt="{t}",
                  state=tmp_path / "s")
    assert out["_status"].to_list() == ["failed", "completed", "completed"]
    assert out["_error"][0].startswith("error_500: Emulated error")
    assert out["label"][1] is not None and out["label"][2] is not None


def test_an_sdk_exception_while_polling_fails_the_batch_rows_with_the_reason(
    emu, tmp_path, monkeypatch
):
    # Any other SDK exception (here a KeyError, as google-genai raised for an answer
    # without the key it expected, googleapis/python-genai#1590) never crashes the run:
    # the batch's rows end failed with the reason, and a later call can send them again.
    from google.genai import batches

    def broken(self, *args, **kwargs):
        raise KeyError("file")

    original = batches.Batches.get
    monkeypatch.setattr(batches.Batches, "get", broken)
    df = pl.DataFrame({"t": ["one", "two"]})
    kw = {"schema": A, "model": "gemini-2.5-flash", "prompt": "{t}", "state": tmp_path / "s"}
    out = df.pipe(batch_llm, **kw)
    assert out["_status"].to_list() == ["failed", "failed"]
    assert out["_error"].str.contains("google-genai raised KeyError").all()
    monkeypatch.setattr(batches.Batches, "get", original)
    again = df.pipe(batch_llm, retry_failed=True, **kw)
    assert again["_status"].to_list() == ["completed", "completed"]


def _upload_everything(monkeypatch):
    from batchata_df.providers.gemini import GeminiProvider

    monkeypatch.setattr(GeminiProvider, "inline_max_bytes", 10)  # every batch via a file


def test_an_sdk_exception_while_submitting_is_retried_and_never_pays_twice(
    emu, tmp_path, monkeypatch
):
    # googleapis/python-genai#1248, #1590: the upload's answer lacks the "file" key and
    # google-genai raises KeyError('file') from files.upload. The create is looked up (by
    # display name), found absent, and sent again: every row answered, each billed once.
    from google.genai import files

    _upload_everything(monkeypatch)
    original = files.Files.upload
    calls = []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("file")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(files.Files, "upload", flaky)
    df = pl.DataFrame({"t": ["one", "two"]})
    out = df.pipe(batch_llm, schema=A, model="gemini-2.5-flash", prompt="{t}",
                  state=tmp_path / "s")
    assert out["_status"].to_list() == ["completed", "completed"]
    assert len(calls) == 2
    billed = sorted(e["custom_id"] for e in emu.billing())
    assert billed == sorted(out["_job_id"].to_list())


def test_an_sdk_exception_on_every_submit_ends_the_rows_with_the_reason(
    emu, tmp_path, monkeypatch
):
    # The create raises every time (an answer google-genai cannot parse): the run does not
    # crash; the rows end with the SDK's exception as the reason, nothing was billed, and a
    # later call sends them again.
    from google.genai import batches

    def broken(self, *args, **kwargs):
        raise KeyError("name")

    original = batches.Batches.create
    monkeypatch.setattr(batches.Batches, "create", broken)
    df = pl.DataFrame({"t": ["one", "two"]})
    kw = {"schema": A, "model": "gemini-2.5-flash", "prompt": "{t}", "state": tmp_path / "s"}
    with pytest.warns(ProviderUnavailableWarning):
        out = df.pipe(batch_llm, provider_patience=1.0, **kw)
    assert out["_status"].to_list() == ["cancelled", "cancelled"]
    assert out["_error"].str.contains("google-genai raised KeyError").all(), out["_error"]
    assert emu.billing() == []
    monkeypatch.setattr(batches.Batches, "create", original)
    again = df.pipe(batch_llm, retry_failed=True, **kw)
    assert again["_status"].to_list() == ["completed", "completed"]
    assert len(emu.billing()) == 2
