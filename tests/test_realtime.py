"""``batch_llm(mode="realtime")`` against the emulator's realtime endpoints, per provider.

What is sent (the exact request bodies), what comes back (values equal to the batch
answers of the same rows), what is billed (the standard price from genai-prices, one bill
per row in the emulator's ledger), rate-limit backoff on an injected clock (no sleeps),
the concurrency bound (counted by the emulator), the cap with requests in flight, and
checkpoints shared with batch mode.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

import batchata_df.engine.realtime as realtime_module
from batchata_df import batch_llm
from batchata_df.cost import PriceTable
from batchata_df.engine.clock import FakeClock


class Answer(BaseModel):
    label: str
    score: float


TEXTS = ["great product", "awful service", "fine, I guess"]
KW: dict[str, Any] = {"schema": Answer, "prompt": "Rate: {text}", "system": "You are terse."}


def frame(n: int = 3) -> pl.DataFrame:
    return pl.DataFrame({"text": [TEXTS[i % 3] + f" #{i}" for i in range(n)]})


def realtime_posts(emu) -> list[dict[str, Any]]:
    ends = ("/chat/completions", "/v1/messages", ":generateContent")
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith(ends)]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The realtime engine's clock, moved only by the engine's own waits."""
    fake = FakeClock()
    monkeypatch.setattr(realtime_module, "SystemClock", lambda: fake)
    return fake


# ---- what is sent, per provider


def test_openai_realtime_sends_the_documented_chat_completions_body(emu) -> None:
    emu.configure(log_bodies=True)
    out = frame(2).pipe(
        batch_llm, model="gpt-4.1-mini", mode="realtime", params={"max_tokens": 300}, **KW
    )
    assert out["_status"].to_list() == ["completed", "completed"]
    bodies = sorted((e["body"] for e in realtime_posts(emu)), key=lambda b: str(b["messages"]))
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
        "required": ["label", "score"],
        "additionalProperties": False,
    }
    assert bodies == [
        {
            "model": "gpt-4.1-mini",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": f"Rate: {text}"},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "Answer", "strict": True, "schema": schema},
            },
            "max_completion_tokens": 300,
        }
        for text in ["awful service #1", "great product #0"]
    ]
    assert not [e for e in emu.log() if e["path"].endswith(("/batches", "/files"))]


def test_anthropic_realtime_sends_the_documented_messages_body(emu) -> None:
    emu.configure(log_bodies=True)
    out = frame(1).pipe(
        batch_llm, model="claude-haiku-4-5", mode="realtime", params={"max_tokens": 300}, **KW
    )
    assert out["_status"].to_list() == ["completed"]
    (post,) = realtime_posts(emu)
    assert post["path"] == "/anthropic/v1/messages"
    assert post["body"] == {
        "model": "claude-haiku-4-5",
        "messages": [{"role": "user", "content": "Rate: great product #0"}],
        "system": "You are terse.",
        "max_tokens": 300,
        "stream": True,  # streamed, as Anthropic recommends (tests/test_anthropic_streaming.py)
        "output_config": {
            "format": {
                "type": "json_schema",
                "schema": {
                    "type": "object",
                    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
                    "additionalProperties": False,
                    "required": ["label", "score"],
                },
            }
        },
    }


@pytest.mark.filterwarnings("ignore::batchata_df.errors.ThinkingRoomWarning")  # not the subject
def test_gemini_realtime_sends_the_documented_generate_content_body(emu) -> None:
    emu.configure(log_bodies=True)
    out = frame(1).pipe(
        batch_llm, model="gemini-2.5-flash", mode="realtime", params={"max_tokens": 3000}, **KW
    )
    assert out["_status"].to_list() == ["completed"], out["_error"].to_list()
    (post,) = realtime_posts(emu)
    assert post["path"] == "/gemini/v1beta/models/gemini-2.5-flash:generateContent"
    body = post["body"]
    assert body["contents"] == [{"parts": [{"text": "Rate: great product #0"}], "role": "user"}]
    assert body["systemInstruction"] == {"parts": [{"text": "You are terse."}]}
    config = body["generationConfig"]
    assert config["maxOutputTokens"] == 3000
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"]["required"] == ["label", "score"]


# ---- what comes back and what is billed


