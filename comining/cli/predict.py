"""`comining predict`: detections of a run's original view in COCO results format."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="detect objects with a trained run (COCO results json)",
        description="Run the trained detector (original view, test-time scores and NMS, at most "
                    "100 boxes per image) over a dataset with the run's categories.")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--images", required=True, metavar="DIR")
    p.add_argument("--ann", required=True, metavar="FILE.json",
                   help="COCO json listing the images (its annotations are not used)")
    p.add_argument("--out", required=True, metavar="DETS.json")
    p.add_argument("--checkpoint", default="last", metavar="K|last")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=run)


def run(args) -> int:
    from comining.checkpoints import load_run_config
    from comining.fileio import atomic_write_json, refuse_overwrite
    from comining.predict import predict_dataset

    refuse_overwrite(args.out, args.ann)
    load_run_config(args.run)   # a missing or foreign config.json: one line naming it
    dets = predict_dataset(args.run, args.images, args.ann, checkpoint=args.checkpoint,
                           device=args.device, batch_size=args.batch_size)
    atomic_write_json(args.out, dets)
    print(f"wrote {len(dets)} detections to {args.out}")
    return 0
