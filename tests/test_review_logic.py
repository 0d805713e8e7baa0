"""Review logic without a browser: queue, decisions, undo, batch, progress, plots,
drawing, restart survival and two clients deciding at once."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from comining import review, store
from comining.errors import InputError
from review_fixtures import make_empty_run, make_older_store, make_run


@pytest.fixture
def info(tmp_path):
    return make_run(tmp_path)


@pytest.fixture
def run(info):
    r = review.open_run(info.run_dir)
    yield r
    r.close()


def by_view(items, view):
    return [it for it in items if it.view == view]


# ----------------------------------------------------------------------------- opening


def test_open_run_reads_store_and_config(run, info):
    assert run.checkpoints() == [100, 200]
    assert run.categories == {1: "disc", 2: "square", 3: "triangle"}
    assert run.images_dir == info.images_dir and run.hidden_path == info.hidden_path
    assert sorted(run.images) == [1, 2, 3, 4]
    assert run.annotations(1) and all(len(b) == 4 for _, b in run.annotations(1))


def test_open_run_errors_are_one_clear_line(tmp_path, info):
    with pytest.raises(InputError, match="run folder not found"):
        review.open_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no comining store"):
        review.open_run(tmp_path / "empty")
    make_older_store(info.run_dir, version=0)
    with pytest.raises(InputError, match="schema version 0 is not supported"):
        review.open_run(info.run_dir)


def test_run_without_candidates(tmp_path):
    r = review.open_run(make_empty_run(tmp_path))
    assert r.checkpoints() == []
    with pytest.raises(InputError, match="no mined checkpoint"):
        store.resolve_checkpoint(r.conn, "last")
    assert review.plot_data(r)["checkpoints"] == []
    r.close()


# ----------------------------------------------------------------------------- items and queue


def test_items_group_the_two_views_of_one_object(run):
    for image_id in run.images:
        early = review.image_items(run, 100, image_id)
        late = review.image_items(run, 200, image_id)
        # pattern 0 both views; 1 original only then both; 2 augmented only; + 1 false positive
        assert [len(by_view(early, v)) for v in ("both", "original", "augmented")] == [1, 2, 1]
        assert [len(by_view(late, v)) for v in ("both", "original", "augmented")] == [2, 1, 1]
        for it in by_view(late, "both"):
            assert len(it.member_ids) == 2 and it.agreement > 0.5
            assert it.id == it.member_ids[0]          # the top-scoring member
        assert [it.score for it in late] == sorted((it.score for it in late), reverse=True)
        assert all(it.state == "pending" for it in late)


def test_queue_sorts_and_filters(run):
    q = review.queue(run, 200)
    assert sorted(e.image_id for e in q) == [1, 2, 3, 4]
    assert [e.top_score for e in q] == sorted((e.top_score for e in q), reverse=True)
    disc = review.queue_items(run, 200, review.Filters(classes=(1,)))
    assert disc and all(it.category_id == 1 for it in disc)
    both = review.queue_items(run, 200, review.Filters(views=("both",), sort="agreement"))
    assert both and all(it.view == "both" for it in both)
    assert [it.agreement for it in both] == sorted((it.agreement for it in both), reverse=True)
    mid = review.queue_items(run, 200, review.Filters(score_min=0.6, score_max=0.8))
    assert all(0.6 <= it.score <= 0.8 for it in mid)
    assert len(review.queue_items(run, 200, review.Filters(states=()))) == 16
    assert review.queue_items(run, 200, review.Filters(states=("accepted",))) == []
    with pytest.raises(InputError):
        review.Filters(views=("sideways",))


# ----------------------------------------------------------------------------- decisions


def test_accept_reject_and_edit(run):
    a, b, c = review.image_items(run, 200, 1)[:3]
    review.decide(run, a.id, "accepted", client="t")
    review.decide(run, b.id, "rejected", client="t")
    review.decide(run, c.id, "accepted", client="t", category_id=3, box=(10, 20, 30, 40))
    items = {it.id: it for it in review.image_items(run, 200, 1)}
    assert items[a.id].state == "accepted" and items[b.id].state == "rejected"
    edited = items[c.id]
    assert edited.state == "accepted" and edited.shown_category == 3
    assert edited.shown_box == (10, 20, 30, 40) and edited.decision.edited
    pend = review.queue_items(run, 200)
    assert a.id not in {it.id for it in pend} and len(pend) == 13


def test_decide_rejects_bad_input(run):
    it = review.image_items(run, 200, 1)[0]
    with pytest.raises(InputError, match="accepted' or 'rejected"):
        review.decide(run, it.id, "maybe")
    with pytest.raises(InputError, match="no longer exists"):
        review.decide(run, 999999, "accepted")
    with pytest.raises(InputError, match="unknown class"):
        review.decide(run, it.id, "accepted", category_id=42)
    with pytest.raises(InputError, match="empty inside"):
        review.decide(run, it.id, "accepted", box=(5000, 5000, 10, 10))
    with pytest.raises(InputError, match="NaN"):
        review.decide(run, it.id, "accepted", box=(1, float("nan"), 10, 10))
    assert run.conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 0


def test_rejected_once_is_not_proposed_again(run):
    """Decisions at checkpoint 100 cover the same objects at checkpoint 200 (other
    candidate rows), unless include_rejected asks for rejected ones again."""
    early = review.image_items(run, 100, 2)
    fp = next(it for it in early if it.view == "original" and it.score < 0.53)   # the false positive
    obj = by_view(early, "both")[0]
    review.decide(run, fp.id, "rejected", client="t")
    review.decide(run, obj.id, "accepted", client="t")
    late = review.image_items(run, 200, 2)
    fp_late = next(it for it in late if it.category_id == fp.category_id and review.iou(it.box, fp.box) > 0.9)
    obj_late = next(it for it in late if it.category_id == obj.category_id and review.iou(it.box, obj.box) > 0.5)
    assert fp_late.id != fp.id and fp_late.state == "rejected"
    assert obj_late.id != obj.id and obj_late.state == "accepted"
    again = {it.id: it for it in review.image_items(run, 200, 2, include_rejected=True)}
    assert again[fp_late.id].state == "pending" and again[obj_late.id].state == "accepted"
    pending_ids = {it.id for it in review.queue_items(run, 200)}
    assert fp_late.id not in pending_ids
    assert fp_late.id in {it.id for it in review.queue_items(run, 200, review.Filters(include_rejected=True))}


def test_showing_rejected_ones_again_keeps_the_very_object_rejected(run):
    """include_rejected proposes again the objects a rejection covers by overlap only (at
    other checkpoints); the object the annotator rejected stays rejected (the decision's
    link to its object), in the image's items, the queue and its counts."""
    early = review.image_items(run, 100, 2)
    fp = next(it for it in early if it.view == "original" and it.score < 0.53)
    f = review.Filters(include_rejected=True)
    before = {e.image_id: e.n_match for e in review.queue(run, 100, f)}
    review.decide(run, fp.id, "rejected", client="t")
    again = {it.id: it for it in review.image_items(run, 100, 2, include_rejected=True)}
    assert again[fp.id].state == "rejected"
    assert all(it.state == "pending" for i, it in again.items() if i != fp.id)
    assert fp.id not in {it.id for it in review.queue_items(run, 100, f)}
    after = {e.image_id: e.n_match for e in review.queue(run, 100, f)}
    assert after == {**before, 2: before[2] - 1}
    assert review.count_items(run, 100, f) == sum(before.values()) - 1


