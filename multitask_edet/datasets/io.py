"""Safe readers for the files dataset adapters open.

Every reader turns a library failure (PIL, json, ElementTree, scipy.io) into a
``DatasetError`` that names the file and says what is wrong with it, so a broken file in a
dataset of 100k images is reported as one clear line instead of a traceback from deep
inside a library.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DatasetError

# Decompression-bomb guard off: large aerial/medical images are legitimate inputs, and the
# warning PIL raises instead would otherwise be reported as a "corrupt image".
Image.MAX_IMAGE_PIXELS = None

IGNORE_INDEX = 255


#: PIL modes of 16-bit greyscale images (PNG, TIFF); PIL's convert("RGB") clips them at 255
_MODES_16BIT = ("I;16", "I;16B", "I;16L", "I;16N")


# Pascal VOC stores class masks as palette ('P' mode) PNGs whose pixel index is the class and
# whose colour table is the VOC colormap (devkit ``labelcolormap``: the bits of the index
# spread over R, G, B from the most significant bit down). Neither PIL nor torchvision ships
# it, so it is generated here; masks written with it open in VOC tools like the ground truth.
def voc_palette(num_colors: int = 256) -> np.ndarray:
    """(num_colors, 3) uint8 VOC colormap: 0 black, 1 (128, 0, 0), ..., 255 (224, 224, 192)."""
    idx = np.arange(num_colors)
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= (((idx >> (3 * bit + channel)) & 1) << (7 - bit)).astype(np.uint8)
    return palette


def save_palette_png(mask: Any, path: str | Path, palette: np.ndarray | None = None) -> Path:
    """Write a (H, W) class-index mask (array or tensor) as a palette PNG (mode 'P', VOC colormap by default)."""
    arr = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
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


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) array.

    EXIF orientation is ignored, as COCO and VOC annotations refer to the stored pixel grid
    (an annotation whose size fits only the EXIF-rotated photo is reported, see ``exif_hint``).
    16-bit images are scaled to 8 bits (value · 255 / 65535), not clipped.
    A truncated or undecodable file raises (PIL's LOAD_TRUNCATED_IMAGES stays False).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode in _MODES_16BIT or im.mode == "I":
                return _scale_to_rgb8(np.asarray(im), path, im.mode)
            if im.mode != "RGB":
                im = im.convert("RGB")
            else:
                im.load()
            return np.array(im)  # writable (np.asarray of a PIL image is read-only)
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"image {path} does not exist") from None
    except PermissionError:
        raise DatasetError(f"image {path} cannot be read: permission denied; fix its permissions") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if path.is_file() and path.stat().st_size == 0:
            raise DatasetError(f"image {path} is empty (0 bytes): its copy or download never finished") from None
        raise DatasetError(f"image {path} is corrupt or truncated ({e}); re-download or remove it") from None


def _scale_to_rgb8(arr: np.ndarray, path: Path, mode: str) -> np.ndarray:
    """A 16-bit (or 32-bit integer holding 16-bit values) greyscale image as RGB uint8."""
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise DatasetError(
            f"image {path} is a {mode} image with values {int(arr.min())}..{int(arr.max())}, beyond 16 bits; "
            "convert it to an 8-bit RGB image"
        )
    grey = ((arr * 255 + 32767) // 65535).astype(np.uint8)  # rounded; 65535 -> 255, 0 -> 0
    return np.repeat(grey[..., None], 3, axis=2)


_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def exif_hint(path: str | Path, annotated_hw: tuple[int, int]) -> str:
    """A sentence for a size-mismatch error when EXIF rotation explains it ("" otherwise).

    A phone photo is often stored sideways with an EXIF orientation tag; tools that show it
    upright make annotators draw on the rotated picture. Such an annotation gives the rotated
    size, which is how it is recognised here. The stored pixels are still what is read: in
    COCO and VOC the annotations refer to the stored grid, and a square photo could not tell.
    """
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(0x0112)
            w, h = im.size
    except Exception:  # noqa: BLE001 — only a hint; the main error is already known
        return ""
    if orientation in _TRANSPOSING_ORIENTATIONS and (w, h) == (annotated_hw[0], annotated_hw[1]) and w != h:
        return (
            f". Its EXIF orientation tag ({orientation}) shows it rotated, as {h}x{w}: the annotation was made on "
            "the rotated photo. Save the image with the rotation applied to its pixels (PIL.ImageOps.exif_transpose) "
            "so that pixels and annotation agree"
        )
    return ""


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) from the file header, without decoding the pixels."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DatasetError(f"image {path} does not exist") from None
    except PermissionError:
        raise DatasetError(f"image {path} cannot be read: permission denied; fix its permissions") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if path.is_file() and path.stat().st_size == 0:
            raise DatasetError(f"image {path} is empty (0 bytes): its copy or download never finished") from None
        raise DatasetError(f"image {path} is not a readable image ({e})") from None
    return h, w


def read_mask(path: str | Path) -> np.ndarray:
    """Class-index mask uint8 (H, W) from a palette ('P') or grey ('L') PNG.

    For a palette PNG the array holds palette indices, which ARE the class ids (VOC): the
    colours are never looked at. An RGB colour-coded mask is refused rather than guessed.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "L"):
                arr = np.array(im)
            elif im.mode in ("I", "I;16", "I;16B", "I;16L"):
                arr = np.asarray(im).astype(np.int64)
                if arr.min() < 0 or arr.max() > 255:
                    raise DatasetError(
                        f"mask {path} is a {im.mode} (16/32-bit) image holding values {int(arr.min())}.."
                        f"{int(arr.max())}; class ids must be 0..254 with {IGNORE_INDEX} = ignore"
                    )
                arr = arr.astype(np.uint8)
            else:
                raise DatasetError(
                    f"mask {path} is a {im.mode} image; expected a palette ('P') or greyscale ('L') PNG whose "
                    "pixel values are class indices (convert colour-coded masks to indices first)"
                )
    except DatasetError:
        raise  # a readable mask of the wrong kind: said above, not "corrupt"
    except FileNotFoundError:
        raise DatasetError(f"mask {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"mask {path} is corrupt or truncated ({e})") from None
    return np.ascontiguousarray(arr, dtype=np.uint8)


def read_sbd_mat(path: str | Path) -> np.ndarray:
    """SBD ``cls/*.mat``: the class-index mask stored in ``GTcls.Segmentation``."""
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except FileNotFoundError:
        raise DatasetError(f"SBD mask {path} does not exist") from None
    except Exception as e:  # scipy raises a zoo of types (ValueError, MatReadError, OSError ...)
        raise DatasetError(f"SBD mask {path} is not a readable .mat file ({e})") from None
    gt = mat.get("GTcls")
    seg = getattr(gt, "Segmentation", None)
    if seg is None:
        raise DatasetError(f"SBD mask {path} has no GTcls.Segmentation field (is it an SBD cls/*.mat file?)")
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.size == 0 or seg.min() < 0 or seg.max() > 255:
        raise DatasetError(f"SBD mask {path}: GTcls.Segmentation is not a 2-D array of class ids")
    return np.ascontiguousarray(seg, dtype=np.uint8)


def check_mask(
    mask: np.ndarray,
    num_classes: int,
    mask_path: str | Path,
    image_hw: tuple[int, int] | None = None,
    image_path: str | Path | None = None,
) -> None:
    """Values must be class ids ``0..num_classes-1`` or 255; size must equal the image's."""
    if image_hw is not None and tuple(mask.shape[:2]) != tuple(image_hw):
        raise DatasetError(
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_path} is "
            f"{image_hw[1]}x{image_hw[0]}; a mask must have its image's size"
            + (exif_hint(image_path, tuple(mask.shape[:2])) if image_path is not None else "")
        )
    counts = np.bincount(mask.ravel(), minlength=256)
    bad = np.flatnonzero(counts[num_classes:IGNORE_INDEX]) + num_classes
    if bad.size:
        raise DatasetError(
            f"mask {mask_path} holds value(s) {bad.tolist()[:10]} outside the class ids 0..{num_classes - 1} "
            f"and {IGNORE_INDEX} (ignore)"
        )


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"annotation file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"annotation file {path} is not valid JSON ({e}); is it truncated?") from None


def read_xml(path: str | Path) -> ET.Element:
    path = Path(path)
    try:
        return ET.parse(path).getroot()
    except FileNotFoundError:
        raise DatasetError(f"annotation file {path} does not exist") from None
    except ET.ParseError as e:
        raise DatasetError(f"annotation file {path} is not valid XML ({e})") from None


def read_split_list(path: str | Path) -> list[str]:
    """Image ids, one per line.

    Only the first column counts (VOC's per-class lists carry a second one); a path such as
    ``/JPEGImages/2007_000032.jpg`` (DeepLab's train_aug.txt) is reduced to its stem.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DatasetError(f"split list {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"split list {path} is not readable ({e})") from None
    ids = []
    for line in text.splitlines():
        if not line.strip():
            continue
        token = line.split()[0]
        if "/" in token or token.lower().endswith((".jpg", ".jpeg", ".png")):
            token = Path(token).stem
        ids.append(token)
    return ids
