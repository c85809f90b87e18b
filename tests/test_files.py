"""File inputs: loading every type, errors before any spend, and batch_llm end to end."""

from __future__ import annotations

import base64
import json
import zipfile
from pathlib import Path

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm
from batchata_df.errors import ColumnError, ConfigError, FileInputError
from batchata_df.files import (
    FILE_PARTS,
    LIMITS,
    content_json_expr,
    file_tokens,
    files_key,
    load_files,
)

PAGE_TEXT = ["Alpha page one", "Bravo page two", "Charlie page three"]
MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}


class Summary(BaseModel):
    title: str
    pages: int


def _pdf(path: Path, texts: list[str]) -> Path:
    from reportlab.lib.pagesizes import letter
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=letter)
    for text in texts:
        c.drawString(72, 720, text)
        c.showPage()
    c.save()
    return path


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import docx
    from PIL import Image

    root = tmp_path_factory.mktemp("samples")
    out = {
        "pdf": _pdf(root / "three.pdf", PAGE_TEXT),
        "pdf1": _pdf(root / "one.pdf", PAGE_TEXT[:1]),
    }
    document = docx.Document()
    document.add_paragraph("Quarterly report")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "region", "sales"
    table.cell(1, 0).text, table.cell(1, 1).text = "north", "42"
    document.add_paragraph("End of report")
    out["docx"] = root / "report.docx"
    document.save(str(out["docx"]))
    out["png"] = root / "red.png"
    Image.new("RGB", (640, 480), (255, 0, 0)).save(out["png"])
    out["jpg"] = root / "blue.jpg"
    Image.new("RGB", (300, 200), (0, 0, 255)).save(out["jpg"], quality=70)
    out["gif"] = root / "green.gif"
    Image.new("RGB", (32, 32), (0, 255, 0)).save(out["gif"])
    out["webp"] = root / "gray.webp"
    Image.new("RGB", (64, 48), (128, 128, 128)).save(out["webp"])
    out["txt"] = root / "note.txt"
    out["txt"].write_text("plain text note\nsecond line", encoding="utf-8")
    out["md"] = root / "readme.md"
    out["md"].write_text("# Title\n\n* item", encoding="utf-8")
    out["xlsx"] = root / "sheet.xlsx"
    with zipfile.ZipFile(out["xlsx"], "w") as z:
        z.writestr("xl/workbook.xml", "<workbook/>")
    out["bad_pdf"] = root / "broken.pdf"
    out["bad_pdf"].write_bytes(b"%PDF-1.7\nthis is not really a pdf")
    return out


def _load(values: list[object], provider: str = "openai") -> pl.Series:
    frame = pl.DataFrame({"f": values}, schema={"f": pl.Object} if _has_path(values) else None)
    return load_files(frame, "f", pl.Series([provider] * len(values)))


def _has_path(values: list[object]) -> bool:
    return any(isinstance(v, Path) for v in values)


def _one(series: pl.Series, row: int = 0) -> dict[str, object]:
    parts = series[row]
    assert len(parts) == 1
    return parts[0]


# -- load_files ------------------------------------------------------------------------------


def test_pdf(samples):
    files = _load([str(samples["pdf"])])
    assert files.dtype == FILE_PARTS
    part = _one(files)
    assert part["kind"] == "pdf"
    assert part["media_type"] == "application/pdf"
    assert part["name"] == "three.pdf"
    assert part["pages"] == 3
    raw = samples["pdf"].read_bytes()
    assert base64.b64decode(part["data_b64"]) == raw
    assert part["size"] == len(raw)
    assert len(part["sha256"]) == 64
    assert part["text"] is None


def test_text_and_markdown(samples):
    files = _load([str(samples["txt"]), str(samples["md"])])
    txt, md = _one(files, 0), _one(files, 1)
    assert (txt["kind"], txt["media_type"], txt["text"]) == (
        "text",
        "text/plain",
        "plain text note\nsecond line",
    )
    assert (md["kind"], md["media_type"]) == ("text", "text/markdown")
    assert md["text"].startswith("# Title")
    assert txt["data_b64"] is None


def test_docx_text_includes_tables_in_order(samples):
    part = _one(_load([str(samples["docx"])]))
    assert part["kind"] == "text"
    assert part["media_type"].endswith("wordprocessingml.document")
    assert part["text"].splitlines() == [
        "Quarterly report",
        "region | sales",
        "north | 42",
        "End of report",
    ]


