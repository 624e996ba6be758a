"""Options of the segmentation task (paper §5.2): head shape, loss, test-time augmentation, evaluation.

``SegmentationConfig`` is the experiment's ``seg:`` section (or the section of any task of
type ``seg``, e.g. ``drivable:``). The paper states no loss beyond the classifier on P2;
cross-entropy with the void label (255) ignored is the standard and the default. Dice,
Lovász-softmax, focal and Tversky losses (from segmentation_models_pytorch) can replace or be
added to it by weight, e.g. ``weights: {ce: 1.0, dice: 0.5}``. Thin structures such as lane
lines (a few % of the pixels) are where the region losses matter: HybridNets trains its
segmentation head with focal (α 0.25, γ 2) + Tversky (α 0.7, β 0.3, γ 4/3), i.e.
``weights: {focal: 1.0, tversky: 1.0}, focal_alpha: 0.25, tversky_alpha: 0.7, tversky_beta: 0.3,
tversky_gamma: 1.333``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...errors import ConfigError

#: loss names accepted in ``SegLossConfig.weights``
SEG_LOSSES = ("ce", "dice", "lovasz", "focal", "tversky")


@dataclass(frozen=True)
class SegLossConfig:
    #: loss name → weight; the task's loss dict holds each term already multiplied by its weight
    weights: dict[str, float] = field(default_factory=lambda: {"ce": 1.0})
    #: focusing parameter of the focal loss
    focal_gamma: float = 2.0
    #: focal loss weight of the positive term of each class's one-vs-rest loss (None = unweighted)
    focal_alpha: float | None = None
    #: Tversky loss (smp): T_c = TP / (TP + α·FP + β·FN) per class from softmax probabilities over the
    #: batch, loss = (mean over classes of 1 - T_c, a class absent from the batch's ground truth adding
    #: 0)^γ; α = β = 0.5, γ = 1 is Dice. α weighs false positives, β false negatives (β > α favours recall)
    tversky_alpha: float = 0.5
    tversky_beta: float = 0.5
    tversky_gamma: float = 1.0
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
        if self.focal_alpha is not None and not 0 <= self.focal_alpha <= 1:
            raise ConfigError(f"seg loss focal_alpha must be in [0, 1] or null, got {self.focal_alpha}")
        if self.tversky_alpha < 0 or self.tversky_beta < 0 or self.tversky_alpha + self.tversky_beta <= 0:
            raise ConfigError(
                f"seg loss tversky_alpha={self.tversky_alpha}, tversky_beta={self.tversky_beta}: both >= 0, "
                "not both 0"
            )
        if self.tversky_gamma <= 0:
            raise ConfigError(f"seg loss tversky_gamma must be > 0, got {self.tversky_gamma}")


@dataclass(frozen=True)
class SegEvalConfig:
    """Figures reported beside the standard dataset-level mIoU (which stays the main metric).

    ``paper_protocol`` adds a driving paper's drivable-area / lane-line figures, computed as that
    paper's code does (definitions in tasks/segmentation/paper_metrics.py): "hybridnets" (per
    image: mIoU, IoU and balanced accuracy of ``paper_class``, pixel accuracy), "yolop" (per
    evaluation batch: mIoU, IoU and recall of ``paper_class``, pixel accuracy), or "none".
    """

    paper_protocol: Literal["none", "hybridnets", "yolop"] = "none"
    #: the class whose IoU and accuracy the protocol reports (a class name or index);
    #: None = the last class (the lane / drivable class of a binary mask)
    paper_class: str | int | None = None


@dataclass(frozen=True)
class SegmentationConfig:
    #: dataset annotation (kind "mask") the task learns from; None = the task's own name
    source: str | None = None
    #: classes, background included (index = class id); set from the dataset by default
    num_classes: int = 21
    #: the head (models/heads.py): "effdet", §5.2's separable convs on ``level`` (with
    #: ``merge_levels`` added to it first); "semantic-fpn", Panoptic FPN's semantic branch over
    #: ``level`` and ``merge_levels``: per-level 3×3 conv + GroupNorm + ReLU stacks summed at
    #: ``level`` (the ``finetune-seg`` recipe's: it generalises better on a short fine-tune)
    head: Literal["effdet", "semantic-fpn"] = "effdet"
    #: width of the head's convs; None = the BiFPN's
    channels: int | None = None
    #: separable conv + BN + SiLU repeats before the 1×1 classifier (§5.2: 3); the "effdet" head's
    #: only: "semantic-fpn" has one conv per octave between a level and ``level`` (at least one)
    repeats: int = 3
    #: the pyramid level the head reads (§5.2: P2, stride 4)
    level: int = 2
    #: coarser BiFPN outputs upsampled to ``level`` and added to it before the head's convs, e.g.
    #: [3, 4, 5] (models/heads.py ``SegmentationHead``; the ``finetune-seg`` recipe's); () = ``level``
    #: alone, the §5.2 design
    merge_levels: tuple[int, ...] = ()
    #: channel dropout (``nn.Dropout2d``) on the classifier's input while training; 0 = none (§5.2)
    dropout: float = 0.0
    loss: SegLossConfig = field(default_factory=SegLossConfig)
    #: horizontal-flip test-time augmentation wherever the task predicts (evaluation,
    #: ``mtedet predict``, the Python API): softmax of the image and its mirror averaged
    flip_test: bool = False
    #: ``mtedet eval`` also writes every prediction as a palette PNG into its report folder
    save_eval_masks: bool = False
    eval: SegEvalConfig = field(default_factory=SegEvalConfig)

    def __post_init__(self):
        bad = [lv for lv in self.merge_levels if lv <= self.level]
        if bad or len(set(self.merge_levels)) != len(self.merge_levels):
            raise ConfigError(f"seg merge_levels {list(self.merge_levels)}: give distinct levels coarser than the "
                              f"head's level {self.level}, e.g. [{self.level + 1}, {self.level + 2}, {self.level + 3}]")
        if not 0.0 <= self.dropout < 1.0:  # also refuses NaN
            raise ConfigError(f"seg dropout {self.dropout}: give a probability in [0, 1), e.g. 0.1")
