"""The annotator in the loop, simulated: missing objects found per decision, round by round.

An oracle annotator reads the erased labels (HIDDEN) of the demo's hard split. It walks
a checkpoint's review queue in order (best first, as the app shows it) and accepts an
object that matches an erased label it has not found yet (IoU >= 0.5, any class; it fixes
the class when the detector's is wrong, keeps the mined box), rejects everything else.
It stops a round the way an annotator stops when the queue stops paying: when fewer than
half of its last WINDOW decisions were accepts (the rule reads nothing but its own
decisions). Then `comining refine` retrains on the decisions and the next round reviews
the new checkpoint's queue.

Per round it records: decisions spent, erased labels recovered in the export (`comining
export`, class and IoU >= 0.5 checked against HIDDEN), AP of the round's detector on the
val set, and the app's remaining-objects estimate (comining.calibration) against the
truth (pending objects of the queue that match an erased label not yet found).

Against: (a) one-shot review of round 0's queue (the same oracle, no stop rule, no
retraining) at the same numbers of decisions; (b) the same loop with the `original`
method (one view, annotations only; its round 0 trained here when missing).

  python benchmarks/loop.py                 # both methods; about two hours on 2 CPU cores
  python benchmarks/loop.py --work DIR      # where the round-0 runs live (reused)

Writes benchmarks/results/loop.md and loop.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from contextlib import contextmanager
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import cpu_name, git_commit  # noqa: E402

from comining.rounds import RETRAIN_BELOW as STOP_BELOW  # noqa: E402
from comining.rounds import RETRAIN_WINDOW as WINDOW  # noqa: E402
from comining.mining import NATIVE_MAX  # noqa: E402

# The stop rule is the app's suggestion to retrain (comining.rounds.retrain_advice): the
# last WINDOW decisions accepted less often than STOP_BELOW: retrain (or stop, last round).
# --retrain-growth adds a rule the app does not suggest: retrain once the round's accepts
# reach that share of the labels its detector learnt from.
MATCH_IOU = 0.5
TARGET = 0.9           # share of the erased labels the issue asks to recover
MAX_PER_LABEL = 1.3    # ... at most this many decisions per recovered label
MIN_SAVING = 0.25      # ... and at least this share fewer decisions than one-shot review


# ----------------------------------------------------------------------------- round-0 runs


@dataclass(frozen=True)
class Recipe:
    """How round 0 trains and where everything runs: the demo's CPU or GPU recipe."""
    name: str = "cpu"
    device: str = "cpu"
    round0_iters: int | None = None    # a shorter round 0, mined once (to try the script out)
    seed: int = 0                      # round 0's training seed (the data stay the setting's)
    setting: str = "demo"              # benchmarks/mining.py's SETTINGS: the generated data

    @property
    def settings(self) -> dict:
        from comining.cli.demo import CPU_SETTINGS, GPU_SETTINGS
        settings = dict(CPU_SETTINGS if self.name == "cpu" else GPU_SETTINGS)
        if self.round0_iters:
            settings.update(iters=self.round0_iters, checkpoint_every=self.round0_iters)
        return settings

    @property
    def suffix(self) -> str:
        """Folder suffix: the CPU recipe keeps the folders it always had."""
        return "" if self.name == "cpu" else f"_{self.name}"

    def describe(self) -> str:
        s = self.settings
        return (f"{s['detector'].upper()} {s['backbone']} at {s['image_size']} px (the demo's "
                f"{self.name.upper()} recipe), on {self.device}"
                + (f"; round 0 trained with seed {self.seed}" if self.seed else ""))


def round0_run(method: str, work: Path, recipe: Recipe = Recipe()) -> tuple[Path, Path]:
    """(the demo setting's data folder, its trained round-0 run of `method`)."""
    from benchmarks.mining import SETTINGS, prepare
    from comining.config import TrainConfig
    from comining.checkpoints import list_checkpoints
    from comining.engine import train

    # another method's loop needs the data, not co-mining's round 0 (--loops-from has its loop)
    paths = prepare(recipe.setting, SETTINGS[recipe.setting], work, settings=recipe.settings,
                    device=recipe.device, run_name=f"run{recipe.suffix}", seed=recipe.seed,
                    train_missing=method == "comining")
    data = paths["sparse"].parents[1]
    if method == "comining":
        return data, paths["run"]
    run = work / recipe.setting / f"run{recipe.suffix}_{method}"
    config = TrainConfig(images=str(data / "images"), ann=str(paths["sparse"]), run=str(run),
                         method=method, weights_backbone="none", device=recipe.device,
                         seed=recipe.seed,
                         hidden=str(paths["hidden"]), num_workers=1, log_every=10,
                         **recipe.settings)
    done = list_checkpoints(run)
    if not done or done[-1][0] < config.iters:
        print(f"[{method}] training round 0 ({config.iters} iterations) in {run}", flush=True)
        train(config, resume=bool(done), progress=False)
    return data, run


# ----------------------------------------------------------------------------- the oracle


