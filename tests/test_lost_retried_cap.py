"""A realtime request lost in flight stays counted once its row is retried and answered.

A realtime request in flight when its process dies may have been billed (the provider ran
it; the folder never learns what it cost). The next call ends it ``failed`` "lost: ...",
and a cap counts it at its worst case. ``retry_failed=True`` sends it again: the row's
latest event becomes ``completed``, but the lost attempt's possible spend is still real.
Every later capped call (and every dry run's "already spent") must keep counting it, or
the emulator's ledger ends above the cap. The emulator is the judge: what it billed in
total, each request at the price of its answer, stays within the cap.

Real processes: a child runs the realtime call and is SIGKILLed with requests in flight
(as ``tests/test_lost_spend_cap.py``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import polars as pl
import pytest
from lost_requests import KW, MODEL, TEXTS, N, billed_usd, kill_mid_flight

from batchata_df import batch_llm, query, sql
from batchata_df.errors import CapSerialisedWarning, LostUnpricedWarning, StateError
from batchata_df.state import lost_attempts

NEW = [f"new row {i:03d}" for i in range(N)]


@pytest.fixture(scope="module")
def killed_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[object, object]:
    """Where this module's killed state folders are kept, built by the first test that
    needs each (see :func:`_killed`)."""
    return {"base": tmp_path_factory.mktemp("killed")}


def _killed(
    emu, killed_folders, procs, state: Path, *, cap: float | None, retried: bool
) -> list[dict[str, object]]:  # fmt: skip
    """``state``: a folder of a realtime call SIGKILLed with requests in flight (``cap``
    its cap), then (``retried``) an uncapped ``retry_failed`` call answering every row.
    Returns what the emulator billed for all that; the emulator is left reset.

    Each such folder is made once per module (a child run and its kill take seconds) and
    each test gets a copy of its own: the tests only differ in what they do afterwards,
    and each writes only to its copy.
    """
    key = (cap, retried)
    if key not in killed_folders:
        base = killed_folders["base"]
        assert isinstance(base, Path)
        made = base / f"cap-{cap}-retried-{retried}"
        made.mkdir()
        emu.reset()
        if retried:
            ledger = _killed(emu, killed_folders, procs, made / "state", cap=cap,
                             retried=False)
            _retry_lost(made / "state")
        else:
            kill_mid_flight(emu, made, made / "state", procs, cap=cap, min_in_flight=6)
            ledger = []
        killed_folders[key] = (made / "state", ledger + emu.billing())
        emu.reset()
    folder, ledger = killed_folders[key]  # type: ignore[misc]
    shutil.copytree(folder, state)
    return list(ledger)


def _billed_usd(ledger: list[dict[str, object]]) -> float:
    return billed_usd(ledger, TEXTS + NEW)


def _retry_lost(state: Path) -> pl.DataFrame:
    """An uncapped call that sends the lost rows again (``retry_failed``): all answered."""
    out = batch_llm(
        pl.DataFrame({"text": TEXTS}), state=str(state), mode="realtime", retry_failed=True,
        **KW,  # type: ignore[arg-type]
    )  # fmt: skip
    assert out.get_column("_status").to_list() == ["completed"] * N
    return out


def _lost_attempts(state: Path) -> pl.DataFrame:
    """The folder's lost attempts (``query.lost_requests``), checked against the events and
    against what the cap reads (``state.lost_attempts``)."""
    lost = query.lost_requests(state)
    events = sql(
        "SELECT job_id, est_cost_usd FROM job_events WHERE status = 'failed' "
        "AND error LIKE 'lost:%'",
        state,
    )
    assert sorted(lost.get_column("job_id").to_list()) == sorted(events["job_id"].to_list())
    def key(row: tuple[object, ...]) -> tuple[str, float]:
        return str(row[0]), float(row[1] or 0.0)  # type: ignore[arg-type]

    assert sorted(lost_attempts(state).rows(), key=key) == sorted(
        lost.select("job_id", "est_cost_usd").rows(), key=key
    )
    return lost


@pytest.mark.parametrize("mode", ["realtime", "batch", "streamed"])
def test_a_lost_request_retried_and_answered_stays_counted_by_a_later_capped_call(
    emu, tmp_path, procs, killed_folders, mode
) -> None:
    # The killed call had a cap: each lost request's worst case is recorded.
    state = tmp_path / "state"
    ledger = _killed(emu, killed_folders, procs, state, cap=100.0, retried=True)
    lost = _lost_attempts(state)
    assert lost.height >= 6
    jobs = sql("SELECT status, count(*) AS n FROM jobs GROUP BY status", state)
    assert jobs.rows() == [("completed", N)]  # no row is lost any more
    assert set(lost.get_column("job_status").to_list()) == {"completed"}
    assert lost.get_column("est_cost_usd").null_count() == 0
    # ledger: the lost requests, and their retries, billed
    # Room for some new rows once the lost requests count at their worst case (~$0.034
    # each, billed ~$0.02): counted at $0 they leave room for what they were billed more.
    cap = round(_billed_usd(ledger) + 0.25, 6)
    emu.reset()
    new = pl.DataFrame({"text": NEW})
    with warnings.catch_warnings():  # a batch of few rows the cap serialises: said apart
        warnings.simplefilter("ignore", CapSerialisedWarning)
        if mode == "streamed":
            src = tmp_path / "in.parquet"
            new.write_parquet(src)
            batch_llm(
                pl.scan_parquet(src), sink=tmp_path / "out.parquet", state=str(state),
                max_cost_usd=cap, **KW,  # type: ignore[arg-type]
            )  # fmt: skip
        else:
            batch_llm(
                new, state=str(state), mode=mode, max_cost_usd=cap,
                **({"concurrency": 8} if mode == "realtime" else {}),  # batch: refused
                **KW,  # type: ignore[arg-type]
            )  # fmt: skip
    ledger += emu.billing()
    assert len(emu.billing()) >= 1  # the cap left room for some rows
    emu.reset()
    assert _billed_usd(ledger) <= cap


def test_a_lost_request_without_a_recorded_worst_case_is_priced_from_the_rows_or_refused(
    emu, tmp_path, procs, killed_folders
) -> None:
    # The killed call had no cap: no worst case recorded; the retry had none either.
    state = tmp_path / "state"
    ledger = _killed(emu, killed_folders, procs, state, cap=None, retried=True)
    lost = _lost_attempts(state)
    assert lost.height >= 6
    assert lost.get_column("est_cost_usd").null_count() == lost.height
    cap = round(_billed_usd(ledger) + 0.25, 6)
    emu.reset()
    # Its row is not in the capped call's frame: its worst case cannot be computed.
    kw = dict(KW, max_cost_usd=cap, state=str(state))
    with pytest.raises(StateError, match=r"lost in flight.*Include the rows.*Nothing was sent"):
        batch_llm(pl.DataFrame({"text": NEW}), mode="realtime", **kw)  # type: ignore[arg-type]
    assert emu.billing() == []
    # With the rows it was sent for in the frame, it is priced from them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CapSerialisedWarning)
        out = batch_llm(
            pl.DataFrame({"text": TEXTS + NEW}), mode="realtime", concurrency=8,
            **kw,  # type: ignore[arg-type]
        )  # fmt: skip
    assert out.filter(pl.col("_status") == "completed").height > N
    ledger += emu.billing()
    emu.reset()
    assert _billed_usd(ledger) <= cap


def _worst_realtime(texts: list[str], key: str = "text") -> dict[str, float]:
    """Each row's worst case at the realtime price, as a realtime dry run with a cap has it
    (by ``key``: ``text`` or ``_job_id``)."""
    plan = batch_llm(
        pl.DataFrame({"text": texts}), mode="realtime", dry_run=True, max_cost_usd=1e9,
        **KW,  # type: ignore[arg-type]
    )  # fmt: skip
    return dict(zip(plan[key], plan["_est_cost_usd"], strict=True))


@pytest.mark.parametrize("retried", [False, True])
@pytest.mark.parametrize("streamed", [False, True])
def test_a_dry_run_counts_lost_requests_as_already_spent(
    emu, tmp_path, procs, killed_folders, capsys: pytest.CaptureFixture[str], retried: bool,
    streamed: bool,
) -> None:  # fmt: skip
    state = tmp_path / "state"
    _killed(emu, killed_folders, procs, state, cap=100.0, retried=retried)
    lost = _lost_attempts(state) if retried else None
    if lost is None:  # not resolved yet: the dry run writes nothing; in flight, then lost
        lost = sql(
            "SELECT job_id, arg_max(est_cost_usd, seq) AS est_cost_usd FROM job_events "
            "GROUP BY job_id HAVING arg_max(status, seq) = 'assigned'",
            state,
        )
    assert lost.height >= 6
    # The killed call recorded each request's worst case: the one the cap held for it.
    worst = _worst_realtime(TEXTS)
    lost_usd = float(lost.get_column("est_cost_usd").sum())
    paid = float(sql("SELECT sum(cost_usd) AS usd FROM jobs", state)["usd"][0] or 0.0)
    spent = paid + lost_usd
    assert lost_usd >= 6 * min(worst.values()) * 0.99
    # Room for exactly three new requests' worst case (batch price) after what was spent.
    new = pl.DataFrame({"text": NEW})
    plan = batch_llm(new, dry_run=True, max_cost_usd=1e9, **KW)  # type: ignore[arg-type]
    three = float(plan.get_column("_est_cost_usd").head(3).sum())
    cap = round(spent + three + 1e-7, 7)
    capsys.readouterr()
    kw = dict(KW, max_cost_usd=cap, state=str(state), dry_run=True, progress=True)
    if streamed:
        plan = batch_llm(new.lazy(), sink=tmp_path / "plan.parquet", **kw).collect()  # type: ignore[arg-type]
    else:
        plan = batch_llm(new, **kw)  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert f"already spent or held by batches in flight: ${spent:,.4f}" in err, (err, spent)
    assert plan.get_column("_within_cap").to_list() == [True] * 3 + [False] * (N - 3)
    assert emu.billing() == []


def test_a_dry_run_prices_lost_requests_without_a_worst_case_from_its_rows(
    emu, tmp_path, procs, killed_folders, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sent by a call without a cap, retried and answered: no worst case recorded. A dry
    run counts each at the worst case computed from its row (realtime price), as the run's
    cap would; without the rows it refuses under a cap, and warns without one."""
    state = tmp_path / "state"
    _killed(emu, killed_folders, procs, state, cap=None, retried=True)
    lost = _lost_attempts(state)
    assert lost.height >= 6
    assert lost.get_column("est_cost_usd").null_count() == lost.height
    worst = _worst_realtime(TEXTS, key="_job_id")
    lost_usd = sum(worst[j] for j in lost.get_column("job_id").to_list())
    paid = float(sql("SELECT sum(cost_usd) AS usd FROM jobs", state)["usd"][0] or 0.0)
    kw = dict(KW, state=str(state), dry_run=True, progress=True)
    capsys.readouterr()
    batch_llm(pl.DataFrame({"text": TEXTS + NEW}), **kw)  # type: ignore[arg-type]
    err = capsys.readouterr().err
    spent = paid + lost_usd
    assert f"already spent or held by batches in flight: ${spent:,.4f}" in err, (err, spent)
    # Without the rows: a dry run without a cap leaves them out and says so ...
    with pytest.warns(LostUnpricedWarning, match=r"holds \d+ realtime request\(s\) lost") as w:
        batch_llm(pl.DataFrame({"text": NEW}), **kw)  # type: ignore[arg-type]
    assert w[0].filename == __file__  # the caller's line, not validate.py's
    err = capsys.readouterr().err
    assert f"already spent or held by batches in flight: ${paid:,.4f}" in err, (err, paid)
    # ... and one with a cap refuses, as the capped call itself would.
    with pytest.raises(StateError, match=r"lost in flight.*Include the rows"):
        batch_llm(pl.DataFrame({"text": NEW}), max_cost_usd=10.0, **kw)  # type: ignore[arg-type]
    assert emu.billing() == []


