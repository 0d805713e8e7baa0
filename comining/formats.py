"""The review queue for other annotation tools, and what they export after review
brought back as decisions.

Out (`comining candidates --format ...`), pure functions of the queue's rows (see
`comining.cli.candidates.export_candidates(..., ids=True)`) and a `RunData`:

coco         `coco_mined`: a COCO detection json of the mined objects (with `score`).
cvat         `cvat_task`: a COCO json CVAT imports as a task's annotations ("COCO 1.0"):
             the images' original labels (attribute comining_source "label": CVAT
             replaces a task's annotations on import, so they come along for the
             annotator to see) and the mined objects (comining_source "mined",
             comining_object its id, comining_score, comining_views,
             comining_checkpoint). `cvat_labels`: the task's labels with those
             attributes (CVAT keeps only declared attributes).
fiftyone     `fiftyone_dataset`: labels.json (the original labels) and mined.json (the
             mined objects, `score` and the comining_* attributes) over the same images.
labelstudio  `labelstudio_tasks`: one task an image, the mined objects as a prediction
             (rectanglelabels in percent, region id "comining-<object id>", per-box
             score) with the original labels as read-only regions ("label-<id>");
             `labelstudio_config`: the labeling config the project needs.

In (`comining decide`): `detect` tells a file's kind from its shape; `read_labelstudio`
(a Label Studio JSON export) and `read_coco` (a COCO json: CVAT's or FiftyOne's export,
or --format coco/cvat edited) turn it into `Reviewed` boxes per image; `to_entries`
compares them with the objects that were sent out and returns the native decision
entries `comining.review.import_decisions` records:

- a box naming its object (LS region id / comining_object attribute), or else
  overlapping a sent object at IoU >= 0.5, keeps that object: accepted, with the box
  and class it has now;
- a sent object no box keeps was deleted: rejected;
- a box of no object was drawn by hand: a new (manual) annotation;
- an original label (comining_source "label", an LS "label-" region, or a box of the
  same class overlapping an original annotation at IoU >= 0.9) is ignored: originals
  never change.

"Sent out" means the objects of the images the file holds that are still pending at
the checkpoint (those missing a label; a Label Studio task lists its own). An image the
file does not hold decides nothing; a Label Studio task nobody annotated neither. A
deletion only rejects an object still pending; a box naming an object decided
meanwhile (in the app) records the file's decision on it, the latest standing. A file
bearing no comining mark that would reject every pending object of its images (the
run's own annotation file, its export) is refused.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from urllib.parse import quote, unquote
from xml.sax.saxutils import quoteattr

import numpy as np

from comining.boxes import iou_matrix
from comining.errors import InputError, summarize_problems

FORMATS = ("json", "coco", "cvat", "fiftyone", "labelstudio")
CVAT_ATTRIBUTES = ("comining_source", "comining_object", "comining_score", "comining_views",
                   "comining_checkpoint")
LS_OBJECT, LS_LABEL = "comining-", "label-"      # Label Studio region ids
IOU_SAME = 0.5            # a box keeps the sent object it overlaps this much (as the queue)
IOU_ORIGINAL = 0.9        # a box of the same class this close to an original label is it
KIND_NAMES = {"labelstudio": "Label Studio export", "coco": "COCO file", "native": "decision list"}


@dataclass(frozen=True)
class RunData:
    """What the writers and readers need of a run."""

    images: dict[int, tuple[str, int, int]]            # id -> (file_name, width, height)
    categories: dict[int, str]                         # id -> name
    annotations: dict[int, list[dict]] = field(default_factory=dict)   # image id -> originals

    def originals(self, image_id: int) -> list[dict]:
        return self.annotations.get(image_id, [])


# ----------------------------------------------------------------------------- out


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


# ----------------------------------------------------------------------------- in


@dataclass
class Box:
    """A box of a reviewed file, in pixels."""

    box: tuple[float, float, float, float]
    category_id: int
    object_id: int | None = None        # the object it says it is
    source: str | None = None           # "label" for an original label, when it says


@dataclass
class Reviewed:
    kind: str                                             # "labelstudio" | "coco"
    images: dict[int, list[Box]]                          # every image the file decides
    checkpoints: set = field(default_factory=set)         # the checkpoints it names
    sent: dict[int, list[int]] = field(default_factory=dict)   # image -> objects sent (LS)
    marked: bool = False         # it bears comining's marks (ids, sources): it came from us


def detect(data) -> str:
    """'labelstudio', 'coco' or 'native' (the json list of decisions; also anything
    else, which the native check then rejects with its message)."""
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        return "coco"
    if isinstance(data, list) and data and all(isinstance(t, dict) for t in data) \
            and all("data" in t and ("annotations" in t or "predictions" in t) for t in data):
        return "labelstudio"
    return "native"


class _FileNames:
    """The run's images by file name: exactly, by a path that ends with it (an absolute
    path, another folder), or by a unique base name (Label Studio's uploads prefix it
    with 8 hex digits and a dash)."""

    def __init__(self, run: RunData):
        self.exact = {fn.replace("\\", "/"): i for i, (fn, _, _) in run.images.items()}
        bases = defaultdict(list)
        for name, i in self.exact.items():
            bases[name.rsplit("/", 1)[-1]].append(i)
        self.base = {b: ids[0] for b, ids in bases.items() if len(ids) == 1}

    def find(self, name) -> int | None:
        if not isinstance(name, str) or not name:
            return None
        name = name.replace("\\", "/")
        parts = name.split("/")
        for k in range(len(parts)):
            hit = self.exact.get("/".join(parts[k:]))
            if hit is not None:
                return hit
        base = parts[-1]
        if base in self.base:
            return self.base[base]
        m = re.match(r"^[0-9a-f]{8}-(.+)$", base)
        return self.base.get(m.group(1)) if m else None


def _url_file(url) -> str | None:
    """The file a Label Studio image URL names."""
    if not isinstance(url, str):
        return None
    m = re.search(r"[?&]d=([^&]*)", url)
    path = m.group(1) if m else url.split("?", 1)[0]
    return unquote(path)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _as_int(v) -> int | None:
    """An id written as an int or as text (CVAT writes attributes as text)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
        return int(v)
    return None


