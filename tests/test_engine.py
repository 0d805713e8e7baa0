"""The training engine on CPU: methods, targets, checkpoints, resume, mining, NaN guard."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from comining import siamese, store
from comining.config import METHODS, MiningThresholds, ReviewMining, TrainConfig
from comining.checkpoints import list_checkpoints, load_checkpoint
from comining.engine import train
from comining.errors import CominingError, InputError
from conftest import assert_clean_error, run_cli, write_json

torch.set_num_threads(2)


def tiny_config(ds: Path, run: Path, **overrides) -> TrainConfig:
    base = dict(images=str(ds / "images"), ann=str(ds / "annotations" / "train.json"), run=str(run),
                backbone="mobilenet_v3", fpn_channels=32, image_size=96, batch_size=2, iters=2,
                checkpoint_every=2, weights_backbone="none", device="cpu", num_workers=0,
                log_every=1, mine=False)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_with_finite_losses(tiny_dataset, tmp_path, detector, method):
    run = train(tiny_config(tiny_dataset, tmp_path / "run", detector=detector, method=method),
                progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    for r in rows:
        assert torch.isfinite(torch.tensor(r["loss"])) and r["loss"] > 0
        views = {"original": ("original",), "augmented": ("augmented",)}.get(method, None)
        expected = views or (("original",) if method == "self" else ("original", "augmented"))
        assert {k[5:] for k in r if k.startswith("loss_")} == set(expected)


class FakeBatch:
    def __init__(self):
        self.targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])}]


def pseudo_of(view):
    x = 20.0 if view == "original" else 40.0
    return [{"boxes": torch.tensor([[x, x, x + 5, x + 5]]), "labels": torch.tensor([1])}]


def target_boxes(targets):
    return {v: t[0]["boxes"][:, 0].tolist() for v, t in targets.items()}


def test_view_targets_follow_each_method():
    ann = FakeBatch().targets
    pseudo = {"original": pseudo_of("original"), "augmented": pseudo_of("augmented")}
    assert target_boxes(siamese.build_view_targets("original", ann, pseudo)) == {"original": [0.0]}
    assert target_boxes(siamese.build_view_targets("augmented", ann, pseudo)) == {"augmented": [0.0]}
    assert target_boxes(siamese.build_view_targets("joint", ann, pseudo)) == {
        "original": [0.0], "augmented": [0.0]}
    assert target_boxes(siamese.build_view_targets("self", ann, pseudo)) == {"original": [0.0, 20.0]}
    # co-mining: each view learns from the OTHER view's pseudo boxes
    assert target_boxes(siamese.build_view_targets("comining", ann, pseudo)) == {
        "original": [0.0, 40.0], "augmented": [0.0, 20.0]}


def test_training_step_feeds_each_view_the_other_views_pseudo_boxes(tiny_dataset, tmp_path, monkeypatch):
    """Through the real step: each view's loss gets the pseudo boxes made from the OTHER head."""
    calls = []

    def fake_pseudo(detector, head, anchors, per_level, batch, thresholds):
        x = 10.0 + len(calls) * 30.0  # a distinct box per call
        calls.append((head["cls_logits"].detach().clone(), x))
        return [{"boxes": torch.tensor([[x, x, x + 8, x + 8]]), "labels": torch.tensor([0]),
                 "scores": torch.tensor([0.9])} for _ in batch.targets]

    monkeypatch.setattr(siamese, "pseudo_boxes", fake_pseudo)
    cfg = tiny_config(tiny_dataset, tmp_path / "run", method="comining")
    from comining.coco import load_coco
    from comining.data import collate
    from comining.engine import RunContext

    ctx = RunContext(cfg, tmp_path / "run", load_coco(cfg.ann, cfg.images), torch.device("cpu"))
    ctx.dense.net.eval()  # per-image outputs independent of the batch, to identify the heads
    batch = collate([ctx.train_dataset[0], ctx.train_dataset[1]])
    out = siamese.training_step(ctx.dense, batch, "comining", cfg.thresholds,
                                lambda img: 255 - img)  # a view far from the original
    assert len(calls) == 2
    with torch.no_grad():
        original_head = ctx.dense(batch.images)[0]["cls_logits"]
    distance = [float((head - original_head).abs().max()) for head, _ in calls]
    i_orig = min(range(2), key=lambda i: distance[i])
    assert distance[1 - i_orig] > 100 * distance[i_orig]  # the heads are told apart
    from_original, from_augmented = calls[i_orig][1], calls[1 - i_orig][1]
    n_ann = len(batch.targets[0]["boxes"])
    assert out.targets["original"][0]["boxes"][n_ann:, 0].tolist() == [from_augmented]
    assert out.targets["augmented"][0]["boxes"][n_ann:, 0].tolist() == [from_original]


