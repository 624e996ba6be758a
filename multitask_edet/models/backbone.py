"""Backbone: a timm feature extractor → pyramid levels P_min … P_max (paper §4.1, Fig. 3).

Any timm model that supports ``features_only`` works; the levels it provides are read from
its ``feature_info`` (stride 2**L → level L), never from a table of channel counts. Levels
above the backbone's coarsest feature (P6, P7, and P8 for D7x) are made by "resampling"
the level below: a 1×1 conv + BN when its width differs from the BiFPN's, then a 3×3
stride-2 max-pool — the reference structure, so converted weights map one to one.

Weights are never downloaded: ``weights=PATH`` loads a local timm state dict.
"""
from __future__ import annotations

import math
from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..state_dict import key_report, read_state_dict
from .layers import resample, use_adaptive_silu


def _feature_levels(name: str) -> dict[int, int]:
    """{pyramid level: timm out_index} of every feature the model can return."""
    if not timm.is_model(name.split(".")[0]):  # "name.pretrained_tag" is valid too
        raise ConfigError(f"backbone {name!r} is not a timm model; see timm.list_models()")
    # Built on the meta device: reading feature_info costs no memory and little time.
    with torch.device("meta"):
        probe = timm.create_model(name, features_only=True, pretrained=False)
    levels = {}
    for i, red in enumerate(probe.feature_info.reduction()):
        level = int(round(math.log2(red)))
        if 2**level == red:
            levels[level] = probe.feature_info.out_indices[i]
    return levels


class Backbone(nn.Module):
    """``forward(images) → [P_min, …, P_max]`` (fine to coarse); ``levels`` and ``channels`` say what."""

    #: On CPU, images are turned channels_last (NHWC) here, so the whole network runs in it:
    #: oneDNN convolutions reorder NCHW activations at every layer otherwise, and D0 runs
    #: 25–35% faster in NHWC (benchmarks/RESULTS.md). Values are unchanged. On GPUs the
    #: layout is the caller's choice (the engine's ``model.channels_last``).
    channels_last_on_cpu: bool = True

    def __init__(
        self,
        name: str,
        min_level: int,
        max_level: int,
        out_channels: int,
        padding: str = "pytorch",
        drop_path_rate: float = 0.0,
        weights: str | None = None,
    ):
        super().__init__()
        available = _feature_levels(name)
        if min_level not in available:
            raise ConfigError(
                f"backbone {name!r} has no stride-{2**min_level} feature for level P{min_level}; "
                f"its levels are {sorted(available)} — raise min_level or pick another backbone"
            )
        top = min_level
        while top + 1 in available and top + 1 <= max_level:
            top += 1
        kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
        self.body = timm.create_model(
            name,
            features_only=True,
            out_indices=tuple(available[lv] for lv in range(min_level, top + 1)),
            pretrained=False,
            **kwargs,
        )
        if weights:
            load_backbone_weights(self.body, weights)
        use_adaptive_silu(self.body)  # timm's in-place SiLUs clone their input under autograd
        channels = list(self.body.feature_info.channels())
        # Levels above the backbone's top: each made from the one below.
        self.extra = nn.ModuleList()
        for level in range(top + 1, max_level + 1):
            self.extra.append(resample(channels[-1], out_channels, level - 1, level, padding))
            channels.append(out_channels)
        self.levels = tuple(range(min_level, max_level + 1))
        self.channels = tuple(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.channels_last_on_cpu and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        feats = list(self.body(x))
        for m in self.extra:
            feats.append(m(feats[-1]))
        return feats


def load_backbone_weights(body: nn.Module, path: str | Path) -> None:
    """Load a timm checkpoint of the full classifier into the feature extractor ``body``.

    Keys of modules that ``features_only`` drops (classifier, last conv) are expected in
    such a file and skipped; any other mismatch is an error listing the keys.
    """
    sd = read_state_dict(path)
    own = body.state_dict()
    top_modules = {k.split(".")[0] for k in own}
    unexpected = [k for k in sd if k not in own and k.split(".")[0] in top_modules]
    missing = [k for k in own if k not in sd]
    wrong = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        shapes = f"; wrong shapes: {', '.join(wrong[:10])}" if wrong else ""
        raise CheckpointError(
            f"backbone weights {path} do not fit {type(body).__name__}: "
            f"{key_report(missing, unexpected)}{shapes} — is it a checkpoint of this backbone?"
        )
    body.load_state_dict({k: sd[k] for k in own})


def backbone_input_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel, 0–1 scale, that the backbone's pretrained weights expect.

    Read from timm's pretrained config without downloading anything: ImageNet statistics for
    the EfficientNets, 0.5 for the TF-ported ``*_lite*`` ones. A backbone timm gives no
    statistics for gets ImageNet's.
    """
    from ..datasets.base import IMAGENET_MEAN, IMAGENET_STD

    if not timm.is_model(name.split(".")[0]):
        raise ConfigError(f"backbone {name!r} is not a timm model; see timm.list_models()")
    with torch.device("meta"):
        cfg = timm.create_model(name, pretrained=False, features_only=True).pretrained_cfg or {}
    mean, std = cfg.get("mean") or IMAGENET_MEAN, cfg.get("std") or IMAGENET_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
