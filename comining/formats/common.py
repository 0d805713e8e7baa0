"""What the tool formats share: the run's images, classes and original labels
(`RunData`), the names and thresholds both directions use."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from comining.errors import InputError


FORMATS = ("json", "coco", "cvat", "fiftyone", "labelstudio")
CVAT_ATTRIBUTES = ("comining_source", "comining_object", "comining_score", "comining_views",
                   "comining_checkpoint")
LS_OBJECT, LS_LABEL = "comining-", "label-"      # Label Studio region ids
IOU_SAME = 0.5            # a box keeps the sent object it overlaps this much (as the queue)
IOU_ORIGINAL = 0.9        # a box of the same class this close to an original label is it
KIND_NAMES = {"labelstudio": "Label Studio export", "coco": "COCO file", "native": "decision list"}


@dataclass(frozen=True)
class RunData:
    """What the writers and readers need of a run."""

    images: dict[int, tuple[str, int, int]]            # id -> (file_name, width, height)
    categories: dict[int, str]                         # id -> name
    annotations: dict[int, list[dict]] = field(default_factory=dict)   # image id -> originals

    def originals(self, image_id: int) -> list[dict]:
        return self.annotations.get(image_id, [])


def run_data(run) -> RunData:
    """A `comining.review.Run`'s images, classes and original annotations (with ids)."""
    from comining.fileio import read_json

    annotations: dict[int, list[dict]] = defaultdict(list)
    if run.ann_path is None:
        raise InputError(run.store_path, "the run does not record its input annotation file")
    data = read_json(run.ann_path)
    for k, a in enumerate(data.get("annotations", []) if isinstance(data, dict) else []):
        try:
            bbox = [float(v) for v in a["bbox"]]
            if len(bbox) == 4 and int(a["image_id"]) in run.images:
                annotations[int(a["image_id"])].append(
                    {"id": a.get("id", k), "category_id": int(a["category_id"]), "bbox": bbox})
        except (KeyError, TypeError, ValueError):
            continue
    return RunData(dict(run.images), dict(run.categories), dict(annotations))
