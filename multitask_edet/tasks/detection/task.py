"""The detection task (paper §3.3, §5.1): EfficientDet class/box heads on P3–P7.

The object the trainer, the evaluator loop and users call:

    task = DetectionTask(DetHeadConfig(num_classes=20))
    head = task.build_head(in_channels=64)
    losses = task.loss(model(images)["det"], batch)        # {"det_cls", "det_box"}
    preds = task.postprocess(model(images)["det"], batch)  # per image, original pixels
    ev = task.evaluator(dataset, output_dir)               # COCO / VOC AP

Only the head is an nn.Module; anchors are cached per input size and device.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ...config import DetHeadConfig
from ...errors import DatasetError
from ..base import Task, register_task
from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .config import DetEvalConfig, DetLossConfig, DetPostprocessConfig
from .evaluator import DetectionEvaluator
from .labeler import AnchorLabeler, DetTargets, pad_boxes
from .loss import detection_loss
from .matcher import ArgMaxMatcher
from .postprocess import postprocess_detections


class DetectionTask(Task):
    name = "det"
    target_keys = ("boxes", "labels", "ignore")

    def __init__(
        self,
        head_cfg: DetHeadConfig | None = None,
        loss_cfg: DetLossConfig | None = None,
        post_cfg: DetPostprocessConfig | None = None,
        class_names: Sequence[str] | None = None,
        eval_cfg: DetEvalConfig | None = None,
    ):
        self.head_cfg = head_cfg or DetHeadConfig()
        self.loss_cfg = loss_cfg or DetLossConfig()
        self.post_cfg = post_cfg or DetPostprocessConfig()
        self.eval_cfg = eval_cfg or DetEvalConfig()
        self.class_names = list(class_names) if class_names is not None else None
        self.anchors = AnchorGenerator.from_head_config(self.head_cfg)
        self.box_coder = BoxCoder()
        matcher = ArgMaxMatcher(
            self.loss_cfg.match_threshold,
            self.loss_cfg.unmatched_threshold,
            force_match=self.loss_cfg.force_match,
            ignore_ioa=self.loss_cfg.ignore_ioa_threshold,
        )
        self.labeler = AnchorLabeler(self.anchors, matcher, self.box_coder)

    @property
    def num_classes(self) -> int:
        return self.head_cfg.num_classes

    def build_head(self, in_channels: int, padding: str = "pytorch") -> nn.Module:
        """The class/box nets; ``padding`` follows the neck's ("pytorch" or TF "same")."""
        from ...models.heads import build_head

        c = self.head_cfg
        return build_head("det", in_channels, num_classes=c.num_classes, num_anchors=c.num_anchors,
                          repeats=c.repeats, levels=c.levels, padding=padding, prior_prob=c.prior_prob)

    def build_targets(self, batch: dict[str, Any], image_size: tuple[int, int], device) -> DetTargets:
        """Anchor targets of a collated batch (boxes in input pixels, samples may lack them)."""
        n = batch["images"].shape[0]
        boxes = batch.get("boxes") or [None] * n
        labels = batch.get("labels") or [None] * n
        ignore = batch.get("ignore") or [None] * n
        gt = pad_boxes(boxes, labels, ignore, self.num_classes)
        return self.labeler.label(gt, image_size, device)

    def loss(self, outputs: dict[str, list[torch.Tensor]], batch: dict[str, Any],
             targets: DetTargets | None = None) -> dict[str, torch.Tensor]:
        """{"det_cls", "det_box"[, "det_giou"]}; det_box already carries box_loss_weight."""
        cls_out, box_out = outputs["cls"], outputs["box"]
        image_size = self._input_size(batch, cls_out)
        device = cls_out[0].device
        if targets is None:
            targets = self.build_targets(batch, image_size, device)
        anchors = self.anchors(image_size, device) if self.loss_cfg.giou_weight > 0 else None
        return detection_loss(cls_out, box_out, targets, self.num_classes, self.loss_cfg, anchors, self.box_coder)

    def postprocess(self, outputs: dict[str, list[torch.Tensor]],
                    batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Per image: dict(boxes (K, 4) xyxy original pixels, scores (K,), labels (K,) int64)."""
        cls_out, box_out = outputs["cls"], outputs["box"]
        image_size = self._input_size(batch, cls_out)
        anchors = self.anchors(image_size, cls_out[0].device)
        return postprocess_detections(
            cls_out, box_out, anchors, self.num_classes, image_size, batch.get("meta"), self.post_cfg, self.box_coder)

    def evaluator(self, dataset: Any = None, output_dir: str | None = None) -> DetectionEvaluator:
        if dataset is None or not hasattr(dataset, "det_gt"):
            raise DatasetError(
                f"dataset {getattr(dataset, 'name', dataset)!r} has no detection ground truth (det_gt); "
                "evaluate detection on a dataset with box annotations")
        return DetectionEvaluator.from_dataset(dataset, output_dir, self.eval_cfg)

    def _input_size(self, batch: dict[str, Any], cls_out: list[torch.Tensor]) -> tuple[int, int]:
        images = batch.get("images") if batch is not None else None
        if images is not None:
            return int(images.shape[-2]), int(images.shape[-1])
        # no images in the batch: the finest level's map times its stride
        stride = 2 ** self.head_cfg.levels[0]
        return int(cls_out[0].shape[-2]) * stride, int(cls_out[0].shape[-1]) * stride


register_task("det", DetectionTask)
