"""Box geometry for review: re-exported from `comining.boxes` (one home for xywh IoU and
clipping, shared by mining's object grouping and the review app)."""

from comining.boxes import clean_box, clean_boxes, iou, iou_matrix

__all__ = ["clean_box", "clean_boxes", "iou", "iou_matrix"]
