"""`comining evaluate`: detection AP on complete annotations, and mining quality."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from comining.errors import InputError

DESCRIPTION = """\
Two evaluations of a trained run (give either or both):

  detection  --images DIR --ann FULL_VAL.json
      COCO box AP, AP50, AP75, APs, APm, APl of the original view (the test-time
      detector) against complete annotations, one pycocotools pass over all
      detections. A size range with no ground truth prints '-' (null in --json).

  mining     --hidden HIDDEN.json   (the erased annotations from `comining sparsify`)
      at every mined checkpoint, the candidates mined for review (every box above the
      review floor: many, so recall is high and precision low; the curve's columns
      tell more) of the original view, the augmented view, their union (a box found
      by both views counted once) and the boxes both views agreed on: recall of the
      erased annotations (same class, IoU >= 0.5), precision of the candidates (a hit
      on an erased or a kept annotation is correct), the best
      recall at precision >= 0.9 over score thresholds, and (in --json) the
      precision/recall curve over the score. --anchors adds FiftyOne's rule
      (confidence > 0.95, no annotation at IoU 0.5) and cleanlab's overlooked-box
      scores (if cleanlab is installed) on this run's predictions.
      And the review queue as annotator effort: walking each checkpoint's objects in
      queue order, the queue's AP against the erased labels (object level: any class;
      class level: the object's best class), the erased objects found after reviewing
      0.5x, 1x and 2x as many items as labels were erased, and the best recall at
      precision >= 0.9."""

EPILOG = """\
examples:
  comining evaluate --run runs/hard --images data/images --ann data/annotations/val.json
  comining evaluate --run runs/hard --hidden data/train_hard_hidden.json --json mining.json
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="COCO AP on complete annotations; mining recall/precision on erased ones",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a trained run folder")
    p.add_argument("--images", metavar="DIR", help="image root of --ann (detection AP)")
    p.add_argument("--ann", metavar="FULL_VAL.json",
                   help="completely annotated COCO json to evaluate the detector on")
    p.add_argument("--hidden", metavar="HIDDEN.json",
                   help="the erased annotations of the run's training set (mining quality)")
    p.add_argument("--checkpoint", default=None, metavar="K|last",
                   help="checkpoint iteration (default: last for AP, every mined one for mining)")
    p.add_argument("--anchors", action="store_true",
                   help="with --hidden: also score FiftyOne's rule and cleanlab (needs a forward "
                        "pass of the checkpoint over the training images)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--batch-size", type=int, default=8, help="inference batch size (default: 8)")
    p.add_argument("--json", metavar="OUT", help="also write the results as json (atomically)")
    p.set_defaults(func=run)


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _checkpoint_arg(value):
    if value in (None, "last"):
        return value
    try:
        it = int(value)
    except ValueError:
        raise InputError(None, f"--checkpoint must be an iteration number or 'last', not {value!r}") from None
    if it < 0:
        raise InputError(None, "--checkpoint must not be negative")
    return it


def run_training_set(run_dir: Path) -> tuple[str, str | None]:
    """(training annotation json, image root) of a run: its store's meta, else config.json."""
    from comining import store
    from comining.config import TrainConfig

    db = run_dir / store.STORE_NAME
    if db.exists():
        conn = store.connect(db)
        try:
            meta = store.get_meta(conn)
        finally:
            conn.close()
        if meta.get("ann_path"):
            return meta["ann_path"], meta.get("images_dir")
    cfg = run_dir / "config.json"
    if cfg.exists():
        config = TrainConfig.load(cfg)
        return config.ann, config.images
    raise InputError(run_dir, "not a comining run folder (no comining.sqlite nor config.json)")


