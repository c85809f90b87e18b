"""An answer cut off by the output limit fails ``truncated:``, whatever the schema and mode.

Through the official SDKs against the emulator: OpenAI ``finish_reason: "length"``,
Anthropic ``stop_reason: "max_tokens"``, Gemini ``finishReason: "MAX_TOKENS"`` (openai 3.57
``ChatCompletion.Choice.finish_reason``, anthropic 2.14 ``StopReason``, google-genai 3.6.1
``FinishReason``). The cut text stays the raw answer, its tokens and cost are recorded
(billed: the whole limit), ``retry_failed`` sends it again, and the error's advice works
when followed to the letter.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import StateMismatchError, batch_llm, reparse
from batchata_df.engine.collection import THINKING_ADVICE, TRUNCATED_ADVICE
from batchata_df.models import effective_params


class Review(BaseModel):
    sentiment: str
    rating: int


MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5",
          "gemini": "gemini-2.5-flash"}
TEXTS = ["fine", "x [[emulator:truncate]]"]


def _provider_view(provider: str, response: str) -> tuple[str, str, int]:
    """(stop reason, answer text, billed output tokens) from the provider's own result."""
    body: Any = json.loads(response)
    if provider == "openai":
        body = body["response"]["body"] if "custom_id" in body else body  # batch line / body
        choice = body["choices"][0]
        return (choice["finish_reason"], choice["message"]["content"],
                body["usage"]["completion_tokens"])
    if provider == "anthropic":
        message = body["result"]["message"] if "result" in body else body
        text = "".join(b["text"] for b in message["content"] if b["type"] == "text")
        return message["stop_reason"], text, message["usage"]["output_tokens"]
    body = body.get("response", body)
    cand, usage = body["candidates"][0], body["usageMetadata"]
    text = "".join(p["text"] for p in cand["content"]["parts"] if not p.get("thought"))
    return (cand["finishReason"], text,
            usage["candidatesTokenCount"] + usage.get("thoughtsTokenCount", 0))


STOP = {"openai": "length", "anthropic": "max_tokens", "gemini": "MAX_TOKENS"}


@pytest.mark.parametrize("schema", [None, Review], ids=["text", "schema"])
@pytest.mark.parametrize("mode", ["batch", "realtime"])
@pytest.mark.parametrize("provider", sorted(MODELS))
def test_a_truncated_answer_fails_with_its_text_tokens_and_cost_kept(
    emu, tmp_path, provider, mode, schema
):
    model = MODELS[provider]
    limit = effective_params(provider, model, {})["max_tokens"]
    out = batch_llm(pl.DataFrame({"text": TEXTS}), schema=schema, model=model,
                    prompt="{text}", state=tmp_path / "s", mode=mode, keep_raw=True,
                    keep_responses=True)
    assert out["_status"].to_list() == ["completed", "failed"]
    assert out["_error"][0] is None
    assert out["_error"][1] == (
        f"truncated: the answer hit max_tokens={limit} before it was complete; "
        + TRUNCATED_ADVICE
    )
    stop, text, billed = _provider_view(provider, out["_response"][1])
    assert stop == STOP[provider]
    # The provider billed the whole limit; so does the row.
    assert billed == limit == out["_output_tokens"][1]
    assert out["_cost_usd"][1] > out["_cost_usd"][0] > 0
    assert out["_raw"][1] == text and text  # the cut text, kept as the raw answer
    answer_columns = ["response"] if schema is None else ["sentiment", "rating"]
    assert out.select(answer_columns).row(1) == (None,) * len(answer_columns)
    assert out.select(answer_columns).row(0) != (None,) * len(answer_columns)
    assert len(emu.billing()) == 2  # both answered, once


@pytest.mark.parametrize("mode", ["batch", "realtime"])
def test_openai_reasoning_that_used_the_limit_fails_naming_it_not_as_an_empty_answer(
    emu, tmp_path, mode
):
    out = batch_llm(pl.DataFrame({"text": ["x"]}), model="gpt-5-mini", prompt="{text}",
                    params={"max_tokens": 50}, state=tmp_path / "s", mode=mode,
                    keep_raw=True, keep_responses=True)
    stop, text, billed = _provider_view("openai", out["_response"][0])
    assert (stop, text, billed) == ("length", "", 50)  # what gpt-5 returns: "" and "length"
    assert out["_status"].to_list() == ["failed"]
    assert out["_error"][0] == (
        "truncated: thinking used 50 of max_tokens=50 tokens before the answer was "
        "complete; " + THINKING_ADVICE
    )
    assert out["_raw"].to_list() == [""]
    assert out["_reasoning_tokens"].to_list() == out["_output_tokens"].to_list() == [50]
    assert out["_cost_usd"][0] > 0


