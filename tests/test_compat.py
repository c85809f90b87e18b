"""The seed library's builder API as a drop-in: its README examples run as scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm
from batchata_df.compat import Batch, Citation, JobResult
from batchata_df.errors import ColumnError, ConfigError, FileInputError, ModelError, ParamError
from batchata_df.jobs import build_jobs
from batchata_df.providers import make_provider
from batchata_df.providers.base import RequestSpec
from batchata_df.schema import AnswerSchema

EXAMPLES = Path(__file__).parent / "seed_examples"


class Invoice(BaseModel):
    number: str
    total: float


def _pdf(path: Path, lines: list[str]) -> None:
    from reportlab.lib.pagesizes import letter
    from reportlab.pdfgen import canvas

    path.parent.mkdir(parents=True, exist_ok=True)
    c = canvas.Canvas(str(path), pagesize=letter)
    for i, text in enumerate(lines):
        c.drawString(72, 700, text)
        if i < len(lines) - 1:
            c.showPage()
    c.save()


def run_example(name: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=240,
    )


def posts(emu, suffix):
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith(suffix)]


def test_seed_quick_start_runs_including_its_dry_run(emu, tmp_path):
    # The seed's examples name claude-sonnet-4-20250514, which Anthropic retired on
    # 2026-06-15 (it now answers not_found_error): run them where it is still served.
    emu.configure(serve_retired=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Quarterly report: revenue up 4 percent.")
    (tmp_path / "docs" / "b.txt").write_text("Minutes: the board met on Tuesday.")
    r = run_example("quick_start.py", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "dry run, nothing was sent. rows: 2 done" in r.stderr  # the plan: both answered
    written = sorted(p.name for p in (tmp_path / "output").glob("*.json"))
    assert written == ["job-000000.json", "job-000001.json"]
    saved = json.loads((tmp_path / "output" / "job-000000.json").read_text())
    assert saved["error"] is None and saved["raw_response"].startswith("Emulated answer")
    assert len(posts(emu, "/messages/batches")) == 1  # the dry run sent nothing


def test_the_seed_examples_temperature_on_claude_is_refused_before_sending(emu, tmp_path):
    # Its set_default_params(..., temperature=0.0) on Claude: API version 2026-10-21, which
    # anthropic 2.x sends, refuses it on every model (tests/test_anthropic_api_version.py),
    # so every row would fail after the batch was created: refused before, in its words.
    emu.configure(serve_retired=True)
    for i in (1, 2, 3):
        _pdf(tmp_path / "path" / "to" / f"invoice{i}.pdf", [f"Invoice INV-{i} total {i}.00"])
    (tmp_path / "invoice_results").mkdir()
    r = run_example("complete_example.py", tmp_path)
    assert r.returncode != 0
    assert "ParamError" in r.stderr
    assert "temperature (of set_default_params / add_job)" in r.stderr
    assert "2026-10-21" in r.stderr
    assert posts(emu, "/messages/batches") == []  # nothing was sent


def _without_temperature(name: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The seed's example with its ``temperature=0.0`` removed (Claude refuses it today)."""
    script = (EXAMPLES / name).read_text()
    assert ", temperature=0.0" in script
    (cwd / name).write_text(script.replace(", temperature=0.0", ""))
    return subprocess.run([sys.executable, name], cwd=cwd, env=dict(os.environ),
                          capture_output=True, text=True, timeout=240)  # fmt: skip


