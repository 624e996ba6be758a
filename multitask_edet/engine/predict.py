"""``mtedet predict``: a trained model on image files.

Per image ``<stem>.json`` (each task's record: detections in original pixels with class
names and scores, a segmentation's classes and mask file, or what a user's task records),
``<stem>_<task>_mask.png`` (class-index palette PNG at the original size, per segmentation
task) and ``<stem>_overlay.png`` (the image with every task's prediction drawn). Images are
resized/padded exactly as at evaluation (eval transforms), in batches, and go through the same
inference path as evaluation (engine/inference.py), test-time augmentation included.

A file that cannot be read (corrupt, truncated, not an image, no permission) does not stop
``mtedet predict``: it is left out, the others are predicted, and it is listed at the end and
in ``summary.json`` with the reason; only when no file at all could be read is it an error.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from ..datasets.base import collate
from ..datasets.io import read_image, save_palette_png
from ..datasets.transforms import eval_transforms
from ..errors import ConfigError, DatasetError
from .builders import Trained, amp_dtype_for, load_for_inference
from .distributed import env_dist_info, resolve_device
from .inference import predict_batch

#: the run's own record (files predicted, files that could not be read), next to the per-image JSON
SUMMARY_FILE = "summary.json"
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


def _as_array(item: str | Path | np.ndarray, index: int) -> np.ndarray:
    if not isinstance(item, np.ndarray):
        return read_image(item)
    if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
        raise ConfigError(f"image {index}: expected an RGB uint8 array (H, W, 3), got {item.shape} {item.dtype}")
    return item


def predict_images(
    trained: Trained,
    images: Sequence[str | Path | np.ndarray],
    batch_size: int = 8,
    device: torch.device | None = None,
    unreadable: list[dict[str, str]] | None = None,
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Per image (in order): (the raw sample: image, file_name, orig_size …, {task: prediction}).

    ``images``: files or RGB uint8 arrays. Predictions are in the image's own pixels.
    ``unreadable``: a list that receives the files that cannot be read (file, reason), which
    are then left out; without it such a file raises its ``DatasetError``.
    """
    device = device or next(trained.model.parameters()).device
    transform = eval_transforms(trained.image_size)
    amp = amp_dtype_for(trained.amp, device)
    for start in range(0, len(images), batch_size):
        raw = []
        for k, item in enumerate(images[start : start + batch_size]):
            name = str(item) if not isinstance(item, np.ndarray) else f"array-{start + k}"
            try:
                img = _as_array(item, start + k)
            except DatasetError as e:
                if unreadable is None or isinstance(item, np.ndarray):
                    raise
                unreadable.append({"file": name, "reason": str(e)})
                continue
            raw.append({"image": img, "image_id": start + k, "file_name": name, "orig_size": img.shape[:2]})
        if not raw:
            continue
        preds = predict_batch(trained.model, trained.tasks, collate([transform(dict(s)) for s in raw]), device, amp)
        for k, sample in enumerate(raw):
            yield sample, {t: p[k] for t, p in preds.items()}


def draw_overlay(trained: Trained, image: np.ndarray, preds: dict[str, Any], score_threshold: float) -> Image.Image:
    """The image with every task's prediction drawn: masks first, then what goes on top of them."""
    canvas = Image.fromarray(image)
    order = sorted(preds, key=lambda t: trained.tasks[t].annotation != "mask")
    for t in order:
        trained.tasks[t].draw(canvas, preds[t], score_threshold=score_threshold)
    return canvas


def run_prediction(
    source: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    batch_size: int = 4,
    device: str = "auto",
    score_threshold: float = 0.3,
    overlays: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Write JSON + mask PNGs + overlay PNG per image, and ``summary.json``; returns the JSON records.

    ``source``: a checkpoint, run folder, ``save_pretrained`` folder or Hub repository id
    (builders.py ``load_for_inference``); ``overrides`` change the saved config's inference options
    (e.g. ``{"seg": {"flip_test": True}}``). Files that cannot be read are left out, printed and
    listed in ``summary.json``; a ``DatasetError`` only when none of them could be read.
    """
    dev = resolve_device(device, env_dist_info())
    trained = load_for_inference(source, overrides, device=dev)
    files = list_images(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    used = {SUMMARY_FILE[: -len(".json")]}  # an image called summary.jpg gets summary_<index>.json
    unreadable: list[dict[str, str]] = []
    for index, (sample, preds) in enumerate(predict_images(trained, files, batch_size, dev, unreadable)):
        f = Path(sample["file_name"])
        h, w = sample["orig_size"]
        stem = _unique_stem(f, index, used)
        rec: dict[str, Any] = {"file": str(f), "width": int(w), "height": int(h)}
        for t, p in preds.items():

            def save(suffix: str, array: Any, _t: str = t) -> str:
                name = f"{stem}_{_t}_{suffix}.png"
                save_palette_png(array, out / name)
                return name

            rec[t] = trained.tasks[t].record(p, score_threshold=score_threshold, save=save)
        if overlays:
            draw_overlay(trained, sample["image"], preds, score_threshold).save(out / f"{stem}_overlay.png")
            rec["overlay"] = f"{stem}_overlay.png"
        (out / f"{stem}.json").write_text(json.dumps(rec, indent=2))
        records.append(rec)
    _write_summary(out, source, records, unreadable)
    if unreadable and not records:
        first = unreadable[0]
        raise DatasetError(f"none of the {len(files)} image file(s) could be read (first: {first['reason']}); "
                           f"all are listed in {out / SUMMARY_FILE}")
    return records


def _write_summary(out: Path, source: str | Path, records: list[dict[str, Any]],
                   unreadable: list[dict[str, str]]) -> None:
    """``summary.json``: the files predicted and the files left out (with why), also printed."""
    summary = {"model": str(source), "predicted": len(records), "files": [r["file"] for r in records],
               "unreadable": unreadable}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    if unreadable:
        print(f"{len(unreadable)} file(s) could not be read and were left out (listed in {out / SUMMARY_FILE}):",
              file=sys.stderr)
        for u in unreadable:
            print(f"  {u['file']}: {u['reason']}", file=sys.stderr)


def _unique_stem(f: Path, index: int, used: set[str]) -> str:
    """The image's stem; two inputs with the same stem (different folders) get an index suffix."""
    stem = f.stem if f.stem not in used else f"{f.stem}_{index}"
    used.add(stem)
    return stem
