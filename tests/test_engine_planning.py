"""Planning: jobs -> provider batches (lazily, incrementally), and the queue-limit requeue."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date

import polars as pl
import pytest
from engine_fakes import MODEL, SPEC, FakeProvider, in_flight, make_jobs, make_run

from batchata_df.cost import PriceTable
from batchata_df.engine.clock import Backoff, FakeClock
from batchata_df.engine.planning import (
    DatedEstimate,
    Planner,
    Repricer,
    Requeue,
    over_named_limit,
    plan_batches,
    queue_limit_refusal,
)
from batchata_df.models import TODAY_VAR
from batchata_df.providers.base import BatchPoll, ProviderState


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider(FakeClock())


def ids(series: pl.Series) -> list[str]:
    return series.to_list()


def test_batches_hold_one_model_each_in_input_order_split_by_count(provider):
    jobs = pl.concat([make_jobs(3), make_jobs(2, model="other-model", start=3),
                      make_jobs(2, start=5)])
    planned = list(plan_batches(jobs, {"openai": provider}, SPEC, items_per_batch=2))
    assert [(p.model, ids(p.job_ids)) for p in planned] == [
        (MODEL, ["j000", "j001"]),
        (MODEL, ["j002", "j005"]),
        (MODEL, ["j006"]),
        ("other-model", ["j003", "j004"]),
    ]
    for p in planned:  # each batch carries exactly its own jobs' lines
        assert [json.loads(line)["custom_id"] for line in p.lines] == ids(p.job_ids)
        assert p.n_bytes == sum(len(line.encode()) + 1 for line in p.lines)
    assert len({p.batch_key for p in planned}) == 4


def test_jobs_with_big_payloads_are_sliced_by_their_payload_bytes_before_encoding(
    provider, monkeypatch
):
    # Files make a job's request far bigger than its row: the slices are bounded by the
    # payload bytes first (one encode each), then split by the encoded lines' bytes.
    monkeypatch.setattr(FakeProvider, "max_bytes", 130)
    jobs = make_jobs(4).with_columns(payload_bytes=pl.Series([100, 100, 10, 10]))
    planned = list(plan_batches(jobs, {"openai": provider}, SPEC, None))
    assert [ids(p.job_ids) for p in planned] == [["j000"], ["j001", "j002", "j003"]]
    assert provider.encoded == 4
    # Without the payload sizes the same jobs split by their lines alone.
    assert [len(p) for p in plan_batches(make_jobs(4), {"openai": provider}, SPEC, None)] == [
        3, 1,
    ]


def test_batches_are_split_by_bytes(provider, monkeypatch):
    line = len('{"custom_id":"j000","prompt":"prompt 0"}') + 1
    monkeypatch.setattr(FakeProvider, "max_bytes", 2 * line)
    planned = list(plan_batches(make_jobs(5), {"openai": provider}, SPEC, None))
    assert [len(p) for p in planned] == [2, 2, 1]
    assert all(p.n_bytes <= 2 * line for p in planned)


def test_lines_are_encoded_only_when_a_batch_is_needed(provider, monkeypatch):
    monkeypatch.setattr(FakeProvider, "max_requests", 10)
    planner = Planner({"openai": provider}, SPEC, None)
    planner.add(make_jobs(35))
    assert provider.encoded == 0
    first = planner.current()
    assert first is not None and len(first) == 10
    assert provider.encoded == 10  # one slice of the provider's count limit, not 35
    planner.took(10)
    assert provider.encoded == 20


def test_jobs_added_later_are_planned_after_those_already_queued(provider):
    planner = Planner({"openai": provider}, SPEC, 2)
    planner.add(make_jobs(3))
    batch = planner.current()
    assert batch is not None
    planner.took(len(batch))
    planner.add(make_jobs(2, start=10))  # a later chunk of a stream
    order = []
    while (batch := planner.current()) is not None:
        order.append(ids(batch.job_ids))
        planner.took(len(batch))
    assert order == [["j002"], ["j010", "j011"]]


def test_a_partly_sent_batch_goes_on_with_its_rest_under_a_new_key(provider):
    planner = Planner({"openai": provider}, SPEC, None)
    planner.add(make_jobs(5))
    first = planner.current()
    assert first is not None
    planner.took(2)
    rest = planner.current()
    assert rest is not None
    assert ids(rest.job_ids) == ["j002", "j003", "j004"]
    assert rest.batch_key != first.batch_key
    assert ids(rest.lines.str.json_decode().struct.field("custom_id")) == ids(rest.job_ids)
    planner.resend()
    again = planner.current()
    assert again is not None
    assert ids(again.job_ids) == ids(rest.job_ids) and again.batch_key != rest.batch_key


def test_unsent_hands_back_every_unsent_job_without_encoding_them(provider, monkeypatch):
    # What Repricer uses on a new date: encoding every batch left to read their ids held
    # ~0.5 GB at once at 1M jobs in memory.
    monkeypatch.setattr(FakeProvider, "max_requests", 2)
    planner = Planner({"openai": provider}, SPEC, 2)
    planner.add(make_jobs(5))
    planner.took(1)  # j000 went; the current batch's rest is j001
    planner.add(make_jobs(2, start=9))
    encoded = provider.encoded
    assert ids(planner.unsent()) == ["j001", "j002", "j003", "j004", "j009", "j010"]
    assert provider.encoded == encoded
    assert planner.current() is None and planner.unsent() is None
    planner.add(make_jobs(3))  # a source no batch was read from yet
    assert ids(planner.unsent()) == ["j000", "j001", "j002"]
    planner.add(make_jobs(2))
    assert planner.current() is not None
    planner.took(2)  # every job of the source went
    assert planner.unsent() is None


def test_drain_groups_hands_back_every_unsent_job_by_model_without_encoding_them(provider):
    # A stop (time limit, Ctrl+C) ends every unsent job cancelled, each group priced by its
    # model. It encoded every batch left to read their ids: ~0.5 GB at once for 1M jobs in
    # memory, and every file of a run with files read.
    planner = Planner({"openai": provider}, SPEC, 2)
    planner.add(pl.concat([make_jobs(3), make_jobs(2, model="other-model", start=3),
                           make_jobs(2, start=5)]))
    planner.took(1)  # j000 went; the current batch's rest is j001
    planner.add(make_jobs(1, start=9))
    encoded = provider.encoded
    groups = planner.drain_groups()
    assert provider.encoded == encoded
    assert [(model, ids(job_ids)) for _, model, job_ids in groups] == [
        (MODEL, ["j001"]),  # the current batch's rest
        (MODEL, ["j002", "j005", "j006"]),
        ("other-model", ["j003", "j004"]),
        (MODEL, ["j009"]),
    ]
    assert {provider_name for provider_name, _, _ in groups} == {"openai"}
    assert planner.current() is None and planner.drain_groups() == []
    planner.add(make_jobs(2))
    planner.took(2)  # every job of the source went: nothing is handed back
    assert planner.drain_groups() == [] and planner.unsent() is None


def _cached_jobs(n: int, start: int) -> pl.DataFrame:
    """Anthropic jobs of two models, some sharing a long prefix: the prompt cache plan
    moves those side by side (``cluster_order``), so batches are not in input order."""
    doc = "Contract text. " * 400
    prompts = [doc + f"Q{i}?" if i % 2 else f"Unrelated {i}" for i in range(start, start + n)]
    models = ["claude-sonnet-4-6" if i % 3 else "claude-haiku-4-5" for i in range(n)]
    return make_jobs(n, start=start).with_columns(
        pl.lit("anthropic").alias("provider"), pl.Series("prompt", prompts),
        pl.Series("model", models),
    )


@pytest.mark.parametrize("steps", [[], [1], [2, 1], [2, 2, 2], [1, "resend", 3]])
def test_a_stop_cancels_exactly_the_jobs_that_would_still_have_been_sent(steps):
    # The reference encodes and takes every batch left; drain_groups reads ids instead.
    # Either way each unsent job must come back once, with its model: one missing would
    # never end, one extra would be cancelled after it was sent.
    def planner_after_steps() -> tuple[Planner, FakeProvider]:
        provider = FakeProvider(FakeClock())
        planner = Planner({"anthropic": provider}, SPEC, 3)
        planner.add(_cached_jobs(7, 0))
        planner.add(_cached_jobs(4, 20), items_per_batch=2)
        for step in steps:
            if step == "resend":
                planner.resend()
            else:
                planner.took(min(int(step), len(planner.current() or [])))
        return planner, provider

    reference, _ = planner_after_steps()
    expected = []
    while (batch := reference.current()) is not None:
        expected += [(batch.model, job_id) for job_id in batch.job_ids]
        reference.took(len(batch))
    planner, provider = planner_after_steps()
    encoded = provider.encoded
    groups = planner.drain_groups()
    assert provider.encoded == encoded
    got = [(model, job_id) for _, model, job_ids in groups for job_id in job_ids]
    assert sorted(got) == sorted(expected) and len(set(got)) == len(got)
    assert all(provider_name == "anthropic" for provider_name, _, _ in groups)


def test_a_new_date_prices_the_unsent_jobs_again_in_order(provider, monkeypatch):
    # Repricer: the cap's worst case of the jobs not sent yet is computed again on a new
    # date (a price change or a routing its first day's window did not reach); the sent
    # ones and the order are kept; on the same date nothing is asked.
    monkeypatch.setenv(TODAY_VAR, "2026-11-28")
    jobs = make_jobs(5, worst=0.1)
    asked: list[list[str]] = []

    def reprice(rows: pl.DataFrame) -> pl.DataFrame:
        asked.append(ids(rows.get_column("job_id")))
        return rows.with_columns(pl.lit(0.25).alias("worst_usd"))

    def job_rows(job_ids: pl.Series) -> pl.DataFrame:
        return jobs.filter(pl.col("job_id").is_in(job_ids.implode()))

    planner = Planner({"openai": provider}, SPEC, 2)
    planner.add(jobs)
    repricer = Repricer(reprice)
    planner.took(2)  # j000, j001 sent on 2026-11-28
    repricer(planner, job_rows)
    assert asked == []  # the same date
    monkeypatch.setenv(TODAY_VAR, "2026-11-30")
    repricer(planner, job_rows)
    assert asked == [["j002", "j003", "j004"]]
    repricer(planner, job_rows)  # the same new date again: priced once, not every round
    assert asked == [["j002", "j003", "j004"]]
    planned = []
    while (batch := planner.current()) is not None:
        planned.append((ids(batch.job_ids), batch.worst.to_list()))
        planner.took(len(batch))
    assert planned == [(["j002", "j003"], [0.25, 0.25]), (["j004"], [0.25])]
    repricer(planner, job_rows)  # nothing left to price
    assert len(asked) == 1
    assert Repricer(None).reprice is None  # no cap: nothing to price
    # A lone job left unsent is priced and planned again, not lost.
    planner.add(jobs.head(1))
    monkeypatch.setenv(TODAY_VAR, "2026-12-01")
    repricer(planner, job_rows)
    lone = planner.current()
    assert asked[-1] == ["j000"] and lone is not None
    assert (ids(lone.job_ids), lone.worst.to_list()) == (["j000"], [0.25])


@pytest.mark.parametrize(
    ("model", "priced_on", "today", "repriced"),
    [
        # No dated change for gemini-3.5-flash (genai-prices): nothing to price again.
        ("gemini-3.5-flash", "2026-11-28", "2026-11-29", False),
        # gemini-4-argon doubles on 2026-12-01: a batch sent on 11-28 runs to 11-30 at the
        # old price, one sent on 11-29 may run into the new one (its 48 h window).
        ("gemini-4-argon", "2026-11-28", "2026-11-29", True),
        # Sent on 11-29 or 11-30, both windows reach 12-01: the same worst case and price.
        ("gemini-4-argon", "2026-11-29", "2026-11-30", False),
        # On 12-01 the price of the day (the expected cost) is the new one.
        ("gemini-4-argon", "2026-11-30", "2026-12-01", True),
        # gemini-2.5-flash is routed to gemini-3.5-flash-lite from 12-01: sent on 11-29,
        # its window reaches the successor's counts and prices.
        ("gemini-2.5-flash", "2026-11-28", "2026-11-29", True),
    ],
)
def test_a_new_date_prices_again_only_when_the_models_terms_differ(
    provider, monkeypatch, model, priced_on, today, repriced
):
    # A DatedEstimate's terms (the price of the day, the window's highest price, the models
    # that may answer) decide: an unchanged midnight leaves the plan as it is, neither
    # estimated again nor planned again (which would cost CPU and split cached prefixes).
    monkeypatch.setenv(TODAY_VAR, priced_on)
    asked: list[list[str]] = []

    def estimate(rows: pl.DataFrame) -> pl.DataFrame:
        asked.append(ids(rows.get_column("job_id")))
        return rows.with_columns(pl.lit(0.25).alias("worst_usd"))

    jobs = make_jobs(5, worst=0.1)
    dated = DatedEstimate(
        estimate, PriceTable(), pl.DataFrame({"provider": ["gemini"], "model": [model]})
    )
    planner = Planner({"openai": provider}, SPEC, 2)
    planner.add(jobs)
    repricer = Repricer(dated)
    planner.took(2)
    monkeypatch.setenv(TODAY_VAR, today)

    def job_rows(job_ids: pl.Series) -> pl.DataFrame:
        return jobs.filter(pl.col("job_id").is_in(job_ids.implode()))

    repricer(planner, job_rows)
    assert asked == ([["j002", "j003", "j004"]] if repriced else [])
    # Rows planned again from the job table (a queue-limit refusal) follow the same rule.
    again = repricer.rows(job_rows, pl.Series(["j000"]))
    assert again.get_column("worst_usd").to_list() == ([0.25] if repriced else [0.1])
    planned = []
    while (batch := planner.current()) is not None:
        planned.append((ids(batch.job_ids), batch.worst.to_list()))
        planner.took(len(batch))
    worst = 0.25 if repriced else 0.1
    assert planned == [(["j002", "j003"], [worst, worst]), (["j004"], [worst])]


class _Terms:
    """A price table whose every model's terms on a day are ``moved(day)``."""

    def __init__(self, moved: Callable[[date], object]) -> None:
        self.moved = moved

    def terms(self, provider: str, model: str, day: date) -> tuple[object, ...]:
        return (self.moved(day),)


