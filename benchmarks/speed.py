#!/usr/bin/env python
"""The speed benchmark: two views for the price of one, against stock torchvision.

    python benchmarks/speed.py            # one GPU: RetinaNet R50-FPN, 800x1344, batch 16, bf16
    python benchmarks/speed.py --quick    # CPU smoke setting, about a minute (numbers mean little)

Measured side by side in one process, on the same detector object and the same batches:

  stock_torchvision  torchvision's own training call, `model(images, targets)` (list of
                     float images in [0, 1]; the stock transform is checked to be an
                     identity at this size), then backward and SGD, as torchvision's
                     reference loop does (one `.item()` per step);
  original           our engine's step (`training_step(..., "original")`: DenseForward +
                     view_loss), one view;
  comining           our engine's step with both views (colour jitter on the device,
                     one backbone+head forward over 2B images, co-generation, two losses);
  mining             `comining.mining.mine_dataset` end to end (both views, inference,
                     candidates built) over an in-memory dataset: image decoding excluded;
  eval               `comining.detection_ap.coco_ap` on 5000 synthetic images (~7 boxes each,
                     80 classes) with 100 detections per image, end to end.

Every training mode runs the engine's loop body: the step, a finiteness check, zero_grad,
backward, SGD (momentum 0.9, weight decay 1e-4; the lr is fixed at the warm-up start,
1e-5, so the model barely moves: an SGD step costs the same at any lr). Throughput is
ORIGINAL images per second (a co-mining image counts once although it runs two views).
GPU: bf16 autocast and channels_last (as the engine's `--amp auto`), cudnn.benchmark,
torch.cuda.synchronize() around timed regions, warm-up excluded, peak memory from
torch.cuda.max_memory_allocated over the timed iterations (weights and optimizer state
included). CPU: the peak is the growth of the process RSS over the timed iterations
(sampled; an approximation).

The shape: 800 x 1344 by default, i.e. the targets' "800 px shorter side" at the
COCO aspect (1333 max), rounded up to the multiple of 32 that torchvision pads to; the
engine itself trains square padded canvases (`--shape 800` for 800 x 800, ~60% of
the pixels). The physical bound of the issue (~340-420 original images/s on one H100)
is for 800 x 1333; it is scaled by the pixel count for other shapes.

The backbone has the paper's layout (frozen BatchNorm, stem and layer1 frozen) with
random weights (`--init frozen`, loaded through the `--weights-backbone PATH` code path
from a random classification state dict: the GPU machine is offline) or trainable
BatchNorm from scratch (`--init scratch`). From a random start the classification prior
keeps every score under the mining threshold, so co-generation and mining produce almost
no boxes: their costs are the low end. `--checkpoint PATH` (a detector state dict or a
comining checkpoint) measures a trained model instead.

Writes benchmarks/results/speed.md and speed.json (or --out-dir).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import math
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's C++ log lines, on CPU noise only

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import cpu_name, git_commit  # noqa: E402
import torchvision  # noqa: E402

MODES = ("stock_torchvision", "original", "comining", "mining", "eval")
JSON_KEYS = ("device", "stock_torchvision_img_s", "original_img_s", "comining_img_s", "mining_img_s",
             "eval_5000_s", "peak_mem_gb")
# Issue targets (one H100, RetinaNet R50-FPN, 800 px shorter side, bf16).
TARGETS = {"comining_img_s": 100.0, "ratio_vs_stock": 1.0, "mining_img_s": 500.0, "eval_5000_s": 3.0}
BOUND_IMG_S = (340.0, 420.0)       # co-mining, original images/s, one H100, at 800 x 1333
BOUND_PIXELS = 800 * 1333
EVAL_TARGET_IMAGES = 5000
LR = 0.01 * 0.001                  # the engine's lr at iteration 0 (warm-up start)

SETTINGS = {
    # One GPU, a few minutes (under the 10-minute budget of one device call even if stock
    # torchvision runs at only ~40 img/s): 200 timed iterations per training mode.
    "full": dict(detector="retinanet", backbone="resnet50", fpn_channels=256, shape=(800, 1344),
                 batch=16, classes=80, iters=200, warmup=15, mine_batches=200, mine_workers=4,
                 eval_images=5000, profile_steps=5, phase_steps=10, init="frozen"),
    # 2 CPU cores, about a minute: a smoke test of every mode, not a measurement. One torch
    # thread: on a machine busy with other work, two OpenMP threads ran ~20x slower.
    "quick": dict(threads=1, detector="retinanet", backbone="mobilenet_v3", fpn_channels=64, shape=(160, 160),
                  batch=4, classes=80, iters=20, warmup=3, mine_batches=10, mine_workers=0,
                  eval_images=500, profile_steps=3, phase_steps=3, init="frozen"),
}


# ----------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {os.cpu_count()} CPU cores (torch threads: {torch.get_num_threads()}), no GPU"


def _load_average() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory over a region: CUDA max_memory_allocated, or sampled RSS growth on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: float | None = None
        self._stop = threading.Event()
        self._thread = None
        self._base = self._peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss())
            self._stop.wait(0.002)

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _malloc_trim()
            try:
                self._base = self._peak = self._rss()
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
            except OSError:  # no /proc: no CPU memory figure
                self._thread = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = float(torch.cuda.max_memory_allocated(self.device))
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss())
            self.peak_bytes = float(self._peak - self._base)
        return False


@dataclasses.dataclass
class ModeResult:
    img_s: float | None
    peak_gb: float | None = None
    seconds: float | None = None
    images: int = 0
    note: str = ""
    extra: dict = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------- set-up


@dataclasses.dataclass
class Bench:
    """The detector, its DenseForward, the settings and the input batches of one run."""

    cfg: dict
    device: torch.device
    detector: torch.nn.Module
    dense: object
    batches: list
    amp: torch.dtype | None
    channels_last: bool
    thresholds: object
    augmenter: object


def _backbone_file(backbone: str, folder: Path) -> Path:
    """A random ImageNet-layout classification state dict: the `PATH` weights code path
    gives the paper's layout (frozen BatchNorm, frozen stem) without a download."""
    import torchvision.models as tvm

    net = tvm.mobilenet_v3_large() if backbone == "mobilenet_v3" else getattr(tvm, backbone)()
    path = folder / f"random_{backbone}.pt"
    torch.save(net.state_dict(), path)
    return path


