"""OpenAI Batch API (files + batches) as the emulator speaks it, per provider-wire.md §1.

Mounted at ``/openai/v1`` and ``/v1``. Every route needs ``Authorization: Bearer <key>``
(any non-empty key; a key starting with ``sk-invalid`` is refused with
``invalid_api_key``).

Routes (below the mount prefix)
-------------------------------
``POST /files`` (multipart ``purpose`` + ``file``), ``GET /files``, ``GET /files/{id}``,
``DELETE /files/{id}``, ``GET /files/{id}/content``; ``POST /batches``, ``GET /batches``
(``limit``, ``after``; newest first), ``GET /batches/{id}``, ``POST /batches/{id}/cancel``;
and, for real-time use, ``POST /chat/completions`` and ``POST /responses``.

Batch lifecycle
---------------
A batch created with latency ``L`` (the ``latency`` setting when it was created) is
``validating`` for the first 10 % of ``L``, ``in_progress`` until 90 %, ``finalizing``
until 100 %, then ``completed``; requests finish in file order, evenly over the
``in_progress`` span. The answer to every request is decided by its content when the
batch is created, so results are deterministic. With ``L = 0`` the create call answers
``validating`` and the first retrieve answers ``completed``. ``L`` over 24 h makes the
batch ``expired`` at 24 h (simulated clock), with the unfinished requests in the error
file as ``batch_expired``, like the real API.

Cancel
------
``POST /batches/{id}/cancel`` answers ``cancelling``; after the ``cancel_delay`` setting
the batch is ``cancelled``. The requests that had finished when the cancel arrived go to
the output file (or the error file if they failed). The real API documents only that
"partial results (if any)" are in the output file; what it does with requests that never
ran is not documented. By default (setting ``cancel_unfinished="error_file"``) the
emulator writes one error-file line per such request, shaped like the documented
``batch_expired`` line::

    {"id": "batch_req_...", "custom_id": "...", "response": null,
     "error": {"code": "batch_cancelled", "message": "..."}}

and counts them in ``request_counts.failed``. With ``cancel_unfinished="omit"`` they
appear in no file and are not counted as failed, so ``completed + failed < total``: a
client must treat a ``custom_id`` missing from both files of a cancelled batch as
cancelled. Cancelling a ``completed``/``failed``/``expired`` batch is a 400; cancelling a
``cancelling``/``cancelled`` one returns it unchanged.

Input validation
----------------
At creation the input file is checked like the real service does. A violation makes the
batch end ``failed`` (after the validating phase) with ``errors.data[]`` entries
``{code, line (1-based), message, param}``; at most 100 entries are reported. Codes:
``empty_file``, ``file_too_large`` (over 200 MB), ``too_many_tasks`` (over 50,000
requests), ``invalid_json_line``, ``missing_required_parameter`` (``custom_id``, ``url``,
``body``, ``body.model``), ``duplicate_custom_id``, ``invalid_method``, ``url_mismatch``
(line ``url`` differs from the batch ``endpoint``), ``model_mismatch`` (more than one model),
``stream_unsupported`` (``body.stream`` true). Errors in a request's *body* (e.g. no
``messages``) are not batch failures: that request gets an error-file line with
``status_code`` 400, as the real API reports them at execution time (not billed, as no
error-file line is: :attr:`~.server.LedgerEntry.unbilled`). So do malformed
``image_url`` / ``file`` parts: a data URL that is not base64, a MIME type that is not an
image (or a ``file_data`` that is not ``data:application/pdf;base64,``), invalid base64,
bytes that do not match the MIME type, a ``file_data`` without ``filename``. Every body is
also validated like the real API (:mod:`batchata_df.emulator.openai_checks`): against the
SDK param types with unknown keys forbidden (``unknown_parameter``), missing keys
(``missing_required_parameter``), wrong JSON types (``invalid_type``), value ranges
(``decimal_above_max_value``, ``integer_below_min_value``, ...), more than 4 ``stop``
sequences on Chat Completions (``array_above_max_length``), roles and other
enumerations (``invalid_value``), a ``name`` on every ``json_schema`` format, the strict
structured-output schema subset (``invalid_json_schema``) and the word "json" in the
messages for ``json_object``. A model OpenAI does not serve
(:func:`~batchata_df.emulator.model_rules.serves`: genai-prices' OpenAI list, fine-tunes
of a listed model, ``emulator-unknown-model`` never) fails the batch in validation with
``model_not_found`` (``param`` ``body.model``, the first line naming it): "The provided
model '...' is not supported by the Batch API."; a real-time call naming it is a 404
``model_not_found``. A model that is not a chat model (:data:`NOT_CHAT`: realtime and image
models) gets a 404 on Chat Completions, a line of a batch too ("This is not a chat model
...", ``param`` ``model``).

HTTP errors use the OpenAI envelope ``{"error": {message, type, param, code}}``: unknown
ids are 404, bad ``endpoint``/``completion_window``/``metadata`` are 400.

Usage
-----
Prompt tokens are what OpenAI bills for the messages: their text's exact BPE count in the
model's vocabulary plus the chat framing of the OpenAI cookbook's "How to count tokens with
tiktoken" (3 per message plus its role's and name's tokens, 3 to prime the reply:
:func:`_message_tokens`; the Responses API's ``instructions`` are one more message), plus
the images and PDFs (``media``: image tiles, 1,000 per PDF page; 85 per web image URL or
file id) and the JSON schema (``answers.count_tokens``, ``len // 4``); completion tokens
cover the answer text (``answers.count_tokens``). ``cached_tokens`` is what the prompt cache served
(:mod:`.prompt_cache`): the longest exact prefix, of at least 1,024 tokens in 128-token
steps, shared with an earlier request of the same model under the same
``prompt_cache_key`` (0 without a key: nothing routes the requests to one cache). Reasoning models
(:mod:`.model_rules`) spend ``model_rules.THOUGHT_TOKENS`` per effort first, inside
``max_completion_tokens``: they are in ``completion_tokens`` and in
``completion_tokens_details.reasoning_tokens``, and thinking that uses the whole limit
leaves an empty answer with ``finish_reason: "length"``. Parameters a model generation
refuses (sampling parameters while reasoning, ``max_tokens`` on reasoning models,
``reasoning_effort`` values it does not take, or on models that do not reason) are
``unsupported_parameter`` / ``unsupported_value`` error lines. The batch's ``usage`` sums
the successful requests and is filled in once the batch reaches a final status.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import queue
import re
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast

from batchata_df.emulator import answers, media, model_rules, openai_checks
from batchata_df.emulator.openai_checks import BodyChecker
from batchata_df.emulator.prompt_cache import PromptCaches
from batchata_df.emulator.sdk_params import warm_in_background
from batchata_df.emulator.server import (
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

__all__ = ["OpenAIApp", "create_app", "parse_multipart"]

DAY: Final = 86_400
MB: Final = 1024 * 1024
PHASE_VALIDATING: Final = 0.1  # fraction of the latency spent validating
PHASE_FINALIZING: Final = 0.9  # fraction at which the batch starts finalizing
MAX_REPORTED_ERRORS: Final = 100
IMAGE_TOKENS: Final = 85
REFUSAL_TEXT: Final = "I'm sorry, but I can't help with that request."

CHAT: Final = "/v1/chat/completions"
RESPONSES: Final = "/v1/responses"
SUPPORTED_ENDPOINTS: Final = (CHAT, RESPONSES)
KNOWN_ENDPOINTS: Final = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
FILE_PURPOSES: Final = (
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
)
_DEFAULT_LIMITS: Final[dict[str, int]] = {
    "max_requests": 50_000,
    "max_file_bytes": 200 * MB,
    "max_upload_bytes": 512 * MB,
    # The per-model "enqueued tokens" rate limit: input tokens of a model's batches that
    # have not finished yet. A batch that would go over it fails validation with
    # token_limit_exceeded. Real limits depend on the organization's tier.
    "max_enqueued_tokens": 10**12,
}

_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_quote = json.JSONEncoder(ensure_ascii=False).encode  # str -> JSON string literal, fast path


def create_app(core: EmulatorCore) -> OpenAIApp:
    """Build the OpenAI app for ``core`` (the server's provider-module entry point)."""
    return OpenAIApp(core)


# --------------------------------------------------------------------------------------
# Multipart


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, memoryview]]:
    r"""Split a ``multipart/form-data`` body into ``{name: (filename, data)}``.

    ``data`` is a zero-copy view into ``body``, so a 200 MB upload is not copied.

    Raises
    ------
    ValueError
        No boundary, or a malformed body.

    Examples
    --------
    >>> body = (b'--XX\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
    ...         b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
    ...         b'Content-Type: application/jsonl\r\n\r\n{}\n\r\n--XX--\r\n')
    >>> parts = parse_multipart(body, "multipart/form-data; boundary=XX")
    >>> bytes(parts["purpose"][1]), parts["file"][0], bytes(parts["file"][1])
    (b'batch', 'a.jsonl', b'{}\n')
    """
    boundary = None
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        msg = "multipart body without a boundary"
        raise ValueError(msg)
    delim = b"--" + boundary.encode("latin-1")
    view = memoryview(body)
    parts: dict[str, tuple[str | None, memoryview]] = {}
    pos = body.find(delim)
    if pos < 0:
        msg = "multipart boundary not found in the body"
        raise ValueError(msg)
    while True:
        start = pos + len(delim)
        if body[start : start + 2] == b"--":
            return parts
        if body[start : start + 2] == b"\r\n":
            start += 2
        head_end = body.find(b"\r\n\r\n", start)
        if head_end < 0:
            msg = "malformed multipart part headers"
            raise ValueError(msg)
        head = body[start:head_end].decode("utf-8", "replace")
        data_start = head_end + 4
        nxt = body.find(b"\r\n" + delim, data_start)
        if nxt < 0:
            msg = "unterminated multipart part"
            raise ValueError(msg)
        name, filename = _disposition(head)
        if name is not None:
            parts[name] = (filename, view[data_start:nxt])
        pos = nxt + 2


