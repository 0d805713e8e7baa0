"""COCO detection data layer: validate once at load, then hand out clean records.

`validate_coco_dict` checks the json alone (structure, ids, boxes); `load_coco` also checks
the images on disk (present, readable, inside the image root, size as declared).
Every problem becomes one InputError line naming the file: for many bad items, a count
and the first few.
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from comining.errors import InputError, summarize_problems
from comining.fileio import read_json

# A box whose part inside its image is below this fraction of its area is "far outside".
MIN_INSIDE_FRACTION = 0.5
# A box side below this (pixels) counts as zero: such a side can vanish in float32 after
# resizing, and a zero-width target makes the box-regression loss infinite.
MIN_BOX_SIDE = 0.01
# Refuse to decode images above this many pixels (decompression bombs); PIL's own default.
MAX_IMAGE_PIXELS = int(os.environ.get("COMINING_MAX_IMAGE_PIXELS", 89_478_485))
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class CategoryMap:
    """Dataset category ids (any integers) <-> contiguous labels 0..K-1, in id order."""

    ids: tuple[int, ...]
    names: tuple[str, ...]
    _label_of: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_label_of", {cid: i for i, cid in enumerate(self.ids)})

    @classmethod
    def from_categories(cls, categories: list[dict]) -> "CategoryMap":
        ordered = sorted(categories, key=lambda c: c["id"])
        return cls(tuple(c["id"] for c in ordered), tuple(str(c.get("name", c["id"])) for c in ordered))

    def __len__(self) -> int:
        return len(self.ids)

    def to_label(self, category_id: int) -> int:
        return self._label_of[category_id]

    def to_category_id(self, label: int) -> int:
        return self.ids[int(label)]

    def name_of_label(self, label: int) -> str:
        return self.names[int(label)]


@dataclass
class ImageRecord:
    """One image and its boxes in original pixels (xyxy), crowd boxes apart."""

    id: int
    file_name: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray            # (N, 4) float32 xyxy, non-crowd annotations
    labels: np.ndarray           # (N,) int64 contiguous labels
    annotation_ids: np.ndarray   # (N,) int64
    crowd_boxes: np.ndarray      # (M, 4) float32 xyxy
    exif_transpose: bool = True  # False when the json's size is the raw (unrotated) size
    # (R, 4) float32 xyxy: boxes an annotator rejected (a refine round's known background)
    rejected_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))


@dataclass
class CocoDataset:
    ann_path: Path
    image_root: Path
    raw: dict
    images: list[ImageRecord]
    categories: CategoryMap
    _coco_api: object = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_annotations(self) -> int:
        return int(sum(len(r.boxes) for r in self.images))

    def coco_api(self):
        """pycocotools COCO over the (validated) json, built once."""
        if self._coco_api is None:
            from pycocotools.coco import COCO
            import contextlib
            import io

            api = COCO()
            api.dataset = self.raw
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                api.createIndex()
            self._coco_api = api
        return self._coco_api


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _problem(path, what: str, problems: list[str]) -> InputError:
    n = len(problems)
    return InputError(path, f"{what} ({n} {'item' if n == 1 else 'items'}): "
                            f"{summarize_problems(problems)}")


def _check_unique_ids(path, items: list[dict], kind: str) -> None:
    missing = [i for i, it in enumerate(items) if not isinstance(it, dict) or not _is_int(it.get("id"))]
    if missing:
        raise _problem(path, f"{kind} without an integer 'id'", [f"{kind}[{i}]" for i in missing])
    seen, dups = set(), []
    for it in items:
        if it["id"] in seen:
            dups.append(f"id {it['id']}")
        seen.add(it["id"])
    if dups:
        raise _problem(path, f"duplicate {kind} ids", dups)


def file_name_problem(file_name) -> str | None:
    """Why a file_name cannot be used under an image root, or None when it can."""
    if not isinstance(file_name, str) or not file_name.strip():
        return "file_name is not a non-empty string"
    if "\x00" in file_name:
        return "file_name contains a NUL byte"
    posix, win = PurePosixPath(file_name), PureWindowsPath(file_name)
    if posix.is_absolute() or win.is_absolute() or win.drive:
        return f"file_name {file_name!r} is an absolute path"
    if ".." in posix.parts or ".." in win.parts:
        return f"file_name {file_name!r} escapes the image root"
    return None


def _box_problem(bbox, width, height) -> str | None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return "bbox is not a list of 4 numbers"
    if not all(math.isfinite(v) for v in bbox):
        return "bbox has NaN or infinite values"
    x, y, w, h = bbox
    if w < 0 or h < 0:
        return f"bbox has negative size {w}x{h}"
    if w < MIN_BOX_SIDE or h < MIN_BOX_SIDE:
        tiny = "" if w == 0 or h == 0 else f" (a side below {MIN_BOX_SIDE} px)"
        return f"bbox has zero size {w}x{h}{tiny}"
    if width is not None and height is not None:
        iw = max(0.0, min(x + w, width) - max(x, 0.0))
        ih = max(0.0, min(y + h, height) - max(y, 0.0))
        if iw * ih < MIN_INSIDE_FRACTION * w * h:
            return f"bbox {list(bbox)} is far outside its {width}x{height} image"
    return None


def validate_coco_dict(data, path) -> None:
    """Raise InputError (naming `path`) unless `data` is a usable COCO detection dict."""
    if not isinstance(data, dict):
        raise InputError(path, f"not a COCO detection file: top level is a {type(data).__name__}, "
                               "expected an object with 'images', 'annotations', 'categories'")
    for key in ("images", "categories"):
        if key not in data:
            raise InputError(path, f"not a COCO detection file: no '{key}' list")
    for key in ("images", "annotations", "categories"):
        if key in data and not isinstance(data[key], list):
            raise InputError(path, f"not a COCO detection file: '{key}' is a "
                                   f"{type(data[key]).__name__}, expected a list")
    images, categories = data["images"], data["categories"]
    annotations = data.get("annotations", [])
    if not categories:
        raise InputError(path, "no categories: a detection dataset needs at least one")
    if not images:
        raise InputError(path, "no images: the dataset is empty")
    _check_unique_ids(path, images, "image")
    _check_unique_ids(path, categories, "category")
    _check_unique_ids(path, annotations, "annotation")

    bad_images = []
    for im in images:
        why = file_name_problem(im.get("file_name"))
        for key in ("width", "height"):
            if key in im and not (_is_int(im[key]) and im[key] > 0):
                why = why or f"{key} {im[key]!r} is not a positive integer"
        if why:
            bad_images.append(f"image {im['id']}: {why}")
    if bad_images:
        raise _problem(path, "bad images", bad_images)

    image_by_id = {im["id"]: im for im in images}
    category_ids = {c["id"] for c in categories}
    unknown_img, unknown_cat, bad_boxes, bad_fields = [], [], [], []
    for a in annotations:
        if not _is_int(a.get("image_id")) or a["image_id"] not in image_by_id:
            unknown_img.append(f"annotation {a['id']}: image_id {a.get('image_id')!r}")
            continue
        if not _is_int(a.get("category_id")) or a["category_id"] not in category_ids:
            unknown_cat.append(f"annotation {a['id']}: category_id {a.get('category_id')!r}")
            continue
        if a.get("iscrowd", 0) not in (0, 1):
            bad_fields.append(f"annotation {a['id']}: iscrowd {a.get('iscrowd')!r} is not 0 or 1")
        im = image_by_id[a["image_id"]]
        why = _box_problem(a.get("bbox"), im.get("width"), im.get("height"))
        if why:
            bad_boxes.append(f"annotation {a['id']}: {why}")
    if unknown_img:
        raise _problem(path, "annotations point to unknown images", unknown_img)
    if unknown_cat:
        raise _problem(path, "annotations point to unknown categories", unknown_cat)
    if bad_fields:
        raise _problem(path, "bad annotation fields", bad_fields)
    if bad_boxes:
        raise _problem(path, "bad boxes", bad_boxes)


def load_coco_json(ann_path) -> dict:
    data = read_json(ann_path)
    validate_coco_dict(data, ann_path)
    return data


# ----------------------------------------------------------------------------- images


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF: treat as unrotated
        return 1


def read_image_header(path: Path) -> tuple[int, int, int]:
    """(raw width, raw height, EXIF orientation) without decoding the pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            return im.width, im.height, _exif_orientation(im)


