"""Reading the store into what an annotator reviews: decisions, items grouped per image,
the queue, and the decisions that stand (for export)."""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict

import numpy as np

from comining.review.boxes import iou, iou_matrix
from comining.review.records import IOU_SAME, Decision, Filters, Item, QueueEntry
from comining.review.run import Run
from comining.util import paused_gc


# A decision links to a candidate (an object's id is its best candidate's id); what it was
# made on is that candidate's object: its fused box, best class, ranking score and views.
_DECISION_SQL = """
SELECT d.id, d.candidate_id, d.image_id, d.decision, d.category_id, d.x, d.y, d.w, d.h,
       d.decided_at, d.client,
       o.checkpoint AS c_checkpoint, o.category_id AS c_category, o.x AS c_x, o.y AS c_y,
       o.w AS c_w, o.h AS c_h, o.score AS c_score, o.view AS c_view,
       o.view = 'both' AS c_agreed, o.id AS c_object
FROM decisions d
LEFT JOIN candidates c ON c.id = d.candidate_id AND c.image_id = d.image_id
     AND (SELECT k.mined_at FROM checkpoints k WHERE k.iteration = c.checkpoint) <= d.decided_at
LEFT JOIN objects o ON o.id = c.object_id
WHERE d.undone = 0 {where}
ORDER BY d.id
"""


def _decision(r) -> Decision:
    linked = r["c_checkpoint"] is not None
    return Decision(
        id=r["id"], candidate_id=r["candidate_id"], image_id=r["image_id"], decision=r["decision"],
        category_id=r["category_id"], box=(r["x"], r["y"], r["w"], r["h"]),
        decided_at=r["decided_at"], client=r["client"],
        cand_checkpoint=r["c_checkpoint"] if linked else None,
        cand_category=r["c_category"] if linked else None,
        cand_box=(r["c_x"], r["c_y"], r["c_w"], r["c_h"]) if linked else None,
        cand_score=r["c_score"] if linked else None,
        cand_view=r["c_view"] if linked else None,
        cand_agreed=bool(r["c_agreed"]) if linked else False,
        object_id=r["c_object"] if linked else None)


def decisions(conn, image_id: int | None = None, *, ids=None) -> list[Decision]:
    """Non-undone decisions (of one image, or with these ids, or all), oldest first."""
    if ids is not None:
        ids = [int(i) for i in ids]
        rows = conn.execute(_DECISION_SQL.format(where=f"AND d.id IN ({','.join('?' * len(ids))})"),
                            ids) if ids else []
    elif image_id is None:
        rows = conn.execute(_DECISION_SQL.format(where=""))
    else:
        rows = conn.execute(_DECISION_SQL.format(where="AND d.image_id = ?"), (image_id,))
    return [_decision(r) for r in rows]


def _covering(item_boxes: np.ndarray, item_ids: list[int], decs: list[Decision],
              include_rejected: bool) -> list[Decision | None]:
    """For each item (box, object id), the latest decision that covers it (see the
    `comining.review` docstring: whatever the classes), vectorised over items x decisions."""
    n, m = len(item_boxes), len(decs)
    if m == 0:
        return [None] * n
    d_box = np.array([d.box for d in decs], np.float64)
    d_cand = np.array([d.cand_box if d.cand_box is not None else (0, 0, 0, 0) for d in decs],
                      np.float64)
    indirect = np.maximum(iou_matrix(item_boxes, d_box), iou_matrix(item_boxes, d_cand)) >= IOU_SAME
    if include_rejected:
        indirect &= np.array([d.decision != "rejected" for d in decs])[None]
    where = {oid: i for i, oid in enumerate(item_ids)}
    cover = indirect
    for j, d in enumerate(decs):
        if d.object_id in where:
            cover[where[d.object_id], j] = True
    order = np.array([d.id for d in decs])
    out = []
    for i in range(n):
        js = np.flatnonzero(cover[i])
        out.append(decs[int(js[np.argmax(order[js])])] if len(js) else None)
    return out


# Object columns as items are built from them: plain tuples (fetched without sqlite3.Row,
# building a checkpoint's items being a hot path of exports and of the first page load).
_OBJ_COLS = ("id, image_id, category_id, x, y, w, h, score, score_original, score_augmented, "
             "view, classes, on_label")


def _object_rows(conn, where: str, params) -> list[tuple]:
    cur = conn.cursor()
    cur.row_factory = None
    return cur.execute(f"SELECT {_OBJ_COLS} FROM objects WHERE {where}", params).fetchall()


def _member_ids(conn, where: str, params) -> dict[int, tuple[int, ...]]:
    """object id -> its candidates' ids, best score first."""
    cur = conn.cursor()
    cur.row_factory = None
    out: dict[int, list[int]] = defaultdict(list)
    for oid, cid in cur.execute(f"SELECT object_id, id FROM candidates WHERE {where} "
                                f"ORDER BY object_id, score DESC, id", params):
        out[oid].append(cid)
    return {k: tuple(v) for k, v in out.items()}


