"""Anthropic's API version 2026-10-21: no temperature, top_p or top_k on any model.

anthropic 2.x sends ``anthropic-version: 2026-10-21`` on every request (anthropic 2.14
``_constants.ANTHROPIC_API_VERSION``), and under that version the Messages API, token
counting and Message Batches refuse the three sampling parameters at any value, on every
model ("temperature: Extra inputs are not permitted"); requests sent with ``2023-06-01``
keep the per-model rules. Sources: ``batchata_df.emulator.anthropic_checks.
SAMPLING_REMOVED_IN``. The emulator is checked through the official SDK with both
versions; the client refuses the parameters before anything is sent, since the SDK it
needs (anthropic>=2.10) always sends 2026-10-21.
"""

from __future__ import annotations

from typing import Any

import anthropic
import polars as pl
import pytest
from model_calls import Label, run

import batchata_df.frame
from batchata_df import ParamError, batch_llm
from batchata_df.models import capabilities_table, check_model_params


def batch_result(client: anthropic.Anthropic, model: str, **params: Any) -> Any:
    request = {
        "model": model,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "hi"}],
        **params,
    }
    batch = client.messages.batches.create(requests=[{"custom_id": "r", "params": request}])
    (result,) = list(client.messages.batches.results(batch.id))
    return result.result


def test_the_sdk_sends_api_version_2026_10_21():
    from anthropic._constants import ANTHROPIC_API_VERSION

    assert ANTHROPIC_API_VERSION == "2026-10-21"


@pytest.mark.parametrize(
    ("name", "value"), [("temperature", 1.0), ("temperature", 0.2), ("top_p", 0.99), ("top_k", 5)]
)
@pytest.mark.parametrize("model", ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-haiku-5-5"])
def test_emulator_refuses_sampling_under_the_sdks_version(emu, model, name, value):
    result = batch_result(anthropic.Anthropic(), model, **{name: value})
    assert result.type == "errored"
    assert result.error.error.type == "invalid_request_error"
    assert result.error.error.message == f"{name}: Extra inputs are not permitted"


def test_emulator_refuses_sampling_on_the_messages_endpoint_too(emu):
    client = anthropic.Anthropic()
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=256,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"temperature": 0.0},
        )
    assert refused.value.status_code == 400
    body = refused.value.body
    assert isinstance(body, dict)
    assert body["error"] == {
        "type": "invalid_request_error",
        "message": "temperature: Extra inputs are not permitted",
    }


def test_emulator_keeps_the_model_rules_under_2023_06_01(emu):
    old = anthropic.Anthropic(default_headers={"anthropic-version": "2023-06-01"})
    assert batch_result(old, "claude-haiku-4-5", temperature=0.2).type == "succeeded"
    both = batch_result(old, "claude-haiku-4-5", temperature=0.2, top_p=0.9)
    assert both.type == "errored"
    assert "temperature and top_p cannot both be specified" in both.error.error.message
    none = batch_result(old, "claude-sonnet-5-5", temperature=0.2)
    assert "does not support sampling parameters" in none.error.error.message