class Oracle:
    """The erased labels, and which of them the annotator has found."""

    def __init__(self, hidden: dict):
        self.labels = defaultdict(list)     # image_id -> [(ann id, category_id, xywh)]
        for a in hidden["annotations"]:
            if not a.get("iscrowd", 0):
                self.labels[a["image_id"]].append((a["id"], a["category_id"], a["bbox"]))
        self.n = sum(len(v) for v in self.labels.values())
        self.found: set[int] = set()

    def match(self, image_id: int, box) -> tuple[int, int] | None:
        """(ann id, category) of the best unfound erased label at IoU >= 0.5, else None."""
        from comining.boxes import iou_matrix

        todo = [lab for lab in self.labels.get(image_id, ()) if lab[0] not in self.found]
        if not todo:
            return None
        iou = iou_matrix([box], [lab[2] for lab in todo])[0]
        j = int(np.argmax(iou))
        return (todo[j][0], todo[j][1]) if iou[j] >= MATCH_IOU else None


def stops(decisions: list[bool], stop_below: float | None, max_accepts: int | None = None) -> bool:
    """Whether the annotator ends the round after these decisions: the queue stopped
    paying (fewer than stop_below of the last WINDOW were accepts), or its accepts reached
    max_accepts (the growth rule: retrain once the labels grew enough)."""
    if max_accepts is not None and sum(decisions) >= max_accepts:
        return True
    return (stop_below is not None and len(decisions) >= WINDOW
            and float(np.mean(decisions[-WINDOW:])) < stop_below)


def review_queue(run_dir: Path, checkpoint: int, oracle: Oracle, *, stop_below: float | None,
                 client: str = "oracle", max_accepts: int | None = None) -> list[bool]:
    """The oracle decides the checkpoint's queue in order; returns its decisions
    (True: accepted). Items a decision of this pass covers (IoU >= 0.5 on their image,
    as the app's queue hides them) are skipped, as the live queue would. It stops where
    `stops` says."""
    from comining import review
    from comining.boxes import iou_matrix

    r = review.open_run(run_dir)
    out: list[bool] = []
    decided = defaultdict(list)
    try:
        for it in review.queue_items(r, checkpoint):
            if decided[it.image_id] and iou_matrix([it.box], decided[it.image_id]).max() >= MATCH_IOU:
                continue
            hit = oracle.match(it.image_id, it.box)
            if hit:
                oracle.found.add(hit[0])
                review.decide(r, it.id, "accepted", client=client,
                              category_id=hit[1] if hit[1] != it.category_id else None)
            else:
                review.decide(r, it.id, "rejected", client=client)
            decided[it.image_id].append(it.box)
            out.append(bool(hit))
            if stops(out, stop_below, max_accepts):
                break
    finally:
        r.close()
    return out


def pending_matches(run_dir: Path, checkpoint: int, oracle: Oracle) -> tuple[list, list]:
    """(scores, the unfound erased label each matches or None) of the queue's pending
    objects: one pass over the queue for both the truth and the audit bound."""
    from comining import review

    r = review.open_run(run_dir)
    try:
        items = review.queue_items(r, checkpoint)
        return ([it.score for it in items],
                [(m[0] if (m := oracle.match(it.image_id, it.box)) else None) for it in items])
    finally:
        r.close()


def truth_remaining(labels: list) -> int:
    """Erased labels not yet found that a pending object of the queue matches."""
    return len({lab for lab in labels if lab is not None})


def audit_of(scores: list, labels: list) -> int | None:
    """audit_size of pending_matches' output: an object is missing when it matches a label."""
    return audit_size(scores, [lab is not None for lab in labels])


AUDIT_ERROR = 0.15     # the issue's bound on the remaining-objects estimate
AUDIT_BANDS = 50       # score bands of the audit below (more bands: a smaller audit)


def audit_size(scores, missing, *, error: float = AUDIT_ERROR, bands: int = AUDIT_BANDS) -> int | None:
    """Decisions a random audit of the pending objects needs to count the missing ones
    within `error` (one standard error), at best: stratified by score into `bands`
    equal bands, each sampled in proportion to N_h * S_h (Neyman allocation) with S_h
    from the TRUE rate of missing objects in the band, which no annotator knows: a
    lower bound on what any sample of the queue costs. scores (N,), missing (N,) bool:
    whether each pending object is a missing object. Cochran's n for a total with the
    finite-population correction: n = (sum N_h S_h)^2 / (V + sum N_h S_h^2), V = (error * total)^2."""
    s, y = np.asarray(scores, np.float64), np.asarray(missing, np.float64)
    if not y.sum():
        return None
    strata = [b for b in np.array_split(np.argsort(-s), bands) if len(b)]
    n_h = np.array([len(b) for b in strata], np.float64)
    p_h = np.array([y[b].mean() for b in strata])
    s_h = np.sqrt(p_h * (1 - p_h) * n_h / np.maximum(n_h - 1, 1))
    need = (n_h * s_h).sum() ** 2 / ((error * y.sum()) ** 2 + (n_h * s_h ** 2).sum())
    return int(np.ceil(need))


