"""Building torchvision's RetinaNet / FCOS, and running them as a Siamese pair.

The detector stays a stock torchvision module (its state dict is a stock state dict); the
Siamese step calls its pieces directly: one backbone+head forward over both views
concatenated, each view's loss from the model's own `compute_loss`, each view's detached
detections from its own `postprocess_detections`.
"""

from __future__ import annotations

import pickle
import re
from functools import partial
from pathlib import Path
from urllib.error import URLError

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

# torchvision's COCO detection weights that --init takes by name -> (detector, variant).
# Each is a ResNet-50 FPN (256 channels); v2 is torchvision's RetinaNet v2: GroupNorm in
# the head, P6 computed from C5, GIoU box loss.
INIT_WEIGHTS = {
    "RetinaNet_ResNet50_FPN_Weights": ("retinanet", "v1"),
    "RetinaNet_ResNet50_FPN_V2_Weights": ("retinanet", "v2"),
    "FCOS_ResNet50_FPN_Weights": ("fcos", "v1"),
}
# torchvision's builder names, as short forms of their default (COCO) weights
_BUILDER_WEIGHTS = {"retinanet_resnet50_fpn": "RetinaNet_ResNet50_FPN_Weights",
                    "retinanet_resnet50_fpn_v2": "RetinaNet_ResNet50_FPN_V2_Weights",
                    "fcos_resnet50_fpn": "FCOS_ResNet50_FPN_Weights"}
