"""A generated COCO detection dataset: shapes on cluttered backgrounds.

`generate(DIR)` writes::

    DIR/images/train/000001.png ...   DIR/annotations/train.json
    DIR/images/val/000001.png ...     DIR/annotations/val.json

Classes differ in shape (disc, square, triangle, ...), never in colour: every
instance takes a random colour from one shared palette, and the distractors
(lines, arcs, tiny blobs) use the same palette.  Sizes run from about 8% to 45% of
the image side (never under 16 px), 2..8 instances per image, overlaps allowed but
no instance loses more than 40% of its area to the ones drawn over it.  Each box is
the tight box of the instance's visible pixels.

Every image is drawn from its own generator seeded by (seed, split, index), so the
output is byte-identical for the same arguments whatever the number of worker
processes, and the val split does not change when only --train changes.

Crowd annotations (`crowd` > 0, default 0: none): in that fraction of the images (each
image decides by its own generator seeded by (seed, split, index, 1), so the pixels
never change), every instance of one class present in the image (chosen by the same
generator) is labelled by ONE COCO crowd annotation instead: `iscrowd: 1`, the class,
the box covering those instances, their pixel count as `area`. It follows the image's
other annotations.
"""

from __future__ import annotations

import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from comining.errors import CominingError, InputError
from comining.fileio import atomic_write_json

# Class names in class-id order (category id = index + 1); the most distinct first.
SHAPES = ["disc", "square", "triangle", "cross", "ring", "star", "bar", "hexagon",
          "ell", "crescent"]
MAX_CLASSES = len(SHAPES)
MIN_SIZE, MAX_SIZE = 64, 4096
MIN_OBJECT_PX = 16          # nominal object size never below this
MIN_FRAC, MAX_FRAC = 0.08, 0.45
MIN_VISIBLE = 0.6           # an instance keeps at least this share of its pixels
MIN_INSTANCES, MAX_INSTANCES = 2, 8

# BGR palette shared by every class and by the distractors.
PALETTE = np.array([
    (40, 40, 220), (40, 150, 240), (40, 220, 230), (60, 200, 60), (170, 200, 40),
    (220, 150, 40), (200, 60, 40), (180, 50, 160), (140, 90, 240), (30, 30, 30),
    (235, 235, 235), (90, 120, 60), (60, 90, 150), (160, 160, 160),
], dtype=np.float32)

_SPLIT_CODE = {"train": 0, "val": 1}
_FILE_RE = re.compile(r"^\d{6,}\.png$")
_SHIFT = 4                  # cv2 fixed-point bits for sub-pixel polygons
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]


# --------------------------------------------------------------------------- shapes

def _circle(r: float, n: int = 48, phase: float = 0.0) -> np.ndarray:
    t = phase + np.arange(n) * (2 * np.pi / n)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _regular(n: int, r: float) -> np.ndarray:
    return _circle(r, n, phase=-np.pi / 2)


def _star(points: int, r_out: float, r_in: float) -> np.ndarray:
    t = -np.pi / 2 + np.arange(2 * points) * (np.pi / points)
    r = np.where(np.arange(2 * points) % 2 == 0, r_out, r_in)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _rect(w: float, h: float) -> np.ndarray:
    return np.array([(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)])


def _cross(arm: float, width: float) -> np.ndarray:
    a, b = arm / 2, width / 2
    return np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a),
                     (-b, b), (-a, b), (-a, -b), (-b, -b)])


def _ell(side: float, width: float) -> np.ndarray:
    s, w = side / 2, width
    return np.array([(-s, -s), (-s + w, -s), (-s + w, s - w), (s, s - w), (s, s), (-s, s)])


