"""Guards that were thin: what is (not) sent again, what the cap holds, what is estimated.

* a crash after "created" and before our checkpoint, then a resume: the API key is in no
  checkpoint file, batch event, output or request body;
* failed rows are not sent again without ``retry_failed``; with it, only they are;
* batches in flight hold their worst case against ``max_cost_usd``: a batch is submitted
  only when spent + held + its own worst case fit, seen in the order of the emulator's log;
* the offline input-token estimate is the tokenizer's count plus the chat framing, and
  the worst case prices it (a zero estimate would pass every run and bill unseen).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import CapSerialisedWarning, batch_llm, sql

SECRETS = {
    "gpt-4.1-mini": ("OPENAI_API_KEY", "sk-SECRET-recovery-0123456789"),
    "claude-haiku-4-5": ("ANTHROPIC_API_KEY", "sk-ant-SECRET-recovery-0123456789"),
    "gemini-2.5-flash": ("GEMINI_API_KEY", "AIzaSECRET-recovery-0123456789"),
}
CHILD = """
import sys, polars as pl
from batchata_df import batch_llm
pl.DataFrame({"t": ["a", "b"]}).pipe(
    batch_llm, model=sys.argv[2], prompt="{t}", state=sys.argv[1])
"""


class Label(BaseModel):
    label: str


def _creates(emu) -> list[dict[str, Any]]:
    return [
        e
        for e in emu.log()
        if e["method"] == "POST"
        and e["status"] == 200
        and (e["path"].endswith(("/batches", ":batchGenerateContent")))
    ]


def test_key_is_nowhere_after_crash_recovery(emu, tmp_path: Path, monkeypatch) -> None:
    """The recovery path (orphan lookup, adoption) is provider-neutral: one provider.

    (Each provider's own crash recovery is tested in tests/test_batch_llm_*.py.)
    """
    model = "gpt-4.1-mini"
    var, secret = SECRETS[model]
    monkeypatch.setenv(var, secret)
    emu.configure(log_bodies=True)
    state = tmp_path / "state"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "BATCHATA_DF_FAILPOINT": "after_submit"}
    child = subprocess.run(
        [sys.executable, str(script), str(state), model],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert child.returncode == 75, child.stderr  # died between "created" and checkpoint
    out = pl.DataFrame({"t": ["a", "b"]}).pipe(
        batch_llm, model=model, prompt="{t}", state=state
    )
    assert out["_status"].to_list() == ["completed", "completed"]
    assert len(_creates(emu)) == 1  # the orphan was found, not sent again
    batches = sql("select * from batch_events order by seq", state=state)
    assert "found at the provider after a crash" in batches["detail"].to_list()
    for path in state.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    dumps = repr(batches.to_dicts()) + repr(sql("select * from job_events", state=state))
    assert secret not in dumps + repr(out.to_dicts()) + child.stdout + child.stderr
    log = repr(emu.log())
    assert secret not in log and "REDACTED" not in log.replace("key=REDACTED", "")


def test_failed_rows_are_sent_again_only_with_retry_failed(emu, tmp_path: Path) -> None:
    emu.configure(log_bodies=True)
    frame = pl.DataFrame({"t": ["fine", "[[emulator:error]] boom"]})
    kw: dict[str, Any] = {"model": "claude-haiku-4-5", "prompt": "{t}", "state": tmp_path}
    first = frame.pipe(batch_llm, **kw)
    assert first["_status"].to_list() == ["completed", "failed"]
    again = frame.pipe(batch_llm, **kw)
    assert again["_status"].to_list() == ["completed", "failed"]
    assert again["_error"].to_list() == first["_error"].to_list()
    assert len(_creates(emu)) == 1  # nothing sent again
    retried = frame.pipe(batch_llm, retry_failed=True, **kw)
    creates = _creates(emu)
    assert len(creates) == 2
    requests = creates[1]["body"]["requests"]
    assert [r["params"]["messages"][0]["content"] for r in requests] == [
        "[[emulator:error]] boom"
    ]
    assert retried["_status"].to_list() == ["completed", "failed"]


def test_batches_in_flight_hold_their_worst_case_under_the_cap(emu) -> None:
    frame = pl.DataFrame({"t": [f"row {i}" for i in range(6)]})
    kw: dict[str, Any] = {
        "model": "gpt-4.1-mini", "prompt": "{t}", "params": {"max_tokens": 1000},
        "items_per_batch": 1, "max_parallel_batches": 8,
    }
    plan = frame.pipe(batch_llm, dry_run=True, **kw)
    worst = plan["_est_cost_usd"].max()
    assert isinstance(worst, float) and worst > 0
    # Room for two worst cases (and a little of a third): two batches in flight at most.
    with pytest.warns(CapSerialisedWarning, match="only 2 of 6 requests could be sent at once"):
        out = frame.pipe(batch_llm, max_cost_usd=2.5 * worst, **kw)
    assert out["_status"].to_list() == ["completed"] * 6
    in_flight = 0
    most = 0
    for entry in emu.log():
        if entry["method"] == "POST" and entry["path"].endswith("/batches"):
            in_flight += 1
            most = max(most, in_flight)
        elif entry["method"] == "GET" and entry["path"].endswith("/content"):
            in_flight -= 1  # its results were downloaded: the batch was settled
    assert most == 2


PROMPTS = ["hello world", "naïve café ✓ " * 40, "日本語のテキスト", "x"]


def test_openai_estimate_is_the_tokenizer_count_plus_framing_and_is_priced() -> None:
    import bpe_openai

    encoding = bpe_openai.get_encoding("o200k_base")  # gpt-4.1's encoding
    frame = pl.DataFrame({"t": PROMPTS})
    plan = frame.pipe(batch_llm, model="gpt-4.1-mini", prompt="{t}", dry_run=True)
    # OpenAI's chat framing: 3 tokens per message plus its role's one, 3 priming the reply.
    expected = [len(encoding.encode_ordinary(p)) + 4 + 3 for p in PROMPTS]
    assert plan["_est_input_tokens"].to_list() == expected
    # gpt-4.1-mini batch prices: $0.20 / 1M input, $0.80 / 1M output; max_tokens 4096.
    for tokens, cost in zip(expected, plan["_est_cost_usd"].to_list(), strict=True):
        assert cost == pytest.approx(tokens * 0.20e-6 + 4096 * 0.80e-6, rel=1e-9)


@pytest.mark.parametrize("model", ["claude-haiku-4-5", "gemini-2.5-flash"])
def test_approximate_estimates_grow_with_the_prompt(model: str) -> None:
    frame = pl.DataFrame({"t": PROMPTS})
    plan = frame.pipe(batch_llm, model=model, prompt="{t}", dry_run=True)
    tokens = plan["_est_input_tokens"].to_list()
    # conservative: at least one token per 4 UTF-8 bytes of the prompt, never 0
    for prompt, estimate in zip(PROMPTS, tokens, strict=True):
        assert estimate >= math.ceil(len(prompt.encode()) / 4) + 1
    assert tokens[1] > 100 > tokens[0] > 0
