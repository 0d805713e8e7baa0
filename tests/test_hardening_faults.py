"""Hardening: kill -9 during training, mining and export; a full disk; two processes on
one run (the review app and exports, two review apps).

The kills are real SIGKILLs of `python -m comining ...` processes. Where the moment
matters (inside the store's mining transaction, between the two files of an export),
a small wrapper script runs the same CLI with one function wrapped so that it signals
the test and waits to be killed at exactly that point."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from comining import export, review, store
from comining.cli import main
from comining.checkpoints import list_checkpoints, load_checkpoint
from comining.engine import train
from conftest import REPO, assert_clean_error, run_cli, seconds_run_config
from review_fixtures import make_run
from test_hardening_server import RawClient, decide_loop, start_app, stop_app

torch.set_num_threads(2)

ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           OMP_NUM_THREADS="2", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
TRAIN = ["--backbone", "mobilenet_v3", "--fpn-channels", "32", "--image-size", "96",
         "--batch-size", "2", "--iters", "4", "--checkpoint-every", "2", "--workers", "0",
         "--weights-backbone", "none", "--device", "cpu", "--no-progress", "--log-every", "1",
         "--score-thresh", "0.001", "--review-score-floor", "0.001"]

# Runs `comining ARGS` with one store or os function wrapped: when the wrapped call is
# reached for the AFTER-th time, it writes MARKER and sleeps until it is killed.
WRAPPER = r'''
import os, sys, time
from pathlib import Path
marker, what, after, argv = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
calls = {"n": 0}

def hit():
    calls["n"] += 1
    if calls["n"] == after:
        marker.write_text(what)
        time.sleep(600)

if what == "candidate-insert":      # inside the transaction that stores a checkpoint's mining
    from comining import store
    real_connect = store.connect

    class Conn:
        def __init__(self, conn):
            self._conn = conn
        def __getattr__(self, name):
            return getattr(self._conn, name)
        def execute(self, sql, *args):
            if sql.lstrip().startswith("INSERT INTO candidates"):
                hit()
            return self._conn.execute(sql, *args)

    store.connect = lambda *a, **k: Conn(real_connect(*a, **k))
elif what == "fsync":               # a file complete but not yet renamed into place
    real_fsync = os.fsync
    def fsync(fd):
        real_fsync(fd)
        hit()
    os.fsync = fsync
from comining.cli import main
sys.exit(main(argv))
'''


# ----------------------------------------------------------------------------- helpers


def spawn(args, *, wrap=None, tmp_path=None) -> tuple[subprocess.Popen, Path | None]:
    """Start `python -m comining ARGS` (or the wrapper, wrap=(what, after))."""
    marker = None
    if wrap:
        script = tmp_path / "wrapper.py"
        script.write_text(WRAPPER)
        marker = tmp_path / f"marker-{time.monotonic_ns()}"
        cmd = [sys.executable, str(script), str(marker), wrap[0], str(wrap[1]), *map(str, args)]
    else:
        cmd = [sys.executable, "-m", "comining", *map(str, args)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, marker


def wait_for(proc, condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process ended (rc {proc.returncode}) before {what}:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill9(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def metrics_iterations(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line)["iteration"])
            except (ValueError, KeyError):
                pass
    return out


def integrity_ok(db: Path) -> bool:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def store_rows(run: Path, sql: str, args=()) -> list[tuple]:
    conn = sqlite3.connect(run / store.STORE_NAME)
    try:
        return [tuple(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


CANDIDATE_COLUMNS = "checkpoint, image_id, category_id, x, y, w, h, score, view, agreed"
OBJECT_COLUMNS = "checkpoint, image_id, category_id, x, y, w, h, score, view, classes, on_label"


def assert_same_run(a: Path, b: Path) -> None:
    """b (killed, resumed) ends exactly as a (uninterrupted): weights, optimizer,
    logged losses, mined checkpoints and their candidates."""
    assert [i for i, _ in list_checkpoints(a)] == [i for i, _ in list_checkpoints(b)] == [2, 4]
    sa, sb = (load_checkpoint(list_checkpoints(r)[-1][1]) for r in (a, b))
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    ma = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in mb] == [1, 2, 3, 4]
    for x, y in zip(ma, mb):
        assert {k: v for k, v in x.items() if k != "img_s"} == {k: v for k, v in y.items() if k != "img_s"}
    assert store_rows(b, "SELECT iteration FROM checkpoints ORDER BY iteration") == [(2,), (4,)]
    sql = f"SELECT {CANDIDATE_COLUMNS} FROM candidates ORDER BY checkpoint, id"
    assert store_rows(a, sql) == store_rows(b, sql) != []
    sql = f"SELECT {OBJECT_COLUMNS} FROM objects ORDER BY checkpoint, image_id, score DESC"
    assert store_rows(a, sql) == store_rows(b, sql) != []
    assert integrity_ok(b / store.STORE_NAME)


@pytest.fixture(scope="module")
def reference(small_dataset, tmp_path_factory) -> Path:
    """The uninterrupted run (in this process; the same settings as TRAIN)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    cfg = seconds_run_config(small_dataset, run)
    return train(cfg, progress=False)


