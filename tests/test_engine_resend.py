"""Batches left in flight by an earlier call: collected first, their cancelled rows sent.

Unit tests of the engine's side (in-memory provider, fake clock); the same behaviour
through the SDKs, the emulator and real signals is in ``tests/test_collect_before_send.py``.
"""

from __future__ import annotations

import threading

import pytest
from engine_fakes import COST_PER_JOB, MODEL, PRICES, SPEC, FakeProvider, make_jobs

from batchata_df.engine.auto import AUTO_REALTIME_MAX_JOBS, AutoEngine
from batchata_df.engine.clock import FakeClock
from batchata_df.engine.driver import Engine
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
