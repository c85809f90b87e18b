"""Estimates people can plan with: expected cost beside the worst case, and cap advice.

The dry run and the progress display show the hard worst case (what the cap reserves) and
an expected cost: from the schema's answer size, then from the answers observed in the
state folder. When the cap serialises a run, the call says so (a warning and a display
line) with a ``max_tokens`` the observed answers fit. The cap itself never moves: spend
stays under it, also with prompt-cache writes billed above the input rate.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import CapSerialisedWarning, batch_llm, sql
from batchata_df.cost import PriceTable
from batchata_df.estimates import answer_tokens
from batchata_df.progress import cap_line, format_line, usd


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    score: int
    summary: str


def reviews(n: int) -> pl.DataFrame:
    return pl.DataFrame({"text": [f"Review number {i}: the product was fine, mostly." for i in
                                  range(n)]})  # fmt: skip


KW: dict[str, Any] = {"schema": Review, "model": "gpt-4.1-mini", "prompt": "Rate: {text}"}
PRICE = PriceTable().get("openai", "gpt-4.1-mini")


def test_dry_run_shows_the_expected_cost_from_the_schema_beside_the_worst_case(
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan = reviews(20).pipe(batch_llm, dry_run=True, progress=True, **KW)
    schema = {
        "type": "object",
        "properties": {
            "sentiment": {"enum": ["positive", "negative", "neutral"]},
            "score": {"type": "integer"},
            "summary": {"type": "string"},
        },
    }
    expected_out = answer_tokens(schema)  # 2 + (2+2+3) + (2+1+3) + (2+1+12) = 30
    assert expected_out == 30
    assert plan["_est_output_tokens_expected"].to_list() == [expected_out] * 20
    assert PRICE is not None
    for est_in, worst, expected in plan.select(
        "_est_input_tokens", "_est_cost_usd", "_expected_cost_usd"
    ).iter_rows():
        # OpenAI may bill a prompt as a cache write unasked: the worst case takes the higher
        # rate; the expected case the input rate.
        assert worst == pytest.approx((est_in * PRICE.input + 4096 * PRICE.output) / 1e6)
        assert expected == pytest.approx((est_in * PRICE.input + 30 * PRICE.output) / 1e6)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    total = plan["_expected_cost_usd"].sum()
    assert f"expected {usd(total)} (answer sizes: schema)" in text  # progress.usd
    assert f"worst case {usd(plan['_est_cost_usd'].sum())}" in text


def test_a_streamed_dry_run_shows_the_expected_cost_as_the_in_memory_one_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``sink=`` (and so the CLI's ``--dry-run``) printed only the worst case: no expected
    cost, and under a cap that serialises the run no word that it is expected to fit."""
    frame = reviews(20)
    args: dict[str, Any] = {**KW, "dry_run": True, "progress": True, "max_cost_usd": 0.02}
    frame.pipe(batch_llm, **args)
    in_memory = capsys.readouterr()
    plan = batch_llm(
        frame.lazy(), sink=tmp_path / "out.parquet", state=tmp_path / "s", **args
    ).collect()
    streamed = capsys.readouterr()
    total = plan["_expected_cost_usd"].sum()
    line = f"expected {usd(total)} (answer sizes: schema)"
    assert line in in_memory.out + in_memory.err
    assert line in streamed.out + streamed.err
    assert "the expected cost fits the cap" in streamed.out + streamed.err


def test_observed_answers_replace_the_schema_guess_and_predict_the_next_run(
    emu, tmp_path: Path
) -> None:
    state = tmp_path / "s"
    frame = reviews(60)
    sample = frame.head(10).pipe(batch_llm, state=state, **KW)  # a sample first
    observed_mean = sample["_output_tokens"].mean()
    plan = frame.pipe(batch_llm, dry_run=True, state=state, **KW)
    todo = plan.filter(pl.col("_status") == "planned")
    assert todo.height == 50
    assert todo["_est_output_tokens_expected"].to_list() == [round(observed_mean)] * 50  # type: ignore[arg-type]
    out = frame.pipe(batch_llm, state=state, **KW)
    actual = out.tail(50)["_cost_usd"].sum()
    expected = todo["_expected_cost_usd"].sum()
    worst = todo["_est_cost_usd"].sum()
    # The expected cost is close to what was paid; the worst case is a bound far above it.
    assert expected == pytest.approx(actual, rel=0.15)
    assert worst > 20 * actual


