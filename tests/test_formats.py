"""`comining candidates --format coco|cvat|fiftyone|labelstudio` and `comining decide`
reading back what those tools export after a review.

The reviewed files are written here from each tool's documented export schema (Label
Studio's JSON export, CVAT's COCO 1.0 export, FiftyOne's COCODetectionDataset export);
the expected decisions come from the store's objects and the edits the test makes."""

from __future__ import annotations

import ast
import copy
import json

import pytest

from comining import review, store
from comining.cli import main
from conftest import assert_clean_error, run_cli
from review_fixtures import CATEGORIES, make_run

W, H = 480, 360                     # the fixture's image size
NAMES = {c["id"]: c["name"] for c in CATEGORIES}
DRAWN = [1.0, 1.0, 12.0, 10.0]      # a box drawn by hand: too small to be any object's


@pytest.fixture
def info(tmp_path):
    return make_run(tmp_path / "r", n_images=2)


def objects(info, checkpoint=200):
    """{image_id: [Item]} of the pending objects the queue sends out (missing a label)."""
    run = review.open_run(info.run_dir)
    try:
        return {i: [x for x in review.image_items(run, checkpoint, i) if x.on_label is None]
                for i in (1, 2)}
    finally:
        run.close()


def write_queue(info, tmp_path, fmt, *extra):
    out = tmp_path / ("fo" if fmt == "fiftyone" else f"queue.{fmt}.json")
    assert main(["candidates", "--run", str(info.run_dir), "--out", str(out), "--format", fmt,
                 *extra]) == 0
    return out


def decisions(info):
    conn = store.connect(info.run_dir / store.STORE_NAME)
    try:
        return review.decisions(conn)
    finally:
        conn.close()


# ----------------------------------------------------------------------------- out


def test_labelstudio_tasks_hold_the_objects_in_percent_and_the_labels_read_only(info, tmp_path):
    objs = objects(info)
    out = write_queue(info, tmp_path, "labelstudio")
    tasks = json.loads(out.read_text())
    assert len(tasks) == 2
    task = next(t for t in tasks if t["data"]["image"].endswith("000001.png"))
    assert task["data"]["image"] == "/data/local-files/?d=images/000001.png"
    assert "annotations" not in task          # pre-annotations only: no work counted as done
    (pred,) = task["predictions"]
    assert pred["model_version"] == "comining-200"
    regions = {r["id"]: r for r in pred["result"]}
    first = objs[1][0]
    r = regions[f"comining-{first.id}"]
    x, y, w, h = first.box
    assert r["type"] == "rectanglelabels" and r["from_name"] == "label" and r["to_name"] == "image"
    assert (r["original_width"], r["original_height"], r["image_rotation"]) == (W, H, 0)
    assert r["value"]["x"] == pytest.approx(x / 4.8, abs=3e-3)
    assert r["value"]["y"] == pytest.approx(y / 3.6, abs=3e-3)
    assert r["value"]["width"] == pytest.approx(w / 4.8, abs=3e-3)
    assert r["value"]["height"] == pytest.approx(h / 3.6, abs=3e-3)
    assert r["value"]["rotation"] == 0
    assert r["value"]["rectanglelabels"] == [NAMES[first.category_id]]
    assert r["score"] == pytest.approx(first.score, abs=1e-4)
    assert "readonly" not in r
    assert sorted(task["data"]["comining_objects"]) == sorted(x.id for x in objs[1])
    # the image's two original labels, locked
    for ann in [a for a in info.annotations if a["image_id"] == 1]:
        lab = regions[f"label-{ann['id']}"]
        assert lab["readonly"] is True and "score" not in lab
        assert lab["value"]["rectanglelabels"] == [NAMES[ann["category_id"]]]
        assert lab["value"]["x"] == pytest.approx(ann["bbox"][0] / 4.8, abs=3e-3)
    assert len(regions) == len(objs[1]) + 2
    config = (tmp_path / "queue.labelstudio.labelconfig.xml").read_text()
    assert '<Image name="image" value="$image"/>' in config
    assert '<RectangleLabels name="label" toName="image">' in config
    for name in ("disc", "square", "triangle"):
        assert f'<Label value="{name}"/>' in config


