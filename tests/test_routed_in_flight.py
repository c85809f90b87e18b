"""A routed model's batch caught in flight at the routing date: answered and billed by the
successor from then on, and priced so by the client.

Google routes gemini-2.5-flash to gemini-3.5-flash-lite and gemini-2.5-pro to
gemini-3.8-flash from 2026-12-01, "billed at the new model's rates" (the reads of
https://ai.google.dev/gemini-api/docs/deprecations cited in ``batchata_df.models.SCHEDULED``
and ``emulator.model_rules.SCHEDULED``). A batch sent on 2026-11-30 may run past the date
(its window is 48 h). Two gaps, both closed here:

1. the emulator answered every request of such a batch with the old model at its prices:
   now the requests it runs once ``today`` reached the date are answered by the successor
   (its ``modelVersion``, its rules, its prices in ``emu.billing()``); those run before
   keep the old model, as strict as Google (``EmulatorCore.routed_since``);
2. the client priced every Gemini result at the requested model: now at the model the
   response's ``modelVersion`` names (``_cost_usd``, the cap, the bill, the DuckDB views),
   recorded in the job events' ``answered_by``.
"""

from __future__ import annotations

import datetime as dt
import time
import warnings
from pathlib import Path

import polars as pl
import pytest
from google import genai

from batchata_df import batch_llm, sql
from batchata_df.cost import PriceTable
from batchata_df.emulator.pricing import billed_usd
from batchata_df.state import spent_usd

OLD, NEW = "gemini-2.5-flash", "gemini-3.5-flash-lite"
# The client's tests: 2.5 Pro and its successor differ in every rate (2.5 Flash and
# 3.5 Flash-Lite only in the cached one).
PRO, PRO_NEW = "gemini-2.5-pro", "gemini-3.8-flash"
ROWS = pl.DataFrame({"text": [f"row {i}: say something" for i in range(4)]})




def _src(n: int) -> list[dict[str, object]]:
    return [{"contents": [{"parts": [{"text": f"row {i}"}], "role": "user"}],
             "metadata": {"key": f"r{i}"}} for i in range(n)]  # fmt: skip


# -- 1. the emulator, through the official SDK ---------------------------------------------


@pytest.mark.parametrize(("model", "successor"), [(OLD, NEW), ("gemini-2.5-pro", PRO_NEW)])
def test_requests_run_after_the_routing_date_are_answered_and_billed_by_the_successor(
    emu, model, successor
) -> None:
    gem = genai.Client()
    # latency 60 s: the 4 requests finish at 19.5, 33, 46.5 and 60 s (10 % pending, then
    # evenly): one has run when the date comes at 30 s.
    emu.configure(latency=60.0, today="2026-11-30")
    job = gem.batches.create(model=model, src=_src(4))  # type: ignore[arg-type]
    emu.advance(30)
    emu.configure(today="2026-12-01")
    emu.advance(60)
    done = gem.batches.get(name=str(job.name))
    assert done.dest is not None and done.dest.inlined_responses
    seen = []
    for item in done.dest.inlined_responses:
        assert item.response is not None, item.error
        seen.append(item.response.model_version)
    assert seen == [model, successor, successor, successor]
    bills = emu.billing(usd=True)
    assert [(b["custom_id"], b["model"]) for b in bills] == [
        ("r0", model), ("r1", successor), ("r2", successor), ("r3", successor)]
    # Each at its answering model's batch price for the usage it was answered with.
    for item, bill in zip(done.dest.inlined_responses, bills, strict=True):
        assert item.response is not None and item.response.usage_metadata is not None
        use = item.response.usage_metadata
        assert bill["usd"] == pytest.approx(billed_usd(
            "gemini", str(bill["model"]), input_tokens=use.prompt_token_count or 0,
            output_tokens=(use.candidates_token_count or 0) + (use.thoughts_token_count or 0),
            cached_tokens=use.cached_content_token_count or 0), rel=1e-12)  # fmt: skip
        assert bill["usd"] > 0


