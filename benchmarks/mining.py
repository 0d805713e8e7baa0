"""Mining for review, measured as annotator effort: an ablation from the paper's rule to
the product's queue, with anchors, on two generated settings.

For each setting (a generated dataset, its hard split, co-mining trained with the demo's
CPU recipe: FCOS MobileNetV3 FPN-64 from scratch, 160 px, 1,200 iterations of 8) and each
of its checkpoints, both views' detections over the training set are taken ONCE at a very
low score (class-wise NMS theta1, 100 a view), in original pixels; every row below is a
rule applied to those same detections, and scored as a review queue against the erased
labels (comining.queue_metrics: object level = any class, class level = the best class):

  paper        co-generation per view (tau, theta1, same-class theta2 0.4, crowd), the
               union of the views (a box of one view dropped where a higher one of the
               other view has its class at IoU >= 0.5), ranked by score: the queue before
  + floor      the same at the review floor instead of tau (recall first)
  + labelled   + drop a box overlapping an annotation of ANY class at IoU >= 0.5
  + objects    + both views' boxes of any class grouped into objects, ranked by their best box
  + fused rank + ranked by both views (co-generation's class scores)
  + test-time  + the detector's test-time scores (FCOS: with centerness) instead of the
               class scores
  + soft       + overlapping objects and objects overlapping a label ranked down
               (Gaussian Soft-NMS, sigma 0.5): comining.mining.image_candidates
  + 2nd pass   = the product (its default ReviewMining): the same, fed the detections of
               two passes joined, at the training size and a little larger (the images'
               own size, at most 1.2x the training size: comining.mining.review_sizes);
               the variants and anchors below are at the training size only, but for
  second pass  a second pass at 1.4x, 1.6x and 2x the training size instead
  variants     other ranks, floors, caps, one view only
  anchors      FiftyOne's 'possibly missing' (> 0.95, unmatched at IoU 0.5 any class),
               Datumaro's missing-annotation rule (unmatched at IoU 0.75, label-agnostic),
               cleanlab's overlooked-box score (its default threshold, and 0.5), all on
               the original view's test-time detections (what a user would feed them)

Usage:
  python benchmarks/mining.py             # trains what is missing (about 10 min a setting
                                          # on 2 cores), then measures (a few minutes)
  python benchmarks/mining.py --work DIR  # where datasets and runs live (reused)

Writes benchmarks/results/mining.md and mining.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import cpu_name, git_commit  # noqa: E402

PRODUCT = " = the product"    # the row that is the product's default queue

# The demo's dataset (comining demo's defaults) and another: other classes, image size, seed.
SETTINGS = {
    "demo": {"synth": {"seed": 0}, "split_seed": 0,
             "what": "comining demo's data: 300 images 256 px, 4 classes, seed 0"},
    "other": {"synth": {"classes": 7, "size": 320, "seed": 3}, "split_seed": 3,
              "what": "300 images 320 px, 7 classes, seed 3"},
}
RAW_FLOOR = 0.01        # every row's detections: nothing a row keeps is below this
LAST = "last"


# ----------------------------------------------------------------------------- data and runs


def prepare(name: str, spec: dict, work: Path, *, train_missing: bool = True,
            settings: dict | None = None, device: str = "cpu", run_name: str = "run",
            seed: int = 0) -> dict:
    """Generate, sparsify (hard) and train what is missing (WORK/NAME/RUN_NAME, by the
    demo's CPU recipe unless `settings` say otherwise, with training seed `seed`: the data
    do not depend on it); returns the paths."""
    from comining.cli.demo import CPU_SETTINGS
    from comining.config import TrainConfig
    from comining.checkpoints import list_checkpoints
    from comining.engine import train
    from comining.fileio import atomic_write_json, read_json
    from comining.sparsify import sparsify
    from comining.synth import generate

    root = work / name
    data = root / "data"
    full = data / "annotations" / "train.json"
    if not full.exists():
        generate(data, **spec["synth"])
    sparse, hidden = data / "annotations" / "train_hard.json", data / "annotations" / "train_hard_hidden.json"
    if not sparse.exists() or not hidden.exists():
        kept, erased = sparsify(read_json(full), "hard", seed=spec["split_seed"])
        atomic_write_json(hidden, erased)
        atomic_write_json(sparse, kept)
    run = root / run_name
    config = TrainConfig(images=str(data / "images"), ann=str(sparse), run=str(run),
                         method="comining", weights_backbone="none", device=device,
                         seed=seed, hidden=str(hidden), num_workers=1, log_every=10,
                         **(settings or CPU_SETTINGS))
    done = list_checkpoints(run)
    if train_missing and (not done or done[-1][0] < config.iters):
        print(f"[{name}] training ({config.iters} iterations) in {run}", flush=True)
        train(config, resume=bool(done), progress=False)
    return {"sparse": sparse, "hidden": hidden, "run": run}


def raw_detections(run: Path, iteration: int, *, class_score: bool, size: int | None = None,
                   device: str = "cpu") -> dict:
    """{image_id: {view: (xywh (N, 4), category ids (N,), scores (N,))}} of one checkpoint,
    the images fed at `size` px (longer side; default the training size), cached in
    RUN/bench/ as plain arrays (never pickled)."""
    name = f"raw_{iteration}_{'class' if class_score else 'test'}{f'_{size}px' if size else ''}.npz"
    cache = run / "bench" / name
    if not cache.exists():
        from comining.data import DetectionDataset
        from comining.engine import RunContext
        from comining.mining import VIEWS, detect_views

        ctx = RunContext.open(run, device=device)
        it, path = ctx.checkpoint_path(iteration)
        ctx.load_weights(path)
        dataset = ctx.mining_dataset
        if size and size != dataset.image_size:
            dataset = DetectionDataset(dataset.coco, size)
        cats = ctx.mining_dataset.coco.categories
        rows = []
        for rec, dets in detect_views(ctx.dense, dataset, score_thresh=RAW_FLOOR,
                                      nms_iou=ctx.config.thresholds.nms_iou, max_per_image=100,
                                      augment=ctx.config.augment, device=ctx.device,
                                      batch_size=ctx.config.batch_size, num_workers=0,
                                      seed=ctx.config.seed + it, class_score=class_score):
            for v, view in enumerate(VIEWS):
                boxes, labels, scores = dets[view]
                for b, lab, s in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
                    rows.append([rec.id, v, b[0], b[1], b[2] - b[0], b[3] - b[1],
                                 cats.to_category_id(int(lab)), s])
        cache.parent.mkdir(exist_ok=True)
        arr = np.asarray(rows, np.float64).reshape(-1, 8)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, rows=arr)
        tmp.replace(cache)
    rows = np.load(cache, allow_pickle=False)["rows"]
    out: dict = defaultdict(lambda: {0: [], 1: []})
    for r in rows:
        out[int(r[0])][int(r[1])].append(r)
    return {im: {v: (np.asarray([r[2:6] for r in rs]).reshape(-1, 4),
                     np.asarray([int(r[6]) for r in rs], np.int64),
                     np.asarray([r[7] for r in rs])) for v, rs in views.items()}
            for im, views in out.items()}


SECOND_PASS = (1.4, 1.6, 2.0)    # variants: a second pass at these multiples of the training size


def second_pass_sizes(image_size: int) -> list[int]:
    from comining.mining import scaled_size

    return sorted({scaled_size(image_size, f) for f in SECOND_PASS})


def product_sizes(run: Path) -> list[int]:
    """The input sizes the product mines this run's images at by default
    (comining.mining.review_sizes: the training size, then a little larger)."""
    from comining.coco import load_coco
    from comining.config import ReviewMining, TrainConfig
    from comining.data import DetectionDataset
    from comining.mining import review_sizes

    config = TrainConfig.load(run / "config.json")
    coco = load_coco(config.ann, config.images)
    return review_sizes(DetectionDataset(coco, config.image_size), ReviewMining())


class Labels:
    """The training set's kept annotations (what mining must not propose) per image."""

    def __init__(self, sparse: dict):
        self.images = {im["id"]: im for im in sparse["images"]}
        self.boxes, self.classes, self.crowd = defaultdict(list), defaultdict(list), defaultdict(list)
        for a in sparse["annotations"]:
            if a.get("iscrowd", 0):
                self.crowd[a["image_id"]].append(a["bbox"])
            else:
                self.boxes[a["image_id"]].append(a["bbox"])
                self.classes[a["image_id"]].append(a["category_id"])

    def of(self, image_id):
        return (np.asarray(self.boxes[image_id], np.float64).reshape(-1, 4),
                np.asarray(self.classes[image_id], np.int64),
                np.asarray(self.crowd[image_id], np.float64).reshape(-1, 4))