def detection_ap(run_dir: Path, images: str, ann: str, checkpoint, device: str,
                 batch_size: int) -> dict:
    from comining.coco import load_coco_json
    from comining.detection_ap import coco_ap
    from comining.predict import predict_dataset

    if not Path(images).is_dir():
        raise InputError(images, "image folder not found")
    gt = load_coco_json(ann)
    dets = predict_dataset(run_dir, images, ann, checkpoint=checkpoint or "last", device=device,
                           batch_size=batch_size)
    ap = coco_ap(gt, dets, per_class=True)
    names = {c["id"]: str(c.get("name", c["id"])) for c in gt["categories"]}
    if len(set(names.values())) < len(names):    # same-named classes: tell them apart by id
        names = {c: f"{n} ({c})" for c, n in names.items()}
    ap["per_class"] = {names[c]: v for c, v in ap["per_class"].items()}
    return {**ap, "n_detections": len(dets), "n_images": len(gt["images"]),
            "n_annotations": sum(1 for a in gt.get("annotations", []) if not a.get("iscrowd", 0))}


def check_hidden(sparse: dict, hidden: dict, sparse_path, hidden_path) -> None:
    """HIDDEN.json must be the erased part of this run's training json."""
    train_images = {im["id"] for im in sparse["images"]}
    stray = sorted({a["image_id"] for a in hidden.get("annotations", [])} - train_images)
    if stray:
        raise InputError(hidden_path, f"{len(stray)} images of the erased annotations are not in the "
                                      f"run's training set {sparse_path} (e.g. image {stray[0]}): "
                                      f"is this the hidden file of another dataset?")
    kept_ids = {a["id"] for a in sparse.get("annotations", [])}
    both = [a["id"] for a in hidden.get("annotations", []) if a["id"] in kept_ids]
    if both:
        raise InputError(hidden_path, f"{len(both)} of its annotations (e.g. id {both[0]}) are also in "
                                      f"the run's training json {sparse_path}: this is not the erased "
                                      f"part of that split (another protocol or seed?)")
    if not hidden.get("annotations"):
        print(f"note: {hidden_path} has no erased annotations: recall is undefined ('-')",
              file=sys.stderr)


def mining(run_dir: Path, hidden_path: str, checkpoint) -> tuple[dict, dict, dict, dict]:
    """(mining quality per checkpoint and selection, queue quality per checkpoint,
    the training set's kept annotations, the erased ones)."""
    from comining import store
    from comining.coco import load_coco_json
    from comining.mining_quality import SELECTIONS, mining_quality, mining_scores
    from comining.queue_metrics import queue_quality, queue_scores

    ann_path, _ = run_training_set(run_dir)
    sparse = load_coco_json(ann_path)
    hidden = load_coco_json(hidden_path)
    check_hidden(sparse, hidden, ann_path, hidden_path)
    conn = store.connect(run_dir / store.STORE_NAME)
    try:
        if checkpoint is None:
            if not store.checkpoints(conn):
                raise InputError(run_dir, "no mined checkpoint in this run yet")
            rows = store.candidates(conn)
            objs = store.objects(conn)
            mined = [r["iteration"] for r in store.checkpoints(conn)]
        else:
            it = store.resolve_checkpoint(conn, checkpoint, run_dir)
            rows = store.candidates(conn, it)
            objs = store.objects(conn, it)
            mined = [it]
    finally:
        conn.close()
    quality = mining_quality(rows, sparse, hidden)
    queue = queue_quality(objs, sparse, hidden)
    # A mined checkpoint without a single candidate still gets its (empty) rows.
    for it in mined:
        if it not in quality:
            quality[it] = {s: mining_scores([], sparse, hidden) for s in SELECTIONS}
        if it not in queue:
            queue[it] = queue_scores([], sparse, hidden)
    return dict(sorted(quality.items())), dict(sorted(queue.items())), sparse, hidden


