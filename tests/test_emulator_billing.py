"""The emulator's billing ledger: what the chaos suite judges "paid twice" by."""

from __future__ import annotations

from collections import Counter

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm


class A(BaseModel):
    label: str


MODELS = ["gpt-4.1-mini", "claude-haiku-4-5", "gemini-2.5-flash"]


def frame(n: int) -> pl.DataFrame:
    return pl.DataFrame({"t": [f"r{i}" for i in range(n * 3)], "m": MODELS * n})


def test_every_accepted_request_is_billed_and_a_resend_shows_twice(emu, tmp_path):
    kw = {"schema": A, "model": pl.col("m"), "prompt": "{t}"}
    out = frame(2).pipe(batch_llm, state=tmp_path / "one", **kw)
    billed = emu.billing()
    assert sorted(e["custom_id"] for e in billed) == sorted(out["_job_id"].to_list())
    assert {e["batch_id"] for e in billed} == set(out["_batch_id"].to_list())
    by_provider = Counter(e["provider"] for e in billed)
    assert by_provider == {"openai": 2, "anthropic": 2, "gemini": 2}
    # The same rows through another folder: sent again, so billed again.
    frame(2).pipe(batch_llm, state=tmp_path / "two", **kw)
    assert set(Counter(e["custom_id"] for e in emu.billing()).values()) == {2}


def test_a_cancelled_batch_bills_only_the_requests_that_ran(emu, tmp_path, engine_clock):
    emu.configure(latency=600.0)
    out = frame(2).pipe(batch_llm, schema=A, model=pl.col("m"), prompt="{t}", time_limit=1.0)
    assert out["_status"].to_list() == ["cancelled"] * 6
    assert len({e["path"] for e in emu.log() if e["method"] == "POST"}) >= 3  # all were sent
    assert emu.billing() == []  # cancelled before any request ran


ERRORS = {  # the row's _error prefix for [[emulator:error]] (500) and [[emulator:error:400]]
    "gpt-4.1-mini": ("http_500: ", "http_400: "),
    "claude-haiku-4-5": ("api_error: ", "invalid_request_error: "),
    "gemini-2.5-flash": ("error_500: ", "error_400: "),
}


@pytest.mark.parametrize("model", MODELS)
def test_failed_requests_are_not_billed_and_cost_nothing(emu, tmp_path, model):
    # No provider bills a batch request that failed with an error (no answer, no usage):
    # Anthropic's batch results, "errored: Request encountered an error and a message was
    # not created. [...] You will not be billed for these requests."
    # (https://platform.claude.com/docs/en/build-with-claude/batch-processing); OpenAI
    # bills "any completed work" (https://help.openai.com/en/articles/9197833), not an
    # error-file line; Gemini: "If your request fails with a 400 or 500 error, you won't be
    # charged for the tokens used." (https://ai.google.dev/gemini-api/docs/billing). An
    # answer is billed whatever it says (a refusal, a cut answer): it carries usage.
    from batchata_df.emulator.pricing import billed_usd

    provider = {"gpt": "openai", "cla": "anthropic", "gem": "gemini"}[model[:3]]
    texts = ["fine", "[[emulator:error]]", "[[emulator:error:400]]",
             "[[emulator:refusal]]", "[[emulator:truncate]]", "also fine"]  # fmt: skip
    out = pl.DataFrame({"t": texts}).pipe(
        batch_llm, schema=A, model=model, prompt="{t}", state=tmp_path / "s"
    )
    assert out["_status"].to_list() == ["completed", "failed", "failed", "failed", "failed",
                                        "completed"]  # fmt: skip
    assert out["_error"][1].startswith(ERRORS[model][0])
    assert out["_error"][2].startswith(ERRORS[model][1])
    ran = out["_job_id"].to_list()
    billed = emu.billing()
    assert [e["provider"] for e in billed] == [provider] * 4
    assert sorted(e["custom_id"] for e in billed) == sorted(ran[i] for i in (0, 3, 4, 5))
    # The client's cost columns say the same: nothing for the failed rows, what the
    # provider bills for the others, so the same total.
    assert out["_cost_usd"][1] == 0 and out["_cost_usd"][2] == 0
    assert out["_input_tokens"][1] is None and out["_input_tokens"][2] is None
    row = {job: i for i, job in enumerate(ran)}
    bills = [
        billed_usd(provider, model, input_tokens=out["_input_tokens"][row[e["custom_id"]]],
                   output_tokens=out["_output_tokens"][row[e["custom_id"]]])
        for e in billed
    ]  # fmt: skip
    assert all(b > 0 for b in bills)
    assert out["_cost_usd"].sum() == pytest.approx(sum(bills), rel=1e-12)
    for e, bill in zip(billed, bills, strict=True):
        assert out["_cost_usd"][row[e["custom_id"]]] == pytest.approx(bill, rel=1e-12)


def test_an_uncollected_batch_bills_none_of_its_failing_requests(emu):
    # The ledger holds what the provider charges whether or not anyone collects the
    # results: a request that will fail is not billed from the moment it is accepted.
    import anthropic

    emu.configure(latency=600.0)
    client = anthropic.Anthropic(api_key="sk-ant-test", base_url=emu.anthropic_base_url,
                                 max_retries=0)  # fmt: skip
    params = {"model": "claude-haiku-4-5", "max_tokens": 64}
    batch = client.messages.batches.create(requests=[
        {"custom_id": "ok", "params": {**params, "messages": [{"role": "user", "content": "hi"}]}},
        {"custom_id": "bad", "params": {
            **params, "messages": [{"role": "user", "content": "x [[emulator:error:400]]"}]}},
    ])  # fmt: skip
    assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
    assert [e["custom_id"] for e in emu.billing()] == ["ok"]
    client.close()


