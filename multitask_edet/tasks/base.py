"""The task contract (DESIGN.md §3).

A task owns everything specific to it: building its head, turning batch annotations into
training targets, the loss (a dict of named tensors), post-processing to predictions in the
original image's coordinates, and its evaluator. The trainer only sums weighted losses, so
a new task plugs in by registering a head and a task — no edit to the trunk or the trainer.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from ..registry import Registry

TASKS: Registry[type["Task"]] = Registry("task")


def register_task(name: str, cls: type["Task"] | None = None, *, override: bool = False):
    return TASKS.register(name, cls, override=override)


class Evaluator(ABC):
    """Accumulates predictions over a dataset; ``compute`` returns a flat dict of metrics.

    ``main_metric`` names the key of ``compute()`` used to pick the best checkpoint
    (higher is better). ``sync`` merges state across distributed processes.
    """

    main_metric: str = ""

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def update(self, predictions: list[Any], batch: dict[str, Any]) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, float]: ...

    def sync(self) -> None:
        """Gather state from all processes (torch.distributed) before ``compute``."""

    def report(self) -> str:
        """A human-readable table of the last ``compute``."""
        return ""


class Task(ABC):
    #: key of this task in the model outputs, the batch-target presence and the loss dict
    name: str = ""
    #: batch keys that carry this task's annotations (see datasets/base.py)
    target_keys: tuple[str, ...] = ()

    @abstractmethod
    def build_head(self, in_channels: int) -> nn.Module:
        """The head module; it must expose ``levels`` (tuple of pyramid levels it reads)."""

    def has_targets(self, batch: dict[str, Any]) -> torch.Tensor:
        """Bool (B,): samples that carry this task's annotations."""
        key = self.target_keys[0]
        vals = batch.get(key)
        n = batch["images"].shape[0]
        if vals is None:
            return torch.zeros(n, dtype=torch.bool)
        return torch.tensor([v is not None for v in vals], dtype=torch.bool)

    @abstractmethod
    def loss(self, outputs: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Named losses for this task's raw head ``outputs``.

        Samples without this task's annotations contribute nothing; when none in the batch
        has them, return losses that are exactly zero and still connected to ``outputs``
        (so DDP sees every parameter used) — the head's parameters then do not change.
        """

    @abstractmethod
    def postprocess(self, outputs: Any, batch: dict[str, Any]) -> list[Any]:
        """Per-image predictions in the original image's coordinates/size."""

    @abstractmethod
    def evaluator(self, dataset: Any = None, output_dir: str | None = None) -> Evaluator: ...
