"""Writers of tiny datasets in the real on-disk formats, for tests.

Every writer returns a small record of what it wrote (paths, objects, masks) so a test can
compare an adapter's output with the truth. Images are drawn: each object is a filled
rectangle of a class colour on grey, so a tiny model can also overfit them.

``write_coco_tree(root, split="val")`` → ``CocoTree``
    ``root/annotations/instances_{split}2017.json`` + ``root/{split}2017/*.jpg``, 64x48 px.
    Categories with id gaps: 1 person, 3 car, 7 train, 15 bench, 18 dog (contiguous labels
    0..4); ``all_categories=True`` lists COCO's 80 instead (needed for ``voc_classes``:
    person→14, car→6, train→18, dog→11, bench→background).
    Image 1 ``a.jpg``: person polygon (8,8)-(40,40); car polygon (24,16)-(56,32) on top
    (smaller); a dog with a zero-width box [5, 5, 0, 10] (dropped for det, no pixels).
    Image 2 ``b.jpg``: car as compressed RLE (4,4)-(20,12); a crowd person as uncompressed
    RLE (30,20)-(60,44); a bench polygon (10,30)-(20,40); a dog polygon (40,24)-(48,32)
    inside the crowd region.
    Image 5 ``c.jpg``: no objects.   Image 7 ``d.jpg``: a train of two polygon parts
    (2,2)-(10,10) and (20,20)-(30,30), bbox [2, 2, 28, 28].
    Rectangles are (x0, y0)-(x1, y1) in continuous pixel coordinates (pixels x0..x1-1).

``write_voc_tree(root, year="2012")`` → ``VocTree``
    ``root/VOCdevkit/VOC{year}/{JPEGImages, Annotations, SegmentationClass, ImageSets}``,
    ids ``{year}_000001..6``, 64x48 px. Image 1 has a dog box touching the top-left border
    (XML 1,1,32,24) and a person touching the bottom-right one (XML 41,11,64,48); image 2 a
    car and a *difficult* bottle; image 6 has an XML but no mask. Masks are palette PNGs
    with each object's 1 px outline set to 255. Main: train 1,2,3,6 / val 4,5; Segmentation:
    train 1,2,3 / val 4,5; trainval both; year 2007 adds Main/test.txt = 4,5.

``write_sbd_tree(root, voc_tree, fmt="mat" | "aug")`` → ``SbdTree``
    ``root/SBD``: "mat" = SBD release (``cls/*.mat`` with GTcls.Segmentation, ``img/``,
    ``train.txt`` = ids 2,4,7 and ``val.txt`` = 8); "aug" = ``SegmentationClassAug/*.png`` +
    ``train_aug.txt`` in DeepLab's two-column form, listing 1,2,3,4,7,8. Ids 7 and 8 exist
    only in SBD (images in ``img/``). Either way ``train_aug`` = ids 1,2,3,7,8.

``truncate_file(path, keep=0.5)`` cuts a file (a corrupt JPEG / truncated JSON);
``save_image(path, rgb)`` writes JPEG (q95, 4:4:4) or PNG by suffix.

For a small *trainable* dataset use ``multitask_edet.datasets.write_shapes(out_dir,
num_train=16, num_val=8, image_size=64)`` and ``build_dataset("shapes", out_dir, ...)``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .coco import COCO_CLASSES
from .io import save_palette_png
from .voc import VOC_CLASSES

W, H = 64, 48
GREY = (128, 128, 128)


def save_image(path: str | Path, rgb: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, "JPEG", quality=95, subsampling=0)
    else:
        im.save(path)


def truncate_file(path: str | Path, keep: float = 0.5) -> None:
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def class_colour(label: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(label + 1)
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def draw(rects: list[tuple[int, tuple[int, int, int, int]]], h: int = H, w: int = W) -> np.ndarray:
    """Grey image with each (label, (x0, y0, x1, y1)) rectangle filled with its class colour."""
    img = np.full((h, w, 3), GREY, np.uint8)
    for label, (x0, y0, x1, y1) in rects:
        img[y0:y1, x0:x1] = class_colour(label)
    return img


def rect_poly(x0, y0, x1, y1) -> list[float]:
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def rect_mask(x0, y0, x1, y1, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE (column-major run lengths, starting with a run of zeros)."""
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


# --------------------------------------------------------------------- COCO
@dataclasses.dataclass
class CocoTree:
    root: Path
    ann_file: Path
    img_dir: Path
    data: dict[str, Any]


COCO_CATEGORIES = [(1, "person"), (3, "car"), (7, "train"), (15, "bench"), (18, "dog")]


