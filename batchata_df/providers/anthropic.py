"""Anthropic Message Batches through the official ``anthropic`` SDK.

Wire facts relied on (see ``provider-wire.md`` §2): a batch is created from a list of
``{custom_id, params}`` requests (at most 100,000 and 256 MB); it is ``in_progress``, then
``canceling`` if cancelled, then ``ended``; results are JSONL lines keyed by ``custom_id``
in no particular order, each ``succeeded`` (a full ``Message``), ``errored``,
``canceled`` or ``expired``. A ``Message`` may start with ``thinking`` blocks, so the
answer is the concatenation of its ``text`` blocks, selected by type. Batches carry no
metadata: a batch created just before a crash is found by its creation time, its size
and, once it has ended, the ``custom_id`` s in its results.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import polars as pl

from batchata_df.errors import (
    CredentialsError,
    OrphanedBatchError,
    ProviderError,
    SchemaError,
)
from batchata_df.models import effective_params, thinking_fields
from batchata_df.providers.base import (
    LINE_COLUMN,
    BatchPoll,
    BatchTag,
    Download,
    DownloadBuffer,
    JoinedChunks,
    ProviderState,
    RealtimeFailure,
    RequestSpec,
    all_null,
    column_json_string,
    conform_results,
    decoded_results,
    empty_results,
    failure_kind,
    header_api_key,
    history_messages,
    is_blank,
    json_object,
    json_string,
    kept_response,
    none_true,
    not_utf8_answer,
    null_typed,
    read_jsonl,
    request_lines,
    result_lines,
    retry_after_seconds,
    streamed_download,
    transport_failure,
    whole_download,
    with_result_lines,
)
from batchata_df.redact import register_secret, scrub_http_logs, scrubbing

if TYPE_CHECKING:
    import anthropic
    from anthropic.types.messages import MessageBatch

__all__ = ["AnthropicProvider", "answer_columns", "decode_results"]

# Our names for model parameters -> the Messages API names.
_PARAM_NAMES = {
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "stop": "stop_sequences",
    "reasoning_effort": "reasoning_effort",  # mapped to thinking / output_config.effort
}
SUPPORTED_PARAMS = frozenset(_PARAM_NAMES)

# How far the provider's clock may be behind ours when we look for a batch by its
# creation time, and how long a submit (upload plus SDK retries) may have taken.
CLOCK_SKEW_S = 600.0
SUBMIT_WINDOW_S = 3600.0
CREATE_ATTEMPTS = 4


def _line_schema(block: pl.Struct) -> pl.Schema:
    """The result line fields we read, with ``block`` as a content block's dtype."""
    return pl.Schema(
        {
            "custom_id": pl.String(),
            "result": pl.Struct(
                {
                    "type": pl.String(),
                    "message": pl.Struct(
                        {
                            "content": pl.List(block),
                            "stop_reason": pl.String(),
                            "usage": pl.Struct(
                                {
                                    "input_tokens": pl.Int64(),
                                    "output_tokens": pl.Int64(),
                                    "cache_creation_input_tokens": pl.Int64(),
                                    "cache_read_input_tokens": pl.Int64(),
                                    "output_tokens_details": pl.Struct(
                                        {"thinking_tokens": pl.Int64()}
                                    ),
                                }
                            ),
                        }
                    ),
                    "error": pl.Struct(
                        {
                            "error": pl.Struct({"type": pl.String(), "message": pl.String()}),
                        }
                    ),
                }
            ),
        }
    )


_CACHE_MARK = '"cache_control":{"type":"ephemeral"}'
_PROMPT_BLOCK = '},{"type":"text","text":'
"""Where the last file block ends and the prompt's text block begins in a content array."""
"""Anthropic's marker of a cache breakpoint (5-minute cache; see batchata_df.caching)."""

_TEXT_BLOCK = pl.Struct({"type": pl.String(), "text": pl.String()})
"""A content block as read without citations."""

_CITATION_FIELDS = pl.Struct(
    {
        "type": pl.String(),
        "cited_text": pl.String(),
        "document_index": pl.Int64(),
        "document_title": pl.String(),
        "start_char_index": pl.Int64(),
        "end_char_index": pl.Int64(),
        "start_page_number": pl.Int64(),
        "end_page_number": pl.Int64(),
        "start_block_index": pl.Int64(),
        "end_block_index": pl.Int64(),
    }
)
_CITED_BLOCK = pl.Struct(
    {"type": pl.String(), "text": pl.String(), "citations": pl.List(_CITATION_FIELDS)}
)
"""A content block as read with its citations (only when citations are on)."""

T = TypeVar("T")


