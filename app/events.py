"""The review page's events: every handler, and which components it reads and
updates. Handlers are thin: they call `comining.review` for decisions and app.views for
what to show, and any failure reaches the page as one line (`_guard`)."""

from __future__ import annotations

import logging
import traceback
import uuid
from datetime import datetime
from functools import wraps

import gradio as gr
import numpy as np

from app.views import (LAYER_LABELS, Ctx, alternative_class, batch_preview, batch_refresh,
                       checkpoint_choices,
                       current_items, fast_page, filters_of, item_under, n_mined, new_state,
                       next_pending, plots_for, progress_md, rebuild_queue, render_view,
                       resolve_selected)
from comining import export, review
from comining.errors import CominingError, InputError
from comining.rounds import RETRAIN_WINDOW, retrain_advice

log = logging.getLogger("comining.review")


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


def _groups(ui):
    """The component lists most handlers share: what shows the current image, the
    display toggles, and the batch preview."""
    view = [ui.state, ui.image, ui.info, ui.candidates, ui.cls, ui.counts]
    return view, [ui.layers, ui.labels], [ui.batch_preview, ui.batch_btn]


def wire(ui, ctx: Ctx, demo: gr.Blocks) -> None:
    """Connect every component of `ui` (app.layout) to its handler."""
    _wire_loading(ui, ctx, demo)
    _wire_navigation(ui, ctx)
    _wire_decisions(ui, ctx)
    _wire_queue(ui, ctx)
    _wire_editor(ui, ctx)
    _wire_fast(ui, ctx)
    _wire_tabs(ui, ctx)
    _wire_run(ui, ctx)


def _wire_loading(ui, ctx: Ctx, demo: gr.Blocks) -> None:
    """Loading the page, a new checkpoint, the layers."""
    run = ctx.run
    VIEW, SHOW, BATCH = _groups(ui)

    @_guard
    def on_load(st, min_score, request: gr.Request):
        st = dict(new_state())
        user = getattr(request, "username", None) or "web"
        st["client"] = f"{user}-{uuid.uuid4().hex[:8]}"
        run.refresh()
        cks = run.checkpoints()
        st["checkpoint"] = cks[-1] if cks else None
        rebuild_queue(ctx, st)
        choices = checkpoint_choices(ctx)
        status = "" if cks else ("ℹ️ **No candidates yet:** this run has no mined checkpoint. "
                                 "Come back (↻) when training has reached one.")
        if cks and not any(n_mined(ctx, k) for k in cks):
            status = ("ℹ️ **No candidates yet:** no checkpoint of this run has mined a box so far "
                      "(scores stay below the threshold early in training).")
        if run.annotations_problem:
            status += f"\n\n⚠️ input annotations not shown: {run.annotations_problem}"
        return (*render_view(ctx, st, [v for _, v in LAYER_LABELS], True),
                gr.update(choices=choices, value=st["checkpoint"]),
                gr.update(choices=[("last", "last")] + choices, value="last"),
                status, *batch_preview(ctx, st, min_score), gr.update(choices=ctx.class_names()))

    demo.load(on_load, [ui.state, ui.batch_score],
              VIEW + [ui.checkpoint, ui.x_checkpoint, ui.status] + BATCH + [ui.f_classes],
              api_name="load")

    @_guard
    def on_reload(st, layers, labels_on, min_score):
        run.refresh()
        cks = run.checkpoints()
        if st["checkpoint"] not in cks:
            st["checkpoint"] = cks[-1] if cks else None
        rebuild_queue(ctx, st)
        choices = checkpoint_choices(ctx)
        return (*render_view(ctx, st, layers, labels_on),
                gr.update(choices=choices, value=st["checkpoint"]),
                gr.update(choices=[("last", "last")] + choices),
                "" if cks else "ℹ️ **No candidates yet.**", *batch_preview(ctx, st, min_score))

    ui.reload.click(on_reload, [ui.state] + SHOW + [ui.batch_score],
                    VIEW + [ui.checkpoint, ui.x_checkpoint, ui.status] + BATCH, api_name="reload")

    @_guard
    def on_checkpoint(st, ck, layers, labels_on, min_score):
        st["checkpoint"] = int(ck) if ck is not None else None
        rebuild_queue(ctx, st)
        return (*render_view(ctx, st, layers, labels_on), *batch_preview(ctx, st, min_score))

    ui.checkpoint.input(on_checkpoint, [ui.state, ui.checkpoint] + SHOW + [ui.batch_score],
                        VIEW + BATCH, api_name="checkpoint")

    @_guard
    def on_show(st, layers, labels_on):
        return render_view(ctx, st, layers, labels_on)

    ui.layers.input(on_show, [ui.state] + SHOW, VIEW, api_name=False)
    ui.labels.input(on_show, [ui.state] + SHOW, VIEW, api_name=False)


