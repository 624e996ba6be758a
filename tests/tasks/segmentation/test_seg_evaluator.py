"""mIoU against a hand-computed confusion matrix, with torchmetrics as a second oracle."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.classification import MulticlassJaccardIndex

from multitask_edet.tasks.segmentation import SegmentationEvaluator

V = 255  # void
NAMES = ["background", "cat", "dog", "absent"]

# Two images of different sizes; class 3 occurs in neither ground truth nor prediction.
GT_A = [[0, 0, 1], [1, V, 2]]  # 2x3
PRED_A = [[0, 1, 1], [1, 2, 2]]  # the void pixel is predicted 2: it must not count
GT_B = [[2, 2], [0, V], [1, 0]]  # 3x2
PRED_B = [[2, 0], [0, 0], [2, 0]]

# (gt, pred) pairs of the valid pixels, counted by hand:
#   A: (0,0) (0,1) (1,1) (1,1) (2,2)      B: (2,2) (2,0) (0,0) (1,2) (0,0)
HAND_CONFMAT = [
    [3, 1, 0, 0],  # gt 0
    [0, 2, 1, 0],  # gt 1
    [1, 0, 2, 0],  # gt 2
    [0, 0, 0, 0],  # gt 3
]
# IoU = TP / (row + column - TP): 3/(4+4-3), 2/(3+3-2), 2/(3+3-2)
HAND_IOU = [3 / 5, 2 / 4, 2 / 4]
HAND_MIOU = sum(HAND_IOU) / 3
HAND_MIOU_ALL = sum(HAND_IOU) / 4
HAND_PIXEL_ACC = 7 / 10
HAND_MEAN_CLASS_ACC = (3 / 4 + 2 / 3 + 2 / 3) / 3


def t(x):
    return torch.tensor(x, dtype=torch.uint8)


def batch_for(gts):
    """A batch as the eval transforms give it: GT at original size in meta['orig_masks']."""
    metas = [{"orig_size": tuple(t(g).shape), "scale": 1.0, "pad": (0, 0), "orig_masks": {"seg": t(g)},
              "file_name": f"img_{i}.jpg", "image_id": i} for i, g in enumerate(gts)]
    return {"images": torch.zeros(len(gts), 3, 4, 4, dtype=torch.uint8), "meta": metas, "seg": [None] * len(gts)}


def test_miou_equals_hand_computed_value():
    ev = SegmentationEvaluator(4, NAMES)
    ev.update([t(PRED_A), t(PRED_B)], batch_for([GT_A, GT_B]))
    assert ev.confusion_matrix.tolist() == HAND_CONFMAT
    m = ev.compute()
    assert m["mIoU"] == pytest.approx(HAND_MIOU, abs=1e-6)
    assert m["mIoU_all_classes"] == pytest.approx(HAND_MIOU_ALL, abs=1e-6)
    assert m["pixel_acc"] == pytest.approx(HAND_PIXEL_ACC, abs=1e-6)
    assert m["mean_class_acc"] == pytest.approx(HAND_MEAN_CLASS_ACC, abs=1e-6)
    assert m["classes_present"] == 3
    for name, iou in zip(NAMES, HAND_IOU):
        assert m[f"IoU/{name}"] == pytest.approx(iou, abs=1e-6)
    assert "IoU/absent" not in m


def test_miou_matches_torchmetrics():
    ev = SegmentationEvaluator(4, NAMES)
    per_class = MulticlassJaccardIndex(4, ignore_index=255, average="none")
    macro = MulticlassJaccardIndex(4, ignore_index=255, average="macro")
    for pred, gt in ((PRED_A, GT_A), (PRED_B, GT_B)):
        ev.accumulate(t(pred), t(gt))
        per_class.update(t(pred)[None].long(), t(gt)[None].long())
        macro.update(t(pred)[None].long(), t(gt)[None].long())
    m = ev.compute()
    tm = per_class.compute()
    assert torch.allclose(tm[:3], torch.tensor(HAND_IOU))
    assert m["mIoU"] == pytest.approx(macro.compute().item(), abs=1e-6)


def test_random_images_match_torchmetrics():
    g = torch.Generator().manual_seed(1)
    ev = SegmentationEvaluator(6)
    tm = MulticlassJaccardIndex(6, ignore_index=255, average="macro")
    for h, w in ((7, 9), (12, 5), (3, 3)):
        gt = torch.randint(0, 6, (h, w), generator=g)
        gt[torch.rand(h, w, generator=g) < 0.2] = 255
        pred = torch.where(torch.rand(h, w, generator=g) < 0.6, gt.clamp(max=5), torch.randint(0, 6, (h, w), generator=g))
        ev.accumulate(pred.to(torch.uint8), gt.to(torch.uint8))
        tm.update(pred[None], gt[None])
    assert ev.compute()["mIoU"] == pytest.approx(tm.compute().item(), abs=1e-6)


def test_batches_accumulate_and_reset_clears():
    ev = SegmentationEvaluator(4, NAMES)
    ev.update([t(PRED_A)], batch_for([GT_A]))
    ev.update([t(PRED_B)], batch_for([GT_B]))
    assert ev.confusion_matrix.tolist() == HAND_CONFMAT
    ev.reset()
    assert int(ev.confusion_matrix.sum()) == 0
    assert ev.compute()["mIoU"] == 0.0


def test_fallback_to_input_size_mask_crops_padding():
    # No original-size mask: the input-size mask (image padded by 1 row on top, 2 columns on the left,
    # padding filled with void) is mapped back to the original size before scoring.
    gt = t(GT_A).long()
    padded = torch.full((4, 6), 255, dtype=torch.long)
    padded[1:3, 2:5] = gt
    batch = {"images": torch.zeros(1, 3, 4, 6, dtype=torch.uint8), "seg": [padded],
             "meta": [{"orig_size": (2, 3), "scale": 1.0, "pad": (1, 2)}]}
    ev = SegmentationEvaluator(4)
    ev.update([t(PRED_A)], batch)
    expected = torch.zeros(4, 4, dtype=torch.long)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[2, 2] = 1, 1, 2, 1
    assert torch.equal(ev.confusion_matrix, expected)


def test_samples_without_masks_are_skipped_and_shape_mismatch_is_an_error():
    ev = SegmentationEvaluator(4)
    batch = {"images": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "seg": [None, None],
             "meta": [{"orig_size": (2, 3)}, {"orig_size": (2, 3)}]}
    ev.update([t(PRED_A), t(PRED_A)], batch)
    assert int(ev.confusion_matrix.sum()) == 0
    with pytest.raises(ValueError, match="img_0.jpg"):
        ev.update([t(PRED_B)], batch_for([GT_A]))


def test_report_lists_every_class_and_marks_absent_ones():
    ev = SegmentationEvaluator(4, NAMES)
    ev.update([t(PRED_A), t(PRED_B)], batch_for([GT_A, GT_B]))
    ev.compute()
    report = ev.report()
    lines = {line.split()[0]: line for line in report.splitlines() if line and line.split()[0] in NAMES}
    assert set(lines) == set(NAMES)
    assert "60.00" in lines["background"] and "75.00" in lines["background"]
    assert lines["absent"].split()[1:] == ["-", "-"]
    assert f"mIoU {100 * HAND_MIOU:.2f} over 3/4" in report


def test_confusion_matrix_image(tmp_path):
    ev = SegmentationEvaluator(4, NAMES)
    ev.update([t(PRED_A), t(PRED_B)], batch_for([GT_A, GT_B]))
    path = ev.save_confusion_matrix(tmp_path / "cm" / "confusion.png")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] == img.shape[1] > 4 * 22
    # the bottom-right cell (absent class, empty row) stays white; the diagonal is shaded
    assert (img[-5, -5] == 255).all()
    assert img.min() < 128


def test_writes_palette_pngs_named_after_images(tmp_path):
    ev = SegmentationEvaluator(4, NAMES, output_dir=tmp_path)
    ev.update([t(PRED_A), t(PRED_B)], batch_for([GT_A, GT_B]))
    for i, pred in enumerate((PRED_A, PRED_B)):
        img = Image.open(tmp_path / f"img_{i}.png")
        assert img.mode == "P"
        assert np.array_equal(np.asarray(img), np.asarray(pred, dtype=np.uint8))
