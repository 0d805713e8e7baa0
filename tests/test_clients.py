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
