"""Google Gemini batch mode (Developer API) through the official ``google-genai`` SDK.

Wire facts relied on (``provider-wire.md`` §3, checked against google-genai 3.6.1):

* a batch is created with ``POST /{ver}/models/{model}:batchGenerateContent``, either with
  the requests inline (the whole request must stay under 20 MB) or from an uploaded JSONL
  file (up to 2 GB) of ``{"key", "request"}`` lines;
* the SDK reads only ``name`` and ``metadata`` of the Operation: the results are in
  ``BatchJob.dest`` (``inlined_responses`` with our ``metadata.key``, or ``file_name`` of
  a JSONL result file keyed by ``key``); ``batchStats`` and batch-level errors are not
  mapped, and ``.parsed`` is never set -- we decode the answer text ourselves;
* ``JOB_STATE_EXPIRED`` (not done within 48 h) comes with no results at all;
* ``display_name`` is echoed by ``batches.list``: it carries the run id and batch key so
  that a resumed run finds a batch created just before a crash;
* the SDK retries nothing unless ``HttpOptions.retry_options`` is set, defaults to API
  version ``v1`` (we pin ``v1beta``, the version of the published REST docs), and closes
  its HTTP client when the ``Client`` object is garbage-collected, so the provider keeps
  its client for its whole life;
* ``responseJsonSchema`` accepts a subset of JSON Schema (``$defs``/``$ref``, ``anyOf``,
  ``enum`` of strings and numbers, ``additionalProperties``, ``minimum``/``maximum``,
  ``minItems``/``maxItems``, ``format``, ...): :func:`gemini_json_schema` rewrites the
  strict schema into that subset, and answers are validated against the full model anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
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
    conform_results,
    decoded_results,
    empty_results,
    first_not_utf8,
    header_api_key,
    history_messages,
    json_object,
    json_string,
    not_utf8_again,
    not_utf8_answer,
    not_utf8_reason,
    null_typed,
    read_jsonl,
    request_lines,
    result_lines,
    strip_ends,
    whole_download,
    with_result_lines,
)
from batchata_df.redact import register_secret, scrub_http_logs, scrubbing

if TYPE_CHECKING:
    from google import genai
    from google.genai import types

__all__ = ["GeminiProvider", "decode_lines", "gemini_json_schema"]

API_VERSION = "v1beta"
INPUT_MIME_TYPE = "text/plain"
"""MIME type of the uploaded JSONL input. Google's batch docs upload with ``"jsonl"``, which
the Files API has refused intermittently since October 2025 ("Unsupported MIME type: jsonl",
googleapis/python-genai#1547; google-genai then raises ``KeyError('file')``, #1248, #1590),
as it does ``application/jsonl`` and ``application/json-lines`` (google-gemini/cookbook#1008).
``text/plain`` is among the Files API's documented text types and is what the workarounds
in those threads settled on; the batch reads the file's lines whatever its declared type.
google-genai 3.6.1 sends it as ``X-Goog-Upload-Header-Content-Type`` and ``file.mime_type``
(``_extra_utils.prepare_resumable_upload``)."""
CANCELLED_CODES = frozenset({1, 499})  # google.rpc.Code.CANCELLED and its HTTP form

_STATES = {
    "JOB_STATE_SUCCEEDED": ProviderState.ENDED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": ProviderState.ENDED,
    "JOB_STATE_CANCELLED": ProviderState.CANCELLED,
    "JOB_STATE_EXPIRED": ProviderState.EXPIRED,
    "JOB_STATE_FAILED": ProviderState.FAILED,
}  # every other state (PENDING, QUEUED, RUNNING, CANCELLING, ...) is still running

# Our names for model parameters -> generationConfig fields.
_PARAM_NAMES = {
    "max_tokens": "maxOutputTokens",
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "stop": "stopSequences",
    "seed": "seed",
    "reasoning_effort": "thinkingConfig",  # thinkingBudget (2.5) / thinkingLevel (3+)
}
SUPPORTED_PARAMS = frozenset(_PARAM_NAMES)

# Keywords responseJsonSchema accepts (the SDK's GenerateContentConfig docstring).
_SCHEMA_KEYWORDS = frozenset(
    {"$id", "$defs", "$ref", "$anchor", "type", "format", "title", "description", "enum",
     "items", "prefixItems", "minItems", "maxItems", "minimum", "maximum", "anyOf", "oneOf",
     "properties", "additionalProperties", "required", "propertyOrdering"}
)  # fmt: skip
# Constraints Gemini does not enforce: kept, and also told to the model in the description.
_HINT_KEYWORDS = ("pattern", "minLength", "maxLength", "exclusiveMinimum", "exclusiveMaximum",
                  "multipleOf", "uniqueItems")  # fmt: skip

_PART = pl.Struct({"text": pl.String(), "thought": pl.Boolean()})
_LINE_SCHEMA = pl.Schema(
    {
        "key": pl.String(),
        "response": pl.Struct(
            {
                "candidates": pl.List(
                    pl.Struct(
                        {
                            "content": pl.Struct({"parts": pl.List(_PART)}),
                            "finishReason": pl.String(),
                        }
                    )
                ),
                "promptFeedback": pl.Struct({"blockReason": pl.String()}),
                "usageMetadata": pl.Struct(
                    {
                        "promptTokenCount": pl.Int64(),
                        "candidatesTokenCount": pl.Int64(),
                        "cachedContentTokenCount": pl.Int64(),
                        "thoughtsTokenCount": pl.Int64(),
                    }
                ),
                # google-genai 3.6.1 types.GenerateContentResponse.model_version: "The
                # model version used to generate the response".
                "modelVersion": pl.String(),
            }
        ),
        "error": pl.Struct({"code": pl.Int64(), "message": pl.String()}),
    }
)
_USUAL_LINE_SCHEMA = null_typed(_LINE_SCHEMA, ("response", "promptFeedback"), ("error",))
""":data:`_LINE_SCHEMA` as an answered line has it: no prompt feedback (a blocked prompt),
no error (``read_jsonl``'s ``usual``; a download with one is read with the whole schema)."""

T = TypeVar("T")


# -- schema dialect --------------------------------------------------------------------------


def gemini_json_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Rewrite a strict JSON Schema for ``responseJsonSchema``.

    The API takes any JSON Schema but enforces only a subset (the SDK's
    ``GenerateContentConfig.response_json_schema`` docstring lists it). So: ``const``
    becomes a one-value ``enum`` (``type: boolean`` for booleans), type lists become
    ``anyOf``, nothing but ``$``-keywords stays beside a ``$ref``, objects get
    ``propertyOrdering`` so answers keep the model's field order, and constraints Gemini
    does not enforce (``pattern``, ``minLength``, ...) stay but are also written into the
    ``description`` for the model to read; other keywords are dropped. Recursive models are
    refused: Gemini unrolls cycles only through optional properties, and strict schemas
    make every property required.

    Raises
    ------
    SchemaError
        The schema is recursive.

    Examples
    --------
    >>> gemini_json_schema({"type": "object", "additionalProperties": False,
    ...     "required": ["v"], "properties": {"v": {"const": "x"}}})["properties"]
    {'v': {'enum': ['x']}}
    >>> gemini_json_schema({"type": "string", "pattern": "^a+$"})
    {'type': 'string', 'pattern': '^a+$', 'description': 'pattern: ^a+$'}
    """
    defs = schema.get("$defs", {})
    _check_acyclic(defs)
    out = _rewrite(schema)
    assert isinstance(out, dict)
    return out


def _rewrite(node: object) -> object:
    if isinstance(node, list):
        return [_rewrite(n) for n in node]
    if not isinstance(node, Mapping):
        return node
    if "$ref" in node:  # Gemini allows only $-keywords beside $ref
        return {k: v for k, v in node.items() if k.startswith("$")}
    branches = node.get("anyOf")
    if isinstance(branches, list) and any(_is_numeric(b) for b in branches):
        # Decimal is `number | string matching a decimal pattern`; Gemini cannot enforce
        # the pattern, so keep the number branch, which validates exactly.
        kept = [b for b in branches if not _is_patterned_string(b)]
        if len(kept) == 1 and isinstance(kept[0], Mapping):
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            return _rewrite({**rest, **kept[0]})
        node = {**node, "anyOf": kept}
    out: dict[str, Any] = {}
    hints: list[str] = []
    for key, value in node.items():
        if key in ("properties", "$defs"):
            out[key] = {k: _rewrite(v) for k, v in value.items()}
        elif key == "const":
            if isinstance(value, bool):
                out["type"] = "boolean"
            elif value is None:
                out["type"] = "null"
            else:
                out["enum"] = [value]
        elif key == "enum" and all(isinstance(v, bool) for v in value):
            out["type"] = "boolean"
        elif key == "type" and isinstance(value, list):
            out["anyOf"] = [{"type": t} for t in value]
        elif key == "allOf" and isinstance(value, list):
            for part in value:
                rewritten = _rewrite(part)
                if isinstance(rewritten, dict):
                    for k, v in rewritten.items():
                        out.setdefault(k, v)
        elif key in _HINT_KEYWORDS:
            # The API takes the full JSON Schema but enforces only its subset: keep the
            # constraint (a later model may honour it) and tell the model in words.
            out[key] = value
            hints.append(f"{key}: {value}")
        elif key in _SCHEMA_KEYWORDS:
            out[key] = _rewrite(value)
    if hints:
        hint = "; ".join(hints)
        out["description"] = f"{out['description']} ({hint})" if "description" in out else hint
    if isinstance(out.get("properties"), dict) and out["properties"]:
        out["propertyOrdering"] = list(out["properties"])
    return out


def _is_numeric(node: object) -> bool:
    return isinstance(node, Mapping) and node.get("type") in ("number", "integer")


def _is_patterned_string(node: object) -> bool:
    return isinstance(node, Mapping) and node.get("type") == "string" and "pattern" in node


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, Mapping):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref.rsplit("/", 1)[-1]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _check_acyclic(defs: Mapping[str, Any]) -> None:
    edges = {name: set(_refs(body)) for name, body in defs.items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            cycle = " -> ".join((*path[path.index(name) :], name))
            msg = (
                f"the answer model is recursive ({cycle}); Gemini structured output cannot "
                "express a recursive model whose fields are all required: give the nested "
                "model a fixed depth (separate classes per level)"
            )
            raise SchemaError(msg)
        if name in done:
            return
        for nxt in edges.get(name, ()):
            visit(nxt, (*path, name))
        done.add(name)

    for name in edges:
        visit(name, ())


# -- the provider ----------------------------------------------------------------------------


class GeminiProvider:
    """Gemini batch mode with structured output (``responseJsonSchema``).

    Parameters
    ----------
    api_key, base_url
        Default to ``GOOGLE_API_KEY`` / ``GEMINI_API_KEY`` (the SDK's order: the first
        wins) and ``GOOGLE_GEMINI_BASE_URL``.
    """

    name: ClassVar[str] = "gemini"
    max_requests: ClassVar[int] = 100_000
    max_bytes: ClassVar[int] = 2_000_000_000
    """An uploaded input file holds at most 2 GB."""
    inline_max_bytes: ClassVar[int] = 256 * 1024
    """Requests totalling fewer bytes are sent inline; larger ones go through a file upload.
    The API refuses an inline request over 20 MB, but inline requests and responses pass
    through google-genai's Pydantic models one by one (~1 ms of client CPU per request,
    ``benchmarks/PROFILE.md``) where a file is uploaded and decoded column-wise (~30 us):
    only small batches (a few hundred short requests) are worth the saved upload."""
    retry_attempts: ClassVar[int] = 5
    retry_initial_delay: ClassVar[float] = 1.0
    retry_max_delay: ClassVar[float] = 30.0
    timeout_ms: ClassVar[int] = 600_000

    def __init__(self, api_key: str | None = None, base_url: str | None = None) -> None:
        key = api_key or os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY")
        if api_key:
            source = "the api_key given to GeminiProvider"
        else:
            source = "GOOGLE_API_KEY" if os.environ.get("GOOGLE_API_KEY") else "GEMINI_API_KEY"
        if not key:
            msg = (
                "no Gemini API key: set the GEMINI_API_KEY (or GOOGLE_API_KEY) environment "
                "variable (or put it in a .env file) before running a Gemini model"
            )
            raise CredentialsError(msg)
        # google-genai strips the key itself: surrounding whitespace is harmless here
        self._api_key = header_api_key(key, source, strip=True)
        register_secret(key)
        scrub_http_logs()
        register_secret(self._api_key)  # what is sent, and so what can be echoed
        self._base_url = base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or None
        self._client: genai.Client | None = None
        # Realtime requests run in threads: one client, created once.
        self._client_lock = threading.Lock()
        self._downloads = DownloadBuffer()
        # (the schema, its Gemini rewrite): the schema object itself is held, so that the
        # cache can never match another schema allocated where a freed one was
        self._schema_cache: tuple[dict[str, Any], dict[str, Any]] | None = None

    def __repr__(self) -> str:  # never show the key
        return f"GeminiProvider(base_url={self._base_url!r})"

    @property
    def client(self) -> genai.Client:
        """The SDK client, created on first use and kept (its finaliser closes HTTP)."""
        with self._client_lock:
            if self._client is None:
                try:
                    from google import genai
                    from google.genai import types
                except ImportError as e:
                    msg = (
                        "the Gemini provider needs the google-genai package: "
                        "pip install 'batchata-df[gemini]'"
                    )
                    raise ProviderError(msg) from e
                options = types.HttpOptions(
                    base_url=self._base_url,
                    api_version=API_VERSION,
                    timeout=self.timeout_ms,
                    retry_options=types.HttpRetryOptions(
                        attempts=self.retry_attempts,
                        initial_delay=self.retry_initial_delay,
                        max_delay=self.retry_max_delay,
                    ),
                    # google-genai reads every answer as text, bytes that are not UTF-8
                    # as U+FFFD (``_api_client.py``: ``HttpResponse(..., [response.text])``);
                    # the bytes themselves, where asked for (:func:`_raw_bodies`).
                    client_args={"event_hooks": {"response": [_keep_body]}},
                )
                self._client = genai.Client(
                    api_key=self._api_key, vertexai=False, http_options=options
                )
        return self._client

    def close(self) -> None:
        """Close the SDK client's HTTP connections; give the downloads' memory back."""
        self._downloads.release()
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- errors: the one place SDK exceptions are translated ----------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        from google.genai import errors

        with scrubbing():
            try:
                return fn()
            except errors.APIError as e:
                message = e.message or str(e)
                if e.code in (401, 403) or "API key" in message:
                    msg = (
                        f"Gemini rejected the API key while trying to {what}: check GEMINI_API_KEY "
                        f"(or GOOGLE_API_KEY): HTTP {e.code} {e.status}"
                    )
                    raise CredentialsError(msg) from e
                msg = f"Gemini failed to {what}: HTTP {e.code} {e.status}: {message}"
                raise ProviderError(msg, status_code=e.code) from e
            except _transport_errors() as e:
                msg = f"Gemini failed to {what}: {type(e).__name__}: {e}"
                raise ProviderError(msg) from e
            except json.JSONDecodeError as e:
                # Not JSON at all, unlike an answer the SDK cannot map (below): the body
                # ended early without an error (close-delimited), and another try may
                # read it whole. Transient for a read too: a permanent error would end
                # the rows of a batch that may be answered (and paid) failed.
                msg = f"Gemini failed to {what}: its answer is not whole JSON: {e}"
                raise ProviderError(msg) from e
            except Exception as e:
                # Anything else the SDK raises (an answer it cannot parse: pydantic's
                # ValidationError, a KeyError as in googleapis/python-genai#1590, ...) is a
                # reason, never a crash. It will not parse next time either, so it is
                # permanent for a read (the batch's rows end failed with it); a create is
                # not (nor an upload), so that the engine first looks for a batch the request
                # may have made and sends the rows again later.
                msg = f"Gemini failed to {what}: google-genai raised {type(e).__name__}: {e}"
                raise ProviderError(msg, permanent=not what.startswith(("create", "upload"))) from e

    # -- encode -------------------------------------------------------------------------------

    def generation_config(self, spec: RequestSpec, model: str | None = None) -> str:
        """The ``generationConfig`` JSON that every request of ``model`` shares.

        With ``model``, its default ``max_tokens`` is filled in and ``reasoning_effort``
        becomes ``thinkingConfig`` (:mod:`batchata_df.models`).
        """
        params = spec.params if model is None else effective_params(self.name, model, spec.params)
        config: dict[str, Any] = {}
        if spec.schema.json_schema is not None:
            config["responseMimeType"] = "application/json"
            config["responseJsonSchema"] = self._gemini_schema(spec.schema.json_schema)
        for ours, value in params.items():
            if ours == "reasoning_effort":
                continue
            if ours == "stop" and isinstance(value, str):
                value = [value]
            config[_PARAM_NAMES[ours]] = value
        if model is not None:
            config.update(thinking_fields(self.name, model, params))
        return json.dumps(config, separators=(",", ":"), ensure_ascii=False)

    def _gemini_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self._schema_cache is None or self._schema_cache[0] is not schema:
            self._schema_cache = (schema, gemini_json_schema(schema))
        return self._schema_cache[1]

    def encode(self, jobs: pl.DataFrame, spec: RequestSpec) -> pl.Series:
        """Build one ``{"key", "request"}`` JSONL line per job, vectorised.

        ``key`` is the job id; the same lines are uploaded as the input file, or sent
        inline with the key as ``metadata.key``. When ``jobs`` has ``content_json`` (a JSON
        array of ``parts``, see :func:`batchata_df.files.content_json_expr`), it is the
        user turn's parts instead of the prompt text.
        """
        config = self.generation_config(
            spec, str(jobs.get_column("model")[0]) if jobs.height else None
        )
        # The user turn's parts as they are, or the prompt's one part: one json_encode of
        # {"text": prompt} (the same bytes as the pieces around json_string, without its
        # copies), put in the line without a column of its own.
        parts = (
            [pl.col("content_json")]
            if "content_json" in jobs.columns
            else [pl.lit("["), json_object(text=pl.col("prompt")), pl.lit("]")]
        )
        # A system prompt no row has is left out of the expression: a when/then computes
        # its branch for every row, taken or not (the same lines; tests/test_encode_bytes.py).
        system = (
            pl.lit("")
            if all_null(jobs, "system")
            else pl.when(pl.col("system").is_not_null())
            .then(
                pl.concat_str(
                    [
                        pl.lit(',"systemInstruction":{"parts":[{"text":'),
                        json_string(pl.col("system")),
                        pl.lit("}]}"),
                    ]
                )
            )
            .otherwise(pl.lit(""))
        )
        line = pl.concat_str(
            [
                # A job id is 24 hex digits (batchata_df.jobs.job_ids): a JSON string as it
                # is, put between quotes as OpenAI's custom_id and Anthropic's are (its
                # json_string was a JSON encoding and two copies of every id: ~0.07 s at 1M).
                pl.lit('{"key":"'),
                pl.col("job_id"),
                pl.lit('","request":{"contents":['),
                history_messages(jobs, gemini=True),
                pl.lit('{"role":"user","parts":'),
                *parts,
                pl.lit("}]"),
                system,
                pl.lit(f',"generationConfig":{config}}}}}'),
            ]
        )
        # Each line followed by the JSONL file's newline in Polars' buffers: the body is sent
        # from them as they lie (base.request_lines), not joined again.
        return request_lines(jobs, line, "\n")

    def line_overhead(self) -> int:
        """One newline per request line."""
        return 1

    # -- client -------------------------------------------------------------------------------

    @staticmethod
    def display_name(tag: BatchTag) -> str:
        """The display name that lets :meth:`find` recognise the batch of ``tag``."""
        return f"batchata-{tag.run_id}-{tag.batch_key}"

    def submit(self, lines: pl.Series, *, model: str, tag: BatchTag) -> str:
        """Create the batch inline, or from an uploaded file when it is large."""
        from google.genai import types

        size = int(lines.str.len_bytes().sum()) + lines.len()
        config = types.CreateBatchJobConfig(
            display_name=self.display_name(tag),
            # Creating is not idempotent: a blind retry after a lost answer would create (and
            # bill) a second batch. The engine looks the batch up by its display name first.
            http_options=types.HttpOptions(retry_options=types.HttpRetryOptions(attempts=1)),
        )
        src: Any
        if size < self.inline_max_bytes:
            src = [_inlined_request(line) for line in lines.to_list()]
        else:
            payload = JoinedLines(lines, "\n")  # one buffer, read as it is sent
            uploaded = self._call(
                "upload the batch input file",
                lambda: self.client.files.upload(
                    file=payload,
                    config=types.UploadFileConfig(
                        mime_type=INPUT_MIME_TYPE,
                        display_name=f"{self.display_name(tag)}-input",
                    ),
                ),
            )
            if not uploaded.name:  # pragma: no cover - the API always names files
                msg = "Gemini accepted the input file upload but returned no file name"
                raise ProviderError(msg)
            src = uploaded.name
        job = self._call(
            "create the batch",
            lambda: self.client.batches.create(model=model, src=src, config=config),
        )
        if not job.name:  # pragma: no cover - the API always names batches
            msg = "Gemini created a batch but returned no batch name"
            raise ProviderError(msg)
        return job.name

    def _get(self, batch_id: str) -> types.BatchJob:
        from pydantic import ValidationError

        try:
            return self._call("retrieve the batch", lambda: self.client.batches.get(name=batch_id))
        except ProviderError as e:
            if not isinstance(e.__cause__, ValidationError):
                raise
            # The API sends per-request errors with google.rpc ``details`` objects, which
            # google-genai 3.6.1's JobError (``details: list[str]``) cannot parse: read
            # the same GET leniently instead, so the batch stays collectable.
            return self._call("retrieve the batch", lambda: self._get_lenient(batch_id))

    def _get_lenient(self, batch_id: str) -> types.BatchJob:
        """``batches.get`` with error ``details`` turned into JSON strings before parsing.

        Uses the SDK's own HTTP client and its Developer API converter (google-genai 3.6.1
        ``batches._BatchJob_from_mldev``; pinned in constraints.txt).
        """
        from google.genai import batches, types

        response = self.client._api_client.request("get", batch_id, {})
        raw = _stringify_details(json.loads(response.body or "{}"))
        return types.BatchJob._from_response(response=batches._BatchJob_from_mldev(raw), kwargs={})

    def poll(self, batch_id: str) -> BatchPoll:
        """Retrieve the batch and normalize its state."""
        job = self._get(batch_id)
        status = job.state.value if job.state is not None else "JOB_STATE_UNSPECIFIED"
        state = _STATES.get(status, ProviderState.RUNNING)
        detail = None
        if job.error is not None:
            detail = f"{job.error.code}: {job.error.message}"
        elif state is ProviderState.FAILED:
            detail = f"Gemini reported {status} (the Developer API gives no reason)"
        counts = self._batch_stats(batch_id) if state is ProviderState.RUNNING else {}
        return BatchPoll(state, status, detail, counts)

    def _batch_stats(self, batch_id: str) -> dict[str, int]:
        """The batch's ``metadata.batchStats`` request counts; empty if unavailable.

        google-genai 3.6.1 drops ``batchStats`` when it converts a Developer API batch into
        ``types.BatchJob`` (``batches._BatchJob_from_mldev`` copies neither it nor
        ``completionStats``), so the counts are read from the same GET through the SDK's
        own HTTP client (its auth, base URL and retries). Only a progress display uses
        them: any problem here yields no counts, never a failed poll.
        """
        try:
            response = self.client._api_client.request("get", batch_id, {})
            stats = json.loads(response.body or "{}").get("metadata", {}).get("batchStats", {})
            total = int(stats.get("requestCount", 0))
            pending = int(stats.get("pendingRequestCount", total))
            return {
                "total": total,
                "pending": pending,
                "completed": int(stats.get("successfulRequestCount", 0)),
                "failed": int(stats.get("failedRequestCount", 0)),
            }
        except Exception:  # progress counts are best effort by design
            return {}

    def results(self, batch_id: str, spec: RequestSpec) -> pl.DataFrame:
        """Decode the inlined responses or the downloaded result file of a batch.

        Results with fewer entries than the batch's ``batchStats`` count as processed
        (``successfulRequestCount + failedRequestCount``) ended early at a line boundary
        or came back empty: a ``ProviderError``
        (:func:`~batchata_df.providers.base.whole_download`), read again later.
        """
        answered = self._answered(batch_id)
        failed = f"Gemini's results of batch {batch_id}"
        return whole_download(self._results(batch_id, spec), answered, failed=failed)

    def _answered(self, batch_id: str) -> int | None:
        """The requests an ended batch has a result entry for, by its ``batchStats``.

        "The number of requests that were successfully processed" plus "that failed to be
        processed" (Gemini API reference, ``BatchStats``): each has its response or error
        entry in the output (inline or file). Requests of a cancelled batch that never ran
        are pending, in neither count. google-genai 3.6.1 drops ``batchStats``
        (:meth:`_batch_stats`), so the batch is read through the SDK's own HTTP client.
        ``None`` when the answer gives no count (nothing is proven).
        """

        def fetch() -> Any:
            body = self.client._api_client.request("get", batch_id, {}).body
            return json.loads(body or "{}")

        raw = self._call("retrieve the batch", fetch)
        stats = (raw.get("metadata") or {}).get("batchStats") if isinstance(raw, dict) else None
        if not isinstance(stats, dict):
            return None
        keys = ("successfulRequestCount", "failedRequestCount")
        if not any(k in stats for k in keys):
            return None
        try:
            return sum(int(stats.get(k, 0)) for k in keys)
        except (TypeError, ValueError):
            return None

    def _results(self, batch_id: str, spec: RequestSpec) -> pl.DataFrame:
        with _raw_bodies() as kept:
            job = self._get(batch_id)
        dest = job.dest
        if dest is None:  # expired and failed batches have no results
            return empty_results()
        keep = spec.keep_responses
        if dest.inlined_responses:
            decoded = decode_lines(_inlined_lines(dest.inlined_responses))
            if kept.body is not None:
                # Inline results not UTF-8: read again at the next poll, as a result file
                # is downloaded again; the same bytes twice fail only their entries' rows.
                failed = f"Gemini's batch {batch_id} (its inline results)"
                if not_utf8_again(kept.body, failed=failed) is not None:
                    decoded = _damaged_inline(decoded, kept.body, failed)
            return self._with_inlined_responses(batch_id, decoded) if keep else decoded
        if dest.file_name:
            name = dest.file_name
            # Written into the memory the previous download used (DownloadBuffer) through
            # the SDK's own streamed download, and decoded there.
            with self._downloads.receive() as sink:

                def fetch() -> bytearray:
                    writer: Any = sink  # the SDK takes any object with a ``write``
                    self.client.files.download(file=name, destination=writer)
                    return sink.getvalue()

                data = self._call("download the result file", fetch)
                # A file that ended early without an error, or that is not UTF-8, is
                # fetched again later, not a raw Polars error or panic (decoded_results);
                # the SDK's own errors stay _call's.
                return decoded_results(
                    data,
                    lambda d: decode_lines(d, responses=keep),
                    failed=f"Gemini's result file {name} of batch {batch_id}",
                )
        return empty_results()

    def _with_inlined_responses(self, batch_id: str, decoded: pl.DataFrame) -> pl.DataFrame:
        """``decoded`` with each request's inlined response as Gemini sent it.

        google-genai 3.6.1 parses the batch's ``metadata.output.inlinedResponses`` into
        ``InlinedResponse`` models (fields it does not know are dropped), so the response
        objects are read from the batch resource itself, through the SDK's HTTP client
        (its auth, base URL and retries), and matched by ``metadata.key``.
        """

        def fetch() -> Any:
            return self.client._api_client.request("get", batch_id, {})

        body = json.loads(self._call("retrieve the batch", fetch).body or "{}")
        output = (body.get("metadata") or {}).get("output") or body.get("response") or {}
        items = (output.get("inlinedResponses") or {}).get("inlinedResponses") or []
        served = {
            str((item.get("metadata") or {}).get("key")): json.dumps(
                item, ensure_ascii=False, separators=(",", ":")
            )
            for item in items
            if isinstance(item, dict)
        }
        return decoded.with_columns(
            pl.col("job_id").replace_strict(served, default=None, return_dtype=pl.String)
            .alias("response")
        )

    def cancel(self, batch_id: str) -> None:
        """Ask Gemini to cancel the batch; a batch that already ended is left as it is."""
        from google.genai import errors

        try:
            self._call("cancel the batch", lambda: self.client.batches.cancel(name=batch_id))
        except ProviderError as e:
            cause = e.__cause__
            if isinstance(cause, errors.ClientError) and cause.status == "FAILED_PRECONDITION":
                return  # it ended meanwhile; the next poll collects it
            raise

    # -- realtime (mode="realtime") -----------------------------------------------------------

    def answer(
        self, line: str, *, model: str, spec: RequestSpec
    ) -> pl.DataFrame | RealtimeFailure:
        """Send one request line to ``models/{model}:generateContent``; decode the answer.

        The request is the batch line's (``contents``, ``systemInstruction``,
        ``generationConfig``), given to ``models.generate_content`` as the inline batch
        request is given to ``batches.create``; the SDK's retries are off (one attempt: the
        engine retries with its own clock). The answer is read by :func:`decode_lines`;
        one that is not UTF-8 ran and was billed: its row fails ``not_utf8`` with its usage
        (:func:`~batchata_df.providers.base.not_utf8_answer`).
        """
        from google.genai import errors, types

        from batchata_df.providers.base import (
            cut_answer,
            failure_kind,
            kept_response,
            retry_after_seconds,
            transport_failure,
        )

        request = json.loads(line)
        key = request["key"]
        inlined = _inlined_request(line)
        config = types.GenerateContentConfig.model_validate(inlined["config"])
        config.http_options = types.HttpOptions(retry_options=types.HttpRetryOptions(attempts=1))
        with scrubbing():
            try:
                with _raw_bodies() as kept:
                    reply = self.client.models.generate_content(
                        model=model,
                        contents=inlined["contents"],
                        config=config,
                    )
            except errors.APIError as e:
                message = e.message or str(e)
                if e.code in (401, 403) or "API key" in message:
                    msg = (
                        "Gemini rejected the API key: check GEMINI_API_KEY (or GOOGLE_API_KEY): "
                        f"HTTP {e.code} {e.status}"
                    )
                    raise CredentialsError(msg) from e
                kind = failure_kind(e.code)
                if kind is not None:
                    headers = getattr(e.response, "headers", None)
                    after = retry_after_seconds(headers)
                    return RealtimeFailure(
                        kind, f"Gemini HTTP {e.code} {e.status}: {message}", after
                    )
                line_out = {"key": key, "error": {"code": e.code, "message": message}}
                decoded = decode_lines(json.dumps(line_out).encode())
                return kept_response(decoded, json.dumps(e.details), spec)
            except _transport_errors() as e:
                return transport_failure(e, "Gemini")
            except json.JSONDecodeError as e:
                # google-genai parses the answer itself: a 200 body cut short without an
                # error (close-delimited) is not JSON. The request ran: lost, not resent.
                return cut_answer(e, "Gemini")
        dumped = reply.model_dump(mode="json", by_alias=True, exclude_none=True)
        decoded = decode_lines(json.dumps({"key": key, "response": dumped}).encode())
        bad = None if kept.body is None else first_not_utf8(kept.body)
        decoded = not_utf8_answer(decoded, bad, provider="Gemini")
        return kept_response(decoded, json.dumps(dumped), spec)

    MAX_LISTED: ClassVar[int] = ORPHAN_SEARCH_MAX_LISTED
    SEARCH_SECONDS: ClassVar[float] = ORPHAN_SEARCH_SECONDS

    # find() goes by its display name: the run and batch key
    find_is_exact: ClassVar[bool] = True

    def found_not_created(self, batch_id: str) -> bool:
        """Never: :meth:`submit` returns what its create answered, and nothing else."""
        return False

    def find(self, tag: BatchTag) -> str | None:
        """Find our batch by display name, reading the whole batch list (bounded).

        google-genai 3.6.1 ``batches.list`` documents no order, so no page of older batches
        ends the search; a count and a time bound do
        (:func:`~batchata_df.providers.base.bounded_listing`).
        """
        wanted = self.display_name(tag)
        for job in bounded_listing(
            self._iter_batches(),
            provider="Gemini",
            what=f"display name {wanted}",
            max_listed=self.MAX_LISTED,
            seconds=self.SEARCH_SECONDS,
        ):
            if job.display_name == wanted and job.name:
                return str(job.name)
        return None

    def _iter_batches(self) -> Iterator[Any]:
        from google.genai import types

        try:
            pager = self._call(
                "list batches",
                lambda: self.client.batches.list(config=types.ListBatchJobsConfig(page_size=100)),
            )
            page = list(pager.page)
            while page:
                yield from page
                if not pager.config.get("page_token"):
                    return
                page = list(self._call("list batches", pager.next_page))
        except ProviderError as e:
            msg = (
                "a Gemini batch for these rows may already exist (created by this call or an "
                "earlier one just before an error or a stop), but listing batches "
                f"failed ({e}); call again later with the same state: nothing is paid "
                "twice"
            )
            raise OrphanedBatchError(msg) from e


def _stringify_details(node: Any) -> Any:
    """``node`` with every error's non-string ``details`` entries as JSON strings.

    Examples
    --------
    >>> _stringify_details({"error": {"code": 5, "details": [{"@type": "x"}]}})
    {'error': {'code': 5, 'details': ['{"@type": "x"}']}}
    """
    if isinstance(node, list):
        return [_stringify_details(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _stringify_details(value) for key, value in node.items()}
    error = out.get("error")
    if isinstance(error, dict) and isinstance(error.get("details"), list):
        error["details"] = [
            d if isinstance(d, str) else json.dumps(d, sort_keys=True) for d in error["details"]
        ]
    return out


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network errors of the HTTP stacks the SDK may use (httpx2 when installed, httpx)."""
    found: list[type[BaseException]] = []
    for module in ("httpx2", "httpx"):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        found.append(mod.HTTPError)
    return tuple(found)


