"""The remaining-objects estimate: the annotator's decisions calibrate the queue's score
(comining.calibration), and the run's status line (comining.status)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from comining import calibration, status
from comining.errors import InputError


def test_no_estimate_before_enough_decisions_of_both_kinds():
    assert calibration.fit([0.9] * 5 + [0.1] * 4, [True] * 5 + [False] * 4) is None   # 9 < 10
    assert calibration.fit(np.linspace(0.1, 0.9, 40), [True] * 40) is None
    assert calibration.fit(np.linspace(0.1, 0.9, 40), [False] * 40) is None
    assert calibration.fit([0.9] * 6 + [0.1] * 4, [True] * 6 + [False] * 4) is not None
    # acceptance that does not fall with the score: nothing to extrapolate from
    assert calibration.fit([0.9] * 6 + [0.1] * 4, [False] * 6 + [True] * 4) is None


def test_no_estimate_while_the_decisions_do_not_pin_the_fall_of_acceptance_down():
    """Two score groups of 10: logit-linear curves fit two groups exactly, so the curve's
    chances are the groups' rates. 7 of 10 accepted at 0.9 and 3 of 10 at 0.1: log L =
    20 (0.7 ln 0.7 + 0.3 ln 0.3) = -12.22 against 20 ln 0.5 = -13.86 for one rate, a
    statistic of 3.29 < 3.84 (5 %): no estimate. 8 and 2 of 10: -10.01, 7.71: an estimate."""
    scores = [0.9] * 10 + [0.1] * 10
    assert calibration.fit(scores, [True] * 7 + [False] * 3 + [True] * 3 + [False] * 7) is None
    cal = calibration.fit(scores, [True] * 8 + [False] * 2 + [True] * 2 + [False] * 8)
    assert cal is not None
    np.testing.assert_allclose(cal.chance([0.9, 0.1]), [0.8, 0.2], atol=1e-3)


def test_identity_calibration_by_hand():
    """slope 1, intercept 0: the chance is the score itself."""
    cal = calibration.Calibration(1.0, 0.0, 20, 10)
    np.testing.assert_allclose(cal.chance([0.9, 0.2, 0.5]), [0.9, 0.2, 0.5])
    rem = calibration.remaining(cal, [0.9, 0.2, 0.3], [1, 2, 2])
    assert rem.total == pytest.approx(1.4) and rem.n_pending == 3
    assert rem.per_class == pytest.approx({1: 0.9, 2: 0.5})
    assert calibration.batch_precision(cal, [0.9, 0.8, 0.2], 0.5) == (2, pytest.approx(0.85))
    assert calibration.batch_precision(cal, [0.2], 0.5) == (0, None)
    assert "about 1 missing objects remain among the 3 pending" in rem.line()
    assert rem.n_below == 0 and "extrapolated" not in rem.line()


def test_the_estimate_says_how_much_of_it_lies_below_every_decided_score():
    cal = calibration.fit([0.9] * 6 + [0.1] * 4, [True] * 6 + [False] * 4)
    assert cal.lowest_decided == pytest.approx(0.1)
    cal = calibration.Calibration(1.0, 0.0, 20, 10, lowest_decided=0.5)   # chance = score
    rem = calibration.remaining(cal, [0.9, 0.4, 0.3, 0.5], [1, 1, 2, 2])
    assert rem.total == pytest.approx(2.1)
    assert (rem.n_below, rem.extrapolated) == (2, pytest.approx(0.7))      # 0.4 + 0.3
    assert ("1 of them are extrapolated to the 2 pending objects scoring below any you "
            "decided (0.50)") in rem.line()


def test_the_fit_recovers_a_known_acceptance_curve_and_counts_what_remains():
    """Decisions drawn from P(accept | s) = sigmoid(3 logit(s) - 1): the fitted curve is
    that one, and the expected count over other scores matches the true sum."""
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.02, 0.98, 4000)
    true = lambda s: 1 / (1 + np.exp(-(3 * np.log(s / (1 - s)) - 1)))   # noqa: E731
    accepted = rng.uniform(size=4000) < true(scores)
    cal = calibration.fit(scores, accepted)
    assert cal.slope == pytest.approx(3, rel=0.1) and cal.intercept == pytest.approx(-1, abs=0.15)
    pending = rng.uniform(0.05, 0.6, 3000)
    classes = rng.integers(1, 3, 3000)
    rem = calibration.remaining(cal, pending, classes)
    assert rem.total == pytest.approx(true(pending).sum(), rel=0.1)
    for c in (1, 2):
        assert rem.per_class[c] == pytest.approx(true(pending[classes == c]).sum(), rel=0.12)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_status_lines(tmp_path):
    status.write(tmp_path, state="training", round=1, round_start=1200, iters=1800,
                 iteration=1400, loss=1.2345, img_s=8.0, batch_size=8)
    s = status.read(tmp_path)
    assert s["alive"] and s["pid"] == os.getpid()
    # 400 iterations of 8 images at 8 images a second
    assert status.describe(s) == ("⏳ round 1: iteration 1400 of 1800, loss 1.234, about 7 min "
                                  "of training left")
    assert status.describe(s, icon=False) == ("round 1: iteration 1400 of 1800, loss 1.234, "
                                              "about 7 min of training left")
    data = json.loads((tmp_path / status.STATUS_NAME).read_text())
    data["pid"] = _dead_pid()
    (tmp_path / status.STATUS_NAME).write_text(json.dumps(data))
    s = status.read(tmp_path)
    assert not s["alive"]
    assert status.describe(s).startswith("⏸ round 1 stopped at iteration 1400 of 1800")
    status.write(tmp_path, state="finished", round=0, iters=1200, iteration=1200)
    assert status.describe(status.read(tmp_path)) == "✅ training finished (iteration 1200 of 1200)"
    (tmp_path / status.STATUS_NAME).write_text("{half")
    assert status.read(tmp_path) is None and status.describe(None) == ""


def test_the_run_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(tmp_path):
    lock = tmp_path / status.LOCK_NAME
    lock.write_text(str(os.getppid()))           # a live process that is not this one
    with pytest.raises(InputError, match=f"being trained by process {os.getppid()} now"):
        with status.run_lock(tmp_path):
            pass
    assert lock.read_text() == str(os.getppid())
    lock.write_text(str(_dead_pid()))
    with status.run_lock(tmp_path):
        assert lock.read_text() == str(os.getpid()) and status.holds_lock(tmp_path)
    assert not lock.exists()


def test_missing_left_by_hand():
    from comining.queue_metrics import missing_left

    hidden = {"annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},     # found
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10]},   # pending hit
        {"id": 3, "image_id": 1, "category_id": 2, "bbox": [80, 0, 10, 10]},    # nothing there
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10]},     # pending hit
        {"id": 5, "image_id": 2, "category_id": 1, "bbox": [20, 20, 10, 10], "iscrowd": 1}]}
    pending = [{"image_id": 1, "bbox": [51, 50, 10, 10]}, {"image_id": 1, "bbox": [0, 1, 10, 10]},
               {"image_id": 2, "bbox": [0, 0, 11, 10]}, {"image_id": 2, "bbox": [20, 20, 10, 10]}]
    accepted = [{"image_id": 1, "bbox": [1, 0, 10, 10]}]
    assert missing_left(pending, accepted, hidden) == {1: 1, 2: 1}


def test_evaluate_prints_the_estimate_and_the_truth(tmp_path, capsys):
    """Decide images 1-3 of the fixture (accept what matches an erased label, reject the
    rest): the queue then holds image 4's three erased objects and one false box."""
    from comining import review
    from comining.cli import main
    from review_fixtures import make_run

    info = make_run(tmp_path)
    r = review.open_run(info.run_dir)
    try:
        for image_id in (1, 2, 3):
            truth = [a["bbox"] for a in info.hidden if a["image_id"] == image_id]
            for it in review.image_items(r, 200, image_id):
                hit = review.iou_matrix([it.box], truth).max() >= 0.5
                review.decide(r, it.id, "accepted" if hit else "rejected", client="t")
    finally:
        r.close()
    out = tmp_path / "e.json"
    assert main(["evaluate", "--run", str(info.run_dir), "--hidden", str(info.hidden_path),
                 "--checkpoint", "200", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "missing objects left in the queue at checkpoint 200: about" in printed
    assert "truth (HIDDEN): 3" in printed
    rem = json.loads(out.read_text())["remaining"]
    image4 = [a["category_id"] for a in info.hidden if a["image_id"] == 4]
    assert rem["truth"] == 3 and rem["decisions"] == 12
    assert rem["truth_per_class"] == {str(c): image4.count(c) for c in sorted(set(image4))}
    assert 0 <= rem["estimate"] <= 4          # four objects are pending
    r = review.open_run(info.run_dir)
    try:
        decided = [it.score for im in (1, 2, 3) for it in review.image_items(r, 200, im)
                   if it.on_label is None]
        pending = [it.score for it in review.image_items(r, 200, 4) if it.on_label is None]
    finally:
        r.close()
    assert rem["lowest_decided_score"] == pytest.approx(min(decided))
    assert rem["pending_below_decided"] == sum(s < min(decided) for s in pending)
    assert 0 <= rem["extrapolated"] <= rem["estimate"]
    # no decisions: no estimate, said so
    assert main(["evaluate", "--run", str(info.run_dir), "--checkpoint", "100"]) == 0
    assert "no estimate yet" in capsys.readouterr().out


def test_the_run_says_it_is_training_before_its_first_logged_iteration(small_dataset, tmp_path,
                                                                      monkeypatch):
    """The status the app polls: "training at iteration 0" as the loop starts (not at the
    first log step, minutes later on a slow machine), then each log step, then finished."""
    from comining import engine
    from conftest import seconds_run_config

    writes = []
    real = status.write

    def record(run_dir, **fields):
        writes.append((fields["state"], fields.get("iteration"), "loss" in fields))
        real(run_dir, **fields)

    monkeypatch.setattr(engine.status, "write", record)
    engine.train(seconds_run_config(small_dataset, tmp_path / "run", log_every=3, mine=False),
                 progress=False)
    # iters 4, logged at 3 and at the end; checkpoints 2 and 4 not mined (mine=False)
    assert writes == [("training", 0, False), ("training", 3, True), ("training", 4, True),
                      ("finished", 4, False)]
    assert status.read(tmp_path / "run")["state"] == "finished"


def test_evaluate_says_which_part_of_the_estimate_is_extrapolated(capsys):
    """print_remaining by hand: the extrapolated part gets its own line when pending
    objects score below every decided one, and none when none do."""
    from comining.cli.evaluate import print_remaining

    rem = {"checkpoint": 7, "estimate": 12.4, "decisions": 40, "extrapolated": 9.6,
           "pending_below_decided": 300, "lowest_decided_score": 0.31,
           "estimate_per_class": {"1": 12.4}, "names": {"1": "disc"}}
    print_remaining(rem)
    out = capsys.readouterr().out
    assert "at checkpoint 7: about 12 (estimated from 40 decisions)" in out
    assert ("of which about 10 are extrapolated to the 300 pending objects scoring below any "
            "decided (0.31): a rough guess") in out
    print_remaining(dict(rem, extrapolated=0.0, pending_below_decided=0))
    assert "extrapolated" not in capsys.readouterr().out
