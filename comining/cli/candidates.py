"""`comining candidates`: the review queue as a json list, one entry per object, or in
the import format of another annotation tool (`--format`, see comining.formats)."""

from __future__ import annotations

import argparse

FORMATS_HELP = """\
--format (what OUT is, and what comes with it):
  json         the json list above (default)
  coco         a COCO detection json of the mined objects (images with one, categories,
               annotations with score and attributes comining_object, _score, _views,
               _checkpoint): pycocotools COCO(OUT), globox AnnotationSet.from_coco(OUT)
  cvat         a COCO json to upload to a CVAT task as "COCO 1.0" annotations: the
               images' original labels (attribute comining_source=label: an upload
               replaces the task's annotations) and the mined objects
               (comining_source=mined); OUT.cvat-labels.json holds the task's labels for
               the Raw label editor (declare the attributes, or CVAT drops them) and
               OUT.images.txt the image files to put in the task
  fiftyone     OUT is a folder: labels.json (original labels), mined.json (the mined
               objects, score and attributes), load.py (python OUT/load.py loads both
               into one FiftyOne dataset, fields ground_truth and mined, opens the App,
               and when it is closed writes OUT/reviewed.json without the mined boxes
               tagged "reject")
  labelstudio  Label Studio tasks with the mined objects as predictions (percent boxes,
               per-box score, region ids comining-<object>) and the original labels as
               read-only regions; OUT.labelconfig.xml is the project's labeling config.
               Image URLs are --image-url-prefix + file_name (default
               /data/local-files/?d=<image folder name>/: Label Studio started with
               LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and
               LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<the image folder's parent>)
Bring the reviewed result back with `comining decide --run RUN --decisions EXPORT`.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "candidates", help="write the review queue as a json list (one entry per object)",
        description="Write the run's mined objects as a json list in queue order (best ranked "
                    "first), one entry per object: {image_id, bbox [x, y, w, h] in original "
                    "pixels, category_id (its best class), score (the ranking score), classes "
                    "(the alternatives [[category_id, score], ...]), views (which views found "
                    "it), view_scores, checkpoint, on_label, state}: COCO-results style, "
                    "loadable by COCO tools (loadRes) and others. Objects on a label of another "
                    "class (possible wrong labels) come only with --on-label.",
        epilog=FORMATS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--checkpoint", default="last", metavar="K|last|all")
    p.add_argument("--out", required=True, metavar="FILE.json",
                   help="where to write (a folder for --format fiftyone)")
    p.add_argument("--format", default="json",
                   choices=("json", "coco", "cvat", "fiftyone", "labelstudio"),
                   help="json (default), or another tool's import format (see below)")
    p.add_argument("--image-url-prefix", metavar="PREFIX",
                   help="labelstudio: what image URLs start with, before the file_name")
    p.add_argument("--on-label", action="store_true",
                   help="also write the objects that overlap a label of another class")
    p.add_argument("--decided", action="store_true",
                   help="also write objects already accepted or rejected (default: pending only)")
    p.set_defaults(func=run)


def export_candidates(run_dir, checkpoint: str = "last", *, on_label: bool = False,
                      decided: bool = False, ids: bool = False) -> list[dict]:
    """The queue's objects as plain dicts, in queue order (per checkpoint when 'all');
    with `ids`, each also names its object ("object_id": what decisions point to)."""
    from collections import defaultdict
    from pathlib import Path

    from comining import review, store

    conn = store.connect(Path(run_dir) / store.STORE_NAME)   # the store alone: no config needed
    try:
        its = [r["iteration"] for r in store.checkpoints(conn)] if checkpoint == "all" else [
            store.resolve_checkpoint(conn, checkpoint, run_dir)]
        f = review.Filters(states=() if decided else ("pending",),
                           labelled="all" if on_label else "missing")
        decs = defaultdict(list)
        for d in review.decisions(conn):
            decs[d.image_id].append(d)
        out = []
        for it in its:
            items = [x for im, group in review.grouped_items(conn, it).items()
                     for x in review.decide_items(group, decs.get(im, []))]
            for item in sorted((x for x in items if f.match(x)), key=f.key):
                row = {
                    "image_id": item.image_id, "category_id": item.category_id,
                    "bbox": [round(v, 2) for v in item.box], "score": round(item.score, 4),
                    "classes": [[c, round(s, 4)] for c, s in item.alternatives],
                    "views": ["original", "augmented"] if item.view == "both" else [item.view],
                    "checkpoint": it, "on_label": item.on_label, "state": item.state}
                if ids:
                    row["object_id"] = item.id
                out.append(row)
        return out
    finally:
        conn.close()


def run(args) -> int:
    from comining.fileio import atomic_write_json

    if args.format != "json":
        return write_format(args, args.format)
    rows = export_candidates(args.run, args.checkpoint, on_label=args.on_label, decided=args.decided)
    atomic_write_json(args.out, rows)
    print(f"wrote {len(rows)} objects to {args.out}")
    return 0


def _beside(out, suffix: str):
    """OUT.json -> OUT<suffix> in the same folder."""
    from pathlib import Path

    out = Path(out)
    stem = out.name[:-5] if out.name.lower().endswith(".json") else out.name
    return out.with_name(stem + suffix)


def write_format(args, fmt: str) -> int:
    from pathlib import Path

    from comining import formats, review
    from comining.errors import InputError
    from comining.fileio import atomic_write_many, json_bytes, refuse_overwrite

    if args.checkpoint == "all":
        raise InputError(None, f"--format {fmt} writes one checkpoint's objects: pass "
                               f"--checkpoint K or last (all is for --format json)")
    run = review.open_run(args.run)
    try:
        info = formats.run_data(run)
        rows = export_candidates(args.run, args.checkpoint, on_label=args.on_label,
                                 decided=args.decided, ids=True)
        inputs = [run.ann_path, run.hidden_path, run.store_path, run.dir / "config.json"]
        images_dir = run.images_dir
    finally:
        run.close()
    out = Path(args.out)
    if fmt == "fiftyone":
        if out.exists() and not out.is_dir():
            raise InputError(out, "--format fiftyone writes a folder, and this is a file")
        if not out.parent.is_dir():
            raise InputError(out, f"output folder {out.parent} does not exist")
        out.mkdir(exist_ok=True)
        labels, mined = formats.fiftyone_dataset(rows, info)
        files = [(out / "labels.json", json_bytes(labels)), (out / "mined.json", json_bytes(mined)),
                 (out / "load.py", formats.fiftyone_script(
                     Path(images_dir).resolve() if images_dir else "IMAGES").encode())]
    elif fmt == "coco":
        files = [(out, json_bytes(formats.coco_mined(rows, info)))]
    elif fmt == "cvat":
        names = "".join(f"{Path(images_dir or '.').resolve() / info.images[i][0]}\n"
                        for i in sorted({r["image_id"] for r in rows}))
        files = [(_beside(out, ".cvat-labels.json"), json_bytes(formats.cvat_labels(info), indent=2)),
                 (_beside(out, ".images.txt"), names.encode()),
                 (out, json_bytes(formats.cvat_task(rows, info)))]
    else:  # labelstudio
        prefix = args.image_url_prefix
        if prefix is None:
            prefix = formats.default_url_prefix(images_dir)
        files = [(_beside(out, ".labelconfig.xml"), formats.labelstudio_config(info).encode()),
                 (out, json_bytes(formats.labelstudio_tasks(rows, info, prefix), indent=1))]
    for path, _ in files:
        refuse_overwrite(path, *inputs)
    atomic_write_many(files)
    n_images = len({r["image_id"] for r in rows})
    extra = ", ".join(str(p) for p, _ in files[:-1] if p != out)
    print(f"wrote {len(rows)} objects on {n_images} images as {fmt} to {out}"
          + (f" (with {extra})" if extra else ""))
    return 0
