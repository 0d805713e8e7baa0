"""Evaluation as pure functions: detection AP, and how well mining recovers erased boxes.

Two questions, two functions:

* ``coco_ap(gt, detections)``: COCO box AP of a detector against complete annotations
  (pycocotools, evaluated once over all detections, its prints silenced). Values are
  fractions in [0, 1]; ``None`` where pycocotools has no answer (its -1: no ground truth
  at all, or none in that size range, e.g. APl on images smaller than 96 px).
* ``mining_quality(candidates, sparse, hidden)``: for every mined checkpoint and every
  selection of the mined boxes (``original`` view, ``augmented`` view, their ``union``
  and the boxes both views ``agreed`` on), the recall of the erased annotations and the
  precision of the mined boxes, with the precision/recall curve over the score.

Matching rule everywhere (also for the anchors below): a box hits an annotation of the
SAME class with IoU >= 0.5, one to one, greedily in descending score order (the COCO
rule, so the matches of the top-k boxes are the first k steps of the full matching and
the curve is consistent). For mining:

* recall    = erased annotations hit / erased annotations (non-crowd);
* precision = mined boxes that hit an erased OR a kept annotation / mined boxes. A hit
  on a kept annotation should not happen after the theta2 filter, but such a box is a
  real object, so it counts as correct (and is counted apart in ``n_hit_kept``).
  A mined box that hits nothing but lies mostly (IoA >= 0.5) inside a same-class crowd
  region is ignored (``n_ignored``), as COCO ignores detections on crowd regions.

Anchors, scored by the same ``mining_scores``:

* ``fiftyone_missing``: FiftyOne's ``compute_mistakenness`` rule: a prediction with
  confidence > 0.95 that matches no annotation at IoU 0.5 (FiftyOne matches there
  with ``classwise=False``: an annotation of any class counts) is "possibly missing".
* ``datumaro_missing``: Datumaro's ``MissingAnnotationDetection`` rule: a prediction
  that no annotation of any class overlaps at IoU >= 0.75 is missing, one (the best)
  per cluster of such predictions.
* ``cleanlab_overlooked``: cleanlab's ``object_detection`` overlooked-box scores
  (optional dependency ``cleanlab``).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import defaultdict
from typing import Iterable, Mapping

import numpy as np
import torch
from torchvision.ops import box_iou

from comining.errors import CominingError, InputError

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SELECTIONS = ("original", "augmented", "union", "agreed")
MATCH_IOU = 0.5
CURVE_POINTS = 101   # at most this many points in a returned precision/recall curve


# ----------------------------------------------------------------------------- boxes


def xywh_to_xyxy(boxes) -> np.ndarray:
    """(N, 4) COCO [x, y, w, h] -> (N, 4) float64 [x1, y1, x2, y2]."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def iou_matrix(a_xyxy, b_xyxy) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M) IoU, by torchvision.ops.box_iou (float64)."""
    a = torch.as_tensor(np.asarray(a_xyxy, dtype=np.float64).reshape(-1, 4))
    b = torch.as_tensor(np.asarray(b_xyxy, dtype=np.float64).reshape(-1, 4))
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return box_iou(a, b).numpy()


