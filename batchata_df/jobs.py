"""From a frame to jobs: prompt templates, models per row, job keys and dedupe.

Everything here is vectorised with Polars expressions. The job key is a keyed hash of each
job's content that must stay stable across Polars versions (Polars' own ``hash`` is
documented not to be), so that a checkpoint written today is still valid tomorrow; its
scheme is recorded per checkpoint folder (:data:`IdScheme`).
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import string
from collections.abc import Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, Final, Literal

import polars as pl

from batchata_df.errors import (
    AmbiguousJobKeyWarning,
    ColumnError,
    ConfigError,
    ModelError,
    warn_user,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "PROVIDERS",
    "HISTORY_DTYPE",
    "ID_SCHEMES",
    "IdScheme",
    "build_jobs",
    "job_keys",
    "history_expr",
    "id_ints",
    "ids_of_ints",
    "job_ids",
    "parse_model",
    "render_template",
    "template_columns",
]

ProviderName = Literal["openai", "anthropic", "gemini"]
PROVIDERS: tuple[ProviderName, ...] = ("openai", "anthropic", "gemini")
_PREFIXES: dict[str, ProviderName] = {
    "gpt-": "openai",
    "o1": "openai",
    "o3": "openai",
    "o4": "openai",
    "chatgpt-": "openai",
    "claude-": "anthropic",
    "gemini-": "gemini",
}


def parse_model(name: str) -> tuple[ProviderName, str]:
    """Split ``"provider:model"`` or infer the provider from the model name.

    Examples
    --------
    >>> parse_model("gpt-5.4-mini")
    ('openai', 'gpt-5.4-mini')
    >>> parse_model("anthropic:my-finetune")
    ('anthropic', 'my-finetune')
    """
    if not isinstance(name, str) or not name.strip():
        msg = f"model must be a non-empty string or a pl.Expr, got {name!r}"
        raise ModelError(msg)
    if ":" in name:
        prefix, _, rest = name.partition(":")
        if prefix in PROVIDERS and rest:
            return prefix, rest
        msg = (
            f"unknown provider prefix {prefix!r} in model {name!r}; use one of "
            f"{', '.join(p + ':' for p in PROVIDERS)}"
        )
        raise ModelError(msg)
    for prefix, provider in _PREFIXES.items():
        if name.startswith(prefix):
            return provider, name
    msg = (
        f"cannot tell the provider of model {name!r}: names starting with gpt-/o1/o3/o4 are "
        "OpenAI, claude- Anthropic, gemini- Gemini; or write it as 'openai:<model>', "
        "'anthropic:<model>' or 'gemini:<model>'"
    )
    raise ModelError(msg)


def _did_you_mean(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_braces(template: str, what: str) -> None:
    """Refuse a stray ``{`` or ``}``, naming its position (``{{``/``}}`` are literals)."""
    i, n = 0, len(template)
    while i < n:
        char = template[i]
        if template.startswith(char * 2, i) and char in "{}":
            i += 2
            continue
        if char == "{":
            close = template.find("}", i + 1)
            nested = template.find("{", i + 1)
            if close == -1 or (nested != -1 and nested < close):
                msg = (
                    f"{what} template has a '{{' at position {i} that is never closed "
                    f"(near {template[max(0, i - 10) : i + 10]!r}); close the placeholder like "
                    "{column}, or write a literal brace as '{{'"
                )
                raise ConfigError(msg)
            i = close + 1
            continue
        if char == "}":
            msg = (
                f"{what} template has a '}}' at position {i} that closes nothing "
                f"(near {template[max(0, i - 10) : i + 10]!r}); write a literal brace as '}}}}'"
            )
            raise ConfigError(msg)
        i += 1


def template_columns(template: str, what: str = "prompt") -> list[str]:
    """The column names a ``str.format``-style template refers to.

    A stray brace is a :class:`~batchata_df.errors.ConfigError` naming its position.

    Examples
    --------
    >>> template_columns("Rate {text} from {{0}} to {scale}")
    ['text', 'scale']
    >>> template_columns("a { b")
    Traceback (most recent call last):
    ...
    batchata_df.errors.ConfigError: prompt template has a '{' at position 2 that is never \
