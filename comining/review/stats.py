"""Progress from the decisions: counts, the remaining-objects estimate, the queue's recent
yield, and what no round has trained on yet (the plots are in comining.review.plots)."""

from __future__ import annotations

from comining.review.items import all_items
from comining.review.run import Run


def progress(run: Run, checkpoint: int, items: dict | None = None) -> dict:
    """Counts of the checkpoint's items: total, reviewed, accepted, rejected, pending,
    overall and per class. `items`: the checkpoint's `all_items` when the caller has
    them already."""
    per_class = {cid: {"category_id": cid, "name": name, "total": 0, "accepted": 0,
                       "rejected": 0, "pending": 0} for cid, name in run.categories.items()}
    total = {"total": 0, "accepted": 0, "rejected": 0, "pending": 0}
    for image_items in (all_items(run, checkpoint) if items is None else items).values():
        for it in image_items:
            row = per_class.setdefault(it.category_id, {
                "category_id": it.category_id, "name": str(it.category_id), "total": 0,
                "accepted": 0, "rejected": 0, "pending": 0})
            for counts in (row, total):
                counts["total"] += 1
                counts[it.state] += 1
    total["reviewed"] = total["accepted"] + total["rejected"]
    for row in per_class.values():
        row["reviewed"] = row["accepted"] + row["rejected"]
    n_decisions = run.conn.execute("SELECT COUNT(*) FROM decisions WHERE undone = 0").fetchone()[0]
    return dict(total, checkpoint=checkpoint, decisions=n_decisions,
                per_class=[r for r in per_class.values() if r["total"]])


def calibrate(run: Run, checkpoint: int, items: dict | None = None):
    """(comining.calibration's fit on the decisions made on this checkpoint's objects, or
    None before there are enough; the scores and best classes of its pending objects).
    Objects on a label of another class are left out: they are not missing objects.
    `items`: the checkpoint's `all_items` when the caller has them already."""
    from comining import calibration

    decided, accepted, pending, classes = [], [], [], []
    for image_items in (all_items(run, checkpoint) if items is None else items).values():
        for it in image_items:
            if it.on_label is not None:
                continue
            if it.state == "pending":
                pending.append(it.score)
                classes.append(it.category_id)
            elif it.decision is not None and it.decision.object_id == it.id:
                # decided on this very object: one outcome per decision (the objects a
                # decision covers by overlap are its duplicates, whatever their scores)
                decided.append(it.score)
                accepted.append(it.state == "accepted")
    return calibration.fit(decided, accepted), pending, classes


def remaining_estimate(run: Run, checkpoint: int, items: dict | None = None):
    """The missing objects expected among the checkpoint's pending objects
    (calibration.Remaining), or None before enough decisions on this checkpoint."""
    from comining import calibration

    cal, pending, classes = calibrate(run, checkpoint, items)
    return None if cal is None else calibration.remaining(cal, pending, classes)


def recent_yield(run: Run, checkpoint: int, window: int) -> tuple[int, int]:
    """(decisions, accepts) among the latest `window` standing decisions made on this
    checkpoint's objects (hand-drawn boxes left out): how much the queue pays now."""
    rows = run.conn.execute(
        "SELECT d.decision FROM decisions d JOIN candidates c ON c.id = d.candidate_id "
        "WHERE d.undone = 0 AND c.checkpoint = ? ORDER BY d.id DESC LIMIT ?",
        (checkpoint, int(window))).fetchall()
    return len(rows), sum(1 for r in rows if r[0] == "accepted")


def untrained_decisions(run: Run) -> int:
    """Standing decisions the latest refine round did not train on (all of them before
    the first round): what retraining now would add to the detector's targets."""
    return run.conn.execute(
        "SELECT COUNT(*) FROM decisions WHERE undone = 0 AND id NOT IN "
        "(SELECT decision_id FROM round_decisions "
        " WHERE round = (SELECT MAX(round) FROM rounds))").fetchone()[0]


def decision_counts(run: Run) -> dict:
    """Cheap run-wide counts of standing decision rows (for a status line)."""
    out = {"accepted": 0, "rejected": 0}
    for r in run.conn.execute("SELECT decision, COUNT(*) AS n FROM decisions WHERE undone = 0 "
                              "GROUP BY decision"):
        out[r["decision"]] = r["n"]
    return out
