"""Offline token estimates for prompts, images and PDF pages.

These numbers feed the cost cap and ``dry_run`` plans, so wherever a count is not exact it
errs high: an overestimate admits a little less work per batch, an underestimate could
overspend the cap.

Text
    * OpenAI: **exact** with the model's own BPE (``o200k_base`` for gpt-4o, gpt-4.1,
      gpt-4.5, gpt-5 and later, the o-series and gpt-oss; ``cl100k_base`` for gpt-4,
      gpt-3.5 and the text-embedding models), counted by the ``bpe-openai`` package that
      ships both vocabularies (no download; a core dependency). If it cannot be imported,
      the approximation below is used.
    * Anthropic, Gemini (no offline tokenizer is published) and the OpenAI fallback:
      ``ceil(word_chars / BYTES_PER_TOKEN[provider]) + ascii_punctuation + letters_beyond_ascii
      + symbol_bytes_beyond_ascii``, where *word chars* are ASCII letters, digits and
      spaces. Anthropic publishes ~3.5 English characters per token and Google ~4; we use
      3.0 and 3.5 for the word part. Punctuation, newlines and symbols are where BPE
      vocabularies are least efficient (code, JSON, ``!!!``), so each ASCII one counts as a
      token, each non-ASCII letter (accented, CJK, Cyrillic...) as a token, and each other
      non-ASCII character (emoji, CJK punctuation) as its UTF-8 byte count -- the most a
      byte-level BPE can spend on it. Over a test set of prose, reviews with emoji,
      accented text, Chinese and code this stays at or above OpenAI's ``cl100k_base``.

Chat framing (:func:`estimate_request_tokens`)
    OpenAI's chat format adds ``OPENAI_TOKENS_PER_MESSAGE`` (4: 3 of framing and the
    role's one token) per message and ``OPENAI_TOKENS_PER_REPLY`` (3) to prime the answer
    (OpenAI cookbook, "How to count tokens with tiktoken"). For the other providers we
    add ``APPROX_TOKENS_PER_MESSAGE`` (8), a margin over their unpublished framing.

Images and PDF pages are pure functions of sizes and page counts; see
:func:`image_tokens` and :func:`pdf_page_tokens` for the published rules they follow.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from collections.abc import Callable
from typing import Literal

import polars as pl

__all__ = [
    "APPROX_TOKENS_PER_MESSAGE",
    "BYTES_PER_TOKEN",
    "OPENAI_TOKENS_PER_MESSAGE",
    "OPENAI_TOKENS_PER_REPLY",
    "PDF_TEXT_TOKENS_PER_PAGE",
    "estimate_file_tokens",
    "estimate_image_tokens",
    "estimate_request_tokens",
    "estimate_tokens",
    "image_tokens",
    "is_exact",
    "openai_encoding_name",
    "pdf_page_tokens",
]

Detail = Literal["low", "high", "auto"]

OPENAI_TOKENS_PER_MESSAGE = 4
"""Tokens OpenAI bills for every message besides its content: 3 of framing and its role,
one token for every chat role (system, developer, user, assistant, tool) in both
``o200k_base`` and ``cl100k_base`` (OpenAI cookbook, "How to count tokens with tiktoken",
``num_tokens_from_messages``: ``tokens_per_message = 3`` plus the tokens of every value of
the message, its role included)."""

OPENAI_TOKENS_PER_REPLY = 3
"""Tokens OpenAI adds once per request to prime the assistant's reply."""

APPROX_TOKENS_PER_MESSAGE = 8
"""Margin per message for providers whose chat framing is not published."""

BYTES_PER_TOKEN: dict[str, float] = {"openai": 3.5, "anthropic": 3.0, "gemini": 3.5}
"""Word characters per token in the approximation (below published averages: safer)."""

PDF_TEXT_TOKENS_PER_PAGE: dict[str, int] = {"openai": 1_500, "anthropic": 3_000, "gemini": 0}
"""Text tokens assumed per PDF page, on top of the page's image tokens.

Anthropic documents 1,500-3,000 text tokens per page "depending on content density" (we
take the top); OpenAI sends the extracted text of each page too (we assume a dense page,
1,500); Gemini bills a page as a fixed number of image tokens only.
"""

_PAGE_PX = (1700, 2200)
"""Size a PDF page is assumed to be rendered at (US letter at 200 dpi) for image tokens."""

_O200K = re.compile(r"^(gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-[5-9]|gpt-oss|o\d|codex)")
_CL100K = re.compile(r"^(gpt-4|gpt-3\.5|text-embedding-3|text-embedding-ada)")


