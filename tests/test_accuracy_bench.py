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
