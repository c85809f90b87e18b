"""Prompt caching inside batches, per provider: what is sent, what is reported, what is billed.

Rows share a long leading part of their prompt (questions about one contract). The rows
are interleaved with unrelated ones in the input: the requests must put the sharing rows
next to each other and mark the shared part (Anthropic ``cache_control``, OpenAI
``prompt_cache_key``, Gemini by order alone); the emulator reports cache reads the way each
provider does (strictly: markers, keys and minimum lengths); ``_cost_usd`` bills them at
the cache rates and the ``jobs`` view says what caching saved. The same frame with
``prompt_caching=False`` sends plain requests and pays more, by exactly that saving
(Anthropic, OpenAI; Gemini's implicit cache needs nothing from the request).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from batchata_df import batch_llm, caching, sql, tokens
from batchata_df.cost import PriceTable

DOC = "The supplier shall deliver the goods within thirty days of the order date. " * 150
PREFIX = "Read this contract:\n" + DOC + "\n\nQuestion: "  # the shared, marked part
FRAME = pl.DataFrame(
    {
        "doc": [DOC, "A short note.", DOC, DOC, "Another note.", DOC],
        "q": ["Amount?", "Sender?", "Date?", "Place?", "Tone?", "Signer?"],
    }
)
TEMPLATE = "Read this contract:\n{doc}\n\nQuestion: {q}"
# The input rows that share PREFIX, in the order they are sent: moved up next to the first
# of them (input order among themselves), the unrelated rows after them in input order.
SENT_ORDER = [0, 2, 3, 5]
SHARED_AT = slice(0, 4)
UNRELATED_AT = slice(4, 6)


def _run(emu, model: str, state: Path, **kwargs: Any) -> pl.DataFrame:
    emu.configure(log_bodies=True)
    emu.clear_log()
    out = FRAME.pipe(
        batch_llm, model=model, prompt=TEMPLATE, state=state, params={"max_tokens": 3000},
        **kwargs,
    )  # fmt: skip
    assert out["_status"].to_list() == ["completed"] * FRAME.height, out["_error"].to_list()
    assert out["doc"].to_list() == FRAME["doc"].to_list()  # input order kept
    return out


def _posts(emu, suffix: str) -> list[dict[str, Any]]:
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith(suffix)]


def _usage(state: Path) -> pl.DataFrame:
    return sql(
        "SELECT job_id, input_tokens, output_tokens, cached_tokens, cache_write_tokens, "
        "cost_usd, cache_saved_usd FROM jobs",
        state,
    )


def _check_billing(out: pl.DataFrame, state: Path, provider: str, model: str) -> pl.DataFrame:
    """Every row's _cost_usd is its usage at the model's batch cache rates."""
    price = PriceTable().get(provider, model)
    assert price is not None
    usage = _usage(state)
    rows = out.select("_job_id", "_cost_usd", "_input_tokens", "_output_tokens").join(
        usage, left_on="_job_id", right_on="job_id"
    )
    for r in rows.iter_rows(named=True):
        expected = price.cost(
            input_tokens=r["input_tokens"],
            output_tokens=r["output_tokens"],
            cached_tokens=r["cached_tokens"] or 0,
            cache_write_tokens=r["cache_write_tokens"] or 0,
        )
        assert r["_cost_usd"] == pytest.approx(expected, rel=1e-12)
        saved = (r["cached_tokens"] or 0) * (price.rate("input") - price.rate("cached_input"))
        saved -= (r["cache_write_tokens"] or 0) * (
            price.rate("cache_write") - price.rate("input")
        )
        assert r["cache_saved_usd"] == pytest.approx(saved / 1e6, rel=1e-9, abs=1e-15)
    return rows


def _plain_run_costs_more_by_the_saving(emu, tmp_path: Path, model: str, cached: float) -> None:
    """The same rows without caching: nothing read or written, and the input costs more.

    The answers (and so the output tokens) may differ a little between the two runs, as
    the request text differs (one text block or two), so the input side is compared.
    """
    plain = _run(emu, model, tmp_path / "plain", prompt_caching=False)
    assert plain["_cost_usd"].sum() > cached
    usage = _usage(tmp_path / "plain")
    assert usage["cached_tokens"].fill_null(0).sum() == 0
    assert usage["cache_write_tokens"].fill_null(0).sum() == 0
    provider = "anthropic" if model.startswith("claude") else "openai"
    price = PriceTable().get(provider, model)
    assert price is not None
    with_cache = _usage(tmp_path / "cached")
    def input_cost(u: pl.DataFrame) -> float:
        return sum(
            price.cost(input_tokens=r["input_tokens"], output_tokens=0,
                       cached_tokens=r["cached_tokens"] or 0,
                       cache_write_tokens=r["cache_write_tokens"] or 0)
            for r in u.iter_rows(named=True)
        )  # fmt: skip
    saved = with_cache["cache_saved_usd"].sum()
    assert saved > 0
    assert input_cost(usage) - input_cost(with_cache) == pytest.approx(saved, rel=0.01)


def test_anthropic_marks_the_shared_prefix_and_bills_cache_reads(emu, tmp_path: Path) -> None:
    model = "claude-sonnet-4-6"  # minimum cacheable prompt: 1,024 tokens
    out = _run(emu, model, tmp_path / "cached")
    (create,) = _posts(emu, "/messages/batches")
    requests = create["body"]["requests"]
    ids = out["_job_id"].to_list()
    assert [r["custom_id"] for r in requests[SHARED_AT]] == [ids[i] for i in SENT_ORDER]
    for i, request in zip(SENT_ORDER, requests[SHARED_AT], strict=True):
        assert request["params"]["messages"] == [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": PREFIX, "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": FRAME["q"][i]},
                ],
            }
        ]
        assert "system" not in request["params"]
    for request in requests[UNRELATED_AT]:  # unrelated rows: plain text, nothing marked
        assert isinstance(request["params"]["messages"][0]["content"], str)
    rows = _check_billing(out, tmp_path / "cached", "anthropic", model)
    prefix_tokens = len(PREFIX) // 4  # as the emulator counts
    by_id = {r["_job_id"]: r for r in rows.iter_rows(named=True)}
    writes = [by_id[ids[i]]["cache_write_tokens"] for i in SENT_ORDER]
    reads = [by_id[ids[i]]["cached_tokens"] for i in SENT_ORDER]
    assert writes == [prefix_tokens, 0, 0, 0]
    assert reads == [0, prefix_tokens, prefix_tokens, prefix_tokens]
    _plain_run_costs_more_by_the_saving(emu, tmp_path, model, out["_cost_usd"].sum())


def test_anthropic_marks_a_long_shared_system_prompt(emu, tmp_path: Path) -> None:
    system = "You are a meticulous contracts clerk; answer in one word. " * 100  # 1,450 tok
    emu.configure(log_bodies=True)
    frame = pl.DataFrame({"q": ["one", "two", "three"]})
    out = frame.pipe(
        batch_llm, model="claude-sonnet-4-6", prompt="{q}", system=system,
        state=tmp_path / "s",
    )  # fmt: skip
    (create,) = _posts(emu, "/messages/batches")
    for request in create["body"]["requests"]:
        assert request["params"]["system"] == [
            {"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}
        ]
        assert isinstance(request["params"]["messages"][0]["content"], str)
    usage = _usage(tmp_path / "s")
    assert sorted(usage["cache_write_tokens"].to_list()) == [0, 0, len(system) // 4]
    assert sorted(usage["cached_tokens"].to_list()) == [0, len(system) // 4, len(system) // 4]
    _check_billing(out, tmp_path / "s", "anthropic", "claude-sonnet-4-6")


def test_anthropic_does_not_mark_prefixes_below_the_model_minimum(emu, tmp_path: Path) -> None:
    emu.configure(log_bodies=True)
    frame = pl.DataFrame({"q": ["one", "two"]})
    frame.pipe(
        batch_llm, model="claude-haiku-4-5", prompt="{q}", system="Short system. " * 100,
        state=tmp_path / "s",
    )  # fmt: skip  # 1,400 chars: far below Haiku 4.5's 4,096 tokens
    (create,) = _posts(emu, "/messages/batches")
    for request in create["body"]["requests"]:
        assert isinstance(request["params"]["system"], str)


def test_openai_sends_one_prompt_cache_key_for_the_shared_prefix(emu, tmp_path: Path) -> None:
    model = "gpt-4.1-mini"
    out = _run(emu, model, tmp_path / "cached")
    (upload,) = _posts(emu, "/files")
    lines = upload["lines"]
    ids = out["_job_id"].to_list()
    assert [line["custom_id"] for line in lines[SHARED_AT]] == [ids[i] for i in SENT_ORDER]
    keys = {line["body"].get("prompt_cache_key") for line in lines[SHARED_AT]}
    assert len(keys) == 1
    (key,) = keys
    assert key is not None and key.startswith("bdf-")
    for line in lines[SHARED_AT]:  # the prompt itself is sent whole: the key only routes it
        assert isinstance(line["body"]["messages"][0]["content"], str)
    assert all("prompt_cache_key" not in line["body"] for line in lines[UNRELATED_AT])
    rows = _check_billing(out, tmp_path / "cached", "openai", model)
    by_id = {r["_job_id"]: r for r in rows.iter_rows(named=True)}
    # OpenAI counts the shared prefix in the tokens it bills: its exact BPE count (2,108)
    shared = tokens.estimate_tokens(pl.Series([PREFIX]), "openai", model).item()
    step = 1024 + (shared - 1024) // 128 * 128
    assert [by_id[ids[i]]["cached_tokens"] for i in SENT_ORDER] == [0, step, step, step]
    _plain_run_costs_more_by_the_saving(emu, tmp_path, model, out["_cost_usd"].sum())


@pytest.mark.filterwarnings("ignore::batchata_df.errors.ThinkingRoomWarning")  # not the subject
def test_gemini_orders_rows_for_implicit_caching(emu, tmp_path: Path) -> None:
    model = "gemini-2.5-flash"  # implicit caching from 2,048 tokens
    out = _run(emu, model, tmp_path / "cached")
    (create,) = _posts(emu, f"/models/{model}:batchGenerateContent")
    requests = create["body"]["batch"]["inputConfig"]["requests"]["requests"]
    ids = out["_job_id"].to_list()
    assert [r["metadata"]["key"] for r in requests[SHARED_AT]] == [ids[i] for i in SENT_ORDER]
    for i, request in zip(SENT_ORDER, requests[SHARED_AT], strict=True):
        parts = request["request"]["contents"][0]["parts"]
        assert parts == [{"text": PREFIX + FRAME["q"][i]}]  # nothing to mark: order alone
    rows = _check_billing(out, tmp_path / "cached", "gemini", model)
    by_id = {r["_job_id"]: r for r in rows.iter_rows(named=True)}
    shared = len(PREFIX) // 4
    assert [by_id[ids[i]]["cached_tokens"] for i in SENT_ORDER] == [0, shared, shared, shared]
    # No plain-run comparison here: Gemini's implicit cache needs no marker, so a plain run
    # that happens to repeat a prefix soon enough is read from the cache too.


def test_progress_shows_what_caching_saved(emu, tmp_path: Path) -> None:
    from batchata_df.progress import format_line

    snaps: list[Any] = []
    _run(emu, "claude-sonnet-4-6", tmp_path / "cached", progress=snaps.append)
    final = snaps[-1]
    saved = _usage(tmp_path / "cached")["cache_saved_usd"].sum()
    assert final.cache_saved_usd == pytest.approx(saved, rel=1e-9)
    assert final.cache_saved_usd > 0
    line = format_line(final, max_cost_usd=None)
    assert f"${saved:,.4f} saved by caching" in line


def test_anthropic_marks_the_shared_files(emu, tmp_path: Path) -> None:
    """Rows asking about the same document: the document block carries cache_control."""
    emu.configure(log_bodies=True)
    doc = ("Supply agreement. " + DOC).encode()
    frame = pl.DataFrame({"q": ["Who signs?", "When?", "Where?"], "f": [doc, doc, doc]})
    out = frame.pipe(
        batch_llm, model="claude-sonnet-4-6", prompt="{q}", files="f", state=tmp_path / "s"
    )
    assert out["_status"].to_list() == ["completed"] * 3
    (create,) = _posts(emu, "/messages/batches")
    for request in create["body"]["requests"]:
        document, question = request["params"]["messages"][0]["content"]
        assert document["type"] == "document"
        assert document["cache_control"] == {"type": "ephemeral"}
        assert question == {"type": "text", "text": question["text"]}  # not marked
    usage = _usage(tmp_path / "s")
    writes = sorted(usage["cache_write_tokens"].to_list())
    assert writes[:2] == [0, 0] and writes[2] > 1024
    assert sorted(usage["cached_tokens"].to_list()) == [0, writes[2], writes[2]]
    _check_billing(out, tmp_path / "s", "anthropic", "claude-sonnet-4-6")


# -- the shortcut for jobs too short to share a cacheable prefix (issue 14, CPU) ----------

_short_text = st.text(st.sampled_from("ab é漢🙂\n"), max_size=12) | st.none()


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.tuples(_short_text, _short_text), min_size=2, max_size=8),
    provider_model=st.sampled_from(
        [("openai", "gpt-4.1-mini"), ("anthropic", "claude-opus-5"), ("gemini", "gemini-2.5-flash")]
    ),
    minimum=st.integers(1, 60),
    history=st.booleans(),
)
def test_plan_of_short_jobs_is_the_full_plan(
    rows: list[tuple[str | None, str | None]],
    provider_model: tuple[str, str],
    minimum: int,
    history: bool,
) -> None:
    """Where the shortcut applies, it gives exactly the frame the full plan gives."""
    provider, model = provider_model
    jobs = pl.DataFrame(
        {
            "job_id": [f"j{i}" for i in range(len(rows))],
            "system": [s for s, _ in rows],
            "prompt": [p for _, p in rows],
        },
        schema={"job_id": pl.String, "system": pl.String, "prompt": pl.String},
    )
    if history:
        jobs = jobs.with_columns(pl.lit(None, dtype=pl.List(pl.String)).alias("history"))
    full = caching._plan(jobs, provider, model, minimum)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(caching, "min_cacheable_tokens", lambda p, m: minimum)
        assert_frame_equal(caching.cache_plan(jobs, provider, model), full)


def test_short_jobs_are_planned_without_the_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A million 150-character prompts cannot reach 1,024 tokens: nothing is counted."""
    import batchata_df.tokens

    def refuse(*args: object) -> None:
        raise AssertionError("estimate_tokens called for prompts too short to cache")

    monkeypatch.setattr(batchata_df.tokens, "estimate_tokens", refuse)
    jobs = pl.DataFrame(
        {"job_id": ["b", "a", "c"], "system": ["s" * 500, "s" * 500, None],
         "prompt": ["x" * 523, "x" * 523, "y"]}  # 500 + 523 = 1,023 bytes: one short
    )  # fmt: skip
    plan = caching.cache_plan(jobs, "openai", "gpt-4.1-mini")
    assert plan.get_column("job_id").to_list() == ["b", "a", "c"]  # input order
    assert plan.get_column("cache_key").null_count() == 3
    assert plan.get_column("cache_prefix_tokens").to_list() == [0, 0, 0]
    # One byte more and the plan must look: the shortcut is bounded by bytes, not guessed.
    longer = jobs.with_columns(pl.col("prompt").str.replace("^x{523}$", "x" * 524))
    with pytest.raises(AssertionError, match="estimate_tokens called"):
        caching.cache_plan(longer, "openai", "gpt-4.1-mini")


