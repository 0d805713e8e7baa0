"""When co-generation should start: the demo's CPU recipe trained with co-generation from
iteration 0 (the paper's) and from later iterations, over several seeds, on the demo's data.

Trained from scratch at the recipe's learning rate, the detector scores hundreds of boxes
above the co-generation threshold in its first steps; they become full-weight targets of
the other view. This measures what starting co-generation later does to the detector (val
AP at the last checkpoint) and how many pseudo boxes each run trained on.

  python benchmarks/cogeneration_from.py --work DIR --starts 0 100 --seeds 0 1 2
      # about 9 minutes a run on 2 CPU cores; finished runs in DIR are reused

Writes benchmarks/results/cogeneration_from.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import cpu_name, git_commit  # noqa: E402


def trained_run(data: Path, work: Path, start: int, seed: int) -> Path:
    """The demo's CPU recipe on `data`, co-generation from iteration `start` (no review
    mining), trained in WORK/from<start>_seed<seed> unless it is there already."""
    from comining.checkpoints import list_checkpoints
    from comining.cli.demo import CPU_SETTINGS
    from comining.config import TrainConfig
    from comining.engine import train

    run = work / f"from{start}_seed{seed}"
    settings = dict(CPU_SETTINGS, checkpoint_every=CPU_SETTINGS["iters"])
    config = TrainConfig(images=str(data / "images"), ann=str(data / "annotations" / "train_hard.json"),
                         run=str(run), method="comining", weights_backbone="none", device="cpu",
                         seed=seed, num_workers=1, log_every=10, mine=False,
                         cogeneration_from=start, **settings)
    done = list_checkpoints(run)
    if not done or done[-1][0] < config.iters:
        print(f"training co-generation from {start}, seed {seed} in {run}", flush=True)
        train(config, resume=bool(done), progress=False)
    return run


def measure(data: Path, run: Path) -> dict:
    from benchmarks.loop import val_ap
    from comining.checkpoints import list_checkpoints
    from comining.training_log import METRICS_FILE, read_metrics

    last = list_checkpoints(run)[-1][0]
    rows = read_metrics(run / METRICS_FILE)
    early = [r for r in rows if r["iteration"] <= 50]
    return {"val_ap": round(val_ap(run, data, last), 3),
            "final_loss": round(rows[-1]["loss"], 3),
            "peak_loss_first_50": round(max(r["loss"] for r in early), 3) if early else None,
            # logged every 10th step: pseudo boxes of those steps only
            "pseudo_logged": sum(r.get("pseudo_original", 0) + r.get("pseudo_augmented", 0) for r in rows)}


def report(rows: list[dict], meta: dict) -> list[str]:
    starts = sorted({r["start"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["start"], r["seed"]): r for r in rows}
    lines = ["# When co-generation starts (the demo's CPU recipe)", "",
             f"{meta['when']}, commit {meta['commit']}, {meta['hardware']}; the demo's data (hard "
             f"split), FCOS MobileNetV3 at 160 px from scratch, 1,200 iterations, no review mining. "
             f"Val AP of the last checkpoint (COCO AP on the 60 val images).", "",
             "| co-generation from | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | min |",
             "|---|" + "---|" * (len(seeds) + 2)]
    for start in starts:
        aps = [by[(start, s)]["val_ap"] for s in seeds if (start, s) in by]
        cells = [f"{by[(start, s)]['val_ap']:.3f}" if (start, s) in by else "-" for s in seeds]
        lines.append(f"| {start} | " + " | ".join(cells)
                     + f" | {statistics.mean(aps):.3f} | {min(aps):.3f} |")
    lines += ["", "| co-generation from | seed | val AP | final loss | peak loss, steps 1-50 "
                  "| pseudo boxes (logged steps) |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["start"], r["seed"])):
        lines.append(f"| {r['start']} | {r['seed']} | {r['val_ap']:.3f} | {r['final_loss']:.3f} | "
                     f"{r['peak_loss_first_50']} | {r['pseudo_logged']} |")
    return lines + [""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "cogeneration_from")
    p.add_argument("--starts", type=int, nargs="+", default=[0, 100])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="cogeneration_from")
    args = p.parse_args(argv)
    from benchmarks.mining import SETTINGS, prepare

    args.work.mkdir(parents=True, exist_ok=True)
    paths = prepare("demo", SETTINGS["demo"], args.work, train_missing=False)
    data = paths["sparse"].parents[1]
    t0 = time.perf_counter()
    rows = []
    for start in args.starts:
        for seed in args.seeds:
            run = trained_run(data, args.work, start, seed)
            rows.append({"start": start, "seed": seed, **measure(data, run)})
            print(json.dumps(rows[-1]), flush=True)
    meta = {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
            "hardware": f"{cpu_name()}, CPU only", "wall_s": round(time.perf_counter() - t0)}
    lines = report(rows, meta)
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
