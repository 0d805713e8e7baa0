"""A tool's export after review read back as decisions (`comining decide`); see
`comining.formats`."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import unquote

import numpy as np

from comining.boxes import iou_matrix
from comining.errors import InputError, summarize_problems
from comining.formats.common import IOU_ORIGINAL, IOU_SAME, LS_LABEL, LS_OBJECT, RunData, run_data

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
