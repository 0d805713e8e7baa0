"""The evaluators (matching, detection_ap, mining_quality, anchors) on hand-made cases with
known answers; `comining evaluate` end to end."""

from __future__ import annotations

import copy
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from comining import store
from comining.cli import main
from comining.errors import CominingError, InputError
from comining.anchors import fiftyone_missing
from comining.detection_ap import AP_KEYS, coco_ap
from comining.matching import match_boxes, xywh_to_xyxy
from comining.mining_quality import SELECTIONS, mining_quality, mining_scores, select

# ----------------------------------------------------------------------------- helpers

CATS = [{"id": 3, "name": "disc"}, {"id": 8, "name": "square"}]


def gt_dict(boxes_per_image, size=200):
    """boxes_per_image: {image_id: [(category_id, [x, y, w, h]), ...]}."""
    images = [{"id": i, "file_name": f"{i}.png", "width": size, "height": size}
              for i in boxes_per_image]
    anns, k = [], 1
    for i, boxes in boxes_per_image.items():
        for cat, bbox in boxes:
            anns.append({"id": k, "image_id": i, "category_id": cat, "bbox": list(bbox),
                         "area": bbox[2] * bbox[3], "iscrowd": 0})
            k += 1
    return {"images": images, "annotations": anns, "categories": copy.deepcopy(CATS)}


def dets_from(gt, score=0.9):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]),
             "score": score} for a in gt["annotations"]]


# Small (< 32^2), medium and large (> 96^2) objects: every COCO size range is defined.
ALL_SIZES = {1: [(3, [10, 10, 20, 20]), (8, [50, 50, 50, 50])],
             2: [(3, [20, 20, 120, 120]), (8, [150, 150, 25, 25])],
             3: [(8, [5, 5, 110, 100]), (3, [120, 10, 60, 60])]}


def split(full, erase_ids):
    """(sparse, hidden) of a COCO dict: the annotations with these ids erased."""
    sparse = dict(full, annotations=[a for a in full["annotations"] if a["id"] not in erase_ids])
    hidden = dict(full, annotations=[a for a in full["annotations"] if a["id"] in erase_ids])
    return sparse, hidden


def cand(image_id, cat, bbox, score, view="original", checkpoint=100, agreed=None):
    return {"checkpoint": checkpoint, "image_id": image_id, "category_id": cat, "bbox": list(bbox),
            "score": score, "view": view, "agreed": agreed}


# ----------------------------------------------------------------------------- box matching


def test_match_boxes_greedy_by_score_same_class_and_iou_boundary():
    gt = xywh_to_xyxy([[0, 0, 10, 10], [50, 50, 10, 10]])
    # IoU exactly 0.5 is a hit (>= 0.5); 0.49 is not.
    half = xywh_to_xyxy([[0, 0, 10, 5]])
    assert match_boxes(half, [1], [0.9], gt, [1, 1]).tolist() == [0]
    below = xywh_to_xyxy([[0, 0, 10, 4.9]])
    assert match_boxes(below, [1], [0.9], gt, [1, 1]).tolist() == [-1]
    # A wrong class is no hit, unless class_aware=False.
    assert match_boxes(gt[:1], [2], [0.9], gt, [1, 1]).tolist() == [-1]
    assert match_boxes(gt[:1], [2], [0.9], gt, [1, 1], class_aware=False).tolist() == [0]
    # Two boxes on one object: the higher score takes it, the other stays unmatched.
    two = np.vstack([gt[0], gt[0] + 0.5])
    assert match_boxes(two, [1, 1], [0.3, 0.8], gt, [1, 1]).tolist() == [-1, 0]


# ----------------------------------------------------------------------------- COCO AP


def test_perfect_detections_give_ap_one_in_every_size_range():
    gt = gt_dict(ALL_SIZES)
    ap = coco_ap(gt, dets_from(gt))
    assert set(ap) == set(AP_KEYS)
    for k in AP_KEYS:
        assert ap[k] == pytest.approx(1.0), k


