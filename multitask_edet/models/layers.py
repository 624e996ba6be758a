"""Building blocks shared by the backbone's extra levels, the BiFPN and the heads (paper §3.3, §4.1).

The paper's blocks are depthwise-separable 3×3 convolutions followed by batch norm
(eps 1e-3, momentum 0.01 in PyTorch's convention = TF decay 0.99) and swish/SiLU.
Padding comes in two styles: ``"pytorch"`` (symmetric, fast) and ``"same"`` (TensorFlow's
asymmetric SAME, needed to reproduce TF-trained weights bit for bit). timm's
``create_conv2d`` / ``create_pool2d`` implement both, so we use them rather than our own.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F
from timm.layers import create_conv2d, create_pool2d

BN_EPS = 1e-3
BN_MOMENTUM = 0.01

#: our padding style → timm's padding argument
_TIMM_PADDING = {"pytorch": "", "same": "same"}


def timm_padding(padding: str) -> str:
    try:
        return _TIMM_PADDING[padding]
    except KeyError:
        raise ValueError(f"padding must be one of {sorted(_TIMM_PADDING)}, got {padding!r}") from None


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class SiLU(nn.Module):
    """SiLU/swish, in place only when autograd does not record its input.

    Under autograd an in-place SiLU saves no memory: the backward needs the input, so autograd
    clones it first — an extra pass over the tensor. Out of place is as big and faster; in
    inference, in place saves an allocation. ``inplace=False`` for an input that others also
    read (it must never be overwritten).
    """

    def __init__(self, inplace: bool = True):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x, inplace=self.inplace and not x.requires_grad)

    def extra_repr(self) -> str:
        return "inplace=no-grad only" if self.inplace else ""


def use_adaptive_silu(module: nn.Module) -> None:
    """Replace every in-place ``nn.SiLU`` below ``module`` (e.g. in a timm backbone) by ``SiLU``."""
    for parent in module.modules():
        for name, child in parent.named_children():
            if type(child) is nn.SiLU and child.inplace:
                setattr(parent, name, SiLU())


class SeparableConv2d(nn.Sequential):
    """Depthwise k×k conv → pointwise 1×1 conv (→ BN when ``norm``) (→ SiLU when ``act``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        padding: str = "pytorch",
        bias: bool = False,
        norm: bool = True,
        act: bool = False,
    ):
        super().__init__()
        pad = timm_padding(padding)
        self.conv_dw = create_conv2d(in_channels, in_channels, kernel_size, padding=pad, depthwise=True)
        self.conv_pw = create_conv2d(in_channels, out_channels, 1, padding=pad, bias=bias)
        # Absent modules are left out (not Identity) so the state dict names only real weights.
        if norm:
            self.bn = batch_norm(out_channels)
        if act:
            self.act = SiLU()


class ConvBn(nn.Sequential):
    """1×1 conv + BN: projects a feature map to another width (no activation, as in the paper).

    ``norm=False``: the conv alone, with a bias (the BN's shift), under the same name.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=not norm)
        if norm:
            self.bn = batch_norm(out_channels)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by an integer power-of-two factor."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, scale_factor=self.factor, mode="nearest")

    def extra_repr(self) -> str:
        return f"factor={int(self.factor)}"


class SameMaxPool2d(nn.Module):
    """TF SAME max-pool, kernel ``stride + 1``, without a padded copy of the input.

    For a size divisible by the stride, SAME pads one -inf row/column at the bottom/right only,
    exactly the window that ``ceil_mode`` adds, so no ``F.pad`` (timm's MaxPool2dSame pads every
    call). Inputs are multiples of 2**max_level, so this is the path taken; other sizes use timm's.
    """

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride
        self.padded = create_pool2d("max", kernel_size=stride + 1, stride=stride, padding="same")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            return self.padded(x)
        return F.max_pool2d(x, self.stride + 1, self.stride, 0, ceil_mode=True)


def downsample(factor: int, padding: str = "pytorch") -> nn.Module:
    """Max-pool with stride ``factor`` and kernel ``factor + 1`` (3×3/2 for one level down)."""
    if padding == "same":
        return SameMaxPool2d(factor)
    return create_pool2d("max", kernel_size=factor + 1, stride=factor, padding=timm_padding(padding))


def resample(
    in_channels: int, out_channels: int, level_in: int, level_out: int, padding: str, norm: bool = True
) -> nn.Module:
    """Bring a feature map from ``level_in`` to ``level_out`` at ``out_channels``.

    Projection first, then resizing (the reference order: the 1×1 conv runs at the input's
    resolution), so converted weights give the same numbers. ``norm``: BN after the projection.
    """
    parts: dict[str, nn.Module] = {}
    if in_channels != out_channels:
        parts["proj"] = ConvBn(in_channels, out_channels, norm)
    if level_out > level_in:
        parts["down"] = downsample(2 ** (level_out - level_in), padding)
    elif level_out < level_in:
        parts["up"] = Upsample(2 ** (level_in - level_out))
    # A Sequential even for one part keeps stable state-dict names ("proj.conv.weight").
    return nn.Sequential(OrderedDict(parts)) if parts else nn.Identity()


def _fans(weight: torch.Tensor, groups: int) -> tuple[int, int]:
    receptive = weight[0][0].numel() if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive // groups


@torch.no_grad()
def init_conv_tf(conv: nn.Conv2d, mode: str) -> None:
    """TF EfficientDet initialisers (fan of a depthwise conv counted per group, as TF does).

    ``mode="glorot"``: uniform Glorot (BiFPN); ``"fan_in"``: normal with variance 1/fan_in
    (heads). torch.nn.init counts a depthwise conv's fan-out over all groups, hence this helper.
    """
    fan_in, fan_out = _fans(conv.weight, conv.groups)
    if mode == "glorot":
        limit = math.sqrt(3.0 / max(1.0, (fan_in + fan_out) / 2.0))
        conv.weight.uniform_(-limit, limit)
    elif mode == "fan_in":
        conv.weight.normal_(0.0, math.sqrt(1.0 / max(1.0, fan_in)))
    else:
        raise ValueError(f"unknown init mode {mode!r}")
    if conv.bias is not None:
        conv.bias.zero_()
