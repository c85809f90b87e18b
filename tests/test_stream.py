"""Streaming runs: ``batch_llm(lf, ..., sink=...)`` against the emulator, real Parquet files.

What is checked: the sink equals the in-memory run of the same rows (values, order, failed
rows, duplicate requests across chunks billed once); a killed run (SIGKILL of a real
process mid-stream) resumes without a request billed twice; the cost cap and the time
limit reach every chunk; progress counts the whole input; bad input is refused before any
request; compaction survives a crash at either side of its rename; the CLI streams.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import BaseModel

from batchata_df import batch_llm, sql
from batchata_df.errors import (
    CapSerialisedWarning,
    ColumnError,
    ConfigError,
    ModelError,
    SinkLockedError,
)
from batchata_df.state import StateStore, folder_version, restore_raw, table_parts


class Item(BaseModel):
    label: str
    score: int


N = 120


def rows(n: int = N) -> pl.DataFrame:
    """Rows with repeats (within and across chunks), answers that fail, and null prompts."""
    text = [
        None if i % 41 == 7 else
        f"item {i % 50}" + (" [[emulator:invalid]]" if i % 50 == 13 else "")
        for i in range(n)
    ]
    return pl.DataFrame({"i": list(range(n)), "text": text})


def write_input(folder: Path, frame: pl.DataFrame, files: int = 3) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-frame.height // files)
    for k in range(files):
        frame.slice(k * step, step).write_parquet(folder / f"in-{k}.parquet")
    return str(folder / "*.parquet")


def creates(emu) -> int:
    return sum(
        1 for e in emu.log() if e["method"] == "POST" and e["path"] == "/openai/v1/batches"
    )


def requests(emu) -> int:
    """Every request the emulator received (none may be sent for refused input)."""
    return sum(1 for e in emu.log() if "/openai/" in e["path"])


KW: dict[str, object] = {"schema": Item, "model": "gpt-4.1-mini", "prompt": "Rate: {text}"}


@pytest.fixture(params=["held", "spilled"])
def spilled(request, monkeypatch) -> Counter[str]:
    """The test as it runs over a small input (the job-id index and the set of ids seen
    held in memory), and as over a big one: the index in partition files of 8 events and
    every segment of 4 ids or more of the id set in a file (read back when looked up).
    Counts what was spilled (``index``, ``seen``); ``on`` is 1 when spilling."""
    from batchata_df import jobindex, stream

    used: Counter[str] = Counter()
    if request.param == "spilled":
        used["on"] = 1
        monkeypatch.setattr(jobindex, "INDEX_PARTITION_WORDS", 8)
        monkeypatch.setattr(stream, "SEEN_SPILL_IDS", 4)
    spill_index, write_seen = jobindex.JobIndex._spill, stream._OnDisk.write

    def index(self: jobindex.JobIndex, *args: int) -> None:
        used["index"] += 1
        spill_index(self, *args)

    def seen(*args: object) -> object:
        used["seen"] += 1
        return write_seen(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(jobindex.JobIndex, "_spill", index)
    monkeypatch.setattr(stream._OnDisk, "write", staticmethod(seen))
    return used


def check_spilled(used: Counter[str], *what: str) -> None:
    """Each of ``what`` was spilled if the test spills, and nothing if it does not."""
    if used["on"]:
        assert all(used[w] for w in what), used
    else:
        assert not used["index"] and not used["seen"], used


def test_sink_equals_the_in_memory_run_in_order_with_failures_and_repeats(
    emu, tmp_path, spilled
):
    frame = rows()
    kw = {**KW, "keep_raw": True, "keep_responses": True}
    expected = batch_llm(frame, state=tmp_path / "mem", **kw)  # type: ignore[arg-type]
    billed_in_memory = Counter(e["custom_id"] for e in emu.billing())
    emu.reset()

    source = write_input(tmp_path / "in", frame)
    out = batch_llm(
        pl.scan_parquet(source), sink=tmp_path / "out.parquet", chunk_rows=17,
        items_per_batch=10, state=tmp_path / "st", **kw,  # type: ignore[arg-type]
    )

    assert isinstance(out, pl.LazyFrame)
    got = out.collect()
    # The provider's own lines carry its batch and request ids: they differ per batch.
    assert_frame_equal(got.drop("_batch_id", "_response"),
                       expected.drop("_batch_id", "_response"))
    assert got["_raw"].null_count() == got["_response"].null_count() == 3  # never sent
    assert got["_response"].str.contains(r'"custom_id"').fill_null(True).all()
    assert got.equals(pl.read_parquet(tmp_path / "out.parquet"))
    assert got["i"].to_list() == list(range(N))
    statuses = Counter(got["_status"].to_list())
    assert statuses == {"completed": 114, "failed": 6}, statuses  # 3 null, 3 invalid
    failed = got.filter(pl.col("_status") == "failed")
    assert failed.filter(pl.col("text").is_null())["_error"].str.starts_with("input:").all()
    assert failed.filter(pl.col("text").is_not_null())["_error"].str.starts_with(
        "schema_validation"
    ).all()
    # 50 distinct requests in 120 rows: each billed once, its cost on its first row only.
    billed = Counter(e["custom_id"] for e in emu.billing())
    assert len(billed) == 50
    assert set(billed.values()) == {1}
    assert sorted(billed_in_memory.values()) == sorted(billed.values())
    paid = got.filter(pl.col("_cost_usd") > 0)
    assert paid["_job_id"].n_unique() == paid.height == 50
    assert got["_cost_usd"].sum() == pytest.approx(expected["_cost_usd"].sum())
    # Many batches (10 requests each), compacted into one part per table at the end.
    assert creates(emu) >= 5
    assert len(table_parts(tmp_path / "st" / "jobs")) == 1
    assert len(table_parts(tmp_path / "st" / "batches")) == 1
    assert not list((tmp_path / "st").glob(".stream-*"))  # spilled chunks removed
    check_spilled(spilled, "index", "seen")


def test_a_finished_folder_sends_nothing_and_writes_the_same_sink(emu, tmp_path, spilled):
    source = write_input(tmp_path / "in", rows())
    sink = tmp_path / "out.parquet"
    kw = {"sink": sink, "chunk_rows": 30, "state": tmp_path / "st", **KW}
    first = batch_llm(pl.scan_parquet(source), **kw).collect()  # type: ignore[arg-type]
    sent = requests(emu)
    sink.unlink()

    seen = []
    again = batch_llm(
        pl.scan_parquet(source), progress=seen.append, **kw  # type: ignore[arg-type]
    ).collect()

    assert requests(emu) == sent
    assert_frame_equal(again, first)
    # Counted as done at start: 49 answers, 1 that failed validation (50 distinct requests).
    assert (seen[-1].completed, seen[-1].failed, seen[-1].pending) == (49, 1, 0)
    assert seen[-1].total == 50
    check_spilled(spilled, "index", "seen")


def test_any_lazy_plan_streams_in_order(emu, tmp_path):
    """A plan that is not a plain scan (here a filter and a derived column) is read once,
    through Polars' streaming engine, in order."""
    frame = rows()
    source = write_input(tmp_path / "in", frame)
    lf = pl.scan_parquet(source).filter(pl.col("i") % 3 != 0).with_columns(
        pl.col("text").str.to_uppercase()
    )
    out = batch_llm(
        lf, sink=tmp_path / "out.parquet", chunk_rows=11, **KW  # type: ignore[arg-type]
    ).collect()
    expected = batch_llm(lf.collect(), **KW)  # type: ignore[arg-type]
    assert_frame_equal(out.drop("_batch_id"), expected.drop("_batch_id"))
    assert out["i"].to_list() == [i for i in range(N) if i % 3 != 0]