def test_seed_complete_example_runs_without_its_temperature_and_again(emu, tmp_path):
    # The seed's examples name claude-sonnet-4-20250514, which Anthropic retired on
    # 2026-06-15 (it now answers not_found_error): run them where it is still served.
    emu.configure(serve_retired=True)
    for i in (1, 2, 3):
        _pdf(tmp_path / "path" / "to" / f"invoice{i}.pdf", [
            f"Invoice number INV-00{i}. Vendor: Acme Tools {i}.",
            f"Total amount: {i}00.50 USD. Payment status: paid.",
        ])
    results_dir = tmp_path / "invoice_results"
    results_dir.mkdir()
    (results_dir / "my_notes.txt").write_text("keep me")
    r = _without_temperature("complete_example.py", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Invoice: ") == 3
    assert "(page: [1" in r.stdout or "(page: [2" in r.stdout  # pages of the cited PDF
    assert len(posts(emu, "/messages/batches")) == 1  # the second run() resumed
    # One JSON per job, the raw answers, and nothing of the user's deleted.
    assert (results_dir / "my_notes.txt").read_text() == "keep me"
    names = sorted(p.name for p in results_dir.glob("job-*.json"))
    assert names == ["job-000000.json", "job-000001.json", "job-000002.json"]
    raws = sorted(p.name for p in (results_dir / "raw_files" / "responses").iterdir())
    assert raws == ["job-000000_raw.json", "job-000001_raw.json", "job-000002_raw.json"]
    raw = json.loads((results_dir / "raw_files" / "responses" / "job-000000_raw.json").read_text())
    # Anthropic's own results line (tests/test_raw_responses.py compares it byte for byte).
    assert raw["result"]["type"] == "succeeded"
    assert raw["result"]["message"]["model"].startswith("claude-sonnet-4")
    saved = json.loads((results_dir / "job-000000.json").read_text())
    assert set(saved["parsed_response"]) == {
        "invoice_number", "total_amount", "vendor", "payment_status"}
    assert isinstance(saved["citations"], list) and saved["citations"]
    assert {"text", "source", "page", "metadata"} == set(saved["citations"][0])
    # The script a second time: reuse_state=False starts afresh (as in the seed) without
    # raising, and keeps the earlier checkpoint aside instead of deleting it.
    r = _without_temperature("complete_example.py", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Invoice: ") == 3
    assert len(posts(emu, "/messages/batches")) == 2
    assert len(list(tmp_path.glob("invoice_state.previous-*"))) == 1
    assert (tmp_path / "invoice_state").is_dir()


def test_the_same_script_with_reuse_state_resumes_without_paying_twice(emu, tmp_path):
    # The seed's examples name claude-sonnet-4-20250514, which Anthropic retired on
    # 2026-06-15 (it now answers not_found_error): run them where it is still served.
    emu.configure(serve_retired=True)
    script = (EXAMPLES / "complete_example.py").read_text().replace(
        "reuse_state=False", "reuse_state=True").replace(", temperature=0.0", "")
    (EXAMPLES.parent / "seed_examples").exists()
    for i in (1, 2, 3):
        _pdf(tmp_path / "path" / "to" / f"invoice{i}.pdf", [f"Invoice INV-{i} total {i}.00"])
    (tmp_path / "resume.py").write_text(script)
    env = dict(os.environ)
    for _ in range(2):
        r = subprocess.run([sys.executable, "resume.py"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("Invoice: ") == 3
    assert len(posts(emu, "/messages/batches")) == 1
    assert not list(tmp_path.glob("invoice_state.previous-*"))


def test_dotenv_example_imports(tmp_path):
    r = run_example("dotenv_example.py", tmp_path)
    assert r.returncode == 0, r.stderr


def test_job_result_has_the_seed_types(emu, tmp_path):
    doc = tmp_path / "inv.pdf"
    _pdf(doc, ["Invoice number INV-7, total 12.50 EUR."])
    batch = Batch(results_dir=tmp_path / "out").set_default_params(model="claude-haiku-4-5")
    batch.add_job(file=doc, prompt="Extract", response_model=Invoice, enable_citations=True)
    batch.add_job(prompt="[[emulator:invalid]]", response_model=Invoice)
    batch.add_job(prompt="Say hi")
    results = batch.run().results()
    cited, plain = sorted(results["completed"], key=lambda r: r.job_id)
    (failed,) = results["failed"]
    # Structured, with citations: the flat list and the per-field lists are Citations.
    assert isinstance(cited.parsed_response, Invoice)
    assert json.loads(cited.raw_response) == cited.parsed_response.model_dump()
    assert isinstance(cited.citations, list) and cited.citations
    assert all(isinstance(c, Citation) for c in cited.citations)
    assert set(cited.citation_mappings) == {"number", "total"}
    for cites in cited.citation_mappings.values():
        assert all(isinstance(c, Citation) for c in cites)
        for c in cites:
            assert c in cited.citations  # the flat list holds every field's citations
    first = cited.citations[0]
    assert first.page == 1 and first.text and first.source
    assert cited.input_tokens > 0 and cited.output_tokens > 0 and cited.cost_usd > 0
    assert cited.batch_id and cited.error is None and cited.is_success
    # Failed validation: the model's own text is kept as raw_response.
    assert failed.parsed_response is None and not failed.is_success
    assert failed.error.startswith("schema_validation")
    assert failed.raw_response is not None and json.loads(failed.raw_response)
    # No response model: raw_response is the text; no parsed response (as in the seed).
    assert plain.parsed_response is None
    assert plain.raw_response.startswith("Emulated answer")
    assert plain.citations is None and plain.citation_mappings is None
    # save_to_json creates the folders.
    cited.save_to_json(tmp_path / "deep" / "er" / "r.json")
    saved = json.loads((tmp_path / "deep" / "er" / "r.json").read_text())
    assert saved["parsed_response"] == cited.parsed_response.model_dump(mode="json")
    assert saved["citation_mappings"]["number"][0].keys() == {"text", "source", "page",
                                                               "metadata"}
    assert isinstance(JobResult(job_id="x").to_dict(), dict)


def test_a_response_model_on_the_seeds_default_claude_model_is_parsed(emu, tmp_path):
    """The seed's README sets claude-sonnet-4-20250514, which takes no structured output:
    the seed asked it for JSON in the system prompt, and so does this library."""
    # The seed's README names claude-sonnet-4-20250514, which Anthropic retired on
    # 2026-06-15 (it now answers not_found_error): run them where it is still served.
    emu.configure(serve_retired=True)
    batch = Batch(results_dir=tmp_path / "out").set_default_params(
        model="claude-sonnet-4-20250514"  # the seed's temperature=0.0: refused today
    )
    for i in range(4):
        batch.add_job(prompt=f"Extract invoice {i}", response_model=Invoice)
    results = batch.run().results()
    assert len(results["completed"]) == 4 and not results["failed"]
    for r in results["completed"]:
        assert isinstance(r.parsed_response, Invoice)
        assert json.loads(r.raw_response) == r.parsed_response.model_dump()


def test_status_and_dry_run_results(emu, tmp_path):
    batch = Batch(results_dir=tmp_path / "out").set_default_params(model="gpt-4.1-mini")
    batch.add_job(prompt="a", response_model=Invoice).add_job(prompt="b")
    dry = batch.run(dry_run=True)
    assert dry.results() == {"completed": [], "failed": [], "cancelled": []}
    assert dry.status()["planned"] == 2 and dry.status()["estimated_cost_usd"] > 0
    assert emu.log() == []
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("job-*.json"))
    stats = batch.run().status()
    assert stats["completed"] == 2 and stats["is_complete"] and stats["cost_usd"] > 0


def test_batch_llm_dry_run_on_a_frame_with_plan_column_names(emu, tmp_path):
    """A frame with a `_model` column used to crash the dry run with DuplicateError."""
    frame = pl.DataFrame({"_model": ["gpt-4.1-mini"], "text": ["hi"]})
    with pytest.raises(ColumnError, match=r"dry-run plan would have columns \['_model'\]"):
        batch_llm(frame, model=pl.col("_model"), prompt="{text}", dry_run=True)
    # Renamed as the message says, the dry run works; the real run works either way.
    plan = batch_llm(frame.rename({"_model": "model_in"}), model=pl.col("model_in"),
                     prompt="{text}", dry_run=True)
    assert plan["_status"].to_list() == ["planned"]
    out = batch_llm(frame, model=pl.col("_model"), prompt="{text}")
    assert out["_status"].to_list() == ["completed"]
    assert emu.log()  # only the real run sent anything


# Short turns: the emulator's text answer quotes the first six words of the request.
CONVERSATION = [
    {"role": "system", "content": "Terse."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "Times3?"},
]


def _encoded(model: str) -> dict:
    frame = pl.DataFrame({
        "prompt": ["Times3?"], "system": ["Terse."],
        "h": [CONVERSATION[1:3]],
    })
    jobs = build_jobs(frame, model=model, prompt=pl.col("prompt"), system=pl.col("system"),
                      salt="s", scheme="hmac-sha256", history="h")
    provider = make_provider(jobs["provider"][0], offline=True)
    spec = RequestSpec(schema=AnswerSchema(None), params={"max_tokens": 50})
    return json.loads(provider.encode(jobs, spec)[0])


def test_history_is_encoded_whole_for_every_provider():
    body = _encoded("gpt-4.1-mini")["body"]
    assert body["messages"] == CONVERSATION
    params = _encoded("claude-haiku-4-5")["params"]
    assert params["system"] == "Terse."
    assert params["messages"] == CONVERSATION[1:]
    request = _encoded("gemini-2.5-flash")["request"]
    assert request["systemInstruction"] == {"parts": [{"text": "Terse."}]}
    assert request["contents"] == [
        {"role": "user", "parts": [{"text": "2+2?"}]},
        {"role": "model", "parts": [{"text": "4."}]},
        {"role": "user", "parts": [{"text": "Times3?"}]},
    ]


@pytest.mark.parametrize("model", ["gpt-4.1-mini", "claude-haiku-4-5", "gemini-2.5-flash"])
def test_messages_are_sent_whole_through_each_provider(emu, tmp_path, model):
    batch = Batch(results_dir=tmp_path / "out").set_default_params(model=model)
    batch.add_job(messages=CONVERSATION)
    batch.add_job(messages=[{"role": "user", "content": "Only this"}])
    results = batch.run().results()
    assert results["failed"] == [], [r.error for r in results["failed"]]
    answers = sorted(r.raw_response for r in results["completed"])
    assert len(answers) == 2
    # The emulator's text answer quotes the request's text, every message in order.
    assert any("'Terse. 2+2? 4. Times3?'" in a for a in answers), answers
    assert any("'Only this'" in a for a in answers), answers
    if model.startswith("gpt"):
        from openai import OpenAI

        client = OpenAI()
        bodies = [
            json.loads(line)["body"]
            for f in client.files.list(purpose="batch").data
            for line in client.files.content(f.id).text.splitlines()
        ]
        sent = [b["messages"] for b in bodies]
        assert CONVERSATION in sent
        assert [{"role": "user", "content": "Only this"}] in sent


def test_history_changes_the_job_and_resumes(emu, tmp_path):
    frame = pl.DataFrame({"q": ["Times3?", "Times3?"],
                          "h": [CONVERSATION[1:3], [CONVERSATION[1]]]})
    out = batch_llm(frame, model="gpt-4.1-mini", prompt="{q}", history="h",
                    state=tmp_path / "s")
    assert out["_job_id"].n_unique() == 2  # another history is another request
    assert out["_status"].to_list() == ["completed", "completed"]
    before = len(posts(emu, "/batches"))
    again = batch_llm(frame, model="gpt-4.1-mini", prompt="{q}", history="h",
                      state=tmp_path / "s")
    assert len(posts(emu, "/batches")) == before
    assert again["response"].to_list() == out["response"].to_list()


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        ([], "at least one message"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
         "last of messages= must be a user message"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
          {"role": "user", "content": "c"}], "system message may only come first"),
        ([{"role": "tool", "content": "a"}], "role 'system', 'user' or 'assistant'"),
        ([{"role": "user", "content": [{"type": "text", "text": "a"}]}], "must be text"),
    ],
)
def test_bad_messages_are_clear_errors(tmp_path, messages, needle):
    batch = Batch(results_dir=tmp_path).set_default_params(model="gpt-4.1-mini")
    with pytest.raises(ConfigError, match=needle):
        batch.add_job(messages=messages)


