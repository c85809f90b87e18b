"""Issue 9 point 4: a provider that is down never looks like success.

The documented outcome (README, "When the provider is unreachable"), the same for every
provider: the call keeps trying for ``provider_patience`` seconds, then **returns** with
the reason on every row it could not send or collect -- ``cancelled: provider_unavailable:
<last error>`` for rows never sent (a later call sends them), ``pending`` with
``provider_unavailable: <last error>`` for rows whose batch may exist at the provider (a
later call with the same ``state`` collects them, never paying twice) -- and warns with
:class:`~batchata_df.errors.ProviderUnavailableWarning`.
"""

from __future__ import annotations

import re
import socket

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import ProviderUnavailableWarning, batch_llm
from batchata_df.providers.anthropic import AnthropicProvider
from batchata_df.providers.gemini import GeminiProvider
from batchata_df.providers.openai import OpenAIProvider


class A(BaseModel):
    label: str


# provider -> model, create (POST), list (GET), poll (GET one batch), download (GET results)
ROUTES = {
    "openai": ("gpt-4.1-mini", r"^/openai/v1/batches$", r"^/openai/v1/batches(\?.*)?$",
               r"^/openai/v1/batches/[^/]+$", r"^/openai/v1/files/[^/]+/content"),
    "anthropic": ("claude-haiku-4-5", r"/messages/batches$", r"/messages/batches(\?.*)?$",
                  r"/messages/batches/[^/]+$", r"/messages/batches/[^/]+/results"),
    "gemini": ("gemini-2.5-flash", r":batchGenerateContent$", r"/v1beta/batches(\?.*)?$",
               r"/v1beta/batches/[^/:?]+$", r"(:download|/download/)"),
}
PROVIDERS = sorted(ROUTES)
ROWS = [f"row {i}" for i in range(4)]


@pytest.fixture(autouse=True)
def fast_sdk_retries(monkeypatch):
    # The SDKs' own retries still happen, only with short waits (the suite's time budget).
    monkeypatch.setattr(GeminiProvider, "retry_initial_delay", 0.01)
    monkeypatch.setattr(GeminiProvider, "retry_max_delay", 0.05)
    monkeypatch.setattr(AnthropicProvider, "create_retry_base_s", 0.01)
    monkeypatch.setattr(AnthropicProvider, "sdk_max_retries", 1)
    monkeypatch.setattr(OpenAIProvider, "sdk_max_retries", 1)


def run(provider: str, state, **kw):
    model = ROUTES[provider][0]
    return pl.DataFrame({"t": ROWS}).pipe(
        batch_llm, schema=A, model=model, prompt="{t}", state=state, **kw
    )


def creates(emu, provider: str) -> list[dict]:
    pattern = ROUTES[provider][1]
    return [e for e in emu.log() if e["method"] == "POST" and re.search(pattern, e["path"])]


def down(emu, method: str, pattern: str) -> None:
    emu.inject_fault(method=method, path_regex=pattern, status=503, times=None,
                     retry_after_ms=1)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_creates_refused_end_unsent_rows_cancelled_with_the_reason_and_warn(
    provider, emu, tmp_path
):
    down(emu, "POST", ROUTES[provider][1])
    with pytest.warns(ProviderUnavailableWarning, match=r"^4 rows .*0 pending.*4 cancelled") \
            as caught:
        out = run(provider, tmp_path / "s", provider_patience=0.5)
    assert caught[0].filename == __file__  # run() here calls batch_llm: its line
    assert out["_status"].to_list() == ["cancelled"] * 4
    assert out["_error"].str.starts_with("cancelled: provider_unavailable: ").all()
    assert out["_error"].str.contains("503").all(), out["_error"][0]
    assert all(e["status"] == 503 for e in creates(emu, provider))  # nothing was created
    emu.clear_faults()
    again = run(provider, tmp_path / "s")
    assert again["_status"].to_list() == ["completed"] * 4
    assert len([e for e in creates(emu, provider) if e["status"] == 200]) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_provider_down_for_creates_and_lookups_returns_pending_rows_with_the_reason(
    provider, emu, tmp_path
):
    # What users saw: 4 rows "pending", empty _error, nothing raised or logged.
    _, create, listing, _, _ = ROUTES[provider]
    down(emu, "POST", create)
    down(emu, "GET", listing)
    seen: list[str] = []
    with pytest.warns(ProviderUnavailableWarning, match="provider_unavailable"):
        out = run(provider, tmp_path / "s", provider_patience=0.5,
                  progress=lambda snap: seen.append(snap.activity))
    assert out["_status"].to_list() == ["pending"] * 4
    assert out["_error"].str.starts_with("provider_unavailable: ").all(), out["_error"][0]
    assert out["_error"].str.contains("503").all()
    assert any("unreachable" in a for a in seen)  # the display says so while it waits
    emu.clear_faults()
    again = run(provider, tmp_path / "s")  # resolves the open intent first: nothing twice
    assert again["_status"].to_list() == ["completed"] * 4
    assert again["_error"].is_null().all()
    assert len([e for e in creates(emu, provider) if e["status"] == 200]) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_without_waiting_a_refused_create_leaves_each_row_pending_with_the_reason(
    provider, emu, tmp_path
):
    # Creates are refused; wait=False returns after the first round. The row whose create
    # failed (it has an intent) and the rows behind it all say why they were not sent, and
    # the next call sends each of them once.
    down(emu, "POST", ROUTES[provider][1])
    with pytest.warns(ProviderUnavailableWarning, match=r"^4 rows .*4 pending.*0 cancelled"):
        out = run(provider, tmp_path / "s", wait=False, items_per_batch=2)
    assert out["_status"].to_list() == ["pending"] * 4
    assert out["_error"].str.starts_with("provider_unavailable: ").all(), out["_error"].to_list()
    assert out["_error"].str.contains("503").all()
    assert {e["status"] for e in creates(emu, provider)} == {503}
    emu.clear_faults()
    again = run(provider, tmp_path / "s", items_per_batch=2)
    assert again["_status"].to_list() == ["completed"] * 4
    assert again["_error"].is_null().all()
    assert len([e for e in creates(emu, provider) if e["status"] == 200]) == 2


