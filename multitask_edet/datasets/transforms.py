"""Augmentation and resizing of image + boxes + mask in one albumentations call (paper §5.1, §5.2).

Train (paper §5.1 "scale jitter + random crop", §5.2 standard VOC practice): the image is
scaled to fit the input size times a random factor (default [0.1, 2.0] with detection,
[0.5, 2.0] for segmentation alone), placed at a random offset in the input canvas — a
random crop when it is larger, padding (image 0, mask 255) when smaller — then flipped
horizontally (+ optional colour jitter). Eval: scaled to fit the input size (longest side,
aspect kept) and padded bottom/right.

Scale, crop and pad are one ``cv2.warpAffine`` to the output size (``FitScaleCrop``, hand
written: no albumentations transform scales relative to the *network input* and crops/pads
in one pass). That is faster than resize-then-crop (only output pixels are computed) and
exact: input = scale · original − offset, in continuous pixel coordinates, for image, mask
and boxes alike, so ``meta`` maps predictions back without rounding error:
``x_orig = (x_input - pad_left) / scale``. Masks use nearest-neighbour only. Boxes are
clipped and the ones that become degenerate are dropped by albumentations' BboxParams.

Every annotation of a sample goes through the same call, whatever its name: all box
annotations together (one ``bboxes`` list with the annotation as a label field), every mask
in ``masks``. Output (datasets/base.py): image uint8 (3, H, W); per boxes annotation
boxes float32 (N, 4) / labels int64 / ignore bool tensors in input pixels; per mask
annotation int64 (H, W); ``meta`` = image_id, file_name, orig_size, scale, pad (top, left;
negative = cropped), dataset, flipped, and for eval ``orig_masks`` (name → uint8 mask at the
original size); ``skipped`` when the dataset replaced a bad sample (see dataset.py).
"""
from __future__ import annotations

import os
import random
from typing import Any, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.core.bbox_utils import denormalize_bboxes, normalize_bboxes  # noqa: E402

from ..errors import ConfigError  # noqa: E402
from .io import IGNORE_INDEX  # noqa: E402

DET_SCALE_RANGE = (0.1, 2.0)
SEG_SCALE_RANGE = (0.5, 2.0)

# Raw-sample keys that travel into ``meta`` (everything the model does not consume).
_META_KEYS = ("image_id", "file_name", "orig_size", "dataset", "skipped")


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) <= 0:
        raise ConfigError(f"image size {size!r}: expected an int or (height, width)")
    return size  # type: ignore[return-value]