@pytest.mark.parametrize(
    ("key", "media_type", "size"),
    [
        ("png", "image/png", (640, 480)),
        ("jpg", "image/jpeg", (300, 200)),
        ("gif", "image/gif", (32, 32)),
        ("webp", "image/webp", (64, 48)),
    ],
)
def test_images(samples, key, media_type, size):
    part = _one(_load([str(samples[key])]))
    assert (part["kind"], part["media_type"]) == ("image", media_type)
    assert (part["width"], part["height"]) == size
    assert base64.b64decode(part["data_b64"]) == samples[key].read_bytes()


def test_bytes_are_sniffed(samples):
    values = [samples[k].read_bytes() for k in ("pdf", "png", "jpg", "docx", "txt")]
    files = _load(values)
    kinds = [(_one(files, i)["kind"], _one(files, i)["media_type"]) for i in range(5)]
    assert kinds == [
        ("pdf", "application/pdf"),
        ("image", "image/png"),
        ("image", "image/jpeg"),
        ("text", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        ("text", "text/plain"),
    ]
    assert _one(files, 0)["name"].endswith(".pdf")
    assert _one(files, 0)["pages"] == 3
    assert "north | 42" in _one(files, 3)["text"]


def test_path_objects_lists_and_nulls(samples):
    files = _load([samples["pdf"], None, samples["png"]])
    assert files.list.len().to_list() == [1, 0, 1]
    lists = pl.DataFrame({"f": [[str(samples["txt"]), str(samples["png"])], None, []]})
    many = load_files(lists, "f", pl.Series(["anthropic"] * 3))
    assert many.list.len().to_list() == [2, 0, 0]
    assert [p["kind"] for p in many[0]] == ["text", "image"]


def test_each_distinct_file_is_read_once(samples, monkeypatch):
    reads: list[Path] = []
    original = Path.read_bytes

    def counting(self: Path) -> bytes:
        reads.append(self)
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", counting)
    files = _load([str(samples["pdf"])] * 50 + [str(samples["png"])] * 50)
    assert files.len() == 100
    assert len(reads) == 2


def test_missing_file_names_row_value_and_fix(samples):
    missing = str(samples["pdf"].parent / "nope.pdf")
    with pytest.raises(FileInputError, match=r"row 1, value '.*nope\.pdf'.*does not exist"):
        _load([str(samples["pdf"]), missing])


def test_a_folder_is_named_as_a_folder_not_as_a_file_type(samples, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    with pytest.raises(FileInputError, match=r"row 0.*scans' is a folder, not a file.*fix the"):
        _load([str(folder)])
    dotted = tmp_path / "v1.pdf"  # a folder whose name looks like a file
    dotted.mkdir()
    with pytest.raises(FileInputError, match=r"v1\.pdf' is a folder, not a file"):
        _load([str(dotted)])


def test_unsupported_type(samples):
    with pytest.raises(FileInputError, match=r"row 0.*'\.xlsx' is not supported; supported: PDF"):
        _load([str(samples["xlsx"])])
    with pytest.raises(FileInputError, match="not a supported file type"):
        _load([samples["xlsx"].read_bytes()])
    with pytest.raises(FileInputError, match="not a supported file type"):
        _load([b"\x00\xff\xfe binary"])


def test_corrupt_pdf_and_image(samples, tmp_path):
    with pytest.raises(FileInputError, match=r"row 0.*PDF is damaged or unreadable"):
        _load([str(samples["bad_pdf"])])
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(FileInputError, match="image is damaged or unreadable"):
        _load([str(fake)])
    wrong = tmp_path / "photo.png"
    wrong.write_bytes(samples["jpg"].read_bytes())
    with pytest.raises(FileInputError, match="image/jpeg image, not image/png"):
        _load([str(wrong)])


def test_bad_value_type():
    with pytest.raises(FileInputError, match="int 1 is not a file"):
        _load([[1]])


def test_missing_column_did_you_mean():
    frame = pl.DataFrame({"document": ["a.pdf"], "text": ["x"]})
    with pytest.raises(ColumnError, match="did you mean 'document'"):
        load_files(frame, "documents", pl.Series(["openai"]))


def test_over_provider_limits(samples, monkeypatch):
    import dataclasses

    size = samples["pdf"].stat().st_size
    small = dataclasses.replace(LIMITS["anthropic"], pdf_bytes=size - 1)
    monkeypatch.setitem(LIMITS, "anthropic", small)
    with pytest.raises(FileInputError, match=r"row 0.*anthropic accepts at most .* per PDF"):
        _load([str(samples["pdf"])], "anthropic")
    _load([str(samples["pdf"])], "openai")  # other providers keep their limits

    few = dataclasses.replace(LIMITS["openai"], pdf_pages=2)
    monkeypatch.setitem(LIMITS, "openai", few)
    with pytest.raises(FileInputError, match="has 3 pages; openai accepts at most 2 pages"):
        _load([str(samples["pdf"])], "openai")

    pages = dataclasses.replace(LIMITS["anthropic"], pdf_bytes=32 << 20, request_pages=5)
    monkeypatch.setitem(LIMITS, "anthropic", pages)
    frame = pl.DataFrame({"f": [[str(samples["pdf"]), str(samples["pdf"])]]})
    with pytest.raises(FileInputError, match="6 pages together; anthropic accepts at most 5"):
        load_files(frame, "f", pl.Series(["anthropic"]))

    image = dataclasses.replace(LIMITS["gemini"], image_bytes=10)
    monkeypatch.setitem(LIMITS, "gemini", image)
    with pytest.raises(FileInputError, match="gemini accepts at most 0 MB per image"):
        _load([str(samples["png"])], "gemini")


def test_gemini_refuses_gif(samples):
    with pytest.raises(FileInputError, match="gemini does not take image/gif"):
        _load([str(samples["gif"])], "gemini")
    _load([str(samples["gif"])], "anthropic")


# -- content, keys, tokens -------------------------------------------------------------------


def _content(provider: str, files: pl.Series, citations: bool = False) -> list[object]:
    frame = pl.DataFrame({"p": ['Say "hi"'] * files.len(), "f": files})
    out = frame.select(content_json_expr(provider, pl.col("p"), pl.col("f"), citations=citations))
    return [json.loads(v) for v in out.to_series().to_list()]


def test_content_shapes(samples):
    files = _load([[str(samples["pdf"]), str(samples["png"]), str(samples["txt"])], None])
    pdf_b64 = base64.b64encode(samples["pdf"].read_bytes()).decode()
    png_b64 = base64.b64encode(samples["png"].read_bytes()).decode()
    text = '<document name="note.txt">\nplain text note\nsecond line\n</document>'

    openai = _content("openai", files)
    assert openai[0] == [
        {
            "type": "file",
            "file": {
                "filename": "three.pdf",
                "file_data": "data:application/pdf;base64," + pdf_b64,
            },
        },
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png_b64}},
        {"type": "text", "text": text},
        {"type": "text", "text": 'Say "hi"'},
    ]
    assert openai[1] == [{"type": "text", "text": 'Say "hi"'}]

    anthropic = _content("anthropic", files, citations=True)
    cite = {"enabled": True}
    assert anthropic[0] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": pdf_b64},
            "title": "three.pdf",
            "citations": cite,
        },
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png_b64}},
        {
            "type": "document",
            "source": {
                "type": "text",
                "media_type": "text/plain",
                "data": "plain text note\nsecond line",
            },
            "title": "note.txt",
            "citations": cite,
        },
        {"type": "text", "text": 'Say "hi"'},
    ]
    assert "citations" not in _content("anthropic", files)[0][0]

    gemini = _content("gemini", files)
    assert gemini[0] == [
        {"inlineData": {"mimeType": "application/pdf", "data": pdf_b64}},
        {"inlineData": {"mimeType": "image/png", "data": png_b64}},
        {"text": text},
        {"text": 'Say "hi"'},
    ]


