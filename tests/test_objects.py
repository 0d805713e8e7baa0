"""Objects, not boxes: grouping both views' boxes of any class, setting apart what is
labelled, ranking by both views; and decisions that follow objects across checkpoints.

Every expected value below is worked out by hand from the boxes written in the test.
"""

from __future__ import annotations

import pytest

from comining import review, store
import dataclasses
import math

from comining.objects import (drop_in_crowd, flag_labelled, group_objects, review_objects,
                              soft_suppress)
from review_fixtures import THRESHOLDS, make_run

O, A = 0, 1   # views


def test_two_classes_on_one_object_give_one_item_with_ranked_alternatives():
    """Original view: disc 0.8 and square 0.3 on one object; augmented view: square 0.6
    on it. One object; its classes ranked by the mean of the two views' best score of
    each class: disc (0.8 + 0) / 2 = 0.40 < square (0.3 + 0.6) / 2 = 0.45."""
    boxes = [[10, 10, 40, 40], [11, 10, 40, 40], [10, 11, 40, 40],   # one object
             [100, 100, 20, 20]]                                    # another, far away
    objs = group_objects(boxes, [0.8, 0.3, 0.6, 0.5], [1, 2, 2, 1], [O, O, A, O])
    assert len(objs) == 2
    first = objs[0]
    assert sorted(first.members) == [0, 1, 2]
    assert [c for c, _ in first.classes] == [2, 1]
    assert first.classes[0][1] == pytest.approx(0.45) and first.classes[1][1] == pytest.approx(0.40)
    assert first.category_id == 2 and first.view == "both"
    assert first.view_scores == (0.8, 0.6)
    assert first.score == pytest.approx(0.7)           # mean of the views' best scores
    # the lone box is seen by one view: half its score
    assert objs[1].members == (3,) and objs[1].view == "original"
    assert objs[1].score == pytest.approx(0.25)


def test_fused_box_is_the_score_weighted_mean_of_the_members():
    objs = group_objects([[0, 0, 10, 10], [2, 0, 10, 10]], [0.75, 0.25], [1, 1], [O, A])
    assert len(objs) == 1
    # x0 = 0.75*0 + 0.25*2 = 0.5; x1 = 0.75*10 + 0.25*12 = 10.5
    assert objs[0].box == pytest.approx((0.5, 0.0, 10.0, 10.0))


def test_boxes_below_the_grouping_iou_stay_apart():
    # IoU of [0,0,10,10] and [5,0,10,10] = 50 / 150 = 1/3 < 0.5: two objects
    assert len(group_objects([[0, 0, 10, 10], [5, 0, 10, 10]], [0.9, 0.8], [1, 1], [O, O])) == 2
    # at group_iou 0.3 they are one
    assert len(group_objects([[0, 0, 10, 10], [5, 0, 10, 10]], [0.9, 0.8], [1, 1], [O, O],
                             group_iou=0.3)) == 1


@pytest.mark.parametrize("rank,expected", [("mean", 0.45), ("max", 0.6), ("min", 0.3),
                                           ("noisy_or", 0.72), ("geometric", 0.18 ** 0.5)])
def test_ranks_combine_the_two_views(rank, expected):
    objs = group_objects([[0, 0, 10, 10], [0, 0, 10, 10]], [0.6, 0.3], [1, 1], [O, A], rank=rank)
    assert objs[0].score == pytest.approx(expected)


def test_members_are_listed_best_first_and_the_best_box_seeds_the_object():
    """Input order worst first: the object's members still come best first (2, 1, 0);
    a weaker box apart from them is an object of its own."""
    boxes = [[0, 0, 10, 10], [1, 0, 10, 10], [0, 1, 10, 10],   # one object (IoU >= 0.68)
             [10, 0, 10, 10]]                                  # touching it: IoU 0
    objs = group_objects(boxes, [0.5, 0.6, 0.7, 0.4], [1, 1, 1, 1], [O, O, O, O])
    assert [o.members for o in objs] == [(2, 1, 0), (3,)]



