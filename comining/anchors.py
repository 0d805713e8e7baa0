"""What other tools would flag as missing, on the same detections, as anchors for mining
quality (scored by ``comining.mining_quality.mining_scores``):

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
from collections import defaultdict
from typing import Iterable, Mapping

import numpy as np

from comining.errors import CominingError
from comining.matching import MATCH_IOU, iou_matrix, match_boxes, xywh_to_xyxy


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
