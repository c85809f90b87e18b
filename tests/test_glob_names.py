"""File and folder names holding glob characters (``[``, ``]``, ``*``, ``?``) are names.

Polars' readers (``scan_parquet``, ``scan_ndjson``, ``scan_csv``, ``read_parquet_schema``)
and DuckDB's ``read_parquet`` expand such a path as a pattern by default: ``out[1].parquet``
matches ``out1.parquet`` and never itself, ``x?`` also matches ``xy``. A user's OUTPUT,
state folder or sink so named used to fail after the requests were sent and billed (the
streaming chunks, the sink, the state parts are all read back from under those names).
Here the installed CLI (a subprocess) and the library run with such names against the
emulator; every run must finish, write every row in order and bill each request once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm, doctor, sql
from batchata_df.state import find_damaged, read_manifest, spent_usd

EXE = Path(sys.executable).with_name("batchata-df")
REPO = Path(__file__).resolve().parents[1]
N = 30


class Item(BaseModel):
    label: str
    score: int


def _rows(n: int = N) -> pl.DataFrame:
    return pl.DataFrame({"id": list(range(n)), "text": [f"item {i}" for i in range(n)]})


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)  # this checkout, whatever the venv's install points at
    return subprocess.run(
        [str(EXE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


def _read(path: Path) -> pl.DataFrame:
    # The test's own reads are of literal names too.
    if path.suffix == ".parquet":
        return pl.read_parquet(path, glob=False)
    if path.suffix == ".csv":
        return pl.read_csv(path, glob=False)
    return pl.read_ndjson(path.read_bytes())


def _billed_once(emu, n: int, mode: str = "batch") -> None:
    bills = emu.billing()
    assert len(bills) == n, len(bills)
    assert {b["mode"] for b in bills} == {mode}
    assert max(Counter(b["request"] for b in bills).values()) == 1
    if mode == "batch":
        assert max(Counter(b["custom_id"] for b in bills).values()) == 1


@pytest.mark.parametrize(
    ("source", "output", "state", "mode"),
    [
        ("in[1].parquet", "out[1].parquet", None, "batch"),
        ("in[ab].ndjson", "o[ab].ndjson", None, "batch"),
        ("in.parquet", "a*b?.csv", None, "batch"),
        ("in.parquet", "out[1].csv", "plain.state", "batch"),
        ("in?.csv", "out.parquet", "s[1]*?.state", "batch"),
        ("in.parquet", "r[1].parquet", None, "realtime"),  # not streamed: written, read back
    ],
)
def test_cli_run_with_glob_characters_in_names(emu, tmp_path, source, output, state, mode):
    """`run IN OUT` finishes, writes every row in order, bills each once; a rerun sends
    nothing. Decoy files that the names would match as patterns sit beside them."""
    frame = _rows()
    if source.endswith(".csv"):
        frame.write_csv(tmp_path / source)
        frame.head(3).write_csv(tmp_path / "inX.csv")  # what `in?.csv` matches as a pattern
    elif source.endswith(".ndjson"):
        frame.write_ndjson(tmp_path / source)
        frame.head(3).write_ndjson(tmp_path / "ina.ndjson")  # what `in[ab].ndjson` matches
    else:
        frame.write_parquet(tmp_path / source)
    _rows(2).write_parquet(tmp_path / "out1.parquet")  # what `out[1].parquet` would match
    args = [source, output, "--model", "gpt-4.1-mini", "--prompt", "Rate: {text}",
            "--no-progress", "--mode", mode]
    if state is not None:
        args += ["--state", state]
    r = _cli("run", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = _read(tmp_path / output)
    # A CSV INPUT is read as text ("0"); Parquet and NDJSON keep Int64.
    assert out["id"].cast(pl.Int64).to_list() == list(range(N))
    assert out["_status"].to_list() == ["completed"] * N
    assert out["text"].to_list() == frame["text"].to_list()
    _billed_once(emu, N, mode)
    folder = tmp_path / (state if state is not None else f"{output}.state")
    assert (folder / "manifest.json").is_file()
    # Nothing hidden left beside OUTPUT or in the state folder by the run.
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    # Run again: the folder answers every row, nothing is sent or billed again.
    r = _cli("run", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _read(tmp_path / output)["id"].cast(pl.Int64).to_list() == list(range(N))
    _billed_once(emu, N, mode)
    # The state commands read the folder by its name too.
    r = _cli("status", str(folder), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _cli("doctor", str(folder), cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout


@pytest.mark.parametrize("name", ["a[1]*?", "b*?"])
@pytest.mark.parametrize("streamed", [True, False], ids=["sink", "in-memory"])
def test_library_state_and_sink_with_glob_characters_resume_and_sql(
    emu, tmp_path, streamed, name
):
    """`batch_llm(..., state=, sink=)` with glob characters in both names: the first call
    bills each row once, the second sends nothing and gives the same rows, a third with
    five more rows sends those five; `sql`, `spent_usd`, `doctor` and a manifest rebuilt by
    `doctor` read the folder's own parts. A copy of the folder whose name the state name
    matches as a pattern sits beside it: read as patterns, ``runs[1]/a[1]*?`` names only the
    copy's parts (``runs1/a1xy``) and ``runs/b*?`` both folders' (``runs/bxy``)."""
    runs = tmp_path / ("runs[1]" if "[" in name else "runs")
    state = runs / name
    # runs[1]/a[1]*? as a pattern matches runs1/a1xy (only); runs/b*? matches runs/bxy too.
    copy = tmp_path / "runs1" / "a1xy" if "[" in name else runs / "bxy"
    sink = tmp_path / "out[1]*?.parquet"
    kw = {"schema": Item, "model": "gpt-4.1-mini", "prompt": "Rate: {text}", "progress": False,
          "max_cost_usd": 5.0}  # a cap: the folder's spend is read back before sending

    def call(frame: pl.DataFrame) -> pl.DataFrame:
        if streamed:
            lf = batch_llm(frame.lazy(), state=state, sink=sink, chunk_rows=7, **kw)
            assert isinstance(lf, pl.LazyFrame)
            return lf.collect()
        got = batch_llm(frame, state=state, **kw)  # type: ignore[arg-type]
        assert isinstance(got, pl.DataFrame)
        return got

    first = call(_rows())
    assert first["id"].to_list() == list(range(N))
    assert first["_status"].to_list() == ["completed"] * N
    assert first["score"].null_count() == 0
    _billed_once(emu, N)
    shutil.copytree(state, copy)  # a backup, under a name the pattern would match
    second = call(_rows())
    _billed_once(emu, N)  # resumed from the folder: nothing sent again
    assert second.select("id", "label", "score").equals(first.select("id", "label", "score"))
    third = call(_rows(N + 5))
    assert third["_status"].to_list() == ["completed"] * (N + 5)
    _billed_once(emu, N + 5)  # only the five new rows were sent
    counts = sql(
        "SELECT count(*) AS n, count(DISTINCT job_id) AS jobs, sum(cost_usd) AS cost "
        "FROM jobs WHERE status = 'completed'",
        state=state,
    )
    assert counts["n"].item() == N + 5  # this folder's jobs, once each
    assert counts["jobs"].item() == N + 5
    assert counts["cost"].item() == pytest.approx(third["_cost_usd"].sum())
    assert spent_usd(state) == pytest.approx(third["_cost_usd"].sum())
    for table in ("job_events", "batch_events"):  # events numbered on from the last one
        seqs = sql(f"SELECT count(*) AS n, count(DISTINCT seq) AS d FROM {table}", state=state)
        assert seqs["n"].item() == seqs["d"].item() > 0
    assert find_damaged(state, deep=True) == []
    assert doctor(state).healthy
    run_id = read_manifest(state / "manifest.json").run_id
    (state / "manifest.json").unlink()
    report = doctor(state)
    assert report.manifest is not None
    assert report.manifest.run_id == run_id
    assert report.run_id_source.startswith("recorded in")


def test_cli_dry_run_with_glob_characters_in_names(emu, tmp_path):
    """`run IN OUT --dry-run --plan FILE` writes the plan under FILE's name (never OUTPUT)
    and sends nothing."""
    _rows().write_parquet(tmp_path / "in.parquet")
    _rows(2).write_parquet(tmp_path / "p1.parquet")  # what `p[1].parquet` would match
    r = _cli("run", "in.parquet", "o[1].parquet", "--model", "gpt-4.1-mini",
             "--prompt", "Rate: {text}", "--dry-run", "--plan", "p[1].parquet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "o[1].parquet").exists()
    assert _read(tmp_path / "p1.parquet").height == 2  # not the glob's match
    plan = _read(tmp_path / "p[1].parquet")
    assert plan["id"].to_list() == list(range(N))
    assert plan["_status"].to_list() == ["planned"] * N
    assert "30" in r.stderr  # the summary counted the plan's rows
    assert emu.billing() == []


def test_library_dry_run_sink_with_glob_characters(emu, tmp_path):
    """`batch_llm(lf, sink=..., dry_run=True)` returns the plan (from a file of its own:
    the sink is never written by a dry run)."""
    plan = batch_llm(
        _rows().lazy(), schema=Item, model="gpt-4.1-mini", prompt="Rate: {text}",
        sink=tmp_path / "plan[1]*?.parquet", state=tmp_path / "s[1]", dry_run=True,
        progress=False,
    )
    assert not (tmp_path / "plan[1]*?.parquet").exists()
    assert isinstance(plan, pl.LazyFrame)
    got = plan.collect()
    assert got["id"].to_list() == list(range(N))
    assert got["_status"].to_list() == ["planned"] * N
    assert emu.billing() == []


def test_streamed_jobs_sent_again_are_rebuilt_from_chunks_under_such_names(emu, tmp_path):
    """Batches refused for the queue limit are sent again: their jobs are rebuilt from the
    streaming chunks spilled in a state folder named with glob characters."""
    frame = pl.DataFrame({"id": list(range(8)), "text": [f"row {i:03d}" for i in range(8)]})
    kw = {"schema": Item, "model": "gpt-4.1-mini", "prompt": "{text}", "progress": False}
    one = batch_llm(frame.head(1), **kw)  # type: ignore[arg-type]
    tokens = int(one["_input_tokens"][0])
    emu.reset()
    emu.configure(openai={"max_enqueued_tokens": tokens * 3})  # room for 3 requests
    try:
        lf = batch_llm(frame.lazy(), state=tmp_path / "q[1]*?", sink=tmp_path / "q[1].parquet",
                       **kw)
        assert isinstance(lf, pl.LazyFrame)
        out = lf.collect()
    finally:
        emu.configure(openai={"max_enqueued_tokens": 10**12})
    assert out["id"].to_list() == list(range(8))
    assert out["_status"].to_list() == ["completed"] * 8
    assert out.group_by("_batch_id").len()["len"].max() <= 3  # refused, split, sent again
    _billed_once(emu, 8)


def test_sql_reads_a_state_folder_whose_name_holds_a_backslash_and_glob_characters(
    emu, tmp_path
):
    """DuckDB's glob matches nothing through a backslash, escaped or not: such a folder's
    parts are read as literal names, never a copy whose name the pattern would match, and
    a quote and a percent sign in the name are read as themselves too."""
    for name in ["b\\s[1]?", "it's 100%[*]"]:
        state = tmp_path / name
        out = batch_llm(_rows(10), schema=Item, model="gpt-4.1-mini", prompt="Rate: {text}",
                        progress=False, state=state)
        assert out["_status"].to_list() == ["completed"] * 10
        decoy = tmp_path / ("b\\s1x" if "\\" in name else "it's 100%*")
        shutil.copytree(state, decoy)
        batch_llm(_rows(13), schema=Item, model="gpt-4.1-mini", prompt="Rate: {text}",
                  progress=False, state=decoy)  # 13 jobs there, 10 here
        got = sql("SELECT count(DISTINCT job_id) AS jobs, min(run) AS run FROM jobs "
                  "WHERE status = 'completed'", state)
        assert got.rows() == [(10, str(state))]
