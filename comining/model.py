"""Building torchvision's RetinaNet / FCOS, and running them as a Siamese pair.

The detector stays a stock torchvision module (its state dict is a stock state dict); the
Siamese step calls its pieces directly: one backbone+head forward over both views
concatenated, each view's loss from the model's own `compute_loss`, each view's detached
detections from its own `postprocess_detections`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import detection
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import misc as misc_ops
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from comining.errors import CominingError, InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEST_NMS = {"retinanet": 0.5, "fcos": 0.6}
# FCOS mining scores the class before centerness: a saturated centerness logit makes
# torchvision's sqrt(cls * ctr) equal sqrt(cls), whose threshold is then sqrt(tau).
_SATURATED_LOGIT = 30.0


def _imagenet_weights(backbone: str):
    import torchvision.models as tvm
    enum = {"resnet18": tvm.ResNet18_Weights, "resnet34": tvm.ResNet34_Weights,
            "resnet50": tvm.ResNet50_Weights, "resnet101": tvm.ResNet101_Weights,
            "mobilenet_v3": tvm.MobileNet_V3_Large_Weights}[backbone]
    weights = enum.IMAGENET1K_V1
    try:  # fetch now, so an offline machine fails here with a clear message
        weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        raise CominingError(
            f"cannot load the ImageNet weights of {backbone} ({type(exc).__name__}: {exc}); "
            f"offline? use --weights-backbone none, or a local file: --weights-backbone PATH") from None
    return weights


def build_backbone(name: str, weights_backbone: str = "none", fpn_channels: int = 256) -> nn.Module:
    """ResNet/MobileNetV3 + FPN with P3-P7 (as torchvision's RetinaNet and FCOS).

    Pretrained weights: frozen BatchNorm and the stem frozen (the paper's setting). From
    scratch: trainable BatchNorm everywhere, otherwise a deep net without statistics diverges.
    """
    pretrained = weights_backbone not in (None, "none")
    weights = _imagenet_weights(name) if weights_backbone == "imagenet" else None
    norm = misc_ops.FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    if name == "mobilenet_v3":
        body = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=weights, fpn=True,
                                  norm_layer=norm, trainable_layers=3 if pretrained else 6,
                                  returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    else:
        body = resnet_fpn_backbone(backbone_name=name, weights=weights, norm_layer=norm,
                                   trainable_layers=3 if pretrained else 5,
                                   returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    if pretrained and weights is None:
        _load_backbone_file(body, name, Path(weights_backbone))
    if fpn_channels != body.out_channels:
        # A narrower FPN (and so a narrower head): the light setting for CPUs.
        in_channels = [block[0].in_channels for block in body.fpn.inner_blocks]
        body.fpn = FeaturePyramidNetwork(in_channels, fpn_channels,
                                         extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))
        body.out_channels = fpn_channels
    return body


def _load_backbone_file(body: nn.Module, name: str, path: Path) -> None:
    """A classification state dict (torchvision layout) for the backbone's body."""
    if not path.is_file():
        raise InputError(path, "backbone weights file not found (or use imagenet / none)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(path, f"cannot read backbone weights ({exc})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    prefix = "features." if name == "mobilenet_v3" else ""
    own = body.body.state_dict()
    matched = {k[len(prefix):]: v for k, v in state.items()
               if k.startswith(prefix) and k[len(prefix):] in own and own[k[len(prefix):]].shape == v.shape}
    if len(matched) < 0.9 * len(own):
        raise InputError(path, f"only {len(matched)} of {len(own)} tensors match a {name} backbone")
    body.body.load_state_dict(matched, strict=False)


def build_detector(detector: str, backbone: str, num_classes: int, *, image_size: int,
                   weights_backbone: str = "none", fpn_channels: int = 256) -> nn.Module:
    """A stock torchvision RetinaNet or FCOS for `num_classes` classes at one fixed size."""
    body = build_backbone(backbone, weights_backbone, fpn_channels)
    common = dict(min_size=image_size, max_size=image_size, image_mean=list(IMAGENET_MEAN),
                  image_std=list(IMAGENET_STD), nms_thresh=TEST_NMS[detector],
                  detections_per_img=100, topk_candidates=1000, score_thresh=0.05)
    if detector == "retinanet":
        return detection.RetinaNet(body, num_classes, **common)
    return detection.FCOS(body, num_classes, **common)


def load_init(model: nn.Module, path: str | Path) -> dict:
    """Start from a detector checkpoint: ours, or a torchvision COCO state dict whose
    classification head has another number of classes (that layer stays freshly built)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "--init checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(path, f"cannot read checkpoint ({exc})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise InputError(path, "not a state dict")
    own = model.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    resized = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if len(loaded) < 0.5 * len(own):
        raise InputError(path, f"only {len(loaded)} of {len(own)} tensors fit this detector "
                               "(another detector or backbone?)")
    model.load_state_dict(loaded, strict=False)
    return {"loaded": len(loaded), "reinitialised": resized}


class DenseNet(nn.Module):
    """Backbone + head of a detector as one module (what DistributedDataParallel wraps)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.backbone = detector.backbone
        self.head = detector.head

    def forward(self, x: torch.Tensor):
        features = list(self.backbone(x).values())
        return self.head(features), [tuple(f.shape[-2:]) for f in features]


class DenseForward:
    """Backbone + head over a uint8 batch at a fixed size, anchors cached in fp32.

    `net` is DenseNet(detector), or its DDP wrapper in a multi-process run.
    """

    def __init__(self, detector: nn.Module, net: nn.Module | None = None, *,
                 autocast_dtype: torch.dtype | None = None, channels_last: bool = False):
        self.detector = detector
        self.net = net if net is not None else DenseNet(detector)
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        self._anchor_cache: dict = {}

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN, device=images_uint8.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images_uint8.device).view(1, 3, 1, 1)
        x = (images_uint8.float() / 255.0 - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, images_uint8: torch.Tensor):
        """-> (head outputs in fp32, anchors per image (fp32), anchors per level)."""
        x = self.normalize(images_uint8)
        with torch.autocast(x.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            head, shapes = self.net(x)
        head = {k: v.float() for k, v in head.items()}  # decoding, losses, NMS in fp32
        shapes = tuple(tuple(s) for s in shapes)
        anchors_one = self._anchors(x, shapes)
        per_level = [h * w for h, w in shapes]
        n_anchors = head["cls_logits"].shape[1] // sum(per_level)
        return head, [anchors_one] * x.shape[0], [p * n_anchors for p in per_level]

    def _anchors(self, x: torch.Tensor, shapes) -> torch.Tensor:
        key = (tuple(x.shape[-2:]), shapes, x.device)
        if key not in self._anchor_cache:
            dummy_feats = [torch.empty((1, 1, h, w), device=x.device) for h, w in shapes]
            image_list = ImageList(torch.empty((1, 3, *x.shape[-2:]), device=x.device),
                                   [tuple(x.shape[-2:])])
            self._anchor_cache[key] = self.detector.anchor_generator(image_list, dummy_feats)[0]
        return self._anchor_cache[key]


def slice_head(head: dict, start: int, stop: int) -> dict:
    return {k: v[start:stop] for k, v in head.items()}


def view_loss(model: nn.Module, head: dict, anchors: list, anchors_per_level: list[int],
              targets: list[dict]) -> dict:
    """The detector's own loss for one view (targets: boxes xyxy float, labels int64)."""
    targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
    if isinstance(model, detection.FCOS):
        return model.compute_loss(targets, head, anchors, anchors_per_level)
    return model.compute_loss(targets, head, anchors)


@torch.no_grad()
def view_detections(model: nn.Module, head: dict, anchors: list, anchors_per_level: list[int],
                    image_sizes: list[tuple[int, int]], *, score_thresh: float, nms_iou: float,
                    max_per_image: int = 100, class_score: bool = True) -> list[dict]:
    """torchvision's post-processing with co-generation's thresholds.

    class_score: FCOS scores are the class probability before centerness (the authors'
    co-generation); False gives torchvision's test-time score.
    """
    head = {k: v.detach() for k, v in head.items()}
    is_fcos = isinstance(model, detection.FCOS)
    thresh = score_thresh
    if is_fcos and class_score:
        head["bbox_ctrness"] = torch.full_like(head["bbox_ctrness"], _SATURATED_LOGIT)
        thresh = score_thresh ** 0.5
    split = {k: list(v.split(anchors_per_level, dim=1)) for k, v in head.items()}
    split_anchors = [list(a.split(anchors_per_level)) for a in anchors]
    saved = (model.score_thresh, model.nms_thresh, model.detections_per_img)
    model.score_thresh, model.nms_thresh, model.detections_per_img = thresh, nms_iou, max_per_image
    try:
        dets = model.postprocess_detections(split, split_anchors, image_sizes)
    finally:
        model.score_thresh, model.nms_thresh, model.detections_per_img = saved
    if is_fcos and class_score:
        for d in dets:
            d["scores"] = d["scores"] ** 2
    return dets
