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


def test_demo_serves_the_app_while_it_trains_and_ctrl_c_stops_both(tmp_path):
    """The URL comes at once, while training has only started; the page is served; the
    run's status says it is training; Ctrl+C stops the app and the training process."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from comining import status
    from comining.checkpoints import list_checkpoints
    from conftest import REPO
    from review_fixtures import free_port

    out, port = tmp_path / "demo", free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2",
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "comining", "demo", "--out", str(out), "--iters", "400",
         "--device", "cpu", "--port", str(port)], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = []
        while not any("[4/4] review app:" in ln for ln in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        assert f"http://127.0.0.1:{port}/" in lines[-1]
        assert [i for i, _ in list_checkpoints(out / "run")][-1:] != [400]   # far from done
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/").status == 200
        deadline = time.monotonic() + 300    # the training child's start-up, on a loaded machine
        while not (status.read(out / "run") or {}).get("alive"):
            assert time.monotonic() < deadline, "the run never said it was training"
            time.sleep(0.5)
        trainer = status.read(out / "run")["pid"]
        assert trainer != proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while status.pid_alive(trainer) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not status.pid_alive(trainer)
