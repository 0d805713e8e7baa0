"""The training loop: co-mining (or a baseline) with checkpoints, resume and mining.

Run directory:
  config.json, checkpoints/iter_*.pt   the run's saved state (comining.checkpoints)
  metrics.jsonl           one json line per logging step
  comining.sqlite         the mined candidates and review decisions (comining.store)
  status.json             what the run is doing now (comining.status)
"""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from comining import status, store
from comining.augment import make_view_augmenter
from comining.checkpoints import (checkpoint_path, list_checkpoints, load_checkpoint,
                                  load_model_state, load_run_config, resolve_checkpoint,
                                  save_checkpoint, set_rng_state)
from comining.coco import CocoDataset, attach_rejected, load_coco
from comining.config import MiningThresholds, ReviewMining, TrainConfig
from comining.data import DetectionDataset, TrainingSampler, make_loader
from comining.device import precision, resolve_device
from comining.errors import CominingError, InputError, first_sentence
from comining.mining import gather_candidates, mine_dataset, record
from comining.model import (DenseForward, DenseNet, build_detector, check_init_fits,
                            fetch_init_weights, init_variant, init_weights_by_name, load_init)
from comining.siamese import training_step
from comining.training_log import METRICS_FILE, truncate_metrics


def lr_factor(it: int, config: TrainConfig) -> float:
    """Linear warm-up from 0.001, then x0.1 at each of the scaled steps."""
    warm = config.warmup
    factor = 0.001 + (1 - 0.001) * it / warm if it < warm else 1.0
    return factor * (0.1 ** sum(it >= s for s in config.lr_steps))


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0


class RunContext:
    """Everything a run needs in memory: config, dataset, detector, device."""

    def __init__(self, config: TrainConfig, run_dir: Path, coco: CocoDataset, device: torch.device,
                 ddp: Distributed | None = None):
        self.config, self.run_dir, self.coco, self.device = config, run_dir, coco, device
        self.ddp = ddp or Distributed()
        self.detector = build_detector(config.detector, config.backbone, len(coco.categories),
                                       image_size=config.image_size,
                                       weights_backbone=config.weights_backbone,
                                       fpn_channels=config.fpn_channels, init=config.init,
                                       variant=config.variant)
        cuda = device.type == "cuda"
        autocast_dtype, self.channels_last = precision(config, device)
        self.detector.to(device)
        if self.channels_last:
            self.detector.to(memory_format=torch.channels_last)
        net = DenseNet(self.detector)
        if self.ddp.world_size > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if cuda else None, broadcast_buffers=False)
        self.dense = DenseForward(self.detector, net, autocast_dtype=autocast_dtype,
                                  channels_last=self.channels_last)
        if cuda:
            torch.backends.cudnn.benchmark = True  # one fixed input shape per run
        self.train_dataset = DetectionDataset(coco, config.image_size)
        self.mining_dataset = self.train_dataset

    @classmethod
    def open(cls, run_dir: Path, *, device: str = "auto") -> "RunContext":
        config = load_run_config(run_dir)
        coco = load_coco(config.ann, config.images)
        return cls(config, run_dir, coco, resolve_device(device if device != "auto" else config.device))

    def checkpoint_path(self, which: str | int = "last") -> tuple[int, Path]:
        return resolve_checkpoint(self.run_dir, which)

    def load_weights(self, path: Path) -> dict:
        state = load_checkpoint(path)
        load_model_state(self.detector, state["model"], path, self.config)
        return state


def _prepare_init(config: TrainConfig, run_dir: Path, existing: list) -> None:
    """Before any long work: the detector layout --init needs (config.variant), and named
    weights checked against the run and fetched now (offline: one line at once)."""
    if not config.init:
        return
    if existing:   # resumed: the run's own layout; --init is not read again
        config.variant = load_run_config(run_dir).variant
        return
    named = init_weights_by_name(config.init)
    if named is None:
        config.variant = init_variant(config.init)
        return
    config.variant = check_init_fits(named, config.detector, config.backbone, config.fpn_channels)
    fetch_init_weights(named)   # into torch's hub cache; load_init reads it from there