def test_a_batch_finished_before_the_date_keeps_the_model_asked_for(emu) -> None:
    gem = genai.Client()
    emu.configure(latency=60.0, today="2026-11-30")
    job = gem.batches.create(model=OLD, src=_src(3))  # type: ignore[arg-type]
    emu.advance(61)  # done on 2026-11-30 ...
    emu.configure(today="2026-12-01")  # ... read on 2026-12-01
    done = gem.batches.get(name=str(job.name))
    assert done.dest is not None and done.dest.inlined_responses
    assert [r.response.model_version for r in done.dest.inlined_responses
            if r.response is not None] == [OLD] * 3  # fmt: skip
    assert [b["model"] for b in emu.billing()] == [OLD] * 3


def test_the_successors_rules_apply_to_the_requests_it_answers(emu) -> None:
    # Without a thinking config gemini-2.5-flash thinks dynamically and
    # gemini-3.5-flash-lite at its default level (model_rules.gemini_thoughts): the same
    # requests, answered under each model's rules, report each model's thinking.
    from batchata_df.emulator import model_rules

    gem = genai.Client()
    emu.configure(latency=60.0, today="2026-11-30")
    job = gem.batches.create(model=OLD, src=_src(4))  # type: ignore[arg-type]
    emu.advance(30)
    emu.configure(today="2026-12-01")
    emu.advance(60)
    done = gem.batches.get(name=str(job.name))
    assert done.dest is not None and done.dest.inlined_responses
    out = [(r.response.model_version, r.response.usage_metadata.thoughts_token_count or 0)
           for r in done.dest.inlined_responses
           if r.response is not None and r.response.usage_metadata is not None]  # fmt: skip
    old, new = model_rules.gemini_thoughts(OLD, {}), model_rules.gemini_thoughts(NEW, {})
    assert old != new
    assert out == [(OLD, old), (NEW, new), (NEW, new), (NEW, new)]


# What the successor's rules change for a request sent before the date. No parameter a
# 2.5 model takes is refused by its successor (model_rules.gemini_refusal: every
# thinkingBudget, thinkingLevel and maxOutputTokens the old model accepts, its successor
# accepts too; the output ceiling and context window are the same): the thinking rules
# differ the other way (2.5 Pro refuses a thinkingBudget under 128, 3.8 Flash takes a
# budget alone), and an image counts by the successor's generation (media.image_tokens).


def test_a_request_the_old_model_refused_is_answered_by_the_successor_once_routed(emu) -> None:
    # Each request is checked by the model that runs it: the one run before the date by
    # gemini-2.5-pro (its 400, unbilled), those run after by gemini-3.8-flash, which takes
    # the budget (answered, billed at its price).
    gem = genai.Client()
    emu.configure(latency=60.0, today="2026-11-30")
    src = [{**r, "config": {"thinking_config": {"thinking_budget": 64}}} for r in _src(4)]
    job = gem.batches.create(model=PRO, src=src)  # type: ignore[arg-type]
    emu.advance(30)  # r0 has run (refused by 2.5 Pro) ...
    emu.configure(today="2026-12-01")  # ... r1..r3 run on 3.8 Flash
    emu.advance(60)
    done = gem.batches.get(name=str(job.name))
    assert done.dest is not None and done.dest.inlined_responses
    first, *rest = done.dest.inlined_responses
    assert first.response is None and first.error is not None
    assert (first.error.code, first.error.message) == (
        400,
        "The thinking budget 64 is invalid. Please choose a value between 128 and 32768.",
    )
    assert [r.response.model_version for r in rest if r.response is not None] == [PRO_NEW] * 3
    bills = emu.billing(usd=True)
    # r0 failed: not billed.
    assert [(b["custom_id"], b["model"]) for b in bills] == [(f"r{i}", PRO_NEW) for i in (1, 2, 3)]
    for item, bill in zip(rest, bills, strict=True):
        assert item.response is not None and item.response.usage_metadata is not None
        use = item.response.usage_metadata
        assert bill["usd"] == pytest.approx(billed_usd(
            "gemini", PRO_NEW, input_tokens=use.prompt_token_count or 0,
            output_tokens=(use.candidates_token_count or 0) + (use.thoughts_token_count or 0),
            cached_tokens=use.cached_content_token_count or 0), rel=1e-12)  # fmt: skip
        assert bill["usd"] > 0


