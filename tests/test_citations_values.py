"""citations.py by value: the position-tracking parser, citation kinds, typed columns.

Fast (no emulator), for the mutation run of ``citations.py`` (``tools/mutation.py``) with the
emulator-free tests of ``test_citations.py``.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest

from batchata_df.citations import (
    CITATION,
    CITATIONS,
    SCHEMA_CLOSE,
    SCHEMA_OPEN,
    citation_columns,
    decode_citations,
    instruction,
    map_citations,
    normalize,
    value_spans,
)


def test_leaf_spans_are_the_values_as_written() -> None:
    text = ' { "a" : [ 1 , -2.5e3 , "x\\"y" ] , "b" : { } , "c" : [ ] , "d" : {"e": true} }  '
    leaves, end = value_spans(text)
    assert [(path, text[lo:hi]) for path, lo, hi in leaves] == [
        (("a", 0), "1"),
        (("a", 1), "-2.5e3"),
        (("a", 2), 'x\\"y'),
        (("d", "e"), "true"),
    ]
    assert end == len(text.rstrip())
    leaves, end = value_spans('xx["é", null, false]yy', 2)
    assert leaves == [((0,), 4, 5), ((1,), 8, 12), ((2,), 14, 19)]
    assert end == 20
    assert value_spans("{}") == ([], 2)
    assert value_spans("[]") == ([], 2)
    assert value_spans('"s"') == ([((), 1, 2)], 3)
    assert value_spans("12") == ([((), 0, 2)], 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a" 1}', "expected ':' at 5"),
        ("{1: 2}", "expected a key at 1"),
        ('{"a": 1 "b": 2}', "expected ',' or '}' at 8"),
        ("[1 2]", "expected ',' or ']' at 3"),
    ],
)
def test_malformed_json_names_the_position(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[") + "$"):
        value_spans(text)


def test_json_nested_too_deeply_is_a_value_error_not_a_crash() -> None:
    with pytest.raises(ValueError, match="^the JSON is nested too deeply$"):
        value_spans("[" * 100_000 + "]" * 100_000)
    assert map_citations([{"type": "text", "text": '{"a": ' + "[" * 100_000}], ["a"]) == (
        '{"a": ' + "[" * 100_000, None)


def test_every_document_citation_kind_is_normalized() -> None:
    base = {"cited_text": "t", "document_index": 2, "document_title": "f.pdf"}
    none = dict.fromkeys(CITATION.to_schema())
    assert normalize({"type": "char_location", **base, "start_char_index": 3,
                      "end_char_index": 4, "start_page_number": 9}) == {
        **none, **base, "start_char": 3, "end_char": 4}
    assert normalize({"type": "page_location", **base, "start_page_number": 1,
                      "end_page_number": 2}) == {**none, **base, "start_page": 1, "end_page": 2}
    assert normalize({"type": "content_block_location", **base, "start_block_index": 0,
                      "end_block_index": 5}) == {**none, **base, "start_block": 0,
                                                 "end_block": 5}
    assert list(normalize({"type": "char_location"}) or {}) == list(CITATION.to_schema())
    assert normalize({"type": "search_result_location", **base}) is None
    assert normalize({**base}) is None


def _cite(text: str, start: int) -> dict[str, Any]:
    return {"type": "char_location", "cited_text": text, "document_index": 0,
            "document_title": "d", "start_char_index": start,
            "end_char_index": start + len(text)}


def test_fences_whitespace_and_adjacent_blocks() -> None:
    blocks = [
        {"type": "text", "text": "```json \r\n  {\"a\": \""},
        {"type": "text", "text": "A", "citations": [_cite("A", 0)]},
        {"type": "text", "text": '", "b": 1}\n\t```  \n'},
    ]
    text, cited = map_citations(blocks, ["a", "b"])
    assert text == '{"a": "A", "b": 1}'
    assert json.loads(cited or "") == {"a": [{**normalize(_cite("A", 0))}], "b": []}  # type: ignore[dict-item]
    # A cited block that ends exactly where a value starts does not support it.
    touching = [
        {"type": "text", "text": '{"a": ', "citations": [_cite("x", 1)]},
        {"type": "text", "text": '1, "b": 2', "citations": [_cite("y", 2)]},
        {"type": "text", "text": "}"},
    ]
    text, cited = map_citations(touching, ["a", "b"])
    assert text == '{"a": 1, "b": 2}'
    found = json.loads(cited or "")
    assert [c["cited_text"] for c in found["a"]] == ["y"]
    assert [c["cited_text"] for c in found["b"]] == ["y"]
    # An answer whose blocks are all empty or missing text is an empty answer.
    assert map_citations([{"type": "text", "text": None}, {"type": "text"}], ["a"]) == ("", None)
    # No fence but whitespace around: trimmed; unicode is kept as is in the JSON text.
    text, cited = map_citations([{"type": "text", "text": '\n {"a": "é"} \n',
                                  "citations": [_cite("é", 0)]}], ["a"])
    assert text == '{"a": "é"}'
    assert cited is not None and "é" in cited


def test_text_answers_get_every_citation_once_in_order() -> None:
    blocks = [
        {"type": "text", "text": "A", "citations": [_cite("A", 0), _cite("A", 0)]},
        {"type": "thinking", "text": "ignored", "citations": [_cite("T", 9)]},
        {"type": "text", "text": " and B", "citations": [_cite("B", 5),
                                                           {"type": "web", "cited_text": "w"}]},
    ]
    text, cited = map_citations(blocks, ["response"], json_answer=False)
    assert text == "A and B"
    assert [c["cited_text"] for c in json.loads(cited or "")["response"]] == ["A", "B"]


def test_citation_columns_are_typed_lists_per_field() -> None:
    assert citation_columns(["a", "b_c"]) == ["a_citations", "b_c_citations"]
    one = {"cited_text": "x", "document_index": 1, "document_title": "t", "start_page": 2,
           "end_page": 3, "start_char": None, "end_char": None, "start_block": None,
           "end_block": None}
    frame = pl.DataFrame({"c": [json.dumps({"a": [one], "b": []}), None]})
    out = frame.select(decode_citations(pl.col("c"), ["a", "b"]))
    assert out.schema == pl.Schema({"a_citations": CITATIONS, "b_citations": CITATIONS})
    assert out.to_dicts() == [{"a_citations": [one], "b_citations": []},
                              {"a_citations": None, "b_citations": None}]


def test_instruction_text_is_the_documented_prompt() -> None:
    schema = {"type": "object", "properties": {"näme": {"type": "string"}}}
    assert instruction(schema) == (
        "Answer with ONLY a JSON object that is valid for the JSON Schema below: no text "
        "before or after it and no code fence. Take the values from the documents where you "
        "can, citing them.\n"
        f"{SCHEMA_OPEN}\n"
        '{"type": "object", "properties": {"näme": {"type": "string"}}}\n'
        f"{SCHEMA_CLOSE}"
    )
    assert (SCHEMA_OPEN, SCHEMA_CLOSE) == ("<answer_json_schema>", "</answer_json_schema>")


def test_compact_json_escapes_and_empty_strings_have_exact_spans() -> None:
    # No whitespace after ':' or ',' (what models usually write), an empty string, an escape
    # first in a string, a number of several digits after a comma.
    text = '{"a":1,"b":[2,34],"c":"","d":"\\"q","e":[""]}'
    leaves, end = value_spans(text)
    assert [(path, text[lo:hi]) for path, lo, hi in leaves] == [
        (("a",), "1"),
        (("b", 0), "2"),
        (("b", 1), "34"),
        (("c",), ""),
        (("d",), '\\"q'),
        (("e", 0), ""),
    ]
    assert [(lo, hi) for _, lo, hi in leaves][3] == (23, 23)
    assert end == len(text)


def test_citations_follow_the_block_positions_across_many_blocks() -> None:
    # The cited block is the fourth: its span starts after all the text before it.
    blocks: list[dict[str, Any]] = [
        {"type": "text", "text": '{"a": "x", '},
        {"type": "text", "text": '"b": '},
        {"type": "text", "text": '"'},
        {"type": "text", "text": "YY", "citations": [_cite("YY", 3)]},
        {"type": "text", "text": '", "c": "z"}'},
    ]
    text, cited = map_citations(blocks, ["a", "b", "c"])
    assert text == '{"a": "x", "b": "YY", "c": "z"}'
    found = json.loads(cited or "")
    assert {f: [c["cited_text"] for c in cs] for f, cs in found.items()} == {
        "a": [], "b": ["YY"], "c": []}
    # A cited block that starts exactly where a value ends (its closing quote) does not
    # support that value, only the next one it overlaps.
    starting: list[dict[str, Any]] = [
        {"type": "text", "text": '{"a": "x'},
        {"type": "text", "text": '", "b": 7}', "citations": [_cite("7", 4)]},
    ]
    found = json.loads(map_citations(starting, ["a", "b"])[1] or "")
    assert {f: [c["cited_text"] for c in cs] for f, cs in found.items()} == {
        "a": [], "b": ["7"]}


@pytest.mark.parametrize("tail", [" ", "\n\t ", "\r\n\n"])
def test_any_amount_of_trailing_whitespace_is_trimmed(tail: str) -> None:
    block = {"type": "text", "text": '{"a": "v"}' + tail, "citations": [_cite("v", 0)]}
    text, cited = map_citations([block], ["a"])
    assert text == '{"a": "v"}'
    assert [c["cited_text"] for c in json.loads(cited or "")["a"]] == ["v"]
    fenced = {"type": "text", "text": "```json\n" + '{"a": "v"}' + tail + "```"}
    assert map_citations([fenced], ["a"]) == ('{"a": "v"}', '{"a": []}')
