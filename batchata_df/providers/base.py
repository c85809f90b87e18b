"""The provider contract: one small protocol, one method per lifecycle step of a batch.

A provider is split into three parts (see ``ARCHITECTURE.md``): *encode* turns jobs into
request lines (vectorised, no I/O), the *client* methods (``submit``, ``poll``,
``results``, ``cancel``, ``find``) make the SDK calls, and *decode* turns result lines into
the normalized :data:`RESULTS` frame. SDK exceptions are translated to
:mod:`batchata_df.errors` inside the provider module and nowhere else.
"""

from __future__ import annotations

import codecs
import enum
import functools
import hashlib
import io
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import polars as pl

from batchata_df.errors import CredentialsError
from batchata_df.schema import AnswerSchema

__all__ = [
    "LINE_COLUMN",
    "ORPHAN_SEARCH_MAX_LISTED",
    "JoinedChunks",
    "JoinedLines",
    "request_lines",
    "ORPHAN_SEARCH_SECONDS",
    "bounded_listing",
    "RESULTS",
    "BatchPoll",
    "RealtimeFailure",
    "RealtimeProvider",
    "retry_after_seconds",
    "header_api_key",
    "BatchTag",
    "Download",
    "DownloadBuffer",
    "DownloadSink",
    "DOWNLOAD_RETRY_SECONDS",
    "Provider",
    "ProviderState",
    "RequestSpec",
    "conform_results",
    "cut_answer",
    "decoded_download",
    "decoded_results",
    "download_digest",
    "first_not_utf8",
    "NOT_UTF8_ERROR",
    "not_utf8_again",
    "not_utf8_answer",
    "not_utf8_reason",
    "remember_damaged",
    "whole_download",
    "failure_kind",
    "kept_response",
    "transport_failure",
    "empty_results",
    "history_messages",
    "all_null",
    "null_typed",
    "column_json_string",
    "json_object",
    "json_string",
    "none_true",
    "result_lines",
    "streamed_download",
    "with_result_lines",
]


class ProviderState(enum.StrEnum):
    """Where a provider batch is, normalized across providers."""

    RUNNING = "running"
    """Accepted, not finished (validating, in progress, finalizing, cancelling)."""
    ENDED = "ended"
    """Finished; per-request results are available."""
    CANCELLED = "cancelled"
    """Cancelled; results of requests finished before the cancel are available."""
    EXPIRED = "expired"
    """Not finished in the provider's window; finished requests may be available."""
    FAILED = "failed"
    """Rejected as a whole (e.g. input validation); no results."""


@dataclass(frozen=True)
class BatchPoll:
    """One observation of a provider batch."""

    state: ProviderState
    provider_status: str
    detail: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    """The provider's request counts as it names them (OpenAI ``total``/``completed``/
    ``failed``; Anthropic ``processing``/``succeeded``/``errored``/``canceled``/``expired``
    plus our ``total``; Gemini ``total``/``pending``/``completed``/``failed``); empty when
    the provider reported none."""

    @property
    def finished(self) -> int:
        """Requests the provider has finished so far (answered, errored, cancelled, expired).

        Examples
        --------
        >>> BatchPoll(ProviderState.RUNNING, "in_progress",
        ...           counts={"total": 10, "completed": 3, "failed": 1}).finished
        4
        >>> BatchPoll(ProviderState.RUNNING, "in_progress",
        ...           counts={"total": 10, "processing": 10, "succeeded": 0}).finished
        0
        """
        c = self.counts
        if not c:
            return 0
        total = c.get("total", 0)
        if "processing" in c:
            return max(total - c["processing"], 0)
        if "pending" in c:
            return max(total - c["pending"], 0)
        return c.get("completed", 0) + c.get("failed", 0)


@dataclass(frozen=True)
class BatchTag:
    """What we attach to a provider batch so that a resumed run can find it again."""

    run_id: str
    batch_key: str
    created_after: float
    """Unix time just before the submit was attempted (bounds the search)."""
    n_jobs: int | None = None
    """Requests in the batch, for providers that can only match a batch by its size."""
    job_ids: frozenset[str] = frozenset()
    """The batch's ``custom_id`` s (set on resume), to confirm a candidate by its results."""
    known_batch_ids: frozenset[str] = frozenset()
    """Provider batch ids this run already recorded: never an orphan."""
    members: pl.Series | None = field(default=None, compare=False, repr=False)
    """The same ``custom_id`` s as the column the engine has (a batch being sent): made a
    set only when a lookup needs one (:meth:`member_ids`), i.e. after a failed create,
    not for every batch sent (a set of 50,000 ids costs ~10 ms; ``benchmarks/PROFILE.md``)."""

    def member_ids(self) -> frozenset[str]:
        """The batch's ``custom_id`` s: ``job_ids`` and ``members`` together.

        Examples
        --------
        >>> tag = BatchTag("run", "b1", 0.0, members=pl.Series(["a", "b"]))
        >>> sorted(tag.member_ids())
        ['a', 'b']
        """
        if self.members is None:
            return self.job_ids
        return self.job_ids | frozenset(self.members.drop_nulls().to_list())


@dataclass(frozen=True)
class RequestSpec:
    """Everything about a request that is the same for every job of a run."""

    schema: AnswerSchema
    params: dict[str, Any]
    citations: bool = False
    """Citations on: no structured output, the schema goes in the system prompt instead
    and answers carry per-field citations (:mod:`batchata_df.citations`)."""
    keep_responses: bool = False
    """Keep each request's result as the provider sent it (``RESULTS.response``: the
    OpenAI output/error file line, the Anthropic results line, the Gemini result-file line
    or inlined response); without it ``response`` is null and nothing extra is held."""
    prepare: Callable[[pl.DataFrame], pl.DataFrame] | None = None
    """Adds per-job columns that are too big to hold for every job at once (the
    ``content_json`` of file inputs); called on each slice of jobs right before ``encode``,
    so memory holds one slice's payload, not the run's."""
    prompt_caching: bool = True
    """Order jobs so that shared prefixes are adjacent and mark them for the provider's
    prompt cache (:mod:`batchata_df.caching`); the answers do not depend on it."""

    def schema_in_prompt(self, provider: str, model: str | None) -> bool:
        """Whether ``model``'s requests carry the schema in the system prompt.

        Claude gets the JSON Schema in the system prompt instead of ``output_config.format``
        with citations on (Anthropic refuses both together), and on a model that takes no
        structured output (Claude Opus 4, Sonnet 4, 3.7 and older:
        ``models.Family.structured_output``), as the seed library did for every Claude
        model. Decided per model, so one old model in a run changes nothing for the others.

        Examples
        --------
        >>> from batchata_df.schema import AnswerSchema
        >>> from pydantic import BaseModel
        >>> class A(BaseModel):
        ...     x: int
        >>> spec = RequestSpec(AnswerSchema(A), {})
        >>> [spec.schema_in_prompt("anthropic", m) for m in
        ...  ("claude-sonnet-4-20250514", "claude-haiku-4-5")]
        [True, False]
        >>> spec.schema_in_prompt("openai", "gpt-4-turbo")
        False
        """
        if self.schema.json_schema is None or provider != "anthropic":
            return False
        if self.citations:
            return True
        from batchata_df.models import family_of

        return model is not None and not family_of(provider, model).structured_output


RESULTS = pl.Schema(
    {
        "job_id": pl.String(),
        "outcome": pl.String(),  # succeeded | errored | canceled | expired
        "text": pl.String(),
        "error": pl.String(),
        "truncated": pl.Boolean(),
        "input_tokens": pl.Int64(),
        "output_tokens": pl.Int64(),
        "cached_tokens": pl.Int64(),
        "cache_write_tokens": pl.Int64(),  # part of input_tokens written to the cache
        "reasoning_tokens": pl.Int64(),  # the thinking part of output_tokens
        "citations": pl.String(),  # JSON {"field": [citation, ...]}; null without citations
        "response": pl.String(),  # the provider's own result line for the request, verbatim
        # The model that answered as the response names it (Gemini's ``modelVersion``);
        # null where not read. It differs from the model asked for when the provider
        # routed it to a successor (engine.collection prices the row at it).
        "model": pl.String(),
    }
)
"""Normalized per-request results that every provider's ``results`` returns."""


def empty_results() -> pl.DataFrame:
    """An empty frame with the :data:`RESULTS` schema."""
    return pl.DataFrame(schema=RESULTS)


