"""Offline token estimates against known tokenizer outputs and published rules."""

from __future__ import annotations

import math
import sys

# bpe-openai is a dependency: imported here so that an install without it fails these
# tests loudly (the estimates below would silently become approximations).
import bpe_openai  # noqa: F401
import polars as pl
import pytest

from batchata_df import tokens
from batchata_df.tokens import (
    estimate_file_tokens,
    estimate_image_tokens,
    estimate_request_tokens,
    estimate_tokens,
    image_tokens,
    openai_encoding_name,
    pdf_page_tokens,
)


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-6-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("openai:gpt-4.1-mini", "o200k_base"),
        ("ft:gpt-4o-mini:acme::abc123", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("some-future-model", "o200k_base"),
    ],
)
def test_encoding_choice(model: str, encoding: str) -> None:
    assert openai_encoding_name(model) == encoding


def test_known_openai_counts() -> None:
    texts = pl.Series("t", ["hello world", "tiktoken is great!", "", None, "日本語のテキスト"])
    # tiktoken: o200k_base "tiktoken is great!" -> [83, 8251, 2488, 382, 2212, 0]
    o200k = estimate_tokens(texts, "openai", "gpt-4.1-mini")
    assert o200k.dtype == pl.Int64
    assert o200k.name == "t"
    assert o200k.to_list()[:4] == [2, 6, 0, 0]
    cl100k = estimate_tokens(texts, "openai", "gpt-3.5-turbo")
    assert cl100k.to_list()[:4] == [2, 6, 0, 0]
    assert tokens.is_exact("openai", "gpt-4o")


def test_special_token_text_is_plain_text() -> None:
    # a prompt containing "<|endoftext|>" is sent as text, never as the special token
    assert estimate_tokens(pl.Series(["<|endoftext|>"]), "openai", "gpt-4o").item() > 1


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "google"])
def test_approximation_overestimates_openai_bpe(provider: str) -> None:
    texts = pl.Series(
        [
            "The quick brown fox jumps over the lazy dog. " * 5,
            "Great product, would buy again!!! 5/5 ⭐⭐⭐⭐⭐",
            "Café crème brûlée, naïve façade — déjà vu.",
            "这是一个中文评论，产品质量很好。",  # noqa: RUF001
            "def f(x):\n    return {'a': [1, 2, 3]}\n",
        ]
    )
    approx = estimate_tokens(texts, provider, "m")
    exact = estimate_tokens(texts, "openai", "gpt-4")  # cl100k: the less efficient BPE
    assert (approx >= exact).all(), pl.DataFrame({"approx": approx, "exact": exact})


def test_approximation_rule() -> None:
    s = pl.Series(["abcdefg", "é", "", None])  # 7 ascii bytes; one non-ascii char
    assert estimate_tokens(s, "anthropic", "claude").to_list() == [math.ceil(7 / 3.0), 1, 0, 0]
    assert estimate_tokens(s, "gemini", "gemini-2.5-flash").to_list() == [2, 1, 0, 0]


def test_fallback_without_bpe_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens._counter.cache_clear()
    monkeypatch.setitem(sys.modules, "bpe_openai", None)
    try:
        out = estimate_tokens(pl.Series(["hello world"]), "openai", "gpt-4o")
        assert out.to_list() == [math.ceil(11 / 3.5)]
        assert not tokens.is_exact("openai", "gpt-4o")
    finally:
        tokens._counter.cache_clear()


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="unknown provider 'mistral'"):
        estimate_tokens(pl.Series(["x"]), "mistral", "m")
    with pytest.raises(TypeError, match="String series"):
        estimate_tokens(pl.Series([1]), "openai", "gpt-4o")
    with pytest.raises(ValueError, match="positive"):
        image_tokens(0, 10, "openai", "gpt-4o")


def test_request_framing() -> None:
    prompt = pl.Series("p", ["hello world", "hello world"])
    openai = estimate_request_tokens(prompt, "openai", "gpt-4o", extra_tokens=10)
    # a message is 3 tokens of framing + its role's 1 + its content; 3 prime the reply
    assert openai.to_list() == [2 + 4 + 3 + 10] * 2
    system = pl.Series(["hello world", None])
    per_row = estimate_request_tokens(prompt, "openai", "gpt-4o", system=system)
    assert per_row.to_list() == [2 + 4 + 3 + 2 + 4, 2 + 4 + 3]
    claude = estimate_request_tokens(prompt, "anthropic", "claude-haiku-4-5", system="be brief")
    assert claude.to_list() == [4 + 8 + 3 + 8] * 2