def _counting() -> tuple[list[int], Callable[[pl.DataFrame], pl.DataFrame]]:
    """An estimate that records how many rows it is given, and gives them back."""
    asked: list[int] = []

    def estimate(rows: pl.DataFrame) -> pl.DataFrame:
        asked.append(rows.height)
        return rows

    return asked, estimate


def test_a_date_between_with_other_terms_prices_again(provider, monkeypatch):
    # Rows priced on 11-28 compared on 11-30 count 11-29 too: a streamed call prices the
    # rows it reads on the day it reads them, so terms that moved and came back still
    # mean rows priced at other figures.
    terms = _Terms(lambda day: day == date(2026, 11, 29))  # moved on 11-29 only
    asked, estimate = _counting()
    monkeypatch.setenv(TODAY_VAR, "2026-11-28")
    jobs = make_jobs(3, worst=0.1)
    repricer = Repricer(DatedEstimate(estimate, terms, jobs))  # type: ignore[arg-type]
    monkeypatch.setenv(TODAY_VAR, "2026-11-30")
    repricer.rows(lambda job_ids: jobs, pl.Series(["j000"]))
    assert asked == [3]
    # Remembered models: those of the first rows, and of every row estimated since.
    seen = DatedEstimate(estimate, terms, jobs)  # type: ignore[arg-type]
    seen(make_jobs(1, model="other-model"))
    assert seen.pairs == {("openai", MODEL), ("openai", "other-model")}