def test_a_request_lost_by_a_run_without_a_cap_records_no_worst_case_not_zero(
    emu, tmp_path
) -> None:
    """An answer cut short (``cut_clean``) in a run without a cap is lost: that run has no
    estimates, so it records no worst case (null). Recorded as $0, a later capped call
    would count it at $0; null, that call prices it from its row or refuses the folder."""
    state = tmp_path / "state"
    emu.inject_fault(method="POST", path_regex=r"/chat/completions$", action="cut_clean")
    out = batch_llm(
        pl.DataFrame({"text": TEXTS[:3]}), state=str(state), mode="realtime", **KW,  # type: ignore[arg-type]
    )  # fmt: skip
    assert sorted(out["_status"].to_list()) == ["completed", "completed", "failed"]
    lost = _lost_attempts(state)
    assert lost.height == 1
    assert lost.get_column("est_cost_usd").to_list() == [None]
    paid = float(sql("SELECT sum(cost_usd) AS usd FROM jobs", state)["usd"][0] or 0.0)
    emu.reset()
    with pytest.raises(StateError, match=r"lost in flight.*Include the rows.*Nothing was sent"):
        batch_llm(
            pl.DataFrame({"text": NEW[:2]}), state=str(state), mode="realtime",
            max_cost_usd=10.0, **KW,  # type: ignore[arg-type]
        )  # fmt: skip
    assert emu.billing() == []
    # With its row in the frame, a dry run counts it at the worst case computed from it.
    worst = _worst_realtime(TEXTS[:3], key="_job_id")[lost.item(0, "job_id")]
    plan = batch_llm(
        pl.DataFrame({"text": TEXTS[:3] + NEW[:2]}), state=str(state), mode="realtime",
        dry_run=True, max_cost_usd=paid + worst + 1e-9, **KW,  # type: ignore[arg-type]
    )  # fmt: skip
    assert plan.filter(pl.col("_status") == "planned").get_column("_within_cap").to_list() == [
        False, False
    ]
    assert emu.billing() == []


