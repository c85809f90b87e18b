"""A dry run over a state folder says of rows that failed there what the next run does.

A real run on the folder keeps a failed row failed (its error, nothing sent) unless
``retry_failed=True``, which sends it again (paid again). The dry run labelled such a row
``done``, the label of an answered row: a plan reading "6 done" before a run returning
"4 completed, 2 failed". Each test runs a real call through the emulator that leaves
failed rows (forced by the emulator's prompt markers: an answer truncated at
``max_tokens``, billed; a request refused with HTTP 400, not billed), then the dry run on
the same folder, then the real run, and holds the plan to what the run did and billed: in
memory, streamed (``sink=``) and from the command line.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from test_cli_guards import cli

from batchata_df import batch_llm

TEXTS = ["one", "two", "three [[emulator:truncate]]", "four", "five [[emulator:error:400]]",
         "six"]  # fmt: skip
FAILED = {2, 4}  # the rows the first run leaves failed
KW: dict[str, object] = {"model": "gpt-4.1-mini", "prompt": "Say {text}", "progress": False,
                         "params": {"max_tokens": 64}}  # fmt: skip
RUN_AS = {"completed": "done", "failed": "failed"}
"""The plan's label of a row a run returns without sending it, by the run's ``_status``."""


def _call(how: str, tmp_path: Path, **kw: object) -> pl.DataFrame:
    frame = pl.DataFrame({"text": TEXTS})
    state = tmp_path / "state"
    if how == "streamed":
        sink = tmp_path / ("plan.parquet" if kw.get("dry_run") else "out.parquet")
        lazy = batch_llm(frame.lazy(), sink=sink, state=state, chunk_rows=4, **KW, **kw)  # type: ignore[arg-type]
        assert isinstance(lazy, pl.LazyFrame)
        return lazy.collect()
    out = batch_llm(frame, state=state, **KW, **kw)  # type: ignore[arg-type]
    assert isinstance(out, pl.DataFrame)
    return out


def _check_plan_against_run(
    plan: pl.DataFrame, before: pl.DataFrame, after: pl.DataFrame, billed: int, retry: bool
) -> None:
    """The plan's labels and money against what the run then did and billed."""
    sent = [b != a for b, a in zip(before["_batch_id"], after["_batch_id"], strict=True)]
    for i, (label, status, went) in enumerate(
        zip(plan["_status"], after["_status"], sent, strict=True)
    ):
        if label == "planned":
            assert went, (i, label, status)  # sent again, as planned
        else:
            assert not went and label == RUN_AS[status], (i, label, status)
    want = ["done"] * len(TEXTS)
    for i in FAILED:
        want[i] = "planned" if retry else "failed"
    assert plan["_status"].to_list() == want
    # The money: the re-sent rows are priced (expected and worst case), the others are not;
    # what the run billed is within the plan's worst case, nothing when nothing is planned.
    resent = pl.Series(sent)
    assert (plan["_expected_cost_usd"] > 0).to_list() == resent.to_list()
    assert (plan["_est_cost_usd"] > 0).to_list() == resent.to_list()
    paid = float(after["_cost_usd"].fill_null(0.0).sum() - before["_cost_usd"].fill_null(0.0).sum())
    if retry:
        assert billed == 1 and 0 < paid <= float(plan["_est_cost_usd"].sum())  # the truncated one
    else:
        assert billed == 0 and paid == 0.0
        assert float(plan["_expected_cost_usd"].sum()) == 0.0


@pytest.mark.parametrize("retry", [False, True], ids=["kept", "retried"])
@pytest.mark.parametrize("how", ["in_memory", "streamed"])
def test_a_dry_run_labels_failed_rows_as_the_next_run_treats_them(
    emu, tmp_path: Path, how: str, retry: bool
) -> None:
    first = _call(how, tmp_path)
    assert [i for i, s in enumerate(first["_status"]) if s == "failed"] == sorted(FAILED)
    assert first["_error"][2].startswith("truncated") and first["_cost_usd"][2] > 0
    assert first["_error"][4].startswith("http_400") and first["_cost_usd"][4] == 0
    n = len(emu.billing())
    plan = _call(how, tmp_path, dry_run=True, retry_failed=retry)
    assert len(emu.billing()) == n
    after = _call(how, tmp_path, retry_failed=retry)
    _check_plan_against_run(plan, first, after, len(emu.billing()) - n, retry)


@pytest.fixture(scope="module")
def first_cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The folder of the first command-line run, made by the first test that needs it."""
    return {"base": tmp_path_factory.mktemp("first-cli-run")}


def _first_cli_run(emu, first_cli_runs: dict[str, Path], work: Path, run: list[str]) -> None:
    """``work``: the input, the output and the state folder the first run leaves there.

    That run is the same for every case (it leaves rows 2 and 4 failed), so it runs once
    per module, in a folder of its own, and each test gets a copy: the cases only differ
    in what they do afterwards, and each writes only to its copy.
    """
    if "made" not in first_cli_runs:
        made = first_cli_runs["base"] / "made"
        made.mkdir()
        pl.DataFrame({"text": TEXTS}).write_parquet(made / "in.parquet")
        r = cli(emu, *run, cwd=made)
        assert r.returncode == 3, r.stderr  # some rows failed
        first_cli_runs["made"] = made
    shutil.copytree(first_cli_runs["made"], work, dirs_exist_ok=True)


@pytest.mark.parametrize("retry", [False, True], ids=["kept", "retried"])
def test_the_cli_dry_run_labels_failed_rows_as_the_next_run_treats_them(
    emu, tmp_path: Path, first_cli_runs: dict[str, Path], retry: bool
) -> None:
    run = ["run", "in.parquet", "out.parquet", "--model", "gpt-4.1-mini", "--prompt",
           "Say {text}", "--max-tokens", "64", "--no-progress"]  # fmt: skip
    again = ["--retry-failed"] if retry else []
    _first_cli_run(emu, first_cli_runs, tmp_path, run)
    first = pl.read_parquet(tmp_path / "out.parquet")
    assert first["_status"].to_list() == [  # as the emulator's markers make them
        "failed" if i in FAILED else "completed" for i in range(len(TEXTS))
    ]
    n = len(emu.billing())
    r = cli(emu, *run, "--dry-run", "--plan", "plan.parquet", *again, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    plan = pl.read_parquet(tmp_path / "plan.parquet")
    assert len(emu.billing()) == n
    r = cli(emu, *run, *again, cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    after = pl.read_parquet(tmp_path / "out.parquet")
    _check_plan_against_run(plan, first, after, len(emu.billing()) - n, retry)
    # The summary a person reads counts the rows as the run then returns them.
    shown = cli(emu, *[a for a in run if a != "--no-progress"], "--dry-run", *again,
                cwd=tmp_path).stderr  # fmt: skip
    counts = Counter(after["_status"])
    if retry:
        assert f"{counts['completed']} done" in shown, shown
    else:
        assert f"rows: {counts['completed']} done, {counts['failed']} failed" in shown, shown
