"""`comining mine`: re-mine one checkpoint of a run, optionally with other thresholds."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "mine", help="re-mine a checkpoint with both views (other thresholds allowed)",
        description="Run co-generation with both views over the run's training set at one "
                    "checkpoint and replace that checkpoint's candidates in the run's store "
                    "(all or nothing). Review decisions already made are kept.")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--checkpoint", default="last", metavar="K|last",
                   help="iteration of a saved checkpoint (default: the last)")
    p.add_argument("--score-thresh", type=float, metavar="TAU")
    p.add_argument("--nms-iou", type=float, metavar="T1")
    p.add_argument("--gt-iou", type=float, metavar="T2")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, metavar="B")
    p.add_argument("--workers", type=int, metavar="N")
    p.set_defaults(func=run)


def run(args) -> int:
    from comining.config import MiningThresholds
    from comining.engine import load_run_config
    from comining.mining import mine_checkpoint

    base = load_run_config(args.run).thresholds.as_dict()
    for key in ("score_thresh", "nms_iou", "gt_iou"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    thresholds = MiningThresholds(**base)
    out = mine_checkpoint(args.run, args.checkpoint, thresholds=thresholds, device=args.device,
                          batch_size=args.batch_size, num_workers=args.workers)
    print(f"mined checkpoint {out['iteration']}: {out['original']} boxes from the original view, "
          f"{out['augmented']} from the augmented view, {out['agreed']} agreed")
    return 0
