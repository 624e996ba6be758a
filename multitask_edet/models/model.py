"""The multi-task network (paper Fig. 3, §5.2): one trunk (backbone + BiFPN), any number of heads.

``model(images)`` returns each head's raw outputs keyed by task name — no loss, no NMS,
no flag that changes what comes back. Which neck levels each head reads is resolved once
at construction, so ``forward`` only indexes a list.

``MultiTaskEfficientDet.from_config(cfg)`` assembles the network a model config describes:
each task builds its head (``Task.build_head``, tasks/base.py), the trunk's levels follow from
the heads' (§5.2: a segmentation head on P2 extends the BiFPN down to P2), the input
normalisation from the backbone's pretrained config. ``create_model`` (models/factory.py)
resolves a config from a variant name and overrides and loads initial weights.

The model shares itself the Hugging Face Hub way (``huggingface_hub.ModelHubMixin``):
``model.save_pretrained(dir)``, ``MultiTaskEfficientDet.from_pretrained(dir_or_repo_id)``,
``model.push_to_hub(repo_id)``; the files are described in multitask_edet/hub.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import dataclasses

import torch
from huggingface_hub import ModelHubMixin
from torch import nn

from .. import tasks as _tasks  # noqa: F401 — importing the package registers the built-in task types
from ..errors import CheckpointError, ConfigError
from ..tasks.base import build_tasks, task_options
from .backbone import Backbone, backbone_input_stats
from .bifpn import BiFPN


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

    # ------------------------------------------------------------------ assembly
    @classmethod
    def from_config(
        cls, cfg: Any, class_names: Mapping[str, Sequence[str]] | None = None, *, initial_weights: bool = True
    ) -> "MultiTaskEfficientDet":
        """The network ``cfg`` (a ModelConfig) describes, freshly initialised.

        Every task's options resolve as tasks/base.py ``resolve_task_config`` says (``class_names``:
        task name → the dataset's classes); the returned model's ``config`` is ``cfg`` resolved:
        every task's full options with its ``type``, the neck's ``min_level``, ``mean``/``std``.
        The backbone starts from the weights ``cfg.backbone`` names (``pretrained``: timm's, through
        the Hugging Face Hub cache; ``weights``: a file); ``initial_weights=False`` builds it
        randomly initialised whatever the config says — for a model whose every weight is loaded
        next (a trained model, a strict checkpoint), which must not need the network or the file.
        """
        task_objs = build_tasks(cfg.tasks, cfg.task_defaults, class_names)
        if not task_objs:
            raise ConfigError("a model needs at least one task: pass tasks=('det',) or your own registered task")
        width, padding = cfg.neck.channels, cfg.neck.padding
        heads = {name: _check_head(name, task.build_head(width, padding)) for name, task in task_objs.items()}
        min_level = cfg.neck.min_level
        if min_level is None:
            min_level = min(min(h.levels) for h in heads.values())
        max_level = cfg.neck.max_level
        if min_level > max_level:
            raise ConfigError(f"neck.min_level {min_level} is above neck.max_level {max_level}")
        mean, std = cfg.mean, cfg.std
        if mean is None or std is None:
            stats = backbone_input_stats(cfg.backbone.name, cfg.backbone.pretrained_tag)
            mean, std = mean or stats[0], std or stats[1]
        cfg = dataclasses.replace(
            cfg,
            neck=dataclasses.replace(cfg.neck, min_level=min_level),
            tasks={name: task_options(t) for name, t in task_objs.items()},
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
        )
        b, n = cfg.backbone, cfg.neck
        fetch = initial_weights and (b.pretrained or b.weights)
        backbone = Backbone(b.name, min_level, max_level, width, n.padding, b.drop_path_rate,
                            b.weights if fetch else None, bool(fetch and b.pretrained), b.pretrained_tag)
        neck = BiFPN(backbone.levels, backbone.channels, width, n.repeats, n.fusion, n.topology, n.padding,
                     n.norm, n.node_conv)
        names = {t: list(task.class_names) for t, task in task_objs.items() if task.class_names is not None}
        return cls(backbone, neck, heads, config=cfg, class_names=names)

    # ------------------------------------------------------------------ sharing (multitask_edet/hub.py)
    def _save_pretrained(self, save_directory: Path) -> None:
        """``save_pretrained``/``push_to_hub`` write config.json, model.safetensors and README.md."""
        from ..hub import model_info, write_pretrained

        write_pretrained(save_directory, self.state_dict(), model_info(self))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, device: str | torch.device = "cpu",
                        **download: Any) -> "MultiTaskEfficientDet":
        """A model from a pretrained folder, a run folder, a ``model.safetensors`` or a Hub repository
        id (``download``: revision, cache_dir, token, force_download, local_files_only), in eval mode
        on ``device``; ``model.class_names`` holds its classes."""
        from ..engine.checkpoint import load_weights
        from ..hub import locate, read_info, weights_file

        path = locate(pretrained_model_name_or_path, **download)
        info = read_info(path)
        sd, _ = load_weights(weights_file(path))
        return cls.build_pretrained(info, sd, str(pretrained_model_name_or_path)).to(device)

    @classmethod
    def build_pretrained(cls, info: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
                         where: str) -> "MultiTaskEfficientDet":
        """The model ``info`` (a ``config.json``) describes, with ``state_dict`` loaded strictly, in eval mode."""
        from ..config import ModelConfig
        from ..config_utils import from_dict
        from ..hub import RELEASE_KEYS

        cfg = from_dict(ModelConfig, dict(info["model_config"]), "model_config")
        model = cls.from_config(cfg, info.get("class_names") or None, initial_weights=False)
        try:
            model.load_state_dict(dict(state_dict))
        except RuntimeError as e:
            raise CheckpointError(f"the weights of {where} do not fit its config: {str(e).splitlines()[0][:300]}") from None
        model.release_info = {k: info[k] for k in RELEASE_KEYS if k in info}
        return model.eval()


def from_pretrained(source: str | Path, *, device: str | torch.device = "cpu", **download: Any) -> MultiTaskEfficientDet:
    """``MultiTaskEfficientDet.from_pretrained``: a model from a pretrained folder, run folder or Hub repository id."""
    return MultiTaskEfficientDet.from_pretrained(source, device=device, **download)


def _check_head(name: str, head: Any) -> nn.Module:
    levels = getattr(head, "levels", None)
    if not isinstance(head, nn.Module) or not levels or not all(isinstance(lv, int) for lv in levels):
        raise ConfigError(
            f"the head of task {name!r} must be an nn.Module with `levels`, a tuple of the pyramid levels it reads; "
            f"got {type(head).__name__} with levels={levels!r}"
        )
    return head