def test_cap_serialising_the_run_is_reported_with_a_max_tokens_that_fits(
    emu, tmp_path: Path
) -> None:
    state = tmp_path / "s"
    frame = reviews(40)
    frame.head(10).pipe(batch_llm, state=state, **KW)  # answers to learn from
    plan = frame.pipe(batch_llm, dry_run=True, state=state, **KW)
    worst_one = float(plan["_est_cost_usd"].max())  # type: ignore[arg-type]
    spent = sql("SELECT sum(cost_usd) AS c FROM jobs", state)["c"].item()
    cap = spent + 8.5 * worst_one + plan["_expected_cost_usd"].sum()  # 8 worst cases at once
    # The dry run says it: serialised, with advice from the observed answers.
    summary: list[Any] = []
    import batchata_df.progress as progress_module
    from batchata_df.progress import plan_text

    class Capture:
        def show_plan(self, p: Any) -> None:
            summary.append(p)

    original = progress_module.make_display
    progress_module.make_display = lambda **_: Capture()  # type: ignore[assignment,misc]
    try:
        frame.pipe(batch_llm, dry_run=True, state=state, max_cost_usd=cap, progress=True,
                   items_per_batch=4, **KW)  # fmt: skip
    finally:
        progress_module.make_display = original
    text = plan_text(summary[0])
    assert "serialises the run: at the worst case only 8 of 30 requests fit at once" in text
    assert "about 4 rounds instead of 1" in text
    longest = sql("SELECT max(output_tokens) AS m FROM jobs", state)["m"].item()
    suggested = max(64, math.ceil(longest * 1.25 / 64) * 64)
    assert f"params={{'max_tokens': {suggested}}} fits them with a 25% margin" in text
    # The real call: a warning saying by how much, the same advice, a display line, and
    # spend under the cap.
    snaps: list[Any] = []
    with pytest.warns(CapSerialisedWarning) as caught:
        out = frame.pipe(batch_llm, state=state, max_cost_usd=cap, items_per_batch=4,
                         progress=snaps.append, **KW)  # fmt: skip
    message = str(caught[0].message)
    assert "only 8 of 30 requests could be sent at once" in message
    assert f"params={{'max_tokens': {suggested}}} fits them" in message
    assert f"at max_tokens={suggested} all 30 requests of this call fit under the cap at once" \
        in message
    # The advice works: the same folder would refuse other params (StateMismatchError).
    assert "pass it with a new state= folder" in message
    assert message.count("gpt-4.1-mini") == 1  # one sentence lists the models
    # It points at this line (the caller's), not at batchata_df's or polars' code.
    assert caught[0].filename == __file__, caught[0].filename
    assert out["_status"].to_list() == ["completed"] * 40
    assert sql("SELECT sum(cost_usd) AS c FROM jobs", state)["c"].item() <= cap
    waiting = [s for s in snaps if s.cap_waiting]
    assert waiting, "the display never said the cap held requests back"
    assert cap_line(waiting[0]).startswith("cap serialises the run: ")
    assert "cap serialises the run" in format_line(waiting[0], max_cost_usd=cap)
    running = [s for s in snaps if s.phase == "running"]
    assert running[0].worst_case_usd == pytest.approx(plan.tail(30)["_est_cost_usd"].sum())
    assert running[0].expected_cost_usd == pytest.approx(
        plan.tail(30)["_expected_cost_usd"].sum()
    )
    assert "worst case" in format_line(running[0]) or running[0].expected_cost_usd