def _bare_model(model: str) -> str:
    """``openai:ft:gpt-4o-mini:org::id`` -> ``gpt-4o-mini``."""
    name = model.strip().lower()
    name = name.removeprefix("openai:").removeprefix("anthropic:").removeprefix("gemini:")
    if name.startswith("ft:"):
        name = name.split(":")[1]
    return name.removeprefix("models/")


def openai_encoding_name(model: str) -> str:
    """The BPE encoding an OpenAI model uses (unknown names get the newest, ``o200k_base``).

    Examples
    --------
    >>> openai_encoding_name("gpt-5.4-mini"), openai_encoding_name("o3")
    ('o200k_base', 'o200k_base')
    >>> openai_encoding_name("gpt-4-turbo"), openai_encoding_name("gpt-3.5-turbo")
    ('cl100k_base', 'cl100k_base')
    """
    name = _bare_model(model)
    if _O200K.match(name):
        return "o200k_base"
    if _CL100K.match(name):
        return "cl100k_base"
    return "o200k_base"


@functools.lru_cache(maxsize=4)
def _counter(encoding: str) -> Callable[[str], int] | None:
    """A token counting function for ``encoding``, or None when bpe-openai is missing."""
    try:
        # bpe-openai builds its Python rank tables at import (~0.5 s, once) through
        # importlib.resources.open_binary, deprecated since Python 3.11: its warning is
        # about its code, not ours, and must not fail callers running with -W error.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import bpe_openai
    except ImportError:
        return None
    try:
        # The Rust tokenizer's own ``count``: ~3.7 µs per 150-character row, against ~5.6 µs
        # through the tiktoken-style ``Encoding`` (which also spends ~0.6 s building a
        # Python rank table we do not need). Its ``encode_ordinary_batch`` holds the GIL in
        # every thread and is slower still.
        from bpe_openai import _bindings

        count: Callable[[str], int] = _bindings.tokenizer_for_encoding(encoding).count
    except (ImportError, AttributeError):
        enc = bpe_openai.get_encoding(encoding)

        def count(text: str) -> int:
            return len(enc.encode_ordinary(text))

    return count


def is_exact(provider: str, model: str) -> bool:
    """Whether :func:`estimate_tokens` counts exactly (OpenAI with bpe-openai installed).

    Examples
    --------
    >>> is_exact("openai", "gpt-5.4-mini"), is_exact("anthropic", "claude-haiku-4-5")
    (True, False)
    """
    return _provider(provider) == "openai" and _counter(openai_encoding_name(model)) is not None


def _provider(provider: str) -> str:
    name = provider.strip().lower()
    if name == "google":
        name = "gemini"
    if name not in BYTES_PER_TOKEN:
        msg = f"unknown provider {provider!r}; expected one of {sorted(BYTES_PER_TOKEN)!r}"
        raise ValueError(msg)
    return name


def _approx(texts: pl.Series, bytes_per_token: float) -> pl.Series:
    t = pl.col("t")
    word = t.str.count_matches(r"[A-Za-z0-9 ]")
    other_ascii = t.str.count_matches(r"[\x00-\x7F]") - word
    non_ascii_letters = t.str.count_matches(r"[\p{L}\p{M}\p{N}&&[^\x00-\x7F]]")
    symbol_bytes = t.str.replace_all(r"[\x00-\x7F\p{L}\p{M}\p{N}]+", "").str.len_bytes()
    tokens = (
        (word / bytes_per_token).ceil().cast(pl.Int64)
        + other_ascii
        + non_ascii_letters
        + symbol_bytes.cast(pl.Int64)
    )
    return pl.DataFrame({"t": texts}).select(tokens.fill_null(0).cast(pl.Int64)).to_series()


