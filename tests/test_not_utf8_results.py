"""Result files whose lines are complete JSON but not UTF-8: downloaded again, never a panic.

pyarrow's JSON reader does not check that string values are UTF-8: a result line with
bytes that are not UTF-8 inside its answer (complete JSON otherwise) came out as a Polars
``String`` column holding them, and Polars panicked later (``PanicException: PyObject
pointer is null`` from the answers' validation), on every provider, with or without a
schema. The emulator's fault action ``corrupt`` serves such a file: the whole answer, with
two bytes that are never UTF-8 inside its first line's answer text.

Providers send UTF-8, so a download that is not is taken as damaged on its way: a
transient ``ResultFileError``, downloaded again at the next poll (nothing sent or paid
again). When the same bytes come again (the provider serves its file so), the lines that
are UTF-8 are used and each line that is not fails its row as data (``not_utf8: ...``),
its text kept as the raw answer, its tokens counted. While the engine downloads again, the
progress says so, not that the provider is "unreachable" (it answered).
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import ResultFileError, batch_llm
from batchata_df.emulator.server import NOT_UTF8
from batchata_df.engine import ProgressSnapshot
from batchata_df.providers import make_provider
from batchata_df.providers.base import (
    BatchTag,
    ProviderState,
    RequestSpec,
    decoded_results,
    first_not_utf8,
    read_jsonl,
)
from batchata_df.providers.gemini import GeminiProvider
from batchata_df.schema import AnswerSchema

MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5",
          "gemini": "gemini-2.5-flash"}
DOWNLOADS = {"openai": r"/openai/v1/files/[^/]+/content",
             "anthropic": r"/messages/batches/[^/]+/results",
             "gemini": r"(:download|/download/)"}
PROVIDERS = ["openai", "anthropic", "gemini"]


@pytest.fixture(autouse=True)
def _gemini_through_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    # Gemini returns a small batch's results inline; every batch here has a result file.
    monkeypatch.setattr(GeminiProvider, "inline_max_bytes", 10)


class _A(BaseModel):
    label: str


def _ended(p: Any, provider: str, n: int) -> str:
    model = MODELS[provider]
    spec = RequestSpec(AnswerSchema(None), {})
    jobs = pl.DataFrame({"job_id": [f"j{i}" for i in range(n)], "model": [model] * n,
                         "prompt": [f"prompt {i}" for i in range(n)], "system": [None] * n})
    bid: str = p.submit(p.encode(jobs, spec), model=model,
                        tag=BatchTag("run", "k", time.time(), n_jobs=n, members=jobs["job_id"]))
    while p.poll(bid).state is ProviderState.RUNNING:
        time.sleep(0.05)
    return bid


def _body(p: Any, provider: str, bid: str) -> bytes:
    """The batch's results download, read apart through the SDK (one file here)."""
    if provider == "anthropic":
        with p.client.messages.batches.with_streaming_response.results(bid) as r:
            return bytes(r.read())
    if provider == "gemini":
        return bytes(p.client.files.download(file=p.client.batches.get(name=bid).dest.file_name))
    b = p.client.batches.retrieve(bid)
    assert b.error_file_id is None  # every request succeeded: one file
    return bytes(p.client.files.content(b.output_file_id).read())


def _answer(provider: str, line: dict[str, Any]) -> str:
    if provider == "openai":
        return str(line["response"]["body"]["choices"][0]["message"]["content"])
    if provider == "anthropic":
        return str(line["result"]["message"]["content"][0]["text"])
    return str(line["response"]["candidates"][0]["content"]["parts"][0]["text"])


def _downloads(emu: Any, provider: str) -> list[dict[str, Any]]:
    return [e for e in emu.log() if re.search(DOWNLOADS[provider], e["path"])]


def _billed_once(emu: Any, n: int) -> None:
    billed = [b["custom_id"] for b in emu.billing()]
    assert len(billed) == n and len(set(billed)) == n  # each request paid once


