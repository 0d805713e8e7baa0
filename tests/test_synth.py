"""`comining synth`: a deterministic, valid, learnable-but-not-trivial COCO dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from comining import synth
from comining.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(train=20, val=6, size=128, classes=8, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("COMINING_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "comining", "synth", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ds"
    summary = synth.generate(root, workers=1, **SMALL)
    return root, summary


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"{split}.json").read_text())


def _long_sides(d: dict) -> np.ndarray:
    return np.array([max(a["bbox"][2], a["bbox"][3]) for a in d["annotations"]])


# ------------------------------------------------------------------ determinism

def test_same_seed_gives_identical_bytes_whatever_the_workers(ds, tmp_path):
    root, _ = ds
    synth.generate(tmp_path / "again", workers=3, **SMALL)
    a, b = _files(root), _files(tmp_path / "again")
    assert sorted(a) == sorted(b)
    assert len([k for k in a if k.endswith(".png")]) == SMALL["train"] + SMALL["val"]
    for name in a:
        assert a[name] == b[name], name


def test_another_seed_gives_another_dataset(ds, tmp_path):
    root, _ = ds
    synth.generate(tmp_path / "other", **{**SMALL, "seed": 4})
    a, b = _files(root), _files(tmp_path / "other")
    assert a["annotations/train.json"] != b["annotations/train.json"]
    pngs = [k for k in a if k.endswith(".png")]
    assert sum(a[k] != b[k] for k in pngs) == len(pngs)


def test_val_split_does_not_depend_on_train_count(ds, tmp_path):
    root, _ = ds
    synth.generate(tmp_path / "t5", **{**SMALL, "train": 5})
    assert (tmp_path / "t5/annotations/val.json").read_bytes() == \
        (root / "annotations/val.json").read_bytes()


def test_json_has_no_timestamp_and_is_atomic_output(ds):
    root, _ = ds
    text = (root / "annotations/train.json").read_text()
    assert "date" not in text and "time" not in text
    assert not list((root / "annotations").glob(".*.tmp"))


# ------------------------------------------------------------------ validity

@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_valid_boxes_inside_images(ds, split):
    root, summary = ds
    coco = COCO(str(root / "annotations" / f"{split}.json"))
    n = SMALL[split]
    assert len(coco.imgs) == n == summary[split]["images"]
    assert len(coco.anns) == summary[split]["annotations"]
    assert sorted(coco.cats) == list(range(1, SMALL["classes"] + 1))
    assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == synth.SHAPES[:SMALL["classes"]]
    assert all(c["supercategory"] for c in coco.cats.values())
    d = _load(root, split)
    assert len({a["id"] for a in d["annotations"]}) == len(d["annotations"])
    for img in coco.imgs.values():
        assert img["file_name"] == f"{split}/{img['id']:06d}.png"
        pixels = cv2.imread(str(root / "images" / img["file_name"]), cv2.IMREAD_UNCHANGED)
        assert pixels is not None and pixels.dtype == np.uint8
        assert pixels.shape == (img["height"], img["width"], 3) == (SMALL["size"],) * 2 + (3,)
    for a in coco.anns.values():
        x, y, w, h = a["bbox"]
        img = coco.imgs[a["image_id"]]
        assert all(isinstance(v, float) for v in a["bbox"])
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= img["width"] and y + h <= img["height"]
        assert 0 < a["area"] <= w * h
        assert a["iscrowd"] == 0 and a["category_id"] in coco.cats


def test_every_class_present_in_train(ds):
    root, _ = ds
    d = _load(root, "train")
    assert {a["category_id"] for a in d["annotations"]} == set(range(1, SMALL["classes"] + 1))


def test_sizes_span_small_to_large_and_never_tiny(tmp_path):
    synth.generate(tmp_path, train=40, val=0, size=256, classes=4, seed=1)
    sides = _long_sides(_load(tmp_path, "train"))
    assert sides.min() >= 14                       # never tiny
    assert sides.min() <= 0.12 * 256               # small objects exist ...
    assert sides.max() >= 0.38 * 256               # ... and large ones
    assert sides.max() <= 0.6 * 256


def test_several_instances_per_image(ds):
    root, _ = ds
    for split in ("train", "val"):
        d = _load(root, split)
        per = np.bincount([a["image_id"] for a in d["annotations"]],
                          minlength=len(d["images"]) + 1)[1:]
        assert per.min() >= 2 and per.max() <= 8
    assert per.mean() >= 3


@pytest.mark.parametrize("seed", range(6))
def test_boxes_tight_on_visible_pixels_and_no_instance_hidden_over_40_percent(seed):
    rng = np.random.default_rng(seed)
    img, instances, info = synth.render(rng, 160, 8, first_class=seed % 8, details=True)
    label = info["label"]
    assert img.shape == (160, 160, 3) and len(instances) >= 2
    for j, (cls, (x, y, w, h), area) in enumerate(instances):
        ys, xs = np.nonzero(label == j)
        assert [x, y, w, h] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(),
                                ys.max() + 1 - ys.min()]
        assert area == len(xs) >= synth.MIN_VISIBLE * info["full_area"][j]
        assert 0 <= cls < 8


def test_colour_never_identifies_the_class():
    by_class: dict[int, set[int]] = {}
    for seed in range(40):
        _, instances, info = synth.render(np.random.default_rng(seed), 96, 4, details=True)
        for (cls, _, _), pal in zip(instances, info["palette"]):
            by_class.setdefault(cls, set()).add(pal)
    assert sorted(by_class) == [0, 1, 2, 3]
    for cls, palettes in by_class.items():
        assert len(palettes) >= 6, (cls, palettes)


def test_bad_library_arguments_raise_input_error(tmp_path):
    for kwargs in ({"classes": 0}, {"classes": synth.MAX_CLASSES + 1}, {"size": 32},
                   {"train": -1}, {"val": -2}, {"seed": -1}, {"classes": 2.5},
                   {"train": True}):
        with pytest.raises(InputError):
            synth.generate(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()
    assert synth.MAX_CLASSES >= 8


def test_rerun_with_fewer_images_drops_stale_pngs_and_empty_splits_are_valid(tmp_path):
    synth.generate(tmp_path, train=5, val=2, size=64, classes=2)
    s = synth.generate(tmp_path, train=2, val=0, size=64, classes=2)
    assert s["val"] == {"images": 0, "annotations": 0}
    assert sorted(p.name for p in (tmp_path / "images/train").iterdir()) == \
        ["000001.png", "000002.png"]
    assert not list((tmp_path / "images/val").iterdir())
    coco = COCO(str(tmp_path / "annotations/val.json"))
    assert not coco.imgs and not coco.anns


# ------------------------------------------------------------------ crowd

def _per_image(d: dict) -> dict[int, list[dict]]:
    out = {im["id"]: [] for im in d["images"]}
    for a in d["annotations"]:
        out[a["image_id"]].append(a)
    return out


def _plain(anns):
    return [(a["category_id"], a["bbox"], a["area"]) for a in anns]


@pytest.fixture(scope="module")
def crowd_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("crowd") / "ds"
    return root, synth.generate(root, workers=1, crowd=0.5, **SMALL)


def test_crowd_replaces_one_class_of_some_images_by_one_crowd_box(ds, crowd_ds):
    """--crowd 0.5: some images (not all) get ONE iscrowd annotation standing for every
    instance of one class, its box covering exactly them and its area their pixels; the
    images, the other images' and the other classes' annotations are those of the
    crowd-free dataset of the same seed."""
    plain_root, _ = ds
    root, summary = crowd_ds
    a, b = _files(plain_root), _files(root)
    assert sorted(a) == sorted(b)
    assert all(a[k] == b[k] for k in a if k.endswith(".png"))   # the pixels never change
    for split in ("train", "val"):
        plain, crowd = _load(plain_root, split), _load(root, split)
        assert [x["id"] for x in crowd["annotations"]] == list(range(1, len(crowd["annotations"]) + 1))
        assert crowd["info"]["crowd"] == 0.5 and "crowd" not in plain["info"]
        before, after = _per_image(plain), _per_image(crowd)
        n_crowd = 0
        for image_id, anns in before.items():
            crowds = [x for x in after[image_id] if x["iscrowd"] == 1]
            rest = [x for x in after[image_id] if x["iscrowd"] == 0]
            assert len(crowds) <= 1
            if not crowds:
                assert _plain(rest) == _plain(anns)
                continue
            n_crowd += 1
            (c,) = crowds
            members = [x for x in anns if x["category_id"] == c["category_id"]]
            assert members and after[image_id][-1] is c
            assert _plain(rest) == _plain([x for x in anns if x["category_id"] != c["category_id"]])
            x0 = min(m["bbox"][0] for m in members)
            y0 = min(m["bbox"][1] for m in members)
            x1 = max(m["bbox"][0] + m["bbox"][2] for m in members)
            y1 = max(m["bbox"][1] + m["bbox"][3] for m in members)
            assert c["bbox"] == [x0, y0, x1 - x0, y1 - y0]
            assert c["area"] == sum(m["area"] for m in members)
        assert summary[split]["crowd"] == n_crowd
        assert summary[split]["annotations"] == len(crowd["annotations"])
        if split == "train":
            assert 0 < n_crowd < len(before)          # 20 images at 0.5: some, not all


def test_crowd_is_seeded_and_all_or_nothing_at_the_ends(crowd_ds, tmp_path):
    """The same arguments give the same bytes whatever the workers; crowd 1 gives every
    image a crowd annotation, crowd 0 none."""
    root, _ = crowd_ds
    synth.generate(tmp_path / "again", workers=3, crowd=0.5, **SMALL)
    assert _files(tmp_path / "again") == _files(root)
    small = dict(SMALL, train=4, val=0, size=64)
    synth.generate(tmp_path / "all", crowd=1.0, **small)
    per = _per_image(_load(tmp_path / "all", "train"))
    assert [sum(a["iscrowd"] for a in anns) for anns in per.values()] == [1, 1, 1, 1]
    synth.generate(tmp_path / "none", crowd=0, **small)
    assert all(a["iscrowd"] == 0 for a in _load(tmp_path / "none", "train")["annotations"])
    for bad in (-0.1, 1.01, float("nan"), "0.5", True):
        with pytest.raises(InputError, match="crowd"):
            synth.generate(tmp_path / "bad", crowd=bad, **small)


def test_cli_crowd(crowd_ds, tmp_path):
    """`comining synth --crowd P` writes what the library writes, and says how many crowds."""
    root, summary = crowd_ds
    out = tmp_path / "cli"
    r = _cli("--out", str(out), "--crowd", "0.5", *[f"--{k}={v}" for k, v in SMALL.items()])
    assert r.returncode == 0, r.stderr
    assert f"{summary['train']['crowd']} crowd" in r.stdout
    for split in ("train", "val"):
        assert (out / f"annotations/{split}.json").read_bytes() == \
            (root / f"annotations/{split}.json").read_bytes()


# ------------------------------------------------------------------ CLI

def test_cli_writes_the_same_dataset_as_the_library(ds, tmp_path):
    root, _ = ds
    out = tmp_path / "cli"
    r = _cli("--out", str(out), *[f"--{k}={v}" for k, v in SMALL.items()])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and "20 train images" in lines[0] and "6 val images" in lines[0]
    for split in ("train", "val"):
        assert (out / f"annotations/{split}.json").read_bytes() == \
            (root / f"annotations/{split}.json").read_bytes()


@pytest.mark.parametrize("args", [
    ["--classes", "0"], ["--classes", "99"], ["--size", "32"], ["--train", "-1"],
    ["--val", "abc"], ["--seed", "-5"], [], ["--crowd", "1.5"], ["--crowd", "nan"],
])
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, args):
    out = [] if not args else ["--out", str(tmp_path / "o")]
    r = _cli(*out, *args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    err = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("usage:")
           and not ln.startswith(" ")]
    assert len(err) == 1 and "error" in err[0]
    assert not (tmp_path / "o").exists()


def test_cli_out_is_a_file_exits_2(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = _cli("--out", str(f), "--train", "1", "--val", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "not a folder" in r.stderr
