"""The loop's rounds (`comining refine`): a round trains on the inputs plus the accepted
boxes, never makes a pseudo box on a rejected one, and its checkpoints come back to the
review with the decided objects decided."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from comining import review, rounds, store
from comining.boxes import iou_matrix
from comining.cli import main
from comining.coco import attach_rejected, load_coco
from comining.config import TrainConfig
from comining.data import collate
from comining.checkpoints import list_checkpoints
from comining.engine import RunContext, train
from comining.siamese import training_step
from comining.augment import make_view_augmenter
from conftest import assert_clean_error, run_cli, seconds_run_config, sha256

torch.set_num_threads(2)
ROUND = ["--iters", "4", "--checkpoint-every", "2", "--no-progress"]


@pytest.fixture(scope="module")
def trained(small_dataset, tmp_path_factory) -> Path:
    """Round 0: 4 iterations, checkpoints 2 and 4 mined."""
    run = tmp_path_factory.mktemp("round0") / "run"
    return train(seconds_run_config(small_dataset, run), progress=False)


def decide(run_dir: Path, tmp_path: Path):
    """On image 1 at checkpoint 4: accept the best object as the next class with its box
    moved 2 px right (an edit), reject the second. Returns (accepted entry, rejected entry)."""
    run = review.open_run(run_dir)
    try:
        first, second = review.image_items(run, 4, 1)[:2]
    finally:
        run.close()
    x, y, w, h = first.box
    acc = {"image_id": 1, "bbox": [x + 2, y, w, h], "category_id": 1 + first.category_id % 3,
           "decision": "accepted"}
    rej = {"image_id": 1, "bbox": list(second.box), "category_id": second.category_id,
           "decision": "rejected"}
    path = tmp_path / "decisions.json"
    path.write_text(json.dumps([acc, rej]))
    assert main(["decide", "--run", str(run_dir), "--decisions", str(path)]) == 0
    return acc, rej


@pytest.fixture(scope="module")
def refined(trained, tmp_path_factory):
    """A copy of round 0 with two decisions, refined for 4 iterations (checkpoints 6, 8)."""
    tmp = tmp_path_factory.mktemp("refined")
    run = tmp / "run"
    shutil.copytree(trained, run)
    acc, rej = decide(run, tmp)
    assert main(["refine", "--run", str(run), *ROUND]) == 0
    return run, acc, rej


def iou_xyxy(a, b) -> np.ndarray:
    from torchvision.ops import box_iou
    return box_iou(torch.as_tensor(a).reshape(-1, 4), torch.as_tensor(b).reshape(-1, 4)).numpy()


def xyxy(bbox) -> np.ndarray:
    x, y, w, h = bbox
    return np.array([[x, y, x + w, y + h]], np.float64)


def test_a_round_records_its_targets_and_decisions_and_never_edits_the_inputs(small_dataset, refined):
    run, acc, rej = refined
    ann = small_dataset / "annotations" / "train.json"
    inputs = json.loads(ann.read_text())
    [row] = store.rounds(store.connect(run / store.STORE_NAME))
    assert (row["round"], row["start_iteration"], row["end_iteration"]) == (1, 4, 8)
    assert (row["n_accepted"], row["n_rejected"]) == (1, 1)
    assert [i for i, _ in list_checkpoints(run)] == [2, 4, 6, 8]
    # the forecast counts a round's checkpoints as the engine saved this one's
    assert rounds.checkpoints_in(4, 2) == len([i for i, _ in list_checkpoints(run) if i > 4])
    targets = json.loads(Path(row["targets"]).read_text())
    # the inputs untouched, then the accepted box as decided (edited box and class)
    assert targets["annotations"][:-1] == inputs["annotations"]
    new = targets["annotations"][-1]
    assert new["image_id"] == 1 and new["category_id"] == acc["category_id"]
    assert new["bbox"] == pytest.approx(acc["bbox"], abs=0.01)
    background = json.loads(Path(row["rejected"]).read_text())["rejected"]
    assert [(b["image_id"], b["bbox"]) for b in background] == [(1, pytest.approx(rej["bbox"], abs=0.01))]
    # the run folder holds the round; the dataset folder is as generated
    assert Path(row["targets"]).parent == run / "rounds" / "round_001"
    assert json.loads(ann.read_text()) == inputs
    conn = store.connect(run / store.STORE_NAME)
    assert store.checkpoint_rounds(conn) == {2: 0, 4: 0, 6: 1, 8: 1}
    conn.close()


def _step(config: TrainConfig, run: Path, image_id: int, *, with_rejected: bool):
    """One real co-mining training step of the round's config on one image (not flipped),
    with the weights the round started from; returns (sample, step output)."""
    coco = load_coco(config.ann, config.images)
    if with_rejected:
        attach_rejected(coco, config.rejected)
    ctx = RunContext(config, run, coco, torch.device("cpu"))
    ctx.load_weights(dict(list_checkpoints(run))[config.round_start])
    index = [r.id for r in coco.images].index(image_id)
    sample = ctx.train_dataset[(index, False)]
    torch.manual_seed(0)
    out = training_step(ctx.dense, collate([sample]), config.method, config.thresholds,
                        make_view_augmenter(config.augment))
    return sample, out


def test_a_round_trains_on_accepted_boxes_and_never_on_a_rejected_region(refined):
    """A real training step of round 1 on image 1: both views' targets hold the accepted
    box (where it lies in the resized image) and no pseudo box on the rejected one, which
    the same step without the rejected boxes does turn into pseudo boxes."""
    run, acc, rej = refined
    config = TrainConfig.load(rounds.round_dir(run, 1) / "config.json")
    sample, out = _step(config, run, 1, with_rejected=True)
    sx, sy = sample.scale
    scale = np.array([sx, sy, sx, sy])
    accepted_resized = xyxy(acc["bbox"]) * scale
    rejected_resized = xyxy(rej["bbox"]) * scale
    n_labels = len(sample.boxes)
    for view, targets in out.targets.items():
        boxes = targets[0]["boxes"].numpy().astype(np.float64)
        labels = targets[0]["labels"].tolist()
        annotated, pseudo = boxes[:n_labels], boxes[n_labels:]
        hit = np.flatnonzero(np.abs(annotated - accepted_resized).max(axis=1) < 0.05)
        assert len(hit) == 1, view
        assert labels[hit[0]] == acc["category_id"] - 1      # contiguous label of its class
        assert len(pseudo) > 0
        assert iou_xyxy(pseudo, rejected_resized).max() < 0.5, view
    _, without = _step(config, run, 1, with_rejected=False)
    pseudo = without.targets["original"][0]["boxes"][n_labels:].numpy().astype(np.float64)
    assert iou_xyxy(pseudo, rejected_resized).max() >= 0.5


def test_after_a_round_the_decided_objects_are_not_proposed_again(refined, tmp_path):
    run, acc, rej = refined
    r = review.open_run(run)
    try:
        pending = [it for it in review.queue_items(r, 8) if it.image_id == 1]
        boxes = np.array([it.box for it in pending], np.float64).reshape(-1, 4)
        assert len(pending) > 0
        assert iou_matrix(boxes, [rej["bbox"]]).max() < 0.5
        assert iou_matrix(boxes, [acc["bbox"]]).max() < 0.5
        # the round's mining saw the rejected region again: it is there, decided
        seen = [it for it in review.image_items(r, 8, 1)
                if iou_matrix([it.box], [rej["bbox"]])[0, 0] >= 0.5]
        assert seen and all(it.state == "rejected" for it in seen)
        newest = pending[0]
    finally:
        r.close()
    # export sees every round: the round-0 edit, and an accept on round 1's queue
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"image_id": 1, "bbox": list(newest.box),
                                 "category_id": newest.category_id, "decision": "accepted"}]))
    assert main(["decide", "--run", str(run), "--decisions", str(path)]) == 0
    out = tmp_path / "enlarged.json"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    added = {tuple(round(v, 1) for v in a["bbox"]): a["attributes"]["comining_round"]
             for a in json.loads(out.read_text())["annotations"] if "comining" in a}
    assert added == {tuple(round(v, 1) for v in acc["bbox"]): 0,
                     tuple(round(v, 1) for v in newest.box): 1}


def test_refine_refuses_what_it_cannot_do_in_one_line(small_dataset, trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    proc = run_cli("refine", "--run", run, "--resume")
    assert_clean_error(proc, "no stopped round to resume")
    # a round whose training was stopped must be finished before the next one starts
    conn = store.connect(run / store.STORE_NAME)
    store.add_round(conn, round=1, start_iteration=4, end_iteration=8, targets="t", rejected="r",
                    decision_ids=[], n_accepted=0, n_rejected=0)
    conn.close()
    proc = run_cli("refine", "--run", run)
    assert_clean_error(proc, "round 1 was stopped before its end", "add --resume")
    proc = run_cli("refine", "--run", run, "--resume", "--review-flip")
    assert_clean_error(proc, "round 1 resumes with its own mining settings")
    # round 0 itself unfinished
    half = tmp_path / "half"
    short = seconds_run_config(small_dataset, half)
    short.iters = 2
    train(short, progress=False)
    config = json.loads((half / "config.json").read_text())
    config["iters"] = 4
    (half / "config.json").write_text(json.dumps(config))
    before = sha256(half / store.STORE_NAME)
    proc = run_cli("refine", "--run", half)
    assert_clean_error(proc, "training stopped at iteration 2 of 4", "comining train --resume")
    assert sha256(half / store.STORE_NAME) == before
    assert not (half / "rounds").exists()


def mined_settings(run: Path) -> dict:
    """Mined checkpoint -> its mining settings as the store records them."""
    conn = store.connect(run / store.STORE_NAME)
    try:
        return {r["iteration"]: json.loads(r["settings"]) for r in store.checkpoints(conn)}
    finally:
        conn.close()


def test_mining_settings_given_to_a_round_hold_for_the_rounds_after_it(trained, tmp_path):
    """refine --review-flip: round 1's checkpoints are mined mirrored too, round 0's stay
    as they were, round 2 (no option) inherits it; a bad setting writes nothing."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    decide(run, tmp_path)
    before = sha256(run / store.STORE_NAME)
    proc = run_cli("refine", "--run", run, "--review-scales", "9", *ROUND)
    assert_clean_error(proc, "--review-scales")
    assert sha256(run / store.STORE_NAME) == before and not (run / "rounds").exists()
    assert main(["refine", "--run", str(run), "--review-flip", *ROUND]) == 0
    assert main(["refine", "--run", str(run), *ROUND]) == 0
    flips = {it: s["flip"] for it, s in mined_settings(run).items()}
    assert flips == {2: False, 4: False, 6: True, 8: True, 10: True, 12: True}
    assert json.loads((run / "config.json").read_text())["review"]["flip"] is False  # round 0's


