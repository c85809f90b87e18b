"""Batches left in flight by an earlier call: collected first, their cancelled rows sent.

Unit tests of the engine's side (in-memory provider, fake clock); the same behaviour
through the SDKs, the emulator and real signals is in ``tests/test_collect_before_send.py``.
"""

from __future__ import annotations

import threading

import polars as pl
import pytest
from engine_fakes import COST_PER_JOB, MODEL, PRICES, SPEC, FakeProvider, make_jobs

from batchata_df import sql
from batchata_df.engine.auto import AUTO_REALTIME_MAX_JOBS, AutoEngine
from batchata_df.engine.clock import FakeClock
from batchata_df.engine.driver import Engine, job_states_of
from batchata_df.engine.realtime import RealtimeEngine
from batchata_df.engine.run import ProgressSnapshot, RunOptions
from batchata_df.state import StateStore


def store(tmp_path) -> StateStore:
    return StateStore(tmp_path / "state", {"test": "1"})


def engine(tmp_path, provider, progress=None, **options) -> Engine:
    return Engine(store(tmp_path), {"openai": provider}, SPEC, PRICES, RunOptions(**options),
                  clock=provider.clock, progress=progress)  # fmt: skip


def aborted(tmp_path, provider: FakeProvider, n: int) -> None:
    """An earlier call sent ``n`` jobs (fb_1), asked to cancel them and left at once.

    As after a second Ctrl+C: the batch is ``cancel_requested`` in the folder; nothing of
    it ran (cancelled at once, of a 1000 s latency), so every row ends cancelled.
    """
    engine(tmp_path, provider, wait=False).run(make_jobs(n))
    key = store(tmp_path).batch_state().get_column("batch_key")[0]
    provider.cancel("fb_1")
    store(tmp_path).append_batch(batch_key=key, provider="openai", model=MODEL,
                                 provider_batch_id="fb_1", status="cancel_requested",
                                 detail="interrupted")  # fmt: skip
    provider.calls.clear()


def submits(provider: FakeProvider) -> list[int]:
    return [c[2] for c in provider.calls if c[0] == "submit"]


def test_rows_a_recovered_batch_ended_cancelled_go_again_in_the_same_call(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1000.0)
    aborted(tmp_path, provider, 3)
    seen: list[ProgressSnapshot] = []
    out = engine(tmp_path, provider, progress=seen.append).run(make_jobs(3))
    assert out["status"].to_list() == ["completed"] * 3
    assert submits(provider) == [3]
    # Counted cancelled when collected, then pending again: not cancelled at the end.
    last = seen[-1]
    assert (last.completed, last.cancelled, last.total) == (3, 0, 3)


def test_with_wait_false_they_go_in_the_same_round(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1000.0)
    aborted(tmp_path, provider, 3)
    out = engine(tmp_path, provider, wait=False).run(make_jobs(3))
    assert submits(provider) == [3]
    assert out["status"].to_list() == ["assigned"] * 3
    assert out["provider_batch_id"].to_list() == ["fb_2"] * 3


def test_a_call_that_is_stopping_does_not_send_them(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1000.0)
    aborted(tmp_path, provider, 3)
    out = engine(tmp_path, provider, time_limit_s=0.0).run(make_jobs(3))
    assert submits(provider) == []
    assert out["status"].to_list() == ["cancelled"] * 3


def test_only_this_call_s_rows_go_again(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1000.0)
    aborted(tmp_path, provider, 3)
    out = engine(tmp_path, provider).run(make_jobs(2)).sort("job_id")
    assert submits(provider) == [2]
    assert out["status"].to_list() == ["completed", "completed", "cancelled"]  # j002: not asked


def test_auto_decides_after_collecting_so_their_cancelled_rows_count_as_left(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1000.0)
    n = AUTO_REALTIME_MAX_JOBS + 10
    aborted(tmp_path, provider, n)
    auto = AutoEngine(store(tmp_path), {"openai": provider}, SPEC, PRICES, RunOptions(),
                      deadline_s=None, clock=provider.clock)  # fmt: skip
    out = auto.run(make_jobs(n))
    assert auto.decision == "batch"  # 60 rows left once collected, not 0
    assert submits(provider) == [n]
    assert not [c for c in provider.calls if c[0] == "answer"]
    assert out["status"].to_list() == ["completed"] * n


def test_auto_stopped_while_collecting_ends_the_rest_without_sending(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1000.0)
    n = AUTO_REALTIME_MAX_JOBS + 10
    aborted(tmp_path, provider, n)
    stop = threading.Event()
    stop.set()  # Ctrl+C
    auto = AutoEngine(store(tmp_path), {"openai": provider}, SPEC, PRICES, RunOptions(),
                      deadline_s=None, clock=provider.clock, stop_event=stop)  # fmt: skip
    out = auto.run(make_jobs(n))
    assert auto.decision == "collected batches in flight, then realtime (interrupted)"
    assert submits(provider) == [] and not [c for c in provider.calls if c[0] == "answer"]
    assert out["status"].to_list() == ["cancelled"] * n


def test_realtime_collects_an_ended_batch_at_the_batch_price(tmp_path):
    provider = FakeProvider(FakeClock())
    engine(tmp_path, provider, wait=False).run(make_jobs(2))
    provider.end("fb_1")
    provider.calls.clear()
    rt = RealtimeEngine(store(tmp_path), {"openai": provider}, SPEC, PRICES.realtime(),
                        RunOptions(), clock=provider.clock)  # fmt: skip
    out = rt.run(make_jobs(3)).sort("job_id")
    assert out["status"].to_list() == ["completed"] * 3
    assert out["mode"].to_list() == [None, None, "realtime"]
    assert out["cost_usd"].to_list() == pytest.approx([COST_PER_JOB, COST_PER_JOB,
                                                       2 * COST_PER_JOB])  # fmt: skip
    assert [c for c in provider.calls if c[0] == "answer"] == [("answer", "j002")]


