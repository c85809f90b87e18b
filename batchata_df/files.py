"""File inputs: PDF, text, Markdown, DOCX and images -> provider request content.

A ``files=`` column holds, per row, a path (``str`` or :class:`pathlib.Path`), a list of
paths, raw ``bytes`` (the type is sniffed from magic bytes), or null (no files).
:func:`load_files` reads every distinct file once, checks it against the row's provider
limits and returns one :data:`FILE_PARTS` list per row; everything that can be wrong with a
file is a :class:`~batchata_df.errors.FileInputError` raised before anything is sent.
:func:`content_json_expr` then turns prompt and files into each provider's content JSON
with Polars expressions (no Python loop over rows), :func:`files_key` gives the content
hash that job ids include, and :func:`file_tokens` the offline token estimate.

Supported inputs
    * PDF (``.pdf``, ``%PDF-``): sent as a document (page count read with ``pypdf``).
    * Plain text and Markdown (``.txt``, ``.md``, ``.markdown``; UTF-8): sent as text.
    * DOCX (``.docx``, a zip with ``word/document.xml``): its text -- paragraphs and
      tables, in document order, table cells separated by `` | `` -- is extracted with
      ``python-docx`` and sent as a text document.
    * PNG, JPEG, GIF and WebP images (size read with Pillow).

Provider limits (:data:`LIMITS`), checked per file and per request, in raw file bytes
unless said otherwise:

    ============  =====================================================================
    OpenAI        a file (PDF) at most 50 MB, and 50 MB of files per request; an image
                  at most 20 MB (OpenAI "File inputs" and "Images and vision" guides).
    Anthropic     a PDF at most 32 MB and 100 pages, an image at most 5 MB; a request
                  at most 32 MB (base64 included) and 100 PDF pages (Anthropic "PDF
                  support" and "Vision" guides).
    Gemini        inline data: the whole request at most 20 MB, base64 included (Gemini
                  "Document understanding" and "Image understanding" guides: larger
                  inputs need the File API); a PDF at most 1,000 pages; no GIF
                  images (PNG, JPEG, WebP only).
    ============  =====================================================================

The Python dependencies are the ``files`` extra: ``pip install 'batchata-df[files]'``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from batchata_df.errors import ColumnError, FileInputError
from batchata_df.providers.base import json_string

if TYPE_CHECKING:
    from batchata_df.jobs import IdScheme

__all__ = [
    "FILE_PART",
    "FILE_PARTS",
    "LIMITS",
    "FileLimits",
    "attach_files",
    "content_json_expr",
    "file_tokens",
    "files_key",
    "load_files",
    "slim",
]

FILE_PART = pl.Struct(
    {
        "kind": pl.String(),  # "pdf" | "text" | "image"
        "media_type": pl.String(),
        "name": pl.String(),
        "data_b64": pl.String(),  # pdf and image bytes, base64
        "text": pl.String(),  # text, Markdown, extracted DOCX text
        "pages": pl.Int64(),  # pdf
        "width": pl.Int64(),  # image
        "height": pl.Int64(),  # image
        "sha256": pl.String(),  # of the file's bytes
        "size": pl.Int64(),  # bytes
    }
)
"""One file of a row."""

FILE_PARTS = pl.List(FILE_PART)
"""The files of one row, in the order given."""

MB = 1024 * 1024
DOCX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

# Suffix -> (kind, media type). DOCX becomes kind "text" once its text is extracted.
_SUFFIXES: dict[str, tuple[str, str]] = {
    ".pdf": ("pdf", "application/pdf"),
    ".txt": ("text", "text/plain"),
    ".text": ("text", "text/plain"),
    ".md": ("text", "text/markdown"),
    ".markdown": ("text", "text/markdown"),
    ".docx": ("docx", DOCX_MEDIA_TYPE),
    ".png": ("image", "image/png"),
    ".jpg": ("image", "image/jpeg"),
    ".jpeg": ("image", "image/jpeg"),
    ".gif": ("image", "image/gif"),
    ".webp": ("image", "image/webp"),
}
_EXTENSIONS = {"application/pdf": ".pdf", "text/plain": ".txt", DOCX_MEDIA_TYPE: ".docx",
               "image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif",
               "image/webp": ".webp"}  # fmt: skip
_PIL_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
_PYPDF, _DOCX, _PILLOW = "pypdf", "python-docx", "pillow"
SUPPORTED = "PDF (.pdf), text (.txt, .md), Word (.docx), images (.png, .jpg, .gif, .webp)"


@dataclass(frozen=True)
class FileLimits:
    """What one provider accepts inline in a request (``None``: no limit we check)."""

    pdf_bytes: int
    pdf_pages: int | None
    image_bytes: int
    request_bytes: int | None
    """Files of one request together; base64-encoded size when ``encoded`` is set."""
    request_pages: int | None
    encoded: bool
    source: str
    image_types: tuple[str, ...] = ("image/png", "image/jpeg", "image/gif", "image/webp")
    image_encoded: bool = False
    """``image_bytes`` limits the base64 string, not the file (Anthropic)."""


LIMITS: dict[str, FileLimits] = {
    "openai": FileLimits(
        pdf_bytes=50 * MB,
        pdf_pages=None,
        image_bytes=20 * MB,
        request_bytes=50 * MB,
        request_pages=None,
        encoded=False,
        source="OpenAI file inputs / vision guides",
    ),
    "anthropic": FileLimits(
        pdf_bytes=32 * MB,
        pdf_pages=100,
        image_bytes=5 * MB,
        request_bytes=32 * MB,
        request_pages=100,
        encoded=True,
        source="Anthropic PDF support / vision guides",
        # The API measures the base64 string: "image.source.base64: image exceeds 5 MB
        # maximum: 5272940 bytes > 5242880 bytes" (as quoted in anthropics/claude-code
        # #19631 and lobehub/lobehub#14711), so a 3.75-5 MB file is already too big.
        image_encoded=True,
    ),
    "gemini": FileLimits(
        pdf_bytes=20 * MB,
        pdf_pages=1000,
        image_bytes=20 * MB,
        request_bytes=20 * MB,
        request_pages=None,
        encoded=True,
        source="Gemini document / image understanding guides (inline data)",
        image_types=("image/png", "image/jpeg", "image/webp"),  # no GIF
    ),
}
"""Per-provider limits on inline files (see the module docstring for the sources)."""


# -- reading ---------------------------------------------------------------------------------


class _Bad(Exception):
    """A file problem, completed into a FileInputError by the caller (row, value)."""


def _sniff(data: bytes) -> tuple[str, str] | None:
    """(kind, media type) from magic bytes; None when it is not a supported type."""
    if data.startswith(b"%PDF-"):
        return "pdf", "application/pdf"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image", "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image", "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image", "image/webp"
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                names = set(z.namelist())
        except zipfile.BadZipFile:
            return None
        return ("docx", DOCX_MEDIA_TYPE) if "word/document.xml" in names else None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "text", "text/plain"


def _missing_extra(package: str, e: ImportError) -> _Bad:
    return _Bad(
        f"reading this file needs the {package} package, which is not installed: "
        "pip install 'batchata-df[files]'"
    )


def _pdf_pages(data: bytes) -> int:
    try:
        import pypdf
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise _missing_extra(_PYPDF, e) from e
    if not data.startswith(b"%PDF-"):
        msg = "it is not a PDF (it does not start with %PDF-); check the file or its extension"
        raise _Bad(msg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pypdf warns on every recoverable oddity
            reader = pypdf.PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                msg = "the PDF is encrypted; providers cannot read it: save a decrypted copy"
                raise _Bad(msg)
            pages = len(reader.pages)
    except _Bad:
        raise
    except Exception as e:  # pypdf raises many types on damaged files
        msg = f"the PDF is damaged or unreadable ({type(e).__name__}: {e}); repair or re-export it"
        raise _Bad(msg) from e
    if pages < 1:
        msg = "the PDF has no pages"
        raise _Bad(msg)
    return pages


def _docx_text(data: bytes) -> str:
    try:
        import docx
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise _missing_extra(_DOCX, e) from e
    try:
        document = docx.Document(io.BytesIO(data))
        blocks: list[str] = []
        for item in document.iter_inner_content():
            if isinstance(item, docx.table.Table):
                for row in item.rows:
                    cells: list[str] = []
                    seen: list[object] = []
                    for cell in row.cells:
                        if any(cell._tc is s for s in seen):  # a merged cell repeats
                            continue
                        seen.append(cell._tc)
                        cells.append(cell.text.replace("\n", " ").strip())
                    blocks.append(" | ".join(cells))
            else:
                blocks.append(item.text)
    except Exception as e:  # python-docx raises KeyError, lxml errors, ... on damage
        msg = f"the DOCX is damaged or unreadable ({type(e).__name__}: {e}); re-save it in Word"
        raise _Bad(msg) from e
    return "\n".join(blocks).strip()


def _image_size(data: bytes, media_type: str) -> tuple[int, int]:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise _missing_extra(_PILLOW, e) from e
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: the limits apply
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format or ""
                width, height = im.size
                im.verify()
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
        msg = f"the image is damaged or unreadable ({type(e).__name__}: {e}); re-save it"
        raise _Bad(msg) from e
    actual = _PIL_FORMATS.get(fmt)
    if actual is None:
        msg = f"the image format {fmt!r} is not supported; convert it to PNG or JPEG"
        raise _Bad(msg)
    if actual != media_type:
        msg = f"the file is a {actual} image, not {media_type}: fix its extension"
        raise _Bad(msg)
    return width, height


def _load(data: bytes, kind: str, media_type: str, name: str) -> dict[str, Any]:
    """One FILE_PART from a file's bytes; raises _Bad."""
    part: dict[str, Any] = {
        "kind": kind,
        "media_type": media_type,
        "name": name,
        "data_b64": None,
        "text": None,
        "pages": None,
        "width": None,
        "height": None,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    if kind == "pdf":
        part["pages"] = _pdf_pages(data)
        part["data_b64"] = base64.b64encode(data).decode("ascii")
    elif kind == "image":
        part["width"], part["height"] = _image_size(data, media_type)
        part["data_b64"] = base64.b64encode(data).decode("ascii")
    elif kind == "docx":
        part["kind"] = "text"
        part["text"] = _docx_text(data)
    else:
        try:
            part["text"] = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            msg = f"the text file is not UTF-8 ({e}); re-save it as UTF-8"
            raise _Bad(msg) from e
    return part


def _from_path(path: Path) -> dict[str, Any]:
    if path.is_dir():  # named first: a folder's name rarely has a supported suffix
        msg = f"the file {str(path)!r} is a folder, not a file (working directory: "
        raise _Bad(msg + f"{os.getcwd()!r}); fix the path")
    kind_media = _SUFFIXES.get(path.suffix.lower())
    if kind_media is None:
        msg = f"the file type {path.suffix or '(no extension)'!r} is not supported; supported: "
        raise _Bad(msg + SUPPORTED)
    if not path.is_file():
        msg = f"the file {str(path)!r} does not exist (working directory: {os.getcwd()!r}); "
        raise _Bad(msg + "fix the path")
    try:
        data = path.read_bytes()
    except OSError as e:
        msg = f"the file cannot be read ({e.strerror or e}); check its permissions"
        raise _Bad(msg) from e
    return _load(data, *kind_media, path.name)


def _from_bytes(data: bytes) -> dict[str, Any]:
    kind_media = _sniff(data)
    if kind_media is None:
        msg = "the bytes are not a supported file type (sniffed from their start); supported: "
        raise _Bad(msg + SUPPORTED)
    kind, media_type = kind_media
    digest = hashlib.sha256(data).hexdigest()
    return _load(data, kind, media_type, f"file-{digest[:12]}{_EXTENSIONS[media_type]}")


def _preview(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return f"<{len(raw)} bytes starting {raw[:8]!r}>"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _limited_image_size(part: Mapping[str, Any], limits: FileLimits) -> int:
    """The size the provider limits: the base64 string's length, or the file's size."""
    if limits.image_encoded and part["data_b64"] is not None:
        return len(part["data_b64"])
    return int(part["size"])


def _check_limits(
    parts: Sequence[dict[str, Any]], provider: str | None, where: Callable[[object], str]
) -> None:
    limits = LIMITS.get(provider or "")
    if limits is None:
        return
    total = 0
    pages = 0
    for part in parts:
        size = int(part["size"])
        label = part["name"]
        if part["kind"] == "pdf":
            if size > limits.pdf_bytes:
                msg = (
                    f"{where(label)}: the PDF is {size / MB:.1f} MB; {provider} accepts at most "
                    f"{limits.pdf_bytes // MB} MB per PDF ({limits.source}). Split or compress it"
                )
                raise FileInputError(msg)
            if limits.pdf_pages is not None and part["pages"] > limits.pdf_pages:
                msg = (
                    f"{where(label)}: the PDF has {part['pages']} pages; {provider} accepts at "
                    f"most {limits.pdf_pages} pages ({limits.source}). Split it"
                )
                raise FileInputError(msg)
            pages += int(part["pages"])
        elif part["kind"] == "image" and part["media_type"] not in limits.image_types:
            msg = (
                f"{where(label)}: {provider} does not take {part['media_type']} images "
                f"(it takes {', '.join(limits.image_types)}); convert it to PNG"
            )
            raise FileInputError(msg)
        elif part["kind"] == "image" and _limited_image_size(part, limits) > limits.image_bytes:
            measured = _limited_image_size(part, limits)
            what = (
                f"{measured / MB:.1f} MB in base64 ({size / MB:.1f} MB as a file)"
                if limits.image_encoded
                else f"{size / MB:.1f} MB"
            )
            msg = (
                f"{where(label)}: the image is {what}; {provider} accepts at most "
                f"{limits.image_bytes // MB} MB per image"
                f"{' in base64' if limits.image_encoded else ''} ({limits.source}). "
                "Downscale or recompress it"
            )
            raise FileInputError(msg)
        if part["data_b64"] is not None:
            total += len(part["data_b64"]) if limits.encoded else size
        else:
            total += len(str(part["text"]).encode())
    if limits.request_bytes is not None and total > limits.request_bytes:
        how = "base64-encoded " if limits.encoded else ""
        msg = (
            f"{where(None)}: the row's files are {total / MB:.1f} MB {how}together; {provider} "
            f"accepts at most {limits.request_bytes // MB} MB per request ({limits.source}). "
            "Send fewer or smaller files per row"
        )
        raise FileInputError(msg)
    if limits.request_pages is not None and pages > limits.request_pages:
        msg = (
            f"{where(None)}: the row's PDFs have {pages} pages together; {provider} accepts at "
            f"most {limits.request_pages} per request ({limits.source}). Split them over rows"
        )
        raise FileInputError(msg)


def load_files(
    frame: pl.DataFrame, column: str, providers: pl.Series, *, first_row: int = 0
) -> pl.Series:
    """Read the files named by ``frame[column]``; one :data:`FILE_PARTS` list per row.

    Parameters
    ----------
    frame
        The input frame.
    column
        A column holding per row a path (``str`` or ``Path``), a list of paths, ``bytes``
        (type sniffed from magic bytes), or null (no files).
    providers
        The provider of each row (``"openai"``, ``"anthropic"``, ``"gemini"`` or null),
        whose limits the row's files must meet.
    first_row
        The input row number of ``frame``'s first row, for the messages (a streaming run
        loads one chunk at a time).

    Raises
    ------
    ColumnError
        ``column`` is not in the frame.
    FileInputError
        A file is missing, of an unsupported type, unreadable, or over its provider's limit;
        the message names the row, the value and the fix.

    Examples
    --------
    >>> import polars as pl
    >>> df = pl.DataFrame({"doc": [b"hello", None]})
    >>> files = load_files(df, "doc", pl.Series(["openai", "openai"]))
    >>> files.list.len().to_list(), files[0][0]["kind"], files[0][0]["text"]
    ([1, 0], 'text', 'hello')
    """
    if column not in frame.columns:
        from batchata_df.jobs import _did_you_mean

        msg = (
            f"files={column!r} is not a column of the frame (columns: {frame.columns!r})"
            f"{_did_you_mean(column, frame.columns)}"
        )
        raise ColumnError(msg)
    values = frame.get_column(column).to_list()
    provider_list = providers.to_list()
    distinct: list[dict[str, Any]] = []  # each distinct file once, read once
    by_value: dict[object, int] = {}  # str / bytes value as given -> index in distinct
    by_path: dict[str, int] = {}  # absolute path -> index in distinct
    checked: set[tuple[str | None, tuple[int, ...]]] = set()
    row_ids: list[int] = []
    file_ids: list[int] = []
    for index, value in enumerate(values):

        def where(item: object, index: int = index, value: object = value) -> str:
            shown = _preview(value)
            inner = "" if item is None or item == value else f" (file {_preview(item)})"
            return f"files column {column!r}, row {first_row + index}, value {shown}{inner}"

        if value is None:
            continue
        items: list[object] = list(value) if isinstance(value, list | tuple) else [value]
        ids: list[int] = []
        for item in items:
            hit = by_value.get(item) if isinstance(item, str | bytes) else None
            if hit is not None:
                ids.append(hit)
                continue
            try:
                ids.append(_read_once(item, distinct, by_value, by_path))
            except _Bad as e:
                msg = f"{where(item)}: {e}"
                raise FileInputError(msg) from e.__cause__
            except _Skip:
                continue
        provider = provider_list[index] if index < len(provider_list) else None
        if (provider, tuple(ids)) not in checked:  # rows repeat: check each combination once
            _check_limits([distinct[i] for i in ids], provider, where)
            checked.add((provider, tuple(ids)))
        row_ids.extend([index] * len(ids))
        file_ids.extend(ids)
    return _assemble_parts(column, len(values), distinct, row_ids, file_ids)


class _Skip(Exception):
    """A null inside a list of files: nothing to send."""


def _read_once(
    item: object,
    distinct: list[dict[str, Any]],
    by_value: dict[object, int],
    by_path: dict[str, int],
) -> int:
    """Index of ``item``'s file in ``distinct``, reading it on first sight; raises _Bad."""
    if isinstance(item, str | os.PathLike):
        path = Path(os.fsdecode(item)).expanduser()
        key = str(path.absolute())
        if key not in by_path:
            by_path[key] = len(distinct)
            distinct.append(_from_path(path))
        if isinstance(item, str):
            by_value[item] = by_path[key]
        return by_path[key]
    if isinstance(item, bytes | bytearray | memoryview):
        raw = bytes(item)
        if raw not in by_value:
            by_value[raw] = len(distinct)
            distinct.append(_from_bytes(raw))
        return by_value[raw]
    if item is None:
        raise _Skip
    msg = (
        f"{type(item).__name__} {item!r} is not a file: give a path (str or pathlib.Path), a "
        "list of paths, bytes, or null"
    )
    raise _Bad(msg)


def _assemble_parts(
    name: str, height: int, distinct: list[dict[str, Any]], row_ids: list[int], file_ids: list[int]
) -> pl.Series:
    """The FILE_PARTS column from distinct files and (row, file) pairs, without a row loop."""
    table = pl.DataFrame(distinct, schema=pl.Schema(FILE_PART.to_schema()))
    pairs = pl.DataFrame(
        {"_row": row_ids, "_file": file_ids}, schema={"_row": pl.Int64, "_file": pl.Int64}
    )
    gathered = table.select(pl.struct(pl.all()).alias(name)).to_series().gather(pairs["_file"])
    per_row = pairs.with_columns(gathered).group_by("_row", maintain_order=True).agg(pl.col(name))
    every = pl.DataFrame({"_row": pl.int_range(height, dtype=pl.Int64, eager=True)})
    out = every.join(per_row, on="_row", how="left", maintain_order="left")
    empty = pl.lit(pl.Series([[]], dtype=FILE_PARTS))
    return out.select(pl.col(name).fill_null(empty).cast(FILE_PARTS)).to_series()


def slim(files: pl.Expr) -> pl.Expr:
    """The files without their bytes (``data_b64`` null): enough for token estimates."""
    return files.list.eval(
        pl.element().struct.with_fields(pl.lit(None, dtype=pl.String).alias("data_b64"))
    )


# -- job keys and token estimates ------------------------------------------------------------


def files_key(files: pl.Expr) -> pl.Expr:
    """Key material per row: each file's sha256 and name (both are sent), in order.

    Job ids include it, so the same prompt with another file is another job. Rows without
    files give ``""``.

    Examples
    --------
    >>> import polars as pl
    >>> s = load_files(pl.DataFrame({"f": [b"a", None]}), "f", pl.Series([None, None]))
    >>> pl.DataFrame({"f": s}).select(files_key(pl.col("f"))).to_series().to_list()
    ['ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb:file-ca978112ca1b.txt', '']
    """
    one = pl.concat_str(
        [pl.element().struct.field("sha256"), pl.element().struct.field("name")], separator=":"
    )
    return files.list.eval(one).list.join("|").fill_null("")


def file_tokens(
    files: pl.Series, provider: str, model: str, *, at_least: bool = False
) -> pl.Series:
    """Estimated input tokens of each row's files, by the rules of :mod:`batchata_df.tokens`.

    PDFs cost :func:`~batchata_df.tokens.pdf_page_tokens` per page, images
    :func:`~batchata_df.tokens.image_tokens` of their size, text documents their
    :func:`~batchata_df.tokens.estimate_tokens` plus ``DOCUMENT_FRAMING_TOKENS`` for the name
    and delimiters around them.

    Examples
    --------
    >>> import polars as pl
    >>> s = load_files(pl.DataFrame({"f": [b"hello world", None]}), "f", pl.Series([None] * 2))
    >>> file_tokens(s, "openai", "gpt-4.1").to_list()
    [34, 0]
    >>> file_tokens(s, "openai", "gpt-4.1", at_least=True).to_list()
    [2, 0]

    With ``at_least``, the fewest tokens the files can count as (the context-window check,
    ``frame._over_window``, refuses only what cannot fit): a text document's words by the
    ``o200k_base`` count (see ``frame.WINDOW_TOKENS_PER_O200K``), without framing; an
    image 0 (the provider picks the detail or resolution it is read at, and several of the
    image rules are measured upper bounds); a PDF page 0 on OpenAI and Anthropic (a page's
    text can be empty, and the size its image is rendered at is not published) and
    Gemini's documented fixed count per page (258, 560 on Gemini 3).
    """
    from batchata_df.tokens import estimate_image_tokens, estimate_tokens, pdf_page_tokens

    flat = (
        pl.DataFrame({"f": files.cast(FILE_PARTS)}).with_row_index("_row").explode("f").unnest("f")
    )
    per_page = pdf_page_tokens(provider, model)
    framing = DOCUMENT_FRAMING_TOKENS
    if at_least:
        per_page = per_page if provider in ("gemini", "google") else 0
        framing = 0
        text_tokens = estimate_tokens(flat.get_column("text"), "openai", "gpt-4o")
        if provider != "openai":
            from batchata_df.frame import WINDOW_TOKENS_PER_O200K

            factor = WINDOW_TOKENS_PER_O200K[{"google": "gemini"}.get(provider, provider)]
            text_tokens = (text_tokens.cast(pl.Float64) * factor).floor().cast(pl.Int64)
        else:
            text_tokens = estimate_tokens(flat.get_column("text"), provider, model)
    else:
        text_tokens = estimate_tokens(flat.get_column("text"), provider, model)
    images = estimate_image_tokens(
        flat.get_column("width"), flat.get_column("height"), provider, model
    )
    if at_least:
        images = images * 0
    kind = flat.get_column("kind")
    tokens = (
        pl.DataFrame(
            {"kind": kind, "pages": flat.get_column("pages"), "t": text_tokens, "i": images}
        )
        .select(
            pl.when(pl.col("kind") == "pdf")
            .then(pl.col("pages").fill_null(0) * per_page)
            .when(pl.col("kind") == "image")
            .then(pl.col("i"))
            .when(pl.col("kind") == "text")
            .then(pl.col("t") + framing)
            .otherwise(0)
            .cast(pl.Int64)
        )
        .to_series()
    )
    summed = (
        pl.DataFrame({"_row": flat.get_column("_row"), "tokens": tokens})
        .group_by("_row")
        .agg(pl.col("tokens").sum())
    )
    every = pl.DataFrame({"_row": pl.int_range(files.len(), dtype=pl.UInt32, eager=True)})
    out = every.join(summed, on="_row", how="left", maintain_order="left")
    return out.get_column("tokens").fill_null(0).alias(files.name)


DOCUMENT_FRAMING_TOKENS = 32
"""Tokens allowed per text document for its name, delimiters and the provider's framing."""


# -- content builders ------------------------------------------------------------------------


def _field(name: str) -> pl.Expr:
    return pl.element().struct.field(name)


def _document_text() -> pl.Expr:
    """A text document as one text: ``<document name="...">`` text ``</document>``."""
    return pl.concat_str(
        [
            pl.lit('<document name="'),
            _field("name").str.replace_all('"', "'", literal=True),
            pl.lit('">\n'),
            _field("text").fill_null(""),
            pl.lit("\n</document>"),
        ]
    )


def _openai_part() -> pl.Expr:
    kind = _field("kind")
    pdf = pl.concat_str(
        [
            pl.lit('{"type":"file","file":{"filename":'),
            json_string(_field("name")),
            pl.lit(',"file_data":"data:application/pdf;base64,'),
            _field("data_b64"),  # base64 needs no JSON escaping
            pl.lit('"}}'),
        ]
    )
    image = pl.concat_str(
        [
            pl.lit('{"type":"image_url","image_url":{"url":"data:'),
            _field("media_type"),
            pl.lit(";base64,"),
            _field("data_b64"),
            pl.lit('"}}'),
        ]
    )
    text = pl.concat_str([pl.lit('{"type":"text","text":'), json_string(_document_text()),
                          pl.lit("}")])  # fmt: skip
    return pl.when(kind == "pdf").then(pdf).when(kind == "image").then(image).otherwise(text)


_ANTHROPIC_PDF = (
    '{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"'
)
_ANTHROPIC_TEXT = '{"type":"document","source":{"type":"text","media_type":"text/plain","data":'


def _anthropic_part(citations: bool) -> pl.Expr:
    kind = _field("kind")
    cite = ',"citations":{"enabled":true}' if citations else ""
    pdf = pl.concat_str(
        [
            pl.lit(_ANTHROPIC_PDF),
            _field("data_b64"),
            pl.lit('"},"title":'),
            json_string(_field("name")),
            pl.lit(cite + "}"),
        ]
    )
    text = pl.concat_str(
        [
            pl.lit(_ANTHROPIC_TEXT),
            json_string(_field("text").fill_null("")),
            pl.lit('},"title":'),
            json_string(_field("name")),
            pl.lit(cite + "}"),
        ]
    )
    image = pl.concat_str(
        [
            pl.lit('{"type":"image","source":{"type":"base64","media_type":'),
            json_string(_field("media_type")),
            pl.lit(',"data":"'),
            _field("data_b64"),
            pl.lit('"}}'),
        ]
    )
    return pl.when(kind == "pdf").then(pdf).when(kind == "image").then(image).otherwise(text)


def _gemini_part() -> pl.Expr:
    kind = _field("kind")
    blob = pl.concat_str(
        [
            pl.lit('{"inlineData":{"mimeType":'),
            json_string(_field("media_type")),
            pl.lit(',"data":"'),
            _field("data_b64"),
            pl.lit('"}}'),
        ]
    )
    text = pl.concat_str([pl.lit('{"text":'), json_string(_document_text()), pl.lit("}")])
    return pl.when(kind.is_in(["pdf", "image"])).then(blob).otherwise(text)


def content_json_expr(
    provider: str, prompt: pl.Expr, files: pl.Expr, *, citations: bool = False
) -> pl.Expr:
    r"""The user turn's content as a JSON array string: the files, then the prompt.

    * ``"openai"`` (chat completions content parts): a PDF is a ``file`` part with a
      ``data:application/pdf;base64,`` ``file_data``, an image an ``image_url`` part with a
      data URL, a text document a ``text`` part wrapped in ``<document name="...">``.
    * ``"anthropic"`` (content blocks): a PDF is a ``document`` block with a ``base64``
      source, a text document a ``document`` block with a ``text`` source (both titled with
      the file name, with ``citations: {"enabled": true}`` when ``citations``), an image an
      ``image`` block with a ``base64`` source.
    * ``"gemini"`` (the ``parts`` of the user ``Content``): PDFs and images are
      ``inlineData`` (``mimeType``, ``data``) parts, text documents ``text`` parts.

    The prompt is the last part, as text. A null prompt gives a null content.

    Examples
    --------
    >>> import polars as pl
    >>> files = load_files(pl.DataFrame({"f": [b"hi"]}), "f", pl.Series(["openai"]))
    >>> df = pl.DataFrame({"p": ["Summarize"], "f": files})
    >>> print(df.select(content_json_expr("gemini", pl.col("p"), pl.col("f"))).item())
    [{"text":"<document name=\"file-8f434346648f.txt\">\nhi\n</document>"},{"text":"Summarize"}]
    """
    if provider == "openai":
        part, last = _openai_part(), [pl.lit('{"type":"text","text":'), json_string(prompt)]
    elif provider == "anthropic":
        part = _anthropic_part(citations)
        last = [pl.lit('{"type":"text","text":'), json_string(prompt)]
    elif provider == "gemini":
        part, last = _gemini_part(), [pl.lit('{"text":'), json_string(prompt)]
    else:
        msg = f"unknown provider {provider!r}; expected 'openai', 'anthropic' or 'gemini'"
        raise ValueError(msg)
    joined = files.list.eval(part).list.join(",").fill_null("")
    sep = pl.when(joined == "").then(pl.lit("")).otherwise(pl.lit(","))
    return pl.concat_str([pl.lit("["), joined, sep, *last, pl.lit("}]")])


def attach_files(
    jobs: pl.DataFrame,
    frame: pl.DataFrame,
    column: str,
    *,
    salt: str,
    scheme: IdScheme,
    first_row: int = 0,
) -> pl.DataFrame:
    """Load ``frame[column]`` and add the files to ``jobs`` (from :func:`build_jobs`).

    Adds ``files`` (:data:`FILE_PARTS`; rows that name the same file share its bytes in
    memory) and ``payload_bytes`` (an upper bound of each request's encoded size, which
    bounds the slices that :func:`content_preparer` expands), and recomputes ``job_id`` with
    :func:`files_key` as extra key material (``salt`` and ``scheme`` as given to
    :func:`build_jobs`). Raises
    :class:`~batchata_df.errors.FileInputError` before anything is sent, naming the row
    counted from ``first_row`` (:func:`load_files`).
    """
    from batchata_df.jobs import job_ids

    files = load_files(frame, column, jobs.get_column("provider"), first_row=first_row)
    jobs = jobs.with_columns(files.alias("files"))
    key = jobs.select(files_key(pl.col("files"))).to_series()
    jobs = jobs.with_columns(job_ids(jobs, salt, key, scheme=scheme))
    file_bytes = pl.col("files").list.eval(
        pl.element().struct.field("data_b64").str.len_bytes().fill_null(0)
        + pl.element().struct.field("text").str.len_bytes().fill_null(0) * 2
        + 512
    ).list.sum()
    prompt_bytes = pl.col("prompt").str.len_bytes().fill_null(0) * 2 + 1024
    return jobs.with_columns((file_bytes + prompt_bytes).cast(pl.Int64).alias("payload_bytes"))


def content_preparer(*, citations: bool = False) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """A :attr:`~batchata_df.providers.base.RequestSpec.prepare` hook adding ``content_json``.

    It is applied to one slice of jobs of one provider at a time, so the encoded file
    content of a run never sits in memory all at once.
    """

    def prepare(chunk: pl.DataFrame) -> pl.DataFrame:
        pieces = []
        for group in chunk.with_row_index("_order").partition_by("provider", maintain_order=True):
            provider = group.get_column("provider")[0]
            content = (
                pl.lit(None, dtype=pl.String)
                if provider is None
                else content_json_expr(
                    provider, pl.col("prompt"), pl.col("files"), citations=citations
                )
            )
            pieces.append(group.with_columns(content.alias("content_json")))
        if not pieces:
            return chunk.with_columns(pl.lit(None, dtype=pl.String).alias("content_json"))
        out = pieces[0] if len(pieces) == 1 else pl.concat(pieces).sort("_order")
        return out.drop("_order")

    return prepare
