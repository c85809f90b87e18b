"""Anthropic Message Batches as the emulator speaks it, per provider-wire.md §2.

Mounted at ``/anthropic`` (the SDK appends ``/v1/...`` to its ``base_url``). Every route
needs a key in ``x-api-key`` *or* ``Authorization: Bearer`` (the 2.x SDK sends the
latter, curl and older SDKs the former); a key starting with ``sk-invalid`` is refused.
Errors use the Anthropic envelope ``{"type": "error", "error": {type, message},
"request_id"}``.

Routes (below the mount prefix)
-------------------------------
``POST /v1/messages/batches`` (``{"requests": [{custom_id, params}, ...]}``),
``GET /v1/messages/batches`` (``limit`` 1..1000, default 20; ``after_id`` / ``before_id``;
newest first; ``has_more``, ``first_id``, ``last_id``), ``GET /v1/messages/batches/{id}``,
``POST /v1/messages/batches/{id}/cancel``, ``DELETE /v1/messages/batches/{id}``,
``GET /v1/messages/batches/{id}/results`` (JSONL, chunked, one object per line, no blank
line), and ``POST /v1/messages`` for a real-time answer: with ``"stream": true`` as
Anthropic's server-sent events (:func:`stream_events`), else one JSON ``Message``.

Lifecycle
---------
A batch created with latency ``L`` (the shared ``latency`` setting at creation) is
``in_progress`` until ``created + L``, then ``ended``; requests finish in request order,
evenly over that span. ``request_counts.processing`` is the batch size until the batch
ends, and the other four counts are zero until then, as documented. ``results_url`` is
absolute and names the emulator's own ``http://127.0.0.1:PORT``: the SDK follows it
as is. Results come in a fixed but scrambled order, so clients must key on ``custom_id``.
With ``L`` over 24 h the batch ends at ``expires_at`` (created + 24 h) and the requests
that had not run end ``expired``. After 29 days (simulated clock) ``archived_at`` is set
and results are gone (404).

``POST .../cancel`` answers ``canceling`` with ``cancel_initiated_at``; after the shared
``cancel_delay`` setting the batch is ``ended``: requests that finished before the cancel
keep their results, the rest are ``canceled``. Cancelling an ended batch is a 400;
cancelling a canceling batch returns it unchanged. Only an ended batch can be deleted.

Validation
----------
Every route needs an ``anthropic-version`` header, one Anthropic published
(``anthropic_checks.API_VERSIONS``; the SDK always sends one): without it, or with another
value, 400 ``invalid_request_error`` (``anthropic-version: "2023-10-01" is not a valid
version``). The create call rejects with 400
``invalid_request_error`` only what is wrong with the body's structure: a key other than
``requests``, a body without a non-empty ``requests`` list, more than 100,000 requests,
a request with a key other than ``custom_id`` / ``params``, a ``custom_id`` that is
missing, duplicated or not ``^[a-zA-Z0-9_-]{1,64}$``, and ``params`` that is not an
object. A body over 256 MB is a 413 ``request_too_large`` (the status the real API gives
any oversized body). What is wrong inside ``params`` makes that request ``errored`` with
an ``invalid_request_error`` (:mod:`batchata_df.emulator.anthropic_checks`): the SDK's
``MessageCreateParamsNonStreaming`` with unknown keys forbidden at every level (missing
``model`` / ``max_tokens`` / ``messages``, ``max_tokens`` below 1, ``stream: true``, roles
other than ``user`` / ``assistant``...), any of ``temperature`` / ``top_p`` / ``top_k``
when the create call's ``anthropic-version`` is 2026-10-21 or later (what anthropic 2.x
sends: ``anthropic_checks.SAMPLING_REMOVED_IN``), else ``temperature`` / ``top_p`` outside
0..1 and ``top_k`` below 0, empty ``messages``, citations enabled on some documents but not all, an
``output_config.format`` schema outside the supported subset (every object needs
``additionalProperties: false``; only the keywords ``anthropic.transform_schema`` keeps),
a malformed ``document`` / ``image`` block (a base64 source whose ``media_type`` is not
``application/pdf`` / an image type, invalid base64, bytes that are not a PDF or do not
match the image type, a ``text`` source that is not ``text/plain``), citations together
with ``output_config.format``, and a forced ``tool_choice`` on a model that always thinks.
``POST /v1/messages`` answers the same problems with a 400. A model Anthropic does not
serve (:func:`~batchata_df.emulator.model_rules.serves`: genai-prices' Anthropic list;
``emulator-unknown-model`` never) makes that request ``errored`` with ``not_found_error``
``model: <name>``; the batch itself is created (``POST /v1/messages`` answers it with a
404).

Answers
-------
``params.output_config.format = {"type": "json_schema", "schema": ...}`` gives one ``text``
block with JSON that validates; a forced tool (``tool_choice: {"type": "tool"}``) gives a
``tool_use`` block; otherwise plain text. Requests that think (:mod:`.model_rules`:
``thinking`` enabled or adaptive, or a Claude 5 model that thinks by default) start their
answer with a ``thinking`` block, so clients must select blocks by type; the thinking
tokens (``model_rules.THOUGHT_TOKENS`` per effort, at most the budget) are inside
``max_tokens`` and ``usage.output_tokens``, and in ``usage.output_tokens_details``.
Parameters a model generation refuses (sampling parameters on Opus 4.7+ and Claude 5,
temperature with top_p on 4.5/4.6, sampling while thinking, a thinking type the model
does not take) make the request ``errored`` with ``invalid_request_error``. The markers of
:mod:`batchata_df.emulator.answers` apply: ``[[emulator:error(:NNN)]]`` -> ``errored``
(500 ``api_error``, 400 ``invalid_request_error``, 429 ``rate_limit_error``, 529
``overloaded_error``, ...), ``[[emulator:invalid]]`` -> JSON that violates the schema,
``[[emulator:truncate]]`` -> ``stop_reason: "max_tokens"`` and cut text,
``[[emulator:refusal]]`` -> ``stop_reason: "refusal"``.

Documents with ``citations: {"enabled": true}`` (and no ``output_config``) are answered as
:mod:`batchata_df.emulator.cited` describes: several ``text`` blocks whose cited values
carry ``char_location`` / ``page_location`` / ``content_block_location`` citations that
point at exactly those values; a JSON object valid for the schema the system prompt
carries between ``<answer_json_schema>`` tags, or cited prose without one.

Usage is the emulator's token estimate with ``service_tier: "batch"``; base64 PDFs and
images are billed by :mod:`.media` (2,000 per PDF page, ``width * height / 750`` per
image). Prompt caching is as strict as the service (:mod:`.prompt_cache`): only prefixes
ending at a block marked ``cache_control`` (or, with a top-level ``cache_control``, at the
last block) count, at most 4 breakpoints (a 5th is a 400), and only when the prefix holds
at least the model's minimum cacheable length; the first request with a prefix reports it
as ``cache_creation_input_tokens``, later ones (in this batch or a later one, within the
cache's lifetime) as ``cache_read_input_tokens``; neither is part of ``input_tokens``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from batchata_df.emulator import answers, anthropic_checks, cited, media, model_rules
from batchata_df.emulator.anthropic_checks import ParamsChecker, version_error
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
    updated_limits,
)

__all__ = ["AnthropicApp", "create_app", "rfc3339"]

DAY: Final = 86_400
MB: Final = 1024 * 1024
RETENTION: Final = 29 * DAY
DOCUMENT_TOKENS: Final = 85  # images and binary documents
CHUNK: Final = 64 * 1024
REFUSAL_TEXT: Final = "I can't help with that request."
CUSTOM_ID: Final = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_DEFAULT_LIMITS: Final[dict[str, int]] = {"max_requests": 100_000, "max_bytes": 256 * MB}
# HTTP status chosen by an [[emulator:error:NNN]] marker -> Anthropic error type. Only types
# that the SDK's ErrorObject union knows may appear inside a result line.
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def create_app(core: EmulatorCore) -> AnthropicApp:
    """Build the Anthropic app for ``core`` (the server's provider-module entry point)."""
    return AnthropicApp(core)


def rfc3339(t: float) -> str:
    """Format unix seconds as an RFC 3339 UTC timestamp with microseconds.

    Examples
    --------
    >>> rfc3339(0.5)
    '1970-01-01T00:00:00.500000Z'
    """
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Invalid(Exception):
    """An HTTP-level client error, turned into the Anthropic envelope."""

    def __init__(self, status: int, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type


# --------------------------------------------------------------------------------------
# Requests -> compact specs (decided at batch creation)


@dataclass(slots=True)
class _Spec:
    """What the emulator keeps of one request: enough to render its result later."""

    custom_id: str
    model: str
    prompt: str
    input_tokens: int  # every prompt token, cached or not
    mode: str  # "text" | "schema" | "tool" | "cite" | "prompted" (a schema in the system prompt)
    gen: answers.AnswerGenerator | None
    tool_name: str | None
    max_tokens: int
    thinking: bool
    marker: str | None
    error: tuple[str, str] | None  # (error type, message)
    documents: list[dict[str, Any]] | None = None  # mode "cite": the request's documents
    cite_schema: dict[str, Any] | None = None  # mode "cite": the schema in the system prompt
    thinking_tokens: int = 0  # spent before the answer, inside max_tokens
    breakpoints: list[tuple[str, int, str]] = field(default_factory=list)
    """Marked prefixes: (hash, tokens up to and including the block, ttl), in order."""
    room: int | None = None
    """Output tokens left in the context window when it is smaller than ``max_tokens``
    (:func:`~batchata_df.emulator.model_rules.window_room`)."""


def _blocks_text(content: object) -> tuple[str, int, bool]:
    """Text of a ``content`` (str or blocks), tokens of binary blocks, citations flag."""
    if isinstance(content, str):
        return content, 0, False
    if not isinstance(content, list):
        return "", 0, False
    texts: list[str] = []
    extra = 0
    cites = False
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "document":
            citations = block.get("citations")
            cites = cites or (isinstance(citations, dict) and citations.get("enabled") is True)
            source = block.get("source")
            source = source if isinstance(source, dict) else {}
            if source.get("type") == "text" and isinstance(source.get("data"), str):
                if source.get("media_type") != "text/plain":
                    msg = "document.source.text.media_type: Input should be 'text/plain'"
                    raise media.MediaError(msg)
                texts.append(source["data"])
            elif source.get("type") == "base64":
                extra += _base64_tokens(source, "document")
            elif source.get("type") == "content":
                inner, more, _ = _blocks_text(source.get("content"))
                texts.append(inner)
                extra += more
            else:
                extra += DOCUMENT_TOKENS
        elif kind == "tool_result":
            inner, more, _ = _blocks_text(block.get("content"))
            texts.append(inner)
            extra += more
        elif kind == "image":
            source = block.get("source")
            if isinstance(source, dict) and source.get("type") == "base64":
                extra += _base64_tokens(source, "image")
            else:
                extra += DOCUMENT_TOKENS
        else:
            extra += DOCUMENT_TOKENS
    return "\n".join(texts), extra, cites


ANTHROPIC_IMAGE_B64_MAX: Final = 5 * 1024 * 1024


def _base64_tokens(source: Mapping[str, Any], block: str) -> int:
    """Tokens of a base64 ``document`` (PDF) or ``image`` source; MediaError if refused."""
    kind = source.get("media_type")
    if block == "document" and kind != "application/pdf":
        msg = "document.source.base64.media_type: Input should be 'application/pdf'"
        raise media.MediaError(msg)
    if block == "image" and kind not in media.IMAGE_TYPES:
        allowed = ", ".join(repr(t) for t in media.IMAGE_TYPES)
        msg = f"image.source.base64.media_type: Input should be one of {allowed}"
        raise media.MediaError(msg)
    data = source.get("data")
    if block == "image" and isinstance(data, str) and len(data) > ANTHROPIC_IMAGE_B64_MAX:
        # The 5 MB limit is on the base64 string, as the API's 400 says: "messages.0.content.
        # 0.image.source.base64: image exceeds 5 MB maximum: 8259148 bytes > 5242880 bytes"
        # (quoted in anthropics/claude-code#19631 and lobehub/lobehub#14711).
        msg = (
            f"image.source.base64: image exceeds 5 MB maximum: {len(data)} bytes > "
            f"{ANTHROPIC_IMAGE_B64_MAX} bytes"
        )
        raise media.MediaError(msg)
    try:
        raw = media.decode_base64(data)
        if block == "document":
            return media.check_pdf(raw) * media.PDF_PAGE_TOKENS["anthropic"]
        width, height = media.check_image(raw, str(kind))
    except media.MediaError as e:
        msg = f"{block}.source.base64: {e}"
        raise media.MediaError(msg) from e
    return media.image_tokens("anthropic", width, height)


def _system(params: Mapping[str, Any]) -> tuple[str, bool]:
    """System prompt text, and whether the request asks for prompt caching at all."""
    system = params.get("system")
    cached = isinstance(params.get("cache_control"), dict)
    if isinstance(system, str):
        return system, cached
    if isinstance(system, list):
        text, _, _ = _blocks_text(system)
        marked = any(
            isinstance(b, dict) and isinstance(b.get("cache_control"), dict) for b in system
        )
        return text, cached or marked
    return "", cached


MAX_BREAKPOINTS: Final = 4


def _cache_control(value: object, where: str) -> str:
    """The ttl of a valid ``cache_control``; raises ValueError with the API's message."""
    if not isinstance(value, dict) or value.get("type") != "ephemeral":
        msg = f"{where}.cache_control.type: Input should be 'ephemeral'"
        raise ValueError(msg)
    ttl = value.get("ttl", "5m")
    if ttl not in ("5m", "1h"):
        msg = f"{where}.cache_control.ttl: Input should be '5m' or '1h'"
        raise ValueError(msg)
    return str(ttl)


def _cache_breakpoints(params: Mapping[str, Any]) -> list[tuple[str, int, str]]:
    """The marked prefixes of a request: tools, then system, then messages, block by block.

    Each prefix is identified by a hash of every block up to and including the marked one
    (without the markers) and counted as the emulator counts tokens. A top-level
    ``cache_control`` marks the last block. Raises ValueError for a bad marker or more
    than :data:`MAX_BREAKPOINTS`.
    """
    blocks: list[tuple[str, Any]] = []
    tools = params.get("tools")
    if isinstance(tools, list):
        blocks += [(f"tools.{i}", t) for i, t in enumerate(tools)]
    system = params.get("system")
    if isinstance(system, str) and system:
        blocks.append(("system", {"type": "text", "text": system}))
    elif isinstance(system, list):
        blocks += [(f"system.{i}", b) for i, b in enumerate(system)]
    for m, message in enumerate(params.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        role = message.get("role") if isinstance(message, dict) else None
        if isinstance(content, str):
            blocks.append((f"messages.{m}", {"type": "text", "text": content, "role": role}))
        elif isinstance(content, list):
            blocks += [(f"messages.{m}.content.{i}", b) for i, b in enumerate(content)]
    top = params.get("cache_control")
    marked = sum(1 for _, b in blocks if isinstance(b, dict) and "cache_control" in b)
    if top is not None:
        _cache_control(top, "")
        marked += 1
    if marked > MAX_BREAKPOINTS:
        msg = (
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {marked}."
        )
        raise ValueError(msg)
    if not marked:
        return []
    digest = hashlib.blake2b(digest_size=16)
    chars, extra, out = 0, 0, []
    for n, (where, block) in enumerate(blocks):
        plain = (
            {k: v for k, v in block.items() if k != "cache_control"}
            if isinstance(block, dict)
            else block
        )
        digest.update(json.dumps(plain, sort_keys=True, separators=(",", ":")).encode())
        if where.startswith("tools"):
            chars += len(json.dumps(plain))
        else:
            try:
                text, more, _ = _blocks_text([plain])
            except media.MediaError:
                text, more = "", 0  # reported by the request's own checks
            chars += len(text) + (1 if n else 0)
            extra += more
        mark = block.get("cache_control") if isinstance(block, dict) else None
        if mark is None and top is not None and n == len(blocks) - 1:
            mark = top
        if mark is not None:
            ttl = _cache_control(mark, where)
            out.append((digest.copy().hexdigest(), chars // 4 + extra, ttl))
    return out


def _thinks(model: str, params: Mapping[str, Any]) -> int | None:
    """Thinking tokens the request spends (:mod:`.model_rules`), None if it does not think."""
    return model_rules.anthropic_thinking(model, dict(params))


def _api_version(request: Request) -> str:
    """The request's ``anthropic-version`` (:meth:`AnthropicApp.handle` takes published ones)."""
    return str(request.headers.get("anthropic-version") or "")


class _SpecBuilder:
    """Turns request ``params`` into :class:`_Spec`; reuses the last schema's generator."""

    def __init__(self, served: Callable[[str, str], bool], version: str) -> None:
        # Whether a model is served, as of the request's creation (EmulatorCore.served_now:
        # the emulator's date, not the machine's).
        self.served = served
        # The request's ``anthropic-version``: what the API refuses depends on it
        # (anthropic_checks.SAMPLING_REMOVED_IN); a batch's requests go by its create call's.
        self.version = version
        self._last_schema: object = None
        self._last_gen: answers.AnswerGenerator | None = None
        self.check = ParamsChecker()

    def _generator(self, schema: Mapping[str, Any]) -> answers.AnswerGenerator:
        # The requests of one batch nearly always share a schema: comparing dicts is far
        # cheaper than the canonical-JSON cache key of generator_for.
        if self._last_gen is None or schema != self._last_schema:
            self._last_gen = answers.generator_for(schema)
            self._last_schema = schema
        return self._last_gen

    def build(self, custom_id: str, params: Mapping[str, Any]) -> _Spec:
        """Reduce a ``params`` object to a :class:`_Spec` (``errored`` if it is invalid)."""
        model = params.get("model")
        with media.billing_model(model if isinstance(model, str) else ""):
            return self._build(custom_id, params)

    def _build(self, custom_id: str, params: Mapping[str, Any]) -> _Spec:
        invalid = version_error(params, self.version) or self.check(params)
        if invalid is None and isinstance(params.get("model"), str):
            invalid = model_rules.anthropic_refusal(str(params["model"]), dict(params))
        kind = "invalid_request_error"
        model = params.get("model")
        served = not isinstance(model, str) or self.served("anthropic", model)
        if invalid is None and not served:
            # Anthropic answers an unknown model with a 404 ``not_found_error`` whose message
            # is ``model: <name>`` (weval-org/app issue 24, presidio-oss/factif-ai issue 34).
            # Batch creation does not check ``params``: Anthropic's batch processing guide
            # (platform.claude.com/docs/en/build-with-claude/batch-processing, best
            # practices) says each request's params are validated asynchronously and the
            # errors come back in the results, so the request ends ``errored`` with it.
            invalid, kind = f"model: {model}", "not_found_error"
        if invalid is not None:
            model = params.get("model")
            return _Spec(
                custom_id=custom_id,
                model=model if isinstance(model, str) else "",
                prompt="",
                input_tokens=0,
                mode="text",
                gen=None,
                tool_name=None,
                max_tokens=0,
                thinking=False,
                marker=None,
                error=(kind, invalid),
            )
        model = str(params["model"])
        error: tuple[str, str] | None = None
        system, _ = _system(params)
        try:
            breakpoints = _cache_breakpoints(params)
        except ValueError as e:
            breakpoints, error = [], ("invalid_request_error", str(e))
        texts = [system] if system else []
        extra = 0
        cites = False
        messages = params["messages"]
        if not messages:
            error = ("invalid_request_error", "messages: at least one message is required")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
                error = error or (
                    "invalid_request_error",
                    f"messages.{i}.role: Input should be 'user' or 'assistant'",
                )
                continue
            try:
                text, more, c = _blocks_text(message.get("content"))
            except media.MediaError as e:
                error = error or ("invalid_request_error", f"messages.{i}.content: {e}")
                continue
            texts.append(text)
            extra += more
            cites = cites or c
        prompt = "\n".join(texts)
        mode, gen, tool_name = "text", None, None
        config = params.get("output_config")
        fmt = config.get("format") if isinstance(config, dict) else None
        if fmt is not None:
            schema = fmt.get("schema") if isinstance(fmt, dict) else None
            if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
                error = error or (
                    "invalid_request_error",
                    "output_config.format.type: Input should be 'json_schema'",
                )
            elif not isinstance(schema, dict):
                error = error or (
                    "invalid_request_error",
                    "output_config.format.schema: Field required",
                )
            else:
                mode, gen = "schema", self._generator(schema)
            if cites:
                error = error or (
                    "invalid_request_error",
                    "Citations are not supported together with output_config.format "
                    "(structured outputs).",
                )
        thought_tokens = _thinks(model, params)
        thinking = thought_tokens is not None
        choice = params.get("tool_choice")
        if mode == "text" and isinstance(choice, dict) and choice.get("type") in ("tool", "any"):
            tool = _forced_tool(params.get("tools"), choice)
            if thinking:
                error = error or (
                    "invalid_request_error",
                    "Thinking may not be enabled when tool_choice forces tool use.",
                )
            elif tool is None:
                error = error or (
                    "invalid_request_error",
                    "tool_choice names a tool that is not in tools",
                )
            else:
                tool_name, schema = tool
                mode, gen = "tool", self._generator(schema)
        documents, cite_schema = None, None
        if cites and mode == "text":
            mode, documents = "cite", cited.documents(messages)
            cite_schema = cited.schema_from_system(system)
        schema_tokens = gen.schema_tokens if gen else 0
        asked = cited.schema_from_system(system) if mode == "text" and system else None
        if asked is not None:
            # A JSON Schema in the system prompt and no structured output: Claude answers
            # with JSON for it, the schema's tokens already counted in the system prompt.
            mode, gen = "prompted", self._generator(asked)
        tokens = answers.count_tokens(prompt) + extra + schema_tokens
        counted = model_rules.over_window("anthropic", model, prompt, extra + schema_tokens)
        if error is None and counted is not None:
            window = model_rules.context_window("anthropic", model)
            # anthropics/claude-code#12186: "prompt is too long: 208310 tokens > 200000 maximum"
            error = (
                "invalid_request_error",
                f"prompt is too long: {counted} tokens > {window} maximum",
            )
        room = None
        if error is None:
            room = model_rules.window_room(
                "anthropic", model, prompt, extra + schema_tokens, int(params["max_tokens"])
            )
        marker = answers.find_marker(prompt)
        if marker in (answers.MARKER_ERROR, answers.MARKER_DETAILS) and error is None:
            status = answers.marker_status(prompt)
            kind = _ERROR_TYPES.get(status, "api_error")
            error = (kind, f"Emulated {kind} (HTTP {status}) for this request.")
        return _Spec(
            custom_id=custom_id,
            model=model,
            prompt=prompt,
            input_tokens=max(1, tokens),
            mode=mode,
            gen=gen,
            tool_name=tool_name,
            max_tokens=int(params["max_tokens"]),
            thinking=thinking,
            marker=marker,
            error=error,
            documents=documents,
            cite_schema=cite_schema,
            thinking_tokens=thought_tokens or 0,
            breakpoints=breakpoints,
            room=room,
        )


def _forced_tool(tools: object, choice: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    if not isinstance(tools, list):
        return None
    for tool in tools:
        if not isinstance(tool, dict) or not isinstance(tool.get("input_schema"), dict):
            continue
        if choice.get("type") == "any" or tool.get("name") == choice.get("name"):
            return str(tool.get("name")), tool["input_schema"]
    return None


# --------------------------------------------------------------------------------------
# Synchronous validation of the create body


def _check_requests(body: object, max_requests: int) -> list[tuple[str, dict[str, Any]]]:
    """The create body's structure: ``requests``, each ``{custom_id, params: {...}}``.

    What is wrong *inside* ``params`` is not a create-time error: that request ends
    ``errored`` (see :class:`ParamsChecker`).
    """
    if not isinstance(body, dict):
        raise _Invalid(400, "Input should be a valid dictionary")
    for key in body:
        if key != "requests":
            raise _Invalid(400, f"{key}: Extra inputs are not permitted")
    requests = body.get("requests")
    if not isinstance(requests, list):
        raise _Invalid(400, "requests: Field required" if requests is None else
                       "requests: Input should be a valid list")  # fmt: skip
    if not requests:
        raise _Invalid(400, "requests: List should have at least 1 item after validation, not 0")
    if len(requests) > max_requests:
        raise _Invalid(
            400,
            f"requests: List should have at most {max_requests} items after validation, "
            f"not {len(requests)}",
        )
    out: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for i, item in enumerate(requests):
        where = f"requests.{i}"
        if not isinstance(item, dict):
            raise _Invalid(400, f"{where}: Input should be a valid dictionary")
        if len(item) != 2:
            for key in item:
                if key not in ("custom_id", "params"):
                    raise _Invalid(400, f"{where}.{key}: Extra inputs are not permitted")
        custom_id = item.get("custom_id")
        if custom_id is None:
            raise _Invalid(400, f"{where}.custom_id: Field required")
        if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
            raise _Invalid(
                400, f"{where}.custom_id: String should match pattern '{CUSTOM_ID.pattern}'"
            )
        if custom_id in seen:
            raise _Invalid(
                400,
                f"{where}.custom_id: Duplicate custom_id {custom_id!r}; each request in a "
                "batch must have a unique custom_id",
            )
        seen.add(custom_id)
        params = item.get("params")
        if not isinstance(params, dict):
            raise _Invalid(400, f"{where}.params: " + (
                "Field required" if params is None else "Input should be a valid dictionary"
            ))  # fmt: skip
        out.append((custom_id, params))
    return out


# --------------------------------------------------------------------------------------
# Rendering results


def _cut(text: str, must_break_json: bool, limit_chars: int | None = None) -> str:
    cut = text[:limit_chars] if limit_chars is not None else text[: max(1, len(text) // 2)]
    if must_break_json:
        try:
            json.loads(cut)
        except ValueError:
            return cut
        return "{" + cut[:-1] if len(cut) > 1 else "{"
    return cut


def _answer(spec: _Spec) -> tuple[str, object, str]:
    """Return (text, tool input or None, stop_reason) for a request that runs."""
    seed = answers.answer_seed(spec.prompt)
    marker = spec.marker
    if marker == answers.MARKER_REFUSAL:
        return REFUSAL_TEXT, None, "refusal"
    if spec.mode == "tool" and spec.gen is not None:
        value = spec.gen.invalid(seed) if marker == answers.MARKER_INVALID else spec.gen.value(seed)
        return "", value if isinstance(value, dict) else {"value": value}, "tool_use"
    if spec.mode in ("schema", "prompted") and spec.gen is not None:
        if marker == answers.MARKER_OVERFLOW:
            text = spec.gen.overflowed(seed)
        elif marker == answers.MARKER_INVALID:
            text = _compact(spec.gen.invalid(seed))
        else:
            text = _compact(spec.gen.value(seed))
        if spec.mode == "prompted" and answers.seed_int(seed) % 3 == 0:
            # Asked in the prompt, not constrained: Claude sometimes fences its JSON.
            text = f"```json\n{text}\n```"
    else:
        text = answers.fake_text(spec.prompt, seed)
    stop = "end_turn"
    if marker == answers.MARKER_TRUNCATE:
        text, stop = _cut(text, spec.mode != "text"), "max_tokens"
    elif marker in (answers.MARKER_FILTER, answers.MARKER_RECITATION):
        # Claude's safety stop: stop_reason "refusal" after part of the answer.
        text, stop = _cut(text, spec.mode != "text"), "refusal"
    elif marker == answers.MARKER_CONTEXT:
        # anthropic 2.14 StopReason: the prompt and answer filled the context window.
        text, stop = _cut(text, spec.mode != "text"), "model_context_window_exceeded"
    room = spec.max_tokens - spec.thinking_tokens
    if answers.count_tokens(text) > room:
        text, stop = _cut(text, spec.mode != "text", max(0, room) * 4), "max_tokens"
    return text, None, stop


def _usage(spec: _Spec, output_tokens: int, cache: tuple[int, int]) -> dict[str, Any]:
    read, write = cache
    ttl = spec.breakpoints[-1][2] if spec.breakpoints else "5m"
    return {
        "input_tokens": max(0, spec.input_tokens - read - write),
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": write if ttl == "5m" else 0,
            "ephemeral_1h_input_tokens": write if ttl == "1h" else 0,
        },
        "server_tool_use": None,
        "service_tier": "batch",
        "inference_geo": None,
    }


def render_message(spec: _Spec, rid: str, *, cache: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """The ``Message`` a request that runs successfully answers with.

    ``cache`` is the (read, written) prompt-cache tokens of the request.
    """
    content: list[dict[str, Any]] = []
    thought = min(spec.thinking_tokens, spec.max_tokens)
    if spec.thinking:
        content.append(
            {
                "type": "thinking",
                "thinking": "",  # display "omitted": the signature, not the text
                "signature": f"emusig_{rid}",
            }
        )
    if spec.thinking_tokens >= spec.max_tokens > 0:
        # Thinking used the whole budget: no answer at all.
        return _message(spec, rid, content, "max_tokens", spec.max_tokens, thought, cache)
    text, tool_input, stop = _answer(spec)
    if tool_input is not None:
        content.append(
            {"type": "tool_use", "id": f"toolu_{rid}", "name": spec.tool_name, "input": tool_input}
        )
        out_tokens = answers.count_tokens(_compact(tool_input))
    else:
        blocks = [{"type": "text", "text": text, "citations": None}]
        if spec.mode == "cite" and stop == "end_turn" and spec.marker is None:
            seed = answers.answer_seed(spec.prompt)
            answer = cited.render(spec.documents or [], spec.cite_schema, seed)
            whole = "".join(b["text"] for b in answer)
            if answers.count_tokens(whole) <= spec.max_tokens:
                blocks, text = answer, whole
            else:
                text, stop = _cut(whole, True, spec.max_tokens * 4), "max_tokens"
                blocks = [{"type": "text", "text": text, "citations": None}]
        content.extend(blocks)
        out_tokens = answers.count_tokens(text)
    out_tokens = min(out_tokens + thought, spec.max_tokens)
    if spec.room is not None and out_tokens > spec.room:
        # The window filled before the answer ended: what fits of it, the whole rest of the
        # window generated and billed (model_rules.window_room).
        text = _cut(text, spec.mode != "text", max(0, spec.room - thought) * 4)
        content = [*content[: 1 if spec.thinking else 0],
                   {"type": "text", "text": text, "citations": None}]  # fmt: skip
        return _message(spec, rid, content, "model_context_window_exceeded", spec.room,
                        min(thought, spec.room), cache)  # fmt: skip
    if stop == "max_tokens":
        # Cut by the output limit: the whole limit was generated and is billed
        # (usage.output_tokens = max_tokens with stop_reason "max_tokens").
        out_tokens = spec.max_tokens
    return _message(spec, rid, content, stop, out_tokens, thought, cache)


def _message(
    spec: _Spec,
    rid: str,
    content: list[dict[str, Any]],
    stop: str,
    out_tokens: int,
    thought: int,
    cache: tuple[int, int],
) -> dict[str, Any]:
    stop_details = {"type": "refusal", "category": None, "explanation": None} if (
        stop == "refusal"
    ) else None  # fmt: skip
    usage = _usage(spec, out_tokens, cache)
    usage["output_tokens_details"] = {"thinking_tokens": thought} if spec.thinking else None
    return {
        "id": f"msg_{rid}",
        "type": "message",
        "role": "assistant",
        "model": spec.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "stop_details": stop_details,
        "container": None,
        "usage": usage,
    }


def _errored(kind: str, message: str, rid: str) -> dict[str, Any]:
    return {
        "type": "errored",
        "error": {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": f"req_{rid}",
        },
    }


# --------------------------------------------------------------------------------------
# Batches


@dataclass(slots=True)
class _Batch:
    id: str
    seq: int
    created: float
    latency: float
    n: int
    specs: list[_Spec] | None
    cancel_at: float | None = None
    cancel_delay: float = 0.0
    ended_at: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ledger: LedgerEntry | None = None

    def end_time(self) -> float:
        return self.created + min(self.latency, DAY)

    def finished(self, t: float) -> int:
        """Number of requests (in request order) that have run by time ``t``."""
        if self.latency <= 0 or t >= self.created + self.latency:
            return self.n
        if t <= self.created:
            return 0
        return int(self.n * (t - self.created) / self.latency)


class AnthropicApp:
    """The Anthropic Message Batches app; see the module docstring.

    Parameters
    ----------
    core
        The emulator core that provides the clock, settings and blob storage.
    """

    provider = "anthropic"

    def __init__(self, core: EmulatorCore) -> None:
        self.core = core
        warm_in_background(anthropic_checks.warm, "anthropic")
        self._lock = threading.Lock()
        self._batches: dict[str, _Batch] = {}
        self._seq = 0
        self._limits = dict(_DEFAULT_LIMITS)
        self.caches = PromptCaches()

    # ---- App protocol

    def error_response(self, status: int, message: str) -> Response:
        """Return an HTTP error in the Anthropic envelope."""
        envelope = error_envelope("anthropic", status, message)
        return json_response(envelope, status, {"request-id": envelope["request_id"]})

    def reset(self) -> None:
        """Forget every batch (and the prompt cache)."""
        self.caches = PromptCaches()
        with self._lock:
            for batch_id in self._batches:
                self.core.blobs.delete(_blob_key(batch_id))
            self._batches.clear()

    def configure(self, settings: Mapping[str, object]) -> None:
        """Set ``max_requests`` or ``max_bytes`` (per batch)."""
        self._limits = updated_limits("anthropic", self._limits, settings)

    def settings(self) -> dict[str, object]:
        """The current limits."""
        return dict(self._limits)

    def handle(self, request: Request) -> Response:
        """Serve one request below the Anthropic mount prefix."""
        try:
            self._check_auth(request)
            if "anthropic-version" not in request.headers:
                raise _Invalid(
                    400, "anthropic-version: header is required", "invalid_request_error"
                )
            version = request.headers["anthropic-version"]
            if version not in anthropic_checks.API_VERSIONS:
                raise _Invalid(
                    400, f'anthropic-version: "{version}" is not a valid version',
                    "invalid_request_error",
                )  # fmt: skip
            response = self._route(request)
        except _Invalid as e:
            envelope = error_envelope("anthropic", e.status, e.message, error_type=e.error_type)
            return json_response(envelope, e.status, {"request-id": envelope["request_id"]})
        # Every real answer carries ``request-id`` (the SDK exposes it as ``_request_id``).
        response.headers.setdefault("request-id", self.core.new_id("req_", 12))
        return response

    # ---- routing

    @staticmethod
    def _check_auth(request: Request) -> None:
        key = request.headers.get("x-api-key", "").strip()
        if not key:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else ""
        if not key:
            raise _Invalid(401, "x-api-key header is required (or Authorization: Bearer <key>)")
        if key.startswith("sk-invalid"):
            raise _Invalid(401, "invalid x-api-key")  # never echo the key itself

    def _route(self, request: Request) -> Response:
        parts = [p for p in request.route.split("/") if p]
        method = request.method
        handler: Callable[[], Response] | None = None
        if parts[:3] != ["v1", "messages", "batches"]:
            if parts == ["v1", "messages"]:
                handler = {"POST": lambda: self._realtime(request)}.get(method)
            else:
                raise _Invalid(404, f"Not found: {method} {request.path}")
        else:
            rest = parts[3:]
            if not rest:
                handler = {
                    "POST": lambda: self._create(request),
                    "GET": lambda: self._list(request),
                }.get(method)
            elif len(rest) == 1:
                handler = {
                    "GET": lambda: json_response(self._view(self._batch(rest[0]), request)),
                    "DELETE": lambda: self._delete(rest[0]),
                }.get(method)
            elif len(rest) == 2 and rest[1] == "cancel":
                handler = {"POST": lambda: self._cancel(rest[0], request)}.get(method)
            elif len(rest) == 2 and rest[1] == "results":
                handler = {"GET": lambda: self._results(rest[0])}.get(method)
            else:
                raise _Invalid(404, f"Not found: {method} {request.path}")
        if handler is None:
            raise _Invalid(405, f"Method {method} is not allowed for {request.path}",
                           "invalid_request_error")  # fmt: skip
        return handler()

    # ---- batches

    def _create(self, request: Request) -> Response:
        if len(request.body) > self._limits["max_bytes"]:
            raise _Invalid(
                413,
                f"Request body is {len(request.body)} bytes; a message batch may be at most "
                f"{self._limits['max_bytes']} bytes.",
            )
        try:
            body = json_body(request)
        except ValueError as e:
            raise _Invalid(400, f"The request body is not valid JSON: {e}") from e
        checked = _check_requests(body, self._limits["max_requests"])
        builder = _SpecBuilder(self.core.served_now(), _api_version(request))
        specs = [builder.build(custom_id, params) for custom_id, params in checked]
        with self._lock:
            self._seq += 1
            batch = _Batch(
                id=self.core.new_id("msgbatch_01", 11),
                seq=self._seq,
                created=self.core.clock.now(),
                latency=self.core.config.latency,
                n=len(specs),
                specs=specs,
            )
            self._batches[batch.id] = batch
        batch.ledger = self.core.bill(
            "anthropic",
            batch.id,
            [sp.custom_id for sp in specs],
            [answers.request_key("anthropic", sp.model, sp.prompt) for sp in specs],
            # Errored requests are not billed (LedgerEntry.unbilled), collected or not.
            failing=[i for i, sp in enumerate(specs) if sp.error is not None],
        )
        # A fresh batch always answers in_progress, as the real service does.
        return json_response(self._view(batch, request, answer="in_progress"))

    def _batch(self, batch_id: str) -> _Batch:
        with self._lock:
            batch = self._batches.get(batch_id)
        if batch is None:
            raise _Invalid(404, f"No message batch found with id '{batch_id}'.")
        return batch

    def _list(self, request: Request) -> Response:
        raw = request.query.get("limit", "20")
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            raise _Invalid(400, f"limit: Input should be between 1 and 1000, got {raw!r}")
        after = request.query.get("after_id")
        before = request.query.get("before_id")
        if after and before:
            raise _Invalid(400, "Only one of after_id and before_id may be given.")
        with self._lock:
            order = sorted(self._batches.values(), key=lambda b: b.seq, reverse=True)
        ids = [b.id for b in order]
        if after or before:
            cursor = after or before
            if cursor not in ids:
                raise _Invalid(400, f"{'after_id' if after else 'before_id'}: no message "
                               f"batch with id {cursor!r}")  # fmt: skip
            pos = ids.index(str(cursor))
        if after:
            rest = order[pos + 1 :]
            page, has_more = rest[:limit], len(rest) > limit
        elif before:
            rest = order[:pos]
            page, has_more = rest[-limit:], len(rest) > limit
        else:
            page, has_more = order[:limit], len(order) > limit
        data = [self._view(b, request) for b in page]
        return json_response(
            {
                "data": data,
                "has_more": has_more,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
            }
        )

    def _cancel(self, batch_id: str, request: Request) -> Response:
        batch = self._batch(batch_id)
        with batch.lock:
            status = self._status(batch, self.core.clock.now())
            if status == "ended":
                raise _Invalid(
                    400, f"Message batch '{batch_id}' has already ended and cannot be canceled."
                )
            if batch.cancel_at is None:
                batch.cancel_at = self.core.clock.now()
                batch.cancel_delay = self.core.config.cancel_delay
        return json_response(self._view(batch, request, answer="canceling"))

    def _delete(self, batch_id: str) -> Response:
        batch = self._batch(batch_id)
        with batch.lock:
            if self._status(batch, self.core.clock.now()) != "ended":
                raise _Invalid(
                    400,
                    f"Message batch '{batch_id}' is still processing; cancel it and wait "
                    "until it has ended before deleting it.",
                )
        with self._lock:
            self._batches.pop(batch_id, None)
        self.core.blobs.delete(_blob_key(batch_id))
        return json_response({"id": batch_id, "type": "message_batch_deleted"})

    def _results(self, batch_id: str) -> Response:
        batch = self._batch(batch_id)
        now = self.core.clock.now()
        with batch.lock:
            status = self._status(batch, now)
        if status != "ended":
            raise _Invalid(
                400,
                f"Results for message batch '{batch_id}' are not available: its "
                f"processing_status is '{status}'.",
            )
        if now >= batch.created + RETENTION:
            raise _Invalid(404, f"Results for message batch '{batch_id}' have been archived.")
        try:
            data = self.core.blobs.get(_blob_key(batch_id))
        except KeyError as e:
            raise _Invalid(404, f"No results for message batch '{batch_id}'.") from e

        def chunks() -> Iterator[bytes]:
            view = memoryview(data)
            for start in range(0, len(data), CHUNK):
                yield bytes(view[start : start + CHUNK])

        headers = {"content-type": "application/binary"}
        return Response(200, headers, chunks())

    # ---- lifecycle

    def _status(self, batch: _Batch, now: float) -> str:
        """Current processing_status; writes the results the first time it is ``ended``."""
        if batch.ended_at is not None:
            return "ended"
        if batch.cancel_at is not None:
            if now < batch.cancel_at + batch.cancel_delay:
                return "canceling"
            ran = batch.finished(batch.cancel_at)
            self._finish(batch, batch.cancel_at + batch.cancel_delay, ran, "canceled")
            return "ended"
        if batch.latency > DAY and now >= batch.created + DAY:
            self._finish(batch, batch.created + DAY, batch.finished(batch.created + DAY), "expired")
            return "ended"
        if now >= batch.created + batch.latency:
            self._finish(batch, batch.created + batch.latency, batch.n, "expired")  # all ran
            return "ended"
        return "in_progress"

    def _finish(self, batch: _Batch, ended_at: float, ran: int, rest: str) -> None:
        """Write the results of a batch whose first ``ran`` requests were executed."""
        specs = batch.specs or []
        if batch.ledger is not None and ran < len(specs):
            batch.ledger.ran = ran
        key = batch.id[-12:]
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        lines: list[str] = []
        errored: list[int] = []
        gone: dict[str, int] = {}  # per model: the requests run before its shutdown
        for i, spec in enumerate(specs):
            rid = f"{key}{i:06x}"
            if spec.error is None and spec.model not in gone:
                since = self.core.gone_since("anthropic", spec.model, batch.created)
                gone[spec.model] = batch.n if since is None else batch.finished(since)
            if i >= ran:
                result: dict[str, Any] = {"type": rest}
                counts[rest] += 1
            elif spec.error is not None:
                result = _errored(*spec.error, rid)
                counts["errored"] += 1
                errored.append(i)
            elif i >= gone[spec.model]:
                # Its model was shut down before it ran (EmulatorCore.gone_since). Anthropic's
                # deprecations page: "Retired: The model is no longer available for use.
                # Requests to retired models will fail" (platform.claude.com/docs/en/
                # about-claude/model-deprecations); it does not say what becomes of a batch
                # still processing then, so the strict reading: the request ends errored as
                # a request naming that model does, 404 not_found_error "model: <name>"
                # (weval-org/app issue 24, anthropics/claude-code-security-review issue 88),
                # not billed (LedgerEntry.unbilled).
                result = _errored("not_found_error", f"model: {spec.model}", rid)
                counts["errored"] += 1
                errored.append(i)
            else:
                cache = self.caches.anthropic(spec.model, spec.breakpoints, ended_at)
                message = render_message(spec, rid, cache=cache)
                result = {"type": "succeeded", "message": message}
                counts["succeeded"] += 1
            lines.append(_compact({"custom_id": spec.custom_id, "result": result}))
        # Results come "in arbitrary order": a fixed scramble makes clients key on custom_id.
        order = sorted(range(len(lines)), key=lambda i: answers.seed_int(specs[i].custom_id))
        payload = "".join(lines[i] + "\n" for i in order).encode("utf-8")
        self.core.blobs.put(_blob_key(batch.id), payload)
        if batch.ledger is not None:  # errored requests are not billed (LedgerEntry.unbilled)
            batch.ledger.unbilled |= frozenset(errored)
        batch.counts = counts
        batch.specs = None  # the answers are on disk now
        batch.ended_at = ended_at

    def _view(
        self, batch: _Batch, request: Request, *, answer: str | None = None
    ) -> dict[str, Any]:
        """The MessageBatch object; ``answer`` is the status a create/cancel call reports."""
        now = self.core.clock.now()
        with batch.lock:
            status = answer if answer and batch.ended_at is None else self._status(batch, now)
        ended = status == "ended"
        if ended:
            counts = dict(batch.counts)
        else:
            counts = {"processing": batch.n, "succeeded": 0, "errored": 0, "canceled": 0,
                      "expired": 0}  # fmt: skip
        archived = batch.created + RETENTION
        prefix = request.path[: len(request.path) - len(request.route)] if request.route else ""
        results_url = (
            f"{request.base_url}{prefix}/v1/messages/batches/{batch.id}/results" if ended else None
        )
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "created_at": rfc3339(batch.created),
            "expires_at": rfc3339(batch.created + DAY),
            "ended_at": rfc3339(batch.ended_at) if ended and batch.ended_at is not None else None,
            "cancel_initiated_at": None if batch.cancel_at is None else rfc3339(batch.cancel_at),
            "archived_at": rfc3339(archived) if ended and now >= archived else None,
            "results_url": results_url,
        }

    # ---- real-time endpoint: the same answers, at once

    def _realtime(self, request: Request) -> Response:
        try:
            params = json_body(request)
        except ValueError as e:
            raise _Invalid(400, f"The request body is not valid JSON: {e}") from e
        if not isinstance(params, dict):
            raise _Invalid(400, "Input should be a valid dictionary")
        # ``stream`` is a boolean of the Messages API (anthropic 2.14
        # ``MessageCreateParamsStreaming``); batches refuse it, this endpoint streams.
        streamed = params.pop("stream", False)
        if not isinstance(streamed, bool):
            raise _Invalid(400, "stream: Input should be a valid boolean", "invalid_request_error")
        builder = _SpecBuilder(self.core.served_now(), _api_version(request))
        invalid = version_error(params, builder.version) or builder.check(params)
        if invalid is not None:
            raise _Invalid(400, invalid, "invalid_request_error")
        spec = builder.build("realtime", params)
        rid = self.core.new_id("", 12)
        if spec.error is not None:
            kind, message = spec.error
            status = next((s for s, k in _ERROR_TYPES.items() if k == kind), 500)
            raise _Invalid(status, message, kind)
        with self.core.realtime_call():
            cache = self.caches.anthropic(spec.model, spec.breakpoints, self.core.clock.now())
            answer = render_message(spec, rid, cache=cache)
            answer["usage"]["service_tier"] = "standard"
            self.core.bill_realtime(
                "anthropic", answers.request_key("anthropic", spec.model, spec.prompt)
            )
        if streamed:
            headers = {"content-type": "text/event-stream", "cache-control": "no-cache",
                       "request-id": "req_" + rid}  # fmt: skip
            return Response(200, headers, stream_events(answer))
        return json_response(answer, headers={"request-id": "req_" + rid})


#: characters of text (or tool input JSON) per ``content_block_delta``
STREAM_DELTA_CHARS: Final = 256


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {_compact(event)}\n\n".encode()


def stream_events(message: dict[str, Any]) -> Iterator[bytes]:
    r"""The server-sent events a streamed ``POST /v1/messages`` answers ``message`` with.

    As Anthropic's streaming guide gives them
    (platform.claude.com/docs/en/build-with-claude/streaming, "Event types"): a
    ``message_start`` holding the message with empty ``content`` and ``stop_reason`` null;
    per content block a ``content_block_start`` (the block with its text, thinking or input
    empty), its ``content_block_delta`` events (``text_delta``, ``citations_delta`` one per
    citation, ``thinking_delta``, ``signature_delta`` just before the block's stop,
    ``input_json_delta`` with ``partial_json``) and ``content_block_stop``; a ``ping``;
    ``message_delta`` with ``stop_reason`` and the cumulative ``usage``; ``message_stop``.
    The event shapes are anthropic 2.14's ``RawMessageStreamEvent`` union, whose
    ``accumulate_event`` rebuilds ``message`` from them.

    Examples
    --------
    >>> msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
    ...        "content": [{"type": "text", "text": "hi", "citations": None}],
    ...        "stop_reason": "end_turn", "stop_sequence": None, "stop_details": None,
    ...        "container": None, "usage": {"input_tokens": 3, "output_tokens": 1}}
    >>> [e.split(b"\n")[0].decode() for e in stream_events(msg)]  # doctest: +NORMALIZE_WHITESPACE
    ['event: message_start', 'event: content_block_start', 'event: ping',
     'event: content_block_delta', 'event: content_block_stop', 'event: message_delta',
     'event: message_stop']
    """
    usage = dict(message["usage"])
    # message_start carries the input side; output_tokens grows to its total in message_delta
    start_usage = {**usage, "output_tokens": min(1, usage["output_tokens"]),
                   "output_tokens_details": None}  # fmt: skip
    shell = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "stop_details": None, "usage": start_usage}  # fmt: skip
    yield _sse({"type": "message_start", "message": shell})
    for index, block in enumerate(message["content"]):
        yield from _block_events(index, block, ping=index == 0)
    if not message["content"]:
        yield _sse({"type": "ping"})
    delta_usage = {
        key: usage.get(key)
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                    "output_tokens", "output_tokens_details", "server_tool_use")
    }  # fmt: skip
    delta = {
        "stop_reason": message["stop_reason"],
        "stop_sequence": message["stop_sequence"],
        "stop_details": message.get("stop_details"),
        "container": message.get("container"),
    }
    yield _sse({"type": "message_delta", "delta": delta, "usage": delta_usage})
    yield _sse({"type": "message_stop"})


def _pieces(text: str) -> Iterator[str]:
    for i in range(0, len(text), STREAM_DELTA_CHARS):
        yield text[i : i + STREAM_DELTA_CHARS]


def _block_events(index: int, block: dict[str, Any], *, ping: bool) -> Iterator[bytes]:
    kind = block["type"]
    deltas: list[dict[str, Any]] = []
    if kind == "text":
        start: dict[str, Any] = {"type": "text", "text": ""}
        cites = block.get("citations") or ()
        deltas.extend({"type": "citations_delta", "citation": c} for c in cites)
        deltas.extend({"type": "text_delta", "text": t} for t in _pieces(block["text"]))
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas.extend({"type": "thinking_delta", "thinking": t} for t in _pieces(block["thinking"]))
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    elif kind == "tool_use":
        start = {**block, "input": {}}
        whole = _compact(block["input"])
        deltas.extend({"type": "input_json_delta", "partial_json": t} for t in _pieces(whole))
    else:  # pragma: no cover - the emulator answers only the kinds above
        msg = f"no stream events for a {kind!r} block"
        raise ValueError(msg)
    yield _sse({"type": "content_block_start", "index": index, "content_block": start})
    if ping:  # where the streaming guide's example stream has its ping
        yield _sse({"type": "ping"})
    for delta in deltas:
        yield _sse({"type": "content_block_delta", "index": index, "delta": delta})
    yield _sse({"type": "content_block_stop", "index": index})


def _blob_key(batch_id: str) -> str:
    return f"anthropic-{batch_id}"
