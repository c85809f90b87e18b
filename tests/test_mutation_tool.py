"""tools/mutation.py's sampling: a kept draw order stays a fair draw as the code changes."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from scripts import load_script

mutation = load_script("tools/mutation.py", "mutation_tool")


def names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def test_the_first_draw_is_the_seeded_shuffle_of_every_mutant():
    everything = names("m", 50)
    expected = sorted(everything)
    random.Random(mutation.SAMPLE_SEED).shuffle(expected)
    assert mutation.extend_order([], reversed(everything)) == expected


def test_gone_mutants_drop_out_and_the_others_keep_their_order():
    first = mutation.extend_order([], names("m", 30))
    gone = set(first[::3])
    later = mutation.extend_order(first, [m for m in first if m not in gone])
    assert later == [m for m in first if m not in gone]
    # Unchanged code: the same order, whatever order the names come in.
    assert mutation.extend_order(first, sorted(first)) == first


def test_new_mutants_go_in_at_uniform_positions_and_reach_the_sample():
    old = mutation.extend_order([], names("old", 1000))
    new = names("new", 100)
    later = mutation.extend_order(old, old + new)
    assert [m for m in later if not m.startswith("new")] == old
    assert sorted(m for m in later if m.startswith("new")) == new
    # A sample of 150 of 1,100 should hold ~13.6 of the 100 new mutants (the old order
    # put them all after the others: none); deterministic, the positions are hashed.
    in_sample = sum(m.startswith("new") for m in later[:150])
    assert 6 <= in_sample <= 24
    # One new mutant into an order of 9 lands in each of the 10 places about equally.
    places = Counter(
        mutation.extend_order(old[:9], [*old[:9], name]).index(name)
        for name in names("x", 2000)
    )
    assert sorted(places) == list(range(10))
    assert all(140 <= count <= 260 for count in places.values()), places


@pytest.mark.parametrize(("detected", "checked", "low", "high"), [
    (289, 300, 0.936, 0.979),  # the providers' sample
    (0, 0, 0.0, 1.0),
    (10, 10, 0.722, 1.0),
])
def test_the_wilson_interval(detected, checked, low, high):
    got = mutation._wilson(detected, checked)
    assert got == pytest.approx((low, high), abs=0.0015)


def test_a_new_record_keeps_its_label_s_hand_written_remark(tmp_path, monkeypatch):
    monkeypatch.setattr(mutation, "RESULTS", tmp_path)
    monkeypatch.setattr(mutation, "MUTMUT_JSON", tmp_path / "mutation.json")
    monkeypatch.setattr(mutation, "MUTMUT_MD", tmp_path / "mutation.md")
    record = {"label": "x", "modules": ["m.py"], "tests": ["t.py"], "mutants": 2,
              "killed": 2, "timeout": 0, "type_check": 0, "survived": 0, "no_tests": 0,
              "not_checked": 0, "score": 1.0, "complete": True, "survivors": {},
              "tool": "mutmut", "date": "d"}
    mutation.write_mutmut({**record, "remark": "why this run is what it is"})
    mutation.write_mutmut({**record, "date": "later"})
    data = json.loads((tmp_path / "mutation.json").read_text(encoding="utf-8"))
    assert data["runs"]["x"]["date"] == "later"
    kept = "[Written for the run of d, before the run of later:] why this run is what it is"
    assert data["runs"]["x"]["remark"] == kept
    assert f"**x:** {kept}" in (tmp_path / "mutation.md").read_text()
    mutation.write_mutmut({**record, "date": "even later"})  # marked once, not again
    assert json.loads((tmp_path / "mutation.json").read_text())["runs"]["x"]["remark"] == kept
    mutation.write_mutmut({**record, "remark": "replaced"})
    assert json.loads((tmp_path / "mutation.json").read_text())["runs"]["x"]["remark"] == "replaced"


def test_the_summary_gives_the_tests_own_score_and_names_a_hold_out_sample():
    run = {"label": "x", "modules": ["m.py"], "tests": ["t.py"], "mutants": 20, "killed": 9,
           "timeout": 0, "type_check": 10, "survived": 1, "no_tests": 0, "not_checked": 0,
           "score": 0.95, "complete": True, "survivors": {}, "tool": "mutmut", "date": "d",
           "sample": {"drawn": 20, "of": 500, "seed": 1, "skipped": 300,
                      "interval_95": [0.76, 0.99]}}
    text = mutation.render_markdown({"runs": {"x": run}, "notes": {}})
    row = next(line for line in text.splitlines() if line.startswith("| x |"))
    assert row.endswith("| 95.0% (a hold-out sample (the 20 drawn after the first 300, which "
                        "tests were written against) of 20 of 500 mutants; all of them: 76.0% "
                        "to 99.0% with 95 % confidence) | 90.0% |")
    assert mutation.score_of_tests(run) == 0.9