def test_zero_detections_give_zeros_and_do_not_crash(capsys):
    gt = gt_dict(ALL_SIZES)
    ap = coco_ap(gt, [])
    assert ap == {k: 0.0 for k in AP_KEYS}
    assert capsys.readouterr().out == ""  # pycocotools' prints are silenced


def test_half_the_objects_found_gives_the_101_point_answer():
    gt = gt_dict({1: [(3, [10, 10, 40, 40]), (3, [100, 100, 40, 40])]})
    ap = coco_ap(gt, dets_from(gt)[:1])
    # recall 0.5 at precision 1: 51 of the 101 recall points have precision 1.
    assert ap["AP"] == pytest.approx(51 / 101)
    assert ap["AP50"] == pytest.approx(51 / 101)


def test_wrong_class_detection_scores_zero_and_empty_ranges_are_none():
    gt = gt_dict({1: [(3, [10, 10, 40, 40])]})  # one medium object, class 3
    wrong = [dict(d, category_id=8) for d in dets_from(gt)]
    ap = coco_ap(gt, wrong)
    assert ap["AP"] == 0.0 and ap["AP50"] == 0.0 and ap["APm"] == 0.0
    assert ap["APs"] is None and ap["APl"] is None  # no ground truth of that size


def test_per_class_ap_shows_the_class_the_mean_hides():
    # class 3: both objects found; class 8: one of two found (the 101-point answer);
    # a third category without ground truth has no AP.
    gt = gt_dict({1: [(3, [10, 10, 40, 40]), (8, [100, 100, 40, 40])],
                  2: [(3, [20, 20, 50, 50]), (8, [120, 20, 40, 60])]})
    gt["categories"].append({"id": 11, "name": "cross"})
    dets = [d for d in dets_from(gt) if not (d["category_id"] == 8 and d["image_id"] == 2)]
    ap = coco_ap(gt, dets, per_class=True)
    assert ap["per_class"] == {3: pytest.approx(1.0), 8: pytest.approx(51 / 101), 11: None}
    assert ap["AP"] == pytest.approx((1.0 + 51 / 101) / 2)
    assert "per_class" not in coco_ap(gt, dets)


def test_coco_ap_leaves_its_inputs_alone_and_rejects_foreign_detections():
    gt = gt_dict(ALL_SIZES)
    dets = dets_from(gt)
    before = copy.deepcopy((gt, dets))
    coco_ap(gt, dets)
    assert (gt, dets) == before
    with pytest.raises(InputError, match="not in the ground truth"):
        coco_ap(gt, [dict(dets[0], image_id=999)])
    with pytest.raises(InputError, match="category 5"):
        coco_ap(gt, [dict(dets[0], category_id=5)])