@pytest.mark.parametrize("model", ["gpt-4.1-mini", "claude-haiku-4-5", "gemini-2.5-flash"])
def test_realtime_values_equal_the_batch_answers_billed_at_the_standard_price(
    emu, tmp_path, model: str
) -> None:
    rt = frame().pipe(batch_llm, model=model, mode="realtime", state=tmp_path / "rt", **KW)
    batch = frame().pipe(batch_llm, model=model, state=tmp_path / "b", **KW)
    assert rt["_status"].to_list() == ["completed"] * 3, rt["_error"].to_list()
    assert rt["_mode"].to_list() == ["realtime"] * 3
    assert batch["_mode"].to_list() == ["batch"] * 3
    assert rt["_batch_id"].to_list() == [None] * 3
    assert rt.select("label", "score").to_dicts() == batch.select("label", "score").to_dicts()
    assert rt.schema["score"] == pl.Float64
    # Same tokens, standard price: twice the batch price at all three providers.
    assert rt["_input_tokens"].to_list() == batch["_input_tokens"].to_list()
    provider = {"gpt": "openai", "cla": "anthropic", "gem": "gemini"}[model[:3]]
    price = PriceTable().realtime().get(provider, model)
    assert price is not None and price.source.startswith("genai-prices")
    expected = [
        (i * price.input + o * price.output) / 1e6
        for i, o in zip(rt["_input_tokens"], rt["_output_tokens"], strict=True)
    ]
    assert rt["_cost_usd"].to_list() == pytest.approx(expected)
    assert rt["_cost_usd"].to_list() == pytest.approx([2 * c for c in batch["_cost_usd"]])
    billed = emu.billing()
    assert Counter(e["mode"] for e in billed) == {"realtime": 3, "batch": 3}


def test_row_level_failures_are_data_in_realtime(emu) -> None:
    df = pl.DataFrame({"text": ["ok", "bad [[emulator:error:400]]", "no [[emulator:refusal]]"]})
    out = df.pipe(batch_llm, model="gpt-4.1-mini", mode="realtime", **KW)
    assert out["_status"].to_list() == ["completed", "failed", "failed"]
    errors = out["_error"].to_list()
    assert errors[1].startswith("http_400: Emulated error (HTTP 400)")
    assert errors[2].startswith("refusal: ")
    assert out["_mode"].to_list() == ["realtime"] * 3


# ---- rate limits, server errors, lost answers: on an injected clock


def test_429_is_retried_after_the_providers_retry_after(emu, clock: FakeClock) -> None:
    emu.inject_fault(path_regex=r"/chat/completions$", status=429, times=2, retry_after=7)
    out = frame(1).pipe(batch_llm, model="gpt-4.1-mini", mode="realtime", **KW)
    assert out["_status"].to_list() == ["completed"]
    assert [e["status"] for e in realtime_posts(emu)] == [429, 429, 200]
    assert [round(w, 6) for w in clock.waits] == [7.0, 7.0]
    assert len(emu.billing()) == 1


def test_anthropic_529_overloaded_is_retried_with_backoff(emu, clock: FakeClock) -> None:
    emu.inject_fault(path_regex=r"/v1/messages$", status=529, times=3)
    out = frame(1).pipe(batch_llm, model="claude-haiku-4-5", mode="realtime", **KW)
    assert out["_status"].to_list() == ["completed"]
    assert [e["status"] for e in realtime_posts(emu)] == [529, 529, 529, 200]
    assert clock.waits == pytest.approx([1.0, 1.6, 2.56])  # the run's backoff: no hint given
    assert len(emu.billing()) == 1


def test_gemini_503_is_retried_and_a_rate_limit_pauses_the_provider(emu, clock) -> None:
    emu.configure(log_bodies=True)
    emu.inject_fault(path_regex=r":generateContent$", status=503, times=1, retry_after=30)
    out = frame(3).pipe(batch_llm, model="gemini-2.5-flash", mode="realtime", concurrency=1,
                        **KW)  # fmt: skip
    assert out["_status"].to_list() == ["completed"] * 3
    posts = realtime_posts(emu)
    assert [e["status"] for e in posts] == [503, 200, 200, 200]
    assert clock.waits == [30.0]
    # Nothing new was sent while the provider asked to wait (a slot was free): the next
    # request after the 503 is the one it refused.
    texts = [e["body"]["contents"][0]["parts"][0]["text"] for e in posts]
    assert texts[1] == texts[0] and len(set(texts)) == 3


