"""Objects: what mining proposes to an annotator, one per object, not one per box.

Mining for review keeps many boxes per image (recall first, see `ReviewMining`), and a
detector often puts several boxes on one object: one per view, and one per class it
hesitates between. Pure functions over one image's boxes turn them into objects:

1. group: both views' boxes, ANY class, greedily by score; a box joins the first
   object whose seed (its best box) it overlaps with IoU >= group_iou;
2. each object gets one box (the members' score-weighted mean: members agree on where,
   not always on what), its class alternatives ranked, the best score of each view, and
   one ranking score from both views (`RANKS`, default the mean of the two views' best
   scores: an object both views see outranks one that a single view sees more strongly);
3. overlapping objects are mostly one object boxed twice (a box of a part, a box shifted
   by half its size): an object's ranking score decays with its overlap with each better
   object of its image and with the image's annotations (known objects), the Gaussian of
   Soft-NMS (Bodla et al., ICCV 2017; sigma 0.5, its default): score *= exp(-IoU^2 / sigma).
   It reorders, it removes nothing;
4. objects on what is already labelled are not missing objects: one overlapping an
   annotation (any class) with IoU >= label_iou is dropped when its best class is the
   label's, and kept apart (`on_label` = the label's class) when it is another: there a
   label may carry the wrong class;
5. objects lying inside a crowd region are dropped, and the best `max_objects` are kept.

Boxes are COCO xywh in original image pixels; no torch here (the store uses it too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from comining.boxes import iou_matrix

VIEWS = ("original", "augmented")

# Ranking score of an object (or of one class of it) from the two views' best scores
# (N, 2) -> (N,). A view that did not see it scores 0.
RANKS = {
    "mean": lambda s: s.mean(axis=1),
    "max": lambda s: s.max(axis=1),
    "min": lambda s: s.min(axis=1),
    "noisy_or": lambda s: 1.0 - (1.0 - s[:, 0]) * (1.0 - s[:, 1]),
    "geometric": lambda s: np.sqrt(s[:, 0] * s[:, 1]),
}


@dataclass(frozen=True)
class MinedObject:
    """One object proposed on one image."""

    box: tuple[float, float, float, float]       # xywh, fused from the members
    score: float                                 # ranking score (RANKS[rank] of view_scores)
    classes: tuple[tuple[int, float], ...]       # (category_id, score), best first
    view_scores: tuple[float, float]             # best member score of each view, 0 if none
    members: tuple[int, ...]                     # indices of the input boxes, best first
    on_label: int | None = None                  # class of the annotation it overlaps, if any

    @property
    def category_id(self) -> int:
        return self.classes[0][0]

    @property
    def view(self) -> str:
        seen = [v for v, s in zip(VIEWS, self.view_scores) if s > 0]
        return "both" if len(seen) == 2 else (seen[0] if seen else VIEWS[0])   # 0 scores: say original


def group_objects(boxes, scores, labels, views, *, group_iou: float = 0.5,
                  rank: str = "mean") -> list[MinedObject]:
    """One image's boxes of both views -> its objects, best ranked first.

    boxes (N, 4) xywh; scores (N,); labels (N,) category ids; views (N,) 0 = original,
    1 = augmented (or the view names).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels, np.int64).reshape(-1)
    views = np.asarray([VIEWS.index(v) if isinstance(v, str) else int(v) for v in views], np.int64)
    if len(boxes) == 0:
        return []
    combine = RANKS[rank]
    order = np.argsort(-scores, kind="stable")
    iou = iou_matrix(boxes[order], boxes[order])
    seeds: list[int] = []             # positions in `order` of each group's best box
    groups: list[list[int]] = []
    for pos in range(len(order)):
        hit = next((g for g, s in enumerate(seeds) if iou[pos, s] >= group_iou), None)
        if hit is None:
            seeds.append(pos)
            groups.append([pos])
        else:
            groups[hit].append(pos)
    out = []
    for members in groups:
        idx = order[members]
        view_scores = np.zeros(2)
        per_class: dict[int, np.ndarray] = {}
        for i in idx:
            v, c, s = views[i], int(labels[i]), scores[i]
            view_scores[v] = max(view_scores[v], s)
            best = per_class.setdefault(c, np.zeros(2))
            best[v] = max(best[v], s)
        cats = list(per_class)
        class_scores = combine(np.stack([per_class[c] for c in cats]))
        ranked = sorted(zip(cats, class_scores.tolist()), key=lambda t: (-t[1], t[0]))
        w = scores[idx] / scores[idx].sum() if scores[idx].sum() > 0 else np.full(len(idx), 1 / len(idx))
        x0, y0 = boxes[idx, 0], boxes[idx, 1]
        x1, y1 = x0 + boxes[idx, 2], y0 + boxes[idx, 3]
        fx0, fy0, fx1, fy1 = (float(w @ a) for a in (x0, y0, x1, y1))
        out.append(MinedObject(box=(fx0, fy0, fx1 - fx0, fy1 - fy0),
                               score=float(combine(view_scores[None])[0]),
                               classes=tuple((c, float(s)) for c, s in ranked),
                               view_scores=(float(view_scores[0]), float(view_scores[1])),
                               members=tuple(int(i) for i in idx)))
    out.sort(key=lambda o: -o.score)
    return out


