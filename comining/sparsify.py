"""Seeded sparse splits of a fully annotated COCO dataset (the co-mining protocols).

The Co-mining paper (AAAI 2021) trains on COCO with part of the boxes erased but
never published the script; this module is ours, seeded and documented.

``sparsify(coco, protocol, seed=S)`` returns ``(sparse, hidden)``: two COCO dicts
that partition the input's annotations. Counting rules, where ``n`` is the number
of *non-crowd* annotations of an image (``n_c`` of a category for miss50):

=========  ==================================================================
easy       erase 1 annotation from every image with n >= 2; an image with
           n <= 1 keeps everything (its only label is never taken away).
hard       erase floor(n / 2) of every image's annotations: n = 1 keeps its
           label, n = 3 erases 1 and keeps 2, n = 4 erases 2.
extreme    keep exactly 1 annotation of every image with n >= 1 (erase n - 1).
miss50     erase floor(n_c / 2) of every category's annotations, chosen
           uniformly over the whole dataset regardless of image: an image can
           lose all its labels (or none).
=========  ==================================================================

Always:

* Crowd annotations (``iscrowd`` truthy) are never erased and never counted;
  a missing ``iscrowd`` means 0.
* Images with no annotations (and every image) stay in both files.
* ``sparse["annotations"]`` and ``hidden["annotations"]`` partition the input's
  list: the very same dicts (no field changed, nothing added), each list in the
  input's relative order. ``images``, ``categories`` and every other top-level
  key (``info``, ``licenses``, ...) are copied into both, in the input's key
  order. The results share those objects with the input (no deep copy): treat
  them as read-only or copy them yourself.

Which annotations are erased: each non-crowd annotation gets the key
``sha256("comining-sparsify/v1:<seed>:<json id>")`` and, within its group (its
image; its category for miss50), those with the smallest keys are erased (ties,
only possible with duplicate ids, broken by list position). So the choice is
uniform at random per group, depends only on the seed and the annotation ids
(not on list order, dict order, Python or numpy versions), and the splits nest
for one seed: per image, what easy erases hard erases too, and what hard erases
extreme erases too.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Hashable

from comining.errors import InputError

PROTOCOLS = ("easy", "hard", "extreme", "miss50")

#: One-line rule per protocol, shown by `comining sparsify --help`.
RULES = {
    "easy": "erase 1 annotation per image with >= 2 (an image never loses its only label)",
    "hard": "erase floor(n/2) of each image's n annotations (n=1 keeps it, n=3 erases 1)",
    "extreme": "keep exactly 1 annotation per image with >= 1 (erase n-1)",
    "miss50": "erase floor(n_c/2) of each category's n_c annotations, chosen uniformly "
              "over the whole dataset (an image may lose all its labels)",
}

_KEY_PREFIX = "comining-sparsify/v1"


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def check_structure(coco: Any, path=None) -> None:
    """The minimal shape sparsify needs; full validation is comining.coco's job."""
    if not isinstance(coco, dict):
        raise InputError(path, f"not a COCO json: the top level is a {type(coco).__name__}, "
                               f"expected an object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            what = " (nothing to sparsify)" if key == "annotations" else ""
            raise InputError(path, f"not a COCO json: no '{key}' list at the top level{what}")
        if not isinstance(coco[key], list):
            raise InputError(path, f"not a COCO json: '{key}' is a {type(coco[key]).__name__}, "
                                   f"expected a list")
    for i, ann in enumerate(coco["annotations"]):
        if not isinstance(ann, dict):
            raise InputError(path, f"annotations[{i}] is a {type(ann).__name__}, "
                                   f"expected an object")
        for field in ("id", "image_id", "category_id"):
            if field not in ann:
                raise InputError(path, f"annotations[{i}] has no '{field}'")
            if not _is_id(ann[field]):
                raise InputError(path, f"annotations[{i}] '{field}' is "
                                       f"{json.dumps(ann[field])}, expected an integer")


def is_crowd(ann: dict) -> bool:
    return bool(ann.get("iscrowd", 0))


def _rank_key(seed: int, ann_id: Any) -> bytes:
    text = f"{_KEY_PREFIX}:{seed}:{json.dumps(ann_id)}"
    return hashlib.sha256(text.encode("utf-8")).digest()


def _n_erased(protocol: str, n: int) -> int:
    if protocol == "easy":
        return 1 if n >= 2 else 0
    if protocol in ("hard", "miss50"):
        return n // 2
    if protocol == "extreme":
        return max(n - 1, 0)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


def erased_positions(annotations: list[dict], protocol: str, *, seed: int) -> set[int]:
    """Positions (indices into `annotations`) that `protocol` erases with `seed`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    group_field = "category_id" if protocol == "miss50" else "image_id"
    groups: dict[Hashable, list[int]] = {}
    for pos, ann in enumerate(annotations):
        if not is_crowd(ann):
            groups.setdefault(ann[group_field], []).append(pos)
    erased: set[int] = set()
    # Each group is decided on its own, from keys that depend on (seed, id) only,
    # so the result does not depend on the order the groups are visited in.
    for positions in groups.values():
        k = _n_erased(protocol, len(positions))
        if k:
            ranked = sorted(positions, key=lambda p: (_rank_key(seed, annotations[p]["id"]), p))
            erased.update(ranked[:k])
    return erased


def sparsify(coco: dict, protocol: str, *, seed: int, path=None) -> tuple[dict, dict]:
    """Split `coco`'s annotations into (sparse, hidden) by `protocol` (see the module doc).

    `path` only names the file in the InputError raised for a malformed dict.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    check_structure(coco, path)
    annotations = coco["annotations"]
    erased = erased_positions(annotations, protocol, seed=seed)
    kept_list = [a for p, a in enumerate(annotations) if p not in erased]
    erased_list = [a for p, a in enumerate(annotations) if p in erased]
    sparse = {key: (kept_list if key == "annotations" else value) for key, value in coco.items()}
    hidden = {key: (erased_list if key == "annotations" else value) for key, value in coco.items()}
    return sparse, hidden