def _checkpoints_of_round(run_dir: Path, config: TrainConfig) -> list[tuple[int, Path]]:
    """The checkpoints a run of `config` starts or resumes from: round_start (a refine
    round's starting point) up to its last iteration; later rounds' are not its own."""
    return [c for c in list_checkpoints(run_dir) if config.round_start <= c[0] <= config.iters]


def _prepare_run_dir(config: TrainConfig, run_dir: Path, coco: CocoDataset, resume: bool) -> None:
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    if config.round > 0:    # a refine round: comining.rounds wrote its config and store rows
        return
    cfg_path = run_dir / "config.json"
    if resume and cfg_path.exists():
        old = load_run_config(run_dir).as_dict()
        new = config.as_dict()
        fixed = ("ann", "detector", "backbone", "method", "image_size", "batch_size", "seed", "augment")
        changed = [k for k in fixed if old.get(k) != new.get(k)]
        if changed:
            raise InputError(cfg_path, f"--resume with other settings than the run's: {', '.join(changed)}")
    config.save(cfg_path)
    conn = store.connect(run_dir / store.STORE_NAME, create=True)
    try:
        store.write_dataset(conn, coco.raw["images"], coco.raw["categories"])
        store.set_meta(conn, ann_path=str(Path(config.ann).resolve()),
                       images_dir=str(Path(config.images).resolve()),
                       hidden_path=str(Path(config.hidden).resolve()) if config.hidden else None,
                       detector=config.detector, method=config.method)
    finally:
        conn.close()


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) a run; mine the training set at every checkpoint. Returns RUN_DIR.
    The main process holds the run's lock and keeps RUN/status.json (comining.status)."""
    with ExitStack() as held:
        try:
            return _train(config, resume, progress, held)
        except Exception as exc:
            if status.holds_lock(config.run):     # this process was training the run
                _status(config, "failed", error=first_sentence(exc))
            raise


def _status(config: TrainConfig, state: str, **fields) -> None:
    status.write(config.run, state=state, round=config.round, round_start=config.round_start,
                 iters=config.iters, batch_size=config.batch_size, **fields)