closed (near 'a { b'); close the placeholder like {column}, or write a literal brace as '{{'
    """
    _check_braces(template, what)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:  # braces balanced, field malformed: '{a[}', '{a!}'
        msg = f"{what} template {template!r} is malformed ({e}); write literal braces twice"
        raise ConfigError(msg) from e
    cols = []
    for _, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        if field_name == "" or spec or conversion:
            msg = (
                f"{what} template {template!r}: each placeholder must be a bare column name "
                "like {text} (no positional {}, format specs or conversions); write literal "
                "braces as {{ and }}"
            )
            raise ConfigError(msg)
        cols.append(field_name)
    return cols


def _as_text(name: str, dtype: pl.DataType | None) -> pl.Expr:
    """Column ``name`` as the text ``str.format`` would put in a prompt (``str(value)``).

    Text, integers and dates cast exactly; booleans become ``True``/``False``. Polars'
    own cast writes floats (``1e-07``, ``NaN``), datetimes and other types differently
    from Python, so those columns go through ``str`` value by value.
    """
    col = pl.col(name)
    if dtype is None or dtype == pl.String or dtype.is_integer() or dtype == pl.Date:
        return col.cast(pl.String)
    if dtype == pl.Boolean:
        return pl.when(col).then(pl.lit("True")).when(col.not_()).then(pl.lit("False"))
    return col.map_batches(_python_str, return_dtype=pl.String)


def _python_str(values: pl.Series) -> pl.Series:
    return pl.Series(
        values.name, [None if v is None else str(v) for v in values.to_list()], dtype=pl.String
    )


_NOT_TEXT_FIX = {
    "Struct": "build the text yourself, e.g. pl.format('... {{}}', pl.col({c!r})"
    ".struct.json_encode()), or unnest it (df.unnest({c!r})) and name its fields",
    "List": "join it yourself, e.g. pl.col({c!r}).list.eval(pl.element().cast(pl.String))"
    ".list.join(', '), and pass that expression (or a column made from it)",
    "Array": "join it yourself, e.g. pl.col({c!r}).arr.join(', ') on a String array, and pass "
    "that expression (or a column made from it)",
    "Binary": "bytes are not text: send them as a file with files={c!r}, or decode them to a "
    "String column first",
    "Object": "convert it to a String column first",
}


def _check_text_column(name: str, dtype: pl.DataType, what: str) -> None:
    """Refuse columns that have no faithful text form (nested, bytes, Python objects).

    Numbers, booleans, dates, times, decimals, categoricals and enums render as Python's
    ``str`` would (see :func:`_as_text`). A Struct would render as ``"{1}"`` and a List or
    Binary cannot be cast at all, so they are refused with the expression that builds the
    text instead.
    """
    kind = dtype.base_type().__name__
    if kind in _NOT_TEXT_FIX:
        fix = _NOT_TEXT_FIX[kind].format(c=name)
        msg = (
            f"{what} template uses column {name!r}, a {kind} column ({dtype}); a template "
            f"renders text and a {kind} has no single text form: {fix}"
        )
        raise ColumnError(msg)


def render_template(
    template: str, columns: Sequence[str] | Mapping[str, pl.DataType], what: str = "prompt"
) -> pl.Expr:
    """A vectorised expression rendering ``template`` over a frame's columns.

    ``columns`` is the frame's schema (names and dtypes: nested and binary columns are
    refused) or just its names. Each row's text is exactly ``template.format(**row)``
    (``{{``/``}}`` are literal braces): given the schema, non-text columns render as
    Python's ``str`` does. A null value in a referenced column gives a null prompt (that
    row then fails without being sent).

    Examples
    --------
    >>> df = pl.DataFrame({"text": ["good"], "n": [1.5e-7]})
    >>> df.select(render_template("{{{text}}} {n}", df.schema)).item()
    '{good} 1.5e-07'
    """
    template_columns(template, what)
    names = list(columns)
    parts: list[pl.Expr] = []
    for literal, field_name, _, _ in string.Formatter().parse(template):
        if literal:
            parts.append(pl.lit(literal))
        if field_name is not None:
            if field_name not in names:
                msg = (
                    f"{what} template refers to column {field_name!r}, which the frame does "
                    f"not have (columns: {names!r}){_did_you_mean(field_name, names)}"
                )
                raise ColumnError(msg)
            dtype = None
            if isinstance(columns, Mapping):
                dtype = columns[field_name]
                _check_text_column(field_name, dtype, what)
            parts.append(_as_text(field_name, dtype))
    if not parts:
        return pl.lit("")
    return pl.concat_str(parts)


_NOT_TEXT_EXPR_FIX = {
    "Struct": "encode it yourself, e.g. {e}.struct.json_encode() (JSON text), or build the "
    "text from its fields with pl.format(...)",
    "List": "join it yourself, e.g. {e}.list.eval(pl.element().cast(pl.String)).list.join(', ')",
    "Array": "join it yourself, e.g. {e}.cast(pl.List(pl.String)).list.join(', ')",
    "Binary": "bytes are not text: if they hold UTF-8 text, say so with {e}.cast(pl.String); "
    "otherwise send them as a file (a column of bytes, passed as files='that_column')",
    "Object": "convert the objects to text yourself, e.g. "
    "{e}.map_elements(str, return_dtype=pl.String)",
}


def _check_text_expr(expr: pl.Expr, columns: Mapping[str, pl.DataType], what: str) -> None:
    """Refuse an expression whose values have no faithful text form, as for columns.

    The expression's dtype comes from the frame's schema alone (nothing is computed).
    Cast to text, a Struct gives ``"{1}"`` and Binary its bytes taken as text; a List,
    Array or Object does not cast at all. Every other dtype (numbers, text, categoricals,
    enums, dates, ...) is cast as before (:func:`_check_text_column` accepts the same).

    Examples
    --------
    >>> _check_text_expr(pl.col("s"), {"s": pl.Struct({"a": pl.Int64})}, "prompt")
    Traceback (most recent call last):
    ...
    batchata_df.errors.ColumnError: prompt expression col("s") (column 's') gives Struct \
