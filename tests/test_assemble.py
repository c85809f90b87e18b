"""The output frame's meta columns, row by row, against their definition (``frame._assemble``).

``_assemble`` puts the job states beside the rows: identical requests share a job whose
bill goes on its first row (0 on the others), rows that could not be sent fail with their
input error, rows without a terminal state are pending. Its shortcuts (states lined up with
the rows, each row its job's first) must give what the definition gives, whatever the ids.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from batchata_df.frame import _assemble
from batchata_df.schema import AnswerSchema

IDS = ["j0", "j1", "j2", "j3"]
STATUSES = ["completed", "failed", "cancelled", "assigned"]


class Answer(BaseModel):
    word: str
    n: int


def _expected(rows: list[str | None], states: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The definition, one row at a time."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for job in rows:
        if job is None:
            out.append({"_status": "failed", "_error": "input: bad", "_cost_usd": 0.0,
                        "_input_tokens": 0, "_job_id": None, "_batch_id": None, "word": None})
            continue
        first = job not in seen
        seen.add(job)
        st_ = states.get(job)
        terminal = st_ is not None and st_["status"] in ("completed", "failed", "cancelled")
        charged = first and st_ is not None and st_["attempts"] is not None
        if charged:
            cost, tokens = st_["cost_usd"], st_["input_tokens"]
        elif terminal or not first:
            cost, tokens = 0.0, 0
        else:
            cost, tokens = None, None
        completed = terminal and st_["status"] == "completed"
        out.append({
            "_status": st_["status"] if terminal else "pending",
            "_error": None if st_ is None else st_["error"],
            "_cost_usd": cost,
            "_input_tokens": tokens,
            "_job_id": job,
            "_batch_id": None if st_ is None else st_["provider_batch_id"],
            "word": job if completed else None,
        })  # fmt: skip
    return out


state_of = st.fixed_dictionaries(
    {
        "status": st.sampled_from(STATUSES),
        "error": st.one_of(st.none(), st.just("boom")),
        "cost_usd": st.one_of(st.none(), st.floats(0, 1, allow_nan=False)),
        "input_tokens": st.one_of(st.none(), st.integers(0, 10**6)),
        "attempts": st.one_of(st.none(), st.integers(1, 3)),
        "provider_batch_id": st.one_of(st.none(), st.just("batch_1")),
    }
)


def _run(rows: list[str | None], states: dict[str, dict[str, Any]]) -> None:
    results = pl.DataFrame(
        [{"job_id": job, **s, "answer": f'{{"word":"{job}","n":1}}'} for job, s in states.items()],
        schema={"job_id": pl.String, "status": pl.String, "error": pl.String,
                "cost_usd": pl.Float64, "input_tokens": pl.Int64, "attempts": pl.Int64,
                "provider_batch_id": pl.String, "answer": pl.String},
    ).with_columns(
        pl.lit(None, pl.Int64).alias("output_tokens"), pl.lit("bk").alias("batch_key")
    )  # fmt: skip
    keys = pl.DataFrame(
        {"job_id": rows, "input_error": [None if r is not None else "input: bad" for r in rows]},
        schema={"job_id": pl.String, "input_error": pl.String},
    )
    frame = pl.DataFrame({"text": [str(r) for r in rows]}, schema={"text": pl.String})
    out = _assemble(frame, keys, results, AnswerSchema(Answer))
    cols = ["_status", "_error", "_cost_usd", "_input_tokens", "_job_id", "_batch_id", "word"]
    assert out.columns[:3] == ["text", "word", "n"]
    assert "\x00first" not in out.columns
    assert out.select(cols).to_dicts() == _expected(rows, states)


def test_a_repeated_request_is_billed_once_when_there_are_as_many_states_as_rows() -> None:
    done = {"status": "completed", "error": None, "cost_usd": 0.5, "input_tokens": 7,
            "attempts": 1, "provider_batch_id": "batch_1"}  # fmt: skip
    # Two rows, two states, but not each row its own job: the second j0 is billed 0.
    _run(["j0", "j0"], {"j0": done, "j1": done})
    _run(["j1", "j0"], {"j0": done, "j1": done})  # each its own, in another order
    _run(["j0", "j1"], {"j0": done, "j1": done})  # lined up: the shortcut


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.one_of(st.sampled_from(IDS), st.none()), max_size=8),
    data=st.data(),
)
def test_meta_columns_follow_their_definition_row_by_row(rows, data) -> None:
    distinct = list(dict.fromkeys(r for r in rows if r is not None))
    # The states: aligned with the rows (each row its own job, states in row order: the
    # shortcut), for some of the jobs in any order, or for jobs the rows do not have.
    kind = data.draw(st.sampled_from(["aligned", "permuted", "subset"]))
    if kind == "aligned":
        rows = chosen = distinct
    elif kind == "permuted":
        chosen = data.draw(st.permutations(distinct))
    else:
        chosen = data.draw(st.lists(st.sampled_from(IDS), unique=True))
    states = {job: data.draw(state_of) for job in chosen}
    _run(rows, states)
