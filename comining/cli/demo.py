"""`comining demo`: the whole main job on the embedded default dataset, no downloads.

generate a dataset -> erase half of each image's labels (hard) -> train co-mining, mining
at every checkpoint -> open the review app. Re-running resumes or reuses what is done.
"""

from __future__ import annotations

# About ten minutes of training on 2 CPU cores. FCOS: from scratch it learns this data far
# sooner than RetinaNet (measured on CPU, 400 iterations of 8 images, no pretrained weights:
# val AP 0.175 vs 0.003). 160 px and lr 0.04 buy the iterations a from-scratch detector
# needs to become confident: measured at 1,200 iterations, val AP 0.39 and ~130 boxes
# mined per view at the paper's tau, 70-80% of them erased labels; 640 iterations at
# 192 px and lr 0.02 mined 0-5 boxes, and lr 0.06 learned slower than 0.04 early on.
CPU_SETTINGS = dict(detector="fcos", backbone="mobilenet_v3", fpn_channels=64, image_size=160,
                    batch_size=8, iters=1200, checkpoint_every=300, lr=0.04)
GPU_SETTINGS = dict(detector="fcos", backbone="resnet18", fpn_channels=256, image_size=256,
                    batch_size=16, iters=3000, checkpoint_every=500, lr=0.02)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="generate a dataset, sparsify it, train co-mining, open the review app",
        description="The main job on the embedded default: a generated dataset (no downloads), "
                    "half of each image's labels erased (the paper's 'hard' split), co-mining "
                    "trained on it (CPU: a light MobileNetV3 model, about ten minutes on 2 cores; "
                    "GPU: more), mining at each checkpoint, then the review app. Running it again "
                    "resumes a killed run and reuses finished steps.")
    p.add_argument("--out", default="demo", metavar="DIR", help="working folder (default ./demo)")
    p.add_argument("--device", default="auto")
    p.add_argument("--iters", type=int, help="training iterations (default: by device)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-review", action="store_true", help="stop after training and mining")
    p.add_argument("--port", type=int, default=7860)
    p.set_defaults(func=run)


def checkpoint_summary(run_dir, sparse: dict, hidden: dict) -> list[dict]:
    """Per mined checkpoint: boxes per view, objects to review, and the review queue
    scored against the labels the split erased (the demo knows them: it is how a user
    can trust what is mined)."""
    from comining import store
    from comining.mining_quality import mining_quality, mining_scores
    from comining.queue_metrics import queue_quality, queue_scores

    conn = store.connect(run_dir / store.STORE_NAME)
    try:
        rows = [dict(r) for r in store.checkpoints(conn)]
        quality = mining_quality(store.candidates(conn), sparse, hidden,
                                 selections=("union", "agreed"))
        queue = queue_quality(store.objects(conn), sparse, hidden)
    finally:
        conn.close()
    nothing = mining_scores([], sparse, hidden)   # a checkpoint that mined no box
    for r in rows:
        q = quality.get(r["iteration"], {})
        for sel in ("union", "agreed"):
            s = q.get(sel, nothing)
            r[sel] = {k: s[k] for k in ("n_mined", "n_correct", "n_hit_erased", "n_erased",
                                        "precision", "recall")}
        r["queue"] = queue.get(r["iteration"]) or queue_scores([], sparse, hidden)
    return rows


def summary_line(r: dict) -> str:
    from comining.queue_metrics import effort_line

    q = r["queue"]
    line = f"checkpoint {r['iteration']}: {q['n_items']} objects to review"
    if q["n_items"]:
        line += "; " + effort_line(q)
    return line


