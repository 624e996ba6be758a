"""Fine-tuning from pretrained weights: parts held still for their first steps, frozen BatchNorm.

``train.freeze_steps: {backbone: 500}`` holds a part's learning rate at zero for its first N
optimizer steps, so that freshly initialised layers (BiFPN, heads) stop sending large random
gradients into the pretrained backbone before it starts to move; its BatchNorm statistics
stay frozen meanwhile. Zero learning rate rather than ``requires_grad=False``: the optimizer
groups, DistributedDataParallel's gradient hooks and checkpoints stay as they are, and with
decoupled weight decay (AdamW, and SGD's decay through the learning rate) nothing moves.
The part gets its own optimizer groups (``param_groups.build_param_groups(own_groups=…)``).

``train.bn_momentum: 0.1`` sets the momentum of every BatchNorm's running statistics. The
BiFPN and heads are built with the paper's 0.01 (TF's decay 0.99, §5.1's 300-epoch schedules):
over a few hundred fine-tuning steps such statistics still lag far behind the weights, and a
network that fits its training batches predicts garbage in eval mode (benchmarks/RESULTS.md,
"Pretrained vs scratch": shapes val mIoU 0.17 → 0.38 at 150 steps from this alone).

``train.frozen_bn: [backbone]`` keeps the BatchNorm layers of a part in eval mode with fixed
affine parameters for the whole run — the usual choice when the per-GPU batch is small and
batch statistics are noise, as detectron2's FrozenBatchNorm does for pretrained backbones.
"""
from __future__ import annotations

from typing import Mapping

from torch import nn

from .param_groups import canonical_part, unwrap
from .trainer import Hook

_HELD_FLAG = "_mtedet_held_bn"


def _batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _hold_eval(module: nn.Module, args) -> None:
    if getattr(module, _HELD_FLAG, False):
        module.train(False)


def freeze_batch_norm(model: nn.Module, parts) -> list[str]:
    """BatchNorm layers of ``parts`` in eval mode for good, affine parameters not trained.

    Call before the optimizer is built (frozen parameters are left out of its groups).
    """
    model = unwrap(model)
    paths = [canonical_part(model, p) for p in parts]
    for path in paths:
        for bn in _batch_norms(model.get_submodule(path)):
            for p in bn.parameters():
                p.requires_grad_(False)
            _set_held(bn, True)
    return paths


def _set_held(bn: nn.Module, held: bool) -> None:
    if not hasattr(bn, _HELD_FLAG):
        bn.register_forward_pre_hook(_hold_eval)  # model.train() would switch it back otherwise
    setattr(bn, _HELD_FLAG, held)
    if held:
        bn.train(False)


def set_bn_momentum(model: nn.Module, momentum: float | None) -> int:
    """Momentum of every BatchNorm layer's running statistics (PyTorch convention); None = as built.

    Returns the number of layers changed."""
    if momentum is None:
        return 0
    bns = _batch_norms(unwrap(model))
    for bn in bns:
        bn.momentum = float(momentum)
    return len(bns)


def _in_part(group_part: str, part: str) -> bool:
    return group_part == part or group_part.startswith(part + ".")


class FreezeStepsHook(Hook):
    """Learning rate 0 (and BN statistics frozen) for each part during its first N steps.

    Runs after the LR scheduler hook: the scheduler sets every group's rate each step, this
    hook then zeroes the held ones. A resumed run past N finds the part already released.
    """

    def __init__(self, model: nn.Module, steps: Mapping[str, int]):
        model = unwrap(model)
        self.steps = {canonical_part(model, p): int(n) for p, n in steps.items() if int(n) > 0}
        self.bns = {p: [bn for bn in _batch_norms(model.get_submodule(p)) if not getattr(bn, _HELD_FLAG, False)]
                    for p in self.steps}
        self.held: set[str] = set()

    def _groups(self, part: str) -> list[dict]:
        groups = [g for g in self.trainer.optimizer.param_groups if _in_part(g.get("name", "").split("/")[0], part)]
        if not groups:
            raise RuntimeError(f"train.freeze_steps: no optimizer group of its own for {part!r}")
        return groups

    def _apply(self) -> None:
        for part, n in self.steps.items():
            hold = self.trainer.step < n
            if hold:
                for g in self._groups(part):
                    g["lr"] = 0.0
            if hold != (part in self.held):
                for bn in self.bns[part]:
                    _set_held(bn, hold)
                    if not hold:
                        bn.train(unwrap(self.trainer.model).training)
                self.held.symmetric_difference_update({part})

    def before_train(self) -> None:
        self._apply()

    def after_step(self) -> None:
        self._apply()
