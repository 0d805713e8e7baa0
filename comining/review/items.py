"""Reading the store into what an annotator reviews: decisions, items grouped per image,
the queue, and the decisions that stand (for export)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np

from comining.review.boxes import iou, iou_matrix
from comining.review.records import IOU_SAME, Decision, Filters, Item, QueueEntry
from comining.review.run import Run
from comining.util import paused_gc


_DECISION_SQL = """
SELECT d.id, d.candidate_id, d.image_id, d.decision, d.category_id, d.x, d.y, d.w, d.h,
       d.decided_at, d.client,
       c.checkpoint AS c_checkpoint, c.category_id AS c_category, c.x AS c_x, c.y AS c_y,
       c.w AS c_w, c.h AS c_h, c.score AS c_score, c.view AS c_view, c.agreed AS c_agreed
FROM decisions d
LEFT JOIN candidates c ON c.id = d.candidate_id AND c.image_id = d.image_id
     AND (SELECT k.mined_at FROM checkpoints k WHERE k.iteration = c.checkpoint) <= d.decided_at
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
        cand_agreed=bool(r["c_agreed"]) if linked else False)


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


def _covering(item_cats: np.ndarray, item_boxes: np.ndarray, members: list[tuple],
              decs: list[Decision], include_rejected: bool) -> list[Decision | None]:
    """For each item (class, top box, member ids), the latest decision that covers it
    (see the `comining.review` docstring), vectorised over items x decisions."""
    n, m = len(item_cats), len(decs)
    if m == 0:
        return [None] * n
    d_box = np.array([d.box for d in decs], np.float64)
    d_cand = np.array([d.cand_box if d.cand_box is not None else (0, 0, 0, 0) for d in decs],
                      np.float64)
    d_cat = np.array([d.category_id for d in decs])
    d_cand_cat = np.array([d.cand_category if d.cand_category is not None else -(1 << 62)
                           for d in decs])
    overlap = np.maximum(iou_matrix(item_boxes, d_box), iou_matrix(item_boxes, d_cand)) >= IOU_SAME
    same_cls = (item_cats[:, None] == d_cat[None]) | (item_cats[:, None] == d_cand_cat[None])
    indirect = overlap & same_cls
    if include_rejected:
        indirect &= np.array([d.decision != "rejected" for d in decs])[None]
    where = {}
    for i, ids in enumerate(members):
        for cid in ids:
            where[cid] = i
    cover = indirect
    for j, d in enumerate(decs):
        if d.linked and d.candidate_id in where:
            cover[where[d.candidate_id], j] = True
    order = np.array([d.id for d in decs])
    out = []
    for i in range(n):
        js = np.flatnonzero(cover[i])
        out.append(decs[int(js[np.argmax(order[js])])] if len(js) else None)
    return out


# Candidate columns as the grouping reads them: plain tuples (fetched without sqlite3.Row,
# the grouping of a checkpoint being a hot path of exports and of the first page load).
_CAND_COLS = "id, image_id, category_id, x, y, w, h, score, view, agreed, partner_id"
_ID, _IMAGE, _CAT, _X, _Y, _W, _H, _SCORE, _VIEW, _AGREED, _PARTNER = range(11)


def _candidate_rows(conn, where: str, params) -> list[tuple]:
    cur = conn.cursor()
    cur.row_factory = None
    return cur.execute(f"SELECT {_CAND_COLS} FROM candidates WHERE {where}", params).fetchall()