def anchors(run_dir: Path, sparse: dict, hidden: dict, checkpoint, device: str,
            batch_size: int) -> dict:
    from comining.errors import CominingError
    from comining.anchors import cleanlab_overlooked, fiftyone_missing
    from comining.mining_quality import mining_scores
    from comining.predict import predict_dataset

    ann_path, images_dir = run_training_set(run_dir)
    if not images_dir:
        raise InputError(run_dir, "the run does not record its training images folder")
    preds = predict_dataset(run_dir, images_dir, ann_path, checkpoint=checkpoint or "last",
                            device=device, batch_size=batch_size)
    out = {"fiftyone": mining_scores(fiftyone_missing(preds, sparse), sparse, hidden)}
    try:
        out["cleanlab"] = mining_scores(cleanlab_overlooked(preds, sparse), sparse, hidden)
    except CominingError as exc:
        out["cleanlab"] = {"skipped": str(exc)}
    return out


def print_ap(result: dict, checkpoint) -> None:
    from comining.detection_ap import AP_KEYS

    print(f"detection on {result['n_images']} images, {result['n_annotations']} annotations, "
          f"{result['n_detections']} detections (checkpoint {checkpoint or 'last'}):")
    print("  " + "  ".join(f"{k:>6}" for k in AP_KEYS))
    print("  " + "  ".join(f"{_fmt(result[k]):>6}" for k in AP_KEYS))
    if result.get("per_class"):
        print("  AP per class: " + ", ".join(f"{name} {_fmt(v)}"
                                             for name, v in result["per_class"].items()))


def _mining_row(name: str, m: dict, it="") -> str:
    return (f"  {str(it):>10}  {name:<10} {m['n_mined']:>7} {m['n_hit_erased']:>6}/{m['n_erased']:<6}"
            f" {_fmt(m['recall']):>7} {_fmt(m['precision']):>9} {_fmt(m['recall_at_p90']):>8}"
            f" {_fmt(m['ap']):>7}")


def print_mining(quality: dict, extra: dict | None) -> None:
    print("candidates mined for review, every box above the floor (recall of the erased "
          "annotations; precision of the candidates):")
    print(f"  {'checkpoint':>10}  {'selection':<10} {'mined':>7} {'found/erased':>13} {'recall':>7}"
          f" {'precision':>9} {'R@P>=.9':>8} {'PR-AUC':>7}")
    for it, per_sel in quality.items():
        for name, m in per_sel.items():
            print(_mining_row(name, m, it))
    for name, m in (extra or {}).items():
        if "skipped" in m:
            print(f"  {'anchor':>10}  {name:<10} skipped: {m['skipped']}")
        else:
            print(_mining_row(name, m, "anchor"))


def print_queue(queue: dict) -> None:
    from comining.queue_metrics import effort_line

    print("review queue (erased objects found by reviewing items in queue order; object level: "
          "any class):")
    print(f"  {'checkpoint':>10} {'items':>7} {'erased':>7} {'AP':>6} {'AP cls':>6}"
          f" {'@0.5x':>6} {'@1x':>6} {'@2x':>6} {'R@P>=.9':>8}")
    for it, q in queue.items():
        o = q["object"]
        print(f"  {it:>10} {q['n_items']:>7} {q['n_erased']:>7} {_fmt(o['ap'], 2):>6}"
              f" {_fmt(q['class']['ap'], 2):>6} {o['found_at']['0.5']:>6} {o['found_at']['1']:>6}"
              f" {o['found_at']['2']:>6} {_fmt(o['recall_at_p90'], 2):>8}")
    if queue:
        last = list(queue)[-1]
        print(f"  at checkpoint {last}: {effort_line(queue[last])}")