def test_files_key_and_tokens(samples):
    files = _load([str(samples["pdf"]), str(samples["pdf1"]), str(samples["pdf"]), None])
    keys = pl.DataFrame({"f": files}).select(files_key(pl.col("f"))).to_series().to_list()
    assert keys[0] == keys[2] != keys[1]
    assert keys[3] == ""
    gemini = file_tokens(files, "gemini", "gemini-2.5-flash").to_list()
    assert gemini == [3 * 258, 258, 3 * 258, 0]
    images = _load([str(samples["png"]), str(samples["txt"])])
    tokens = file_tokens(images, "anthropic", "claude-haiku-4-5").to_list()
    assert tokens[0] == 23 * 18  # ceil(640/28) * ceil(480/28) = 414 > 640 * 480 / 750
    assert tokens[1] > 5


# -- batch_llm end to end on the emulator ----------------------------------------------------


def _frame(samples: dict[str, Path]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "doc": [
                str(samples["pdf1"]),
                str(samples["pdf"]),
                str(samples["png"]),
                str(samples["docx"]),
                str(samples["md"]),
                None,
            ],
            "question": ["Summarize"] * 6,
        }
    )


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_batch_llm_with_files(emu, samples, provider):
    df = _frame(samples)
    out = df.pipe(
        batch_llm,
        schema=Summary,
        model=MODELS[provider],
        prompt="{question}",
        files="doc",
    )
    assert out["_status"].to_list() == ["completed"] * 6
    assert out.columns[:2] == ["doc", "question"]
    tokens = out["_input_tokens"].to_list()
    # The emulator read the parts: three pages cost more than one, an image more than none.
    assert tokens[1] > tokens[0] > tokens[5]
    assert tokens[2] > tokens[5]
    assert tokens[3] > tokens[5]  # the DOCX text went in
    ids = out["_job_id"].to_list()
    assert len(set(ids)) == 6  # same prompt, other file: another job


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_dry_run_counts_file_tokens(emu, samples, provider):
    df = _frame(samples)
    kw = {"schema": Summary, "model": MODELS[provider], "prompt": "{question}", "dry_run": True}
    plain = df.pipe(batch_llm, **kw)
    with_files = df.pipe(batch_llm, files="doc", **kw)
    est = with_files["_est_input_tokens"].to_list()
    base = plain["_est_input_tokens"].to_list()
    assert all(e > b for e, b in zip(est[:5], base[:5], strict=True))
    assert est[1] > est[0]  # pages count
    assert emu.log() == []  # a dry run sends nothing


