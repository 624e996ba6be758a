"""Anchors (effdet parity), matcher (hand-computed cases, crowd regions) and box coder."""
import pytest
import torch

from multitask_edet.tasks.detection import DetectionConfig
from multitask_edet.tasks.detection.anchors import AnchorGenerator, feature_sizes
from multitask_edet.tasks.detection.box_coder import BoxCoder
from multitask_edet.tasks.detection.matcher import (
    BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, IGNORED, NEGATIVE, ArgMaxMatcher, batched_iou)

effdet_anchors = pytest.importorskip("effdet.anchors")

RATIOS = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))


@pytest.mark.parametrize("size,scale", [((512, 512), 4.0), ((256, 384), 4.0), ((384, 128), 5.0), ((300, 500), 4.0)])
def test_anchors_equal_effdet(size, scale):
    ref = effdet_anchors.Anchors(3, 7, 3, list(RATIOS), scale, size).boxes
    mine = AnchorGenerator((3, 4, 5, 6, 7), 3, RATIOS, scale)(size)
    assert mine.shape == ref.shape
    # effdet is yxyx; ours xyxy
    assert torch.allclose(mine, ref[:, [1, 0, 3, 2]], atol=1e-5, rtol=0)


def test_anchor_layout_and_cache():
    gen = AnchorGenerator.from_head_config(DetectionConfig())
    assert gen.num_anchors == 9
    assert gen.num_anchors_per_level((256, 128)) == [32 * 16 * 9, 16 * 8 * 9, 8 * 4 * 9, 4 * 2 * 9, 2 * 1 * 9]
    a = gen((256, 128))
    assert a is gen((256, 128))  # cached per (size, device)
    # first anchor: level 3 cell (0, 0), octave 0, aspect (1, 1): 32 px square around (4, 4)
    assert a[0].tolist() == [-12.0, -12.0, 20.0, 20.0]
    # second: aspect (1.4, 0.7) → 44.8 × 22.4
    assert torch.allclose(a[1], torch.tensor([4 - 22.4, 4 - 11.2, 4 + 22.4, 4 + 11.2]))
    # tenth anchor is the next cell to the right (x + 8)
    assert torch.allclose(a[9], a[0] + torch.tensor([8.0, 0, 8.0, 0]))
    assert feature_sizes((100, 60), 3) == [(100, 60), (50, 30), (25, 15), (13, 8)]


def _match(boxes, anchors, ignore=None, **kw):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(1, -1, 4)
    valid = torch.ones(boxes.shape[:2], dtype=torch.bool)
    ign = torch.tensor([ignore or [False] * boxes.shape[1]])
    return ArgMaxMatcher(**kw)(boxes, valid, ign, torch.tensor(anchors, dtype=torch.float32))[0].tolist()


def test_sentinels():
    assert (NEGATIVE, IGNORED) == (BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS) == (-1, -2)


def test_matcher_thresholds_hand_computed():
    anchors = [[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4], [50, 50, 60, 60], [20, 20, 30, 30]]
    gt = [[0, 0, 10, 10]]
    # IoUs: 1.0, 0.5 (positive: ≥ 0.5), 0.4 (negative), 0, 0
    assert _match(gt, anchors, force_match=False) == [0, 0, NEGATIVE, NEGATIVE, NEGATIVE]
    # a band between 0.3 and 0.5 is ignored
    assert _match(gt, anchors, high=0.5, low=0.3, force_match=False) == [0, 0, IGNORED, NEGATIVE, NEGATIVE]


def test_matcher_best_box_and_forced_match():
    anchors = [[0, 0, 10, 10], [100, 100, 110, 110], [0, 0, 20, 20]]
    # box 1 overlaps anchor 1 only a little (IoU 0.25) → forced onto it; anchor 0 prefers box 0
    gt = [[0, 0, 10, 10], [100, 100, 105, 105]]
    assert _match(gt, anchors, force_match=False) == [0, NEGATIVE, NEGATIVE]
    assert _match(gt, anchors) == [0, 1, NEGATIVE]
    # two boxes whose best anchor is the same: the lower index keeps it (reference behaviour)
    assert _match([[6, 6, 10, 10], [0, 0, 4, 4]], [[0, 0, 10, 10], [50, 50, 60, 60]]) == [0, NEGATIVE]
    assert _match([[0, 0, 4, 4], [6, 6, 10, 10]], [[0, 0, 10, 10], [50, 50, 60, 60]]) == [0, NEGATIVE]


def test_crowd_region_is_ignored_not_positive():
    anchors = [[0, 0, 10, 10], [30, 30, 40, 40], [60, 60, 70, 70], [62, 62, 68, 68]]
    gt = [[0, 0, 10, 10], [30, 30, 40, 41], [55, 55, 75, 75]]
    crowd = [False, True, True]
    # anchor 1 best matches crowd box 1 (IoU 0.91) → ignored; anchor 2 inside the big crowd box
    # has IoU 0.25 → still negative; crowd boxes are never force-matched
    assert _match(gt, anchors, crowd) == [0, IGNORED, NEGATIVE, NEGATIVE]
    # without the crowd flag anchor 1 is a positive of box 1
    assert _match(gt, anchors, [False, False, True]) == [0, 1, NEGATIVE, NEGATIVE]
    # the optional area-coverage rule also ignores negatives lying inside a crowd box
    assert _match(gt, anchors, crowd, ignore_ioa=0.5) == [0, IGNORED, IGNORED, IGNORED]


def test_padding_rows_never_match():
    boxes = torch.tensor([[[0, 0, 10, 10], [0, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]]], dtype=torch.float32)
    valid = torch.tensor([[True, False], [False, False]])
    m = ArgMaxMatcher()(boxes, valid, torch.zeros_like(valid), torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]))
    assert m.tolist() == [[0, NEGATIVE], [NEGATIVE, NEGATIVE]]


def test_batched_iou_matches_torchvision():
    from torchvision.ops import box_iou

    a = torch.rand(2, 5, 2) * 50
    boxes = torch.cat([a, a + torch.rand(2, 5, 2) * 30 + 1], -1)
    anchors = torch.cat([a[0], a[0] + 10], -1)
    ref = torch.stack([box_iou(b, anchors) for b in boxes])
    assert torch.allclose(batched_iou(boxes, anchors), ref, atol=1e-6)


def test_box_coder_round_trip_and_known_codes():
    coder = BoxCoder()
    anchors = torch.tensor([[0.0, 0, 10, 20], [5, 5, 15, 15]])
    boxes = torch.tensor([[2.0, 4, 12, 24], [0, 0, 40, 10]])
    codes = coder.encode(boxes, anchors)
    # (ty, tx, th, tw): centre shifts over anchor sizes, log size ratios
    expected = torch.tensor([[4 / 20, 2 / 10, 0.0, 0.0], [-5 / 10, 10 / 10, 0.0, torch.log(torch.tensor(4.0))]])
    assert torch.allclose(codes, expected, atol=1e-5)
    assert torch.allclose(coder.decode(codes, anchors), boxes, atol=1e-4)
    rnd = torch.rand(100, 2) * 100
    boxes = torch.cat([rnd, rnd + torch.rand(100, 2) * 50 + 1], 1)
    anchors = boxes[torch.randperm(100)]
    assert torch.allclose(coder.decode(coder.encode(boxes, anchors), anchors), boxes, atol=1e-3)
