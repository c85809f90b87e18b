"""Anthropic's 5 MB image limit is on the base64 size (issue 8.5).

The API answers "image.source.base64: image exceeds 5 MB maximum: N bytes > 5242880 bytes"
where N is the base64 length (anthropics/claude-code#19631, lobehub/lobehub#14711), so an
image of 3.75-5 MB passed our old raw-size check and failed after the batch ran.
"""

from __future__ import annotations

import base64
import random

import polars as pl
import pytest
from pydantic import BaseModel

import batchata_df.files
from batchata_df import batch_llm
from batchata_df.errors import FileInputError


class Caption(BaseModel):
    caption: str


@pytest.fixture(scope="module")
def big_png(tmp_path_factory):
    """A noise PNG of about 4.3 MB raw, about 5.8 MB in base64."""
    from PIL import Image

    rng = random.Random(7)
    width, height = 1200, 1200
    image = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    path = tmp_path_factory.mktemp("img") / "noise.png"
    image.save(path, compress_level=0)
    raw = path.read_bytes()
    assert 3.75 * 2**20 < len(raw) < 5 * 2**20 < len(base64.b64encode(raw))
    return path


def _run(path, model="claude-haiku-4-5"):
    df = pl.DataFrame({"img": [str(path)]})
    return df.pipe(batch_llm, schema=Caption, model=model, prompt="Caption the image.",
                   files="img")


def test_the_emulator_refuses_it_per_request_as_anthropic_does(emu, big_png, monkeypatch):
    # What users saw, with the client check at the old raw size.
    limits = batchata_df.files.LIMITS["anthropic"]
    import dataclasses

    monkeypatch.setitem(batchata_df.files.LIMITS, "anthropic",
                        dataclasses.replace(limits, image_encoded=False))
    out = _run(big_png)
    assert out["_status"].to_list() == ["failed"]
    assert "image exceeds 5 MB maximum" in out["_error"][0]
    assert "> 5242880 bytes" in out["_error"][0]


def test_the_client_refuses_it_before_anything_is_sent(emu, big_png):
    with pytest.raises(FileInputError, match=r"base64.* 5 MB per image in base64"):
        _run(big_png)
    assert emu.log() == []
    # OpenAI's 20 MB image limit is on the file itself: the same image is fine there.
    assert _run(big_png, model="gpt-4.1-mini")["_status"].to_list() == ["completed"]
