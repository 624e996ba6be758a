"""One inference path: a batch of uint8 images → every task's per-image predictions.

Evaluation (engine/evaluate.py), ``mtedet predict`` (engine/predict.py) and the Python API
(``Experiment.predict``) all go through ``predict_batch``: the images are normalised with the
model's own input statistics, the model runs once under the configured autocast, and each task
turns the outputs into predictions with its ``predict`` (which may ask for the mirrored
images' outputs for test-time augmentation, tasks/base.py ``Forward``).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..datasets.base import IMAGENET_MEAN, IMAGENET_STD, normalize_images
from ..tasks.base import Forward, Task
from .distributed import unwrap


def to_float(x: Any) -> Any:
    """Cast nested outputs (dicts/lists of tensors) to float32 for the losses and NMS."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() and x.dtype != torch.float32 else x
    if isinstance(x, Mapping):
        return {k: to_float(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_float(v) for v in x)
    return x


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def input_stats(model: nn.Module) -> tuple[Sequence[float], Sequence[float]]:
    """(mean, std) the model's backbone expects (``ModelConfig.mean/std``), ImageNet's by default."""
    cfg = getattr(unwrap(model), "config", None)
    mean = getattr(cfg, "mean", None) or IMAGENET_MEAN
    std = getattr(cfg, "std", None) or IMAGENET_STD
    return mean, std


def model_images(model: nn.Module, images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A collated uint8 batch → the model's normalised float input on ``device``."""
    mean, std = input_stats(model)
    return normalize_images(images, mean, std, device, channels_last=channels_last)


@torch.no_grad()
def predict_batch(
    model: nn.Module,
    tasks: Mapping[str, Task],
    batch: dict[str, Any],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, list[Any]]:
    """``{task: per-image predictions}`` of a collated batch (the model in eval mode)."""

    def run(x: torch.Tensor) -> dict[str, Any]:
        with autocast(device, amp_dtype):
            return to_float(model(x))

    forward = Forward(run, model_images(model, batch["images"], device))
    return {name: task.predict(forward, batch) for name, task in tasks.items()}
