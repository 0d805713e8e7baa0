"""--init by torchvision weights name, --init-keep-classes: offline, with stand-in state dicts.

No test downloads: torchvision's download function is replaced by one that returns a state
dict built here (by torchvision's own builders, so the layout is torchvision's, not ours),
or raises as an offline machine does.
"""

from __future__ import annotations

import json
import math
from urllib.error import URLError

import pytest
import torch
import torchvision.models._api as tv_api
from torchvision.models import detection as tvd

from comining.cli import main
from comining.checkpoints import list_checkpoints, load_checkpoint
from comining.engine import train
from comining.errors import InputError
from comining.model import build_detector, init_weights_by_name, load_init
from test_engine import tiny_config

torch.set_num_threads(2)
CLS = "head.classification_head.cls_logits"

# name -> (torchvision builder making the same layout, detector)
NAMED = {
    "RetinaNet_ResNet50_FPN_Weights.COCO_V1": (tvd.retinanet_resnet50_fpn, "retinanet"),
    "RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1": (tvd.retinanet_resnet50_fpn_v2, "retinanet"),
    "FCOS_ResNet50_FPN_Weights.COCO_V1": (tvd.fcos_resnet50_fpn, "fcos"),
}


def torchvision_coco_state(builder) -> dict:
    """What the download holds: torchvision's 91-class model, frozen BatchNorm (no
    num_batches_tracked), here with random weights."""
    torch.manual_seed(1)
    sd = builder(weights=None, weights_backbone=None, num_classes=91).state_dict()
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


@pytest.fixture
def fake_download(monkeypatch):
    """Replace torchvision's download; `served[url] = state` decides what a URL returns."""
    calls, served = [], {}

    def load(url, *args, **kwargs):
        calls.append((url, kwargs))
        if url not in served:
            raise URLError("[Errno -3] Temporary failure in name resolution")
        return served[url]

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", load)
    return calls, served


def test_names_resolve_to_torchvision_weights():
    R, R2, F = (tvd.RetinaNet_ResNet50_FPN_Weights, tvd.RetinaNet_ResNet50_FPN_V2_Weights,
                tvd.FCOS_ResNet50_FPN_Weights)
    assert init_weights_by_name("RetinaNet_ResNet50_FPN_Weights.COCO_V1") is R.COCO_V1
    assert init_weights_by_name("RetinaNet_ResNet50_FPN_V2_Weights.DEFAULT") is R2.COCO_V1
    assert init_weights_by_name("torchvision.models.detection.FCOS_ResNet50_FPN_Weights.COCO_V1") is F.COCO_V1
    assert init_weights_by_name("retinanet_resnet50_fpn_v2") is R2.COCO_V1
    assert init_weights_by_name("fcos_resnet50_fpn") is F.COCO_V1
    assert init_weights_by_name("runs/a/checkpoints/iter_0000010.pt") is None  # a path
    with pytest.raises(InputError, match="not one of torchvision's RetinaNet/FCOS COCO weights"):
        init_weights_by_name("ResNet50_Weights.IMAGENET1K_V1")
    with pytest.raises(InputError, match="torchvision has no such weights"):
        init_weights_by_name("RetinaNet_ResNet50_FPN_Weights.COCO_V9")


@pytest.mark.parametrize("name", list(NAMED))
def test_named_weights_load_into_the_layout_they_need(name, fake_download):
    """Every tensor of torchvision's model fits ours (the v2 GroupNorm head, P6 from C5)
    and is loaded, except the classifier, rebuilt for 3 classes; the file is read safely."""
    calls, served = fake_download
    builder, detector = NAMED[name]
    weights = init_weights_by_name(name)
    source = torchvision_coco_state(builder)
    served[weights.url] = source
    model = build_detector(detector, "resnet50", 3, image_size=64, init=name)
    assert set(model.state_dict()) == set(source)
    fresh = model.state_dict()[f"{CLS}.bias"].clone()
    report = load_init(model, name, class_names=["a", "b", "c"])
    assert report["reinitialised"] == [f"{CLS}.weight", f"{CLS}.bias"]
    assert [url for url, _ in calls] == [weights.url]
    assert calls[0][1].get("weights_only") is True
    own = model.state_dict()
    for k, v in source.items():
        if not k.startswith(CLS):
            assert torch.equal(own[k], v), k
    n_anchors = 9 if detector == "retinanet" else 1
    assert own[f"{CLS}.weight"].shape[0] == n_anchors * 3
    assert torch.equal(own[f"{CLS}.bias"], fresh)


