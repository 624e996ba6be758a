"""Drawing predictions on images for people to look at (``mtedet predict`` overlays, reports).

Colours come from the VOC palette, so a class has the same colour in a mask PNG, an overlay
and a precision–recall plot. Tasks draw their own predictions (``Task.draw``) with these.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..datasets.io import IGNORE_INDEX, voc_palette


def colour(label: int) -> tuple[int, int, int]:
    """The colour of class ``label`` (black, palette index 0, is skipped so boxes stay visible)."""
    return tuple(int(c) for c in voc_palette()[1 + label % 254])  # type: ignore[return-value]


def blend_mask(canvas: Image.Image, mask: np.ndarray, alpha: float = 0.45) -> None:
    """Blend the mask's class colours into ``canvas`` in place; class 0 and void stay clear."""
    out = np.asarray(canvas.convert("RGB"), dtype=np.float32).copy()
    colours = voc_palette().astype(np.float32)[mask]
    paint = (mask > 0) & (mask != IGNORE_INDEX)
    out[paint] = (1 - alpha) * out[paint] + alpha * colours[paint]
    canvas.paste(Image.fromarray(out.clip(0, 255).astype(np.uint8)))


def draw_boxes(
    canvas: Image.Image,
    boxes: Sequence[Sequence[float]],
    scores: Sequence[float],
    labels: Sequence[int],
    names: Sequence[str],
) -> None:
    """Boxes (xyxy, canvas pixels) with a "name score" tag, each in its class colour, in place."""
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for (x0, y0, x1, y1), score, label, name in zip(boxes, scores, labels, names):
        c = colour(int(label))
        draw.rectangle([x0, y0, x1, y1], outline=c, width=2)
        text = f"{name} {score:.2f}"
        tw = font.getlength(text)
        ty = max(0.0, y0 - 11)
        draw.rectangle([x0, ty, x0 + tw + 4, ty + 11], fill=c)
        draw.text((x0 + 2, ty), text, fill=(255, 255, 255) if sum(c) < 380 else (0, 0, 0), font=font)
