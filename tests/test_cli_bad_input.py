"""Bad input to ``sql``, ``doctor``/``repair`` and ``--schema``: a typed error naming the fix.

Each through the library and through the installed ``batchata-df`` command in a
subprocess: a caller's mistake is exit 2 with one line naming the fix, never a traceback
(exit 1) or a false "healthy".
"""

from __future__ import annotations

import json
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


# ---- doctor / repair of a path that is not a state folder

def tree(root: Path) -> list[str]:
    """Every file and folder under ``root``, relative: what a refused call must not change."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def results_dir(root: Path, n_runs: int = 1) -> Path:
    """A results folder as users have it: ``<out>.state`` folders of ``batchata-df run`` and
    ``state/<group>`` folders of ``compat.Batch``, beside data files."""
    for i in range(n_runs):
        state_folder(root / f"run{i}.parquet.state")
    state_folder(root / "state" / "group-a")
    (root / "run0.parquet").write_bytes(b"PAR1")
    (root / "job-000000.json").write_text("{}")
    return root


REFUSED = {
    "results": "the state folders below it are",
    "empty": "pass the state folder of a run",
    "data": "pass the state folder of a run",
}


def not_state_folder(tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / kind
    if kind == "results":
        return results_dir(folder)
    folder.mkdir()
    if kind == "data":
        (folder / "tickets.csv").write_text("id,text\n1,hi\n")
        (folder / "notes").mkdir()
        (folder / "notes" / "a.txt").write_text("x")
    return folder


@pytest.mark.parametrize("kind", sorted(REFUSED))
@pytest.mark.parametrize("call", ["doctor", "repair", "repair --apply"])
def test_doctor_and_repair_of_a_folder_that_is_not_a_state_folder_raise_state_error(
    tmp_path, kind, call
):
    from batchata_df import StateError, doctor, repair

    folder = not_state_folder(tmp_path, kind)
    before = tree(folder)
    with pytest.raises(StateError) as info:
        if call == "doctor":
            doctor(folder)
        else:
            repair(folder, apply=call.endswith("--apply"))
    message = str(info.value)
    assert message.startswith(f"{str(folder)!r} is not a batchata-df state folder (it holds "
                              "no manifest.json, jobs/ or batches/)"), message
    assert REFUSED[kind] in message
    if kind == "results":
        listed = [folder / "run0.parquet.state", folder / "state" / "group-a"]
        assert f"{str(listed[0])!r} and {str(listed[1])!r}: pass one of them" in message
    assert message.endswith("; nothing was changed") == call.startswith("repair")
    assert tree(folder) == before  # no writer.lock, no jobs/, no manifest left behind


def test_the_state_folders_below_are_listed_a_few_then_how_many_more(tmp_path):
    from batchata_df import StateError, repair

    folder = results_dir(tmp_path / "results", n_runs=7)  # 7 runs + 1 compat group
    with pytest.raises(StateError) as info:
        repair(folder, apply=True)
    names = ", ".join(repr(str(folder / f"run{i}.parquet.state")) for i in range(5))
    assert f"the state folders below it are {names} and 3 more: pass one of them, e.g. " \
           f"`batchata-df repair {folder / 'run0.parquet.state'}`" in str(info.value)
    assert not (folder / "writer.lock").exists()


def test_doctor_and_repair_of_a_missing_path_or_a_file_name_the_fix(tmp_path):
    from batchata_df import StateError, doctor, repair

    with pytest.raises(StateError, match=r"'.*nope' does not exist; pass the state folder"):
        doctor(tmp_path / "nope")
    state_folder(tmp_path / "out.parquet.state")
    (tmp_path / "out.parquet").write_bytes(b"PAR1")
    with pytest.raises(StateError) as info:
        repair(tmp_path / "out.parquet", apply=True)
    assert str(info.value) == (
        f"{str(tmp_path / 'out.parquet')!r} is not a folder; did you mean the state folder "
        f"{str(tmp_path / 'out.parquet.state')!r}?; nothing was changed"
    )
    with pytest.raises(StateError) as info:
        doctor(tmp_path / "out.parquet.state" / "jobs")
    assert str(info.value).endswith(
        f"pass the state folder it is in: {str(tmp_path / 'out.parquet.state')!r}"
    )


def test_a_state_folder_whose_manifest_was_deleted_is_still_repaired(tmp_path):
    """Its parts remain (jobs/, batches/): doctor says what is wrong, repair rebuilds it."""
    from batchata_df import doctor, repair

    folder = state_folder(tmp_path / "s")
    run_id = json.loads((folder / "manifest.json").read_text())["run_id"]
    (folder / "manifest.json").unlink()
    report = doctor(folder)
    assert not report.healthy and report.manifest is not None
    done = repair(folder, apply=True)
    assert done.applied
    assert json.loads((folder / "manifest.json").read_text())["run_id"] == run_id
    assert doctor(folder).healthy


@pytest.mark.parametrize("kind", sorted(REFUSED))
@pytest.mark.parametrize("args", [["doctor"], ["repair"], ["repair", "--apply"]])
def test_the_doctor_and_repair_commands_on_a_non_state_folder_exit_2_listing_folders(
    tmp_path, kind, args
):
    folder = not_state_folder(tmp_path, kind)
    before = tree(folder)
    r = cli(*args, kind, cwd=tmp_path)
    line = one_line_error(r)
    assert f"error: '{kind}' is not a batchata-df state folder" in line
    assert REFUSED[kind] in line
    if kind == "results":
        assert ("'results/run0.parquet.state' and 'results/state/group-a': pass one of "
                f"them, e.g. `batchata-df {args[0]} results/run0.parquet.state`") in line
    assert r.stdout == ""  # never "healthy"
    assert tree(folder) == before


def test_the_doctor_and_repair_commands_on_a_missing_path_exit_2(tmp_path):
    for args in (["doctor"], ["repair", "--apply"]):
        line = one_line_error(cli(*args, "nope", cwd=tmp_path))
        assert "'nope' does not exist; pass the state folder of a run" in line
    assert sorted(os.listdir(tmp_path)) == []


def test_status_and_sql_commands_on_a_non_state_folder_exit_2(tmp_path):
    """They refused it already (no manifest.json): kept so."""
    results_dir(tmp_path / "results")
    for args in (["status"], ["sql", "select count(*) from jobs"]):
        line = one_line_error(cli(*args, "results", cwd=tmp_path))
        assert "'results' is not a batchata-df state folder (no manifest.json)" in line


# ---- --schema whose module imports a package that is not installed

MODEL_MODULE = """\
import {imports}  # noqa: F401
from pydantic import BaseModel


