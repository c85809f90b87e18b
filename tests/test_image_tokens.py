"""Image-token estimates per current model family, in the worst case and the cap (issue 8).

Each expected count is worked out by hand from the family's published (or measured) rule,
written next to it; ``tokens.py`` names the sources. The end-to-end tests check that a
dry run's input estimate of a row with an image is the row's text estimate plus exactly
that family's image tokens, so the worst case and the cap (which read the same estimate)
price images by the model's own rule.
"""

from __future__ import annotations

import polars as pl
import pytest
from PIL import Image

from batchata_df import batch_llm
from batchata_df.tokens import image_tokens

CASES = [
    # OpenAI tile models: 1024x1024 -> 768x768 -> 2x2 tiles of 512 px.
    ("openai", "gpt-4.1", 1024, 1024, "auto", 85 + 170 * 4),
    ("openai", "gpt-5.1", 1024, 1024, "auto", 70 + 140 * 4),
    ("openai", "o3", 1024, 1024, "auto", 75 + 150 * 4),
    # Patch models: ceil(1024/32)^2 = 1024 patches x multiplier.
    ("openai", "o4-mini", 1024, 1024, "auto", 1762),  # 1024 x 1.72 = 1761.3
    ("openai", "gpt-5-mini", 1024, 1024, "auto", 1659),  # 1024 x 1.62 = 1658.9
    # GPT-5.2+ and GPT-6: 32 px patches x 1.2.
    ("openai", "gpt-5.4", 1024, 1024, "auto", 1229),  # 1024 x 1.2 = 1228.8
    ("openai", "gpt-6-sol", 1024, 1024, "auto", 1229),
    # A 12 MP photo: gpt-5.5 scaled into 10,000 patches (115 x 86 = 9,890 x 1.2 = 11,868),
    # GPT-6 not capped at 10,000 (126 x 95 = 11,970 x 1.2 = 14,364), "high" into 2,500
    # (57 x 43 = 2,451 x 1.2 = 2,941.2): the counts measured in the dataset tokens.py cites.
    ("openai", "gpt-5.5", 4032, 3024, "auto", 11_868),
    ("openai", "gpt-6-luna", 4032, 3024, "auto", 14_364),
    ("openai", "gpt-6-sol", 4032, 3024, "high", 2_942),
    # GPT-5.4 mini/nano: at most 1,536 patches x 1.62; 2000x2000 -> 62x62 = 3,844 patches,
    # scaled into 39 x 39 = 1,521 -> 2,464.02.
    ("openai", "gpt-5.4-mini", 2000, 2000, "auto", 2465),
    # Claude before Opus 4.7: 1,568 px / 1.15 MP, w*h/750: 1000x1000 -> 1,333.3.
    ("anthropic", "claude-sonnet-4-6", 1000, 1000, "auto", 1334),
    # ... a 4000x3000 photo is scaled to 1.15 MP (1238.3 x 928.7): 1,533.3.
    ("anthropic", "claude-haiku-4-5", 4000, 3000, "auto", 1534),
    # Claude Opus 4.7+ and 5.x: up to 2,576 px and 4,784 patches (3,750,656 px): the same
    # photo is scaled to 2236.3 x 1677.2 -> 5,000.9 (w*h/750; 80 x 60 = 4,800 patches).
    ("anthropic", "claude-opus-4-7", 4000, 3000, "auto", 5001),
    ("anthropic", "claude-sonnet-5-5", 4000, 3000, "auto", 5001),
    # A long strip is bounded by the 2,576 px edge: 2576 x 257.6 -> 885 (w*h/750),
    # 92 x 10 = 920 patches, the larger.
    ("anthropic", "claude-opus-5", 8000, 800, "auto", 920),
    # Gemini 2.5: 258 up to 384x384, else 258 per 768 px tile (2 x 2 here).
    ("gemini", "gemini-2.5-flash", 300, 300, "auto", 258),
    ("gemini", "gemini-2.5-pro", 1024, 1024, "auto", 258 * 4),
    # Gemini 3.x: media_resolution HIGH (the default for images) = 1,120 per image.
    ("gemini", "gemini-3.5-flash", 300, 300, "auto", 1120),
    ("gemini", "gemini-3-pro-preview", 4032, 3024, "auto", 1120),
]


@pytest.mark.parametrize(("provider", "model", "w", "h", "detail", "expected"), CASES,
                         ids=[f"{c[1]}-{c[2]}x{c[3]}-{c[4]}" for c in CASES])
def test_image_tokens_per_family(provider, model, w, h, detail, expected):
    assert image_tokens(w, h, provider, model, detail=detail) == expected


FAMILIES = [
    ("gpt-4.1-mini", "openai"), ("gpt-6-sol", "openai"), ("o3", "openai"),
    ("claude-haiku-4-5", "anthropic"), ("claude-opus-4-7", "anthropic"),
    ("gemini-2.5-flash", "gemini"), ("gemini-3.5-flash", "gemini"),
]


@pytest.mark.parametrize(("model", "provider"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_dry_run_worst_case_counts_the_familys_image_tokens(emu, tmp_path, model, provider):
    img = tmp_path / "photo.png"
    Image.new("RGB", (4000, 3000), (10, 20, 30)).save(img)
    df = pl.DataFrame({"text": ["describe it", "describe it"], "file": [str(img), None]})
    plan = df.pipe(batch_llm, model=model, prompt="{text}", files="file", dry_run=True)
    with_image, without = plan["_est_input_tokens"].to_list()
    assert with_image - without == image_tokens(4000, 3000, provider, model)
    # The worst case prices those tokens: the row with the image costs more by exactly
    # its image tokens at the input rate (same output bound on both rows).
    extra = plan["_est_cost_usd"][0] - plan["_est_cost_usd"][1]
    assert extra > 0
    # A cap just under the image row's worst case holds it back before anything is sent.
    out = df.head(1).pipe(batch_llm, model=model, prompt="{text}", files="file",
                          max_cost_usd=plan["_est_cost_usd"][0] * 0.999, state=tmp_path / "s")
    assert out["_status"].to_list() == ["cancelled"]
    assert "cost_limit" in out["_error"][0]
    assert not [e for e in emu.log() if e["method"] == "POST"]


@pytest.mark.parametrize(("model", "provider"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_the_emulator_bills_images_by_the_models_generation(emu, tmp_path, model, provider):
    # The emulator bills what the provider's current rules say for that model; the
    # estimate used by the worst case and the cap is that same count for the image.
    img = tmp_path / "photo.png"
    Image.new("RGB", (4000, 3000), (10, 20, 30)).save(img)
    df = pl.DataFrame({"text": ["describe it", "describe it"], "file": [str(img), None]})
    out = df.pipe(batch_llm, model=model, prompt="{text}", files="file")
    assert out["_status"].to_list() == ["completed", "completed"], out["_error"].to_list()
    billed_image = out["_input_tokens"][0] - out["_input_tokens"][1]
    assert billed_image == image_tokens(4000, 3000, provider, model)
