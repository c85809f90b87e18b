"""A price change while a batch runs: the cap still holds, and the bill is by the day each
request ran.

genai-prices 0.2.3 dates price changes (``StartDateConstraint``): gemini-4-argon doubles
on 2026-12-01, gemini-3.6/3.7/3.8-flash on 2027-01-01. The providers bill a request at the
price in force when it runs, and a batch runs for up to its window
(``models.BATCH_WINDOW_HOURS``: Gemini 48 h). Three gaps, closed here:

1. ``max_cost_usd`` reserved each job at the price of the day it was sent, so a batch that
   ran past a rise spent more than the cap (0.0168 USD under a 0.01 cap): the reservation
   is now at the highest price in force over the window (``PriceTable.worst``);
2. a routed model (``models.SCHEDULED``, ``"routed"``: gemini-2.5-pro -> gemini-3.8-flash
   from 2026-12-01) was reserved at its own price, while its requests run from the date
   on are billed at the successor's: the reservation takes the successor's too when the
   date falls inside the window;
3. the emulator billed every request at the day the bill was read (so it moved with the
   client and could not catch 1): now at the ``today`` setting in force when it ran.
"""

from __future__ import annotations

import datetime as dt
import warnings

import polars as pl
import pytest
from google import genai

from batchata_df import batch_llm, sql
from batchata_df.cost import PriceTable
from batchata_df.emulator.pricing import billed_usd
from batchata_df.models import BASE_URL_VARS, TODAY_VAR
from batchata_df.state import spent_usd

LONG = pl.DataFrame({"text": [f"row {i}: " + "lorem ipsum " * 300 for i in range(8)]})


def _src(n: int) -> list[dict[str, object]]:
    return [{"contents": [{"parts": [{"text": f"row {i}"}], "role": "user"}],
             "metadata": {"key": f"r{i}"}} for i in range(n)]  # fmt: skip


# -- 3. the emulator, through the official SDK ---------------------------------------------


def test_the_emulator_bills_each_request_at_the_price_of_the_day_it_ran(emu) -> None:
    gem = genai.Client()
    model = "gemini-3.7-flash"
    # latency 60 s: the 4 requests finish at 19.5, 33, 46.5 and 60 s (10 % pending, then
    # evenly): one has run when the day changes at 30 s.
    emu.configure(latency=60.0, today="2026-12-31")
    job = gem.batches.create(model=model, src=_src(4))  # type: ignore[arg-type]
    emu.advance(30)
    emu.configure(today="2027-01-01")
    emu.advance(60)
    done = gem.batches.get(name=str(job.name))
    assert done.dest is not None and done.dest.inlined_responses
    usage = []
    for item in done.dest.inlined_responses:
        assert item.response is not None and item.response.usage_metadata is not None
        meta = item.response.usage_metadata
        usage.append({
            "input_tokens": meta.prompt_token_count or 0,
            "output_tokens": (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0),
            "cached_tokens": meta.cached_content_token_count or 0,
        })  # fmt: skip
    days = [dt.date(2026, 12, 31)] + [dt.date(2027, 1, 1)] * 3
    expected = [billed_usd("gemini", model, **u, on=d) for u, d in zip(usage, days, strict=True)]
    assert expected[0] < billed_usd("gemini", model, **usage[0], on=days[1])  # a rise
    for read_on in ("2027-01-01", "2027-03-01", "2026-12-31"):  # whenever the bill is read
        emu.configure(today=read_on)
        assert [b["usd"] for b in emu.billing(usd=True)] == pytest.approx(expected, rel=1e-12)


# -- 1. the cap across a dated price rise -------------------------------------------------


