"""Where a run computes: the torch device, and the precision it runs in there."""

from __future__ import annotations

import torch

from comining.config import TrainConfig
from comining.errors import InputError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, "--device cuda asked for, but no CUDA device is available")
    return torch.device(name)


def precision(config: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, channels_last) of a run on `device`: "auto" is on for CUDA
    only; "bf16" / "on" are honoured on the CPU too (how the GPU path is tested there)."""
    cuda = device.type == "cuda"
    amp = config.amp == "bf16" or (config.amp == "auto" and cuda)
    channels_last = config.channels_last == "on" or (config.channels_last == "auto" and cuda)
    return (torch.bfloat16 if amp else None), channels_last
