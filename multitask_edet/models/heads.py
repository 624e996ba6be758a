"""Heads that read pyramid levels: detection (paper §3.3, Fig. 3), segmentation (§5.2).

A head is an ``nn.Module`` with a ``levels`` tuple (the pyramid levels it reads) whose
``forward`` takes the list of those levels' feature maps, in order, and returns whatever
its task's loss and post-processing expect. Tasks build their heads (``Task.build_head``,
tasks/base.py); a user's task builds its own the same way.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .layers import SeparableConv2d, SiLU, batch_norm, init_conv_tf


class HeadNet(nn.Module):
    """Separable convs shared by all levels, one BN per level and repeat, then a prediction conv.

    BNs are stored level first (``bns[level][repeat]``) so the loop over levels is plain
    iteration (torch.compile / TorchScript friendly).
    """

    def __init__(self, channels: int, out_channels: int, repeats: int, num_levels: int, padding: str):
        super().__init__()
        self.convs = nn.ModuleList(
            SeparableConv2d(channels, channels, 3, padding=padding, norm=False) for _ in range(repeats)
        )
        self.bns = nn.ModuleList(
            nn.ModuleList(batch_norm(channels) for _ in range(repeats)) for _ in range(num_levels)
        )
        self.act = SiLU()
        self.predict = SeparableConv2d(channels, out_channels, 3, padding=padding, bias=True, norm=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_conv_tf(m, "fan_in")

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for x, bns in zip(feats, self.bns):
            for conv, bn in zip(self.convs, bns):
                x = self.act(bn(conv(x)))
            outs.append(self.predict(x))
        return outs


class DetectionHead(nn.Module):
    """EfficientDet class and box nets → ``{"cls": [(B, A·C, h, w)], "box": [(B, A·4, h, w)]}``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 90,
        num_anchors: int = 9,
        repeats: int = 3,
        levels: Sequence[int] = (3, 4, 5, 6, 7),
        padding: str = "pytorch",
        prior_prob: float = 0.01,
    ):
        super().__init__()
        self.levels = tuple(levels)
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        n = len(self.levels)
        self.cls_net = HeadNet(in_channels, num_anchors * num_classes, repeats, n, padding)
        self.box_net = HeadNet(in_channels, num_anchors * 4, repeats, n, padding)
        # Focal-loss prior (RetinaNet §4.1): every anchor starts at p = prior_prob foreground.
        nn.init.constant_(self.cls_net.predict.conv_pw.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        return {"cls": self.cls_net(feats), "box": self.box_net(feats)}


class SegmentationHead(nn.Module):
    """Per-pixel classifier on one level (P2), logits upsampled bilinearly to the input size.

    ``repeats`` × (separable 3×3 conv → BN → SiLU) at ``channels``, then a 1×1 classifier.
    The first conv's pointwise part changes the width when ``channels`` differs from the
    BiFPN's (cheaper than a separate projection: 19 GMACs at 640² for the §5.2 model, in
    line with the paper's 18B).

    ``merge_levels`` (coarser levels, e.g. ``(3, 4, 5)``): those BiFPN outputs are upsampled
    bilinearly to ``level`` and added to it before the convs (the sum over levels of Panoptic
    FPN's semantic branch, without its per-level convs), so the classifier also sees the coarse
    levels' own outputs, not only what the BiFPN's top-down path passed down to P2; ``levels``
    is then ``(level, *merge_levels)`` and ``forward`` takes their maps in that order. Without
    it (the default, §5.2) the head reads ``level`` alone.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 21,
        channels: int | None = None,
        repeats: int = 3,
        level: int = 2,
        padding: str = "pytorch",
        merge_levels: Sequence[int] = (),
        dropout: float = 0.0,
    ):
        super().__init__()
        channels = channels or in_channels
        self.levels = (level, *merge_levels)
        self.num_classes = num_classes
        self.scale = float(2**level)
        #: upsampling factor of each merged level to ``level`` (exact: the model's input is a
        #: multiple of 2**max_level, models/model.py ``check_input_size``)
        self.merge_scales = tuple(float(2 ** (lv - level)) for lv in merge_levels)
        widths = [in_channels] + [channels] * repeats
        self.convs = nn.Sequential(
            *(SeparableConv2d(a, b, 3, padding=padding, norm=True, act=True) for a, b in zip(widths, widths[1:]))
        )
        #: channel dropout on the classifier's input while training (``dropout`` > 0)
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.classifier = nn.Conv2d(widths[-1], num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_conv_tf(m, "fan_in")

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[0]
        for f, scale in zip(feats[1:], self.merge_scales):
            x = x + F.interpolate(f, scale_factor=scale, mode="bilinear", align_corners=False)
        logits = self.classifier(self.dropout(self.convs(x)))
        return F.interpolate(logits, scale_factor=self.scale, mode="bilinear", align_corners=False)