def test_rate_limited_past_the_patience_ends_rows_cancelled_unbilled(emu, clock) -> None:
    from batchata_df.errors import ProviderUnavailableWarning

    emu.inject_fault(path_regex=r"/chat/completions$", status=429, times=None, retry_after=60)
    with pytest.warns(ProviderUnavailableWarning, match="2 cancelled: a later call sends them"):
        out = frame(2).pipe(
            batch_llm, model="gpt-4.1-mini", mode="realtime", provider_patience=300, **KW
        )
    assert out["_status"].to_list() == ["cancelled", "cancelled"]
    assert all(e.startswith("cancelled: provider_unavailable: OpenAI HTTP 429") for e in
               out["_error"])  # fmt: skip
    assert emu.billing() == []
    assert max(clock.now - 1000.0, 0) >= 300


def test_a_request_failing_with_500_fails_its_row_after_a_few_attempts(emu, clock) -> None:
    df = pl.DataFrame({"text": ["ok", "boom [[emulator:error]]"]})
    out = df.pipe(batch_llm, model="gpt-4.1-mini", mode="realtime", **KW)
    assert out["_status"].to_list() == ["completed", "failed"]
    assert out["_error"][1].startswith("server_error: OpenAI HTTP 500")
    assert len([e for e in realtime_posts(emu) if e["status"] == 500]) == 4
    assert len(emu.billing()) == 1


def test_an_answer_lost_on_the_way_is_never_sent_again(emu, tmp_path, clock) -> None:
    emu.inject_fault(path_regex=r"/chat/completions$", action="disconnect", times=1,
                     when="after")  # fmt: skip
    state = tmp_path / "s"
    out = frame(1).pipe(batch_llm, model="gpt-4.1-mini", mode="realtime", state=state, **KW)
    assert out["_status"].to_list() == ["failed"]
    assert out["_error"][0].startswith("lost: the request was sent but no answer came back")
    assert len(emu.billing()) == 1  # it ran: the provider billed it
    again = frame(1).pipe(batch_llm, model="gpt-4.1-mini", mode="realtime", state=state, **KW)
    assert again["_status"].to_list() == ["failed"]
    assert len(realtime_posts(emu)) == 1  # not sent again ...
    fixed = frame(1).pipe(batch_llm, model="gpt-4.1-mini", mode="realtime", state=state,
                          retry_failed=True, **KW)  # fmt: skip
    assert fixed["_status"].to_list() == ["completed"]  # ... unless asked to


# ---- concurrency and the cap


def test_concurrency_bounds_the_requests_in_flight(emu) -> None:
    emu.configure(realtime_latency=1.0)
    out = frame(9).pipe(batch_llm, model="gpt-4.1-mini", mode="realtime", concurrency=3, **KW)
    assert out["_status"].to_list() == ["completed"] * 9
    assert emu.realtime_stats() == {"in_flight": 0, "max_in_flight": 3, "served": 9}


def test_the_cap_holds_the_worst_case_of_requests_in_flight(emu) -> None:
    emu.configure(realtime_latency=0.5)
    price = PriceTable().realtime().get("openai", "gpt-4.1-mini")
    assert price is not None
    # Room for the worst case (max_tokens=1000 of output) of two requests at a time only.
    cap = 2.5 * 1000 * price.output / 1e6
    out = frame(6).pipe(
        batch_llm, model="gpt-4.1-mini", mode="realtime", concurrency=6, max_cost_usd=cap,
        params={"max_tokens": 1000}, **KW,
    )  # fmt: skip
    assert emu.realtime_stats()["max_in_flight"] <= 2
    assert out["_cost_usd"].sum() <= cap
    statuses = Counter(out["_status"].to_list())
    assert statuses["completed"] >= 2
    assert set(statuses) <= {"completed", "cancelled"}
    cancelled = out.filter(pl.col("_status") == "cancelled")["_error"].to_list()
    assert all(e == "cancelled: cost_limit" for e in cancelled)
    assert len(emu.billing()) == statuses["completed"]


