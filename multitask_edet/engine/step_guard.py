"""Undo one optimisation step that produced non-finite numbers (used by engine/trainer.py).

A non-finite loss is not the only way a diverging run breaks: a finite loss can have
non-finite gradients, finite gradients times a huge learning rate can overflow the weights,
and the forward pass itself updates BatchNorm running statistics, which can overflow while
the loss stays finite. ``StepGuard`` copies what a step may change — the optimizer's
parameters, the model's buffers and the optimizer's state — before the step, so that the
trainer can put it all back and the weights in memory (and so in every checkpoint) stay
those of the last finite update.

The copy goes into buffers allocated once (``torch._foreach_copy_``). The finiteness test
takes each tensor's L2 norm in one fused call (``torch._foreach_norm``; on CPU ten times
faster than the max-abs norm): a NaN or inf element makes the norm non-finite. A norm can
also overflow for finite values beyond ~1e19, so a tensor whose norm is not finite is then
tested element by element — the answer is exact, and the slow path runs only on failure.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every element of every (floating-point) tensor is finite (one host sync when so)."""
    ts = [t.detach() for t in tensors if t is not None and t.is_floating_point() and t.numel()]
    if not ts:
        return True
    by_kind: dict[Any, list[torch.Tensor]] = {}
    for t in ts:
        by_kind.setdefault((t.device, t.dtype), []).append(t)
    for group in by_kind.values():
        norms = torch.stack(torch._foreach_norm(group)).float()
        ok = torch.isfinite(norms).cpu()
        if not bool(ok.all()):
            # NaN/inf inside, or a sum of squares that overflowed: look at those tensors exactly
            if not all(bool(torch.isfinite(t).all()) for t, good in zip(group, ok.tolist()) if not good):
                return False
    return True


class StepGuard:
    """Snapshot (``save``) and restore (``restore``) of what one training step changes."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model = model
        self.optimizer = optimizer
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.buffers = [b for b in model.buffers() if b.numel()]
        self._saved_params: list[torch.Tensor] | None = None
        self._saved_buffers: list[torch.Tensor] | None = None
        self._saved_state: dict[torch.Tensor, dict[str, Any]] = {}

    @torch.no_grad()
    def save(self) -> None:
        if self._saved_params is None:
            self._saved_params = [p.detach().clone() for p in self.params]
            self._saved_buffers = [b.detach().clone() for b in self.buffers]
        else:
            torch._foreach_copy_(self._saved_params, [p.detach() for p in self.params])
            torch._foreach_copy_(self._saved_buffers, self.buffers)
        saved = {}
        for p, state in self.optimizer.state.items():
            old = self._saved_state.get(p, {})
            entry = {}
            for k, v in state.items():
                if torch.is_tensor(v):
                    buf = old.get(k)
                    if torch.is_tensor(buf) and buf.shape == v.shape and buf.dtype == v.dtype and buf.device == v.device:
                        buf.copy_(v)
                    else:
                        buf = v.detach().clone()
                    entry[k] = buf
                else:
                    entry[k] = v
            saved[p] = entry
        self._saved_state = saved

    @torch.no_grad()
    def restore(self) -> None:
        """Parameters, buffers and optimizer state as they were at the last ``save``."""
        if self._saved_params is None:
            raise RuntimeError("StepGuard.restore() without a save()")
        torch._foreach_copy_([p.detach() for p in self.params], self._saved_params)
        torch._foreach_copy_(self.buffers, self._saved_buffers)
        for p in list(self.optimizer.state):
            if p not in self._saved_state:
                del self.optimizer.state[p]  # the undone step created it (e.g. a first momentum buffer)
        for p, entry in self._saved_state.items():
            state = self.optimizer.state[p]
            for k, v in entry.items():
                if torch.is_tensor(v) and torch.is_tensor(state.get(k)) and state[k].shape == v.shape:
                    state[k].copy_(v)
                else:
                    state[k] = v.clone() if torch.is_tensor(v) else v

    def buffers_finite(self) -> bool:
        return all_finite(self.buffers)

    def params_finite(self) -> bool:
        return all_finite(self.params)


__all__ = ["StepGuard", "all_finite"]
