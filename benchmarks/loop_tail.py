"""What is left after the loop's rounds: the erased labels its last queue still holds.

Reads finished loop runs of `benchmarks/loop.py` (their stores as each round left them,
LOOP_DIR/round<N>.sqlite) and the demo's erased labels, and asks four questions about the
labels still unfound after the last round:

  1. scores: does retraining push them down (they train as background) or up? The best
     score of an object on each of them (IoU >= 0.5, any class) at every round's checkpoint;
  2. head: what the last queue's head holds besides them (clutter, parts of labelled
     objects, poorly placed boxes on a missing object);
  3. rejections: how many of them have an object in the last queue that a rejected box
     hides (the queue never proposes a box at IoU >= 0.5 with a rejected one);
  4. ranking: would a ranking learnt from the annotator's decisions (the decided objects'
     scores, size and class) order the last queue better than the detector's score?
     Decisions to the 90 % goal walking the queue in each order.

  python benchmarks/loop_tail.py --work /work/runs_native --loops loop --name loop_tail
  python benchmarks/loop_tail.py --loops loop=/w0 loop_seed1=/w1 ...   # NAME=WORK each

Writes benchmarks/results/NAME.md.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loop as L  # noqa: E402  (the loop benchmark's oracle and goal)

from comining import review  # noqa: E402
from comining.boxes import iou_matrix  # noqa: E402
from comining.fileio import read_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HEAD = 100          # the last queue's head examined in question 2


def snapshot(loop_dir: Path, n: int):
    """A run folder holding the store as round n left it."""
    return L.round_snapshot(loop_dir / "run", n)


def last_round(loop_dir: Path) -> int:
    return max(int(p.stem[len("round"):]) for p in loop_dir.glob("round*.sqlite"))


def checkpoint_objects(run: Path) -> tuple[int, dict]:
    """(last checkpoint, image id -> [(xywh, score)]) of a snapshot."""
    r = review.open_run(run)
    try:
        it = r.conn.execute("SELECT MAX(iteration) FROM checkpoints").fetchone()[0]
        out = defaultdict(list)
        for o in r.conn.execute("SELECT image_id, x, y, w, h, score FROM objects "
                                "WHERE checkpoint = ?", (it,)):
            out[o[0]].append(((o[1], o[2], o[3], o[4]), o[5]))
        return it, out
    finally:
        r.close()


def scores_by_round(loop_dir: Path, oracle: L.Oracle, last: int) -> list[dict]:
    """Question 1: the unfound labels' best object score at each round's checkpoint."""
    unfound = [(im, lab[2]) for im, labs in oracle.labels.items() for lab in labs
               if lab[0] not in oracle.found]
    rows = []
    for n in range(last + 1):
        with snapshot(loop_dir, n) as run:
            it, objs = checkpoint_objects(run)
        best = []
        for im, box in unfound:
            o = objs.get(im, [])
            iou = iou_matrix([box], [b for b, _ in o])[0] if o else np.zeros(0)
            hits = [s for (_, s), v in zip(o, iou) if v >= L.MATCH_IOU]
            if hits:
                best.append(max(hits))
        rows.append({"round": n, "checkpoint": it, "with_object": len(best), "unfound": len(unfound),
                     "median": float(np.median(best)) if best else None})
    return rows


def head_mix(items: list, oracle: L.Oracle, labelled: dict) -> Counter:
    """Question 2: the queue's first HEAD pending objects by what they lie on."""
    kinds = Counter()
    for it in items[:HEAD]:
        unfound = [lab[2] for lab in oracle.labels.get(it.image_id, ()) if lab[0] not in oracle.found]
        if oracle.match(it.image_id, it.box):
            kinds["an unfound label"] += 1
        elif unfound and iou_matrix([it.box], unfound).max() >= 0.1:
            kinds["near an unfound label (IoU 0.1-0.5)"] += 1
        elif labelled.get(it.image_id) and iou_matrix([it.box], labelled[it.image_id]).max() >= 0.1:
            kinds["on or near a labelled object"] += 1
        else:
            kinds["clutter (IoU < 0.1 with any object)"] += 1
    return kinds


def hidden_by_rejections(run: Path, oracle: L.Oracle, objs: dict) -> int:
    """Question 3: unfound labels whose every object (IoU >= 0.5) a rejected box covers."""
    r = review.open_run(run)
    try:
        rejected = defaultdict(list)
        for d in review.effective_decisions(r.conn):
            if d.decision == "rejected":
                rejected[d.image_id] += d.boxes
    finally:
        r.close()
    n = 0
    for im, labs in oracle.labels.items():
        for lab in labs:
            if lab[0] in oracle.found:
                continue
            on = [b for b, _ in objs.get(im, []) if iou_matrix([lab[2]], [b])[0, 0] >= L.MATCH_IOU]
            if on and rejected.get(im) and all(
                    iou_matrix([b], rejected[im]).max() >= review.IOU_SAME for b in on):
                n += 1
    return n


