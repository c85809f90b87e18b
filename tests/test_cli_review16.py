"""A new user's review of ``batchata-df`` (session 16), through the installed command.

Each test runs the console script in a subprocess against the emulator, on real files:
a dry run never replaces a result, an input that Polars reads as one (Spark's column
orders, an all-null column) is taken, and the messages say what is wrong.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import polars as pl
import pytest
from test_cli_guards import EXE, cli, one_line_error

N = 6

MODELS = """\
from typing import Literal
from pydantic import BaseModel

class Ticket(BaseModel):
    category: Literal["billing", "bug", "other"]
    urgency: int
"""




@pytest.fixture
def work(emu, tmp_path: Path) -> Path:
    (tmp_path / "models.py").write_text(MODELS)
    pl.DataFrame({
        "id": range(N),
        "subject": [f"subject {i}" for i in range(N)],
        "body": [f"body {i}" for i in range(N)],
    }).write_parquet(tmp_path / "t.parquet")
    return tmp_path


RUN = ["run", "t.parquet", "o.parquet", "--model", "gpt-4.1-mini", "--prompt",
       "Route {subject} {body}", "--schema", "models:Ticket"]


# -- P1: a dry run never replaces a result ---------------------------------------------------


def test_a_dry_run_of_the_same_command_leaves_the_result_as_it_is(work, emu):
    """The same command with --dry-run (the help's "what would it cost?") replaced
    o.parquet, a finished result, with the plan: exit 0, "plan written to o.parquet", and
    the answers' columns gone for whatever reads o.parquet next. A dry run writes nothing
    to OUTPUT (it only names the run, and its state folder); --plan FILE writes the plan."""
    r = cli(emu, *RUN, "--no-progress", cwd=work)
    assert r.returncode == 0, r.stderr
    result = (work / "o.parquet").read_bytes()
    assert {"category", "urgency", "_cost_usd"} <= set(pl.read_parquet(work / "o.parquet").columns)
    billed = len(emu.billing())
    assert billed == N

    r = cli(emu, *RUN, "--dry-run", cwd=work)
    assert r.returncode == 0, r.stderr
    assert (work / "o.parquet").read_bytes() == result
    assert "plan written to o.parquet" not in r.stderr
    assert "o.parquet was not written" in r.stderr and "--plan FILE" in r.stderr, r.stderr
    assert f"{N} done" in r.stdout + r.stderr or "done" in r.stdout + r.stderr
    assert len(emu.billing()) == billed

    # The plan where asked: every row already done (the state folder of o.parquet).
    r = cli(emu, *RUN, "--dry-run", "--no-progress", "--plan", "plan.csv", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "plan written to plan.csv" in r.stderr
    assert pl.read_csv(work / "plan.csv")["_status"].to_list() == ["done"] * N
    assert (work / "o.parquet").read_bytes() == result
    assert len(emu.billing()) == billed
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []


def test_a_dry_run_never_creates_output(work, emu):
    """Before the first run a dry run made o.parquet hold the plan: a pipeline waiting
    for o.parquet would have read the plan as the answers."""
    r = cli(emu, *RUN, "--dry-run", "--no-progress", cwd=work)
    assert r.returncode == 0, r.stderr
    assert not (work / "o.parquet").exists()
    assert not (work / "o.parquet.state").exists()
    assert emu.log() == []
    r = cli(emu, "run", "t.parquet", "--model", "gpt-4.1-mini", "--prompt", "{body}",
            "--dry-run", "--no-progress", "--plan", "plan.parquet", cwd=work)
    assert r.returncode == 0, r.stderr
    assert pl.read_parquet(work / "plan.parquet")["_status"].to_list() == ["planned"] * N
    assert emu.log() == []


@pytest.mark.parametrize(("extra", "needle"), [
    (["--plan", "plan.parquet"], "--plan writes a dry run's plan: add --dry-run"),
    (["--dry-run", "--plan", "o.parquet"], "--plan 'o.parquet' is OUTPUT"),
    (["--dry-run", "--plan", "./o.parquet"], "--plan './o.parquet' is OUTPUT"),
    (["--dry-run", "--plan", "t.parquet"], "is the INPUT file 't.parquet'"),
    (["--dry-run", "--plan", "plan.xlsx"], "unsupported file type '.xlsx'"),
    # inside the state folder (OUTPUT.state): over a checkpoint part, or among them
    (["--dry-run", "--plan", "o.parquet.state/x.parquet"], "is inside the state folder"),
    (["--dry-run", "--plan", "o.parquet.state/jobs/p.parquet"], "is inside the state folder"),
    (["--dry-run", "--state", "st", "--plan", "st/x.parquet"], "is inside the state folder"),
])
def test_a_plan_file_that_would_do_harm_is_refused(work, emu, extra, needle):
    line = one_line_error(cli(emu, *RUN, "--no-progress", *extra, cwd=work), 2)
    assert needle in line, line
    assert emu.log() == []
    assert not (work / "o.parquet").exists() and not (work / "plan.parquet").exists()


# -- P3: an input Polars reads as one is taken; a refusal names the real difference ----------


def _spark(work: Path, null_first: bool) -> list[tuple[int, str, str | None]]:
    """A Spark-like folder: part files with the columns in another order, one all-null
    column (Polars' Null type) in the first part or in a later one."""
    folder = work / "spark"
    folder.mkdir()
    parts = [
        pl.DataFrame({"id": [0, 1], "subject": ["s0", "s1"], "body": ["b0", "b1"]}),
        pl.DataFrame({"body": ["b2", "b3"], "subject": ["s2", "s3"], "id": [2, 3]}),
        pl.DataFrame({"id": [4, 5], "subject": ["s4", "s5"], "body": [None, None]}),
    ]
    if null_first:
        parts = [parts[2], parts[1], parts[0]]
    for i, part in enumerate(parts):
        part.write_parquet(folder / f"part-{i:05d}-c000.snappy.parquet")
    assert pl.read_parquet_schema(
        folder / f"part-{2 if not null_first else 0:05d}-c000.snappy.parquet"
    )["body"] == pl.Null
    return [row for part in parts for row in part.select("id", "subject", "body").rows()]


@pytest.mark.parametrize("null_first", [False, True])
@pytest.mark.parametrize("source", ["spark", "spark/*.parquet"])
def test_spark_part_files_with_columns_in_another_order_and_a_null_column_run(
    work, emu, null_first, source
):
    """They were refused: "'spark/part-00001...' has other columns than ... {'body', ...}
    against {'id', ...}" (the same names), and a file whose column is all null (Null
    type) too, while pl.scan_parquet('spark/*.parquet') reads them as one."""
    rows = _spark(work, null_first)
    r = cli(emu, "run", source, "o.parquet", "--model", "gpt-4.1-mini", "--prompt",
            "Route {subject}", "--schema", "models:Ticket", "--no-progress", cwd=work)
    assert r.returncode == 0, r.stderr
    out = pl.read_parquet(work / "o.parquet")
    assert out.select("id", "subject", "body").rows() == rows
    assert out.schema["body"] == pl.String and out.schema["id"] == pl.Int64
    assert set(out["_status"]) == {"completed"}
    assert len(emu.billing()) == N


@pytest.mark.parametrize(("second", "needles"), [
    (pl.DataFrame({"subject": ["s"], "id": [9]}),
     ["'spark/b.parquet' has other columns than 'spark/a.parquet'", "it lacks 'body'",
      "needs the same columns"]),
    (pl.DataFrame({"id": [9], "subject": ["s"], "body": ["b"], "extra": [1]}),
     ["it has 'extra' besides"]),
    (pl.DataFrame({"id": ["9"], "subject": ["s"], "body": ["b"]}),
     ["column 'id' is String in 'spark/b.parquet' but Int64 in 'spark/a.parquet'",
      "pl.col('id').cast(pl.Int64)"]),
    (pl.DataFrame({"id": pl.Series([9], dtype=pl.Int32), "subject": ["s"], "body": ["b"]}),
     ["column 'id' is Int32 in 'spark/b.parquet' but Int64"]),
])
def test_parquet_files_polars_cannot_read_as_one_are_refused_naming_the_difference(
    work, emu, second, needles
):
    (work / "spark").mkdir()
    pl.read_parquet(work / "t.parquet").write_parquet(work / "spark" / "a.parquet")
    second.write_parquet(work / "spark" / "b.parquet")
    with pytest.raises(pl.exceptions.PolarsError):  # Polars refuses them too
        pl.scan_parquet(str(work / "spark" / "*.parquet")).collect()
    line = one_line_error(cli(emu, "run", "spark", "o.parquet", "--model", "gpt-4.1-mini",
                              "--prompt", "{subject}", cwd=work), 2)
    for needle in needles:
        assert needle in line, line
    assert "Nothing was sent" in line and emu.log() == []


def test_csv_files_with_columns_in_another_order_are_refused_saying_so(work, emu):
    (work / "in").mkdir()
    (work / "in" / "a.csv").write_text("id,subject\n1,a\n")
    (work / "in" / "b.csv").write_text("subject,id\nb,2\n")
    line = one_line_error(cli(emu, "run", "in/*.csv", "o.parquet", "--model", "gpt-4.1-mini",
                              "--prompt", "{subject}", cwd=work), 2)
    assert "the same columns in another order (subject, id)" in line, line
    assert "write every file with the header of the first, id, subject" in line
    assert emu.log() == []


def test_a_hive_layout_is_pointed_to_the_recursive_glob_which_reads_it(work, emu):
    """`hive/` said only "holds no .parquet files"; it names the glob that reads it."""
    for day, ids in (("2026-01-01", [0, 1, 2]), ("2026-01-02", [3, 4, 5])):
        folder = work / "hive" / f"dt={day}" / "region=eu"
        folder.mkdir(parents=True)
        pl.read_parquet(work / "t.parquet").filter(pl.col("id").is_in(ids)).write_parquet(
            folder / "part-0.parquet")
    args = ["o.parquet", "--model", "gpt-4.1-mini", "--prompt", "Route {subject}",
            "--schema", "models:Ticket", "--no-progress"]
    line = one_line_error(cli(emu, "run", "hive", *args, cwd=work), 2)
    assert "input folder 'hive' holds no .parquet (or .pq) files of its own" in line
    assert "the recursive glob 'hive/**/*.parquet'" in line, line
    assert emu.log() == []
    r = cli(emu, "run", "hive/**/*.parquet", *args, cwd=work)
    assert r.returncode == 0, r.stderr
    assert pl.read_parquet(work / "o.parquet")["id"].to_list() == list(range(N))
    line = one_line_error(cli(emu, "run", "hive/**/*.parquet", "hive/o.parquet", *args[1:],
                              cwd=work), 2)
    assert "would be read as INPUT" in line


# -- P7: messages say what is wrong, and the emulator says how to use it ----------------------


@pytest.mark.parametrize(("output", "needle"), [
    ("/proc/o.parquet", "its folder '/proc' is a virtual file system of the kernel (like "
     "/proc and /sys): no file can be made there"),
    ("/proc/nowhere/o.parquet", "its folder '/proc/nowhere' cannot be created: '/proc' is a "
     "virtual file system of the kernel"),
    ("/sys/o.parquet", "its folder '/sys' is a virtual file system of the kernel"),
])
def test_an_output_on_a_virtual_file_system_says_so(work, emu, output, needle):
    """`/proc/o.parquet` said "its folder '/proc' is not writable (No such file or
    directory)": '/proc' exists, and the reason named is not the problem."""
    line = one_line_error(cli(emu, "run", "t.parquet", output, "--model", "gpt-4.1-mini",
                              "--prompt", "{subject}", "--state", "s", cwd=work), 2)
    assert needle in line, line
    assert "No such file or directory" not in line
    assert "give an OUTPUT in a folder you can write to" in line
    line = one_line_error(cli(emu, "run", "t.parquet", "o.parquet", "--model", "gpt-4.1-mini",
                              "--prompt", "{subject}", "--state", "/proc/s", cwd=work), 2)
    assert "'/proc' is a virtual file system of the kernel" in line, line
    assert emu.log() == []


def test_the_emulator_command_prints_the_exports_a_run_needs(work, emu):
    """`batchata-df emulator` printed its URL only: which variables point a run at it was
    in the source. It prints them as export lines; a run with only those set (and no key
    of a real provider) completes against it."""
    proc = subprocess.Popen([str(EXE), "emulator", "--port", "0"], cwd=work,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("batchata-df emulator listening on http://127.0.0.1:"), first
        url = first.split()[-1]
        lines = [proc.stdout.readline().rstrip("\n") for _ in range(10)]
        exports = dict(
            line.strip().removeprefix("export ").split("=", 1)
            for line in lines if line.strip().startswith("export ")
        )
        assert exports == {
            "OPENAI_BASE_URL": f"{url}/openai/v1", "OPENAI_API_KEY": "sk-emulator",
            "ANTHROPIC_BASE_URL": f"{url}/anthropic", "ANTHROPIC_API_KEY": "sk-ant-emulator",
            "GOOGLE_GEMINI_BASE_URL": f"{url}/gemini", "GEMINI_API_KEY": "emulator-key",
            "NO_PROXY": "127.0.0.1,localhost",
        }, lines
        env = {k: v for k, v in os.environ.items()
               if k not in emu.env() and k not in ("PYTHONPATH", "GOOGLE_API_KEY")}
        for model in ("gpt-4.1-mini", "claude-haiku-4-5", "gemini-2.5-flash"):
            r = subprocess.run([str(EXE), "run", "t.parquet", f"{model}.parquet", "--model",
                                model, "--prompt", "{subject}", "--no-progress"], cwd=work,
                               env={**env, **exports}, capture_output=True, text=True,
                               timeout=240)
            assert r.returncode == 0, (model, r.stderr)
            out = pl.read_parquet(work / f"{model}.parquet")
            assert set(out["_status"]) == {"completed"}, model
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert emu.log() == []  # the test's own emulator saw nothing: the printed one answered