def oracle_of(run_dir: Path, hidden: dict) -> Oracle:
    """The oracle as the run's accepted decisions leave it (what it has found)."""
    from comining import review

    oracle = Oracle(hidden)
    r = review.open_run(run_dir)
    try:
        for d in review.effective_decisions(r.conn):
            if d.decision == "accepted":
                hit = oracle.match(d.image_id, d.box)
                if hit:
                    oracle.found.add(hit[0])
    finally:
        r.close()
    return oracle


def estimate(run_dir: Path, checkpoint: int):
    from comining import review

    r = review.open_run(run_dir)
    try:
        return review.remaining_estimate(r, checkpoint)
    finally:
        r.close()


def recovered_in_export(run_dir: Path, hidden: dict, tmp: Path) -> int:
    """Erased labels matched (same class, IoU >= 0.5, one box each) by the export's new boxes."""
    from comining import review
    from comining.boxes import iou_matrix
    from comining.export import export_run

    out = tmp / "export.json"
    r = review.open_run(run_dir)
    try:
        export_run(r, out)
    finally:
        r.close()
    added = defaultdict(list)
    for a in json.loads(out.read_text())["annotations"]:
        if "comining" in a:
            added[a["image_id"]].append(a)
    n = 0
    for image_id, labels in Oracle(hidden).labels.items():
        boxes = list(added.get(image_id, ()))
        for _, cat, box in labels:
            same = [b for b in boxes if b["category_id"] == cat]
            if same:
                iou = iou_matrix([box], [b["bbox"] for b in same])[0]
                j = int(np.argmax(iou))
                if iou[j] >= MATCH_IOU:
                    n += 1
                    boxes.remove(same[j])
    return n


def val_ap(run_dir: Path, data: Path, checkpoint: int, device: str = "cpu") -> float:
    from comining.cli.evaluate import detection_ap

    ap = detection_ap(run_dir, str(data / "images"), str(data / "annotations" / "val.json"),
                      checkpoint, device, 8)
    return ap["AP"]


# ----------------------------------------------------------------------------- arms


def mine_for_review(run: Path, changes: dict, device: str = "cpu") -> None:
    """Make a copied run mine for review with these ReviewMining settings (scales, flip):
    its config (which refine rounds inherit) and its last checkpoint, mined again."""
    import dataclasses

    from comining.checkpoints import load_run_config
    from comining.engine import mine_checkpoint
    from comining.fileio import atomic_write_json

    config = load_run_config(run)
    config.review = dataclasses.replace(config.review, **changes)
    atomic_write_json(run / "config.json", config.as_dict())
    mine_checkpoint(run, "last", review=config.review, device=device)


def labels_trained_on(run: Path, round_n: int) -> int:
    """Non-crowd annotations the round's detector trained on: the input annotations for
    round 0, the round's targets (input + accepted) after."""
    from comining.fileio import read_json
    from comining.checkpoints import load_run_config
    from comining.rounds import round_dir

    path = load_run_config(run).ann if round_n == 0 else round_dir(run, round_n) / "targets.json"
    return sum(1 for a in read_json(path)["annotations"] if not a.get("iscrowd", 0))


