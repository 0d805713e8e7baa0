"""Transforms and loading: one fixed size, flips, views share boxes, ids kept."""

from __future__ import annotations

import torch

from comining.augment import augment_batch, make_view_augmenter
from comining.coco import load_coco
from comining.data import (DetectionDataset, TrainingSampler, apply_geometry, boxes_to_original,
                           make_loader)


def test_geometry_resizes_longer_side_pads_and_maps_back():
    image = torch.zeros((3, 100, 200), dtype=torch.uint8)
    boxes = torch.tensor([[20.0, 10, 60, 50], [150, 0, 200, 100]])
    for flip in (False, True):
        padded, out, scale, valid = apply_geometry(image, boxes.numpy(), 128, flip)
        assert padded.shape == (3, 128, 128) and valid == (64, 128)
        assert scale == (128 / 200, 64 / 100)
        back = boxes_to_original(out, scale, valid, flip, 200, 100)
        torch.testing.assert_close(back, boxes, atol=1e-3, rtol=0)
    _, flipped, _, _ = apply_geometry(image, boxes.numpy(), 128, True)
    torch.testing.assert_close(flipped[0], torch.tensor([128 - 38.4, 6.4, 128 - 12.8, 32.0]))



def test_geometry_keeps_integer_boxes_exact_and_returns_float32():
    """Integer (or float64) pixel boxes are scaled without rounding, into float32 boxes:
    200x100 -> 128x64 is a scale of 0.64, so [10, 10, 50, 50] -> [6.4, 6.4, 32, 32]."""
    import numpy as np
    image = torch.zeros((3, 100, 200), dtype=torch.uint8)
    for boxes in (np.array([[10, 10, 50, 50]], np.int64), np.array([[10, 10, 50, 50]], np.float64)):
        _, out, _, _ = apply_geometry(image, boxes, 128, False)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, torch.tensor([[6.4, 6.4, 32.0, 32.0]]))


def test_geometry_pads_with_zeros_and_shrinks_fine_detail_to_its_average():
    """The padding is 0 whatever the image; shrinking by 4 a pattern of vertical stripes
    (one white column in four: mean 63.75) gives about that grey (antialiased), not the
    black that sampling between the white columns would give."""
    image = torch.zeros((3, 100, 400), dtype=torch.uint8)
    image[:, :, 0::4] = 255
    padded, _, _, (h, w) = apply_geometry(image, torch.zeros((0, 4)).numpy(), 100, False)
    assert (h, w) == (25, 100)
    assert (padded[:, h:, :] == 0).all()
    inner = padded[:, 2:h - 2, 2:w - 2].float()
    assert 50 <= inner.min() and inner.max() <= 80


def test_boxes_to_original_clamps_above_and_left_of_the_image():
    # a box reaching above and left of the canvas: clamped to 0 on both axes
    b = boxes_to_original(torch.tensor([[-8.0, -6.0, 20.0, 30.0]]), (0.5, 0.5), (64, 64),
                          False, 128, 128)
    assert b.tolist() == [[0.0, 0.0, 40.0, 60.0]]

def test_padding_stays_black_and_views_differ_only_in_colour(tiny_dataset):
    ds = DetectionDataset(load_coco(tiny_dataset / "annotations" / "train.json",
                                    tiny_dataset / "images"), 160)
    sample = ds[0]
    h, w = sample.valid_size
    assert sample.image.shape == (3, 160, 160)
    torch.manual_seed(0)
    images = sample.image[None].repeat(4, 1, 1, 1)
    aug = augment_batch(images, [sample.valid_size] * 4, make_view_augmenter("color"))
    assert aug.shape == images.shape
    assert (aug[:, :, h:, :] == 0).all() and (aug[:, :, :, w:] == 0).all()
    assert not torch.equal(aug, images)


def test_sampler_is_seeded_resumable_and_flips():
    a = TrainingSampler(10, 4, seed=3, flip=True)
    stream = [x for _, x in zip(range(40), a)]
    assert sorted(i for i, _ in stream[:10]) == list(range(10))  # an epoch is a permutation
    assert {f for _, f in stream} == {True, False}
    resumed = TrainingSampler(10, 4, seed=3, flip=True, start_iter=5)
    assert [x for _, x in zip(range(20), resumed)] == stream[20:40]
    ranks = [TrainingSampler(10, 2, seed=3, flip=True, rank=r, world_size=2) for r in (0, 1)]
    r0, r1 = ([x for _, x in zip(range(4), s)] for s in ranks)
    assert r0[:2] + r1[:2] + r0[2:] + r1[2:] == [x for _, x in zip(range(8), TrainingSampler(10, 2, seed=3, flip=True))]


def test_loader_with_workers_keeps_image_ids(tiny_dataset):
    coco = load_coco(tiny_dataset / "annotations" / "train.json", tiny_dataset / "images")
    # pinning needs an accelerator (torch warns and skips it without one)
    loader = make_loader(DetectionDataset(coco, 96), batch_size=5, shuffle=False, num_workers=2,
                         pin_memory=torch.cuda.is_available())
    ids = [i for batch in loader for i in batch.image_ids]
    assert ids == [r.id for r in coco.images]
    batch = next(iter(loader))
    assert batch.images.dtype == torch.uint8 and batch.images.shape[1:] == (3, 96, 96)
    for t, rec in zip(batch.targets, coco.images):
        assert len(t["boxes"]) == len(rec.boxes) and t["labels"].tolist() == rec.labels.tolist()
