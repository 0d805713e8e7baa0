"""Real annotation tools read what comining writes (optional dependencies: each test
skips when its tool is not installed)."""

from __future__ import annotations

import json

import pytest

from comining import export, review
from review_fixtures import make_run


def test_datumaro_keeps_the_provenance_of_exported_boxes(tmp_path):
    """Datumaro (CVAT's COCO import goes through it) loads the enlarged json: the original
    annotations and the accepted object, whose provenance survives as attributes."""
    dm = pytest.importorskip("datumaro")
    info = make_run(tmp_path / "r", n_images=2)
    run = review.open_run(info.run_dir)
    try:
        item = review.queue_items(run, 200)[0]
        review.decide(run, item.id, "accepted", client="t")
        folder = tmp_path / "coco" / "annotations"
        folder.mkdir(parents=True)
        (tmp_path / "coco" / "images" / "train").mkdir(parents=True)   # Datumaro's layout
        export.export_run(run, tmp_path / "enlarged.json")   # its sidecar stays out of the folder
    finally:
        run.close()
    (folder / "instances_train.json").write_bytes((tmp_path / "enlarged.json").read_bytes())
    data = json.loads((folder / "instances_train.json").read_text())
    ds = dm.Dataset.import_from(str(tmp_path / "coco"), "coco_instances")
    boxes = [a for it in ds for a in it.annotations if a.type == dm.AnnotationType.bbox]
    assert len(boxes) == len(data["annotations"]) == len(info.annotations) + 1
    mined = [a for a in boxes if "comining_score" in a.attributes]
    assert len(mined) == 1
    attrs = mined[0].attributes
    assert attrs["comining_decision"] == "accepted" and attrs["comining_checkpoint"] == 200
    assert attrs["comining_score"] == pytest.approx(item.score, abs=1e-4)
    assert attrs["comining_view"] == item.view and attrs["comining_round"] == 0
    x, y, w, h = item.box
    assert mined[0].get_bbox() == pytest.approx([x, y, w, h], abs=0.01)


def test_globox_reads_the_export_and_the_coco_and_cvat_queues(tmp_path):
    """globox (a COCO reader apart from pycocotools) loads the enlarged export and the
    queue written --format coco / cvat with the right boxes, classes and scores."""
    globox = pytest.importorskip("globox")
    from comining.cli import main
    from review_fixtures import CATEGORIES

    names = {c["id"]: c["name"] for c in CATEGORIES}
    info = make_run(tmp_path / "r", n_images=2)
    run = review.open_run(info.run_dir)
    try:
        item = review.image_items(run, 200, 1)[0]
        x, y, w, h = item.box
        review.decide(run, item.id, "accepted", client="t", box=(x + 5, y, w, h))
        pending = [it for it in review.image_items(run, 200, 1)
                   if it.state == "pending" and it.on_label is None]
    finally:
        run.close()
    originals = sorted((names[a["category_id"]], tuple(a["bbox"])) for a in info.annotations
                       if a["image_id"] == 1)
    assert main(["export", "--run", str(info.run_dir), "--out", str(tmp_path / "enlarged.json")]) == 0
    assert main(["candidates", "--run", str(info.run_dir), "--out", str(tmp_path / "q.json"),
                 "--format", "coco"]) == 0
    assert main(["candidates", "--run", str(info.run_dir), "--out", str(tmp_path / "t.json"),
                 "--format", "cvat"]) == 0

    def boxes(path, image="000001.png"):
        ann = globox.AnnotationSet.from_coco(path)[image]
        return sorted((b.label, tuple(round(v, 2) for v in b.ltwh), b.confidence) for b in ann.boxes)

    exported = boxes(tmp_path / "enlarged.json")
    assert [(label, box) for label, box, _ in exported] == sorted(
        originals + [(names[item.category_id], tuple(round(v, 2) for v in (x + 5, y, w, h)))])
    mined = [(names[it.category_id], tuple(round(v, 2) for v in it.box)) for it in pending]
    queue = boxes(tmp_path / "q.json")
    assert [(label, box) for label, box, _ in queue] == sorted(mined)
    scores = {(names[it.category_id], tuple(round(v, 2) for v in it.box)): it.score for it in pending}
    assert all(conf == pytest.approx(scores[(label, box)], abs=1e-4) for label, box, conf in queue)
    task = boxes(tmp_path / "t.json")
    assert sorted((label, box) for label, box, conf in task if conf is None) == originals
    assert sorted((label, box) for label, box, conf in task if conf is not None) == sorted(mined)