def test_labelstudio_image_url_prefix(info, tmp_path):
    out = write_queue(info, tmp_path, "labelstudio", "--image-url-prefix", "http://h:8081/img/")
    urls = sorted(t["data"]["image"] for t in json.loads(out.read_text()))
    assert urls == ["http://h:8081/img/000001.png", "http://h:8081/img/000002.png"]


def test_coco_is_the_mined_objects_and_loads_in_pycocotools(info, tmp_path):
    from pycocotools.coco import COCO

    objs = objects(info)
    out = write_queue(info, tmp_path, "coco")
    coco = COCO(str(out))
    assert sorted(coco.getImgIds()) == [1, 2]
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {"disc", "square", "triangle"}
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert len(anns) == len(objs[1])            # no original label among them
    by_object = {a["attributes"]["comining_object"]: a for a in anns}
    for item in objs[1]:
        a = by_object[item.id]
        assert a["bbox"] == pytest.approx(list(item.box), abs=0.01)
        assert a["category_id"] == item.category_id and a["iscrowd"] == 0
        assert a["score"] == pytest.approx(item.score, abs=1e-4)
        assert a["attributes"]["comining_views"] == {
            "both": "original+augmented", "original": "original", "augmented": "augmented"}[item.view]
        assert a["attributes"]["comining_checkpoint"] == 200


def test_cvat_holds_the_labels_and_the_objects_with_their_attributes(info, tmp_path):
    objs = objects(info)
    out = write_queue(info, tmp_path, "cvat")
    data = json.loads(out.read_text())
    labels = [a for a in data["annotations"] if a["attributes"]["comining_source"] == "label"]
    mined = [a for a in data["annotations"] if a["attributes"]["comining_source"] == "mined"]
    assert sorted((a["image_id"], a["category_id"], a["bbox"]) for a in labels) == sorted(
        (a["image_id"], a["category_id"], a["bbox"]) for a in info.annotations)
    assert sorted(a["attributes"]["comining_object"] for a in mined) == sorted(
        x.id for its in objs.values() for x in its)
    assert all(a["segmentation"] == [] and a["iscrowd"] == 0 for a in data["annotations"])
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
    spec = json.loads((tmp_path / "queue.cvat.cvat-labels.json").read_text())
    assert [s["name"] for s in spec] == ["disc", "square", "triangle"]
    assert {a["name"] for a in spec[0]["attributes"]} >= {"comining_source", "comining_object"}
    files = (tmp_path / "queue.cvat.images.txt").read_text().split()
    assert [p.rsplit("/", 1)[1] for p in files] == ["000001.png", "000002.png"]
    assert all((info.images_dir / p.rsplit("/", 1)[1]).samefile(p) for p in files)


def test_fiftyone_folder_has_ground_truth_and_mined_over_the_same_images(info, tmp_path):
    objs = objects(info)
    out = write_queue(info, tmp_path, "fiftyone")
    labels = json.loads((out / "labels.json").read_text())
    mined = json.loads((out / "mined.json").read_text())
    assert labels["images"] == mined["images"]
    assert labels["categories"] == mined["categories"]
    assert sorted((a["image_id"], a["bbox"]) for a in labels["annotations"]) == sorted(
        (a["image_id"], a["bbox"]) for a in info.annotations)
    assert len(mined["annotations"]) == sum(len(v) for v in objs.values())
    assert all("score" in a and a["attributes"]["comining_source"] == "mined"
               for a in mined["annotations"])
    script = (out / "load.py").read_text()
    ast.parse(script)
    assert str(info.images_dir.resolve()) in script
    assert 'label_field=field' in script and '"mined"' in script and '"ground_truth"' in script


