"""What is sent: the exact request bodies, read back from the emulator's log.

Every expected body below is written out by hand from the providers' documented request
shapes (OpenAI Batch JSONL lines for ``/v1/chat/completions``, Anthropic Message Batches
``requests[].params``, Gemini ``batchGenerateContent`` inline requests), never derived
from our own encoder: if the encoder drops the system prompt, a parameter, the template's
literal text or a file, the comparison fails.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm

SYSTEM = "You are terse."
TEMPLATE = "Classify {{this}} review: {text}"
TEXTS = ["great {x}", "naïve café ✓"]
PROMPTS = ["Classify {this} review: great {x}", "Classify {this} review: naïve café ✓"]
NOTE = b"Hello notes.\n"
NOTE_NAME = "file-" + "3cedc55803ba" + ".txt"  # file-<sha256[:12]>.<ext> of NOTE (files.py)


class Answer(BaseModel):
    label: str
    score: float


ANSWER_SCHEMA = {
    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
    "required": ["label", "score"],
    "type": "object",
    "additionalProperties": False,
}


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _run(emu, model: str, params: dict[str, Any], **kwargs: Any) -> pl.DataFrame:
    emu.configure(log_bodies=True)
    frame = kwargs.pop("frame", pl.DataFrame({"text": TEXTS, "other": [1, 2]}))
    out = frame.pipe(
        batch_llm, schema=Answer, model=model, prompt=TEMPLATE, system=SYSTEM, params=params,
        **kwargs,
    )
    assert out["_status"].to_list() == ["completed"] * frame.height, out["_error"].to_list()
    return out


def _posts(emu, suffix: str) -> list[dict[str, Any]]:
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith(suffix)]


# ---- OpenAI


def _openai_body(prompt: str, content: object = None) -> dict[str, Any]:
    return {
        "model": "gpt-4.1-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": prompt if content is None else content},
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "Answer", "strict": True, "schema": ANSWER_SCHEMA},
        },
        "max_completion_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["END"],
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
    }


OPENAI_PARAMS = {
    "max_tokens": 300,
    "temperature": 0.2,
    "top_p": 0.9,
    "seed": 7,
    "stop": ["END"],
    "frequency_penalty": 0.5,
    "presence_penalty": -0.5,
}


def test_openai_request_lines_are_exactly_the_documented_body(emu) -> None:
    out = _run(emu, "gpt-4.1-mini", OPENAI_PARAMS)
    (upload,) = _posts(emu, "/files")
    ids = out["_job_id"].to_list()
    assert upload["lines"] == [
        {
            "custom_id": ids[i],
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": _openai_body(PROMPTS[i]),
        }
        for i in range(2)
    ]
    (create,) = _posts(emu, "/batches")
    assert create["body"]["endpoint"] == "/v1/chat/completions"
    assert create["body"]["completion_window"] == "24h"


def test_openai_request_with_files_sends_document_then_image_then_prompt(emu) -> None:
    png = _png()
    frame = pl.DataFrame({"text": TEXTS[:1], "doc": [[NOTE, png]]})
    out = _run(emu, "gpt-4.1-mini", OPENAI_PARAMS, frame=frame, files="doc")
    (upload,) = _posts(emu, "/files")
    content = [
        {"type": "text", "text": f'<document name="{NOTE_NAME}">\nHello notes.\n\n</document>'},
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()},
        },
        {"type": "text", "text": PROMPTS[0]},
    ]
    assert upload["lines"] == [
        {
            "custom_id": out["_job_id"].item(),
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": _openai_body(PROMPTS[0], content),
        }
    ]


# ---- Anthropic

# No sampling parameter: Claude takes none under API version 2026-10-21, which anthropic 2.x
# sends (tests/test_anthropic_api_version.py).
ANTHROPIC_PARAMS = {"max_tokens": 300, "stop": ["END"]}


def test_anthropic_request_params_are_exactly_the_documented_body(emu) -> None:
    out = _run(emu, "claude-haiku-4-5", ANTHROPIC_PARAMS)
    (create,) = _posts(emu, "/messages/batches")
    ids = out["_job_id"].to_list()
    assert create["body"] == {
        "requests": [
            {
                "custom_id": ids[i],
                "params": {
                    "model": "claude-haiku-4-5",
                    "messages": [{"role": "user", "content": PROMPTS[i]}],
                    "system": "You are terse.",
                    "max_tokens": 300,
                    "stop_sequences": ["END"],
                    "output_config": {
                        "format": {
                            "type": "json_schema",
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "label": {"type": "string"},
                                    "score": {"type": "number"},
                                },
                                "additionalProperties": False,
                                "required": ["label", "score"],
                            },
                        }
                    },
                },
            }
            for i in range(2)
        ]
    }


def test_anthropic_request_with_files_and_citations(emu) -> None:
    png = _png()
    frame = pl.DataFrame({"text": TEXTS[:1], "doc": [[NOTE, png]]})
    out = _run(emu, "claude-haiku-4-5", ANTHROPIC_PARAMS, frame=frame, files="doc", citations=True)
    (create,) = _posts(emu, "/messages/batches")
    # Citations cannot be combined with structured outputs: the schema goes in the system
    # prompt, before the user's own system prompt.
    system = (
        "Answer with ONLY a JSON object that is valid for the JSON Schema below: no text "
        "before or after it and no code fence. Take the values from the documents where you "
        "can, citing them.\n<answer_json_schema>\n"
        '{"properties": {"label": {"type": "string"}, "score": {"type": "number"}}, '
        '"required": ["label", "score"], "type": "object", "additionalProperties": false}\n'
        "</answer_json_schema>\n\nYou are terse."
    )
    assert create["body"] == {
        "requests": [
            {
                "custom_id": out["_job_id"].item(),
                "params": {
                    "model": "claude-haiku-4-5",
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "document",
                                    "source": {
                                        "type": "text",
                                        "media_type": "text/plain",
                                        "data": "Hello notes.\n",
                                    },
                                    "title": NOTE_NAME,
                                    "citations": {"enabled": True},
                                },
                                {
                                    "type": "image",
                                    "source": {
                                        "type": "base64",
                                        "media_type": "image/png",
                                        "data": base64.b64encode(png).decode(),
                                    },
                                },
                                {"type": "text", "text": PROMPTS[0]},
                            ],
                        }
                    ],
                    "system": system,
                    "max_tokens": 300,
                    "stop_sequences": ["END"],
                },
            }
        ]
    }


# ---- Gemini

# gemini-2.5-flash thinks inside maxOutputTokens (the emulator spends thinking tokens
# there since models-caps): room for thinking and the answer.
GEMINI_PARAMS = {
    "max_tokens": 3000,
    "temperature": 0.2,
    "top_p": 0.9,
    "top_k": 5,
    "stop": ["END"],
    "seed": 7,
}


def _gemini_request(key: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "request": {
            "contents": [{"parts": parts, "role": "user"}],
            "systemInstruction": {"parts": [{"text": "You are terse."}]},
            "generationConfig": {
                "temperature": 0.2,
                "topP": 0.9,
                "topK": 5.0,  # the SDK's GenerationConfig.top_k is a float
                "maxOutputTokens": 3000,
                "stopSequences": ["END"],
                "seed": 7,
                "responseMimeType": "application/json",
                "responseJsonSchema": {
                    **ANSWER_SCHEMA,
                    "propertyOrdering": ["label", "score"],
                },
            },
        },
        "metadata": {"key": key},
    }


@pytest.mark.filterwarnings("ignore::batchata_df.errors.ThinkingRoomWarning")  # not the subject
def test_gemini_inline_requests_are_exactly_the_documented_body(emu) -> None:
    out = _run(emu, "gemini-2.5-flash", GEMINI_PARAMS)
    (create,) = _posts(emu, "/models/gemini-2.5-flash:batchGenerateContent")
    ids = out["_job_id"].to_list()
    batch = create["body"]["batch"]
    assert batch["inputConfig"] == {
        "requests": {
            "requests": [_gemini_request(ids[i], [{"text": PROMPTS[i]}]) for i in range(2)]
        }
    }
    assert batch["displayName"].startswith("batchata-")


@pytest.mark.filterwarnings("ignore::batchata_df.errors.ThinkingRoomWarning")  # not the subject
def test_gemini_request_with_files(emu) -> None:
    png = _png()
    frame = pl.DataFrame({"text": TEXTS[:1], "doc": [[NOTE, png]]})
    out = _run(emu, "gemini-2.5-flash", GEMINI_PARAMS, frame=frame, files="doc")
    (create,) = _posts(emu, "/models/gemini-2.5-flash:batchGenerateContent")
    parts = [
        {"text": f'<document name="{NOTE_NAME}">\nHello notes.\n\n</document>'},
        {"inlineData": {"data": base64.b64encode(png).decode(), "mime_type": "image/png"}},
        {"text": PROMPTS[0]},
    ]
    assert create["body"]["batch"]["inputConfig"] == {
        "requests": {"requests": [_gemini_request(out["_job_id"].item(), parts)]}
    }


# ---- the log itself


def test_logged_bodies_redact_the_key_and_are_off_by_default(emu) -> None:
    frame = pl.DataFrame({"text": ["a"]})
    frame.pipe(batch_llm, model="claude-haiku-4-5", prompt="{text}")
    assert all("body" not in e and "lines" not in e for e in emu.log())
    emu.clear_log()
    # A prompt that happens to contain the key: the log shows where it went, never the key.
    key = emu.env()["ANTHROPIC_API_KEY"]
    emu.configure(log_bodies=True)
    frame = pl.DataFrame({"text": [f"leak {key}"]})
    frame.pipe(batch_llm, model="claude-haiku-4-5", prompt="{text}")
    (create,) = _posts(emu, "/messages/batches")
    assert create["body"]["requests"][0]["params"]["messages"][0]["content"] == "leak REDACTED"
    assert key not in str(emu.log())


@pytest.mark.parametrize("model", ["gpt-4.1-mini", "claude-haiku-4-5", "gemini-2.5-flash"])
def test_per_row_system_and_model_are_sent_per_row(emu, model: str) -> None:
    """A system prompt given as an expression is sent per row, not one row's for all."""
    emu.configure(log_bodies=True)
    frame = pl.DataFrame({"text": ["same", "same"], "sys": ["Be brief.", "Be formal."]})
    out = frame.pipe(batch_llm, model=model, prompt="{text}", system=pl.col("sys"))
    assert out["_job_id"].n_unique() == 2
    sent: list[str] = []
    for entry in emu.log():
        if entry.get("lines"):
            sent += [line["body"]["messages"][0]["content"] for line in entry["lines"]]
        body = entry.get("body") or {}
        for request in body.get("requests", []):
            sent.append(request["params"]["system"])
        inline = body.get("batch", {}).get("inputConfig", {}).get("requests", {})
        for request in inline.get("requests", []):
            sent.append(request["request"]["systemInstruction"]["parts"][0]["text"])
    assert sorted(sent) == ["Be brief.", "Be formal."]


