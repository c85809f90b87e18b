"""Requests the real services refuse: the emulator refuses them too, and the library first.

Each rule is checked on both sides: through the official SDK against the emulator (the
provider's status, error code, ``param`` and wording, sources in ``emulator/model_rules.py``,
``openai_checks.py``, ``openai_api.py`` and ``anthropic_checks.py``), and through
``batch_llm``, which refuses the same request with a typed error before sending anything.

* Anthropic ``thinking.budget_tokens`` below 1,024.
* OpenAI Chat Completions ``stop`` with more than 4 sequences.
* Models that are not chat models on ``/v1/chat/completions`` (gpt-image-*, the realtime
  models); the search-preview models are chat models and are served.
* o1-mini: no system (or developer) message, no ``json_schema`` structured output.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import ConfigError, ModelError, ParamError, SchemaError, batch_llm
from batchata_df.models import ANTHROPIC_BUDGETS, FAMILIES, thinking_fields


class A(BaseModel):
    label: str


ROWS = pl.DataFrame({"t": ["a", "b"]})
MSGS = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "A", "strict": True, "schema": {
    "type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
    "additionalProperties": False}}}  # fmt: skip


def openai_client(emu):
    import openai

    return openai.OpenAI(api_key="sk-test", base_url=emu.openai_base_url, max_retries=0)


def anthropic_client(emu):
    import anthropic

    return anthropic.Anthropic(api_key="sk-ant-test", base_url=emu.anthropic_base_url,
                               max_retries=0)  # fmt: skip


def posts(emu) -> list[dict[str, Any]]:
    return [e for e in emu.log() if e["method"] == "POST"]


# ---- Anthropic: thinking.budget_tokens >= 1,024


def test_the_emulator_refuses_a_thinking_budget_below_1024(emu) -> None:
    import anthropic

    sdk = anthropic_client(emu)
    kw: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 3000, "messages": MSGS}
    with pytest.raises(anthropic.BadRequestError) as refused:
        sdk.messages.create(**kw, thinking={"type": "enabled", "budget_tokens": 1023})
    assert refused.value.status_code == 400
    assert refused.value.body["error"] == {
        "type": "invalid_request_error",
        "message": "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
    }
    sdk.messages.create(**kw, thinking={"type": "enabled", "budget_tokens": 1024})  # the least
    assert len(emu.billing()) == 1  # the refused one is not billed


def test_every_budget_the_library_sends_is_at_least_1024_and_accepted(emu) -> None:
    # The library builds budget_tokens itself (reasoning_effort -> ANTHROPIC_BUDGETS, capped
    # per family); no family and effort may go below the API's minimum.
    budgets = {(f.name, effort): thinking_fields("anthropic", f.examples[0],
                                                 {"reasoning_effort": effort})
               for f in FAMILIES if f.thinking == "anthropic_budget"
               for effort in ANTHROPIC_BUDGETS}  # fmt: skip
    assert budgets
    assert min(v["thinking"]["budget_tokens"] for v in budgets.values()) == 1024
    out = ROWS.pipe(batch_llm, schema=A, model="claude-haiku-4-5", prompt="{t}",
                    params={"reasoning_effort": "minimal"})  # fmt: skip
    assert out["_status"].to_list() == ["completed", "completed"], out["_error"].to_list()


# ---- OpenAI: stop, up to 4 sequences


def test_the_emulator_refuses_more_than_four_stop_sequences(emu) -> None:
    import openai

    sdk = openai_client(emu)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="gpt-4.1-mini", messages=MSGS, stop=list("abcde"))
    assert refused.value.body == {
        "message": "Invalid 'stop': array too long. Expected an array with maximum length 4, "
        "but got an array with length 5 instead.",
        "type": "invalid_request_error",
        "param": "stop",
        "code": "array_above_max_length",
    }
    sdk.chat.completions.create(model="gpt-4.1-mini", messages=MSGS, stop=list("abcd"))


def test_the_library_refuses_more_than_four_stop_sequences_before_sending(emu) -> None:
    with pytest.raises(ConfigError, match=r"params\['stop'\] may hold at most 4 sequences"):
        ROWS.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}",
                  params={"stop": list("abcde")}, mode="realtime")  # fmt: skip
    assert posts(emu) == []


# ---- OpenAI: models that are not chat models


NOT_CHAT = ["gpt-image-1", "gpt-image-1-mini", "gpt-realtime", "gpt-4o-realtime-preview"]


@pytest.mark.parametrize("model", NOT_CHAT)
def test_the_emulator_answers_a_non_chat_model_with_404(emu, model) -> None:
    import openai

    with pytest.raises(openai.NotFoundError) as refused:
        openai_client(emu).chat.completions.create(model=model, messages=MSGS)
    assert refused.value.body["param"] == "model"
    assert refused.value.body["message"].startswith(
        "This is not a chat model and thus not supported in the v1/chat/completions endpoint.")
    assert emu.billing() == []


@pytest.mark.parametrize("model", NOT_CHAT)
def test_the_library_refuses_a_non_chat_model_before_sending(emu, model) -> None:
    with pytest.raises(ModelError, match=rf"'{model}' is not a chat model"):
        ROWS.pipe(batch_llm, model=model, prompt="{t}")
    assert posts(emu) == []


def test_a_search_preview_model_is_a_chat_model_served_in_realtime(emu) -> None:
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    out = ROWS.pipe(batch_llm, model="gpt-4o-mini-search-preview", prompt="{t}",
                    mode="realtime")  # fmt: skip
    assert out["_status"].to_list() == ["completed", "completed"], out["_error"].to_list()


# ---- o1-mini: no system message, no structured output


@pytest.mark.parametrize("role", ["system", "developer"])
def test_the_emulator_refuses_a_system_message_on_o1_mini(emu, role) -> None:
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    import openai

    messages = [{"role": role, "content": "Be terse."}, *MSGS]
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(emu).chat.completions.create(model="o1-mini", messages=messages)
    assert refused.value.body == {
        "message": f"Unsupported value: 'messages[0].role' does not support '{role}' with "
        "this model.",
        "type": "invalid_request_error",
        "param": "messages[0].role",
        "code": "unsupported_value",
    }


def test_the_emulator_refuses_structured_output_on_o1_mini(emu) -> None:
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    import openai

    sdk = openai_client(emu)
    with pytest.raises(openai.BadRequestError, match="'response_format' of type 'json_schema' "
                       "is not supported with this model"):  # fmt: skip
        sdk.chat.completions.create(model="o1-mini", messages=MSGS, response_format=SCHEMA)
    sdk.chat.completions.create(model="o1-mini", messages=MSGS)  # user messages only: fine
    sdk.chat.completions.create(model="o3-mini", messages=[{"role": "system", "content": "x"},
                                                          *MSGS], response_format=SCHEMA)


def test_the_library_refuses_a_system_prompt_on_o1_mini_before_sending(emu) -> None:
    with pytest.raises(ParamError, match="takes no system prompt") as refused:
        ROWS.pipe(batch_llm, model="o1-mini", prompt="{t}", system="Be terse.")
    assert (refused.value.model, refused.value.param) == ("o1-mini", "system")
    assert posts(emu) == []


def test_the_library_refuses_a_schema_on_o1_mini_before_sending(emu) -> None:
    with pytest.raises(SchemaError, match="does not take structured output"):
        ROWS.pipe(batch_llm, schema=A, model="o1-mini", prompt="{t}")
    assert posts(emu) == []


def test_o1_mini_with_neither_runs(emu) -> None:
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    out = ROWS.pipe(batch_llm, model="o1-mini", prompt="{t}", mode="realtime")
    assert out["_status"].to_list() == ["completed", "completed"], out["_error"].to_list()


def test_a_system_prompt_on_rows_of_another_model_does_not_refuse_o1_mini(emu) -> None:
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    # the check is per model: rows of o1-mini without a system prompt pass
    df = pl.DataFrame({"t": ["a", "b"], "m": ["o1-mini", "gpt-4.1-mini"],
                       "s": [None, "Be terse."]})  # fmt: skip
    out = df.pipe(batch_llm, model=pl.col("m"), prompt="{t}", system=pl.col("s"),
                  mode="realtime")  # fmt: skip
    assert out["_status"].to_list() == ["completed", "completed"], out["_error"].to_list()


def test_a_streaming_run_refuses_a_system_prompt_on_o1_mini_before_sending(emu, tmp_path) -> None:
    with pytest.raises(ParamError, match="takes no system prompt"):
        ROWS.lazy().pipe(batch_llm, model="o1-mini", prompt="{t}", system="Be terse.",
                         sink=tmp_path / "out.parquet")  # fmt: skip
    assert posts(emu) == []


# A streaming run (sink=) checks every row, up front: the probe it plans with holds the
# first row of each model only, so a per-row system prompt null there and set on a later
# row was sent, and refused row by row by OpenAI.
LATE = pl.DataFrame({
    "t": [f"q{i}" for i in range(8)],
    "m": ["o1-mini", "gpt-4.1-mini"] * 4,
    "s": [None, "Be terse.", None, "Be kind.", None, None, "Be brief.", None],
})  # fmt: skip


@pytest.mark.parametrize(
    ("model", "system"),
    [("o1-mini", pl.col("s")), ("o1-mini", "Note: {s}"), (pl.col("m"), pl.col("s")),
     ("openai:o1-mini", pl.col("s").str.to_uppercase()),
     (pl.concat_str(pl.lit("openai:"), pl.col("m")), pl.col("s"))],
    ids=["by-name", "template", "per-row-model", "prefixed", "prefixed-per-row"],
)
def test_a_streaming_run_refuses_a_late_rows_system_prompt_on_o1_mini_before_sending(
    emu, tmp_path, model, system
) -> None:
    path = tmp_path / "in.parquet"
    LATE.write_parquet(path, row_group_size=2)
    sink = tmp_path / "out.parquet"
    for dry_run in (False, True):
        with pytest.raises(ParamError, match="'o1-mini'.*takes no system prompt") as refused:
            batch_llm(pl.scan_parquet(path), model=model, prompt="{t}", system=system,
                      sink=sink, chunk_rows=2, state=tmp_path / "st", dry_run=dry_run,
                      progress=False)  # fmt: skip
        assert (refused.value.model, refused.value.param) == ("o1-mini", "system")
    assert emu.billing() == [] and posts(emu) == []
    assert not sink.exists() and not (tmp_path / "st").exists()


def test_a_streaming_run_sends_o1_mini_rows_without_a_system_prompt_and_others_with(
    emu, tmp_path
) -> None:
    """Per model: the o1-mini rows have none; the other model's rows keep theirs."""
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    path = tmp_path / "in.parquet"
    LATE.with_columns(
        pl.when(pl.col("m") == "o1-mini").then(None).otherwise(pl.col("s")).alias("s")
    ).write_parquet(path, row_group_size=2)
    emu.configure(log_bodies=True)
    out = batch_llm(pl.scan_parquet(path), model=pl.col("m"), prompt="{t}",
                    system=pl.col("s"), sink=tmp_path / "out.parquet", chunk_rows=2,
                    state=tmp_path / "st", progress=False).collect()  # fmt: skip
    assert out["_status"].to_list() == ["completed"] * 8, out["_error"].to_list()
    assert len(emu.billing()) == 8
    sent = [json.loads(line) if isinstance(line, str) else line
            for e in emu.log() if e.get("lines") for line in e["lines"]]  # fmt: skip
    systems = {
        (b["body"]["model"], b["body"]["messages"][-1]["content"]):
        [m["content"] for m in b["body"]["messages"] if m["role"] in ("system", "developer")]
        for b in sent
    }  # fmt: skip
    assert systems[("o1-mini", "q0")] == [] and systems[("o1-mini", "q6")] == []
    assert systems[("gpt-4.1-mini", "q3")] == ["Be kind."]
    assert systems[("gpt-4.1-mini", "q5")] == []


def test_a_streaming_o1_mini_run_with_a_system_column_null_on_every_row_is_sent(
    emu, tmp_path
) -> None:
    emu.configure(serve_retired=True)  # a retired model's rules: where it is still served
    path = tmp_path / "in.parquet"
    LATE.with_columns(pl.lit(None, dtype=pl.String).alias("s")).write_parquet(path)
    out = batch_llm(pl.scan_parquet(path), model="o1-mini", prompt="{t}", system=pl.col("s"),
                    sink=tmp_path / "out.parquet", chunk_rows=3, state=tmp_path / "st",
                    progress=False).collect()  # fmt: skip
    assert out["_status"].to_list() == ["completed"] * 8, out["_error"].to_list()
    assert len(emu.billing()) == 8
