"""`comining decide`: record decisions made elsewhere (a script, another tool)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "decide", help="import decisions made elsewhere into the run (json list)",
        description="Record decisions made outside the review app: FILE is a json list of "
                    "{image_id, bbox [x, y, w, h] in image pixels, category_id, decision: "
                    "accepted | rejected, optionally object_id}. Each is matched to the mined "
                    "object it names, or else overlaps most (IoU >= 0.5, any class) at "
                    "--checkpoint and recorded on it with the entry's class and box; an "
                    "accepted box matching no object becomes a manual annotation, a rejected "
                    "one known background. FILE may also be what another tool exports after "
                    "reviewing `comining candidates --format ...`: a Label Studio JSON export "
                    "(each task's latest annotation that was not skipped), or a COCO json "
                    "(CVAT's COCO 1.0 export, FiftyOne's, or the coco/cvat file edited; images "
                    "matched by file name, classes by name). There a mined box still present "
                    "is accepted (with its box and class now), a mined box deleted is "
                    "rejected, a box drawn by hand is a new annotation, and the original "
                    "labels are left alone; images the file does not hold, and Label Studio "
                    "tasks nobody annotated, decide nothing. The file is checked whole first: "
                    "a bad entry records nothing. Export, review and undo treat these "
                    "decisions as the app's (one undo of this client reverts the whole file).")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--decisions", required=True, metavar="FILE.json")
    p.add_argument("--checkpoint", default=None, metavar="K|last",
                   help="whose objects the decisions are matched to (default: the one the "
                        "file's objects come from, else the last)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from comining import formats, review
    from comining.fileio import read_json

    data = read_json(args.decisions)
    kind = formats.detect(data)
    r = review.open_run(args.run)
    try:
        checkpoint = args.checkpoint if args.checkpoint is not None else "last"
        if kind != "native":
            data, checkpoint = formats.review_entries(r, data, kind, checkpoint=args.checkpoint,
                                                      path=args.decisions)
            print(f"read {args.decisions} as a {formats.KIND_NAMES[kind]} at checkpoint "
                  f"{checkpoint}")
        counts = review.import_decisions(r, data, checkpoint=checkpoint,
                                         client=f"decide:{Path(args.decisions).name}",
                                         path=args.decisions)
    finally:
        r.close()
    print(f"recorded {counts['accepted']} accepted and {counts['rejected']} rejected decisions "
          f"from {args.decisions} ({counts['matched']} on mined objects, {counts['manual']} new "
          f"boxes)")
    return 0
