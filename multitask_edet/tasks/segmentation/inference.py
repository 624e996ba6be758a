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


#: label of a pixel without a finite prediction, by mask dtype (outside every class id)
NO_CLASS = {torch.uint8: 255, torch.int64: -1}


def label_dtype(num_classes: int) -> torch.dtype:
    """uint8 when the classes and ``NO_CLASS`` fit in it (what palette PNGs store), else int64."""
    return torch.uint8 if num_classes < 256 else torch.int64


def class_labels(scores: torch.Tensor) -> torch.Tensor:
    """(B, C, ...) scores → (B, ...) argmax class, ``NO_CLASS`` where a score is not finite."""
    dtype = label_dtype(scores.shape[1])
    return scores.argmax(1).to(dtype).masked_fill(~torch.isfinite(scores).all(1), NO_CLASS[dtype])


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
        labels = class_labels(x)
        for j, i in enumerate(idx):
            out[i] = labels[j]
    return out


def letterbox_scales(orig_sizes: torch.Tensor, input_size: tuple[Any, Any]) -> torch.Tensor:
    """(B,) float64 scale of every image letterboxed into ``input_size``: ``min(H / h0, W / w0)``,
    the eval transform's scale to the last bit (datasets/transforms.py ``FitScaleCrop``), so the
    valid region and the sampling positions below are the ones ``scores_to_masks`` computes."""
    sizes = orig_sizes.to(torch.float64)
    return torch.minimum(input_size[0] / sizes[:, 0], input_size[1] / sizes[:, 1])


def input_masks(scores: torch.Tensor, orig_sizes: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) scores at input size → (B, H, W) class indices at input size, batched and
    traceable (an exported graph's output): pixels outside each image get ``NO_CLASS``.

    The images sit at the top-left of the input, letterboxed from ``orig_sizes`` (B, 2) =
    (h0, w0); a pixel belongs to the image when its centre does (the rule of ``valid_region``).
    Inside, the mask equals ``scores_to_masks`` of an image at scale 1; at the original size of a
    rescaled image it is ``original_masks``. uint8 with 255 outside when the classes fit, else
    int64 with -1 (``label_dtype``).
    """
    h, w = scores.shape[-2:]
    scales = letterbox_scales(orig_sizes, (h, w)).to(scores.device)
    limit = orig_sizes.to(scores.device, torch.float64) * scales.view(-1, 1)
    rows = torch.arange(h, device=scores.device, dtype=torch.float64) + 0.5
    cols = torch.arange(w, device=scores.device, dtype=torch.float64) + 0.5
    inside = (rows.view(1, -1, 1) < limit[:, 0].view(-1, 1, 1)) & (cols.view(1, 1, -1) < limit[:, 1].view(-1, 1, 1))
    labels = class_labels(scores)
    return torch.where(inside, labels, torch.full_like(labels, NO_CLASS[labels.dtype]))


def original_masks(scores: torch.Tensor, orig_sizes: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) scores at input size → (B, Hmax, Wmax) class indices at every image's original
    size, batched and traceable: ``scores_to_masks`` of letterboxed images (top-left, pad 0) as
    one ``grid_sample`` (ONNX ``GridSample``, opset >= 16).

    Image i's mask is the top-left (h0, w0) of its row, ``NO_CLASS`` beyond; (Hmax, Wmax) is the
    batch's largest original height and width. Each original pixel centre is sampled at its exact
    input position, clamped to the image's valid span — what cropping to ``valid_region`` and
    sampling with border padding does — computed in float64 as ``scores_to_masks`` does, so the
    two differ only where float32 rounding of the sampling weights decides a tie.
    """
    h, w = scores.shape[-2:]
    sizes = orig_sizes.to(scores.device, torch.int64)
    scales = letterbox_scales(sizes, (h, w))
    gy, rows = _sampling_axis(sizes[:, 0], scales, h)
    gx, cols = _sampling_axis(sizes[:, 1], scales, w)
    b, hmax, wmax = gy.shape[0], gy.shape[1], gx.shape[1]
    grid = torch.stack([gx.view(b, 1, wmax).expand(b, hmax, wmax), gy.view(b, hmax, 1).expand(b, hmax, wmax)], -1)
    x = F.grid_sample(scores.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    labels = class_labels(x)
    inside = rows.view(b, hmax, 1) & cols.view(b, 1, wmax)
    return torch.where(inside, labels, torch.full_like(labels, NO_CLASS[labels.dtype]))


def _sampling_axis(n: torch.Tensor, scales: torch.Tensor, size: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """One axis of ``original_masks``: for every image (``n`` (B,) original lengths) and original
    index 0..max(n)-1, the ``grid_sample`` coordinate (float32, -1..1 across ``size`` input pixels)
    of the pixel centre, and whether the index lies inside the image."""
    index = torch.arange(n.max(), device=n.device, dtype=torch.float64).view(1, -1)
    source = (index + 0.5) * scales.view(-1, 1) - 0.5  # _source with pad 0
    # _valid_span with pad 0: input pixels [0, hi); a side too thin to cover a pixel centre keeps pixel 0
    hi = torch.ceil(n.to(torch.float64) * scales - 0.5).clamp(min=1)
    hi = torch.minimum(hi, torch.as_tensor(size, dtype=torch.float64, device=n.device))
    source = torch.minimum(source.clamp(min=0), (hi - 1).view(-1, 1))
    return ((source + 0.5) / size * 2 - 1).to(torch.float32), index < n.view(-1, 1)


def mask_to_original(mask: torch.Tensor, meta: dict[str, Any] | None) -> torch.Tensor:
    """A mask at input size → original size by nearest neighbour through the same mapping.

    Exact when the image was only padded (scale 1); otherwise an approximation of the original
    mask, used only when a sample carries no original-size mask in ``meta["orig_masks"]``.
    """
    (h0, w0), scale, (top, left) = _geometry(meta, tuple(mask.shape[-2:]))
    rows = (_source(h0, scale, top) + 0.5).floor().long().clamp(0, mask.shape[-2] - 1)
    cols = (_source(w0, scale, left) + 0.5).floor().long().clamp(0, mask.shape[-1] - 1)
    return mask[rows.to(mask.device)][:, cols.to(mask.device)]