def run_loop(method: str, data: Path, run0: Path, work: Path, *, rounds: int, iters: int,
             stop_below: float, tag: str = "", review: dict | None = None,
             device: str = "cpu", retrain_growth: float | None = None) -> dict:
    from comining import store
    from comining.fileio import read_json
    from comining.rounds import forecast_round, refine

    hidden = read_json(data / "annotations" / "train_hard_hidden.json")
    run = work / f"loop_{method}{tag}" / "run"
    shutil.rmtree(run.parent, ignore_errors=True)
    shutil.copytree(run0, run)
    if review:
        mine_for_review(run, review, device)
    oracle = Oracle(hidden)
    curve: list[int] = []       # erased labels found after each decision
    rows = []
    for n in range(rounds + 1):
        conn = store.connect(run / store.STORE_NAME)
        checkpoint = store.checkpoints(conn)[-1]["iteration"]
        conn.close()
        t0 = time.perf_counter()
        before = len(oracle.found)
        max_accepts = None
        if retrain_growth and n < rounds:     # the last round has no retraining to wait for
            max_accepts = math.ceil(retrain_growth * labels_trained_on(run, n))
        decisions = review_queue(run, checkpoint, oracle, stop_below=stop_below,
                                 max_accepts=max_accepts)
        for d in decisions:
            before += d
            curve.append(before)
        est = estimate(run, checkpoint)
        scores, labels = pending_matches(run, checkpoint, oracle)
        truth = truth_remaining(labels)
        audit = audit_of(scores, labels)
        row = {"round": n, "checkpoint": checkpoint, "decisions": len(decisions),
               "accepted": int(sum(decisions)), "decisions_total": len(curve),
               "recovered_oracle": len(oracle.found),
               "recovered_export": recovered_in_export(run, hidden, run.parent),
               "n_erased": oracle.n, "val_ap": val_ap(run, data, checkpoint, device),
               "estimate_remaining": None if est is None else round(est.total, 1),
               "estimate_extrapolated": None if est is None else round(est.extrapolated, 1),
               "estimate_per_class": None if est is None else {
                   str(k): round(v, 1) for k, v in est.per_class.items()},
               "truth_remaining": truth, "audit_decisions": audit,
               "review_s": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(f"[{method}] round {n}: {row}", flush=True)
        # the store as this round left it (for studying other estimates afterwards)
        shutil.copy2(run / store.STORE_NAME, run.parent / f"round{n}.sqlite")
        if n == rounds or not decisions:
            break
        # what the app would have said the round takes, against what it took
        forecast = forecast_round(run, iters=iters, checkpoint_every=iters).total_s
        row["refine_forecast_s"] = None if forecast is None else round(forecast, 1)
        t0 = time.perf_counter()
        refine(run, iters=iters, checkpoint_every=iters, progress=False)
        row["refine_s"] = round(time.perf_counter() - t0, 1)
    return {"method": method, "stop_below": stop_below, "rounds": rows, "curve": curve}


def name_tag(name: str) -> str:
    """The work folders of a result NAME: loop_<method><tag>."""
    return "" if name == "loop" else f"_{name}"


@contextmanager
def round_snapshot(run: Path, n: int):
    """A temporary run folder holding the store as round n left it (RUN/../round<n>.sqlite)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy2(run.parent / f"round{n}.sqlite", Path(tmp) / "comining.sqlite")
        shutil.copy2(run / "config.json", Path(tmp) / "config.json")
        yield Path(tmp)


def reestimate(run: Path, rows: list[dict], hidden: dict) -> None:
    """The remaining-objects estimate of each round again, with this code, from the store
    as that round left it (RUN/../round<N>.sqlite), and the audit it is set against."""
    for row in rows:
        with round_snapshot(run, row["round"]) as snap:
            est = estimate(snap, row["checkpoint"])
            scores, labels = pending_matches(snap, row["checkpoint"], oracle_of(snap, hidden))
            row["audit_decisions"] = audit_of(scores, labels)
        row["estimate_remaining"] = None if est is None else round(est.total, 1)
        row["estimate_extrapolated"] = None if est is None else round(est.extrapolated, 1)
        row["estimate_per_class"] = None if est is None else {
            str(k): round(v, 1) for k, v in est.per_class.items()}


def finish_last_queue(run: Path, hidden: dict) -> dict:
    """After the last round: the oracle reviews the rest of the last checkpoint's queue
    (no stop rule), as an annotator who wants every object would. Its knowledge of what
    was found is rebuilt from the run's accepted decisions. Returns the found count
    after each further decision."""
    from comining import store

    oracle = oracle_of(run, hidden)
    conn = store.connect(run / store.STORE_NAME)
    checkpoint = store.checkpoints(conn)[-1]["iteration"]
    conn.close()
    start = len(oracle.found)
    decisions = review_queue(run, checkpoint, oracle, stop_below=None, client="oracle-finish")
    return {"checkpoint": checkpoint, "found_before": start,
            "curve": (start + np.cumsum(decisions)).astype(int).tolist()}


def one_shot(data: Path, run0: Path, work: Path, review: dict | None = None, *,
             folder: str = "one_shot", device: str = "cpu") -> dict:
    """The oracle on round 0's whole queue (mined again with the `review` settings
    changed, if given: mine_s is its time), no retraining: found after each decision."""
    from comining import store
    from comining.fileio import read_json

    hidden = read_json(data / "annotations" / "train_hard_hidden.json")
    run = work / folder / "run"
    shutil.rmtree(run.parent, ignore_errors=True)
    shutil.copytree(run0, run)
    t0 = time.perf_counter()
    if review is not None:
        mine_for_review(run, review, device)
    mine_s = round(time.perf_counter() - t0, 1) if review is not None else None
    conn = store.connect(run / store.STORE_NAME)
    checkpoint = store.checkpoints(conn)[-1]["iteration"]
    conn.close()
    oracle = Oracle(hidden)
    decisions = review_queue(run, checkpoint, oracle, stop_below=None)
    return {"checkpoint": checkpoint, "curve": np.cumsum(decisions).astype(int).tolist(),
            "n_erased": oracle.n, "recovered_export": recovered_in_export(run, hidden, run.parent),
            "mine_s": mine_s}


# ----------------------------------------------------------------------------- report


def at(curve: list[int], k: int) -> int:
    """Found after k decisions (the last value past the end: no more to decide)."""
    if not curve or k <= 0:
        return 0
    return curve[min(k, len(curve)) - 1]


def decisions_to(curve: list[int], target: int) -> int | None:
    for i, v in enumerate(curve):
        if v >= target:
            return i + 1
    return None


def _of_which(extrapolated) -> str:
    """The part of an estimate extrapolated below every decided score, when recorded."""
    return "" if extrapolated is None else f" (of which {extrapolated} extrapolated)"


def _forecast(seconds) -> str:
    return "" if seconds is None else f" ({seconds:.0f})"


def _error(estimate, truth) -> str:
    if estimate is None or not truth:
        return "-"
    return f"{(estimate - truth) / truth:+.0%}"


def share(k: int, n: int) -> str:
    """k of n as a percentage, to 0.1 unless that would read as the target reached when it
    is not (611 of 679: 89.99 %, not 90.0 %)."""
    if k < math.ceil(TARGET * n) and round(k / n, 3) >= TARGET:
        return f"{k / n:.2%}"
    return f"{k / n:.1%}"


def hardware(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))}, {cpu_name()}"
    return f"{cpu_name()}, CPU only"


def review_line(meta: dict) -> str:
    """How round 0's last checkpoint and every round were mined for review, if not at the
    training size only."""
    scales = meta.get("review_scales", [1.0])
    how = [f"at {' and '.join(f'{x:g}x' for x in scales)} the training size"] if scales != [1.0] else []
    cap = f" (at most {meta['native_max']:g}x the training size)" if meta.get("native_max") else ""
    how += [f"at the images' own size too{cap}, where training shrinks them"] if meta.get("review_native") else []
    how += ["plain and mirrored"] if meta.get("review_flip") else []
    if not how:
        return ""
    if meta.get("one_shot_from"):
        shot = f"; one-shot's queue as in {meta['one_shot_from']}.md"
    else:
        shot = "" if meta.get("one_shot_review") is None else (
            "; one-shot's queue mined so too" if meta["one_shot_review"] else "; one-shot's queue as by default")
    return f"; mined for review {', '.join(how)} (round 0's last checkpoint mined again so{shot})"


def loops_from_line(meta: dict) -> str:
    """Which loops were measured earlier (--loops-from), and when."""
    earlier = meta.get("loops_from")
    if not earlier:
        return ""
    methods = ", ".join(f"`{m}`" for m in earlier["methods"])
    return (f" The loop of {methods} and the one-shot arm are {earlier['name']}.md's "
            f"({earlier['when']}, commit {earlier['commit']}"
            + (f"; estimates {earlier['estimates']}" if earlier.get("estimates") else "")
            + "), on the same data, round 0 and settings.")


def report(loops: dict, shot: dict, meta: dict) -> list[str]:
    n = shot["n_erased"]
    goal = int(np.ceil(TARGET * n))
    lines = ["# The annotator in the loop (simulated)", "",
             f"{meta['when']}, commit {meta['commit']}, {meta['hardware']}; {meta['setting']}."
             + (f" Estimates {meta['estimates']}." if meta.get("estimates") else ""),
             f"Oracle annotator; a round stops when fewer than {meta['stop_below']:.0%} of its last "
             f"{WINDOW} decisions were accepts"
             + (f", or once its accepts reached {meta['retrain_growth']:.0%} of the labels its "
                f"detector trained on (but the last round's)" if meta.get("retrain_growth") else "")
             + f"; refine rounds of {meta['iters']} iterations "
             f"(round 0: {meta['round0_iters']})"
             + review_line(meta)
             + f". {n} erased labels; the target is {goal} ({TARGET:.0%})."
             + loops_from_line(meta), ""]
    for method, res in loops.items():
        lines += [f"## Loop, method `{method}`", "",
                  "| round | checkpoint | decisions | accepted | total decisions | recovered (export) "
                  "| decisions / recovered | val AP | remaining: estimate | remaining: truth "
                  "| estimate error | refine s (forecast) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["rounds"]:
            rec = r["recovered_export"]
            lines.append(
                f"| {r['round']} | {r['checkpoint']} | {r['decisions']} | {r['accepted']} | "
                f"{r['decisions_total']} | {rec} ({share(rec, n)}) | "
                f"{r['decisions_total'] / max(rec, 1):.2f} | {r['val_ap']:.3f} | "
                f"{'-' if r['estimate_remaining'] is None else r['estimate_remaining']}"
                f"{_of_which(r.get('estimate_extrapolated'))} | "
                f"{r['truth_remaining']} | {_error(r['estimate_remaining'], r['truth_remaining'])} | "
                f"{r.get('refine_s', '-')}{_forecast(r.get('refine_forecast_s'))} |")
        audits = [(r["round"], r["audit_decisions"]) for r in res["rounds"]
                  if r.get("audit_decisions")]
        if audits:
            lines += ["", f"What checking the estimate by sampling would cost: a random audit that "
                          f"counts the missing objects left within {AUDIT_ERROR:.0%} (one standard "
                          f"error) needs at least " + ", ".join(
                              f"{a:,} decisions after round {k}" for k, a in audits)
                      + f" ({AUDIT_BANDS} score bands, each sampled by its true rate: a lower bound)."]
        if res.get("finish"):
            fin = res["finish"]
            whole = res["curve"] + fin["curve"]
            reach_all = decisions_to(whole, goal)
            lines += ["", f"Then reviewing the rest of the last queue (checkpoint {fin['checkpoint']}, "
                          f"no stop rule): {TARGET:.0%} after "
                          + (f"**{reach_all}** decisions in all "
                             f"({reach_all / goal:.2f} per recovered label)" if reach_all else
                             f"never (best {whole[-1]} after {len(whole)})") + "."]
        reach = decisions_to(res["curve"], goal)
        best = res["curve"][-1] if res["curve"] else 0
        lines += ["", f"Within the loop's rounds (the stop rule): {TARGET:.0%} "
                      + (f"reached after {reach} decisions." if reach else
                         f"not reached (best: {best} after {len(res['curve'])} decisions)."), ""]
    lines += ["## Loop vs one-shot review of round 0's queue, at equal decisions", "",
              "| decisions | " + " | ".join(f"loop `{m}`" for m in loops) + " | one-shot |",
              "|---|" + "---|" * (len(loops) + 1)]
    budgets = sorted({r["decisions_total"] for res in loops.values() for r in res["rounds"]})
    for b in budgets:
        lines.append(f"| {b} | " + " | ".join(str(at(res["curve"], b)) for res in loops.values())
                     + f" | {at(shot['curve'], b)} |")
    shot_reach = decisions_to(shot["curve"], goal)
    lines += ["", "Loop + the rest of its last queue, against one-shot, decisions to reach "
                  f"{TARGET:.0%}: " + "; ".join(
                      f"`{m}` {decisions_to(res['curve'] + res['finish']['curve'], goal) or 'never'}"
                      for m, res in loops.items() if res.get("finish"))
              + f"; one-shot {decisions_to(shot['curve'], goal) or 'never'}."
              + (f" No review finds {goal} labels in fewer than {goal} decisions, so at most "
                 f"{most_saving(goal, shot_reach):.0%} of one-shot's decisions could be saved."
                 if shot_reach else "")]
    lines += ["", f"One-shot: {len(shot['curve'])} decisions review round 0's whole queue and "
                  f"find {shot['curve'][-1] if shot['curve'] else 0} ({share(shot['curve'][-1] if shot['curve'] else 0, n)}); "
                  f"{TARGET:.0%} " + (f"after {shot_reach} decisions." if shot_reach else "never."), ""]
    return lines


def most_saving(goal: int, shot_reach: int | None) -> float | None:
    """The largest share of one-shot's decisions to the goal that any review could save:
    finding `goal` labels takes at least `goal` decisions (every one an accept)."""
    return None if not shot_reach else 1 - goal / shot_reach


def seed_row(name: str, saved: dict, method: str = "comining", start: str | None = None) -> dict:
    """One loop result (NAME.json) as the issue's targets see it: the loop (with the rest
    of its last queue) against one-shot review of the same round 0's queue."""
    res, shot, meta = saved["loops"][method], saved["one_shot"], saved["meta"]
    n = shot["n_erased"]
    goal = int(np.ceil(TARGET * n))
    whole = res["curve"] + (res.get("finish") or {}).get("curve", [])
    loop_reach, shot_reach = decisions_to(whole, goal), decisions_to(shot["curve"], goal)
    budgets = sorted({r["decisions_total"] for r in res["rounds"]})
    ahead = all(at(res["curve"], b) >= at(shot["curve"], b) for b in budgets)
    fewer = (1 - loop_reach / shot_reach) if loop_reach and shot_reach else None
    seed = meta.get("round0_seed", 0)
    return {"name": name, "seed": seed, "start": start or f"seed {seed}", "commit": meta["commit"],
            "refine_iters": meta.get("iters"), "round0_ap": res["rounds"][0]["val_ap"], "last_ap": res["rounds"][-1]["val_ap"],
            "loop_decisions": loop_reach, "per_label": loop_reach / goal if loop_reach else None,
            "one_shot_decisions": shot_reach, "fewer": fewer, "most_saving": most_saving(goal, shot_reach),
            "ahead_at_every_budget": ahead,
            "targets_met": bool(loop_reach and loop_reach / goal <= MAX_PER_LABEL and ahead
                                and fewer is not None and fewer >= MIN_SAVING)}