def _names(run: RunData) -> dict[str, int]:
    out: dict[str, int] = {}
    for c, name in sorted(run.categories.items()):
        out.setdefault(name, c)
    return out


def _envelope(x, y, w, h, degrees) -> tuple[float, float, float, float]:
    """The axis-aligned box around a rectangle turned `degrees` clockwise about (x, y)
    (Label Studio's rotation)."""
    if not degrees:
        return x, y, w, h
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    xs = [x, x + w * c, x + w * c - h * s, x - h * s]
    ys = [y, y + w * s, y + w * s + h * c, y + h * c]
    return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


def _latest(annotations) -> dict | None:
    """A task's latest annotation that was not cancelled (skipped)."""
    done = [(str(a.get("updated_at") or a.get("created_at") or ""), k, a)
            for k, a in enumerate(annotations or []) if isinstance(a, dict)
            and not a.get("was_cancelled")]
    return max(done, key=lambda t: (t[0], t[1]))[2] if done else None


def read_labelstudio(tasks: list, run: RunData, path=None) -> Reviewed:
    """The boxes of each task's latest non-cancelled annotation (Label Studio's JSON
    export). Tasks nobody annotated decide nothing."""
    files, names = _FileNames(run), _names(run)
    out = Reviewed("labelstudio", {})
    problems: list[str] = []
    for k, task in enumerate(tasks):
        data = task.get("data")
        if not isinstance(data, dict):
            problems.append(f"task {k} has no data")
            continue
        image_id = data.get("comining_image_id")
        if not (isinstance(image_id, int) and image_id in run.images):
            url = data.get("image") or next((v for v in data.values() if isinstance(v, str)), None)
            image_id = files.find(_url_file(url))
        if image_id is None:
            problems.append(f"task {k}: image {data.get('image')!r} is not an image of this run")
            continue
        for p in task.get("predictions") or []:
            m = re.fullmatch(r"comining-(\d+)", str(p.get("model_version", "")) if isinstance(p, dict) else "")
            if m:
                out.checkpoints.add(int(m.group(1)))
        sent = data.get("comining_objects")
        if isinstance(sent, list) and all(_as_int(s) is not None for s in sent):
            out.sent[image_id] = [_as_int(s) for s in sent]
            out.marked = True
        annotation = _latest(task.get("annotations"))
        if annotation is None:
            continue
        boxes = out.images.setdefault(image_id, [])
        _, width, height = run.images[image_id]
        for j, r in enumerate(annotation.get("result") or []):
            if not isinstance(r, dict) or r.get("type") != "rectanglelabels":
                continue
            v = r.get("value") or {}
            labels = v.get("rectanglelabels")
            if not (isinstance(labels, list) and labels and all(
                    _number(v.get(key)) for key in ("x", "y", "width", "height"))):
                problems.append(f"task {k} region {j}: not a labelled rectangle in percent")
                continue
            if labels[0] not in names:
                problems.append(f"task {k} region {j}: label {labels[0]!r} is not a class of "
                                f"this run")
                continue
            w_img = r.get("original_width") if _number(r.get("original_width")) else width
            h_img = r.get("original_height") if _number(r.get("original_height")) else height
            box = _envelope(v["x"] * w_img / 100.0, v["y"] * h_img / 100.0,
                            v["width"] * w_img / 100.0, v["height"] * h_img / 100.0,
                            v.get("rotation") if _number(v.get("rotation")) else 0)
            rid = str(r.get("id") or "")
            object_id = _as_int(rid[len(LS_OBJECT):]) if rid.startswith(LS_OBJECT) else None
            boxes.append(Box(box, names[labels[0]], object_id,
                             "label" if rid.startswith(LS_LABEL) else None))
            out.marked |= object_id is not None
    if problems:
        raise InputError(path, f"not a Label Studio export of this run: "
                               f"{summarize_problems(problems)}; nothing was recorded")
    return out


