"""Every user-supplied torch file is read with weights_only=True: a crafted pickle is
refused with one line naming it (exit 2) and its code never runs."""

from __future__ import annotations

import pathlib
import shutil

import pytest
import torch

from comining.cli import main
from comining.checkpoints import list_checkpoints, load_checkpoint

torch.set_num_threads(2)


class WritesAFile:
    """Unpickling this touches `marker` (what a crafted file could do with os.system)."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def crafted_checkpoint(path: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    torch.save({"model": WritesAFile(marker), "iteration": 1, "optimizer": {}}, path)
    return path


def train_args(ds, run, iters=2):
    return ["train", "--images", str(ds / "images"), "--ann", str(ds / "annotations" / "train.json"),
            "--run", str(run), "--backbone", "mobilenet_v3", "--fpn-channels", "32",
            "--image-size", "96", "--batch-size", "2", "--iters", str(iters), "--checkpoint-every", "1",
            "--workers", "0", "--weights-backbone", "none", "--device", "cpu", "--no-mine",
            "--no-progress"]


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("safe") / "run"
    assert main(train_args(tiny_dataset, run, iters=1)) == 0
    return run


def test_the_crafted_file_would_write_its_file_if_unpickled(tmp_path):
    """The test's premise: loading the file unsafely runs its code."""
    marker = tmp_path / "pwned"
    path = crafted_checkpoint(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_checkpoint_holds_only_safe_types(trained_run):
    """What save_checkpoint writes (weights, optimizer, scheduler, RNG, config) loads under
    weights_only=True, so resume needs no unsafe load."""
    state = torch.load(list_checkpoints(trained_run)[-1][1], weights_only=True)
    assert {"model", "optimizer", "scheduler", "iteration", "rng", "config", "categories"} <= set(state)
    assert isinstance(state["rng"]["torch"], torch.Tensor)


LOADERS = ["init", "weights-backbone", "resume", "mine", "predict", "evaluate"]


@pytest.mark.parametrize("loader", LOADERS)
def test_every_loader_refuses_a_crafted_pickle(loader, tiny_dataset, trained_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    checkpoint = list_checkpoints(run)[-1][1]
    evil = tmp_path / "evil.pt"
    val = tiny_dataset / "annotations" / "val.json"
    if loader in ("init", "weights-backbone"):
        crafted_checkpoint(evil, marker)
        args = train_args(tiny_dataset, tmp_path / "new_run") + [f"--{loader}", str(evil)]
        if loader == "weights-backbone":
            args = [a for a in args if a != "none"]
            args.remove("--weights-backbone")
    else:
        evil = crafted_checkpoint(checkpoint, marker)   # the run's own checkpoint replaced
        args = {"resume": train_args(tiny_dataset, run) + ["--resume"],
                "mine": ["mine", "--run", str(run), "--device", "cpu", "--workers", "0"],
                "predict": ["predict", "--run", str(run), "--images", str(tiny_dataset / "images"),
                            "--ann", str(val), "--out", str(tmp_path / "dets.json"), "--device", "cpu"],
                "evaluate": ["evaluate", "--run", str(run), "--images", str(tiny_dataset / "images"),
                             "--ann", str(val), "--checkpoint", "1", "--device", "cpu"]}[loader]
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    assert str(evil) in err[0] and "refused to load" in err[0], err[0]
    assert not marker.exists()


def test_a_damaged_checkpoint_is_still_reported_as_damaged(trained_run, tmp_path):
    path = tmp_path / "iter_0000001.pt"
    path.write_bytes(list_checkpoints(trained_run)[-1][1].read_bytes()[:1000])
    from comining.errors import InputError
    with pytest.raises(InputError, match="cannot read checkpoint .*damaged"):
        load_checkpoint(path)
