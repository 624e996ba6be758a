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


class _PixelClassifierHead(nn.Module):
    """What the segmentation heads share: the levels they read, channel dropout, the 1×1
    classifier and bilinear upsampling of its logits from ``level`` to the input size."""

    def __init__(self, num_classes: int, level: int, merge_levels: Sequence[int]):
        super().__init__()
        self.levels = (level, *merge_levels)
        self.num_classes = num_classes
        self.scale = float(2**level)

    def _add_classifier(self, width: int, dropout: float) -> None:
        """Call after the head's own convs: the classifier comes last, and every conv gets the
        heads' fan-in initialisation in module order."""
        #: channel dropout on the classifier's input while training (``dropout`` > 0)
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.classifier = nn.Conv2d(width, self.num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_conv_tf(m, "fan_in")

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.dropout(x))
        return F.interpolate(logits, scale_factor=self.scale, mode="bilinear", align_corners=False)


class SegmentationHead(_PixelClassifierHead):
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
        super().__init__(num_classes, level, merge_levels)
        channels = channels or in_channels
        #: upsampling factor of each merged level to ``level`` (exact: the model's input is a
        #: multiple of 2**max_level, models/model.py ``check_input_size``)
        self.merge_scales = tuple(float(2 ** (lv - level)) for lv in merge_levels)
        widths = [in_channels] + [channels] * repeats
        self.convs = nn.Sequential(
            *(SeparableConv2d(a, b, 3, padding=padding, norm=True, act=True) for a, b in zip(widths, widths[1:]))
        )
        self._add_classifier(widths[-1], dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[0]
        for f, scale in zip(feats[1:], self.merge_scales):
            x = x + F.interpolate(f, scale_factor=scale, mode="bilinear", align_corners=False)
        return self._classify(self.convs(x))


class SemanticFPNHead(_PixelClassifierHead):
    """Panoptic FPN's semantic branch (Kirillov et al., CVPR 2019, §3.2 and Fig. 3) on BiFPN outputs.

    Every level ``k`` of ``(level, *merge_levels)`` goes through its own stack of
    ``max(1, k - level)`` blocks (3×3 conv → GroupNorm → ReLU, then ×2 bilinear upsampling
    while coarser than ``level``); the stacks' outputs are summed at ``level``, then channel
    dropout, a 1×1 classifier and bilinear upsampling to the input. The coarse levels thus
    get several convs of their own on the way up, where ``SegmentationHead`` adds them raw.

    GroupNorm rather than BN: per-image statistics, the same in training and at test time. On
    a short fine-tune from a pretrained backbone this head generalises where the §5.2 head
    memorises its few training images (benchmarks/RESULTS.md, "Pretrained vs scratch"; there
    the choice of norm and the per-level stacks each mattered, the activation did not). The
    norm has ``gcd(32, channels)`` groups (32, the paper's, whenever ``channels`` allows).
    A 3×3 conv at stride 1 pads one pixel per side in PyTorch and TF ("SAME") alike, so
    ``padding`` needs no special case here.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 21,
        channels: int | None = None,
        level: int = 2,
        merge_levels: Sequence[int] = (3, 4, 5),
        dropout: float = 0.0,
    ):
        super().__init__(num_classes, level, merge_levels)
        channels = channels or in_channels
        groups = math.gcd(32, channels)

        def block(a: int, upsample: bool) -> nn.Sequential:
            layers = [nn.Conv2d(a, channels, 3, padding=1, bias=False), nn.GroupNorm(groups, channels), nn.ReLU(inplace=True)]
            if upsample:
                layers.append(nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False))
            return nn.Sequential(*layers)

        self.stacks = nn.ModuleList(
            nn.Sequential(*(block(in_channels if i == 0 else channels, lv > level) for i in range(max(1, lv - level))))
            for lv in self.levels
        )
        self._add_classifier(channels, dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.stacks[0](feats[0])
        for stack, f in zip(self.stacks[1:], feats[1:]):
            x = x + stack(f)
        return self._classify(x)
