"""`comining refine`: the next round of the loop, trained on the annotator's decisions."""

from __future__ import annotations

from comining.cli.options import add_review_mining_args, review_changes_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "refine", help="retrain the run on its inputs + the accepted boxes (the next round)",
        description="Start the run's next round from its last checkpoint: the detector trains "
                    "on the input annotations plus every accepted box (as edited), the rejected "
                    "boxes are known background (never a pseudo box, never proposed again), and "
                    "each checkpoint of the round is mined for review. The input files are "
                    "never changed; the round's targets are written under RUN_DIR/rounds/. "
                    "The optimizer's momentum and the learning-rate schedule restart (warm-up, "
                    "then x0.1 at 2/3 and 8/9 of the round).")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--iters", type=int, metavar="N",
                   help="iterations of the round (default: as many as the first training)")
    p.add_argument("--checkpoint-every", type=int, metavar="K",
                   help="checkpoint and mine every K iterations (default: as the first training)")
    p.add_argument("--resume", action="store_true", help="finish a round that was stopped")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_review_mining_args(p)
    p.epilog = ("The mining settings (--review-*) default to the previous round's; set here, "
                "they hold for this round and the rounds after it.")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from comining.rounds import forecast_round, refine

    def announce(config):
        from comining import store

        conn = store.connect(Path(args.run) / store.STORE_NAME)
        try:
            row = store.rounds(conn)[-1]
        finally:
            conn.close()
        print(f"round {config.round}: training from checkpoint {config.round_start} to "
              f"{config.iters} on the inputs + {row['n_accepted']} accepted boxes, "
              f"{row['n_rejected']} rejected ones as background ({config.ann})", flush=True)
        if not args.resume:
            print(forecast_round(args.run, iters=args.iters,
                                 checkpoint_every=args.checkpoint_every).line(), flush=True)

    config = refine(args.run, iters=args.iters, checkpoint_every=args.checkpoint_every,
                    resume=args.resume, progress=not args.no_progress, before_training=announce,
                    review_changes=review_changes_from_args(args) or None)
    print(f"round {config.round} finished: {args.run} (review with: comining review --run {args.run})")
    return 0
