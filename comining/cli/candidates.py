"""`comining candidates`: the review queue as a json list, one entry per object."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "candidates", help="write the review queue as a json list (one entry per object)",
        description="Write the run's mined objects as a json list in queue order (best ranked "
                    "first), one entry per object: {image_id, bbox [x, y, w, h] in original "
                    "pixels, category_id (its best class), score (the ranking score), classes "
                    "(the alternatives [[category_id, score], ...]), views (which views found "
                    "it), view_scores, checkpoint, on_label, state}: COCO-results style, "
                    "loadable by COCO tools (loadRes) and others. Objects on a label of another "
                    "class (possible wrong labels) come only with --on-label.")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--checkpoint", default="last", metavar="K|last|all")
    p.add_argument("--out", required=True, metavar="FILE.json")
    p.add_argument("--on-label", action="store_true",
                   help="also write the objects that overlap a label of another class")
    p.add_argument("--decided", action="store_true",
                   help="also write objects already accepted or rejected (default: pending only)")
    p.set_defaults(func=run)


def export_candidates(run_dir, checkpoint: str = "last", *, on_label: bool = False,
                      decided: bool = False) -> list[dict]:
    """The queue's objects as plain dicts, in queue order (per checkpoint when 'all')."""
    from collections import defaultdict
    from pathlib import Path

    from comining import review, store

    conn = store.connect(Path(run_dir) / store.STORE_NAME)   # the store alone: no config needed
    try:
        its = [r["iteration"] for r in store.checkpoints(conn)] if checkpoint == "all" else [
            store.resolve_checkpoint(conn, checkpoint, run_dir)]
        f = review.Filters(states=() if decided else ("pending",),
                           labelled="all" if on_label else "missing")
        decs = defaultdict(list)
        for d in review.decisions(conn):
            decs[d.image_id].append(d)
        out = []
        for it in its:
            items = [x for im, group in review.grouped_items(conn, it).items()
                     for x in review.decide_items(group, decs.get(im, []))]
            for item in sorted((x for x in items if f.match(x)), key=f.key):
                out.append({
                    "image_id": item.image_id, "category_id": item.category_id,
                    "bbox": [round(v, 2) for v in item.box], "score": round(item.score, 4),
                    "classes": [[c, round(s, 4)] for c, s in item.alternatives],
                    "views": ["original", "augmented"] if item.view == "both" else [item.view],
                    "checkpoint": it, "on_label": item.on_label, "state": item.state})
        return out
    finally:
        conn.close()


def run(args) -> int:
    from comining.fileio import atomic_write_json

    rows = export_candidates(args.run, args.checkpoint, on_label=args.on_label, decided=args.decided)
    atomic_write_json(args.out, rows)
    print(f"wrote {len(rows)} objects to {args.out}")
    return 0
