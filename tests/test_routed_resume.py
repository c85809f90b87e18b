"""A run of a routed Gemini model resumed after its routing date is finished, not failed.

Google routes gemini-2.5-flash to gemini-3.5-flash-lite from 2026-12-01
(``models.SCHEDULED``, ``"routed"``): a request to it is still answered, by the
successor, at its prices. A state folder started before the date held rows not sent yet
(the cap, a time limit, a crash); called again after it, those rows failed as data ("use
'gemini-3.5-flash-lite' instead"), and naming the successor was refused by the folder
(another model: ``StateMismatchError``), so the run could not be finished in its folder.
Now they are sent, answered and priced by the successor, with a warning that says so; a
fresh folder still refuses the routed model (choose the successor there).
"""

from __future__ import annotations

import datetime as dt
import warnings

import polars as pl
import pytest

from batchata_df import batch_llm, sql
from batchata_df.errors import ModelError, ModelShutdownWarning
from batchata_df.state import spent_usd

OLD, NEW = "gemini-2.5-flash", "gemini-3.5-flash-lite"
ROWS = pl.DataFrame({"text": [f"row {i}: " + "lorem ipsum " * 100 for i in range(6)]})
KW = {"prompt": "{text}", "progress": False, "params": {"max_tokens": 3000}}


