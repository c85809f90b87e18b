"""Per-field citation columns: the mapping rule, the Anthropic decoder, and batch_llm end to end."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import anthropic
import polars as pl
import pytest
from anthropic.types import (
    CitationCharLocation,
    CitationContentBlockLocation,
    CitationPageLocation,
    TextBlock,
)
from anthropic.types.messages import MessageBatchIndividualResponse
from pydantic import BaseModel

from batchata_df import ColumnError, ConfigError, batch_llm
from batchata_df.citations import (
    CITATIONS,
    SCHEMA_CLOSE,
    SCHEMA_OPEN,
    instruction,
    map_citations,
    value_spans,
)
from batchata_df.emulator.cited import schema_from_system
from batchata_df.providers.anthropic import AnthropicProvider, decode_results
from batchata_df.providers.base import RESULTS, RequestSpec
from batchata_df.schema import AnswerSchema

MODEL = "claude-haiku-4-5"


# -- the mapping rule --------------------------------------------------------------------------


def cite(text: str, start: int, kind: str = "char_location", doc: int = 0) -> dict[str, Any]:
    """A provider citation of ``text`` at ``start`` (chars, pages or blocks by ``kind``)."""
    names = {
        "char_location": ("start_char_index", "end_char_index", len(text)),
        "page_location": ("start_page_number", "end_page_number", 1),
        "content_block_location": ("start_block_index", "end_block_index", 1),
    }[kind]
    return {
        "type": kind,
        "cited_text": text,
        "document_index": doc,
        "document_title": "doc",
        names[0]: start,
        names[1]: start + names[2],
    }


def blocks(*parts: str | tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Text blocks: a plain string is uncited, ``(text, citation)`` is cited."""
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, str):
            out.append({"type": "text", "text": part, "citations": None})
        else:
            out.append({"type": "text", "text": part[0], "citations": [part[1]]})
    return out


def mapped(parts: list[dict[str, Any]], fields: list[str]) -> tuple[str | None, dict[str, Any]]:
    text, cited = map_citations(parts, fields)
    assert cited is not None
    return text, json.loads(cited)


def starts(found: list[dict[str, Any]], key: str = "start_char") -> list[int]:
    return [c[key] for c in found]


def test_numbers_and_booleans_get_the_citation_of_their_block():
    c_num, c_bool = cite("42", 100), cite("yes", 7)
    text, out = mapped(
        blocks('{"rating": ', ("42", c_num), ', "ok": ', ("true", c_bool), ', "x": 1}'),
        ["rating", "ok", "x"],
    )
    assert json.loads(text or "") == {"rating": 42, "ok": True, "x": 1}
    assert starts(out["rating"]) == [100]
    assert starts(out["ok"]) == [7]
    assert out["x"] == []


def test_a_value_occurring_twice_is_mapped_by_position_not_by_search():
    # The same value for two fields; only the block holding the second one is cited.
    c = cite("Paris", 50)
    _, out = mapped(blocks('{"a": "Paris", "b": "', ("Paris", c), '"}'), ["a", "b"])
    assert out["a"] == []
    assert starts(out["b"]) == [50]


def test_same_value_cited_at_two_places():
    c1, c2 = cite("Paris", 3), cite("Paris", 50)
    _, out = mapped(blocks('{"a": "', ("Paris", c1), '", "b": "', ("Paris", c2), '"}'), ["a", "b"])
    assert starts(out["a"]) == [3]
    assert starts(out["b"]) == [50]


def test_nested_models_and_lists_of_models_collect_citations_of_any_leaf():
    c_city, c_b, c_n = cite("Lyon", 1), cite("B", 2), cite("7", 3)
    parts = blocks(
        '{"address": {"street": "x", "city": "',
        ("Lyon", c_city),
        '"}, "items": [{"name": "A", "n": 1}, {"name": "',
        ("B", c_b),
        '", "n": ',
        ("7", c_n),
        '}], "tags": []}',
    )
    _, out = mapped(parts, ["address", "items", "tags"])
    assert starts(out["address"]) == [1]
    assert starts(out["items"]) == [2, 3]
    assert out["tags"] == []