class FitScaleCrop(A.DualTransform):
    """Scale by ``fit · s`` (fit = the factor that fits the image into ``size``), place at an offset.

    ``s`` is drawn from ``scale_range``; with ``random_offset`` the placement is uniform over
    the crops (scaled image larger than the canvas) or the pad positions (smaller),
    otherwise the image sits at the top-left corner (pad bottom/right only).
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale_range: Sequence[float] = (1.0, 1.0),
        random_offset: bool = False,
        fill: float = 0,
        fill_mask: float = IGNORE_INDEX,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        self.size = _hw(size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.random_offset = random_offset
        self.fill = fill
        self.fill_mask = fill_mask

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        H, W = self.size
        lo, hi = self.scale_range
        s = min(H / h, W / w) * (lo if lo == hi else float(self.random_generator.uniform(lo, hi)))
        ox = oy = 0
        if self.random_offset:
            ox = self._offset(w * s, W)
            oy = self._offset(h * s, H)
        return {"scale": s, "offset": (ox, oy)}

    def _offset(self, scaled: float, out: int) -> int:
        # crop start (>= 0) when the scaled image is larger, minus the left pad when smaller
        lo, hi = (0, int(np.floor(scaled - out))) if scaled > out else (int(np.ceil(scaled - out)), 0)
        return int(self.random_generator.integers(lo, hi + 1))

    def _warp(self, img: np.ndarray, scale: float, offset: tuple[int, int], nearest: bool, fill) -> np.ndarray:
        H, W = self.size
        ox, oy = offset
        orig_hw = img.shape[:2]
        sx = sy = scale
        if not nearest and scale < 0.5:
            # area-average first so a strong shrink does not alias; the exact per-axis ratio
            # of that resize is folded into the warp below
            k = int(1.0 / (2.0 * scale))
            h, w = img.shape[:2]
            w2, h2 = max(1, round(w / k)), max(1, round(h / k))
            img = cv2.resize(img, (w2, h2), interpolation=cv2.INTER_AREA)
            sx, sy = scale * w / w2, scale * h / h2
        # inverse map, pixel centres: src = (dst + 0.5 + offset) / scale - 0.5
        m = np.array([[1 / sx, 0, (0.5 + ox) / sx - 0.5], [0, 1 / sy, (0.5 + oy) / sy - 0.5]], dtype=np.float64)
        flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
        border = fill if np.ndim(fill) else (fill,) * (img.shape[2] if img.ndim == 3 else 1)
        out = cv2.warpAffine(img, m, (W, H), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=border)
        if not nearest:
            # Bilinear sampling bleeds the image half a pixel into the padding; make the
            # padding exactly the pixels whose centre lies outside the scaled image, as
            # nearest-neighbour sampling of the mask does.
            x0, x1 = self._valid(orig_hw[1], scale, ox, W)
            y0, y1 = self._valid(orig_hw[0], scale, oy, H)
            out[:y0] = fill
            out[y1:] = fill
            out[:, :x0] = fill
            out[:, x1:] = fill
        return out

    @staticmethod
    def _valid(n: int, scale: float, offset: int, out: int) -> tuple[int, int]:
        """Output pixels u whose centre u + 0.5 lies in [-offset, n · scale - offset)."""
        lo = int(np.ceil(-offset - 0.5))
        hi = int(np.ceil(n * scale - offset - 0.5))
        return min(max(lo, 0), out), min(max(hi, 0), out)

    def apply(self, img: np.ndarray, scale: float, offset: tuple[int, int], **params: Any) -> np.ndarray:
        return self._warp(img, scale, offset, nearest=False, fill=self.fill)

    def apply_to_mask(self, mask: np.ndarray, scale: float, offset: tuple[int, int], **params: Any) -> np.ndarray:
        return self._warp(mask, scale, offset, nearest=True, fill=self.fill_mask)

    def apply_to_bboxes(self, bboxes: np.ndarray, scale: float, offset: tuple[int, int], **params: Any) -> np.ndarray:
        if not len(bboxes):
            return bboxes
        out = denormalize_bboxes(bboxes.copy(), params["shape"][:2])
        out[:, [0, 2]] = out[:, [0, 2]] * scale - offset[0]
        out[:, [1, 3]] = out[:, [1, 3]] * scale - offset[1]
        return normalize_bboxes(out, self.size)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "scale_range", "random_offset", "fill", "fill_mask")


class SampleTransform:
    """Raw sample (numpy) → network sample (tensors + meta). ``seed`` makes it reproducible."""

    def __init__(self, compose: A.Compose, train: bool):
        self.compose = compose
        self.train = train

    def __repr__(self) -> str:
        return f"SampleTransform(train={self.train}, {self.compose!r})"

    def __call__(self, sample: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
        if seed is not None:
            # one shared stream for all transforms (set_random_seed would give each the same one)
            self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        box_sets, masks = annotation_entries(sample)
        data: dict[str, Any] = {"image": sample["image"]}
        parts = [(np.asarray(sample[n]["boxes"], dtype=np.float32).reshape(-1, 4),
                  np.asarray(sample[n]["labels"], dtype=np.int64).reshape(-1),
                  np.asarray(sample[n]["ignore"], dtype=np.int64).reshape(-1)) for n in box_sets]
        data["bboxes"] = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 4), np.float32)
        data["labels"] = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0,), np.int64)
        data["ignore"] = np.concatenate([p[2] for p in parts]) if parts else np.zeros((0,), np.int64)
        data["box_set"] = np.concatenate([np.full(len(p[1]), i, np.int64) for i, p in enumerate(parts)]) \
            if parts else np.zeros((0,), np.int64)
        if masks:
            data["masks"] = [sample[n] for n in masks]
        r = self.compose(**data)

        warp = dict(next(p for name, p in r["applied_transforms"] if name == "FitScaleCrop"))
        flipped = any(name == "HorizontalFlip" for name, _ in r["applied_transforms"])
        out: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(r["image"].transpose(2, 0, 1)))}
        boxes = np.asarray(r["bboxes"], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(r["labels"], dtype=np.int64)
        ignore = np.asarray(r["ignore"], dtype=np.int64) != 0
        box_set = np.asarray(r["box_set"], dtype=np.int64)
        for i, n in enumerate(box_sets):
            keep = box_set == i
            out[n] = {"boxes": torch.from_numpy(np.ascontiguousarray(boxes[keep])),
                      "labels": torch.as_tensor(labels[keep]), "ignore": torch.as_tensor(ignore[keep])}
        for n, m in zip(masks, r.get("masks", ())):
            out[n] = torch.from_numpy(np.asarray(m).astype(np.int64))
        meta = {k: sample[k] for k in _META_KEYS if k in sample}
        ox, oy = warp["offset"]
        meta.update(scale=float(warp["scale"]), pad=(-int(oy), -int(ox)), flipped=flipped)
        if not self.train and masks:
            meta["orig_masks"] = {n: torch.from_numpy(np.ascontiguousarray(sample[n], dtype=np.uint8)) for n in masks}
        out["meta"] = meta
        return out


def annotation_entries(sample: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Names of the sample's box annotations and of its mask annotations (datasets/base.py)."""
    boxes, masks = [], []
    for k, v in sample.items():
        if k in _META_KEYS or k == "image":
            continue
        if isinstance(v, dict) and "boxes" in v:
            boxes.append(k)
        elif isinstance(v, np.ndarray) and v.ndim == 2:
            masks.append(k)
    return boxes, masks


