"""``mtedet predict``: a trained model on image files (issue 5 item 7).

Per image ``<stem>.json`` (detections in original pixels with class names and scores, and
the segmentation's classes), ``<stem>_mask.png`` (class-index palette PNG at the original
size) and ``<stem>_overlay.png`` (the image with the coloured mask, boxes and labels).
Images are resized/padded exactly as at evaluation (eval transforms), in batches.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..datasets.base import collate, normalize_images
from ..datasets.io import read_image
from ..datasets.transforms import eval_transforms
from ..errors import DatasetError
from .build import Trained, amp_dtype_for, image_size_of, load_trained
from .distributed import resolve_device, env_dist_info
from .trainer import autocast, to_float

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted); a missing path is an error."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DatasetError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p} is neither an image file nor a folder")
    if not out:
        raise DatasetError("no images given to predict on")
    return out


def _font():
    return ImageFont.load_default()


def colour(label: int) -> tuple[int, int, int]:
    from ..tasks.segmentation.palette import voc_palette

    # skip black (index 0) so boxes stay visible on dark images
    return tuple(int(c) for c in voc_palette()[1 + label % 254])  # type: ignore[return-value]


def overlay(image: np.ndarray, mask: np.ndarray | None, dets: Sequence[dict[str, Any]], alpha: float = 0.45) -> Image.Image:
    """The image with the mask's colours blended in (background and void left clear), boxes and labels."""
    from ..tasks.segmentation.palette import voc_palette

    out = image.astype(np.float32)
    if mask is not None:
        colours = voc_palette().astype(np.float32)[mask]
        paint = (mask > 0) & (mask != 255)
        out[paint] = (1 - alpha) * out[paint] + alpha * colours[paint]
    pic = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    font = _font()
    for d in dets:
        x0, y0, x1, y1 = d["box"]
        c = colour(d["label"])
        draw.rectangle([x0, y0, x1, y1], outline=c, width=2)
        text = f"{d['class']} {d['score']:.2f}"
        tw = font.getlength(text)
        ty = max(0.0, y0 - 11)
        draw.rectangle([x0, ty, x0 + tw + 4, ty + 11], fill=c)
        draw.text((x0 + 2, ty), text, fill=(255, 255, 255) if sum(c) < 380 else (0, 0, 0), font=font)
    return pic


def predict_batch(trained: Trained, batch: dict[str, Any], device: torch.device, amp_dtype=None) -> dict[str, list[Any]]:
    """Per task, per image predictions in original coordinates."""
    images = normalize_images(batch["images"], device)
    with torch.no_grad(), autocast(device, amp_dtype):
        outputs = trained.model(images)
    outputs = to_float(outputs)
    return {t: task.postprocess(outputs[t], batch) for t, task in trained.tasks.items() if t in outputs}


def run_prediction(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    batch_size: int = 4,
    device: str = "auto",
    score_threshold: float = 0.3,
    overlays: bool = True,
) -> list[dict[str, Any]]:
    """Write JSON + mask PNG + overlay PNG per image; returns the JSON records."""
    from ..tasks.segmentation.palette import save_palette_png

    dev = resolve_device(device, env_dist_info())
    trained = load_trained(checkpoint, device=dev)
    files = list_images(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    transform = eval_transforms(image_size_of(trained.config))
    amp = amp_dtype_for(trained.config.train.amp, dev)
    det_names = trained.class_names.get("det", [])
    seg_names = trained.class_names.get("seg", [])
    records = []
    used: set[str] = set()
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        raw = []
        for k, f in enumerate(chunk):
            img = read_image(f)
            raw.append({"image": img, "image_id": start + k, "file_name": str(f), "orig_size": img.shape[:2]})
        batch = collate([transform(dict(s)) for s in raw])
        preds = predict_batch(trained, batch, dev, amp)
        for k, (f, sample) in enumerate(zip(chunk, raw)):
            h, w = sample["orig_size"]
            rec: dict[str, Any] = {"file": str(f), "width": int(w), "height": int(h)}
            dets: list[dict[str, Any]] = []
            if "det" in preds:
                p = preds["det"][k]
                for box, score, label in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist()):
                    if score < score_threshold:
                        continue
                    name = det_names[label] if label < len(det_names) else str(label)
                    dets.append({"box": [round(v, 2) for v in box], "score": round(score, 4), "label": int(label), "class": name})
                rec["detections"] = dets
            mask = None
            stem = _unique_stem(f, start + k, used)
            if "seg" in preds:
                mask = preds["seg"][k].cpu().numpy().astype(np.uint8)
                save_palette_png(mask, out / f"{stem}_mask.png")
                present = sorted(int(v) for v in np.unique(mask) if v != 255)
                rec["segmentation"] = {
                    "mask": f"{stem}_mask.png",
                    "classes": {seg_names[v] if v < len(seg_names) else str(v): float((mask == v).mean()) for v in present},
                }
            if overlays:
                overlay(sample["image"], mask, dets).save(out / f"{stem}_overlay.png")
                rec["overlay"] = f"{stem}_overlay.png"
            (out / f"{stem}.json").write_text(json.dumps(rec, indent=2))
            records.append(rec)
    return records


def _unique_stem(f: Path, index: int, used: set[str]) -> str:
    """The image's stem; two inputs with the same stem (different folders) get an index suffix."""
    stem = f.stem if f.stem not in used else f"{f.stem}_{index}"
    used.add(stem)
    return stem