def test_a_field_without_support_gets_an_empty_list_and_absent_fields_too():
    _, out = mapped(blocks('{"a": "free text", "b": 2}'), ["a", "b", "missing"])
    assert out == {"a": [], "b": [], "missing": []}


def test_fenced_json_is_unwrapped_and_positions_still_match():
    c = cite("Acme", 10, "page_location")
    text, out = mapped(
        blocks('```json\n{"company": "', ("Acme", c), '", "n": 3}\n```\n'), ["company", "n"]
    )
    assert text == '{"company": "Acme", "n": 3}'
    assert out["company"][0]["start_page"] == 10
    assert out["company"][0]["end_page"] == 11
    assert out["company"][0]["start_char"] is None
    assert out["n"] == []


def test_a_value_split_over_blocks_gets_the_citations_of_every_part():
    c1, c2 = cite("Acme", 0), cite("Corp", 20, doc=1)
    _, out = mapped(blocks('{"name": "', ("Acme ", c1), ("Corp", c2), '", "k": 1}'), ["name", "k"])
    assert [(c["document_index"], c["start_char"]) for c in out["name"]] == [(0, 0), (1, 20)]
    assert out["k"] == []


def test_a_block_spanning_two_fields_counts_for_both_and_structure_alone_for_none():
    c_span, c_key = cite("x", 1), cite("y", 2)
    parts = blocks('{"a": "o', ('ne", "b": "tw', c_span), 'o", ', ('"c": ', c_key), '""}')
    _, out = mapped(parts, ["a", "b", "c"])
    assert starts(out["a"]) == [1]
    assert starts(out["b"]) == [1]
    assert out["c"] == []  # only its key was in a cited block; its value is empty


def test_duplicates_are_kept_once_and_other_citation_kinds_are_ignored():
    c = cite("Acme", 4)
    web = {"type": "web_search_result_location", "cited_text": "w", "url": "u", "title": None,
           "encrypted_index": "e"}  # fmt: skip
    parts = blocks('{"a": "', ("Ac", c), ("me", c), '"}')
    parts[1]["citations"].append(web)
    _, out = mapped(parts, ["a"])
    assert starts(out["a"]) == [4]


def test_escaped_strings_keep_exact_spans():
    leaves, end = value_spans('{"q": "say \\"hi\\"", "n": [1, -2.5e3, true, null]}')
    assert [p for p, _, _ in leaves] == [("q",), ("n", 0), ("n", 1), ("n", 2), ("n", 3)]
    text = '{"q": "say \\"hi\\"", "n": [1, -2.5e3, true, null]}'
    assert [text[a:b] for _, a, b in leaves] == ['say \\"hi\\"', "1", "-2.5e3", "true", "null"]
    assert end == len(text)


def test_thinking_blocks_are_skipped_and_text_is_concatenated():
    c = cite("Acme", 0)
    parts = [
        {"type": "thinking", "thinking": "{", "signature": "s"},
        *blocks('{"a": "', ("Acme", c), '"}'),
    ]
    text, out = mapped(parts, ["a"])
    assert text == '{"a": "Acme"}'
    assert starts(out["a"]) == [0]


@pytest.mark.parametrize(
    "answer", ["Here is the JSON: {}", '{"a": 1} and more', '{"a": ', "[1, 2]", ""]
)
def test_not_a_clean_json_object_gives_no_citations(answer):
    text, cited = map_citations(blocks(answer, ('x"}', cite("x", 0))), ["a"])
    assert cited is None
    assert text is not None


def test_no_text_blocks_gives_nothing():
    assert map_citations([], ["a"]) == (None, None)
    assert map_citations(None, ["a"]) == (None, None)


