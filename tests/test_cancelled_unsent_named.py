"""Jobs the cost cap cancels before sending keep the provider and model they were for.

Issue (new-user review): ``batchata-df run ... --max-cost-usd 0.0000001`` then ``status``
showed ``null null cancelled 6``, and ``batchata_df.sql`` grouped by provider/model gave a
null group. Their events now name both (``mode`` stays null: the jobs view's mode is how a
job was last sent, and these never were; see ``batchata_df.state``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import polars as pl
import pytest

from batchata_df import batch_llm, sql


@pytest.mark.parametrize("mode", ["batch", "realtime", "auto"])
def test_rows_the_cap_cancels_unsent_name_their_provider_and_model(emu, tmp_path, mode):
    df = pl.DataFrame(
        {"text": ["a", "b", "c"], "m": ["gpt-4.1-mini", "claude-haiku-4-5", "gpt-4.1-mini"]}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cap is below one request's worst case
        out = df.pipe(
            batch_llm, model=pl.col("m"), prompt="{text}", state=tmp_path / "s",
            max_cost_usd=1e-7, mode=mode, progress=False,
        )  # fmt: skip
    assert out["_status"].to_list() == ["cancelled"] * 3
    assert out["_error"].to_list() == ["cancelled: cost_limit"] * 3
    got = sql(
        "SELECT provider, model, mode, status, batch_key, count(*) AS n FROM jobs "
        "GROUP BY ALL ORDER BY ALL",
        tmp_path / "s",
    )
    assert got.rows() == [
        ("anthropic", "claude-haiku-4-5", None, "cancelled", None, 1),
        ("openai", "gpt-4.1-mini", None, "cancelled", None, 2),
    ]
    assert emu.billing() == []
    assert emu.log() == []


def test_cli_status_names_the_model_of_rows_the_cap_cancelled(emu, tmp_path):
    exe = Path(sys.executable).with_name("batchata-df")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    src = tmp_path / "in.parquet"
    pl.DataFrame({"text": [f"t{i}" for i in range(6)]}).write_parquet(src)
    run = subprocess.run(
        [str(exe), "run", "in.parquet", "o1.parquet", "--model", "gpt-4.1-mini", "--prompt",
         "{text}", "--max-cost-usd", "0.0000001"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert (tmp_path / "o1.parquet").exists(), (run.returncode, run.stderr)
    status = subprocess.run(
        [str(exe), "status", "o1.parquet.state"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    cells = [
        [c.strip() for c in line.strip("│ ").split("┆")] for line in status.stdout.splitlines()
    ]
    assert ["openai", "gpt-4.1-mini", "cancelled", "6"] in [r[:4] for r in cells], status.stdout
    assert emu.billing() == []
