"""Review logic over a run's store: queue, decisions, undo, progress, plots, drawing.

No gradio here: the app (`app/ui.py`) only wires these functions to widgets, and the
tests call them directly.

Vocabulary
----------
candidate   one row of the store's `candidates` table: a box one view mined at one
            checkpoint.
item        what an annotator reviews: the candidates of one image at one checkpoint
            grouped so that one object gives one item. Greedy by score, a candidate
            joins the item of its agreed partner, else the first item of the same
            class whose top box it overlaps with IoU >= 0.5. An item's `id` is its
            top-scoring candidate's id (the one decisions point to); its `view` is
            'both' when both views found it, else the one view that did.
decision    an append-only row of `decisions` (accepted | rejected, with the decided
            class and box: an edited box keeps its candidate id). Undo marks rows undone.

An item is *decided* by the latest non-undone decision that covers it: one made on
one of its candidates, or one on the same image for a same-class box with IoU >= 0.5
(the decided box or its candidate's box). So a box rejected at checkpoint 2 is not
proposed again at checkpoint 4, unless `include_rejected=True`, which ignores
rejections made on other candidates. Export uses the same rule (the latest decision
about an object wins), see `effective_decisions`.

Decision links are checked against the checkpoint's `mined_at`: a checkpoint that is
re-mined after a decision gets new candidate rows (whose ids SQLite may reuse), so a
link to a candidate mined after the decision is ignored and the decision falls back to
its own class and box.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np

from comining import store
from comining.coco import file_name_problem, load_rgb
from comining.errors import InputError
from comining.fileio import read_json
from comining.util import paused_gc

IOU_SAME = 0.5                      # same object: same class and IoU >= this
VIEW_KINDS = ("original", "augmented", "both")
STATES = ("pending", "accepted", "rejected")
LAYERS = ("annotated", "original", "augmented", "both", "decided")
SORTS = ("score", "agreement")

# RGB colours of the layers (distinct for colour-blind eyes too: orange / sky / magenta).
COLOURS = {
    "annotated": (205, 205, 205),
    "original": (255, 152, 0),
    "augmented": (41, 182, 246),
    "both": (224, 64, 251),
    "accepted": (0, 230, 118),
    "rejected": (244, 67, 54),
    "selected": (255, 255, 255),
}
VIEW_LABELS = {"original": "original view", "augmented": "augmented view", "both": "both views"}


# ----------------------------------------------------------------------------- boxes


def iou_matrix(a, b) -> np.ndarray:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4), both COCO xywh -> (N, M)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def iou(a, b) -> float:
    """IoU of two xywh boxes (plain Python: fast for single pairs)."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def clean_box(box, width: int, height: int) -> tuple[float, float, float, float]:
    """A finite xywh box clipped to the image; InputError when nothing usable is left."""
    try:
        x, y, w, h = map(float, box)
    except (TypeError, ValueError):
        raise InputError(None, f"a box must be 4 numbers [x, y, w, h], got {box!r}") from None
    isfinite = math.isfinite   # (a hot path of large exports: no generators here)
    if not (isfinite(x) and isfinite(y) and isfinite(w) and isfinite(h)):
        raise InputError(None, f"box {list(box)} has NaN or infinite values")
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise InputError(None, f"box {[round(v, 1) for v in (x, y, w, h)]} is empty inside its "
                               f"{width}x{height} image")
    return (round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2))