class AnthropicProvider:
    """Anthropic's Message Batches API with structured output (``output_config.format``).

    Parameters
    ----------
    api_key, base_url
        Default to ``ANTHROPIC_API_KEY`` and ``ANTHROPIC_BASE_URL``.
    """

    name: ClassVar[str] = "anthropic"
    max_requests: ClassVar[int] = 100_000
    max_bytes: ClassVar[int] = 256 * 1000 * 1000  # "256 MB"; decimal keeps a safety margin
    sdk_max_retries: ClassVar[int] = 5
    """The SDK's own retries of idempotent calls (polls, lists, downloads)."""
    create_retry_base_s: ClassVar[float] = 0.5
    """First wait of our create retries (doubling, at most 8 s)."""

    def __init__(self, api_key: str | None = None, base_url: str | None = None) -> None:
        source = "the api_key given to AnthropicProvider" if api_key else "ANTHROPIC_API_KEY"
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            msg = (
                "no Anthropic API key: set the ANTHROPIC_API_KEY environment variable (or put "
                "it in a .env file) before running a Claude model"
            )
            raise CredentialsError(msg)
        register_secret(key)
        scrub_http_logs()
        self._api_key = header_api_key(key, source)
        self._base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        self._client: anthropic.Anthropic | None = None
        # Realtime requests run in threads: one client, created once.
        self._client_lock = threading.Lock()
        self._created: set[str] = set()  # batches this instance created: never an orphan
        self._found: set[str] = set()  # of those, the ones a create's lookup found (find)
        self._downloads = DownloadBuffer()

    def __repr__(self) -> str:  # never show the key
        return f"AnthropicProvider(base_url={self._base_url!r})"

    @property
    def client(self) -> anthropic.Anthropic:
        """The SDK client, created on first use."""
        with self._client_lock:
            if self._client is None:
                anthropic = _import_sdk()
                # api_key is always explicit: without it the SDK walks a credential chain
                # (profiles, workload identity) that must not leak into a batch run. So is
                # the API version: the SDK's own (2026-10-21, which the model rules assume:
                # models.ANTHROPIC_SAMPLING), or an "anthropic-version: ..." line in
                # ANTHROPIC_CUSTOM_HEADERS, which the SDK reads, would replace it (its other
                # headers, e.g. a gateway's, are still sent).
                from anthropic._constants import ANTHROPIC_API_VERSION

                self._client = anthropic.Anthropic(
                    api_key=self._api_key, base_url=self._base_url,
                    max_retries=self.sdk_max_retries,
                    default_headers={"anthropic-version": ANTHROPIC_API_VERSION},
                )  # fmt: skip
        return self._client

    def close(self) -> None:
        """Close the SDK client's connection pool; give the downloads' memory back."""
        self._downloads.release()
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- errors: the one place SDK exceptions are translated ----------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        anthropic = _import_sdk()
        with scrubbing():
            try:
                return fn()
            except anthropic.AuthenticationError as e:
                msg = (
                    f"Anthropic rejected the API key while trying to {what}: check "
                    "ANTHROPIC_API_KEY"
                )
                raise CredentialsError(msg) from e
            except anthropic.APIStatusError as e:
                msg = f"Anthropic failed to {what}: HTTP {e.status_code}: {_error_message(e.body)}"
                raise ProviderError(msg, status_code=e.status_code) from e
            except anthropic.AnthropicError as e:
                msg = f"Anthropic failed to {what}: {type(e).__name__}: {e}"
                raise ProviderError(msg) from e
            except json.JSONDecodeError as e:
                # An answer that ended early without an error (a close-delimited body): the
                # SDK's own json.loads raises past its error types. Another try may read
                # it whole: transient, as a dropped connection is.
                msg = f"Anthropic failed to {what}: its answer is not whole JSON: {e}"
                raise ProviderError(msg) from e

    # -- encode -------------------------------------------------------------------------------

    def request_params_constant(self, spec: RequestSpec, model: str | None = None) -> str:
        """The JSON members after ``messages`` that every request of ``model`` shares.

        With ``model``, its default ``max_tokens`` is filled in and ``reasoning_effort``
        becomes ``thinking`` and ``output_config.effort`` (:mod:`batchata_df.models`).
        """
        params = spec.params if model is None else effective_params(self.name, model, spec.params)
        extra: dict[str, Any] = {}
        for ours, value in params.items():
            if ours == "reasoning_effort":
                continue
            extra[_PARAM_NAMES[ours]] = value
        effort = None
        if model is not None:
            thinking = thinking_fields(self.name, model, params)
            effort = thinking.pop("effort", None)
            extra.update(thinking)
        if isinstance(extra.get("stop_sequences"), str):
            extra["stop_sequences"] = [extra["stop_sequences"]]
        if spec.schema.json_schema is not None and not spec.schema_in_prompt(self.name, model):
            # With citations the schema goes in the system prompt instead: Anthropic
            # refuses citations together with output_config.format (400); so it does for
            # a model without structured output (RequestSpec.schema_in_prompt).
            # One model per call: the engine encodes each batch of one model.
            anthropic = _import_sdk()
            try:
                schema = anthropic.transform_schema(spec.schema.json_schema)
            except (ValueError, TypeError) as e:
                msg = f"the answer schema cannot be sent to Anthropic as structured output: {e}"
                raise SchemaError(msg) from e
            extra["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        if effort is not None:
            extra.setdefault("output_config", {})["effort"] = effort
        return "".join(f",{json.dumps(k)}:{json.dumps(v)}" for k, v in extra.items())

    def encode(self, jobs: pl.DataFrame, spec: RequestSpec) -> pl.Series:
        """Build one ``{custom_id, params}`` JSON object per job, vectorised.

        ``jobs`` has ``job_id``, ``model``, ``prompt``, ``system`` and optionally
        ``content_json`` (a JSON array of Anthropic content blocks that replaces the prompt
        text). When ``spec.schema_in_prompt`` for the jobs' model (citations, or a model
        without structured output), the system prompt starts with
        :func:`batchata_df.citations.instruction` (the caller's ``system`` follows it).

        Prompt caching (:func:`batchata_df.caching.cache_plan` columns, when present): a
        ``cache_system`` job sends its system prompt as one text block marked
        ``cache_control``; a ``cache_files`` job marks its last file block; a job with
        ``cache_split`` sends its prompt as two text blocks, the shared leading part marked
        ``cache_control`` and the rest after it.
        """
        tail = self.request_params_constant(
            spec, str(jobs.get_column("model")[0]) if jobs.height else None
        )
        user_content: pl.Expr = (
            pl.col("content_json")
            if "content_json" in jobs.columns
            else json_string(pl.col("prompt"))
        )
        system_text = pl.col("system")
        # What no row uses is left out of the expression: a when/then computes its branch
        # for every row, taken or not (the same lines; tests/test_encode_bytes.py).
        no_system = all_null(jobs, "system")
        model = str(jobs.get_column("model")[0]) if jobs.height else None
        if spec.schema_in_prompt(self.name, model) and spec.schema.json_schema is not None:
            from batchata_df.citations import instruction

            ours = pl.lit(instruction(spec.schema.json_schema, cite=spec.citations))
            theirs = pl.concat_str([pl.lit("\n\n"), pl.col("system")]).fill_null("")
            system_text = ours + theirs
            no_system = False
        system: pl.Expr = (
            pl.lit("")
            if no_system
            else pl.when(system_text.is_not_null())
            .then(pl.concat_str([pl.lit(',"system":'), json_string(system_text)]))
            .otherwise(pl.lit(""))
        )
        if "cache_split" in jobs.columns:
            if not no_system and not none_true(jobs, "cache_system"):
                system = (
                    pl.when(pl.col("cache_system") & system_text.is_not_null())
                    .then(
                        pl.concat_str(
                            [
                                pl.lit(',"system":[{"type":"text","text":'),
                                json_string(system_text),
                                pl.lit(f",{_CACHE_MARK}}}]"),
                            ]
                        )
                    )
                    .otherwise(system)
                )
            if "content_json" in jobs.columns and not none_true(jobs, "cache_files"):
                # The prompt is the one top-level text block, after the files: the last
                # file block ends right before it (quotes inside JSON strings are escaped,
                # so this sequence cannot occur inside a value).
                user_content = (
                    pl.when(pl.col("cache_files"))
                    .then(
                        user_content.str.replace(
                            _PROMPT_BLOCK, f",{_CACHE_MARK}}}" + _PROMPT_BLOCK[1:], literal=True
                        )
                    )
                    .otherwise(user_content)
                )
            if "content_json" not in jobs.columns and not all_null(jobs, "cache_split"):
                split = pl.col("cache_split")
                # A prompt that is all shared prefix is one marked block: Anthropic refuses
                # an empty text block ("text content blocks must be non-empty"), and a
                # breakpoint on the last block caches "everything up to and including
                # that block" (https://docs.claude.com/en/docs/build-with-claude/
                # prompt-caching).
                user_content = (
                    pl.when(split.is_not_null() & (split >= pl.col("prompt").str.len_chars()))
                    .then(
                        pl.concat_str(
                            [
                                pl.lit('[{"type":"text","text":'),
                                json_string(pl.col("prompt")),
                                pl.lit(f",{_CACHE_MARK}}}]"),
                            ]
                        )
                    )
                    .when(split.is_not_null())
                    .then(
                        pl.concat_str(
                            [
                                pl.lit('[{"type":"text","text":'),
                                json_string(pl.col("prompt").str.slice(0, split)),
                                pl.lit(f',{_CACHE_MARK}}},{{"type":"text","text":'),
                                json_string(pl.col("prompt").str.slice(split)),
                                pl.lit("}]"),
                            ]
                        )
                    )
                    .otherwise(user_content)
                )
        # The user turn: the prompt as a JSON string is one json_encode of the whole
        # message (the same bytes as the pieces); blocks (files, a cache split) are pieces.
        plain_prompt = "content_json" not in jobs.columns and (
            "cache_split" not in jobs.columns or all_null(jobs, "cache_split")
        )
        user_message = (
            [json_object(role=pl.lit("user"), content=pl.col("prompt"))]
            if plain_prompt
            else [pl.lit('{"role":"user","content":'), user_content, pl.lit("}")]
        )
        line = pl.concat_str(
            [
                pl.lit('{"custom_id":"'),
                pl.col("job_id"),
                pl.lit('","params":{"model":'),
                column_json_string(jobs, "model"),
                pl.lit(',"messages":['),
                history_messages(jobs),
                *user_message,
                pl.lit("]"),
                system,
                pl.lit(tail),
                pl.lit("}}"),
            ]
        )
        # Each line followed by the comma between two requests of the body's array, in
        # Polars' buffers: the body is sent from them as they lie (base.request_lines).
        return request_lines(jobs, line, ",")

    def line_overhead(self) -> int:
        """One comma per request in the ``requests`` array."""
        return 1

    # -- client -------------------------------------------------------------------------------

    def submit(self, lines: pl.Series, *, model: str, tag: BatchTag) -> str:
        """Create the batch, sending the encoded requests as they are (no re-serialising).

        The SDK's automatic retries are off for this one call: a create that timed out or
        failed with a 5xx may still have created the batch, and retrying it blindly would
        pay twice. Before each retry, a batch that could be ours is looked up with
        :meth:`find`; a 429/529 (refused before any work) is retried directly.
        """
        from anthropic.types.messages import MessageBatch

        # The lines are already the JSON of each request: join them into the body instead
        # of parsing them into dicts for the SDK to serialise again, a piece at a time as
        # the HTTP client sends (JoinedChunks: whole pieces, not a file's 64 KiB reads; its
        # length given, so not in chunked transfer encoding).
        body = JoinedChunks(lines, ",", prefix=b'{"requests":[', suffix=b"]}")
        headers = {"content-type": "application/json", "content-length": str(len(body))}
        if tag.members is None and not tag.job_ids:  # a caller that did not say (tests)
            ids = lines.str.extract(r'^\{"custom_id":"([^"]+)"', 1).drop_nulls()
            tag = dataclasses.replace(tag, members=ids)
        tag = dataclasses.replace(tag, n_jobs=lines.len())
        for attempt in range(CREATE_ATTEMPTS):
            try:  # each attempt iterates the body again, from its start
                batch = self._call(
                    "create the message batch",
                    lambda: self.client.post(
                        "/v1/messages/batches",
                        cast_to=MessageBatch,
                        content=body,
                        options={"headers": headers, "max_retries": 0},
                    ),
                )
            except ProviderError as e:
                verdict = _create_failure(e.__cause__)
                if verdict == "final" or attempt == CREATE_ATTEMPTS - 1:
                    raise
                if verdict == "unknown":
                    found = self.find(tag)
                    if found is not None:
                        self._created.add(found)
                        self._found.add(found)
                        return found
                time.sleep(min(8.0, self.create_retry_base_s * 2**attempt))
                continue
            self._created.add(batch.id)
            return batch.id
        msg = "unreachable: the create loop either returns or raises"  # pragma: no cover
        raise AssertionError(msg)  # pragma: no cover

    def poll(self, batch_id: str) -> BatchPoll:
        """Retrieve the batch and normalize its status."""
        b = self._call(
            "retrieve the message batch",
            lambda: self.client.messages.batches.retrieve(batch_id),
        )
        return _poll_of(b)

    def results(self, batch_id: str, spec: RequestSpec) -> pl.DataFrame:
        """Stream the results JSONL of an ended batch and decode it.

        The download is written into the memory the previous one used
        (:class:`~batchata_df.providers.base.DownloadBuffer`) and decoded there; results
        that ended early without an error, and so cannot be decoded, are a
        ``ProviderError`` (:func:`~batchata_df.providers.base.decoded_results`, which also
        checks that it is UTF-8).

        Results that hold fewer lines than the ended batch's ``request_counts`` sum ended
        early at a line boundary (or came back empty): a ``ProviderError`` too
        (:func:`~batchata_df.providers.base.whole_download`). Every request of an ended
        batch has one result line, of type ``succeeded``, ``errored``, ``canceled`` or
        ``expired``, and the counts "always" sum to the batch's requests (Anthropic API
        reference, Message Batches: ``request_counts`` and ``results``; anthropic SDK
        ``types/messages/message_batch_request_counts.py``).
        """
        batch = self._call(
            "retrieve the message batch",
            lambda: self.client.messages.batches.retrieve(batch_id),
        )
        answered = None
        if batch.processing_status == "ended":
            c = batch.request_counts
            answered = c.succeeded + c.errored + c.canceled + c.expired
        with self._downloads.receive() as sink:

            def fetch() -> bytearray:
                # A body broken off midway was raised as the HTTP library's own error,
                # past the translation into ProviderError: now fetched again, then that.
                return streamed_download(
                    lambda: self.client.messages.batches.with_streaming_response.results(
                        batch_id
                    ),
                    sink,
                    retries=self.sdk_max_retries,
                    failed="Anthropic failed to download the batch results",
                )

            data = self._call("download the batch results", fetch)
            failed = f"Anthropic's results of batch {batch_id}"
            decoded = decoded_results(data, lambda d: decode_results(d, spec), failed=failed)
            return whole_download(decoded, answered, failed=failed)

    def cancel(self, batch_id: str) -> None:
        """Ask Anthropic to cancel the batch (it answers ``canceling``)."""
        self._call(
            "cancel the message batch", lambda: self.client.messages.batches.cancel(batch_id)
        )

    # -- realtime (mode="realtime") -----------------------------------------------------------

    def answer(
        self, line: str, *, model: str, spec: RequestSpec
    ) -> pl.DataFrame | RealtimeFailure:
        """Stream one request line's ``params`` from ``/v1/messages``; decode the answer.

        The request is streamed, as Anthropic recommends for any request that may run
        long: the anthropic SDK refuses a non-streaming request whose ``max_tokens`` could
        take over 10 minutes (``_calculate_nonstreaming_timeout`` in
        ``anthropic/_base_client.py``: above 21,333 tokens, below the default of Claude 5
        and of thinking models), and its README's "Long requests" says networks may drop an
        idle connection that long. A stream is never idle (Anthropic sends ``ping``
        events) and the client's read timeout applies between events, not to the whole
        answer. Passing an explicit timeout would only silence the SDK's check and leave
        the request exposed to the idle cut.

        ``params`` goes to the SDK as the request body itself (``extra_body``, beside the
        three arguments it requires), as the batch lines are sent: the SDK's keyword
        arguments omit parameters the API takes (``temperature``, ``top_p``, ``top_k`` in
        anthropic 2.14). The SDK's retries are off (the engine retries 429 and 529
        ``overloaded_error`` with its own clock, never a request that may have run). The
        message the SDK accumulates from the events is wrapped as a batch result line and
        read by :func:`decode_results`, citations included, as a batch's would be. A stream
        that breaks off, or ends without ``message_stop``, is ``lost``: it ran and may have
        been billed. A stream with bytes that are not UTF-8 is read to its end (the
        damaged bytes as U+FFFD, :class:`_CheckedLines`) and its row fails ``not_utf8``
        with the usage it reports: it ran and was billed.
        """
        anthropic = _import_sdk()
        import httpx2  # the anthropic SDK's HTTP client: what a broken stream raises

        request = json.loads(line)
        custom_id, params = request["custom_id"], dict(request["params"])
        required = {k: params.pop(k) for k in ("model", "max_tokens", "messages")}
        client = self.client.with_options(max_retries=0)  # a copy: its own decoders
        checked = _CheckedLines()
        # The SDK decodes each event line as strict UTF-8 (anthropic 2.14
        # ``_streaming.py``, ``SSEDecoder.iter_bytes``): an answer damaged on its way raised
        # UnicodeDecodeError midway, a ``client_error`` at $0 though it was billed. The
        # client's own hook for its decoder (``_make_sse_decoder``, which the SDK's Bedrock
        # client overrides) gets one fed lines checked by :class:`_CheckedLines`.
        client._make_sse_decoder = checked.decoder  # type: ignore[method-assign]
        with scrubbing():
            try:
                with client.messages.stream(**required, extra_body=params) as stream:
                    stopped = False
                    for event in stream:
                        stopped = stopped or event.type == "message_stop"
                    if not stopped:
                        msg = "the answer's stream ended before its message_stop event"
                        raise httpx2.RemoteProtocolError(msg)
                    body_text = stream.current_message_snapshot.to_json(indent=None)
                message = json.loads(body_text)
            except anthropic.AuthenticationError as e:
                msg = "Anthropic rejected the API key: check ANTHROPIC_API_KEY"
                raise CredentialsError(msg) from e
            except anthropic.APIStatusError as e:
                # An ``error`` event inside a stream arrives with the stream's HTTP 200: its
                # type says what status the same error has outside a stream.
                status = e.status_code
                said_text = None  # the error's body as text; a stream's is the event's data
                if status == 200:  # the stream's own status: an ``error`` event
                    status = _stream_error_status(e.body)
                    said_text = json.dumps(e.body, ensure_ascii=False)
                kind = failure_kind(status)
                text = _error_message(e.body)
                if kind is not None:
                    after = retry_after_seconds(e.response.headers)
                    return RealtimeFailure(kind, f"Anthropic HTTP {status}: {text}", after)
                body = e.body if isinstance(e.body, dict) else {}
                error = body.get("error")
                kind_name = f"http_{status}"
                if isinstance(error, dict) and error.get("type"):
                    kind_name = str(error["type"])
                # The line a batch would hold: decode_results prefixes the type itself.
                said = error.get("message") if isinstance(error, dict) else None
                if said is None:
                    said = text  # no message of its own: the whole body's text
                elif not isinstance(said, str):
                    said = json.dumps(said, ensure_ascii=False)
                result: dict[str, Any] = {
                    "custom_id": custom_id,
                    "result": {
                        "type": "errored",
                        "error": {
                            "type": "error",
                            "error": {"type": kind_name, "message": said},
                        },
                    },
                }
                decoded = decode_results(json.dumps(result).encode(), spec)
                return kept_response(decoded, said_text or e.response.text, spec)
            except (anthropic.APIConnectionError, httpx2.TransportError) as e:
                # APITimeoutError included; httpx2's errors are a stream broken midway
                return transport_failure(e, "Anthropic")
        result = {"custom_id": custom_id, "result": {"type": "succeeded", "message": message}}
        decoded = decode_results(json.dumps(result).encode(), spec)
        decoded = not_utf8_answer(decoded, checked.first_bad, provider="Anthropic")
        return kept_response(decoded, body_text, spec)

    # find() goes by size and creation time: no metadata
    find_is_exact: ClassVar[bool] = False

    def found_not_created(self, batch_id: str) -> bool:
        """Whether :meth:`submit` found ``batch_id`` by size and time, not by its create."""
        return batch_id in self._found

    def find(self, tag: BatchTag) -> str | None:
        """Find a batch created for ``tag`` by a crashed run.

        Anthropic batches carry no metadata, so candidates are the batches created in the
        window of the submit (allowing for clock skew) with as many requests as ours, and
        not already recorded by this run. An ended candidate is confirmed or ruled out by
        the ``custom_id`` of its first result line; one still running cannot be checked.
        Exactly one candidate left is ours; none means the submit never arrived; several
        is an :class:`~batchata_df.errors.OrphanedBatchError`.
        """
        lo = tag.created_after - CLOCK_SKEW_S
        hi = tag.created_after + SUBMIT_WINDOW_S + CLOCK_SKEW_S
        candidates: list[MessageBatch] = []
        for b in self._iter_batches():
            created = b.created_at.timestamp()
            if created < lo:
                break  # listed newest first: nothing older can be ours
            if created > hi or b.id in tag.known_batch_ids or b.id in self._created:
                continue
            c = b.request_counts
            total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
            if tag.n_jobs is not None and total != tag.n_jobs:
                continue
            candidates.append(b)
        confirmed: list[str] = []
        unknown: list[str] = []
        ids = tag.member_ids() if candidates else frozenset()
        for b in candidates:
            verdict = self._first_custom_id_matches(b, ids)
            if verdict is True:
                confirmed.append(b.id)
            elif verdict is None:
                unknown.append(b.id)
        if len(confirmed) == 1:
            return confirmed[0]
        possible = confirmed + unknown
        if not possible:
            return None
        if len(possible) == 1:
            return possible[0]
        when = dt.datetime.fromtimestamp(tag.created_after, dt.UTC).isoformat(timespec="seconds")
        msg = (
            f"a previous run stopped right after submitting batch {tag.batch_key!r} "
            f"({tag.n_jobs} requests, at {when}), and Anthropic has {len(possible)} batches "
            f"that could be it: {possible!r}. Anthropic batches carry no tag, so batchata-df "
            "cannot tell which one is this run's. Wait until these batches have ended (their "
            "results name our requests) and run again, or cancel the ones that are not from "
            "this run; nothing was submitted again so that nothing is paid twice"
        )
        raise OrphanedBatchError(msg)

    def _first_custom_id_matches(self, batch: MessageBatch, job_ids: frozenset[str]) -> bool | None:
        """Whether an ended batch's results are for ``job_ids``; ``None`` if unknowable."""
        if batch.processing_status != "ended" or not batch.results_url or not job_ids:
            return None

        def first() -> str | None:
            stream = self.client.messages.batches.with_streaming_response.results(batch.id)
            with stream as r:
                for line in r.iter_lines():
                    if line.strip():
                        return str(json.loads(line).get("custom_id"))
            return None

        try:
            custom_id = self._call("read a candidate batch's results", first)
        except ProviderError:
            return None  # archived or unreadable: cannot rule it out
        return None if custom_id is None else custom_id in job_ids

    def _iter_batches(self) -> Iterator[MessageBatch]:
        try:
            page = self._call(
                "list message batches", lambda: self.client.messages.batches.list(limit=100)
            )
            while True:
                # Page by hand so that every request goes through the error translation.
                yield from page.data
                if not page.has_next_page():
                    break
                page = self._call("list message batches", page.get_next_page)
        except ProviderError as e:
            msg = (
                "an Anthropic batch for these rows may already exist (created by this call or an "
                "earlier one just before an error or a stop), but listing batches "
                f"failed ({e}); call again later with the same state: nothing is paid "
                "twice"
            )
            raise OrphanedBatchError(msg) from e


class _CheckedLines:
    """The bytes of one streamed answer, as whole lines that are UTF-8, for the SDK.

    A line that is not UTF-8 goes on with U+FFFD for its damaged bytes (the event is still
    whole JSON, so the message and its usage accumulate to the end) and
    :attr:`first_bad` keeps the offset of the first damaged byte in the stream: the
    answer ran and was billed, so its row fails ``not_utf8`` with its cost
    (:func:`~batchata_df.providers.base.not_utf8_answer`) instead of being lost.
    """

    def __init__(self) -> None:
        self.first_bad: int | None = None
        self._offset = 0

    def decoder(self) -> Any:
        """An ``SSEDecoder`` of the SDK that reads the stream through :meth:`lines`."""
        from anthropic._streaming import SSEDecoder

        checked = self

        class _Decoder(SSEDecoder):
            def iter_bytes(self, iterator: Iterator[bytes]) -> Iterator[Any]:
                return super().iter_bytes(checked.lines(iterator))

        return _Decoder()

    def lines(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """``chunks`` as whole lines (the SDK splits events at line ends), each UTF-8."""
        rest = b""
        for chunk in chunks:
            parts = (rest + chunk).splitlines(keepends=True)
            rest = parts.pop() if parts and not parts[-1].endswith((b"\n", b"\r")) else b""
            yield from map(self._checked, parts)
        if rest:
            yield self._checked(rest)

    def _checked(self, line: bytes) -> bytes:
        start = self._offset
        self._offset += len(line)
        if line.isascii():
            return line
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            if self.first_bad is None:
                self.first_bad = start + e.start
            return line.decode("utf-8", errors="replace").encode("utf-8")
        return line


def _import_sdk() -> Any:
    try:
        import anthropic
    except ImportError as e:  # pragma: no cover - depends on the environment
        msg = (
            "the Anthropic provider needs the anthropic package: "
            "pip install 'batchata-df[anthropic]'"
        )
        raise ProviderError(msg) from e
    return anthropic


def _create_failure(error: BaseException | None) -> str:
    """Classify a failed create: ``final`` (do not retry), ``refused`` or ``unknown``."""
    anthropic = _import_sdk()
    if isinstance(error, anthropic.RateLimitError | anthropic.OverloadedError):
        return "refused"  # turned away before any work was done
    if isinstance(error, anthropic.APIConnectionError):
        return "unknown"  # includes timeouts: the request may have arrived
    if isinstance(error, anthropic.APIStatusError) and (
        error.status_code >= 500 or error.status_code in (408, 409)
    ):
        return "unknown"
    return "final"


#: error types an ``error`` event of a stream may carry -> the HTTP status the same error
#: has outside a stream (Anthropic's errors page, platform.claude.com/docs/en/api/errors:
#: "errors can occur after returning a 200 response", e.g. ``overloaded_error`` = 529)
_STREAM_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _stream_error_status(body: object) -> int:
    """The HTTP status of a stream's ``error`` event (500 for a type we do not know).

    Examples
    --------
    >>> _stream_error_status({"type": "error", "error": {"type": "overloaded_error"}})
    529
    >>> _stream_error_status("garbled")
    500
    """
    error = body.get("error") if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return _STREAM_ERROR_STATUS.get(kind, 500) if isinstance(kind, str) else 500


def _poll_of(b: MessageBatch) -> BatchPoll:
    c = b.request_counts
    counts = {
        "total": c.processing + c.succeeded + c.errored + c.canceled + c.expired,
        "processing": c.processing,
        "succeeded": c.succeeded,
        "errored": c.errored,
        "canceled": c.canceled,
        "expired": c.expired,
    }
    status = b.processing_status
    if status != "ended":
        return BatchPoll(ProviderState.RUNNING, status, None, counts)
    if b.cancel_initiated_at is not None:
        return BatchPoll(ProviderState.CANCELLED, status, "canceled", counts)
    if c.expired:
        detail = f"{c.expired} requests expired before the batch finished (24 h)"
        return BatchPoll(ProviderState.EXPIRED, status, detail, counts)
    return BatchPoll(ProviderState.ENDED, status, None, counts)


def _error_message(body: object) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return f"{err.get('type', 'error')}: {err.get('message', err)}"
    return str(body)


_TEXT = "\x00text"
"""The answer's column while :func:`decode_results` normalises (never a line field)."""
_THINKING = "\x00thinking"
"""Whether the answer has a thinking block, while :func:`decode_results` normalises."""
_THINKING_TYPES = ["thinking", "redacted_thinking"]


def answer_columns(raw: pl.DataFrame) -> list[pl.Series]:
    """The answer of each decoded result line, and whether it has a thinking block.

    The answer is the concatenation of the message's ``text`` blocks (a text block without
    text adds ``""``), null when it has none. Nearly every message is one block: when no
    line has more, the one block is read without evaluating a list per line (the general
    expression took ~3x the CPU for the same values; ``benchmarks/PROFILE.md``, tenth pass).

    Examples
    --------
    >>> line = {"result": {"message": {"content": [
    ...     {"type": "thinking", "text": None}, {"type": "text", "text": "4"},
    ...     {"type": "text", "text": "2"}]}}}
    >>> [s.to_list() for s in answer_columns(pl.DataFrame([line]))]
    [['42'], [True]]
    """
    content = raw.select(
        pl.col("result").struct.field("message").struct.field("content").alias("content")
    )
    blocks = pl.col("content")
    if (content.get_column("content").list.len().max() or 0) <= 1:  # type: ignore[operator]
        block = blocks.list.first()
        kind = block.struct.field("type")
        text = pl.when(kind == "text").then(block.struct.field("text").fill_null(""))
        thinking = kind.is_in(_THINKING_TYPES).fill_null(False)
    else:
        kind = pl.element().struct.field("type")
        texts = blocks.list.eval(pl.element().filter(kind == "text").struct.field("text"))
        text = pl.when(texts.list.len() > 0).then(texts.list.join(""))
        thinking = blocks.list.eval(kind.is_in(_THINKING_TYPES)).list.any().fill_null(False)
    out = content.select(text.alias(_TEXT), thinking.alias(_THINKING))
    return [out.get_column(_TEXT), out.get_column(_THINKING)]


def decode_results(data: Download, spec: RequestSpec | None = None) -> pl.DataFrame:
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
    >>> decode_results(line).select("job_id", "text", "error", "input_tokens").rows()
    [('a', 'hi', None, 7), ('b', None, 'api_error: boom', None)]
    """
    if is_blank(data):  # data.strip() would copy the whole download
        return empty_results()
    citations = spec is not None and spec.citations
    responses = spec is not None and spec.keep_responses
    # built per call (microseconds): a mutation test then sees the schema it reads with
    schema = _line_schema(_CITED_BLOCK if citations else _TEXT_BLOCK)
    # An answered line has no error: read without its column first (read_jsonl's usual).
    raw = read_jsonl(data, schema, usual=null_typed(schema, ("result", "error")))
    if responses:  # each line as Anthropic sent it
        raw = with_result_lines(raw, result_lines(data))
    # The answer once, as columns: an eager select evaluates an expression once per use,
    # and the text is used three times below.
    raw = raw.with_columns(answer_columns(raw))
    text = pl.col(_TEXT)
    has_thinking = pl.col(_THINKING)
    result = pl.col("result")
    kind = result.struct.field("type")
    message = result.struct.field("message")
    stop = message.struct.field("stop_reason")
    usage = message.struct.field("usage")
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
        # anthropic 2.14 types/stop_reason.py StopReason "max_tokens": cut by the limit;
        # the row fails "truncated:" (engine.collection.outcomes_to_events).
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
    elif spec is not None and spec.schema.json_schema is not None:
        # Nearly always every answer starts as JSON (structured output): nothing to do.
        text = pl.col("text")
        if not out.select((_starts_json(text) | text.is_null()).all()).item():
            out = out.with_columns(unfenced(text))
    return conform_results(out)


_FENCED = r"(?s)```[A-Za-z0-9_+-]*[ \t]*\r?\n(.*?)```"
"""A code fence; group 1 is what it holds (``citations._FENCE``)."""


def _starts_json(text: pl.Expr) -> pl.Expr:
    return text.str.contains(r"^\s*[\[{]")


def unfenced(text: pl.Expr) -> pl.Expr:
    r"""A schema answer's JSON: as it is, or what its first code fence holds.

    Asked for JSON in the system prompt (a model without structured output), Claude may
    fence it, with or without words around it. Whatever call collects a batch applies this
    to every schema answer: an answer that starts as JSON (``{`` or ``[``) is left alone (a
    fence inside one of its strings is data); any other could not have been valid as it
    was.

    Examples
    --------
    >>> texts = pl.Series(['{"a": 1}', '```json\n{"a": 2}\n```', 'Sure:\n```\n[3]\n```',
    ...                    '{"s": "```x\n```"}', "no json", None])
    >>> pl.select(unfenced(pl.lit(texts))).to_series().to_list()
    ['{"a": 1}', '{"a": 2}\n', '[3]\n', '{"s": "```x\n```"}', 'no json', None]
    """
    return (
        pl.when(_starts_json(text))
        .then(text)
        .otherwise(pl.coalesce(text.str.extract(_FENCED, 1), text))
        .alias("text")
    )


def _with_citations(out: pl.DataFrame, raw: pl.DataFrame, spec: RequestSpec) -> pl.DataFrame:
    """Replace ``text`` by the fence-free answer and add the per-field ``citations``.

    The position-tracking parse is per answer (Python); only succeeded rows are parsed.
    """
    from batchata_df.citations import map_citations

    fields = spec.schema.columns
    json_answer = spec.schema.json_schema is not None
    content = raw.select(
        pl.when(pl.col("result").struct.field("type") == "succeeded").then(
            pl.col("result").struct.field("message").struct.field("content")
        )
    ).to_series()
    texts: list[str | None] = []
    cited: list[str | None] = []
    for blocks, text in zip(content.to_list(), out.get_column("text").to_list(), strict=True):
        if blocks is None or text is None:
            texts.append(text)
            cited.append(None)
            continue
        answer, mapping = map_citations(blocks, fields, json_answer=json_answer)
        texts.append(answer)
        cited.append(mapping)
    return out.with_columns(
        pl.Series("text", texts, dtype=pl.String),
        pl.Series("citations", cited, dtype=pl.String),
    )
