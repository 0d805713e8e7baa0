"""Decisions made elsewhere (a script, another tool, a simulated annotator) brought into
a run: each entry {image_id, bbox [x, y, w, h], category_id, decision} is matched to the
mined object it overlaps most (IoU >= 0.5, any class) at a checkpoint and recorded as a
decision on it, with the entry's class and box (an edit when they differ). An entry
that names its object ("object_id", the id `comining candidates --format ...` writes)
is recorded on that object wherever its box went. An accepted
box that matches no object is recorded as a manual annotation (a decision on no
candidate: export adds it), a rejected one as known background (no object there is
proposed again). Everything is validated before anything is written, then written in
one transaction: a bad file changes nothing."""

from __future__ import annotations

import math

import numpy as np

from comining import store
from comining.boxes import clean_box, iou_matrix
from comining.errors import InputError, summarize_problems
from comining.review.items import image_items
from comining.review.records import IOU_SAME
from comining.review.run import Run
from comining.review.writing import _insert, _stamp

FIELDS = ("image_id", "bbox", "category_id", "decision")


def check_entries(run: Run, entries, path=None) -> list[tuple[int, tuple, int, str, int | None]]:
    """[(image_id, clean xywh box, category_id, decision, object_id or None)], or one
    InputError naming the file and the bad entries."""
    if not isinstance(entries, list):
        raise InputError(path, "a decisions file is a json list of {image_id, bbox, category_id, "
                               f"decision}}, not a {type(entries).__name__}")
    out, problems = [], []
    for k, e in enumerate(entries):
        if not isinstance(e, dict) or any(f not in e for f in FIELDS):
            problems.append(f"entry {k} lacks one of {', '.join(FIELDS)}")
            continue
        image_id, cat, decision = e["image_id"], e["category_id"], e["decision"]
        object_id = e.get("object_id")
        if object_id is not None and (not isinstance(object_id, int) or isinstance(object_id, bool)):
            problems.append(f"entry {k}: object_id {object_id!r} is not an object id")
        elif decision not in ("accepted", "rejected"):
            problems.append(f"entry {k}: decision {decision!r} is not accepted or rejected")
        elif not isinstance(image_id, int) or isinstance(image_id, bool) or image_id not in run.images:
            problems.append(f"entry {k}: image {image_id!r} is not in this run")
        elif not isinstance(cat, int) or isinstance(cat, bool) or cat not in run.categories:
            problems.append(f"entry {k}: category {cat!r} is not in this run")
        else:
            _, width, height = run.images[image_id]
            bbox = e["bbox"]
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in bbox)):
                problems.append(f"entry {k}: bbox {bbox!r} is not 4 finite numbers [x, y, w, h]")
                continue
            try:
                box = clean_box(bbox, width, height)
            except InputError as exc:
                problems.append(f"entry {k}: {exc.problem}")
                continue
            out.append((image_id, box, cat, decision, object_id))
    if problems:
        raise InputError(path, f"{len(problems)} of {len(entries)} decisions are bad: "
                               f"{summarize_problems(problems)}; nothing was recorded")
    return out


def import_decisions(run: Run, entries, *, checkpoint: int | str = "last", client: str | None = None,
                     path=None) -> dict:
    """Record `entries` (see the module docstring) matched to the objects of `checkpoint`;
    returns the counts {accepted, rejected, matched, manual}."""
    clean = check_entries(run, entries, path)
    conn = run.conn
    it = store.resolve_checkpoint(conn, checkpoint, run.store_path)
    counts = {"accepted": 0, "rejected": 0, "matched": 0, "manual": 0}
    with store.transaction(conn):
        when = _stamp(conn, client)
        items_of: dict[int, list] = {}
        for k, (image_id, box, cat, decision, object_id) in enumerate(clean):
            items = items_of.setdefault(image_id, image_items(run, it, image_id, include_rejected=True))
            target = None
            if object_id is not None:
                target = next((x for x in items if x.id == object_id), None)
                if target is None:   # rolls the transaction back: nothing recorded
                    raise InputError(path, f"entry {k}: object {object_id} is not an object of "
                                           f"image {image_id} at checkpoint {it}; nothing was "
                                           f"recorded")
            elif items:
                iou = iou_matrix([box], [x.box for x in items])[0]
                j = int(np.argmax(iou))
                target = items[j] if iou[j] >= IOU_SAME else None
            if target is not None:
                _insert(conn, run, target.id, decision, client, when, cat, box)
                counts["matched"] += 1
            else:
                conn.execute(
                    "INSERT INTO decisions (candidate_id, image_id, decision, category_id, x, y, w,"
                    " h, decided_at, client) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (image_id, decision, cat, *map(float, box), when, client))
                counts["manual"] += decision == "accepted"
            counts[decision] += 1
    return counts
