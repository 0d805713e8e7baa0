"""The COCO matching rule every evaluator here uses: a box hits an annotation of the SAME
class with IoU >= 0.5, one to one, greedily in descending score order (so the matches of
the top-k boxes are the first k steps of the full matching). Boxes in xyxy, torchvision's
box_iou in float64 (boxes.py is the torch-free xywh geometry of the app and store)."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou

MATCH_IOU = 0.5


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
