"""The collect side's shortcuts (tenth pass) give what the paths they skip give.

Each shortcut is compared with the code it replaces over many inputs (hypothesis): the
events of a batch whose results come in another order than its members (Anthropic's),
whether a download holds any of a batch's jobs, the jobs grouped by model for planning, the
jobs to send, and the rows a resumed call counts as done before it starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from pydantic import BaseModel

from batchata_df import batch_llm
from batchata_df.engine import collection
from batchata_df.engine.collection import holds_any, outcomes_to_events
from batchata_df.engine.planning import groups_by_model
from batchata_df.frame import _model_pairs, _sendable
from batchata_df.providers.base import RESULTS, BatchPoll, ProviderState, RequestSpec
from batchata_df.schema import AnswerSchema


class _Answer(BaseModel):
    summary: str
    score: float
    label: Literal["pos", "neg"]


SPEC = RequestSpec(schema=AnswerSchema(_Answer), params={"max_tokens": 100})

IDS = ["a", "b", "c", "d", "e"]
TEXTS = [
    '{"summary":"ok","score":0.5,"label":"pos"}',
    '{"summary":"x","score":1.0,"label":"neg"}',
    '{"summary": "spaced", "score": 2, "label": "pos"}',  # valid, not canonical: Pydantic
    '{"summary":"bad","score":"no","label":"pos"}',  # invalid
    '{"summary":"cut',  # truncated
    None,
]


@st.composite
def _batches(draw: st.DrawFn) -> tuple[pl.DataFrame, pl.DataFrame, BatchPoll]:
    """Members (ids, now and then one twice) and results in any order, some missing or twice."""
    members = draw(st.lists(st.sampled_from(IDS), min_size=1, max_size=5, unique=True))
    if draw(st.booleans()) and draw(st.integers(0, 4)) == 0:
        members = [*members, members[0]]  # a member listed twice: never by the engine
    lines = draw(st.permutations(members))
    lines = [j for j in lines if draw(st.integers(0, 5))]  # some lines missing
    if lines and draw(st.integers(0, 4)) == 0:
        lines = [*lines, draw(st.sampled_from(lines))]  # a result line twice
    if draw(st.integers(0, 6)) == 0:
        lines = [*lines, "zz"]  # a line of another batch
    n = len(lines)
    all_ok = draw(st.booleans())
    outcome = st.just("succeeded") if all_ok else st.sampled_from(
        ["succeeded", "succeeded", "errored", "canceled"]
    )
    text = st.sampled_from(TEXTS[:2]) if all_ok else st.sampled_from(TEXTS)
    results = pl.DataFrame(
        {
            "job_id": lines,
            "outcome": [draw(outcome) for _ in range(n)],
            "text": [draw(text) for _ in range(n)],
            "error": [None] * n,
            "truncated": [draw(st.sampled_from([None, False, True])) for _ in range(n)],
            "input_tokens": [draw(st.integers(0, 50)) for _ in range(n)],
            "output_tokens": [draw(st.integers(0, 120)) for _ in range(n)],
            "cached_tokens": [None] * n,
            "cache_write_tokens": [None] * n,
            "reasoning_tokens": [draw(st.sampled_from([None, 0, 60])) for _ in range(n)],
            "citations": [None] * n,
            "response": [draw(st.sampled_from([None, '{"raw":1}'])) for _ in range(n)],
            "model": [draw(st.sampled_from([None, "m", "other"])) for _ in range(n)],
        },
        schema=RESULTS,
    )
    state = draw(st.sampled_from([ProviderState.ENDED, ProviderState.CANCELLED]))
    return pl.DataFrame({"job_id": members}), results, BatchPoll(state, state.value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=_batches(), keep_decoded=st.booleans())
def test_results_in_another_order_give_the_events_the_second_join_gave(
    batch: tuple[pl.DataFrame, pl.DataFrame, BatchPoll], keep_decoded: bool
) -> None:
    """Validated columns put beside rows joined by id once equal joining them again.

    The reference is the previous path: ``_one_row_each`` refused, the validated answers
    are joined onto the rows by job id (what every batch whose results did not come in
    its members' order took).
    """
    members, results, poll = batch
    kw = {"provider": "anthropic", "model": "claude-haiku-4-5", "keep_decoded": keep_decoded}
    got = outcomes_to_events(members, results, poll, SPEC, **kw)
    original = collection._one_row_each
    try:
        collection._one_row_each = lambda ids, joined: False  # type: ignore[assignment]
        want = outcomes_to_events(members, results, poll, SPEC, **kw)
    finally:
        collection._one_row_each = original
    assert_frame_equal(got, want)


def test_a_batch_answered_in_reverse_order_takes_the_shortcut_and_keeps_its_members_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    members = pl.DataFrame({"job_id": IDS})
    results = pl.DataFrame(
        {"job_id": IDS[::-1], "outcome": ["succeeded"] * 5, "text": [TEXTS[0]] * 5},
    ).select(
        pl.col(c) if c in ("job_id", "outcome", "text") else pl.lit(None, d).alias(c)
        for c, d in RESULTS.items()
    )
    calls: list[bool] = []
    original = collection._one_row_each

    def spy(ids: pl.DataFrame, joined: pl.DataFrame) -> bool:
        calls.append(original(ids, joined))
        return calls[-1]

    monkeypatch.setattr(collection, "_one_row_each", spy)
    events = outcomes_to_events(members, results, BatchPoll(ProviderState.ENDED, "ended"), SPEC)
    assert calls == [True]
    assert events.get_column("job_id").to_list() == IDS
    assert events.get_column("status").to_list() == ["completed"] * 5
    # Twice the same member: the shortcut is not taken (the join pairs every copy).
    twice = pl.DataFrame({"job_id": [*IDS, "a"]})
    outcomes_to_events(twice, results, BatchPoll(ProviderState.ENDED, "ended"), SPEC)
    assert calls == [True, False]


_ID = st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"]))


@settings(max_examples=300, deadline=None)
@given(ids=st.lists(_ID, max_size=6), members=st.lists(_ID, max_size=6))
def test_holds_any_is_is_in_any(ids: list[str | None], members: list[str | None]) -> None:
    left = pl.Series(ids, dtype=pl.String)
    right = pl.Series(members, dtype=pl.String)
    assert holds_any(left, right) is bool(left.is_in(right.implode()).any())


_KEY = st.one_of(st.none(), st.sampled_from(["p", "q"]))


@settings(max_examples=300, deadline=None)
@given(
    pairs=st.lists(st.tuples(_KEY, _KEY), max_size=8),
    same=st.booleans(),
)
# Every way a table is almost one provider and model (persist review: a break of one of
# these checks passed the random draws in 3 runs of 14): one model under two providers
# (each must be its own group, or the second provider's jobs go to the first's API), a
# second model, a null provider, a null model, first or last.
@example(pairs=[("p", "m"), ("q", "m")], same=False)
@example(pairs=[("p", "m"), ("p", "n")], same=False)
@example(pairs=[("p", "m"), (None, "m")], same=False)
@example(pairs=[("p", "m"), ("p", None)], same=False)
@example(pairs=[(None, "m"), ("p", "m")], same=False)
@example(pairs=[("p", None), ("p", "m")], same=False)
def test_groups_by_model_equal_polars_group_by(
    pairs: list[tuple[str | None, str | None]], same: bool
) -> None:
    if same and pairs:
        pairs = [pairs[0]] * len(pairs)  # one provider and model, the usual run
    jobs = pl.DataFrame(
        {
            "provider": [p for p, _ in pairs],
            "model": [m for _, m in pairs],
            "job_id": [str(i) for i in range(len(pairs))],
        },
        schema={"provider": pl.String, "model": pl.String, "job_id": pl.String},
    )

    def listed(groups: Iterator[tuple[tuple[object, ...], pl.DataFrame]]) -> list[object]:
        return [(key, group.rows()) for key, group in groups]

    assert listed(groups_by_model(jobs)) == listed(
        iter(jobs.group_by(["provider", "model"], maintain_order=True))
    )
    # The run's model checks go over the same pairs, nulls left out.
    assert _model_pairs(jobs) == (
        jobs.select("provider", "model").drop_nulls().unique(maintain_order=True).rows()
    )


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), st.sampled_from(["a", "b", "c"])),
            st.sampled_from([None, None, "input: bad"]),
        ),
        max_size=8,
    ),
    distinct=st.booleans(),
)
def test_the_jobs_to_send_equal_the_filter_and_unique_they_skip(
    rows: list[tuple[str | None, str | None]], distinct: bool
) -> None:
    if distinct:
        rows = [(f"{i}", e) for i, (_, e) in enumerate(rows)]
    jobs = pl.DataFrame(
        {
            "job_id": [j for j, _ in rows],
            "prompt": [f"p{i}" for i in range(len(rows))],
            "input_error": [e for _, e in rows],
        },
        schema={"job_id": pl.String, "prompt": pl.String, "input_error": pl.String},
    )
    want = (
        jobs.filter(pl.col("input_error").is_null())
        .unique("job_id", keep="first", maintain_order=True)
        .drop("input_error")
    )
    assert_frame_equal(_sendable(jobs), want)


class _Label(BaseModel):
    label: str


def test_a_resumed_call_counts_as_done_only_its_own_rows_settled_earlier(emu) -> None:
    """The rows done before a call starts are its rows with an answer, not the folder's.

    The first call's folder holds ``a`` and ``b``; the second call's rows are ``b`` and
    ``c``: its first snapshot counts one row done (``b``), and a call on a new folder none.
    """
    import tempfile

    state = tempfile.mkdtemp()
    first: list[object] = []
    with emu.environ():
        pl.DataFrame({"t": ["a", "b"]}).pipe(
            batch_llm, schema=_Label, model="gpt-4.1-mini", prompt="{t}", state=state,
            progress=first.append,
        )  # fmt: skip
        seen: list[object] = []
        pl.DataFrame({"t": ["b", "c"]}).pipe(
            batch_llm, schema=_Label, model="gpt-4.1-mini", prompt="{t}", state=state,
            progress=seen.append,
        )  # fmt: skip
    start = seen[0]
    assert (start.total, start.completed, start.failed) == (2, 1, 0)  # type: ignore[attr-defined]
    assert first[0].completed == 0  # type: ignore[attr-defined]
