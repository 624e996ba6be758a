"""``mtedet export``: a trained model as an ONNX graph, raw or end-to-end.

**Raw** (default): the network's head outputs, no NMS in the graph. Every task names its
outputs (``Task.export_outputs``: ``det_cls_p3`` … ``det_box_p7``, ``seg_logits``, a user
task's tensors) and describes them (``Task.describe_export``); arrays a runtime needs besides
the graph (the detection anchors) are written next to it. Next to ``OUT.onnx``:

- ``OUT.<task>.<array>.npy`` — e.g. ``OUT.det.anchors.npy``: (N, 4) float32 anchors, xyxy in
  input pixels, in the order of the flattened detection outputs (level, row, column, scale, aspect);
- ``OUT.json`` — what each output means: input normalisation, output names and shapes, and
  per task its class names, coding and post-processing defaults.

**End-to-end** (``end_to_end=True``, ``mtedet export --end-to-end``): one graph from an image
to predictions, what ``mtedet predict`` computes (``EndToEnd``). Inputs: ``images`` uint8
(B, 3, H, W) RGB and ``orig_sizes`` int64 (B, 2), each image's (height, width) before the
caller letterboxed it into the input: scaled by ``min(H / h0, W / w0)`` to fit, placed at the
top-left, padded bottom/right with 0 — what evaluation does (datasets/transforms.py
``eval_transforms``; ``letterbox`` below). Normalisation (the model's own mean/std), box
decoding, per-class NMS (ONNX ``NonMaxSuppression``), top-k and the map back to original
pixels are inside the graph; each task's outputs come from ``Task.export_postprocess``:

- a detection task: ``boxes`` (B, D, 4) xyxy in original pixels, ``scores`` (B, D), ``labels``
  (B, D) int64 and ``num_detections`` (B,): the first ``num_detections`` rows of an image are
  its detections, best first; the rest is padding (label -1). D = ``max_detections``.
- a segmentation task: ``mask`` (B, H, W) uint8 class indices at the input size, 255 on the
  padding: crop to (round(h0·scale), round(w0·scale)) and resize (nearest) to (h0, w0).

Output names are prefixed with ``<task>_`` when the model has several tasks. The batch is
dynamic; the size is fixed, or with ``dynamic_size`` any multiple of 2**max_level.

Both modes are checked with onnxruntime against PyTorch on the same input before the files
are kept: the raw outputs element-wise (within ``tolerance``), the end-to-end outputs by each
task's ``Task.export_check`` (detections are matched, and where two scores tie to float
rounding either may survive NMS); the figures go into the description.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..tasks.base import ExportGeometry, Forward, Task
from .builders import load_for_inference
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


class EndToEnd(nn.Module):
    """uint8 images + their original sizes → every task's predictions (``Task.export_postprocess``).

    What ``mtedet predict`` computes for letterboxed images, as one traceable module: the same
    normalisation as engine/inference.py, one forward pass (two with flip test-time
    augmentation), each task's post-processing. ``named`` gives the outputs by name, ``forward``
    the same tensors as a tuple (graph outputs are positional).
    """

    def __init__(self, model: nn.Module, tasks: Mapping[str, Task]):
        super().__init__()
        self.model = model
        self.tasks = dict(tasks)
        mean, std = input_stats(model)
        # the constants of datasets/base.py normalize_images, so the inputs are bit-identical
        self.register_buffer("mean255", torch.tensor([255.0 * v for v in mean], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std255", torch.tensor([255.0 * v for v in std], dtype=torch.float32).view(1, 3, 1, 1))

    def per_task(self, images: torch.Tensor, orig_sizes: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """``{task: {name: tensor}}``: every task's ``export_postprocess``."""
        x = (images.to(torch.float32) - self.mean255) / self.std255
        h, w = images.shape[-2], images.shape[-1]
        sizes = orig_sizes.to(torch.float32)
        geometry = ExportGeometry((h, w), sizes, torch.minimum(h / sizes[:, 0], w / sizes[:, 1]))
        forward = Forward(self.model, x)
        return {t: task.export_postprocess(forward, geometry) for t, task in self.tasks.items()}

    def output_name(self, task: str, key: str) -> str:
        """The graph output of a task's tensor: prefixed with the task when the model has several."""
        return f"{task}_{key}" if len(self.tasks) > 1 else key

    def named(self, images: torch.Tensor, orig_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.output_name(t, k): v for t, out in self.per_task(images, orig_sizes).items() for k, v in out.items()}

    def forward(self, images: torch.Tensor, orig_sizes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.named(images, orig_sizes).values())