def test_latest_decision_about_an_object_wins(run):
    it = review.image_items(run, 200, 3)[0]
    review.decide(run, it.id, "accepted", client="x")
    review.decide(run, it.id, "rejected", client="y")
    assert review.image_items(run, 200, 3)[0].state == "rejected"
    eff = review.effective_decisions(run.conn)
    assert [(d.candidate_id, d.decision) for d in eff] == [(it.id, "rejected")]


def test_undo_is_per_client_and_walks_back(run):
    a, b, c = review.image_items(run, 200, 1)[:3]
    review.decide(run, a.id, "accepted", client="A")
    review.decide(run, b.id, "rejected", client="B")
    review.decide(run, c.id, "rejected", client="A")
    undone = review.undo(run, "A")
    assert [d.candidate_id for d in undone] == [c.id]
    states = {it.id: it.state for it in review.image_items(run, 200, 1)}
    assert states[c.id] == "pending" and states[b.id] == "rejected" and states[a.id] == "accepted"
    assert [d.candidate_id for d in review.undo(run, "A")] == [a.id]
    assert review.undo(run, "A") == []
    assert {d.candidate_id for d in review.decisions(run.conn)} == {b.id}
    # undone rows stay in the table (append-only), marked undone
    assert run.conn.execute("SELECT COUNT(*) FROM decisions WHERE undone = 1").fetchone()[0] == 2


