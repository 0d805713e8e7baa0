"""Co-generation rules (the authors' code): score, NMS, same-class overlap, crowd, cap."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from comining.cogeneration import agreement, co_generate, intersection_over_first
from comining.config import MiningThresholds

T = MiningThresholds(score_thresh=0.6, nms_iou=0.5, gt_iou=0.4)
NONE = torch.zeros((0, 4))
NO_LABELS = torch.zeros((0,), dtype=torch.long)


def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def kept(b, s, l, gt=NONE, gl=NO_LABELS, crowd=None, t=T):
    return co_generate(b, torch.tensor(s), torch.tensor(l), gt, gl, crowd, t).tolist()


def test_low_score_is_dropped_and_threshold_is_strict():
    assert kept(boxes([0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]), [0.9, 0.6, 0.3], [0, 0, 0]) == [0]


def test_nms_keeps_the_best_of_overlapping_same_class_boxes():
    b = boxes([0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60])
    assert kept(b, [0.7, 0.95, 0.8], [1, 1, 1]) == [1, 2]


def test_nms_is_class_wise():
    b = boxes([0, 0, 10, 10], [1, 0, 11, 10])
    assert sorted(kept(b, [0.7, 0.95], [1, 2])) == [0, 1]


def test_same_class_annotation_overlap_drops_the_box():
    b = boxes([0, 0, 10, 10])
    assert kept(b, [0.9], [3], gt=boxes([1, 1, 10, 10]), gl=torch.tensor([3])) == []


def test_different_class_annotation_overlap_keeps_the_box():
    b = boxes([0, 0, 10, 10])
    assert kept(b, [0.9], [3], gt=boxes([0, 0, 10, 10]), gl=torch.tensor([4])) == [0]


def test_overlap_at_or_below_gt_iou_keeps_the_box():
    b = boxes([0, 0, 10, 10])
    # IoU with [5, 0, 15, 10] is 50 / 150 = 0.333 < 0.4
    assert kept(b, [0.9], [3], gt=boxes([5, 0, 15, 10]), gl=torch.tensor([3])) == [0]


def plain_iou(a, b):
    """IoU of two xyxy boxes in plain Python (no code under test)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_exact_thresholds_follow_the_strict_rules():
    """tau: score == tau is dropped (rule: score > tau); theta1: two boxes overlapping
    with IoU exactly theta1 both survive NMS (suppressed only above it); theta2: IoU
    exactly 0.4 with a same-class annotation keeps the box (dropped only above it)."""
    # tau: 0.6 exactly is dropped, the next float up is kept
    above = float(torch.nextafter(torch.tensor(0.6), torch.tensor(1.0)))
    assert kept(boxes([0, 0, 10, 10], [20, 20, 30, 30]), [0.6, above], [0, 0]) == [1]
    # theta1 = 0.5: a 10x10 box and the 10x5 box inside it: IoU = 50 / 100
    big, half = [0, 0, 10, 10], [0, 0, 10, 5]
    assert plain_iou(big, half) == 0.5 == T.nms_iou
    assert kept(boxes(big, half), [0.9, 0.8], [1, 1]) == [0, 1]
    # ... and just above theta1 (10x6 inside 10x10: IoU 0.6) the weaker box goes
    assert kept(boxes(big, [0, 0, 10, 6]), [0.9, 0.8], [1, 1]) == [0]
    # theta2 = 0.4: a 10x10 pseudo box and a 10x4 same-class annotation inside it
    ann = [0, 0, 10, 4]
    assert plain_iou(big, ann) == 0.4 == T.gt_iou
    assert kept(boxes(big), [0.9], [3], gt=boxes(ann), gl=torch.tensor([3])) == [0]
    # ... and just above theta2 (a 10x5 annotation: IoU 0.5) it is dropped
    assert kept(boxes(big), [0.9], [3], gt=boxes(half), gl=torch.tensor([3])) == []


def test_boxes_inside_crowd_regions_are_dropped():
    b = boxes([10, 10, 20, 20], [100, 100, 120, 120])
    assert kept(b, [0.9, 0.9], [0, 0], crowd=boxes([0, 0, 50, 50])) == [1]