@pytest.mark.parametrize(
    ("model", "before", "after", "cap"),
    [("gemini-4-argon", "2026-11-30", "2026-12-01", 0.01),
     ("gemini-3.7-flash", "2026-12-31", "2027-01-01", 0.004)],
)  # fmt: skip
def test_the_cap_holds_when_a_price_rises_while_the_batch_runs(
    emu, tmp_path, monkeypatch, model, before, after, cap
) -> None:
    monkeypatch.setenv(TODAY_VAR, before)
    emu.configure(today=before, latency=60.0)
    state = str(tmp_path / "s")
    kw = {"model": model, "prompt": "{text}", "state": state, "progress": False,
          "params": {"max_tokens": 100}, "max_cost_usd": cap}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cap's "cancelled: cost_limit" rows
        LONG.pipe(batch_llm, wait=False, **kw)
        emu.advance(30)  # the batch half run when the price rises
        monkeypatch.setenv(TODAY_VAR, after)
        emu.configure(today=after)
        emu.advance(40)
        out = LONG.pipe(batch_llm, **kw)
    bills = emu.billing(usd=True)
    assert bills, "nothing was sent: the test would prove nothing"
    billed = sum(float(b["usd"]) for b in bills)  # type: ignore[arg-type]
    assert billed <= cap
    # The client prices rows at the day it collects them (the later, higher price): what it
    # counts as spent is at least the bill, and within the cap too.
    assert billed <= spent_usd(state) <= cap
    assert out["_cost_usd"].sum() == pytest.approx(spent_usd(state), rel=1e-12)


def test_the_worst_case_is_the_highest_price_over_the_batch_window(monkeypatch) -> None:
    model = "gemini-3.7-flash"
    monkeypatch.setenv(TODAY_VAR, "2026-12-31")
    table = PriceTable()
    now, worst = table.get("gemini", model), table.worst("gemini", model)
    monkeypatch.setenv(TODAY_VAR, "2027-01-01")
    later = table.get("gemini", model)
    assert now is not None and worst is not None and later is not None
    assert (worst.input, worst.output) == (later.input, later.output) != (now.input, now.output)
    # Sent on 2026-12-30 (at 23:59), a 48 h batch may still run on 2027-01-01.
    monkeypatch.setenv(TODAY_VAR, "2026-12-30")
    assert table.worst("gemini", model) == worst
    # Sent on 2026-12-29, a 48 h batch ends on 2026-12-31 at the latest: today's price.
    monkeypatch.setenv(TODAY_VAR, "2026-12-29")
    assert table.worst("gemini", model) == table.get("gemini", model)
    # A realtime request runs when it is sent, within a day: sent on 2026-12-30 it is
    # billed at 2026-12-30's or 2026-12-31's price (the same) ...
    monkeypatch.setenv(TODAY_VAR, "2026-12-30")
    realtime = table.realtime()
    assert realtime.worst("gemini", model) == realtime.get("gemini", model)
    # ... sent on 2026-12-31 it may run past midnight, into the rise.
    monkeypatch.setenv(TODAY_VAR, "2026-12-31")
    now, worst = realtime.get("gemini", model), realtime.worst("gemini", model)
    monkeypatch.setenv(TODAY_VAR, "2027-01-01")
    later = realtime.get("gemini", model)
    assert now is not None and worst is not None and later is not None
    assert (worst.input, worst.output) == (later.input, later.output) != (now.input, now.output)


@pytest.mark.parametrize("processing", ["batch", "realtime"])
def test_a_models_prefixed_override_is_what_the_worst_case_reserves(
    monkeypatch, processing
) -> None:
    # prices={"models/<id>": ...} names the same model as prices={"<id>": ...} (get()
    # accepts both): the reservation must not take max(override, genai-prices) for one.
    monkeypatch.setenv(TODAY_VAR, "2026-11-30")  # gemini-4-argon doubles on 2026-12-01
    for model in ("gemini-4-argon", "models/gemini-4-argon"):
        worsts = []
        for key in ("gemini-4-argon", "models/gemini-4-argon"):
            table = PriceTable({key: (0.001, 0.001)})
            table = table.realtime() if processing == "realtime" else table
            worst = table.worst("gemini", model)
            assert worst == table.get("gemini", model), (model, key)
            worsts.append(worst)
        assert worsts[0] == worsts[1], model