def test_batch_accept_applies_exactly_the_previewed_count(run):
    preview = review.batch_candidates(run, 200, 0.8)
    assert preview and all(it.view == "both" and it.score >= 0.8 for it in preview)
    # expected from the stored rows: the objects both views found (the fixture's agreed
    # pairs) whose score, the mean of the two views' scores, is >= 0.8 (the fixture scores
    # the augmented copy 0.97 x the original), each at its original-view box (the other box
    # is jittered by 2 px at most)
    rows = run.conn.execute("SELECT image_id, x, y, w, h FROM candidates WHERE checkpoint = 200"
                            " AND view = 'original' AND agreed = 1 AND (score + ROUND(score * 0.97, 3))"
                            " / 2 >= 0.8").fetchall()
    assert len(preview) == len(rows)
    for r in rows:
        [it] = [it for it in preview if it.image_id == r[0] and review.iou(it.box, tuple(r)[1:]) > 0.9]
    with pytest.raises(review.CountChanged):
        review.batch_accept(run, 200, 0.8, client="b", expected=len(preview) + 1)
    assert run.conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 0
    n = review.batch_accept(run, 200, 0.8, client="b", expected=len(preview))
    assert n == len(preview)
    accepted = {d.candidate_id for d in review.decisions(run.conn)}
    assert accepted == {it.id for it in preview}
    assert review.batch_accept(run, 200, 0.8, client="b") == 0
    assert len(review.undo(run, "b")) == n        # one undo reverts the whole batch
    assert len(review.batch_candidates(run, 200, 0.8)) == n


def test_decide_many_is_one_undo(run):
    items = review.queue_items(run, 200)[:5]
    review.decide_many(run, [(it.id, "accepted") for it in items[:3]] +
                       [(it.id, "rejected") for it in items[3:]], client="f")
    assert len(review.decisions(run.conn)) == 5
    assert len(review.undo(run, "f")) == 5


def test_progress_counts(run):
    items = review.queue_items(run, 200)
    review.decide(run, items[0].id, "accepted", client="p")
    review.decide(run, items[1].id, "rejected", client="p")
    p = review.progress(run, 200)
    assert (p["total"], p["reviewed"], p["accepted"], p["rejected"], p["pending"]) == (16, 2, 1, 1, 14)
    assert sum(r["total"] for r in p["per_class"]) == 16
    cls = {r["category_id"]: r for r in p["per_class"]}
    assert cls[items[0].category_id]["accepted"] >= 1
    assert review.decision_counts(run) == {"accepted": 1, "rejected": 1}


def test_stale_candidate_links_fall_back_to_the_box(run, info):
    """Re-mining a checkpoint replaces its rows (ids may be reused): a decision keeps
    covering its object through its own class and box."""
    it = review.image_items(run, 200, 1)[0]
    review.decide(run, it.id, "rejected", client="s")
    rows = [dict(r) for r in store.candidates(run.conn, 200)]
    cands = [{"key": r["id"], "partner_key": r["partner_id"], "image_id": r["image_id"],
              "category_id": r["category_id"], "bbox": [r["x"] + 1, r["y"], r["w"], r["h"]],
              "score": r["score"], "view": r["view"], "agreed": r["agreed"]} for r in reversed(rows)]
    store.replace_checkpoint_candidates(run.conn, iteration=200, path="x", candidates=cands,
                                        thresholds={"score_thresh": .5, "nms_iou": .5, "gt_iou": .4})
    d = review.decisions(run.conn)[0]
    assert not d.linked
    again = next(x for x in review.image_items(run, 200, 1) if review.iou(x.box, it.box) > 0.9)
    assert again.state == "rejected"