def _frame(out: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """A call's output as a frame (a streamed call, ``sink=``, returns a scan of it)."""
    return out.collect() if isinstance(out, pl.LazyFrame) else out


def _started_before_the_date(on, state: str, sink: str | None = None) -> pl.DataFrame:
    """Some rows answered by gemini-2.5-flash on 2026-11-30, the rest held back by the cap."""
    on("2026-11-30")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shutdown warning; the cap's cancelled rows
        out = ROWS.pipe(batch_llm, model=OLD, state=state, max_cost_usd=0.004, sink=sink, **KW)
    return _frame(out)


def _pro_started_before_the_date(on, state: str) -> pl.DataFrame:
    """Some rows answered by gemini-2.5-pro on 2026-11-30, the rest held back by the cap."""
    on("2026-11-30")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shutdown warning; the cap's cancelled rows
        return ROWS.pipe(batch_llm, model="gemini-2.5-pro", state=state, max_cost_usd=0.04, **KW)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_routed_models_rows_not_sent_before_the_date_are_sent_and_answered_by_the_successor(
    on, emu, tmp_path, streamed
) -> None:
    state = str(tmp_path / "s")
    sink = str(tmp_path / "out.parquet") if streamed else None
    first = _started_before_the_date(on, state, sink)
    sent = first.filter(pl.col("_status") == "completed").height
    assert 0 < sent < ROWS.height, first.select("_status", "_error").to_dicts()
    assert set(first.filter(pl.col("_status") != "completed")["_error"]) == {
        "cancelled: cost_limit"}  # fmt: skip
    on("2026-12-01")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ROWS.pipe(batch_llm, model=OLD, state=state, sink=sink, **KW)
    out = _frame(out)
    assert out["_status"].to_list() == ["completed"] * ROWS.height, out["_error"].to_list()
    said = [str(w.message) for w in caught if w.category is ModelShutdownWarning]
    assert len(said) == 1, said
    assert said[0].startswith(f"model '{OLD}' was retired by Gemini on 2026-12-01 and its "
                              f"requests are answered by '{NEW}' instead")  # fmt: skip
    # Each row answered once: by 2.5 Flash before the date, by its successor after.
    bills = emu.billing(usd=True)
    assert sorted(b["custom_id"] for b in bills) == sorted(out["_job_id"].to_list())
    assert sorted(b["model"] for b in bills) == sorted([OLD] * sent + [NEW] * (6 - sent))
    by = sql("SELECT job_id, answered_by, cost_usd FROM jobs", state)
    assert by["answered_by"].null_count() == sent
    assert set(by["answered_by"].drop_nulls()) == {NEW}
    paid = {b["custom_id"]: float(b["usd"]) for b in bills}  # type: ignore[arg-type]
    for job_id, cost in zip(out["_job_id"], out["_cost_usd"], strict=True):
        assert cost == pytest.approx(paid[job_id], rel=1e-9), job_id
    assert spent_usd(state) == pytest.approx(sum(paid.values()), rel=1e-9)


def test_a_fresh_folder_still_refuses_the_routed_model_naming_its_successor(
    on, emu, tmp_path
) -> None:
    on("2026-12-01")
    with pytest.raises(ModelError, match=f"use '{NEW}' instead"):
        ROWS.pipe(batch_llm, model=OLD, state=str(tmp_path / "s"), **KW)
    assert emu.billing() == []


@pytest.mark.parametrize("streamed", [False, True])
def test_a_finished_folder_read_after_the_date_sends_nothing_and_says_nothing(
    on, emu, tmp_path, streamed
) -> None:
    # Every row answered before the date: reading the folder again after it sends nothing,
    # so the warning that its unsent rows are sent to the successor would be false (and
    # an error under -W error, where reading a finished folder raised before this fix).
    state = str(tmp_path / "s")
    sink = str(tmp_path / "out.parquet") if streamed else None
    on("2026-11-30")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shutdown warning
        first = ROWS.pipe(batch_llm, model=OLD, state=state, sink=sink, **KW)
    first = _frame(first)
    assert first["_status"].to_list() == ["completed"] * ROWS.height
    paid = len(emu.billing())
    on("2026-12-01")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the thinking-room advice
        warnings.simplefilter("error", ModelShutdownWarning)
        out = ROWS.pipe(batch_llm, model=OLD, state=state, sink=sink, **KW)
    out = _frame(out)
    assert out["_status"].to_list() == ["completed"] * ROWS.height
    assert len(emu.billing()) == paid


@pytest.mark.parametrize("streamed", [False, True])
def test_a_folder_holding_no_row_of_the_routed_model_refuses_it_as_a_fresh_one(
    on, emu, tmp_path, streamed
) -> None:
    # The folder exists (a run of another model of the same per-row expression), but none
    # of its rows is gemini-2.5-flash's: nothing of it to finish, so naming it after the
    # date is refused as on a fresh folder (a streamed call too: it reads the folder for
    # the rows it holds, not for the rows it would send).
    state = str(tmp_path / "s")
    sink = str(tmp_path / "out.parquet") if streamed else None
    model = (
        pl.when(pl.col("text").str.starts_with("row 0:"))
        .then(pl.lit("gemini-3.5-flash"))
        .otherwise(pl.lit(OLD))
    )
    on("2026-11-30")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the thinking-room advice
        first = ROWS.head(1).pipe(batch_llm, model=model, state=state, sink=sink, **KW)
    first = _frame(first)
    assert first["_status"].to_list() == ["completed"]
    paid = len(emu.billing())
    on("2026-12-01")
    with pytest.raises(ModelError, match=f"use '{NEW}' instead"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _frame(ROWS.pipe(batch_llm, model=model, state=state, sink=sink, **KW))
    assert len(emu.billing()) == paid


def test_a_model_whose_requests_fail_once_retired_still_fails_its_unsent_rows_as_data(
    on, emu, tmp_path
) -> None:
    # gpt-5-nano is shut down on 2026-12-11 and not routed (models.SCHEDULED, "fail"): on
    # a folder started the day before, its rows not sent yet fail as data after the date,
    # never sent; only a routed model's are sent (models.routed_successor).
    state = str(tmp_path / "s")
    kw = {**KW, "model": "gpt-5-nano", "state": state}
    on("2026-12-10")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shutdown warning; the cap's cancelled rows
        first = ROWS.pipe(batch_llm, max_cost_usd=0.0015, **kw)  # type: ignore[arg-type]
    sent = first.filter(pl.col("_status") == "completed").height
    assert 0 < sent < ROWS.height, first.select("_status", "_error").to_dicts()
    on("2026-12-11")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ROWS.pipe(batch_llm, **kw)  # type: ignore[arg-type]
    assert out["_status"].to_list().count("completed") == sent
    failed = out.filter(pl.col("_status") == "failed")["_error"].to_list()
    assert len(failed) == ROWS.height - sent
    assert all("was retired by OpenAI on 2026-12-11" in e for e in failed), failed
    assert len(emu.billing()) == sent


@pytest.mark.parametrize("streamed", [False, True])
def test_retry_failed_finishes_a_routed_run_whose_every_row_failed_before_the_date(
    on, emu, tmp_path, streamed
) -> None:
    # Every row failed before the date (here: thinking took all of max_tokens, billed).
    # The folder holds them: retry_failed=True after the date sends them again, answered
    # by the successor, as for rows never sent. It was refused as a fresh folder
    # (ModelError "use 'gemini-3.5-flash-lite' instead", where naming it is another run:
    # StateMismatchError), since retry_failed does not count failed rows as the folder's.
    state = str(tmp_path / "s")
    sink = str(tmp_path / "out.parquet") if streamed else None
    kw = {"prompt": "{text}", "progress": False, "params": {"max_tokens": 20}, "model": OLD,
          "state": state, "sink": sink}  # fmt: skip
    on("2026-11-30")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shutdown and thinking-room warnings
        first = ROWS.pipe(batch_llm, **kw)  # type: ignore[arg-type]
    first = _frame(first)
    assert first["_status"].to_list() == ["failed"] * ROWS.height
    assert all(e.startswith("truncated: thinking used") for e in first["_error"])
    on("2026-12-01")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ROWS.pipe(batch_llm, retry_failed=True, **kw)  # type: ignore[arg-type]
    out = _frame(out)
    said = [str(w.message) for w in caught if w.category is ModelShutdownWarning]
    assert len(said) == 1 and f"answered by '{NEW}' instead" in said[0], said
    bills = emu.billing(usd=True)
    assert sorted(b["model"] for b in bills) == [OLD] * ROWS.height + [NEW] * ROWS.height
    assert sorted(b["custom_id"] for b in bills if b["model"] == NEW) == sorted(out["_job_id"])
    assert spent_usd(state) == pytest.approx(
        sum(float(b["usd"]) for b in bills), rel=1e-9)  # type: ignore[arg-type]  # fmt: skip


def test_status_after_the_date_says_what_the_next_call_does_with_the_rows_never_sent(
    on, emu, tmp_path
) -> None:
    # `batchata-df status` said "rows never sent fail unsent" for a routed model, while
    # the next call on the folder sends them, answered by the successor.
    from click.testing import CliRunner

    from batchata_df.cli import cli

    state = str(tmp_path / "s")
    first = _started_before_the_date(on, state)
    sent = first.filter(pl.col("_status") == "completed").height
    assert 0 < sent < ROWS.height
    on("2026-12-01")
    shown = CliRunner().invoke(cli, ["status", state])
    assert shown.exit_code == 0, shown.output
    assert "rows never sent fail unsent" not in shown.output, shown.output
    assert (
        f"rows never sent are sent by the next call with this folder, answered by '{NEW}'"
    ) in shown.output, shown.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the routed resume's warning: tested above
        out = ROWS.pipe(batch_llm, model=OLD, state=state, **KW)  # type: ignore[arg-type]
    assert out["_status"].to_list() == ["completed"] * ROWS.height
    assert sorted(b["model"] for b in emu.billing()) == sorted(
        [OLD] * sent + [NEW] * (ROWS.height - sent))  # fmt: skip


@pytest.mark.parametrize("streamed", [False, True])
def test_a_dry_run_on_a_resumed_routed_folder_says_the_rows_would_be_sent(
    on, emu, tmp_path, streamed
) -> None:
    state = str(tmp_path / "s")
    sink = str(tmp_path / "out.parquet") if streamed else None
    _started_before_the_date(on, state, sink)
    paid = len(emu.billing())
    on("2026-12-01")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ROWS.pipe(batch_llm, model=OLD, state=state, sink=sink, dry_run=True, **KW)
    said = [str(w.message) for w in caught if w.category is ModelShutdownWarning]
    assert len(said) == 1 and "would be sent (this is a dry run)" in said[0], said
    assert "are sent now" not in said[0]
    assert len(emu.billing()) == paid  # nothing sent


def test_a_resumed_routed_folders_expected_cost_is_the_successors(on, emu, tmp_path) -> None:
    # gemini-2.5-pro is answered by gemini-3.8-flash from 2026-12-01, at 0.375 / 1.875 USD
    # per million input / output tokens (batch) against 2.5 Pro's 0.625 / 5.0: the
    # expected cost of its rows sent after the date was at 2.5 Pro's, ~2.5x the bill.
    # (The worst case, what the cap reserves, is the higher of the two: unchanged.)
    from batchata_df.cost import PriceTable

    pro, flash = "gemini-2.5-pro", "gemini-3.8-flash"
    state = str(tmp_path / "s")
    first = _pro_started_before_the_date(on, state)
    sent = first.filter(pl.col("_status") == "completed").height
    assert 0 < sent < ROWS.height, first.select("_status", "_error").to_dicts()
    plans = {}
    for day in ("2026-11-30", "2026-12-01"):
        on(day)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = ROWS.pipe(batch_llm, model=pro, state=state, dry_run=True, **KW)
        plans[day] = plan.filter(pl.col("_status") == "planned")
    assert plans["2026-12-01"].height == ROWS.height - sent
    before, after = (PriceTable().get("gemini", m, dt.date(2026, 11, 30)) for m in (pro, flash))
    assert before is not None and after is not None
    cols = ("_est_output_tokens_expected", "_expected_cost_usd")
    for (out, then), (out_now, now) in zip(
        plans["2026-11-30"].select(cols).iter_rows(),
        plans["2026-12-01"].select(cols).iter_rows(),
        strict=True,
    ):
        # The expected input (the estimate scaled by what the answered rows were billed)
        # read back from the day before's figure, at 2.5 Pro's rates; the same tokens
        # after the date at 3.8 Flash's (both think: the same expected output).
        expected_in = round((then * 1e6 - out * before.output) / before.input)
        assert out_now == out and expected_in > 0
        assert now == pytest.approx((expected_in * after.input + out * after.output) / 1e6)
        assert then / now > 2.4  # 2.5 Pro's expectation was ~2.6x the successor's
    # The worst case is the same both days (2.5 Pro's rates are the higher).
    assert plans["2026-12-01"]["_est_cost_usd"].to_list() == pytest.approx(
        plans["2026-11-30"]["_est_cost_usd"].to_list()
    )


def test_a_resumed_routed_folders_expected_input_is_not_scaled_by_the_old_models_counts(
    on, emu, tmp_path
) -> None:
    # The expected input is the offline estimate scaled by what the folder's answers were
    # billed (estimates.input_ratio). gemini-2.5-flash counts a small image at 258 tokens,
    # its successor gemini-3.5-flash-lite at 1,120 (tokens.image_tokens): scaled by 2.5
    # Flash's answers against the successor's count, the rows the successor answers from
    # 2026-12-01 were expected at ~261 input tokens each, billed 1,123 (7.2e-05 against
    # 2.0e-04 USD a row with only 2.5 Flash's answers in the folder; 1.04e-04 here, where
    # two of the successor's are too). Each answer now counts against its own model's count.
    from PIL import Image

    from batchata_df.estimates import MIN_OBSERVED

    img = tmp_path / "small.png"
    Image.new("RGB", (300, 300), (10, 20, 30)).save(img)
    rows = pl.DataFrame({"text": [f"row {i}" for i in range(10)], "file": [str(img)] * 10})
    kw = {"model": OLD, "prompt": "Describe: {text}", "files": "file", "progress": False,
          "params": {"max_tokens": 50, "reasoning_effort": "none"}}  # fmt: skip
    state = str(tmp_path / "s")

    def plan() -> pl.DataFrame:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the shutdown / routed resume warning
            out = rows.pipe(batch_llm, state=state, dry_run=True, **kw)
        return out.filter(pl.col("_status") == "planned")

    def run(cap: float) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # as above; the cap's cancelled rows
            rows.pipe(batch_llm, state=state, max_cost_usd=cap, **kw)

    on("2026-11-28")  # its 48 h window ends before the routing date: 2.5 Flash answers
    run(float(plan()["_est_cost_usd"][0]) * 4.5)
    old = len(emu.billing())
    assert MIN_OBSERVED <= old <= rows.height - 4 and {b["model"] for b in emu.billing()} == {OLD}
    on("2026-12-01")  # two more rows, answered by the successor
    run(spent_usd(state) + float(plan()["_est_cost_usd"][0]) * 2.5)
    paid = len(emu.billing())
    assert paid == old + 2 and emu.billing()[-1]["model"] == NEW
    expected = plan()["_expected_cost_usd"].to_list()
    run(1.0)
    bills = emu.billing(usd=True)[paid:]
    assert len(expected) == len(bills) == rows.height - paid >= 2
    assert {b["model"] for b in bills} == {NEW}
    for usd, bill in zip(expected, bills, strict=True):
        assert usd == pytest.approx(float(bill["usd"]), rel=0.1)  # type: ignore[arg-type]


def test_a_resumed_routed_folders_expected_cost_is_the_successors_price_of_today(
    on, emu, tmp_path
) -> None:
    # gemini-3.8-flash's price doubles on 2027-01-01 (genai-prices). A dry run of a
    # resumed gemini-2.5-pro folder on 2026-12-31 expects its rows at 3.8 Flash's price of
    # that day (its batch may run into the rise: that is the worst case's), doubled from
    # 2027-01-01.
    state = str(tmp_path / "s")
    _pro_started_before_the_date(on, state)
    expected, worst = {}, {}
    for day in ("2026-12-01", "2026-12-02", "2026-12-31", "2027-01-01"):
        on(day)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the routed resume's warning
            plan = ROWS.pipe(batch_llm, model="gemini-2.5-pro", state=state, dry_run=True, **KW)
        planned = plan.filter(pl.col("_status") == "planned")
        assert planned.height > 0
        expected[day] = planned["_expected_cost_usd"].sum()
        worst[day] = planned["_est_cost_usd"].sum()
    assert expected["2026-12-31"] == pytest.approx(expected["2026-12-01"])
    assert expected["2026-12-02"] == pytest.approx(expected["2026-12-01"])
    assert expected["2027-01-01"] == pytest.approx(2 * expected["2026-12-31"])
    # Sent after the routing date's day, 3.8 Flash alone is reserved: its window from
    # 12-31 reaches the rise, from 12-02 it does not.
    assert worst["2026-12-31"] > worst["2026-12-02"]


def test_a_cap_reserves_a_routed_models_rows_at_the_successor_only_from_the_day_after(
    on, emu, tmp_path
) -> None:
    # From 2026-12-02 a request sent to gemini-2.5-pro can only run after Google's routing
    # date, so only gemini-3.8-flash answers it: the cap reserved it at 2.5 Pro's rates too
    # (~0.0152 USD a row at 3,000 output tokens against 3.8 Flash's ~0.0058), so a resumed
    # folder's rows went one batch at a time (a day's turnaround each) under a cap they all
    # fit in. On 2026-12-01 itself both still count (when in the day Google switches is not
    # known).
    from batchata_df.cost import PriceTable

    pro, flash = "gemini-2.5-pro", "gemini-3.8-flash"
    state = str(tmp_path / "s")
    first = _pro_started_before_the_date(on, state)
    left = first.filter(pl.col("_status") != "completed").height
    assert 0 < left < ROWS.height
    flash_price = PriceTable().get("gemini", flash)
    assert flash_price is not None
    per_row = (400 * flash_price.input + 3000 * flash_price.output) / 1e6  # > its worst case
    cap = spent_usd(state) + left * per_row * 1.1
    on("2026-12-02")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the routed resume warning
        out = ROWS.pipe(batch_llm, model=pro, state=state, max_cost_usd=cap, **KW)
    assert out["_status"].to_list() == ["completed"] * ROWS.height, out["_error"].to_list()
    bills = emu.billing(usd=True)
    after = [b for b in bills if b["model"] == flash]
    assert len(after) == left
    assert len({b["batch_id"] for b in after}) == 1  # all of them in one batch
    assert sum(float(b["usd"]) for b in bills) <= cap  # type: ignore[arg-type]
