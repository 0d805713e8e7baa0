"""Writing decisions: one, several, a batch of agreed items, and undo."""

from __future__ import annotations

from datetime import datetime, timedelta

from comining import store
from comining.errors import InputError
from comining.review.boxes import clean_box
from comining.review.items import count_items, decisions, queue_items
from comining.review.records import Decision, Filters, Item
from comining.review.run import Run


def _insert(conn, run: Run, candidate_id: int, decision: str, client: str | None, when: str,
            category_id: int | None = None, box=None) -> int:
    # an item's id is its object's (= its best candidate's); a decision on it takes the
    # object's fused box and best class unless edited
    row = (conn.execute("SELECT image_id, category_id, x, y, w, h FROM objects WHERE id = ?",
                        (candidate_id,)).fetchone()
           or conn.execute("SELECT image_id, category_id, x, y, w, h FROM candidates WHERE id = ?",
                           (candidate_id,)).fetchone())
    if row is None:
        raise InputError(None, f"candidate {candidate_id} no longer exists (was its checkpoint "
                               f"re-mined?); reload the page")
    cat = row["category_id"] if category_id is None else int(category_id)
    if cat not in run.categories:
        raise InputError(None, f"unknown class {category_id!r}")
    _, width, height = run.images.get(row["image_id"], ("", 1 << 30, 1 << 30))
    box = (row["x"], row["y"], row["w"], row["h"]) if box is None else clean_box(box, width, height)
    cur = conn.execute(
        "INSERT INTO decisions (candidate_id, image_id, decision, category_id, x, y, w, h,"
        " decided_at, client) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (candidate_id, row["image_id"], decision, cat, *map(float, box), when, client))
    return cur.lastrowid


def _stamp(conn, client: str | None) -> str:
    """The time stamp of a new write transaction of `client`: now, but strictly after the
    client's previous one, so that the rows of one transaction (a batch) share a stamp
    no other transaction of that client has (undo reverts by stamp). Call inside the
    transaction."""
    now = store.now_iso()
    row = conn.execute("SELECT MAX(decided_at) FROM decisions WHERE client IS ?", (client,)).fetchone()
    if row[0] is not None and row[0] >= now:
        later = datetime.fromisoformat(row[0]) + timedelta(milliseconds=1)
        now = later.isoformat(timespec="milliseconds")
    return now


def _check_decision(decision: str) -> None:
    if decision not in ("accepted", "rejected"):
        raise InputError(None, f"a decision is 'accepted' or 'rejected', got {decision!r}")


def decide(run: Run, candidate_id: int, decision: str, *, client: str | None = None,
           category_id: int | None = None, box=None) -> int:
    """Record one decision (optionally with a changed class and/or an adjusted xywh box);
    returns the decision's id. Committed before returning."""
    _check_decision(decision)
    conn = run.conn
    with store.transaction(conn):
        return _insert(conn, run, int(candidate_id), decision, client, _stamp(conn, client),
                       category_id, box)


def decide_many(run: Run, choices: list[tuple[int, str]], *, client: str | None = None) -> int:
    """Several (candidate_id, decision) in one transaction; one undo reverts them all."""
    for _, decision in choices:
        _check_decision(decision)
    conn = run.conn
    with store.transaction(conn):
        when = _stamp(conn, client)
        for cid, decision in choices:
            _insert(conn, run, int(cid), decision, client, when)
    return len(choices)


def undo(run: Run, client: str | None) -> list[Decision]:
    """Mark the client's last decision undone (a whole batch, when it was one: the rows
    one transaction wrote share a time stamp, see _stamp). Returns what was undone,
    [] when nothing."""
    conn = run.conn
    with store.transaction(conn):
        row = conn.execute("SELECT decided_at FROM decisions WHERE client IS ? AND undone = 0 "
                           "ORDER BY id DESC LIMIT 1", (client,)).fetchone()
        if row is None:
            return []
        ids = [r["id"] for r in conn.execute(
            "SELECT id FROM decisions WHERE client IS ? AND undone = 0 AND decided_at = ?",
            (client, row["decided_at"]))]
        undone = decisions(conn, ids=ids)
        conn.execute(f"UPDATE decisions SET undone = 1 WHERE id IN ({','.join('?' * len(ids))})", ids)
    return undone


def _batch_filters(min_score: float, classes) -> Filters:
    return Filters(classes=tuple(classes), views=("both",), score_min=float(min_score),
                   score_max=1.0, states=("pending",))


def batch_candidates(run: Run, checkpoint: int, min_score: float, *,
                     classes: tuple[int, ...] = ()) -> list[Item]:
    """Pending items both views agree on, with score >= min_score (what batch accept takes)."""
    return queue_items(run, checkpoint, _batch_filters(min_score, classes))


def batch_count(run: Run, checkpoint: int, min_score: float, *, classes: tuple[int, ...] = ()) -> int:
    """len(batch_candidates(...)), counted in SQL (the preview, shown on every page load)."""
    return count_items(run, checkpoint, _batch_filters(min_score, classes))


class CountChanged(InputError):
    """The batch changed since its preview (another client decided meanwhile)."""


def batch_accept(run: Run, checkpoint: int, min_score: float, *, client: str | None = None,
                 classes: tuple[int, ...] = (), expected: int | None = None) -> int:
    """Accept every pending agreed item with score >= min_score; returns how many.
    The set is recomputed inside the write transaction, so a decision another client
    made meanwhile is respected and nothing is decided twice. With `expected` (the
    count the user was shown), a different count writes nothing and raises CountChanged."""
    conn = run.conn
    with store.transaction(conn):
        when = _stamp(conn, client)
        items = batch_candidates(run, checkpoint, min_score, classes=classes)
        if expected is not None and len(items) != expected:
            raise CountChanged(None, f"the batch changed since its preview: {len(items)} agreed "
                                     f"candidates now (not {expected}); nothing was accepted, "
                                     f"check the new count and press again")
        for it in items:
            _insert(conn, run, it.id, "accepted", client, when)
    return len(items)
