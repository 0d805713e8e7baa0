"""Options shared by several commands: the recall-first mining for review (train, mine)."""

from __future__ import annotations

import argparse


def add_review_mining_args(p) -> None:
    g = p.add_argument_group("mining for review (recall first; training's co-generation keeps "
                             "the paper's --score-thresh/--nms-iou/--gt-iou)")
    g.add_argument("--review-score-floor", type=float, metavar="S",
                   help="a box of either view above this class score is a candidate (default 0.05)")
    g.add_argument("--review-max-objects", type=int, metavar="N",
                   help="objects kept per image, best ranked (default 30)")
    g.add_argument("--review-rank", choices=("mean", "max", "min", "noisy_or", "geometric"),
                   help="an object's ranking score from the two views' best scores (default mean)")
    g.add_argument("--review-scales", type=float, nargs="+", metavar="X",
                   help="mine at these input sizes, as multiples of --image-size, their boxes "
                        "joined per view before grouping (default 1; e.g. 1 1.6 also finds "
                        "small objects, for 1 + 1.6^2 times the mining time)")
    g.add_argument("--review-native", action=argparse.BooleanOptionalAction, default=None,
                   help="when --image-size shrinks the images, also mine them a little larger: "
                        "at their own size, at most 1.2x --image-size (the objects the shrinking "
                        "made small are found there; default on; --no-review-native: the "
                        "--review-scales only)")
    g.add_argument("--review-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="also mine the horizontally mirrored images (at every --review-scales "
                        "size), their boxes mirrored back and joined per view: more missing "
                        "objects found, for twice the mining time (default off)")
    g.add_argument("--label-iou", type=float, metavar="IOU",
                   help="an object overlapping an annotation of any class at this IoU is not a "
                        "missing object (default 0.5)")


def review_changes_from_args(args) -> dict:
    """The ReviewMining fields the flags given set (none given: {})."""
    return {name: getattr(args, arg) for name, arg in (
        ("score_floor", "review_score_floor"), ("max_objects", "review_max_objects"),
        ("rank", "review_rank"), ("label_iou", "label_iou"), ("scales", "review_scales"),
        ("native", "review_native"), ("flip", "review_flip"))
        if getattr(args, arg, None) is not None}


def review_mining_from_args(args, base=None):
    """A ReviewMining from `base` (default: the defaults) with the flags given."""
    import dataclasses

    from comining.config import ReviewMining

    review = dataclasses.replace(base or ReviewMining(), **review_changes_from_args(args))
    review.validate()
    return review
