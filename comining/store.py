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
              n_original INTEGER, n_augmented INTEGER, n_agreed INTEGER, settings TEXT)
      one row per mined checkpoint; written in the same transaction as its candidates,
      so a checkpoint is either fully mined or absent (a killed mining leaves no trace);
      settings: the mining settings as json (ReviewMining), NULL for version-1 minings
  candidates(id INTEGER PRIMARY KEY AUTOINCREMENT, checkpoint INTEGER, image_id INTEGER,
             category_id INTEGER, x REAL, y REAL, w REAL, h REAL, score REAL,
             view TEXT ('original' | 'augmented'), agreed INTEGER (0/1),
             partner_id INTEGER NULL, object_id INTEGER)
      a box mined by one view at one checkpoint, in original image pixels (COCO xywh);
      agreed = the other view found the same class at IoU >= 0.5 (partner_id: its best
      match); object_id: the object it belongs to
  objects(id INTEGER PRIMARY KEY, checkpoint INTEGER, image_id INTEGER,
          category_id INTEGER, x REAL, y REAL, w REAL, h REAL, score REAL,
          score_original REAL, score_augmented REAL, view TEXT, classes TEXT,
          on_label INTEGER NULL)
      what the annotator reviews: one object per image and checkpoint (comining.objects),
      its id the id of its best candidate; box fused from its candidates; category_id its
      best class, classes the ranked alternatives as json [[category_id, score], ...];
      score the ranking score, score_<view> each view's best score (0: not seen);
      view 'original' | 'augmented' | 'both'; on_label: the class of the annotation it
      overlaps (a possible wrong label), NULL for a missing-object candidate
  decisions(id INTEGER PRIMARY KEY, candidate_id INTEGER NULL, image_id INTEGER,
            decision TEXT ('accepted' | 'rejected'), category_id INTEGER,
            x REAL, y REAL, w REAL, h REAL, decided_at TEXT, client TEXT,
            undone INTEGER DEFAULT 0)
      the annotator's decisions, append-only (undo marks a row undone); the box and class
      are the decided ones (an edited box keeps its candidate_id)
  rounds(round INTEGER PRIMARY KEY, start_iteration INTEGER, end_iteration INTEGER,
         targets TEXT, rejected TEXT, n_accepted INTEGER, n_rejected INTEGER, started_at TEXT)
      the loop's refine rounds (comining.rounds; round 0, training on the inputs, has no
      row): round r trains from checkpoint start_iteration to end_iteration on `targets`
      (the inputs + the accepted boxes) with `rejected` as known background; its
      checkpoints are those after start_iteration up to end_iteration
  round_decisions(round INTEGER, decision_id INTEGER, PRIMARY KEY (round, decision_id))
      the standing decisions each round's targets were made from

WAL journal and a busy timeout let the review app and an export share the file.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from comining.errors import InputError

