"""Options of the segmentation task (paper §5.2): head shape, loss, test-time augmentation.

``SegmentationConfig`` is the experiment's ``seg:`` section (or the section of any task of
type ``seg``, e.g. ``drivable:``). The paper states no loss beyond the classifier on P2;
cross-entropy with the void label (255) ignored is the standard and the default. Dice,
Lovász-softmax and focal losses (from segmentation_models_pytorch) can replace or be added to
it by weight, e.g. ``weights: {ce: 1.0, dice: 0.5}``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import ConfigError

#: loss names accepted in ``SegLossConfig.weights``
SEG_LOSSES = ("ce", "dice", "lovasz", "focal")


@dataclass(frozen=True)
class SegLossConfig:
    #: loss name → weight; the task's loss dict holds each term already multiplied by its weight
    weights: dict[str, float] = field(default_factory=lambda: {"ce": 1.0})
    #: focusing parameter of the focal loss
    focal_gamma: float = 2.0
    #: additive smoothing of the soft Dice score
    dice_smooth: float = 0.0
    #: Lovász-softmax per image (True) or over the whole batch (False, smp's default)
    lovasz_per_image: bool = False

    def __post_init__(self):
        if not self.weights:
            raise ConfigError(
                f"seg loss weights is empty; give at least one of {', '.join(SEG_LOSSES)}, "
                "e.g. {ce: 1.0}"
            )
        unknown = sorted(set(self.weights) - set(SEG_LOSSES))
        if unknown:
            raise ConfigError(
                f"unknown segmentation loss(es) {', '.join(unknown)} in seg loss weights; "
                f"valid names: {', '.join(SEG_LOSSES)}"
            )
        negative = {k: w for k, w in self.weights.items() if w < 0}
        if negative:
            raise ConfigError(f"seg loss weights must be >= 0, got {negative}")


@dataclass(frozen=True)
class SegmentationConfig:
    #: dataset annotation (kind "mask") the task learns from; None = the task's own name
    source: str | None = None
    #: classes, background included (index = class id); set from the dataset by default
    num_classes: int = 21
    #: width of the head's convs; None = the BiFPN's
    channels: int | None = None
    #: separable conv + BN + SiLU repeats before the 1×1 classifier (§5.2: 3)
    repeats: int = 3
    #: the pyramid level the head reads (§5.2: P2, stride 4)
    level: int = 2
    loss: SegLossConfig = field(default_factory=SegLossConfig)
    #: horizontal-flip test-time augmentation wherever the task predicts (evaluation,
    #: ``mtedet predict``, the Python API): softmax of the image and its mirror averaged
    flip_test: bool = False
    #: ``mtedet eval`` also writes every prediction as a palette PNG into its report folder
    save_eval_masks: bool = False
