"""A run directory opened for review (`Run`): its store connections, config, dataset
description, decoded images and caches."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from collections import OrderedDict, defaultdict
from pathlib import Path

import numpy as np

from comining import store
from comining.coco import file_name_problem, load_rgb_reduced
from comining.errors import InputError
from comining.fileio import read_json
from comining.review.draw import DISPLAY_MAX_SIDE, fit_display, placeholder_image


# Decoded images kept per run: at most this many, and at most this many bytes (48
# full-size 24-megapixel photos would take 3.5 GB).
IMAGE_CACHE_ITEMS = 48
IMAGE_CACHE_BYTES = 512 << 20
# Smaller images are not prefetched: they decode in tens of ms, and a background decode
# would only compete with the page for the CPU when the annotator pages quickly.
PREFETCH_MIN_PIXELS = 3_000_000


def _orientation(width: int, height: int) -> int:
    """1 landscape, -1 portrait, 0 square."""
    return (width > height) - (width < height)


def _remember(cache: OrderedDict, key, value, nbytes: int) -> None:
    """Put `value` in an LRU `cache` of (value, nbytes) entries within the limits above;
    the newest entry is always kept. Call with the run's lock held."""
    cache[key] = (value, nbytes)
    cache.move_to_end(key)
    total = sum(n for _, n in cache.values())
    while len(cache) > 1 and (len(cache) > IMAGE_CACHE_ITEMS or total > IMAGE_CACHE_BYTES):
        _, (_, n) = cache.popitem(last=False)
        total -= n


