"""``mtedet export --format onnx``: the network's raw head outputs, no NMS in the graph.

Every task names its outputs (``Task.export_outputs``: ``det_cls_p3`` … ``det_box_p7``,
``seg_logits``, a user task's tensors) and describes them (``Task.describe_export``); arrays a
runtime needs besides the graph (the detection anchors) are written next to it. Next to
``OUT.onnx``:

- ``OUT.<task>.<array>.npy`` — e.g. ``OUT.det.anchors.npy``: (N, 4) float32 anchors, xyxy in
  input pixels, in the order of the flattened detection outputs (level, row, column, scale, aspect);
- ``OUT.json`` — what each output means: input normalisation, output names and shapes, and
  per task its class names, coding and post-processing defaults.

The export is checked with onnxruntime against PyTorch on the same input; the maximum
absolute difference is reported (and must stay below ``tolerance``).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .builders import image_size_of, load_trained
from .inference import input_stats


class FlatOutputs(nn.Module):
    """The model with a tuple of tensors as output (ONNX needs flat, named outputs)."""

    def __init__(self, model: nn.Module, tasks: dict):
        super().__init__()
        self.model = model
        self.tasks = tasks

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        return tuple(v for t, task in self.tasks.items() for v in task.export_outputs(out[t]).values())

    def names(self, images: torch.Tensor) -> list[tuple[str, str]]:
        """(task, ONNX name) of every output, in order: ``<task>_<the task's name for it>``."""
        out = self.model(images)
        return [(t, f"{t}_{k}") for t, task in self.tasks.items() for k in task.export_outputs(out[t])]


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    *,
    image_size: tuple[int, int] | None = None,
    batch_size: int = 1,
    dynamic_batch: bool = False,
    opset: int = 17,
    check: bool = True,
    tolerance: float = 1e-4,
) -> dict[str, Any]:
    """Write ``out`` (.onnx) + the tasks' arrays + description; returns the description (with ``max_abs_diff``)."""
    trained = load_trained(checkpoint, device="cpu")
    model = trained.model.eval()
    size = tuple(image_size) if image_size else image_size_of(trained.config)
    model.check_input_size(*size)
    wrapper = FlatOutputs(model, trained.tasks).eval()
    out = Path(out)
    if out.suffix != ".onnx":
        out = out.with_suffix(".onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    x = torch.randn(batch_size, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layout = wrapper.names(x)
    names = [n for _, n in layout]
    dynamic = {n: {0: "batch"} for n in ["images"] + names} if dynamic_batch else None
    with torch.no_grad(), warnings.catch_warnings():
        # the input-size check in forward sees the traced (fixed) H, W: nothing to generalise
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapper, (x,), str(out), input_names=["images"], output_names=names, opset_version=opset,
            dynamic_axes=dynamic, dynamo=False,
        )  # fmt: skip
        reference = [t.numpy() for t in wrapper(x)]

    desc = describe(trained, size, layout, reference)
    for t, task in trained.tasks.items():
        for key, array in task.export_arrays(size).items():
            path = out.with_suffix(f".{t}.{key}.npy")
            np.save(path, array)
            desc["tasks"][t][f"{key}_file"] = path.name
    if check:
        diff = check_onnx(out, x.numpy(), reference, names)
        desc["max_abs_diff"] = diff
        if diff > tolerance:
            raise ConfigError(f"ONNX export {out} differs from PyTorch by {diff:.3g} (> {tolerance}); please report this")
    out.with_suffix(".json").write_text(json.dumps(desc, indent=2))
    return desc


def describe(trained, size, layout, reference) -> dict[str, Any]:
    mean, std = input_stats(trained.model)
    return {
        "model": trained.config.model.name,
        "input": {
            "name": "images",
            "shape": ["batch", 3, size[0], size[1]],
            "layout": "NCHW, RGB",
            "normalisation": "(pixel_0_255 / 255 - mean) / std, per channel",
            "mean": list(mean),
            "std": list(std),
            "resize": "scale to fit (longest side, aspect kept), pad bottom/right with 0; "
            "map back with x_orig = x / scale",
        },
        "outputs": {n: {"shape": list(r.shape), "task": t} for (t, n), r in zip(layout, reference)},
        "tasks": {t: task.describe_export() for t, task in trained.tasks.items()},
    }


def check_onnx(path: Path, x: np.ndarray, reference: list[np.ndarray], names: list[str]) -> float:
    """Max abs difference between onnxruntime's and PyTorch's outputs on ``x``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("checking the export needs onnxruntime: pip install 'multitask_edet[export]' (or pass --no-check)") from None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(names, {"images": x})
    return float(max(np.abs(g - r).max() for g, r in zip(got, reference)))