def test_an_image_in_a_routed_batch_counts_by_the_model_that_answered_it(on, emu, tmp_path) -> None:
    # A 300x300 image is 258 tokens on Gemini 2.5 and 1,120 on Gemini 3
    # (tokens.image_tokens); the rows the successor answered count it so, are billed so,
    # and cost what Google bills.
    from PIL import Image

    from batchata_df.tokens import image_tokens

    img = tmp_path / "small.png"
    Image.new("RGB", (300, 300), (10, 20, 30)).save(img)
    old_image, new_image = (image_tokens(300, 300, "gemini", m) for m in (OLD, NEW))
    assert (old_image, new_image) == (258, 1120)
    emu.configure(latency=60.0)
    on("2026-11-30")
    state = tmp_path / "s"
    rows = ROWS.with_columns(pl.lit(str(img)).alias("file"))
    kw = {"model": OLD, "prompt": "{text}", "files": "file", "state": state,
          "progress": False, "params": {"max_tokens": 2000}}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shutdown warning: tests/test_model_shutdowns.py
        rows.pipe(batch_llm, wait=False, **kw)  # type: ignore[arg-type]
        emu.advance(30)  # one request has run on gemini-2.5-flash ...
        on("2026-12-01")  # ... when Google routes it to gemini-3.5-flash-lite
        emu.advance(60)
        out = rows.pipe(batch_llm, **kw)  # type: ignore[arg-type]
    assert out["_status"].to_list() == ["completed"] * 4, out["_error"].to_list()
    assert out["_error"].to_list() == [None] * 4
    bills = {b["custom_id"]: b for b in emu.billing(usd=True)}
    ran = [b["custom_id"] for b in emu.billing()]  # in the order they ran
    assert [bills[j]["model"] for j in ran] == [OLD, NEW, NEW, NEW]
    tokens = dict(zip(out["_job_id"], out["_input_tokens"], strict=True))
    # The same text on every row: only the image's count differs.
    assert [tokens[j] - tokens[ran[0]] for j in ran] == [0] + [new_image - old_image] * 3
    for job_id, cost in zip(out["_job_id"], out["_cost_usd"], strict=True):
        assert cost == pytest.approx(bills[job_id]["usd"], rel=1e-9), job_id
    assert spent_usd(state) == pytest.approx(sum(float(b["usd"]) for b in bills.values()), rel=1e-9)


def _at(moment: str) -> float:
    return dt.datetime.fromisoformat(moment).timestamp()


@pytest.fixture
def real_date(monkeypatch):
    """An in-process emulator core on the real date (the ``today`` setting ``""``), its
    clock set to 2026-11-30 23:59:00 UTC (what it reads as the date, at a request's
    creation too, whatever the machine's: tests/test_emulator_real_date.py). The process
    wide settings ``configure`` mirrors are put back afterwards."""
    from batchata_df.emulator import model_rules
    from batchata_df.emulator.server import EmulatorCore

    monkeypatch.setattr(model_rules, "_TODAY", list(model_rules._TODAY))
    monkeypatch.setattr(model_rules, "_SERVING_RETIRED", list(model_rules._SERVING_RETIRED))
    core = EmulatorCore()
    core.clock.offset = _at("2026-11-30T23:59:00+00:00") - time.time()
    core.configure({"today": ""})
    yield core
    core.close()


def test_on_the_real_date_a_batch_read_after_midnight_is_routed_from_midnight(real_date) -> None:
    # EmulatorCore.routed_since / gone_since with the real date: the date each request ran
    # on, not the date the batch is read on (a batch sent at 23:59 and read the next
    # morning had every request routed, those run before midnight included).
    core = real_date
    created = core.clock.now()
    midnight = _at("2026-12-01T00:00:00+00:00")
    assert core.routed_since("gemini", PRO, created) is None  # not yet
    core.clock.advance(3600)  # read at 00:59 on 2026-12-01
    assert core.routed_since("gemini", PRO, created) == (midnight, PRO_NEW)
    assert core.routed_since("gemini", "models/" + OLD, created) == (midnight, "models/" + NEW)
    assert core.gone_since("gemini", PRO, created) is None  # routed, so served
    # ... and billed at the prices of the day each request ran (LedgerEntry.days).
    assert core.days_since(created) == [
        (created, dt.date(2026, 11, 30)), (midnight, dt.date(2026, 12, 1))]
    # Created after midnight: from its creation.
    later = core.clock.now()
    core.clock.advance(60)
    assert core.routed_since("gemini", PRO, later) == (later, PRO_NEW)
    # A model shut down (not routed) on a later date: gone from that midnight.
    core.clock.advance(_at("2027-05-06T23:00:00+00:00") - core.clock.now())
    before = core.clock.now()
    core.clock.advance(7200)
    assert core.gone_since("gemini", "gemini-3.1-flash-lite", before) == _at(
        "2027-05-07T00:00:00+00:00")
    # A date pinned from some moment on: that date from then on, as before.
    core.configure({"today": "2027-05-08"})
    pinned = core.clock.now()
    core.clock.advance(60)
    assert core.gone_since("gemini", "gemini-3.1-flash-lite", pinned) == pinned