def test_a_text_answer_gives_every_citation_to_its_one_field():
    text, cited = map_citations(
        blocks("It says ", ("Acme", cite("Acme", 0)), " and ", ("Corp", cite("Corp", 9))),
        ["response"],
        json_answer=False,
    )
    assert text == "It says Acme and Corp"
    assert starts(json.loads(cited or "")["response"]) == [0, 9]


def test_instruction_carries_the_schema_between_the_markers_the_emulator_reads():
    schema = AnswerSchema(_Facts).json_schema
    assert schema is not None
    text = instruction(schema)
    assert SCHEMA_OPEN in text and SCHEMA_CLOSE in text
    assert schema_from_system("You are terse.\n\n" + text) == schema


# -- the Anthropic provider: encode and decode ---------------------------------------------------


class _Facts(BaseModel):
    company: str
    employees: int
    founded_in: str
    summary: str


def test_encode_with_citations_has_no_output_config_and_our_system_first(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    spec = RequestSpec(AnswerSchema(_Facts), {"max_tokens": 100}, citations=True)
    jobs = pl.DataFrame(
        {
            "job_id": ["a", "b"],
            "model": [MODEL, MODEL],
            "prompt": ["p", "q"],
            "system": ["Be terse.", None],
        }
    )
    lines = [json.loads(x) for x in AnthropicProvider().encode(jobs, spec)]
    for line in lines:
        assert "output_config" not in line["params"]
        assert schema_from_system(line["params"]["system"]) == spec.schema.json_schema
    assert lines[0]["params"]["system"].endswith("\n\nBe terse.")
    assert lines[1]["params"]["system"].endswith(SCHEMA_CLOSE)
    plain = RequestSpec(AnswerSchema(_Facts), {"max_tokens": 100})
    line = json.loads(AnthropicProvider().encode(jobs, plain)[0])
    assert "output_config" in line["params"] and line["params"]["system"] == "Be terse."


def _succeeded(custom_id: str, content: list[dict[str, Any]]) -> str:
    usage = {"input_tokens": 5, "output_tokens": 3, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0}  # fmt: skip
    message = {"content": content, "stop_reason": "end_turn", "usage": usage}
    return json.dumps({"custom_id": custom_id, "result": {"type": "succeeded", "message": message}})


def test_decode_results_maps_citations_and_unfences_the_text():
    content = blocks(
        '```json\n{"company": "',
        ("Acme", cite("Acme", 5)),
        '", "employees": ',
        ("250", cite("250", 40)),
        ', "founded_in": "Paris", "summary": "s"}\n```',
    )
    data = "\n".join(
        [
            _succeeded("a", content),
            _succeeded("b", blocks('{"company": 1}')),
            json.dumps({"custom_id": "c", "result": {"type": "canceled"}}),
        ]
    ).encode()
    spec = RequestSpec(AnswerSchema(_Facts), {"max_tokens": 100}, citations=True)
    out = decode_results(data, spec)
    assert out.schema == RESULTS
    a, b, c = out.sort("job_id").rows(named=True)
    assert json.loads(a["text"])["employees"] == 250
    cited = json.loads(a["citations"])
    assert starts(cited["company"]) == [5] and starts(cited["employees"]) == [40]
    assert cited["founded_in"] == [] and cited["summary"] == []
    assert b["text"] == '{"company": 1}' and json.loads(b["citations"])["employees"] == []
    assert c["text"] is None and c["citations"] is None
    # Without citations the column is there, null.
    plain = decode_results(data, RequestSpec(AnswerSchema(_Facts), {"max_tokens": 1}))
    assert plain.schema == RESULTS and plain["citations"].null_count() == 3


# -- end to end through the SDK and the emulator -------------------------------------------------

TEXT = (
    "Acme Robotics builds warehouse robots. Acme Robotics employs 250 people. "
    "The company was founded in Lyon in 1998. Its robots move 40 boxes per minute. "
    "Lyon remains the home of its largest factory."
)
PAGES = [
    "Annual report of Acme Robotics",
    "Revenue grew 42 percent in Europe",
    "The board approved 3 new plants",
]


def _pdf(path: Path, pages: list[str]) -> Path:
    from reportlab.lib.pagesizes import letter
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=letter)
    for text in pages:
        c.drawString(72, 700, text)
        c.showPage()
    c.save()
    return path


