"""The review app: Gradio Blocks over `comining.review` (layout helpers, then all the
event wiring in `_wire`). No review logic lives here.

Images reach the browser as arrays that Gradio encodes into its own cache (JPEG, a few
ms for 1000x800; PNG would take ~0.4 s); the app names no file path of its own except
the run's `exports/` folder, which the export button writes to.
"""

from __future__ import annotations

import os

for _key, _value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"),
                     ("HF_HUB_DISABLE_TELEMETRY", "1"), ("GRADIO_SSR_MODE", "False")):
    os.environ.setdefault(_key, _value)

import logging
import traceback
import uuid
from datetime import datetime
from functools import wraps
from types import SimpleNamespace

import gradio as gr
import numpy as np
from gradio_image_annotation import image_annotator

from comining import export, review
from comining.cli.review import parse_auth
from comining.errors import CominingError, InputError

log = logging.getLogger("comining.review")

LAYER_LABELS = [("annotated (dimmed)", "annotated"), ("original view", "original"),
                ("augmented view", "augmented"), ("both views", "both"),
                ("decided", "decided")]
VIEW_CHOICES = [("original view only", "original"), ("augmented view only", "augmented"),
                ("both views (agreed)", "both")]
STATE_CHOICES = [("pending", "pending"), ("accepted", "accepted"), ("rejected", "rejected")]
FAST_PAGE = 24
HEX = {k: "#%02x%02x%02x" % v for k, v in review.COLOURS.items()}

SHORTCUTS = """\
**Keyboard** (not while typing in a field):
<kbd>A</kbd> accept · <kbd>R</kbd> reject · <kbd>N</kbd>/<kbd>→</kbd> next image ·
<kbd>P</kbd>/<kbd>←</kbd> previous image · <kbd>U</kbd>/<kbd>Ctrl+Z</kbd> undo ·
<kbd>J</kbd>/<kbd>K</kbd> next/previous candidate. Click a box to select it."""

HOTKEYS = """
<script>
(() => {
  const keys = {a: "accept-btn", r: "reject-btn", n: "next-btn", p: "prev-btn", u: "undo-btn",
                j: "next-cand-btn", k: "prev-cand-btn", arrowright: "next-btn",
                arrowleft: "prev-btn"};
  document.addEventListener("keydown", (e) => {
    if (e.defaultPrevented || e.altKey || e.metaKey || e.repeat) return;
    const t = e.target || {};
    const tag = (t.tagName || "").toLowerCase();
    const type = (t.type || "").toLowerCase();
    if (t.isContentEditable || tag === "textarea" || tag === "select") return;
    if (tag === "input" && !["radio", "checkbox", "button", "submit"].includes(type)) return;
    let key = (e.key || "").toLowerCase();
    if (e.ctrlKey) { if (key !== "z") return; key = "u"; }
    if (key.startsWith("arrow") && tag === "input") return;
    const id = keys[key];
    if (!id) return;
    const accept = document.getElementById("accept-btn");
    if (!accept || accept.offsetParent === null) return;   // the Review tab is not shown
    const el = document.getElementById(id);
    if (!el || el.disabled) return;
    e.preventDefault();
    el.click();
  });
})();
</script>
"""

CSS = """
.hotkey-hidden { display: none !important; }
#review-image button, #review-image .image-frame { width: 100%; }
#review-image .image-frame img { width: 100%; height: auto; max-height: 76vh; object-fit: contain; }
.legend span { display: inline-block; padding: 0 6px; margin: 2px 4px 2px 0;
               border-left: 14px solid; font-size: 0.85em; }
#status { min-height: 1.5em; }
#candidates { max-height: 42vh; overflow-y: auto; }
#candidates label { font-family: ui-monospace, monospace; font-size: 0.85em; }
kbd { border: 1px solid #999; border-radius: 3px; padding: 0 4px; font-size: 0.85em; }
"""


