"""OpenAI's billed prompt tokens, in the emulator and in the cap's reservation.

OpenAI bills the exact BPE count of the messages plus its chat framing: OpenAI cookbook,
"How to count tokens with tiktoken" (``num_tokens_from_messages``): 3 tokens per message
plus the tokens of each of its values (role, content; a ``name`` one more), and 3 to prime
the reply. The emulator bills that through the official SDK over HTTP; the library's cap
reserves at least that for every row (text, system prompt, history), so a capped run
against the emulator never bills more than the cap.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import polars as pl
import pytest
from openai import OpenAI

from batchata_df import batch_llm
from batchata_df.emulator import Emulator

with warnings.catch_warnings():  # bpe-openai's import-time DeprecationWarning
    warnings.simplefilter("ignore", DeprecationWarning)
    import bpe_openai


def cookbook_tokens(messages: list[dict[str, str]], encoding: str) -> int:
    """The cookbook's ``num_tokens_from_messages``, with a tiktoken-compatible encoder."""
    enc = bpe_openai.get_encoding(encoding)
    tokens = 3  # every reply is primed with <|start|>assistant<|message|>
    for message in messages:
        tokens += 3
        for key, value in message.items():
            tokens += len(enc.encode_ordinary(value))
            if key == "name":
                tokens += 1
    return tokens


LONG = "The quick brown fox, naïve café; 12,345 tokens!? " * 40
SHAPES = {
    "one user message": [{"role": "user", "content": "Summarise: " + LONG}],
    "system and user": [
        {"role": "system", "content": "You label reviews. Answer in one word."},
        {"role": "user", "content": LONG},
    ],
    "a history": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Times 3?\n\nAnd then?"},
    ],
    "a named message": [{"role": "user", "name": "alice", "content": "hi there"}],
    "a developer message": [
        {"role": "developer", "content": "Reply in French."},
        {"role": "user", "content": "Good morning"},
    ],
}


@pytest.fixture
def client(emulator: Emulator) -> Iterator[OpenAI]:
    emulator.reset()
    with OpenAI(api_key="sk-test", base_url=emulator.openai_base_url, max_retries=0) as oa:
        yield oa


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize(
    ("model", "encoding"), [("gpt-4.1-mini", "o200k_base"), ("gpt-4-turbo", "cl100k_base")]
)
def test_the_emulator_bills_the_exact_bpe_count_with_the_chat_framing(
    emu, client, shape, model, encoding
) -> None:
    # gpt-4-turbo (retired 2026-10-23) is the last cl100k_base chat model: where served.
    emu.configure(serve_retired=True)
    messages = SHAPES[shape]
    reply = client.chat.completions.create(
        model=model, messages=messages, max_tokens=20  # type: ignore[arg-type]
    )
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == cookbook_tokens(messages, encoding)


def test_the_responses_api_bills_instructions_and_input_as_two_messages(client) -> None:
    reply = client.responses.create(
        model="gpt-4.1-mini", instructions="Be brief.", input=LONG, max_output_tokens=20
    )
    assert reply.usage is not None
    expected = cookbook_tokens(
        [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": LONG}],
        "o200k_base",
    )
    assert reply.usage.input_tokens == expected


def test_the_cap_reserves_at_least_what_openai_bills_for_text_system_and_history(
    emu, tmp_path
) -> None:
    frame = pl.DataFrame({
        "text": ["word " * 20_000, LONG, "2+2?"],
        "h": [None, [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi!"}],
              [{"role": "user", "content": LONG}]],
    })  # fmt: skip
    kw: dict[str, object] = dict(
        model="gpt-4.1-mini", prompt="Label: {text}", system="You label texts.", history="h",
        params={"max_tokens": 200}, progress=False,
    )  # fmt: skip
    plan = batch_llm(frame, dry_run=True, **kw)  # type: ignore[arg-type]
    out = batch_llm(frame, state=str(tmp_path / "s"), max_cost_usd=5.0, **kw)  # type: ignore[arg-type]
    assert out["_status"].to_list() == ["completed"] * 3
    billed = out["_input_tokens"].to_list()
    # Exact for OpenAI text: the reservation is what is billed, never less.
    assert billed == plan["_est_input_tokens"].to_list()


def test_a_capped_run_of_a_long_text_bills_within_the_cap(emu, tmp_path) -> None:
    # The reviewer's case: billed as len // 4 (250,000 tokens, $0.3128) the emulator
    # charged more than the cap the exact count (200,008) had reserved under.
    out = batch_llm(
        pl.DataFrame({"text": ["word " * 200_000]}), model="gpt-5.4", prompt="{text}",
        state=str(tmp_path / "s"), max_cost_usd=0.29, progress=False,
    )  # fmt: skip
    assert out["_status"].item() == "completed"
    assert out["_input_tokens"].item() == 200_001 + 4 + 3  # "word"*... + user framing + reply
    assert out["_cost_usd"].item() <= 0.29