def test_a_date_moved_back_prices_again(provider, monkeypatch):
    # A pinned date (BATCHATA_DF_TODAY) set back to before the day the jobs were priced:
    # no day between to compare, the rows are priced again (the earlier day's terms
    # differ here: an empty comparison must not read as "nothing changed").
    asked, estimate = _counting()
    monkeypatch.setenv(TODAY_VAR, "2026-11-30")
    jobs = make_jobs(3, worst=0.1)
    terms = _Terms(lambda day: day >= date(2026, 11, 30))
    repricer = Repricer(DatedEstimate(estimate, terms, jobs))  # type: ignore[arg-type]
    planner = Planner({"openai": provider}, SPEC, 2)
    planner.add(jobs)
    monkeypatch.setenv(TODAY_VAR, "2026-11-28")
    repricer.rows(lambda job_ids: jobs.filter(pl.col("job_id").is_in(job_ids.implode())),
                  pl.Series(["j000"]))  # fmt: skip
    repricer(planner, lambda job_ids: jobs.filter(pl.col("job_id").is_in(job_ids.implode())))
    assert asked == [1, 3]


def test_a_driver_made_later_counts_from_the_day_its_jobs_were_priced(provider, monkeypatch):
    # The job table was priced on 11-28 (DatedEstimate.priced_on); the driver is made on
    # 12-01 (after waiting for the state folder's lock, or an auto call's earlier phase):
    # gemini-4-argon doubled since, so its first round prices the unsent jobs again, and
    # rows fetched from the table (a refused batch) are priced again too.
    asked: list[list[str]] = []

    def estimate(rows: pl.DataFrame) -> pl.DataFrame:
        asked.append(ids(rows.get_column("job_id")))
        return rows.with_columns(pl.lit(0.25).alias("worst_usd"))

    jobs = make_jobs(3, worst=0.1)
    pairs = pl.DataFrame({"provider": ["gemini"], "model": ["gemini-4-argon"]})
    monkeypatch.setenv(TODAY_VAR, "2026-12-01")
    dated = DatedEstimate(estimate, PriceTable(), pairs, priced_on=date(2026, 11, 28))
    repricer = Repricer(dated)
    planner = Planner({"openai": provider}, SPEC, 2)
    planner.add(jobs)

    def job_rows(job_ids: pl.Series) -> pl.DataFrame:
        return jobs.filter(pl.col("job_id").is_in(job_ids.implode()))

    again = repricer.rows(job_rows, pl.Series(["j000"]))
    assert again.get_column("worst_usd").to_list() == [0.25]
    repricer(planner, job_rows)
    assert asked == [["j000"], ["j000", "j001", "j002"]]
    # Without a day (a streamed call's rows are priced when read): from the day it is made.
    assert Repricer(DatedEstimate(estimate, PriceTable(), pairs)).started_on == date(2026, 12, 1)