# -- the emulator's fault -----------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_corrupt_fault_puts_bytes_that_are_not_utf8_into_the_first_answer(
    emu, provider: str
) -> None:
    p = make_provider(provider)
    bid = _ended(p, provider, 3)
    whole = _body(p, provider, bid)
    emu.inject_fault(method="GET", path_regex=DOWNLOADS[provider], action="corrupt")
    damaged = _body(p, provider, bid)
    assert emu.faults() == []  # used once
    assert len(damaged) == len(whole) + len(NOT_UTF8)
    assert damaged.replace(NOT_UTF8, b"", 1) == whole
    first, *rest = damaged.splitlines()
    assert NOT_UTF8 in first and NOT_UTF8 not in b"".join(rest)
    with pytest.raises(UnicodeDecodeError):
        first.decode("utf-8")
    # Complete JSON lines still: the bytes sit at the start of the first answer's text.
    clean = [json.loads(line) for line in whole.splitlines()]
    read = [json.loads(line.decode("utf-8", "replace")) for line in damaged.splitlines()]
    assert _answer(provider, read[0]) == "\ufffd\ufffd" + _answer(provider, clean[0])
    assert read[1:] == clean[1:]
    p.close()


# -- the provider layer -------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_download_not_utf8_is_a_transient_error_then_the_same_bytes_fail_only_its_row(
    emu, provider: str
) -> None:
    p = make_provider(provider)
    spec = RequestSpec(AnswerSchema(None), {})
    bid = _ended(p, provider, 4)
    first = json.loads(_body(p, provider, bid).splitlines()[0])
    damaged_id = first.get("custom_id", first.get("key"))
    emu.inject_fault(method="GET", path_regex=DOWNLOADS[provider], action="corrupt", times=3)
    with pytest.raises(ResultFileError) as caught:
        p.results(bid, spec)
    error = caught.value
    assert not error.permanent  # the engine downloads it again at its next poll
    assert re.search(r"is not UTF-8 \(byte \d+, line 1\): damaged on its way", str(error))
    assert bid in str(error) and "downloaded again at the next poll" in str(error)
    # The same bytes again: the provider's own file. Only the damaged line's row fails.
    again = p.results(bid, spec)
    assert again.height == 4
    bad = again.filter(pl.col("job_id") == damaged_id)
    assert bad["outcome"].to_list() == ["errored"]
    assert bad["error"][0].startswith("not_utf8: the provider's result line for this "
                                      "request is not UTF-8 (served so twice in ")
    assert bid in bad["error"][0]
    assert bad["text"][0].startswith("\ufffd\ufffd") and bad["output_tokens"][0] > 0
    good = again.filter(pl.col("job_id") != damaged_id)
    assert set(good["outcome"]) == {"succeeded"} and good["error"].is_null().all()
    assert not good["text"].str.contains("\ufffd").any()
    # A whole download between two damaged ones: the next damage is taken as new.
    emu.clear_faults()
    assert set(p.results(bid, spec)["outcome"]) == {"succeeded"}
    emu.inject_fault(method="GET", path_regex=DOWNLOADS[provider], action="corrupt")
    with pytest.raises(ResultFileError, match="damaged on its way"):
        p.results(bid, spec)
    p.close()


def test_damage_that_differs_each_time_is_downloaded_again_each_time() -> None:
    # Damage on the way is not the same twice: only the same bytes twice fail rows.
    schema = pl.Schema({"id": pl.String, "text": pl.String})

    def decode(data: Any) -> pl.DataFrame:
        return read_jsonl(data, schema).with_columns(
            outcome=pl.lit("succeeded"), error=pl.lit(None, pl.String))

    lines = [b'{"id":"a","text":"one"}', b'{"id":"b","text":"two"}']
    one = bytearray(b"\n".join([lines[0].replace(b"one", b"o\xffne"), lines[1]]))
    two = bytearray(b"\n".join([lines[0], lines[1].replace(b"two", b"t\xc3wo")]))
    name = "the file of test_damage_that_differs"
    for data, where in ((one, "byte 19, line 1"), (two, "byte 43, line 2"), (one, "line 1")):
        with pytest.raises(ResultFileError, match=re.escape(where)):
            decoded_results(data, decode, failed=name)
    out = decoded_results(bytearray(one), decode, failed=name)  # the same bytes again
    assert out.select("id", "outcome").rows() == [("a", "errored"), ("b", "succeeded")]
    assert out["text"].to_list() == ["o\ufffdne", "two"]
    one.extend(b"\n")  # no view of the download outlives the checks (DownloadBuffer reuses it)