values (Struct({'a': Int64})), which have no single text form to send: encode it \
yourself, e.g. col("s").struct.json_encode() (JSON text), or build the text from its \
fields with pl.format(...)
    """
    try:
        schema = pl.LazyFrame(schema=dict(columns)).select(expr).collect_schema()
    except pl.exceptions.ColumnNotFoundError as e:
        msg = f"an expression refers to a column the frame does not have: {e}"
        raise ColumnError(msg) from e
    except pl.exceptions.PolarsError:
        return  # an expression Polars cannot type without data: its select says why
    if len(schema) != 1:
        return
    ((name, dtype),) = schema.items()
    kind = dtype.base_type().__name__
    if kind not in _NOT_TEXT_EXPR_FIX:
        return
    shown = str(expr)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    fix = _NOT_TEXT_EXPR_FIX[kind].format(e=shown)
    msg = (
        f"{what} expression {shown} (column {name!r}) gives {kind} values ({dtype}), which "
        f"have no single text form to send: {fix}"
    )
    raise ColumnError(msg)


def _as_expr(
    value: str | pl.Expr, columns: Sequence[str] | Mapping[str, pl.DataType], what: str
) -> pl.Expr:
    if isinstance(value, pl.Expr):
        if isinstance(columns, Mapping):
            _check_text_expr(value, columns, what)
        return value.cast(pl.String)
    if isinstance(value, str):
        # The system prompt is a template like the prompt: {column} is filled per row.
        return render_template(value, columns, what)
    msg = f"{what} must be a string template or a pl.Expr, got {type(value).__name__}"
    raise ConfigError(msg)


# A prompt, system prompt or earlier turn without a non-blank character is never sent:
# Anthropic refuses an empty message ("messages.0: all messages must have non-empty
# content ...") and a blank one ("text content blocks must contain non-whitespace text"),
# also as the system prompt, and Gemini an empty text part ("required oneof field 'data'
# must have one initialized field"); sources in batchata_df/emulator/anthropic_checks.py
# and gemini_checks.py. OpenAI would answer it, but an answer to no text is money spent on
# nothing, so every provider is treated alike: the row fails unsent, as a null prompt does.
_BLANK_PROMPT: Final = (
    "input: the prompt is empty or only whitespace in this row (the provider would refuse "
    "it or answer nothing): fill in the column(s) the prompt uses, or filter such rows out"
)
_BLANK_SYSTEM: Final = (
    "input: the system prompt is empty or only whitespace in this row (Anthropic refuses "
    "it): fill it in, or make it null where a row has none, e.g. "
    "system=pl.col('system').replace('', None)"
)
_BLANK_TURN: Final = (
    "input: a turn of the history is empty or only whitespace in this row (Anthropic and "
    "Gemini refuse it): fill in its content or leave the turn out"
)


def _blank(text: pl.Expr) -> pl.Expr:
    r"""Whether ``text`` has no character but whitespace (null stays null).

    No character that is not whitespace: what ``text.str.strip_chars().str.len_bytes() ==
    0`` says (Rust's ``char::is_whitespace`` and the regex crate's ``\s`` are both
    Unicode's White_Space, checked over every code point in tests/test_blank_input.py),
    without ``strip_chars``' copy of every prompt (~35k page faults at 1M rows;
    benchmarks/PROFILE.md, fourteenth pass). The search stops at the first such
    character, the first of almost every prompt.

    Examples
    --------
    >>> pl.select(_blank(pl.Series(["", " \t\u3000", " a ", None]))).to_series().to_list()
    [True, True, False, None]
    """
    return ~text.str.contains(r"\S")


def _check_not_blank(prompt: str | pl.Expr, system: str | pl.Expr | None) -> None:
    """Refuse a constant prompt or system prompt that is empty or only whitespace.

    Every row would fail unsent (see ``_BLANK_PROMPT``): that is a mistake in the call,
    told before anything else happens.

    Examples
    --------
    >>> _check_not_blank("", None)
    Traceback (most recent call last):
    ...
    batchata_df.errors.ConfigError: prompt='' has no text to send: every row would fail \
