"""jobs.py by value: job ids, histories, typed errors that name the fix, parameter checks.

Fast (no emulator): the mutation run of ``jobs.py`` (``tools/mutation.py``) uses these with
``test_properties_jobs.py``. Job ids are checked against the documented recipes of both
schemes (a keyed BLAKE2b-96, and HMAC-SHA256 cut to 96 bits, of the job's content): a
checkpoint written by one version must be found by the next, so the recipe itself is the
contract, not an implementation detail.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
from typing import Any

import polars as pl
import pytest

from batchata_df.errors import ColumnError, ConfigError, ModelError
from batchata_df.jobs import (
    HISTORY_DTYPE,
    ID_SCHEMES,
    IdScheme,
    build_jobs,
    check_param_values,
    history_expr,
    job_ids,
    parse_model,
    render_template,
    template_columns,
)

TURNS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello ✓"}]


def _digest(scheme: IdScheme, content: str, salt: str) -> str:
    """The id of ``content`` by the scheme's documented recipe, with hashlib/hmac alone."""
    if scheme == "blake2b":
        return hashlib.blake2b(content.encode(), digest_size=12,
                               key=salt.encode()[:64]).hexdigest()
    assert scheme in ("hmac-sha256", "hmac-sha256-v2")  # v2: the same key without NUL/\x01
    return hmac.new(salt.encode(), content.encode(), hashlib.sha256).hexdigest()[:24]


#: The scheme of tests about something other than the ids.
NEW: IdScheme = "hmac-sha256-v2"


# ---- job ids


@pytest.mark.parametrize("scheme", ID_SCHEMES)
def test_job_id_is_the_keyed_hash_of_provider_model_system_prompt(scheme: IdScheme) -> None:
    frame = pl.DataFrame({"q": ["What?", "Why ✓"], "s": ["Be brief.", None]})
    jobs = build_jobs(frame, model="claude-haiku-4-5", prompt="Q: {q}", system=pl.col("s"),
                      salt="run-salt", scheme=scheme)
    assert jobs.columns == ["prompt", "system", "provider", "model", "input_error", "job_id"]
    assert jobs.rows() == [
        ("Q: What?", "Be brief.", "anthropic", "claude-haiku-4-5", None,
         _digest(scheme, "anthropic\x00claude-haiku-4-5\x00Be brief.\x00Q: What?", "run-salt")),
        # no system prompt hashes apart from an empty one ("\x01" stands for none)
        ("Q: Why ✓", None, "anthropic", "claude-haiku-4-5", None,
         _digest(scheme, "anthropic\x00claude-haiku-4-5\x00\x01\x00Q: Why ✓", "run-salt")),
    ]
    # (an empty system prompt is never sent, see test_blank_input.py; its hash still differs)
    empty_system = pl.DataFrame({"provider": ["anthropic"], "model": ["claude-haiku-4-5"],
                                 "system": [""], "prompt": ["Q: What?"]})
    assert job_ids(empty_system, "run-salt", scheme=scheme).item() == _digest(
        scheme, "anthropic\x00claude-haiku-4-5\x00\x00Q: What?", "run-salt")


def test_a_blake2b_id_keys_only_the_first_64_bytes_of_a_long_salt() -> None:
    salt = "s" * 64
    frame = pl.DataFrame({"q": ["x"]})
    a = build_jobs(frame, model="gpt-4.1", prompt="{q}", system=None, salt=salt,
                   scheme="blake2b")
    b = build_jobs(frame, model="gpt-4.1", prompt="{q}", system=None, salt=salt + "more",
                   scheme="blake2b")
    assert a["job_id"].item() == b["job_id"].item() == _digest(
        "blake2b", "openai\x00gpt-4.1\x00\x01\x00x", salt)