def test_bad_history_column_is_a_clear_error(emu):
    frame = pl.DataFrame({"q": ["x"], "h": [[{"role": "system", "content": "s"}]]})
    with pytest.raises(ColumnError, match="role 'user' or 'assistant'"):
        batch_llm(frame, model="gpt-4.1-mini", prompt="{q}", history="h")
    with pytest.raises(ColumnError, match="did you mean 'h'"):
        batch_llm(frame, model="gpt-4.1-mini", prompt="{q}", history="hh")
    assert emu.log() == []


def test_builder_runs_jobs_and_keeps_failures(emu, tmp_path):
    batch = (
        Batch(results_dir=tmp_path / "out", items_per_batch=2)
        .set_default_params(model="gpt-4.1-mini", temperature=0.0)
        .add_cost_limit(usd=5.0)
        .add_time_limit(minutes=5)
    )
    for i in range(3):
        batch.add_job(prompt=f"Extract invoice {i}", response_model=Invoice)
    batch.add_job(prompt="[[emulator:invalid]]", response_model=Invoice)
    batch.add_job(messages=[{"role": "user", "content": "Say hi"}])
    run = batch.run()
    results = run.results()
    assert len(results["completed"]) == 4
    assert len(results["failed"]) == 1
    assert isinstance(results["completed"][0].parsed_response, Invoice)
    assert results["failed"][0].error.startswith("schema_validation")
    texts = [r for r in results["completed"] if r.parsed_response is None]
    assert len(texts) == 1 and texts[0].raw_response.startswith("Emulated answer")
    assert (tmp_path / "out" / "state").is_dir()  # results are never deleted
    # Running again pays nothing twice.
    before = len([e for e in emu.log() if e["method"] == "POST"])
    batch.run()
    assert len([e for e in emu.log() if e["method"] == "POST"]) == before


