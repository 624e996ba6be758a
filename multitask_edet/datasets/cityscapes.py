"""Cityscapes: 19-class semantic masks from ``*_gtFine_labelIds.png`` and boxes of the 8 thing
classes from ``*_gtFine_instanceIds.png`` — readers, and the adapter ``CityscapesDataset``
(``cityscapes``).

Layout (``cityscapes/`` from leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip)::

    leftImg8bit/{train,val,test}/{city}/{city}_{seq}_{frame}_leftImg8bit.png     2048x1024
    gtFine/{train,val,test}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png      8-bit ids
    gtFine/{train,val,test}/{city}/{city}_{seq}_{frame}_gtFine_instanceIds.png   16-bit ids

Semantic: each pixel of ``labelIds`` holds a label id of the official table (``LABELS``,
ids 0..33); it is mapped to the 19 train ids here (255 = ignore), so nobody has to run
``createTrainIdLabelImgs.py`` first. Cityscapes has no background class: the 19 classes are
``CITYSCAPES_CLASSES`` and every void or unevaluated label is 255. The table's license plate
has id -1 and is never drawn into the PNGs (its pixels keep the car's id); a value of 255
(-1 as an unsigned byte, and the usual "unlabeled" value) is read as ignore. Any other
value outside the table is an error naming the file.

Boxes: in ``instanceIds`` a pixel of an individually annotated object holds class·1000 + k
(k = 0, 1, ... per class); a pixel of a class without instances, or of a *group* of objects
the annotators could not separate ("cargroup", ...), holds the plain class id (< 1000).
Each instance of the 8 classes with instances and a train id (person, rider, car, truck,
bus, train, motorcycle, bicycle; caravan and trailer have instances but no train id and are
left out) becomes one box: the extent of its visible pixels, xyxy with x1 = last column + 1.
Group regions of these classes become ignore boxes (``crowd="ignore"``, the default: anchors
on them are neither positive nor negative, like COCO's crowd boxes), one per connected
component (8-connectivity), so two separate groups do not blank out the road between them;
``crowd="drop"`` leaves them out. Boxes come in order: instances by id, then groups.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from ..errors import ConfigError, DatasetError
from .dataset import AnnotatedDataset, PackedRecords, coco_gt_dict
from .format_io import boxes_of_ids, check_size, ids_present, image_sample, read_id_png
from .io import IGNORE_INDEX, image_size, read_mask


@dataclasses.dataclass(frozen=True)
class CityscapesLabel:
    name: str
    id: int
    train_id: int  # 255 = not trained/evaluated
    category: str
    has_instances: bool
    ignore_in_eval: bool


# The official label table of cityscapesScripts, written out from its facts.
_L = CityscapesLabel
LABELS = (
    _L("unlabeled", 0, 255, "void", False, True),
    _L("ego vehicle", 1, 255, "void", False, True),
    _L("rectification border", 2, 255, "void", False, True),
    _L("out of roi", 3, 255, "void", False, True),
    _L("static", 4, 255, "void", False, True),
    _L("dynamic", 5, 255, "void", False, True),
    _L("ground", 6, 255, "void", False, True),
    _L("road", 7, 0, "flat", False, False),
    _L("sidewalk", 8, 1, "flat", False, False),
    _L("parking", 9, 255, "flat", False, True),
    _L("rail track", 10, 255, "flat", False, True),
    _L("building", 11, 2, "construction", False, False),
    _L("wall", 12, 3, "construction", False, False),
    _L("fence", 13, 4, "construction", False, False),
    _L("guard rail", 14, 255, "construction", False, True),
    _L("bridge", 15, 255, "construction", False, True),
    _L("tunnel", 16, 255, "construction", False, True),
    _L("pole", 17, 5, "object", False, False),
    _L("polegroup", 18, 255, "object", False, True),
    _L("traffic light", 19, 6, "object", False, False),
    _L("traffic sign", 20, 7, "object", False, False),
    _L("vegetation", 21, 8, "nature", False, False),
    _L("terrain", 22, 9, "nature", False, False),
    _L("sky", 23, 10, "sky", False, False),
    _L("person", 24, 11, "human", True, False),
    _L("rider", 25, 12, "human", True, False),
    _L("car", 26, 13, "vehicle", True, False),
    _L("truck", 27, 14, "vehicle", True, False),
    _L("bus", 28, 15, "vehicle", True, False),
    _L("caravan", 29, 255, "vehicle", True, True),
    _L("trailer", 30, 255, "vehicle", True, True),
    _L("train", 31, 16, "vehicle", True, False),
    _L("motorcycle", 32, 17, "vehicle", True, False),
    _L("bicycle", 33, 18, "vehicle", True, False),
    # the table's train id is -1 ("not drawn"); for training it is ignore like every void label
    _L("license plate", -1, 255, "vehicle", False, True),
)
del _L

#: the 19 train ids' names, index = train id (no background class)
CITYSCAPES_CLASSES = tuple(
    lab.name for lab in sorted((x for x in LABELS if x.train_id != 255), key=lambda x: x.train_id)
)
#: the 8 detection classes: labels with instances and a train id, in train-id order
CITYSCAPES_THINGS = tuple(lab.name for lab in LABELS if lab.has_instances and lab.train_id != 255)
CITYSCAPES_ANNOTATIONS = {"det": "boxes", "seg": "mask"}
CROWD_MODES = ("ignore", "drop")
SPLITS = ("train", "val", "test")

_BY_ID = {lab.id: lab for lab in LABELS}
_MAX_ID = max(_BY_ID)


def train_id_of(label_id: int) -> int:
    """The train id of a label id (255 for void, unevaluated and unknown-but-tolerated 255)."""
    if label_id == IGNORE_INDEX:
        return IGNORE_INDEX
    try:
        return _BY_ID[label_id].train_id
    except KeyError:
        raise KeyError(f"{label_id} is not a Cityscapes label id") from None


def _lut() -> np.ndarray:
    lut = np.full(256, -1, np.int16)  # -1 = not a valid value in a labelIds PNG
    for lab in LABELS:
        if lab.id >= 0:
            lut[lab.id] = lab.train_id
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


_TRAIN_ID_LUT = _lut()
#: label id → det label (0..7), -1 = not a detection class
_THING_LUT = np.full(_MAX_ID + 1, -1, np.int64)
for _k, _name in enumerate(CITYSCAPES_THINGS):
    _THING_LUT[next(lab.id for lab in LABELS if lab.name == _name)] = _k


def semantic_from_label_ids(label_ids: np.ndarray, path: str | Path) -> np.ndarray:
    """uint8 train-id mask (255 ignore) from a labelIds array."""
    label_ids = np.asarray(label_ids, np.uint8)
    mapped = _TRAIN_ID_LUT[label_ids]
    if (mapped < 0).any():
        bad = sorted({int(v) for v in np.unique(label_ids[mapped < 0])})
        raise DatasetError(
            f"label image {path} holds value(s) {bad[:10]} that are not Cityscapes label ids (0..{_MAX_ID}, "
            f"or {IGNORE_INDEX}); is it a *_gtFine_labelIds.png?"
        )
    return mapped.astype(np.uint8)


def boxes_from_instance_ids(inst: np.ndarray, path: str | Path, crowd: str = "ignore") -> dict[str, np.ndarray]:
    """{"boxes", "labels", "ignore"} of the thing classes in an instanceIds array."""
    if crowd not in CROWD_MODES:
        raise ConfigError(f"crowd={crowd!r}; valid values: {', '.join(CROWD_MODES)}")
    inst = np.asarray(inst)
    values = ids_present(inst).astype(np.int64)
    plain = values < 1000
    cls = np.where(plain, values, values // 1000)
    ok = plain & (np.isin(values, list(_BY_ID)) | (values == IGNORE_INDEX))
    ok |= ~plain & np.isin(cls, [lab.id for lab in LABELS if lab.has_instances])
    if not ok.all():
        raise DatasetError(
            f"instance image {path} holds value(s) {values[~ok].tolist()[:10]}; expected label ids 0..{_MAX_ID} "
            "or class·1000 + instance for the classes with instances (24..33)"
        )
    thing = np.where(values == IGNORE_INDEX, -1, _THING_LUT[np.clip(cls, 0, _MAX_ID)])
    is_instance = ~plain & (thing >= 0)
    boxes = [boxes_of_ids(inst, values[is_instance])]
    labels = [thing[is_instance]]
    ignore = [np.zeros(int(is_instance.sum()), bool)]
    if crowd == "ignore":
        for gid in values[plain & (thing >= 0)]:
            n, _, stats, _ = cv2.connectedComponentsWithStats((inst == gid).astype(np.uint8), connectivity=8)
            x, y, w, h = (stats[1:, i].astype(np.float32) for i in range(4))  # row 0 is the background
            boxes.append(np.stack([x, y, x + w, y + h], axis=1))
            labels.append(np.full(n - 1, _THING_LUT[gid], np.int64))
            ignore.append(np.ones(n - 1, bool))
    return {
        "boxes": np.concatenate(boxes).astype(np.float32).reshape(-1, 4),
        "labels": np.concatenate(labels).astype(np.int64),
        "ignore": np.concatenate(ignore),
    }


# --------------------------------------------------------------------- layout
@dataclasses.dataclass(frozen=True)
class CityscapesItem:
    name: str  # {city}_{seq}_{frame}
    image: Path
    label_ids: Path
    instance_ids: Path


IMAGE_SUFFIX = "_leftImg8bit.png"


def find_cityscapes_root(root: str | Path) -> Path:
    """The folder holding leftImg8bit/ and gtFine/ (``root`` itself or ``root/cityscapes``)."""
    root = Path(root)
    for base in (root, root / "cityscapes"):
        if (base / "leftImg8bit").is_dir():
            return base
    raise DatasetError(
        f"no Cityscapes layout under {root}: expected leftImg8bit/ and gtFine/ in {root} or {root / 'cityscapes'} "
        "(unpack leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip there)"
    )


def cityscapes_items(root: str | Path, split: str) -> list[CityscapesItem]:
    """The split's images (sorted by city and name) and their gtFine files."""
    if split not in SPLITS:
        raise ConfigError(f"Cityscapes split {split!r}; valid splits: {', '.join(SPLITS)}")
    base = find_cityscapes_root(root)
    img_dir = base / "leftImg8bit" / split
    gt_dir = base / "gtFine" / split
    for d in (img_dir, gt_dir):
        if not d.is_dir():
            raise DatasetError(f"Cityscapes split {split!r}: folder {d} does not exist")
    items = []
    for path in sorted(img_dir.glob(f"*/*{IMAGE_SUFFIX}")):
        name = path.name[: -len(IMAGE_SUFFIX)]
        gt = gt_dir / path.parent.name / f"{name}_gtFine"
        items.append(CityscapesItem(name, path, Path(f"{gt}_labelIds.png"), Path(f"{gt}_instanceIds.png")))
    if not items:
        raise DatasetError(f"Cityscapes split {split!r}: no *{IMAGE_SUFFIX} files under {img_dir}/<city>/")
    return items