def conform_results(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with the :data:`RESULTS` columns in order and types; missing ones null.

    Examples
    --------
    >>> conform_results(pl.DataFrame({"job_id": ["a"]})).columns[-1]
    'model'
    """
    return frame.select(
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in RESULTS.items()
    )


Download = bytes | bytearray
"""A results download: ``bytes``, or the memory of a :class:`DownloadBuffer`."""

JSONL_SLICE_BYTES = 1 << 20
"""Bytes of JSON Lines decoded at a time by :func:`read_jsonl`'s Polars path (whole lines)."""
ARROW_BLOCK_BYTES = 8 << 20
"""Bytes of JSON Lines pyarrow's reader parses at a time in :func:`read_jsonl` (its block
size). Each block is a chunk of every column: 8 MiB took 5-15 % less CPU per download than
1 MiB blocks (``benchmarks/PROFILE.md``, tenth pass), for ~8 MiB more working memory."""


def read_jsonl(
    data: Download, schema: pl.Schema, *, usual: pl.Schema | None = None
) -> pl.DataFrame:
    r"""Parse JSON Lines into a frame of ``schema``, the same frame ``pl.read_ndjson`` gives.

    pyarrow's JSON reader is tried first (:func:`_read_jsonl_arrow`); when it refuses the
    data, each slice of about :data:`JSONL_SLICE_BYTES` (whole lines) is split into lines by
    Polars' CSV reader (no quoting; the separator, ``\x1f``, cannot occur raw in JSON
    text, which escapes control characters) and decoded with one ``str.json_decode``.
    For result files that is about 4x less CPU than ``read_ndjson`` (polars 2.1; see
    ``benchmarks/PROFILE.md``), and slicing keeps the decoder's working memory to a few
    MB whatever the file's size. Blank lines are skipped, fields outside ``schema``
    ignored, and a malformed line raises ``polars.exceptions.ComputeError``, as there.

    ``usual``, when given, is ``schema`` with the fields that almost every line leaves null
    or out (a line's error, a refusal) typed ``pl.Null`` (:func:`null_typed`): pyarrow
    reads it first, which costs less than building those columns' nulls line by line,
    and refuses it as soon as one line holds a value there (``changed from null to
    object``); then ``schema`` is read. Either way the frame is ``schema``'s, the same.

    Examples
    --------
    >>> data = b'{"id":"a","n":1,"extra":[1]}\r\n\n{"id":"b\\n","n":null}\n'
    >>> read_jsonl(data, pl.Schema({"id": pl.String, "n": pl.Int64})).rows()
    [('a', 1), ('b\n', None)]
    >>> schema = pl.Schema({"id": pl.String, "error": pl.Struct({"code": pl.String})})
    >>> usual = null_typed(schema, ("error",))
    >>> read_jsonl(b'{"id":"a","error":null}', schema, usual=usual).schema == schema
    True
    >>> read_jsonl(b'{"id":"a"}\n{"id":"b","error":{"code":"x"}}', schema, usual=usual).rows()
    [('a', None), ('b', {'code': 'x'})]
    """
    fast = _read_jsonl_arrow(data, schema, usual)
    return fast if fast is not None else _read_jsonl_polars(data, schema)


def null_typed(schema: pl.Schema, *paths: tuple[str, ...]) -> pl.Schema:
    """``schema`` with the field at each path typed ``pl.Null`` (:func:`read_jsonl`'s ``usual``).

    A path names struct fields from the top; a list on the way is stepped through (its
    items' field).

    Examples
    --------
    >>> schema = pl.Schema({"a": pl.List(pl.Struct({"b": pl.String, "c": pl.Int64}))})
    >>> null_typed(schema, ("a", "b"))
    Schema([('a', List(Struct({'b': Null, 'c': Int64})))])
    """

    def nulled(dtype: Any, path: tuple[str, ...]) -> Any:
        if isinstance(dtype, pl.List):
            return pl.List(nulled(dtype.inner, path))
        if not path:
            return pl.Null()
        if not isinstance(dtype, pl.Struct) or path[0] not in {f.name for f in dtype.fields}:
            msg = f"no field {path[0]!r} in {dtype}"
            raise KeyError(msg)
        return pl.Struct(
            {f.name: nulled(f.dtype, path[1:]) if f.name == path[0] else f.dtype
             for f in dtype.fields}
        )

    out = dict(schema)
    for path in paths:
        if path[0] not in out:
            msg = f"no field {path[0]!r} in the schema"
            raise KeyError(msg)
        out[path[0]] = nulled(out[path[0]], path[1:])
    return pl.Schema(out)


def is_blank(data: Download) -> bool:
    r"""Whether ``data`` is empty or only whitespace, without copying it (``not data.strip()``).

    A results download is tens of MB: ``data.strip()`` copies all of it to test the ends.

    Examples
    --------
    >>> is_blank(b""), is_blank(b" \r\n"), is_blank(b'\n{"a":1}\n')
    (True, True, False)
    """
    return not data or data.isspace()


def strip_ends(data: Download) -> Download:
    r"""``data.strip()``, without copying ``data`` when only a final newline would go.

    A results download is tens of MB and ends in one ``\n``: the lines (:func:`read_jsonl`,
    :func:`result_lines`) are the same with or without it, so it is kept rather than copy
    the download; any other whitespace at either end is stripped as before.

    Examples
    --------
    >>> data = b'{"a":1}\n'
    >>> strip_ends(data) is data, strip_ends(b' {"a":1}\r\n'), strip_ends(b"\n")
    (True, b'{"a":1}', b'')
    """
    last, before = data[-1:], data[-2:-1]
    if data[:1].isspace() or before.isspace() or (last.isspace() and last != b"\n"):
        return data.strip()
    return data


def _read_jsonl_polars(data: Download, schema: pl.Schema) -> pl.DataFrame:
    """:func:`read_jsonl` with Polars alone (CSV line split, ``str.json_decode``)."""
    dtype = pl.Struct(schema)
    view = memoryview(data)
    parts = [pl.DataFrame(schema=schema)]
    start = 0
    while start < len(data):
        end = data.find(b"\n", start + JSONL_SLICE_BYTES)
        end = len(data) if end < 0 else end + 1
        lines = pl.read_csv(
            io.BytesIO(view[start:end]),
            has_header=False,
            separator="\x1f",
            quote_char=None,
            schema={"line": pl.String()},
        )
        parts.append(
            lines.lazy()
            .filter(pl.col("line").str.contains(r"\S"))
            .select(pl.col("line").str.json_decode(dtype).struct.unnest())
            .collect()
        )
        start = end
    return pl.concat(parts)


def _arrow_type(dtype: Any) -> Any:
    """The Arrow type pyarrow's JSON reader is given for a Polars dtype of a line schema."""
    import pyarrow as pa  # type: ignore[import-untyped]

    if isinstance(dtype, pl.Struct):
        return pa.struct([(f.name, _arrow_type(f.dtype)) for f in dtype.fields])
    if isinstance(dtype, pl.List):
        return pa.list_(_arrow_type(dtype.inner))
    if dtype == pl.String():
        return pa.string()
    return pl.Series([], dtype=dtype).to_arrow().type


_OBJECT_FIRST = re.compile(rb"\s*\{")
_NULL_LINE = re.compile(rb"[\r\n][ \t]*null")
"""A ``null`` line after the first (after any spaces or tabs: pyarrow 26 crashes on ``  null``
as on ``null`` at a block's start; after LF, or a bare CR, which pyarrow also takes for a
line end). :func:`has_null_line` searches it as its two
halves, :data:`_NULL_AFTER_LF` and :data:`_NULL_AFTER_CR`: one search of the whole pattern
(seventh pass: it replaced three ``in`` tests, ~55 against ~12 ms per 50,000-line file)
starts with a class of two bytes, which neither regex engine can skip to."""
_NULL_AFTER_LF = re.compile(rb"\n[ \t]*null")
_NULL_AFTER_CR = re.compile(rb"\r[ \t]*null")
""":data:`_NULL_LINE` is found exactly when one of these is. Each starts with one literal
byte, which RE2 and Python's ``re`` find by ``memchr`` and test the few bytes after: RE2
~3 against ~65 ms per 41 MB OpenAI download (``benchmarks/PROFILE.md``, eleventh pass)."""

_RE2_MIN_BYTES = 16 << 20
"""Smallest download :func:`has_null_line` gives to Arrow's RE2: below it, Python's ``re``
(~0.5 ms per MB) costs less than importing ``pyarrow.compute`` (~30 ms, once per process)."""
_RE2_MAX_BYTES = 1 << 30
"""Largest download :func:`has_null_line` gives to Arrow's RE2 (beyond: Python's ``re``)."""
_OFFSETS = struct.Struct("<qq")
"""The offsets buffer of a one-value ``large_binary`` array: 0 and the value's length."""


def has_null_line(data: Download) -> bool:
    r"""Whether a line of ``data`` after the first is ``null`` (:data:`_NULL_LINE` occurs).

    The same answer as ``_NULL_LINE.search(data) is not None``, searched as its two halves
    (:data:`_NULL_AFTER_LF`, :data:`_NULL_AFTER_CR`), each of which starts with a byte the
    engines skip to (``memchr``) where the whole pattern's first class made them test every
    byte: ~20x less CPU with RE2 (``benchmarks/PROFILE.md``, eleventh pass). A download of
    :data:`_RE2_MIN_BYTES` or more is searched by Arrow's RE2 in place (a one-value binary
    array on its buffer, no copy). RE2's unanchored search steps over any byte, so bytes
    that are not UTF-8 do not hide a match.

    Examples
    --------
    >>> has_null_line(b'{"a":null}\r\n\tnull\n'), has_null_line(b'{"a":null}\n \t null')
    (True, True)
    >>> has_null_line(b'{"a":null}\n{"b":"null"}')
    False
    >>> has_null_line(b'{"a":1}\rnull')  # a bare CR ends a line for pyarrow too
    True
    """
    halves = (_NULL_AFTER_LF, _NULL_AFTER_CR)
    if not _RE2_MIN_BYTES <= len(data) <= _RE2_MAX_BYTES:
        return any(half.search(data) is not None for half in halves)
    try:
        import pyarrow as pa
        import pyarrow.compute as pc  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        return any(half.search(data) is not None for half in halves)
    offsets = pa.py_buffer(_OFFSETS.pack(0, len(data)))
    whole = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(data)])
    return any(
        bool(pc.match_substring_regex(whole, half.pattern.decode())[0].as_py())
        for half in halves
    )