def test_on_the_real_date_requests_run_before_midnight_keep_the_model_asked_for(
    real_date, monkeypatch
) -> None:
    from batchata_df.emulator import env_for
    from batchata_df.emulator.server import EmulatorServer

    server = EmulatorServer(0, real_date).start_in_thread()
    try:
        for key, value in env_for(server.url).items():
            monkeypatch.setenv(key, value)
        real_date.configure({"latency": 60.0})
        gem = genai.Client()
        job = gem.batches.create(model=PRO, src=_src(4))  # type: ignore[arg-type]
        # Sent at 23:59:00: requests finish at 23:59:19.5, 33, 46.5 and 60 (10 % pending,
        # then evenly): three before midnight, one at it.
        real_date.clock.advance(3600)  # read at 00:59 on 2026-12-01
        done = gem.batches.get(name=str(job.name))
        assert done.dest is not None and done.dest.inlined_responses
        seen = [r.response.model_version for r in done.dest.inlined_responses
                if r.response is not None]  # fmt: skip
        assert seen == [PRO, PRO, PRO, PRO_NEW]
        assert [b["model"] for b in real_date.billing()] == [PRO, PRO, PRO, PRO_NEW]
    finally:
        server.stop()

# -- 2. the client prices each row at the model that answered it -------------------------


def _run(**kw: object) -> pl.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shutdown warning: tests/test_model_shutdowns.py
        return ROWS.pipe(batch_llm, **kw)  # type: ignore[arg-type]


def _on_the_eve(on, emu, tmp_path: Path) -> tuple[Path, dict[str, object]]:
    """A gemini-2.5-pro call's folder and arguments on 2026-11-30, its batches taking 60 s
    (the tests move the date to 2026-12-01 while they run)."""
    emu.configure(latency=60.0)
    on("2026-11-30")
    state = tmp_path / "s"
    kw: dict[str, object] = {"model": PRO, "prompt": "{text}", "state": state,
                             "progress": False, "params": {"max_tokens": 2000}}  # fmt: skip
    return state, kw


@pytest.mark.parametrize("streamed", [False, True], ids=["in_memory", "streamed"])
def test_the_client_prices_each_row_at_the_model_that_answered_it(
    on, emu, tmp_path, streamed
) -> None:
    state, kw = _on_the_eve(on, emu, tmp_path)
    first = _run(wait=False, **kw)
    assert first["_status"].to_list() == ["pending"] * 4
    emu.advance(30)  # one request has run on gemini-2.5-flash ...
    on("2026-12-01")  # ... when Google routes it to gemini-3.5-flash-lite
    emu.advance(60)
    if streamed:
        sink = tmp_path / "out.parquet"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lazy = batch_llm(ROWS.lazy(), sink=sink, **kw)  # type: ignore[arg-type]
        out = lazy.collect()  # type: ignore[union-attr]
    else:
        out = _run(**kw)
    assert out["_status"].to_list() == ["completed"] * 4, out["_error"].to_list()
    bills = {b["custom_id"]: b for b in emu.billing(usd=True)}
    assert sorted(bills) == sorted(out["_job_id"].to_list())
    assert [bills[j]["model"] for j in out["_job_id"]] == [PRO, PRO_NEW, PRO_NEW, PRO_NEW]
    # Each row's cost is what Google bills for it; so is the bill and the folder's spend.
    for job_id, cost in zip(out["_job_id"], out["_cost_usd"], strict=True):
        assert cost == pytest.approx(bills[job_id]["usd"], rel=1e-9), job_id
    billed = sum(float(b["usd"]) for b in bills.values())
    assert out["_cost_usd"].sum() == pytest.approx(billed, rel=1e-9)
    assert spent_usd(state) == pytest.approx(billed, rel=1e-9)
    # The old model's price would have differed (else this test proves nothing).
    old = PriceTable().get("gemini", PRO)
    new = PriceTable().get("gemini", PRO_NEW)
    assert old is not None and new is not None and old.output != new.output
    # Which model answered: in the job events (the DuckDB view job_events).
    seen = sql("SELECT job_id, model, answered_by, cost_usd FROM job_events "
               "WHERE status = 'completed'", state)
    by_id = {r["job_id"]: r for r in seen.iter_rows(named=True)}
    assert [by_id[j]["answered_by"] for j in out["_job_id"]] == [None, PRO_NEW, PRO_NEW, PRO_NEW]
    assert {r["model"] for r in by_id.values()} == {PRO}
    assert sum(r["cost_usd"] for r in by_id.values()) == pytest.approx(billed, rel=1e-9)
    # ... and the jobs view (a streamed run's from its summary, else grouped from events).
    jobs = {r["job_id"]: r for r in sql("SELECT * FROM jobs", state).iter_rows(named=True)}
    assert [jobs[j]["answered_by"] for j in out["_job_id"]] == [None, PRO_NEW, PRO_NEW, PRO_NEW]
    assert sum(r["cost_usd"] for r in jobs.values()) == pytest.approx(billed, rel=1e-9)


