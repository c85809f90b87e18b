"""Shared by the tests of today's model rules: a small labelled call, and the request
body a model's defaults encode (``test_model_rules_today``, ``test_model_defaults_today``,
``test_anthropic_api_version``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel

from batchata_df import batch_llm
from batchata_df.models import effective_params


class Label(BaseModel):
    label: str


def rows(n: int = 2) -> pl.DataFrame:
    return pl.DataFrame({"text": [f"item {i}" for i in range(n)]})


def run(model: str, tmp_path: Path, **kw: Any) -> pl.DataFrame:
    """Two rows labelled by ``model`` through ``batch_llm``, state in ``tmp_path / "s"``."""
    return rows().pipe(
        batch_llm, schema=Label, model=model, prompt="Label {text}", state=tmp_path / "s", **kw
    )


def encoded(provider: str, model: str, params: dict[str, Any]) -> dict[str, Any]:
    """The request the client sends for ``model`` (defaults filled in as a run fills them)."""
    from batchata_df.providers import make_provider
    from batchata_df.providers.base import RequestSpec
    from batchata_df.schema import AnswerSchema

    jobs = pl.DataFrame({"job_id": ["j"], "model": [model], "prompt": ["hi"], "system": [None]},
                        schema={"job_id": pl.String, "model": pl.String, "prompt": pl.String,
                                "system": pl.String})  # fmt: skip
    spec = RequestSpec(AnswerSchema(Label), effective_params(provider, model, params))
    line = json.loads(make_provider(provider, offline=True).encode(jobs, spec)[0])
    return dict(line.get("body") or line.get("params") or line["request"])
