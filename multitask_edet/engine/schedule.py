"""Learning-rate schedule of the paper's recipe (§5.1): linear warm-up, then cosine decay.

The schedule is a per-iteration ``torch.optim.lr_scheduler.LambdaLR``; its factor is a small
picklable object of plain numbers, so the scheduler's ``state_dict`` stays weights-only safe.
The base learning rate is scaled with the global batch (``0.16`` at a batch of 128).
"""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosine:
    """LR factor at iteration ``step``: linear ``start_factor → 1`` over ``warmup_steps``,
    then half a cosine from 1 down to ``min_factor`` at ``total_steps``."""

    def __init__(self, warmup_steps: int, total_steps: int, start_factor: float = 0.001, min_factor: float = 0.0):
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = max(1, int(total_steps))
        self.start_factor = float(start_factor)
        self.min_factor = float(min_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scaled_lr(base_lr: float, global_batch: int, base_batch: int = 128) -> float:
    """Linear scaling rule: the recipe's ``base_lr`` is for ``base_batch`` images per step."""
    return base_lr * global_batch / base_batch


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    start_factor: float = 0.001,
    min_factor: float = 0.0,
) -> LambdaLR:
    # Warm-up never takes more than the whole (short) run.
    warmup_steps = min(warmup_steps, max(0, total_steps - 1))
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, start_factor, min_factor))