SCHEMA_VERSION = 4
STORE_NAME = "comining.sqlite"
VIEWS = ("original", "augmented")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS images (id INTEGER PRIMARY KEY, file_name TEXT NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS categories (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (iteration INTEGER PRIMARY KEY, path TEXT, mined_at TEXT,
    score_thresh REAL, nms_iou REAL, gt_iou REAL,
    n_original INTEGER, n_augmented INTEGER, n_agreed INTEGER, settings TEXT);
CREATE TABLE IF NOT EXISTS candidates (id INTEGER PRIMARY KEY AUTOINCREMENT,
    checkpoint INTEGER NOT NULL REFERENCES checkpoints(iteration),
    image_id INTEGER NOT NULL REFERENCES images(id),
    category_id INTEGER NOT NULL REFERENCES categories(id),
    x REAL NOT NULL, y REAL NOT NULL, w REAL NOT NULL, h REAL NOT NULL, score REAL NOT NULL,
    view TEXT NOT NULL CHECK (view IN ('original', 'augmented')),
    agreed INTEGER NOT NULL DEFAULT 0, partner_id INTEGER, object_id INTEGER);
CREATE INDEX IF NOT EXISTS candidates_by_checkpoint_image ON candidates (checkpoint, image_id);
CREATE INDEX IF NOT EXISTS candidates_by_image ON candidates (image_id);
CREATE INDEX IF NOT EXISTS candidates_by_object ON candidates (object_id);
CREATE TABLE IF NOT EXISTS decisions (id INTEGER PRIMARY KEY, candidate_id INTEGER,
    image_id INTEGER NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('accepted', 'rejected')),
    category_id INTEGER NOT NULL,
    x REAL NOT NULL, y REAL NOT NULL, w REAL NOT NULL, h REAL NOT NULL,
    decided_at TEXT NOT NULL, client TEXT, undone INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS decisions_by_candidate ON decisions (candidate_id);
CREATE INDEX IF NOT EXISTS decisions_by_image ON decisions (image_id);
"""
_ROUND_DECISIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS round_decisions (
    round INTEGER NOT NULL REFERENCES rounds(round),
    decision_id INTEGER NOT NULL REFERENCES decisions(id),
    PRIMARY KEY (round, decision_id)) WITHOUT ROWID;
"""
# Version 3 added: rounds (with the decisions' ids as a json column); version 4 moved those
# ids to round_decisions, a table SQL can join and the decisions' ids are checked against.
_ROUNDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (round INTEGER PRIMARY KEY, start_iteration INTEGER NOT NULL,
    end_iteration INTEGER NOT NULL, targets TEXT NOT NULL, rejected TEXT NOT NULL,
    n_accepted INTEGER NOT NULL, n_rejected INTEGER NOT NULL, started_at TEXT NOT NULL);
""" + _ROUND_DECISIONS_SCHEMA
# Version 2 added: objects, candidates.object_id, checkpoints.settings (see _migrate_v1).
_OBJECTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (id INTEGER PRIMARY KEY,
    checkpoint INTEGER NOT NULL REFERENCES checkpoints(iteration),
    image_id INTEGER NOT NULL REFERENCES images(id),
    category_id INTEGER NOT NULL REFERENCES categories(id),
    x REAL NOT NULL, y REAL NOT NULL, w REAL NOT NULL, h REAL NOT NULL, score REAL NOT NULL,
    score_original REAL NOT NULL, score_augmented REAL NOT NULL,
    view TEXT NOT NULL CHECK (view IN ('original', 'augmented', 'both')),
    classes TEXT NOT NULL, on_label INTEGER);
CREATE INDEX IF NOT EXISTS objects_by_checkpoint_image ON objects (checkpoint, image_id);
CREATE INDEX IF NOT EXISTS objects_by_checkpoint_score ON objects (checkpoint, score DESC);
"""


def _statements(sql: str) -> list[str]:
    return [stmt for stmt in sql.strip().split(";") if stmt.strip()]


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
                if schema_version(conn) in (None, SCHEMA_VERSION):
                    for stmt in (_statements(_SCHEMA) + _statements(_OBJECTS_SCHEMA)
                                 + _statements(_ROUNDS_SCHEMA)):
                        conn.execute(stmt)
                    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                                 (str(SCHEMA_VERSION),))
        version = schema_version(conn)
        if version == 1:
            _migrate_v1(conn)
            version = schema_version(conn)
        if version == 2:
            _migrate_v2(conn)
            version = schema_version(conn)
        if version == 3:
            _migrate_v3(conn)
            version = schema_version(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise InputError(path, f"not a comining store ({exc})") from None
    if version != SCHEMA_VERSION:
        conn.close()
        raise InputError(path, f"store schema version {version} is not supported by this comining "
                               f"(expects {SCHEMA_VERSION}); re-mine the run with this version")
    return conn


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Version 1 -> 2 in one transaction: add the objects of every mined checkpoint,
    grouped from its candidates as mining groups them now (no label check: version 1
    mined no box on a same-class label, and its annotations are not in the store)."""
    with transaction(conn):
        if schema_version(conn) != 1:      # another process migrated meanwhile
            return
        conn.execute("ALTER TABLE candidates ADD COLUMN object_id INTEGER")
        conn.execute("ALTER TABLE checkpoints ADD COLUMN settings TEXT")
        conn.execute("CREATE INDEX IF NOT EXISTS candidates_by_object ON candidates (object_id)")
        for stmt in _statements(_OBJECTS_SCHEMA):
            conn.execute(stmt)
        for (it,) in conn.execute("SELECT iteration FROM checkpoints").fetchall():
            rows = conn.execute("SELECT id, image_id, category_id, x, y, w, h, score, view "
                                "FROM candidates WHERE checkpoint = ? ORDER BY image_id, id",
                                (it,)).fetchall()
            cands = [{"key": r["id"], "image_id": r["image_id"], "category_id": r["category_id"],
                      "bbox": [r["x"], r["y"], r["w"], r["h"]], "score": r["score"],
                      "view": r["view"]} for r in rows]
            _write_objects(conn, it, cands, {r["id"]: r["id"] for r in rows})
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")


def _migrate_v2(conn: sqlite3.Connection) -> None:
    """Version 2 -> 4: the rounds tables (a version-2 run has round 0 only, so there is no
    version-3 rounds row to carry over)."""
    with transaction(conn):
        if schema_version(conn) != 2:
            return
        for stmt in _statements(_ROUNDS_SCHEMA):
            conn.execute(stmt)
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")


def _migrate_v3(conn: sqlite3.Connection) -> None:
    """Version 3 -> 4 in one transaction: each round's json list of decision ids becomes
    rows of round_decisions, and the column goes."""
    with transaction(conn):
        if schema_version(conn) != 3:
            return
        for stmt in _statements(_ROUND_DECISIONS_SCHEMA):
            conn.execute(stmt)
        conn.execute("INSERT INTO round_decisions (round, decision_id) "
                     "SELECT r.round, CAST(j.value AS INTEGER) "
                     "FROM rounds r, json_each(r.decision_ids) j")
        conn.execute("ALTER TABLE rounds DROP COLUMN decision_ids")
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")


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
                                  thresholds: dict, candidates: list[dict],
                                  settings: dict | None = None) -> None:
    """Store one checkpoint's mining in a single transaction (replacing an earlier one).

    Each candidate: image_id, category_id, bbox [x, y, w, h], score, view, agreed, and
    `key` (any unique hashable) with `partner_key` naming its agreed partner, if any,
    and optionally `object`: its object as comining.mining makes it (candidates without
    one are grouped into objects here). `settings`: the mining settings, kept as json.
    """
    counts = {v: sum(1 for c in candidates if c["view"] == v) for v in VIEWS}
    n_agreed = sum(1 for c in candidates if c["agreed"] and c["view"] == "original")
    with transaction(conn):
        conn.execute("DELETE FROM objects WHERE checkpoint = ?", (iteration,))
        conn.execute("DELETE FROM candidates WHERE checkpoint = ?", (iteration,))
        conn.execute("DELETE FROM checkpoints WHERE iteration = ?", (iteration,))
        conn.execute("INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (iteration, path, now_iso(), thresholds["score_thresh"], thresholds["nms_iou"],
                      thresholds["gt_iou"], counts["original"], counts["augmented"], n_agreed,
                      None if settings is None else json.dumps(settings, sort_keys=True)))
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
        _write_objects(conn, iteration, candidates, row_id)


def _write_objects(conn: sqlite3.Connection, iteration: int, candidates: list[dict],
                   row_id: dict) -> None:
    """The objects of one checkpoint's candidates (their `object` dicts as mining made
    them, else grouped here as mining groups them), and each candidate's object_id."""
    from comining.objects import group_objects

    members: dict = {}       # object key -> (object dict, [candidate keys], best first)
    loose: dict[int, list[dict]] = {}
    for c in candidates:
        obj = c.get("object")
        if obj is None:
            loose.setdefault(int(c["image_id"]), []).append(c)
        else:
            members.setdefault(obj["key"], (obj, []))[1].append(c)
    for image_id, cands in loose.items():
        for n, o in enumerate(group_objects([c["bbox"] for c in cands], [c["score"] for c in cands],
                                            [c["category_id"] for c in cands],
                                            [c["view"] for c in cands])):
            obj = {"key": ("grouped", image_id, n), "image_id": image_id, "bbox": list(o.box),
                   "score": o.score, "category_id": o.category_id,
                   "classes": [list(x) for x in o.classes], "view_scores": list(o.view_scores),
                   "view": o.view, "on_label": o.on_label}
            members[obj["key"]] = (obj, [cands[i] for i in o.members])
    rows, links = [], []
    for obj, cands in members.values():
        best = max(cands, key=lambda c: c["score"])     # the first of equal scores
        oid = row_id[best["key"]]
        x, y, w, h = (float(v) for v in obj["bbox"])
        so, sa = (float(v) for v in obj["view_scores"])
        rows.append((oid, iteration, int(obj["image_id"]), int(obj["category_id"]), x, y, w, h,
                     float(obj["score"]), so, sa, obj["view"],
                     json.dumps([[int(c), round(float(s), 6)] for c, s in obj["classes"]]),
                     None if obj.get("on_label") is None else int(obj["on_label"])))
        links.extend((oid, row_id[c["key"]]) for c in cands)
    conn.executemany("INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.executemany("UPDATE candidates SET object_id = ? WHERE id = ?", links)


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


def objects(conn: sqlite3.Connection, checkpoint: int | None = None) -> list[sqlite3.Row]:
    """Objects of one checkpoint (or all), best ranked first within a checkpoint."""
    if checkpoint is None:
        return conn.execute("SELECT * FROM objects ORDER BY checkpoint, score DESC, id").fetchall()
    return conn.execute("SELECT * FROM objects WHERE checkpoint = ? ORDER BY score DESC, id",
                        (checkpoint,)).fetchall()


def candidates(conn: sqlite3.Connection, checkpoint: int | None = None) -> list[sqlite3.Row]:
    if checkpoint is None:
        return conn.execute("SELECT * FROM candidates ORDER BY checkpoint, image_id, id").fetchall()
    return conn.execute("SELECT * FROM candidates WHERE checkpoint = ? ORDER BY image_id, id",
                        (checkpoint,)).fetchall()


def rounds(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """The refine rounds, first first (round 0 has no row)."""
    return conn.execute("SELECT * FROM rounds ORDER BY round").fetchall()


def add_round(conn: sqlite3.Connection, *, round: int, start_iteration: int, end_iteration: int,
              targets: str, rejected: str, decision_ids: list[int], n_accepted: int,
              n_rejected: int) -> None:
    with transaction(conn):
        conn.execute("INSERT INTO rounds (round, start_iteration, end_iteration, targets, "
                     "rejected, n_accepted, n_rejected, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (round, start_iteration, end_iteration, targets, rejected,
                      n_accepted, n_rejected, now_iso()))
        conn.executemany("INSERT INTO round_decisions (round, decision_id) VALUES (?, ?)",
                         [(round, int(i)) for i in sorted(set(decision_ids))])


def round_decision_ids(conn: sqlite3.Connection, round: int) -> list[int]:
    """The ids of the standing decisions round `round`'s targets were made from."""
    return [r[0] for r in conn.execute("SELECT decision_id FROM round_decisions WHERE round = ? "
                                       "ORDER BY decision_id", (round,))]


def checkpoint_rounds(conn: sqlite3.Connection) -> dict[int, int]:
    """Mined checkpoint iteration -> the round that trained it."""
    starts = [(r["start_iteration"], r["round"]) for r in rounds(conn)]
    out = {}
    for r in checkpoints(conn):
        it = r["iteration"]
        out[it] = max((n for s, n in starts if it > s), default=0)
    return out
