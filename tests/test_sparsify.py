"""`comining sparsify`: the protocols' counts, the exact partition, determinism, the CLI."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comining.errors import InputError
from comining.sparsify import PROTOCOLS, erased_positions, sparsify

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers


def make_coco(counts, *, crowd=None, n_categories=3, seed=0, shuffle=True):
    """A valid COCO dict: image i (id 100+i) gets counts[i] non-crowd annotations and
    crowd[i] crowd ones; annotation ids are scrambled and the list order is shuffled,
    so that nothing can rely on ids being sorted or grouped by image."""
    rng = random.Random(seed)
    crowd = crowd or [0] * len(counts)
    images = [{"id": 100 + i, "file_name": f"img_{i:03d}.jpg", "width": 64, "height": 48}
              for i in range(len(counts))]
    categories = [{"id": 7 + 3 * c, "name": f"cat{c}", "supercategory": "thing"}
                  for c in range(n_categories)]
    anns = []
    for i, (n, m) in enumerate(zip(counts, crowd)):
        for j in range(n + m):
            anns.append({"image_id": 100 + i,
                         "category_id": categories[rng.randrange(n_categories)]["id"],
                         "bbox": [1.0 + j, 2.0, 10.5, 8.0], "area": 84.0,
                         "iscrowd": 1 if j >= n else 0,
                         "segmentation": [[1, 2, 11, 2, 11, 10]], "extra_field": {"k": j}})
    ids = rng.sample(range(1, 10 * len(anns) + 10), len(anns))
    for a, aid in zip(anns, ids):
        a["id"] = aid
    if shuffle:
        rng.shuffle(anns)
    # "id" last in some dicts, first in others: field order must survive as is.
    anns = [dict(sorted(a.items())) if k % 2 else a for k, a in enumerate(anns)]
    return {"info": {"description": "test", "year": 2021},
            "licenses": [{"id": 1, "name": "CC"}],
            "images": images, "annotations": anns, "categories": categories,
            "custom_top_level": [1, 2, 3]}


def non_crowd(anns):
    return [a for a in anns if not a.get("iscrowd", 0)]


def per_image(anns):
    out = Counter()
    for a in non_crowd(anns):
        out[a["image_id"]] += 1
    return out


def per_category(anns):
    out = Counter()
    for a in non_crowd(anns):
        out[a["category_id"]] += 1
    return out


def assert_partition(coco, sparse, hidden):
    """Same dicts, disjoint ids, union = input, input order kept, other keys untouched."""
    anns = coco["annotations"]
    pos = {a["id"]: i for i, a in enumerate(anns)}
    kept_ids = [a["id"] for a in sparse["annotations"]]
    erased_ids = [a["id"] for a in hidden["annotations"]]
    assert not set(kept_ids) & set(erased_ids)
    assert sorted(kept_ids + erased_ids) == sorted(pos)
    assert len(kept_ids) + len(erased_ids) == len(anns)
    for part in (sparse, hidden):
        positions = [pos[a["id"]] for a in part["annotations"]]
        assert positions == sorted(positions), "input order not kept"
        for a in part["annotations"]:
            original = anns[pos[a["id"]]]
            assert a == original
            assert list(a) == list(original), "field order changed"
        assert list(part) == list(coco), "top-level keys changed or reordered"
        for key in coco:
            if key != "annotations":
                assert part[key] == coco[key]
    # crowd annotations are never erased
    assert all(not a.get("iscrowd", 0) for a in hidden["annotations"])


def assert_counts(protocol, coco, sparse, hidden):
    full, kept, erased = per_image(coco["annotations"]), per_image(sparse["annotations"]), \
        per_image(hidden["annotations"])
    if protocol == "miss50":
        full_c, erased_c = per_category(coco["annotations"]), per_category(hidden["annotations"])
        for cid, n in full_c.items():
            assert erased_c[cid] == n // 2, (cid, n, erased_c[cid])
        assert set(erased_c) <= set(full_c)
        return
    for im in coco["images"]:
        n = full[im["id"]]
        if protocol == "easy":
            expected = 1 if n >= 2 else 0
        elif protocol == "hard":
            expected = n // 2
        else:  # extreme
            expected = max(n - 1, 0)
        assert erased[im["id"]] == expected, (protocol, im["id"], n, erased[im["id"]])
        assert kept[im["id"]] == n - expected
        if protocol == "extreme" and n >= 1:
            assert kept[im["id"]] == 1
        if protocol in ("easy", "hard", "extreme") and n >= 1:
            assert kept[im["id"]] >= 1, "an image lost its only label"


def erased_ids(coco, protocol, seed):
    return {a["id"] for a in sparsify(coco, protocol, seed=seed)[1]["annotations"]}


# ----------------------------------------------------------------------------- the function

COUNTS = [0, 1, 2, 3, 4, 5, 6, 7, 10, 1, 0, 2]
CROWD = [2, 1, 0, 1, 0, 3, 0, 0, 1, 0, 1, 2]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_partition_and_counts(protocol):
    coco = make_coco(COUNTS, crowd=CROWD)
    before = copy.deepcopy(coco)
    sparse, hidden = sparsify(coco, protocol, seed=3)
    assert coco == before, "the input was mutated"
    assert_partition(coco, sparse, hidden)
    assert_counts(protocol, coco, sparse, hidden)
    # every crowd annotation is in the sparse file
    crowd_ids = {a["id"] for a in coco["annotations"] if a["iscrowd"]}
    assert len(crowd_ids) == sum(CROWD)
    assert crowd_ids <= {a["id"] for a in sparse["annotations"]}
    # images with 0 annotations are kept (in both files)
    assert [im["id"] for im in sparse["images"]] == [100 + i for i in range(len(COUNTS))]


def test_exact_numbers_per_protocol():
    coco = make_coco(COUNTS, crowd=CROWD)  # 41 non-crowd annotations, 11 crowd
    total = len(coco["annotations"])
    assert total == 41 + 11
    n_erased = {p: len(sparsify(coco, p, seed=0)[1]["annotations"]) for p in PROTOCOLS}
    assert n_erased["easy"] == sum(1 for n in COUNTS if n >= 2) == 8
    assert n_erased["hard"] == sum(n // 2 for n in COUNTS) == 18
    assert n_erased["extreme"] == sum(max(n - 1, 0) for n in COUNTS) == 41 - 10
    assert n_erased["miss50"] == sum(n // 2 for n in per_category(coco["annotations"]).values())


def test_small_images_keep_their_only_label():
    coco = make_coco([1, 1, 0, 1])
    for protocol in ("easy", "hard", "extreme"):
        sparse, hidden = sparsify(coco, protocol, seed=0)
        assert hidden["annotations"] == []
        assert sparse["annotations"] == coco["annotations"]


def test_only_crowd_and_empty():
    coco = make_coco([0, 0, 0], crowd=[3, 0, 1])
    for protocol in PROTOCOLS:
        sparse, hidden = sparsify(coco, protocol, seed=1)
        assert hidden["annotations"] == [] and sparse["annotations"] == coco["annotations"]
    empty = make_coco([0, 0])
    assert empty["annotations"] == []
    for protocol in PROTOCOLS:
        sparse, hidden = sparsify(empty, protocol, seed=1)
        assert sparse == empty and hidden == empty


def test_missing_iscrowd_counts_as_not_crowd():
    coco = make_coco([4, 2])
    for a in coco["annotations"]:
        del a["iscrowd"]
    sparse, hidden = sparsify(coco, "hard", seed=0)
    assert_partition(coco, sparse, hidden)
    assert per_image(hidden["annotations"]) == {100: 2, 101: 1}


def test_miss50_is_per_category_over_the_dataset():
    # Category 7 on three images (2 + 3 + 4 = 9 boxes): floor(9/2) = 4 erased in all,
    # wherever they fall; category 10 has 1 box: none erased.
    anns, aid = [], 1
    for image_id, n in ((1, 2), (2, 3), (3, 4)):
        for _ in range(n):
            anns.append({"id": aid, "image_id": image_id, "category_id": 7,
                         "bbox": [0, 0, 5, 5], "iscrowd": 0})
            aid += 1
    anns.append({"id": aid, "image_id": 1, "category_id": 10, "bbox": [0, 0, 5, 5], "iscrowd": 0})
    anns.append({"id": aid + 1, "image_id": 2, "category_id": 7, "bbox": [0, 0, 5, 5],
                 "iscrowd": 1})
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 9, "height": 9}
                       for i in (1, 2, 3)],
            "annotations": anns, "categories": [{"id": 7, "name": "a"}, {"id": 10, "name": "b"}]}
    erased_sets = set()
    for seed in range(30):
        sparse, hidden = sparsify(coco, "miss50", seed=seed)
        assert_partition(coco, sparse, hidden)
        assert per_category(hidden["annotations"]) == {7: 4}
        erased_sets.add(frozenset(a["id"] for a in hidden["annotations"]))
        # per-image counts vary with the seed: not a per-image rule
    assert len(erased_sets) > 5
    per_image_patterns = {tuple(sorted(Counter(a["image_id"] for a in coco["annotations"]
                                               if a["id"] in s).items())) for s in erased_sets}
    assert len(per_image_patterns) > 1


def test_deterministic_and_seed_dependent():
    coco = make_coco([5] * 40, seed=1)
    for protocol in PROTOCOLS:
        a = sparsify(coco, protocol, seed=11)
        b = sparsify(copy.deepcopy(coco), protocol, seed=11)
        assert json.dumps(a) == json.dumps(b)
        assert erased_ids(coco, protocol, 11) != erased_ids(coco, protocol, 12)


def test_independent_of_list_order():
    """Which annotations are erased depends on the seed and the ids, not on list order."""
    coco = make_coco([6, 3, 2, 8, 1, 4], crowd=[1, 0, 2, 0, 0, 1])
    shuffled = copy.deepcopy(coco)
    random.Random(5).shuffle(shuffled["annotations"])
    shuffled["images"].reverse()
    for protocol in PROTOCOLS:
        assert erased_ids(coco, protocol, 4) == erased_ids(shuffled, protocol, 4)


def test_choice_is_roughly_uniform():
    """easy on images of 4: each position in the image is erased about 1/4 of the time."""
    coco = make_coco([4] * 400, shuffle=False, seed=2)
    hidden_ids = erased_ids(coco, "easy", 0)
    slot = Counter()
    for i, a in enumerate(coco["annotations"]):
        if a["id"] in hidden_ids:
            slot[i % 4] += 1
    assert sum(slot.values()) == 400
    assert all(60 <= slot[k] <= 140 for k in range(4)), slot


def test_protocols_nest_for_one_seed():
    coco = make_coco([0, 1, 2, 3, 5, 8, 13], seed=4)
    for seed in range(5):
        easy, hard, extreme = (erased_ids(coco, p, seed) for p in ("easy", "hard", "extreme"))
        assert easy <= hard <= extreme


def test_shape_errors_and_bad_protocol():
    with pytest.raises(InputError, match="top level is a list"):
        sparsify([], "easy", seed=0)
    with pytest.raises(InputError, match="no 'annotations'"):
        sparsify({"images": [], "categories": []}, "easy", seed=0)
    with pytest.raises(InputError, match="'images' is a dict"):
        sparsify({"images": {}, "annotations": [], "categories": []}, "easy", seed=0)
    with pytest.raises(InputError, match=r"annotations\[0\] has no 'image_id'"):
        sparsify({"images": [], "annotations": [{"id": 1, "category_id": 1}],
                  "categories": []}, "easy", seed=0, path="x.json")
    with pytest.raises(ValueError, match="unknown protocol"):
        sparsify(make_coco([2]), "medium", seed=0)



@pytest.mark.parametrize("coco,message", [
    ([], "not a COCO json: the top level is a list, expected an object with images, "
         "annotations, categories"),
    ({"images": [], "categories": []},
     "not a COCO json: no 'annotations' list at the top level (nothing to sparsify)"),
    ({"annotations": [], "categories": []}, "not a COCO json: no 'images' list at the top level"),
    ({"images": [], "annotations": [], "categories": {}},
     "not a COCO json: 'categories' is a dict, expected a list"),
    ({"images": [], "annotations": [7], "categories": []}, "annotations[0] is a int, expected an object"),
    ({"images": [], "annotations": [{"image_id": 1, "category_id": 1}], "categories": []},
     "annotations[0] has no 'id'"),
    ({"images": [], "annotations": [{"id": 1.5, "image_id": 1, "category_id": 1}], "categories": []},
     "annotations[0] 'id' is 1.5, expected an integer"),
    ({"images": [], "annotations": [{"id": 1, "image_id": True, "category_id": 1}], "categories": []},
     "annotations[0] 'image_id' is true, expected an integer"),
])
def test_each_malformed_input_is_named_with_its_file(coco, message):
    """The exact message a user reads: the file first, then what is wrong."""
    with pytest.raises(InputError) as e:
        sparsify(coco, "hard", seed=0, path="train.json")
    assert str(e.value) == f"train.json: {message}"
    assert e.value.path == "train.json" and e.value.problem == message


def test_an_unknown_protocol_or_a_seed_that_is_not_an_int_is_refused():
    expected = "unknown protocol 'medium'; expected one of easy, hard, extreme, miss50"
    with pytest.raises(ValueError) as e:
        sparsify(make_coco([2]), "medium", seed=0)
    assert str(e.value) == expected
    with pytest.raises(ValueError) as e:
        erased_positions([], "medium", seed=0)
    assert str(e.value) == expected
    for seed, name in (("1", "str"), (True, "bool"), (1.0, "float")):
        with pytest.raises(TypeError) as e:
            sparsify(make_coco([2]), "hard", seed=seed)
        assert str(e.value) == f"seed must be an int, not {name}"

# ----------------------------------------------------------------------------- properties


@st.composite
def coco_dicts(draw):
    n_images = draw(st.integers(0, 6))
    n_cats = draw(st.integers(1, 3))
    image_ids = draw(st.lists(st.integers(1, 10_000), min_size=n_images, max_size=n_images,
                              unique=True))
    cat_ids = draw(st.lists(st.integers(1, 100), min_size=n_cats, max_size=n_cats, unique=True))
    n_anns = draw(st.integers(0, 25)) if image_ids else 0
    ann_ids = draw(st.lists(st.integers(1, 10**9), min_size=n_anns, max_size=n_anns, unique=True))
    anns = []
    for aid in ann_ids:
        ann = {"id": aid, "image_id": draw(st.sampled_from(image_ids)),
               "category_id": draw(st.sampled_from(cat_ids)), "bbox": [0, 0, 3, 3]}
        crowd = draw(st.sampled_from([0, 0, 0, 1, None]))
        if crowd is not None:
            ann["iscrowd"] = crowd
        anns.append(ann)
    return {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 9, "height": 9}
                       for i in image_ids],
            "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in cat_ids],
            "info": {"v": 1}}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(coco=coco_dicts(), protocol=st.sampled_from(PROTOCOLS), seed=st.integers(-2**40, 2**40))
def test_property_partition_and_counts(coco, protocol, seed):
    before = copy.deepcopy(coco)
    sparse, hidden = sparsify(coco, protocol, seed=seed)
    assert coco == before
    assert_partition(coco, sparse, hidden)
    assert_counts(protocol, coco, sparse, hidden)
    again = sparsify(copy.deepcopy(coco), protocol, seed=seed)
    assert json.dumps(again) == json.dumps((sparse, hidden))


# ----------------------------------------------------------------------------- the CLI


def cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("COMINING_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "comining", "sparsify", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd or REPO, timeout=120)


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, proc.stderr
    assert err.startswith("comining sparsify: error:"), err
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in err, err


def test_cli_all_protocols(tmp_path):
    coco = make_coco([3, 0, 5, 2, 1, 7] * 20, crowd=[1, 0, 0, 2, 0, 0] * 20, seed=9)
    ann = tmp_path / "full.json"
    ann.write_text(json.dumps(coco))
    for protocol in PROTOCOLS:
        out, hid = tmp_path / f"{protocol}.json", tmp_path / f"{protocol}_hidden.json"
        proc = cli("--ann", ann, "--protocol", protocol, "--seed", 5, "--out", out, "--hidden", hid)
        assert proc.returncode == 0, proc.stderr
        sparse, hidden = json.loads(out.read_text()), json.loads(hid.read_text())
        assert (sparse, hidden) == sparsify(coco, protocol, seed=5)
        assert_partition(coco, sparse, hidden)
        assert_counts(protocol, coco, sparse, hidden)
        kept, erased = len(sparse["annotations"]), len(hidden["annotations"])
        assert proc.stdout == (f"sparsify {protocol} (seed 5): kept {kept}, erased {erased} of "
                               f"{len(coco['annotations'])} annotations on 120 images -> {out} "
                               f"(+ hidden {hid})\n")
        assert "\n" not in out.read_text().rstrip("\n"), "expected compact json"
    # nothing but the outputs was written (no temporary files left behind)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["full.json"] + [f"{p}.json" for p in PROTOCOLS] + [f"{p}_hidden.json" for p in PROTOCOLS])


def test_cli_byte_identical_per_seed_and_default_seed(tmp_path):
    coco = make_coco([4] * 30, seed=3)
    ann = tmp_path / "full.json"
    ann.write_text(json.dumps(coco))
    digests = {}
    for name, seed_args in (("a", ["--seed", "7"]), ("b", ["--seed", "7"]), ("c", ["--seed", "8"]),
                            ("d", []), ("e", ["--seed", "0"])):
        out, hid = tmp_path / f"{name}.json", tmp_path / f"{name}_h.json"
        proc = cli("--ann", ann, "--protocol", "hard", *seed_args, "--out", out, "--hidden", hid)
        assert proc.returncode == 0, proc.stderr
        digests[name] = (sha(out), sha(hid))
    assert digests["a"] == digests["b"]
    assert digests["a"][0] != digests["c"][0] and digests["a"][1] != digests["c"][1]
    assert digests["d"] == digests["e"]  # --seed defaults to 0


@pytest.mark.parametrize("which", ["out", "hidden", "hardlink", "same"])
def test_cli_refuses_to_overwrite_its_input(tmp_path, which):
    coco = make_coco([3, 2])
    ann = tmp_path / "full.json"
    ann.write_text(json.dumps(coco))
    before = sha(ann)
    other = tmp_path / "other.json"
    if which == "out":
        out, hid = ann, other
    elif which == "hidden":
        out, hid = other, tmp_path / "sub" / ".." / "full.json"
        (tmp_path / "sub").mkdir()
    elif which == "hardlink":
        link = tmp_path / "link.json"
        os.link(ann, link)
        out, hid = other, link
    else:
        out = hid = other
    proc = cli("--ann", ann, "--protocol", "easy", "--out", out, "--hidden", hid)
    if which == "same":
        assert_one_line_error(proc, "--hidden must be a different file from --out")
    else:
        assert_one_line_error(proc, "refusing to overwrite the input file")
    assert sha(ann) == before
    assert not other.exists()
    assert {p.name for p in tmp_path.iterdir()} <= {"full.json", "link.json", "sub"}


def test_cli_bad_inputs_exit_2_one_line(tmp_path):
    out, hid = tmp_path / "o.json", tmp_path / "h.json"
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [], "annotations": [')
    assert_one_line_error(cli("--ann", bad, "--protocol", "hard", "--out", out, "--hidden", hid),
                          str(bad), "malformed json")
    notcoco = tmp_path / "list.json"
    notcoco.write_text("[1, 2, 3]")
    assert_one_line_error(cli("--ann", notcoco, "--protocol", "hard", "--out", out,
                              "--hidden", hid), str(notcoco), "top level is a list")
    dup = make_coco([2, 2])
    dup["annotations"][1]["id"] = dup["annotations"][0]["id"]
    dupfile = tmp_path / "dup.json"
    dupfile.write_text(json.dumps(dup))
    assert_one_line_error(cli("--ann", dupfile, "--protocol", "hard", "--out", out,
                              "--hidden", hid), "duplicate annotation ids")
    assert_one_line_error(cli("--ann", tmp_path / "missing.json", "--protocol", "hard",
                              "--out", out, "--hidden", hid), "file not found")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(make_coco([2])))
    assert_one_line_error(cli("--ann", good, "--protocol", "hard", "--out",
                              tmp_path / "nodir" / "o.json", "--hidden", hid),
                          "does not exist")
    assert not out.exists() and not hid.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.json", "dup.json", "good.json", "list.json"]


def test_cli_usage_errors_and_help(tmp_path):
    proc = cli("--ann", "x.json", "--protocol", "medium", "--out", "o.json", "--hidden", "h.json")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    proc = cli("--ann", "x.json", "--protocol", "easy", "--out", "o.json")
    assert proc.returncode == 2 and "--hidden" in proc.stderr
    proc = cli("--help")
    assert proc.returncode == 0
    for text in ("easy", "hard", "extreme", "miss50", "floor(n/2)", "iscrowd",
                 "keep exactly 1", "--seed"):
        assert text in proc.stdout, text