def test_a_batch_finished_before_the_date_is_priced_at_the_model_asked_for(
    on, emu, tmp_path
) -> None:
    state, kw = _on_the_eve(on, emu, tmp_path)
    _run(wait=False, **kw)
    emu.advance(61)  # done before the date
    on("2026-12-01")
    out = _run(**kw)
    assert out["_status"].to_list() == ["completed"] * 4, out["_error"].to_list()
    bills = emu.billing(usd=True)
    assert {b["model"] for b in bills} == {PRO}
    assert out["_cost_usd"].sum() == pytest.approx(sum(float(b["usd"]) for b in bills), rel=1e-9)
    seen = sql("SELECT answered_by FROM job_events WHERE status = 'completed'", state)
    assert seen["answered_by"].to_list() == [None] * 4


def _as_old_parts(state: Path) -> int:
    """Rewrite the folder's job parts as a version before ``answered_by`` wrote them; how
    many parts lack it then (a format 2 part whose ``answered_by`` was all null already
    left it out)."""
    n = 0
    for part in sorted((state / "jobs").glob("part-*.parquet")):
        frame = pl.read_parquet(part)
        if "answered_by" in frame.columns:
            meta = pl.read_parquet_metadata(part)
            frame.drop("answered_by").write_parquet(part, metadata=meta)
        n += 1
    return n


def test_a_folder_with_parts_written_before_answered_by_reads_and_collects(
    on, emu, tmp_path
) -> None:
    # The sent rows' parts come from an older version (no answered_by column); the
    # results' parts have it: the folder reads as one, the old events' answered_by null.
    state, kw = _on_the_eve(on, emu, tmp_path)
    _run(wait=False, **kw)
    assert _as_old_parts(state) >= 1
    emu.advance(30)
    on("2026-12-01")
    emu.advance(60)
    out = _run(**kw)
    assert out["_status"].to_list() == ["completed"] * 4, out["_error"].to_list()
    billed = sum(float(b["usd"]) for b in emu.billing(usd=True))
    assert out["_cost_usd"].sum() == pytest.approx(billed, rel=1e-9)
    seen = sql("SELECT status, answered_by FROM job_events ORDER BY seq", state)
    assert seen.filter(pl.col("status") == "assigned")["answered_by"].to_list() == [None] * 4
    done = seen.filter(pl.col("status") == "completed")["answered_by"].to_list()
    assert sorted(done, key=str) == sorted([None, PRO_NEW, PRO_NEW, PRO_NEW], key=str)
    # Read again (every part old now): the same rows, the same costs, nothing sent.
    _as_old_parts(state)
    posts = len([e for e in emu.log() if e["method"] == "POST"])
    again = _run(**kw)
    assert again["_cost_usd"].to_list() == out["_cost_usd"].to_list()
    assert len([e for e in emu.log() if e["method"] == "POST"]) == posts
    assert spent_usd(state) == pytest.approx(billed, rel=1e-9)



