"""Answers that are not UTF-8 outside result files: realtime answers, Gemini's inline results.

``tests/test_not_utf8_results.py`` covers result *files*. Three gaps it left:

* A realtime answer with bytes that are not UTF-8 (the emulator's fault ``corrupt`` on
  the realtime endpoints: the bytes go into the answer's first text, a streamed
  answer's first ``text_delta`` included). Anthropic's SDK decodes each event line as
  strict UTF-8, so the row failed ``client_error: UnicodeDecodeError`` at $0 though the
  request was billed, and ``retry_failed`` paid for it again unseen; OpenAI's and
  Gemini's SDKs read the body with U+FFFD, so the row *completed* with damaged text.
  Now the row fails ``not_utf8: ...`` with the cost its usage says (it was billed), and
  ``retry_failed=True`` sends it again as a counted spend under ``max_cost_usd``.
* Gemini's inline batch results (the batch resource itself) read with U+FFFD and
  completed. Now they are read again at the next poll, as a result file is downloaded
  again, and the same bytes twice fail only the damaged entries' rows.
* The memory of a damaged download lasted one process: with ``wait=False`` and a process
  per call, a file that always comes damaged left its rows pending forever. The state
  folder now records it (a batch event, ``results_not_utf8 <digest>: <download>``).

And the ``ProviderUnavailableWarning`` for rows left pending because their results were
unusable says so, not that the provider (which answered) was unreachable.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel
from test_not_utf8_results import _ended

from batchata_df import ProviderUnavailableWarning, ResultFileError, batch_llm
from batchata_df.emulator.server import NOT_UTF8
from batchata_df.providers import gemini, make_provider
from batchata_df.providers.base import RequestSpec
from batchata_df.providers.openai import OpenAIProvider
from batchata_df.schema import AnswerSchema
from batchata_df.state import StateStore

MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5",
          "gemini": "gemini-2.5-flash"}
ANSWERS = {"openai": r"/chat/completions$", "anthropic": r"/v1/messages$",
           "gemini": r":generateContent$"}
DOWNLOADS = {"openai": r"/openai/v1/files/[^/]+/content",
             "anthropic": r"/messages/batches/[^/]+/results"}
BATCH_GET = r"/gemini/v1beta/batches/[^/:]+$"
PROVIDERS = ["openai", "anthropic", "gemini"]


class _A(BaseModel):
    label: str


def _store(state: Path) -> StateStore:
    """A reader of ``state`` (its manifest's fingerprint, as ``batchata_df.sql`` reads it)."""
    manifest = json.loads((state / "manifest.json").read_text())
    return StateStore(state, manifest["fingerprint"], readonly=True)


def _line(p: Any, provider: str, spec: RequestSpec, prompt: str = "a review") -> str:
    jobs = pl.DataFrame({"job_id": ["j0"], "model": [MODELS[provider]],
                         "prompt": [prompt], "system": [None]})
    return str(p.encode(jobs, spec)[0])


# -- the emulator's fault on the realtime endpoints ------------------------------------------


def _raw_answer(p: Any, provider: str) -> bytes:
    """One realtime answer's bytes as they came, read through the SDK."""
    model = MODELS[provider]
    if provider == "openai":
        raw = p.client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "a review"}])
        return bytes(raw.http_response.content)
    if provider == "anthropic":
        with p.client.messages.with_streaming_response.create(
            model=model, max_tokens=200, stream=True,
            messages=[{"role": "user", "content": "a review"}],
        ) as r:
            return bytes(r.read())
    with gemini._raw_bodies() as kept:  # the provider's hook on the SDK's HTTP client
        p.client.models.generate_content(model=model, contents="a review")
    assert kept.body is not None
    return kept.body


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_corrupt_fault_damages_a_realtime_answers_first_text(emu, provider: str) -> None:
    p = make_provider(provider)
    whole = _raw_answer(p, provider)
    emu.inject_fault(method="POST", path_regex=ANSWERS[provider], action="corrupt")
    damaged = _raw_answer(p, provider)
    assert emu.faults() == []  # used once
    assert NOT_UTF8 not in whole and damaged.count(NOT_UTF8) == 1
    at = damaged.index(NOT_UTF8)
    # Inside the first non-empty answer text, right after its opening quote; the answer
    # the same length as an undamaged one plus the two bytes.
    assert re.search(rb'"(?:text|content)"\s*:\s*"$', damaged[:at]), damaged[at - 40 : at]
    assert damaged[at + 2 :].startswith(b"Emulated answer about 'a review'")
    assert len(damaged) == len(whole) + len(NOT_UTF8)
    if provider == "anthropic":  # a whole text_delta event, the events before it intact
        event = damaged[damaged.rindex(b"\n\n", 0, at) + 2 : damaged.index(b"\n\n", at)]
        head, data = event.split(b"\n")
        assert head == b"event: content_block_delta"
        parsed = json.loads(data.removeprefix(b"data: ").decode("utf-8", "replace"))
        assert parsed["delta"]["type"] == "text_delta"
        assert parsed["delta"]["text"].startswith("\ufffd\ufffdEmulated answer")
    else:  # complete JSON still
        parsed = json.loads(damaged.decode("utf-8", "replace"))
        assert "\ufffd\ufffdEmulated answer" in json.dumps(parsed, ensure_ascii=False)
    p.close()


