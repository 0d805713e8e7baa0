"""Smoke test of benchmarks/speed.py: every mode runs at a tiny size on the CPU and the
results files carry the keys the issue asks for. Not a timed test: nothing here judges speed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("speed_bench", REPO / "benchmarks" / "speed.py")
speed = importlib.util.module_from_spec(SPEC)
sys.modules["speed_bench"] = speed  # dataclasses look their module up
SPEC.loader.exec_module(speed)

TINY = ["--quick", "--device", "cpu", "--shape", "64", "--batch", "2", "--iters", "2", "--warmup", "1",
        "--mine-batches", "2", "--eval-images", "20", "--profile-steps", "1", "--phase-steps", "1"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    assert speed.main(TINY + ["--out-dir", str(out)]) == 0
    return json.loads((out / "speed.json").read_text()), (out / "speed.md").read_text()


def test_json_has_the_keys_with_positive_numbers(results):
    data, _ = results
    for key in speed.JSON_KEYS:
        assert key in data, key
    assert isinstance(data["device"], str) and "CPU" in data["device"]
    for key in ("stock_torchvision_img_s", "original_img_s", "comining_img_s", "mining_img_s", "eval_5000_s"):
        assert isinstance(data[key], float) and data[key] > 0, (key, data[key])
    assert set(data["peak_mem_gb"]) == {"stock_torchvision", "original", "comining", "mining"}
    for mode, gb in data["peak_mem_gb"].items():  # CPU: the sampled growth of the RSS
        assert isinstance(gb, float) and gb > 0, (mode, gb)
    assert data["complete"] is True
    assert data["quick"] is True and data["targets_measured"] is False
    assert data["eval"]["extrapolated"] is True and data["eval"]["images"] == 20
    assert data["stock_transform_max_diff"] == 0.0
    assert data["settings"]["shape"] == [64, 64] and data["settings"]["batch"] == 2
    for mode in ("stock_torchvision", "original", "comining"):
        assert data["modes"][mode]["extra"]["nonfinite_steps"] == 0
    assert data["profile"]["top"] and data["phases"]["phases"]


def test_markdown_says_what_was_not_measured(results):
    _, md = results
    assert "CPU QUICK SMOKE NUMBERS" in md and "H100 targets were NOT measured" in md
    for mode in ("stock_torchvision", "original", "comining", "mining"):
        assert f"| {mode} |" in md
    assert "Evaluation of 5000 images" in md and "## Where the time goes" in md


def test_eval_without_an_evaluator_reports_instead_of_failing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)   # `import pycocotools` now fails
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)
    res = speed.bench_eval(5)
    assert res.img_s is None and "pip install pycocotools" in res.note


def test_shape_argument():
    assert speed.parse_shape("800") == (800, 800)
    assert speed.parse_shape("800x1344") == (800, 1344)
    with pytest.raises(Exception):
        speed.parse_shape("big")
