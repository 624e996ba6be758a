"""Tiny copies of the ``shapes`` scenes in the BDD100K, Cityscapes and COCO panoptic layouts.

They let users see each multi-task layout on disk and let tests and demos run the real
readers (bdd100k.py, cityscapes.py, coco_panoptic.py) without downloading anything. The
scenes come from the shapes generator (sample.py): the same random backgrounds and shapes,
given each dataset's meaning:

``write_bdd100k_sample(root, n_train, n_val, seed, image_size, layout="official")``
    16:9 JPEGs. Circles, triangles, stars and crosses are det boxes of class car, traffic
    sign, pedestrian and bus; squares are drivable areas (direct, every second one
    alternative) and not boxes; 1–3 thin lines (1 px) per image are lane lines drawn into
    the image too, written with the real bit encoding (random category, style, direction).
    An image whose only objects are squares has a det frame without ``labels``. With
    ``layout="repacked"`` the same scenes are written in the HybridNets/YOLOP layout
    (per-image JSONs with the 2018 category names, 0/255 masks; lanes as drawn, not widened).
``write_cityscapes_sample(root, n_train, n_val, seed, image_size)``
    2:1 PNGs, city ``shapestown``. Above a horizon the background is sky, below it road,
    the bottom row ego vehicle (ignored); circles are cars, stars persons, crosses bicycles
    (instances: class·1000 + k), every third of them written as a group (plain class id, a
    crowd region); squares are buildings, triangles traffic signs.
``write_coco_panoptic_sample(root, n_train, n_val, seed, image_size)``
    Things circle, triangle, star, cross (category ids 1..4), stuff square (92) and
    background (200); random segment ids over all three RGB channels; a 1-px void (id 0)
    outline around every object; every third thing segment is a crowd segment.

All are deterministic (per-image seeds): same arguments → same bytes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ..errors import ConfigError
from .bdd100k import DRIVABLE_RAW, LANE_BACKGROUND, LANE_CATEGORIES, LANE_DIRECTIONS, LANE_STYLES, encode_lane
from .coco_panoptic import segment_id_to_rgb
from .format_io import boxes_of_ids, save_png
from .sample import SHAPE_CLASSES, _scene
from .testing import save_image

_SPLITS = {"train": 0, "val": 1}
_TAG = {"bdd100k": 1, "cityscapes": 2, "panoptic": 3}
CIRCLE, SQUARE, TRIANGLE, STAR, CROSS = range(5)
#: shapes' label → BDD100K det class (squares are drivable areas, not boxes)
BDD_OF_SHAPE = {CIRCLE: "car", TRIANGLE: "traffic sign", STAR: "pedestrian", CROSS: "bus"}
#: the 2018 per-image JSONs' names for the classes above (the re-packed layout)
_BDD_2018_NAME = {"pedestrian": "person"}
#: shapes' label → Cityscapes label id
CITYSCAPES_OF_SHAPE = {CIRCLE: 26, SQUARE: 11, TRIANGLE: 20, STAR: 24, CROSS: 33}
SKY, ROAD, EGO_VEHICLE = 23, 7, 1
PANOPTIC_CATEGORIES = [
    {"id": 1, "name": "circle", "isthing": 1, "supercategory": "shape", "color": [220, 20, 60]},
    {"id": 2, "name": "triangle", "isthing": 1, "supercategory": "shape", "color": [119, 11, 32]},
    {"id": 3, "name": "star", "isthing": 1, "supercategory": "shape", "color": [0, 0, 142]},
    {"id": 4, "name": "cross", "isthing": 1, "supercategory": "shape", "color": [0, 0, 230]},
    {"id": 92, "name": "square", "isthing": 0, "supercategory": "shape", "color": [106, 0, 228]},
    {"id": 200, "name": "background", "isthing": 0, "supercategory": "other", "color": [0, 60, 100]},
]
_PANOPTIC_OF_SHAPE = {CIRCLE: 1, TRIANGLE: 2, STAR: 3, CROSS: 4, SQUARE: 92}


def _rng(dataset: str, seed: int, split: str, k: int) -> np.random.Generator:
    return np.random.default_rng([seed, _TAG[dataset], _SPLITS[split], k])


def _instances(objects, h: int, w: int) -> np.ndarray:
    """int32 map: 1 + index of the object owning each pixel (0 = background), in paint order."""
    inst = np.zeros((h, w), np.int32)
    for i, (_, poly, _) in enumerate(objects):  # _scene paints in this order (larger first)
        rle = mask_utils.frPyObjects([poly.ravel().tolist()], h, w)[0]
        inst[mask_utils.decode(rle).astype(bool)] = i + 1
    return inst


def _check_counts(n_train: int, n_val: int, image_size: int) -> None:
    if n_train < 0 or n_val < 0:
        raise ConfigError(f"n_train={n_train}, n_val={n_val}: counts must be >= 0")
    if image_size < 32:
        raise ConfigError(f"image_size={image_size}: use at least 32 px")


# --------------------------------------------------------------------- BDD100K
def _bdd_lanes(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Draw 1–3 lane lines into ``image``; the bit-packed lane mask (255 = no lane)."""
    h, w = image.shape[:2]
    lanes = np.full((h, w), LANE_BACKGROUND, np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        value = encode_lane(
            LANE_CATEGORIES[int(rng.integers(len(LANE_CATEGORIES)))],
            LANE_DIRECTIONS[int(rng.integers(2))],
            LANE_STYLES[int(rng.integers(2))],
        )
        p0 = (int(rng.integers(0, w)), h - 1)
        p1 = (int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 3, h // 2)))
        cv2.line(lanes, p0, p1, int(value), 1)
        cv2.line(image, p0, p1, (250, 250, 250) if value & 1 else (240, 200, 30), 1)
    return lanes


def _bdd_scene(seed: int, split: str, k: int, image_size: int):
    rng = _rng("bdd100k", seed, split, k)
    w, h = image_size, max(16, round(image_size * 9 / 16))
    image, _, objects = _scene(rng, h, w, SHAPE_CLASSES)
    inst = _instances(objects, h, w)
    drivable = np.full((h, w), DRIVABLE_RAW.index("background"), np.uint8)
    labels, n_squares = [], 0
    for i, (label, _, (x0, y0, x1, y1)) in enumerate(objects):
        if label == SQUARE:
            drivable[inst == i + 1] = n_squares % 2  # 0 direct, 1 alternative
            n_squares += 1
            continue
        box = {"x1": float(x0), "y1": float(y0), "x2": float(x1 - 1), "y2": float(y1 - 1)}  # Scalabel: inclusive
        attributes = {"occluded": False, "truncated": False, "crowd": False}
        labels.append({"id": str(len(labels)), "category": BDD_OF_SHAPE[label], "attributes": attributes, "box2d": box})
    lanes = _bdd_lanes(rng, image)
    return image, labels, drivable, lanes


def write_bdd100k_sample(
    root: str | Path, n_train: int = 8, n_val: int = 4, seed: int = 0, image_size: int = 128, layout: str = "official"
) -> Path:
    """Write the BDD100K-layout sample under ``root`` (see the module docstring); returns ``root``."""
    _check_counts(n_train, n_val, image_size)
    if layout not in ("official", "repacked"):
        raise ConfigError(f"layout={layout!r}; valid values: official, repacked")
    root = Path(root)
    for split, count in (("train", n_train), ("val", n_val)):
        if layout == "official":
            dirs = {"img": "images/100k", "drivable": "labels/drivable/masks", "lane": "labels/lane/masks"}
        else:
            dirs = {"img": "images", "drivable": "da_seg_annotations", "lane": "ll_seg_annotations",
                    "det": "det_annotations"}  # fmt: skip
        folders = {key: root / d / split for key, d in dirs.items()}
        for d in folders.values():
            d.mkdir(parents=True, exist_ok=True)
        frames = []
        for k in range(count):
            name = f"s{seed}-{split}-{k:05d}"
            image, labels, drivable, lanes = _bdd_scene(seed, split, k, image_size)
            save_image(folders["img"] / f"{name}.jpg", image)
            if layout == "official":
                frame: dict[str, Any] = {"name": f"{name}.jpg", "attributes": {"weather": "clear"}, "timestamp": 10000}
                if labels:
                    frame["labels"] = labels
                frames.append(frame)
                save_png(folders["drivable"] / f"{name}.png", drivable)
                save_png(folders["lane"] / f"{name}.png", lanes)
            else:
                objects = [{**lab, "category": _BDD_2018_NAME.get(lab["category"], lab["category"])} for lab in labels]
                per_image = {"name": name, "attributes": {}, "frames": [{"timestamp": 10000, "objects": objects}]}
                (folders["det"] / f"{name}.json").write_text(json.dumps(per_image))
                on = np.uint8(255)
                save_png(folders["drivable"] / f"{name}.png", np.where(drivable < 2, on, 0).astype(np.uint8))
                save_png(folders["lane"] / f"{name}.png", np.where(lanes != LANE_BACKGROUND, on, 0).astype(np.uint8))
        if layout == "official":
            det = root / "labels" / "det_20"
            det.mkdir(parents=True, exist_ok=True)
            (det / f"det_{split}.json").write_text(json.dumps(frames))
    return root


# --------------------------------------------------------------------- Cityscapes
def _tint(image: np.ndarray, where: np.ndarray, colour: tuple[int, int, int]) -> None:
    image[where] = (image[where].astype(np.float32) * 0.5 + np.asarray(colour, np.float32) * 0.5).astype(np.uint8)


def write_cityscapes_sample(
    root: str | Path, n_train: int = 8, n_val: int = 4, seed: int = 0, image_size: int = 128
) -> Path:
    """Write the Cityscapes-layout sample under ``root`` (see the module docstring); returns ``root``."""
    _check_counts(n_train, n_val, image_size)
    root = Path(root)
    city = "shapestown"
    for split, count in (("train", n_train), ("val", n_val)):
        img_dir = root / "leftImg8bit" / split / city
        gt_dir = root / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for k in range(count):
            rng = _rng("cityscapes", seed, split, k)
            w, h = image_size, image_size // 2
            image, _, objects = _scene(rng, h, w, SHAPE_CLASSES)
            owner = _instances(objects, h, w)
            horizon = int(h * 0.35)
            ids = np.full((h, w), ROAD, np.uint8)
            ids[:horizon] = SKY
            _tint(image, (owner == 0) & (ids == SKY), (110, 150, 210))
            _tint(image, (owner == 0) & (ids == ROAD), (90, 90, 90))
            inst = ids.astype(np.uint16)
            count_of: dict[int, int] = {}
            n_things = 0
            for i, (label, _, _) in enumerate(objects):
                cid = CITYSCAPES_OF_SHAPE[label]
                here = owner == i + 1
                ids[here] = cid
                if label in (CIRCLE, STAR, CROSS):
                    group = n_things % 3 == 2
                    n_things += 1
                    if not group:
                        inst[here] = cid * 1000 + count_of.get(cid, 0)
                        count_of[cid] = count_of.get(cid, 0) + 1
                        continue
                inst[here] = cid
            ids[-1] = EGO_VEHICLE
            inst[-1] = EGO_VEHICLE
            name = f"{city}_{seed:06d}_{_SPLITS[split] * 100000 + k:06d}"
            save_png(img_dir / f"{name}_leftImg8bit.png", image)
            save_png(gt_dir / f"{name}_gtFine_labelIds.png", ids)
            save_png(gt_dir / f"{name}_gtFine_instanceIds.png", inst)
    return root


# --------------------------------------------------------------------- COCO panoptic
def write_coco_panoptic_sample(
    root: str | Path, n_train: int = 8, n_val: int = 4, seed: int = 0, image_size: int = 128
) -> Path:
    """Write the COCO-panoptic-layout sample under ``root`` (see the module docstring); returns ``root``."""
    _check_counts(n_train, n_val, image_size)
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_train), ("val", n_val)):
        tag = f"{split}2017"
        img_dir, png_dir = root / tag, root / "annotations" / f"panoptic_{tag}"
        img_dir.mkdir(exist_ok=True)
        png_dir.mkdir(exist_ok=True)
        images, annotations = [], []
        for k in range(count):
            rng = _rng("panoptic", seed, split, k)
            image, _, objects = _scene(rng, image_size, image_size, SHAPE_CLASSES)
            owner = _instances(objects, image_size, image_size)
            seg_ids = rng.choice((1 << 24) - 1, size=len(objects) + 1, replace=False) + 1
            ids = seg_ids[owner].astype(np.int64)  # owner 0 → the background segment
            cats = [200] + [_PANOPTIC_OF_SHAPE[label] for label, _, _ in objects]
            # 1-px void outline around every segment (ids < 2^24 are exact in float32)
            f = ids.astype(np.float32)
            edge = cv2.dilate(f, np.ones((3, 3), np.uint8)) != cv2.erode(f, np.ones((3, 3), np.uint8))
            ids[edge & (owner > 0)] = 0
            image_id = _SPLITS[split] * 100000 + k + 1
            file_stem = f"{image_id:012d}"
            present = [j for j in range(len(seg_ids)) if (ids == seg_ids[j]).any()]
            boxes = boxes_of_ids(ids, seg_ids[present])
            segments, n_things = [], 0
            for j, (x0, y0, x1, y1) in zip(present, boxes.tolist()):
                thing = cats[j] <= 4
                crowd = thing and n_things % 3 == 2
                n_things += thing
                area = int((ids == seg_ids[j]).sum())
                bbox = [x0, y0, x1 - x0, y1 - y0]
                segments.append({"id": int(seg_ids[j]), "category_id": cats[j], "iscrowd": int(crowd), "bbox": bbox,
                                 "area": area})  # fmt: skip
            save_image(img_dir / f"{file_stem}.jpg", image)
            save_png(png_dir / f"{file_stem}.png", segment_id_to_rgb(ids))
            images.append({"id": image_id, "file_name": f"{file_stem}.jpg", "width": image_size, "height": image_size})
            annotations.append({"image_id": image_id, "file_name": f"{file_stem}.png", "segments_info": segments})
        data = {"info": {"description": "multitask_edet shapes, COCO panoptic layout"}, "images": images,
                "annotations": annotations, "categories": PANOPTIC_CATEGORIES}  # fmt: skip
        (root / "annotations" / f"panoptic_{tag}.json").write_text(json.dumps(data))
    return root


