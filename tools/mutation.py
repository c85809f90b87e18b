r"""Mutation testing for batchata-df: does the suite notice when the code is wrong.

Two modes.

``mutmut``
    Runs `mutmut <https://github.com/boxed/mutmut>`_ (pinned in the ``mutation`` extra:
    ``pip install -e '.[mutation]' -c constraints.txt``) on one or more modules with a
    chosen, fast part of the suite, in a scratch copy of the repository (the work tree
    never gets a ``mutants/`` folder). The score and every surviving mutant (with its
    diff) are merged into ``benchmarks/results/mutation.json`` and rendered as
    ``benchmarks/results/mutation.md``. A survivor's explanation (why it is equivalent, or
    which test now kills it) is written by hand into the JSON's ``notes`` (keyed by mutant
    name, or a name prefix ending in ``*``) and kept by later runs.

``targeted``
    Applies each hand-written mutation of :data:`TARGETED` (the ones issue 10 found
    surviving the whole suite) to a scratch copy, runs the tests meant to kill it and
    checks that they fail. Results go to ``benchmarks/results/mutation_targeted.json``.

Examples
--------
One small module, its fast tests, one worker (CPU is shared), in sittings of 20 minutes
that resume where the last one stopped::

    python tools/mutation.py mutmut --module batchata_df/jobs.py \\
        --tests tests/test_properties_jobs.py tests/test_units.py --max-children 1 \\
        --workdir .mutation/jobs --time-budget 1200

The 14 targeted mutations (or one of them)::

    python tools/mutation.py targeted
    python tools/mutation.py targeted --only openai-drops-system
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fnmatch
import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MUTMUT_JSON = RESULTS / "mutation.json"
MUTMUT_MD = RESULTS / "mutation.md"
STALE_REMARK = "[Written for the run of"
"""How a kept remark starts until someone brings it up to date with the run it describes."""
TARGETED_JSON = RESULTS / "mutation_targeted.json"

#: How mutmut's worker exit codes read (mutmut.stats.status_by_exit_code, 3.8).
_KILLED = {1, 3}
_TYPE_CHECK = {37}
_SURVIVED = {0}
_TIMEOUT = {36, -24, 24, 152, 255}
_NO_TESTS = {5, 33}
#: Which mutants ``--sample`` draws (fixed, so that sittings and re-runs agree).
SAMPLE_SEED = 20261129


# --------------------------------------------------------------------------------------
# mutmut

#: Copied beside the package: tests that check the README's tables read them.
DOCS = ("README.md", "ARCHITECTURE.md")


def _scratch_copy(
    modules: list[str], tests: list[str], dest: Path, *, type_check: bool = True
) -> None:
    shutil.copytree(
        ROOT / "batchata_df", dest / "batchata_df", ignore=shutil.ignore_patterns("__pycache__")
    )
    (dest / "tests").mkdir()
    for helper in (ROOT / "tests").glob("*.py"):  # conftest.py, engine_fakes.py, ...
        if not helper.name.startswith("test_"):
            shutil.copy2(helper, dest / "tests" / helper.name)
    for doc in DOCS:
        shutil.copy2(ROOT / doc, dest / doc)
    for test in tests:
        path = test.split("::", 1)[0]  # a node id names its file first
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, target)
    _write_config(modules, tests, dest, type_check=type_check)


def _selection(dest: Path) -> list[str] | None:
    """The tests a kept scratch copy's mutmut config selects."""
    import tomllib

    config = tomllib.loads((dest / "pyproject.toml").read_text(encoding="utf-8"))
    selected: list[str] | None = config.get("tool", {}).get("mutmut", {}).get(
        "pytest_add_cli_args_test_selection"
    )
    return selected


