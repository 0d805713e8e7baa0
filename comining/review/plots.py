"""The Plots tab's data and figures: training metrics (RUN/metrics.jsonl), mined boxes per
view, and mining precision/recall against a sparsified set's hidden file."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from comining.errors import InputError
from comining.fileio import read_json
from comining.review.boxes import iou_matrix
from comining.review.records import IOU_SAME
from comining.review.run import Run
from comining.training_log import METRICS_FILE, read_metrics


def _hidden_boxes(path: Path) -> tuple[dict[int, list], int]:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise InputError(path, "hidden file is not a COCO json with an 'annotations' list")
    out: dict[int, list] = defaultdict(list)
    n = 0
    for a in data["annotations"]:
        if a.get("iscrowd", 0):
            continue
        try:
            out[int(a["image_id"])].append((int(a["category_id"]), [float(v) for v in a["bbox"]]))
            n += 1
        except (KeyError, TypeError, ValueError):
            continue
    return out, n


def mining_quality(run: Run, checkpoint: int, hidden: dict[int, list], n_hidden: int) -> dict:
    """Precision and recall of one checkpoint's mined boxes against the hidden
    (erased) annotations: a mined box is a hit when a hidden box of its class overlaps
    it with IoU >= 0.5. Per view, for agreed boxes (original rows with agreed=1), and
    for both views together (recall only counts each hidden box once)."""
    rows = run.conn.execute("SELECT image_id, category_id, x, y, w, h, view, agreed FROM candidates "
                            "WHERE checkpoint = ?", (checkpoint,)).fetchall()
    per_image: dict[int, list] = defaultdict(list)
    for r in rows:
        per_image[r["image_id"]].append(r)
    kinds = ("original", "augmented", "agreed", "union")
    mined = dict.fromkeys(kinds, 0)
    hits = dict.fromkeys(kinds, 0)
    found = {k: 0 for k in kinds}
    for image_id, rs in per_image.items():
        gt = hidden.get(image_id, [])
        boxes = np.array([[r["x"], r["y"], r["w"], r["h"]] for r in rs], np.float64)
        cats = np.array([r["category_id"] for r in rs])
        if gt:
            gt_boxes = np.array([b for _, b in gt], np.float64)
            gt_cats = np.array([c for c, _ in gt])
            match = (iou_matrix(boxes, gt_boxes) >= IOU_SAME) & (cats[:, None] == gt_cats[None])
        else:
            match = np.zeros((len(rs), 0), bool)
        views = np.array([r["view"] for r in rs])
        agreed = np.array([bool(r["agreed"]) for r in rs])
        masks = {"original": views == "original", "augmented": views == "augmented",
                 "agreed": (views == "original") & agreed, "union": np.ones(len(rs), bool)}
        for k, m in masks.items():
            if k != "union":
                mined[k] += int(m.sum())
                hits[k] += int(match[m].any(axis=1).sum()) if match.shape[1] else 0
            found[k] += int(match[m].any(axis=0).sum()) if match.shape[1] else 0
    out = {"checkpoint": checkpoint, "n_hidden": n_hidden}
    for k in kinds:
        if k != "union":
            out[f"precision_{k}"] = hits[k] / mined[k] if mined[k] else None
            out[f"mined_{k}"] = mined[k]
        out[f"recall_{k}"] = found[k] / n_hidden if n_hidden else None
    return out


def plot_data(run: Run) -> dict:
    """Everything the plots show: training metrics, mined boxes per view per
    checkpoint, and mining precision/recall per checkpoint when the run knows its
    hidden file (`quality` is None otherwise, with `quality_note` saying why)."""
    ckpts = run.checkpoint_rows()
    data = {"metrics": read_metrics(run.dir / METRICS_FILE), "checkpoints": ckpts,
            "quality": None, "quality_note": None}
    if run.hidden_path is None:
        data["quality_note"] = ("precision/recall need the hidden file of a sparsified set; "
                                "this run does not name one")
        return data
    try:
        key = ("hidden", str(run.hidden_path), run.hidden_path.stat().st_mtime_ns)
    except OSError:
        data["quality_note"] = f"hidden file {run.hidden_path} not found"
        return data
    try:
        if key not in run._plot_cache:
            run._plot_cache = {key: _hidden_boxes(run.hidden_path)}
        hidden, n_hidden = run._plot_cache[key]
    except InputError as exc:
        data["quality_note"] = str(exc)
        return data
    quality = []
    for c in ckpts:
        ck = ("quality", c["iteration"], c["mined_at"])
        if ck not in run._plot_cache:
            run._plot_cache[ck] = mining_quality(run, c["iteration"], hidden, n_hidden)
        quality.append(run._plot_cache[ck])
    data["quality"] = quality
    return data


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _finish(fig, ax, title: str, xlabel: str):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    fig.tight_layout()
    return fig


def plot_figures(data: dict) -> dict:
    """Matplotlib figures {'losses', 'mined', 'quality'} for `plot_data`'s result."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figs = {}
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=100)
    metrics = data["metrics"]
    if metrics:
        for key, colour in (("loss", "#333333"), ("loss_original", "#ff9800"),
                            ("loss_augmented", "#29b6f6")):
            pts = [(m["iteration"], m[key]) for m in metrics
                   if isinstance(m.get(key), (int, float)) and math.isfinite(m[key])]
            if pts:
                ax.plot(*zip(*pts), label=key.replace("_", " "), color=colour, lw=1.4)
        for c in data["checkpoints"]:
            ax.axvline(c["iteration"], color="#aaaaaa", lw=0.8, ls=":")
        ax.legend(fontsize=8)
    else:
        _note(ax, "no metrics.jsonl yet")
    figs["losses"] = _finish(fig, ax, "training losses (dotted: mined checkpoints)", "iteration")

    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=100)
    ck = data["checkpoints"]
    if ck:
        its = [c["iteration"] for c in ck]
        ax.plot(its, [c["n_original"] for c in ck], "o-", color="#ff9800", label="original view")
        ax.plot(its, [c["n_augmented"] for c in ck], "s-", color="#29b6f6", label="augmented view")
        ax.plot(its, [c["n_agreed"] for c in ck], "^-", color="#e040fb", label="agreed (both)")
        ax.legend(fontsize=8)
        ax.set_ylim(bottom=0)
    else:
        _note(ax, "no mined checkpoint yet")
    figs["mined"] = _finish(fig, ax, "mined boxes per checkpoint", "checkpoint (iteration)")

    q = data["quality"]
    if q:
        fig, (ax_p, ax_r) = plt.subplots(1, 2, figsize=(9.6, 3.4), dpi=100, sharey=True)
        its = [r["checkpoint"] for r in q]
        series = (("original", "#ff9800", "o-"), ("augmented", "#29b6f6", "s-"),
                  ("agreed", "#e040fb", "^-"), ("union", "#2e7d32", "D--"))
        for ax, what in ((ax_p, "precision"), (ax_r, "recall")):
            for kind, colour, style in series:
                key = f"{what}_{kind}"
                if key not in q[0]:
                    continue
                ys = [r[key] if r[key] is not None else float("nan") for r in q]
                label = {"union": "either view", "agreed": "agreed (both)"}.get(kind, f"{kind} view")
                ax.plot(its, ys, style, color=colour, label=label)
            ax.set_ylim(0, 1.05)
            ax.set_xlabel("checkpoint (iteration)")
            ax.set_title(what, fontsize=10)
            ax.grid(alpha=0.3)
        ax_r.legend(fontsize=8, loc="lower right")
        fig.suptitle(f"mined boxes vs the {q[0]['n_hidden']} hidden (erased) boxes: "
                     f"a hit is the same class at IoU >= 0.5", fontsize=10)
    else:
        fig, ax = plt.subplots(figsize=(9.6, 2.4), dpi=100)
        ax.text(0.5, 0.5, data.get("quality_note") or "no mined checkpoint yet", ha="center",
                va="center", transform=ax.transAxes, fontsize=9, wrap=True)
        ax.set_axis_off()
        ax.set_title("mining precision / recall", fontsize=10)
    fig.tight_layout()
    figs["quality"] = fig
    for f in figs.values():
        plt.close(f)
    return figs