def test_a_models_prefixed_override_reserves_as_the_bare_one(emu, monkeypatch) -> None:
    monkeypatch.setenv(TODAY_VAR, "2026-11-30")
    emu.configure(today="2026-11-30")
    rows = pl.DataFrame({"text": [f"row {i}" for i in range(4)]})
    plans = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key in ("gemini-4-argon", "models/gemini-4-argon"):
            plans[key] = rows.pipe(
                batch_llm, model="gemini:models/gemini-4-argon", prompt="{text}",
                dry_run=True, prices={key: (0.001, 0.001)}, params={"max_tokens": 100},
                progress=False, max_cost_usd=0.001,
            )  # fmt: skip
    bare, prefixed = plans["gemini-4-argon"], plans["models/gemini-4-argon"]
    assert bare["_within_cap"].all()  # 4 tiny rows at 0.001 USD/Mtok: far under the cap
    for col in ("_est_cost_usd", "_expected_cost_usd", "_within_cap"):
        assert prefixed[col].to_list() == bare[col].to_list(), col
    assert not emu.billing()


def test_a_realtime_call_running_past_midnight_into_a_rise_stays_under_the_cap(
    emu, tmp_path, monkeypatch
) -> None:
    import os
    import threading
    import time

    monkeypatch.setenv(TODAY_VAR, "2026-11-30")  # gemini-4-argon doubles on 2026-12-01
    emu.configure(today="2026-11-30", realtime_latency=1.0)
    rows = pl.DataFrame({"text": [f"row {i}: " + "lorem ipsum " * 300 for i in range(6)]})
    kw = {"model": "gemini-4-argon", "prompt": "{text}", "progress": False,
          "params": {"max_tokens": 100}, "mode": "realtime"}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = rows.pipe(batch_llm, dry_run=True, **kw)
        # The plan at today's price: a cap just above it covers only today's price.
        cap = float(plan["_est_cost_usd"].sum()) * 1.0001

        def midnight() -> None:
            time.sleep(0.5)  # the requests in flight (1 s each) run past midnight
            os.environ[TODAY_VAR] = "2026-12-01"
            emu.configure(today="2026-12-01")

        flip = threading.Thread(target=midnight)
        flip.start()
        rows.pipe(batch_llm, state=str(tmp_path / "s"), max_cost_usd=cap, **kw)
        flip.join()
    billed = sum(float(b["usd"]) for b in emu.billing(usd=True))  # type: ignore[arg-type]
    assert billed <= cap


# -- 2. a routed model: its successor's prices count from the routing date -------------


@pytest.mark.parametrize(
    ("day", "gateway"),
    [("2026-11-29", False), ("2026-11-30", False), ("2026-12-01", False),
     ("2027-01-15", True)],
)  # fmt: skip
def test_the_worst_case_covers_the_successor_of_a_routed_model(monkeypatch, day, gateway) -> None:
    # 2026-12-01 inside the window (sent on 2026-11-29, a 48 h batch reaches it on its
    # last day only: the routing date itself counts), or the day itself (when in the day
    # Google switches is not known), or past it through a gateway (it may still serve
    # the model): the higher of the two prices.
    monkeypatch.setenv(TODAY_VAR, day)
    if gateway:
        monkeypatch.setenv(BASE_URL_VARS["gemini"], "http://127.0.0.1:9")
    table = PriceTable()
    own, successor = table.get("gemini", "gemini-2.5-pro"), table.get("gemini", "gemini-3.8-flash")
    worst = table.worst("gemini", "gemini-2.5-pro")
    assert own is not None and successor is not None and worst is not None
    for size in (1_000, 300_000):  # below and above 2.5 Pro's long-prompt tier
        for rate in ("input", "output", "cached_input"):
            expected = max(own.at(size).rate(rate), successor.at(size).rate(rate))
            assert worst.at(size).rate(rate) == expected, (size, rate)
    monkeypatch.setenv(TODAY_VAR, "2026-11-28")  # the window ends on 2026-11-30
    assert table.worst("gemini", "gemini-2.5-pro") == table.get("gemini", "gemini-2.5-pro")


