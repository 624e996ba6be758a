"""File readers and helpers shared by the BDD100K, Cityscapes and COCO panoptic readers.

``io.read_mask`` reads masks whose pixel value IS the class (0..255). The multi-task datasets
also store labels other ways, each read here into a plain integer array with a one-line
``DatasetError`` naming the file when it is unreadable or of the wrong kind:

- ``read_id_png``: 8- or 16-bit grey PNGs of integer ids that may exceed 255 (Cityscapes
  ``*_instanceIds.png``: class·1000 + instance).
- ``read_rgb_png``: RGB label PNGs whose colour encodes an id (COCO panoptic segments).
- ``read_binary_png``: 0/255 masks stored as grey or RGB(A) PNGs (the HybridNets/YOLOP
  re-packed BDD100K masks) → bool.
- ``check_size``: a label array must have its image's size.
- ``ids_present``: the distinct ids of an id map, fast for small non-negative ids.
- ``boxes_of_ids``: the pixel extent of each id in an id map, as xyxy boxes.
- ``image_sample``: the image part of a raw sample (datasets/base.py schema).
- ``save_png``: the writers' side (sample writers, tests): an integer array as a PNG.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from ..errors import DatasetError
from .io import read_image

_ID_MODES = ("L", "I", "I;16", "I;16B", "I;16L")


def read_id_png(path: str | Path, what: str = "id image") -> np.ndarray:
    """int32 (H, W) of a grey 8/16-bit (or 32-bit integer) PNG; colour images are refused."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode not in _ID_MODES:
                raise DatasetError(
                    f"{what} {path} is a {im.mode} image; expected a greyscale PNG of integer ids "
                    f"(8 or 16 bit)"
                )
            return np.asarray(im).astype(np.int32)
    except FileNotFoundError:
        raise DatasetError(f"{what} {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{what} {path} is corrupt or truncated ({e})") from None


def read_rgb_png(path: str | Path, what: str = "label image") -> np.ndarray:
    """uint8 (H, W, 3) of an RGB PNG; other modes are refused (a colour would be guessed)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode != "RGB":
                raise DatasetError(f"{what} {path} is a {im.mode} image; expected an RGB PNG")
            return np.array(im)
    except FileNotFoundError:
        raise DatasetError(f"{what} {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{what} {path} is corrupt or truncated ({e})") from None


def read_binary_png(path: str | Path, what: str = "mask", threshold: int = 127) -> np.ndarray:
    """bool (H, W): grey value > ``threshold``. RGB(A) masks are read through their grey value."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode not in ("1", "L", "P", "RGB", "RGBA", "LA"):
                raise DatasetError(f"{what} {path} is a {im.mode} image; expected an 8-bit 0/255 mask PNG")
            grey = np.asarray(im.convert("L"))
    except FileNotFoundError:
        raise DatasetError(f"{what} {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{what} {path} is corrupt or truncated ({e})") from None
    return grey > threshold


def check_size(arr: np.ndarray, path: str | Path, image_hw: tuple[int, int], image_path: str | Path) -> None:
    if tuple(arr.shape[:2]) != tuple(image_hw):
        raise DatasetError(
            f"{path} is {arr.shape[1]}x{arr.shape[0]} (WxH) but its image {image_path} is "
            f"{image_hw[1]}x{image_hw[0]}; a label image must have its image's size"
        )


def ids_present(id_map: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array (a bincount when they are small and >= 0)."""
    flat = np.asarray(id_map).ravel()
    if flat.size and flat.min() >= 0 and flat.max() < 1 << 20:
        return np.flatnonzero(np.bincount(flat)).astype(flat.dtype)
    return np.unique(flat)


def boxes_of_ids(id_map: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """float32 (len(ids), 4): xyxy extent (0-based, continuous: x1 = last column + 1) of each id.

    Every id must occur in ``id_map``. One pass over the map (scipy.ndimage.find_objects on
    the ids renumbered 1..K), however many ids there are.
    """
    ids = np.asarray(ids)
    out = np.zeros((len(ids), 4), np.float32)
    if not len(ids):
        return out
    order = np.argsort(ids)
    pos = np.searchsorted(ids[order], id_map)
    pos = np.clip(pos, 0, len(ids) - 1)
    hit = ids[order][pos] == id_map
    numbered = np.where(hit, order[pos] + 1, 0).astype(np.int32)
    for k, sl in enumerate(ndimage.find_objects(numbered, max_label=len(ids))):
        if sl is None:
            raise ValueError(f"id {ids[k]} does not occur in the id map")
        ys, xs = sl
        out[k] = (xs.start, ys.start, xs.stop, ys.stop)
    return out


def image_sample(path: str | Path, image_id: int, dataset: str) -> dict[str, Any]:
    """{"image", "image_id", "file_name", "orig_size", "dataset"} of the image at ``path``."""
    image = read_image(path)
    return {
        "image": image,
        "image_id": int(image_id),
        "file_name": str(path),
        "orig_size": tuple(image.shape[:2]),
        "dataset": dataset,
    }


def save_png(path: str | Path, array: np.ndarray) -> None:
    """uint8 (H, W) → 8-bit grey, uint16 (H, W) → 16-bit grey, uint8 (H, W, 3) → RGB; folders created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)
