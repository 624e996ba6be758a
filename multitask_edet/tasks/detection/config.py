"""Options of the detection task (paper §3.3, §5.1): head shape, anchors, loss, NMS, evaluation.

``DetectionConfig`` is the experiment's ``det:`` section (or the section of any task of type
``det``). Defaults are the paper's and the reference implementation's (effdet / google automl);
a model variant overrides the head's depth and levels (config.py), the dataset the class count.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class DetLossConfig:
    #: focal loss α and γ (paper §5.1 / RetinaNet)
    alpha: float = 0.25
    gamma: float = 1.5
    #: Huber δ of the box regression loss and its weight relative to the class loss
    delta: float = 0.1
    box_loss_weight: float = 50.0
    #: smooths the focal loss' BCE targets towards 0.5 (0 = off, as the reference default)
    label_smoothing: float = 0.0
    #: > 0 adds a GIoU loss ("det_giou") on the decoded boxes of positive anchors
    giou_weight: float = 0.0
    #: anchors with IoU ≥ match_threshold are positives, < unmatched_threshold negatives,
    #: in between ignored (equal by default: there is no in-between band)
    match_threshold: float = 0.5
    unmatched_threshold: float = 0.5
    #: every ground-truth box gets its best anchor even below the threshold (low-quality match)
    force_match: bool = True
    #: when set, negatives covered by a crowd/difficult box to at least this fraction of the
    #: anchor's area are ignored too (IoU alone misses small anchors inside a large crowd box)
    ignore_ioa_threshold: float | None = None


@dataclass(frozen=True)
class DetPostprocessConfig:
    #: candidates kept over all levels (top-k on the class logits) before NMS
    max_candidates: int = 5000
    #: "nms" = hard NMS per class (torchvision); "soft_nms" = Gaussian soft-NMS
    nms: Literal["nms", "soft_nms"] = "nms"
    iou_threshold: float = 0.5
    soft_nms_sigma: float = 0.5
    #: soft-NMS drops candidates whose decayed score falls to or below this
    soft_nms_score_threshold: float = 0.001
    max_detections: int = 100
    #: detections with a lower score are dropped (0 keeps all, as the reference does)
    score_threshold: float = 0.0


@dataclass(frozen=True)
class DetEvalConfig:
    #: "coco" = COCOeval AP@[.5:.95] (main metric AP); "voc" = VOC AP50 per class with
    #: difficult objects ignored (main metric AP50) plus COCOeval numbers prefixed "coco_";
    #: "auto" = "voc" for datasets whose name starts with "voc", else "coco"
    protocol: Literal["auto", "coco", "voc"] = "auto"
    #: VOC AP: "area" under the interpolated PR curve (VOC2010+) or "11point" (VOC2007)
    voc_ap_method: Literal["area", "11point"] = "area"
    #: name of the COCO results JSON written to the evaluator's output_dir
    results_file: str = "det_results.json"
    #: also report the detection "recall" and "mAP50" of a driving paper's evaluation code, beside
    #: the main metric (keys "<protocol>/recall", "<protocol>/mAP50"): "hybridnets" or "yolop"
    #: (YOLOv5-style matching and 101-point AP; tasks/detection/paper_metrics.py defines them), or "none"
    paper_protocol: Literal["none", "hybridnets", "yolop"] = "none"


@dataclass(frozen=True)
class DetectionConfig:
    #: dataset annotation (kind "boxes") the task learns from; None = the task's own name
    source: str | None = None
    #: object classes (no background class: sigmoid per class); set from the dataset by default
    num_classes: int = 90
    #: class/box net depth (paper Table 1: 3 for D0–D2, 4 for D3–D5, 5 for D6–D7x)
    repeats: int = 3
    levels: tuple[int, ...] = (3, 4, 5, 6, 7)
    #: anchor base size = anchor_scale · stride (4; 5 for D7)
    anchor_scale: float = 4.0
    num_scales: int = 3
    aspect_ratios: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
    #: initial foreground probability of every anchor (RetinaNet §4.1)
    prior_prob: float = 0.01
    loss: DetLossConfig = field(default_factory=DetLossConfig)
    postprocess: DetPostprocessConfig = field(default_factory=DetPostprocessConfig)
    eval: DetEvalConfig = field(default_factory=DetEvalConfig)

    @property
    def num_anchors(self) -> int:
        return self.num_scales * len(self.aspect_ratios)
