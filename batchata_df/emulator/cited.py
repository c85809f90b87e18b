"""Emulated answers with citations, for Anthropic requests whose documents enable them.

A request with ``citations: {"enabled": true}`` on its documents is answered with several
``text`` blocks; the blocks that hold a value taken from a document carry a citation that
points at exactly where the value is in that document:

* a plain-text document (``source.type == "text"``): ``char_location``, 0-based character
  indices into ``source.data``, end exclusive, ``cited_text == data[start:end]``;
* a PDF (``source.type == "base64"``): ``page_location``, 1-based page numbers, end
  exclusive (one page: ``end = start + 1``), ``cited_text`` a line of the page's text as
  ``pypdf`` extracts it (imported only when a PDF is cited);
* a custom content document (``source.type == "content"``): ``content_block_location``,
  0-based block indices, end exclusive, ``cited_text`` the whole block's text.

``document_index`` counts the request's documents from 0 in request order.

When the system prompt carries a JSON Schema between ``<answer_json_schema>`` and
``</answer_json_schema>`` (as batchata-df writes it), the blocks concatenate to a JSON object
valid for that schema (no code fence): plain strings are document text (the first one a
word that occurs at least twice in a text document, cited at its *second* occurrence),
integers and numbers are copied from a document with their citation when one fits the
bounds, everything else (enums, booleans, dates, patterns, ...) and the schema's last
top-level field come from the uncited generator of :mod:`batchata_df.emulator.answers`. A
string value is always a block of its own, between the blocks holding its quotes. Without
a schema the answer is a sentence of prose with two cited document units. Everything is a
deterministic function of the request.
"""

from __future__ import annotations

import base64
import io
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from batchata_df.emulator import answers

__all__ = ["Unit", "document_units", "documents", "render", "schema_from_system"]

_SCHEMA: Final = re.compile(r"<answer_json_schema>\s*(.*?)\s*</answer_json_schema>", re.DOTALL)
_SENTENCE: Final = re.compile(r"[^\s.!?][^.!?\n]*[.!?]?")
_NUMBER: Final = re.compile(r"(?<![\w.-])(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?![\w]|\.[0-9])")
_WORD: Final = re.compile(r"\b[A-Za-z]{4,}\b")


@dataclass(frozen=True)
class Unit:
    """A value taken from a document and the citation pointing at it."""

    value: str
    citation: dict[str, Any]


@dataclass
class _Units:
    strings: list[Unit]
    numbers: list[Unit]
    repeated: list[Unit]


def schema_from_system(system: str) -> dict[str, Any] | None:
    r"""The JSON Schema between ``<answer_json_schema>`` tags, if any.

    Examples
    --------
    >>> schema_from_system('Answer.\n<answer_json_schema>\n{"type": "object"}\n'
    ...                    '</answer_json_schema>')
    {'type': 'object'}
    """
    m = _SCHEMA.search(system)
    if m is None:
        return None
    try:
        value = json.loads(m.group(1))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def documents(messages: object) -> list[dict[str, Any]]:
    """The ``document`` blocks of a request's messages, in request order."""
    out: list[dict[str, Any]] = []
    if not isinstance(messages, list):
        return out
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            out.extend(b for b in content if isinstance(b, dict) and b.get("type") == "document")
    return out


def _citation(kind: str, cited: str, index: int, title: object, lo: int, hi: int) -> dict[str, Any]:
    names = {
        "char_location": ("start_char_index", "end_char_index"),
        "page_location": ("start_page_number", "end_page_number"),
        "content_block_location": ("start_block_index", "end_block_index"),
    }[kind]
    return {
        "type": kind,
        "cited_text": cited,
        "document_index": index,
        "document_title": title if isinstance(title, str) else None,
        "file_id": None,
        names[0]: lo,
        names[1]: hi,
    }


