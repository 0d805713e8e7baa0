"""`comining export`: the input annotations enlarged by the accepted boxes."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Write the run's input annotation file with every original annotation unchanged plus
the accepted boxes as new annotations (fresh ids, area, iscrowd 0, segmentation [],
provenance under "comining": score, view, checkpoint, decision, reviewed_at, and as flat
"attributes" comining_score, _view, _checkpoint, _decision, _round, which CVAT and
Datumaro keep). Duplicates across views, classes and checkpoints are merged (IoU >= 0.5:
one object, one box). The write is
atomic and never replaces the run's input files; OUT.rejected.json lists the
rejected candidates."""

EPILOG = """\
--accept:
  reviewed  the decisions made in `comining review` (default); edited boxes export
            their edited box and class
  agreed    those, plus every undecided candidate both views agree on at
            --checkpoint with score >= --min-score (no human review; for scripts)
  all       those, plus every undecided candidate at --checkpoint with
            score >= --min-score
--min-score and --checkpoint only steer the automatic accepts; human decisions always
stand (a rejected candidate is never exported).

example:
  comining export --run runs/hard --out train_enlarged.json
  comining export --run runs/hard --out auto.json --accept agreed --min-score 0.8
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write the annotations enlarged by the accepted boxes (COCO json)",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="the run folder (with comining.sqlite)")
    p.add_argument("--out", required=True, metavar="ENLARGED.json", help="where to write the result")
    p.add_argument("--accept", choices=("reviewed", "agreed", "all"), default="reviewed",
                   help="which boxes to add (default: reviewed)")
    p.add_argument("--min-score", type=float, default=None, metavar="X",
                   help="score threshold of the automatic accepts (default: 0, every mined candidate)")
    p.add_argument("--checkpoint", default="last", metavar="K|last",
                   help="checkpoint whose candidates agreed/all accept (default: last)")
    p.set_defaults(func=run)


def run(args) -> int:
    from comining.errors import InputError
    from comining.export import export_run, summary_line
    from comining.review import open_run

    if args.checkpoint != "last":
        try:
            int(args.checkpoint)
        except ValueError:
            raise InputError(None, f"--checkpoint must be an iteration number or 'last', "
                                   f"got {args.checkpoint!r}") from None
    min_score = 0.0 if args.min_score is None else args.min_score
    run_ = open_run(args.run)
    try:
        summary = export_run(run_, args.out, accept=args.accept, min_score=min_score,
                             checkpoint=args.checkpoint)
    finally:
        run_.close()
    print(f"comining export: {summary_line(summary)}")
    return 0
