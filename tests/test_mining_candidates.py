"""Mining for review, one image by hand: both views' detections -> the candidates stored
(each with its object, its partner in the other view, the category ids of the dataset)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from comining.config import ReviewMining
from comining.mining import image_candidates

# label 0 -> category 10, label 1 -> category 20 (the dataset's own ids)
CATEGORIES = SimpleNamespace(to_category_id=lambda lab: [10, 20][lab])


def dets(boxes, labels, scores):
    return (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels),
            torch.tensor(scores, dtype=torch.float32))


def test_one_image_by_hand():
    """Original view: A [10,10,50,50] class 10 0.9, B [100,100,120,130] class 20 0.6,
    L [200,200,240,240] class 10 0.7 (exactly on a class-10 label: not missing, dropped).
    Augmented view: A' [12,10,52,50] class 10 0.8 (IoU with A 1520/1680 = 0.90: agreed,
    one object with A). Objects ranked by the mean of the views' best scores: A 0.85,
    B 0.3; members best first."""
    rec = SimpleNamespace(id=7, boxes=np.array([[200, 200, 240, 240]], np.float32),
                          labels=np.array([0]), crowd_boxes=np.zeros((0, 4), np.float32))
    d = {"original": dets([[10, 10, 50, 50], [100, 100, 120, 130], [200, 200, 240, 240]],
                          [0, 1, 0], [0.9, 0.6, 0.7]),
         "augmented": dets([[12, 10, 52, 50]], [0], [0.8])}
    out = image_candidates(rec, d, CATEGORIES, ReviewMining())
    got = [(c["key"], c["partner_key"], c["image_id"], c["category_id"], c["bbox"], c["view"],
            c["agreed"]) for c in out]
    assert got == [
        ((7, "original", 0), (7, "augmented", 0), 7, 10, [10.0, 10.0, 40.0, 40.0], "original", True),
        ((7, "augmented", 0), (7, "original", 0), 7, 10, [12.0, 10.0, 40.0, 40.0], "augmented", True),
        ((7, "original", 1), None, 7, 20, [100.0, 100.0, 20.0, 30.0], "original", False)]
    assert [c["score"] for c in out] == pytest.approx([0.9, 0.8, 0.6])
    a, a2, b = out
    assert a["object"] is a2["object"]                  # one dict shared by its members
    oa, ob = a["object"], b["object"]
    assert (oa["key"], oa["image_id"], oa["category_id"], oa["view"], oa["on_label"]) == \
        ((7, "object", 0), 7, 10, "both", None)
    # fused box: weights 0.9/0.8 of x0 10 and 12: (9 + 9.6) / 1.7
    assert oa["bbox"] == pytest.approx([18.6 / 1.7, 10.0, 40.0, 40.0], abs=1e-4)
    assert oa["score"] == pytest.approx(0.85) and oa["view_scores"] == pytest.approx([0.9, 0.8])
    assert [c for c, _ in oa["classes"]] == [10]
    assert (ob["key"], ob["category_id"], ob["view"]) == ((7, "object", 1), 20, "original")
    assert ob["score"] == pytest.approx(0.3)


def test_settings_and_edge_cases():
    """No detections: no candidates. A crowd region over B drops it; max_objects 1 keeps B
    only (both views); a partner whose object was dropped is no partner."""
    empty = dets([], [], [])
    rec = SimpleNamespace(id=3, boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                          crowd_boxes=np.zeros((0, 4), np.float32))
    assert image_candidates(rec, {"original": empty, "augmented": empty}, CATEGORIES,
                            ReviewMining()) == []
    d = {"original": dets([[10, 10, 50, 50], [100, 100, 120, 130]], [0, 1], [0.9, 0.6]),
         "augmented": dets([[100, 100, 120, 131]], [1], [0.5])}
    crowded = SimpleNamespace(id=3, boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                              crowd_boxes=np.array([[90, 90, 130, 140]], np.float32))
    assert [c["key"] for c in image_candidates(crowded, d, CATEGORIES, ReviewMining())] == \
        [(3, "original", 0)]
    # B (both views: 0.55) and A (one view: 0.45): max_objects 1 keeps B
    top = image_candidates(rec, d, CATEGORIES, ReviewMining(max_objects=1))
    assert [(c["key"], c["partner_key"]) for c in top] == [
        ((3, "original", 1), (3, "augmented", 0)), ((3, "augmented", 0), (3, "original", 1))]
    # group_iou 0.99 splits B's two views (IoU 600/620 = 0.97) into two objects; rank "max"
    loose = image_candidates(rec, d, CATEGORIES, ReviewMining(group_iou=0.99, rank="max"))
    assert len({id(c["object"]) for c in loose}) == 3
    assert [c["object"]["score"] for c in loose][:2] == pytest.approx([0.9, 0.6])
    assert [c["agreed"] for c in loose] == [False, True, True]
    # ... and keeping 2 objects drops the augmented one: B's original box keeps no partner
    two = image_candidates(rec, d, CATEGORIES, ReviewMining(group_iou=0.99, rank="max", max_objects=2))
    assert [(c["key"], c["partner_key"]) for c in two] == [((3, "original", 0), None),
                                                           ((3, "original", 1), None)]


def test_labels_and_crowd_regions_in_xyxy_become_xywh():
    """Two labels and two crowd regions, none square (x and y, w and h cannot be mixed up).
    The class-10 label [300,10,340,30] (40x20) lies exactly under an object of its class:
    dropped. The crowd region [0,100,50,120] holds 40 x 20 of the 50 x 25 object
    [10,100,60,125]: 0.64, dropped at 0.5, kept with crowd_ioa 0.7. label_iou is passed
    on: an object at IoU 0.81 with a label of its class is dropped at 0.5, kept at 0.9."""
    rec = SimpleNamespace(id=5, boxes=np.array([[500, 500, 510, 540], [300, 10, 340, 30]], np.float32),
                          labels=np.array([1, 0]),
                          crowd_boxes=np.array([[700, 700, 720, 760], [0, 100, 50, 120]], np.float32))
    d = {"original": dets([[300, 10, 340, 30], [10, 100, 60, 125], [200, 300, 220, 320]],
                          [0, 0, 0], [0.9, 0.8, 0.7]),
         "augmented": dets([], [], [])}
    keys = lambda out: [c["key"][2] for c in out]  # noqa: E731
    assert keys(image_candidates(rec, d, CATEGORIES, ReviewMining())) == [2]
    assert keys(image_candidates(rec, d, CATEGORIES, ReviewMining(), crowd_ioa=0.7)) == [1, 2]
    # an object of class 10 at IoU 324/400 with a 18x18 class-10 label inside its 20x20 box
    near = SimpleNamespace(id=5, boxes=np.array([[200, 300, 218, 318]], np.float32),
                           labels=np.array([0]), crowd_boxes=np.zeros((0, 4), np.float32))
    assert keys(image_candidates(near, d, CATEGORIES, ReviewMining())) == [0, 1]
    assert keys(image_candidates(near, d, CATEGORIES, ReviewMining(label_iou=0.9))) == [0, 1, 2]


def test_mine_dataset_passes_its_settings_on(monkeypatch):
    """mine_dataset asks detect_views for boxes by the review settings (score floor, NMS IoU,
    boxes per view, class scores, the shard) and keeps the crowd rule of its thresholds."""
    from comining import mining
    from comining.config import MiningThresholds
    seen = {}
    rec = SimpleNamespace(id=1, boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                          crowd_boxes=np.array([[0, 0, 30, 30]], np.float32))
    box = {"original": dets([[0, 0, 20, 30]], [0], [0.9]), "augmented": dets([], [], [])}

    def fake_detect_views(dense, dataset, **kwargs):
        seen.update(kwargs)
        yield rec, box

    monkeypatch.setattr(mining, "detect_views", fake_detect_views)
    dataset = SimpleNamespace(coco=SimpleNamespace(categories=CATEGORIES, images=[]), image_size=96)
    common = dict(augment="color", device=torch.device("cpu"), batch_size=2, num_workers=0, seed=3)
    t = MiningThresholds(score_thresh=0.6, nms_iou=0.55, crowd_ioa=0.5)
    out = mining.mine_dataset(None, dataset, t, rank=1, world_size=2,
                              review=ReviewMining(score_floor=0.1, max_per_view=7, score="class"),
                              **common)
    assert out == []                                   # wholly inside the crowd region
    assert {k: seen[k] for k in ("score_thresh", "nms_iou", "max_per_image", "class_score", "rank",
                                 "world_size")} == dict(score_thresh=0.1, nms_iou=0.55,
                                                        max_per_image=7, class_score=True,
                                                        rank=1, world_size=2)
    out = mining.mine_dataset(None, dataset, MiningThresholds(score_thresh=0.6, nms_iou=0.55,
                                                              crowd_ioa=1.0),
                              review=ReviewMining(nms_iou=0.4), **common)
    assert len(out) == 1
    assert (seen["score_thresh"], seen["nms_iou"], seen["max_per_image"], seen["class_score"],
            seen["rank"], seen["world_size"]) == (0.05, 0.4, 100, False, 0, 1)


def test_the_review_settings_reach_the_objects():
    """Original view only: A [0,0,40,40] 0.9 and C [16,0,56,40] 0.8 overlap at IoU
    960 / 2240 = 0.4286 (two objects). Their scores are the mean of the views' best
    (0.45, 0.4); Soft-NMS (sigma 0.5) decays C by exp(-0.4286^2 / 0.5) = 0.6927 to 0.2771,
    and sigma None leaves it; max_objects 1 keeps A's member only."""
    rec = SimpleNamespace(id=1, boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                          crowd_boxes=np.zeros((0, 4), np.float32))
    d = {"original": dets([[0, 0, 40, 40], [16, 0, 56, 40]], [0, 0], [0.9, 0.8]),
         "augmented": dets([], [], [])}

    def object_scores(**settings):
        out = image_candidates(rec, d, CATEGORIES, ReviewMining(**settings))
        return [c["object"]["score"] for c in out]

    assert object_scores() == pytest.approx([0.45, 0.4 * np.exp(-(960 / 2240) ** 2 / 0.5)], abs=1e-6)
    assert object_scores(soft_sigma=None) == pytest.approx([0.45, 0.4])
    assert object_scores(max_objects=1) == pytest.approx([0.45])


