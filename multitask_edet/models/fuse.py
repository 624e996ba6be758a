"""Inference-time folding of batch norm into the convolutions before it.

In eval mode a BN is a fixed per-channel affine map, so ``BN(conv(x))`` equals one conv
with rescaled weights and a bias: the folded network computes the same function (up to
float rounding) with one memory-bound pass fewer per conv. On CPU that pass is ~20% of a
D0 forward. ``fuse_for_inference(model)`` returns such a copy of a MultiTaskEfficientDet:

- the trunk's own blocks (BiFPN nodes, the backbone's extra levels, the segmentation head):
  every ``SeparableConv2d`` / ``ConvBn`` with a BN;
- the EfficientDet class/box nets, whose separable convs are shared across levels while
  each level has its own BN (paper §3.3): each level gets its own folded pointwise conv
  (the depthwise part stays shared);
- timm's EfficientNet blocks (stem, depthwise-separable, inverted residual, edge residual):
  ``BatchNormAct2d`` folds into its conv and leaves its activation behind;
- fast / softmax fusion weights become constants (no relu/sum/div per node per call).

Anything else (another backbone family, a user's head) is left as it is, still correct.
The copy is for inference only: it has no BN statistics to train. The math of one fold is
``torch.nn.utils.fusion.fuse_conv_bn_eval``.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .bifpn import FastFusion
from .heads import HeadNet
from .layers import ConvBn, SeparableConv2d

#: timm EfficientNet modules → their (conv, bn) attribute pairs, each bn directly after its conv
_TIMM_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "EfficientNetFeatures": (("conv_stem", "bn1"),),
    "EfficientNet": (("conv_stem", "bn1"), ("conv_head", "bn2")),
    "ConvBnAct": (("conv", "bn1"),),
    "DepthwiseSeparableConv": (("conv_s2d", "bn_s2d"), ("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "InvertedResidual": (("conv_s2d", "bn_s2d"), ("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    "EdgeResidual": (("conv_exp", "bn1"), ("conv_pwl", "bn2")),
}


def _foldable(conv, bn) -> bool:
    # exact types: a BN subclass with extra behaviour we do not know of is left alone
    # (timm's BatchNormAct2d is handled by _bn_remainder); CondConv etc. are not nn.Conv2d
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(bn, nn.BatchNorm2d)
        and bn.track_running_stats
        and bn.running_mean is not None
        and conv.out_channels == bn.num_features
    )


def _bn_remainder(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of a BN after folding: nothing, or timm BatchNormAct2d's drop + act."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if type(bn).__name__ == "BatchNormAct2d" and hasattr(bn, "act"):
        return nn.Sequential(bn.drop, bn.act) if not isinstance(bn.drop, nn.Identity) else bn.act
    return None


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv computing ``bn(conv(x))`` of the eval-mode BN (its class, e.g. timm's
    dynamic-padding Conv2dSame, is kept)."""
    return fuse_conv_bn_eval(conv.eval(), bn.eval())


def _fold_pair(parent: nn.Module, conv_name: str, bn_name: str) -> bool:
    conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
    if not _foldable(conv, bn):
        return False
    rest = _bn_remainder(bn)
    if rest is None:
        return False
    setattr(parent, conv_name, fold_conv_bn(conv, bn))
    if isinstance(parent, nn.Sequential) and isinstance(rest, nn.Identity):
        del parent._modules[bn_name]  # one module fewer to call
    else:
        setattr(parent, bn_name, rest)
    return True


class FrozenFusion(nn.Module):
    """A trained fast/softmax fusion with its normalised weights as constants."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.weights = [float(w) for w in weights]

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        out = xs[0] * self.weights[0]
        for x, w in zip(xs[1:], self.weights[1:]):
            out = out.add_(x, alpha=w)
        return out

    def extra_repr(self) -> str:
        return "weights=[" + ", ".join(f"{w:.4g}" for w in self.weights) + "]"


class FoldedHeadNet(nn.Module):
    """HeadNet with each level's BNs folded into per-level copies of the pointwise convs."""

    def __init__(self, net: HeadNet):
        super().__init__()
        self.levels = nn.ModuleList()
        for bns in net.bns:
            convs = nn.ModuleList()
            for conv, bn in zip(net.convs, bns):
                # the depthwise conv stays shared; the pointwise one carries the level's BN
                convs.append(nn.Sequential(conv.conv_dw, fold_conv_bn(conv.conv_pw, bn)))
            self.levels.append(convs)
        self.act = net.act
        self.predict = net.predict

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for x, convs in zip(feats, self.levels):
            for conv in convs:
                x = self.act(conv(x))
            outs.append(self.predict(x))
        return outs


def _fold_module(module: nn.Module) -> int:
    """Fold every known (conv, BN) pair below ``module`` in place; returns how many."""
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, HeadNet):
            setattr(module, name, FoldedHeadNet(child))
            n += sum(len(b) for b in child.bns)
        elif isinstance(child, FastFusion):  # SoftmaxFusion too
            with torch.no_grad():
                setattr(module, name, FrozenFusion(child.normalized()))
        else:
            n += _fold_module(child)
    if isinstance(module, SeparableConv2d):
        n += _fold_pair(module, "conv_pw", "bn")
    elif isinstance(module, ConvBn):
        n += _fold_pair(module, "conv", "bn")
    else:
        for conv_name, bn_name in _TIMM_PAIRS.get(type(module).__name__, ()):
            n += _fold_pair(module, conv_name, bn_name)
    return n


@torch.no_grad()
def fuse_for_inference(model: nn.Module, inplace: bool = False) -> nn.Module:
    """An eval-mode copy of ``model`` with batch norm folded into the convs (see module doc).

    Outputs equal the unfused eval-mode model's up to float rounding (~1e-6 relative).
    ``inplace=True`` folds ``model`` itself (no copy: saves memory for big variants).
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    model.folded_batchnorms = _fold_module(model)
    return model


def remaining_batchnorms(model: nn.Module) -> list[str]:
    """Names of the BN modules still in ``model`` (empty after folding a D0–D7x / seg model)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
