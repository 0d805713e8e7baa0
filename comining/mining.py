"""Mining a checkpoint for review: both views over the whole training set, recall first,
one proposal per object.

Training's co-generation keeps the paper's rules (comining.cogeneration); what an
annotator reviews is mined by its own settings (`ReviewMining`): every box of each view
above a low score floor (class-wise NMS, at most `max_per_view`), in original image
pixels, scored as the test-time detector scores them (FCOS: with centerness, measured
to rank the real objects first); then both views' boxes of an image become objects
(comining.objects): grouped across views and classes, ranked by both views (overlaps
softly suppressed), set apart where they are already labelled. Each view's boxes stay in the store as candidates (the page shows each branch's
own boxes); boxes both views found (same class, IoU >= 0.5) are marked agreed. A
checkpoint's candidates and objects are written in one transaction: all or nothing.

With `ReviewMining.scales` the images are also mined at other input sizes (multi-scale
test-time mining): every size's boxes of a view, mapped to original pixels, join before
grouping, so one object seen at two sizes is one object. A detector trained at a small
size misses small objects there and finds some of them at a larger size; so by default
(`ReviewMining.native`) a run trained on shrunk images is also mined at their own size
(`review_sizes`). With
`ReviewMining.flip` each size is also mined on the mirrored images (test-time flip), the
boxes mirrored back and joined the same way.

Boxes thinner than MIN_SIDE original pixels are not candidates: an early or weak detector
emits many such slivers (its regressed sides collapse), nobody can review them, and
export drops them anyway (`review.clean_boxes`). Training's co-generation drops them too
(`comining.cogeneration.MIN_SIDE`, in input pixels).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Subset
from torchvision.ops import remove_small_boxes

from comining import store
from comining.augment import augment_batch, make_view_augmenter
from comining.cogeneration import agreement
from comining.config import MiningThresholds, ReviewMining
from comining.data import DetectionDataset, boxes_to_original, make_loader
from comining.model import DenseForward, view_detections
from comining.objects import review_objects

AGREEMENT_IOU = 0.5
VIEWS = ("original", "augmented")
MIN_SIDE = 1.0   # original pixels, each way


@torch.no_grad()
def detect_views(dense: DenseForward, dataset: DetectionDataset, *, score_thresh: float,
                 nms_iou: float, max_per_image: int, augment: str, device: torch.device,
                 batch_size: int, num_workers: int, seed: int, rank: int = 0,
                 world_size: int = 1, class_score: bool = True,
                 flip: bool = False) -> Iterator[tuple]:
    """Yield (image record, {view: (boxes (N, 4) xyxy in original pixels, labels (N,)
    contiguous, scores (N,))}) for this rank's shard of `dataset`, both views; with
    `flip` the detector sees each image mirrored, its boxes mirrored back.

    Scores are the class scores co-generation uses (FCOS: before centerness; with
    class_score=False torchvision's test-time score, centerness included). The
    augmented view is drawn from a generator seeded by `seed`, without touching the
    training RNG, so mining a checkpoint twice gives the same boxes.
    """
    indices = [(i, flip) for i in range(rank, len(dataset), world_size)]
    loader = make_loader(Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                         num_workers=num_workers, pin_memory=device.type == "cuda",
                         generator=torch.Generator().manual_seed(seed))
    augmenter = make_view_augmenter(augment)
    record_of = {r.id: r for r in dataset.coco.images}
    was_training = dense.net.training
    dense.net.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for batch in loader:
                batch = batch.to(device)
                b = batch.images.shape[0]
                aug = augment_batch(batch.images, batch.valid_sizes, augmenter)
                head, anchors, per_level = dense(torch.cat([batch.images, aug]))
                sizes = [tuple(s) for s in batch.valid_sizes]
                per_view = {v: view_detections(dense.detector, {k: t[i * b:(i + 1) * b]
                                                                for k, t in head.items()},
                                               anchors[:b], per_level, sizes,
                                               score_thresh=score_thresh, nms_iou=nms_iou,
                                               max_per_image=max_per_image,
                                               class_score=class_score)
                            for i, v in enumerate(VIEWS)}
                for j, image_id in enumerate(batch.image_ids):
                    rec = record_of[image_id]
                    dets = {}
                    for v in VIEWS:
                        d = per_view[v][j]
                        boxes = boxes_to_original(d["boxes"].float().cpu(), batch.scales[j],
                                                  batch.valid_sizes[j], batch.flipped[j],
                                                  rec.width, rec.height)
                        keep = remove_small_boxes(boxes, MIN_SIDE)
                        dets[v] = (boxes[keep], d["labels"].cpu()[keep], d["scores"].float().cpu()[keep])
                    yield rec, dets
    finally:
        dense.net.train(was_training)


def image_candidates(rec, dets: dict, categories, review: ReviewMining, *,
                     crowd_ioa: float = 0.5) -> list[dict]:
    """One image's boxes of both views -> its candidates (the members of its kept
    objects), each with the `object` it belongs to (a dict shared by its members)."""
    flat = [(v, k) for v in VIEWS for k in range(len(dets[v][0]))]
    if not flat:
        return []
    boxes = torch.cat([dets[v][0] for v in VIEWS]).numpy().astype(np.float64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    labels = torch.cat([dets[v][1] for v in VIEWS]).tolist()
    cats = [categories.to_category_id(int(lab)) for lab in labels]
    scores = torch.cat([dets[v][2] for v in VIEWS]).numpy().astype(np.float64)
    views = [VIEWS.index(v) for v, _ in flat]
    gt = rec.boxes.astype(np.float64).reshape(-1, 4)
    crowd = rec.crowd_boxes.astype(np.float64).reshape(-1, 4)
    objs = review_objects(
        xywh, scores, cats, views,
        label_boxes=np.concatenate([gt[:, :2], gt[:, 2:] - gt[:, :2]], axis=1),
        label_classes=[categories.to_category_id(int(lab)) for lab in rec.labels],
        crowd_boxes=np.concatenate([crowd[:, :2], crowd[:, 2:] - crowd[:, :2]], axis=1),
        group_iou=review.group_iou, label_iou=review.label_iou, rank=review.rank,
        soft_sigma=review.soft_sigma, max_objects=review.max_objects, crowd_ioa=crowd_ioa)
    match_o, match_a = agreement(dets["original"][0], dets["original"][1],
                                 dets["augmented"][0], dets["augmented"][1], AGREEMENT_IOU)
    partner = {("original", k): ("augmented", int(m)) for k, m in enumerate(match_o.tolist()) if m >= 0}
    partner |= {("augmented", k): ("original", int(m)) for k, m in enumerate(match_a.tolist()) if m >= 0}
    image_id = rec.id
    out = []
    for n, o in enumerate(objs):
        obj = {"key": (image_id, "object", n), "image_id": image_id, "bbox": list(o.box),
               "score": o.score, "category_id": o.category_id,
               "classes": [list(c) for c in o.classes], "view_scores": list(o.view_scores),
               "view": o.view, "on_label": o.on_label}
        for i in o.members:
            v, k = flat[i]
            x, y, w, h = xywh[i].tolist()
            p = partner.get((v, k))
            out.append({"key": (image_id, v, k),
                        "partner_key": (image_id, *p) if p else None,
                        "image_id": image_id, "category_id": cats[i], "bbox": [x, y, w, h],
                        "score": float(scores[i]), "view": v, "agreed": p is not None,
                        "object": obj})
    kept = {c["key"] for c in out}
    for c in out:   # a partner in a dropped object is no partner in the store
        if c["partner_key"] not in kept:
            c["partner_key"] = None
    return out


def mine_dataset(dense: DenseForward, dataset: DetectionDataset, thresholds: MiningThresholds, *,
                 augment: str, device: torch.device, batch_size: int, num_workers: int,
                 seed: int, rank: int = 0, world_size: int = 1,
                 review: ReviewMining | None = None) -> list[dict]:
    """Candidates of both views over `dataset` (this rank's shard when world_size > 1),
    mined for review: `review` settings (default ReviewMining()); `thresholds` gives the
    NMS IoU (theta1) unless `review.nms_iou` is set, and the crowd rule.

    Each candidate: image_id, category_id, bbox [x, y, w, h] (original pixels), score,
    view, agreed, key, partner_key, and `object` (its object's dict: key, bbox, score,
    category_id, classes, view_scores, view, on_label).
    """
    review = review or ReviewMining()

    def detect(ds, flip):
        return detect_views(dense, ds, score_thresh=review.score_floor,
                            nms_iou=review.nms_iou or thresholds.nms_iou,
                            max_per_image=review.max_per_view, augment=augment, device=device,
                            batch_size=batch_size, num_workers=num_workers, seed=seed, rank=rank,
                            world_size=world_size, class_score=review.score == "class", flip=flip)

    # one pass per size (and mirror): the others first, held per image (boxes in original
    # pixels), then joined with the last pass's as it streams
    sized = [dataset if size == dataset.image_size else DetectionDataset(dataset.coco, size)
             for size in review_sizes(dataset, review)]
    *others, last = [(ds, flip) for ds in sized for flip in ((True, False) if review.flip
                                                             else (False,))]
    held: dict[int, list[dict]] = defaultdict(list)
    for ds, flip in others:
        for rec, dets in detect(ds, flip):
            held[rec.id].append(dets)
    out: list[dict] = []
    for rec, dets in detect(*last):
        for more in held.pop(rec.id, ()):
            dets = {v: tuple(torch.cat([a, b]) for a, b in zip(more[v], dets[v])) for v in VIEWS}
        out.extend(image_candidates(rec, dets, dataset.coco.categories, review,
                                    crowd_ioa=thresholds.crowd_ioa))
    return out


# The second pass's size: the images' own, at most this multiple of the training size
# (then rounded to the stride: 192 px for 160). A slightly larger look finds the objects
# the shrinking made small; enlarged further, the detector meets objects and textures at
# sizes it never trained on, and its confident boxes on them bury the missing objects.
# Measured on the mining benchmark's two generated sets (trained at 160 px on 256 px and
# 320 px images), erased labels found in as many queue items as labels were erased, at
# the last checkpoint: no second pass 559 / 532; at 1.2x 587 / 554; 1.4x 584 / 531; 1.6x
# 562 / 518; 2x 524 / 450 (benchmarks/results/mining.md, the "second pass at" variants).
NATIVE_MAX = 1.2


def review_sizes(dataset: DetectionDataset, review: ReviewMining) -> list[int]:
    """The input sizes (longer side, px) mined for review, in pass order: each of
    `review.scales` times the training size (1: the training size itself), then, with
    `review.native`, the images' own size (the median longer side, a multiple of 32, at
    most NATIVE_MAX times the training size) when it is larger than every one of those.
    A detector trained on shrunk images misses the objects that the shrinking made small;
    a slightly larger look finds them (NATIVE_MAX says how much larger, and why)."""
    sizes = [dataset.image_size if s == 1 else scaled_size(dataset.image_size, s)
             for s in review.scales]
    if review.native and dataset.coco.images:
        own = float(np.median([max(r.width, r.height) for r in dataset.coco.images]))
        native = scaled_size(dataset.image_size, min(own / dataset.image_size, NATIVE_MAX))
        if native > max(sizes):
            sizes.append(native)
    return sizes


def scaled_size(image_size: int, scale: float) -> int:
    """An input size `scale` times the training size, a multiple of 32 (the FPN's stride)."""
    return max(32, int(round(image_size * scale / 32)) * 32)


def gather_candidates(candidates: list[dict], world_size: int) -> list[dict]:
    if world_size == 1:
        return candidates
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, candidates)
    merged = [c for part in gathered for c in part]
    merged.sort(key=lambda c: (c["image_id"], VIEWS.index(c["view"]), c["key"][2]))
    return merged


def record(run_dir: Path, *, iteration: int, checkpoint_path: Path, thresholds: MiningThresholds,
           candidates: list[dict], review: ReviewMining | None = None) -> dict:
    """Store one checkpoint's mining (one transaction); returns its counts: boxes per
    view, agreed boxes, objects, and objects on a label."""
    review = review or ReviewMining()
    conn = store.connect(Path(run_dir) / store.STORE_NAME)
    try:
        store.replace_checkpoint_candidates(conn, iteration=iteration, path=str(checkpoint_path),
                                            thresholds=thresholds.as_dict(), candidates=candidates,
                                            settings=review.as_dict())
    finally:
        conn.close()
    objs = {c["object"]["key"]: c["object"] for c in candidates if "object" in c}
    return {v: sum(1 for c in candidates if c["view"] == v) for v in VIEWS} | {
        "agreed": sum(1 for c in candidates if c["agreed"] and c["view"] == "original"),
        "objects": sum(1 for o in objs.values() if o["on_label"] is None),
        "on_label": sum(1 for o in objs.values() if o["on_label"] is not None)}
