"""The review queue measured as annotator effort: missing objects found per decision.

An annotator reviews a checkpoint's objects in queue order (best ranked first; objects on
a label of another class are apart, see comining.objects). Against the erased labels of a
sparsified set (HIDDEN), walking the queue:

* an item FINDS an erased object when its box matches it with IoU >= 0.5, one to one,
  greedily in queue order; object level: whatever the class (the annotator fixes the
  class in one step); class level: only with its best class;
* ``ap``: the area under the queue's precision/recall curve (precision = items that found
  an object / items reviewed, recall = erased objects found / erased);
* ``recall_at``: the recall after reviewing 0.5x, 1x and 2x as many items as labels were
  erased (the effort a user feels);
* ``recall_at_p90``: the best recall over queue prefixes whose precision is >= 0.9.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np

from comining.matching import match_boxes, xywh_to_xyxy
from comining.mining_quality import pr_curve

EFFORTS = (0.5, 1.0, 2.0)     # items reviewed, per erased label
LEVELS = ("object", "class")


def queue_order(objects: Iterable[dict]) -> list[dict]:
    """Missing-object candidates in the order an annotator meets them: best score first
    (ties: image, id); objects on a label are not in the queue."""
    objs = [o for o in objects if o.get("on_label") is None]
    return sorted(objs, key=lambda o: (-o["score"], o["image_id"], o.get("id", 0)))


def _erased(hidden: dict, image_ids: set) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    by_image = defaultdict(list)
    for a in hidden.get("annotations", []):
        if a["image_id"] in image_ids and not a.get("iscrowd", 0):
            by_image[a["image_id"]].append(a)
    return {im: (xywh_to_xyxy([a["bbox"] for a in anns]), np.asarray([a["category_id"] for a in anns]))
            for im, anns in by_image.items()}


def found(queue: list[dict], erased: dict, *, class_aware: bool, iou_thresh: float = 0.5) -> np.ndarray:
    """(N,) bool: whether each queue item finds an erased object (one to one, queue order)."""
    hit = np.zeros(len(queue), dtype=bool)
    by_image = defaultdict(list)
    for k, o in enumerate(queue):
        by_image[o["image_id"]].append(k)
    for image_id, idx in by_image.items():
        if image_id not in erased:
            continue
        gt, gt_labels = erased[image_id]
        # decreasing scores keep the queue order (ties: match_boxes keeps input order)
        rank = -np.arange(len(idx), dtype=np.float64)
        m = match_boxes(xywh_to_xyxy([queue[k]["bbox"] for k in idx]),
                        [queue[k]["category_id"] for k in idx], rank, gt, gt_labels,
                        iou_thresh=iou_thresh, class_aware=class_aware)
        hit[np.asarray(idx)[m >= 0]] = True
    return hit


def queue_scores(objects: Iterable[dict], sparse: dict, hidden: dict, *,
                 iou_thresh: float = 0.5) -> dict:
    """One checkpoint's objects (dicts: image_id, bbox xywh, category_id, score,
    on_label) scored as a queue against HIDDEN; see the module docstring.

    Returns {n_items, n_erased, object: {...}, class: {...}}, each level with ap,
    recall_at {"0.5": .., "1": .., "2": ..}, found_at (the counts), recall_at_p90,
    recall (the whole queue) and found.
    """
    image_ids = {im["id"] for im in sparse.get("images", [])}
    queue = [o for o in queue_order(objects) if o["image_id"] in image_ids]
    erased = _erased(hidden, image_ids)
    n_erased = sum(len(v[1]) for v in erased.values())
    out = {"n_items": len(queue), "n_erased": n_erased}
    rank = -np.arange(len(queue), dtype=np.float64)   # distinct: one curve point per item
    for level in LEVELS:
        hit = found(queue, erased, class_aware=level == "class", iou_thresh=iou_thresh)
        _, ap, r_p90 = pr_curve(rank, hit, hit, n_erased)
        cum = np.cumsum(hit)
        found_at = {}
        for f in EFFORTS:
            k = min(len(queue), int(round(f * n_erased)))
            found_at[f"{f:g}"] = int(cum[k - 1]) if k > 0 else 0
        out[level] = {
            "ap": ap, "recall_at_p90": r_p90,
            "found": int(hit.sum()), "recall": hit.sum() / n_erased if n_erased else None,
            "found_at": found_at,
            "recall_at": {k: (v / n_erased if n_erased else None) for k, v in found_at.items()},
        }
    return out


def queue_quality(objects: Iterable, sparse: dict, hidden: dict, *, iou_thresh: float = 0.5) -> dict:
    """`queue_scores` per checkpoint of the store's objects rows (or dicts with a
    `checkpoint`): {checkpoint: scores}, checkpoints ascending."""
    by_ckpt = defaultdict(list)
    for o in objects:
        o = dict(o)
        if "bbox" not in o:
            o["bbox"] = [o["x"], o["y"], o["w"], o["h"]]
        by_ckpt[o["checkpoint"]].append(o)
    return {c: queue_scores(by_ckpt[c], sparse, hidden, iou_thresh=iou_thresh) for c in sorted(by_ckpt)}


def effort_line(s: dict) -> str:
    """What a person understands: 'reviewing the first 679 items finds 540 of the 679
    erased objects (AP 0.81)'."""
    n = s["n_erased"]
    if not n:
        return f"{s['n_items']} objects to review (no erased labels to score them against)"
    items = (f"the first {n} items" if s["n_items"] >= n else
             f"all {s['n_items']} item{'s' if s['n_items'] != 1 else ''}")
    return (f"reviewing {items} finds {s['object']['found_at']['1']} of the {n} "
            f"erased objects ({s['object']['found_at']['2']} within {min(2 * n, s['n_items'])}; "
            f"queue AP {s['object']['ap']:.2f}, {s['class']['ap']:.2f} with the right class)")


def missing_left(pending: Iterable[dict], accepted: Iterable[dict], hidden: dict,
                 iou_thresh: float = 0.5) -> dict[int, int]:
    """The truth the remaining-objects estimate is checked against: per class, the erased
    labels (HIDDEN) not found yet (no accepted box at IoU >= iou_thresh, any class) that
    a pending object of the queue overlaps at IoU >= iou_thresh (any class). `pending`
    and `accepted`: dicts with image_id and bbox [x, y, w, h]."""
    from comining.boxes import iou_matrix

    by_image: dict[int, dict[str, list]] = defaultdict(lambda: {"pending": [], "accepted": []})
    for kind, boxes in (("pending", pending), ("accepted", accepted)):
        for b in boxes:
            by_image[b["image_id"]][kind].append(b["bbox"])
    left: dict[int, int] = defaultdict(int)
    for a in hidden.get("annotations", []):
        if a.get("iscrowd", 0) or a["image_id"] not in by_image:
            continue
        boxes = by_image[a["image_id"]]
        found = boxes["accepted"] and iou_matrix([a["bbox"]], boxes["accepted"]).max() >= iou_thresh
        if not found and boxes["pending"] and iou_matrix([a["bbox"]], boxes["pending"]).max() >= iou_thresh:
            left[a["category_id"]] += 1
    return dict(sorted(left.items()))
