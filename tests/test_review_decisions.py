"""Review decisions on a store written by hand (boxes, scores and ids known), through the
public functions: what a decision records, which decisions stand, which items they cover,
time stamps and undo, batches, the queue. Expected values are worked out by hand."""

from __future__ import annotations

import pytest

from comining import review, store
from review_fixtures import THRESHOLDS, make_run

O, A = "original", "augmented"
T0 = "2030-01-01T00:00:00.000+00:00"
T1 = "2030-01-01T00:00:00.001+00:00"
T2 = "2030-01-01T00:00:00.002+00:00"


def mine(run, iteration, boxes):
    """Store one checkpoint's candidates [(image_id, class, xywh, score, view, object)]; an
    object (a dict as mining makes it) or None (grouped by the store)."""
    cands = []
    for k, (im, cat, box, score, view, obj) in enumerate(boxes):
        c = {"key": k, "partner_key": None, "image_id": im, "category_id": cat, "bbox": box,
             "score": score, "view": view, "agreed": False}
        if obj is not None:
            c["object"] = obj
        cands.append(c)
    store.replace_checkpoint_candidates(run.conn, iteration=iteration, path="x",
                                        thresholds=THRESHOLDS, candidates=cands)


# Checkpoint 10. Image 1: P, two views of one class-1 object (IoU 1440/1760 = 0.82; fused
# box, weights 0.8/0.6: x = (0.8*100 + 0.6*104)/1.4 = 101.714..., 40 x 40; score the mean
# of the views' best, 0.7; both views); Q, class 1, one view, far away; S, class 2, both
# views. Image 2: R, class 2, both views.
P_BOX = ((0.8 * 100 + 0.6 * 104) / 1.4, 100.0, 40.0, 40.0)
CHECKPOINT_10 = [
    (1, 1, [100, 100, 40, 40], 0.8, O, None), (1, 1, [104, 100, 40, 40], 0.6, A, None),
    (1, 1, [300, 200, 40, 40], 0.9, O, None),
    (1, 2, [20, 250, 60, 60], 0.8, O, None), (1, 2, [20, 250, 60, 60], 0.8, A, None),
    (2, 2, [50, 50, 60, 60], 0.9, O, None), (2, 2, [50, 50, 60, 60], 0.7, A, None),
]


@pytest.fixture
def run(tmp_path, monkeypatch):
    info = make_run(tmp_path, n_images=2, checkpoints=())
    r = review.open_run(info.run_dir)
    # every write in the same millisecond: stamps are decided by the rules alone
    monkeypatch.setattr(store, "now_iso", lambda: T0)
    mine(r, 10, CHECKPOINT_10)
    yield r
    r.close()


def item(run, checkpoint, image_id, box_x):
    return next(it for it in review.image_items(run, checkpoint, image_id) if round(it.box[0]) == box_x)


def test_a_decision_records_the_object_it_was_made_on(run):
    p = item(run, 10, 1, 102)
    assert p.box == pytest.approx(P_BOX) and p.view == "both" and p.score == pytest.approx(0.7)
    assert (p.image_id, p.checkpoint, p.category_id) == (1, 10, 1)
    review.decide(run, p.id, "accepted", client="t")
    (d,) = review.decisions(run.conn)
    assert (d.candidate_id, d.image_id, d.decision, d.category_id) == (p.id, 1, "accepted", 1)
    assert d.box == pytest.approx(P_BOX)                 # the object's fused box, not a view's
    assert (d.decided_at, d.client) == (T0, "t")
    assert (d.cand_checkpoint, d.cand_category, d.cand_view, d.cand_agreed) == (10, 1, "both", True)
    assert d.cand_box == pytest.approx(P_BOX) and d.cand_score == pytest.approx(0.7)
    assert d.linked and not d.edited and d.view == "both"
    # re-mined: the candidate it was made on is gone, the decision is unlinked
    mine(run, 10, [(1, 1, [100, 100, 40, 40], 0.8, O, None)])
    (d,) = review.decisions(run.conn)
    assert (d.cand_checkpoint, d.cand_category, d.cand_box, d.cand_score, d.cand_view,
            d.cand_agreed) == (None, None, None, None, None, False)
    assert not d.linked and d.view is None and d.box == pytest.approx(P_BOX)


def test_items_carry_what_mining_said(run):
    obj = {"key": "o", "image_id": 2, "bbox": [200, 100, 30, 30], "score": 0.4, "category_id": 1,
           "classes": [[1, 0.4], [2, 0.1]], "view_scores": [0.8, 0.0], "view": "original",
           "on_label": 3}
    mine(run, 20, [(2, 1, [200, 100, 30, 30], 0.8, O, obj)])
    (it,) = review.image_items(run, 20, 2)
    assert (it.image_id, it.checkpoint, it.category_id, it.on_label) == (2, 20, 1, 3)
    assert it.classes == ((1, 0.4), (2, 0.1)) and it.id in it.member_ids
    for its in review.all_items(run, 10).values():
        assert all(i.checkpoint == 10 and i.id in i.member_ids for i in its)


