"""Segmentation inference at each image's original size (paper §5.2; standard VOC protocol).

The eval transform resizes an image by ``scale`` and pads it (``pad`` = top, left) to a size
the network accepts. Its valid region in the input is ``round(orig * scale)`` pixels from
the pad offset. Predictions are made by cropping that region out of the logits, resizing the
logits bilinearly to the original size and taking the argmax — resizing scores, not labels,
keeps boundaries smooth, and the result is scored against the untouched original mask.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def valid_region(meta: dict[str, Any] | None, input_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image inside the padded network input."""
    h_in, w_in = input_size
    if not meta or "orig_size" not in meta:
        return 0, 0, h_in, w_in
    h0, w0 = meta["orig_size"]
    scale = float(meta.get("scale", 1.0))
    top, left = (int(p) for p in meta.get("pad", (0, 0)))
    h = min(int(round(h0 * scale)), h_in - top)
    w = min(int(round(w0 * scale)), w_in - left)
    return top, left, h, w


def original_size(meta: dict[str, Any] | None, input_size: tuple[int, int]) -> tuple[int, int]:
    if not meta or "orig_size" not in meta:
        return tuple(input_size)
    return tuple(int(s) for s in meta["orig_size"])


def scores_to_masks(
    scores: torch.Tensor, metas: Sequence[dict[str, Any] | None] | None = None
) -> list[torch.Tensor]:
    """(B, C, H, W) class scores at input size → per image (H0, W0) class indices at original size.

    ``scores`` are logits or probabilities (anything whose argmax is the class). The result is
    uint8 when the classes fit in it (what palette PNGs store), else int64. Images that share
    their valid region and original size (the usual case within a batch) are resized together.
    """
    b, c, h, w = scores.shape
    metas = list(metas) if metas is not None else [None] * b
    dtype = torch.uint8 if c <= 256 else torch.int64
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, meta in enumerate(metas):
        key = valid_region(meta, (h, w)) + original_size(meta, (h, w))
        groups.setdefault(key, []).append(i)
    out: list[torch.Tensor | None] = [None] * b
    for (top, left, vh, vw, h0, w0), idx in groups.items():
        x = scores[idx, :, top : top + vh, left : left + vw]
        if (vh, vw) != (h0, w0):
            x = F.interpolate(x, size=(h0, w0), mode="bilinear", align_corners=False)
        labels = x.argmax(1).to(dtype)
        for j, i in enumerate(idx):
            out[i] = labels[j]
    return out


def mask_to_original(mask: torch.Tensor, meta: dict[str, Any] | None) -> torch.Tensor:
    """A mask at input size → original size: crop the padding, resize by nearest neighbour.

    Exact when the image was only padded (scale 1); otherwise an approximation of the original
    mask, used only when a sample carries no ``meta["orig_mask"]``.
    """
    top, left, vh, vw = valid_region(meta, tuple(mask.shape[-2:]))
    h0, w0 = original_size(meta, tuple(mask.shape[-2:]))
    m = mask[top : top + vh, left : left + vw]
    if (vh, vw) != (h0, w0):
        m = F.interpolate(m[None, None].float(), size=(h0, w0), mode="nearest-exact")[0, 0].to(mask.dtype)
    return m


@torch.no_grad()
def predict_scores(model: nn.Module, images: torch.Tensor, key: str = "seg", flip: bool = False) -> torch.Tensor:
    """Class scores (B, C, H, W) at input size from normalised ``images``.

    ``flip`` adds horizontal-flip test-time augmentation: the softmax probabilities of the
    image and of its mirror (mirrored back) are averaged, so the result is probabilities.
    """
    if not flip:
        return model(images)[key]
    # One forward over image + mirror: twice the batch keeps the device busier than two calls.
    logits = model(torch.cat([images, images.flip(-1)]))[key].float()
    direct, mirrored = logits.chunk(2)
    return (direct.softmax(1) + mirrored.flip(-1).softmax(1)) / 2