def object_items(rows, members: dict[int, tuple[int, ...]], checkpoint: int) -> list[Item]:
    """Items (all pending) from object rows (tuples in `_OBJ_COLS` order), best first."""
    items = []
    for oid, image_id, cat, x, y, w, h, score, s_o, s_a, view, classes, on_label in rows:
        items.append(Item(id=oid, image_id=image_id, checkpoint=checkpoint, category_id=cat,
                          box=(x, y, w, h), score=float(score), view=view,
                          agreement=float(min(s_o, s_a)), member_ids=members.get(oid, (oid,)),
                          classes=tuple((int(c), float(v)) for c, v in json.loads(classes)),
                          on_label=on_label))
    items.sort(key=lambda it: (-it.score, it.id))
    return items


def decide_items(items: list[Item], decs: list[Decision], *,
                 include_rejected: bool = False) -> list[Item]:
    """The pending `items` of one image with the state its decisions give them."""
    if not items or not decs:
        return items
    boxes = np.array([it.box for it in items], np.float64)
    covering = _covering(boxes, [it.id for it in items], decs, include_rejected)
    return [it if d is None else dataclasses.replace(it, state=d.decision, decision=d)
            for it, d in zip(items, covering)]


def image_items(run: Run, checkpoint: int, image_id: int, *,
                include_rejected: bool = False) -> list[Item]:
    """The items of one image at one checkpoint, best score first (the numbering shown)."""
    conn = run.conn
    where, params = "checkpoint = ? AND image_id = ?", (checkpoint, image_id)
    rows = _object_rows(conn, where, params)
    items = object_items(rows, _member_ids(conn, where, params) if rows else {}, checkpoint)
    return decide_items(items, decisions(conn, image_id) if rows else [],
                        include_rejected=include_rejected)


def grouped_items(conn, checkpoint: int) -> dict[int, list[Item]]:
    """{image_id: pending items} over every image with objects at this checkpoint. Their
    member_ids name only the best candidate (the object's id): all of them are read per
    image (`image_items`), which keeps a checkpoint of millions of objects quick to load."""
    per_image: dict[int, list] = defaultdict(list)
    for r in _object_rows(conn, "checkpoint = ?", (checkpoint,)):
        per_image[r[1]].append(r)
    return {im: object_items(rs, {}, checkpoint) for im, rs in per_image.items()}


def _checkpoint_groups(run: Run, checkpoint: int) -> dict[int, list[Item]]:
    """`grouped_items` of a checkpoint, cached in the run: its objects change only when
    the checkpoint is re-mined (a new `mined_at`). Decisions are always applied live."""
    row = run.conn.execute("SELECT mined_at FROM checkpoints WHERE iteration = ?",
                           (checkpoint,)).fetchone()
    mined_at = row["mined_at"] if row else None

    def compute():
        with paused_gc():
            return grouped_items(run.conn, checkpoint)

    return run.cached(("groups", checkpoint), mined_at, compute)


def all_items(run: Run, checkpoint: int, *, include_rejected: bool = False) -> dict[int, list[Item]]:
    """{image_id: items} over every image with candidates at this checkpoint."""
    grouped = _checkpoint_groups(run, checkpoint)
    decs: dict[int, list[Decision]] = defaultdict(list)
    for d in decisions(run.conn):
        if d.image_id in grouped:
            decs[d.image_id].append(d)
    if not decs:
        return dict(grouped)
    return {im: decide_items(items, decs[im], include_rejected=include_rejected) if im in decs
            else items for im, items in grouped.items()}


def _filter_sql(filters: Filters) -> tuple[str, list]:
    """SQL conditions on `objects` for the filters that do not depend on decisions."""
    where, params = [], []
    if filters.classes:
        where.append(f"category_id IN ({','.join('?' * len(filters.classes))})")
        params += [int(c) for c in filters.classes]
    if filters.views:
        where.append(f"view IN ({','.join('?' * len(filters.views))})")
        params += list(filters.views)
    where.append("score BETWEEN ? AND ?")
    params += [filters.score_min - 1e-9, filters.score_max + 1e-9]
    if filters.labelled != "all":
        where.append("on_label IS NULL" if filters.labelled == "missing" else "on_label IS NOT NULL")
    return " AND ".join(where), params


_DECIDED = "image_id IN (SELECT image_id FROM decisions WHERE undone = 0)"


def _decided_image_items(run: Run, checkpoint: int, *,
                         include_rejected: bool) -> dict[int, list[Item]]:
    """`image_items` of every image someone decided on, at one checkpoint, in one query."""
    decs: dict[int, list[Decision]] = defaultdict(list)
    for d in decisions(run.conn):
        decs[d.image_id].append(d)
    if not decs:
        return {}
    per_image: dict[int, list] = defaultdict(list)
    for r in _object_rows(run.conn, f"checkpoint = ? AND {_DECIDED}", (checkpoint,)):
        per_image[r[1]].append(r)
    return {im: decide_items(object_items(rs, {}, checkpoint), decs[im],
                             include_rejected=include_rejected) for im, rs in per_image.items()}


