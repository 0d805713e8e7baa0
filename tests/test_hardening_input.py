"""Hardening: bad input to every command that reads user files, unusual but valid input,
and properties of the box conversions.

Every bad input must give exit code 2 and at most a few lines on stderr naming the file
and the problem, no traceback (unless --debug), and leave the input files byte for byte
as they were. test_coco.py covers the data layer (load_coco) and `comining check` on
many bad json files; here the same kinds of bad input go through the OTHER commands
(sparsify, train, predict, evaluate, export, candidates, mine, review), in process
(`comining.cli.main`, the very code path of the console script) for speed, plus a
subprocess sample per command."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from comining import review, store
from comining.cli import main
from comining.coco import _box_problem, _xywh_to_xyxy_clipped, load_coco
from comining.config import MiningThresholds, TrainConfig
from comining.data import apply_geometry, boxes_to_original
from comining.engine import train
from comining.errors import InputError
from comining.sparsify import sparsify
from conftest import assert_clean_error, run_cli
from review_fixtures import free_port, make_older_store

torch.set_num_threads(2)

TINY = ["--backbone", "mobilenet_v3", "--fpn-channels", "32", "--image-size", "96",
        "--batch-size", "2", "--iters", "2", "--checkpoint-every", "2", "--workers", "0",
        "--weights-backbone", "none", "--device", "cpu", "--no-progress"]


# ----------------------------------------------------------------------------- helpers


def cli(capsys, *args) -> tuple[int, str, str]:
    """`comining ARGS` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean(code, err, *needles, expected=2):
    assert code == expected, (code, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert 1 <= len(lines) <= 3, err
    for needle in needles:
        assert str(needle) in err, (needle, err)


def tree_hash(*paths) -> str:
    """One hash over the bytes of these files and of every file under these folders
    (SQLite's -wal/-shm side files, which come and go with connections, left out)."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            if f.name.endswith(("-wal", "-shm")):
                continue
            if f.exists():
                h.update(str(f).encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def tiny_config(images, ann, run, **overrides) -> TrainConfig:
    base = dict(images=str(images), ann=str(ann), run=str(run), backbone="mobilenet_v3",
                fpn_channels=32, image_size=96, batch_size=2, iters=2, checkpoint_every=2,
                weights_backbone="none", device="cpu", num_workers=0, log_every=1, mine=True,
                thresholds=MiningThresholds(score_thresh=0.001, nms_iou=0.5, gt_iou=0.4,
                                            max_per_image=5))
    base.update(overrides)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------- a world


@pytest.fixture(scope="module")
def world(tiny_dataset, tmp_path_factory):
    """A private copy of the tiny dataset (plus bad image files under images/bad/), its
    hard split, and a run trained and mined on it (2 iterations)."""
    root = tmp_path_factory.mktemp("hardening_input")
    images = root / "images"
    shutil.copytree(tiny_dataset / "images", images)
    bad = images / "bad"
    bad.mkdir()
    (bad / "corrupt.png").write_bytes(b"\x00garbage, not an image" * 20)
    Image.new("1", (12000, 12000)).save(bad / "bomb.png")   # 144 Mpx in a 17 kB file
    full = json.loads((tiny_dataset / "annotations" / "train.json").read_text())
    sp, hid = sparsify(full, "hard", seed=0)
    (root / "sparse.json").write_text(json.dumps(sp))
    (root / "hidden.json").write_text(json.dumps(hid))
    run = train(tiny_config(images, root / "sparse.json", root / "run",
                            hidden=str(root / "hidden.json")), progress=False)
    return {"root": root, "images": images, "sparse": root / "sparse.json",
            "hidden": root / "hidden.json", "run": run}


# ----------------------------------------------------------------------------- bad json


def _as_json(d) -> bytes:
    return json.dumps(d, allow_nan=True).encode()


def _with(fn):
    def build(d):
        d = json.loads(json.dumps(d))
        fn(d)
        return _as_json(d)
    return build


def _ann0(**kw):
    return _with(lambda d: d["annotations"][0].update(kw))


def _img0(**kw):
    return _with(lambda d: d["images"][0].update(kw))


def _first_image_of_an_annotation(**kw):
    def fn(d):
        image_id = d["annotations"][0]["image_id"]
        next(im for im in d["images"] if im["id"] == image_id).update(kw)
    return _with(fn)


# case -> (builder(base dict) -> bytes, needle, reads image files)
ANN_CASES = {
    "truncated": (lambda d: _as_json(d)[: len(_as_json(d)) // 2], "malformed json", False),
    "not json": (lambda d: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR binary", "not UTF-8", False),
    "not coco": (lambda d: b'{"type": "instances", "data": []}', "no 'images'", False),
    "wrong types": (_with(lambda d: d.update(annotations={"1": d["annotations"][0]})),
                    "'annotations' is a dict", False),
    "duplicate ids": (_with(lambda d: d["annotations"].append(dict(d["annotations"][0]))),
                      "duplicate annotation ids", False),
    "unknown image": (_ann0(image_id=987654), "unknown images", False),
    "unknown category": (_ann0(category_id=987), "unknown categories", False),
    "nan box": (_ann0(bbox=[1, 2, float("nan"), 3]), "NaN", False),
    "inf box": (_ann0(bbox=[1, 2, float("inf"), 3]), "infinite", False),
    "negative box": (_ann0(bbox=[1, 2, -5, 3]), "negative size", False),
    "zero box": (_ann0(bbox=[1, 2, 0, 3]), "zero size", False),
    "sub-pixel sliver box": (_ann0(bbox=[50, 2, 1e-6, 30]), "zero size", False),
    "far outside box": (_ann0(bbox=[5000, 5000, 10, 10]), "far outside", False),
    "escaping file_name": (_img0(file_name="../../../etc/passwd"), "escapes the image root", False),
    "absolute file_name": (_img0(file_name="/etc/passwd"), "absolute path", False),
    "empty dataset": (_with(lambda d: d.update(images=[], annotations=[])), "no images", False),
    "missing image file": (_img0(file_name="train/no_such_image.png"), "not found", True),
    "corrupt image bytes": (_img0(file_name="bad/corrupt.png"), "not a readable image", True),
    "decompression bomb": (_first_image_of_an_annotation(file_name="bad/bomb.png", width=12000,
                                                         height=12000),
                           "too large to decode safely", True),
}
JSON_CASES = sorted(k for k, v in ANN_CASES.items() if not v[2])


def write_case(world, case, base="sparse") -> Path:
    build = ANN_CASES[case][0]
    d = json.loads(world[base].read_text())
    path = world["root"] / "cases" / base / f"{case.replace(' ', '_')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(build(d))
    return path


def ann_command(world, command, ann, out_dir: Path):
    run, images = world["run"], world["images"]
    return {
        "sparsify": ["sparsify", "--ann", ann, "--protocol", "hard", "--out", out_dir / "s.json",
                     "--hidden", out_dir / "h.json"],
        "check": ["check", "--ann", ann, "--images", images],
        "train": ["train", "--images", images, "--ann", ann, "--run", out_dir / "run", *TINY],
        "predict": ["predict", "--run", run, "--images", images, "--ann", ann,
                    "--out", out_dir / "dets.json", "--device", "cpu"],
        "evaluate": ["evaluate", "--run", run, "--images", images, "--ann", ann, "--device", "cpu"],
        "evaluate --hidden": ["evaluate", "--run", run, "--hidden", ann],
    }[command]


ANN_MATRIX = ([("sparsify", c) for c in JSON_CASES]
              + [(cmd, c) for cmd in ("check", "train", "predict", "evaluate") for c in ANN_CASES]
              + [("evaluate --hidden", c) for c in JSON_CASES])


@pytest.mark.parametrize("command, case", ANN_MATRIX, ids=[f"{a}-{b}" for a, b in ANN_MATRIX])
def test_bad_annotation_file(world, capsys, tmp_path, command, case):
    ann = write_case(world, case, "hidden" if command == "evaluate --hidden" else "sparse")
    before = tree_hash(ann, world["images"], world["sparse"], world["hidden"])
    code, out, err = cli(capsys, *ann_command(world, command, ann, tmp_path))
    assert_clean(code, err, ann.name, ANN_CASES[case][1])
    assert tree_hash(ann, world["images"], world["sparse"], world["hidden"]) == before
    assert not list(tmp_path.iterdir()), "a failed command left output behind"


def _truncate_jpeg(path: Path, rng) -> None:
    arr = (rng.random((128, 128, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])   # the header is intact, the pixels are cut


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_jpeg_data_found_at_train_time(world, capsys, tmp_path, workers):
    """A JPEG whose header reads fine (so loading passes) but whose data is cut: training
    stops with one line naming the image, also from a DataLoader worker process."""
    images = tmp_path / "images"
    shutil.copytree(world["images"] / "train", images / "train")
    _truncate_jpeg(images / "train" / "cut.jpg", np.random.default_rng(0))
    d = json.loads(world["sparse"].read_text())
    for im in d["images"]:
        im["file_name"] = "train/cut.jpg"   # every image: the first batch meets it
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(d))
    before = tree_hash(ann, images)
    args = list(TINY)
    args[args.index("--workers") + 1] = str(workers)
    code, _, err = cli(capsys, "train", "--images", images, "--ann", ann, "--run",
                       tmp_path / "run", *args)
    assert_clean(code, err, "cut.jpg", "cannot decode image", "truncated")
    assert tree_hash(ann, images) == before
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pt"))


def test_check_decode_finds_corrupt_image_data_before_training(world, capsys, tmp_path):
    """`check` reads image headers only, so a JPEG cut after its header passes; `check
    --decode` decodes every image and names the count and the first bad ones."""
    images = tmp_path / "images"
    shutil.copytree(world["images"] / "train", images / "train")
    d = json.loads(world["sparse"].read_text())
    cut = [im["file_name"] for im in d["images"][:2]]
    rng = np.random.default_rng(0)
    for k, name in enumerate(cut):
        _truncate_jpeg(images / f"cut{k}.jpg", rng)
        d["images"][k]["file_name"] = f"cut{k}.jpg"
        d["images"][k]["width"] = d["images"][k]["height"] = 128
    for a in d["annotations"]:   # keep the boxes inside the 128 px replacements
        if a["image_id"] in (d["images"][0]["id"], d["images"][1]["id"]):
            a["bbox"] = [4, 4, 20, 20]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(d))
    before = tree_hash(ann, images)
    code, out, err = cli(capsys, "check", "--ann", ann, "--images", images)
    assert code == 0 and ": ok:" in out, err
    code, out, err = cli(capsys, "check", "--ann", ann, "--images", images, "--decode")
    assert_clean(code, err, "ann.json", "2 items", "cut0.jpg", "cut1.jpg", "cannot decode image")
    assert tree_hash(ann, images) == before
    code, out, err = cli(capsys, "check", "--ann", world["sparse"], "--images", world["images"],
                         "--decode")
    assert code == 0 and "decoded all" in out and ": ok:" in out, err


def test_corrupt_image_found_by_mine_and_predict(world, capsys, tmp_path):
    """An image damaged after training: mining and prediction stop with one line."""
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    images = tmp_path / "images"
    shutil.copytree(world["images"] / "train", images / "train")
    first = json.loads(world["sparse"].read_text())["images"][0]["file_name"]
    data = (images / first).read_bytes()
    (images / first).write_bytes(data[: len(data) // 2])
    cfg = json.loads((run / "config.json").read_text())
    cfg.update(images=str(images), run=str(run))
    (run / "config.json").write_text(json.dumps(cfg))
    before = tree_hash(images, world["sparse"])
    code, _, err = cli(capsys, "mine", "--run", run, "--device", "cpu", "--workers", "0")
    assert_clean(code, err, first, "cannot decode image")
    code, _, err = cli(capsys, "predict", "--run", run, "--images", images, "--ann", world["sparse"],
                       "--out", tmp_path / "d.json", "--device", "cpu")
    assert_clean(code, err, first, "cannot decode image")
    assert not (tmp_path / "d.json").exists()
    assert tree_hash(images, world["sparse"]) == before


# ----------------------------------------------------------------------------- bad run folders


def _sqlite_checkpoint(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _edit_config(run: Path, fn) -> None:
    cfg = json.loads((run / "config.json").read_text())
    fn(cfg)
    (run / "config.json").write_text(json.dumps(cfg))


def _half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _no_checkpoint(run: Path) -> None:
    """A run killed before its first checkpoint: config, store, no checkpoint."""
    for p in (run / "checkpoints").glob("*.pt"):
        p.unlink()
    conn = sqlite3.connect(run / store.STORE_NAME)
    conn.execute("DELETE FROM candidates")
    conn.execute("DELETE FROM checkpoints")
    conn.commit()
    conn.close()


RUN_BUILDERS = {
    "missing": lambda run: shutil.rmtree(run),
    "not a folder": lambda run: (shutil.rmtree(run), run.write_text("a file")),
    "empty folder": lambda run: (shutil.rmtree(run), run.mkdir()),
    "no config.json": lambda run: (run / "config.json").unlink(),
    "half-written config.json": lambda run: _half(run / "config.json"),
    "config.json of another version": lambda run: _edit_config(
        run, lambda c: (c["thresholds"].update(box_voting=True), c.update(format=9))),
    "config.json with wrong types": lambda run: _edit_config(run, lambda c: c.update(iters="many")),
    "no store": lambda run: (run / store.STORE_NAME).unlink(),
    "half-written store": lambda run: _half(run / store.STORE_NAME),
    "garbage store": lambda run: (run / store.STORE_NAME).write_bytes(b"SQLite? no." * 100),
    "store of another version": lambda run: make_older_store(run, version=0),
    "no checkpoint yet": _no_checkpoint,
    "half-written checkpoint": lambda run: _half(next((run / "checkpoints").glob("*.pt"))),
    "checkpoint of another model": lambda run: _edit_config(run, lambda c: c.update(fpn_channels=64)),
}

# case -> {command: (expected exit code, needle) or "ok"}; commands left out are not run
RUN_EXPECT = {
    "missing": {c: (2, "not found" if c in ("export", "review") else "") for c in
                ("export", "candidates", "mine", "predict", "review", "evaluate")},
    "not a folder": {c: (2, "") for c in ("export", "candidates", "mine", "predict", "review",
                                          "evaluate")},
    "empty folder": {c: (2, "") for c in ("export", "candidates", "mine", "predict", "review",
                                          "evaluate")},
    "no config.json": {"export": "ok", "candidates": "ok", "evaluate": "ok",
                       "mine": (2, "no config.json"), "predict": (2, "no config.json")},
    "half-written config.json": {"export": (2, "malformed json"), "candidates": "ok",
                                 "mine": (2, "malformed json"), "predict": (2, "malformed json"),
                                 "review": (2, "malformed json")},
    "config.json of another version": {"export": "ok", "candidates": "ok", "evaluate": "ok",
                                       "mine": (2, "box_voting"), "predict": (2, "box_voting")},
    "config.json with wrong types": {"mine": (2, "not a run config of this comining version"),
                                     "predict": (2, "not a run config of this comining version")},
    "no store": {c: (2, "no comining store") for c in ("export", "candidates", "mine", "review")}
    | {"predict": "ok"},
    "half-written store": {c: (2, "not a comining store") for c in
                           ("export", "candidates", "mine", "review", "evaluate")},
    "garbage store": {c: (2, "not a comining store") for c in
                      ("export", "candidates", "mine", "review", "evaluate")},
    "store of another version": {c: (2, "schema version 0 is not supported") for c in
                                 ("export", "candidates", "mine", "review", "evaluate")},
    "no checkpoint yet": {"export": "ok", "candidates": (2, "no mined checkpoint"),
                          "mine": (2, "no checkpoint yet"), "predict": (2, "no checkpoint yet")},
    "half-written checkpoint": {"export": "ok", "candidates": "ok",
                                "mine": (2, "cannot read checkpoint"),
                                "predict": (2, "cannot read checkpoint")},
    "checkpoint of another model": {"mine": (2, "does not fit the run's model")},
}
RUN_MATRIX = [(case, cmd) for case, cmds in RUN_EXPECT.items() for cmd in cmds]


def run_command(world, command, run, out: Path):
    return {
        "export": ["export", "--run", run, "--out", out],
        "candidates": ["candidates", "--run", run, "--out", out],
        "mine": ["mine", "--run", run, "--device", "cpu", "--workers", "0"],
        "predict": ["predict", "--run", run, "--images", world["images"], "--ann", world["sparse"],
                    "--out", out, "--device", "cpu"],
        "review": ["review", "--run", run, "--port", free_port()],
        "evaluate": ["evaluate", "--run", run, "--hidden", world["hidden"]],
    }[command]


@pytest.mark.parametrize("case, command", RUN_MATRIX, ids=[f"{b}-{a}" for a, b in RUN_MATRIX])
def test_bad_run_folder(world, capsys, tmp_path, case, command):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    _sqlite_checkpoint(run / store.STORE_NAME)
    RUN_BUILDERS[case](run)
    inputs = [world["images"], world["sparse"], world["hidden"]]
    before_inputs = tree_hash(*inputs)
    before_run = tree_hash(run) if command not in ("mine",) else None
    out = tmp_path / "out" / "result.json"
    out.parent.mkdir()
    code, stdout, err = cli(capsys, *run_command(world, command, run, out))
    expect = RUN_EXPECT[case][command]
    if expect == "ok":
        assert code == 0, err
    else:
        assert_clean(code, err, run.name, expect[1], expected=expect[0])
        assert not list(out.parent.iterdir()), "a failed command left output behind"
    assert tree_hash(*inputs) == before_inputs
    if before_run is not None:   # read-only commands leave the run folder as it was
        assert tree_hash(run) == before_run


# ----------------------------------------------------------------------------- real processes


SUBPROCESS_SAMPLE = [
    ("sparsify", "truncated"), ("train", "decompression bomb"), ("export", "store of another version"),
    ("candidates", "garbage store"), ("review", "half-written store"),
    ("mine", "config.json of another version"),
]


@pytest.mark.parametrize("command, case", SUBPROCESS_SAMPLE, ids=[c for c, _ in SUBPROCESS_SAMPLE])
def test_the_console_script_exits_cleanly(world, tmp_path, command, case):
    """The same through a real `python -m comining` process: exit 2, a line, no traceback."""
    if case in ANN_CASES:
        ann = write_case(world, case)
        args, needle, name = ann_command(world, command, ann, tmp_path), ANN_CASES[case][1], ann.name
    else:
        run = tmp_path / "run"
        shutil.copytree(world["run"], run)
        RUN_BUILDERS[case](run)
        args, needle, name = run_command(world, command, run, tmp_path / "o.json"), \
            RUN_EXPECT[case][command][1], run.name
    proc = run_cli(*args, timeout=120)
    assert_clean_error(proc, name, needle, code=2)


USAGE_CASES = [(c, [], "arguments are required") for c in
               ("synth", "sparsify", "check", "train", "mine", "candidates", "predict", "evaluate",
                "review", "export")] + [
    ("export", ["--run", "r", "--out", "o.json", "--accept", "bogus"], "invalid choice: 'bogus'"),
    ("train", ["--images", "i", "--ann", "a", "--run", "r", "--iters", "many"],
     "invalid int value: 'many'"),
    ("nope", [], "invalid choice: 'nope'")]


@pytest.mark.parametrize("command, args, needle", USAGE_CASES,
                         ids=[f"{c}-{n.split(':')[0]}" for c, _, n in USAGE_CASES])
def test_bad_usage_is_one_line_and_exit_2(capsys, command, args, needle):
    code, out, err = cli(capsys, command, *args)
    assert_clean(code, err, needle, "--help")
    assert len(err.strip().splitlines()) == 1 and not out


def test_debug_shows_the_traceback(world, tmp_path):
    ann = write_case(world, "truncated")
    proc = run_cli("--debug", "sparsify", "--ann", ann, "--protocol", "hard",
                   "--out", tmp_path / "s.json", "--hidden", tmp_path / "h.json")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "InputError" in proc.stderr


def test_unexpected_errors_stay_on_one_line(capsys, monkeypatch, tmp_path, world):
    """A failure that is not ours (here a multi-line RuntimeError): exit 1, one line."""
    import comining.cli.candidates as cand

    def boom(*a, **k):
        raise RuntimeError("first line\n\tsecond line\n\tthird line\n\tfourth line")

    monkeypatch.setattr(cand, "export_candidates", boom)
    code, _, err = cli(capsys, "candidates", "--run", world["run"], "--out", tmp_path / "c.json")
    assert_clean(code, err, "RuntimeError: first line", "--debug", expected=1)
    assert "second line" not in err


# ----------------------------------------------------------------------------- unusual, valid


def _unusual_images(root: Path, rng) -> list[tuple[str, Image.Image, int, int]]:
    """(file name, PIL image to save, json width, json height) of every odd kind."""
    arr = (rng.random((72, 96)) * 255).astype(np.uint8)
    rgb = np.dstack([arr, arr[::-1], np.roll(arr, 7, axis=1)])
    exif_img = Image.fromarray(rgb[:, :80])      # stored 80 x 72, EXIF: rotate 90 -> 72 x 80
    exif = exif_img.getexif()
    exif[0x0112] = 6
    exif_img.info["exif"] = exif.tobytes()
    return [
        ("gray.png", Image.fromarray(arr, "L"), 96, 72),
        ("rgba.png", Image.fromarray(np.dstack([rgb, np.full_like(arr, 200)]), "RGBA"), 96, 72),
        ("gray16.png", Image.fromarray(arr.astype(np.uint16) * 257, "I;16"), 96, 72),
        ("palette.png", Image.fromarray(rgb).convert("P"), 96, 72),
        ("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), 96, 72),
        ("exif rotated.jpg", exif_img, 72, 80),
        ("ünïcødé ✓ name.png", Image.fromarray(rgb), 96, 72),
        ("sub dir/with  spaces.jpg", Image.fromarray(rgb), 96, 72),
        ("no annotations.png", Image.fromarray(rgb[::-1]), 96, 72),
        ("plain.png", Image.fromarray(rgb[:, ::-1]), 96, 72),
    ]


def unusual_dataset(root: Path, n_classes: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    images = root / "images"
    cat_ids = [3 * k + 1 for k in range(n_classes)]        # sparse, non-contiguous ids
    data = {"images": [], "annotations": [],
            "categories": [{"id": c, "name": f"class {c}"} for c in cat_ids]}
    aid = 1
    for i, (name, img, w, h) in enumerate(_unusual_images(root, rng), 1):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        kw = {"exif": img.info["exif"]} if "exif" in img.info else {}
        img.save(images / name, **kw)
        data["images"].append({"id": i * 10, "file_name": name, "width": w, "height": h})
        if name.startswith("no annotations"):
            continue
        for k in range(2):
            data["annotations"].append({"id": aid, "image_id": i * 10,
                                        "category_id": cat_ids[(aid * 7) % n_classes],
                                        "bbox": [4 + 20 * k, 6 + 10 * k, 30, 28], "area": 840,
                                        "iscrowd": 0})
            aid += 1
    ann = root / "ann.json"
    ann.write_text(json.dumps(data, ensure_ascii=False))
    return images, ann


@pytest.mark.parametrize("n_classes", [1, 81])
def test_unusual_images_and_class_counts_train_mine_review_export(capsys, tmp_path, n_classes):
    """Grayscale, RGBA, 16-bit, palette, CMYK, EXIF-rotated images, unicode and spaces
    in file names, an image without annotations, one class or 81: check, sparsify,
    train + mining, candidates, predict, the review's image loading and export all work."""
    images, ann = unusual_dataset(tmp_path, n_classes)
    before = tree_hash(images, ann)
    code, out, err = cli(capsys, "check", "--ann", ann, "--images", images)
    assert code == 0, err
    assert "ok: 10 images (1 without annotations), 18 boxes" in out and f"{n_classes} classes" in out
    code, _, err = cli(capsys, "sparsify", "--ann", ann, "--protocol", "easy", "--out",
                       tmp_path / "sp.json", "--hidden", tmp_path / "hid.json")
    assert code == 0, err
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--images", images, "--ann", tmp_path / "sp.json",
                       "--run", run, "--hidden", tmp_path / "hid.json", "--score-thresh", "0.001", "--review-score-floor", "0.001",
                       *TINY)
    assert code == 0, err
    code, _, err = cli(capsys, "candidates", "--run", run, "--out", tmp_path / "c.json")
    assert code == 0, err
    cands = json.loads((tmp_path / "c.json").read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in json.loads(ann.read_text())["images"]}
    assert {c["image_id"] for c in cands} == set(sizes)          # every image was mined
    valid = {3 * k + 1 for k in range(n_classes)}
    for c in cands:
        x, y, w, h = c["bbox"]
        iw, ih = sizes[c["image_id"]]
        assert c["category_id"] in valid
        assert 0 <= x and 0 <= y and x + w <= iw + 1e-3 and y + h <= ih + 1e-3
    code, printed, err = cli(capsys, "predict", "--run", run, "--images", images, "--ann", ann,
                             "--out", tmp_path / "d.json", "--device", "cpu")
    assert code == 0, err
    dets = json.loads((tmp_path / "d.json").read_text())
    assert f"wrote {len(dets)} detections" in printed
    # a 2-iteration detector scores little above predict's 0.05: the same detector with a
    # lower threshold shows every image's boxes are in its own (original) pixels
    from comining.predict import predict_dataset
    low = predict_dataset(run, images, ann, device="cpu", num_workers=0, score_thresh=0.001)
    assert {d["image_id"] for d in low} == set(sizes)
    for d, floor in [(d, 0.05) for d in dets] + [(d, 0.001) for d in low]:
        x, y, w, h = d["bbox"]
        iw, ih = sizes[d["image_id"]]
        assert d["category_id"] in valid and floor <= d["score"] <= 1
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0
        assert x + w <= iw + 1e-3 and y + h <= ih + 1e-3, (d, iw, ih)

    r = review.open_run(run)
    try:
        for image_id, (w, h) in sizes.items():
            rgb, problem = r.load_image(image_id)
            assert problem is None, problem
            assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
        ck = r.checkpoints()[-1]
        items = review.queue_items(r, ck)
        exif_id = next(im["id"] for im in json.loads(ann.read_text())["images"]
                       if im["file_name"].startswith("exif"))
        chosen = [next(it for it in items if it.image_id == exif_id), items[0]]
        for it in chosen:
            review.decide(r, it.id, "accepted", client="t")
    finally:
        r.close()
    code, _, err = cli(capsys, "export", "--run", run, "--out", tmp_path / "enlarged.json")
    assert code == 0, err
    enlarged = json.loads((tmp_path / "enlarged.json").read_text(encoding="utf-8"))
    new = [a for a in enlarged["annotations"] if "comining" in a]
    assert len(new) == len({(it.image_id, it.id) for it in chosen})
    assert [im["file_name"] for im in enlarged["images"]] == \
        [im["file_name"] for im in json.loads(ann.read_text())["images"]]
    load_coco(tmp_path / "enlarged.json", images)                 # a valid dataset again
    assert tree_hash(images, ann) == before