def clean_boxes(boxes, widths, heights) -> tuple[np.ndarray, np.ndarray]:
    """`clean_box` over many boxes at once: (N, 4) xywh and the N image sizes ->
    (the clipped boxes rounded to 0.01 px, a mask of those that are finite and keep at
    least 1 px each way)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    wid, hei = np.asarray(widths, np.float64), np.asarray(heights, np.float64)
    with np.errstate(invalid="ignore"):
        x1 = np.clip(b[:, 0], 0, wid)
        y1 = np.clip(b[:, 1], 0, hei)
        x2 = np.clip(b[:, 0] + b[:, 2], 0, wid)
        y2 = np.clip(b[:, 1] + b[:, 3], 0, hei)
        ok = np.isfinite(b).all(axis=1) & (x2 - x1 >= 1) & (y2 - y1 >= 1)
    out = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1).round(2)
    return out, ok


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Decision:
    """A non-undone decision with what it was made on (`cand_*`: None when unlinked)."""

    id: int
    candidate_id: int | None
    image_id: int
    decision: str
    category_id: int
    box: tuple[float, float, float, float]
    decided_at: str
    client: str | None
    cand_checkpoint: int | None = None
    cand_category: int | None = None
    cand_box: tuple[float, float, float, float] | None = None
    cand_score: float | None = None
    cand_view: str | None = None
    cand_agreed: bool = False

    @property
    def linked(self) -> bool:
        return self.cand_checkpoint is not None

    @property
    def categories(self) -> set[int]:
        return {self.category_id} | ({self.cand_category} if self.cand_category is not None else set())

    @property
    def boxes(self) -> list:
        return [self.box] + ([self.cand_box] if self.cand_box is not None else [])

    @property
    def edited(self) -> bool:
        if not self.linked:
            return False
        return self.category_id != self.cand_category or any(
            abs(p - q) > 0.5 for p, q in zip(self.box, self.cand_box))

    @property
    def view(self) -> str | None:
        if not self.linked:
            return None
        return "both" if self.cand_agreed else self.cand_view


@dataclass(frozen=True)
class Item:
    """One object to review on one image at one checkpoint (see the module docstring)."""

    id: int
    image_id: int
    checkpoint: int
    category_id: int
    box: tuple[float, float, float, float]
    score: float
    view: str
    agreement: float
    member_ids: tuple[int, ...]
    state: str = "pending"
    decision: Decision | None = None

    @property
    def shown_category(self) -> int:
        """The class to show: the decided one for an accepted (maybe edited) item."""
        return self.decision.category_id if self.state == "accepted" and self.decision else self.category_id

    @property
    def shown_box(self):
        return self.decision.box if self.state == "accepted" and self.decision else self.box


@dataclass(frozen=True)
class Filters:
    """What the queue shows. Empty tuples mean 'all'."""

    classes: tuple[int, ...] = ()
    views: tuple[str, ...] = ()
    score_min: float = 0.0
    score_max: float = 1.0
    states: tuple[str, ...] = ("pending",)
    include_rejected: bool = False
    sort: str = "score"

    def __post_init__(self):
        bad = [v for v in self.views if v not in VIEW_KINDS]
        bad += [s for s in self.states if s not in STATES]
        if bad:
            raise InputError(None, f"unknown filter values {bad}")
        if self.sort not in SORTS:
            raise InputError(None, f"sort must be one of {SORTS}, got {self.sort!r}")

    def match(self, item: Item) -> bool:
        return ((not self.classes or item.category_id in self.classes)
                and (not self.views or item.view in self.views)
                and self.score_min - 1e-9 <= item.score <= self.score_max + 1e-9
                and (not self.states or item.state in self.states))

    def key(self, item: Item):
        """Sort key, best first."""
        if self.sort == "agreement":
            return (-(item.view == "both"), -item.agreement, -item.score, item.image_id, item.id)
        return (-item.score, item.image_id, item.id)


@dataclass(frozen=True)
class QueueEntry:
    image_id: int
    n_match: int          # items on this image that pass the filters
    n_items: int          # all items on this image at this checkpoint
    top_score: float


# ----------------------------------------------------------------------------- the run


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
        self._groups_cache: OrderedDict = OrderedDict()   # checkpoint -> (mined_at, items)
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

    def grouped_items(self, checkpoint: int) -> dict[int, list[Item]]:
        """{image_id: pending items} of a checkpoint (see `grouped_items`), cached: the
        grouping depends on the candidates only, which change only when the checkpoint
        is re-mined (a new `mined_at`). Decisions are always applied live."""
        row = self.conn.execute("SELECT mined_at FROM checkpoints WHERE iteration = ?",
                                (checkpoint,)).fetchone()
        mined_at = row["mined_at"] if row else None
        with self._lock:
            hit = self._groups_cache.get(checkpoint)
            if hit is not None and hit[0] == mined_at:
                self._groups_cache.move_to_end(checkpoint)
                return hit[1]
        with paused_gc():
            grouped = grouped_items(self.conn, checkpoint)
        with self._lock:
            self._groups_cache[checkpoint] = (mined_at, grouped)
            while len(self._groups_cache) > 3:
                self._groups_cache.popitem(last=False)
        return grouped

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
        img = np.full((max(h, 1), max(w, 1), 3), 60, np.uint8)
        img[::16, :, :] = 70
        img[:, ::16, :] = 70
        text = "image not available"
        scale = _font_scale(w, h) * 1.6
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
        cv2.putText(img, text, (max(0, (w - tw) // 2), (h + th) // 2), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, (150, 150, 150), 2, cv2.LINE_AA)
        return img

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


# ----------------------------------------------------------------------------- reading


_DECISION_SQL = """
SELECT d.id, d.candidate_id, d.image_id, d.decision, d.category_id, d.x, d.y, d.w, d.h,
       d.decided_at, d.client,
       c.checkpoint AS c_checkpoint, c.category_id AS c_category, c.x AS c_x, c.y AS c_y,
       c.w AS c_w, c.h AS c_h, c.score AS c_score, c.view AS c_view, c.agreed AS c_agreed
FROM decisions d
LEFT JOIN candidates c ON c.id = d.candidate_id AND c.image_id = d.image_id
     AND (SELECT k.mined_at FROM checkpoints k WHERE k.iteration = c.checkpoint) <= d.decided_at