# -- a row whose whole prompt is the shared prefix (review of session 16) -----------------
# Row A asks exactly PREFIX, row B asks PREFIX + a question. Marking only row B paid a
# cache write (1.25x) that nothing read. Row A's whole prompt is the prefix: it carries
# cache_control on its one text block ("everything up to and including that block",
# https://docs.claude.com/en/docs/build-with-claude/prompt-caching), so whichever of the
# two runs first writes and the other reads, in any order a batch runs them.

WHOLE = pl.DataFrame({"text": [PREFIX, "An unrelated note.", PREFIX + "what is it?"]})


def _whole_run(emu, model: str, state: Path, **kwargs: Any) -> pl.DataFrame:
    emu.configure(log_bodies=True)
    emu.clear_log()
    billed_before = len(emu.billing())
    out = WHOLE.pipe(
        batch_llm, model=model, prompt="{text}", state=state, params={"max_tokens": 3000},
        **kwargs,
    )  # fmt: skip
    assert out["_status"].to_list() == ["completed"] * 3, out["_error"].to_list()
    assert out["text"].to_list() == WHOLE["text"].to_list()
    billed = [e["custom_id"] for e in emu.billing()[billed_before:]]
    assert sorted(billed) == sorted(out["_job_id"].to_list())  # each row billed once
    return out


