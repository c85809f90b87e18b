"""A realtime answer cut short without an error is ``lost`` on every provider.

The emulator's fault action ``cut_clean`` sends half of a 200 answer close-delimited and
ends the connection in order: the SDK reads a shorter body. Anthropic's stream then ends
without ``message_stop`` and the row was ``lost: ...`` (it ran and may have been billed,
so it is never sent again automatically); OpenAI's ``/chat/completions`` and Gemini's
``:generateContent`` answers failed to decode and the row ended ``client_error:
JSONDecodeError``, a reason that hides that the request was paid. They are ``lost`` too.
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm
from batchata_df.providers import make_provider
from batchata_df.providers.base import RealtimeFailure, RequestSpec
from batchata_df.schema import AnswerSchema

MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5",
          "gemini": "gemini-2.5-flash"}
ANSWERS = {"openai": r"/chat/completions$", "anthropic": r"/v1/messages$",
           "gemini": r":generateContent$"}
PROVIDERS = ["openai", "anthropic", "gemini"]


class _A(BaseModel):
    label: str


def _line(p: Any, provider: str, spec: RequestSpec) -> str:
    jobs = pl.DataFrame({"job_id": ["j0"], "model": [MODELS[provider]],
                         "prompt": ["a review"], "system": [None]})
    return str(p.encode(jobs, spec)[0])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_answer_cut_short_without_an_error_is_lost(emu, provider: str) -> None:
    p = make_provider(provider)
    spec = RequestSpec(AnswerSchema(_A), {})
    line = _line(p, provider, spec)
    emu.inject_fault(method="POST", path_regex=ANSWERS[provider], action="cut_clean")
    got = p.answer(line, model=MODELS[provider], spec=spec)
    assert isinstance(got, RealtimeFailure), got
    assert got.kind == "lost"
    assert got.error.startswith("lost: "), got.error
    assert "not sent again automatically" in got.error
    assert emu.faults() == []
    whole = p.answer(line, model=MODELS[provider], spec=spec)  # the next one is whole
    assert isinstance(whole, pl.DataFrame) and whole["outcome"].to_list() == ["succeeded"]
    p.close()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_realtime_run_whose_answer_is_cut_short_fails_the_row_lost_and_sends_it_once(
    emu, tmp_path, provider: str
) -> None:
    df = pl.DataFrame({"t": ["review 0", "review 1", "review 2"]})
    emu.inject_fault(method="POST", path_regex=ANSWERS[provider], action="cut_clean")
    out = df.pipe(batch_llm, schema=_A, model=MODELS[provider], prompt="{t}",
                  mode="realtime", state=tmp_path / "s")
    assert sorted(out["_status"].to_list()) == ["completed", "completed", "failed"]
    failed = out.filter(pl.col("_status") == "failed")["_error"][0]
    assert failed.startswith("lost: "), failed
    sent = [e for e in emu.log()
            if e["method"] == "POST" and re.search(ANSWERS[provider], e["path"])]
    assert len(sent) == 3  # the lost one is not sent again
    assert len(emu.billing()) == 3  # the cut answer ran and was billed