def test_on_progress_with_the_seeds_three_arguments(emu, tmp_path):
    seen = []
    batch = Batch(results_dir=tmp_path / "out").set_default_params(model="gpt-4.1-mini")
    batch.add_cost_limit(usd=1.0).add_job(prompt="a").add_job(prompt="b")
    batch.run(on_progress=lambda s, t, b: seen.append((s, t, b)), progress_interval=0.0)
    stats, elapsed, batches = seen[-1]
    assert stats["completed"] == 2 and stats["total"] == 2 and stats["is_complete"]
    assert stats["cost_limit_usd"] == 1.0 and stats["cost_usd"] > 0
    assert stats["batches_total"] >= 1 and isinstance(batches, dict) and elapsed >= 0
    snaps = []
    batch.run(on_progress=snaps.append)
    assert snaps[-1].completed == 2


def test_seed_progress_counts_every_providers_batches_finished(emu, tmp_path):
    """The seed-style callback's ``batches_completed`` counts OpenAI's ``completed`` and
    Gemini's ``JOB_STATE_SUCCEEDED`` batches too, not only Anthropic's ``ended``."""
    emu.configure(latency=5.0)
    seen = []
    batch = Batch(results_dir=tmp_path / "out")
    for model in ("gpt-4.1-mini", "claude-haiku-4-5", "gemini-2.5-flash"):
        batch.add_job(prompt="a", model=model)
    batch.run(on_progress=lambda s, t, b: seen.append((dict(s), dict(b))),
              progress_interval=0.0)
    stats, batches = seen[-1]
    assert stats["is_complete"] and stats["completed"] == 3
    assert (stats["batches_total"], stats["batches_completed"], stats["batches_pending"]) == (
        3, 3, 0), seen[-3:]
    assert batches == {"collected": 3}
    words = {w for _, b in seen for w in b}
    assert words <= {"submitted", "running", "ended", "collected"}, words
    assert "running" in words  # the three providers' own running words counted as one


def test_run_without_waiting_then_collect(emu, tmp_path):
    emu.configure(latency=1000.0)
    batch = Batch(results_dir=tmp_path / "out").set_default_params(model="gpt-4.1-mini")
    batch.add_job(prompt="a")
    first = batch.run(wait=False)
    assert first.status()["pending"] == 1 and first.results()["completed"] == []
    assert not list((tmp_path / "out").glob("job-*.json"))  # nothing ended yet
    emu.advance(1000.0)  # the batch ends on the emulator's clock
    second = batch.run()
    assert [r.job_id for r in second.results()["completed"]] == ["job-000000"]
    assert len(posts(emu, "/batches")) == 1


# -- errors in this API's words (new-user review: "pass files='<column of file paths>'") ----