# -- the provider layer: a realtime answer ---------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("schema", [_A, None], ids=["schema", "text"])
def test_a_realtime_answer_not_utf8_is_a_failed_row_with_its_usage(
    emu, provider: str, schema: Any
) -> None:
    p = make_provider(provider)
    spec = RequestSpec(AnswerSchema(schema), {})
    line = _line(p, provider, spec)
    whole = p.answer(line, model=MODELS[provider], spec=spec)
    assert isinstance(whole, pl.DataFrame) and whole["outcome"].to_list() == ["succeeded"]
    emu.inject_fault(method="POST", path_regex=ANSWERS[provider], action="corrupt")
    got = p.answer(line, model=MODELS[provider], spec=spec)
    assert isinstance(got, pl.DataFrame), got  # a result row, never lost nor an exception
    assert got["outcome"].to_list() == ["errored"]
    error = got["error"][0]
    name = {"openai": "OpenAI", "anthropic": "Anthropic", "gemini": "Gemini"}[provider]
    assert re.match(rf"not_utf8: {name}'s answer to this request is not UTF-8 \(byte \d+\); "
                    r"it ran and was billed", error), error
    assert error.endswith("retry_failed=True sends the request again, paid again within "
                          "max_cost_usd")
    # What it was billed: the usage the answer reports, the same as the whole answer's.
    usage = ["input_tokens", "output_tokens"]
    assert got.select(usage).rows() == whole.select(usage).rows()
    assert got["output_tokens"][0] > 0
    assert got["text"][0] == "\ufffd\ufffd" + whole["text"][0]  # its damaged bytes as U+FFFD
    assert len(emu.billing()) == 2
    p.close()


# -- through batch_llm: realtime ----------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_realtime_run_fails_the_damaged_answer_with_its_cost_and_a_retry_pays_once_more(
    emu, tmp_path, provider: str
) -> None:
    df = pl.DataFrame({"t": ["review 0", "review 1", "review 2"]})
    kwargs: dict[str, Any] = {"schema": _A, "model": MODELS[provider], "prompt": "{t}",
                              "mode": "realtime", "keep_raw": True}
    clean = df.pipe(batch_llm, state=tmp_path / "clean", **kwargs)
    assert clean["_status"].to_list() == ["completed"] * 3
    emu.reset()
    emu.inject_fault(method="POST", path_regex=ANSWERS[provider], action="corrupt")
    out = df.pipe(batch_llm, state=tmp_path / "s", **kwargs)
    failed = out.filter(pl.col("_status") == "failed")
    assert failed.height == 1 and out.height == 3, out["_error"].to_list()
    assert failed["_error"][0].startswith("not_utf8: "), failed["_error"][0]
    assert failed["_raw"][0].startswith("\ufffd\ufffd")  # kept: it was paid for
    # Billed, so its cost is the row's: the same as the undamaged answer's.
    row = int(out.with_row_index().filter(pl.col("_status") == "failed")["index"][0])
    assert failed["_cost_usd"][0] == pytest.approx(clean["_cost_usd"][row]) and (
        failed["_cost_usd"][0] > 0)
    assert failed["_output_tokens"][0] == clean["_output_tokens"][row]
    assert len(emu.billing()) == 3
    # retry_failed sends it again on purpose: one more bill, both counted on the row.
    again = df.pipe(batch_llm, state=tmp_path / "s", retry_failed=True, **kwargs)
    assert again["_status"].to_list() == ["completed"] * 3
    billed = Counter(b["request"] for b in emu.billing())
    assert sorted(billed.values()) == [1, 1, 2]
    assert again["_cost_usd"][row] == pytest.approx(2 * clean["_cost_usd"][row])
    assert again["_cost_usd"].sum() == pytest.approx(clean["_cost_usd"].sum()
                                                     + clean["_cost_usd"][row])