def test_a_rejected_box_is_never_a_pseudo_box_whatever_its_class():
    """Refine rounds: a detection at IoU >= 0.5 with a box the annotator rejected is
    dropped, whatever the classes (a rejection has none); 0.5 itself is in, 0.49 out.
    A [0,0,10,10] class 0 and B [20,0,30,10] class 1; R [0,0,10,5]: IoU(A, R) = 50 / 100."""
    b = boxes([0, 0, 10, 10], [20, 0, 30, 10])

    def with_rejected(*rows):
        return co_generate(b, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), NONE, NO_LABELS,
                           None, T, boxes(*rows) if rows else None).tolist()

    assert with_rejected() == [0, 1]
    assert with_rejected([0, 0, 10, 5]) == [1]
    assert with_rejected([0, 0, 10, 4.9]) == [0, 1]                     # IoU 0.49
    assert with_rejected([20, 0, 30, 10], [0, 0, 10, 10]) == []        # both, any class
    loose = MiningThresholds(score_thresh=0.6, nms_iou=0.5, gt_iou=0.4, rejected_iou=0.6)
    assert co_generate(b, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), NONE, NO_LABELS, None,
                       loose, boxes([0, 0, 10, 5])).tolist() == [0, 1]


def test_at_most_max_per_image_boxes():
    n = 300
    b = torch.stack([torch.tensor([i * 20.0, 0, i * 20.0 + 10, 10]) for i in range(n)])
    s = torch.linspace(0.99, 0.7, n)
    out = co_generate(b, s, torch.zeros(n, dtype=torch.long), NONE, NO_LABELS, None, T)
    assert len(out) == 100 and out.tolist() == list(range(100))  # the best 100


def test_a_box_thinner_than_a_pixel_is_no_pseudo_box_and_takes_no_place_under_the_cap():
    """Slivers (0 or 0.5 px wide, or 0.9 px tall) are dropped whatever their score; a
    1 x 1 px box is kept; with a cap of 1, the sliver scoring highest does not take the
    place of the real box."""
    b = boxes([0, 0, 0, 10], [20, 20, 20.5, 40], [50, 50, 70, 50.9], [80, 80, 81, 81], [5, 60, 25, 80])
    assert kept(b, [0.99, 0.98, 0.97, 0.7, 0.8], [0, 0, 0, 0, 0]) == [4, 3]
    capped = MiningThresholds(score_thresh=0.6, nms_iou=0.5, gt_iou=0.4, max_per_image=1)
    assert kept(b, [0.99, 0.98, 0.97, 0.7, 0.8], [0, 0, 0, 0, 0], t=capped) == [4]


def test_agreement_matches_same_class_only():
    a = boxes([0, 0, 10, 10], [50, 50, 60, 60])
    b = boxes([1, 0, 11, 10], [50, 50, 60, 60])
    ma, mb = agreement(a, torch.tensor([0, 1]), b, torch.tensor([0, 2]))
    assert ma.tolist() == [0, -1] and mb.tolist() == [0, -1]



def test_a_box_half_inside_a_crowd_region_is_kept():
    """crowd_ioa = 0.5: dropped only when MORE than half of the box lies in the crowd region;
    a 10x10 box with its left 5 columns inside (50 of 100 px) stays, 6 columns (60) goes."""
    crowd = boxes([0, 0, 15, 100])
    assert T.crowd_ioa == 0.5
    assert kept(boxes([10, 0, 20, 10]), [0.9], [0], crowd=crowd) == [0]
    assert kept(boxes([9, 0, 19, 10]), [0.9], [0], crowd=crowd) == []


