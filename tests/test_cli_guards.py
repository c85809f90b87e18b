"""``batchata-df run`` guards a new user's mistakes before anything is sent.

A reviewer's findings, each through the installed command in a subprocess against the
emulator, counting what the emulator billed: two runs writing one OUTPUT, an OUTPUT whose
folder cannot be written, OUTPUT naming INPUT, CSV values changed by type inference, and a
model without a price shown as costing $0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

EXE = Path(sys.executable).with_name("batchata-df")
REPO = Path(__file__).resolve().parents[1]
N = 20


def _env(emu) -> dict[str, str]:
    env = dict(os.environ)
    env.update(emu.env())
    env["PYTHONPATH"] = str(REPO)
    return env


def cli(emu, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *map(str, args)], cwd=cwd,
                          env=_env(emu), capture_output=True, text=True, timeout=240)


def one_line_error(r: subprocess.CompletedProcess[str], code: int) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("batchata-df: error: "), lines
    return lines[0]


def billed(emu) -> Counter[str]:
    return Counter(e["custom_id"] for e in emu.billing())


def batch_posts(emu) -> int:
    return len([e for e in emu.log() if e["method"] == "POST" and e["path"].endswith("/batches")])


@pytest.fixture
def work(emu, tmp_path: Path) -> Path:
    pl.DataFrame({"id": range(N), "text": [f"ticket {i}" for i in range(N)]}).write_parquet(
        tmp_path / "in.parquet"
    )
    return tmp_path


RUN = ["run", "in.parquet", "out.parquet", "--model", "gpt-4.1-mini", "--prompt", "{text}",
       "--no-progress"]


def _start(emu, work: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(EXE), *RUN, *extra], cwd=work,
                            env=_env(emu), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(what, proc: subprocess.Popen[str], message: str) -> None:
    deadline = time.monotonic() + 120
    while not what():
        assert proc.poll() is None, proc.communicate(timeout=60)
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


# -- 1. two runs writing one OUTPUT ---------------------------------------------------------


def test_a_second_run_on_the_same_output_refuses_before_sending_or_waits(emu, work, procs):
    """Run A (state s1) has its batch in flight; run B on the same OUTPUT with another state
    folder sent every row again and paid twice (the last rename won). Now B exits 75 at
    once naming A and the fixes, having sent nothing; with --lock-timeout it waits for A,
    and with A's state folder it then pays nothing again."""
    emu.configure(latency=1000.0)
    first = _start(emu, work, "--state", "s1")
    procs.append(first)
    # The request is logged when it arrives and billed as it is handled: wait for both (a
    # loaded machine showed the log entry before the bill).
    _wait_for(lambda: batch_posts(emu) == 1 and sum(billed(emu).values()) == N, first,
              "run A never submitted its batch")

    r = cli(emu, *RUN, "--state", "s2", "--no-wait", cwd=work)  # were it sent: exit 5 at once
    line = one_line_error(r, 75)
    assert "'out.parquet' is being written by another run" in line
    assert f"pid {first.pid} " in line and "s1" in line  # names the other run
    assert "--lock-timeout SECONDS" in line and "another OUTPUT" in line
    assert batch_posts(emu) == 1 and sum(billed(emu).values()) == N  # B sent nothing
    assert not (work / "s2").exists()

    # Waiting: B says so, then runs once A is done; with A's state folder nothing is paid.
    second = _start(emu, work, "--state", "s1", "--lock-timeout", "600")
    procs.append(second)
    assert second.stderr is not None
    note = second.stderr.readline()
    assert "is being written by another run" in note and "waiting up to 600 s" in note, note
    assert first.poll() is None and batch_posts(emu) == 1
    emu.advance(1000.0)
    _, err = first.communicate(timeout=240)
    assert first.returncode == 0, err
    _, err = second.communicate(timeout=240)
    assert second.returncode == 0, err
    # B paid nothing, and says so: the folder's bill before B is read once B holds
    # OUTPUT and the folder (read earlier, it counted A's answers as B's spending).
    assert "this run $0.0000; the state folder in all, with earlier runs: $0.0" in err, err
    assert batch_posts(emu) == 1
    assert set(billed(emu).values()) == {1} and len(billed(emu)) == N
    out = pl.read_parquet(work / "out.parquet")
    assert out["id"].to_list() == list(range(N))
    assert set(out["_status"]) == {"completed"}
    assert sorted(p.name for p in work.iterdir()) == ["in.parquet", "out.parquet", "s1"]


def test_a_busy_state_folder_names_the_commands_option(work, emu):
    """The library's message says `lock_timeout=<seconds>`; the command's says its flag."""
    from batchata_df.state import WriterLock

    assert cli(emu, *RUN, "--no-wait", cwd=work).returncode == 0  # a state folder to cancel
    sent = len(emu.log())
    with WriterLock(work / "out.parquet.state"):
        line = one_line_error(cli(emu, *RUN, cwd=work), 75)
        assert "is being written by another call" in line
        assert "--lock-timeout SECONDS" in line and "--state" in line
        assert "lock_timeout=" not in line
        line = one_line_error(cli(emu, "cancel", "out.parquet.state", cwd=work), 75)
        assert "try again when it has finished" in line and "lock_timeout=" not in line
    assert len(emu.log()) == sent


# -- 2. OUTPUT's folder cannot be written ---------------------------------------------------


def _output_in(kind: str, work: Path) -> tuple[str, str]:
    """OUTPUT in a folder that cannot be written, and that folder as the message names it."""
    if kind == "proc":
        return "/proc/out.parquet", "/proc"
    if kind == "under-proc":
        return "/proc/batchata-df-nowhere/out.parquet", "/proc/batchata-df-nowhere"
    if os.geteuid() == 0:
        pytest.skip("root writes into a chmod 0555 folder; /proc stands for it here")
    folder = work / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return str(folder / "out.parquet"), str(folder)