@pytest.mark.parametrize(
    "data",
    [b"", b'{"a":"plain"}', "caf\u00e9 \u65e5\u672c \U0001f600".encode(), b"\xff",
     b"ok \xc3", b"ok \xc3\x28 x", b"\xed\xa0\x80 surrogate", b"\xc0\xaf overlong",
     b"\xf4\x90\x80\x80 past U+10FFFF", "\u00e9".encode() * 5000 + b"\x80" + b"a" * 10],
)
def test_first_not_utf8_agrees_with_python(data: bytes) -> None:
    try:
        data.decode("utf-8")
        expected = None
    except UnicodeDecodeError as e:
        expected = e.start
    assert first_not_utf8(data) == expected
    assert first_not_utf8(bytearray(data)) == expected


# -- through batch_llm --------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("schema", [_A, None], ids=["schema", "text"])
def test_a_run_whose_download_is_damaged_once_completes_every_row(
    emu, tmp_path, provider: str, schema: Any
) -> None:
    # The repro: a PanicException out of batch_llm. Now the file is downloaded again at
    # the next poll and every row completes, each request paid once.
    df = pl.DataFrame({"t": [f"review {i}" for i in range(4)]})
    emu.inject_fault(method="GET", path_regex=DOWNLOADS[provider], action="corrupt")
    seen: list[ProgressSnapshot] = []
    out = df.pipe(batch_llm, schema=schema, model=MODELS[provider], prompt="{t}",
                  state=tmp_path / "s", keep_raw=True, progress=seen.append)
    assert emu.faults() == []
    assert out["_status"].to_list() == ["completed"] * 4, out["_error"].to_list()
    assert not out["_raw"].str.contains("\ufffd").any()
    if schema is not None:
        assert out["label"].is_not_null().all()
    assert len(_downloads(emu, provider)) == 2
    _billed_once(emu, 4)
    # What the display said meanwhile: the results are downloaded again, never that the
    # provider (which answered) is unreachable.
    activities = [s.activity for s in seen if s.activity]
    again = [a for a in activities if "could not be used, downloading them again" in a]
    assert again and "is not UTF-8 (byte " in again[0], activities
    assert not any("unreachable" in a for a in activities)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("schema", [_A, None], ids=["schema", "text"])
def test_a_file_the_provider_serves_not_utf8_fails_only_its_row_as_data(
    emu, tmp_path, provider: str, schema: Any
) -> None:
    df = pl.DataFrame({"t": [f"review {i}" for i in range(4)]})
    # A patience short of the default 10 minutes: a file downloaded again and again would
    # leave the rows pending in seconds, not hang the test.
    kwargs: dict[str, Any] = {"schema": schema, "model": MODELS[provider], "prompt": "{t}",
                              "state": tmp_path / "s", "keep_raw": True,
                              "provider_patience": 20.0}
    emu.inject_fault(method="GET", path_regex=DOWNLOADS[provider], action="corrupt",
                     times=None)
    out = df.pipe(batch_llm, **kwargs)
    assert len(_downloads(emu, provider)) == 2  # downloaded again once, then the same
    failed = out.filter(pl.col("_status") == "failed")
    assert failed.height == 1 and out.height == 4, out["_error"].to_list()
    assert failed["_error"][0].startswith("not_utf8: the provider's result line for this "
                                          "request is not UTF-8")
    assert failed["_error"][0].endswith("retry_failed=True sends the request again")
    assert failed["_raw"][0].startswith("\ufffd\ufffd")  # kept: it was paid for
    assert failed["_output_tokens"][0] > 0 and failed["_cost_usd"][0] > 0
    done = out.filter(pl.col("_status") == "completed")
    assert done.height == 3 and done["_error"].is_null().all()
    assert not done["_raw"].str.contains("\ufffd").any()
    _billed_once(emu, 4)
    # The advice, followed: the failed row alone is sent again and completes.
    emu.clear_faults()
    again = df.pipe(batch_llm, retry_failed=True, **kwargs)
    assert again["_status"].to_list() == ["completed"] * 4
    billed = Counter(b["custom_id"] for b in emu.billing())
    assert sorted(billed.values()) == [1, 1, 1, 2]  # the damaged request once more


