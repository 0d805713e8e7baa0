"""`comining synth --out DIR`: write a generated, fully labelled COCO detection dataset."""

from __future__ import annotations

import time

from comining import synth


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="generate a labelled COCO dataset of shapes (for demos, tests, benchmarks)",
        description="Generate a fully labelled COCO detection dataset: shapes (disc, square, "
                    "triangle, ...) in random palette colours on cluttered backgrounds, 2 to 8 "
                    "per image, sizes from about 8% to 45% of the image side. Writes "
                    "DIR/images/{train,val}/NNNNNN.png and DIR/annotations/{train,val}.json. "
                    "The same arguments always give byte-identical files.",)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (created; earlier synth output in it is overwritten)")
    p.add_argument("--train", type=int, default=300, metavar="N",
                   help="number of training images (default %(default)s)")
    p.add_argument("--val", type=int, default=60, metavar="N",
                   help="number of validation images (default %(default)s)")
    p.add_argument("--size", type=int, default=256, metavar="PX",
                   help=f"image side in pixels (square images, {synth.MIN_SIZE} to "
                        f"{synth.MAX_SIZE}; default %(default)s)")
    p.add_argument("--classes", type=int, default=4, metavar="K",
                   help=f"number of shape classes, 1 to {synth.MAX_CLASSES}, taken in this "
                        f"order: {', '.join(synth.SHAPES)} (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="random seed; another seed gives another dataset (default %(default)s)")
    p.add_argument("--crowd", type=float, default=0.0, metavar="P",
                   help="fraction of images (0 to 1) where every instance of one class becomes "
                        "a single COCO crowd annotation (iscrowd 1, the box covering them); "
                        "seeded, the images are unchanged (default 0: no crowd)")
    p.set_defaults(func=run)


def run(args) -> int:
    train, val, size, classes, seed = synth.check_args(
        args.train, args.val, args.size, args.classes, args.seed, prefix="--")
    crowd = synth.check_crowd(args.crowd, prefix="--")
    start = time.perf_counter()
    s = synth.generate(args.out, train=train, val=val, size=size, classes=classes, seed=seed,
                       crowd=crowd)
    took = time.perf_counter() - start

    def boxes(split):
        n_crowd = s[split].get("crowd")
        return f"{s[split]['annotations']} boxes" + (f", {n_crowd} crowd" if n_crowd is not None else "")

    print(f"wrote {s['train']['images']} train images ({boxes('train')}) and "
          f"{s['val']['images']} val images ({boxes('val')}), {size} px, "
          f"{classes} classes ({', '.join(s['classes'])}), seed {seed}, to {args.out} "
          f"in {took:.1f} s")
    return 0