# ---- checkpoints across modes


def test_resume_sends_nothing_again_in_either_mode(emu, tmp_path) -> None:
    state = tmp_path / "s"
    kw = {"model": "claude-haiku-4-5", "state": state, **KW}
    first = frame(4).pipe(batch_llm, mode="realtime", **kw)
    n_posts = len(emu.log())
    again = frame(4).pipe(batch_llm, mode="realtime", **kw)
    by_batch = frame(4).pipe(batch_llm, **kw)  # batch mode: nothing left to send
    assert len(emu.log()) == n_posts
    assert again.equals(first) and by_batch.equals(first)
    more = frame(6).pipe(batch_llm, **kw)  # two new rows go by batch
    assert more["_mode"].to_list() == ["realtime"] * 4 + ["batch"] * 2
    assert Counter(e["request"] for e in emu.billing()).most_common(1)[0][1] == 1


def test_realtime_leaves_rows_of_a_batch_in_flight_to_the_batch(emu, tmp_path) -> None:
    emu.configure(latency=3600)
    state = tmp_path / "s"
    kw = {"model": "gpt-4.1-mini", "state": state, **KW}
    sent = frame(2).pipe(batch_llm, wait=False, **kw)
    assert sent["_status"].to_list() == ["pending"] * 2
    out = frame(3).pipe(batch_llm, mode="realtime", **kw)
    assert out["_status"].to_list() == ["pending", "pending", "completed"]
    assert "mode='batch'" in out["_error"][0]
    assert len(realtime_posts(emu)) == 1
    emu.advance(3600)
    done = frame(3).pipe(batch_llm, **kw)
    assert done["_mode"].to_list() == ["batch", "batch", "realtime"]
    assert Counter(e["request"] for e in emu.billing()).most_common(1)[0][1] == 1


def test_realtime_dry_run_prices_at_the_standard_rate(emu) -> None:
    rt = frame().pipe(batch_llm, model="gpt-4.1-mini", mode="realtime", dry_run=True, **KW)
    batch = frame().pipe(batch_llm, model="gpt-4.1-mini", dry_run=True, **KW)
    assert rt["_mode"].to_list() == ["realtime"] * 3
    assert rt["_batch_index"].to_list() == [None] * 3
    assert rt["_est_cost_usd"].to_list() == pytest.approx([2 * c for c in batch["_est_cost_usd"]])
    assert emu.log() == []


@pytest.mark.parametrize(
    ("kwargs", "fix"),
    [
        ({"mode": "fast"}, "mode must be one of ['batch', 'realtime', 'auto']"),
        ({"mode": "realtime", "concurrency": 0}, "concurrency must be a whole number >= 1"),
        ({"mode": "realtime", "deadline": 60}, "deadline= is for mode='auto'"),
        ({"mode": "realtime", "wait": False, "state": "s"}, "wait=False is for mode='batch'"),
        ({"mode": "auto", "deadline": -5}, "deadline must be a positive finite number"),
    ],
)
def test_bad_mode_arguments_are_refused_before_anything_is_sent(emu, kwargs, fix) -> None:
    from batchata_df.errors import ConfigError

    with pytest.raises(ConfigError, match=fix.replace("[", r"\[").replace("(", r"\(")):
        frame().pipe(batch_llm, model="gpt-4.1-mini", **{**KW, **kwargs})
    assert emu.log() == []


def test_progress_shows_realtime_requests_in_flight(emu) -> None:
    from batchata_df.progress import format_line

    snaps = []
    frame(4).pipe(batch_llm, model="gpt-4.1-mini", mode="realtime", concurrency=2,
                  progress=snaps.append, **KW)  # fmt: skip
    running = [s for s in snaps if s.phase == "running" and s.realtime_in_flight]
    assert running and max(s.realtime_in_flight for s in running) == 2
    line = format_line(running[0])
    assert "realtime: 2 requests in flight (standard price)" in line
    assert "batches:" not in line
    assert snaps[-1].phase == "done" and snaps[-1].completed == 4


