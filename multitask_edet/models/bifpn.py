"""Weighted bi-directional feature pyramid (BiFPN, paper §3 and Fig. 2d).

The topology is data: a function returns the nodes of one layer, each with its pyramid
level and the indices of its inputs in the running list ``[P_min … P_max, node 0, node 1 …]``.
BiFPN, a top-down FPN and PAN are three such functions (``TOPOLOGIES``), not three modules.
Each node resizes its inputs to its level (nearest ×2 up, 3×3/2 max-pool down), projects an
input with another width by 1×1 conv + BN (only in the first layer, where the backbone's
widths arrive), fuses them (§3.3: fast normalised, softmax or plain sum), then applies
SiLU → depthwise-separable 3×3 conv → BN. Layers are repeated D times (Table 1).
For short fine-tunes on a few images two departures from the paper help the pretrained
features carry over (benchmarks/RESULTS.md, "Pretrained vs scratch"): ``norm="none"`` drops
the BNs (projections and node convs get biases) and ``node_conv=False`` makes every node its
weighted fusion alone, a linear pyramid like FPN's top-down path, leaving the convs to the heads.

Everything is decided when the module is built (resampling, which fusion, which inputs),
so ``forward`` is a fixed sequence of tensor ops: cheap in eager mode and one graph for
``torch.compile``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .layers import SeparableConv2d, SiLU, init_conv_tf, resample


@dataclass(frozen=True)
class FpnNode:
    level: int
    #: indices into [layer inputs P_min..P_max, then the outputs of earlier nodes of the layer]
    inputs: tuple[int, ...]


TopologyFn = Callable[[int, int], tuple[FpnNode, ...]]
TOPOLOGIES: Registry[TopologyFn] = Registry("neck topology")


def register_topology(name: str, fn: TopologyFn | None = None, *, override: bool = False):
    return TOPOLOGIES.register(name, fn, override=override)


class _Builder:
    """Appends nodes and tracks the newest feature map of every level."""

    def __init__(self, min_level: int, max_level: int):
        self.first = {lv: lv - min_level for lv in range(min_level, max_level + 1)}
        self.latest = dict(self.first)
        self.nodes: list[FpnNode] = []

    def add(self, level: int, *inputs: int) -> None:
        self.nodes.append(FpnNode(level, tuple(inputs)))
        self.latest[level] = len(self.first) + len(self.nodes) - 1


@register_topology("bifpn")
def bifpn_topology(min_level: int, max_level: int) -> tuple[FpnNode, ...]:
    """Paper Fig. 2d: a top-down pass, then a bottom-up pass that also takes each level's
    input (the extra same-level edge); the top level has no top-down node. The node order and
    input order follow the official implementation (checkpoints depend on them)."""
    b = _Builder(min_level, max_level)
    for lv in range(max_level - 1, min_level - 1, -1):
        b.add(lv, b.latest[lv], b.latest[lv + 1])
    for lv in range(min_level + 1, max_level + 1):
        same_level = (b.first[lv], b.latest[lv]) if b.latest[lv] != b.first[lv] else (b.first[lv],)
        b.add(lv, *same_level, b.latest[lv - 1])
    return tuple(b.nodes)


def _top_down(b: _Builder, min_level: int, max_level: int) -> None:
    b.add(max_level, b.latest[max_level])  # a one-input node so the top level gets the FPN width
    for lv in range(max_level - 1, min_level - 1, -1):
        b.add(lv, b.latest[lv], b.latest[lv + 1])


@register_topology("fpn")
def fpn_topology(min_level: int, max_level: int) -> tuple[FpnNode, ...]:
    """Fig. 2a: top-down only (repeated, like the paper's "repeated FPN" baseline)."""
    b = _Builder(min_level, max_level)
    _top_down(b, min_level, max_level)
    return tuple(b.nodes)


@register_topology("pan")
def pan_topology(min_level: int, max_level: int) -> tuple[FpnNode, ...]:
    """Fig. 2b: top-down then bottom-up, no same-level skip edges."""
    b = _Builder(min_level, max_level)
    _top_down(b, min_level, max_level)
    b.add(min_level, b.latest[min_level])
    for lv in range(min_level + 1, max_level + 1):
        b.add(lv, b.latest[lv], b.latest[lv - 1])
    return tuple(b.nodes)


def layer_outputs(nodes: Sequence[FpnNode], min_level: int, max_level: int) -> tuple[int, ...]:
    """Index of the last node of every level: what a layer hands to the next one."""
    n = max_level - min_level + 1
    last = {}
    for i, node in enumerate(nodes):
        last[node.level] = n + i
    missing = [lv for lv in range(min_level, max_level + 1) if lv not in last]
    if missing:
        raise ConfigError(f"neck topology has no node on level(s) {missing}; every level needs one")
    return tuple(last[lv] for lv in range(min_level, max_level + 1))


# --- fusion (paper §3.3) ------------------------------------------------------------------
# Weighted adds instead of stack-then-sum: no (N, …, k) temporary, fewer kernels.


class FastFusion(nn.Module):
    """``Σ relu(w_i)·I_i / (Σ relu(w_j) + 1e-4)`` — the paper's fast normalised fusion."""

    eps = 1e-4

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def normalized(self) -> torch.Tensor:
        w = torch.relu(self.weight)
        return w / (w.sum() + self.eps)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        w = self.normalized()
        out = xs[0] * w[0]
        for i in range(1, len(xs)):
            out = out.addcmul_(xs[i], w[i])
        return out


class SoftmaxFusion(FastFusion):
    """``Σ softmax(w)_i·I_i``."""

    def normalized(self) -> torch.Tensor:
        return torch.softmax(self.weight, dim=0)


class SumFusion(nn.Module):
    """Unweighted ``Σ I_i`` (used by D6–D7x "for stability")."""

    def __init__(self, n: int):
        super().__init__()

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        if len(xs) == 1:
            return xs[0]
        out = xs[0] + xs[1]
        for i in range(2, len(xs)):
            out = out.add_(xs[i])
        return out


FUSIONS: dict[str, type[nn.Module]] = {"fast": FastFusion, "softmax": SoftmaxFusion, "sum": SumFusion}


class FusionNode(nn.Module):
    def __init__(
        self,
        inputs: tuple[int, ...],
        in_channels: Sequence[int],
        in_levels: Sequence[int],
        level: int,
        channels: int,
        fusion: str,
        padding: str,
        norm: bool = True,
        conv: bool = True,
    ):
        super().__init__()
        self.offsets = tuple(inputs)
        self.inputs = nn.ModuleList(
            resample(c, channels, lv, level, padding, norm) for c, lv in zip(in_channels, in_levels)
        )
        # A one-input node with nothing to do would hand back its input itself: never
        # activate that in place (it is another node's output).
        n = len(inputs)
        self.fuse = FUSIONS[fusion](n) if n > 1 else SumFusion(1)
        if conv:
            self.act = SiLU(inplace=n > 1 or not isinstance(self.inputs[0], nn.Identity))
            self.conv = SeparableConv2d(channels, channels, 3, padding=padding, bias=not norm, norm=norm, act=False)
        else:  # the node is its fusion: linear
            self.act = self.conv = nn.Identity()

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.fuse([m(feats[i]) for i, m in zip(self.offsets, self.inputs)])
        return self.conv(self.act(x))


class FpnLayer(nn.Module):
    """One pass of the topology: ``[P_min … P_max] → [P_min … P_max]`` at ``channels``."""

    def __init__(self, nodes, levels, in_channels, channels, fusion, padding, norm=True, conv=True):
        super().__init__()
        levels, chans = list(levels), list(in_channels)
        self.nodes = nn.ModuleList()
        for node in nodes:
            self.nodes.append(
                FusionNode(
                    node.inputs,
                    [chans[i] for i in node.inputs],
                    [levels[i] for i in node.inputs],
                    node.level,
                    channels,
                    fusion,
                    padding,
                    norm,
                    conv,
                )
            )
            levels.append(node.level)
            chans.append(channels)
        self.outputs = layer_outputs(nodes, min(levels), max(levels))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = list(feats)
        for node in self.nodes:
            feats.append(node(feats))
        return [feats[i] for i in self.outputs]


class BiFPN(nn.Module):
    """``repeats`` layers of a registered topology over ``levels`` (consecutive, fine first)."""

    def __init__(
        self,
        levels: Sequence[int],
        in_channels: Sequence[int],
        channels: int,
        repeats: int,
        fusion: str = "fast",
        topology: str = "bifpn",
        padding: str = "pytorch",
        norm: str = "bn",
        node_conv: bool = True,
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"neck.fusion {fusion!r} is not one of {sorted(FUSIONS)}")
        if norm not in ("bn", "none"):
            raise ConfigError(f"neck.norm {norm!r} is not one of ['bn', 'none']")
        try:
            make_nodes = TOPOLOGIES.get(topology)
        except KeyError as e:
            raise ConfigError(f"neck.topology: {e.args[0]}") from None
        self.levels = tuple(levels)
        self.channels = channels
        self.topology = make_nodes(self.levels[0], self.levels[-1])
        self.layers = nn.ModuleList()
        chans = list(in_channels)
        for _ in range(repeats):
            self.layers.append(
                FpnLayer(self.topology, self.levels, chans, channels, fusion, padding, norm == "bn", node_conv)
            )
            chans = [channels] * len(self.levels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_conv_tf(m, "glorot")

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        for layer in self.layers:
            feats = layer(feats)
        return feats
