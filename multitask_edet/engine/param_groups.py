"""Which parameters train, at what learning rate and with what weight decay.

Joint-trunk experiments need control over how the tasks share the trunk: freeze the backbone
(or one of its stages), the BiFPN, or a whole task's head; give a part its own learning-rate
multiplier. Part names are module paths in ``MultiTaskEfficientDet``: ``backbone``, ``neck``,
``heads.<task>`` (``<task>`` alone is accepted), or any deeper path such as
``backbone.body.blocks.0`` (a backbone stage).

Frozen means frozen: ``requires_grad`` is off, and the BatchNorm layers inside the frozen part
stay in eval mode so their running statistics do not move either. ``model.train()`` would
switch them back, so ``apply_freeze`` installs a forward pre-hook on each frozen BN that puts
it back in eval mode before every forward: the trainer needs no extra call after
``model.train()``. (Convert to SyncBatchNorm *before* ``apply_freeze``: the conversion builds
new modules without the hook.) A task whose head is frozen is dropped from the loss
(``frozen_tasks``) — computing it would still send gradients into the shared trunk.

Weight decay: none on normalisation parameters and biases by default (timm and
detectron2 do the same). The BiFPN fusion weights keep their decay, as in the TF reference.

``keep_buffers`` restores the BatchNorm running statistics of modules across a forward pass:
the trainer wraps the forward with it for the heads of tasks absent from the batch, so that
such a head ends the step bit-identical — parameters *and* statistics — instead of drifting
towards the statistics of another dataset's images in mixed-dataset training. (Restoring
after the pass, rather than switching those heads to eval mode, keeps SyncBatchNorm's
collectives identical on every rank.)

``drop_grads`` sets gradients to ``None``. torch optimizers skip a parameter whose grad is
None, while a zero grad still moves it under SGD momentum and weight decay (and Adam's moment
estimates): a task absent from a batch must have its head's grads dropped, not zeroed, for
its parameters to stay bit-identical.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping

import torch
from torch import nn

from ..errors import ConfigError
from .distributed import unwrap

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
_FROZEN_FLAG = "_mtedet_frozen_bn"


def _task_names(model: nn.Module) -> list[str]:
    heads = getattr(model, "heads", None)
    return list(heads.keys()) if isinstance(heads, nn.ModuleDict) else []


def canonical_part(model: nn.Module, part: str) -> str:
    """``"det"`` → ``"heads.det"``; checks that the path names a submodule of the model."""
    model = unwrap(model)
    if not isinstance(part, str) or not part:
        raise ConfigError(f"a part name must be a non-empty string, got {part!r}")
    tasks = _task_names(model)
    path = f"heads.{part}" if part in tasks else part
    try:
        model.get_submodule(path)
    except AttributeError:
        valid = ["backbone", "neck"] + [f"heads.{t}" for t in tasks] + tasks
        raise ConfigError(
            f"unknown model part {part!r}; valid parts: {', '.join(valid)} "
            f"(or a deeper module path such as 'backbone.<child>')"
        ) from None
    return path


def _keep_eval(module: nn.Module, args) -> None:
    module.train(False)


def apply_freeze(model: nn.Module, freeze: Iterable[str]) -> list[str]:
    """Freeze the named parts; returns their canonical paths."""
    model = unwrap(model)
    paths = [canonical_part(model, p) for p in freeze]
    for path in paths:
        part = model.get_submodule(path)
        for p in part.parameters():
            p.requires_grad_(False)
        for m in part.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not getattr(m, _FROZEN_FLAG, False):
                m.train(False)
                m.register_forward_pre_hook(_keep_eval)
                setattr(m, _FROZEN_FLAG, True)
    return paths


def frozen_tasks(model: nn.Module, freeze: Iterable[str]) -> list[str]:
    """Tasks whose whole head is frozen: their loss must be neither computed nor added."""
    model = unwrap(model)
    paths = {canonical_part(model, p) for p in freeze}
    out = []
    for t in _task_names(model):
        head = model.heads[t]
        whole = f"heads.{t}" in paths or "heads" in paths
        if whole or not any(p.requires_grad for p in head.parameters()):
            out.append(t)
    return out


def _is_no_decay(module: nn.Module, param_name: str) -> bool:
    return isinstance(module, _NORM_TYPES) or param_name == "bias"


def _match_mult(name: str, mults: Mapping[str, float]) -> tuple[str, float]:
    """The longest configured part that prefixes the parameter's name."""
    best, mult = "", 1.0
    for path, m in mults.items():
        if (name == path or name.startswith(path + ".")) and len(path) > len(best):
            best, mult = path, m
    return best, mult


def build_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    no_decay_bn_bias: bool = True,
    lr_mult: Mapping[str, float] | None = None,
    own_groups: Iterable[str] = (),
) -> list[dict]:
    """Optimizer groups: one per (lr-multiplied part, decay or not); frozen params left out.

    Each group carries ``lr`` (= base_lr × multiplier), ``weight_decay``, ``lr_mult`` and a
    ``name`` (``"<part>/decay"``); LR schedulers that scale every group's initial lr keep the
    ratios. ``own_groups``: parts that get groups of their own even at multiplier 1 (so that a
    hook can set their rate, engine/finetune.py).
    """
    model = unwrap(model)
    mults: dict[str, float] = {canonical_part(model, part): 1.0 for part in own_groups}
    for part, m in (lr_mult or {}).items():
        if not (isinstance(m, (int, float)) and m >= 0):
            raise ConfigError(f"train.lr_mult.{part} must be a number >= 0, got {m!r}")
        mults[canonical_part(model, part)] = float(m)

    groups: dict[tuple[str, bool], dict] = {}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            part, mult = _match_mult(full, mults)
            decay = not (no_decay_bn_bias and _is_no_decay(module, p_name))
            key = (part, decay)
            if key not in groups:
                groups[key] = {
                    "params": [],
                    "lr": base_lr * mult,
                    "lr_mult": mult,
                    "weight_decay": weight_decay if decay else 0.0,
                    "name": f"{part or 'default'}/{'decay' if decay else 'no_decay'}",
                }
            groups[key]["params"].append(p)
    if not groups:
        raise ConfigError("every parameter of the model is frozen: nothing to train (check train.freeze)")
    return list(groups.values())


def task_head_parameters(model: nn.Module, task: str) -> list[nn.Parameter]:
    model = unwrap(model)
    return list(model.heads[task].parameters()) if task in _task_names(model) else []


def drop_grads(params: Iterable[torch.Tensor]) -> None:
    """Set grads to None so the optimizer skips these parameters entirely this step."""
    for p in params:
        p.grad = None


def drop_absent_task_grads(model: nn.Module, absent: Iterable[str], weighting: nn.Module | None = None) -> None:
    """Drop the grads of the heads (and loss-weighting parameters) of tasks absent from a batch."""
    for t in absent:
        drop_grads(task_head_parameters(model, t))
        if weighting is not None and hasattr(weighting, "task_parameters"):
            drop_grads(weighting.task_parameters(t))


@contextmanager
def keep_buffers(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Buffers (BN running statistics) of ``modules`` are restored when the block ends."""
    saved = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def task_heads(model: nn.Module, tasks: Iterable[str]) -> list[nn.Module]:
    model = unwrap(model)
    return [model.heads[t] for t in tasks if t in _task_names(model)]
