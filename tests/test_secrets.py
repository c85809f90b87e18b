"""Invariant 4: no API key in checkpoints, logs, progress output or error messages."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import CredentialsError, batch_llm, sql

SECRET = "sk-SECRET-do-not-write-0123456789"


class A(BaseModel):
    label: str


def test_keys_never_reach_disk_or_output(emu, monkeypatch, tmp_path, capsys, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    state = tmp_path / "s"
    df = pl.DataFrame({"t": ["a", "[[emulator:error]]"]})
    out = df.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}", state=state,
                  progress=True)
    assert SECRET not in repr(out.to_dicts())
    for path in Path(state).rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    dump = sql("select * from job_events", state=state)
    assert SECRET not in repr(dump.to_dicts())
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err + caplog.text
    assert all(SECRET not in repr(e) for e in emu.log())


def test_rejected_key_error_does_not_echo_the_key(emu, monkeypatch):
    bad = "sk-invalid-" + SECRET
    monkeypatch.setenv("OPENAI_API_KEY", bad)
    with pytest.raises(CredentialsError) as info:
        pl.DataFrame({"t": ["a"]}).pipe(batch_llm, model="gpt-4.1-mini", prompt="{t}")
    text = str(info.value) + repr(info.value) + str(info.value.__cause__ or "")
    assert "OPENAI_API_KEY" in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert bad not in text
