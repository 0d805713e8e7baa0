"""benchmarks/loop.py's audit bound: the random sample a remaining-objects count would need."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SPEC = importlib.util.spec_from_file_location("loop_bench", REPO / "benchmarks" / "loop.py")
loop = importlib.util.module_from_spec(SPEC)
sys.modules["loop_bench"] = loop      # its dataclasses look their module up
SPEC.loader.exec_module(loop)


def test_audit_of_one_band_is_the_textbook_sample_size():
    """100 pending objects, 10 missing, one band: S^2 = 0.1 * 0.9 * 100/99, V = 1.5^2,
    n0 = N^2 S^2 / V = 404.04, with the finite-population correction n0 / (1 + n0/N) = 80.2:
    81 decisions."""
    missing = np.zeros(100, bool)
    missing[::10] = True
    assert loop.audit_size(np.linspace(1, 0, 100), missing, bands=1) == 81


def test_audit_needs_nothing_where_the_bands_separate_missing_from_false():
    """The 10 missing objects score highest: with 10 bands each band is all or nothing,
    so a band's one look tells its count; one band mixes them and needs 81."""
    scores = np.linspace(1, 0, 100)
    missing = scores > scores[10]
    assert loop.audit_size(scores, missing, bands=10) == 0
    assert loop.audit_size(scores, missing, bands=1) == 81
    assert loop.audit_size(scores, np.zeros(100, bool)) is None      # nothing left to count


def saved_loop(loop_curve, finish_curve, shot_curve, budgets, n_erased=10, seed=3):
    rounds = [{"decisions_total": b, "val_ap": 0.1 * (k + 1)} for k, b in enumerate(budgets)]
    return {"meta": {"round0_seed": seed, "commit": "abc1234", "iters": 600},
            "loops": {"comining": {"rounds": rounds, "curve": loop_curve,
                                   "finish": {"curve": finish_curve}}},
            "one_shot": {"n_erased": n_erased, "curve": shot_curve}}