WHERE d.undone = 0 {where}
ORDER BY d.id
"""


def _decision(r) -> Decision:
    linked = r["c_checkpoint"] is not None
    return Decision(
        id=r["id"], candidate_id=r["candidate_id"], image_id=r["image_id"], decision=r["decision"],
        category_id=r["category_id"], box=(r["x"], r["y"], r["w"], r["h"]),
        decided_at=r["decided_at"], client=r["client"],
        cand_checkpoint=r["c_checkpoint"] if linked else None,
        cand_category=r["c_category"] if linked else None,
        cand_box=(r["c_x"], r["c_y"], r["c_w"], r["c_h"]) if linked else None,
        cand_score=r["c_score"] if linked else None,
        cand_view=r["c_view"] if linked else None,
        cand_agreed=bool(r["c_agreed"]) if linked else False)


def decisions(conn, image_id: int | None = None, *, ids=None) -> list[Decision]:
    """Non-undone decisions (of one image, or with these ids, or all), oldest first."""
    if ids is not None:
        ids = [int(i) for i in ids]
        rows = conn.execute(_DECISION_SQL.format(where=f"AND d.id IN ({','.join('?' * len(ids))})"),
                            ids) if ids else []
    elif image_id is None:
        rows = conn.execute(_DECISION_SQL.format(where=""))
    else:
        rows = conn.execute(_DECISION_SQL.format(where="AND d.image_id = ?"), (image_id,))
    return [_decision(r) for r in rows]


def _covering(item_cats: np.ndarray, item_boxes: np.ndarray, members: list[tuple],
              decs: list[Decision], include_rejected: bool) -> list[Decision | None]:
    """For each item (class, top box, member ids), the latest decision that covers it
    (see the module docstring), vectorised over items x decisions."""
    n, m = len(item_cats), len(decs)
    if m == 0:
        return [None] * n
    d_box = np.array([d.box for d in decs], np.float64)
    d_cand = np.array([d.cand_box if d.cand_box is not None else (0, 0, 0, 0) for d in decs],
                      np.float64)
    d_cat = np.array([d.category_id for d in decs])
    d_cand_cat = np.array([d.cand_category if d.cand_category is not None else -(1 << 62)
                           for d in decs])
    overlap = np.maximum(iou_matrix(item_boxes, d_box), iou_matrix(item_boxes, d_cand)) >= IOU_SAME
    same_cls = (item_cats[:, None] == d_cat[None]) | (item_cats[:, None] == d_cand_cat[None])
    indirect = overlap & same_cls
    if include_rejected:
        indirect &= np.array([d.decision != "rejected" for d in decs])[None]
    where = {}
    for i, ids in enumerate(members):
        for cid in ids:
            where[cid] = i
    cover = indirect
    for j, d in enumerate(decs):
        if d.linked and d.candidate_id in where:
            cover[where[d.candidate_id], j] = True
    order = np.array([d.id for d in decs])
    out = []
    for i in range(n):
        js = np.flatnonzero(cover[i])
        out.append(decs[int(js[np.argmax(order[js])])] if len(js) else None)
    return out


# Candidate columns as the grouping reads them: plain tuples (fetched without sqlite3.Row,
# the grouping of a checkpoint being a hot path of exports and of the first page load).
_CAND_COLS = "id, image_id, category_id, x, y, w, h, score, view, agreed, partner_id"
_ID, _IMAGE, _CAT, _X, _Y, _W, _H, _SCORE, _VIEW, _AGREED, _PARTNER = range(11)


def _candidate_rows(conn, where: str, params) -> list[tuple]:
    cur = conn.cursor()
    cur.row_factory = None
    return cur.execute(f"SELECT {_CAND_COLS} FROM candidates WHERE {where}", params).fetchall()


def group_items(rows, checkpoint: int) -> list[Item]:
    """Items of one image at one checkpoint from its candidate rows (tuples in
    `_CAND_COLS` order), all pending, best score first. Greedy by score: a candidate
    joins the item of its agreed partner, else the first item of its class whose top
    box it overlaps with IoU >= 0.5. Depends on the candidates only, so a run caches
    it per checkpoint."""
    order = sorted(rows, key=lambda r: (-r[_SCORE], r[_ID]))
    box = {r[_ID]: (r[_X], r[_Y], r[_W], r[_H]) for r in order}
    group_of: dict[int, int] = {}
    groups: list[list[tuple]] = []
    of_class: dict[int, list[int]] = defaultdict(list)   # class -> its groups, oldest first
    for r in order:
        g = None
        partner = r[_PARTNER]
        if partner is not None and partner in group_of:
            if groups[group_of[partner]][0][_CAT] == r[_CAT]:
                g = group_of[partner]
        if g is None:
            mine = box[r[_ID]]
            for k in of_class[r[_CAT]]:
                if iou(mine, box[groups[k][0][_ID]]) >= IOU_SAME:
                    g = k
                    break
        if g is None:
            g = len(groups)
            groups.append([r])
            of_class[r[_CAT]].append(g)
        else:
            groups[g].append(r)
        group_of[r[_ID]] = g
    items = []
    for members in groups:
        top = members[0]
        views = {r[_VIEW] for r in members}
        if len(views) == 2:
            o = next(r for r in members if r[_VIEW] == "original")
            a = next(r for r in members if r[_VIEW] == "augmented")
            agreement = iou(box[o[_ID]], box[a[_ID]])
        elif top[_AGREED] and top[_PARTNER] in box:
            agreement = iou(box[top[_ID]], box[top[_PARTNER]])
        else:
            agreement = 0.0
        view = "both" if len(views) == 2 or any(r[_AGREED] for r in members) else top[_VIEW]
        items.append(Item(id=top[_ID], image_id=top[_IMAGE], checkpoint=checkpoint,
                          category_id=top[_CAT], box=box[top[_ID]], score=float(top[_SCORE]),
                          view=view, agreement=float(agreement),
                          member_ids=tuple(r[_ID] for r in members)))
    return items   # groups are created in score order: already best first


def decide_items(items: list[Item], decs: list[Decision], *,
                 include_rejected: bool = False) -> list[Item]:
    """The pending `items` of one image with the state its decisions give them."""
    if not items or not decs:
        return items
    boxes = np.array([it.box for it in items], np.float64)
    cats = np.array([it.category_id for it in items])
    covering = _covering(cats, boxes, [it.member_ids for it in items], decs, include_rejected)
    return [it if d is None else dataclasses.replace(it, state=d.decision, decision=d)
            for it, d in zip(items, covering)]


def build_items(rows, decs: list[Decision], checkpoint: int, *,
                include_rejected: bool = False) -> list[Item]:
    """Items of one image at one checkpoint from its candidate rows and its decisions,
    best score first."""
    return decide_items(group_items(rows, checkpoint), decs, include_rejected=include_rejected)


def image_items(run: Run, checkpoint: int, image_id: int, *,
                include_rejected: bool = False) -> list[Item]:
    """The items of one image at one checkpoint, best score first (the numbering shown)."""
    conn = run.conn
    rows = _candidate_rows(conn, "checkpoint = ? AND image_id = ?", (checkpoint, image_id))
    return build_items(rows, decisions(conn, image_id) if rows else [], checkpoint,
                       include_rejected=include_rejected)


def grouped_items(conn, checkpoint: int) -> dict[int, list[Item]]:
    """{image_id: pending items} over every image with candidates at this checkpoint."""
    per_image: dict[int, list] = defaultdict(list)
    for r in _candidate_rows(conn, "checkpoint = ? ORDER BY image_id, id", (checkpoint,)):
        per_image[r[_IMAGE]].append(r)
    return {im: group_items(rs, checkpoint) for im, rs in per_image.items()}


def all_items(run: Run, checkpoint: int, *, include_rejected: bool = False) -> dict[int, list[Item]]:
    """{image_id: items} over every image with candidates at this checkpoint."""
    grouped = run.grouped_items(checkpoint)
    decs: dict[int, list[Decision]] = defaultdict(list)
    for d in decisions(run.conn):
        if d.image_id in grouped:
            decs[d.image_id].append(d)
    if not decs:
        return dict(grouped)
    return {im: decide_items(items, decs[im], include_rejected=include_rejected) if im in decs
            else items for im, items in grouped.items()}


def queue(run: Run, checkpoint: int, filters: Filters = Filters()) -> list[QueueEntry]:
    """Images holding at least one item that passes the filters, best first by the
    filter's sort (an image ranks by its best matching item)."""
    entries = []
    for image_id, items in all_items(run, checkpoint, include_rejected=filters.include_rejected).items():
        matched = [it for it in items if filters.match(it)]
        if not matched:
            continue
        best = min(matched, key=filters.key)
        entries.append((filters.key(best), QueueEntry(image_id, len(matched), len(items),
                                                       max(it.score for it in matched))))
    entries.sort(key=lambda e: e[0])
    return [e for _, e in entries]