def make_batches(cfg: dict, device: torch.device, n: int, seed: int = 0) -> list:
    """`n` distinct batches of random uint8 images at the fixed shape, ~7 boxes per image."""
    from comining.data import Batch

    g = torch.Generator().manual_seed(seed)
    h, w = cfg["shape"]
    b = cfg["batch"]
    out = []
    for i in range(n):
        images = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)
        targets = [random_targets(g, h, w, cfg["classes"]) for _ in range(b)]
        out.append(Batch(images=images, targets=targets, image_ids=list(range(i * b + 1, (i + 1) * b + 1)),
                         scales=[(1.0, 1.0)] * b, valid_sizes=[(h, w)] * b, flipped=[False] * b)
                   .to(device, non_blocking=False))
    return out


def random_targets(g: torch.Generator, h: int, w: int, classes: int) -> dict:
    k = int(torch.randint(3, 12, (1,), generator=g))  # 3..11, mean 7
    side = min(h, w)
    wh = torch.empty(k, 2).uniform_(0.0, 1.0, generator=g) * (0.5 * side - 16) + 16
    xy = torch.rand(k, 2, generator=g) * (torch.tensor([w, h]) - wh)
    boxes = torch.cat([xy, xy + wh], dim=1).float()
    return {"boxes": boxes, "labels": torch.randint(0, classes, (k,), generator=g),
            "crowd_boxes": torch.zeros((0, 4)), "rejected_boxes": torch.zeros((0, 4))}


def setup(cfg: dict, device: torch.device) -> Bench:
    from comining.augment import make_view_augmenter
    from comining.config import MiningThresholds
    from comining.model import DenseForward, DenseNet, build_detector, load_init

    h, w = cfg["shape"]
    if h % 32 or w % 32:
        raise SystemExit(f"--shape {h}x{w}: both sides must be multiples of 32 (torchvision pads "
                         "to 32, which would make the stock model see a bigger image)")
    cuda = device.type == "cuda"
    amp = {"auto": cuda, "bf16": True, "off": False}[cfg["amp"]]
    channels_last = {"auto": cuda, "on": True, "off": False}[cfg["channels_last"]]
    with tempfile.TemporaryDirectory() as tmp:
        weights = str(_backbone_file(cfg["backbone"], Path(tmp))) if cfg["init"] == "frozen" else "none"
        detector = build_detector(cfg["detector"], cfg["backbone"], cfg["classes"], image_size=max(h, w),
                                  weights_backbone=weights, fpn_channels=cfg["fpn_channels"])
    if cfg.get("checkpoint"):
        load_init(detector, cfg["checkpoint"])
    # The stock transform: resize to min(h, w) / max(h, w) is the identity on h x w inputs.
    detector.transform.min_size = (min(h, w),)
    detector.transform.max_size = max(h, w)
    detector.to(device)
    if channels_last:
        detector.to(memory_format=torch.channels_last)
    if cuda:
        torch.backends.cudnn.benchmark = True
    dense = DenseForward(detector, DenseNet(detector), autocast_dtype=torch.bfloat16 if amp else None,
                         channels_last=channels_last)
    return Bench(cfg=cfg, device=device, detector=detector, dense=dense,
                 batches=make_batches(cfg, device, cfg.get("pool", 4)), amp=torch.bfloat16 if amp else None,
                 channels_last=channels_last,
                 thresholds=MiningThresholds.for_detector(cfg["detector"], score_thresh=cfg.get("tau")),
                 augmenter=make_view_augmenter("color"))


def check_stock_transform(bench: Bench) -> float:
    """Max |stock transform - DenseForward.normalize| on one batch: must be ~0, else the stock
    model would be resizing (more work than ours, an unfair comparison)."""
    batch = bench.batches[0]
    model = bench.detector
    was = model.training
    model.eval()
    with torch.no_grad():
        image_list, _ = model.transform([im.float() / 255.0 for im in batch.images[:2]])
        ours = bench.dense.normalize(batch.images[:2]).contiguous()
    model.train(was)
    if tuple(image_list.tensors.shape) != tuple(ours.shape):
        raise SystemExit(f"stock transform changes the shape {tuple(ours.shape)} -> "
                         f"{tuple(image_list.tensors.shape)}; pick a --shape torchvision keeps")
    return float((image_list.tensors - ours).abs().max())


