"""The review queue measured as annotator effort, on a case whose answers are worked out
by hand (comining.queue_metrics)."""

from __future__ import annotations

import pytest

from comining.queue_metrics import effort_line, queue_order, queue_quality, queue_scores

IMAGES = [{"id": 1, "file_name": "a.png", "width": 200, "height": 200},
          {"id": 2, "file_name": "b.png", "width": 200, "height": 200}]
SPARSE = {"images": IMAGES, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
          "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [150, 150, 20, 20]}]}
# three erased objects: A and B on image 1, C on image 2
HIDDEN = {"images": IMAGES, "categories": SPARSE["categories"], "annotations": [
    {"id": 10, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},       # A
    {"id": 11, "image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10]},     # B
    {"id": 12, "image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 20]}]}      # C


def obj(image_id, box, cat, score, on_label=None):
    return {"image_id": image_id, "bbox": box, "category_id": cat, "score": score,
            "on_label": on_label}


QUEUE = [obj(1, [0, 0, 10, 10], 1, 0.9),        # finds A, right class
         obj(1, [100, 100, 10, 10], 1, 0.8),    # nothing there
         obj(1, [50, 50, 10, 10], 1, 0.7),      # finds B, wrong class
         obj(2, [1, 0, 20, 20], 1, 0.6),        # finds C (IoU 380/420), right class
         obj(1, [0, 1, 10, 10], 1, 0.5),        # A again: already found
         obj(2, [0, 0, 20, 20], 2, 0.95, on_label=1)]   # on a label: not in the queue


def test_queue_order_is_by_score_without_objects_on_labels():
    assert [o["score"] for o in queue_order(QUEUE)] == [0.9, 0.8, 0.7, 0.6, 0.5]


def test_object_level_counts_any_class_class_level_only_the_best_class():
    s = queue_scores(QUEUE, SPARSE, HIDDEN)
    assert s["n_items"] == 5 and s["n_erased"] == 3
    o, c = s["object"], s["class"]
    # object level: found at items 1, 3, 4; precision 1, 1/2, 2/3, 3/4, 3/5
    # AP = 1/3 * 1 + 1/3 * 3/4 + 1/3 * 3/4 (precision made non-increasing)
    assert o["ap"] == pytest.approx((1 + 0.75 + 0.75) / 3)
    assert o["found"] == 3 and o["recall"] == pytest.approx(1.0)
    # 0.5x: round(1.5) = 2 items -> 1; 1x: 3 items -> 2; 2x: 6 items (5 exist) -> 3
    assert o["found_at"] == {"0.5": 1, "1": 2, "2": 3}
    assert o["recall_at"]["1"] == pytest.approx(2 / 3)
    assert o["recall_at_p90"] == pytest.approx(1 / 3)
    # class level: found at items 1 and 4; AP = 1/3 * 1 + 1/3 * 2/4
    assert c["ap"] == pytest.approx((1 + 0.5) / 3)
    assert c["found_at"] == {"0.5": 1, "1": 1, "2": 2}


def test_per_checkpoint_and_the_line_a_person_reads():
    rows = [dict(o, checkpoint=300) for o in QUEUE[:2]] + [dict(o, checkpoint=600) for o in QUEUE]
    q = queue_quality(rows, SPARSE, HIDDEN)
    assert list(q) == [300, 600]
    assert q[300]["object"]["found"] == 1 and q[600]["object"]["found"] == 3
    assert effort_line(q[600]) == ("reviewing the first 3 items finds 2 of the 3 erased objects "
                                   "(3 within 5; queue AP 0.83, 0.50 with the right class)")


def test_an_empty_queue_finds_nothing():
    s = queue_scores([], SPARSE, HIDDEN)
    assert s["n_items"] == 0 and s["object"]["found_at"] == {"0.5": 0, "1": 0, "2": 0}
    assert s["object"]["ap"] == 0.0