def features(o) -> list[float]:
    """An object row's features for a learnt ranking."""
    def logit(s):
        s = min(max(float(s), 1e-4), 1 - 1e-4)
        return float(np.log(s / (1 - s)))
    return [logit(o["score"]), logit(o["score_original"]), logit(o["score_augmented"]),
            float(o["view"] == "both"), float(np.log(max(o["w"] * o["h"], 1.0))),
            float(np.log(max(o["w"], 1.0) / max(o["h"], 1.0))), float(o["on_label"] is not None),
            *[float(o["category_id"] == c) for c in range(1, 5)]]


def ranking_cost(run: Path, oracle: L.Oracle, items: list, goal: int) -> dict:
    """Question 4: decisions to the goal down the last queue, by score and by rankings
    fit on the decided objects (every checkpoint's)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    r = review.open_run(run)
    try:
        rows = {o["id"]: o for o in r.conn.execute("SELECT * FROM objects")}
        decided = [(rows[d.object_id], d.decision == "accepted")
                   for d in review.effective_decisions(r.conn) if d.object_id in rows]
    finally:
        r.close()
    x = np.array([features(o) for o, _ in decided])
    y = np.array([a for _, a in decided])
    pending = np.array([features(rows[it.id]) for it in items])

    def walk(order) -> int | None:
        o = copy.deepcopy(oracle)
        for n, i in enumerate(order, 1):
            hit = o.match(items[i].image_id, items[i].box)
            if hit:
                o.found.add(hit[0])
            if len(o.found) >= goal:
                return n
        return None

    out = {"score": walk(range(len(items)))}
    models = {"logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
              "boosted trees": HistGradientBoostingClassifier(random_state=0)}
    for name, model in models.items():
        p = model.fit(x, y).predict_proba(pending)[:, 1]
        out[name] = walk(np.argsort(-p, kind="stable"))
    return out


def study(name: str, work: Path) -> dict:
    loop_dir = work / f"loop_comining{L.name_tag(name)}"
    data = work / "demo" / "data" / "annotations"
    hidden = read_json(data / "train_hard_hidden.json")
    sparse = read_json(data / "train_hard.json")
    last = last_round(loop_dir)
    with snapshot(loop_dir, last) as run:
        oracle = L.oracle_of(run, hidden)
        it, objs = checkpoint_objects(run)
        r = review.open_run(run)
        try:
            items = review.queue_items(r, it)
        finally:
            r.close()
        labelled = defaultdict(list)
        for a in sparse["annotations"] + hidden["annotations"]:
            labelled[a["image_id"]].append(a["bbox"])
        goal = int(np.ceil(L.TARGET * oracle.n))
        return {"name": name, "last_round": last, "found": len(oracle.found), "goal": goal,
                "scores": scores_by_round(loop_dir, oracle, last),
                "head": head_mix(items, oracle, labelled),
                "hidden": hidden_by_rejections(run, oracle, objs),
                "ranking": ranking_cost(run, oracle, items, goal)}


def report(results: list[dict]) -> list[str]:
    lines = ["# What the loop's last queue still holds", "",
             "Erased labels still unfound after the loop's last round (benchmarks/loop_tail.py).", "",
             "| loop | found after the last round | best score on them: median at each round "
             "(how many have an object) | last queue's first 100 pending objects | hidden by a "
             "rejection | decisions to 90 %: by score / logistic / boosted trees |",
             "|---|---|---|---|---|---|"]
    for r in results:
        med = ", ".join(f"{s['median']:.2f} ({s['with_object']})" if s["median"] is not None
                        else "- (0)" for s in r["scores"])
        head = ", ".join(f"{k}: {v}" for k, v in r["head"].most_common())
        rank = " / ".join("-" if v is None else str(v) for v in r["ranking"].values())
        unfound = r["scores"][0]["unfound"]
        lines.append(f"| {r['name']} | {r['found']} (goal {r['goal']}; {unfound} unfound) | {med} "
                     f"| {head} | {r['hidden']} | {rank} |")
    return lines + [""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, help="the loop benchmark's --work for NAMEs without =WORK")
    p.add_argument("--loops", nargs="+", required=True, metavar="NAME[=WORK]")
    p.add_argument("--name", default="loop_tail")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    results = []
    for item in args.loops:
        name, _, work = item.partition("=")
        results.append(study(name, Path(work) if work else args.work))
    lines = report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