def test_the_rounds_of_a_run_trained_without_mining_are_mined_and_chain(small_dataset, tmp_path):
    """Round 0 trained with --no-mine, its last checkpoint mined by hand: each round mines
    its own checkpoints for review, so the next round can start; a round recorded unmined
    (as an older comining left it) is mined by --resume."""
    run = train(seconds_run_config(small_dataset, tmp_path / "run", mine=False), progress=False)
    proc = run_cli("refine", "--run", run, *ROUND)
    assert_clean_error(proc, "checkpoint 4 is not mined yet", "comining mine --run RUN")
    assert main(["mine", "--run", str(run)]) == 0
    assert main(["refine", "--run", str(run), *ROUND]) == 0
    assert main(["refine", "--run", str(run), *ROUND]) == 0
    conn = store.connect(run / store.STORE_NAME)
    try:
        assert store.checkpoint_rounds(conn) == {4: 0, 6: 1, 8: 1, 10: 2, 12: 2}
        # round 2's last checkpoint unmined, its config without mining: an older round
        for table, col in (("objects", "checkpoint"), ("candidates", "checkpoint"),
                           ("checkpoints", "iteration")):
            conn.execute(f"DELETE FROM {table} WHERE {col} = 12")
        conn.commit()
    finally:
        conn.close()
    cfg = rounds.round_dir(run, 2) / "config.json"
    cfg.write_text(json.dumps(dict(json.loads(cfg.read_text()), mine=False)))
    proc = run_cli("refine", "--run", run, *ROUND)
    assert_clean_error(proc, "round 2 was stopped before its end", "add --resume")
    assert main(["refine", "--run", str(run), "--resume", "--no-progress"]) == 0
    r = review.open_run(run)
    try:
        assert review.queue_items(r, 12)           # mined for review again
    finally:
        r.close()
    assert main(["refine", "--run", str(run), *ROUND]) == 0
    conn = store.connect(run / store.STORE_NAME)
    try:
        assert store.checkpoint_rounds(conn)[16] == 3
    finally:
        conn.close()