@pytest.mark.parametrize("kind", ["proc", "under-proc", "chmod-0555"])
def test_an_output_folder_that_cannot_be_written_is_a_usage_error(work, emu, kind):
    """It was `error: OSError: [Errno 30] Read-only file system: '/ro/.batchata-new-...'`,
    exit 1; now exit 2 (nothing sent) naming OUTPUT's folder and the fix."""
    output, folder = _output_in(kind, work)
    r = cli(emu, "run", "in.parquet", output, "--model", "gpt-4.1-mini", "--prompt", "{text}",
            "--state", "s", cwd=work)
    line = one_line_error(r, 2)
    assert f"cannot write OUTPUT {output!r}: its folder {folder!r}" in line
    assert "give an OUTPUT in a folder you can write to" in line
    assert "OSError" not in line and ".batchata-new-" not in line
    assert emu.log() == []
    assert not (work / "s").exists()


@pytest.mark.parametrize("state", ["/proc/batchata-df.state", "/proc/x/y/s", "afile/s",
                                   "afile"])
def test_a_state_folder_that_cannot_be_written_is_a_usage_error(work, emu, state):
    """A --state folder that could not be made (under /proc, under a file, a file itself)
    failed the run with exit 1 (`cannot lock the checkpoint folder ...`); it is a usage
    error (exit 2) naming the folder and the fix, before anything is sent. A dry run only
    reads the folder: it is not refused."""
    (work / "afile").write_text("not a folder")
    args = ["run", "in.parquet", "out.parquet", "--model", "gpt-4.1-mini", "--prompt",
            "{text}", "--state", state]
    if state == "afile":  # click refuses --state naming a file; OUTPUT.state is not checked
        args = [*args[:2], "afile.parquet", *args[3:-2]]
        (work / "afile.parquet.state").write_text("not a folder")
        state = "afile.parquet.state"
    line = one_line_error(cli(emu, *args, cwd=work), 2)
    assert f"cannot write the state folder {state!r}: " in line, line
    assert "pass --state FOLDER in a place you can write to" in line
    assert "Nothing was sent" in line
    assert emu.log() == []
    assert sorted(p.name for p in work.iterdir() if not p.name.startswith("afile")) == [
        "in.parquet"]
    r = cli(emu, *args, "--dry-run", "--no-progress", cwd=work)
    assert r.returncode == 0, r.stderr
    assert emu.log() == []


# -- 3. OUTPUT is INPUT ---------------------------------------------------------------------


@pytest.mark.parametrize("output", ["in.parquet", "./in.parquet", "sub/../in.parquet",
                                    "link.parquet", "hard.parquet"])
def test_output_naming_the_input_file_is_refused(work, emu, output):
    """`run x.parquet x.parquet` replaced the input with the result; by any name (a path
    through another folder, a symbolic link, a hard link) it is refused."""
    (work / "sub").mkdir()
    (work / "link.parquet").symlink_to("in.parquet")
    os.link(work / "in.parquet", work / "hard.parquet")
    before = (work / "in.parquet").read_bytes()
    r = cli(emu, "run", "in.parquet", output, "--model", "gpt-4.1-mini", "--prompt", "{text}",
            cwd=work)
    line = one_line_error(r, 2)
    assert f"OUTPUT {output!r} is the INPUT file 'in.parquet'" in line
    assert (work / "in.parquet").read_bytes() == before
    assert emu.log() == []


# -- 4. CSV as the file says it -------------------------------------------------------------


@pytest.mark.parametrize("output", ["out.csv", "out.parquet"])
def test_csv_values_are_sent_and_written_as_the_file_has_them(work, emu, output):
    """A zip code `00501` was sent as `Zip 501` and written back as `501` (type inference);
    a non-integer far down an integer-looking column failed the run. Every CSV column is
    text now, in every chunk."""
    rows = 300  # past Polars' inference window (100 rows), in chunks of 40
    zips = [f"{i:05d}" for i in range(rows)]
    counts = [str(i) for i in range(rows - 1)] + ["1.5"]
    flags = ["true"] * rows
    frame = pl.DataFrame({"zip": zips, "count": counts, "flag": flags})
    frame.write_csv(work / "in.csv")
    r = cli(emu, "run", "in.csv", output, "--model", "gpt-4.1-mini",
            "--prompt", "Zip {zip}, count {count}", "--chunk-rows", "40", cwd=work)
    assert r.returncode == 0, r.stderr
    if output.endswith(".csv"):
        out = pl.read_csv(work / output, infer_schema=False)
        assert (work / output).read_text().splitlines()[1].startswith("00000,0,true,")
    else:
        out = pl.read_parquet(work / output)
    assert out.select("zip", "count", "flag").equals(frame)
    assert out["response"][1].startswith("Emulated answer about 'Zip 00001, count 1'")
    assert out["response"][rows - 1].startswith(
        f"Emulated answer about 'Zip {rows - 1:05d}, count 1.5'")
    assert len(billed(emu)) == rows


