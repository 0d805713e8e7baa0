"""The run's SQLite store through its functions: what a mining writes (counts, partners,
objects as mining made them, settings), metadata, connection settings, clear errors."""

from __future__ import annotations

import re
import sqlite3
import threading

import pytest

from comining import store
from comining.errors import InputError

THRESHOLDS = {"score_thresh": 0.5, "nms_iou": 0.5, "gt_iou": 0.4}


@pytest.fixture
def conn(tmp_path):
    c = store.connect(tmp_path / store.STORE_NAME, create=True)
    store.write_dataset(c, [{"id": 1, "file_name": "a.png", "width": 100, "height": 80},
                            {"id": 2, "file_name": "b.png", "width": 100, "height": 80}],
                        [{"id": 1, "name": "cat"}, {"id": 2}])
    yield c
    c.close()


def cand(key, image_id, view, box, score, *, cat=1, partner=None, obj=None):
    c = {"key": key, "image_id": image_id, "category_id": cat, "bbox": box, "score": score,
         "view": view, "agreed": partner is not None, "partner_key": partner}
    if obj is not None:
        c["object"] = obj
    return c


def test_a_mining_is_written_with_its_counts_partners_objects_and_settings(conn):
    """Image 1: an agreed pair (a, b); image 2: c alone. An object given as mining made it
    (key 'o', on a class-2 label, classes rounded to 6 decimals) holds a and b."""
    obj = {"key": "o", "image_id": 1, "bbox": [10, 10, 20, 20], "score": 0.75, "category_id": 1,
           "classes": [[1, 0.75], [2, 0.1234567]], "view_scores": [0.8, 0.7], "view": "both",
           "on_label": 2}
    # e: a second object as mining made it, agreed but its partner dropped (two originals
    # agreeing, one augmented)
    obj2 = {"key": "o2", "image_id": 2, "bbox": [60, 50, 10, 10], "score": 0.4, "category_id": 2,
            "classes": [[2, 0.4]], "view_scores": [0.5, 0.0], "view": "original", "on_label": None}
    e = dict(cand("e", 2, "original", [60, 50, 10, 10], 0.5, cat=2, obj=obj2), agreed=True)
    cands = [cand("a", 1, "original", [10, 10, 20, 20], 0.8, partner="b", obj=obj),
             cand("b", 1, "augmented", [11, 10, 20, 20], 0.7, partner="a", obj=obj),
             cand("c", 2, "original", [50, 40, 10, 10], 0.6), e]
    store.replace_checkpoint_candidates(conn, iteration=10, path="ck.pt", thresholds=THRESHOLDS,
                                        candidates=cands, settings={"b": 1, "a": 2})
    (ck,) = store.checkpoints(conn)
    assert (ck["iteration"], ck["path"], ck["n_original"], ck["n_augmented"], ck["n_agreed"]) == \
        (10, "ck.pt", 3, 1, 2)
    assert ck["settings"] == '{"a": 2, "b": 1}'
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", ck["mined_at"])
    rows = store.candidates(conn)
    assert rows == store.candidates(conn, 10)
    a, b, c, e = rows
    assert [r["partner_id"] for r in rows] == [b["id"], a["id"], None, None]
    assert [r["object_id"] for r in rows] == [a["id"], a["id"], c["id"], e["id"]]
    objs = store.objects(conn, 10)
    assert [o["id"] for o in objs] == [a["id"], e["id"], c["id"]]   # best ranked first
    o = objs[0]
    assert (o["image_id"], o["category_id"], o["score"], o["view"], o["on_label"]) == \
        (1, 1, 0.75, "both", 2)
    assert (o["x"], o["y"], o["w"], o["h"], o["score_original"], o["score_augmented"]) == \
        (10, 10, 20, 20, 0.8, 0.7)
    assert o["classes"] == "[[1, 0.75], [2, 0.123457]]"
    assert (objs[1]["category_id"], objs[1]["score"], objs[1]["view"]) == (2, 0.4, "original")
    assert objs[2]["on_label"] is None and objs[2]["view"] == "original"
    # a second checkpoint: objects() and candidates() of all, by checkpoint
    store.replace_checkpoint_candidates(conn, iteration=5, path="x", thresholds=THRESHOLDS,
                                        candidates=[cand("d", 2, "augmented", [0, 0, 9, 9], 0.9)])
    assert store.checkpoints(conn)[0]["settings"] is None
    assert [r["checkpoint"] for r in store.candidates(conn)] == [5, 10, 10, 10, 10]
    assert [r["checkpoint"] for r in store.objects(conn)] == [5, 10, 10, 10]
    assert len(store.objects(conn, 5)) == 1


