"""Our Siamese layer is torchvision's math.

The engine never calls `model(images, targets)`: it runs DenseForward (uint8 -> normalize ->
backbone + head, anchors cached) and then the detector's own `compute_loss` /
`postprocess_detections` through `view_loss` / `view_detections`. These tests feed the same
images and targets to stock torchvision (`model(images, targets)` in train mode,
`model(images)` in eval mode) and to our layer, and compare.

Set-up that makes the comparison exact: square S x S (or H x W) uint8 images, each side a
multiple of 32, a detector built with min_size/max_size equal to the sides, so torchvision's
transform is an identity resize (checked below) and its padding adds nothing; fp32 on the CPU.
The heads are re-initialised with larger weights so that hundreds of anchors pass the test
score threshold (0.05): with the stock focal prior every score is ~0.01 and both sides would
trivially return no detection.

Tolerance (fp32): losses rtol 1e-5 / atol 1e-6; parameter gradients rtol 1e-4 / atol 1e-6;
boxes atol 1e-4 px, scores atol 1e-6, labels and detection counts exact. In practice the
results are bit-identical (the same ops run on the same tensors).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torchvision.models import detection

from comining.config import MiningThresholds
from comining.data import Batch
from comining.model import TEST_NMS, DenseForward, build_detector, view_detections, view_loss
from comining.siamese import training_step

NUM_CLASSES = 5
LOSS_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)
BOX_TOL = dict(rtol=0.0, atol=1e-4)
SCORE_TOL = dict(rtol=0.0, atol=1e-6)

CASES = [("retinanet", "resnet18", (128, 128)), ("fcos", "resnet18", (128, 128)),
         ("retinanet", "mobilenet_v3", (96, 160)), ("fcos", "mobilenet_v3", (96, 160))]


def _calibrate_batchnorm(detector: nn.Module, images: torch.Tensor) -> None:
    """Running statistics = this batch's (a random backbone's init statistics make eval-mode
    features vanish), so eval mode gives features of a sane scale too."""
    bns = [m for m in detector.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass sets the batch statistics
    detector.train()
    with torch.no_grad():
        detector.backbone(DenseForward(detector).normalize(images))
    for m in bns:
        m.momentum = 0.1


def _spread_head(detector: nn.Module, seed: int) -> None:
    """He-initialised head towers and a wide classification layer: scores spread over (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    cls_head = detector.head.classification_head
    with torch.no_grad():
        for m in detector.head.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
        cls_head.cls_logits.weight.mul_(0.5)
        cls_head.cls_logits.bias.fill_(-3.0)
        reg = detector.head.regression_head.bbox_reg
        reg.weight.mul_(0.3)  # box deltas of order 1: boxes about the anchor size
        if isinstance(detector, detection.FCOS):
            reg.bias.fill_(1.0)  # FCOS's distances go through a ReLU: keep most of them positive


def _inputs(shape, seed: int):
    g = torch.Generator().manual_seed(seed)
    h, w = shape
    images = torch.randint(0, 256, (3, 3, h, w), dtype=torch.uint8, generator=g)
    targets = []
    for n in (4, 0, 2):  # the middle image has no annotation
        wh = torch.rand(n, 2, generator=g) * (min(h, w) / 2 - 12) + 12
        xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1),
                        "labels": torch.randint(0, NUM_CLASSES, (n,), generator=g)})
    return images, targets


@pytest.fixture(params=CASES, ids=[f"{d}-{b}-{s[0]}x{s[1]}" for d, b, s in CASES])
def case(request):
    detector_name, backbone, (h, w) = request.param
    torch.manual_seed(0)
    detector = build_detector(detector_name, backbone, NUM_CLASSES, image_size=max(h, w),
                              weights_backbone="none", fpn_channels=32)
    detector.transform.min_size = (min(h, w),)
    detector.transform.max_size = max(h, w)
    images, targets = _inputs((h, w), seed=2)
    _calibrate_batchnorm(detector, images)
    _spread_head(detector, seed=1)
    return detector_name, detector, images, targets


def _stock_inputs(images):
    return [im.float() / 255.0 for im in images]


