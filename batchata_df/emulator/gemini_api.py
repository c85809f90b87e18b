"""Gemini batch mode (Developer API) as the emulator speaks it, per provider-wire.md §3.

Mounted at ``/gemini``; both API versions ``v1`` (the google-genai default) and ``v1beta``
(the published REST docs) are served. Every route needs ``x-goog-api-key: <key>`` (or
``?key=``), except the upload URL handed out by a resumable-upload start, which the SDK
calls without a key. A missing key is a 403 ``PERMISSION_DENIED``; a key starting with
``invalid`` is a 400 ``INVALID_ARGUMENT`` "API key not valid", like the real service.

Routes (below the mount prefix; ``{ver}`` is ``v1`` or ``v1beta``)
-----------------------------------------------------------------
``POST /{ver}/models/{model}:batchGenerateContent``
    Body ``{"batch": {"displayName", "inputConfig": {"requests": {"requests": [{"request",
    "metadata"}]}} | {"fileName": "files/..."}}}``; answers an Operation (state PENDING).
    An inline body over 20 MB is a 400, as is a batch with both or neither input. A model
    the Gemini API does not serve (:func:`~batchata_df.emulator.model_rules.serves`:
    genai-prices' Google list without Vertex's Claude; ``emulator-unknown-model`` never)
    is a 404 ``NOT_FOUND`` "models/... is not found for API version ..., or is not
    supported for batchGenerateContent. ..." (``:generateContent`` likewise).
``POST /{ver}/models/{model}:generateContent``
    One request answered at once, as a batch answers it, billed at the standard price.
``POST /{ver}/models/{model}:countTokens``
    ``{"contents"}`` or ``{"generateContentRequest"}`` -> ``{"totalTokens",
    "promptTokensDetails"}``: the ``promptTokenCount`` generateContent reports for the
    same prompt; free (nothing billed). See :meth:`GeminiApp._count_tokens`.
``GET /{ver}/batches/{id}``, ``DELETE /{ver}/batches/{id}``, ``POST /{ver}/batches/{id}:cancel``
``GET /{ver}/batches?pageSize=&pageToken=``
    ``{"operations": [...], "nextPageToken": "..."}``, newest first.
``POST /upload/{ver}/files``
    Resumable upload: ``X-Goog-Upload-Command: start`` answers the ``x-goog-upload-url``
    header; the bytes then go to that URL with ``upload`` / ``upload, finalize`` (the last
    answers ``x-goog-upload-status: final`` and ``{"file": File}``). ``query`` reports the
    bytes received so far.
``GET /{ver}/files/{id}``, ``DELETE /{ver}/files/{id}``, ``GET /{ver}/files``
``GET /{ver}/files/{id}:download?alt=media`` and ``GET /download/{ver}/files/{id}:download``
    Raw bytes of a *generated* file (batch results). Uploaded files cannot be downloaded.

The Operation
-------------
The SDK reads only ``name`` and ``metadata``: ``metadata.state`` is
``BATCH_STATE_PENDING|RUNNING|SUCCEEDED|FAILED|CANCELLED|EXPIRED`` (the SDK turns it into
``JOB_STATE_*``), and once a batch has results they are in ``metadata.output`` --
``{"inlinedResponses": {"inlinedResponses": [{"response" | "error", "metadata"}]}}`` for
inline input, ``{"responsesFile": "files/batch-..."}`` for file input -- mirrored in
``response`` like the real service does. ``done`` is true in a final state.

Lifecycle
---------
A batch created with latency ``L`` is ``PENDING`` for the first 10 % of ``L``, then
``RUNNING``; requests finish in input order, evenly over the running span; at ``L`` it is
``SUCCEEDED``. With ``L = 0`` the create answers ``PENDING`` and the first ``get``
``SUCCEEDED``. Gemini expires a batch that is not done after 48 h: with ``L`` over 48 h the
batch is ``EXPIRED`` at 48 h (simulated clock) and has **no results**. A batch whose file
input holds no readable request line ends ``FAILED`` (no results; the Operation carries a
batch-level ``error``).

Uploads declared as JSON Lines (``jsonl``, ``application/jsonl``, ``application/json-lines``,
``application/x-ndjson``, ...) are refused with "Unsupported MIME type: <type>" in the
finalize answer (HTTP 200, an error body instead of the file): the real Files API refuses
them intermittently since October 2025 (googleapis/python-genai#1547, #1248;
google-gemini/cookbook#1008), and the emulator refuses them always so that a client cannot
pass by luck. ``text/plain`` and ``application/json`` are accepted.

Inline data (``inlineData`` or ``inline_data``, ``mimeType`` or ``mime_type``) must be
base64 (else the create is a 400 for inline requests, the line fails in a file); a PDF
must be a PDF, a PNG/JPEG/WebP image must match its type, and the MIME type must be one
Gemini takes (PDF, PNG, JPEG, WebP, HEIC, HEIF, ``text/*``, audio, video; not GIF), else
the request gets a 400 error.

``:cancel`` answers ``{}``; the batch stays in its state for the ``cancel_delay`` setting,
then is ``CANCELLED`` with the results of the requests that had finished. Requests that
never ran get an error entry (code 499, "cancelled") with ``cancel_unfinished="error_file"``
(the default) and no entry with ``"omit"``. Cancelling a batch in a final state is a 400
``FAILED_PRECONDITION``.

Answers
-------
Decided at creation from the request: ``generationConfig.responseJsonSchema`` (JSON Schema)
or ``responseSchema`` (the OpenAPI subset with upper-case types) with ``responseMimeType``
``application/json`` gives a schema-valid answer (:mod:`.answers`); ``application/json``
alone gives ``{"answer": "..."}``; otherwise plain text. Markers in the prompt (any text
part, system instruction included): ``[[emulator:error]]`` (``:NNN`` picks the code) gives a
per-request ``error`` ``{code, message, status}``, and ``[[emulator:details]]`` the same
with the typed ``google.rpc`` ``details`` objects the API sends (which the SDK's
``JobError`` cannot parse); ``[[emulator:invalid]]`` an answer that does not
validate; ``[[emulator:truncate]]`` cut-off text with ``finishReason: MAX_TOKENS`` (so does
an answer longer than ``maxOutputTokens``); ``[[emulator:refusal]]`` a candidate with
``finishReason: SAFETY`` and no content. A request that fails (its own ``error``, not a
response) is not billed: :attr:`~.server.LedgerEntry.unbilled`.

Thinking follows the model's generation (:mod:`.model_rules`): 2.5 thinks by default
(``thinkingBudget: 0`` turns it off, not on 2.5 Pro), except 2.5 Flash-Lite, which thinks
only when given a budget; a budget outside the model's range is refused; 3.x and 4 think at
a ``thinkingLevel`` (each model's own list and default), and take a ``thinkingBudget``
alone too, but not both together; the thinking tokens (``model_rules.THOUGHT_TOKENS`` per
level, at most the budget; on a prompt marked ``[[emulator:think]]`` as long as the model
may: 8,192 for 2.5's dynamic thinking, the whole output limit at a level) are reported as
``thoughtsTokenCount`` (not in ``candidatesTokenCount``) and count against
``maxOutputTokens``: thinking that uses all of it leaves no text part and ``finishReason:
MAX_TOKENS``, billed. A ``thinkingBudget`` above ``maxOutputTokens`` is accepted: no source
read shows the API refusing it, and requests whose thinking fills ``maxOutputTokens`` are
answered ``MAX_TOKENS`` with empty text (googleapis/python-genai#811, #626, #1405); the
client refuses it before sending. ``includeThoughts`` adds a ``{"text", "thought": true}``
part before the answer. A thinking config the model refuses is a per-request error (400).

Usage is the emulator's estimate (``answers.count_tokens``): ``promptTokenCount`` covers the
text parts, the ``inlineData`` parts (:mod:`.media`: 258 per PDF page, 258 per image or
768 px image tile) and the schema, ``candidatesTokenCount`` the answer;
``cachedContentTokenCount`` is what implicit caching served (:mod:`.prompt_cache`): the
longest exact prefix (system instruction, then contents) shared with an earlier request of
the same model, when it reaches the model's minimum (2,048 tokens for Gemini 2.5, 4,096
for 3.x; none before 2.5). It is part of ``promptTokenCount``.
"""

from __future__ import annotations

