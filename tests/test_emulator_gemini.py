"""The emulator's Gemini batch mode, driven by the official google-genai SDK over HTTP.

Every raw answer is also validated with the SDK's own types, so the emulator cannot drift
into shapes the SDK would reject (e.g. object ``details`` in a per-request error).
"""

from __future__ import annotations

import copy
import io
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from google import genai
from google.genai import batches as genai_batches
from google.genai import errors, types
from pydantic import BaseModel

from batchata_df.providers.gemini import decode_lines

VERSIONS = ["v1", "v1beta"]
SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["answer", "score"],
    "additionalProperties": False,
}


class Answer(BaseModel):
    answer: str
    score: int


def client(emu, ver="v1beta", key="test-key", retry=False):
    options = types.HttpOptions(base_url=emu.gemini_base_url, api_version=ver)
    if retry:
        options.retry_options = types.HttpRetryOptions(
            attempts=3, initial_delay=0.05, max_delay=0.1
        )
    return genai.Client(api_key=key, http_options=options)


def raw(emu, method, path, body=None, headers=None, key="test-key"):
    hdrs = {"content-type": "application/json", **(headers or {})}
    if key:
        hdrs["x-goog-api-key"] = key
    data = (
        body if isinstance(body, bytes) else (None if body is None else json.dumps(body).encode())
    )
    req = urllib.request.Request(emu.gemini_base_url + path, data=data, method=method, headers=hdrs)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=30) as r:
            content = r.read()
            return r.status, dict(r.headers), content
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


def raw_json(emu, method, path, body=None, **kw):
    status, _headers, content = raw(emu, method, path, body, **kw)
    return status, json.loads(content) if content else None


def check_operation(op: dict[str, Any]) -> types.BatchJob:
    """Validate a raw Operation with the SDK's mapping and types; return the BatchJob."""
    assert op["name"].startswith("batches/")
    meta = op["metadata"]
    assert meta["state"].startswith("BATCH_STATE_")
    # The SDK drops unknown fields (e.g. an error's ``status``) in place: give it a copy.
    sdk_view = genai_batches._BatchJob_from_mldev(copy.deepcopy(op))
    job = types.BatchJob._from_response(response=sdk_view, kwargs={})
    output = meta.get("output")
    if output is not None:
        assert op["done"] is True
        assert {k: v for k, v in op["response"].items() if k != "@type"} == output
        for item in output.get("inlinedResponses", {}).get("inlinedResponses", []):
            if "error" in item:
                error = dict(item["error"])
                # google.rpc.Status: code, message and the status name; no invented details
                # (the real ones are typed objects the SDK's JobError cannot parse).
                assert isinstance(error.pop("status"), str)
                assert "details" not in error
                types.JobError.model_validate(error)  # extra fields forbidden
                types.InlinedResponse.model_validate({**item, "error": error})
            else:
                types.InlinedResponse.model_validate(item)  # extra fields forbidden
                types.GenerateContentResponseUsageMetadata.model_validate(
                    item["response"]["usageMetadata"]
                )
    return job


def inline_requests():
    return [
        types.InlinedRequest(
            contents="Rate this: good",
            metadata={"key": "json-schema"},
            config=types.GenerateContentConfig(
                response_mime_type="application/json",
                response_json_schema=SCHEMA,
                system_instruction="be terse",
                temperature=0.0,
            ),
        ),
        types.InlinedRequest(
            contents="Rate this: ok",
            metadata={"key": "openapi-schema"},
            config=types.GenerateContentConfig(
                response_mime_type="application/json",
                response_schema={
                    "type": "OBJECT",
                    "properties": {"answer": {"type": "STRING"}, "score": {"type": "INTEGER"}},
                    "required": ["answer", "score"],
                },
            ),
        ),
        types.InlinedRequest(contents="boom [[emulator:error:400]]", metadata={"key": "err"}),
        types.InlinedRequest(contents="just talk", metadata={"key": "text"}),
    ]


