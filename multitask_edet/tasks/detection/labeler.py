"""Training targets for a batch: match anchors to boxes, then code classes and boxes (§5.1).

The per-sample box lists of a batch are padded to the largest count with a validity mask,
and matching, class gathering and box coding run once for the whole batch on the model's
device — no per-image or per-anchor Python loops in the training path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ...errors import DatasetError
from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .matcher import IGNORED, NEGATIVE, ArgMaxMatcher


@dataclass
class PaddedBoxes:
    """Per-sample box lists padded to (B, M)."""

    boxes: torch.Tensor  # (B, M, 4) xyxy float32
    labels: torch.Tensor  # (B, M) int64
    valid: torch.Tensor  # (B, M) bool: a real, non-degenerate box
    ignore: torch.Tensor  # (B, M) bool: crowd / difficult
    has_det: torch.Tensor  # (B,) bool: the sample carries detection annotations at all

    def to(self, device) -> "PaddedBoxes":
        return PaddedBoxes(*(t.to(device, non_blocking=True) for t in
                             (self.boxes, self.labels, self.valid, self.ignore, self.has_det)))


@dataclass
class DetTargets:
    """Targets of every anchor, flattened over levels in the anchor order."""

    cls: torch.Tensor  # (B, N) int64: class ≥ 0 positive, -1 (NEGATIVE) background, -2 (IGNORED)
    box: torch.Tensor  # (B, N, 4) (ty, tx, th, tw); zero where not positive
    num_positives: torch.Tensor  # (B,) float32
    matches: torch.Tensor  # (B, N) int64: index into gt_boxes, or a matcher sentinel
    gt_boxes: torch.Tensor  # (B, M, 4) the padded ground truth (xyxy input pixels)


def pad_boxes(
    boxes: Sequence[torch.Tensor | None],
    labels: Sequence[torch.Tensor | None],
    ignore: Sequence[torch.Tensor | None] | None = None,
    num_classes: int | None = None,
) -> PaddedBoxes:
    """Pad per-sample (N_i, 4) boxes / (N_i,) labels; ``None`` = sample without detection."""
    B = len(boxes)
    counts = [0 if b is None else int(b.shape[0]) for b in boxes]
    M = max(counts, default=0)
    out_boxes = torch.zeros(B, M, 4, dtype=torch.float32)
    out_labels = torch.zeros(B, M, dtype=torch.long)
    out_ignore = torch.zeros(B, M, dtype=torch.bool)
    present = torch.zeros(B, M, dtype=torch.bool)
    has_det = torch.tensor([b is not None for b in boxes], dtype=torch.bool)
    for i, n in enumerate(counts):
        if n == 0:
            continue
        out_boxes[i, :n] = torch.as_tensor(boxes[i], dtype=torch.float32).reshape(n, 4).cpu()
        out_labels[i, :n] = torch.as_tensor(labels[i]).reshape(n).cpu().long()
        if ignore is not None and ignore[i] is not None:
            out_ignore[i, :n] = torch.as_tensor(ignore[i]).reshape(n).cpu().bool()
        present[i, :n] = True
    # a zero-area box matches nothing by IoU; dropping it beats force-matching it to anchor 0
    w = out_boxes[..., 2] - out_boxes[..., 0]
    h = out_boxes[..., 3] - out_boxes[..., 1]
    valid = present & (w > 0) & (h > 0)
    if num_classes is not None:
        bad = valid & ~out_ignore & ((out_labels < 0) | (out_labels >= num_classes))
        if bool(bad.any()):
            i = int(bad.any(1).nonzero()[0])
            raise DatasetError(
                f"detection label(s) {out_labels[i][bad[i]].tolist()} of batch sample {i} are outside "
                f"0..{num_classes - 1}; set the detection head's num_classes to the dataset's class count"
            )
    return PaddedBoxes(out_boxes, out_labels, valid, out_ignore, has_det)


class AnchorLabeler:
    def __init__(self, anchors: AnchorGenerator, matcher: ArgMaxMatcher | None = None,
                 box_coder: BoxCoder | None = None):
        self.anchors = anchors
        self.matcher = matcher or ArgMaxMatcher(0.5, 0.5, force_match=True)
        self.box_coder = box_coder or BoxCoder()

    def label(self, gt: PaddedBoxes, image_size: tuple[int, int], device) -> DetTargets:
        anchors = self.anchors(image_size, device)
        gt = gt.to(anchors.device)
        matches = self.matcher(gt.boxes, gt.valid, gt.ignore, anchors)
        # samples without detection annotations are ignored at every anchor: no loss at all
        matches = torch.where(gt.has_det.unsqueeze(1), matches, IGNORED)
        positive = matches >= 0
        idx = matches.clamp(min=0)
        if gt.boxes.shape[1] == 0:
            cls = matches.clone()
            box = torch.zeros(*matches.shape, 4, device=anchors.device)
        else:
            cls = torch.where(positive, torch.gather(gt.labels, 1, idx), matches)
            matched = torch.gather(gt.boxes, 1, idx.unsqueeze(-1).expand(-1, -1, 4))
            box = self.box_coder.encode(matched, anchors)
            box = torch.where(positive.unsqueeze(-1), box, torch.zeros_like(box))
        return DetTargets(cls, box, positive.sum(1).float(), matches, gt.boxes)

    def __call__(self, boxes, labels, ignore, image_size, device, num_classes=None) -> DetTargets:
        return self.label(pad_boxes(boxes, labels, ignore, num_classes), image_size, device)


__all__ = ["AnchorLabeler", "DetTargets", "PaddedBoxes", "pad_boxes", "NEGATIVE", "IGNORED"]