def test_citations_without_a_file_name_add_job_file_before_any_request(emu, tmp_path):
    batch = Batch(results_dir=tmp_path).set_default_params(model="gpt-4.1-mini")
    with pytest.raises(ConfigError) as info:
        batch.add_job(prompt="y", enable_citations=True)
    message = str(info.value)
    assert "add_job(file='<path to a PDF or text file>', prompt=..., enable_citations=True)" in (
        message
    )
    assert "files=" not in message
    assert len(batch) == 0
    assert emu.log() == []


@pytest.mark.parametrize(
    ("model", "kwargs", "error", "said", "unsaid"),
    [
        # batch_llm: "use a Claude model ... or remove citations=True"
        ("gpt-4.1-mini", {"enable_citations": True}, ConfigError,
         "or remove enable_citations=True", "remove citations=True"),
        # batch_llm: "use 'gpt-5' with params={'reasoning_effort': 'high'} instead"
        ("gpt-5-pro", {}, ModelError,
         "with set_default_params(reasoning_effort='high') (or add_job(...))", "params={"),
        # batch_llm: "params['temperature'] must be between 0 and 2 for openai"
        ("gpt-4.1-mini", {"temperature": 3.0}, ConfigError,
         "temperature (of set_default_params / add_job) must be between 0 and 2", "params["),
        # batch_llm: "...('temperature: Extra inputs are not permitted'): params['temperature'];
        # remove it" (Claude refuses any value: it read "must be between 0 and 1")
        ("claude-haiku-4-5", {"temperature": 3.0}, ParamError,
         "temperature (of set_default_params / add_job); remove it", "params["),
        # batch_llm: "files column '__compat_file', row 0, value '...': the file type ..."
        ("gpt-4.1-mini", {"file": "x.xyz"}, FileInputError,
         "add_job(file=...) file '", "__compat"),
    ],
)
def test_errors_from_batch_llm_are_told_in_the_compat_api_words(
    emu, tmp_path, model, kwargs, error, said, unsaid
):
    doc = tmp_path / "a.txt"
    doc.write_text("Quarterly report: revenue up 4 percent.")
    (tmp_path / "x.xyz").write_bytes(b"\x00\x01")
    kwargs = {"file": doc, **kwargs}
    if kwargs["file"] == "x.xyz":
        kwargs["file"] = tmp_path / "x.xyz"
    batch = Batch(results_dir=tmp_path / "out").set_default_params(model=model)
    batch.add_job(prompt="What changed?", **kwargs)
    with pytest.raises(error) as info:
        batch.run()
    assert said in str(info.value)
    assert unsaid not in str(info.value)
    assert emu.log() == []
    assert emu.billing() == []


@pytest.mark.parametrize(
    ("job", "needle"),
    [
        ({"prompt": ""}, r"add_job\(prompt=''\) has no text to send"),
        ({"prompt": " \n"}, r"add_job\(prompt=' \\n'\) has no text to send"),
        ({"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "a"}]},
         r"messages\[0\]\['content'\] is empty or only whitespace \(system message\)"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "},
                       {"role": "user", "content": "b"}]},
         r"messages\[1\]\['content'\] is empty or only whitespace \(assistant message\)"),
    ],
)
def test_jobs_without_text_are_refused_by_add_job(emu, tmp_path, job, needle):
    batch = Batch(results_dir=tmp_path).set_default_params(model="claude-haiku-4-5")
    with pytest.raises(ConfigError, match=needle):
        batch.add_job(**job)
    assert len(batch) == 0
    assert emu.log() == []


def _two_groups_one_limit(tmp_path: Path) -> Batch:
    """Two truncated jobs in two groups (another temperature) under a limit for one."""
    batch = (
        Batch(results_dir=tmp_path / "out")
        .set_default_params(model="gpt-4.1-mini", max_tokens=2000)
        .add_cost_limit(usd=0.003)  # one truncated answer ($0.0016 at 2000 tokens), not two
    )
    batch.add_job(prompt="one [[emulator:truncate]]", temperature=0.0)
    batch.add_job(prompt="two [[emulator:truncate]]", temperature=0.5)  # another group
    return batch


def test_one_cost_limit_over_groups_counts_batches_another_group_left_in_flight(emu, tmp_path):
    """``run(wait=False)`` leaves the first group's batch in flight, holding its worst case:
    the next group may spend only what is left of the limit, as with ``wait=True``."""
    emu.configure(latency=1000.0)
    batch = _two_groups_one_limit(tmp_path)
    first = batch.run(wait=False)
    assert first.status()["pending"] == 1
    assert [r.error for r in first.results()["cancelled"]] == ["cancelled: cost_limit"]
    assert len(posts(emu, "/batches")) == 1  # the second group's worst case did not fit
    emu.advance(1000.0)
    second = batch.run()
    billed = second.status()["cost_usd"]
    assert 0 < billed <= 0.003
    assert len(emu.billing()) == 1