def test_record_stores_a_checkpoint_and_counts_what_it_stored(tmp_path):
    """The by-hand image of test_one_image_by_hand, plus an object on a label of another
    class (C [300,300,340,340] class 20 on a class-10 label), recorded as checkpoint 5:
    the store holds its candidates in original pixels, their objects, the settings; the
    counts are boxes per view, agreed boxes, objects and objects on a label."""
    import json as _json

    from comining import store
    from comining.config import MiningThresholds
    from comining.mining import record

    rec = SimpleNamespace(id=7, boxes=np.array([[200, 200, 240, 240], [300, 300, 340, 340]],
                                               np.float32),
                          labels=np.array([0, 0]), crowd_boxes=np.zeros((0, 4), np.float32))
    d = {"original": dets([[10, 10, 50, 50], [100, 100, 120, 130], [300, 300, 340, 340]],
                          [0, 1, 1], [0.9, 0.6, 0.7]),
         "augmented": dets([[12, 10, 52, 50]], [0], [0.8])}
    review = ReviewMining(max_objects=5)
    cands = image_candidates(rec, d, CATEGORIES, review)
    conn = store.connect(tmp_path / store.STORE_NAME, create=True)
    store.write_dataset(conn, [{"id": 7, "file_name": "a.png", "width": 400, "height": 400}],
                        [{"id": 10, "name": "ten"}, {"id": 20, "name": "twenty"}])
    conn.close()
    t = MiningThresholds.for_detector("fcos")
    counts = record(tmp_path, iteration=5, checkpoint_path=tmp_path / "iter_5.pt", thresholds=t,
                    candidates=cands, review=review)
    assert counts == {"original": 3, "augmented": 1, "agreed": 1, "objects": 2, "on_label": 1}
    conn = store.connect(tmp_path / store.STORE_NAME)
    try:
        [row] = store.checkpoints(conn)
        assert (row["iteration"], row["path"], row["n_original"], row["n_augmented"],
                row["n_agreed"]) == (5, str(tmp_path / "iter_5.pt"), 3, 1, 1)
        assert (row["score_thresh"], row["nms_iou"]) == (0.5, 0.6)
        assert _json.loads(row["settings"])["max_objects"] == 5
        got = sorted((r["view"], r["category_id"], r["x"], r["y"], r["w"], r["h"])
                     for r in store.candidates(conn, 5))
        assert got == [("augmented", 10, 12.0, 10.0, 40.0, 40.0),
                       ("original", 10, 10.0, 10.0, 40.0, 40.0),
                       ("original", 20, 100.0, 100.0, 20.0, 30.0),
                       ("original", 20, 300.0, 300.0, 40.0, 40.0)]
        objs = {(r["category_id"], r["view"], r["on_label"]) for r in store.objects(conn, 5)}
        assert objs == {(10, "both", None), (20, "original", None), (20, "original", 10)}
    finally:
        conn.close()