import base64
import bisect
import datetime as dt
import hashlib
import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from batchata_df.emulator import answers, gemini_checks, media, model_rules
from batchata_df.emulator.gemini_checks import RequestChecker, snake, unknown_name
from batchata_df.emulator.prompt_cache import PromptCaches
from batchata_df.emulator.sdk_params import warm_in_background
from batchata_df.emulator.server import (
    _GEMINI_STATUS,
    EmulatorCore,
    LedgerEntry,
    Request,
    Response,
    error_envelope,
    json_body,
    json_response,
    listed,
    updated_limits,
)

__all__ = ["GeminiApp", "create_app", "openapi_to_json_schema"]

VERSIONS: Final = ("v1", "v1beta")
HOUR: Final = 3600
EXPIRY_SECONDS: Final = 48 * HOUR
FILE_TTL_SECONDS: Final = 48 * HOUR
PHASE_PENDING: Final = 0.1
MB: Final = 1024 * 1024
CANCELLED_CODE: Final = 499
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 1000
_DEFAULT_LIMITS: Final[dict[str, int]] = {
    "max_inline_bytes": 20 * MB,
    "max_file_bytes": 2048 * MB,
}
_STATE_PREFIX: Final = "BATCH_STATE_"
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def create_app(core: EmulatorCore) -> GeminiApp:
    """Build the Gemini app for ``core`` (the server's provider-module entry point)."""
    return GeminiApp(core)


def _rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


REFUSED_UPLOAD_TYPES = frozenset(
    {
        "jsonl",
        "application/jsonl",
        "application/json-lines",
        "application/jsonlines",
        "application/x-jsonlines",
        "application/x-ndjson",
        "application/ndjson",
    }
)
"""JSON Lines MIME types the Files API refuses (see the module docstring)."""