def _check_image(root: Path, im: dict) -> tuple[str | None, tuple[int, int, bool] | None]:
    path = root / im["file_name"]
    try:
        w, h, orientation = read_image_header(path)
    except FileNotFoundError:
        return f"image {im['id']}: {im['file_name']} not found", None
    except IsADirectoryError:
        return f"image {im['id']}: {im['file_name']} is a directory", None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return f"image {im['id']}: {im['file_name']} is not a readable image ({exc})", None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return f"image {im['id']}: {im['file_name']} is too large to decode safely", None
    if w * h > MAX_IMAGE_PIXELS:
        return (f"image {im['id']}: {im['file_name']} is too large to decode safely "
                f"({w}x{h} > {MAX_IMAGE_PIXELS} pixels)"), None
    ow, oh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    jw, jh = im.get("width", ow), im.get("height", oh)
    if (jw, jh) == (ow, oh):
        return None, (ow, oh, True)
    if (jw, jh) == (w, h):  # the json kept the raw size: its boxes ignore the EXIF rotation
        return None, (w, h, False)
    return (f"image {im['id']}: {im['file_name']} is {ow}x{oh} but the json says {jw}x{jh}"), None


def _xywh_to_xyxy_clipped(bbox, width: int, height: int) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [min(max(x, 0.0), width), min(max(y, 0.0), height),
            min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)]


