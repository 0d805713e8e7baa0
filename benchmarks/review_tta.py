"""Test-time mining for review, one-shot: what round 0's queue holds when the checkpoint
is mined plain, mirrored too (--review-flip), at a second size (--review-scales 1 1.6),
and both.

The demo's round-0 run (benchmarks/loop.py's, reused) is copied and its last checkpoint
mined again each way; the loop benchmark's oracle then reviews the whole queue in order
(no stop rule, no retraining). Per way: the mining's wall time, the erased labels the
queue holds at all, those found after 300/600/900/1200 decisions, and the decisions that
reach 90 % of them.

  python benchmarks/review_tta.py [--work DIR]     # about 20 minutes on 2 CPU cores shared with other jobs

Writes benchmarks/results/review_tta.md and review_tta.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import cpu_name, git_commit  # noqa: E402
from benchmarks.loop import TARGET, at, decisions_to, one_shot, round0_run  # noqa: E402

WAYS = {    # name -> ReviewMining changes (the empty change mines again by default)
    "plain (default)": {},
    "mirrored too (--review-flip)": {"flip": True},
    "1x and 1.6x (--review-scales 1 1.6)": {"scales": (1.0, 1.6)},
    "1x and 1.6x, mirrored too": {"scales": (1.0, 1.6), "flip": True},
}
BUDGETS = (300, 600, 900, 1200)


def report(rows: list[dict], meta: dict) -> list[str]:
    n = rows[0]["n_erased"]
    goal = int(-(-TARGET * n // 1))
    lines = ["# Test-time mining for review (one-shot, round 0)", "",
             f"{meta['when']}, commit {meta['commit']}, {meta['hardware']}; {meta['setting']}. "
             f"The oracle reviews round 0's whole queue in order; {n} erased labels, 90 % = {goal}. "
             f"Mining time is wall time on a machine {meta['load']}.", "",
             "| mined | mining time | passes | erased labels in the queue | "
             + " | ".join(f"found after {b}" for b in BUDGETS) + " | decisions to 90 % |",
             "|---" * (5 + len(BUDGETS)) + "|"]
    for r in rows:
        to90 = decisions_to(r["curve"], goal)
        lines.append(f"| {r['way']} | {r['mine_s']:.0f} s | {r['passes']} | {r['curve'][-1]} | "
                     + " | ".join(str(at(r["curve"], b)) for b in BUDGETS)
                     + f" | {to90 if to90 is not None else 'never'} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--load", default="shared with other jobs",
                   help="how loaded the machine was, for the report (default: shared with other jobs)")
    args = p.parse_args(argv)
    data, run0 = round0_run("comining", args.work)
    rows = []
    for k, (way, changes) in enumerate(WAYS.items()):
        shot = one_shot(data, run0, args.work, changes, folder=f"review_tta_{k}")
        passes = len(changes.get("scales", (1.0,))) * (2 if changes.get("flip") else 1)
        rows.append({"way": way, "changes": {c: list(v) if isinstance(v, tuple) else v
                                             for c, v in changes.items()},
                     "passes": passes, **shot})
        print(f"{way}: mined in {shot['mine_s']} s, {shot['curve'][-1]} erased labels in the queue",
              flush=True)
    meta = {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": git_commit(), "hardware": f"{cpu_name()}, CPU only", "load": args.load,
            "setting": "comining demo's data (300 images 256 px, 4 classes), hard split, "
                       "FCOS MobileNetV3 trained at 160 px (the demo's CPU recipe), its "
                       "round-0 checkpoint (1200 iterations)"}
    lines = report(rows, meta)
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "review_tta.md").write_text("\n".join(lines) + "\n")
    (args.out / "review_tta.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
