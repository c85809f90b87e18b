"""Models their provider has retired: refused by the emulator as the provider refuses them,
and by the library before anything is sent, naming the shutdown date and the replacement.

Sources (the shutdown dates, ``batchata_df.models.RETIRED``): Anthropic's model
deprecations page ("Requests to retired models will fail"), OpenAI's deprecations page
("At the time of the shut down, the model or endpoint will no longer be accessible"),
Gemini's deprecations page ("Once a model is 'shutdown', it is completely turned off").
"""

from __future__ import annotations

import anthropic
import openai
import polars as pl
import pytest
from google import genai
from google.genai import errors as genai_errors

from batchata_df import ModelError, batch_llm
from batchata_df.emulator.model_rules import RETIRED as EMULATOR_RETIRED
from batchata_df.emulator.model_rules import retired
from batchata_df.models import RETIRED, retirement

ROWS = pl.DataFrame({"text": ["one", "two"]})
MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("model", "message"), [
    ("claude-3-opus-20240229", "model 'claude-3-opus-20240229' was retired by Anthropic on "
     "2026-01-05: every request to it would fail (https://platform.claude.com/docs/en/"
     "about-claude/model-deprecations); use 'claude-opus-4-8' instead"),
    ("anthropic:claude-sonnet-4-20250514", "model 'claude-sonnet-4-20250514' was retired by "
     "Anthropic on 2026-06-15: every request to it would fail (https://platform.claude.com/"
     "docs/en/about-claude/model-deprecations); use 'claude-sonnet-4-6' instead"),
    ("gpt-4-32k", "model 'gpt-4-32k' was retired by OpenAI on 2025-06-06: every request to it "
     "would fail (https://developers.openai.com/api/docs/deprecations); use 'gpt-4o' instead"),
    ("o4-mini", "model 'o4-mini' was retired by OpenAI on 2026-10-23: every request to it "
     "would fail (https://developers.openai.com/api/docs/deprecations); use 'gpt-5.6-terra' "
     "instead"),
    # Retired today: Anthropic's page, "| claude-sonnet-4-5-20250929 | Deprecated |
    # September 30, 2026 | November 30, 2026 |", replacement claude-sonnet-5-5.
    ("claude-sonnet-4-5", "model 'claude-sonnet-4-5' was retired by Anthropic on 2026-11-30: "
     "every request to it would fail (https://platform.claude.com/docs/en/about-claude/"
     "model-deprecations); use 'claude-sonnet-5-5' instead"),
    ("anthropic:claude-sonnet-4-5-20250929", "model 'claude-sonnet-4-5-20250929' was retired "
     "by Anthropic on 2026-11-30: every request to it would fail (https://platform.claude.com/"
     "docs/en/about-claude/model-deprecations); use 'claude-sonnet-5-5' instead"),
    ("gemini:gemini-1.0-pro", "model 'gemini-1.0-pro' was retired by Gemini on 2025-09-24: "
     "every request to it would fail (https://ai.google.dev/gemini-api/docs/deprecations); "
     "use 'gemini-3.5-flash' instead"),
])  # fmt: skip
def test_a_retired_model_is_refused_before_anything_is_sent(official, tmp_path, model, message):
    # ModelError before any key is needed, nothing written; a dry run is refused too.
    for dry_run in (False, True):
        with pytest.raises(ModelError) as info:
            ROWS.pipe(batch_llm, model=model, prompt="{text}", state=tmp_path / "s",
                      dry_run=dry_run)
        assert str(info.value) == message
    assert not (tmp_path / "s").exists()


def test_served_models_pass(official):
    from batchata_df.models import check_retired

    for provider, model in [("anthropic", "claude-haiku-4-5"), ("anthropic", "claude-opus-4-5"),
                            ("anthropic", "claude-haiku-4-5-20251001"),
                            ("anthropic", "claude-sonnet-5-5"), ("openai", "gpt-4o-mini"),
                            ("openai", "o3"), ("gemini", "gemini-2.5-flash"),
                            ("gemini", "gemini-3.1-pro-preview")]:  # fmt: skip
        check_retired(provider, model)


