"""``create_model``: a named variant (or a ModelConfig) + tasks → a ready MultiTaskEfficientDet.

Every head is built by its task (``Task.build_head``, tasks/base.py), built-in or a user's:
the factory resolves each task's options (its type's defaults ← the variant's defaults for
the type ← the dataset's class count ← the task's own options) and asks the task for its
head. The trunk's levels follow from the heads attached (§5.2): detection alone needs P3–P7,
a segmentation head on P2 extends the BiFPN down to P2; a custom head on other levels moves
``min_level`` accordingly, unless ``neck.min_level`` fixes it.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..compat.effdet import (
    convert_effdet_checkpoint, convert_effdet_state_dict, effdet_num_classes, is_effdet_state_dict, resolve_model_name,
)  # fmt: skip
from ..compat.effdet_weights import PREFIX, is_remote_checkpoint, load_remote_checkpoint, resolve_effdet_weights
from ..config import ModelConfig, get_model_config
from ..config_utils import from_dict, merge
from ..datasets.coco import COCO_CLASSES
from ..errors import CheckpointError, ConfigError
from ..tasks.base import Task, build_tasks
from ..state_dict import key_report, read_state_dict
from .heads import DetectionHead
from .model import MultiTaskEfficientDet

log = logging.getLogger(__name__)

_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def _task_dict(tasks: str | Sequence[str] | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``"det,seg"``, ``["det", "seg"]`` or ``{"drivable": {"type": "seg"}}`` → {name: options}."""
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if isinstance(tasks, Mapping):
        return {str(k): dict(v or {}) for k, v in tasks.items()}
    return {str(t): {} for t in tasks}


def resolve_config(name_or_cfg: str | ModelConfig | Mapping[str, Any], *, where: str = "", **overrides) -> ModelConfig:
    """The config of a named variant (or a given one, or a dict of one) with validated overrides.

    ``overrides`` are ModelConfig fields (``backbone={...}``, ``neck={...}``, ``image_size``,
    ``tasks``) and task sections by task name (``det={"num_classes": 20}``), plus two shortcuts:
    ``backbone_weights=PATH`` and ``num_classes=N`` for a model with one classifying task.
    ``where`` prefixes the key paths named in errors (e.g. "model").
    """
    if isinstance(name_or_cfg, ModelConfig):
        cfg = name_or_cfg
    elif isinstance(name_or_cfg, Mapping):
        cfg = from_dict(ModelConfig, dict(name_or_cfg), "model")
    else:
        try:
            cfg = get_model_config(name_or_cfg)
        except KeyError as e:
            raise ConfigError(e.args[0]) from None
    overrides = dict(overrides)
    if "backbone_weights" in overrides:
        overrides["backbone"] = {**overrides.get("backbone", {}), "weights": overrides.pop("backbone_weights")}
    tasks = _task_dict(overrides.pop("tasks")) if "tasks" in overrides else {k: dict(v) for k, v in cfg.tasks.items()}
    num_classes = overrides.pop("num_classes", None)
    for key in [k for k in overrides if k not in _MODEL_FIELDS]:
        if key not in tasks:
            raise ConfigError(
                f"create_model: {key!r} is neither a model setting ({', '.join(sorted(_MODEL_FIELDS))}) "
                f"nor a task of the model (tasks: {', '.join(tasks) or 'none'})"
            )
        tasks[key] = {**tasks[key], **dict(overrides.pop(key) or {})}
    if num_classes is not None:
        with_classes = [t for t in tasks if _has_num_classes(t, tasks[t])]
        if len(with_classes) != 1:
            raise ConfigError(
                f"num_classes={num_classes} is ambiguous for tasks {list(tasks)}; "
                'pass each task its own, e.g. det={"num_classes": 20}, seg={"num_classes": 21}'
            )
        tasks[with_classes[0]] = {**tasks[with_classes[0]], "num_classes": num_classes}
    overrides["tasks"] = tasks
    return merge(cfg, overrides, where)


