"""OpenAI Batch API (``/v1/chat/completions``) through the official ``openai`` SDK.

Wire facts relied on (see ``provider-wire.md`` §1): one model per input file; at most
50,000 requests and 200 MB per file; output and error files are keyed by ``custom_id`` in
no particular order; batch ``metadata`` (≤16 pairs) is echoed back by ``batches.list``,
which is how a resumed run finds a batch created just before a crash.
"""

from __future__ import annotations

import json
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, cast

import polars as pl

from batchata_df.errors import (
    CredentialsError,
    OrphanedBatchError,
    ProviderError,
)
from batchata_df.models import effective_params, thinking_fields
from batchata_df.providers.base import (
    LINE_COLUMN,
    ORPHAN_SEARCH_MAX_LISTED,
    ORPHAN_SEARCH_SECONDS,
    BatchPoll,
    BatchTag,
    Download,
    DownloadBuffer,
    JoinedLines,
    ProviderState,
    RealtimeFailure,
    RequestSpec,
    all_null,
    bounded_listing,
    column_json_string,
    conform_results,
    cut_answer,
    decoded_results,
    empty_results,
    failure_kind,
    first_not_utf8,
    header_api_key,
    history_messages,
    json_object,
    json_string,
    kept_response,
    not_utf8_answer,
    null_typed,
    read_jsonl,
    request_lines,
    result_lines,
    retry_after_seconds,
    streamed_download,
    strip_ends,
    transport_failure,
    whole_download,
    with_result_lines,
)
from batchata_df.redact import register_secret, scrub_http_logs, scrubbing

if TYPE_CHECKING:
    import openai

__all__ = ["OpenAIProvider"]

ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
_STATES = {
    "validating": ProviderState.RUNNING,
    "in_progress": ProviderState.RUNNING,
    "finalizing": ProviderState.RUNNING,
    "cancelling": ProviderState.RUNNING,
    "completed": ProviderState.ENDED,
    "cancelled": ProviderState.CANCELLED,
    "expired": ProviderState.EXPIRED,
    "failed": ProviderState.FAILED,
}
# Our names for model parameters -> the chat completions names.
_PARAM_NAMES = {
    "max_tokens": "max_completion_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "reasoning_effort": "reasoning_effort",
}
SUPPORTED_PARAMS = frozenset(_PARAM_NAMES)

_LINE_SCHEMA = pl.Schema(
    {
        "custom_id": pl.String(),
        "response": pl.Struct(
            {
                "status_code": pl.Int64(),
                "body": pl.Struct(
                    {
                        "choices": pl.List(
                            pl.Struct(
                                {
                                    "finish_reason": pl.String(),
                                    "message": pl.Struct(
                                        {"content": pl.String(), "refusal": pl.String()}
                                    ),
                                }
                            )
                        ),
                        "usage": pl.Struct(
                            {
                                "prompt_tokens": pl.Int64(),
                                "completion_tokens": pl.Int64(),
                                "prompt_tokens_details": pl.Struct(
                                    {
                                        "cached_tokens": pl.Int64(),
                                        "cache_write_tokens": pl.Int64(),
                                    }
                                ),
                                "completion_tokens_details": pl.Struct(
                                    {"reasoning_tokens": pl.Int64()}
                                ),
                            }
                        ),
                        "error": pl.Struct(
                            {"message": pl.String(), "type": pl.String(), "code": pl.String()}
                        ),
                    }
                ),
            }
        ),
        "error": pl.Struct({"code": pl.String(), "message": pl.String()}),
    }
)
_USUAL_LINE_SCHEMA = null_typed(
    _LINE_SCHEMA,
    ("response", "body", "choices", "message", "refusal"),
    ("response", "body", "error"),
    ("error",),
)
""":data:`_LINE_SCHEMA` as an answered line has it: no refusal, no error in the body or the
line (``read_jsonl``'s ``usual``; a download with one is read with the whole schema)."""

T = TypeVar("T")


def _schema_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "answer"


def _whole_piece_reads(request: Any) -> None:
    """Have httpx read an upload's :class:`JoinedLines` body a whole piece at a time.

    httpx's multipart encoder reads a file field ``FileField.CHUNK_SIZE`` bytes at a time
    (64 KiB; ``httpx2/_multipart.py``, ``FileField.render_data``) and sends each read as
    its own write: an h11 event, a ``settimeout`` and a ``send`` system call, ~25 µs of
    CPU a read besides the read itself, ~500 reads a 34 MB batch. Set on the field itself
    (not the class: no other upload of the process changes), the piece size makes each
    read one piece, copied once, ~34 reads a batch: the same bytes in fewer, larger
    writes. A field of another kind, or an httpx whose multipart stream keeps its fields
    elsewhere, is left as it is (64 KiB reads, the same bytes).
    """
    for field in getattr(request.stream, "fields", ()):
        body = getattr(field, "file", None)
        if isinstance(body, JoinedLines) and hasattr(field, "CHUNK_SIZE"):
            field.CHUNK_SIZE = body.piece_bytes


