"""``batch_llm(lf, ..., sink=..., dry_run=True)`` never writes the sink, against the emulator.

Re-running a notebook cell or a pipeline step with ``dry_run=True`` (to see what the same
call would still cost) replaced a finished result in the sink with the plan: the answers
and ``_cost_usd`` gone. A dry run writes its plan to a Parquet file of its own, in the
temporary folder, and returns a LazyFrame over it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from pydantic import BaseModel

from batchata_df import batch_llm

REPO = Path(__file__).resolve().parents[1]


class Item(BaseModel):
    label: str
    score: int


KW: dict[str, object] = {"schema": Item, "model": "gpt-4.1-mini", "prompt": "Rate: {text}",
                         "progress": False}


def _input(folder: Path, n: int) -> Path:
    path = folder / "in.parquet"
    pl.DataFrame({"i": list(range(n)), "text": [f"item {i}" for i in range(n)]}).write_parquet(path)
    return path


def test_a_dry_run_leaves_a_finished_sink_byte_for_byte(emu, tmp_path):
    source = _input(tmp_path, 30)
    sink, state = tmp_path / "out.parquet", tmp_path / "out.state"
    # A real run answered the first 20 rows into the sink.
    done = batch_llm(pl.scan_parquet(source).head(20), sink=sink, state=state, chunk_rows=7,
                     **KW).collect()  # type: ignore[arg-type]
    assert Counter(done["_status"].to_list()) == {"completed": 20}
    before = sink.read_bytes()
    billed = len(emu.billing())
    assert billed == 20

    # The same call on the whole (streamed) input, dry: what would it still cost?
    plan = batch_llm(pl.scan_parquet(source), sink=sink, state=state, chunk_rows=7,
                     dry_run=True, **KW)  # type: ignore[arg-type]

    assert sink.read_bytes() == before  # the result is still there, as it was
    assert len(emu.billing()) == billed  # nothing sent, nothing billed
    assert isinstance(plan, pl.LazyFrame)
    got = plan.collect()
    assert got["i"].to_list() == list(range(30))
    assert got["_status"].to_list() == ["done"] * 20 + ["planned"] * 10
    assert got["_est_cost_usd"].filter(got["_status"] == "planned").is_not_null().all()
    assert "_cost_usd" not in got.columns  # a plan, not a result
    # The plan is a file of its own: nothing new beside the sink (no hidden files either).
    assert {p.name for p in tmp_path.iterdir()} == {"in.parquet", "out.parquet", "out.state"}
    # The real run still reads its answers back, and sends only the rows not done.
    out = batch_llm(pl.scan_parquet(source), sink=sink, state=state, chunk_rows=7,
                    **KW).collect()  # type: ignore[arg-type]
    assert Counter(out["_status"].to_list()) == {"completed": 30}
    assert len(emu.billing()) == 30  # the 10 the plan had as planned


def test_a_dry_run_before_the_first_run_creates_no_sink_nor_state(emu, tmp_path):
    source = _input(tmp_path, 12)
    sink, state = tmp_path / "new" / "out.parquet", tmp_path / "new" / "out.state"

    plan = batch_llm(pl.scan_parquet(source), sink=sink, state=state, chunk_rows=5,
                     dry_run=True, **KW).collect()  # type: ignore[arg-type]

    assert plan["_status"].to_list() == ["planned"] * 12
    assert plan["i"].to_list() == list(range(12))
    assert not (tmp_path / "new").exists()  # neither the sink (a pipeline would read the
    assert emu.billing() == []               # plan as answers) nor the state folder


def test_the_plan_file_is_in_tmpdir_and_gone_when_the_process_exits(emu, tmp_path):
    """A real process: the plan is scanned while it lives, its folder removed at exit."""
    source = _input(tmp_path, 9)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = textwrap.dedent(f"""
        import polars as pl
        from pydantic import BaseModel
        from batchata_df import batch_llm

        class Item(BaseModel):
            label: str
            score: int

        plan = batch_llm(pl.scan_parquet({str(source)!r}), schema=Item, model="gpt-4.1-mini",
                         prompt="Rate: {{text}}", sink={str(tmp_path / "out.parquet")!r},
                         chunk_rows=4, dry_run=True, progress=False)
        import os
        print(sorted(os.listdir({str(tmp)!r})))
        print(plan.collect().height)
    """)
    env = {**os.environ, **emu.env(), "TMPDIR": str(tmp), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    listed, height = r.stdout.splitlines()
    assert listed.startswith("['batchata-df-plan-")  # the plan's folder, in TMPDIR
    assert height == "9"
    assert list(tmp.iterdir()) == []  # removed when the process exited
    assert not (tmp_path / "out.parquet").exists()
    assert emu.billing() == []


def test_a_dry_run_stopped_midway_leaves_no_plan_folder(emu, tmp_path, monkeypatch):
    """Ctrl+C while the plan is written (here: after its first chunk): its folder goes."""
    import tempfile

    from batchata_df import stream

    source = _input(tmp_path, 12)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    real = stream.SinkWriter.write
    calls = []

    def write_then_stop(self, frame):  # type: ignore[no-untyped-def]
        real(self, frame)
        calls.append(frame.height)
        raise KeyboardInterrupt

    monkeypatch.setattr(stream.SinkWriter, "write", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        batch_llm(pl.scan_parquet(source), sink=tmp_path / "out.parquet", chunk_rows=5,
                  dry_run=True, **KW)  # type: ignore[arg-type]
    assert calls == [5]
    assert list(tmp.iterdir()) == []
    assert not (tmp_path / "out.parquet").exists()