def test_an_hmac_id_keys_the_whole_salt_however_long() -> None:
    # HMAC hashes a key of more than 64 bytes (its block) down to a digest first.
    salt = "é" * 64  # 128 UTF-8 bytes
    frame = pl.DataFrame({"q": ["x"]})
    a = build_jobs(frame, model="gpt-4.1", prompt="{q}", system=None, salt=salt,
                   scheme="hmac-sha256")
    b = build_jobs(frame, model="gpt-4.1", prompt="{q}", system=None, salt=salt + "more",
                   scheme="hmac-sha256")
    assert a["job_id"].item() == _digest("hmac-sha256", "openai\x00gpt-4.1\x00\x01\x00x", salt)
    assert b["job_id"].item() == _digest(
        "hmac-sha256", "openai\x00gpt-4.1\x00\x01\x00x", salt + "more")
    assert a["job_id"].item() != b["job_id"].item()


def test_an_unknown_scheme_is_refused() -> None:
    frame = pl.DataFrame({"q": ["x"]})
    with pytest.raises(ValueError, match="unknown job id scheme 'md5'"):
        build_jobs(frame, model="gpt-4.1", prompt="{q}", system=None, salt="k",
                   scheme="md5")  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", ID_SCHEMES)
def test_history_and_extra_key_are_part_of_the_id_and_absent_ones_change_nothing(
    scheme: IdScheme,
) -> None:
    frame = pl.DataFrame(
        {"q": ["x", "x", "x"], "h": [TURNS, TURNS[:1], []]},
        schema_overrides={"h": HISTORY_DTYPE},
    )
    jobs = build_jobs(frame, model="gpt-4.1", prompt="{q}", system=None, salt="k", scheme=scheme,
                      history="h")
    base = "openai\x00gpt-4.1\x00\x01\x00x"
    # v2 tags the optional fields (jobs.job_keys): history "h", the files' key "f"
    h, f = ("\x00h", "\x00f") if scheme == "hmac-sha256-v2" else ("\x00", "\x00")
    turns = ['{"role":"user","content":"hi"}', '{"role":"assistant","content":"hello ✓"}']
    assert jobs["history"].to_list() == [TURNS, TURNS[:1], None]
    assert jobs["job_id"].to_list() == [
        _digest(scheme, base + h + "\x02".join(turns), "k"),
        _digest(scheme, base + h + turns[0], "k"),
        _digest(scheme, base + h, "k"),
    ]
    plain = build_jobs(frame, model="gpt-4.1", prompt="{q}", system=None, salt="k", scheme=scheme)
    assert plain["job_id"].to_list() == [_digest(scheme, base, "k")] * 3
    # build_jobs passes its extra_key (the files' hashes) on to the ids
    keyed = build_jobs(frame, model="gpt-4.1", prompt="{q}", system=None, salt="k", scheme=scheme,
                       extra_key=pl.Series(["f1", "f2", "f1"]))
    assert keyed["job_id"].to_list() == [_digest(scheme, base + f + "f1", "k"),
                                         _digest(scheme, base + f + "f2", "k"),
                                         _digest(scheme, base + f + "f1", "k")]
    extra = job_ids(plain, "k", pl.Series(["f1", None, "f1"]), scheme=scheme)
    assert extra.name == "job_id"
    assert extra.to_list() == [_digest(scheme, base + f + "f1", "k"),
                               _digest(scheme, base + f, "k"),
                               _digest(scheme, base + f + "f1", "k")]
    # without input_error (a bare jobs frame) every row gets an id
    bare = pl.DataFrame({"provider": [None], "model": [None], "system": [None],
                         "prompt": [None]}, schema={c: pl.String for c in
                                                    ("provider", "model", "system", "prompt")})
    bare_ids = job_ids(bare, "k", scheme=scheme)
    assert bare_ids.to_list() == [_digest(scheme, "\x00\x00\x01\x00", "k")]
    assert (bare_ids.name, bare_ids.dtype) == ("job_id", pl.String)
    none = job_ids(bare.clear(), "k", scheme=scheme)  # no jobs: still a String column of ids
    assert (none.name, none.dtype, none.len()) == ("job_id", pl.String, 0)