# ----------------------------------------------------------------------------- properties

coord = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)


@st.composite
def image_and_boxes(draw):
    w0, h0 = draw(st.integers(1, 700)), draw(st.integers(1, 700))
    n = draw(st.integers(0, 6))
    boxes = []
    for _ in range(n):
        x1 = draw(st.floats(0, w0, allow_nan=False))
        y1 = draw(st.floats(0, h0, allow_nan=False))
        x2 = draw(st.floats(x1, w0, allow_nan=False))
        y2 = draw(st.floats(y1, h0, allow_nan=False))
        boxes.append([x1, y1, x2, y2])
    return w0, h0, np.asarray(boxes, np.float32).reshape(-1, 4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=image_and_boxes(), size=st.integers(64, 320), flip=st.booleans())
def test_property_geometry_round_trip(data, size, flip):
    """apply_geometry then boxes_to_original gives the boxes back (to a hundredth of a
    resized pixel), the resized boxes lie in the valid (unpadded) area, and the image is
    the fixed square with its padding black."""
    w0, h0, boxes = data
    image = torch.full((3, h0, w0), 200, dtype=torch.uint8)
    padded, out, scale, (h, w) = apply_geometry(image, boxes, size, flip)
    assert padded.shape == (3, size, size) and max(h, w) == size and h >= 1 and w >= 1
    assert not padded[:, h:, :].any() and not padded[:, :, w:].any()
    assert out.shape == boxes.shape
    eps = 1e-3 * size
    assert (out[:, [0, 2]] >= -eps).all() and (out[:, [0, 2]] <= w + eps).all()
    assert (out[:, [1, 3]] >= -eps).all() and (out[:, [1, 3]] <= h + eps).all()
    assert (out[:, 2] >= out[:, 0] - eps).all() and (out[:, 3] >= out[:, 1] - eps).all()
    back = boxes_to_original(out, scale, (h, w), flip, w0, h0)
    tol_x, tol_y = 0.01 / scale[0] + 1e-4 * w0, 0.01 / scale[1] + 1e-4 * h0
    diff = (back - torch.as_tensor(boxes)).abs()
    assert (diff[:, [0, 2]] <= tol_x).all() and (diff[:, [1, 3]] <= tol_y).all(), (boxes, back)


