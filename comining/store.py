"""The run's SQLite store, `RUN_DIR/comining.sqlite`: the one source of truth for review.

Schema (version SCHEMA_VERSION):

  meta(key TEXT PRIMARY KEY, value TEXT)
      schema_version, ann_path, images_dir, hidden_path (optional), detector, method
  images(id INTEGER PRIMARY KEY, file_name TEXT, width INTEGER, height INTEGER)
      the training images, ids as in the input json
  categories(id INTEGER PRIMARY KEY, name TEXT)
      the dataset's own category ids
  checkpoints(iteration INTEGER PRIMARY KEY, path TEXT, mined_at TEXT,
              score_thresh REAL, nms_iou REAL, gt_iou REAL,
              n_original INTEGER, n_augmented INTEGER, n_agreed INTEGER)
      one row per mined checkpoint; written in the same transaction as its candidates,
      so a checkpoint is either fully mined or absent (a killed mining leaves no trace)
  candidates(id INTEGER PRIMARY KEY AUTOINCREMENT, checkpoint INTEGER, image_id INTEGER,
             category_id INTEGER, x REAL, y REAL, w REAL, h REAL, score REAL,
             view TEXT ('original' | 'augmented'), agreed INTEGER (0/1),
             partner_id INTEGER NULL)
      a box mined by one view at one checkpoint, in original image pixels (COCO xywh);
      agreed = the other view found the same class at IoU >= 0.5 (partner_id: its best match)
  decisions(id INTEGER PRIMARY KEY, candidate_id INTEGER NULL, image_id INTEGER,
            decision TEXT ('accepted' | 'rejected'), category_id INTEGER,
            x REAL, y REAL, w REAL, h REAL, decided_at TEXT, client TEXT,
            undone INTEGER DEFAULT 0)
      the annotator's decisions, append-only (undo marks a row undone); the box and class
      are the decided ones (an edited box keeps its candidate_id)

WAL journal and a busy timeout let the review app and an export share the file.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from comining.errors import InputError

SCHEMA_VERSION = 1
STORE_NAME = "comining.sqlite"
VIEWS = ("original", "augmented")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS images (id INTEGER PRIMARY KEY, file_name TEXT NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS categories (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (iteration INTEGER PRIMARY KEY, path TEXT, mined_at TEXT,
    score_thresh REAL, nms_iou REAL, gt_iou REAL,
    n_original INTEGER, n_augmented INTEGER, n_agreed INTEGER);
CREATE TABLE IF NOT EXISTS candidates (id INTEGER PRIMARY KEY AUTOINCREMENT,
    checkpoint INTEGER NOT NULL REFERENCES checkpoints(iteration),
    image_id INTEGER NOT NULL REFERENCES images(id),
    category_id INTEGER NOT NULL REFERENCES categories(id),
    x REAL NOT NULL, y REAL NOT NULL, w REAL NOT NULL, h REAL NOT NULL, score REAL NOT NULL,
    view TEXT NOT NULL CHECK (view IN ('original', 'augmented')),
    agreed INTEGER NOT NULL DEFAULT 0, partner_id INTEGER);
CREATE INDEX IF NOT EXISTS candidates_by_checkpoint_image ON candidates (checkpoint, image_id);
CREATE INDEX IF NOT EXISTS candidates_by_image ON candidates (image_id);
CREATE TABLE IF NOT EXISTS decisions (id INTEGER PRIMARY KEY, candidate_id INTEGER,
    image_id INTEGER NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('accepted', 'rejected')),
    category_id INTEGER NOT NULL,
    x REAL NOT NULL, y REAL NOT NULL, w REAL NOT NULL, h REAL NOT NULL,
    decided_at TEXT NOT NULL, client TEXT, undone INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS decisions_by_candidate ON decisions (candidate_id);
CREATE INDEX IF NOT EXISTS decisions_by_image ON decisions (image_id);
"""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def connect(path: str | Path, *, create: bool = False, timeout: float = 30.0) -> sqlite3.Connection:
    """Open the store (WAL, busy timeout). With create=False a missing or foreign file is an
    InputError; an older schema version is refused with a clear message."""
    path = Path(path)
    if not create and not path.exists():
        raise InputError(path, "no comining store here (has this run been trained and mined?)")
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys=ON")
        if create:
            with transaction(conn):
                for stmt in _SCHEMA.strip().split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))
        version = schema_version(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise InputError(path, f"not a comining store ({exc})") from None
    if version != SCHEMA_VERSION:
        conn.close()
        raise InputError(path, f"store schema version {version} is not supported by this comining "
                               f"(expects {SCHEMA_VERSION}); re-mine the run with this version")
    return conn


def schema_version(conn: sqlite3.Connection) -> int | None:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    except sqlite3.OperationalError:
        return None
    return int(row[0]) if row else None


@contextmanager
def transaction(conn: sqlite3.Connection):
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error: all or nothing."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def snapshot(conn: sqlite3.Connection):
    """BEGIN (deferred) ... END: the reads inside see one state of the store (a WAL read
    snapshot), whatever other processes commit meanwhile; takes no write lock."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


def set_meta(conn: sqlite3.Connection, **values) -> None:
    with transaction(conn):
        for k, v in values.items():
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, None if v is None else str(v)))


def get_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return {r["key"]: r["value"] for r in conn.execute("SELECT key, value FROM meta")}


def write_dataset(conn: sqlite3.Connection, images: list[dict], categories: list[dict]) -> None:
    """Record the training images and categories (idempotent)."""
    with transaction(conn):
        conn.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?)",
                         [(im["id"], im["file_name"], im["width"], im["height"]) for im in images])
        conn.executemany("INSERT OR REPLACE INTO categories VALUES (?, ?)",
                         [(c["id"], str(c.get("name", c["id"]))) for c in categories])


def replace_checkpoint_candidates(conn: sqlite3.Connection, *, iteration: int, path: str,
                                  thresholds: dict, candidates: list[dict]) -> None:
    """Store one checkpoint's mining in a single transaction (replacing an earlier one).

    Each candidate: image_id, category_id, bbox [x, y, w, h], score, view, agreed, and
    `key` (any unique hashable) with `partner_key` naming its agreed partner, if any.
    """
    counts = {v: sum(1 for c in candidates if c["view"] == v) for v in VIEWS}
    n_agreed = sum(1 for c in candidates if c["agreed"] and c["view"] == "original")
    with transaction(conn):
        conn.execute("DELETE FROM candidates WHERE checkpoint = ?", (iteration,))
        conn.execute("DELETE FROM checkpoints WHERE iteration = ?", (iteration,))
        conn.execute("INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (iteration, path, now_iso(), thresholds["score_thresh"], thresholds["nms_iou"],
                      thresholds["gt_iou"], counts["original"], counts["augmented"], n_agreed))
        row_id = {}
        for c in candidates:
            x, y, w, h = (float(v) for v in c["bbox"])
            cur = conn.execute(
                "INSERT INTO candidates (checkpoint, image_id, category_id, x, y, w, h, score, view,"
                " agreed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (iteration, int(c["image_id"]), int(c["category_id"]), x, y, w, h,
                 float(c["score"]), c["view"], int(bool(c["agreed"]))))
            row_id[c["key"]] = cur.lastrowid
        conn.executemany("UPDATE candidates SET partner_id = ? WHERE id = ?",
                         [(row_id[c["partner_key"]], row_id[c["key"]]) for c in candidates
                          if c.get("partner_key") is not None])


def checkpoints(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM checkpoints ORDER BY iteration").fetchall()


def resolve_checkpoint(conn: sqlite3.Connection, which: str | int, path=None) -> int:
    """'last' or an iteration number -> a mined checkpoint's iteration."""
    its = [r["iteration"] for r in checkpoints(conn)]
    if not its:
        raise InputError(path, "no mined checkpoint in this run yet")
    if which in ("last", None):
        return its[-1]
    it = int(which)
    if it not in its:
        raise InputError(path, f"checkpoint {it} was not mined; mined: {', '.join(map(str, its))}")
    return it


def candidates(conn: sqlite3.Connection, checkpoint: int | None = None) -> list[sqlite3.Row]:
    if checkpoint is None:
        return conn.execute("SELECT * FROM candidates ORDER BY checkpoint, image_id, id").fetchall()
    return conn.execute("SELECT * FROM candidates WHERE checkpoint = ? ORDER BY image_id, id",
                        (checkpoint,)).fetchall()