# -- requeue after a queue-limit refusal ------------------------------------------------------


def refused_batch(tmp_path, provider, job_ids, batch_id="fb_9"):
    ctx, _ = make_run(tmp_path, provider)
    return ctx, in_flight(ctx, batch_id, job_ids)


def test_refused_jobs_wait_for_a_batch_of_the_same_model_to_end(tmp_path, provider):
    clock = provider.clock
    requeue = Requeue(clock, lambda: Backoff(5.0, 60.0, 2.0))
    ctx, batch = refused_batch(tmp_path, provider, ["j000", "j001", "j002", "j003"])
    other = in_flight(ctx, "fb_1", ["j010"])
    assert requeue.refused(batch, others=1, too_big=False)
    item = requeue.items[0]
    assert (item.gate, item.max_items, item.not_before) == (1, 4, clock.monotonic())
    assert requeue.take([other]) is None  # the other batch still holds the queue
    # Nothing to wake for but that batch's polls: a wake already due would spin the
    # run's loop (sleep(0) every round) until the other batch ends.
    assert requeue.next_wake([other]) is None
    assert requeue.next_wake([]) == clock.monotonic()
    job_ids, max_items = requeue.take([])  # type: ignore[misc]
    assert ids(job_ids) == ["j000", "j001", "j002", "j003"] and max_items == 4
    assert requeue.items == []