THINKING: dict[str, Any] = {"schema": Review, "model": "gemini-2.5-pro", "prompt": "Rate: {text}",
                            "params": {"max_tokens": 4096, "reasoning_effort": "low"},
                            "items_per_batch": 2}  # fmt: skip


def test_a_streamed_run_the_cap_serialised_warns_as_an_in_memory_one_does(
    emu, tmp_path: Path
) -> None:
    """sink= (and so the CLI's run) says the cap serialised it, with the same advice."""
    frame = reviews(6)
    plan = frame.pipe(batch_llm, dry_run=True, **THINKING)
    cap = float(plan["_est_cost_usd"].head(2).sum()) + 1e-9  # two worst cases at once
    with pytest.warns(CapSerialisedWarning) as in_memory:
        frame.pipe(batch_llm, state=tmp_path / "m", max_cost_usd=cap, **THINKING)
    emu.reset()
    with pytest.warns(CapSerialisedWarning) as caught:
        # Chunks of 2 rows: the counts are added up chunk by chunk, no job table held.
        out = batch_llm(frame.lazy(), sink=tmp_path / "out.parquet", state=tmp_path / "s",
                        max_cost_usd=cap, chunk_rows=2, **THINKING).collect()  # fmt: skip
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "only 2 of 6 requests could be sent at once" in message
    longest = sql("SELECT max(output_tokens) AS m FROM jobs", tmp_path / "s")["m"].item()
    suggested = max(64, math.ceil(longest * 1.25 / 64) * 64)
    assert suggested < 4096
    assert f"gemini-2.5-pro used at most {longest:,} output tokens" in message
    assert "of max_tokens=4,096" in message
    assert (
        f"at max_tokens={suggested} all 6 requests of this call fit under the cap at once"
        in message
    )
    assert f"params={{'max_tokens': {suggested}}} fits them with a 25% margin" in message
    # The same words as the in-memory call's (the emulator answers each prompt alike).
    assert message == str(in_memory[0].message)
    assert caught[0].filename == __file__, caught[0].filename
    # The cap counts what was spent: the last rows may not fit at all (as in memory).
    assert (out["_status"] == "completed").sum() >= 2
    assert sql("SELECT sum(cost_usd) AS c FROM jobs", tmp_path / "s")["c"].item() <= cap


def test_a_resumed_streamed_run_counts_only_the_rows_left_as_in_memory(emu, tmp_path: Path) -> None:
    """Rows a folder has answered already are not among "the requests" of the advice."""
    import shutil

    frame = reviews(8)
    frame.head(2).pipe(batch_llm, state=tmp_path / "m", **THINKING)
    shutil.copytree(tmp_path / "m", tmp_path / "s")
    plan = frame.pipe(batch_llm, dry_run=True, **THINKING)
    spent = sql("SELECT sum(cost_usd) AS c FROM jobs", tmp_path / "m")["c"].item()
    cap = spent + float(plan["_est_cost_usd"].head(2).sum()) + 1e-9  # two worst cases
    with pytest.warns(CapSerialisedWarning) as in_memory:
        frame.pipe(batch_llm, state=tmp_path / "m", max_cost_usd=cap, **THINKING)
    with pytest.warns(CapSerialisedWarning) as caught:
        batch_llm(frame.lazy(), sink=tmp_path / "out.parquet", state=tmp_path / "s",
                  max_cost_usd=cap, chunk_rows=3, **THINKING).collect()  # fmt: skip
    message = str(caught[0].message)
    assert "only 2 of 6 requests could be sent at once" in message
    assert "all 6 requests of this call fit under the cap at once" in message
    assert message == str(in_memory[0].message)


