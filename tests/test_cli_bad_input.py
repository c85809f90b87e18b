"""Bad input to ``sql``, ``doctor``/``repair`` and ``--schema``: a typed error naming the fix.

Each through the library and through the installed ``batchata-df`` command in a
subprocess: a caller's mistake is exit 2 with one line naming the fix, never a traceback
(exit 1) or a false "healthy".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from batchata_df import ConfigError, sql
from batchata_df.state import StateStore

EXE = Path(sys.executable).with_name("batchata-df")
REPO = Path(__file__).resolve().parents[1]


def cli(
    *args: object, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full["PYTHONPATH"] = str(REPO)
    full.update(env or {})
    return subprocess.run([str(EXE), *map(str, args)], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=240)


def one_line_error(r: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("batchata-df: error: "), lines
    return lines[0]


def state_folder(path: Path) -> Path:
    store = StateStore(path, {"model": "gpt-5.4-mini"})
    store.append_jobs(pl.DataFrame({"job_id": ["a", "b"], "status": "assigned",
                                    "provider": "openai", "model": "gpt-5.4-mini"}))
    return path


# ---- sql: a blank query, or one whose statement gives no result

NO_RESULT = ["", "   \n", ";", "-- only a comment", "/* a comment */ ;"]


@pytest.mark.parametrize("query", NO_RESULT)
def test_sql_with_no_statement_is_a_config_error_naming_the_fix(tmp_path, query):
    folder = state_folder(tmp_path / "s")
    with pytest.raises(ConfigError) as info:
        sql(query, folder)
    assert type(info.value) is ConfigError
    message = str(info.value)
    assert f"sql: the query {query!r}" in message
    assert "SELECT * FROM jobs LIMIT 10" in message  # the fix, as an example
    assert sql("SELECT count(*) AS n FROM jobs", folder).item() == 2  # the folder reads


@pytest.mark.parametrize("query", ["", ";", "-- only a comment"])
def test_the_sql_command_with_no_statement_exits_2_with_one_line(tmp_path, query):
    state_folder(tmp_path / "s")
    r = cli("sql", "--", query, "s", cwd=tmp_path)  # "--": a query may start with "--"
    line = one_line_error(r)
    assert f"sql: the query {query!r}" in line
    assert r.stdout == ""
    ok = cli("sql", "SELECT count(*) AS n FROM jobs", "s", "--csv", cwd=tmp_path)
    assert (ok.returncode, ok.stdout) == (0, "n\n2\n")