# ----------------------------------------------------------------------------- the rules


def _xyxy(xywh):
    import torch
    b = torch.as_tensor(np.asarray(xywh, np.float64).reshape(-1, 4))
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)


def co_generation_queue(raw, labels: Labels, *, score: float, nms_iou: float,
                        any_class_iou: float | None = None) -> list[dict]:
    """Each view's co-generation (the training rule, at `score`), the union of the views,
    optionally without boxes on an annotation of any class; ranked by score."""
    from comining.config import MiningThresholds
    from comining.mining_quality import select

    boxes_out = co_generation_boxes(raw, labels, MiningThresholds(score_thresh=score, nms_iou=nms_iou))
    if any_class_iou is not None:
        from comining.boxes import iou_matrix
        kept = []
        for b in boxes_out:
            gt = labels.of(b["image_id"])[0]
            if not len(gt) or iou_matrix([b["bbox"]], gt).max() < any_class_iou:
                kept.append(b)
        boxes_out = kept
    return select(boxes_out, "union")


def co_generation_boxes(raw, labels: Labels, thresholds) -> list[dict]:
    """Each view's boxes that training's co-generation keeps (comining.cogeneration:
    tau, theta1, theta2 against the kept annotations, crowd regions), as candidate dicts
    (image_id, bbox, category_id, score, view)."""
    import torch

    from comining.cogeneration import co_generate

    boxes_out = []
    for image_id, views in raw.items():
        gt, gt_cls, crowd = labels.of(image_id)
        for v, (xywh, cats, scores) in views.items():
            if not len(scores):
                continue
            keep = co_generate(_xyxy(xywh), torch.as_tensor(scores), torch.as_tensor(cats),
                               _xyxy(gt), torch.as_tensor(gt_cls), _xyxy(crowd), thresholds).numpy()
            for k in keep:
                boxes_out.append({"image_id": image_id, "bbox": xywh[k].tolist(),
                                  "category_id": int(cats[k]), "score": float(scores[k]),
                                  "view": ("original", "augmented")[v], "agreed": None})
    return boxes_out