def test_seed_row_counts_decisions_to_nine_of_ten_by_hand():
    """10 erased: the goal is 9. The loop finds 1 per decision for 8 decisions, then its
    last queue's rest gives the 9th at decision 10 (8 + 2): 10 decisions, 1.11 per label.
    One-shot needs 20. At the round's budget (8) the loop has 8 and one-shot 2: ahead."""
    loop_curve = list(range(1, 9))
    shot_curve = [k // 3 for k in range(1, 19)] + [8, 9]
    row = loop.seed_row("r", saved_loop(loop_curve, [8, 9], shot_curve, [8]))
    assert (row["loop_decisions"], row["one_shot_decisions"]) == (10, 20)
    assert row["per_label"] == 10 / 9 and row["fewer"] == 0.5
    assert row["ahead_at_every_budget"] and row["targets_met"]
    # 9 labels take at least 9 decisions: against one-shot's 20, 11 could be saved at most
    assert row["most_saving"] == 11 / 20
    assert (row["seed"], row["start"], row["round0_ap"]) == (3, "seed 3", 0.1)


def test_seed_row_fails_the_targets_when_one_shot_is_ahead_at_a_budget_or_the_effort_is_high():
    # at the first round's budget (4) one-shot has 4 and the loop 2: not ahead
    behind = loop.seed_row("r", saved_loop([0, 1, 1, 2, 5, 6, 7, 8, 9], [], list(range(1, 10)) + [9] * 5,
                                           [4, 9]))
    assert not behind["ahead_at_every_budget"] and not behind["targets_met"]
    # 9 found only after 20 decisions: 2.2 per label, above 1.3, though one-shot never gets there
    slow = loop.seed_row("r", saved_loop([1] * 19 + [9], [], [1] * 30, [20]))
    assert slow["loop_decisions"] == 20 and slow["one_shot_decisions"] is None
    assert slow["fewer"] is None and not slow["targets_met"]
    report = loop.seeds_report([slow])
    assert report[6].startswith("| r | seed 3 | abc1234 | 600 | 0.100 | 0.100 | 20 | 2.22 | - | - | - | yes | no |")
    assert report[-2].startswith("Targets on decisions met from 0 of 1 round-0 models.")
    # one-shot reaching 9 of 10 in 11 decisions leaves at most 2 of 11 (18 %) to save:
    # below 25 %, and the report's rule says where that starts: 1.33 decisions per label
    quick = loop.seed_row("q", saved_loop(list(range(1, 10)), [], list(range(1, 9)) + [8, 8, 9], [9]))
    assert quick["one_shot_decisions"] == 11 and abs(quick["most_saving"] - 2 / 11) < 1e-12
    assert "| 18% |" in loop.seeds_report([quick])[6]
    assert "fewer than 1.33 decisions per label" in report[-2]


def test_the_oracle_stops_when_the_queue_stops_paying_or_the_labels_grew_enough():
    window = loop.WINDOW
    paying = [True, False] * (window // 2)             # exactly half accepted: goes on
    assert not loop.stops(paying, 0.5)
    assert loop.stops(paying + [False], 0.5)           # last window: 14 of 30, < half
    assert not loop.stops([False] * (window - 1), 0.5)  # the window is not full yet
    assert not loop.stops([True] * 10, 0.5, max_accepts=11)
    assert loop.stops([True] * 10 + [False], 0.5, max_accepts=10)
    assert not loop.stops([False] * 100, None)          # no rule: the whole queue


def test_the_tail_study_sorts_the_queue_head_by_what_each_box_lies_on():
    """benchmarks/loop_tail.py: image 1 has erased label 1 (found) and 2 (unfound), and
    an input label. A box on label 2 is an unfound label; shifted by half its width
    (IoU 1/3) it is near one; on found label 1 or on the input label it lies on a labelled
    object; far from all, clutter."""
    spec = importlib.util.spec_from_file_location("loop_tail", REPO / "benchmarks" / "loop_tail.py")
    tail = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tail)
    from types import SimpleNamespace

    hidden = {"annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
                              {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10]}]}
    oracle = tail.L.Oracle(hidden)
    oracle.found.add(1)
    labelled = {1: [[0, 0, 10, 10], [50, 50, 10, 10], [100, 0, 20, 20]]}
    boxes = [[50, 50, 10, 10], [55, 50, 10, 10], [0, 0, 10, 10], [102, 2, 20, 20], [200, 200, 10, 10]]
    items = [SimpleNamespace(image_id=1, box=b) for b in boxes]
    assert dict(tail.head_mix(items, oracle, labelled)) == {
        "an unfound label": 1, "near an unfound label (IoU 0.1-0.5)": 1,
        "on or near a labelled object": 2, "clutter (IoU < 0.1 with any object)": 1}
    assert dict(tail.head_mix(items[:1] * (tail.HEAD + 5), oracle, labelled)) == {
        "an unfound label": tail.HEAD}       # only the head is read


def test_loops_from_an_earlier_result_must_share_its_data_round0_and_rules():
    """--loops-from adds a method's loop beside an earlier result's: an earlier result of
    another seed, round length or mining refuses by the setting's name; one older than a
    setting's key reads the setting's default (seed 0, the demo's data)."""
    import argparse

    args = argparse.Namespace(data="demo", review_scales=None, review_flip=False,
                              review_native=True, stop_below=0.5, retrain_growth=None)
    same = {"data": "demo", "recipe": "cpu", "round0_seed": 0, "round0_iters": 1200,
            "iters": 1200, "review_scales": [1.0], "review_flip": False, "review_native": True,
            "native_max": loop.NATIVE_MAX, "stop_below": 0.5, "retrain_growth": None}
    recipe = loop.Recipe()
    assert recipe.settings["iters"] == 1200          # the CPU recipe these metas describe
    assert loop.settings_clash(same, recipe, 1200, args) is None
    older = {k: v for k, v in same.items() if k not in ("data", "round0_seed", "retrain_growth")}
    assert loop.settings_clash(older, recipe, 1200, args) is None
    assert loop.settings_clash(same, loop.Recipe(seed=1), 1200, args) == "round0_seed"
    assert loop.settings_clash(same, recipe, 600, args) == "iters"
    assert loop.settings_clash(same | {"native_max": 2.0}, recipe, 1200, args) == "native_max"
    flipped = argparse.Namespace(**(vars(args) | {"review_flip": True}))
    assert loop.settings_clash(same, recipe, 1200, flipped) == "review_flip"