def test_decisions_on_two_objects_of_one_image_both_stand_oldest_first(run):
    p, q = item(run, 10, 1, 102), item(run, 10, 1, 300)
    (r,) = review.image_items(run, 10, 2)
    review.decide(run, p.id, "accepted", client="t")
    review.decide(run, r.id, "accepted", client="t")
    review.decide(run, q.id, "rejected", client="t")
    assert [(d.candidate_id, d.decision) for d in review.effective_decisions(run.conn)] == [
        (p.id, "accepted"), (r.id, "accepted"), (q.id, "rejected")]


def test_two_decisions_whose_boxes_overlap_at_iou_half_are_about_one_object(run):
    """P and Q lie far apart, but their decided boxes are a 20x20 box and the 20x10 box
    inside it: IoU 0.5, one object, so only the later decision stands."""
    p, q = item(run, 10, 1, 102), item(run, 10, 1, 300)
    review.decide(run, p.id, "accepted", client="t", box=(10, 10, 20, 20))
    review.decide(run, q.id, "accepted", client="t", box=(10, 10, 20, 10))
    assert [d.candidate_id for d in review.effective_decisions(run.conn)] == [q.id]


def test_stamps_of_one_client_increase_by_a_millisecond(run):
    p, q = item(run, 10, 1, 102), item(run, 10, 1, 300)
    (r,) = review.image_items(run, 10, 2)
    review.decide(run, p.id, "accepted", client="t")
    review.decide(run, q.id, "accepted", client="t")
    review.decide(run, r.id, "accepted", client="u")          # another client: its own clock
    assert [(d.client, d.decided_at) for d in review.decisions(run.conn)] == [
        ("t", T0), ("t", T1), ("u", T0)]


def test_decide_many_is_stamped_after_the_clients_last_decision(run):
    p, q, s = item(run, 10, 1, 102), item(run, 10, 1, 300), item(run, 10, 1, 20)
    review.decide(run, p.id, "accepted", client="t")
    review.decide_many(run, [(q.id, "rejected"), (s.id, "accepted")], client="t")
    assert [(d.client, d.decided_at) for d in review.decisions(run.conn)] == [
        ("t", T0), ("t", T1), ("t", T1)]
    assert sorted(d.candidate_id for d in review.undo(run, "t")) == sorted([q.id, s.id])
    assert [d.candidate_id for d in review.decisions(run.conn)] == [p.id]


def test_undo_reverts_only_the_last_decision(run):
    """The first decision of a fresh store has id 1; its box starts at x = 1: undoing the
    second one must not touch it."""
    p, q = item(run, 10, 1, 102), item(run, 10, 1, 300)
    review.decide(run, p.id, "accepted", client="t", box=(1, 5, 20, 20))
    review.decide(run, q.id, "accepted", client="t")
    assert [(d.id, d.box[0]) for d in review.decisions(run.conn)][0] == (1, 1.0)
    assert [d.candidate_id for d in review.undo(run, "t")] == [q.id]
    assert [d.id for d in review.decisions(run.conn)] == [1]


def test_batch_accept_by_class_and_score_with_its_client_and_stamp(run):
    """Agreed objects at checkpoint 10: P (class 1, 0.7), S (class 2, 0.8), R (class 2, 0.8)."""
    p, s = item(run, 10, 1, 102), item(run, 10, 1, 20)
    (r,) = review.image_items(run, 10, 2)
    assert {it.id for it in review.batch_candidates(run, 10, 0.0)} == {p.id, s.id, r.id}
    assert {it.id for it in review.batch_candidates(run, 10, 0.75)} == {s.id, r.id}
    assert {it.id for it in review.batch_candidates(run, 10, 0.0, classes=(1,))} == {p.id}
    q = item(run, 10, 1, 300)                    # one view: never in a batch
    review.decide(run, q.id, "accepted", client="t")
    with pytest.raises(review.CountChanged) as e:   # 3 agreed, 2 of class 2
        review.batch_accept(run, 10, 0.0, client="t", classes=(2,), expected=3)
    assert str(e.value) == ("the batch changed since its preview: 2 agreed candidates now (not 3); "
                            "nothing was accepted, check the new count and press again")
    assert len(review.decisions(run.conn)) == 1
    assert review.batch_accept(run, 10, 0.0, client="t", classes=(2,), expected=2) == 2
    batch = review.decisions(run.conn)[1:]
    assert sorted(d.candidate_id for d in batch) == sorted([s.id, r.id])
    assert all((d.client, d.decided_at, d.decision) == ("t", T1, "accepted") for d in batch)
    assert sorted(d.candidate_id for d in review.undo(run, "t")) == sorted([s.id, r.id])
    assert [d.candidate_id for d in review.decisions(run.conn)] == [q.id]