# Unit-size outlines: a list of (polygon, fill) with fill 1 = paint, 0 = cut out.
# Each fits about a unit box unrotated, so the nominal size is about the box side.
_UNIT = {
    "disc": [(_circle(0.5), 1)],
    "square": [(_rect(0.78, 0.78), 1)],
    "triangle": [(_regular(3, 0.6) + (0, 0.15), 1)],
    "cross": [(_cross(1.0, 0.32), 1)],
    "ring": [(_circle(0.5), 1), (_circle(0.29), 0)],
    "star": [(_star(5, 0.55, 0.24) + (0, 0.05), 1)],
    "bar": [(_rect(1.0, 0.34), 1)],
    "hexagon": [(_regular(6, 0.5), 1)],
    "ell": [(_ell(0.8, 0.28), 1)],
    "crescent": [(_circle(0.5), 1), (_circle(0.42) + (0.22, 0), 0)],
}
_ROTATES = {name: name not in ("disc", "ring") for name in SHAPES}


def _outline(shape: str, size: float, angle: float) -> list[tuple[np.ndarray, int]]:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, s], [-s, c]]) * size
    return [(poly @ rot, fill) for poly, fill in _UNIT[shape]]


def _raster(parts, cx: float, cy: float, img_size: int):
    """Anti-aliased coverage (uint8) of a placed outline, cropped to its box in the image."""
    pts = np.concatenate([p for p, _ in parts]) + (cx, cy)
    x0 = max(int(math.floor(pts[:, 0].min())) - 1, 0)
    y0 = max(int(math.floor(pts[:, 1].min())) - 1, 0)
    x1 = min(int(math.ceil(pts[:, 0].max())) + 2, img_size)
    y1 = min(int(math.ceil(pts[:, 1].max())) + 2, img_size)
    cover = np.zeros((y1 - y0, x1 - x0), np.uint8)
    scale = 1 << _SHIFT
    for poly, fill in parts:
        # cv2's pixel centres are integer coordinates: shift by half a pixel.
        p = np.round((poly + (cx - x0 - 0.5, cy - y0 - 0.5)) * scale).astype(np.int32)
        cv2.fillPoly(cover, [p], 255 * fill, lineType=cv2.LINE_AA, shift=_SHIFT)
    return cover, (y0, y1, x0, x1)


# --------------------------------------------------------------------------- drawing