(the providers refuse or answer nothing); give the template some text or a column, e.g. \
prompt='{text}'
    """
    for what, value, fix in (
        ("prompt", prompt, "give the template some text or a column, e.g. prompt='{text}'"),
        ("system", system, "pass system=None to send no system prompt"),
    ):
        if isinstance(value, str) and not value.strip():
            msg = (
                f"{what}={value!r} has no text to send: every row would fail (the providers "
                f"refuse or answer nothing); {fix}"
            )
            raise ConfigError(msg)


def build_jobs(
    frame: pl.DataFrame,
    *,
    model: str | pl.Expr,
    prompt: str | pl.Expr,
    system: str | pl.Expr | None,
    salt: str,
    scheme: IdScheme,
    extra_key: pl.Series | None = None,
    history: str | None = None,
) -> pl.DataFrame:
    """One job per row: ``job_id``, ``provider``, ``model``, ``prompt``, ``system``, errors.

    With ``history`` (a column of earlier conversation turns, see :func:`history_expr`)
    the jobs also have a ``history`` column, part of the job's content and so of its id.

    ``input_error`` says why a row cannot be sent (it then fails without being sent).

    ``job_id`` is a content hash of provider, model, system and prompt plus ``salt`` (the
    run-level request settings), so identical rows share one job and are paid once;
    ``scheme`` is the hash, the one the checkpoint folder records (:data:`IdScheme`).
    ``extra_key`` is more content per row that the request carries (the files' hashes,
    :func:`batchata_df.files.files_key`); see :func:`job_ids`.
    """
    columns = frame.schema
    _check_not_blank(prompt, system)
    exprs = [_as_expr(prompt, columns, "prompt").alias("prompt")]
    exprs.append(
        pl.lit(None, dtype=pl.String).alias("system")
        if system is None
        else _as_expr(system, columns, "system").alias("system")
    )
    if isinstance(model, pl.Expr):
        exprs.append(model.cast(pl.String).alias("model_spec"))
    else:
        parse_model(model)  # fail early, before touching rows
        exprs.append(pl.lit(model).alias("model_spec"))
    if history is not None:
        exprs.append(history_expr(frame, history))
    try:
        # The row index keeps one job per row when every expression is a literal (a
        # prompt without columns): a select of literals alone gives a single row.
        jobs = frame.select(pl.int_range(pl.len()).alias("\u0000row"), *exprs).drop("\u0000row")
    except pl.exceptions.ColumnNotFoundError as e:
        msg = f"an expression refers to a column the frame does not have: {e}"
        raise ColumnError(msg) from e
    specs = jobs.get_column("model_spec").unique().drop_nulls().to_list()
    resolved = {s: parse_model(s) for s in specs}
    mapping_provider = {s: p for s, (p, _) in resolved.items()}
    mapping_model = {s: m for s, (_, m) in resolved.items()}
    jobs = jobs.with_columns(
        pl.col("model_spec").replace_strict(mapping_provider, default=None).alias("provider"),
        pl.col("model_spec").replace_strict(mapping_model, default=None).alias("model"),
    ).drop("model_spec")
    input_error = (
        pl.when(pl.col("model").is_null())
        .then(pl.lit("input: the model expression gave null for this row"))
        .when(pl.col("prompt").is_null())
        .then(pl.lit("input: the prompt is null (a column it uses is null in this row)"))
        .when(pl.col("system").is_null() & pl.lit(isinstance(system, str)))
        .then(pl.lit("input: the system prompt is null (a column it uses is null in this row)"))
        .when(_blank(pl.col("prompt")))
        .then(pl.lit(_BLANK_PROMPT))
        .when(_blank(pl.col("system")))
        .then(pl.lit(_BLANK_SYSTEM))
    )
    if history is not None:
        blank_turn = (
            pl.col("history").list.eval(_blank(pl.element().struct.field("content"))).list.any()
        )
        input_error = input_error.when(blank_turn.fill_null(False)).then(pl.lit(_BLANK_TURN))
    jobs = jobs.with_columns(input_error.alias("input_error"))
    return jobs.with_columns(job_ids(jobs, salt, extra_key, scheme=scheme))


IdScheme = Literal["blake2b", "hmac-sha256", "hmac-sha256-v2"]
"""How :func:`job_ids` hashes a job's content with the run's salt into its 24-hex-digit id.

``"hmac-sha256-v2"``
    HMAC-SHA256 keyed by the salt (UTF-8) of the job's injective key (:func:`job_keys`),
    the first 12 bytes in hex. Computed by polars-hash, compiled and vectorised (half the
    CPU of ``"blake2b"`` in Python), or, where that cannot be imported or fails, by
    :mod:`hmac` per row: slower, the same ids. What new checkpoint folders use, and calls
    without one; the folder records it (``batchata_df.frame.ID_SCHEME_KEY``).
``"hmac-sha256"``
    The same hash of the older, NUL-joined key (not injective: :func:`job_keys`). What
    folders that recorded it hold, and keep.
``"blake2b"``
    BLAKE2b with a 12-byte digest keyed by the salt's first 64 UTF-8 bytes, per row in
    Python. What every folder written before the scheme was recorded holds: calls on such
    a folder keep using it, so that they find the jobs already paid for.
