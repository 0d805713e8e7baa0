"""What the review page shows, computed from the run: the session state, the image
with its boxes and the candidate list, the batch preview, progress, the fast-mode page
and the plots. Pure Python over `comining.review`; the event handlers (app.events)
call these and the layout (app.layout) places their results."""

from __future__ import annotations

import gradio as gr
import numpy as np

from app.retrain import Retrainer
from comining import review
from comining.calibration import NO_ESTIMATE, batch_precision
from comining.errors import InputError

FAST_PAGE = 24
LAYER_LABELS = [("annotated (dimmed)", "annotated"), ("original view", "original"),
                ("augmented view", "augmented"), ("both views", "both"),
                ("decided", "decided")]


class Ctx:
    """What the handlers share: the run, name <-> id maps, the background retraining."""

    def __init__(self, run: review.Run):
        self.run = run
        self.retrainer = Retrainer(run.dir)

    @property
    def names(self) -> dict[int, str]:
        return self.run.categories

    @property
    def ids(self) -> dict[str, int]:
        return {name: cid for cid, name in self.run.categories.items()}

    def class_names(self) -> list[str]:
        return [self.names[c] for c in sorted(self.names)]

    def cat_id(self, name) -> int | None:
        if name in (None, ""):
            return None
        if name in self.ids:
            return self.ids[name]
        raise InputError(None, f"unknown class {name!r}")


def new_state() -> dict:
    return {"client": None, "checkpoint": None, "queue": [], "pos": 0, "image_id": None,
            "selected": None, "filters": {}, "fast": [], "edit": None, "display_scale": 1.0}


def filters_of(st) -> review.Filters:
    f = st.get("filters") or {}
    return review.Filters(classes=tuple(f.get("classes", ())), views=tuple(f.get("views", ())),
                          score_min=float(f.get("score_min", 0.0)),
                          score_max=float(f.get("score_max", 1.0)),
                          states=tuple(f.get("states", ("pending",))),
                          include_rejected=bool(f.get("include_rejected", False)),
                          sort=f.get("sort", "score"), labelled=f.get("labelled", "missing"))


def rebuild_queue(ctx: Ctx, st: dict) -> None:
    """Recompute the session's image queue; stay on the current image when it is in it."""
    ck = st["checkpoint"]
    st["queue"] = [] if ck is None else [e.image_id for e in review.queue(ctx.run, ck, filters_of(st))]
    if st["image_id"] in st["queue"]:
        st["pos"] = st["queue"].index(st["image_id"])
    else:
        st["pos"] = 0
        st["image_id"] = st["queue"][0] if st["queue"] else None
        st["selected"] = None


def current_items(ctx, st):
    if st["checkpoint"] is None or st["image_id"] is None:
        return []
    return review.image_items(ctx.run, st["checkpoint"], st["image_id"],
                              include_rejected=filters_of(st).include_rejected)


def resolve_selected(items, selected):
    """The item id for a selection that may name one of its member candidates."""
    if selected is None:
        return None
    for it in items:
        if selected == it.id or selected in it.member_ids:
            return it.id
    return None


def next_pending(items, after_id, filters: review.Filters | None = None):
    """The first pending item after `after_id` in list order (wrapping), preferring the
    ones the queue filters select; else None."""
    ids = [it.id for it in items]
    start = ids.index(after_id) + 1 if after_id in ids else 0
    ring = [items[(start + k) % len(items)] for k in range(len(items))]
    pending = [it for it in ring if it.state == "pending"]
    if filters is not None:
        for it in pending:
            if filters.match(it):
                return it.id
    return pending[0].id if pending else None


