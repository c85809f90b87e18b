"""Inline files in requests (PDFs, images) as the emulated providers check and bill them.

Standard library only, like the rest of the emulator. Each provider module calls
:func:`decode_base64`, :func:`check_pdf` and :func:`check_image` and turns
:class:`MediaError` into the error its real API gives (an HTTP 400 or an errored result).

Billing, rough but shaped like the published rules (our own estimator in
:mod:`batchata_df.tokens` is deliberately higher):

* an image: OpenAI 85 + 170 per 512 px tile (after fitting in 2048 px and scaling the short
  side to 768 px), Anthropic ``width * height / 750`` (after scaling to 1568 px and
  1.15 megapixels), Gemini 258 (both sides <= 384 px) or 258 per 768 px tile;
* a PDF page: ``PDF_PAGE_TOKENS`` (OpenAI 1,000, Anthropic 2,000: text plus a page image;
  Gemini 258, its documented fixed rate). Pages are counted from the page objects of the
  file (``/Type /Page``), at least 1.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from typing import Final

__all__ = [
    "IMAGE_TYPES",
    "PDF_PAGE_TOKENS",
    "MediaError",
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


def image_tokens(provider: str, width: int, height: int) -> int:
    """What the emulator bills for one image (see the module docstring).

    Examples
    --------
    >>> image_tokens("openai", 1024, 1024), image_tokens("anthropic", 1000, 1000)
    (765, 1334)
    >>> image_tokens("gemini", 300, 300)
    258
    """
    w, h = float(width), float(height)
    if provider == "openai":
        fit = min(1.0, 2048 / max(w, h))
        w, h = w * fit, h * fit
        short = min(1.0, 768 / min(w, h))
        w, h = w * short, h * short
        return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)
    if provider == "anthropic":
        fit = min(1.0, 1568 / max(w, h), math.sqrt(1_150_000 / (w * h)))
        return math.ceil(w * fit * h * fit / 750)
    if width <= 384 and height <= 384:
        return 258
    return 258 * math.ceil(width / 768) * math.ceil(height / 768)
