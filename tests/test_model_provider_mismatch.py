"""A model sent to a provider that does not serve it: refused before sending, or row data.

Before anything is sent, ``check_provider`` refuses a name genai-prices lists under another
provider only (``anthropic:gpt-4.1-mini``), naming the fix. When the provider's base URL
points elsewhere (a gateway; here the emulator), the library cannot know what is served,
so it sends, and what the provider answers becomes ``_status="failed"`` with an ``_error``
per row: no row is lost, whichever way the provider refuses (OpenAI fails the batch in
validation, Anthropic errors each request, Gemini refuses the create with a 404).
"""

from __future__ import annotations

import polars as pl
import pytest

from batchata_df import ModelError, batch_llm
from batchata_df.models import check_provider

ROWS = pl.DataFrame({"text": ["one", "two", "three"]})


@pytest.mark.parametrize(
    ("model", "fix"),
    [
        ("anthropic:gpt-4.1-mini", "write model='gpt-4.1-mini' (or 'openai:gpt-4.1-mini')"),
        ("openai:claude-haiku-4-5",
         "write model='claude-haiku-4-5' (or 'anthropic:claude-haiku-4-5')"),
        ("gemini:gpt-5-mini", "write model='gpt-5-mini' (or 'openai:gpt-5-mini')"),
        ("gemini:claude-sonnet-4-6",  # genai-prices' Google list is Vertex's Claude
         "write model='claude-sonnet-4-6' (or 'anthropic:claude-sonnet-4-6')"),
        ("anthropic:gemini-2.5-flash",
         "write model='gemini-2.5-flash' (or 'gemini:gemini-2.5-flash')"),
        # OpenAI's, but a bare name the provider cannot be told from: the prefix is the fix
        ("anthropic:codex-mini-latest", "write model='openai:codex-mini-latest'"),
    ],
)
def test_another_providers_model_is_refused_before_sending(official, tmp_path, model, fix):
    # ModelError, not CredentialsError: the check comes before any key is needed.
    with pytest.raises(ModelError) as info:
        ROWS.pipe(batch_llm, model=model, prompt="{text}", state=tmp_path / "s")
    message = str(info.value)
    assert message.endswith(fix), message
    assert "whose batch API would fail every row" in message
    assert not (tmp_path / "s").exists()
    with pytest.raises(ModelError):  # a dry run is refused the same way
        ROWS.pipe(batch_llm, model=model, prompt="{text}", dry_run=True)


def test_names_genai_prices_does_not_list_are_left_to_the_provider(official):
    for provider, model in [("anthropic", "my-finetune"), ("openai", "gpt-6-terra"),
                            ("gemini", "gemini-9-flash"), ("openai", "gpt-4.1-mini")]:
        check_provider(provider, model)


def test_a_base_url_lets_anything_through(official, monkeypatch, tmp_path):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://gateway.invalid")
    check_provider("anthropic", "gpt-4.1-mini")
    monkeypatch.delenv("ANTHROPIC_BASE_URL")
    (tmp_path / ".env").write_text("OPENAI_BASE_URL=http://gateway.invalid\n")
    check_provider("openai", "claude-haiku-4-5")  # the .env the run would load
    with pytest.raises(ModelError):
        check_provider("anthropic", "gpt-4.1-mini")


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("anthropic:gpt-4.1-mini", "not_found_error: model: gpt-4.1-mini"),
        ("openai:claude-haiku-4-5", "model_not_found: The provided model 'claude-haiku-4-5' "
                                    "is not supported by the Batch API. (line 1)"),
        ("gemini:gpt-4.1-mini", "models/gpt-4.1-mini is not found for API version"),
    ],
)
def test_through_a_gateway_the_refusal_is_row_data(emu, tmp_path, model, error):
    out = ROWS.pipe(batch_llm, model=model, prompt="{text}", state=tmp_path / "s")
    assert out["text"].to_list() == ROWS["text"].to_list()
    assert out["_status"].to_list() == ["failed"] * 3
    errors = out["_error"].to_list()
    assert all(e is not None and error in e for e in errors), errors
