"""`comining export`: the enlarged file holds the originals unchanged plus exactly the
accepted boxes; modes, merging, atomic write, refusals, the sidecar, the CLI."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import pytest

from comining import export, review, store
from comining.cli import main
from comining.errors import InputError
from review_fixtures import make_empty_run, make_older_store, make_run


@pytest.fixture
def info(tmp_path):
    return make_run(tmp_path)


@pytest.fixture
def run(info):
    r = review.open_run(info.run_dir)
    yield r
    r.close()


def new_annotations(out):
    data = json.loads(out.read_text())
    return data, [a for a in data["annotations"] if "comining" in a]


def load_with_pycocotools(path):
    from pycocotools.coco import COCO
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_reviewed_export_holds_exactly_the_accepted_boxes(run, info, tmp_path):
    items = review.queue_items(run, 200)
    a, b, c, d = items[:4]
    review.decide(run, a.id, "accepted", client="t")
    review.decide(run, b.id, "accepted", client="t", category_id=3, box=(12, 14, 40, 30))
    review.decide(run, c.id, "rejected", client="t")
    review.decide(run, d.id, "accepted", client="t")
    review.undo(run, "t")                                       # d is not accepted any more
    out = tmp_path / "enlarged.json"
    summary = export.export_run(run, out)
    assert summary["added"] == 2 and summary["rejected"] == 1

    source = json.loads(info.ann_path.read_text())
    data, new = new_annotations(out)
    n = len(source["annotations"])
    assert data["annotations"][:n] == source["annotations"]      # originals unchanged, same order
    assert {k: v for k, v in data.items() if k != "annotations"} == \
        {k: v for k, v in source.items() if k != "annotations"}
    first = max(x["id"] for x in source["annotations"]) + 1
    assert sorted(x["id"] for x in new) == [first, first + 1]
    got = {(x["image_id"], x["category_id"], tuple(x["bbox"])) for x in new}
    assert got == {(a.image_id, a.category_id, tuple(round(v, 2) for v in a.box)),
                   (b.image_id, 3, (12.0, 14.0, 40.0, 30.0))}
    for x in new:
        assert x["iscrowd"] == 0 and x["area"] == pytest.approx(x["bbox"][2] * x["bbox"][3], abs=0.01)
        prov = x["comining"]
        assert set(prov) >= {"score", "view", "checkpoint", "decision", "reviewed_at"}
        assert prov["checkpoint"] == 200 and prov["reviewed_at"]
    edited = next(x for x in new if x["category_id"] == 3 and x["bbox"] == [12.0, 14.0, 40.0, 30.0])
    assert edited["comining"]["decision"] == "edited"
    assert edited["comining"]["score"] == pytest.approx(b.score, abs=1e-3)
    assert edited["comining"]["view"] == b.view

    side = json.loads((tmp_path / "enlarged.rejected.json").read_text())
    assert [r["candidate_id"] for r in side["rejected"]] == [c.id]
    coco = load_with_pycocotools(out)
    assert len(coco.getAnnIds()) == n + 2


def test_duplicates_across_views_and_checkpoints_give_one_box(run, tmp_path):
    early = review.image_items(run, 100, 1)
    obj = next(it for it in early if it.view == "both")
    review.decide(run, obj.id, "accepted", client="t")
    # the same object at the later checkpoint, accepted again explicitly
    late = next(it for it in review.image_items(run, 200, 1)
                if it.category_id == obj.category_id and review.iou(it.box, obj.box) >= 0.5)
    assert late.state == "accepted"                       # already covered by the first accept
    review.decide(run, late.id, "accepted", client="t")
    out = tmp_path / "e.json"
    export.export_run(run, out)
    _, new = new_annotations(out)
    assert len(new) == 1 and new[0]["comining"]["checkpoint"] == 200   # the latest decision


def test_merge_duplicates_prefers_human_then_score():
    rec = lambda box, score, human, cat=1: {  # noqa: E731
        "image_id": 1, "category_id": cat, "bbox": box, "score": score, "view": "both",
        "checkpoint": 1, "decision": "accepted" if human else "auto", "reviewed_at": None,
        "candidate_id": None, "human": human}
    recs = [rec([0, 0, 10, 10], 0.9, False), rec([1, 0, 10, 10], 0.6, True),
            rec([0, 1, 10, 10], 0.95, False), rec([0, 0, 10, 10], 0.7, False, cat=2),
            rec([50, 50, 10, 10], 0.5, False)]
    kept = export.merge_duplicates(recs)
    # one object, one box: the class-2 box on the human's object is the same object
    assert [(r["bbox"], r["category_id"]) for r in kept] == [
        ([1, 0, 10, 10], 1), ([50, 50, 10, 10], 1)]


def test_build_enlarged_is_pure_and_numbers_from_the_max_id():
    data = {"images": [{"id": 5, "file_name": "a.png", "width": 100, "height": 80}],
            "categories": [{"id": 7, "name": "x"}],
            "annotations": [{"id": 3, "image_id": 5, "category_id": 7, "bbox": [1, 1, 5, 5],
                             "area": 25, "iscrowd": 0, "extra": {"keep": True}},
                            {"id": 90, "image_id": 5, "category_id": 7, "bbox": [9, 9, 5, 5]}]}
    before = copy.deepcopy(data)
    rec = {"image_id": 5, "category_id": 7, "bbox": [90.0, 70.0, 20.0, 20.0], "score": 0.8,
           "view": "original", "checkpoint": 4, "decision": "auto", "reviewed_at": None,
           "candidate_id": 1, "human": False}
    out = export.build_enlarged(data, [rec])
    assert data == before
    assert out["annotations"][:2] == before["annotations"]
    new = out["annotations"][2]
    assert new["id"] == 91 and new["bbox"] == [90.0, 70.0, 10.0, 10.0] and new["area"] == 100.0
    # the provenance twice: nested (pycocotools, FiftyOne keep it) and as flat attributes
    # (Datumaro, so CVAT, keeps only those); no segmentation warning in Datumaro
    assert new["segmentation"] == []
    assert new["attributes"] == {"comining_score": 0.8, "comining_view": "original",
                                 "comining_checkpoint": 4, "comining_decision": "auto",
                                 "comining_round": 0}
    assert new["comining"]["score"] == 0.8 and new["comining"]["candidate_id"] == 1
    with pytest.raises(InputError, match="not in the annotation file"):
        export.build_enlarged(data, [dict(rec, image_id=6)])


def test_a_box_empty_inside_its_image_is_dropped_and_counted(info, tmp_path):
    """A store from an older miner may hold a box outside its image: the export drops
    it and says so instead of counting it as added."""
    from review_fixtures import THRESHOLDS
    conn = store.connect(info.run_dir / store.STORE_NAME)
    outside = {"key": (1, "original", 0), "partner_key": None, "image_id": 1, "category_id": 1,
               "bbox": [900.0, 10.0, 30.0, 30.0], "score": 0.9, "view": "original", "agreed": False}
    inside = dict(outside, key=(1, "original", 1), bbox=[10.0, 10.0, 30.0, 30.0])
    store.replace_checkpoint_candidates(conn, iteration=300, path="checkpoints/iter_300.pt",
                                        thresholds=THRESHOLDS, candidates=[outside, inside])
    conn.close()
    r = review.open_run(info.run_dir)
    try:
        s = export.export_run(r, tmp_path / "out.json", accept="all", checkpoint=300)
    finally:
        r.close()
    _, new = new_annotations(tmp_path / "out.json")
    assert [x["bbox"] for x in new] == [[10.0, 10.0, 30.0, 30.0]]
    assert (s["added"], s["auto"], s["dropped_empty"]) == (1, 1, 1)
    assert "1 empty once clipped to the image, dropped" in export.summary_line(s)

# ----------------------------------------------------------------------------- by hand, pure


def _rec(box, score, *, human=False, image_id=1, cat=1, reviewed_at=None, candidate_id=1,
         decision=None):
    return {"image_id": image_id, "category_id": cat, "bbox": box, "score": score, "view": "both",
            "checkpoint": 4, "decision": decision or ("accepted" if human else "auto"),
            "reviewed_at": reviewed_at, "candidate_id": candidate_id, "human": human}


def test_merge_duplicates_tie_breaks_by_hand():
    """Among automatic accepts of one object: the higher score wins; a record without a
    score comes before any score; equal scores: the smaller candidate id. Among human
    decisions of equal score: the earlier one. IoU exactly 0.5 is the same object."""
    keep = lambda recs: [r["candidate_id"] for r in export.merge_duplicates(recs)]  # noqa: E731
    box, shifted = [0, 0, 10, 10], [1, 0, 10, 10]
    assert keep([_rec(box, 0.6, candidate_id=1), _rec(shifted, 0.9, candidate_id=2)]) == [2]
    assert keep([_rec(box, 0.9, candidate_id=1), _rec(shifted, None, candidate_id=2)]) == [2]
    assert keep([_rec(box, 0.7, candidate_id=5), _rec(shifted, 0.7, candidate_id=3)]) == [3]
    assert keep([_rec(box, 0.7, human=True, reviewed_at="2026-01-02T00:00:00", candidate_id=1),
                 _rec(shifted, 0.7, human=True, reviewed_at="2026-01-01T00:00:00", candidate_id=2)]) == [2]
    # a 10x10 box and the 10x5 box inside it: IoU 50 / 100 = 0.5
    assert keep([_rec(box, 0.9, candidate_id=1), _rec([0, 0, 10, 5], 0.8, candidate_id=2)]) == [1]
    # other images never merge
    assert keep([_rec(box, 0.9, candidate_id=1), _rec(box, 0.8, image_id=2, candidate_id=2)]) == [1, 2]


def test_build_enlarged_by_hand():
    """No 'annotations' key: ids start at 1. An image without a size clips nothing. Areas
    are rounded to 0.01 px^2, scores to 4 decimals, a missing score is null. A box empty
    inside its image is dropped wherever it sorts (the later boxes are kept)."""
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 80},
                       {"id": 2, "file_name": "b.png"}],
            "categories": [{"id": 7, "name": "x"}]}
    recs = [_rec([5000.0, 10.0, 30.0, 20.0], 0.123456, image_id=2, cat=7, candidate_id=11),
            _rec([150.0, 10.0, 5.0, 5.0], 0.9, image_id=1, cat=7, candidate_id=12),   # outside
            _rec([10.0, 10.0, 1.25, 1.25], None, image_id=1, cat=7, candidate_id=13,
                 human=True, reviewed_at="2026-01-01T00:00:00", decision="edited")]
    out = export.build_enlarged(data, recs)
    assert set(out) == {"images", "categories", "annotations"}
    keys = ("id", "image_id", "category_id", "bbox", "area", "iscrowd", "comining")
    assert [{k: a[k] for k in keys} for a in out["annotations"]] == [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10.0, 10.0, 1.25, 1.25], "area": 1.56,
         "iscrowd": 0, "comining": {"score": None, "view": "both", "checkpoint": 4,
                                    "decision": "edited", "reviewed_at": "2026-01-01T00:00:00",
                                    "candidate_id": 13, "round": 0}},
        {"id": 2, "image_id": 2, "category_id": 7, "bbox": [5000.0, 10.0, 30.0, 20.0], "area": 600.0,
         "iscrowd": 0, "comining": {"score": 0.1235, "view": "both", "checkpoint": 4,
                                    "decision": "auto", "reviewed_at": None, "candidate_id": 11,
                                    "round": 0}}]
    # a dict with annotations only (no images, no categories) and nothing to add: unchanged
    only = {"annotations": [{"id": 4, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}]}
    assert export.build_enlarged(only, []) == only
    with pytest.raises(InputError) as e:
        export.build_enlarged(data, [_rec([0, 0, 5, 5], 0.5, image_id=1, cat=8)])
    assert str(e.value) == ("1 accepted boxes name an image or class that is not in the annotation "
                            "file (first: image 1, class 8): does the run's store belong to this file?")


def test_sidecar_path_and_summary_line():
    assert export.sidecar_path("/d/out.json") == Path("/d/out.rejected.json")
    assert export.sidecar_path("/d/OUT.JSON") == Path("/d/OUT.rejected.json")
    assert export.sidecar_path("/d/out.txt") == Path("/d/out.txt.rejected.json")
    s = {"out": "o.json", "sidecar": "o.rejected.json", "added": 3, "human": 1, "auto": 2,
         "merged_duplicates": 4, "rejected": 5, "original": 6}
    line = ("added 3 boxes (1 reviewed, 2 automatic; 4 duplicates merged) to the 6 original "
            "annotations -> o.json; 5 rejected listed in o.rejected.json")
    assert export.summary_line(s) == line
    assert export.summary_line(dict(s, dropped_empty=0)) == line
    assert export.summary_line(dict(s, dropped_empty=2)) == line.replace(
        "merged)", "merged; 2 empty once clipped to the image, dropped)")


# ----------------------------------------------------------------------------- collect, export_run


def test_collect_by_mode_with_its_defaults(hand):
    """HAND: A B D E are agreed objects, C and F one-view ones. A accepted, C accepted as
    class 2 (edited), D rejected. Default mode: the two human accepts; 'all' adds B E F
    automatically (checkpoint 'last', any score), 'agreed' only B E."""
    run, ids = hand
    a, c, d = ids[("A", "original")], ids[("C", "original")], ids[("D", "original")]
    review.decide(run, a, "accepted", client="t")
    review.decide(run, c, "accepted", client="t", category_id=2)
    review.decide(run, d, "rejected", client="t")
    accepted, rejected = export.collect(run)
    human = sorted((r["candidate_id"], r["category_id"], r["decision"], r["human"], r["checkpoint"])
                   for r in accepted)
    assert human == sorted([(a, 1, "accepted", True, 300), (c, 2, "edited", True, 300)])
    assert all(r["reviewed_at"] for r in accepted)
    assert len(rejected) == 1
    r = rejected[0]
    assert set(r) == {"candidate_id", "image_id", "category_id", "bbox", "score", "view",
                      "checkpoint", "decided_at", "client"}
    assert (r["candidate_id"], r["image_id"], r["category_id"], r["view"], r["checkpoint"],
            r["client"]) == (d, 2, 1, "both", 300, "t")
    assert len(r["bbox"]) == 4 and 0.8 < r["score"] <= 0.9 and r["decided_at"]

    def autos(**kw):
        acc, _ = export.collect(run, **kw)
        assert len([x for x in acc if x["human"]]) == 2
        auto = [x for x in acc if not x["human"]]
        assert all(x["decision"] == "auto" and x["reviewed_at"] is None and x["checkpoint"] == 300
                   and x["human"] is False for x in auto)
        return sorted((x["image_id"], x["category_id"], x["view"]) for x in auto), auto

    every, auto = autos(accept="all")
    assert every == [(1, 1, "both"), (1, 2, "original"), (2, 1, "both")]
    assert {x["candidate_id"] for x in auto} == {ids[("B", "original")], ids[("E", "original")],
                                                ids[("F", "original")]}
    assert autos(accept="all", checkpoint=None)[0] == every
    assert autos(accept="all", checkpoint=300)[0] == every
    assert autos(accept="agreed")[0] == [(1, 1, "both"), (2, 1, "both")]
    assert autos(accept="all", min_score=1.0)[0] == []      # 1 is allowed: no score reaches it


def test_collect_refuses_bad_settings_with_one_line(hand):
    run, _ = hand
    with pytest.raises(InputError) as e:
        export.collect(run, accept="some")
    assert str(e.value) == "--accept must be one of reviewed, agreed, all, got 'some'"
    with pytest.raises(InputError) as e:
        export.collect(run, accept="all", min_score=1.5)
    assert str(e.value) == "--min-score must be within [0, 1], got 1.5"
    with pytest.raises(InputError) as e:
        export.collect(run, accept="all", checkpoint=999)
    assert str(e.value) == f"{run.store_path}: checkpoint 999 was not mined; mined: 300"


def test_export_run_summary_and_sidecar_by_hand(hand, tmp_path):
    run, ids = hand
    review.decide(run, ids[("A", "original")], "accepted", client="t")
    review.decide(run, ids[("D", "original")], "rejected", client="t")
    out = tmp_path / "enlarged.json"
    side = tmp_path / "enlarged.rejected.json"
    n = len(json.loads(run.ann_path.read_text())["annotations"])
    s = export.export_run(run, out, accept="agreed")       # A by hand; B and E automatically
    assert s == {"out": str(out), "sidecar": str(side), "accept": "agreed", "added": 3, "human": 1,
                 "auto": 2, "merged_duplicates": 0, "dropped_empty": 0, "rejected": 1, "original": n}
    sidecar = json.loads(side.read_text())
    assert set(sidecar) == {"comining", "source", "export", "accept", "exported_at", "rejected"}
    assert (sidecar["comining"], sidecar["source"], sidecar["export"], sidecar["accept"]) == \
        ("rejected candidates", str(run.ann_path), str(out), "agreed")
    assert sidecar["exported_at"].endswith("+00:00")       # UTC, said so
    assert [r["candidate_id"] for r in sidecar["rejected"]] == [ids[("D", "original")]]


def test_export_run_refusals_name_the_file(hand, tmp_path):
    import os
    run, _ = hand
    # the sidecar would overwrite the input annotation file
    out = tmp_path / "e.json"
    os.symlink(run.ann_path, tmp_path / "e.rejected.json")
    with pytest.raises(InputError, match="refusing to overwrite the input file"):
        export.export_run(run, out)
    # the output and its sidecar are one file (a hard link)
    out2 = tmp_path / "f.json"
    out2.write_text("{}")
    os.link(out2, tmp_path / "f.rejected.json")
    with pytest.raises(InputError) as e:
        export.export_run(run, out2)
    assert str(e.value) == f"{out2}: the output and its sidecar would be the same file"
    missing = tmp_path / "nowhere" / "g.json"
    with pytest.raises(InputError) as e:
        export.export_run(run, missing)
    assert str(e.value) == f"{missing}: output folder {missing.parent} does not exist"
    ann_path = run.ann_path
    run.ann_path = None
    try:
        with pytest.raises(InputError) as e:
            export.export_run(run, tmp_path / "h.json")
        assert str(e.value) == f"{run.store_path}: the run does not record its input annotation file"
    finally:
        run.ann_path = ann_path
    ann_path.write_text(json.dumps({"images": 5, "annotations": [], "categories": []}))
    with pytest.raises(InputError) as e:
        export.export_run(run, tmp_path / "i.json")
    assert str(e.value).startswith(f"{ann_path}: ")


# A checkpoint written by hand (xywh boxes, 480x360 images): per object, its candidates
# as (view, box, score); two views = an agreed pair.
HAND = {
    "A": (1, 1, [("original", [20, 20, 60, 60], 0.80), ("augmented", [22, 20, 60, 60], 0.78)]),
    "B": (1, 1, [("original", [200, 20, 60, 60], 0.65), ("augmented", [200, 22, 60, 60], 0.63)]),
    "C": (1, 1, [("original", [20, 200, 60, 60], 0.95)]),
    "F": (1, 2, [("original", [300, 200, 60, 60], 0.55)]),
    "D": (2, 1, [("original", [20, 20, 60, 60], 0.90), ("augmented", [20, 20, 62, 60], 0.88)]),
    "E": (2, 1, [("original", [200, 200, 80, 60], 0.75), ("augmented", [202, 200, 80, 60], 0.73)]),
}
HAND_CHECKPOINT = 300


@pytest.fixture
def hand(tmp_path):
    """A run whose only mined checkpoint is HAND; yields (run, candidate id of (object, view))."""
    from review_fixtures import THRESHOLDS
    info = make_run(tmp_path / "hand", n_images=2, checkpoints=())
    cands = []
    for name, (image_id, cat, views) in HAND.items():
        for view, box, score in views:
            other = "augmented" if view == "original" else "original"
            cands.append({"key": (name, view), "image_id": image_id, "category_id": cat,
                          "bbox": box, "score": score, "view": view, "agreed": len(views) == 2,
                          "partner_key": (name, other) if len(views) == 2 else None})
    conn = store.connect(info.run_dir / store.STORE_NAME)
    store.replace_checkpoint_candidates(conn, iteration=HAND_CHECKPOINT, path="checkpoints/x.pt",
                                        thresholds=THRESHOLDS, candidates=cands)
    ids = {}
    for name, (image_id, _, views) in HAND.items():
        for view, box, _ in views:
            ids[(name, view)] = conn.execute(
                "SELECT id FROM candidates WHERE image_id = ? AND view = ? AND x = ? AND y = ? "
                "AND w = ?", (image_id, view, *box[:3])).fetchone()[0]
    conn.close()
    r = review.open_run(info.run_dir)
    yield r, ids
    r.close()


def exported(out) -> dict:
    """{(image_id, category_id, bbox): provenance} of the boxes an export added."""
    _, new = new_annotations(out)
    got = {(x["image_id"], x["category_id"], tuple(x["bbox"])): x["comining"] for x in new}
    assert len(got) == len(new)
    return got


def hand_box(name, view="original"):
    image_id, cat, views = HAND[name]
    return image_id, cat, tuple(float(v) for v in next(b for v_, b, _ in views if v_ == view))


def hand_object(name):
    """(image_id, class, box) of a HAND object as exported: its views' boxes averaged with
    their scores as weights (corners), rounded to 0.01 px."""
    image_id, cat, views = HAND[name]
    total = sum(s for _, _, s in views)
    corners = [sum(s * (b[0] + k // 2 * b[2] if k % 2 == 0 else b[1] + k // 2 * b[3])
                   for _, b, s in views) / total for k in range(4)]   # x0, y0, x1, y1
    x0, y0, x1, y1 = corners
    return image_id, cat, (round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2))


def test_agreed_and_all_accept_automatically_by_hand(hand, tmp_path):
    """agreed: the undecided agreed objects with score >= min-score; all: every undecided
    object; a rejected object never (expected boxes from the hand-written checkpoint)."""
    run, ids = hand
    review.decide(run, ids[("D", "original")], "rejected", client="t")
    out = tmp_path / "agreed.json"
    s = export.export_run(run, out, accept="agreed", min_score=0.7)
    got = exported(out)
    # an object's score: the mean of its views' scores (a view that did not see it: 0);
    # A (0.80 + 0.78) / 2 = 0.79, E (0.75 + 0.73) / 2 = 0.74; B 0.64, C 0.475, F 0.275
    assert hand_object("A") == (1, 1, (20.99, 20.0, 60.0, 60.0))   # (0.8*20 + 0.78*22) / 1.58
    assert set(got) == {hand_object("A"), hand_object("E")}
    assert [(got[hand_object(n)]["score"], got[hand_object(n)]["view"],
             got[hand_object(n)]["decision"]) for n in "AE"] == [(0.79, "both", "auto"),
                                                                 (0.74, "both", "auto")]
    assert (s["added"], s["auto"], s["human"], s["rejected"]) == (2, 2, 0, 1)
    export.export_run(run, out, accept="all", min_score=0.0)
    assert set(exported(out)) == {hand_object(n) for n in "ABCEF"}
    export.export_run(run, out, accept="all", min_score=0.45)
    assert set(exported(out)) == {hand_object(n) for n in "ABCE"}


def test_agreed_and_all_accept_automatically(run, tmp_path):
    """On the fixture's run (16 objects at checkpoint 200: 4 images x (3 mined + 1 false
    positive)): one rejected, every other exported by `all`; `checkpoint` chooses."""
    agreed = review.queue_items(run, 200, review.Filters(views=("both",)))
    rejected = agreed[0]
    review.decide(run, rejected.id, "rejected", client="t")
    out = tmp_path / "agreed.json"
    export.export_run(run, out, accept="agreed", min_score=0.7)
    _, new = new_annotations(out)
    assert all(x["comining"]["decision"] == "auto" and x["comining"]["view"] == "both"
               and x["comining"]["score"] >= 0.7 for x in new)
    assert rejected.box not in [tuple(x["bbox"]) for x in new]
    out_all = tmp_path / "all.json"
    export.export_run(run, out_all, accept="all", min_score=0.0)
    _, new_all = new_annotations(out_all)
    assert len(new_all) == 16 - 1
    out_early = tmp_path / "early.json"
    export.export_run(run, out_early, accept="all", checkpoint=100)
    _, new_early = new_annotations(out_early)
    assert {x["comining"]["checkpoint"] for x in new_early} == {100}
    with pytest.raises(InputError, match="was not mined"):
        export.export_run(run, tmp_path / "x.json", accept="all", checkpoint=150)
    with pytest.raises(InputError, match="min-score"):
        export.export_run(run, tmp_path / "x.json", accept="all", min_score=2)


def test_min_score_never_drops_a_human_accept(hand, tmp_path, capsys):
    """`export --accept agreed --min-score 0.85`: a human accept scored 0.275 (F: 0.55 by one
    view of two) is exported (the docs: min-score filters only the automatic accepts), next
    to the one agreed object scored >= 0.85 (D: (0.90 + 0.88) / 2 = 0.89)."""
    run, ids = hand
    review.decide(run, ids[("F", "original")], "accepted", client="t")
    out = tmp_path / "e.json"
    assert main(["export", "--run", str(run.dir), "--out", str(out), "--accept", "agreed",
                 "--min-score", "0.85"]) == 0
    got = exported(out)
    assert set(got) == {hand_object("F"), hand_object("D")}
    assert (got[hand_object("F")]["decision"], got[hand_object("F")]["score"]) == ("accepted", 0.275)
    assert (got[hand_object("D")]["decision"], got[hand_object("D")]["score"]) == ("auto", 0.89)
    assert "added 2 boxes (1 reviewed, 1 automatic" in capsys.readouterr().out


def test_both_views_boxes_of_one_object_export_once(hand, tmp_path):
    """Accepting the original view's and the augmented view's box of one object gives one
    annotation in the written file."""
    run, ids = hand
    review.decide(run, ids[("A", "original")], "accepted", client="t")
    review.decide(run, ids[("A", "augmented")], "accepted", client="t")
    out = tmp_path / "e.json"
    export.export_run(run, out)
    got = exported(out)
    assert len(got) == 1
    assert next(iter(got)) in {hand_box("A"), hand_box("A", "augmented")}


def test_export_run_merges_what_it_collects(hand, tmp_path, monkeypatch):
    """Whatever the review layer hands over, the written file has one box per object: each
    collected box given a twin from the other view (2 px off, lower score) still exports
    each object once, with its better-scored box."""
    run, _ = hand
    real = export.collect

    def with_twins(*args, **kwargs):
        accepted, rejected = real(*args, **kwargs)
        twins = [dict(r, bbox=[r["bbox"][0] + 2, *r["bbox"][1:]], score=r["score"] - 0.01,
                      view="augmented", candidate_id=None) for r in accepted]
        return accepted + twins, rejected

    monkeypatch.setattr(export, "collect", with_twins)
    out = tmp_path / "e.json"
    s = export.export_run(run, out, accept="all")
    assert set(exported(out)) == {hand_object(n) for n in "ABCDEF"}
    assert (s["added"], s["merged_duplicates"]) == (6, 6)


def test_refuses_to_overwrite_the_inputs(run, info, tmp_path):
    before = info.ann_path.read_bytes()
    for target in (info.ann_path, info.hidden_path, run.store_path, info.run_dir / "config.json"):
        with pytest.raises(InputError, match="refusing to overwrite"):
            export.export_run(run, target)
    assert info.ann_path.read_bytes() == before
    with pytest.raises(InputError, match="does not exist"):
        export.export_run(run, tmp_path / "no" / "dir.json")


def test_atomic_write_leaves_no_temporary_files(run, tmp_path):
    out_dir = tmp_path / "outs"
    out_dir.mkdir()
    out = out_dir / "e.json"
    out.write_text("old")
    export.export_run(run, out)
    assert sorted(p.name for p in out_dir.iterdir()) == ["e.json", "e.rejected.json"]
    json.loads(out.read_text())


def test_cli_export(info, tmp_path, capsys):
    r = review.open_run(info.run_dir)
    it = review.queue_items(r, 200)[0]
    review.decide(r, it.id, "accepted", client="cli")
    r.close()
    out = tmp_path / "cli.json"
    assert main(["export", "--run", str(info.run_dir), "--out", str(out)]) == 0
    assert "added 1 boxes" in capsys.readouterr().out
    assert len(new_annotations(out)[1]) == 1
    load_with_pycocotools(out)
    assert main(["export", "--run", str(info.run_dir), "--out", str(out), "--accept", "agreed",
                 "--min-score", "0.9", "--checkpoint", "last"]) == 0
    printed = capsys.readouterr().out
    _, new = new_annotations(out)
    human = [x for x in new if x["comining"]["decision"] != "auto"]
    auto = [x for x in new if x["comining"]["decision"] == "auto"]
    assert [(x["image_id"], x["category_id"], tuple(x["bbox"])) for x in human] == \
        [(it.image_id, it.category_id, tuple(round(v, 2) for v in it.box))]   # still there
    assert all(x["comining"]["view"] == "both" and x["comining"]["score"] >= 0.9
               and x["comining"]["checkpoint"] == 200 for x in auto)
    assert f"added {len(new)} boxes (1 reviewed, {len(auto)} automatic" in printed
    assert main(["export", "--run", str(info.run_dir), "--out", str(info.ann_path)]) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and err.count("\n") == 1
    assert main(["export", "--run", str(info.run_dir), "--out", str(out), "--checkpoint", "x"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_cli_clear_errors_for_older_or_empty_runs(tmp_path, capsys):
    info = make_run(tmp_path / "old")
    make_older_store(info.run_dir)
    for cmd in (["export", "--run", str(info.run_dir), "--out", str(tmp_path / "o.json")],
                ["review", "--run", str(info.run_dir), "--port", "1"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert "schema version 0 is not supported" in err and err.count("\n") == 1
    empty = make_empty_run(tmp_path / "empty")
    assert main(["export", "--run", str(empty), "--out", str(tmp_path / "o.json")]) == 0
    assert "added 0 boxes" in capsys.readouterr().out
    assert main(["export", "--run", str(empty), "--out", str(tmp_path / "o.json"),
                 "--accept", "all"]) == 2
    assert "no mined checkpoint" in capsys.readouterr().err
    assert main(["review", "--run", str(tmp_path / "missing")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert main(["review", "--run", str(empty), "--auth", "nopassword"]) == 2
    assert "USER:PASS" in capsys.readouterr().err


def test_export_names_the_loop_round_each_box_comes_from(tmp_path, monkeypatch):
    """Round 1 trains from checkpoint 100 (its checkpoint: 200). An accept of a
    checkpoint-100 object is of round 0, one of a checkpoint-200 object of round 1; a box
    drawn by hand is of the round running when it was drawn (drawn the very moment round
    1 starts: round 1); automatic accepts of checkpoint 200 are of round 1."""
    t0, t1, t2 = (f"2030-01-01T00:00:0{k}.000+00:00" for k in range(3))
    info = make_run(tmp_path, n_images=2, checkpoints=(100, 200))
    run = review.open_run(info.run_dir)
    try:
        monkeypatch.setattr(store, "now_iso", lambda: t0)
        early = review.image_items(run, 100, 1)[0]
        review.decide(run, early.id, "accepted", client="a")
        review.import_decisions(run, [{"image_id": 1, "bbox": [2, 2, 20, 15], "category_id": 1,
                                       "decision": "accepted"}], client="m0")
        monkeypatch.setattr(store, "now_iso", lambda: t1)
        store.add_round(run.conn, round=1, start_iteration=100, end_iteration=200, targets="t",
                        rejected="r", decision_ids=[], n_accepted=1, n_rejected=0)
        review.import_decisions(run, [{"image_id": 2, "bbox": [2, 2, 20, 15], "category_id": 1,
                                       "decision": "accepted"}], client="m1")
        monkeypatch.setattr(store, "now_iso", lambda: t2)
        late = review.image_items(run, 200, 2)[0]
        review.decide(run, late.id, "accepted", client="b")
        # decided during round 1, on an object round 0 mined: the box is round 0's
        old = next(it for it in review.image_items(run, 100, 1) if it.state == "pending")
        review.decide(run, old.id, "accepted", client="c")
        out = tmp_path / "out.json"
        export.export_run(run, out, accept="all", min_score=0.0, checkpoint=200)
    finally:
        run.close()
    new = [a for a in json.loads(out.read_text())["annotations"] if "comining" in a]
    rounds = {(a["image_id"], a["comining"]["decision"], tuple(round(v) for v in a["bbox"][:2])):
              (a["comining"]["round"], a["attributes"]["comining_round"]) for a in new}
    assert rounds.pop((1, "accepted", (2, 2))) == (0, 0)            # drawn before round 1
    assert rounds.pop((2, "accepted", (2, 2))) == (1, 1)            # drawn as it started
    assert rounds.pop((1, "accepted", tuple(round(v) for v in early.box[:2]))) == (0, 0)
    assert rounds.pop((2, "accepted", tuple(round(v) for v in late.box[:2]))) == (1, 1)
    assert rounds.pop((1, "accepted", tuple(round(v) for v in old.box[:2]))) == (0, 0)
    assert rounds and set(rounds.values()) == {(1, 1)}              # the automatic accepts
    assert {k[1] for k in rounds} == {"auto"}