def test_all_checkpoints_is_for_json_only(info, tmp_path):
    proc = run_cli("candidates", "--run", info.run_dir, "--out", tmp_path / "q.json",
                   "--format", "cvat", "--checkpoint", "all")
    assert_clean_error(proc, "--checkpoint")
    assert not (tmp_path / "q.json").exists()


def test_default_json_is_unchanged(info, tmp_path):
    out = tmp_path / "q.json"
    assert main(["candidates", "--run", str(info.run_dir), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert set(rows[0]) == {"image_id", "category_id", "bbox", "score", "classes", "views",
                            "checkpoint", "on_label", "state"}


# ----------------------------------------------------------------------------- the review


def plan_for(objs):
    """On image 1: move the best object 6 px right and give it another class, delete the
    second, draw DRAWN (class 1) by hand; keep everything else."""
    edit, delete = objs[1][0], objs[1][1]
    x, y, w, h = edit.box
    return {"edit": edit.id, "edit_box": [x + 6, y, w, h], "edit_class": 1 + edit.category_id % 3,
            "delete": delete.id, "draw_image": 1, "draw": DRAWN, "draw_class": 1}


def labelstudio_export(tasks, plan):
    """Label Studio's JSON export after the review: each task with one annotation made
    from its prediction (region ids kept), edited."""
    out = []
    for k, task in enumerate(tasks):
        result = copy.deepcopy(task["predictions"][0]["result"])
        for r in result:
            r.pop("score", None)
        kept = []
        for r in result:
            if r["id"] == f"comining-{plan['delete']}":
                continue
            if r["id"] == f"comining-{plan['edit']}":
                x, y, w, h = plan["edit_box"]
                r["value"].update(x=x / 4.8, y=y / 3.6, width=w / 4.8, height=h / 3.6,
                                  rectanglelabels=[NAMES[plan["edit_class"]]])
            kept.append(r)
        if task["data"]["comining_image_id"] == plan["draw_image"]:
            x, y, w, h = plan["draw"]
            kept.append({"id": "Xy7_abc12", "type": "rectanglelabels", "from_name": "label",
                         "to_name": "image", "original_width": W, "original_height": H,
                         "image_rotation": 0, "origin": "manual",
                         "value": {"x": x / 4.8, "y": y / 3.6, "width": w / 4.8, "height": h / 3.6,
                                   "rotation": 0, "rectanglelabels": [NAMES[plan["draw_class"]]]}})
        out.append({"id": 40 + k, "data": task["data"], "project": 3,
                    "annotations": [{"id": 900 + k, "completed_by": 1, "result": kept,
                                     "was_cancelled": False, "ground_truth": False,
                                     "created_at": "2026-01-05T10:00:00.000000Z",
                                     "updated_at": "2026-01-05T10:00:00.000000Z",
                                     "lead_time": 12.5, "task": 40 + k}],
                    "predictions": task["predictions"], "drafts": []})
    return out


def _edited_coco(data, plan):
    """The COCO file after the review (ids and attributes as they were)."""
    data = copy.deepcopy(data)
    anns = []
    for a in data["annotations"]:
        oid = a.get("attributes", {}).get("comining_object")
        if oid == plan["delete"]:
            continue
        if oid == plan["edit"]:
            a["bbox"] = list(plan["edit_box"])
            a["category_id"] = plan["edit_class"]
        anns.append(a)
    anns.append({"id": 9999, "image_id": plan["draw_image"], "category_id": plan["draw_class"],
                 "bbox": list(plan["draw"]), "area": 120.0, "iscrowd": 0, "segmentation": []})
    data["annotations"] = anns
    return data


def cvat_export(data, plan, *, declared=True):
    """CVAT's COCO 1.0 export of the task: images and classes renumbered (classes in label
    order from 1), attributes as text, occluded/rotation added, no score. Changing a
    box's class resets its attributes; undeclared attributes are gone."""
    data = _edited_coco(data, plan)
    image_ids = {im["id"]: 1 + k for k, im in enumerate(reversed(data["images"]))}
    names = {c["id"]: c["name"] for c in data["categories"]}
    cat_ids = {name: 1 + k for k, name in enumerate(sorted(names.values(), reverse=True))}
    anns = []
    for k, a in enumerate(data["annotations"]):
        attrs = {"occluded": False, "rotation": 0.0}
        old = a.get("attributes", {})
        if declared:
            relabelled = old.get("comining_object") == plan["edit"]
            attrs.update({key: "" if relabelled else str(old.get(key, ""))
                          for key in ("comining_source", "comining_object", "comining_score",
                                      "comining_views", "comining_checkpoint")})
        x, y, w, h = a["bbox"]
        anns.append({"id": k + 1, "image_id": image_ids[a["image_id"]],
                     "category_id": cat_ids[names[a["category_id"]]], "segmentation": [],
                     "area": round(w * h, 2), "bbox": [round(v, 2) for v in a["bbox"]],
                     "iscrowd": 0, "attributes": attrs})
    return {"licenses": [{"name": "", "id": 0, "url": ""}],
            "info": {"contributor": "", "date_created": "", "description": "", "url": "",
                     "version": "", "year": ""},
            "categories": [{"id": i, "name": n, "supercategory": ""} for n, i in cat_ids.items()],
            "images": [{"id": image_ids[im["id"]], "width": im["width"], "height": im["height"],
                        "file_name": im["file_name"], "license": 0, "flickr_url": "",
                        "coco_url": "", "date_captured": 0} for im in data["images"]],
            "annotations": anns}


def fiftyone_export(data, plan, images_dir):
    """FiftyOne's COCODetectionDataset export of the "mined" field (labels only): file
    names are the samples' paths, the Detection attributes flattened into the
    annotation, confidence as score."""
    data = _edited_coco(data, plan)
    anns = []
    for k, a in enumerate(data["annotations"]):
        b = {"id": k + 1, "image_id": a["image_id"], "category_id": a["category_id"],
             "bbox": a["bbox"], "area": a["area"], "iscrowd": 0}
        if "score" in a:
            b["score"] = a["score"]
        b.update(a.get("attributes", {}))
        anns.append(b)
    return {"info": {}, "categories": data["categories"],
            "images": [{"id": im["id"], "file_name": str(images_dir.resolve() / im["file_name"]),
                        "height": im["height"], "width": im["width"]} for im in data["images"]],
            "annotations": anns}


def reviewed_file(info, tmp_path, tool, plan):
    fmt = {"cvat-undeclared": "cvat"}.get(tool, tool)
    out = write_queue(info, tmp_path, fmt)
    if tool == "labelstudio":
        return labelstudio_export(json.loads(out.read_text()), plan)
    if tool == "fiftyone":
        return fiftyone_export(json.loads((out / "mined.json").read_text()), plan, info.images_dir)
    data = json.loads(out.read_text())
    if tool == "coco":
        return _edited_coco(data, plan)
    return cvat_export(data, plan, declared=tool == "cvat")


TOOLS = ["labelstudio", "cvat", "cvat-undeclared", "fiftyone", "coco"]


@pytest.mark.parametrize("tool", TOOLS)
def test_a_review_in_another_tool_comes_back_as_exactly_its_decisions(info, tmp_path, tool, capsys):
    objs = objects(info)
    plan = plan_for(objs)
    path = tmp_path / f"reviewed-{tool}.json"
    path.write_text(json.dumps(reviewed_file(info, tmp_path, tool, plan)))
    assert main(["decide", "--run", str(info.run_dir), "--decisions", str(path)]) == 0
    n = sum(len(v) for v in objs.values())
    assert f"recorded {n} accepted and 1 rejected decisions" in capsys.readouterr().out

    got = {d.candidate_id or 0: (d.image_id, d.decision, d.category_id, d.box)
           for d in decisions(info)}
    want = {0: (1, "accepted", 1, DRAWN)}     # the manual one: on no object
    for image_id, items in objs.items():
        for x in items:
            if x.id == plan["delete"]:
                want[x.id] = (image_id, "rejected", x.category_id, x.box)
            elif x.id == plan["edit"]:
                want[x.id] = (image_id, "accepted", plan["edit_class"], plan["edit_box"])
            else:
                want[x.id] = (image_id, "accepted", x.category_id, x.box)
    assert len(decisions(info)) == len(want)
    assert {k: v[:3] for k, v in got.items()} == {k: v[:3] for k, v in want.items()}
    for k, (*_, box) in want.items():     # the file's boxes: 2 decimals of a pixel
        assert got[k][3] == pytest.approx(box, abs=0.011), k

    out = tmp_path / "enlarged.json"
    assert main(["export", "--run", str(info.run_dir), "--out", str(out)]) == 0
    new = json.loads(out.read_text())["annotations"][len(info.annotations):]
    accepted = sorted((i, c, list(box)) for i, d, c, box in want.values() if d == "accepted")
    added = sorted((a["image_id"], a["category_id"], a["bbox"]) for a in new)
    assert [(i, c) for i, c, _ in added] == [(i, c) for i, c, _ in accepted]
    for (_, _, box), (_, _, want_box) in zip(added, accepted):
        assert box == pytest.approx(want_box, abs=0.011)
    assert not any(a["comining"]["candidate_id"] == plan["delete"] for a in new)


def test_a_second_decide_of_the_same_review_changes_nothing_in_the_export(info, tmp_path):
    plan = plan_for(objects(info))
    path = tmp_path / "reviewed.json"
    path.write_text(json.dumps(reviewed_file(info, tmp_path, "cvat", plan)))
    outs = []
    for k in range(2):
        assert main(["decide", "--run", str(info.run_dir), "--decisions", str(path)]) == 0
        out = tmp_path / f"e{k}.json"
        assert main(["export", "--run", str(info.run_dir), "--out", str(out)]) == 0
        outs.append(sorted((a["image_id"], a["category_id"], a["bbox"])
                           for a in json.loads(out.read_text())["annotations"]))
    assert outs[0] == outs[1]


def test_labelstudio_takes_the_latest_annotation_that_was_not_skipped(info, tmp_path):
    objs = objects(info)
    plan = plan_for(objs)
    tasks = labelstudio_export(json.loads(write_queue(info, tmp_path, "labelstudio").read_text()), plan)
    task = next(t for t in tasks if t["data"]["comining_image_id"] == 1)
    latest = task["annotations"][0]
    older = copy.deepcopy(latest)          # an earlier annotation that kept nothing
    older.update(id=1, result=[], created_at="2026-01-01T09:00:00Z", updated_at="2026-01-01T09:00:00Z")
    skipped = copy.deepcopy(older)         # a later one, cancelled (skipped)
    skipped.update(id=2, was_cancelled=True, updated_at="2026-02-01T09:00:00Z")
    task["annotations"] = [skipped, latest, older]
    other = next(t for t in tasks if t["data"]["comining_image_id"] == 2)
    other["annotations"] = []              # nobody opened image 2: decides nothing
    path = tmp_path / "ls.json"
    path.write_text(json.dumps(tasks))
    assert main(["decide", "--run", str(info.run_dir), "--decisions", str(path)]) == 0
    decs = decisions(info)
    assert {d.image_id for d in decs} == {1}
    assert {d.candidate_id: d.decision for d in decs if d.candidate_id} == {
        x.id: "rejected" if x.id == plan["delete"] else "accepted" for x in objs[1]}


def test_labelstudio_region_ids_lost_fall_back_on_overlap_and_files_on_names(info, tmp_path):
    """A Label Studio that renamed the regions and uploaded the images itself (file names
    prefixed with 8 hex digits): objects found by overlap, images by file name."""
    objs = objects(info)
    plan = plan_for(objs)
    tasks = labelstudio_export(json.loads(write_queue(info, tmp_path, "labelstudio").read_text()), plan)
    for k, t in enumerate(tasks):
        name = t["data"]["image"].rsplit("/", 1)[1]
        t["data"] = {"image": f"/data/upload/3/{k:04d}beef-{name}"}
        t.pop("predictions")
        for r in t["annotations"][0]["result"]:
            if not r["id"].startswith("label-"):
                r["id"] = f"r{abs(hash(r['id'])) % 10**8}"
    path = tmp_path / "ls.json"
    path.write_text(json.dumps(tasks))
    assert main(["decide", "--run", str(info.run_dir), "--decisions", str(path)]) == 0
    decs = decisions(info)
    by_object = {d.candidate_id: d for d in decs if d.candidate_id}
    assert by_object[plan["delete"]].decision == "rejected"
    assert by_object[plan["edit"]].category_id == plan["edit_class"]
    assert by_object[plan["edit"]].box[0] == pytest.approx(plan["edit_box"][0], abs=0.01)
    assert len(by_object) == sum(len(v) for v in objs.values())
    assert [d.box for d in decs if d.candidate_id is None] == [pytest.approx(DRAWN)]


def test_an_image_missing_from_the_file_decides_nothing(info, tmp_path):
    objs = objects(info)
    plan = plan_for(objs)
    data = reviewed_file(info, tmp_path, "coco", plan)
    data["images"] = [im for im in data["images"] if im["id"] == 1]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == 1]
    path = tmp_path / "one.json"
    path.write_text(json.dumps(data))
    assert main(["decide", "--run", str(info.run_dir), "--decisions", str(path)]) == 0
    assert {d.image_id for d in decisions(info)} == {1}
    run = review.open_run(info.run_dir)
    try:
        assert all(x.state == "pending" for x in review.image_items(run, 200, 2))
    finally:
        run.close()


def test_an_image_whose_boxes_were_all_deleted_rejects_them_all(info, tmp_path):
    objs = objects(info)
    data = json.loads(write_queue(info, tmp_path, "cvat").read_text())
    data["annotations"] = [a for a in data["annotations"]
                           if a["image_id"] != 2 or a["attributes"]["comining_source"] == "label"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    assert main(["decide", "--run", str(info.run_dir), "--decisions", str(path)]) == 0
    got = {d.candidate_id: d.decision for d in decisions(info)}
    assert got == {**{x.id: "accepted" for x in objs[1]}, **{x.id: "rejected" for x in objs[2]}}


def test_a_native_entry_that_names_its_object_decides_it_wherever_its_box_went(info, tmp_path):
    item = objects(info)[1][0]
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"image_id": 1, "bbox": DRAWN, "category_id": 1,
                                 "decision": "accepted", "object_id": item.id}]))
    assert main(["decide", "--run", str(info.run_dir), "--decisions", str(path)]) == 0
    (d,) = decisions(info)
    assert d.candidate_id == item.id and d.box == pytest.approx(DRAWN)


