"""Mining a checkpoint: co-generation over the whole training set with BOTH views.

Every kept pseudo box of each view becomes a candidate in the run's store, in original
image pixels; boxes both views found (same class, IoU >= 0.5) are marked agreed. A
checkpoint's candidates are written in one transaction: all or nothing.

Boxes thinner than MIN_SIDE original pixels are not candidates: an early or weak detector
emits many such slivers (its regressed sides collapse), nobody can review them, and
export drops them anyway (`review.clean_boxes`). Training's co-generation keeps them, as
the authors' code does.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import Subset
from torchvision.ops import remove_small_boxes

from comining import store
from comining.augment import augment_batch, make_view_augmenter
from comining.cogeneration import agreement
from comining.config import MiningThresholds
from comining.data import DetectionDataset, boxes_to_original, make_loader
from comining.model import DenseForward
from comining.siamese import pseudo_boxes

AGREEMENT_IOU = 0.5
VIEWS = ("original", "augmented")
MIN_SIDE = 1.0   # original pixels, each way


@torch.no_grad()
def mine_dataset(dense: DenseForward, dataset: DetectionDataset, thresholds: MiningThresholds, *,
                 augment: str, device: torch.device, batch_size: int, num_workers: int,
                 seed: int, rank: int = 0, world_size: int = 1) -> list[dict]:
    """Candidates of both views over `dataset` (this rank's shard when world_size > 1).

    The augmented view is drawn from a generator seeded by `seed`, without touching the
    training RNG, so mining a checkpoint twice gives the same candidates.
    """
    coco = dataset.coco
    indices = list(range(rank, len(dataset), world_size))
    loader = make_loader(Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                         num_workers=num_workers, pin_memory=device.type == "cuda",
                         generator=torch.Generator().manual_seed(seed))
    augmenter = make_view_augmenter(augment)
    record_of = {r.id: r for r in coco.images}
    was_training = dense.net.training
    dense.net.eval()
    out: list[dict] = []
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for batch in loader:
                batch = batch.to(device)
                b = batch.images.shape[0]
                aug = augment_batch(batch.images, batch.valid_sizes, augmenter)
                head, anchors, per_level = dense(torch.cat([batch.images, aug]))
                per_view = {}
                for i, view in enumerate(VIEWS):
                    h = {k: v[i * b:(i + 1) * b] for k, v in head.items()}
                    per_view[view] = pseudo_boxes(dense.detector, h, anchors[:b], per_level, batch,
                                                  thresholds)
                for j, image_id in enumerate(batch.image_ids):
                    rec = record_of[image_id]
                    boxes, labels, scores = {}, {}, {}
                    for v in VIEWS:
                        b = boxes_to_original(per_view[v][j]["boxes"].cpu(), batch.scales[j],
                                              batch.valid_sizes[j], batch.flipped[j],
                                              rec.width, rec.height)
                        keep = remove_small_boxes(b, MIN_SIDE)
                        boxes[v] = b[keep]
                        labels[v] = per_view[v][j]["labels"].cpu()[keep]
                        scores[v] = per_view[v][j]["scores"].cpu()[keep]
                    match_o, match_a = agreement(boxes["original"], labels["original"],
                                                 boxes["augmented"], labels["augmented"],
                                                 AGREEMENT_IOU)
                    matches = {"original": (match_o, "augmented"), "augmented": (match_a, "original")}
                    for v in VIEWS:
                        match, other = matches[v]
                        for k in range(len(boxes[v])):
                            x0, y0, x1, y1 = boxes[v][k].tolist()
                            partner = int(match[k])
                            out.append({
                                "key": (image_id, v, k),
                                "partner_key": (image_id, other, partner) if partner >= 0 else None,
                                "image_id": image_id,
                                "category_id": coco.categories.to_category_id(int(labels[v][k])),
                                "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "score": float(scores[v][k]), "view": v, "agreed": partner >= 0})
    finally:
        dense.net.train(was_training)
    return out


def gather_candidates(candidates: list[dict], world_size: int) -> list[dict]:
    if world_size == 1:
        return candidates
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, candidates)
    merged = [c for part in gathered for c in part]
    merged.sort(key=lambda c: (c["image_id"], VIEWS.index(c["view"]), c["key"][2]))
    return merged


def record(run_dir: Path, *, iteration: int, checkpoint_path: Path, thresholds: MiningThresholds,
           candidates: list[dict]) -> dict:
    conn = store.connect(Path(run_dir) / store.STORE_NAME)
    try:
        store.replace_checkpoint_candidates(conn, iteration=iteration, path=str(checkpoint_path),
                                            thresholds=thresholds.as_dict(), candidates=candidates)
    finally:
        conn.close()
    return {v: sum(1 for c in candidates if c["view"] == v) for v in VIEWS} | {
        "agreed": sum(1 for c in candidates if c["agreed"] and c["view"] == "original")}


def mine_checkpoint(run_dir, checkpoint: str | int = "last", *, thresholds: MiningThresholds | None = None,
                    device: str = "auto", batch_size: int | None = None, num_workers: int | None = None) -> dict:
    """Re-mine one saved checkpoint of a run (other thresholds allowed) into its store."""
    from comining.engine import RunContext  # the engine owns run loading

    store.connect(Path(run_dir) / store.STORE_NAME).close()  # a bad store fails before the work
    ctx = RunContext.open(Path(run_dir), device=device)
    it, path = ctx.checkpoint_path(checkpoint)
    ctx.load_weights(path)
    thresholds = thresholds or ctx.config.thresholds
    cands = mine_dataset(ctx.dense, ctx.mining_dataset, thresholds, augment=ctx.config.augment,
                         device=ctx.device, batch_size=batch_size or ctx.config.batch_size,
                         num_workers=ctx.config.num_workers if num_workers is None else num_workers,
                         seed=ctx.config.seed + it)
    counts = record(Path(run_dir), iteration=it, checkpoint_path=path, thresholds=thresholds,
                    candidates=cands)
    return {"iteration": it, **counts}