@pytest.mark.parametrize("day", ["2026-12-02", "2027-01-15"])
def test_sent_after_the_routing_dates_day_the_successor_alone_is_reserved(
    monkeypatch, day
) -> None:
    # Such a request runs after Google's routing: gemini-3.8-flash answers it, at its own
    # price (doubled from 2027-01-01: genai-prices), counting its input by its own rules.
    monkeypatch.setenv(TODAY_VAR, day)
    monkeypatch.delenv(BASE_URL_VARS["gemini"], raising=False)
    table = PriceTable()
    assert table.answering("gemini", "gemini-2.5-pro") == ["gemini-3.8-flash"]
    successor = table.get("gemini", "gemini-3.8-flash")
    assert successor is not None
    assert table.worst("gemini", "gemini-2.5-pro") == table.worst("gemini", "gemini-3.8-flash")
    worst = table.worst("gemini", "gemini-2.5-pro")
    assert worst is not None and worst.output == successor.output  # not 2.5 Pro's 5.0
    # Asked the day before for a request sent on that day (PriceTable.terms, the cap's
    # re-pricing check), the same answer.
    sent = dt.date.fromisoformat(day)
    monkeypatch.setenv(TODAY_VAR, "2026-11-30")
    assert table.worst("gemini", "gemini-2.5-pro", sent) == worst
    assert table.answering("gemini", "gemini-2.5-pro", sent=sent) == ["gemini-3.8-flash"]


def test_the_routing_date_on_the_windows_last_day_counts(monkeypatch) -> None:
    # gemini-3.8-flash is cheaper than gemini-2.5-pro at every rate: priced higher here
    # (an override), its price shows whether the routing date's own day is counted.
    table = PriceTable({"gemini-3.8-flash": (10.0, 20.0)})
    monkeypatch.setenv(TODAY_VAR, "2026-11-29")  # a 48 h batch reaches 2026-12-01 last
    worst = table.worst("gemini", "gemini-2.5-pro")
    assert worst is not None and (worst.input, worst.output) == (10.0, 20.0)
    monkeypatch.setenv(TODAY_VAR, "2026-11-28")  # ... or not
    assert table.worst("gemini", "gemini-2.5-pro") == table.get("gemini", "gemini-2.5-pro")


def test_a_routed_model_after_the_routing_date_stays_under_the_cap(
    emu, tmp_path, monkeypatch
) -> None:
    # Through a base URL (a gateway: the client's shutdown check steps aside) after the
    # date, every request is answered and billed by gemini-3.8-flash.
    day, cap = "2027-01-15", 0.05
    monkeypatch.setenv(TODAY_VAR, day)
    emu.configure(today=day)
    text = "lorem ipsum dolor sit amet " * 4000
    rows = pl.DataFrame({"text": [f"{i} {text}" for i in range(6)]})
    state = str(tmp_path / "s")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows.pipe(batch_llm, model="gemini-2.5-pro", prompt="Classify: {text}", state=state,
                  progress=False, max_cost_usd=cap, params={"max_tokens": 50})  # fmt: skip
    bills = emu.billing(usd=True)
    assert bills and {b["model"] for b in bills} == {"gemini-3.8-flash"}
    assert sum(float(b["usd"]) for b in bills) <= spent_usd(state) <= cap  # type: ignore[arg-type]
    jobs = sql("SELECT est_cost_usd, cost_usd FROM jobs WHERE cost_usd > 0", state)
    assert jobs.height and (jobs["est_cost_usd"] >= jobs["cost_usd"]).all(), jobs


def _small_images(tmp_path, n: int) -> pl.DataFrame:
    from PIL import Image

    img = tmp_path / "small.png"
    Image.new("RGB", (300, 300), (10, 20, 30)).save(img)
    return pl.DataFrame({"text": [f"row {i}" for i in range(n)], "file": [str(img)] * n})


