"""Co-generation: turn one view's detections into pseudo boxes for the other view.

Pure tensor functions over torchvision.ops; the rules, as the authors' code runs them:
  1. keep detections whose per-class score > tau (score_thresh);
  2. class-wise NMS at theta1 (nms_iou), at most `max_per_image` boxes;
  3. drop a box when an annotation OF THE SAME CLASS overlaps it with IoU > theta2 (gt_iou)
     (a box overlapping only other-class annotations is kept);
  4. drop a box lying mostly (intersection / its area > crowd_ioa) inside a crowd region;
  5. (refine rounds) drop a box an annotator rejected: IoU >= rejected_iou with a rejected
     box, whatever the classes (known background is never a pseudo box).
One rule the authors' code lacks: a box thinner than MIN_SIDE input pixels either way is
no pseudo box. A detector trained from scratch scores such slivers above tau in its first
steps (dozens a batch, their regressed sides collapsed to 0-3 px). FCOS assigns them no
location, but RetinaNet matches every sliver to its best anchors (low-quality matches) and
regresses them toward a zero-width box: on an untrained RetinaNet, one 0 x 3 px sliver per
image quadrupled the box loss of a batch (a real 10 px box: x1.8).
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms, box_area, box_iou, remove_small_boxes

from comining.config import MiningThresholds

MIN_SIDE = 1.0      # input pixels, each way: a thinner detection is no pseudo box


def intersection_over_first(boxes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """(N, 4), (M, 4) xyxy -> (N, M): area(box_i & region_j) / area(box_i)."""
    lt = torch.maximum(boxes[:, None, :2], regions[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], regions[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    return inter / box_area(boxes).clamp(min=1e-6)[:, None]


def co_generate(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                crowd_boxes: torch.Tensor | None, thresholds: MiningThresholds,
                rejected_boxes: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the detections kept as pseudo boxes, best score first.

    boxes (N, 4) xyxy, scores (N,), labels (N,): one image's detections of one view.
    gt_boxes (G, 4), gt_labels (G,): its annotations; crowd_boxes (C, 4) or None;
    rejected_boxes (R, 4) or None: boxes the annotator rejected.
    """
    keep = torch.nonzero(scores > thresholds.score_thresh).flatten()
    keep = keep[remove_small_boxes(boxes[keep].float(), MIN_SIDE)]
    if keep.numel() == 0:
        return keep
    nms_keep = batched_nms(boxes[keep].float(), scores[keep].float(), labels[keep],
                           thresholds.nms_iou)  # sorted by decreasing score
    keep = keep[nms_keep][: thresholds.max_per_image]
    if gt_boxes.numel() and keep.numel():
        iou = box_iou(boxes[keep].float(), gt_boxes.float())
        same_class = labels[keep][:, None] == gt_labels[None, :]
        keep = keep[~((iou > thresholds.gt_iou) & same_class).any(dim=1)]
    if crowd_boxes is not None and crowd_boxes.numel() and keep.numel():
        inside = intersection_over_first(boxes[keep].float(), crowd_boxes.float())
        keep = keep[~(inside > thresholds.crowd_ioa).any(dim=1)]
    if rejected_boxes is not None and rejected_boxes.numel() and keep.numel():
        iou = box_iou(boxes[keep].float(), rejected_boxes.float())
        keep = keep[~(iou >= thresholds.rejected_iou).any(dim=1)]
    return keep


def agreement(boxes_a: torch.Tensor, labels_a: torch.Tensor, boxes_b: torch.Tensor,
              labels_b: torch.Tensor, iou_thresh: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """For each box of view a, the index of its best same-class match in view b with
    IoU >= iou_thresh, else -1; and the same for view b. Shapes (Na,), (Nb,)."""
    na, nb = len(boxes_a), len(boxes_b)
    if na == 0 or nb == 0:
        return (torch.full((na,), -1, dtype=torch.long), torch.full((nb,), -1, dtype=torch.long))
    iou = box_iou(boxes_a.float(), boxes_b.float())
    iou = torch.where(labels_a[:, None] == labels_b[None, :], iou, torch.zeros_like(iou))
    best_b, idx_b = iou.max(dim=1)
    best_a, idx_a = iou.max(dim=0)
    match_a = torch.where(best_b >= iou_thresh, idx_b, torch.full_like(idx_b, -1))
    match_b = torch.where(best_a >= iou_thresh, idx_a, torch.full_like(idx_a, -1))
    return match_a, match_b
