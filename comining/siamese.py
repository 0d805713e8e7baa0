"""One training step of a method: which views run, and what supervises each view.

`original`/`augmented`: one view, annotations only. `joint`: both views, annotations only.
`self`: the original view supervised by annotations + its own pseudo boxes.
`comining`: each view supervised by annotations + the OTHER view's pseudo boxes.
Pseudo boxes are full-weight positives, computed without gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from comining.augment import augment_batch
from comining.cogeneration import co_generate
from comining.config import METHOD_PSEUDO_SOURCE, METHOD_VIEWS, MiningThresholds
from comining.data import Batch
from comining.model import DenseForward, slice_head, view_detections, view_loss


@dataclass
class StepOutput:
    loss: torch.Tensor                  # the sum of the views' losses
    view_losses: dict[str, torch.Tensor]  # view -> its summed loss (detached)
    loss_parts: dict[str, torch.Tensor]  # "original/classification" -> detached value
    pseudo_counts: dict[str, int]       # view -> pseudo boxes it PRODUCED this step
    targets: dict[str, list[dict]]      # view -> the targets its loss used


def build_view_targets(method: str, annotations: list[dict], pseudo: dict[str, list[dict]]) -> dict:
    """Targets per view: annotations plus the pseudo boxes of the view the method names."""
    out = {}
    for view in METHOD_VIEWS[method]:
        source = METHOD_PSEUDO_SOURCE[method].get(view)
        if source is None:
            out[view] = [{"boxes": a["boxes"], "labels": a["labels"]} for a in annotations]
        else:
            out[view] = [{"boxes": torch.cat([a["boxes"], p["boxes"]]),
                          "labels": torch.cat([a["labels"], p["labels"]])}
                         for a, p in zip(annotations, pseudo[source])]
    return out


def pseudo_boxes(detector, head, anchors, per_level, batch: Batch, thresholds: MiningThresholds):
    """Co-generation over one view's head outputs: per image {boxes, labels, scores}."""
    dets = view_detections(detector, head, anchors, per_level,
                           [tuple(s) for s in batch.valid_sizes],
                           score_thresh=thresholds.score_thresh, nms_iou=thresholds.nms_iou,
                           max_per_image=thresholds.max_per_image)
    out = []
    for d, t in zip(dets, batch.targets):
        keep = co_generate(d["boxes"], d["scores"], d["labels"], t["boxes"], t["labels"],
                           t.get("crowd_boxes"), thresholds, t.get("rejected_boxes"))
        out.append({"boxes": d["boxes"][keep].detach(), "labels": d["labels"][keep],
                    "scores": d["scores"][keep].detach()})
    return out


def training_step(dense: DenseForward, batch: Batch, method: str, thresholds: MiningThresholds,
                  augmenter) -> StepOutput:
    views = METHOD_VIEWS[method]
    inputs = {"original": batch.images}
    if "augmented" in views:
        inputs["augmented"] = augment_batch(batch.images, batch.valid_sizes, augmenter)
    stacked = torch.cat([inputs[v] for v in views])
    head, anchors, per_level = dense(stacked)
    b = batch.images.shape[0]
    heads = {v: slice_head(head, i * b, (i + 1) * b) for i, v in enumerate(views)}

    sources = set(METHOD_PSEUDO_SOURCE[method].values())
    pseudo = {v: pseudo_boxes(dense.detector, heads[v], anchors[:b], per_level, batch, thresholds)
              for v in sources}
    targets = build_view_targets(method, batch.targets, pseudo)

    view_losses, parts = {}, {}
    for v in views:
        losses = view_loss(dense.detector, heads[v], anchors[:b], per_level, targets[v])
        view_losses[v] = sum(losses.values())
        # kept on the device: reading them is a host sync, done only when logging
        parts.update({f"{v}/{k}": val.detach() for k, val in losses.items()})
    total = sum(view_losses.values())
    return StepOutput(loss=total, view_losses={k: v.detach() for k, v in view_losses.items()},
                      loss_parts=parts,
                      pseudo_counts={v: sum(len(p["boxes"]) for p in pseudo[v]) for v in pseudo},
                      targets=targets)