def test_a_refused_batch_alone_is_halved_and_waits_on_a_growing_timer(tmp_path, provider):
    clock = provider.clock
    requeue = Requeue(clock, lambda: Backoff(5.0, 60.0, 2.0))
    _, batch = refused_batch(tmp_path, provider, ["j000", "j001", "j002", "j003", "j004"])
    assert requeue.refused(batch, others=0, too_big=False)
    assert requeue.items[0].max_items == 2
    assert requeue.next_wake() == clock.monotonic() + 5.0
    clock.advance(4.9)
    assert requeue.take([]) is None
    clock.advance(0.1)
    assert requeue.take([]) is not None
    assert requeue.refused(batch, others=0, too_big=False)
    assert requeue.next_wake() == clock.monotonic() + 10.0  # the timer grows


def test_refusals_fail_after_the_patience_and_a_collected_batch_resets_it(tmp_path, provider):
    clock = provider.clock
    requeue = Requeue(clock, lambda: Backoff(1.0, 60.0, 2.0), patience_s=100.0)
    _, batch = refused_batch(tmp_path, provider, ["j000", "j001"])
    assert requeue.refused(batch, others=0, too_big=False)
    clock.advance(100.0)
    assert requeue.refused(batch, others=0, too_big=False)  # at the patience: still waits
    clock.advance(0.5)
    assert not requeue.refused(batch, others=0, too_big=False)
    requeue.accepted("openai", MODEL)
    assert requeue.refused(batch, others=0, too_big=False)
    assert not requeue.refused(batch, others=0, too_big=True)