def test_coco_ap_fills_missing_area_and_iscrowd():
    gt = gt_dict(ALL_SIZES)
    for a in gt["annotations"]:
        del a["area"], a["iscrowd"]
    assert coco_ap(gt, dets_from(gt))["AP"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- mining


FOUR = {1: [(3, [10, 10, 40, 40]), (3, [100, 10, 40, 40]), (8, [10, 100, 40, 40])],
        2: [(8, [20, 20, 50, 50]), (3, [120, 120, 50, 50]), (8, [120, 20, 40, 40])]}


def four_erased():
    full = gt_dict(FOUR)
    return split(full, {2, 3, 4, 5})  # 4 of the 6 erased, ids 1 and 6 kept


def test_one_known_missing_box_found_gives_recall_one_over_n():
    sparse, hidden = four_erased()
    m = mining_scores([cand(1, 3, [100, 10, 40, 40], 0.9)], sparse, hidden)
    assert m["n_erased"] == 4
    assert m["recall"] == pytest.approx(1 / 4)
    assert m["precision"] == 1.0
    assert (m["n_mined"], m["n_hit_erased"], m["n_false"]) == (1, 1, 0)


def test_wrong_class_box_is_not_a_hit():
    sparse, hidden = four_erased()
    m = mining_scores([cand(1, 8, [100, 10, 40, 40], 0.9)], sparse, hidden)  # erased is class 3
    assert m["recall"] == 0.0 and m["precision"] == 0.0 and m["n_false"] == 1


def test_box_on_a_kept_annotation_is_correct_but_no_recall():
    sparse, hidden = four_erased()
    m = mining_scores([cand(1, 3, [10, 10, 40, 40], 0.9)], sparse, hidden)  # id 1 is kept
    assert m["precision"] == 1.0 and m["recall"] == 0.0 and m["n_hit_kept"] == 1


def test_duplicate_boxes_on_one_object_count_once():
    sparse, hidden = four_erased()
    boxes = [cand(1, 3, [100, 10, 40, 40], 0.9), cand(1, 3, [101, 11, 40, 40], 0.8)]
    m = mining_scores(boxes, sparse, hidden)
    assert (m["n_correct"], m["n_false"]) == (1, 1)
    assert m["recall"] == pytest.approx(1 / 4) and m["precision"] == pytest.approx(1 / 2)


def test_nothing_mined_and_nothing_erased_are_undefined_not_zero():
    sparse, hidden = four_erased()
    m = mining_scores([], sparse, hidden)
    assert m["recall"] == 0.0 and m["precision"] is None and m["curve"] == []
    full = gt_dict(FOUR)
    sparse, hidden = split(full, set())
    m = mining_scores([cand(1, 3, [60, 60, 20, 20], 0.9)], sparse, hidden)
    assert m["recall"] is None and m["precision"] == 0.0


def test_precision_recall_curve_over_score():
    sparse, hidden = four_erased()
    boxes = [cand(1, 3, [100, 10, 40, 40], 0.9),    # erased: hit
             cand(1, 3, [160, 160, 30, 30], 0.8),   # nothing there: false
             cand(2, 8, [20, 20, 50, 50], 0.7),     # erased: hit
             cand(2, 3, [120, 120, 50, 50], 0.7)]   # erased: hit (same score: one point)
    m = mining_scores(boxes, sparse, hidden)
    pts = [(p["score"], p["precision"], p["recall"]) for p in m["curve"]]
    assert pts == [(0.9, 1.0, 0.25), (0.8, 0.5, 0.25), (0.7, 0.75, 0.75)]
    # Interpolated: precision 1 up to recall 0.25, then 0.75 up to 0.75.
    assert m["ap"] == pytest.approx(0.25 * 1.0 + 0.5 * 0.75)
    assert m["recall_at_p90"] == 0.25


def test_boxes_in_a_same_class_crowd_region_are_ignored():
    full = gt_dict({1: [(3, [10, 10, 40, 40])]})
    full["annotations"].append({"id": 9, "image_id": 1, "category_id": 3, "bbox": [100, 100, 90, 90],
                                "area": 8100, "iscrowd": 1})
    sparse, hidden = split(full, {1})
    m = mining_scores([cand(1, 3, [110, 110, 20, 20], 0.9), cand(1, 8, [110, 110, 20, 20], 0.9)],
                      sparse, hidden)
    assert m["n_ignored"] == 1 and m["n_mined"] == 1 and m["n_false"] == 1
    assert m["n_erased"] == 1  # crowd never counts as erased


def test_selections_union_counts_an_object_found_by_both_views_once():
    sparse, hidden = four_erased()
    cands = [cand(1, 3, [100, 10, 40, 40], 0.9, "original", agreed=1),
             cand(1, 3, [101, 10, 40, 40], 0.8, "augmented", agreed=1),
             cand(2, 8, [20, 20, 50, 50], 0.7, "augmented", agreed=0),
             cand(2, 3, [120, 120, 50, 50], 0.6, "original", agreed=0)]
    q = mining_quality(cands, sparse, hidden)
    assert list(q) == [100] and set(q[100]) == set(SELECTIONS)
    r = {s: (q[100][s]["n_mined"], q[100][s]["recall"]) for s in SELECTIONS}
    assert r == {"original": (2, 0.5), "augmented": (2, 0.5), "union": (3, 0.75),
                 "agreed": (1, 0.25)}
    assert q[100]["union"]["precision"] == 1.0
    # Without the store's flag, agreement is computed the same way.
    assert len(select([dict(c, agreed=None) for c in cands], "agreed")) == 1


def test_union_keeps_overlapping_boxes_of_one_view_and_of_other_classes():
    c = [cand(1, 3, [100, 10, 40, 40], 0.9, "original"),
         cand(1, 3, [104, 10, 40, 40], 0.8, "original"),   # same view: kept (NMS's business)
         cand(1, 8, [100, 10, 40, 40], 0.7, "augmented")]  # other class: kept
    assert len(select(c, "union")) == 3


def test_mining_quality_reads_store_rows_per_checkpoint(tmp_path):
    sparse, hidden = four_erased()
    conn = store.connect(tmp_path / store.STORE_NAME, create=True)
    store.write_dataset(conn, sparse["images"], sparse["categories"])
    th = {"score_thresh": 0.6, "nms_iou": 0.5, "gt_iou": 0.4}
    for it, boxes in ((10, [cand(1, 8, [100, 10, 40, 40], 0.7)]),
                      (20, [cand(1, 3, [100, 10, 40, 40], 0.9), cand(2, 8, [20, 20, 50, 50], 0.9)])):
        store.replace_checkpoint_candidates(conn, iteration=it, path="x", thresholds=th, candidates=[
            dict(b, key=k, agreed=False) for k, b in enumerate(boxes)])
    q = mining_quality(store.candidates(conn), sparse, hidden)
    conn.close()
    assert list(q) == [10, 20]
    assert q[10]["original"]["recall"] == 0.0
    assert q[20]["original"]["recall"] == pytest.approx(0.5)
    assert q[20]["augmented"]["n_mined"] == 0


# ----------------------------------------------------------------------------- anchors


def test_fiftyone_rule_confident_and_unmatched_at_any_class():
    anns = gt_dict({1: [(3, [10, 10, 40, 40])]})
    preds = [{"image_id": 1, "category_id": 3, "bbox": [100, 100, 30, 30], "score": 0.99},  # missing
             {"image_id": 1, "category_id": 3, "bbox": [150, 10, 30, 30], "score": 0.95},   # not > 0.95
             {"image_id": 1, "category_id": 8, "bbox": [10, 10, 40, 40], "score": 0.99},    # matches (any class)
             {"image_id": 1, "category_id": 3, "bbox": [11, 11, 40, 40], "score": 0.98}]    # duplicate
    out = fiftyone_missing(preds, anns)
    assert out == [preds[0], preds[3]]
    assert fiftyone_missing(preds, anns, conf=0.985) == [preds[0]]


def test_cleanlab_missing_is_a_clear_error(monkeypatch):
    from comining.anchors import cleanlab_overlooked
    monkeypatch.setitem(sys.modules, "cleanlab", None)
    monkeypatch.setitem(sys.modules, "cleanlab.object_detection.rank", None)
    with pytest.raises(CominingError, match="pip install cleanlab"):
        cleanlab_overlooked([{"image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 1.0}],
                            gt_dict({1: []}))


def test_cleanlab_scores_a_confident_box_away_from_labels():
    pytest.importorskip("cleanlab.object_detection.rank")
    from comining.anchors import cleanlab_overlooked
    coco = gt_dict({1: [(3, [10, 10, 40, 40])], 2: [(8, [10, 10, 40, 40])]})
    preds = [{"image_id": 1, "category_id": 3, "bbox": [120, 120, 40, 40], "score": 0.99},
             {"image_id": 1, "category_id": 3, "bbox": [12, 12, 40, 40], "score": 0.99},
             {"image_id": 2, "category_id": 8, "bbox": [120, 120, 40, 40], "score": 0.5}]
    out = cleanlab_overlooked(preds, coco)
    assert [(o["image_id"], o["bbox"]) for o in out] == [(1, [120, 120, 40, 40])]
    assert 0.0 <= out[0]["overlooked_score"] <= 1.0


# ----------------------------------------------------------------------------- CLI


def make_run(tmp_path, sparse, cands_by_ckpt):
    run = tmp_path / "run"
    run.mkdir()
    ann = tmp_path / "train_sparse.json"
    ann.write_text(json.dumps(sparse))
    conn = store.connect(run / store.STORE_NAME, create=True)
    store.write_dataset(conn, sparse["images"], sparse["categories"])
    store.set_meta(conn, ann_path=str(ann), images_dir=str(tmp_path))
    th = {"score_thresh": 0.6, "nms_iou": 0.5, "gt_iou": 0.4}
    for it, boxes in cands_by_ckpt.items():
        store.replace_checkpoint_candidates(conn, iteration=it, path="x", thresholds=th, candidates=[
            dict(b, key=k, agreed=False) for k, b in enumerate(boxes)])
    conn.close()
    return run


def test_cli_mining_table_and_json(tmp_path, capsys):
    sparse, hidden = four_erased()
    run = make_run(tmp_path, sparse, {50: [], 100: [cand(1, 3, [100, 10, 40, 40], 0.9)]})
    hid = tmp_path / "hidden.json"
    hid.write_text(json.dumps(hidden))
    out = tmp_path / "m.json"
    assert main(["evaluate", "--run", str(run), "--hidden", str(hid), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "union" in text and "0.250" in text
    data = json.loads(out.read_text())
    assert set(data["mining"]) == {"50", "100"}
    assert data["mining"]["100"]["original"]["recall"] == pytest.approx(0.25)
    assert data["mining"]["50"]["union"]["n_mined"] == 0
    # the review queue: at 100 one object, on one of the 4 erased labels
    assert data["queue"]["100"]["n_items"] == 1 and data["queue"]["50"]["n_items"] == 0
    assert data["queue"]["100"]["object"]["found_at"] == {"0.5": 1, "1": 1, "2": 1}
    assert data["queue"]["100"]["object"]["ap"] == pytest.approx(0.25)
    assert "at checkpoint 100: reviewing all 1 item finds 1 of the 4 erased objects" in text


def test_cli_refuses_a_hidden_file_of_another_split(tmp_path, capsys):
    sparse, hidden = four_erased()
    run = make_run(tmp_path, sparse, {100: []})
    other = dict(hidden, annotations=hidden["annotations"] + sparse["annotations"][:1])
    hid = tmp_path / "hidden.json"
    hid.write_text(json.dumps(other))
    assert main(["evaluate", "--run", str(run), "--hidden", str(hid)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not the erased part" in err[0]


@pytest.mark.parametrize("argv, message", [
    (["--run", "RUN", "--ann", "x.json"], "go together"),
    (["--run", "NOPE", "--hidden", "h.json"], "run folder not found"),
    (["--run", "RUN", "--hidden", "missing.json"], "file not found"),
    (["--run", "RUN", "--hidden", "h.json", "--checkpoint", "7"], "checkpoint 7 was not mined"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    sparse, hidden = four_erased()
    run = make_run(tmp_path, sparse, {100: []})
    (tmp_path / "h.json").write_text(json.dumps(hidden))
    argv = [a.replace("RUN", str(run)).replace("NOPE", str(tmp_path / "nope"))
            .replace("h.json", str(tmp_path / "h.json")).replace("missing.json", str(tmp_path / "m.json"))
            for a in argv]
    assert main(["evaluate", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_cli_detection_ap_uses_predict_dataset(tmp_path, capsys, monkeypatch):
    full = gt_dict(ALL_SIZES)
    sparse, _ = split(full, set())
    run = make_run(tmp_path, sparse, {100: []})
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(full))
    calls = []

    def fake_predict(run_dir, images_dir, ann_path, *, checkpoint="last", device="auto", batch_size=8):
        calls.append((Path(run_dir), checkpoint))
        return dets_from(full)

    monkeypatch.setitem(sys.modules, "comining.predict",
                        types.SimpleNamespace(predict_dataset=fake_predict))
    out = tmp_path / "ap.json"
    assert main(["evaluate", "--run", str(run), "--images", str(tmp_path), "--ann", str(ann),
                 "--checkpoint", "100", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert all(data[k] == pytest.approx(1.0) for k in AP_KEYS)
    assert data["per_class"] == {"disc": pytest.approx(1.0), "square": pytest.approx(1.0)}
    assert calls == [(run, 100)]
    out_text = capsys.readouterr().out
    assert "1.000" in out_text
    assert "AP per class: disc 1.000, square 1.000" in out_text


def test_cli_anchors_score_fiftyone_on_the_runs_predictions(tmp_path, capsys, monkeypatch):
    sparse, hidden = four_erased()
    run = make_run(tmp_path, sparse, {100: []})
    hid = tmp_path / "hidden.json"
    hid.write_text(json.dumps(hidden))
    preds = [{"image_id": 1, "category_id": 3, "bbox": [100, 10, 40, 40], "score": 0.99},  # erased: hit
             {"image_id": 1, "category_id": 3, "bbox": [10, 10, 40, 40], "score": 0.99},   # annotated
             {"image_id": 2, "category_id": 8, "bbox": [20, 20, 50, 50], "score": 0.9}]    # not confident
    monkeypatch.setitem(sys.modules, "comining.predict",
                        types.SimpleNamespace(predict_dataset=lambda *a, **k: preds))
    monkeypatch.setitem(sys.modules, "cleanlab", None)
    monkeypatch.setitem(sys.modules, "cleanlab.object_detection.rank", None)
    out = tmp_path / "a.json"
    assert main(["evaluate", "--run", str(run), "--hidden", str(hid), "--anchors",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    fo = data["anchors"]["fiftyone"]
    assert (fo["n_mined"], fo["recall"], fo["precision"]) == (1, 0.25, 1.0)
    assert "pip install cleanlab" in data["anchors"]["cleanlab"]["skipped"]
    assert "skipped" in capsys.readouterr().out


def test_faster_evaluator_gives_pycocotools_numbers():
    """faster-coco-eval is used by default: it must agree with pycocotools exactly."""
    import random

    rng = random.Random(1)
    images = [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 150} for i in range(1, 41)]
    cats = [{"id": c, "name": str(c)} for c in (1, 5, 9)]
    anns, dets = [], []
    for im in images:
        for _ in range(4):
            x, y, w, h = rng.uniform(0, 150), rng.uniform(0, 100), rng.uniform(4, 60), rng.uniform(4, 60)
            c = rng.choice((1, 5, 9))
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": c,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            dets.append({"image_id": im["id"], "category_id": c, "score": rng.random(),
                         "bbox": [x + rng.uniform(-6, 6), y + rng.uniform(-6, 6), w, h]})
            dets.append({"image_id": im["id"], "category_id": rng.choice((1, 5, 9)),
                         "score": rng.random() * 0.6, "bbox": [rng.uniform(0, 150), 20, 30, 30]})
    gt = {"images": images, "categories": cats, "annotations": anns}
    fast = coco_ap(gt, dets, evaluator="faster", per_class=True)
    slow = coco_ap(gt, dets, evaluator="pycocotools", per_class=True)
    assert 0.1 < slow["AP"] < 0.9
    for key in AP_KEYS:
        assert fast[key] == pytest.approx(slow[key], abs=1e-9), key
    assert set(slow["per_class"]) == {1, 5, 9}
    for c in (1, 5, 9):
        assert fast["per_class"][c] == pytest.approx(slow["per_class"][c], abs=1e-9), c
