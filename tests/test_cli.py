"""The installed ``batchata-df`` command, run as a real subprocess on real files.

Every test runs ``.venv/bin/batchata-df`` (the console script pip installed) with the
emulator's environment, from a working directory holding the files a user would have.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from batchata_df.state import JOB_EVENTS

EXE = Path(sys.executable).with_name("batchata-df")

MODELS = """\
from typing import Literal
from pydantic import BaseModel

class Ticket(BaseModel):
    category: Literal["billing", "bug", "other"]
    urgent: bool
    tags: list[str]
"""


def cli(*args, cwd, timeout=240):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(EXE), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(r, code=2):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert "Traceback" not in r.stderr
    assert lines[0].startswith("batchata-df: error: ") or lines[0].startswith("Error: ")
    return lines[0]


@pytest.fixture
def work(emu, tmp_path):
    """A working folder with models.py and a tickets file, as a pipeline would have."""
    (tmp_path / "models.py").write_text(MODELS)
    pl.DataFrame({
        "id": [1, 2, 3],
        "text": ["refund please", "app crashes", "hello"],
    }).write_parquet(tmp_path / "tickets.parquet")
    return tmp_path


def posts(emu, suffix):
    return [e for e in emu.log() if e["method"] == "POST" and e["path"].endswith(suffix)]


def test_installed_command_exists():
    assert EXE.is_file(), "pip install -e . must install the batchata-df console script"


def test_schema_module_from_the_working_directory_and_csv_output(work, emu):
    """`--schema models:Ticket` with models.py in cwd works without PYTHONPATH; CSV output
    JSON-encodes the list column."""
    r = cli("run", "tickets.parquet", "out.csv", "--schema", "models:Ticket",
            "--model", "gpt-4.1-mini", "--prompt", "Route: {text}", "--no-progress", cwd=work)
    assert r.returncode == 0, r.stderr
    out = pl.read_csv(work / "out.csv")
    assert out["_status"].to_list() == ["completed"] * 3
    assert out["id"].to_list() == [1, 2, 3]
    assert set(out["category"].to_list()) <= {"billing", "bug", "other"}
    for cell in out["tags"].to_list():
        assert isinstance(json.loads(cell), list)  # JSON text, not a Polars repr
    assert out["_cost_usd"].sum() > 0
    assert "3 completed" in r.stderr
    # The default state folder sits next to the output: running again pays nothing twice.
    assert (work / "out.csv.state" / "manifest.json").is_file()
    before = len(posts(emu, "/batches"))
    r = cli("run", "tickets.parquet", "out.csv", "--schema", "models:Ticket",
            "--model", "gpt-4.1-mini", "--prompt", "Route: {text}", "--no-progress", cwd=work)
    assert r.returncode == 0, r.stderr
    assert len(posts(emu, "/batches")) == before


def test_schema_as_a_file_path(work):
    (work / "sub").mkdir()
    (work / "sub" / "shapes.py").write_text(MODELS)
    r = cli("run", "tickets.parquet", "out.parquet", "--schema", "sub/shapes.py:Ticket",
            "--model", "gpt-4.1-mini", "--prompt", "{text}", "--no-progress", cwd=work)
    assert r.returncode == 0, r.stderr
    assert pl.read_parquet(work / "out.parquet").schema["tags"] == pl.List(pl.String)


@pytest.mark.parametrize(("src", "dst"), [("in.csv", "out.jsonl"), ("in.ndjson", "out.parquet"),
                                          ("in.jsonl", "out.ndjson")])
def test_formats_come_from_the_extension(work, src, dst):
    frame = pl.DataFrame({"text": ["a", "b"]})
    if src.endswith(".csv"):
        frame.write_csv(work / src)
    else:
        frame.write_ndjson(work / src)
    r = cli("run", src, dst, "--model", "gpt-4.1-mini", "--prompt", "{text}", cwd=work)
    assert r.returncode == 0, r.stderr
    out = pl.read_parquet(work / dst) if dst.endswith(".parquet") else pl.read_ndjson(work / dst)
    assert out["_status"].to_list() == ["completed", "completed"]
    assert out["response"].null_count() == 0


def test_params_max_tokens_and_system_are_sent(work, emu):
    r = cli("run", "tickets.parquet", "out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{text}", "--system", "You route tickets.",
            "--params", '{"temperature": 0, "seed": 3}',
            "--param", 'stop=["END"]', "--max-tokens", "321", cwd=work)
    assert r.returncode == 0, r.stderr
    from openai import OpenAI

    client = OpenAI()
    (upload,) = client.files.list(purpose="batch").data
    lines = [json.loads(x) for x in client.files.content(upload.id).text.splitlines()]
    body = lines[0]["body"]
    assert body["temperature"] == 0  # given twice, one is refused: test_cli_params.py
    assert body["seed"] == 3
    assert body["stop"] == ["END"]
    assert body["max_completion_tokens"] == 321
    assert body["messages"][0] == {"role": "system", "content": "You route tickets."}
    assert body["messages"][1] == {"role": "user", "content": "refund please"}


def test_history_and_keep_raw(work):
    turns = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4."}]
    pl.DataFrame({"q": ["Times3?", "[[emulator:invalid]]"], "h": [turns, []]}).write_ndjson(
        work / "chat.jsonl")
    r = cli("run", "chat.jsonl", "out.parquet", "--model", "claude-haiku-4-5",
            "--schema", "models:Ticket", "--prompt", "{q}", "--system", "Terse.",
            "--history", "h", "--keep-raw", cwd=work)
    assert r.returncode == 3, r.stderr  # the second row does not validate
    out = pl.read_parquet(work / "out.parquet")
    assert out["_status"].to_list() == ["completed", "failed"]
    assert out["_raw"].null_count() == 0  # the model's text, also of the failed row
    assert json.loads(out["_raw"][0])["category"] == out["category"][0]


def test_keep_responses_writes_the_providers_own_result(work):
    pl.DataFrame({"q": ["refund please", "where is my parcel"]}).write_csv(work / "t.csv")
    r = cli("run", "t.csv", "out.parquet", "--model", "gpt-4.1-mini", "--schema",
            "models:Ticket", "--prompt", "{q}", "--keep-responses", cwd=work)
    assert r.returncode == 0, r.stderr
    out = pl.read_parquet(work / "out.parquet")
    lines = [json.loads(x) for x in out["_response"].to_list()]
    # OpenAI's batch output line for each row: its custom_id is the row's job id.
    assert [x["custom_id"] for x in lines] == out["_job_id"].to_list()
    assert [json.loads(x["response"]["body"]["choices"][0]["message"]["content"])["category"]
            for x in lines] == out["category"].to_list()


def test_files_and_citations(work):
    docs = work / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Invoice INV-1 from Acme. Total 12.50 EUR.")
    (work / "inv.py").write_text(
        "from pydantic import BaseModel\nclass Invoice(BaseModel):\n    number: str\n"
    )
    pl.DataFrame({"path": [str(docs / "a.txt")]}).write_csv(work / "invoices.csv")
    r = cli("run", "invoices.csv", "out.csv", "--schema", "inv:Invoice",
            "--model", "claude-haiku-4-5", "--prompt", "Extract the invoice number",
            "--files", "path", "--citations", cwd=work)
    assert r.returncode == 0, r.stderr
    out = pl.read_csv(work / "out.csv")
    assert out["_status"].to_list() == ["completed"]
    cites = json.loads(out["number_citations"][0])
    assert isinstance(cites, list)
    assert all("cited_text" in c for c in cites)


def test_failed_rows_exit_3(work):
    pl.DataFrame({"text": ["ok", "[[emulator:invalid]]"]}).write_parquet(work / "in.parquet")
    r = cli("run", "in.parquet", "out.parquet", "--schema", "models:Ticket",
            "--model", "gpt-4.1-mini", "--prompt", "{text}", cwd=work)
    assert r.returncode == 3, r.stderr
    out = pl.read_parquet(work / "out.parquet")
    assert out["_status"].to_list() == ["completed", "failed"]


def test_cost_cap_cancelled_rows_exit_4(work):
    r = cli("run", "tickets.parquet", "out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{text}", "--max-cost-usd", "0.0000001", cwd=work)
    assert r.returncode == 4, r.stderr
    out = pl.read_parquet(work / "out.parquet")
    assert set(out["_status"].to_list()) == {"cancelled"}
    assert out["_error"][0].startswith("cancelled: cost_limit")


def test_a_run_the_cost_cap_serialised_says_so_with_a_max_tokens(work):
    """The command streams (sink=): the cap's warning comes through as one line."""
    tickets = pl.DataFrame({"text": [f"ticket {i}: the app crashes" for i in range(6)]})
    tickets.write_parquet(work / "six.parquet")
    from batchata_df import batch_llm

    plan = tickets.pipe(batch_llm, dry_run=True, model="gpt-4.1-mini", prompt="{text}",
                        params={"max_tokens": 4000})  # fmt: skip
    cap = float(plan["_est_cost_usd"].head(2).sum()) * 1.01  # two worst cases at once
    r = cli("run", "six.parquet", "out.parquet", "--model", "gpt-4.1-mini", "--prompt",
            "{text}", "--max-tokens", "4000", "--items-per-batch", "2", "--max-cost-usd",
            f"{cap:.9f}", "--state", "st", cwd=work)  # fmt: skip
    assert r.returncode in (0, 4), r.stderr
    lines = [x for x in r.stderr.splitlines() if "serialised this run" in x]
    assert len(lines) == 1, r.stderr
    # In the command's words: its options, not batch_llm's arguments.
    assert lines[0].startswith("batchata-df: warning: --max-cost-usd ")
    assert "only 2 of 6 requests could be sent at once" in lines[0]
    assert re.search(r"--max-tokens \d+ fits them with a 25% margin: pass it with a new "
                     r"--state folder", lines[0]), lines[0]
    assert "params=" not in lines[0] and "state=" not in lines[0], lines[0]