def test_stock_transform_is_identity(case):
    """torchvision's normalize + resize + batch on our inputs == DenseForward.normalize."""
    _, detector, images, targets = case
    dense = DenseForward(detector)
    detector.eval()
    image_list, new_targets = detector.transform(_stock_inputs(images), copy.deepcopy(targets))
    assert image_list.image_sizes == [tuple(images.shape[-2:])] * len(images)
    assert image_list.tensors.shape == images.shape
    torch.testing.assert_close(image_list.tensors, dense.normalize(images), rtol=0, atol=0)
    for new, old in zip(new_targets, targets):
        torch.testing.assert_close(new["boxes"], old["boxes"], rtol=0, atol=0)


def test_losses_and_gradients_match_torchvision(case):
    _, detector, images, targets = case
    params = [p for p in detector.parameters() if p.requires_grad]
    detector.train()

    stock = detector(_stock_inputs(images), copy.deepcopy(targets))
    stock_grads = torch.autograd.grad(sum(stock.values()), params, allow_unused=True)

    dense = DenseForward(detector)  # fp32, no autocast, NCHW: the reference setting
    head, anchors, per_level = dense(images)
    ours = view_loss(detector, head, anchors, per_level, targets)
    our_grads = torch.autograd.grad(sum(ours.values()), params, allow_unused=True)

    assert set(ours) == set(stock) and len(ours) >= 2
    for k in stock:
        assert torch.isfinite(stock[k]) and stock[k] > 0, k
        torch.testing.assert_close(ours[k], stock[k], **LOSS_TOL, msg=lambda m, k=k: f"loss {k}: {m}")
    n_compared = 0
    for p, g_stock, g_ours in zip(params, stock_grads, our_grads):
        assert (g_stock is None) == (g_ours is None)
        if g_stock is not None:
            torch.testing.assert_close(g_ours, g_stock, **GRAD_TOL)
            n_compared += 1
    assert n_compared > 10


def test_training_step_original_is_torchvision_loss(case):
    """The engine's step for `original` (one view, annotations only) is torchvision's loss."""
    name, detector, images, targets = case
    detector.train()
    stock = detector(_stock_inputs(images), copy.deepcopy(targets))
    h, w = images.shape[-2:]
    batch = Batch(images=images,
                  targets=[dict(t, crowd_boxes=torch.zeros((0, 4))) for t in targets],
                  image_ids=[1, 2, 3], scales=[(1.0, 1.0)] * 3, valid_sizes=[(h, w)] * 3,
                  flipped=[False] * 3)
    out = training_step(DenseForward(detector), batch, "original", MiningThresholds.for_detector(name),
                        augmenter=None)
    torch.testing.assert_close(out.loss, sum(stock.values()), **LOSS_TOL)
    for k, v in stock.items():
        assert float(out.loss_parts[f"original/{k}"]) == pytest.approx(float(v.detach()), rel=1e-5, abs=1e-6)


def test_detections_match_torchvision(case):
    name, detector, images, _ = case
    detector.eval()
    with torch.no_grad():
        stock = detector(_stock_inputs(images))
        head, anchors, per_level = DenseForward(detector)(images)
    sizes = [tuple(images.shape[-2:])] * len(images)
    ours = view_detections(detector, head, anchors, per_level, sizes, score_thresh=detector.score_thresh,
                           nms_iou=TEST_NMS[name], max_per_image=detector.detections_per_img,
                           class_score=False)
    # view_detections put the detector's own thresholds back
    assert (detector.score_thresh, detector.nms_thresh, detector.detections_per_img) == (0.05, TEST_NMS[name], 100)
    assert len(ours) == len(stock) == len(images)
    total = 0
    for s, o in zip(stock, ours):
        assert len(o["boxes"]) == len(s["boxes"])
        torch.testing.assert_close(o["labels"], s["labels"], rtol=0, atol=0)
        torch.testing.assert_close(o["scores"], s["scores"], **SCORE_TOL)
        torch.testing.assert_close(o["boxes"], s["boxes"], **BOX_TOL)
        total += len(s["boxes"])
    # non-trivial: many detections with distinct scores, several classes
    assert total >= 30 * len(images)
    scores = torch.cat([s["scores"] for s in stock])
    assert scores.unique().numel() > total // 2
    assert torch.cat([s["labels"] for s in stock]).unique().numel() >= 2