def _wire_navigation(ui, ctx: Ctx) -> None:
    """Moving between images and candidates."""
    VIEW, SHOW, _ = _groups(ui)

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
            return render_view(ctx, st, layers, labels_on, note)
        return handler

    ui.next.click(step_image(+1), [ui.state] + SHOW, VIEW, api_name="next_image")
    ui.prev.click(step_image(-1), [ui.state] + SHOW, VIEW, api_name="previous_image")

    def step_candidate(delta):
        @_guard
        def handler(st, layers, labels_on):
            items = current_items(ctx, st)
            if items:
                ids = [it.id for it in items]
                cur = resolve_selected(items, st["selected"])
                k = ids.index(cur) if cur in ids else -delta
                st["selected"] = ids[(k + delta) % len(ids)]
            return render_view(ctx, st, layers, labels_on, items=items)
        return handler

    ui.next_cand.click(step_candidate(+1), [ui.state] + SHOW, VIEW, api_name=False)
    ui.prev_cand.click(step_candidate(-1), [ui.state] + SHOW, VIEW, api_name=False)

    @_guard
    def on_pick(st, cid, layers, labels_on):
        st["selected"] = int(cid) if cid is not None else None
        return render_view(ctx, st, layers, labels_on)

    ui.candidates.input(on_pick, [ui.state, ui.candidates] + SHOW, VIEW, api_name="select")

    @_guard
    def on_click_image(st, layers, labels_on, evt: gr.SelectData):
        x, y = evt.index[:2]
        items = current_items(ctx, st)
        hit = item_under(items, st, x, y, layers)
        if hit is not None:
            st["selected"] = hit.id
        return render_view(ctx, st, layers, labels_on, items=items)

    ui.image.select(on_click_image, [ui.state] + SHOW, VIEW, api_name=False)


def _wire_decisions(ui, ctx: Ctx) -> None:
    """Accept, reject, undo."""
    run = ctx.run
    VIEW, SHOW, BATCH = _groups(ui)

    def decide(decision, alternative: int | None = None):
        @_guard
        def handler(st, cls_name, layers, labels_on, min_score):
            items = current_items(ctx, st)
            cur = resolve_selected(items, st["selected"])
            item = next((it for it in items if it.id == cur), None)
            if item is None:
                raise gr.Error("No candidate selected.", print_exception=False)
            if alternative is not None:
                cat = alternative_class(item, alternative)
            else:
                cat = ctx.cat_id(cls_name) if decision == "accepted" else None
            review.decide(run, item.id, decision, client=st["client"],
                          category_id=None if cat == item.category_id else cat)
            items = current_items(ctx, st)
            st["selected"] = next_pending(items, item.id, filters_of(st)) or item.id
            # only a decision on an agreed item changes the batch count
            batch = batch_refresh(ctx, st, min_score) if item.view == "both" else (gr.skip(), gr.skip())
            return (*render_view(ctx, st, layers, labels_on, items=items), *batch)
        return handler

    ui.accept.click(decide("accepted"), [ui.state, ui.cls] + SHOW + [ui.batch_score], VIEW + BATCH,
                    api_name="accept")
    ui.reject.click(decide("rejected"), [ui.state, ui.cls] + SHOW + [ui.batch_score], VIEW + BATCH,
                    api_name="reject")
    for k, button in enumerate(ui.alt_buttons, 1):
        button.click(decide("accepted", alternative=k), [ui.state, ui.cls] + SHOW + [ui.batch_score],
                     VIEW + BATCH, api_name=f"accept_alternative_{k}")

    @_guard
    def on_undo(st, layers, labels_on, min_score):
        undone = review.undo(run, st["client"])
        if not undone:
            return (*render_view(ctx, st, layers, labels_on, "Nothing of yours to undo."),
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
        return (*render_view(ctx, st, layers, labels_on, f"↶ Undid {what}."),
                *batch_refresh(ctx, st, min_score))

    ui.undo.click(on_undo, [ui.state] + SHOW + [ui.batch_score], VIEW + BATCH, api_name="undo")


def _wire_queue(ui, ctx: Ctx) -> None:
    """The queue filters and the batch accept."""
    run = ctx.run
    VIEW, SHOW, BATCH = _groups(ui)

    @_guard
    def on_filters(st, sort, classes, views, lo, hi, states, inc_rej, labelled, layers, labels_on,
                   min_score):
        if float(lo) > float(hi):
            raise InputError(None, f"min score {lo} is above max score {hi}")
        st["filters"] = {"sort": sort, "classes": [ctx.cat_id(c) for c in classes or []],
                         "views": list(views or []), "score_min": float(lo), "score_max": float(hi),
                         "states": list(states or []), "include_rejected": bool(inc_rej),
                         "labelled": labelled or "missing"}
        st["selected"] = None
        st["image_id"] = None
        rebuild_queue(ctx, st)
        return (*render_view(ctx, st, layers, labels_on, f"Queue: {len(st['queue'])} images."),
                *batch_preview(ctx, st, min_score))

    ui.f_apply.click(on_filters, [ui.state, ui.sort, ui.f_classes, ui.f_views, ui.f_min, ui.f_max,
                                  ui.f_states, ui.f_rejected, ui.f_labelled] + SHOW + [ui.batch_score],
                     VIEW + BATCH, api_name="filters")

    @_guard
    def on_batch_preview(st, min_score):
        return batch_preview(ctx, st, min_score)

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
                                    classes=filters_of(st).classes, expected=expected)
        except review.CountChanged as exc:
            gr.Warning(str(exc))
            return (*render_view(ctx, st, layers, labels_on), *batch_preview(ctx, st, min_score))
        gr.Info(f"Accepted {n} agreed candidates (one Undo reverts them all).")
        return (*render_view(ctx, st, layers, labels_on, f"✓ Batch-accepted {n} candidates."),
                *batch_preview(ctx, st, min_score))

    ui.batch_btn.click(on_batch, [ui.state, ui.batch_score, ui.batch_btn] + SHOW, VIEW + BATCH,
                       api_name="batch_accept")


