"""The library closes what it opens: nothing is left for the garbage collector to close.

The suite filters ``unclosed`` ResourceWarnings globally (pyproject.toml says why: as errors
they fired at random later moments and failed unrelated tests). These tests make the
library's own side deterministic instead: before a call every pending leak is collected,
during and after it every ResourceWarning is recorded (the global filter is overridden
inside ``catch_warnings``), and a full collection at the end surfaces whatever the call left
in reference cycles. A state part, manifest or sink file left open shows here as a warning
attributed to this test (checked: an ``open()`` without ``with`` in ``StateStore._write_part``
fails the OpenAI case). The official SDK clients close their connection pools in their own
finalizers without a warning, so an unclosed client cannot show here; the library closes
them explicitly anyway (``Provider.close``).
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm, sql
from batchata_df.compat import Batch


class Verdict(BaseModel):
    label: str
    score: float


@contextmanager
def no_resource_warnings() -> Iterator[None]:
    gc.collect()  # what earlier tests left behind is theirs, not ours
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    leaks = [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)]
    assert leaks == []


FRAME = pl.DataFrame({"text": ["good", "bad", "fine"]})


@pytest.mark.parametrize("model", ["gpt-4.1-mini", "claude-haiku-4-5", "gemini-2.5-flash"])
def test_a_run_and_its_resume_leave_nothing_open(emu, tmp_path: Path, model: str) -> None:
    state = tmp_path / "state"
    with no_resource_warnings():
        out = FRAME.pipe(batch_llm, schema=Verdict, model=model, prompt="Rate: {text}",
                         state=state, progress=False)
        again = FRAME.pipe(batch_llm, schema=Verdict, model=model, prompt="Rate: {text}",
                           state=state, progress=False)
    assert out["_status"].to_list() == ["completed"] * 3
    assert again["label"].to_list() == out["label"].to_list()


def test_a_streamed_run_to_a_sink_leaves_nothing_open(emu, tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    FRAME.write_parquet(source)
    sink = tmp_path / "out.parquet"
    with no_resource_warnings():
        lazy = batch_llm(pl.scan_parquet(source), schema=Verdict, model="gpt-4.1-mini",
                         prompt="Rate: {text}", state=tmp_path / "state", sink=sink,
                         chunk_rows=2, progress=False)
        got = lazy.collect()
    assert got["text"].to_list() == FRAME["text"].to_list()
    assert got["_status"].to_list() == ["completed"] * 3


def test_dry_runs_queries_and_the_compat_api_leave_nothing_open(emu, tmp_path: Path) -> None:
    state = tmp_path / "state"
    calls: list[Callable[[], object]] = [
        lambda: FRAME.pipe(batch_llm, schema=Verdict, model="gpt-4.1-mini", prompt="{text}",
                           state=state, dry_run=True, progress=False),
        lambda: FRAME.pipe(batch_llm, schema=Verdict, model="gpt-4.1-mini", prompt="{text}",
                           state=state, progress=False),
        lambda: sql("select status, count(*) as n from jobs group by status", state=state),
    ]
    with no_resource_warnings():
        plan, _, counts = (call() for call in calls)
        batch = Batch(results_dir=tmp_path / "compat").set_default_params(model="claude-haiku-4-5")
        batch.add_job(prompt="Rate: fine", response_model=Verdict)
        results = batch.run().results()
    assert isinstance(plan, pl.DataFrame) and plan.height == 3
    assert isinstance(counts, pl.DataFrame)
    assert counts.to_dicts() == [{"status": "completed", "n": 3}]
    assert len(results["completed"]) == 1