def test_crowd_region_suppresses_pseudo_boxes_in_a_training_step(tmp_path, monkeypatch, one_thread):
    """Through a real co-mining step on a dataset with a crowd annotation: a confident
    detection inside the crowd region never becomes a target, the same detection outside
    it does, and the crowd region itself is no target either."""
    import numpy as np
    from PIL import Image

    from comining.coco import load_coco
    from comining.data import collate
    from comining.engine import RunContext

    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(tmp_path / "images" / "a.png")
    ann = write_json(tmp_path / "ann.json", {
        "images": [{"id": 1, "file_name": "a.png", "width": 128, "height": 128}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 8, 16, 16], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [64, 0, 64, 64], "iscrowd": 1}]})
    inside, outside = [72.0, 8.0, 104.0, 40.0], [8.0, 80.0, 40.0, 112.0]

    def confident(detector, head, anchors, per_level, sizes, **kwargs):
        return [{"boxes": torch.tensor([inside, outside]), "scores": torch.tensor([0.9, 0.9]),
                 "labels": torch.tensor([0, 0])} for _ in sizes]

    monkeypatch.setattr(siamese, "view_detections", confident)
    cfg = tiny_config(tmp_path, tmp_path / "run", images=str(tmp_path / "images"), ann=str(ann),
                      image_size=128)   # 128 px images at 128 px: network pixels = image pixels
    ctx = RunContext(cfg, tmp_path / "run", load_coco(cfg.ann, cfg.images), torch.device("cpu"))
    batch = collate([ctx.train_dataset[0]])
    out = siamese.training_step(ctx.dense, batch, "comining", cfg.thresholds, lambda img: img)
    assert out.pseudo_counts == {"original": 1, "augmented": 1}
    for view in ("original", "augmented"):
        t = out.targets[view][0]
        assert t["boxes"].tolist() == [[8.0, 8.0, 24.0, 24.0], outside], view
        assert t["labels"].tolist() == [0, 0]
    assert torch.isfinite(out.loss)


def test_a_sliver_is_no_pseudo_box_and_leaves_retinanets_loss_as_without_it(tmp_path, monkeypatch,
                                                                                 one_thread):
    """Through a real RetinaNet co-mining step: a confident 0.5 x 12 px sliver (what an
    untrained detector scores above tau) never becomes a target of either view, and the
    loss is the loss with only the real pseudo box; a 12 px box beside it is a target."""
    import numpy as np
    from PIL import Image

    from comining.coco import load_coco
    from comining.data import collate
    from comining.engine import RunContext

    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(tmp_path / "images" / "a.png")
    ann = write_json(tmp_path / "ann.json", {
        "images": [{"id": 1, "file_name": "a.png", "width": 128, "height": 128}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 8, 16, 16]}]})
    sliver, real = [60.0, 60.0, 60.5, 72.0], [80.0, 80.0, 92.0, 92.0]
    shown = {"boxes": [sliver, real]}

    def confident(detector, head, anchors, per_level, sizes, **kwargs):
        n = len(shown["boxes"])
        return [{"boxes": torch.tensor(shown["boxes"]), "scores": torch.full((n,), 0.9),
                 "labels": torch.zeros(n, dtype=torch.long)} for _ in sizes]

    monkeypatch.setattr(siamese, "view_detections", confident)
    cfg = tiny_config(tmp_path, tmp_path / "run", images=str(tmp_path / "images"), ann=str(ann),
                      image_size=128, detector="retinanet")   # network pixels = image pixels
    ctx = RunContext(cfg, tmp_path / "run", load_coco(cfg.ann, cfg.images), torch.device("cpu"))
    ctx.dense.net.eval()       # the same head outputs for both steps below
    batch = collate([ctx.train_dataset[0]])
    out = siamese.training_step(ctx.dense, batch, "comining", cfg.thresholds, lambda img: img)
    for view in ("original", "augmented"):
        assert out.targets[view][0]["boxes"].tolist() == [[8.0, 8.0, 24.0, 24.0], real], view
    shown["boxes"] = [real]
    without = siamese.training_step(ctx.dense, batch, "comining", cfg.thresholds, lambda img: img)
    assert float(out.loss.detach()) == pytest.approx(float(without.loss.detach()), rel=1e-6)