def write_coco_tree(
    root: str | Path, split: str = "val", year: str = "2017", all_categories: bool = False
) -> CocoTree:
    root = Path(root)
    cats = sorted(COCO_CLASSES.items()) if all_categories else COCO_CATEGORIES
    img_dir = root / f"{split}{year}"
    ann_file = root / "annotations" / f"instances_{split}{year}.json"
    label = {cid: i for i, (cid, _) in enumerate(cats)}
    anns: list[dict[str, Any]] = []

    def add(ann_id, image_id, cat, seg, bbox, crowd=0):
        area = float(mask_utils.area(_as_rle(seg))) if seg else 0.0
        anns.append({"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": seg,
                     "area": area, "bbox": [float(v) for v in bbox], "iscrowd": crowd})  # fmt: skip

    add(10, 1, 1, [rect_poly(8, 8, 40, 40)], [8, 8, 32, 32])
    add(11, 1, 3, [rect_poly(24, 16, 56, 32)], [24, 16, 32, 16])
    add(12, 1, 18, [[5.0, 5.0, 5.0, 15.0, 5.0, 15.0]], [5, 5, 0, 10])
    car_rle = mask_utils.encode(np.asfortranarray(rect_mask(4, 4, 20, 12)))
    add(20, 2, 3, {"size": [H, W], "counts": car_rle["counts"].decode()}, [4, 4, 16, 8])
    add(21, 2, 1, uncompressed_rle(rect_mask(30, 20, 60, 44)), [30, 20, 30, 24], crowd=1)
    add(22, 2, 15, [rect_poly(10, 30, 20, 40)], [10, 30, 10, 10])
    add(23, 2, 18, [rect_poly(40, 24, 48, 32)], [40, 24, 8, 8])
    add(70, 7, 7, [rect_poly(2, 2, 10, 10), rect_poly(20, 20, 30, 30)], [2, 2, 28, 28])

    images = []
    drawn = {
        1: [(label[1], (8, 8, 40, 40)), (label[3], (24, 16, 56, 32))],
        2: [(label[3], (4, 4, 20, 12)), (label[1], (30, 20, 60, 44)), (label[15], (10, 30, 20, 40)),
            (label[18], (40, 24, 48, 32))],
        5: [],
        7: [(label[7], (2, 2, 10, 10)), (label[7], (20, 20, 30, 30))],
    }  # fmt: skip
    for image_id, name in ((1, "a.jpg"), (2, "b.jpg"), (5, "c.jpg"), (7, "d.jpg")):
        save_image(img_dir / name, draw(drawn[image_id]))
        images.append({"id": image_id, "file_name": name, "width": W, "height": H})
    data = {
        "info": {"description": "multitask_edet test tree"},
        "images": images,
        "annotations": anns,
        "categories": [{"id": cid, "name": n, "supercategory": "thing"} for cid, n in cats],
    }
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(data))
    return CocoTree(root, ann_file, img_dir, data)


def _as_rle(seg):
    if isinstance(seg, list):
        parts = [p for p in seg if len(p) >= 6]
        return mask_utils.merge(mask_utils.frPyObjects(parts, H, W))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, H, W)
    return {"size": seg["size"], "counts": seg["counts"].encode()}


# --------------------------------------------------------------------- VOC
@dataclasses.dataclass
class VocTree:
    root: Path
    voc_dir: Path
    year: str
    #: id → [(class name, (x0, y0, x1, y1) 0-based continuous, difficult)]
    objects: dict[str, list[tuple[str, tuple[int, int, int, int], bool]]]
    #: id → class-index mask as written (ids without a mask are absent)
    masks: dict[str, np.ndarray]
    #: "Main/train" → ids, "Segmentation/val" → ids ...
    lists: dict[str, list[str]]


VOC_OBJECTS = {
    1: [("dog", (0, 0, 32, 24), False), ("person", (40, 10, 64, 48), False)],
    2: [("car", (8, 8, 40, 30), False), ("bottle", (50, 20, 58, 40), True)],
    3: [("cat", (10, 5, 50, 45), False)],
    4: [("horse", (4, 4, 30, 40), False), ("person", (34, 6, 60, 44), False)],
    5: [("aeroplane", (5, 10, 60, 30), False)],
    6: [("bus", (6, 6, 58, 42), False)],
}


def voc_xml(image_id: str, objects, h: int = H, w: int = W) -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{int(d)}</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for n, (x0, y0, x1, y1), d in objects
    )
    return (
        f"<annotation><folder>VOC</folder><filename>{image_id}.jpg</filename>"
        f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size><segmented>1</segmented>"
        f"{objs}</annotation>"
    )