def _theme():
    return gr.themes.Default(primary_hue="green", secondary_hue="slate",
                             font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


# ----------------------------------------------------------------------------- helpers


def _guard(fn):
    """Turn any failure into a one-line message in the page (never a stack trace)."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except CominingError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:  # a bug: log it for the operator, one line for the user
            log.error("review handler %s failed:\n%s", fn.__name__, traceback.format_exc())
            raise gr.Error(f"unexpected error: {type(exc).__name__}: {exc}",
                           print_exception=False) from None
    return wrapper


def _legend() -> str:
    parts = [("annotated", "annotated (input)"), ("original", "original view"),
             ("augmented", "augmented view"), ("both", "both views"),
             ("accepted", "accepted"), ("rejected", "rejected (dashed)")]
    return '<div class="legend">' + "".join(
        f'<span style="border-color:{HEX[k]}">{label}</span>' for k, label in parts) + "</div>"


class Ctx:
    """What the handlers share: the run and name <-> id maps."""

    def __init__(self, run: review.Run):
        self.run = run

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


def _new_state() -> dict:
    return {"client": None, "checkpoint": None, "queue": [], "pos": 0, "image_id": None,
            "selected": None, "filters": {}, "fast": [], "edit": None}


def _filters(st) -> review.Filters:
    f = st.get("filters") or {}
    return review.Filters(classes=tuple(f.get("classes", ())), views=tuple(f.get("views", ())),
                          score_min=float(f.get("score_min", 0.0)),
                          score_max=float(f.get("score_max", 1.0)),
                          states=tuple(f.get("states", ("pending",))),
                          include_rejected=bool(f.get("include_rejected", False)),
                          sort=f.get("sort", "score"))


def _rebuild_queue(ctx: Ctx, st: dict) -> None:
    """Recompute the session's image queue; stay on the current image when it is in it."""
    ck = st["checkpoint"]
    st["queue"] = [] if ck is None else [e.image_id for e in review.queue(ctx.run, ck, _filters(st))]
    if st["image_id"] in st["queue"]:
        st["pos"] = st["queue"].index(st["image_id"])
    else:
        st["pos"] = 0
        st["image_id"] = st["queue"][0] if st["queue"] else None
        st["selected"] = None


def _items(ctx, st):
    if st["checkpoint"] is None or st["image_id"] is None:
        return []
    return review.image_items(ctx.run, st["checkpoint"], st["image_id"],
                              include_rejected=_filters(st).include_rejected)


def _resolve_selected(items, selected):
    """The item id for a selection that may name one of its member candidates."""
    if selected is None:
        return None
    for it in items:
        if selected == it.id or selected in it.member_ids:
            return it.id
    return None


def _next_pending(items, after_id, filters: review.Filters | None = None):
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


def _message_image(text: str, width: int = 960, height: int = 540) -> np.ndarray:
    import cv2
    img = np.full((height, width, 3), 245, np.uint8)
    y = height // 2 - 20 * (text.count("\n"))
    for line in text.split("\n"):
        (tw, _), _ = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 0.8, 2)
        cv2.putText(img, line, ((width - tw) // 2, y), cv2.FONT_HERSHEY_SIMPLEX, 0.8,
                    (90, 90, 90), 2, cv2.LINE_AA)
        y += 40
    return img


def _n_mined(ctx, checkpoint) -> int:
    row = ctx.run.conn.execute("SELECT n_original + n_augmented FROM checkpoints WHERE iteration = ?",
                               (checkpoint,)).fetchone()
    return int(row[0] or 0) if row else 0


def _counts_line(ctx) -> str:
    c = review.decision_counts(ctx.run)
    return f"Decisions in this run: **{c['accepted']}** accepted · **{c['rejected']}** rejected"


def _view(ctx: Ctx, st: dict, layers, labels_on: bool, note: str | None = None, items=None):
    """(state, image, info, candidate list, class, counts) for the current image
    (`items`: the image's items when the caller has just computed them)."""
    run = ctx.run
    counts = _counts_line(ctx)
    if st["checkpoint"] is None:
        msg = ("No mined checkpoint in this run yet: the training engine mines candidates at "
               "every checkpoint. Press ↻ to look again.")
        return (st, _message_image("No candidates yet"), f"ℹ️ {msg}",
                gr.update(choices=[], value=None), gr.update(value=None), counts)
    if st["image_id"] is None:
        if _n_mined(ctx, st["checkpoint"]) == 0:
            msg = (f"Checkpoint {st['checkpoint']} mined no boxes: early in training the scores "
                   f"stay below the mining threshold. Pick a later checkpoint (↻ looks for new "
                   f"ones), or re-mine with `comining mine --score-thresh`.")
            title = "No candidates yet"
        else:
            msg = (f"Nothing in the queue at checkpoint {st['checkpoint']} for these filters "
                   f"(all reviewed, or the filters exclude everything).")
            title = "Queue empty"
        return (st, _message_image(title), f"ℹ️ {msg}",
                gr.update(choices=[], value=None), gr.update(value=None), counts)
    if items is None:
        items = _items(ctx, st)
    sel = _resolve_selected(items, st["selected"])
    if sel is None and items:
        sel = _next_pending(items, None, _filters(st)) or items[0].id
    st["selected"] = sel
    image, problem = run.load_image(st["image_id"])
    drawn = review.render(image, items, names=ctx.names, annotations=run.annotations(st["image_id"]),
                          layers=layers or (), selected=sel, labels=labels_on)
    file_name, w, h = run.images[st["image_id"]]
    pending = sum(1 for it in items if it.state == "pending")
    info = (f"**Image {st['pos'] + 1} / {len(st['queue'])}** · `{file_name}` · {w}×{h} · "
            f"checkpoint {st['checkpoint']} · **{pending}** pending of {len(items)} candidates")
    if problem:
        info += f"\n\n⚠️ **Image not shown:** {problem}. You can still decide on its boxes."
    if note:
        info += f"\n\n{note}"
    elif items and pending == 0:
        info += "\n\n✅ Every candidate on this image is decided: press **N** for the next image."
    choices = [(review.describe(n, it, ctx.names), it.id) for n, it in enumerate(items, 1)]
    current = next((it for it in items if it.id == sel), None)
    cls = ctx.names.get(current.shown_category) if current else None
    return (st, drawn, info, gr.update(choices=choices, value=sel),
            gr.update(choices=ctx.class_names(), value=cls), counts)


def _batch_preview(ctx, st, min_score):
    if st["checkpoint"] is None:
        return "No mined checkpoint yet.", gr.update(value="Accept 0 agreed", interactive=False)
    f = _filters(st)
    n = len(review.batch_candidates(ctx.run, st["checkpoint"], float(min_score), classes=f.classes))
    scope = ", ".join(ctx.names[c] for c in f.classes) if f.classes else "all classes"
    text = (f"**{n}** pending candidates agreed by both views with score ≥ {float(min_score):.2f} "
            f"at checkpoint {st['checkpoint']} ({scope}).")
    return text, gr.update(value=f"Accept {n} agreed ≥ {float(min_score):.2f}", interactive=n > 0)


# Above this many candidates at a checkpoint, decisions do not refresh the batch
# preview (it re-applies the decisions to the run's cached grouping and filters every
# item: ~0.2 us a candidate, ~40 ms at 200,000 on one CPU core, too much for a 100 ms
# accept); the slider and the filters still do, and the batch button refuses a count
# that changed since it was shown.
LIVE_PREVIEW_MAX = 20_000


def _batch_refresh(ctx, st, min_score):
    ck = st["checkpoint"]
    if ck is not None:
        row = ctx.run.conn.execute("SELECT n_original + n_augmented FROM checkpoints "
                                   "WHERE iteration = ?", (ck,)).fetchone()
        if row and (row[0] or 0) > LIVE_PREVIEW_MAX:
            return gr.skip(), gr.skip()
    return _batch_preview(ctx, st, min_score)


def _progress_md(ctx, st) -> str:
    if st["checkpoint"] is None:
        return "No mined checkpoint yet."
    p = review.progress(ctx.run, st["checkpoint"])
    pct = 100.0 * p["reviewed"] / p["total"] if p["total"] else 0.0
    lines = [f"### Checkpoint {p['checkpoint']}: reviewed {p['reviewed']} / {p['total']} "
             f"candidates ({pct:.0f}%)",
             f"**{p['accepted']}** accepted · **{p['rejected']}** rejected · "
             f"**{p['pending']}** pending · {p['decisions']} decisions recorded in the run",
             "", "| class | total | reviewed | accepted | rejected | pending |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in p["per_class"]:
        lines.append(f"| {r['name']} | {r['total']} | {r['reviewed']} | {r['accepted']} | "
                     f"{r['rejected']} | {r['pending']} |")
    lines += ["", "<small>A candidate here is one object: the boxes both views mined for it "
                  "count once. Decisions made at other checkpoints count when they cover the "
                  "same object (same class, IoU ≥ 0.5).</small>"]
    return "\n".join(lines)


def _fast_page(ctx, st):
    """(state, gallery, marked checkbox group, info) for the fast mode's current page."""
    if st["checkpoint"] is None:
        st["fast"] = []
        return st, [], gr.update(choices=[], value=[]), "No mined checkpoint yet."
    f = _filters(st)
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


def _plots(ctx):
    data = review.plot_data(ctx.run)
    figs = review.plot_figures(data)
    note = data.get("quality_note") or ""
    return figs["losses"], figs["mined"], figs["quality"], (f"ℹ️ {note}" if note else "")


def _checkpoint_choices(ctx):
    return [(f"iteration {it}", it) for it in ctx.run.checkpoints()]


# ----------------------------------------------------------------------------- layout


def build(run: review.Run, *, private: bool = False) -> gr.Blocks:
    """The Blocks app for one opened run. `private` (the app asks for a login): the page
    title does not name the run, and the class widgets get their choices only when a
    signed-in page loads (Gradio serves the page, with an API description listing every
    dropdown's choices, before the login)."""
    ctx = Ctx(run)
    names = ctx.class_names()
    title = "comining review" if private else f"comining review · {run.name}"
    shown = [] if private else names   # class choices built into the page
    with gr.Blocks(title=title, delete_cache=(1800, 3600)) as demo:
        ui = SimpleNamespace()
        ui.state = gr.State(_new_state())
        gr.Markdown(f"## comining review · `{run.name}`")
        ui.status = gr.Markdown("", elem_id="status")
        with gr.Tabs(elem_id="tabs") as ui.tabs:
            with gr.Tab("Review", id="review", elem_id="tab-review"):
                _review_tab(ui, names, shown)
            with gr.Tab("Fast mode", id="fast", elem_id="tab-fast") as ui.fast_tab:
                _fast_tab(ui)
            with gr.Tab("Progress", id="progress", elem_id="tab-progress") as ui.progress_tab:
                ui.progress_md = gr.Markdown("", elem_id="progress")
                ui.progress_refresh = gr.Button("↻ Refresh", size="sm")
            with gr.Tab("Plots", id="plots", elem_id="tab-plots") as ui.plots_tab:
                ui.plot_note = gr.Markdown("")
                with gr.Row():
                    ui.plot_losses = gr.Plot(label="training losses", elem_id="plot-losses")
                    ui.plot_mined = gr.Plot(label="mined boxes", elem_id="plot-mined")
                ui.plot_quality = gr.Plot(label="mining precision / recall", elem_id="plot-quality")
            with gr.Tab("Export", id="export", elem_id="tab-export"):
                _export_tab(ui, ctx)
        _wire(ui, ctx, demo)
    return demo


def _review_tab(ui, names, shown):
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=480):
            ui.image = gr.Image(type="numpy", format="jpeg", interactive=False, show_label=False,
                                elem_id="review-image", buttons=["fullscreen"])
            with gr.Row():
                ui.layers = gr.CheckboxGroup(LAYER_LABELS, value=[v for _, v in LAYER_LABELS],
                                             label="Layers", elem_id="layers", scale=4)
                ui.labels = gr.Checkbox(value=True, label="box labels", scale=1, min_width=100)
            gr.HTML(_legend())
        with gr.Column(scale=2, min_width=360):
            with gr.Row():
                ui.checkpoint = gr.Dropdown(choices=[], label="Checkpoint (how mining evolved)",
                                            elem_id="checkpoint", scale=4, interactive=True)
                ui.reload = gr.Button("↻", size="sm", scale=0, min_width=40, elem_id="reload-btn")
            ui.info = gr.Markdown("", elem_id="image-info")
            with gr.Row():
                ui.prev = gr.Button("◀ Previous image (P)", elem_id="prev-btn", size="sm")
                ui.next = gr.Button("Next image (N) ▶", elem_id="next-btn", size="sm")
            ui.candidates = gr.Radio(choices=[], label="Candidates on this image (best first)",
                                     elem_id="candidates")
            ui.cls = gr.Dropdown(choices=shown, label="Class (Accept records this class)",
                                 elem_id="class-select", interactive=True)
            with gr.Row():
                ui.accept = gr.Button("✓ Accept (A)", variant="primary", elem_id="accept-btn")
                ui.reject = gr.Button("✗ Reject (R)", variant="stop", elem_id="reject-btn")
                ui.undo = gr.Button("↶ Undo (U)", elem_id="undo-btn")
            ui.next_cand = gr.Button("next candidate", elem_id="next-cand-btn",
                                     elem_classes="hotkey-hidden")
            ui.prev_cand = gr.Button("previous candidate", elem_id="prev-cand-btn",
                                     elem_classes="hotkey-hidden")
            ui.counts = gr.Markdown("", elem_id="counts")
            gr.Markdown(SHORTCUTS)
            with gr.Accordion("Adjust the box / class, then accept", open=False, elem_id="edit-acc"):
                ui.edit_load = gr.Button("Load the selected candidate", size="sm", elem_id="edit-load-btn")
                ui.editor = image_annotator(
                    label_list=names,
                    label_colors=[review.COLOURS["accepted"]] * len(names),
                    single_box=True, boxes_alpha=0.15, sources=[], show_clear_button=False,
                    show_remove_button=False,
                    show_download_button=False, enable_keyboard_shortcuts=False, box_min_size=4,
                    handle_size=6, height=380, label="drag the box or its corners; pick the class "
                    "by double-clicking the box", elem_id="editor")
                ui.edit_save = gr.Button("Accept the adjusted box", variant="primary", size="sm",
                                         elem_id="edit-save-btn")
            with gr.Accordion("Queue: sort and filter", open=False, elem_id="filters-acc"):
                ui.sort = gr.Radio([("score", "score"), ("agreement of the two views", "agreement")],
                                   value="score", label="Sort")
                ui.f_classes = gr.Dropdown(shown, multiselect=True, value=[],
                                           label="Classes (none = all)")
                ui.f_views = gr.CheckboxGroup(VIEW_CHOICES, value=[], label="Found by (none = any)")
                with gr.Row():
                    ui.f_min = gr.Slider(0, 1, value=0.0, step=0.01, label="min score")
                    ui.f_max = gr.Slider(0, 1, value=1.0, step=0.01, label="max score")
                ui.f_states = gr.CheckboxGroup(STATE_CHOICES, value=["pending"],
                                               label="Review state (none = any)")
                ui.f_rejected = gr.Checkbox(False, label="propose again boxes rejected at another "
                                                         "checkpoint")
                ui.f_apply = gr.Button("Apply filters", size="sm", elem_id="filters-apply")
            with gr.Accordion("Batch accept agreed candidates", open=True, elem_id="batch-acc"):
                ui.batch_score = gr.Slider(0, 1, value=0.8, step=0.01, label="minimum score",
                                           elem_id="batch-score")
                ui.batch_preview = gr.Markdown("", elem_id="batch-preview")
                ui.batch_btn = gr.Button("Accept 0 agreed", interactive=False, elem_id="batch-btn",
                                         size="sm")


def _fast_tab(ui):
    ui.fast_info = gr.Markdown("")
    ui.fast_gallery = gr.Gallery(columns=8, height="auto", buttons=[], allow_preview=False, format="jpeg",
                                 object_fit="contain", show_label=False, elem_id="fast-gallery")
    ui.fast_marked = gr.CheckboxGroup(choices=[], value=[], label="Marked crops",
                                      elem_id="fast-marked")
    with gr.Row():
        ui.fast_accept_rest = gr.Button("Reject marked, accept the rest", variant="primary",
                                        elem_id="fast-accept-rest")
        ui.fast_reject_rest = gr.Button("Accept marked, reject the rest", elem_id="fast-reject-rest")
        ui.fast_accept = gr.Button("Accept marked only", elem_id="fast-accept")
        ui.fast_reject = gr.Button("Reject marked only", variant="stop", elem_id="fast-reject")
        ui.fast_refresh = gr.Button("↻ Reload", elem_id="fast-refresh")


def _export_tab(ui, ctx):
    gr.Markdown(
        "Writes the run's input annotation file plus the accepted boxes (new ids, provenance "
        "under `comining`) to `exports/` in the run folder, with a `.rejected.json` sidecar. "
        "Same as `comining export`.")
    ui.x_accept = gr.Radio([("reviewed: human decisions only", "reviewed"),
                            ("agreed: + undecided agreed candidates ≥ min score", "agreed"),
                            ("all: + every undecided candidate ≥ min score", "all")],
                           value="reviewed", label="Accept", elem_id="export-accept")
    with gr.Row():
        ui.x_score = gr.Slider(0, 1, value=0.0, step=0.01, label="min score (automatic accepts)")
        ui.x_checkpoint = gr.Dropdown(choices=[("last", "last")], value="last",
                                      label="checkpoint (automatic accepts)")
    ui.x_btn = gr.Button("Export enlarged annotations", variant="primary", elem_id="export-btn")
    ui.x_result = gr.Markdown("", elem_id="export-result")
    ui.x_file = gr.File(label="Download", interactive=False, elem_id="export-file")


# ----------------------------------------------------------------------------- wiring


def _wire(ui, ctx: Ctx, demo: gr.Blocks) -> None:
    run = ctx.run
    VIEW = [ui.state, ui.image, ui.info, ui.candidates, ui.cls, ui.counts]
    SHOW = [ui.layers, ui.labels]
    BATCH = [ui.batch_preview, ui.batch_btn]

    @_guard
    def on_load(st, min_score, request: gr.Request):
        st = dict(_new_state())
        user = getattr(request, "username", None) or "web"
        st["client"] = f"{user}-{uuid.uuid4().hex[:8]}"
        run.refresh()
        cks = run.checkpoints()
        st["checkpoint"] = cks[-1] if cks else None
        _rebuild_queue(ctx, st)
        choices = _checkpoint_choices(ctx)
        status = "" if cks else ("ℹ️ **No candidates yet:** this run has no mined checkpoint. "
                                 "Come back (↻) when training has reached one.")
        if cks and not any(_n_mined(ctx, k) for k in cks):
            status = ("ℹ️ **No candidates yet:** no checkpoint of this run has mined a box so far "
                      "(scores stay below the threshold early in training).")
        if run.annotations_problem:
            status += f"\n\n⚠️ input annotations not shown: {run.annotations_problem}"
        return (*_view(ctx, st, [v for _, v in LAYER_LABELS], True),
                gr.update(choices=choices, value=st["checkpoint"]),
                gr.update(choices=[("last", "last")] + choices, value="last"),
                status, *_batch_preview(ctx, st, min_score), gr.update(choices=ctx.class_names()))

    demo.load(on_load, [ui.state, ui.batch_score],
              VIEW + [ui.checkpoint, ui.x_checkpoint, ui.status] + BATCH + [ui.f_classes],
              api_name="load")

    @_guard
    def on_reload(st, layers, labels_on, min_score):
        run.refresh()
        cks = run.checkpoints()
        if st["checkpoint"] not in cks:
            st["checkpoint"] = cks[-1] if cks else None
        _rebuild_queue(ctx, st)
        choices = _checkpoint_choices(ctx)
        return (*_view(ctx, st, layers, labels_on),
                gr.update(choices=choices, value=st["checkpoint"]),
                gr.update(choices=[("last", "last")] + choices),
                "" if cks else "ℹ️ **No candidates yet.**", *_batch_preview(ctx, st, min_score))

    ui.reload.click(on_reload, [ui.state] + SHOW + [ui.batch_score],
                    VIEW + [ui.checkpoint, ui.x_checkpoint, ui.status] + BATCH, api_name="reload")

    @_guard
    def on_checkpoint(st, ck, layers, labels_on, min_score):
        st["checkpoint"] = int(ck) if ck is not None else None
        _rebuild_queue(ctx, st)
        return (*_view(ctx, st, layers, labels_on), *_batch_preview(ctx, st, min_score))

    ui.checkpoint.input(on_checkpoint, [ui.state, ui.checkpoint] + SHOW + [ui.batch_score],
                        VIEW + BATCH, api_name="checkpoint")

    @_guard
    def on_show(st, layers, labels_on):
        return _view(ctx, st, layers, labels_on)

    ui.layers.input(on_show, [ui.state] + SHOW, VIEW, api_name=False)
    ui.labels.input(on_show, [ui.state] + SHOW, VIEW, api_name=False)

    def step_image(delta):
        @_guard
        def handler(st, layers, labels_on):
            note = None
            if st["queue"]:
                pos = st["pos"] + delta
                if 0 <= pos < len(st["queue"]):
                    st["pos"] = pos
                    st["image_id"] = st["queue"][pos]
                    st["selected"] = None
                else:
                    note = "⏹ End of the queue." if delta > 0 else "⏮ Start of the queue."
            return _view(ctx, st, layers, labels_on, note)
        return handler

    ui.next.click(step_image(+1), [ui.state] + SHOW, VIEW, api_name="next_image")
    ui.prev.click(step_image(-1), [ui.state] + SHOW, VIEW, api_name="previous_image")

    def step_candidate(delta):
        @_guard
        def handler(st, layers, labels_on):
            items = _items(ctx, st)
            if items:
                ids = [it.id for it in items]
                cur = _resolve_selected(items, st["selected"])
                k = ids.index(cur) if cur in ids else -delta
                st["selected"] = ids[(k + delta) % len(ids)]
            return _view(ctx, st, layers, labels_on, items=items)
        return handler

    ui.next_cand.click(step_candidate(+1), [ui.state] + SHOW, VIEW, api_name=False)
    ui.prev_cand.click(step_candidate(-1), [ui.state] + SHOW, VIEW, api_name=False)

    @_guard
    def on_pick(st, cid, layers, labels_on):
        st["selected"] = int(cid) if cid is not None else None
        return _view(ctx, st, layers, labels_on)

    ui.candidates.input(on_pick, [ui.state, ui.candidates] + SHOW, VIEW, api_name="select")

    @_guard
    def on_click_image(st, layers, labels_on, evt: gr.SelectData):
        x, y = evt.index[:2]
        items = _items(ctx, st)
        hit = review.item_at(items, x, y, layers=layers or ())
        if hit is not None:
            st["selected"] = hit.id
        return _view(ctx, st, layers, labels_on, items=items)

    ui.image.select(on_click_image, [ui.state] + SHOW, VIEW, api_name=False)

    def decide(decision):
        @_guard
        def handler(st, cls_name, layers, labels_on, min_score):
            items = _items(ctx, st)
            cur = _resolve_selected(items, st["selected"])
            item = next((it for it in items if it.id == cur), None)
            if item is None:
                raise gr.Error("No candidate selected.", print_exception=False)
            cat = ctx.cat_id(cls_name) if decision == "accepted" else None
            review.decide(run, item.id, decision, client=st["client"],
                          category_id=None if cat == item.category_id else cat)
            items = _items(ctx, st)
            st["selected"] = _next_pending(items, item.id, _filters(st)) or item.id
            # only a decision on an agreed item changes the batch count
            batch = _batch_refresh(ctx, st, min_score) if item.view == "both" else (gr.skip(), gr.skip())
            return (*_view(ctx, st, layers, labels_on, items=items), *batch)
        return handler

    ui.accept.click(decide("accepted"), [ui.state, ui.cls] + SHOW + [ui.batch_score], VIEW + BATCH,
                    api_name="accept")
    ui.reject.click(decide("rejected"), [ui.state, ui.cls] + SHOW + [ui.batch_score], VIEW + BATCH,
                    api_name="reject")

    @_guard
    def on_undo(st, layers, labels_on, min_score):
        undone = review.undo(run, st["client"])
        if not undone:
            return (*_view(ctx, st, layers, labels_on, "Nothing of yours to undo."),
                    gr.skip(), gr.skip())
        d = undone[-1]
        if d.image_id != st["image_id"]:
            st["image_id"] = d.image_id
            if d.image_id in st["queue"]:
                st["pos"] = st["queue"].index(d.image_id)
            else:
                st["queue"].insert(st["pos"], d.image_id)
        st["selected"] = d.candidate_id
        what = f"{len(undone)} decisions" if len(undone) > 1 else f"the {d.decision} decision"
        return (*_view(ctx, st, layers, labels_on, f"↶ Undid {what}."),
                *_batch_refresh(ctx, st, min_score))

    ui.undo.click(on_undo, [ui.state] + SHOW + [ui.batch_score], VIEW + BATCH, api_name="undo")

    @_guard
    def on_filters(st, sort, classes, views, lo, hi, states, inc_rej, layers, labels_on, min_score):
        if float(lo) > float(hi):
            raise InputError(None, f"min score {lo} is above max score {hi}")
        st["filters"] = {"sort": sort, "classes": [ctx.cat_id(c) for c in classes or []],
                         "views": list(views or []), "score_min": float(lo), "score_max": float(hi),
                         "states": list(states or []), "include_rejected": bool(inc_rej)}
        st["selected"] = None
        st["image_id"] = None
        _rebuild_queue(ctx, st)
        return (*_view(ctx, st, layers, labels_on, f"Queue: {len(st['queue'])} images."),
                *_batch_preview(ctx, st, min_score))

    ui.f_apply.click(on_filters, [ui.state, ui.sort, ui.f_classes, ui.f_views, ui.f_min, ui.f_max,
                                  ui.f_states, ui.f_rejected] + SHOW + [ui.batch_score],
                     VIEW + BATCH, api_name="filters")

    @_guard
    def on_batch_preview(st, min_score):
        return _batch_preview(ctx, st, min_score)

    ui.batch_score.release(on_batch_preview, [ui.state, ui.batch_score], BATCH,
                           api_name="batch_preview")
    ui.batch_score.input(on_batch_preview, [ui.state, ui.batch_score], BATCH,
                         api_name=False, trigger_mode="always_last", show_progress="hidden")

    @_guard
    def on_batch(st, min_score, button_label, layers, labels_on):
        expected = None
        try:
            expected = int(str(button_label).split()[1])
        except (IndexError, ValueError):
            pass
        if st["checkpoint"] is None:
            raise InputError(None, "no mined checkpoint yet")
        try:
            n = review.batch_accept(run, st["checkpoint"], float(min_score), client=st["client"],
                                    classes=_filters(st).classes, expected=expected)
        except review.CountChanged as exc:
            gr.Warning(str(exc))
            return (*_view(ctx, st, layers, labels_on), *_batch_preview(ctx, st, min_score))
        gr.Info(f"Accepted {n} agreed candidates (one Undo reverts them all).")
        return (*_view(ctx, st, layers, labels_on, f"✓ Batch-accepted {n} candidates."),
                *_batch_preview(ctx, st, min_score))

    ui.batch_btn.click(on_batch, [ui.state, ui.batch_score, ui.batch_btn] + SHOW, VIEW + BATCH,
                       api_name="batch_accept")

    # -- edit a box with gradio_image_annotation
    @_guard
    def on_edit_load(st):
        items = _items(ctx, st)
        cur = _resolve_selected(items, st["selected"])
        item = next((it for it in items if it.id == cur), None)
        if item is None:
            raise gr.Error("No candidate selected.", print_exception=False)
        image, _ = run.load_image(item.image_id)
        x, y, w, h = item.shown_box
        ih, iw = image.shape[:2]
        pad_x, pad_y = max(w, 80), max(h, 80)
        x0, y0 = int(max(0, x - pad_x)), int(max(0, y - pad_y))
        x1, y1 = int(min(iw, x + w + pad_x)), int(min(ih, y + h + pad_y))
        st["edit"] = {"candidate": item.id, "x0": x0, "y0": y0}
        box = {"xmin": int(round(x - x0)), "ymin": int(round(y - y0)),
               "xmax": int(round(x + w - x0)), "ymax": int(round(y + h - y0)),
               "label": ctx.names.get(item.shown_category, ""),
               "color": review.COLOURS["accepted"]}
        return st, {"image": np.ascontiguousarray(image[y0:y1, x0:x1]), "boxes": [box]}

    ui.edit_load.click(on_edit_load, [ui.state], [ui.state, ui.editor], api_name=False)

    @_guard
    def on_edit_save(st, value, cls_name, layers, labels_on, min_score):
        edit = st.get("edit")
        if not edit or not value or not value.get("boxes"):
            raise gr.Error("Load a candidate into the editor first.", print_exception=False)
        boxes = value["boxes"]
        b = boxes[0]   # single_box: one box (the order of several would not be stable)
        x0, y0 = edit["x0"], edit["y0"]
        box = (b["xmin"] + x0, b["ymin"] + y0, b["xmax"] - b["xmin"], b["ymax"] - b["ymin"])
        label = b.get("label") or cls_name
        cat = ctx.cat_id(label) if label in ctx.ids else ctx.cat_id(cls_name)
        review.decide(run, edit["candidate"], "accepted", client=st["client"], category_id=cat,
                      box=box)
        st["edit"] = None
        items = _items(ctx, st)
        st["selected"] = _next_pending(items, edit["candidate"], _filters(st)) or edit["candidate"]
        return (*_view(ctx, st, layers, labels_on, "✓ Accepted the adjusted box.", items=items),
                *_batch_refresh(ctx, st, min_score))

    ui.edit_save.click(on_edit_save, [ui.state, ui.editor, ui.cls] + SHOW + [ui.batch_score],
                       VIEW + BATCH, api_name=False)

    # -- fast mode
    FAST = [ui.state, ui.fast_gallery, ui.fast_marked, ui.fast_info]

    @_guard
    def on_fast(st):
        return _fast_page(ctx, st)

    ui.fast_tab.select(on_fast, [ui.state], FAST, api_name=False)
    ui.fast_refresh.click(on_fast, [ui.state], FAST, api_name="fast_page")

    @_guard
    def on_fast_mark(st, marked, evt: gr.SelectData):
        k = evt.index if isinstance(evt.index, int) else evt.index[0]
        if 0 <= k < len(st["fast"]):
            cid = st["fast"][k]
            marked = [m for m in (marked or []) if m != cid] if cid in (marked or []) \
                else list(marked or []) + [cid]
        return marked

    ui.fast_gallery.select(on_fast_mark, [ui.state, ui.fast_marked], [ui.fast_marked], api_name=False)

    def fast_decide(marked_as, rest_as):
        @_guard
        def handler(st, marked):
            marked = set(int(m) for m in marked or [])
            choices = []
            for cid in st["fast"]:
                d = marked_as if cid in marked else rest_as
                if d:
                    choices.append((cid, d))
            if not choices:
                raise gr.Error("Nothing marked.", print_exception=False)
            n = review.decide_many(run, choices, client=st["client"])
            gr.Info(f"Recorded {n} decisions (one Undo reverts them all).")
            return _fast_page(ctx, st)
        return handler

    ui.fast_accept_rest.click(fast_decide("rejected", "accepted"), [ui.state, ui.fast_marked], FAST,
                              api_name="fast_accept_rest")
    ui.fast_reject_rest.click(fast_decide("accepted", "rejected"), [ui.state, ui.fast_marked], FAST,
                              api_name=False)
    ui.fast_accept.click(fast_decide("accepted", None), [ui.state, ui.fast_marked], FAST,
                         api_name=False)
    ui.fast_reject.click(fast_decide("rejected", None), [ui.state, ui.fast_marked], FAST,
                         api_name=False)

    # -- progress and plots
    @_guard
    def on_progress(st):
        return _progress_md(ctx, st)

    ui.progress_tab.select(on_progress, [ui.state], [ui.progress_md], api_name=False)
    ui.progress_refresh.click(on_progress, [ui.state], [ui.progress_md], api_name="progress")

    @_guard
    def on_plots():
        return _plots(ctx)

    ui.plots_tab.select(on_plots, None, [ui.plot_losses, ui.plot_mined, ui.plot_quality, ui.plot_note],
                        api_name=False)

    # -- export
    @_guard
    def on_export(mode, min_score, ck):
        out_dir = run.dir / "exports"
        out_dir.mkdir(exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = out_dir / f"enlarged-{mode}-{stamp}.json"
        summary = export.export_run(run, out, accept=mode, min_score=float(min_score),
                                    checkpoint=ck or "last")
        return f"✓ {export.summary_line(summary)}", str(out)

    ui.x_btn.click(on_export, [ui.x_accept, ui.x_score, ui.x_checkpoint], [ui.x_result, ui.x_file],
                   api_name="export")


# ----------------------------------------------------------------------------- serving


def launch(run_dir, *, host: str = "127.0.0.1", port: int = 7860, auth=None, share: bool = False,
           block: bool = True, quiet: bool = True):
    """Serve the review app for RUN_DIR; returns (demo, url). With block=True, serves
    until interrupted. `auth` is (user, password), 'USER:PASS', or None."""
    run = review.open_run(run_dir)
    if isinstance(auth, str):
        auth = parse_auth(auth)
    demo = build(run, private=auth is not None)
    demo.queue(default_concurrency_limit=4)
    try:
        _, url, share_url = demo.launch(
            server_name=host, server_port=int(port), auth=auth, share=share,
            prevent_thread_lock=True, show_error=False, quiet=quiet, ssr_mode=False,
            allowed_paths=[str((run.dir / "exports").resolve())], footer_links=[],
            enable_monitoring=False, mcp_server=False, theme=_theme(), css=CSS, head=HOTKEYS,
            auth_message="comining review: sign in")
    except OSError as exc:
        run.close()
        raise InputError(None, f"cannot serve on {host}:{port}: {exc} (pick another --port)") from None
    demo.comining_run = run
    url = share_url or url
    if block:
        try:
            demo.block_thread()
        finally:
            run.close()
    return demo, url