@pytest.mark.parametrize("case,needle", [
    ("foreign coco", "none of its images is an image of this run"),
    ("foreign class", "class 'zebra' is not a class of this run"),
    ("labelstudio foreign label", "label 'zebra' is not a class of this run"),
    ("labelstudio foreign image", "is not an image of this run"),
    ("unknown object", "object 987654 is not an object of image 1"),
    ("the run's own annotations", "keeps none of the 8 pending objects"),
])
def test_a_foreign_file_is_one_line_and_changes_nothing(info, tmp_path, case, needle):
    plan = plan_for(objects(info))
    if case == "foreign coco":
        data = reviewed_file(info, tmp_path, "cvat", plan)
        for im in data["images"]:
            im["file_name"] = "elsewhere/IMG_" + im["file_name"]
    elif case == "foreign class":
        data = reviewed_file(info, tmp_path, "cvat", plan)
        data["categories"][0]["name"] = "zebra"
    elif case.startswith("labelstudio"):
        data = reviewed_file(info, tmp_path, "labelstudio", plan)
        if case.endswith("label"):
            data[0]["annotations"][0]["result"][-1]["value"]["rectanglelabels"] = ["zebra"]
        else:
            data[1]["data"] = {"image": "/data/upload/3/cat.jpg"}
    elif case == "the run's own annotations":    # would reject every pending object
        data = json.loads(info.ann_path.read_text())
    else:
        data = [{"image_id": 1, "bbox": DRAWN, "category_id": 1, "decision": "accepted"},
                {"image_id": 1, "bbox": DRAWN, "category_id": 1, "decision": "accepted",
                 "object_id": 987654}]
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps(data))
    proc = run_cli("decide", "--run", info.run_dir, "--decisions", path)
    assert_clean_error(proc, needle, path.name)
    assert decisions(info) == []