def test_the_cost_of_a_damaged_realtime_answer_counts_against_the_cap(emu, tmp_path) -> None:
    # The cap sees what was billed: the damaged answer's cost is spent, so a retry whose
    # worst case no longer fits is not sent (and nothing is billed for it).
    df = pl.DataFrame({"t": ["review 0", "review 1"]})
    kwargs: dict[str, Any] = {"schema": None, "model": MODELS["anthropic"], "prompt": "{t}",
                              "mode": "realtime", "state": tmp_path / "s",
                              "params": {"max_tokens": 64}}
    emu.inject_fault(method="POST", path_regex=ANSWERS["anthropic"], action="corrupt")
    out = df.pipe(batch_llm, max_cost_usd=1.0, **kwargs)
    assert sorted(out["_status"].to_list()) == ["completed", "failed"]
    spent = float(out["_cost_usd"].sum())
    damaged = float(out.filter(pl.col("_status") == "failed")["_cost_usd"][0])
    assert damaged > 0
    # The retry's worst case: the one held for the same request when it was first sent.
    events = _store(tmp_path / "s").job_events()
    job = out.filter(pl.col("_status") == "failed")["_job_id"][0]
    worst = float(events.filter((pl.col("job_id") == job) & (pl.col("status") == "assigned"))
                  ["est_cost_usd"][0])
    assert worst > damaged
    # Room for the worst case had the damaged answer cost $0 (as it was counted before),
    # but not with its cost counted.
    cap = spent - damaged / 2 + worst
    again = df.pipe(batch_llm, retry_failed=True, max_cost_usd=cap, **kwargs)
    assert len(emu.billing()) == 2  # not sent again: it does not fit
    assert "completed" in again["_status"].to_list()
    assert again.filter(pl.col("_status") != "completed")["_error"][0].startswith(
        ("cancelled: cost_limit", "not_utf8: ")), again["_error"].to_list()
    assert float(again["_cost_usd"].sum()) == pytest.approx(spent)


# -- Gemini's inline results -----------------------------------------------------------------


def test_gemini_inline_results_not_utf8_are_read_again_then_fail_only_their_row(emu) -> None:
    p = make_provider("gemini")
    spec = RequestSpec(AnswerSchema(None), {})
    bid = _ended(p, "gemini", 3)
    assert p.client.batches.get(name=bid).dest.inlined_responses  # inline, not a file
    # Every read of the batch resource damaged (results reads it twice: counts, results).
    emu.inject_fault(method="GET", path_regex=BATCH_GET, action="corrupt", times=None)
    with pytest.raises(ResultFileError) as caught:
        p.results(bid, spec)
    error = caught.value
    assert not error.permanent
    assert re.search(rf"Gemini's batch {bid} \(its inline results\) is not UTF-8 "
                     r"\(byte \d+, line 1\): damaged on its way", str(error)), str(error)
    assert error.damaged is not None and error.damaged[0].startswith("Gemini's batch ")
    again = p.results(bid, spec)  # the same bytes again: the provider's
    assert again.height == 3
    bad = again.filter(pl.col("outcome") == "errored")
    assert bad["job_id"].to_list() == ["j0"]  # the first answer holds the bytes
    assert bad["error"][0].startswith("not_utf8: the provider's inline result for this "
                                      "request is not UTF-8 (served so twice in Gemini's "
                                      f"batch {bid} (its inline results))")
    assert bad["text"][0].startswith("\ufffd\ufffd") and bad["output_tokens"][0] > 0
    good = again.filter(pl.col("outcome") != "errored")
    assert set(good["outcome"]) == {"succeeded"} and good["error"].is_null().all()
    assert not good["text"].str.contains("\ufffd").any()
    # Read whole in between: a damage after it is taken as new (read again).
    emu.clear_faults()
    assert set(p.results(bid, spec)["outcome"]) == {"succeeded"}
    emu.inject_fault(method="GET", path_regex=BATCH_GET, action="corrupt", times=None)
    with pytest.raises(ResultFileError):
        p.results(bid, spec)
    p.close()


def test_a_gemini_inline_batch_served_not_utf8_fails_only_the_damaged_row(
    emu, tmp_path
) -> None:
    df = pl.DataFrame({"t": ["review 0", "review 1", "review 2"]})
    kwargs: dict[str, Any] = {"schema": _A, "model": MODELS["gemini"], "prompt": "{t}",
                              "state": tmp_path / "s", "keep_raw": True,
                              "provider_patience": 20.0}
    emu.inject_fault(method="GET", path_regex=BATCH_GET, action="corrupt", times=None)
    out = df.pipe(batch_llm, **kwargs)
    failed = out.filter(pl.col("_status") == "failed")
    assert failed.height == 1 and out.height == 3, out["_error"].to_list()
    assert failed["_error"][0].startswith("not_utf8: the provider's inline result")
    assert failed["_raw"][0].startswith("\ufffd\ufffd")
    assert failed["_output_tokens"][0] > 0 and failed["_cost_usd"][0] > 0
    done = out.filter(pl.col("_status") == "completed")
    assert done.height == 2 and not done["_raw"].str.contains("\ufffd").any()
    billed = [b["custom_id"] for b in emu.billing()]
    assert len(billed) == 3 and len(set(billed)) == 3
    emu.clear_faults()
    again = df.pipe(batch_llm, retry_failed=True, **kwargs)
    assert again["_status"].to_list() == ["completed"] * 3
    assert sorted(Counter(b["request"] for b in emu.billing()).values()) == [1, 1, 2]