@pytest.fixture
def unpriced_successor(on, emu, monkeypatch):
    """Sent on 2026-11-30, 60 s a batch; genai-prices knows no price for 2.5 Pro's
    successor (a model newer than its snapshot)."""
    from batchata_df import cost as cost_module

    real = cost_module._lookup
    monkeypatch.setattr(cost_module, "_lookup", lambda provider, model, proc="batch", on=None: (
        None if model == PRO_NEW else real(provider, model, proc, on)))  # fmt: skip
    emu.configure(latency=60.0)
    on("2026-11-30")


def test_an_answering_model_without_a_known_price_is_priced_as_the_model_asked_and_said(
    on, emu, tmp_path, monkeypatch, unpriced_successor
) -> None:
    # No price known for the successor (a model newer than genai-prices' snapshot): the
    # rows it answered cost what the model asked for would (what the cap reserved; a
    # null cost would count as free), and the call says so, naming the fix; with the fix
    # they cost what Google bills.
    from batchata_df import UnpricedAnswerWarning

    kw = {"model": PRO, "prompt": "{text}", "progress": False, "params": {"max_tokens": 2000}}

    def run(state: Path, **more: object) -> pl.DataFrame:
        emu.configure(today="2026-11-30")
        on("2026-11-30")
        _run(wait=False, state=state, **kw, **more)
        emu.advance(30)
        on("2026-12-01")
        emu.advance(60)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = ROWS.pipe(batch_llm, state=state, **kw, **more)  # type: ignore[arg-type]
        said = [str(w.message) for w in caught if w.category is UnpricedAnswerWarning]
        return out.with_columns(pl.lit("\n".join(said)).alias("said"))

    out = run(tmp_path / "a")
    assert out["_status"].to_list() == ["completed"] * 4, out["_error"].to_list()
    assert out["said"][0] == (
        "3 rows sent to 'gemini-2.5-pro' were answered by 'gemini-3.8-flash' (the provider "
        "routed 'gemini-2.5-pro' to it), whose price is not known: their _cost_usd is at "
        "'gemini-2.5-pro''s price, which may differ from what the provider bills; pass "
        "prices={'gemini-3.8-flash': (input_usd_per_mtok, output_usd_per_mtok)} (batch "
        "prices) to price them at its own")
    old = PriceTable().get("gemini", PRO)
    assert old is not None
    rows = sql("SELECT job_id, input_tokens, output_tokens, cached_tokens, cost_usd, "
               "answered_by FROM job_events WHERE status = 'completed'", tmp_path / "a")
    for r in rows.iter_rows(named=True):
        by_hand = ((r["input_tokens"] - r["cached_tokens"]) * old.input
                   + r["cached_tokens"] * (old.cached_input or 0)
                   + r["output_tokens"] * old.output) / 1e6  # fmt: skip
        assert r["cost_usd"] == pytest.approx(by_hand, rel=1e-9), r
    assert sorted(rows["answered_by"].to_list(), key=str) == sorted(
        [None, PRO_NEW, PRO_NEW, PRO_NEW], key=str)
    # The fix: its batch price given (genai-prices' standard rate halved, no cache read
    # in these short prompts).
    emu.reset()
    fixed = run(tmp_path / "b", prices={PRO_NEW: (0.375, 1.875)})
    assert fixed["said"][0] == ""
    bills = {b["custom_id"]: b for b in emu.billing(usd=True)}
    for job_id, cost in zip(fixed["_job_id"], fixed["_cost_usd"], strict=True):
        assert cost == pytest.approx(bills[job_id]["usd"], rel=1e-9), job_id