def voc_mask(objects, h: int = H, w: int = W) -> np.ndarray:
    """Class indices of the objects' rectangles (later ones on top), their 1 px outline 255."""
    m = np.zeros((h, w), np.uint8)
    for n, (x0, y0, x1, y1), _ in objects:
        m[y0:y1, x0:x1] = VOC_CLASSES.index(n) + 1
    for _, (x0, y0, x1, y1), _ in objects:
        m[y0, x0:x1] = m[y1 - 1, x0:x1] = 255
        m[y0:y1, x0] = m[y0:y1, x1 - 1] = 255
    return m


def _write_list(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def write_voc_tree(root: str | Path, year: str = "2012") -> VocTree:
    root = Path(root)
    voc = root / "VOCdevkit" / f"VOC{year}"
    ids = {k: f"{year}_{k:06d}" for k in VOC_OBJECTS}
    objects, masks = {}, {}
    for k, objs in VOC_OBJECTS.items():
        i = ids[k]
        objects[i] = objs
        save_image(voc / "JPEGImages" / f"{i}.jpg", draw([(VOC_CLASSES.index(n), b) for n, b, _ in objs]))
        (voc / "Annotations").mkdir(parents=True, exist_ok=True)
        (voc / "Annotations" / f"{i}.xml").write_text(voc_xml(i, objs))
        if k != 6:
            masks[i] = voc_mask(objs)
            (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
            save_palette_png(masks[i], voc / "SegmentationClass" / f"{i}.png")
    lists = {
        "Main/train": [ids[k] for k in (1, 2, 3, 6)],
        "Main/val": [ids[k] for k in (4, 5)],
        "Segmentation/train": [ids[k] for k in (1, 2, 3)],
        "Segmentation/val": [ids[k] for k in (4, 5)],
    }
    lists["Main/trainval"] = lists["Main/train"] + lists["Main/val"]
    lists["Segmentation/trainval"] = lists["Segmentation/train"] + lists["Segmentation/val"]
    if year == "2007":
        lists["Main/test"] = list(lists["Main/val"])
    for name, id_list in lists.items():
        _write_list(voc / "ImageSets" / f"{name}.txt", id_list)
    return VocTree(root, voc, year, objects, masks, lists)


# --------------------------------------------------------------------- SBD
@dataclasses.dataclass
class SbdTree:
    sbd_dir: Path
    #: id → mask written by SBD for it
    masks: dict[str, np.ndarray]
    train_aug: list[str]


def write_sbd_tree(root: str | Path, voc_tree: VocTree, fmt: str = "mat") -> SbdTree:
    import scipy.io

    sbd = Path(root) / "SBD"
    y = voc_tree.year
    ids = {k: f"{y}_{k:06d}" for k in (1, 2, 3, 4, 7, 8)}
    extra_objects = {7: [("sheep", (10, 10, 40, 40), False)], 8: [("cow", (20, 5, 60, 30), False)]}
    masks = {}
    for k, i in ids.items():
        objs = VOC_OBJECTS.get(k) or extra_objects[k]
        # SBD masks have no void outline: plain class indices
        m = np.zeros((H, W), np.uint8)
        for n, (x0, y0, x1, y1), _ in objs:
            m[y0:y1, x0:x1] = VOC_CLASSES.index(n) + 1
        masks[i] = m
        if k in extra_objects:
            save_image(sbd / "img" / f"{i}.jpg", draw([(VOC_CLASSES.index(n), b) for n, b, _ in objs]))
        if fmt == "mat":
            (sbd / "cls").mkdir(parents=True, exist_ok=True)
            present = np.unique(m[m > 0]).astype(np.uint8)
            scipy.io.savemat(sbd / "cls" / f"{i}.mat", {"GTcls": {"Segmentation": m, "CategoriesPresent": present}})
        elif fmt == "aug":
            (sbd / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
            save_palette_png(m, sbd / "SegmentationClassAug" / f"{i}.png")
        else:
            raise ValueError(f"fmt={fmt!r}; use 'mat' or 'aug'")
    if fmt == "mat":
        _write_list(sbd / "train.txt", [ids[k] for k in (2, 4, 7)])
        _write_list(sbd / "val.txt", [ids[8]])
    else:
        lines = "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids.values())
        (sbd / "train_aug.txt").write_text(lines)
    train_aug = sorted(ids[k] for k in (1, 2, 3, 7, 8))
    return SbdTree(sbd, masks, train_aug)