def _has_num_classes(name: str, options: Mapping[str, Any]) -> bool:
    from ..tasks.base import TASKS, task_type_of

    cls = TASKS.get(task_type_of(name, options))
    return "num_classes" in {f.name for f in dataclasses.fields(cls.Config)}


def build_model_tasks(
    cfg: ModelConfig, class_names: Mapping[str, Sequence[str]] | None = None
) -> dict[str, Task]:
    """The task objects of a model config (options resolved as tasks/base.py says).

    ``class_names``: task name → class names (from the dataset); each sets the task's class count
    unless its options give one.
    """
    return build_tasks(cfg.tasks, cfg.task_defaults, class_names)


def create_model(
    name_or_cfg: str | ModelConfig | Mapping[str, Any],
    tasks: str | Sequence[str] | Mapping[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    strict: bool = True,
    class_names: Mapping[str, Sequence[str]] | None = None,
    initial_weights: bool = True,
    **overrides,
) -> MultiTaskEfficientDet:
    """Build a model.

    Args:
        name_or_cfg: a variant (``list_models()``), a ModelConfig, or a dict of one.
        tasks: the heads, by task name: ``"det,seg"``, ``["det", "seg"]``, or with options
            ``{"drivable": {"type": "seg", "num_classes": 3}, "lane": {"type": "seg"}}``;
            default: the variant's. A name that is not a registered task type needs a ``type``.
        checkpoint: our safetensors/.pth weights or an effdet state dict (converted on the fly).
        strict: ``False`` fine-tunes from a checkpoint of another class set or head set (a
            90-class COCO detector into a 20-class VOC model, a det-only checkpoint under a new
            seg head): every weight whose name and shape fit is loaded, the rest keep their
            fresh initialisation, and what was left out is logged.
        class_names: task name → class names; sets each task's class count unless given.
        initial_weights: ``False`` leaves the backbone randomly initialised whatever
            ``backbone.pretrained``/``backbone.weights`` say, for a model whose weights are all
            loaded next (a resumed or trained one); a strict ``checkpoint`` implies it.
        overrides: model settings and task sections by name (see ``resolve_config``).

    The returned model's ``config.tasks`` holds every task's full options (with its ``type``), so
    ``create_model(model.config)`` rebuilds the same network and ``build_model_tasks(model.config)``
    the same tasks.
    """
    if tasks is not None:
        overrides["tasks"] = tasks
    cfg = resolve_config(name_or_cfg, **overrides)
    # A strict checkpoint replaces every weight: the backbone's own weights need not be fetched first.
    fetch = initial_weights and (checkpoint is None or not strict)
    model = MultiTaskEfficientDet.from_config(cfg, class_names, initial_weights=fetch)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, strict=strict)
    return model


def detection_task_name(model: nn.Module) -> str | None:
    """The model's (first) task with an EfficientDet class/box head — the one effdet weights convert into."""
    return next((name for name, head in model.heads.items() if isinstance(head, DetectionHead)), None)


def effdet_model(name: str, sd: Mapping[str, torch.Tensor]) -> MultiTaskEfficientDet:
    """Our detector that an effdet state dict ``sd`` of variant ``name`` converts into, on the meta
    device (no memory): its class count is read from ``sd``; effdet's names are accepted."""
    with torch.device("meta"):
        return create_model(resolve_model_name(name), num_classes=effdet_num_classes(dict(sd)))


def coco_detector(name: str = "tf_efficientdet_d0", device: str | torch.device = "cpu", **det_options):
    """(model, class names) of a published COCO detector, ready to predict: what
    ``mtedet predict --model NAME --weights coco`` runs. Its 90 outputs are COCO category ids
    1–90 (unused ids keep an empty name), also in ``model.class_names["det"]``; its input
    normalisation is the one it was trained with. ``det_options``: the detection task's
    options (e.g. ``postprocess={"nms": "soft_nms"}``)."""
    w = resolve_effdet_weights(name)
    names = [COCO_CLASSES.get(i + 1, "") for i in range(90)]
    model = create_model(w.model, tasks={"det": {**det_options, "num_classes": 90}}, checkpoint=PREFIX + w.name,
                         class_names={"det": names}, mean=w.mean, std=w.std)
    return model.to(device).eval(), names