def test_anthropic_marks_a_prompt_that_is_all_shared_prefix(emu, tmp_path: Path) -> None:
    model = "claude-sonnet-4-6"
    out = _whole_run(emu, model, tmp_path / "cached")
    (create,) = _posts(emu, "/messages/batches")
    requests = create["body"]["requests"]
    ids = out["_job_id"].to_list()
    assert [r["custom_id"] for r in requests] == [ids[0], ids[2], ids[1]]  # A, B together
    mark = {"type": "ephemeral"}
    assert requests[0]["params"]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": PREFIX, "cache_control": mark}]}
    ]
    assert requests[1]["params"]["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": PREFIX, "cache_control": mark},
                {"type": "text", "text": "what is it?"},
            ],
        }
    ]
    assert isinstance(requests[2]["params"]["messages"][0]["content"], str)
    rows = _check_billing(out, tmp_path / "cached", "anthropic", model)
    by_id = {r["_job_id"]: r for r in rows.iter_rows(named=True)}
    prefix_tokens = len(PREFIX) // 4  # as the emulator counts
    assert [by_id[ids[i]]["cache_write_tokens"] for i in (0, 2)] == [prefix_tokens, 0]
    assert [by_id[ids[i]]["cached_tokens"] for i in (0, 2)] == [0, prefix_tokens]
    assert sum(r["cache_saved_usd"] for r in by_id.values()) > 0
    _plain_run_costs_more_by_the_saving_whole(emu, tmp_path, model, out["_cost_usd"].sum())