def _write_config(
    modules: list[str], tests: list[str], dest: Path, *, type_check: bool = True
) -> None:
    """The work tree's pyproject.toml with mutmut's settings for this run, into ``dest``."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    config = {
        "source_paths": ["batchata_df"],
        "only_mutate": modules,
        "pytest_add_cli_args_test_selection": tests,
        # no doctest collection of the whole package, no cache files in the copy
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-o", "addopts=", "-q"],
        # Polars' thread pool does not survive a fork of a process that has used it (the
        # child deadlocks): fork each mutant from a server, never from mutmut itself.
        # The server collects the selected tests once before forking ("collect"): each
        # mutant then skips importing pytest, Polars and the tests, about 4x less time
        # per mutant (8 s -> 2 s at load 8-20 on the engine modules, same survivors when
        # checked by hand). "import" made every worker fail in mutmut 3.8.1 here; "none"
        # (each mutant imports everything itself) is the slow, safe fallback.
        "process_isolation": "forkserver",
        "forkserver_warmup": "collect",
        # mutmut's CPU limit (15x the test's own time + a constant) must leave room for a
        # loaded machine
        "timeout_constant": 30.0,
        "also_copy": list(DOCS),
        # The project's own type check (mypy strict, as CI runs it) first: a mutant it
        # rejects could never land, and needs no test run.
        "type_check_command": [
            sys.executable, "-m", "mypy", "--config-file", str(dest.resolve() / "pyproject.toml"),
            "--output", "json", "--no-warn-unused-ignores",  # mutmut's own ignores
            "batchata_df",
        ],
    }
    if not type_check:
        # mutmut 3.8.1 cannot map some mypy errors back to a mutant (an @overload whose
        # implementation is trampolined: "An overloaded function outside a stub file must
        # have an implementation"; state.py had one, now a constrained TypeVar) and then
        # stops; such modules run every mutant.
        del config["type_check_command"]
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in config.items()]
    (dest / "pyproject.toml").write_text(pyproject + "\n".join(lines) + "\n", encoding="utf-8")


def _refresh(tests: list[str], dest: Path) -> list[str]:
    """Bring ``dest`` (a kept scratch copy) up to date with the work tree; return what changed.

    The package, the test helpers, the docs and the selected test files, each only when its
    content differs. mutmut then regenerates the mutants of a changed module (resetting the
    results of the functions whose code changed) and collects stats for tests it has not
    seen, so that re-run mutants are checked against today's code with today's tests.
    """
    pairs = [(p, dest / p.relative_to(ROOT)) for p in (ROOT / "batchata_df").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    pairs += [(h, dest / "tests" / h.name) for h in (ROOT / "tests").glob("*.py")
              if not h.name.startswith("test_")]
    pairs += [(ROOT / p, dest / p) for p in (*DOCS, *(t.split("::", 1)[0] for t in tests))]
    changed = []
    for src, dst in pairs:
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            changed.append(str(dst.relative_to(dest)))
    return changed


def _mutant_results(scratch: Path) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for meta in (scratch / "mutants").rglob("*.meta"):
        data = json.loads(meta.read_text(encoding="utf-8"))
        out.update(data.get("exit_code_by_key", {}))
    return out


def _show(scratch: Path, name: str) -> str:
    shown = subprocess.run(
        [sys.executable, "-m", "mutmut", "show", name],
        cwd=scratch, capture_output=True, text=True, timeout=120, check=False,
    )
    return shown.stdout.strip()


def _pending(scratch: Path, patterns: list[str]) -> list[str]:
    """Mutants matching ``patterns`` (fnmatch) without a verdict that tests decided.

    That is: not yet checked, survived, or reached by no test (after tests were added, a
    mutant is checked again by naming it); killed, timed out and mypy-rejected ones stay.
    """
    decided = _KILLED | _TIMEOUT | _TYPE_CHECK
    return sorted(
        name for name, code in _mutant_results(scratch).items()
        if code not in decided and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    )


def _mutmut_run(
    scratch: Path,
    max_children: int,
    budget: float | None,
    names: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
) -> bool:
    """Run (or resume) mutmut in ``scratch``; False when the time budget stopped it.

    With ``names``, only those mutants are run (again).
    """
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(extra_env or {})}
    with (scratch / "mutmut.log").open("ab") as log, subprocess.Popen(
        [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children),
         *(names or [])],
        cwd=scratch, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    ) as proc:
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            return False
        except BaseException:  # Ctrl-C or SIGTERM (see main): mutmut's workers go too
            _stop_group(proc)
            raise
    return True


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)  # mutmut and its workers, nothing else
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def _running_emulators(count: int) -> Iterator[dict[str, str]]:
    """Start ``count`` emulators; yield the environment that lets test sessions attach."""
    sys.path.insert(0, str(ROOT))
    from batchata_df.emulator import Emulator

    with contextlib.ExitStack() as stack:
        emus = [
            stack.enter_context(Emulator(latency=0.0, startup_timeout=120.0))
            for _ in range(count)
        ]
        yield {
            "BATCHATA_DF_TEST_EMULATORS": ",".join(e.url for e in emus),
            "BATCHATA_DF_TEST_EMULATOR_SETTINGS": json.dumps(emus[0].settings()),
        }


def run_mutmut(
    modules: list[str],
    tests: list[str],
    max_children: int,
    label: str,
    *,
    workdir: Path | None = None,
    budget: float | None = None,
    rerun: list[str] | None = None,
    record_only: bool = False,
    emulators: int = 0,
    sample: int | None = None,
    skip: int = 0,
    only: list[str] | None = None,
    type_check: bool = True,
) -> dict[str, Any]:
    """Run mutmut on ``modules`` with ``tests``; return this run's record.

    With ``workdir`` the scratch copy is kept there, and a later call with the same
    ``workdir`` resumes (mutmut skips mutants it has results for): on a shared two-core
    machine a module can be tested in several sittings of ``budget`` seconds each. A run
    stopped by its budget is recorded with ``complete: false`` and its unchecked mutants.
    ``rerun`` (mutant name patterns, with ``workdir``) checks the matching mutants that no
    test killed yet again, e.g. after tests were added for them; the kept copy's package and
    tests are refreshed from the work tree first (:func:`_refresh`).
    With ``record_only`` nothing is run: the results already in ``workdir`` are recorded
    (a sitting stopped from outside, or mutants re-run by hand with ``mutmut run <names>``).
    With ``emulators`` (one per worker), that many emulators are started once and every
    test session attaches to one of them (``tests/conftest.py``) instead of starting its
    own: then tests that drive the emulator through the SDKs cost only their requests per
    mutant, and the providers' client code can be mutation-tested.
    With ``sample``, only that many mutants, drawn at random with a fixed seed (the same
    ones in every sitting), are checked and scored, with a 95 % interval for the score of
    all of them: for modules whose tests are too slow to run every mutant in one session.
    With ``only`` (fnmatch patterns), only the (drawn) mutants matching them are run and
    scored: e.g. the functions another run's tests never reach, with the tests that do.
    """
    version = subprocess.run(
        [sys.executable, "-c", "import importlib.metadata as m; print(m.version('mutmut'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mutation-")))
        else:
            scratch = workdir
            scratch.mkdir(parents=True, exist_ok=True)
        if not (scratch / "pyproject.toml").exists():
            _scratch_copy(modules, tests, scratch, type_check=type_check)
        elif rerun and not record_only:
            for path in _refresh(tests, scratch):
                print(f"refreshed {path}")
            if _selection(scratch) != tests:
                # mutmut then resets every result (a changed selection can change any
                # verdict) and this sitting checks the whole sample (or module) again.
                _write_config(modules, tests, scratch, type_check=type_check)
                print("test selection changed: every mutant is checked again")
        started = dt.datetime.now(dt.UTC)
        extra_env = (
            stack.enter_context(_running_emulators(emulators))
            if emulators and not record_only else None
        )
        if (sample is not None or only) and not _mutant_results(scratch):
            # mutmut creates the mutants (and runs none), so that they can be drawn from
            _mutmut_run(scratch, max_children, None, ["__no_such_mutant__"], extra_env)
        drawn: set[str] | None = None
        if sample is not None:
            drawn = set(_sample_order(scratch)[skip : skip + sample])
        if only:
            pool = set(_mutant_results(scratch)) if drawn is None else drawn
            drawn = {n for n in pool if any(fnmatch.fnmatchcase(n, p) for p in only)}
        names = _pending(scratch, rerun) if rerun else None
        if drawn is not None:
            decided = _KILLED | _TIMEOUT | _TYPE_CHECK | _SURVIVED | _NO_TESTS
            todo = {k for k, c in _mutant_results(scratch).items()
                    if k in drawn and c not in decided}
            names = sorted(todo if names is None else todo | (set(names) & drawn))
        if record_only or names == []:
            complete = True
        else:
            complete = _mutmut_run(scratch, max_children, budget, names, extra_env)
        seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
        codes = _mutant_results(scratch)
        population = len(codes)
        if drawn is not None:
            codes = {k: c for k, c in codes.items() if k in drawn}
        if not codes:
            msg = f"mutmut produced no results (run `python -m mutmut run` in {scratch})"
            raise SystemExit(msg)
        killed = sorted(k for k, c in codes.items() if c in _KILLED)
        survived = sorted(k for k, c in codes.items() if c in _SURVIVED)
        timeout = sorted(k for k, c in codes.items() if c in _TIMEOUT)
        typed = sorted(k for k, c in codes.items() if c in _TYPE_CHECK)
        no_tests = sorted(k for k, c in codes.items() if c in _NO_TESTS)
        other = sorted(
            k for k in codes if k not in {*killed, *survived, *timeout, *typed, *no_tests}
        )
        # Timeouts count as detected (the mutant made the tests hang), as mutmut counts
        # them, and so do mutants mypy --strict rejects (CI would); mutants that no
        # selected test reaches count as survivors.
        detected = len(killed) + len(timeout) + len(typed)
        checked = detected + len(survived) + len(no_tests)
        score = detected / checked if checked else 0.0
        return {
            "label": label,
            "per_module": _per_module(codes) if len(modules) > 1 else None,
            "tool": f"mutmut {version}",
            "modules": modules,
            "tests": tests,
            "date": started.isoformat(timespec="seconds"),
            "seconds": round(seconds, 1),
            "max_children": max_children,
            "complete": complete and not other,
            "mutants": len(codes),
            "killed": len(killed),
            "timeout": len(timeout),
            "type_check": len(typed),
            "survived": len(survived),
            "no_tests": len(no_tests),
            "not_checked": len(other),
            "score": round(score, 4),
            "only": only,
            "sample": None if drawn is None or sample is None else {
                "drawn": len(drawn), "of": population, "seed": SAMPLE_SEED,
                **({"skipped": skip} if skip else {}),
                "interval_95": [round(x, 4) for x in _wilson(detected, checked)],
            },
            # A diff per survivor (one `mutmut show` each); mutants no selected test reaches
            # by name only (a run on a module with I/O code can have a thousand of them).
            "survivors": {name: _show(scratch, name) for name in survived},
            "no_tests_mutants": no_tests,
        }


def _sample_order(scratch: Path) -> list[str]:
    """Every mutant in the order ``--sample`` draws them: its first N are the sample.

    One fixed shuffle (:data:`SAMPLE_SEED`) of the mutants as first seen, kept in the
    scratch copy (``sample-order.json``), so that a smaller sample is a prefix of a larger
    one and the sample stays the same when the code changes: see :func:`extend_order`.
    """
    kept = scratch / "sample-order.json"
    order: list[str] = json.loads(kept.read_text(encoding="utf-8")) if kept.exists() else []
    order = extend_order(order, _mutant_results(scratch))
    kept.write_text(json.dumps(order, ensure_ascii=False) + "\n", encoding="utf-8")
    return order


def extend_order(order: list[str], everything: Iterable[str]) -> list[str]:
    """A kept draw order brought up to today's mutants, still a uniform random order.

    Mutants that no longer exist drop out (the next ones take their places). The first
    draw is one shuffle of all of them (:data:`SAMPLE_SEED`); after that, each new mutant
    (say, of code added since) goes in at a position drawn uniformly among the ones the
    order then has, from a keyed hash of its name, one after the other. Inserting at
    uniform positions keeps a uniform random order uniform, so a sample (a prefix) stays
    a fair draw of today's mutants: new code is as likely to be in it as old code, and
    the old mutants it pushes past the end leave the sample. mutmut names a function's
    mutants by number, so those of a changed function are redrawn too; their results
    were reset anyway.

    Examples
    --------
    >>> first = extend_order([], [f"m{i}" for i in range(5)])
    >>> sorted(first) == [f"m{i}" for i in range(5)]
    True
    >>> later = extend_order(first, [f"m{i}" for i in range(1, 7)])  # m0 gone, m5, m6 new
    >>> [m for m in later if m not in ("m5", "m6")] == [m for m in first if m != "m0"]
    True
    >>> len(later)
    6
    """
    present = set(everything)
    if not order:
        fresh = sorted(present)
        random.Random(SAMPLE_SEED).shuffle(fresh)
        return fresh
    known = set(order)
    kept = [name for name in order if name in present]
    for name in sorted(present - known):
        digest = hashlib.blake2b(name.encode(), key=str(SAMPLE_SEED).encode(), digest_size=8)
        kept.insert(int.from_bytes(digest.digest(), "big") % (len(kept) + 1), name)
    return kept


def _wilson(detected: int, checked: int) -> tuple[float, float]:
    """95 % Wilson interval of a proportion (the score of all mutants, from a sample)."""
    if not checked:
        return (0.0, 1.0)
    z = 1.959963984540054
    p = detected / checked
    centre = (p + z * z / (2 * checked)) / (1 + z * z / checked)
    half = z / (1 + z * z / checked) * math.sqrt(
        p * (1 - p) / checked + z * z / (4 * checked * checked))
    return (max(0.0, centre - half), min(1.0, centre + half))


def _per_module(codes: dict[str, int | None]) -> dict[str, dict[str, Any]]:
    """The same counts and score for each module of a run on several modules."""
    by_module: dict[str, dict[str, int | None]] = {}
    for name, code in codes.items():  # batchata_df.engine.ledger.xǁLedgerǁadd__mutmut_3
        by_module.setdefault(name.rsplit(".", 1)[0], {})[name] = code
    out: dict[str, dict[str, Any]] = {}
    for module, mine in sorted(by_module.items()):
        counts = {
            what: sum(1 for c in mine.values() if c in codes_)
            for what, codes_ in (("killed", _KILLED), ("timeout", _TIMEOUT),
                                 ("type_check", _TYPE_CHECK), ("survived", _SURVIVED),
                                 ("no_tests", _NO_TESTS))
        }
        detected = counts["killed"] + counts["timeout"] + counts["type_check"]
        checked = detected + counts["survived"] + counts["no_tests"]
        out[module] = {"mutants": len(mine), **counts,
                       "not_checked": len(mine) - checked,
                       "score": round(detected / checked, 4) if checked else 0.0}
    return out


def _load(path: Path) -> dict[str, Any]:
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data
    return {"runs": {}, "notes": {}}


def write_mutmut(record: dict[str, Any]) -> None:
    """Merge ``record`` into mutation.json (by label) and re-render mutation.md."""
    data = _load(MUTMUT_JSON)
    previous = data["runs"].get(record["label"], {})
    if "remark" in previous and "remark" not in record:
        # The remark is written by hand: the history of the label's runs, kept, and marked
        # as written before this run (whose counts it may not match) until it is updated.
        remark = str(previous["remark"])
        if not remark.startswith(STALE_REMARK):
            when = f"{previous.get('date')}, before the run of {record.get('date')}"
            remark = f"{STALE_REMARK} {when}:] {remark}"
        record = {**record, "remark": remark}
    data["runs"][record["label"]] = record
    RESULTS.mkdir(parents=True, exist_ok=True)
    MUTMUT_JSON.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", "utf-8")
    MUTMUT_MD.write_text(render_markdown(data), "utf-8")


def _sampled(run: dict[str, Any]) -> str:
    sample = run.get("sample")
    if not sample:
        return ""
    low, high = sample["interval_95"]
    which = "a random sample"
    if sample.get("skipped"):
        which = (f"a hold-out sample (the {sample['drawn']} drawn after the first "
                 f"{sample['skipped']}, which tests were written against)")
    return (f" ({which} of {sample['drawn']} of {sample['of']} mutants; all of them: "
            f"{low:.1%} to {high:.1%} with 95 % confidence)")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def score_of_tests(run: dict[str, Any]) -> float | None:
    """The score among mutants mypy accepts: what the tests alone detect.

    Examples
    --------
    >>> score_of_tests({"killed": 8, "timeout": 1, "survived": 1, "no_tests": 0})
    0.9
    >>> score_of_tests({"killed": 0, "timeout": 0, "survived": 0, "no_tests": 0}) is None
    True
    """
    detected = run["killed"] + run["timeout"]
    ran = detected + run["survived"] + run["no_tests"]
    return detected / ran if ran else None


def render_markdown(data: dict[str, Any]) -> str:
    """The human summary: score per run, then each survivor with its note."""
    notes: dict[str, str] = data.get("notes", {})
    out = [
        "# Mutation testing results",
        "",
        "Written by `tools/mutation.py mutmut` (do not edit by hand except the notes in",
        "`mutation.json`). Score = (killed + timeout + type check) / checked mutants;",
        "\"type check\" are mutants `mypy --strict` (run by CI) rejects before any test.",
        "The score of the tests alone leaves those out: (killed + timeout) / (killed +",
        "timeout + survived + no tests).",
        "",
        "| run | modules | tests | mutants | killed | timeout | type check | survived |"
        " no tests | not checked | score | score of the tests alone |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, run in sorted(data["runs"].items()):
        out.append(
            f"| {label} | {', '.join(run['modules'])} | {', '.join(run['tests'])} | "
            f"{run['mutants']} | {run['killed']} | {run['timeout']} | "
            f"{run.get('type_check', 0)} | {run['survived']} | "
            f"{run['no_tests']} | {run['not_checked']} | {run['score']:.1%}"
            f"{'' if run.get('complete') else ' (partial)'}{_sampled(run)} | "
            f"{_percent(score_of_tests(run))} |"
        )
    for label, run in sorted(data["runs"].items()):
        if not run.get("per_module"):
            continue
        out += ["", f"Per module, `{label}`:", "",
                "| module | mutants | killed | timeout | type check | survived | no tests |"
                " not checked | score |", "|---|---|---|---|---|---|---|---|---|"]
        for module, m in run["per_module"].items():
            out.append(
                f"| {module} | {m['mutants']} | {m['killed']} | {m['timeout']} | "
                f"{m['type_check']} | {m['survived']} | {m['no_tests']} | "
                f"{m['not_checked']} | {m['score']:.1%} |"
            )
    for label, run in sorted(data["runs"].items()):
        if run.get("remark"):
            out += ["", f"**{label}:** {run['remark']}"]
    for label, run in sorted(data["runs"].items()):
        unreached: dict[str, int] = {}
        for name in run.get("no_tests_mutants", []):
            function = name.rsplit("__mutmut_", 1)[0]
            unreached[function] = unreached.get(function, 0) + 1
        if unreached:
            out += ["", f"## Not reached by the tests of `{label}` (no tests), per function", "",
                    "| function | mutants |", "|---|---|"]
            out += [f"| `{f}` | {n} |" for f, n in sorted(unreached.items())]
            note = next((text for key, text in notes.items() if key == f"{label}:no_tests"), "")
            if note:
                out += ["", f"**Why:** {note}"]
    for label, run in sorted(data["runs"].items()):
        if not run["survivors"]:
            continue
        out += ["", f"## Survivors of `{label}` ({run['tool']}, {run['date']})", ""]
        for name, diff in run["survivors"].items():
            note = notes.get(name) or next(
                (text for key, text in notes.items()
                 if key.endswith("*") and name.startswith(key[:-1])),
                "not yet explained",
            )
            out += [f"### `{name}`", "", f"**Why:** {note}", "", "```diff", diff, "```", ""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------
# targeted mutations


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` by ``new`` in ``path``; ``tests`` must then fail."""

    name: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


