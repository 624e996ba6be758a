"""Typed model configs and the named variants (paper Table 1 and §5.2).

Model configs describe the network only (backbone, BiFPN, heads, native input size);
training hyper-parameters live in the experiment config (engine/config.py), not here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from .config_utils import merge
from .errors import ConfigError
from .registry import Registry


@dataclass(frozen=True)
class BackboneConfig:
    #: any timm model that supports ``features_only`` (``tf_`` EfficientNets use TF SAME padding)
    name: str = "efficientnet_b0"
    #: local checkpoint of the backbone's weights (timm state dict, .pth/.safetensors); never downloaded
    weights: str | None = None
    drop_path_rate: float = 0.2


@dataclass(frozen=True)
class NeckConfig:
    channels: int = 64
    repeats: int = 3
    fusion: Literal["fast", "softmax", "sum"] = "fast"
    #: a registered topology: "bifpn" (paper), "fpn", "pan" ...
    topology: str = "bifpn"
    #: None → derived from the heads attached (det only → 3; det + seg → 2)
    min_level: int | None = None
    max_level: int = 7
    separable: bool = True
    #: "pytorch" = symmetric padding (fast); "same" = TF SAME (exact for TF-trained weights)
    padding: Literal["pytorch", "same"] = "pytorch"


@dataclass(frozen=True)
class DetHeadConfig:
    num_classes: int = 90
    repeats: int = 3
    levels: tuple[int, ...] = (3, 4, 5, 6, 7)
    anchor_scale: float = 4.0
    num_scales: int = 3
    aspect_ratios: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
    prior_prob: float = 0.01

    @property
    def num_anchors(self) -> int:
        return self.num_scales * len(self.aspect_ratios)


@dataclass(frozen=True)
class SegHeadConfig:
    num_classes: int = 21
    #: None → the BiFPN width
    channels: int | None = None
    repeats: int = 3
    level: int = 2


@dataclass(frozen=True)
class ModelConfig:
    name: str = "custom"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    det: DetHeadConfig = field(default_factory=DetHeadConfig)
    seg: SegHeadConfig = field(default_factory=SegHeadConfig)
    #: native input size (H, W); any size divisible by 2**max_level works
    image_size: tuple[int, int] = (512, 512)
    #: heads built by default (create_model(tasks=...) overrides)
    tasks: tuple[str, ...] = ("det",)


MODEL_CONFIGS: Registry[ModelConfig] = Registry("model")


def register_model_config(cfg: ModelConfig, *, override: bool = False) -> ModelConfig:
    MODEL_CONFIGS.register(cfg.name, cfg, override=override)
    return cfg


def get_model_config(name: str, **overrides) -> ModelConfig:
    """A named variant with validated nested overrides (``neck={"fusion": "sum"}``)."""
    cfg = MODEL_CONFIGS.get(name)
    if overrides:
        cfg = merge(cfg, overrides)
    return cfg


def list_models() -> list[str]:
    return MODEL_CONFIGS.names()