def emu_served(state: Path) -> int:
    """Rows the folder holds answered."""
    return int(sql("SELECT count(*) AS n FROM jobs WHERE status = 'completed'", state)["n"][0])


@pytest.mark.parametrize("streamed", [False, True])
def test_a_dry_run_after_a_kill_does_not_plan_the_lost_rows_again(
    emu, tmp_path, procs, killed_folders, streamed: bool
) -> None:
    """The run ends a request left in flight ``failed`` "lost: ..." and does not send it
    again (unless ``retry_failed``): the dry run plans it so too (it had it ``planned``,
    its worst case counted twice: in "already spent" and in the plan), labelled
    ``failed`` as the run returns it (it read ``done``, the label of an answered row)."""
    state = tmp_path / "state"
    _killed(emu, killed_folders, procs, state, cap=100.0, retried=False)
    in_flight = set(
        sql(
            "SELECT job_id FROM job_events GROUP BY job_id HAVING arg_max(status, seq) = "
            "'assigned'",
            state,
        )["job_id"].to_list()
    )
    assert len(in_flight) >= 6
    frame = pl.DataFrame({"text": TEXTS})

    def call(**kw: object) -> pl.DataFrame:  # a streamed call sends batches
        kw = dict(KW, state=str(state), mode="batch" if streamed else "realtime", **kw)
        if streamed:
            sink = tmp_path / ("plan.parquet" if kw.get("dry_run") else "out.parquet")
            return batch_llm(frame.lazy(), sink=sink, **kw).collect()  # type: ignore[arg-type]
        return batch_llm(frame, **kw)  # type: ignore[arg-type]

    out = call(dry_run=True)
    status = dict(zip(out["_job_id"], out["_status"], strict=True))
    assert {status[j] for j in in_flight} == {"failed"}
    # Then the run: nothing of those is sent again, as planned.
    planned = out.filter(pl.col("_status") == "planned").height
    assert planned == N - len(in_flight) - emu_served(state)
    ran = call()
    assert len(emu.billing()) == planned
    lost = ran.filter(pl.col("_error").str.starts_with("lost:").fill_null(False))
    assert set(lost["_job_id"].to_list()) == in_flight
    emu.reset()
    # With retry_failed they are planned again (and the run sends them).
    out = call(dry_run=True, retry_failed=True)
    status = dict(zip(out["_job_id"], out["_status"], strict=True))
    assert {status[j] for j in in_flight} == {"planned"}
    assert emu.billing() == []


def test_status_lists_lost_requests_with_the_worst_case_the_cap_counts(
    emu, tmp_path, procs, killed_folders
) -> None:
    state = tmp_path / "state"
    _killed(emu, killed_folders, procs, state, cap=100.0, retried=True)
    lost = _lost_attempts(state)
    worst = float(lost.get_column("est_cost_usd").sum())
    exe = Path(sys.executable).parent / "batchata-df"
    r = subprocess.run(
        [str(exe), "status", str(state)], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "realtime requests lost in flight" in r.stdout
    table = r.stdout.split("realtime requests lost in flight", 1)[1].split("provider batches")[0]
    row = next(line for line in table.splitlines() if MODEL in line)
    cells = [c.strip() for c in row.strip().strip("│").split("┆")]
    assert cells[:4] == ["openai", MODEL, str(lost.height), "0"]
    assert float(cells[4]) == pytest.approx(worst, rel=1e-4)  # as displayed: rounded
    assert cells[5] == str(lost.height)  # every one answered since: still counted
