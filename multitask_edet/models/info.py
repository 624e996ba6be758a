"""Size and cost of a model: parameters per part and multiply-adds (paper Table 2's "FLOPs").

The paper counts multiply-adds of convolutions for one image at the native size. We count
the FLOPs of convolutions and matrix products with ``torch.utils.flop_counter`` and halve
them (one multiply-add = 2 FLOPs). Named models are built and run on the meta device, so
D7x at 1536² costs no memory and about a second.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .factory import _has_num_classes, create_model, resolve_config

_MAC_OPS = ("convolution", "mm", "addmm", "bmm", "baddbmm")

#: published models a named variant is to be compared with: (model, params, GMACs or None, what it is)
_TABLE2 = {"d0": (3.9, 2.5), "d1": (6.6, 6.1), "d2": (8.1, 11), "d3": (12, 25), "d4": (21, 55), "d5": (34, 135),
           "d6": (52, 226), "d7": (52, 325), "d7x": (77, 410)}  # EfficientDet paper, Table 2 (FLOPs = multiply-adds)
PUBLISHED: dict[str, list[tuple[str, float, float | None, str]]] = {
    **{f"{prefix}efficientdet-{v}": [(f"EfficientDet-{v.upper()}", p * 1e6, g, "paper Table 2, 90 classes")]
       for v, (p, g) in _TABLE2.items() for prefix in ("", "tf_")},
    "efficientdet-d4-seg": [("EfficientDet-D4 segmentation", 17e6, 18, "paper §5.2 / Table 3")],
    "efficientdet-d3-bdd": [
        ("HybridNets", 12.83e6, None, "EfficientNet-B3 + BiFPN, BDD100K det (1 class) + drivable + lane"),
        ("YOLOP", 7.9e6, None, "BDD100K det (1 class) + drivable + lane"),
    ],
}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _macs(model: nn.Module, image_size: tuple[int, int]) -> float:
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, *image_size, device=device)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    flops = sum(n for op, n in counter.get_flop_counts()["Global"].items() if op.__name__.split(".")[0] in _MAC_OPS)
    return flops / 2


def model_info(
    name_or_model: str | nn.Module,
    tasks: Sequence[str] | str | Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    image_size: int | Sequence[int] | None = None,
) -> dict[str, Any]:
    """JSON-ready ``{"params", "gmacs", "params_per_part", …}`` of a named variant or a model.

    ``tasks`` as ``create_model`` takes them (default: the variant's); ``num_classes`` applies to
    every task that has a class count; ``image_size`` (an int or (H, W)) defaults to the model's
    native size.
    """
    if isinstance(name_or_model, nn.Module):
        model = name_or_model
    else:
        cfg = resolve_config(name_or_model, **({"tasks": tasks} if tasks is not None else {}))
        if num_classes is not None:
            tasks_with = {t: ({**o, "num_classes": num_classes} if _has_num_classes(t, o) else o) for t, o in cfg.tasks.items()}
            cfg = resolve_config(cfg, tasks=tasks_with)
        with torch.device("meta"):
            model = create_model(cfg)
    cfg = model.config
    if image_size is None:
        size = tuple(cfg.image_size)
    elif isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(image_size)
    model.check_input_size(*size)

    parts = {"backbone": _count(model.backbone), "neck": _count(model.neck)}
    parts.update({f"head.{name}": _count(head) for name, head in model.heads.items()})
    classes = {name: h.num_classes for name, h in model.heads.items() if hasattr(h, "num_classes")}
    return {
        "model": cfg.name,
        "tasks": list(model.heads),
        "num_classes": classes,
        "image_size": list(size),
        "levels": [model.min_level, model.max_level],
        "params": _count(model),
        "params_per_part": parts,
        "gmacs": _macs(model, size) / 1e9,
        "published": [{"model": m, "params": n, "gmacs": g, "note": note} for m, n, g, note in PUBLISHED.get(cfg.name, [])],
    }
