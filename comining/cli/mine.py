"""`comining mine`: re-mine one checkpoint of a run, optionally with other settings."""

from __future__ import annotations

from comining.cli.options import add_review_mining_args, review_mining_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "mine", help="re-mine a checkpoint for review, both views (other settings allowed)",
        description="Mine the run's training set with both views at one checkpoint for review "
                    "(recall first: every box above the review score floor, grouped into "
                    "objects) and replace that checkpoint's candidates in the run's store "
                    "(all or nothing). Review decisions already made are kept.")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--checkpoint", default="last", metavar="K|last",
                   help="iteration of a saved checkpoint (default: the last)")
    p.add_argument("--score-thresh", type=float, metavar="TAU",
                   help="co-generation's tau, recorded with the mining (review uses the floor)")
    p.add_argument("--nms-iou", type=float, metavar="T1", help="class-wise NMS IoU of each view")
    p.add_argument("--gt-iou", type=float, metavar="T2", help="co-generation's theta2, recorded")
    add_review_mining_args(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, metavar="B")
    p.add_argument("--workers", type=int, metavar="N")
    p.set_defaults(func=run)


def run(args) -> int:
    from comining.config import MiningThresholds
    from comining.checkpoints import load_run_config
    from comining.engine import mine_checkpoint

    config = load_run_config(args.run)
    review = review_mining_from_args(args, config.review)
    if args.nms_iou is not None:
        review.nms_iou = args.nms_iou
    base = config.thresholds.as_dict()
    for key in ("score_thresh", "nms_iou", "gt_iou"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    thresholds = MiningThresholds(**base)
    out = mine_checkpoint(args.run, args.checkpoint, thresholds=thresholds, review=review,
                          device=args.device, batch_size=args.batch_size, num_workers=args.workers)
    print(f"mined checkpoint {out['iteration']}: {out['objects']} objects to review "
          f"({out['original']} boxes from the original view, {out['augmented']} from the "
          f"augmented view), {out['on_label']} more on labels of another class")
    return 0