def ioa_matrix(a_xyxy, regions_xyxy) -> np.ndarray:
    """(N, M): the share of each box of ``a`` that lies inside each region."""
    a = np.asarray(a_xyxy, dtype=np.float64).reshape(-1, 4)
    r = np.asarray(regions_xyxy, dtype=np.float64).reshape(-1, 4)
    if len(a) == 0 or len(r) == 0:
        return np.zeros((len(a), len(r)))
    lt = np.maximum(a[:, None, :2], r[None, :, :2])
    rb = np.minimum(a[:, None, 2:], r[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    return np.where(area[:, None] > 0, inter / np.maximum(area[:, None], 1e-12), 0.0)


def match_boxes(pred_xyxy, pred_labels, pred_scores, gt_xyxy, gt_labels, *,
                iou_thresh: float = MATCH_IOU, class_aware: bool = True) -> np.ndarray:
    """Greedy one-to-one matching, COCO style.

    Predictions are visited in descending score (ties: input order); each takes the
    still-unmatched ground-truth box of its class (any class when ``class_aware`` is
    False) with the highest IoU, if that IoU is >= ``iou_thresh``.

    Returns an int array (N,): the matched ground-truth index per prediction, or -1.
    """
    pred_labels = np.asarray(pred_labels).reshape(-1)
    gt_labels = np.asarray(gt_labels).reshape(-1)
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    n, m = len(pred_labels), len(gt_labels)
    matched = np.full(n, -1, dtype=np.int64)
    if n == 0 or m == 0:
        return matched
    iou = iou_matrix(pred_xyxy, gt_xyxy)
    if class_aware:
        iou = np.where(pred_labels[:, None] == gt_labels[None, :], iou, -1.0)
    taken = np.zeros(m, dtype=bool)
    for i in np.argsort(-scores, kind="stable"):
        row = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(row))
        if row[j] >= iou_thresh:
            matched[i] = j
            taken[j] = True
    return matched


# ----------------------------------------------------------------------------- COCO AP


def _check_detections(detections, image_ids: set, category_ids: set) -> list[dict]:
    if not isinstance(detections, (list, tuple)):
        raise InputError(None, f"detections must be a list of dicts, not {type(detections).__name__}")
    clean, problems = [], []
    for k, d in enumerate(detections):
        try:
            bbox = [float(v) for v in d["bbox"]]
            score = float(d["score"])
            image_id, category_id = d["image_id"], d["category_id"]
        except (KeyError, TypeError, ValueError):
            problems.append(f"detection {k} lacks image_id, category_id, bbox [x, y, w, h] or score")
            continue
        if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox + [score]):
            problems.append(f"detection {k} has a bad bbox or score")
            continue
        if image_id not in image_ids:
            problems.append(f"detection {k} is on image {image_id!r}, not in the ground truth")
            continue
        if category_id not in category_ids:
            problems.append(f"detection {k} has category {category_id!r}, not in the ground truth")
            continue
        clean.append({"id": len(clean) + 1, "image_id": image_id, "category_id": category_id,
                      "bbox": bbox, "score": score, "area": max(bbox[2], 0.0) * max(bbox[3], 0.0),
                      "iscrowd": 0})
    if problems:
        from comining.errors import summarize_problems
        raise InputError(None, f"{len(problems)} detections do not fit the ground truth: "
                               f"{summarize_problems(problems)}")
    return clean


def _gt_for_pycocotools(gt: dict) -> dict:
    """A copy pycocotools can index: every annotation with id, area and iscrowd."""
    anns = []
    used = {a["id"] for a in gt.get("annotations", []) if "id" in a}
    next_id = max(used, default=0) + 1
    for a in gt.get("annotations", []):
        a = dict(a)
        if "id" not in a:
            a["id"], next_id = next_id, next_id + 1
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
        anns.append(a)
    return {"images": list(gt["images"]), "categories": list(gt["categories"]),
            "annotations": anns}


def _evaluator_classes(evaluator: str):
    """(COCO, COCOeval) of the chosen evaluator. 'auto': faster-coco-eval (a drop-in C++
    port of pycocotools, several times faster) when installed, else pycocotools."""
    if evaluator in ("auto", "faster"):
        try:
            from faster_coco_eval import COCO, COCOeval_faster
            return COCO, lambda gt, dt: COCOeval_faster(gt, dt, iouType="bbox", print_function=lambda *a: None)
        except ImportError:
            if evaluator == "faster":
                raise CominingError("evaluator 'faster' needs faster-coco-eval (pip install faster-coco-eval)")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    return COCO, lambda gt, dt: COCOeval(gt, dt, iouType="bbox")