def test_ctrl_c_in_one_group_sends_no_later_group(emu, tmp_path):
    """Ctrl+C while the first group's batch runs stops the whole run, as in batch_llm:
    nothing more is submitted; the next group's job ends cancelled, unsent and unbilled."""
    import signal

    emu.configure(latency=1000.0)
    pressed = []

    def on_progress(snapshot):
        if snapshot.batches.get("submitted") and not pressed:
            pressed.append(True)
            signal.raise_signal(signal.SIGINT)  # Ctrl+C, once

    batch = (
        Batch(results_dir=tmp_path / "out")
        .set_default_params(model="gpt-4.1-mini")
        .add_time_limit(seconds=8)  # ends a second group sent by mistake (its batch: 1000 s)
    )
    batch.add_job(prompt="a", temperature=0.0)
    batch.add_job(prompt="b", temperature=0.5)  # another group: another batch_llm call
    run = batch.run(on_progress=on_progress, progress_interval=0.0)
    assert pressed
    cancelled = run.results()["cancelled"]
    assert [(r.job_id, r.error) for r in cancelled] == [
        ("job-000000", "cancelled: interrupted"),
        ("job-000001", "cancelled: interrupted"),
    ]
    assert len(posts(emu, "/batches")) == 1  # the second group was never sent
    assert len(posts(emu, "/cancel")) == 1
    assert emu.billing() == []
    # The next run() sends both, once each.
    emu.configure(latency=0.0)
    again = batch.run()
    assert [r.job_id for r in again.results()["completed"]] == ["job-000000", "job-000001"]
    assert len(posts(emu, "/batches")) == 3


def test_seed_progress_counts_the_whole_run_across_groups(emu, tmp_path):
    """The seed's ``(stats, elapsed, batch_data)`` is about the whole batch: with jobs in two
    groups (two batch_llm calls) ``total`` is every job, ``is_complete`` comes once, at the
    end, and ``cost_usd`` adds up what both groups spent."""
    seen = []
    batch = (
        Batch(results_dir=tmp_path / "out")
        .set_default_params(model="gpt-4.1-mini")
        .add_cost_limit(usd=1.0)
    )
    batch.add_job(prompt="a", temperature=0.0)
    batch.add_job(prompt="b", temperature=0.5)  # another group
    batch.add_job(prompt="c", temperature=0.5)
    run = batch.run(
        on_progress=lambda s, t, b: seen.append((dict(s), t, dict(b))), progress_interval=0.0
    )
    assert {s["total"] for s, _, _ in seen} == {3}
    complete = [s["is_complete"] for s, _, _ in seen]
    assert all(complete[complete.index(True):])  # at the end only, once every job is done
    assert seen[complete.index(True)][0]["completed"] == 3
    first_group_done = next(s for s, _, _ in seen if s["completed"] == 1)
    assert first_group_done["pending"] == 2 and not first_group_done["is_complete"]
    stats, elapsed, batches = seen[-1]
    assert stats["is_complete"] and (stats["completed"], stats["pending"]) == (3, 0)
    assert stats["cost_usd"] == pytest.approx(run.status()["cost_usd"])
    assert (stats["batches_total"], stats["batches_completed"]) == (2, 2)
    assert batches == {"collected": 2}
    elapsed_seen = [t for _, t, _ in seen]
    assert elapsed_seen == sorted(elapsed_seen)  # since run() started, not per group


def test_dry_run_plans_every_group_under_one_cost_limit(emu, tmp_path):
    """The dry run's ``_within_cap`` is what the run then does: two groups whose worst
    cases fit the limit one at a time but not together are not both "within the cap"."""
    batch = _two_groups_one_limit(tmp_path)
    plan = batch.run(dry_run=True).to_polars()
    assert plan["_status"].to_list() == ["planned", "planned"]
    assert plan["_within_cap"].to_list() == [True, False]
    assert emu.log() == []
    results = batch.run().results()
    assert [r.job_id for r in results["failed"]] == ["job-000000"]  # truncated, billed
    assert [(r.job_id, r.error) for r in results["cancelled"]] == [
        ("job-000001", "cancelled: cost_limit")
    ]


def test_dry_run_with_reuse_state_false_plans_the_fresh_start_the_run_makes(emu, tmp_path):
    """``set_state(reuse_state=False)`` (the seed's complete example): the script's second
    run starts afresh and pays for every job again, so its dry run must say so, not read
    the earlier checkpoint as 'done' at $0."""

    def script() -> Batch:
        batch = (
            Batch(results_dir=tmp_path / "out")
            .set_state(file=tmp_path / "state.json", reuse_state=False)
            .set_default_params(model="gpt-4.1-mini")
            .add_cost_limit(usd=1.0)
        )
        return batch.add_job(prompt="one").add_job(prompt="two")

    script().run()  # the script's first run
    assert len(posts(emu, "/batches")) == 1
    batch = script()  # run again
    plan = batch.run(dry_run=True)
    assert plan.to_polars()["_status"].to_list() == ["planned", "planned"]
    assert plan.status()["estimated_cost_usd"] > 0
    assert not list(tmp_path.glob("state.previous-*"))  # a dry run moves nothing aside
    run = batch.run()
    assert run.status()["completed"] == 2
    assert len(posts(emu, "/batches")) == 2  # paid again, as the plan said