def _disposition(head: str) -> tuple[str | None, str | None]:
    for header in head.split("\r\n"):
        key, _, value = header.partition(":")
        if key.strip().lower() != "content-disposition":
            continue
        name = filename = None
        for item in value.split(";")[1:]:
            k, _, v = item.strip().partition("=")
            v = v.strip().strip('"')
            if k.lower() == "name":
                name = v
            elif k.lower() == "filename":
                filename = v
        return name, filename
    return None, None


# --------------------------------------------------------------------------------------
# Request lines -> compact specs (decided at batch creation)


@dataclass(slots=True)
class _Spec:
    """What the emulator keeps of one request: enough to render its answer later."""

    custom_id: str
    model: str
    prompt: str
    prompt_tokens: int
    mode: str  # "text" | "schema" | "json_object"
    gen: answers.AnswerGenerator | None
    max_tokens: int | None
    marker: str | None
    error: tuple[int, str | None, str, str | None] | None  # status, code, message, param
    echo: str  # Responses API: pre-encoded fields echoed back from the request
    reasoning: int = 0  # thinking tokens the model spends (model_rules.THOUGHT_TOKENS)
    cache_key: str | None = None  # prompt_cache_key
    signature: str = ""  # the prompt as the cache compares it (only with a cache key)


def _signature(messages: object, instructions: object = None) -> str:
    """The request's content in order, binary parts as digests (prefix comparison)."""
    out: list[str] = [instructions] if isinstance(instructions, str) else []
    if isinstance(messages, str):
        return "\n".join([*out, messages])
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else message
        if isinstance(content, str):
            out.append(content)
            continue
        for part in content if isinstance(content, list) else []:
            text = part.get("text") if isinstance(part, dict) else part
            if isinstance(text, str):
                out.append(text)
            else:
                raw = json.dumps(part, sort_keys=True).encode()
                out.append("\x00" + hashlib.blake2b(raw, digest_size=8).hexdigest())
    return "\n".join(out)


def _parts_text(content: object) -> tuple[str, int]:
    """Text of a message ``content`` (str or list of parts) and tokens for non-text parts."""
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        return "", 0
    texts: list[str] = []
    extra = 0
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict):
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
            else:
                extra += _media_tokens(part)
    return "\n".join(texts), extra


def _media_tokens(part: Mapping[str, Any]) -> int:
    """Tokens of a non-text chat part; :class:`media.MediaError` where OpenAI gives a 400.

    ``image_url`` data URLs must be base64 PNG/JPEG/GIF/WebP matching their bytes; ``file``
    parts need ``file_id``, or ``file_data`` (a ``data:application/pdf;base64,`` URL) with a
    ``filename``. Web image URLs and file ids are not fetched (``IMAGE_TOKENS``).
    """
    kind = part.get("type")
    if kind == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else None
        if not isinstance(url, str) or not url:
            msg = "Missing required parameter: 'image_url.url'."
            raise media.MediaError(msg)
        if not url.startswith("data:"):
            return IMAGE_TOKENS
        head, _, data = url.partition(",")
        mime = head[5:].removesuffix(";base64")
        if not head.endswith(";base64"):
            msg = "Invalid image_url: a data URL must be base64 ('data:image/png;base64,...')."
            raise media.MediaError(msg)
        if mime not in media.IMAGE_TYPES:
            msg = (
                f"Invalid MIME type {mime!r} in image_url. Only image types are supported: "
                + ", ".join(media.IMAGE_TYPES)
            )
            raise media.MediaError(msg)
        width, height = media.check_image(media.decode_base64(data), mime)
        return media.image_tokens("openai", width, height)
    if kind == "file":
        spec = part.get("file")
        if not isinstance(spec, dict):
            msg = "Missing required parameter: 'file'."
            raise media.MediaError(msg)
        if isinstance(spec.get("file_id"), str):
            return IMAGE_TOKENS
        file_data = spec.get("file_data")
        if not isinstance(file_data, str):
            msg = "Missing required parameter: 'file.file_data' (or 'file.file_id')."
            raise media.MediaError(msg)
        if not isinstance(spec.get("filename"), str) or not spec["filename"]:
            msg = "Missing required parameter: 'file.filename'."
            raise media.MediaError(msg)
        prefix = "data:application/pdf;base64,"
        if not file_data.startswith(prefix):
            msg = (
                "Invalid file data: expected a base64-encoded data URL with an application/pdf "
                "MIME type (e.g. 'data:application/pdf;base64,SGVsbG8sIFdvcmxkIQ==')."
            )
            raise media.MediaError(msg)
        pages = media.check_pdf(media.decode_base64(file_data[len(prefix) :]))
        return pages * media.PDF_PAGE_TOKENS["openai"]
    return IMAGE_TOKENS


def _messages_text(messages: list[Any], model: str) -> tuple[str, int, int]:
    """The messages' text, tokens of their non-text parts, and tokens of their text.

    The text tokens are what OpenAI bills for the messages (:func:`_message_tokens`), the
    reply priming excluded.
    """
    if len(messages) == 1:  # the common shape, kept cheap: one user message, text content
        only = messages[0]
        if type(only) is dict and len(only) == 2:
            content, role = only.get("content"), only.get("role")
            if type(content) is str and type(role) is str:
                count = model_rules.openai_counter(model)
                framing = model_rules.openai_short_tokens(model, role)
                return content, 0, model_rules.OPENAI_TOKENS_PER_MESSAGE + framing + count(content)
    texts: list[str] = []
    extra = tokens = 0
    for message in messages:
        if isinstance(message, dict):
            text, more = _parts_text(message.get("content"))
            texts.append(text)
            extra += more
            tokens += _message_tokens(model, message, text)
        elif isinstance(message, str):
            texts.append(message)
            tokens += model_rules.OPENAI_TOKENS_PER_MESSAGE + model_rules.openai_counter(model)(
                message
            )
    return "\n".join(texts), extra, tokens


def _message_tokens(model: str, message: Mapping[str, Any], text: str) -> int:
    """What OpenAI bills for one chat message's text, its framing included.

    OpenAI cookbook, "How to count tokens with tiktoken" (``num_tokens_from_messages``):
    ``tokens_per_message`` (3), plus the BPE tokens of every value of the message (its role
    and content; its text parts here, images and files apart), plus ``name``'s tokens and
    one more when it has one. Roles and system prompts repeat across requests: their counts
    are cached.
    """
    role = message.get("role")
    tokens = model_rules.OPENAI_TOKENS_PER_MESSAGE
    if isinstance(role, str):
        tokens += model_rules.openai_short_tokens(model, role)
    name = message.get("name")
    if isinstance(name, str):
        tokens += model_rules.openai_short_tokens(model, name) + model_rules.OPENAI_TOKENS_PER_NAME
    if role in ("system", "developer"):
        return tokens + model_rules.openai_short_tokens(model, text)
    return tokens + model_rules.openai_counter(model)(text)


# o1-pro, o3-pro, gpt-5(.x)-pro; the codex models (alvinunreal/tmuxai#82 for gpt-5-codex,
# HeyPuter/puter#2110 for gpt-5.1-codex-mini, aaif-goose/goose#2564 for codex-mini-latest).
_RESPONSES_ONLY = re.compile(r"^(o1-pro|o3-pro|gpt-5(\.\d+)?-(pro|codex)|codex-mini)(-|$)")
#: models that are not chat models: the Realtime API's (a WebSocket/WebRTC API) and the
#: Images API's. The search-preview models are chat models (Chat Completions only) and are
#: served; whether the Batch API takes them is not documented where we could find it.
NOT_CHAT = re.compile(r"^(gpt-realtime|gpt-4o(-mini)?-realtime|gpt-image-|chatgpt-image-)")