"""

ID_SCHEMES: tuple[IdScheme, ...] = ("blake2b", "hmac-sha256", "hmac-sha256-v2")
"""Every :data:`IdScheme`, oldest first."""


def job_ids(
    jobs: pl.DataFrame,
    salt: str,
    extra_key: pl.Series | None = None,
    *,
    scheme: IdScheme,
) -> pl.Series:
    r"""The ``job_id`` of each job: a hash of its content keyed by ``salt`` (``scheme``).

    Rows with an ``input_error`` get a null id. The content is provider, model, system and
    prompt; ``extra_key`` (one string per job,
    e.g. :func:`batchata_df.files.files_key`) is appended when given, so that the same
    prompt with other files is another job. Without it, ids are unchanged. The text hashed
    is :func:`job_keys`'s.

    Examples
    --------
    >>> jobs = pl.DataFrame({"provider": ["openai"], "model": ["gpt-5.4-mini"],
    ...                      "system": [None], "prompt": ["Rate: great"]},
    ...                     schema_overrides={"system": pl.String})
    >>> content = b"openai\x00gpt-5.4-mini\x00\x01\x00Rate: great"
    >>> job_ids(jobs, "salt", scheme="hmac-sha256").item() == (
    ...     hmac.new(b"salt", content, hashlib.sha256).hexdigest()[:24])
    True
    >>> job_ids(jobs, "salt", scheme="blake2b").item() == (
    ...     hashlib.blake2b(content, digest_size=12, key=b"salt").hexdigest())
    True
    >>> job_ids(jobs, "salt", scheme="hmac-sha256-v2").item() == (  # no NUL, no \x01
    ...     hmac.new(b"salt", content, hashlib.sha256).hexdigest()[:24])
    True
    """
    if extra_key is not None:
        jobs = jobs.with_columns(extra_key.alias("_extra_key"))
    keys = job_keys(jobs, scheme=scheme)
    if scheme in ("hmac-sha256", "hmac-sha256-v2"):
        out = _hmac_ids(keys, salt)
    elif scheme == "blake2b":
        out = _blake2b_ids(keys, salt)
    else:
        msg = f"unknown job id scheme {scheme!r}; expected one of {ID_SCHEMES!r}"
        raise ValueError(msg)
    if "input_error" in jobs.columns and jobs.get_column("input_error").null_count() < jobs.height:
        # A row that cannot be sent has no job: it must never share a real job's id (a null
        # prompt would otherwise hash like an empty one). Without such a row (a null count,
        # no pass) the ids are kept as they are, not copied by a when/then.
        out = jobs.select(
            pl.when(pl.col("input_error").is_null()).then(out).alias("job_id")
        ).to_series()
    return out


def job_keys(jobs: pl.DataFrame, *, scheme: IdScheme) -> pl.Series:
    r"""The text each job's id hashes: provider, model, system, prompt and what else is sent.

    ``history`` (when the frame has it) and ``_extra_key`` (when it has it: the files'
    key) come last. The older schemes join the fields with NUL, a null system as
    ``"\x01"``: not injective when a field holds NUL or a system is ``"\x01"`` (two such
    requests get one id: one is sent, and both rows get its answer). Their folders keep
    that key, or every row of them would be sent again.

    ``"hmac-sha256-v2"`` keys are injective. A job whose fields hold neither NUL nor
    ``\x01`` has the NUL-joined key, ``history`` tagged ``h`` and the files' key ``f``
    (no field can end early, the null system's ``\x01`` is no system's, and the tags tell
    the optional fields apart). Any other job's key is NUL followed by each field as its
    length in UTF-8 bytes, ``:`` and the field (``-`` for a null), each optional field
    after its tag: self-delimiting, and no joined key starts with NUL (a provider's name
    does not). Finding such rows is one scan of the texts (~0.02 s for 1M prompts of 150
    characters); the length-prefixed key is built only for them.

    Examples
    --------
    >>> import warnings
    >>> jobs = pl.DataFrame({"provider": ["openai"] * 3, "model": ["m"] * 3,
    ...                      "system": ["a\x00b", "a", None], "prompt": ["c", "b\x00c", "x"]})
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     job_keys(jobs, scheme="hmac-sha256").to_list()[:2]  # one key for two jobs
    ['openai\x00m\x00a\x00b\x00c', 'openai\x00m\x00a\x00b\x00c']
    >>> [w.category.__name__ for w in caught]
    ['AmbiguousJobKeyWarning']
    >>> job_keys(jobs, scheme="hmac-sha256-v2").to_list()
    ['\x006:openai1:m3:a\x00b1:c', '\x006:openai1:m1:a3:b\x00c', 'openai\x00m\x00\x01\x00x']
    """
    fields = [
        pl.col("provider").fill_null(""),
        pl.col("model").fill_null(""),
        pl.col("system").fill_null("\x01"),
        pl.col("prompt").fill_null(""),
    ]
    history = None
    if "history" in jobs.columns:  # only then, so that ids of runs without it stay the same
        history = (
            pl.col("history")
            .list.eval(pl.element().struct.json_encode())
            .list.join("\x02")
            .fill_null("")
        )
    extra = pl.col("_extra_key").fill_null("") if "_extra_key" in jobs.columns else None
    if scheme != "hmac-sha256-v2":
        old = fields + [e for e in (history, extra) if e is not None]
        keys = jobs.select(pl.concat_str(old, separator="\x00").alias("job_id")).to_series()
        _warn_if_ambiguous(jobs, keys)
        return keys
    tagged = fields + [
        pl.lit(tag) + e for tag, e in (("h", history), ("f", extra)) if e is not None
    ]
    keys = jobs.select(pl.concat_str(tagged, separator="\x00").alias("job_id")).to_series()
    unsafe = _unsafe_rows(jobs)
    if not unsafe.any():
        return keys

    def field(e: pl.Expr) -> pl.Expr:
        return pl.when(e.is_null()).then(pl.lit("-")).otherwise(
            pl.concat_str([e.str.len_bytes().cast(pl.String), pl.lit(":"), e])
        )

    raw = [pl.col(c).cast(pl.String) for c in ("provider", "model", "system", "prompt")]
    pieces = [pl.lit("\x00")] + [field(e) for e in raw]
    if history is not None:
        pieces += [pl.lit("h"), field(history)]
    if extra is not None:
        pieces += [pl.lit("f"), field(pl.col("_extra_key").cast(pl.String))]
    rows = unsafe.arg_true()
    escaped = jobs[rows].select(pl.concat_str(pieces).alias("job_id")).to_series()
    return keys.scatter(rows, escaped)


def _unsafe_rows(jobs: pl.DataFrame) -> pl.Series:
    r"""Rows whose texts hold NUL or ``\x01``: the only ones a NUL-joined key can confuse.

    The history is JSON text, which holds no raw control character: not scanned.
    """
    texts = ["provider", "model", "system", "prompt"]
    texts += ["_extra_key"] if "_extra_key" in jobs.columns else []
    return jobs.select(
        pl.any_horizontal(
            pl.col(c).cast(pl.String).str.contains("[\x00\x01]") for c in texts
        ).fill_null(False)
    ).to_series()


def _warn_if_ambiguous(jobs: pl.DataFrame, keys: pl.Series) -> None:
    r"""Warn when an older scheme's NUL-joined ``keys`` give different jobs one key.

    Only rows holding NUL or ``\x01`` can collide; without one (a scan, ~0.02 s at 1M
    rows) nothing more is done. Rows that cannot be sent (``input_error``) get no id and
    are left out.
    """
    if not _unsafe_rows(jobs).any():
        return
    sendable = (
        jobs.get_column("input_error").is_null()
        if "input_error" in jobs.columns
        else pl.Series([True] * jobs.height)
    )
    injective = job_keys(jobs, scheme="hmac-sha256-v2").filter(sendable)
    if injective.n_unique() > keys.filter(sendable).n_unique():
        msg = (
            "rows of this call hold NUL or \\x01 and this checkpoint folder's job ids (an "
            "older scheme) give some different requests one id: one is sent and each gets "
            "its answer; run those rows with a new state folder, whose ids cannot collide"
        )
        warn_user(msg, AmbiguousJobKeyWarning)


def _blake2b_ids(keys: pl.Series, salt: str) -> pl.Series:
    """The ``"blake2b"`` scheme: never change it, older folders' ids are made with it."""
    # The keyed state is set up once and copied per row (same digests as a new keyed
    # hash per row, ~25 % less CPU); the keys come as UTF-8 bytes from Polars.
    # ``map`` over a local function: ~10 % less CPU than a loop appending to a list.
    copy = hashlib.blake2b(digest_size=12, key=salt.encode()[:64]).copy

    def digest(key: bytes) -> str:
        h = copy()
        h.update(key)
        return h.hexdigest()

    ids = list(map(digest, keys.cast(pl.Binary).to_list()))
    return pl.Series("job_id", ids, dtype=pl.String)