def test_no_wait_pending_exit_5_then_collected_exit_0(work, emu):
    emu.configure(latency=1000.0)
    args = ["run", "tickets.parquet", "out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{text}"]
    r = cli(*args, "--no-wait", cwd=work)
    assert r.returncode == 5, r.stderr
    assert set(pl.read_parquet(work / "out.parquet")["_status"]) == {"pending"}
    emu.advance(1000.0)  # the batch ends on the emulator's clock
    r = cli(*args, cwd=work)
    assert r.returncode == 0, r.stderr
    assert set(pl.read_parquet(work / "out.parquet")["_status"]) == {"completed"}
    assert len(posts(emu, "/batches")) == 1  # collected, not sent again


def test_time_limit_exit_4(work, emu):
    emu.configure(latency=60.0)
    r = cli("run", "tickets.parquet", "out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{text}", "--time-limit", "1s", cwd=work)
    assert r.returncode == 4, r.stderr
    out = pl.read_parquet(work / "out.parquet")
    assert set(out["_error"].to_list()) == {"cancelled: time_limit"}


def _interrupt(work, emu, *extra):
    emu.configure(latency=60.0)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(
        [str(EXE), "run", "tickets.parquet", "out.parquet", "--model", "gpt-4.1-mini",
         "--prompt", "{text}", *extra],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    def polled() -> bool:  # the run has its batch id (and checkpointed it): it polls
        return any(e["method"] == "GET" and "/batches/batch_" in e["path"] for e in emu.log())

    deadline = time.monotonic() + 60
    while not polled() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert polled(), "the batch was never submitted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    return proc.returncode, err


def test_ctrl_c_exits_130_without_writing_the_output(work, emu):
    code, err = _interrupt(work, emu)
    assert code == 130, err
    assert not (work / "out.parquet").exists()
    assert "NOT written" in err and "Traceback" not in err
    assert posts(emu, "/cancel")  # the batch in flight was cancelled at the provider


def test_ctrl_c_with_write_partial_writes_cancelled_rows(work, emu):
    code, err = _interrupt(work, emu, "--write-partial")
    assert code == 130, err
    out = pl.read_parquet(work / "out.parquet")
    assert set(out["_error"].to_list()) == {"cancelled: interrupted"}
    assert out["id"].to_list() == [1, 2, 3]


def test_dry_run_sends_nothing(work, emu):
    r = cli("run", "tickets.parquet", "--model", "gpt-4.1-mini", "--prompt", "{text}",
            "--dry-run", cwd=work)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "dry run, nothing was sent" in out and "3 requests would be sent" in out
    assert emu.log() == []
    r = cli("run", "tickets.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{text}", "--dry-run", "--plan", "plan.csv", cwd=work)
    assert r.returncode == 0, r.stderr
    assert pl.read_csv(work / "plan.csv")["_status"].to_list() == ["planned"] * 3


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "missing.parquet", "out.parquet"], "'missing.parquet' does not exist"),
        (["run", "book.xlsx", "out.parquet"], "unsupported file type '.xlsx'"),
        (["run", "tickets.parquet", "out.xlsx"], "unsupported file type '.xlsx'"),
        (["run", "tickets.parquet", "out.parquet", "--schema", "nomod:X"],
         "cannot import 'nomod'"),
        (["run", "tickets.parquet", "out.parquet", "--schema", "models:Nope"],
         "has no 'Nope' (models there: ['Ticket'])"),
        (["run", "tickets.parquet", "out.parquet", "--prompt2", "x"], "No such option"),
        (["run", "tickets.parquet", "out.parquet", "--param", "temperature"], "NAME=VALUE"),
        (["run", "tickets.parquet", "out.parquet", "--param", "temprature=0"],
         "did you mean 'temperature'"),
        (["run", "tickets.parquet", "out.parquet", "--time-limit", "soon"],
         "not a positive duration"),
    ],
)
def test_usage_errors_are_one_line_exit_2(work, emu, args, needle):
    (work / "book.xlsx").write_bytes(b"PK\x03\x04")
    if "--prompt" not in args and "--prompt2" not in args:
        args = [*args, "--prompt", "{text}"]
    if "--model" not in args:
        args = [*args, "--model", "gpt-4.1-mini"]
    r = cli(*args, cwd=work)
    line = one_line_error(r)
    assert needle in r.stderr, r.stderr
    assert line
    assert emu.log() == []


