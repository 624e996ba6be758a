"""Per-pixel losses of the segmentation task (paper §5.2: a pixel classifier on BiFPN P2).

Cross-entropy with the void label ignored is the default; Dice, Lovász-softmax, focal and
Tversky terms come from ``segmentation_models_pytorch.losses`` and are combined by weight.

Targets are the batch's ``mask`` list (int64 (H, W) at the input size, ``None`` for a sample
without a segmentation annotation). Such samples become all-void, so they add nothing; when
no sample of the batch has a mask every term is an exact zero still connected to the logits
(the head then gets zero gradients, and DDP still sees its parameters used).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss, FocalLoss, LovaszLoss, TverskyLoss
from torch import nn

from .config import SegLossConfig


def stack_targets(
    masks: Sequence[torch.Tensor | None] | None,
    batch_size: int,
    size: tuple[int, int],
    device: torch.device,
    ignore_index: int = 255,
) -> torch.Tensor | None:
    """(B, H, W) int64 targets; samples without a mask are all ``ignore_index``.

    Returns None when no sample carries a mask.
    """
    if masks is None or all(m is None for m in masks):
        return None
    target = torch.full((batch_size, *size), ignore_index, dtype=torch.long, device=device)
    for i, m in enumerate(masks):
        if m is None:
            continue
        if tuple(m.shape[-2:]) != tuple(size):
            raise ValueError(
                f"mask {i} of the batch has size {tuple(m.shape[-2:])} but the images are {tuple(size)}; "
                "the transforms must resize masks with their images"
            )
        target[i] = m.to(device=device, dtype=torch.long, non_blocking=True)
    return target


class SegmentationLoss(nn.Module):
    """Weighted sum of per-pixel losses, returned as named terms ``seg_<name>``."""

    def __init__(self, cfg: SegLossConfig | None = None, ignore_index: int = 255, prefix: str = "seg"):
        super().__init__()
        self.cfg = cfg or SegLossConfig()
        self.ignore_index = ignore_index
        self.prefix = prefix
        self.terms = nn.ModuleDict()
        for name in self.cfg.weights:
            if name == "dice":
                self.terms[name] = DiceLoss("multiclass", ignore_index=ignore_index, smooth=self.cfg.dice_smooth)
            elif name == "lovasz":
                self.terms[name] = LovaszLoss(
                    "multiclass", ignore_index=ignore_index, per_image=self.cfg.lovasz_per_image
                )
            elif name == "focal":
                self.terms[name] = FocalLoss("multiclass", ignore_index=ignore_index, gamma=self.cfg.focal_gamma,
                                             alpha=self.cfg.focal_alpha)
            elif name == "tversky":
                c = self.cfg
                self.terms[name] = TverskyLoss("multiclass", ignore_index=ignore_index, alpha=c.tversky_alpha,
                                               beta=c.tversky_beta, gamma=c.tversky_gamma)

    def forward(
        self, logits: torch.Tensor, masks: Sequence[torch.Tensor | None] | None
    ) -> dict[str, torch.Tensor]:
        """``logits`` (B, C, H, W); ``masks`` per sample (H, W) or None."""
        b, _, h, w = logits.shape
        size = (h, w)
        if masks is not None:
            sized = next((m for m in masks if m is not None), None)
            if sized is not None:
                size = tuple(sized.shape[-2:])
        target = stack_targets(masks, b, size, logits.device, self.ignore_index)
        if target is None:
            zero = logits.sum() * 0.0
            return {f"{self.prefix}_{k}": zero for k in self.cfg.weights}
        if size != (h, w):
            # A head may predict below the input resolution; supervise at the masks' size.
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        logits = logits.float()
        num_valid = (target != self.ignore_index).sum()
        out = {}
        for name, weight in self.cfg.weights.items():
            if name == "ce":
                # Mean over the batch's valid pixels, without the 0/0 of an all-void batch.
                value = F.cross_entropy(
                    logits, target, ignore_index=self.ignore_index, reduction="sum"
                ) / num_valid.clamp(min=1)
            else:
                value = self.terms[name](logits, target)
                # smp returns an empty tensor (Lovász) or NaN (focal) when every pixel is void;
                # `where` keeps the graph and yields zero gradients instead.
                value = value.sum() if value.dim() else value
                value = torch.where(num_valid > 0, value, torch.zeros_like(value))
            out[f"{self.prefix}_{name}"] = value * weight
        return out