def test_other_scales_are_mined_at_their_size_and_join_each_view_before_grouping(monkeypatch):
    """scales (1, 2): detect_views runs on the dataset at 2x the size, then on the dataset
    itself; per view the two passes' boxes (original pixels) join before grouping, so the
    same object seen at both sizes is one object with both boxes as members, and a small
    object only the larger size saw is an object of its own."""
    from comining import mining
    from comining.config import MiningThresholds
    rec = SimpleNamespace(id=1, boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                          crowd_boxes=np.zeros((0, 4), np.float32))
    passes = {96: {"original": dets([[10, 10, 50, 50]], [0], [0.8]), "augmented": dets([], [], [])},
              192: {"original": dets([[11, 10, 51, 50], [70, 70, 78, 78]], [0, 1], [0.6, 0.7]),
                    "augmented": dets([[12, 12, 50, 50]], [0], [0.5])}}
    sizes = []

    def fake_detect_views(dense, dataset, **kwargs):
        sizes.append(dataset.image_size)
        yield rec, passes[dataset.image_size]

    monkeypatch.setattr(mining, "detect_views", fake_detect_views)
    dataset = mining.DetectionDataset(SimpleNamespace(categories=CATEGORIES, images=[]), 96)
    out = mining.mine_dataset(None, dataset, MiningThresholds(score_thresh=0.5, nms_iou=0.6),
                              augment="color",
                              device=torch.device("cpu"), batch_size=2, num_workers=0, seed=0,
                              review=ReviewMining(scales=(2.0, 1.0)))
    assert sizes == [192, 96]
    objects = {}
    for c in out:
        objects.setdefault(c["object"]["key"], []).append((c["view"], c["bbox"]))
    assert sorted(objects.values(), key=len) == [
        [("original", [70.0, 70.0, 8.0, 8.0])],
        [("original", [10.0, 10.0, 40.0, 40.0]), ("original", [11.0, 10.0, 40.0, 40.0]),
         ("augmented", [12.0, 12.0, 38.0, 38.0])]]
    big = next(c["object"] for c in out if c["bbox"][0] == 10.0)
    assert big["view_scores"] == pytest.approx([0.8, 0.5])   # each view's best over both sizes
    assert mining.scaled_size(160, 1.6) == 256 and mining.scaled_size(800, 1.0) == 800
    assert mining.scaled_size(96, 0.25) == 32