class _SpecBuilder:
    """Turns request bodies into :class:`_Spec`; remembers the last schema/echo to reuse."""

    def __init__(
        self,
        endpoint: str,
        *,
        replay: bool = False,
        served: Callable[[str, str], bool],
    ) -> None:
        self.endpoint = endpoint
        self.replay = replay  # a batch accepted earlier: its model was served (_plan)
        # A batch's file is validated in the background: as of the settings when it was
        # sent; real time asks now (EmulatorCore.served_now: the emulator's date, not the
        # machine's).
        self.served = served
        self._last_schema: object = None
        self._last_gen: answers.AnswerGenerator | None = None
        self._last_echo: dict[str, object] | None = None
        self._last_echo_text = ""
        self._check = BodyChecker(endpoint)

    def _generator(self, schema: Mapping[str, Any]) -> answers.AnswerGenerator:
        # Lines of one batch almost always share a schema: a dict comparison is far
        # cheaper than the canonical-JSON cache key.
        if self._last_gen is None or schema != self._last_schema:
            self._last_gen = answers.generator_for(schema)
            self._last_schema = schema
        return self._last_gen

    def build(self, custom_id: str, body: dict[str, Any]) -> _Spec:
        """Reduce one request body to a :class:`_Spec` (images billed by its model)."""
        model = body.get("model")
        with media.billing_model(model if isinstance(model, str) else ""):
            return self._build(custom_id, body)

    def _build(self, custom_id: str, body: dict[str, Any]) -> _Spec:
        model = body.get("model")
        model = model if isinstance(model, str) else ""
        invalid: tuple[int, str | None, str, str | None] | None = self._check(body)
        if invalid is None and not self.replay and not self.served("openai", model):
            # Real time only: a batch naming this model fails validation first (_plan).
            # OpenAI answers 404 ``model_not_found`` with ``param`` null (BerriAI/litellm
            # issues 7368/7369, feder-cr/invisible_playwright_mcp issue 889: "The model
            # `gpt-4o` does not exist or you do not have access to it.").
            invalid = (404, "model_not_found",
                       f"The model `{model}` does not exist or you do not have access to it.",
                       None)  # fmt: skip
        if invalid is None and self.endpoint == CHAT and _RESPONSES_ONLY.match(model):
            # o1-pro, o3-pro, gpt-5(.x)-pro, codex: "available in the Responses API only".
            invalid = (
                404,
                None,
                "This model is only supported in v1/responses and not in v1/chat/completions.",
                "model",
            )
        if invalid is None and self.endpoint == CHAT and NOT_CHAT.match(model):
            # 404, invalid_request_error, param model: OpenAI's answer to a realtime model on
            # this endpoint (SciSharp/BotSharp#959; danny-avila/LibreChat#5326,
            # gpt-4o-realtime-preview; Mintplex-Labs/anything-llm#2551). The image models get
            # the same answer here, OpenAI's wording for every non-chat model (it was seen for
            # realtime and completion models; no record of gpt-image-1's own was found).
            invalid = (
                404,
                None,
                "This is not a chat model and thus not supported in the v1/chat/completions "
                "endpoint. Did you mean to use v1/completions?",
                "model",
            )
        if invalid is None and self.endpoint == CHAT:
            invalid = model_rules.openai_refusal(model, body)
        if invalid is not None:
            return _Spec(custom_id, model, "", 0, "text", None, None, None, invalid, "")
        if self.endpoint == "/v1/responses":
            spec = self._responses(custom_id, model, body)
            reasoning = body.get("reasoning")
            effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
            knob = {} if effort is None else {"reasoning_effort": effort}
        else:
            spec = self._chat(custom_id, model, body)
            knob = body
        effort = model_rules.openai_effort(model, knob)
        if effort is not None and spec.error is None:
            spec.reasoning = model_rules.THOUGHT_TOKENS[effort]
        key = body.get("prompt_cache_key")
        if isinstance(key, str) and spec.error is None:
            spec.cache_key = key
            if self.endpoint == "/v1/responses":
                spec.signature = _signature(body.get("input"), body.get("instructions"))
            else:
                spec.signature = _signature(body.get("messages"))
        return spec

    def _chat(self, custom_id: str, model: str, body: dict[str, Any]) -> _Spec:
        messages = body.get("messages")
        error: tuple[int, str, str, str | None] | None = None
        prompt, extra, text_tokens = "", 0, 0
        if not isinstance(messages, list) or not messages:
            error = (
                400,
                "missing_required_parameter",
                "Missing required parameter: 'messages'.",
                "messages",
            )
        else:
            try:
                prompt, extra, text_tokens = _messages_text(messages, model)
            except media.MediaError as e:
                error = (400, "invalid_value", str(e), "messages")
        mode, gen = "text", None
        fmt = body.get("response_format")
        if isinstance(fmt, dict):
            kind = fmt.get("type")
            if kind == "json_schema":
                spec = fmt.get("json_schema")
                schema = spec.get("schema") if isinstance(spec, dict) else None
                if isinstance(schema, dict):
                    mode, gen = "schema", self._generator(schema)
                elif error is None:
                    msg = "Missing required parameter: 'response_format.json_schema.schema'."
                    error = (400, "missing_required_parameter", msg, "response_format.json_schema")
            elif kind == "json_object":
                mode = "json_object"
                if error is None and "json" not in prompt.lower():
                    msg = (
                        "'messages' must contain the word 'json' in some form, to use "
                        "'response_format' of type 'json_object'."
                    )
                    error = (400, "invalid_value", msg, "messages")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        return self._spec(
            custom_id, model, prompt, extra, text_tokens, mode, gen, limit, error, ""
        )

    def _responses(self, custom_id: str, model: str, body: dict[str, Any]) -> _Spec:
        error: tuple[int, str, str, str | None] | None = None
        raw = body.get("input")
        count = model_rules.openai_counter(model)
        per_message = model_rules.OPENAI_TOKENS_PER_MESSAGE
        prompt, extra, text_tokens = "", 0, 0
        if isinstance(raw, str):  # one user message
            prompt = raw
            text_tokens = per_message + model_rules.openai_short_tokens(model, "user") + count(raw)
        elif isinstance(raw, list) and raw:
            try:
                prompt, extra, text_tokens = _messages_text(raw, model)
            except media.MediaError as e:
                prompt, extra, text_tokens = "", 0, 0
                error = (400, "invalid_value", str(e), "input")
        else:
            error = (
                400,
                "missing_required_parameter",
                "Missing required parameter: 'input'.",
                "input",
            )
        instructions = body.get("instructions")
        if isinstance(instructions, str):  # a system (developer) message first
            prompt = instructions + "\n" + prompt
            text_tokens += _message_tokens(model, {"role": "developer"}, instructions)
        mode, gen = "text", None
        text_cfg = body.get("text")
        fmt = text_cfg.get("format") if isinstance(text_cfg, dict) else None
        if isinstance(fmt, dict):
            if fmt.get("type") == "json_schema":
                schema = fmt.get("schema")
                if isinstance(schema, dict) and isinstance(fmt.get("name"), str):
                    mode, gen = "schema", self._generator(schema)
                elif error is None:
                    msg = (
                        "Missing required parameter: 'text.format.schema' (and 'text.format.name')."
                    )
                    error = (400, "missing_required_parameter", msg, "text.format")
            elif fmt.get("type") == "json_object":
                mode = "json_object"
                if error is None and "json" not in prompt.lower():
                    msg = (
                        "Response input messages must contain the word 'json' in some form "
                        "to use 'text.format' of type 'json_object'."
                    )
                    error = (400, "invalid_value", msg, "input")
        limit = body.get("max_output_tokens")
        echo = self._echo(body, text_cfg, instructions, limit)
        return self._spec(
            custom_id, model, prompt, extra, text_tokens, mode, gen, limit, error, echo
        )

    def _echo(
        self, body: dict[str, Any], text_cfg: object, instructions: object, limit: object
    ) -> str:
        fields: dict[str, object] = {
            "instructions": instructions,
            "max_output_tokens": limit if isinstance(limit, int) else None,
            "temperature": body.get("temperature", 1.0),
            "top_p": body.get("top_p", 1.0),
            "text": text_cfg if isinstance(text_cfg, dict) else {"format": {"type": "text"}},
            "metadata": body.get("metadata") or {},
        }
        if fields != self._last_echo:
            self._last_echo = fields
            self._last_echo_text = _compact(fields)[1:-1]
        return self._last_echo_text

    def _spec(
        self,
        custom_id: str,
        model: str,
        prompt: str,
        extra: int,
        text_tokens: int,
        mode: str,
        gen: answers.AnswerGenerator | None,
        limit: object,
        error: tuple[int, str, str, str | None] | None,
        echo: str,
    ) -> _Spec:
        schema_tokens = gen.schema_tokens if gen is not None else 0
        # What OpenAI bills: the messages' exact BPE count with their framing, the reply's
        # priming (model_rules.OPENAI_TOKENS_PER_REPLY), media and the schema.
        tokens = text_tokens + model_rules.OPENAI_TOKENS_PER_REPLY + extra + schema_tokens
        window = model_rules.context_window("openai", model)
        if error is None and window is not None and tokens > window:
            # bytedance/deer-flow#310 quotes this refusal (param, code) on a gpt-4o class model.
            error = (400, "context_length_exceeded", f"This model's maximum context length is "
                     f"{window} tokens. However, your messages resulted in {tokens} tokens. "
                     "Please reduce the length of the messages.", "messages")  # fmt: skip
        max_tokens = (
            limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None
        )
        marker = answers.find_marker(prompt)
        if marker in (answers.MARKER_ERROR, answers.MARKER_DETAILS) and error is None:
            status = answers.marker_status(prompt)
            if status == 500:
                error = (
                    500,
                    "server_error",
                    "The server had an error while processing your request.",
                    None,
                )
            else:
                error = (
                    status,
                    "invalid_request",
                    f"Emulated error (HTTP {status}) for this request.",
                    None,
                )
        return _Spec(custom_id, model, prompt, tokens, mode, gen, max_tokens, marker, error, echo)


