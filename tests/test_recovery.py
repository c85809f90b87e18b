"""Edge cases of resume and failure handling found in review, each reproduced end to end."""

from __future__ import annotations

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import ProviderUnavailableWarning, batch_llm
from batchata_df.state import JOB_EVENTS, spent_usd


class A(BaseModel):
    label: str


def posts(emu, suffix="/batches"):
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith(suffix)]


def test_retried_failures_are_billed_each_time_and_the_cap_holds(emu, tmp_path):
    df = pl.DataFrame({"t": ["[[emulator:invalid]] always bad"]})
    kwargs = {"schema": A, "model": "gpt-4.1-mini", "prompt": "{t}", "state": tmp_path / "s",
              "prices": {"gpt-4.1-mini": (1000.0, 1000.0)}, "params": {"max_tokens": 16}}
    first = df.pipe(batch_llm, **kwargs)
    one = float(first["_cost_usd"][0])
    assert first["_status"][0] == "failed" and one > 0
    plan = df.pipe(batch_llm, dry_run=True, retry_failed=True, **kwargs)
    assert plan["_status"][0] == "planned"  # the dry run applies the same retry rule
    worst = float(plan["_est_cost_usd"][0])
    assert worst >= one
    cap = one + worst + one / 2  # room for exactly one retry at its worst case
    for _ in range(4):
        out = df.pipe(batch_llm, max_cost_usd=cap, retry_failed=True, **kwargs)
    # Each attempt was billed; the cap admitted only what fits, counting all attempts.
    assert spent_usd(tmp_path / "s") <= cap
    assert len(posts(emu)) == 2  # the first run and one retry; the next did not fit
    assert out["_cost_usd"][0] == spent_usd(tmp_path / "s")  # the row shows all it cost
    assert out["_status"][0] == "cancelled"


def test_null_prompt_never_borrows_an_empty_prompts_answer(emu):
    df = pl.DataFrame({"t": ["x", None, ""]})
    out = df.pipe(batch_llm, model="gpt-4.1-mini", prompt=pl.col("t"))
    # An empty prompt is refused before sending too (nothing to answer, but it would be
    # paid for); neither row has a job, so neither can borrow another row's answer.
    assert out["_status"].to_list() == ["completed", "failed", "failed"]
    assert out["response"][1] is None and out["_batch_id"][1] is None
    assert out["_job_id"][1] is None and out["_job_id"][2] is None
    assert out["_error"][1].startswith("input: the prompt is null")
    assert out["_error"][2].startswith("input: the prompt is empty")
    assert out["_cost_usd"][1] == out["_cost_usd"][2] == 0.0
    assert len(emu.billing()) == 1


def test_a_batch_the_provider_no_longer_knows_ends_failed_not_hanging(emu, tmp_path):
    emu.configure(latency=30)
    state = tmp_path / "s"
    kwargs = {"schema": A, "model": "gpt-4.1-mini", "prompt": "{t}", "state": state}
    df = pl.DataFrame({"t": ["a", "b"]})
    df.pipe(batch_llm, wait=False, **kwargs)
    emu.inject_fault(method="GET", path_regex=r"/openai/v1/batches/batch_", status=404,
                     times=None)
    out = df.pipe(batch_llm, time_limit=3, **kwargs)
    # failed, not cancelled at the time limit: the run gave the batch up, it did not hang
    assert out["_status"].to_list() == ["failed", "failed"]
    assert out["_error"].str.starts_with("provider_error:").all()
    assert len(posts(emu)) == 1


def test_a_failed_download_is_retried_and_other_batches_still_collected(emu, tmp_path, monkeypatch):
    from batchata_df.providers.openai import OpenAIProvider

    # Two attempts per download (one SDK retry): the 4 faults make downloads fail twice
    # past the SDK's retries, and the run itself retries them. (With the default 5 SDK
    # retries the SDK alone absorbed all 4, after ~7 s of its backoff: the run never saw
    # a failed download.)
    monkeypatch.setattr(OpenAIProvider, "sdk_max_retries", 1)
    emu.inject_fault(method="GET", path_regex=r"/openai/v1/files/.*/content", status=500,
                     times=4)  # beyond the SDK's own retries twice
    df = pl.DataFrame({"t": [f"r{i}" for i in range(4)]})
    out = df.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}",
                  items_per_batch=2, state=tmp_path / "s")
    assert out["_status"].to_list() == ["completed"] * 4
    assert len(posts(emu)) == 2