def estimate_tokens(texts: pl.Series, provider: str, model: str) -> pl.Series:
    """Tokens in each text, exact for OpenAI and a conservative estimate otherwise.

    Parameters
    ----------
    texts
        A String series; nulls count as empty texts (0 tokens).
    provider
        ``"openai"``, ``"anthropic"`` or ``"gemini"``.
    model
        The model name (selects the OpenAI encoding; ``"openai:"`` prefixes are accepted).

    Returns
    -------
    polars.Series
        Int64, same length and name as ``texts``. Content only: add the chat framing with
        :func:`estimate_request_tokens`.

    Examples
    --------
    >>> import polars as pl
    >>> s = pl.Series("prompt", ["hello world", "tiktoken is great!", None])
    >>> estimate_tokens(s, "openai", "gpt-5.4-mini").to_list()
    [2, 6, 0]
    >>> estimate_tokens(s, "openai", "gpt-4").to_list()
    [2, 6, 0]
    >>> estimate_tokens(s, "anthropic", "claude-haiku-4-5").to_list()
    [4, 7, 0]
    """
    if texts.dtype != pl.String:
        msg = f"estimate_tokens needs a String series, got {texts.name!r} of dtype {texts.dtype}"
        raise TypeError(msg)
    name = _provider(provider)
    if name == "openai":
        count = _counter(openai_encoding_name(model))
        if count is not None:
            values = [0 if t is None else count(t) for t in texts.to_list()]
            return pl.Series(texts.name, values, dtype=pl.Int64)
    return _approx(texts, BYTES_PER_TOKEN[name]).alias(texts.name)


def estimate_request_tokens(
    prompt: pl.Series,
    provider: str,
    model: str,
    *,
    system: pl.Series | str | None = None,
    extra_tokens: int = 0,
) -> pl.Series:
    """Input tokens of one chat request per row: messages plus their framing.

    Parameters
    ----------
    prompt
        The user message of each request.
    provider, model
        As in :func:`estimate_tokens`.
    system
        An optional system message: one for all rows, or one per row (nulls: none).
    extra_tokens
        Tokens added to every request, e.g. :func:`estimate_tokens` of the JSON schema sent
        for structured output, or :func:`estimate_file_tokens` of an attachment.

    Examples
    --------
    >>> import polars as pl
    >>> prompt = pl.Series(["hello world"])
    >>> estimate_request_tokens(prompt, "openai", "gpt-5.4-mini").to_list()  # 2 + 4 + 3
    [9]
    >>> estimate_request_tokens(prompt, "openai", "gpt-5.4-mini", system="hello world").to_list()
    [15]
    """
    name = _provider(provider)
    per_message = OPENAI_TOKENS_PER_MESSAGE if name == "openai" else APPROX_TOKENS_PER_MESSAGE
    per_request = OPENAI_TOKENS_PER_REPLY if name == "openai" else 0
    total = estimate_tokens(prompt, name, model) + (per_message + per_request + extra_tokens)
    if system is not None:
        sys_texts = (
            pl.Series([system], dtype=pl.String)
            if isinstance(system, str)
            else system.cast(pl.String)
        )
        sys_tokens = estimate_tokens(sys_texts, name, model)
        framing = sys_texts.is_not_null().cast(pl.Int64) * per_message
        sys_total = sys_tokens + framing
        total = total + (sys_total.item() if isinstance(system, str) else sys_total)
    return total.alias(prompt.name)


def history_tokens(history: pl.Series, provider: str, model: str) -> pl.Series:
    """Input tokens of the earlier turns of each request (``history=``), with framing.

    ``history`` is a list of ``{role, content}`` structs per row (null: none).

    Examples
    --------
    >>> h = pl.Series([[{"role": "user", "content": "hello world"}], None])
    >>> history_tokens(h, "openai", "gpt-5.4-mini").to_list()  # 2 + 4, none
    [6, 0]
    """
    name = _provider(provider)
    per_message = OPENAI_TOKENS_PER_MESSAGE if name == "openai" else APPROX_TOKENS_PER_MESSAGE
    frame = pl.DataFrame({"h": history}).with_row_index("_row")
    turns = frame.explode("h").filter(pl.col("h").is_not_null())
    if turns.height == 0:
        return pl.Series(history.name, [0] * len(history), dtype=pl.Int64)
    contents = turns.get_column("h").struct.field("content")
    counted = turns.select("_row").with_columns(
        (estimate_tokens(contents, name, model) + per_message).alias("t")
    )
    per_row = counted.group_by("_row").agg(pl.col("t").sum())
    out = frame.select("_row").join(per_row, on="_row", how="left", maintain_order="left")
    return out.get_column("t").fill_null(0).cast(pl.Int64).alias(history.name)


# -- images and PDF pages ---------------------------------------------------------------------