# --------------------------------------------------------------------------------------
# Rendering answers. Output lines are assembled as text with f-strings: at 50,000 lines
# per batch, building and encoding nested dicts per line would dominate the emulator.


def _answer(spec: _Spec) -> tuple[str, str, bool, int]:
    """Return (content as a JSON literal, refusal as a JSON literal, truncated, tokens).

    Reasoning comes first and counts against the limit: what it leaves is the answer's.
    """
    seed = answers.answer_seed(spec.prompt)
    marker = spec.marker
    gen = spec.gen
    limit = spec.max_tokens
    if limit is not None and spec.reasoning:
        if spec.reasoning >= limit:
            return '""', "null", True, 0  # thinking used the whole budget
        limit -= spec.reasoning
    if marker is None and gen is not None:
        text, quoted, tokens = gen.pooled(seed)
        if limit is None or tokens <= limit:
            return quoted, "null", False, tokens
    elif marker == answers.MARKER_REFUSAL:
        return "null", _REFUSAL_Q, False, answers.count_tokens(REFUSAL_TEXT)
    if spec.mode == "schema" and gen is not None:
        if marker == answers.MARKER_INVALID:
            text = _compact(gen.invalid(seed))
        elif marker == answers.MARKER_OVERFLOW:
            text = gen.overflowed(seed)
        else:
            text = gen.pooled(seed)[0]
    elif spec.mode == "json_object":
        text = _compact({"answer": answers.fake_text(spec.prompt, seed)})
    else:
        text = answers.fake_text(spec.prompt, seed)
    truncated = False
    if marker in _CUT_MARKERS:
        text = _cut(text, spec.mode != "text")
        truncated = True
    if limit is not None and answers.count_tokens(text) > limit:
        text = _cut(text[: limit * 4], spec.mode != "text", keep=True)
        truncated = True
    tokens = answers.count_tokens(text)
    if marker == answers.MARKER_TRUNCATE and limit is not None:
        # Cut by the output limit: the whole limit was generated and is billed (usage
        # completion_tokens = max_completion_tokens with finish_reason "length"; openai
        # 3.57 chat_completion.py: "length" if the maximum number of tokens specified in
        # the request was reached; reasoning case: community.openai.com/t/1378362, 100
        # reasoning tokens of max_completion_tokens=100 and "" as the answer).
        tokens = limit
    return _quote(text), "null", truncated, min(tokens, limit) if limit is not None else tokens