def test_time_limit_reason_survives_a_crash_after_the_cancel_request(emu, tmp_path):
    import json
    import urllib.request

    from batchata_df.state import StateStore

    emu.configure(latency=30)
    state = tmp_path / "s"
    kwargs = {"schema": A, "model": "gpt-4.1-mini", "prompt": "{t}", "state": state}
    df = pl.DataFrame({"t": ["a", "b"]})
    df.pipe(batch_llm, wait=False, **kwargs)
    # As if a run had asked the provider to cancel at its time limit and then died.
    last = pl.read_parquet(state / "batches" / "*.parquet").sort("seq").row(-1, named=True)
    fingerprint = json.loads((state / "manifest.json").read_text())["fingerprint"]
    StateStore(state, fingerprint).append_batch(
        batch_key=last["batch_key"], provider="openai", model="gpt-4.1-mini",
        provider_batch_id=last["provider_batch_id"], status="cancel_requested",
        detail="time_limit",
    )
    request = urllib.request.Request(
        f"{emu.openai_base_url}/batches/{last['provider_batch_id']}/cancel", method="POST",
        headers={"Authorization": "Bearer sk-test"}, data=b"",
    )
    urllib.request.urlopen(request).close()
    emu.advance(60)  # the cancelled batch ends (its cancel delay) on the emulator's clock
    # The second call's own batch answers at once: created with latency=30, it kept the
    # call polling ~40 real seconds (backoff) for nothing the assertions read.
    emu.configure(latency=0)
    out = df.pipe(batch_llm, **kwargs)
    # The collected batch's rows ended cancelled with the earlier call's reason ...
    # By the table's schema, as README says: a format 2 part leaves out its all-null columns.
    events = pl.scan_parquet(state / "jobs" / "*.parquet", schema=JOB_EVENTS,
                             missing_columns="insert", extra_columns="ignore").collect()
    cancelled = events.filter(pl.col("status") == "cancelled")
    assert cancelled.height == 2
    assert cancelled["error"].str.contains("time_limit").all()
    # ... and, being this call's rows and unbilled, were sent again by it, once each.
    assert out["_status"].to_list() == ["completed", "completed"]
    assert len(emu.billing()) == 2


def test_batches_of_a_provider_missing_from_this_frame_still_count(emu, tmp_path):
    emu.configure(latency=1000)
    state = tmp_path / "s"
    df = pl.DataFrame({"t": ["a", "b"], "m": ["gpt-4.1-mini", "claude-haiku-4-5"]})
    kwargs = {"schema": A, "model": pl.col("m"), "prompt": "{t}", "state": state}
    df.pipe(batch_llm, wait=False, **kwargs)
    emu.advance(1000)  # both batches end on the emulator's clock
    # The next call passes only the OpenAI row: the Anthropic batch is still collected.
    df.head(1).pipe(batch_llm, **kwargs)
    out = df.pipe(batch_llm, **kwargs)
    assert out["_status"].to_list() == ["completed", "completed"]
    assert len(posts(emu, "/openai/v1/batches")) == 1
    assert len(posts(emu, "/messages/batches")) == 1


def test_a_create_that_keeps_failing_is_sent_again_later(emu, tmp_path):
    # The first two creates fail (we never let the SDK retry a create blindly).
    emu.inject_fault(method="POST", path_regex=r"^/openai/v1/batches$", status=500, times=2)
    df = pl.DataFrame({"t": ["a", "b"]})
    out = df.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}",
                  state=tmp_path / "s")
    assert out["_status"].to_list() == ["completed", "completed"]
    ok = [e for e in posts(emu) if e["status"] == 200]
    assert len(ok) == 1  # exactly one batch exists, and it is the one we collected
    events = pl.read_parquet(tmp_path / "s" / "batches" / "*.parquet")
    assert "abandoned" in events["status"].to_list()


def test_a_lost_create_answer_is_found_not_resubmitted(emu, tmp_path):
    # The provider creates the batch but the answer is lost (e.g. a dropped connection).
    emu.inject_fault(method="POST", path_regex=r"^/openai/v1/batches$", status=500, times=1,
                     when="after")
    df = pl.DataFrame({"t": ["a", "b"]})
    out = df.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}",
                  state=tmp_path / "s")
    assert out["_status"].to_list() == ["completed", "completed"]
    # One create reached the provider; no blind retry made a second (paid) batch.
    assert len(posts(emu)) == 1
    listed = [e for e in emu.log() if e["method"] == "GET" and e["path"] == "/openai/v1/batches"]
    assert listed, "the failed create must be followed by a lookup"