def _bbox_params(min_area: float, min_visibility: float, min_size: float) -> A.BboxParams:
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["labels", "ignore", "box_set"],
        min_area=min_area,
        min_visibility=min_visibility,
        min_width=min_size,
        min_height=min_size,
        clip=True,
    )


def default_scale_range(kinds: str | Sequence[str]) -> tuple[float, float]:
    """Detection's [0.1, 2.0] whenever a task learns from boxes; segmentation's [0.5, 2.0] otherwise.

    ``kinds``: the annotation kinds ("boxes", "mask") of the trained tasks.
    """
    names = kinds.split(",") if isinstance(kinds, str) else list(kinds)
    return DET_SCALE_RANGE if "boxes" in names else SEG_SCALE_RANGE


def train_transforms(
    image_size: int | Sequence[int],
    kinds: str | Sequence[str] = ("boxes",),
    *,
    scale_range: Sequence[float] | None = None,
    hflip: float = 0.5,
    color_jitter: float = 0.0,
    min_area: float = 1.0,
    min_visibility: float = 0.0,
    min_size: float = 1.0,
) -> SampleTransform:
    """Scale jitter + random crop/pad to ``image_size`` + horizontal flip (+ colour jitter).

    Args:
        image_size: network input, int or (H, W).
        kinds: annotation kinds of the trained tasks; they choose the default scale range.
        scale_range: factors of the fit-to-input scale (default by kinds, see default_scale_range).
        color_jitter: strength of brightness/contrast/saturation jitter (0 = off; hue = strength/4).
        min_area, min_visibility, min_size: boxes whose visible part is smaller (px², fraction of
            the box, px of width or height) after the crop are dropped.
    """
    lo, hi = scale_range if scale_range is not None else default_scale_range(kinds)
    if not 0 < lo <= hi:
        raise ConfigError(f"scale_range {scale_range!r}: expected 0 < min <= max")
    ops: list[A.BasicTransform] = [FitScaleCrop(image_size, (lo, hi), random_offset=True), A.HorizontalFlip(p=hflip)]
    if color_jitter > 0:
        c = float(color_jitter)
        ops.append(A.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(0.5, c / 4), p=0.8))
    compose = A.Compose(ops, bbox_params=_bbox_params(min_area, min_visibility, min_size), save_applied_params=True)
    return SampleTransform(compose, train=True)


def eval_transforms(image_size: int | Sequence[int]) -> SampleTransform:
    """Fit the image into ``image_size`` (longest side, aspect kept) and pad bottom/right."""
    compose = A.Compose(
        [FitScaleCrop(image_size)], bbox_params=_bbox_params(0.0, 0.0, 0.0), save_applied_params=True
    )
    return SampleTransform(compose, train=False)