@functools.lru_cache(maxsize=64)
def _arrow_plan(items: tuple[tuple[str, Any], ...]) -> tuple[Any, bool]:
    """The Arrow schema pyarrow reads a line schema's items with, and whether they come back.

    Whether ``pl.from_arrow`` gives back the line schema's own types: then no cast is needed.
    Once per schema: building it (~1 ms) and comparing a frame's nested schema with it (~3
    ms) took ~4 ms per download (``benchmarks/PROFILE.md``, sixteenth pass).
    """
    import pyarrow as pa

    arrow = pa.schema([(name, _arrow_type(dtype)) for name, dtype in items])
    empty = pl.from_arrow(arrow.empty_table())
    assert isinstance(empty, pl.DataFrame)
    return arrow, empty.schema == pl.Schema(dict(items))


def _arrow_pool() -> Any:
    """The memory pool pyarrow's JSON reader builds a download's columns in: the system's.

    pyarrow's default pool (mimalloc, in the pyarrow 26 wheels) backs a result file's
    columns with transparent huge pages and gives them back between downloads, so each
    download faulted its columns in afresh, 2 MB zeroed at a time: in a 1M-row Gemini run
    (ten 100,000-line files) ``read_json`` took 0.30-0.37 s of system CPU in 8.6k faults,
    against 0.03 s (27k small faults) from the system's allocator, the same user CPU
    (1.25-1.26 s) and frame (``benchmarks/PROFILE.md``, twenty-first pass). Only the
    reader's allocations change: the process's default pool is left as it is.
    """
    import pyarrow as pa

    return pa.system_memory_pool()


def _read_jsonl_arrow(
    data: Download, schema: pl.Schema, usual: pl.Schema | None = None
) -> pl.DataFrame | None:
    """:func:`read_jsonl` through pyarrow's JSON reader, or ``None`` if it refuses the data.

    pyarrow parses JSON Lines against an explicit schema about 1.5x faster than
    ``str.json_decode`` (``benchmarks/PROFILE.md``), in blocks of
    :data:`ARROW_BLOCK_BYTES` on this thread.
    It is stricter (a value of another JSON type than the schema's, an integer past
    Int64, a malformed line are errors): on any error the caller decodes with Polars,
    which gives the same frame or the error ``read_ndjson`` would give.
    """
    try:
        import pyarrow as pa
        import pyarrow.json as pj  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        return None
    if _OBJECT_FIRST.match(data) is None or has_null_line(data):
        # pyarrow 26 crashes the process (SIGSEGV) on a `null` line at the start of a
        # block (the file's first line, or one after a block boundary): data with such a
        # line goes to Polars. A raw newline never occurs inside a JSON string, so these
        # only match lines that are `null`.
        return None
    # The usual lines' schema first: a line with a value where it types Null is refused,
    # and then the whole schema is read.
    for tried in (schema,) if usual is None else (usual, schema):
        arrow_schema, same_types = _arrow_plan(tuple(tried.items()))
        try:
            table = pj.read_json(
                pa.BufferReader(data),  # the download in place: io.BytesIO copied each block
                read_options=pj.ReadOptions(use_threads=False, block_size=ARROW_BLOCK_BYTES),
                parse_options=pj.ParseOptions(
                    explicit_schema=arrow_schema, unexpected_field_behavior="ignore"
                ),
                memory_pool=_arrow_pool(),
            )
        except (pa.ArrowException, ValueError):
            continue
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        # Arrow's types of a line schema come back as its Polars types: the cast (a pass
        # over every column) is only for a schema where they do not, and to type the
        # usual schema's Null fields as ``schema`` has them (columns of nulls, ~1 ms).
        return frame if tried is schema and same_types else frame.cast(schema)
    return None


class DownloadBuffer:
    r"""The memory of a provider's results downloads, kept from one download to the next.

    A download of 40 to 70 MB written into a fresh ``bytes`` has all its pages faulted in
    by the kernel for every batch (the allocator maps a block that large afresh and unmaps
    it when freed): ~16,000 minor faults and ~0.04 s of system CPU per 67 MB, ~0.4 s per
    1M rows (``benchmarks/PROFILE.md``, tenth pass). Written where the previous download
    was, its pages are faulted in once per provider. :meth:`receive` lends the buffer to
    one download at a time: its bytes are valid inside the ``with`` block only, and the
    decoders copy what they keep (pyarrow's reader, the Polars path and ``result_lines``
    all do), so a frame never refers to it. A second thread, or a buffer still exported
    (a view kept past its block, when the next download must grow or shrink the memory),
    gets fresh memory instead; a view kept past its block is otherwise overwritten by the
    next download, so a decoder must never keep one (none does:
    ``tests/test_decode_equivalence.py`` checks each batch's frame after the later
    downloads). :meth:`release` (the provider's ``close``) gives the memory back.

    Examples
    --------
    >>> buffer = DownloadBuffer()
    >>> with buffer.receive() as sink:
    ...     _ = sink.write(b'{"a":1}\n'), sink.write(b'{"a":2}\n')
    ...     sink.getvalue()
    bytearray(b'{"a":1}\n{"a":2}\n')
    >>> with buffer.receive() as sink:
    ...     _ = sink.write(b"{}")
    ...     bytes(sink.getvalue())
    b'{}'
    """

    def __init__(self) -> None:
        self._memory = bytearray()
        self._lock = threading.Lock()

    @contextmanager
    def receive(self) -> Iterator[DownloadSink]:
        """A sink to write one download into (``write`` its chunks, then ``getvalue``)."""
        if not self._lock.acquire(blocking=False):  # another thread's download: fresh memory
            yield DownloadSink(bytearray())
            return
        try:
            sink = DownloadSink(self._memory)
            yield sink
            self._memory = sink.memory
        finally:
            self._lock.release()

    def release(self) -> None:
        """Give the kept memory back (the next download starts from fresh memory)."""
        with self._lock:
            self._memory = bytearray()


class DownloadSink:
    """One download written into :class:`DownloadBuffer` memory: a file-like ``write``."""

    def __init__(self, memory: bytearray) -> None:
        self.memory = memory
        self._size = 0

    def rewind(self) -> None:
        """Start the download again: the next ``write`` goes to the start of the memory."""
        self._size = 0

    def write(self, chunk: bytes) -> int:
        """Append ``chunk`` after what was written before."""
        end = self._size + len(chunk)
        try:
            if end <= len(self.memory):
                self.memory[self._size : end] = chunk  # same length: copied in place
            else:
                self.memory[self._size :] = chunk  # grows the buffer
        except BufferError:  # a view of the previous download still exists: fresh memory
            self.memory = bytearray(self.memory[: self._size]) + chunk
        self._size = end
        return len(chunk)

    def getvalue(self) -> bytearray:
        """The download's bytes (valid until the next download through the same buffer)."""
        if len(self.memory) != self._size:
            try:
                del self.memory[self._size :]
            except BufferError:
                self.memory = self.memory[: self._size]
        return self.memory


DOWNLOAD_RETRY_SECONDS = (0.5, 8.0)
"""First and longest wait before a broken-off download is fetched again (the wait doubles
each time, less up to a quarter at random): the OpenAI and Anthropic SDKs' own retry waits."""


def streamed_download(
    opened: Callable[[], AbstractContextManager[Any]],
    sink: DownloadSink,
    *,
    retries: int,
    failed: str,
) -> bytearray:
    """A download streamed into ``sink``; fetched again from the start if broken off midway.

    ``opened`` makes the SDK's request and gives its streamed response (an object with
    ``iter_bytes``). The SDK retries what happens before the body (a refused connection, an
    HTTP error), but not the body itself: a body read after the SDK's request returned
    (``with_streaming_response``) that stops midway (a dropped connection, a read timeout)
    raises the HTTP library's own error, not the SDK's. Such a download is fetched again
    from the start, up to ``retries`` times with the SDKs' waits
    (:data:`DOWNLOAD_RETRY_SECONDS`), as the SDK retries a body it reads itself; then
    :class:`~batchata_df.errors.ProviderError` (``failed``: what failed, named) is raised,
    which the engine retries later. Only an error of the body's reading counts: one of the
    request itself is the SDK's to raise, one of ``sink`` is raised as it is.

    Examples
    --------
    >>> import contextlib
    >>> class Body:
    ...     def __init__(self, chunks): self.chunks = chunks
    ...     def iter_bytes(self): yield from self.chunks
    >>> with DownloadBuffer().receive() as sink:
    ...     bytes(streamed_download(lambda: contextlib.nullcontext(Body([b"a", b"b"])),
    ...                             sink, retries=0, failed="x failed"))
    b'ab'
    """
    import random

    from batchata_df.errors import ProviderError

    first, longest = DOWNLOAD_RETRY_SECONDS
    broken: Exception | None = None
    for attempt in range(retries + 1):
        sink.rewind()
        with opened() as response:
            chunks = iter(response.iter_bytes())
            while True:
                try:
                    chunk = next(chunks, None)
                except Exception as e:  # the body broken off: fetched again, or given up
                    broken = e
                    break
                if chunk is None:
                    return sink.getvalue()
                sink.write(chunk)
        if attempt < retries:
            time.sleep(min(first * 2**attempt, longest) * (1 - 0.25 * random.random()))
    assert broken is not None  # every attempt was broken off (retries >= 0)
    msg = f"{failed}: {type(broken).__name__}: {broken}"
    raise ProviderError(msg) from broken


