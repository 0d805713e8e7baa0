"""Small co-mining runs on disk for the review and export tests (and the benchmark).

`make_run(root)` writes what the training engine leaves in a run directory::

    root/images/000001.png ...        shapes on a textured background
    root/train.json                   the input (sparse) annotations
    root/hidden.json                  the erased annotations (HIDDEN.json of sparsify)
    root/run/config.json, metrics.jsonl, comining.sqlite (two mined checkpoints)

Per image, `n_objects` shapes are drawn; the first `n_annotated` are in train.json, the
rest in hidden.json. Mining finds every hidden object, by view pattern j % 3:
0 -> both views at every checkpoint; 1 -> original view only at the first checkpoint,
both views later; 2 -> augmented view only. Plus `n_false` false positives per image
(original view, same place at every checkpoint).
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from comining import store

CATEGORIES = [{"id": 1, "name": "disc", "supercategory": "shape"},
              {"id": 2, "name": "square", "supercategory": "shape"},
              {"id": 3, "name": "triangle", "supercategory": "shape"}]
THRESHOLDS = {"score_thresh": 0.5, "nms_iou": 0.5, "gt_iou": 0.4}
PALETTE = [(220, 60, 60), (60, 170, 80), (50, 90, 220), (230, 200, 40), (170, 70, 190),
           (40, 190, 200), (240, 140, 40)]


@dataclass
class RunInfo:
    root: Path
    run_dir: Path
    images_dir: Path
    ann_path: Path
    hidden_path: Path | None
    checkpoints: tuple
    images: list = field(default_factory=list)          # COCO image dicts
    annotations: list = field(default_factory=list)     # train.json annotations
    hidden: list = field(default_factory=list)          # hidden.json annotations


def _background(rng, width, height):
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([90 + 60 * xx / width, 110 + 40 * yy / height,
                     130 - 30 * xx / width], axis=2)
    small = rng.normal(0, 18, (max(2, height // 24), max(2, width // 24), 3)).astype(np.float32)
    noise = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    img = np.clip(base + noise + rng.normal(0, 4, (height, width, 3)), 0, 255).astype(np.uint8)
    for _ in range(6):
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(img, p1, p2, tuple(int(v) for v in rng.integers(60, 200, 3)), 1, cv2.LINE_AA)
    return img


def _draw(img, cat, box, colour):
    x, y, w, h = (int(round(v)) for v in box)
    if cat == 1:
        cv2.ellipse(img, (x + w // 2, y + h // 2), (w // 2, h // 2), 0, 0, 360, colour, -1, cv2.LINE_AA)
    elif cat == 2:
        cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), colour, -1)
    else:
        pts = np.array([(x + w // 2, y), (x + w - 1, y + h - 1), (x, y + h - 1)], np.int32)
        cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)


def _layout(rng, n, width, height):
    cols = max(1, math.ceil(math.sqrt(n * width / height)))
    rows = math.ceil(n / cols)
    cw, ch = width / cols, height / rows
    cells = rng.permutation(cols * rows)[:n]
    boxes = []
    for c in cells:
        r, q = divmod(int(c), cols)
        s = rng.uniform(0.5, 0.8)
        w, h = cw * s, ch * s * rng.uniform(0.8, 1.0)
        x = q * cw + rng.uniform(0, cw - w)
        y = r * ch + rng.uniform(0, ch - h)
        boxes.append([round(x, 1), round(y, 1), round(w, 1), round(h, 1)])
    return boxes


def _jitter(rng, box, px=2.0):
    x, y, w, h = box
    return [round(x + rng.uniform(-px, px), 1), round(y + rng.uniform(-px, px), 1),
            round(w + rng.uniform(-px, px), 1), round(h + rng.uniform(-px, px), 1)]


def make_run(root, *, n_images: int = 4, width: int = 480, height: int = 360, n_objects: int = 5,
             n_annotated: int = 2, n_false: int = 1, checkpoints=(100, 200), with_hidden: bool = True,
             with_metrics: bool = True, seed: int = 0) -> RunInfo:
    root = Path(root)
    images_dir = root / "images"
    run_dir = root / "run"
    images_dir.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    info = RunInfo(root=root, run_dir=run_dir, images_dir=images_dir, ann_path=root / "train.json",
                   hidden_path=(root / "hidden.json") if with_hidden else None,
                   checkpoints=tuple(checkpoints))
    objects = {}   # image id -> [(cat, box)]
    for i in range(1, n_images + 1):
        img = _background(rng, width, height)
        boxes = _layout(rng, n_objects, width, height)
        objs = []
        for j, box in enumerate(boxes):
            cat = 1 + (i + j) % len(CATEGORIES)
            _draw(img, cat, box, PALETTE[(i * 3 + j) % len(PALETTE)])
            objs.append((cat, box))
        objects[i] = objs
        name = f"{i:06d}.png"
        cv2.imwrite(str(images_dir / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        info.images.append({"id": i, "file_name": name, "width": width, "height": height})
        for j, (cat, box) in enumerate(objs):
            ann = {"id": 1000 * i + j, "image_id": i, "category_id": cat, "bbox": box,
                   "area": round(box[2] * box[3], 2), "iscrowd": 0}
            (info.annotations if j < n_annotated else info.hidden).append(ann)
    base = {"info": {"description": "comining review test set"}, "licenses": [],
            "images": info.images, "categories": CATEGORIES}
    info.ann_path.write_text(json.dumps(dict(base, annotations=info.annotations)))
    if with_hidden:
        info.hidden_path.write_text(json.dumps(dict(base, annotations=info.hidden)))

    config = {"ann": str(info.ann_path), "images": str(images_dir)}
    if with_hidden:
        config["hidden"] = str(info.hidden_path)
    (run_dir / "config.json").write_text(json.dumps(config))
    conn = store.connect(run_dir / store.STORE_NAME, create=True)
    store.set_meta(conn, ann_path=info.ann_path, images_dir=images_dir, detector="retinanet",
                   method="comining", **({"hidden_path": info.hidden_path} if with_hidden else {}))
    store.write_dataset(conn, info.images, CATEGORIES)
    for k, it in enumerate(checkpoints):
        store.replace_checkpoint_candidates(conn, iteration=it, path=f"checkpoints/iter_{it}.pt",
                                            thresholds=THRESHOLDS,
                                            candidates=mined(objects, k, n_annotated, n_false,
                                                             width, height, seed))
    conn.close()
    if with_metrics:
        with open(run_dir / "metrics.jsonl", "w") as f:
            last = max(checkpoints) if checkpoints else 100
            for s in range(0, last + 1, max(1, last // 20)):
                loss_o = 1.2 * math.exp(-s / (0.6 * last)) + 0.1
                loss_a = 1.3 * math.exp(-s / (0.6 * last)) + 0.12
                f.write(json.dumps({"iteration": s, "lr": 0.01, "loss_original": round(loss_o, 4),
                                    "loss_augmented": round(loss_a, 4),
                                    "loss": round(loss_o + loss_a, 4),
                                    "pseudo_original": s // 10, "pseudo_augmented": s // 12,
                                    "img_s": 20.0}) + "\n")
            f.write('{"iteration": 999, "loss"')   # a half-written last line
    return info


def mined(objects, k, n_annotated, n_false, width, height, seed):
    """Candidates of checkpoint index k (see the module docstring)."""
    rng = np.random.default_rng(seed * 1000 + k + 1)
    out = []
    for image_id, objs in objects.items():
        for j, (cat, box) in enumerate(objs[n_annotated:]):
            score = round(min(0.99, 0.55 + 0.4 * rng.random() + 0.05 * k), 3)
            pattern = j % 3
            views = {0: ("original", "augmented"),
                     1: ("original",) if k == 0 else ("original", "augmented"),
                     2: ("augmented",)}[pattern]
            keys = {v: (image_id, j, v) for v in views}
            for v in views:
                other = "augmented" if v == "original" else "original"
                out.append({"key": keys[v], "partner_key": keys.get(other), "image_id": image_id,
                            "category_id": cat, "bbox": _jitter(rng, box),
                            "score": score if v == "original" else round(score * 0.97, 3),
                            "view": v, "agreed": len(views) == 2})
        frng = np.random.default_rng(seed * 7 + image_id)
        for f in range(n_false):
            w, h = width * 0.12, height * 0.12
            x, y = frng.uniform(0, width - w), frng.uniform(0, height - h)
            out.append({"key": (image_id, "fp", f), "partner_key": None, "image_id": image_id,
                        "category_id": int(frng.integers(1, 4)),
                        "bbox": [round(x, 1), round(y, 1), round(w, 1), round(h, 1)],
                        "score": round(0.5 + 0.05 * f + 0.01 * k, 3), "view": "original",
                        "agreed": False})
    return out


def make_older_store(run_dir, version: int = 0) -> None:
    """Pretend the run's store was written by an older comining."""
    conn = sqlite3.connect(Path(run_dir) / store.STORE_NAME)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    conn.commit()
    conn.close()


def make_empty_run(root) -> Path:
    """A run whose store exists but has no mined checkpoint yet."""
    info = make_run(root, n_images=2, checkpoints=(), with_metrics=False)
    return info.run_dir


# ----------------------------------------------------------------------------- serving (tests)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class serve:
    """`with serve(run_dir) as (demo, url):` the review app in this process, on a free
    port of 127.0.0.1, closed afterwards."""

    def __init__(self, run_dir, **kwargs):
        self.run_dir, self.kwargs = run_dir, kwargs

    def __enter__(self):
        from app.ui import launch
        self.demo, self.url = launch(self.run_dir, port=free_port(), block=False, **self.kwargs)
        return self.demo, self.url

    def __exit__(self, *exc):
        self.demo.close()
        run = getattr(self.demo, "comining_run", None)
        if run is not None:
            run.close()
        return False
