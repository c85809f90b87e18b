"""Properties of prompts, job ids and the run fingerprint (hypothesis).

* Any template over any column values renders exactly as Python's ``str.format``.
* Changing anything that changes a request (model, prompt text, system, params, schema,
  file bytes, citations) changes the job id (and the fingerprint for run-level settings);
  nothing else does (row order, other columns, duplicate rows).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from batchata_df.errors import ConfigError
from batchata_df.files import attach_files
from batchata_df.frame import _fingerprint as run_fingerprint
from batchata_df.frame import _job_salt
from batchata_df.jobs import build_jobs, check_params, render_template, template_columns
from batchata_df.schema import AnswerSchema

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COLUMNS = ("a", "b", "c")

# Text with braces, unicode (accents, CJK, emoji, combining marks), controls and empties.
TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from("{}{{}}ab é日本🎉\u0301\n\t\x00\\\"'"), st.characters(codec="utf-8")
    ),
    max_size=12,
)
LITERAL = TEXT.map(lambda s: s.replace("{", "{{").replace("}", "}}"))
TEMPLATE = st.lists(
    st.one_of(LITERAL, st.sampled_from(COLUMNS).map(lambda c: "{" + c + "}")), max_size=6
).map("".join)


def _render(template: str, frame: pl.DataFrame) -> list[str | None]:
    # The renderer build_jobs uses (build_jobs refuses a template without text)
    rendered = frame.with_columns(render_template(template, frame.schema).alias("_p"))
    return rendered["_p"].to_list()


@FAST
@given(template=TEMPLATE, rows=st.lists(st.tuples(TEXT, TEXT, TEXT), min_size=1, max_size=4))
def test_template_renders_exactly_as_str_format_over_text(
    template: str, rows: list[tuple[str, str, str]]
) -> None:
    frame = pl.DataFrame(rows, schema=list(COLUMNS), orient="row")
    expected = [template.format(**dict(zip(COLUMNS, row, strict=True))) for row in rows]
    assert _render(template, frame) == expected


VALUES = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda v: ("i", v)),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: ("f", v)),
    st.booleans().map(lambda v: ("b", v)),
    st.dates().map(lambda v: ("d", v)),
    st.datetimes(min_value=dt.datetime(1900, 1, 1)).map(lambda v: ("t", v)),
)


@FAST
@given(template=TEMPLATE, a=st.lists(VALUES, min_size=1, max_size=4))
def test_template_renders_non_text_columns_as_str_format(
    template: str, a: list[tuple[str, Any]]
) -> None:
    kinds = {k for k, _ in a}
    values = [v for k, v in a if k == min(kinds)]  # one dtype per column
    frame = pl.DataFrame({"a": values, "b": ["x"] * len(values), "c": values})
    expected = [template.format(a=v, b="x", c=v) for v in frame["a"].to_list()]
    assert _render(template, frame) == expected


def test_template_literal_text_and_escaped_braces_are_kept() -> None:
    frame = pl.DataFrame({"text": ["great", ""]})
    assert _render("Classify {{this}} review: {text}!", frame) == [
        "Classify {this} review: great!",
        "Classify {this} review: !",
    ]


# ---- job ids and the fingerprint


class One(BaseModel):
    label: str


class Two(BaseModel):
    label: str
    score: float


BASE: dict[str, Any] = {
    "model": "gpt-4.1-mini",
    "prompt": "Q: {q}",
    "system": "Be brief.",
    "schema": One,
    "params": {"max_tokens": 100},
    "citations": False,
}
CHANGES: dict[str, list[Any]] = {
    "model": ["gpt-4.1", "claude-haiku-4-5", "anthropic:gpt-4.1-mini"],
    "prompt": ["Q:  {q}", "{q}", "Q: {q}\n", "Q: {{q}} {q}"],
    "system": [None, "Be brief", "be brief."],  # "" is refused (tests/test_blank_input.py)
    "schema": [Two, None],
    "params": [{"max_tokens": 101}, {"max_tokens": 100, "temperature": 0.0}, {}],
    "citations": [True],
}


def _ids(frame: pl.DataFrame, files: bool = False, **settings_: Any) -> list[str | None]:
    s = {**BASE, **settings_}
    _, salt, scheme = _job_salt(  # as a call without a state folder keys them
        None,
        run_fingerprint(
            s["model"], s["prompt"], s["system"], AnswerSchema(s["schema"]), s["params"],
            citations=s["citations"],
        ),
    )
    jobs = build_jobs(frame, model=s["model"], prompt=s["prompt"], system=s["system"],
                      salt=salt, scheme=scheme)
    if files:
        jobs = attach_files(jobs, frame, "doc", salt=salt, scheme=scheme)
    return jobs["job_id"].to_list()


def _fingerprint(**settings_: Any) -> dict[str, str]:
    s = {**BASE, **settings_}
    return run_fingerprint(
        s["model"], s["prompt"], s["system"], AnswerSchema(s["schema"]), s["params"],
        citations=s["citations"],
    )


SETTING = st.sampled_from([(k, v) for k, vs in CHANGES.items() for v in vs])


@FAST
@given(change=SETTING, q=TEXT)
def test_every_run_setting_changes_fingerprint_and_job_ids(change: tuple[str, Any], q: str) -> None:
    name, value = change
    frame = pl.DataFrame({"q": [q]})
    assert _fingerprint(**{name: value}) != _fingerprint()
    assert _ids(frame, **{name: value}) != _ids(frame)


@FAST
@given(q=TEXT, other=TEXT, model=st.sampled_from(["gpt-4.1-mini", "claude-haiku-4-5"]))
def test_per_row_content_changes_only_that_rows_id(q: str, other: str, model: str) -> None:
    """Per-row model, system and prompt text are part of each row's id."""
    frame = pl.DataFrame(
        {"q": [q, q], "m": [model, "gpt-4.1"], "sys": ["s", "s"], "sys2": ["s", "t"]}
    )
    same_model = _ids(frame, model=pl.lit(model))
    per_row_model = _ids(frame, model=pl.col("m"))
    assert same_model[0] == same_model[1]
    assert per_row_model[0] != per_row_model[1]
    same_system = _ids(frame, system=pl.col("sys"))
    per_row_system = _ids(frame, system=pl.col("sys2"))
    assert same_system[0] == same_system[1]
    assert per_row_system[0] != per_row_system[1]
    texts = pl.DataFrame({"q": [q, q + other if other else q + "x"]})
    ids = _ids(texts)
    assert ids[0] != ids[1]


