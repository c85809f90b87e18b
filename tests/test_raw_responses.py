"""The provider's own answer per job, kept verbatim: compat ``raw_files`` and ``_response``.

What each test compares with is what the emulator served, read back through the official
SDKs (OpenAI output file lines, Anthropic results lines) or over plain HTTP (Gemini's
batch resource with its inlined responses, or its result file).
"""

from __future__ import annotations

import json
import os
import urllib.request

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm
from batchata_df.compat import Batch
from batchata_df.providers.gemini import GeminiProvider
from batchata_df.state import JOB_EVENTS


class Invoice(BaseModel):
    number: str
    total: float


def _job_events(state) -> pl.DataFrame:
    parts = sorted((state / "jobs").glob("part-*.parquet"))
    # By the table's schema: a format 2 part leaves out its all-null columns.
    return pl.scan_parquet(parts, schema=JOB_EVENTS, missing_columns="insert",
                           extra_columns="ignore").collect()


def _openai_served() -> dict[str, str]:
    import openai

    client = openai.OpenAI()
    served: dict[str, str] = {}
    for b in client.batches.list():
        for fid in (b.output_file_id, b.error_file_id):
            if fid:
                for line in client.files.content(fid).text.splitlines():
                    if line.strip():
                        served[json.loads(line)["custom_id"]] = line
    return served


def _anthropic_served() -> dict[str, str]:
    import anthropic

    client = anthropic.Anthropic()
    served: dict[str, str] = {}
    for b in client.messages.batches.list():
        with client.messages.batches.with_streaming_response.results(b.id) as r:
            data = r.read().decode()
        for line in data.splitlines():
            if line.strip():
                served[json.loads(line)["custom_id"]] = line
    return served


def _gemini_served() -> dict[str, object]:
    """Per key, the served inlined response object, or the served result-file line."""
    base = os.environ["GOOGLE_GEMINI_BASE_URL"].rstrip("/")
    headers = {"x-goog-api-key": os.environ["GEMINI_API_KEY"]}

    def get(url: str) -> str:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as r:
            return str(r.read().decode())

    listing = json.loads(get(f"{base}/v1beta/batches"))
    served: dict[str, object] = {}
    for op in listing.get("operations", []):
        output = op["metadata"].get("output", {})
        for item in output.get("inlinedResponses", {}).get("inlinedResponses", []):
            served[item["metadata"]["key"]] = item
        if "responsesFile" in output:
            data = get(f"{base}/download/v1beta/{output['responsesFile']}:download?alt=media")
            for line in data.splitlines():
                if line.strip():
                    served[json.loads(line)["key"]] = line
    return served


SERVED = {
    "gpt-4.1-mini": _openai_served,
    "claude-haiku-4-5": _anthropic_served,
    "gemini-2.5-flash": _gemini_served,
}


@pytest.mark.parametrize("model", sorted(SERVED))
def test_compat_raw_files_hold_what_the_provider_served(emu, tmp_path, model):
    results_dir = tmp_path / "results"
    batch = Batch(results_dir=str(results_dir), raw_files=True).set_default_params(model=model)
    batch.add_job(prompt="Invoice INV-1, total 10 USD", response_model=Invoice)
    batch.add_job(prompt="Invoice INV-2, total 20 USD", response_model=Invoice)
    batch.add_job(prompt="Say hi")  # another group (no response model): another batch
    run = batch.run()
    frame = run.to_polars()
    assert frame.get_column("_status").to_list() == ["completed"] * 3
    served = SERVED[model]()
    assert len(served) == 3
    raw_dir = results_dir / "raw_files" / "responses"
    assert sorted(p.name for p in raw_dir.iterdir()) == [
        "job-000000_raw.json", "job-000001_raw.json", "job-000002_raw.json"
    ]
    for compat_id, request_id in zip(
        ["job-000000", "job-000001", "job-000002"],
        [*frame.get_column("_job_id").to_list()],
        strict=True,
    ):
        text = (raw_dir / f"{compat_id}_raw.json").read_text()
        expected = served[request_id]
        if isinstance(expected, str):
            assert text == expected  # byte for byte: the provider's line
        else:
            assert json.loads(text) == expected  # Gemini inline: the served object
    # raw_response stays the model's own text (the seed's type); the file is the whole answer.
    first = run.results()["completed"][0]
    assert first.raw_response is not None
    assert json.loads(first.raw_response) == first.parsed_response.model_dump()