class Ticket(BaseModel):
    label: str
"""


def schema_module(tmp_path: Path, imports: str) -> Path:
    mods = tmp_path / "mods"
    mods.mkdir(exist_ok=True)
    (mods / "mymodels27.py").write_text(MODEL_MODULE.format(imports=imports))
    return mods


def test_load_schema_names_the_package_its_module_imports_that_is_not_installed(
    tmp_path, monkeypatch
):
    from batchata_df.cli import UsageProblem, load_schema

    monkeypatch.syspath_prepend(str(schema_module(tmp_path, "notinstalled27.sub")))
    monkeypatch.delitem(sys.modules, "mymodels27", raising=False)
    # ``import notinstalled27.sub``: Python names the first missing part, the package.
    with pytest.raises(UsageProblem) as info:
        load_schema("mymodels27:Ticket")
    assert str(info.value) == (
        "--schema 'mymodels27:Ticket': 'mymodels27' imports 'notinstalled27', which is "
        "not installed; install it (e.g. `pip install notinstalled27`) in the environment "
        "that runs batchata-df, then run again"
    )


@pytest.mark.parametrize("given", ["module", "file"])
def test_run_with_a_schema_importing_a_missing_package_exits_2_naming_it(tmp_path, given):
    mods = schema_module(tmp_path, "notinstalled27")
    pl.DataFrame({"text": ["hi"]}).write_parquet(tmp_path / "in.parquet")
    spec = "mymodels27:Ticket" if given == "module" else "mods/mymodels27.py:Ticket"
    named = "'mymodels27'" if given == "module" else "'mods/mymodels27.py'"
    r = cli("run", "in.parquet", "out.parquet", "--model", "gpt-4.1-mini", "--prompt",
            "{text}", "--schema", spec, cwd=tmp_path,
            env={"PYTHONPATH": os.pathsep.join([str(mods), str(REPO)])})
    line = one_line_error(r)
    assert line == (
        f"batchata-df: error: --schema {spec!r}: {named} imports 'notinstalled27', which is "
        "not installed; install it (e.g. `pip install notinstalled27`) in the environment "
        "that runs batchata-df, then run again"
    )
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("absentmod27:Ticket", "cannot import 'absentmod27' (No module named 'absentmod27'); "
                               "run from the folder that holds it"),
        ("mymodels27:Nope", "'mymodels27' has no 'Nope' (models there: ['Ticket'])"),
        ("json:dumps", "'json:dumps' is not a pydantic BaseModel subclass"),
    ],
)
def test_the_other_schema_messages_are_kept(tmp_path, spec, needle):
    mods = schema_module(tmp_path, "json")  # a module whose imports are all there
    pl.DataFrame({"text": ["hi"]}).write_parquet(tmp_path / "in.parquet")
    r = cli("run", "in.parquet", "out.parquet", "--model", "gpt-4.1-mini", "--prompt",
            "{text}", "--schema", spec, cwd=tmp_path,
            env={"PYTHONPATH": os.pathsep.join([str(mods), str(REPO)])})
    assert needle in one_line_error(r)


def test_library_sql_on_a_non_state_folder_raises_listing_those_below(tmp_path):
    """It read as a run of no rows before; a glob keeps only the state folders it matches."""
    from batchata_df import StateError

    folder = results_dir(tmp_path / "results")
    with pytest.raises(StateError) as info:
        sql("SELECT count(*) FROM jobs", folder)
    listed = f"{str(folder / 'run0.parquet.state')!r} and {str(folder / 'state' / 'group-a')!r}"
    assert f"the state folders below it are {listed}: pass one of them, or a list or glob " \
           "pattern of them" in str(info.value)
    with pytest.raises(StateError, match="pass the state folder of a run"):
        sql("SELECT count(*) FROM jobs", not_state_folder(tmp_path, "empty"))
    # results/* matches results/state too (not a state folder): skipped, not read as empty.
    assert sql("SELECT count(*) AS n, count(DISTINCT run) AS runs FROM jobs",
               f"{folder}/*").rows() == [(2, 1)]
    assert sql("SELECT count(DISTINCT run) FROM jobs",
               [f"{folder}/*", f"{folder}/state/*"]).item() == 2


def test_status_and_sql_commands_keep_the_state_folders_a_glob_matches(tmp_path):
    """``runs/*`` beside the OUTPUT files of ``batchata-df run`` (the sql epilog's example).

    It matched ``run0.parquet`` and ``state`` too, and exit 2 refused the whole command;
    as ``batchata_df.sql`` does, the glob keeps the state folders it matches.
    """
    results_dir(tmp_path / "results")
    q = "SELECT count(*) AS n, count(DISTINCT run) AS runs FROM jobs"
    r = cli("sql", q, "results/*", "--csv", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "n,runs\n2,1\n", "")
    r = cli("sql", q, "results/*", "results/state/*", "--csv", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "n,runs\n4,2\n")
    r = cli("status", "results/*", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "assigned" in r.stdout
    line = one_line_error(cli("status", "results/*.json", cwd=tmp_path))
    assert ("'results/*.json' matches no batchata-df state folder (it matches "
            "'results/job-000000.json')") in line


def test_cancel_of_a_glob_matching_several_state_folders_exits_2_naming_them(tmp_path):
    results_dir(tmp_path / "results", n_runs=2)
    before = tree(tmp_path / "results")
    line = one_line_error(cli("cancel", "results/run*", cwd=tmp_path))
    assert ("'results/run*' matches 2 state folders ('results/run0.parquet.state' and "
            "'results/run1.parquet.state'); cancel takes one") in line
    assert tree(tmp_path / "results") == before


def test_library_sql_on_an_output_file_names_its_state_folder(tmp_path):
    """The OUTPUT of a run (or its name, before the run wrote it) given for its ``.state``."""
    from batchata_df import StateError

    state_folder(tmp_path / "out.parquet.state")
    with pytest.raises(StateError) as info:
        sql("SELECT count(*) FROM jobs", tmp_path / "out.parquet")  # not written yet
    assert f"did you mean the state folder {str(tmp_path / 'out.parquet.state')!r}?" in str(
        info.value)
    (tmp_path / "out.parquet").write_bytes(b"PAR1")
    with pytest.raises(StateError) as info:
        sql("SELECT count(*) FROM jobs", tmp_path / "out.parquet")
    assert str(info.value) == (
        f"{str(tmp_path / 'out.parquet')!r} is not a folder; did you mean the state folder "
        f"{str(tmp_path / 'out.parquet.state')!r}?"
    )


def test_a_glob_reads_only_the_state_folders_it_matches_as_runs(tmp_path):
    """``results/*`` matches ``results/state`` too: not a run of the ``runs`` view."""
    folder = results_dir(tmp_path / "results")
    runs = sql("SELECT run FROM runs ORDER BY run", f"{folder}/*")["run"].to_list()
    assert runs == [str(folder / "run0.parquet.state")]


@pytest.mark.parametrize("marker", ["manifest.json", "jobs", "batches"])
def test_each_marker_alone_makes_a_state_folder(tmp_path, marker):
    """A folder that kept one of the three (a copy that dropped empty folders, a lost
    manifest) is checked by doctor, read by sql, and not listed as a folder to descend."""
    from batchata_df import doctor
    from batchata_df.state import is_state_folder, state_folders_below

    full = state_folder(tmp_path / "full")
    folder = tmp_path / "results" / "kept"
    folder.mkdir(parents=True)
    if marker == "manifest.json":
        (folder / marker).write_bytes((full / marker).read_bytes())
    else:
        (full / marker).rename(folder / marker)
    assert is_state_folder(folder)
    assert state_folders_below(tmp_path / "results") == [folder]
    assert doctor(folder).state == folder  # checked, not refused
    n = 2 if marker == "jobs" else 0
    assert sql("SELECT count(*) FROM jobs", folder).item() == n


def test_a_folder_holding_only_a_writer_lock_is_refused_saying_nothing_was_sent(tmp_path):
    """A call killed between taking the folder's lock and creating its parts left it."""
    from batchata_df import StateError, doctor
    from batchata_df.state import WriterLock

    lock = WriterLock(tmp_path / "s")
    lock.acquire()
    lock.release()
    assert os.listdir(tmp_path / "s") == ["writer.lock"]
    for call in (doctor, lambda f: sql("SELECT 1", f)):
        with pytest.raises(StateError) as info:
            call(tmp_path / "s")
        assert ("(it holds no manifest.json, jobs/ or batches/); it holds only the "
                "writer.lock of a call that wrote nothing to it yet (nothing was sent from "
                "it: there is nothing to read or repair); pass the state folder of a run") \
            in str(info.value)


@pytest.mark.parametrize(
    ("imports", "expected"),
    [
        ("polars.nonexistent27", "'mymodels27' imports 'polars.nonexistent27', which the "
         "installed 'polars' does not have; fix that import in 'mymodels27', or install a "
         "version of 'polars' that has it"),
        ("json\nfrom pydantic import Nonexistent27", "'mymodels27' imports a name "
         "'pydantic' does not have (cannot import name 'Nonexistent27' from 'pydantic'"),
    ],
)
def test_load_schema_of_a_module_importing_what_an_installed_package_lacks(
    tmp_path, monkeypatch, imports, expected
):
    """Not "not installed" (it is), nor "run from the folder that holds it" (it was found)."""
    from batchata_df.cli import UsageProblem, load_schema

    monkeypatch.syspath_prepend(str(schema_module(tmp_path, imports)))
    monkeypatch.delitem(sys.modules, "mymodels27", raising=False)
    with pytest.raises(UsageProblem) as info:
        load_schema("mymodels27:Ticket")
    assert str(info.value).startswith(f"--schema 'mymodels27:Ticket': {expected}")
    assert "pip install" not in str(info.value)
    assert "run from the folder" not in str(info.value)
