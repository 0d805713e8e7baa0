"""A run directory opened for review (`Run`): its store connections, config, dataset
description, decoded images and caches."""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from pathlib import Path

import numpy as np

from comining import store
from comining.coco import file_name_problem, load_rgb
from comining.errors import InputError
from comining.fileio import read_json
from comining.review.draw import placeholder_image


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
        self._image_cache: OrderedDict = OrderedDict()
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

    def load_image(self, image_id: int) -> tuple[np.ndarray, str | None]:
        """(HxWx3 RGB, problem): a grey placeholder and the reason when the file is
        missing or unreadable. Decoded images are kept in a small LRU cache."""
        try:
            path = self.image_path(image_id)
            key = (str(path), path.stat().st_mtime_ns)
        except InputError as exc:
            return self._placeholder(image_id), exc.problem
        except OSError:
            return self._placeholder(image_id), f"image file not found: {self.images[image_id][0]}"
        with self._lock:
            if key in self._image_cache:
                self._image_cache.move_to_end(key)
                return self._image_cache[key], None
        try:
            rgb = load_rgb(path)
        except InputError as exc:
            return self._placeholder(image_id), f"{self.images[image_id][0]}: {exc.problem}"
        rgb.setflags(write=False)
        with self._lock:
            self._image_cache[key] = rgb
            while len(self._image_cache) > 48:
                self._image_cache.popitem(last=False)
        return rgb, None

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
            data = read_json(self.ann_path)
        except InputError as exc:
            self._annotations_problem = str(exc)
            return out
        for a in data.get("annotations", []) if isinstance(data, dict) else []:
            try:
                box = tuple(float(v) for v in a["bbox"])
                if len(box) == 4:
                    out[int(a["image_id"])].append((int(a["category_id"]), box))
            except (KeyError, TypeError, ValueError):
                continue
        return out


def open_run(run_dir) -> Run:
    return Run(run_dir)