def seeds_report(rows: list[dict]) -> list[str]:
    """A table of loop results from several round-0 models (seeds), and how many meet the
    targets on decisions (MAX_PER_LABEL decisions per recovered label; MIN_SAVING fewer than
    one-shot)."""
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    lines = ["# The loop from several round-0 models", "",
             f"One row per loop result (benchmarks/results/NAME.json, method `comining`): round 0 "
             f"trained by the demo's CPU recipe with another seed (the data stay the demo's). "
             f"Decisions to {TARGET:.0%} count the loop's rounds and then the rest of its last queue.",
             "", "| result | round 0's start | commit | refine iterations | round-0 val AP "
             f"| last round val AP | loop: decisions to {TARGET:.0%} | per recovered label | one-shot: decisions to "
             f"{TARGET:.0%} | loop's saving | most any review could save | loop ahead at every budget "
             "| targets met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['start']} | {r['commit']} | "
                     f"{fmt(r.get('refine_iters'), 'd')} | {r['round0_ap']:.3f} | "
                     f"{r['last_ap']:.3f} | {fmt(r['loop_decisions'], 'd')} | "
                     f"{fmt(r['per_label'], '.2f')} | {fmt(r['one_shot_decisions'], 'd')} | "
                     f"{fmt(r['fewer'], '.0%')} | {fmt(r.get('most_saving'), '.0%')} | "
                     f"{'yes' if r['ahead_at_every_budget'] else 'no'} | "
                     f"{'yes' if r['targets_met'] else 'no'} |")
    met = sum(r["targets_met"] for r in rows)
    lines += ["", f"Targets on decisions met from {met} of {len(rows)} round-0 models. \"Most any "
                  f"review could save\": finding {TARGET:.0%} of the labels takes at least that many "
                  f"decisions (all accepts), so where one-shot needs fewer than "
                  f"{1 / (1 - MIN_SAVING):.2f} decisions per label, saving {MIN_SAVING:.0%} is "
                  f"out of any loop's reach.", ""]
    return lines