BROKEN_CSV = {
    "more fields than the header": (b"250,ticket 250,extra\n",
                                    "(line 253: 3 fields, the header has 2)"),
    "an unclosed quote": (b'250,"ticket 250\n', "(line 253: a quote opened here is never closed)"),
    "bytes that are not UTF-8": (b"250,ticket \xff\xfe 250\n",
                                 "(line 253: byte 12 of the line is not UTF-8)"),
    "text after a closing quote": (b'250,"ticket" 250\n',
                                   '(line 253: text after a closing quote (a quote inside a '
                                   'field is written ""))'),
    # was "a quote opened here is never closed" on the line the field opened on
    "text after the closing quote of a field on two lines": (
        b'250,"ticket\n250" and more\n',
        '(line 254: text after a closing quote (a quote inside a field is written ""; the '
        "field opened on line 253))"),
    # csv's 128K field limit: was "(line 253: field larger than field limit (131072))"
    "more fields after a field of 140,000 characters": (
        b'250,"' + b"x" * 140_000 + b'"\n251,ticket 251,extra\n',
        "(line 254: 3 fields, the header has 2)"),
    # a short row is read (its missing fields empty): the long row after it is the one
    "more fields after a short row": (b"250\n251,ticket 251,extra\n",
                                      "(line 254: 3 fields, the header has 2)"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_CSV))
def test_a_broken_csv_line_far_down_is_a_usage_error_before_anything_is_sent(
    work, emu, broken
):
    """A broken line at row 250 failed the run with exit 1 (`ComputeError: ...`) after the
    chunks before it were sent and paid for; the file is parsed whole first, and the run
    is refused (exit 2) naming the file, the line (as an editor numbers it: a quoted line
    break earlier in the file counts) and the fix, before anything is sent."""
    lines = [b"id,text\n"] + [f"{i},ticket {i}\n".encode() for i in range(300)]
    lines[10] = b'9,"ticket\nnine"\n'  # one row on two lines
    bad, where = BROKEN_CSV[broken]
    lines[251] = bad  # row 251 of the data, line 253 of the file
    (work / "in.csv").write_bytes(b"".join(lines))
    r = cli(emu, "run", "in.csv", "out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{text}", "--chunk-rows", "40", cwd=work)
    line = one_line_error(r, 2)
    assert "cannot read 'in.csv' as csv: " in line, line
    assert where in line, line
    assert "fix the file (UTF-8 text, quotes closed, no row with more fields" in line
    assert "Nothing was sent" in line
    assert emu.log() == []
    assert sorted(p.name for p in work.iterdir()) == ["in.csv", "in.parquet"]


def test_the_csv_line_finder_puts_csvs_field_size_limit_back(tmp_path: Path) -> None:
    """The finder lifts :mod:`csv`'s field size limit to read a long field, and puts it
    back after, also when it finds nothing or the file cannot be read."""
    import csv

    from batchata_df.cli import _csv_broken_line

    (tmp_path / "ok.csv").write_text('id,text\n1,"' + "x" * 140_000 + '"\n2,b\n')
    (tmp_path / "bad.csv").write_text('id,text\n1,"' + "x" * 140_000 + '"\n2,b,c\n')
    before = csv.field_size_limit()
    assert _csv_broken_line([tmp_path / "ok.csv"]) is None
    assert _csv_broken_line([tmp_path / "ok.csv", tmp_path / "bad.csv"]) == (
        tmp_path / "bad.csv", 3, "3 fields, the header has 2")
    assert _csv_broken_line([tmp_path / "missing.csv"]) is None
    assert csv.field_size_limit() == before


def test_a_broken_line_in_one_csv_of_a_glob_names_that_file(work, emu):
    (work / "in").mkdir()
    (work / "in" / "a.csv").write_bytes(b"id,text\n1,a\n2,b\n")
    (work / "in" / "b.csv").write_bytes(b"id,text\n3,c\n4,d,e\n")
    r = cli(emu, "run", "in/*.csv", "out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{text}", cwd=work)
    line = one_line_error(r, 2)
    assert "(line 3 of 'in/b.csv': 3 fields, the header has 2)" in line, line
    assert emu.log() == []


BROKEN_HEADERS = {
    "unclosed quote": (b'id,text,"note\n', b"\n", "runs into its rows"),
    "bare CR line ends": (b"id,text,note\r", b"\r", "runs into its rows"),
    "not UTF-8": (b"id,text,caf\xe9\n", b"\n", "is not UTF-8 text"),
}


@pytest.mark.parametrize("broken", BROKEN_HEADERS)
def test_a_broken_csv_header_is_a_usage_error_before_anything_is_sent(work, emu, broken):
    """A header line with an unclosed quote, or lines ended by a bare CR, made the whole
    file the header: no rows, exit 0 and an empty OUTPUT (the rows were lost without a
    word); a header byte that is not UTF-8 renamed the column (`caf\ufffd`). Each is a
    usage error now, naming the file and the fix, before anything is sent."""
    header, end, says = BROKEN_HEADERS[broken]
    body = b"".join(f"{i},ticket {i},n".encode() + end for i in range(300))
    (work / "in.csv").write_bytes(header + body)
    r = cli(emu, "run", "in.csv", "out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{id}", cwd=work)
    line = one_line_error(r, 2)
    assert says in line and "'in.csv'" in line and "Nothing was sent" in line, line
    assert len(line) < 400  # names the file, never quotes it whole
    assert emu.log() == []
    assert not (work / "out.parquet").exists()


def test_an_empty_state_option_is_refused_not_the_working_folder(work, emu):
    """`--state ""` made the working folder the state folder (jobs/, batches/ and a
    manifest written beside the user's files, exit 0)."""
    r = cli(emu, *RUN, "--state", "", cwd=work)
    assert "--state '' names no folder" in one_line_error(r, 2)
    assert emu.log() == []
    assert sorted(p.name for p in work.iterdir()) == ["in.parquet"]


