"""The loop's rounds: what a `comining refine` round trains on, and starting or resuming one.

Round 0 trains on the input annotations (`comining train`). Each refine round r >= 1
continues the same run from its last mined checkpoint S for N more iterations, its
checkpoints numbered on (S + K, S + 2K, ... S + N) and mined for review like round 0's
(even when round 0 was trained with --no-mine and mined by hand):

- targets: the input annotations plus every standing accepted decision (its edited box
  and class where edited, and the boxes drawn by hand), merged as export merges them,
  written to RUN/rounds/round_<r>/targets.json (the input files are never touched);
- known background: every standing rejected decision's box, in
  RUN/rounds/round_<r>/rejected.json; co-generation never turns a detection at IoU >= 0.5
  with one (any class) into a pseudo box for either view, and review never proposes such
  an object again (a decision covers every later object it overlaps at IoU >= 0.5);
- mining for review: the previous round's settings (ReviewMining), or those given to
  this round (`refine --review-flip`, ...), which the rounds after it inherit;
- schedule: the weights of checkpoint S; SGD's momentum and the learning-rate schedule
  start afresh (a warm-up, then the paper's two x0.1 steps at 2/3 and 8/9 of the round).
  Round 0 ended at 1 % of the base rate, where the accepted boxes would barely move the
  weights; a warm restart at the base rate (as SGDR) lets them, and the momentum held
  gradients of targets that have since changed.

The store's `rounds` table records each round with the decisions it trained on; export,
review, `evaluate` and `candidates` see every round's checkpoints. A killed round resumes
bit-identically with `refine --resume` (training's own resume, from the round's last
checkpoint); a new round cannot start before the last one has finished.

When to retrain: when the queue stops paying. The app suggests it once fewer than half
of the annotator's latest 30 decisions on a checkpoint were accepts and some decisions
are not trained on yet (`retrain_advice`). In the loop benchmark (benchmarks/loop.py),
retraining at that point found more per decision than going on down the same queue:
round 1's first 77 decisions accepted 69 %, the round-0 queue's next 77 decisions 47 %.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

from comining import status, store
from comining.config import TrainConfig
from comining.errors import InputError
from comining.fileio import atomic_write_json
from comining.training_log import METRICS_FILE, read_metrics

ROUNDS_DIR = "rounds"
RETRAIN_WINDOW = 30     # the latest decisions on a checkpoint ...
RETRAIN_BELOW = 0.5     # ... accepted less often than this: the queue stopped paying


def retrain_advice(n_recent: int, n_accepted: int, n_untrained: int) -> str | None:
    """The suggestion to retrain, from the latest decisions on the checkpoint under
    review (n_recent of them, at most RETRAIN_WINDOW, n_accepted accepted) and the
    decisions no round has trained on yet; None while the queue still pays."""
    if n_recent < RETRAIN_WINDOW or n_untrained == 0 or n_accepted >= RETRAIN_BELOW * n_recent:
        return None
    return (f"**Time to retrain?** Only {n_accepted} of your last {n_recent} decisions here "
            f"were accepts: this queue has stopped paying. Retrain with your decisions "
            f"({n_untrained} not trained on yet): the retrained detector ranks higher what this "
            f"one ranked low.")


def round_dir(run_dir, n: int) -> Path:
    return Path(run_dir) / ROUNDS_DIR / f"round_{n:03d}"


@dataclass
class RoundTargets:
    annotations: dict          # the input COCO dict enlarged by the accepted boxes
    rejected: list[dict]       # [{image_id, bbox [x, y, w, h]}]: known background
    decision_ids: list[int]    # the standing decisions these come from
    n_accepted: int
    n_rejected: int


def round_targets(run) -> RoundTargets:
    """What the next round trains on, from the run's standing decisions (a review.Run)."""
    from comining import review
    from comining.export import build_enlarged, collect, merge_duplicates
    from comining.fileio import read_json

    if run.ann_path is None:
        raise InputError(run.store_path, "the run does not record its input annotation file")
    with store.snapshot(run.conn):
        accepted, rejected = collect(run, accept="reviewed")
        ids = [d.id for d in review.effective_decisions(run.conn)]
    merged = merge_duplicates(accepted)
    enlarged = build_enlarged(read_json(run.ann_path), merged)
    background = [{"image_id": r["image_id"], "bbox": r["bbox"]} for r in rejected]
    return RoundTargets(enlarged, background, ids, len(merged), len(background))


@dataclass
class RoundState:
    last_round: int            # 0 when no refine round was started
    finished: bool             # its last checkpoint is mined
    last_checkpoint: int | None  # the last mined checkpoint
    row: dict | None           # the last round's store row