def _optimizer(detector) -> torch.optim.Optimizer:
    params = [p for p in detector.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=1e-4)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- training modes


def stock_step_fn(bench: Bench):
    """torchvision's reference loop body over `model(images, targets)`."""
    model, opt = bench.detector, _optimizer(bench.detector)
    autocast = dict(device_type=bench.device.type, dtype=bench.amp or torch.bfloat16,
                    enabled=bench.amp is not None)
    state = {"nonfinite": 0}

    def step(batch):
        images = [im.float() / 255.0 for im in batch.images]
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in batch.targets]
        with torch.autocast(**autocast):
            losses = model(images, targets)
        loss = sum(losses.values())
        if not math.isfinite(loss.item()):
            state["nonfinite"] += 1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, state


def engine_step_fn(bench: Bench, method: str):
    """Our engine's loop body (comining.engine.train) over training_step."""
    from comining.siamese import training_step

    opt = _optimizer(bench.detector)
    state = {"nonfinite": 0, "pseudo": 0, "images": 0}

    def step(batch):
        batch = batch.to(bench.device)
        out = training_step(bench.dense, batch, method, bench.thresholds, bench.augmenter)
        if not torch.isfinite(out.loss):
            state["nonfinite"] += 1
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        state["pseudo"] += sum(out.pseudo_counts.values())
        state["images"] += batch.images.shape[0]

    return step, state


def timed(bench: Bench, step, iters: int, warmup: int) -> ModeResult:
    """Warm-up (excluded), then `iters` timed steps cycling over the batch pool."""
    batches, device = bench.batches, bench.device
    bench.detector.train()
    for i in range(warmup):
        step(batches[i % len(batches)])
    sync(device)
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        for i in range(iters):
            step(batches[i % len(batches)])
        sync(device)
        seconds = time.perf_counter() - t0
    images = iters * bench.cfg["batch"]
    peak = mem.peak_bytes / 1e9 if mem.peak_bytes is not None else None
    return ModeResult(img_s=images / seconds, peak_gb=peak, seconds=seconds, images=images)


def bench_training(bench: Bench, mode: str) -> ModeResult:
    step, state = stock_step_fn(bench) if mode == "stock_torchvision" else engine_step_fn(bench, mode)
    try:
        res = timed(bench, step, bench.cfg["iters"], bench.cfg["warmup"])
    finally:
        _release(bench.device)
    res.extra["nonfinite_steps"] = state["nonfinite"]
    if "pseudo" in state and state["images"]:
        res.extra["pseudo_boxes_per_image"] = state["pseudo"] / state["images"]
    return res


# ----------------------------------------------------------------------------- mining


class InMemoryDataset(torch.utils.data.Dataset):
    """A DetectionDataset stand-in: a pool of decoded, padded samples (no file decoding)."""

    def __init__(self, coco, pool: list, image_size: int):
        self.coco, self.pool, self.image_size = coco, pool, image_size

    def __len__(self) -> int:
        return len(self.coco.images)

    def __getitem__(self, index):
        index, _ = index if isinstance(index, tuple) else (index, False)
        return dataclasses.replace(self.pool[index % len(self.pool)], image_id=self.coco.images[index].id)


def mining_dataset(cfg: dict, n_images: int, pool_size: int = 16) -> InMemoryDataset:
    from comining.coco import CategoryMap, CocoDataset, ImageRecord
    from comining.data import Sample

    h, w = cfg["shape"]
    g = torch.Generator().manual_seed(1)
    pool = []
    for _ in range(pool_size):
        t = random_targets(g, h, w, cfg["classes"])
        pool.append(Sample(image=torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
                           boxes=t["boxes"], labels=t["labels"], crowd_boxes=t["crowd_boxes"],
                           rejected_boxes=t["rejected_boxes"], image_id=0, scale=(1.0, 1.0),
                           valid_size=(h, w), flipped=False))
    cats = [{"id": c + 1, "name": f"class{c + 1}"} for c in range(cfg["classes"])]
    records = []
    for i in range(n_images):
        s = pool[i % pool_size]
        records.append(ImageRecord(id=i + 1, file_name=f"{i + 1:06d}.png", path=Path(f"{i + 1:06d}.png"),
                                   width=w, height=h, boxes=s.boxes.numpy(), labels=s.labels.numpy(),
                                   annotation_ids=np.arange(len(s.boxes)), crowd_boxes=np.zeros((0, 4), np.float32)))
    raw = {"images": [{"id": r.id, "file_name": r.file_name, "width": w, "height": h} for r in records],
           "categories": cats, "annotations": []}
    coco = CocoDataset(ann_path=Path("<in-memory>"), image_root=Path("."), raw=raw, images=records,
                       categories=CategoryMap.from_categories(cats))
    return InMemoryDataset(coco, pool, max(h, w))   # images at the network's size: one pass