def train_args(dataset, run):
    return ["train", "--images", dataset / "images", "--ann",
            dataset / "annotations" / "train.json", "--run", run, *TRAIN]


def in_process(*args) -> None:
    """`comining ARGS` in this process (a resume or a rerun after the kill)."""
    code = main([str(a) for a in args])
    assert code == 0


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["training", "writing a checkpoint"])
def test_kill_during_training_then_resume_matches_an_uninterrupted_run(small_dataset, reference,
                                                                        tmp_path, moment):
    """kill -9 while training iteration 4 (after checkpoint 2), or while checkpoint 2 is
    being written (complete in its temporary file, not yet in place): no partial file is
    left in checkpoints/, and --resume ends exactly as the uninterrupted run."""
    run = tmp_path / "run"
    if moment == "training":
        proc, _ = spawn(train_args(small_dataset, run))
        wait_for(proc, lambda: 3 in metrics_iterations(run), "iteration 3 was logged")
        kill9(proc)
        assert [i for i, _ in list_checkpoints(run)][:1] == [2]
    else:   # fsync 1: config.json; fsync 2: the checkpoint
        proc, marker = spawn(train_args(small_dataset, run), wrap=("fsync", 2), tmp_path=tmp_path)
        wait_for(proc, marker.exists, "checkpoint 2 was written")
        kill9(proc)
        assert list_checkpoints(run) == []
    assert all(p.name.startswith("iter_") for p in (run / "checkpoints").iterdir())
    in_process(*train_args(small_dataset, run), "--resume")
    assert_same_run(reference, run)


@pytest.mark.slow
def test_kill_during_mining_stores_nothing_and_resume_mines_it(small_dataset, reference, tmp_path):
    """Killed inside the transaction that stores checkpoint 2's candidates (50 rows in):
    the store has none of them, no checkpoint row, and is sound; --resume mines the
    checkpoint and ends exactly as the uninterrupted run."""
    run = tmp_path / "run"
    proc, marker = spawn(train_args(small_dataset, run), wrap=("candidate-insert", 50),
                         tmp_path=tmp_path)
    wait_for(proc, marker.exists, "the mining transaction was half written")
    kill9(proc)
    assert [i for i, _ in list_checkpoints(run)] == [2]
    db = run / store.STORE_NAME
    assert integrity_ok(db)
    assert store_rows(run, "SELECT COUNT(*) FROM candidates") == [(0,)]
    assert store_rows(run, "SELECT COUNT(*) FROM checkpoints") == [(0,)]
    in_process(*train_args(small_dataset, run), "--resume")
    assert_same_run(reference, run)


