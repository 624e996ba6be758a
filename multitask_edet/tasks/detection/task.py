"""The detection task (paper §3.3, §5.1): EfficientDet class/box heads on P3–P7.

The object the trainer, evaluation, prediction and export call:

    task = DetectionTask(DetectionConfig(num_classes=20))
    head = task.build_head(in_channels=64)
    losses = task.loss(model(images)["det"], batch)        # {"det_cls", "det_box"}
    preds = task.postprocess(model(images)["det"], batch)  # per image, original pixels
    ev = task.evaluator(dataset, output_dir)               # COCO / VOC AP

It learns from a "boxes" annotation (datasets/base.py). Only the head is an nn.Module;
anchors are cached per input size and device.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ...config_utils import to_dict
from ...errors import DatasetError
from ...models.heads import DetectionHead
from ..base import ExportGeometry, Forward, Task, register_task
from ..drawing import draw_boxes
from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .config import DetectionConfig
from .evaluator import DetectionEvaluator
from .export import check_detections, export_detections
from .labeler import AnchorLabeler, DetTargets, pad_boxes
from .loss import detection_loss
from .matcher import ArgMaxMatcher
from .postprocess import postprocess_detections


@register_task("det")
class DetectionTask(Task):
    Config = DetectionConfig
    annotation = "boxes"

    def __init__(self, config: DetectionConfig | dict | None = None, *, name: str | None = None,
                 class_names=None):
        super().__init__(config, name=name, class_names=class_names)
        c: DetectionConfig = self.config
        self.anchors = AnchorGenerator.from_head_config(c)
        self.box_coder = BoxCoder()
        matcher = ArgMaxMatcher(
            c.loss.match_threshold,
            c.loss.unmatched_threshold,
            force_match=c.loss.force_match,
            ignore_ioa=c.loss.ignore_ioa_threshold,
        )
        self.labeler = AnchorLabeler(self.anchors, matcher, self.box_coder)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def build_head(self, in_channels: int, padding: str = "pytorch") -> nn.Module:
        c = self.config
        return DetectionHead(in_channels, num_classes=c.num_classes, num_anchors=c.num_anchors, repeats=c.repeats,
                             levels=c.levels, padding=padding, prior_prob=c.prior_prob)

    # ------------------------------------------------------------------ training
    def build_targets(self, batch: dict[str, Any], image_size: tuple[int, int], device) -> DetTargets:
        """Anchor targets of a collated batch (boxes in input pixels, samples may lack them)."""
        n = batch["images"].shape[0]
        anns = batch.get(self.source) or [None] * n
        gt = pad_boxes(
            [a["boxes"] if a is not None else None for a in anns],
            [a["labels"] if a is not None else None for a in anns],
            [a.get("ignore") if a is not None else None for a in anns],
            self.num_classes,
        )
        return self.labeler.label(gt, image_size, device)

    def loss(self, outputs: dict[str, list[torch.Tensor]], batch: dict[str, Any],
             targets: DetTargets | None = None) -> dict[str, torch.Tensor]:
        """{"det_cls", "det_box"[, "det_giou"]}; det_box already carries box_loss_weight."""
        cls_out, box_out = outputs["cls"], outputs["box"]
        image_size = self._input_size(batch, cls_out)
        device = cls_out[0].device
        if targets is None:
            targets = self.build_targets(batch, image_size, device)
        loss_cfg = self.config.loss
        anchors = self.anchors(image_size, device) if loss_cfg.giou_weight > 0 else None
        return detection_loss(cls_out, box_out, targets, self.num_classes, loss_cfg, anchors, self.box_coder)

    # ------------------------------------------------------------------ inference
    def postprocess(self, outputs: dict[str, list[torch.Tensor]],
                    batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Per image: dict(boxes (K, 4) xyxy original pixels, scores (K,), labels (K,) int64)."""
        cls_out, box_out = outputs["cls"], outputs["box"]
        image_size = self._input_size(batch, cls_out)
        anchors = self.anchors(image_size, cls_out[0].device)
        return postprocess_detections(cls_out, box_out, anchors, self.num_classes, image_size, batch.get("meta"),
                                      self.config.postprocess, self.box_coder)

    def evaluator(self, dataset: Any = None, output_dir: str | None = None) -> DetectionEvaluator:
        if dataset is None or self.source not in (getattr(dataset, "annotations", None) or {}):
            raise DatasetError(
                f"dataset {getattr(dataset, 'name', dataset)!r} has no {self.source!r} box annotation to evaluate "
                f"task {self.name!r} on; evaluate detection on a dataset with box annotations")
        return DetectionEvaluator.from_dataset(dataset, output_dir, self.config.eval, annotation=self.source)

    def _input_size(self, batch: dict[str, Any], cls_out: list[torch.Tensor]) -> tuple[int, int]:
        images = batch.get("images") if batch is not None else None
        if images is not None:
            return int(images.shape[-2]), int(images.shape[-1])
        # no images in the batch: the finest level's map times its stride
        stride = 2 ** self.config.levels[0]
        return int(cls_out[0].shape[-2]) * stride, int(cls_out[0].shape[-1]) * stride

    # ------------------------------------------------------------------ outputs for people and runtimes
    def _name_of(self, label: int) -> str:
        names = self.class_names or []
        return names[label] if 0 <= label < len(names) else str(label)

    def record(self, prediction: dict[str, torch.Tensor], *, score_threshold: float = 0.0,
               save: Callable[[str, Any], str] | None = None) -> list[dict[str, Any]]:
        """Detections scoring at least ``score_threshold``: box (xyxy, original pixels), score, label, class."""
        out = []
        for box, score, label in zip(prediction["boxes"].tolist(), prediction["scores"].tolist(),
                                     prediction["labels"].tolist()):
            if score >= score_threshold:
                out.append({"box": [round(v, 2) for v in box], "score": round(score, 4), "label": int(label),
                            "class": self._name_of(int(label))})
        return out

    def draw(self, canvas, prediction: dict[str, torch.Tensor], *, score_threshold: float = 0.0) -> None:
        keep = prediction["scores"] >= score_threshold
        labels = prediction["labels"][keep].tolist()
        draw_boxes(canvas, prediction["boxes"][keep].tolist(), prediction["scores"][keep].tolist(), labels,
                   [self._name_of(int(k)) for k in labels])

    def export_outputs(self, outputs: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        levels = self.config.levels
        named = {f"cls_p{lv}": t for lv, t in zip(levels, outputs["cls"])}
        named.update({f"box_p{lv}": t for lv, t in zip(levels, outputs["box"])})
        return named

    def export_postprocess(self, forward: Forward, geometry: ExportGeometry) -> dict[str, torch.Tensor]:
        """boxes (B, D, 4) xyxy original pixels, scores (B, D), labels (B, D), num_detections (B,):
        ``postprocess`` inside the graph, NMS included (tasks/detection/export.py)."""
        out = forward()[self.name]
        return export_detections(out["cls"], out["box"], self.anchors, self.num_classes, geometry,
                                 self.config.postprocess, self.box_coder)

    def export_check(self, got, ref, tolerance: float = 1e-4) -> dict[str, float]:
        """Tie-aware: detections are matched, not compared row by row (tasks/detection/export.py)."""
        return check_detections(got, ref, tolerance)

    def export_arrays(self, image_size: tuple[int, int]) -> dict[str, np.ndarray]:
        """Arrays a runtime needs besides the graph: the anchors in the order of the flattened outputs."""
        return {"anchors": self.anchors(image_size, "cpu").numpy().astype(np.float32)}

    def describe_export(self) -> dict[str, Any]:
        c = self.config
        return {
            "type": self.type_name,
            "class_names": self.class_names,
            "num_classes": c.num_classes,
            "anchors_per_location": c.num_anchors,
            "levels": list(c.levels),
            "cls_outputs": f"{self.name}_cls_p*: (B, A*C, h, w) logits; sigmoid per class (focal loss, no background class)",
            "box_outputs": f"{self.name}_box_p*: (B, A*4, h, w) box codes (ty, tx, th, tw) relative to the anchors",
            "flatten": "per level (B, A*K, h, w) -> permute (B, h, w, A*K) -> reshape (B, h*w*A, K); "
            "concatenate levels in order: row i pairs with anchors[i]",
            "decode": "yc = ty*ha + yca; xc = tx*wa + xca; h = exp(th)*ha; w = exp(tw)*wa "
            "(ha, wa, yca, xca: anchor height, width, centre); boxes xyxy in input pixels",
            "postprocess": to_dict(c.postprocess),
        }