def group_items(rows, checkpoint: int) -> list[Item]:
    """Items of one image at one checkpoint from its candidate rows (tuples in
    `_CAND_COLS` order), all pending, best score first. Greedy by score: a candidate
    joins the item of its agreed partner, else the first item of its class whose top
    box it overlaps with IoU >= 0.5. Depends on the candidates only, so a run caches
    it per checkpoint."""
    order = sorted(rows, key=lambda r: (-r[_SCORE], r[_ID]))
    box = {r[_ID]: (r[_X], r[_Y], r[_W], r[_H]) for r in order}
    group_of: dict[int, int] = {}
    groups: list[list[tuple]] = []
    of_class: dict[int, list[int]] = defaultdict(list)   # class -> its groups, oldest first
    for r in order:
        g = None
        partner = r[_PARTNER]
        if partner is not None and partner in group_of:
            if groups[group_of[partner]][0][_CAT] == r[_CAT]:
                g = group_of[partner]
        if g is None:
            mine = box[r[_ID]]
            for k in of_class[r[_CAT]]:
                if iou(mine, box[groups[k][0][_ID]]) >= IOU_SAME:
                    g = k
                    break
        if g is None:
            g = len(groups)
            groups.append([r])
            of_class[r[_CAT]].append(g)
        else:
            groups[g].append(r)
        group_of[r[_ID]] = g
    items = []
    for members in groups:
        top = members[0]
        views = {r[_VIEW] for r in members}
        if len(views) == 2:
            o = next(r for r in members if r[_VIEW] == "original")
            a = next(r for r in members if r[_VIEW] == "augmented")
            agreement = iou(box[o[_ID]], box[a[_ID]])
        elif top[_AGREED] and top[_PARTNER] in box:
            agreement = iou(box[top[_ID]], box[top[_PARTNER]])
        else:
            agreement = 0.0
        view = "both" if len(views) == 2 or any(r[_AGREED] for r in members) else top[_VIEW]
        items.append(Item(id=top[_ID], image_id=top[_IMAGE], checkpoint=checkpoint,
                          category_id=top[_CAT], box=box[top[_ID]], score=float(top[_SCORE]),
                          view=view, agreement=float(agreement),
                          member_ids=tuple(r[_ID] for r in members)))
    return items   # groups are created in score order: already best first


def decide_items(items: list[Item], decs: list[Decision], *,
                 include_rejected: bool = False) -> list[Item]:
    """The pending `items` of one image with the state its decisions give them."""
    if not items or not decs:
        return items
    boxes = np.array([it.box for it in items], np.float64)
    cats = np.array([it.category_id for it in items])
    covering = _covering(cats, boxes, [it.member_ids for it in items], decs, include_rejected)
    return [it if d is None else dataclasses.replace(it, state=d.decision, decision=d)
            for it, d in zip(items, covering)]


def build_items(rows, decs: list[Decision], checkpoint: int, *,
                include_rejected: bool = False) -> list[Item]:
    """Items of one image at one checkpoint from its candidate rows and its decisions,
    best score first."""
    return decide_items(group_items(rows, checkpoint), decs, include_rejected=include_rejected)


def image_items(run: Run, checkpoint: int, image_id: int, *,
                include_rejected: bool = False) -> list[Item]:
    """The items of one image at one checkpoint, best score first (the numbering shown)."""
    conn = run.conn
    rows = _candidate_rows(conn, "checkpoint = ? AND image_id = ?", (checkpoint, image_id))
    return build_items(rows, decisions(conn, image_id) if rows else [], checkpoint,
                       include_rejected=include_rejected)


def grouped_items(conn, checkpoint: int) -> dict[int, list[Item]]:
    """{image_id: pending items} over every image with candidates at this checkpoint."""
    per_image: dict[int, list] = defaultdict(list)
    for r in _candidate_rows(conn, "checkpoint = ? ORDER BY image_id, id", (checkpoint,)):
        per_image[r[_IMAGE]].append(r)
    return {im: group_items(rs, checkpoint) for im, rs in per_image.items()}


def _checkpoint_groups(run: Run, checkpoint: int) -> dict[int, list[Item]]:
    """`grouped_items` of a checkpoint, cached in the run: the grouping depends on the
    candidates only, which change only when the checkpoint is re-mined (a new
    `mined_at`). Decisions are always applied live."""
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


def queue(run: Run, checkpoint: int, filters: Filters = Filters()) -> list[QueueEntry]:
    """Images holding at least one item that passes the filters, best first by the
    filter's sort (an image ranks by its best matching item)."""
    entries = []
    for image_id, items in all_items(run, checkpoint, include_rejected=filters.include_rejected).items():
        matched = [it for it in items if filters.match(it)]
        if not matched:
            continue
        best = min(matched, key=filters.key)
        entries.append((filters.key(best), QueueEntry(image_id, len(matched), len(items),
                                                       max(it.score for it in matched))))
    entries.sort(key=lambda e: e[0])
    return [e for _, e in entries]


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
    if not (a.categories & b.categories):
        return False
    return max(iou(p, q) for p in a.boxes for q in b.boxes) >= IOU_SAME


def effective_decisions(conn) -> list[Decision]:
    """The decisions that stand: of several about one object (same candidate, or same
    class with IoU >= 0.5 on one image), only the latest. Oldest first."""
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