def test_flip_mines_every_size_mirrored_too_and_joins_each_view(monkeypatch):
    """flip with scales (2, 1): four passes, each size mirrored first; every pass's boxes
    (original pixels: detect_views maps the mirrored ones back) join per view, so the same
    object seen plain and mirrored is one object, and one only the mirrored pass saw is an
    object of its own."""
    from comining import mining
    from comining.config import MiningThresholds
    rec = SimpleNamespace(id=1, boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                          crowd_boxes=np.zeros((0, 4), np.float32))
    none = {"original": dets([], [], []), "augmented": dets([], [], [])}
    passes = {(192, True): none, (192, False): none,
              (96, True): {"original": dets([[10, 10, 50, 50], [60, 5, 70, 15]], [0, 1], [0.7, 0.4]),
                           "augmented": dets([], [], [])},
              (96, False): {"original": dets([[11, 10, 50, 50]], [0], [0.6]),
                            "augmented": dets([[10, 11, 50, 50]], [0], [0.5])}}
    seen = []

    def fake_detect_views(dense, dataset, *, flip, **kwargs):
        seen.append((dataset.image_size, flip))
        yield rec, passes[dataset.image_size, flip]

    monkeypatch.setattr(mining, "detect_views", fake_detect_views)
    dataset = mining.DetectionDataset(SimpleNamespace(categories=CATEGORIES, images=[]), 96)
    out = mining.mine_dataset(None, dataset, MiningThresholds(score_thresh=0.5, nms_iou=0.6),
                              augment="color", device=torch.device("cpu"), batch_size=2,
                              num_workers=0, seed=0, review=ReviewMining(scales=(2.0, 1.0), flip=True))
    assert seen == [(192, True), (192, False), (96, True), (96, False)]
    objects = {}
    for c in out:
        objects.setdefault(c["object"]["key"], []).append((c["view"], c["bbox"]))
    assert sorted(objects.values(), key=len) == [
        [("original", [60.0, 5.0, 10.0, 10.0])],
        [("original", [10.0, 10.0, 40.0, 40.0]), ("original", [11.0, 10.0, 39.0, 40.0]),
         ("augmented", [10.0, 11.0, 40.0, 39.0])]]
    big = next(c["object"] for c in out if c["bbox"][0] == 11.0)
    assert big["view_scores"] == pytest.approx([0.7, 0.5])   # each view's best over the passes
    seen.clear()
    mining.mine_dataset(None, dataset, MiningThresholds(score_thresh=0.5, nms_iou=0.6),
                        augment="color", device=torch.device("cpu"), batch_size=2,
                        num_workers=0, seed=0, review=ReviewMining())
    assert seen == [(96, False)]                              # off by default: one plain pass