def object_queue(raw, labels: Labels, review, *, views=(0, 1)) -> list[dict]:
    """Objects as comining.objects makes them (`review`: a ReviewMining), one dict each."""
    from comining.objects import review_objects

    out = []
    for image_id, per_view in raw.items():
        gt, gt_cls, crowd = labels.of(image_id)
        parts = [(v, *per_view[v]) for v in views]
        xywh = np.concatenate([p[1] for p in parts]).reshape(-1, 4)
        cats = np.concatenate([p[2] for p in parts])
        scores = np.concatenate([p[3] for p in parts])
        vs = np.concatenate([np.full(len(p[3]), p[0]) for p in parts])
        keep = scores > review.score_floor
        objs = review_objects(xywh[keep], scores[keep], cats[keep], vs[keep], label_boxes=gt,
                              label_classes=gt_cls, crowd_boxes=crowd, group_iou=review.group_iou,
                              label_iou=review.label_iou, rank=review.rank,
                              soft_sigma=review.soft_sigma, max_objects=review.max_objects)
        out.extend({"image_id": image_id, "bbox": list(o.box), "category_id": o.category_id,
                    "score": o.score, "on_label": o.on_label} for o in objs)
    return out


def product_queue(raws: list, labels: Labels, review, sparse: dict) -> list[dict]:
    """The product's own path: comining.mining.image_candidates on each image, fed each
    pass's detections (one raw_detections per input size), each pass cut at the review
    floor and its best max_per_view, then joined (comining.mining.mine_dataset's way)."""
    import torch

    from comining.coco import CategoryMap
    from comining.mining import image_candidates

    cmap = CategoryMap.from_categories(sparse["categories"])

    class Rec:   # what image_candidates reads of a training image record
        def __init__(self, image_id):
            gt, gt_cls, crowd = labels.of(image_id)
            self.id = image_id
            self.boxes = np.concatenate([gt[:, :2], gt[:, :2] + gt[:, 2:]], axis=1)
            self.labels = np.asarray([cmap.to_label(int(c)) for c in gt_cls], np.int64)
            self.crowd_boxes = np.concatenate([crowd[:, :2], crowd[:, :2] + crowd[:, 2:]], axis=1)

    def cut(per_view, v):
        xywh, cats, scores = per_view[v]
        keep = scores > review.score_floor
        order = np.argsort(-scores[keep], kind="stable")[: review.max_per_view]
        return (_xyxy(xywh[keep][order]).float(),
                torch.as_tensor([cmap.to_label(int(c)) for c in cats[keep][order]], dtype=torch.int64),
                torch.as_tensor(scores[keep][order], dtype=torch.float32))

    objects = {}
    for image_id in set().union(*raws):
        dets = {}
        for v, view in enumerate(("original", "augmented")):
            passes = [cut(raw[image_id], v) for raw in raws if image_id in raw]
            dets[view] = tuple(torch.cat([p[k] for p in passes]) for k in range(3))
        for c in image_candidates(Rec(image_id), dets, cmap, review):
            objects[c["object"]["key"]] = c["object"]
    return list(objects.values())