_T = TypeVar("_T")


def decoded_download(decode: Callable[[], _T], *, failed: str) -> _T:
    r"""``decode()`` of a results download; one that cannot be decoded is a ``ProviderError``.

    A download can end early without any error: a close-delimited body (no
    ``content-length``) whose connection a proxy or the provider closes in order reads as
    a clean, shorter body, which no retry of the SDK or of :func:`streamed_download`
    sees. Its last line is then cut off, and the decoders (:func:`read_jsonl`) raise
    Polars' ``ComputeError``, which escaped the engine as a raw Polars traceback. It is
    raised instead as a transient :class:`~batchata_df.errors.ResultFileError` (``failed``
    names the provider, the batch and the file): the engine downloads the file again at
    its next poll, and past the provider patience leaves the batch's rows ``pending`` with
    the reason, for a later call to download it again. The batch itself is never sent
    again, so a file that stays malformed costs nothing twice and ends no row.

    Examples
    --------
    >>> schema = pl.Schema({"a": pl.Int64})
    >>> decoded_download(lambda: read_jsonl(b'{"a":1}\n', schema), failed="x").height
    1
    >>> decoded_download(lambda: read_jsonl(b'{"a":1}\n{"a', schema), failed="x")
    Traceback (most recent call last):
    ...
    batchata_df.errors.ResultFileError: x could not be decoded (ComputeError: ...); it will be ...
    """
    from batchata_df.errors import ResultFileError

    try:
        return decode()
    except pl.exceptions.ComputeError as e:
        # The first line says what failed to parse; the rest is Polars' expression trace.
        reason = next(iter(str(e).strip().splitlines()), "")
        msg = (
            f"{failed} could not be decoded ({type(e).__name__}: {reason}); it will be "
            "downloaded again at the next poll"
        )
        raise ResultFileError(msg) from e


def first_not_utf8(data: Download) -> int | None:
    r"""The offset of the first byte of ``data`` that is not UTF-8; ``None`` if all of it is.

    pyarrow's JSON reader does not check that string values are UTF-8: a complete JSON
    line with bytes that are not UTF-8 inside a string came out as a Polars ``String``
    column holding them, and Polars then panicked (``PanicException``) wherever it read the
    column (the answers' validation, printing the frame). An ASCII download
    (``isascii``) is UTF-8; else Arrow checks the download in place, as one string value.
    Either is ~0.1 ms of CPU per MB (``benchmarks/PROFILE.md``, thirteenth pass: UTF-8
    check); only a download that fails is decoded by Python, to find the offset.

    Examples
    --------
    >>> first_not_utf8(b'{"a":"caf\xc3\xa9"}\n'), first_not_utf8(b'{"a":"\xff"}\n')
    (None, 6)
    """
    if data.isascii():
        return None
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        pa = None
    if pa is not None and len(data) < 1 << 62:
        offsets = pa.py_buffer(_OFFSETS.pack(0, len(data)))
        whole = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)])
        try:
            whole.validate(full=True)
        except pa.ArrowInvalid:
            pass
        else:
            return None
        finally:
            del whole, offsets  # no view of the download outlives the check (DownloadBuffer)
    try:
        codecs.decode(data, "utf-8")
    except UnicodeDecodeError as e:
        return e.start
    return None


NOT_UTF8_ERROR = "not_utf8"
"""The prefix of ``_error`` on a row whose result line the provider served not UTF-8."""


class _DamagedDownloads:
    """Digests of the downloads found not UTF-8, by what was downloaded (:func:`decoded_results`).

    Process-wide, so a later call of the same process (``wait=False`` polling) knows the
    file too; a few hundred bytes per damaged file, kept until it downloads whole. A later
    process learns them from the state folder (:func:`remember_damaged`, fed by the
    engine from the digests its :class:`~batchata_df.errors.ResultFileError` carried).
    """

    def __init__(self) -> None:
        self._seen: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def served_again(self, key: str, digest: bytes) -> bool:
        """Whether ``digest`` is the download last found damaged under ``key`` (then: kept)."""
        with self._lock:
            again = self._seen.get(key) == digest
            self._seen[key] = digest
            return again

    def remember(self, key: str, digest: bytes) -> None:
        """``key`` was found damaged with ``digest`` (by an earlier process, or this one)."""
        with self._lock:
            self._seen[key] = digest

    def forget(self, key: str) -> None:
        """``key`` downloaded whole: a later damage starts afresh."""
        if self._seen:
            with self._lock:
                self._seen.pop(key, None)


_DAMAGED = _DamagedDownloads()


def download_digest(data: Download) -> bytes:
    """The digest by which a damaged download is known again (16 bytes of BLAKE2b)."""
    return hashlib.blake2b(data, digest_size=16).digest()


def remember_damaged(key: str, digest: bytes) -> None:
    """Let this process know that download ``key`` came damaged as ``digest`` before.

    The engine calls it with what its state folder recorded
    (:attr:`~batchata_df.errors.ResultFileError.damaged` of an earlier process), so the
    same bytes served again fail only their lines' rows at once, however many processes
    the polling spans (``wait=False``).
    """
    _DAMAGED.remember(key, digest)


def not_utf8_again(data: Download, *, failed: str) -> int | None:
    r"""Where ``data`` stops being UTF-8, once the same bytes came twice; ``None``: all UTF-8.

    The first time a download under the name ``failed`` is not UTF-8 it is a transient
    :class:`~batchata_df.errors.ResultFileError` (damaged on its way: providers send
    UTF-8; the engine downloads it again at its next poll, nothing paid twice) whose
    ``damaged`` holds ``(failed, digest)`` for the state folder. The same bytes again
    (in this process, or in one told by :func:`remember_damaged`) are the provider's: the
    offset of the first byte that is not UTF-8 is returned, for the caller to fail the
    damaged entries' rows. A whole download forgets the damage.

    Examples
    --------
    >>> not_utf8_again(b'{"a":"ok"}', failed="doc x") is None
    True
    >>> not_utf8_again(b'{"a":"\xffok"}', failed="doc x")
    Traceback (most recent call last):
    ...
    batchata_df.errors.ResultFileError: doc x is not UTF-8 (byte 6, line 1): damaged on its ...
    >>> not_utf8_again(b'{"a":"\xffok"}', failed="doc x")
    6
    """
    from batchata_df.errors import ResultFileError

    bad = first_not_utf8(data)
    if bad is None:
        _DAMAGED.forget(failed)
        return None
    digest = download_digest(data)
    if not _DAMAGED.served_again(failed, digest):
        line = data.count(b"\n", 0, bad) + 1
        msg = (
            f"{failed} is not UTF-8 (byte {bad}, line {line}): damaged on its way, as "
            "providers send UTF-8; it will be downloaded again at the next poll"
        )
        error = ResultFileError(msg)
        error.damaged = (failed, digest)
        raise error
    return bad


def not_utf8_reason(failed: str, *, entry: str = "result line") -> str:
    """The ``_error`` of a row whose result entry the provider served not UTF-8 twice."""
    return (
        f"{NOT_UTF8_ERROR}: the provider's {entry} for this request is not UTF-8 "
        f"(served so twice in {failed}); its bytes that are not UTF-8 read as U+FFFD in "
        "the raw answer; retry_failed=True sends the request again"
    )


def not_utf8_answer(frame: pl.DataFrame, bad: int | None, *, provider: str) -> pl.DataFrame:
    r"""A realtime result row whose answer came back not UTF-8 (``bad``: its first such byte).

    A realtime request cannot be downloaded again: asking again is a new request, paid
    again. The answer ran and was billed, so its row ends ``errored`` with a
    :data:`NOT_UTF8_ERROR` reason and keeps what the answer says it cost (its usage; the
    bytes that are not UTF-8 read as U+FFFD): the cost is counted against ``max_cost_usd``
    and ``retry_failed=True`` sends it again on purpose, as a new spend under the cap.
    ``bad=None`` (all UTF-8): ``frame`` as it is.

    Examples
    --------
    >>> row = pl.DataFrame({"outcome": ["succeeded"], "error": [None], "output_tokens": [9]})
    >>> out = not_utf8_answer(row, 41, provider="OpenAI")
    >>> out["outcome"][0], out["error"][0][:54], out["output_tokens"][0]
    ('errored', "not_utf8: OpenAI's answer to this request is not UTF-8", 9)
    """
    if bad is None:
        return frame
    reason = (
        f"{NOT_UTF8_ERROR}: {provider}'s answer to this request is not UTF-8 (byte {bad}); "
        "it ran and was billed (its cost is counted); its bytes that are not UTF-8 read as "
        "U+FFFD in the raw answer; retry_failed=True sends the request again, paid again "
        "within max_cost_usd"
    )
    return frame.with_columns(
        pl.lit("errored").alias("outcome"), pl.lit(reason, dtype=pl.String).alias("error")
    )