VARIANTS = ("v1", "v2")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def safe_load(path: str | Path, what: str):
    """torch.load of a user-supplied file with weights_only=True: tensors and plain types
    only, so a crafted pickle cannot run code. One-line InputError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise InputError(path, f"cannot read {what} (UnpicklingError: {_first_line(exc)}); "
                                   "a half-written or damaged file?") from None
        found = re.search(r"GLOBAL (\S+)", str(exc))
        raise InputError(path, f"refused to load this {what}: it holds Python objects"
                               f"{' (' + found.group(1) + ')' if found else ''} beyond tensors and "
                               "plain types, and unpickling them could run code; comining only "
                               "loads files safely (weights_only). If you trust it (e.g. a "
                               "checkpoint of an older comining), load it with that version and "
                               "re-save its state dict with torch.save") from None
    except Exception as exc:
        head, sep, _ = _first_line(exc).partition(". ")
        raise InputError(path, f"cannot read {what} ({type(exc).__name__}: {head}{'.' if sep else ''}); "
                               "a half-written or damaged file?") from None


def init_weights_by_name(init: str | None):
    """The torchvision weights `--init` names (a WeightsEnum member), or None when `init`
    is not a weights name (an existing file, or a path). Accepts the enum's full name
    ('RetinaNet_ResNet50_FPN_Weights.COCO_V1', also 'torchvision.models.detection.'-prefixed),
    '<Enum>.DEFAULT', and the builder's name ('retinanet_resnet50_fpn_v2'). Never downloads."""
    if not init or Path(init).exists():
        return None
    name = str(init).strip()
    for prefix in ("torchvision.models.detection.", "torchvision.models."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name.lower() in _BUILDER_WEIGHTS:
        name = _BUILDER_WEIGHTS[name.lower()] + ".DEFAULT"
    enum_name, dot, value = name.partition(".")
    if not dot or not enum_name.endswith("_Weights") or not re.fullmatch(r"[A-Z][A-Z0-9_]*", value):
        return None   # e.g. a file name that does not exist (yet): load_init says not found
    known = ", ".join(f"{e}.COCO_V1" for e in INIT_WEIGHTS)
    if enum_name not in INIT_WEIGHTS:
        raise InputError(None, f"--init {init}: not one of torchvision's RetinaNet/FCOS COCO "
                               f"weights; use {known}, or a local file")
    from torchvision.models import get_weight
    try:
        return get_weight(f"{enum_name}.{value}")
    except (ValueError, KeyError):
        raise InputError(None, f"--init {init}: torchvision has no such weights; use {known}, "
                               "or a local file") from None


def check_init_fits(weights, detector: str, backbone: str, fpn_channels: int) -> str:
    """The variant the named weights need; an InputError (one line) when the run's
    detector/backbone/width cannot hold them."""
    want, variant = INIT_WEIGHTS[type(weights).__name__]
    if (detector, backbone, fpn_channels) != (want, "resnet50", 256):
        raise InputError(None, f"--init {weights} is a {want} with a ResNet-50 FPN of 256 channels; "
                               f"this run is a {detector} with {backbone}, fpn {fpn_channels}: use "
                               f"--detector {want} --backbone resnet50 --fpn-channels 256")
    return variant


def init_variant(init: str | None) -> str:
    """v2 when `init` names RetinaNet v2 weights or is a file holding a GroupNorm RetinaNet
    head (torchvision's v2 layout); v1 otherwise."""
    weights = init_weights_by_name(init)
    if weights is not None:
        return INIT_WEIGHTS[type(weights).__name__][1]
    if not init or not Path(init).is_file():
        return "v1"
    state = _state_dict_of(safe_load(init, "--init checkpoint"), init)
    return "v2" if "head.classification_head.conv.0.1.weight" in state else "v1"


def fetch_init_weights(weights) -> dict:
    """The named weights' state dict (torch's hub cache, else a download), read safely.
    Offline: an InputError at once saying how to pass a local file instead."""
    from torch.hub import get_dir
    file_name = weights.url.rsplit("/", 1)[-1]
    try:
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except (URLError, OSError) as exc:
        raise InputError(None, f"--init {weights}: could not download {weights.url} (offline? "
                               f"{type(exc).__name__}: {_first_line(exc)}); download it elsewhere "
                               f"and pass --init PATH, or put it in {Path(get_dir()) / 'checkpoints' / file_name}") from None
    except Exception as exc:
        raise InputError(Path(get_dir()) / "checkpoints" / file_name,
                         f"cannot read the cached {weights} ({type(exc).__name__}: {_first_line(exc)}); "
                         "delete it to download again, or pass --init PATH") from None


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


def build_backbone(name: str, weights_backbone: str = "none", fpn_channels: int = 256, *,
                   pretrained: bool | None = None, p6_from_c5: bool = False) -> nn.Module:
    """ResNet/MobileNetV3 + FPN with P3-P7 (as torchvision's RetinaNet and FCOS).

    Pretrained weights: frozen BatchNorm and the stem frozen (the paper's setting). From
    scratch: trainable BatchNorm everywhere, otherwise a deep net without statistics diverges.
    `pretrained=True` with weights_backbone "none": the pretrained layout, weights to come
    (from a COCO detector, --init NAME). p6_from_c5: RetinaNet v2's P6 (from C5, not P5).
    """
    if pretrained is None:
        pretrained = weights_backbone not in (None, "none")
    weights = _imagenet_weights(name) if weights_backbone == "imagenet" else None
    norm = misc_ops.FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    if p6_from_c5 and name == "mobilenet_v3":
        raise InputError(None, "RetinaNet v2 (P6 from C5) needs a ResNet backbone")
    if name == "mobilenet_v3":
        body = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=weights, fpn=True,
                                  norm_layer=norm, trainable_layers=3 if pretrained else 6,
                                  returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    else:
        c5 = {"resnet18": 512, "resnet34": 512}.get(name, 2048)
        extra = LastLevelP6P7(c5 if p6_from_c5 else 256, 256)
        body = resnet_fpn_backbone(backbone_name=name, weights=weights, norm_layer=norm,
                                   trainable_layers=3 if pretrained else 5,
                                   returned_layers=[2, 3, 4], extra_blocks=extra)
    if weights_backbone not in (None, "none", "imagenet"):
        _load_backbone_file(body, name, Path(weights_backbone))
    if fpn_channels != body.out_channels:
        if p6_from_c5:
            raise InputError(None, "RetinaNet v2 (P6 from C5) needs --fpn-channels 256")
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
    state = safe_load(path, "backbone weights")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    prefix = "features." if name == "mobilenet_v3" else ""
    own = body.body.state_dict()
    matched = {k[len(prefix):]: v for k, v in state.items()
               if k.startswith(prefix) and k[len(prefix):] in own and own[k[len(prefix):]].shape == v.shape}
    if len(matched) < 0.9 * len(own):
        raise InputError(path, f"only {len(matched)} of {len(own)} tensors match a {name} backbone")
    body.body.load_state_dict(matched, strict=False)


def build_detector(detector: str, backbone: str, num_classes: int, *, image_size: int,
                   weights_backbone: str = "none", fpn_channels: int = 256,
                   init: str | None = None, variant: str = "v1") -> nn.Module:
    """A stock torchvision RetinaNet or FCOS for `num_classes` classes at one fixed size.

    init: when it names torchvision COCO weights, the layout those weights need (checked
    against detector/backbone, the BatchNorm frozen as torchvision's, no ImageNet download:
    the detector's weights replace the backbone's). variant v2: torchvision's RetinaNet v2
    (GroupNorm head, P6 from C5, GIoU loss), as retinanet_resnet50_fpn_v2 builds it.
    """
    named = init_weights_by_name(init)
    pretrained = None
    if named is not None:
        variant = check_init_fits(named, detector, backbone, fpn_channels)
        weights_backbone, pretrained = "none", True
    if variant not in VARIANTS or (variant == "v2" and detector != "retinanet"):
        raise InputError(None, f"variant {variant!r}: v1, or v2 for RetinaNet only")
    v2 = variant == "v2"
    body = build_backbone(backbone, weights_backbone, fpn_channels, pretrained=pretrained,
                          p6_from_c5=v2)
    common = dict(min_size=image_size, max_size=image_size, image_mean=list(IMAGENET_MEAN),
                  image_std=list(IMAGENET_STD), nms_thresh=TEST_NMS[detector],
                  detections_per_img=100, topk_candidates=1000, score_thresh=0.05)
    if detector == "retinanet":
        head = None
        if v2:
            anchors = detection.retinanet._default_anchorgen()
            head = detection.retinanet.RetinaNetHead(
                body.out_channels, anchors.num_anchors_per_location()[0], num_classes,
                norm_layer=partial(nn.GroupNorm, 32))
            head.regression_head._loss_type = "giou"
        return detection.RetinaNet(body, num_classes, head=head, **common)
    return detection.FCOS(body, num_classes, **common)


def _state_dict_of(state, path) -> dict:
    """The model state dict of a loaded --init file: a plain state dict, or ours under "model"."""
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise InputError(path, "not a state dict")
    return state


def source_class_names(state, n_rows: int) -> list[str] | None:
    """Class names of an --init file's classifier rows: our checkpoint's categories (in
    label order), else torchvision's COCO list when the layer has its 91 classes."""
    if isinstance(state, dict) and isinstance(state.get("categories"), list):
        cats = sorted(state["categories"], key=lambda c: c["id"])
        return [str(c.get("name", c["id"])) for c in cats]
    from torchvision.models._meta import _COCO_CATEGORIES
    return list(_COCO_CATEGORIES) if n_rows == len(_COCO_CATEGORIES) else None


def _norm_name(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def keep_class_rows(model: nn.Module, state: dict, class_names: list[str],
                    source_names: list[str], source: str) -> dict[str, int]:
    """Copy the classifier rows (conv weight and bias) of the source classes whose names
    match the model's classes; the others keep their fresh init. Rows are anchor-major
    (torchvision views cls_logits as (N, A, K, H, W)): row a*K + k is class k of anchor a.
    Returns {model class name: source row}."""
    key = "head.classification_head.cls_logits"
    own = model.state_dict()
    w_src, b_src = state.get(f"{key}.weight"), state.get(f"{key}.bias")
    w_dst, b_dst = own[f"{key}.weight"].clone(), own[f"{key}.bias"].clone()
    k_dst = len(class_names)
    n_anchors = w_dst.shape[0] // k_dst
    if (w_src is None or b_src is None or w_src.shape[1:] != w_dst.shape[1:]
            or w_src.shape[0] != n_anchors * len(source_names)):
        raise InputError(source, f"--init-keep-classes: its classifier does not have "
                                 f"{n_anchors} x {len(source_names)} rows of this head's width")
    k_src = len(source_names)
    row_of = {}
    for k, name in enumerate(source_names):
        if name not in ("__background__", "N/A") and _norm_name(name) not in row_of:
            row_of[_norm_name(name)] = k
    kept = {}
    for j, name in enumerate(class_names):
        k = row_of.get(_norm_name(name))
        if k is None:
            continue
        for a in range(n_anchors):
            w_dst[a * k_dst + j] = w_src[a * k_src + k]
            b_dst[a * k_dst + j] = b_src[a * k_src + k]
        kept[name] = k
    model.load_state_dict({f"{key}.weight": w_dst, f"{key}.bias": b_dst}, strict=False)
    return kept


def load_init(model: nn.Module, init: str | Path, *, class_names: list[str] | None = None,
              keep_classes: bool = False) -> dict:
    """Start from a detector: torchvision's COCO weights by name (see init_weights_by_name),
    or a file (ours, or a torchvision state dict), read safely (weights_only). A classifier
    with another number of classes stays freshly built; with keep_classes, the rows of the
    classes whose names match the source's (COCO's for torchvision weights) are kept."""
    weights = init_weights_by_name(str(init))
    if weights is not None:
        source = str(weights)
        raw = fetch_init_weights(weights)
        state = _state_dict_of(raw, source)
        source_names = list(weights.meta["categories"])
    else:
        source = Path(init)
        if not source.is_file():
            raise InputError(source, "--init checkpoint not found (or give torchvision weights "
                                     "by name, e.g. RetinaNet_ResNet50_FPN_Weights.COCO_V1)")
        raw = safe_load(source, "--init checkpoint")
        state = _state_dict_of(raw, source)
        w = state.get("head.classification_head.cls_logits.weight")
        own_w = model.state_dict()["head.classification_head.cls_logits.weight"]
        n_anchors = own_w.shape[0] // len(class_names) if class_names else 1
        source_names = source_class_names(raw, w.shape[0] // n_anchors) if w is not None else None
    own = model.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    resized = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if len(loaded) < 0.5 * len(own):
        raise InputError(source, f"only {len(loaded)} of {len(own)} tensors fit this detector "
                                 "(another detector or backbone?)")
    model.load_state_dict(loaded, strict=False)
    report = {"loaded": len(loaded), "reinitialised": resized, "kept": {}}
    if keep_classes:
        if not class_names:
            raise InputError(None, "--init-keep-classes needs the dataset's class names")
        if source_names is None:
            raise InputError(source, "--init-keep-classes: cannot tell which classes its classifier "
                                     "rows are (not torchvision's 91 COCO classes, nor a comining "
                                     "checkpoint)")
        report["kept"] = keep_class_rows(model, state, class_names, source_names, source)
    return report


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