@FAST
@given(
    rows=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=6),
    perm_seed=st.randoms(use_true_random=False),
)
def test_ids_ignore_row_order_other_columns_and_duplicates(
    rows: list[tuple[str, str]], perm_seed: Any
) -> None:
    frame = pl.DataFrame(rows, schema=["q", "unused"], orient="row")
    ids = _ids(frame)
    by_q = dict(zip(frame["q"].to_list(), ids, strict=True))
    # identical prompts share one id; different prompts never do
    assert len(set(ids)) == frame["q"].n_unique()
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=perm_seed.randint(0, 2**31))
    assert _ids(shuffled) == [by_q[q] for q in shuffled["q"].to_list()]
    other = frame.with_columns(pl.col("unused").str.reverse() + "!", extra=pl.lit(1))
    assert _ids(other) == ids
    doubled = pl.concat([frame, frame])
    assert _ids(doubled) == ids + ids


@FAST
@given(
    data=st.text(alphabet="abc é日\n", min_size=1, max_size=64).map(lambda t: ("t" + t).encode()),
    more=st.text(alphabet="xyz ✓", min_size=1, max_size=8).map(str.encode),
)
def test_file_bytes_change_the_job_id(data: bytes, more: bytes) -> None:
    """Text documents (bytes sniffed as text) whose bytes differ are different jobs."""
    frame = pl.DataFrame({"q": ["same", "same", "same"], "doc": [data, data + more, data]},
                         schema={"q": pl.String, "doc": pl.Binary})
    ids = _ids(frame, files=True)
    assert ids[0] == ids[2] != ids[1]
    no_files = _ids(frame.drop("doc"))
    assert no_files[0] != ids[0]



# ---- templates and params that must be refused (found by mutation testing of jobs.py)


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("Rate {text", "never closed"),
        ("Rate text}", "closes nothing"),
        ("Rate {}", "bare column name"),
        ("Rate {text!r}", "bare column name"),
        ("Rate {text:>10}", "bare column name"),
    ],
)
def test_templates_str_format_would_read_otherwise_are_refused(template: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        template_columns(template)
    message = str(info.value)
    assert (words in message and "write a literal brace as" in message) or (
        words in message and "write literal braces as {{ and }}" in message
        and repr(template) in message
    )


@pytest.mark.parametrize(
    "values",
    [
        ["a", None],
        [1, None],
        [1.5e-7, None],
        [True, None],
        [dt.datetime(2024, 1, 2, 3, 4, 5), None],
    ],
)
def test_a_null_in_any_referenced_column_gives_a_null_prompt(values: list[Any]) -> None:
    frame = pl.DataFrame({"a": values})
    jobs = build_jobs(frame, model="gpt-4.1-mini", prompt="x {a}", system=None, salt="s",
                      scheme="hmac-sha256")
    assert jobs["prompt"].to_list() == [f"x {values[0]}", None]
    assert jobs["input_error"].to_list()[0] is None
    assert "prompt is null" in jobs["input_error"].to_list()[1]
    assert jobs["job_id"].to_list()[1] is None


def test_unknown_or_invalid_params_are_refused_with_the_fix() -> None:
    supported = frozenset({"max_tokens", "temperature", "top_p"})
    assert check_params(None, supported) == {}
    assert check_params({"temperature": 0.0}, supported) == {"temperature": 0.0}
    with pytest.raises(ConfigError) as info:
        check_params({"temperatur": 1.0}, supported)
    assert str(info.value) == (
        "unknown model parameter 'temperatur'; supported: "
        "['max_tokens', 'temperature', 'top_p']; did you mean 'temperature'?"
    )
    with pytest.raises(ConfigError) as info:
        check_params({"zzz": 1}, supported)
    assert str(info.value) == (
        "unknown model parameter 'zzz'; supported: ['max_tokens', 'temperature', 'top_p']"
    )
    # (value checks of max_tokens and the others live in check_param_values since
    # reliability-input; tests/test_bad_input.py covers them)
    assert check_params({"max_tokens": 1}, supported) == {"max_tokens": 1}