@settings(max_examples=300, deadline=None)
@given(x=coord, y=coord, w=st.floats(-10, 2e4, allow_nan=False), h=st.floats(-10, 2e4, allow_nan=False),
       width=st.integers(1, 5000), height=st.integers(1, 5000))
def test_property_xywh_to_xyxy_clipping(x, y, w, h, width, height):
    """The clipped xyxy box is the part of the box inside the image: ordered, inside,
    exact when the box was inside, and a box that validation accepts keeps at least
    half its area."""
    x1, y1, x2, y2 = _xywh_to_xyxy_clipped([x, y, w, h], width, height)
    assert 0 <= x1 <= width and 0 <= x2 <= width and 0 <= y1 <= height and 0 <= y2 <= height
    if w >= 0 and h >= 0:
        assert x1 <= x2 and y1 <= y2
        assert x1 == pytest.approx(min(max(x, 0), width)) and x2 == pytest.approx(min(max(x + w, 0), width))
        if 0 <= x and x + w <= width and 0 <= y and y + h <= height:
            assert (x1, y1, x2, y2) == pytest.approx((x, y, x + w, y + h))
        # clipping twice changes nothing
        assert _xywh_to_xyxy_clipped([x1, y1, x2 - x1, y2 - y1], width, height) == \
            pytest.approx([x1, y1, x2, y2])
    if _box_problem([x, y, w, h], width, height) is None:
        assert (x2 - x1) * (y2 - y1) >= 0.5 * w * h * (1 - 1e-9)
        assert x2 > x1 and y2 > y1


