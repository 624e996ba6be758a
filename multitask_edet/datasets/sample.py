"""The built-in sample dataset ``shapes``: synthetic scenes written in the real COCO and VOC layouts.

It exists so that detection and segmentation (paper §5.1, §5.2) train and evaluate on a
fresh machine without downloading anything, through the same adapters as COCO and VOC.
Each image (side ``0.75..1 × image_size`` px) holds 1–4 objects of five classes (circle,
square, triangle, star, cross) with random size, rotation and colour — colour carries no
class information, shape does — on a smooth random background with noise and line
clutter. Objects may overlap (at most 30 % of an object is covered); smaller objects lie on
top of larger ones.

Layout under the output folder::

    shapes.json                               manifest: generator version, parameters, classes
    VOC/JPEGImages/{id}.jpg                   images (JPEG quality 95, 4:4:4)
    VOC/Annotations/{id}.xml                  VOC XML, 1-based boxes
    VOC/SegmentationClass/{id}.png            palette PNG, index = class, 255 = 1 px void border
    VOC/ImageSets/{Main,Segmentation}/{train,val,trainval}.txt
    coco/annotations/instances_{train,val}.json   polygons, category ids 1..5
    coco/{train,val}/{id}.jpg                 the same images

The COCO polygons are the objects' full outlines; the COCO adapter paints larger objects
first, which reproduces the occlusion order, so both layouts give the same masks (apart
from VOC's void border). Boxes are the outlines' extents. Generation is deterministic
(per-image seeds) and takes a few seconds.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..errors import ConfigError, DatasetError
from .coco import CocoDataset
from .dataset import select_annotations
from .io import IGNORE_INDEX, read_json, save_palette_png
from .voc import VocDataset, voc_items

log = logging.getLogger(__name__)

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross")
GENERATOR_VERSION = 1
MANIFEST = "shapes.json"
CACHE_ENV = "MTEDET_CACHE"
DEFAULTS = {"num_train": 300, "num_val": 50, "image_size": 160, "seed": 0}
_SPLIT_INDEX = {"train": 0, "val": 1}
MAX_COVERED = 0.3


def shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Outline (K, 2) of a shape of circumradius ``r`` rotated by ``angle`` radians."""
    if kind == "circle":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        rad = np.full_like(t, r)
    elif kind == "square":
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        rad = np.full(4, r)
    elif kind == "triangle":
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        rad = np.full(3, r)
    elif kind == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    elif kind == "cross":
        a = 0.36  # half arm width / r
        pts = np.array(
            [(a, 1), (a, a), (1, a), (1, -a), (a, -a), (a, -1), (-a, -1), (-a, -a), (-1, -a), (-1, a), (-a, a), (-a, 1)]
        ) * (r / np.hypot(1, a))
        t = np.arctan2(pts[:, 1], pts[:, 0])
        rad = np.hypot(pts[:, 0], pts[:, 1])
    else:
        raise ConfigError(f"unknown shape {kind!r}; known shapes: {', '.join(SHAPE_CLASSES)}")
    t = t + angle
    return np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], axis=1)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    g = int(rng.integers(3, 7))
    grid = rng.uniform(30, 225, size=(g, g, 3)).astype(np.float32)
    bg = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(2, 6))):  # clutter: lines of object-like colours
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(bg, p0, p1, tuple(float(v) for v in rng.uniform(0, 255, 3)), int(rng.integers(1, 3)))
    return bg


