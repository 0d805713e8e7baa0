"""The one explicit configuration object of a training run, saved in RUN_DIR/config.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from comining.errors import InputError

DETECTORS = ("retinanet", "fcos")
BACKBONES = ("resnet50", "resnet18", "resnet34", "resnet101", "mobilenet_v3")
METHODS = ("comining", "original", "augmented", "joint", "self")
AUGMENTS_HELP = ("second view: color = ColorJitter(0.8, 0.8, 0.8, 0.2) with p 0.8 (the authors'), "
                 "blur = Gaussian blur with p 0.5, or both")
# Which views each method forwards, and whose pseudo boxes supervise each view.
METHOD_VIEWS = {
    "original": ("original",),
    "augmented": ("augmented",),
    "joint": ("original", "augmented"),
    "self": ("original",),
    "comining": ("original", "augmented"),
}
# target view -> the view whose pseudo boxes are added to its annotations
METHOD_PSEUDO_SOURCE = {
    "original": {},
    "augmented": {},
    "joint": {},
    "self": {"original": "original"},
    "comining": {"original": "augmented", "augmented": "original"},
}


@dataclass
class MiningThresholds:
    """Co-generation thresholds (the authors' code: RetinaNet 0.6/0.5, FCOS 0.5/0.6; 0.4)."""

    score_thresh: float       # tau: per-class sigmoid score (FCOS: before centerness)
    nms_iou: float            # theta1: class-wise NMS
    gt_iou: float = 0.4       # theta2: drop when a same-class annotation overlaps more
    max_per_image: int = 100
    crowd_ioa: float = 0.5    # drop when this much of the box lies in a crowd region
    rejected_iou: float = 0.5  # refine rounds: drop at this IoU with a rejected box (any class)

    @classmethod
    def for_detector(cls, detector: str, **overrides) -> "MiningThresholds":
        base = {"retinanet": dict(score_thresh=0.6, nms_iou=0.5),
                "fcos": dict(score_thresh=0.5, nms_iou=0.6)}[detector]
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


RANKS = ("mean", "max", "min", "noisy_or", "geometric")   # see comining.objects.RANKS


@dataclass
class ReviewMining:
    """Mining for the annotator, apart from training's co-generation (whose rules the
    paper's results depend on): recall first, since the queue is ranked and the
    annotator stops where it stops paying; one item per object (comining.objects).

    Chosen by measurement (benchmarks/mining.py, two generated settings, every
    checkpoint): a low score floor holds across detectors and training stages, where
    the paper's tau left a weaker detector's queue empty.
    """

    score_floor: float = 0.05     # per-class score a box needs (torchvision's test default)
    nms_iou: float | None = None  # class-wise NMS per view; default: the detector's theta1
    max_per_view: int = 100       # boxes per view and image, best first, before grouping
    max_objects: int = 30         # objects kept per image, best ranked
    group_iou: float = 0.5        # boxes of both views, any class, at IoU >= this: one object
    label_iou: float = 0.5        # an object at IoU >= this with an annotation is not missing
    rank: str = "mean"            # the object's score from the two views' best scores
    soft_sigma: float | None = 0.5  # Soft-NMS across objects and labels (None: off)
    score: str = "detection"      # detection: torchvision's test-time score (FCOS: with
                                  # centerness, which ranks well-placed boxes first);
                                  # class: co-generation's class score
    scales: tuple[float, ...] = (1.0,)  # input sizes mined, as multiples of the training
                                  # size; every size's boxes of a view join before grouping
                                  # (multi-scale test-time mining: a larger size finds
                                  # small objects the training size misses)
    native: bool = True           # also mine a little larger when training shrinks the
                                  # images: at their own size, at most 1.2x the training
                                  # size (comining.mining.review_sizes): the objects small
                                  # at the training size are the ones it misses
    flip: bool = False            # also mine each size's horizontal mirror image, its boxes
                                  # mirrored back and joined per view (test-time flip: the
                                  # detector trains on flips, and a mirrored image gives
                                  # it a second look at every object)

    def __post_init__(self):
        self.scales = tuple(float(s) for s in self.scales)   # a list when read from json

    def validate(self) -> None:
        def bad(msg):
            raise InputError(None, msg)
        if not 0 <= self.score_floor <= 1:
            bad("--review-score-floor must be within [0, 1]")
        for name in ("group_iou", "label_iou"):
            if not 0 < getattr(self, name) <= 1:
                bad(f"--{name.replace('_', '-')} must be within (0, 1]")
        if self.nms_iou is not None and not 0 < self.nms_iou <= 1:
            bad("the review NMS IoU must be within (0, 1]")
        if self.max_per_view < 1 or self.max_objects < 1:
            bad("--max-objects and the boxes per view must be at least 1")
        if self.rank not in RANKS:
            bad(f"unknown rank {self.rank!r}; choose one of {', '.join(RANKS)}")
        if self.soft_sigma is not None and self.soft_sigma <= 0:
            bad("the Soft-NMS sigma must be above 0 (or none: off)")
        if self.score not in ("detection", "class"):
            bad(f"unknown review score {self.score!r}; choose detection or class")
        if not self.scales or any(not 0.25 <= s <= 4 for s in self.scales) \
                or len(set(self.scales)) != len(self.scales):
            bad("--review-scales must be distinct multiples of the image size within [0.25, 4]")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainConfig:
    images: str
    ann: str
    run: str
    detector: str = "retinanet"
    backbone: str = "resnet50"
    method: str = "comining"
    augment: str = "color"
    iters: int = 90_000
    batch_size: int = 16
    image_size: int = 800               # longer side; images are padded to a square
    fpn_channels: int = 256             # FPN and head width (64: the light CPU setting)
    checkpoint_every: int = 5_000
    weights_backbone: str = "imagenet"  # imagenet | none | PATH
    init: str | None = None             # a detector to start from: PATH, or torchvision COCO
                                        # weights by name (RetinaNet_ResNet50_FPN_Weights.COCO_V1)
    init_keep_classes: bool = False     # keep --init's classifier rows of same-named classes
    variant: str = "v1"                 # v2: torchvision's RetinaNet v2 layout (set from --init)
    device: str = "auto"
    seed: int = 0
    lr: float | None = None             # default: 0.01 * batch_size / 16 (the paper's)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int | None = None     # default: the paper's 1k of 90k, scaled
    num_workers: int = 2
    log_every: int = 20
    mine: bool = True                   # mine the training set at every checkpoint
    hidden: str | None = None           # HIDDEN.json of a sparsified set, for mining scores
    thresholds: MiningThresholds = field(default=None)
    review: ReviewMining = field(default_factory=ReviewMining)   # mining for the annotator
    amp: str = "auto"                   # auto (bf16 on CUDA) | bf16 (also on CPU) | off
    channels_last: str = "auto"         # auto (on CUDA) | on (also on CPU) | off
    # The loop (comining.rounds): round 0 trains on the inputs; each `comining refine` round
    # trains from the last checkpoint (round_start) to `iters` on the inputs + accepted boxes
    # (ann: the round's targets file), never mining a box on a rejected one (rejected).
    round: int = 0
    round_start: int = 0
    rejected: str | None = None         # REJECTED.json of a round: the annotator's background

    def __post_init__(self):
        if isinstance(self.thresholds, dict):
            self.thresholds = MiningThresholds(**self.thresholds)
        if self.thresholds is None:
            self.thresholds = MiningThresholds.for_detector(self.detector)
        if isinstance(self.review, dict):
            # a run configured before `native` existed mined without it; resumed, it still does
            self.review = ReviewMining(**{"native": False, **self.review})
        self.validate()

    def validate(self) -> None:
        def bad(msg):
            raise InputError(None, msg)
        if self.detector not in DETECTORS:
            bad(f"unknown detector {self.detector!r}; choose one of {', '.join(DETECTORS)}")
        if self.backbone not in BACKBONES:
            bad(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.method not in METHODS:
            bad(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.augment not in ("color", "blur", "color+blur"):
            bad(f"unknown augment {self.augment!r}; choose color, blur or color+blur")
        for name in ("iters", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                bad(f"--{name.replace('_', '-')} must be at least 1")
        if self.fpn_channels < 32 or self.fpn_channels % 32:
            bad("--fpn-channels must be a multiple of 32")
        if self.image_size < 64:
            bad("--image-size must be at least 64")
        if self.amp not in ("auto", "bf16", "off"):
            bad(f"unknown amp {self.amp!r}; choose auto, bf16 or off")
        if self.channels_last not in ("auto", "on", "off"):
            bad(f"unknown channels_last {self.channels_last!r}; choose auto, on or off")
        if not 0 <= self.round_start < self.iters:
            bad(f"a round must end after it starts (iteration {self.round_start}); "
                f"--iters is {self.iters}")
        if self.init_keep_classes and not self.init:
            bad("--init-keep-classes needs --init")
        t = self.thresholds
        if not (0 <= t.score_thresh <= 1 and 0 < t.nms_iou <= 1 and 0 < t.gt_iou <= 1):
            bad("thresholds must be within [0, 1]")
        self.review.validate()

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else 0.01 * self.batch_size / 16

    @property
    def schedule_length(self) -> int:
        """Iterations of this round's schedule (the whole run for round 0)."""
        return self.iters - self.round_start

    @property
    def warmup(self) -> int:
        if self.warmup_iters is not None:
            return self.warmup_iters
        # The paper's 1k of 90k; short runs (often from scratch) get at least 10% up to 100.
        n = self.schedule_length
        return max(1, min(1000, max(round(n / 90), min(100, n // 10))))

    @property
    def lr_steps(self) -> tuple[int, int]:
        """The paper's steps at 60k and 80k of 90k, scaled to the round's length (counted
        from its start: the scheduler restarts with each round)."""
        n = self.schedule_length
        return round(n * 60 / 90), round(n * 80 / 90)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["thresholds"] = self.thresholds.as_dict()
        d["review"] = self.review.as_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path: Path) -> None:
        from comining.fileio import atomic_write_json
        atomic_write_json(path, self.as_dict(), indent=2)

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        from comining.fileio import read_json
        d = read_json(path)
        if not isinstance(d, dict) or "ann" not in d:
            raise InputError(path, "not a comining run config")
        try:
            return cls.from_dict(d)
        except InputError as exc:
            raise InputError(path, exc.problem) from None
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise InputError(path, f"not a run config of this comining version "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