def _chat(custom_id: str, prompt: str, model: str = "gpt-4.1-mini", **body: object) -> dict:
    request = {"model": model, "messages": [{"role": "user", "content": prompt}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": request}  # fmt: skip


def test_openai_error_file_requests_are_not_billed(emu):
    # OpenAI bills the work a batch completed (Batch API FAQ, help.openai.com/en/articles/
    # 9197833: "Developers will be charged for any completed work"); a request in the error
    # file has no usage and was not billed. An answer in the output file was billed
    # whatever its finish_reason: a refusal, one cut by max_tokens or by the filter.
    import json

    from openai import OpenAI

    no_messages = _chat("bad-body", "ignored")
    del no_messages["body"]["messages"]  # type: ignore[attr-defined]
    lines = [
        _chat("ok", "fine"),
        no_messages,  # fails validation at execution: 400 in the error file
        _chat("fault-400", "x [[emulator:error:400]]"),
        _chat("fault-500", "x [[emulator:error]]"),
        _chat("refusal", "x [[emulator:refusal]]"),
        _chat("cut", "x [[emulator:truncate]]", max_completion_tokens=16),
        _chat("filter", "x [[emulator:filter]]"),
        _chat("bad-range", "x", temperature=7),  # out of range: 400 in the error file
    ]
    client = OpenAI(api_key="sk-test", base_url=emu.openai_base_url, max_retries=0)
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")  # fmt: skip
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    assert batch.output_file_id and batch.error_file_id
    out = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    err = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert sorted(x["custom_id"] for x in err) == ["bad-body", "bad-range", "fault-400",
                                                   "fault-500"]  # fmt: skip
    assert all("usage" not in x["response"]["body"] for x in err)
    finish = {x["custom_id"]: x["response"]["body"]["choices"][0]["finish_reason"] for x in out}
    assert finish == {"ok": "stop", "refusal": "stop", "cut": "length",
                      "filter": "content_filter"}  # fmt: skip
    billed = emu.billing()
    assert sorted(e["custom_id"] for e in billed) == ["cut", "filter", "ok", "refusal"]
    assert {e["batch_id"] for e in billed} == {batch.id}
    # The batch's own usage is the billed answers' usage, nothing for the error file.
    assert batch.usage is not None
    assert batch.usage.input_tokens == sum(x["response"]["body"]["usage"]["prompt_tokens"]
                                           for x in out)  # fmt: skip
    # A batch whose every request failed (a model that is not a chat model: a 404 per
    # line) bills nothing.
    data = "".join(json.dumps(_chat(f"rt-{i}", "hi", model="gpt-realtime")) + "\n"
                   for i in range(2)).encode()  # fmt: skip
    upload = client.files.create(file=("in2.jsonl", data), purpose="batch")
    gone = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                 completion_window="24h")  # fmt: skip
    gone = client.batches.retrieve(gone.id)
    assert gone.status == "completed" and gone.output_file_id is None
    assert gone.request_counts is not None and gone.request_counts.failed == 2
    assert [e["custom_id"] for e in emu.billing()] == [e["custom_id"] for e in billed]
    client.close()


def test_gemini_failed_requests_are_not_billed(emu):
    # Gemini API billing FAQ (ai.google.dev/gemini-api/docs/billing): "Am I charged for
    # failed requests? If your request fails with a 400 or 500 error, you won't be charged
    # for the tokens used." A request that answered is billed whatever its finishReason
    # (MAX_TOKENS, SAFETY, RECITATION): it carries usageMetadata.
    from google import genai
    from google.genai import types

    def req(key: str, text: str, **config: object) -> types.InlinedRequest:
        return types.InlinedRequest(
            contents=text, metadata={"key": key},
            config=types.GenerateContentConfig(**config) if config else None,
        )  # fmt: skip

    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    requests = [
        req("ok", "fine"),
        req("fault-400", "x [[emulator:error:400]]"),
        req("fault-500", "x [[emulator:error]]"),
        # Refused in validation: both schema fields set, a 400 for this request only.
        req(
            "bad-config",
            "x",
            response_mime_type="application/json",
            response_json_schema=schema,
            response_schema=schema,
        ),
        req("cut", "x [[emulator:truncate]]", max_output_tokens=16),
        req("safety", "x [[emulator:filter]]"),
        req("recitation", "x [[emulator:recitation]]"),
    ]
    options = types.HttpOptions(base_url=emu.gemini_base_url, api_version="v1beta")
    client = genai.Client(api_key="test-key", http_options=options)
    job = client.batches.create(model="gemini-2.5-flash", src=requests)
    done = client.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.dest is not None and done.dest.inlined_responses is not None
    by_key = {r.metadata["key"]: r for r in done.dest.inlined_responses if r.metadata}
    failed = sorted(k for k, r in by_key.items() if r.error is not None)
    assert failed == ["bad-config", "fault-400", "fault-500"]
    assert all(by_key[k].response is None for k in failed)
    answered = {k: r.response for k, r in by_key.items() if r.response is not None}
    assert {k: r.candidates[0].finish_reason.value for k, r in answered.items()} == {
        "ok": "STOP", "cut": "MAX_TOKENS", "safety": "SAFETY", "recitation": "RECITATION"
    }  # fmt: skip
    assert all(r.usage_metadata.prompt_token_count > 0 for r in answered.values())
    billed = emu.billing()
    assert sorted(e["custom_id"] for e in billed) == ["cut", "ok", "recitation", "safety"]
    assert {e["batch_id"] for e in billed} == {job.name}