@pytest.mark.parametrize("scheme", ID_SCHEMES)
def test_rows_that_cannot_be_sent_say_why_and_have_no_id(scheme: IdScheme) -> None:
    frame = pl.DataFrame({"q": ["a", None, "c", "d"], "m": ["gpt-4.1", "gpt-4.1", None,
                                                               "gemini:x"],
                          "s": ["s", "s", "s", None]})
    jobs = build_jobs(frame, model=pl.col("m"), prompt="{q}", system="{s}", salt="k",
                      scheme=scheme)
    assert jobs.select("provider", "model", "input_error").rows() == [
        ("openai", "gpt-4.1", None),
        ("openai", "gpt-4.1", "input: the prompt is null (a column it uses is null in this row)"),
        (None, None, "input: the model expression gave null for this row"),
        ("gemini", "x", "input: the system prompt is null (a column it uses is null in this row)"),
    ]
    assert [i is None for i in jobs["job_id"].to_list()] == [False, True, True, True]
    # a system *expression* that is null is no system prompt, not an error
    by_expr = build_jobs(frame.tail(1), model="gpt-4.1", prompt="{q}", system=pl.col("s"),
                         salt="k", scheme=scheme)
    assert by_expr.select("system", "input_error").rows() == [(None, None)]
    assert by_expr["job_id"].item() is not None


def test_a_prompt_without_columns_is_one_job_per_row() -> None:
    frame = pl.DataFrame({"x": [1, 2, 3]})
    jobs = build_jobs(frame, model="gpt-4.1", prompt="Same text", system=None, salt="k", scheme=NEW)
    # every column is text, also the absent system prompt (jobs of several calls concatenate)
    assert jobs.schema == pl.Schema({c: pl.String for c in (
        "prompt", "system", "provider", "model", "input_error", "job_id")})
    assert jobs["prompt"].to_list() == ["Same text"] * 3
    assert jobs["job_id"].n_unique() == 1
    assert jobs.height == 3
    with pytest.raises(ConfigError, match="prompt='' has no text to send"):
        build_jobs(frame, model="gpt-4.1", prompt="", system=None, salt="k", scheme=NEW)


def test_expressions_and_their_errors() -> None:
    frame = pl.DataFrame({"q": ["a"], "n": [2]})
    jobs = build_jobs(frame, model=pl.lit("claude-x"), prompt=pl.col("n"),
                      system=pl.col("q") + "!", salt="k", scheme=NEW)
    assert jobs.select("prompt", "system", "provider", "model").rows() == [
        ("2", "a!", "anthropic", "claude-x")]
    with pytest.raises(ColumnError) as info:
        build_jobs(frame, model="gpt-4.1", prompt=pl.col("nope"), system=None, salt="k", scheme=NEW)
    assert str(info.value).startswith(
        "an expression refers to a column the frame does not have: ")
    assert "nope" in str(info.value)
    with pytest.raises(ConfigError) as info:
        build_jobs(frame, model="gpt-4.1", prompt=3, system=None, salt="k", scheme=NEW)  # type: ignore[arg-type]
    assert str(info.value) == "prompt must be a string template or a pl.Expr, got int"
    with pytest.raises(ConfigError) as info:
        build_jobs(frame, model="gpt-4.1", prompt="{q}", system=b"x", salt="k", scheme=NEW)  # type: ignore[arg-type]
    assert str(info.value) == "system must be a string template or a pl.Expr, got bytes"
    with pytest.raises(ConfigError) as info:  # a stray brace is refused before rendering
        build_jobs(frame, model="gpt-4.1", prompt="Rate {q", system=None, salt="k", scheme=NEW)
    assert str(info.value).startswith("prompt template has a '{' at position 5 that is never")
    with pytest.raises(ConfigError) as info:
        build_jobs(frame, model="gpt-4.1", prompt="{q}", system="Be }", salt="k", scheme=NEW)
    assert str(info.value).startswith("system template has a '}' at position 3 that closes")
    with pytest.raises(ColumnError) as info:  # a system template's errors say "system"
        build_jobs(frame, model="gpt-4.1", prompt="{q}", system="Be {tone}", salt="k", scheme=NEW)
    assert str(info.value) == (
        "system template refers to column 'tone', which the frame does not have (columns: "
        "['q', 'n'])")
    with pytest.raises(ModelError):
        build_jobs(frame, model="nobody", prompt="{q}", system=None, salt="k", scheme=NEW)
    with pytest.raises(ModelError):  # a bad per-row model name is refused before any request
        build_jobs(frame, model=pl.lit("nobody"), prompt="{q}", system=None, salt="k", scheme=NEW)