_ID_HEX_DIGITS = 24
"""An id is the first 12 bytes of the digest, in hex (as long as a ``"blake2b"`` id)."""


def id_ints(ids: pl.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """Each job id as its exact 96-bit value: ``(high 64 bits, low 32 bits)``, 12 bytes an id.

    ``None`` when an id is null or is not 24 lowercase hex digits (as :func:`job_ids` makes
    them): then :func:`ids_of_ints` could not give back the same text. A Polars string holds
    an id in 40 bytes (a 16-byte view and its 24 digits); what holds many ids for long (the
    batches in flight, :class:`~batchata_df.stream.SeenIds`) holds these instead.

    Examples
    --------
    >>> hi, lo = id_ints(pl.Series(["0123456789abcdef00000001", "ffffffffffffffffffffffff"]))
    >>> [hex(int(h)) for h in hi], [int(x) for x in lo]
    (['0x123456789abcdef', '0xffffffffffffffff'], [1, 4294967295])
    >>> ids_of_ints(hi, lo).to_list()
    ['0123456789abcdef00000001', 'ffffffffffffffffffffffff']
    >>> id_ints(pl.Series(["0123456789ABCDEF00000001"])) is None  # not as job_ids makes them
    True
    >>> id_ints(pl.Series(["job-1"])) is None
    True
    """
    import numpy as np  # here: importing batchata_df does not import numpy

    if ids.null_count() or not ids.str.contains(f"^[0-9a-f]{{{_ID_HEX_DIGITS}}}$").all():
        return None
    hi = ids.str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64).to_numpy()
    lo = ids.str.slice(16, 8).str.to_integer(base=16, dtype=pl.UInt32).to_numpy()
    return np.asarray(hi, dtype=np.uint64), np.asarray(lo, dtype=np.uint32)