def _train(config: TrainConfig, resume: bool, progress: bool, held: ExitStack) -> Path:
    ddp = Distributed.from_env()
    device = resolve_device(config.device)
    if ddp.world_size > 1:
        if device.type == "cuda":
            device = torch.device("cuda", ddp.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    run_dir = Path(config.run)
    existing = _checkpoints_of_round(run_dir, config) if run_dir.exists() else []
    own = [c for c in existing if c[0] > config.round_start]   # this round's own checkpoints
    if config.round == 0 and existing and not resume:
        raise InputError(run_dir, "this run already has checkpoints: add --resume to continue it, "
                                  "or choose a new --run folder")
    if config.round > 0:
        if own and not resume:
            raise InputError(run_dir, f"round {config.round} already has checkpoints: add --resume "
                                      f"to continue it")
        if not existing or existing[0][0] != config.round_start:
            raise InputError(run_dir, f"round {config.round} starts from checkpoint "
                                      f"{config.round_start}, which is not in "
                                      f"{run_dir / 'checkpoints'}")
    _prepare_init(config, run_dir, existing)
    torch.manual_seed(config.seed + config.round)
    coco = load_coco(config.ann, config.images)
    if len(coco) == 0:
        raise InputError(config.ann, "the dataset has no images")
    if config.rejected:
        attach_rejected(coco, config.rejected)
    if ddp.main:
        held.enter_context(status.run_lock(run_dir))
        _prepare_run_dir(config, run_dir, coco, resume)
    if ddp.world_size > 1:
        dist.barrier()
    ctx = RunContext(config, run_dir, coco, device, ddp)
    if config.init and not existing:
        report = load_init(ctx.detector, config.init, class_names=list(coco.categories.names),
                           keep_classes=config.init_keep_classes)
        if config.init_keep_classes and ddp.main:
            kept = report["kept"]
            fresh = [n for n in coco.categories.names if n not in kept]
            print(f"--init-keep-classes: kept the pretrained classifier of {len(kept)} of "
                  f"{len(coco.categories)} classes: {', '.join(kept) or 'none'}"
                  f"{'; fresh: ' + ', '.join(fresh) if fresh else ''}", flush=True)

    params = [p for p in ctx.detector.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.base_lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, config))
    start = config.round_start
    if own or (existing and config.round == 0):    # resume: weights, optimizer, schedule, RNG
        it0, path = existing[-1]
        state = load_checkpoint(path)
        load_model_state(ctx.detector, state["model"], path, config)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], device)
        start = state["iteration"]
        if ddp.main:
            truncate_metrics(run_dir / METRICS_FILE, start)
        if config.mine and start not in _mined_iterations(run_dir):
            # Killed while mining this checkpoint: its store transaction never committed.
            _mine(ctx, start, path, None)
        if start >= config.iters:
            if ddp.main:
                _status(config, "finished", iteration=start)
            return run_dir
    elif existing:
        # A round's start: the last round's weights; the optimizer's momentum and the
        # schedule start afresh (comining.rounds says why).
        _, path = existing[0]
        load_model_state(ctx.detector, load_checkpoint(path)["model"], path, config)
        if ddp.main:
            truncate_metrics(run_dir / METRICS_FILE, start)
    elif ddp.main:   # a run killed before its first checkpoint starts over: so does its log
        truncate_metrics(run_dir / METRICS_FILE, 0)

    sampler = TrainingSampler(len(ctx.train_dataset), config.batch_size, seed=config.seed, flip=True,
                              start_iter=start, rank=ddp.rank, world_size=ddp.world_size)
    loader = make_loader(ctx.train_dataset, batch_size=config.batch_size, shuffle=False,
                         num_workers=config.num_workers, pin_memory=device.type == "cuda",
                         sampler=sampler, generator=torch.Generator().manual_seed(config.seed))
    augmenter = make_view_augmenter(config.augment)
    ctx.dense.net.train()
    last_good = existing[-1][1] if existing else None

    bar = None
    if progress and ddp.main:
        from tqdm import tqdm
        bar = tqdm(total=config.iters, initial=start, desc=_bar_label(config), dynamic_ncols=True)
    metrics_file = open(run_dir / METRICS_FILE, "a") if ddp.main else None
    if ddp.main:   # the app's status line shows the run at once, not at the first log step
        _status(config, "training", iteration=start)
    window_start, window_images = time.perf_counter(), 0
    try:
        for it, batch in zip(range(start, config.iters), loader):
            batch = batch.to(device)
            out = training_step(ctx.dense, batch, config.method, config.thresholds, augmenter)
            if not torch.isfinite(out.loss):
                parts = ", ".join(f"{k}={float(v):.4g}" for k, v in out.loss_parts.items())
                raise CominingError(
                    f"non-finite loss at iteration {it} ({parts}); training stopped, the last good "
                    f"checkpoint is {last_good or 'none (no checkpoint yet)'}; try a lower --lr or a "
                    f"higher --score-thresh")
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            scheduler.step()
            window_images += batch.images.shape[0] * ddp.world_size
            done = it + 1
            if done % config.log_every == 0 or done == config.iters:
                elapsed = time.perf_counter() - window_start
                row = {"iteration": done, "round": config.round,
                       "lr": optimizer.param_groups[0]["lr"],
                       "loss": float(out.loss.detach()),
                       **{f"loss_{v}": float(l) for v, l in out.view_losses.items()},
                       **{f"pseudo_{v}": n for v, n in out.pseudo_counts.items()},
                       "img_s": window_images / max(elapsed, 1e-9)}
                if metrics_file:
                    metrics_file.write(json.dumps(row) + "\n")
                    metrics_file.flush()
                    _status(config, "training", iteration=done, loss=row["loss"],
                            img_s=row["img_s"])
                if bar:
                    bar.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{row['img_s']:.1f}")
                window_start, window_images = time.perf_counter(), 0
            if bar:
                bar.update(1)
            if (done - config.round_start) % config.checkpoint_every == 0 or done == config.iters:
                last_good = _checkpoint_and_mine(ctx, done, optimizer, scheduler, bar)
                window_start, window_images = time.perf_counter(), 0
    finally:
        if bar:
            bar.close()
        if metrics_file:
            metrics_file.close()
    if ddp.world_size > 1:
        dist.barrier()
    if ddp.main:
        _status(config, "finished", iteration=config.iters)
    return run_dir


