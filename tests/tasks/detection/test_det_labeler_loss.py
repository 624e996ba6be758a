"""Batch targets and loss against effdet's AnchorLabeler / DetectionLoss (the oracle)."""
import pytest
import torch

from multitask_edet.errors import DatasetError
from multitask_edet.tasks.detection import IGNORED, NEGATIVE, DetectionConfig, DetectionTask, DetLossConfig

effdet_anchors = pytest.importorskip("effdet.anchors")
effdet_loss = pytest.importorskip("effdet.loss")

SIZE = (256, 384)
C = 6
RATIOS = [(1.0, 1.0), (1.4, 0.7), (0.7, 1.4)]


def _random_boxes(counts, seed=0):
    g = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for n in counts:
        xy = torch.rand(n, 2, generator=g) * torch.tensor([330.0, 200.0])
        wh = torch.rand(n, 2, generator=g) * 150 + 3
        boxes.append(torch.cat([xy, (xy + wh).min(torch.tensor([384.0, 256.0]))], 1))
        labels.append(torch.randint(0, C, (n,), generator=g))
    return boxes, labels


def _effdet_targets(boxes, labels):
    anchors = effdet_anchors.Anchors(3, 7, 3, RATIOS, 4.0, SIZE)
    labeler = effdet_anchors.AnchorLabeler(anchors, C, match_threshold=0.5)
    M = max(len(b) for b in boxes)
    eb = torch.full((len(boxes), M, 4), -1.0)
    ec = torch.full((len(boxes), M), -1)
    for i, (b, l) in enumerate(zip(boxes, labels)):
        eb[i, : len(b)] = b[:, [1, 0, 3, 2]]  # yxyx
        ec[i, : len(l)] = l + 1  # effdet classes are 1-based
    return labeler.batch_label_anchors(eb, ec)


def _task(**loss):
    return DetectionTask(DetectionConfig(num_classes=C, loss=DetLossConfig(**loss)))


def _batch(boxes, labels, ignore=None):
    n = len(boxes)
    ignore = ignore or [None] * n
    det = [None if b is None else {"boxes": b, "labels": lab, "ignore": ign} for b, lab, ign in zip(boxes, labels, ignore)]
    return {"images": torch.zeros(n, 3, *SIZE, dtype=torch.uint8), "det": det}


def _flat(per_level, B, width=None):
    return torch.cat([t.reshape(B, -1) if width is None else t.reshape(B, -1, width) for t in per_level], 1)


def test_targets_equal_effdet_anchor_labeler():
    boxes, labels = _random_boxes([6, 1, 9, 3])
    ref_cls, ref_box, ref_npos = _effdet_targets(boxes, labels)
    t = _task().build_targets(_batch(boxes, labels), SIZE, "cpu")
    assert torch.equal(t.cls, _flat(ref_cls, 4))
    assert torch.allclose(t.box, _flat(ref_box, 4, 4), atol=1e-6, rtol=0)
    assert torch.equal(t.num_positives, ref_npos)
    assert (t.num_positives > 0).all() and (t.cls == NEGATIVE).any()