def test_a_streamed_run_the_cap_never_held_back_does_not_warn(emu, tmp_path: Path) -> None:
    frame = reviews(6)
    plan = frame.pipe(batch_llm, dry_run=True, **THINKING)
    cap = float(plan["_est_cost_usd"].sum()) * 2  # every request's worst case at once
    with warnings.catch_warnings():
        warnings.simplefilter("error", CapSerialisedWarning)
        out = batch_llm(frame.lazy(), sink=tmp_path / "out.parquet", state=tmp_path / "s",
                        max_cost_usd=cap, **THINKING).collect()  # fmt: skip
    assert out["_status"].to_list() == ["completed"] * 6


def test_a_streamed_run_warns_a_provider_down_before_the_cap_as_in_memory(
    emu, tmp_path: Path
) -> None:
    """Both warnings, in memory's order: under an error filter the rows a provider left
    unsent are what is raised (the cap's advice is not), and the sink is written."""
    from batchata_df import ProviderUnavailableWarning

    frame = reviews(8).with_row_index("i")
    kw: dict[str, Any] = {**THINKING, "items_per_batch": 1, "provider_patience": 0.3,
                          "model": pl.when(pl.col("i") >= 6).then(pl.lit("o4-mini"))
                          .otherwise(pl.lit("gemini-2.5-pro"))}  # fmt: skip
    plan = frame.pipe(batch_llm, dry_run=True, **kw)
    pro = plan.filter(pl.col("_model") == "gemini-2.5-pro")["_est_cost_usd"].max()
    cap = 3 * float(pro) + 1e-9  # type: ignore[arg-type]  # 3 of the 6 Pro rows at once
    emu.inject_fault(method="POST", path_regex=r"^/openai/v1/batches$", status=503,
                     times=None, retry_after_ms=1)  # fmt: skip
    expected = [ProviderUnavailableWarning, CapSerialisedWarning]
    with warnings.catch_warnings(record=True) as in_memory:
        warnings.simplefilter("always")
        frame.pipe(batch_llm, state=tmp_path / "m", max_cost_usd=cap, **kw)
    assert [w.category for w in in_memory] == expected
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch_llm(frame.lazy(), sink=tmp_path / "a.parquet", state=tmp_path / "a",
                  max_cost_usd=cap, chunk_rows=2, **kw).collect()  # fmt: skip
    assert [w.category for w in caught] == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ProviderUnavailableWarning, match="2 rows could not be sent"):
            batch_llm(frame.lazy(), sink=tmp_path / "b.parquet", state=tmp_path / "b",
                      max_cost_usd=cap, chunk_rows=2, **kw)  # fmt: skip
    out = pl.read_parquet(tmp_path / "b.parquet")
    assert out["_status"].to_list() == ["completed"] * 6 + ["cancelled"] * 2


DOC = "The supplier shall deliver the goods within thirty days of the order date. " * 150


def test_cache_writes_stay_inside_the_worst_case_and_the_cap(emu, tmp_path: Path) -> None:
    """A marked prefix may be billed as a cache write (1.25x input): the cap still holds."""
    frame = pl.DataFrame({"q": [f"Question {i}?" for i in range(8)]})
    # Sonnet 4.6 caches prefixes of 1,024 tokens and more (the shared DOC is above that).
    kw: dict[str, Any] = {"model": "claude-sonnet-4-6", "prompt": DOC + "\n{q}",
                          "params": {"max_tokens": 50}}  # fmt: skip
    plan = frame.pipe(batch_llm, dry_run=True, **kw)
    price = PriceTable().get("anthropic", "claude-sonnet-4-6")
    assert price is not None
    for est_in, worst in plan.select("_est_input_tokens", "_est_cost_usd").iter_rows():
        assert worst == pytest.approx((est_in * price.cache_write + 50 * price.output) / 1e6)  # type: ignore[operator]
    # Expected: the first request writes the shared prefix, the others read it.
    assert plan["_expected_cost_usd"].sum() < 0.5 * plan["_est_cost_usd"].sum()
    cap = float(plan["_est_cost_usd"].head(3).sum())  # three worst cases at once
    with pytest.warns(CapSerialisedWarning):
        out = frame.pipe(batch_llm, max_cost_usd=cap, items_per_batch=2, state=tmp_path / "s",
                         **kw)  # fmt: skip
    assert out["_status"].to_list() == ["completed"] * 8
    usage = sql("SELECT sum(cost_usd) AS c, sum(cache_write_tokens) AS w, "
                "sum(cached_tokens) AS r FROM jobs", tmp_path / "s")  # fmt: skip
    assert usage["c"].item() <= cap
    assert usage["w"].item() > 0 and usage["r"].item() > 0


