"""The review queue for other annotation tools, and what they export after review
brought back as decisions.

Out (`comining candidates --format ...`), pure functions of the queue's rows (see
`comining.cli.candidates.export_candidates(..., ids=True)`) and a `RunData`:

coco         `coco_mined`: a COCO detection json of the mined objects (with `score`).
cvat         `cvat_task`: a COCO json CVAT imports as a task's annotations ("COCO 1.0"):
             the images' original labels (attribute comining_source "label": CVAT
             replaces a task's annotations on import, so they come along for the
             annotator to see) and the mined objects (comining_source "mined",
             comining_object its id, comining_score, comining_views,
             comining_checkpoint). `cvat_labels`: the task's labels with those
             attributes (CVAT keeps only declared attributes).
fiftyone     `fiftyone_dataset`: labels.json (the original labels) and mined.json (the
             mined objects, `score` and the comining_* attributes) over the same images.
labelstudio  `labelstudio_tasks`: one task an image, the mined objects as a prediction
             (rectanglelabels in percent, region id "comining-<object id>", per-box
             score) with the original labels as read-only regions ("label-<id>");
             `labelstudio_config`: the labeling config the project needs.

In (`comining decide`): `detect` tells a file's kind from its shape; `read_labelstudio`
(a Label Studio JSON export) and `read_coco` (a COCO json: CVAT's or FiftyOne's export,
or --format coco/cvat edited) turn it into `Reviewed` boxes per image; `to_entries`
compares them with the objects that were sent out and returns the native decision
entries `comining.review.import_decisions` records:

- a box naming its object (LS region id / comining_object attribute), or else
  overlapping a sent object at IoU >= 0.5, keeps that object: accepted, with the box
  and class it has now;
- a sent object no box keeps was deleted: rejected;
- a box of no object was drawn by hand: a new (manual) annotation;
- an original label (comining_source "label", an LS "label-" region, or a box of the
  same class overlapping an original annotation at IoU >= 0.9) is ignored: originals
  never change.

"Sent out" means the objects of the images the file holds that are still pending at
the checkpoint (those missing a label; a Label Studio task lists its own). An image the
file does not hold decides nothing; a Label Studio task nobody annotated neither. A
deletion only rejects an object still pending; a box naming an object decided
meanwhile (in the app) records the file's decision on it, the latest standing. A file
bearing no comining mark that would reject every pending object of its images (the
run's own annotation file, its export) is refused.
"""

from comining.formats.common import (  # noqa: F401 (the package's API)
    CVAT_ATTRIBUTES, FORMATS, IOU_ORIGINAL, IOU_SAME,
    KIND_NAMES, LS_LABEL, LS_OBJECT, RunData, run_data)
from comining.formats.queue_out import (coco_mined, cvat_labels, cvat_task,  # noqa: F401
                                        default_url_prefix, fiftyone_dataset, fiftyone_script,
                                        labelstudio_config, labelstudio_tasks)
from comining.formats.review_in import (Box, Reviewed, detect, read_coco,  # noqa: F401
                                        read_labelstudio, review_entries, to_entries)
