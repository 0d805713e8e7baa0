"""`comining candidates`: the stored candidates as a COCO-results-style json list."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "candidates", help="write the mined candidates as a json list (COCO results style)",
        description="Write the run's mined boxes as a json list of {image_id, category_id, bbox "
                    "[x, y, w, h] in original pixels, score, view, checkpoint, agreed}: loadable "
                    "by COCO tools (loadRes) and others.")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--checkpoint", default="last", metavar="K|last|all")
    p.add_argument("--out", required=True, metavar="FILE.json")
    p.set_defaults(func=run)


def export_candidates(run_dir, checkpoint: str = "last") -> list[dict]:
    from pathlib import Path

    from comining import store

    conn = store.connect(Path(run_dir) / store.STORE_NAME)
    try:
        if checkpoint == "all":
            rows = store.candidates(conn)
        else:
            rows = store.candidates(conn, store.resolve_checkpoint(conn, checkpoint, run_dir))
    finally:
        conn.close()
    return [{"image_id": r["image_id"], "category_id": r["category_id"],
             "bbox": [r["x"], r["y"], r["w"], r["h"]], "score": r["score"], "view": r["view"],
             "checkpoint": r["checkpoint"], "agreed": bool(r["agreed"])} for r in rows]


def run(args) -> int:
    from comining.fileio import atomic_write_json

    rows = export_candidates(args.run, args.checkpoint)
    atomic_write_json(args.out, rows)
    print(f"wrote {len(rows)} candidates to {args.out}")
    return 0