def _random_outputs(B, seed=1, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    cls, box = [], []
    for l in range(3, 8):
        h, w = SIZE[0] // 2**l, SIZE[1] // 2**l
        cls.append((torch.randn(B, 9 * C, h, w, generator=g) * 2 - 2).requires_grad_(requires_grad))
        box.append((torch.randn(B, 36, h, w, generator=g) * 0.3).requires_grad_(requires_grad))
    return {"cls": cls, "box": box}


class _Cfg:
    num_classes, alpha, gamma, delta, box_loss_weight = C, 0.25, 1.5, 0.1, 50.0
    legacy_focal, jit_loss = False, False

    def __init__(self, label_smoothing=0.0):
        self.label_smoothing = label_smoothing


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_equals_effdet_detection_loss(smoothing):
    boxes, labels = _random_boxes([4, 2, 7], seed=3)
    out = _random_outputs(3)
    ref_cls, ref_box, ref_npos = _effdet_targets(boxes, labels)
    total, cls_l, box_l = effdet_loss.DetectionLoss(_Cfg(smoothing))(out["cls"], out["box"], ref_cls, ref_box, ref_npos)
    losses = _task(label_smoothing=smoothing).loss(out, _batch(boxes, labels))
    assert set(losses) == {"det_cls", "det_box"}
    assert abs(losses["det_cls"].item() - cls_l.item()) <= 1e-5 * max(1.0, cls_l.item())
    # det_box carries the box weight (50): the sum of the dict is effdet's total loss
    assert abs(losses["det_box"].item() - 50.0 * box_l.item()) <= 1e-5 * max(1.0, box_l.item() * 50)
    assert abs(sum(losses.values()).item() - total.item()) <= 1e-5 * total.item()


def test_samples_without_boxes_contribute_nothing():
    boxes, labels = _random_boxes([4, 3], seed=5)
    out = _random_outputs(2)
    task = _task()
    both = task.loss(out, _batch(boxes, labels))
    first_only = task.loss({k: [t[:1] for t in v] for k, v in out.items()}, _batch(boxes[:1], labels[:1]))
    mixed = task.loss(out, _batch([boxes[0], None], [labels[0], None]))
    assert not torch.allclose(both["det_cls"], first_only["det_cls"])
    for k in ("det_cls", "det_box"):
        assert torch.allclose(mixed[k], first_only[k], rtol=1e-6)
    t = task.build_targets(_batch([boxes[0], None], [labels[0], None]), SIZE, "cpu")
    assert (t.cls[1] == IGNORED).all() and t.num_positives[1] == 0


def test_no_annotations_gives_zero_losses_connected_to_outputs():
    out = _random_outputs(2, requires_grad=True)
    losses = _task().loss(out, _batch([None, None], [None, None]))
    total = sum(losses.values())
    assert total.item() == 0.0
    total.backward()
    assert out["cls"][0].grad is not None and out["cls"][0].grad.abs().sum() == 0


def test_image_without_objects_is_all_background():
    out = _random_outputs(1)
    empty = (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    t = _task().build_targets(_batch([empty[0]], [empty[1]]), SIZE, "cpu")
    assert (t.cls == NEGATIVE).all() and t.num_positives.item() == 0
    losses = _task().loss(out, _batch([empty[0]], [empty[1]]))
    assert losses["det_cls"].item() > 0 and losses["det_box"].item() == 0


def test_crowd_box_removes_positives_and_box_loss():
    box = torch.tensor([[100.0, 60.0, 180.0, 140.0]])
    plain = _task().build_targets(_batch([box], [torch.tensor([2])]), SIZE, "cpu")
    crowd = _task().build_targets(_batch([box], [torch.tensor([2])], [torch.tensor([True])]), SIZE, "cpu")
    pos = plain.cls[0] >= 0
    assert pos.sum() > 0 and plain.cls[0][pos].eq(2).all()
    assert (crowd.cls[0][pos] == IGNORED).all() and crowd.num_positives.item() == 0
    assert (crowd.box == 0).all()


def test_label_out_of_range_is_a_dataset_error():
    with pytest.raises(DatasetError, match="num_classes"):
        _task().build_targets(_batch([torch.tensor([[0.0, 0, 50, 50]])], [torch.tensor([C])]), SIZE, "cpu")


def test_giou_loss_zero_for_perfect_boxes_and_positive_otherwise():
    task = _task(giou_weight=2.0)
    boxes, labels = _random_boxes([3], seed=7)
    batch = _batch(boxes, labels)
    t = task.build_targets(batch, SIZE, "cpu")
    out = _random_outputs(1)
    # head outputs equal to the box targets decode exactly onto the ground truth
    sizes = task.anchors.num_anchors_per_level(SIZE)
    perfect = [bt.reshape(1, o.shape[2], o.shape[3], 36).permute(0, 3, 1, 2)
               for bt, o in zip(t.box.split(sizes, 1), out["box"])]
    good = task.loss({"cls": out["cls"], "box": perfect}, batch)
    bad = task.loss(out, batch)
    assert good["det_giou"].item() < 1e-4 and good["det_box"].item() < 1e-6
    assert bad["det_giou"].item() > 0.05