def _wire_editor(ui, ctx: Ctx) -> None:
    """Adjusting a box with gradio_image_annotation."""
    run = ctx.run
    VIEW, SHOW, BATCH = _groups(ui)

    @_guard
    def on_edit_load(st):
        items = current_items(ctx, st)
        cur = resolve_selected(items, st["selected"])
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
        items = current_items(ctx, st)
        st["selected"] = next_pending(items, edit["candidate"], filters_of(st)) or edit["candidate"]
        return (*render_view(ctx, st, layers, labels_on, "✓ Accepted the adjusted box.", items=items),
                *batch_refresh(ctx, st, min_score))

    ui.edit_save.click(on_edit_save, [ui.state, ui.editor, ui.cls] + SHOW + [ui.batch_score],
                       VIEW + BATCH, api_name=False)


def _wire_fast(ui, ctx: Ctx) -> None:
    """The fast mode's gallery."""
    run = ctx.run

    FAST = [ui.state, ui.fast_gallery, ui.fast_marked, ui.fast_info]

    @_guard
    def on_fast(st):
        return fast_page(ctx, st)

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
            return fast_page(ctx, st)
        return handler

    ui.fast_accept_rest.click(fast_decide("rejected", "accepted"), [ui.state, ui.fast_marked], FAST,
                              api_name="fast_accept_rest")
    ui.fast_reject_rest.click(fast_decide("accepted", "rejected"), [ui.state, ui.fast_marked], FAST,
                              api_name=False)
    ui.fast_accept.click(fast_decide("accepted", None), [ui.state, ui.fast_marked], FAST,
                         api_name=False)
    ui.fast_reject.click(fast_decide("rejected", None), [ui.state, ui.fast_marked], FAST,
                         api_name=False)


def _wire_tabs(ui, ctx: Ctx) -> None:
    """The progress, plots and export tabs."""
    run = ctx.run

    @_guard
    def on_progress(st):
        return progress_md(ctx, st)

    ui.progress_tab.select(on_progress, [ui.state], [ui.progress_md], api_name=False)
    ui.progress_refresh.click(on_progress, [ui.state], [ui.progress_md], api_name="progress")

    @_guard
    def on_plots():
        return plots_for(ctx)

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


def _wire_run(ui, ctx: Ctx) -> None:
    """The run while the annotator reviews: its progress and new checkpoints (polled),
    and retraining with the decisions (a background `comining refine`)."""
    run = ctx.run

    @_guard
    def on_tick(known, st):
        # reads the page's state, never writes it: a tick racing a decision must not undo it
        line, busy = ctx.retrainer.poll()
        cks = run.checkpoints()
        if st.get("checkpoint") is not None and not busy:
            advice = retrain_advice(*review.recent_yield(run, st["checkpoint"], RETRAIN_WINDOW),
                                    review.untrained_decisions(run))
            line += f"\n\n{advice}" if advice else ""
            took = ctx.retrainer.forecast()
            line += f"\n\n⟳ {took}" if took else ""
        if cks and st.get("checkpoint") is None:
            line += f"\n\n🆕 **checkpoint {cks[-1]} is mined**: press ↻ to review it"
        elif cks and cks[-1] > st["checkpoint"]:
            line += (f"\n\n🆕 **checkpoint {cks[-1]} is mined**: choose it in the Checkpoint "
                     f"list (your decisions carry over to it)")
        if known is not None and cks == known:
            return known, line, gr.skip(), gr.skip()
        choices = checkpoint_choices(ctx)
        return cks, line, gr.update(choices=choices), gr.update(choices=[("last", "last")] + choices)

    ui.timer.tick(on_tick, [ui.known_checkpoints, ui.state],
                  [ui.known_checkpoints, ui.run_status, ui.checkpoint, ui.x_checkpoint],
                  api_name=False, show_progress="hidden")

    @_guard
    def on_retrain():
        return ctx.retrainer.start()

    ui.retrain.click(on_retrain, None, [ui.run_status], api_name="retrain")