def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth two-colour gradient with low-frequency blotches, in muted colours."""
    grey = rng.uniform(60, 200)
    c0 = (grey + rng.uniform(-40, 40, 3)).astype(np.float32)
    c1 = (grey + rng.uniform(-55, 55, 3)).astype(np.float32)
    t = rng.uniform(0, 2 * np.pi)
    low = 32                                  # everything here is smooth: draw it small
    ramp = np.arange(low, dtype=np.float32) / low - 0.5
    g = np.cos(t) * ramp[None, :] + np.sin(t) * ramp[:, None] + 0.5
    img = c0 + g[..., None] * (c1 - c0)
    for cells, amp in ((4, 24.0), (12, 9.0)):
        blot = rng.normal(0, amp, (cells, cells, 3)).astype(np.float32)
        img += cv2.resize(blot, (low, low), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)


def _distractors(rng: np.random.Generator, img: np.ndarray) -> None:
    """Thin lines, open arcs and tiny blobs: clutter that is never an object."""
    size = img.shape[0]
    th = max(1, round(size / 256))

    def colour():
        return tuple(float(v) for v in PALETTE[rng.integers(len(PALETTE))] * rng.uniform(0.7, 1.1))

    for _ in range(rng.integers(2, 7)):                          # long straight strokes
        p = rng.uniform(-0.1, 1.1, 4) * size
        cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour(),
                 int(rng.integers(1, 2 * th + 1)), cv2.LINE_AA)
    for _ in range(rng.integers(0, 4)):                          # open arcs, never closed
        c = (int(rng.uniform(0, size)), int(rng.uniform(0, size)))
        axes = (int(rng.uniform(0.05, 0.4) * size), int(rng.uniform(0.05, 0.4) * size))
        start = float(rng.uniform(0, 360))
        cv2.ellipse(img, c, axes, float(rng.uniform(0, 180)), start,
                    start + float(rng.uniform(40, 220)), colour(), th, cv2.LINE_AA)
    for _ in range(rng.integers(0, 4)):                          # wiggly scribbles
        n = int(rng.integers(4, 9))
        steps = rng.normal(0, size * 0.04, (n, 2))
        pts = (rng.uniform(0, size, 2) + np.cumsum(steps, axis=0)).astype(np.int32)
        cv2.polylines(img, [pts], False, colour(), th, cv2.LINE_AA)
    r_max = max(2, round(3 * size / 256))
    for _ in range(rng.integers(3, 16)):                         # tiny blobs
        c = (int(rng.uniform(0, size)), int(rng.uniform(0, size)))
        cv2.circle(img, c, int(rng.integers(1, r_max + 1)), colour(), -1, cv2.LINE_AA)


def _pick_colour(rng, img, label, region, solid, colours) -> tuple[np.ndarray, int]:
    """A palette colour that stands out from what lies under the new instance."""
    y0, y1, x0, x1 = region
    under_lab = label[y0:y1, x0:x1][solid]
    free = under_lab < 0
    refs = []
    if free.any():
        refs.append(img[y0:y1, x0:x1][solid][free].mean(axis=0))
    refs += [colours[j] for j in np.unique(under_lab[~free])]
    best, best_d = None, -1.0
    for i in rng.permutation(len(PALETTE)):
        col = PALETTE[i] * rng.uniform(0.85, 1.05)
        d = min(float(np.linalg.norm(col - r)) for r in refs) if refs else 999.0
        if d >= 90:
            return col, int(i)
        if d > best_d:
            best, best_d = (col, int(i)), d
    return best


def render(rng: np.random.Generator, size: int, classes: int, first_class: int | None = None,
           *, details: bool = False):
    """One image (uint8 BGR) and its instances as (class index, [x, y, w, h], area).

    With `details`, also a dict: `label` (pixel -> instance index, -1 for none), `full_area`
    (each instance's pixels before later ones covered it) and `palette` (colour index).
    """
    img = _background(rng, size)
    _distractors(rng, img)
    label = np.full((size, size), -1, np.int16)
    lo = max(MIN_OBJECT_PX, MIN_FRAC * size)
    hi = max(lo, MAX_FRAC * size)
    want = int(rng.integers(MIN_INSTANCES, MAX_INSTANCES + 1))
    regions, full, visible, colours, cls_of, palette_idx = [], [], [], [], [], []
    tries = 0
    while len(cls_of) < want and tries < 60 * want:
        k = len(cls_of)
        cls = int(first_class) if (k == 0 and first_class is not None) else int(rng.integers(classes))
        shape = SHAPES[cls]
        placed = False
        for attempt in range(25):
            tries += 1
            # log-uniform size; after repeated failures, shrink towards the small end
            top = hi if attempt < 10 else lo + (hi - lo) * 0.3
            s = math.exp(rng.uniform(math.log(lo), math.log(top)))
            angle = float(rng.uniform(0, 2 * np.pi)) if _ROTATES[shape] else 0.0
            parts = _outline(shape, s, angle)
            pts = np.concatenate([p for p, _ in parts])
            mn, mx = pts.min(axis=0), pts.max(axis=0)
            cx = rng.uniform(-mn[0] + 1, size - 1 - mx[0])
            cy = rng.uniform(-mn[1] + 1, size - 1 - mx[1])
            cover, region = _raster(parts, cx, cy, size)
            solid = cover >= 128
            area = int(solid.sum())
            if area < 20:
                continue
            y0, y1, x0, x1 = region
            under = label[y0:y1, x0:x1][solid]
            lost = np.bincount(under[under >= 0], minlength=k) if k else np.zeros(0, int)
            if k and any(visible[j] - lost[j] < MIN_VISIBLE * full[j] for j in range(k)):
                continue
            placed = True
            break
        if not placed:
            if len(cls_of) >= MIN_INSTANCES:
                break
            continue
        col, pal = _pick_colour(rng, img, label, region, solid, colours)
        # gentle linear shading across the instance, then alpha-composite the coverage
        h, w = cover.shape
        t = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(t) * (np.arange(w) - w / 2)[None, :]
                + np.sin(t) * (np.arange(h) - h / 2)[:, None]) / max(h, w)
        shade = (1.0 + rng.uniform(0.1, 0.35) * ramp).astype(np.float32)[..., None]
        alpha = (cover.astype(np.float32) / 255.0)[..., None]
        patch = img[y0:y1, x0:x1]
        patch *= 1.0 - alpha
        patch += alpha * np.clip(col * shade, 0, 255)
        for j in range(k):
            visible[j] -= int(lost[j])
        label[y0:y1, x0:x1][solid] = k
        regions.append(region)
        full.append(area)
        visible.append(area)
        colours.append(col)
        palette_idx.append(pal)
        cls_of.append(cls)

    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise *= rng.uniform(1.5, 5)
    img += noise
    out = np.clip(img, 0, 255).astype(np.uint8)

    instances = []
    for j, (y0, y1, x0, x1) in enumerate(regions):
        ys, xs = np.nonzero(label[y0:y1, x0:x1] == j)
        bx, by = int(xs.min()) + x0, int(ys.min()) + y0
        bw, bh = int(xs.max()) + x0 + 1 - bx, int(ys.max()) + y0 + 1 - by
        instances.append((cls_of[j], [float(bx), float(by), float(bw), float(bh)],
                          float(len(xs))))
    if details:
        return out, instances, {"label": label, "full_area": full, "palette": palette_idx}
    return out, instances


# --------------------------------------------------------------------------- dataset

def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODE[split], index])


def _make_image(task):
    """Worker: draw image `index` of `split`, write its png, return its instances."""
    path, split, index, seed, size, classes = task
    rng = _image_rng(seed, split, index)
    img, instances = render(rng, size, classes, first_class=index % classes)
    ok, buf = cv2.imencode(".png", img, _PNG_PARAMS)
    if not ok:
        raise CominingError(f"{path}: cannot encode png")
    try:
        with open(path, "wb") as f:
            f.write(buf.tobytes())
    except OSError as exc:
        raise CominingError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return instances


def _check_int(name: str, value, lo: int, hi: int | None = None, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(None, f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        span = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise InputError(None, f"{name} must be {span}{why}, got {value}")
    return int(value)


def check_crowd(crowd, *, prefix: str = "") -> float:
    """The fraction of images given a crowd annotation: a number within [0, 1]."""
    if isinstance(crowd, bool) or not isinstance(crowd, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(crowd) <= 1.0:
        raise InputError(None, f"{prefix}crowd must be a fraction of the images within [0, 1], "
                               f"got {crowd!r}")
    return float(crowd)


def _crowd_of(instances, seed: int, split: str, index: int, crowd: float):
    """(instances kept as plain annotations, the crowd annotation's (class, box, area) or
    None) for one image; see the module docstring."""
    if crowd <= 0 or not instances:
        return instances, None
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index, 1])
    if rng.random() >= crowd:
        return instances, None
    cls = int(rng.choice(sorted({c for c, _, _ in instances})))
    members = [(b, a) for c, b, a in instances if c == cls]
    x0 = min(b[0] for b, _ in members)
    y0 = min(b[1] for b, _ in members)
    x1 = max(b[0] + b[2] for b, _ in members)
    y1 = max(b[1] + b[3] for b, _ in members)
    return ([inst for inst in instances if inst[0] != cls],
            (cls, [x0, y0, x1 - x0, y1 - y0], float(sum(a for _, a in members))))


def check_args(train, val, size, classes, seed, *, prefix: str = "") -> tuple[int, ...]:
    """Validate generate()'s settings (InputError, exit 2); `prefix` "--" names CLI flags."""
    return (_check_int(prefix + "train", train, 0),
            _check_int(prefix + "val", val, 0),
            _check_int(prefix + "size", size, MIN_SIZE, MAX_SIZE, " pixels"),
            _check_int(prefix + "classes", classes, 1, MAX_CLASSES,
                       f" (the shapes synth draws: {', '.join(SHAPES)})"),
            _check_int(prefix + "seed", seed, 0, 2 ** 63 - 1))


def _auto_workers(n_images: int) -> int:
    """Threads suffice: cv2 and numpy drop the GIL in the heavy parts (~2x on 2 cores)."""
    if n_images < 16:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def generate(out_dir, *, train: int = 300, val: int = 60, size: int = 256, classes: int = 4,
             seed: int = 0, workers: int | None = None, crowd: float = 0.0) -> dict:
    """Write the dataset into `out_dir`; returns per-split image and annotation counts
    (crowd annotations included; `crowd` per split counts them alone).

    `workers` (default: automatic) only changes the speed, never the output. `crowd`: the
    fraction of images where one class's instances become one crowd annotation (module
    docstring); 0 (the default) writes none and leaves the files as they always were.
    """
    train, val, size, classes, seed = check_args(train, val, size, classes, seed)
    crowd = check_crowd(crowd)
    if workers is not None:
        workers = _check_int("workers", workers, 1)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    counts = {"train": train, "val": val}
    try:
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        for split in counts:
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out, f"cannot create the output folders: {exc.strerror or exc}") from None

    tasks = [(str(out / "images" / split / f"{i:06d}.png"), split, i, seed, size, classes)
             for split, n in counts.items() for i in range(1, n + 1)]
    n_workers = workers or _auto_workers(len(tasks))
    if n_workers > 1 and len(tasks) > 1:
        with ThreadPoolExecutor(n_workers) as pool:
            results = list(pool.map(_make_image, tasks))
    else:
        results = [_make_image(t) for t in tasks]

    categories = [{"id": c + 1, "name": SHAPES[c], "supercategory": "shape"}
                  for c in range(classes)]
    summary = {"out_dir": str(out), "size": size, "classes": [SHAPES[c] for c in range(classes)],
               "seed": seed}
    info = {"description": "comining synth: shapes on cluttered backgrounds",
            "version": "1", "seed": seed, "size": size, "classes": classes}
    if crowd > 0:
        info["crowd"] = crowd
    pos = 0
    for split, n in counts.items():
        images, annotations = [], []
        n_crowd = 0
        for i in range(1, n + 1):
            images.append({"id": i, "file_name": f"{split}/{i:06d}.png",
                           "width": size, "height": size})
            plain, crowd_ann = _crowd_of(results[pos], seed, split, i, crowd)
            for cls, bbox, area in plain:
                annotations.append({"id": len(annotations) + 1, "image_id": i,
                                    "category_id": cls + 1, "bbox": bbox, "area": area,
                                    "iscrowd": 0})
            if crowd_ann is not None:
                cls, bbox, area = crowd_ann
                annotations.append({"id": len(annotations) + 1, "image_id": i,
                                    "category_id": cls + 1, "bbox": bbox, "area": area,
                                    "iscrowd": 1})
                n_crowd += 1
            pos += 1
        _remove_stale(out / "images" / split, n)
        atomic_write_json(out / "annotations" / f"{split}.json", {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        })
        summary[split] = {"images": n, "annotations": len(annotations)}
        if crowd > 0:
            summary[split]["crowd"] = n_crowd
    return summary


def _remove_stale(folder: Path, n: int) -> None:
    """Drop numbered pngs a previous, larger synth run left beyond image `n`."""
    for p in folder.iterdir():
        if _FILE_RE.match(p.name) and int(p.name[:-4]) > n:
            try:
                p.unlink()
            except OSError:
                pass
