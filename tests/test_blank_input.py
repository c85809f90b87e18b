"""Empty and blank text: the emulator refuses it as the real APIs do; the client never sends it.

The emulator half goes through the official SDKs over HTTP (realtime and batch) and asserts
the providers' own wording and that nothing was billed. The client half runs ``batch_llm``
per provider and mode: a row whose prompt, system prompt or earlier turn has no text fails
unsent (``_status`` failed, ``_error`` ``input: ...`` naming the fix), the other rows are
answered, and only those are billed; a constant ``prompt=""`` / ``system=""`` is a
``ConfigError`` before any request.
"""

from __future__ import annotations

from typing import Any

import anthropic
import polars as pl
import pytest
from google import genai
from google.genai import types

from batchata_df import ConfigError, batch_llm

EMPTY_MESSAGE = (
    "messages.0: all messages must have non-empty content except for the optional final "
    "assistant message"
)
BLANK = "messages: text content blocks must contain non-whitespace text"
EMPTY_BLOCK = "messages: text content blocks must be non-empty"
NO_DATA = (
    "* GenerateContentRequest.{where}.parts[0].data: required oneof field 'data' must have "
    "one initialized field"
)
MODELS = {
    "anthropic": "claude-haiku-4-5",
    "openai": "gpt-4.1-mini",
    "gemini": "gemini-2.5-flash",
}


def _anthropic(emu: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="sk-ant-test", base_url=emu.anthropic_base_url, max_retries=0
    )


def _gemini(emu: Any) -> genai.Client:
    return genai.Client(
        api_key="test-key",
        http_options=types.HttpOptions(base_url=emu.gemini_base_url, api_version="v1beta"),
    )


ANTHROPIC_REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("empty-string", {"messages": [{"role": "user", "content": ""}]}, EMPTY_MESSAGE),
    ("empty-list", {"messages": [{"role": "user", "content": []}]}, EMPTY_MESSAGE),
    ("blank-string", {"messages": [{"role": "user", "content": " \n\t"}]}, BLANK),
    (
        "empty-block",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
        EMPTY_BLOCK,
    ),
    (
        "blank-blocks",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": " "}]}]},
        BLANK,
    ),
    (
        "empty-history-turn",
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": "and?"},
            ]
        },
        EMPTY_MESSAGE.replace("messages.0", "messages.1"),
    ),
    (
        "empty-system",
        {"system": "", "messages": [{"role": "user", "content": "hi"}]},
        "system: text content blocks must contain non-whitespace text",
    ),
    (
        "empty-system-block",
        {"system": [{"type": "text", "text": ""}], "messages": [{"role": "user", "content": "hi"}]},
        "system: text content blocks must be non-empty",
    ),
]


@pytest.mark.parametrize(("params", "message"), [c[1:] for c in ANTHROPIC_REFUSED],
                         ids=[c[0] for c in ANTHROPIC_REFUSED])  # fmt: skip
def test_anthropic_realtime_refuses_empty_and_blank_text(emu, params, message):
    with pytest.raises(anthropic.BadRequestError) as info:
        _anthropic(emu).messages.create(model="claude-haiku-4-5", max_tokens=16, **params)
    assert info.value.status_code == 400
    assert info.value.body["error"] == {"type": "invalid_request_error", "message": message}
    assert emu.billing() == []


def test_anthropic_batch_errors_empty_and_blank_requests(emu):
    client = _anthropic(emu)
    ok = {"messages": [{"role": "user", "content": "hi"}]}
    requests = [
        {"custom_id": name, "params": {"model": "claude-haiku-4-5", "max_tokens": 16, **p}}
        for name, p, _ in [*ANTHROPIC_REFUSED, ("ok", ok, "")]
    ]
    batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    for name, _, message in ANTHROPIC_REFUSED:
        result = results[name]
        assert result.type == "errored", name
        assert result.error.error.message == message, name  # type: ignore[union-attr]
    assert results["ok"].type == "succeeded"


def test_anthropic_takes_an_empty_final_assistant_turn_and_blank_beside_text(emu):
    client = _anthropic(emu)
    prefill = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]
    client.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=prefill)  # type: ignore[arg-type]
    mixed = [{"type": "text", "text": " "}, {"type": "text", "text": "real"}]
    client.messages.create(
        model="claude-haiku-4-5", max_tokens=16, messages=[{"role": "user", "content": mixed}]  # type: ignore[list-item]
    )
    assert len(emu.billing()) == 2