def decoded_results(
    data: Download, decode: Callable[[Download], pl.DataFrame], *, failed: str
) -> pl.DataFrame:
    r"""``decode(data)`` (one row per non-blank line) of a results download checked to be UTF-8.

    A download that is not UTF-8 (:func:`first_not_utf8`) is, the first time, a
    transient :class:`~batchata_df.errors.ResultFileError`: providers send UTF-8, so the
    likely cause is damage in transit, and the engine downloads the file again at its
    next poll (nothing is paid twice). When the same bytes come again (the provider serves
    its file so; :func:`not_utf8_again`), the lines that are UTF-8 are decoded as they
    are, and each line that is not ends its row ``errored`` with a :data:`NOT_UTF8_ERROR`
    reason (its bytes that are not UTF-8 read as U+FFFD, its tokens kept, so its cost
    counts): a row failed as data, which ``retry_failed=True`` sends again, never a lost
    row nor a Polars panic. Other decoding failures are :func:`decoded_download`'s.

    Examples
    --------
    >>> schema = pl.Schema({"id": pl.String, "text": pl.String})
    >>> def decode(data):
    ...     return read_jsonl(data, schema).with_columns(
    ...         outcome=pl.lit("succeeded"), error=pl.lit(None, pl.String))
    >>> bad = b'{"id":"a","text":"\xffhi"}\n{"id":"b","text":"ok"}\n'
    >>> decoded_results(bad, decode, failed="file f")
    Traceback (most recent call last):
    ...
    batchata_df.errors.ResultFileError: file f is not UTF-8 (byte 18, line 1): damaged ...
    >>> out = decoded_results(bad, decode, failed="file f")  # the same bytes again
    >>> out.select("id", "text", "outcome").rows()
    [('a', '\ufffdhi', 'errored'), ('b', 'ok', 'succeeded')]
    >>> out["error"][0].split(":")[0]
    'not_utf8'
    """
    from batchata_df.errors import ResultFileError

    bad = not_utf8_again(data, failed=failed)
    if bad is None:
        return decoded_download(lambda: decode(data), failed=failed)
    line = data.count(b"\n", 0, bad) + 1
    where = f"byte {bad}, line {line}"
    lines = [line for line in bytes(data).split(b"\n") if line.strip()]
    damaged = pl.Series([not _is_utf8(line) for line in lines], dtype=pl.Boolean)
    repaired = codecs.decode(data, "utf-8", errors="replace").encode("utf-8")
    decoded = decoded_download(lambda: decode(repaired), failed=failed)
    if decoded.height != damaged.len():  # the rows cannot be matched to the lines
        msg = (
            f"{failed} is not UTF-8 ({where}), again, and its lines could not be matched "
            "to its results; it will be downloaded again at the next poll"
        )
        raise ResultFileError(msg)
    reason = not_utf8_reason(failed)
    return decoded.with_columns(
        pl.when(damaged).then(pl.lit("errored")).otherwise(pl.col("outcome")).alias("outcome"),
        pl.when(damaged).then(pl.lit(reason)).otherwise(pl.col("error")).alias("error"),
    )


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def whole_download(decoded: pl.DataFrame, answered: int | None, *, failed: str) -> pl.DataFrame:
    r"""``decoded``, unless it holds fewer result lines than the provider says it answered.

    A download that ends early *at a line boundary* (or an empty body) decodes without
    error (:func:`decoded_download` cannot see it): its requests with no line would end
    ``failed`` with ``missing_result``, though they ran and were paid, and a later call
    would never download them again. When the provider's own count of the requests that
    have a result line (``answered``, from its final request counts) proves the file
    short, it is a transient :class:`~batchata_df.errors.ResultFileError`, as an undecodable
    download is: the engine downloads it again at its next poll, and past the provider
    patience leaves the rows ``pending``. ``None``: the provider gave no count that proves
    it (the frame is taken as it is).

    Examples
    --------
    >>> frame = pl.DataFrame({"job_id": ["a", "b"]})
    >>> whole_download(frame, 2, failed="x").height
    2
    >>> whole_download(frame, None, failed="x").height
    2
    >>> whole_download(frame, 3, failed="x")
    Traceback (most recent call last):
    ...
    batchata_df.errors.ResultFileError: x holds 2 result lines where the provider counts 3 ...
    """
    from batchata_df.errors import ResultFileError

    if answered is not None and decoded.height < answered:
        msg = (
            f"{failed} holds {decoded.height} result lines where the provider counts "
            f"{answered} answered requests: the download ended early; it will be "
            "downloaded again at the next poll"
        )
        raise ResultFileError(msg)
    return decoded


def result_lines(data: Download) -> pl.Series:
    r"""The non-blank lines of a JSONL results download, as they came (``response``).

    The same lines, in the same order, that ``pl.read_ndjson`` decodes (it skips blank
    lines), so the two line up row by row.

    Examples
    --------
    >>> result_lines(b'{"a":1}\r\n\n  \n{"a": 2}\n').to_list()
    ['{"a":1}', '{"a": 2}']
    """
    lines = (
        pl.Series("response", [data.decode("utf-8", errors="replace")], dtype=pl.String)
        .str.split("\n")
        .explode()
        .str.strip_suffix("\r")
    )
    return lines.filter(lines.str.strip_chars().str.len_bytes() > 0)


LINE_COLUMN = "__result_line"
"""The column :func:`with_result_lines` adds (decoders select it as ``response``)."""


def with_result_lines(decoded: pl.DataFrame, lines: pl.Series) -> pl.DataFrame:
    """``decoded`` (one row per line) with the verbatim line of each row (:data:`LINE_COLUMN`).

    When the counts differ (a reader that skipped a line it could not read) the lines
    cannot be matched and the column stays null rather than pointing at another row.
    """
    if decoded.height != lines.len():
        return decoded.with_columns(pl.lit(None, dtype=pl.String).alias(LINE_COLUMN))
    return decoded.with_columns(lines.alias(LINE_COLUMN))


def json_string(expr: pl.Expr) -> pl.Expr:
    r"""JSON-encode a string column as JSON string literals (quoted and escaped).

    Examples
    --------
    >>> df = pl.DataFrame({"s": ['say "hi"']})
    >>> print(df.select(json_string(pl.col("s"))).item())
    "say \"hi\""
    """
    return (
        pl.struct(expr.alias("s"))
        .struct.json_encode()
        .str.strip_prefix('{"s":')
        .str.strip_suffix("}")
    )


def json_object(**fields: pl.Expr) -> pl.Expr:
    r"""A JSON object of string (or null) columns, its members in the order given.

    One ``struct.json_encode``: the same bytes as the literal pieces around
    :func:`json_string` of each field (the same escaping), without its two strips, each a
    copy of every value: an encoder that puts a prompt in an object of its own (a user
    message, a Gemini part) spares them.

    Examples
    --------
    >>> df = pl.DataFrame({"p": ['say "hi"', None]})
    >>> df.select(json_object(role=pl.lit("user"), content=pl.col("p"))).to_series().to_list()
    ['{"role":"user","content":"say \\"hi\\""}', '{"role":"user","content":null}']
    """
    return pl.struct(*(expr.alias(name) for name, expr in fields.items())).struct.json_encode()


def column_json_string(jobs: pl.DataFrame, name: str) -> pl.Expr:
    r""":func:`json_string` of column ``name``, a literal when every row holds one value.

    The engine encodes the jobs of one model at a time, so the ``model`` column holds one
    value: encoding it once (with :func:`json_string` itself, so the bytes are the same)
    spares a JSON encoding and two copies of a column per batch.

    Examples
    --------
    >>> jobs = pl.DataFrame({"model": ["m\"1", "m\"1"], "mixed": ["a", "b"]})
    >>> jobs.with_columns(column_json_string(jobs, "model").alias("m"))["m"].to_list()
    ['"m\\"1"', '"m\\"1"']
    >>> jobs.with_columns(column_json_string(jobs, "mixed").alias("m"))["m"].to_list()
    ['"a"', '"b"']
    """
    column = jobs.get_column(name)
    if column.len() and not column.null_count():
        first = column[0]
        if (column == first).all():
            one = pl.select(json_string(pl.lit(first, dtype=pl.String))).item()
            return pl.lit(one, dtype=pl.String)
    return json_string(pl.col(name))


def all_null(jobs: pl.DataFrame, name: str) -> bool:
    """Whether column ``name`` is missing or null in every row (a null count: no pass).

    An encoder leaves out what such a column would add to the lines (a ``when`` branch is
    computed for every row, taken or not).

    Examples
    --------
    >>> jobs = pl.DataFrame({"system": [None, None], "cache_key": ["k", None]})
    >>> all_null(jobs, "system"), all_null(jobs, "cache_key"), all_null(jobs, "history")
    (True, False, True)
    """
    return name not in jobs.columns or jobs.get_column(name).null_count() == jobs.height


def none_true(jobs: pl.DataFrame, name: str) -> bool:
    """Whether boolean column ``name`` is missing or true in no row (a ``when`` never taken).

    Examples
    --------
    >>> jobs = pl.DataFrame({"a": [False, None], "b": [None, True]})
    >>> none_true(jobs, "a"), none_true(jobs, "b"), none_true(jobs, "c")
    (True, False, True)
    """
    return name not in jobs.columns or not jobs.get_column(name).any()