def _page_texts(path: Path) -> list[str]:
    import pypdf

    return [p.extract_text() or "" for p in pypdf.PdfReader(io.BytesIO(path.read_bytes())).pages]


class Report(BaseModel):
    company: str
    employees: int
    headline: str
    city: str
    summary: str


@pytest.fixture
def docs(tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "notes.txt"
    text.write_text(TEXT, encoding="utf-8")
    return {"text": text, "pdf": _pdf(tmp_path / "report.pdf", PAGES)}


def _check_row(row: dict[str, Any], files: list[Path], fields: list[str]) -> list[dict[str, Any]]:
    """Every citation points at exactly its text in its document; return them all."""
    texts = {i: f.read_text(encoding="utf-8") for i, f in enumerate(files) if f.suffix == ".txt"}
    pages = {i: _page_texts(f) for i, f in enumerate(files) if f.suffix == ".pdf"}
    every = []
    for field in fields:
        for c in row[f"{field}_citations"]:
            i = c["document_index"]
            assert 0 <= i < len(files)
            assert c["document_title"] == files[i].name
            if c["start_char"] is not None:
                assert c["start_page"] is None and c["start_block"] is None
                assert texts[i][c["start_char"] : c["end_char"]] == c["cited_text"]
            else:
                assert c["start_char"] is None and c["start_block"] is None
                assert 1 <= c["start_page"] < c["end_page"] <= len(pages[i]) + 1
                cited_pages = pages[i][c["start_page"] - 1 : c["end_page"] - 1]
                assert any(c["cited_text"] in p for p in cited_pages)
            value = row[field]
            if isinstance(value, int):
                assert str(value) == c["cited_text"]
            elif isinstance(value, str):
                assert value == c["cited_text"]
            every.append({**c, "field": field})
    return every


def test_batch_llm_citations_end_to_end(emu, docs, tmp_path):
    text, pdf = docs["text"], docs["pdf"]
    rows = [[str(text), str(pdf)], [str(pdf)], [str(text)]]
    df = pl.DataFrame({"id": [1, 2, 3], "files": rows})
    state = tmp_path / "state"
    out = df.pipe(
        batch_llm,
        schema=Report,
        model=MODEL,
        prompt="Extract the facts",
        files="files",
        citations=True,
        system="Be exact.",
        state=state,
    )
    fields = ["company", "employees", "headline", "city", "summary"]
    cite_cols = [f"{f}_citations" for f in fields]
    assert out.columns[:2] == ["id", "files"]
    assert out.columns[2:12] == [*fields, *cite_cols]
    assert out.columns[12] == "_status"
    assert all(out.schema[c] == CITATIONS for c in cite_cols)
    assert out["_status"].to_list() == ["completed"] * 3

    every = []
    for row, paths in zip(out.rows(named=True), rows, strict=True):
        found = _check_row(row, [Path(p) for p in paths], fields)
        every += found
        # The last field is never supported by a document: an empty list, not a guess.
        assert row["summary_citations"] == []
        assert found, "each row cites something"
    kinds = {("page" if c["start_page"] is not None else "char") for c in every}
    assert kinds == {"page", "char"}
    # A number copied from a document, with its citation.
    assert any(c["field"] == "employees" for c in every)
    # The value that occurs twice in the text is cited at its second occurrence.
    row3 = out.row(2, named=True)
    (first,) = row3["company_citations"]
    assert TEXT.count(row3["company"]) >= 2
    assert first["start_char"] > TEXT.index(row3["company"])
    # The PDF-only row cites pages of document 0 with page ranges of one page.
    row2 = out.row(1, named=True)
    page_cites = [c for f in fields for c in row2[f"{f}_citations"]]
    assert page_cites and all(c["end_page"] == c["start_page"] + 1 for c in page_cites)

    # Resuming reads the same citations back from the checkpoint; nothing is sent again.
    n_creates = _creates(emu)
    assert n_creates == 1
    again = df.pipe(
        batch_llm,
        schema=Report,
        model=MODEL,
        prompt="Extract the facts",
        files="files",
        citations=True,
        system="Be exact.",
        state=state,
    )
    assert _creates(emu) == n_creates
    assert again.select(cite_cols).equals(out.select(cite_cols))


def _creates(emu) -> int:
    return sum(
        1 for e in emu.log() if e["method"] == "POST" and e["path"].endswith("/v1/messages/batches")
    )


def test_rows_that_do_not_complete_get_null_citation_columns(emu, docs):
    df = pl.DataFrame(
        {
            "p": ["fine", "bad [[emulator:invalid]]", "boom [[emulator:error]]"],
            "f": [str(docs["text"])] * 3,
        }
    )
    out = df.pipe(batch_llm, schema=Report, model=MODEL, prompt="{p}", files="f", citations=True)
    assert out["_status"].to_list() == ["completed", "failed", "failed"]
    assert out["_error"][1].startswith("schema_validation")
    for field in ["company", "employees", "headline", "city", "summary"]:
        col = out[f"{field}_citations"]
        assert col[0] is not None and col.is_null().to_list() == [False, True, True]


def test_text_answer_citations_go_to_the_response_column(emu, docs):
    out = pl.DataFrame({"f": [str(docs["text"])]}).pipe(
        batch_llm, model=MODEL, prompt="Summarize", files="f", citations=True
    )
    assert out.columns[:3] == ["f", "response", "response_citations"]
    row = out.row(0, named=True)
    assert len(row["response_citations"]) == 2
    for c in row["response_citations"]:
        assert TEXT[c["start_char"] : c["end_char"]] == c["cited_text"]
        assert c["cited_text"] in row["response"]


def test_without_citations_there_are_no_citation_columns(emu, docs):
    out = pl.DataFrame({"f": [str(docs["text"])]}).pipe(
        batch_llm, schema=Report, model=MODEL, prompt="x", files="f"
    )
    assert not [c for c in out.columns if c.endswith("_citations")]
    assert out["_status"].to_list() == ["completed"]


@pytest.mark.parametrize("model", ["gpt-4.1-mini", "gemini-2.5-flash"])
def test_citations_with_a_provider_without_citations_is_a_config_error(emu, docs, model):
    df = pl.DataFrame({"f": [str(docs["text"])]})
    with pytest.raises(ConfigError, match="citations=True is supported for \\['anthropic'\\]"):
        df.pipe(batch_llm, schema=Report, model=model, prompt="x", files="f", citations=True)
    assert emu.log() == []


def test_citations_with_a_model_per_row_mixing_providers_is_a_config_error(emu, docs):
    df = pl.DataFrame({"f": [str(docs["text"])] * 2, "m": [MODEL, "gpt-4.1-mini"]})
    with pytest.raises(ConfigError, match="'openai'"):
        df.pipe(batch_llm, schema=Report, model=pl.col("m"), prompt="x", files="f", citations=True)
    assert emu.log() == []


def test_citations_without_files_is_a_config_error(emu):
    with pytest.raises(ConfigError, match="files="):
        pl.DataFrame({"t": ["a"]}).pipe(
            batch_llm, schema=Report, model=MODEL, prompt="{t}", citations=True
        )
    assert emu.log() == []


def test_citation_column_collision_is_an_error_before_anything_is_sent(emu, docs):
    df = pl.DataFrame({"f": [str(docs["text"])], "city_citations": [1]})
    with pytest.raises(ColumnError, match="city_citations"):
        df.pipe(batch_llm, schema=Report, model=MODEL, prompt="x", files="f", citations=True)
    # Without citations= the same input column is fine.
    out = df.pipe(batch_llm, schema=Report, model=MODEL, prompt="x", files="f")
    assert out["_status"].to_list() == ["completed"]


# -- the emulator's cited answers validate with the SDK's own types ------------------------------


def test_emulator_cited_answers_validate_with_the_sdk_types(emu, docs):
    import base64

    client = anthropic.Anthropic(api_key="sk-test", base_url=emu.env()["ANTHROPIC_BASE_URL"])
    schema = AnswerSchema(Report).json_schema
    assert schema is not None
    pdf_b64 = base64.b64encode(docs["pdf"].read_bytes()).decode()
    on = {"enabled": True}
    documents = [
        {"type": "document", "title": "notes", "citations": on,
         "source": {"type": "text", "media_type": "text/plain", "data": TEXT}},
        {"type": "document", "title": "report", "citations": on,
         "source": {"type": "base64", "media_type": "application/pdf", "data": pdf_b64}},
        {"type": "document", "title": "chunks", "citations": on,
         "source": {"type": "content", "content": [
             {"type": "text", "text": "Chunk zero says 7 cats."},
             {"type": "text", "text": "Chunk one is here."}]}},
    ]  # fmt: skip
    requests = [
        {
            "custom_id": f"r{i}",
            "params": {
                "model": model,
                "max_tokens": 8000,  # room for thinking (Opus 5 thinks by default) and answer
                "system": system,
                "messages": [
                    {"role": "user", "content": [*documents, {"type": "text", "text": f"go {i}"}]}
                ],
            },
        }
        for i, (model, system) in enumerate(
            [
                (MODEL, instruction(schema)),
                ("claude-opus-5", instruction(schema)),
                (MODEL, "no schema here"),
            ]
            + [(MODEL, instruction(schema))] * 6
        )
    ]
    batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    with client.messages.batches.with_streaming_response.results(batch.id) as r:
        lines = [json.loads(x) for x in r.iter_lines() if x.strip()]
    seen: set[type] = set()
    for line in lines:
        item = MessageBatchIndividualResponse.model_validate(line, strict=False)
        assert item.result.type == "succeeded"
        content = item.result.message.content
        texts = [b for b in content if isinstance(b, TextBlock)]
        assert texts and len(texts) == len([b for b in content if b.type == "text"])
        for block in texts:
            for c in block.citations or []:
                seen.add(type(c))
                if isinstance(c, CitationCharLocation):
                    assert TEXT[c.start_char_index : c.end_char_index] == c.cited_text
                elif isinstance(c, CitationPageLocation):
                    assert c.end_page_number == c.start_page_number + 1
                    page = _page_texts(docs["pdf"])[c.start_page_number - 1]
                    assert c.cited_text in page
                else:
                    assert isinstance(c, CitationContentBlockLocation)
                    chunks = documents[2]["source"]["content"]
                    joined = "".join(
                        b["text"] for b in chunks[c.start_block_index : c.end_block_index]
                    )
                    assert joined == c.cited_text
        whole = "".join(b.text for b in texts)
        if line["custom_id"] != "r2":
            Report.model_validate_json(whole)  # valid for the schema, no fence
        if line["custom_id"] == "r1":
            assert content[0].type == "thinking"
    assert seen == {CitationCharLocation, CitationPageLocation, CitationContentBlockLocation}


def test_a_prompt_without_columns_gives_one_job_per_row(emu, docs):
    # Found here: a select of literals alone collapsed the jobs to one row.
    df = pl.DataFrame({"f": [str(docs["text"])] * 3})
    out = df.pipe(batch_llm, schema=Report, model=MODEL, prompt="same", files="f", citations=True)
    assert out.height == 3 and out["_status"].to_list() == ["completed"] * 3
    assert out["_cost_usd"].to_list()[1:] == [0.0, 0.0]  # one request, paid once