def anchor_queues(raw_test, labels: Labels, sparse: dict) -> dict:
    """The anchors on the original view's test-time detections (what a user feeds them)."""
    from comining.errors import CominingError
    from comining.anchors import cleanlab_overlooked, datumaro_missing, fiftyone_missing

    preds = [{"image_id": im, "bbox": b.tolist(), "category_id": int(c), "score": float(s)}
             for im, views in raw_test.items()
             for b, c, s in zip(*views[0])]
    out = {"FiftyOne 'possibly missing' (> 0.95, IoU 0.5)": fiftyone_missing(preds, sparse),
           "Datumaro missing annotation (IoU 0.75)": datumaro_missing(preds, sparse)}
    for name, th in (("cleanlab overlooked (default threshold)", None),
                     ("cleanlab overlooked (threshold 0.5)", 0.5)):
        try:
            out[name] = cleanlab_overlooked(preds, sparse, high_probability_threshold=th)
        except CominingError as exc:
            out[name] = {"skipped": str(exc)}
    return out


# ----------------------------------------------------------------------------- the table


def rows_for(raw, raw_test, labels: Labels, sparse: dict, config, *, anchors: bool,
             variants: bool, raw_sizes: dict | None = None, second_passes: dict | None = None) -> dict:
    """raw: detections with co-generation's class scores; raw_test: the test-time ones;
    raw_sizes: {size px: test-time ones at that size} for each further size the product
    mines at (its last row); second_passes: the same for other sizes of a second pass
    (variants: how far enlarging the images pays)."""
    from comining.config import ReviewMining

    tau, theta1 = config.thresholds.score_thresh, config.thresholds.nms_iou
    base = ReviewMining()
    assert base.score == "detection", "the product row below scores with raw_test"
    plain = dataclasses.replace(base, soft_sigma=None)
    q = {
        "paper (tau, union of views)": co_generation_queue(raw, labels, score=tau, nms_iou=theta1),
        f"+ recall-first floor ({base.score_floor})":
            co_generation_queue(raw, labels, score=base.score_floor, nms_iou=theta1),
        "+ nothing on a labelled object (IoU >= 0.5, any class)":
            co_generation_queue(raw, labels, score=base.score_floor, nms_iou=theta1,
                                any_class_iou=base.label_iou),
        "+ one item per object (ranked by its best box)":
            object_queue(raw, labels, dataclasses.replace(plain, rank="max")),
        f"+ fused ranking ({base.rank} of the views' best scores)": object_queue(raw, labels, plain),
        "+ test-time scores (FCOS: with centerness)": object_queue(raw_test, labels, plain),
        f"+ overlaps ranked down (Soft-NMS sigma {base.soft_sigma})" + ("" if raw_sizes else PRODUCT):
            product_queue([raw_test], labels, base, sparse),
    }
    if raw_sizes:
        sizes = " and ".join(f"{k} px" for k in raw_sizes)
        q[f"+ a second pass, a little larger ({sizes}){PRODUCT}"] = product_queue(
            [raw_test, *raw_sizes.values()], labels, base, sparse)
    for k, raw_k in (second_passes or {}).items():
        q[f"  variant: second pass at {k} px ({k / config.image_size:.1f}x)"] = product_queue(
            [raw_test, raw_k], labels, base, sparse)
    if variants:
        for rank in ("noisy_or", "geometric", "min", "max"):
            q[f"  variant: rank {rank}"] = object_queue(raw_test, labels,
                                                        dataclasses.replace(base, rank=rank))
        for floor in (0.02, 0.1, 0.2, 0.3):
            q[f"  variant: floor {floor}"] = object_queue(
                raw_test, labels, dataclasses.replace(base, score_floor=floor))
        for cap in (10, 100):
            q[f"  variant: at most {cap} objects an image"] = object_queue(
                raw_test, labels, dataclasses.replace(base, max_objects=cap))
        for sigma in (0.25, 1.0):
            q[f"  variant: Soft-NMS sigma {sigma}"] = object_queue(
                raw_test, labels, dataclasses.replace(base, soft_sigma=sigma))
        for iou in (0.4, 0.6):
            q[f"  variant: grouping IoU {iou}"] = object_queue(
                raw_test, labels, dataclasses.replace(base, group_iou=iou))
            q[f"  variant: label IoU {iou}"] = object_queue(
                raw_test, labels, dataclasses.replace(base, label_iou=iou))
        q["  variant: the original view only"] = object_queue(raw_test, labels, base, views=(0,))
    if anchors:
        q.update({f"anchor: {k}": v for k, v in anchor_queues(raw_test, labels, sparse).items()})
    return q


