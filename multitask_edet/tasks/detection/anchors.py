"""Multi-level anchor boxes (paper §3.3 and §5.1; the RetinaNet anchor scheme).

Per pyramid level l, every feature-map cell holds ``num_scales × len(aspect_ratios)``
anchors of base size ``anchor_scale · stride_l · 2^(i/num_scales)``, stretched by each
aspect ratio (a (x, y) pair). Order: level, then row, then column, then octave scale,
then aspect ratio — the order in which the class/box heads' outputs are flattened
(``(B, A·C, h, w) → (B, h·w·A, C)``), so anchor i pairs with flattened prediction i.

Boxes are xyxy in input pixels. Inputs need not be square; feature sizes follow
``ceil(size / 2)`` per level, as a stride-2 SAME convolution gives.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch


def feature_sizes(image_size: tuple[int, int], max_level: int) -> list[tuple[int, int]]:
    """(h, w) of every level 0..max_level for an input (H, W)."""
    h, w = int(image_size[0]), int(image_size[1])
    sizes = [(h, w)]
    for _ in range(max_level):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        sizes.append((h, w))
    return sizes


def flatten_level(x: torch.Tensor, width: int) -> torch.Tensor:
    """(B, A·width, h, w) head output → (B, h·w·A, width): the anchor order of one level."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, width)


class AnchorGenerator:
    """Anchors for any input size, computed once per (size, device) and cached."""

    def __init__(
        self,
        levels: Sequence[int] = (3, 4, 5, 6, 7),
        num_scales: int = 3,
        aspect_ratios: Sequence[tuple[float, float] | float] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4)),
        anchor_scale: float = 4.0,
    ):
        self.levels = tuple(int(l) for l in levels)
        if list(self.levels) != list(range(self.levels[0], self.levels[-1] + 1)):
            raise ValueError(f"anchor levels must be consecutive and increasing, got {self.levels}")
        self.num_scales = int(num_scales)
        self.aspect_ratios = tuple(aspect_ratios)
        self.anchor_scale = float(anchor_scale)
        self._cache: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_head_config(cls, cfg) -> "AnchorGenerator":
        return cls(cfg.levels, cfg.num_scales, cfg.aspect_ratios, cfg.anchor_scale)

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map cell."""
        return self.num_scales * len(self.aspect_ratios)

    def level_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        sizes = feature_sizes(image_size, self.levels[-1])
        return [sizes[l] for l in self.levels]

    def num_anchors_per_level(self, image_size: tuple[int, int]) -> list[int]:
        return [h * w * self.num_anchors for h, w in self.level_sizes(image_size)]

    def _half_sizes(self, stride_y: float, stride_x: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Half widths/heights of the anchors of one cell (octave outer, aspect inner)."""
        half_w, half_h = [], []
        for octave in range(self.num_scales):
            mult = 2 ** (octave / float(self.num_scales))
            for aspect in self.aspect_ratios:
                if isinstance(aspect, (tuple, list)):
                    ax, ay = float(aspect[0]), float(aspect[1])
                else:  # a single ratio w/h
                    ax = math.sqrt(float(aspect))
                    ay = 1.0 / ax
                half_w.append(self.anchor_scale * stride_x * mult * ax / 2.0)
                half_h.append(self.anchor_scale * stride_y * mult * ay / 2.0)
        return torch.tensor(half_w, dtype=torch.float64), torch.tensor(half_h, dtype=torch.float64)

    def _level(self, fh: Any, fw: Any, stride_y: float, stride_x: float) -> torch.Tensor:
        """(fh·fw·A, 4) anchors of one level. ``fh``/``fw`` may be 0-dim tensors (a graph traced
        with a dynamic input size); the arithmetic is float64 either way, then float32."""
        half_w, half_h = self._half_sizes(stride_y, stride_x)
        cy = stride_y / 2 + torch.arange(fh, dtype=torch.float64) * stride_y
        cx = stride_x / 2 + torch.arange(fw, dtype=torch.float64) * stride_x
        cy, cx, half_w, half_h = torch.broadcast_tensors(cy.view(-1, 1, 1), cx.view(1, -1, 1), half_w, half_h)
        return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1).reshape(-1, 4).float()

    def _generate(self, image_size: tuple[int, int]) -> torch.Tensor:
        H, W = int(image_size[0]), int(image_size[1])
        # float64 on the host, then float32: the reference computes anchors in numpy float64,
        # and bit-equal anchors keep IoU-threshold decisions identical to it.
        return torch.cat([self._level(fh, fw, H / fh, W / fw) for fh, fw in self.level_sizes((H, W))])

    def for_feature_sizes(self, sizes: Sequence[tuple[Any, Any]], device: torch.device | str = "cpu") -> torch.Tensor:
        """Anchors from the (h, w) of every level's feature map, for an input divisible by
        2**max_level (each level's stride is then exactly 2**level): what an exported graph
        with a dynamic input size computes, equal to ``self(image_size)``."""
        out = [self._level(fh, fw, float(2**lv), float(2**lv)) for lv, (fh, fw) in zip(self.levels, sizes)]
        return torch.cat(out).to(device)

    def __call__(self, image_size: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
        """(N, 4) xyxy float32 anchors for an input of ``image_size`` (H, W) on ``device``."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            # "cuda" and "cuda:0" name one cache entry: a miss would copy host → device (a sync) again
            device = torch.device("cuda", torch.cuda.current_device())
        key = (int(image_size[0]), int(image_size[1]), str(device))
        anchors = self._cache.get(key)
        if anchors is None:
            anchors = self._generate(image_size).to(device)
            self._cache[key] = anchors
        return anchors
