r"""Provider citations -> per-field citation columns.

With ``citations=True`` (Anthropic only, with ``files=``), every document is sent with
``citations: {"enabled": true}``. Anthropic refuses citations together with structured
output (``output_config.format``), so such a request carries no ``output_config``: instead
the system prompt (:func:`instruction`, put before the caller's ``system``) asks for ONLY
a JSON object valid for the answer's JSON Schema, which it includes between
``<answer_json_schema>`` tags. The answer comes back as several ``text`` blocks, some of
them with ``citations``; the JSON is still validated against the schema as usual, so an
answer that is not valid ends ``failed``.

How citations are given to fields
    The ``text`` blocks (selected by type; ``thinking`` blocks are skipped) are
    concatenated, remembering the character span of each block in the concatenation. A
    surrounding ```` ```json ```` fence and whitespace are ignored. The JSON object is
    parsed with a position-tracking parser that gives the span of every leaf value (inside
    the quotes for a string, the literal itself for a number, boolean or null) and its
    path, e.g. ``("items", 2, "name")``. A citation belongs to top-level field ``f`` when
    the span of the text block carrying it overlaps the span of a leaf under ``f`` (the
    value itself for a scalar field; any leaf of a nested model or list). Mapping is by
    position in the answer, never by searching the value in the document, so numbers,
    booleans and values that occur several times in a document get the citations of the
    block that actually holds them. A block that spans several fields counts for each of
    them; a value split over several blocks gets the citations of all of them. A field
    whose value no cited block overlaps gets an empty list, not a guess; an empty string
    (nothing to support) gets an empty list too. Exact duplicates are kept once, in
    answer order. With ``schema=None`` the one ``response`` column gets every citation.

Columns
    For each top-level field ``f``, ``f_citations`` is a ``List`` of :data:`CITATION`
    structs; it is null for rows that did not complete. Fields that do not apply to a
    citation's kind are null. Index conventions are Anthropic's:

    * ``document_index``: 0-based index over the request's documents, in request order
      (the row's files in the order given).
    * ``document_title``: the document's title (the file name).
    * ``start_page``, ``end_page`` (PDF, ``page_location``): 1-based page numbers,
      ``end_page`` exclusive: a citation of page 3 alone is ``start_page=3, end_page=4``.
    * ``start_char``, ``end_char`` (plain text, ``char_location``): 0-based character
      indices into the document's text, ``end_char`` exclusive, so ``cited_text ==
      text[start_char:end_char]``.
    * ``start_block``, ``end_block`` (custom content documents,
      ``content_block_location``): 0-based indices into the document's content blocks,
      ``end_block`` exclusive.

Examples
--------
>>> blocks = [
...     {"type": "text", "text": '{"city": "'},
...     {"type": "text", "text": "Paris", "citations": [{"type": "char_location",
...      "cited_text": "Paris", "document_index": 0, "document_title": "a.txt",
...      "start_char_index": 10, "end_char_index": 15}]},
...     {"type": "text", "text": '", "ok": true}'},
... ]
>>> text, cited = map_citations(blocks, ["city", "ok"])
>>> text
'{"city": "Paris", "ok": true}'
>>> [(c["cited_text"], c["start_char"], c["end_char"]) for c in json.loads(cited)["city"]]
[('Paris', 10, 15)]
>>> json.loads(cited)["ok"]
[]
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import polars as pl

__all__ = [
    "CITATION",
    "CITATIONS",
    "SCHEMA_CLOSE",
    "SCHEMA_OPEN",
    "citation_columns",
    "decode_citations",
    "instruction",
    "map_citations",
    "normalize",
    "value_spans",
]

CITATION = pl.Struct(
    {
        "cited_text": pl.String(),
        "document_index": pl.Int64(),
        "document_title": pl.String(),
        "start_page": pl.Int64(),
        "end_page": pl.Int64(),
        "start_char": pl.Int64(),
        "end_char": pl.Int64(),
        "start_block": pl.Int64(),
        "end_block": pl.Int64(),
    }
)
"""One citation of a field (see the module docstring for the index conventions)."""

CITATIONS = pl.List(CITATION)
"""The dtype of every ``<field>_citations`` column."""

SCHEMA_OPEN = "<answer_json_schema>"
SCHEMA_CLOSE = "</answer_json_schema>"

# Our field names -> the provider's, per citation kind (others are not document citations).
_KINDS: dict[str, tuple[tuple[str, str], ...]] = {
    "char_location": (("start_char", "start_char_index"), ("end_char", "end_char_index")),
    "page_location": (("start_page", "start_page_number"), ("end_page", "end_page_number")),
    "content_block_location": (
        ("start_block", "start_block_index"),
        ("end_block", "end_block_index"),
    ),
}
_FENCE = re.compile(r"\A\s*```[A-Za-z0-9_+-]*[ \t]*\r?\n(.*?)```\s*\Z", re.DOTALL)
_WS = " \t\r\n"

Path = tuple[str | int, ...]


def instruction(json_schema: Mapping[str, Any], *, cite: bool = True) -> str:
    """The system prompt that replaces structured output.

    Used with citations on, or for a Claude model that takes no structured output;
    ``cite``: ask for the values to be taken from the documents.

    Examples
    --------
    >>> print(instruction({"type": "object"}).splitlines()[-2])
    {"type": "object"}
    >>> "citing" in instruction({"type": "object"}, cite=False)
    False
    """
    schema = json.dumps(json_schema, ensure_ascii=False, sort_keys=False)
    documents = (
        " Take the values from the documents where you can, citing them." if cite else ""
    )
    return (
        "Answer with ONLY a JSON object that is valid for the JSON Schema below: no text "
        f"before or after it and no code fence.{documents}\n"
        f"{SCHEMA_OPEN}\n{schema}\n{SCHEMA_CLOSE}"
    )


def citation_columns(fields: Sequence[str]) -> list[str]:
    """The citation column of each field: ``f`` -> ``f_citations``."""
    return [f"{f}_citations" for f in fields]


# -- a JSON parser that tracks positions -------------------------------------------------------


def _skip(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WS:
        i += 1
    return i


def _value(text: str, i: int, path: Path, out: list[tuple[Path, int, int]]) -> int:
    """Parse the value at ``i`` (no leading whitespace); record leaves; return its end."""
    ch = text[i : i + 1]
    if ch == "{":
        i = _skip(text, i + 1)
        if text.startswith("}", i):
            return i + 1
        while True:
            if not text.startswith('"', i):
                msg = f"expected a key at {i}"
                raise ValueError(msg)
            key, i = scanstring(text, i + 1)
            i = _skip(text, i)
            if not text.startswith(":", i):
                msg = f"expected ':' at {i}"
                raise ValueError(msg)
            i = _value(text, _skip(text, i + 1), (*path, key), out)
            i = _skip(text, i)
            if text.startswith(",", i):
                i = _skip(text, i + 1)
            elif text.startswith("}", i):
                return i + 1
            else:
                msg = f"expected ',' or '}}' at {i}"
                raise ValueError(msg)
    if ch == "[":
        i = _skip(text, i + 1)
        if text.startswith("]", i):
            return i + 1
        index = 0
        while True:
            i = _skip(text, _value(text, i, (*path, index), out))
            index += 1
            if text.startswith(",", i):
                i = _skip(text, i + 1)
            elif text.startswith("]", i):
                return i + 1
            else:
                msg = f"expected ',' or ']' at {i}"
                raise ValueError(msg)
    if ch == '"':
        _, end = scanstring(text, i + 1)
        out.append((path, i + 1, end - 1))
        return end
    _, end = _DECODER.raw_decode(text, i)  # a number, true, false or null
    out.append((path, i, int(end)))
    return int(end)


_DECODER = json.JSONDecoder()
# The stdlib's string scanner (C-accelerated): (value, index after the closing quote).
# Typeshed does not declare it.
scanstring = cast(
    "Callable[[str, int], tuple[str, int]]",
    json.decoder.scanstring,  # type: ignore[attr-defined]
)


def value_spans(text: str, start: int = 0) -> tuple[list[tuple[Path, int, int]], int]:
    """Parse the JSON value starting at ``start``; return its leaves and its end.

    Each leaf is ``(path, begin, end)`` with ``text[begin:end]`` the leaf as written: a
    string's characters inside its quotes (escapes as written), a number, ``true``,
    ``false`` or ``null``. Raises :class:`ValueError` when the text is not JSON.

    Examples
    --------
    >>> leaves, end = value_spans('{"a": [1, {"b": "xy"}], "c": null}')
    >>> leaves
    [(('a', 0), 7, 8), (('a', 1, 'b'), 17, 19), (('c',), 29, 33)]
    >>> end
    34
    """
    out: list[tuple[Path, int, int]] = []
    try:
        end = _value(text, _skip(text, start), (), out)
    except RecursionError as e:
        msg = "the JSON is nested too deeply"
        raise ValueError(msg) from e
    return out, end


def _json_bounds(text: str) -> tuple[int, int]:
    """Where the answer's JSON is: inside a ```` ``` ```` fence if any, whitespace trimmed."""
    m = _FENCE.match(text)
    lo, hi = (m.start(1), m.end(1)) if m else (0, len(text))
    lo = _skip(text, lo)
    while hi > lo and text[hi - 1] in _WS:
        hi -= 1
    return lo, hi