@pytest.mark.parametrize("name", ["temperature", "top_p", "top_k"])
@pytest.mark.parametrize("model", ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-6"])
def test_the_client_refuses_sampling_on_every_claude_model(emu, tmp_path, model, name):
    value = 5 if name == "top_k" else 0.5
    with pytest.raises(ParamError) as info:
        run(model, tmp_path, params={name: value})
    assert info.value.param == name
    assert info.value.model == model
    assert "2026-10-21" in str(info.value)
    assert emu.log() == []  # nothing was sent


def test_the_client_still_takes_sampling_where_the_provider_does(emu, tmp_path):
    check_model_params("openai", "gpt-4.1-mini", {"temperature": 0.2})
    check_model_params("gemini", "gemini-3.5-flash", {"temperature": 0.2, "top_k": 5})
    out = run("claude-haiku-4-5", tmp_path, params={"max_tokens": 512})
    assert out["_status"].to_list() == ["completed"] * 2


def test_what_users_saw_every_claude_row_failed(emu, tmp_path, monkeypatch):
    monkeypatch.setattr(batchata_df.frame, "check_model_params", lambda *a: None)
    out = run("claude-haiku-4-5", tmp_path, params={"temperature": 0.2})
    assert out["_status"].to_list() == ["failed"] * 2
    assert out["_error"].str.contains("temperature: Extra inputs are not permitted").all()


def test_the_capabilities_table_says_no_sampling_on_claude():
    rows = [line for line in capabilities_table().splitlines() if line.startswith("| anthropic")]
    assert rows
    assert all(line.split(" | ")[2] == "none" for line in rows)


# -- a value outside the old 0..1 range: the refusal names the fix that works ---------------


@pytest.mark.parametrize(("name", "value"), [("temperature", 1.5), ("top_p", 1.5)])
def test_an_out_of_range_value_on_claude_is_refused_for_being_there(emu, tmp_path, name, value):
    # It read "params['temperature'] must be between 0 and 1 for anthropic, got 1.5": a
    # caller who followed it (0.5) was refused again, by the model check.
    with pytest.raises(ParamError) as info:
        run("claude-haiku-4-5", tmp_path, params={name: value})
    assert info.value.param == name
    assert "2026-10-21" in str(info.value)
    assert "remove it" in str(info.value)
    assert "between 0 and 1" not in str(info.value)
    assert emu.log() == []


def test_a_model_column_of_gpt_and_claude_refuses_only_for_the_claude_model(emu, tmp_path):
    # temperature 1.5 is within OpenAI's 0..2: the GPT rows are not what is refused.
    frame = pl.DataFrame({"text": ["a", "b"], "m": ["gpt-4.1-mini", "claude-haiku-4-5"]})
    with pytest.raises(ParamError) as info:
        frame.pipe(batch_llm, schema=Label, model=pl.col("m"), prompt="Label {text}",
                   state=tmp_path / "s", params={"temperature": 1.5})  # fmt: skip
    assert info.value.model == "claude-haiku-4-5"
    assert "2026-10-21" in str(info.value)
    assert emu.log() == []
    out = pl.DataFrame({"text": ["a", "b"], "m": ["gpt-4.1-mini", "gpt-4o-mini"]}).pipe(
        batch_llm, schema=Label, model=pl.col("m"), prompt="Label {text}",
        state=tmp_path / "t", params={"temperature": 1.5},
    )  # fmt: skip
    assert out["_status"].to_list() == ["completed"] * 2, out["_error"].to_list()


def test_the_cli_refuses_an_out_of_range_temperature_on_claude_for_being_there(emu, tmp_path):
    import subprocess

    from test_cli_guards import EXE, _env

    pl.DataFrame({"text": ["a", "b"]}).write_parquet(tmp_path / "in.parquet")
    r = subprocess.run(
        [str(EXE), "run", "in.parquet", "out.parquet", "--prompt", "{text}", "--no-progress",
         "--model", "claude-haiku-4-5", "--param", "temperature=1.5"],
        cwd=tmp_path, env=_env(emu), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert r.returncode == 2
    assert "--param temperature; remove it" in r.stderr
    assert "2026-10-21" in r.stderr
    assert "between 0 and 1" not in r.stderr
    assert emu.log() == []


# -- a version Anthropic never published: refused on every route ------------------------------


@pytest.mark.parametrize("version", ["2023-10-01", "2024-10-22", "2027-01-01", "",
                                     "2023-06-01, 2023-06-01", "latest"])  # fmt: skip
def test_emulator_refuses_a_version_anthropic_never_published(emu, version):
    # "anthropic-version: \"2023-10-01\" is not a valid version" (directus-labs/extensions#285;
    # the duplicated header: decolua/9router#1227; "400 'invalid version' for any date that
    # isn't in their published list", sseshachala/conductai#2179). It took any value: an
    # unknown date before 2026-10-21 got the old rules (temperature taken), one after the new.
    client = anthropic.Anthropic(default_headers={"anthropic-version": version})
    calls = [
        lambda: client.messages.batches.create(requests=[{"custom_id": "r", "params": {
            "model": "claude-haiku-4-5", "max_tokens": 256, "temperature": 0.2,
            "messages": [{"role": "user", "content": "hi"}]}}]),
        lambda: client.messages.create(
            model="claude-haiku-4-5", max_tokens=256,
            messages=[{"role": "user", "content": "hi"}]),
        lambda: client.messages.batches.list(),
    ]  # fmt: skip
    for call in calls:
        with pytest.raises(anthropic.BadRequestError) as refused:
            call()
        body = refused.value.body
        assert isinstance(body, dict)
        assert body["error"] == {
            "type": "invalid_request_error",
            "message": f'anthropic-version: "{version}" is not a valid version',
        }


@pytest.mark.parametrize("version", ["2023-01-01", "2023-06-01", "2026-10-21"])
def test_emulator_takes_the_published_versions(emu, version):
    client = anthropic.Anthropic(default_headers={"anthropic-version": version})
    assert batch_result(client, "claude-haiku-4-5").type == "succeeded"


@pytest.mark.parametrize("how", ["sink", "realtime", "auto"])
def test_a_claude_row_last_in_a_model_column_is_refused_before_sending(emu, tmp_path, how):
    # The last of seven rows is Claude: the streamed path (two rows a chunk) and the
    # realtime / auto modes refuse its temperature before the GPT rows are sent.
    models = ["gpt-4.1-mini"] * 6 + ["claude-haiku-4-5"]
    frame = pl.DataFrame({"text": [f"t{i}" for i in range(7)], "m": models})
    kw: dict[str, Any] = (
        {"sink": tmp_path / "out.parquet", "chunk_rows": 2} if how == "sink" else {"mode": how}
    )
    with pytest.raises(ParamError) as info:
        batch_llm(frame.lazy() if how == "sink" else frame, schema=Label, model=pl.col("m"),
                  prompt="Label {text}", state=tmp_path / "s", params={"temperature": 0.3},
                  **kw)  # fmt: skip
    assert info.value.model == "claude-haiku-4-5"
    assert "2026-10-21" in str(info.value)
    assert emu.log() == []


# -- the version the client sends does not depend on the environment --------------------------


def test_the_client_sends_2026_10_21_whatever_anthropic_custom_headers_says(
    emu, tmp_path, monkeypatch
):
    # anthropic 2.14 adds the headers of ANTHROPIC_CUSTOM_HEADERS (one "Name: Value" a line,
    # the variable Claude Code documents for gateways) after its own, so an
    # "anthropic-version: ..." there replaced the 2026-10-21 this library's rules assume
    # (ANTHROPIC_SAMPLING): a version the API does not publish failed every row, and
    # 2023-06-01 ran under rules the client does not check. Other custom headers stay.
    from batchata_df.providers.anthropic import AnthropicProvider

    monkeypatch.setenv(
        "ANTHROPIC_CUSTOM_HEADERS", "anthropic-version: 2023-10-01\nx-gateway-team: labels"
    )
    headers = AnthropicProvider().client.default_headers
    assert headers["anthropic-version"] == "2026-10-21"
    assert headers["x-gateway-team"] == "labels"
    out = run("claude-haiku-4-5", tmp_path)
    assert out["_status"].to_list() == ["completed"] * 2, out["_error"].to_list()