def _attribute(a: dict, key: str):
    attrs = a.get("attributes") if isinstance(a.get("attributes"), dict) else {}
    return attrs.get(key, a.get(key))   # FiftyOne's export puts them at the top level


def read_coco(data: dict, run: RunData, path=None) -> Reviewed:
    """The boxes of a COCO json (CVAT's or FiftyOne's export, or comining's own
    coco/cvat file edited): images matched by file name, classes by name."""
    files, names = _FileNames(run), _names(run)
    images, categories, annotations = data.get("images"), data.get("categories"), data.get("annotations")
    if not (isinstance(images, list) and isinstance(annotations, list)):
        raise InputError(path, "a COCO file has lists 'images' and 'annotations'")
    cats: dict = {}
    for c in categories if isinstance(categories, list) else []:
        if isinstance(c, dict) and "id" in c:
            cats[c["id"]] = c.get("name")
    out = Reviewed("coco", {})
    problems, to_run, foreign = [], {}, []
    for im in images:
        if not isinstance(im, dict) or "id" not in im:
            problems.append("an image without an id")
            continue
        image_id = files.find(im.get("file_name"))
        if image_id is None:
            foreign.append(str(im.get("file_name")))
            continue
        to_run[im["id"]] = image_id
        out.images.setdefault(image_id, [])
    if foreign:
        which = "none of its" if not to_run else f"{len(foreign)} of its {len(images)}"
        raise InputError(path, f"{which} images is an image of this run (file_name "
                               f"{foreign[0]!r}); nothing was recorded")
    for k, a in enumerate(annotations):
        if not isinstance(a, dict):
            problems.append(f"annotation {k} is not an object")
            continue
        if a.get("image_id") not in to_run:
            problems.append(f"annotation {k}: image {a.get('image_id')!r} is not in the file")
            continue
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
            problems.append(f"annotation {k}: bbox {bbox!r} is not 4 numbers [x, y, w, h]")
            continue
        cat = a.get("category_id")
        name = cats.get(cat) if cats else run.categories.get(cat)
        if name not in names:
            problems.append(f"annotation {k}: class {name if name is not None else cat!r} is "
                            f"not a class of this run")
            continue
        checkpoint = _as_int(_attribute(a, "comining_checkpoint"))
        if checkpoint is not None:
            out.checkpoints.add(checkpoint)
        source = _attribute(a, "comining_source")
        object_id = _as_int(_attribute(a, "comining_object"))
        out.marked |= object_id is not None or source in ("mined", "label")
        out.images[to_run[a["image_id"]]].append(Box(
            tuple(float(v) for v in bbox), names[name], object_id, str(source) if source else None))
    if problems:
        raise InputError(path, f"not a COCO file of this run: {summarize_problems(problems)}; "
                               f"nothing was recorded")
    return out


def _is_original(b: Box, originals: list[dict]) -> bool:
    if b.source == "label":
        return True
    same = [a["bbox"] for a in originals if a["category_id"] == b.category_id]
    return bool(same) and float(iou_matrix([b.box], same).max()) >= IOU_ORIGINAL


def _entry(image_id, box, category_id, decision, object_id=None) -> dict:
    e = {"image_id": image_id, "bbox": [float(v) for v in box], "category_id": int(category_id),
         "decision": decision}
    if object_id is not None:
        e["object_id"] = int(object_id)
    return e


