"""The emulator's realtime endpoints, through the official SDKs.

OpenAI ``/v1/chat/completions``, Anthropic ``/v1/messages`` and Gemini
``models/{model}:generateContent`` answer a request exactly as a batch answers the same
request (same generator, markers and model rules), bill it at the standard price in the
ledger (``mode="realtime"``, with the same ``request`` key a batch bill of it carries),
and count the requests they answer at once.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm


class Answer(BaseModel):
    label: str
    score: int


TEXTS = ["great product", "awful service"]


def _batch(emu, model: str) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Run the rows as a batch; return the frame and the request lines that were sent."""
    emu.configure(log_bodies=True)
    out = pl.DataFrame({"text": TEXTS}).pipe(
        batch_llm, schema=Answer, model=model, prompt="Rate: {text}"
    )
    assert out["_status"].to_list() == ["completed", "completed"], out["_error"].to_list()
    lines: list[dict[str, Any]] = []
    for entry in emu.log():
        lines += entry.get("lines") or []
        body = entry.get("body") or {}
        lines += body.get("requests", [])  # Anthropic
        inline = body.get("batch", {}).get("inputConfig", {}).get("requests", {})
        lines += inline.get("requests", [])  # Gemini inline
    assert len(lines) == 2
    return out, lines


def _values(out: pl.DataFrame) -> list[dict[str, Any]]:
    return out.select("label", "score").to_dicts()


def _bills(emu, mode: str) -> list[str]:
    return sorted(str(e["request"]) for e in emu.billing() if e["mode"] == mode)


def test_openai_chat_completions_answer_like_the_batch_and_bill_realtime(emu) -> None:
    import openai

    out, lines = _batch(emu, "gpt-4.1-mini")
    client = openai.OpenAI(api_key="sk-test", base_url=emu.openai_base_url, max_retries=0)
    answers = []
    for line in sorted(lines, key=lambda x: out["_job_id"].to_list().index(x["custom_id"])):
        reply = client.chat.completions.create(**line["body"])
        assert reply.usage is not None and reply.usage.prompt_tokens > 0
        answers.append(json.loads(reply.choices[0].message.content or ""))
    client.close()
    assert answers == _values(out)
    assert _bills(emu, "realtime") == _bills(emu, "batch")
    assert len(_bills(emu, "realtime")) == 2
    realtime = [e for e in emu.billing() if e["mode"] == "realtime"]
    assert all(e["batch_id"] is None and e["custom_id"] is None for e in realtime)


def test_anthropic_messages_answer_like_the_batch_and_bill_realtime(emu) -> None:
    import anthropic

    out, lines = _batch(emu, "claude-haiku-4-5")
    client = anthropic.Anthropic(api_key="sk-ant-test", base_url=emu.anthropic_base_url,
                                 max_retries=0)  # fmt: skip
    answers = []
    for line in sorted(lines, key=lambda x: out["_job_id"].to_list().index(x["custom_id"])):
        reply = client.messages.create(**line["params"])
        text = "".join(b.text for b in reply.content if b.type == "text")
        assert reply.usage.service_tier == "standard"
        answers.append(json.loads(text))
    client.close()
    assert answers == _values(out)
    assert _bills(emu, "realtime") == _bills(emu, "batch")


def test_gemini_generate_content_answers_like_the_batch_and_bills_realtime(emu) -> None:
    from google import genai
    from google.genai import types

    out, lines = _batch(emu, "gemini-2.5-flash")
    client = genai.Client(
        api_key="emulator-key",
        http_options=types.HttpOptions(base_url=emu.gemini_base_url, api_version="v1beta"),
    )
    answers = []
    for line in sorted(lines, key=lambda x: out["_job_id"].to_list().index(x["metadata"]["key"])):
        request = line["request"]
        config = dict(request["generationConfig"])
        reply = client.models.generate_content(
            model="gemini-2.5-flash", contents=request["contents"], config=config
        )
        assert reply.usage_metadata is not None and reply.usage_metadata.prompt_token_count
        answers.append(json.loads(reply.text or ""))
    assert answers == _values(out)
    assert _bills(emu, "realtime") == _bills(emu, "batch")


def test_realtime_endpoints_apply_the_model_rules_and_bill_nothing_refused(emu) -> None:
    import openai
    from google import genai
    from google.genai import errors, types

    client = openai.OpenAI(api_key="sk-test", base_url=emu.openai_base_url, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="o3", messages=[{"role": "user", "content": "hi"}], temperature=0.2
        )
    client.close()
    assert "temperature" in str(refused.value)
    gclient = genai.Client(
        api_key="emulator-key",
        http_options=types.HttpOptions(base_url=emu.gemini_base_url, api_version="v1beta"),
    )
    with pytest.raises(errors.ClientError) as gone:
        gclient.models.generate_content(
            model="gemini-2.5-flash", contents="hi [[emulator:error:400]]"
        )
    assert gone.value.code == 400
    assert emu.billing() == []


def test_realtime_thinking_counts_inside_the_output_limit(emu) -> None:
    import openai

    client = openai.OpenAI(api_key="sk-test", base_url=emu.openai_base_url, max_retries=0)
    reply = client.chat.completions.create(
        model="o3", messages=[{"role": "user", "content": "hi"}], reasoning_effort="high",
        max_completion_tokens=100_000,
    )
    client.close()
    assert reply.usage is not None and reply.usage.completion_tokens_details is not None
    thought = reply.usage.completion_tokens_details.reasoning_tokens or 0
    assert thought > 0
    assert reply.usage.completion_tokens > thought  # the answer is billed on top of it


def test_injected_rate_limit_carries_retry_after_and_is_not_billed(emu) -> None:
    import anthropic

    emu.inject_fault(path_regex=r"/v1/messages$", status=529, times=1, retry_after=3)
    client = anthropic.Anthropic(api_key="sk-ant-test", base_url=emu.anthropic_base_url,
                                 max_retries=0)  # fmt: skip
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        client.messages.create(
            model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "x"}]
        )
    assert overloaded.value.status_code == 529
    assert overloaded.value.response.headers["retry-after"] == "3"
    assert emu.billing() == []
    client.messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "x"}]
    )
    client.close()
    assert [e["mode"] for e in emu.billing()] == ["realtime"]


def test_realtime_stats_count_requests_answered_at_once(emu) -> None:
    import openai

    emu.configure(realtime_latency=1.0)
    client = openai.OpenAI(api_key="sk-test", base_url=emu.openai_base_url, max_retries=0)

    def ask(i: int) -> None:
        client.chat.completions.create(
            model="gpt-4.1-mini", messages=[{"role": "user", "content": f"q{i}"}]
        )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    assert emu.realtime_stats() == {"in_flight": 0, "max_in_flight": 3, "served": 3}
    emu.reset()
    assert emu.realtime_stats() == {"in_flight": 0, "max_in_flight": 0, "served": 0}