def test_same_file_same_job_and_resume(emu, samples, tmp_path):
    df = pl.DataFrame({"doc": [str(samples["pdf"])] * 3, "q": ["x", "x", "y"]})
    kw = {"schema": Summary, "model": "gpt-4.1-mini", "prompt": "{q}", "files": "doc"}
    state = tmp_path / "run"
    out = df.pipe(batch_llm, state=state, **kw)
    ids = out["_job_id"].to_list()
    assert ids[0] == ids[1] != ids[2]
    before = len(emu.log())
    again = df.pipe(batch_llm, state=state, **kw)
    assert again["_job_id"].to_list() == ids
    assert again["_status"].to_list() == ["completed"] * 3
    assert not [e for e in emu.log()[before:] if e["method"] == "POST"]


def test_file_errors_before_any_request(emu, samples):
    df = pl.DataFrame({"doc": [str(samples["xlsx"])], "q": ["x"]})
    with pytest.raises(FileInputError, match="not supported"):
        df.pipe(batch_llm, model="gpt-4.1-mini", prompt="{q}", files="doc")
    with pytest.raises(ColumnError, match="did you mean 'doc'"):
        df.pipe(batch_llm, model="gpt-4.1-mini", prompt="{q}", files="docs")
    with pytest.raises(ConfigError, match="files= takes the name of a column"):
        df.pipe(batch_llm, model="gpt-4.1-mini", prompt="{q}", files=["doc"])  # type: ignore[arg-type]
    assert emu.log() == []


# -- the emulators refuse malformed parts like the real APIs ---------------------------------


def _openai_line(content: list[object]) -> str:
    body = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": content}]}
    return json.dumps({"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
                       "body": body})  # fmt: skip


def _openai_run(emu, content: list[object]) -> dict[str, object]:
    import openai

    client = openai.OpenAI()
    upload = client.files.create(
        file=("in.jsonl", _openai_line(content).encode()), purpose="batch"
    )  # the real API wants a .jsonl name for purpose=batch
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    file_id = batch.output_file_id or batch.error_file_id
    assert file_id is not None
    line = json.loads(client.files.content(file_id).text.splitlines()[0])
    client.close()
    return line["response"]


