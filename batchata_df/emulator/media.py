"""Inline files in requests (PDFs, images) as the emulated providers check and bill them.

Standard library only, like the rest of the emulator. Each provider module calls
:func:`decode_base64`, :func:`check_pdf` and :func:`check_image` and turns
:class:`MediaError` into the error its real API gives (an HTTP 400 or an errored result).

Billing, rough but shaped like the published rules (our own estimator in
:mod:`batchata_df.tokens` is deliberately higher):

* an image, by the generation of the request's model (:func:`image_tokens`): e.g. OpenAI
  85 + 170 per 512 px tile (after fitting in 2048 px and scaling the short
  side to 768 px), Anthropic ``width * height / 750`` (after scaling to 1568 px and
  1.15 megapixels), Gemini 258 (both sides <= 384 px) or 258 per 768 px tile;
* a PDF page: ``PDF_PAGE_TOKENS`` (OpenAI 1,000, Anthropic 2,000: text plus a page image;
  Gemini 258, its documented fixed rate). Pages are counted from the page objects of the
  file (``/Type /Page``), at least 1.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import math
import re
import struct
from collections.abc import Iterator
from typing import Final

__all__ = [
    "IMAGE_TYPES",
    "PDF_PAGE_TOKENS",
    "MediaError",
    "billing_model",
    "check_image",
    "check_pdf",
    "decode_base64",
    "image_tokens",
]

PDF_PAGE_TOKENS: Final = {"openai": 1_000, "anthropic": 2_000, "gemini": 258}
IMAGE_TYPES: Final = ("image/jpeg", "image/png", "image/gif", "image/webp")
_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")


class MediaError(ValueError):
    """An inline file the provider would refuse; ``str(e)`` is the provider's message."""


def decode_base64(data: object, *, urlsafe: bool = False) -> bytes:
    """Strictly decode base64 text (``urlsafe`` also accepts ``-``/``_``, as proto JSON does).

    Examples
    --------
    >>> decode_base64("aGk=")
    b'hi'
    >>> decode_base64("not base64!")
    Traceback (most recent call last):
    ...
    batchata_df.emulator.media.MediaError: invalid base64 data
    """
    if not isinstance(data, str) or not data:
        msg = "invalid base64 data"
        raise MediaError(msg)
    text = data.replace("-", "+").replace("_", "/") if urlsafe else data
    if urlsafe and len(text) % 4:
        text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        msg = "invalid base64 data"
        raise MediaError(msg) from e


def check_pdf(raw: bytes) -> int:
    """Page count of a PDF; :class:`MediaError` when it is not one.

    Examples
    --------
    >>> check_pdf(b"%PDF-1.4 1 0 obj << /Type /Page >> endobj 2 0 obj << /Type /Pages >>")
    1
    """
    if not raw.startswith(b"%PDF-"):
        msg = "The PDF specified was not valid."
        raise MediaError(msg)
    return max(1, len(_PAGE.findall(raw)))


def _sniff(raw: bytes) -> str | None:
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if raw.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if raw.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "image/webp"
    return None