# Image-token rules per model family. Each rule's source is given where it is encoded; the
# worst-case estimate and the cost cap use them, so where sources disagree the larger count
# is taken (an estimate must bound what is billed).
#
# OpenAI tile models: an image costs base + per_tile * 512 px tiles (after fitting in
# 2048x2048 and scaling the short side to 768). Low detail costs base only. Source: the
# vision guide's "Calculating costs" (platform.openai.com/docs/guides/images-vision).
_OPENAI_TILES: list[tuple[str, int, int]] = [
    ("gpt-4o-mini", 2833, 5667),
    ("gpt-5", 70, 140),  # gpt-5 and gpt-5.1 (gpt-5.2 and later: patches, below)
    ("o1", 75, 150),
    ("o3", 75, 150),
    ("computer-use", 65, 129),
]
_OPENAI_TILE_DEFAULT = (85, 170)  # gpt-4o, gpt-4.1, gpt-4.5, and unknown models
# OpenAI patch models: 32x32 px patches, capped at a budget (the image is scaled down to
# fit it), times a multiplier. Same guide, "patch" models.
_OPENAI_PATCHES: list[tuple[str, float]] = [
    ("gpt-5-mini", 1.62),
    ("gpt-5-nano", 2.46),
    ("gpt-4.1-mini", 1.62),
    ("gpt-4.1-nano", 2.46),
    ("o4-mini", 1.72),
]
_OPENAI_PATCH_BUDGET = 1536
# GPT-5.2 and later (5.x) and GPT-6 and later: 32 px patches for every size of model.
# * Full-size models: a budget of 10,000 patches at detail "original" -- which "auto" (we
#   send no detail) is for these models -- and 2,500 at "high"; multiplier 1.2. Sources:
#   the budget as OpenAI's own codex client encodes it from the vision guide's "model
#   sizing behavior" (github.com/openai/codex pull 19865, ORIGINAL_IMAGE_MAX_PATCHES =
#   10_000); 2,500 at "high" and the 1.2 multiplier measured on gpt-5.2/5.3/5.4 through the
#   API (community.openai.com/t/1377015, 2026-03). GPT-6 and later: a 12 MP photo was
#   billed 14,364 tokens at "auto" (11,970 patches x 1.2, over GPT-5.x's 10,000 budget;
#   huggingface.co/datasets/JOHNISKING/image-token-cost, which also measures 11,868 for
#   gpt-5.5 and 2,942 for gpt-6 at "high", both as computed here). No budget is published;
#   we bound it at 16,384 patches (about 16.8 MP).
# * mini/nano: the vision guide gives a 1,536-patch budget and a 1.62 multiplier
#   (community.openai.com/t/1380539 quotes it); measured bills are lower (1.2), so 1.62 is
#   the bound.
_OPENAI_NEW_PATCH = re.compile(r"^gpt-(?:5\.(?:[2-9]|\d{2,})|(?:[6-9]|\d{2,})(?![\d]))")
_OPENAI_NEW_SMALL = re.compile(r"-(?:mini|nano)(?:-|$)")
_OPENAI_NEW_BUDGET = {"auto": 10_000, "original": 10_000, "high": 2_500, "low": 2_500}
_OPENAI_6_BUDGET = 16_384
_OPENAI_6 = re.compile(r"^gpt-(?:[6-9]|\d{2,})(?![\d])")
_OPENAI_NEW_MULTIPLIER = 1.2


def _patches(width: int, height: int, size: int, budget: int) -> int:
    """``size`` px patches covering the image, scaled down to fit ``budget`` patches."""
    patches = math.ceil(width / size) * math.ceil(height / size)
    if patches <= budget:
        return patches
    shrink = math.sqrt(size * size * budget / (width * height))
    w_patches = math.floor(width * shrink / size)
    h_patches = math.floor(height * shrink / size)
    return min(w_patches * h_patches, budget) if w_patches and h_patches else budget


def _openai_image(width: int, height: int, model: str, detail: Detail) -> int:
    name = _bare_model(model)
    if _OPENAI_NEW_PATCH.match(name):
        if _OPENAI_NEW_SMALL.search(name):
            return math.ceil(_patches(width, height, 32, _OPENAI_PATCH_BUDGET) * 1.62)
        budget = _OPENAI_NEW_BUDGET.get(detail, 10_000)
        if _OPENAI_6.match(name) and detail == "auto":
            budget = _OPENAI_6_BUDGET
        return math.ceil(_patches(width, height, 32, budget) * _OPENAI_NEW_MULTIPLIER)
    for prefix, multiplier in _OPENAI_PATCHES:
        if name.startswith(prefix):
            return math.ceil(_patches(width, height, 32, _OPENAI_PATCH_BUDGET) * multiplier)
    base, per_tile = next(
        ((b, t) for prefix, b, t in _OPENAI_TILES if name.startswith(prefix)),
        _OPENAI_TILE_DEFAULT,
    )
    if detail == "low":
        return base
    w, h = float(width), float(height)
    fit = min(1.0, 2048 / max(w, h))
    w, h = w * fit, h * fit
    short = min(1.0, 768 / min(w, h))
    w, h = w * short, h * short
    return base + per_tile * math.ceil(w / 512) * math.ceil(h / 512)