def _scene(rng: np.random.Generator, h: int, w: int, classes: Sequence[str]):
    """(image uint8, semantic mask uint8, objects [(label, polygon, (x0, y0, x1, y1))])."""
    image = _background(rng, h, w)
    placed: list[tuple[int, np.ndarray, Any, float]] = []
    for _ in range(int(rng.choice([1, 2, 2, 3, 3, 4]))):
        for _attempt in range(20):
            label = int(rng.integers(len(classes)))
            r = float(rng.uniform(0.11, 0.27)) * min(h, w)
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            poly = shape_polygon(classes[label], cx, cy, r, float(rng.uniform(0, 2 * np.pi))).round(2)
            rle = mask_utils.frPyObjects([poly.ravel().tolist()], h, w)[0]
            area = float(mask_utils.area(rle))
            if area < 64:
                continue
            ok = True
            for _, _, other, other_area in placed:
                inter = float(mask_utils.area(mask_utils.merge([rle, other], intersect=True)))
                if inter > MAX_COVERED * max(area, other_area):
                    ok = False
                    break
            if ok:
                placed.append((label, poly, rle, area))
                break
    placed.sort(key=lambda o: -o[3])  # larger first: smaller objects lie on top
    mask = np.zeros((h, w), np.uint8)
    objects = []
    for label, poly, rle, _ in placed:
        m = mask_utils.decode(rle).astype(bool)
        colour = rng.uniform(0, 255, 3)
        # a shaded fill: colour is random, so only the outline tells the class
        gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
        d = rng.normal(size=2)
        shade = (gx * d[0] + gy * d[1]) / (np.hypot(*d) * min(h, w)) * 60.0
        image[m] = np.clip(colour[None] + shade[m][:, None], 0, 255)
        mask[m] = label + 1
        ys, xs = np.nonzero(m)
        objects.append((label, poly, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)))
    image += rng.normal(0, 8, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), mask, objects


def _void_border(mask: np.ndarray, width: int) -> np.ndarray:
    if width <= 0:
        return mask
    k = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    edge = cv2.dilate(mask, k) != cv2.erode(mask, k)
    out = mask.copy()
    out[edge] = IGNORE_INDEX
    return out


def _voc_xml(image_id: str, h: int, w: int, objects, classes: Sequence[str]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, v in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, tag).text = str(v)
    ET.SubElement(root, "segmented").text = "1"
    for label, _, (x0, y0, x1, y1) in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[label]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bb, tag).text = str(v)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8")