CHILD = textwrap.dedent(
    """
    import sys
    import polars as pl
    from pydantic import BaseModel
    from batchata_df import batch_llm

    class Item(BaseModel):
        label: str
        score: int

    source, sink, state = sys.argv[1:4]
    batch_llm(pl.scan_parquet(source), schema=Item, model="gpt-4.1-mini",
              prompt="Rate: {text}", sink=sink, state=state, chunk_rows=20,
              items_per_batch=10, max_parallel_batches=2)
    """
)


def wait_for(condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert proc.poll() is None, f"the child ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sigkill_mid_stream_resumes_without_paying_twice(emu, tmp_path, spilled):
    frame = rows()
    source = write_input(tmp_path / "in", frame)
    sink, state = tmp_path / "out.parquet", tmp_path / "st"
    emu.configure(latency=3600.0)  # batches finish only when the test moves the clock
    with open(tmp_path / "child.err", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, source, str(sink), str(state)],
            env={**os.environ, **emu.env()},
            stderr=err,
        )
    try:
        wait_for(lambda: creates(emu) >= 2, "two batches were created", proc)
        emu.advance(3600)  # the first chunk's batches finish
        wait_for(lambda: creates(emu) >= 4, "the next chunk was sent", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = Counter(e["custom_id"] for e in emu.billing())
    assert not sink.exists()
    assert list(state.glob(".stream-*"))  # the killed run's spilled chunks

    emu.configure(latency=0.0)
    emu.advance(3600)  # the batches the killed run left in flight finish too
    out = batch_llm(
        pl.scan_parquet(source), sink=sink, state=state, chunk_rows=20,
        items_per_batch=10, max_parallel_batches=2, **KW,  # type: ignore[arg-type]
    ).collect()

    billed = Counter(e["custom_id"] for e in emu.billing())
    assert set(billed.values()) == {1}, "a request was billed twice"
    assert len(billed) == 50
    assert before.keys() <= billed.keys()
    assert len(before) >= 30  # four batches of ten had been created before the kill
    assert out["i"].to_list() == list(range(N))
    assert set(out["_status"].to_list()) == {"completed", "failed"}
    assert out.filter(pl.col("_cost_usd") > 0)["_job_id"].n_unique() == 50
    assert not list(state.glob(".stream-*"))  # the next call cleared them
    check_spilled(spilled, "index", "seen")
    emu.reset()
    calm = batch_llm(frame, state=tmp_path / "calm", **KW)  # type: ignore[arg-type]
    assert_frame_equal(out.drop("_batch_id"), calm.drop("_batch_id"))


def test_cost_cap_reaches_every_chunk_and_is_never_passed(emu, tmp_path):
    frame = pl.DataFrame({"i": list(range(60)), "text": [f"row {i}" for i in range(60)]})
    source = write_input(tmp_path / "in", frame)
    prices = {"gpt-4.1-mini": (1000.0, 1000.0)}
    cap = 0.5
    # Two requests' worst case at once: the run says so, counting every chunk's rows.
    with pytest.warns(CapSerialisedWarning, match="only 2 of 60 requests could be sent"):
        out = batch_llm(
            pl.scan_parquet(source), sink=tmp_path / "out.parquet", chunk_rows=10,
            items_per_batch=5, max_parallel_batches=1, max_cost_usd=cap, prices=prices,
            params={"max_tokens": 20}, state=tmp_path / "st", **KW,  # type: ignore[arg-type]
        ).collect()

    assert out.height == 60
    spent = float(out["_cost_usd"].sum())
    assert 0 < spent <= cap
    statuses = Counter(out["_status"].to_list())
    assert statuses["completed"] == len(emu.billing()) > 0
    assert statuses["cancelled"] == 60 - statuses["completed"]
    cancelled = out.filter(pl.col("_status") == "cancelled")
    assert (cancelled["_error"] == "cancelled: cost_limit").all()
    assert cancelled["i"].max() == 59  # the last chunk too
    assert cancelled["i"].min() > out.filter(pl.col("_status") == "completed")["i"].max()


def test_time_limit_cancels_what_was_never_read(emu, tmp_path, engine_clock):
    emu.configure(latency=3600.0)  # nothing finishes
    source = write_input(tmp_path / "in", rows())
    out = batch_llm(
        pl.scan_parquet(source), sink=tmp_path / "out.parquet", chunk_rows=20,
        items_per_batch=10, max_parallel_batches=2, time_limit=0.5,
        state=tmp_path / "st", **KW,  # type: ignore[arg-type]
    ).collect()

    assert out["i"].to_list() == list(range(N))
    sendable = out.filter(~pl.col("_error").str.starts_with("input:").fill_null(False))
    never_sent = sendable.filter(pl.col("_batch_id").is_null())
    assert never_sent.height >= 60  # the chunks after the first were never read
    assert set(never_sent["_status"].to_list()) == {"cancelled"}
    assert (never_sent["_error"] == "cancelled: time_limit").all()
    # The two batches sent are cancelled too (the emulator ends a cancel at once: the
    # ``emu`` fixture restores its start settings, ``cancel_delay=0`` among them).
    sent = sendable.filter(pl.col("_batch_id").is_not_null())
    assert sent["_batch_id"].n_unique() == 2 and sent.height == N - 3 - never_sent.height
    assert set(sent["_status"].to_list()) == {"cancelled"}
    assert (sent["_error"] == "cancelled: time_limit").all()
    assert creates(emu) == 2  # the chunks after the first were never sent
    assert emu.billing() == []


def test_progress_counts_every_job_of_the_input(emu, tmp_path):
    source = write_input(tmp_path / "in", rows())
    seen = []
    batch_llm(
        pl.scan_parquet(source), sink=tmp_path / "out.parquet", chunk_rows=25,
        items_per_batch=10, progress=seen.append, **KW,  # type: ignore[arg-type]
    )
    first, last = seen[0], seen[-1]
    assert first.total >= 50  # the input's row count before the chunks are read
    assert last.phase == "done"
    assert last.total == 50  # distinct requests among the sendable rows
    assert last.completed + last.failed == 50
    assert last.pending == 0


def test_bad_input_is_refused_before_any_request(emu, tmp_path):
    source = write_input(tmp_path / "in", rows())
    lf = pl.scan_parquet(source)
    with pytest.raises(ColumnError, match="txt"):
        batch_llm(lf, schema=Item, model="gpt-4.1-mini", prompt="Rate: {txt}",
                  sink=tmp_path / "a.parquet")
    # A model given per row: the one bad name is in the last rows, found before sending.
    model = pl.when(pl.col("i") < 110).then(pl.lit("gpt-4.1-mini")).otherwise(pl.lit("llama-3"))
    with pytest.raises(ModelError, match="llama-3"):
        batch_llm(lf, schema=Item, model=model, prompt="Rate: {text}",
                  sink=tmp_path / "b.parquet", chunk_rows=10)
    with pytest.raises(ConfigError, match=r"\.parquet"):
        batch_llm(lf, sink=tmp_path / "out.csv", **KW)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="chunk_rows"):
        batch_llm(lf, sink=tmp_path / "c.parquet", chunk_rows=0, **KW)  # type: ignore[arg-type]
    assert requests(emu) == 0
    assert not (tmp_path / "b.parquet").exists()