@pytest.mark.slow
def test_kill_during_remining_keeps_the_old_mining_and_a_rerun_completes(reference, tmp_path):
    """`comining mine` killed while replacing a mined checkpoint: the old candidates,
    their checkpoint row and the review decisions stay exactly as they were; running it
    again replaces them."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    r = review.open_run(run)
    try:
        for it in review.queue_items(r, 4)[:3]:
            review.decide(r, it.id, "accepted", client="annotator")
    finally:
        r.close()
    cands = f"SELECT id, {CANDIDATE_COLUMNS} FROM candidates WHERE checkpoint = 4 ORDER BY id"
    before = (store_rows(run, cands), store_rows(run, "SELECT * FROM checkpoints"),
              store_rows(run, "SELECT * FROM decisions"))
    args = ["mine", "--run", run, "--checkpoint", "4", "--score-thresh", "0.01", "--review-score-floor", "0.01", "--device", "cpu",
            "--workers", "0"]
    proc, marker = spawn(args, wrap=("candidate-insert", 30), tmp_path=tmp_path)
    wait_for(proc, marker.exists, "the re-mining transaction was half written")
    kill9(proc)
    assert integrity_ok(run / store.STORE_NAME)
    assert (store_rows(run, cands), store_rows(run, "SELECT * FROM checkpoints"),
            store_rows(run, "SELECT * FROM decisions")) == before
    in_process(*args)
    row = store_rows(run, "SELECT score_thresh, n_original + n_augmented FROM checkpoints "
                          "WHERE iteration = 4")[0]
    assert row[0] == pytest.approx(0.01)
    scores = store_rows(run, "SELECT score FROM candidates WHERE checkpoint = 4")
    assert len(scores) == row[1] and min(s for (s,) in scores) >= 0.01 - 1e-6
    assert store_rows(run, "SELECT * FROM decisions") == before[2]



REFINE = ["--iters", "4", "--checkpoint-every", "2", "--no-progress"]


def _decided_copy(reference: Path, run: Path) -> Path:
    """A copy of the reference run with one accept and one reject on checkpoint 4."""
    shutil.copytree(reference, run)
    r = review.open_run(run)
    try:
        first, second = review.queue_items(r, 4)[:2]
        review.decide(r, first.id, "accepted", client="annotator")
        review.decide(r, second.id, "rejected", client="annotator")
    finally:
        r.close()
    return run


@pytest.mark.slow
def test_kill_during_refine_then_resume_matches_an_uninterrupted_round(reference, tmp_path):
    """kill -9 while round 1 trains its iteration 8 (after its checkpoint 6): a new round
    is refused until it is finished, and `refine --resume` ends exactly as the round run
    without a kill: weights, momentum, logged losses, mined candidates and objects."""
    whole = _decided_copy(reference, tmp_path / "whole")
    in_process("refine", "--run", whole, *REFINE)
    run = _decided_copy(reference, tmp_path / "killed")
    proc, _ = spawn(["refine", "--run", run, *REFINE])
    wait_for(proc, lambda: 7 in metrics_iterations(run), "iteration 7 was logged")
    kill9(proc)
    assert [i for i, _ in list_checkpoints(run)] == [2, 4, 6]
    assert_clean_error(run_cli("refine", "--run", run, *REFINE), "round 1 was stopped",
                       "add --resume")
    in_process("refine", "--run", run, "--resume", "--no-progress")
    assert [i for i, _ in list_checkpoints(run)] == [2, 4, 6, 8]
    sa, sb = (load_checkpoint(list_checkpoints(r)[-1][1]) for r in (whole, run))
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    ma, mb = ([json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()]
              for r in (whole, run))
    assert [m["iteration"] for m in mb] == list(range(1, 9))
    assert [m["round"] for m in mb] == [0] * 4 + [1] * 4
    for x, y in zip(ma, mb):
        assert {k: v for k, v in x.items() if k != "img_s"} == {k: v for k, v in y.items() if k != "img_s"}
    for sql in (f"SELECT {CANDIDATE_COLUMNS} FROM candidates ORDER BY checkpoint, id",
                f"SELECT {OBJECT_COLUMNS} FROM objects ORDER BY checkpoint, image_id, score DESC",
                "SELECT round, start_iteration, end_iteration FROM rounds",
                "SELECT round, decision_id FROM round_decisions ORDER BY round, decision_id"):
        assert store_rows(whole, sql) == store_rows(run, sql) != []


# ----------------------------------------------------------------------------- export


@pytest.fixture
def decided_run(tmp_path):
    info = make_run(tmp_path / "data")
    r = review.open_run(info.run_dir)
    try:
        items = review.queue_items(r, 200)
        review.decide(r, items[0].id, "accepted", client="t")
        review.decide(r, items[1].id, "rejected", client="t")
    finally:
        r.close()
    return info


def _decisions(run_dir):
    return store_rows(run_dir, "SELECT * FROM decisions ORDER BY id")


@pytest.mark.parametrize("existing", [False, True], ids=["fresh output", "over an older export"])
def test_kill_during_export_leaves_no_partial_file(decided_run, tmp_path, existing):
    """Killed when the output is complete in its temporary file but not yet in place:
    the folder holds exactly what it held before (nothing, or the older export and its
    sidecar, byte for byte); the store is untouched; a rerun completes."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "enlarged.json"
    if existing:
        assert main(["export", "--run", str(decided_run.run_dir), "--out", str(out)]) == 0
        r = review.open_run(decided_run.run_dir)
        try:
            review.decide(r, review.queue_items(r, 200)[0].id, "accepted", client="t")
        finally:
            r.close()
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    decisions = _decisions(decided_run.run_dir)
    args = ["export", "--run", decided_run.run_dir, "--out", out]
    proc, marker = spawn(args, wrap=("fsync", 2), tmp_path=tmp_path)   # 2nd file: the output
    wait_for(proc, marker.exists, "both export files were written")
    kill9(proc)
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before
    assert _decisions(decided_run.run_dir) == decisions
    assert integrity_ok(decided_run.run_dir / store.STORE_NAME)
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert sum(1 for a in data["annotations"] if "comining" in a) == (2 if existing else 1)
    assert sorted(p.name for p in out_dir.iterdir()) == ["enlarged.json", "enlarged.rejected.json"]


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 kB tmpfs (needs root and mount); skipped, with the reason, where not allowed."""
    mnt = tmp_path / "tiny_fs"
    mnt.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command: the in-process ENOSPC test covers the same code path")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); the "
                    f"in-process ENOSPC test covers the same code path")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_export_fails_clearly_and_leaves_nothing(tmp_path, tiny_fs, capsys):
    info = make_run(tmp_path / "data", n_images=80, n_objects=12, n_annotated=10)
    assert len(info.ann_path.read_bytes()) > 64 * 1024          # cannot fit
    (tiny_fs / "keep.txt").write_text("an older file")
    decisions = _decisions(info.run_dir)
    code = main(["export", "--run", str(info.run_dir), "--out", str(tiny_fs / "enlarged.json")])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "enlarged" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["keep.txt"]
    assert _decisions(info.run_dir) == decisions and integrity_ok(info.run_dir / store.STORE_NAME)


def test_full_disk_checkpoint_fails_clearly_and_resume_continues(small_dataset, tmp_path, capsys):
    """A run folder on a 2 MB filesystem: the store fits, the checkpoint (~11 MB) does
    not: exit 1 naming it, no partial checkpoint; after moving the run to a roomy disk,
    --resume trains from the start and finishes."""
    mnt = tmp_path / "small_fs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
    try:
        run = mnt / "run"
        args = ["train", "--images", str(small_dataset / "images"), "--ann",
                str(small_dataset / "annotations" / "train.json"), "--run", str(run),
                *TRAIN[:TRAIN.index("--iters")], "--iters", "2",
                *TRAIN[TRAIN.index("--iters") + 2:]]
        code = main(args)
        err = capsys.readouterr().err
        assert code == 1 and "iter_0000002.pt" in err and "No space left on device" in err, err
        assert len(err.strip().splitlines()) == 1
        assert not list((run / "checkpoints").iterdir())          # no partial checkpoint
        moved = tmp_path / "run"
        shutil.copytree(run, moved)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    assert main([a if a != str(run) else str(moved) for a in args] + ["--resume"]) == 0
    assert [i for i, _ in list_checkpoints(moved)] == [2]


@pytest.mark.parametrize("named_temp", [False, True], ids=["O_TMPFILE", "named temporary file"])
def test_write_failure_in_process_leaves_old_files(decided_run, tmp_path, monkeypatch, capsys,
                                                   named_temp):
    """The same path without a tiny filesystem: fsync fails with ENOSPC on the output
    (also where no O_TMPFILE exists): exit 1, one line, old files intact, no temporary
    file left."""
    import comining.fileio as fileio

    out = tmp_path / "enlarged.json"
    assert main(["export", "--run", str(decided_run.run_dir), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    if named_temp:
        monkeypatch.setattr(fileio, "_anonymous_file", lambda parent: None)
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    capsys.readouterr()
    code = main(["export", "--run", str(decided_run.run_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_new_files_get_the_usual_permissions(tmp_path):
    from comining.fileio import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644     # not mkstemp's 0600


# ----------------------------------------------------------------------------- two processes


def test_a_long_write_elsewhere_delays_a_decision_but_never_loses_it(decided_run, tmp_path):
    """Another process holds the store's write lock for a while (as mining a checkpoint
    does): a decision waits for it (busy timeout) instead of failing with 'database is
    locked', and an export meanwhile reads without waiting (WAL)."""
    script = tmp_path / "hold.py"
    script.write_text(
        "import sqlite3, sys, time\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('BEGIN IMMEDIATE')\n"
        "conn.execute(\"INSERT INTO meta VALUES ('holder', 'x')\")\n"
        "print('locked', flush=True)\n"
        "time.sleep(2.0)\n"
        "conn.execute('COMMIT')\n")
    holder = subprocess.Popen([sys.executable, str(script),
                               str(decided_run.run_dir / store.STORE_NAME)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = review.open_run(decided_run.run_dir)
        try:
            t0 = time.monotonic()
            s = export.export_run(r, tmp_path / "during.json")
            assert time.monotonic() - t0 < 1.5 and s["human"] == 1     # a reader never waits
            item = review.queue_items(r, 200)[0]
            t0 = time.monotonic()
            review.decide(r, item.id, "accepted", client="waiting")
            waited = time.monotonic() - t0
        finally:
            r.close()
    finally:
        holder.wait(timeout=30)
    assert waited > 0.5
    rows = store_rows(decided_run.run_dir, "SELECT candidate_id FROM decisions WHERE client = 'waiting'")
    assert rows == [(item.id,)]


def test_export_reads_one_snapshot_of_the_store(decided_run, tmp_path, monkeypatch):
    """A decision committed by another process while an export reads the store lands
    wholly in the next export, never half in this one."""
    r = review.open_run(decided_run.run_dir)
    other = review.open_run(decided_run.run_dir)
    target = review.queue_items(r, 200, review.Filters(views=("both",)))[0]
    real = review.pending_objects     # the export's read of the undecided objects

    def pending_after_a_concurrent_decision(run, *a, **k):
        if not getattr(pending_after_a_concurrent_decision, "done", False):
            pending_after_a_concurrent_decision.done = True
            t = threading.Thread(target=review.decide, args=(other, target.id, "rejected"),
                                 kwargs={"client": "other"})
            t.start()
            t.join()
        return real(run, *a, **k)

    monkeypatch.setattr(review, "pending_objects", pending_after_a_concurrent_decision)
    try:
        s = export.export_run(r, tmp_path / "a.json", accept="agreed", min_score=0.0)
        data = json.loads((tmp_path / "a.json").read_text())
        ids = {a["comining"]["candidate_id"] for a in data["annotations"] if "comining" in a}
        assert target.id in ids        # as of the snapshot: still pending, auto-accepted
        assert s["rejected"] == 1      # the later rejection is not in this export
        s2 = export.export_run(r, tmp_path / "b.json", accept="agreed", min_score=0.0)
        data = json.loads((tmp_path / "b.json").read_text())
        assert target.id not in {a["comining"]["candidate_id"] for a in data["annotations"]
                                 if "comining" in a}
        assert s2["rejected"] == 2
    finally:
        r.close()
        other.close()


def check_exactly_once(run_dir, expected: list[list[int]]) -> None:
    """The store holds, per client, exactly the candidate ids that client decided, each
    once (clients are matched by their lists: their ids are made by the app)."""
    rows = store_rows(run_dir, "SELECT client, candidate_id FROM decisions WHERE undone = 0")
    got: dict[str, list[int]] = {}
    for client, cid in rows:
        got.setdefault(client, []).append(cid)
    assert sorted(sorted(v) for v in got.values()) == sorted(sorted(v) for v in expected)
    for v in got.values():
        assert len(set(v)) == len(v)


def test_the_app_and_exports_at_once(tmp_path):
    """The review app (one process) records decisions while `comining export` runs again
    and again (other processes): every export succeeds with a consistent file, none
    loses or doubles a decision, and the last one holds every accepted box."""
    info = make_run(tmp_path / "data", n_images=20, width=200, height=150, n_objects=6,
                    n_annotated=1, n_false=0)
    app, url = start_app(info.run_dir)
    results: dict = {}
    try:
        client = RawClient(url)
        worker = threading.Thread(target=lambda: results.update(
            decide_loop(client, 60, "accept")))
        worker.start()
        exports = []
        while worker.is_alive() or not exports:
            out = tmp_path / f"export-{len(exports)}.json"
            proc = run_cli("export", "--run", info.run_dir, "--out", out)
            assert proc.returncode == 0, proc.stderr
            exports.append(json.loads(out.read_text()))
        worker.join()
        assert results.get("error") is None, results.get("error")
    finally:
        stop_app(app)
    check_exactly_once(info.run_dir, [results["decided"]])
    counts = [sum(1 for a in e["annotations"] if "comining" in a) for e in exports]
    assert counts == sorted(counts) and len(exports) >= 2          # monotone snapshots
    final = tmp_path / "final.json"
    assert run_cli("export", "--run", info.run_dir, "--out", final).returncode == 0
    added = {a["comining"]["candidate_id"] for a in json.loads(final.read_text())["annotations"]
             if "comining" in a}
    assert added == set(results["decided"]) and len(results["decided"]) == 60


def test_two_apps_on_one_run(tmp_path):
    """Two review apps (two processes) on one run, a client on each deciding at once."""
    info = make_run(tmp_path / "data", n_images=20, width=200, height=150, n_objects=6,
                    n_annotated=1, n_false=0)
    apps = [start_app(info.run_dir) for _ in range(2)]
    results = [{}, {}]
    try:
        clients = [RawClient(url) for _, url in apps]
        barrier = threading.Barrier(2)

        def work(k):
            barrier.wait()
            results[k].update(decide_loop(clients[k], 40, "accept" if k == 0 else "reject"))

        threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for proc, _ in apps:
            stop_app(proc)
    for res in results:
        assert res.get("error") is None, res["error"]
        assert len(res["decided"]) == 40
    check_exactly_once(info.run_dir, [res["decided"] for res in results])
    assert integrity_ok(info.run_dir / store.STORE_NAME)
