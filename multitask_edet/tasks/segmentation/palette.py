"""Images the segmentation task writes: VOC palette PNGs (datasets/io.py) and a confusion-matrix picture.

The confusion matrix is drawn with PIL (matplotlib is not a dependency of the project).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ...datasets.io import save_palette_png, voc_palette

__all__ = ["confusion_matrix_image", "save_confusion_matrix_image", "save_palette_png", "voc_palette"]


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