def test_a_result_line_matching_no_row_is_priced_at_the_model_that_answered_it(
    on, emu, tmp_path, monkeypatch
) -> None:
    # A routed batch's result line whose id came back damaged (the emulator's corrupt_id
    # fault) matches no row: its usage still counts as spent (engine.collection.
    # unmatched_events), and at the successor's price, as Google bills it.
    from batchata_df.providers.gemini import GeminiProvider

    monkeypatch.setattr(GeminiProvider, "inline_max_bytes", 10)  # results as a file
    state, kw = _on_the_eve(on, emu, tmp_path)
    kw["provider_patience"] = 20.0
    _run(wait=False, **kw)
    on("2026-12-01")  # before any request ran: all four answered by the successor
    emu.advance(70)
    emu.inject_fault(method="GET", path_regex=r"(:download|/download/)", action="corrupt_id",
                     times=None)  # fmt: skip
    out = _run(**kw)
    assert sorted(out["_status"].to_list()) == ["completed"] * 3 + ["failed"]
    bills = emu.billing(usd=True)
    assert {b["model"] for b in bills} == {PRO_NEW}
    billed = sum(float(b["usd"]) for b in bills)
    assert spent_usd(state) == pytest.approx(billed, rel=1e-9)
    lost = sql("SELECT answered_by FROM job_events WHERE job_id LIKE 'unmatched:%'", state)
    assert lost["answered_by"].to_list() == [PRO_NEW]


def test_the_successors_prompt_cache_is_its_own_and_what_it_saved_is_at_its_price(
    on, emu, tmp_path
) -> None:
    # Rows sharing a long prefix (past both models' implicit-caching minimum: 2,048
    # tokens for gemini-2.5-pro, 4,096 for gemini-3.8-flash, caching.min_cacheable_tokens).
    # Google's implicit cache is per model: the first request the successor answers
    # reads nothing (the model asked for cached the prefix, not it); the next ones read
    # it. Each row's cache_saved_usd is what the cache read saved at the price of the
    # model that answered it, as its _cost_usd is.
    doc = "The supplier shall deliver the goods within thirty days of the order date. " * 400
    rows = pl.DataFrame({"q": [f"Question {i}: what is asked?" for i in range(4)]})
    emu.configure(latency=60.0)
    on("2026-11-30")
    state = tmp_path / "s"
    kw = {"model": PRO, "prompt": doc + "{q}", "state": state, "progress": False,
          "params": {"max_tokens": 2000}}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows.pipe(batch_llm, wait=False, **kw)  # type: ignore[arg-type]
        emu.advance(30)  # one request has run on gemini-2.5-pro ...
        on("2026-12-01")  # ... when Google routes it to gemini-3.8-flash
        emu.advance(60)
        out = rows.pipe(batch_llm, **kw)  # type: ignore[arg-type]
    assert out["_status"].to_list() == ["completed"] * 4, out["_error"].to_list()
    bills = emu.billing(usd=True)
    assert [b["model"] for b in bills] == [PRO, PRO_NEW, PRO_NEW, PRO_NEW]
    jobs = {r["job_id"]: r for r in sql(
        "SELECT job_id, input_tokens, cached_tokens, cost_usd, cache_saved_usd, answered_by "
        "FROM jobs", state).iter_rows(named=True)}  # fmt: skip
    sent = [jobs[str(b["custom_id"])] for b in bills]  # in the order they ran
    assert [r["answered_by"] for r in sent] == [None, PRO_NEW, PRO_NEW, PRO_NEW]
    assert all(r["input_tokens"] > 4096 for r in sent)
    assert [r["cached_tokens"] > 0 for r in sent] == [False, False, True, True]
    for r, bill in zip(sent, bills, strict=True):
        assert r["cost_usd"] == pytest.approx(bill["usd"], rel=1e-9)
        price = PriceTable().get("gemini", r["answered_by"] or PRO)
        assert price is not None
        saved = r["cached_tokens"] * (price.rate("input") - price.rate("cached_input")) / 1e6
        assert r["cache_saved_usd"] == pytest.approx(saved, rel=1e-9, abs=1e-15), r