def _body_plan(
    lines: pl.Series, sep: str, prefix: bytes, suffix: bytes, piece_bytes: int
) -> tuple[int, int]:
    """The length of a joined body and how many lines make a piece of about ``piece_bytes``."""
    if lines.null_count():
        msg = f"a request line is null ({lines.null_count()} of {lines.len()})"
        raise ValueError(msg)
    n = lines.len()
    body = int(lines.str.len_bytes().sum() or 0) + len(sep.encode()) * max(n - 1, 0)
    per_line = max(1, body // n) if n else 1
    return len(prefix) + body + len(suffix), max(1, piece_bytes // per_line)


def request_lines(jobs: pl.DataFrame, line: pl.Expr, sep: str) -> pl.Series:
    r"""Each job's request line (``line``), laid out in memory so its body needs no join.

    Polars computes ``line`` followed by ``sep`` and then drops that last character
    (``str.head(-1)``: new 16-byte views over the same data, no copy of a line). The lines
    are those of ``line`` alone, but in Polars' buffers each is followed by ``sep``, one
    after the other in row order: :class:`JoinedLines` and :class:`JoinedChunks` send a
    run of them as it lies there (:func:`_line_runs`) instead of joining them again.
    ``sep`` is one ASCII character: what the provider's body puts between two lines.

    Examples
    --------
    >>> jobs = pl.DataFrame({"id": ["a" * 20, "b" * 20]})
    >>> lines = request_lines(jobs, pl.concat_str([pl.lit("line "), pl.col("id")]), "\n")
    >>> lines.to_list() == ["line " + "a" * 20, "line " + "b" * 20]
    True
    >>> [bytes(run) for run in _line_runs(lines, "\n") or []] == [
    ...     b"\n".join(line.encode() for line in lines)]
    True
    """
    terminated = pl.concat_str([line, pl.lit(sep)]).alias("line")
    return jobs.select(terminated).to_series().str.head(-1)


def _line_runs(lines: pl.Series, sep: str) -> list[memoryview] | None:
    """The joined lines as views over Polars' data buffers (no copy), or ``None``.

    Polars stores strings as Arrow's ``string_view``: per value a 16-byte view (length,
    prefix, buffer index, offset; the Arrow format's "Variable-size Binary View Layout",
    little-endian; a value of at most 12 bytes is inlined in its view), the bytes of
    longer values in data buffers. Lines from :func:`request_lines` lie in those buffers
    back to back, each followed by ``sep``. Here, with the views in numpy: wherever line
    ``i + 1`` starts one byte after line ``i`` ends, in the same buffer, and that byte is
    ``sep``, both lie in one run ``line_i sep line_i+1``; a run ends where that does not
    hold. The body is then the runs with ``sep`` between them. ``None`` (join them
    instead) when a line is inlined, the array is not one ``string_view`` chunk, ``sep``
    is not one byte, or the runs are many (over ``64 + n / 256``: lines reordered,
    filtered or built elsewhere; joining those costs less than many small views).
    """
    import numpy as np
    import pyarrow as pa

    n = lines.len()
    between = sep.encode()
    if not n or len(between) != 1 or lines.null_count():
        return None
    array = lines.to_arrow(compat_level=pl.CompatLevel.newest())
    if isinstance(array, pa.ChunkedArray):
        if array.num_chunks != 1:
            return None
        array = array.chunk(0)
    if array.type != pa.string_view():
        return None
    buffers = array.buffers()
    views = np.frombuffer(buffers[1], dtype="<i4").reshape(-1, 4)[array.offset : array.offset + n]
    length = views[:, 0].astype(np.int64)
    if bool((length <= 12).any()):  # inlined: its bytes are in the view, not a buffer
        return None
    index, start = views[:, 2], views[:, 3].astype(np.int64)
    end = start + length
    joined = (index[1:] == index[:-1]) & (start[1:] == end[:-1] + 1)
    cuts = np.flatnonzero(~joined) + 1
    if cuts.size > n // 256 + 64:
        return None
    runs: list[memoryview] = []
    for first, stop in zip([0, *cuts.tolist()], [*cuts.tolist(), n], strict=True):
        data = buffers[2 + int(index[first])]
        gaps = end[first : stop - 1]  # where sep must be, inside this run
        if gaps.size and bool((np.frombuffer(data, dtype=np.uint8)[gaps] != between[0]).any()):
            return None
        runs.append(memoryview(data)[int(start[first]) : int(end[stop - 1])])
    return runs


def _body_chunks(
    lines: pl.Series,
    sep: str,
    rows: int,
    prefix: bytes,
    suffix: bytes,
    runs: list[memoryview] | None = None,
    piece_bytes: int = 1 << 20,
) -> Iterator[tuple[memoryview, ...]]:
    """The body in chunks of views (no copy).

    With ``runs`` (:func:`_line_runs`), chunks of about ``piece_bytes`` cut from the runs,
    ``sep`` between two runs; otherwise each chunk about ``rows`` lines joined by Polars,
    the first starting with ``prefix``, every other with ``sep``. The last chunk ends with
    ``suffix``. A chunk's views joined are a contiguous stretch of the body.
    """
    n = lines.len()
    if not n:
        yield memoryview(prefix), memoryview(suffix)
        return
    between = memoryview(sep.encode())
    if runs is not None:
        yield from _run_chunks(runs, between, prefix, suffix, piece_bytes)
        return
    for start in range(0, n, rows):
        head = memoryview(prefix) if not start else between
        joined = _utf8_view(lines.slice(start, rows).str.join(sep))
        yield (head, joined, memoryview(suffix)) if start + rows >= n else (head, joined)


def _run_chunks(
    runs: list[memoryview], between: memoryview, prefix: bytes, suffix: bytes, piece: int
) -> Iterator[tuple[memoryview, ...]]:
    """``prefix``, the runs with ``between`` between two, ``suffix``: chunks of ~``piece``."""
    chunk, size = [memoryview(prefix)], len(prefix)
    for k, run in enumerate(runs):
        if k:
            chunk.append(between)
            size += between.nbytes
        at = 0
        while at < run.nbytes:
            take = min(max(piece - size, 1), run.nbytes - at)
            chunk.append(run[at : at + take])
            size += take
            at += take
            if size >= piece:
                yield tuple(chunk)
                chunk, size = [], 0
    chunk.append(memoryview(suffix))
    yield tuple(chunk)


class JoinedLines(io.RawIOBase):
    r"""A batch's request lines joined into one request body, read in pieces as it is sent.

    The same bytes as ``prefix + sep.join(lines.to_list()).encode() + suffix``, without
    that list of one Python string per line, the joined ``str``, its encoded copy and the
    copies that add ``prefix`` and ``suffix``: at 1M rows those copies were most of the
    submit's system time, every one a fresh buffer of a batch's size faulted in page by
    page. Lines from :func:`request_lines` already lie in Polars' buffers with ``sep``
    between them: the body is views over those buffers (:func:`_line_runs`), no join at
    all. Any other lines Polars joins about ``piece_bytes`` at a time
    (``Series.str.join``), as the HTTP client reads: buffers of that size are reused by the
    allocators, none of a batch's size is made. The SDKs take it as a file (``read``, and
    ``seek`` to learn the length; a seek back to the start reads the lines again). Each
    :meth:`read` copies its bytes once, from Polars' buffers into the ``bytes`` it returns,
    however many pieces it spans. For a client that sends an iterable body,
    :class:`JoinedChunks` gives the same bytes in whole pieces.

    Parameters
    ----------
    lines
        The request lines (strings, none null).
    sep
        What goes between two lines.
    prefix, suffix
        Bytes before the first line and after the last.
    piece_bytes
        About how many bytes a piece holds (lines Polars joins at a time, when joined).

    Examples
    --------
    >>> body = JoinedLines(pl.Series(["{}", '{"a":1}']), ",", prefix=b"[", suffix=b"]")
    >>> len(body), body.read()
    (12, b'[{},{"a":1}]')
    >>> body.seek(0), body.read(3), body.read()
    (0, b'[{}', b',{"a":1}]')
    """

    PIECE_BYTES: ClassVar[int] = 1 << 20

    def __init__(
        self,
        lines: pl.Series,
        sep: str,
        *,
        prefix: bytes = b"",
        suffix: bytes = b"",
        piece_bytes: int | None = None,
    ) -> None:
        super().__init__()
        self._piece_bytes = piece_bytes or self.PIECE_BYTES
        self._len, self._rows = _body_plan(lines, sep, prefix, suffix, self._piece_bytes)
        self._lines, self._sep = lines, sep
        self._runs = _line_runs(lines, sep)
        self._prefix, self._suffix = prefix, suffix
        self._pos = 0  # where the caller is
        self._restart()

    def _restart(self) -> None:
        # The generator must not hold ``self`` (a cycle): the body, and with it the
        # batch's lines, is then freed as soon as the SDK lets go of it, not at the cyclic
        # collector's next full pass (which kept several batches' lines, +160 MB at 1M).
        chunks = _body_chunks(
            self._lines, self._sep, self._rows, self._prefix, self._suffix,
            self._runs, self._piece_bytes,
        )
        self._pieces = (view for chunk in chunks for view in chunk)
        self._piece = memoryview(b"")
        self._at = 0  # in the current piece
        self._stream = 0  # where the pieces are: bytes given out or skipped so far

    def __len__(self) -> int:
        return self._len

    @property
    def piece_bytes(self) -> int:
        """About how many bytes a piece holds (OpenAI's upload reads this much at a time).

        Reads of this size each copy about one piece: as few reads as there are pieces.
        """
        return self._piece_bytes

    def readable(self) -> bool:
        """Always readable."""
        return True

    def seekable(self) -> bool:
        """Always seekable (an HTTP client finds the length by seeking to the end)."""
        return True

    def tell(self) -> int:
        """The position of the next byte :meth:`read` returns."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to ``offset`` from the start, the current position or the end."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._len}[whence]
        if base + offset < 0:
            msg = f"negative seek position {base + offset}"
            raise ValueError(msg)
        self._pos = base + offset
        return self._pos

    def _take(self, n: int, out: list[memoryview] | None) -> None:
        """Move the pieces on by ``n`` bytes, appending their views to ``out`` unless ``None``."""
        while n > 0:
            left = self._piece.nbytes - self._at
            if not left:
                self._piece, self._at = next(self._pieces), 0
                continue
            take = min(left, n)
            if out is not None:
                out.append(self._piece[self._at : self._at + take])
            self._at += take
            self._stream += take
            n -= take

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes from the current position (all that is left if negative)."""
        stop = self._len if size is None or size < 0 else min(self._len, self._pos + size)
        if stop <= self._pos:
            return b""
        if self._pos < self._stream:  # a seek back: the pieces again, from the start
            self._restart()
        self._take(self._pos - self._stream, None)
        views: list[memoryview] = []
        self._take(stop - self._pos, views)
        self._pos = stop
        # One copy either way: ``join`` sizes its result first, then copies each view.
        return bytes(views[0]) if len(views) == 1 else b"".join(views)

    def readall(self) -> bytes:
        """Everything from the current position to the end."""
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        """Read into ``buffer`` (a writable bytes-like object); the number of bytes read."""
        view = memoryview(buffer).cast("B")
        data = self.read(view.nbytes)
        view[: len(data)] = data
        return len(data)


class JoinedChunks:
    r"""The bytes of :class:`JoinedLines`, as an iterable of whole pieces (a streamed body).

    An HTTP client reads a file body in small fixed reads (httpx: 64 KiB, each its own
    write to the socket); it sends an iterable body one item at a time. Each item here is
    one piece of about ``piece_bytes``, copied once into ``bytes``: cut from the lines as
    they lie in Polars' buffers (:func:`request_lines`), or else about ``piece_bytes`` of
    lines joined by Polars (the separator before it, or ``prefix`` / ``suffix``). Every
    ``iter()`` starts again from the first byte, so a request sent again (a retry) sends
    the same bytes. It has no ``read``: a client that finds one reads a file instead. The
    client learns the length from ``len()`` only: send it as the ``Content-Length`` header
    (httpx then sends the items as they are, not in chunked transfer encoding).

    Parameters
    ----------
    lines, sep, prefix, suffix, piece_bytes
        As for :class:`JoinedLines`.

    Examples
    --------
    >>> body = JoinedChunks(pl.Series(["{}", '{"a":1}']), ",", prefix=b"[", suffix=b"]",
    ...                     piece_bytes=2)
    >>> len(body), list(body), b"".join(body)
    (12, [b'[{}', b',{"a":1}]'], b'[{},{"a":1}]')
    """

    def __init__(
        self,
        lines: pl.Series,
        sep: str,
        *,
        prefix: bytes = b"",
        suffix: bytes = b"",
        piece_bytes: int | None = None,
    ) -> None:
        self._piece_bytes = piece_bytes or JoinedLines.PIECE_BYTES
        self._len, self._rows = _body_plan(lines, sep, prefix, suffix, self._piece_bytes)
        self._lines, self._sep = lines, sep
        self._runs = _line_runs(lines, sep)
        self._prefix, self._suffix = prefix, suffix

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[bytes]:
        """The pieces from the first, each a ``bytes`` of about ``piece_bytes``."""
        chunks = _body_chunks(
            self._lines, self._sep, self._rows, self._prefix, self._suffix,
            self._runs, self._piece_bytes,
        )
        for chunk in chunks:
            data = b"".join(chunk)
            if data:
                yield data


def _utf8_view(one: pl.Series) -> memoryview:
    """The UTF-8 bytes of the single string in ``one``, without copying them.

    Polars hands its strings to Arrow as a ``string_view`` array (its own layout, not a
    copy); a string longer than 12 bytes lies in one of the array's data buffers, found
    by its 16-byte view (length, prefix, buffer index, offset; the Arrow format's
    "Variable-size Binary View Layout", little-endian). Any other export is copied.
    """
    import pyarrow as pa

    array = one.to_arrow(compat_level=pl.CompatLevel.newest())
    if isinstance(array, pa.ChunkedArray):  # pragma: no cover - one row is one chunk
        array = array.combine_chunks()
    if array.type == pa.string_view() and len(array) == 1 and array.null_count == 0:
        buffers = array.buffers()
        view = memoryview(buffers[1])[16 * array.offset : 16 * array.offset + 16]
        length = int.from_bytes(view[0:4], "little")
        if length <= 12:  # inlined in the view itself
            return view[4 : 4 + length]
        index = int.from_bytes(view[8:12], "little")
        offset = int.from_bytes(view[12:16], "little")
        return memoryview(buffers[2 + index])[offset : offset + length]
    return memoryview(str(one.item()).encode())  # pragma: no cover - another layout


def history_messages(jobs: pl.DataFrame, *, gemini: bool = False) -> pl.Expr:
    """The earlier turns of each job as JSON messages, each followed by a comma.

    ``""`` for jobs without a ``history`` column or with a null history. OpenAI and
    Anthropic take ``{"role", "content"}`` messages as they are; Gemini takes
    ``{"role": "user" | "model", "parts": [{"text": ...}]}``.

    Examples
    --------
    >>> jobs = pl.DataFrame({"history": [[{"role": "assistant", "content": "hi"}], None]})
    >>> jobs.select(history_messages(jobs, gemini=True)).to_series().to_list()
    ['{"role":"model","parts":[{"text":"hi"}]},', '']
    """
    if "history" not in jobs.columns:
        return pl.lit("")
    turn = pl.element()
    if gemini:
        role = turn.struct.field("role").replace_strict(
            {"user": "user", "assistant": "model"}, return_dtype=pl.String
        )
        encoded = pl.concat_str(
            [
                pl.lit('{"role":"'),
                role,
                pl.lit('","parts":[{"text":'),
                json_string(turn.struct.field("content")),
                pl.lit("}]}"),
            ]
        )
    else:
        encoded = pl.struct(
            turn.struct.field("role").alias("role"),
            turn.struct.field("content").alias("content"),
        ).struct.json_encode()
    joined = pl.col("history").list.eval(encoded).list.join(",")
    return (
        pl.when(pl.col("history").list.len() > 0)
        .then(pl.concat_str([joined, pl.lit(",")]))
        .otherwise(pl.lit(""))
    )


class Provider(Protocol):
    """What the engine needs from a provider.

    Optional capabilities raise ``NotImplementedError`` naming the class.
    """

    name: ClassVar[str]
    max_requests: ClassVar[int]
    """Most requests in one provider batch."""
    max_bytes: ClassVar[int]
    """Most bytes of encoded requests in one provider batch."""
    find_is_exact: ClassVar[bool]
    """Whether :meth:`find` matches our own tag (run id and batch key), so that a batch it
    finds is ours for sure; ``False`` where it goes by size and time (Anthropic), which
    can find another process's batch (:attr:`~batchata_df.engine.run.InFlightBatch.adopted`)."""

    def encode(self, jobs: pl.DataFrame, spec: RequestSpec) -> pl.Series:
        """Request lines (one string per job) for ``jobs`` (job_id, model, prompt, system)."""
        ...

    def line_overhead(self) -> int:
        """Bytes added per request when lines are joined into a batch payload."""
        ...

    def submit(self, lines: pl.Series, *, model: str, tag: BatchTag) -> str:
        """Create a provider batch from encoded lines; return the provider's batch id."""
        ...

    def poll(self, batch_id: str) -> BatchPoll:
        """Observe a provider batch."""
        ...

    def results(self, batch_id: str, spec: RequestSpec) -> pl.DataFrame:
        """Per-request results of an ended/cancelled/expired batch (:data:`RESULTS`)."""
        ...

    def cancel(self, batch_id: str) -> None:
        """Ask the provider to cancel a batch."""
        ...

    def find(self, tag: BatchTag) -> str | None:
        """Find a batch created for ``tag`` by a crashed run; ``None`` if surely absent.

        Raises :class:`~batchata_df.errors.OrphanedBatchError` when the provider cannot
        tell either way.
        """
        ...

    def found_not_created(self, batch_id: str) -> bool:
        """Whether :meth:`submit` returned ``batch_id`` from a lookup, not from its create.

        After a create whose outcome was unknown, a provider may look the batch up itself
        (:meth:`find`); a lookup by size and time (Anthropic) may find another process's
        batch, so its requests are not known for sure to be ours.
        """
        ...

    def close(self) -> None:
        """Release network resources."""
        ...


@dataclass(frozen=True)
class RealtimeFailure:
    """A realtime request the provider did not answer (no result row to record).

    ``kind`` says what may be done about it:

    * ``"rate_limited"`` -- refused before any work (HTTP 429, 503, Anthropic 529
      ``overloaded_error``): send it again after ``retry_after`` (the provider's hint);
    * ``"server_error"`` -- the provider failed it (500, 502, 504): send it again a few
      times. It may still have been billed (a gateway 502/504 can follow an answer the
      model computed; no provider documents a 5xx as unbilled: OpenAI's error-codes guide,
      Anthropic's errors page and Gemini's troubleshooting guide only say to retry), so the
      engine counts each such attempt at its worst case under ``max_cost_usd``;
    * ``"unreachable"`` -- no connection was made, nothing was sent: send it again later;
    * ``"lost"`` -- the request was sent but no answer came back (a timeout, a dropped
      connection): the provider may have run and billed it, so it is never sent again
      automatically (never pay twice); the row fails with the reason.
    """

    kind: Literal["rate_limited", "server_error", "unreachable", "lost"]
    error: str
    retry_after: float | None = None


class RealtimeProvider(Protocol):
    """A provider that also answers one request at a time (``mode="realtime"``).

    The request is the very line :meth:`Provider.encode` built for a batch (OpenAI's
    ``body``, Anthropic's ``params``, Gemini's ``request``), sent through the SDK's standard
    endpoint with the SDK's own retries off (the engine retries with its clock). The answer
    is decoded by the batch decoder, so values, citations, usage and errors are the same
    in both modes.
    """

    name: ClassVar[str]

    def answer(
        self, line: str, *, model: str, spec: RequestSpec
    ) -> pl.DataFrame | RealtimeFailure:
        """Send one encoded request; one :data:`RESULTS` row, or why there is none.

        A request the provider rejects on its own (HTTP 400, 404, 413, ...) is a result
        row (``outcome="errored"``) exactly as in a batch; a bad API key raises
        :class:`~batchata_df.errors.CredentialsError`.
        """
        ...


_WHITESPACE_NAMES = {" ": "a space", "\t": "a tab", "\n": "a newline", "\r": "a carriage return"}


def _whitespace_name(char: str) -> str:
    return _WHITESPACE_NAMES.get(char, "other whitespace")


def header_api_key(key: str, source: str, *, strip: bool = False) -> str:
    """``key`` if an HTTP header can carry it; else a :class:`CredentialsError` naming ``source``.

    The SDKs put the key in a header as it is (OpenAI ``Authorization: Bearer {key}``,
    ``openai/lib/_client_auth.py``; Anthropic ``X-Api-Key``/``Authorization``,
    ``anthropic/_client.py``). httpx encodes header values as ASCII (``_normalize_header_value``
    in ``httpx/_models.py``: anything else raises ``UnicodeEncodeError``) and h11 refuses a value
    with surrounding whitespace or CR/LF (``field_value`` in ``h11/_abnf.py``) *before* the
    request is sent, as ``LocalProtocolError("Illegal header value b'Bearer <the key>'")``,
    which the SDKs report as a connection error after all their retries (a bad key looked
    like an outage) and which httpcore logs at DEBUG with the whole key. So the key is
    checked here, before anything is sent: surrounding whitespace (a quoted ``.env`` value,
    ``$(cat key.txt)``), control characters (CR/LF, tabs, NUL, ...) and non-ASCII characters
    (a typographic quote or a non-breaking space pasted with the key) are refused. The key
    is never stripped silently (a key that changed unseen can hide a wrong one), except
    with ``strip=True`` for an SDK that strips it itself (google-genai:
    ``self.api_key = self.api_key.strip()`` in ``google/genai/_api_client.py``), where a
    stripped key is what would be sent anyway. The message names ``source`` and the fix,
    never a character of the key (only where it is).

    Examples
    --------
    >>> header_api_key("sk-proj-abc123", "OPENAI_API_KEY")
    'sk-proj-abc123'
    >>> try:
    ...     header_api_key(" sk-proj-abc123" + chr(10), "OPENAI_API_KEY")
    ... except CredentialsError as e:
    ...     print(str(e)[:64])
    OPENAI_API_KEY begins with a space and ends with a newline, whic
    >>> header_api_key(" AIzaSy-abc" + chr(10), "GEMINI_API_KEY", strip=True)
    'AIzaSy-abc'
    """
    what = f"{source} "
    if not key.strip():
        state = "holds only whitespace" if key else "is empty"
        msg = f"{what}{state}: set {source} to the API key itself (nothing was sent)"
        raise CredentialsError(msg)
    length, offset = len(key), 0  # positions are told in the value as given
    if strip:
        offset = len(key) - len(key.lstrip())
        key = key.strip()
    ends = []
    if key[0].isspace():
        ends.append(f"begins with {_whitespace_name(key[0])}")
    if key[-1].isspace():
        ends.append(f"ends with {_whitespace_name(key[-1])}")
    if ends:
        msg = (
            f"{what}{' and '.join(ends)}, which an HTTP header cannot carry (nothing was "
            f"sent): remove the leading/trailing whitespace from {source} (a quoted .env "
            "value or $(cat key.txt) often brings it)"
        )
        raise CredentialsError(msg)
    for position, char in enumerate(key, start=offset + 1):
        code = ord(char)
        if code < 0x20 or code == 0x7F:
            kind = "a line break" if char in "\r\n" else "a control character"
            msg = (
                f"{what}has {kind} at character {position} of {length}, which an API key "
                f"cannot contain (nothing was sent): set {source} to the key alone, on one line"
            )
            raise CredentialsError(msg)
        if code > 0x7E:
            msg = (
                f"{what}has a non-ASCII character at character {position} of {length}, "
                "which an HTTP header cannot carry (nothing was sent): set "
                f"{source} to the key as the provider shows it (a typographic quote or a "
                "non-breaking space is often pasted with it)"
            )
            raise CredentialsError(msg)
    return key


def retry_after_seconds(headers: Any) -> float | None:
    """The wait a response's ``retry-after-ms`` / ``retry-after`` headers ask for.

    Seconds (fractions allowed) or an HTTP date; ``None`` when there is no usable hint.

    Examples
    --------
    >>> retry_after_seconds({"retry-after": "2"}), retry_after_seconds({"retry-after-ms": "250"})
    (2.0, 0.25)
    >>> retry_after_seconds({}) is None
    True
    """
    import email.utils

    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def kept_response(frame: pl.DataFrame, text: str, spec: RequestSpec) -> pl.DataFrame:
    """A realtime result row with the provider's answer body as ``response`` (when kept).

    With :attr:`RequestSpec.keep_responses` the ``response`` column holds the body the
    standard endpoint returned (the counterpart of a batch's result line); else null.
    """
    value = text if spec.keep_responses else None
    return frame.with_columns(pl.lit(value, dtype=pl.String).alias("response"))


def failure_kind(status: int | None) -> Literal["rate_limited", "server_error"] | None:
    """How a realtime HTTP error status is retried (``None``: it is the row's answer).

    Examples
    --------
    >>> failure_kind(429), failure_kind(529), failure_kind(500), failure_kind(400)
    ('rate_limited', 'rate_limited', 'server_error', None)
    """
    if status in (429, 503, 529):
        return "rate_limited"
    if status is not None and (status >= 500 or status in (408, 409)):
        return "server_error"
    return None


def transport_failure(error: BaseException, provider: str) -> RealtimeFailure:
    """A network error as a :class:`RealtimeFailure`: nothing sent, or sent and lost.

    Only a failure to connect proves the request never left (``unreachable``); a timeout
    or a dropped connection after sending may have been billed (``lost``).
    """
    cause: BaseException | None = error
    connect = False
    while cause is not None:
        if type(cause).__name__ in ("ConnectError", "ConnectTimeout", "ConnectionRefusedError"):
            connect = True
            break
        cause = cause.__cause__ or cause.__context__
    text = f"{provider}: {type(error).__name__}: {error}"
    if connect:
        return RealtimeFailure("unreachable", text)
    return RealtimeFailure(
        "lost",
        f"lost: the request was sent but no answer came back ({text}); the provider may "
        "have billed it, so it is not sent again automatically (retry_failed=True sends it)",
    )


def cut_answer(error: ValueError, provider: str) -> RealtimeFailure:
    """A realtime 200 answer that is not whole JSON, as a ``lost`` :class:`RealtimeFailure`.

    A close-delimited answer whose connection ends in order reads as a clean, shorter body
    (the emulator's fault action ``cut_clean``): the request ran and may have been billed,
    as a stream that breaks off (:func:`transport_failure`), so it is never sent again
    automatically.

    Examples
    --------
    >>> import json
    >>> try:
    ...     json.loads('{"a": "b')
    ... except ValueError as e:
    ...     cut_answer(e, "OpenAI").error[:60]
    'lost: the answer came back cut short (OpenAI: JSONDecodeErro'
    """
    text = f"{provider}: {type(error).__name__}: {error}"
    return RealtimeFailure(
        "lost",
        f"lost: the answer came back cut short ({text}); the provider may have billed it, "
        "so it is not sent again automatically (retry_failed=True sends it)",
    )


ORPHAN_SEARCH_MAX_LISTED = 10_000
"""At most this many listed batches are looked at when searching for a lost batch."""
ORPHAN_SEARCH_SECONDS = 300.0
"""... and for at most this long."""


def bounded_listing(
    batches: Iterable[Any], *, provider: str, what: str, max_listed: int, seconds: float
) -> Iterator[Any]:
    """Yield listed batches until the list ends; past the bounds, stop with an error.

    OpenAI's and Gemini's batch lists do not document their order, so a search for a lost
    batch cannot stop at the first batch older than the one it looks for: it reads the
    list to its end, bounded by a count and a time. Past either bound it raises
    :class:`~batchata_df.errors.OrphanedBatchError` instead of guessing "not there" (which
    would submit, and pay for, the same rows again).
    """
    from batchata_df.errors import OrphanedBatchError

    deadline = time.monotonic() + seconds
    for n, batch in enumerate(batches):
        if n >= max_listed or time.monotonic() > deadline:
            msg = (
                f"a {provider} batch ({what}) may already exist (created by this call or an "
                f"earlier one just before an error or a stop); {n} batches were listed in the "
                "account without finding or ruling "
                f"it out (the search stops after {max_listed} batches or {seconds:.0f} s). "
                "Look for it in the provider's batch list: if it exists, let it finish and "
                "run again later; if not, run again with a new state folder"
            )
            raise OrphanedBatchError(msg)
        yield batch
