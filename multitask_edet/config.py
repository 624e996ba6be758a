"""Typed model configs and the named variants (paper Table 1 and §5.2).

Model configs describe the network only (backbone, BiFPN, heads, native input size);
training hyper-parameters live in the experiment config (engine/config.py), not here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .config_utils import merge
from .registry import Registry


@dataclass(frozen=True)
class BackboneConfig:
    #: any timm model that supports ``features_only`` (``tf_`` EfficientNets use TF SAME padding)
    name: str = "efficientnet_b0"
    #: ImageNet weights through timm (Hugging Face Hub + its cache); false = random initialisation
    pretrained: bool = False
    #: which of timm's weights for ``name``: a tag ("aa_in1k") or "ARCH.TAG" for the weights of an
    #: architecture with the same tensors; None = timm's default tag
    pretrained_tag: str | None = None
    #: a local checkpoint instead of the Hub (timm state dict .safetensors/.pth/pytorch_model.bin, or
    #: efficientnet_pytorch / smp naming, converted on load); loaded whatever ``pretrained`` says
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
    #: "pytorch" = symmetric padding (fast); "same" = TF SAME (exact for TF-trained weights)
    padding: Literal["pytorch", "same"] = "pytorch"
    #: the BiFPN layers' normalisation: "bn" (paper: BN after every 1×1 projection and node conv)
    #: or "none" (those convs get a bias instead; the backbone's own P6/P7 projection keeps its BN)
    norm: Literal["bn", "none"] = "bn"
    #: false: every node is its weighted fusion alone (no SiLU → separable conv → BN), a linear
    #: pyramid as in FPN's top-down path, and the heads do all the convolving
    node_conv: bool = True


@dataclass(frozen=True)
class ModelConfig:
    name: str = "custom"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    #: native input size (H, W); any size divisible by 2**max_level works
    image_size: tuple[int, int] = (512, 512)
    #: the heads built by default: task name → its options (``type`` and the fields of the
    #: task type's Config, tasks/base.py); ``create_model(tasks=...)`` replaces them
    tasks: dict[str, dict[str, Any]] = field(default_factory=lambda: {"det": {}})
    #: this variant's options per task *type*, under every task's own options (D3's
    #: detection head has 4 repeats whatever the task is called)
    task_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: input normalisation, per RGB channel on the 0–1 scale; None = the backbone's
    #: pretrained config (ImageNet statistics for EfficientNets, 0.5 for the *_lite* ones)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


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


# --- named variants ------------------------------------------------------------------------
# Paper Table 1: (backbone B-index, input size, BiFPN width W, BiFPN depth D, head depth).
_TABLE1 = {
    "d0": (0, 512, 64, 3, 3),
    "d1": (1, 640, 88, 4, 3),
    "d2": (2, 768, 112, 5, 3),
    "d3": (3, 896, 160, 6, 4),
    "d4": (4, 1024, 224, 7, 4),
    "d5": (5, 1280, 288, 7, 4),
    "d6": (6, 1280, 384, 8, 5),
    "d7": (6, 1536, 384, 8, 5),
    "d7x": (7, 1536, 384, 8, 5),
}


#: timm's ImageNet weights per backbone (``BackboneConfig.pretrained_tag``). The tf_ backbones take
#: the TF-trained AutoAugment checkpoints the paper's EfficientDets start from (§4.1, §5.1); the
#: PyTorch-padded ones timm's own trainings, and for B6/B7, where timm has none, the same TF
#: weights (identical tensors; only the padding differs, which fine-tuning absorbs).
PRETRAINED_TAGS = {
    "efficientnet_b0": "ra_in1k",
    "efficientnet_b1": "ft_in1k",
    "efficientnet_b2": "ra_in1k",
    "efficientnet_b3": "ra2_in1k",
    "efficientnet_b4": "ra2_in1k",
    "efficientnet_b5": "sw_in12k_ft_in1k",
    "efficientnet_b6": "tf_efficientnet_b6.aa_in1k",
    "efficientnet_b7": "tf_efficientnet_b7.aa_in1k",
    **{f"tf_efficientnet_b{i}": "aa_in1k" for i in range(8)},
}


def _efficientdet(variant: str, tf: bool) -> ModelConfig:
    b, size, width, depth, head_depth = _TABLE1[variant]
    big = variant in ("d6", "d7", "d7x")
    max_level = 8 if variant == "d7x" else 7
    prefix = "tf_" if tf else ""
    return ModelConfig(
        name=f"{prefix}efficientdet-{variant}",
        # The reference trains its PyTorch-padded D0 with drop-path 0.1, everything else 0.2.
        backbone=BackboneConfig(
            name=f"{prefix}efficientnet_b{b}",
            pretrained_tag=PRETRAINED_TAGS[f"{prefix}efficientnet_b{b}"],
            drop_path_rate=0.1 if variant == "d0" and not tf else 0.2,
        ),
        neck=NeckConfig(
            channels=width,
            repeats=depth,
            # §4.2 / official configs: plain sum for the largest models, "for stability".
            fusion="sum" if big else "fast",
            max_level=max_level,
            padding="same" if tf else "pytorch",
        ),
        tasks={"det": {}},
        task_defaults={
            "det": {
                "repeats": head_depth,
                "levels": tuple(range(3, max_level + 1)),
                "anchor_scale": 5.0 if variant == "d7" else 4.0,
            }
        },
        image_size=(size, size),
    )


for _v in _TABLE1:
    # efficientdet-dN: PyTorch padding (faster, seg maps stay aligned);
    # tf_efficientdet-dN: TF SAME padding and tf_ backbones, exact for TF-trained weights.
    register_model_config(_efficientdet(_v, tf=False))
    register_model_config(_efficientdet(_v, tf=True))

# §5.2: segmentation on the BiFPN's P2 — B4 backbone, BiFPN 128×3 over P2–P7, head 256×3.
register_model_config(
    ModelConfig(
        name="efficientdet-d4-seg",
        backbone=BackboneConfig(name="efficientnet_b4", pretrained_tag=PRETRAINED_TAGS["efficientnet_b4"], drop_path_rate=0.2),
        neck=NeckConfig(channels=128, repeats=3, fusion="fast", min_level=2, max_level=7),
        tasks={"seg": {}},
        task_defaults={"seg": {"num_classes": 21, "channels": 256, "repeats": 3, "level": 2},
                       "det": {"num_classes": 20, "repeats": 3}},
        # The usual VOC crop; the paper's 18B FLOPs correspond to a 640×640 input.
        image_size=(512, 512),
    )
)

# BDD100K multi-task, set up like HybridNets (EfficientNet-B3 + BiFPN, 640x384 input) so that the two
# compare: the D3 trunk of Table 1 (B3, BiFPN 160x6, head depth 4) extended to P2 for the per-pixel
# heads (§5.2), detection on P3-P7 (the 10 BDD100K classes), drivable area and lane lines as two
# segmentation heads on P2 (2 classes each: background + drivable / lane). The recipe bdd100k-d3 trains it.
register_model_config(
    ModelConfig(
        name="efficientdet-d3-bdd",
        backbone=BackboneConfig(name="efficientnet_b3", pretrained_tag=PRETRAINED_TAGS["efficientnet_b3"], drop_path_rate=0.2),
        neck=NeckConfig(channels=160, repeats=6, fusion="fast", max_level=7),
        tasks={"det": {"num_classes": 10}, "drivable": {"type": "seg", "num_classes": 2},
               "lane": {"type": "seg", "num_classes": 2}},
        task_defaults={"det": {"repeats": 4, "levels": (3, 4, 5, 6, 7)}, "seg": {"channels": 64, "repeats": 2}},
        image_size=(384, 640),
    )
)

# Tiny models for tests and smoke runs: timm's 82k-parameter test_efficientnet backbone.
_TEST = ModelConfig(
    name="test-efficientdet",
    backbone=BackboneConfig(name="test_efficientnet", drop_path_rate=0.0),
    neck=NeckConfig(channels=16, repeats=2),
    tasks={"det": {}},
    task_defaults={"det": {"num_classes": 5, "repeats": 2}, "seg": {"num_classes": 3, "channels": 16, "repeats": 1}},
    image_size=(128, 128),
)
register_model_config(_TEST)
register_model_config(dataclasses.replace(_TEST, name="test-efficientdet-seg", tasks={"det": {}, "seg": {}}))
register_model_config(
    dataclasses.replace(_TEST, name="tf_test-efficientdet", neck=dataclasses.replace(_TEST.neck, padding="same"))
)