@pytest.mark.parametrize("ver", VERSIONS)
def test_inline_batch(emu, ver):
    c = client(emu, ver)
    job = c.batches.create(
        model="gemini-2.5-flash", src=inline_requests(), config={"display_name": "probe-inline"}
    )
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert job.display_name == "probe-inline"
    assert job.model == "models/gemini-2.5-flash"
    done = c.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.done
    by_key = {r.metadata["key"]: r for r in done.dest.inlined_responses}
    assert list(by_key) == ["json-schema", "openapi-schema", "err", "text"]
    for key in ("json-schema", "openapi-schema"):
        answer = Answer.model_validate_json(by_key[key].response.text)
        if key == "json-schema":
            assert 1 <= answer.score <= 5
        usage = by_key[key].response.usage_metadata
        assert usage.prompt_token_count > 0
        assert usage.candidates_token_count > 0
        assert usage.total_token_count == (
            usage.prompt_token_count + usage.candidates_token_count + usage.thoughts_token_count
        )
        assert usage.cached_content_token_count == 0
        assert by_key[key].response.candidates[0].finish_reason == types.FinishReason.STOP
    assert by_key["err"].response is None
    assert by_key["err"].error.code == 400
    assert by_key["err"].error.details is None
    assert by_key["text"].response.text.startswith("Emulated answer")
    # The raw Operation validates with the SDK's types and mirrors the output in `response`.
    status, op = raw_json(emu, "GET", f"/{ver}/{job.name}")
    assert status == 200
    check_operation(op)
    assert op["metadata"]["batchStats"] == {
        "requestCount": "4",
        "successfulRequestCount": "3",
        "failedRequestCount": "1",
        "pendingRequestCount": "0",
    }
    paths = [e["path"] for e in emu.log()]
    assert f"/gemini/{ver}/models/gemini-2.5-flash:batchGenerateContent" in paths
    assert all(e["auth"] for e in emu.log())


@pytest.mark.parametrize("ver", VERSIONS)
def test_file_batch_with_resumable_upload_and_download(emu, ver):
    c = client(emu, ver)
    lines = [
        {
            "key": "k1",
            "request": {
                "contents": [{"parts": [{"text": "a"}], "role": "user"}],
                "generationConfig": {
                    "responseMimeType": "application/json",
                    "responseJsonSchema": SCHEMA,
                },
            },
        },
        {"key": "k2", "request": {"contents": [{"parts": [{"text": "b [[emulator:error]]"}]}]}},
        {
            "key": "k3",
            "request": {
                "contents": [{"parts": [{"text": "c [[emulator:truncate]]"}]}],
                "generationConfig": {
                    "responseMimeType": "application/json",
                    "responseJsonSchema": SCHEMA,
                },
            },
        },
    ]
    payload = "\n".join(json.dumps(x) for x in lines).encode()
    uploaded = c.files.upload(
        file=io.BytesIO(payload), config={"mime_type": "text/plain", "display_name": "probe-in"}
    )
    assert uploaded.name.startswith("files/")
    assert uploaded.display_name == "probe-in"
    assert uploaded.size_bytes == len(payload)
    assert uploaded.state == types.FileState.ACTIVE
    assert uploaded.source == types.FileSource.UPLOADED
    start, chunk = [e for e in emu.log() if "/upload/" in e["path"]]
    assert start["path"] == chunk["path"] == f"/gemini/upload/{ver}/files"
    assert start["auth"]
    assert not chunk["auth"]
    assert "upload_id=" in chunk["query"]
    status, meta = raw_json(emu, "GET", f"/{ver}/{uploaded.name}")
    assert status == 200
    types.File.model_validate(meta)
    assert c.files.get(name=uploaded.name).display_name == "probe-in"
    with pytest.raises(errors.ClientError):  # uploaded files cannot be downloaded
        c.files.download(file=uploaded.name)

    job = c.batches.create(
        model="gemini-2.5-flash", src=uploaded.name, config={"display_name": "probe-file"}
    )
    done = c.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    result_name = done.dest.file_name
    assert result_name.startswith("files/batch-")
    assert done.dest.inlined_responses is None
    result = c.files.get(name=result_name)
    assert result.source == types.FileSource.GENERATED
    assert result.download_uri
    data = c.files.download(file=result_name)
    assert f"/gemini/{ver}/{result_name}:download" in [e["path"] for e in emu.log()]
    # The REST docs' /download/ path serves the same bytes.
    status, _headers, same = raw(emu, "GET", f"/download/{ver}/{result_name}:download?alt=media")
    assert status == 200
    assert same == data
    out = {x["key"]: x for x in map(json.loads, data.decode().splitlines())}
    assert list(out) == ["k1", "k2", "k3"]
    ok = types.GenerateContentResponse._from_response(response=out["k1"]["response"], kwargs={})
    Answer.model_validate_json(ok.text)
    types.GenerateContentResponse.model_validate(out["k1"]["response"])
    error = dict(out["k2"]["error"])
    assert error.pop("status") == {400: "INVALID_ARGUMENT", 500: "INTERNAL"}[error["code"]]
    types.JobError.model_validate(error)
    assert out["k2"]["error"]["code"] == 500
    assert out["k3"]["response"]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    with pytest.raises(ValueError, match=r"\w"):
        json.loads(out["k3"]["response"]["candidates"][0]["content"]["parts"][0]["text"])
    status, op = raw_json(emu, "GET", f"/{ver}/{job.name}")
    check_operation(op)
    assert op["response"]["responsesFile"] == result_name