def test_the_default_patience_is_the_module_constant(tmp_path, provider, monkeypatch):
    import batchata_df.engine.planning as planning

    monkeypatch.setattr(planning, "RATE_LIMIT_PATIENCE_S", 7.0)
    assert Requeue(provider.clock, lambda: Backoff(1.0, 2.0, 2.0)).patience_s == 7.0


def test_drain_returns_every_waiting_job(tmp_path, provider):
    requeue = Requeue(provider.clock, lambda: Backoff(1.0, 60.0, 2.0))
    ctx, a = refused_batch(tmp_path, provider, ["j000"], "fb_1")
    b = in_flight(ctx, "fb_2", ["j001", "j002"])
    requeue.refused(a, others=0, too_big=False)
    requeue.refused(b, others=0, too_big=False)
    assert ids(requeue.drain()) == ["j000", "j001", "j002"]
    assert requeue.drain() is None and requeue.next_wake() is None


def test_queue_limit_refusals_are_told_from_other_failures():
    def failed(detail):
        return BatchPoll(ProviderState.FAILED, "failed", detail)

    assert queue_limit_refusal(failed("token_limit_exceeded: Enqueued token limit reached"))
    assert queue_limit_refusal(failed("Rate_Limit hit"))
    assert not queue_limit_refusal(failed("invalid_request: bad line"))
    assert not queue_limit_refusal(failed(None))


def test_a_lone_request_over_the_named_limit_never_fits():
    job = make_jobs(1).with_columns(pl.lit("word " * 400).alias("prompt"))
    detail = "token_limit_exceeded: Enqueued token limit reached for gpt-4o. Limit: 90"
    assert over_named_limit(job, "openai", "gpt-4o", detail)
    assert not over_named_limit(job, "openai", "gpt-4o", detail.replace("90", "90,000"))
    assert not over_named_limit(job, "openai", "gpt-4o", "token_limit_exceeded")


def test_the_named_limit_counts_the_system_prompt_and_a_request_at_the_limit_fits():
    from batchata_df.tokens import estimate_request_tokens

    job = make_jobs(1).with_columns(
        pl.lit("short question").alias("prompt"), pl.lit("word " * 300).alias("system")
    )
    tokens = int(estimate_request_tokens(job["prompt"], "openai", "gpt-4o",
                                         system=job["system"])[0])
    alone = int(estimate_request_tokens(job["prompt"], "openai", "gpt-4o")[0])
    assert alone < tokens - 250  # the system prompt is most of the request
    limit = "token_limit_exceeded: Enqueued token limit reached for gpt-4o. Limit: {:,}"
    # Over the limit only with its system prompt counted: it never fits.
    assert over_named_limit(job, "openai", "gpt-4o", limit.format(tokens - 1))
    # Exactly at the limit it fits (it waits instead of failing).
    assert not over_named_limit(job, "openai", "gpt-4o", limit.format(tokens))


def test_a_split_batch_keeps_its_bytes_worst_case_and_input_part(provider):
    jobs = make_jobs(5, worst=0.2, est_input_tokens=100_000)
    [plan] = plan_batches(jobs, {"openai": provider}, SPEC, None)
    head, tail = plan.head(2), plan.tail(2)
    # Each line's bytes plus the provider's framing (1 byte per line for the fake).
    assert head.n_bytes == sum(len(line.encode()) + 1 for line in plan.lines[:2])
    assert tail.n_bytes == sum(len(line.encode()) + 1 for line in plan.lines[2:])
    assert head.n_bytes + tail.n_bytes == plan.n_bytes
    assert (head.worst.to_list(), tail.worst.to_list()) == ([0.2] * 2, [0.2] * 3)
    # The input part stays with the jobs, so calibration can still scale their worst case.
    assert head.est_input_usd is not None and tail.est_input_usd is not None
    assert (head.est_input_usd.to_list(), tail.est_input_usd.to_list()) == ([0.1] * 2, [0.1] * 3)
    assert head.has_estimates and tail.has_estimates