def test_the_jobs_view_says_how_each_job_was_sent(emu, tmp_path) -> None:
    from batchata_df import sql

    state = tmp_path / "s"
    frame(2).pipe(batch_llm, model="gpt-4.1-mini", mode="realtime", state=state, **KW)
    out = frame(3).pipe(batch_llm, model="gpt-4.1-mini", state=state, **KW)
    jobs = sql("select job_id, mode, cost_usd from jobs", state)
    by_job = dict(zip(jobs["job_id"], jobs["mode"], strict=True))
    assert [by_job[j] for j in out["_job_id"]] == ["realtime", "realtime", "batch"]
    cost = dict(zip(jobs["job_id"], jobs["cost_usd"], strict=True))
    assert [cost[j] for j in out["_job_id"]] == pytest.approx(out["_cost_usd"].to_list())


class Facts(BaseModel):
    company: str
    city: str


def test_citations_come_back_the_same_in_realtime(emu, tmp_path) -> None:
    doc = tmp_path / "notes.txt"
    doc.write_text("Acme Tools is based in Lyon. Acme Tools employs 120 people in Lyon.\n")
    df = pl.DataFrame({"files": [str(doc)], "q": ["Extract the facts"]})
    kw: dict[str, Any] = {"schema": Facts, "model": "claude-haiku-4-5", "prompt": "{q}",
                          "files": "files", "citations": True}  # fmt: skip
    rt = df.pipe(batch_llm, mode="realtime", state=tmp_path / "rt", **kw)
    batch = df.pipe(batch_llm, state=tmp_path / "b", **kw)
    assert rt["_status"].to_list() == ["completed"], rt["_error"].to_list()
    cols = ["company", "city", "company_citations", "city_citations"]
    assert rt.select(cols).to_dicts() == batch.select(cols).to_dicts()
    assert rt["company_citations"][0].len() >= 1
    assert rt["_mode"].to_list() == ["realtime"]


def test_keep_responses_keeps_the_realtime_answer_body(emu) -> None:
    import json

    df = pl.DataFrame({"text": ["ok", "bad [[emulator:error:400]]"]})
    out = df.pipe(batch_llm, model="gpt-4.1-mini", mode="realtime", keep_responses=True, **KW)
    ok, bad = (json.loads(r) for r in out["_response"])
    assert ok["object"] == "chat.completion"
    assert json.loads(ok["choices"][0]["message"]["content"])["label"] == out["label"][0]
    assert bad["error"]["message"].startswith("Emulated error (HTTP 400)")


@pytest.mark.parametrize(("model", "error"), [
    ("gpt-4.1-mini", "http_400: Emulated error (HTTP 400) for this request."),
    ("claude-haiku-4-5",
     "invalid_request_error: Emulated invalid_request_error (HTTP 400) for this request."),
    ("gemini-2.5-flash", "error_400: Emulated error (HTTP 400) for this request."),
])
def test_a_refused_request_fails_its_row_with_the_same_error_as_in_a_batch(emu, model, error):
    df = pl.DataFrame({"text": ["ok", "bad [[emulator:error:400]]"]})
    realtime = df.pipe(batch_llm, model=model, mode="realtime", **KW)
    batch = df.pipe(batch_llm, model=model, **KW)
    assert realtime["_status"].to_list() == ["completed", "failed"]
    assert realtime["_error"].to_list() == [None, error] == batch["_error"].to_list()


@pytest.mark.parametrize(("model", "message"), [
    ("gpt-4.1-mini", "OpenAI rejected the API key: check OPENAI_API_KEY"),
    ("claude-haiku-4-5", "Anthropic rejected the API key: check ANTHROPIC_API_KEY"),
    ("gemini-2.5-flash",
     "Gemini rejected the API key: check GEMINI_API_KEY (or GOOGLE_API_KEY): "
     "HTTP 401 UNAUTHENTICATED"),
])
def test_a_rejected_key_stops_a_realtime_run_with_the_fix(emu, model, message):
    from batchata_df import CredentialsError

    emu.inject_fault(path_regex=r"(/chat/completions|/v1/messages|:generateContent)$",
                     status=401, times=None)
    with pytest.raises(CredentialsError) as raised:
        pl.DataFrame({"text": ["x"]}).pipe(batch_llm, model=model, mode="realtime", **KW)
    assert str(raised.value) == message