def letterbox(image: np.ndarray, image_size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """An RGB uint8 (h0, w0, 3) image → ((3, H, W) uint8 input, (h0, w0)): the end-to-end graph's
    inputs for one image, by the evaluation transform itself (bit-identical to ``mtedet predict``)."""
    from ..datasets.transforms import eval_transforms

    sample = eval_transforms(image_size)({"image": image, "image_id": 0, "orig_size": image.shape[:2]})
    return sample["image"].numpy(), (int(image.shape[0]), int(image.shape[1]))


def sample_inputs(batch_size: int, size: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images and original sizes for tracing and checking an end-to-end graph: the first
    image fills the input, the others are letterboxed from smaller and larger originals."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, 3, *size), generator=g, dtype=torch.uint8)
    h, w = size
    origs = [(h, w), (h // 2, w // 3 * 2), (h * 3, w * 2)]
    orig_sizes = torch.tensor([origs[i % len(origs)] for i in range(batch_size)], dtype=torch.int64)
    return images, orig_sizes


def export_onnx(
    source: str | Path,
    out: str | Path,
    *,
    end_to_end: bool = False,
    image_size: tuple[int, int] | None = None,
    batch_size: int = 1,
    dynamic_batch: bool = False,
    dynamic_size: bool = False,
    opset: int = 17,
    check: bool = True,
    tolerance: float = 1e-4,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``out`` (.onnx) + its description (+ the tasks' arrays in raw mode); returns the
    description. When checked, it holds onnxruntime vs PyTorch: ``max_abs_diff`` (raw) or
    ``check`` (end-to-end: per task, the figures of ``Task.export_check``).

    ``source``: a checkpoint, run folder, ``save_pretrained`` folder or Hub repo id
    (engine/builders.py ``load_for_inference``); ``overrides`` change the saved config's
    post-processing (e.g. ``{"det": {"postprocess": {"score_threshold": 0.3}}}``).
    """
    trained = load_for_inference(source, overrides, device="cpu")
    model = trained.model.eval()
    size = tuple(image_size) if image_size else tuple(model.config.image_size)
    model.check_input_size(*size)
    out = Path(out)
    if out.suffix != ".onnx":
        out = out.with_suffix(".onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    if end_to_end:
        desc = _export_end_to_end(trained, out, size, max(batch_size, 2), dynamic_size, opset, check, tolerance)
    else:
        if dynamic_size:
            raise ConfigError("a dynamic input size needs the end-to-end graph (--end-to-end): the raw export's "
                              "anchors file is for one size")
        desc = _export_raw(trained, out, size, batch_size, dynamic_batch, opset, check, tolerance)
    out.with_suffix(".json").write_text(json.dumps(desc, indent=2))
    return desc


def _onnx_export(module: nn.Module, inputs: tuple, out: Path, input_names: list[str], output_names: list[str],
                 dynamic: dict | None, opset: int) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # the input-size check in forward sees the traced H, W: nothing to generalise
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        # gathers by index (anchors, kept detections) use non-negative indices only, which is what
        # the exporter's warning about negative indices asks for
        warnings.filterwarnings("ignore", message=r"Exporting aten::index operator of advanced indexing")
        torch.onnx.export(
            module, inputs, str(out), input_names=input_names, output_names=output_names, opset_version=opset,
            dynamic_axes=dynamic, dynamo=False,
        )  # fmt: skip


def _export_raw(trained, out: Path, size, batch_size, dynamic_batch, opset, check, tolerance) -> dict[str, Any]:
    wrapper = FlatOutputs(trained.model, trained.tasks).eval()
    x = torch.randn(batch_size, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layout = wrapper.names(x)
    names = [n for _, n in layout]
    dynamic = {n: {0: "batch"} for n in ["images"] + names} if dynamic_batch else None
    _onnx_export(wrapper, (x,), out, ["images"], names, dynamic, opset)
    with torch.no_grad():
        reference = [t.numpy() for t in wrapper(x)]
    desc = describe(trained, size, layout, reference)
    for t, task in trained.tasks.items():
        for key, array in task.export_arrays(size).items():
            path = out.with_suffix(f".{t}.{key}.npy")
            np.save(path, array)
            desc["tasks"][t][f"{key}_file"] = path.name
    if check:
        diff = check_onnx(out, {"images": x.numpy()}, reference, names)
        desc["max_abs_diff"] = diff
        if diff > tolerance:
            raise ConfigError(f"ONNX export {out} differs from PyTorch by {diff:.3g} (> {tolerance}); please report this")
    return desc


def _export_end_to_end(trained, out: Path, size, batch_size, dynamic_size, opset, check, tolerance) -> dict[str, Any]:
    e2e = EndToEnd(trained.model, trained.tasks).eval()
    images, orig_sizes = sample_inputs(batch_size, size)
    with torch.no_grad():
        per_task = e2e.per_task(images, orig_sizes)
    reference = {e2e.output_name(t, k): v for t, o in per_task.items() for k, v in o.items()}
    names = list(reference)
    dims = {0: "batch", **({2: "height", 3: "width"} if dynamic_size else {})}
    dynamic = {"images": dims, "orig_sizes": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    _onnx_export(e2e, (images, orig_sizes), out, ["images", "orig_sizes"], names, dynamic, opset)
    desc = describe_end_to_end(trained, size, dynamic_size, reference, opset)
    if check:
        got = dict(zip(names, run_onnx(out, {"images": images.numpy(), "orig_sizes": orig_sizes.numpy()}, names)))
        desc["check"] = {}
        for t, outputs in per_task.items():  # each task compares its own outputs (Task.export_check)
            mine = {k: got[e2e.output_name(t, k)] for k in outputs}
            try:
                desc["check"][t] = trained.tasks[t].export_check(mine, {k: v.numpy() for k, v in outputs.items()},
                                                                 tolerance)
            except ConfigError as e:
                raise ConfigError(f"end-to-end ONNX export {out} vs PyTorch: {e}") from None
    return desc


def describe(trained, size, layout, reference) -> dict[str, Any]:
    mean, std = input_stats(trained.model)
    return {
        "model": trained.model.config.name,
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


def describe_end_to_end(trained, size, dynamic_size: bool, reference: Mapping[str, torch.Tensor], opset: int) -> dict[str, Any]:
    mean, std = input_stats(trained.model)
    stride = trained.model.stride
    hw = ["height", "width"] if dynamic_size else list(size)

    def shape(name: str, t: torch.Tensor) -> list:
        dims = ["batch", *t.shape[1:]]
        if dynamic_size and t.dim() == 3 and tuple(t.shape[1:]) == tuple(size):
            dims = ["batch", *hw]  # a map at the input size
        return dims

    return {
        "mode": "end-to-end",
        "model": trained.model.config.name,
        "opset": opset,
        "inputs": {
            "images": {
                "shape": ["batch", 3, *hw],
                "dtype": "uint8",
                "layout": "NCHW, RGB, 0-255; normalised inside the graph: (pixel / 255 - mean) / std",
                "mean": list(mean),
                "std": list(std),
                "size": f"any multiple of {stride} (2**max_level)" if dynamic_size else list(size),
            },
            "orig_sizes": {"shape": ["batch", 2], "dtype": "int64",
                           "meaning": "(height, width) of each image before the letterbox"},
        },
        "letterbox": "scale = min(H / h0, W / w0); resize the image to (round(h0 * scale), round(w0 * scale)), "
        "place it at the top-left of an H x W canvas of zeros (pad bottom/right)",
        "outputs": {n: {"shape": shape(n, t), "dtype": str(t.dtype).replace("torch.", "")} for n, t in reference.items()},
        "detections": "boxes xyxy in original pixels; the first num_detections rows of each image are its detections, "
        "best first; the rest is padding (score 0, label -1)",
        "masks": "class indices at the input size, 255 on the padding: crop to (round(h0 * scale), round(w0 * scale)) "
        "and resize (nearest) to (h0, w0)",
        "tasks": {t: task.describe_export() for t, task in trained.tasks.items()},
    }


def run_onnx(path: Path, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    """The outputs ``names`` of the graph at ``path`` on ``feeds``, by onnxruntime (CPU)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("checking the export needs onnxruntime: pip install 'multitask_edet[export]' (or pass --no-check)") from None
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(names, feeds)


def check_onnx(path: Path, feeds: dict[str, np.ndarray], reference: list[np.ndarray], names: list[str]) -> float:
    """Max abs difference between onnxruntime's and PyTorch's outputs on the same inputs."""
    got = run_onnx(path, feeds, names)
    for name, g, r in zip(names, got, reference):
        if g.shape != r.shape:
            raise ConfigError(f"ONNX export {path}: output {name!r} has shape {g.shape}, PyTorch {r.shape}; please report this")
    return float(max(np.abs(g - r).max() for g, r in zip(got, reference)))
