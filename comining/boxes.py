"""Box geometry on COCO xywh boxes: IoU (pycocotools' C code) and clipping to the image.

No torch here: the review app and the store import it."""

from __future__ import annotations

import math

import numpy as np

from comining.errors import InputError


def iou_matrix(a, b) -> np.ndarray:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4), both COCO xywh -> (N, M),
    by pycocotools (its C box IoU: no torch in the review app)."""
    from pycocotools import mask as coco_mask
    a = np.ascontiguousarray(np.asarray(a, np.float64).reshape(-1, 4))
    b = np.ascontiguousarray(np.asarray(b, np.float64).reshape(-1, 4))
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return np.asarray(coco_mask.iou(a, b, [0] * len(b)), np.float64).reshape(len(a), len(b))


def iou(a, b) -> float:
    """IoU of two xywh boxes (plain Python: fast for single pairs)."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def clean_box(box, width: int, height: int) -> tuple[float, float, float, float]:
    """A finite xywh box clipped to the image; InputError when nothing usable is left."""
    try:
        x, y, w, h = map(float, box)
    except (TypeError, ValueError):
        raise InputError(None, f"a box must be 4 numbers [x, y, w, h], got {box!r}") from None
    isfinite = math.isfinite   # (a hot path of large exports: no generators here)
    if not (isfinite(x) and isfinite(y) and isfinite(w) and isfinite(h)):
        raise InputError(None, f"box {list(box)} has NaN or infinite values")
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise InputError(None, f"box {[round(v, 1) for v in (x, y, w, h)]} is empty inside its "
                               f"{width}x{height} image")
    return (round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2))


def clean_boxes(boxes, widths, heights) -> tuple[np.ndarray, np.ndarray]:
    """`clean_box` over many boxes at once: (N, 4) xywh and the N image sizes ->
    (the clipped boxes rounded to 0.01 px, a mask of those that are finite and keep at
    least 1 px each way)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    wid, hei = np.asarray(widths, np.float64), np.asarray(heights, np.float64)
    with np.errstate(invalid="ignore"):
        x1 = np.clip(b[:, 0], 0, wid)
        y1 = np.clip(b[:, 1], 0, hei)
        x2 = np.clip(b[:, 0] + b[:, 2], 0, wid)
        y2 = np.clip(b[:, 1] + b[:, 3], 0, hei)
        ok = np.isfinite(b).all(axis=1) & (x2 - x1 >= 1) & (y2 - y1 >= 1)
    out = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1).round(2)
    return out, ok