@pytest.mark.parametrize(("body", "error"), [
    ({"type": "error", "error": {"type": "invalid_request_error", "message": ""}},
     "invalid_request_error: "),
    ({"type": "error", "error": {"type": "invalid_request_error", "message": {"why": "x"}}},
     'invalid_request_error: {"why": "x"}'),
    ({"type": "error", "error": {"type": "invalid_request_error"}},
     "invalid_request_error: invalid_request_error: {'type': 'invalid_request_error'}"),
])
def test_an_anthropic_refusal_of_any_shape_becomes_the_row_error(emu, body, error):
    emu.inject_fault(path_regex=r"/v1/messages$", status=400, times=None, body=body)
    out = pl.DataFrame({"text": ["x"]}).pipe(
        batch_llm, model="claude-haiku-4-5", mode="realtime", **KW)
    assert out.select("_status", "_error").rows() == [("failed", error)]


@pytest.mark.parametrize(("model", "answer_text"), [
    ("claude-haiku-4-5", lambda r: r["content"][0]["text"]),
    ("gemini-2.5-flash", lambda r: r["candidates"][0]["content"]["parts"][-1]["text"]),
])
def test_keep_responses_keeps_the_realtime_answer_body_of_every_provider(emu, model,
                                                                         answer_text):
    import json

    out = frame(1).pipe(batch_llm, model=model, mode="realtime", keep_responses=True, **KW)
    kept = json.loads(out["_response"][0])
    assert json.loads(answer_text(kept)) == {"label": out["label"][0], "score": out["score"][0]}


def test_gemini_realtime_401_without_the_words_api_key_is_still_a_rejected_key(emu) -> None:
    # Google answers an invalid credential with 401 UNAUTHENTICATED and a message that
    # need not mention an API key: the status alone says so.
    from batchata_df import CredentialsError

    emu.inject_fault(path_regex=r":generateContent$", status=401, times=None, body={"error": {
        "code": 401, "status": "UNAUTHENTICATED",
        "message": "Request had invalid authentication credentials."}})
    with pytest.raises(CredentialsError, match=r"HTTP 401 UNAUTHENTICATED$"):
        frame(1).pipe(batch_llm, model="gemini-2.5-flash", mode="realtime", **KW)


def test_gemini_realtime_error_without_a_message_fails_the_row_with_the_whole_error(emu):
    emu.inject_fault(path_regex=r":generateContent$", status=400, times=None,
                     body={"error": {"code": 400, "status": "INVALID_ARGUMENT"}})
    out = frame(1).pipe(batch_llm, model="gemini-2.5-flash", mode="realtime", **KW)
    assert out["_status"].to_list() == ["failed"]
    assert out["_error"][0].startswith("error_400: 400 INVALID_ARGUMENT."), out["_error"][0]


@pytest.mark.parametrize(("model", "name"), [
    ("gpt-4.1-mini", "OpenAI"), ("claude-haiku-4-5", "Anthropic"), ("gemini-2.5-flash", "Gemini"),
])
def test_an_unreachable_provider_in_realtime_is_named_in_the_rows(emu, monkeypatch, clock,
                                                                 model, name):
    import socket

    from batchata_df.errors import ProviderUnavailableWarning

    # A port bound but not listening, kept for the whole call (no other process can take
    # it meanwhile): every connection is refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
        monkeypatch.setenv("OPENAI_BASE_URL", dead + "/v1")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", dead)
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", dead)
        with pytest.warns(ProviderUnavailableWarning):
            out = frame(1).pipe(batch_llm, model=model, mode="realtime",
                                provider_patience=30, **KW)
    assert out["_status"].to_list() == ["cancelled"]
    assert out["_error"][0].startswith(f"cancelled: provider_unavailable: {name}: "), \
        out["_error"][0]


def test_anthropic_429_is_retried_after_its_retry_after(emu, clock: FakeClock) -> None:
    emu.inject_fault(path_regex=r"/v1/messages$", status=429, times=2, retry_after=7)
    out = frame(1).pipe(batch_llm, model="claude-haiku-4-5", mode="realtime", **KW)
    assert out["_status"].to_list() == ["completed"]
    assert [e["status"] for e in realtime_posts(emu)] == [429, 429, 200]
    assert [round(w, 6) for w in clock.waits] == [7.0, 7.0]