def test_cli_run_streams_parquet_to_parquet_and_to_csv(emu, tmp_path):
    frame = rows()
    source = tmp_path / "in.parquet"
    frame.write_parquet(source)
    models = tmp_path / "models.py"
    models.write_text("from pydantic import BaseModel\n\nclass Item(BaseModel):\n"
                      "    label: str\n    score: int\n")
    exe = Path(sys.executable).with_name("batchata-df")
    env = {**os.environ, **emu.env()}
    for out in ("out.parquet", "out.csv"):
        done = subprocess.run(
            [str(exe), "run", str(source), str(tmp_path / out), "--model", "gpt-4.1-mini",
             "--prompt", "Rate: {text}", "--schema", f"{models}:Item", "--chunk-rows", "15",
             "--items-per-batch", "10", "--no-progress"],
            env=env, capture_output=True, text=True, cwd=tmp_path, check=False,
        )
        assert done.returncode == 3, done.stderr  # EXIT_FAILED: some rows failed
        assert "114 completed, 6 failed" in done.stderr
    got = pl.read_parquet(tmp_path / "out.parquet")
    csv = pl.read_csv(tmp_path / "out.csv")
    assert got["i"].to_list() == csv["i"].to_list() == list(range(N))
    assert got["label"].to_list() == csv["label"].to_list()
    assert Counter(got["_status"].to_list())["failed"] == 6
    assert not list(tmp_path.glob(".out.*"))  # no temporary files left beside the output
    # Both runs shared nothing: one state folder per output, 50 requests billed each.
    assert set(Counter(e["custom_id"] for e in emu.billing()).values()) == {2}


COMPACT = textwrap.dedent(
    """
    import sys
    from batchata_df.state import StateStore
    StateStore(sys.argv[1], {"model": "m"}).compact()
    """
)


def events_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "st"
    store = StateStore(folder, {"model": "m"})
    for k in range(12):
        store.append_jobs(pl.DataFrame({
            "job_id": [f"j{k}", f"j{k + 1}"], "batch_key": [f"b{k}", f"b{k}"],
            "status": ["completed", "assigned"], "cost_usd": [0.5, None],
        }))
        store.append_batch(batch_key=f"b{k}", status="submitted", provider_batch_id=f"p{k}")
    return folder


