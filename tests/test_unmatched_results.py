"""A billed result line whose id matches no request: its usage still counts as spent.

A byte damaged on its way inside a result line's id (``custom_id``; Gemini's ``key``) left
a line no row could be given: the left join of the batch's members dropped it with its
usage, the row ended ``missing_result`` at $0, and neither ``max_cost_usd`` nor
``batchata-df status``/``sql`` saw what the provider billed for it; ``retry_failed=True``
then paid for the request again without the cap knowing the first payment (mutation
review, session of 2026-11-30). The emulator's fault action ``corrupt_id`` serves such a
file (bytes never UTF-8 inside the first line's id, served so every time).

Now the line's usage is kept under its own id (``unmatched:<batch_key>:<n>``, a failed
event with the line's tokens, text and cost) and counts as spent everywhere; the row ends
``failed`` ``missing_result`` naming it, and ``retry_failed=True`` sends it again with
both payments counted. The emulator's billing ledger is the judge.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner

from batchata_df import batch_llm, query
from batchata_df.cli import cli
from batchata_df.engine import ProgressSnapshot
from batchata_df.engine.collection import UNMATCHED_PREFIX
from batchata_df.providers.gemini import GeminiProvider
from batchata_df.state import spent_usd

MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5",
          "gemini": "gemini-2.5-flash"}  # fmt: skip
DOWNLOADS = {"openai": r"/openai/v1/files/[^/]+/content",
             "anthropic": r"/messages/batches/[^/]+/results",
             "gemini": r"(:download|/download/)"}  # fmt: skip
PROVIDERS = ["openai", "anthropic", "gemini"]
INLINE_MAX_BYTES = GeminiProvider.inline_max_bytes  # before the fixture below changes it
BATCH_GET = r"/gemini/v1beta/batches/[^/:]+$"  # the batch resource: inline results
DF = pl.DataFrame({"t": [f"review {i}" for i in range(4)]})


@pytest.fixture(autouse=True)
def _gemini_through_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    # Gemini returns a small batch's results inline; every batch here has a result file.
    monkeypatch.setattr(GeminiProvider, "inline_max_bytes", 10)


def _kwargs(provider: str, state: Any) -> dict[str, Any]:
    return {"model": MODELS[provider], "prompt": "{t}", "state": str(state),
            "progress": False, "provider_patience": 20.0}  # fmt: skip


def _reference(emu: Any, provider: str, tmp_path: Any) -> pl.DataFrame:
    """What each row costs undisturbed (the same rows: the same answers and usage)."""
    ref = batch_llm(DF, **_kwargs(provider, tmp_path / "ref"))
    assert ref["_status"].to_list() == ["completed"] * DF.height
    emu.reset()
    return ref


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_line_whose_id_was_damaged_keeps_its_billed_usage_as_spent(
    emu, tmp_path, provider: str
) -> None:
    ref = _reference(emu, provider, tmp_path)
    emu.inject_fault(method="GET", path_regex=DOWNLOADS[provider], action="corrupt_id",
                     times=None)  # fmt: skip
    state = tmp_path / "s"
    seen: list[ProgressSnapshot] = []
    out = batch_llm(DF, **{**_kwargs(provider, state), "progress": seen.append})
    billed = [b["custom_id"] for b in emu.billing()]
    assert len(billed) == 4 and len(set(billed)) == 4  # each request billed once
    # The row whose line lost its id fails as data, naming where its usage went.
    failed = out.filter(pl.col("_status") == "failed")
    assert failed.height == 1 and out.height == 4, out["_error"].to_list()
    error = failed["_error"][0]
    assert error.startswith("missing_result: the provider returned no result under this "
                            "request's id, and 1 result line of its batch carried an id")
    assert f"kept under job id {UNMATCHED_PREFIX}" in error and "retry_failed=True" in error
    assert failed["_cost_usd"][0] == 0  # not its own: no line was matched to it
    # What the provider billed (every request once, as the reference run) is what the
    # folder counts as spent: the cap's figure, and the jobs view's sum.
    assert spent_usd(state) == pytest.approx(ref["_cost_usd"].sum())
    total = query.sql("select sum(cost_usd) usd from jobs", str(state))["usd"][0]
    assert total == pytest.approx(ref["_cost_usd"].sum())
    kept = query.sql(f"select * from jobs where job_id like '{UNMATCHED_PREFIX}%'", str(state))
    assert kept.height == 1
    line = kept.row(0, named=True)
    assert line["status"] == query.UNATTRIBUTED  # not a failed job: money not attributed to a row
    assert line["error"].startswith("unmatched_result: ")
    assert "\ufffd" in line["error"]  # the id as read, damaged
    lost_row = ref.join(failed.select("t"), on="t")
    assert line["cost_usd"] == pytest.approx(lost_row["_cost_usd"][0])  # that row's answer
    assert line["input_tokens"] == lost_row["_input_tokens"][0]
    # The progress counted the call's 4 rows, not the kept line (not a row of the call).
    last = seen[-1]
    assert (last.total, last.completed, last.failed, last.pending) == (4, 3, 1, 0)
    # batchata-df status shows it among the folder's costs; doctor finds the folder whole.
    shown = CliRunner().invoke(cli, ["status", str(state)])
    assert shown.exit_code == 0 and "failed" in shown.output
    assert CliRunner().invoke(cli, ["doctor", str(state)]).exit_code == 0


def test_a_gemini_inline_result_whose_key_was_damaged_keeps_its_usage(
    emu, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GeminiProvider, "inline_max_bytes", INLINE_MAX_BYTES)
    ref = _reference(emu, "gemini", tmp_path)
    # Every read of the batch resource: its first inline result's metadata.key damaged.
    emu.inject_fault(method="GET", path_regex=BATCH_GET, action="corrupt_id", times=None)
    state = tmp_path / "s"
    out = batch_llm(DF, **_kwargs("gemini", state))
    assert not any("download" in e["path"] for e in emu.log())  # inline, not a file
    assert out["_status"].sort().to_list() == ["completed"] * 3 + ["failed"]
    assert out.filter(pl.col("_status") == "failed")["_error"][0].startswith("missing_result:")
    assert len(emu.billing()) == 4
    assert spent_usd(state) == pytest.approx(ref["_cost_usd"].sum())


def test_a_one_row_batch_whose_only_line_lost_its_id_is_not_taken_for_another_batch(
    emu, tmp_path
) -> None:
    # None of the results' ids is the batch's: the check meant for a batch adopted after
    # a crash that is someone else's abandoned it, and the row went back to the queue to
    # be paid again. A damaged id (U+FFFD as read) is no one's: the batch is ours.
    one = DF.head(1)
    emu.inject_fault(method="GET", path_regex=DOWNLOADS["openai"], action="corrupt_id",
                     times=None)  # fmt: skip
    state = tmp_path / "s"
    out = batch_llm(one, **_kwargs("openai", state))
    assert out["_status"].to_list() == ["failed"]
    assert out["_error"][0].startswith("missing_result: "), out["_error"][0]
    assert len(emu.billing()) == 1
    assert spent_usd(state) > 0
    again = batch_llm(one, **_kwargs("openai", state))  # nothing left to send
    assert again["_status"].to_list() == ["failed"] and len(emu.billing()) == 1
    batches = query.sql("select status from batches", str(state))["status"].to_list()
    assert batches == ["collected"]


def test_the_cap_counts_the_unmatched_line_before_the_row_is_sent_again(emu, tmp_path) -> None:
    provider = "openai"
    ref = _reference(emu, provider, tmp_path)
    emu.inject_fault(method="GET", path_regex=DOWNLOADS[provider], action="corrupt_id",
                     times=None)  # fmt: skip
    state = tmp_path / "s"
    out = batch_llm(DF, **_kwargs(provider, state))
    emu.clear_faults()
    failed = out.filter(pl.col("_status") == "failed")
    row_cost = float(ref.join(failed.select("t"), on="t")["_cost_usd"][0])
    spent = spent_usd(state)
    # The resend's worst case, from a dry run; then a cap it fits under only if the
    # unmatched line were not counted (half of its cost short of room).
    plan = batch_llm(DF, retry_failed=True, dry_run=True, max_cost_usd=1.0,
                     **_kwargs(provider, state))
    worst = float(plan.filter(pl.col("_est_cost_usd").is_not_null())["_est_cost_usd"].sum())
    cap = spent - row_cost + worst + row_cost / 2
    plan = batch_llm(DF, retry_failed=True, dry_run=True, max_cost_usd=cap,
                     **_kwargs(provider, state))
    assert not plan["_within_cap"].fill_null(False).any()
    again = batch_llm(DF, retry_failed=True, max_cost_usd=cap, **_kwargs(provider, state))
    assert len(emu.billing()) == 4  # not sent: the first payment is counted
    assert again.filter(pl.col("t") == failed["t"][0])["_error"][0].startswith(
        "cancelled: cost_limit")
    # With room, it is sent again and answered; both payments are the folder's spend.
    done = batch_llm(DF, retry_failed=True, max_cost_usd=1.0, **_kwargs(provider, state))
    assert done["_status"].to_list() == ["completed"] * 4
    assert len(emu.billing()) == 5
    assert spent_usd(state) == pytest.approx(ref["_cost_usd"].sum() + row_cost)


def test_within_a_call_the_cap_counts_each_unmatched_line_when_its_batch_is_collected(
    emu, tmp_path
) -> None:
    # One row per batch, one batch at a time, every line's id damaged: each batch's cost
    # is only its unmatched line. The cap holds a worst case per batch; counted as spent
    # when collected, the lines leave room for two batches; not counted, all four went.
    provider = "openai"
    ref = _reference(emu, provider, tmp_path)
    plan = batch_llm(DF, dry_run=True, max_cost_usd=1.0, **_kwargs(provider, tmp_path / "p"))
    worst = float(plan["_est_cost_usd"].max())
    cost = ref["_cost_usd"]
    assert float(cost.max()) < 1.4 * float(cost.min())  # alike rows: the bounds below hold
    cap = worst + 1.5 * float(cost.min())
    emu.inject_fault(method="GET", path_regex=DOWNLOADS[provider], action="corrupt_id",
                     times=None)  # fmt: skip
    state = tmp_path / "s"
    out = batch_llm(DF, items_per_batch=1, max_parallel_batches=1, max_cost_usd=cap,
                    **_kwargs(provider, state))  # fmt: skip
    assert len(emu.billing()) == 2, out["_error"].to_list()
    assert out["_error"].str.starts_with("missing_result:").sum() == 2
    assert out["_error"].str.starts_with("cancelled: cost_limit").sum() == 2
    sent = out.filter(pl.col("_error").str.starts_with("missing_result:")).select("t")
    assert spent_usd(state) == pytest.approx(float(ref.join(sent, on="t")["_cost_usd"].sum()))


def test_the_cli_summary_counts_the_unmatched_line(emu, tmp_path) -> None:
    # The installed command (a streamed run): its summary is the folder's bill, the
    # unmatched line included, more than the rows' own costs.
    DF.write_csv(tmp_path / "in.csv")
    emu.inject_fault(method="GET", path_regex=DOWNLOADS["openai"], action="corrupt_id",
                     times=None)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("batchata-df")), "run", "in.csv", "out.csv",
         "--model", MODELS["openai"], "--prompt", "{t}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr  # a row failed
    said = re.search(r"3 completed, 1 failed; \$([\d.]+) \(\$([\d.]+) of it for 1 billed "
                     r"result line not attributed to a row \(its id matched none of its "
                     r"batch's requests; max_cost_usd counts it as spent; batchata-df status "
                     r"lists it\)\); written", done.stderr)  # fmt: skip
    assert said, done.stderr
    rows = pl.read_csv(tmp_path / "out.csv")["_cost_usd"].sum()
    spent = spent_usd(tmp_path / "out.csv.state")
    assert float(said[1]) == pytest.approx(spent, rel=0.05) and spent > rows * 1.1
    assert float(said[1]) - float(said[2]) == pytest.approx(rows, rel=0.05)
    assert len(emu.billing()) == 4


def test_counts_by_status_count_rows_and_show_the_unattributed_spend_apart(
    emu, tmp_path
) -> None:
    # The kept line was counted as a failed job wherever jobs were counted by status: after
    # its row's resend was answered, a 4-row folder showed "4 completed, 1 failed" in
    # `batchata-df status` (and failures_by_error, and the README's queries), though every
    # row had completed (left-outs of session 16). Now the line is its own status in the
    # jobs view (query.UNATTRIBUTED): counts of jobs count rows, its cost stays in the bill.
    provider = "openai"
    ref = _reference(emu, provider, tmp_path)
    emu.inject_fault(method="GET", path_regex=DOWNLOADS[provider], action="corrupt_id",
                     times=None)  # fmt: skip
    state = tmp_path / "s"
    first = batch_llm(DF, **_kwargs(provider, state))
    emu.clear_faults()
    lost = first.filter(pl.col("_status") == "failed")
    row_cost = float(ref.join(lost.select("t"), on="t")["_cost_usd"][0])
    seen: list[ProgressSnapshot] = []
    out = batch_llm(DF, retry_failed=True, **{**_kwargs(provider, state), "progress": seen.append})
    assert out["_status"].to_list() == ["completed"] * 4
    assert (seen[-1].completed, seen[-1].failed) == (4, 0)
    billed = ref["_cost_usd"].sum() + row_cost  # every row once, the lost row's answer twice
    assert len(emu.billing()) == 5
    by_status = query.sql("select status, count(*) n, sum(cost_usd) usd from jobs "
                          "group by all order by status", str(state))  # the README's query
    assert by_status.select("status", "n").rows() == [("completed", 4), (query.UNATTRIBUTED, 1)]
    assert by_status["usd"].sum() == pytest.approx(billed) == spent_usd(state)
    assert query.failures_by_error(str(state)).height == 0
    rows = query.cost_by_status(str(state))
    assert rows.select("status", "n_jobs").rows() == [("completed", 4)]
    apart = query.unattributed_spend(str(state))
    assert apart.select("provider", "model", "n_lines").row(0) == ("openai", MODELS[provider], 1)
    assert apart["cost_usd"][0] == pytest.approx(row_cost)
    assert rows["cost_usd"].sum() + apart["cost_usd"].sum() == pytest.approx(billed)
    # The installed command: the rows' table without a failed row, the line listed apart.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    shown = subprocess.run([str(Path(sys.executable).with_name("batchata-df")), "status",
                            str(state)], env=env, capture_output=True, text=True, timeout=240)
    assert shown.returncode == 0, shown.stderr
    table, _, rest = shown.stdout.partition("billed result lines not attributed to a row")
    assert "completed" in table and "failed" not in table and "unattributed" not in table
    assert rest and "n_lines" in rest and "missing_result" in rest
    assert UNMATCHED_PREFIX == query._UNMATCHED_IDS


# -- ids that come back null or rewritten to other valid text (e.g. a gateway) ---------------

PROVIDER_CLASSES = {"openai": ("batchata_df.providers.openai", "OpenAIProvider"),
                    "anthropic": ("batchata_df.providers.anthropic", "AnthropicProvider"),
                    "gemini": ("batchata_df.providers.gemini", "GeminiProvider")}  # fmt: skip


def _rewrite_ids(monkeypatch: pytest.MonkeyPatch, provider: str, how: str) -> None:
    """Every result line the SDK downloads from the emulator comes back under another id:
    null, or rewritten to other valid text (a gateway rewriting ``custom_id``)."""
    import importlib

    module, name = PROVIDER_CLASSES[provider]
    cls = getattr(importlib.import_module(module), name)
    real = cls.results

    def results(self: Any, batch_id: str, spec: Any) -> pl.DataFrame:
        got = real(self, batch_id, spec)
        assert got.height  # the real download, from the emulator, through the SDK
        if how == "null":
            new = pl.lit(None, dtype=pl.String)
        else:
            new = pl.col("job_id").str.slice(0, 23) + pl.lit("X")
        return got.with_columns(new.alias("job_id"))

    monkeypatch.setattr(cls, "results", results)


@pytest.mark.parametrize(
    ("provider", "how"),
    [("openai", "null"), ("openai", "rewritten"), ("anthropic", "null"),
     ("anthropic", "rewritten"), ("gemini", "null"), ("gemini", "rewritten")],
)  # fmt: skip
def test_our_own_batch_whose_ids_came_back_null_or_rewritten_is_billed_once(
    emu, tmp_path, monkeypatch: pytest.MonkeyPatch, provider: str, how: str
) -> None:
    # A batch this call created and recorded is ours whatever its lines' ids say: it was
    # abandoned as "found after a crash, someone else's", its row stayed pending at $0
    # spent, and every further call paid for it again unseen by max_cost_usd.
    one = DF.head(1)
    ref = _reference_of(emu, provider, tmp_path, one)
    _rewrite_ids(monkeypatch, provider, how)
    state = tmp_path / "s"
    out = batch_llm(one, **_kwargs(provider, state))
    assert out["_status"].to_list() == ["failed"]
    error = out["_error"][0]
    assert error.startswith("missing_result: the provider returned no result under this "
                            "request's id, and 1 result line"), error
    assert len(emu.billing()) == 1
    assert spent_usd(state) == pytest.approx(ref["_cost_usd"].sum()) and spent_usd(state) > 0
    kept = query.sql(f"select * from jobs where job_id like '{UNMATCHED_PREFIX}%'", str(state))
    assert kept.height == 1 and kept["input_tokens"][0] == ref["_input_tokens"][0]
    said = "'(none)'" if how == "null" else "X'"
    assert said in kept["error"][0]
    # A second call sends nothing: the row failed; with retry_failed the cap knows the
    # first payment (a cap below both payments stops the resend).
    again = batch_llm(one, **_kwargs(provider, state))
    assert again["_status"].to_list() == ["failed"] and len(emu.billing()) == 1
    capped = batch_llm(one, retry_failed=True, max_cost_usd=spent_usd(state) * 1.5,
                       **_kwargs(provider, state))  # fmt: skip
    assert len(emu.billing()) == 1, capped["_error"].to_list()
    assert capped["_error"][0].startswith("cancelled: cost_limit")
    batches = query.sql("select status from batches", str(state))["status"].to_list()
    assert "abandoned" not in batches and "collected" in batches


def _reference_of(emu: Any, provider: str, tmp_path: Any, df: pl.DataFrame,
                  **kwargs: Any) -> pl.DataFrame:  # fmt: skip
    ref = batch_llm(df, **{**_kwargs(provider, tmp_path / "ref"), **kwargs})
    assert ref["_status"].to_list() == ["completed"] * df.height
    emu.reset()
    return ref


def test_unmatched_lines_keep_cache_usage_raw_text_and_ids_unique_across_batches(
    emu, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows sharing a long cached prefix (Anthropic cache reads and writes), two batches,
    # every line's id rewritten: each unmatched line keeps its cached and cache-write
    # tokens (what the bill is priced from), its text, and an id of its own in the folder.
    doc = "The supplier shall deliver the goods within thirty days of the order date. " * 150
    df = pl.DataFrame({"doc": [doc] * 4, "q": [f"q{i}?" for i in range(4)]})
    extra = {"keep_raw": True, "items_per_batch": 2, "max_parallel_batches": 1,
             "prompt": "Read this contract:\n{doc}\n\nQuestion: {q}",
             "params": {"max_tokens": 3000},  # as tests/test_prompt_caching.py
             "model": "claude-sonnet-4-6"}  # minimum cacheable prompt: 1,024 tokens
    ref = _reference_of(emu, "anthropic", tmp_path, df, **extra)
    billed = query.sql("select * from jobs", str(tmp_path / "ref"))
    assert billed["cached_tokens"].fill_null(0).sum() > 0
    assert billed["cache_write_tokens"].fill_null(0).sum() > 0
    _rewrite_ids(monkeypatch, "anthropic", "rewritten")
    state = tmp_path / "s"
    out = batch_llm(df, **{**_kwargs("anthropic", state), **extra})
    assert out["_batch_id"].n_unique() == 2
    assert out["_status"].to_list() == ["failed"] * 4 and len(emu.billing()) == 4
    kept = query.sql(f"select * from jobs where job_id like '{UNMATCHED_PREFIX}%'", str(state))
    assert kept.height == 4 and kept["job_id"].n_unique() == 4  # two batches, 4 ids
    for column in ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens"):
        assert kept[column].fill_null(0).sum() == billed[column].fill_null(0).sum(), column
    assert sorted(kept["raw"].to_list()) == sorted(ref["_raw"].to_list())
    assert spent_usd(state) == pytest.approx(ref["_cost_usd"].sum())


def test_a_gemini_result_that_came_back_without_its_key_keeps_its_usage(
    emu, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # decode_lines dropped a line without a key, usage and all: the row ended
    # missing_result at $0 while the provider billed its answer.
    import json

    import batchata_df.providers.gemini as gemini

    monkeypatch.setattr(GeminiProvider, "inline_max_bytes", INLINE_MAX_BYTES)
    one = DF.head(1)
    ref = _reference_of(emu, "gemini", tmp_path, one)
    real = gemini._inlined_lines

    def without_keys(responses: Any) -> bytes:
        lines = [json.loads(line) for line in real(responses).splitlines()]
        assert lines and all(line["key"] for line in lines)  # the emulator's, via the SDK
        return "\n".join(json.dumps({**line, "key": None}) for line in lines).encode()

    monkeypatch.setattr(gemini, "_inlined_lines", without_keys)
    state = tmp_path / "s"
    out = batch_llm(one, **_kwargs("gemini", state))
    assert out["_status"].to_list() == ["failed"]
    assert out["_error"][0].startswith("missing_result:") and UNMATCHED_PREFIX in out["_error"][0]
    assert len(emu.billing()) == 1
    assert spent_usd(state) == pytest.approx(ref["_cost_usd"].sum()) and spent_usd(state) > 0


def test_the_cli_prices_an_unmatched_line_of_an_unpriced_model_with_price(emu, tmp_path) -> None:
    # A model without a known price: its unmatched line's cost is not stored, and a later
    # run with --price prices it (as it prices the rows) instead of counting it as $0.
    DF.write_csv(tmp_path / "in.csv")
    emu.inject_fault(method="GET", path_regex=DOWNLOADS["openai"], action="corrupt_id",
                     times=None)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    exe = str(Path(sys.executable).with_name("batchata-df"))
    base = [exe, "run", "in.csv", "out.csv", "--model", "gpt-6-terra", "--prompt", "{t}"]
    first = subprocess.run(base, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=240)  # fmt: skip
    assert first.returncode == 3, first.stderr
    events = pl.read_parquet(tmp_path / "out.csv.state" / "jobs" / "*.parquet")
    line = events.filter(pl.col("job_id").str.starts_with(UNMATCHED_PREFIX))
    assert line.height == 1 and line["cost_usd"].is_null().all()  # no price known
    tokens_in, tokens_out = int(line["input_tokens"][0]), int(line["output_tokens"][0])
    priced = subprocess.run([*base, "--price", "gpt-6-terra=1.25,10"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=240)  # fmt: skip
    said = re.search(r"\$([\d.]+) of it for 1 billed result line not attributed to a row",
                     priced.stderr)  # fmt: skip
    assert said, priced.stderr
    expected = (tokens_in * 1.25 + tokens_out * 10) / 1e6  # --price: the batch price
    assert float(said[1]) == pytest.approx(expected, rel=0.05) and expected > 0
