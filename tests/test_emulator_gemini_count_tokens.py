"""The emulator's Gemini ``models/{model}:countTokens``, through google-genai over real HTTP.

What a client (the seed library's ``estimate_cost`` among them) sees: the count is the
``promptTokenCount`` generateContent reports for the same prompt, by modality; nothing is
billed; the body is the Gemini API's ``CountTokensRequest`` (``contents`` or
``generateContentRequest``, nothing else) and the errors are the real ones. google-genai
3.6.1 sends ``{"contents": [...]}`` only (it refuses ``system_instruction``, ``tools`` and
``generation_config`` in Developer API mode before sending), so the other request forms go
over plain HTTP.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

MODEL = "gemini-2.5-flash"
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
    "required": ["label", "score"],
}


def _client(emu):
    from google import genai
    from google.genai import types

    return genai.Client(
        api_key="emulator-key",
        http_options=types.HttpOptions(base_url=emu.gemini_base_url, api_version="v1beta"),
    )


def _post(emu, path: str, body: object, key: str | None = "emulator-key") -> tuple[int, Any]:
    """POST ``body`` as JSON below the Gemini mount; (status, parsed answer)."""
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["x-goog-api-key"] = key
    url = emu.gemini_base_url.rstrip("/") + path
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _count(emu, body: object, model: str = MODEL, key: str | None = "emulator-key"):
    return _post(emu, f"/v1beta/models/{model}:countTokens", body, key)


def _png(width: int = 2, height: int = 2) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_count_tokens_is_the_prompt_token_count_generate_content_reports(emu) -> None:
    from google.genai import types

    client = _client(emu)
    prompts: list[Any] = [
        "Rate this review: great product, fast delivery",
        "x" * 4_001,  # 1,000 tokens and a bit (len // 4, rounded up)
        [
            types.Content(role="user", parts=[types.Part(text="What is in this picture?")]),
            types.Content(role="model", parts=[types.Part(text="A red square.")]),
            types.Content(
                role="user",
                parts=[
                    types.Part(text="And this one?"),
                    types.Part.from_bytes(data=_png(), mime_type="image/png"),
                ],
            ),
        ],
    ]
    counted, billed = [], []
    for contents in prompts:
        count = client.models.count_tokens(model=MODEL, contents=contents)
        reply = client.models.generate_content(model=MODEL, contents=contents)
        assert reply.usage_metadata is not None
        counted.append(count.total_tokens)
        billed.append(reply.usage_metadata.prompt_token_count)
        assert count.cached_content_token_count is None  # nothing cached for a count
    # The emulator's estimate: len // 4 per prompt (turns joined by a newline), plus 258
    # for an image up to 384 px.
    text3 = "What is in this picture?\nA red square.\nAnd this one?"
    assert counted == [46 // 4, 4_001 // 4, len(text3) // 4 + 258] == [11, 1_000, 271]
    assert counted == billed


def test_count_tokens_is_free_the_ledger_does_not_change(emu) -> None:
    client = _client(emu)
    client.models.generate_content(model=MODEL, contents="one billed request")
    before = emu.billing()
    assert [e["mode"] for e in before] == ["realtime"]
    for i in range(5):
        assert client.models.count_tokens(model=MODEL, contents=f"count me {i}").total_tokens == 2
    assert emu.billing() == before
    assert emu.realtime_stats()["served"] == 1  # a count is not a generation


def test_prompt_tokens_details_split_by_modality_as_generate_content_does(emu) -> None:
    from google.genai import types

    pdf = emu_pdf()
    parts = [
        {"text": "Compare the picture with the document."},
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(_png()).decode()}},
        {"inlineData": {"mimeType": "application/pdf", "data": base64.b64encode(pdf).decode()}},
    ]
    status, body = _count(emu, {"contents": [{"role": "user", "parts": parts}]})
    assert status == 200, body
    text = len("Compare the picture with the document.") // 4
    assert body == {
        "totalTokens": text + 258 + 258,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": text},
            {"modality": "IMAGE", "tokenCount": 258},
            {"modality": "DOCUMENT", "tokenCount": 258},  # one page
        ],
    }
    client = _client(emu)  # held: a Client closes its connection when collected
    reply = client.models.generate_content(
        model=MODEL,
        contents=types.Content(
            role="user",
            parts=[
                types.Part(text="Compare the picture with the document."),
                types.Part.from_bytes(data=_png(), mime_type="image/png"),
                types.Part.from_bytes(data=pdf, mime_type="application/pdf"),
            ],
        ),
    )
    usage = reply.usage_metadata
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_token_count == body["totalTokens"]
    assert [(d.modality.value if d.modality else None, d.token_count)
            for d in usage.prompt_tokens_details] == [
        (d["modality"], d["tokenCount"]) for d in body["promptTokensDetails"]
    ]  # fmt: skip


def emu_pdf() -> bytes:
    """A one-page PDF (reportlab, as the other PDF tests make theirs)."""
    from reportlab.lib.pagesizes import letter
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=letter)
    c.drawString(72, 700, "page one")
    c.save()
    return buf.getvalue()


def test_generate_content_request_counts_system_and_schema_as_billed(emu) -> None:
    from google.genai import types

    system = "You rate product reviews. Answer with a label and a score."
    user = "Rate: the box arrived crushed"
    request = {
        "model": f"models/{MODEL}",
        "systemInstruction": {"parts": [{"text": system}]},
        "contents": [{"role": "user", "parts": [{"text": user}]}],
        "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": SCHEMA},
    }
    status, body = _count(emu, {"generateContentRequest": request})
    assert status == 200, body
    client = _client(emu)
    reply = client.models.generate_content(
        model=MODEL,
        contents=user,
        config=types.GenerateContentConfig(
            system_instruction=system, response_mime_type="application/json",
            response_json_schema=SCHEMA,
        ),
    )  # fmt: skip
    assert reply.usage_metadata is not None
    schema_tokens = len(json.dumps(SCHEMA, separators=(",", ":"))) // 4
    prompt = len(f"{system}\n{user}") // 4
    assert body["totalTokens"] == prompt + schema_tokens == reply.usage_metadata.prompt_token_count
    # contents beside generateContentRequest are ignored ("ignored when
    # generateContentRequest is set"): the same count
    both = {"contents": [{"parts": [{"text": "x" * 400}]}], "generateContentRequest": request}
    assert _count(emu, both) == (200, body)
    assert emu.billing()[0]["mode"] == "realtime" and len(emu.billing()) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # Vertex AI's countTokens takes these at the top level; the Gemini API's does not.
        (
            {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"temperature": 0}},
            'Invalid JSON payload received. Unknown name "generationConfig": Cannot find field.',
        ),
        (
            {
                "contents": [{"parts": [{"text": "hi"}]}],
                "systemInstruction": {"parts": [{"text": "be brief"}]},
            },
            'Invalid JSON payload received. Unknown name "systemInstruction": Cannot find field.',
        ),
        # googleapis/python-genai#432, verbatim
        (
            {"generateContentRequest": {"systemInstruction": {"parts": [{"text": "be brief"}]}}},
            "* CountTokensRequest.generate_content_request.contents: contents is not specified\n"
            "* CountTokensRequest.generate_content_request.model: model is not specified\n",
        ),
        (
            {"generateContentRequest": {"contents": [{"parts": [{"text": "hi"}]}]}},
            "* CountTokensRequest.generate_content_request.model: model is not specified\n",
        ),
        (
            {
                "generateContentRequest": {
                    "model": f"models/{MODEL}",
                    "contents": [{"parts": [{"text": "hi"}]}],
                    "generationConfig": {"max_tokens": 5},
                }
            },
            'Invalid JSON payload received. Unknown name "max_tokens" at '
            "'generate_content_request.generation_config': Cannot find field.",
        ),
        ({}, "* CountTokensRequest.contents: contents is not specified\n"),
        (
            {"contents": [{"role": "assistant", "parts": [{"text": "hi"}]}]},
            "Please use a valid role: user, model.",
        ),
        (
            {"contents": [{"parts": [{"text": ""}]}]},
            "* GenerateContentRequest.contents[0].parts[0].data: required oneof field 'data' "
            "must have one initialized field",
        ),
        (
            {"contents": [{"parts": [{"inlineData": {"mimeType": "image/gif", "data": "R0lG"}}]}]},
            "Unsupported MIME type: image/gif",
        ),
    ],
)
def test_count_tokens_refuses_what_the_gemini_api_refuses(emu, body, message) -> None:
    assert _count(emu, body) == (
        400,
        {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}},
    )
    assert emu.billing() == []


def test_count_tokens_model_and_key_errors_through_the_sdk(emu) -> None:
    from google.genai import errors

    client = _client(emu)
    with pytest.raises(errors.ClientError) as unknown:
        client.models.count_tokens(model="emulator-unknown-model", contents="hi")
    assert unknown.value.code == 404
    assert unknown.value.status == "NOT_FOUND"
    assert unknown.value.message == (
        "models/emulator-unknown-model is not found for API version v1beta, or is not "
        "supported for countTokens. Call ListModels to see the list of available models and "
        "their supported methods."
    )
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    status, missing = _count(emu, body, key=None)
    assert (status, missing["error"]["status"]) == (403, "PERMISSION_DENIED")
    status, bad = _count(emu, body, key="invalid-key")
    assert (status, bad["error"]["message"]) == (
        400,
        "API key not valid. Please pass a valid API key.",
    )
    # GET is not the method
    req = urllib.request.Request(
        emu.gemini_base_url.rstrip("/") + f"/v1beta/models/{MODEL}:countTokens",
        headers={"x-goog-api-key": "emulator-key"},
    )
    with pytest.raises(urllib.error.HTTPError) as get:
        urllib.request.urlopen(req)
    assert get.value.code == 405
    assert emu.billing() == []


def test_the_sdk_refuses_config_fields_before_sending(emu) -> None:
    """google-genai 3.6.1 refuses these in Developer API mode itself: nothing reaches the
    emulator (its request log stays empty)."""
    from google.genai import types

    emu.configure(log_bodies=True)
    client = _client(emu)
    with pytest.raises(ValueError, match="system_instruction parameter is only supported"):
        client.models.count_tokens(
            model=MODEL, contents="hi",
            config=types.CountTokensConfig(system_instruction="be brief"),
        )  # fmt: skip
    assert [e for e in emu.log() if ":countTokens" in str(e.get("path"))] == []