class ChunkSource:
    """A streaming run's chunks (``engine.source.JobSource``); ``lookup`` sees only the
    chunks read so far, as ``stream.ChunkSource`` looks in the chunks it has spilled."""

    def __init__(self, chunks: list[pl.DataFrame]) -> None:
        self.chunks = list(chunks)
        self.expected_rows = sum(c.height for c in chunks)
        self.rows_seen = 0
        self.read: list[pl.DataFrame] = []

    def next_chunk(self) -> pl.DataFrame | None:
        if not self.chunks:
            return None
        chunk = self.chunks.pop(0)
        self.rows_seen += chunk.height
        self.read.append(chunk)
        return chunk

    def lookup(self, job_ids: pl.Series) -> pl.DataFrame:
        if not self.read:
            return pl.DataFrame()
        return pl.concat(self.read).filter(pl.col("job_id").is_in(job_ids.implode()))


def final(tmp_path) -> dict[str, str]:
    latest = job_states_of(store(tmp_path)).sort("job_id")
    return dict(zip(latest["job_id"], latest["status"], strict=True))


def test_a_streaming_call_sends_them_from_the_chunks_it_has_read(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1000.0)
    aborted(tmp_path, provider, 3)
    seen: list[ProgressSnapshot] = []
    # Every chunk is read (its rows all re-attached) before the batch is collected.
    engine(tmp_path, provider, progress=seen.append).run_source(
        ChunkSource([make_jobs(2), make_jobs(1, start=2)])
    )
    assert submits(provider) == [3]
    assert final(tmp_path) == dict.fromkeys(["j000", "j001", "j002"], "completed")
    last = seen[-1]
    assert (last.completed, last.cancelled, last.pending, last.total) == (3, 0, 0, 3)


def test_a_streaming_call_sends_them_from_their_chunk_read_after_the_collection(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1000.0)
    aborted(tmp_path, provider, 3)
    seen: list[ProgressSnapshot] = []
    # One batch at a time: the re-attached one is collected while only the first chunk
    # (a new row) is read; the next chunk holds its rows.
    source = ChunkSource([make_jobs(1, start=10), make_jobs(3)])
    engine(tmp_path, provider, progress=seen.append, max_parallel_batches=1).run_source(source)
    assert submits(provider) == [1, 3]
    assert final(tmp_path) == dict.fromkeys(["j000", "j001", "j002", "j010"], "completed")
    last = seen[-1]
    assert (last.completed, last.cancelled, last.pending, last.total) == (4, 0, 0, 4)
    # Counted cancelled when collected, pending again when their chunk was read.
    assert any(s.cancelled == 3 for s in seen)


def test_a_streaming_call_sends_only_its_own_rows_of_them(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1000.0)
    aborted(tmp_path, provider, 3)
    source = ChunkSource([make_jobs(1, start=10), make_jobs(2)])  # j002: not asked
    engine(tmp_path, provider, max_parallel_batches=1).run_source(source)
    assert submits(provider) == [1, 2]
    assert final(tmp_path) == {"j000": "completed", "j001": "completed",
                               "j002": "cancelled", "j010": "completed"}  # fmt: skip


def test_a_stopping_streaming_call_does_not_send_them(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1000.0)
    aborted(tmp_path, provider, 3)
    engine(tmp_path, provider, time_limit_s=0.0).run_source(ChunkSource([make_jobs(3)]))
    assert submits(provider) == []
    assert final(tmp_path) == dict.fromkeys(["j000", "j001", "j002"], "cancelled")


def test_a_capped_streaming_call_holds_them_at_their_worst_case(tmp_path):
    provider = FakeProvider(FakeClock(), latency=1000.0)
    aborted(tmp_path, provider, 3)
    worst = [0.1, 0.2, 0.3]
    chunk = make_jobs(3).with_columns(pl.Series("worst_usd", worst))
    run = engine(tmp_path, provider, max_cost_usd=10.0, wait=False)
    run.run_source(ChunkSource([chunk]))
    (batch,) = run.state.in_flight  # the re-attached one collected, theirs sent
    assert batch.job_ids.to_list() == ["j000", "j001", "j002"]
    assert batch.reserved == pytest.approx(sum(worst))
    assert run.state.reserved == pytest.approx(sum(worst))


def test_a_capped_streaming_call_sends_them_from_a_later_chunk_at_their_worst_case(
    tmp_path,
):
    provider = FakeProvider(FakeClock(), latency=1000.0)
    aborted(tmp_path, provider, 3)
    worst = [0.1, 0.2, 0.3]
    chunk = make_jobs(3).with_columns(pl.Series("worst_usd", worst))
    # The cap fits the new row and then theirs, one batch at a time.
    source = ChunkSource([make_jobs(1, start=10, worst=0.4), chunk])
    run = engine(tmp_path, provider, max_cost_usd=0.61, max_parallel_batches=1)
    run.run_source(source)
    assert submits(provider) == [1, 3]
    assert final(tmp_path) == dict.fromkeys(["j000", "j001", "j002", "j010"], "completed")
    held = sql("SELECT job_id, est_cost_usd FROM jobs ORDER BY job_id", tmp_path / "state")
    assert held["est_cost_usd"].to_list() == pytest.approx([*worst, 0.4])