def _link_or_write(src: Path, dst: Path) -> None:
    """The COCO layout shares the VOC layout's image files (hard link; a copy where links fail)."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_shapes(
    out_dir: str | Path,
    num_train: int = DEFAULTS["num_train"],
    num_val: int = DEFAULTS["num_val"],
    image_size: int = DEFAULTS["image_size"],
    seed: int = DEFAULTS["seed"],
    classes: Sequence[str] = SHAPE_CLASSES,
    void_border: int = 1,
) -> Path:
    """Write the shapes dataset (both layouts) into ``out_dir``; same arguments → same bytes."""
    if image_size < 32:
        raise ConfigError(f"shapes image_size={image_size}: use at least 32 px")
    out = Path(out_dir)
    voc, coco = out / "VOC", out / "coco"
    for d in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    (coco / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(classes)]
    lists: dict[str, list[str]] = {}
    for split, count in (("train", num_train), ("val", num_val)):
        (coco / split).mkdir(exist_ok=True)
        images, anns, ids = [], [], []
        for k in range(count):
            rng = np.random.default_rng([seed, _SPLIT_INDEX[split], k])
            h, w = (int(v) for v in rng.integers(int(0.75 * image_size), image_size + 1, size=2))
            image, mask, objects = _scene(rng, h, w, classes)
            image_id = f"{split}_{k:05d}"
            ids.append(image_id)
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, "JPEG", quality=95, subsampling=0)
            jpg = voc / "JPEGImages" / f"{image_id}.jpg"
            jpg.write_bytes(buf.getvalue())
            _link_or_write(jpg, coco / split / f"{image_id}.jpg")
            save_palette_png(_void_border(mask, void_border), voc / "SegmentationClass" / f"{image_id}.png")
            (voc / "Annotations" / f"{image_id}.xml").write_bytes(_voc_xml(image_id, h, w, objects, classes))
            images.append({"id": k + 1, "file_name": f"{image_id}.jpg", "height": h, "width": w})
            for label, poly, (x0, y0, x1, y1) in objects:
                flat = [float(v) for v in poly.ravel()]
                rle = mask_utils.frPyObjects([flat], h, w)[0]
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": k + 1,
                        "category_id": label + 1,
                        "segmentation": [flat],
                        "area": float(mask_utils.area(rle)),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "iscrowd": 0,
                    }
                )
        lists[split] = ids
        data = {"images": images, "annotations": anns, "categories": categories}
        (coco / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    lists["trainval"] = lists["train"] + lists["val"]
    for split, ids in lists.items():
        for kind in ("Main", "Segmentation"):
            (voc / "ImageSets" / kind / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    manifest = {
        "generator": "multitask_edet shapes",
        "version": GENERATOR_VERSION,
        "params": {"num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed,
                   "void_border": void_border},
        "classes": list(classes),
    }  # fmt: skip
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def shapes_cache_dir() -> Path:
    """$MTEDET_CACHE/shapes, else ~/.cache/mtedet/shapes."""
    base = os.environ.get(CACHE_ENV)
    return (Path(base) if base else Path.home() / ".cache" / "mtedet") / "shapes"


def _is_shapes(d: Path) -> bool:
    return (d / MANIFEST).is_file()


def ensure_shapes(
    root: str | Path | None = None,
    num_train: int = DEFAULTS["num_train"],
    num_val: int = DEFAULTS["num_val"],
    image_size: int = DEFAULTS["image_size"],
    seed: int = DEFAULTS["seed"],
) -> Path:
    """The folder of a shapes dataset, generated into the cache on first use.

    A ``root`` that holds one (``root/shapes.json`` or ``root/shapes/shapes.json``, e.g.
    written by ``mtedet data sample``) is used as it is; otherwise the cache folder for these
    parameters is used (created atomically, so parallel processes do not clash).
    """
    if root is not None:
        for d in (Path(root), Path(root) / "shapes"):
            if _is_shapes(d):
                return d
    d = shapes_cache_dir() / f"v{GENERATOR_VERSION}-n{num_train}-{num_val}-s{image_size}-seed{seed}"
    if _is_shapes(d):
        return d
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{d.name}-", dir=d.parent))
    log.info("generating the shapes sample dataset into %s", d)
    try:
        write_shapes(tmp, num_train, num_val, image_size, seed)
        try:
            os.rename(tmp, d)
        except OSError:  # another process finished first
            if not _is_shapes(d):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return d


def build_shapes(
    root: str | Path | None = None,
    split: str = "train",
    annotations: str | Sequence[str] = ("det",),
    transform: Callable[..., dict[str, Any]] | None = None,
    *,
    layout: str = "voc",
    num_train: int = DEFAULTS["num_train"],
    num_val: int = DEFAULTS["num_val"],
    image_size: int = DEFAULTS["image_size"],
    seed: int = DEFAULTS["seed"],
    **options: Any,
) -> VocDataset | CocoDataset:
    """The shapes dataset read back by the VOC adapter (``layout="voc"``) or the COCO one."""
    d = ensure_shapes(root, num_train, num_val, image_size, seed)
    manifest = read_json(d / MANIFEST)
    classes = manifest.get("classes") or list(SHAPE_CLASSES)
    t = tuple(select_annotations(annotations, VocDataset.ANNOTATIONS, "shapes"))
    if layout == "voc":
        if split not in ("train", "val", "trainval"):
            raise DatasetError(f"shapes has splits train, val, trainval; got {split!r}")
        return VocDataset(voc_items(d / "VOC", "", split, t), t, transform, name="shapes", classes=classes, **options)
    if layout == "coco":
        if split not in ("train", "val"):
            raise DatasetError(f"shapes (COCO layout) has splits train, val; got {split!r}")
        ann = d / "coco" / "annotations" / f"instances_{split}.json"
        return CocoDataset(ann, d / "coco" / split, t, transform, name="shapes", **options)
    raise ConfigError(f"shapes layout={layout!r}; valid values: voc, coco")