def test_gemini_result_file_lines_are_kept_verbatim(emu, tmp_path, monkeypatch):
    monkeypatch.setattr(GeminiProvider, "inline_max_bytes", 10)  # every batch via a file
    out = pl.DataFrame({"t": ["a", "b"]}).pipe(
        batch_llm, schema=Invoice, model="gemini-2.5-flash", prompt="Invoice {t}",
        state=tmp_path / "s", keep_responses=True,
    )
    served = _gemini_served()
    assert all(isinstance(v, str) for v in served.values())
    assert out.get_column("_response").to_list() == [
        served[j] for j in out.get_column("_job_id").to_list()
    ]
    # Kept in the checkpoint too (job_events.response), so a later call returns it.
    events = _job_events(tmp_path / "s")
    assert sorted(events.get_column("response").drop_nulls().to_list()) == sorted(served.values())


def test_responses_are_not_stored_unless_asked(emu, tmp_path):
    out = pl.DataFrame({"t": ["a"]}).pipe(
        batch_llm, model="gpt-4.1-mini", prompt="Say {t}", state=tmp_path / "s"
    )
    assert "_response" not in out.columns
    events = _job_events(tmp_path / "s")
    assert events.get_column("response").null_count() == events.height


def test_failed_and_errored_rows_keep_the_providers_error_line(emu, tmp_path):
    out = pl.DataFrame({"t": ["a"]}).pipe(
        batch_llm, schema=Invoice, model="gpt-4.1-mini", prompt="Say {t}",
        params={"max_tokens": 1}, state=tmp_path / "s", keep_responses=True,
    )
    # Truncated at max_tokens=1: failed, and the provider's whole line is kept.
    assert out.get_column("_status").to_list() == ["failed"]
    line = json.loads(out.get_column("_response").item())
    assert line["custom_id"] == out.get_column("_job_id").item()
    assert line["response"]["body"]["choices"][0]["finish_reason"] == "length"


def test_a_secret_in_a_provider_answer_is_scrubbed_before_it_is_stored(emu, tmp_path, monkeypatch):
    # A value of a *_TOKEN variable that the provider's answer happens to contain (the
    # model name, in every OpenAI response body) is a secret: it never reaches the disk.
    monkeypatch.setenv("MY_SERVICE_TOKEN", "gpt-4.1-mini")
    out = pl.DataFrame({"t": ["a"]}).pipe(
        batch_llm, model="gpt-4.1-mini", prompt="Say {t}", state=tmp_path / "s",
        keep_responses=True,
    )
    stored = _job_events(tmp_path / "s").get_column("response")
    assert "gpt-4.1-mini" not in stored.drop_nulls().item()
    assert "[redacted]" in out.get_column("_response").item()


def test_gemini_inlined_responses_are_kept_like_result_file_lines(emu, tmp_path):
    # An inline batch has no result file: each inlined response is kept as the line a file
    # would hold (compact JSON, non-ASCII text as it is), so what a user stores does not
    # depend on the batch's size.
    out = pl.DataFrame({"t": ["Zürich, 5 €", "naïve café"]}).pipe(  # text answers quote it
        batch_llm, model="gemini-2.5-flash", prompt="About {t}", state=tmp_path / "s",
        keep_responses=True,
    )
    served = _gemini_served()
    assert all(not isinstance(v, str) for v in served.values())  # inline, not a file
    kept = out.get_column("_response").to_list()
    expected = [
        json.dumps(served[j], ensure_ascii=False, separators=(",", ":"))
        for j in out.get_column("_job_id").to_list()
    ]
    assert kept == expected
    assert any(not s.isascii() for s in kept), kept  # the test has something to escape