# -- mapping -----------------------------------------------------------------------------------


def normalize(citation: Mapping[str, Any]) -> dict[str, Any] | None:
    """One provider citation as a :data:`CITATION` dict; ``None`` for non-document kinds.

    Examples
    --------
    >>> normalize({"type": "page_location", "cited_text": "x", "document_index": 1,
    ...            "start_page_number": 2, "end_page_number": 3})["start_page"]
    2
    >>> normalize({"type": "web_search_result_location", "cited_text": "x"}) is None
    True
    """
    names = _KINDS.get(str(citation.get("type")))
    if names is None:
        return None
    out: dict[str, Any] = {name: None for name in CITATION.to_schema()}
    out["cited_text"] = citation.get("cited_text")
    out["document_index"] = citation.get("document_index")
    out["document_title"] = citation.get("document_title")
    for ours, theirs in names:
        out[ours] = citation.get(theirs)
    return out


def map_citations(
    blocks: Sequence[Mapping[str, Any]] | None,
    fields: Sequence[str],
    *,
    json_answer: bool = True,
) -> tuple[str | None, str | None]:
    """The answer text and its citations per field, from a message's content blocks.

    Parameters
    ----------
    blocks
        The message's content blocks (``{"type", "text", "citations"}``; other block types
        are skipped).
    fields
        The top-level fields (``["response"]`` for a text answer).
    json_answer
        ``False`` for a text answer: its one field gets every citation.

    Returns
    -------
    tuple
        The answer text (the JSON alone: fence and surrounding whitespace removed) and the
        citations as JSON text ``{"field": [citation, ...], ...}`` with every field present
        (see the module docstring for the rule). The citations are ``None`` when the answer
        has no text or is not a JSON object; the text then goes to schema validation as it
        is, which fails it.
    """
    pieces: list[str] = []
    spans: list[tuple[int, int, list[dict[str, Any]]]] = []
    pos = 0
    for block in blocks or ():
        if block.get("type") != "text":
            continue
        text = block.get("text") or ""
        cited = [c for c in map(normalize, block.get("citations") or ()) if c is not None]
        if cited:
            spans.append((pos, pos + len(text), cited))
        pieces.append(text)
        pos += len(text)
    if not pieces:
        return None, None
    full = "".join(pieces)
    if not json_answer:
        every = [c for _, _, cited in spans for c in cited]
        return full, json.dumps({f: _unique(every) for f in fields})
    lo, hi = _json_bounds(full)
    answer = full[lo:hi]
    if not full.startswith("{", lo):
        return answer, None
    try:
        leaves, end = value_spans(full, lo)
    except ValueError:
        return answer, None
    if _skip(full, end) < hi:
        return answer, None  # text after the object: not a clean answer
    ranges: dict[str, list[tuple[int, int]]] = {}
    for path, begin, stop in leaves:
        if path and isinstance(path[0], str):
            ranges.setdefault(path[0], []).append((begin, stop))
    out: dict[str, list[dict[str, Any]]] = {}
    for f in fields:
        found: list[dict[str, Any]] = []
        for b_lo, b_hi, cited in spans:
            if any(b_lo < v_hi and v_lo < b_hi for v_lo, v_hi in ranges.get(f, ())):
                found.extend(cited)
        out[f] = _unique(found)
    return answer, json.dumps(out, ensure_ascii=False)


def _unique(citations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for c in citations:
        key = tuple(c.values())
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def decode_citations(citations: pl.Expr, fields: Sequence[str]) -> list[pl.Expr]:
    """Expressions turning a column of citations JSON into the typed ``f_citations`` columns.

    One ``str.json_decode`` for the whole column; a null (a row that did not complete)
    gives null columns.

    Examples
    --------
    >>> df = pl.DataFrame({"c": ['{"a": [{"cited_text": "x", "start_char": 0}]}', None]})
    >>> out = df.select(decode_citations(pl.col("c"), ["a"]))
    >>> out.columns, out["a_citations"].list.len().to_list()
    (['a_citations'], [1, None])
    """
    dtype = pl.Struct({f: CITATIONS for f in fields})
    decoded = citations.str.json_decode(dtype)
    return [
        decoded.struct.field(f).alias(name)
        for f, name in zip(fields, citation_columns(fields), strict=True)
    ]