@pytest.mark.parametrize("files", [1, 2])
def test_an_ndjson_column_whose_type_changes_far_down_is_read_whole(work, emu, files):
    """A column of integers holding a string (or a float) after line 100 failed the run
    (`ComputeError: cannot parse 'X250' (string) as Int64`, exit 1) after the chunks before
    it were paid for: Polars inferred the types from the first 100 lines of the first file.
    Every line of every file is read for the types now; a line that is not JSON is refused
    before anything is sent (exit 2)."""
    import json

    rows = 300
    lines = [json.dumps({"id": i, "code": i if i < 250 else f"X{i}",
                         "x": i if i < 260 else 1.5}) for i in range(rows)]
    if files == 1:
        (work / "in.ndjson").write_text("\n".join(lines) + "\n")
        source = "in.ndjson"
    else:  # the second file alone has the strings and floats
        (work / "nd").mkdir()
        (work / "nd" / "a.ndjson").write_text("\n".join(lines[:200]) + "\n")
        (work / "nd" / "b.ndjson").write_text("\n".join(lines[200:]) + "\n")
        source = "nd/*.ndjson"
    r = cli(emu, "run", source, "out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "Code {code}, x {x}", "--chunk-rows", "40", cwd=work)
    assert r.returncode == 0, r.stderr
    out = pl.read_parquet(work / "out.parquet")
    assert out.schema["code"] == pl.String and out.schema["x"] == pl.Float64
    assert out["code"].to_list() == [str(i) for i in range(250)] + [
        f"X{i}" for i in range(250, rows)]
    assert out["x"].to_list() == [float(i) for i in range(260)] + [1.5] * (rows - 260)
    assert set(out["_status"]) == {"completed"}
    assert out["response"][rows - 1].startswith("Emulated answer about 'Code X299, x 1.5'")
    assert set(billed(emu).values()) == {1} and len(billed(emu)) == rows

    lines[280] = '{"id": 280, "code":'
    (work / "broken.ndjson").write_text("\n".join(lines) + "\n")
    line = one_line_error(cli(emu, "run", "broken.ndjson", "b.parquet", "--model",
                              "gpt-4.1-mini", "--prompt", "{code}", cwd=work), 2)
    assert "cannot read 'broken.ndjson' as ndjson" in line
    assert len(billed(emu)) == rows  # nothing more sent


# -- 5. a model without a price -------------------------------------------------------------


def test_a_model_without_a_price_is_cost_unknown_never_zero_and_price_gives_one(work, emu):
    """`2 completed, 1 failed; $0.0000` while `_cost_usd` was null; the cap's error said
    `pass prices={...}`, which the command lacks. Now the summary says the cost is unknown,
    the errors name --price, and --price gives the model a price."""
    args = ["run", "in.parquet", "out.parquet", "--model", "gpt-6-terra", "--prompt", "{text}"]
    r = cli(emu, *args, cwd=work)
    assert r.returncode == 0, r.stderr
    assert "$0" not in r.stderr
    assert f"cost unknown for {N} answers (no price for gpt-6-terra" in r.stderr, r.stderr
    assert "--price gpt-6-terra=INPUT,OUTPUT" in r.stderr
    assert pl.read_parquet(work / "out.parquet")["_cost_usd"].null_count() == N

    for extra, option in ((["--max-cost-usd", "1"], "--max-cost-usd"),
                          (["--dry-run"], "--dry-run")):
        line = one_line_error(cli(emu, *args, "--state", "other", *extra, cwd=work), 2)
        assert f"{option} needs one; pass --price gpt-6-terra=INPUT,OUTPUT" in line, line
        assert "prices=" not in line

    assert sum(billed(emu).values()) == N  # the first run's; the refused ones sent nothing
    r = cli(emu, *args[:2], "priced.parquet", *args[3:], "--max-cost-usd", "1",
            "--price", "openai:gpt-6-terra=1.5,10", cwd=work)  # named as --model may name it
    assert r.returncode == 0, r.stderr
    out = pl.read_parquet(work / "priced.parquet")
    expected = (out["_input_tokens"] * 1.5 + out["_output_tokens"] * 10) / 1e6
    assert (out["_cost_usd"] - expected).abs().max() < 1e-12
    assert _near(float(_summary_cost(r.stderr)[1:]), out["_cost_usd"].sum()), r.stderr
    assert "unknown" not in r.stderr
    assert sum(billed(emu).values()) == 2 * N

    for bad in ("gpt-6-terra=1.5", "gpt-6-terra", "=1,2", "gpt-6-terra=a,b", "m=-1,2",
                "m=nan,1", "gpt-6-terra=1e308,1e308", "gpt-6-terra=1_000,1"):  # $inf; 1000
        line = one_line_error(cli(emu, *args, "--price", bad, cwd=work), 2)
        assert "--price takes MODEL=INPUT,OUTPUT" in line and repr(bad) in line
    # a price for a model the run does not use was ignored without a word (second review)
    for stray in ("other-model=1,2", "GPT-6-TERRA=1,2"):
        line = one_line_error(cli(emu, *args, "--price", "gpt-6-terra=1,2", "--price", stray,
                                  cwd=work), 2)
        assert f"--price {stray.split('=')[0]}=...: this run's model is 'gpt-6-terra'" in line
    assert sum(billed(emu).values()) == 2 * N


def _summary_cost(stderr: str) -> str:
    """The cost the summary line shows (``N completed; $X; written to ...``)."""
    line = next(x for x in stderr.splitlines() if "; written to " in x)
    return line.split("; ")[1]


@pytest.mark.parametrize(("rates", "zero"), [("0.001,0.001", False), ("0.00001,0", False),
                                             ("0,0", True)])
def test_a_tiny_known_cost_never_reads_as_zero_and_zero_does(work, emu, rates, zero):
    """`$0.0000` was printed for a known cost below $0.00005 (twenty rows at $0.001 per
    million tokens): shown to two significant digits now; a cost of zero is $0.0000."""
    r = cli(emu, "run", "in.parquet", "out.parquet", "--model", "gpt-6-terra",
            "--prompt", "{text}", "--price", f"gpt-6-terra={rates}", cwd=work)
    assert r.returncode == 0, r.stderr
    paid = pl.read_parquet(work / "out.parquet")["_cost_usd"].sum()
    shown = _summary_cost(r.stderr)
    assert shown.startswith("$"), r.stderr
    if zero:
        assert paid == 0 and shown == "$0.0000"
    else:
        assert 0 < paid < 0.00005  # what four decimals showed as $0.0000
        assert float(shown[1:]) == float(f"{paid:.1e}"), (shown, paid)


def _dollars(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"\$([0-9.]+)", text)]