def test_image_rules() -> None:
    # OpenAI's published examples: 1024x1024 high -> 765; 2048x4096 -> 1105
    assert image_tokens(1024, 1024, "openai", "gpt-4.1") == 765
    assert image_tokens(2048, 4096, "openai", "gpt-4o") == 1105
    assert image_tokens(4096, 8192, "openai", "gpt-4o", detail="low") == 85
    assert image_tokens(1024, 1024, "openai", "gpt-4o-mini") == 2833 + 4 * 5667
    # patch models: 1024x1024 -> 32*32 patches = 1024, times 1.62 for gpt-4.1-mini
    assert image_tokens(1024, 1024, "openai", "gpt-4.1-mini") == math.ceil(1024 * 1.62)
    assert image_tokens(4000, 4000, "openai", "gpt-4.1-mini") <= math.ceil(1536 * 1.62)
    # Anthropic: ceil(w/28) * ceil(h/28) visual tokens (current vision guide) or w*h/750
    # (the earlier guide), whichever is larger; at most ~1.15 MP before Opus 4.7.
    assert image_tokens(200, 200, "anthropic", "claude-haiku-4-5") == 8 * 8  # > 54 (/750)
    assert image_tokens(1000, 1000, "anthropic", "claude-haiku-4-5") == 1334  # > 36 * 36
    assert image_tokens(5000, 5000, "anthropic", "claude-haiku-4-5") <= 1534
    # Gemini: 258 per small image, 258 per 768px tile otherwise
    assert image_tokens(384, 384, "gemini", "gemini-2.0-flash") == 258
    assert image_tokens(1536, 1000, "gemini", "gemini-2.5-pro") == 258 * 4
    assert image_tokens(300, 300, "gemini", "gemini-3-pro-preview") == 1120


def test_pdf_rules() -> None:
    assert pdf_page_tokens("gemini", "gemini-2.5-flash") == 258
    assert pdf_page_tokens("gemini", "gemini-3-flash") == 560
    assert 3000 < pdf_page_tokens("anthropic", "claude-opus-4-1") <= 3000 + 1600
    assert pdf_page_tokens("openai", "gpt-4o") > 1500
    pages = pl.Series("pages", [1, 3, None])
    out = estimate_file_tokens(pages, "anthropic", "claude-haiku-4-5")
    assert isinstance(out, pl.Series)
    per_page = pdf_page_tokens("anthropic", "claude-haiku-4-5")
    assert out.to_list() == [per_page, 3 * per_page, 0]
    assert estimate_file_tokens(2, "gemini", "gemini-2.5-flash") == 516


def test_image_tokens_vectorised() -> None:
    w = pl.Series([1024, 200, 1024, None])
    h = pl.Series([1024, 200, 1024, 5])
    out = estimate_image_tokens(w, h, "openai", "gpt-4o")
    assert out.to_list() == [765, 255, 765, 0]


def test_openai_counting_of_many_rows_matches_each_row_alone() -> None:
    # Speed is measured in benchmarks/bench_tokens.py; here: every row gets its own count.
    texts = pl.Series(
        [f"row {i}: " + "a fairly ordinary product review text " * (i % 5) for i in range(2_000)]
        + ["", None, "héllo wörld ✓", "hello world"]
    )
    out = estimate_tokens(texts, "openai", "gpt-4o")
    assert out.len() == texts.len()
    alone = [int(estimate_tokens(texts.slice(i, 1), "openai", "gpt-4o")[0])
             for i in range(0, texts.len(), 97)]
    assert out.gather(list(range(0, texts.len(), 97))).to_list() == alone
    assert out.tail(4).to_list()[:2] == [0, 0]
    assert out[-1] == 2  # "hello world" in o200k_base
    assert out[1] > out[0] and len(set(out.head(5).to_list())) == 5