def test_equally_scored_objects_keep_their_input_order():
    """60 separate boxes scoring 0.5, 0.9, 0.5, 0.9, ...: the 0.9 ones first, then the 0.5
    ones, each in input order (a queue whose ties do not shuffle between runs)."""
    n = 60
    boxes = [[20 * i, 0, 10, 10] for i in range(n)]
    objs = group_objects(boxes, [0.5, 0.9] * (n // 2), [1] * n, [O] * n)
    assert [o.members[0] for o in objs] == list(range(1, n, 2)) + list(range(0, n, 2))

def test_boxes_at_exactly_the_grouping_iou_are_one_object():
    # a 10x10 box and the 10x5 box inside it: IoU 50 / 100 = 0.5 = group_iou
    objs = group_objects([[0, 0, 10, 10], [0, 0, 10, 5]], [0.9, 0.8], [1, 1], [O, O])
    assert [o.members for o in objs] == [(0, 1)]


def test_tied_class_scores_rank_the_smaller_category_id_first():
    """Two classes on one box with the same score: the ranking is decided by category id
    (2 before 5), whatever order the boxes came in."""
    objs = group_objects([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.5], [5, 2], [O, O])
    assert [c for c, _ in objs[0].classes] == [2, 5]
    assert objs[0].category_id == 2


def test_fused_box_of_non_square_members():
    """Members of different width and height (so x and y, w and h cannot be mixed up):
    weights 0.75 / 0.25; x0 = 0.25*2 = 0.5, y0 = 0.75*0 + 0.25*4 = 1, x1 = 0.75*20 + 0.25*22
    = 20.5, y1 = 0.75*10 + 0.25*14 = 11 -> xywh (0.5, 1, 20, 10)."""
    objs = group_objects([[0, 0, 20, 10], [2, 4, 20, 10]], [0.75, 0.25], [1, 1], [O, A],
                         group_iou=0.3)
    assert len(objs) == 1
    assert objs[0].box == pytest.approx((0.5, 1.0, 20.0, 10.0))


def test_members_that_all_score_zero_fuse_to_their_plain_mean():
    objs = group_objects([[0, 0, 10, 10], [2, 0, 10, 10]], [0.0, 0.0], [1, 1], [O, O],
                         group_iou=0.3)
    assert len(objs) == 1
    assert objs[0].box == pytest.approx((1.0, 0.0, 10.0, 10.0))


def test_an_object_is_judged_by_the_label_it_overlaps_most():
    """Two labels: class 7 far from the object, class 3 exactly on it. The object (class 1)
    is set apart on the class-3 label; an object of class 3 there is dropped."""
    label_boxes, label_classes = [[100, 100, 20, 20], [0, 0, 20, 20]], [7, 3]
    other = group_objects([[0, 0, 20, 20]], [0.9], [1], [O])
    same = group_objects([[0, 0, 20, 20]], [0.9], [3], [O])
    assert [o.on_label for o in flag_labelled(other, label_boxes, label_classes)] == [3]
    assert flag_labelled(same, label_boxes, label_classes) == []


def test_an_object_at_exactly_the_label_iou_is_on_the_label():
    # object 20x20 at the origin, label the 20x10 box inside it: IoU 200 / 400 = 0.5
    same = group_objects([[0, 0, 20, 20]], [0.9], [3], [O])
    assert flag_labelled(same, [[0, 0, 20, 10]], [3]) == []
    other = group_objects([[0, 0, 20, 20]], [0.9], [1], [O])
    assert [o.on_label for o in flag_labelled(other, [[0, 0, 20, 10]], [3])] == [3]


def test_crowd_share_by_hand_on_non_square_boxes():
    """xywh boxes whose width and height differ. Object A [0,0,20,10] (area 200), crowd
    [0,0,12,30]: inside 12 x 10 = 120 -> 0.6 > 0.5, dropped. Object B [100,0,10,20] (area 200),
    crowd [100,0,30,9]: inside 10 x 9 = 90 -> 0.45, kept. Object C [200,0,20,10], crowd
    [200,0,10,30]: inside 10 x 10 = 100 -> exactly 0.5, kept (dropped only above)."""
    objs = group_objects([[0, 0, 20, 10], [100, 0, 10, 20], [200, 0, 20, 10]], [0.9, 0.8, 0.7],
                         [1, 1, 1], [O, O, O])
    crowd = [[0, 0, 12, 30], [100, 0, 30, 9], [200, 0, 10, 30]]
    assert [o.members for o in drop_in_crowd(objs, crowd)] == [(1,), (2,)]


def test_crowd_edge_cases():
    # no objects: nothing to drop
    assert drop_in_crowd([], [[0, 0, 10, 10]]) == []
    # a 1 px object outside the crowd region (apart in x and y, or in y only) stays
    objs = group_objects([[50, 50, 1, 1], [0, 20, 1, 1]], [0.9, 0.8], [1, 1], [O, O])
    assert len(drop_in_crowd(objs, [[0, 0, 10, 10]])) == 2
    # an object smaller than a pixel wholly inside the crowd region goes
    tiny = group_objects([[1, 1, 0.5, 0.5]], [0.9], [1], [O])
    assert drop_in_crowd(tiny, [[0, 0, 10, 10]]) == []


def test_review_objects_defaults():
    """The documented defaults: group at IoU >= 0.5, on a label at IoU >= 0.5, dropped when
    more than half lies in a crowd region, no cap."""
    boxes = [[0, 0, 10, 10], [1, 0, 10, 10],      # IoU 90/110 = 0.82: one object, class 1
             [100, 0, 20, 20],                    # on the class-1 label below (IoU 0.81): dropped
             [200, 0, 10, 10],                    # 80 % inside the crowd region: dropped
             [300, 0, 10, 10], [400, 0, 10, 10], [500, 0, 10, 10]]
    objs = review_objects(boxes, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], [1] * 7, [O, A] + [O] * 5,
                          label_boxes=[[100, 0, 18, 18]], label_classes=[1],
                          crowd_boxes=[[202, 0, 20, 20]])
    assert [o.members for o in objs] == [(0, 1), (4,), (5,), (6,)]


def test_review_objects_passes_on_every_setting():
    """Each setting of review_objects changes its answer (one image each)."""
    pair = [[0, 0, 10, 10], [1, 0, 10, 10]]                          # IoU 90/110 = 0.82
    assert len(review_objects(pair, [0.9, 0.8], [1, 1], [O, O])) == 1
    assert len(review_objects(pair, [0.9, 0.8], [1, 1], [O, O], group_iou=0.9)) == 2
    # rank "max": a one-view object scores its best score, not the mean with 0
    assert review_objects([[0, 0, 10, 10]], [0.6], [1], [O], rank="max")[0].score == pytest.approx(0.6)
    # an object at IoU 324/400 = 0.81 with a label of its class: dropped at 0.5, kept at 0.9
    near_label = dict(label_boxes=[[100, 0, 18, 18]], label_classes=[1])
    assert review_objects([[100, 0, 20, 20]], [0.7], [1], [O], **near_label) == []
    kept = review_objects([[100, 0, 20, 20]], [0.7], [1], [O], label_iou=0.9, **near_label)
    assert [o.on_label for o in kept] == [None]
    # an object 80 % inside a crowd region: dropped at 0.5, kept at 0.9
    crowd = dict(crowd_boxes=[[202, 0, 20, 20]])
    assert review_objects([[200, 0, 10, 10]], [0.6], [1], [O], **crowd) == []
    assert len(review_objects([[200, 0, 10, 10]], [0.6], [1], [O], crowd_ioa=0.9, **crowd)) == 1
    # max_objects: the best ones
    apart = [[0, 0, 10, 10], [100, 0, 10, 10], [200, 0, 10, 10]]
    capped = review_objects(apart, [0.5, 0.9, 0.7], [1, 1, 1], [O, O, O], max_objects=2)
    assert [o.members for o in capped] == [(1,), (2,)]


def test_an_object_on_a_label_of_another_class_is_set_apart_and_one_of_its_class_is_dropped():
    """A label (class 3) at [0,0,20,20]. An object of class 1 exactly there: kept apart
    (on_label 3: a possible wrong label). An object of class 3 there: the label itself,
    dropped. An object at IoU 100/700 (1/7) with the label: a missing-object candidate."""
    label_boxes, label_classes = [[0, 0, 20, 20]], [3]
    other = group_objects([[0, 0, 20, 20]], [0.9], [1], [O])
    same = group_objects([[0, 0, 20, 20]], [0.9], [3], [O])
    near = group_objects([[10, 10, 20, 20]], [0.9], [1], [O])
    assert [o.on_label for o in flag_labelled(other, label_boxes, label_classes)] == [3]
    assert flag_labelled(same, label_boxes, label_classes) == []
    assert [o.on_label for o in flag_labelled(near, label_boxes, label_classes)] == [None]
    # the threshold is configurable: at 0.1 the near one is on the label too
    assert [o.on_label for o in flag_labelled(near, label_boxes, label_classes, label_iou=0.1)] == [3]


def test_crowd_regions_and_the_cap():
    objs = group_objects([[0, 0, 10, 10], [50, 50, 10, 10], [80, 80, 10, 10]], [0.9, 0.8, 0.7],
                         [1, 1, 1], [O, O, O])
    # the crowd region covers the first box wholly and 4% of the second
    kept = drop_in_crowd(objs, [[0, 0, 52, 52]])
    assert [o.members for o in kept] == [(1,), (2,)]
    capped = review_objects([[0, 0, 10, 10], [50, 50, 10, 10], [80, 80, 10, 10]], [0.9, 0.8, 0.7],
                            [1, 1, 1], [O, O, O], max_objects=2)
    assert [o.members for o in capped] == [(0,), (1,)]


def test_overlapping_objects_and_labels_are_ranked_down_never_removed():
    """A [0,0,10,10] 0.9; B [5,0,10,10] 0.8 (IoU with A: 50/150 = 1/3); C [40,40,10,10]
    0.75, far away. Soft-NMS (sigma 0.5): B becomes 0.8 * exp(-(1/3)^2 / 0.5) = 0.64,
    below C. A label at [45,40,10,10] overlaps C at IoU 1/3: C decays the same way."""
    objs = group_objects([[0, 0, 10, 10], [5, 0, 10, 10], [40, 40, 10, 10]], [0.9, 0.8, 0.75],
                         [1, 1, 2], [O, O, O], rank="max")
    assert [o.score for o in objs] == [0.9, 0.8, 0.75]
    out = soft_suppress(objs)
    assert [o.members for o in out] == [(0,), (2,), (1,)]
    assert out[2].score == pytest.approx(0.8 * math.exp(-(1 / 3) ** 2 / 0.5))
    assert out[0].score == 0.9 and out[1].score == pytest.approx(0.75)
    labelled = soft_suppress(objs, [[45, 40, 10, 10]])
    c = next(o for o in labelled if o.members == (2,))
    assert c.score == pytest.approx(0.75 * math.exp(-(1 / 3) ** 2 / 0.5))
    assert len(labelled) == 3 and soft_suppress(objs, sigma=None) == objs


# ----------------------------------------------------------------------------- in the store


def _remine(run, iteration, boxes):
    """Store `boxes` [(image_id, category_id, xywh, score, view)] as a checkpoint's mining."""
    cands = [{"key": k, "partner_key": None, "image_id": im, "category_id": cat, "bbox": box,
              "score": s, "view": v, "agreed": False} for k, (im, cat, box, s, v) in enumerate(boxes)]
    store.replace_checkpoint_candidates(run.conn, iteration=iteration, path="x",
                                        thresholds=THRESHOLDS, candidates=cands)


def test_a_rejected_object_stays_rejected_when_its_class_changes(tmp_path):
    """Rejected as a disc at checkpoint 300; at checkpoint 400 the detector calls the same
    object a square (and both views find it): it is not proposed again. A box elsewhere
    on the image is."""
    info = make_run(tmp_path, n_images=1, checkpoints=())
    run = review.open_run(info.run_dir)
    try:
        _remine(run, 300, [(1, 1, [10, 10, 50, 50], 0.9, "original")])
        [item] = review.image_items(run, 300, 1)
        assert item.category_id == 1
        review.decide(run, item.id, "rejected", client="t")
        _remine(run, 400, [(1, 2, [12, 10, 50, 50], 0.95, "original"),
                           (1, 2, [10, 12, 50, 50], 0.9, "augmented"),
                           (1, 3, [200, 200, 40, 40], 0.8, "original")])
        items = review.image_items(run, 400, 1)
        assert [(it.category_id, it.state) for it in items] == [(2, "rejected"), (3, "pending")]
        assert [it.box[0] for it in review.queue_items(run, 400)] == [200]
    finally:
        run.close()


def test_accepting_an_alternative_class_exports_one_box_of_that_class(tmp_path):
    """An object both views see (disc by one, square by the other) is accepted with its
    second class: the export holds one new box, of that class, where the object is."""
    import json

    from comining.export import export_run

    info = make_run(tmp_path, n_images=1, checkpoints=())
    run = review.open_run(info.run_dir)
    try:
        _remine(run, 300, [(1, 1, [100, 100, 40, 40], 0.9, "original"),
                           (1, 2, [100, 100, 40, 40], 0.3, "original"),
                           (1, 2, [100, 100, 40, 40], 0.8, "augmented")])
        [item] = review.image_items(run, 300, 1)
        # disc: (0.9 + 0) / 2 = 0.45; square: (0.3 + 0.8) / 2 = 0.55
        assert [c for c, _ in item.alternatives] == [2, 1]
        review.decide(run, item.id, "accepted", client="t", category_id=item.alternatives[1][0])
        out = tmp_path / "out.json"
        export_run(run, out)
    finally:
        run.close()
    data = json.loads(out.read_text())
    new = data["annotations"][len(info.annotations):]
    assert [(a["category_id"], a["bbox"]) for a in new] == [(1, [100.0, 100.0, 40.0, 40.0])]
    assert new[0]["comining"]["decision"] == "edited"


def test_a_version_1_store_is_migrated_into_objects(tmp_path):
    """A store written by comining's schema 1 (candidates only) opens: its candidates are
    grouped into objects, decisions made on it still apply."""
    import sqlite3

    info = make_run(tmp_path, n_images=2, checkpoints=(100,))
    db = info.run_dir / store.STORE_NAME
    conn = sqlite3.connect(db)
    n_cands = conn.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
    # an accept made with version 1 on the augmented-view box of an object of image 2
    cid, x, y, w, h, cat = conn.execute(
        "SELECT id, x, y, w, h, category_id FROM candidates WHERE image_id = 2 AND "
        "view = 'augmented' ORDER BY id LIMIT 1").fetchone()
    conn.execute("INSERT INTO decisions (candidate_id, image_id, decision, category_id, x, y, w, h,"
                 " decided_at, client) VALUES (?, 2, 'accepted', ?, ?, ?, ?, ?, '9999', 'old')",
                 (cid, cat, x, y, w, h))
    conn.execute("DROP TABLE objects")
    conn.execute("DROP INDEX candidates_by_object")
    conn.execute("ALTER TABLE candidates DROP COLUMN object_id")
    conn.execute("ALTER TABLE checkpoints DROP COLUMN settings")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    run = review.open_run(info.run_dir)
    try:
        assert store.schema_version(run.conn) == store.SCHEMA_VERSION
        items = {im: review.image_items(run, 100, im) for im in (1, 2)}
        assert items == review.all_items(run, 100)
        members = sorted(m for its in items.values() for it in its for m in it.member_ids)
        assert len(members) == n_cands            # every candidate belongs to one object
        # each hidden object of the fixture (found by one or two views) is one item, plus
        # one false positive an image: 3 hidden + 1 per image
        assert sum(len(its) for its in items.values()) == 2 * (3 + 1)
        [accepted] = [it for it in items[2] if it.state == "accepted"]
        assert cid in accepted.member_ids
        assert all(it.state == "pending" for it in items[1])
    finally:
        run.close()


def test_the_sql_queue_and_counts_agree_with_the_items(tmp_path):
    """The queue ranked in SQL (undecided images) plus Python (decided ones) is the queue
    built from every item, for several filters; so are the counts."""
    from comining.review.items import _queue_of

    info = make_run(tmp_path, n_images=6, checkpoints=(100, 200))
    run = review.open_run(info.run_dir)
    try:
        items = review.all_items(run, 200)
        first = sorted(items)[0]
        review.decide(run, items[first][0].id, "rejected", client="t")
        review.decide(run, items[first + 1][0].id, "accepted", client="t", category_id=2)
        scores = sorted({it.score for its in items.values() for it in its})
        filters = [review.Filters(), review.Filters(classes=(1, 3)), review.Filters(views=("both",)),
                   review.Filters(score_min=0.5, score_max=0.9),
                   review.Filters(score_min=scores[3], score_max=scores[-4]),   # bounds inclusive
                   review.Filters(states=("pending", "accepted")), review.Filters(states=("rejected",)),
                   review.Filters(labelled="all"), review.Filters(labelled="on_label"),
                   review.Filters(include_rejected=True), review.Filters(sort="agreement"),
                   review.Filters(sort="agreement", include_rejected=True),
                   review.Filters(views=("original", "augmented")),
                   review.Filters(classes=(1, 3), views=("original", "both"))]
        for ck in (200, 100):      # at 100, the decisions made at 200 cover objects by overlap
            for f in filters:
                slow = _queue_of(review.all_items(run, ck, include_rejected=f.include_rejected), f)
                assert review.queue(run, ck, f) == slow, (ck, f)
                assert review.count_items(run, ck, f) == len(review.queue_items(run, ck, f)), (ck, f)
                pending = dataclasses.replace(f, states=("pending",))
                assert review.pending_objects(run, ck, f) == [
                    (it.id, it.image_id, it.category_id, it.box, it.score, it.view)
                    for it in review.queue_items(run, ck, pending)], (ck, f)
        assert review.count_items(run, 100, review.Filters(include_rejected=True)) == \
            review.count_items(run, 100, review.Filters()) + 1
        assert review.batch_count(run, 200, 0.6) == len(review.batch_candidates(run, 200, 0.6)) > 0
        # the decided images count their pending items only: 4 items an image, 1 decided
        entries = {e.image_id: e for e in review.queue(run, 200)}
        assert len(items[first]) == len(items[first + 1]) == 4
        assert (entries[first].n_match, entries[first + 1].n_match) == (3, 3)
        assert entries[first + 2].n_match == 4
    finally:
        run.close()


def test_review_objects_ranks_overlaps_down_with_its_defaults():
    """Through the whole rule, with its defaults (Soft-NMS sigma 0.5, the labels passed):
    A [0,0,10,10] 0.9 and B [5,0,10,10] 0.8 (IoU 1/3 with A) by one view; C [40,40,10,10]
    0.7 with a label at [45,40,10,10] (IoU 1/3); D [80,80,10,10] 0.6 touches nothing.
    Scores are halved (one view of two), then B and C decay by exp(-(1/3)^2 / 0.5)."""
    decay = math.exp(-(1 / 3) ** 2 / 0.5)
    objs = review_objects([[0, 0, 10, 10], [5, 0, 10, 10], [40, 40, 10, 10], [80, 80, 10, 10]],
                          [0.9, 0.8, 0.7, 0.6], [1, 1, 2, 2], [O, O, O, O],
                          label_boxes=[[45, 40, 10, 10]], label_classes=[3])
    got = {o.members: o.score for o in objs}
    assert got == pytest.approx({(0,): 0.45, (1,): 0.4 * decay, (2,): 0.35 * decay, (3,): 0.3})
    assert [o.members for o in objs] == [(0,), (1,), (3,), (2,)]   # 0.45, 0.32, 0.30, 0.28
    off = review_objects([[0, 0, 10, 10], [5, 0, 10, 10], [40, 40, 10, 10], [80, 80, 10, 10]],
                         [0.9, 0.8, 0.7, 0.6], [1, 1, 2, 2], [O, O, O, O],
                         label_boxes=[[45, 40, 10, 10]], label_classes=[3], soft_sigma=None)
    assert [o.score for o in off] == pytest.approx([0.45, 0.4, 0.35, 0.3])   # nothing decays

def test_soft_suppression_keeps_the_first_of_two_equal_objects():
    """Two overlapping objects of equal score: the first given keeps its score."""
    objs = group_objects([[0, 0, 10, 10], [5, 0, 10, 10]], [0.8, 0.8], [1, 2], [O, O], rank="max")
    out = soft_suppress(objs)
    assert out[0].members == objs[0].members and out[0].score == 0.8
    assert out[1].score == pytest.approx(0.8 * math.exp(-(1 / 3) ** 2 / 0.5))
