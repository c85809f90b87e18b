"""What a realtime request carries, as the emulator received it through each official SDK.

``mode="realtime"`` sends the very line :meth:`Provider.encode` built for a batch, one at a
time through each SDK's standard endpoint; each provider's ``answer`` takes it apart for its
SDK (OpenAI's ``body`` as keyword arguments, Anthropic's ``params`` as the three required
arguments and ``extra_body``, Gemini's ``request`` as ``contents`` and a
``GenerateContentConfig``). A field lost on the way (the thinking settings, the earlier
turns of a conversation, a parameter) is another request, billed all the same. So:

* the body each realtime endpoint received equals the batch request of the same row (read
  from the emulator's log), with history, system prompt, parameters and thinking on;
* the earlier turns (``history=``) reach each endpoint in order, between the system prompt
  and the prompt, in the shapes the providers document (chat completions ``messages``,
  Messages ``messages`` with ``system`` apart, Gemini ``contents`` with the ``model`` role),
  written out by hand.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm
from batchata_df.jobs import HISTORY_DTYPE


class Verdict(BaseModel):
    label: str


TURNS = [
    {"role": "user", "content": "My order #12 arrived broken."},
    {"role": "assistant", "content": "Sorry to hear that. What broke?"},
]
PROMPT = "The lid. Classify this complaint."
CASES = {
    "gpt-5.4-mini": {"max_tokens": 3000, "reasoning_effort": "low", "seed": 7},
    "claude-haiku-4-5": {"max_tokens": 3000, "reasoning_effort": "low", "stop": "END"},
    "gemini-2.5-flash": {"max_tokens": 3000, "reasoning_effort": "low", "stop": "END"},
}


def _run(emu, tmp_path, model: str, mode: str) -> list[dict[str, Any]]:
    emu.clear_log()
    emu.configure(log_bodies=True)
    frame = pl.DataFrame(
        {"p": [PROMPT], "h": [TURNS]},
        schema={"p": pl.String, "h": HISTORY_DTYPE},
    )
    out = frame.pipe(
        batch_llm, schema=Verdict, model=model, prompt="{p}", system="Be brief.", history="h",
        params=CASES[model], mode=mode, state=tmp_path / mode,
    )  # fmt: skip
    assert out["_status"].to_list() == ["completed"], out["_error"].to_list()
    posts = [e for e in emu.log() if e["method"] == "POST" and ("body" in e or "lines" in e)]
    bodies: list[dict[str, Any]] = []
    for post in posts:
        for line in post.get("lines") or []:  # an OpenAI batch input file
            bodies.append(line["body"])
        body = post.get("body") or {}
        for request in body.get("requests", []):  # Anthropic's batch
            bodies.append(request["params"])
        inline = body.get("batch", {}).get("inputConfig", {}).get("requests", {})
        for request in inline.get("requests", []):  # Gemini's inline batch
            bodies.append(request["request"])
        if post["path"].endswith(("/chat/completions", "/v1/messages", ":generateContent")):
            bodies.append({k: v for k, v in body.items() if k != "stream"})
    return bodies


@pytest.mark.parametrize("model", sorted(CASES))
def test_the_realtime_body_is_the_batch_request_of_the_same_row(emu, tmp_path, model) -> None:
    (batch,) = _run(emu, tmp_path, model, "batch")
    (realtime,) = _run(emu, tmp_path, model, "realtime")
    assert realtime == batch
    # The fields the comparison is about are there at all (not both dropped alike).
    text = str(batch)
    assert "Sorry to hear that. What broke?" in text and "Be brief." in text
    # google-genai serialises the thinking settings in snake case (``thinking_budget``),
    # which the API's JSON parser takes as it takes the camel-case name.
    assert any(k in text for k in ("reasoning_effort", "budget_tokens", "thinking_budget"))


# ---- the earlier turns, as the providers document them


def _realtime_body(emu, model: str) -> dict[str, Any]:
    emu.configure(log_bodies=True)
    frame = pl.DataFrame({"p": [PROMPT], "h": [TURNS]}, schema={"p": pl.String, "h": HISTORY_DTYPE})
    out = frame.pipe(
        batch_llm, model=model, prompt="{p}", system="Be brief.", history="h",
        mode="realtime", params={"max_tokens": 3000},
    )  # fmt: skip
    assert out["_status"].to_list() == ["completed"], out["_error"].to_list()
    ends = ("/chat/completions", "/v1/messages", ":generateContent")
    (post,) = [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith(ends)]
    body: dict[str, Any] = post["body"]
    return body


def test_openai_realtime_sends_the_earlier_turns_after_the_system_prompt(emu) -> None:
    body = _realtime_body(emu, "gpt-4.1-mini")
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        *TURNS,
        {"role": "user", "content": PROMPT},
    ]


def test_anthropic_realtime_sends_the_earlier_turns_before_the_prompt(emu) -> None:
    body = _realtime_body(emu, "claude-haiku-4-5")
    assert body["system"] == "Be brief."
    assert body["messages"] == [*TURNS, {"role": "user", "content": PROMPT}]


@pytest.mark.filterwarnings("ignore::batchata_df.errors.ThinkingRoomWarning")  # not the subject
def test_gemini_realtime_sends_the_earlier_turns_in_contents(emu) -> None:
    body = _realtime_body(emu, "gemini-2.5-flash")
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["contents"] == [
        {"parts": [{"text": TURNS[0]["content"]}], "role": "user"},
        {"parts": [{"text": TURNS[1]["content"]}], "role": "model"},
        {"parts": [{"text": PROMPT}], "role": "user"},
    ]