def _pdf_pages(data: object) -> list[str]:
    try:
        import pypdf

        raw = base64.b64decode(str(data), validate=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = pypdf.PdfReader(io.BytesIO(raw))
            return [page.extract_text() or "" for page in reader.pages]
    except Exception:  # an unreadable PDF simply offers nothing to cite
        return []


def document_units(index: int, block: Mapping[str, Any]) -> _Units:
    """What one document offers to cite: sentences/lines/blocks, numbers, repeated words."""
    units = _Units([], [], [])
    source = block.get("source")
    source = source if isinstance(source, dict) else {}
    title = block.get("title")
    kind = source.get("type")
    if kind == "text" and isinstance(source.get("data"), str):
        text = source["data"]
        for m in _SENTENCE.finditer(text):
            value = m.group().rstrip()
            end = m.start() + len(value)
            cite = _citation("char_location", value, index, title, m.start(), end)
            units.strings.append(Unit(value, cite))
        for m in _NUMBER.finditer(text):
            cite = _citation("char_location", m.group(), index, title, m.start(), m.end())
            units.numbers.append(Unit(m.group(), cite))
        seen: set[str] = set()
        for m in _WORD.finditer(text):
            word = m.group()
            if word in seen:
                cite = _citation("char_location", word, index, title, m.start(), m.end())
                units.repeated.append(Unit(word, cite))
            seen.add(word)
    elif kind == "base64" and source.get("media_type") == "application/pdf":
        for number, page in enumerate(_pdf_pages(source.get("data")), start=1):
            for line in page.splitlines():
                line = line.strip()
                if not line:
                    continue
                cite = _citation("page_location", line, index, title, number, number + 1)
                units.strings.append(Unit(line, cite))
                for m in _NUMBER.finditer(line):
                    num = _citation("page_location", m.group(), index, title, number, number + 1)
                    units.numbers.append(Unit(m.group(), num))
    elif kind == "content" and isinstance(source.get("content"), list):
        for i, item in enumerate(source["content"]):
            if not (isinstance(item, dict) and isinstance(item.get("text"), str)):
                continue
            text = item["text"].strip()
            if not text:
                continue
            cite = _citation("content_block_location", item["text"], index, title, i, i + 1)
            units.strings.append(Unit(text, cite))
            for m in _NUMBER.finditer(text):
                units.numbers.append(Unit(m.group(), cite))
    return units


class _Writer:
    """Text blocks being written: uncited text merges, each cited value is its own block."""

    def __init__(self) -> None:
        self.blocks: list[dict[str, Any]] = []

    def raw(self, text: str) -> None:
        if self.blocks and self.blocks[-1]["citations"] is None:
            self.blocks[-1]["text"] += text
        else:
            self.blocks.append({"type": "text", "text": text, "citations": None})

    def cited(self, text: str, citation: dict[str, Any]) -> None:
        self.blocks.append({"type": "text", "text": text, "citations": [citation]})


class _Answer:
    def __init__(self, root: Mapping[str, Any], units: _Units, seed: str) -> None:
        self.root = root
        self.defs = root.get("$defs") or root.get("definitions") or {}
        self.seed = seed
        shift = answers.seed_int(seed)
        strings = units.strings
        if strings:
            k = shift % len(strings)
            strings = strings[k:] + strings[:k]
        self.strings = list(units.repeated[:1]) + strings
        self.numbers = list(units.numbers)
        self.out = _Writer()

    def _resolve(self, node: Mapping[str, Any]) -> Mapping[str, Any]:
        for _ in range(32):
            ref = node.get("$ref")
            if not isinstance(ref, str):
                break
            target = self.defs.get(ref.rsplit("/", 1)[-1])
            if not isinstance(target, dict):
                break
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    def _fake(self, node: Mapping[str, Any], path: str) -> None:
        schema = {**node, "$defs": self.defs} if self.defs else dict(node)
        self.out.raw(json.dumps(answers.fake_value(schema, f"{self.seed}\x1f{path}")))

    def value(self, node: Mapping[str, Any], path: str, *, cite: bool = True) -> None:
        node = self._resolve(node)
        branches = node.get("anyOf") or node.get("oneOf")
        if isinstance(branches, list):
            real = [b for b in branches if isinstance(b, dict) and b.get("type") != "null"]
            if real:
                self.value({**{k: v for k, v in node.items() if k not in ("anyOf", "oneOf")},
                            **real[0]}, path, cite=cite)  # fmt: skip
                return
        kind = node.get("type")
        special = any(k in node for k in ("enum", "const", "format", "pattern"))
        if kind == "object" and isinstance(node.get("properties"), dict):
            self._object(node, path, cite=cite)
        elif kind == "array" and isinstance(node.get("items"), dict) and not special:
            lo = int(node.get("minItems", 0))
            hi = int(node.get("maxItems", max(lo, 2)))
            n = max(lo, min(2, hi))
            self.out.raw("[")
            for i in range(n):
                if i:
                    self.out.raw(",")
                self.value(node["items"], f"{path}[{i}]", cite=cite)
            self.out.raw("]")
        else:
            plain = cite and not special
            if kind == "string" and plain and self._string(node):
                return
            if kind in ("integer", "number") and plain and self._number(node):
                return
            self._fake(node, path)

    def _object(self, node: Mapping[str, Any], path: str, *, cite: bool) -> None:
        props = node["properties"]
        keys = list(props)
        self.out.raw("{")
        for i, key in enumerate(keys):
            if i:
                self.out.raw(",")
            self.out.raw(json.dumps(key) + ":")
            # The root's last field stays uncited (when there are several): a field that
            # no document supports must come back with no citations.
            uncited = path == "" and len(keys) > 1 and i == len(keys) - 1
            self.value(props[key], f"{path}.{key}", cite=cite and not uncited)
        self.out.raw("}")

    def _string(self, node: Mapping[str, Any]) -> bool:
        lo, hi = int(node.get("minLength", 0)), node.get("maxLength")
        for i, unit in enumerate(self.strings):
            if len(unit.value) >= lo and (hi is None or len(unit.value) <= int(hi)):
                del self.strings[i]
                self.out.raw('"')
                self.out.cited(json.dumps(unit.value, ensure_ascii=False)[1:-1], unit.citation)
                self.out.raw('"')
                return True
        return False

    def _number(self, node: Mapping[str, Any]) -> bool:
        integer = node.get("type") == "integer"
        for i, unit in enumerate(self.numbers):
            if integer and "." in unit.value:
                continue
            number = float(unit.value)
            if not _within(node, number):
                continue
            del self.numbers[i]
            self.out.cited(unit.value, unit.citation)
            return True
        return False


def _within(node: Mapping[str, Any], x: float) -> bool:
    def bound(key: str) -> float | None:
        b = node.get(key)
        return float(b) if isinstance(b, int | float) and not isinstance(b, bool) else None

    lo, hi = bound("minimum"), bound("maximum")
    xlo, xhi = bound("exclusiveMinimum"), bound("exclusiveMaximum")
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        return False
    if (xlo is not None and x <= xlo) or (xhi is not None and x >= xhi):
        return False
    step = node.get("multipleOf")
    return not (isinstance(step, int | float) and step and (x / step) % 1)


def render(
    docs: Sequence[Mapping[str, Any]], schema: Mapping[str, Any] | None, seed: str
) -> list[dict[str, Any]]:
    """The ``text`` blocks (with citations) answering a request with these documents."""
    units = _Units([], [], [])
    for index, doc in enumerate(docs):
        more = document_units(index, doc)
        units.strings += more.strings
        units.numbers += more.numbers
        units.repeated += more.repeated
    if schema is None:
        out = _Writer()
        out.raw("Based on the documents: ")
        for unit in units.strings[:2]:
            out.cited(unit.value, unit.citation)
            out.raw(" ")
        if not units.strings:
            out.raw(answers.fake_text("", seed))
        return out.blocks
    answer = _Answer(schema, units, seed)
    answer.value(schema, "")
    return answer.out.blocks
