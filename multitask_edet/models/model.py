"""The multi-task network (paper Fig. 3, §5.2): one trunk (backbone + BiFPN), any number of heads.

``model(images)`` returns each head's raw outputs keyed by task name — no loss, no NMS,
no flag that changes what comes back. Which neck levels each head reads is resolved once
at construction, so ``forward`` only indexes a list.

The model shares itself the Hugging Face Hub way (``huggingface_hub.ModelHubMixin``):
``model.save_pretrained(dir)``, ``MultiTaskEfficientDet.from_pretrained(dir_or_repo_id)``,
``model.push_to_hub(repo_id)``; the files are described in multitask_edet/hub.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from huggingface_hub import ModelHubMixin
from torch import nn

from ..errors import ConfigError


class InputSizeError(ConfigError):
    """An input whose height or width is not a multiple of 2**max_level."""


class MultiTaskEfficientDet(
    nn.Module,
    ModelHubMixin,
    library_name="multitask_edet",
    tags=["efficientdet", "object-detection", "image-segmentation"],
):
    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        heads: Mapping[str, nn.Module],
        config: Any = None,
        class_names: Mapping[str, Sequence[str]] | None = None,
    ):
        super().__init__()
        #: task name → class names (from the dataset); saved with the model by ``save_pretrained``
        self.class_names = {t: list(v) for t, v in (class_names or {}).items()}
        #: what the model knows of the run that trained it (hub.py RELEASE_KEYS: experiment
        #: config, step, evaluation metrics); ``save_pretrained`` writes it, the model card shows it
        self.release_info: dict[str, Any] = {}
        levels = tuple(neck.levels)
        self.min_level, self.max_level = levels[0], levels[-1]
        if tuple(backbone.levels) != levels:
            raise ConfigError(f"backbone levels {backbone.levels} differ from the neck's {levels}")
        self.backbone = backbone
        self.neck = neck
        self.heads = nn.ModuleDict(heads)
        self.config = config
        routes = {}
        for name, head in self.heads.items():
            outside = [lv for lv in head.levels if lv not in levels]
            if outside:
                raise ConfigError(
                    f"head {name!r} reads level(s) {outside}, but the trunk has P{levels[0]}–P{levels[-1]}; "
                    f"set neck.min_level / neck.max_level to include them"
                )
            routes[name] = tuple(lv - self.min_level for lv in head.levels)
        self._routes = routes
        self.stride = 2**self.max_level

    def check_input_size(self, height: int, width: int) -> None:
        m = self.stride
        if height % m or width % m:
            up = lambda v: -(-v // m) * m  # noqa: E731 — round up to the multiple
            raise InputSizeError(
                f"input {height}x{width} is not divisible by {m} (2**max_level, max_level={self.max_level}); "
                f"use a multiple of {m} such as {up(height)}x{up(width)} (pad or resize the images)"
            )

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The BiFPN's outputs, levels ``min_level … max_level``."""
        self.check_input_size(images.shape[-2], images.shape[-1])
        return self.neck(self.backbone(images))

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        feats = self.features(images)
        return {name: head([feats[i] for i in self._routes[name]]) for name, head in self.heads.items()}

    # ------------------------------------------------------------------ sharing (multitask_edet/hub.py)
    def _save_pretrained(self, save_directory: Path) -> None:
        """``save_pretrained``/``push_to_hub`` write config.json, model.safetensors and README.md."""
        from ..hub import model_info, write_pretrained

        write_pretrained(save_directory, self.state_dict(), model_info(self))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, device: str | torch.device = "cpu",
                        **download: Any) -> "MultiTaskEfficientDet":
        """A model from a pretrained folder, a run folder or a Hub repository id (``download``:
        revision, cache_dir, token, force_download, local_files_only), in eval mode."""
        from ..hub import from_pretrained

        return from_pretrained(pretrained_model_name_or_path, device=device, **download)