def _cut(text: str, must_break_json: bool, *, keep: bool = False) -> str:
    cut = text if keep else text[: max(1, len(text) // 2)]
    if must_break_json:
        try:
            json.loads(cut)
        except ValueError:
            return cut
        return "{" + cut[:-1] if len(cut) > 1 else "{"
    return cut


_REFUSAL_Q: Final = _quote(REFUSAL_TEXT)
# Markers that stop the answer part-way; filter and recitation as OpenAI's content filter
# (finish_reason "content_filter", openai 3.57 ChatCompletion Choice), context as a cut.
_CUT_MARKERS: Final = frozenset(
    {answers.MARKER_TRUNCATE, answers.MARKER_FILTER, answers.MARKER_RECITATION,
     answers.MARKER_CONTEXT}
)
_FILTER_MARKERS: Final = frozenset({answers.MARKER_FILTER, answers.MARKER_RECITATION})
_CHAT_USAGE_DETAILS: Final = (
    '"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
    '"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}'
)
_INCOMPLETE: Final = '{"reason":"max_output_tokens"}'


def _body(
    spec: _Spec, rid: str, created: int, model_q: str, endpoint: str, cached: int = 0
) -> tuple[str, int]:
    """JSON text of a successful response body, and its completion tokens."""
    content, refusal, truncated, ct = _answer(spec)
    filtered = spec.marker in _FILTER_MARKERS
    finish = "content_filter" if filtered else ("length" if truncated else "stop")
    incomplete = '{"reason":"content_filter"}' if filtered else _INCOMPLETE
    pt = spec.prompt_tokens
    rt = spec.reasoning if spec.max_tokens is None else min(spec.reasoning, spec.max_tokens)
    ct += rt  # reasoning is billed inside the completion tokens
    if endpoint == CHAT:
        details = _CHAT_USAGE_DETAILS.replace('"reasoning_tokens":0', f'"reasoning_tokens":{rt}')
        if cached:
            details = details.replace('"cached_tokens":0', f'"cached_tokens":{cached}')
        return (
            f'{{"id":"chatcmpl-{rid}","object":"chat.completion","created":{created},'
            f'"model":{model_q},"choices":[{{"index":0,"message":{{"role":"assistant",'
            f'"content":{content},"refusal":{refusal},"annotations":[]}},"logprobs":null,'
            f'"finish_reason":"{finish}"}}],"usage":{{'
            f'"prompt_tokens":{pt},"completion_tokens":{ct},"total_tokens":{pt + ct},'
            f'{details}}},"service_tier":"default","system_fingerprint":"fp_emulator"}}'
        ), ct
    status = "incomplete" if truncated else "completed"
    if content != "null":
        part = f'{{"type":"output_text","annotations":[],"logprobs":[],"text":{content}}}'
    else:
        part = f'{{"type":"refusal","refusal":{refusal}}}'
    return (
        f'{{"id":"resp_{rid}","object":"response","created_at":{created},"status":"{status}",'
        f'"completed_at":{"null" if truncated else created},"error":null,'
        f'"incomplete_details":{incomplete if truncated else "null"},{spec.echo},'
        f'"model":{model_q},"output":[{{"id":"msg_{rid}","type":"message","status":"{status}",'
        f'"role":"assistant","content":[{part}]}}],"parallel_tool_calls":true,'
        '"tool_choice":"auto","tools":[],"truncation":"disabled","service_tier":"default",'
        f'"store":true,"usage":{{"input_tokens":{pt},"input_tokens_details":{{'
        f'"cached_tokens":{cached},"cache_write_tokens":0}},"output_tokens":{ct},'
        f'"output_tokens_details":{{"reasoning_tokens":{rt}}},"total_tokens":{pt + ct}}}}}'
    ), ct


def _error_body(error: tuple[int, str | None, str, str | None]) -> str:
    status, code, message, param = error
    return _compact(error_envelope("openai", status, message, code=code, param=param))


@dataclass(slots=True)
class _Rendered:
    out: list[str]
    err: list[str]
    input_tokens: int = 0
    output_tokens: int = 0


def _render(
    specs: list[_Spec],
    ran: int,
    key: str,
    created: int,
    endpoint: str,
    cached: list[int] | None = None,
) -> _Rendered:
    """Output and error lines for the first ``ran`` requests (in file order).

    ``cached`` is each request's ``cached_tokens`` (decided once per batch, in file order).
    """
    result = _Rendered([], [])
    out = result.out
    err = result.err
    model_q = _quote(specs[0].model) if specs else '""'  # one model per batch file
    input_tokens = output_tokens = 0
    for i in range(ran):
        spec = specs[i]
        rid = f"{key}{i:06x}"
        if spec.error is not None:
            err.append(
                f'{{"id":"batch_req_{rid}","custom_id":{_quote(spec.custom_id)},"response":'
                f'{{"status_code":{spec.error[0]},"request_id":"req_{rid}",'
                f'"body":{_error_body(spec.error)}}},"error":null}}'
            )
            continue
        body, ct = _body(spec, rid, created, model_q, endpoint, cached[i] if cached else 0)
        input_tokens += spec.prompt_tokens
        output_tokens += ct
        out.append(
            f'{{"id":"batch_req_{rid}","custom_id":{_quote(spec.custom_id)},"response":'
            f'{{"status_code":200,"request_id":"req_{rid}","body":{body}}},"error":null}}'
        )
    result.input_tokens = input_tokens
    result.output_tokens = output_tokens
    return result


def _gone_lines(specs: list[_Spec], start: int, stop: int, key: str) -> list[str]:
    """Error lines of requests ``start..stop`` whose model was shut down before they ran.

    OpenAI's deprecations page says that at the shutdown "the model or endpoint will no
    longer be accessible" (developers.openai.com/api/docs/deprecations) and does not say
    what becomes of a batch still queued then: the strict reading is taken, each request
    not yet run fails as a request to a shut-down model does, 404 ``model_not_found``
    "The model `text-davinci-003` has been deprecated, learn more here:
    https://platform.openai.com/docs/deprecations" (hkjang/node-red-contrib-openai issue 7,
    orhanerday/open-ai issue 135: type ``invalid_request_error``, ``param`` null), in the
    error file as any failed request, with no usage and not billed. Fine-tunes go with
    their base model (:func:`~batchata_df.emulator.model_rules.retired`), answered as
    OpenAI answers a fine-tune of a shut-down base: "The model `ft:...` does not exist or
    you do not have access to it." (langchain-ai/twitter-finetune issue 2).
    """
    lines = []
    for i in range(start, stop):
        spec, rid = specs[i], f"{key}{i:06x}"
        if spec.error is not None:  # failed anyway, with its own error
            error = spec.error
        elif spec.model.startswith("ft:"):
            error = (404, "model_not_found", f"The model `{spec.model}` does not exist or you "
                     "do not have access to it.", None)
        else:
            error = (404, "model_not_found", f"The model `{spec.model}` has been deprecated, "
                     "learn more here: https://platform.openai.com/docs/deprecations", None)
        lines.append(
            f'{{"id":"batch_req_{rid}","custom_id":{_quote(spec.custom_id)},"response":'
            f'{{"status_code":{error[0]},"request_id":"req_{rid}",'
            f'"body":{_error_body(error)}}},"error":null}}'
        )
    return lines


def _unrun_lines(specs: list[_Spec], ran: int, key: str, code: str, message: str) -> list[str]:
    tail = f',"response":null,"error":{{"code":"{code}","message":{_quote(message)}}}}}'
    return [
        f'{{"id":"batch_req_{key}{i:06x}","custom_id":{_quote(specs[i].custom_id)}{tail}'
        for i in range(ran, len(specs))
    ]


# --------------------------------------------------------------------------------------
# Batches


@dataclass(slots=True)
class _Files:
    """Result files written ahead of time for the batch's normal completion."""

    output_id: str | None
    output_bytes: int
    error_id: str | None
    error_bytes: int
    completed: int
    failed: int
    usage: tuple[int, int]


@dataclass(slots=True)
class _Batch:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created: float
    latency: float
    limits: dict[str, int]
    served: Callable[[str, str], bool]  # as of its creation (EmulatorCore.served_now)
    epoch: int  # EmulatorCore.epoch at its creation: billed only if no reset came since
    output_expires: int | None = None
    # Filled in by the preparation worker, then `prepared` is set.
    prepared: threading.Event = field(default_factory=threading.Event)
    model: str | None = None
    n: int = 0
    errors: list[dict[str, object]] | None = None
    failing: list[int] = field(default_factory=list)  # indices that end in the error file
    ahead: _Files | None = None
    # Cancellation, and the final state once result files are registered.
    cancel_at: float | None = None
    cancel_delay: float = 0.0
    cancel_unfinished: str = "error_file"
    final: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    usage: tuple[int, int] = (0, 0)
    enqueued: int = 0
    """Input tokens this batch holds against the enqueued-token limit until it ends."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    ledger: LedgerEntry | None = None
    cached: list[int] | None = None
    """Each request's ``cached_tokens``, decided in file order when the batch is prepared."""

    @property
    def key(self) -> str:
        """Hex stem for per-request ids (``batch_req_<key><index>``)."""
        return self.id[len("batch_") :][:16]

    @property
    def answer_time(self) -> int:
        """The ``created`` timestamp written into answers: when the batch completes."""
        return int(self.created + min(self.latency, DAY))

    def times(self) -> tuple[float, float, float]:
        span = self.latency
        return (
            self.created + PHASE_VALIDATING * span,
            self.created + PHASE_FINALIZING * span,
            self.created + span,
        )

    def finished(self, t: float) -> int:
        """Number of requests (in file order) that have run by time ``t``."""
        start, end, _ = self.times()
        if t < start:
            return 0
        if t >= end:
            return self.n
        return int(self.n * (t - start) / (end - start))


def _usage_json(input_tokens: int, output_tokens: int) -> dict[str, object]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


class _Invalid(Exception):
    """An HTTP-level client error, turned into the OpenAI envelope."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


class OpenAIApp:
    """The OpenAI protocol app; see the module docstring.

    Batch creation only stores the request; a background worker validates the input
    file and writes the result files ahead of time (in creation order), so ``create``
    answers at once and the work overlaps with the client's. A retrieve that needs the
    outcome waits for the worker.

    Parameters
    ----------
    core
        The emulator core that provides the clock, settings and blob storage.
    """

    provider = "openai"

    def __init__(self, core: EmulatorCore) -> None:
        self.core = core
        warm_in_background(openai_checks.warm, "openai")
        self._lock = threading.Lock()
        self._files: dict[str, dict[str, Any]] = {}
        self._batches: dict[str, _Batch] = {}
        self._order: list[str] = []
        self._limits = dict(_DEFAULT_LIMITS)
        self.caches = PromptCaches()
        self._queue: queue.SimpleQueue[_Batch] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

    # ---- App protocol

    def error_response(self, status: int, message: str) -> Response:
        """Return an HTTP error in the OpenAI envelope."""
        code = {429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}.get(status)
        response = json_response(error_envelope("openai", status, message, code=code), status)
        return self._with_request_id(response)

    def _with_request_id(self, response: Response) -> Response:
        """Every real answer carries ``x-request-id`` (the SDK exposes it as ``_request_id``)."""
        response.headers.setdefault("x-request-id", self.core.new_id("req_", 16))
        return response

    def reset(self) -> None:
        """Forget all files and batches (and the prompt cache)."""
        self.caches = PromptCaches()
        with self._lock:
            self._files.clear()
            self._batches.clear()
            self._order.clear()

    def configure(self, settings: Mapping[str, object]) -> None:
        """Set ``max_requests``, ``max_file_bytes`` or ``max_upload_bytes``."""
        self._limits = updated_limits("openai", self._limits, settings)

    def settings(self) -> dict[str, object]:
        """The current limits."""
        return dict(self._limits)

    def handle(self, request: Request) -> Response:
        """Serve one request below the OpenAI mount prefix."""
        auth = self._check_auth(request)
        if auth is not None:
            return self._with_request_id(auth)
        try:
            response = self._route(request)
        except _Invalid as e:
            response = json_response(
                error_envelope("openai", e.status, e.message, param=e.param, code=e.code), e.status
            )
        return self._with_request_id(response)

    # ---- routing

    def _route(self, request: Request) -> Response:
        parts = [p for p in request.route.split("/") if p]
        method = request.method
        handler: Callable[[], Response] | None = None
        if parts == ["files"]:
            handler = {
                "POST": lambda: self._upload(request),
                "GET": lambda: self._list_files(request),
            }.get(method)
        elif len(parts) == 2 and parts[0] == "files":
            handler = {
                "GET": lambda: json_response(self._file(parts[1])),
                "DELETE": lambda: self._delete_file(parts[1]),
            }.get(method)
        elif len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
            handler = {"GET": lambda: self._content(parts[1])}.get(method)
        elif parts == ["batches"]:
            handler = {
                "POST": lambda: self._create(request),
                "GET": lambda: self._list(request),
            }.get(method)
        elif len(parts) == 2 and parts[0] == "batches":
            handler = {"GET": lambda: json_response(self._view(self._batch(parts[1])))}.get(method)
        elif len(parts) == 3 and parts[0] == "batches" and parts[2] == "cancel":
            handler = {"POST": lambda: self._cancel(parts[1])}.get(method)
        elif parts in (["chat", "completions"], ["responses"]):
            endpoint = "/v1/" + "/".join(parts)
            handler = {"POST": lambda: self._realtime(request, endpoint)}.get(method)
        else:
            raise _Invalid(404, f"Invalid URL ({method} {request.path})")
        if handler is None:
            raise _Invalid(405, f"Method {method} is not allowed for {request.path}")
        return handler()

    @staticmethod
    def _check_auth(request: Request) -> Response | None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            msg = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            return json_response(error_envelope("openai", 401, msg), 401)
        if key.strip().startswith("sk-invalid"):
            msg = "Incorrect API key provided."  # never echo the key itself
            return json_response(error_envelope("openai", 401, msg, code="invalid_api_key"), 401)
        return None

    # ---- files

    def _file(self, file_id: str) -> dict[str, Any]:
        with self._lock:
            meta = self._files.get(file_id)
        if meta is None:
            raise _Invalid(404, f"No such File object: {file_id}", param="id")
        return meta

    def _store(self, data: bytes | memoryview) -> tuple[str, int]:
        file_id = self.core.new_id("file-")
        return file_id, self.core.blobs.put("openai-" + file_id, data)

    def _register(
        self, file_id: str, size: int, filename: str, purpose: str, expires_in: int | None
    ) -> dict[str, Any]:
        now = int(self.core.clock.now())
        meta: dict[str, Any] = {
            "id": file_id,
            "object": "file",
            "bytes": size,
            "created_at": now,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": now + (expires_in if expires_in is not None else 30 * DAY),
            "status_details": None,
        }
        with self._lock:
            self._files[file_id] = meta
        return meta

    def _upload(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise _Invalid(400, "Expected a multipart/form-data body with 'purpose' and 'file'.")
        limit = self._limits["max_upload_bytes"]
        if len(request.body) > limit:
            raise _Invalid(413, f"File is too large: the limit is {limit} bytes.")
        try:
            form = parse_multipart(request.body, content_type)
        except ValueError as e:
            raise _Invalid(400, f"Could not parse the multipart body: {e}") from e
        if "file" not in form:
            raise _Invalid(400, "Missing required parameter: 'file'.", param="file")
        if "purpose" not in form:
            raise _Invalid(400, "Missing required parameter: 'purpose'.", param="purpose")
        purpose = bytes(form["purpose"][1]).decode("utf-8", "replace")
        if purpose not in FILE_PURPOSES:
            msg = f"{purpose!r} is not one of {list(FILE_PURPOSES)!r} - 'purpose'"
            raise _Invalid(400, msg, param="purpose")
        expires_in = None
        if "expires_after[seconds]" in form:
            try:
                expires_in = int(bytes(form["expires_after[seconds]"][1]))
            except ValueError as e:
                msg = "Invalid type for 'expires_after.seconds': expected an integer."
                raise _Invalid(400, msg, param="expires_after.seconds", code="invalid_type") from e
        expires_in = _check_expires_after(form, expires_in)
        filename, data = form["file"]
        if purpose == "batch" and not (filename or "").lower().endswith(".jsonl"):
            msg = "Invalid file format for Batch API. Must be .jsonl"
            raise _Invalid(400, msg, param="file", code="invalid_file_format")
        file_id, size = self._store(data)
        meta = self._register(file_id, size, filename or "upload.jsonl", purpose, expires_in)
        return json_response(meta)

    def _list_files(self, request: Request) -> Response:
        purpose = request.query.get("purpose")
        with self._lock:
            files = [f for f in self._files.values() if purpose is None or f["purpose"] == purpose]
        files.reverse()
        return json_response(
            {
                "object": "list",
                "data": files,
                "first_id": files[0]["id"] if files else None,
                "last_id": files[-1]["id"] if files else None,
                "has_more": False,
            }
        )

    def _delete_file(self, file_id: str) -> Response:
        self._file(file_id)
        with self._lock:
            self._files.pop(file_id, None)
        self.core.blobs.delete("openai-" + file_id)
        return json_response({"id": file_id, "object": "file", "deleted": True})

    def _content(self, file_id: str) -> Response:
        self._file(file_id)
        try:
            data = self.core.blobs.get("openai-" + file_id)
        except KeyError as e:
            raise _Invalid(404, f"No such File object: {file_id}", param="id") from e
        return Response(200, {"content-type": "application/octet-stream"}, data)

    # ---- batches

    def _create(self, request: Request) -> Response:
        try:
            body = json_body(request)
        except ValueError as e:
            raise _Invalid(400, f"We could not parse the JSON body of your request: {e}") from e
        for key in body:
            if key not in _CREATE_KEYS:
                msg = f"Unrecognized request argument supplied: {key}"
                raise _Invalid(400, msg, param=key, code="unknown_parameter")
        for key in ("input_file_id", "endpoint", "completion_window"):
            if key not in body:
                raise _Invalid(
                    400,
                    f"Missing required parameter: '{key}'.",
                    param=key,
                    code="missing_required_parameter",
                )
        window = body["completion_window"]
        if window != "24h":
            msg = f"Invalid value: {window!r}. Supported values are: '24h'."
            raise _Invalid(400, msg, param="completion_window")
        endpoint = body["endpoint"]
        if endpoint not in KNOWN_ENDPOINTS:
            msg = f"Invalid value: {endpoint!r}. Supported values are: {list(KNOWN_ENDPOINTS)!r}."
            raise _Invalid(400, msg, param="endpoint")
        if endpoint not in SUPPORTED_ENDPOINTS:
            msg = (
                f"The emulator does not implement batches for {endpoint!r}; "
                f"use one of {list(SUPPORTED_ENDPOINTS)!r}."
            )
            raise _Invalid(400, msg, param="endpoint")
        metadata = _check_metadata(body.get("metadata"))
        output_expires = _check_output_expires(body.get("output_expires_after"))
        file_id = body["input_file_id"]
        if not isinstance(file_id, str):
            raise _Invalid(400, "input_file_id must be a string.", param="input_file_id")
        meta = self._file(file_id)
        if meta["purpose"] != "batch":
            purpose = meta["purpose"]
            msg = f"File {file_id} has purpose {purpose!r}; a batch input needs purpose 'batch'."
            raise _Invalid(400, msg, param="input_file_id")
        batch = _Batch(
            id=self.core.new_id("batch_", 16),
            endpoint=endpoint,
            input_file_id=file_id,
            completion_window=window,
            metadata=metadata,
            created=self.core.clock.now(),
            latency=self.core.config.latency,
            limits=dict(self._limits),
            output_expires=output_expires,
            served=self.core.served_now(),
            epoch=self.core.epoch,
        )
        with self._lock:
            self._batches[batch.id] = batch
            self._order.append(batch.id)
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._work, name="emulator-openai-batches", daemon=True
                )
                self._worker.start()
        self._queue.put(batch)
        # A fresh batch always answers "validating", as the real service does.
        return json_response(self._view(batch, status_override="validating"))

    def _work(self) -> None:
        while True:
            batch = self._queue.get()
            with self._lock:
                dropped = batch.id not in self._batches  # by a reset: skip the work
            try:
                if not dropped:
                    self._prepare(batch)
            except Exception as e:  # an emulator bug: fail the batch visibly, keep serving
                traceback.print_exc(file=sys.stderr)
                message = f"emulator internal error: {type(e).__name__}: {e}"
                batch.errors = [
                    {"code": "internal_error", "line": None, "message": message, "param": None}
                ]
            finally:
                batch.prepared.set()

    def _prepare(self, batch: _Batch) -> None:
        """Validate the input file and write the result files for a normal completion."""
        data = self.core.blobs.get("openai-" + batch.input_file_id)
        specs, errors, model = _plan(data, batch.endpoint, batch.limits, served=batch.served)
        del data
        batch.model = model
        if errors:
            batch.errors = errors
            return
        batch.n = len(specs)
        batch.failing = [i for i, s in enumerate(specs) if s.error is not None]
        now = self.core.clock.now()
        batch.cached = [
            0 if sp.error is not None or sp.cache_key is None
            else self.caches.openai(sp.model, sp.cache_key, sp.signature, sp.prompt_tokens, now)
            for sp in specs
        ]  # fmt: skip
        done = _render(
            specs, len(specs), batch.key, batch.answer_time, batch.endpoint, batch.cached
        )
        limit = batch.limits.get("max_enqueued_tokens", 10**12)
        held = self._enqueued(model, exclude=batch)
        if held + done.input_tokens > limit:
            batch.errors = [
                {
                    "code": "token_limit_exceeded",
                    "line": None,
                    "message": (
                        f"Enqueued token limit reached for {model} in organization "
                        f"org-emulator. Limit: {limit:,} enqueued tokens. Please try "
                        "submitting your requests again later."
                    ),
                    "param": None,
                }
            ]
            return
        batch.enqueued = done.input_tokens
        batch.ledger = self.core.bill(
            "openai",
            batch.id,
            [sp.custom_id for sp in specs],
            [answers.request_key("openai", sp.model, sp.prompt) for sp in specs],
            failing=batch.failing,  # error-file lines are not billed (LedgerEntry.unbilled)
            epoch=batch.epoch,  # a reset while it was prepared: not billed after it
        )
        out_id = err_id = None
        out_bytes = err_bytes = 0
        if done.out:
            out_id, out_bytes = self._store(_jsonl(done.out))
        if done.err:
            err_id, err_bytes = self._store(_jsonl(done.err))
        batch.ahead = _Files(
            out_id,
            out_bytes,
            err_id,
            err_bytes,
            len(done.out),
            len(done.err),
            (done.input_tokens, done.output_tokens),
        )

    def _enqueued(self, model: str | None, *, exclude: _Batch) -> int:
        """Input tokens of ``model``'s batches that are accepted and not finished yet."""
        now = self.core.clock.now()
        with self._lock:
            batches = [self._batches[i] for i in self._order if i in self._batches]
        held = 0
        for b in batches:
            if b is exclude or b.model != model or b.errors or b.enqueued == 0:
                continue
            if b.final is not None or b.cancel_at is not None or now >= b.times()[2]:
                continue
            held += b.enqueued
        return held

    def _batch(self, batch_id: str) -> _Batch:
        with self._lock:
            batch = self._batches.get(batch_id)
        if batch is None:
            raise _Invalid(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return batch

    def _list(self, request: Request) -> Response:
        raw_limit = request.query.get("limit", "20")
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            raise _Invalid(400, f"Invalid 'limit': {raw_limit!r}; expected 1..100.", param="limit")
        with self._lock:
            order = listed(self._order, self.core.config.list_order)
        after = request.query.get("after")
        if after:
            try:
                order = order[order.index(after) + 1 :]
            except ValueError:
                order = []
        page = order[:limit]
        data = [self._view(self._batch(batch_id)) for batch_id in page]
        return json_response(
            {
                "object": "list",
                "data": data,
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
                "has_more": len(order) > limit,
            }
        )

    def _cancel(self, batch_id: str) -> Response:
        batch = self._batch(batch_id)
        with batch.lock:
            status = self._status(batch, self.core.clock.now())
            if status in ("completed", "failed", "expired"):
                msg = f"Cannot cancel a batch with status '{status}'."
                raise _Invalid(400, msg, param="batch_id")
            if batch.cancel_at is None:
                batch.cancel_at = self.core.clock.now()
                batch.cancel_delay = self.core.config.cancel_delay
                batch.cancel_unfinished = self.core.config.cancel_unfinished
        override = None if batch.final else "cancelling"
        return json_response(self._view(batch, status_override=override))

    # ---- lifecycle

    def _status(self, batch: _Batch, now: float) -> str:
        """Current status; registers the result files the first time a final one is seen.

        Call with ``batch.lock`` held.
        """
        if batch.final is not None:
            return batch.final
        start, fin, done = batch.times()
        if not batch.prepared.is_set():
            if now < start and batch.cancel_at is None:
                return "validating"
            batch.prepared.wait()
        if batch.errors:
            if batch.cancel_at is not None:
                return "cancelling" if now < batch.cancel_at + batch.cancel_delay else "cancelled"
            return "failed" if now >= start else "validating"
        if batch.cancel_at is not None:
            if now < batch.cancel_at + batch.cancel_delay:
                return "cancelling"
            self._finish(batch, "cancelled", batch.finished(batch.cancel_at))
            return "cancelled"
        if batch.latency > DAY and now >= batch.created + DAY:
            self._finish(batch, "expired", batch.finished(batch.created + DAY))
            return "expired"
        if now >= done:
            self._finish(batch, "completed", batch.n)
            return "completed"
        if now >= fin:
            return "finalizing"
        return "in_progress" if now >= start else "validating"

    def _finish(self, batch: _Batch, final: str, ran: int) -> None:
        """Register the result files of a batch whose first ``ran`` requests were run.

        Requests its model's shutdown came before (:meth:`EmulatorCore.gone_since`) fail
        ``model_not_found`` (:func:`_gone_lines`), not billed.
        """
        ahead = batch.ahead
        batch.ahead = None
        gone = ran
        if batch.model is not None:
            since = self.core.gone_since("openai", batch.model, batch.created)
            gone = ran if since is None else min(ran, batch.finished(since))
        if final == "completed" and ahead is not None and gone == ran:
            out_id, out_bytes, err_id, err_bytes = (
                ahead.output_id,
                ahead.output_bytes,
                ahead.error_id,
                ahead.error_bytes,
            )
            completed, failed, usage = ahead.completed, ahead.failed, ahead.usage
        else:
            # Cancelled or expired: rarely on the hot path, so the requests are planned
            # again from the input file (deterministically) rather than kept in memory.
            for stale in (ahead.output_id, ahead.error_id) if ahead is not None else ():
                if stale is not None:
                    self.core.blobs.delete("openai-" + stale)
            data = self.core.blobs.get("openai-" + batch.input_file_id)
            specs = _plan(data, batch.endpoint, batch.limits, replay=True, served=batch.served)[0]
            part = _render(
                specs, gone, batch.key, batch.answer_time, batch.endpoint, batch.cached
            )
            part.err.extend(_gone_lines(specs, gone, ran, batch.key))
            if batch.ledger is not None and gone < ran:
                batch.ledger.unbilled |= frozenset(range(gone, ran))
            completed, failed = len(part.out), len(part.err)
            if ran < len(specs) and (final == "expired" or batch.cancel_unfinished == "error_file"):
                if final == "expired":
                    code = "batch_expired"
                    message = (
                        "This request could not be executed before the completion window expired."
                    )
                else:
                    code = "batch_cancelled"
                    message = "This request was not executed because the batch was cancelled."
                part.err.extend(_unrun_lines(specs, ran, batch.key, code, message))
                failed += len(specs) - ran
            out_id = err_id = None
            out_bytes = err_bytes = 0
            if part.out:
                out_id, out_bytes = self._store(_jsonl(part.out))
            if part.err:
                err_id, err_bytes = self._store(_jsonl(part.err))
            usage = (part.input_tokens, part.output_tokens)
        if out_id is not None:
            self._register(
                out_id, out_bytes, f"{batch.id}_output.jsonl", "batch_output", batch.output_expires
            )
        if err_id is not None:
            self._register(
                err_id, err_bytes, f"{batch.id}_error.jsonl", "batch_output", batch.output_expires
            )
        batch.output_file_id = out_id
        batch.error_file_id = err_id
        batch.counts = {"total": batch.n, "completed": completed, "failed": failed}
        batch.usage = usage
        batch.final = final
        if batch.ledger is not None and final != "completed":
            batch.ledger.ran = ran

    def _view(self, batch: _Batch, status_override: str | None = None) -> dict[str, Any]:
        now = self.core.clock.now()
        if status_override is not None and batch.final is None:
            # Create and cancel answer with the status the request itself caused; the
            # lifecycle (and result files) only advance on retrieve and list.
            status = status_override
        else:
            with batch.lock:
                status = self._status(batch, now)
        start, fin, done = batch.times()
        ran_at_all = status not in ("validating", "failed") and not (
            batch.cancel_at is not None and batch.cancel_at < start
        )
        ts = int
        if batch.final is not None:
            counts = batch.counts
        elif status in ("validating", "failed") or batch.errors or not batch.prepared.is_set():
            counts = {"total": 0, "completed": 0, "failed": 0}
        else:
            ran = batch.finished(now if batch.cancel_at is None else min(now, batch.cancel_at))
            bad = bisect.bisect_left(batch.failing, ran)
            counts = {"total": batch.n, "completed": ran - bad, "failed": bad}
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "input_file_id": batch.input_file_id,
            "completion_window": batch.completion_window,
            "status": status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": ts(batch.created),
            "in_progress_at": ts(start) if ran_at_all else None,
            "expires_at": ts(batch.created + DAY),
            "finalizing_at": ts(fin) if status in ("finalizing", "completed") else None,
            "completed_at": ts(done) if status == "completed" else None,
            "failed_at": ts(start) if status == "failed" else None,
            "expired_at": ts(batch.created + DAY) if status == "expired" else None,
            "cancelling_at": ts(batch.cancel_at) if batch.cancel_at is not None else None,
            "cancelled_at": (
                ts(batch.cancel_at + batch.cancel_delay)
                if status == "cancelled" and batch.cancel_at is not None
                else None
            ),
            "request_counts": counts,
            "metadata": batch.metadata,
            "model": batch.model,
            "usage": _usage_json(*batch.usage),
        }

    # ---- real-time endpoints (not batch): the same answers, at once

    def _realtime(self, request: Request, endpoint: str) -> Response:
        try:
            body = json_body(request)
        except ValueError as e:
            raise _Invalid(400, f"We could not parse the JSON body of your request: {e}") from e
        if body.get("stream"):
            raise _Invalid(400, "The emulator does not stream; send stream=false.", param="stream")
        model = body.get("model")
        if not isinstance(model, str):
            raise _Invalid(400, "Missing required parameter: 'model'.", param="model")
        # The same checks and model rules as a batch line (refused parameters, thinking
        # tokens inside max_completion_tokens), and the same answer for the same request.
        spec = _SpecBuilder(endpoint, served=self.core.served_now()).build(
            self.core.new_id("rt-"), body
        )
        if spec.error is not None:
            text = _error_body(spec.error)
            return Response(spec.error[0], {"content-type": "application/json"}, text.encode())
        with self.core.realtime_call():
            rid = self.core.new_id("", 12)
            now = self.core.clock.now()
            cached = (
                0 if spec.cache_key is None
                else self.caches.openai(
                    model, spec.cache_key, spec.signature, spec.prompt_tokens, now
                )
            )  # fmt: skip
            text, _ = _body(spec, rid, int(now), _quote(model), endpoint, cached)
            self.core.bill_realtime("openai", answers.request_key("openai", model, spec.prompt))
        headers = {"content-type": "application/json", "x-request-id": "req_" + rid}
        return Response(200, headers, text.encode("utf-8"))


def _jsonl(lines: list[str]) -> bytes:
    # One object per line, a trailing newline, never a blank line.
    return ("\n".join(lines) + "\n").encode("utf-8")


# --------------------------------------------------------------------------------------
# Input-file validation


def _check_metadata(metadata: object) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise _Invalid(
            400, "metadata must be an object of string keys and values.", param="metadata"
        )
    if len(metadata) > 16:
        raise _Invalid(
            400, f"metadata has {len(metadata)} keys; at most 16 are allowed.", param="metadata"
        )
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise _Invalid(400, f"metadata value for {key!r} must be a string.", param="metadata")
        if len(key) > 64:
            raise _Invalid(
                400, f"metadata key {key[:20]!r}... is longer than 64 characters.", param="metadata"
            )
        if len(value) > 512:
            raise _Invalid(
                400, f"metadata value for {key!r} is longer than 512 characters.", param="metadata"
            )
    return dict(metadata)


_CREATE_KEYS: Final = frozenset(
    {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
)
MIN_EXPIRES: Final = 3600
MAX_EXPIRES: Final = 30 * DAY


def _check_expires_after(
    form: Mapping[str, tuple[str | None, memoryview]], seconds: int | None
) -> int | None:
    """Check a file upload's ``expires_after[anchor]`` / ``[seconds]``; return the seconds."""
    anchor_part = form.get("expires_after[anchor]")
    if anchor_part is None and seconds is None:
        return None
    if anchor_part is None:
        msg = "Missing required parameter: 'expires_after.anchor'."
        raise _Invalid(400, msg, param="expires_after.anchor", code="missing_required_parameter")
    anchor = bytes(anchor_part[1]).decode("utf-8", "replace")
    if anchor != "created_at":
        msg = f"Invalid value: '{anchor}'. Supported values are: 'created_at'."
        raise _Invalid(400, msg, param="expires_after.anchor", code="invalid_value")
    if seconds is None:
        msg = "Missing required parameter: 'expires_after.seconds'."
        raise _Invalid(400, msg, param="expires_after.seconds", code="missing_required_parameter")
    if seconds < MIN_EXPIRES:
        msg = (
            "Invalid 'expires_after.seconds': integer below minimum value. Expected a value "
            f">= {MIN_EXPIRES}, but got {seconds} instead."
        )
        raise _Invalid(400, msg, param="expires_after.seconds", code="integer_below_min_value")
    if seconds > MAX_EXPIRES:
        msg = (
            "Invalid 'expires_after.seconds': integer above maximum value. Expected a value "
            f"<= {MAX_EXPIRES}, but got {seconds} instead."
        )
        raise _Invalid(400, msg, param="expires_after.seconds", code="integer_above_max_value")
    return seconds


def _check_output_expires(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("anchor") != "created_at":
        raise _Invalid(
            400, "output_expires_after needs anchor 'created_at'.", param="output_expires_after"
        )
    seconds = value.get("seconds")
    if not isinstance(seconds, int) or not 3600 <= seconds <= 30 * DAY:
        raise _Invalid(
            400,
            "output_expires_after.seconds must be between 3600 and 2592000.",
            param="output_expires_after",
        )
    return seconds


_DECODER: Final = json.JSONDecoder()
# json.loads adds Python-level wrappers around the C scanner; calling the scanner
# directly saves about a microsecond per line, which adds up over 50,000 lines.
_scan_once = cast(Callable[[str, int], tuple[object, int]], _DECODER.scan_once)  # type: ignore[attr-defined]


def _scan_object(line: str) -> object:
    """Parse one JSONL line, like ``json.loads`` but faster on the well-formed path."""
    try:
        value, end = _scan_once(line, 0)
    except StopIteration:
        value, end = None, -1
    if end != len(line) and (end < 0 or not line[end:].isspace()):
        return json.loads(line)  # leading whitespace, trailing junk: exact errors/semantics
    return value


def _plan(
    data: bytes,
    endpoint: str,
    limits: Mapping[str, int],
    *,
    replay: bool = False,
    served: Callable[[str, str], bool],
) -> tuple[list[_Spec], list[dict[str, object]], str | None]:
    """Validate an input file and reduce each request to a :class:`_Spec`.

    ``replay``: the file of a batch accepted earlier, planned again to end it; its model
    was served then, so whether it is served now is not asked (a shutdown since is
    :meth:`OpenAIApp._finish`'s). ``served``: whether a model is served, as of the batch's
    creation (:meth:`EmulatorCore.served_now`: the emulator's date, not the machine's).
    """
    is_served = served
    errors: list[dict[str, object]] = []

    def fail(code: str, message: str, line: int | None = None, param: str | None = None) -> None:
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append({"code": code, "line": line, "message": message, "param": param})

    if len(data) > limits["max_file_bytes"]:
        fail(
            "file_too_large",
            f"The input file is {len(data)} bytes; the limit is {limits['max_file_bytes']} bytes.",
        )
        return [], errors, None
    builder = _SpecBuilder(endpoint, replay=replay, served=is_served)
    specs: list[_Spec] = []
    seen: set[str] = set()
    model: str | None = None
    scan = _scan_object
    max_requests = limits["max_requests"]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        fail("invalid_json_line", f"The input file is not valid UTF-8: {e}.")
        return [], errors, None
    for lineno, raw in enumerate(text.split("\n"), 1):
        if not raw or raw.isspace():
            continue
        try:
            obj = scan(raw)
        except ValueError:
            fail("invalid_json_line", "This line is not parseable as valid JSON.", lineno)
            continue
        if type(obj) is not dict:
            fail("invalid_json_line", "Each line must be a JSON object.", lineno)
            continue
        custom_id = obj.get("custom_id")
        if type(custom_id) is not str or not custom_id:
            fail(
                "missing_required_parameter",
                "Missing required parameter: 'custom_id'.",
                lineno,
                "custom_id",
            )
            continue
        if custom_id in seen:
            fail(
                "duplicate_custom_id",
                f"The custom_id {custom_id!r} duplicates another request's; it must be unique.",
                lineno,
                "custom_id",
            )
        seen.add(custom_id)
        if obj.get("method") != "POST":
            fail("invalid_method", "Only the POST method is supported.", lineno, "method")
        url = obj.get("url")
        if url != endpoint:
            if url is None:
                fail(
                    "missing_required_parameter",
                    "Missing required parameter: 'url'.",
                    lineno,
                    "url",
                )
            else:
                fail(
                    "url_mismatch",
                    f"The url {url!r} does not match the batch endpoint {endpoint!r}.",
                    lineno,
                    "url",
                )
        body = obj.get("body")
        if type(body) is not dict:
            fail(
                "missing_required_parameter", "Missing required parameter: 'body'.", lineno, "body"
            )
            continue
        if body.get("stream"):
            msg = "Streaming is not supported in batches: 'stream' must be false."
            fail("stream_unsupported", msg, lineno, "body.stream")
        line_model = body.get("model")
        if type(line_model) is not str or not line_model:
            fail(
                "missing_required_parameter",
                "Missing required parameter: 'body.model'.",
                lineno,
                "body.model",
            )
        elif model is None:
            model = line_model
            if not replay and not is_served("openai", model):
                # The Batch API checks the model while validating the file: the batch
                # ends ``failed`` with one ``errors.data`` entry, nothing runs and
                # nothing is billed. Shape and message as public clients of the real API
                # record a failed batch (pollux's OpenAI provider test
                # test_openai_collect_deferred_synthesizes_batch_level_failure_items; a
                # batch pipeline's test_batch_validation_failure_is_terminal_and_preserves
                # _error: code model_not_found, param body.model, line 1), and as the
                # OpenAI-compatible batch APIs that copy it document it (Alibaba Model
                # Studio's error-code page, help.aliyun.com/zh/model-studio: "404
                # model_not_found: The provided model xxx is not supported by the Batch
                # API.").
                fail(
                    "model_not_found",
                    f"The provided model '{model}' is not supported by the Batch API.",
                    lineno,
                    "body.model",
                )
        elif line_model != model:
            fail(
                "model_mismatch",
                f"The model {line_model!r} differs from {model!r}: one model per batch file.",
                lineno,
                "body.model",
            )
        if not errors:  # once the batch fails, answers are never needed
            specs.append(builder.build(custom_id, body))
    count = len(seen)
    if count > max_requests:
        errors.insert(
            0,
            {
                "code": "too_many_tasks",
                "line": None,
                "message": f"The batch has {count} requests; the limit is {max_requests}.",
                "param": None,
            },
        )
        del errors[MAX_REPORTED_ERRORS:]
    if count == 0 and not errors:
        fail("empty_file", "The input file has no requests.")
    return specs, errors, model