def round_state(run_dir) -> RoundState:
    conn = store.connect(Path(run_dir) / store.STORE_NAME)
    try:
        rows = [dict(r) for r in store.rounds(conn)]
        mined = [r["iteration"] for r in store.checkpoints(conn)]
    finally:
        conn.close()
    last = rows[-1] if rows else None
    return RoundState(last_round=last["round"] if last else 0,
                      finished=last is None or last["end_iteration"] in mined,
                      last_checkpoint=mined[-1] if mined else None, row=last)


def refine(run_dir, *, iters: int | None = None, checkpoint_every: int | None = None,
           resume: bool = False, progress: bool = True, before_training=None,
           review_changes: dict | None = None) -> TrainConfig:
    """Start the run's next round (or, with resume, finish a killed one) and train it.
    Its mining for review is the previous round's (ReviewMining), with the fields in
    `review_changes` changed. `before_training(config)` is called once the round is recorded.
    Returns its config."""
    from comining import review
    from comining.checkpoints import list_checkpoints, load_run_config
    from comining.engine import train

    run_dir = Path(run_dir)
    base = load_run_config(run_dir)
    now = status.read(run_dir)
    if now and now["alive"]:
        raise InputError(run_dir, f"the run is training now ({status.describe(now, icon=False)}, "
                                  f"process {now['pid']}): refine once it has finished")
    state = round_state(run_dir)
    if not state.finished:
        n = state.last_round
        if not resume:
            raise InputError(run_dir, f"round {n} was stopped before its end (iteration "
                                      f"{state.row['end_iteration']}): add --resume to finish it "
                                      f"first")
        if review_changes:
            raise InputError(run_dir, f"round {n} resumes with its own mining settings; give "
                                      f"--review-* options to the next round")
        # mined, as every round is (one recorded by an older comining after a --no-mine
        # round 0 was not): resuming mines the checkpoint the round is stuck on
        config = dataclasses.replace(TrainConfig.load(round_dir(run_dir, n) / "config.json"),
                                     mine=True)
    else:
        if resume:
            raise InputError(run_dir, "no stopped round to resume; run refine without --resume "
                                      "to start the next round")
        config = _new_round(run_dir, base, state, iters, checkpoint_every, list_checkpoints(run_dir))
        config.review = dataclasses.replace(_previous_review(run_dir, base, state),
                                            **(review_changes or {}))
        config.review.validate()
        run = review.open_run(run_dir)
        try:
            targets = round_targets(run)
        finally:
            run.close()
        folder = round_dir(run_dir, config.round)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "targets.json", targets.annotations)
        atomic_write_json(folder / "rejected.json", {"comining": "rejected boxes",
                                                     "rejected": targets.rejected})
        config.save(folder / "config.json")
        conn = store.connect(run_dir / store.STORE_NAME)
        try:
            store.add_round(conn, round=config.round, start_iteration=config.round_start,
                            end_iteration=config.iters, targets=config.ann,
                            rejected=config.rejected, decision_ids=targets.decision_ids,
                            n_accepted=targets.n_accepted, n_rejected=targets.n_rejected)
        finally:
            conn.close()
    if before_training:
        before_training(config)
    train(config, resume=not state.finished, progress=progress)
    return config


def _previous_review(run_dir: Path, base: TrainConfig, state: RoundState):
    """The mining for review of the run's last round (round 0's: the run's config)."""
    if state.last_round == 0:
        return base.review
    return TrainConfig.load(round_dir(run_dir, state.last_round) / "config.json").review


def _new_round(run_dir: Path, base: TrainConfig, state: RoundState, iters, checkpoint_every,
               checkpoints: list) -> TrainConfig:
    if not checkpoints:
        raise InputError(run_dir, "this run has no checkpoint yet: train it first")
    start = checkpoints[-1][0]
    if state.last_checkpoint != start:
        how = ("comining mine --run RUN" if not base.mine else "comining train --resume")
        raise InputError(run_dir, f"checkpoint {start} is not mined yet, so there is no review "
                                  f"to learn from: mine it first ({how})")
    if state.last_round == 0 and start < base.iters:
        raise InputError(run_dir, f"training stopped at iteration {start} of {base.iters}: "
                                  f"finish it first (comining train --resume)")
    n = state.last_round + 1
    length, every = round_plan(base, iters, checkpoint_every)
    folder = round_dir(run_dir, n)
    return dataclasses.replace(
        base, run=str(run_dir), ann=str((folder / "targets.json").resolve()), iters=start + length,
        checkpoint_every=every, round=n, round_start=start,
        rejected=str((folder / "rejected.json").resolve()), warmup_iters=None, init=None,
        init_keep_classes=False,
        # a round exists to be reviewed: mined even when round 0 was not (--no-mine), or
        # the next round would find its last checkpoint unmined
        mine=True)


