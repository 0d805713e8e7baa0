"""`comining demo`, the README's main job, end to end on a shortened schedule."""

from __future__ import annotations

import json

from conftest import run_cli


def test_demo_runs_every_step_reports_mining_and_reuses_what_is_done(tmp_path):
    out = tmp_path / "demo"
    first = run_cli("demo", "--out", out, "--iters", "1", "--device", "cpu", "--no-review",
                    timeout=900)
    assert first.returncode == 0, first.stderr
    for step in ("[1/4] generating", "[2/4] hard split", "[3/4] training co-mining", "[4/4] done"):
        assert step in first.stdout, first.stdout
    summary = json.loads((out / "summary.json").read_text())
    hidden = json.loads((out / "data" / "annotations" / "train_hard_hidden.json").read_text())
    assert [r["iteration"] for r in summary["checkpoints"]] == [1]
    for r in summary["checkpoints"]:
        # every checkpoint scored against the labels the split erased
        assert r["union"]["n_erased"] == len(hidden["annotations"]) > 0
        assert r["union"]["n_mined"] >= r["agreed"]["n_mined"]
        assert f"checkpoint {r['iteration']}:" in first.stdout

    again = run_cli("demo", "--out", out, "--iters", "1", "--device", "cpu", "--no-review")
    assert again.returncode == 0, again.stderr
    assert "dataset already in" in again.stdout and "run already trained" in again.stdout
    assert json.loads((out / "summary.json").read_text()) == summary
