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


# -- issue 9 point 3: a key echoed by a provider or gateway is scrubbed everywhere ----------

import logging  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

from batchata_df import BatchataError, OrphanedBatchError  # noqa: E402
from batchata_df.redact import REDACTED, scrub  # noqa: E402

# provider -> (model, key variable, a realistic key, create path, list path)
ECHOED = {
    "openai": ("gpt-4.1-mini", "OPENAI_API_KEY", "sk-proj-Echo0123456789abcdefXYZ",
               r"^/openai/v1/batches$", r"^/openai/v1/batches(\?.*)?$"),
    "anthropic": ("claude-haiku-4-5", "ANTHROPIC_API_KEY", "sk-ant-api03-Echo0123456789abc",
                  r"/anthropic/v1/messages/batches$",
                  r"/anthropic/v1/messages/batches(\?.*)?$"),
    "gemini": ("gemini-2.5-flash", "GEMINI_API_KEY", "AIzaSyEcho0123456789abcdefghijklmnop",
               r":batchGenerateContent$", r"/v1beta/batches(\?.*)?$"),
}
POLL = r"/batches/[^/:?]+$"


def _chain_text(exc: BaseException) -> str:
    """Everything a user can see of an exception: str, repr, the printed chain, attributes."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        parts += [str(e), repr(e), repr(e.args), repr(vars(e))]
        stack += [e.__cause__, e.__context__]
    return "\n".join(parts)


def _assert_nowhere(secret: str, state: Path, *texts: str) -> None:
    for path in state.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    for view in ("jobs", "batches", "job_events", "batch_events"):
        dump = sql(f"select * from {view}", state=state)
        assert secret not in repr(dump.to_dicts()), view
    for text in texts:
        assert secret not in text


@pytest.mark.parametrize("provider", sorted(ECHOED))
def test_a_key_echoed_in_provider_errors_is_scrubbed_everywhere(
    provider, emu, monkeypatch, tmp_path, capsys, caplog
):
    model, var, secret, create, _ = ECHOED[provider]
    monkeypatch.setenv(var, secret)
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "s"
    kw = {"schema": A, "model": model, "prompt": "{t}", "state": state}
    df = pl.DataFrame({"t": ["a", "b"]})
    # A poll refused with the key in the body: the rows fail with the (scrubbed) reason.
    emu.inject_fault(method="GET", path_regex=POLL, status=400, echo_key=True)
    out = df.pipe(batch_llm, **kw)
    assert out["_status"].to_list() == ["failed", "failed"]
    assert out["_error"].str.contains(REDACTED, literal=True).all(), out["_error"][0]
    # A create refused 401 with the key echoed: a CredentialsError, chain scrubbed.
    emu.inject_fault(method="POST", path_regex=create, status=401, echo_key=True)
    with pytest.raises(BatchataError) as info:
        df.pipe(batch_llm, retry_failed=True, **kw)
    chain = _chain_text(info.value)
    assert info.value.__cause__ is not None  # the SDK exception is kept for debugging...
    assert REDACTED in chain  # ...with the echoed key replaced
    captured = capsys.readouterr()
    _assert_nowhere(secret, state, chain, repr(out.to_dicts()), captured.out, captured.err,
                    caplog.text)
    assert any(e.get("fault") for e in emu.log())  # the faults did fire


CRASH_CHILD = """
import sys, polars as pl
from pydantic import BaseModel
from batchata_df import batch_llm
class A(BaseModel):
    label: str
pl.DataFrame({"t": ["a", "b"]}).pipe(
    batch_llm, schema=A, model=sys.argv[2], prompt="{t}", state=sys.argv[1])
print("FINISHED")
"""


@pytest.mark.parametrize("provider", sorted(ECHOED))
def test_a_key_echoed_during_the_orphan_lookup_after_a_crash_is_scrubbed(
    provider, emu, monkeypatch, tmp_path, capsys, caplog
):
    model, var, secret, create, listing = ECHOED[provider]
    monkeypatch.setenv(var, secret)
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "s"
    script = tmp_path / "child.py"
    script.write_text(CRASH_CHILD)
    env = {**os.environ, "BATCHATA_DF_FAILPOINT": "after_submit"}
    child = subprocess.run([sys.executable, str(script), str(state), model], env=env,
                           capture_output=True, text=True, timeout=240)
    assert child.returncode == 75, child.stderr  # died between "created" and our checkpoint
    # The lookup of the orphan is refused by a gateway that echoes the key.
    emu.inject_fault(method="GET", path_regex=listing, status=400, echo_key=True)
    kw = {"schema": A, "model": model, "prompt": "{t}", "state": state}
    df = pl.DataFrame({"t": ["a", "b"]})
    with pytest.raises(OrphanedBatchError) as info:
        df.pipe(batch_llm, **kw)
    chain = _chain_text(info.value)
    assert REDACTED in chain
    emu.clear_faults()
    out = df.pipe(batch_llm, **kw)  # the orphan is found: nothing paid twice
    assert out["_status"].to_list() == ["completed", "completed"]
    creates = [e for e in emu.log() if e["method"] == "POST" and re_search(create, e["path"])]
    assert len(creates) == 1
    captured = capsys.readouterr()
    _assert_nowhere(secret, state, chain, child.stdout, child.stderr, captured.out,
                    captured.err, caplog.text, repr(out.to_dicts()))


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_scrub_replaces_env_secrets_and_key_shapes(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-abcdefgh12345")
    monkeypatch.setenv("SHORT_KEY", "1")
    text = ("a tok-abcdefgh12345 b sk-abcdefghijkl0123 c sk-ant-api03-xyz0123456 "
            "d AIzaSyA0123456789abcdef e 1")
    assert scrub(text) == f"a {REDACTED} b {REDACTED} c {REDACTED} d {REDACTED} e 1"
    assert scrub("task-abcdefghijklmnop") == "task-abcdefghijklmnop"


def test_messages_of_our_exceptions_are_scrubbed(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "some-key-without-shape-123")
    err = BatchataError("refused some-key-without-shape-123")
    assert str(err) == f"refused {REDACTED}"