def test_a_damaged_line_that_was_also_truncated_says_it_is_damaged(emu, tmp_path) -> None:
    # Its text cannot be trusted, so "raise max_tokens" would be the wrong advice.
    df = pl.DataFrame({"t": [f"[[emulator:truncate]] review {i}" for i in range(2)]})
    emu.inject_fault(method="GET", path_regex=DOWNLOADS["openai"], action="corrupt",
                     times=None)
    out = df.pipe(batch_llm, schema=None, model="gpt-4.1-mini", prompt="{t}",
                  state=tmp_path / "s", provider_patience=20.0)
    assert out["_status"].to_list() == ["failed", "failed"]
    errors = sorted(out["_error"].to_list())
    assert errors[0].startswith("not_utf8: ") and errors[1].startswith("truncated: ")


# -- the live display in a real terminal --------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    import polars as pl
    from pydantic import BaseModel
    from batchata_df import batch_llm

    class A(BaseModel):
        n: int

    out = pl.DataFrame({"t": [str(i) for i in range(6)]}).pipe(
        batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}", progress=True,
        state=sys.argv[1],
    )
    print("CHILD-DONE", dict(out["_status"].value_counts().iter_rows()), flush=True)
    """
)


def test_the_terminal_says_the_results_are_downloaded_again(emu, tmp_path: Path) -> None:
    import os

    from test_displays import Terminal

    emu.inject_fault(method="GET", path_regex=DOWNLOADS["openai"], action="corrupt")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    term = Terminal([sys.executable, str(script), str(tmp_path / "state")], env)
    try:
        shown = term.wait_for(r"now\s+the results of batch_\w+ could not be used, downloading")
        screen = term.finish()
    finally:
        term.kill()
    assert re.search(r"downloading\s+them again \(for \d+s\): OpenAI's result file", shown)
    assert "is not UTF-8 (byte" in re.sub(r"\s+", " ", shown)
    assert "CHILD-DONE {'completed': 6}" in screen
    assert b"unreachable" not in term.raw  # in no frame drawn


def test_a_blank_line_in_a_file_served_not_utf8_twice_is_no_row() -> None:
    """The lines are matched to the decoded rows; a whitespace-only line is no result.

    Counted as a line, it would leave one line more than rows: the file could never be
    matched, and its rows would stay pending while the same bytes came back at every poll.
    """
    schema = pl.Schema({"id": pl.String, "text": pl.String})

    def decode(data: Any) -> pl.DataFrame:
        return read_jsonl(data, schema).with_columns(
            outcome=pl.lit("succeeded"), error=pl.lit(None, pl.String)
        )

    data = b'{"id":"a","text":"\xffhi"}\n   \n{"id":"b","text":"ok"}\n\t\n'
    with pytest.raises(ResultFileError):
        decoded_results(data, decode, failed="file blank-lines")
    out = decoded_results(data, decode, failed="file blank-lines")  # the same bytes again
    assert out.select("id", "text", "outcome").rows() == [
        ("a", "\ufffdhi", "errored"), ("b", "ok", "succeeded"),
    ]  # fmt: skip
    assert out["error"][0].startswith("not_utf8: ") and out["error"][1] is None