def test_openai_emulator_validates_parts(emu, samples):
    png = base64.b64encode(samples["png"].read_bytes()).decode()
    ok = _openai_run(
        emu, [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]
    )
    assert ok["status_code"] == 200
    bad = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}},
        {"type": "image_url", "image_url": {"url": f"data:image/tiff;base64,{png}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{png}"}},
        {
            "type": "file",
            "file": {"filename": "a.pdf", "file_data": f"data:image/png;base64,{png}"},
        },
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="}},
    ]
    for part in bad:
        response = _openai_run(emu, [part, {"type": "text", "text": "hi"}])
        assert response["status_code"] == 400, part


def test_anthropic_emulator_validates_blocks(emu, samples):
    import anthropic

    png = base64.b64encode(samples["png"].read_bytes()).decode()
    blocks = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": png}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "%%"}},
        {"type": "document",
         "source": {"type": "base64", "media_type": "application/pdf", "data": png}},
        {"type": "document", "source": {"type": "text", "media_type": "text/html", "data": "x"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
    ]  # fmt: skip
    client = anthropic.Anthropic()
    requests = [
        {
            "custom_id": f"r{i}",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 64,
                "messages": [{"role": "user", "content": [block, {"type": "text", "text": "hi"}]}],
            },
        }
        for i, block in enumerate(blocks)
    ]
    batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    client.messages.batches.retrieve(batch.id)
    results = {r.custom_id: r.result.type for r in client.messages.batches.results(batch.id)}
    client.close()
    assert results == {"r0": "errored", "r1": "errored", "r2": "errored", "r3": "errored",
                       "r4": "succeeded"}  # fmt: skip


def test_gemini_emulator_validates_parts(emu, samples):
    from google import genai
    from google.genai import types

    client = genai.Client(http_options=types.HttpOptions(api_version="v1beta"))
    gif = base64.b64encode(samples["gif"].read_bytes()).decode()
    png = base64.b64encode(samples["png"].read_bytes()).decode()

    def request(part: dict[str, object], key: str) -> dict[str, object]:
        return {"contents": [{"role": "user", "parts": [part, {"text": "hi"}]}],
                "metadata": {"key": key}}  # fmt: skip

    src = [
        request({"inline_data": {"mime_type": "image/gif", "data": gif}}, "gif"),
        request({"inline_data": {"mime_type": "application/pdf", "data": png}}, "notpdf"),
        request({"inline_data": {"mime_type": "image/png", "data": png}}, "ok"),
    ]
    job = client.batches.create(model="gemini-2.5-flash", src=src)  # type: ignore[arg-type]
    job = client.batches.get(name=job.name or "")
    assert job.dest is not None
    responses = job.dest.inlined_responses or []
    outcome = {
        (r.metadata or {})["key"]: ("error" if r.error is not None else "ok") for r in responses
    }
    assert outcome == {"gif": "error", "notpdf": "error", "ok": "ok"}
    client.close()


def test_file_payloads_are_expanded_one_bounded_slice_at_a_time(emu, tmp_path, monkeypatch):
    import batchata_df.files as files_mod
    from batchata_df.providers.openai import OpenAIProvider

    blob = tmp_path / "big.txt"
    blob.write_text("lorem ipsum dolor sit amet " * 2000)  # ~54 kB of text
    monkeypatch.setattr(OpenAIProvider, "max_bytes", 150_000)
    seen: list[int] = []
    real = files_mod.content_preparer

    def spy(**kw):
        prepare = real(**kw)

        def wrapped(chunk):
            seen.append(chunk.height)
            return prepare(chunk)

        return wrapped

    monkeypatch.setattr(files_mod, "content_preparer", spy)
    df = pl.DataFrame({"q": [f"question {i}" for i in range(12)], "doc": [str(blob)] * 12})
    out = df.pipe(batch_llm, model="gpt-4.1-mini", prompt="{q}", files="doc",
                  state=tmp_path / "s")
    assert out["_status"].to_list() == ["completed"] * 12
    assert seen and max(seen) <= 2 and sum(seen) == 12  # never the whole run at once
    sizes = pl.read_parquet(tmp_path / "s" / "batches" / "*.parquet").filter(
        pl.col("status") == "submitted")["n_bytes"]
    assert sizes.max() <= 150_000