def _near(shown: float, paid: float) -> bool:
    """``shown`` is ``paid`` as the summary rounds it (4 decimals, or 2 digits below $0.001)."""
    return abs(shown - paid) <= max(0.00005, 0.05 * paid)


def test_a_resumed_runs_summary_says_what_this_run_spent_and_the_folder_in_all(work, emu):
    """A run resumed on a folder holding earlier answers printed the folder's total as its
    own cost; now it says what this run spent and what the folder holds in all."""
    from batchata_df import sql

    pl.read_parquet(work / "in.parquet").head(N // 2).write_parquet(work / "half.parquet")
    args = ["out.parquet", "--model", "gpt-4.1-mini", "--prompt", "{text}", "--state", "s"]
    first = cli(emu, "run", "half.parquet", *args, cwd=work)
    assert first.returncode == 0, first.stderr
    earlier = sql("select sum(cost_usd) as usd from jobs", work / "s")["usd"][0]
    assert _near(float(_summary_cost(first.stderr)[1:]), earlier)  # a first run: one figure
    second = cli(emu, "run", "in.parquet", *args, cwd=work)
    assert second.returncode == 0, second.stderr
    in_all = sql("select sum(cost_usd) as usd from jobs", work / "s")["usd"][0]
    line = next(x for x in second.stderr.splitlines() if "; written to " in x)
    assert "; this run $" in line and "; the state folder in all, with earlier runs: $" in line
    this_run, total = _dollars(line.split("; written to ")[0])
    assert _near(this_run, in_all - earlier) and _near(total, in_all), (line, earlier, in_all)
    assert 0 < in_all - earlier < in_all
    assert sum(billed(emu).values()) == N  # each row paid once, half of them by each run


def test_a_resume_with_price_prices_the_folders_answers_stored_without_a_cost(work, emu):
    """After a run of a model without a price, a resume with --price still said "cost
    unknown" for the earlier answers (their stored cost stays null). The summary prices
    them from --price, says so, and the stored parts are not rewritten."""
    from batchata_df import sql

    pl.read_parquet(work / "in.parquet").head(N // 2).write_parquet(work / "half.parquet")
    args = ["out.parquet", "--model", "gpt-6-terra", "--prompt", "{text}", "--state", "s"]
    first = cli(emu, "run", "half.parquet", *args, cwd=work)
    assert first.returncode == 0, first.stderr
    assert "cost unknown for 10 answers" in first.stderr
    second = cli(emu, "run", "in.parquet", *args, "--price", "gpt-6-terra=1.5,10", cwd=work)
    assert second.returncode == 0, second.stderr
    line = next(x for x in second.stderr.splitlines() if "; written to " in x)
    assert "unknown" not in line, line
    assert "of it for 10 answers stored without a cost, priced from --price)" in line, line
    jobs = sql("select input_tokens, output_tokens, cost_usd from jobs", work / "s")
    stored = jobs.filter(pl.col("cost_usd").is_not_null())
    unpriced = jobs.filter(pl.col("cost_usd").is_null())  # kept as they were
    assert stored.height == unpriced.height == N // 2
    at_price = float(((unpriced["input_tokens"] * 1.5 + unpriced["output_tokens"] * 10)
                      / 1e6).sum())
    this_run, total, from_price = _dollars(line.split("; written to ")[0])
    assert _near(this_run, stored["cost_usd"].sum()), line
    assert _near(from_price, at_price), (line, at_price)
    assert _near(total, stored["cost_usd"].sum() + at_price), line
    assert sum(billed(emu).values()) == N


def test_a_cap_on_a_folder_with_answers_stored_without_a_cost_names_price(work, emu):
    """--max-cost-usd on a folder holding answers of an unpriced model was refused even
    with --price, by a message that named no option. Without --price it names --price;
    with it, the cap counts those answers at that price (a cap they use up sends nothing)."""
    from batchata_df import sql

    pl.read_parquet(work / "in.parquet").head(N // 2).write_parquet(work / "half.parquet")
    args = ["out.parquet", "--model", "gpt-6-terra", "--prompt", "{text}", "--state", "s",
            "--no-progress", "--max-tokens", "50", "--param", "reasoning_effort=none"]
    assert cli(emu, "run", "half.parquet", *args, cwd=work).returncode == 0
    paid = sum(billed(emu).values())
    line = one_line_error(cli(emu, "run", "in.parquet", *args, "--max-cost-usd", "5",
                              cwd=work), 2)
    assert f"holds {N // 2} answers of 'gpt-6-terra' stored without a cost" in line, line
    assert "pass --price gpt-6-terra=INPUT,OUTPUT" in line, line
    assert "Nothing was sent" in line
    assert sum(billed(emu).values()) == paid
    jobs = sql("select input_tokens, output_tokens from jobs", work / "s")
    stored = float(((jobs["input_tokens"] + jobs["output_tokens"]) * 1000 / 1e6).sum())
    price = ["--price", "gpt-6-terra=1000,1000"]
    r = cli(emu, "run", "in.parquet", *args, *price, "--max-cost-usd", f"{stored * 0.99}",
            cwd=work)  # counted as $0 they would leave room for most new answers
    assert r.returncode != 2, r.stderr
    assert sum(billed(emu).values()) == paid, r.stderr
    r = cli(emu, "run", "in.parquet", *args, *price, "--max-cost-usd", "1000", cwd=work)
    assert r.returncode == 0, r.stderr
    assert sum(billed(emu).values()) == N


def test_a_dry_runs_cap_is_the_one_passed_and_spent_counts_answers_priced_by_price(
    work, emu
):
    """The dry run showed the cap less what the stored answers cost at --price ("cap
    $-0.03: not one request fits") and an "already spent" without them. It shows the cap
    passed and counts them as spent."""
    from batchata_df import sql
    from batchata_df.progress import _cap

    pl.read_parquet(work / "in.parquet").head(N // 2).write_parquet(work / "half.parquet")
    args = ["out.parquet", "--model", "gpt-6-terra", "--prompt", "{text}", "--state", "s",
            "--max-tokens", "50", "--param", "reasoning_effort=none"]
    assert cli(emu, "run", "half.parquet", *args, "--no-progress", cwd=work).returncode == 0
    jobs = sql("select input_tokens, output_tokens from jobs", work / "s")
    stored = float(((jobs["input_tokens"] + jobs["output_tokens"]) * 1000 / 1e6).sum())
    cap = round(stored * 0.9, 4)
    r = cli(emu, "run", "in.parquet", *args, "--price", "gpt-6-terra=1000,1000",
            "--max-cost-usd", str(cap), "--dry-run", cwd=work)
    assert r.returncode == 0, r.stderr
    assert f"already spent or held by batches in flight: ${stored:,.4f}" in r.stderr, r.stderr
    assert f"cap {_cap(cap)}: not one request fits" in r.stderr, r.stderr
    assert sum(billed(emu).values()) == N // 2


def test_the_folders_bill_read_in_slices_is_the_bill_read_whole(work, emu, monkeypatch):
    """A big folder's bill is added up in slices of its jobs (bounded memory): the same."""
    from batchata_df import cli as cli_module
    from batchata_df import state

    pl.read_parquet(work / "in.parquet").head(N // 2).write_parquet(work / "half.parquet")
    args = ["out.parquet", "--model", "gpt-6-terra", "--prompt", "{text}", "--state", "s"]
    assert cli(emu, "run", "half.parquet", *args, cwd=work).returncode == 0
    r = cli(emu, "run", "in.parquet", *args, "--price", "gpt-6-terra=1.5,10", cwd=work)
    assert r.returncode == 0, r.stderr
    prices = {"gpt-6-terra": (1.5, 10.0)}
    whole = cli_module.folder_bill(work / "s", "gpt-6-terra", prices)
    assert (whole.priced, whole.from_price, whole.unknown) == (N // 2, N // 2, 0)
    assert cli_module.folder_bill(work / "s", "gpt-6-terra", {}).unknown == N // 2
    monkeypatch.setattr(state, "SPENT_SLICE_EVENTS", 7)
    sliced = cli_module.folder_bill(work / "s", "gpt-6-terra", prices)
    assert (sliced.priced, sliced.from_price, sliced.unknown) == (N // 2, N // 2, 0)
    assert sliced.cost == pytest.approx(whole.cost, rel=1e-12)
    assert sliced.from_price_usd == pytest.approx(whole.from_price_usd, rel=1e-12)


# -- INPUT as a folder of Parquet files, or a glob ------------------------------------------


def test_input_as_a_folder_or_a_glob_streams_every_file_in_name_order(work, emu):
    """`run in/ OUT` said "is a directory", `run 'in/*.parquet' OUT` "does not exist"; both
    read every file (sorted by name), each billed once. A literal file name still wins over
    a pattern reading (tests/test_glob_names.py); OUTPUT among the matches is refused."""
    (work / "in").mkdir()
    for part in (2, 0, 1):
        pl.DataFrame({"id": [part * 10 + j for j in range(3)],
                      "text": [f"part {part} row {j}" for j in range(3)]}).write_parquet(
            work / "in" / f"p{part}.parquet")
    (work / "in" / "notes.txt").write_text("not an input")
    ids = [0, 1, 2, 10, 11, 12, 20, 21, 22]
    for source, output in (("in", "a.parquet"), ("in/*.parquet", "b.csv"),
                           ("in/p[01].parquet", "c.parquet")):
        r = cli(emu, "run", source, output, "--model", "gpt-4.1-mini", "--prompt", "{text}",
                "--chunk-rows", "2", cwd=work)
        assert r.returncode == 0, r.stderr
        out = pl.read_parquet(work / output) if output.endswith(".parquet") else pl.read_csv(
            work / output)
        assert out["id"].to_list() == (ids[:6] if "[" in source else ids)
        assert set(out["_status"]) == {"completed"}
    # Each run its own state folder: 9 + 9 + 6 rows, each row once per run.
    assert sum(billed(emu).values()) == 24 and len(billed(emu)) == 9

    (work / "empty").mkdir()
    pl.DataFrame({"other": [1]}).write_parquet(work / "odd.parquet")
    (work / "mixed").mkdir()
    for name in ("a.parquet", "b.parquet"):
        (work / "mixed" / name).write_bytes((work / ("in/p0.parquet" if name[0] == "a"
                                                     else "odd.parquet")).read_bytes())
    for source, output, needle in (
        ("nowhere/*.parquet", "x.parquet", "does not exist, nor matches any file"),
        ("empty", "x.parquet", "input folder 'empty' holds no .parquet"),
        ("mixed", "x.parquet", "'mixed/b.parquet' has other columns than 'mixed/a.parquet'"),
        ("in/*.parquet", "in/p1.parquet", "OUTPUT 'in/p1.parquet' is the INPUT file"),
    ):
        line = one_line_error(cli(emu, "run", source, output, "--model", "gpt-4.1-mini",
                                  "--prompt", "{text}", cwd=work), 2)
        assert needle in line, line
    assert len(emu.billing()) == 24


# -- second review: links, OUTPUT inside INPUT, empty fields, no rows, dot files -------------


def test_an_output_named_through_a_link_is_the_file_it_names(work, emu, procs):
    """A symbolic link to OUTPUT skipped the one-run-per-OUTPUT check (the hidden folder
    was named after the link): two runs 0.2 s apart both paid. The link's file is OUTPUT:
    locked under its name, written in place, the link kept."""
    (work / "out.parquet").write_bytes(b"")
    (work / "link.parquet").symlink_to("out.parquet")
    emu.configure(latency=1000.0)
    first = _start(emu, work, "--state", "s1")  # writes out.parquet
    procs.append(first)
    _wait_for(lambda: batch_posts(emu) == 1 and sum(billed(emu).values()) == N, first,
              "run A never submitted its batch")  # logged on arrival, billed when handled
    r = cli(emu, "run", "in.parquet", "link.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{text}", "--state", "s2", "--no-wait", cwd=work)
    assert "is being written by another run" in one_line_error(r, 75)
    assert batch_posts(emu) == 1 and sum(billed(emu).values()) == N
    emu.advance(1000.0)
    _, err = first.communicate(timeout=240)
    assert first.returncode == 0, err

    emu.configure(latency=0.0)
    r = cli(emu, "run", "in.parquet", "link.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "{text}", "--state", "s1", cwd=work)
    assert r.returncode == 0, r.stderr
    assert (work / "link.parquet").is_symlink()  # still the link, to the result
    assert pl.read_parquet(work / "link.parquet")["id"].to_list() == list(range(N))
    assert sum(billed(emu).values()) == N


@pytest.mark.parametrize("given", ["folder", "glob"])
def test_an_output_that_input_would_read_next_time_is_refused(work, emu, given):
    """`run gd gd/out.parquet --no-wait` passed, then "run the same command again" was
    refused (OUTPUT was now an INPUT file): refused the first time, before sending."""
    (work / "gd").mkdir()
    (work / "in.parquet").rename(work / "gd" / "a.parquet")
    source = "gd" if given == "folder" else "gd/*.parquet"
    r = cli(emu, "run", source, "gd/out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "Route: {text}", cwd=work)
    line = one_line_error(r, 2)
    assert "would be read as INPUT" in line and "write it outside INPUT" in line
    assert emu.log() == []
    # elsewhere it runs, and a dot file in the folder (macOS's ._ files) is not an input
    (work / "gd" / "._a.parquet").write_bytes(b"\x00\x05junk")
    r = cli(emu, "run", source, "out.parquet", "--model", "gpt-4.1-mini",
            "--prompt", "Route: {text}", cwd=work)
    assert r.returncode == 0, r.stderr
    assert pl.read_parquet(work / "out.parquet")["id"].to_list() == list(range(N))


def test_an_empty_csv_field_is_empty_text_as_the_file_has_it(work, emu):
    """Spreadsheets write blanks unquoted: such a field was read as null and its row
    failed ("the prompt is null") while `""` was sent."""
    (work / "blank.csv").write_text('id,text\n1,hi\n2,\n3,""\n')
    r = cli(emu, "run", "blank.csv", "o.csv", "--model", "gpt-4.1-mini",
            "--prompt", "Say: [{text}]", cwd=work)
    assert r.returncode == 0, r.stderr
    out = pl.read_csv(work / "o.csv", infer_schema=False)
    assert out["_status"].to_list() == ["completed"] * 3
    assert out["text"].to_list()[0] == "hi"
    assert [r.startswith("Emulated answer about 'Say: []'") for r in out["response"]] == [
        False, True, True]


@pytest.mark.parametrize("output", ["out.parquet", "out.csv"])
def test_an_input_without_rows_writes_an_output_without_rows(work, emu, output):
    """A header-only CSV or an empty Parquet file crashed with IndexError (exit 1)."""
    pl.DataFrame(schema={"id": pl.Int64, "text": pl.String}).write_parquet(work / "e.parquet")
    r = cli(emu, "run", "e.parquet", output, "--model", "gpt-4.1-mini",
            "--prompt", "Route: {text}", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert pl.scan_parquet(work / output).collect().height == 0 if output.endswith(
        "parquet") else (work / output).read_text().splitlines()[0].startswith("id,text")
    assert emu.billing() == []


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_an_output_link_to_a_file_without_an_extension_is_written_in_the_links_format(
    work, emu, kind
):
    """The format comes from the name given: the file a link names (a data lake's
    ``part-0``) has none, and the run failed after paying, at the rename."""
    (work / "lake").mkdir()
    (work / f"out.{kind}").symlink_to(work / "lake" / "part-0")  # dangling: created
    r = cli(emu, "run", "in.parquet", f"out.{kind}", "--model", "gpt-4.1-mini", "--prompt",
            "{text}", cwd=work)
    assert r.returncode == 0, r.stderr
    assert (work / f"out.{kind}").is_symlink()
    read = pl.read_parquet if kind == "parquet" else pl.read_csv
    got = read(work / "lake" / "part-0")
    assert got["id"].to_list() == list(range(N))
    assert got["_status"].to_list() == ["completed"] * N
    assert sum(billed(emu).values()) == N
    assert sorted(p.name for p in (work / "lake").iterdir()) == ["part-0", "part-0.state"]


def test_an_output_link_into_a_missing_folder_is_a_usage_error_before_sending(work, emu):
    """A link into an unmounted drive: its folder was created on the local disk."""
    (work / "out.parquet").symlink_to(work / "mnt" / "lake" / "t.parquet")
    line = one_line_error(cli(emu, *RUN, cwd=work), 2)
    assert "symbolic link to" in line and "does not exist" in line and "Nothing was sent" in line
    assert not (work / "mnt").exists()
    assert emu.log() == [] and emu.billing() == []


@pytest.mark.parametrize("through_link", [False, True])
def test_an_output_that_is_a_folder_is_a_usage_error_before_sending(work, emu, through_link):
    """click's ``Path(dir_okay=False)`` refuses it, through a link too (a ``sink=`` call
    found it only by the rename at the end, after every row was paid for)."""
    (work / "ds.parquet").mkdir()
    output = "ds.parquet"
    if through_link:
        (work / "out.parquet").symlink_to("ds.parquet")
        output = "out.parquet"
    r = cli(emu, "run", "in.parquet", output, "--model", "gpt-4.1-mini", "--prompt", "{text}",
            cwd=work)
    assert "is a directory" in one_line_error(r, 2)
    assert emu.log() == [] and emu.billing() == []


# -- third review: the library's fixes in the command's words, the --state default ----------


@pytest.mark.parametrize(
    ("args", "said", "fix", "python_words"),
    [(["--prompt", "{text}", "--system", ""], "--system '' has no text to send",
      "leave --system out to send no system prompt", "system=None"),
     (["--prompt", " "], "--prompt ' ' has no text to send",
      "e.g. --prompt '{text}'", "prompt='{text}'")],
    ids=["empty-system", "blank-prompt"],
)  # fmt: skip
def test_a_blank_prompt_or_system_names_the_commands_fix(work, emu, args, said, fix,
                                                        python_words):
    """The library's ConfigError told a CLI user to ``pass system=None`` or write
    ``prompt='{text}'``: the command says it with its options. Exit 2, nothing sent."""
    r = cli(emu, "run", "in.parquet", "out.parquet", "--model", "gpt-4.1-mini", *args,
            "--no-progress", cwd=work)  # fmt: skip
    line = one_line_error(r, 2)
    assert said in line and fix in line, line
    assert python_words not in line, line
    assert emu.log() == [] and emu.billing() == []
    assert sorted(p.name for p in work.iterdir()) == ["in.parquet"]  # no OUTPUT, no state


@pytest.mark.parametrize(
    ("args", "said", "python_words"),
    [(["--model", "gpt-4.1-mini", "--param", "temperature=5"],
      "--param temperature must be between 0 and 2", "params["),
     (["--model", "gpt-4.1-mini", "--param", "reasoning_effort=high"],
      "does not think: --param reasoning_effort; remove it", "params["),
     (["--model", "gpt-5-pro"], "use 'gpt-5' with --param reasoning_effort=high instead",
      "params="),
     (["--model", "gpt-4.1-mini", "--citations"],
      "--citations needs documents to cite: pass --files COLUMN (a column of file paths; "
      "PDF or text), or remove --citations", "files="),
     (["--model", "gpt-4.1-mini", "--citations", "--files", "text"],
      "--citations is supported for ['anthropic'] models only, but this run uses ['openai']; "
      "use a Claude model (e.g. --model claude-haiku-4-5) or remove --citations", "model="),
     (["--model", "gpt-4.1-mini", "--history", "text"],
      "--history 'text' must be a list of", "history="),
     (["--model", "gpt-4.1-mini", "--schema", "models:Clash"],
      "Rename those columns of INPUT (e.g. 'id' to 'id_in') or the --schema fields",
      "df.rename")],
    ids=["param-range", "param-refused", "model-param-fix", "citations-no-files",
         "citations-provider", "history-dtype", "column-clash"],
)  # fmt: skip
def test_the_librarys_argument_fixes_are_said_as_the_commands_options(work, emu, args, said,
                                                                      python_words):
    """``batchata-df run`` users were told to fix ``params['temperature']``, pass
    ``params={'reasoning_effort': 'high'}``, ``files='<column of file paths>'`` or
    ``df.rename(...)``: Python arguments a shell user has no way to pass. Exit 2, nothing
    sent."""
    (work / "models.py").write_text(
        "from pydantic import BaseModel\nclass Clash(BaseModel):\n    id: int\n"
    )
    r = cli(emu, "run", "in.parquet", "out.parquet", "--prompt", "{text}", *args,
            "--no-progress", cwd=work)  # fmt: skip
    line = one_line_error(r, 2)
    assert said in line, line
    assert python_words not in line, line
    assert emu.log() == [] and emu.billing() == []


def test_the_help_says_where_the_state_folder_of_a_linked_output_goes(emu) -> None:
    """Next to the link's target (see the lake test above: part-0.state beside part-0),
    not next to the link, as "OUTPUT.state next to the output" read."""
    r = subprocess.run([str(EXE), "run", "--help"], env=_env(emu), capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "Default: OUTPUT.state next to the output (when OUTPUT is a symbolic link: next " \
        "to the file it points to, TARGET.state)." in text, text