def test_gemini_models_prefix_is_the_same_model_as_its_id(emu, tmp_path) -> None:
    # Gemini's resource name "models/gemini-2.5-pro" names gemini-2.5-pro (google-genai
    # _transformers.t_model prepends "models/" when absent): the same family, default
    # max_tokens and price, so the same request body and the same cost under max_cost_usd.
    from batchata_df.cost import PriceTable
    from batchata_df.models import default_max_tokens, family_of

    plain, spelled = "gemini-2.5-pro", "models/gemini-2.5-pro"
    assert family_of("gemini", spelled) == family_of("gemini", plain)
    assert family_of("gemini", spelled).name == "Gemini 2.5 Pro"
    assert default_max_tokens(family_of("gemini", spelled), {}) == default_max_tokens(
        family_of("gemini", plain), {}
    )
    assert PriceTable().get("gemini", spelled) == PriceTable().get("gemini", plain) is not None
    emu.configure(log_bodies=True)
    frame = pl.DataFrame({"t": ["Explain the history of Rome."]})
    bodies, costs = [], []
    for name in (plain, spelled):
        out = frame.pipe(batch_llm, model=f"gemini:{name}", prompt="{t}", max_cost_usd=5,
                         state=tmp_path / name.replace("/", "_"))  # fmt: skip
        assert out["_status"].to_list() == ["completed"], out["_error"].to_list()
        costs.append(out["_cost_usd"].item())
        (create,) = _posts(emu, "/models/gemini-2.5-pro:batchGenerateContent")[len(bodies):]
        (request,) = create["body"]["batch"]["inputConfig"]["requests"]["requests"]
        bodies.append(request["request"]["generationConfig"])
    assert bodies[0] == bodies[1]
    assert bodies[1]["maxOutputTokens"] == default_max_tokens(family_of("gemini", plain), {})
    assert bodies[1]["maxOutputTokens"] == 16_384  # not the 4,096 of "other Gemini models"
    assert costs[0] == costs[1] > 0