# Claude Opus 4.7 and later, Claude 5.x: native resolution up to 2,576 px on the long edge
# and about 3.75 megapixels (4,784 patches of 28x28 px); earlier models 1,568 px and about
# 1.15 megapixels. An image costs ceil(w/28) * ceil(h/28) "visual tokens" after resizing
# (the current vision guide, platform.claude.com/docs/en/build-with-claude/vision: "Each
# patch is a 28x28 pixel block ... An image therefore costs ceil(width/28) x
# ceil(height/28) visual tokens"); the earlier guide's width * height / 750 is the larger
# count for most sizes, so the estimate takes the larger of the two. 2,576 px for Opus 4.7:
# claudecodecamp.com/p/images-cost-3x-more-tokens-in-claude-opus-4-7 (measured with
# count_tokens); 3.75 MP: the Opus 4.7 launch notes (apidog.com/blog/claude-opus-4-7-api).
_CLAUDE_HIGH_RES = re.compile(r"^claude-(?:opus-4-[7-9]|[a-z]+-(?:[5-9]|\d{2,})(?:-|$))")
_CLAUDE_LIMITS = {"high_res": (2576, 4784 * 28 * 28), "standard": (1568, 1_150_000)}


def _anthropic_image(width: int, height: int, model: str = "") -> int:
    high = bool(_CLAUDE_HIGH_RES.match(_bare_model(model)))
    edge, pixels = _CLAUDE_LIMITS["high_res" if high else "standard"]
    w, h = float(width), float(height)
    # Scaled down (aspect ratio kept) to the model's native resolution.
    fit = min(1.0, edge / max(w, h), math.sqrt(pixels / (w * h)))
    w, h = w * fit, h * fit
    return max(math.ceil(w * h / 750), math.ceil(w / 28) * math.ceil(h / 28))


# Gemini 3: media_resolution decides an image's tokens -- LOW 280, MEDIUM 560, HIGH 1,120,
# ULTRA_HIGH 2,240 -- and HIGH is the default for images (MEDIUM for PDF pages); we send
# none, so the default applies (ai.google.dev/gemini-api/docs/media-resolution, "Token
# counts"). Gemini 2.5 and earlier: 258 tokens when both sides are at most 384 px, else
# 258 per 768x768 tile (ai.google.dev/gemini-api/docs/image-understanding, "Technical
# details").
_GEMINI_3_IMAGE_TOKENS = 1120


def _gemini_image(width: int, height: int, model: str) -> int:
    if _bare_model(model).startswith("gemini-3"):
        return _GEMINI_3_IMAGE_TOKENS
    if width <= 384 and height <= 384:
        return 258
    # Larger images are cropped and scaled into 768x768 tiles of 258 tokens each.
    return 258 * math.ceil(width / 768) * math.ceil(height / 768)