def queue_items(run: Run, checkpoint: int, filters: Filters = Filters()) -> list[Item]:
    """Every item that passes the filters over all images, best first (the fast mode)."""
    out = [it for items in all_items(run, checkpoint, include_rejected=filters.include_rejected).values()
           for it in items if filters.match(it)]
    out.sort(key=filters.key)
    return out


# ----------------------------------------------------------------------------- writing


def _insert(conn, run: Run, candidate_id: int, decision: str, client: str | None, when: str,
            category_id: int | None = None, box=None) -> int:
    row = conn.execute("SELECT image_id, category_id, x, y, w, h FROM candidates WHERE id = ?",
                       (candidate_id,)).fetchone()
    if row is None:
        raise InputError(None, f"candidate {candidate_id} no longer exists (was its checkpoint "
                               f"re-mined?); reload the page")
    cat = row["category_id"] if category_id is None else int(category_id)
    if cat not in run.categories:
        raise InputError(None, f"unknown class {category_id!r}")
    _, width, height = run.images.get(row["image_id"], ("", 1 << 30, 1 << 30))
    box = (row["x"], row["y"], row["w"], row["h"]) if box is None else clean_box(box, width, height)
    cur = conn.execute(
        "INSERT INTO decisions (candidate_id, image_id, decision, category_id, x, y, w, h,"
        " decided_at, client) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (candidate_id, row["image_id"], decision, cat, *map(float, box), when, client))
    return cur.lastrowid


def _stamp(conn, client: str | None) -> str:
    """The time stamp of a new write transaction of `client`: now, but strictly after the
    client's previous one, so that the rows of one transaction (a batch) share a stamp
    no other transaction of that client has (undo reverts by stamp). Call inside the
    transaction."""
    now = store.now_iso()
    row = conn.execute("SELECT MAX(decided_at) FROM decisions WHERE client IS ?", (client,)).fetchone()
    if row[0] is not None and row[0] >= now:
        later = datetime.fromisoformat(row[0]) + timedelta(milliseconds=1)
        now = later.isoformat(timespec="milliseconds")
    return now


def _check_decision(decision: str) -> None:
    if decision not in ("accepted", "rejected"):
        raise InputError(None, f"a decision is 'accepted' or 'rejected', got {decision!r}")


def decide(run: Run, candidate_id: int, decision: str, *, client: str | None = None,
           category_id: int | None = None, box=None) -> int:
    """Record one decision (optionally with a changed class and/or an adjusted xywh box);
    returns the decision's id. Committed before returning."""
    _check_decision(decision)
    conn = run.conn
    with store.transaction(conn):
        return _insert(conn, run, int(candidate_id), decision, client, _stamp(conn, client),
                       category_id, box)


def decide_many(run: Run, choices: list[tuple[int, str]], *, client: str | None = None) -> int:
    """Several (candidate_id, decision) in one transaction; one undo reverts them all."""
    for _, decision in choices:
        _check_decision(decision)
    conn = run.conn
    with store.transaction(conn):
        when = _stamp(conn, client)
        for cid, decision in choices:
            _insert(conn, run, int(cid), decision, client, when)
    return len(choices)


def undo(run: Run, client: str | None) -> list[Decision]:
    """Mark the client's last decision undone (a whole batch, when it was one: the rows
    one transaction wrote share a time stamp, see _stamp). Returns what was undone,
    [] when nothing."""
    conn = run.conn
    with store.transaction(conn):
        row = conn.execute("SELECT decided_at FROM decisions WHERE client IS ? AND undone = 0 "
                           "ORDER BY id DESC LIMIT 1", (client,)).fetchone()
        if row is None:
            return []
        ids = [r["id"] for r in conn.execute(
            "SELECT id FROM decisions WHERE client IS ? AND undone = 0 AND decided_at = ?",
            (client, row["decided_at"]))]
        undone = decisions(conn, ids=ids)
        conn.execute(f"UPDATE decisions SET undone = 1 WHERE id IN ({','.join('?' * len(ids))})", ids)
    return undone


def batch_candidates(run: Run, checkpoint: int, min_score: float, *,
                     classes: tuple[int, ...] = ()) -> list[Item]:
    """Pending items both views agree on, with score >= min_score (the batch preview)."""
    f = Filters(classes=tuple(classes), views=("both",), score_min=float(min_score), score_max=1.0,
                states=("pending",))
    return queue_items(run, checkpoint, f)


class CountChanged(InputError):
    """The batch changed since its preview (another client decided meanwhile)."""


def batch_accept(run: Run, checkpoint: int, min_score: float, *, client: str | None = None,
                 classes: tuple[int, ...] = (), expected: int | None = None) -> int:
    """Accept every pending agreed item with score >= min_score; returns how many.
    The set is recomputed inside the write transaction, so a decision another client
    made meanwhile is respected and nothing is decided twice. With `expected` (the
    count the user was shown), a different count writes nothing and raises CountChanged."""
    conn = run.conn
    with store.transaction(conn):
        when = _stamp(conn, client)
        items = batch_candidates(run, checkpoint, min_score, classes=classes)
        if expected is not None and len(items) != expected:
            raise CountChanged(None, f"the batch changed since its preview: {len(items)} agreed "
                                     f"candidates now (not {expected}); nothing was accepted, "
                                     f"check the new count and press again")
        for it in items:
            _insert(conn, run, it.id, "accepted", client, when)
    return len(items)


# ----------------------------------------------------------------------------- export support


def _same_object(a: Decision, b: Decision) -> bool:
    if a.linked and b.linked and a.candidate_id == b.candidate_id:
        return True
    if not (a.categories & b.categories):
        return False
    return max(iou(p, q) for p in a.boxes for q in b.boxes) >= IOU_SAME


def effective_decisions(conn) -> list[Decision]:
    """The decisions that stand: of several about one object (same candidate, or same
    class with IoU >= 0.5 on one image), only the latest. Oldest first."""
    per_image: dict[int, list[Decision]] = defaultdict(list)
    for d in decisions(conn):
        per_image[d.image_id].append(d)
    kept_all = []
    for decs in per_image.values():
        kept: list[Decision] = []
        for d in sorted(decs, key=lambda d: -d.id):
            if not any(_same_object(d, k) for k in kept):
                kept.append(d)
        kept_all.extend(kept)
    kept_all.sort(key=lambda d: d.id)
    return kept_all


# ----------------------------------------------------------------------------- progress


def progress(run: Run, checkpoint: int) -> dict:
    """Counts of the checkpoint's items: total, reviewed, accepted, rejected, pending,
    overall and per class."""
    per_class = {cid: {"category_id": cid, "name": name, "total": 0, "accepted": 0,
                       "rejected": 0, "pending": 0} for cid, name in run.categories.items()}
    total = {"total": 0, "accepted": 0, "rejected": 0, "pending": 0}
    for items in all_items(run, checkpoint).values():
        for it in items:
            row = per_class.setdefault(it.category_id, {
                "category_id": it.category_id, "name": str(it.category_id), "total": 0,
                "accepted": 0, "rejected": 0, "pending": 0})
            for counts in (row, total):
                counts["total"] += 1
                counts[it.state] += 1
    total["reviewed"] = total["accepted"] + total["rejected"]
    for row in per_class.values():
        row["reviewed"] = row["accepted"] + row["rejected"]
    n_decisions = run.conn.execute("SELECT COUNT(*) FROM decisions WHERE undone = 0").fetchone()[0]
    return dict(total, checkpoint=checkpoint, decisions=n_decisions,
                per_class=[r for r in per_class.values() if r["total"]])


def decision_counts(run: Run) -> dict:
    """Cheap run-wide counts of standing decision rows (for a status line)."""
    out = {"accepted": 0, "rejected": 0}
    for r in run.conn.execute("SELECT decision, COUNT(*) AS n FROM decisions WHERE undone = 0 "
                              "GROUP BY decision"):
        out[r["decision"]] = r["n"]
    return out


# ----------------------------------------------------------------------------- plots


def read_metrics(path) -> list[dict]:
    """metrics.jsonl rows (a half-written last line or a bad line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("iteration"), (int, float)):
                    rows.append(row)
    except OSError:
        return []
    return rows


def _hidden_boxes(path: Path) -> tuple[dict[int, list], int]:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise InputError(path, "hidden file is not a COCO json with an 'annotations' list")
    out: dict[int, list] = defaultdict(list)
    n = 0
    for a in data["annotations"]:
        if a.get("iscrowd", 0):
            continue
        try:
            out[int(a["image_id"])].append((int(a["category_id"]), [float(v) for v in a["bbox"]]))
            n += 1
        except (KeyError, TypeError, ValueError):
            continue
    return out, n


def mining_quality(run: Run, checkpoint: int, hidden: dict[int, list], n_hidden: int) -> dict:
    """Precision and recall of one checkpoint's mined boxes against the hidden
    (erased) annotations: a mined box is a hit when a hidden box of its class overlaps
    it with IoU >= 0.5. Per view, for agreed boxes (original rows with agreed=1), and
    for both views together (recall only counts each hidden box once)."""
    rows = run.conn.execute("SELECT image_id, category_id, x, y, w, h, view, agreed FROM candidates "
                            "WHERE checkpoint = ?", (checkpoint,)).fetchall()
    per_image: dict[int, list] = defaultdict(list)
    for r in rows:
        per_image[r["image_id"]].append(r)
    kinds = ("original", "augmented", "agreed", "union")
    mined = dict.fromkeys(kinds, 0)
    hits = dict.fromkeys(kinds, 0)
    found = {k: 0 for k in kinds}
    for image_id, rs in per_image.items():
        gt = hidden.get(image_id, [])
        boxes = np.array([[r["x"], r["y"], r["w"], r["h"]] for r in rs], np.float64)
        cats = np.array([r["category_id"] for r in rs])
        if gt:
            gt_boxes = np.array([b for _, b in gt], np.float64)
            gt_cats = np.array([c for c, _ in gt])
            match = (iou_matrix(boxes, gt_boxes) >= IOU_SAME) & (cats[:, None] == gt_cats[None])
        else:
            match = np.zeros((len(rs), 0), bool)
        views = np.array([r["view"] for r in rs])
        agreed = np.array([bool(r["agreed"]) for r in rs])
        masks = {"original": views == "original", "augmented": views == "augmented",
                 "agreed": (views == "original") & agreed, "union": np.ones(len(rs), bool)}
        for k, m in masks.items():
            if k != "union":
                mined[k] += int(m.sum())
                hits[k] += int(match[m].any(axis=1).sum()) if match.shape[1] else 0
            found[k] += int(match[m].any(axis=0).sum()) if match.shape[1] else 0
    out = {"checkpoint": checkpoint, "n_hidden": n_hidden}
    for k in kinds:
        if k != "union":
            out[f"precision_{k}"] = hits[k] / mined[k] if mined[k] else None
            out[f"mined_{k}"] = mined[k]
        out[f"recall_{k}"] = found[k] / n_hidden if n_hidden else None
    return out


def plot_data(run: Run) -> dict:
    """Everything the plots show: training metrics, mined boxes per view per
    checkpoint, and mining precision/recall per checkpoint when the run knows its
    hidden file (`quality` is None otherwise, with `quality_note` saying why)."""
    ckpts = run.checkpoint_rows()
    data = {"metrics": read_metrics(run.dir / "metrics.jsonl"), "checkpoints": ckpts,
            "quality": None, "quality_note": None}
    if run.hidden_path is None:
        data["quality_note"] = ("precision/recall need the hidden file of a sparsified set; "
                                "this run does not name one")
        return data
    try:
        key = ("hidden", str(run.hidden_path), run.hidden_path.stat().st_mtime_ns)
    except OSError:
        data["quality_note"] = f"hidden file {run.hidden_path} not found"
        return data
    try:
        if key not in run._plot_cache:
            run._plot_cache = {key: _hidden_boxes(run.hidden_path)}
        hidden, n_hidden = run._plot_cache[key]
    except InputError as exc:
        data["quality_note"] = str(exc)
        return data
    quality = []
    for c in ckpts:
        ck = ("quality", c["iteration"], c["mined_at"])
        if ck not in run._plot_cache:
            run._plot_cache[ck] = mining_quality(run, c["iteration"], hidden, n_hidden)
        quality.append(run._plot_cache[ck])
    data["quality"] = quality
    return data


def plot_figures(data: dict) -> dict:
    """Matplotlib figures {'losses', 'mined', 'quality'} for `plot_data`'s result."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figs = {}
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=100)
    metrics = data["metrics"]
    if metrics:
        for key, colour in (("loss", "#333333"), ("loss_original", "#ff9800"),
                            ("loss_augmented", "#29b6f6")):
            pts = [(m["iteration"], m[key]) for m in metrics
                   if isinstance(m.get(key), (int, float)) and math.isfinite(m[key])]
            if pts:
                ax.plot(*zip(*pts), label=key.replace("_", " "), color=colour, lw=1.4)
        for c in data["checkpoints"]:
            ax.axvline(c["iteration"], color="#aaaaaa", lw=0.8, ls=":")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no metrics.jsonl yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("training losses (dotted: mined checkpoints)", fontsize=10)
    ax.set_xlabel("iteration")
    fig.tight_layout()
    figs["losses"] = fig

    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=100)
    ck = data["checkpoints"]
    if ck:
        its = [c["iteration"] for c in ck]
        ax.plot(its, [c["n_original"] for c in ck], "o-", color="#ff9800", label="original view")
        ax.plot(its, [c["n_augmented"] for c in ck], "s-", color="#29b6f6", label="augmented view")
        ax.plot(its, [c["n_agreed"] for c in ck], "^-", color="#e040fb", label="agreed (both)")
        ax.legend(fontsize=8)
        ax.set_ylim(bottom=0)
    else:
        ax.text(0.5, 0.5, "no mined checkpoint yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("mined boxes per checkpoint", fontsize=10)
    ax.set_xlabel("checkpoint (iteration)")
    fig.tight_layout()
    figs["mined"] = fig

    q = data["quality"]
    if q:
        fig, (ax_p, ax_r) = plt.subplots(1, 2, figsize=(9.6, 3.4), dpi=100, sharey=True)
        its = [r["checkpoint"] for r in q]
        series = (("original", "#ff9800", "o-"), ("augmented", "#29b6f6", "s-"),
                  ("agreed", "#e040fb", "^-"), ("union", "#2e7d32", "D--"))
        for ax, what in ((ax_p, "precision"), (ax_r, "recall")):
            for kind, colour, style in series:
                key = f"{what}_{kind}"
                if key not in q[0]:
                    continue
                ys = [r[key] if r[key] is not None else float("nan") for r in q]
                label = {"union": "either view", "agreed": "agreed (both)"}.get(kind, f"{kind} view")
                ax.plot(its, ys, style, color=colour, label=label)
            ax.set_ylim(0, 1.05)
            ax.set_xlabel("checkpoint (iteration)")
            ax.set_title(what, fontsize=10)
            ax.grid(alpha=0.3)
        ax_r.legend(fontsize=8, loc="lower right")
        fig.suptitle(f"mined boxes vs the {q[0]['n_hidden']} hidden (erased) boxes: "
                     f"a hit is the same class at IoU >= 0.5", fontsize=10)
    else:
        fig, ax = plt.subplots(figsize=(9.6, 2.4), dpi=100)
        ax.text(0.5, 0.5, data.get("quality_note") or "no mined checkpoint yet", ha="center",
                va="center", transform=ax.transAxes, fontsize=9, wrap=True)
        ax.set_axis_off()
        ax.set_title("mining precision / recall", fontsize=10)
    fig.tight_layout()
    figs["quality"] = fig
    for f in figs.values():
        plt.close(f)
    return figs


# ----------------------------------------------------------------------------- drawing


def _font_scale(width: int, height: int) -> float:
    return float(np.clip(max(width, height) / 1400.0, 0.38, 1.2))


def _label(img, text: str, x: int, y: int, colour, scale: float, *, dark_text: bool = True) -> None:
    thick = 1 if scale < 0.8 else 2
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    h, w = img.shape[:2]
    x = int(min(max(x, 0), max(w - tw - 4, 0)))
    top = y - th - base - 3
    if top < 0:
        top = y + 1
    cv2.rectangle(img, (x, top), (x + tw + 4, top + th + base + 3), colour, -1)
    cv2.putText(img, text, (x + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (0, 0, 0) if dark_text else (255, 255, 255), thick, cv2.LINE_AA)


def _dashed_rect(img, p1, p2, colour, thick: int, dash: int = 8) -> None:
    (x1, y1), (x2, y2) = p1, p2
    for a, b, fixed, horizontal in ((x1, x2, y1, True), (x1, x2, y2, True),
                                    (y1, y2, x1, False), (y1, y2, x2, False)):
        for s in range(a, b, 2 * dash):
            e = min(s + dash, b)
            if horizontal:
                cv2.line(img, (s, fixed), (e, fixed), colour, thick)
            else:
                cv2.line(img, (fixed, s), (fixed, e), colour, thick)


def _pts(box):
    x, y, w, h = box
    return (int(round(x)), int(round(y))), (int(round(x + w)), int(round(y + h)))


def render(image: np.ndarray, items: list[Item], *, names: dict[int, str],
           annotations=(), layers=LAYERS, selected: int | None = None,
           labels: bool = True) -> np.ndarray:
    """The image with boxes drawn (OpenCV, RGB): annotations dimmed, pending items in
    their view's colour with '#n class score', decided items green (accepted) or red
    dashed (rejected) when the 'decided' layer is on, the selected item outlined."""
    img = np.array(image, dtype=np.uint8, copy=True)
    h, w = img.shape[:2]
    scale = _font_scale(w, h)
    thick = max(2, int(round(2 * scale / 0.6)))
    layers = set(layers)
    if "annotated" in layers and annotations:
        over = img.copy()
        for cat, box in annotations:
            p1, p2 = _pts(box)
            cv2.rectangle(over, p1, p2, COLOURS["annotated"], max(1, thick - 1))
            if labels:
                cv2.putText(over, names.get(cat, str(cat)), (p1[0] + 2, p1[1] + int(14 * scale / 0.5)),
                            cv2.FONT_HERSHEY_SIMPLEX, scale * 0.9, COLOURS["annotated"], 1, cv2.LINE_AA)
        cv2.addWeighted(over, 0.55, img, 0.45, 0, dst=img)
    sel_item = None
    # Lowest score first so that the best boxes end up on top.
    for n, it in sorted(enumerate(items, 1), key=lambda t: t[1].score):
        if it.state == "pending":
            if it.view not in layers:
                continue
            colour = COLOURS[it.view]
        else:
            if "decided" not in layers:
                continue
            colour = COLOURS[it.state]
        if it.id == selected:
            sel_item = (n, it, colour)
            continue
        p1, p2 = _pts(it.shown_box)
        if it.state == "rejected":
            _dashed_rect(img, p1, p2, colour, max(1, thick - 1))
        else:
            cv2.rectangle(img, p1, p2, colour, thick + (1 if it.state == "accepted" else 0))
        if labels:
            tag = {"pending": f"{it.score:.2f}", "accepted": "ok", "rejected": "x"}[it.state]
            _label(img, f"#{n} {names.get(it.shown_category, it.shown_category)} {tag}",
                   p1[0], p1[1], colour, scale)
    if sel_item is not None:
        n, it, colour = sel_item
        p1, p2 = _pts(it.shown_box)
        cv2.rectangle(img, (p1[0] - thick - 1, p1[1] - thick - 1), (p2[0] + thick + 1, p2[1] + thick + 1),
                      COLOURS["selected"], thick)
        cv2.rectangle(img, (p1[0] - 1, p1[1] - 1), (p2[0] + 1, p2[1] + 1), (0, 0, 0), 1)
        cv2.rectangle(img, p1, p2, colour, thick + 1)
        state = "" if it.state == "pending" else f" [{it.state}]"
        _label(img, f"#{n} {names.get(it.shown_category, it.shown_category)} {it.score:.2f}{state}",
               p1[0], p1[1] - thick - 1, COLOURS["selected"], scale * 1.1)
    return img


def item_at(items: list[Item], x: float, y: float, *, layers=LAYERS) -> Item | None:
    """The smallest visible item whose box contains (x, y) (for click-to-select)."""
    layers = set(layers)
    hits = []
    for it in items:
        visible = it.view in layers if it.state == "pending" else "decided" in layers
        bx, by, bw, bh = it.shown_box
        if visible and bx <= x <= bx + bw and by <= y <= by + bh:
            hits.append((bw * bh, it.id, it))
    return min(hits, key=lambda t: t[:2])[2] if hits else None


def crop(image: np.ndarray, box, *, context: float = 0.5, min_side: int = 48,
         size: int = 176) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A crop around an xywh box with `context` of its size on each side (at least
    `min_side` px in all), resized so its longer side is `size`. Returns the crop and
    its window (x0, y0, x1, y1) in image pixels."""
    h, w = image.shape[:2]
    x, y, bw, bh = box
    cx, cy = x + bw / 2, y + bh / 2
    half_w = max(bw * (0.5 + context), min_side / 2)
    half_h = max(bh * (0.5 + context), min_side / 2)
    x0, x1 = int(max(0, math.floor(cx - half_w))), int(min(w, math.ceil(cx + half_w)))
    y0, y1 = int(max(0, math.floor(cy - half_h))), int(min(h, math.ceil(cy + half_h)))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    patch = image[y0:y1, x0:x1]
    f = size / max(patch.shape[:2])
    out = cv2.resize(patch, (max(1, round(patch.shape[1] * f)), max(1, round(patch.shape[0] * f))),
                     interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    return np.ascontiguousarray(out), (x0, y0, x1, y1)


def crops(run: Run, items: list[Item], *, context: float = 0.5, size: int = 176) -> list[tuple]:
    """[(crop RGB with the box drawn, caption)] for the fast mode."""
    out = []
    for it in items:
        image, problem = run.load_image(it.image_id)
        patch, (x0, y0, x1, y1) = crop(image, it.shown_box, context=context, size=size)
        f = patch.shape[1] / (x1 - x0)
        bx, by, bw, bh = it.shown_box
        colour = COLOURS[it.view] if it.state == "pending" else COLOURS[it.state]
        cv2.rectangle(patch, (int((bx - x0) * f), int((by - y0) * f)),
                      (int((bx + bw - x0) * f), int((by + bh - y0) * f)), colour, 2)
        caption = (f"{run.category_name(it.shown_category)} {it.score:.2f} · {it.view}"
                   f"{'' if it.state == 'pending' else ' · ' + it.state}"
                   f"{' · image missing' if problem else ''}")
        out.append((patch, caption))
    return out


def describe(n: int, it: Item, names: dict[int, str]) -> str:
    """One line for the candidate list: '#3 disc 0.91 · both views · pending'."""
    name = names.get(it.category_id, str(it.category_id))
    state = it.state
    if it.state == "accepted" and it.decision and it.decision.edited:
        state = f"accepted (edited: {names.get(it.decision.category_id, it.decision.category_id)})"
    return f"#{n} {name} {it.score:.2f} · {VIEW_LABELS[it.view]} · {state}"
