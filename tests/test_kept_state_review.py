"""Review 21b of KeptStateWarning: a call without ``state=`` whose batch create was
accepted by the provider but never answered (the create's answer lost, the lookups that
would find the batch refused) returns its rows ``pending``: the folder holds the open
create that a call with ``state=`` it resolves (finds the batch and collects it)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl
import pytest

from batchata_df import KeptStateWarning, ProviderUnavailableWarning, batch_llm
from batchata_df.providers.openai import OpenAIProvider

CREATE = r"^/openai/v1/batches$"
LISTING = r"^/openai/v1/batches(\?.*)?$"


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setattr(OpenAIProvider, "sdk_max_retries", 1)
    return folder


@pytest.mark.parametrize("streamed", [False, True])
def test_a_call_whose_accepted_create_was_never_heard_keeps_its_folder(
    emu, tmp_path: Path, scratch: Path, streamed: bool
) -> None:
    df = pl.DataFrame({"text": [f"t{i}" for i in range(4)]})
    kw: dict[str, object] = {"model": "gpt-4.1-mini", "prompt": "Say: {text}"}
    sink = tmp_path / "o.parquet"

    def run(**more: object) -> pl.DataFrame:
        if streamed:
            return batch_llm(df.lazy(), sink=sink, **kw, **more).collect()  # type: ignore[arg-type]
        return batch_llm(df, **kw, **more)  # type: ignore[arg-type]

    # The provider creates the batch, the answer is lost; the lookups are refused.
    emu.inject_fault(method="POST", path_regex=CREATE, action="disconnect", when="after",
                     times=1)  # fmt: skip
    emu.inject_fault(method="GET", path_regex=LISTING, status=503, times=None,
                     retry_after_ms=1)  # fmt: skip
    with pytest.warns(ProviderUnavailableWarning), pytest.warns(KeptStateWarning) as seen:
        out = run(provider_patience=0.5)
    assert out.get_column("_status").to_list() == ["pending"] * 4
    kept = [p for p in scratch.iterdir() if p.name.startswith("batchata-df-")]
    assert len(kept) == 1 and kept[0].is_dir()
    [warning] = [w for w in seen if w.category is KeptStateWarning]
    assert warning.message.folder == str(kept[0])  # type: ignore[union-attr]

    emu.clear_faults()
    out = run(state=kept[0])
    assert out.get_column("_status").to_list() == ["completed"] * 4
    billed = [e["request"] for e in emu.billing()]
    assert len(billed) == 4 and len(set(billed)) == 4, billed  # the first batch, once
    assert len({e["batch_id"] for e in emu.billing()}) == 1
