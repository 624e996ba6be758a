"""``mtedet export --format onnx``: the network's raw head outputs, no NMS in the graph (issue 5 item 8).

Exporting the raw outputs is what makes the model portable (FACTS.md §7: other ports are
blocked by NMS inside the model): every runtime has its own fast NMS. Next to ``OUT.onnx``:

- ``OUT.anchors.npy`` — (N, 4) float32 anchors, xyxy in input pixels, in the order of the
  flattened detection outputs (level, row, column, scale, aspect);
- ``OUT.json`` — what each output means: input normalisation, output names and shapes, the
  box coding, the class names and the post-processing defaults.

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

from ..datasets.base import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError
from .build import image_size_of, load_trained
from ..config_utils import to_dict


class FlatOutputs(nn.Module):
    """The model with a tuple of tensors as output (ONNX needs flat, named outputs)."""

    def __init__(self, model: nn.Module, names: list[tuple[str, str, int | None]]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        flat = []
        for task, key, level_index in self.names:
            v = out[task]
            if key:
                v = v[key][level_index]
            flat.append(v)
        return tuple(flat)


def output_layout(model: nn.Module) -> list[tuple[str, str, int | None, str]]:
    """(task, key, level index, ONNX name) of every exported output."""
    layout = []
    for task, head in model.heads.items():
        if task == "det":
            for i, lv in enumerate(head.levels):
                layout.append(("det", "cls", i, f"det_cls_p{lv}"))
            for i, lv in enumerate(head.levels):
                layout.append(("det", "box", i, f"det_box_p{lv}"))
        elif task == "seg":
            layout.append(("seg", "", None, "seg_logits"))
        else:
            raise ConfigError(
                f"export supports the det and seg heads; head {task!r} has no known output layout"
            )
    return layout


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
    """Write ``out`` (.onnx) + anchors + description; returns the description (with ``max_abs_diff``)."""
    trained = load_trained(checkpoint, device="cpu")
    model = trained.model.eval()
    size = tuple(image_size) if image_size else image_size_of(trained.config)
    model.check_input_size(*size)
    layout = output_layout(model)
    wrapper = FlatOutputs(model, [(t, k, i) for t, k, i, _ in layout]).eval()
    out = Path(out)
    if out.suffix != ".onnx":
        out = out.with_suffix(".onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    names = [n for *_, n in layout]
    x = torch.randn(batch_size, 3, *size, generator=torch.Generator().manual_seed(0))
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
    if "det" in trained.tasks:
        anchors = trained.tasks["det"].anchors(size, "cpu").numpy().astype(np.float32)
        np.save(out.with_suffix(".anchors.npy"), anchors)
        desc["det"]["anchors_file"] = out.with_suffix(".anchors.npy").name
        desc["det"]["num_anchors_total"] = int(anchors.shape[0])
    if check:
        diff = check_onnx(out, x.numpy(), reference, names)
        desc["max_abs_diff"] = diff
        if diff > tolerance:
            raise ConfigError(f"ONNX export {out} differs from PyTorch by {diff:.3g} (> {tolerance}); please report this")
    out.with_suffix(".json").write_text(json.dumps(desc, indent=2))
    return desc


def describe(trained, size, layout, reference) -> dict[str, Any]:
    cfg = trained.config
    desc: dict[str, Any] = {
        "model": cfg.model.name,
        "input": {
            "name": "images",
            "shape": ["batch", 3, size[0], size[1]],
            "layout": "NCHW, RGB",
            "normalisation": "(pixel_0_255 - mean) / std, per channel",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "resize": "scale to fit (longest side, aspect kept), pad bottom/right with 0; "
            "map back with x_orig = x / scale",
        },
        "outputs": {n: {"shape": list(r.shape), "task": t} for (t, _, _, n), r in zip(layout, reference)},
    }
    if "det" in trained.tasks:
        task = trained.tasks["det"]
        hc = task.head_cfg
        desc["det"] = {
            "class_names": trained.class_names.get("det"),
            "num_classes": hc.num_classes,
            "anchors_per_location": hc.num_anchors,
            "levels": list(hc.levels),
            "cls_outputs": "det_cls_p*: (B, A*C, h, w) logits; sigmoid per class (focal loss, no background class)",
            "box_outputs": "det_box_p*: (B, A*4, h, w) box codes (ty, tx, th, tw) relative to the anchors",
            "flatten": "per level (B, A*K, h, w) -> permute (B, h, w, A*K) -> reshape (B, h*w*A, K); "
            "concatenate levels in order: row i pairs with anchors[i]",
            "decode": "yc = ty*ha + yca; xc = tx*wa + xca; h = exp(th)*ha; w = exp(tw)*wa "
            "(ha, wa, yca, xca: anchor height, width, centre); boxes xyxy in input pixels",
            "postprocess": to_dict(task.post_cfg),
        }
    if "seg" in trained.tasks:
        desc["seg"] = {
            "class_names": trained.class_names.get("seg"),
            "output": "seg_logits: (B, C, H, W) class logits at the input size; argmax over C, crop the "
            "padding, resize to the original size",
        }
    return desc


def check_onnx(path: Path, x: np.ndarray, reference: list[np.ndarray], names: list[str]) -> float:
    """Max abs difference between onnxruntime's and PyTorch's outputs on ``x``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("checking the export needs onnxruntime: pip install 'multitask_edet[export]' (or pass --no-check)") from None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(names, {"images": x})
    return float(max(np.abs(g - r).max() for g, r in zip(got, reference)))
