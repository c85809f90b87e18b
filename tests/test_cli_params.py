"""``batchata-df run``'s model parameters, through the installed command in a subprocess.

A new user's reviewer found: ``--help`` said ``--max-tokens`` defaults to 4096 when a model
that thinks gets more, and a parameter given twice (``--params`` and ``--param``, or
``--max-tokens`` and ``--param max_tokens=``) was accepted silently, one value winning.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import polars as pl
import pytest
from test_cli_guards import EXE, _env, one_line_error

from batchata_df.models import DEFAULT_MAX_TOKENS, DEFAULT_MAX_TOKENS_BY_EFFORT

RUN = ["run", "in.parquet", "out.parquet", "--prompt", "{text}", "--no-progress"]


def cli(emu, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], cwd=cwd, env=_env(emu), capture_output=True,
                          text=True, timeout=240)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    pl.DataFrame({"text": [f"ticket {i}" for i in range(3)]}).write_parquet(
        tmp_path / "in.parquet"
    )
    return tmp_path


def test_help_gives_the_default_max_tokens_a_dry_run_plans(emu, work):
    """The help said "default 4096"; gpt-5-mini (it thinks, at medium) plans 16,384."""
    r = cli(emu, "run", "--help", cwd=work)
    assert r.returncode == 0, r.stderr
    shown = " ".join(r.stdout.split())
    help_text = shown[shown.index("--max-tokens"):shown.index("--max-cost-usd")]
    assert "default 4096)" not in help_text
    assert f"{DEFAULT_MAX_TOKENS} for a model that does not think" in help_text
    medium = DEFAULT_MAX_TOKENS_BY_EFFORT["medium"]
    assert f"{medium} at medium, e.g. gpt-6-luna" in help_text
    assert "Models table" in help_text
    for model, planned in (("gpt-5-mini", medium), ("gpt-4.1-mini", DEFAULT_MAX_TOKENS)):
        r = cli(emu, *RUN, "--model", model, "--dry-run", "--plan", "plan.parquet", cwd=work)
        assert r.returncode == 0, r.stderr
        plan = pl.read_parquet(work / "plan.parquet")
        assert plan["_est_output_tokens_max"].to_list() == [planned] * 3, model
    assert emu.log() == [] and emu.billing() == []


@pytest.mark.parametrize(
    ("given", "name", "first", "second"),
    [
        (["--params", '{"temperature": 0}', "--param", "temperature=1"], "temperature",
         """in --params '{"temperature": 0}'""", "as --param temperature=1"),
        (["--param", "temperature=0", "--param", "temperature=1"], "temperature",
         "as --param temperature=0", "as --param temperature=1"),
        (["--param", "seed=1", "--param", "seed=1"], "seed",
         "as --param seed=1", "as --param seed=1"),
        (["--max-tokens", "100", "--param", "max_tokens=200"], "max_tokens",
         "as --param max_tokens=200", "as --max-tokens 100"),
        (["--max-tokens", "100", "--params", '{"max_tokens": 100}'], "max_tokens",
         """in --params '{"max_tokens": 100}'""", "as --max-tokens 100"),
        (["--params", '{"max_tokens": 50}', "--param", "max_tokens=60"], "max_tokens",
         """in --params '{"max_tokens": 50}'""", "as --param max_tokens=60"),
    ],
)
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_parameter_given_twice_is_refused_naming_both_before_sending(
    emu, work, given, name, first, second, dry_run
):
    """Before, the later one won silently (temperature 1 sent; --max-tokens 100 planned)."""
    r = cli(emu, *RUN, "--model", "gpt-4.1-mini", *given, *(["--dry-run"] * dry_run),
            cwd=work)
    line = one_line_error(r, 2)
    assert f"{name} is given twice: {first} and {second}; give it once" in line
    assert "Nothing was sent" in line
    assert emu.log() == [] and emu.billing() == []
    assert sorted(p.name for p in work.iterdir()) == ["in.parquet"]

