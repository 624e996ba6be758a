"""How the task losses of a joint-trunk model add up to the one loss that is back-propagated.

The paper trains one task per model; sharing the trunk between detection and segmentation
needs a rule for the relative size of their gradients. Three rules, all behind one module:

- ``fixed``: ``L = sum_t w_t L_t`` with configured weights (default 1).
- ``uncertainty`` (Kendall, Gal, Cipolla, CVPR 2018, "Multi-Task Learning Using Uncertainty
  to Weigh Losses", eqs. 7 and 10): one learned log-variance ``s_t = log sigma_t^2`` per task,
  ``L = sum_t c_t w_t exp(-s_t) L_t + s_t / 2`` with ``c_t = 1`` for a classification-like
  likelihood (softmax/sigmoid: eq. 10, ``1/sigma^2 L + log sigma``) and ``c_t = 1/2`` for a
  regression (Gaussian: eq. 7, ``1/(2 sigma^2) L + log sigma``). Detection (focal + box) and
  segmentation (cross-entropy) are both dominated by classification terms, so every task
  defaults to ``classification``; ``kinds={"t": "regression"}`` selects the other form.
  At the optimum ``exp(s_t) = 2 c_t L_t``: a task whose loss is large is down-weighted.
  The regulariser can make the total negative; that is expected, it is not a bug.
- ``dwa`` (Liu, Johns, Davison, CVPR 2019, "End-to-End Multi-Task Learning with Attention",
  eq. 7): ``w_t = K exp(r_t / T) / sum_k exp(r_k / T)`` with ``r_t = Lbar_t(n-1) / Lbar_t(n-2)``,
  the ratio of the task's average loss over the last two completed windows (an epoch in the
  paper), temperature ``T = 2``; ``w_t = 1`` until two windows are complete. A task that
  learns slower (ratio near or above 1) gets more weight. Multiplied by the fixed weights.

Contract with the trainer (engine/trainer.py):

    total, log = weighting(task_losses, present=present_tasks)
    total.backward(); weighting.sync_grads()  # DDP: the weighting is not inside the DDP module
    ...
    weighting.step_epoch()                    # once at the end of every epoch (DWA window)

``task_losses`` maps a task name to that task's summed loss (``sum_task_losses`` below).
A task is *present* when at least one sample of the batch (on any rank) carries its labels.
An absent task may still be passed (its zero loss keeps its head in the graph, as DDP needs);
it is multiplied by 0 and adds no regulariser, so it contributes exactly nothing. Its head's
(and log-variance's) gradients are then exact zeros, which SGD would still move with momentum
and weight decay: the trainer sets them to ``None`` (``param_groups.drop_grads``).

A rule of your own is a ``LossWeighting`` subclass registered by name
(``@register_weighting("mine")``) and chosen with ``train.loss_weighting: mine``; its
constructor takes the task names, the fixed weights and ``train.loss_weighting_options``.

Parameters (the uncertainty log-variances) must be optimised: ``weighting.param_groups(lr)``
returns the optimizer groups (no weight decay: decaying ``s_t`` towards 0 would bias sigma).
DWA's window statistics are buffers, so ``state_dict()`` carries them across a resume.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

#: loss weighting rules by name (``train.loss_weighting``)
WEIGHTINGS: Registry[type["LossWeighting"]] = Registry("loss weighting")
KINDS = {"classification": 1.0, "regression": 0.5}


def register_weighting(name: str, cls: type["LossWeighting"] | None = None, *, override: bool = False):
    """Register a ``LossWeighting`` subclass under ``name`` (usable as a class decorator)."""
    return WEIGHTINGS.register(name, cls, override=override)


def sum_task_losses(
    loss_dicts: Mapping[str, Mapping[str, torch.Tensor]],
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """``{task: {name: loss}}`` → ``{task: summed loss}`` and a log of every named part."""
    task_losses: dict[str, torch.Tensor] = {}
    log: dict[str, float] = {}
    for task, parts in loss_dicts.items():
        if not parts:
            continue
        task_losses[task] = torch.stack([v.float() for v in parts.values()]).sum()
        for name, v in parts.items():
            log[f"loss/{task}/{name}"] = float(v.detach())
    return task_losses, log


@register_weighting("fixed")
class LossWeighting(nn.Module):
    """Base: fixed per-task weights. A rule is a ``_term`` (one task's share of the total)."""

    kind = "fixed"

    def __init__(self, tasks: Iterable[str], weights: Mapping[str, float] | None = None):
        super().__init__()
        self.tasks = list(tasks)
        if not self.tasks:
            raise ConfigError("loss weighting needs at least one task")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.tasks))
        if unknown:
            raise ConfigError(
                f"train.loss_weights names unknown task(s) {unknown}; tasks of this run: {self.tasks}"
            )
        for t, w in weights.items():
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ConfigError(f"train.loss_weights.{t} must be a finite number >= 0, got {w!r}")
        self.base_weights = {t: float(weights.get(t, 1.0)) for t in self.tasks}

    # --- the trainer's interface -------------------------------------------------------
    def forward(
        self,
        task_losses: Mapping[str, torch.Tensor],
        present: Iterable[str] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        unknown = sorted(set(task_losses) - set(self.tasks))
        if unknown:
            raise ConfigError(f"losses for task(s) {unknown} that the weighting does not know: {self.tasks}")
        if not task_losses:
            raise ValueError("LossWeighting got no task losses")
        present_set = set(task_losses) if present is None else set(present) & set(task_losses)
        total, log = self._combine(task_losses, present_set)
        return total, log

    def step_epoch(self) -> None:
        """Close a window of steps (called once per epoch by the trainer). Fixed: nothing."""

    def sync_grads(self) -> None:
        """Average this module's gradients over DDP ranks (it lives outside the DDP wrapper)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        for p in self.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()

    def param_groups(self, lr: float) -> list[dict]:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return []
        return [{"params": params, "lr": lr, "weight_decay": 0.0, "name": "loss_weighting", "lr_mult": 1.0}]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters that belong to one task (so an absent task's grads can be dropped)."""
        return []

    def weights(self) -> dict[str, float]:
        """The effective multiplier of every task's loss right now (for logs and tests)."""
        return dict(self.base_weights)

    # --- the rule ----------------------------------------------------------------------
    def _term(self, task: str, loss: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """This task's contribution to the total, and what to log about it."""
        w = self.weights()[task]
        return loss * w, {f"weight/{task}": w}

    def _combine(self, task_losses, present):
        total = None
        log: dict[str, float] = {}
        for t, loss in task_losses.items():
            term, extra = self._term(t, loss)
            if t in present:
                log[f"loss/{t}"] = float(loss.detach())
                log.update(extra)
            else:
                term = term * 0.0  # keeps the graph connected (DDP), contributes nothing
            total = term if total is None else total + term
        return total, log


@register_weighting("uncertainty")
class UncertaintyWeighting(LossWeighting):
    kind = "uncertainty"

    def __init__(
        self,
        tasks: Iterable[str],
        weights: Mapping[str, float] | None = None,
        kinds: Mapping[str, str] | None = None,
        init_log_var: float = 0.0,
    ):
        super().__init__(tasks, weights)
        kinds = dict(kinds or {})
        for t, k in kinds.items():
            if t not in self.tasks:
                raise ConfigError(f"uncertainty kinds name unknown task {t!r}; tasks: {self.tasks}")
            if k not in KINDS:
                raise ConfigError(f"uncertainty kind of {t!r} must be one of {sorted(KINDS)}, got {k!r}")
        self.scale = {t: KINDS[kinds.get(t, "classification")] for t in self.tasks}
        self.log_vars = nn.ParameterDict(
            {t: nn.Parameter(torch.tensor(float(init_log_var))) for t in self.tasks}
        )

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [self.log_vars[task]] if task in self.log_vars else []

    def weights(self) -> dict[str, float]:
        return {
            t: self.base_weights[t] * self.scale[t] * math.exp(-float(self.log_vars[t].detach()))
            for t in self.tasks
        }

    def _term(self, task, loss):
        s = self.log_vars[task]
        c = self.base_weights[task] * self.scale[task]
        term = c * torch.exp(-s) * loss + 0.5 * s
        return term, {f"weight/{task}": c * math.exp(-float(s.detach())), f"log_var/{task}": float(s.detach())}


@register_weighting("dwa")
class DynamicWeightAveraging(LossWeighting):
    kind = "dwa"

    def __init__(
        self,
        tasks: Iterable[str],
        weights: Mapping[str, float] | None = None,
        temperature: float = 2.0,
        window: int | None = None,
    ):
        super().__init__(tasks, weights)
        if not temperature > 0:
            raise ConfigError(f"dwa temperature must be > 0, got {temperature!r}")
        if window is not None and window < 1:
            raise ConfigError(f"dwa window must be a positive number of steps or None, got {window!r}")
        self.temperature = float(temperature)
        #: close a window every ``window`` training steps (None: only when step_epoch is called)
        self.window = window
        n = len(self.tasks)
        # running sums of the current window, and the averages of the two last closed windows
        self.register_buffer("_sum", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("_count", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("_history", torch.full((2, n), float("nan"), dtype=torch.float64))
        self.register_buffer("_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("_w", torch.ones(n, dtype=torch.float64))

    def weights(self) -> dict[str, float]:
        return {t: self.base_weights[t] * float(self._w[i]) for i, t in enumerate(self.tasks)}

    def _combine(self, task_losses, present):
        total, log = super()._combine(task_losses, present)
        if self.training:
            for t in present:
                i = self.tasks.index(t)
                self._sum[i] += float(task_losses[t].detach())
                self._count[i] += 1
            self._steps += 1
            if self.window is not None and int(self._steps) % self.window == 0:
                self.step_epoch()
        return total, log

    def step_epoch(self) -> None:
        s, c = self._sum.clone(), self._count.clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            both = torch.stack([s, c]).to(torch.float64)
            dist.all_reduce(both)
            s, c = both[0], both[1]
        avg = torch.where(c > 0, s / c.clamp(min=1), torch.full_like(s, float("nan")))
        # a task unseen in this window keeps its last average (its ratio then tends to 1)
        avg = torch.where(torch.isnan(avg), self._history[1], avg)
        self._history[0] = self._history[1].clone()
        self._history[1] = avg
        self._sum.zero_()
        self._count.zero_()
        self._w.copy_(self.dwa_weights(self._history[1], self._history[0], self.temperature))

    @staticmethod
    def dwa_weights(last: torch.Tensor, before: torch.Tensor, temperature: float) -> torch.Tensor:
        """Liu et al. eq. 7; ratio 1 where a window average is missing or zero."""
        ok = torch.isfinite(last) & torch.isfinite(before) & (before > 0)
        r = torch.where(ok, last / torch.where(ok, before, torch.ones_like(before)), torch.ones_like(last))
        if not bool(ok.any()):
            return torch.ones_like(last)
        return len(last) * torch.softmax(r / temperature, dim=0)


def build_weighting(
    kind: str,
    tasks: Iterable[str],
    weights: Mapping[str, float] | None = None,
    **opts,
) -> LossWeighting:
    """A registered rule: ``fixed`` | ``uncertainty`` (opts: kinds, init_log_var) | ``dwa`` (opts: temperature, window)."""
    try:
        cls = WEIGHTINGS.get(kind)
    except KeyError as e:
        raise ConfigError(f"train.loss_weighting: {e.args[0]}") from None
    try:
        return cls(tasks, weights, **opts)
    except TypeError as e:
        raise ConfigError(f"options {sorted(opts)} do not fit loss weighting {kind!r}: {e}") from None