def load_cityscapes_sample(
    item: CityscapesItem,
    annotations: Sequence[str],
    image_id: int,
    crowd: str = "ignore",
    dataset: str = "cityscapes",
) -> dict[str, Any]:
    """The raw sample: image, ids, "det" boxes and/or "seg" train-id mask."""
    unknown = [a for a in annotations if a not in CITYSCAPES_ANNOTATIONS]
    if unknown:
        raise ConfigError(f"Cityscapes annotations {unknown}: choose among {', '.join(CITYSCAPES_ANNOTATIONS)}")
    sample = image_sample(item.image, image_id, dataset)
    hw = sample["orig_size"]
    if "seg" in annotations:
        mask = semantic_from_label_ids(read_mask(item.label_ids), item.label_ids)
        check_size(mask, item.label_ids, hw, item.image)
        sample["seg"] = mask
    if "det" in annotations:
        inst = read_id_png(item.instance_ids, "instance image")
        check_size(inst, item.instance_ids, hw, item.image)
        sample["det"] = boxes_from_instance_ids(inst, item.instance_ids, crowd)
    return sample


# --------------------------------------------------------------------- adapter
class CityscapesDataset(AnnotatedDataset):
    """Cityscapes gtFine: "seg" (19 train ids, 255 ignore) and "det" (the 8 thing classes' instance boxes).

    Registered as ``cityscapes``: ``build_dataset("cityscapes", root, "val", "det,seg")``. Image ids
    are the indices of the split's images (sorted by city and name). ``box_gt("det")`` reads every
    ``*_instanceIds.png`` of the split once (cached): instance boxes, group regions as ``iscrowd=1``
    ignore boxes (with ``crowd="ignore"``), ``area`` = box area.
    """

    ANNOTATIONS = CITYSCAPES_ANNOTATIONS

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        annotations: str | Sequence[str] = ("seg",),
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        crowd: str = "ignore",
        name: str = "cityscapes",
        on_error: str = "raise",
        seed: int = 0,
    ):
        """
        Args:
            crowd: group regions ("cargroup", ...) as ignore boxes ("ignore") or left out ("drop").
        """
        super().__init__(name=name, annotations=annotations, transform=transform, on_error=on_error, seed=seed)
        if crowd not in CROWD_MODES:
            raise ConfigError(f"crowd={crowd!r}; valid values: {', '.join(CROWD_MODES)}")
        self.crowd = crowd
        items = cityscapes_items(root, split)
        self._items = PackedRecords(items)
        self.image_ids = list(range(len(items)))
        self.class_names = {"det": list(CITYSCAPES_THINGS), "seg": list(CITYSCAPES_CLASSES)}
        #: det label → Cityscapes label id (the native category id of the results JSON)
        self.cat_ids = [next(lab.id for lab in LABELS if lab.name == n) for n in CITYSCAPES_THINGS]
        self._gt: list[tuple[dict[str, Any], dict[str, np.ndarray]]] | None = None

    def file_name(self, index: int) -> str:
        return str(self._items[index].image)

    def _load(self, index: int) -> dict[str, Any]:
        return load_cityscapes_sample(self._items[index], tuple(self.annotations), self.image_ids[index], self.crowd,
                                      self.name)

    def _image_targets(self, index: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        item = self._items[index]
        h, w = image_size(item.image)
        inst = read_id_png(item.instance_ids, "instance image")
        check_size(inst, item.instance_ids, (h, w), item.image)
        info = {"id": self.image_ids[index], "file_name": str(item.image), "height": h, "width": w}
        return info, boxes_from_instance_ids(inst, item.instance_ids, self.crowd)

    def _box_gt_dict(self, annotation: str) -> dict[str, Any]:
        if self._gt is None:  # one read of the split's instance PNGs per process
            self._gt = [g for g in self.gt_per_image(self._image_targets) if g is not None]
        return coco_gt_dict(self._gt, self.cat_ids, self.class_names["det"])
