"""The review queue written for another tool (`comining candidates --format`); see
`comining.formats`."""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from comining.formats.common import CVAT_ATTRIBUTES, LS_LABEL, LS_OBJECT, RunData


def _images(rows: list[dict], run: RunData) -> list[dict]:
    ids = sorted({r["image_id"] for r in rows})
    return [{"id": i, "file_name": run.images[i][0], "width": run.images[i][1],
             "height": run.images[i][2]} for i in ids]


def _categories(run: RunData) -> list[dict]:
    return [{"id": c, "name": name, "supercategory": ""} for c, name in sorted(run.categories.items())]


def _views(row: dict) -> str:
    return "+".join(row["views"])


def _mined_attributes(row: dict) -> dict:
    return {"comining_source": "mined", "comining_object": row["object_id"],
            "comining_score": row["score"], "comining_views": _views(row),
            "comining_checkpoint": row["checkpoint"]}


def _box_annotation(ann_id: int, image_id: int, category_id: int, bbox) -> dict:
    x, y, w, h = (float(v) for v in bbox)
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": [x, y, w, h],
            "area": round(w * h, 2), "iscrowd": 0, "segmentation": []}


def _mined_annotations(rows: list[dict], first_id: int = 1) -> list[dict]:
    out = []
    for k, r in enumerate(rows):
        a = _box_annotation(first_id + k, r["image_id"], r["category_id"], r["bbox"])
        a["score"] = r["score"]
        a["attributes"] = _mined_attributes(r)
        out.append(a)
    return out


def _coco(rows: list[dict], run: RunData, annotations: list[dict], what: str) -> dict:
    return {"info": {"description": f"comining: {what}"}, "licenses": [],
            "images": _images(rows, run), "categories": _categories(run),
            "annotations": annotations}


def coco_mined(rows: list[dict], run: RunData) -> dict:
    """A COCO detection json of the mined objects alone (images: those with one)."""
    return _coco(rows, run, _mined_annotations(rows), "mined objects")


def _original_annotations(rows: list[dict], run: RunData, *, tagged: bool) -> list[dict]:
    out = []
    for image in _images(rows, run):
        for a in run.originals(image["id"]):
            b = _box_annotation(len(out) + 1, image["id"], a["category_id"], a["bbox"])
            if tagged:
                b["attributes"] = {"comining_source": "label"}
            out.append(b)
    return out


def cvat_task(rows: list[dict], run: RunData) -> dict:
    """A COCO json for CVAT's "COCO 1.0" import: the original labels, then the mined
    objects, of the images with a mined object."""
    originals = _original_annotations(rows, run, tagged=True)
    return _coco(rows, run, originals + _mined_annotations(rows, len(originals) + 1),
                 "original labels and mined objects for review")


def cvat_labels(run: RunData) -> list[dict]:
    """The task's labels for CVAT's raw label editor, with the comining attributes."""
    return [{"name": name, "type": "rectangle", "attributes": [
        {"name": a, "mutable": False, "input_type": "text", "default_value": "", "values": [""]}
        for a in CVAT_ATTRIBUTES]} for _, name in sorted(run.categories.items())]


def fiftyone_dataset(rows: list[dict], run: RunData) -> tuple[dict, dict]:
    """(labels.json: the original labels, mined.json: the mined objects) over the same
    images, ids and categories."""
    return (_coco(rows, run, _original_annotations(rows, run, tagged=False), "original labels"),
            coco_mined(rows, run))


FIFTYONE_SCRIPT = '''\
"""Review comining's mined objects in FiftyOne.

python {script}   loads labels.json (field "ground_truth", the original labels) and
mined.json (field "mined": confidence = comining's score, attributes comining_object,
comining_views, comining_checkpoint) over the images of {images!r}, and opens the App.
Tag the wrong mined boxes with the label tag "reject" (select them, tag icon, "Labels").
When you close the App, the boxes tagged "reject" are deleted and the mined field is
written to reviewed.json beside this script:
    comining decide --run RUN --decisions reviewed.json
records the boxes kept as accepted and the deleted ones as rejected."""
import os

import fiftyone as fo

here = os.path.dirname(os.path.abspath(__file__))
images = {images!r}


def load(labels, field):
    return fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset, data_path=images,
                               labels_path=os.path.join(here, labels), label_field=field,
                               label_types="detections")


dataset = load("labels.json", "ground_truth")
dataset.merge_samples(load("mined.json", "mined"))      # the same images, by file path
if __name__ == "__main__":
    fo.launch_app(dataset).wait()
    dataset.delete_labels(tags="reject", fields="mined")
    dataset.export(labels_path=os.path.join(here, "reviewed.json"),
                   dataset_type=fo.types.COCODetectionDataset, label_field="mined")
    print("wrote", os.path.join(here, "reviewed.json"))
'''


def fiftyone_script(images_dir) -> str:
    return FIFTYONE_SCRIPT.format(script="load.py", images=str(images_dir))


def default_url_prefix(images_dir) -> str:
    """Label Studio's local files, served with LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set
    to the image folder's parent."""
    name = PurePosixPath(str(images_dir).replace("\\", "/")).name if images_dir else ""
    return "/data/local-files/?d=" + (quote(name) + "/" if name else "")


def _ls_region(region_id: str, bbox, label: str, width: int, height: int, *,
               score: float | None = None, readonly: bool = False) -> dict:
    x, y, w, h = (float(v) for v in bbox)
    out = {"id": region_id, "type": "rectanglelabels", "from_name": "label", "to_name": "image",
           "original_width": width, "original_height": height, "image_rotation": 0,
           "value": {"x": 100.0 * x / width, "y": 100.0 * y / height,
                     "width": 100.0 * w / width, "height": 100.0 * h / height,
                     "rotation": 0, "rectanglelabels": [label]}}
    if score is not None:
        out["score"] = score
    if readonly:
        out["readonly"] = True
    return out


def labelstudio_tasks(rows: list[dict], run: RunData, url_prefix: str) -> list[dict]:
    """One Label Studio task an image (queue order): the mined objects as one
    prediction, the original labels as read-only regions of it."""
    by_image: dict[int, list[dict]] = {}
    for r in rows:
        by_image.setdefault(r["image_id"], []).append(r)
    tasks = []
    for image_id, rs in by_image.items():
        file_name, width, height = run.images[image_id]
        result = [_ls_region(f"{LS_LABEL}{a['id']}", a["bbox"],
                             run.categories.get(a["category_id"], str(a["category_id"])),
                             width, height, readonly=True) for a in run.originals(image_id)]
        result += [_ls_region(f"{LS_OBJECT}{r['object_id']}", r["bbox"],
                              run.categories[r["category_id"]], width, height, score=r["score"])
                   for r in rs]
        tasks.append({
            "data": {"image": url_prefix + quote(file_name), "comining_image_id": image_id,
                     "comining_objects": [r["object_id"] for r in rs]},
            "predictions": [{"model_version": f"comining-{rs[0]['checkpoint']}",
                             "score": max(r["score"] for r in rs), "result": result}]})
    return tasks


def labelstudio_config(run: RunData) -> str:
    """The labeling config of the project (Settings > Labeling Interface > Code)."""
    labels = "\n".join(f"    <Label value={quoteattr(name)}/>" for _, name in sorted(run.categories.items()))
    return ('<View>\n  <Image name="image" value="$image"/>\n'
            '  <RectangleLabels name="label" toName="image">\n'
            f"{labels}\n  </RectangleLabels>\n</View>\n")
