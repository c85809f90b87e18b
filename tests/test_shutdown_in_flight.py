"""A model shut down while a batch of it waits: its requests not run by then fail.

The emulator completed such a batch as if the model were still served (left-out of session
16): a batch of gpt-5-nano sent on 2026-12-10 and processed after the 2026-12-11 shutdown
was answered and billed in full. None of the three providers' pages says what becomes of
a batch still queued at a shutdown; each says the model is no longer served from then
(OpenAI: "no longer accessible", Anthropic: "Requests to retired models will fail",
Google: "completely turned off"), so the emulator takes the strict reading
(``EmulatorCore.gone_since``): the requests it had not run when the ``today`` setting
reached the shutdown fail one by one with the provider's model-not-found error, unbilled
(sources in ``openai_api._gone_lines``, ``anthropic_api`` and ``gemini_api`` ``_finish``).
The client turns them into rows ``failed`` with ``model_shut_down: ...`` naming the date
and the replacement (``models.shut_down_message``), never lost rows, at $0.

The shutdown holds from the first moment ``today`` reached it: moving ``today`` on again
(review of session 17: the emulator then answered and billed the requests run before the
second move) or back does not move it for a batch it overtook. A batch cancelled or
expired before a later shutdown keeps its unrun requests cancelled / expired.

OpenAI fine-tunes (``ft:<base>:...``) go with their base model, in a batch already sent
as for a new one (refused at creation, 404 in real time), as OpenAI answers them.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import warnings
from pathlib import Path
from typing import Any

import openai
import polars as pl
import pytest
from click.testing import CliRunner

from batchata_df import batch_llm
from batchata_df.cli import cli
from batchata_df.state import spent_usd

ROWS = pl.DataFrame({"text": [f"row {i}" for i in range(4)]})
FT = "ft:gpt-5-nano-2025-08-07:acme::abc123"
# (model as batch_llm takes it, the day before its shutdown, the shutdown, the words the
# row's error names the replacement with)
CASES = [
    ("gpt-5-nano", "2026-12-10", "2026-12-11", "Send the row again with model='gpt-6-luna', "
     "its replacement (https://developers.openai.com/api/docs/deprecations)"),
    ("claude-opus-4-5", "2027-01-21", "2027-01-22", "Send the row again with "
     "model='claude-opus-5-5', its replacement (https://platform.claude.com/docs/en/"
     "about-claude/model-deprecations)"),
    ("gemini-3.1-flash-lite", "2027-05-06", "2027-05-07", "Send the row again with a newer "
     "model (https://ai.google.dev/gemini-api/docs/deprecations)"),
    (f"openai:{FT}", "2026-12-10", "2026-12-11", "Send the row again with a fine-tune of "
     "'gpt-6-luna', the base model's replacement"),
]  # fmt: skip
SAID = {"gpt-5-nano": "http_404: The model `gpt-5-nano` has been deprecated",
        "claude-opus-4-5": "not_found_error: model: claude-opus-4-5",
        "gemini-3.1-flash-lite": "error_404: models/gemini-3.1-flash-lite is not found for API "
                                 "version v1beta",
        f"openai:{FT}": f"http_404: The model `{FT}` does not exist or you do not have access "
                        "to it."}  # fmt: skip




def _sent_before(
    on: Any, emu: Any, tmp_path: Path, model: str, before: str, rows: pl.DataFrame = ROWS
) -> tuple[dict[str, Any], pl.DataFrame]:
    """``rows`` sent (not waited for) on ``before``, each batch taking 60 s: its arguments
    and what the call returned."""
    emu.configure(latency=60.0)
    on(before)
    kw = {"model": model, "prompt": "{text}", "state": tmp_path / "s",
          "params": {"max_tokens": 2000}, "progress": False}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shutdown warning: tests/test_model_shutdowns.py
        first = rows.pipe(batch_llm, wait=False, **kw)
    return kw, first


def _posts(emu: Any) -> int:
    return len([e for e in emu.log() if e["method"] == "POST"])


@pytest.mark.parametrize("ran_first", [0, 30], ids=["none_ran", "half_ran"])
@pytest.mark.parametrize(("model", "before", "after", "advice"), CASES,
                         ids=["openai", "anthropic", "gemini", "openai_fine_tune"])
def test_requests_a_shutdown_overtakes_fail_unbilled_naming_the_replacement(
    on, emu, tmp_path, model, before, after, advice, ran_first
) -> None:
    kw, first = _sent_before(on, emu, tmp_path, model, before)
    assert first["_status"].to_list() == ["pending"] * 4
    emu.advance(ran_first)  # part of the batch has run (or none of it)...
    on(after)  # ...when the model is shut down
    emu.advance(60)
    posts = _posts(emu)
    out = ROWS.pipe(batch_llm, **kw)
    assert out.height == 4 and _posts(emu) == posts  # every row, nothing sent again
    done = out.filter(pl.col("_status") == "completed")
    failed = out.filter(pl.col("_status") == "failed")
    assert done.height + failed.height == 4
    if ran_first == 0:
        assert failed.height == 4  # none ran on the model before its shutdown
    else:
        assert 0 < done.height < 4, out["_error"].to_list()
    bare = model.removeprefix("openai:")
    for error in failed["_error"]:
        assert error.startswith(f"model_shut_down: {_who(bare)} down on {after}, before this "
                                "request of a batch sent earlier ran: it was not run and not "
                                "billed. "), error  # fmt: skip
        assert advice in error and f"the provider said: {SAID[model]}" in error
    # Billed: the answered rows only, each once; the failed ones cost nothing.
    assert sorted(b["custom_id"] for b in emu.billing()) == sorted(done["_job_id"].to_list())
    assert failed["_input_tokens"].null_count() == failed.height
    assert failed["_cost_usd"].fill_null(0.0).sum() == 0
    assert spent_usd(tmp_path / "s") == pytest.approx(done["_cost_usd"].fill_null(0.0).sum())
    if model == "gpt-5-nano" and ran_first:  # `batchata-df status` says what became of them
        shown = CliRunner().invoke(cli, ["status", str(tmp_path / "s")])
        assert shown.exit_code == 0, shown.output
        assert (f"model 'gpt-5-nano' was shut down on {after}: rows not collected yet can "
                "still be collected (those the provider had not run by then fail "
                "model_shut_down, unbilled); rows never sent fail unsent") in shown.output


OWN_ERROR = {"gpt-5-nano": "http_400: ", "claude-opus-4-5": "invalid_request_error: ",
             "gemini-3.1-flash-lite": "error_400: "}  # fmt: skip


@pytest.mark.parametrize(("model", "before", "after", "advice"), CASES[:3],
                         ids=["openai", "anthropic", "gemini"])  # fmt: skip
def test_a_request_that_failed_before_the_shutdown_stays_unbilled(
    on, emu, tmp_path, model, before, after, advice
) -> None:
    # The first request fails with its own error (a 400) before the shutdown overtakes the
    # last ones: billed are the answered ones only, neither the failed nor the overtaken.
    emu.configure(latency=60.0)
    on(before)
    rows = pl.DataFrame({"text": ["row 0 [[emulator:error:400]]", "row 1", "row 2", "row 3"]})
    kw = {"model": model, "prompt": "{text}", "state": tmp_path / "s",
          "params": {"max_tokens": 2000}, "progress": False}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shutdown warning: tests/test_model_shutdowns.py
        rows.pipe(batch_llm, wait=False, **kw)
    emu.advance(36)  # the first two requests have run (of each provider's lifecycle)...
    on(after)  # ...when the model is shut down
    emu.advance(60)
    out = rows.pipe(batch_llm, **kw)
    assert out["_status"].to_list() == ["failed", "completed", "failed", "failed"]
    assert out["_error"][0].startswith(OWN_ERROR[model])  # it ran, and failed on its own
    assert all(e.startswith("model_shut_down: ") for e in out["_error"][2:])
    assert [b["custom_id"] for b in emu.billing()] == [out["_job_id"][1]]
    assert out["_cost_usd"].to_list()[0] == 0 and out["_cost_usd"][1] > 0
    assert spent_usd(tmp_path / "s") == pytest.approx(out["_cost_usd"][1])


def _who(model: str) -> str:
    provider = ("anthropic" if model.startswith("claude") else
                "gemini" if model.startswith("gemini") else "OpenAI")  # fmt: skip
    name = {"anthropic": "Anthropic", "gemini": "Gemini"}.get(provider, provider)
    if model.startswith("ft:"):
        return f"{name} shut 'gpt-5-nano-2025-08-07', the base model of {model!r},"
    return f"{name} shut {model!r}"


def _batch_file(model: str, n: int = 2) -> io.BytesIO:
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}]}}
             for i in range(n)]  # fmt: skip
    return io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())


@pytest.mark.parametrize("ft", [
    FT,
    # The shape OpenAI names a fine-tune with (ft:<base snapshot>:<org>:<suffix>:<id>), and
    # the short one (a base alias, no suffix): model_rules.retired takes each to its base.
    "ft:gpt-5-nano-2025-08-07:acme:support-bot:B2xQ7kLm",
    "ft:gpt-5-nano:acme::B2xQ7kLm",
], ids=["no_suffix", "suffix", "alias_base"])  # fmt: skip
def test_the_emulator_refuses_a_fine_tune_once_its_base_is_shut_down(emu, ft) -> None:
    # Through the OpenAI SDK: refused as a new batch and in real time from the base's date,
    # and in a batch sent the day before, each request fails as OpenAI answers such a
    # fine-tune (404 model_not_found "does not exist or you do not have access to it").
    client = openai.OpenAI(max_retries=0)
    emu.configure(today="2026-12-10")  # served the day before
    said = client.chat.completions.create(model=ft, messages=[{"role": "user", "content": "hi"}])
    assert said.model == ft
    assert len(emu.billing()) == 1
    emu.reset()
    emu.configure(latency=60.0, today="2026-12-10")
    upload = client.files.create(file=("in.jsonl", _batch_file(ft)), purpose="batch")
    queued = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                   completion_window="24h")  # fmt: skip
    emu.configure(today="2026-12-11")  # gpt-5-nano's shutdown
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model=ft, messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found"
    assert f"The model `{ft}` does not exist" in info.value.message
    upload = client.files.create(file=("new.jsonl", _batch_file(ft)), purpose="batch")
    new = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                completion_window="24h")  # fmt: skip
    emu.advance(60)
    new = client.batches.retrieve(new.id)
    assert new.status == "failed" and new.errors and new.errors.data
    assert new.errors.data[0].code == "model_not_found"
    old = client.batches.retrieve(queued.id)
    assert old.status == "completed" and old.output_file_id is None and old.error_file_id
    assert old.request_counts and (old.request_counts.completed, old.request_counts.failed) \
        == (0, 2)
    lines = [json.loads(x) for x in client.files.content(old.error_file_id).text.splitlines()]
    assert [x["response"]["status_code"] for x in lines] == [404, 404]
    assert {x["response"]["body"]["error"]["code"] for x in lines} == {"model_not_found"}
    assert emu.billing() == []  # nothing ran: nothing billed


def _next_day(date: str) -> str:
    return (dt.date.fromisoformat(date) + dt.timedelta(days=1)).isoformat()


@pytest.mark.parametrize("then", ["later", "back"])
@pytest.mark.parametrize(("model", "before", "after", "advice"), CASES[:3],
                         ids=["openai", "anthropic", "gemini"])
def test_a_shutdown_holds_from_the_first_day_today_reached_it(
    on, emu, tmp_path, model, before, after, advice, then
) -> None:
    # The shutdown takes effect the first moment `today` reaches it (EmulatorCore.gone_since),
    # before any request ran. Moving `today` on again half-way through the batch window did
    # move that moment (the emulator answered and billed half the batch on the dead model);
    # moving it back before the shutdown does not undo it for the batch it overtook.
    kw, first = _sent_before(on, emu, tmp_path, model, before)
    assert first["_status"].to_list() == ["pending"] * 4
    on(after)  # the shutdown, before anything ran
    emu.advance(30)
    if then == "later":
        on(_next_day(after))  # half-way through the batch window
    else:
        emu.configure(today=before)  # the emulator only: the client still knows it shut
    emu.advance(60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ROWS.pipe(batch_llm, **kw)
    assert out["_status"].to_list() == ["failed"] * 4, out["_error"].to_list()
    for error in out["_error"]:
        assert error.startswith(f"model_shut_down: {_who(model)} down on {after}, "), error
    assert emu.billing() == []  # nothing ran on the model: nothing billed


def _lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


@pytest.mark.parametrize("end", ["cancelled", "expired"])
def test_a_shutdown_after_a_batch_ended_early_leaves_its_unrun_requests_as_they_ended(
    emu, end
) -> None:
    # Through the OpenAI SDK: a batch cancelled (or expired) with part of it run, its model
    # shut down later, collected after both: the requests the cancel (expiry) left unrun end
    # batch_cancelled (batch_expired), not model_not_found, and only the ones run are
    # answered and billed (openai_api._finish: min(ran, run before the shutdown)).
    client = openai.OpenAI(max_retries=0)
    day = 86_400
    # latency 60 s: 4 requests run from 6 s to 54 s (openai_api PHASE_*): 1 by the cancel
    # at 20 s, 3 by the shutdown at 45 s. Latency 2 days: 2 by the expiry at 1 day, 3 by
    # the shutdown at 1.5 days.
    latency, stop, shutdown = (60.0, 20, 45) if end == "cancelled" else (2.0 * day, day, 1.5 * day)
    emu.configure(latency=latency, today="2026-12-10")
    upload = client.files.create(file=("in.jsonl", _batch_file("gpt-5-nano", 4)),
                                 purpose="batch")  # fmt: skip
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")  # fmt: skip
    emu.advance(stop)
    if end == "cancelled":
        client.batches.cancel(batch.id)
    emu.advance(shutdown - stop)
    emu.configure(today="2026-12-11")  # gpt-5-nano's shutdown, after the batch ended
    emu.advance(2 * latency)
    batch = client.batches.retrieve(batch.id)
    ran = 1 if end == "cancelled" else 2
    assert batch.status == end
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (ran, 4 - ran)
    out = _lines(client, batch.output_file_id)
    err = _lines(client, batch.error_file_id)
    assert [x["custom_id"] for x in out] == [f"r{i}" for i in range(ran)]
    code = "batch_cancelled" if end == "cancelled" else "batch_expired"
    assert sorted((x["custom_id"], x["error"]["code"]) for x in err) \
        == [(f"r{i}", code) for i in range(ran, 4)]  # fmt: skip
    assert sorted(b["custom_id"] for b in emu.billing()) == [f"r{i}" for i in range(ran)]


def test_a_batch_sent_after_today_moved_back_before_the_shutdown_is_served(emu) -> None:
    # Through the OpenAI SDK: the shutdown a batch overtook stays (the test above); a batch
    # sent once `today` is back before the shutdown is served whole and billed.
    client = openai.OpenAI(max_retries=0)
    emu.configure(latency=60.0, today="2026-12-11")  # gpt-5-nano shut down...
    emu.advance(10)
    emu.configure(today="2026-12-10")  # ...and served again
    emu.advance(10)
    upload = client.files.create(file=("in.jsonl", _batch_file("gpt-5-nano", 4)),
                                 purpose="batch")  # fmt: skip
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")  # fmt: skip
    emu.advance(120)
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (4, 0)
    assert [x["custom_id"] for x in _lines(client, batch.output_file_id)] \
        == [f"r{i}" for i in range(4)]  # fmt: skip
    assert sorted(b["custom_id"] for b in emu.billing()) == [f"r{i}" for i in range(4)]
