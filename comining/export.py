"""Export: the run's input annotation file enlarged by the accepted boxes.

`collect(run, ...)` gathers the boxes to add and the rejected candidates; the pure
`build_enlarged(data, accepted)` makes the output dict; `export_run(run, out, ...)`
writes it (atomically, never over the run's inputs) with a sidecar
`OUT.rejected.json` listing the rejected candidates.

Modes (`accept`):

reviewed  the human decisions only (default): every standing accepted decision, with
          its edited class and box.
agreed    the human decisions, plus every still undecided candidate both views agree
          on at `checkpoint` with score >= `min_score` (automatic, for scripts).
all       the same with every undecided candidate of `checkpoint`, agreed or not.

`min_score` only filters the automatic accepts; a human decision is never overridden.
Duplicates (same image, IoU >= 0.5 whatever the classes: across views, checkpoints, or
between a human and an automatic accept) are merged greedily, human decisions first,
then by score: one object gives one box.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from comining import review, store
from comining.errors import InputError
from comining.fileio import atomic_write_many, json_bytes, read_json, refuse_overwrite, same_file
from comining.util import paused_gc

MODES = ("reviewed", "agreed", "all")


def _record(image_id, category_id, box, *, score, view, checkpoint, decision, reviewed_at,
            candidate_id, human: bool, round: int = 0) -> dict:
    return {"image_id": int(image_id), "category_id": int(category_id),
            "bbox": list(map(float, box)), "score": score, "view": view,
            "checkpoint": checkpoint, "decision": decision, "reviewed_at": reviewed_at,
            "candidate_id": candidate_id, "human": human, "round": round}


def _round_of(checkpoint_round: dict[int, int], round_starts: list[tuple[str, int]],
              checkpoint, decided_at) -> int:
    """The loop round a box comes from: its checkpoint's; a box drawn by hand, the round
    running (or last started) when it was drawn."""
    if checkpoint is not None:
        return checkpoint_round.get(checkpoint, 0)
    return max((n for started, n in round_starts if decided_at and started <= decided_at), default=0)


def collect(run: review.Run, *, accept: str = "reviewed", min_score: float = 0.0,
            checkpoint: str | int | None = "last") -> tuple[list[dict], list[dict]]:
    """(accepted records, rejected records) of the run, duplicates not yet merged."""
    if accept not in MODES:
        raise InputError(None, f"--accept must be one of {', '.join(MODES)}, got {accept!r}")
    min_score = float(min_score)
    if not 0.0 <= min_score <= 1.0:
        raise InputError(None, f"--min-score must be within [0, 1], got {min_score}")
    conn = run.conn
    accepted, rejected = [], []
    checkpoint_round = store.checkpoint_rounds(conn)
    round_starts = [(r["started_at"], r["round"]) for r in store.rounds(conn)]
    for d in review.effective_decisions(conn):
        if d.decision == "accepted":
            accepted.append(_record(
                d.image_id, d.category_id, d.box, score=d.cand_score, view=d.view,
                checkpoint=d.cand_checkpoint, decision="edited" if d.edited else "accepted",
                reviewed_at=d.decided_at, candidate_id=d.candidate_id, human=True,
                round=_round_of(checkpoint_round, round_starts, d.cand_checkpoint, d.decided_at)))
        else:
            rejected.append({"candidate_id": d.candidate_id, "image_id": d.image_id,
                             "category_id": d.category_id, "bbox": [float(v) for v in d.box],
                             "score": d.cand_score, "view": d.view, "checkpoint": d.cand_checkpoint,
                             "decided_at": d.decided_at, "client": d.client})
    if accept != "reviewed":
        it = store.resolve_checkpoint(conn, "last" if checkpoint is None else checkpoint, run.store_path)
        views = ("both",) if accept == "agreed" else ()
        f = review.Filters(views=views, score_min=min_score, score_max=1.0, states=("pending",))
        for oid, image_id, category_id, box, score, view in review.pending_objects(run, it, f):
            accepted.append(_record(
                image_id, category_id, box, score=score, view=view, checkpoint=it,
                decision="auto", reviewed_at=None, candidate_id=oid, human=False,
                round=checkpoint_round.get(it, 0)))
    return accepted, rejected


def merge_duplicates(records: list[dict], iou_thresh: float = review.IOU_SAME) -> list[dict]:
    """One box per object: greedy, human decisions first then by score; a record is
    dropped when a kept one of its image (any class) overlaps it with IoU >= iou_thresh."""
    order = sorted(records, key=lambda r: (not r["human"], -(r["score"] if r["score"] is not None
                                                            else float("inf")),
                                           r["reviewed_at"] or "", r["candidate_id"] or 0))
    per_image: dict[int, list[dict]] = {}
    for r in order:
        per_image.setdefault(r["image_id"], []).append(r)
    keep = set()
    for recs in per_image.values():
        if len(recs) == 1:
            keep.add(id(recs[0]))
            continue
        iou = review.iou_matrix([r["bbox"] for r in recs], [r["bbox"] for r in recs])
        kept: list[int] = []
        for i in range(len(recs)):     # one IoU matrix an image; the greedy walk in order
            if not kept or iou[i, kept].max() < iou_thresh:
                kept.append(i)
        keep.update(id(recs[i]) for i in kept)
    return [r for r in order if id(r) in keep]


def build_enlarged(data: dict, accepted: list[dict]) -> dict:
    """The input COCO dict with every original annotation unchanged and the accepted
    records appended as new annotations (fresh ids from max id + 1, `area`,
    `iscrowd: 0`, `segmentation: []`, provenance under 'comining' and as flat
`attributes`, which CVAT and Datumaro keep). Boxes are clipped to their image.
    `data` is not modified. Records must already be merged (see merge_duplicates)."""
    images = {im["id"]: im for im in data.get("images", [])}
    categories = {c["id"] for c in data.get("categories", [])}
    bad = [r for r in accepted if r["image_id"] not in images or r["category_id"] not in categories]
    if bad:
        r = bad[0]
        raise InputError(None, f"{len(bad)} accepted boxes name an image or class that is not in "
                               f"the annotation file (first: image {r['image_id']}, class "
                               f"{r['category_id']}): does the run's store belong to this file?")
    out = {k: v for k, v in data.items()}
    originals = list(data.get("annotations", []))
    next_id = max((a["id"] for a in originals if isinstance(a.get("id"), int)), default=0) + 1
    records = sorted(accepted, key=lambda r: (r["image_id"], r["category_id"], r["bbox"]))
    huge = float(1 << 30)   # an image without a size clips nothing
    sizes = [(images[r["image_id"]].get("width", huge), images[r["image_id"]].get("height", huge))
             for r in records]
    boxes, ok = review.clean_boxes([r["bbox"] for r in records],
                                   [w for w, _ in sizes], [h for _, h in sizes])
    # numpy rounding: Python's round(x, n) costs microseconds a call at 100k boxes
    areas = (boxes[:, 2] * boxes[:, 3]).round(2).tolist()
    scores = np.array([np.nan if r["score"] is None else r["score"] for r in records],
                      np.float64).round(4).tolist()
    new = []
    for r, box, area, score, usable in zip(records, boxes.tolist(), areas, scores, ok.tolist()):
        if not usable:
            continue
        provenance = {"score": None if score != score else score,
                      "view": r["view"], "checkpoint": r["checkpoint"],
                      "decision": r["decision"], "reviewed_at": r["reviewed_at"],
                      "candidate_id": r["candidate_id"], "round": r.get("round", 0)}
        new.append({
            "id": next_id, "image_id": r["image_id"], "category_id": r["category_id"],
            "bbox": box, "area": area, "iscrowd": 0, "segmentation": [],
            "attributes": _flat_attributes(provenance), "comining": provenance})
        next_id += 1
    out["annotations"] = originals + new
    return out


# Provenance as flat `attributes` too: Datumaro (and so CVAT's COCO import) keeps an
# annotation's `attributes` dict of scalars and drops other keys such as "comining".
ATTRIBUTE_KEYS = ("score", "view", "checkpoint", "decision", "round")


def _flat_attributes(provenance: dict) -> dict:
    """The provenance as CVAT/Datumaro attributes: scalars, unknown values left out."""
    return {f"comining_{k}": provenance[k] for k in ATTRIBUTE_KEYS if provenance[k] is not None}


def sidecar_path(out) -> Path:
    out = Path(out)
    stem = out.name[:-5] if out.name.lower().endswith(".json") else out.name
    return out.with_name(stem + ".rejected.json")


def export_run(run: review.Run, out, *, accept: str = "reviewed", min_score: float = 0.0,
               checkpoint: str | int | None = "last") -> dict:
    """Write OUT (the enlarged COCO json) and OUT.rejected.json; returns a summary."""
    out = Path(out)
    side = sidecar_path(out)
    if run.ann_path is None:
        raise InputError(run.store_path, "the run does not record its input annotation file")
    inputs = [run.ann_path, run.hidden_path, run.store_path, run.dir / "config.json"]
    refuse_overwrite(out, *inputs)
    refuse_overwrite(side, *inputs)
    if out.resolve() == side.resolve() or same_file(out, side):
        raise InputError(out, "the output and its sidecar would be the same file")
    if not out.parent.is_dir():
        raise InputError(out, f"output folder {out.parent} does not exist")
    from comining.coco import validate_coco_dict
    with paused_gc():
        data = read_json(run.ann_path)
        validate_coco_dict(data, run.ann_path)
        with store.snapshot(run.conn):   # decisions and candidates as of one moment
            accepted, rejected = collect(run, accept=accept, min_score=min_score,
                                         checkpoint=checkpoint)
        merged = merge_duplicates(accepted)
        enlarged = build_enlarged(data, merged)
    n_new = len(enlarged["annotations"]) - len(data.get("annotations", []))
    # Both files complete before either replaces anything (a full disk or a kill leaves
    # the old pair); the output renamed last, so a new output always has its sidecar.
    atomic_write_many([
        (side, json_bytes({
            "comining": "rejected candidates", "source": str(run.ann_path), "export": str(out),
            "accept": accept,
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "rejected": rejected})),
        (out, json_bytes(enlarged))])
    added = enlarged["annotations"][len(enlarged["annotations"]) - n_new:]
    auto = sum(1 for a in added if a["comining"]["decision"] == "auto")
    return {"out": str(out), "sidecar": str(side), "accept": accept, "added": n_new,
            "human": n_new - auto, "auto": auto,
            "merged_duplicates": len(accepted) - len(merged),
            "dropped_empty": len(merged) - n_new, "rejected": len(rejected),
            "original": len(data.get("annotations", []))}


def summary_line(s: dict) -> str:
    dropped = s.get("dropped_empty", 0)
    empty = f"; {dropped} empty once clipped to the image, dropped" if dropped else ""
    return (f"added {s['added']} boxes ({s['human']} reviewed, {s['auto']} automatic; "
            f"{s['merged_duplicates']} duplicates merged{empty}) to the {s['original']} original "
            f"annotations -> {s['out']}; {s['rejected']} rejected listed in {s['sidecar']}")