class _KeptBodies(threading.local):
    """The bytes of the SDK's last answer in this thread, while a caller asks for them."""

    wanted = False
    body: bytes | None = None


_KEPT = _KeptBodies()


def _keep_body(response: Any) -> None:
    """The SDK's HTTP client's response hook: keep the body's bytes when asked for."""
    if _KEPT.wanted:
        response.read()  # what the SDK reads next anyway (it does not stream these)
        _KEPT.body = bytes(response.content)


@contextlib.contextmanager
def _raw_bodies() -> Iterator[_KeptBodies]:
    """Keep the bytes of the answers the SDK reads in this block (in this thread)."""
    _KEPT.wanted, _KEPT.body = True, None
    try:
        yield _KEPT
    finally:
        _KEPT.wanted = False


_ESCAPED = re.compile("[\udc80-\udcff]")
"""Bytes that are not UTF-8, as ``surrogateescape`` reads them (never in UTF-8 text)."""


def _damaged_inline(decoded: pl.DataFrame, body: bytes, failed: str) -> pl.DataFrame:
    """``decoded`` with the rows of the inline results that hold bytes not UTF-8 failed.

    The batch resource holds the inline results under ``metadata.output`` and
    ``response`` alike; an entry damaged in either fails (the SDK reads one of them). Its
    key is matched as the SDK read it (U+FFFD for the damaged bytes).
    """
    doc = json.loads(body.decode("utf-8", errors="surrogateescape"))
    outputs = [((doc.get("metadata") or {}).get("output") or {}), doc.get("response") or {}]
    damaged: set[str] = set()
    for output in outputs:
        items = (output.get("inlinedResponses") or {}).get("inlinedResponses") or []
        for item in items:
            if isinstance(item, dict) and _ESCAPED.search(json.dumps(item, ensure_ascii=False)):
                key = str((item.get("metadata") or {}).get("key"))
                damaged.add(key.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    hit = pl.col("job_id").is_in(sorted(damaged))
    reason = not_utf8_reason(failed, entry="inline result")
    return decoded.with_columns(
        pl.when(hit).then(pl.lit("errored")).otherwise(pl.col("outcome")).alias("outcome"),
        pl.when(hit).then(pl.lit(reason)).otherwise(pl.col("error")).alias("error"),
    )


def _inlined_request(line: str) -> dict[str, Any]:
    """One encoded line as the SDK's ``InlinedRequest`` (camelCase keys are its aliases)."""
    obj = json.loads(line)
    request = obj["request"]
    config = dict(request.get("generationConfig") or {})
    if "systemInstruction" in request:
        config["systemInstruction"] = request["systemInstruction"]
    return {"contents": request["contents"], "config": config, "metadata": {"key": obj["key"]}}


def _inlined_lines(responses: list[types.InlinedResponse]) -> bytes:
    """Inlined responses (already parsed by the SDK) back as result-file lines."""
    lines = []
    for r in responses:
        line: dict[str, Any] = {"key": (r.metadata or {}).get("key")}
        if r.response is not None:
            line["response"] = r.response.model_dump(mode="json", by_alias=True, exclude_none=True)
        if r.error is not None:
            line["error"] = r.error.model_dump(mode="json", exclude_none=True)
        lines.append(json.dumps(line, separators=(",", ":")))
    return "\n".join(lines).encode()


_TEXT = "\x00text"
"""The decoded answer's column while :func:`decode_lines` normalises (never a line field)."""
_FINISH = "\x00finish"
"""The first candidate's finish reason while :func:`decode_lines` normalises."""


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


def decode_lines(data: Download, *, responses: bool = False) -> pl.DataFrame:
    """Decode Gemini result lines (``{"key", "response" | "error"}``) into RESULTS.

    With ``responses``, each row's ``response`` is its line as Gemini sent it.

    The answer is the concatenated text parts of the first candidate, without thought
    parts. Usage: input = ``promptTokenCount``, output = ``candidatesTokenCount`` +
    ``thoughtsTokenCount`` (thinking is billed as output, and ``candidatesTokenCount``
    leaves it out: google-genai 3.6.1 ``types.py`` ``GenerateContentResponseUsageMetadata``,
    whose total is prompt + candidates + tool-use prompt + thoughts), reasoning =
    ``thoughtsTokenCount``, cached = ``cachedContentTokenCount``; ``model`` =
    ``modelVersion`` (the model that answered).
    """
    data = strip_ends(data)  # data.strip() without copying the download to drop its "\n"
    if not data:
        return empty_results()
    raw = read_jsonl(data, _LINE_SCHEMA, usual=_USUAL_LINE_SCHEMA)
    if responses:
        raw = with_result_lines(raw, result_lines(data))
    # A line without its key that holds a response was billed: kept (its job_id null),
    # so that its usage counts as unmatched spend (engine.collection.unmatched_events).
    raw = raw.filter(pl.col("key").is_not_null() | pl.col("response").is_not_null())
    # The answer once, as a column: an eager select evaluates an expression once per use,
    # and the text is used four times below.
    resp = pl.col("response")
    # ... and so is the finish reason (six uses), each of which took the list's first
    # candidate again.
    raw = raw.with_columns(
        answer_text(raw).alias(_TEXT),
        resp.struct.field("candidates").list.first().struct.field("finishReason").alias(_FINISH),
    )
    text = pl.col(_TEXT)
    finish = pl.col(_FINISH)
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
        # google-genai 3.6.1 types.FinishReason.MAX_TOKENS: "generated the maximum number
        # of tokens allowed by max_output_tokens"; the row fails "truncated:"
        # (engine.collection.outcomes_to_events).
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
        # The model that answered: Google answers a routed model's requests with its
        # successor from the routing date on, "billed at the new model's rates"
        # (batchata_df.models.SCHEDULED), so a row is priced at this model.
        resp.struct.field("modelVersion").alias("model"),
    )
    return conform_results(out)