@pytest.mark.parametrize(
    ("sent", "routed_at"),
    [("2027-01-15", None),  # after the routing date: every request is the successor's
     ("2026-11-30", "2026-12-01")],  # sent the day before, run across it
)  # fmt: skip
def test_the_cap_counts_an_image_as_the_successor_of_a_routed_model_does(
    on, emu, tmp_path, monkeypatch, sent, routed_at
) -> None:
    # A 300x300 image is 258 input tokens on gemini-2.5-flash and 1,120 on its successor
    # gemini-3.5-flash-lite (tokens.image_tokens): the reservation counted it at 258, so a
    # capped run was admitted at ~0.45 of what Google then billed (6 rows reserved at
    # 0.000103 USD each were billed 0.000231 each). The worst case now counts each input
    # by every model that may answer it (PriceTable.answering) and takes the larger.
    rows, cap = _small_images(tmp_path, 6), 0.0008  # ~3 rows at the successor's count
    if routed_at:
        on(sent)
    else:  # through a base URL (a gateway): the client's check of a retired model steps aside
        monkeypatch.setattr("batchata_df.models._custom_endpoint", lambda provider: True)
        monkeypatch.setenv(TODAY_VAR, sent)
        emu.configure(today=sent)
    emu.configure(latency=60.0 if routed_at else 0.0)
    state = str(tmp_path / "s")
    kw = {"model": "gemini-2.5-flash", "prompt": "Describe: {text}", "files": "file",
          "state": state, "progress": False, "params": {"max_tokens": 50},
          "max_cost_usd": cap}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shutdown warning; the cap's cancelled rows
        if routed_at:
            rows.pipe(batch_llm, wait=False, **kw)  # type: ignore[arg-type]
            emu.advance(30)  # one request has run on gemini-2.5-flash ...
            on(routed_at)  # ... when Google routes the rest to gemini-3.5-flash-lite
            emu.advance(60)
            emu.configure(latency=0.0)  # what the cap lets this call send ends at once
        out = rows.pipe(batch_llm, **kw)  # type: ignore[arg-type]
    bills = emu.billing(usd=True)
    assert "gemini-3.5-flash-lite" in {b["model"] for b in bills}
    billed = sum(float(b["usd"]) for b in bills)  # type: ignore[arg-type]
    assert billed <= cap  # 0.00113 USD under the 0.0008 cap before
    assert spent_usd(state) == pytest.approx(billed, rel=1e-9)
    # Some rows fit under the cap, the rest were never sent (the successor thinks by
    # default, so some answers end truncated: billed all the same).
    assert 0 < len(bills) < rows.height
    assert out.filter(pl.col("_cost_usd") > 0).height == len(bills)
    assert set(out.filter(pl.col("_cost_usd") == 0)["_error"]) == {"cancelled: cost_limit"}
    jobs = sql("SELECT est_cost_usd, cost_usd, input_tokens FROM jobs WHERE cost_usd > 0", state)
    assert jobs.height and (jobs["est_cost_usd"] >= jobs["cost_usd"]).all(), jobs


# -- the client's cost and the bill agree when no change falls in the run --------------


