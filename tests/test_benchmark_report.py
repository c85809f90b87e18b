"""The README's overhead table is the one generated from the committed benchmark JSON.

``benchmarks/report_overhead.py`` renders ``benchmarks/results/overhead.json``; this test
fails when someone edits the numbers by hand or commits new results without the table.
No test measures time: the numbers themselves come from ``benchmarks/bench_overhead.py``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from scripts import load_script


def _report():  # type: ignore[no-untyped-def]
    return load_script("benchmarks/report_overhead.py", "report_overhead")


def test_readme_table_is_generated_from_the_json() -> None:
    report = _report()
    result = json.loads(report.RESULTS.read_text())
    text = report.README.read_text()
    assert report.readme_with(text, report.table(result)) == text
    assert "benchmarks/results/overhead.png" in text


def test_results_hold_three_runs_and_same_run_ratios() -> None:
    report = _report()
    result = json.loads(report.RESULTS.read_text())
    seed = result["seed_library"]
    assert seed["package"] == "batchata" and seed["install"] and seed["models"]
    for point in result["points"]:
        assert len(point["runs"]) == point["n_runs"] >= 1
        for run in point["runs"]:
            for who in ("floor", "ours"):
                assert set(run[who]) >= {"wall_s", "cpu_s", "peak_rss_mb", "emulator_cpu_s"}
        ratios = [r["ours"]["cpu_s"] / r["floor"]["cpu_s"] for r in point["runs"]]
        assert point["ratio"]["cpu_s"] == round(statistics.median(ratios), 3)
        cpu = [r["ours"]["cpu_s"] for r in point["runs"]]
        assert point["ours"]["cpu_s"] == round(statistics.median(cpu), 3)


def test_table_rows_follow_the_json() -> None:
    report = _report()
    result = {
        "runs_per_point": 1,
        "started_utc": "s",
        "finished_utc": "f",
        "machine": {"cpus": 2},
        "points": [
            {
                "provider": "openai",
                "rows": 1000,
                "n_runs": 1,
                "loadavg_before": [1.0, 1.0, 1.0],
                "floor": {"cpu_s": 1.0, "peak_rss_mb": 100.0, "wall_s": 2.0,
                          "emulator_cpu_s": 0.5},
                "ours": {"cpu_s": 1.25, "peak_rss_mb": 150.0, "wall_s": 2.5,
                         "emulator_cpu_s": 0.6},
                "ratio": {"cpu_s": 1.25, "peak_rss_mb": 1.5, "wall_s": 1.25},
            }
        ],
    }
    row = report.table(result).splitlines()[2]
    assert row == (
        "| openai | 1,000 | 1 | 1.00 | 1.25 | 1.25x | 1250 | 100 | 150 | 1.50x | 2.0 / 2.5 "
        "| 0.5 / 0.6 | ? | 1.0 / ? |"
    )


def test_seed_results_hold_same_run_ratios() -> None:
    # The seed library (batchata) beside batch_llm: medians and same-run ratios as stated.
    report = _report()
    seed = json.loads(report.SEED_RESULTS.read_text())
    assert seed["seed_library"]["version"]
    assert seed["points"]
    for point in seed["points"]:
        assert len(point["runs"]) == point["n_runs"] >= 1
        ratios = [r["seed"]["cpu_s"] / r["ours"]["cpu_s"] for r in point["runs"]]
        assert point["ratio_seed_to_ours"]["cpu_s"] == round(statistics.median(ratios), 3)
        assert point["seed"]["cpu_s"] == round(
            statistics.median(r["seed"]["cpu_s"] for r in point["runs"]), 3
        )


def _bench():  # type: ignore[no-untyped-def]
    return load_script("benchmarks/bench_overhead.py", "bench_overhead")


def test_a_point_measured_in_two_sittings_is_pooled_with_each_runs_load(tmp_path: Path) -> None:
    # A third run added later (``--merge --pool``): one point, its medians and same-run
    # ratios over all three runs, each run keeping the load and code of its sitting.
    bench = _bench()

    def run(floor: float, ours: float) -> dict[str, dict[str, float]]:
        base = {"wall_s": 1.0, "peak_rss_mb": 100.0, "emulator_cpu_s": 0.1}
        return {"floor": {**base, "cpu_s": floor}, "ours": {**base, "cpu_s": ours,
                                                             "state_mb": 1.0}}

    def doc(runs: list[dict[str, dict[str, float]]], load: float, code: str) -> dict[str, object]:
        point = {"provider": "anthropic", "model": "m", "rows": 10, "n_runs": len(runs),
                 "runs": runs, **bench.summarise(runs), "loadavg_before": [load, 0, 0],
                 "loadavg_after": [load + 1, 0, 0], "code": code}
        return {**bench._document("2026-01-01T00:00:00Z", 3, [point]),
                "finished_utc": "2026-01-01T01:00:00Z"}

    first = tmp_path / "a.json"
    first.write_text(json.dumps(doc([run(1.0, 2.0), run(1.0, 4.0)], 5.0, "aaa")))
    second = tmp_path / "b.json"
    second.write_text(json.dumps(doc([run(2.0, 3.0)], 1.0, "bbb")))
    out = tmp_path / "out.json"
    bench.merge([first, second], out, pool=True)
    (point,) = json.loads(out.read_text())["points"]
    assert point["n_runs"] == 3
    assert [r["loadavg_before"][0] for r in point["runs"]] == [5.0, 5.0, 1.0]
    assert [r["code"] for r in point["runs"]] == ["aaa", "aaa", "bbb"]
    assert point["ratio"]["cpu_s"] == 2.0  # median of 2.0, 4.0 and 1.5
    assert point["ours"]["cpu_s"] == 3.0 and point["floor"]["cpu_s"] == 1.0
    assert point["loadavg_before"][0] == 5.0 and point["code"] == "aaa+bbb"
    # Without --pool, overlapping points are refused.
    with pytest.raises(SystemExit, match="overlap"):
        bench.merge([first, second], out)



_SPY = r"""
import importlib._bootstrap_external as be, json
compiled = []
original = be.SourceLoader.source_to_code
def spy(self, data, path, *args, **kwargs):
    compiled.append(str(path))
    return original(self, data, path, *args, **kwargs)