def image_tokens(
    width: int, height: int, provider: str, model: str, *, detail: Detail = "auto"
) -> int:
    """Input tokens of one image of ``width`` x ``height`` pixels, by the providers' rules.

    * OpenAI (vision guide): *tile* models fit the image in 2048x2048, scale its short side
      to 768 px and charge ``base + per_tile * n_512px_tiles`` -- 85 + 170 per tile for
      gpt-4o/4.1/4.5 (and unknown models), 70 + 140 for gpt-5/5.1, 75 + 150 for o1/o3,
      2833 + 5667 for gpt-4o-mini; ``detail="low"`` charges the base only. *Patch* models
      (gpt-4.1-mini/nano, gpt-5-mini/nano, o4-mini) charge 32x32 px patches, at most 1536,
      times 1.62 / 2.46 / 1.72. GPT-5.2 and later and GPT-6: patches times 1.2, at most
      10,000 (detail ``"auto"``/``"original"``) or 2,500 (``"high"``); their mini/nano
      models at most 1,536 patches times 1.62 (GPT-6 at ``"auto"``: at most 16,384
      patches, our bound). ``"auto"`` is priced as ``"high"`` on the
      older models.
    * Anthropic (vision guide): ``ceil(w/28) * ceil(h/28)`` visual tokens (or ``w * h /
      750``, whichever is larger) after scaling to the model's native resolution: 1,568 px
      on the long edge and ~1.15 megapixels, or 2,576 px and ~3.75 megapixels on Claude
      Opus 4.7+ and Claude 5.x.
    * Gemini: 258 tokens when both sides are at most 384 px, else 258 per 768x768 tile;
      1,120 per image on Gemini 3 (default "high" media resolution).

    Examples
    --------
    >>> image_tokens(1024, 1024, "openai", "gpt-4o")  # 768x768 -> 4 tiles
    765
    >>> image_tokens(1024, 1024, "openai", "gpt-4o", detail="low")
    85
    >>> image_tokens(1024, 1024, "openai", "gpt-6-sol")  # 32 x 32 patches x 1.2
    1229
    >>> image_tokens(1000, 1000, "anthropic", "claude-haiku-4-5")
    1334
    >>> image_tokens(2000, 2000, "anthropic", "claude-opus-4-7")  # scaled to 3.75 MP
    5001
    >>> image_tokens(300, 300, "gemini", "gemini-2.5-flash")
    258
    >>> image_tokens(300, 300, "gemini", "gemini-3.5-flash")
    1120
    """
    if width <= 0 or height <= 0:
        msg = f"image size must be positive, got {width}x{height}"
        raise ValueError(msg)
    name = _provider(provider)
    if name == "openai":
        return _openai_image(width, height, model, detail)
    if name == "anthropic":
        return _anthropic_image(width, height, model)
    return _gemini_image(width, height, model)


def pdf_page_tokens(provider: str, model: str) -> int:
    """Input tokens assumed for one PDF page (a conservative, dense page).

    * Anthropic: each page is sent as extracted text (documented 1,500-3,000 tokens per
      page; we take 3,000) plus an image of the page (see :func:`image_tokens`).
    * OpenAI: the extracted text (assumed 1,500) plus an image of the page.
    * Gemini: a fixed 258 tokens per page (documents guide); 560 on Gemini 3 (default
      media resolution for PDFs). Text extracted from the PDF is not charged.

    Page images are priced as a US-letter page rendered at 200 dpi (1700x2200 px).

    Examples
    --------
    >>> pdf_page_tokens("gemini", "gemini-2.5-flash")
    258
    >>> pdf_page_tokens("anthropic", "claude-haiku-4-5")  # 3,000 text + 1,534 image
    4534
    """
    name = _provider(provider)
    if name == "gemini":
        return 560 if _bare_model(model).startswith("gemini-3") else 258
    return PDF_TEXT_TOKENS_PER_PAGE[name] + image_tokens(*_PAGE_PX, name, model)


def estimate_file_tokens(pages: pl.Series | int, provider: str, model: str) -> pl.Series | int:
    """Input tokens of PDFs with the given page counts (:func:`pdf_page_tokens` per page).

    Examples
    --------
    >>> import polars as pl
    >>> estimate_file_tokens(pl.Series([1, 10, None]), "gemini", "gemini-2.5-flash").to_list()
    [258, 2580, 0]
    >>> estimate_file_tokens(3, "gemini", "gemini-2.5-pro")
    774
    """
    per_page = pdf_page_tokens(provider, model)
    if isinstance(pages, int):
        return pages * per_page
    return (pages.cast(pl.Int64).fill_null(0) * per_page).alias(pages.name)


def estimate_image_tokens(
    widths: pl.Series, heights: pl.Series, provider: str, model: str, *, detail: Detail = "auto"
) -> pl.Series:
    """:func:`image_tokens` per row (computed once per distinct size); nulls give 0.

    Examples
    --------
    >>> import polars as pl
    >>> w, h = pl.Series([1024, 1024, None]), pl.Series([1024, 1024, 10])
    >>> estimate_image_tokens(w, h, "openai", "gpt-4.1").to_list()
    [765, 765, 0]
    """
    sizes = pl.DataFrame({"w": widths.cast(pl.Int64), "h": heights.cast(pl.Int64)})
    distinct = sizes.unique().drop_nulls()
    table = distinct.with_columns(
        tokens=pl.Series(
            [image_tokens(w, h, provider, model, detail=detail) for w, h in distinct.iter_rows()],
            dtype=pl.Int64,
        )
    )
    out = sizes.join(table, on=["w", "h"], how="left", maintain_order="left", nulls_equal=False)
    return out.get_column("tokens").fill_null(0).alias("tokens")