def test_client_cost_equals_the_bill_when_no_price_changes_during_the_run(
    emu, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv(TODAY_VAR, "2026-12-31")
    emu.configure(today="2026-12-31")
    rows = pl.DataFrame({"text": [f"row {i}: say something" for i in range(5)]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # thinking room under max_tokens=200
        out = rows.pipe(batch_llm, model="gemini-3.7-flash", prompt="{text}",
                        state=str(tmp_path / "s"), progress=False, params={"max_tokens": 200})
    billed = [float(b["usd"]) for b in emu.billing(usd=True)]  # type: ignore[arg-type]
    assert len(billed) == rows.height
    assert out["_cost_usd"].sum() == pytest.approx(sum(billed), rel=1e-12)
    # Read after the rise, the bill of requests run before it does not move.
    emu.configure(today="2027-01-01")
    assert [float(b["usd"]) for b in emu.billing(usd=True)] == billed  # type: ignore[arg-type]


def test_on_the_real_date_the_emulator_bills_at_its_clocks_day_not_the_machines() -> None:
    # today="" (the real date): what the emulator bills and serves is the date of ITS clock
    # (which tests advance), not the machine's: a realtime request answered after the
    # clock passed midnight is billed at the new day's price.
    import time

    from batchata_df.emulator.server import EmulatorCore

    target = dt.datetime(2027, 1, 22, 0, 30, tzinfo=dt.UTC)  # claude-opus-4-5's shutdown
    if dt.datetime.now(dt.UTC).date() >= target.date():
        pytest.skip("the machine's date is past the test's target date")
    core = EmulatorCore()
    try:
        core.configure({"today": "", "serve_retired": False})
        core.clock.advance(target.timestamp() - time.time())
        assert dt.datetime.fromtimestamp(core.clock.now(), dt.UTC).date() == target.date()
        core.bill_realtime("gemini", "k", model="gemini-4-argon", usage=(1000, 1000, 0))
        core.bill("openai", "b1", ["a"], requests=["k"], model="gpt-6-luna")
        assert [e.day_at(0) for e in core._ledger] == [target.date(), target.date()]
        usd = float(core.billing(usd=True)[0]["usd"])  # type: ignore[arg-type]
        assert usd == billed_usd("gemini", "gemini-4-argon", input_tokens=1000,
                                 output_tokens=1000, mode="realtime", on=target.date())  # fmt: skip
        assert not core.served_now()("anthropic", "claude-opus-4-5")
    finally:
        core.close()


# -- rows collected after a rise are priced within their batch's window ------------------


def test_rows_collected_late_after_a_rise_are_priced_at_their_window_not_the_collection_day(
    emu, tmp_path, monkeypatch
) -> None:
    # Sent on 2026-11-20, the batch ended that day (a Gemini batch runs for 48 h at most:
    # by 2026-11-22); collected on 2026-12-05, after gemini-4-argon doubled (2026-12-01).
    # The bill is at 2026-11-20's price: the client must not count twice that as spent.
    # The next call re-attaches the batch from the state: its send day is read from the
    # batch's ``submitted`` event.
    model = "gemini-4-argon"
    monkeypatch.setenv(TODAY_VAR, "2026-11-20")
    emu.configure(today="2026-11-20", latency=60.0)
    state = str(tmp_path / "s")
    kw = {"model": model, "prompt": "{text}", "state": state, "progress": False,
          "params": {"max_tokens": 100}, "max_cost_usd": 0.012}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cap's "cancelled: cost_limit" rows
        LONG.pipe(batch_llm, wait=False, **kw)
        emu.advance(120)  # the batch ends on 2026-11-20
        monkeypatch.setenv(TODAY_VAR, "2026-12-05")
        emu.configure(today="2026-12-05")
        out = LONG.pipe(batch_llm, **kw)
    bills = emu.billing(usd=True)
    assert bills, "nothing was sent: the test would prove nothing"
    billed = sum(float(b["usd"]) for b in bills)  # type: ignore[arg-type]
    assert out["_cost_usd"].sum() == pytest.approx(billed, rel=1e-9)
    assert spent_usd(state) == pytest.approx(billed, rel=1e-9)
    sent = sql("SELECT sent_on FROM batch_events WHERE status = 'submitted'", state)
    assert sent["sent_on"].to_list() == [dt.date(2026, 11, 20)] * sent.height


def test_rows_a_successor_answered_are_priced_at_its_price_in_their_window(
    emu, tmp_path, monkeypatch
) -> None:
    # gemini-2.5-pro is answered by gemini-3.8-flash from 2026-12-01, whose price doubles on
    # 2027-01-01. Sent and run on 2026-12-01, collected on 2027-01-05: the rows are billed at
    # 3.8 Flash's price of their window, not of the collection day.
    monkeypatch.setenv(TODAY_VAR, "2026-12-01")
    emu.configure(today="2026-12-01", latency=60.0)
    state = str(tmp_path / "s")
    kw = {"model": "gemini-2.5-pro", "prompt": "{text}", "state": state, "progress": False,
          "params": {"max_tokens": 3000}}  # fmt: skip
    frame = LONG.head(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shutdown and thinking-room warnings
        frame.pipe(batch_llm, wait=False, **kw)
        emu.advance(120)  # the batch ends on 2026-12-01
        monkeypatch.setenv(TODAY_VAR, "2027-01-05")
        emu.configure(today="2027-01-05")
        out = frame.pipe(batch_llm, **kw)
    assert out["_status"].to_list() == ["completed"] * 3, out["_error"].to_list()
    bills = emu.billing(usd=True)
    assert [b["model"] for b in bills] == ["gemini-3.8-flash"] * 3
    billed = sum(float(b["usd"]) for b in bills)  # type: ignore[arg-type]
    assert out["_cost_usd"].sum() == pytest.approx(billed, rel=1e-9)
    assert spent_usd(state) == pytest.approx(billed, rel=1e-9)