def test_the_input_estimate_counts_the_schema_every_request_carries() -> None:
    # The JSON schema goes with every request (OpenAI's response_format): the worst case
    # counts its tokens on each row, beside the prompt's (frame._input_tokens).
    import json

    from pydantic import BaseModel

    from batchata_df.schema import AnswerSchema
    from batchata_df.tokens import estimate_tokens

    class Rated(BaseModel):
        summary: str
        score: float

    df = pl.DataFrame({"text": ["hello there", "a b c"]})
    kw = {"model": "gpt-5.4-mini", "prompt": "{text}", "dry_run": True, "progress": False}
    typed = df.pipe(batch_llm, schema=Rated, **kw)
    plain = df.pipe(batch_llm, schema=None, **kw)
    schema_json = json.dumps(AnswerSchema(Rated).json_schema)
    schema_tokens = int(estimate_tokens(pl.Series([schema_json]), "openai", "gpt-5.4-mini")[0])
    assert schema_tokens > 20
    diff = typed["_est_input_tokens"] - plain["_est_input_tokens"]
    assert diff.to_list() == [schema_tokens] * 2


def test_the_input_ratio_sets_each_answer_against_the_count_of_the_model_that_answered_it() -> None:
    # A routed folder holds answers of gemini-2.5-flash (a small image: 258 tokens) and of
    # its successor gemini-3.5-flash-lite (1,120). Against the asked model's count alone
    # the successor's answers made the ratio 2.55; each against its own count, 0.986.
    from batchata_df.estimates import Observed, input_ratio

    ids = [f"j{i}" for i in range(6)]
    succ = "gemini-3.5-flash-lite"
    observed = Observed(
        n=6, mean=30.0, p99=35, max=35, reasoning_max=0,
        inputs=pl.DataFrame({
            "job_id": ids, "input_tokens": [261] * 3 + [1123] * 3,
            "answered_by": [None] * 3 + [succ] * 3,
        }),
    )  # fmt: skip
    estimated = pl.DataFrame(
        {"job_id": ids, "est_input_tokens": [271] * 6, "est_input_tokens_successor": [1133] * 6}
    )
    assert input_ratio(observed, estimated, succ) == pytest.approx(4152 / 4212)
    assert input_ratio(observed, estimated, f"models/{succ}") == pytest.approx(4152 / 4212)
    # Not routed: the estimate asked for, as before.
    assert input_ratio(observed, estimated) == pytest.approx(4152 / 1626)


def test_without_a_schema_the_expected_answer_size_is_said_to_be_a_free_text_guess(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Free text has no schema to size it: 256 tokens (answer_tokens(None)), labelled as the
    # guess it is, not as "schema"; a model that thinks adds its thinking guess to it.
    plan = reviews(20).pipe(batch_llm, **{**KW, "schema": None}, dry_run=True, progress=True)
    assert plan["_est_output_tokens_expected"].to_list() == [answer_tokens(None)] * 20 == [256] * 20
    text = "".join(capsys.readouterr())
    total = plan["_expected_cost_usd"].sum()
    assert f"expected {usd(total)} (answer sizes: free-text guess)" in text
    assert "answer sizes: schema" not in text
    reviews(20).pipe(
        batch_llm, schema=None, model="gpt-5.4-mini", prompt="Rate: {text}", dry_run=True,
        progress=True, params={"reasoning_effort": "medium"},
    )  # fmt: skip
    assert "(answer sizes: free-text guess + thinking guess)" in "".join(capsys.readouterr())