def run(args) -> int:
    from pathlib import Path

    import torch

    from comining.config import TrainConfig
    from comining.checkpoints import list_checkpoints
    from comining.engine import train
    from comining.fileio import atomic_write_json, read_json
    from comining.sparsify import sparsify
    from comining.synth import generate

    out = Path(args.out)
    data = out / "data"
    full = data / "annotations" / "train.json"
    if not full.exists():
        print(f"[1/4] generating the dataset in {data}")
        generate(data, seed=args.seed)
    else:
        print(f"[1/4] dataset already in {data}")
    sparse, hidden = data / "annotations" / "train_hard.json", data / "annotations" / "train_hard_hidden.json"
    if not sparse.exists() or not hidden.exists():
        kept, erased = sparsify(read_json(full), "hard", seed=args.seed)
        atomic_write_json(hidden, erased)
        atomic_write_json(sparse, kept)
    n_kept, n_hidden = len(read_json(sparse)["annotations"]), len(read_json(hidden)["annotations"])
    print(f"[2/4] hard split: {n_kept} labels kept, {n_hidden} erased (to be found again)")

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    settings = dict(GPU_SETTINGS if cuda else CPU_SETTINGS)
    if args.iters:
        settings["iters"] = args.iters
        settings["checkpoint_every"] = max(1, args.iters // 4)
    run_dir = out / "run"
    config = TrainConfig(images=str(data / "images"), ann=str(sparse), run=str(run_dir),
                         method="comining", weights_backbone="none",
                         device=args.device, seed=args.seed, hidden=str(hidden), num_workers=1,
                         log_every=10, **settings)
    done = list_checkpoints(run_dir)
    trained = bool(done) and done[-1][0] >= config.iters
    if trained:
        print(f"[3/4] run already trained in {run_dir}")
    else:
        print(f"[3/4] training co-mining ({settings['detector']} {settings['backbone']}, "
              f"{settings['iters']} iterations, "
              f"{'GPU' if cuda else 'CPU'}) in {run_dir}", flush=True)
    if args.no_review:
        if not trained:
            train(config, resume=bool(done))
        report(run_dir, sparse, hidden, out)
        print(f"[4/4] done; review with: comining review --run {run_dir}")
        return 0
    if trained:
        report(run_dir, sparse, hidden, out)
        print("[4/4] opening the review app")
        from comining.cli.review import serve
        return serve(run_dir, host="127.0.0.1", port=args.port, auth=None)
    return train_while_reviewing(config, bool(done), run_dir, sparse, hidden, out, args.port)


def report(run_dir, sparse, hidden, out) -> None:
    from comining.fileio import atomic_write_json, read_json

    rows = checkpoint_summary(run_dir, read_json(sparse), read_json(hidden))
    for r in rows:
        print("      " + summary_line(r))
    atomic_write_json(out / "summary.json", {"run": str(run_dir), "checkpoints": rows}, indent=2)


def _train_child(config_dict: dict, resume: bool) -> None:
    from comining.config import TrainConfig
    from comining.engine import train

    train(TrainConfig.from_dict(config_dict), resume=resume)


def _store_ready(path) -> bool:
    from comining import store
    from comining.errors import InputError

    if not path.exists():
        return False
    try:
        conn = store.connect(path)
    except InputError:        # being created
        return False
    try:
        return conn.execute("SELECT COUNT(*) FROM images").fetchone()[0] > 0
    finally:
        conn.close()


def train_while_reviewing(config, resume: bool, run_dir, sparse, hidden, out, port: int) -> int:
    """Train in a child process and serve the review app at once: its page follows the
    training and offers each checkpoint as soon as it is mined. Ctrl+C stops both (a
    later `comining demo` resumes the training)."""
    import multiprocessing as mp
    import time

    from comining import store
    from comining.cli.review import block, open_app
    from comining.errors import CominingError

    child = mp.get_context("spawn").Process(target=_train_child, args=(config.as_dict(), resume),
                                            name="comining-train")
    child.start()
    try:
        while not _store_ready(run_dir / store.STORE_NAME):   # made before the first iteration
            if not child.is_alive():
                raise CominingError(f"training stopped before it started (exit code "
                                    f"{child.exitcode}); see the lines above")
            time.sleep(0.2)
        demo, url = open_app(run_dir, host="127.0.0.1", port=port)
        print(f"[4/4] review app: {url} (open it now: each checkpoint appears there as soon as "
              f"it is mined, while training goes on; when you have decided the head of the "
              f"queue, 'Retrain with my decisions' starts the next round; Ctrl+C stops both)",
              flush=True)

        def until_trained():
            child.join()
            if child.exitcode == 0:
                report(run_dir, sparse, hidden, out)
                print(f"      training finished; still serving {url} (Ctrl+C to stop)", flush=True)
            else:
                print(f"      training stopped (exit code {child.exitcode}); still serving {url}; "
                      f"`comining demo` again resumes it", flush=True)

        return block(demo, while_serving=until_trained)
    finally:
        if child.is_alive():
            child.terminate()
            child.join(30)
