"""An answer the provider stopped (filter, refusal, context window) fails with that reason.

Issue 8.5: such rows ended as schema validation errors of the partial text. The reason is
now the row's error class. The emulator produces each stop with a magic marker
(``[[emulator:filter]]``, ``[[emulator:recitation]]``, ``[[emulator:context]]``,
``[[emulator:refusal]]``). Stop reasons as the SDKs type them: openai 3.57
``ChatCompletion.Choice.finish_reason`` ("content_filter"), anthropic 2.14 ``StopReason``
("refusal", "model_context_window_exceeded"), google-genai 3.6.1 ``FinishReason``
(SAFETY, RECITATION, ...).
"""

from __future__ import annotations

import polars as pl
import pytest
from pydantic import BaseModel


class A(BaseModel):
    label: str
    score: int


CASES = [
    ("gpt-4.1-mini", "filter", "content_filter: "),
    ("gpt-4.1-mini", "refusal", "refusal: "),
    ("claude-haiku-4-5", "refusal", "refusal: "),
    ("claude-haiku-4-5", "filter", "refusal: "),
    ("claude-haiku-4-5", "context", "model_context_window_exceeded: "),
    ("gemini-2.5-flash", "filter", "safety: "),
    ("gemini-2.5-flash", "recitation", "recitation: "),
    ("gemini-2.5-flash", "refusal", "safety: "),
]


@pytest.mark.parametrize(("model", "marker", "reason"), CASES,
                         ids=[f"{m}-{k}" for m, k, _ in CASES])
def test_a_stopped_answer_fails_with_its_reason(emu, model, marker, reason):
    from batchata_df import batch_llm

    df = pl.DataFrame({"t": [f"tell me [[emulator:{marker}]]", "a normal row"]})
    out = df.pipe(batch_llm, schema=A, model=model, prompt="{t}")
    assert out["_status"].to_list() == ["failed", "completed"]
    error = out["_error"][0]
    assert error.startswith(reason), error
    assert "validation" not in error.lower()
    assert out["label"][0] is None and out["label"][1] is not None
