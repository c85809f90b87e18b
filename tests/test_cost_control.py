"""Prices, estimates, dry run and the hard cost cap, end to end on the emulator."""

from __future__ import annotations

import math
import warnings
from typing import Literal

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import CapSerialisedWarning, PriceError, batch_llm


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    rating: int
    summary: str


def frame(n):
    return pl.DataFrame({"text": [f"review {i}: it arrived late but works" for i in range(n)]})


def test_dry_run_sends_nothing_and_plans_batches(emu, capsys):
    df = pl.concat([frame(10), frame(2)])  # two duplicates
    plan = df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}",
                   dry_run=True, items_per_batch=4, params={"max_tokens": 100})
    assert emu.log() == []
    assert plan.height == 12
    assert plan["_status"].to_list() == ["planned"] * 10 + ["duplicate"] * 2
    assert plan["_batch_index"].to_list()[:10] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert (plan["_est_output_tokens_max"].head(10) == 100).all()
    est_in = plan["_est_input_tokens"].head(10)
    assert (est_in > 10).all()
    expected = (est_in * 0.2 + 100 * 0.8) / 1e6  # gpt-4.1-mini batch prices
    assert (plan["_est_cost_usd"].head(10) - expected).abs().max() < 1e-12
    # Quiet without progress=True: the plan is the returned frame.
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_dry_run_summary_for_people(emu, capsys):
    df = pl.concat([frame(10), frame(2)])  # two duplicates
    df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}", dry_run=True,
            items_per_batch=4, params={"max_tokens": 100}, max_cost_usd=0.0004,
            progress=True)
    err = capsys.readouterr().err  # not a terminal here: plain text on standard error
    assert "dry run, nothing was sent. rows: 10 planned, 2 duplicate" in err
    assert "openai gpt-4.1-mini: 10 jobs in 3 batches" in err
    assert "10 requests would be sent in 3 provider batches, worst case $" in err
    assert "cap $0.0004: " in err and " of 10 requests fit at the worst case" in err
    assert "[(" not in err and "rows by status" not in err  # no Python reprs


def test_dry_run_summary_rich_table_in_a_terminal(emu, monkeypatch):
    import io

    from rich.console import Console

    from batchata_df import progress

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140, color_system=None)
    real = progress.make_display
    monkeypatch.setattr(progress, "make_display", lambda **kw: real(console=console, **kw))
    frame(5).pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}",
                  dry_run=True, max_cost_usd=1.0, progress=True)
    text = out.getvalue()
    assert "┃ provider" in text and "worst case USD" in text  # a table with a header
    assert "│ openai   │ gpt-4.1-mini │    5 │       1 │" in text
    assert "cap $1.00: everything fits" in text


def test_dry_run_estimate_bounds_actual_input_tokens(emu):
    df = frame(20)
    plan = df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}",
                   dry_run=True)
    out = df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}")
    assert (out["_cost_usd"] <= plan["_est_cost_usd"]).all()


def test_dry_run_needs_a_price(emu):
    with pytest.raises(PriceError, match="prices="):
        frame(2).pipe(batch_llm, model="openai:my-finetune", prompt="{text}", dry_run=True)
    plan = frame(2).pipe(batch_llm, model="openai:my-finetune", prompt="{text}",
                         dry_run=True, prices={"my-finetune": (1.0, 2.0)})
    assert plan["_est_cost_usd"].sum() > 0


def test_price_override_sets_cost(emu):
    out = frame(2).pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}",
                        prices={"gpt-4.1-mini": (10.0, 20.0)})
    expected = (out["_input_tokens"] * 10.0 + out["_output_tokens"] * 20.0) / 1e6
    assert (out["_cost_usd"] - expected).abs().max() < 1e-12


