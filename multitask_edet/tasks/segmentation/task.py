"""The segmentation task (paper §5.2): a per-pixel classifier on BiFPN level P2.

Ties together what the trainer and users need for segmentation: the head (built by the
head registry), the loss on the batch's masks, predictions at each image's original size,
and the mIoU evaluator. Registered as task "seg".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ...config import SegHeadConfig
from ...config_utils import from_dict
from ...errors import ConfigError
from ..base import Task, register_task
from .config import SegLossConfig
from .evaluator import SegmentationEvaluator
from .inference import predict_scores, scores_to_masks
from .loss import SegmentationLoss


@register_task("seg")
class SegmentationTask(Task):
    name = "seg"
    target_keys = ("mask",)

    def __init__(
        self,
        head_cfg: SegHeadConfig | None = None,
        loss_cfg: SegLossConfig | dict[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        ignore_index: int = 255,
        flip_test: bool = False,
    ):
        self.head_cfg = head_cfg or SegHeadConfig()
        if isinstance(loss_cfg, dict):
            loss_cfg = from_dict(SegLossConfig, loss_cfg, "seg.loss")
        self.loss_cfg = loss_cfg or SegLossConfig()
        if class_names is not None and len(class_names) != self.num_classes:
            raise ConfigError(
                f"{len(class_names)} segmentation class names for seg.num_classes={self.num_classes}; "
                "set model seg.num_classes to the dataset's number of classes (background included)"
            )
        self.class_names = list(class_names) if class_names is not None else None
        self.ignore_index = ignore_index
        #: horizontal-flip test-time augmentation in ``predict``
        self.flip_test = flip_test
        self.criterion = SegmentationLoss(self.loss_cfg, ignore_index, prefix=self.name)

    @property
    def num_classes(self) -> int:
        return self.head_cfg.num_classes

    def build_head(self, in_channels: int, padding: str = "pytorch") -> nn.Module:
        """The P2 pixel classifier; ``padding`` follows the neck's ("pytorch" or TF "same")."""
        from ...models.heads import build_head  # the trunk imports tasks; import late

        c = self.head_cfg
        return build_head(
            "seg", in_channels, num_classes=c.num_classes, channels=c.channels, repeats=c.repeats,
            level=c.level, padding=padding,
        )

    def _logits(self, outputs: Any) -> torch.Tensor:
        # Accept the model's whole output dict as well as this task's entry.
        return outputs[self.name] if isinstance(outputs, dict) else outputs

    def loss(self, outputs: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"seg_ce": ..., ...}``, each term already multiplied by its configured weight."""
        return self.criterion(self._logits(outputs), batch.get("mask"))

    def postprocess(self, outputs: Any, batch: dict[str, Any]) -> list[torch.Tensor]:
        """Per image a (H0, W0) uint8 tensor of class indices at the original image size."""
        return scores_to_masks(self._logits(outputs), batch.get("meta"))

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
        """Run ``model`` on the batch's uint8 images (with flip TTA if ``flip_test``) and postprocess."""
        from ...datasets.base import normalize_images  # keeps the dataset adapters out of task imports

        device = next(model.parameters()).device
        images = normalize_images(batch["images"], device)
        return scores_to_masks(predict_scores(model, images, self.name, self.flip_test), batch.get("meta"))

    def evaluator(self, dataset: Any = None, output_dir: str | Path | None = None) -> SegmentationEvaluator:
        """mIoU evaluator; class names from ``dataset.class_names["seg"]`` when given.

        With ``output_dir`` every prediction is also written there as a VOC palette PNG
        named after its image.
        """
        names = self.class_names
        dataset_names = (getattr(dataset, "class_names", None) or {}).get("seg") if dataset is not None else None
        if dataset_names is not None:
            if len(dataset_names) != self.num_classes:
                raise ConfigError(
                    f"the dataset has {len(dataset_names)} segmentation classes but the model's "
                    f"seg.num_classes is {self.num_classes}; set seg.num_classes={len(dataset_names)}"
                )
            names = list(dataset_names)
        return SegmentationEvaluator(self.num_classes, names, self.ignore_index, output_dir)
