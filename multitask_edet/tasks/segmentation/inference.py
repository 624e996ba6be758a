"""Segmentation inference at each image's original size (paper §5.2; standard VOC protocol).

The eval transform maps an original image into the network input by
``input = scale · original + pad`` in continuous pixel coordinates (datasets/transforms.py).
Predictions go back the same way: for every original pixel centre the class scores are
sampled bilinearly at its exact input position, then the argmax is taken — resizing scores,
not labels, keeps boundaries smooth, and the result is scored against the untouched original
mask. Sampling is clamped to the image's valid region, so padding never leaks into the edge
pixels. With scale 1 this is a plain crop.

A pixel whose class scores are not all finite has no class: it gets ``NO_CLASS`` (255 in uint8
masks, -1 in int64 ones), never the argmax of NaNs (which would be class 0, a made-up answer).
The evaluator counts such pixels as misses and refuses to score a model whose outputs were all
non-finite; in a saved palette PNG they are void.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ...datasets.io import IGNORE_INDEX


#: label of a pixel without a finite prediction, by mask dtype (outside every class id)
NO_CLASS = {torch.uint8: 255, torch.int64: -1}


def _geometry(meta: dict[str, Any] | None, input_size: tuple[int, int]) -> tuple[tuple[int, int], float, tuple[float, float]]:
    """(orig_size, scale, pad) with identity defaults for a sample without ``meta``."""
    if not meta or "orig_size" not in meta:
        return tuple(input_size), 1.0, (0.0, 0.0)
    h0, w0 = (int(s) for s in meta["orig_size"])
    top, left = meta.get("pad", (0, 0))
    return (h0, w0), float(meta.get("scale", 1.0)), (float(top), float(left))


def _valid_span(n: int, scale: float, pad: float, size: int) -> tuple[int, int]:
    # Input pixels whose centre u + 0.5 lies on the scaled image [pad, pad + n·scale): the
    # same rule the transforms use to decide which pixels are image and which are padding.
    lo = min(max(math.ceil(pad - 0.5), 0), size)
    hi = min(max(math.ceil(n * scale + pad - 0.5), 0), size)
    if hi <= lo:
        # a side so thin once scaled (3 of 1000 pixels fit to 128: 0.38 px) that it covers no
        # pixel centre: the one input pixel its middle lies in holds its prediction
        lo = min(max(math.floor(pad + n * scale / 2), 0), size - 1)
        hi = lo + 1
    return lo, hi


def valid_region(meta: dict[str, Any] | None, input_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image inside the padded network input."""
    (h0, w0), scale, (top, left) = _geometry(meta, input_size)
    y0, y1 = _valid_span(h0, scale, top, input_size[0])
    x0, x1 = _valid_span(w0, scale, left, input_size[1])
    return y0, x0, y1 - y0, x1 - x0


def _source(n: int, scale: float, pad: float) -> torch.Tensor:
    """Input coordinate (pixel-index units, float64) of each original pixel centre."""
    return (torch.arange(n, dtype=torch.float64) + 0.5) * scale + pad - 0.5


def _normalised(coords: torch.Tensor, start: int, length: int) -> torch.Tensor:
    # grid_sample (align_corners=False) wants -1..1 across the edges of the sampled window
    return ((coords - start + 0.5) / length * 2 - 1).float()


def scores_to_masks(
    scores: torch.Tensor, metas: Sequence[dict[str, Any] | None] | None = None
) -> list[torch.Tensor]:
    """(B, C, H, W) class scores at input size → per image (H0, W0) class indices at original size.

    ``scores`` are logits or probabilities (anything whose argmax is the class). The result is
    uint8 when the classes and ``NO_CLASS`` fit in it (what palette PNGs store), else int64.
    Images that share their geometry (the usual case within a batch) are resampled together.
    """
    b, c, h, w = scores.shape
    metas = list(metas) if metas is not None else [None] * b
    dtype = torch.uint8 if c < 256 else torch.int64
    groups: dict[tuple, list[int]] = {}
    for i, meta in enumerate(metas):
        groups.setdefault(_geometry(meta, (h, w)), []).append(i)
    out: list[torch.Tensor | None] = [None] * b
    for ((h0, w0), scale, (top, left)), idx in groups.items():
        y0, y1 = _valid_span(h0, scale, top, h)
        x0, x1 = _valid_span(w0, scale, left, w)
        x = scores[idx, :, y0:y1, x0:x1]
        if not (scale == 1.0 and (y1 - y0, x1 - x0) == (h0, w0)):
            gy = _normalised(_source(h0, scale, top), y0, y1 - y0).to(x.device)
            gx = _normalised(_source(w0, scale, left), x0, x1 - x0).to(x.device)
            grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)  # (H0, W0, [x, y])
            x = F.grid_sample(
                x.float(), grid.expand(len(idx), -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=False
            )
        labels = x.argmax(1).to(dtype).masked_fill_(~torch.isfinite(x).all(1), NO_CLASS[dtype])
        for j, i in enumerate(idx):
            out[i] = labels[j]
    return out


def input_masks(scores: torch.Tensor, orig_sizes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) scores at input size → (B, H, W) class indices at input size, batched and
    traceable (an exported graph's output): pixels outside each image are marked as ignored.

    The images sit at the top-left of the input, scaled by ``scales`` (B,) from ``orig_sizes``
    (B, 2) = (h0, w0); a pixel belongs to the image when its centre does (the rule of
    ``valid_region``). Inside, the mask equals ``scores_to_masks`` of an image at scale 1, and
    cropping it to the valid region then resizing to (h0, w0) maps it to the original. uint8
    with 255 outside when the classes fit below 255, else int64 with -1 outside.
    """
    h, w = scores.shape[-2:]
    limit = (orig_sizes.to(scores.device, torch.float32) * scales.to(scores.device, torch.float32).view(-1, 1))
    rows = torch.arange(h, device=scores.device, dtype=torch.float32) + 0.5
    cols = torch.arange(w, device=scores.device, dtype=torch.float32) + 0.5
    inside = (rows.view(1, -1, 1) < limit[:, 0].view(-1, 1, 1)) & (cols.view(1, 1, -1) < limit[:, 1].view(-1, 1, 1))
    small = scores.shape[1] < IGNORE_INDEX
    labels = scores.argmax(1).to(torch.uint8 if small else torch.int64)
    return torch.where(inside, labels, torch.full_like(labels, IGNORE_INDEX if small else -1))


def mask_to_original(mask: torch.Tensor, meta: dict[str, Any] | None) -> torch.Tensor:
    """A mask at input size → original size by nearest neighbour through the same mapping.

    Exact when the image was only padded (scale 1); otherwise an approximation of the original
    mask, used only when a sample carries no original-size mask in ``meta["orig_masks"]``.
    """
    (h0, w0), scale, (top, left) = _geometry(meta, tuple(mask.shape[-2:]))
    rows = (_source(h0, scale, top) + 0.5).floor().long().clamp(0, mask.shape[-2] - 1)
    cols = (_source(w0, scale, left) + 0.5).floor().long().clamp(0, mask.shape[-1] - 1)
    return mask[rows.to(mask.device)][:, cols.to(mask.device)]