def soft_suppress(objects: list[MinedObject], label_boxes=(), *, sigma: float = 0.5) -> list[MinedObject]:
    """Gaussian Soft-NMS over one image's objects, any class: greedily by current score,
    each object decays the scores of the objects left by exp(-IoU^2 / sigma); then each
    object's score decays by its best overlap with an annotation the same way. Returns
    the objects (scores changed, classes kept), best first."""
    if not objects or not sigma:
        return list(objects)
    boxes = np.array([o.box for o in objects], np.float64)
    scores = np.array([o.score for o in objects], np.float64)
    decay = np.exp(-iou_matrix(boxes, boxes) ** 2 / sigma)
    left = list(range(len(objects)))
    while left:
        best = max(left, key=lambda k: (scores[k], -k))
        left.remove(best)
        for k in left:
            scores[k] *= decay[best, k]
    labels = np.asarray(label_boxes, np.float64).reshape(-1, 4)
    if len(labels):
        scores *= np.exp(-iou_matrix(boxes, labels).max(axis=1) ** 2 / sigma)
    out = [_with(o, score=float(v)) for o, v in zip(objects, scores)]
    out.sort(key=lambda o: -o.score)
    return out


def flag_labelled(objects: list[MinedObject], label_boxes, label_classes, *,
                  label_iou: float = 0.5) -> list[MinedObject]:
    """Objects that are not an existing annotation: one overlapping an annotation (any
    class) with IoU >= label_iou is dropped when its best class is that annotation's
    class, else kept with `on_label` = the annotation's class (its best overlap)."""
    label_boxes = np.asarray(label_boxes, np.float64).reshape(-1, 4)
    if not objects or len(label_boxes) == 0:
        return list(objects)
    label_classes = np.asarray(label_classes, np.int64).reshape(-1)
    iou = iou_matrix(np.array([o.box for o in objects]), label_boxes)
    out = []
    for o, row in zip(objects, iou):
        j = int(np.argmax(row))
        if row[j] < label_iou:
            out.append(o)
        elif int(label_classes[j]) != o.category_id:
            out.append(_with(o, on_label=int(label_classes[j])))
    return out


def drop_in_crowd(objects: list[MinedObject], crowd_boxes, *, max_ioa: float = 0.5) -> list[MinedObject]:
    """Drop objects lying mostly (intersection / own area > max_ioa) inside a crowd region."""
    crowd = np.asarray(crowd_boxes, np.float64).reshape(-1, 4)
    if not objects or len(crowd) == 0:
        return list(objects)
    b = np.array([o.box for o in objects])
    lt = np.maximum(b[:, None, :2], crowd[None, :, :2])
    rb = np.minimum(b[:, None, :2] + b[:, None, 2:], crowd[None, :, :2] + crowd[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    ioa = inter / np.maximum(b[:, 2] * b[:, 3], 1e-12)[:, None]
    return [o for o, inside in zip(objects, (ioa > max_ioa).any(axis=1)) if not inside]


def review_objects(boxes, scores, labels, views, *, label_boxes=(), label_classes=(),
                   crowd_boxes=(), group_iou: float = 0.5, label_iou: float = 0.5,
                   rank: str = "mean", soft_sigma: float | None = 0.5,
                   max_objects: int | None = None, crowd_ioa: float = 0.5) -> list[MinedObject]:
    """The whole rule for one image: group, rank (softly suppressing overlaps), set
    apart what is labelled, drop crowd, keep the best `max_objects` (missing-object
    candidates and on-label ones alike)."""
    objs = group_objects(boxes, scores, labels, views, group_iou=group_iou, rank=rank)
    objs = soft_suppress(objs, label_boxes, sigma=soft_sigma)
    objs = flag_labelled(objs, label_boxes, label_classes, label_iou=label_iou)
    objs = drop_in_crowd(objs, crowd_boxes, max_ioa=crowd_ioa)
    return objs if max_objects is None else objs[:max_objects]


def _with(o: MinedObject, **changes) -> MinedObject:
    from dataclasses import replace
    return replace(o, **changes)
