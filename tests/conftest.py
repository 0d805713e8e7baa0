"""Shared fixtures: a tiny generated dataset, a CLI runner, file hashing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]

# CI replays the same examples every run (a landing must not depend on luck); a local
# run explores new ones, where a property can find what CI would then keep finding.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """8 generated training images of 96 px, 3 classes (training and mining them take
    seconds: see seconds_run_config). Read only: tests train into their own folders."""
    from comining.synth import generate

    out = tmp_path_factory.mktemp("small_data")
    generate(out, train=8, val=1, size=96, classes=3, seed=1)
    return out


def seconds_run_config(data: Path, run: Path, **overrides):
    """A TrainConfig that trains and mines in seconds on CPU: 4 iterations of 2 images at
    96 px, checkpoints 2 and 4, every box mined (tau 0.001, review floor 0.001)."""
    from comining.config import MiningThresholds, ReviewMining, TrainConfig

    settings = dict(images=str(data / "images"), ann=str(data / "annotations" / "train.json"),
                    run=str(run), backbone="mobilenet_v3", fpn_channels=32, image_size=96,
                    batch_size=2, iters=4, checkpoint_every=2, weights_backbone="none",
                    device="cpu", num_workers=0, log_every=1,
                    thresholds=MiningThresholds.for_detector("retinanet", score_thresh=0.001),
                    review=ReviewMining(score_floor=0.001))
    return TrainConfig(**{**settings, **overrides})


def run_cli(*args, cwd=None, timeout=600, env=None):
    """Run `python -m comining ARGS` in a subprocess; returns CompletedProcess (text)."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "comining", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_clean_error(proc, *needles, code=2):
    """A one-line (or few-line) error naming the problem, the right exit code, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert 1 <= len(lines) <= 3, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A generated dataset: 16 train + 6 val images of 128 px, 3 classes."""
    from comining.synth import generate

    out = tmp_path_factory.mktemp("tiny")
    generate(out, train=16, val=6, size=128, classes=3, seed=0)
    return out


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path