def test_the_client_and_the_emulator_list_the_same_retirements():
    # Two tables on purpose (the emulator is the client's referee); they must agree.
    names = ["claude-1.3", "claude-2.1", "claude-3-sonnet-20240229", "claude-3-5-sonnet-latest",
             "claude-3-opus-latest", "claude-3-7-sonnet-20250219", "claude-3-5-haiku-20241022",
             "claude-3-haiku-20240307", "claude-opus-4-0", "claude-sonnet-4-20250514",
             "claude-opus-4-1-20250805", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929",
             "claude-haiku-4-5", "claude-haiku-4-5-20251001",
             "claude-opus-4-5", "gpt-3.5-turbo", "gpt-3.5-turbo-0613", "gpt-4", "gpt-4-0613",
             "gpt-4-turbo", "gpt-4-32k", "gpt-4.5-preview", "o1-preview", "o1-mini", "o1",
             "o1-pro", "o3-mini", "o4-mini", "o3", "o4-mini-deep-research",
             "gpt-4o-2024-05-13", "gpt-4o", "gpt-4o-mini", "gpt-4.1-nano", "gpt-4.1-mini",
             "chatgpt-4o-latest", "gpt-5-chat-latest", "gpt-5.3-chat-latest", "gpt-5.1",
             "gpt-5.2-codex", "gemini-1.5-pro", "gemini-pro", "gemini-2.0-flash-001",
             "gemini-2.0-flash-lite", "gemini-2.5-flash", "gemini-2.5-pro",
             "gemini-2.5-flash-image", "gemini-3-pro-preview", "gemini-3.1-pro-preview",
             "gemini-3-pro-image-preview"]  # fmt: skip
    for name in names:
        provider = ("anthropic" if name.startswith("claude") else
                    "gemini" if name.startswith("gemini") else "openai")  # fmt: skip
        client = retirement(provider, name)
        assert (client[0] if client else None) == retired(provider, name), name
    assert {p for p, *_ in RETIRED} == {p for p, *_ in EMULATOR_RETIRED}