def test_cached_grouping_follows_decisions_and_a_re_mine(run):
    """The run caches each checkpoint's grouping: decisions still apply at once, a
    re-mined checkpoint is regrouped, and the result equals a fresh computation."""
    def fresh(checkpoint):
        return {im: review.image_items(run, checkpoint, im) for im in run.images
                if review.image_items(run, checkpoint, im)}

    before = review.all_items(run, 200)
    assert before == fresh(200)
    it = before[1][0]
    review.decide(run, it.id, "accepted", client="s")
    assert review.all_items(run, 200)[1][0].state == "accepted"
    assert review.all_items(run, 200) == fresh(200)

    rows = [dict(r) for r in store.candidates(run.conn, 200)]
    kept = [r for r in rows if r["image_id"] != 2]       # image 2's candidates disappear
    cands = [{"key": r["id"], "partner_key": r["partner_id"], "image_id": r["image_id"],
              "category_id": r["category_id"], "bbox": [r["x"] + 2, r["y"], r["w"], r["h"]],
              "score": r["score"], "view": r["view"], "agreed": r["agreed"]} for r in kept]
    store.replace_checkpoint_candidates(run.conn, iteration=200, path="x", candidates=cands,
                                        thresholds={"score_thresh": .5, "nms_iou": .5, "gt_iou": .4})
    after = review.all_items(run, 200)
    assert 2 not in after and 2 in before
    assert after == fresh(200)
    assert after[1][0].box[0] == pytest.approx(before[1][0].box[0] + 2)   # a fused box moves with its boxes


# ----------------------------------------------------------------------------- restart, concurrency


def test_decisions_survive_a_restart(info):
    r1 = review.open_run(info.run_dir)
    a, b = review.image_items(r1, 200, 2)[:2]
    review.decide(r1, a.id, "accepted", client="c1")
    review.decide(r1, b.id, "rejected", client="c1")
    r1.close()
    r2 = review.open_run(info.run_dir)
    states = {it.id: it.state for it in review.image_items(r2, 200, 2)}
    assert states[a.id] == "accepted" and states[b.id] == "rejected"
    assert [d.candidate_id for d in review.undo(r2, "c1")] == [b.id]   # undo works after a restart
    r2.close()


def test_two_clients_deciding_at_once_lose_nothing(info):
    """Two app processes (two Run objects, two connections) write at the same moment."""
    runs = [review.open_run(info.run_dir), review.open_run(info.run_dir)]
    items = review.queue_items(runs[0], 200, review.Filters(states=()))
    halves = [items[0::2], items[1::2]]
    barrier = threading.Barrier(2)
    errors = []

    def work(k):
        try:
            barrier.wait()
            for it in halves[k]:
                review.decide(runs[k], it.id, "accepted" if k == 0 else "rejected", client=f"tab{k}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    decided = {d.candidate_id: d.decision for d in review.decisions(runs[0].conn)}
    assert decided == {**{it.id: "accepted" for it in halves[0]}, **{it.id: "rejected" for it in halves[1]}}
    for r in runs:
        r.close()


def test_two_batches_at_once_never_decide_twice(info):
    runs = [review.open_run(info.run_dir) for _ in range(2)]
    barrier = threading.Barrier(2)
    counts = [0, 0]

    def work(k):
        barrier.wait()
        counts[k] = review.batch_accept(runs[k], 200, 0.0, client=f"tab{k}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n_agreed = len([it for items in review.all_items(runs[0], 200).values() for it in items
                    if it.view == "both"])
    assert sorted(counts) == [0, n_agreed]
    ids = [d.candidate_id for d in review.decisions(runs[0].conn)]
    assert len(ids) == len(set(ids)) == n_agreed
    for r in runs:
        r.close()


def test_store_is_wal(run):
    assert run.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other = sqlite3.connect(run.store_path)
    assert other.execute("SELECT COUNT(*) FROM candidates").fetchone()[0] > 0
    other.close()


# ----------------------------------------------------------------------------- plots


