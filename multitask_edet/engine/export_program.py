"""``mtedet export --format pt2``: the network as a ``torch.export`` ExportedProgram.

``torch.export.export`` captures the network (backbone, BiFPN, every head) as one graph of ATen
operators, saved with ``torch.export.save`` to ``OUT.pt2`` and read back anywhere with
``torch.export.load(OUT.pt2).module()`` (no multitask_edet needed), for AOTInductor or
ExecuTorch. Input and outputs are those of the raw ONNX export (engine/export.py): normalised
float images (B, 3, H, W); the outputs keep the model's structure
(``{"det": {"cls": [...], "box": [...]}, "seg": (B, C, H, W)}``). ``OUT.json`` says how to
normalise and what each output means. The batch is dynamic; with ``dynamic_size`` the height
and width are any multiple of 2**max_level from twice it on (a one-pixel top level is a special
case torch.export refuses to generalise over). The program is loaded back and compared with
the model on a fresh input before the files are kept.

The end-to-end graph (post-processing included) does not go through torch.export:
torchvision's ``batched_nms`` branches on the number of boxes it is given
(torchvision/ops/boxes.py), a size that depends on the data, which torch.export cannot guard on.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch.utils._pytree import tree_leaves

from ..errors import ConfigError
from .builders import load_for_inference
from .export import FlatOutputs, describe


def export_program(
    source: str | Path,
    out: str | Path,
    *,
    image_size: tuple[int, int] | None = None,
    dynamic_size: bool = False,
    check: bool = True,
    tolerance: float = 1e-5,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``out`` (.pt2) and its description ``out.json``; returns the description (with
    ``max_abs_diff``, the loaded program vs the model, when checked)."""
    from torch.export import Dim

    trained = load_for_inference(source, overrides, device="cpu")
    model = trained.model.eval()
    size = tuple(image_size) if image_size else tuple(model.config.image_size)
    model.check_input_size(*size)
    stride = model.stride
    trace_size = tuple(max(s, 2 * stride) for s in size) if dynamic_size else size
    dims: dict[int, Any] = {0: Dim("batch", min=1, max=1024)}
    if dynamic_size:
        dims[2] = stride * Dim("h_blocks", min=2, max=64)
        dims[3] = stride * Dim("w_blocks", min=2, max=64)
    out = Path(out)
    if out.suffix != ".pt2":
        out = out.with_suffix(".pt2")
    out.parent.mkdir(parents=True, exist_ok=True)
    x = torch.randn(2, 3, *trace_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes={"images": dims})
    torch.export.save(program, str(out))

    with torch.no_grad():
        layout = FlatOutputs(model, trained.tasks).names(x)
        reference = [t.numpy() for t in FlatOutputs(model, trained.tasks)(x)]
    desc = describe(trained, size, layout, reference)
    desc["format"] = "torch.export ExportedProgram (torch.export.load(path).module())"
    desc["torch_version"] = torch.__version__
    desc["input"]["shape"] = ["batch", 3, *(["height", "width"] if dynamic_size else list(size))]
    if dynamic_size:
        desc["input"]["size"] = f"multiples of {stride} (2**max_level), from {2 * stride} to {64 * stride}"
    if check:
        desc["max_abs_diff"] = check_program(out, model, (3, 3, *trace_size))
        if desc["max_abs_diff"] > tolerance:
            raise ConfigError(f"the exported program {out} differs from the model by {desc['max_abs_diff']:.3g} "
                              f"(> {tolerance}); please report this")
    out.with_suffix(".json").write_text(json.dumps(desc, indent=2))
    return desc


def check_program(path: Path, model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """Max abs difference between the saved program, loaded back, and the model on a fresh input
    (of another batch size than the one traced, so the dynamic batch is exercised)."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        got, ref = tree_leaves(loaded(x)), tree_leaves(model(x))
    if len(got) != len(ref) or any(g.shape != r.shape for g, r in zip(got, ref)):
        raise ConfigError(f"the exported program {path} returns other outputs than the model; please report this")
    return max(float((g - r).abs().max()) for g, r in zip(got, ref))
