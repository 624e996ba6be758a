"""mIoU evaluation of semantic segmentation (paper §5.2 / Table 3: VOC 2012 val mIoU).

Definition (VOC devkit, and every paper that quotes VOC mIoU): one confusion matrix over the
whole dataset, pixels whose ground truth is void (255) left out; for class c,
IoU_c = TP_c / (TP_c + FP_c + FN_c); mIoU = the mean of IoU_c over the classes. Averaging
per-image IoUs, or per-batch ones, gives a different (wrong) number.

Which classes the mean runs over matters only when a class occurs neither in the ground
truth nor in the predictions of the evaluated images (its IoU is then 0/0):

- ``mIoU`` (the main metric) averages over the classes with TP + FP + FN > 0, i.e. present
  in the ground truth or predicted somewhere. This is mmsegmentation's nanmean and
  torchmetrics ``MulticlassJaccardIndex(average="macro")``. A class never seen and never
  predicted is left out instead of counting as 0 or making the mean undefined.
- ``mIoU_all_classes`` divides the same IoU sum by all ``num_classes``, i.e. an absent class
  counts as IoU 0. The VOC devkit averages over all 21 classes; on the full VOC 2012 val set
  every class is present, so there ``mIoU == mIoU_all_classes`` and both equal the standard
  figure the paper reports. They differ only on subsets; ``classes_present`` tells which case
  you are in.

Also reported: pixel accuracy (TP summed over classes / valid pixels), mean class accuracy
(mean over classes present in the ground truth of TP_c / (TP_c + FN_c)), and IoU per class.
With a ``paper`` accumulator (``SegEvalConfig.paper_protocol``) the figures of a driving
paper's own protocol come beside them, under keys prefixed with its name
(tasks/segmentation/paper_metrics.py defines them); they never replace the standard ones.

The accumulator is a hand-written ``torch.bincount`` of ``gt * C + pred`` on the predictions'
device, chosen over torchmetrics' ``MulticlassJaccardIndex`` (used as the test oracle): that
metric keeps the same dataset-level confusion matrix, but it validates every update with host
synchronisations, falls back to a (pixels × C²) one-hot count under deterministic algorithms,
and synchronises through its own ``compute`` rather than the ``Evaluator.sync`` contract the
trainer calls. Evaluation runs at the original image size: ground truth comes from
``meta["orig_masks"]``; without it the input-size mask is mapped back (inference.py).

A predicted label outside 0..C-1 is a pixel without a finite prediction (inference.NO_CLASS):
it is a miss of its ground-truth class (a false negative, no false positive anywhere), counted
and reported; when every predicted pixel is one, ``compute`` raises ``NonFiniteError`` rather
than return an mIoU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from ...errors import NonFiniteError
from ..base import Evaluator
from .inference import mask_to_original
from .palette import save_confusion_matrix_image, save_palette_png
from .paper_metrics import PaperSegMetrics


class SegmentationEvaluator(Evaluator):
    main_metric = "mIoU"

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int = 255,
        output_dir: str | Path | None = None,
        palette: np.ndarray | None = None,
        annotation: str = "seg",
        paper: PaperSegMetrics | None = None,
    ):
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        if output_dir is not None and num_classes > 256:
            raise ValueError(f"palette PNGs hold at most 256 classes; this task has {num_classes}")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
        self.ignore_index = ignore_index
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.palette = palette
        #: the batch key / ``meta["orig_masks"]`` entry holding this task's ground truth
        self.annotation = annotation
        #: a driving paper's protocol, reported beside the standard figures (paper_metrics.py)
        self.paper = paper
        self.reset()

    def reset(self) -> None:
        self._local: torch.Tensor | None = None  # this process's (C, C) counts, rows = ground truth
        self._synced: torch.Tensor | None = None  # the sum over processes, after sync()
        # per ground-truth class: pixels without a finite prediction; then (such pixels, all pixels)
        # predicted, void ones included. Local and summed over processes, as the matrix.
        self._missed_local: torch.Tensor | None = None
        self._counts_local: torch.Tensor | None = None
        self._missed_synced: torch.Tensor | None = None
        self._counts_synced: torch.Tensor | None = None
        self._last: dict[str, float] | None = None
        self._seen = 0  # images passed to update(), names PNGs of samples without a file name
        if self.paper is not None:
            self.paper.reset()

    # ------------------------------------------------------------------ accumulation
    def accumulate(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """Add one image (or a stack of images of one size): class indices, same shape."""
        self.accumulate_many([pred], [gt])

    def accumulate_many(self, preds: Sequence[torch.Tensor], gts: Sequence[torch.Tensor]) -> None:
        if not preds:
            return
        c = self.num_classes
        device = preds[0].device
        codes, missed, nonfinite = [], [], []
        total = 0
        for pred, gt in zip(preds, gts):
            if pred.shape != gt.shape:
                raise ValueError(f"prediction of shape {tuple(pred.shape)} scored against ground truth {tuple(gt.shape)}")
            gt = gt.to(device=device, dtype=torch.long, non_blocking=True).reshape(-1)
            pred = pred.to(torch.long).reshape(-1)
            no_class = (pred < 0) | (pred >= c)  # no finite prediction (inference.NO_CLASS)
            nonfinite.append(no_class.sum())  # stays on the device: no host sync per image
            total += pred.numel()
            # Void pixels are left out; so is any other label outside 0..C-1 (the dataset
            # adapters reject those when they read the masks).
            valid = (gt != self.ignore_index) & (gt >= 0) & (gt < c)
            codes.append(gt[valid & ~no_class] * c + pred[valid & ~no_class])
            missed.append(gt[valid & no_class])
        counts = torch.bincount(torch.cat(codes), minlength=c * c).reshape(c, c)
        self._local = counts if self._local is None else self._local + counts.to(self._local.device)
        missed_counts = torch.bincount(torch.cat(missed), minlength=c)
        pixel_counts = torch.stack([torch.stack(nonfinite).sum(), torch.tensor(total, device=device)])
        first = self._missed_local is None
        self._missed_local = missed_counts if first else self._missed_local + missed_counts.to(self._missed_local.device)
        self._counts_local = pixel_counts if first else self._counts_local + pixel_counts.to(self._counts_local.device)
        self._synced = self._missed_synced = self._counts_synced = None

    def update(self, predictions: list[torch.Tensor], batch: dict[str, Any]) -> None:
        """``predictions``: per image (H0, W0) class indices at the original size (postprocess)."""
        n = len(predictions)
        metas = batch.get("meta") or [None] * n
        masks = batch.get(self.annotation) or [None] * n
        preds, gts = [], []
        for pred, meta, mask in zip(predictions, metas, masks):
            self._seen += 1
            if self.output_dir is not None:
                save_palette_png(pred, self.output_dir / f"{self._stem(meta, self._seen)}.png", self.palette)
            gt = (meta.get("orig_masks") or {}).get(self.annotation) if meta else None
            if gt is None and mask is not None:
                gt = mask_to_original(mask, meta)
            if gt is None:
                continue  # the sample has no segmentation annotation
            if tuple(gt.shape) != tuple(pred.shape):
                name = meta.get("file_name", "?") if meta else "?"
                raise ValueError(
                    f"prediction for {name} is {tuple(pred.shape)} but its mask is {tuple(gt.shape)}; "
                    "predictions must be at the original image size (SegmentationTask.postprocess)"
                )
            preds.append(pred)
            gts.append(gt)
        self.accumulate_many(preds, gts)
        if self.paper is not None:
            self.paper.update(preds, gts)

    @staticmethod
    def _stem(meta: dict[str, Any] | None, index: int) -> str:
        if meta and meta.get("file_name"):
            return Path(str(meta["file_name"])).stem
        if meta and meta.get("image_id") is not None:
            return str(meta["image_id"])
        return f"image_{index:06d}"

    def sync(self) -> None:
        """Sum the confusion matrices of all processes (idempotent; a no-op when not distributed)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        if self.paper is not None:
            self.paper.sync()
        local = self._local if self._local is not None else torch.zeros(
            self.num_classes, self.num_classes, dtype=torch.long
        )
        c = self.num_classes
        # one collective: the matrix, the missed pixels per class and the two pixel counts
        missed, counts = self._local_extras()
        total = torch.cat([local.cpu().reshape(-1), missed, counts])
        if dist.get_backend() == "nccl":
            total = total.cuda()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        total = total.cpu()
        self._synced = total[: c * c].reshape(c, c).to(local.device)
        self._missed_synced, self._counts_synced = total[c * c : c * c + c], total[c * c + c :]

    # ------------------------------------------------------------------ results
    @property
    def confusion_matrix(self) -> torch.Tensor:
        """(C, C) int64 pixel counts on the CPU, rows = ground truth, columns = prediction."""
        cm = self._synced if self._synced is not None else self._local
        if cm is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        return cm.cpu()

    def _local_extras(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._missed_local is None:
            return torch.zeros(self.num_classes, dtype=torch.long), torch.zeros(2, dtype=torch.long)
        return self._missed_local.cpu(), self._counts_local.cpu()

    @property
    def missed_pixels(self) -> torch.Tensor:
        """(C,) pixels of each ground-truth class that had no finite prediction (CPU)."""
        return self._missed_synced if self._missed_synced is not None else self._local_extras()[0]

    @property
    def nonfinite_pixels(self) -> tuple[int, int]:
        """(pixels without a finite prediction, pixels predicted), void pixels included."""
        counts = self._counts_synced if self._counts_synced is not None else self._local_extras()[1]
        return int(counts[0]), int(counts[1])

    def per_class(self) -> dict[str, np.ndarray]:
        """IoU, accuracy (recall), and the presence masks per class, from the confusion matrix."""
        cm = self.confusion_matrix.double().numpy()
        missed = self.missed_pixels.double().numpy()
        tp = np.diag(cm)
        gt = cm.sum(1) + missed
        union = gt + cm.sum(0) - tp
        present = union > 0
        in_gt = gt > 0
        iou = np.divide(tp, union, out=np.full_like(tp, np.nan), where=present)
        acc = np.divide(tp, gt, out=np.full_like(tp, np.nan), where=in_gt)
        return {"iou": iou, "acc": acc, "present": present, "in_gt": in_gt, "tp": tp, "pixels": cm.sum() + missed.sum()}

    def compute(self) -> dict[str, float]:
        nonfinite, total = self.nonfinite_pixels
        if total and nonfinite == total:
            raise NonFiniteError(
                f"segmentation outputs were all non-finite (NaN/inf): none of the {total} pixels predicted has a "
                "class, so no mIoU is reported; the network overflowed, or its weights or inputs hold NaN/inf (a "
                "diverged training?)"
            )
        s = self.per_class()
        iou, present = s["iou"], s["present"]
        metrics = {
            "mIoU": float(iou[present].mean()) if present.any() else 0.0,
            "mIoU_all_classes": float(iou[present].sum() / self.num_classes),
            "pixel_acc": float(s["tp"].sum() / s["pixels"]) if s["pixels"] > 0 else 0.0,
            "mean_class_acc": float(s["acc"][s["in_gt"]].mean()) if s["in_gt"].any() else 0.0,
            "classes_present": float(present.sum()),
        }
        for name, value, ok in zip(self.class_names, iou, present):
            if ok:
                metrics[f"IoU/{name}"] = float(value)
        if self.paper is not None:
            metrics.update(self.paper.compute())
        self._last = metrics
        return metrics

    def report(self) -> str:
        metrics = self._last if self._last is not None else self.compute()
        s = self.per_class()
        width = max(12, *(len(n) for n in self.class_names))

        def fmt(v: float) -> str:
            return f"{'-':>7}" if np.isnan(v) else f"{100 * v:7.2f}"

        lines = [f"{'class':<{width}}  {'IoU %':>7}  {'acc %':>7}", "-" * (width + 18)]
        for name, iou, acc in zip(self.class_names, s["iou"], s["acc"]):
            lines.append(f"{name:<{width}}  {fmt(iou)}  {fmt(acc)}")
        lines.append("-" * (width + 18))
        nonfinite, total = self.nonfinite_pixels
        if nonfinite:
            lines.append(f"{nonfinite} of {total} pixels had non-finite scores: no class, counted as misses")
        lines.append(
            f"mIoU {100 * metrics['mIoU']:.2f} over {int(metrics['classes_present'])}/{self.num_classes} classes "
            f"present (all classes: {100 * metrics['mIoU_all_classes']:.2f}); "
            f"pixel acc {100 * metrics['pixel_acc']:.2f}; mean class acc {100 * metrics['mean_class_acc']:.2f}"
        )
        if self.paper is not None:
            lines.append(self.paper.report(self.paper.compute()))
        return "\n".join(lines)

    def save_confusion_matrix(self, path: str | Path) -> Path:
        """PNG of the row-normalised confusion matrix (for ``mtedet eval``)."""
        return save_confusion_matrix_image(self.confusion_matrix, self.class_names, path)