def _bar_label(config: TrainConfig) -> str:
    label = f"{config.method} {config.detector}"
    return f"round {config.round}: {label}" if config.round else label


def _checkpoint_and_mine(ctx: RunContext, iteration: int, optimizer, scheduler, bar) -> Path:
    path = None
    if ctx.ddp.main:
        path = save_checkpoint(ctx.run_dir, iteration, detector=ctx.detector,
                               optimizer=optimizer, scheduler=scheduler, device=ctx.device,
                               config=ctx.config, categories=ctx.coco.raw["categories"])
    path = path or checkpoint_path(ctx.run_dir, iteration)
    if ctx.config.mine:
        _mine(ctx, iteration, path, bar)
    return path


def _mined_iterations(run_dir: Path) -> set[int]:
    conn = store.connect(run_dir / store.STORE_NAME)
    try:
        return {r["iteration"] for r in store.checkpoints(conn)}
    finally:
        conn.close()


def _mine(ctx: RunContext, iteration: int, path: Path, bar) -> None:
    """Mine the training set with the current weights (those of checkpoint `iteration`)
    and store the candidates in one transaction (all ranks take part under DDP)."""
    if bar:
        bar.set_description(f"mining at {iteration}")
    if ctx.ddp.main:
        _status(ctx.config, "mining", iteration=iteration)
    cands = mine_dataset(ctx.dense, ctx.mining_dataset, ctx.config.thresholds,
                         augment=ctx.config.augment, device=ctx.device,
                         batch_size=ctx.config.batch_size, num_workers=ctx.config.num_workers,
                         seed=ctx.config.seed + iteration, rank=ctx.ddp.rank,
                         world_size=ctx.ddp.world_size, review=ctx.config.review)
    cands = gather_candidates(cands, ctx.ddp.world_size)
    if ctx.ddp.main:
        record(ctx.run_dir, iteration=iteration, checkpoint_path=path,
               thresholds=ctx.config.thresholds, candidates=cands, review=ctx.config.review)
    if bar:
        bar.set_description(_bar_label(ctx.config))


def mine_checkpoint(run_dir, checkpoint: str | int = "last", *, thresholds: MiningThresholds | None = None,
                    review: ReviewMining | None = None, device: str = "auto",
                    batch_size: int | None = None, num_workers: int | None = None) -> dict:
    """Re-mine one saved checkpoint of a run (other settings allowed) into its store."""
    store.connect(Path(run_dir) / store.STORE_NAME).close()  # a bad store fails before the work
    ctx = RunContext.open(Path(run_dir), device=device)
    it, path = ctx.checkpoint_path(checkpoint)
    ctx.load_weights(path)
    thresholds = thresholds or ctx.config.thresholds
    review = review or ctx.config.review
    cands = mine_dataset(ctx.dense, ctx.mining_dataset, thresholds, augment=ctx.config.augment,
                         device=ctx.device, batch_size=batch_size or ctx.config.batch_size,
                         num_workers=ctx.config.num_workers if num_workers is None else num_workers,
                         seed=ctx.config.seed + it, review=review)
    counts = record(Path(run_dir), iteration=it, checkpoint_path=path, thresholds=thresholds,
                    candidates=cands, review=review)
    return {"iteration": it, **counts}