def test_a_damaged_state_folder_exits_1_naming_the_repair(work):
    args = ["run", "tickets.parquet", "out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{text}"]
    assert cli(*args, cwd=work).returncode == 0
    part = next((work / "out.parquet.state" / "jobs").glob("part-*.parquet"))
    part.write_bytes(b"not parquet")
    r = cli(*args, cwd=work)
    line = one_line_error(r, code=1)
    assert "damaged" in line and "batchata-df repair" in line
    assert "--debug" in r.stderr  # the hint for the traceback


def test_a_state_folder_being_written_exits_75(work, emu):
    from batchata_df.state import WriterLock

    args = ["run", "tickets.parquet", "out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{text}"]
    with WriterLock(work / "out.parquet.state"):
        r = cli(*args, cwd=work)
    assert "is being written by another call" in one_line_error(r, code=75)
    assert emu.log() == []
    assert cli(*args, cwd=work).returncode == 0  # once it is free


def test_an_output_that_cannot_be_written_is_refused_before_sending(work, emu):
    (work / "blocker").write_text("a file, not a folder")
    r = cli("run", "tickets.parquet", "blocker/out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{text}", "--state", "s", cwd=work)
    assert "is a file, not a folder" in one_line_error(r)
    assert emu.log() == []


def test_a_bad_column_is_one_line_and_debug_shows_the_traceback(work):
    r = cli("run", "tickets.parquet", "out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{txt}", cwd=work)
    assert "did you mean 'text'" in one_line_error(r)
    r = cli("--debug", "run", "tickets.parquet", "out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{txt}", cwd=work)
    assert r.returncode == 2 and "Traceback" in r.stderr and "ColumnError" in r.stderr
    r = cli("run", "tickets.parquet", "out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{txt}", "--debug", cwd=work)
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_status_sql_and_their_errors(work):
    r = cli("run", "tickets.parquet", "out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{text}", "--state", "runs/a", cwd=work)
    assert r.returncode == 0, r.stderr
    r = cli("status", "runs/a", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "completed" in r.stdout and "gpt-4.1-mini" in r.stdout
    r = cli("sql", "select status, count(*) as n from jobs group by all", "runs/*", "--csv",
            cwd=work)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["status,n", "completed,3"]
    (work / "empty").mkdir()
    for args in (["status", "empty"], ["sql", "select 1", "empty"], ["cancel", "empty"]):
        assert "is not a batchata-df state folder" in one_line_error(cli(*args, cwd=work))
    assert "does not exist" in one_line_error(cli("status", "nowhere", cwd=work))
    line = one_line_error(cli("sql", "selec * from jobs", "runs/a", cwd=work))
    assert "SQL error" in line and "selec" in line


def test_cancel_cancels_batches_in_flight_and_records_it(work, emu):
    # The emulator validates for the first 10 % of the latency, then runs the requests
    # evenly: at an hour, none has begun (nor been billed) when the cancel comes.
    emu.configure(latency=3600.0)
    args = ["run", "tickets.parquet", "out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{text}"]
    assert cli(*args, "--no-wait", cwd=work).returncode == 5
    r = cli("cancel", "out.parquet.state", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "cancel" in r.stdout
    assert len(posts(emu, "/cancel")) == 1
    events = pl.read_parquet(work / "out.parquet.state" / "batches" / "*.parquet")
    assert "cancel_requested" in events["status"].to_list()
    # The next run collects the cancelled batch and sends its rows again (README: a
    # cancelled row is sent by the next call), each billed once.
    emu.configure(latency=0.0)
    r = cli(*args, "--time-limit", "60", cwd=work)
    assert r.returncode == 0, r.stderr
    out = pl.read_parquet(work / "out.parquet")
    assert out["_status"].to_list() == ["completed"] * 3
    assert out["id"].to_list() == [1, 2, 3]
    assert len(posts(emu, "/batches")) == 2
    billed = emu.billing()
    assert len(billed) == 3 and len({e["request"] for e in billed}) == 3
    first = sorted(events.filter(pl.col("status") == "cancel_requested")["batch_key"])
    collected = pl.read_parquet(work / "out.parquet.state" / "batches" / "*.parquet")
    assert first[0] in collected.filter(pl.col("status") == "collected")["batch_key"].to_list()
    r = cli("cancel", "out.parquet.state", cwd=work)
    assert r.returncode == 0 and "nothing to cancel" in r.stderr
    assert set(JOB_EVENTS) <= set(pl.read_parquet(
        work / "out.parquet.state" / "jobs" / "*.parquet").columns)


def test_version_and_help_with_examples_without_rst(tmp_path):
    r = cli("--version", cwd=tmp_path)
    assert r.returncode == 0
    from importlib.metadata import version

    assert r.stdout.strip() == f"batchata-df, version {version('batchata-df')}"
    for args in ([], ["--help"], ["run"], ["run", "--help"], ["status", "--help"],
                 ["sql", "--help"], ["cancel", "--help"], ["doctor", "--help"],
                 ["repair", "--help"]):
        r = cli(*args, cwd=tmp_path)
        assert r.returncode == (2 if args in ([], ["run"]) else 0), (args, r.stderr)
        assert "Example" in r.stdout, args
        for markup in ("``", ":func:", ":class:", "::", ".. "):
            assert markup not in r.stdout, (args, markup)
    r = cli("run", "--help", cwd=tmp_path)
    for option in ("--schema", "--files", "--citations", "--param", "--params", "--max-tokens",
                   "--max-cost-usd", "--time-limit", "--dry-run", "--no-wait", "--retry-failed",
                   "--state", "--system", "--items-per-batch", "--max-parallel-batches",
                   "--no-progress", "--write-partial", "--history", "--keep-raw",
                   "--keep-responses", "Exit codes", "130"):
        assert option in r.stdout, option
    r = cli("emulator", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "--latency" in r.stdout
    r = cli("demo", "--help", cwd=tmp_path)
    assert r.returncode == 0
