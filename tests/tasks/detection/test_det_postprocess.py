"""Post-processing: effdet parity on raw outputs, mapping to original pixels, soft-NMS."""
import math

import pytest
import torch

from multitask_edet.tasks.detection import AnchorGenerator, DetPostprocessConfig
from multitask_edet.tasks.detection.postprocess import postprocess_detections, soft_nms

effdet_bench = pytest.importorskip("effdet.bench")
effdet_softnms = pytest.importorskip("effdet.soft_nms")

SIZE = (256, 256)
C = 4


def _outputs(B, seed=0):
    g = torch.Generator().manual_seed(seed)
    cls = [torch.randn(B, 9 * C, SIZE[0] >> l, SIZE[1] >> l, generator=g) * 3 - 3 for l in range(3, 8)]
    box = [torch.randn(B, 36, SIZE[0] >> l, SIZE[1] >> l, generator=g) * 0.5 for l in range(3, 8)]
    return cls, box


def test_nms_detections_equal_effdet_post_processing():
    B = 2
    cls, box = _outputs(B)
    anchors = AnchorGenerator()(SIZE)
    c, b, idx, classes = effdet_bench._post_process(cls, box, num_levels=5, num_classes=C, max_detection_points=5000)
    ref_anchors = anchors[:, [1, 0, 3, 2]]  # effdet's yxyx
    img_info = {"img_scale": torch.ones(B), "img_size": torch.tensor([[SIZE[1], SIZE[0]]] * B, dtype=torch.float)}
    ref = effdet_bench._batch_detection(B, c, b, ref_anchors, idx, classes, img_info["img_scale"],
                                        img_info["img_size"], max_det_per_image=100, soft_nms=False)
    mine = postprocess_detections(cls, box, anchors, C, SIZE)
    for i in range(B):
        n = len(mine[i]["scores"])
        assert n == 100 and (ref[i, :, 4] > 0).sum() == n
        assert torch.allclose(mine[i]["boxes"], ref[i, :n, :4], atol=1e-4)
        assert torch.allclose(mine[i]["scores"], ref[i, :n, 4], atol=1e-6)
        assert torch.equal(mine[i]["labels"], ref[i, :n, 5].long() - 1)  # effdet labels are 1-based


def test_boxes_mapped_back_to_original_pixels():
    cls, box = _outputs(1, seed=2)
    anchors = AnchorGenerator()(SIZE)
    plain = postprocess_detections(cls, box, anchors, C, SIZE)[0]
    # the input was the original resized by 0.5 and padded 10 px on top, 20 px on the left
    meta = {"scale": 0.5, "pad": (10, 20), "orig_size": (400, 300)}
    mapped = postprocess_detections(cls, box, anchors, C, SIZE, [meta])[0]
    expected = (plain["boxes"] - torch.tensor([20.0, 10, 20, 10])) / 0.5
    expected = torch.min(expected.clamp(min=0), torch.tensor([300.0, 400, 300, 400]))
    # identical NMS decisions except where clipping differs; compare the common top boxes
    assert torch.allclose(mapped["boxes"][:20], expected[:20], atol=1e-3)
    assert torch.equal(mapped["labels"][:20], plain["labels"][:20])
    assert (mapped["boxes"][:, 2] <= 300).all() and (mapped["boxes"][:, 3] <= 400).all()


def test_score_threshold_and_max_detections():
    cls, box = _outputs(1, seed=3)
    anchors = AnchorGenerator()(SIZE)
    cfg = DetPostprocessConfig(max_detections=7, score_threshold=0.0)
    assert len(postprocess_detections(cls, box, anchors, C, SIZE, cfg=cfg)[0]["scores"]) == 7
    cfg = DetPostprocessConfig(score_threshold=0.3)
    scores = postprocess_detections(cls, box, anchors, C, SIZE, cfg=cfg)[0]["scores"]
    assert len(scores) > 0 and (scores >= 0.3).all()


def test_soft_nms_hand_made():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10]]])
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.0015]])
    classes = torch.tensor([[0, 0, 1, 0, 0]])
    idx, new, valid = soft_nms(boxes, scores, classes, sigma=0.5, score_threshold=0.001, max_detections=10)
    n = int(valid.sum())
    # box 1 overlaps box 0 (same class, IoU 0.9) → decayed by exp(-0.81/0.5); box 2 is another
    # class and keeps its score; box 4 (identical to box 0) falls below the threshold and leaves
    assert idx[0, :n].tolist() == [0, 2, 3, 1]
    expected = [0.9, 0.7, 0.6, 0.8 * math.exp(-0.81 / 0.5)]
    assert torch.allclose(new[0, :n], torch.tensor(expected), atol=1e-6)
    assert not valid[0, n:].any()


def test_soft_nms_equals_effdet_on_random_boxes():
    g = torch.Generator().manual_seed(4)
    xy = torch.rand(300, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + torch.rand(300, 2, generator=g) * 60 + 5], 1)
    scores = torch.rand(300, generator=g)
    classes = torch.randint(0, 3, (300,), generator=g)
    ref_idx, ref_scores = effdet_softnms.batched_soft_nms(boxes, scores, classes, method_gaussian=True,
                                                          iou_threshold=0.3, score_threshold=0.001)
    idx, new, valid = soft_nms(boxes[None], scores[None], classes[None], 0.5, 0.001, max_detections=100)
    assert valid.all()
    assert torch.equal(idx[0], ref_idx[:100])
    assert torch.allclose(new[0], ref_scores[:100], atol=1e-6)


def test_soft_nms_path_of_postprocess():
    cls, box = _outputs(2, seed=5)
    anchors = AnchorGenerator()(SIZE)
    out = postprocess_detections(cls, box, anchors, C, SIZE, cfg=DetPostprocessConfig(nms="soft_nms"))
    for det in out:
        assert len(det["scores"]) == 100
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        assert det["labels"].dtype == torch.long and det["boxes"].shape == (100, 4)