class Run:
    """A run directory opened for review: its store, config and dataset description.

    Each thread gets its own SQLite connection (the app's handlers run in a thread pool;
    one connection shared across threads would interleave transactions)."""

    def __init__(self, run_dir, *, timeout: float = 30.0):
        self.dir = Path(run_dir)
        if not self.dir.is_dir():
            raise InputError(run_dir, "run folder not found")
        self.store_path = self.dir / store.STORE_NAME
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list = []
        self.categories: dict[int, str] = {}
        self.images: dict[int, tuple[str, int, int]] = {}
        self._annotations: dict[int, list] | None = None
        self._annotations_problem: str | None = None
        self._image_cache: OrderedDict = OrderedDict()     # full-size images, see load_image
        self._display_cache: OrderedDict = OrderedDict()   # display-size, see display_image
        self._prefetcher: ThreadPoolExecutor | None = None
        self._in_flight: dict[tuple, Future] = {}          # display_image keys being prefetched
        self._plot_cache: dict = {}
        self._cache: OrderedDict = OrderedDict()   # key -> (version, value), see cached()
        try:
            self.conn  # validates the store (missing, foreign, other schema version)
            self.config = self._read_config()
            self.refresh()
        except BaseException:
            self.close()
            raise

    def refresh(self) -> None:
        """Re-read what the training engine may have added since opening: meta, the
        dataset's images and categories (checkpoints and candidates are always read live)."""
        conn = self.conn
        self.meta = store.get_meta(conn)
        self.ann_path = self._path("ann_path", "ann")
        self.images_dir = self._path("images_dir", "images")
        self.hidden_path = self._path("hidden_path", "hidden")
        n_img = conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        n_cat = conn.execute("SELECT COUNT(*) FROM categories").fetchone()[0]
        if n_cat != len(self.categories):
            self.categories = {r["id"]: r["name"] for r in
                               conn.execute("SELECT id, name FROM categories ORDER BY id")}
        if n_img != len(self.images):
            self.images = {r["id"]: (r["file_name"], r["width"], r["height"]) for r in
                           conn.execute("SELECT id, file_name, width, height FROM images ORDER BY id")}

    # -- plumbing
    @property
    def conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = store.connect(self.store_path, timeout=self._timeout)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            if self._prefetcher is not None:
                self._prefetcher.shutdown(wait=False, cancel_futures=True)
                self._prefetcher = None
            for conn in self._conns:
                try:
                    conn.close()
                except Exception:
                    pass
            self._conns.clear()
        self._local = threading.local()

    def _read_config(self) -> dict:
        path = self.dir / "config.json"
        if not path.exists():
            return {}
        data = read_json(path)
        if not isinstance(data, dict):
            raise InputError(path, "run config is not a json object")
        return data

    def _path(self, meta_key: str, config_key: str) -> Path | None:
        value = self.meta.get(meta_key) or self.config.get(config_key)
        if not value:
            return None
        p = Path(value)
        if not p.is_absolute() and not p.exists() and (self.dir / p).exists():
            p = self.dir / p
        return p

    @property
    def name(self) -> str:
        return self.dir.resolve().name

    def checkpoints(self) -> list[int]:
        return [r["iteration"] for r in store.checkpoints(self.conn)]

    def checkpoint_rows(self) -> list[dict]:
        return [dict(r) for r in store.checkpoints(self.conn)]

    def cached(self, key, version, compute):
        """`compute()`, kept under `key` while `version` stays the same (the items module
        caches each checkpoint's grouping here, with its `mined_at` as the version). The 3
        most recently used keys are kept; computed outside the lock."""
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == version:
                self._cache.move_to_end(key)
                return hit[1]
        value = compute()
        with self._lock:
            self._cache[key] = (version, value)
            while len(self._cache) > 3:
                self._cache.popitem(last=False)
        return value

    def category_name(self, category_id) -> str:
        return self.categories.get(category_id, str(category_id))

    # -- images
    def image_path(self, image_id: int) -> Path:
        if image_id not in self.images:
            raise InputError(None, f"image {image_id} is not in this run")
        file_name = self.images[image_id][0]
        why = file_name_problem(file_name)
        if why:
            raise InputError(None, f"image {image_id}: {why}")
        if self.images_dir is None:
            raise InputError(self.store_path, "the run does not record its image folder")
        return self.images_dir / file_name

    def _file_key(self, image_id: int) -> tuple[Path, tuple]:
        """(path, cache key) of an image file; InputError or OSError when unusable."""
        path = self.image_path(image_id)
        return path, (str(path), path.stat().st_mtime_ns)

    def _decode(self, image_id: int, path: Path, max_side: int | None = None):
        """(RGB, decoded pixels per file pixel) as training saw the image: an image whose
        json gives the file's raw size is not EXIF-rotated (its boxes ignore the tag, and
        training did too: coco.load_coco). InputError when it cannot be decoded."""
        rgb, scale = load_rgb_reduced(path, max_side=max_side)
        _, w, h = self.images[image_id]
        if _orientation(rgb.shape[1], rgb.shape[0]) == -_orientation(w, h) != 0:
            rgb, scale = load_rgb_reduced(path, exif_transpose=False, max_side=max_side)
        return rgb, scale

    def _file_problem(self, image_id: int, exc: Exception) -> str:
        """Why an image file cannot be opened (an InputError or OSError of _file_key)."""
        if isinstance(exc, InputError):
            return exc.problem
        return f"image file not found: {self.images[image_id][0]}"

    def _decode_problem(self, image_id: int, exc: InputError) -> str:
        return f"{self.images[image_id][0]}: {exc.problem}"

    def load_image(self, image_id: int) -> tuple[np.ndarray, str | None]:
        """(HxWx3 RGB at full size, problem): a grey placeholder and the reason when the
        file is missing or unreadable. Decoded images are kept in a small LRU cache."""
        try:
            path, key = self._file_key(image_id)
        except (InputError, OSError) as exc:
            return self._placeholder(image_id), self._file_problem(image_id, exc)
        with self._lock:
            if key in self._image_cache:
                self._image_cache.move_to_end(key)
                return self._image_cache[key][0], None
        try:
            rgb, _ = self._decode(image_id, path)
        except InputError as exc:
            return self._placeholder(image_id), self._decode_problem(image_id, exc)
        rgb.setflags(write=False)
        with self._lock:
            _remember(self._image_cache, key, rgb, rgb.nbytes)
        return rgb, None

    def display_image(self, image_id: int) -> tuple[np.ndarray, float, str | None]:
        """(the image at most DISPLAY_MAX_SIDE px on its longer side, display pixels per
        image pixel, problem): what the review page shows. A large JPEG is decoded
        reduced (several times faster); the result is cached apart from the full-size
        images, so that going back to a large photo needs no decoding."""
        try:
            path, key = self._file_key(image_id)
        except (InputError, OSError) as exc:
            return (*fit_display(self._placeholder(image_id)), self._file_problem(image_id, exc))
        with self._lock:
            hit = self._display_cache.get(key)
            if hit is not None:
                self._display_cache.move_to_end(key)
                return (*hit[0], None)
            pending = self._in_flight.get(key)
        if pending is not None:      # being prefetched: wait rather than decode twice
            try:
                return pending.result()
            except Exception:
                pass
        return self._display_now(image_id, path, key)

    def _display_now(self, image_id: int, path: Path, key) -> tuple[np.ndarray, float, str | None]:
        with self._lock:
            full = self._image_cache.get(key)
        try:
            image, scale = (full[0], 1.0) if full is not None else \
                self._decode(image_id, path, max_side=DISPLAY_MAX_SIDE)
        except InputError as exc:
            return (*fit_display(self._placeholder(image_id)), self._decode_problem(image_id, exc))
        shown, factor = fit_display(image)
        shown.setflags(write=False)
        value = (shown, factor * scale)
        with self._lock:
            _remember(self._display_cache, key, value, shown.nbytes)
        return (*value, None)

    def prefetch(self, image_id: int) -> None:
        """Decode and shrink an image in a background thread (the next one in the
        queue), so that moving to it does not wait for a large photo to decode."""
        _, w, h = self.images.get(image_id, ("", 0, 0))
        if w * h < PREFETCH_MIN_PIXELS:
            return
        try:
            path, key = self._file_key(image_id)
        except (InputError, OSError):
            return
        with self._lock:
            if key in self._display_cache or key in self._in_flight:
                return
            if self._prefetcher is None:
                self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="comining-prefetch")
            future = self._prefetcher.submit(self._display_now, image_id, path, key)
            self._in_flight[key] = future

        def forget(_):
            with self._lock:
                self._in_flight.pop(key, None)
        future.add_done_callback(forget)

    def _placeholder(self, image_id: int) -> np.ndarray:
        _, w, h = self.images.get(image_id, ("", 640, 480))
        return placeholder_image(w, h)

    # -- the input annotations (the dimmed layer)
    def annotations(self, image_id: int) -> list[tuple[int, tuple]]:
        """[(category_id, xywh)] of the image's annotations in the run's input json."""
        if self._annotations is None:
            with self._lock:
                if self._annotations is None:
                    self._annotations = self._load_annotations()
        return self._annotations.get(image_id, [])

    @property
    def annotations_problem(self) -> str | None:
        self.annotations(-1)
        return self._annotations_problem

    def _load_annotations(self) -> dict[int, list]:
        out: dict[int, list] = defaultdict(list)
        if self.ann_path is None:
            self._annotations_problem = "the run does not record its annotation file"
            return out
        try:
            data = _read_json_fast(self.ann_path)
        except InputError as exc:
            self._annotations_problem = str(exc)
            return out
        for a in data.get("annotations", []) if isinstance(data, dict) else []:
            try:
                b = a["bbox"]
                if len(b) == 4:
                    out[int(a["image_id"])].append(
                        (int(a["category_id"]), (float(b[0]), float(b[1]), float(b[2]), float(b[3]))))
            except (KeyError, TypeError, ValueError):
                continue
        return out

    def warm(self) -> None:
        """Read the input annotations now (in a background thread at app start): at COCO
        scale they take seconds, which the first page would otherwise wait for."""
        import threading
        threading.Thread(target=self.annotations, args=(-1,), daemon=True,
                         name="comining-annotations").start()


def _read_json_fast(path):
    """orjson when it parses the file (several times faster on a large COCO json),
    else `read_json` (its clear errors)."""
    try:
        import orjson
        with open(path, "rb") as f:
            return orjson.loads(f.read())
    except Exception:
        return read_json(path)


def open_run(run_dir) -> Run:
    return Run(run_dir)
