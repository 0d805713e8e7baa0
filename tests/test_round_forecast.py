"""How long a new round would take (comining.rounds.forecast_round): the run's latest
training speed from metrics.jsonl and its latest mining time from the store, shown by the
app before the annotator presses Retrain and printed by `comining refine`."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from comining import rounds, store
from comining.checkpoints import checkpoint_path
from conftest import seconds_run_config


def _run(tmp_path, small_dataset, *, speeds=(), mined_after=None):
    """A run folder whose round 0 is 120 iterations of 2 images, checkpoints every 50
    (50, 100, 120); `speeds`: the img_s of its logged steps, oldest first; `mined_after`:
    {iteration: seconds from the checkpoint's file to its row in the store}."""
    run = tmp_path / "run"
    run.mkdir()
    seconds_run_config(small_dataset, run, iters=120, checkpoint_every=50).save(run / "config.json")
    with open(run / "metrics.jsonl", "w") as f:
        for k, v in enumerate(speeds):
            f.write(json.dumps({"iteration": 10 * (k + 1), "loss": 1.0, "img_s": v}) + "\n")
    conn = store.connect(run / store.STORE_NAME, create=True)
    saved = 1_700_000_000.0
    for it, gap in (mined_after or {}).items():
        path = checkpoint_path(run, it)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"weights")
        os.utime(path, (saved, saved))
        store.replace_checkpoint_candidates(conn, iteration=it, path=str(path), thresholds={"score_thresh": 0.05, "nms_iou": 0.5, "gt_iou": 0.5},
                                            candidates=[])
        mined = datetime.fromtimestamp(saved + gap, timezone.utc).isoformat()
        conn.execute("UPDATE checkpoints SET mined_at = ? WHERE iteration = ?", (mined, it))
        conn.commit()
        saved += 1000.0
    conn.close()
    return run


def test_the_forecast_times_a_round_at_the_runs_latest_speed_and_mining_time(tmp_path, small_dataset):
    # an older, faster machine first; the latest 10 steps ran at a median 4 images/s
    latest = (3, 4, 4, 5, 4, 4, 3, 5, 4, 4)
    # checkpoints are written 1,000 s apart: 20 and 50 were mined in 40 s as the run
    # trained; 100 was mined again after 120 was written (`comining mine`, not the engine),
    # and nothing tells whether the last one (120) was: neither is a sample
    run = _run(tmp_path, small_dataset, speeds=(100,) * 5 + latest,
               mined_after={20: 40, 50: 40, 100: 5000, 120: 4000})
    f = rounds.forecast_round(run)
    assert (f.iters, f.n_checkpoints) == (120, 3)            # 50, 100 and the round's end
    assert f.img_s == 4
    assert f.train_s == 120 * 2 / 4
    assert f.mine_s == 40
    assert f.total_s == 60 + 3 * 40
    assert f.line() == ("A new round (120 iterations, 3 checkpoints mined) takes about 3 min "
                        "here: 60 s of training at 4.0 images/s (the run's latest speed) and "
                        "about 40 s of mining per checkpoint.")
    shorter = rounds.forecast_round(run, iters=100, checkpoint_every=25)
    assert (shorter.iters, shorter.n_checkpoints, shorter.train_s) == (100, 4, 50)


def test_a_rounds_last_checkpoint_is_no_sample_even_when_the_next_round_follows_its_mining(
        tmp_path, small_dataset):
    """The loop benchmark's case: round 0's last checkpoint (120) is mined again (900 s after
    its file), then round 1 trains 240 and is mined, then round 2 trains 360. Both rounds'
    last checkpoints were mined before the next file was written, but the gap holds the
    time the annotator took to start the next round, not mining: only 20's 40 s tells."""
    run = _run(tmp_path, small_dataset, speeds=(4,),
               mined_after={20: 40, 50: 5000, 100: 5000, 120: 900, 240: 800, 360: 30})
    conn = store.connect(run / store.STORE_NAME)
    for n, (start, end) in enumerate([(120, 240), (240, 360)], 1):
        store.add_round(conn, round=n, start_iteration=start, end_iteration=end, targets="[]",
                        rejected="[]", decision_ids=[], n_accepted=0, n_rejected=0)
    conn.close()
    assert rounds.forecast_round(run).mine_s == 40


def test_a_run_that_has_not_trained_or_mined_yet_says_so_instead_of_a_time(tmp_path, small_dataset):
    run = _run(tmp_path, small_dataset)
    f = rounds.forecast_round(run)
    assert f.train_s is None and f.mine_s is None and f.total_s is None
    assert f.line() == ("A new round (120 iterations, 3 checkpoints mined): no training speed "
                        "logged yet to time it.")
    (run / "metrics.jsonl").write_text(json.dumps({"iteration": 10, "img_s": 8.0}) + "\n")
    assert rounds.forecast_round(run).line() == (
        "A new round (120 iterations, 3 checkpoints mined) takes at least 30 s here: 30 s of "
        "training at 8.0 images/s (the run's latest speed), plus its mining (not timed yet).")


def test_checkpoints_of_a_round_follow_the_engines_rule():
    assert rounds.checkpoints_in(120, 50) == 3      # 50, 100, 120
    assert rounds.checkpoints_in(100, 50) == 2      # 50, 100
    assert rounds.checkpoints_in(30, 50) == 1       # the end only