class _Invalid(Exception):
    """An HTTP-level error, answered in the Google error envelope."""

    def __init__(self, status: int, message: str, state: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.state = state


def _json_or_400(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object, or a 400 worded as Google words it."""
    try:
        return json_body(request)
    except ValueError as e:
        raise _Invalid(400, f"Invalid JSON payload received. {e}") from e


# --------------------------------------------------------------------------------------
# Schemas


_OPENAPI_KEEP: Final = frozenset(
    {
        "format",
        "description",
        "enum",
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "required",
        "title",
    }
)


def openapi_to_json_schema(schema: object) -> object:
    """Turn Gemini's OpenAPI-subset ``Schema`` (``responseSchema``) into JSON Schema.

    Examples
    --------
    >>> s = openapi_to_json_schema({"type": "OBJECT", "properties": {"n": {"type": "INTEGER",
    ...     "nullable": True}}, "required": ["n"]})
    >>> s["type"], s["properties"]["n"]
    ('object', {'anyOf': [{'type': 'integer'}, {'type': 'null'}]})
    """
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    kind = schema.get("type")
    if isinstance(kind, str):
        out["type"] = kind.lower()
    if "properties" in schema and isinstance(schema["properties"], Mapping):
        out["properties"] = {k: openapi_to_json_schema(v) for k, v in schema["properties"].items()}
    if "items" in schema:
        out["items"] = openapi_to_json_schema(schema["items"])
    if "anyOf" in schema and isinstance(schema["anyOf"], list):
        out["anyOf"] = [openapi_to_json_schema(s) for s in schema["anyOf"]]
    for key in _OPENAPI_KEEP:
        if key in schema:
            out[key] = schema[key]
    if schema.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


# --------------------------------------------------------------------------------------
# Requests -> compact specs (decided at batch creation)


@dataclass(slots=True)
class _Spec:
    key: str | None
    prompt: str
    prompt_tokens: int
    mode: str  # "text" | "schema" | "json"
    gen: answers.AnswerGenerator | None
    max_tokens: int | None
    marker: str | None
    thinking: bool
    include_thoughts: bool
    error: tuple[int, str] | None  # code, message
    metadata: dict[str, str] | None = None  # inline requests: echoed verbatim
    thoughts: int = 0  # thinking tokens spent before the answer, inside maxOutputTokens
    signature: str = ""  # the prompt as implicit caching compares it (binary parts hashed)
    # Prompt tokens of the inlineData parts by modality ((("IMAGE", 258),) ...); the rest of
    # prompt_tokens is TEXT. A tuple: the empty one is shared by the text-only requests.
    media: tuple[tuple[str, int], ...] = ()
    invalid: bool = False  # refused as a whole request (_failed), not a generation error


def _signature(system: object, contents: list[Any]) -> str:
    """System instruction then contents, text as is and other parts as digests."""
    out: list[str] = []
    for content in [system, *contents] if system is not None else contents:
        parts = content.get("parts") if isinstance(content, Mapping) else None
        for part in parts if isinstance(parts, list) else []:
            text = part.get("text") if isinstance(part, Mapping) else None
            if isinstance(text, str):
                out.append(text)
            else:
                raw = json.dumps(part, sort_keys=True, default=str).encode()
                out.append("\x00" + hashlib.blake2b(raw, digest_size=8).hexdigest())
    return "\n".join(out)


def _content_text(content: object) -> str:
    if not isinstance(content, Mapping):
        return ""
    parts = content.get("parts")
    if not isinstance(parts, list):
        return ""
    return "\n".join(
        p["text"] for p in parts if isinstance(p, Mapping) and isinstance(p.get("text"), str)
    )


# Inline data Gemini accepts (image and document understanding guides); GIF is not one.
_IMAGE_TYPES: Final = ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif")
_MEDIA_PREFIXES: Final = ("text/", "audio/", "video/")


class _Base64Error(media.MediaError):
    """``inlineData.data`` is not base64: the whole JSON payload is refused."""


def _media_tokens(content: object, into: dict[str, int]) -> None:
    """Add the tokens of the ``inlineData`` parts of a ``Content`` to ``into``, by modality.

    MediaError if Gemini refuses one. The modalities are the API's ``Modality`` enum
    (ai.google.dev/api/generate-content#Modality: TEXT, IMAGE, VIDEO, AUDIO, DOCUMENT;
    "DOCUMENT: Document, e.g. PDF", cloud.google.com/vertex-ai/.../CountTokensResponse).
    """
    parts = content.get("parts") if isinstance(content, Mapping) else None
    if not isinstance(parts, list):
        return
    for part in parts:
        blob = (
            part.get("inlineData", part.get("inline_data")) if isinstance(part, Mapping) else None
        )
        if blob is None:
            continue
        if not isinstance(blob, Mapping):
            msg = "Invalid JSON payload: 'inlineData' must be an object."
            raise _Base64Error(msg)
        mime = blob.get("mimeType", blob.get("mime_type"))
        try:
            raw = media.decode_base64(blob.get("data"), urlsafe=True)
        except media.MediaError as e:
            msg = f"Invalid value at 'inline_data.data' (TYPE_BYTES), Base64 decoding failed: {e}"
            raise _Base64Error(msg) from e
        if not isinstance(mime, str) or not mime:
            msg = "* GenerateContentRequest.contents.parts.inline_data.mime_type: required"
            raise media.MediaError(msg)
        if mime == "application/pdf":
            try:
                pages = media.check_pdf(raw)
            except media.MediaError as e:
                msg = "Unable to process input document: the document has no pages."
                raise media.MediaError(msg) from e
            _add(into, "DOCUMENT", pages * media.PDF_PAGE_TOKENS["gemini"])
        elif mime in ("image/png", "image/jpeg", "image/webp"):
            try:
                width, height = media.check_image(raw, mime)
            except media.MediaError as e:
                msg = f"Unable to process input image ({e})."
                raise media.MediaError(msg) from e
            _add(into, "IMAGE", media.image_tokens("gemini", width, height))
        elif mime in _IMAGE_TYPES or mime.startswith(_MEDIA_PREFIXES):
            modality = mime.split("/", 1)[0].upper()
            _add(into, "IMAGE" if mime in _IMAGE_TYPES else modality, 258)
        else:
            msg = f"Unsupported MIME type: {mime}"
            raise media.MediaError(msg)


def _add(into: dict[str, int], modality: str, tokens: int) -> None:
    into[modality] = into.get(modality, 0) + tokens


def _prompt_details(spec: _Spec) -> list[dict[str, Any]]:
    """``promptTokensDetails``: the prompt's tokens by modality, TEXT first, none empty.

    ``ModalityTokenCount {modality, tokenCount}`` (the API's ``GenerateContentResponse.
    UsageMetadata.promptTokensDetails`` and ``CountTokensResponse.promptTokensDetails``).
    """
    text = spec.prompt_tokens - sum(t for _, t in spec.media)
    pairs = [("TEXT", text), *spec.media]
    return [{"modality": m, "tokenCount": t} for m, t in pairs if t > 0]


class _SpecBuilder:
    def __init__(self, model: str = "") -> None:
        self.model = model  # the batch's model: its generation's rules apply (model_rules)
        self._last_schema: object = None
        self._last_gen: answers.AnswerGenerator | None = None

    def _generator(self, schema: Mapping[str, Any]) -> answers.AnswerGenerator:
        if self._last_gen is None or schema != self._last_schema:
            self._last_gen = answers.generator_for(schema)
            self._last_schema = schema
        return self._last_gen

    def build(self, key: str | None, request: object) -> _Spec:
        """One request of the batch as a :class:`_Spec` (images billed by the batch's model)."""
        with media.billing_model(self.model):
            return self._build(key, request)

    def _build(self, key: str | None, request: object) -> _Spec:
        if not isinstance(request, Mapping):
            return self._failed(
                key, "Invalid request: 'request' must be a GenerateContentRequest object."
            )
        contents = request.get("contents")
        if not isinstance(contents, list) or not contents:
            return self._failed(key, "* GenerateContentRequest.contents: contents is not specified")
        texts = [_content_text(c) for c in contents]
        system = request.get("systemInstruction", request.get("system_instruction"))
        if system is not None:
            texts.insert(0, _content_text(system))
        prompt = "\n".join(texts)
        by_modality: dict[str, int] = {}
        try:
            for c in contents:
                _media_tokens(c, by_modality)
        except _Base64Error:
            raise  # the caller decides: a 400 for inline requests, a failed line in a file
        except media.MediaError as e:
            return self._failed(key, str(e))
        config = request.get("generationConfig", request.get("generation_config")) or {}
        if not isinstance(config, Mapping):
            return self._failed(key, "Invalid JSON payload: 'generationConfig' must be an object.")
        mime = config.get("responseMimeType", config.get("response_mime_type"))
        json_schema = config.get("responseJsonSchema", config.get("response_json_schema"))
        api_schema = config.get("responseSchema", config.get("response_schema"))
        error: tuple[int, str] | None = None
        mode, gen = "text", None
        if json_schema is not None and api_schema is not None:
            error = (400, "responseSchema and responseJsonSchema cannot both be set.")
        elif json_schema is not None or api_schema is not None:
            if mime != "application/json":
                error = (
                    400,
                    "responseMimeType must be 'application/json' when a response schema is set.",
                )
            else:
                schema = (
                    json_schema if json_schema is not None else openapi_to_json_schema(api_schema)
                )
                if isinstance(schema, Mapping):
                    mode, gen = "schema", self._generator(schema)
                else:
                    error = (400, "The response schema must be an object.")
        elif mime == "application/json":
            mode = "json"
        thinking_cfg = config.get("thinkingConfig", config.get("thinking_config")) or {}
        # Proto JSON accepts both spellings, and the SDK sends nested configs in snake_case.
        if not isinstance(thinking_cfg, Mapping):
            thinking_cfg = {}
        include = bool(thinking_cfg.get("includeThoughts", thinking_cfg.get("include_thoughts")))
        budget = thinking_cfg.get("thinkingBudget", thinking_cfg.get("thinking_budget"))
        marker = answers.find_marker(prompt)
        thoughts, ceiling = 0, 65_536
        if self.model:
            refused = model_rules.gemini_refusal(self.model, dict(config))
            if refused is not None and error is None:
                error = (400, refused)
            thoughts = model_rules.gemini_thoughts(
                self.model, dict(config), deep=marker == answers.MARKER_THINK
            )
            ceiling = model_rules.max_output("gemini", self.model) or ceiling
            thoughts = min(thoughts, ceiling)
        elif include or (isinstance(budget, int) and budget > 0):
            thoughts = model_rules.THOUGHT_TOKENS["low"]
        thinking = thoughts > 0
        limit = config.get("maxOutputTokens", config.get("max_output_tokens"))
        max_tokens = (
            limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None
        )
        if max_tokens is None and thoughts >= ceiling:
            max_tokens = ceiling  # no maxOutputTokens: the model's own limit stops the thinking
        if marker in (answers.MARKER_ERROR, answers.MARKER_DETAILS) and error is None:
            code = answers.marker_status(prompt)
            error = (code, f"Emulated error (HTTP {code}) for this request.")
        files = sum(by_modality.values())
        tokens = answers.count_tokens(prompt) + files + (gen.schema_tokens if gen else 0)
        window = model_rules.context_window("gemini", self.model) if self.model else None
        # Gemini's count is len // 4 (model_rules.window_tokens), as its usage is.
        if error is None and window is not None and tokens > window:
            # google-gemini/gemini-cli#6678 (400 INVALID_ARGUMENT, gemini-2.5-pro)
            error = (400, f"The input token count ({tokens}) exceeds the maximum number of "
                     f"tokens allowed ({window}).")  # fmt: skip
        return _Spec(
            key, prompt, tokens, mode, gen, max_tokens, marker, thinking, include, error,
            thoughts=thoughts, signature=_signature(system, contents),
            media=tuple(by_modality.items()),
        )

    @staticmethod
    def _failed(key: str | None, message: str) -> _Spec:
        return _Spec(
            key, "", 0, "text", None, None, None, False, False, (400, message), invalid=True
        )


# --------------------------------------------------------------------------------------
# Rendering answers


def _cut(text: str, must_break_json: bool, *, keep: bool = False) -> str:
    cut = text if keep else text[: max(1, len(text) // 2)]
    if must_break_json:
        try:
            json.loads(cut)
        except ValueError:
            return cut
        return "{" + cut[:-1] if len(cut) > 1 else "{"
    return cut


def _render(
    spec: _Spec, model: str, rid: str, cached: int = 0
) -> tuple[dict[str, Any], int, int]:
    """A GenerateContentResponse for a request that runs; plus (answer, thought) tokens.

    ``cached`` is the request's ``cachedContentTokenCount`` (implicit caching).
    """
    seed = answers.answer_seed(spec.prompt)
    pt = spec.prompt_tokens
    if spec.marker == answers.MARKER_REFUSAL:
        usage = {
            "promptTokenCount": pt,
            "candidatesTokenCount": 0,
            "totalTokenCount": pt,
            "cachedContentTokenCount": cached,
            "thoughtsTokenCount": 0,
        }
        body = {
            "candidates": [
                {
                    "finishReason": "SAFETY",
                    "index": 0,
                    "safetyRatings": [
                        {
                            "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                            "probability": "HIGH",
                            "blocked": True,
                        }
                    ],
                }
            ],
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": rid,
        }
        return body, 0, 0
    if spec.mode == "schema" and spec.gen is not None:
        if spec.marker == answers.MARKER_OVERFLOW:
            text = spec.gen.overflowed(seed)
        elif spec.marker == answers.MARKER_INVALID:
            text = _compact(spec.gen.invalid(seed))
        else:
            text = _compact(spec.gen.value(seed))
    elif spec.mode == "json":
        text = _compact({"answer": answers.fake_text(spec.prompt, seed)})
    else:
        text = answers.fake_text(spec.prompt, seed)
    truncated = False
    tt = spec.thoughts if spec.thinking else 0
    room = spec.max_tokens
    if room is not None:
        tt = min(tt, room)
        room -= tt  # thinking counts against maxOutputTokens
    stopped = {answers.MARKER_FILTER: "SAFETY", answers.MARKER_RECITATION: "RECITATION"}.get(
        spec.marker or ""
    )  # google-genai 3.6.1 FinishReason: the answer stopped part-way, partial text kept
    if spec.marker in (answers.MARKER_TRUNCATE, answers.MARKER_CONTEXT) or stopped:
        text, truncated = _cut(text, spec.mode != "text"), stopped is None
    if room is not None and answers.count_tokens(text) > room:
        text = _cut(text[: room * 4], spec.mode != "text", keep=True) if room > 0 else ""
        truncated = True
    ct = answers.count_tokens(text) if text else 0
    if room is not None:
        # Cut by the output limit: the whole limit was generated and is billed
        # (candidatesTokenCount + thoughtsTokenCount = maxOutputTokens, finishReason
        # MAX_TOKENS).
        ct = room if truncated else min(ct, room)
    parts: list[dict[str, Any]] = []
    if spec.thinking:
        thought = "Thinking about " + answers.fake_text(spec.prompt, seed + "\x1ethought")
        if spec.include_thoughts:
            parts.append({"text": thought, "thought": True})
    if text:
        parts.append({"text": text})
    body = {
        "candidates": [
            {
                "content": {"parts": parts, "role": "model"},
                "finishReason": stopped or ("MAX_TOKENS" if truncated else "STOP"),
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": pt,
            "candidatesTokenCount": ct,
            "totalTokenCount": pt + ct + tt,
            "cachedContentTokenCount": cached,
            "thoughtsTokenCount": tt,
            "promptTokensDetails": _prompt_details(spec),
        },
        "modelVersion": model,
        "responseId": rid,
    }
    return body, ct, tt


def _usage(response: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(input, output, cached)`` tokens a rendered response is billed for.

    Thinking is output: ``thoughtsTokenCount`` is not in ``candidatesTokenCount``.
    """
    meta = response.get("usageMetadata") or {}
    out = int(meta.get("candidatesTokenCount", 0)) + int(meta.get("thoughtsTokenCount", 0))
    return int(meta.get("promptTokenCount", 0)), out, int(meta.get("cachedContentTokenCount", 0))


def _error_json(code: int, message: str) -> dict[str, Any]:
    """A per-request error: ``code``, ``message`` and the ``status`` name, no ``details``.

    The real ``details`` are typed objects (``{"@type": ...}``) that the SDK's ``JobError``
    (``details: list[str]``) cannot parse; inventing strings would be a shape the API never
    sends, so they are left out.
    """
    status = "CANCELLED" if code == CANCELLED_CODE else _GEMINI_STATUS.get(code, "UNKNOWN")
    return {"code": code, "message": message, "status": status}


# --------------------------------------------------------------------------------------
# Batches and files


@dataclass(slots=True)
class _Batch:
    id: str
    model: str
    display_name: str | None
    version: str
    created: float
    latency: float
    n: int
    specs: list[_Spec] | None
    file_input: str | None  # files/... when created from a file
    base: str  # absolute URL of the mount prefix, for generated file URIs
    failure: str | None = None  # batch-level failure message (FAILED)
    cancel_at: float | None = None
    cancel_delay: float = 0.0
    cancel_unfinished: str = "error_file"
    final: str | None = None  # SUCCEEDED | CANCELLED | EXPIRED | FAILED once decided
    end_time: float | None = None
    output: dict[str, Any] | None = None
    stats: dict[str, int] = field(default_factory=dict)
    failing: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ledger: LedgerEntry | None = None
    source: bytes | None = None
    """The create's body (inline requests) or the input file's bytes: the requests again,
    for the successor's rules when a routed model's successor answers part of the batch
    (:meth:`GeminiApp._routed_specs`). A reference, not a copy."""

    def start(self) -> float:
        return self.created + PHASE_PENDING * self.latency

    def done_at(self) -> float:
        return self.created + self.latency

    def finished(self, t: float) -> int:
        start, end = self.start(), self.done_at()
        if t < start:
            return 0
        if t >= end:
            return self.n
        return int(self.n * (t - start) / (end - start))


@dataclass(slots=True)
class _Upload:
    display_name: str | None
    mime_type: str
    declared: int | None
    name: str | None
    version: str
    chunks: list[bytes] = field(default_factory=list)
    received: int = 0


class GeminiApp:
    """The Gemini batch-mode protocol app; see the module docstring.

    Parameters
    ----------
    core
        The emulator core that provides the clock, settings and blob storage.
    """

    provider = "gemini"

    def __init__(self, core: EmulatorCore) -> None:
        self.core = core
        warm_in_background(gemini_checks.warm, "gemini")
        self._lock = threading.Lock()
        self._files: dict[str, dict[str, Any]] = {}
        self._uploads: dict[str, _Upload] = {}
        self._batches: dict[str, _Batch] = {}
        self.caches = PromptCaches()
        self._order: list[str] = []
        self._limits = dict(_DEFAULT_LIMITS)

    # ---- App protocol

    def error_response(self, status: int, message: str) -> Response:
        """Return an HTTP error in the Google envelope."""
        return json_response(error_envelope("gemini", status, message), status)

    def reset(self) -> None:
        """Forget all files, uploads and batches (and the implicit cache)."""
        self.caches = PromptCaches()
        with self._lock:
            self._files.clear()
            self._uploads.clear()
            self._batches.clear()
            self._order.clear()

    def configure(self, settings: Mapping[str, object]) -> None:
        """Set ``max_inline_bytes`` or ``max_file_bytes``."""
        self._limits = updated_limits("gemini", self._limits, settings)

    def settings(self) -> dict[str, object]:
        """The current limits."""
        return dict(self._limits)

    def handle(self, request: Request) -> Response:
        """Serve one request below the Gemini mount prefix."""
        try:
            return self._route(request)
        except _Invalid as e:
            body = error_envelope("gemini", e.status, e.message, error_type=e.state)
            return json_response(body, e.status)

    # ---- routing

    def _route(self, request: Request) -> Response:
        parts = [p for p in request.route.split("/") if p]
        method = request.method
        prefix = (
            request.path[: len(request.path) - len(request.route)]
            if request.route != "/"
            else request.path
        )
        if (
            len(parts) >= 2
            and parts[0] == "upload"
            and parts[1] in VERSIONS
            and parts[2:] == ["files"]
        ):
            if method != "POST":
                raise _Invalid(405, f"Method {method} is not allowed for {request.path}")
            if "upload_id" in request.query:
                return self._upload_chunk(request)  # the SDK sends no key here
            self._check_auth(request)
            return self._upload_start(request, prefix, parts[1])
        if len(parts) >= 2 and parts[0] == "download" and parts[1] in VERSIONS:
            self._check_auth(request)
            rest = parts[2:]
            if (
                len(rest) == 2
                and rest[0] == "files"
                and rest[1].endswith(":download")
                and method == "GET"
            ):
                return self._download(rest[1][: -len(":download")])
            raise _Invalid(404, f"Invalid URL ({method} {request.path})", "NOT_FOUND")
        if not parts or parts[0] not in VERSIONS:
            raise _Invalid(
                404, f"Invalid URL ({method} {request.path}): use /v1 or /v1beta", "NOT_FOUND"
            )
        self._check_auth(request)
        ver, rest = parts[0], parts[1:]
        handler: Callable[[], Response] | None = None
        if len(rest) == 2 and rest[0] == "models" and rest[1].endswith(":batchGenerateContent"):
            # A shut-down model Gemini routes is answered by its successor (model_rules),
            # as of the emulator's date at the request (EmulatorCore.day), not the machine's.
            model = self.core.routed_now("gemini", rest[1][: -len(":batchGenerateContent")])
            handler = {"POST": lambda: self._create(request, model, ver)}.get(method)
        elif len(rest) == 2 and rest[0] == "models" and rest[1].endswith(":generateContent"):
            model = self.core.routed_now("gemini", rest[1][: -len(":generateContent")])
            handler = {"POST": lambda: self._generate(request, model, ver)}.get(method)
        elif len(rest) == 2 and rest[0] == "models" and rest[1].endswith(":countTokens"):
            model = self.core.routed_now("gemini", rest[1][: -len(":countTokens")])
            handler = {"POST": lambda: self._count_tokens(request, model, ver)}.get(method)
        elif rest == ["batches"]:
            handler = {"GET": lambda: self._list(request)}.get(method)
        elif len(rest) == 2 and rest[0] == "batches" and rest[1].endswith(":cancel"):
            batch_id = rest[1][: -len(":cancel")]
            handler = {"POST": lambda: self._cancel(batch_id)}.get(method)
        elif len(rest) == 2 and rest[0] == "batches":
            handler = {
                "GET": lambda: json_response(self._view(self._batch(rest[1]), request.base_url)),
                "DELETE": lambda: self._delete_batch(rest[1]),
            }.get(method)
        elif rest == ["files"]:
            handler = {"GET": lambda: self._list_files()}.get(method)
        elif len(rest) == 2 and rest[0] == "files" and rest[1].endswith(":download"):
            handler = {"GET": lambda: self._download(rest[1][: -len(":download")])}.get(method)
        elif len(rest) == 2 and rest[0] == "files":
            handler = {
                "GET": lambda: json_response(self._file(rest[1])),
                "DELETE": lambda: self._delete_file(rest[1]),
            }.get(method)
        else:
            raise _Invalid(404, f"Invalid URL ({method} {request.path})", "NOT_FOUND")
        if handler is None:
            raise _Invalid(405, f"Method {method} is not allowed for {request.path}")
        return handler()

    @staticmethod
    def _check_auth(request: Request) -> None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key") or ""
        if not key.strip():
            msg = (
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API."
            )
            raise _Invalid(403, msg, "PERMISSION_DENIED")
        if key.strip().startswith("invalid"):
            raise _Invalid(
                400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT"
            )

    # ---- files

    def _file_json(self, file_id: str) -> dict[str, Any]:
        with self._lock:
            meta = self._files.get(file_id)
        if meta is None:
            raise _Invalid(
                403,
                f"You do not have permission to access the File {file_id} or it may not exist.",
                "PERMISSION_DENIED",
            )
        return meta

    def _file(self, file_id: str) -> dict[str, Any]:
        return {k: v for k, v in self._file_json(file_id).items() if not k.startswith("_")}

    def _new_file(
        self,
        file_id: str,
        data: bytes,
        *,
        display_name: str | None,
        mime_type: str,
        base: str,
        version: str,
        generated: bool,
    ) -> dict[str, Any]:
        size = self.core.blobs.put("gemini-" + file_id, data)
        now = self.core.clock.now()
        meta: dict[str, Any] = {
            "name": f"files/{file_id}",
            "mimeType": mime_type,
            "sizeBytes": str(size),
            "createTime": _rfc3339(now),
            "updateTime": _rfc3339(now),
            "expirationTime": _rfc3339(now + FILE_TTL_SECONDS),
            "sha256Hash": base64.b64encode(hashlib.sha256(data).hexdigest().encode()).decode(),
            "uri": f"{base}/{version}/files/{file_id}",
            "state": "ACTIVE",
            "source": "GENERATED" if generated else "UPLOADED",
        }
        if display_name is not None:
            meta = {
                "name": meta["name"],
                "displayName": display_name,
                **{k: v for k, v in meta.items() if k != "name"},
            }
        if generated:
            meta["downloadUri"] = f"{base}/download/{version}/files/{file_id}:download?alt=media"
        with self._lock:
            self._files[file_id] = meta
        return meta

    def _upload_start(self, request: Request, prefix: str, version: str) -> Response:
        if request.headers.get("x-goog-upload-protocol", "").lower() != "resumable":
            raise _Invalid(
                400,
                "Only the resumable protocol is supported (X-Goog-Upload-Protocol: resumable).",
            )
        if request.headers.get("x-goog-upload-command", "").lower() != "start":
            raise _Invalid(400, "A resumable upload starts with X-Goog-Upload-Command: start.")
        body = _json_or_400(request)
        file = body.get("file") or {}
        if not isinstance(file, Mapping):
            raise _Invalid(400, "Invalid JSON payload: 'file' must be an object.")
        mime = (
            file.get("mime_type")
            or file.get("mimeType")
            or request.headers.get("x-goog-upload-header-content-type")
            or ""
        )
        if not mime:
            raise _Invalid(400, "The file's mime type is missing: set mime_type.")
        declared_raw = request.headers.get("x-goog-upload-header-content-length") or file.get(
            "size_bytes"
        )
        declared = (
            int(declared_raw) if declared_raw is not None and str(declared_raw).isdigit() else None
        )
        if declared is not None and declared > self._limits["max_file_bytes"]:
            raise _Invalid(
                400,
                f"File too large: {declared} bytes; the limit is {self._limits['max_file_bytes']}.",
            )
        name = file.get("name")
        if isinstance(name, str) and name.startswith("files/"):
            name = name[len("files/") :]
        upload_id = self.core.new_id("", 16)
        with self._lock:
            self._uploads[upload_id] = _Upload(
                display_name=file.get("display_name") or file.get("displayName"),
                mime_type=str(mime),
                declared=declared,
                name=name if isinstance(name, str) and name else None,
                version=version,
            )
        url = (
            f"{request.base_url}{prefix}/upload/{version}/files"
            f"?upload_id={upload_id}&upload_protocol=resumable"
        )
        return Response(
            200,
            {
                "x-goog-upload-url": url,
                "x-goog-upload-status": "active",
                "x-goog-upload-chunk-granularity": str(8 * MB),
                "content-type": "application/json",
            },
            b"{}",
        )

    def _upload_chunk(self, request: Request) -> Response:
        upload_id = request.query["upload_id"]
        with self._lock:
            upload = self._uploads.get(upload_id)
        if upload is None:
            return Response(
                404,
                {"x-goog-upload-status": "final", "content-type": "application/json"},
                _compact(error_envelope("gemini", 404, "No such upload session.")).encode(),
            )
        command = {
            c.strip().lower() for c in request.headers.get("x-goog-upload-command", "").split(",")
        }
        if command == {"query"}:
            return Response(
                200,
                {
                    "x-goog-upload-status": "active",
                    "x-goog-upload-size-received": str(upload.received),
                },
                b"",
            )
        if command == {"cancel"}:
            with self._lock:
                self._uploads.pop(upload_id, None)
            return Response(200, {"x-goog-upload-status": "cancelled"}, b"")
        if "upload" not in command:
            raise _Invalid(
                400,
                "X-Goog-Upload-Command must be 'upload', 'upload, finalize', 'query' or 'cancel'.",
            )
        offset_raw = request.headers.get("x-goog-upload-offset", "")
        if not offset_raw.isdigit() or int(offset_raw) != upload.received:
            return Response(
                400,
                {
                    "x-goog-upload-status": "active",
                    "x-goog-upload-size-received": str(upload.received),
                    "content-type": "application/json",
                },
                _compact(
                    error_envelope(
                        "gemini",
                        400,
                        f"Upload offset {offset_raw!r} does not match the "
                        f"{upload.received} bytes received.",
                    )
                ).encode(),
            )
        upload.chunks.append(request.body)
        upload.received += len(request.body)
        if "finalize" not in command:
            return Response(200, {"x-goog-upload-status": "active"}, b"")
        with self._lock:
            self._uploads.pop(upload_id, None)
        version = upload.version
        data = b"".join(upload.chunks)
        if upload.declared is not None and upload.declared != len(data):
            raise _Invalid(
                400, f"The upload has {len(data)} bytes but {upload.declared} were declared."
            )
        if upload.mime_type.strip().lower() in REFUSED_UPLOAD_TYPES:
            # As the Files API answers it (googleapis/python-genai#1547): the finalize gets
            # an error body instead of {"file": ...}; google-genai 3.6.1 then raises
            # KeyError('file') (files.py ``return_file.json['file']``, #1248, #1590).
            return Response(
                200,
                {"x-goog-upload-status": "final", "content-type": "application/json"},
                _compact(
                    error_envelope(
                        "gemini", 400, f"Unsupported MIME type: {upload.mime_type}"
                    )
                ).encode(),
            )
        prefix = request.path[: len(request.path) - len(request.route)]
        meta = self._new_file(
            upload.name or self.core.new_id("", 6),
            data,
            display_name=upload.display_name,
            mime_type=upload.mime_type,
            base=request.base_url + prefix,
            version=version,
            generated=False,
        )
        body = _compact({"file": meta}).encode()
        return Response(
            200, {"x-goog-upload-status": "final", "content-type": "application/json"}, body
        )

    def _list_files(self) -> Response:
        with self._lock:
            files = [
                {k: v for k, v in f.items() if not k.startswith("_")} for f in self._files.values()
            ]
        files.reverse()
        return json_response({"files": files} if files else {})

    def _delete_file(self, file_id: str) -> Response:
        self._file_json(file_id)
        with self._lock:
            self._files.pop(file_id, None)
        self.core.blobs.delete("gemini-" + file_id)
        return json_response({})

    def _download(self, file_id: str) -> Response:
        meta = self._file_json(file_id)
        if meta.get("source") != "GENERATED":
            raise _Invalid(
                400,
                "Only generated files can be downloaded; this file was uploaded.",
                "INVALID_ARGUMENT",
            )
        try:
            data = self.core.blobs.get("gemini-" + file_id)
        except KeyError as e:
            raise _Invalid(404, f"File files/{file_id} has no content.", "NOT_FOUND") from e
        return Response(200, {"content-type": "application/octet-stream"}, data)

    # ---- batches

    def _create(self, request: Request, model: str, version: str) -> Response:
        _check_model(model, version, "batchGenerateContent", self.core.served_now())
        if len(request.body) > self._limits["max_inline_bytes"]:
            raise _Invalid(
                400,
                f"Request payload size exceeds the limit: {self._limits['max_inline_bytes']} bytes",
            )
        body = _json_or_400(request)
        _known_names(body, _CREATE_FIELDS, "")
        batch = body.get("batch")
        if not isinstance(batch, Mapping):
            raise _Invalid(400, "* BatchGenerateContentRequest.batch: batch is required")
        _known_names(batch, _BATCH_FIELDS, "batch")
        config = batch.get("inputConfig", batch.get("input_config"))
        if not isinstance(config, Mapping):
            raise _Invalid(400, "* GenerateContentBatch.input_config: input_config is required")
        _known_names(config, _INPUT_FIELDS, "batch.input_config")
        file_name = config.get("fileName", config.get("file_name"))
        inline = config.get("requests")
        if (file_name is None) == (inline is None):
            raise _Invalid(400, "* InputConfig: exactly one of file_name or requests must be set")
        display = batch.get("displayName", batch.get("display_name"))
        if display is not None and not isinstance(display, str):
            raise _Invalid(400, "displayName must be a string.")
        model_name = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
        builder = _SpecBuilder(model)
        specs: list[_Spec] = []
        failure: str | None = None
        if inline is not None:
            items = inline.get("requests") if isinstance(inline, Mapping) else None
            if isinstance(inline, Mapping):
                _known_names(inline, {"requests"}, "batch.input_config.requests")
            if not isinstance(items, list) or not items:
                raise _Invalid(400, "* InlinedRequests.requests: at least one request is required")
            check = RequestChecker()
            for i, item in enumerate(items):
                if not isinstance(item, Mapping) or "request" not in item:
                    raise _Invalid(400, f"* requests[{i}].request: request is required")
                where = f"batch.input_config.requests.requests[{i}]"
                _known_names(item, {"request", "metadata"}, where)
                if isinstance(item["request"], Mapping):
                    problem = check(item["request"], where + ".request")
                    if problem is not None:
                        raise _Invalid(400, problem)
                meta = item.get("metadata")
                if meta is not None and not (
                    isinstance(meta, Mapping) and all(isinstance(v, str) for v in meta.values())
                ):
                    raise _Invalid(
                        400, f"* requests[{i}].metadata: metadata values must be strings"
                    )
                try:
                    spec = builder.build(None, item["request"])
                except _Base64Error as e:
                    raise _Invalid(400, f"* requests[{i}].request: {e}") from e
                if meta is not None:
                    spec.metadata = dict(meta)
                    spec.key = meta.get("key")
                specs.append(spec)
        else:
            if not isinstance(file_name, str) or not file_name.startswith("files/"):
                raise _Invalid(400, f"fileName must look like 'files/<id>', got {file_name!r}.")
            file_id = file_name[len("files/") :]
            self._file_json(file_id)
            data = self.core.blobs.get("gemini-" + file_id)
            specs, failure = _plan_file(data, builder)
        source = request.body if inline is not None else data
        now = self.core.clock.now()
        record = _Batch(
            id=self.core.new_id("", 16),
            model=model_name,
            display_name=display,
            version=version,
            created=now,
            latency=self.core.config.latency,
            n=0 if failure else len(specs),
            specs=None if failure else specs,
            file_input=file_name if isinstance(file_name, str) else None,
            base=request.base_url + request.path[: len(request.path) - len(request.route)],
            failure=failure,
            failing=[i for i, s in enumerate(specs) if s.error is not None],
            # Kept only where a routing may come (model_rules.successor): the requests are
            # built again under the successor's rules then; other batches hold no copy.
            source=bytes(source) if model_rules.successor("gemini", model_name) else None,
        )
        with self._lock:
            self._batches[record.id] = record
            self._order.append(record.id)
        if not failure:
            ids = [str(sp.key) for sp in specs]
            keys = [answers.request_key("gemini", model_name, sp.prompt) for sp in specs]
            # Failed requests are not billed (LedgerEntry.unbilled; _finish has the last word).
            record.ledger = self.core.bill(
                "gemini", "batches/" + record.id, ids, keys,
                model=model_name.rsplit("/", 1)[-1], failing=record.failing,
            )  # fmt: skip
        return json_response(self._view(record, request.base_url, state_override="PENDING"))

    # ---- the realtime endpoint: the same answers and rules, at once

    def _generate(self, request: Request, model: str, version: str) -> Response:
        """``POST /{ver}/models/{model}:generateContent``: one GenerateContentResponse.

        The request is checked as an inline batch request is (field names, the model's
        refused parameters and thinking), answered with the same answer a batch gives it,
        and billed at the standard price.
        """
        _check_model(model, version, "generateContent", self.core.served_now())
        body = _json_or_400(request)
        problem = RequestChecker()(body, "")
        if problem is not None:
            raise _Invalid(400, problem)
        try:
            spec = _SpecBuilder(model).build(None, body)
        except _Base64Error as e:
            raise _Invalid(400, str(e)) from e
        if spec.error is not None:
            code, message = spec.error
            raise _Invalid(code, message, _GEMINI_STATUS.get(code, "UNKNOWN"))
        model_name = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
        with self.core.realtime_call():
            rid = self.core.new_id("", 12)
            bare = model_name.rsplit("/", 1)[-1]
            answer, _, _ = _render(spec, bare, rid)
            key = answers.request_key("gemini", model_name, spec.prompt)
            self.core.bill_realtime("gemini", key, bare, _usage(answer))
        return json_response(answer)

    # ---- countTokens: the prompt's tokens as generateContent would bill them, free

    def _count_tokens(self, request: Request, model: str, version: str) -> Response:
        r"""``POST /{ver}/models/{model}:countTokens``: ``{"totalTokens", "promptTokensDetails"}``.

        The body is a ``CountTokensRequest`` (ai.google.dev/api/tokens#method:-models.counttokens):
        ``contents[]`` or ``generateContentRequest`` and no other field -- unlike Vertex AI's
        countTokens, the Gemini API has no top-level ``systemInstruction``, ``tools`` or
        ``generationConfig`` (google-genai 3.6.1 ``_CountTokensConfig_to_mldev`` refuses
        them before sending: "... only supported in Gemini Enterprise Agent Platform mode,
        not in Gemini Developer API mode"), so proto JSON parsing refuses them as unknown
        names (``Unknown name "generationConfig": Cannot find field.``, the 400 any Gemini
        route gives an unknown field). ``contents`` "is ignored when generateContentRequest
        is set" (the same page); a ``generateContentRequest`` needs its own ``model`` and
        ``contents``: the real 400 lists both, ``* CountTokensRequest.generate_content_request
        .contents: contents is not specified\n* CountTokensRequest.generate_content_request
        .model: model is not specified\n`` (googleapis/python-genai#432). The request's fields
        are checked as generateContent checks them (:class:`.RequestChecker`: names, roles,
        empty parts), and the media must be readable to be counted (the same 400s).

        Neither ``contents`` nor ``generateContentRequest`` (or an empty ``contents``): no
        source shows what the API answers (the proto marks ``contents`` optional); the
        emulator refuses it, the strict side, in the wording of the real message above.

        The count is the emulator's ``promptTokenCount`` for the same request at
        generateContent (:meth:`_SpecBuilder.build`: text, media by modality, a response
        schema in ``generateContentRequest.generationConfig``), so the two agree; Google
        staff on the forum: countTokens "accounts for all input parts, system instructions,
        and structured schema tokens in the request" (discuss.ai.google.dev, "Gemini 3.5
        Flash-Lite countTokens: pricing, quota, schema coverage and thinking cap"). What is
        about generating, not reading, is not checked here (markers, thinking, the context
        window: counting a prompt too long for the model is what countTokens is for).
        ``cachedContentTokenCount`` is absent: nothing is cached for a count (implicit
        caching applies to requests served; proto3 JSON leaves out a zero). Not billed
        ("countTokens is free to use and does not consume your generation TPM/RPD quotas",
        the same forum answer; the ledger is untouched) and not a realtime generation (no
        realtime latency or stats).
        """
        _check_model(model, version, "countTokens", self.core.served_now())
        body = _json_or_400(request)
        _known_names(body, _COUNT_FIELDS, "")
        contents = body.get("contents")
        inner = body.get("generateContentRequest", body.get("generate_content_request"))
        if contents is not None and not isinstance(contents, list):
            raise _Invalid(400, "Invalid JSON payload received. 'contents' must be a list.")
        if contents:  # ignored beside generateContentRequest, but parsed like the rest
            problem = RequestChecker()({"contents": contents}, "")
            if problem is not None:
                raise _Invalid(400, problem)
        if inner is not None:
            if not isinstance(inner, Mapping):
                msg = "Invalid JSON payload received. 'generate_content_request' must be an object."
                raise _Invalid(400, msg)
            where = "CountTokensRequest.generate_content_request"
            missing = [
                f"* {where}.{name}: {name} is not specified\n"
                for name in ("contents", "model")
                if not inner.get(name)
            ]
            if missing:
                raise _Invalid(400, "".join(missing))
            problem = RequestChecker()(inner, "generate_content_request")
            if problem is not None:
                raise _Invalid(400, problem)
            counted: Mapping[str, Any] = inner
        elif contents:
            counted = {"contents": contents}
        else:
            raise _Invalid(400, "* CountTokensRequest.contents: contents is not specified\n")
        try:
            spec = _SpecBuilder(model).build(None, counted)
        except _Base64Error as e:
            raise _Invalid(400, str(e)) from e
        if spec.invalid and spec.error is not None:
            raise _Invalid(spec.error[0], spec.error[1])
        return json_response(
            {"totalTokens": spec.prompt_tokens, "promptTokensDetails": _prompt_details(spec)}
        )

    def _batch(self, batch_id: str) -> _Batch:
        with self._lock:
            batch = self._batches.get(batch_id)
        if batch is None:
            raise _Invalid(404, f"Batch batches/{batch_id} not found.", "NOT_FOUND")
        return batch

    def _list(self, request: Request) -> Response:
        raw = request.query.get("pageSize", str(DEFAULT_PAGE_SIZE))
        try:
            size = int(raw)
        except ValueError as e:
            raise _Invalid(400, f"Invalid value at 'page_size' (TYPE_INT32), {raw!r}") from e
        size = DEFAULT_PAGE_SIZE if size <= 0 else min(size, MAX_PAGE_SIZE)
        with self._lock:
            order = listed(self._order, self.core.config.list_order)
        token = request.query.get("pageToken")
        if token:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode()
            except ValueError as e:
                raise _Invalid(400, "Invalid page token.") from e
            order = order[order.index(after) + 1 :] if after in order else []
        page = order[:size]
        out: dict[str, Any] = {
            "operations": [self._view(self._batch(b), request.base_url) for b in page]
        }
        if len(order) > size:
            out["nextPageToken"] = base64.urlsafe_b64encode(page[-1].encode()).decode()
        return json_response(out if page else {})

    def _cancel(self, batch_id: str) -> Response:
        batch = self._batch(batch_id)
        with batch.lock:
            state = self._state(batch, self.core.clock.now())
            if state in ("SUCCEEDED", "FAILED", "EXPIRED", "CANCELLED"):
                raise _Invalid(
                    400,
                    f"Batch batches/{batch_id} is BATCH_STATE_{state}: it cannot be cancelled",
                    "FAILED_PRECONDITION",
                )
            if batch.cancel_at is None:
                batch.cancel_at = self.core.clock.now()
                batch.cancel_delay = self.core.config.cancel_delay
                batch.cancel_unfinished = self.core.config.cancel_unfinished
        return json_response({})

    def _delete_batch(self, batch_id: str) -> Response:
        self._batch(batch_id)
        with self._lock:
            self._batches.pop(batch_id, None)
            self._order.remove(batch_id)
        return json_response({})

    # ---- lifecycle

    def _state(self, batch: _Batch, now: float) -> str:
        """Current state (without prefix); writes the results the first time it is final."""
        if batch.final is not None:
            return batch.final
        start = batch.start()
        if batch.cancel_at is not None:
            if now < batch.cancel_at + batch.cancel_delay:
                return "RUNNING" if batch.cancel_at >= start else "PENDING"
            ran = 0 if batch.failure else batch.finished(batch.cancel_at)
            self._finish(batch, "CANCELLED", ran, batch.cancel_at + batch.cancel_delay)
            return "CANCELLED"
        if batch.failure is not None:
            if now >= start:
                batch.final, batch.end_time = "FAILED", start
                return "FAILED"
            return "PENDING"
        if batch.latency > EXPIRY_SECONDS and now >= batch.created + EXPIRY_SECONDS:
            batch.final, batch.end_time = "EXPIRED", batch.created + EXPIRY_SECONDS
            batch.specs = None  # an expired batch has no results
            return "EXPIRED"
        if now >= batch.done_at():
            self._finish(batch, "SUCCEEDED", batch.n, batch.done_at())
            return "SUCCEEDED"
        return "RUNNING" if now >= start else "PENDING"

    def _finish(self, batch: _Batch, final: str, ran: int, end: float) -> None:
        specs = batch.specs or []
        if batch.ledger is not None and final != "SUCCEEDED":
            batch.ledger.ran = ran
        entries: list[tuple[dict[str, Any], _Spec]] = []
        ok = failed = 0
        since = self.core.gone_since("gemini", batch.model, batch.created)
        gone = batch.n if since is None else min(ran, batch.finished(since))
        # A model Google routes to a successor from its shutdown date (model_rules.SCHEDULED:
        # "requests to gemini-2.5-flash [are routed] to gemini-3.5-flash-lite, billed at the
        # new model's rates", ai.google.dev/gemini-api/docs/deprecations as read in
        # November 2026): the requests of a batch sent before the date that run after it
        # are answered by the successor (its modelVersion, its parameter and token rules)
        # and billed at its prices (EmulatorCore.routed_since); those run before keep the
        # model asked for. The page makes no exception for a batch queued before the date.
        model = batch.model.rsplit("/", 1)[-1]
        routing = self.core.routed_since("gemini", batch.model, batch.created)
        switch, successor, alt = batch.n, model, specs
        if routing is not None and specs:
            switch = min(ran, batch.finished(routing[0]))
            successor = routing[1].rsplit("/", 1)[-1]
            if switch < ran:
                alt = self._routed_specs(batch, successor) or specs
                if batch.ledger is not None:
                    batch.ledger.routed = (switch, successor)
        usage: list[tuple[int, int, int] | None] = [None] * len(specs)
        for i, spec in enumerate(specs):
            entry: dict[str, Any] = {}
            answering = model
            if i >= switch and i < ran and gone > i:
                spec, answering = alt[i], successor
            if gone <= i < ran and spec.error is None:
                # Its model was shut down before it ran (EmulatorCore.gone_since). Google's
                # deprecations page: "Once a model is 'shutdown', it is completely turned off,
                # and the endpoint is no longer available" (ai.google.dev/gemini-api/docs/
                # deprecations); it does not say what becomes of a batch still queued then, so
                # the strict reading: the request fails as a request naming that model does
                # (_check_model's 404 NOT_FOUND), not billed. A model Google routes to a
                # successor is served, not gone.
                entry["error"] = _error_json(404, _not_found(batch.model, batch.version,
                                                             "generateContent"))
                failed += 1
            elif i >= ran:
                if batch.cancel_unfinished != "error_file":
                    continue
                entry["error"] = _error_json(
                    CANCELLED_CODE, "cancelled: the batch was cancelled before this request ran."
                )
                failed += 1
            elif spec.error is not None:
                entry["error"] = _error_json(*spec.error)
                if spec.marker == answers.MARKER_DETAILS:
                    entry["error"]["details"] = [
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "EMULATED_FAILURE",
                            "domain": "generativelanguage.googleapis.com",
                            "metadata": {"emulator": "details"},
                        }
                    ]
                failed += 1
            else:
                cached = self.caches.gemini(answering, spec.signature, spec.prompt_tokens, end)
                entry["response"], _, _ = _render(
                    spec, answering, f"{batch.id[:10]}{i:06x}", cached
                )
                usage[i] = _usage(entry["response"])
                ok += 1
            entries.append((entry, spec))
        if batch.ledger is not None:
            batch.ledger.usage = usage
            # Each request billed at the prices of the day it ran: the ``today`` setting in
            # force then (positions as the routing's switch is found, batch.finished).
            # The setting in force at its creation holds from the first request on.
            batch.ledger.days = tuple(
                (batch.finished(since) if since > batch.created else 0, day)
                for since, day in self.core.days_since(batch.created)
            )
            # Billed: the requests that ran and were answered. Not the failed ones (their
            # own error, a routed successor's refusal, a shutdown that overtook them):
            # LedgerEntry.unbilled.
            batch.ledger.unbilled = frozenset(
                i for i in range(min(ran, len(specs))) if usage[i] is None
            )
        batch.stats = {
            "requestCount": batch.n,
            "successfulRequestCount": ok,
            "failedRequestCount": failed,
            "pendingRequestCount": 0,
        }
        if batch.file_input is None:
            items = []
            for entry, spec in entries:
                if spec.metadata is not None:
                    entry["metadata"] = spec.metadata
                items.append(entry)
            batch.output = {"inlinedResponses": {"inlinedResponses": items}}
        else:
            lines = []
            for entry, spec in entries:
                line: dict[str, Any] = {"key": spec.key} if spec.key is not None else {}
                line.update(entry)
                lines.append(_compact(line))
            file_id = f"batch-{batch.id}"
            self._new_file(
                file_id,
                ("\n".join(lines) + "\n").encode() if lines else b"",
                display_name=f"batch-{batch.id}-output",
                mime_type="application/jsonl",
                base=batch.base,
                version=batch.version,
                generated=True,
            )
            batch.output = {"responsesFile": f"files/{file_id}"}
        batch.specs = batch.source = None
        batch.final, batch.end_time = final, end

    def _routed_specs(self, batch: _Batch, model: str) -> list[_Spec] | None:
        """The batch's requests built again under ``model``'s rules (its successor's).

        Its thinking, output limit, context window and refused parameters
        (:class:`_SpecBuilder`): the requests are the same, the model answering them is
        not. ``None`` when the source is gone (never: it is kept until the batch ends).
        """
        if batch.source is None:
            return None
        builder = _SpecBuilder(model)
        if batch.file_input is not None:
            specs, _ = _plan_file(batch.source, builder)
            return specs if len(specs) == batch.n else None
        body = json.loads(batch.source)
        config = body["batch"]
        config = config.get("inputConfig", config.get("input_config"))
        out: list[_Spec] = []
        for item in config["requests"]["requests"]:
            try:
                spec = builder.build(None, item["request"])
            except _Base64Error as e:  # refused at creation already: not reached
                spec = _SpecBuilder._failed(None, str(e))
            meta = item.get("metadata")
            if meta is not None:
                spec.metadata = dict(meta)
                spec.key = meta.get("key")
            out.append(spec)
        return out if len(out) == batch.n else None

    def _view(
        self, batch: _Batch, base_url: str, state_override: str | None = None
    ) -> dict[str, Any]:
        now = self.core.clock.now()
        if state_override is not None:
            state = state_override  # a fresh batch: not advanced by this view
        else:
            with batch.lock:
                state = self._state(batch, now)
        type_base = f"type.googleapis.com/google.ai.generativelanguage.{batch.version}"
        name = f"batches/{batch.id}"
        if batch.final is not None:
            stats = batch.stats or {"requestCount": batch.n, "pendingRequestCount": batch.n}
        else:
            ran = batch.finished(now) if state == "RUNNING" else 0
            ran = min(ran, batch.finished(batch.cancel_at)) if batch.cancel_at is not None else ran
            stats = {"requestCount": batch.n, "pendingRequestCount": batch.n - ran}
            if ran:
                bad = bisect.bisect_left(batch.failing, ran)
                stats.update(successfulRequestCount=ran - bad, failedRequestCount=bad)
        meta: dict[str, Any] = {
            "@type": f"{type_base}.GenerateContentBatch",
            "model": batch.model,
            "name": name,
        }
        if batch.display_name is not None:
            meta["displayName"] = batch.display_name
        meta["createTime"] = _rfc3339(batch.created)
        meta["updateTime"] = _rfc3339(batch.end_time if batch.end_time is not None else now)
        if batch.end_time is not None:
            meta["endTime"] = _rfc3339(batch.end_time)
        meta["batchStats"] = {k: str(v) for k, v in stats.items()}
        meta["state"] = _STATE_PREFIX + state
        out: dict[str, Any] = {"name": name, "metadata": meta}
        if batch.output is not None:
            meta["output"] = batch.output
        if batch.final is not None:
            out["done"] = True
            if batch.output is not None:
                out["response"] = {
                    "@type": f"{type_base}.GenerateContentBatchOutput",
                    **batch.output,
                }
            elif batch.final == "FAILED":
                out["error"] = {"code": 3, "message": batch.failure or "The batch failed."}
            elif batch.final == "EXPIRED":
                out["error"] = {
                    "code": 4,
                    "message": "The batch expired: it was not done within 48 hours.",
                }
        return out


_CREATE_FIELDS: Final = frozenset({"batch"})
# CountTokensRequest's body fields (ai.google.dev/api/tokens; ``model`` is the path's).
_COUNT_FIELDS: Final = frozenset({"contents", "generateContentRequest"})
_BATCH_FIELDS: Final = frozenset(
    {
        "name",
        "displayName",
        "model",
        "inputConfig",
        "output",
        "createTime",
        "endTime",
        "updateTime",
        "batchStats",
        "state",
        "priority",
    }
)
_INPUT_FIELDS: Final = frozenset({"fileName", "requests"})
_LINE_FIELDS: Final = frozenset({"key", "request", "metadata"})
_KEY_IN_LINE: Final = re.compile(rb'"key"\s*:\s*"((?:[^"\\]|\\.)*)"')


def _check_model(model: str, version: str, method: str, served: Callable[[str, str], bool]) -> None:
    """Refuse a model the Gemini API does not serve, with its 404.

    ``served``: whether a model is served as of the request's creation
    (``EmulatorCore.served_now``: the emulator's date, not the machine's).

    The real message and status: ``{"code": 404, "message": "models/gemini-2.0-flash-live-001
    is not found for API version v1beta, or is not supported for generateContent. Call
    ListModels to see the list of available models and their supported methods.",
    "status": "NOT_FOUND"}`` (google/adk-python issue 200); another provider's model gets
    the same (valentinfrlch/ha-llmvision issue 114, ``models/gpt-4o-mini``); the method
    named is the one called (``StreamGenerateContent``: ChatGPTNextWeb/NextChat issue 4699).
    """
    if served("gemini", model):
        return
    raise _Invalid(404, _not_found(model, version, method), "NOT_FOUND")


def _not_found(model: str, version: str, method: str) -> str:
    """The 404 message of a model the Gemini API does not serve (:func:`_check_model`)."""
    name = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
    return (
        f"{name} is not found for API version {version}, or is not supported for {method}. "
        "Call ListModels to see the list of available models and their supported methods."
    )


def _unknown(obj: Mapping[str, Any], known: frozenset[str] | set[str]) -> str | None:
    """The first key of ``obj`` that is not a known field in either spelling."""
    for name in obj:
        if name not in known and snake(name) not in {snake(k) for k in known}:
            return name
    return None


def _known_names(obj: Mapping[str, Any], known: frozenset[str] | set[str], where: str) -> None:
    name = _unknown(obj, known)
    if name is not None:
        raise _Invalid(400, unknown_name(name, where))


def _line_key(raw: bytes) -> str | None:
    """The ``key`` of an unparseable line, when it can be read off the text."""
    found = _KEY_IN_LINE.search(raw)
    if found is None:
        return None
    try:
        key = json.loads(b'"' + found.group(1) + b'"')
    except ValueError:
        return None
    return key if isinstance(key, str) else None


def _plan_file(data: bytes, builder: _SpecBuilder) -> tuple[list[_Spec], str | None]:
    """Reduce a JSONL input file to specs: one per non-blank line, an error entry if bad."""
    specs: list[_Spec] = []
    check = RequestChecker()
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as e:
            msg = f"Invalid JSON payload received. {e}."
            specs.append(_SpecBuilder._failed(_line_key(raw), msg))
            continue
        if not isinstance(obj, dict):
            msg = (
                "Invalid JSON payload received. Each line must be a JSON object with "
                "'key' and 'request'."
            )
            specs.append(_SpecBuilder._failed(None, msg))
            continue
        key = obj.get("key")
        key = key if isinstance(key, str) else None
        extra = _unknown(obj, _LINE_FIELDS)
        problem = None
        if extra is not None:
            problem = unknown_name(extra, "")
        elif isinstance(obj.get("request"), Mapping):
            problem = check(obj["request"], "request")
        if problem is not None:
            spec = _SpecBuilder._failed(key, problem)
        elif "request" not in obj:
            spec = _SpecBuilder._failed(key, "* request: request is required")
        else:
            try:
                spec = builder.build(key, obj["request"])
            except _Base64Error as e:
                spec = _SpecBuilder._failed(key, str(e))
            spec.key = key
        specs.append(spec)
    if not specs:
        return [], "The input file has no valid GenerateContentRequest lines (no lines)."
    return specs, None