def to_entries(reviewed: Reviewed, run: RunData, sent: dict[int, list[tuple]],
               known: dict[int, int]) -> list[dict]:
    """Native decision entries (rejections first, then accepted objects, then new boxes).

    sent:  image id -> [(object id, category_id, box)] the objects sent out for review;
    known: object id -> its image id, for every object of the checkpoint a box may name."""
    rejected, kept, drawn = [], [], []
    for image_id, boxes in reviewed.images.items():
        boxes = [b for b in boxes if not _is_original(b, run.originals(image_id))]
        objects = {oid: (cat, box) for oid, cat, box in sent.get(image_id, [])}
        claimed: dict[int, Box] = {}
        loose = []
        for b in boxes:   # the boxes that say which object they are
            if b.object_id is not None and known.get(b.object_id) == image_id \
                    and b.object_id not in claimed:
                claimed[b.object_id] = b
            else:
                loose.append(b)
        free = [oid for oid in objects if oid not in claimed]
        if loose and free:   # the others keep the sent object they overlap most
            iou = iou_matrix([b.box for b in loose], [objects[o][1] for o in free])
            for flat in np.argsort(-iou, axis=None, kind="stable"):
                i, j = divmod(int(flat), len(free))
                if iou[i, j] < IOU_SAME:
                    break
                if loose[i] is None or free[j] in claimed:
                    continue
                claimed[free[j]] = loose[i]
                loose[i] = None
        for oid, (cat, box) in objects.items():
            if oid not in claimed:
                rejected.append(_entry(image_id, box, cat, "rejected", oid))
        for oid, b in claimed.items():
            kept.append(_entry(image_id, b.box, b.category_id, "accepted", oid))
        drawn += [_entry(image_id, b.box, b.category_id, "accepted") for b in loose if b is not None]
    return rejected + kept + drawn


# ----------------------------------------------------------------------------- glue


def run_data(run) -> RunData:
    """A `comining.review.Run`'s images, classes and original annotations (with ids)."""
    from comining.fileio import read_json

    annotations: dict[int, list[dict]] = defaultdict(list)
    if run.ann_path is None:
        raise InputError(run.store_path, "the run does not record its input annotation file")
    data = read_json(run.ann_path)
    for k, a in enumerate(data.get("annotations", []) if isinstance(data, dict) else []):
        try:
            bbox = [float(v) for v in a["bbox"]]
            if len(bbox) == 4 and int(a["image_id"]) in run.images:
                annotations[int(a["image_id"])].append(
                    {"id": a.get("id", k), "category_id": int(a["category_id"]), "bbox": bbox})
        except (KeyError, TypeError, ValueError):
            continue
    return RunData(dict(run.images), dict(run.categories), dict(annotations))


def review_entries(run, data, kind: str, *, checkpoint=None, path=None) -> tuple[list[dict], int]:
    """(native entries, checkpoint) from a reviewed file of `kind` ('labelstudio' or
    'coco'): the objects sent out are read from the run's store."""
    from comining import store
    from comining.review.items import image_items

    info = run_data(run)
    reviewed = read_labelstudio(data, info, path) if kind == "labelstudio" else read_coco(data, info, path)
    if checkpoint is None:
        if len(reviewed.checkpoints) > 1:
            raise InputError(path, f"the file holds objects of checkpoints "
                                   f"{', '.join(map(str, sorted(reviewed.checkpoints)))}: pass "
                                   f"--checkpoint; nothing was recorded")
        checkpoint = next(iter(reviewed.checkpoints), "last")
    it = store.resolve_checkpoint(run.conn, checkpoint, path)
    sent, known = {}, {}
    for image_id in reviewed.images:
        items = image_items(run, it, image_id)
        known.update((x.id, image_id) for x in items)
        listed = reviewed.sent.get(image_id)
        sent[image_id] = [(x.id, x.category_id, x.box) for x in items if x.state == "pending" and (
            x.id in listed if listed is not None else x.on_label is None)]
    entries = to_entries(reviewed, info, sent, known)
    n_sent = sum(len(v) for v in sent.values())
    if n_sent and not reviewed.marked and not any(
            "object_id" in e and e["decision"] == "accepted" for e in entries):
        # an annotation file that is no review of ours (the run's own input, its export)
        # would reject every pending object of its images
        raise InputError(path, f"this file keeps none of the {n_sent} pending objects of its "
                               f"images and bears no comining_object / comining_source mark: it "
                               f"is not a review of `comining candidates --format ...` (to reject "
                               f"them all, use a decision list); nothing was recorded")
    return entries, it