def test_config_scales_the_papers_schedule():
    """The paper's 90k schedule (1k warm-up, steps at 60k/80k, lr 0.01 at batch 16) and its
    scaled forms."""
    def cfg(**kw):
        return TrainConfig(images="i", ann="a.json", run="r", **kw)
    paper = cfg(iters=90_000, batch_size=16)
    assert (paper.warmup, paper.lr_steps, paper.base_lr) == (1000, (60_000, 80_000), 0.01)
    short = cfg(iters=1200, batch_size=8)
    # 1200/90 = 13 iterations, raised to 10% of the run (capped at 100); 800 = 1200*60/90,
    # 1066.7 = 1200*80/90 rounds to 1067; lr 0.01 * 8/16
    assert (short.warmup, short.lr_steps, short.base_lr) == (100, (800, 1067), 0.005)
    assert cfg(iters=9, warmup_iters=4, lr=0.2).warmup == 4 and cfg(iters=9, lr=0.2).base_lr == 0.2


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine two threads mostly wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_learning_rate_schedule_of_a_training_run(tiny_dataset, tmp_path, monkeypatch, one_thread):
    """The lr each optimizer step of a real run uses, and the lr metrics.jsonl logs: linear
    warm-up from 0.001 x base, then base, x0.1 at 60/90 and again at 80/90 of the run."""
    used = []
    real_step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    run = train(tiny_config(tiny_dataset, tmp_path / "run", method="original", iters=9,
                            warmup_iters=4, checkpoint_every=9), progress=False)
    base = 0.01 * 2 / 16                     # the paper's 0.01 at batch 16, at batch 2
    # iteration i: warm-up 0.001 + 0.999 * i / 4 for i < 4; steps at 9*60/90 = 6, 9*80/90 = 8
    factor = [0.001, 0.25075, 0.5005, 0.75025, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    assert used == pytest.approx([base * f for f in factor[:9]], rel=1e-9, abs=0)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # a row is written after the step of its iteration: the lr of the next one
    assert [r["lr"] for r in rows] == pytest.approx([base * f for f in factor[1:]], rel=1e-9, abs=0)


def test_checkpoint_round_trip_and_store(tiny_dataset, tmp_path):
    low = MiningThresholds(score_thresh=0.001, nms_iou=0.5, gt_iou=0.4, max_per_image=5)
    cfg = tiny_config(tiny_dataset, tmp_path / "run", iters=4, checkpoint_every=2, mine=True,
                      thresholds=low,   # one pass (the 96 px training size): its cap of 5
                      review=ReviewMining(score_floor=0.001, max_per_view=5, native=False))
    run = train(cfg, progress=False)
    its = [it for it, _ in list_checkpoints(run)]
    assert its == [2, 4]
    state = load_checkpoint(list_checkpoints(run)[-1][1])
    assert state["iteration"] == 4 and state["config"]["method"] == "comining"
    from torchvision.models.detection import RetinaNet
    assert all(isinstance(v, torch.Tensor) for v in state["model"].values())
    # a stock torchvision model loads the checkpoint's state dict as is
    from comining.model import build_detector
    model = build_detector("retinanet", "mobilenet_v3", 3, image_size=96, fpn_channels=32)
    assert isinstance(model, RetinaNet)
    model.load_state_dict(state["model"])
    conn = store.connect(run / store.STORE_NAME)
    for it in its:
        rows = store.candidates(conn, it)
        views = {r["view"] for r in rows}
        assert views == {"original", "augmented"}, it
        per_image = {}
        for r in rows:
            per_image.setdefault((r["image_id"], r["view"]), 0)
            per_image[(r["image_id"], r["view"])] += 1
        assert max(per_image.values()) <= 5
        assert len({r["image_id"] for r in rows}) == 16  # both views mined every image
    assert any(r["agreed"] for r in store.candidates(conn, 4))
    conn.close()


def test_mining_keeps_no_box_thinner_than_a_pixel(tiny_dataset, tmp_path, monkeypatch):
    """A collapsed box (zero width, or a sliver) is not a candidate, and agreement is
    computed between the boxes that stay."""
    from comining import mining
    from comining.coco import load_coco
    from comining.engine import RunContext

    def fake_detections(detector, head, anchors, per_level, sizes, **kwargs):
        boxes = torch.tensor([[10.0, 10, 40, 40],      # a real box
                              [50.0, 50, 50, 70],      # zero width
                              [60.0, 20, 80, 20.2],    # a 0.2 px sliver on the canvas
                              [70.0, 70, 90, 90]])     # a real box
        return [{"boxes": boxes.clone(), "labels": torch.tensor([0, 0, 1, 1]),
                 "scores": torch.tensor([0.9, 0.8, 0.7, 0.6])} for _ in sizes]

    monkeypatch.setattr(mining, "view_detections", fake_detections)
    cfg = tiny_config(tiny_dataset, tmp_path / "run")
    ctx = RunContext(cfg, tmp_path / "run", load_coco(cfg.ann, cfg.images), torch.device("cpu"))
    # no annotation to set the boxes apart: only the slivers may go
    ctx.train_dataset.coco.images = [dataclasses.replace(r, boxes=r.boxes[:0], labels=r.labels[:0])
                                     for r in ctx.train_dataset.coco.images]
    cands = mining.mine_dataset(ctx.dense, ctx.train_dataset, cfg.thresholds, augment="color",
                                device=torch.device("cpu"), batch_size=2, num_workers=0, seed=0,
                                review=ReviewMining(native=False))   # one pass of the fakes
    n_images = len(ctx.train_dataset)
    assert len(cands) == n_images * 2 * 2          # two real boxes per view per image
    assert all(c["bbox"][2] >= 1 and c["bbox"][3] >= 1 for c in cands)
    assert sorted({c["score"] for c in cands}) == pytest.approx([0.6, 0.9])
    assert all(c["agreed"] for c in cands)         # each real box has its partner
    partners = {c["key"]: c["partner_key"] for c in cands}
    assert all(partners[p] == k for k, p in partners.items())


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_dataset, tmp_path):
    straight = train(tiny_config(tiny_dataset, tmp_path / "a", iters=4, checkpoint_every=2,
                                 method="comining"), progress=False)
    # b: the same run killed after its checkpoint at 2 (its later files gone), then resumed
    cfg_b = tiny_config(tiny_dataset, tmp_path / "b", iters=4, checkpoint_every=2, method="comining")
    train(cfg_b, progress=False)
    list_checkpoints(tmp_path / "b")[-1][1].unlink()
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 3, "loss": 1.0}\n{"iteration": 4, "lo')  # cut by the kill
    resumed = train(cfg_b, resume=True, progress=False)
    a = load_checkpoint(list_checkpoints(straight)[-1][1])["model"]
    b = load_checkpoint(list_checkpoints(resumed)[-1][1])["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = (resumed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [1, 2, 3, 4]


def test_existing_run_needs_resume(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, tmp_path / "run")
    train(cfg, progress=False)
    with pytest.raises(InputError, match="--resume"):
        train(cfg, progress=False)


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_dataset, tmp_path / "run", iters=6, checkpoint_every=2)
    real = siamese.view_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        losses = real(*args, **kwargs)
        if calls["n"] > 6:  # iteration 4 of a two-view method (2 calls per iteration)
            losses["classification"] = losses["classification"] * float("nan")
        return losses

    monkeypatch.setattr(siamese, "view_loss", poisoned)
    with pytest.raises(CominingError, match="non-finite loss at iteration 3") as exc:
        train(cfg, progress=False)
    assert "iter_0000002.pt" in str(exc.value)
    assert [it for it, _ in list_checkpoints(tmp_path / "run")] == [2]


def test_train_cli_reports_bad_input_in_one_line(tiny_dataset, tmp_path):
    proc = run_cli("train", "--images", tiny_dataset / "images", "--ann", tmp_path / "missing.json",
                   "--run", tmp_path / "run", "--weights-backbone", "none", "--device", "cpu")
    assert_clean_error(proc, "missing.json", "not found")


def test_offline_imagenet_weights_fail_clearly(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    proc = run_cli("train", "--images", tiny_dataset / "images", "--ann",
                   tiny_dataset / "annotations" / "train.json", "--run", tmp_path / "run",
                   "--backbone", "resnet18", "--weights-backbone", "imagenet", "--device", "cpu",
                   "--iters", "1", env={"TORCH_HOME": str(tmp_path / "torch_home"),
                                        "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"})
    assert_clean_error(proc, "ImageNet weights", "--weights-backbone none", code=1)


def test_init_from_a_detector_with_another_number_of_classes(tiny_dataset, tmp_path):
    """--init: a COCO-style detector (91 classes) starts a 3-class run; only the class
    layer is rebuilt, every other weight is loaded."""
    from comining.model import build_detector, load_init

    coco_style = build_detector("retinanet", "mobilenet_v3", 91, image_size=96, fpn_channels=32)
    path = tmp_path / "coco_retinanet.pth"
    torch.save(coco_style.state_dict(), path)
    model = build_detector("retinanet", "mobilenet_v3", 3, image_size=96, fpn_channels=32)
    report = load_init(model, path)
    assert report["reinitialised"] == ["head.classification_head.cls_logits.weight",
                                       "head.classification_head.cls_logits.bias"]
    src, dst = coco_style.state_dict(), model.state_dict()
    assert torch.equal(src["head.regression_head.bbox_reg.weight"], dst["head.regression_head.bbox_reg.weight"])
    assert dst["head.classification_head.cls_logits.weight"].shape[0] == 9 * 3
    # and a training run starts from it
    run = train(tiny_config(tiny_dataset, tmp_path / "run", init=str(path), iters=1,
                            checkpoint_every=1), progress=False)
    assert list_checkpoints(run)


def test_init_from_another_backbone_is_refused(tmp_path):
    from comining.model import build_detector, load_init

    other = build_detector("fcos", "resnet18", 3, image_size=96, fpn_channels=32)
    path = tmp_path / "other.pth"
    torch.save(other.state_dict(), path)
    model = build_detector("retinanet", "mobilenet_v3", 3, image_size=96, fpn_channels=32)
    with pytest.raises(InputError, match="tensors fit this detector"):
        load_init(model, path)


def test_resolve_checkpoint_names_what_exists(tiny_dataset, tmp_path):
    from comining.checkpoints import resolve_checkpoint

    run = train(tiny_config(tiny_dataset, tmp_path / "run", iters=2, checkpoint_every=1), progress=False)
    assert resolve_checkpoint(run, "last")[0] == 2
    assert resolve_checkpoint(run, "1")[0] == 1
    with pytest.raises(InputError, match="no checkpoint at iteration 7; have 1, 2"):
        resolve_checkpoint(run, 7)
    with pytest.raises(InputError, match="not 'last' or an iteration"):
        resolve_checkpoint(run, "latest")
