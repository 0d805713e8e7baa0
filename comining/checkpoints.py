"""A run directory's saved state: config.json and checkpoints/iter_*.pt.

  config.json             the full TrainConfig
  checkpoints/iter_*.pt   {"model": stock torchvision state dict, "optimizer", "scheduler",
                           "iteration", "rng", "config", "categories"}

Listed, resolved ('last' or an iteration), read safely (weights_only) and written
atomically here; training (comining.engine), mining and prediction all go through it.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch

from comining.config import TrainConfig
from comining.errors import InputError, first_sentence
from comining.fileio import atomic_write_bytes
from comining.model import safe_load

CHECKPOINT_RE = re.compile(r"iter_(\d+)\.pt$")


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for p in (run_dir / "checkpoints").glob("iter_*.pt"):
        m = CHECKPOINT_RE.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def resolve_checkpoint(run_dir: Path, which: str | int = "last") -> tuple[int, Path]:
    """'last' or an iteration number -> (iteration, path) of a saved checkpoint."""
    found = list_checkpoints(Path(run_dir))
    if not found:
        raise InputError(run_dir, "this run has no checkpoint yet")
    if which in ("last", None):
        return found[-1]
    have = ", ".join(str(i) for i, _ in found)
    try:
        wanted = int(which)
    except (TypeError, ValueError):
        raise InputError(run_dir, f"checkpoint {which!r} is not 'last' or an iteration; have {have}") from None
    for it, p in found:
        if it == wanted:
            return it, p
    raise InputError(run_dir, f"no checkpoint at iteration {which}; have {have}")


def load_run_config(run_dir: Path) -> TrainConfig:
    """RUN_DIR/config.json as a TrainConfig; a missing, half-written or foreign file (another
    comining version: unknown or mistyped settings) is an InputError naming the file."""
    cfg_path = Path(run_dir) / "config.json"
    if not cfg_path.is_file():
        raise InputError(run_dir, "not a comining run directory (no config.json)")
    try:
        return TrainConfig.load(cfg_path)
    except InputError as exc:
        if exc.path is not None:
            raise
        raise InputError(cfg_path, exc.problem) from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise InputError(cfg_path, f"not a run config of this comining version "
                                   f"({type(exc).__name__}: {first_sentence(exc)})") from None


def load_model_state(detector: torch.nn.Module, state_dict: dict, path: Path,
                     config: TrainConfig) -> None:
    """Load a checkpoint's weights; a checkpoint of another model (another backbone,
    width or number of classes than config.json says) is an InputError, not a page of
    missing keys."""
    try:
        detector.load_state_dict(state_dict)
    except RuntimeError:
        own = detector.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        shapes = [k for k in own if k in state_dict and hasattr(state_dict[k], "shape")
                  and tuple(state_dict[k].shape) != tuple(own[k].shape)]
        raise InputError(path, f"does not fit the run's model ({config.detector}, "
                               f"{config.backbone}, fpn {config.fpn_channels}): "
                               f"{len(missing)} missing, {len(unexpected)} unexpected and "
                               f"{len(shapes)} mis-shaped weights (was config.json edited, or the "
                               f"checkpoint copied from another run?)") from None


def load_checkpoint(path: Path) -> dict:
    """A run's checkpoint, read safely (weights_only: tensors and plain types; everything
    save_checkpoint writes is such, so resume needs no allow-list)."""
    state = safe_load(path, "checkpoint")
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        raise InputError(path, "not a comining checkpoint")
    return state


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def checkpoint_path(run_dir: Path, iteration: int) -> Path:
    """RUN/checkpoints/iter_<iteration>.pt, the file of the checkpoint at `iteration`."""
    return Path(run_dir) / "checkpoints" / f"iter_{iteration:07d}.pt"


def save_checkpoint(run_dir: Path, iteration: int, *, detector: torch.nn.Module, optimizer,
                    scheduler, device: torch.device, config: TrainConfig,
                    categories: list[dict]) -> Path:
    """checkpoint_path(run_dir, iteration), written atomically (a kill leaves the last one)."""
    path = checkpoint_path(run_dir, iteration)
    buf = io.BytesIO()
    torch.save({"model": detector.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "iteration": iteration,
                "rng": rng_state(device), "config": config.as_dict(),
                "categories": categories}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return path