def test_the_emulator_refuses_retired_models_as_each_provider_does(emu):
    # Anthropic: 404 not_found_error "model: <name>"; in a batch, that request errored
    # (and, errored, it is not billed).
    claude = anthropic.Anthropic(api_key="k", max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as info:
        claude.messages.create(model="claude-3-opus-20240229", max_tokens=10, messages=MSG)
    assert info.value.body["error"] == {  # type: ignore[index]
        "type": "not_found_error", "message": "model: claude-3-opus-20240229"}
    batch = claude.messages.batches.create(requests=[
        {"custom_id": "old", "params": {"model": "claude-3-opus-20240229", "max_tokens": 10,
                                        "messages": MSG}},
        {"custom_id": "new", "params": {"model": "claude-opus-4-8", "max_tokens": 10,
                                        "messages": MSG}},
    ])  # fmt: skip
    results = {r.custom_id: r.result for r in claude.messages.batches.results(batch.id)}
    assert results["old"].type == "errored"
    assert results["old"].error.error.message == "model: claude-3-opus-20240229"  # type: ignore[union-attr]
    assert results["new"].type == "succeeded"
    assert [b["custom_id"] for b in emu.billing()] == ["new"]
    # OpenAI: 404 model_not_found.
    oa = openai.OpenAI(api_key="sk-test", max_retries=0)
    with pytest.raises(openai.NotFoundError) as oinfo:
        oa.chat.completions.create(model="gpt-4-32k", messages=MSG)  # type: ignore[arg-type]
    assert oinfo.value.code == "model_not_found"
    assert oinfo.value.message.endswith(
        "The model `gpt-4-32k` does not exist or you do not have access to it.")
    # Gemini: 404 NOT_FOUND.
    gem = genai.Client(api_key="k")
    with pytest.raises(genai_errors.ClientError) as ginfo:
        gem.models.generate_content(model="gemini-1.0-pro", contents="hi")
    assert ginfo.value.code == 404
    assert "models/gemini-1.0-pro is not found for API version" in str(ginfo.value)
    # Where a gateway still serves them (the setting), they answer.
    emu.configure(serve_retired=True)
    assert claude.messages.create(model="claude-3-opus-20240229", max_tokens=200,
                                  messages=MSG).stop_reason == "end_turn"  # fmt: skip
    assert oa.chat.completions.create(model="gpt-4-32k", messages=MSG).choices  # type: ignore[arg-type]
    assert gem.models.generate_content(model="gemini-1.0-pro", contents="hi").text


def test_through_a_gateway_a_retired_models_rows_fail_as_data(emu, tmp_path):
    # The base URL points elsewhere (here, the emulator): the library cannot know what is
    # served, so it sends; the provider's refusal is each row's error, nothing is billed.
    out = ROWS.pipe(batch_llm, model="claude-3-opus-20240229", prompt="{text}",
                    state=tmp_path / "s")
    assert out["_status"].to_list() == ["failed", "failed"]
    assert out["_error"].to_list() == ["not_found_error: model: claude-3-opus-20240229"] * 2
    assert out["_cost_usd"].to_list() == [0.0, 0.0]
    assert emu.billing() == []


def test_a_folder_written_before_the_shutdown_is_still_collected(emu, tmp_path, monkeypatch):
    # A batch sent while the model was served, collected after its shutdown: the resumed
    # call is not refused (its answers were paid for); a fresh folder is.
    from batchata_df import models

    emu.configure(serve_retired=True, latency=60.0)  # the day before the shutdown
    kw = {"model": "claude-3-opus-20240229", "prompt": "{text}"}
    first = ROWS.pipe(batch_llm, state=tmp_path / "old", wait=False, **kw)
    assert first["_status"].to_list() == ["pending", "pending"]
    # From here on, as against api.anthropic.com itself (no gateway in between).
    monkeypatch.setattr(models, "_custom_endpoint", lambda provider: False)
    with pytest.raises(ModelError, match="was retired by Anthropic on 2026-01-05"):
        ROWS.pipe(batch_llm, state=tmp_path / "new", **kw)
    emu.advance(60)
    out = ROWS.pipe(batch_llm, state=tmp_path / "old", **kw)
    assert out["_status"].to_list() == ["completed", "completed"]
    assert sorted(b["custom_id"] for b in emu.billing()) == sorted(out["_job_id"].to_list())


SONNET_45 = ["claude-sonnet-4-5", "claude-sonnet-4-5-20250929"]


def test_claude_sonnet_4_5_is_refused_by_the_emulator_as_anthropic_refuses_it(emu):
    # Retired on 2026-11-30 (Anthropic's model deprecations page): the alias and the dated
    # snapshot alike are a 404 not_found_error; in a batch, those requests are errored and
    # not billed, the served model's request runs.
    # The SDK warns first (anthropic 2.14 _data/deprecated_models.py: "claude-sonnet-4-5":
    # "November 30th, 2026"), then the service refuses it.
    claude = anthropic.Anthropic(api_key="k", max_retries=0)
    for model in SONNET_45:
        with (pytest.raises(anthropic.NotFoundError) as info,
              pytest.warns(DeprecationWarning, match="end-of-life on November 30th, 2026")):
            claude.messages.create(model=model, max_tokens=10, messages=MSG)
        assert info.value.body["error"] == {  # type: ignore[index]
            "type": "not_found_error", "message": f"model: {model}"}
    batch = claude.messages.batches.create(requests=[
        *({"custom_id": f"old{i}", "params": {"model": m, "max_tokens": 10, "messages": MSG}}
          for i, m in enumerate(SONNET_45)),
        {"custom_id": "new", "params": {"model": "claude-sonnet-5-5", "max_tokens": 4000,
                                        "messages": MSG}},
    ])  # fmt: skip
    results = {r.custom_id: r.result for r in claude.messages.batches.results(batch.id)}
    for i, model in enumerate(SONNET_45):
        assert results[f"old{i}"].type == "errored"
        assert results[f"old{i}"].error.error.message == f"model: {model}"  # type: ignore[union-attr]
    assert results["new"].type == "succeeded"
    assert [b["custom_id"] for b in emu.billing()] == ["new"]


def test_claude_sonnet_4_5_is_refused_by_the_client_before_anything_is_sent(
    emu, tmp_path, monkeypatch
):
    # As against api.anthropic.com (no gateway in between): ModelError naming the shutdown
    # date and the replacement, before any request; nothing billed, no folder written.
    from batchata_df import models

    monkeypatch.setattr(models, "_custom_endpoint", lambda provider: False)
    for model in SONNET_45:
        with pytest.raises(ModelError) as info:
            ROWS.pipe(batch_llm, model=model, prompt="{text}", state=tmp_path / "s")
        assert str(info.value) == (
            f"model {model!r} was retired by Anthropic on 2026-11-30: every request to it "
            "would fail (https://platform.claude.com/docs/en/about-claude/model-deprecations)"
            "; use 'claude-sonnet-5-5' instead"
        )
    assert emu.log() == []
    assert emu.billing() == []
    assert not (tmp_path / "s").exists()
    # Its replacement runs.
    out = ROWS.pipe(batch_llm, model="claude-sonnet-5-5", prompt="{text}", state=tmp_path / "s")
    assert out["_status"].to_list() == ["completed", "completed"]
    assert len(emu.billing()) == 2


@pytest.mark.parametrize("streamed", [False, True])
def test_new_rows_of_a_retired_model_on_an_existing_folder_are_refused_before_sending(
    emu, tmp_path, monkeypatch, streamed
):
    # Day 1 writes the folder with a served model; day 2 adds rows of a retired one. Those
    # rows were never recorded, so the folder's existence does not excuse them: the same
    # ModelError as on a fresh folder (naming the replacement), and nothing is sent.
    from batchata_df import models

    day1 = pl.DataFrame({"text": ["one", "two"], "model": ["claude-haiku-4-5"] * 2})
    state = tmp_path / "s"

    def run(df: pl.DataFrame) -> pl.DataFrame:
        kw = {"model": pl.col("model"), "prompt": "{text}", "state": state}
        if streamed:
            sink = tmp_path / f"out{len(df)}.parquet"
            return batch_llm(df.lazy(), sink=sink, **kw).collect()  # type: ignore[union-attr]
        return df.pipe(batch_llm, **kw)

    assert run(day1)["_status"].to_list() == ["completed", "completed"]
    sent, billed = len(emu.log()), emu.billing()
    monkeypatch.setattr(models, "_custom_endpoint", lambda provider: False)
    day2 = pl.concat([day1, pl.DataFrame({"text": ["three"], "model": ["claude-sonnet-4-5"]})])
    with pytest.raises(ModelError, match="retired by Anthropic on 2026-11-30.*use 'claude-"):
        run(day2)
    assert emu.log()[sent:] == []
    assert emu.billing() == billed


def test_a_folder_written_before_the_shutdown_is_still_collected_when_streamed(
    emu, tmp_path, monkeypatch
):
    # As test_a_folder_written_before_the_shutdown_is_still_collected, on the streamed path:
    # every row of the retired model is in the folder's batch in flight, so it is collected.
    from batchata_df import models

    emu.configure(serve_retired=True, latency=60.0)
    kw = {"model": "claude-3-opus-20240229", "prompt": "{text}", "state": tmp_path / "old"}
    first = batch_llm(ROWS.lazy(), sink=tmp_path / "a.parquet", wait=False, **kw)
    assert first.collect()["_status"].to_list() == ["pending", "pending"]  # type: ignore[union-attr]
    monkeypatch.setattr(models, "_custom_endpoint", lambda provider: False)
    emu.advance(60)
    out = batch_llm(ROWS.lazy(), sink=tmp_path / "b.parquet", **kw).collect()  # type: ignore[union-attr]
    assert out["_status"].to_list() == ["completed", "completed"]
    assert sorted(b["custom_id"] for b in emu.billing()) == sorted(out["_job_id"].to_list())
    # A new row beside them: the folder holds rows of the model, so the call goes on (a
    # refusal would leave a paid batch uncollected) and the new row fails as data, unsent.
    sent = len(emu.log())
    more = pl.concat([ROWS, pl.DataFrame({"text": ["three"]})]).lazy()
    out = batch_llm(more, sink=tmp_path / "c.parquet", **kw).collect()  # type: ignore[union-attr]
    assert out["_status"].to_list() == ["completed", "completed", "failed"]
    assert "was retired by Anthropic on 2026-01-05" in out["_error"][2]
    assert [e for e in emu.log()[sent:] if e["method"] == "POST"] == []


@pytest.mark.parametrize("streamed", [False, True])
def test_a_paid_batch_of_a_since_retired_model_is_collected_beside_rows_never_sent(
    emu, tmp_path, monkeypatch, streamed
):
    # One row went into a batch (billed, in flight) while the model was served; the other
    # three were never sent (one batch at a time, the call did not wait). After the
    # shutdown the same call collects the paid row; the other three fail as data with the
    # fresh folder's message (the replacement named), and nothing more is sent.
    from batchata_df import models

    emu.configure(serve_retired=True, latency=60.0)
    rows = pl.DataFrame({"text": [f"row {i}" for i in range(4)]})
    kw = {"model": "claude-3-opus-20240229", "prompt": "{text}", "state": tmp_path / "s",
          "params": {"max_tokens": 64}}  # fmt: skip

    def run(**more: object) -> pl.DataFrame:
        if streamed:
            sink = tmp_path / f"out{len(emu.log())}.parquet"
            return batch_llm(rows.lazy(), sink=sink, **kw, **more).collect()  # type: ignore[arg-type,union-attr]
        return rows.pipe(batch_llm, **kw, **more)  # type: ignore[arg-type]

    first = run(wait=False, items_per_batch=1, max_parallel_batches=1)
    assert sorted(first["_status"].to_list()) == ["pending"] * 4
    monkeypatch.setattr(models, "_custom_endpoint", lambda provider: False)
    emu.advance(60)
    billed, posts = emu.billing(), len([e for e in emu.log() if e["method"] == "POST"])
    assert len(billed) == 1
    out = run()
    paid = out.filter(pl.col("_job_id") == billed[0]["custom_id"])
    assert paid["_status"].to_list() == ["completed"]
    rest = out.filter(pl.col("_job_id").is_null() | (pl.col("_job_id") != billed[0]["custom_id"]))
    assert rest["_status"].to_list() == ["failed"] * 3
    assert all("use 'claude-opus-4-8' instead" in e for e in rest["_error"].to_list())
    assert len([e for e in emu.log() if e["method"] == "POST"]) == posts  # nothing sent
    assert emu.billing() == billed
