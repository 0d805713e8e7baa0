"""When the app suggests retraining: the yield of the annotator's latest decisions on the
checkpoint under review (comining.review.recent_yield), the decisions no round has
trained on yet (untrained_decisions), and the rule that joins them
(comining.rounds.retrain_advice)."""

from __future__ import annotations

from comining import review, store
from comining.rounds import RETRAIN_WINDOW, retrain_advice
from review_fixtures import make_run


def test_the_advice_comes_once_the_latest_window_pays_less_than_half_and_something_is_new():
    w = RETRAIN_WINDOW
    half = w // 2                                              # exactly half still pays
    assert retrain_advice(w - 1, 0, 40) is None                # too few decisions to judge
    assert retrain_advice(w, half, 40) is None
    assert retrain_advice(w, half - 1, 0) is None              # nothing new to train on
    line = retrain_advice(w, half - 1, 40)
    assert f"Only {half - 1} of your last {w} decisions" in line
    assert "(40 not trained on yet)" in line and "Time to retrain?" in line


def test_the_yield_counts_the_latest_standing_decisions_on_that_checkpoints_objects(tmp_path):
    info = make_run(tmp_path, n_images=4, checkpoints=(100, 200))
    run = review.open_run(info.run_dir)
    try:
        early = review.queue_items(run, 100)[0]
        review.decide(run, early.id, "accepted", client="a")
        late = [it.id for it in review.queue_items(run, 200)[:6]]
        assert not set(late) & {early.id}
        for oid, d in zip(late, ("rejected", "rejected", "accepted", "accepted")):
            review.decide(run, oid, d, client="a")
        assert review.recent_yield(run, 200, 2) == (2, 2)      # the two latest: accepts
        assert review.recent_yield(run, 200, 10) == (4, 2)
        assert review.recent_yield(run, 100, 10) == (1, 1)     # the other checkpoint's own
        review.undo(run, "a")                                  # the last accept is undone
        assert review.recent_yield(run, 200, 2) == (2, 1)
        assert review.recent_yield(run, 200, 10) == (3, 1)
        # a box drawn by hand is nobody's object: it says nothing of the queue's yield
        counts = review.import_decisions(run, [{"image_id": 1, "bbox": [1, 1, 9, 9],
                                                "category_id": 1, "decision": "accepted"}],
                                         checkpoint=200, client="a")
        assert counts["manual"] == 1
        assert review.recent_yield(run, 200, 2) == (2, 1)

        # untrained: standing decisions made after the latest round was built
        ids = [r[0] for r in run.conn.execute(
            "SELECT id FROM decisions WHERE undone = 0 ORDER BY id")]
        assert len(ids) == 5                                   # 1 + 3 standing + the drawn one
        assert review.untrained_decisions(run) == 5            # no round yet
        store.add_round(run.conn, round=1, start_iteration=200, end_iteration=300,
                        targets="t.json", rejected="r.json", decision_ids=ids[:3],
                        n_accepted=2, n_rejected=1)
        assert review.untrained_decisions(run) == 2
    finally:
        run.close()