def test_a_later_checkpoint_follows_the_decision_by_its_boxes(run):
    """Checkpoint 20 finds P again at exactly its views' first box, and an object U where
    a decision's edited box says it is (IoU 0.5 with it: the 40x20 upper half of U)."""
    mine(run, 20, [(1, 1, [100, 100, 40, 40], 0.8, O, None),
                   (1, 1, [300, 20, 40, 40], 0.6, O, None)])
    p = item(run, 10, 1, 102)
    # accepted with a box moved elsewhere: P at 20 is covered through the box it was made on
    review.decide(run, p.id, "accepted", client="t", box=(400, 300, 30, 30))
    q = item(run, 10, 1, 300)
    review.decide(run, q.id, "accepted", client="t", box=(300, 20, 40, 20))
    states = {round(it.box[0]): it.state for it in review.image_items(run, 20, 1)}
    assert states == {100: "accepted", 300: "accepted"}


def test_a_rejection_follows_the_object_unless_rejected_are_included(run):
    mine(run, 20, [(1, 1, [100, 100, 40, 40], 0.8, O, None), (1, 1, [200, 20, 40, 40], 0.3, O, None)])
    review.decide(run, item(run, 10, 1, 102).id, "rejected", client="t")
    again = item(run, 20, 1, 100)
    assert again.state == "rejected"
    assert review.all_items(run, 20)[1][0].state == "rejected"
    assert item(run, 20, 1, 100).state == "rejected"
    assert next(it for it in review.image_items(run, 20, 1, include_rejected=True)
                if round(it.box[0]) == 100).state == "pending"
    pending = review.grouped_items(run.conn, 20)[1]
    decided = review.decide_items(pending, review.decisions(run.conn, 1))
    assert [it.state for it in decided] == ["rejected", "pending"]
    # the queue: image 1 offers only the other object, unless rejected ones are included
    (entry,) = review.queue(run, 20)
    assert (entry.image_id, entry.n_match, entry.n_items) == (1, 1, 2)
    (entry,) = review.queue(run, 20, review.Filters(include_rejected=True))
    assert (entry.image_id, entry.n_match, entry.n_items) == (1, 2, 2)


def test_the_queue_skips_images_without_a_match(run):
    """Image 1 is listed first but holds no class-2 object at checkpoint 20; image 2 does."""
    mine(run, 20, [(1, 1, [100, 100, 40, 40], 0.9, O, None), (2, 2, [50, 50, 60, 60], 0.6, O, None),
                   (2, 1, [300, 50, 60, 60], 0.5, O, None)])
    (entry,) = review.queue(run, 20, review.Filters(classes=(2,)))
    assert (entry.image_id, entry.n_match, entry.n_items) == (2, 1, 2)
    assert entry.top_score == pytest.approx(0.3)


def test_checkpoints_mined_in_the_same_millisecond_keep_their_own_items(run):
    mine(run, 20, [(1, 1, [300, 20, 40, 40], 0.6, O, None)])
    assert review.all_items(run, 10)[1][0].checkpoint == 10
    (only,) = review.all_items(run, 20)[1]
    assert only.checkpoint == 20 and only.box == (300.0, 20.0, 40.0, 40.0)
    assert review.all_items(run, 999) == {}


def test_the_agreement_sort_ranks_images_by_their_agreed_objects(run):
    """Undecided images: image 1's object is found by one view at 0.9 (score: the mean of
    the views' best, 0.45), image 2's by both at 0.5 and 0.3 (0.4); by score image 1
    comes first, by agreement image 2."""
    mine(run, 30, [(1, 1, [10, 10, 40, 40], 0.9, O, None),
                   (2, 1, [10, 10, 40, 40], 0.5, O, None), (2, 1, [11, 10, 40, 40], 0.3, A, None)])
    order = {s: [e.image_id for e in review.queue(run, 30, review.Filters(sort=s))]
             for s in ("score", "agreement")}
    assert order == {"score": [1, 2], "agreement": [2, 1]}


def test_the_class_filter_reads_the_class_only(run):
    """A class-2 object whose box starts at x = 2 is not a class-1 object (the SQL class
    filter must compare the class with the classes asked for, nothing else)."""
    mine(run, 40, [(1, 2, [2, 10, 30, 30], 0.9, O, None), (1, 1, [200, 10, 30, 30], 0.8, O, None)])
    (entry,) = review.queue(run, 40, review.Filters(classes=(1,)))
    assert (entry.image_id, entry.n_match, entry.n_items) == (1, 1, 2)
    assert review.count_items(run, 40, review.Filters(classes=(1,))) == 1
    assert [t[2] for t in review.pending_objects(run, 40, review.Filters(classes=(1,)))] == [1]