# -- the warning for results that could not be used ----------------------------------------------


def test_the_warning_says_the_results_could_not_be_used_not_that_the_provider_was_unreachable(
    emu, tmp_path
) -> None:
    df = pl.DataFrame({"t": ["review 0", "review 1", "review 2"]})
    emu.inject_fault(method="GET", path_regex=DOWNLOADS["openai"], action="cut_clean",
                     times=None)
    with pytest.warns(ProviderUnavailableWarning) as caught:
        out = df.pipe(batch_llm, schema=_A, model=MODELS["openai"], prompt="{t}",
                      state=tmp_path / "s", provider_patience=0.5)
    assert out["_status"].to_list() == ["pending"] * 3
    assert out["_error"].str.starts_with("provider_unavailable: results_unusable: ").all()
    message = str(caught[0].message)
    assert message.startswith(
        "3 rows could not be sent or collected because their batch's results were "
        "downloaded but could not be used (cut short or not UTF-8; the provider answered) "
        "(3 pending"), message
    assert "unreachable" not in message
    assert "could not be decoded" in message  # the last error: what was wrong with them


def test_the_warning_still_says_unreachable_when_the_provider_was(
    emu, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One SDK retry per download, not five: each failed download otherwise waited ~15 s
    # of the SDK's backoff (the 503s are the point, not how long the SDK waits on them).
    monkeypatch.setattr(OpenAIProvider, "sdk_max_retries", 1)
    df = pl.DataFrame({"t": ["review 0", "review 1"]})
    emu.inject_fault(method="GET", path_regex=DOWNLOADS["openai"], status=503, times=None)
    with pytest.warns(ProviderUnavailableWarning) as caught:
        df.pipe(batch_llm, schema=_A, model=MODELS["openai"], prompt="{t}",
                state=tmp_path / "s", provider_patience=0.5)
    message = str(caught[0].message)
    assert message.startswith("2 rows could not be sent or collected because the provider "
                              "was unreachable (2 pending"), message
    assert "results_unusable" not in message


# -- a process per call (wait=False) -----------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, sys
    import polars as pl
    from batchata_df import batch_llm

    provider, model, state = sys.argv[1:4]
    out = pl.DataFrame({"t": [f"review {i}" for i in range(3)]}).pipe(
        batch_llm, schema=None, model=model, prompt="{t}", state=state, wait=False,
    )
    print(json.dumps(out.select("_status", "_error", "_cost_usd").to_dicts()))
    """
)


def _call(emu: Any, script: Path, provider: str, state: Path) -> list[dict[str, Any]]:
    env = {**os.environ, **emu.env()}
    done = subprocess.run([sys.executable, str(script), provider, MODELS[provider], str(state)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return rows


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_download_always_damaged_fails_its_row_in_a_later_process_not_pending_forever(
    emu, tmp_path, provider: str
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    state = tmp_path / "s"
    where = BATCH_GET if provider == "gemini" else DOWNLOADS[provider]  # inline / a file
    emu.inject_fault(method="GET", path_regex=where, action="corrupt", times=None)
    first = _call(emu, script, provider, state)  # submits, then finds the results damaged
    assert [r["_status"] for r in first] == ["pending"] * 3, first
    assert all(r["_error"].startswith("provider_unavailable: results_unusable: ")
               and "is not UTF-8" in r["_error"] for r in first), first
    recorded = _store(state).damaged_downloads()
    assert len(recorded) == 1 and len(recorded[0][1]) == 16, recorded
    second = _call(emu, script, provider, state)  # a new process, the same bytes again
    statuses = Counter(r["_status"] for r in second)
    assert statuses == {"completed": 2, "failed": 1}, second
    failed = next(r for r in second if r["_status"] == "failed")
    assert failed["_error"].startswith("not_utf8: ") and failed["_cost_usd"] > 0
    billed = [b["custom_id"] for b in emu.billing()]
    assert len(billed) == 3 and len(set(billed)) == 3  # nothing paid again


def test_every_byte_that_is_not_utf8_alone_counts_as_damage_in_an_inline_entry() -> None:
    """``surrogateescape`` reads each such byte 0x80-0xFF as U+DC80-U+DCFF: all are damage."""
    from batchata_df.providers.gemini import _ESCAPED

    for byte in range(0x80, 0x100):
        text = (b'{"t":"a' + bytes([byte]) + b'z"}').decode("utf-8", "surrogateescape")
        assert _ESCAPED.search(text), hex(byte)
    assert not _ESCAPED.search('{"t":"caf\u00e9 \ufffd \U0001f600"}')  # UTF-8 text is not