@pytest.mark.parametrize(
    ("provider", "step"),
    # Gemini returns a small batch's results inline in the batch itself, so its download
    # is its poll.
    [(p, s) for p in PROVIDERS for s in ("poll", "download") if (p, s) != ("gemini", "download")],
)
def test_a_provider_down_after_the_create_leaves_rows_pending_with_the_reason(
    provider, step, emu, tmp_path
):
    _, _, _, poll, download = ROUTES[provider]
    down(emu, "GET", poll if step == "poll" else download)
    seen: list[str] = []
    with pytest.warns(ProviderUnavailableWarning, match="provider_unavailable"):
        out = run(provider, tmp_path / "s", provider_patience=0.5,
                  progress=lambda snap: seen.append(snap.activity))
    assert out["_status"].to_list() == ["pending"] * 4
    assert out["_error"].str.starts_with("provider_unavailable: ").all(), out["_error"][0]
    assert any("unreachable" in a for a in seen)
    assert out["_batch_id"].is_not_null().all()  # the batch is at the provider...
    faulted = [e for e in emu.log() if e.get("fault")]
    assert faulted, f"the {step} fault never fired"
    emu.clear_faults()
    again = run(provider, tmp_path / "s")  # ...and the next call collects it
    assert again["_status"].to_list() == ["completed"] * 4
    assert len(creates(emu, provider)) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_unreachable_provider_is_visible(provider, emu, monkeypatch, tmp_path):
    with socket.socket() as sock:  # a port nothing listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("OPENAI_BASE_URL", dead + "/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", dead)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", dead)
    with pytest.warns(ProviderUnavailableWarning, match="provider_unavailable"):
        out = run(provider, tmp_path / "s", provider_patience=0.2)
    assert out["_status"].to_list() == ["pending"] * 4
    assert out["_error"].str.starts_with("provider_unavailable: ").all(), out["_error"][0]


def test_provider_patience_is_validated(emu):
    from batchata_df import ConfigError

    with pytest.raises(ConfigError, match="provider_patience"):
        run("openai", None, provider_patience=float("nan"))
    assert emu.log() == []


@pytest.mark.parametrize("slice_rows", [50_000, 2])
def test_a_streamed_call_without_waiting_flags_each_row_a_refused_create_left_once(
    emu, tmp_path, monkeypatch, slice_rows
):
    # Creates are refused; wait=False returns after the first round. The rows of the chunk
    # it read (the refused batch's and the ones behind it) and the rows of the chunk it
    # never read all say why, and the warning counts each row once, whatever the size of
    # the sink's slices.
    import batchata_df.stream

    monkeypatch.setattr(batchata_df.stream, "SINK_SLICE_ROWS", slice_rows)
    model, create = ROUTES["openai"][0], ROUTES["openai"][1]
    down(emu, "POST", create)
    lf = pl.LazyFrame({"t": [f"row {i}" for i in range(6)]})
    with pytest.warns(ProviderUnavailableWarning, match=r"^6 rows .*6 pending.*0 cancelled"):
        out = batch_llm(lf, schema=A, model=model, prompt="{t}", state=tmp_path / "s",
                        wait=False, items_per_batch=2, sink=tmp_path / "o.parquet",
                        chunk_rows=4).collect()
    assert out["_status"].to_list() == ["pending"] * 6
    assert out["_error"].null_count() == 0
    assert out["_error"].str.starts_with("provider_unavailable: ").all()
    emu.clear_faults()
    again = batch_llm(pl.LazyFrame({"t": [f"row {i}" for i in range(6)]}), schema=A,
                      model=model, prompt="{t}", state=tmp_path / "s", items_per_batch=2,
                      sink=tmp_path / "o2.parquet", chunk_rows=4).collect()
    assert again["_status"].to_list() == ["completed"] * 6
    assert len([e for e in creates(emu, "openai") if e["status"] == 200]) == 3