def images_of(*sides):
    """A stand-in CocoDataset whose images have these (width, height)."""
    return SimpleNamespace(categories=CATEGORIES,
                           images=[SimpleNamespace(width=w, height=h) for w, h in sides])


def test_review_sizes_add_the_images_own_size_when_training_shrinks_them():
    """Sizes mined: the scales' sizes, then the images' own (median longer side, a multiple
    of 32, at most 1.2x the training size) when larger than all of them."""
    from comining.mining import review_sizes

    def sizes(sides, image_size, **review):
        return review_sizes(mining_dataset(images_of(*sides), image_size), ReviewMining(**review))

    assert sizes([(256, 192)] * 3, 160) == [160, 192]              # 1.6x: capped at 1.2x
    assert sizes([(192, 256)], 160) == [160, 192]                  # portrait: its longer side
    assert sizes([(180, 120)], 160) == [160, 192]                  # 1.125x: 180 -> 6 x 32
    assert sizes([(256, 192)], 160, native=False) == [160]
    assert sizes([(256, 192)], 160, scales=(1, 1.6)) == [160, 256]  # mined larger already
    assert sizes([(256, 192)], 160, scales=(1, 2)) == [160, 320]    # larger than its own
    assert sizes([(96, 96)], 160) == [160]                          # not shrunk by training
    assert sizes([(170, 100)], 160) == [160]                        # 170 px: 160 at stride 32
    assert sizes([(4000, 3000)], 800) == [800, 960]                 # capped at 1.2x
    assert sizes([(200, 10), (256, 10), (256, 10), (300, 10), (1000, 10)], 160) == [160, 192]
    assert sizes([(200, 200)], 100) == [100, 128]                   # 1x: the training size as is;
    assert sizes([(300, 200)], 64) == [64]                          # 1.2x of 64 is 64 at stride 32


def mining_dataset(coco, image_size):
    from comining import mining
    return mining.DetectionDataset(coco, image_size)


def test_images_shrunk_by_training_are_mined_at_their_own_size_too(monkeypatch):
    """By default, images of 256 px trained at 160 px: a pass at 160 px, then one at 192 px
    (1.2x), their boxes joined per view into one object; --no-review-native: the 160 px
    pass only."""
    from comining import mining
    from comining.config import MiningThresholds
    rec = SimpleNamespace(id=1, boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                          crowd_boxes=np.zeros((0, 4), np.float32))
    none = dets([], [], [])
    passes = {160: {"original": dets([[10, 10, 50, 50]], [0], [0.4]), "augmented": none},
              192: {"original": dets([[10, 11, 50, 50]], [0], [0.6]), "augmented": none}}
    sizes = []

    def fake_detect_views(dense, dataset, **kwargs):
        sizes.append(dataset.image_size)
        yield rec, passes[dataset.image_size]

    monkeypatch.setattr(mining, "detect_views", fake_detect_views)
    dataset = mining.DetectionDataset(images_of((256, 256)), 160)
    common = dict(augment="color", device=torch.device("cpu"), batch_size=2, num_workers=0, seed=0)
    out = mining.mine_dataset(None, dataset, MiningThresholds(score_thresh=0.5, nms_iou=0.6),
                              **common)
    assert sizes == [160, 192]
    assert sorted((c["view"], c["bbox"]) for c in out) == [("original", [10.0, 10.0, 40.0, 40.0]),
                                                            ("original", [10.0, 11.0, 40.0, 39.0])]
    assert len({c["object"]["key"] for c in out}) == 1
    assert out[0]["object"]["view_scores"][0] == pytest.approx(0.6)   # the larger pass's
    sizes.clear()
    mining.mine_dataset(None, dataset, MiningThresholds(score_thresh=0.5, nms_iou=0.6),
                        review=ReviewMining(native=False), **common)
    assert sizes == [160]


