"""The driving papers' segmentation protocols (paper_metrics.py), beside the standard dataset-level mIoU."""
import numpy as np
import pytest
import torch

from multitask_edet.errors import ConfigError
from multitask_edet.tasks.segmentation import PaperSegMetrics, SegmentationEvaluator, SegmentationTask

V = 255


def images(seed=0):
    """Four (pred, gt) pairs of a binary lane task: a thin-lane image, one with void, one without any lane, one odd size."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in ((6, 8), (6, 8), (5, 7), (9, 4)):
        gt = (torch.rand(h, w, generator=g) < 0.2).long()
        pred = torch.where(torch.rand(h, w, generator=g) < 0.8, gt, 1 - gt)
        out.append([pred, gt])
    out[1][1][0, :] = V  # void row
    out[2][0].zero_()  # no lane predicted ...
    out[2][1].zero_()  # ... and none in the ground truth: IoU 0/0
    return out


def test_hybridnets_protocol_equals_smp_per_image_metrics():
    """HybridNets scores each image with smp's get_stats + iou_score / balanced_accuracy (reduction none)."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    pairs = images()
    paper = PaperSegMetrics("hybridnets", 2, class_index=1, class_name="lane")
    paper.update([p for p, _ in pairs], [g for _, g in pairs])
    got = paper.compute()
    ious, accs, pix = [], [], []
    for pred, gt in pairs:
        tp, fp, fn, tn = smp.metrics.get_stats(pred[None], gt[None], mode="multiclass", num_classes=2, ignore_index=V)
        ious.append(smp.metrics.iou_score(tp, fp, fn, tn, reduction="none")[0])
        accs.append(smp.metrics.balanced_accuracy(tp, fp, fn, tn, reduction="none")[0])
        valid = gt != V
        pix.append((pred[valid] == gt[valid]).float().mean())
    ious, accs = torch.stack(ious), torch.stack(accs)
    assert ious[2, 1] == 1.0  # smp's zero_division: no lane anywhere is a perfect lane IoU
    assert got["hybridnets/mIoU"] == pytest.approx(ious.mean().item(), abs=1e-6)
    assert got["hybridnets/IoU_lane"] == pytest.approx(ious[:, 1].mean().item(), abs=1e-6)
    assert got["hybridnets/acc_lane"] == pytest.approx(accs[:, 1].mean().item(), abs=1e-6)
    assert got["hybridnets/pixel_acc"] == pytest.approx(torch.stack(pix).mean().item(), abs=1e-6)


def test_yolop_protocol_by_hand_per_batch_weighted_by_images():
    pairs = images()
    paper = PaperSegMetrics("yolop", 2, class_index=1, class_name="lane")
    paper.update([p for p, _ in pairs[:3]], [g for _, g in pairs[:3]])  # batch of 3
    paper.update([pairs[2][0]], [pairs[2][1]])  # batch of 1 without lane pixels: IoU and recall 0/0 → 0
    got = paper.compute()

    def batch(ps):
        cm = np.zeros((2, 2))
        for pred, gt in ps:
            valid = gt != V
            for a, b in zip(gt[valid].tolist(), pred[valid].tolist()):
                cm[a, b] += 1
        iou = [cm[c, c] / (cm[c].sum() + cm[:, c].sum() - cm[c, c]) if cm[c].sum() + cm[:, c].sum() else 0.0
               for c in range(2)]
        recall = cm[1, 1] / cm[1].sum() if cm[1].sum() else 0.0
        return np.mean(iou), iou[1], recall, np.trace(cm) / cm.sum()

    a, b = batch(pairs[:3]), batch([pairs[2]])
    assert b[1] == 0.0 and b[2] == 0.0
    for k, key in enumerate(("yolop/mIoU", "yolop/IoU_lane", "yolop/acc_lane", "yolop/pixel_acc")):
        assert got[key] == pytest.approx((3 * a[k] + b[k]) / 4, abs=1e-9), key


def test_evaluator_reports_a_protocol_beside_the_standard_figures():
    pairs = images()
    batch = {"seg": [None] * 4, "meta": [{"orig_masks": {"seg": g}} for _, g in pairs]}
    plain = SegmentationEvaluator(2, ["background", "lane"])
    plain.update([p for p, _ in pairs], batch)
    task = SegmentationTask({"num_classes": 2, "eval": {"paper_protocol": "hybridnets", "paper_class": "lane"}},
                            class_names=["background", "lane"])
    ev = task.evaluator()
    ev.reset()
    ev.update([p for p, _ in pairs], batch)
    got, ref = ev.compute(), plain.compute()
    assert {k: got[k] for k in ref} == ref  # the standard figures are untouched
    assert set(got) - set(ref) == {"hybridnets/mIoU", "hybridnets/IoU_lane", "hybridnets/acc_lane",
                                   "hybridnets/pixel_acc"}
    assert got["hybridnets/mIoU"] != pytest.approx(got["mIoU"], abs=1e-4)  # per-image mean ≠ dataset-level mIoU here
    assert "hybridnets protocol (per image" in ev.report() and "balanced acc lane" in ev.report()
    ev.reset()
    assert ev.paper.compute() == {}


def test_paper_class_defaults_to_the_last_and_is_checked():
    task = SegmentationTask({"num_classes": 3, "eval": {"paper_protocol": "yolop"}},
                            class_names=["background", "direct", "alternative"])
    assert task.evaluator().paper.class_name == "alternative"
    with pytest.raises(ConfigError, match="paper_class='lane' is not one of the classes"):
        SegmentationTask({"num_classes": 2, "eval": {"paper_protocol": "yolop", "paper_class": "lane"}},
                         class_names=["background", "drivable"]).evaluator()
    with pytest.raises(ConfigError, match="paper_protocol"):
        SegmentationTask({"eval": {"paper_protocol": "yolopv2"}})