def test_a_batch_the_provider_refuses_outright_fails_its_rows(emu, tmp_path):
    emu.inject_fault(method="POST", path_regex=r"^/openai/v1/batches$", status=400, times=1)
    df = pl.DataFrame({"t": ["a", "b"]})
    out = df.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}",
                  state=tmp_path / "s")
    assert out["_status"].to_list() == ["failed", "failed"]
    assert out["_error"].str.starts_with("submit_failed:").all()
    assert (out["_cost_usd"] == 0).all()
    again = df.pipe(batch_llm, schema=A, model="gpt-4.1-mini", prompt="{t}",
                    state=tmp_path / "s", retry_failed=True)
    assert again["_status"].to_list() == ["completed", "completed"]


def test_a_lost_gemini_create_answer_is_found_by_display_name(emu, tmp_path):
    emu.inject_fault(method="POST", path_regex=r":batchGenerateContent$", status=503, times=1,
                     when="after")
    df = pl.DataFrame({"t": ["a", "b"]})
    out = df.pipe(batch_llm, schema=A, model="gemini-2.5-flash", prompt="{t}",
                  state=tmp_path / "s")
    assert out["_status"].to_list() == ["completed", "completed"]
    created = [e for e in emu.log()
               if e["method"] == "POST" and e["path"].endswith(":batchGenerateContent")]
    assert len(created) == 1


def test_a_failed_create_never_adopts_this_runs_other_batches(emu, tmp_path):
    # Anthropic batches carry no tag: the lookup after a failed create must not take a batch
    # this state folder already knows (same size, same minutes) for the missing one.
    emu.configure(latency=3.0)
    state = tmp_path / "s"
    kw = {"schema": A, "model": "claude-haiku-4-5", "prompt": "{t}", "state": state,
          "items_per_batch": 3}
    df = pl.DataFrame({"t": [f"row {i}" for i in range(6)]})
    df.head(3).pipe(batch_llm, wait=False, **kw)
    emu.inject_fault(method="POST", path_regex=r"/anthropic/v1/messages/batches$",
                     status=500, times=1)
    out = df.pipe(batch_llm, **kw)
    assert out["_status"].to_list() == ["completed"] * 6
    first, second = out["_batch_id"][0], out["_batch_id"][3]
    assert first != second


def test_lookup_failure_after_a_failed_create_stops_submitting_without_raising(emu, tmp_path):
    state = tmp_path / "s"
    emu.inject_fault(method="POST", path_regex=r"^/openai/v1/batches$", status=503, times=1)
    emu.inject_fault(method="GET", path_regex=r"^/openai/v1/batches(\?.*)?$", status=503,
                     times=None, retry_after_ms=1)
    df = pl.DataFrame({"t": [f"r{i}" for i in range(6)]})
    kw = {"schema": A, "model": "gpt-4.1-mini", "prompt": "{t}", "state": state,
          "items_per_batch": 3, "max_parallel_batches": 1}
    with pytest.warns(ProviderUnavailableWarning, match="3 pending.*3 cancelled"):
        out = df.pipe(batch_llm, provider_patience=1.0, **kw)
    # The batch whose create failed may exist: its rows stay pending with the open intent
    # (and the reason); the rest were not sent in this call.
    assert out["_status"].to_list() == ["pending"] * 3 + ["cancelled"] * 3
    assert out["_error"].str.contains("provider_unavailable: ").all()
    assert out["_error"][3].startswith("cancelled: provider_unavailable: ")
    assert "503" in out["_error"][0]
    emu.clear_faults()
    again = df.pipe(batch_llm, **kw)  # resolves the intent first, then sends the rest
    assert again["_status"].to_list() == ["completed"] * 6
    assert len([e for e in posts(emu) if e["status"] == 200]) == 2


CHILD = """
import sys, time, polars as pl
if float(sys.argv[2]):
    real = time.time_ns
    time.time_ns = lambda: real() - int(float(sys.argv[2]) * 1e9)  # this clock is behind
from batchata_df import batch_llm
limit = float(sys.argv[3]) or None
out = pl.DataFrame({"t": ["a", "b", "c"]}).pipe(
    batch_llm, model="gpt-4.1-mini", prompt="{t}", state=sys.argv[1], time_limit=limit)
print(out["_status"].to_list())
"""


def test_a_clock_that_is_behind_does_not_reorder_events(emu, tmp_path):
    import os
    import subprocess
    import sys

    emu.configure(latency=0.2)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    state = tmp_path / "s"
    outputs = []
    for skew, limit in [(0, 1e-6), (3600, 0), (0, 0)]:
        r = subprocess.run([sys.executable, str(script), str(state), str(skew), str(limit)],
                           capture_output=True, text=True, env=dict(os.environ), timeout=240)
        assert r.returncode == 0, r.stderr
        outputs.append(r.stdout.strip())
    assert outputs[1] == outputs[2] == "['completed', 'completed', 'completed']"
    assert len(posts(emu)) == 1  # never paid twice