# --------------------------------------------------------------------- `mtedet data sample --format`
#: format → (writer, folder under the output folder, registered dataset name, writer options)
SAMPLE_FORMATS: dict[str, tuple[Any, str, str, dict[str, Any]]] = {
    "bdd100k": (write_bdd100k_sample, "bdd100k", "bdd100k", {"layout": "official"}),
    "bdd100k-repacked": (write_bdd100k_sample, "bdd100k", "bdd100k", {"layout": "repacked"}),
    "cityscapes": (write_cityscapes_sample, "cityscapes", "cityscapes", {}),
    "coco-panoptic": (write_coco_panoptic_sample, "coco", "coco-panoptic", {}),
}


def write_format_sample(fmt: str, out_dir: str | Path, **counts: int) -> tuple[Path, str]:
    """Write the ``fmt`` sample into ``out_dir/<folder>``, where the dataset's adapter finds it with
    ``--data-root out_dir``. ``counts``: n_train, n_val, seed, image_size. Returns (folder, dataset name)."""
    if fmt not in SAMPLE_FORMATS:
        raise ConfigError(f"sample format {fmt!r}; valid formats: shapes, {', '.join(SAMPLE_FORMATS)}")
    writer, folder, dataset, options = SAMPLE_FORMATS[fmt]
    return writer(Path(out_dir) / folder, **counts, **options), dataset
