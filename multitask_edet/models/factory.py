"""``create_model``: a named variant (or a ModelConfig) + tasks → a ready MultiTaskEfficientDet.

The trunk's levels follow from the heads attached (§5.2): detection alone needs P3–P7,
adding the segmentation head (P2) extends the BiFPN down to P2; a custom head on other
levels moves ``min_level`` accordingly, unless ``neck.min_level`` fixes it.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..config import ModelConfig, get_model_config
from ..config_utils import from_dict, merge
from ..errors import CheckpointError, ConfigError
from .backbone import Backbone, key_report, read_state_dict
from .bifpn import BiFPN
from .heads import HEADS, build_head
from .model import MultiTaskEfficientDet

log = logging.getLogger(__name__)

BUILTIN_TASKS = ("det", "seg")


def resolve_config(name_or_cfg: str | ModelConfig | Mapping[str, Any], **overrides) -> ModelConfig:
    """The config of a named variant (or a given one, or a dict of one) with validated overrides.

    Shortcuts: ``backbone_weights=PATH`` (= ``backbone={"weights": PATH}``) and
    ``num_classes=N`` for the one built-in task of the config (else it is ambiguous).
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
        overrides.setdefault("backbone", {})
        overrides["backbone"] = {**overrides["backbone"], "weights": overrides.pop("backbone_weights")}
    if "num_classes" in overrides:
        n = overrides.pop("num_classes")
        tasks = overrides.get("tasks", cfg.tasks)
        builtin = [t for t in tasks if t in BUILTIN_TASKS]
        if len(builtin) != 1:
            raise ConfigError(
                f"num_classes={n} is ambiguous for tasks {tuple(tasks)}; "
                'pass det={"num_classes": …} and/or seg={"num_classes": …}'
            )
        overrides[builtin[0]] = {**overrides.get(builtin[0], {}), "num_classes": n}
    return merge(cfg, overrides) if overrides else cfg


def _builtin_head(task: str, cfg: ModelConfig) -> nn.Module:
    width, padding = cfg.neck.channels, cfg.neck.padding
    if task == "det":
        d = cfg.det
        return build_head(
            "det",
            width,
            num_classes=d.num_classes,
            num_anchors=d.num_anchors,
            repeats=d.repeats,
            levels=d.levels,
            padding=padding,
            prior_prob=d.prior_prob,
        )
    if task == "seg":
        s = cfg.seg
        return build_head(
            "seg", width, num_classes=s.num_classes, channels=s.channels, repeats=s.repeats, level=s.level, padding=padding
        )
    if task in HEADS:
        return build_head(task, width)
    raise ConfigError(
        f"unknown task {task!r}; built-in tasks: {', '.join(BUILTIN_TASKS)}; registered heads: {', '.join(HEADS.names())} "
        "(or pass a module via extra_heads)"
    )


def _extra_head(name: str, spec: Any, width: int) -> nn.Module:
    """``extra_heads`` value: a module, a registered head name, or ``{"head": name, **kwargs}``."""
    if isinstance(spec, nn.Module):
        if not getattr(spec, "levels", None):
            raise ConfigError(f"extra head {name!r} must have a `levels` attribute (tuple of pyramid levels)")
        return spec
    if isinstance(spec, str):
        return build_head(spec, width)
    if isinstance(spec, Mapping) and "head" in spec:
        kwargs = {k: v for k, v in spec.items() if k != "head"}
        return build_head(spec["head"], width, **kwargs)
    raise ConfigError(
        f"extra_heads[{name!r}] must be an nn.Module, a registered head name or "
        f'{{"head": name, **kwargs}}; got {spec!r}'
    )