def test_an_unpriced_answering_model_is_said_once_per_call_across_its_batches(
    on, emu, tmp_path, monkeypatch, unpriced_successor
) -> None:
    from batchata_df import UnpricedAnswerWarning

    kw = {"model": PRO, "prompt": "{text}", "progress": False, "state": tmp_path / "s",
          "params": {"max_tokens": 2000}, "items_per_batch": 2}  # fmt: skip
    _run(wait=False, **kw)
    emu.advance(40)  # each of the two batches has run one of its two requests ...
    on("2026-12-01")  # ... when the rest are routed
    emu.advance(50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ROWS.pipe(batch_llm, **kw)  # type: ignore[arg-type]
    assert out["_status"].to_list() == ["completed"] * 4, out["_error"].to_list()
    assert len({b["batch_id"] for b in emu.billing()}) == 2
    assert sorted(str(b["model"]) for b in emu.billing()) == [PRO, PRO, PRO_NEW, PRO_NEW]
    said = [str(w.message) for w in caught if w.category is UnpricedAnswerWarning]
    assert len(said) == 1, said
    assert "were answered by 'gemini-3.8-flash'" in said[0]


def test_a_folder_mixing_parts_with_and_without_answered_by_is_read_by_every_reader(
    on, emu, tmp_path, monkeypatch
) -> None:
    # A folder resumed across versions: its first part (the rows sent) has no
    # answered_by, the results' part has it. Polars refuses a plain read of such parts
    # (README "Cost and status with DuckDB" says how to read them); every reader of the
    # library reads them whole.
    import duckdb

    from batchata_df import repair
    from batchata_df.frame import _paid_for
    from batchata_df.state import JOB_EVENTS, StateStore, read_manifest

    state, kw = _on_the_eve(on, emu, tmp_path)
    _run(wait=False, **kw)
    assert _as_old_parts(state) == 1
    emu.advance(30)
    on("2026-12-01")
    emu.advance(60)
    out = _run(**kw)
    assert out["_status"].to_list() == ["completed"] * 4, out["_error"].to_list()
    parts = sorted((state / "jobs").glob("part-*.parquet"))
    assert ["answered_by" in pl.read_parquet_schema(p) for p in parts] == [False, True]
    routed = sorted([None, PRO_NEW, PRO_NEW, PRO_NEW], key=str)
    # (The first column the assigned part lacks: format 2 leaves out its all-null ones.)
    with pytest.raises(pl.exceptions.SchemaError, match="extra column"):
        pl.read_parquet(state / "jobs" / "*.parquet")
    # The ways the README gives.
    done = pl.col("status") == "completed"
    scanned = pl.scan_parquet(parts, schema=JOB_EVENTS, missing_columns="insert",
                              extra_columns="ignore").filter(done).collect()  # fmt: skip
    assert sorted(scanned["answered_by"].to_list(), key=str) == routed
    glob = (state / "jobs" / "*.parquet").as_posix()
    unioned = duckdb.sql(f"SELECT answered_by FROM read_parquet('{glob}', union_by_name = true) "
                         "WHERE status = 'completed'").pl()  # fmt: skip
    assert sorted(unioned["answered_by"].to_list(), key=str) == routed
    got = sql("SELECT answered_by FROM job_events WHERE status = 'completed'", state)
    assert sorted(got["answered_by"].to_list(), key=str) == routed
    # The library's own readers.
    recorded = read_manifest(state / "manifest.json").fingerprint
    events = StateStore(state, recorded, readonly=True).job_events().filter(done)
    assert sorted(events["answered_by"].to_list(), key=str) == routed
    assert repair(state).healthy
    billed = sum(float(b["usd"]) for b in emu.billing(usd=True))
    assert spent_usd(state) == pytest.approx(billed, rel=1e-9)
    # A folder that paid for nothing (a call's temporary one is removed then) is read as
    # such, not kept as unreadable.
    empty = tmp_path / "unpaid"
    store = StateStore(empty, {"model": PRO})
    store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": ["assigned"]}))
    store.append_jobs(pl.DataFrame({"job_id": ["a"], "status": ["failed"],
                                    "answered_by": [PRO_NEW]}))  # fmt: skip
    _as_old_parts(empty)  # both old ...
    store.append_jobs(pl.DataFrame({"job_id": ["b"], "status": ["assigned"]}))  # ... one new
    # _paid_for lists the parts in the file system's order: old parts first, then new ones
    # first (a scan is read by its first part's columns unless told the schema).
    real_glob = Path.glob
    for newest_first in (False, True):

        def ordered(self: Path, *a: object, _rev: bool = newest_first, **k: object) -> object:
            return iter(sorted(real_glob(self, *a, **k), reverse=_rev))  # type: ignore[arg-type]

        monkeypatch.setattr(Path, "glob", ordered)
        assert _paid_for(state), newest_first
        assert not _paid_for(empty), newest_first
    monkeypatch.setattr(Path, "glob", real_glob)
