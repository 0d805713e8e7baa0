"""`comining decide`: decisions made elsewhere, matched to the run's objects, then seen by
the queue and the export exactly as the app's."""

from __future__ import annotations

import json

import pytest

from comining import review, store
from comining.cli import main
from conftest import sha256
from review_fixtures import make_run


@pytest.fixture
def info(tmp_path):
    return make_run(tmp_path / "r", n_images=2)


def write(tmp_path, entries, name="d.json"):
    path = tmp_path / name
    path.write_text(json.dumps(entries))
    return path


def test_decisions_are_matched_to_objects_and_export_as_the_apps(info, tmp_path, capsys):
    """On image 1: accept the best object with another class and a box 3 px off (an edit),
    reject the second; draw a box where nothing was mined (a new annotation)."""
    run = review.open_run(info.run_dir)
    first, second = review.image_items(run, 200, 1)[:2]
    run.close()
    x, y, w, h = first.box
    other_class = 1 + first.category_id % 3
    entries = [
        {"image_id": 1, "bbox": [x + 3, y, w, h], "category_id": other_class, "decision": "accepted"},
        {"image_id": 1, "bbox": list(second.box), "category_id": second.category_id,
         "decision": "rejected"},
        {"image_id": 1, "bbox": [2, 2, 30, 20], "category_id": 1, "decision": "accepted"}]
    assert main(["decide", "--run", str(info.run_dir), "--decisions", str(write(tmp_path, entries))]) == 0
    assert "recorded 2 accepted and 1 rejected decisions" in capsys.readouterr().out
    run = review.open_run(info.run_dir)
    try:
        states = {it.id: it.state for it in review.image_items(run, 200, 1)}
        assert states[first.id] == "accepted" and states[second.id] == "rejected"
        assert first.id not in [it.id for it in review.queue_items(run, 200)]
        assert second.id not in [it.id for it in review.queue_items(run, 200)]
    finally:
        run.close()
    out = tmp_path / "e.json"
    assert main(["export", "--run", str(info.run_dir), "--out", str(out)]) == 0
    new = json.loads(out.read_text())["annotations"][len(info.annotations):]
    got = sorted((a["category_id"], a["bbox"], a["comining"]["decision"]) for a in new)
    assert got == sorted([(other_class, [round(x + 3, 2), round(y, 2), round(w, 2), round(h, 2)], "edited"),
                          (1, [2.0, 2.0, 30.0, 20.0], "accepted")])


@pytest.mark.parametrize("entries,message", [
    ({"image_id": 1}, "is a json list"),
    ([{"image_id": 1, "bbox": [0, 0, 5, 5], "category_id": 1}], "lacks one of"),
    ([{"image_id": 99, "bbox": [0, 0, 5, 5], "category_id": 1, "decision": "accepted"}],
     "image 99 is not in this run"),
    ([{"image_id": 1, "bbox": [0, 0, 5, 5], "category_id": 7, "decision": "accepted"}],
     "category 7 is not in this run"),
    ([{"image_id": 1, "bbox": [0, 0, 5, 5], "category_id": 1, "decision": "maybe"}],
     "is not accepted or rejected"),
    ([{"image_id": 1, "bbox": [0, 0, "5", 5], "category_id": 1, "decision": "accepted"}],
     "is not 4 finite numbers"),
    ([{"image_id": 1, "bbox": [900, 900, 5, 5], "category_id": 1, "decision": "accepted"}],
     "is empty inside"),
])
def test_a_bad_file_is_one_line_and_changes_nothing(info, tmp_path, entries, message):
    from conftest import assert_clean_error, run_cli

    good = {"image_id": 1, "bbox": [2, 2, 30, 20], "category_id": 1, "decision": "accepted"}
    path = write(tmp_path, [good] + entries if isinstance(entries, list) else entries)
    db = info.run_dir / store.STORE_NAME
    before = sha256(path)
    proc = run_cli("decide", "--run", info.run_dir, "--decisions", path)
    assert_clean_error(proc, message, path.name)
    assert "nothing was recorded" in proc.stderr or "json list" in proc.stderr
    conn = store.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 0   # not even `good`
    finally:
        conn.close()
    assert sha256(path) == before


def test_one_undo_reverts_a_whole_file(info, tmp_path):
    entries = [{"image_id": i, "bbox": [2, 2, 30, 20], "category_id": 1, "decision": "accepted"}
               for i in (1, 2)]
    path = write(tmp_path, entries, "batch.json")
    assert main(["decide", "--run", str(info.run_dir), "--decisions", str(path)]) == 0
    run = review.open_run(info.run_dir)
    try:
        undone = review.undo(run, "decide:batch.json")
        assert len(undone) == 2 and review.decisions(run.conn) == []
    finally:
        run.close()