def load_coco(ann_path, image_root, *, check_images: bool = True) -> CocoDataset:
    """Load and validate a COCO detection json and its image root.

    Images with no annotations are kept (in sparse data they hold the objects to mine);
    crowd boxes are kept apart from the training boxes. Boxes slightly outside their
    image are clipped.
    """
    ann_path, image_root = Path(ann_path), Path(image_root)
    if not image_root.is_dir():
        raise InputError(image_root, "image folder not found")
    data = load_coco_json(ann_path)
    categories = CategoryMap.from_categories(data["categories"])
    images = data["images"]

    sizes: dict[int, tuple[int, int, bool]] = {}
    if check_images:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda im: _check_image(image_root, im), images))
        problems = [why for why, _ in results if why]
        if problems:
            raise _problem(ann_path, "unusable image files", problems)
        sizes = {im["id"]: size for im, (_, size) in zip(images, results)}
        if any("width" not in im or "height" not in im for im in images):
            # Sizes read from the files: the boxes can only now be checked against them.
            filled = dict(data, images=[dict(im, width=sizes[im["id"]][0], height=sizes[im["id"]][1])
                                        for im in images])
            validate_coco_dict(filled, ann_path)
            data = filled
            images = data["images"]
    else:
        missing = [f"image {im['id']}" for im in images if "width" not in im or "height" not in im]
        if missing:
            raise _problem(ann_path, "images without width/height", missing)

    per_image: dict[int, list[dict]] = {im["id"]: [] for im in images}
    for a in data.get("annotations", []):
        per_image[a["image_id"]].append(a)

    records = []
    label_of = categories._label_of
    for im in images:
        w, h = im["width"], im["height"]
        boxes, labels, ann_ids, crowd = [], [], [], []
        for a in per_image[im["id"]]:
            box = _xywh_to_xyxy_clipped(a["bbox"], w, h)
            if a.get("iscrowd", 0):
                crowd.append(box)
            else:
                boxes.append(box)
                labels.append(label_of[a["category_id"]])
                ann_ids.append(a["id"])
        records.append(ImageRecord(
            id=im["id"], file_name=im["file_name"], path=image_root / im["file_name"],
            width=w, height=h,
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            labels=np.asarray(labels, np.int64),
            annotation_ids=np.asarray(ann_ids, np.int64),
            crowd_boxes=np.asarray(crowd, np.float32).reshape(-1, 4),
            exif_transpose=sizes.get(im["id"], (0, 0, True))[2]))
    return CocoDataset(ann_path=ann_path, image_root=image_root, raw=data, images=records,
                       categories=categories)


