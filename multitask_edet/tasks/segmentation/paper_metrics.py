"""Segmentation figures as the driving multi-task papers compute them, reported beside the standard ones.

Our main metric is the standard one (evaluator.py): one confusion matrix over the whole
dataset, mIoU = mean over classes of TP / (TP + FP + FN). The papers that report drivable
area and lane-line figures on BDD100K compute theirs differently, and differently from each
other, so their numbers are comparable only under their own protocol. ``PaperSegMetrics``
reproduces the two protocols below; the evaluator reports them under keys prefixed with the
protocol's name (``hybridnets/mIoU``, ``yolop/IoU_lane`` ...).

Common to both: a *unit* (see each protocol) gets its own confusion matrix over its valid
pixels (ground truth void 255 left out; a unit without valid pixels is skipped). For a class
c with TP, FP, FN, TN counted one-vs-rest in that matrix:

``hybridnets`` (HybridNets' val.py, which scores through segmentation_models_pytorch's
``get_stats`` / ``iou_score`` / ``balanced_accuracy`` with ``reduction="none"``):
    unit = one image. IoU_c = TP / (TP + FP + FN), and 1 when that is 0/0 (smp's
    ``zero_division=1``: a class neither present nor predicted in the image counts as perfect).
    ``mIoU`` = the mean over images of the mean of IoU_c over the task's classes (HybridNets'
    drivable "mIoU" averages its background and drivable IoUs this way). ``IoU_<class>`` = the
    mean over images of IoU of the reported class (HybridNets' "lane IoU"). ``acc_<class>`` =
    the mean over images of the *balanced accuracy* (TP / (TP + FN) + TN / (TN + FP)) / 2 of
    that class, 1 when either ratio is 0/0 — what HybridNets' code computes for the lane
    "accuracy" it reports; it is not pixel accuracy. ``pixel_acc`` = the mean over images of
    ΣTP / valid pixels (HybridNets reports none; given so both protocols have one).
``yolop`` (YOLOP's validation loop, ``SegmentationMetric`` reset for every batch):
    unit = one evaluation batch (``eval.batch_size`` images; the last one may be smaller).
    IoU_c = TP / (TP + FP + FN), and 0 when that is 0/0. ``mIoU`` = mean of IoU_c over the
    classes; ``IoU_<class>`` = IoU of the reported class; ``acc_<class>`` = TP / (TP + FN) of
    that class (the recall YOLOP calls lane "accuracy"), 0 when the batch has no such pixel;
    ``pixel_acc`` = ΣTP / valid pixels. Each is averaged over batches weighted by the number of
    images in the batch.

Both papers score at the network's input resolution (HybridNets on the padded 640×384 input,
YOLOP with the letterbox padding cropped out); we score at each image's original resolution,
where the standard metric is computed too. Lane-line figures depend strongly on the line width
drawn into the ground truth (the ``lane_dilation`` option of the BDD100K adapter).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

PAPER_PROTOCOLS = ("hybridnets", "yolop")
_METRICS = ("mIoU", "IoU", "acc", "pixel_acc")


def confusion_matrix(
    preds: Sequence[torch.Tensor], gts: Sequence[torch.Tensor], num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """(C, C) int64 pixel counts (rows = ground truth) over pairs of same-shape class-index maps.

    Void pixels (``ignore_index``) and any ground-truth label outside 0..C-1 are left out, and so
    are pixels without a class (a non-finite score, inference.NO_CLASS): the standard mIoU counts
    those as misses and reports them (evaluator.py); the papers' protocols have no such case.
    """
    c = num_classes
    device = preds[0].device
    codes = []
    for pred, gt in zip(preds, gts):
        if pred.shape != gt.shape:
            raise ValueError(f"prediction of shape {tuple(pred.shape)} scored against ground truth {tuple(gt.shape)}")
        gt = gt.to(device=device, dtype=torch.long, non_blocking=True).reshape(-1)
        pred = pred.to(torch.long).reshape(-1)
        valid = (gt != ignore_index) & (gt >= 0) & (gt < c) & (pred >= 0) & (pred < c)
        codes.append(gt[valid] * c + pred[valid])
    return torch.bincount(torch.cat(codes), minlength=c * c).reshape(c, c)


def unit_metrics(cm: np.ndarray, cls: int, protocol: str) -> dict[str, float] | None:
    """The protocol's figures of one unit's confusion matrix (None when it has no valid pixel)."""
    cm = np.asarray(cm, np.float64)
    total = cm.sum()
    if total == 0:
        return None
    tp = np.diag(cm)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    tn = total - tp - fp - fn
    zero = 1.0 if protocol == "hybridnets" else 0.0
    iou = _ratio(tp, tp + fp + fn, zero)
    if protocol == "hybridnets":
        sens, spec = _ratio(tp, tp + fn, np.nan), _ratio(tn, tn + fp, np.nan)
        acc = np.nan_to_num((sens + spec) / 2, nan=1.0)  # smp: the whole value is 1 when a ratio is 0/0
    else:
        acc = _ratio(tp, tp + fn, 0.0)
    return {"mIoU": float(iou.mean()), "IoU": float(iou[cls]), "acc": float(acc[cls]),
            "pixel_acc": float(tp.sum() / total)}


def _ratio(num: np.ndarray, den: np.ndarray, zero: float) -> np.ndarray:
    return np.divide(num, den, out=np.full_like(num, zero), where=den > 0)


class PaperSegMetrics:
    """Accumulates a paper protocol's per-unit figures (module docstring) over an evaluation."""

    def __init__(self, protocol: str, num_classes: int, class_index: int, class_name: str, ignore_index: int = 255):
        if protocol not in PAPER_PROTOCOLS:
            raise ValueError(f"paper protocol {protocol!r}; valid: {', '.join(PAPER_PROTOCOLS)}")
        if not 0 <= class_index < num_classes:
            raise ValueError(f"class index {class_index} outside 0..{num_classes - 1}")
        self.protocol = protocol
        self.num_classes = num_classes
        self.class_index = class_index
        self.class_name = class_name
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        #: this process's weighted sums of the figures (order of _METRICS), then of the weights
        self.sums = np.zeros(len(_METRICS) + 1, np.float64)
        self._synced: np.ndarray | None = None  # the sum over processes, after sync()

    def update(self, preds: Sequence[torch.Tensor], gts: Sequence[torch.Tensor]) -> None:
        """One evaluation batch's predictions and ground truths (original size, class indices)."""
        if not preds:
            return
        units = [([p], [g], 1) for p, g in zip(preds, gts)] if self.protocol == "hybridnets" else [(preds, gts, len(preds))]
        for ps, gs, n in units:
            cm = confusion_matrix(ps, gs, self.num_classes, self.ignore_index).cpu().numpy()
            m = unit_metrics(cm, self.class_index, self.protocol)
            if m is not None:
                self.sums += n * np.array([*(m[k] for k in _METRICS), 1.0])
        self._synced = None

    def sync(self) -> None:
        """Sum the accumulators of all processes (idempotent; a no-op when not distributed)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        t = torch.from_numpy(self.sums.copy())
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        self._synced = t.cpu().numpy()

    def compute(self) -> dict[str, float]:
        """``{"<protocol>/mIoU", "<protocol>/IoU_<class>", "<protocol>/acc_<class>", "<protocol>/pixel_acc"}``."""
        sums = self._synced if self._synced is not None else self.sums
        if sums[-1] == 0:
            return {}
        mean = sums[:-1] / sums[-1]
        names = {"mIoU": "mIoU", "IoU": f"IoU_{self.class_name}", "acc": f"acc_{self.class_name}",
                 "pixel_acc": "pixel_acc"}
        return {f"{self.protocol}/{names[k]}": float(v) for k, v in zip(_METRICS, mean)}

    def report(self, metrics: dict[str, float]) -> str:
        if not metrics:
            return f"{self.protocol} protocol: no image with a valid pixel"
        p, c = self.protocol, self.class_name
        unit = "per image" if p == "hybridnets" else "per evaluation batch"
        acc = "balanced acc" if p == "hybridnets" else "acc (recall)"
        return (f"{p} protocol ({unit}, original resolution; not comparable with the mIoU above): "
                f"mIoU {100 * metrics[f'{p}/mIoU']:.2f}  IoU {c} {100 * metrics[f'{p}/IoU_{c}']:.2f}  "
                f"{acc} {c} {100 * metrics[f'{p}/acc_{c}']:.2f}  pixel acc {100 * metrics[f'{p}/pixel_acc']:.2f}")
