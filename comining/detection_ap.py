"""COCO box AP of a detector against complete annotations: ``coco_ap(gt, detections)``.

pycocotools (or faster-coco-eval, its drop-in C++ port) evaluates once over all
detections, its prints silenced. Values are fractions in [0, 1]; ``None`` where
pycocotools has no answer (its -1: no ground truth at all, or none in that size range,
e.g. APl on images smaller than 96 px).
"""

from __future__ import annotations

import contextlib
import io
import math

from comining.errors import CominingError, InputError

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


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


def coco_ap(gt: dict, detections: list[dict], *, evaluator: str = "auto",
            per_class: bool = False) -> dict:
    """COCO box AP of ``detections`` (results format: image_id, category_id, bbox xywh,
    score; the dataset's own ids) against the COCO dict ``gt``.

    Returns {AP, AP50, AP75, APs, APm, APl}: fractions in [0, 1], or None where
    pycocotools reports -1 (no ground truth in that range). Zero detections give 0.0
    wherever ground truth exists. Neither argument is modified. `evaluator`: auto,
    faster (faster-coco-eval) or pycocotools; both give the same numbers.

    per_class: also "per_class", {category_id: AP (IoU 0.5:0.95, all sizes) or None where
    the class has no ground truth}: a class the detector has not learned yet shows here,
    hidden in the mean.
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
    out = {k: (None if v < 0 else float(v)) for k, v in zip(AP_KEYS, stats)}
    if per_class:
        out["per_class"] = _per_class_ap(ev.eval["precision"], list(ev.params.catIds))
    return out


def _per_class_ap(precision, category_ids: list) -> dict:
    """AP of each class from COCOeval's accumulated precision [T, R, K, A, M]: the mean over
    IoU thresholds and recall points, area 'all' (index 0), the largest maxDets (-1), as
    pycocotools' summarize() takes AP; -1 entries (no ground truth) left out."""
    out = {}
    for k, category_id in enumerate(category_ids):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[category_id] = float(p.mean()) if p.size else None
    return out
