"""The result decoders as they were on main at 4aaf651, before the tenth pass: the reference.

Kept verbatim (only renamed and with their imports spelled out) so that
``tests/test_decode_equivalence.py`` can compare the faster decoders with the code path
they replaced, frame for frame, on any result lines. Not used by the library.
"""

# ruff: noqa
# mypy: ignore-errors

from __future__ import annotations

import io

import polars as pl

from batchata_df.providers.anthropic import _CITED_BLOCK, _TEXT_BLOCK, _line_schema, _with_citations
from batchata_df.providers.base import (
    JSONL_SLICE_BYTES,
    LINE_COLUMN,
    RequestSpec,
    _NULL_LINE,
    _OBJECT_FIRST,
    _arrow_type,
    _read_jsonl_polars,
    conform_results,
    empty_results,
    is_blank,
    result_lines,
    strip_ends,
    with_result_lines,
)
from batchata_df.providers.gemini import CANCELLED_CODES
from batchata_df.providers.gemini import _LINE_SCHEMA as GEMINI_LINE_SCHEMA
from batchata_df.providers.openai import _LINE_SCHEMA as OPENAI_LINE_SCHEMA


def read_jsonl(data: bytes, schema: pl.Schema) -> pl.DataFrame:
    fast = _read_jsonl_arrow(data, schema)
    return fast if fast is not None else _read_jsonl_polars(data, schema)