def coco_ap(gt: dict, detections: list[dict], *, evaluator: str = "auto") -> dict:
    """COCO box AP of ``detections`` (results format: image_id, category_id, bbox xywh,
    score; the dataset's own ids) against the COCO dict ``gt``.

    Returns {AP, AP50, AP75, APs, APm, APl}: fractions in [0, 1], or None where
    pycocotools reports -1 (no ground truth in that range). Zero detections give 0.0
    wherever ground truth exists. Neither argument is modified. `evaluator`: auto,
    faster (faster-coco-eval) or pycocotools; both give the same numbers.
    """
    COCO, make_eval = _evaluator_classes(evaluator)

    if not isinstance(gt, dict) or "images" not in gt or "categories" not in gt:
        raise InputError(None, "ground truth must be a COCO dict with images and categories")
    image_ids = {im["id"] for im in gt["images"]}
    category_ids = {c["id"] for c in gt["categories"]}
    dets = _check_detections(detections, image_ids, category_ids)

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        coco_gt = COCO()
        coco_gt.dataset = _gt_for_pycocotools(gt)
        coco_gt.createIndex()
        coco_dt = COCO()  # built by hand: loadRes mutates its input and fails on []
        coco_dt.dataset = {"images": coco_gt.dataset["images"],
                           "categories": coco_gt.dataset["categories"], "annotations": dets}
        coco_dt.createIndex()
        ev = make_eval(coco_gt, coco_dt)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats[:6]
    return {k: (None if v < 0 else float(v)) for k, v in zip(AP_KEYS, stats)}


# ----------------------------------------------------------------------------- mining


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


def _curve(score, hit_erased, correct, n_erased: int):
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
    curve, ap, r_at_p90 = _curve(score, hit_erased, correct, targets.n_erased)
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


# ----------------------------------------------------------------------------- anchors


def _annotations_of(annotations) -> list[dict]:
    if isinstance(annotations, Mapping):
        annotations = annotations.get("annotations", [])
    return list(annotations)


def fiftyone_missing(predictions: Iterable[dict], annotations, *, conf: float = 0.95,
                     iou: float = MATCH_IOU) -> list[dict]:
    """FiftyOne's 'possibly missing' rule (``fiftyone.brain.compute_mistakenness``).

    Predictions are matched one to one to the annotations (a COCO dict or a list) at
    IoU >= ``iou`` in descending confidence, with any class (FiftyOne evaluates there
    with ``classwise=False``; crowd annotations count too); an unmatched prediction with
    confidence > ``conf`` is returned (the original dicts).
    """
    preds = list(predictions)
    anns = _annotations_of(annotations)
    ann_by_image = defaultdict(list)
    for a in anns:
        ann_by_image[a["image_id"]].append(a)
    pred_by_image = defaultdict(list)
    for k, p in enumerate(preds):
        pred_by_image[p["image_id"]].append(k)
    missing = []
    for image_id, idx in pred_by_image.items():
        gts = ann_by_image.get(image_id, [])
        m = match_boxes(xywh_to_xyxy([preds[k]["bbox"] for k in idx]),
                        [preds[k]["category_id"] for k in idx],
                        [preds[k]["score"] for k in idx],
                        xywh_to_xyxy([a["bbox"] for a in gts]),
                        [a["category_id"] for a in gts], iou_thresh=iou, class_aware=False)
        missing.extend((k, preds[k]) for k, j in zip(idx, m) if j < 0 and preds[k]["score"] > conf)
    return [p for _, p in sorted(missing, key=lambda t: t[0])]


def datumaro_missing(predictions: Iterable[dict], annotations, *, iou: float = 0.75,
                     score_threshold: float | None = None) -> list[dict]:
    """Datumaro's missing-annotation rule (``datumaro.plugins.missing_annotation_detection.
    MissingAnnotationDetection``, label-agnostic matching, pairwise IoU 0.75).

    Predictions (above ``score_threshold``, if given) that overlap an annotation of any
    class at IoU >= ``iou`` are dropped; the rest are clustered at the same IoU, greedily
    by score, and the best of each cluster is returned (the original dicts, input order).
    """
    preds = [p for p in predictions if score_threshold is None or p["score"] > score_threshold]
    ann_by_image = defaultdict(list)
    for a in _annotations_of(annotations):
        ann_by_image[a["image_id"]].append(a["bbox"])
    by_image = defaultdict(list)
    for k, p in enumerate(preds):
        by_image[p["image_id"]].append(k)
    keep = []
    for image_id, idx in by_image.items():
        idx = sorted(idx, key=lambda k: -preds[k]["score"])
        boxes = xywh_to_xyxy([preds[k]["bbox"] for k in idx])
        on_label = (iou_matrix(boxes, xywh_to_xyxy(ann_by_image.get(image_id, []))) >= iou).any(axis=1)
        self_iou = iou_matrix(boxes, boxes)
        kept: list[int] = []
        for i in range(len(idx)):
            if not on_label[i] and not any(self_iou[i, j] >= iou for j in kept):
                kept.append(i)
        keep.extend(idx[i] for i in kept)
    return [preds[k] for k in sorted(keep)]