class OpenAIProvider:
    """OpenAI's Batch API for chat completions with strict structured output.

    Parameters
    ----------
    api_key, base_url
        Default to ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``.
    """

    name: ClassVar[str] = "openai"
    max_requests: ClassVar[int] = 50_000
    max_bytes: ClassVar[int] = 200 * 1024 * 1024
    sdk_max_retries: ClassVar[int] = 5
    """The SDK's own retries of idempotent calls (creates are never retried blindly)."""

    def __init__(self, api_key: str | None = None, base_url: str | None = None) -> None:
        source = "the api_key given to OpenAIProvider" if api_key else "OPENAI_API_KEY"
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            msg = (
                "no OpenAI API key: set the OPENAI_API_KEY environment variable (or put it in "
                "a .env file) before running an OpenAI model"
            )
            raise CredentialsError(msg)
        register_secret(key)
        scrub_http_logs()
        self._api_key = header_api_key(key, source)
        self._base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self._client: openai.OpenAI | None = None
        # Realtime requests run in threads: one client, created once.
        self._client_lock = threading.Lock()
        self._downloads = DownloadBuffer()

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIProvider(base_url={self._base_url!r})"

    @property
    def client(self) -> openai.OpenAI:
        """The SDK client, created on first use."""
        with self._client_lock:
            if self._client is None:
                try:
                    import openai
                except ImportError as e:  # pragma: no cover - core dependency
                    msg = "the OpenAI provider needs the openai package: pip install openai"
                    raise ProviderError(msg) from e
                # The SDK's own HTTP client (``DefaultHttpxClient``: its timeout, limits and
                # redirects) with a request hook (httpx's public ``event_hooks``: "called
                # after a request is fully prepared, but before it is sent"), so that an
                # upload's body is read in whole pieces (_whole_piece_reads).
                http = openai.DefaultHttpxClient(event_hooks={"request": [_whole_piece_reads]})
                self._client = openai.OpenAI(
                    api_key=self._api_key,
                    base_url=self._base_url,
                    max_retries=self.sdk_max_retries,
                    http_client=http,
                )
                # What the SDK's default client does in ``__del__``: a client let go of
                # without close() still closes its connections.
                weakref.finalize(self._client, http.close)
        return self._client

    def close(self) -> None:
        """Close the SDK client's connection pool; give back the downloads' memory."""
        if self._client is not None:
            self._client.close()
            self._client = None
        self._downloads.release()

    # -- errors: the one place SDK exceptions are translated ----------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        import openai

        with scrubbing():
            try:
                return fn()
            except openai.AuthenticationError as e:
                msg = f"OpenAI rejected the API key while trying to {what}: check OPENAI_API_KEY"
                raise CredentialsError(msg) from e
            except openai.APIStatusError as e:
                msg = f"OpenAI failed to {what}: HTTP {e.status_code}: {_error_message(e.body)}"
                raise ProviderError(msg, status_code=e.status_code) from e
            except openai.APIError as e:
                msg = f"OpenAI failed to {what}: {type(e).__name__}: {e.message}"
                raise ProviderError(msg) from e
            except json.JSONDecodeError as e:
                # An answer that ended early without an error (a close-delimited body): the
                # SDK's own json.loads raises past its error types. Another try may read
                # it whole: transient, as a dropped connection is.
                msg = f"OpenAI failed to {what}: its answer is not whole JSON: {e}"
                raise ProviderError(msg) from e

    # -- encode -------------------------------------------------------------------------------

    def request_body_constant(self, spec: RequestSpec, model: str | None = None) -> str:
        """The JSON members after ``messages`` that every request of ``model`` shares.

        With ``model``, its default ``max_tokens`` is filled in and ``reasoning_effort`` is
        sent only to models that reason (:mod:`batchata_df.models`).
        """
        params = spec.params if model is None else effective_params(self.name, model, spec.params)
        extra: dict[str, Any] = {}
        if spec.schema.json_schema is not None:
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": _schema_name(spec.schema.name),
                    "strict": True,
                    "schema": spec.schema.json_schema,
                },
            }
        for ours, value in params.items():
            if ours == "reasoning_effort" and model is not None:
                continue
            extra[_PARAM_NAMES[ours]] = value
        if model is not None:
            extra.update(thinking_fields(self.name, model, params))
        return "".join(f",{json.dumps(k)}:{json.dumps(v)}" for k, v in extra.items())

    def encode(self, jobs: pl.DataFrame, spec: RequestSpec) -> pl.Series:
        """Build one JSONL request line per job, vectorised.

        ``jobs`` has ``job_id``, ``model``, ``prompt``, ``system`` and optionally
        ``content_json`` (a JSON array of content parts that replaces the prompt text).
        All jobs are of one model (the engine groups them so). A job with a ``cache_key``
        (:func:`batchata_df.caching.cache_plan`: it shares a prefix of at least 1,024
        tokens with other jobs) carries it as ``prompt_cache_key``, so that those requests
        reach the same prompt cache.
        """
        tail = self.request_body_constant(spec, _model_of(jobs))
        # The user turn: its content blocks as they are, or the prompt as a JSON string
        # (one json_encode of the whole message; the same bytes as the pieces).
        user_message = (
            [pl.lit('{"role":"user","content":'), pl.col("content_json"), pl.lit("}")]
            if "content_json" in jobs.columns
            else [json_object(role=pl.lit("user"), content=pl.col("prompt"))]
        )
        # What no row uses is left out of the expression: a when/then computes its branch
        # for every row, taken or not (the same lines; tests/test_encode_bytes.py).
        cache_key = (
            pl.lit("")
            if all_null(jobs, "cache_key")
            else pl.when(pl.col("cache_key").is_not_null())
            .then(pl.concat_str([pl.lit(',"prompt_cache_key":'), json_string(pl.col("cache_key"))]))
            .otherwise(pl.lit(""))
        )
        system_msg = (
            pl.lit("")
            if all_null(jobs, "system")
            else pl.when(pl.col("system").is_not_null())
            .then(
                pl.concat_str(
                    [pl.lit('{"role":"system","content":'), json_string(pl.col("system")),
                     pl.lit("},")]
                )
            )
            .otherwise(pl.lit(""))
        )
        line = pl.concat_str(
            [
                pl.lit('{"custom_id":"'),
                pl.col("job_id"),
                pl.lit(f'","method":"POST","url":"{ENDPOINT}","body":{{"model":'),
                column_json_string(jobs, "model"),
                pl.lit(',"messages":['),
                system_msg,
                history_messages(jobs),
                *user_message,
                pl.lit("]"),
                cache_key,
                pl.lit(tail),
                pl.lit("}}"),
            ]
        )
        # Each line followed by the JSONL file's newline in Polars' buffers: the body is sent
        # from them as they lie (base.request_lines), not joined again.
        return request_lines(jobs, line, "\n")

    def line_overhead(self) -> int:
        """One newline per request line."""
        return 1

    # -- client -------------------------------------------------------------------------------

    def submit(self, lines: pl.Series, *, model: str, tag: BatchTag) -> str:
        """Upload the JSONL file and create the batch, tagged with run and batch keys."""
        # One buffer, read as it is sent (a file to the SDK: an io.IOBase, which typeshed
        # does not count as IO[bytes]).
        payload = cast("IO[bytes]", JoinedLines(lines, "\n"))
        upload = self._call(
            "upload the batch input file",
            lambda: self.client.files.create(
                file=(f"{tag.batch_key}.jsonl", payload, "application/jsonl"),
                purpose="batch",
            ),
        )
        batch = self._call(
            "create the batch",
            # No blind SDK retries: creating is not idempotent, and a retry after a lost
            # answer would create (and bill) a second batch. On failure the engine looks
            # the batch up by its metadata before trying again.
            lambda: self.client.with_options(max_retries=0).batches.create(
                input_file_id=upload.id,
                endpoint=ENDPOINT,
                completion_window="24h",
                metadata={"batchata_run": tag.run_id, "batchata_batch": tag.batch_key},
            ),
        )
        return batch.id

    def poll(self, batch_id: str) -> BatchPoll:
        """Retrieve the batch and normalize its status."""
        b = self._call("retrieve the batch", lambda: self.client.batches.retrieve(batch_id))
        detail = None
        if b.errors is not None and b.errors.data:
            first = b.errors.data[0]
            detail = f"{first.code}: {first.message} (line {first.line})"
        counts = {}
        if b.request_counts is not None:
            counts = {
                "total": b.request_counts.total,
                "completed": b.request_counts.completed,
                "failed": b.request_counts.failed,
            }
        return BatchPoll(_STATES.get(b.status, ProviderState.RUNNING), b.status, detail, counts)

    def _decoded(self, batch_id: str, file_id: str | None, *, responses: bool) -> pl.DataFrame:
        """One result file, downloaded into the kept memory and decoded there.

        The file is streamed (``with_streaming_response``) into the memory the previous
        download used (:class:`~batchata_df.providers.base.DownloadBuffer`): read whole by
        ``files.content(...).read()``, each 41 MB file was a fresh buffer (and the HTTP
        client's chunks before it), faulted in page by page: ~19,000 minor faults per
        50,000-line file (``benchmarks/PROFILE.md``, eleventh pass). A body broken off
        midway is fetched again as the SDK did when it read the body itself
        (:func:`~batchata_df.providers.base.streamed_download`); one that ended early
        without an error, and so cannot be decoded, is a ``ProviderError`` too
        (:func:`~batchata_df.providers.base.decoded_results`, which also checks that
        it is UTF-8).
        """
        if not file_id:
            return decode_lines(b"", responses=responses)
        fid = file_id
        with self._downloads.receive() as sink:

            def fetch() -> bytearray:
                return streamed_download(
                    lambda: self.client.files.with_streaming_response.content(fid),
                    sink,
                    retries=self.sdk_max_retries,
                    failed="OpenAI failed to download a result file",
                )

            data = self._call("download a result file", fetch)
            return decoded_results(
                data,
                lambda d: decode_lines(d, responses=responses),
                failed=f"OpenAI's result file {fid} of batch {batch_id}",
            )

    def results(self, batch_id: str, spec: RequestSpec) -> pl.DataFrame:
        """Download and decode the output and error files of a finished batch.

        Files that hold fewer lines than the batch's ``request_counts.completed + failed``
        ended early at a line boundary (or came back empty): a ``ProviderError``
        (:func:`~batchata_df.providers.base.whole_download`), downloaded again later.
        ``completed`` counts "requests that have been completed successfully" and
        ``failed`` "requests that have failed" (openai 3.57 ``types/batch_request_counts.py``),
        each with its line: the output file holds "the outputs of successfully executed
        requests", the error file "the outputs of requests with errors", expired requests
        included (API reference, Batch object; Batch guide: "Expired requests will be
        written to your error file"). Requests a cancelled batch never ran may be in no
        file, but then they are in neither count either (the emulator's
        ``cancel_unfinished="omit"``, :mod:`batchata_df.emulator.openai_api`), so the sum
        never counts a line that may legitimately be absent.
        """
        b = self._call("retrieve the batch", lambda: self.client.batches.retrieve(batch_id))
        keep = spec.keep_responses
        frames = [
            self._decoded(batch_id, b.output_file_id, responses=keep),
            self._decoded(batch_id, b.error_file_id, responses=keep),
        ]
        counts = b.request_counts
        answered = None if counts is None else counts.completed + counts.failed
        return whole_download(
            pl.concat(frames, how="vertical"),
            answered,
            failed=f"OpenAI's result files of batch {batch_id}",
        )

    def cancel(self, batch_id: str) -> None:
        """Ask OpenAI to cancel the batch (it answers ``cancelling``)."""
        self._call("cancel the batch", lambda: self.client.batches.cancel(batch_id))

    # -- realtime (mode="realtime") -----------------------------------------------------------

    def answer(
        self, line: str, *, model: str, spec: RequestSpec
    ) -> pl.DataFrame | RealtimeFailure:
        """Send one request line's ``body`` to ``/v1/chat/completions``; decode the answer.

        The SDK's retries are off (``max_retries=0``): the engine retries rate limits and
        server errors with its own clock, and never a request that may have run. The raw
        JSON answer is wrapped as a batch output line and read by :func:`decode_lines`, so
        both modes decode alike. An answer that is not UTF-8 ran and was billed: its row
        fails ``not_utf8`` with its usage (:func:`~batchata_df.providers.base.not_utf8_answer`).
        """
        import openai

        request = json.loads(line)
        custom_id, body = request["custom_id"], request["body"]
        client = self.client.with_options(max_retries=0)
        with scrubbing():
            try:
                raw = client.chat.completions.with_raw_response.create(**body)
                # httpx reads the body with U+FFFD for bytes that are not UTF-8: the
                # bytes themselves say whether the answer came damaged.
                data = raw.http_response.content
                text = raw.http_response.text
            except openai.AuthenticationError as e:
                msg = "OpenAI rejected the API key: check OPENAI_API_KEY"
                raise CredentialsError(msg) from e
            except openai.APIStatusError as e:
                message = f"HTTP {e.status_code}: {_error_message(e.body)}"
                kind = failure_kind(e.status_code)
                if kind is not None:
                    after = retry_after_seconds(e.response.headers)
                    return RealtimeFailure(kind, f"OpenAI {message}", after)
                result = {
                    "custom_id": custom_id,
                    "response": {
                        "status_code": e.status_code,
                        "body": {"error": {"message": _error_message(e.body)}},
                    },
                }
                decoded = decode_lines(json.dumps(result).encode())
                return kept_response(decoded, e.response.text, spec)
            except openai.APIConnectionError as e:  # APITimeoutError included
                return transport_failure(e, "OpenAI")
        try:
            body = json.loads(text)
        except ValueError as e:  # a 200 body cut short without an error: it ran
            return cut_answer(e, "OpenAI")
        # Re-serialised on one line: the API may pretty-print, a batch line never is.
        answered = {"status_code": 200, "body": body}
        decoded = decode_lines(json.dumps({"custom_id": custom_id, "response": answered}).encode())
        decoded = not_utf8_answer(decoded, first_not_utf8(data), provider="OpenAI")
        return kept_response(decoded, text, spec)

    MAX_LISTED: ClassVar[int] = ORPHAN_SEARCH_MAX_LISTED
    SEARCH_SECONDS: ClassVar[float] = ORPHAN_SEARCH_SECONDS

    # find() goes by its metadata: batchata_run, batchata_batch
    find_is_exact: ClassVar[bool] = True

    def found_not_created(self, batch_id: str) -> bool:
        """Never: :meth:`submit` returns what its create answered, and nothing else."""
        return False

    def find(self, tag: BatchTag) -> str | None:
        """Find our batch by its metadata, reading the whole batch list (bounded).

        The list order is not documented (openai 3.57 ``resources/batches.py``: "List
        your organization's batches."), so no batch's age ends the search; a count and a
        time bound do (:func:`~batchata_df.providers.base.bounded_listing`).
        """
        what = f"metadata batchata_run={tag.run_id}, batchata_batch={tag.batch_key}"
        for b in bounded_listing(
            self._iter_batches(),
            provider="OpenAI",
            what=what,
            max_listed=self.MAX_LISTED,
            seconds=self.SEARCH_SECONDS,
        ):
            meta = b.metadata or {}
            if (
                meta.get("batchata_run") == tag.run_id
                and meta.get("batchata_batch") == tag.batch_key
            ):
                return str(b.id)
        return None

    def _iter_batches(self) -> Iterator[Any]:
        try:
            page = self._call("list batches", lambda: self.client.batches.list(limit=100))
            while True:
                # Page by hand so that every request goes through the error translation.
                yield from page.data
                if not page.has_next_page():
                    break
                page = self._call("list batches", page.get_next_page)
        except ProviderError as e:
            msg = (
                "an OpenAI batch for these rows may already exist (created by this call or an "
                "earlier one just before an error or a stop), but listing batches "
                f"failed ({e}); call again later with the same state: nothing is paid "
                "twice"
            )
            raise OrphanedBatchError(msg) from e