def test_retry_failed_sends_a_truncated_row_again_and_not_the_completed_one(emu, tmp_path):
    df = pl.DataFrame({"text": TEXTS})
    args: dict[str, Any] = {"model": "gpt-4.1-mini", "prompt": "{text}",
                            "state": tmp_path / "s"}
    first = batch_llm(df, **args)
    assert first["_status"].to_list() == ["completed", "failed"]
    billed = [e["request"] for e in emu.billing()]
    assert len(billed) == 2
    again = batch_llm(df, retry_failed=True, **args)
    after = [e["request"] for e in emu.billing()]
    # The truncated row was sent (and billed) again; the completed one was not.
    assert len(after) == 3
    assert after.count(after[-1]) == 2 and billed.count(after[-1]) == 1
    assert again["_status"].to_list() == ["completed", "failed"]  # the marker cuts it again
    assert again["_error"][1].startswith("truncated:")


def test_the_advice_followed_verbatim_completes_the_rows_without_paying_again(
    emu, tmp_path
):
    # "hi" is answered in 16 tokens, the long row needs 95: with max_tokens=50 it is cut.
    df = pl.DataFrame({"text": ["hi", "x" * 300]})
    args: dict[str, Any] = {"model": "gpt-4.1-mini", "prompt": "{text}"}
    out = batch_llm(df, params={"max_tokens": 50}, state=tmp_path / "s", **args)
    assert out["_status"].to_list() == ["completed", "failed"]
    error = out["_error"][1]
    assert error.startswith("truncated: the answer hit max_tokens=50 ")
    # What the advice warns of: the same folder with other params is refused.
    with pytest.raises(StateMismatchError, match="params"):
        batch_llm(df, params={"max_tokens": 200}, state=tmp_path / "s", retry_failed=True,
                  **args)
    paid = len(emu.billing())
    assert paid == 2
    # The frame to re-run, as the error writes it.
    expression = re.search(r"rows, (df\.filter\(.*?\)), with", error)
    assert expression is not None
    failed = eval(expression.group(1), {"df": df, "out": out})
    assert failed["text"].to_list() == ["x" * 300]
    fixed = batch_llm(failed, params={"max_tokens": 200}, state=tmp_path / "new", **args)
    assert fixed["_status"].to_list() == ["completed"]
    assert len(emu.billing()) == paid + 1  # only the failed row: nothing re-paid


def test_reparse_keeps_a_truncated_answer_failed_even_when_it_would_validate(emu, tmp_path):
    df = pl.DataFrame({"text": TEXTS})
    args: dict[str, Any] = {"model": "gpt-4.1-mini", "prompt": "{text}",
                            "state": tmp_path / "s"}
    first = batch_llm(df, schema=Review, keep_raw=True, **args)
    assert first["_error"][1].startswith("truncated:")
    # As text, any answer validates: the cut one is still incomplete.
    text = reparse(df, schema=None, keep_raw=True, **args)
    assert text["_status"].to_list() == ["completed", "failed"]
    assert text["_error"][1] == first["_error"][1]
    assert text["_raw"][1] == first["_raw"][1]


def test_cli_exits_3_when_a_row_was_truncated(emu, tmp_path):
    pl.DataFrame({"text": TEXTS}).write_parquet(tmp_path / "in.parquet")
    exe = Path(sys.executable).with_name("batchata-df")
    r = subprocess.run(
        [str(exe), "run", "in.parquet", "out.parquet", "--model", "gpt-4.1-mini",
         "--prompt", "{text}", "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False,
    )
    assert r.returncode == 3, (r.stdout, r.stderr)
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out["_status"].to_list() == ["completed", "failed"]
    assert out["_error"][1].startswith("truncated: the answer hit max_tokens=4096 ")
