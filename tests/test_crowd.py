"""Crowd annotations end to end on a generated dataset with crowds (`synth --crowd`):
`comining check` loads it, training data keeps crowd boxes apart from the targets, and
`sparsify` never erases one."""

from __future__ import annotations

import json

import pytest
import torch

from comining.coco import load_coco
from comining.data import DetectionDataset, collate
from comining.sparsify import PROTOCOLS, sparsify
from comining.synth import generate
from conftest import run_cli


@pytest.fixture(scope="module")
def crowd_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("crowd")
    generate(root, train=6, val=0, size=128, classes=3, seed=1, crowd=1.0)
    ann = root / "annotations" / "train.json"
    return root, ann, json.loads(ann.read_text())


def test_check_loads_a_dataset_with_crowds(crowd_world):
    """`comining check` accepts it and counts its crowd annotations apart."""
    root, ann, data = crowd_world
    n_crowd = sum(a["iscrowd"] for a in data["annotations"])
    n_plain = len(data["annotations"]) - n_crowd
    assert n_crowd == 6
    proc = run_cli("check", "--ann", ann, "--images", root / "images")
    assert proc.returncode == 0, proc.stderr
    assert f"{n_plain} boxes, {n_crowd} crowd" in proc.stdout


def test_training_data_keeps_crowd_boxes_apart(crowd_world):
    """A sample's targets are the non-crowd boxes only; its crowd boxes are the crowd
    annotations, both in the network's pixels (128 px images at 64 px: half)."""
    root, ann, data = crowd_world
    ds = DetectionDataset(load_coco(ann, root / "images"), 64)
    samples = [ds[i] for i in range(len(ds))]
    batch = collate(samples)
    for s, t in zip(samples, batch.targets):
        anns = [a for a in data["annotations"] if a["image_id"] == s.image_id]

        def half_xyxy(a):
            x, y, w, h = a["bbox"]
            return [x / 2, y / 2, (x + w) / 2, (y + h) / 2]

        crowd = [half_xyxy(a) for a in anns if a["iscrowd"]]
        plain = [half_xyxy(a) for a in anns if not a["iscrowd"]]
        torch.testing.assert_close(t["crowd_boxes"], torch.tensor(crowd).reshape(-1, 4))
        torch.testing.assert_close(t["boxes"], torch.tensor(plain).reshape(-1, 4))
        assert t["labels"].tolist() == [a["category_id"] - 1 for a in anns if not a["iscrowd"]]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sparsify_never_erases_a_crowd_annotation(crowd_world, protocol):
    """Every crowd annotation stays in SPARSE, unchanged, and none is HIDDEN."""
    _, _, data = crowd_world
    sparse, hidden = sparsify(data, protocol, seed=0)
    crowds = [a for a in data["annotations"] if a["iscrowd"]]
    assert [a for a in sparse["annotations"] if a.get("iscrowd")] == crowds
    assert not [a for a in hidden["annotations"] if a.get("iscrowd")]
    assert hidden["annotations"]        # the protocol did erase something