_REALTIME_IS_BATCH = (
    "tests/test_realtime_bodies.py::test_the_realtime_body_is_the_batch_request_of_the_same_row"
)
_REALTIME_HISTORY = "tests/test_realtime_bodies.py::test_gemini_realtime_sends_the_earlier_turns_"
_LIMITS = "tests/test_batch_limits.py::"
_UNSHARED_MARK = (
    "tests/test_prompt_caching.py::"
    "test_anthropic_marks_no_system_prompt_or_file_that_only_one_row_sends"
)


TARGETED: tuple[Mutation, ...] = (
    Mutation(
        "template-drops-literal-text",
        "the prompt template loses its literal text",
        "batchata_df/jobs.py",
        "        if literal:\n            parts.append(pl.lit(literal))",
        "        pass",
        (
            "tests/test_properties_jobs.py::test_template_literal_text_and_escaped_braces_are_kept",
            "tests/test_requests_sent.py::test_openai_request_lines_are_exactly_the_documented_body",
        ),
    ),
    Mutation(
        "job-id-ignores-model",
        "the job id ignores the model",
        "batchata_df/jobs.py",
        '        pl.col("model").fill_null(""),\n',
        "",
        ("tests/test_properties_jobs.py::test_per_row_content_changes_only_that_rows_id",),
    ),
    Mutation(
        "job-id-ignores-system",
        "the job id ignores a per-row system prompt",
        "batchata_df/jobs.py",
        '        pl.col("system").fill_null("\\x01"),\n',
        "",
        (
            "tests/test_properties_jobs.py::test_per_row_content_changes_only_that_rows_id",
            "tests/test_requests_sent.py::test_per_row_system_and_model_are_sent_per_row",
        ),
    ),
    Mutation(
        "openai-drops-system",
        "the OpenAI request drops the system message",
        "batchata_df/providers/openai.py",
        '            pl.when(pl.col("system").is_not_null())',
        "            pl.when(pl.lit(value=False))",
        ("tests/test_requests_sent.py::test_openai_request_lines_are_exactly_the_documented_body",),
    ),
    Mutation(
        "openai-only-max-tokens",
        "the OpenAI request drops every parameter but max_tokens",
        "batchata_df/providers/openai.py",
        "        for ours, value in params.items():\n",
        '        for ours, value in params.items():\n            if ours != "max_tokens":\n'
        "                continue\n",
        ("tests/test_requests_sent.py::test_openai_request_lines_are_exactly_the_documented_body",),
    ),
    Mutation(
        "decimal-two-places",
        "Decimal values rounded to 2 places",
        "batchata_df/schema.py",
        "lambda e: e.str.to_decimal(scale=scale).cast(target)",
        "lambda e: e.str.to_decimal(scale=scale).round(2).cast(target)",
        ("tests/test_values_roundtrip.py::test_decoded_columns_equal_the_answered_values",),
    ),
    Mutation(
        "datetime-offset-ignored",
        "datetime offsets ignored",
        "batchata_df/schema.py",
        'aware = e.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", strict=False, time_zone="UTC")',
        'aware = e.str.slice(0, 19).str.to_datetime("%Y-%m-%dT%H:%M:%S", strict=False)'
        '.dt.replace_time_zone("UTC")',
        ("tests/test_values_roundtrip.py::test_decoded_columns_equal_the_answered_values",),
    ),
    Mutation(
        "fingerprint-ignores-system",
        "the fingerprint ignores the system prompt",
        "batchata_df/frame.py",
        '"system": _fingerprint_part(system),',
        '"system": _fingerprint_part(None),',
        ("tests/test_properties_jobs.py::test_every_run_setting_changes_fingerprint_and_job_ids",),
    ),
    Mutation(
        "fingerprint-ignores-citations",
        "the fingerprint ignores citations=True",
        "batchata_df/frame.py",
        '        fingerprint["citations"] = "on"',
        "        pass",
        ("tests/test_properties_jobs.py::test_every_run_setting_changes_fingerprint_and_job_ids",),
    ),
    Mutation(
        "openai-error-message-constant",
        "OpenAI error lines' messages replaced by a constant",
        "batchata_df/providers/openai.py",
        '                        body_err.struct.field("message"), pl.lit("request failed")',
        '                        pl.lit(None, dtype=pl.String), pl.lit("request failed")',
        ("tests/test_values_roundtrip.py::test_error_classes_and_provider_messages_are_exact",),
    ),
    Mutation(
        "openai-refusal-not-recognised",
        "OpenAI refusals not recognised",
        "batchata_df/providers/openai.py",
        '    ok = (status_code == 200) & refusal.is_null() & choice.is_not_null()',
        '    ok = (status_code == 200) & choice.is_not_null()',
        ("tests/test_values_roundtrip.py::test_error_classes_and_provider_messages_are_exact",),
    ),
    Mutation(
        "key-in-recovery-event",
        "the key leaks into a batch event on the crash-recovery path",
        "batchata_df/engine/recovery.py",
        '                detail="found at the provider after a crash",',
        '                detail="found at the provider after a crash by "'
        ' + str(getattr(provider, "_api_key", "")),',
        ("tests/test_requests_guarded.py::test_key_is_nowhere_after_crash_recovery",),
    ),
    Mutation(
        "in-flight-worst-case-ignored",
        "admission ignores the worst case of batches in flight",
        "batchata_df/engine/admission.py",
        "        room = self.cap - self.state.spent - self.state.reserved",
        "        room = self.cap - self.state.spent",
        ("tests/test_requests_guarded.py::test_batches_in_flight_hold_their_worst_case_under_the_cap",),
    ),
    Mutation(
        "failed-rows-resent",
        "failed rows are sent again without retry_failed",
        "batchata_df/engine/recovery.py",
        '    keep = ["completed"] if retry_failed else ["completed", "failed"]',
        '    keep = ["completed"]',
        ("tests/test_requests_guarded.py::test_failed_rows_are_sent_again_only_with_retry_failed",),
    ),
    Mutation(
        "zero-prompt-estimate",
        "the prompt-token estimate is zero",
        "batchata_df/tokens.py",
        "    total = estimate_tokens(prompt, name, model) + (",
        "    total = estimate_tokens(prompt, name, model) * 0 + (",
        (
            "tests/test_requests_guarded.py::"
            "test_openai_estimate_is_the_tokenizer_count_plus_framing_and_is_priced",
            "tests/test_requests_guarded.py::test_approximate_estimates_grow_with_the_prompt",
        ),
    ),
    # Survivors of the hand audit of request building and money (mutants21): each survived
    # the test files of what it changes, and the tests named kill it.
    Mutation(
        "realtime-gemini-drops-history",
        "Gemini realtime requests send the prompt without the earlier turns",
        "batchata_df/providers/gemini.py",
        '                        contents=inlined["contents"],\n',
        '                        contents=inlined["contents"][-1:],\n',
        (f"{_REALTIME_IS_BATCH}[gemini-2.5-flash]", f"{_REALTIME_HISTORY}in_contents"),
    ),
    Mutation(
        "realtime-gemini-drops-thinking",
        "Gemini realtime requests lose thinkingConfig",
        "batchata_df/providers/gemini.py",
        'config = types.GenerateContentConfig.model_validate(inlined["config"])',
        "config = types.GenerateContentConfig.model_validate("
        '{k: v for k, v in inlined["config"].items() if k != "thinkingConfig"})',
        (f"{_REALTIME_IS_BATCH}[gemini-2.5-flash]",),
    ),
    Mutation(
        "realtime-anthropic-drops-thinking",
        "Anthropic realtime requests lose thinking",
        "batchata_df/providers/anthropic.py",
        'required = {k: params.pop(k) for k in ("model", "max_tokens", "messages")}',
        'required = {k: params.pop(k) for k in ("model", "max_tokens", "messages")}\n'
        '        params.pop("thinking", None)',
        (f"{_REALTIME_IS_BATCH}[claude-haiku-4-5]",),
    ),
    Mutation(
        "realtime-openai-drops-reasoning-effort",
        "OpenAI realtime requests lose reasoning_effort",
        "batchata_df/providers/openai.py",
        "raw = client.chat.completions.with_raw_response.create(**body)",
        "raw = client.chat.completions.with_raw_response.create("
        '**{k: v for k, v in body.items() if k != "reasoning_effort"})',
        (f"{_REALTIME_IS_BATCH}[gpt-5.4-mini]",),
    ),
    Mutation(
        "openai-batch-of-50001",
        "OpenAI batches of 50,001 requests (OpenAI takes 50,000)",
        "batchata_df/providers/openai.py",
        "max_requests: ClassVar[int] = 50_000",
        "max_requests: ClassVar[int] = 50_001",
        (f"{_LIMITS}test_50001_openai_rows_go_in_two_batches_none_over_50000_requests",),
    ),
    Mutation(
        "anthropic-batch-over-256-mb",
        "Anthropic batches above 256 MB",
        "batchata_df/providers/anthropic.py",
        "max_bytes: ClassVar[int] = 256 * 1000 * 1000",
        "max_bytes: ClassVar[int] = 256 * 1024 * 1024 + 1",
        (f"{_LIMITS}test_the_client_limits_are_within_the_limits_the_emulator_enforces",),
    ),
    Mutation(
        "anthropic-marks-an-unshared-system-prompt",
        "a system prompt only one request sends is marked cache_control (a write for nothing)",
        "batchata_df/caching.py",
        "cache_system = (has_system & (head_size >= 2)",
        "cache_system = (has_system & (head_size >= 1)",
        (_UNSHARED_MARK,),
    ),
    Mutation(
        "anthropic-marks-an-unshared-file",
        "a file only one request sends is marked cache_control (a write for nothing)",
        "batchata_df/caching.py",
        "cache_files = (has_files & (head_size >= 2)",
        "cache_files = (has_files & (head_size >= 1)",
        (_UNSHARED_MARK,),
    ),
    Mutation(
        "default-max-tokens-over-the-ceiling",
        "the default max_tokens is not cut to the model's output ceiling",
        "batchata_df/models.py",
        "    return min(value, family.max_output_tokens)\n",
        "    return value\n",
        ("tests/test_models.py::test_default_max_tokens_never_exceeds_the_models_output_ceiling",),
    ),
    Mutation(
        "routed-rows-priced-on-the-collection-day",
        "rows a successor answered are priced at its price on the day they are collected",
        "batchata_df/engine/ledger.py",
        "found = self.ctx.prices.get(provider, str(name), day)",
        "found = self.ctx.prices.get(provider, str(name))",
        (
            "tests/test_price_change_in_flight.py::"
            "test_rows_a_successor_answered_are_priced_at_its_price_in_their_window",
        ),
    ),
)


