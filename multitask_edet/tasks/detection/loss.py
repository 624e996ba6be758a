"""Detection loss (paper §5.1): focal loss on classes + Huber loss on box codes.

    det_cls = Σ focal(α=0.25, γ=1.5) over non-ignored anchors and classes / (P + 1)
    det_box = box_loss_weight · Σ huber(δ=0.1) over positive anchors' 4 codes / (4 (P + 1))

P is the number of positive anchors in the batch; the +1 keeps images without objects
finite, as the reference does. det_box already carries the box weight (50), so the sum of
the returned losses is the reference's total loss. Optional: label smoothing of the focal
BCE targets, and a GIoU loss ("det_giou") on the decoded boxes of positive anchors.

Computed level by level in float32 (the one-hot targets of all levels at once would be
the biggest tensor of a training step).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from .anchors import flatten_level
from .box_coder import BoxCoder
from .config import DetLossConfig
from .labeler import DetTargets
from .matcher import IGNORED


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Element-wise sigmoid focal loss; ``targets`` are 0/1 floats of the logits' shape.

    Written out rather than torchvision's sigmoid_focal_loss because label smoothing must
    touch only the BCE term, not α or the modulating factor (the reference's definition).
    """
    p = logits.sigmoid()
    p_t = targets * p + (1.0 - targets) * (1.0 - p)
    alpha_t = targets * alpha + (1.0 - targets) * (1.0 - alpha)
    if label_smoothing > 0:
        targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return alpha_t * (1.0 - p_t) ** gamma * ce


def detection_loss(
    cls_outputs: list[torch.Tensor],
    box_outputs: list[torch.Tensor],
    targets: DetTargets,
    num_classes: int,
    cfg: DetLossConfig = DetLossConfig(),
    anchors: torch.Tensor | None = None,
    box_coder: BoxCoder | None = None,
) -> dict[str, torch.Tensor]:
    """Named losses from raw per-level head outputs; ``anchors`` (N, 4) needed for GIoU."""
    normalizer = targets.num_positives.sum() + 1.0
    sizes = [o.shape[1] // num_classes * o.shape[2] * o.shape[3] for o in cls_outputs]
    cls_t = targets.cls.split(sizes, dim=1)
    box_t = targets.box.split(sizes, dim=1)
    cls_sum = box_sum = 0.0
    for cls_out, box_out, ct, bt in zip(cls_outputs, box_outputs, cls_t, box_t):
        logits = flatten_level(cls_out.float(), num_classes)
        positive = ct >= 0
        onehot = torch.zeros_like(logits).scatter_(
            -1, ct.clamp(min=0).unsqueeze(-1), positive.unsqueeze(-1).to(logits.dtype))
        fl = focal_loss(logits, onehot, cfg.alpha, cfg.gamma, cfg.label_smoothing)
        cls_sum = cls_sum + (fl * (ct != IGNORED).unsqueeze(-1)).sum()
        codes = flatten_level(box_out.float(), 4)
        hl = F.huber_loss(codes, bt, reduction="none", delta=cfg.delta)
        box_sum = box_sum + (hl * positive.unsqueeze(-1)).sum()
    losses = {
        "det_cls": cls_sum / normalizer,
        "det_box": cfg.box_loss_weight * box_sum / (4.0 * normalizer),
    }
    if cfg.giou_weight > 0:
        if anchors is None:
            raise ValueError("detection_loss: the GIoU loss needs the anchors")
        losses["det_giou"] = cfg.giou_weight * _giou_loss(box_outputs, targets, anchors, box_coder) / normalizer
    return losses


def _giou_loss(box_outputs, targets: DetTargets, anchors, box_coder: BoxCoder | None) -> torch.Tensor:
    # clamp th/tw before exp(): an untrained head can emit codes whose exp overflows
    coder = box_coder if box_coder is not None and box_coder.max_log_size is not None else BoxCoder(
        max_log_size=8.0)
    codes = torch.cat([flatten_level(b.float(), 4) for b in box_outputs], dim=1)
    positive = targets.matches >= 0
    pred = coder.decode(codes, anchors)
    if targets.gt_boxes.shape[1] == 0:
        return (pred * 0).sum()
    gt = torch.gather(targets.gt_boxes, 1, targets.matches.clamp(min=0).unsqueeze(-1).expand(-1, -1, 4))
    # non-positives get a dummy identical pair (loss 0, finite gradient) and are masked anyway
    pred = torch.where(positive.unsqueeze(-1), pred, anchors.expand_as(pred))
    gt = torch.where(positive.unsqueeze(-1), gt, anchors.expand_as(gt))
    loss = generalized_box_iou_loss(pred, gt, reduction="none")
    return (loss * positive).sum()