def test_intersection_over_first_by_hand():
    """The share of each box inside each region, worked out by hand on boxes whose widths
    and heights differ (so x and y cannot be swapped unnoticed)."""
    box = boxes([0, 0, 10, 20])                # area 200
    regions = boxes([5, 0, 30, 8],             # overlap 5 x 8 = 40   -> 0.2
                    [5, 0, 30, 30],            # overlap 5 x 20 = 100 -> 0.5
                    [40, 40, 50, 50],          # disjoint             -> 0
                    [0, 25, 10, 30])           # same columns, rows apart -> 0
    got = intersection_over_first(box, regions)
    assert got.shape == (1, 4)
    assert torch.allclose(got, torch.tensor([[0.2, 0.5, 0.0, 0.0]]))
    # a box smaller than one pixel wholly inside a region lies wholly inside it
    tiny = intersection_over_first(boxes([1, 1, 1.5, 1.5]), boxes([0, 0, 10, 10]))
    assert torch.allclose(tiny, torch.tensor([[1.0]]))


def test_agreement_with_an_empty_view_matches_nothing():
    a = boxes([0, 0, 10, 10], [50, 50, 60, 60])
    ma, mb = agreement(a, torch.tensor([0, 1]), NONE, NO_LABELS)
    assert ma.tolist() == [-1, -1] and mb.tolist() == []
    assert ma.dtype == torch.long and mb.dtype == torch.long
    ma, mb = agreement(NONE, NO_LABELS, a, torch.tensor([0, 1]))
    assert ma.tolist() == [] and mb.tolist() == [-1, -1]
    assert ma.dtype == torch.long and mb.dtype == torch.long


def test_agreement_one_box_each_and_the_threshold_is_inclusive():
    """IoU exactly iou_thresh agrees (>=): a 10x10 box and the 10x5 box inside it, IoU 0.5."""
    a, b = boxes([0, 0, 10, 10]), boxes([0, 0, 10, 5])
    ma, mb = agreement(a, torch.tensor([2]), b, torch.tensor([2]), iou_thresh=0.5)
    assert ma.tolist() == [0] and mb.tolist() == [0]
    ma, mb = agreement(a, torch.tensor([2]), b, torch.tensor([2]), iou_thresh=0.6)
    assert ma.tolist() == [-1] and mb.tolist() == [-1]


def test_agreement_views_of_different_sizes():
    """Three boxes in view a, two in view b: each side gets its own best partner."""
    a = boxes([0, 0, 10, 10], [100, 100, 110, 110], [200, 0, 210, 10])
    b = boxes([100, 100, 110, 111], [1, 0, 11, 10])
    ma, mb = agreement(a, torch.tensor([0, 0, 0]), b, torch.tensor([0, 0]))
    assert ma.tolist() == [1, 0, -1]
    assert mb.tolist() == [1, 0]

box_strategy = st.tuples(st.floats(0, 100), st.floats(0, 100), st.floats(1, 50), st.floats(1, 50)).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(box_strategy, st.floats(0, 1), st.integers(0, 2)), max_size=40),
       st.lists(st.tuples(box_strategy, st.integers(0, 2)), max_size=5))
def test_invariants_hold_for_any_detections(dets, gts):
    b = torch.tensor([d[0] for d in dets], dtype=torch.float32).reshape(-1, 4)
    s = torch.tensor([d[1] for d in dets], dtype=torch.float32)
    l = torch.tensor([d[2] for d in dets], dtype=torch.long)
    gb = torch.tensor([g[0] for g in gts], dtype=torch.float32).reshape(-1, 4)
    gl = torch.tensor([g[1] for g in gts], dtype=torch.long)
    keep = co_generate(b, s, l, gb, gl, None, T)
    assert len(keep) <= T.max_per_image
    assert bool((s[keep] > T.score_thresh).all())
    assert s[keep].tolist() == sorted(s[keep].tolist(), reverse=True)
    if len(keep) and len(gb):
        from torchvision.ops import box_iou
        iou = box_iou(b[keep], gb)
        same = l[keep][:, None] == gl[None, :]
        assert not bool(((iou > T.gt_iou) & same).any())
    # running it again on its own output changes nothing (idempotent)
    again = co_generate(b[keep], s[keep], l[keep], gb, gl, None, T)
    assert again.tolist() == list(range(len(keep)))