def test_cost_cap_is_never_exceeded(emu, tmp_path):
    df = frame(30)
    params = {"max_tokens": 200}
    kwargs = {"schema": Review, "model": "gpt-4.1-mini", "prompt": "{text}", "params": params,
              "items_per_batch": 8}
    full = df.pipe(batch_llm, state=tmp_path / "uncapped", **kwargs)
    cap = float(full["_cost_usd"].sum()) / 3  # the whole work costs 3x the cap
    emu.reset()
    # Batches of 8 under a cap that holds about one batch's worst case: the run is
    # serialised, and the call says so, with a max_tokens the answers fit.
    with pytest.warns(CapSerialisedWarning, match="serialised this run") as caught:
        out = df.pipe(batch_llm, max_cost_usd=cap, state=tmp_path / "s", **kwargs)
    longest = int(out["_output_tokens"].max())  # type: ignore[arg-type]
    suggested = max(64, math.ceil(longest * 1.25 / 64) * 64)
    message = str(caught[0].message)
    assert f"at most {longest:,} output tokens" in message
    assert f"params={{'max_tokens': {suggested}}}" in message
    assert out["_cost_usd"].sum() <= cap
    done = out.filter(pl.col("_status") == "completed").height
    cancelled = out.filter(pl.col("_status") == "cancelled")
    assert 0 < done < 30
    assert cancelled.height > 0
    assert cancelled["_error"].str.contains("cost_limit").all()
    assert done + cancelled.height == 30
    # What was sent never exceeded the cap even at its worst: requests whose worst case did
    # not fit were never submitted.
    sent = sum(int(e["path"].endswith("/batches")) for e in emu.log() if e["method"] == "POST")
    assert sent >= 1
    # Calling again does not spend the cap twice: the folder's earlier spend counts, so the
    # cancelled rows are tried again but cannot fit.
    emu.reset()
    again = df.pipe(batch_llm, max_cost_usd=cap, state=tmp_path / "s", **kwargs)
    assert again["_cost_usd"].sum() <= cap
    assert again["_status"].to_list() == out["_status"].to_list()
    assert not [e for e in emu.log() if e["method"] == "POST"]
    # Raising the cap sends exactly the rows that were cancelled, and nothing else.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CapSerialisedWarning)  # it may still serialise
        more = df.pipe(batch_llm, max_cost_usd=cap * 10, state=tmp_path / "s", **kwargs)
    assert more["_status"].to_list() == ["completed"] * 30
    assert more.filter(pl.col("_status") == "completed").height == 30


def test_cap_splits_a_batch_that_does_not_fit_whole(emu):
    df = frame(10)
    params = {"max_tokens": 100}
    plan = df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}",
                   dry_run=True, params=params)
    cap = float(plan["_est_cost_usd"].head(4).sum()) + 1e-9
    with pytest.warns(CapSerialisedWarning, match=r"only 4 of 10 requests could be sent"):
        out = df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}",
                      params=params, max_cost_usd=cap)
    # One batch of 10 did not fit: its first 4 went alone, then more as budget freed.
    first_batch = out["_batch_id"][0]
    assert (out["_batch_id"] == first_batch).sum() == 4
    assert out["_cost_usd"].sum() <= cap


def test_calibration_tightens_the_cap_when_estimates_run_low(emu, monkeypatch):
    import batchata_df.tokens as tokens

    df = pl.DataFrame({"text": [f"{i} " + "long input text " * 60 for i in range(16)]})
    params = {"max_tokens": 20}
    full = df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}",
                   params=params)
    per_job = float(full["_cost_usd"].mean())
    cap = per_job * 6.5
    # Estimates that are far too low: one input token per request.
    monkeypatch.setattr(tokens, "estimate_request_tokens",
                        lambda prompt, *a, **k: pl.Series(prompt.name, [1] * prompt.len()))
    emu.reset()
    out = df.pipe(batch_llm, schema=Review, model="gpt-4.1-mini", prompt="{text}",
                  params=params, max_cost_usd=cap, items_per_batch=2, max_parallel_batches=1)
    # Only the first batch was admitted on the bad estimate; from then on actual usage
    # calibrated the worst case and the cap held.
    assert out["_cost_usd"].sum() <= cap
    assert 2 <= (out["_status"] == "completed").sum() <= 6
    assert (out["_status"] == "cancelled").sum() >= 10


def test_dry_run_agrees_with_the_next_real_call(emu, tmp_path):
    df = frame(6)
    kwargs = {"schema": Review, "model": "gpt-4.1-mini", "prompt": "{text}",
              "state": tmp_path / "s", "params": {"max_tokens": 50}}
    plan = df.pipe(batch_llm, dry_run=True, **kwargs)
    tiny = float(plan["_est_cost_usd"].head(2).sum()) + 1e-9
    with pytest.warns(CapSerialisedWarning):  # 2 at a time, then more as budget frees
        first = df.pipe(batch_llm, max_cost_usd=tiny, **kwargs)
    assert (first["_status"] == "cancelled").sum() >= 1
    again = df.pipe(batch_llm, dry_run=True, max_cost_usd=1.0, **kwargs)
    # Cancelled rows are planned again, completed ones are done: like the real call.
    expected = ["done" if s == "completed" else "planned" for s in first["_status"]]
    assert again["_status"].to_list() == expected
    emu.reset()
    real = df.pipe(batch_llm, max_cost_usd=1.0, **kwargs)
    assert real["_status"].to_list() == ["completed"] * 6
    assert sum(1 for e in emu.log() if e["method"] == "POST" and e["path"].endswith("/batches")) \
        == again["_batch_index"].drop_nulls().n_unique()


def test_dry_run_marks_rows_in_flight(emu, tmp_path):
    emu.configure(latency=30)
    df = frame(3)
    kwargs = {"schema": Review, "model": "gpt-4.1-mini", "prompt": "{text}",
              "state": tmp_path / "s"}
    df.head(2).pipe(batch_llm, wait=False, **kwargs)
    plan = df.pipe(batch_llm, dry_run=True, **kwargs)
    assert plan["_status"].to_list() == ["in_flight", "in_flight", "planned"]