def ids_of_ints(hi: np.ndarray, lo: np.ndarray, name: str = "job_id") -> pl.Series:
    """The job ids of :func:`id_ints`' values, as text again (``name``: the Series' name).

    The 12 bytes of each id, big-endian, hex-encoded by Polars (~40 ns an id).
    """
    import numpy as np
    import pyarrow as pa  # type: ignore[import-untyped]

    n = int(hi.size)
    raw = np.empty((n, 12), dtype=np.uint8)
    raw[:, :8] = hi.astype(">u8").view(np.uint8).reshape(n, 8)
    raw[:, 8:] = lo.astype(">u4").view(np.uint8).reshape(n, 4)
    values = pa.FixedSizeBinaryArray.from_buffers(pa.binary(12), n, [None, pa.py_buffer(raw)])
    return pl.Series(name, values).cast(pl.Binary).bin.encode("hex")


def _hmac_ids(keys: pl.Series, salt: str) -> pl.Series:
    """The ``"hmac-sha256"`` scheme: compiled when polars-hash works, else :mod:`hmac`."""
    if _compiled_hmac_agrees():
        try:
            return _compiled_hmac_ids(keys, salt)
        except Exception:  # a plugin failing at run time: the same ids, from hmac below
            pass
    return _python_hmac_ids(keys, salt)


def _compiled_hmac_ids(keys: pl.Series, salt: str) -> pl.Series:
    import polars_hash as plh  # a compiled Polars plugin: HMAC per row in Rust

    # polars-hash takes the key as text and uses its UTF-8 bytes, as ``salt.encode()``.
    digests = plh.col("job_id").chash.hmac_sha256(key=salt).str.slice(0, _ID_HEX_DIGITS)
    # ``str.slice`` makes views into the 64-digit digests: each id would keep all 64 digits
    # alive behind its 16-byte view for as long as the column (or any slice of it, such as
    # a batch in flight) lives, 95 bytes an id held against 41 once copied
    # (benchmarks/PROFILE.md, twenty-eighth pass). ``concat_str`` copies the 24 digits into
    # a buffer of their own (~4 ms a million ids; ``cast`` and ``shrink_to_fit`` do not).
    compact = pl.concat_str([digests, pl.lit("")])
    return keys.to_frame().select(compact.alias("job_id")).to_series().cast(pl.String)


def _python_hmac_ids(keys: pl.Series, salt: str) -> pl.Series:
    copy = hmac.new(salt.encode(), digestmod=hashlib.sha256).copy

    def digest(key: bytes) -> str:
        h = copy()
        h.update(key)
        return h.hexdigest()[:_ID_HEX_DIGITS]

    ids = list(map(digest, keys.cast(pl.Binary).to_list()))
    return pl.Series("job_id", ids, dtype=pl.String)


_PROBE_KEYS = ["", "a\x00b\x00", "é 漢 🙂", "\x01" * 200]
_PROBE_SALTS = ["", "s", "é" * 40, "k" * 100]  # a key of more than 64 bytes is hashed


@cache
def _compiled_hmac_agrees() -> bool:
    """Whether polars-hash imports, runs and gives :mod:`hmac`'s ids (checked once).

    Ids are a checkpoint's keys: a polars-hash that is missing, built for another Polars,
    or that one day encodes a key otherwise, must cost CPU, never a different id.
    """
    keys = pl.Series("job_id", _PROBE_KEYS, dtype=pl.String)
    try:
        return all(
            _compiled_hmac_ids(keys, salt).equals(_python_hmac_ids(keys, salt))
            for salt in _PROBE_SALTS
        )
    except Exception:  # ImportError, or a plugin that cannot run with this Polars
        return False


HISTORY_DTYPE = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
"""The dtype of a ``history=`` column: earlier turns, in order."""


BAD_TURN = (
    # (a null role must fail too: is_in gives null for it, which filter would drop)
    ~pl.col("role").is_in(["user", "assistant"]).fill_null(False) | pl.col("content").is_null()
)
"""Over a history's turns as text ``role`` and ``content`` columns: the turns refused."""


def bad_turn_error(column: str, turn: Mapping[str, object]) -> ColumnError:
    """The error for a turn of the ``history`` column that :data:`BAD_TURN` refuses."""
    msg = (
        f"history={column!r}: every turn needs role 'user' or 'assistant' and text "
        f"content (the system prompt goes in system=), got {dict(turn)!r}"
    )
    return ColumnError(msg)


