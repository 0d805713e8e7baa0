"""The second view: a purely photometric copy of each image (geometry untouched).

As in the authors' release: ColorJitter(brightness 0.8, contrast 0.8, saturation 0.8,
hue 0.2) with probability 0.8. Blur (the paper's Table 4 alternative) is offered too.
It runs on the training device, image by image (each image draws its own parameters), and
only on the valid part of a padded canvas so the padding stays black in both views.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

AUGMENTS = ("color", "blur", "color+blur")


def make_view_augmenter(kind: str = "color"):
    """A callable mapping one (3, H, W) uint8 image to its augmented copy."""
    if kind not in AUGMENTS:
        raise ValueError(f"unknown augment {kind!r}; choose one of {', '.join(AUGMENTS)}")
    steps = []
    if "color" in kind:
        steps.append(v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8))
    if "blur" in kind:
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=0.5))
    return v2.Compose(steps)


def augment_batch(images: torch.Tensor, valid_sizes, augmenter) -> torch.Tensor:
    """(B, 3, S, S) uint8 -> augmented copy; each image's valid (h, w) region only."""
    out = images.clone()
    for i, (h, w) in enumerate(valid_sizes):
        out[i, :, :h, :w] = augmenter(images[i, :, :h, :w])
    return out