def test_dry_run_shows_its_estimates_also_with_on_progress(emu, tmp_path, capsys):
    """``run(dry_run=True)`` "shows cost estimates without executing" (the seed's README);
    an ``on_progress`` callback given with it (a script's usual run() arguments) silenced
    the plan."""
    batch = Batch(results_dir=tmp_path / "out").set_default_params(model="gpt-4.1-mini")
    batch.add_cost_limit(usd=1.0).add_job(prompt="a")
    batch.run(dry_run=True, on_progress=lambda s, t, b: None)
    shown = capsys.readouterr().err
    assert "dry run, nothing was sent. rows: 1 planned" in shown, shown
    assert "worst case $" in shown and "cap $1.00: everything fits" in shown, shown
    assert emu.log() == []


def test_a_job_refused_by_its_checks_stops_the_run_before_any_group_is_sent(emu, tmp_path):
    """batch_llm refuses a bad parameter before anything is sent; with jobs in two groups
    the first group was sent, waited for and billed before the second's check raised."""
    batch = Batch(results_dir=tmp_path / "out").set_default_params(model="gpt-4.1-mini")
    batch.add_job(prompt="one")
    batch.add_job(prompt="two", model="claude-haiku-4-5", temperature=1.5)  # Claude: none
    said = r"temperature \(of set_default_params / add_job\); remove it"
    with pytest.raises(ParamError, match=said):
        batch.run()
    assert emu.log() == [] and emu.billing() == []
    assert not list((tmp_path / "out").glob("job-*.json"))


def test_ctrl_c_after_a_groups_last_row_ended_sends_no_later_group(emu, tmp_path):
    """Ctrl+C while the first group's results are read (its rows all ended, none cancelled)
    still stops the run: the next group is never sent nor billed, its job reads
    'cancelled: interrupted'."""
    import signal

    pressed = []

    def on_progress(snapshot):
        if snapshot.pending == 0 and not pressed:  # the group's last snapshot
            pressed.append(True)
            signal.raise_signal(signal.SIGINT)  # Ctrl+C, once

    batch = Batch(results_dir=tmp_path / "out").set_default_params(model="gpt-4.1-mini")
    batch.add_job(prompt="a", temperature=0.0)
    batch.add_job(prompt="b", temperature=0.5)  # another group: another batch_llm call
    run = batch.run(on_progress=on_progress, progress_interval=0.0)
    assert pressed
    results = run.results()
    assert [r.job_id for r in results["completed"]] == ["job-000000"]
    assert [(r.job_id, r.error) for r in results["cancelled"]] == [
        ("job-000001", "cancelled: interrupted")
    ]
    assert len(posts(emu, "/batches")) == 1  # the second group was never sent
    assert len(emu.billing()) == 1


def test_one_cost_limit_counts_another_groups_batch_sent_without_a_limit(emu, tmp_path):
    """A batch an earlier ``run(wait=False)`` without a cost limit left in flight recorded
    no worst case: the limit added later still holds it (at the largest worst case known,
    as batch_llm holds its own), so the groups together never bill more than the limit."""
    emu.configure(latency=1000.0)

    def build(limit: float | None) -> Batch:
        batch = Batch(results_dir=tmp_path / "out").set_default_params(
            model="gpt-4.1-mini", max_tokens=2000
        )
        if limit is not None:
            batch.add_cost_limit(usd=limit)
        batch.add_job(prompt="one [[emulator:truncate]]", temperature=0.0)
        batch.add_job(prompt="two [[emulator:truncate]]", temperature=0.5)  # another group
        return batch

    first = build(None).run(wait=False)
    assert first.status()["pending"] == 2
    assert len(posts(emu, "/batches")) == 2
    emu.advance(1000.0)
    emu.configure(latency=0.0)
    # Two truncated answers ($0.0016 each at 2000 tokens) fit in $0.004, three do not.
    batch = build(0.004)
    batch.add_job(prompt="three [[emulator:truncate]]", temperature=0.0)  # the first group
    second = batch.run()
    results = second.results()
    # The two in flight answered (truncated: failed, billed); the third was never sent.
    assert sorted(r.job_id for r in results["failed"]) == ["job-000000", "job-000001"]
    assert [(r.job_id, r.error) for r in results["cancelled"]] == [
        ("job-000002", "cancelled: cost_limit")
    ]
    assert len(posts(emu, "/batches")) == 2
    assert len(emu.billing()) == 2
    assert 0.003 < second.status()["cost_usd"] <= 0.004


def test_a_real_run_never_shows_the_checks_dry_run_wording(on, emu, tmp_path):
    """The checks every group gets before the first is sent are a dry run: what it warns
    in a dry run's words ("would be sent (this is a dry run)") is not shown in a real run,
    which says what it does itself ("are sent now")."""
    import warnings

    from batchata_df.errors import ModelShutdownWarning

    def build(limit: float | None) -> Batch:
        batch = Batch(results_dir=tmp_path / "out").set_default_params(max_tokens=3000)
        if limit is not None:
            batch.add_cost_limit(usd=limit)
        for i in range(6):  # gemini-2.5-flash: routed to gemini-3.5-flash-lite from 12-01
            batch.add_job(prompt=f"row {i}: " + "lorem ipsum " * 100, model="gemini-2.5-flash")
        batch.add_job(prompt="other", model="gpt-4.1-mini", temperature=0.5)  # a 2nd group
        return batch

    on("2026-11-30")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shutdown warning; the cap's cancelled rows
        first = build(0.004).run()
    assert 0 < len(first.results()["completed"]) < 7
    on("2026-12-01")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = build(None).run()
    said = [str(w.message) for w in caught if w.category is ModelShutdownWarning]
    assert any("are sent now" in s for s in said), said
    assert not any("this is a dry run" in s for s in said), said
    assert len(again.results()["completed"]) == 7