def test_review_scales_are_checked():
    from comining.errors import InputError
    for bad in ((), (1.0, 1.0), (0.1,), (5.0,)):
        with pytest.raises(InputError, match="--review-scales"):
            ReviewMining(scales=bad).validate()
    assert ReviewMining(scales=[1, 1.6]).scales == (1.0, 1.6)      # as read back from json
    assert ReviewMining().flip is False and ReviewMining().native is True


def test_mining_at_two_sizes_keeps_exactly_both_sizes_boxes_in_original_pixels(small_dataset,
                                                                                tmp_path):
    """A real detector mined with --review-scales 1 2, every box kept (no object cap, no
    label rule): per image and view, its candidates are exactly those of mining at 1x
    plus those of mining at 2x, each in original pixels, and the settings record it."""
    import json
    import shutil

    from comining import store
    from comining.cli import main
    from comining.engine import train
    from conftest import seconds_run_config

    run = train(seconds_run_config(small_dataset, tmp_path / "run"), progress=False)
    keep_all = ["--review-score-floor", "0.001", "--review-max-objects", "1000",
                "--label-iou", "1.0", "--device", "cpu", "--checkpoint", "4"]
    boxes = {}
    for name, scales in (("one", ["1"]), ("two", ["2"]), ("both", ["1", "2"])):
        copy = tmp_path / name
        shutil.copytree(run, copy)
        assert main(["mine", "--run", str(copy), "--review-scales", *scales, *keep_all]) == 0
        conn = store.connect(copy / store.STORE_NAME)
        try:
            settings = json.loads(conn.execute(
                "SELECT settings FROM checkpoints WHERE iteration = 4").fetchone()[0])
            assert settings["scales"] == [float(s) for s in scales]
            boxes[name] = sorted(tuple(r) for r in conn.execute(
                "SELECT image_id, view, round(x, 3), round(y, 3), round(w, 3), round(h, 3) "
                "FROM candidates WHERE checkpoint = 4"))
        finally:
            conn.close()
    assert boxes["one"] and boxes["two"] and boxes["one"] != boxes["two"]
    assert boxes["both"] == sorted(boxes["one"] + boxes["two"])
    for _, _, x, y, w, h in boxes["two"]:     # the 192 px pass, back in 96 px images
        assert -1e-3 <= x and x + w <= 96 + 1e-3 and -1e-3 <= y and y + h <= 96 + 1e-3


def test_a_run_trained_on_shrunk_images_mines_them_at_their_own_size_too(tiny_dataset,
                                                                          tmp_path):
    """A real detector trained at 96 px on 128 px images, every box kept: by default its
    candidates are exactly those of --review-scales 1 1.34 (96 and 128 px) without the
    native pass, more than --no-review-native's (96 px only); the settings say which."""
    import json
    import shutil

    from comining import store
    from comining.cli import main
    from comining.engine import train
    from conftest import seconds_run_config

    run = train(seconds_run_config(tiny_dataset, tmp_path / "run", image_size=96),
                progress=False)
    keep_all = ["--review-score-floor", "0.001", "--review-max-objects", "1000",
                "--label-iou", "1.0", "--device", "cpu", "--checkpoint", "4"]
    boxes = {}
    for name, flags in (("default", []), ("plain", ["--no-review-native"]),
                        ("as_scales", ["--review-scales", "1", "1.34", "--no-review-native"])):
        copy = tmp_path / name
        shutil.copytree(run, copy)
        assert main(["mine", "--run", str(copy), *flags, *keep_all]) == 0
        conn = store.connect(copy / store.STORE_NAME)
        try:
            settings = json.loads(conn.execute(
                "SELECT settings FROM checkpoints WHERE iteration = 4").fetchone()[0])
            assert settings["native"] is (name == "default")
            boxes[name] = sorted(tuple(r) for r in conn.execute(
                "SELECT image_id, view, round(x, 3), round(y, 3), round(w, 3), round(h, 3) "
                "FROM candidates WHERE checkpoint = 4"))
        finally:
            conn.close()
    assert boxes["plain"] and set(boxes["plain"]) < set(boxes["default"])
    assert boxes["default"] == boxes["as_scales"]