def loop_settings(recipe: Recipe, iters: int, args) -> dict:
    """What a loop result depends on (its data, round 0, mining and rules), as its meta
    records them: loops are comparable only where these agree."""
    return {"data": args.data, "recipe": recipe.name, "iters": iters,
            "round0_iters": recipe.settings["iters"], "round0_seed": recipe.seed,
            "review_scales": args.review_scales or [1.0], "review_flip": args.review_flip,
            "review_native": args.review_native, "native_max": NATIVE_MAX,
            "stop_below": args.stop_below, "retrain_growth": args.retrain_growth}


def settings_clash(meta: dict, recipe: Recipe, iters: int, args) -> str | None:
    """The first of `loop_settings` in which an earlier result (its meta) differs from
    this run's, by name, or None. A result older than a setting's key had its default."""
    defaults = {"data": "demo", "round0_seed": 0, "retrain_growth": None}
    for key, value in loop_settings(recipe, iters, args).items():
        if meta.get(key, defaults.get(key)) != value:
            return key
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work")
    p.add_argument("--rounds", type=int, default=3, help="refine rounds (default 3)")
    p.add_argument("--iters", type=int,
                   help="iterations of each refine round (default: as many as round 0's, as "
                        "refine's default; 1200 with the CPU recipe)")
    p.add_argument("--recipe", choices=("cpu", "gpu"), default="cpu",
                   help="the demo's recipe round 0 trains by (default cpu: MobileNetV3 at 160 px; "
                        "gpu: ResNet-18 at 256 px); its runs live in their own folders")
    p.add_argument("--device", help="where to train, mine and evaluate (default: cpu for the "
                                    "cpu recipe, cuda for the gpu recipe)")
    p.add_argument("--round0-iters", type=int, metavar="N",
                   help="a shorter round 0 (to try the script out; use its own --work)")
    p.add_argument("--seed", type=int, default=0,
                   help="round 0's training seed (default 0, the demo's; the data stay the "
                        "demo's): the loop's effort depends on round 0's model, so measure "
                        "several, each in its own --work")
    from benchmarks.mining import SETTINGS

    p.add_argument("--data", choices=tuple(SETTINGS), default="demo",
                   help="the generated data (benchmarks/mining.py's SETTINGS; default demo: "
                        "comining demo's; other: 320 px images, 7 classes), in --work/DATA")
    p.add_argument("--methods", nargs="+", default=["comining", "original"])
    p.add_argument("--stop-below", type=float, default=STOP_BELOW,
                   help=f"the oracle's stop rule: the yield of its last {WINDOW} decisions "
                        f"(default {STOP_BELOW})")
    p.add_argument("--retrain-growth", type=float, metavar="F",
                   help="the oracle also retrains once a round's accepts reach F times the labels "
                        "its detector trained on (e.g. 0.25; measured in loop_growth25.md and "
                        "loop_head_growth25.md), not only when the queue stops paying")
    p.add_argument("--name", default="loop", help="results file name (default loop)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--finish", action="store_true",
                   help="after the loop: review the rest of the last queue (finish_last_queue); "
                        "with --report-only, on the loops NAME.json describes")
    p.add_argument("--reestimate", action="store_true",
                   help="with --report-only: recompute each round's estimate with this code "
                        "from the store as the round left it")
    p.add_argument("--review-scales", type=float, nargs="+", metavar="X",
                   help="mine for review at these input sizes (ReviewMining.scales): round 0's "
                        "last checkpoint again, and every refine round")
    p.add_argument("--review-flip", action="store_true",
                   help="also mine the mirrored images for review (ReviewMining.flip)")
    p.add_argument("--review-native", action=argparse.BooleanOptionalAction, default=True,
                   help="also mine at the images' own size when training shrinks them "
                        "(ReviewMining.native; default on, as the product)")
    p.add_argument("--one-shot-from", metavar="NAME",
                   help="reuse the one-shot arm of benchmarks/results/NAME.json (it depends on "
                        "round 0 only) instead of reviewing round 0's whole queue again")
    p.add_argument("--loops-from", metavar="NAME",
                   help="take the loops (and one-shot arm) of benchmarks/results/NAME.json and "
                        "run only --methods beside them: the same data, seed and settings, "
                        "or it refuses (how the loop of one method is added to another's result)")
    p.add_argument("--summary", nargs="+", metavar="NAME[=START]",
                   help="run nothing: tabulate these loop results (NAME.json, one per round-0 "
                        "model; START describes how it started, default its seed) into --name's "
                        ".md and .json")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing (but --finish): rewrite NAME.md from NAME.json")
    args = p.parse_args(argv)
    tag = name_tag(args.name)
    if args.summary:
        rows = []
        for item in args.summary:
            name, _, start = item.partition("=")
            rows.append(seed_row(name, json.loads((args.out / f"{name}.json").read_text()),
                                 start=start or None))
        lines = seeds_report(rows)
        (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
        (args.out / f"{args.name}.json").write_text(json.dumps(rows, indent=1) + "\n")
        print("\n".join(lines))
        return 0
    if args.report_only:
        saved = json.loads((args.out / f"{args.name}.json").read_text())
        setting = saved["meta"].get("data", "demo")
        if args.finish:
            from comining.fileio import read_json
            hidden = read_json(args.work / setting / "data" / "annotations" / "train_hard_hidden.json")
            for method, res in saved["loops"].items():
                if not res.get("finish"):
                    res["finish"] = finish_last_queue(args.work / f"loop_{method}{tag}" / "run", hidden)
        if args.reestimate:
            from comining.fileio import read_json
            hidden = read_json(args.work / setting / "data" / "annotations" / "train_hard_hidden.json")
            for method, res in saved["loops"].items():
                reestimate(args.work / f"loop_{method}{tag}" / "run", res["rounds"], hidden)
            saved["meta"]["estimates"] = f"recomputed at commit {git_commit()}"
        if args.finish or args.reestimate:
            (args.out / f"{args.name}.json").write_text(json.dumps(saved, indent=1) + "\n")
        lines = report(saved["loops"], saved["one_shot"], saved["meta"])
        (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0
    recipe = Recipe(args.recipe, args.device or ("cuda" if args.recipe == "gpu" else "cpu"),
                    args.round0_iters, args.seed, args.data)
    iters = args.iters or recipe.settings["iters"]
    args.work.mkdir(parents=True, exist_ok=True)
    # round 0's last checkpoint is always mined again, with this code's mining and the
    # options: the reused round-0 runs may have been mined by other settings
    review = {"native": args.review_native} | {k: v for k, v in (
        ("scales", tuple(args.review_scales or ())), ("flip", args.review_flip)) if v}
    loops, shot, loops_from = {}, None, None
    if args.one_shot_from:
        shot = json.loads((args.out / f"{args.one_shot_from}.json").read_text())["one_shot"]
    if args.loops_from:
        earlier = json.loads((args.out / f"{args.loops_from}.json").read_text())
        clash = settings_clash(earlier["meta"], recipe, iters, args)
        if clash:
            p.error(f"{args.loops_from}.json was measured with another {clash}")
        loops = {m: res for m, res in earlier["loops"].items() if m not in args.methods}
        shot = shot or earlier["one_shot"]
        loops_from = {"name": args.loops_from, "methods": list(loops),
                      "commit": earlier["meta"]["commit"], "when": earlier["meta"]["when"],
                      "estimates": earlier["meta"].get("estimates")}
    t0 = time.perf_counter()
    for method in args.methods:
        data, run0 = round0_run(method, args.work, recipe)
        if shot is None and method == "comining":
            shot = one_shot(data, run0, args.work, review, folder=f"one_shot{recipe.suffix}",
                            device=recipe.device)
        loops[method] = run_loop(method, data, run0, args.work, rounds=args.rounds, iters=iters,
                                 stop_below=args.stop_below, tag=tag, review=review,
                                 device=recipe.device, retrain_growth=args.retrain_growth)
        if args.finish:
            from comining.fileio import read_json
            hidden = read_json(data / "annotations" / "train_hard_hidden.json")
            loops[method]["finish"] = finish_last_queue(args.work / f"loop_{method}{tag}" / "run",
                                                        hidden)
    if shot is None:
        data, run0 = round0_run("comining", args.work, recipe)
        shot = one_shot(data, run0, args.work, review, folder=f"one_shot{recipe.suffix}",
                        device=recipe.device)
    meta = {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": git_commit(), "hardware": hardware(recipe.device),
            "setting": f"{SETTINGS[args.data]['what']}, hard split, " + recipe.describe(),
            **loop_settings(recipe, iters, args),
            "one_shot_review": None if review is None else not args.one_shot_from,
            "one_shot_from": args.one_shot_from or (loops_from or {}).get("name"),
            "loops_from": loops_from,
            "window": WINDOW, "wall_s": round(time.perf_counter() - t0)}
    lines = report(loops, shot, meta)
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "loops": loops, "one_shot": shot},
                                                   indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
