"""The review page's layout: the tabs and their components (held in one namespace,
`ui`, that app.events wires), the keyboard shortcuts and the style."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
from gradio_image_annotation import image_annotator

from app.events import wire
from app.views import LAYER_LABELS, Ctx, new_state
from comining import review

RUN_POLL_S = 4.0     # how often the page looks for new checkpoints and the run's progress
VIEW_CHOICES = [("original view only", "original"), ("augmented view only", "augmented"),
                ("both views (agreed)", "both")]
STATE_CHOICES = [("pending", "pending"), ("accepted", "accepted"), ("rejected", "rejected")]
LABELLED_CHOICES = [("possibly missing (no label there)", "missing"),
                    ("on a label of another class (is the label wrong?)", "on_label"),
                    ("all", "all")]
HEX = {k: "#%02x%02x%02x" % v for k, v in review.COLOURS.items()}

SHORTCUTS = """\
**Keyboard** (not while typing in a field):
<kbd>A</kbd> accept · <kbd>1</kbd>-<kbd>9</kbd> accept with that class alternative ·
<kbd>R</kbd> reject · <kbd>N</kbd>/<kbd>→</kbd> next image ·
<kbd>P</kbd>/<kbd>←</kbd> previous image · <kbd>U</kbd>/<kbd>Ctrl+Z</kbd> undo ·
<kbd>J</kbd>/<kbd>K</kbd> next/previous candidate. Click a box to select it."""

HOTKEYS = """
<script>
(() => {
  const keys = {a: "accept-btn", r: "reject-btn", n: "next-btn", p: "prev-btn", u: "undo-btn",
                j: "next-cand-btn", k: "prev-cand-btn", arrowright: "next-btn",
                arrowleft: "prev-btn"};
  for (let d = 1; d <= 9; d++) keys[String(d)] = `alt-${d}-btn`;
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


def theme():
    return gr.themes.Default(primary_hue="green", secondary_hue="slate",
                             font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])



def legend_html() -> str:
    parts = [("annotated", "annotated (input)"), ("original", "original view"),
             ("augmented", "augmented view"), ("both", "both views"),
             ("accepted", "accepted"), ("rejected", "rejected (dashed)")]
    return '<div class="legend">' + "".join(
        f'<span style="border-color:{HEX[k]}">{label}</span>' for k, label in parts) + "</div>"


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
        ui.state = gr.State(new_state())
        gr.Markdown(f"## comining review · `{run.name}`")
        ui.status = gr.Markdown("", elem_id="status")
        with gr.Row(equal_height=True):
            ui.run_status = gr.Markdown("", elem_id="run-status")
            ui.retrain = gr.Button("⟳ Retrain with my decisions", size="sm", scale=0,
                                   min_width=240, elem_id="retrain-btn")
        ui.known_checkpoints = gr.State(None)
        ui.timer = gr.Timer(RUN_POLL_S)
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
        wire(ui, ctx, demo)
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
            gr.HTML(legend_html())
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
            ui.alt_buttons = [gr.Button(f"accept as alternative {k}", elem_id=f"alt-{k}-btn",
                                        elem_classes="hotkey-hidden") for k in range(1, 10)]
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
                ui.f_labelled = gr.Radio(LABELLED_CHOICES, value="missing", label="Objects",
                                         elem_id="f-labelled")
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