def test_resumable_upload_in_several_chunks(emu):
    body = b'{"key":"a","request":{"contents":[{"parts":[{"text":"x"}]}]}}\n' * 3
    status, headers, _ = raw(
        emu,
        "POST",
        "/upload/v1beta/files",
        {"file": {"display_name": "chunks", "mime_type": "text/plain"}},
        headers={
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(len(body)),
            "X-Goog-Upload-Header-Content-Type": "text/plain",
        },
    )
    assert status == 200
    url = {k.lower(): v for k, v in headers.items()}["x-goog-upload-url"]
    path = url.split("/gemini", 1)[1]

    def send(command, offset, chunk):
        return raw(
            emu,
            "POST",
            path,
            chunk,
            key=None,
            headers={"X-Goog-Upload-Command": command, "X-Goog-Upload-Offset": str(offset)},
        )

    s, h, _ = send("upload", 0, body[:20])
    assert s == 200
    assert {k.lower(): v for k, v in h.items()}["x-goog-upload-status"] == "active"
    s, h, _ = send("upload", 5, body[20:])  # wrong offset
    assert s == 400
    s, h, _ = send("query", 0, b"")
    assert {k.lower(): v for k, v in h.items()}["x-goog-upload-size-received"] == "20"
    s, h, content = send("upload, finalize", 20, body[20:])
    assert s == 200
    assert {k.lower(): v for k, v in h.items()}["x-goog-upload-status"] == "final"
    file = types.File.model_validate(json.loads(content)["file"])
    assert file.size_bytes == len(body)
    assert file.display_name == "chunks"


def test_list_paginates_newest_first(emu):
    c = client(emu)
    names = [
        c.batches.create(
            model="gemini-2.5-flash", src=[{"contents": f"q{i}"}], config={"display_name": f"b{i}"}
        ).name
        for i in range(5)
    ]
    _, page = raw_json(emu, "GET", "/v1beta/batches?pageSize=2")
    assert [op["name"] for op in page["operations"]] == names[::-1][:2]
    assert page["nextPageToken"]
    for op in page["operations"]:
        check_operation(op)
    _status, page2 = raw_json(
        emu, "GET", f"/v1beta/batches?pageSize=2&pageToken={page['nextPageToken']}"
    )
    assert [op["name"] for op in page2["operations"]] == names[::-1][2:4]
    listed = types.ListBatchJobsResponse._from_response(
        response=genai_batches._ListBatchJobsResponse_from_mldev(page), kwargs={}
    )
    assert listed.next_page_token == page["nextPageToken"]
    jobs = list(c.batches.list(config={"page_size": 2}))
    assert [j.name for j in jobs] == names[::-1]
    assert [j.display_name for j in jobs] == [f"b{i}" for i in range(5)][::-1]
    list_calls = [e for e in emu.log() if e["path"].endswith("/batches") and e["method"] == "GET"]
    assert len(list_calls) >= 3 + 2  # 3 pages via the SDK, 2 raw