def bench_mining(bench: Bench) -> ModeResult:
    """mine_dataset end to end (both views, no grad) over an in-memory dataset."""
    from comining.mining import mine_dataset

    cfg, device = bench.cfg, bench.device
    b = cfg["batch"]
    kwargs = dict(augment="color", device=device, batch_size=b, num_workers=cfg["mine_workers"], seed=0)
    try:
        mine_dataset(bench.dense, mining_dataset(cfg, max(1, cfg["warmup"] // 4) * b), bench.thresholds,
                     **kwargs)
        dataset = mining_dataset(cfg, cfg["mine_batches"] * b)
        sync(device)
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            cands = mine_dataset(bench.dense, dataset, bench.thresholds, **kwargs)
            sync(device)
            seconds = time.perf_counter() - t0
    finally:
        _release(device)
    n = len(dataset)
    return ModeResult(img_s=n / seconds, peak_gb=mem.peak_bytes / 1e9 if mem.peak_bytes is not None else None,
                      seconds=seconds, images=n,
                      extra={"candidates_per_image": len(cands) / n, "num_workers": cfg["mine_workers"]})


# ----------------------------------------------------------------------------- evaluation


def synthetic_coco(n_images: int, *, classes: int = 80, dets_per_image: int = 100, seed: int = 0):
    """COCO gt (~7 boxes per image, 640x480) and 100 detections per image (70% near a gt box)."""
    rng = np.random.default_rng(seed)
    size = np.array([640.0, 480.0])
    images = [{"id": i + 1, "width": 640, "height": 480, "file_name": f"{i + 1:06d}.jpg"} for i in range(n_images)]
    cats = [{"id": c + 1, "name": f"class{c + 1}"} for c in range(classes)]
    anns, dets = [], []
    for im in images:
        k = int(rng.integers(1, 14))
        wh = rng.uniform(10, 300, (k, 2))
        xy = rng.uniform(0, 1, (k, 2)) * (size - wh)
        labels = rng.integers(1, classes + 1, k)
        for j in range(k):
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": int(labels[j]),
                         "bbox": [float(xy[j, 0]), float(xy[j, 1]), float(wh[j, 0]), float(wh[j, 1])],
                         "area": float(wh[j, 0] * wh[j, 1]), "iscrowd": 0})
        src = rng.integers(0, k, dets_per_image)
        jitter = rng.normal(0, 0.1, (dets_per_image, 4))
        box = np.concatenate([xy[src], wh[src]], axis=1)
        box[:, :2] += jitter[:, :2] * box[:, 2:]
        box[:, 2:] *= np.exp(jitter[:, 2:])
        lab = np.where(rng.random(dets_per_image) < 0.7, labels[src], rng.integers(1, classes + 1, dets_per_image))
        score = rng.random(dets_per_image)
        for j in range(dets_per_image):
            dets.append({"image_id": im["id"], "category_id": int(lab[j]),
                         "bbox": [float(v) for v in box[j]], "score": float(score[j])})
    return {"images": images, "categories": cats, "annotations": anns}, dets


def resolve_evaluator():
    """(coco_ap function or None, a line naming it). pycocotools may be missing on the GPU
    machine: faster-coco-eval, if importable, stands in for it."""
    try:
        import pycocotools  # noqa: F401
        from comining.detection_ap import coco_ap
        from importlib.metadata import version
        return coco_ap, f"comining.detection_ap.coco_ap (pycocotools {version('pycocotools')})"
    except ImportError:
        pass
    try:
        import faster_coco_eval
        if hasattr(faster_coco_eval, "init_as_pycocotools"):
            faster_coco_eval.init_as_pycocotools()  # `import pycocotools` now gives faster-coco-eval
            from comining.detection_ap import coco_ap
            return coco_ap, (f"comining.detection_ap.coco_ap over faster-coco-eval "
                             f"{getattr(faster_coco_eval, '__version__', '?')} (as pycocotools)")
    except ImportError:
        pass
    return None, "no COCO evaluator: neither pycocotools nor faster-coco-eval is installed (pip install pycocotools)"


def bench_eval(n_images: int) -> ModeResult:
    coco_ap, name = resolve_evaluator()
    if coco_ap is None:
        return ModeResult(img_s=None, note=name)
    gt, dets = synthetic_coco(n_images)
    t0 = time.perf_counter()
    ap = coco_ap(gt, dets)
    seconds = time.perf_counter() - t0
    note = name
    extrapolated = n_images != EVAL_TARGET_IMAGES
    if extrapolated:
        note += f"; measured on {n_images} images, scaled linearly to {EVAL_TARGET_IMAGES}"
    return ModeResult(img_s=n_images / seconds, seconds=seconds, images=n_images, note=note,
                      extra={"evaluator": name, "eval_5000_s": seconds * EVAL_TARGET_IMAGES / n_images,
                             "extrapolated": extrapolated, "detections": len(dets),
                             "gt_boxes": len(gt["annotations"]), "AP": ap.get("AP")})


# ----------------------------------------------------------------------------- profile


def _self_time_us(evt, cuda: bool) -> float:
    if cuda:
        for attr in ("self_device_time_total", "self_cuda_time_total"):
            v = getattr(evt, attr, None)
            if v is not None:
                return float(v)
        return 0.0
    return float(evt.self_cpu_time_total)