def cleanlab_overlooked(predictions: Iterable[dict], coco: dict, *,
                        high_probability_threshold: float | None = None) -> list[dict]:
    """cleanlab's overlooked-box scores for the predictions on ``coco``'s images.

    Returns a copy of each prediction that cleanlab scores, with ``overlooked_score``
    (cleanlab's: low = likely an overlooked object) and ``score`` replaced by
    1 - overlooked_score, so that ``mining_scores`` ranks the likeliest first.
    Predictions cleanlab leaves unscored (NaN: those that match a label) are dropped.
    ``high_probability_threshold``: cleanlab's (only predictions above it are scored;
    its default 0.95 scores nothing when a detector's scores stay lower).
    Needs the optional ``cleanlab`` package (pip install cleanlab).
    """
    try:
        from cleanlab.object_detection.rank import compute_overlooked_box_scores
    except ImportError as exc:
        why = "" if (exc.name or "").startswith("cleanlab") else f"; importing it failed: {exc}"
        raise CominingError("cleanlab_overlooked needs the optional package cleanlab "
                            f"(pip install cleanlab){why}") from None
    cat_ids = sorted(c["id"] for c in coco["categories"])
    label_of = {cid: i for i, cid in enumerate(cat_ids)}
    image_ids = [im["id"] for im in coco["images"]]
    anns = defaultdict(list)
    for a in coco.get("annotations", []):
        if not a.get("iscrowd", 0):
            anns[a["image_id"]].append(a)
    preds = list(predictions)
    if not preds:
        return []
    per_image = defaultdict(list)
    for k, p in enumerate(preds):
        per_image[p["image_id"]].append(k)
    labels, cl_preds, order = [], [], []
    for image_id in image_ids:
        a = anns.get(image_id, [])
        labels.append({"bboxes": xywh_to_xyxy([x["bbox"] for x in a]).astype(np.float32),
                       "labels": np.asarray([label_of[x["category_id"]] for x in a], dtype=np.int64)})
        per_class = [np.zeros((0, 5), dtype=np.float32) for _ in cat_ids]
        ks = [k for k in per_image.get(image_id, []) if preds[k]["category_id"] in label_of]
        rows_by_class = defaultdict(list)
        for k in ks:
            rows_by_class[label_of[preds[k]["category_id"]]].append(k)
        flat = []
        for lab, rows in sorted(rows_by_class.items()):
            arr = np.concatenate([xywh_to_xyxy([preds[k]["bbox"] for k in rows]),
                                  np.asarray([[preds[k]["score"]] for k in rows])], axis=1)
            per_class[lab] = arr.astype(np.float32)
        for lab in range(len(cat_ids)):
            flat.extend(rows_by_class.get(lab, []))
        cl_preds.append(per_class)
        order.append(flat)
    with contextlib.redirect_stdout(io.StringIO()):
        scores = compute_overlooked_box_scores(labels=labels, predictions=cl_preds,
                                               high_probability_threshold=high_probability_threshold)
    out = []
    for flat, s in zip(order, scores):
        for k, v in zip(flat, np.asarray(s, dtype=np.float64).reshape(-1)):
            if np.isfinite(v):
                out.append(dict(preds[k], overlooked_score=float(v), score=float(1.0 - v)))
    return out