def test_a_run_configured_before_native_mining_keeps_mining_without_it(tmp_path):
    """config.json written before ReviewMining.native existed (no such key): the run, resumed
    or refined, mines as it did; a new config has it on, and keeps it through a save."""
    import dataclasses
    import json

    from comining.config import TrainConfig

    config = TrainConfig(images="i", ann="a.json", run=str(tmp_path / "run"))
    assert config.review.native is True
    config.save(tmp_path / "new.json")
    assert TrainConfig.load(tmp_path / "new.json").review.native is True
    old = json.loads((tmp_path / "new.json").read_text())
    del old["review"]["native"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = TrainConfig.load(tmp_path / "old.json")
    assert loaded.review.native is False
    assert dataclasses.replace(loaded.review, native=True) == config.review


def mirror_dataset(src, dst):
    """A copy of a generated dataset with every training image mirrored left-right (PNG:
    lossless) and its annotations mirrored with it."""
    import json
    import shutil

    import cv2

    shutil.copytree(src, dst)
    ann_path = dst / "annotations" / "train.json"
    coco = json.loads(ann_path.read_text())
    width = {im["id"]: im["width"] for im in coco["images"]}
    for im in coco["images"]:
        path = dst / "images" / im["file_name"]
        cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:, ::-1])
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        a["bbox"] = [width[a["image_id"]] - x - w, y, w, h]
    ann_path.write_text(json.dumps(coco))
    return width


def test_flip_adds_exactly_the_boxes_of_the_mirrored_images_mirrored_back(small_dataset,
                                                                           tmp_path):
    """A real detector, every box kept: mining with --review-flip gives, per image and view,
    the boxes of plain mining plus those of mining a mirrored copy of the images, each
    mirrored back to x' = width - x - w: where a box lands in the original image."""
    import json
    import shutil

    from comining import store
    from comining.cli import main
    from comining.engine import train
    from conftest import seconds_run_config

    run = train(seconds_run_config(small_dataset, tmp_path / "run"), progress=False)
    width = mirror_dataset(small_dataset, tmp_path / "mirrored_data")
    keep_all = ["--review-score-floor", "0.001", "--review-max-objects", "1000",
                "--label-iou", "1.0", "--device", "cpu", "--checkpoint", "4"]
    boxes = {}
    for name, flags in (("plain", []), ("mirrored", []), ("flip", ["--review-flip"])):
        copy = tmp_path / name
        shutil.copytree(run, copy)
        if name == "mirrored":     # the same run and weights, mining the mirrored copy
            config = json.loads((copy / "config.json").read_text())
            config["images"] = str(tmp_path / "mirrored_data" / "images")
            config["ann"] = str(tmp_path / "mirrored_data" / "annotations" / "train.json")
            (copy / "config.json").write_text(json.dumps(config))
        assert main(["mine", "--run", str(copy), *flags, *keep_all]) == 0
        conn = store.connect(copy / store.STORE_NAME)
        try:
            settings = json.loads(conn.execute(
                "SELECT settings FROM checkpoints WHERE iteration = 4").fetchone()[0])
            assert settings["flip"] is (name == "flip")
            boxes[name] = [(r["image_id"], r["view"], r["x"], r["y"], r["w"], r["h"])
                           for r in conn.execute("SELECT * FROM candidates WHERE checkpoint = 4")]
        finally:
            conn.close()
    back = [(i, v, width[i] - x - w, y, w, h) for i, v, x, y, w, h in boxes["mirrored"]]
    assert boxes["plain"] and back

    def by_image_view(rows):
        out = {}
        for i, v, *box in rows:
            out.setdefault((i, v), []).append(box)
        return {k: np.asarray(b) for k, b in out.items()}

    expected, got = by_image_view(boxes["plain"] + back), by_image_view(boxes["flip"])
    assert got.keys() == expected.keys()
    for key, want in expected.items():     # one to one, each within 1e-3 px (float32 sums)
        have = got[key]
        assert len(have) == len(want)
        free = np.ones(len(have), bool)
        for box in want:
            far = np.where(free, np.abs(have - box).max(axis=1), np.inf)
            k = int(np.argmin(far))
            assert far[k] < 1e-3, (key, box)
            free[k] = False