def round_plan(base: TrainConfig, iters: int | None = None,
               checkpoint_every: int | None = None) -> tuple[int, int]:
    """(iterations, checkpoint interval) of a new round of a run whose round 0 is `base`."""
    # As long as the first training: measured from three round-0 starts (benchmarks/results/
    # loop_seeds.md), half as long needed up to 1.40 decisions per label found, this 1.30.
    length = iters if iters is not None else base.iters
    every = checkpoint_every if checkpoint_every is not None else min(base.checkpoint_every, length)
    if length < 1 or every < 1:
        raise InputError(None, "--iters and --checkpoint-every must be at least 1")
    return length, every


def checkpoints_in(length: int, every: int) -> int:
    """How many checkpoints a round of `length` iterations saves and mines: every `every`
    iterations and at its end (the engine's rule)."""
    return len(set(range(every, length + 1, every)) | {length})


SPEED_STEPS = 10        # the run's latest logged steps give its training speed
MINING_SAMPLES = 3      # ... and its latest mined checkpoints its mining time


@dataclass(frozen=True)
class RoundForecast:
    """How long a new round would take on this machine, from what the run measured."""

    iters: int
    n_checkpoints: int
    train_s: float | None       # None: no logged speed yet
    mine_s: float | None        # per checkpoint; None: no mining timed yet
    img_s: float | None = None

    @property
    def total_s(self) -> float | None:
        if self.train_s is None:
            return None
        return self.train_s + self.n_checkpoints * (self.mine_s or 0.0)

    def line(self) -> str:
        what = f"A new round ({self.iters:,} iterations, {self.n_checkpoints} checkpoints mined)"
        if self.train_s is None:
            return f"{what}: no training speed logged yet to time it."
        timed = self.mine_s is not None
        mining = (f" and about {status.duration(self.mine_s)} of mining per checkpoint"
                  if timed else ", plus its mining (not timed yet)")
        return (f"{what} takes {'about' if timed else 'at least'} {status.duration(self.total_s)} here: "
                f"{status.duration(self.train_s)} of training at {self.img_s:.1f} images/s "
                f"(the run's latest speed){mining}.")


def forecast_round(run_dir, *, iters: int | None = None,
                   checkpoint_every: int | None = None) -> RoundForecast:
    """How long `refine` with these settings would take, at the speed the run last trained
    (the median images/s of its latest logged steps, from metrics.jsonl) and mined
    (`_mining_seconds`). The app asks at every tick of its status line while no round
    trains: metrics.jsonl is parsed again only when it has changed."""
    from comining.checkpoints import checkpoint_path, load_run_config

    run_dir = Path(run_dir)
    base = load_run_config(run_dir)
    length, every = round_plan(base, iters, checkpoint_every)
    img_s = _latest_speed(run_dir / METRICS_FILE)
    train_s = length * base.batch_size / img_s if img_s else None
    return RoundForecast(length, checkpoints_in(length, every), train_s,
                         _mining_seconds(run_dir, checkpoint_path), img_s)


def _latest_speed(path: Path) -> float | None:
    """The median images/s of the latest SPEED_STEPS logged steps of metrics.jsonl."""
    try:
        st = path.stat()
    except OSError:
        return None
    return _speed_of(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _speed_of(path: str, mtime_ns: int, size: int) -> float | None:
    """`_latest_speed` of the file as it was at (mtime_ns, size): the cache key."""
    import statistics

    speeds = [r["img_s"] for r in read_metrics(path)
              if isinstance(r.get("img_s"), (int, float)) and r["img_s"] > 0][-SPEED_STEPS:]
    return statistics.median(speeds) if speeds else None


def _mining_seconds(run_dir: Path, checkpoint_path) -> float | None:
    """The median time from a checkpoint's file to its mining in the store, over the
    latest MINING_SAMPLES checkpoints the engine mined as it trained: mined before the
    next checkpoint of the same round was written. A checkpoint mined again later
    (`comining mine`, a benchmark), a round's last one (the next round starts whenever the
    annotator asks) and the run's last one (nothing after it tells) are no samples."""
    import statistics
    from datetime import datetime

    conn = store.connect(run_dir / store.STORE_NAME)
    try:
        rows = store.checkpoints(conn)
        round_of = store.checkpoint_rounds(conn)
    finally:
        conn.close()
    times = []                  # (round, file written, mined) per mined checkpoint, in order
    for r in rows:
        try:
            times.append((round_of.get(r["iteration"], 0),
                          checkpoint_path(run_dir, r["iteration"]).stat().st_mtime,
                          datetime.fromisoformat(r["mined_at"]).timestamp()))
        except (OSError, TypeError, ValueError):
            times.append(None)  # the file was removed, or an old store's row
    gaps = []
    for this, after in zip(times, times[1:]):
        if this and after:
            rnd, saved, mined = this
            next_rnd, next_saved, _ = after
            if rnd == next_rnd and saved <= mined <= next_saved:
                gaps.append(mined - saved)
    return statistics.median_low(gaps[-MINING_SAMPLES:]) if gaps else None
