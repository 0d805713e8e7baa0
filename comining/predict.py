"""Detections of a trained run's original view, in COCO results format."""

from __future__ import annotations

from pathlib import Path

import torch

from comining.coco import load_coco
from comining.data import DetectionDataset, boxes_to_original, make_loader
from comining.checkpoints import load_checkpoint, load_model_state, load_run_config, resolve_checkpoint
from comining.device import precision, resolve_device
from comining.errors import InputError
from comining.model import DenseForward, build_detector, view_detections


@torch.no_grad()
def predict_dataset(run_dir, images_dir, ann_path, *, checkpoint: str | int = "last",
                    device: str = "auto", batch_size: int = 8, num_workers: int = 2,
                    score_thresh: float = 0.05, amp: str | None = None,
                    channels_last: str | None = None) -> list[dict]:
    """Test-time detections (torchvision's scores, test NMS, 100 per image) over a dataset
    whose categories are the run's (by id); boxes as COCO xywh in original pixels.

    amp / channels_last: as TrainConfig's (None: the run's own settings; "auto" is on for
    CUDA only). Decoding and NMS stay fp32 either way."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if amp is not None or channels_last is not None:
        config.amp = amp if amp is not None else config.amp
        config.channels_last = channels_last if channels_last is not None else config.channels_last
        config.validate()
    _, path = resolve_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path)
    coco = load_coco(ann_path, images_dir)
    run_ids = sorted(c["id"] for c in state["categories"])
    if list(coco.categories.ids) != run_ids:
        raise InputError(ann_path, f"categories {list(coco.categories.ids)} differ from the run's {run_ids}")
    dev = resolve_device(device)
    detector = build_detector(config.detector, config.backbone, len(run_ids),
                              image_size=config.image_size, weights_backbone="none",
                              fpn_channels=config.fpn_channels, init=config.init,
                              variant=config.variant)
    load_model_state(detector, state["model"], path, config)
    autocast_dtype, channels_last = precision(config, dev)
    detector.to(dev).eval()
    if channels_last:
        detector.to(memory_format=torch.channels_last)
    dense = DenseForward(detector, autocast_dtype=autocast_dtype, channels_last=channels_last)
    dense.net.eval()
    loader = make_loader(DetectionDataset(coco, config.image_size), batch_size=batch_size,
                         shuffle=False, num_workers=num_workers, pin_memory=dev.type == "cuda")
    record_of = {r.id: r for r in coco.images}
    results = []
    for batch in loader:
        batch = batch.to(dev)
        head, anchors, per_level = dense(batch.images)
        dets = view_detections(detector, head, anchors, per_level, list(batch.valid_sizes),
                               score_thresh=score_thresh, nms_iou=detector.nms_thresh,
                               max_per_image=100, class_score=False)
        for j, d in enumerate(dets):
            rec = record_of[batch.image_ids[j]]
            boxes = boxes_to_original(d["boxes"].cpu(), batch.scales[j], batch.valid_sizes[j],
                                      batch.flipped[j], rec.width, rec.height)
            for box, score, label in zip(boxes.tolist(), d["scores"].tolist(), d["labels"].tolist()):
                results.append({"image_id": rec.id, "category_id": coco.categories.to_category_id(label),
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                "score": float(score)})
    return results
