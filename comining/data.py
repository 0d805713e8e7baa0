"""Torch side of the data layer: one fixed square size per run, both views share boxes.

Geometry (resize so the longer side is `image_size`, optional horizontal flip, pad to
`image_size` x `image_size` at the bottom/right) is applied once per sample here; the second
view is made later, on the training device, by a purely photometric augmenter
(`comining.augment`), so the two views share their boxes exactly. A fixed padded shape keeps
tensor shapes static (cudnn.benchmark, CUDA graphs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from comining.coco import CocoDataset, load_rgb


@dataclass
class Sample:
    image: torch.Tensor        # (3, S, S) uint8, padded
    boxes: torch.Tensor        # (N, 4) float32 xyxy in resized pixels
    labels: torch.Tensor       # (N,) int64 contiguous labels
    crowd_boxes: torch.Tensor  # (M, 4) float32 xyxy in resized pixels
    rejected_boxes: torch.Tensor  # (R, 4) float32 xyxy in resized pixels: known background
    image_id: int
    scale: tuple[float, float]  # (sx, sy): resized = original * scale
    valid_size: tuple[int, int]  # (h, w) of the image inside the padded canvas
    flipped: bool


@dataclass
class Batch:
    images: torch.Tensor       # (B, 3, S, S) uint8
    targets: list[dict]        # per image: boxes, labels, crowd_boxes, rejected_boxes (resized px)
    image_ids: list[int]
    scales: list[tuple[float, float]]
    valid_sizes: list[tuple[int, int]]
    flipped: list[bool]

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True): page-locked images for async copies."""
        self.images = self.images.pin_memory()
        return self

    def to(self, device, non_blocking: bool = True) -> "Batch":
        return Batch(self.images.to(device, non_blocking=non_blocking),
                     [{k: v.to(device, non_blocking=non_blocking) for k, v in t.items()}
                      for t in self.targets],
                     self.image_ids, self.scales, self.valid_sizes, self.flipped)


def resized_size(width: int, height: int, image_size: int) -> tuple[int, int]:
    """(h, w) after scaling the longer side to image_size (as v2.Resize(max_size=...) does)."""
    scale = image_size / max(width, height)
    return (min(image_size, max(1, int(height * scale + 0.5))),
            min(image_size, max(1, int(width * scale + 0.5))))


def apply_geometry(image: torch.Tensor, boxes: np.ndarray, image_size: int, flip: bool):
    """Resize (longer side = image_size), optionally flip, pad to a square.

    image: (3, H, W) uint8; boxes: (N, 4) xyxy original pixels.
    Returns (padded image (3, S, S), boxes (N, 4) in resized pixels, (sx, sy), (h, w)).
    """
    _, h0, w0 = image.shape
    h, w = resized_size(w0, h0, image_size)
    img = tv_tensors.Image(image)
    bb = tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                  format="XYXY", canvas_size=(h0, w0))
    img, bb = F.resize(img, [h, w], antialias=True), F.resize(bb, [h, w])
    if flip:
        img, bb = F.horizontal_flip(img), F.horizontal_flip(bb)
    padding = [0, 0, image_size - w, image_size - h]  # left, top, right, bottom
    img, bb = F.pad(img, padding, fill=0), F.pad(bb, padding)
    return img.as_subclass(torch.Tensor), bb.as_subclass(torch.Tensor), (w / w0, h / h0), (h, w)


class DetectionDataset(Dataset):
    """Samples of a CocoDataset at one fixed size.

    An index is an int, or (int, flip) as TrainingSampler yields it: the sampler decides the
    flips so that a run is reproducible whatever the number of workers, and on resume.
    """

    def __init__(self, coco: CocoDataset, image_size: int):
        self.coco = coco
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.coco.images)

    def __getitem__(self, index) -> Sample:
        index, flip = index if isinstance(index, tuple) else (index, False)
        rec = self.coco.images[index]
        rgb = load_rgb(rec.path, exif_transpose=rec.exif_transpose)
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
        if image.shape[1:] != (rec.height, rec.width):
            # The header matched at load; a mismatch here means the file changed since.
            from comining.errors import InputError
            raise InputError(rec.path, f"image is {image.shape[2]}x{image.shape[1]}, "
                                       f"expected {rec.width}x{rec.height}")
        n, m = len(rec.boxes), len(rec.crowd_boxes)
        all_boxes = np.concatenate([rec.boxes, rec.crowd_boxes, rec.rejected_boxes], axis=0)
        padded, boxes, scale, valid = apply_geometry(image, all_boxes, self.image_size, flip)
        return Sample(image=padded, boxes=boxes[:n], labels=torch.as_tensor(rec.labels),
                      crowd_boxes=boxes[n:n + m], rejected_boxes=boxes[n + m:], image_id=rec.id,
                      scale=scale, valid_size=valid, flipped=flip)


class TrainingSampler(torch.utils.data.Sampler):
    """An endless, seeded stream of (index, flip): epoch e is a permutation seeded by (seed, e).

    Batch i of the run is items [i*B, (i+1)*B) of the stream, so starting at `start_iter`
    resumes exactly where a killed run stopped. With `rank`/`world_size`, each process takes
    every world_size-th batch slot of the same stream (DistributedDataParallel).
    """

    def __init__(self, size: int, batch_size: int, *, seed: int, flip: bool, start_iter: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed, self.flip = size, batch_size, seed, flip
        self.start_iter, self.rank, self.world_size = start_iter, rank, world_size

    def _epoch(self, epoch: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.size, generator=g).tolist()
        flips = (torch.rand(self.size, generator=g) < 0.5).tolist() if self.flip else [False] * self.size
        return perm, flips

    def __iter__(self):
        per_iter = self.batch_size * self.world_size
        position = self.start_iter * per_iter + self.rank * self.batch_size
        epoch, perm, flips = -1, [], []
        while True:
            for k in range(self.batch_size):
                e, offset = divmod(position + k, self.size)
                if e != epoch:
                    epoch = e
                    perm, flips = self._epoch(e)
                yield perm[offset], flips[offset]
            position += per_iter


def collate(samples: list[Sample]) -> Batch:
    return Batch(
        images=torch.stack([s.image for s in samples]).contiguous(),
        targets=[{"boxes": s.boxes, "labels": s.labels, "crowd_boxes": s.crowd_boxes,
                  "rejected_boxes": s.rejected_boxes} for s in samples],
        image_ids=[s.image_id for s in samples],
        scales=[s.scale for s in samples],
        valid_sizes=[s.valid_size for s in samples],
        flipped=[s.flipped for s in samples])


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, num_workers: int,
                pin_memory: bool, sampler=None, generator: torch.Generator | None = None,
                drop_last: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                      sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      collate_fn=collate, generator=generator, drop_last=drop_last,
                      persistent_workers=num_workers > 0)


def boxes_to_original(boxes: torch.Tensor, scale: tuple[float, float], valid_size: tuple[int, int],
                      flipped: bool, width: int, height: int) -> torch.Tensor:
    """Map xyxy boxes from the resized (possibly flipped) canvas back to original pixels."""
    b = boxes.clone().float()
    if flipped:
        w_valid = valid_size[1]
        b[:, [0, 2]] = w_valid - b[:, [2, 0]]
    sx, sy = scale
    b[:, [0, 2]] /= sx
    b[:, [1, 3]] /= sy
    b[:, [0, 2]] = b[:, [0, 2]].clamp(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clamp(0, height)
    return b