def test_plot_data_losses_mined_and_quality(run):
    data = review.plot_data(run)
    assert len(data["metrics"]) == 21        # the half-written last line is skipped
    assert [c["iteration"] for c in data["checkpoints"]] == [100, 200]
    q = {r["checkpoint"]: r for r in data["quality"]}
    # per image: 3 hidden objects; original rows = hits of patterns 0(,1) + 1 false positive
    assert q[100]["n_hidden"] == 12
    assert q[100]["precision_original"] == pytest.approx(2 / 3)
    assert q[100]["precision_augmented"] == 1.0
    assert q[100]["recall_augmented"] == pytest.approx(2 / 3)
    assert q[200]["recall_augmented"] == 1.0 and q[200]["recall_union"] == 1.0
    assert q[200]["precision_agreed"] == 1.0 and q[200]["mined_agreed"] == 8
    figs = review.plot_figures(data)
    assert set(figs) == {"losses", "mined", "quality"}


def test_plot_data_without_hidden_file(tmp_path):
    info = make_run(tmp_path, with_hidden=False, with_metrics=False)
    r = review.open_run(info.run_dir)
    data = review.plot_data(r)
    assert data["quality"] is None and "hidden file" in data["quality_note"]
    assert data["metrics"] == []
    figs = review.plot_figures(data)
    (losses,) = figs["losses"].axes
    assert losses.get_lines() == [] and "no metrics.jsonl yet" in [t.get_text() for t in losses.texts]
    (mined,) = figs["mined"].axes
    # per image at checkpoint 100: original = patterns 0, 1 + a false positive, augmented =
    # patterns 0, 2, agreed = pattern 0; at 200 pattern 1 is agreed too (4 images)
    assert {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in mined.get_lines()} == {
        "original view": ([100, 200], [12, 12]), "augmented view": ([100, 200], [8, 12]),
        "agreed (both)": ([100, 200], [4, 8])}
    (quality,) = figs["quality"].axes
    assert any("hidden file" in t.get_text() for t in quality.texts) and not quality.get_lines()
    # the losses plotted are the ones metrics.jsonl holds
    (info.run_dir / "metrics.jsonl").write_text(
        '{"iteration": 10, "loss": 2.5, "loss_original": 1.0, "loss_augmented": 1.5}\n'
        '{"iteration": 20, "loss": 1.25, "loss_original": 0.5, "loss_augmented": 0.75}\n')
    (losses,) = review.plot_figures(review.plot_data(r))["losses"].axes
    lines = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata()))
             for ln in losses.get_lines() if not ln.get_label().startswith("_")}
    assert lines == {"loss": ([10, 20], [2.5, 1.25]), "loss original": ([10, 20], [1.0, 0.5]),
                     "loss augmented": ([10, 20], [1.5, 0.75])}
    r.close()


# ----------------------------------------------------------------------------- drawing


