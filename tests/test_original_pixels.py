"""Boxes leave the network in ORIGINAL image pixels: mining and `comining predict` undo the
resize, the horizontal flip and the padding, on an EXIF-rotated photo too.

The detector here is an oracle: it returns the bounding box of the white pixels of the
very tensor the network was given (its input pixels), so the only thing under test is the
way back to the image the annotator sees. Expected boxes are worked out by hand below.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from comining import mining, predict
from comining.coco import load_coco
from comining.config import MiningThresholds, TrainConfig
from comining.data import DetectionDataset, boxes_to_original
from comining.model import DenseForward, build_detector

torch.set_num_threads(1)   # 2 shared cores: more threads only wait on each other
SIZE = 128      # network input side: every image below has a longer side of 256 -> scale 0.5

# Each image: (file, width, height as the annotator sees it, white box there, xyxy).
# wide.png 256x128, tall.png 128x256: a white rectangle drawn where the box says.
# photo.jpg: stored 128 wide x 256 tall with EXIF orientation 6 ("rotate 90 degrees
# clockwise to view"), seen 256x128. A white rectangle stored at x in [32, 96),
# y in [40, 100) lands, after the clockwise turn (stored (x, y) -> seen (255 - y, x)),
# at seen x in [256 - 100, 256 - 40) = [156, 216), seen y in [32, 96).
EXPECTED = {1: [160.0, 32.0, 224.0, 96.0],      # wide.png
            2: [16.0, 160.0, 80.0, 240.0],      # tall.png
            3: [156.0, 32.0, 216.0, 96.0]}      # photo.jpg (EXIF-rotated)
ATOL = 2.0   # one network pixel = two original pixels (edge blur of the resize / JPEG)


def _white_box(width, height, box) -> Image.Image:
    arr = np.zeros((height, width, 3), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    return Image.fromarray(arr)


@pytest.fixture
def world(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _white_box(256, 128, (160, 32, 224, 96)).save(images / "wide.png")
    _white_box(128, 256, (16, 160, 80, 240)).save(images / "tall.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    _white_box(128, 256, (32, 40, 96, 100)).save(images / "photo.jpg", quality=98, exif=exif)
    data = {"images": [{"id": 1, "file_name": "wide.png", "width": 256, "height": 128},
                       {"id": 2, "file_name": "tall.png", "width": 128, "height": 256},
                       {"id": 3, "file_name": "photo.jpg", "width": 256, "height": 128}],
            "categories": [{"id": 5, "name": "thing"}],
            # one unrelated label, far from the white boxes (mining must not drop them)
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 10],
                             "area": 100, "iscrowd": 0}]}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return tmp_path, images, ann


class FlippingDataset(DetectionDataset):
    """Every sample horizontally flipped (as training's sampler may ask)."""

    def __getitem__(self, index):
        return super().__getitem__((index, True) if isinstance(index, int) else index)


def white_box_in(image: torch.Tensor) -> list[float]:
    """xyxy of the white pixels of a (3, S, S) uint8 network input."""
    ys, xs = torch.nonzero(image.float().mean(0) > 127, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def oracle(images: torch.Tensor) -> list[dict]:
    return [{"boxes": torch.tensor([white_box_in(im)]), "labels": torch.tensor([0]),
             "scores": torch.tensor([0.9])} for im in images]


def install_oracle(monkeypatch, module):
    """`module.view_detections` answers with the oracle over the images the network was
    last given, recorded by the returned DenseForward subclass: (that class, the record).
    Mining gives the network both views at once, the original first: every view is
    answered with the original images' objects (the first len(sizes) of the input)."""
    seen = []

    class Recording(DenseForward):
        def __call__(self, images):
            seen.append(images)
            return super().__call__(images)

    def fake_view_detections(detector, head, anchors, per_level, sizes, **kwargs):
        return oracle(seen[-1][:len(sizes)])

    monkeypatch.setattr(module, "view_detections", fake_view_detections)
    return Recording, seen


def tiny_dense() -> DenseForward:
    torch.manual_seed(0)
    return DenseForward(build_detector("retinanet", "mobilenet_v3", 1, image_size=SIZE,
                                       fpn_channels=32))


def xyxy(bbox) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def test_boxes_to_original_by_hand():
    """Resized (sx, sy) canvas, flip within the valid width, clamp to the image."""
    # 200x100 image at scale (0.64, 0.64): valid canvas 64 high, 128 wide
    box = torch.tensor([[16.0, 8.0, 48.0, 40.0]])
    assert boxes_to_original(box, (0.64, 0.64), (64, 128), False, 200, 100)[0].tolist() == \
        pytest.approx([25.0, 12.5, 75.0, 62.5], abs=1e-4)
    # flipped: x -> 128 - x first: [80, 8, 112, 40] -> / 0.64
    assert boxes_to_original(box, (0.64, 0.64), (64, 128), True, 200, 100)[0].tolist() == \
        pytest.approx([125.0, 12.5, 175.0, 62.5], abs=1e-4)
    # a portrait image: the valid width (64) is not the canvas side (128)
    assert boxes_to_original(torch.tensor([[4.0, 10.0, 20.0, 30.0]]), (0.5, 0.5), (128, 64),
                             True, 128, 256).tolist() == [[88.0, 20.0, 120.0, 60.0]]
    # unequal scales, and a box reaching past the image is clamped to it
    assert boxes_to_original(torch.tensor([[-4.0, 10.0, 70.0, 70.0]]), (0.25, 0.5), (64, 64),
                             False, 256, 128).tolist() == [[0.0, 20.0, 256.0, 128.0]]


@pytest.mark.parametrize("flip", [False, True], ids=["plain", "flipped"])
def test_mined_box_lands_on_the_object_in_original_pixels(world, monkeypatch, flip):
    """A candidate's bbox is where the object is in the image file as seen (resized,
    padded, flipped and EXIF-rotated inputs alike), for both views and both sizes mined:
    the 128 px training size and, by default, the images' own 256 px."""
    _, images, ann = world
    Recording, seen = install_oracle(monkeypatch, mining)
    coco = load_coco(ann, images)
    dataset = (FlippingDataset if flip else DetectionDataset)(coco, SIZE)
    if flip:
        assert all(dataset[i].flipped for i in range(3))
    torch.manual_seed(0)
    dense = Recording(build_detector("retinanet", "mobilenet_v3", 1, image_size=SIZE, fpn_channels=32))
    cands = mining.mine_dataset(dense, dataset, MiningThresholds.for_detector("retinanet"),
                                augment="color", device=torch.device("cpu"), batch_size=2,
                                num_workers=0, seed=0)
    assert seen   # the oracle did see the network's inputs
    for image_id, expected in EXPECTED.items():
        mine = [c for c in cands if c["image_id"] == image_id]
        assert sorted(c["view"] for c in mine) == ["augmented"] * 2 + ["original"] * 2, image_id
        for c in mine:
            assert c["score"] == pytest.approx(0.9)
            np.testing.assert_allclose(xyxy(c["bbox"]), expected, atol=ATOL,
                                       err_msg=f"image {image_id}, {c['view']} view")


def _run_dir(tmp_path, images, ann):
    """A run folder as training leaves it: config.json and one checkpoint."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = TrainConfig(images=str(images), ann=str(ann), run=str(run), backbone="mobilenet_v3",
                      fpn_channels=32, image_size=SIZE, weights_backbone="none", device="cpu")
    cfg.save(run / "config.json")
    torch.save({"model": tiny_dense().detector.state_dict(), "iteration": 1,
                "categories": [{"id": 5, "name": "thing"}]},
               run / "checkpoints" / "iter_0000001.pt")
    return run


@pytest.fixture
def oracle_predict(monkeypatch):
    """predict's detector replaced by the oracle (it sees the images the network sees)."""
    Recording, seen = install_oracle(monkeypatch, predict)
    monkeypatch.setattr(predict, "DenseForward", Recording)
    return seen


def test_predict_cli_writes_boxes_in_original_pixels(world, oracle_predict, capsys):
    """`comining predict`: each detection (COCO xywh) covers the object in the image as seen."""
    from comining.cli import main

    tmp_path, images, ann = world
    run = _run_dir(tmp_path, images, ann)
    out = tmp_path / "dets.json"
    assert main(["predict", "--run", str(run), "--images", str(images), "--ann", str(ann),
                 "--out", str(out), "--device", "cpu"]) == 0
    dets = json.loads(out.read_text())
    assert oracle_predict   # the oracle did see the network's inputs
    assert sorted(d["image_id"] for d in dets) == [1, 2, 3]
    for d in dets:
        assert d["category_id"] == 5 and d["score"] == pytest.approx(0.9)
        np.testing.assert_allclose(xyxy(d["bbox"]), EXPECTED[d["image_id"]], atol=ATOL,
                                   err_msg=f"image {d['image_id']}")


def test_predict_undoes_a_flip(world, oracle_predict, monkeypatch):
    """The same with flipped inputs: the flip is undone within the image's valid width."""
    tmp_path, images, ann = world
    run = _run_dir(tmp_path, images, ann)
    monkeypatch.setattr(predict, "DetectionDataset", FlippingDataset)
    dets = predict.predict_dataset(run, images, ann, device="cpu", batch_size=2, num_workers=0)
    assert sorted(d["image_id"] for d in dets) == [1, 2, 3]
    for d in dets:
        np.testing.assert_allclose(xyxy(d["bbox"]), EXPECTED[d["image_id"]], atol=ATOL,
                                   err_msg=f"image {d['image_id']}")