@settings(max_examples=300, deadline=None)
@given(box=st.lists(st.one_of(coord, st.just(float("nan")), st.just(float("inf"))),
                    min_size=4, max_size=4),
       width=st.integers(1, 3000), height=st.integers(1, 3000))
def test_property_clean_box_for_export(box, width, height):
    """review.clean_box (edited and exported boxes): a finite box of at least 1 px inside
    the image, or an InputError; never NaN, never outside."""
    try:
        x, y, w, h = review.clean_box(box, width, height)
    except InputError:
        finite = all(math.isfinite(v) for v in box)
        if finite:
            x1, y1 = min(max(box[0], 0), width), min(max(box[1], 0), height)
            x2 = min(max(box[0] + box[2], 0), width)
            y2 = min(max(box[1] + box[3], 0), height)
            assert x2 - x1 < 1 or y2 - y1 < 1
        return
    assert all(math.isfinite(v) for v in (x, y, w, h))
    assert w >= 0.99 and h >= 0.99
    assert x >= 0 and y >= 0 and x + w <= width + 0.011 and y + h <= height + 0.011


@settings(max_examples=200, deadline=None)
@given(boxes=st.lists(st.lists(st.one_of(coord, st.just(float("nan")), st.just(float("-inf"))),
                               min_size=4, max_size=4), min_size=1, max_size=8),
       width=st.integers(1, 3000), height=st.integers(1, 3000))