def _plain_run_costs_more_by_the_saving_whole(
    emu, tmp_path: Path, model: str, cached: float
) -> None:
    plain = _whole_run(emu, model, tmp_path / "plain", prompt_caching=False)
    assert plain["_cost_usd"].sum() > cached
    assert _usage(tmp_path / "cached")["cache_saved_usd"].sum() > 0


def test_anthropic_whole_prompt_mark_read_in_either_order(emu, tmp_path: Path) -> None:
    """The longer row sent first: it writes the prefix, the whole-prompt row reads it."""
    model = "claude-sonnet-4-6"
    emu.configure(log_bodies=True)
    first = pl.DataFrame({"text": [PREFIX + "what is it?"]}).pipe(
        batch_llm, model=model, prompt="{text}", state=tmp_path / "s"
    )
    second = pl.DataFrame({"text": [PREFIX, PREFIX + "and where?"]}).pipe(
        batch_llm, model=model, prompt="{text}", state=tmp_path / "s2"
    )
    assert first["_status"].to_list() == ["completed"]
    assert second["_status"].to_list() == ["completed"] * 2
    usage = _usage(tmp_path / "s2")
    # the one-row run marked nothing (nobody to share with); the two rows of the second
    # run share PREFIX: one writes it, the other reads it.
    assert sorted(usage["cache_write_tokens"].to_list()) == [0, len(PREFIX) // 4]
    assert sorted(usage["cached_tokens"].to_list()) == [0, len(PREFIX) // 4]


def test_openai_gives_a_prompt_that_is_all_shared_prefix_the_key(emu, tmp_path: Path) -> None:
    model = "gpt-4.1-mini"
    out = _whole_run(emu, model, tmp_path / "cached")
    (upload,) = _posts(emu, "/files")
    lines = upload["lines"]
    ids = out["_job_id"].to_list()
    assert [line["custom_id"] for line in lines] == [ids[0], ids[2], ids[1]]
    keys = [line["body"].get("prompt_cache_key") for line in lines]
    assert keys[0] is not None and keys[0] == keys[1] and keys[2] is None
    rows = _check_billing(out, tmp_path / "cached", "openai", model)
    by_id = {r["_job_id"]: r for r in rows.iter_rows(named=True)}
    shared = tokens.estimate_tokens(pl.Series([PREFIX]), "openai", model).item()
    step = 1024 + (shared - 1024) // 128 * 128
    assert [by_id[ids[i]]["cached_tokens"] for i in (0, 2)] == [0, step]


@pytest.mark.filterwarnings("ignore::batchata_df.errors.ThinkingRoomWarning")  # not the subject
def test_gemini_sends_a_prompt_that_is_all_shared_prefix_next_to_its_sharer(
    emu, tmp_path: Path
) -> None:
    model = "gemini-2.5-flash"
    out = _whole_run(emu, model, tmp_path / "cached")
    (create,) = _posts(emu, f"/models/{model}:batchGenerateContent")
    requests = create["body"]["batch"]["inputConfig"]["requests"]["requests"]
    ids = out["_job_id"].to_list()
    assert [r["metadata"]["key"] for r in requests] == [ids[0], ids[2], ids[1]]
    rows = _check_billing(out, tmp_path / "cached", "gemini", model)
    by_id = {r["_job_id"]: r for r in rows.iter_rows(named=True)}
    assert [by_id[ids[i]]["cached_tokens"] for i in (0, 2)] == [0, len(PREFIX) // 4]


_words = st.sampled_from(["alpha ", "beta ", "gamma\n", "delta", " ", "x" * 300 + " "])


@settings(max_examples=120, deadline=None)
@given(
    prompts=st.lists(st.lists(_words, max_size=6).map("".join), min_size=1, max_size=7),
    provider_model=st.sampled_from(
        [("openai", "gpt-4.1-mini"), ("anthropic", "claude-opus-5"), ("gemini", "gemini-2.5-flash")]
    ),
    minimum=st.integers(1, 60),
)
def test_every_marked_prefix_is_marked_on_a_second_job(
    prompts: list[str], provider_model: tuple[str, str], minimum: int
) -> None:
    """No job pays for a prefix no other job marks: each key (and each marked prompt
    part) is carried by at least two jobs, all with the same marked text."""
    provider, model = provider_model
    jobs = pl.DataFrame(
        {"job_id": [f"j{i}" for i in range(len(prompts))], "system": [None] * len(prompts),
         "prompt": prompts},
        schema={"job_id": pl.String, "system": pl.String, "prompt": pl.String},
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(caching, "min_cacheable_tokens", lambda p, m: minimum)
        plan = caching.cache_plan(jobs, provider, model)
    marked: dict[str, set[str]] = {}
    counts: dict[str, int] = {}
    for r in plan.iter_rows(named=True):
        if r["cache_split"] is not None:
            assert r["cache_key"] is not None
            assert 0 < r["cache_split"] <= len(r["prompt"])
            marked.setdefault(r["cache_key"], set()).add(r["prompt"][: r["cache_split"]])
        if r["cache_key"] is not None:
            counts[r["cache_key"]] = counts.get(r["cache_key"], 0) + 1
    assert all(n >= 2 for n in counts.values()), plan
    assert all(len(texts) == 1 for texts in marked.values()), plan
    for key in marked:  # every job of a key marks its prompt part
        rows = plan.filter(pl.col("cache_key") == key)
        assert rows.get_column("cache_split").null_count() == 0, plan


def test_anthropic_marks_no_system_prompt_or_file_that_only_one_row_sends(
    emu, tmp_path: Path
) -> None:
    """A breakpoint on a prefix no other request shares writes the cache (1.25x the input
    rate) for nothing: only prefixes of two rows or more are marked, and a row whose long
    system prompt or file is its own is sent and billed plain."""
    shared = "You are a meticulous contracts clerk; answer in one word. " * 100  # 1,450 tok
    own = "You are a careful auditor of supplier invoices; answer briefly. " * 100
    note = tmp_path / "own.txt"
    note.write_text(DOC, encoding="utf-8")  # ~2,800 tokens, sent by one row only
    emu.configure(log_bodies=True)
    frame = pl.DataFrame(
        {"q": ["one", "two", "three", "four"], "sys": [shared, shared, own, shared],
         "f": [[], [], [], [str(note)]]},
        schema={"q": pl.String, "sys": pl.String, "f": pl.List(pl.String)},
    )  # fmt: skip
    out = frame.pipe(
        batch_llm, model="claude-sonnet-4-6", prompt="{q}", system=pl.col("sys"), files="f",
        state=tmp_path / "s",
    )  # fmt: skip
    assert out["_status"].to_list() == ["completed"] * 4, out["_error"].to_list()
    (create,) = _posts(emu, "/messages/batches")
    params = {r["custom_id"]: r["params"] for r in create["body"]["requests"]}
    ids = out["_job_id"].to_list()
    mark = {"type": "ephemeral"}
    assert params[ids[0]]["system"] == [{"type": "text", "text": shared, "cache_control": mark}]
    assert params[ids[2]]["system"] == own  # its own: plain text, no breakpoint
    assert "cache_control" not in str(params[ids[2]]["messages"])
    # The file is this row's alone: no breakpoint on it (its system prompt is shared).
    assert "cache_control" not in str(params[ids[3]]["messages"])
    usage = _usage(tmp_path / "s").join(out.select(pl.col("_job_id").alias("job_id")), on="job_id")
    writes = dict(zip(usage["job_id"], usage["cache_write_tokens"].fill_null(0), strict=True))
    assert writes[ids[2]] == 0
    _check_billing(out, tmp_path / "s", "anthropic", "claude-sonnet-4-6")
