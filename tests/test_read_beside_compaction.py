"""Reading a state folder while another process compacts it.

Reading needs no lock: the lock error itself says "`batchata-df status` and `batchata-df
sql` read it without waiting", and a dry run reads the folder without it. A streamed run
ends by compacting the folder's parts: it writes the merged part, renames it over the
old parts' range and deletes them. A reader that listed the parts before the rename and
read them after the deletion failed with the reading library's error: DuckDB's ``IO
Error: No files found that match the pattern ".../jobs/part-....parquet"`` from ``sql``,
Polars' ``FileNotFoundError`` from a dry run, or a :class:`StateError` calling the folder
damaged (a part that vanished read as unreadable Parquet). Seen by a reader polling
``sql`` and a dry run beside a 200-row streamed run (1 failure in about 35 reads).

Here the race is made certain: the reader's listing of a table's parts is taken, then a
real second process takes the folder's writer lock and compacts it, then the reader reads
what it listed. The reader must read the folder again (the parts changed under it) and give
the same answer as without the race. So must a call that reads the folder before it
takes the lock (a second notebook's, waiting with ``lock_timeout``), which failed the same
way; it is never made again once it has taken the lock (before which it sends nothing).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from batchata_df import batch_llm, sql, state

REPO = Path(__file__).resolve().parents[1]
MODEL = "gemini-3.5-flash"  # the emulator prices Gemini's bills: compared with the folder's
PARAMS = {"max_tokens": 200, "reasoning_effort": "minimal"}
NTH_DRY = [4, 7, 10]  # a job part, a "damaged" folder, a batch part (as listed)

# argv: state folder. Another process's compaction, as a streamed run ends with.
COMPACT = textwrap.dedent(
    """
    import json, sys
    from batchata_df.state import StateStore, WriterLock
    root = sys.argv[1]
    fingerprint = json.load(open(root + "/manifest.json"))["fingerprint"]
    with WriterLock(root):
        print(StateStore(root, fingerprint).compact())
    """
)


def _rows() -> pl.DataFrame:
    return pl.DataFrame({"text": [f"review {i}: fine" for i in range(12)]})


def _kw(folder: Path) -> dict[str, object]:
    return dict(model=MODEL, prompt="Summarise: {text}", state=str(folder), params=PARAMS,
                progress=False)  # fmt: skip


@pytest.fixture
def folder(emu, tmp_path: Path) -> Path:
    """A folder of 12 answered rows in 4 batches: several parts per table."""
    st = tmp_path / "st"
    out = batch_llm(_rows(), items_per_batch=3, **_kw(st))  # type: ignore[arg-type]
    assert out["_status"].to_list() == ["completed"] * 12
    assert len(state.table_parts(st / "jobs")) > 1
    return st


def _compacted_after_listing(
    monkeypatch: pytest.MonkeyPatch, folder: Path, nth: int = 1
) -> list[int]:
    """The ``nth`` listing of a table's parts in ``folder`` is followed by another process's
    compaction before the caller reads them; returns the parts it merged (one item)."""
    merged: list[int] = []
    seen: list[Path] = []
    real = state.table_parts

    def listing(table: str | os.PathLike[str]) -> list[Path]:
        parts = real(table)
        if Path(table).parent == folder:
            seen.append(Path(table))
        if not merged and len(seen) == nth and Path(table).parent == folder:
            env = dict(os.environ, PYTHONPATH=str(REPO))
            done = subprocess.run(
                [sys.executable, "-c", COMPACT, str(folder)], env=env,
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            merged.append(int(done.stdout))
            assert merged[0] > 1
            assert any(not p.exists() for p in parts)  # what was listed is gone
        return parts

    monkeypatch.setattr(state, "table_parts", listing)
    from batchata_df import query

    monkeypatch.setattr(query, "table_parts", listing)
    return merged


@pytest.fixture
def compacted_after_listing(monkeypatch: pytest.MonkeyPatch, folder: Path) -> list[int]:
    """The first listing of ``folder``'s parts is followed by another process's compaction."""
    return _compacted_after_listing(monkeypatch, folder)


def test_sql_beside_a_compaction_reads_the_folder_again(emu, folder, compacted_after_listing):
    query = "select status, count(*) n, sum(cost_usd) usd from jobs group by all"
    got = sql(query, state=str(folder))
    assert compacted_after_listing  # the race happened
    assert got["status"].to_list() == ["completed"]
    assert got["n"].to_list() == [12]
    billed = sum(b["usd"] for b in emu.billing(usd=True))
    assert len(emu.billing()) == 12
    assert got["usd"][0] == pytest.approx(billed, rel=1e-9)


@pytest.mark.parametrize("nth", NTH_DRY)
def test_a_dry_run_beside_a_compaction_reads_the_folder_again(emu, folder, monkeypatch, nth):
    compacted_after_listing = _compacted_after_listing(monkeypatch, folder, nth)
    sent = len(emu.log())
    plan = batch_llm(_rows(), dry_run=True, max_cost_usd=1.0, **_kw(folder))  # type: ignore[arg-type]
    assert compacted_after_listing  # the race happened
    assert plan["_status"].to_list() == ["done"] * 12
    assert plan["_est_cost_usd"].sum() == 0
    assert len(emu.log()) == sent  # a dry run sends nothing


@pytest.mark.parametrize("nth", NTH_DRY)
def test_a_streamed_dry_run_beside_a_compaction_reads_the_folder_again(
    emu, folder, monkeypatch, tmp_path, nth
):
    compacted_after_listing = _compacted_after_listing(monkeypatch, folder, nth)
    plan = batch_llm(
        _rows().lazy(),
        sink=str(tmp_path / "out.parquet"),
        dry_run=True,
        max_cost_usd=1.0,
        **_kw(folder),  # type: ignore[arg-type]
    ).collect()
    assert compacted_after_listing  # the race happened
    assert plan["_status"].to_list() == ["done"] * 12
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("nth", [4, 5, 6])  # a job part, a batch part, a job part
def test_a_capped_call_waiting_for_the_lock_beside_a_compaction_reads_the_folder_again(
    emu, folder, monkeypatch, nth
):
    """A second notebook's call (lock_timeout=None) on the folder of a run that ends by
    compacting it: read before the lock, the folder changed; 4 new rows are sent once."""
    compacted = _compacted_after_listing(monkeypatch, folder, nth)
    rows = pl.concat([_rows(), pl.DataFrame({"text": [f"new {i}: bad" for i in range(4)]})])
    out = batch_llm(rows, max_cost_usd=1.0, lock_timeout=None, **_kw(folder))  # type: ignore[arg-type]
    assert compacted  # the race happened
    assert out["_status"].to_list() == ["completed"] * 16
    bills = emu.billing(usd=True)
    assert len(bills) == 16
    assert len({b["request"] for b in bills}) == 16  # nothing paid twice
    assert out["_cost_usd"].sum() == pytest.approx(sum(b["usd"] for b in bills), rel=1e-9)


# -- doctor and repair beside a compaction ---------------------------------------------------
# doctor lists the parts (find_damaged: jobs, batches), checks each, then lists and reads them
# (jobs, batches): listings 1-2 made a part that vanished look damaged ("unreadable Parquet
# (No such file ...)"), 3-4 failed with FileNotFoundError.
NTH_DOCTOR = [1, 2, 3, 4]


@pytest.mark.parametrize("nth", NTH_DOCTOR)
def test_doctor_beside_a_compaction_finds_the_folder_healthy(emu, folder, monkeypatch, nth):
    from batchata_df.repair import doctor

    compacted = _compacted_after_listing(monkeypatch, folder, nth)
    report = doctor(folder)
    assert compacted  # the race happened
    assert report.damaged == [] and report.healthy, str(report)
    assert str(report) == f"{folder}: healthy, nothing to repair"


@pytest.mark.parametrize("nth", NTH_DOCTOR)
def test_a_repair_plan_beside_a_compaction_finds_nothing_to_do(emu, folder, monkeypatch, nth):
    from batchata_df.repair import repair

    compacted = _compacted_after_listing(monkeypatch, folder, nth)
    parts = sorted(p.name for p in (folder / "jobs").iterdir())
    sent = len(emu.log())
    report = repair(folder)
    assert compacted  # the race happened
    assert report.healthy and not report.applied, str(report)
    assert not (folder / "damaged").exists()
    assert sorted(p.name for p in (folder / "jobs").iterdir()) != parts  # compacted, not repaired
    assert len(emu.log()) == sent  # a healthy folder asks no provider


def test_doctor_on_the_command_line_beside_a_compaction_exits_0(emu, folder, monkeypatch, capsys):
    from batchata_df.cli import main

    compacted = _compacted_after_listing(monkeypatch, folder, 1)
    assert main(["doctor", str(folder)]) == 0
    assert compacted
    assert capsys.readouterr().out.strip() == f"{folder}: healthy, nothing to repair"


def test_doctor_beside_a_compaction_still_names_a_really_damaged_part(emu, folder, monkeypatch):
    """A part that is damaged (not one that vanished) is reported once the reads agree."""
    from batchata_df.repair import doctor

    compacted = _compacted_after_listing(monkeypatch, folder, 1)
    bad = folder / "batches" / "part-99999999999999999999-zzzzzzzz.parquet"
    checked: list[Path] = []
    real = state.check_part

    def checking(path: Path, *, deep: bool = False) -> str | None:
        if compacted and not bad.exists():  # damage appears after the compaction
            bad.write_bytes(b"not parquet at all")
        checked.append(path)
        return real(path, deep=deep)

    monkeypatch.setattr(state, "check_part", checking)
    report = doctor(folder)
    assert compacted
    assert [d.path for d in report.damaged] == [bad]
    assert report.damaged[0].problem.startswith("unreadable Parquet")
    assert checked.count(bad) == 1  # read twice in all: the second agreed with the folder


# A live run holding the folder's writer lock (a second process), until told to stop.
HOLD = textwrap.dedent(
    """
    import sys
    from batchata_df.state import WriterLock
    with WriterLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
    """
)


def test_repair_apply_beside_a_live_run_refuses_and_changes_nothing(emu, folder, capsys):
    from batchata_df.cli import EXIT_LOCKED, main
    from batchata_df.errors import StateLockedError
    from batchata_df.repair import repair

    bad = state.table_parts(folder / "jobs")[-1]
    bad.write_bytes(b"not parquet at all")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert run.stdout is not None and run.stdout.readline() == "locked\n"
        with pytest.raises(StateLockedError) as e:
            repair(folder, apply=True)
        assert e.value.holder is not None and e.value.holder.pid == run.pid
        message = str(e.value)
        assert f"pid {run.pid}" in message
        assert "cannot repair" in message and "nothing was changed" in message
        assert "lock_timeout" not in message  # repair has no such argument
        assert main(["repair", str(folder), "--apply"]) == EXIT_LOCKED
        err = capsys.readouterr().err
        assert f"pid {run.pid}" in err and "nothing was changed" in err
        assert "--lock-timeout" not in err and "lock_timeout" not in err
    finally:
        assert run.stdin is not None
        run.stdin.close()
        run.wait(timeout=60)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    report = repair(folder, apply=True)  # the run has ended: repair does it now
    assert report.applied and [d.path for d in report.damaged] == [bad]


def test_repair_apply_reads_the_folder_under_the_lock(emu, folder, monkeypatch):
    """A compaction tried while ``repair --apply`` reads the folder is refused: repair holds
    the writer lock from before its first listing, so what it moves aside cannot be a part a
    compaction replaced."""
    from batchata_df.repair import repair

    refused: list[str] = []
    real = state.table_parts

    def listing(table: str | os.PathLike[str]) -> list[Path]:
        parts = real(table)
        if not refused and Path(table).parent == folder:
            env = dict(os.environ, PYTHONPATH=str(REPO))
            done = subprocess.run(
                [sys.executable, "-c", COMPACT, str(folder)], env=env,
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            refused.append(done.stderr)
        return parts

    monkeypatch.setattr(state, "table_parts", listing)
    report = repair(folder, apply=True)
    assert refused and "StateLockedError" in refused[0]
    assert report.healthy and not (folder / "damaged").exists()