def _jpeg_size(raw: bytes) -> tuple[int, int]:
    i = 2
    while i + 9 < len(raw):
        if raw[i] != 0xFF:
            i += 1
            continue
        marker = raw[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", raw[i + 2 : i + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                      0xCF):  # fmt: skip
            height, width = struct.unpack(">HH", raw[i + 5 : i + 9])
            return width, height
        i += 2 + length
    msg = "no JPEG frame header"
    raise ValueError(msg)


def _webp_size(raw: bytes) -> tuple[int, int]:
    chunk = raw[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(raw[24:27], "little") + 1
        h = int.from_bytes(raw[27:30], "little") + 1
        return w, h
    if chunk == b"VP8L":
        bits = int.from_bytes(raw[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", raw[26:30])
        return w & 0x3FFF, h & 0x3FFF
    msg = "unknown WebP chunk"
    raise ValueError(msg)


def check_image(raw: bytes, media_type: str) -> tuple[int, int]:
    r"""Width and height of an image whose bytes must match ``media_type``.

    Examples
    --------
    >>> png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (640).to_bytes(4, "big")
    >>> check_image(png + (480).to_bytes(4, "big"), "image/png")
    (640, 480)
    """
    actual = _sniff(raw)
    if actual is None:
        msg = "Could not process image: the data is not a supported image."
        raise MediaError(msg)
    if actual != media_type:
        msg = f"Image does not match the provided media type {media_type}"
        raise MediaError(msg)
    try:
        if actual == "image/png":
            width, height = struct.unpack(">II", raw[16:24])
        elif actual == "image/gif":
            width, height = struct.unpack("<HH", raw[6:10])
        elif actual == "image/jpeg":
            width, height = _jpeg_size(raw)
        else:
            width, height = _webp_size(raw)
    except (ValueError, struct.error) as e:
        msg = "Could not process image: its header is damaged."
        raise MediaError(msg) from e
    if width < 1 or height < 1:
        msg = "Could not process image: it has no pixels."
        raise MediaError(msg)
    return width, height


_MODEL: contextvars.ContextVar[str] = contextvars.ContextVar("emulator_model", default="")


@contextlib.contextmanager
def billing_model(model: str) -> Iterator[None]:
    """Bill the images of the request built inside the block by ``model``'s rules."""
    token = _MODEL.set(model.lower().removeprefix("models/"))
    try:
        yield
    finally:
        _MODEL.reset(token)


def _patches(width: int, height: int, size: int, budget: int) -> int:
    count = math.ceil(width / size) * math.ceil(height / size)
    if count <= budget:
        return count
    scale = math.sqrt(budget * size * size / (width * height))
    cols, rows = math.floor(width * scale / size), math.floor(height * scale / size)
    return min(cols * rows, budget) if cols and rows else budget


_OPENAI_PATCH_MODELS = (
    ("gpt-4.1-mini", 1.62), ("gpt-4.1-nano", 2.46), ("gpt-5-mini", 1.62),
    ("gpt-5-nano", 2.46), ("o4-mini", 1.72),
)  # fmt: skip
_OPENAI_TILE_MODELS = (
    ("gpt-4o-mini", (2833, 5667)), ("gpt-5", (70, 140)), ("o1", (75, 150)),
    ("o3", (75, 150)), ("computer-use", (65, 129)),
)  # fmt: skip


def image_tokens(provider: str, width: int, height: int) -> int:
    """What the emulator bills for one image, by the generation of the request's model.

    OpenAI GPT-5.2+ and GPT-6: 32 px patches x 1.2 (at most 10,000 patches; GPT-6 16,384;
    mini/nano 1,536 patches x 1.62); gpt-4.1-mini/nano, gpt-5-mini/nano, o4-mini 1,536
    patches x 1.62 / 2.46 / 1.72; other models base + per-tile per 512 px tile (85 + 170
    for gpt-4o/4.1, 70 + 140 gpt-5/5.1, 75 + 150 o1/o3, 2833 + 5667 gpt-4o-mini). Claude Opus
    4.7+ and 5.x: resized to 2,576 px / 3.75 MP, older ones to 1,568 px / 1.15 MP, then
    ``w * h / 750``. Gemini 3: 1,120 per image (default media resolution); older 258, or
    258 per 768 px tile. The request's model comes from :func:`billing_model`.

    Examples
    --------
    >>> image_tokens("openai", 1024, 1024), image_tokens("anthropic", 1000, 1000)
    (765, 1334)
    >>> image_tokens("gemini", 300, 300)
    258
    >>> with billing_model("gemini-3.5-flash"):
    ...     image_tokens("gemini", 300, 300)
    1120
    >>> with billing_model("gpt-6-sol"):
    ...     image_tokens("openai", 1024, 1024)
    1229
    """
    model = _MODEL.get()
    w, h = float(width), float(height)
    if provider == "openai":
        new = re.match(r"gpt-(5\.([2-9]|\d\d)|([6-9]|\d\d)(?!\d))", model)
        if new:
            if re.search(r"-(mini|nano)(-|$)", model):
                return math.ceil(_patches(width, height, 32, 1536) * 1.62)
            budget = 16_384 if new.group(3) else 10_000
            return math.ceil(_patches(width, height, 32, budget) * 1.2)
        # The vision guide's older families: patch models, then tile models.
        for prefix, multiplier in _OPENAI_PATCH_MODELS:
            if model.startswith(prefix):
                return math.ceil(_patches(width, height, 32, 1536) * multiplier)
        base, tile = next(
            (bt for prefix, bt in _OPENAI_TILE_MODELS if model.startswith(prefix)), (85, 170)
        )
        fit = min(1.0, 2048 / max(w, h))
        w, h = w * fit, h * fit
        short = min(1.0, 768 / min(w, h))
        w, h = w * short, h * short
        return base + tile * math.ceil(w / 512) * math.ceil(h / 512)
    if provider == "anthropic":
        high = re.match(r"claude-(opus-4-[7-9]|[a-z]+-([5-9]|\d\d)(-|$))", model)
        edge, pixels = (2576, 3_750_656) if high else (1568, 1_150_000)
        fit = min(1.0, edge / max(w, h), math.sqrt(pixels / (w * h)))
        return math.ceil(w * fit * h * fit / 750)
    if model.startswith("gemini-3"):
        return 1120
    if width <= 384 and height <= 384:
        return 258
    return 258 * math.ceil(width / 768) * math.ceil(height / 768)
