"""One frame, a model per row: jobs are grouped into provider batches per provider and model."""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import BaseModel

from batchata_df import batch_llm


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    rating: int
    tags: list[str]


def test_model_per_row_across_every_provider(emu, tmp_path):
    models = ["gpt-4.1-mini", "claude-haiku-4-5", "gemini-2.5-flash", "gpt-4.1"]
    df = pl.DataFrame({
        "text": [f"review {i}" for i in range(12)],
        "model": [models[i % len(models)] for i in range(12)],
    })
    out = df.pipe(batch_llm, schema=Review, model=pl.col("model"), prompt="{text}",
                  state=tmp_path / "mixed")
    assert out["_status"].to_list() == ["completed"] * 12
    assert out["text"].to_list() == df["text"].to_list()
    # One provider batch per (provider, model).
    per_model = out.group_by("model").agg(pl.col("_batch_id").n_unique())
    assert per_model["_batch_id"].to_list() == [1, 1, 1, 1]
    assert out["_batch_id"].n_unique() == 4
    ids = out["_batch_id"].to_list()
    assert ids[0].startswith("batch_")          # OpenAI
    assert ids[1].startswith("msgbatch_")       # Anthropic
    assert ids[2].startswith("batches/")        # Gemini
    paths = {e["path"].split("/")[1] for e in emu.log() if e["method"] == "POST"}
    assert {"openai", "anthropic", "gemini"} <= paths
    assert (out["_cost_usd"] > 0).all()
    # Resume: nothing is sent again to any provider.
    before = len([e for e in emu.log() if e["method"] == "POST"])
    again = df.pipe(batch_llm, schema=Review, model=pl.col("model"), prompt="{text}",
                    state=tmp_path / "mixed")
    assert again.equals(out)
    assert len([e for e in emu.log() if e["method"] == "POST"]) == before


def test_a_model_column_null_on_some_rows_fails_those_rows_and_sends_the_rest(emu, tmp_path):
    """A per-row model that is null on some rows: those rows fail without being sent, the
    others go to their providers (the run's provider list leaves the nulls out: without
    that, sorting it raised `TypeError` before anything was sent; persist review)."""
    df = pl.DataFrame({
        "text": [f"review {i}" for i in range(6)],
        "model": ["gpt-4.1-mini", None, "claude-haiku-4-5", None, "gpt-4.1-mini",
                  "claude-haiku-4-5"],
    })
    out = df.pipe(batch_llm, schema=Review, model=pl.col("model"), prompt="{text}",
                  state=tmp_path / "nulls")
    assert out["text"].to_list() == df["text"].to_list()
    assert out["_status"].to_list() == ["completed", "failed", "completed", "failed",
                                        "completed", "completed"]
    assert out["_batch_id"].null_count() == 2 and out["_cost_usd"][[1, 3]].to_list() == [0.0, 0.0]
    unsent = "input: the model expression gave null for this row"
    assert out["_error"][[1, 3]].to_list() == [unsent, unsent]
    billed = [e["custom_id"] for e in emu.billing()]
    assert sorted(billed) == sorted(out["_job_id"][[0, 2, 4, 5]].to_list())