be.SourceLoader.source_to_code = spy
import fresh
print(json.dumps(sorted(compiled)))
"""


def test_benchmark_clients_load_batchata_df_as_bytecode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SDKs the floor loads were byte-compiled by pip; batchata_df (installed editable)
    # must be too, or every batch_llm child pays for compiling it from source where
    # PYTHONDONTWRITEBYTECODE is set.
    import inspect
    import os
    import subprocess
    import sys

    import batchata_df

    bench = _bench()
    compiled: list[Path] = []
    monkeypatch.setattr(bench, "compile_bytecode", lambda: compiled.append(Path("default")))
    env = bench.child_env({"SOME_SDK_URL": "http://127.0.0.1:1"})
    assert compiled == [Path("default")]  # the clients' environment comes after compiling
    assert env["SOME_SDK_URL"] == "http://127.0.0.1:1" and env["PATH"] == os.environ["PATH"]
    monkeypatch.undo()
    default = inspect.signature(bench.compile_bytecode).parameters["package"].default
    assert default == Path(batchata_df.__file__).parent

    # What compiling does: a child that may not write bytecode compiles a fresh package
    # module by module from source, and nothing once it is compiled.
    package = tmp_path / "fresh"
    package.mkdir()
    (package / "__init__.py").write_text("from fresh import mod\n")
    (package / "mod.py").write_text("X = 1\n")
    child = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(tmp_path)}
    child.pop("PYTHONPYCACHEPREFIX", None)

    def from_source() -> list[str]:
        run = subprocess.run([sys.executable, "-c", _SPY], env=child, capture_output=True,
                             text=True, check=True, cwd=tmp_path)  # fmt: skip
        return list(json.loads(run.stdout))

    assert from_source() == [str(package / "__init__.py"), str(package / "mod.py")]
    assert from_source() == [str(package / "__init__.py"), str(package / "mod.py")]
    bench.compile_bytecode(package)
    assert from_source() == []


def test_new_points_replace_their_provider_and_size_and_the_old_ones_are_kept(
    tmp_path: Path,
) -> None:
    # ``--replace``: a re-measured point takes its provider and size's place; the point it
    # replaces moves to replaced_points and the note says what, when, on which code, at
    # which load and what it replaced.
    bench = _bench()
    base = {"wall_s": 1.0, "peak_rss_mb": 100.0, "emulator_cpu_s": 0.1}

    def point(provider: str, rows: int, ours: float, code: str, load: float) -> dict[str, object]:
        runs = [{"floor": {**base, "cpu_s": 1.0}, "ours": {**base, "cpu_s": ours,
                                                            "state_mb": 1.0}}]
        return {"provider": provider, "model": "m", "rows": rows, "n_runs": 1, "runs": runs,
                **bench.summarise(runs), "loadavg_before": [load, 0, 0],
                "loadavg_after": [load + 1, 0, 0], "code": code}

    def doc(points: list[dict[str, object]], start: str, end: str) -> dict[str, object]:
        return {**bench._document(start, 3, points), "finished_utc": end}

    out = tmp_path / "overhead.json"
    old = [point("openai", 10, 2.0, "aaa", 1.0), point("gemini", 10, 3.0, "aaa", 1.0),
           point("openai", 100, 4.0, "aaa", 1.0)]
    out.write_text(json.dumps({**doc(old, "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"),
                               "note": "Before.", "replaced_points": [{"older": True}]}))
    new = tmp_path / "new.json"
    new.write_text(json.dumps(doc([point("gemini", 10, 1.5, "bbb", 2.5)],
                                  "2026-01-02T00:00:00Z", "2026-01-02T00:05:00Z")))
    bench.replace([new], out, "Main after the pass.")
    result = json.loads(out.read_text())
    assert [(p["provider"], p["rows"], p["code"]) for p in result["points"]] == [
        ("openai", 10, "aaa"), ("gemini", 10, "bbb"), ("openai", 100, "aaa")]
    assert result["replaced_points"] == [{"older": True}, old[1]]
    assert result["note"].startswith("Before. Main after the pass. Gemini at 10: re-measured "
                                     "2026-01-02T00:00:00Z to 2026-01-02T00:05:00Z on bbb")
    assert "load 2.5 before, 3.5 after: 1.500x the floor's CPU (1.50x)" in result["note"]
    assert "the point it replaces, aaa: 3.000x" in result["note"]
    assert result["started_utc"] == "2026-01-01T00:00:00Z"
    assert result["finished_utc"] == "2026-01-02T00:05:00Z"


def test_flatness_is_the_spread_of_marginals_per_path_streamed_pairs_of_one_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 14 point 3's "per-row CPU flat ±20 %": the marginal CPU per extra row between
    # successive sizes, in memory from overhead.json's medians, streamed from runs of one
    # code only (a slope across two versions of the code is not taken); the spread is the
    # half-width of the narrowest band holding them.
    report = _report()
    assert report._band([16.0, 14.0]) == pytest.approx(2 / 30)
    assert report._band([12.0, 18.0]) == pytest.approx(0.2)  # 15 ± 20 %: met, just

    def pt(rows: int, ours: float, floor: float) -> dict[str, object]:
        return {"provider": "openai", "rows": rows, "code": "ccc",
                "loadavg_before": [1.0, 0, 0], "ours": {"cpu_s": ours},
                "floor": {"cpu_s": floor}}

    result = {"points": [pt(10_000, 1.0, 0.9), pt(100_000, 2.8, 1.8),
                         pt(1_000_000, 16.3, 8.1)]}

    def run(rows: int, cpu: float, code: str, when: str,
            floor: float | None = None) -> dict[str, object]:
        return {"rows": rows, "model": "gpt-4.1-mini", "code": code, "when": when,
                "loadavg_before_run": [2.0, 0, 0], "run": {"cpu_s": cpu},
                **({} if floor is None else {"floor": {"cpu_s": floor}})}

    stream = tmp_path / "bench_stream.json"
    stream.write_text(json.dumps([
        {**run(1_000_000, 22.0, "new", "2026-01-02"),
         "previous": {**run(1_000_000, 20.0, "old", "2026-01-01", floor=9.0),
                      "previous": run(1_000_000, 30.0, "older", "2025-12-01")}},
        {**run(10_000_000, 245.0, "old", "2026-01-01", floor=99.0),  # pairs with the old 1M
         "previous": run(10_000_000, 300.0, "older", "2025-12-01")},  # ... the older 1M
        {**run(10_000_000, 1.0, "capped", "2026-01-03"), "max_cost_usd": 1e9},
    ]))
    monkeypatch.setattr(report, "STREAM_RESULTS", stream)
    # batch_llm alone in one sitting (bench_flatness.py): medians per size, successive sizes

    def alone(rows: int, cpu: float, load: float = 1.0) -> dict[str, object]:
        return {"provider": "openai", "rows": rows, "cpu_s": cpu, "load_before": load,
                "at": f"2026-01-04T00:00:{rows % 60:02d}Z"}

    sitting = tmp_path / "flatness.json"
    sitting.write_text(json.dumps({"code": "one", "runs": [
        alone(10_000, 1.0), alone(10_000, 1.2), alone(10_000, 9.0),  # median 1.2
        alone(100_000, 2.1), alone(1_000_000, 11.1), alone(1_000_000, 11.3),  # median 11.2
        alone(10_000_000, 101.2),
    ]}))
    monkeypatch.setattr(report, "FLAT_RESULTS", sitting)
    # ... and streamed (bench_flatness.py --stream), its own file
    streamed = tmp_path / "flatness_stream.json"
    streamed.write_text(json.dumps({"code": "two", "runs": [
        alone(10_000, 2.0), alone(100_000, 3.8), alone(1_000_000, 18.2), alone(1_000_000, 18.0),
        alone(10_000_000, 172.1),
    ]}))
    monkeypatch.setattr(report, "FLAT_STREAM_RESULTS", streamed)
    slopes = report.marginals(result)
    assert [(m["path"], m["rows"], m["code"], round(m["ours"], 1)) for m in slopes] == [
        ("in memory", (10_000, 100_000), "ccc", 20.0),
        ("in memory", (100_000, 1_000_000), "ccc", 15.0),
        ("in memory, one sitting", (10_000, 100_000), "one", 10.0),
        ("in memory, one sitting", (100_000, 1_000_000), "one", 10.1),
        ("in memory, one sitting", (1_000_000, 10_000_000), "one", 10.0),
        ("streamed, one sitting", (10_000, 100_000), "two", 20.0),
        ("streamed, one sitting", (100_000, 1_000_000), "two", 15.9),
        ("streamed, one sitting", (1_000_000, 10_000_000), "two", 17.1),
        ("streamed", (1_000_000, 10_000_000), "old", 25.0),
        ("streamed", (1_000_000, 10_000_000), "older", 30.0),  # two levels down the chain
    ]
    assert slopes[2]["floor"] is None
    assert slopes[-2]["floor"] == pytest.approx(10.0)  # the streamed floor: (99 - 9) / 9M
    assert slopes[-1]["floor"] is None
    assert round(slopes[0]["floor"], 1) == 10.0
    text = "\n".join(report.flatness(result))
    assert "20.0 → 15.0 µs, ±14 %, met" in text
    assert "20.0 → 15.0 → 25.0 µs, ±25 %, **not met** (ccc, old)" in text
    assert "20.0 → 24.5 (+23 %, old)" in text
    assert "| openai | streamed | 1,000,000 → 10,000,000 | old | 2.0 / 2.0 | 25.0 | 10.0 |" in text
    assert "1,000,000 → 10,000,000 only: 25.0 µs, one span, no spread (old)" in text
    assert "10,000 → 10,000,000: 10.0 → 10.1 → 10.0 µs, ±1 %, met (one)" in text
    assert "| 10,000 → 10,000,000: 20.0 → 15.9 → 17.1 µs, ±11 %, met (two) |" in text
    # in memory to 1M, then streamed, from the two sittings: 10.0 → 10.1 → 17.1
    assert "| 10,000 → 10,000,000: 10.0 → 10.1 → 17.1 µs, ±26 %, **not met** (one, two) |" in text


def _stream_bench():  # type: ignore[no-untyped-def]
    return load_script("benchmarks/bench_stream.py", "bench_stream_report")


def test_the_commit_measured_is_dirty_only_when_the_library_or_the_clients_changed(
    tmp_path: Path,
) -> None:
    import subprocess

    bench = _bench()

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=tmp_path, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip

    for name in ("batchata_df/core.py", "benchmarks/bench_overhead.py",
                 "benchmarks/bench_stream.py", "benchmarks/other.py", "notes.md"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "--short", "HEAD")
    assert bench._code(tmp_path) == head
    for unrelated in ("benchmarks/other.py", "notes.md"):  # not what is measured
        (tmp_path / unrelated).write_text("x = 2\n")
    assert bench._code(tmp_path) == head
    for measured in ("batchata_df/core.py", "benchmarks/bench_overhead.py",
                     "benchmarks/bench_stream.py", "batchata_df/new.py"):
        git("stash", "-q", "--include-untracked")
        (tmp_path / measured).write_text("x = 3\n")
        assert bench._code(tmp_path) == f"{head}+dirty", measured


def test_a_re_measured_streamed_point_keeps_every_run_it_replaced() -> None:
    # bench_stream.json lost a run each time a point was measured again (the entry it
    # replaced was kept without that entry's own previous runs).
    bench = _stream_bench()
    first = {"rows": 10, "model": "m", "code": "a"}
    results = bench.replaced([], first, None)
    assert results == [first]
    second = {"rows": 10, "model": "m", "code": "b"}
    results = bench.replaced(results, second, results[0])
    third = {"rows": 10, "model": "m", "code": "c"}
    other = {"rows": 5, "model": "m", "code": "x"}
    capped = {"rows": 10, "model": "m", "code": "y", "max_cost_usd": 1.0}
    results = bench.replaced([*results, other, capped], third, results[0])
    assert [(r["rows"], r["code"], r.get("max_cost_usd")) for r in results] == [
        (5, "x", None), (10, "c", None), (10, "y", 1.0)]  # by size, then uncapped first
    chain, r = [], results[1]
    while r:
        chain.append(r["code"])
        r = r.get("previous")
    assert chain == ["c", "b", "a"]


def test_a_ratio_to_the_floor_is_taken_only_between_two_right_outputs() -> None:
    bench = _stream_bench()
    n = 4
    ok = {"rows": n, "in_order": True, "completed": n, "labelled": n}
    run = {"wall_s": 30.0, "cpu_s": 20.0, "vm_hwm_mb": 450.0}
    floor = {"wall_s": 20.0, "cpu_s": 10.0, "vm_hwm_mb": 300.0, "billed_requests": n,
             "output_check": {**ok, "completed": None}}
    point = {"run": run, "floor": floor, "output_check": ok, "billed_requests": n,
             "distinct_requests": n}
    assert bench.output_faults(point, n) == []
    assert bench.ratio_to_floor(point, n) == {"wall_s": 1.5, "cpu_s": 2.0, "vm_hwm_mb": 1.5}
    broken = {
        "run: 3 rows, not 4": {**point, "output_check": {**ok, "rows": 3}},
        "run: rows out of input order": {**point, "output_check": {**ok, "in_order": False}},
        "run: 3 of 4 rows completed": {**point, "output_check": {**ok, "completed": 3}},
        "run: 2 of 4 rows labelled": {**point, "output_check": {**ok, "labelled": 2}},
        "run: 5 requests billed, not 4": {**point, "billed_requests": 5},
        "run: 3 distinct requests, not 4": {**point, "distinct_requests": 3},
        "floor: 8 rows, not 4": {**point, "floor": {
            **floor, "output_check": {**floor["output_check"], "rows": 8}}},
        "floor: rows out of input order": {**point, "floor": {
            **floor, "output_check": {**floor["output_check"], "in_order": False}}},
        "floor: 0 of 4 rows labelled": {**point, "floor": {
            **floor, "output_check": {**floor["output_check"], "labelled": 0}}},
        "floor: 3 requests billed, not 4": {**point, "floor": {**floor, "billed_requests": 3}},
    }
    for fault, bad in broken.items():
        assert bench.output_faults(bad, n) == [fault]
        assert bench.ratio_to_floor(bad, n) is None, fault
    assert bench.ratio_to_floor({k: v for k, v in point.items() if k != "floor"}, n) is None
    # a run whose output was never read back (its check missing) gets no ratio either
    unchecked = {k: v for k, v in point.items() if k != "output_check"}
    assert bench.ratio_to_floor(unchecked, n) is None
    # the floor measured alone (no run phase) is checked on its own
    assert bench.output_faults({"floor": floor}, n) == []


def test_the_streamed_floor_table_is_generated_from_bench_stream_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = _report()
    text = report.README.read_text()
    stream = json.loads(report.STREAM_RESULTS.read_text())
    assert report.readme_with(text, report.stream_floor_table(stream), report.STREAM_START,
                              report.STREAM_END) == text  # fmt: skip

    def entry(model: str, rows: int, ratio: dict[str, float] | None) -> dict[str, object]:
        return {"model": model, "rows": rows, "code": "abc", "pinned": {"emulator": [1]},
                "loadavg_before_run": [1.04, 0, 0], "loadavg_before_floor": [1.26, 0, 0],
                "run": {"cpu_s": 19.5, "vm_hwm_mb": 457.1, "wall_s": 98.7},
                "floor": {"cpu_s": 10.9, "vm_hwm_mb": 440.1, "wall_s": 83.1,
                          "emulator_cpu_s": 81.3},
                "emulator_cpu_s": 91.9, "ratio_to_floor": ratio}

    ratio = {"wall_s": 1.188, "cpu_s": 1.784, "vm_hwm_mb": 1.039}
    lines = report.stream_floor_table([
        entry("gemini-2.5-flash", 1_000_000, ratio), entry("gpt-4.1-mini", 10_000_000, ratio),
        entry("gpt-4.1-mini", 1_000_000, ratio),
        entry("claude-haiku-4-5", 1_000_000, None),  # a wrong output: no ratio, no line
        {**entry("gpt-4.1-mini", 1_000_000, ratio), "max_cost_usd": 1e9},  # capped: left out
    ]).splitlines()
    assert [line.split(" | ")[0:2] for line in lines[2:]] == [
        ["| gpt-4.1-mini", "1,000,000"], ["| gemini-2.5-flash", "1,000,000"],
        ["| gpt-4.1-mini", "10,000,000"]]
    assert lines[2] == ("| gpt-4.1-mini | 1,000,000 | abc | yes | 1 | 1.0 / 1.3 | 10.90 | 19.50 "
                        "| **1.78x** | 440 | 457 | 1.04x | 83 / 99 | 81 / 92 |")


def test_streamed_slopes_pair_runs_of_one_code_and_pinning_newest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = _report()

    def run(rows: int, cpu: float, when: str, pinned: bool) -> dict[str, object]:
        return {"rows": rows, "model": "gpt-4.1-mini", "code": "same", "when": when,
                "loadavg_before_run": [1.0, 0, 0], "run": {"cpu_s": cpu},
                "pinned": {"emulator": [1]} if pinned else None}

    stream = tmp_path / "bench_stream.json"
    stream.write_text(json.dumps([
        # 1M, newest first: unpinned, pinned, unpinned, pinned; all of the same code
        {**run(1_000_000, 25.0, "2026-01-03", False),
         "previous": {**run(1_000_000, 20.0, "2026-01-02", True),
                      "previous": {**run(1_000_000, 99.0, "2026-01-01", False),
                                   "previous": run(1_000_000, 50.0, "2025-12-31", True)}}},
        # 10M: pinned only
        run(10_000_000, 200.0, "2026-01-04", True),
    ]))
    monkeypatch.setattr(report, "STREAM_RESULTS", stream)
    monkeypatch.setattr(report, "FLAT_RESULTS", tmp_path / "none.json")
    monkeypatch.setattr(report, "FLAT_STREAM_RESULTS", tmp_path / "none.json")
    slopes = [m for m in report.marginals({"points": []}) if m["path"] == "streamed"]
    # the newest pinned 1M with the pinned 10M only: (200 - 20) / 9M; not the newest 1M
    # (unpinned: 19.4), nor the older pinned one (16.7)
    assert [(m["rows"], round(m["ours"], 1)) for m in slopes] == [
        ((1_000_000, 10_000_000), 20.0)]


def test_a_sitting_of_runs_gives_the_medians_of_its_runs_only() -> None:
    # bench_stream.py --runs 3: three entries of one sitting, the newest on top, an older
    # sitting's run of the same point under them. The table gives the three runs' medians,
    # each run's CPU ratio in run order, and nothing of the older run.
    report = _report()

    def run(n: int, cpu: float, floor_cpu: float, rss: float, started: str,
            prev: dict[str, object] | None = None) -> dict[str, object]:
        entry: dict[str, object] = {
            "model": "gpt-4.1-mini", "rows": 1_000_000, "code": "abc",
            "pinned": {"emulator": [1]}, "sitting": {"started": started, "run": n, "of": 3},
            "loadavg_before_run": [1.0 + n / 10, 0, 0], "loadavg_before_floor": [1.2, 0, 0],
            "run": {"cpu_s": cpu, "vm_hwm_mb": rss, "wall_s": 50.0 + n},
            "floor": {"cpu_s": floor_cpu, "vm_hwm_mb": 400.0, "wall_s": 45.0,
                      "emulator_cpu_s": 44.0},
            "emulator_cpu_s": 46.0,
            "ratio_to_floor": {"wall_s": 1.1, "cpu_s": round(cpu / floor_cpu, 3),
                               "vm_hwm_mb": round(rss / 400.0, 3)},
        }  # fmt: skip
        return {**entry, "previous": prev} if prev else entry

    older = run(1, 99.0, 10.0, 900.0, "2026-01-01T00:00:00")
    first = run(1, 12.0, 6.0, 440.0, "2026-02-01T00:00:00", older)
    second = run(2, 11.0, 5.0, 460.0, "2026-02-01T00:00:00", first)
    third = run(3, 13.0, 5.5, 450.0, "2026-02-01T00:00:00", second)
    assert [r["sitting"]["run"] for r in report.sitting_runs(third)] == [3, 2, 1]
    (line,) = report.stream_floor_table([third]).splitlines()[2:]
    # CPU: median 12.0 and 5.5; ratios 2.0 / 2.2 / 2.364, median 2.2; RSS 450 / 400
    assert line == ("| gpt-4.1-mini | 1,000,000 | abc | yes | 3 | 1.2 / 1.2 | 5.50 | 12.00 "
                    "| **2.20x** (2.00 / 2.20 / 2.36) | 400 | 450 | 1.12x | 45 / 52 | 44 / 46 |")
    # a run of the sitting with a wrong output (no ratio) is left out of the medians
    bad = {**second, "ratio_to_floor": None}
    (line,) = report.stream_floor_table([{**third, "previous": bad}]).splitlines()[2:]
    assert "| 2 |" in line and "**2.18x** (2.00 / 2.36)" in line


def test_streamed_slopes_take_the_median_of_a_sittings_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = _report()

    def run(rows: int, cpu: float, n: int, prev: dict[str, object] | None = None
            ) -> dict[str, object]:
        entry = {"rows": rows, "model": "gpt-4.1-mini", "code": "same",
                 "when": f"2026-02-01T0{n}:{rows // 1_000_000:02d}",
                 "loadavg_before_run": [1.0, 0, 0], "run": {"cpu_s": cpu},
                 "floor": {"cpu_s": cpu / 2}, "pinned": {"emulator": [1]},
                 "sitting": {"started": "2026-02-01T00:00:00", "run": n, "of": 3}}
        return {**entry, "previous": prev} if prev else entry

    stream = tmp_path / "bench_stream.json"
    stream.write_text(json.dumps([
        run(1_000_000, 13.0, 3, run(1_000_000, 10.0, 2, run(1_000_000, 12.0, 1))),
        run(10_000_000, 110.0, 3, run(10_000_000, 120.0, 2, run(10_000_000, 100.0, 1))),
    ]))
    monkeypatch.setattr(report, "STREAM_RESULTS", stream)
    monkeypatch.setattr(report, "FLAT_RESULTS", tmp_path / "none.json")
    monkeypatch.setattr(report, "FLAT_STREAM_RESULTS", tmp_path / "none.json")
    (slope,) = [m for m in report.marginals({"points": []}) if m["path"] == "streamed"]
    # medians 12 and 110 (not the newest runs' 13 and 110): (110 - 12) / 9M
    assert round(slope["ours"], 2) == round(98 / 9, 2)
    assert round(slope["floor"], 2) == round(49 / 9, 2)
    assert slope["per_row"] == (12.0, 11.0)