def history_expr(frame: pl.DataFrame, column: str) -> pl.Expr:
    """The checked ``history`` column of the jobs: earlier user/assistant turns, in order.

    Raises :class:`ColumnError` naming the fix when the column is missing, is not a list
    of ``{role, content}`` structs, or has a role other than ``user``/``assistant`` or a
    null content. An empty list becomes null (the prompt alone is sent).

    Examples
    --------
    >>> df = pl.DataFrame({"h": [[{"role": "user", "content": "hi"},
    ...                          {"role": "assistant", "content": "hello"}], []]})
    >>> df.select(history_expr(df, "h")).to_series().list.len().to_list()
    [2, None]
    """
    if column not in frame.columns:
        msg = (
            f"history={column!r}: the frame has no such column (columns: "
            f"{frame.columns!r}){_did_you_mean(column, frame.columns)}"
        )
        raise ColumnError(msg)
    dtype = frame.schema[column]
    inner = dtype.inner if isinstance(dtype, pl.List) else None
    fields = {f.name for f in inner.fields} if isinstance(inner, pl.Struct) else set()
    if not {"role", "content"} <= fields:
        msg = (
            f"history={column!r} must be a list of {{'role': ..., 'content': ...}} structs "
            f"per row (earlier turns), got dtype {dtype}"
        )
        raise ColumnError(msg)
    turns = frame.get_column(column).list.eval(
        pl.struct(
            pl.element().struct.field("role").cast(pl.String).alias("role"),
            pl.element().struct.field("content").cast(pl.String).alias("content"),
        )
    )
    flat = turns.explode().drop_nulls().struct.unnest()
    bad = flat.filter(BAD_TURN)
    if bad.height:
        raise bad_turn_error(column, bad.row(0, named=True))
    return (
        pl.when(turns.list.len() > 0)
        .then(pl.lit(turns))
        .otherwise(pl.lit(None, dtype=HISTORY_DTYPE))
        .alias("history")
    )


def check_params(
    params: Mapping[str, Any] | None, supported: frozenset[str]
) -> dict[str, Any]:
    """Validate model parameter names against what every provider in the run supports."""
    out = dict(params or {})
    for name in out:
        if name not in supported:
            msg = (
                f"unknown model parameter {name!r}; supported: {sorted(supported)!r}"
                f"{_did_you_mean(name, sorted(supported))}"
            )
            raise ConfigError(msg)
    return out


# Value rules per parameter and provider. Sources: the SDKs' own docstrings (openai 3.57
# ``chat/completion_create_params.py``: temperature 0-2, penalties -2..2, "up to 4" stop
# sequences) and Google's GenerationConfig reference (temperature 0-2, top_p 0-1, at most 5
# stopSequences). Anthropic has no range here: API version 2026-10-21, which anthropic 2.x
# sends, refuses temperature / top_p / top_k at any value on every model, which the model
# check says (models.check_model_params); a "between 0 and 1" here named a fix Claude
# refuses too. Which parameters a *model* accepts is that separate check (model caps).
_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "temperature": {"openai": (0, 2), "gemini": (0, 2)},
    "top_p": {"openai": (0, 1), "gemini": (0, 1)},
    "frequency_penalty": {"openai": (-2, 2)},
    "presence_penalty": {"openai": (-2, 2)},
}
_MIN_INT = {"max_tokens": 1, "top_k": 0, "seed": None}
_MAX_STOP = {"openai": 4, "gemini": 5}


def check_param_values(params: Mapping[str, Any], providers: Sequence[str]) -> None:
    """Check parameter *values* (types and ranges) for every provider the run uses.

    Numbers must be real and finite (a boolean is not one); integers must be ``int``;
    ``stop`` is a string or a list of strings within the provider's count limit. A run that
    uses several providers gets the strictest range.

    Examples
    --------
    >>> check_param_values({"temperature": 0.5, "stop": ["END"]}, ["openai"])
    >>> try:
    ...     check_param_values({"top_p": 1.5}, ["openai", "anthropic"])
    ... except ConfigError as e:
    ...     print(e)
    params['top_p'] must be between 0 and 1 for openai, got 1.5
    """
    from batchata_df.validate import is_real

    for name, value in params.items():
        if name in _RANGES:
            if not is_real(value):
                msg = f"params[{name!r}] must be a finite number, got {value!r}"
                raise ConfigError(msg)
            for provider in providers:
                bounds = _RANGES[name].get(provider)
                if bounds is not None and not bounds[0] <= float(value) <= bounds[1]:
                    msg = (
                        f"params[{name!r}] must be between {bounds[0]:g} and {bounds[1]:g} "
                        f"for {provider}, got {value!r}"
                    )
                    raise ConfigError(msg)
        elif name in _MIN_INT:
            low = _MIN_INT[name]
            if isinstance(value, bool) or not isinstance(value, int) or (
                low is not None and value < low
            ):
                need = "an int" if low is None else f"an int >= {low}"
                msg = f"params[{name!r}] must be {need}, got {value!r}"
                if isinstance(value, float) and value.is_integer():
                    msg += f"; pass {int(value)}"
                raise ConfigError(msg)
        elif name == "stop":
            _check_stop(value, providers)
        elif name == "reasoning_effort" and not isinstance(value, str):
            msg = f"params['reasoning_effort'] must be a string such as 'low', got {value!r}"
            raise ConfigError(msg)


def _check_stop(value: object, providers: Sequence[str]) -> None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) and v for v in items):
        msg = (
            f"params['stop'] must be a non-empty string or a list of non-empty strings, "
            f"got {value!r}"
        )
        raise ConfigError(msg)
    for provider in providers:
        most = _MAX_STOP.get(provider)
        if most is not None and len(items) > most:
            msg = (
                f"params['stop'] may hold at most {most} sequences for {provider}, got "
                f"{len(items)}; keep the {most} that matter most"
            )
            raise ConfigError(msg)