def message_image(text: str, width: int = 960, height: int = 540) -> np.ndarray:
    import cv2
    img = np.full((height, width, 3), 245, np.uint8)
    y = height // 2 - 20 * (text.count("\n"))
    for line in text.split("\n"):
        (tw, _), _ = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 0.8, 2)
        cv2.putText(img, line, ((width - tw) // 2, y), cv2.FONT_HERSHEY_SIMPLEX, 0.8,
                    (90, 90, 90), 2, cv2.LINE_AA)
        y += 40
    return img


def n_mined(ctx, checkpoint) -> int:
    row = ctx.run.conn.execute("SELECT n_original + n_augmented FROM checkpoints WHERE iteration = ?",
                               (checkpoint,)).fetchone()
    return int(row[0] or 0) if row else 0


def counts_line(ctx) -> str:
    c = review.decision_counts(ctx.run)
    return f"Decisions in this run: **{c['accepted']}** accepted · **{c['rejected']}** rejected"


def render_view(ctx: Ctx, st: dict, layers, labels_on: bool, note: str | None = None, items=None):
    """(state, image, info, candidate list, class, counts) for the current image
    (`items`: the image's items when the caller has just computed them)."""
    run = ctx.run
    counts = counts_line(ctx)
    if st["checkpoint"] is None:
        msg = ("No mined checkpoint in this run yet: the training engine mines candidates at "
               "every checkpoint. Press ↻ to look again.")
        return (st, message_image("No candidates yet"), f"ℹ️ {msg}",
                gr.update(choices=[], value=None), gr.update(value=None), counts)
    if st["image_id"] is None:
        if n_mined(ctx, st["checkpoint"]) == 0:
            msg = (f"Checkpoint {st['checkpoint']} mined no boxes: early in training the scores "
                   f"stay below the mining threshold. Pick a later checkpoint (↻ looks for new "
                   f"ones), or re-mine with `comining mine --score-thresh`.")
            title = "No candidates yet"
        else:
            msg = (f"Nothing in the queue at checkpoint {st['checkpoint']} for these filters "
                   f"(all reviewed, or the filters exclude everything).")
            title = "Queue empty"
        return (st, message_image(title), f"ℹ️ {msg}",
                gr.update(choices=[], value=None), gr.update(value=None), counts)
    if items is None:
        items = current_items(ctx, st)
    sel = resolve_selected(items, st["selected"])
    if sel is None and items:
        sel = next_pending(items, None, filters_of(st)) or items[0].id
    st["selected"] = sel
    image, factor, problem = run.display_image(st["image_id"])
    st["display_scale"] = factor
    if st["pos"] + 1 < len(st["queue"]):
        run.prefetch(st["queue"][st["pos"] + 1])   # what N shows next, decoded meanwhile
    current = next((it for it in items if it.id == sel), None)
    drawn = review.render(image, items, names=ctx.names, annotations=run.annotations(st["image_id"]),
                          layers=layers or (), selected=sel, labels=labels_on, box_scale=factor,
                          members=review.member_boxes(run, current) if current else ())
    file_name, w, h = run.images[st["image_id"]]
    shown = f" (shown at {factor:.0%})" if factor < 1 and not problem else ""
    pending = sum(1 for it in items if it.state == "pending")
    info = (f"**Image {st['pos'] + 1} / {len(st['queue'])}** · `{file_name}` · {w}×{h}{shown} · "
            f"checkpoint {st['checkpoint']} · **{pending}** pending of {len(items)} candidates")
    if problem:
        info += f"\n\n⚠️ **Image not shown:** {problem}. You can still decide on its boxes."
    if note:
        info += f"\n\n{note}"
    elif items and pending == 0:
        info += "\n\n✅ Every candidate on this image is decided: press **N** for the next image."
    if current is not None and current.state == "pending":
        info += "\n\n" + alternatives_line(ctx, current)
    choices = [(review.describe(n, it, ctx.names), it.id) for n, it in enumerate(items, 1)]
    cls = ctx.names.get(current.shown_category) if current else None
    return (st, drawn, info, gr.update(choices=choices, value=sel),
            gr.update(choices=ctx.class_names(), value=cls), counts)


def alternatives_line(ctx, item) -> str:
    """'Accept as: **1** disc 0.62 · **2** square 0.31' (the 1-9 keys)."""
    alts = " · ".join(f"<kbd>{k}</kbd> {ctx.names.get(c, c)} {s:.2f}"
                      for k, (c, s) in enumerate(item.alternatives[:9], 1))
    where = ("" if item.on_label is None else
             f" (it overlaps a **{ctx.names.get(item.on_label, item.on_label)}** label: is that "
             f"label's class wrong?)")
    return f"Accept as: {alts}{where}"


def alternative_class(item, k: int) -> int:
    """The category id of an item's k-th class alternative (1-based)."""
    alts = item.alternatives
    if not 1 <= k <= len(alts):
        raise InputError(None, f"this candidate has {len(alts)} class alternative"
                               f"{'s' if len(alts) != 1 else ''}, not {k}")
    return alts[k - 1][0]


def item_under(items, st: dict, x: float, y: float, layers):
    """The item under a click at (x, y) in the shown image's pixels (the page may show
    a large image shrunk: see `render_view`)."""
    factor = st.get("display_scale") or 1.0
    return review.item_at(items, x / factor, y / factor, layers=layers or ())


def batch_preview(ctx, st, min_score):
    if st["checkpoint"] is None:
        return "No mined checkpoint yet.", gr.update(value="Accept 0 agreed", interactive=False)
    f = filters_of(st)
    n = review.batch_count(ctx.run, st["checkpoint"], float(min_score), classes=f.classes)
    scope = ", ".join(ctx.names[c] for c in f.classes) if f.classes else "all classes"
    text = (f"**{n}** pending candidates agreed by both views with score ≥ {float(min_score):.2f} "
            f"at checkpoint {st['checkpoint']} ({scope}).")
    if n and n_mined(ctx, st["checkpoint"]) <= LIVE_PREVIEW_MAX:
        cal, _, _ = review.calibrate(ctx.run, st["checkpoint"])
        if cal is not None:
            agreed = review.pending_objects(ctx.run, st["checkpoint"], review.Filters(
                classes=f.classes, views=("both",), score_min=float(min_score)))
            _, right = batch_precision(cal, [o[4] for o in agreed], float(min_score))
            if right is not None:
                text += (f" Expected right: **~{right:.0%}** (your {cal.n_decisions} decisions "
                         f"at this checkpoint calibrate the score).")
    return text, gr.update(value=f"Accept {n} agreed ≥ {float(min_score):.2f}", interactive=n > 0)


# Above this many candidates at a checkpoint, decisions do not refresh the batch
# preview (it re-applies the decisions to the run's cached grouping and filters every
# item: ~0.2 us a candidate, ~40 ms at 200,000 on one CPU core, too much for a 100 ms
# accept); the slider and the filters still do, and the batch button refuses a count
# that changed since it was shown.
LIVE_PREVIEW_MAX = 20_000


def batch_refresh(ctx, st, min_score):
    ck = st["checkpoint"]
    if ck is not None and n_mined(ctx, ck) > LIVE_PREVIEW_MAX:
        return gr.skip(), gr.skip()
    return batch_preview(ctx, st, min_score)


def progress_md(ctx, st) -> str:
    if st["checkpoint"] is None:
        return "No mined checkpoint yet."
    items = review.all_items(ctx.run, st["checkpoint"])     # one walk for both tables
    p = review.progress(ctx.run, st["checkpoint"], items)
    pct = 100.0 * p["reviewed"] / p["total"] if p["total"] else 0.0
    lines = [f"### Checkpoint {p['checkpoint']}: reviewed {p['reviewed']} / {p['total']} "
             f"candidates ({pct:.0f}%)",
             f"**{p['accepted']}** accepted · **{p['rejected']}** rejected · "
             f"**{p['pending']}** pending · {p['decisions']} decisions recorded in the run",
             "", "| class | total | reviewed | accepted | rejected | pending |",
             "|---|---:|---:|---:|---:|---:|"]
    est = review.remaining_estimate(ctx.run, st["checkpoint"], items)
    if est is not None:
        lines[-2] += " missing left (estimate) |"
        lines[-1] += "---:|"
    for r in p["per_class"]:
        lines.append(f"| {r['name']} | {r['total']} | {r['reviewed']} | {r['accepted']} | "
                     f"{r['rejected']} | {r['pending']} |"
                     + (f" {est.per_class.get(r['category_id'], 0.0):.0f} |" if est else ""))
    lines += ["", f"**Missing objects left:** {est.line()}." if est else
              f"**Missing objects left:** {NO_ESTIMATE}."]
    lines += ["", "<small>A candidate here is one object: the boxes both views mined for it, "
                  "of any class, count once. Decisions made at other checkpoints count when "
                  "they cover the same object (IoU ≥ 0.5, whatever the class).</small>"]
    return "\n".join(lines)


def fast_page(ctx, st):
    """(state, gallery, marked checkbox group, info) for the fast mode's current page."""
    if st["checkpoint"] is None:
        st["fast"] = []
        return st, [], gr.update(choices=[], value=[]), "No mined checkpoint yet."
    f = filters_of(st)
    items = review.queue_items(ctx.run, st["checkpoint"], f)
    page = items[:FAST_PAGE]
    st["fast"] = [it.id for it in page]
    tiles = review.crops(ctx.run, page)
    gallery = [(img, f"{k}. {cap}") for k, (img, cap) in enumerate(tiles, 1)]
    choices = [(f"{k}", it.id) for k, it in enumerate(page, 1)]
    states = "/".join(f.states) if f.states else "any state"
    info = (f"Showing **{len(page)}** of **{len(items)}** {states} candidates at checkpoint "
            f"{st['checkpoint']}, by {f.sort} (the queue filters apply). Click a crop to mark "
            f"or unmark it, then decide the page.")
    return st, gallery, gr.update(choices=choices, value=[]), info


def plots_for(ctx):
    data = review.plot_data(ctx.run)
    figs = review.plot_figures(data)
    note = data.get("quality_note") or ""
    return figs["losses"], figs["mined"], figs["quality"], (f"ℹ️ {note}" if note else "")


def checkpoint_choices(ctx):
    from comining import store

    rounds = store.checkpoint_rounds(ctx.run.conn)
    return [(f"iteration {it}" + (f" · round {rounds[it]}" if rounds.get(it) else ""), it)
            for it in ctx.run.checkpoints()]

