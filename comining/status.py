"""What a run is doing now, for the review app: RUN/status.json, and the run's lock.

The training engine rewrites status.json (atomically) at each logged iteration, when it
mines a checkpoint and when it ends: {"state": training | mining | finished | failed,
"round", "round_start", "iteration", "iters", "loss", "img_s", "batch_size", "pid",
"updated_at"}. A status whose process is gone while it says training or mining is a
stopped run (killed, or the machine went down).

RUN/train.lock holds the pid of the process training the run: a second `train` or
`refine` of the same run is refused while that process lives (two trainings would
interleave their checkpoints); a lock left by a dead process is taken over.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from comining.errors import InputError
from comining.fileio import atomic_write_json

STATUS_NAME = "status.json"
LOCK_NAME = "train.lock"


def pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # alive, another user's
        return True
    return True


def write(run_dir, **fields) -> None:
    atomic_write_json(Path(run_dir) / STATUS_NAME,
                      {**fields, "pid": os.getpid(), "updated_at": time.time()})


def read(run_dir) -> dict | None:
    """The run's status with "alive" (its process still runs it), or None."""
    try:
        data = json.loads((Path(run_dir) / STATUS_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    data["alive"] = data.get("state") in ("training", "mining") and pid_alive(data.get("pid"))
    return data


def seconds_left(s: dict) -> float | None:
    """Training time left (mining not counted) at the last logged speed."""
    try:
        return max(0.0, (s["iters"] - s["iteration"]) * s["batch_size"] / s["img_s"])
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe(s: dict | None, *, icon: bool = True) -> str:
    """One line for a person: what the run is doing, where it stands (led by an icon of
    its state unless icon=False, for a line that quotes it)."""
    if not s:
        return ""
    name = f"round {s.get('round', 0)}" if s.get("round") else "training"
    where = f"iteration {s.get('iteration', 0)} of {s.get('iters', '?')}"
    if s["alive"]:
        mark = "⏳"
        if s.get("state") == "mining":
            text = f"{name}: mining checkpoint {s.get('iteration')} for review"
        else:
            left = seconds_left(s)
            loss = f", loss {s['loss']:.3f}" if isinstance(s.get("loss"), (int, float)) else ""
            text = (f"{name}: {where}{loss}"
                    + (f", about {duration(left)} of training left" if left is not None else ""))
    elif s.get("state") == "finished":
        mark, text = "✅", f"{name} finished ({where})"
    elif s.get("state") == "failed":
        mark, text = "❌", f"{name} failed at {where}: {s.get('error', 'see its log')}"
    else:
        mark, text = "⏸", f"{name} stopped at {where} (its process is gone: resume it)"
    return f"{mark} {text}" if icon else text


def holds_lock(run_dir) -> bool:
    """This process holds the run's lock."""
    try:
        return int((Path(run_dir) / LOCK_NAME).read_text().strip()) == os.getpid()
    except (OSError, ValueError):
        return False


@contextmanager
def run_lock(run_dir):
    """Hold RUN/train.lock for the duration; refuse while a live process holds it."""
    path = Path(run_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if pid_alive(holder) and holder != os.getpid():
                raise InputError(run_dir, f"this run is being trained by process {holder} now: "
                                          f"wait for it to finish (or stop it)") from None
            path.unlink(missing_ok=True)     # left by a process that is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    else:
        raise InputError(run_dir, f"could not take the run's lock {path}")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
