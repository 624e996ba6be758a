"""Detection loss (paper §5.1): focal loss on classes + Huber loss on box codes.

    det_cls = Σ focal(α=0.25, γ=1.5) over non-ignored anchors and classes / (P + 1)
    det_box = box_loss_weight · Σ huber(δ=0.1) over positive anchors' 4 codes / (4 (P + 1))

P is the number of positive anchors in the batch; the +1 keeps images without objects
finite, as the reference does. det_box already carries the box weight (50), so the sum of
the returned losses is the reference's total loss. Optional: label smoothing of the focal
BCE targets, and a GIoU loss ("det_giou") on the decoded boxes of positive anchors.

Computed level by level in float32. The class term is the biggest computation of the
loss ((B, anchors, classes) per level), so it runs as one autograd Function
(``focal_loss_sum``) that needs no one-hot targets, keeps no intermediates for backward
and makes ~16 passes over the logits instead of ~45; ``focal_loss`` is the plain
element-wise definition it is tested against.
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


def _neg_focal(x: torch.Tensor, gamma: float, t: float) -> torch.Tensor:
    """``σ(x)^γ · BCE(x, t)``: the focal loss of a logit whose class is absent (target t≈0)."""
    ls = F.logsigmoid(x)
    ce = x - ls  # softplus(x) = BCE(x, 0), stable for any x
    if t:
        ce.sub_(x, alpha=t)
    return ls.mul_(gamma).exp_().mul_(ce)


def _neg_focal_grad(x: torch.Tensor, gamma: float, t: float) -> torch.Tensor:
    """d/dx of ``_neg_focal``: ``σ^γ · (γ(1-σ)·BCE(x, t) + σ - t)``."""
    ls = F.logsigmoid(x)
    g = x - ls
    if t:
        g.sub_(x, alpha=t)
    p = torch.sigmoid(x)
    g.mul_(gamma).addcmul_(g, p, value=-1.0).add_(p)  # γ·ce·(1-p) + p
    if t:
        g.sub_(t)
    return g.mul_(ls.mul_(gamma).exp_())


class _FocalLossSum(torch.autograd.Function):
    """Σ focal loss over the non-ignored anchors of (B, N, C) logits, given class targets.

    Every logit is first treated as a negative (``_neg_focal``); the one logit of each positive
    anchor is then corrected by gathering it — a positive's loss is the negative form at -x
    (σ(-x) = 1 - σ(x)), with α instead of 1-α. Backward recomputes from the logits.
    """

    @staticmethod
    def forward(ctx, logits, cls_targets, alpha: float, gamma: float, smoothing: float):
        t = 0.5 * smoothing  # smoothed BCE target of a negative; a positive's is 1 - t
        valid = (cls_targets != IGNORED).to(logits.dtype)
        total = (1.0 - alpha) * (_neg_focal(logits, gamma, t).sum(-1) * valid).sum()
        positive = cls_targets >= 0
        xt = logits.gather(-1, cls_targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        fix = alpha * _neg_focal(-xt, gamma, t) - (1.0 - alpha) * _neg_focal(xt, gamma, t)
        ctx.save_for_backward(logits, cls_targets)
        ctx.params = (alpha, gamma, t)
        return total + torch.where(positive, fix, 0.0).sum()

    @staticmethod
    def backward(ctx, grad_out):
        logits, cls_targets = ctx.saved_tensors
        alpha, gamma, t = ctx.params
        scale = ((cls_targets != IGNORED).to(logits.dtype) * ((1.0 - alpha) * grad_out)).unsqueeze(-1)
        grad = _neg_focal_grad(logits, gamma, t).mul_(scale)
        idx = cls_targets.clamp(min=0).unsqueeze(-1)
        xt = logits.gather(-1, idx).squeeze(-1)
        fix = -alpha * _neg_focal_grad(-xt, gamma, t) - (1.0 - alpha) * _neg_focal_grad(xt, gamma, t)
        fix = torch.where(cls_targets >= 0, fix * grad_out, 0.0)
        return grad.scatter_add_(-1, idx, fix.unsqueeze(-1)), None, None, None, None


def focal_loss_sum(
    logits: torch.Tensor, cls_targets: torch.Tensor, alpha: float, gamma: float, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Σ of ``focal_loss`` over anchors whose target is not IGNORED, from (B, N, C) logits and
    (B, N) class targets (class ≥ 0, NEGATIVE or IGNORED), without one-hot targets."""
    return _FocalLossSum.apply(logits, cls_targets, float(alpha), float(gamma), float(label_smoothing))


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
        cls_sum = cls_sum + focal_loss_sum(logits, ct, cfg.alpha, cfg.gamma, cfg.label_smoothing)
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