def convert_effdet_file(src: str | Path, dst: str | Path, name: str) -> dict[str, torch.Tensor]:
    """``mtedet convert-effdet``: an effdet checkpoint file → our safetensors for variant ``name``."""
    return convert_effdet_checkpoint(src, dst, effdet_model(name, read_state_dict(src)))


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> list[str]:
    """Load weights saved by us (safetensors / torch) or an effdet state dict; ``effdet:NAME`` or a
    URL are fetched through torch.hub's cache first (compat/effdet_weights.py).

    Strict by default: any missing, unexpected or wrong-shape key is an error listing them.
    ``strict=False`` loads what fits and returns the model keys left at their initialisation.
    """
    sd = load_remote_checkpoint(path) if is_remote_checkpoint(path) else read_state_dict(path)
    if is_effdet_state_dict(sd):
        head = detection_task_name(model)
        if head is None:
            raise CheckpointError(f"{path} is an effdet detector: load it into a model with a detection task")
        target = model
        if not strict and model.config is not None:
            # Fine-tuning converts into the detector effdet trained (its class count, P3-P7)
            # and then loads what fits; a strict load converts straight into this model.
            det = {**model.config.tasks[head], "num_classes": effdet_num_classes(sd)}
            neck = dataclasses.replace(model.config.neck, min_level=None)
            with torch.device("meta"):  # structure only: no backbone weights fetched
                target = MultiTaskEfficientDet.from_config(
                    dataclasses.replace(model.config, tasks={head: det}, neck=neck), initial_weights=False
                )
        sd = convert_effdet_state_dict(sd, target, head=head)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong_keys = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in wrong_keys]
    if not strict:
        fit = {k: v for k, v in sd.items() if k in own and k not in wrong_keys}
        if not fit:
            raise CheckpointError(f"checkpoint {path} shares no weight with model {getattr(model.config, 'name', '?')}")
        with torch.no_grad():
            model.load_state_dict(fit, strict=False)
        left = missing + wrong_keys
        if left or unexpected:
            log.warning(
                "fine-tuning from %s: %d tensors loaded; kept the fresh initialisation of %d (%s); "
                "ignored %d checkpoint tensors the model lacks",
                path, len(fit), len(left), ", ".join(left[:6]) + (" …" if len(left) > 6 else ""), len(unexpected),
            )
        return left
    if missing or unexpected or wrong:
        shapes = f"; shape mismatches (checkpoint vs model): {', '.join(wrong[:10])}" if wrong else ""
        raise CheckpointError(
            f"checkpoint {path} does not fit model {getattr(model.config, 'name', '?')} "
            f"with heads {list(model.heads)}: {key_report(missing, unexpected)}{shapes}{_class_hint(model, sd)}"
        )
    with torch.no_grad():
        model.load_state_dict(sd)
    return []


def _class_hint(model: nn.Module, sd: dict[str, torch.Tensor]) -> str:
    """The most common mismatch: a checkpoint trained for another number of classes.

    A head's output weight whose first dimension is a multiple of its class count (anchors ×
    classes for detection, classes for segmentation) tells the checkpoint's count.
    """
    hints = []
    own = model.state_dict()
    for task, head in model.heads.items():
        n_own = getattr(head, "num_classes", None)
        for k, v in own.items():
            if not (n_own and k.startswith(f"heads.{task}.") and k in sd and v.dim() and sd[k].shape != v.shape):
                continue
            per = v.shape[0] // n_own if v.shape[0] % n_own == 0 else 0
            if per and sd[k].shape[1:] == v.shape[1:] and sd[k].shape[0] % per == 0:
                hints.append(f'{task}={{"num_classes": {sd[k].shape[0] // per}}}')
                break
    return f" — the checkpoint has other class counts: pass {', '.join(hints)}, or strict=False to fine-tune with fresh class predictors" if hints else ""
