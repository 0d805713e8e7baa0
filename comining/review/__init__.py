"""Review logic over a run's store: queue, decisions, undo, progress, plots, drawing.

No gradio here: the app (`app/`) only wires these functions to widgets, and the
tests call them directly. Everything is reached as `comining.review.<name>`; the modules
are boxes (IoU, clipping), records (constants and dataclasses), run (`Run`), items
(reading and grouping, the queue), writing (decide, undo, batch), stats (progress,
plots) and draw (rendering, crops).

Vocabulary
----------
candidate   one row of the store's `candidates` table: a box one view mined at one
            checkpoint.
item        what an annotator reviews: the candidates of one image at one checkpoint
            grouped so that one object gives one item. Greedy by score, a candidate
            joins the item of its agreed partner, else the first item of the same
            class whose top box it overlaps with IoU >= 0.5. An item's `id` is its
            top-scoring candidate's id (the one decisions point to); its `view` is
            'both' when both views found it, else the one view that did.
decision    an append-only row of `decisions` (accepted | rejected, with the decided
            class and box: an edited box keeps its candidate id). Undo marks rows undone.

An item is *decided* by the latest non-undone decision that covers it: one made on
one of its candidates, or one on the same image for a same-class box with IoU >= 0.5
(the decided box or its candidate's box). So a box rejected at checkpoint 2 is not
proposed again at checkpoint 4, unless `include_rejected=True`, which ignores
rejections made on other candidates. Export uses the same rule (the latest decision
about an object wins), see `effective_decisions`.

Decision links are checked against the checkpoint's `mined_at`: a checkpoint that is
re-mined after a decision gets new candidate rows (whose ids SQLite may reuse), so a
link to a candidate mined after the decision is ignored and the decision falls back to
its own class and box.
"""

from __future__ import annotations

from comining.review.boxes import clean_box, clean_boxes, iou, iou_matrix
from comining.review.draw import crop, crops, describe, item_at, render
from comining.review.items import (
    all_items, build_items, decide_items, decisions, effective_decisions, group_items,
    grouped_items, image_items, queue, queue_items,
)
from comining.review.records import (
    COLOURS, IOU_SAME, LAYERS, SORTS, STATES, VIEW_KINDS, VIEW_LABELS, Decision,
    Filters, Item, QueueEntry,
)
from comining.review.run import Run, open_run
from comining.review.stats import (
    decision_counts, mining_quality, plot_data, plot_figures, progress, read_metrics,
)
from comining.review.writing import (
    CountChanged, batch_accept, batch_candidates, decide, decide_many, undo,
)

__all__ = [
    "all_items", "batch_accept", "batch_candidates", "build_items", "clean_box",
    "clean_boxes", "COLOURS", "CountChanged", "crop", "crops", "decide", "decide_items",
    "decide_many", "Decision", "decision_counts", "decisions", "describe",
    "effective_decisions", "Filters", "group_items", "grouped_items", "image_items",
    "iou", "iou_matrix", "IOU_SAME", "Item", "item_at", "LAYERS", "mining_quality",
    "open_run", "plot_data", "plot_figures", "progress", "queue", "queue_items",
    "QueueEntry", "read_metrics", "render", "Run", "SORTS", "STATES", "undo",
    "VIEW_KINDS", "VIEW_LABELS",
]