def _edge_colour(img, box, t=1):
    x, y, w, h = (int(round(v)) for v in box)
    return img[y + h // 2, x + t - 1 if t else x]


def test_render_draws_each_layer_in_its_colour(run):
    image, problem = run.load_image(1)
    assert problem is None and image.shape == (360, 480, 3)
    items = review.image_items(run, 200, 1)
    out = review.render(image, items, names=run.categories, annotations=run.annotations(1),
                        selected=None, labels=False)
    assert out.shape == image.shape and not np.shares_memory(out, image)
    for it in items:
        x, y, w, h = (int(round(v)) for v in it.box)
        px = out[y + h // 2, x]
        assert tuple(px) == review.COLOURS[it.view], it
    off = review.render(image, items, names=run.categories, layers=("both",), labels=False)
    for it in items:
        x, y, w, h = (int(round(v)) for v in it.box)
        drawn = tuple(off[y + h // 2, x]) == review.COLOURS[it.view]
        assert drawn == (it.view == "both")


def test_render_decided_and_selected(run):
    image, _ = run.load_image(1)
    items = review.image_items(run, 200, 1)
    review.decide(run, items[0].id, "accepted", client="r")
    items = review.image_items(run, 200, 1)
    out = review.render(image, items, names=run.categories, labels=False)
    x, y, w, h = (int(round(v)) for v in items[0].box)
    assert tuple(out[y + h // 2, x]) == review.COLOURS["accepted"]
    hidden = review.render(image, items, names=run.categories, labels=False,
                           layers=("original", "augmented", "both"))
    assert tuple(hidden[y + h // 2, x]) != review.COLOURS["accepted"]
    sel = review.render(image, items, names=run.categories, labels=False, selected=items[1].id)
    x, y, w, h = (int(round(v)) for v in items[1].box)
    row = [tuple(px) for px in sel[y + h // 2, x - 5:x]]
    assert review.COLOURS["selected"] in row          # the white outline around the box


def test_item_at_picks_the_smallest_box_under_the_click(run):
    items = review.image_items(run, 200, 1)
    it = items[-1]
    x, y, w, h = it.box
    assert review.item_at(items, x + w / 2, y + h / 2).id == it.id
    assert review.item_at(items, -5, -5) is None


def test_missing_image_gives_a_placeholder_and_a_reason(run, info):
    (info.images_dir / "000002.png").unlink()
    image, problem = run.load_image(2)
    assert image.shape == (360, 480, 3) and "not found" in problem
    out = review.render(image, review.image_items(run, 200, 2), names=run.categories)
    assert out.shape == image.shape
    assert review.crops(run, review.image_items(run, 200, 2))[0][1].endswith("image missing")


def test_a_large_image_is_shown_shrunk_with_its_boxes_in_place(tmp_path):
    """A photo larger than the page's display size is drawn shrunk (drawing and encoding
    it in full costs ~1 s a decision); boxes and clicks map through the same factor."""
    from app.views import Ctx, item_under, new_state, render_view
    info = make_run(tmp_path, n_images=1, width=3200, height=800, n_objects=3, checkpoints=(100,))
    r = review.open_run(info.run_dir)
    try:
        shown, factor, problem = r.display_image(1)
        assert problem is None and shown.shape == (400, 1600, 3) and factor == 0.5
        assert r.display_image(1)[0] is shown                 # cached
        st = dict(new_state(), checkpoint=100, queue=[1], image_id=1)
        st, drawn, text, *_ = render_view(Ctx(r), st, list(review.LAYERS), False)
        assert drawn.shape == (400, 1600, 3) and st["display_scale"] == 0.5
        assert "3200×800 (shown at 50%)" in text
        items = review.image_items(r, 100, 1)
        for it in items:
            x, y, w, h = it.box
            colour = review.COLOURS["selected"] if it.id == st["selected"] else review.COLOURS[it.view]
            if it.id != st["selected"]:
                assert tuple(drawn[int(round((y + h / 2) * 0.5)), int(round(x * 0.5))]) == colour
            # a click in the middle of the box as shown picks it
            assert item_under(items, st, (x + w / 2) * 0.5, (y + h / 2) * 0.5, review.LAYERS).id == it.id
    finally:
        r.close()


def test_a_large_jpeg_is_decoded_reduced_for_display(tmp_path, monkeypatch):
    """A JPEG larger than the display is decoded at a reduced DCT scale; the picture and
    the factor are those of a full decode shrunk."""
    import cv2
    from PIL import Image
    from comining.coco import load_rgb
    from comining.review.draw import fit_display
    info = make_run(tmp_path, n_images=1, width=3400, height=1000, n_objects=3, checkpoints=(100,))
    png = info.images_dir / "000001.png"
    Image.open(png).convert("RGB").save(png, format="JPEG", quality=92)   # JPEG bytes, same name
    from comining.review import run as run_module
    calls, real = [], run_module.load_rgb_reduced

    def recording(path, **kw):
        image, scale = real(path, **kw)
        calls.append((kw.get("max_side"), scale))
        return image, scale

    monkeypatch.setattr(run_module, "load_rgb_reduced", recording)
    r = review.open_run(info.run_dir)
    try:
        shown, factor, problem = r.display_image(1)
        assert calls == [(1600, 0.5)]         # one decode, at half scale (3400 -> 1700 px)
        assert problem is None and max(shown.shape[:2]) <= 1600
        assert factor == pytest.approx(shown.shape[1] / 3400, rel=1e-3)
        reference, ref_factor = fit_display(load_rgb(png))
        assert factor == pytest.approx(ref_factor, rel=2e-3)
        same = cv2.resize(shown, reference.shape[1::-1], interpolation=cv2.INTER_AREA)
        assert np.abs(same.astype(int) - reference.astype(int)).mean() < 4
    finally:
        r.close()


def test_prefetch_decodes_the_next_image_once_in_the_background(run, monkeypatch):
    import time
    from comining.review import run as run_module
    decoded = []
    real = run_module.load_rgb_reduced

    def counting(path, **kw):
        decoded.append(path.name)
        time.sleep(0.2)          # a large photo: the page asks before the decode is done
        return real(path, **kw)

    monkeypatch.setattr(run_module, "load_rgb_reduced", counting)
    run.prefetch(1)                                   # a small image: not worth a thread
    monkeypatch.setattr(run_module, "PREFETCH_MIN_PIXELS", 480 * 360)
    run.prefetch(2)
    deadline = time.monotonic() + 10
    while not decoded and time.monotonic() < deadline:
        time.sleep(0.01)
    assert decoded == ["000002.png"]                  # decoding before anyone asked
    run.prefetch(2)                                   # already in flight: nothing more
    shown, factor, problem = run.display_image(2)     # waits for the prefetch
    assert problem is None and shown.shape == (360, 480, 3) and factor == 1.0
    run.prefetch(2)                                   # cached: nothing more
    assert run.display_image(2)[0] is shown
    assert decoded == ["000002.png"]
    run.prefetch(10_000)                              # no such image: ignored
    run.display_image(3)
    assert decoded == ["000002.png", "000003.png"]


def test_exif_rotation_is_applied_only_when_the_json_size_says_so(run, info):
    """An image whose json gives the file's raw size was trained on unrotated (its boxes
    ignore the EXIF tag): the review app shows it unrotated too."""
    from PIL import Image
    path = info.images_dir / "000001.png"
    raw = Image.open(path).convert("RGB")                  # 480 x 360, as the json says
    exif = raw.getexif()
    exif[0x0112] = 6                                        # rotate 90: 360 x 480 shown
    raw.save(path, exif=exif.tobytes())
    image, problem = run.load_image(1)
    assert problem is None and image.shape == (360, 480, 3)
    assert np.array_equal(image, np.asarray(raw))
    assert np.array_equal(run.display_image(1)[0], np.asarray(raw))


def test_crops_have_context_around_the_box(run):
    items = review.queue_items(run, 200)[:4]
    tiles = review.crops(run, items, size=120)
    assert len(tiles) == 4
    for (img, caption), it in zip(tiles, items):
        assert max(img.shape[:2]) == 120 and img.dtype == np.uint8
        assert run.category_name(it.category_id) in caption
    image = np.zeros((100, 200, 3), np.uint8)
    patch, (x0, y0, x1, y1) = review.crop(image, (50, 40, 20, 10), context=0.5, min_side=4, size=40)
    assert (x0, y0, x1, y1) == (40, 35, 80, 55)


def test_iou_matrix():
    a = [[0, 0, 10, 10], [5, 5, 10, 10]]
    m = review.iou_matrix(a, a)
    assert m[0, 0] == 1.0 and m[0, 1] == pytest.approx(25 / 175)
    assert review.iou([0, 0, 1, 1], [5, 5, 1, 1]) == 0.0


def test_undo_separates_decisions_made_in_the_same_millisecond(run, monkeypatch):
    monkeypatch.setattr(store, "now_iso", lambda: "2030-01-01T00:00:00.000+00:00")
    a, b = review.image_items(run, 200, 1)[:2]
    review.decide(run, a.id, "accepted", client="fast")
    review.decide(run, b.id, "accepted", client="fast")
    assert [d.candidate_id for d in review.undo(run, "fast")] == [b.id]
    assert [d.candidate_id for d in review.undo(run, "fast")] == [a.id]


def test_an_accept_moved_far_still_decides_its_object(run):
    """An accept whose edited box no longer overlaps the object (IoU < 0.5) still decides
    that object: the decision is linked to it, not only found by overlap."""
    item = review.queue_items(run, 200)[0]
    x, y, w, h = item.box
    review.decide(run, item.id, "accepted", client="t", box=(x + w, y, w, h))   # IoU 0
    [now] = [it for it in review.image_items(run, 200, item.image_id) if it.id == item.id]
    assert now.state == "accepted" and review.iou(now.decision.box, item.box) < 0.5
    assert item.id not in [it.id for it in review.queue_items(run, 200)]