# ---- models


def test_model_names_map_to_providers_and_bad_ones_name_the_fix() -> None:
    assert [parse_model(m)[0] for m in ("gpt-5", "o1-mini", "o3", "o4-mini", "chatgpt-4o",
                                        "claude-x", "gemini-3")] == [
        "openai", "openai", "openai", "openai", "openai", "anthropic", "gemini"]
    assert parse_model("openai:ft:gpt-4.1:me") == ("openai", "ft:gpt-4.1:me")
    with pytest.raises(ModelError) as info:
        parse_model("mistral:large")
    assert str(info.value) == (
        "unknown provider prefix 'mistral' in model 'mistral:large'; use one of "
        "openai:, anthropic:, gemini:")
    with pytest.raises(ModelError) as info:
        parse_model("openai:")
    assert "unknown provider prefix 'openai'" in str(info.value)
    with pytest.raises(ModelError) as info:
        parse_model("llama-3")
    assert str(info.value) == (
        "cannot tell the provider of model 'llama-3': names starting with gpt-/o1/o3/o4 are "
        "OpenAI, claude- Anthropic, gemini- Gemini; or write it as 'openai:<model>', "
        "'anthropic:<model>' or 'gemini:<model>'")
    for bad in ("", "  ", None, 3):
        with pytest.raises(ModelError) as info:
            parse_model(bad)  # type: ignore[arg-type]
        assert str(info.value) == (
            f"model must be a non-empty string or a pl.Expr, got {bad!r}")


# ---- templates


def test_template_errors_name_the_position_and_the_fix() -> None:
    with pytest.raises(ConfigError) as info:
        template_columns("Review of the year: {text and more", "system")
    assert str(info.value) == (
        "system template has a '{' at position 20 that is never closed (near "
        "'the year: {text and '); close the placeholder like {column}, or write a literal "
        "brace as '{{'")
    with pytest.raises(ConfigError) as info:
        template_columns("{a {b}")
    assert str(info.value).startswith("prompt template has a '{' at position 0 that is never")
    with pytest.raises(ConfigError) as info:
        template_columns("{{ok}} {a} then b} more text")
    assert str(info.value) == (
        "prompt template has a '}' at position 17 that closes nothing (near "
        "'{a} then b} more tex'); write a literal brace as '}}'")
    with pytest.raises(ConfigError) as info:
        template_columns("x {a!s}", "system")
    assert str(info.value) == (
        "system template 'x {a!s}': each placeholder must be a bare column name like {text} "
        "(no positional {}, format specs or conversions); write literal braces as {{ and }}")
    assert template_columns("{{}}{a}}}{{{b}") == ["a", "b"]
    assert template_columns("") == []


def test_a_brace_opened_inside_a_placeholder_is_refused_whatever_follows() -> None:
    # The first '{' after an opening one decides, not the last: later placeholders do not
    # make "{a{b}" a valid one.
    with pytest.raises(ConfigError) as info:
        template_columns("{a{b} and {c}")
    assert str(info.value) == (
        "prompt template has a '{' at position 0 that is never closed (near '{a{b} and '); "
        "close the placeholder like {column}, or write a literal brace as '{{'")


def test_a_stray_closing_brace_near_the_start_is_quoted_from_the_first_character() -> None:
    with pytest.raises(ConfigError) as info:
        template_columns("x} then {a}", "system")
    assert str(info.value) == (
        "system template has a '}' at position 1 that closes nothing (near 'x} then {a}'); "
        "write a literal brace as '}}'")


