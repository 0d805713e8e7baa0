"""Two-process DistributedDataParallel on CPU (gloo): trains and mines, rank 0 stores."""

from __future__ import annotations

import os
import subprocess
import sys

from comining import store
from conftest import REPO


def test_two_process_cpu_ddp_trains_and_mines(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "comining", "train", "--images", tiny_dataset / "images",
         "--ann", tiny_dataset / "annotations" / "train.json", "--run-dir", run,
         "--backbone", "mobilenet_v3", "--fpn-channels", "32", "--image-size", "96",
         "--batch-size", "2", "--iters", "2", "--checkpoint-every", "2", "--weights-backbone", "none",
         "--device", "cpu", "--workers", "0", "--score-thresh", "0.001", "--review-score-floor", "0.001",
         "--no-progress"],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "checkpoints" / "iter_0000002.pt").exists()
    conn = store.connect(run / store.STORE_NAME)
    rows = store.candidates(conn, 2)
    # the two ranks' shards were gathered: every training image was mined by both views
    assert {r["view"] for r in rows} == {"original", "augmented"}
    assert len({r["image_id"] for r in rows}) == 16
    conn.close()