def queue(run: Run, checkpoint: int, filters: Filters = Filters()) -> list[QueueEntry]:
    """Images holding at least one item that passes the filters, best first by the
    filter's sort (an image ranks by its best matching item).

    Sorted by score, the images nobody decided on are ranked by SQL over the store's
    objects (all their items are pending), and only the decided images are built in
    Python: a checkpoint of millions of objects gives its queue in seconds."""
    if filters.sort != "score":
        return _queue_of(all_items(run, checkpoint, include_rejected=filters.include_rejected),
                         filters)
    conn = run.conn
    entries = []
    if not filters.states or "pending" in filters.states:
        where, params = _filter_sql(filters)
        # one pass over the checkpoint's objects: each image's items, matching items, and
        # best matching score
        rows = conn.execute(
            f"SELECT image_id, COUNT(*), SUM({where}), MAX(CASE WHEN {where} THEN score END) "
            f"FROM objects WHERE checkpoint = ? AND NOT {_DECIDED} GROUP BY image_id",
            [*params, *params, checkpoint]).fetchall()
        for image_id, n_items, n_match, top in rows:
            if n_match:
                entries.append(((-top, image_id), QueueEntry(image_id, n_match, n_items, top)))
    for _, entry in _queue_of(_decided_image_items(run, checkpoint,
                                                   include_rejected=filters.include_rejected),
                              filters, keyed=True):
        entries.append(((-entry.top_score, entry.image_id), entry))
    entries.sort(key=lambda e: e[0])
    return [e for _, e in entries]


def _queue_of(items_by_image: dict[int, list[Item]], filters: Filters, *, keyed: bool = False):
    """Queue entries of images from their items (see `queue`)."""
    entries = []
    for image_id, items in items_by_image.items():
        matched = [it for it in items if filters.match(it)]
        if not matched:
            continue
        best = min(matched, key=filters.key)
        entries.append((filters.key(best), QueueEntry(image_id, len(matched), len(items),
                                                       max(it.score for it in matched))))
    if keyed:
        return entries
    entries.sort(key=lambda e: e[0])
    return [e for _, e in entries]


def pending_objects(run: Run, checkpoint: int, filters: Filters) -> list[tuple]:
    """(id, image_id, category_id, box, score, view) of the pending items that pass the
    filters (their states ignored), best first: what an automatic export takes. Read in
    SQL for the images nobody decided on, without building their items."""
    where, params = _filter_sql(filters)
    out = [(r[0], r[1], r[2], (r[3], r[4], r[5], r[6]), r[7], r[10])
           for r in _object_rows(run.conn, f"checkpoint = ? AND {where} AND NOT {_DECIDED}",
                                 [checkpoint, *params])]
    pending = dataclasses.replace(filters, states=("pending",))
    for items in _decided_image_items(run, checkpoint,
                                      include_rejected=filters.include_rejected).values():
        out.extend((it.id, it.image_id, it.category_id, it.box, it.score, it.view)
                   for it in items if pending.match(it))
    out.sort(key=lambda t: (-t[4], t[1], t[0]))
    return out


def count_items(run: Run, checkpoint: int, filters: Filters) -> int:
    """len(queue_items(...)) without building the items of undecided images (SQL)."""
    conn = run.conn
    n = 0
    if not filters.states or "pending" in filters.states:
        where, params = _filter_sql(filters)
        n = conn.execute(f"SELECT COUNT(*) FROM objects WHERE checkpoint = ? AND {where} AND NOT "
                         f"{_DECIDED}", [checkpoint, *params]).fetchone()[0]
    items = _decided_image_items(run, checkpoint, include_rejected=filters.include_rejected)
    return n + sum(1 for its in items.values() for it in its if filters.match(it))


def queue_items(run: Run, checkpoint: int, filters: Filters = Filters()) -> list[Item]:
    """Every item that passes the filters over all images, best first (the fast mode)."""
    out = [it for items in all_items(run, checkpoint, include_rejected=filters.include_rejected).values()
           for it in items if filters.match(it)]
    out.sort(key=filters.key)
    return out


# ----------------------------------------------------------------------------- export support


def _same_object(a: Decision, b: Decision) -> bool:
    if a.linked and b.linked and a.candidate_id == b.candidate_id:
        return True
    return max(iou(p, q) for p in a.boxes for q in b.boxes) >= IOU_SAME


def effective_decisions(conn) -> list[Decision]:
    """The decisions that stand: of several about one object (same candidate, or IoU >=
    0.5 on one image, whatever the classes), only the latest. Oldest first."""
    per_image: dict[int, list[Decision]] = defaultdict(list)
    for d in decisions(conn):
        per_image[d.image_id].append(d)
    kept_all = []
    for decs in per_image.values():
        kept: list[Decision] = []
        for d in sorted(decs, key=lambda d: -d.id):
            if not any(_same_object(d, k) for k in kept):
                kept.append(d)
        kept_all.extend(kept)
    kept_all.sort(key=lambda d: d.id)
    return kept_all
