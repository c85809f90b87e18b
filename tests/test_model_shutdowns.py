"""Announced model shutdowns: a warning before anything is sent when one is near, the
model refused as retired once its date is reached (client and emulator), and a clock that
tests pin (``BATCHATA_DF_TODAY``) so the suite never depends on the day it runs.

Sources (``batchata_df.models.SCHEDULED``, ``batchata_df.emulator.model_rules.SCHEDULED``):
openai 3.57 ``types/shared/chat_model.py`` ("Announced shutdown date: 2026-12-11" for
gpt-5-nano and others), anthropic 2.14 ``_data/deprecated_models.py`` ("claude-opus-4-5":
"January 22nd, 2027"), Google's Gemini deprecations page as read in November 2026
(gemini-2.5-flash: 2026-12-01, then routed to gemini-3.5-flash-lite).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import anthropic
import openai
import polars as pl
import pytest
from google import genai

from batchata_df import ModelError, ModelShutdownWarning, batch_llm
from batchata_df import models as client_models
from batchata_df.emulator import model_rules
from batchata_df.models import (
    SCHEDULED,
    TODAY_VAR,
    retirement,
    scheduled_shutdown,
    shutdown_warning,
)

ROWS = pl.DataFrame({"text": ["one", "two"]})
MSG = [{"role": "user", "content": "hi"}]
EXE = Path(sys.executable).with_name("batchata-df")
REPO = Path(__file__).resolve().parents[1]

GEMINI_NOTICE = (
    "model 'gemini-2.5-flash' is deprecated: Gemini shuts it down on 2026-12-01 (in 1 day); "
    "use 'gemini-3.5-flash-lite' instead (https://ai.google.dev/gemini-api/docs/"
    "deprecations). A batch submitted now may take up to 48 h, past the shutdown: rows "
    "Gemini has not finished by 2026-12-01 00:00 UTC are answered by 'gemini-3.5-flash-lite' "
    "instead, at its prices and parameter rules"
)




def shutdown_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ModelShutdownWarning)]


def test_the_suite_runs_on_its_pinned_date(emulator):
    # conftest pins the date for the client, the session emulator and every child.
    assert TODAY_VAR == model_rules.TODAY_VAR == "BATCHATA_DF_TODAY"
    assert os.environ[TODAY_VAR] == "2026-10-31"
    assert emulator.settings()["today"] == "2026-10-31"
    assert client_models.today().isoformat() == "2026-10-31"
    child = subprocess.run(
        [sys.executable, "-c", "from batchata_df.models import today; print(today())"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert child.stdout.strip() == "2026-10-31"


@pytest.mark.parametrize("streamed", [False, True])
def test_a_near_shutdown_warns_once_naming_date_replacement_and_the_batch_window(
    on, emu, tmp_path, streamed
):
    on("2026-11-30")
    kw = {"model": "gemini-2.5-flash", "prompt": "{text}", "state": tmp_path / "s"}
    rows = pl.DataFrame({"text": [f"row {i}" for i in range(6)]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if streamed:
            out = batch_llm(rows.lazy(), sink=tmp_path / "o.parquet", chunk_rows=2,
                            **kw).collect()  # type: ignore[union-attr]
        else:
            out = rows.pipe(batch_llm, **kw)
    assert shutdown_warnings(caught) == [GEMINI_NOTICE]  # once, not once per chunk
    assert out["_status"].to_list() == ["completed"] * 6  # still served today
    assert len(emu.billing()) == 6


def test_the_batch_window_sentence_only_when_the_shutdown_falls_inside_it(on, emu, tmp_path):
    on("2026-11-30")  # gpt-5-nano: 2026-12-11, 11 days away, beyond OpenAI's 24 h
    with pytest.warns(ModelShutdownWarning) as caught:
        ROWS.pipe(batch_llm, model="gpt-5-nano", prompt="{text}", state=tmp_path / "a")
    assert caught[0].filename == __file__  # the caller's line, not batchata_df's or polars'
    assert [str(w.message) for w in caught] == [
        "model 'gpt-5-nano' is deprecated: OpenAI shuts it down on 2026-12-11 (in 11 days); "
        "use 'gpt-6-luna' instead (https://developers.openai.com/api/docs/deprecations)"
    ]
    on("2026-12-10")  # the day before: a 24 h batch may still be running at the shutdown
    with pytest.warns(ModelShutdownWarning) as caught:
        ROWS.pipe(batch_llm, model="gpt-5-nano", prompt="{text}", state=tmp_path / "b")
    assert [str(w.message) for w in caught] == [
        "model 'gpt-5-nano' is deprecated: OpenAI shuts it down on 2026-12-11 (in 1 day); "
        "use 'gpt-6-luna' instead (https://developers.openai.com/api/docs/deprecations). A "
        "batch submitted now may take up to 24 h, past the shutdown: rows OpenAI has not "
        "finished by 2026-12-11 00:00 UTC will fail"
    ]


def test_a_realtime_run_is_warned_without_the_batch_window(on, emu, tmp_path):
    on("2026-11-30")  # answered in seconds: no 48 h window to cross the shutdown
    with pytest.warns(ModelShutdownWarning) as caught:
        out = ROWS.pipe(batch_llm, model="gemini-2.5-flash", prompt="{text}",
                        state=tmp_path / "s", mode="realtime")
    assert [str(w.message) for w in caught] == [GEMINI_NOTICE.split(". A batch")[0]]
    assert out["_status"].to_list() == ["completed", "completed"]
    assert [b["mode"] for b in emu.billing()] == ["realtime", "realtime"]


def test_no_warning_for_a_far_shutdown_or_none_at_all(on, tmp_path):
    on("2026-11-30")  # gpt-4.1-mini: 2027-01-14, 45 days; gpt-6-luna: none announced
    for model in ("gpt-4.1-mini", "gpt-6-luna", "claude-opus-4-5"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = ROWS.pipe(batch_llm, model=model, prompt="{text}", state=tmp_path / model,
                            params={"max_tokens": 4000})
        assert shutdown_warnings(caught) == [], model
        assert out["_status"].to_list() == ["completed", "completed"], model
    assert shutdown_warning("openai", "gpt-4.1-mini") is None
    on("2026-12-16")  # 29 days before gpt-4.1-mini's: within the horizon
    assert shutdown_warning("openai", "gpt-4.1-mini") is not None


@pytest.mark.parametrize(("model", "date", "message"), [
    ("gpt-5-nano", "2026-12-11", "model 'gpt-5-nano' was retired by OpenAI on 2026-12-11: "
     "every request to it would fail (https://developers.openai.com/api/docs/deprecations); "
     "use 'gpt-6-luna' instead"),
    ("anthropic:claude-opus-4-5-20251101", "2027-01-22", "model 'claude-opus-4-5-20251101' was "
     "retired by Anthropic on 2027-01-22: every request to it would fail (https://"
     "platform.claude.com/docs/en/about-claude/model-deprecations); use 'claude-opus-5-5' "
     "instead"),
    ("gemini-2.5-flash", "2026-12-01", "model 'gemini-2.5-flash' was retired by Gemini on "
     "2026-12-01: its requests are answered by 'gemini-3.5-flash-lite' instead, at that "
     "model's prices and parameter rules (https://ai.google.dev/gemini-api/docs/"
     "deprecations); use 'gemini-3.5-flash-lite' instead"),
])  # fmt: skip
def test_from_the_date_on_the_client_refuses_it_before_anything_is_sent(
    on, emu, tmp_path, model, date, message
):
    on(date)
    for dry_run in (False, True):
        with pytest.raises(ModelError) as info:
            ROWS.pipe(batch_llm, model=model, prompt="{text}", state=tmp_path / "s",
                      dry_run=dry_run)
        assert str(info.value) == message
    assert emu.log() == []
    assert emu.billing() == []
    assert not (tmp_path / "s").exists()


def test_the_pinned_date_alone_decides_for_the_client(monkeypatch):
    monkeypatch.setattr(client_models, "_custom_endpoint", lambda provider: False)
    monkeypatch.setenv(TODAY_VAR, "2026-12-10")
    assert retirement("openai", "o3") is None
    assert "in 1 day" in str(shutdown_warning("openai", "o3"))
    monkeypatch.setenv(TODAY_VAR, "2026-12-11")
    assert retirement("openai", "o3-2025-04-16") == ("2026-12-11", "gpt-6.1-sol")
    assert shutdown_warning("openai", "o3") is None  # refused, not warned about
    monkeypatch.setenv(TODAY_VAR, "11/12/2026")
    with pytest.raises(ModelError, match="BATCHATA_DF_TODAY='11/12/2026' is not a date"):
        retirement("openai", "o3")


def test_from_the_date_on_the_emulator_refuses_it_as_each_provider_does(emu):
    emu.configure(today="2026-12-10")
    oa = openai.OpenAI(max_retries=0)
    assert oa.chat.completions.create(model="gpt-5-nano", messages=MSG).choices  # type: ignore[arg-type]
    emu.configure(today="2026-12-11")
    with pytest.raises(openai.NotFoundError) as oinfo:
        oa.chat.completions.create(model="gpt-5-nano", messages=MSG)  # type: ignore[arg-type]
    assert oinfo.value.code == "model_not_found"
    claude = anthropic.Anthropic(max_retries=0)
    emu.configure(today="2027-01-22")
    with (pytest.raises(anthropic.NotFoundError) as ainfo,
          pytest.warns(DeprecationWarning, match="end-of-life on January 22nd, 2027")):
        claude.messages.create(model="claude-opus-4-5", max_tokens=10, messages=MSG)
    assert ainfo.value.body["error"] == {  # type: ignore[index]
        "type": "not_found_error", "message": "model: claude-opus-4-5"}
    assert [b["mode"] for b in emu.billing()] == ["realtime"]  # the one answered


def test_gemini_answers_a_routed_model_with_its_successor_from_the_date_on(emu):
    gem = genai.Client()
    emu.configure(today="2026-11-30")
    answer = gem.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert answer.model_version == "gemini-2.5-flash"
    emu.configure(today="2026-12-01")
    answer = gem.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert answer.model_version == "gemini-3.5-flash-lite"
    answer = gem.models.generate_content(model="gemini-2.5-pro", contents="hi")
    assert answer.model_version == "gemini-3.8-flash"
    # In a batch too (billed as the successor, as Google says).
    job = gem.batches.create(model="gemini-2.5-flash", src=[
        {"contents": [{"parts": [{"text": "hi"}], "role": "user"}]}])
    done = gem.batches.get(name=str(job.name))
    assert done.dest is not None and done.dest.inlined_responses
    response = done.dest.inlined_responses[0].response
    assert response is not None and response.model_version == "gemini-3.5-flash-lite"


@pytest.mark.parametrize("streamed", [False, True])
def test_a_batch_sent_before_the_shutdown_is_collected_after_it_its_unrun_rows_failed(
    on, emu, tmp_path, streamed
):
    # Collected, never abandoned nor sent again; the requests the shutdown came before fail
    # unbilled, naming the replacement (tests/test_shutdown_in_flight.py: every provider,
    # rows answered before the shutdown kept).
    emu.configure(latency=60.0)
    on("2026-12-10")
    kw = {"model": "gpt-5-nano", "prompt": "{text}", "state": tmp_path / "old"}

    def run(**more: object) -> pl.DataFrame:
        if streamed:
            sink = tmp_path / f"out{len(emu.log())}.parquet"
            return batch_llm(ROWS.lazy(), sink=sink, **kw, **more).collect()  # type: ignore[arg-type,union-attr]
        return ROWS.pipe(batch_llm, **kw, **more)  # type: ignore[arg-type]

    with pytest.warns(ModelShutdownWarning, match="will fail"):
        first = run(wait=False)
    assert first["_status"].to_list() == ["pending", "pending"]
    on("2026-12-11")
    with pytest.raises(ModelError, match="retired by OpenAI on 2026-12-11"):
        ROWS.pipe(batch_llm, model="gpt-5-nano", prompt="{text}", state=tmp_path / "new")
    emu.advance(60)
    posts = len([e for e in emu.log() if e["method"] == "POST"])
    out = run()
    assert out["_status"].to_list() == ["failed", "failed"]
    assert all(e.startswith("model_shut_down: OpenAI shut 'gpt-5-nano' down on 2026-12-11")
               and "model='gpt-6-luna'" in e for e in out["_error"])  # fmt: skip
    assert emu.billing() == []  # none ran before the shutdown
    assert len([e for e in emu.log() if e["method"] == "POST"]) == posts  # nothing re-sent


def test_the_cli_prints_the_warning_once_and_status_names_the_shutdown(emu, tmp_path):
    pl.DataFrame({"text": [f"row {i}" for i in range(6)]}).write_parquet(tmp_path / "in.parquet")
    env = {**os.environ, **emu.env(), "PYTHONPATH": str(REPO), TODAY_VAR: "2026-11-30"}
    emu.configure(today="2026-11-30")
    base = [str(EXE), "run", "in.parquet", "--model", "gemini-2.5-flash", "--prompt",
            "{text}", "--chunk-rows", "2"]  # fmt: skip
    # Through a gateway the library does not know what is served: no warning (as with
    # check_retired); as against Google itself (no base URL), a dry run needs no key.
    bare = {k: v for k, v in env.items() if k != "GOOGLE_GEMINI_BASE_URL"}
    dry = subprocess.run([*base, "--dry-run"], cwd=tmp_path, env=bare, capture_output=True,
                         text=True, timeout=240)
    assert dry.returncode == 0, dry.stderr
    notes = [x for x in dry.stderr.splitlines() if "warning:" in x]
    assert notes == [f"batchata-df: warning: {GEMINI_NOTICE}"]
    run = subprocess.run([*base, "out.parquet"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0, run.stderr
    assert "warning:" not in run.stderr
    status = subprocess.run([str(EXE), "status", "out.parquet.state"], cwd=tmp_path,
                            env=bare, capture_output=True, text=True, timeout=240)
    assert status.returncode == 0, status.stderr
    assert f"model shutdowns:\n  {GEMINI_NOTICE}" in status.stdout


def test_the_client_and_the_emulator_schedule_the_same_dates():
    names = ["gemini-2.5-pro", "gemini-2.5-flash", "models/gemini-2.5-flash",
             "gemini-2.5-flash-lite", "gemini-3.1-flash-lite", "gemini-3.5-flash", "gpt-5",
             "gpt-5-2025-08-07", "gpt-5-mini", "gpt-5-nano-2025-08-07", "o3", "o3-2025-04-16",
             "gpt-4.1", "gpt-4.1-mini-2025-04-14", "gpt-4o", "gpt-4o-mini-2024-07-18",
             "gpt-5.1", "gpt-5.4-nano", "gpt-5.4-mini", "gpt-6-luna", "claude-opus-4-5",
             "claude-opus-4-5-20251101", "claude-opus-4-6", "claude-haiku-4-5"]  # fmt: skip
    for name in names:
        provider = ("anthropic" if name.startswith("claude") else
                    "gemini" if "gemini" in name else "openai")  # fmt: skip
        client = scheduled_shutdown(provider, name)
        emulator = model_rules._scheduled(provider, name.removeprefix("models/"))
        assert (client[0] if client else None) == (emulator[0] if emulator else None), name
        if client is not None and emulator is not None:  # routed alike
            assert (client[2] == "routed") == (emulator[1] is not None), name
    assert {p for p, *_ in SCHEDULED} == {p for p, *_ in model_rules.SCHEDULED}


def test_the_warning_horizon_is_thirty_days_inclusive(on):
    # gpt-4.1-mini: 2027-01-14. 30 days before warns (SHUTDOWN_HORIZON_DAYS), 31 do not.
    on("2026-12-15")
    assert shutdown_warning("openai", "gpt-4.1-mini") == (
        "model 'gpt-4.1-mini' is deprecated: OpenAI shuts it down on 2027-01-14 (in 30 days); "
        "use 'gpt-6-luna' instead (https://developers.openai.com/api/docs/deprecations)"
    )
    on("2026-12-14")
    assert shutdown_warning("openai", "gpt-4.1-mini") is None


def test_the_unpinned_date_is_the_utc_date_in_any_time_zone():
    # Unpinned, today() is the UTC date, not the local one: at any moment one of UTC+14
    # and UTC-12 has a local date other than UTC's.
    code = (
        "import datetime as dt; from batchata_df.models import today\n"
        "a = dt.datetime.now(dt.UTC).date(); t = today(); local = dt.date.today()\n"
        "b = dt.datetime.now(dt.UTC).date(); print(t in (a, b), local not in (a, b))"
    )
    env = {k: v for k, v in os.environ.items() if k != TODAY_VAR}
    differs = []
    for zone in ("Pacific/Kiritimati", "Etc/GMT+12"):
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=120, check=True, env={**env, "TZ": zone})
        is_utc, local_differs = child.stdout.split()
        assert is_utc == "True", zone
        differs.append(local_differs == "True")
    assert any(differs)  # the test's premise: one zone told the two clocks apart


def test_status_of_a_realtime_folder_warns_without_the_batch_window_then_says_shut_down(
    on, emu, tmp_path
):
    from click.testing import CliRunner

    from batchata_df.cli import cli

    on("2026-11-30")
    state = tmp_path / "s"
    with pytest.warns(ModelShutdownWarning):
        out = ROWS.pipe(batch_llm, model="gemini-2.5-flash", prompt="{text}", state=state,
                        mode="realtime")
    assert out["_status"].to_list() == ["completed", "completed"]
    shown = CliRunner().invoke(cli, ["status", str(state)])
    assert shown.exit_code == 0, shown.output
    # Its rows are answered in seconds: no 48 h batch window to cross the shutdown.
    assert f"model shutdowns:\n  {GEMINI_NOTICE.split('. A batch')[0]}\n" in shown.output
    on("2026-12-01")
    shown = CliRunner().invoke(cli, ["status", str(state)])
    assert shown.exit_code == 0, shown.output
    assert (
        "model shutdowns:\n  model 'gemini-2.5-flash' is answered by 'gemini-3.5-flash-lite' "
        "since 2026-12-01 (the provider routes it there): requests it ran from then on were "
        "answered by 'gemini-3.5-flash-lite' and are priced at its rates; rows not collected "
        "yet can still be collected; rows never sent are sent by the next call with this "
        "folder, answered by 'gemini-3.5-flash-lite'\n"
    ) in shown.output