# -- a group folder left behind by changed parameters ------------------------------------------


def _look_at_batches(emu) -> None:
    """List the batches through the SDK: the emulator runs (and bills) a batch whose time
    has come when it is looked at; the real provider runs it on its own."""
    import openai

    sdk = openai.OpenAI(api_key="sk-test", base_url=emu.openai_base_url, max_retries=0)
    assert [b.status for b in sdk.batches.list()] == ["completed"]
    sdk.close()


def _one_group(tmp_path: Path, temperature: float, limit: float | None = 0.003) -> Batch:
    """One truncated job ($0.0016 at 2000 tokens) under a limit for one such answer."""
    batch = Batch(results_dir=tmp_path / "out").set_default_params(
        model="gpt-4.1-mini", max_tokens=2000
    )
    if limit is not None:
        batch.add_cost_limit(usd=limit)
    return batch.add_job(prompt="one [[emulator:truncate]]", temperature=temperature)


def test_a_group_folder_left_by_changed_parameters_counts_under_the_limit_and_is_named(
    emu, tmp_path
):
    """The script's ``run(wait=False)`` sent a job; the user then edits its temperature, so
    the job falls in another group (another folder under the state root). The earlier
    group's batch was paid for and still runs: its worst case counts under the one limit
    (the new group's answer would take the two over it), and a ``KeptStateWarning`` names
    its folder, whose answer is never read into the results. Running the earlier
    parameters again collects it without sending anything; a folder the user removed
    counts no more."""
    import shutil

    from batchata_df.errors import KeptStateWarning

    emu.configure(latency=1000.0)
    first = _one_group(tmp_path, 0.0).run(wait=False)
    assert first.status()["pending"] == 1
    root = tmp_path / "out" / "state"
    (old,) = [p for p in root.iterdir() if p.is_dir()]
    emu.advance(1000.0)  # the provider runs it: billed, whether anyone collects it or not
    emu.configure(latency=0.0)
    _look_at_batches(emu)
    assert len(emu.billing()) == 1

    edited = _one_group(tmp_path, 0.5)  # temperature 0.0 -> 0.5: another group
    with pytest.warns(KeptStateWarning) as caught:
        plan = edited.run(dry_run=True).to_polars()
    assert plan["_within_cap"].to_list() == [False]  # the plan says what the run does
    with pytest.warns(KeptStateWarning) as caught:
        run = edited.run()
    (warning,) = [w.message for w in caught if isinstance(w.message, KeptStateWarning)]
    assert warning.folder == str(old)
    said = str(warning)
    assert repr(str(old)) in said and "1 job" in said and "add_cost_limit" in said, said
    assert "not collected" in said and "earlier parameters" in said, said
    assert [(r.job_id, r.error) for r in run.results()["cancelled"]] == [
        ("job-000000", "cancelled: cost_limit")
    ]
    assert len(posts(emu, "/batches")) == 1  # the edited job was not sent
    assert len(emu.billing()) == 1  # two truncated answers ($0.0032) would exceed $0.003

    # The warning's advice: the earlier parameters collect the paid answer, send nothing.
    # (The script edited back and run again: the edited Batch is gone. Live, it would hold
    # job-000000 for its own job, and this one's would be job-000001.)
    del edited
    back = _one_group(tmp_path, 0.0).run()
    (answer,) = back.results()["failed"]  # truncated at max_tokens: failed, billed
    assert answer.job_id == "job-000000" and str(answer.error).startswith("truncated")
    assert len(posts(emu, "/batches")) == 1 and len(emu.billing()) == 1

    # A folder the user removed counts no more: the edited job fits the limit again.
    shutil.rmtree(old)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", KeptStateWarning)
        again = _one_group(tmp_path, 0.5).run()
    assert again.status()["failed"] == 1  # truncated, billed: sent
    assert len(posts(emu, "/batches")) == 2


def test_a_group_folder_left_in_flight_is_named_also_without_a_limit(emu, tmp_path):
    """Without a cost limit nothing is counted, but the paid batch whose answers this
    Batch no longer reads is still said, with its folder."""
    from batchata_df.errors import KeptStateWarning

    emu.configure(latency=1000.0)
    _one_group(tmp_path, 0.0, limit=None).run(wait=False)
    emu.configure(latency=0.0)
    with pytest.warns(KeptStateWarning, match=r"1 job .* not collected"):
        run = _one_group(tmp_path, 0.5, limit=None).run()
    assert run.status()["failed"] == 1  # the edited job ran (truncated)