def _read_jsonl_arrow(data: bytes, schema: pl.Schema) -> pl.DataFrame | None:
    """:func:`read_jsonl` through pyarrow's JSON reader, or ``None`` if it refuses the data.

    pyarrow parses JSON Lines against an explicit schema about 1.5x faster than
    ``str.json_decode`` (``benchmarks/PROFILE.md``), in blocks of 1 MB on this thread.
    It is stricter (a value of another JSON type than the schema's, an integer past
    Int64, a malformed line are errors): on any error the caller decodes with Polars,
    which gives the same frame or the error ``read_ndjson`` would give.
    """
    try:
        import pyarrow as pa
        import pyarrow.json as pj  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        return None
    if _OBJECT_FIRST.match(data) is None or _NULL_LINE.search(data) is not None:
        # pyarrow 26 crashes the process (SIGSEGV) on a `null` line at the start of a
        # block (the file's first line, or one after a block boundary): data with such a
        # line goes to Polars. A raw newline never occurs inside a JSON string, so these
        # only match lines that are `null`.
        return None
    arrow_schema = pa.schema([(name, _arrow_type(dtype)) for name, dtype in schema.items()])
    try:
        table = pj.read_json(
            io.BytesIO(data),
            read_options=pj.ReadOptions(use_threads=False, block_size=JSONL_SLICE_BYTES),
            parse_options=pj.ParseOptions(
                explicit_schema=arrow_schema, unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowException, ValueError):
        return None
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.cast(schema)


def openai_decode_lines(data: bytes, *, responses: bool = False) -> pl.DataFrame:
    """Decode OpenAI batch output/error JSONL into the normalized results frame.

    With ``responses``, each row's ``response`` is its line as OpenAI sent it.
    """
    data = strip_ends(data)  # data.strip() without copying the download to drop its "\n"
    if not data:
        return empty_results()
    raw = read_jsonl(data, OPENAI_LINE_SCHEMA)
    if responses:
        raw = with_result_lines(raw, result_lines(data))
    resp = pl.col("response")
    body = resp.struct.field("body")
    choice = body.struct.field("choices").list.first()
    message = choice.struct.field("message")
    usage = body.struct.field("usage")
    status_code = resp.struct.field("status_code")
    finish = choice.struct.field("finish_reason")
    refusal = message.struct.field("refusal")
    body_err = body.struct.field("error")
    line_err = pl.col("error")
    # finish_reason "content_filter" (openai 3.57 ChatCompletion Choice): the filter cut
    # the answer; the row fails with that reason, not as a schema error of the partial text.
    filtered = (finish == "content_filter").fill_null(False)
    ok = (status_code == 200) & refusal.is_null() & choice.is_not_null() & ~filtered
    err_code = pl.coalesce(line_err.struct.field("code"), body_err.struct.field("code"))
    outcome = (
        pl.when(ok)
        .then(pl.lit("succeeded"))
        .when(err_code == "batch_expired")
        .then(pl.lit("expired"))
        .when(err_code == "batch_cancelled")
        .then(pl.lit("canceled"))
        .otherwise(pl.lit("errored"))
    )
    error = (
        pl.when(ok)
        .then(pl.lit(None, dtype=pl.String))
        .when(refusal.is_not_null())
        .then(pl.concat_str([pl.lit("refusal: "), refusal]))
        .when(filtered & (status_code == 200))
        .then(
            pl.lit(
                "content_filter: OpenAI's content filter stopped the answer (finish_reason "
                "content_filter); the partial answer is kept as the raw answer"
            )
        )
        .when(line_err.is_not_null())
        .then(
            pl.concat_str(
                [
                    line_err.struct.field("code").fill_null("error"),
                    pl.lit(": "),
                    line_err.struct.field("message").fill_null(""),
                ]
            )
        )
        .otherwise(
            pl.concat_str(
                [
                    pl.lit("http_"),
                    status_code.cast(pl.String).fill_null("?"),
                    pl.lit(": "),
                    pl.coalesce(
                        body_err.struct.field("message"), pl.lit("request failed")
                    ),
                ]
            )
        )
    )
    out = raw.select(
        pl.col("custom_id").alias("job_id"),
        outcome.alias("outcome"),
        # A refusal's text too: it is kept as the row's raw answer (job_events.raw).
        pl.when(ok)
        .then(message.struct.field("content"))
        .when(refusal.is_not_null())
        .then(refusal)
        .when(filtered)
        .then(message.struct.field("content"))
        .alias("text"),
        error.alias("error"),
        (finish == "length").fill_null(False).alias("truncated"),
        usage.struct.field("prompt_tokens").alias("input_tokens"),
        usage.struct.field("completion_tokens").alias("output_tokens"),
        usage.struct.field("prompt_tokens_details").struct.field("cached_tokens").alias(
            "cached_tokens"
        ),
        # openai 3.57 ``PromptTokensDetails.cache_write_tokens``: prompt tokens written to
        # the cache (part of prompt_tokens; newer models bill them at a cache-write rate).
        pl.when(usage.is_not_null())
        .then(
            usage.struct.field("prompt_tokens_details")
            .struct.field("cache_write_tokens")
            .fill_null(0)
        )
        .alias("cache_write_tokens"),
        # Reasoning is inside completion_tokens (billed as output); this is its share.
        pl.when(usage.is_not_null())
        .then(
            usage.struct.field("completion_tokens_details")
            .struct.field("reasoning_tokens")
            .fill_null(0)
        )
        .alias("reasoning_tokens"),
        *([pl.col(LINE_COLUMN).alias("response")] if responses else []),
    )
    return conform_results(out)




_TEXT = "\x00text"
"""The decoded answer's column while :func:`decode_lines` normalises (never a line field)."""


def answer_text(raw: pl.DataFrame) -> pl.Series:
    """The answer of each decoded result line: its first candidate's text parts, joined.

    Thought parts and parts without text are left out; null when no text part is left.
    Nearly every answer is one part: when no line has more, the one part's text is taken
    without evaluating a list per line (a quarter of the CPU of the general expression,
    the same values).

    Examples
    --------
    >>> line = {"response": {"candidates": [{"content": {"parts": [
    ...     {"text": "plan", "thought": True}, {"text": "4"}, {"text": "2"}]}}]}}
    >>> answer_text(pl.DataFrame([line])).to_list()
    ['42']
    """
    parts = raw.select(
        pl.col("response")
        .struct.field("candidates")
        .list.first()
        .struct.field("content")
        .struct.field("parts")
    ).to_series()
    if (parts.list.len().max() or 0) <= 1:  # type: ignore[operator]
        part = pl.col("parts").list.first()
        text = pl.when(~part.struct.field("thought").fill_null(False)).then(
            part.struct.field("text")
        )
    else:
        thought = pl.element().struct.field("thought").fill_null(False)
        texts = (
            pl.col("parts")
            .list.eval(pl.when(~thought).then(pl.element().struct.field("text")))
            .list.drop_nulls()
        )
        text = pl.when(texts.list.len() > 0).then(texts.list.join(""))
    return parts.alias("parts").to_frame().select(text.alias("text")).to_series()


def gemini_decode_lines(data: bytes, *, responses: bool = False) -> pl.DataFrame:
    """Decode Gemini result lines (``{"key", "response" | "error"}``) into RESULTS.

    With ``responses``, each row's ``response`` is its line as Gemini sent it.

    The answer is the concatenated text parts of the first candidate, without thought
    parts. Usage: input = ``promptTokenCount``, output = ``candidatesTokenCount`` +
    ``thoughtsTokenCount`` (thinking is billed as output, and ``candidatesTokenCount``
    leaves it out: google-genai 3.6.1 ``types.py`` ``GenerateContentResponseUsageMetadata``,
    whose total is prompt + candidates + tool-use prompt + thoughts), reasoning =
    ``thoughtsTokenCount``, cached = ``cachedContentTokenCount``.
    """
    data = strip_ends(data)  # data.strip() without copying the download to drop its "\n"
    if not data:
        return empty_results()
    raw = read_jsonl(data, GEMINI_LINE_SCHEMA)
    if responses:
        raw = with_result_lines(raw, result_lines(data))
    # A line without its key that holds a response was billed: kept (its job_id null),
    # so that its usage counts as unmatched spend (engine.collection.unmatched_events).
    raw = raw.filter(pl.col("key").is_not_null() | pl.col("response").is_not_null())
    # The answer once, as a column: an eager select evaluates an expression once per use,
    # and the text is used four times below.
    raw = raw.with_columns(answer_text(raw).alias(_TEXT))
    text = pl.col(_TEXT)
    resp = pl.col("response")
    candidate = resp.struct.field("candidates").list.first()
    finish = candidate.struct.field("finishReason")
    usage = resp.struct.field("usageMetadata")
    err = pl.col("error")
    err_code = err.struct.field("code")
    blocked = resp.struct.field("promptFeedback").struct.field("blockReason")
    # A finish reason other than STOP / MAX_TOKENS (google-genai 3.6.1 FinishReason: SAFETY,
    # RECITATION, BLOCKLIST, PROHIBITED_CONTENT, SPII, LANGUAGE, OTHER, ...) means Gemini
    # stopped the answer: the row fails with that reason, partial text or not.
    normal = ["STOP", "MAX_TOKENS", "FINISH_REASON_UNSPECIFIED"]
    stopped = finish.is_not_null() & ~finish.is_in(normal)
    ok = err.is_null() & text.is_not_null() & ~stopped.fill_null(False)
    outcome = (
        pl.when(ok)
        .then(pl.lit("succeeded"))
        .when(err_code.is_in(list(CANCELLED_CODES)))
        .then(pl.lit("canceled"))
        .otherwise(pl.lit("errored"))
    )
    error = (
        pl.when(ok)
        .then(pl.lit(None, dtype=pl.String))
        .when(err.is_not_null())
        .then(
            pl.concat_str(
                [
                    pl.lit("error_"),
                    err_code.cast(pl.String).fill_null("?"),
                    pl.lit(": "),
                    err.struct.field("message").fill_null("request failed"),
                ]
            )
        )
        .when(blocked.is_not_null())
        .then(pl.concat_str([pl.lit("blocked: the prompt was blocked ("), blocked, pl.lit(")")]))
        .when(stopped)
        .then(
            pl.concat_str(
                [
                    finish.str.to_lowercase(),
                    pl.lit(": Gemini stopped the answer (finishReason "),
                    finish,
                    pl.lit(")"),
                ]
            )
        )
        .otherwise(
            pl.concat_str(
                [
                    pl.lit("no_answer: the model returned no text (finish reason "),
                    finish.fill_null("unknown"),
                    pl.lit(")"),
                ]
            )
        )
    )
    out = raw.select(
        pl.col("key").alias("job_id"),
        outcome.alias("outcome"),
        pl.when(ok).then(text).alias("text"),
        error.alias("error"),
        (finish == "MAX_TOKENS").fill_null(False).alias("truncated"),
        usage.struct.field("promptTokenCount").alias("input_tokens"),
        pl.when(usage.is_not_null())
        .then(
            usage.struct.field("candidatesTokenCount").fill_null(0)
            + usage.struct.field("thoughtsTokenCount").fill_null(0)
        )
        .alias("output_tokens"),
        pl.when(usage.is_not_null())
        .then(usage.struct.field("cachedContentTokenCount").fill_null(0))
        .alias("cached_tokens"),
        pl.when(usage.is_not_null())
        .then(usage.struct.field("thoughtsTokenCount").fill_null(0))
        .alias("reasoning_tokens"),
        *([pl.col(LINE_COLUMN).alias("response")] if responses else []),
        # Not in the decoder of 4aaf651: RESULTS.model (modelVersion, the model that
        # answered) came later (session 18), read as its line has it.
        resp.struct.field("modelVersion").alias("model"),
    )
    return conform_results(out)


def anthropic_decode_results(data: bytes, spec: RequestSpec | None = None) -> pl.DataFrame:
    r"""Decode Message Batch results JSONL into the normalized :data:`RESULTS` frame.

    The answer text is the concatenation of the ``text`` blocks (``thinking`` and other
    blocks are skipped by type); input tokens include cache reads and writes. With
    ``spec.citations``, the blocks' citations are given to the answer's fields
    (:func:`batchata_df.citations.map_citations`: the ``citations`` column) and the text
    is the answer's JSON without a code fence.

    Examples
    --------
    >>> line = (
    ...     b'{"custom_id":"a","result":{"type":"succeeded","message":{"content":['
    ...     b'{"type":"thinking","thinking":"","signature":"s"},{"type":"text","text":"hi"}],'
    ...     b'"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1,'
    ...     b'"cache_creation_input_tokens":0,"cache_read_input_tokens":4}}}}\n'
    ...     b'{"custom_id":"b","result":{"type":"errored","error":{"type":"error",'
    ...     b'"error":{"type":"api_error","message":"boom"}}}}\n'
    ... )
    >>> anthropic_decode_results(line).select("job_id", "text", "error", "input_tokens").rows()
    [('a', 'hi', None, 7), ('b', None, 'api_error: boom', None)]
    """
    if is_blank(data):  # data.strip() would copy the whole download
        return empty_results()
    citations = spec is not None and spec.citations
    responses = spec is not None and spec.keep_responses
    # built per call (microseconds): a mutation test then sees the schema it reads with
    raw = read_jsonl(data, _line_schema(_CITED_BLOCK if citations else _TEXT_BLOCK))
    if responses:  # each line as Anthropic sent it
        raw = with_result_lines(raw, result_lines(data))
    result = pl.col("result")
    kind = result.struct.field("type")
    message = result.struct.field("message")
    stop = message.struct.field("stop_reason")
    usage = message.struct.field("usage")
    texts = message.struct.field("content").list.eval(
        pl.element().filter(pl.element().struct.field("type") == "text").struct.field("text")
    )
    text = pl.when(texts.list.len() > 0).then(texts.list.join(""))
    has_thinking = (
        message.struct.field("content")
        .list.eval(pl.element().struct.field("type").is_in(["thinking", "redacted_thinking"]))
        .list.any()
        .fill_null(False)
    )
    err = result.struct.field("error").struct.field("error")
    refused = (kind == "succeeded") & (stop == "refusal")
    # anthropic 2.14 StopReason "model_context_window_exceeded": the answer stopped because
    # prompt and answer filled the context window; a failure with that reason.
    overflow = (kind == "succeeded") & (stop == "model_context_window_exceeded")
    outcome = pl.when(refused | overflow).then(pl.lit("errored")).otherwise(kind)
    error = (
        pl.when(refused)
        .then(pl.concat_str([pl.lit("refusal: "), text.fill_null("")]))
        .when(overflow)
        .then(
            pl.lit(
                "model_context_window_exceeded: the prompt and the answer filled the model's "
                "context window before the answer was complete; shorten the prompt or files"
            )
        )
        .when(kind == "errored")
        .then(
            pl.concat_str(
                [
                    err.struct.field("type").fill_null("error"),
                    pl.lit(": "),
                    err.struct.field("message").fill_null(""),
                ]
            )
        )
        .when(kind == "expired")
        .then(pl.lit("expired: the batch expired (24 h) before this request ran"))
        .when(kind == "canceled")
        .then(pl.lit("cancelled: the batch was cancelled before this request ran"))
    )
    cache_read = usage.struct.field("cache_read_input_tokens").fill_null(0)
    cache_write = usage.struct.field("cache_creation_input_tokens").fill_null(0)
    out = raw.select(
        pl.col("custom_id").alias("job_id"),
        outcome.alias("outcome"),
        pl.when(kind == "succeeded").then(text).alias("text"),
        error.alias("error"),
        (stop == "max_tokens").fill_null(False).alias("truncated"),
        (usage.struct.field("input_tokens") + cache_read + cache_write).alias("input_tokens"),
        usage.struct.field("output_tokens").alias("output_tokens"),
        pl.when(usage.is_not_null()).then(cache_read).alias("cached_tokens"),
        pl.when(usage.is_not_null()).then(cache_write).alias("cache_write_tokens"),
        # Thinking is billed inside output_tokens; usage.output_tokens_details breaks it
        # out (anthropic 2.14 types/output_tokens_details.py). Without it: 0 when the
        # answer has no thinking block, unknown (null) otherwise.
        pl.when(usage.is_not_null())
        .then(
            pl.coalesce(
                usage.struct.field("output_tokens_details").struct.field("thinking_tokens"),
                pl.when(~has_thinking).then(pl.lit(0, dtype=pl.Int64)),
            )
        )
        .alias("reasoning_tokens"),
        *([pl.col(LINE_COLUMN).alias("response")] if responses else []),
    )
    if citations and spec is not None:
        out = _with_citations(out, raw, spec)
    return conform_results(out)

