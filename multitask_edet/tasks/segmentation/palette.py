"""Images the segmentation task writes: VOC palette PNGs and a confusion-matrix picture.

Pascal VOC stores class masks as palette ('P' mode) PNGs whose pixel index is the class and
whose colour table is the VOC colormap (devkit ``labelcolormap``: the bits of the index spread
over R, G, B from the most significant bit down). Predictions written that way open in VOC
tools and viewers like the ground truth does. Neither PIL nor torchvision ships this
colormap, so it is generated here. The confusion matrix is drawn with PIL (matplotlib is not
a dependency of the project).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """(num_colors, 3) uint8 VOC colormap: 0 black, 1 (128, 0, 0), ..., 255 (224, 224, 192)."""
    idx = np.arange(num_colors)
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= (((idx >> (3 * bit + channel)) & 1) << (7 - bit)).astype(np.uint8)
    return palette


def save_palette_png(mask: torch.Tensor | np.ndarray, path: str | Path, palette: np.ndarray | None = None) -> Path:
    """Write a (H, W) class-index mask as a palette PNG (mode 'P', VOC colormap by default)."""
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"a mask to write as {path} must be (H, W), got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"palette PNG {path} can hold class indices 0..255 only, got {arr.min()}..{arr.max()}")
    image = Image.fromarray(arr.astype(np.uint8))
    image.putpalette((voc_palette() if palette is None else palette).astype(np.uint8).tobytes())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def confusion_matrix_image(
    confmat: torch.Tensor | np.ndarray, class_names: Sequence[str], cell: int = 22
) -> Image.Image:
    """Row-normalised confusion matrix (rows = ground truth, columns = prediction) as an RGB image.

    Cell shade = share of the row's ground-truth pixels; the diagonal is per-class recall.
    """
    cm = np.asarray(confmat.cpu() if isinstance(confmat, torch.Tensor) else confmat, dtype=np.float64)
    n = cm.shape[0]
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    font = ImageFont.load_default()
    label_w = max(int(font.getlength(str(name))) for name in class_names) + 8
    size = label_w + n * cell + 1
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for i in range(n):
        for j in range(n):
            # white (0) → dark blue (1)
            shade = share[i, j]
            colour = tuple(int(255 - shade * (255 - c)) for c in (8, 48, 107))
            x, y = label_w + j * cell, label_w + i * cell
            draw.rectangle([x, y, x + cell, y + cell], fill=colour, outline=(200, 200, 200))
            if rows[i, 0] > 0 and cell >= 18:
                text = f"{round(100 * shade)}"
                draw.text((x + cell / 2, y + cell / 2), text, anchor="mm", font=font,
                          fill="white" if shade > 0.5 else "black")
        name = str(class_names[i])
        draw.text((label_w - 4, label_w + i * cell + cell / 2), name, anchor="rm", font=font, fill="black")
    # Column labels: drawn horizontally on a strip, then turned a quarter counter-clockwise so
    # that each reads bottom-up from just above its column.
    strip = Image.new("RGB", (label_w, n * cell), "white")
    strip_draw = ImageDraw.Draw(strip)
    for j, name in enumerate(class_names):
        strip_draw.text((4, j * cell + cell / 2), str(name), anchor="lm", font=font, fill="black")
    image.paste(strip.rotate(90, expand=True), (label_w, 0))
    draw.text((4, label_w - 24), "rows: truth", font=font, fill="gray")
    draw.text((4, label_w - 12), "cols: predicted", font=font, fill="gray")
    return image


def save_confusion_matrix_image(
    confmat: torch.Tensor | np.ndarray, class_names: Sequence[str], path: str | Path
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    confusion_matrix_image(confmat, class_names).save(path)
    return path
