"""`comining sparsify`: erase annotations from a full COCO json by a co-mining protocol."""

from __future__ import annotations

import argparse
import os
import textwrap
from pathlib import Path

from comining.errors import InputError
from comining.fileio import atomic_write_many, json_bytes, read_json, refuse_overwrite, same_file
from comining.sparsify import PROTOCOLS, RULES, sparsify

EPILOG = """\
protocols (n = an image's non-crowd annotations, n_c = a category's):
{rules}

rules for every protocol:
  - crowd annotations (iscrowd 1) are never erased and never counted
  - every image stays in both files, also images left with no annotation
  - SPARSE keeps, HIDDEN gets the erased annotations: together exactly the
    input's, same ids and fields, each file in the input's order; images,
    categories, info, licenses and any other top-level key copied to both
  - which annotations go is uniform at random per image (per category for
    miss50), fixed by --seed and the annotation ids alone: the same input and
    seed give byte-identical files, and for one seed the splits nest
    (what easy erases, hard erases too; what hard erases, extreme too)

example:
  comining sparsify --ann instances_train2017.json --protocol hard --seed 0 \\
      --out train_hard.json --hidden train_hard_hidden.json
""".format(rules="\n".join(
    textwrap.fill(RULES[name], width=79, initial_indent=f"  {name:<8} ",
                  subsequent_indent=" " * 11) for name in PROTOCOLS))

DESCRIPTION = """\
Make a sparsely annotated COCO json from a fully annotated one by one of the
co-mining protocols, seeded. The erased annotations go to a second COCO json,
so that evaluation can score what mining recovers."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sparsify",
        help="erase annotations from a full COCO json (easy/hard/extreme/miss50)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ann", required=True, metavar="FULL.json",
                   help="the fully annotated COCO json (read only, never overwritten)")
    p.add_argument("--protocol", required=True, choices=PROTOCOLS,
                   help="which annotations to erase (see below)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed (default: 0)")
    p.add_argument("--out", required=True, metavar="SPARSE.json",
                   help="where to write the sparse COCO json (the kept annotations)")
    p.add_argument("--hidden", required=True, metavar="HIDDEN.json",
                   help="where to write the erased annotations, as a COCO json")
    p.set_defaults(func=run)


def _same_path(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve() or same_file(a, b)


def run(args) -> int:
    from comining.coco import validate_coco_dict

    refuse_overwrite(args.out, args.ann)
    refuse_overwrite(args.hidden, args.ann)
    if _same_path(args.out, args.hidden):
        raise InputError(args.hidden, "--hidden must be a different file from --out")
    for target in (args.out, args.hidden):
        parent = Path(target).parent
        if not parent.is_dir():
            raise InputError(target, f"output folder {parent} does not exist")

    data = read_json(args.ann)
    validate_coco_dict(data, args.ann)
    sparse, hidden = sparsify(data, args.protocol, seed=args.seed, path=args.ann)

    # Both complete before either replaces anything: never a new SPARSE with an old HIDDEN.
    atomic_write_many([(args.hidden, json_bytes(hidden)), (args.out, json_bytes(sparse))])
    kept, erased = len(sparse["annotations"]), len(hidden["annotations"])
    print(f"sparsify {args.protocol} (seed {args.seed}): kept {kept}, erased {erased} of "
          f"{kept + erased} annotations on {len(data['images'])} images -> "
          f"{os.fspath(args.out)} (+ hidden {os.fspath(args.hidden)})")
    return 0