def create_model(
    name_or_cfg: str | ModelConfig | Mapping[str, Any],
    tasks: tuple[str, ...] | list[str] | str | None = None,
    checkpoint: str | Path | None = None,
    extra_heads: Mapping[str, Any] | None = None,
    strict: bool = True,
    **overrides,
) -> MultiTaskEfficientDet:
    """Build a model. ``tasks`` defaults to the config's; ``checkpoint`` loads our safetensors/
    .pth weights or an effdet state dict (converted on the fly).

    ``strict=False`` fine-tunes from a checkpoint of another class set or head set (a 90-class
    COCO detector into a 20-class VOC model, a det-only checkpoint under a new seg head): every
    weight whose name and shape fit is loaded, the rest keep their fresh initialisation, and
    what was left out is logged.
    """
    if isinstance(tasks, str):
        tasks = tuple(t.strip() for t in tasks.split(",") if t.strip())
    if tasks is not None:
        overrides["tasks"] = tuple(tasks)
    cfg = resolve_config(name_or_cfg, **overrides)
    width = cfg.neck.channels

    heads: dict[str, nn.Module] = {t: _builtin_head(t, cfg) for t in cfg.tasks}
    for name, spec in (extra_heads or {}).items():
        if name in heads:
            raise ConfigError(f"extra head {name!r} clashes with the task of the same name")
        heads[name] = _extra_head(name, spec, width)
    if not heads:
        raise ConfigError("a model needs at least one head: pass tasks=('det',) or extra_heads")

    min_level = cfg.neck.min_level
    if min_level is None:
        min_level = min(min(h.levels) for h in heads.values())
    max_level = cfg.neck.max_level
    if min_level > max_level:
        raise ConfigError(f"neck.min_level {min_level} is above neck.max_level {max_level}")
    cfg = dataclasses.replace(cfg, neck=dataclasses.replace(cfg.neck, min_level=min_level))

    b = cfg.backbone
    # A strict checkpoint replaces every weight: the backbone's own weights need not be fetched first.
    replaced = checkpoint is not None and strict
    backbone = Backbone(b.name, min_level, max_level, width, cfg.neck.padding, b.drop_path_rate,
                        None if replaced else b.weights, b.pretrained and not replaced, b.pretrained_tag)
    n = cfg.neck
    neck = BiFPN(backbone.levels, backbone.channels, width, n.repeats, n.fusion, n.topology, n.padding)
    model = MultiTaskEfficientDet(backbone, neck, heads, config=cfg)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, strict=strict)
    return model


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> list[str]:
    """Load weights saved by us (safetensors / torch) or an effdet state dict; ``effdet:NAME`` or a
    URL are fetched through torch.hub's cache first (compat/effdet_weights.py).

    Strict by default: any missing, unexpected or wrong-shape key is an error listing them.
    ``strict=False`` loads what fits and returns the model keys left at their initialisation.
    """
    from ..compat.effdet import convert_effdet_state_dict, is_effdet_state_dict
    from ..compat.effdet_weights import is_remote_checkpoint, load_remote_checkpoint

    sd = load_remote_checkpoint(path) if is_remote_checkpoint(path) else read_state_dict(path)

    if is_effdet_state_dict(sd):
        # Fine-tuning converts into the detector effdet trained (its class count, P3-P7) and
        # then loads what fits; a strict load converts straight into this model.
        target = model
        if not strict and model.config is not None:
            neck = dataclasses.replace(model.config.neck, min_level=None)
            target = dataclasses.replace(model.config, tasks=("det",), neck=neck)
        sd = convert_effdet_state_dict(sd, target)
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
    """The most common mismatch: a checkpoint trained for another number of classes."""
    hints = []
    for task, head in model.heads.items():
        key = {"det": f"heads.{task}.cls_net.predict.conv_pw.weight", "seg": f"heads.{task}.classifier.weight"}.get(task)
        if key in sd and hasattr(head, "num_classes"):
            n = sd[key].shape[0] // getattr(head, "num_anchors", 1)
            if n != head.num_classes:
                hints.append(f'{task}={{"num_classes": {n}}}')
    return f" — the checkpoint has other class counts: pass {', '.join(hints)}, or strict=False to fine-tune with fresh class predictors" if hints else ""