def test_meta_dataset_and_connection_settings(conn, tmp_path):
    store.set_meta(conn, hidden_path=None, detector="fcos", n=3)
    meta = store.get_meta(conn)
    assert (meta["hidden_path"], meta["detector"], meta["n"]) == (None, "fcos", "3")
    assert meta["schema_version"] == str(store.SCHEMA_VERSION)
    assert [tuple(r) for r in conn.execute("SELECT * FROM categories ORDER BY id")] == \
        [(1, "cat"), (2, "2")]                                    # a nameless class: its id
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    quick = store.connect(tmp_path / store.STORE_NAME, timeout=2.5)
    assert quick.execute("PRAGMA busy_timeout").fetchone()[0] == 2500
    quick.close()
    # the review app reads one connection from its worker threads
    errors = []
    t = threading.Thread(target=lambda: errors.append(store.get_meta(conn)["detector"]))
    t.start()
    t.join()
    assert errors == ["fcos"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", store.now_iso())


def test_clear_errors_name_the_store(tmp_path, conn):
    missing = tmp_path / "none.sqlite"
    with pytest.raises(InputError) as e:
        store.connect(missing)
    assert str(e.value) == f"{missing}: no comining store here (has this run been trained and mined?)"
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all, not at all" * 100)
    with pytest.raises(InputError) as e:
        store.connect(garbage)
    assert str(e.value) == f"{garbage}: not a comining store (file is not a database)"
    foreign = tmp_path / "foreign.sqlite"
    c = sqlite3.connect(foreign)
    c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    c.commit()
    c.close()
    with pytest.raises(InputError) as e:
        store.connect(foreign)
    assert str(e.value) == (f"{foreign}: store schema version None is not supported by this "
                            f"comining (expects {store.SCHEMA_VERSION}); re-mine the run with this version")
    with pytest.raises(InputError) as e:
        store.resolve_checkpoint(conn, "last", "run/comining.sqlite")
    assert str(e.value) == "run/comining.sqlite: no mined checkpoint in this run yet"
    for it in (10, 20):
        store.replace_checkpoint_candidates(conn, iteration=it, path="x", thresholds=THRESHOLDS,
                                            candidates=[])
    assert store.resolve_checkpoint(conn, "last") == 20
    with pytest.raises(InputError) as e:
        store.resolve_checkpoint(conn, 15, "run/comining.sqlite")
    assert str(e.value) == "run/comining.sqlite: checkpoint 15 was not mined; mined: 10, 20"


def _decide(c, image_id=1, decision="accepted", undone=0) -> int:
    """A decision row as review writes it (the store's foreign keys check rounds against it)."""
    return c.execute("INSERT INTO decisions (candidate_id, image_id, decision, category_id, x, y,"
                     " w, h, decided_at, client, undone) VALUES (NULL, ?, ?, 1, 1, 1, 5, 5, 'now',"
                     " 't', ?)", (image_id, decision, undone)).lastrowid


def test_a_version_2_store_gains_the_rounds_tables_and_keeps_its_rows(tmp_path):
    """A store written before the loop (version 2: no rounds tables) opens at the current
    version, its checkpoints all of round 0; rounds then record and map checkpoints to
    rounds, and a round can only name decisions the store holds."""
    path = tmp_path / store.STORE_NAME
    c = store.connect(path, create=True)
    store.write_dataset(c, [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
                        [{"id": 1, "name": "a"}])
    for it in (100, 200):
        store.replace_checkpoint_candidates(c, iteration=it, path=f"{it}.pt", thresholds=THRESHOLDS,
                                            candidates=[])
    c.close()
    raw = sqlite3.connect(path)
    raw.execute("DROP TABLE round_decisions")
    raw.execute("DROP TABLE rounds")
    raw.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    c = store.connect(path)
    try:
        assert store.schema_version(c) == 4 and store.rounds(c) == []
        assert store.checkpoint_rounds(c) == {100: 0, 200: 0}
        a, b = _decide(c), _decide(c, decision="rejected")
        store.add_round(c, round=1, start_iteration=200, end_iteration=400, targets="t.json",
                        rejected="r.json", decision_ids=[b, a], n_accepted=1, n_rejected=1)
        store.replace_checkpoint_candidates(c, iteration=300, path="300.pt", thresholds=THRESHOLDS,
                                            candidates=[])
        assert store.checkpoint_rounds(c) == {100: 0, 200: 0, 300: 1}
        assert store.round_decision_ids(c, 1) == [a, b] and store.round_decision_ids(c, 2) == []
        with pytest.raises(sqlite3.IntegrityError):     # no decision 99: the round is not added
            store.add_round(c, round=2, start_iteration=400, end_iteration=600, targets="t.json",
                            rejected="r.json", decision_ids=[a, 99], n_accepted=1, n_rejected=0)
        assert [r["round"] for r in store.rounds(c)] == [1]
        assert store.round_decision_ids(c, 2) == []
    finally:
        c.close()


def test_a_version_3_store_moves_each_rounds_decision_ids_into_rows(tmp_path):
    """Version 3 kept a round's decisions as a json list in rounds.decision_ids; opened,
    each list becomes round_decisions rows, the column goes, and what retraining would add
    is counted from the rows."""
    from types import SimpleNamespace

    from comining.review.stats import untrained_decisions

    path = tmp_path / store.STORE_NAME
    c = store.connect(path, create=True)
    store.write_dataset(c, [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
                        [{"id": 1, "name": "a"}])
    ids = [_decide(c) for _ in range(4)]
    c.close()
    raw = sqlite3.connect(path)
    raw.executescript(
        "DROP TABLE round_decisions; DROP TABLE rounds;"
        "CREATE TABLE rounds (round INTEGER PRIMARY KEY, start_iteration INTEGER NOT NULL,"
        " end_iteration INTEGER NOT NULL, targets TEXT NOT NULL, rejected TEXT NOT NULL,"
        " decision_ids TEXT NOT NULL, n_accepted INTEGER NOT NULL, n_rejected INTEGER NOT NULL,"
        " started_at TEXT NOT NULL);"
        f"INSERT INTO rounds VALUES (1, 100, 200, 't1', 'r1', '[{ids[0]}, {ids[1]}]', 2, 0, 'x');"
        f"INSERT INTO rounds VALUES (2, 200, 300, 't2', 'r2', '[{ids[0]}, {ids[1]}, {ids[2]}]', 3, 0, 'y');"
        "UPDATE meta SET value = '3' WHERE key = 'schema_version';")
    raw.commit()
    raw.close()
    c = store.connect(path)
    try:
        assert store.schema_version(c) == 4
        assert store.round_decision_ids(c, 1) == ids[:2]
        assert store.round_decision_ids(c, 2) == ids[:3]
        r = dict(store.rounds(c)[1])
        assert "decision_ids" not in r
        assert (r["round"], r["start_iteration"], r["targets"], r["n_accepted"]) == (2, 200, "t2", 3)
        # round 2 trained on the first three decisions: the fourth is what retraining adds
        assert untrained_decisions(SimpleNamespace(conn=c)) == 1
        c.execute("UPDATE decisions SET undone = 1 WHERE id = ?", (ids[3],))
        assert untrained_decisions(SimpleNamespace(conn=c)) == 0
    finally:
        c.close()
