"""What :func:`batchata_df.state.read_unlocked` must not read again.

A call is made again only while it has taken no writer lock: a call that took it may have
sent (and the folder's parts then changed under it: its own). And a read that fails with
the folder's parts unchanged (a damaged part, no writer beside it) is raised at once, not
read five times.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from batchata_df import batch_llm, query, sql, state
from batchata_df import frame as fr
from batchata_df.errors import StateError

MODEL = "gemini-3.5-flash"
PARAMS = {"max_tokens": 200, "reasoning_effort": "minimal"}


def _rows(n: int = 6) -> pl.DataFrame:
    return pl.DataFrame({"text": [f"review {i}: fine" for i in range(n)]})


def _kw(folder: Path) -> dict[str, object]:
    return dict(model=MODEL, prompt="Summarise: {text}", state=str(folder), params=PARAMS,
                progress=False)  # fmt: skip


@pytest.mark.parametrize("mode", ["batch", "realtime"])
def test_a_call_that_fails_after_taking_the_lock_is_not_made_again(
    emu, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """It sent, then failed with an ``OSError`` (a full disk) while its own writes changed
    the folder's parts: that error is raised, the call is not made again (one lock taken),
    and every request was sent and billed once."""
    real = fr._warn_unavailable
    failures: list[int] = []

    def disk_full(results: pl.DataFrame) -> None:
        if not failures:
            failures.append(1)
            raise OSError(28, "No space left on device")
        real(results)

    monkeypatch.setattr(fr, "_warn_unavailable", disk_full)
    st = tmp_path / "st"
    taken = state.WriterLock.taken
    with pytest.raises(OSError, match="No space left"):
        batch_llm(_rows(), mode=mode, **_kw(st))  # type: ignore[arg-type]
    assert state.WriterLock.taken == taken + 1  # one call, one lock: not made again
    assert failures == [1]
    bills = emu.billing()
    assert len(bills) == 6 and len({b["request"] for b in bills}) == 6


@pytest.fixture
def damaged(emu, tmp_path: Path) -> Path:
    """A folder of 6 answered rows, one of whose job parts is not Parquet."""
    st = tmp_path / "st"
    out = batch_llm(_rows(), items_per_batch=2, **_kw(st))  # type: ignore[arg-type]
    assert out["_status"].to_list() == ["completed"] * 6
    parts = state.table_parts(st / "jobs")
    assert len(parts) > 1
    Path(parts[-1]).write_bytes(b"not parquet at all")
    return st


def test_sql_on_a_damaged_folder_with_no_writer_reads_it_once(
    damaged: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    real = query.connect

    def counted(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        calls.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(query, "connect", counted)
    with pytest.raises((StateError, OSError, pl.exceptions.PolarsError, Exception)) as e:
        sql("select count(*) from jobs", damaged)
    assert len(calls) == 1, (len(calls), e.value)


def test_a_dry_run_on_a_damaged_folder_with_no_writer_reads_it_once(
    damaged: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    real = fr._job_salt

    def counted(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        calls.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fr, "_job_salt", counted)
    with pytest.raises(Exception) as e:
        batch_llm(_rows(), dry_run=True, **_kw(damaged))  # type: ignore[arg-type]
    assert len(calls) == 1, (len(calls), e.value)


def _changing(root: Path, error: BaseException) -> tuple[list[int], object]:
    """A read that writes a new part under ``root`` (a writer beside it) and fails."""
    calls: list[int] = []

    def read() -> None:
        calls.append(1)
        (root / "jobs").mkdir(parents=True, exist_ok=True)
        (root / "jobs" / f"part-{len(calls)}.parquet").write_bytes(b"")
        raise error

    return calls, read


@pytest.mark.parametrize(
    "error",
    [
        OSError(2, "No such file"),
        StateError("damaged"),
        pl.exceptions.ComputeError("vanished"),
    ],
)
def test_a_read_whose_parts_keep_changing_is_read_at_most_five_times(
    tmp_path: Path, error: BaseException
) -> None:
    calls, read = _changing(tmp_path, error)
    with pytest.raises(type(error)):
        state.read_unlocked([tmp_path], read)  # type: ignore[arg-type]
    assert len(calls) == state.READ_ATTEMPTS == 5


@pytest.mark.parametrize(
    "error", [state.StateLockedError("locked"), state.StateMismatchError("other call")]
)
def test_a_locked_or_mismatched_folder_is_never_read_again(
    tmp_path: Path, error: BaseException
) -> None:
    calls, read = _changing(tmp_path, error)
    with pytest.raises(type(error)):
        state.read_unlocked([tmp_path], read)  # type: ignore[arg-type]
    assert len(calls) == 1


def test_a_table_that_is_a_file_counts_as_no_parts(tmp_path: Path) -> None:
    (tmp_path / "jobs").write_bytes(b"not a folder")
    assert state._part_names([tmp_path]) == set()
