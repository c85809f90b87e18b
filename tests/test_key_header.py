"""An API key that no HTTP header can carry is a typed error before anything is sent.

A key with surrounding whitespace (a quoted ``.env`` value, ``$(cat key.txt)``), a line
break, a control character or a non-ASCII character cannot go in a header: h11 refuses it
before the request leaves (``LocalProtocolError("Illegal header value b'Bearer <key>'")``),
the SDKs retry that as a connection error, and the run looked like an outage (rows
``pending`` after ``provider_patience``, the command line silent for ten minutes) while
httpcore logged the whole key at DEBUG. These tests go through the official SDKs against
the emulator and check that the error is a :class:`CredentialsError` naming the variable
and the fix, that nothing was sent or billed, and that no part of the key reached the
message, the warnings, any log record at DEBUG or the state folder.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import polars as pl
import pytest
from test_secrets import _chain_text

from batchata_df import CredentialsError, batch_llm
from batchata_df.redact import REDACTED

# provider -> (model, key variable)
PROVIDERS = {
    "openai": ("gpt-4.1-mini", "OPENAI_API_KEY"),
    "anthropic": ("claude-haiku-4-5", "ANTHROPIC_API_KEY"),
    "gemini": ("gemini-2.5-flash", "GEMINI_API_KEY"),
}
# The two halves of every bad key: neither may appear anywhere.
HEAD, TAIL = "gwkey_Secret01234", "56789abcXYZ"
SURROUNDED = {
    "leading space": f" {HEAD}{TAIL}",
    "trailing space": f"{HEAD}{TAIL} ",
    "trailing newline": f"{HEAD}{TAIL}\n",
    "trailing CRLF": f"{HEAD}{TAIL}\r\n",
    "leading tab": f"\t{HEAD}{TAIL}",
    "non-breaking space": f"{HEAD}{TAIL}\u00a0",
}
INSIDE = {
    "inner newline": f"{HEAD}\n{TAIL}",
    "control character": f"{HEAD}\x01{TAIL}",
    "DEL": f"{HEAD}\x7f{TAIL}",
    "typographic quote": f"\u201c{HEAD}{TAIL}\u201d",
    "non-ASCII letter": f"{HEAD}\u00e9{TAIL}",
}
# google-genai strips the key itself (google/genai/_api_client.py:
# ``self.api_key = self.api_key.strip()``), so only inner characters are refused for Gemini.
CASES = [
    *((p, case) for p in ("openai", "anthropic") for case in {**SURROUNDED, **INSIDE}),
    *(("gemini", case) for case in INSIDE),
]


def _assert_no_key(state: Path, *texts: str) -> None:
    for text in texts:
        assert HEAD not in text and TAIL not in text
    if state.exists():
        for path in state.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert HEAD.encode() not in data and TAIL.encode() not in data, path


@pytest.mark.parametrize(("provider", "case"), CASES)
@pytest.mark.parametrize("mode", ["batch", "realtime"])
def test_a_key_no_header_can_carry_is_refused_before_anything_is_sent(
    provider, case, mode, emu, monkeypatch, tmp_path, capsys, caplog
):
    model, var = PROVIDERS[provider]
    monkeypatch.setenv(var, {**SURROUNDED, **INSIDE}[case])
    caplog.set_level(logging.DEBUG)  # the root: every logger, httpcore's and the SDKs'
    state = tmp_path / "s"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CredentialsError) as info:
            pl.DataFrame({"t": ["a", "b"]}).pipe(
                batch_llm, model=model, prompt="{t}", state=state, mode=mode,
                provider_patience=3,
            )  # fmt: skip
    message = str(info.value)
    assert message.startswith(f"{var} ") and "nothing was sent" in message
    if case in SURROUNDED:
        assert f"remove the leading/trailing whitespace from {var}" in message
    else:
        assert f"set {var} to the key" in message
    assert emu.log() == []  # not one request: the key was refused before the first
    assert emu.billing() == []
    captured = capsys.readouterr()
    _assert_no_key(state, _chain_text(info.value), *(str(w.message) for w in caught),
                   caplog.text, captured.out, captured.err)  # fmt: skip


def test_gemini_sends_a_key_with_surrounding_whitespace_stripped_as_its_sdk_does(
    emu, monkeypatch, tmp_path, caplog
):
    """google-genai strips the key, so it works; an echo of what was sent is scrubbed."""
    monkeypatch.setenv("GEMINI_API_KEY", f" {HEAD}{TAIL}\n")
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "s"
    emu.inject_fault(method="GET", path_regex=r"/batches/[^/:?]+$", status=400, echo_key=True)
    out = pl.DataFrame({"t": ["a", "b"]}).pipe(
        batch_llm, model="gemini-2.5-flash", prompt="{t}", state=state
    )
    assert out["_status"].to_list() == ["failed", "failed"]  # sent, answered, refused
    assert out["_error"].str.contains(REDACTED, literal=True).all(), out["_error"][0]
    assert any(e.get("fault") for e in emu.log())
    _assert_no_key(state, repr(out.to_dicts()), caplog.text)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_a_key_given_in_code_is_checked_too(provider):
    from batchata_df.providers.anthropic import AnthropicProvider
    from batchata_df.providers.gemini import GeminiProvider
    from batchata_df.providers.openai import OpenAIProvider

    cls = {"openai": OpenAIProvider, "anthropic": AnthropicProvider,
           "gemini": GeminiProvider}[provider]  # fmt: skip
    with pytest.raises(CredentialsError) as info:
        cls(api_key=f"{HEAD}\n{TAIL}", base_url="http://127.0.0.1:9")
    assert str(info.value).startswith(f"the api_key given to {cls.__name__} has a line break")
    _assert_no_key(Path("/nonexistent"), _chain_text(info.value))


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_only_whitespace_is_no_key(provider, emu, monkeypatch):
    model, var = PROVIDERS[provider]
    monkeypatch.setenv(var, " \n")
    with pytest.raises(CredentialsError, match=f"{var} holds only whitespace"):
        pl.DataFrame({"t": ["a"]}).pipe(batch_llm, model=model, prompt="{t}")
    assert emu.log() == []


def test_the_command_fails_at_once_with_the_fix(emu, tmp_path):
    """The reviewer's run: a trailing space in OPENAI_API_KEY. Before, the command printed
    nothing until provider_patience (10 minutes) ran out, then left the rows pending."""
    pl.DataFrame({"text": ["a", "b"]}).write_parquet(tmp_path / "in.parquet")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OPENAI_API_KEY"] = f"{HEAD}{TAIL} "
    exe = Path(sys.executable).with_name("batchata-df")
    r = subprocess.run(
        [str(exe), "run", "in.parquet", "out.parquet", "--model", "gpt-4.1-mini",
         "--prompt", "{text}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)  # a usage error, as no key
    first = r.stderr.splitlines()[0]
    assert first.startswith("batchata-df: error: OPENAI_API_KEY ends with a space")
    assert "remove the leading/trailing whitespace from OPENAI_API_KEY" in first
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out.parquet").exists()
    assert emu.log() == [] and emu.billing() == []
    _assert_no_key(tmp_path, r.stdout, r.stderr)


# -- a key that reaches a log record by another path: the SDKs' and httpcore's DEBUG -------

# provider -> a header-legal key the emulator rejects (401/400: the key is wrong, not malformed)
REJECTED = {"openai": "sk-invalid-Legal0123456789", "anthropic": "sk-invalid-Legal0123456789",
            "gemini": "invalid-Legal0123456789"}  # fmt: skip


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_a_wrong_but_sendable_key_reaches_no_log_record(provider, emu, monkeypatch, caplog):
    model, var = PROVIDERS[provider]
    monkeypatch.setenv(var, REJECTED[provider])
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CredentialsError, match=var):
        pl.DataFrame({"t": ["a"]}).pipe(batch_llm, model=model, prompt="{t}")
    assert "receive_response_headers" in caplog.text  # httpcore did log the exchange...
    assert "Legal0123456789" not in caplog.text  # ...without the key
    assert emu.billing() == []


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_a_key_echoed_in_a_response_header_reaches_no_log_record(
    provider, emu, monkeypatch, tmp_path, caplog
):
    """A gateway that repeats the credential in a response header: httpcore logs every
    response's headers at DEBUG (and Anthropic's SDK its ``HTTP Response`` line), before
    any code of ours sees them. The filter on those loggers scrubs the record itself."""
    model, var = PROVIDERS[provider]
    key = f"{HEAD}{TAIL}"
    monkeypatch.setenv(var, key)
    caplog.set_level(logging.DEBUG)
    emu.inject_fault(method="GET", path_regex=r"/batches/[^/:?]+$", status=400,
                     headers={"x-gateway-credential": key})  # fmt: skip
    state = tmp_path / "s"
    out = pl.DataFrame({"t": ["a"]}).pipe(batch_llm, model=model, prompt="{t}", state=state)
    assert out["_status"].to_list() == ["failed"]
    assert any(e.get("fault") for e in emu.log())
    assert f"(b'x-gateway-credential', b'{REDACTED}')" in caplog.text  # the record was there
    _assert_no_key(state, caplog.text, repr(out.to_dicts()))
