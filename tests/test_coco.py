"""The COCO data layer: valid inputs load right, every bad input gets one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comining.coco import CategoryMap, load_coco, load_rgb, validate_coco_dict
from comining.errors import InputError
from conftest import assert_clean_error, run_cli, sha256, write_json


def base_coco(image_file="a.png", w=64, h=48):
    return {"images": [{"id": 1, "file_name": image_file, "width": w, "height": h},
                       {"id": 2, "file_name": "b.png", "width": w, "height": h}],
            "annotations": [{"id": 10, "image_id": 1, "category_id": 7, "bbox": [4, 4, 20, 10],
                             "area": 200, "iscrowd": 0}],
            "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]}


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(d / name)
    return d


def load_error(tmp_path, image_dir, data) -> str:
    ann = write_json(tmp_path / "ann.json", data)
    with pytest.raises(InputError) as exc:
        load_coco(ann, image_dir)
    msg = str(exc.value)
    assert "\n" not in msg and str(ann) in msg
    return msg


def test_valid_dataset_loads_and_keeps_empty_images(tmp_path, image_dir):
    ann = write_json(tmp_path / "ann.json", base_coco())
    ds = load_coco(ann, image_dir)
    assert [r.id for r in ds.images] == [1, 2]
    assert len(ds.images[1].boxes) == 0  # image 2 has no annotation and is kept
    np.testing.assert_allclose(ds.images[0].boxes, [[4, 4, 24, 14]])
    assert ds.images[0].labels.tolist() == [ds.categories.to_label(7)]


def test_category_ids_map_to_contiguous_labels_and_back():
    cm = CategoryMap.from_categories([{"id": 90, "name": "z"}, {"id": 1, "name": "a"},
                                      {"id": 17, "name": "q"}])
    assert [cm.to_label(i) for i in (1, 17, 90)] == [0, 1, 2]
    assert [cm.to_category_id(cm.to_label(i)) for i in (1, 17, 90)] == [1, 17, 90]
    assert cm.name_of_label(2) == "z"


def test_crowd_boxes_are_kept_apart(tmp_path, image_dir):
    data = base_coco()
    data["annotations"].append({"id": 11, "image_id": 1, "category_id": 3, "bbox": [30, 10, 20, 20],
                                "iscrowd": 1})
    ds = load_coco(write_json(tmp_path / "ann.json", data), image_dir)
    assert len(ds.images[0].boxes) == 1 and len(ds.images[0].crowd_boxes) == 1
    np.testing.assert_allclose(ds.images[0].crowd_boxes, [[30, 10, 50, 30]])   # xywh -> xyxy
    np.testing.assert_allclose(ds.images[0].boxes, [[4, 4, 24, 14]])           # only the other one
    assert ds.images[0].annotation_ids.tolist() == [10]


def test_slightly_outside_box_is_clipped(tmp_path, image_dir):
    data = base_coco()
    data["annotations"][0]["bbox"] = [-2, 40, 20, 10]  # 2 px left, 2 px below: mostly inside
    ds = load_coco(write_json(tmp_path / "ann.json", data), image_dir)
    np.testing.assert_allclose(ds.images[0].boxes, [[0, 40, 18, 48]])


def mutate(fn):
    data = base_coco()
    fn(data)
    return data


BAD_JSON_CASES = {
    "top level list": ([1, 2], "not a COCO detection file"),
    "no images": ({"annotations": [], "categories": []}, "no 'images'"),
    "images not list": ({"images": {}, "annotations": [], "categories": [{"id": 1}]}, "'images' is a dict"),
    "duplicate image id": (mutate(lambda d: d["images"].append(dict(d["images"][0]))), "duplicate image ids"),
    "duplicate ann id": (mutate(lambda d: d["annotations"].append(dict(d["annotations"][0]))),
                         "duplicate annotation ids"),
    "duplicate category id": (mutate(lambda d: d["categories"].append({"id": 7, "name": "x"})),
                              "duplicate category ids"),
    "unknown image": (mutate(lambda d: d["annotations"][0].update(image_id=99)), "unknown images"),
    "unknown category": (mutate(lambda d: d["annotations"][0].update(category_id=99)), "unknown categories"),
    "nan box": (mutate(lambda d: d["annotations"][0].update(bbox=[1, 2, float("nan"), 3])), "NaN"),
    "negative box": (mutate(lambda d: d["annotations"][0].update(bbox=[1, 2, -5, 3])), "negative size"),
    "zero box": (mutate(lambda d: d["annotations"][0].update(bbox=[1, 2, 0, 3])), "zero size"),
    "string box": (mutate(lambda d: d["annotations"][0].update(bbox=["1", 2, 3, 4])), "4 numbers"),
    "far outside": (mutate(lambda d: d["annotations"][0].update(bbox=[500, 500, 10, 10])), "far outside"),
    "absolute path": (mutate(lambda d: d["images"][0].update(file_name="/etc/passwd")), "absolute path"),
    "dotdot": (mutate(lambda d: d["images"][0].update(file_name="../secret.png")), "escapes the image root"),
    "bad width": (mutate(lambda d: d["images"][0].update(width=-3)), "positive integer"),
    "no categories": (mutate(lambda d: d.update(categories=[])), "no categories"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON_CASES))
def test_bad_json_gives_one_clear_line(tmp_path, image_dir, case):
    data, needle = BAD_JSON_CASES[case]
    text = json.dumps(data, allow_nan=True)
    ann = tmp_path / "ann.json"
    ann.write_text(text)
    msg = load_error(tmp_path, image_dir, json.loads(text))
    assert needle in msg, msg


def test_many_bad_items_give_a_count_and_the_first_few(tmp_path, image_dir):
    data = base_coco()
    data["annotations"] = [{"id": i, "image_id": 1, "category_id": 7, "bbox": [1, 1, 0, 1]}
                           for i in range(20)]
    msg = load_error(tmp_path, image_dir, data)
    assert "20 items" in msg and "and 17 more" in msg


def test_malformed_and_truncated_json(tmp_path, image_dir):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(base_coco())[:-7])
    with pytest.raises(InputError, match="malformed json"):
        load_coco(ann, image_dir)
    ann.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="not UTF-8"):
        load_coco(ann, image_dir)


def test_missing_and_corrupt_images(tmp_path, image_dir):
    (image_dir / "b.png").unlink()
    assert "b.png not found" in load_error(tmp_path, image_dir, base_coco())
    (image_dir / "b.png").write_bytes(b"not an image at all")
    assert "not a readable image" in load_error(tmp_path, image_dir, base_coco())


def test_size_mismatch_is_reported(tmp_path, image_dir):
    data = mutate(lambda d: d["images"][0].update(width=100))
    assert "is 64x48 but the json says 100x48" in load_error(tmp_path, image_dir, data)


def test_decompression_bomb_is_refused(tmp_path, image_dir, monkeypatch):
    import comining.coco as coco_mod
    monkeypatch.setattr(coco_mod, "MAX_IMAGE_PIXELS", 1000)
    assert "too large to decode safely" in load_error(tmp_path, image_dir, base_coco())


def write_image(path: Path, img: Image.Image, **kw):
    img.save(path, **kw)


@pytest.mark.parametrize("kind", ["gray", "rgba", "palette", "gray16", "cmyk", "unicode name"])
def test_unusual_images_load_as_rgb(tmp_path, image_dir, kind):
    name = {"unicode name": "ünï cødé ✓.png", "cmyk": "c.jpg"}.get(kind, "a.png")
    arr = (np.arange(48 * 64).reshape(48, 64) % 256).astype(np.uint8)
    img = {"gray": Image.fromarray(arr, "L"),
           "rgba": Image.fromarray(np.dstack([arr] * 3 + [np.full_like(arr, 255)]), "RGBA"),
           "palette": Image.fromarray(arr, "L").convert("P"),
           "gray16": Image.fromarray(arr.astype(np.uint16) * 256, "I;16"),
           "cmyk": Image.fromarray(np.dstack([arr] * 3), "RGB").convert("CMYK"),
           "unicode name": Image.fromarray(np.dstack([arr] * 3), "RGB")}[kind]
    img.save(image_dir / name)
    data = mutate(lambda d: d["images"][0].update(file_name=name))
    ds = load_coco(write_json(tmp_path / "ann.json", data), image_dir)
    rgb = load_rgb(ds.images[0].path)
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    assert rgb.std() > 10  # the pixels are real, not saturated or blank


def test_exif_rotated_image_loads_with_the_declared_geometry(tmp_path, image_dir):
    raw = np.zeros((64, 48, 3), np.uint8)  # stored 48 wide x 64 high, EXIF says rotate 90
    raw[:10] = 255
    img = Image.fromarray(raw)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(image_dir / "r.jpg", exif=exif)
    data = mutate(lambda d: d["images"][0].update(file_name="r.jpg"))  # json: 64 x 48
    ds = load_coco(write_json(tmp_path / "ann.json", data), image_dir)
    rgb = load_rgb(ds.images[0].path, exif_transpose=ds.images[0].exif_transpose)
    assert rgb.shape == (48, 64, 3)
    assert rgb[:, -10:].mean() > 200  # the bright top rows are now on the right


def test_validate_accepts_a_generated_dataset(tiny_dataset):
    data = json.loads((tiny_dataset / "annotations" / "train.json").read_text())
    validate_coco_dict(data, "train.json")
    ds = load_coco(tiny_dataset / "annotations" / "train.json", tiny_dataset / "images")
    assert ds.num_annotations == len(data["annotations"])


@pytest.mark.parametrize("case", ["malformed", "dotdot", "missing image"])
def test_check_command_exits_2_with_one_line_and_leaves_input_alone(tmp_path, image_dir, case):
    data = base_coco()
    ann = tmp_path / "ann.json"
    if case == "malformed":
        ann.write_text("{\"images\": [")
    elif case == "dotdot":
        data["images"][0]["file_name"] = "../../etc/passwd"
        write_json(ann, data)
    else:
        (image_dir / "a.png").unlink()
        write_json(ann, data)
    before = sha256(ann)
    proc = run_cli("check", "--ann", ann, "--images", image_dir)
    assert_clean_error(proc, str(ann))
    assert sha256(ann) == before


def test_check_command_summarises_a_valid_dataset(tiny_dataset):
    proc = run_cli("check", "--ann", tiny_dataset / "annotations" / "train.json",
                   "--images", tiny_dataset / "images")
    assert proc.returncode == 0, proc.stderr
    assert "ok: 16 images" in proc.stdout
