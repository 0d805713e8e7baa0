"""The app's "Retrain with my decisions": `comining refine` started as a background
process, one at a time per run, its output in RUN/rounds/refine.log; and the status line
that follows the run (comining.status) while the annotator keeps reviewing.

A round keeps training when the app stops (its own session): closing the browser or
the app never loses it, and `comining refine --run RUN --resume` finishes a killed one.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from comining import status
from comining.errors import InputError
from comining.rounds import ROUNDS_DIR, forecast_round

LOG_NAME = "refine.log"


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


class Retrainer:
    """The refine process this app started for a run (at most one)."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.log = self.run_dir / ROUNDS_DIR / LOG_NAME
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def start(self, *, iters: int | None = None) -> str:
        """Start the next round; one line for the page (why not, when it cannot)."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return "⏳ A round is already training (started from this page)."
            now = status.read(self.run_dir)
            if now and now["alive"]:
                return (f"⏳ The run is training now: {status.describe(now, icon=False)}. Retrain "
                        f"once it has finished.")
            self.log.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "comining", "refine", "--run", str(self.run_dir),
                   "--no-progress"]
            if iters:
                cmd += ["--iters", str(int(iters))]
            with open(self.log, "a") as log:
                log.write(f"$ {' '.join(cmd)}\n")
                log.flush()
                self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True)
            took = self.forecast(iters=iters)
            took = f" {took}" if took else ""
            return (f"⏳ Retraining with your decisions in the background (log: {self.log}); "
                    f"keep reviewing: its checkpoints appear here when they are mined.{took}")

    def forecast(self, *, iters: int | None = None) -> str:
        """How long the next round would take here (rounds.forecast_round), or "" when the
        run cannot tell (no config, no store yet)."""
        try:
            return forecast_round(self.run_dir, iters=iters).line()
        except (InputError, OSError):
            return ""

    def poll(self) -> tuple[str, bool]:
        """(what the run is doing: training from anywhere, or this app's last round; whether
        a round, or round 0, is training now), from one read of the run's status."""
        now = status.read(self.run_dir)
        proc = self._proc
        running = proc is not None and proc.poll() is None
        busy = running or bool(now and now["alive"])
        if proc is not None and not running and proc.returncode != 0:
            return f"❌ Retraining failed: {_last_line(self.log)} (log: {self.log})", busy
        return status.describe(now), busy