@pytest.mark.parametrize(
    ("template", "problem"),
    [("{a[}", "expected '}' before end of string"), ("{a!}", "unmatched '{' in format spec")],
)
def test_balanced_braces_around_a_malformed_field_are_a_config_error(
    template: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        template_columns(template, "system")
    assert str(info.value) == (
        f"system template {template!r} is malformed ({problem}); write literal braces twice")
    assert isinstance(info.value.__cause__, ValueError)


def test_unknown_or_untextual_columns_are_refused_naming_the_fix() -> None:
    with pytest.raises(ColumnError) as info:
        render_template("{txet}", {"text": pl.String, "n": pl.Int64}, "system")
    assert str(info.value) == (
        "system template refers to column 'txet', which the frame does not have (columns: "
        "['text', 'n']); did you mean 'text'?")
    with pytest.raises(ColumnError) as info:
        render_template("{zzz}", ["text"])
    assert str(info.value) == (
        "prompt template refers to column 'zzz', which the frame does not have (columns: "
        "['text'])")
    fixes = {
        pl.Struct({"a": pl.Int64}): "unnest it (df.unnest('c'))",
        pl.List(pl.String): "pl.col('c').list.eval(pl.element().cast(pl.String))",
        pl.Array(pl.String, 2): "pl.col('c').arr.join(', ')",
        pl.Binary: "send them as a file with files='c'",
        pl.Object: "convert it to a String column first",
    }
    for dtype, fix in fixes.items():
        with pytest.raises(ColumnError) as info:
            render_template("{c}", {"c": dtype})
        kind = dtype.base_type().__name__
        assert str(info.value).startswith(
            f"prompt template uses column 'c', a {kind} column ({dtype}); a template renders "
            f"text and a {kind} has no single text form: ")
        assert fix in str(info.value)
    # a list of names (no dtypes) renders by casting, as the schema's strings do
    frame = pl.DataFrame({"t": ["x"]})
    assert frame.select(render_template("<{t}>", ["t"])).item() == "<x>"


def test_values_of_every_scalar_type_render_as_str_would() -> None:
    values: dict[str, Any] = {
        "i": -(2**63),
        "u": 2**64 - 1,
        "f": 1e-07,
        "nan": float("nan"),
        "b": True,
        "b2": False,
        "d": dt.date(2024, 2, 29),
        "t": dt.datetime(2024, 1, 2, 3, 4, 5, 6000),
        "z": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "dur": dt.timedelta(hours=1, microseconds=5),
        "time": dt.time(1, 2, 3),
        "dec": decimal.Decimal("1.50"),
        "cat": "red",
    }
    frame = pl.DataFrame(
        {k: [v] for k, v in values.items()},
        schema_overrides={"u": pl.UInt64, "dec": pl.Decimal(10, 2), "cat": pl.Categorical},
    )
    template = " ".join("{" + k + "}" for k in values)
    jobs = build_jobs(frame, model="gpt-4.1", prompt=template, system=template, salt="k",
                      scheme=NEW)
    expected = " ".join(str(v) for v in frame.row(0))
    assert jobs["prompt"].item() == expected == jobs["system"].item()
    assert expected.startswith("-9223372036854775808 18446744073709551615 1e-07 nan True False "
                               "2024-02-29 2024-01-02 03:04:05.006000 2024-01-02 03:04:05+00:00")
    nulls = pl.DataFrame({"b": [None, True]}, schema={"b": pl.Boolean})
    assert build_jobs(nulls, model="gpt-4.1", prompt="{b}", system=None, salt="k", scheme=NEW)[
        "prompt"].to_list() == [None, "True"]


# ---- histories


def test_history_column_is_checked_and_empty_histories_become_null() -> None:
    frame = pl.DataFrame({"h": [TURNS, [], None]}, schema={"h": HISTORY_DTYPE})
    assert frame.select(history_expr(frame, "h")).to_series().to_list() == [TURNS, None, None]
    assert frame.select(history_expr(frame, "h")).to_series().name == "history"
    assert frame.select(history_expr(frame, "h")).to_series().dtype == HISTORY_DTYPE
    with pytest.raises(ColumnError) as info:
        history_expr(frame, "hh")
    assert str(info.value) == (
        "history='hh': the frame has no such column (columns: ['h']); did you mean 'h'?")
    with pytest.raises(ColumnError) as info:
        history_expr(frame, "zzz")
    assert str(info.value) == "history='zzz': the frame has no such column (columns: ['h'])"
    for bad in (pl.DataFrame({"h": ["text"]}),
                pl.DataFrame({"h": [[1]]}),
                pl.DataFrame({"h": [[{"role": "user"}]]})):
        with pytest.raises(ColumnError) as info:
            history_expr(bad, "h")
        assert str(info.value) == (
            "history='h' must be a list of {'role': ..., 'content': ...} structs per row "
            f"(earlier turns), got dtype {bad.schema['h']}")
    for turn in ({"role": "system", "content": "x"}, {"role": "user", "content": None},
                 {"role": None, "content": "x"}):
        bad = pl.DataFrame({"h": [TURNS, [TURNS[0], turn]]}, schema={"h": HISTORY_DTYPE})
        with pytest.raises(ColumnError) as info:
            history_expr(bad, "h")
        assert str(info.value) == (
            "history='h': every turn needs role 'user' or 'assistant' and text content (the "
            f"system prompt goes in system=), got {turn!r}")
    # with several bad turns the message names the first one
    two = pl.DataFrame(
        {"h": [[{"role": "tool", "content": "1"}], [{"role": "bot", "content": "2"}]]},
        schema={"h": HISTORY_DTYPE},
    )
    with pytest.raises(ColumnError) as info:
        history_expr(two, "h")
    assert str(info.value).endswith("got {'role': 'tool', 'content': '1'}")
    # extra fields are dropped and roles/contents of other string-like types are cast
    extra = pl.DataFrame(
        {"h": [[{"role": "user", "content": "a", "name": "n"}]]},
        schema={"h": pl.List(pl.Struct({"role": pl.Categorical, "content": pl.String,
                                        "name": pl.String}))},
    )
    assert extra.select(history_expr(extra, "h")).to_series().to_list() == [
        [{"role": "user", "content": "a"}]]


# ---- parameter values


@pytest.mark.parametrize(
    ("params", "providers", "message"),
    [
        (
            {"temperature": "hot"}, ["openai"],
            "params['temperature'] must be a finite number, got 'hot'",
        ),
        ({"top_p": True}, ["openai"], "params['top_p'] must be a finite number, got True"),
        (
            {"temperature": 2.5}, ["openai"],
            "params['temperature'] must be between 0 and 2 for openai, got 2.5",
        ),
        (
            {"temperature": -0.1}, ["gemini"],
            "params['temperature'] must be between 0 and 2 for gemini, got -0.1",
        ),
        (
            # Anthropic has no range: it refuses any value (the model check, ParamError).
            {"top_p": 1.5}, ["anthropic", "openai"],
            "params['top_p'] must be between 0 and 1 for openai, got 1.5",
        ),
        (
            {"top_p": 1.01}, ["gemini"],
            "params['top_p'] must be between 0 and 1 for gemini, got 1.01",
        ),
        (
            {"frequency_penalty": -2.5}, ["openai"],
            "params['frequency_penalty'] must be between -2 and 2 for openai, got "
            "-2.5",
        ),
        (
            {"presence_penalty": 2.01}, ["openai"],
            "params['presence_penalty'] must be between -2 and 2 for openai, got "
            "2.01",
        ),
        ({"max_tokens": 0}, ["openai"], "params['max_tokens'] must be an int >= 1, got 0"),
        (
            {"max_tokens": 100.0}, ["openai"],
            "params['max_tokens'] must be an int >= 1, got 100.0; pass 100",
        ),
        ({"max_tokens": 1.5}, ["openai"], "params['max_tokens'] must be an int >= 1, got 1.5"),
        ({"max_tokens": True}, ["openai"], "params['max_tokens'] must be an int >= 1, got True"),
        ({"top_k": -1}, ["anthropic"], "params['top_k'] must be an int >= 0, got -1"),
        ({"seed": "7"}, ["openai"], "params['seed'] must be an int, got '7'"),
        (
            {"stop": ""}, ["openai"],
            "params['stop'] must be a non-empty string or a list of non-empty "
            "strings, got ''",
        ),
        (
            {"stop": ["a", 1]}, ["openai"],
            "params['stop'] must be a non-empty string or a list of non-empty "
            "strings, got ['a', 1]",
        ),
        (
            {"stop": {"a"}}, ["openai"],
            "params['stop'] must be a non-empty string or a list of non-empty "
            "strings, got {'a'}",
        ),
        (
            {"stop": list("abcde")}, ["gemini", "openai"],
            "params['stop'] may hold at most 4 sequences for openai, got 5; keep "
            "the 4 that matter most",
        ),
        (
            {"stop": list("abcdef")}, ["gemini"],
            "params['stop'] may hold at most 5 sequences for gemini, got 6; keep "
            "the 5 that matter most",
        ),
        (
            {"reasoning_effort": 1}, ["openai"],
            "params['reasoning_effort'] must be a string such as 'low', got 1",
        ),
    ],
)
def test_parameter_values_out_of_range_are_refused_naming_the_bound(
    params: dict[str, Any], providers: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        check_param_values(params, providers)
    assert str(info.value) == message


def test_parameter_values_at_their_bounds_are_accepted() -> None:
    ok: list[tuple[dict[str, Any], list[str]]] = [
        ({"temperature": 0, "top_p": 1, "frequency_penalty": -2, "presence_penalty": 2},
         ["openai"]),
        ({"temperature": 2.0, "top_p": 0.0}, ["openai", "gemini"]),
        ({"temperature": 1, "top_k": 0, "max_tokens": 1}, ["anthropic"]),
        ({"seed": -5, "stop": "END", "reasoning_effort": "high"}, ["openai"]),
        ({"stop": list("abcd")}, ["openai"]),
        ({"stop": tuple("abcde")}, ["gemini"]),
        ({"stop": list("abcdefgh")}, ["anthropic"]),  # no documented count limit
        ({"frequency_penalty": 5}, ["gemini"]),  # not an OpenAI run: no OpenAI range
        ({"other": object()}, ["openai"]),  # names are check_params' job
    ]
    for params, providers in ok:
        check_param_values(params, providers)


def test_the_escaped_v2_key_tags_history_h_and_the_files_key_f() -> None:
    """The length-prefixed key of a row holding NUL: the documented format, field by field.

    Each optional field after its own tag: a history and a files key of equal text (or one
    of them absent) must not give one key.
    """
    from batchata_df.jobs import job_keys

    jobs = pl.DataFrame({
        "provider": ["openai"] * 2, "model": ["m"] * 2, "system": [None, None],
        "prompt": ["a\x00b", "a\x00b"], "_extra_key": ["sha256:ab:x.pdf", None],
    })  # fmt: skip
    assert job_keys(jobs, scheme="hmac-sha256-v2").to_list() == [
        "\x006:openai1:m-3:a\x00bf15:sha256:ab:x.pdf", "\x006:openai1:m-3:a\x00bf-",
    ]  # fmt: skip
    with_history = jobs.with_columns(
        history=pl.Series([[{"role": "user", "content": "hi"}], None])
    )
    keys = job_keys(with_history, scheme="hmac-sha256-v2").to_list()
    assert keys[0] == (
        '\x006:openai1:m-3:a\x00bh30:{"role":"user","content":"hi"}f15:sha256:ab:x.pdf'
    )
    assert keys[1] == "\x006:openai1:m-3:a\x00bh0:f-"