def attach_rejected(coco: CocoDataset, path) -> None:
    """Attach a refine round's REJECTED.json ({"rejected": [{image_id, bbox [x, y, w, h]}]},
    written by comining.rounds) to the records as `rejected_boxes` (xyxy, clipped)."""
    from comining.fileio import read_json

    data = read_json(path)
    entries = data.get("rejected") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise InputError(path, "not a rejected-boxes file (a json object with a 'rejected' list)")
    by_id = {rec.id: rec for rec in coco.images}
    found: dict[int, list] = {}
    for k, e in enumerate(entries):
        if not isinstance(e, dict) or e.get("image_id") not in by_id or _box_problem(
                e.get("bbox"), by_id[e["image_id"]].width, by_id[e["image_id"]].height):
            raise InputError(path, f"entry {k} is not a box of an image of {coco.ann_path}")
        rec = by_id[e["image_id"]]
        found.setdefault(rec.id, []).append(_xywh_to_xyxy_clipped(e["bbox"], rec.width, rec.height))
    for image_id, boxes in found.items():
        by_id[image_id].rejected_boxes = np.asarray(boxes, np.float32).reshape(-1, 4)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """16-bit / float images to 8 bits by their dynamic range (PIL would saturate them)."""
    arr = arr.astype(np.float32)
    hi = float(arr.max()) if arr.size else 0.0
    scale = 255.0 / (65535.0 if hi > 255 else max(hi, 1.0))
    return np.clip(arr * scale, 0, 255).astype(np.uint8)


def load_rgb(path: Path, *, exif_transpose: bool = True) -> np.ndarray:
    """Decode an image as HxWx3 uint8 RGB: grayscale, RGBA, palette, CMYK, 16-bit all work."""
    return load_rgb_reduced(path, exif_transpose=exif_transpose)[0]


def load_rgb_reduced(path: Path, *, exif_transpose: bool = True,
                     max_side: int | None = None) -> tuple[np.ndarray, float]:
    """`load_rgb`, and with `max_side` a JPEG decoded at 1/2, 1/4 or 1/8 scale (libjpeg's
    DCT scaling, several times faster than a full decode) when it stays at least
    `max_side` px on its longer side. Returns (image, decoded pixels per file pixel)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise InputError(path, f"image too large to decode safely ({im.width}x{im.height})")
                full_width = im.width
                if max_side and im.format == "JPEG" and max(im.size) > max_side:
                    f = max_side / max(im.size)
                    im.draft(im.mode, (math.ceil(im.width * f), math.ceil(im.height * f)))
                scale = im.width / full_width
                if exif_transpose:
                    im = ImageOps.exif_transpose(im)
                if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    gray = _to_uint8(np.asarray(im))
                    return np.repeat(gray[:, :, None], 3, axis=2), scale
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    im = im.convert("RGBA")
                    background = Image.new("RGBA", im.size, (0, 0, 0, 255))
                    im = Image.alpha_composite(background, im)
                return np.array(im.convert("RGB")), scale
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(path, "image file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(path, "image too large to decode safely") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(path, f"cannot decode image ({exc})") from None


def decode_all(ds: CocoDataset, *, workers: int | None = None) -> None:
    """Decode every image of `ds` as training will (a corrupt file whose header reads
    fine is otherwise only found mid-training); InputError on the annotation file
    naming the count and the first few undecodable images. Decoding runs in threads
    (Pillow releases the GIL while decoding)."""
    from concurrent.futures import ThreadPoolExecutor

    def problem(rec: ImageRecord) -> str | None:
        try:
            rgb = load_rgb(rec.path, exif_transpose=rec.exif_transpose)
        except InputError as exc:
            return f"{rec.file_name}: {exc.problem}"
        if rgb.shape[:2] != (rec.height, rec.width):
            return (f"{rec.file_name}: decodes to {rgb.shape[1]}x{rgb.shape[0]}, "
                    f"not {rec.width}x{rec.height}")
        return None

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        problems = [p for p in pool.map(problem, ds.images) if p]
    if problems:
        raise _problem(ds.ann_path, "images that cannot be decoded", problems)
