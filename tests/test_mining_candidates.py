"""Mining for review, one image by hand: both views' detections -> the candidates stored
(each with its object, its partner in the other view, the category ids of the dataset)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from comining.config import ReviewMining
from comining.mining import image_candidates

# label 0 -> category 10, label 1 -> category 20 (the dataset's own ids)
CATEGORIES = SimpleNamespace(to_category_id=lambda lab: [10, 20][lab])


def dets(boxes, labels, scores):
    return (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels),
            torch.tensor(scores, dtype=torch.float32))


def test_one_image_by_hand():
    """Original view: A [10,10,50,50] class 10 0.9, B [100,100,120,130] class 20 0.6,
    L [200,200,240,240] class 10 0.7 (exactly on a class-10 label: not missing, dropped).
    Augmented view: A' [12,10,52,50] class 10 0.8 (IoU with A 1520/1680 = 0.90: agreed,
    one object with A). Objects ranked by the mean of the views' best scores: A 0.85,
    B 0.3; members best first."""
    rec = SimpleNamespace(id=7, boxes=np.array([[200, 200, 240, 240]], np.float32),
                          labels=np.array([0]), crowd_boxes=np.zeros((0, 4), np.float32))
    d = {"original": dets([[10, 10, 50, 50], [100, 100, 120, 130], [200, 200, 240, 240]],
                          [0, 1, 0], [0.9, 0.6, 0.7]),
         "augmented": dets([[12, 10, 52, 50]], [0], [0.8])}
    out = image_candidates(rec, d, CATEGORIES, ReviewMining())
    got = [(c["key"], c["partner_key"], c["image_id"], c["category_id"], c["bbox"], c["view"],
            c["agreed"]) for c in out]
    assert got == [
        ((7, "original", 0), (7, "augmented", 0), 7, 10, [10.0, 10.0, 40.0, 40.0], "original", True),
        ((7, "augmented", 0), (7, "original", 0), 7, 10, [12.0, 10.0, 40.0, 40.0], "augmented", True),
        ((7, "original", 1), None, 7, 20, [100.0, 100.0, 20.0, 30.0], "original", False)]
    assert [c["score"] for c in out] == pytest.approx([0.9, 0.8, 0.6])
    a, a2, b = out
    assert a["object"] is a2["object"]                  # one dict shared by its members
    oa, ob = a["object"], b["object"]
    assert (oa["key"], oa["image_id"], oa["category_id"], oa["view"], oa["on_label"]) == \
        ((7, "object", 0), 7, 10, "both", None)
    # fused box: weights 0.9/0.8 of x0 10 and 12: (9 + 9.6) / 1.7
    assert oa["bbox"] == pytest.approx([18.6 / 1.7, 10.0, 40.0, 40.0], abs=1e-4)
    assert oa["score"] == pytest.approx(0.85) and oa["view_scores"] == pytest.approx([0.9, 0.8])
    assert [c for c, _ in oa["classes"]] == [10]
    assert (ob["key"], ob["category_id"], ob["view"]) == ((7, "object", 1), 20, "original")
    assert ob["score"] == pytest.approx(0.3)


def test_settings_and_edge_cases():
    """No detections: no candidates. A crowd region over B drops it; max_objects 1 keeps B
    only (both views); a partner whose object was dropped is no partner."""
    empty = dets([], [], [])
    rec = SimpleNamespace(id=3, boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                          crowd_boxes=np.zeros((0, 4), np.float32))
    assert image_candidates(rec, {"original": empty, "augmented": empty}, CATEGORIES,
                            ReviewMining()) == []
    d = {"original": dets([[10, 10, 50, 50], [100, 100, 120, 130]], [0, 1], [0.9, 0.6]),
         "augmented": dets([[100, 100, 120, 131]], [1], [0.5])}
    crowded = SimpleNamespace(id=3, boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                              crowd_boxes=np.array([[90, 90, 130, 140]], np.float32))
    assert [c["key"] for c in image_candidates(crowded, d, CATEGORIES, ReviewMining())] == \
        [(3, "original", 0)]
    # B (both views: 0.55) and A (one view: 0.45): max_objects 1 keeps B
    top = image_candidates(rec, d, CATEGORIES, ReviewMining(max_objects=1))
    assert [(c["key"], c["partner_key"]) for c in top] == [
        ((3, "original", 1), (3, "augmented", 0)), ((3, "augmented", 0), (3, "original", 1))]
    # group_iou 0.99 splits B's two views (IoU 600/620 = 0.97) into two objects; rank "max"
    loose = image_candidates(rec, d, CATEGORIES, ReviewMining(group_iou=0.99, rank="max"))
    assert len({id(c["object"]) for c in loose}) == 3
    assert [c["object"]["score"] for c in loose][:2] == pytest.approx([0.9, 0.6])
    assert [c["agreed"] for c in loose] == [False, True, True]
    # ... and keeping 2 objects drops the augmented one: B's original box keeps no partner
    two = image_candidates(rec, d, CATEGORIES, ReviewMining(group_iou=0.99, rank="max", max_objects=2))
    assert [(c["key"], c["partner_key"]) for c in two] == [((3, "original", 0), None),
                                                           ((3, "original", 1), None)]