def remaining(run_dir: Path, checkpoint, hidden: dict | None) -> dict | None:
    """The app's estimate of the missing objects left in the queue of a checkpoint (the
    last by default), and with HIDDEN the truth; None when the run has no mined checkpoint."""
    from comining import review, store
    from comining.queue_metrics import missing_left

    if not (run_dir / store.STORE_NAME).exists():     # a run that never mined: nothing to say
        return None
    r = review.open_run(run_dir)
    try:
        if not store.checkpoints(r.conn):
            return None
        it = store.resolve_checkpoint(r.conn, checkpoint or "last", run_dir)
        est = review.remaining_estimate(r, it)
        out = {"checkpoint": it, "estimate": None if est is None else round(est.total, 1),
               "estimate_per_class": None if est is None else {
                   str(c): round(v, 1) for c, v in est.per_class.items()},
               "decisions": None if est is None else est.calibration.n_decisions,
               "extrapolated": None if est is None else round(est.extrapolated, 1),
               "pending_below_decided": None if est is None else est.n_below,
               "lowest_decided_score": None if est is None else est.calibration.lowest_decided,
               "names": {str(c): n for c, n in r.categories.items()}}
        if hidden is not None:
            items = [x for its in review.all_items(r, it).values() for x in its
                     if x.on_label is None and x.state == "pending"]
            accepted = [{"image_id": d.image_id, "bbox": list(d.box)}
                        for d in review.effective_decisions(r.conn) if d.decision == "accepted"]
            truth = missing_left([{"image_id": x.image_id, "bbox": list(x.box)} for x in items],
                                 accepted, hidden)
            out["truth"] = sum(truth.values())
            out["truth_per_class"] = {str(c): n for c, n in truth.items()}
        return out
    finally:
        r.close()


def print_remaining(rem: dict) -> None:
    if rem["estimate"] is None:
        from comining.calibration import NO_ESTIMATE

        print(f"missing objects left at checkpoint {rem['checkpoint']}: {NO_ESTIMATE}")
        return
    truth = f"; truth (HIDDEN): {rem['truth']}" if "truth" in rem else ""
    print(f"missing objects left in the queue at checkpoint {rem['checkpoint']}: about "
          f"{rem['estimate']:.0f} (estimated from {rem['decisions']} decisions){truth}")
    if rem["pending_below_decided"]:
        print(f"  of which about {rem['extrapolated']:.0f} are extrapolated to the "
              f"{rem['pending_below_decided']} pending objects scoring below any decided "
              f"({rem['lowest_decided_score']:.2f}): a rough guess")
    for c, v in rem["estimate_per_class"].items():
        t = f"  truth {rem['truth_per_class'].get(c, 0)}" if "truth" in rem else ""
        print(f"  {rem['names'].get(c, c):>12}: about {v:.0f}{t}")


def run(args) -> int:
    from comining.fileio import atomic_write_json

    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise InputError(run_dir, "run folder not found")
    if bool(args.ann) != bool(args.images):
        raise InputError(None, "--ann and --images go together (the annotations and their images)")
    if args.anchors and not args.hidden:
        raise InputError(None, "--anchors needs --hidden (anchors are scored on the erased annotations)")
    if args.batch_size < 1:
        raise InputError(None, "--batch-size must be at least 1")
    if args.json:
        from comining.fileio import refuse_overwrite
        refuse_overwrite(args.json, args.ann, args.hidden)
        parent = Path(args.json).parent
        if not parent.is_dir():
            raise InputError(args.json, f"output folder {parent} does not exist")
    checkpoint = _checkpoint_arg(args.checkpoint)

    result: dict = {"run": str(run_dir)}
    if args.ann:
        ap = detection_ap(run_dir, args.images, args.ann, checkpoint, args.device, args.batch_size)
        result.update({"ann": args.ann, "checkpoint": checkpoint or "last", **ap})
        print_ap(ap, checkpoint)
    if args.hidden:
        quality, queue, sparse, hidden = mining(run_dir, args.hidden, checkpoint)
        extra = None
        if args.anchors:
            extra = anchors(run_dir, sparse, hidden, checkpoint, args.device, args.batch_size)
        result["hidden"] = args.hidden
        result["mining"] = {str(k): v for k, v in quality.items()}
        result["queue"] = {str(k): v for k, v in queue.items()}
        if extra is not None:
            result["anchors"] = extra
        print_mining(quality, extra)
        print_queue(queue)
    rem = remaining(run_dir, checkpoint, hidden if args.hidden else None)
    if rem is not None:
        result["remaining"] = rem
        print_remaining(rem)
    if args.json:
        atomic_write_json(args.json, result, indent=1)
        print(f"wrote {args.json}")
    return 0