def profile_comining(bench: Bench, top: int = 15) -> dict:
    """torch.profiler over a few co-mining steps: top ops by self time (device time on GPU),
    and the host syncs per step (.item()/nonzero calls: each waits for the GPU)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = bench.device.type == "cuda"
    step, _ = engine_step_fn(bench, "comining")
    bench.detector.train()
    step(bench.batches[0])
    sync(bench.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    n = bench.cfg["profile_steps"]
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for i in range(n):
            step(bench.batches[i % len(bench.batches)])
        sync(bench.device)
        wall = (time.perf_counter() - t0) / n
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    total = sum(_self_time_us(e, cuda) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: _self_time_us(e, cuda), reverse=True)[:top]
    rows = [{"op": e.key, "ms_per_step": _self_time_us(e, cuda) / 1e3 / n,
             "share": _self_time_us(e, cuda) / total, "calls_per_step": e.count / n} for e in ranked]
    calls = {e.key: e.count for e in events}
    syncs = {k: calls.get(k, 0) / n for k in ("aten::_local_scalar_dense", "aten::nonzero", "cudaStreamSynchronize",
                                              "cudaDeviceSynchronize") if calls.get(k)}
    _release(bench.device)
    return {"clock": "CUDA self time" if cuda else "CPU self time", "steps": n, "wall_ms_per_step": wall * 1e3,
            "total_ms_per_step": total / 1e3 / n, "top": rows, "host_syncs_per_step": syncs,
            "kernel_launches_per_step": calls.get("cudaLaunchKernel", 0) / n if cuda else None}


def phase_breakdown(bench: Bench) -> dict:
    """Synchronized wall time of each part of a co-mining step (the same calls as
    comining.siamese.training_step, timed one by one)."""
    from comining.augment import augment_batch
    from comining.model import slice_head, view_loss
    from comining.siamese import build_view_targets, pseudo_boxes

    dense, device, opt = bench.dense, bench.device, _optimizer(bench.detector)
    views = ("original", "augmented")
    bench.detector.train()
    times = defaultdict(float)
    n = bench.cfg["phase_steps"]
    for i in range(n + 1):
        batch = bench.batches[i % len(bench.batches)]
        b = batch.images.shape[0]
        marks = []

        def mark(name):
            sync(device)
            marks.append((name, time.perf_counter()))

        mark("start")
        aug = augment_batch(batch.images, batch.valid_sizes, bench.augmenter)
        mark("augment (colour jitter, per image)")
        head, anchors, per_level = dense(torch.cat([batch.images, aug]))
        mark("forward (backbone + head, 2B images)")
        heads = {v: slice_head(head, k * b, (k + 1) * b) for k, v in enumerate(views)}
        pseudo = {v: pseudo_boxes(dense.detector, heads[v], anchors[:b], per_level, batch, bench.thresholds)
                  for v in views}
        targets = build_view_targets("comining", batch.targets, pseudo)
        mark("co-generation (post-process + filter, both views)")
        total = sum(sum(view_loss(dense.detector, heads[v], anchors[:b], per_level, targets[v]).values())
                    for v in views)
        mark("losses (matching + focal + box, both views)")
        opt.zero_grad(set_to_none=True)
        total.backward()
        mark("backward")
        opt.step()
        mark("optimizer (SGD)")
        if i == 0:
            continue  # warm-up
        for (_, t_prev), (name, t) in zip(marks, marks[1:]):
            times[name] += t - t_prev
    _release(device)
    step_ms = sum(times.values()) / n * 1e3
    return {"steps": n, "step_ms": step_ms,
            "phases": [{"phase": k, "ms": v / n * 1e3, "share": v / n * 1e3 / step_ms} for k, v in times.items()]}


# ----------------------------------------------------------------------------- report


def _fmt(v, digits=1, unit=""):
    return "n/a" if v is None else f"{v:.{digits}f}{unit}"


def summarize(results: dict[str, ModeResult], bench: Bench, meta: dict) -> dict:
    cfg = bench.cfg
    b = cfg["batch"]
    get = lambda m: results[m].img_s if m in results else None  # noqa: E731
    stock, comining = get("stock_torchvision"), get("comining")
    h, w = cfg["shape"]
    gpu_setting = (bench.device.type == "cuda" and cfg["detector"] == "retinanet" and cfg["backbone"] == "resnet50"
                   and cfg["fpn_channels"] == 256 and bench.amp is not None)
    bound = tuple(x * BOUND_PIXELS / (h * w) for x in BOUND_IMG_S)
    ev = results.get("eval")
    peak = {m: results[m].peak_gb for m in ("stock_torchvision", "original", "comining", "mining") if m in results}
    out = {
        "device": meta["device"],
        "stock_torchvision_img_s": stock,
        "original_img_s": get("original"),
        "comining_img_s": comining,
        "mining_img_s": get("mining"),
        "eval_5000_s": ev.extra.get("eval_5000_s") if ev else None,
        "peak_mem_gb": peak,
        "peak_mem_gb_per_original_image": {m: (v / b if v is not None else None) for m, v in peak.items()},
        "ratio_comining_vs_stock": comining / stock if stock and comining else None,
        "ratio_original_vs_stock": get("original") / stock if stock and get("original") else None,
        "bound_img_s": list(bound) if gpu_setting else None,
        "bound_fraction": ([comining / bound[1], comining / bound[0]] if gpu_setting and comining else None),
        "targets": TARGETS,
        "targets_measured": gpu_setting and "H100" in meta["device"],
        "quick": meta["quick"],
        "memory_measure": ("torch.cuda.max_memory_allocated over the timed iterations (weights, optimizer "
                           "state, activations)" if bench.device.type == "cuda" else
                           "growth of the process RSS over the timed iterations (CPU, sampled, approximate; "
                           "weights excluded)"),
        "eval": ({"evaluator": ev.note, **ev.extra, "images": ev.images, "measured_s": ev.seconds}
                 if ev and ev.img_s else None),
        "modes": {m: dataclasses.asdict(r) for m, r in results.items()},
        "settings": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
                     "amp": "bf16" if bench.amp else "off", "channels_last": bench.channels_last,
                     "thresholds": bench.thresholds.as_dict(), "lr": LR},
        **{k: v for k, v in meta.items() if k not in ("device", "quick")},
    }
    return out


def write_markdown(path: Path, s: dict) -> None:
    cfg = s["settings"]
    h, w = cfg["shape"]
    quick = s["quick"]
    lines = ["# Speed: two views for the price of one, against stock torchvision", ""]
    if not s["targets_measured"]:
        lines += [f"> **{'CPU QUICK SMOKE NUMBERS' if quick else 'NOT THE TARGET SETTING'}: the H100 targets "
                  f"were NOT measured.** Hardware: {s['device']}. "
                  + ("These numbers only show that every mode of the benchmark runs; they say nothing about "
                     "GPU speed. Run `python benchmarks/speed.py` on one H100 for the real table."
                     if quick else "The targets are for one H100 with RetinaNet R50-FPN in bf16."), ""]
    if s.get("complete") is False:
        lines += ["> **PARTIAL**: written after a mode finished; the run had not completed every mode.", ""]
    lines += [f"Measured by `benchmarks/speed.py` on {s['date']} (commit {s['commit']}).", "",
              f"- Command: `{s['command']}`",
              f"- Hardware: {s['device']}" + (f"; load average at start {s['load_average_at_start'][0]:.1f} "
                                              f"(other work shared the machine)" if s.get("load_average_at_start")
                                              and s["load_average_at_start"][0] > 1.0 else ""),
              f"- Software: Python {s['python']}, torch {s['torch']}, torchvision {s['torchvision']}"
              + (f", CUDA {s['cuda']}, cuDNN {s['cudnn']}" if s.get("cuda") else ""),
              f"- Model: {cfg['detector']} {cfg['backbone']}-FPN ({cfg['fpn_channels']} channels), "
              f"{cfg['classes']} classes, init `{cfg['init']}`"
              + (f", checkpoint {cfg['checkpoint']}" if cfg.get("checkpoint") else "")
              + f"; precision {cfg['amp']}, channels_last {'on' if cfg['channels_last'] else 'off'}",
              f"- Inputs: random uint8 images {h}x{w} (fixed shape), batch {cfg['batch']} original images, "
              f"3-11 boxes per image (mean 7); {cfg['iters']} timed iterations after {cfg['warmup']} warm-up "
              f"per training mode; mining {cfg['mine_batches']} batches ({cfg['mine_workers']} loader workers)",
              f"- Stock transform check: max |torchvision transform - DenseForward.normalize| = "
              f"{s['stock_transform_max_diff']:.2e} (an identity: the stock model does no resize)", ""]
    lines += ["| mode | original images/s | vs stock | peak memory GB | GB per original image | target |",
              "|---|---:|---:|---:|---:|---|"]
    stock = s["stock_torchvision_img_s"]
    per = s["peak_mem_gb_per_original_image"]
    target_of = {"comining": f">= {TARGETS['comining_img_s']:.0f} img/s and >= {TARGETS['ratio_vs_stock']:.1f}x stock",
                 "mining": f">= {TARGETS['mining_img_s']:.0f} img/s"}
    if s["targets_measured"]:
        com, ratio, mine = s["comining_img_s"], s["ratio_comining_vs_stock"], s["mining_img_s"]
        met = lambda ok: "**met**" if ok else "**not met**"  # noqa: E731
        target_of["comining"] += ": " + met(com is not None and ratio is not None and com >= TARGETS["comining_img_s"]
                                            and ratio >= TARGETS["ratio_vs_stock"])
        target_of["mining"] += ": " + met(mine is not None and mine >= TARGETS["mining_img_s"])
    for mode in ("stock_torchvision", "original", "comining", "mining"):
        r = s["modes"].get(mode)
        if r is None:
            continue
        ratio = r["img_s"] / stock if stock and r["img_s"] and mode != "mining" else None
        lines.append(f"| {mode} | {_fmt(r['img_s'])} | {_fmt(ratio, 2, 'x')} | {_fmt(r['peak_gb'], 2)} | "
                     f"{_fmt(per.get(mode), 3)} | {target_of.get(mode, '')} |")
    ev = s.get("eval")
    if ev:
        how = (f"measured on {ev['images']} images in {ev['measured_s']:.2f} s, scaled linearly"
               if ev.get("extrapolated") else "measured")
        lines += ["", f"Evaluation of {EVAL_TARGET_IMAGES} images (~7 gt boxes and 100 detections per image, "
                      f"80 classes; {how}): **{_fmt(s['eval_5000_s'], 2, ' s')}** "
                      f"(target <= {TARGETS['eval_5000_s']:.0f} s"
                      + ((": **met**" if s["eval_5000_s"] <= TARGETS["eval_5000_s"] else ": **not met**")
                         if s["targets_measured"] else "") + f"); evaluator: {ev['evaluator']}."]
    elif "eval" in s["modes"]:
        lines += ["", f"Evaluation: not measured ({s['modes']['eval']['note']})."]
    if s.get("bound_fraction"):
        lo, hi = s["bound_img_s"]
        f_lo, f_hi = s["bound_fraction"]
        lines += ["", f"Co-mining reaches {100 * f_lo:.0f}-{100 * f_hi:.0f}% of the physical bound "
                      f"({lo:.0f}-{hi:.0f} original images/s at this shape: ~340-420 at 800x1333, scaled by pixels)."]
    else:
        lines += ["", "Fraction of the physical bound (~340-420 original images/s on one H100 at 800x1333): "
                      "not applicable to this hardware/setting."]
    notes = []
    for mode in ("stock_torchvision", "original", "comining"):
        r = s["modes"].get(mode)
        if r and r["extra"].get("nonfinite_steps"):
            notes.append(f"{mode}: {r['extra']['nonfinite_steps']} non-finite losses in the timed steps")
    com = s["modes"].get("comining")
    if com and "pseudo_boxes_per_image" in com["extra"]:
        notes.append(f"co-mining made {com['extra']['pseudo_boxes_per_image']:.2f} pseudo boxes per image "
                     "(both views) in the timed steps")
    mine = s["modes"].get("mining")
    if mine and "candidates_per_image" in mine["extra"]:
        notes.append(f"mining kept {mine['extra']['candidates_per_image']:.2f} candidates per image")
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + ". From a random start the classification prior keeps "
                  "scores under tau, so post-processing and candidate building are at their cheapest; "
                  "`--checkpoint` measures a trained model."]
    lines += ["", f"Memory: {s['memory_measure']}.", ""]

    prof = s.get("profile")
    if prof:
        lines += ["## Where the time goes", "",
                  f"torch.profiler over {prof['steps']} co-mining steps ({prof['clock']}; "
                  f"{prof['wall_ms_per_step']:.1f} ms wall per profiled step, "
                  f"{prof['total_ms_per_step']:.1f} ms of op self time per step):", "",
                  "| op | ms / step | share | calls / step |", "|---|---:|---:|---:|"]
        for r in prof["top"]:
            op = (r["op"] if len(r["op"]) <= 70 else r["op"][:67] + "...").replace("|", "\\|")
            lines.append(f"| `{op}` | {r['ms_per_step']:.2f} | {100 * r['share']:.1f}% | {r['calls_per_step']:.0f} |")
        syncs = ", ".join(f"{k} {v:.0f}" for k, v in prof["host_syncs_per_step"].items()) or "none recorded"
        lines += ["", f"Host synchronisations per step (each one stalls the CPU until the GPU catches up; "
                      f"on the CPU they are only counted): {syncs}."
                  + (f" Kernel launches per step: {prof['kernel_launches_per_step']:.0f}."
                     if prof.get("kernel_launches_per_step") else ""), ""]
    ph = s.get("phases")
    if ph:
        lines += [f"Phases of a co-mining step (synchronized after each; {ph['step_ms']:.1f} ms per step over "
                  f"{ph['steps']} steps):", "", "| phase | ms | share |", "|---|---:|---:|"]
        for r in ph["phases"]:
            lines.append(f"| {r['phase']} | {r['ms']:.1f} | {100 * r['share']:.1f}% |")
        lines.append("")
    if not s["targets_measured"]:
        lines += ["## What should limit the GPU (read from the code, not measured here)", "",
                  "- Host syncs: every `.item()`/`nonzero` waits for the GPU. A co-mining step has per-image "
                  "loops with boolean-mask indexing in torchvision's RetinaNet loss and post-processing, in "
                  "co-generation, plus one `float()` per loss part and the finiteness check: the counts above "
                  "grow with the batch (x2 views), and each one drains the launch queue.",
                  "- Dense fp32 loss tensors: the head output is cast to fp32 and the focal loss builds a "
                  "one-hot target and several intermediates of anchors x classes per image "
                  "(~200k x 80 at 800x1344), memory-bound work that bf16 does not shrink.",
                  "- Colour jitter runs image by image on the device (many small kernels per image).",
                  "- Mining: three `.cpu()` copies per image and view, and one Python dict per candidate; "
                  "the collated `Batch` has no `pin_memory()`, so the loader's pinning does nothing and the "
                  "host-to-device copy is synchronous.",
                  "- Evaluation: pycocotools' per-image Python `evaluateImg` and `accumulate` are ~95% of "
                  "`coco_ap`'s time; <= 3 s for 5000 images needs a compiled or vectorised evaluator "
                  "(faster-coco-eval, or batched IoU matching).", ""]
    lines += ["## What is and is not measured", "",
              "- Training modes run the loop body of their own training code: torchvision's reference loop "
              "(`model(images, targets)`, `.item()`, backward, SGD) for stock, `comining.engine.train`'s "
              "(training_step, finiteness check, backward, SGD) for ours. Data loading is excluded: the batches "
              "are already on the device.",
              "- Mining is `comining.mining.mine_dataset` end to end (loader, both views, co-generation, "
              "agreement, candidate dicts) over an in-memory dataset: only image decoding and resizing are excluded.",
              "- Evaluation is `comining.detection_ap.coco_ap` end to end (input checks, index, evaluate, accumulate).",
              "- `tests/test_equivalence.py` checks that our Siamese layer (DenseForward + view_loss / "
              "view_detections) gives torchvision's own losses and detections in fp32.", ""]
    path.write_text("\n".join(lines))


# ----------------------------------------------------------------------------- main


def parse_shape(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r}: give S or HxW, e.g. 800x1344") from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 32:
        raise argparse.ArgumentTypeError(f"shape {text!r}: give S or HxW with sides >= 32")
    return dims


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the CPU smoke setting (about a minute)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--detector", choices=("retinanet", "fcos"))
    p.add_argument("--backbone", choices=("resnet50", "resnet18", "resnet34", "resnet101", "mobilenet_v3"))
    p.add_argument("--fpn-channels", type=int)
    p.add_argument("--shape", type=parse_shape, help="S or HxW, multiples of 32 (default 800x1344; quick 160)")
    p.add_argument("--batch", type=int, help="original images per step (default 16; quick 4)")
    p.add_argument("--iters", type=int, help="timed iterations per training mode (default 200)")
    p.add_argument("--warmup", type=int, help="untimed iterations first (default 15)")
    p.add_argument("--mine-batches", type=int, help="batches mined in the timed mining run")
    p.add_argument("--mine-workers", type=int, help="mining loader workers (default 4; quick 0)")
    p.add_argument("--eval-images", type=int, help=f"images in the evaluation (default {EVAL_TARGET_IMAGES}; "
                                                   "quick 500, scaled linearly)")
    p.add_argument("--profile-steps", type=int, help="co-mining steps under torch.profiler (0: none)")
    p.add_argument("--phase-steps", type=int, help="co-mining steps timed phase by phase (0: none)")
    p.add_argument("--init", choices=("frozen", "scratch"),
                   help="frozen: paper layout (frozen BN) with random weights; scratch: trainable BN")
    p.add_argument("--checkpoint", help="a detector state dict or comining checkpoint to measure instead")
    p.add_argument("--tau", type=float, help="co-generation score threshold (default: the authors')")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto", help="auto: bf16 on CUDA")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto", help="auto: on CUDA")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; quick: 1)")
    p.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"),
                   help="where speed.md and speed.json go (default: benchmarks/results)")
    return p


def config_from_args(args) -> dict:
    cfg = dict(SETTINGS["quick" if args.quick else "full"])
    for key in ("detector", "backbone", "fpn_channels", "shape", "batch", "iters", "warmup", "mine_batches",
                "mine_workers", "eval_images", "profile_steps", "phase_steps", "init", "checkpoint", "tau"):
        v = getattr(args, key, None)
        if v is not None:
            cfg[key] = v
    cfg["amp"], cfg["channels_last"] = args.amp, args.channels_last
    cfg["checkpoint"] = cfg.get("checkpoint")
    cfg["tau"] = cfg.get("tau")
    return cfg


def run(cfg: dict, modes: list[str], device: torch.device, *, quick: bool, command: str,
        progress=print, on_update=None) -> dict:
    """Every asked mode, then the profile; returns the summary dict (the json).
    `on_update(summary)` is called after each mode (a cut run keeps what it measured)."""
    bench = setup(cfg, device)
    meta = {"device": device_name(device), "quick": quick, "command": command,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda if device.type == "cuda" else None,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "stock_transform_max_diff": check_stock_transform(bench),
            "load_average_at_start": _load_average()}
    results: dict[str, ModeResult] = {}
    for mode in modes:
        t0 = time.perf_counter()
        oom = None
        try:
            if mode == "mining":
                results[mode] = bench_mining(bench)
            elif mode == "eval":
                results[mode] = bench_eval(cfg["eval_images"])
            else:
                results[mode] = bench_training(bench, mode)
        except torch.cuda.OutOfMemoryError as exc:
            oom = str(exc).splitlines()[0] if str(exc) else "out of memory"
        if oom is not None:  # outside the except block: the failed step's tensors are gone
            _release(device)
            results[mode] = ModeResult(img_s=None, note=f"out of GPU memory at batch {cfg['batch']} ({oom}); "
                                                        "try --batch 8")
        r = results[mode]
        progress(f"{mode:18s} {_fmt(r.img_s, 2)} img/s  peak {_fmt(r.peak_gb, 3)} GB  "
                 f"({time.perf_counter() - t0:.1f} s) {r.note}", flush=True)
        if on_update:
            on_update(summarize(results, bench, meta))
    summary = summarize(results, bench, meta)
    if "comining" in modes and cfg["profile_steps"] > 0:
        summary["profile"] = profile_comining(bench)
    if "comining" in modes and cfg["phase_steps"] > 0:
        summary["phases"] = phase_breakdown(bench)
    return summary


def write_results(summary: dict, out_dir: Path) -> tuple[Path, Path]:
    from comining.fileio import atomic_write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "speed.json", out_dir / "speed.md"
    atomic_write_json(js, summary, indent=1)
    write_markdown(md, summary)
    return js, md


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if args.device == "auto":
        device = torch.device("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda asked for, but no CUDA device is available")
    cfg = config_from_args(args)
    command = "python benchmarks/speed.py" + ("" if argv is None and len(sys.argv) <= 1 else
                                              " " + shlex.join(sys.argv[1:] if argv is None else argv))
    out_dir = Path(args.out_dir)
    threads_before = torch.get_num_threads()
    threads = args.threads or cfg.get("threads")
    if threads:
        torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        summary = run(cfg, modes, device, quick=args.quick, command=command,
                      on_update=lambda partial: write_results({**partial, "complete": False}, out_dir))
        summary["complete"] = True
        summary["total_seconds"] = time.perf_counter() - t0
        js, md = write_results(summary, out_dir)
    finally:
        torch.set_num_threads(threads_before)  # main() may run inside a test process
    print(f"wrote {md} and {js} ({summary['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
