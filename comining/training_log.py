"""The training log, RUN/metrics.jsonl: one json line per logging step, written by the
engine and read by the app's plots and the round forecast."""

from __future__ import annotations

import json
from pathlib import Path

from comining.fileio import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"


def read_metrics(path) -> list[dict]:
    """metrics.jsonl rows (a half-written last line or a bad line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("iteration"), (int, float)):
                    rows.append(row)
    except OSError:
        return []
    return rows


def truncate_metrics(path: Path, last_iteration: int) -> None:
    """On resume, drop the log lines a killed run wrote after its last checkpoint."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["iteration"] <= last_iteration:
                keep.append(line)
        except (ValueError, KeyError):
            continue  # a line cut by the kill
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())