def test_property_clean_boxes_is_clean_box_at_once(boxes, width, height):
    """The export's vectorised review.clean_boxes keeps exactly the boxes clean_box
    accepts, with the same clipped box (to the 0.01 px both round to)."""
    got, ok = review.clean_boxes(boxes, [width] * len(boxes), [height] * len(boxes))
    for box, g, usable in zip(boxes, got.tolist(), ok.tolist()):
        try:
            want = review.clean_box(box, width, height)
        except InputError:
            assert not usable
            continue
        assert usable
        assert g == pytest.approx(list(want), abs=0.0101)


box_xywh = st.tuples(st.floats(-50, 500), st.floats(-50, 500), st.floats(0, 300), st.floats(0, 300))


@settings(max_examples=200, deadline=None)
@given(a=st.lists(box_xywh, max_size=6), b=st.lists(box_xywh, max_size=6))
def test_property_iou_matrix_is_iou_of_every_pair(a, b):
    """review.iou_matrix (pycocotools) agrees with the scalar review.iou used by the
    grouping, including empty lists and zero-area boxes."""
    m = review.iou_matrix(a, b)
    assert m.shape == (len(a), len(b))
    for i, box_a in enumerate(a):
        for j, box_b in enumerate(b):
            assert m[i, j] == pytest.approx(review.iou(box_a, box_b), abs=1e-9)
            if min(box_a[2:] + box_b[2:]) >= 1e-3:   # (x + w) - x loses a 1e-9 px side
                assert 0.0 <= m[i, j] <= 1.0 + 1e-9