def view(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    store = StateStore(folder, {"model": "m"}, readonly=True)
    latest, billed = store.snapshot()
    jobs = sql("SELECT job_id, status, cost_usd FROM jobs ORDER BY job_id", str(folder))
    return latest, billed.sort("job_id"), store.batch_state(), jobs


@pytest.mark.parametrize("crash", ["compact_before_rename", "compact_after_rename", None])
def test_compaction_killed_at_either_side_of_its_rename_loses_and_repeats_nothing(
    tmp_path, crash
):
    folder = events_folder(tmp_path)
    before = view(folder)
    env = {**os.environ, "BATCHATA_DF_FAILPOINT": crash or ""}
    done = subprocess.run([sys.executable, "-c", COMPACT, str(folder)], env=env, check=False)
    assert done.returncode == (75 if crash else 0)
    files = sorted(p.name for p in (folder / "jobs").glob("part-*.parquet"))
    if crash == "compact_after_rename":
        assert len(files) == 13  # the merged part beside the 12 it replaced
    for got, want in zip(view(folder), before, strict=True):
        assert_frame_equal(got, want)
    assert before[3]["cost_usd"].sum() == 6.0
    StateStore(folder, {"model": "m"}).compact()  # the next writer finishes the job
    assert len(list((folder / "jobs").glob("part-*.parquet"))) == 1
    assert len(list((folder / "batches").glob("part-*.parquet"))) == 1
    for got, want in zip(view(folder), before, strict=True):
        assert_frame_equal(got, want)


def test_a_part_written_after_compaction_is_read_even_with_the_clock_behind(
    tmp_path, monkeypatch
):
    folder = events_folder(tmp_path)
    StateStore(folder, {"model": "m"}).compact()
    (merged,) = table_parts(folder / "jobs")
    first = int(merged.name.split("-")[1])  # part-<first ns>-<rand>~<last ns>-<rand>
    store = StateStore(folder, {"model": "m"})
    # A clock stepped back into the merged part's range: the new part must not be hidden.
    monkeypatch.setattr(time, "time_ns", lambda: first + 1)
    store.append_jobs(pl.DataFrame({"job_id": ["late"], "status": ["completed"]}))
    latest, _ = StateStore(folder, {"model": "m"}, readonly=True).snapshot()
    assert "late" in latest["job_id"].to_list()
    assert len(table_parts(folder / "jobs")) == 2


def test_dry_run_streams_the_same_plan_as_in_memory(emu, tmp_path, capsys):
    frame = rows()
    source = write_input(tmp_path / "in", frame)
    state = tmp_path / "st"
    # An earlier call answered the first 20 rows: the plan says they are done.
    batch_llm(frame.head(20), state=state, params={"max_tokens": 50},
              **KW)  # type: ignore[arg-type]
    sent = requests(emu)
    kw = {**KW, "state": state, "dry_run": True, "max_cost_usd": 0.01,
          "prices": {"gpt-4.1-mini": (10.0, 10.0)}, "params": {"max_tokens": 50}}
    expected = batch_llm(frame, **kw)  # type: ignore[arg-type]

    plan = batch_llm(
        pl.scan_parquet(source), sink=tmp_path / "plan.parquet", chunk_rows=13,
        progress=True, **kw,  # type: ignore[arg-type]
    ).collect()

    assert requests(emu) == sent  # a dry run sends nothing
    # The same plan, the expected figures included. The expected output is learnt from the
    # 20 answers already there in both; the in-memory plan also scales expected input by
    # what those same rows were billed, which a chunk without them cannot: its expected
    # cost may be higher, never above the worst case.
    assert plan.columns == expected.columns
    same = [c for c in plan.columns if c not in ("_batch_index", "_expected_cost_usd")]
    assert_frame_equal(plan.select(same), expected.select(same))
    planned = plan["_status"] == "planned"
    streamed, in_memory = plan["_expected_cost_usd"], expected["_expected_cost_usd"]
    assert (streamed.filter(planned) > 0).all()
    assert (streamed >= in_memory - 1e-12).all()
    assert (streamed <= plan["_est_cost_usd"] + 1e-12).all()
    statuses = Counter(plan["_status"].to_list())
    assert statuses["done"] > 0
    assert statuses["duplicate"] > 0
    assert 0 < plan["_within_cap"].sum() < statuses["planned"]  # the cap cuts across chunks
    index = plan.filter(pl.col("_status") == "planned")["_batch_index"]
    assert index.is_sorted() and index.n_unique() > 1  # batches counted on across chunks
    shown = capsys.readouterr()
    assert f"{statuses['planned']:,} requests would be sent" in shown.out + shown.err


def test_wait_false_streams_submits_and_a_later_call_collects(emu, tmp_path):
    emu.configure(latency=3600.0)
    source = write_input(tmp_path / "in", rows())
    kw = {"sink": tmp_path / "out.parquet", "state": tmp_path / "st", "chunk_rows": 20,
          "items_per_batch": 10, "max_parallel_batches": 2, **KW}
    first = batch_llm(pl.scan_parquet(source), wait=False, **kw).collect()  # type: ignore[arg-type]
    assert first.height == N
    pending = first.filter(pl.col("_status") == "pending")
    assert pending.height == N - 3  # every sendable row (3 have no prompt)
    assert creates(emu) == 2

    emu.configure(latency=0.0)
    emu.advance(3600)
    out = batch_llm(pl.scan_parquet(source), **kw).collect()  # type: ignore[arg-type]
    billed = Counter(e["custom_id"] for e in emu.billing())
    assert set(billed.values()) == {1}
    assert len(billed) == 50
    assert Counter(out["_status"].to_list()) == {"completed": 114, "failed": 6}


ANSWER_COLUMNS = {"answer", "raw", "response", "citations"}


def test_resuming_a_finished_folder_reads_each_chunks_answers_once_and_no_more(
    emu, tmp_path, monkeypatch
):
    """What a resume holds: deciding what to send reads status columns only; answers are
    read once per chunk, by that chunk's job ids, to write it to the sink; nothing reads
    the whole folder's events, and without a cap nothing adds up what was spent."""
    source = write_input(tmp_path / "in", rows())
    kw = {"sink": tmp_path / "out.parquet", "chunk_rows": 30, "state": tmp_path / "st",
          "items_per_batch": 10, **KW}
    first = batch_llm(pl.scan_parquet(source), **kw).collect()  # type: ignore[arg-type]
    sent = requests(emu)

    reads: list[tuple[str, int | None, set[str]]] = []

    def spy(name: str) -> None:
        original = getattr(StateStore, name)

        def wrapped(self: StateStore, *args: object, **kwargs: object) -> object:
            out = original(self, *args, **kwargs)
            ids = args[0] if args else kwargs.get("job_ids")
            frame = out[0] if isinstance(out, tuple) else out
            columns = set(frame.columns) if isinstance(frame, pl.DataFrame) else set()
            reads.append((name, None if ids is None else len(ids), columns))  # type: ignore[arg-type]
            return out

        monkeypatch.setattr(StateStore, name, wrapped)

    for name in ("snapshot", "latest_status", "job_events", "job_state", "billed", "spent"):
        spy(name)
    again = batch_llm(pl.scan_parquet(source), **kw).collect()  # type: ignore[arg-type]

    assert requests(emu) == sent
    assert_frame_equal(again, first)
    by_name = Counter(name for name, _, _ in reads)
    # 120 rows in chunks of 30: four status lookups to decide, four answer reads to write.
    assert by_name == {"latest_status": 4, "snapshot": 4}, by_name
    for name, n_ids, columns in reads:
        assert n_ids is not None and n_ids <= 30, (name, n_ids)  # one chunk's jobs, never all
        if name == "latest_status":
            assert not columns & ANSWER_COLUMNS, columns


def test_spent_adds_up_in_slices_of_jobs_to_the_same_total(tmp_path, monkeypatch):
    """A big folder is added up a slice of its jobs at a time: every billed attempt once
    (a retry in another batch counts, a batch collected twice does not), as in one go."""
    from batchata_df import state as state_module
    from batchata_df.state import billed_from_events, spent_usd

    store = StateStore(tmp_path / "st", {"model": "m"})
    ids = [f"{i:024x}" for i in range(60)]
    for key in ("b1", "b2"):  # every job billed in two batches (a retry)
        store.append_jobs(pl.DataFrame({"job_id": ids, "batch_key": key, "status": "assigned"}))
        done = pl.DataFrame({
            "job_id": ids, "batch_key": key, "status": "completed",
            "cost_usd": [0.01 * (i + 1) for i in range(60)],
        })
        store.append_jobs(done)
        store.append_jobs(done.head(25))  # collected again after a crash: billed once
    whole = float(billed_from_events(store.job_events())["cost_usd"].sum())
    assert whole == pytest.approx(2 * 0.01 * 60 * 61 / 2)

    filters: list[str] = []
    collect = pl.LazyFrame.collect

    def seen(lf: pl.LazyFrame, *args: object, **kwargs: object) -> pl.DataFrame:
        filters.append(lf.explain())
        return collect(lf, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(state_module, "SPENT_SLICE_EVENTS", 50)
    monkeypatch.setattr(pl.LazyFrame, "collect", seen)
    assert store.spent() == pytest.approx(whole)
    assert spent_usd(tmp_path / "st") == pytest.approx(whole)
    sliced = [plan for plan in filters if "hash" in plan]
    assert len(sliced) == 2 * 6  # 290 events in slices of at most 50 events: 6, twice


def _job_part_reads(monkeypatch, state: Path) -> tuple[list[str], list[int]]:
    """Spy on every read of ``state``'s job event parts.

    Returns ``(scans, rows)``: the plans of Polars queries that scan job parts (each reads
    the columns it needs of every part it lists; collected whole or in batches), and the
    rows of each lookup by position (``JobIndex._read``: a range of whole row groups of
    one part, the only read that is not such a scan).
    """
    from batchata_df.jobindex import JobIndex

    jobs_dir = str(state / "jobs")
    scans: list[str] = []
    rows: list[int] = []
    positioned = [False]
    collect = pl.LazyFrame.collect
    read = JobIndex._read

    def seen_collect(lf: pl.LazyFrame, *args: object, **kwargs: object) -> pl.DataFrame:
        plan = lf.explain()
        if jobs_dir in plan and not positioned[0]:
            scans.append(plan)
        return collect(lf, *args, **kwargs)  # type: ignore[arg-type]

    def seen_read(self: JobIndex, *args: object, **kwargs: object) -> pl.DataFrame:
        positioned[0] = True
        try:
            frame = read(self, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            positioned[0] = False
        rows.append(frame.height)
        return frame

    collect_batches = pl.LazyFrame.collect_batches

    def seen_batches(lf: pl.LazyFrame, *args: object, **kwargs: object) -> object:
        plan = lf.explain()
        if jobs_dir in plan:
            scans.append(plan)
        return collect_batches(lf, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pl.LazyFrame, "collect", seen_collect)
    monkeypatch.setattr(pl.LazyFrame, "collect_batches", seen_batches)
    monkeypatch.setattr(JobIndex, "_read", seen_read)
    return scans, rows


@pytest.mark.parametrize("chunk_rows", [10, 60])
def test_resuming_a_finished_folder_scans_its_job_ids_per_call_not_per_chunk(
    emu, tmp_path, monkeypatch, chunk_rows
):
    """Resuming a finished folder costs O(folder), not O(folder x chunks): the job parts
    are scanned a fixed number of times per call (an index of their job ids is built),
    and each chunk then reads only the row groups that hold its own jobs' events."""
    from batchata_df import state as state_module

    monkeypatch.setattr(state_module, "COMPACT_ROW_GROUP_ROWS", 20, raising=False)
    frame = pl.DataFrame({"i": range(120), "text": [f"distinct {i}" for i in range(120)]})
    source = write_input(tmp_path / "in", frame)
    state = tmp_path / "st"
    kw = {"sink": tmp_path / "out.parquet", "chunk_rows": 10, "state": state,
          "items_per_batch": 10, **KW}
    first = batch_llm(pl.scan_parquet(source), **kw).collect()  # type: ignore[arg-type]
    sent = requests(emu)
    events = pl.scan_parquet(table_parts(state / "jobs")).select(pl.len()).collect().item()
    assert events == 240  # assigned + completed, 120 distinct jobs

    scans, rows_read = _job_part_reads(monkeypatch, state)
    kw["chunk_rows"] = chunk_rows  # 12 chunks or 2: the scans must not follow
    again = batch_llm(pl.scan_parquet(source), **kw).collect()  # type: ignore[arg-type]

    assert requests(emu) == sent
    assert_frame_equal(again, first)
    # The index of job ids, built before sending and again (after compaction) before
    # writing the sink, and the folder's highest seq: whatever the number of chunks.
    assert len(scans) <= 3, [s.splitlines()[0] for s in scans]
    # Each chunk's 10 jobs have 20 events in the compacted part (their assigned part and
    # their batch's results, each contiguous), so at most 4 row groups of 20 per chunk and
    # pass: never the whole folder per chunk.
    assert sum(rows_read) <= 2 * 120 // 10 * 4 * 20
    assert sum(rows_read) < 12 * events


def test_the_sink_pass_reads_each_event_about_once_at_the_library_s_proportions(
    emu, tmp_path, monkeypatch
):
    """The sink pass reads its slices' events by row groups of the compacted parts: the
    library's group size against its slice and batch sizes (50,000 each, OpenAI's batch),
    scaled down here by the same factor, reads each event about once. Groups as large as
    a slice read each event 2.6 times at 1M rows (``benchmarks/PROFILE.md``, ninth pass).
    The output equals the in-memory run's, read back through many windows of groups."""
    from batchata_df import jobindex, stream
    from batchata_df import state as state_module

    scale = 200  # 50,000-row slices and batches -> 250
    slice_rows = 50_000 // scale
    monkeypatch.setattr(stream, "SINK_SLICE_ROWS", slice_rows)
    monkeypatch.setattr(
        state_module, "COMPACT_ROW_GROUP_ROWS", state_module.COMPACT_ROW_GROUP_ROWS // scale
    )
    monkeypatch.setattr(jobindex, "READ_WINDOW_ROWS", jobindex.READ_WINDOW_ROWS // scale)
    n = 16 * slice_rows
    frame = pl.DataFrame({"i": range(n), "text": [f"distinct {i}" for i in range(n)]})
    state = tmp_path / "st"
    kw = {"sink": tmp_path / "out.parquet", "chunk_rows": 4 * slice_rows, "state": state,
          "items_per_batch": slice_rows, "max_parallel_batches": 32, **KW}
    read: list[int] = []
    write_sink = stream._write_sink

    def counted(*args: object, **kwargs: object) -> object:
        _, rows = _job_part_reads(monkeypatch, state)
        try:
            return write_sink(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            read.extend(rows)

    monkeypatch.setattr(stream, "_write_sink", counted)
    out = batch_llm(frame.lazy(), **kw).collect()  # type: ignore[arg-type]

    assert out["i"].to_list() == list(range(n))
    assert (out["_status"] == "completed").all()
    events = 2 * n  # each job assigned, then completed
    assert events <= sum(read) <= 1.6 * events, sum(read) / events
    expected = batch_llm(frame, state=tmp_path / "mem", **KW)  # type: ignore[arg-type]
    assert_frame_equal(out.drop("_batch_id"), expected.drop("_batch_id"))


def test_a_reattached_batch_collected_before_its_rows_are_read_is_not_sent_again(
    emu, tmp_path
):
    """The index of the folder is taken when a call starts; a batch an earlier call left in
    flight is collected during the call, and when its rows come in a later chunk (here the
    input is read in the opposite order) they are settled, not sent and billed again."""
    emu.configure(latency=3600.0)
    frame = pl.DataFrame({"i": range(60), "text": [f"distinct {i}" for i in range(60)]})
    kw = {"sink": tmp_path / "out.parquet", "state": tmp_path / "st", "chunk_rows": 10,
          "items_per_batch": 10, "max_parallel_batches": 1, **KW}
    first = batch_llm(frame.lazy(), wait=False, **kw).collect()  # type: ignore[arg-type]
    assert creates(emu) == 1  # rows 0-9 in flight, the rest pending
    assert first.filter(pl.col("_batch_id").is_not_null())["i"].to_list() == list(range(10))

    emu.configure(latency=0.0)
    emu.advance(3600)
    backwards = frame.reverse().lazy()  # rows 0-9 are the last chunk read
    out = batch_llm(backwards, **kw).collect()  # type: ignore[arg-type]

    billed = Counter(e["custom_id"] for e in emu.billing())
    assert set(billed.values()) == {1}, "a request was billed twice"
    assert len(billed) == 60
    assert creates(emu) == 6
    assert out["i"].to_list() == list(range(59, -1, -1))
    assert set(out["_status"].to_list()) == {"completed"}


def test_resuming_with_batches_in_flight_holds_their_ids_once_and_sends_nothing_twice(
    emu, tmp_path, monkeypatch, spilled
):
    """A killed 10M-row run leaves 32 batches of 50,000 in flight. The resumed call holds
    their job ids in the batches it re-attaches; the feeder kept a list of them all too (the
    batches' buffers, not a copy) and hashed the 1.6M of them into a set for every chunk it
    read, to skip their rows. It now tells them by the batch of their latest event, so it
    holds the batches' keys, never their ids; and still sends none of them again though
    their batches are collected before a chunk brings their rows (the input reversed)."""
    from batchata_df.engine import driver, source

    feeders: list[source.Feeder] = []

    class Watched(source.Feeder):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            feeders.append(self)

    emu.configure(latency=3600.0)
    frame = pl.DataFrame({"i": range(60), "text": [f"distinct {i}" for i in range(60)]})
    kw = {"sink": tmp_path / "out.parquet", "state": tmp_path / "st", "chunk_rows": 20,
          "items_per_batch": 10, "max_parallel_batches": 3, **KW}
    first = batch_llm(frame.lazy(), wait=False, **kw).collect()  # type: ignore[arg-type]
    in_flight = first.filter(pl.col("_batch_id").is_not_null())["i"].to_list()
    assert in_flight == list(range(30)) and creates(emu) == 3

    monkeypatch.setattr(driver, "Feeder", Watched)
    emu.configure(latency=0.0)
    emu.advance(3600)  # they finish: collected by the resumed call before their rows come
    out = batch_llm(frame.reverse().lazy(), **kw).collect()  # type: ignore[arg-type]

    [feeder] = feeders
    held = {name: len(value) for name, value in vars(feeder).items()
            if isinstance(value, (pl.Series, pl.DataFrame))}
    assert sum(held.values()) <= 3, held  # the three batches' keys at most: no job id
    billed = Counter(e["custom_id"] for e in emu.billing())
    assert set(billed.values()) == {1}, "a request was billed twice"
    assert len(billed) == 60
    assert creates(emu) == 6  # the 30 rows never sent, in three batches; none again
    assert out["i"].to_list() == list(range(59, -1, -1))
    assert set(out["_status"].to_list()) == {"completed"}


WRITING_CHILD = textwrap.dedent(
    """
    import sys
    import polars as pl
    from pydantic import BaseModel
    from batchata_df import batch_llm, stream

    class Item(BaseModel):
        label: str
        score: int

    write = stream.SinkWriter.write

    def write_then_hang(self, frame):
        write(self, frame)
        print(self.tmp, flush=True)  # the sink's first slice is in its hidden file
        sys.stdin.readline()  # never answered: the test kills this process here

    stream.SinkWriter.write = write_then_hang
    source, sink, state = sys.argv[1:4]
    batch_llm(pl.scan_parquet(source), schema=Item, model="gpt-4.1-mini",
              prompt="Rate: {text}", sink=sink, state=state, chunk_rows=20)
    """
)


def test_a_killed_calls_hidden_sink_file_goes_with_the_next_call_never_a_live_ones(
    emu, tmp_path
):
    """The sink is written under a hidden name (``.tmp-<sink>-<random>``) and renamed when
    complete. A call killed while writing it left that file beside the output for good (a
    10M-row sink: 212 MB). The next call writing the same sink removes it; a hidden file
    whose writer is alive (another call on another state folder, which that folder's lock
    does not cover) is left alone: each writer holds an OS lock on its file."""
    frame = rows()
    source = write_input(tmp_path / "in", frame)
    sink, state = tmp_path / "out.parquet", tmp_path / "st"
    hidden = lambda: sorted(p.name for p in tmp_path.glob(".tmp-out.parquet-*"))  # noqa: E731
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITING_CHILD, source, str(sink), str(state)],
        env={**os.environ, **emu.env()}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        tmp = Path(proc.stdout.readline().decode().strip())
        # Its hidden file, and the hidden folder it holds for the whole call (which tells
        # other writers of the sink that it is alive: tests/test_sink_lock.py).
        left = hidden()
        assert tmp.parent == tmp_path and tmp.name in left and len(left) == 2, left
        size = tmp.stat().st_size
        billed = len(emu.billing())
        # Another call on the same sink meanwhile (another state folder) is refused before
        # sending (it would pay for every row again); the live writer's files stay.
        with pytest.raises(SinkLockedError, match="is being written by another call"):
            batch_llm(
                pl.scan_parquet(source), sink=sink, state=tmp_path / "other", chunk_rows=20,
                **KW,  # type: ignore[arg-type]
            )
        assert len(emu.billing()) == billed
        assert hidden() == left and tmp.stat().st_size == size
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert hidden() == left  # what the killed call left

    sent = len(emu.billing())
    out = batch_llm(
        pl.scan_parquet(source), sink=sink, state=state, chunk_rows=20,
        **KW,  # type: ignore[arg-type]
    ).collect()
    assert hidden() == []
    assert len(emu.billing()) == sent  # the killed call had sent everything: nothing again
    assert billed == 50  # its 50 distinct requests, once
    assert out["i"].to_list() == list(range(N))
    assert set(out["_status"].to_list()) == {"completed", "failed"}


def test_a_sink_on_a_file_system_without_locks_is_written_and_never_taken_for_a_dead_ones(
    tmp_path, monkeypatch
):
    """Where the file system refuses locks (some network mounts), the sink is still written
    (unlocked), and no other writer removes a hidden file it cannot lock."""
    import errno

    import filelock

    from batchata_df import stream

    def no_locks(fd: int, *, blocking: bool = True) -> bool:
        raise OSError(errno.ENOSYS, "no locks here")

    monkeypatch.setattr(filelock, "lock_descriptor", no_locks)
    sink = tmp_path / "out.parquet"
    with stream.SinkWriter(sink) as writer:
        writer.write(pl.DataFrame({"a": [1, 2]}))
        assert stream.remove_stale_sink_files(sink) == []  # another writer's look
        assert writer.tmp.exists()
        writer.close(pl.DataFrame({"a": []}))
    assert pl.read_parquet(sink)["a"].to_list() == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


def test_seen_ids_are_exact_across_segments_and_fall_back_for_other_ids():
    """The set of job ids a streaming run keeps to mark a later chunk's repeats: exact on
    all 96 bits (ids equal in their first 64 bits are told apart), across merged
    segments, nulls never seen; ids that are not 24 hex digits are refused (the run then
    searches the spilled chunks)."""
    from batchata_df.stream import SeenIds

    seen = SeenIds()
    first = [f"{i:016x}{j:08x}" for i in range(50) for j in (1, 2)]
    for k in range(0, 100, 7):  # many small additions: segments merge as they grow
        assert seen.add(pl.Series([*first[k : k + 7], None]))
    assert len(seen.segments) < 8
    asked = pl.Series([first[0], f"{0:016x}{3:08x}", None, first[99], f"{99:016x}{1:08x}"])
    hit = seen.contains(asked)
    assert hit is not None
    assert hit.to_list() == [True, False, False, True, False]
    assert seen.contains(pl.Series(["not-a-job-id"])) is None
    assert not seen.add(pl.Series(["not-a-job-id"]))


def test_the_sink_is_assembled_in_bounded_slices_with_repeats_billed_once(
    emu, tmp_path, monkeypatch
):
    """The sink pass holds one slice of rows at a time (a slice's answers read, joined,
    decoded and written before the next), whatever the chunk: its memory is bounded by the
    slice, not the chunk. A request repeated later in the same chunk, in another slice,
    still has its bill on its first row only, as in memory."""
    from batchata_df import stream

    frame = rows()
    expected = batch_llm(frame, state=tmp_path / "mem", **KW)  # type: ignore[arg-type]
    emu.reset()
    monkeypatch.setattr(stream, "SINK_SLICE_ROWS", 7)
    looked_up: list[int] = []
    original = stream.job_states_of

    def spy(store: StateStore, job_ids: pl.Series, *args: object) -> pl.DataFrame:
        looked_up.append(job_ids.len())
        return original(store, job_ids, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(stream, "job_states_of", spy)
    written: list[int] = []
    write = stream.SinkWriter.write

    def count(self: stream.SinkWriter, frame: pl.DataFrame) -> None:
        written.append(frame.height)
        write(self, frame)

    monkeypatch.setattr(stream.SinkWriter, "write", count)
    source = write_input(tmp_path / "in", frame)
    # Chunks of 60 rows: "item k" comes back 50 rows later in the same chunk, 7 slices on.
    got = batch_llm(
        pl.scan_parquet(source), sink=tmp_path / "out.parquet", chunk_rows=60,
        items_per_batch=10, state=tmp_path / "st", **KW,  # type: ignore[arg-type]
    ).collect()

    assert_frame_equal(got.drop("_batch_id"), expected.drop("_batch_id"))
    assert written == [7] * 8 + [4] + [7] * 8 + [4]  # two chunks of 60, slices of 7
    assert max(looked_up) <= 7 and sum(looked_up) >= 100
    paid = got.filter(pl.col("_cost_usd") > 0)
    assert paid["_job_id"].n_unique() == paid.height == 50  # each request billed on one row
    assert got["_cost_usd"].sum() == pytest.approx(expected["_cost_usd"].sum())


@pytest.mark.parametrize("spill", [False, True])
def test_seen_ids_answer_like_a_set_with_segments_capped_and_ids_in_any_order(
    tmp_path, monkeypatch, spill
):
    """Against a Python set: ids asked in random order, repeats within a call, many equal
    high 64 bits (then the low bits decide), segments never merged past their cap; with a
    spill folder, segments of SEEN_SPILL_IDS ids or more are files (nothing else held),
    merged from and into files, the replaced files removed."""
    import numpy as np

    from batchata_df import stream
    from batchata_df.stream import SeenIds

    monkeypatch.setattr(stream, "SEEN_SPILL_IDS", 10)
    rng = np.random.default_rng(3)
    folder = tmp_path / "seen" if spill else None
    seen, reference = SeenIds(max_segment=40, spill=folder), set()
    most_files = 0
    for _ in range(60):
        n = int(rng.integers(0, 25))
        ids = [f"{h:016x}{lo:08x}" for h, lo in zip(rng.integers(0, 12, n),
                                                    rng.integers(0, 6, n), strict=True)]
        got = seen.check_and_add(pl.Series(ids, dtype=pl.String))
        assert got is not None
        assert got.to_list() == [i in reference for i in ids]
        reference.update(ids)
        held = [seen._held(s) for s in seen.segments]
        assert all(h.size <= 40 for h, _ in held)
        assert all((np.diff(h.astype(np.int64)) >= 0).all() for h, _ in held)
        on_disk = [s for s in seen.segments if isinstance(s, stream._OnDisk)]
        if spill:
            assert all(isinstance(s, stream._OnDisk) for s in seen.segments
                       if seen._size(s) >= 10)
            assert sorted(p.name for p in folder.iterdir()) == sorted(  # type: ignore[union-attr]
                s.path.name for s in on_disk)  # merged-away files are gone
            most_files = max(most_files, len(on_disk))
        else:
            assert not on_disk
    assert sum(seen._size(s) for s in seen.segments) > 40  # more than one segment's worth
    assert len(seen.segments) > 1
    assert most_files > 1 or not spill


def test_seen_ids_segments_merge_like_a_stable_sort():
    """Merging two sorted segments of job-id keys (in linear time, without sorting their
    concatenation again) gives what a stable sort of the concatenation gives: equal high
    bits keep the older segment's keys first, the low bits travel with their keys."""
    import numpy as np

    from batchata_df.stream import _merge_sorted

    rng = np.random.default_rng(14)
    for _ in range(300):
        sizes = rng.integers(0, 40, 2)
        hi = [np.sort(rng.integers(0, 25, n).astype(np.uint64)) for n in sizes]
        lo = [rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32) for n in sizes]
        merged_hi, merged_lo = _merge_sorted((hi[0], lo[0]), (hi[1], lo[1]))
        both_hi, both_lo = np.concatenate(hi), np.concatenate(lo)
        order = np.argsort(both_hi, kind="stable")
        assert merged_hi.dtype == np.uint64 and merged_lo.dtype == np.uint32
        assert merged_hi.tolist() == both_hi[order].tolist()
        assert merged_lo.tolist() == both_lo[order].tolist()


def test_a_provider_down_is_warned_once_per_row_of_the_input(emu, tmp_path, monkeypatch):
    # Every unsent row is counted once, whichever chunk and slice of the sink it is in.
    from batchata_df import ProviderUnavailableWarning, stream

    monkeypatch.setattr(stream, "SINK_SLICE_ROWS", 4)
    emu.inject_fault(method="POST", path_regex=r"^/openai/v1/batches$", status=503, times=None,
                     retry_after_ms=1)
    frame = pl.DataFrame({"i": list(range(12)), "text": [f"row {i}" for i in range(12)]})
    source = write_input(tmp_path / "in", frame)
    with pytest.warns(ProviderUnavailableWarning) as caught:
        out = batch_llm(pl.scan_parquet(source), sink=tmp_path / "out.parquet", chunk_rows=6,
                        provider_patience=0.3, **KW)  # type: ignore[arg-type]
    (warning,) = [w for w in caught if w.category is ProviderUnavailableWarning]
    assert str(warning.message).startswith(
        "12 rows could not be sent or collected because the provider was unreachable "
        "(0 pending: call again with the same state to collect them; 12 cancelled"), \
        str(warning.message)
    assert out.collect()["_status"].to_list() == ["cancelled"] * 12


def test_seen_ids_say_distinct_only_of_ids_that_are(tmp_path):
    """``SeenIds.distinct``: after each call, ``True`` only when the call's ids (nulls
    aside) hold no repeat; for distinct job ids (random 96-bit values) it is ``True``, so
    the chunk's repeats are not looked for. Against ``n_unique``, with repeats, ids equal in
    their first 64 bits, nulls, and an id that is not hex (no answer: ``False``).

    Caught when broken: a repeat with other ids between it and its first in the sort
    called distinct, distinct ids called repeated (the saving lost), the flag of an
    earlier call kept."""
    import numpy as np

    from batchata_df.stream import SeenIds

    rng = np.random.default_rng(11)
    seen = SeenIds(spill=tmp_path / "seen")
    for k in range(200):
        n = int(rng.integers(0, 30))
        if k % 3 == 0:  # distinct: random 96 bits
            ids = [f"{h:016x}{lo:08x}" for h, lo in zip(rng.integers(0, 1 << 62, n),
                                                        rng.integers(0, 1 << 31, n), strict=True)]
        else:  # few high parts, repeats likely, a repeat's first anywhere before it
            ids = [f"{h:016x}{lo:08x}" for h, lo in zip(rng.integers(0, 4, n),
                                                        rng.integers(0, 9, n), strict=True)]
        asked = pl.Series([None if rng.random() < 0.1 else i for i in ids], dtype=pl.String)
        assert seen.check_and_add(asked) is not None
        known = asked.drop_nulls()
        if seen.distinct:
            assert known.n_unique() == known.len()
        if k % 3 == 0:
            assert seen.distinct
    assert seen.check_and_add(pl.Series([f"{7:024x}"])) is not None
    assert seen.distinct
    assert seen.check_and_add(pl.Series(["not-a-job-id"])) is None
    assert not seen.distinct


@pytest.mark.parametrize("seed", range(30))
def test_repeats_of_a_chunk_with_distinct_ids_are_marked_as_by_hashing(seed):
    """A chunk whose ids are distinct but for nulls is marked without hashing the ids: the
    same ``later`` as ``is_first_distinct`` gives (nulls after the first marked, earlier
    chunks' repeats kept). Caught when broken: the first null marked, or a later null
    not, or an earlier chunk's mark dropped."""
    import numpy as np

    from batchata_df import stream

    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 40))
    ids = [None if rng.random() < 0.3 else f"{i:024x}" for i in rng.permutation(n)]
    chunk = pl.DataFrame({stream._JOB: pl.Series(ids, dtype=pl.String),
                          stream._LATER: rng.random(n) < 0.2})  # fmt: skip
    fast = chunk.select(stream._repeats(True)).to_series()
    hashed = chunk.select(stream._repeats(False)).to_series()
    assert fast.to_list() == hashed.to_list()


def test_string_columns_that_would_overflow_a_dictionary_are_written_plain_same_values(
    emu, tmp_path, monkeypatch
):
    """The sink's and the summary's writers leave out the dictionary of a string column
    whose distinct values in the first slice would not fit in one dictionary page
    (pyarrow would build it, overflow it and fall back to plain encoding in every row
    group: 10-20 % of the writers' CPU at 1M rows): here the prompts and job ids, with the
    page limit lowered to 300 bytes for 60-row slices. Every other column keeps its
    dictionary; the sink reads back as the in-memory run, the summary as the events give
    it, and each request was billed once."""
    import pyarrow.parquet as pq

    from batchata_df import summary

    monkeypatch.setattr(summary, "DICTIONARY_PAGE_BYTES", 300)
    frame = rows()
    expected = batch_llm(frame, state=tmp_path / "mem", **KW)  # type: ignore[arg-type]
    emu.reset()
    source = write_input(tmp_path / "in", frame)
    got = batch_llm(
        pl.scan_parquet(source), sink=tmp_path / "out.parquet", chunk_rows=60,
        items_per_batch=10, state=tmp_path / "st", **KW,  # type: ignore[arg-type]
    ).collect()

    assert_frame_equal(got.drop("_batch_id"), expected.drop("_batch_id"))
    billed = Counter(e["custom_id"] for e in emu.billing())
    assert len(billed) == 50 and set(billed.values()) == {1}

    def dictionaries(path: Path) -> dict[str, set[bool]]:
        meta = pq.ParquetFile(path).metadata
        return {
            meta.schema.column(c).path: {
                meta.row_group(g).column(c).has_dictionary_page
                for g in range(meta.num_row_groups)
            }
            for c in range(meta.num_columns)
        }

    sink = dictionaries(tmp_path / "out.parquet")
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups == 2
    assert sink["text"] == sink["_job_id"] == {False}
    assert sink["_status"] == sink["_mode"] == sink["_cost_usd"] == sink["score"] == {True}
    path = tmp_path / "st" / summary.SUMMARY_DIR / summary.SUMMARY_FILE
    written = dictionaries(path)
    assert written["job_id"] == {False}
    assert written["status"] == written["model"] == written["cost_usd"] == {True}
    # The events as the folder's readers give them (raw read in the folder's format).
    events = restore_raw(
        pl.read_parquet(table_parts(tmp_path / "st" / "jobs")), folder_version(tmp_path / "st")
    )
    assert_frame_equal(
        pl.read_parquet(path).sort("job_id"),
        summary.summarize(events).drop("n_events").sort("job_id"),
    )
