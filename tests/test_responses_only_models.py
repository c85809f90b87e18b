"""OpenAI models served by the Responses API only are refused before spend (issue 8).

o1-pro, o3-pro and gpt-5(.x)-pro answer chat completions with "This model is only
supported in v1/responses and not in v1/chat/completions." (sources in
``batchata_df.models.OPENAI_RESPONSES_ONLY``). batchata-df sends OpenAI batches to
``/v1/chat/completions``, so such a run would fail every row after the batch ran.
"""

from __future__ import annotations

import polars as pl
import pytest

import batchata_df.frame
from batchata_df import batch_llm
from batchata_df.errors import ModelError


@pytest.mark.parametrize("model", ["gpt-5.4-pro", "gpt-5-pro", "o3-pro", "gpt-5.5-pro-2026-05-01"])
def test_a_responses_only_model_is_refused_before_any_request(emu, model):
    with pytest.raises(ModelError, match=r"Responses API only.*use 'gpt-5|Responses API only"):
        pl.DataFrame({"t": ["a"]}).pipe(batch_llm, model=model, prompt="{t}")
    assert emu.log() == []


def test_what_users_saw_every_row_failed_after_the_batch_ran(emu, monkeypatch):
    monkeypatch.setattr(batchata_df.frame, "check_endpoint", lambda *a: None)
    out = pl.DataFrame({"t": ["a", "b"]}).pipe(batch_llm, model="gpt-5.4-pro", prompt="{t}")
    assert out["_status"].to_list() == ["failed", "failed"]
    assert out["_error"].str.contains("only supported in v1/responses").all()


def test_the_suggested_model_runs(emu):
    with pytest.raises(ModelError, match="use 'gpt-5.4' with params") as info:
        pl.DataFrame({"t": ["a"]}).pipe(batch_llm, model="gpt-5.4-pro", prompt="{t}")
    assert "high" in str(info.value)
    out = pl.DataFrame({"t": ["a"]}).pipe(
        batch_llm, model="gpt-5.4", prompt="{t}", params={"reasoning_effort": "high"})
    assert out["_status"].to_list() == ["completed"]