def test_a_run_that_cannot_hold_the_named_weights_fails_in_one_line(tiny_dataset, tmp_path,
                                                                   fake_download, capsys):
    calls, _ = fake_download
    code = main(["train", "--images", str(tiny_dataset / "images"),
                 "--ann", str(tiny_dataset / "annotations" / "train.json"), "--run", str(tmp_path / "run"),
                 "--backbone", "mobilenet_v3", "--fpn-channels", "32", "--device", "cpu",
                 "--init", "RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "--detector retinanet --backbone resnet50 --fpn-channels 256" in err[0]
    assert calls == []                      # refused before any download
    assert not (tmp_path / "run" / "config.json").exists()


def test_offline_named_weights_fail_at_once_saying_how_to_pass_a_file(tiny_dataset, tmp_path,
                                                                     fake_download, capsys):
    calls, _ = fake_download   # serves nothing: every URL raises URLError
    code = main(["train", "--images", str(tiny_dataset / "images"),
                 "--ann", str(tiny_dataset / "annotations" / "train.json"), "--run", str(tmp_path / "run"),
                 "--detector", "fcos", "--device", "cpu", "--iters", "1",
                 "--init", "FCOS_ResNet50_FPN_Weights.COCO_V1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    url = tvd.FCOS_ResNet50_FPN_Weights.COCO_V1.url
    assert f"could not download {url} (offline?" in err[0] and "--init PATH" in err[0]
    assert len(calls) == 1
    assert not (tmp_path / "run" / "config.json").exists()   # before any other work


def test_training_from_named_v2_weights_then_predicting_rebuilds_the_v2_layout(tiny_dataset, tmp_path,
                                                                              fake_download):
    calls, served = fake_download
    name = "RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1"
    source = torchvision_coco_state(tvd.retinanet_resnet50_fpn_v2)
    served[init_weights_by_name(name).url] = source
    cfg = tiny_config(tiny_dataset, tmp_path / "run", backbone="resnet50", fpn_channels=256,
                      image_size=64, batch_size=1, iters=1, checkpoint_every=1, init=name,
                      weights_backbone="imagenet")   # superseded by the detector's weights
    run = train(cfg, progress=False)
    assert json.loads((run / "config.json").read_text())["variant"] == "v2"
    state = load_checkpoint(list_checkpoints(run)[-1][1])["model"]
    assert "head.classification_head.conv.0.1.weight" in state          # GroupNorm
    assert state["backbone.fpn.extra_blocks.p6.weight"].shape[1] == 2048  # P6 from C5
    # the frozen backbone stem kept the COCO weights through a training step
    assert torch.equal(state["backbone.body.conv1.weight"], source["backbone.body.conv1.weight"])
    from comining.predict import predict_dataset
    n_calls = len(calls)
    dets = predict_dataset(run, tiny_dataset / "images", tiny_dataset / "annotations" / "val.json",
                           device="cpu", batch_size=2, num_workers=0)
    assert isinstance(dets, list)
    assert len(calls) == n_calls        # predicting needs no download


def coco_layout_file(tmp_path, n_anchors_model="retinanet"):
    """A tiny RetinaNet with torchvision's 91 COCO classes, saved as a plain state dict."""
    torch.manual_seed(2)
    src = build_detector(n_anchors_model, "mobilenet_v3", 91, image_size=96, fpn_channels=32)
    with torch.no_grad():   # distinct rows, so that a wrong row mapping shows
        src.head.classification_head.cls_logits.weight.normal_()
        src.head.classification_head.cls_logits.bias.normal_()
    path = tmp_path / "coco_tiny.pth"
    torch.save(src.state_dict(), path)
    return path, src.state_dict()


@pytest.mark.parametrize("detector,n_anchors", [("retinanet", 9), ("fcos", 1)])
def test_keep_classes_copies_the_matching_coco_rows_anchor_by_anchor(tmp_path, detector, n_anchors):
    path, src = coco_layout_file(tmp_path, detector)
    names = ["car", "widget", "Person"]          # COCO: person is row 1, car row 3 (of 91)
    torch.manual_seed(3)
    model = build_detector(detector, "mobilenet_v3", 3, image_size=96, fpn_channels=32)
    fresh_w = model.state_dict()[f"{CLS}.weight"].clone()
    report = load_init(model, path, class_names=names, keep_classes=True)
    assert report["kept"] == {"car": 3, "Person": 1}
    w, b = model.state_dict()[f"{CLS}.weight"], model.state_dict()[f"{CLS}.bias"]
    sw, sb = src[f"{CLS}.weight"], src[f"{CLS}.bias"]
    assert w.shape[0] == n_anchors * 3
    for a in range(n_anchors):
        assert torch.equal(w[a * 3 + 0], sw[a * 91 + 3]) and b[a * 3 + 0] == sb[a * 91 + 3]
        assert torch.equal(w[a * 3 + 2], sw[a * 91 + 1]) and b[a * 3 + 2] == sb[a * 91 + 1]
        # unmatched: the fresh init (normal weights, the focal-loss prior bias)
        assert torch.equal(w[a * 3 + 1], fresh_w[a * 3 + 1])
        assert b[a * 3 + 1].item() == pytest.approx(-math.log(0.99 / 0.01))


def test_keep_classes_prints_one_line_from_the_cli(tiny_dataset, tmp_path, capsys):
    path, _ = coco_layout_file(tmp_path)
    ann = json.loads((tiny_dataset / "annotations" / "train.json").read_text())
    for cat, name in zip(ann["categories"], ["person", "car", "blob"]):
        cat["name"] = name
    renamed = tmp_path / "train.json"
    renamed.write_text(json.dumps(ann))
    code = main(["train", "--images", str(tiny_dataset / "images"), "--ann", str(renamed),
                 "--run", str(tmp_path / "run"), "--backbone", "mobilenet_v3", "--fpn-channels", "32",
                 "--image-size", "96", "--batch-size", "2", "--iters", "1", "--workers", "0",
                 "--weights-backbone", "none", "--device", "cpu", "--no-mine", "--no-progress",
                 "--init", str(path), "--init-keep-classes"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    kept = [ln for ln in out if ln.startswith("--init-keep-classes")]
    assert kept == ["--init-keep-classes: kept the pretrained classifier of 2 of 3 classes: "
                    "person, car; fresh: blob"]


def test_keep_classes_needs_init():
    with pytest.raises(InputError, match="--init-keep-classes needs --init"):
        tiny_config_like = dict(images="i", ann="a", run="r", init_keep_classes=True)
        from comining.config import TrainConfig
        TrainConfig(**tiny_config_like)