def _model_of(jobs: pl.DataFrame) -> str | None:
    return str(jobs.get_column("model")[0]) if jobs.height else None


def _error_message(body: object) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message", err))
    return str(body)


_CHOICE = "\x00choice"
"""The first choice's column while :func:`decode_lines` normalises (never a line field)."""
_OK = "\x00ok"
"""Whether the line is an answer, while :func:`decode_lines` normalises."""


def decode_lines(data: Download, *, responses: bool = False) -> pl.DataFrame:
    """Decode OpenAI batch output/error JSONL into the normalized results frame.

    With ``responses``, each row's ``response`` is its line as OpenAI sent it.
    """
    data = strip_ends(data)  # data.strip() without copying the download to drop its "\n"
    if not data:
        return empty_results()
    raw = read_jsonl(data, _LINE_SCHEMA, usual=_USUAL_LINE_SCHEMA)
    if responses:
        raw = with_result_lines(raw, result_lines(data))
    resp = pl.col("response")
    body = resp.struct.field("body")
    # The first choice once, as a column: an eager select evaluates an expression once per
    # use, and each of the ~10 uses below took the list's first element again.
    raw = raw.with_columns(body.struct.field("choices").list.first().alias(_CHOICE))
    choice = pl.col(_CHOICE)
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
    raw = raw.with_columns(
        ((status_code == 200) & refusal.is_null() & choice.is_not_null() & ~filtered).alias(_OK)
    )
    ok = pl.col(_OK)  # used three times: evaluated once
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
        # openai 3.57 types/chat/chat_completion.py Choice.finish_reason: "length" if the
        # maximum number of tokens specified in the request was reached. The row then
        # fails "truncated:" (engine.collection.outcomes_to_events), its text kept as raw.
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