def run_targeted(only: str | None) -> list[dict[str, Any]]:
    """Apply each mutation, run its tests (they must fail), restore; return the results.

    Everything happens in a scratch copy of the package and the tests, so the work tree is
    never modified (a test run in it meanwhile sees the real code).
    """
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="batchata-targeted-") as tmp:
        scratch = Path(tmp)
        shutil.copytree(ROOT / "batchata_df", scratch / "batchata_df",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "tests", scratch / "tests",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(ROOT / "pyproject.toml", scratch / "pyproject.toml")
        # The root conftest pins the suite's date (BATCHATA_DF_TODAY), which tests/conftest.py
        # reads at import: without it every test errors (exit 4), which read as "survived".
        shutil.copy2(ROOT / "conftest.py", scratch / "conftest.py")
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        for mutation in TARGETED:
            if only is not None and mutation.name != only:
                continue
            path = scratch / mutation.path
            original = path.read_text(encoding="utf-8")
            count = original.count(mutation.old)
            if count != 1:
                detail = f"the original text occurs {count} times in {mutation.path}"
                results.append({"name": mutation.name, "what": mutation.what,
                                "status": "stale", "detail": detail})
                print(f"stale    {mutation.name}: {detail}")
                continue
            killed_by: list[dict[str, Any]] = []
            try:
                path.write_text(original.replace(mutation.old, mutation.new), encoding="utf-8")
                for test in mutation.tests:
                    run = subprocess.run(
                        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                         "-o", "addopts=", test],
                        cwd=scratch, env=env, capture_output=True, text=True, check=False,
                    )
                    # exit code 1: tests ran and failed (a collection error would be 2)
                    killed_by.append({"test": test, "killed": run.returncode == 1})
            finally:
                path.write_text(original, encoding="utf-8")
            status = "killed" if all(k["killed"] for k in killed_by) else "survived"
            results.append({"name": mutation.name, "what": mutation.what,
                            "path": mutation.path, "status": status, "tests": killed_by})
            print(f"{status:8} {mutation.name}: {', '.join(t['test'] for t in killed_by)}")
    return results


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    mm = sub.add_parser("mutmut", help="run mutmut on modules with a fast test subset")
    mm.add_argument("--module", action="append", required=True, help="e.g. batchata_df/jobs.py")
    mm.add_argument("--tests", nargs="+", required=True, help="test files or node ids")
    mm.add_argument("--max-children", type=int, default=1, help="parallel workers (default 1)")
    mm.add_argument("--label", help="name of this run in mutation.json (default: the modules)")
    mm.add_argument("--workdir", type=Path,
                    help="keep the scratch copy here; a later run with it resumes")
    mm.add_argument("--time-budget", type=float,
                    help="stop after this many seconds and record a partial result")
    mm.add_argument("--rerun", nargs="+", metavar="PATTERN",
                    help="with --workdir: check the mutants matching these fnmatch patterns "
                    "that survived or had no tests again (after adding tests for them)")
    mm.add_argument("--emulators", type=int, default=0, metavar="N",
                    help="start N emulators (one per worker) that the tests attach to, "
                    "for tests that drive the emulator")
    mm.add_argument("--sample", type=int, metavar="N",
                    help="check and score only N mutants drawn at random (fixed seed), "
                    "with a 95 %% interval for the whole module's score")
    mm.add_argument("--skip", type=int, default=0, metavar="K",
                    help="with --sample: draw the N mutants after the first K of the kept "
                    "order, a hold-out sample no test was written against yet")
    mm.add_argument("--only", nargs="+", metavar="PATTERN",
                    help="run and score only the mutants matching these fnmatch patterns")
    mm.add_argument("--no-type-check", dest="type_check", action="store_false",
                    help="do not filter mutants with mypy first (for modules mutmut's "
                    "type-check step cannot handle)")
    mm.add_argument("--record-only", action="store_true",
                    help="run nothing: record the results already in --workdir")
    tg = sub.add_parser("targeted", help="the hand-written mutations of issue 10")
    tg.add_argument("--only", help="one mutation by name")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: mutmut's process group and the emulators are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.mode == "mutmut":
        label = args.label or "+".join(Path(m).stem for m in args.module)
        record = run_mutmut(args.module, args.tests, args.max_children, label,
                            workdir=args.workdir, budget=args.time_budget, rerun=args.rerun,
                            record_only=args.record_only, emulators=args.emulators,
                            sample=args.sample, skip=args.skip, only=args.only,
                            type_check=args.type_check)
        write_mutmut(record)
        print(
            f"{label}: {record['mutants']} mutants, {record['killed']} killed, "
            f"{record['timeout']} timeout, {record['type_check']} rejected by mypy, "
            f"{record['survived']} survived, "
            f"{record['no_tests']} without tests, {record['not_checked']} not checked yet: "
            f"score {record['score']:.1%}{'' if record['complete'] else ' (partial)'}"
        )
        return 0
    results = run_targeted(args.only)
    if args.only is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        TARGETED_JSON.write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    return 0 if all(r["status"] == "killed" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
