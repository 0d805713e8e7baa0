"""`comining check`: validate a COCO dataset (json + images) the way training will load it."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="validate a COCO detection json and its images; print a summary",
        description="Load a COCO detection json and its image folder exactly as `train` does "
                    "(ids, boxes, image files, sizes, EXIF orientation) and print a summary, "
                    "or one line saying what is wrong. Image files are opened for their size; "
                    "--decode also decodes every pixel, finding corrupt files before training "
                    "does.")
    p.add_argument("--ann", required=True, metavar="FILE.json")
    p.add_argument("--images", required=True, metavar="DIR")
    p.add_argument("--decode", action="store_true",
                   help="decode every image too (slower: a full read of the dataset)")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from comining.coco import decode_all, load_coco

    ds = load_coco(args.ann, args.images)
    if args.decode:
        t0 = time.perf_counter()
        decode_all(ds)
        print(f"decoded all {len(ds)} images in {time.perf_counter() - t0:.1f} s")
    per_class = {name: 0 for name in ds.categories.names}
    for rec in ds.images:
        for label in rec.labels.tolist():
            per_class[ds.categories.names[label]] += 1
    empty = sum(1 for r in ds.images if len(r.boxes) == 0)
    crowd = sum(len(r.crowd_boxes) for r in ds.images)
    classes = ", ".join(f"{k} {v}" for k, v in per_class.items())
    print(f"{args.ann}: ok: {len(ds)} images ({empty} without annotations), "
          f"{ds.num_annotations} boxes, {crowd} crowd, {len(ds.categories)} classes ({classes})")
    return 0
