"""benchmarks/accuracy.py's spread over training seeds: the grid it runs and the report's
'Over seeds' table (pure functions; the benchmark's jobs themselves are not run here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("accuracy_bench", REPO / "benchmarks" / "accuracy.py")
accuracy = importlib.util.module_from_spec(SPEC)
sys.modules["accuracy_bench"] = accuracy
SPEC.loader.exec_module(accuracy)


def test_train_seeds_run_every_cell_of_the_grid_once_per_seed():
    grid = [("retinanet", "easy", 0), ("retinanet", "hard", 0), ("retinanet", "hard", 1),
            ("fcos", "hard", 0)]
    assert accuracy.grid_at_seeds(grid, [3, 4]) == [
        ("retinanet", "easy", 3), ("retinanet", "easy", 4), ("retinanet", "hard", 3),
        ("retinanet", "hard", 4), ("fcos", "hard", 3), ("fcos", "hard", 4)]


def _row(method, seed, ap, recall):
    return {"detector": "fcos", "split": "hard", "method": method, "seed": seed, "AP": ap,
            "AP50": None, "mining_recall": recall, "mining_precision": 0.5,
            "mining_recall_at_p90": 0.0}


def test_over_seeds_gives_mean_and_range_per_method_and_skips_single_seeds():
    rows = [_row("joint", 0, 0.20, 0.10), _row("joint", 1, 0.30, 0.30), _row("joint", 2, 0.40, 0.20),
            _row("original", 0, 0.25, 0.05)]
    lines = accuracy.over_seeds(rows)
    table = [ln for ln in lines if ln.startswith("| hard")]
    assert table == ["| hard | joint | fcos | 0, 1, 2 | 30.0 (20.0-40.0) | - | 20.0 (10.0-30.0) "
                     "| 50.0 (50.0-50.0) | 0.0 (0.0-0.0) |"]
    assert accuracy.over_seeds(rows[-1:]) == []


def test_paper_mining_keeps_what_co_generation_keeps_per_view():
    """The accuracy table's mining is training's rule applied to each view's raw boxes: a
    box above tau on no annotation is kept (in the image's pixels, its own view); one below
    tau, and one on an annotation of its class, are not."""
    import numpy as np

    from benchmarks.mining import Labels, co_generation_boxes
    from comining.config import MiningThresholds

    sparse = {"images": [{"id": 7, "width": 100, "height": 100}],
              "annotations": [{"id": 1, "image_id": 7, "category_id": 2, "bbox": [60, 60, 20, 20]}]}
    free, low, on_label = [5, 5, 20, 20], [40, 5, 20, 20], [61, 61, 20, 20]
    raw = {7: {0: (np.array([free, low, on_label], float), np.array([1, 1, 2]),
                   np.array([0.9, 0.3, 0.8])),
               1: (np.array([free], float), np.array([3]), np.array([0.7]))}}
    boxes = co_generation_boxes(raw, Labels(sparse), MiningThresholds(score_thresh=0.5, nms_iou=0.6))
    assert sorted((b["view"], b["bbox"], b["category_id"]) for b in boxes) == [
        ("augmented", [5.0, 5.0, 20.0, 20.0], 3), ("original", [5.0, 5.0, 20.0, 20.0], 1)]