@pytest.mark.parametrize("tool", ["labelstudio", "cvat"])
def test_moving_an_original_label_in_the_tool_changes_nothing(info, tmp_path, tool):
    """Original labels travel for the annotator to see; whatever happens to them there,
    originals never change (and a moved one is no new box)."""
    objs = objects(info)
    data = reviewed_file(info, tmp_path, tool, plan_for(objs))
    if tool == "labelstudio":
        for t in data:
            for r in t["annotations"][0]["result"]:
                if r["id"].startswith("label-"):
                    r["value"]["x"] += 10.0       # 48 px: far from where it was
    else:
        for a in data["annotations"]:
            if a["attributes"]["comining_source"] == "label":
                a["bbox"][0] += 48.0
    path = tmp_path / "moved.json"
    path.write_text(json.dumps(data))
    assert main(["decide", "--run", str(info.run_dir), "--decisions", str(path)]) == 0
    manual = [d.box for d in decisions(info) if d.candidate_id is None]
    assert manual == [pytest.approx(DRAWN)]


def test_a_box_that_names_its_object_keeps_it_however_far_it_moved(info, tmp_path):
    objs = objects(info)
    plan = plan_for(objs)
    x, y, w, h = objs[1][0].box
    plan["edit_box"] = [x - 60 if x > 100 else x + 60, y, w, h]      # IoU with its old box < 0.5
    path = tmp_path / "ls.json"
    tasks = json.loads(write_queue(info, tmp_path, "labelstudio").read_text())
    path.write_text(json.dumps(labelstudio_export(tasks, plan)))
    assert main(["decide", "--run", str(info.run_dir), "--decisions", str(path)]) == 0
    decs = decisions(info)
    moved = [d for d in decs if d.candidate_id == plan["edit"]]
    assert [(d.decision, d.box[0]) for d in moved] == [("accepted", pytest.approx(plan["edit_box"][0], abs=0.011))]
    assert [d.box for d in decs if d.candidate_id is None] == [pytest.approx(DRAWN)]


def test_a_rotated_labelstudio_box_comes_back_as_the_box_around_it():
    """Label Studio turns a rectangle about its top-left corner, clockwise in degrees."""
    from comining.formats import RunData, read_labelstudio

    run = RunData({1: ("a.png", 200, 100)}, {1: "disc"})
    region = {"id": "r1", "type": "rectanglelabels", "original_width": 200, "original_height": 100,
              "value": {"x": 50.0, "y": 10.0, "width": 10.0, "height": 20.0, "rotation": 90,
                        "rectanglelabels": ["disc"]}}
    task = {"data": {"image": "/data/local-files/?d=a.png"},
            "annotations": [{"result": [region], "was_cancelled": False}]}
    (box,) = read_labelstudio([task], run).images[1]
    # 20 px wide, 20 px high at (100, 10), turned 90 degrees: x from 100 - 20 to 100
    assert box.box == pytest.approx((80.0, 10.0, 20.0, 20.0))
    assert box.category_id == 1 and box.object_id is None