def test_taking_from_an_empty_plan_is_a_bug_named_as_such(provider):
    planner = Planner({"openai": provider}, SPEC, None)
    with pytest.raises(RuntimeError) as raised:
        planner.took(1)
    assert str(raised.value) == "took() with no batch planned"


def test_each_split_batch_carries_the_input_estimates_of_its_own_jobs(provider):
    jobs = make_jobs(5, worst=1.0).with_columns(
        pl.Series("est_input_usd", [0.1, 0.2, 0.3, 0.4, 0.5]),
        pl.Series("est_input_tokens", [10, 20, 30, 40, 50]))
    planned = list(plan_batches(jobs, {"openai": provider}, SPEC, items_per_batch=2))
    assert [ids(p.job_ids) for p in planned] == [["j000", "j001"], ["j002", "j003"], ["j004"]]
    assert [p.est_input_usd.to_list() for p in planned] == [[0.1, 0.2], [0.3, 0.4], [0.5]]
    assert [p.worst.to_list() for p in planned] == [[1.0, 1.0], [1.0, 1.0], [1.0]]
    # The tokens calibration compares with the billed ones: beside the same jobs, also
    # when the cap sends a batch's head and keeps its tail.
    assert [p.est_input.to_list() for p in planned] == [[10, 20], [30, 40], [50]]
    head, tail = planned[0].head(1), planned[0].tail(1)
    assert (head.est_input.to_list(), tail.est_input.to_list()) == ([10], [20])
    assert plan_batches(make_jobs(1), {"openai": provider}, SPEC, None).__next__().est_input \
        is None  # no estimates: nothing to compare


def test_models_are_planned_in_the_order_their_first_row_appears(provider):
    """Many models, first seen in an order no hash or sort would give: batches follow it."""
    models = [f"m{(i * 7) % 12:02d}" for i in range(12)]
    jobs = pl.concat(
        [make_jobs(1, model=m, start=i) for i, m in enumerate(models)]
        + [make_jobs(1, model=m, start=12 + i) for i, m in enumerate(reversed(models))]
    )
    planned = list(plan_batches(jobs, {"openai": provider}, SPEC, None))
    assert [p.model for p in planned] == models
    assert [ids(p.job_ids) for p in planned] == [
        [f"j{i:03d}", f"j{23 - i:03d}"] for i in range(12)
    ]


def test_without_estimates_every_job_of_a_batch_has_a_zero_worst_case(provider):
    """``worst`` is per job, as long as the batch, even when nothing was estimated; a split
    keeps it aligned with its jobs."""
    planned = list(plan_batches(make_jobs(5), {"openai": provider}, SPEC, 3))
    assert [(ids(p.job_ids), p.worst.to_list(), p.has_estimates) for p in planned] == [
        (["j000", "j001", "j002"], [0.0, 0.0, 0.0], False),
        (["j003", "j004"], [0.0, 0.0], False),
    ]
    first = planned[0]
    assert first.tail(1).worst.to_list() == [0.0, 0.0]
    assert first.head(1).worst.to_list() == [0.0]


@pytest.mark.parametrize(("model", "order"), [
    # 1,024 tokens at least for Sonnet 4.6: the two prompts sharing a ~1,600-token contract
    # go side by side, the unrelated one after them.
    ("claude-sonnet-4-6", ["j000", "j002", "j001"]),
    # 4,096 for Haiku 4.5: nothing is worth caching, the input order stays.
    ("claude-haiku-4-5", ["j000", "j001", "j002"]),
])
def test_the_prompt_cache_plan_uses_the_batch_s_own_model_minimum(provider, model, order):
    doc = "Contract text. " * 400
    jobs = make_jobs(3, model=model).with_columns(
        pl.lit("anthropic").alias("provider"),
        pl.Series("prompt", [doc + "Q: who?", "Unrelated", doc + "Q: when?"]),
    )
    [planned] = plan_batches(jobs, {"anthropic": provider}, SPEC, None)
    assert SPEC.prompt_caching
    assert (planned.model, ids(planned.job_ids)) == (model, order)
