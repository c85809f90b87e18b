"""Issue 9 point 5: every bad argument is a typed error naming the fix, before any request.

Each case of the table runs ``batch_llm`` against the emulator and asserts the exact error
class, a key part of its message, and that the emulator saw **0 requests**. Property tests
(hypothesis) cover the families: any boolean / non-finite / negative number, any template
with an unbalanced brace.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from batchata_df import (
    ColumnError,
    ConfigError,
    ModelError,
    ParamError,
    SchemaError,
    StateError,
    batch_llm,
)
from batchata_df.jobs import template_columns


class A(BaseModel):
    label: str


def frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "t": ["a", "b"],
            "n": [1, 2],
            "s": [{"x": 1}, {"x": 2}],
            "l": [[1, 2], [3]],
            "b": [b"\x00", b"\x01"],
        }
    )


BASE: dict[str, Any] = {"schema": A, "model": "gpt-4.1-mini", "prompt": "{t}"}
NAN, INF = math.nan, math.inf

# (id, keyword overrides, error class, regex searched in the message)
CASES: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    # -- numbers: booleans, NaN, infinities, negatives, wrong types
    ("cap-true", {"max_cost_usd": True}, ConfigError, r"max_cost_usd.*True"),
    ("cap-false", {"max_cost_usd": False}, ConfigError, r"max_cost_usd.*False"),
    ("cap-nan", {"max_cost_usd": NAN}, ConfigError, r"max_cost_usd.*nan"),
    ("cap-inf", {"max_cost_usd": INF}, ConfigError, r"max_cost_usd.*inf"),
    ("cap-negative", {"max_cost_usd": -1.0}, ConfigError, r"max_cost_usd.*-1"),
    ("cap-zero", {"max_cost_usd": 0}, ConfigError, r"max_cost_usd.*positive"),
    ("cap-string", {"max_cost_usd": "5"}, ConfigError, r"max_cost_usd.*'5'"),
    ("time-nan", {"time_limit": NAN}, ConfigError, r"time_limit.*nan"),
    ("time-inf", {"time_limit": INF}, ConfigError, r"time_limit.*inf"),
    ("time-true", {"time_limit": True}, ConfigError, r"time_limit.*True"),
    ("time-negative", {"time_limit": -5}, ConfigError, r"time_limit.*-5"),
    ("time-string", {"time_limit": "10"}, ConfigError, r"time_limit.*'10'"),
    ("time-negative-delta", {"time_limit": dt.timedelta(seconds=-1)}, ConfigError,
     r"time_limit"),
    ("items-float", {"items_per_batch": 1.5}, ConfigError, r"items_per_batch.*1\.5"),
    ("items-zero", {"items_per_batch": 0}, ConfigError, r"items_per_batch.*0"),
    ("items-true", {"items_per_batch": True}, ConfigError, r"items_per_batch.*True"),
    ("items-string", {"items_per_batch": "10"}, ConfigError, r"items_per_batch.*'10'"),
    ("parallel-zero", {"max_parallel_batches": 0}, ConfigError, r"max_parallel_batches"),
    ("parallel-float", {"max_parallel_batches": 2.0}, ConfigError, r"max_parallel_batches"),
    ("parallel-true", {"max_parallel_batches": True}, ConfigError, r"max_parallel_batches"),
    # -- flags must be booleans ("no" is truthy)
    ("wait-string", {"wait": "no", "state": "s"}, ConfigError, r"wait.*'no'"),
    ("dry-run-string", {"dry_run": "yes"}, ConfigError, r"dry_run.*'yes'"),
    ("retry-int", {"retry_failed": 1}, ConfigError, r"retry_failed.*1"),
    ("keep-raw-string", {"keep_raw": "yes"}, ConfigError, r"keep_raw.*'yes'"),
    ("citations-string", {"citations": "yes"}, ConfigError, r"citations.*'yes'"),
    # -- prices
    ("price-negative", {"prices": {"gpt-4.1-mini": (-1.0, 2.0)}}, ConfigError,
     r"prices\['gpt-4.1-mini'\].*-1"),
    ("price-nan", {"prices": {"gpt-4.1-mini": (NAN, 2.0)}}, ConfigError, r"prices.*nan"),
    ("price-bool", {"prices": {"gpt-4.1-mini": (True, 2.0)}}, ConfigError, r"prices.*True"),
    ("price-string", {"prices": {"gpt-4.1-mini": ("cheap", 2.0)}}, ConfigError,
     r"prices.*'cheap'"),
    ("price-cached-negative",
     {"prices": {"gpt-4.1-mini": {"input": 1, "output": 2, "cached_input": -1}}},
     ConfigError, r"cached_input"),
    ("prices-not-mapping", {"prices": [("gpt-4.1-mini", (1.0, 2.0))]}, ConfigError,
     r"prices must be a mapping"),
    # -- params: container, names, types and ranges per provider
    ("params-list", {"params": [("temperature", 1)]}, ConfigError, r"params must be a mapping"),
    ("param-typo", {"params": {"temprature": 1}}, ConfigError, r"did you mean 'temperature'"),
    ("temperature-string", {"params": {"temperature": "hot"}}, ConfigError,
     r"temperature.*'hot'"),
    ("temperature-99", {"params": {"temperature": 99}}, ConfigError, r"temperature.*0.*2.*99"),
    ("temperature-bool", {"params": {"temperature": True}}, ConfigError, r"temperature.*True"),
    ("temperature-nan", {"params": {"temperature": NAN}}, ConfigError, r"temperature.*nan"),
    # Claude takes no temperature at any value (API version 2026-10-21): not a 0..1 range.
    ("temperature-claude", {"model": "claude-haiku-4-5", "params": {"temperature": 1.5}},
     ParamError, r"2026-10-21.*params\['temperature'\]; remove it"),
    ("temperature-gemini", {"model": "gemini-2.5-flash", "params": {"temperature": 2.5}},
     ConfigError, r"temperature.*0.*2"),
    ("top-p-high", {"params": {"top_p": 1.5}}, ConfigError, r"top_p.*1\.5"),
    ("top-p-negative", {"params": {"top_p": -0.1}}, ConfigError, r"top_p.*-0\.1"),
    ("max-tokens-zero", {"params": {"max_tokens": 0}}, ConfigError, r"max_tokens.*0"),
    ("max-tokens-bool", {"params": {"max_tokens": True}}, ConfigError, r"max_tokens.*True"),
    ("max-tokens-float", {"params": {"max_tokens": 10.5}}, ConfigError, r"max_tokens.*10\.5"),
    ("seed-float", {"params": {"seed": 1.5}}, ConfigError, r"seed.*1\.5"),
    ("seed-string", {"params": {"seed": "42"}}, ConfigError, r"seed.*'42'"),
    ("stop-int", {"params": {"stop": 5}}, ConfigError, r"stop.*5"),
    ("stop-too-many-openai", {"params": {"stop": ["a", "b", "c", "d", "e"]}}, ConfigError,
     r"stop.*at most 4"),
    ("stop-not-str", {"params": {"stop": ["a", 1]}}, ConfigError, r"stop.*1"),
    ("stop-too-many-gemini",
     {"model": "gemini-2.5-flash", "params": {"stop": list("abcdef")}}, ConfigError,
     r"stop.*at most 5"),
    ("frequency-penalty", {"params": {"frequency_penalty": 3}}, ConfigError,
     r"frequency_penalty.*-2.*2"),
    ("presence-penalty", {"params": {"presence_penalty": "x"}}, ConfigError,
     r"presence_penalty.*'x'"),
    ("top-k-negative", {"model": "claude-haiku-4-5", "params": {"top_k": -1}}, ConfigError,
     r"top_k.*-1"),
    ("top-k-float", {"model": "gemini-2.5-flash", "params": {"top_k": 2.5}}, ConfigError,
     r"top_k.*2\.5"),
    # -- templates: braces, columns, non-text columns, system placeholders
    ("brace-open", {"prompt": "a { b"}, ConfigError, r"position 2"),
    ("brace-close", {"prompt": "a } b"}, ConfigError, r"position 2"),
    ("brace-unclosed-field", {"prompt": "{t"}, ConfigError, r"position 0"),
    ("brace-system", {"system": "x { y"}, ConfigError, r"system.*position 2"),
    ("format-spec", {"prompt": "{t:>10}"}, ConfigError, r"bare column name"),
    ("unknown-column", {"prompt": "{tt}"}, ColumnError, r"did you mean 't'"),
    ("system-unknown-column", {"system": "{tx}"}, ColumnError, r"system.*did you mean 't'"),
    ("struct-column", {"prompt": "{s}"}, ColumnError, r"'s'.*Struct.*json_encode"),
    ("list-column", {"prompt": "{l}"}, ColumnError, r"'l'.*List.*list\.join"),
    ("binary-column", {"prompt": "{b}"}, ColumnError, r"'b'.*Binary.*files="),
    ("struct-in-system", {"system": "{s}"}, ColumnError, r"'s'.*Struct"),
    ("prompt-int", {"prompt": 123}, ConfigError, r"prompt.*int"),
    # -- expressions whose values are not text (cast, they would go out as "{1}" or bytes)
    ("struct-expr", {"prompt": pl.col("s")}, ColumnError,
     r"prompt expression col\(\"s\"\) \(column 's'\) gives Struct values.*"
     r"col\(\"s\"\)\.struct\.json_encode\(\)"),
    ("struct-expr-system", {"system": pl.col("s")}, ColumnError,
     r"system expression col\(\"s\"\).*Struct.*json_encode"),
    ("list-expr", {"prompt": pl.col("l")}, ColumnError,
     r"prompt expression col\(\"l\"\).*List\(Int64\).*list\.join"),
    ("array-expr", {"prompt": pl.col("l").list.head(1).list.to_array(1)}, ColumnError,
     r"prompt expression .*\(column 'l'\) gives Array values.*list\.join"),
    ("binary-expr", {"prompt": pl.col("b")}, ColumnError,
     r"prompt expression col\(\"b\"\).*Binary.*cast\(pl\.String\).*files="),
    ("object-expr",
     {"prompt": pl.col("t").map_elements(lambda v: object(), return_dtype=pl.Object)},
     ColumnError, r"prompt expression .*\(column 't'\) gives Object values.*map_elements"),
    # -- the rest of the signature
    ("model-int", {"model": 5}, ModelError, r"model.*5"),
    ("model-unknown", {"model": "llama-3"}, ModelError, r"llama-3"),
    ("state-int", {"state": 123}, ConfigError, r"state.*123"),
    ("progress-string", {"progress": "yes"}, ConfigError, r"progress.*'yes'"),
    ("files-int", {"files": 5}, ConfigError, r"files.*5"),
    ("wait-without-state", {"wait": False}, ConfigError, r"wait=False needs state"),
    ("schema-not-model", {"schema": int}, SchemaError, r"schema"),
    ("patience-bool", {"provider_patience": True}, ConfigError, r"provider_patience.*True"),
]


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [pytest.param(o, e, m, id=i) for i, o, e, m in CASES],
)
def test_bad_input_is_a_typed_error_before_any_request(emu, overrides, error, match):
    kwargs = {**BASE, **overrides}
    with pytest.raises(ConfigError) as info:
        frame().pipe(batch_llm, **kwargs)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert re.search(match, str(info.value), re.DOTALL), str(info.value)
    assert emu.log() == []  # nothing was sent, nothing was paid


def test_the_table_has_at_least_40_cases():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


# -- property tests ----------------------------------------------------------------------

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

bad_numbers = st.one_of(
    st.booleans(),
    st.sampled_from([NAN, INF, -INF]),
    st.floats(max_value=0, allow_nan=False),
    st.integers(max_value=0),
)


@SETTINGS
@given(value=bad_numbers,
       name=st.sampled_from(["max_cost_usd", "time_limit", "items_per_batch",
                             "max_parallel_batches"]))
def test_any_boolean_non_finite_or_non_positive_number_is_refused(emu, value, name):
    with pytest.raises(ConfigError, match=name):
        frame().pipe(batch_llm, **{**BASE, name: value})
    assert emu.log() == []


@SETTINGS
@given(value=st.one_of(st.booleans(), st.sampled_from([NAN, INF, -INF]),
                       st.floats(max_value=-1e-9, allow_nan=False),
                       st.floats(min_value=2.0001, allow_infinity=False)),
       name=st.sampled_from(["temperature", "top_p", "frequency_penalty"]))
def test_any_out_of_range_or_non_numeric_sampling_value_is_refused(emu, value, name):
    if name == "frequency_penalty" and isinstance(value, float) and -2 <= value <= 2:
        value = -3.0
    with pytest.raises(ConfigError, match=name):
        frame().pipe(batch_llm, **{**BASE, "params": {name: value}})
    assert emu.log() == []


@st.composite
def unbalanced(draw: st.DrawFn) -> tuple[str, int]:
    """A template with one stray brace, and the position of that brace."""
    text = st.text(alphabet="abc t", max_size=8)
    before, after = draw(text), draw(text)
    brace = draw(st.sampled_from(["{", "}"]))
    return f"{before}{brace}{after}", len(before)


@settings(max_examples=200, deadline=None)
@given(case=unbalanced())
def test_any_template_with_an_unbalanced_brace_names_the_position(case):
    template, position = case
    with pytest.raises(ConfigError, match=rf"position {position}\b"):
        template_columns(template)


# -- behaviour that replaces the old silent acceptance ------------------------------------


def test_placeholders_in_system_are_filled_like_the_prompts(emu, tmp_path):
    import openai

    df = pl.DataFrame({"t": ["a", "b"], "lang": ["French", "German"]})
    out = df.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}",
                  system="Answer in {lang}; literal {{braces}} stay", state=tmp_path / "s")
    assert out["_status"].to_list() == ["completed", "completed"]
    client = openai.OpenAI()
    batch = client.batches.retrieve(out["_batch_id"][0])
    assert batch.input_file_id is not None
    lines = client.files.content(batch.input_file_id).read().decode().splitlines()
    systems = sorted(
        m["content"] for line in lines for m in json.loads(line)["body"]["messages"]
        if m["role"] in ("system", "developer")
    )
    assert systems == ["Answer in French; literal {braces} stay",
                       "Answer in German; literal {braces} stay"]


def test_numbers_dates_and_categoricals_render_as_text(emu):
    df = pl.DataFrame({"n": [1, 2], "d": [dt.date(2026, 1, 2), None],
                       "c": pl.Series(["x", "y"], dtype=pl.Categorical)})
    out = df.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{n} {d} {c}")
    assert out["_status"].to_list() == ["completed", "failed"]  # a null value fails its row
    assert out["_error"][1].startswith("input:")


def test_a_non_text_expression_is_refused_before_anything_is_sent_or_billed(emu, tmp_path):
    with pytest.raises(ColumnError, match="Struct"):
        frame().pipe(batch_llm, **{**BASE, "prompt": pl.col("s"), "state": tmp_path / "s"})
    assert emu.log() == []
    assert emu.billing() == []
    assert not (tmp_path / "s").exists()  # refused before the state folder was made


def test_expressions_of_text_numbers_categoricals_and_enums_are_sent_as_text(emu):
    import openai

    df = pl.DataFrame({
        "i": [7], "f": [2.5], "t": ["x"], "s": [{"x": 1}],
        "c": pl.Series(["red"], dtype=pl.Categorical),
        "e": pl.Series(["low"], dtype=pl.Enum(["low", "high"])),
    })
    prompts = {
        "int": pl.col("i"), "float": pl.col("f"), "string": pl.col("t") + "!",
        "categorical": pl.col("c"), "enum": pl.col("e"),
        "struct-as-json": pl.col("s").struct.json_encode(),
    }
    sent = {}
    for name, prompt in prompts.items():
        out = df.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt=prompt,
                      system=pl.col("e"))
        assert out["_status"].to_list() == ["completed"], name
        client = openai.OpenAI()
        batch = client.batches.retrieve(out["_batch_id"][0])
        assert batch.input_file_id is not None
        (line,) = client.files.content(batch.input_file_id).read().decode().splitlines()
        sent[name] = [m["content"] for m in json.loads(line)["body"]["messages"]]
    assert sent == {
        "int": ["low", "7"], "float": ["low", "2.5"], "string": ["low", "x!"],
        "categorical": ["low", "red"], "enum": ["low", "low"],
        "struct-as-json": ["low", '{"x":1}'],
    }


@pytest.mark.parametrize("how", ["read-only", "replaced-by-a-file"])
def test_a_state_folder_turning_unwritable_mid_run_is_a_state_error(emu, tmp_path, how):
    if how == "read-only" and os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    state = tmp_path / "s"
    subs = (state, state / "jobs", state / "batches")

    def break_folder(snapshot: object) -> None:
        if (state / "jobs").is_dir() and not (state / "moved").exists():
            if how == "read-only":
                for sub in subs:
                    sub.chmod(stat.S_IRUSR | stat.S_IXUSR)
            else:  # e.g. a sync tool or a colleague replaced it: writes fail the same way
                (state / "jobs").rename(state / "moved")
                (state / "jobs").write_text("not a folder")

    try:
        with pytest.raises(StateError) as info:
            pl.DataFrame({"t": ["a"]}).pipe(batch_llm, schema=A, model="gpt-4.1-mini",
                                             prompt="{t}", state=state, progress=break_folder)
    finally:
        for sub in subs:
            sub.chmod(stat.S_IRWXU)
    assert str(state) in str(info.value)
    assert "make it writable" in str(info.value)
    assert not isinstance(info.value, OSError)


@pytest.mark.parametrize("how", ["frame", "capped", "sink"])
def test_state_naming_an_existing_file_is_a_state_error_before_anything_is_sent(
    emu, tmp_path, how
):
    path = tmp_path / "results.parquet"
    path.write_bytes(b"not a folder")
    extra: dict[str, Any] = {
        "frame": {}, "capped": {"max_cost_usd": 1.0}, "sink": {"sink": tmp_path / "o.parquet"},
    }[how]
    with pytest.raises(StateError) as info:
        frame().pipe(batch_llm, **{**BASE, "state": path, **extra})
    assert type(info.value) is StateError
    message = str(info.value)
    assert f"state={str(path)!r} is a file, not a folder" in message
    assert f"state={str(tmp_path / 'results_state')!r}" in message  # the fix, named
    assert "Nothing was sent" in message
    assert emu.log() == []
    assert emu.billing() == []
    assert path.read_bytes() == b"not a folder"  # untouched, and nothing left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.parquet"]


@pytest.mark.parametrize("capped", [False, True])
def test_a_dry_run_with_state_naming_a_file_still_plans(emu, tmp_path, capped):
    # A dry run writes nothing to the state folder: it plans as for a folder not made yet.
    path = tmp_path / "results.parquet"
    path.write_bytes(b"not a folder")
    cap = {"max_cost_usd": 1.0} if capped else {}
    plan = frame().pipe(batch_llm, **{**BASE, "state": path, "dry_run": True, **cap})
    assert plan["_status"].to_list() == ["planned", "planned"]
    assert plan["_expected_cost_usd"].to_list() == pytest.approx([2.14e-05, 2.14e-05])
    no_state = frame().pipe(batch_llm, **{**BASE, "dry_run": True, **cap})
    assert plan.drop("_job_id").equals(no_state.drop("_job_id"))
    assert emu.log() == []
    assert path.read_bytes() == b"not a folder"


def _unused(path: Path) -> None:  # keep imports used by type checkers
    del path
