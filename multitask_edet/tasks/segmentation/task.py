"""The segmentation task (paper §5.2): a per-pixel classifier on BiFPN level P2.

Ties together what the trainer and users need for segmentation: the head, the loss on the
batch's masks, predictions at each image's original size (with optional flip test-time
augmentation, applied wherever the task predicts), and the mIoU evaluator. It learns from a
"mask" annotation (datasets/base.py); several instances with their own class sets can share a
trunk (``drivable`` and ``lane`` on BDD100K, both of type "seg").
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ...datasets.io import IGNORE_INDEX
from ...errors import ConfigError
from ...models.heads import SegmentationHead, SemanticFPNHead
from ..base import ExportGeometry, Forward, Task, register_task
from ..drawing import blend_mask
from .config import SegmentationConfig
from .evaluator import SegmentationEvaluator
from .inference import input_masks, original_masks, scores_to_masks
from .loss import SegmentationLoss
from .paper_metrics import PaperSegMetrics


@register_task("seg")
class SegmentationTask(Task):
    Config = SegmentationConfig
    annotation = "mask"

    def __init__(self, config: SegmentationConfig | dict | None = None, *, name: str | None = None,
                 class_names=None):
        super().__init__(config, name=name, class_names=class_names)
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"{len(self.class_names)} segmentation class names for {self.name}.num_classes={self.num_classes}; "
                f"set {self.name}.num_classes to the dataset's number of classes (background included)"
            )
        self.ignore_index = IGNORE_INDEX
        self.criterion = SegmentationLoss(self.config.loss, IGNORE_INDEX, prefix=self.name)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def build_head(self, in_channels: int, padding: str = "pytorch") -> nn.Module:
        c = self.config
        if c.head == "semantic-fpn":
            return SemanticFPNHead(in_channels, num_classes=c.num_classes, channels=c.channels, level=c.level,
                                   merge_levels=c.merge_levels, dropout=c.dropout)
        return SegmentationHead(in_channels, num_classes=c.num_classes, channels=c.channels, repeats=c.repeats,
                                level=c.level, padding=padding, merge_levels=c.merge_levels, dropout=c.dropout)

    def loss(self, outputs: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"<name>_ce": ..., ...}``, each term already multiplied by its configured weight."""
        return self.criterion(outputs, batch.get(self.source))

    def postprocess(self, outputs: torch.Tensor, batch: dict[str, Any]) -> list[torch.Tensor]:
        """Per image a (H0, W0) uint8 tensor of class indices at the original image size."""
        return scores_to_masks(outputs, batch.get("meta"))

    def class_scores(self, forward: Forward) -> torch.Tensor:
        """(B, C, H, W) scores whose argmax is the class: the logits, or with ``flip_test`` the
        softmax of the image and of its mirror (mirrored back), averaged."""
        logits = forward()[self.name]
        if not self.config.flip_test:
            return logits
        mirrored = forward(flip=True)[self.name]
        return (logits.float().softmax(1) + mirrored.float().flip(-1).softmax(1)) / 2

    def predict(self, forward: Forward, batch: dict[str, Any]) -> list[torch.Tensor]:
        """Masks at the original size (flip test-time augmentation with ``flip_test``)."""
        return self.postprocess(self.class_scores(forward), batch)

    def export_postprocess(self, forward: Forward, geometry: ExportGeometry) -> dict[str, torch.Tensor]:
        """Class indices (255 where there is no class; int64 and -1 with 256 classes or more):
        ``mask`` (B, H, W) at the input size, 255 on the letterbox padding (``input_masks``), and
        ``mask_original`` (B, Hmax, Wmax) at every image's original size, what ``predict`` gives
        (``original_masks``: image i's mask is its top-left (h0, w0), 255 beyond)."""
        scores = self.class_scores(forward)
        return {"mask": input_masks(scores, geometry.orig_sizes),
                "mask_original": original_masks(scores, geometry.orig_sizes)}

    def export_axes(self) -> dict[str, dict[int, str]]:
        return {"mask": {1: "height", 2: "width"}, "mask_original": {1: "orig_height", 2: "orig_width"}}

    def evaluator(self, dataset: Any = None, output_dir: str | Path | None = None) -> SegmentationEvaluator:
        """mIoU evaluator; class names from the dataset's annotation when given.

        With ``save_eval_masks`` and an ``output_dir`` every prediction is also written there as
        a VOC palette PNG named after its image. With ``eval.paper_protocol`` a driving paper's
        figures are reported beside the standard ones (paper_metrics.py).
        """
        names = self.class_names
        dataset_names = (getattr(dataset, "class_names", None) or {}).get(self.source) if dataset is not None else None
        if dataset_names is not None:
            if len(dataset_names) != self.num_classes:
                raise ConfigError(
                    f"the dataset has {len(dataset_names)} classes in its {self.source!r} masks but "
                    f"{self.name}.num_classes is {self.num_classes}; set {self.name}.num_classes={len(dataset_names)}"
                )
            names = list(dataset_names)
        out = output_dir if self.config.save_eval_masks else None
        return SegmentationEvaluator(self.num_classes, names, self.ignore_index, out, annotation=self.source,
                                     paper=self._paper_metrics(names))

    def _paper_metrics(self, names: list[str] | None) -> PaperSegMetrics | None:
        e = self.config.eval
        if e.paper_protocol == "none":
            return None
        names = list(names) if names is not None else [f"class_{i}" for i in range(self.num_classes)]
        if e.paper_class is None:
            index = self.num_classes - 1
        elif isinstance(e.paper_class, int):
            index = e.paper_class
        elif e.paper_class in names:
            index = names.index(e.paper_class)
        else:
            raise ConfigError(f"{self.name}.eval.paper_class={e.paper_class!r} is not one of the classes {names}")
        if not 0 <= index < self.num_classes:
            raise ConfigError(f"{self.name}.eval.paper_class={index} is outside the class indices 0..{self.num_classes - 1}")
        return PaperSegMetrics(e.paper_protocol, self.num_classes, index, names[index], self.ignore_index)

    # ------------------------------------------------------------------ outputs for people and runtimes
    def record(self, prediction: torch.Tensor, *, score_threshold: float = 0.0,
               save: Callable[[str, Any], str] | None = None) -> dict[str, Any]:
        """The mask's file (a palette PNG written by ``save``) and the share of the image each class covers."""
        mask = prediction.cpu().numpy()
        names = self.class_names or []
        rec: dict[str, Any] = {}
        if save is not None:
            rec["mask"] = save("mask", mask.astype(np.uint8))
        values, counts = np.unique(mask, return_counts=True)
        rec["classes"] = {
            (names[v] if v < len(names) else str(int(v))): float(c) / mask.size
            for v, c in zip(values.tolist(), counts.tolist()) if v != self.ignore_index
        }
        return rec

    def draw(self, canvas, prediction: torch.Tensor, *, score_threshold: float = 0.0) -> None:
        blend_mask(canvas, prediction.cpu().numpy())

    def export_outputs(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": outputs}

    def describe_export(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "class_names": self.class_names,
            "num_classes": self.num_classes,
            "output": f"{self.name}_logits: (B, C, H, W) class logits at the input size; argmax over C, crop the "
            "padding, resize to the original size",
        }