def test_latency_lifecycle_cancel_and_delete(emu):
    emu.configure(latency=100)
    c = client(emu)
    job = c.batches.create(
        model="gemini-2.5-flash",
        src=[{"contents": f"q{i}", "metadata": {"key": str(i)}} for i in range(10)],
    )
    assert c.batches.get(name=job.name).state == types.JobState.JOB_STATE_PENDING
    emu.advance(55)  # half way through the running span: about half of the requests ran
    running = c.batches.get(name=job.name)
    assert running.state == types.JobState.JOB_STATE_RUNNING
    assert running.dest is None
    _status, op = raw_json(emu, "GET", f"/v1beta/{job.name}")
    assert op["metadata"]["batchStats"]["pendingRequestCount"] == "5"
    assert "done" not in op
    c.batches.cancel(name=job.name)
    cancelled = c.batches.get(name=job.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED
    items = cancelled.dest.inlined_responses
    assert [r.response is not None for r in items] == [True] * 5 + [False] * 5
    assert {r.error.code for r in items[5:]} == {499}
    check_operation(raw_json(emu, "GET", f"/v1beta/{job.name}")[1])
    with pytest.raises(errors.ClientError) as e:
        c.batches.cancel(name=job.name)
    assert e.value.status == "FAILED_PRECONDITION"
    c.batches.delete(name=job.name)
    assert list(c.batches.list()) == []
    with pytest.raises(errors.ClientError) as e:
        c.batches.get(name=job.name)
    assert e.value.code == 404


def test_cancel_with_delay_and_omit(emu):
    emu.configure(latency=100, cancel_delay=10, cancel_unfinished="omit")
    c = client(emu)
    job = c.batches.create(model="gemini-2.5-flash", src=[{"contents": "a"}, {"contents": "b"}])
    c.batches.cancel(name=job.name)
    assert c.batches.get(name=job.name).state == types.JobState.JOB_STATE_PENDING
    emu.advance(11)
    done = c.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_CANCELLED
    assert done.dest.inlined_responses is None or done.dest.inlined_responses == []


def test_expired_batch_has_no_results(emu):
    emu.configure(latency=49 * 3600)
    c = client(emu)
    job = c.batches.create(model="gemini-2.5-flash", src=[{"contents": "slow"}])
    emu.advance(47 * 3600)
    assert c.batches.get(name=job.name).state == types.JobState.JOB_STATE_RUNNING
    emu.advance(2 * 3600)
    expired = c.batches.get(name=job.name)
    assert expired.state == types.JobState.JOB_STATE_EXPIRED
    assert expired.done
    assert expired.dest is None
    _status, op = raw_json(emu, "GET", f"/v1beta/{job.name}")
    check_operation(op)
    assert op["done"]
    assert "output" not in op["metadata"]
    assert op["error"]["message"]


def test_unreadable_input_lines_get_error_entries(emu):
    # The real API never drops a line: each unreadable one is an error entry in the output.
    c = client(emu, "v1")
    data = (
        b'{"key":"good","request":{"contents":[{"parts":[{"text":"a"}]}]}}\n'
        b'{"key":"bad","request":{"contents":[]} trailing\n'
        b"not json\n"
        b"[1,2]\n"
        b'{"key":"unk","request":{"contents":[{"parts":[{"text":"a"}]}],'
        b'"generation_config":{"not_a_field":"json"}}}\n'
        b'{"key":"extra","request":{"contents":[{"parts":[{"text":"a"}]}]},"bogus":1}\n'
    )
    f = c.files.upload(file=io.BytesIO(data), config={"mime_type": "text/plain"})
    job = c.batches.create(model="gemini-2.5-flash", src=f.name)
    done = c.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    lines = [json.loads(x) for x in c.files.download(file=done.dest.file_name).splitlines()]
    assert len(lines) == 6
    assert "response" in lines[0]
    errors = lines[1:]
    assert all(e["error"]["code"] == 400 for e in errors)
    assert [e.get("key") for e in errors] == ["bad", None, None, "unk", "extra"]
    assert (
        "Unknown name \"not_a_field\" at 'request.generation_config'"
        in (errors[3]["error"]["message"])
    )
    assert 'Unknown name "bogus"' in errors[4]["error"]["message"]
    for e in errors:
        assert e["error"]["status"] == "INVALID_ARGUMENT"
        types.JobError.model_validate({k: v for k, v in e["error"].items() if k != "status"})


def test_empty_input_file_fails_the_batch(emu):
    c = client(emu, "v1")
    f = c.files.upload(file=io.BytesIO(b"\n\n"), config={"mime_type": "text/plain"})
    job = c.batches.create(model="gemini-2.5-flash", src=f.name)
    failed = c.batches.get(name=job.name)
    assert failed.state == types.JobState.JOB_STATE_FAILED
    _status, op = raw_json(emu, "GET", f"/v1/{job.name}")
    check_operation(op)
    assert "no valid" in op["error"]["message"]


@pytest.mark.parametrize(
    ("batch", "name", "where"),
    [
        ({"bogus": 1}, "bogus", "batch"),
        (
            {"inputConfig": {"requests": {"requests": [], "x": 1}}},
            "x",
            "batch.input_config.requests",
        ),
        (
            {
                "inputConfig": {
                    "requests": {
                        "requests": [
                            {"request": {"contents": [{"parts": [{"text": "x"}]}], "unknownTop": 1}}
                        ]
                    }
                }
            },
            "unknownTop",
            "batch.input_config.requests.requests[0].request",
        ),
        (
            {
                "inputConfig": {
                    "requests": {
                        "requests": [
                            {
                                "request": {
                                    "contents": [{"parts": [{"text": "x"}]}],
                                    "generationConfig": {"notAField": 3},
                                }
                            }
                        ]
                    }
                }
            },
            "notAField",
            "batch.input_config.requests.requests[0].request.generation_config",
        ),
        (
            {
                "inputConfig": {
                    "requests": {
                        "requests": [
                            {"request": {"contents": [{"parts": [{"text": "x", "zzz": 1}]}]}}
                        ]
                    }
                }
            },
            "zzz",
            "batch.input_config.requests.requests[0].request.contents[0].parts[0]",
        ),
        (
            {
                "inputConfig": {
                    "requests": {
                        "requests": [
                            {"request": {"contents": [{"parts": [{"text": "x"}]}]}, "meta": {}}
                        ]
                    }
                }
            },
            "meta",
            "batch.input_config.requests.requests[0]",
        ),
    ],
    ids=["batch", "requests", "request", "generation-config", "part", "item"],
)
def test_unknown_field_names_are_rejected(emu, batch, name, where):
    # The real API: 400 INVALID_ARGUMENT for the whole create.
    status, body = raw_json(
        emu, "POST", "/v1beta/models/gemini-2.5-flash:batchGenerateContent", {"batch": batch}
    )
    assert status == 400
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    assert body["error"]["message"] == (
        f"Invalid JSON payload received. Unknown name \"{name}\" at '{where}': Cannot find field."
    )


def test_both_spellings_of_field_names_are_accepted(emu):
    request = {
        "contents": [{"role": "user", "parts": [{"text": "x"}]}],
        "generation_config": {"response_mime_type": "application/json", "temperature": 0.5},
        "systemInstruction": {"parts": [{"text": "be terse"}]},
    }
    batch = {
        "display_name": "d",
        "input_config": {
            "requests": {"requests": [{"request": request, "metadata": {"key": "a"}}]}
        },
    }
    status, op = raw_json(
        emu, "POST", "/v1beta/models/gemini-2.5-flash:batchGenerateContent", {"batch": batch}
    )
    assert status == 200, op


def test_auth_and_error_envelope(emu):
    status, body = raw_json(emu, "GET", "/v1beta/batches", key=None)
    assert status == 403
    assert body["error"]["status"] == "PERMISSION_DENIED"
    bad = client(emu, key="invalid-key")  # keep a reference: its finaliser closes HTTP
    with pytest.raises(errors.ClientError) as e:
        bad.batches.list()
    assert e.value.code == 400
    assert "API key not valid" in e.value.message
    c = client(emu)
    with pytest.raises(errors.ClientError) as e:
        c.batches.get(name="batches/nope")
    assert e.value.code == 404
    assert e.value.status == "NOT_FOUND"
    status, body = raw_json(emu, "GET", "/v2/batches")
    assert status == 404
    assert body["error"]["code"] == 404


def test_inline_limit_and_bad_input(emu):
    emu.configure(gemini={"max_inline_bytes": 2000})
    try:  # the limit must not outlive a failure here: later tests share the emulator
        c = client(emu)
        with pytest.raises(errors.ClientError, match="payload size"):
            c.batches.create(model="gemini-2.5-flash", src=[{"contents": "x" * 3000}])
        status, body = raw_json(
            emu, "POST", "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
            {"batch": {"inputConfig": {}}},
        )
        assert status == 400
        assert body["error"]["status"] == "INVALID_ARGUMENT"
    finally:
        emu.configure(gemini={"max_inline_bytes": 20 * 1024 * 1024})


def test_thoughts_are_reported_and_skipped_by_the_decoder(emu):
    c = client(emu)
    job = c.batches.create(
        model="gemini-2.5-flash",
        src=[
            {
                "contents": "think",
                "metadata": {"key": "t"},
                "config": {
                    "thinking_config": {"include_thoughts": True},
                    "response_mime_type": "application/json",
                    "response_json_schema": SCHEMA,
                },
            },
            {"contents": "[[emulator:refusal]]", "metadata": {"key": "r"}},
        ],
    )
    done = c.batches.get(name=job.name)
    resp = done.dest.inlined_responses[0].response
    parts = resp.candidates[0].content.parts
    assert parts[0].thought is True
    assert parts[1].thought is None
    usage = resp.usage_metadata
    assert usage.thoughts_token_count > 0
    check_operation(raw_json(emu, "GET", f"/v1beta/{job.name}")[1])
    # The library's decoder takes the text parts only and bills thoughts as output.
    lines = "\n".join(
        json.dumps(
            {
                "key": r.metadata["key"],
                "response": r.response.model_dump(mode="json", by_alias=True, exclude_none=True),
            }
        )
        for r in done.dest.inlined_responses
    ).encode()
    decoded = decode_lines(lines)
    row = decoded.row(0, named=True)
    Answer.model_validate_json(row["text"])
    assert row["output_tokens"] == usage.candidates_token_count + usage.thoughts_token_count
    refused = decoded.row(1, named=True)
    assert refused["outcome"] == "errored"
    assert "SAFETY" in refused["error"]


def test_sdk_retries_injected_503_when_configured(emu):
    c = client(emu, retry=True)
    job = c.batches.create(model="gemini-2.5-flash", src=[{"contents": "x"}])
    emu.inject_fault(method="GET", path_regex=r"/gemini/v1beta/batches/", status=503)
    assert c.batches.get(name=job.name).state == types.JobState.JOB_STATE_SUCCEEDED
    statuses = [e["status"] for e in emu.log() if e["method"] == "GET"]
    assert statuses == [503, 200]
    emu.inject_fault(method="GET", path_regex=r"/gemini/v1beta/batches/", status=503)
    plain = client(emu)
    with pytest.raises(errors.ServerError):
        plain.batches.get(name=job.name)  # the SDK's default: no retry


def test_query_key_is_redacted_from_the_log(emu):
    # The real API takes ``?key=``; the emulator's log must never keep its value.
    status, _ = raw_json(emu, "GET", "/v1beta/batches?pageSize=1&key=AIzaSECRETKEY123", key=None)
    assert status == 200
    status, _ = raw_json(emu, "GET", "/v1beta/batches?Key=AIzaOTHER&access_token=tok", key=None)
    entries = emu.log()
    text = json.dumps(entries)
    assert "SECRETKEY" not in text and "AIzaOTHER" not in text and "=tok" not in text
    assert entries[0]["query"] == "pageSize=1&key=REDACTED"
    assert all(e["auth"] is True for e in entries)


@pytest.mark.parametrize(
    "model", ["emulator-unknown-model", "gpt-4.1-mini", "claude-haiku-4-5", "gemini-2.5-flesh"]
)
def test_a_model_gemini_does_not_serve_is_a_404(emu, model):
    # claude-haiku-4-5: genai-prices' Google list prices it (Vertex AI), the Gemini API
    # does not serve it.
    c = client(emu)
    with pytest.raises(errors.ClientError) as e:
        c.batches.create(model=model, src=[{"contents": "x"}])
    assert e.value.code == 404
    assert e.value.status == "NOT_FOUND"
    assert e.value.message == (
        f"models/{model} is not found for API version v1beta, or is not supported for "
        "batchGenerateContent. Call ListModels to see the list of available models and "
        "their supported methods."
    )
    assert list(c.batches.list()) == []
    with pytest.raises(errors.ClientError) as e:
        c.models.generate_content(model=model, contents="x")
    assert e.value.code == 404
    assert "is not supported for generateContent" in str(e.value.message)


def _cached_counts(emu, model, prompts, system=None):
    c = client(emu)
    config = types.GenerateContentConfig(system_instruction=system) if system else None
    job = c.batches.create(
        model=model,
        src=[
            types.InlinedRequest(contents=p, metadata={"key": str(i)}, config=config)
            for i, p in enumerate(prompts)
        ],
    )
    done = c.batches.get(name=job.name)
    return [r.response.usage_metadata for r in done.dest.inlined_responses]


def test_implicit_cache_reports_the_shared_prefix_above_the_model_minimum(emu):
    manual = "Section: all returns need a receipt. " * 300  # 11,100 chars: 2,775 tokens
    usages = _cached_counts(
        emu, "gemini-2.5-flash", [manual + "Q: receipts?", manual + "Q: refunds?", "Q: hello"]
    )
    shared = len(manual + "Q: re") // 4
    assert [u.cached_content_token_count for u in usages] == [0, shared, 0]
    assert usages[1].prompt_token_count > shared  # cached tokens are part of the prompt
    # Gemini 3 needs 4,096 tokens: the same 2,775-token prefix is not cached there.
    usages = _cached_counts(emu, "gemini-3-flash-preview", [manual + "Q: a?", manual + "Q: b?"])
    assert [u.cached_content_token_count for u in usages] == [0, 0]
    # Models before 2.5 have no implicit caching (2.0 Flash, retired: where still served).
    emu.configure(serve_retired=True)
    usages = _cached_counts(emu, "gemini-2.0-flash", [manual + "Q: a?", manual + "Q: b?"])
    assert [u.cached_content_token_count for u in usages] == [0, 0]


def test_implicit_cache_covers_the_system_instruction(emu):
    system = "You are a careful clerk. " * 400  # 10,000 chars: 2,500 tokens
    usages = _cached_counts(emu, "gemini-2.5-pro", ["one", "two"], system=system)
    assert usages[0].cached_content_token_count == 0
    assert usages[1].cached_content_token_count == (len(system) + 1) // 4


@pytest.mark.parametrize("mime", ["jsonl", "application/jsonl", "application/json-lines",
                                  "application/x-ndjson"])
def test_a_jsonl_mime_type_is_refused_as_the_files_api_does(emu, mime):
    # googleapis/python-genai#1547: the finalize answers an error body instead of the file,
    # and google-genai 3.6.1 raises KeyError('file') (#1248, #1590).
    c = client(emu)
    with pytest.raises(KeyError, match="file"):
        c.files.upload(file=io.BytesIO(b'{"key":"a"}\n'), config={"mime_type": mime})
    assert list(c.files.list()) == []


def test_our_batch_input_upload_uses_a_mime_type_the_api_accepts(emu, tmp_path, monkeypatch):
    import polars as pl

    from batchata_df import batch_llm
    from batchata_df.providers.gemini import INPUT_MIME_TYPE, GeminiProvider

    monkeypatch.setattr(GeminiProvider, "inline_max_bytes", 10)  # through a file
    out = pl.DataFrame({"t": ["a", "b"]}).pipe(
        batch_llm, model="gemini-2.5-flash", prompt="{t}", state=tmp_path / "s")
    assert out["_status"].to_list() == ["completed", "completed"]
    assert INPUT_MIME_TYPE == "text/plain"
    c = client(emu)
    (uploaded,) = [f for f in c.files.list() if f.source == types.FileSource.UPLOADED]
    assert uploaded.mime_type == "text/plain"