def test_gemini_refuses_an_empty_text_part_realtime_and_in_batches(emu):
    client = _gemini(emu)
    with pytest.raises(genai.errors.ClientError) as info:
        client.models.generate_content(model="gemini-2.5-flash", contents="")
    assert info.value.code == 400
    assert info.value.message == NO_DATA.format(where="contents[0]")
    with pytest.raises(genai.errors.ClientError) as info:
        client.models.generate_content(
            model="gemini-2.5-flash", contents="hi",
            config=types.GenerateContentConfig(system_instruction=""),
        )  # fmt: skip
    assert info.value.message == NO_DATA.format(where="system_instruction")
    assert emu.billing() == []
    # An inline batch's requests are parsed when it is created: an empty part refuses it.
    with pytest.raises(genai.errors.ClientError) as info:
        client.batches.create(
            model="gemini-2.5-flash",
            src=[types.InlinedRequest(contents="", metadata={"key": "empty"})],
        )
    assert info.value.code == 400
    assert info.value.message == NO_DATA.format(where="contents[0]")
    # Whitespace is data to Gemini: answered and billed.
    job = client.batches.create(
        model="gemini-2.5-flash", src=[types.InlinedRequest(contents=" ", metadata={"k": "b"})]
    )
    done = client.batches.get(name=job.name)
    assert done.dest is not None and done.dest.inlined_responses is not None
    assert done.dest.inlined_responses[0].response is not None
    assert len(emu.billing()) == 1


# -- the client ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["batch", "realtime"])
@pytest.mark.parametrize("provider", sorted(MODELS))
def test_rows_without_prompt_text_fail_unsent_and_unpaid(emu, tmp_path, provider, mode):
    df = pl.DataFrame({"text": ["fine text", "", " \n\t", None]})
    out = df.pipe(
        batch_llm, model=MODELS[provider], prompt="{text}", state=tmp_path / "s", mode=mode,
        progress=False,
    )  # fmt: skip
    assert out["_status"].to_list() == ["completed", "failed", "failed", "failed"]
    errors = out["_error"].to_list()
    assert errors[0] is None
    for error in errors[1:3]:
        assert error.startswith("input: the prompt is empty or only whitespace in this row")
        assert "fill in the column(s) the prompt uses, or filter such rows out" in error
    assert errors[3].startswith("input: the prompt is null")
    billed = emu.billing()
    assert len(billed) == 1
    assert {b["provider"] for b in billed} == {provider}


@pytest.mark.parametrize("provider", sorted(MODELS))
def test_blank_system_and_history_turns_fail_their_rows_only(emu, tmp_path, provider):
    df = pl.DataFrame(
        {
            "text": ["a", "b", "c"],
            "sys": ["Be brief.", "  ", "Be brief."],
            "h": [
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
            ],
        }
    )
    out = df.pipe(
        batch_llm, model=MODELS[provider], prompt="{text}", system="{sys}", history="h",
        state=tmp_path / "s", progress=False,
    )  # fmt: skip
    assert out["_status"].to_list() == ["completed", "failed", "failed"]
    assert out["_error"][1].startswith("input: the system prompt is empty or only whitespace")
    assert "system=pl.col('system').replace('', None)" in out["_error"][1]
    assert out["_error"][2].startswith("input: a turn of the history is empty or only whitespace")
    assert len(emu.billing()) == 1


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"prompt": ""}, "prompt='' has no text to send"),
        ({"prompt": "  "}, "prompt='  ' has no text to send"),
        ({"prompt": "{text}", "system": ""}, "pass system=None to send no system prompt"),
    ],
)
def test_a_constant_blank_prompt_or_system_is_refused_before_any_request(emu, tmp_path, kwargs,
                                                                         needle):  # fmt: skip
    df = pl.DataFrame({"text": ["fine text"]})
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        df.pipe(batch_llm, model="claude-haiku-4-5", state=tmp_path / "s", progress=False,
                **kwargs)  # fmt: skip
    assert emu.log() == []
    assert emu.billing() == []


def test_blank_is_strip_chars_leaving_nothing_for_every_code_point() -> None:
    """``_blank`` (a search for a character that is not whitespace) says what
    ``str.strip_chars().str.len_bytes() == 0`` (its previous form, which copied every
    prompt) says, for every code point alone, twice over with a space, and among text;
    null stays null and the empty string is blank."""
    from batchata_df.jobs import _blank

    points = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    texts = pl.Series(
        "t", [*points, *(c * 2 + " " for c in points), *(f" {c}x" for c in points), "", None]
    )
    frame = pl.DataFrame(texts)
    got = frame.select(_blank(pl.col("t"))).to_series()
    want = frame.select(pl.col("t").str.strip_chars().str.len_bytes() == 0).to_series()
    assert got.equals(want)
    assert got.sum() == 2 * 25 + 1  # Unicode's 25 White_Space characters, and ""
    assert got[-1] is None
