"""How well mining recovers erased boxes: ``mining_quality(candidates, sparse, hidden)``.

For every mined checkpoint and every selection of the mined boxes (``original`` view,
``augmented`` view, their ``union`` and the boxes both views ``agreed`` on): the recall
of the erased annotations and the precision of the mined boxes, with the
precision/recall curve over the score. Boxes match annotations by ``comining.matching``.

* recall    = erased annotations hit / erased annotations (non-crowd);
* precision = mined boxes that hit an erased OR a kept annotation / mined boxes. A hit
  on a kept annotation should not happen after the theta2 filter, but such a box is a
  real object, so it counts as correct (and is counted apart in ``n_hit_kept``).
  A mined box that hits nothing but lies mostly (IoA >= 0.5) inside a same-class crowd
  region is ignored (``n_ignored``), as COCO ignores detections on crowd regions.

The anchors (comining.anchors) are scored by the same ``mining_scores``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np

from comining.matching import MATCH_IOU, ioa_matrix, iou_matrix, match_boxes, xywh_to_xyxy

SELECTIONS = ("original", "augmented", "union", "agreed")
CURVE_POINTS = 101   # at most this many points in a returned precision/recall curve


def _field(c, name, default=None):
    try:
        return c[name]
    except (KeyError, IndexError):
        return default


def normalize_candidates(candidates: Iterable) -> list[dict]:
    """Store rows (sqlite3.Row of table candidates) or dicts -> plain dicts with
    checkpoint, image_id, category_id, bbox [x, y, w, h], score, view, agreed, id."""
    out = []
    for k, c in enumerate(candidates):
        bbox = _field(c, "bbox")
        if bbox is None:
            bbox = [c["x"], c["y"], c["w"], c["h"]]
        out.append({
            "id": _field(c, "id", k),
            "checkpoint": _field(c, "checkpoint", 0),
            "image_id": c["image_id"],
            "category_id": c["category_id"],
            "bbox": [float(v) for v in bbox],
            "score": float(c["score"]),
            "view": _field(c, "view", "original"),
            "agreed": _field(c, "agreed"),
        })
    return out


class _Targets:
    """The annotations of the training images, grouped by image, for fast matching."""

    def __init__(self, sparse: dict, hidden: dict):
        self.image_ids = [im["id"] for im in sparse.get("images", [])]
        known = set(self.image_ids)
        boxes, labels, erased = defaultdict(list), defaultdict(list), defaultdict(list)
        crowd, crowd_labels = defaultdict(list), defaultdict(list)
        self.n_erased = 0
        for source, is_erased in ((sparse, False), (hidden, True)):
            for a in source.get("annotations", []):
                if a["image_id"] not in known:
                    continue
                if a.get("iscrowd", 0):
                    crowd[a["image_id"]].append(a["bbox"])
                    crowd_labels[a["image_id"]].append(a["category_id"])
                    continue
                boxes[a["image_id"]].append(a["bbox"])
                labels[a["image_id"]].append(a["category_id"])
                erased[a["image_id"]].append(is_erased)
                self.n_erased += is_erased
        self.boxes = {i: xywh_to_xyxy(b) for i, b in boxes.items()}
        self.labels = {i: np.asarray(v) for i, v in labels.items()}
        self.erased = {i: np.asarray(v, dtype=bool) for i, v in erased.items()}
        self.crowd = {i: xywh_to_xyxy(b) for i, b in crowd.items()}
        self.crowd_labels = {i: np.asarray(v) for i, v in crowd_labels.items()}
        self.known = known


def _outcomes(boxes: list[dict], targets: _Targets, iou_thresh: float):
    """Per box (in the given order): (score, hit_erased, hit_kept, ignored)."""
    by_image = defaultdict(list)
    for k, b in enumerate(boxes):
        by_image[b["image_id"]].append(k)
    score = np.array([b["score"] for b in boxes], dtype=np.float64)
    hit_erased = np.zeros(len(boxes), dtype=bool)
    hit_kept = np.zeros(len(boxes), dtype=bool)
    ignored = np.zeros(len(boxes), dtype=bool)
    empty = np.zeros((0, 4))
    for image_id, idx in by_image.items():
        pred = xywh_to_xyxy([boxes[k]["bbox"] for k in idx])
        plab = np.asarray([boxes[k]["category_id"] for k in idx])
        m = match_boxes(pred, plab, score[idx], targets.boxes.get(image_id, empty),
                        targets.labels.get(image_id, np.zeros(0)), iou_thresh=iou_thresh)
        er = targets.erased.get(image_id, np.zeros(0, dtype=bool))
        for local, j in enumerate(m):
            if j >= 0:
                (hit_erased if er[j] else hit_kept)[idx[local]] = True
        if image_id in targets.crowd:
            ioa = ioa_matrix(pred, targets.crowd[image_id])
            same = plab[:, None] == targets.crowd_labels[image_id][None, :]
            in_crowd = ((ioa >= 0.5) & same).any(axis=1) & (m < 0)
            ignored[np.asarray(idx)[in_crowd]] = True
    return score, hit_erased, hit_kept, ignored


def _ratio(a: int, b: int):
    return a / b if b else None


def pr_curve(score, hit_erased, correct, n_erased: int):
    """Precision/recall after each distinct score (descending), plus summary numbers."""
    order = np.argsort(-score, kind="stable")
    s, tp, he = score[order], np.cumsum(correct[order]), np.cumsum(hit_erased[order])
    if len(s) == 0:
        return [], 0.0 if n_erased else None, 0.0 if n_erased else None
    last = np.r_[s[1:] != s[:-1], True]          # the last box of each distinct score
    k = np.nonzero(last)[0]
    prec = tp[k] / (k + 1)
    rec = he[k] / n_erased if n_erased else np.full(len(k), np.nan)
    points = [{"score": float(s[i]), "precision": float(p),
               "recall": (None if not n_erased else float(r))}
              for i, p, r in zip(k, prec, rec)]
    if len(points) > CURVE_POINTS:
        keep = np.unique(np.linspace(0, len(points) - 1, CURVE_POINTS).round().astype(int))
        points = [points[i] for i in keep]
    if not n_erased:
        return points, None, None
    # Area under the interpolated curve (precision made non-increasing in recall).
    env = np.maximum.accumulate(prec[::-1])[::-1]
    steps = np.diff(np.r_[0.0, rec])
    ap = float(np.sum(steps * env))
    ok = prec >= 0.9
    r_at_p90 = float(rec[ok].max()) if ok.any() else 0.0
    return points, ap, r_at_p90


def mining_scores(boxes: Iterable, sparse: dict, hidden: dict, *,
                  iou_thresh: float = MATCH_IOU, _targets: _Targets | None = None) -> dict:
    """Score one set of mined boxes (dicts or store rows with image_id, category_id,
    bbox or x/y/w/h, score) on the training set ``sparse`` whose erased annotations
    are ``hidden`` (both COCO dicts).

    Returns recall, precision (None when undefined: nothing erased / nothing mined),
    ap (area under the precision/recall curve), recall_at_p90 (the best recall at a
    score threshold where precision >= 0.9), counts and the curve (at most 101 points,
    one per distinct score, descending: score, precision, recall).
    """
    targets = _targets or _Targets(sparse, hidden)
    boxes = [b for b in normalize_candidates(boxes) if b["image_id"] in targets.known]
    score, hit_erased, hit_kept, ignored = _outcomes(boxes, targets, iou_thresh)
    keep = ~ignored
    score, hit_erased, hit_kept = score[keep], hit_erased[keep], hit_kept[keep]
    correct = hit_erased | hit_kept
    n_mined, n_correct = int(len(score)), int(correct.sum())
    n_hit_erased = int(hit_erased.sum())
    curve, ap, r_at_p90 = pr_curve(score, hit_erased, correct, targets.n_erased)
    return {
        "recall": _ratio(n_hit_erased, targets.n_erased),
        "precision": _ratio(n_correct, n_mined),
        "ap": ap,
        "recall_at_p90": r_at_p90,
        "n_mined": n_mined,
        "n_correct": n_correct,
        "n_hit_erased": n_hit_erased,
        "n_hit_kept": int(hit_kept.sum()),
        "n_false": n_mined - n_correct,
        "n_ignored": int(ignored.sum()),
        "n_erased": targets.n_erased,
        "curve": curve,
    }


def select(candidates: list[dict], selection: str, *, iou_thresh: float = MATCH_IOU) -> list[dict]:
    """One checkpoint's normalized candidates -> the boxes of a selection.

    original / augmented: that view's boxes. union: both views, a box dropped when a
    higher-scored box of the OTHER view has its class and IoU >= 0.5 (one box per
    object found by both). agreed: the original view's boxes the augmented view also
    found (the store's ``agreed`` flag; computed the same way when absent).
    """
    if selection in ("original", "augmented"):
        return [c for c in candidates if c["view"] == selection]
    if selection == "union":
        out = []
        for group in _by_image(candidates).values():
            group = sorted(group, key=lambda c: -c["score"])
            xyxy = xywh_to_xyxy([c["bbox"] for c in group])
            iou = iou_matrix(xyxy, xyxy)
            kept: list[int] = []
            for i, c in enumerate(group):
                if not any(group[j]["view"] != c["view"]
                           and group[j]["category_id"] == c["category_id"]
                           and iou[i, j] >= iou_thresh for j in kept):
                    kept.append(i)
            out.extend(group[i] for i in kept)
        return out
    if selection == "agreed":
        orig = [c for c in candidates if c["view"] == "original"]
        if all(c["agreed"] is not None for c in orig):
            return [c for c in orig if c["agreed"]]
        out = []
        for group in _by_image(candidates).values():
            o = [c for c in group if c["view"] == "original"]
            a = [c for c in group if c["view"] == "augmented"]
            if not o or not a:
                continue
            iou = iou_matrix(xywh_to_xyxy([c["bbox"] for c in o]),
                             xywh_to_xyxy([c["bbox"] for c in a]))
            same = (np.asarray([c["category_id"] for c in o])[:, None]
                    == np.asarray([c["category_id"] for c in a])[None, :])
            out.extend(c for c, ok in zip(o, ((iou >= iou_thresh) & same).any(axis=1)) if ok)
        return out
    raise ValueError(f"unknown selection {selection!r}; expected one of {', '.join(SELECTIONS)}")


def _by_image(cands: list[dict]) -> dict:
    g = defaultdict(list)
    for c in cands:
        g[c["image_id"]].append(c)
    return g


def mining_quality(candidates: Iterable, sparse: dict, hidden: dict, *,
                   selections: Iterable[str] = SELECTIONS,
                   iou_thresh: float = MATCH_IOU) -> dict:
    """Mining quality per checkpoint and per selection.

    ``candidates``: the store's candidates rows (any number of checkpoints) or dicts
    with checkpoint, image_id, category_id, bbox, score, view, agreed. ``sparse``: the
    training COCO dict (the kept annotations); ``hidden``: the erased annotations.

    Returns {checkpoint: {selection: mining_scores(...)}}, checkpoints ascending.
    """
    targets = _Targets(sparse, hidden)
    cands = normalize_candidates(candidates)
    by_ckpt = defaultdict(list)
    for c in cands:
        by_ckpt[c["checkpoint"]].append(c)
    out = {}
    for ckpt in sorted(by_ckpt):
        out[ckpt] = {sel: mining_scores(select(by_ckpt[ckpt], sel, iou_thresh=iou_thresh),
                                        sparse, hidden, iou_thresh=iou_thresh, _targets=targets)
                     for sel in selections}
    return out
