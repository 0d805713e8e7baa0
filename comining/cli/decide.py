"""`comining decide`: record decisions made elsewhere (a script, another tool)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "decide", help="import decisions made elsewhere into the run (json list)",
        description="Record decisions made outside the review app: FILE is a json list of "
                    "{image_id, bbox [x, y, w, h] in image pixels, category_id, decision: "
                    "accepted | rejected}. Each is matched to the mined object it overlaps most "
                    "(IoU >= 0.5, any class) at --checkpoint and recorded on it with the "
                    "entry's class and box; an accepted box matching no object becomes a manual "
                    "annotation, a rejected one known background. The file is checked whole "
                    "first: a bad entry records nothing. Export, review and undo treat these "
                    "decisions as the app's (one undo of this client reverts the whole file).")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--decisions", required=True, metavar="FILE.json")
    p.add_argument("--checkpoint", default="last", metavar="K|last",
                   help="whose objects the decisions are matched to (default: the last)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from comining import review
    from comining.fileio import read_json

    entries = read_json(args.decisions)
    r = review.open_run(args.run)
    try:
        counts = review.import_decisions(r, entries, checkpoint=args.checkpoint,
                                         client=f"decide:{Path(args.decisions).name}",
                                         path=args.decisions)
    finally:
        r.close()
    print(f"recorded {counts['accepted']} accepted and {counts['rejected']} rejected decisions "
          f"from {args.decisions} ({counts['matched']} on mined objects, {counts['manual']} new "
          f"boxes)")
    return 0