def score_rows(queues: dict, sparse: dict, hidden: dict) -> dict:
    from comining.queue_metrics import queue_scores

    out = {}
    for name, items in queues.items():
        if isinstance(items, dict):
            out[name] = items
            continue
        out[name] = queue_scores(items, sparse, hidden)
    return out


def _pct(v):
    return "-" if v is None else f"{100 * v:.0f} %"


def _num(v, d=2):
    return "-" if v is None else f"{v:.{d}f}"


def table(scored: dict) -> list[str]:
    lines = ["| rule | items | AP object | AP class | found @0.5x | @1x | @2x | R@P>=0.9 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in scored.items():
        if "skipped" in s:
            lines.append(f"| {name.strip()} | skipped: {s['skipped']} |||||||")
            continue
        o = s["object"]
        lines.append(f"| {name.strip()} | {s['n_items']} | {_num(o['ap'])} | {_num(s['class']['ap'])} |"
                     f" {_pct(o['recall_at']['0.5'])} | {_pct(o['recall_at']['1'])} |"
                     f" {_pct(o['recall_at']['2'])} | {_pct(o['recall_at_p90'])} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/comining-bench-mining", help="datasets and runs (reused)")
    p.add_argument("--settings", default=",".join(SETTINGS), help="which settings (comma-separated)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--no-train", action="store_true", help="measure the checkpoints there are")
    args = p.parse_args(argv)

    import torch

    from comining.config import TrainConfig
    from comining.checkpoints import list_checkpoints
    from comining.fileio import atomic_write_json, read_json

    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.work)
    started = time.time()
    results = {}
    for name in args.settings.split(","):
        spec = SETTINGS[name]
        paths = prepare(name, spec, work, train_missing=not args.no_train)
        sparse, hidden = read_json(paths["sparse"]), read_json(paths["hidden"])
        labels = Labels(sparse)
        config = TrainConfig.load(paths["run"] / "config.json")
        its = [it for it, _ in list_checkpoints(paths["run"])]
        sizes = product_sizes(paths["run"])
        assert sizes[0] == config.image_size, "the product's first pass is the training size"
        per_ckpt = {}
        for it in its:
            last = it == its[-1]
            raw = raw_detections(paths["run"], it, class_score=True)
            raw_test = raw_detections(paths["run"], it, class_score=False)
            raw_sizes = {k: raw_detections(paths["run"], it, class_score=False, size=k)
                         for k in sizes[1:]}
            second = {k: raw_detections(paths["run"], it, class_score=False, size=k)
                      for k in second_pass_sizes(config.image_size) if last}
            queues = rows_for(raw, raw_test, labels, sparse, config, anchors=last, variants=last,
                              raw_sizes=raw_sizes, second_passes=second)
            per_ckpt[it] = score_rows(queues, sparse, hidden)
            print(f"[{name}] checkpoint {it}: measured {len(queues)} rules", flush=True)
        results[name] = {"what": spec["what"], "n_erased": len(hidden["annotations"]),
                         "checkpoints": per_ckpt}

    meta = {"command": "python benchmarks/mining.py " + " ".join(argv or sys.argv[1:]),
            "hardware": f"{cpu_name()}, {torch.get_num_threads()} threads, no GPU",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(), "seconds": round(time.time() - started)}
    lines = ["# Mining for review: the queue as annotator effort", "",
             f"Command: `{meta['command']}`  ", f"Hardware: {meta['hardware']}  ",
             f"Date: {meta['date']}, commit {meta['commit']}, {meta['seconds']} s", "",
             "Each row is a rule applied to the same detections of both views (see the script's "
             "docstring), scored as a review queue against the labels the hard split erased: an "
             "item finds an erased object when its box matches it at IoU >= 0.5, one to one in "
             "queue order (object level: any class; class level: its best class). 'found @1x': "
             "the share of the erased objects found after reviewing as many items as labels were "
             "erased. R@P>=0.9: the best recall of a queue prefix with precision >= 0.9.", ""]
    for name, r in results.items():
        its = list(r["checkpoints"])
        lines += [f"## {name}: {r['what']}; {r['n_erased']} labels erased", "",
                  f"### last checkpoint ({its[-1]})", ""]
        lines += table(r["checkpoints"][its[-1]])
        lines += ["", "### across training: the paper's rule vs the product, per checkpoint", "",
                  "| checkpoint | rule | items | AP object | AP class | found @1x | @2x |", "|---|---|---|---|---|---|---|"]
        for it, scored in r["checkpoints"].items():
            for key in list(scored)[:1] + [k for k in scored if k.endswith(PRODUCT)]:
                s = scored[key]
                lines.append(f"| {it} | {key} | {s['n_items']} | {_num(s['object']['ap'])} |"
                             f" {_num(s['class']['ap'])} | {_pct(s['object']['recall_at']['1'])} |"
                             f" {_pct(s['object']['recall_at']['2'])} |")
        lines.append("")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    (out / "mining.md").write_text(text)
    slim = {name: {**r, "checkpoints": {str(it): {k: {kk: vv for kk, vv in v.items()}
                                                  for k, v in sc.items()}
                                        for it, sc in r["checkpoints"].items()}}
            for name, r in results.items()}
    atomic_write_json(out / "mining.json", {"meta": meta, "results": slim}, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
