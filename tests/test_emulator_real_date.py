"""On the real date (the ``today`` setting ``""``), the checks the emulator makes when a
request is created read the date of the emulator's clock, not the machine's.

The emulator's clock (``EmulatorCore.clock``) is what tests advance; routing, shutdowns
in flight and billing already read it (``EmulatorCore.routed_since``, ``gone_since``,
``days_since``). The checks made at a request's creation (which model a Gemini request
is routed to, whether a model is served) read the machine's date instead, so a test that
moved the clock past a midnight saw them stay on the day before (or after).

Each case is checked on both sides of a date's midnight by the emulator's clock: one of
the two fails for a creation check that reads the machine's date, whatever that date is.
Through the official SDKs, against an in-process emulator whose clock is set.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors

from batchata_df.emulator import env_for, model_rules
from batchata_df.emulator.server import EmulatorCore, EmulatorServer

PRO, PRO_NEW = "gemini-2.5-pro", "gemini-3.8-flash"  # routed from 2026-12-01
GONE_GEMINI = "gemini-3.1-flash-lite"  # shut down (not routed) on 2027-05-07
GONE_OPENAI = "gpt-5-nano"  # shut down on 2026-12-11
GONE_CLAUDE = "claude-opus-4-5"  # shut down on 2027-01-22
_SRC = [{"contents": [{"parts": [{"text": "hi"}], "role": "user"}], "metadata": {"key": "r0"}}]


def _at(moment: str) -> float:
    return dt.datetime.fromisoformat(moment).timestamp()


@pytest.fixture
def at(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], EmulatorCore]]:
    """``at("2026-12-01T00:30")``: an in-process emulator on the real date (``today``
    ``""``), its clock set to that UTC moment, the SDKs pointed at it. The process-wide
    settings ``configure`` mirrors (model_rules) are put back afterwards."""
    monkeypatch.setattr(model_rules, "_TODAY", list(model_rules._TODAY))
    monkeypatch.setattr(model_rules, "_SERVING_RETIRED", list(model_rules._SERVING_RETIRED))
    core = EmulatorCore()
    server = EmulatorServer(0, core).start_in_thread()
    for key, value in env_for(server.url).items():
        monkeypatch.setenv(key, value)
    for key in ("GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(key, raising=False)

    def set_clock(moment: str) -> EmulatorCore:
        core.configure({"today": ""})
        core.clock.offset = _at(moment + "+00:00") - time.time()
        return core

    try:
        yield set_clock
    finally:
        server.stop()
        core.close()


# -- Gemini: the model a request is routed to at its creation ------------------------------


@pytest.mark.parametrize(
    ("moment", "answering"),
    [("2026-11-30T23:30:00", PRO), ("2026-12-01T00:30:00", PRO_NEW)],
    ids=["before_midnight", "after_midnight"],
)
def test_a_gemini_batch_is_routed_at_its_creation_by_the_emulators_date(
    at, moment, answering
) -> None:
    core = at(moment)
    gem = genai.Client()
    job = gem.batches.create(model=PRO, src=_SRC)  # type: ignore[arg-type]
    assert job.model == f"models/{answering}"
    core.clock.advance(60)  # done 60 s later, the same day either way
    done = gem.batches.get(name=str(job.name))
    assert done.dest is not None and done.dest.inlined_responses
    assert [r.response.model_version for r in done.dest.inlined_responses
            if r.response is not None] == [answering]  # fmt: skip
    assert [b["model"] for b in core.billing()] == [answering]


@pytest.mark.parametrize(
    ("moment", "answering"),
    [("2026-11-30T23:30:00", PRO), ("2026-12-01T00:30:00", PRO_NEW)],
    ids=["before_midnight", "after_midnight"],
)
def test_a_gemini_realtime_call_is_answered_by_the_model_of_the_emulators_date(
    at, moment, answering
) -> None:
    core = at(moment)
    gem = genai.Client()
    answer = gem.models.generate_content(model=PRO, contents="hi")
    assert answer.model_version == answering
    billed = core.billing(usd=True)
    assert [(b["mode"], b["model"]) for b in billed] == [("realtime", answering)]


# -- a model shut down: refused at creation from the emulator's date on ---------------------


def _gemini(model: str, realtime: bool) -> None:
    gem = genai.Client()
    if realtime:
        gem.models.generate_content(model=model, contents="hi")
    else:
        gem.batches.create(model=model, src=_SRC)  # type: ignore[arg-type]


@pytest.mark.parametrize("realtime", [False, True], ids=["batch", "realtime"])
def test_a_gemini_model_is_refused_at_creation_from_the_midnight_of_its_shutdown(
    at, realtime
) -> None:
    at("2027-05-06T23:30:00")
    _gemini(GONE_GEMINI, realtime)  # served
    at("2027-05-07T00:30:00")
    with pytest.raises(genai_errors.ClientError) as caught:
        _gemini(GONE_GEMINI, realtime)
    assert caught.value.code == 404
    method = "generateContent" if realtime else "batchGenerateContent"
    assert caught.value.message == (
        f"models/{GONE_GEMINI} is not found for API version v1, or is not supported for "
        f"{method}. Call ListModels to see the list of available models and their supported "
        "methods.")  # fmt: skip


def test_an_openai_realtime_call_is_refused_from_the_midnight_of_its_models_shutdown(
    at,
) -> None:
    client = openai.OpenAI(max_retries=0)
    ask = {"model": GONE_OPENAI, "messages": [{"role": "user", "content": "hi"}]}
    at("2026-12-10T23:30:00")
    assert client.chat.completions.create(**ask).model == GONE_OPENAI  # type: ignore[call-overload]
    at("2026-12-11T00:30:00")
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(**ask)  # type: ignore[call-overload]
    assert caught.value.code == "model_not_found"


# The SDK warns of the model's announced shutdown whatever the date.
_DEPRECATED = "ignore:The model 'claude-opus-4-5' is deprecated:DeprecationWarning"


@pytest.mark.filterwarnings(_DEPRECATED)
def test_an_anthropic_call_is_refused_from_the_midnight_of_its_models_shutdown(at) -> None:
    client = anthropic.Anthropic(max_retries=0)
    ask = {"model": GONE_CLAUDE, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    at("2027-01-21T23:30:00")
    assert client.messages.create(**ask).model == GONE_CLAUDE  # type: ignore[call-overload]
    at("2027-01-22T00:30:00")
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(**ask)  # type: ignore[call-overload]
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"] == {
        "type": "not_found_error", "message": f"model: {GONE_CLAUDE}"}  # fmt: skip


@pytest.mark.filterwarnings(_DEPRECATED)
def test_an_anthropic_batch_request_is_errored_from_the_midnight_of_its_models_shutdown(
    at,
) -> None:
    # Anthropic validates a batch's requests after accepting it: the request ends
    # ``errored`` with the 404 and is not billed. Checked as of the batch's creation.
    client = anthropic.Anthropic(max_retries=0)
    params = {"model": GONE_CLAUDE, "max_tokens": 50,
              "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    outcomes = []
    for moment in ("2027-01-21T23:30:00", "2027-01-22T00:30:00"):
        core = at(moment)
        batch = client.messages.batches.create(
            requests=[{"custom_id": "r0", "params": params}]  # type: ignore[list-item]
        )
        results = list(client.messages.batches.results(batch.id))
        assert len(results) == 1
        outcomes.append(results[0].result.type)
        core.reset()
    assert outcomes == ["succeeded", "errored"]
