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
item        what an annotator reviews: one row of the store's `objects` table, an object
            of one image at one checkpoint (comining.objects: both views' boxes of any
            class grouped at IoU >= 0.5, a fused box, ranked class alternatives, a
            ranking score from both views). Its `id` is its best candidate's id (the
            one decisions point to); its `view` is 'both' when both views found it,
            else the one view that did; `on_label` marks an object overlapping a label
            of another class (kept apart from the missing-object queue).
decision    an append-only row of `decisions` (accepted | rejected, with the decided
            class and box: an edited box keeps its candidate id). Undo marks rows undone.

An item is *decided* by the latest non-undone decision that covers it: one made on
one of its candidates, or one on the same image whose box (the decided box or its
object's box) overlaps it with IoU >= 0.5, WHATEVER THE CLASSES: decisions follow
objects. So an object rejected at checkpoint 2 is not proposed again at checkpoint 4
even when the detector now gives it another class, unless `include_rejected=True`,
which ignores rejections made on other candidates. Export uses the same rule (the
latest decision about an object wins), see `effective_decisions`.

Decision links are checked against the checkpoint's `mined_at`: a checkpoint that is
re-mined after a decision gets new candidate rows, so a link to a candidate mined after
the decision is ignored and the decision falls back to its own class and box.
"""

from __future__ import annotations

from comining.review.boxes import clean_box, clean_boxes, iou, iou_matrix
from comining.review.draw import crop, crops, describe, item_at, member_boxes, render
from comining.review.items import (
    all_items, count_items, decide_items, decisions, effective_decisions, grouped_items,
    image_items, object_items, pending_objects, queue, queue_items,
)
from comining.review.records import (
    COLOURS, IOU_SAME, LABELLED, LAYERS, SORTS, STATES, VIEW_KINDS, VIEW_LABELS, Decision,
    Filters, Item, QueueEntry,
)
from comining.review.importing import import_decisions
from comining.review.run import Run, open_run
from comining.review.plots import mining_quality, plot_data, plot_figures
from comining.training_log import read_metrics
from comining.review.stats import (
    calibrate, decision_counts, progress, recent_yield, remaining_estimate, untrained_decisions,
)
from comining.review.writing import (
    CountChanged, batch_accept, batch_candidates, batch_count, decide, decide_many, undo,
)

__all__ = [
    "all_items", "batch_accept", "calibrate", "remaining_estimate", "batch_candidates", "batch_count", "clean_box", "count_items",
    "clean_boxes", "COLOURS", "CountChanged", "crop", "crops", "decide", "decide_items",
    "decide_many", "Decision", "decision_counts", "decisions", "describe",
    "effective_decisions", "Filters", "import_decisions", "grouped_items", "image_items", "object_items",
    "iou", "iou_matrix", "IOU_SAME", "LABELLED", "Item", "item_at", "member_boxes", "LAYERS", "mining_quality",
    "open_run", "pending_objects", "plot_data", "plot_figures", "progress", "queue", "queue_items",
    "QueueEntry", "read_metrics", "recent_yield", "render", "Run", "SORTS", "STATES", "undo",
    "untrained_decisions", "VIEW_KINDS", "VIEW_LABELS",
]
