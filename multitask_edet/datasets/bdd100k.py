"""BDD100K: detection boxes, drivable area and lane lines, in the released layout and in the
re-packed layout of HybridNets/YOLOP — readers, and the adapter ``Bdd100kDataset`` (``bdd100k``).

Released layout (``bdd100k/`` from the official zips)::

    images/100k/{train,val,test}/*.jpg                 1280x720
    labels/det_20/det_{train,val}.json                 Scalabel frames
    labels/drivable/masks/{train,val}/*.png            one grey byte per pixel
    labels/lane/masks/{train,val}/*.png                one bit-packed byte per pixel

Detection: a JSON list of frames ``{"name": "<stem>.jpg", "labels": [{"category", "box2d":
{x1, y1, x2, y2}, "attributes": {occluded, truncated, crowd, ...}}]}`` (a Scalabel dataset
dict ``{"frames": [...]}`` is accepted too). ``labels`` may be missing or null: such a frame
has no objects and is kept as an image with zero boxes. Labels without ``box2d`` (polygons)
are skipped. Scalabel boxes include their last pixel (width = x2 - x1 + 1), so a box becomes
xyxy ``(x1, y1, x2 + 1, y2 + 1)`` in continuous 0-based coordinates, clipped to the image.
The ten classes and their handling follow the toolkit's detection config: old names are
renamed (bike→bicycle, motor→motorcycle, person→pedestrian, caravan/van→car); "other person",
"other vehicle" and "trailer" become *ignore* boxes of pedestrian, car and truck (annotated
but not evaluated); a label whose ``crowd`` or ``ignored`` attribute is true is an ignore box
(neither positive nor negative in training, not counted in evaluation). Any other category
is an error naming the file.

Drivable area: pixel 0 = direct, 1 = alternative, 2 = background (the toolkit paints
background with 2, and its evaluation leaves background out of the mIoU). Read as
``drivable="classes"``: index 0 background, 1 direct, 2 alternative (the library keeps
background at index 0), or ``drivable="binary"``: 0 background, 1 drivable (direct ∪
alternative; HybridNets and YOLOP train a two-class drivable task on their own re-packed
masks). Any other value is an error.

Lane lines: each byte packs (as the bdd100k toolkit's lane evaluator reads it and its mask
writer writes it): bits 0-2 the category
(``LANE_CATEGORIES``), bit 3 the background flag (1 = not a lane), bit 4 the style (0 solid,
1 dashed), bit 5 the direction (0 parallel, 1 vertical); non-lane pixels are written as 255.
``lane="binary"`` gives 0 background / 1 lane, ``lane="category"`` 0 background / 1 + the
category. A lane pixel with bit 6 or 7 set is an error. The toolkit draws lanes as 1-pt lines
at 100 dpi (about 1.4 px, so 1–2 px wide); HybridNets and YOLOP train on 8-px lines.
``lane_dilation=r`` widens every line by r px on each side (elliptical kernel of 2r+1 px), so
r = 3 turns the toolkit's 1–2 px lines into 7–8 px ones; where widened lines of two
categories meet, the higher category index wins.

Re-packed layout (HybridNets/YOLOP, one file per image)::

    images/{train,val}/*.jpg       (also imgs/ or images/100k/)
    det_annotations/{split}/*.json (also det_annot/): the 2018 per-image format
                                   {"name", "frames": [{"objects": [{category, box2d, ...}]}]}
    da_seg_annotations/{split}/*.png  (also da_seg_annot/): 0 background, 255 drivable
    ll_seg_annotations/{split}/*.png  (also ll_seg_annot/): 0 background, 255 lane line

Its masks are binary (read as grey value > 127), so only ``drivable="binary"`` and
``lane="binary"`` apply. Boxes are read exactly as above (same class handling and box
convention). Class merging (HybridNets' single "vehicle" class, say) is ``class_map`` — see
class_map.py; ``class_map="vehicle"`` names that merge.

Which images a split has: the union of the frames of the requested annotation sources (the
det JSON's frames, the mask folders' files); a sample carries each requested annotation its
image has in those sources and omits the others.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import cv2
import numpy as np

from ..errors import ConfigError, DatasetError
from .class_map import BDD100K_VEHICLE, ClassMap
from .dataset import AnnotatedDataset, PackedRecords, coco_gt_dict
from .format_io import check_size, image_sample, read_binary_png
from .io import image_size, read_json, read_mask

#: the ten detection classes, in the toolkit's category-id order (ids 1..10)
BDD100K_DET_CLASSES = (
    "pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle", "traffic light", "traffic sign",
)  # fmt: skip
#: names of older releases (and of the re-packed per-image JSONs) → the ten classes
NAME_MAPPING = {"bike": "bicycle", "caravan": "car", "motor": "motorcycle", "person": "pedestrian", "van": "car"}
#: annotated, not evaluated: ignore boxes of the nearest class
IGNORED_MAPPING = {"other person": "pedestrian", "other vehicle": "car", "trailer": "truck"}

#: class maps by name (``class_map: vehicle``): classes the preset does not name are dropped
CLASS_MAP_PRESETS = {"vehicle": BDD100K_VEHICLE}

#: the annotation names and kinds a BDD100K sample can carry
BDD100K_ANNOTATIONS = {"det": "boxes", "drivable": "mask", "lane": "mask"}

DRIVABLE_RAW = ("direct", "alternative", "background")  # pixel value = index
DRIVABLE_CLASSES = {"classes": ("background", "direct", "alternative"), "binary": ("background", "drivable")}
_DRIVABLE_LUT = {"classes": (1, 2, 0), "binary": (1, 1, 0)}  # raw value → class index

LANE_CATEGORIES = (
    "crosswalk", "double other", "double white", "double yellow", "road curb", "single other", "single white",
    "single yellow",
)  # fmt: skip
LANE_DIRECTIONS = ("parallel", "vertical")
LANE_STYLES = ("solid", "dashed")
LANE_CATEGORY_BITS = 0b0000_0111
LANE_BACKGROUND_BIT = 1 << 3
LANE_STYLE_BIT = 1 << 4
LANE_DIRECTION_BIT = 1 << 5
LANE_UNUSED_BITS = 0b1100_0000
#: the byte the toolkit writes where there is no lane
LANE_BACKGROUND = 255
LANE_CLASSES = {"binary": ("background", "lane"), "category": ("background", *LANE_CATEGORIES)}

LAYOUTS = ("auto", "official", "repacked")
_OFFICIAL = {
    "images": ("images/100k/{split}",),
    "det": ("labels/det_20/det_{split}.json",),
    "drivable": ("labels/drivable/masks/{split}",),
    "lane": ("labels/lane/masks/{split}",),
}
_REPACKED = {
    "images": ("images/{split}", "imgs/{split}", "images/100k/{split}"),
    "det": ("det_annotations/{split}", "det_annot/{split}"),
    "drivable": ("da_seg_annotations/{split}", "da_seg_annot/{split}"),
    "lane": ("ll_seg_annotations/{split}", "ll_seg_annot/{split}"),
}


# --------------------------------------------------------------------- options
@dataclasses.dataclass
class BddSpec:
    """How BDD100K annotations are read (see the module docstring for each choice)."""

    drivable: str = "classes"
    lane: str = "binary"
    lane_dilation: int = 0
    class_map: Mapping[str, str | None] | str | None = None
    unmapped: str = "error"
    box_tolerance: float = 1.0
    classes: ClassMap = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.drivable not in DRIVABLE_CLASSES:
            raise ConfigError(f"drivable={self.drivable!r}; valid values: {', '.join(DRIVABLE_CLASSES)}")
        if self.lane not in LANE_CLASSES:
            raise ConfigError(f"lane={self.lane!r}; valid values: {', '.join(LANE_CLASSES)}")
        if isinstance(self.lane_dilation, bool) or not isinstance(self.lane_dilation, int) or self.lane_dilation < 0:
            raise ConfigError(f"lane_dilation={self.lane_dilation!r}; use a whole number of pixels >= 0")
        self.classes = ClassMap.build(BDD100K_DET_CLASSES, preset_class_map(self.class_map), self.unmapped)

    def class_names(self) -> dict[str, list[str]]:
        return {
            "det": list(self.classes.target),
            "drivable": list(DRIVABLE_CLASSES[self.drivable]),
            "lane": list(LANE_CLASSES[self.lane]),
        }

    def check_layout(self, kind: str) -> None:
        """The re-packed masks are binary: per-class readings need the released masks."""
        if kind != "repacked":
            return
        if self.drivable != "binary":
            raise ConfigError(
                f"drivable={self.drivable!r} needs the released masks (0 direct, 1 alternative, 2 background); "
                "the re-packed da_seg masks are binary: use drivable='binary'"
            )
        if self.lane != "binary":
            raise ConfigError(
                f"lane={self.lane!r} needs the released bit-packed lane masks; the re-packed ll_seg masks are "
                "binary: use lane='binary'"
            )


def preset_class_map(class_map: Mapping[str, str | None] | str | None) -> Mapping[str, str | None] | None:
    """A mapping as given, or the named preset (``CLASS_MAP_PRESETS``) with every other class dropped."""
    if not isinstance(class_map, str):
        return class_map
    if class_map not in CLASS_MAP_PRESETS:
        raise ConfigError(
            f"class_map={class_map!r}: named class maps are {', '.join(CLASS_MAP_PRESETS)}; or give a mapping "
            "{source class: target class or null}"
        )
    preset = CLASS_MAP_PRESETS[class_map]
    return {c: preset.get(c) for c in BDD100K_DET_CLASSES}


def check_annotations(annotations: Iterable[str]) -> tuple[str, ...]:
    names = tuple(annotations)
    unknown = [a for a in names if a not in BDD100K_ANNOTATIONS]
    if unknown or not names:
        raise ConfigError(
            f"BDD100K annotations {list(names)}: choose among {', '.join(BDD100K_ANNOTATIONS)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return tuple(a for a in BDD100K_ANNOTATIONS if a in names)


# --------------------------------------------------------------------- masks
def encode_lane(category: str, direction: str = "parallel", style: str = "solid") -> int:
    """The byte the toolkit writes for a lane pixel of this category/direction/style."""
    try:
        c, d, s = LANE_CATEGORIES.index(category), LANE_DIRECTIONS.index(direction), LANE_STYLES.index(style)
    except ValueError:
        raise ConfigError(
            f"lane ({category!r}, {direction!r}, {style!r}): categories {LANE_CATEGORIES}, directions "
            f"{LANE_DIRECTIONS}, styles {LANE_STYLES}"
        ) from None
    return c | (LANE_STYLE_BIT if s else 0) | (LANE_DIRECTION_BIT if d else 0)


def dilate_lanes(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grey dilation by an ellipse of 2·radius+1 px: lines widen, the higher class index wins."""
    if radius <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask, kernel)


def decode_lane_mask(raw: np.ndarray, mode: str, path: str | Path, dilation: int = 0) -> np.ndarray:
    """uint8 class-index mask from a bit-packed lane mask (``mode`` binary | category)."""
    raw = np.asarray(raw, np.uint8)
    lane = (raw & LANE_BACKGROUND_BIT) == 0
    bad = lane & ((raw & LANE_UNUSED_BITS) != 0)
    if bad.any():
        values = sorted({int(v) for v in np.unique(raw[bad])})
        raise DatasetError(
            f"lane mask {path} holds value(s) {values[:10]}: a lane pixel (bit 3 clear) may only use bits 0-5 "
            "(category, style, direction); is it a BDD100K lane mask?"
        )
    if mode == "binary":
        mask = lane.astype(np.uint8)
    elif mode == "category":
        mask = np.where(lane, (raw & LANE_CATEGORY_BITS) + 1, 0).astype(np.uint8)
    else:
        raise ConfigError(f"lane={mode!r}; valid values: {', '.join(LANE_CLASSES)}")
    return dilate_lanes(mask, dilation)


def drivable_mask(raw: np.ndarray, mode: str, path: str | Path) -> np.ndarray:
    """uint8 class-index mask from a released drivable mask (0 direct, 1 alternative, 2 background)."""
    raw = np.asarray(raw, np.uint8)
    counts = np.bincount(raw.ravel(), minlength=256)
    bad = np.flatnonzero(counts[len(DRIVABLE_RAW) :]) + len(DRIVABLE_RAW)
    if bad.size:
        raise DatasetError(
            f"drivable mask {path} holds value(s) {bad.tolist()[:10]}; BDD100K drivable masks hold "
            "0 (direct), 1 (alternative) and 2 (background) only"
        )
    lut = np.asarray(_DRIVABLE_LUT[mode], np.uint8)
    return lut[raw]


# --------------------------------------------------------------------- boxes
@dataclasses.dataclass(frozen=True)
class BddFrame:
    """One image's boxes over ``BDD100K_DET_CLASSES``: xyxy continuous, not yet clipped."""

    name: str
    boxes: np.ndarray  # float32 (N, 4)
    labels: np.ndarray  # int64 (N,)
    ignore: np.ndarray  # bool (N,)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def frame_from_labels(name: str, labels: Any, where: str) -> BddFrame:
    """Scalabel labels (or the per-image JSON's objects) → BddFrame; ``where`` names the file."""
    if labels is None:
        labels = []
    if not isinstance(labels, list):
        raise DatasetError(f"{where}: frame {name!r} has 'labels' {str(labels)[:60]!r}; expected a list")
    boxes, cats, ignore = [], [], []
    for k, lab in enumerate(labels):
        if not isinstance(lab, dict):
            raise DatasetError(f"{where}: frame {name!r}, label {k} is not an object")
        box = lab.get("box2d")
        if box is None:
            continue  # polygons (drivable areas, lanes) in the same list
        cat = lab.get("category")
        cat = NAME_MAPPING.get(cat, cat)
        ign = cat in IGNORED_MAPPING
        cat = IGNORED_MAPPING.get(cat, cat)
        if cat not in BDD100K_DET_CLASSES:
            raise DatasetError(
                f"{where}: frame {name!r}, label {k} has category {lab.get('category')!r}, which is not a BDD100K "
                f"detection class {list(BDD100K_DET_CLASSES)} (nor one of the renamed/ignored "
                f"{sorted(NAME_MAPPING) + sorted(IGNORED_MAPPING)})"
            )
        xyxy = [box.get(c) for c in ("x1", "y1", "x2", "y2")] if isinstance(box, dict) else [None]
        if len(xyxy) != 4 or not all(_number(v) for v in xyxy):
            raise DatasetError(f"{where}: frame {name!r}, label {k} has box2d {box!r}; expected numbers x1, y1, x2, y2")
        x1, y1, x2, y2 = (float(v) for v in xyxy)
        if x2 < x1 or y2 < y1:
            raise DatasetError(f"{where}: frame {name!r}, label {k} has box2d {box!r} with x2 < x1 or y2 < y1")
        attrs = lab.get("attributes") or {}
        ign = ign or bool(attrs.get("crowd", False)) or bool(attrs.get("ignored", False))
        boxes.append((x1, y1, x2 + 1.0, y2 + 1.0))  # Scalabel boxes include pixel x2, y2
        cats.append(BDD100K_DET_CLASSES.index(cat))
        ignore.append(ign)
    return BddFrame(
        name,
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(cats, np.int64),
        np.asarray(ignore, bool),
    )


def parse_det_json(data: Any, path: str | Path) -> dict[str, BddFrame]:
    """The released ``det_{split}.json`` → {image file name: BddFrame}."""
    frames = data.get("frames") if isinstance(data, dict) else data
    if not isinstance(frames, list):
        raise DatasetError(f"annotation file {path} is not a list of Scalabel frames (nor a dict with 'frames')")
    out: dict[str, BddFrame] = {}
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or not isinstance(fr.get("name"), str) or not fr["name"]:
            raise DatasetError(f"annotation file {path}: frame {i} has no 'name'")
        name = fr["name"]
        if name in out:
            raise DatasetError(f"annotation file {path}: frame {name!r} appears twice")
        out[name] = frame_from_labels(name, fr.get("labels"), f"annotation file {path}")
    return out


def read_repacked_det(path: str | Path) -> BddFrame:
    """One HybridNets/YOLOP per-image JSON (``frames[0].objects``) → BddFrame."""
    data = read_json(path)
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames or not isinstance(frames[0], dict):
        raise DatasetError(f"annotation file {path} has no 'frames' list; is it a BDD100K per-image label file?")
    name = data.get("name") or Path(path).stem
    return frame_from_labels(str(name), frames[0].get("objects"), f"annotation file {path}")


def frame_targets(frame: BddFrame, hw: tuple[int, int], tolerance: float, path: str | Path) -> dict[str, np.ndarray]:
    """{"boxes", "labels", "ignore"} of a frame on an image of size ``hw``, boxes clipped to it."""
    h, w = hw
    b = frame.boxes
    t = tolerance
    out_of_image = (b[:, 0] < -t) | (b[:, 1] < -t) | (b[:, 2] > w + t) | (b[:, 3] > h + t)
    if out_of_image.any():
        k = int(np.flatnonzero(out_of_image)[0])
        x0, y0, x1, y1 = b[k].tolist()
        raise DatasetError(
            f"annotation file {path}: frame {frame.name!r} has a {BDD100K_DET_CLASSES[frame.labels[k]]} box "
            f"x1={x0:g} y1={y0:g} x2={x1 - 1:g} y2={y1 - 1:g} outside its {w}x{h} image"
        )
    boxes = b.copy()
    np.clip(boxes[:, 0::2], 0.0, float(w), out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0.0, float(h), out=boxes[:, 1::2])
    return {"boxes": boxes, "labels": frame.labels.copy(), "ignore": frame.ignore.copy()}


# --------------------------------------------------------------------- layout
@dataclasses.dataclass(frozen=True)
class BddLayout:
    """Where one split's files are. ``det`` is the JSON file (official) or folder (re-packed)."""

    kind: str  # official | repacked
    base: Path
    split: str
    images: Path
    det: Path | None = None
    drivable: Path | None = None
    lane: Path | None = None


def _first(base: Path, patterns: Sequence[str], split: str) -> Path | None:
    for p in patterns:
        path = base / p.format(split=split)
        if path.exists():
            return path
    return None


def _detect_kind(base: Path) -> str | None:
    if (base / "labels").is_dir() and any((base / "labels" / d).is_dir() for d in ("det_20", "drivable", "lane")):
        return "official"
    if any((base / p.split("/")[0]).is_dir() for key in ("det", "drivable", "lane") for p in _REPACKED[key]):
        return "repacked"
    return None


def find_bdd100k_layout(
    root: str | Path, split: str, annotations: Sequence[str], layout: str = "auto"
) -> BddLayout:
    """The split's files under ``root`` (the ``bdd100k`` folder, or a data root that holds one)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout={layout!r}; valid values: {', '.join(LAYOUTS)}")
    annotations = check_annotations(annotations)
    root = Path(root)
    for base in (root, root / "bdd100k"):
        kind = _detect_kind(base)
        if kind is None or layout not in ("auto", kind):
            continue
        table = _OFFICIAL if kind == "official" else _REPACKED
        found = {key: _first(base, table[key], split) for key in ("images", *annotations)}
        missing = [k for k, v in found.items() if v is None]
        if missing:
            wanted = "; ".join(
                f"{k}: " + " or ".join(str(base / p.format(split=split)) for p in table[k]) for k in missing
            )
            raise DatasetError(
                f"BDD100K ({kind} layout) at {base}, split {split!r}: missing {wanted}. Download/unpack the missing "
                "part, or ask for fewer annotations"
            )
        return BddLayout(kind, base, split, **found)
    looked = ", ".join(str(b) for b in (root, root / "bdd100k"))
    raise DatasetError(
        f"no BDD100K {'' if layout == 'auto' else layout + ' '}layout under {looked}: expected labels/det_20, "
        "labels/drivable/masks or labels/lane/masks beside images/100k (released layout), or det_annotations/, "
        "da_seg_annotations/, ll_seg_annotations/ beside images/ (HybridNets/YOLOP layout). Point --data-root "
        "at the folder that holds them"
    )


# --------------------------------------------------------------------- items
@dataclasses.dataclass(frozen=True)
class BddItem:
    """One image of a split and where each of its annotations is (None = it has none)."""

    name: str  # file stem
    image: Path
    listed_by: Path  # the first source that named the image (for error messages)
    repacked: bool = False
    frame: BddFrame | None = None  # official layout: parsed boxes
    det_file: Path | None = None  # official: det JSON; re-packed: the image's own JSON
    drivable: Path | None = None
    lane: Path | None = None


def _stems(folder: Path, suffix: str) -> dict[str, Path]:
    with os.scandir(folder) as it:
        return {e.name[: -len(suffix)]: Path(e.path) for e in it if e.name.endswith(suffix) and e.is_file()}


def bdd100k_items(layout: BddLayout, annotations: Sequence[str]) -> list[BddItem]:
    """The split's images (sorted by name) with their annotation sources."""
    annotations = check_annotations(annotations)
    repacked = layout.kind == "repacked"
    sources: dict[str, dict[str, Any]] = {}
    listed_by: dict[str, Path] = {}
    if "det" in annotations:
        if repacked:
            sources["det"] = _stems(layout.det, ".json")
        else:
            frames = parse_det_json(read_json(layout.det), layout.det)
            sources["det"] = {Path(n).stem: f for n, f in frames.items()}
        for stem in sources["det"]:
            listed_by.setdefault(stem, layout.det)
    for key in ("drivable", "lane"):
        if key in annotations:
            folder = getattr(layout, key)
            sources[key] = _stems(folder, ".png")
            for stem in sources[key]:
                listed_by.setdefault(stem, folder)
    items = []
    for stem in sorted(listed_by):
        det = sources.get("det", {}).get(stem)
        items.append(
            BddItem(
                name=stem,
                image=layout.images / f"{stem}.jpg",
                listed_by=listed_by[stem],
                repacked=repacked,
                frame=None if repacked else det,
                det_file=(det if repacked else layout.det) if det is not None else None,
                drivable=sources.get("drivable", {}).get(stem),
                lane=sources.get("lane", {}).get(stem),
            )
        )
    return items


def load_bdd100k_sample(
    item: BddItem, spec: BddSpec, annotations: Sequence[str], image_id: int, dataset: str = "bdd100k"
) -> dict[str, Any]:
    """The raw sample: image, ids, and each requested annotation the item has."""
    annotations = check_annotations(annotations)
    if not item.image.is_file():
        raise DatasetError(f"{item.listed_by} lists {item.name!r}, but its image {item.image} does not exist")
    sample = image_sample(item.image, image_id, dataset)
    hw = sample["orig_size"]
    if "det" in annotations and item.det_file is not None:
        frame = item.frame if item.frame is not None else read_repacked_det(item.det_file)
        sample["det"] = spec.classes.apply(frame_targets(frame, hw, spec.box_tolerance, item.det_file))
    if "drivable" in annotations and item.drivable is not None:
        if item.repacked:
            mask = read_binary_png(item.drivable, "drivable mask").astype(np.uint8)
        else:
            mask = drivable_mask(read_mask(item.drivable), spec.drivable, item.drivable)
        check_size(mask, item.drivable, hw, item.image)
        sample["drivable"] = mask
    if "lane" in annotations and item.lane is not None:
        if item.repacked:
            mask = dilate_lanes(read_binary_png(item.lane, "lane mask").astype(np.uint8), spec.lane_dilation)
        else:
            mask = decode_lane_mask(read_mask(item.lane), spec.lane, item.lane, spec.lane_dilation)
        check_size(mask, item.lane, hw, item.image)
        sample["lane"] = mask
    return sample


# --------------------------------------------------------------------- adapter
class Bdd100kDataset(AnnotatedDataset):
    """BDD100K in either layout: "det" boxes, "drivable" and "lane" masks (see the module docstring).

    Registered as ``bdd100k``: ``build_dataset("bdd100k", root, "val", "det,drivable,lane",
    lane_dilation=3, class_map="vehicle")``. Image ids are the indices of the split's images
    (sorted by name). ``box_gt("det")`` holds the images that have a det annotation, ignore
    boxes as ``iscrowd=1`` (COCOeval neither rewards nor penalises detections on them), boxes
    clipped to the image as in training and ``area`` = box area.
    """

    ANNOTATIONS = BDD100K_ANNOTATIONS

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        annotations: str | Sequence[str] = ("det",),
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        layout: str = "auto",
        drivable: str | None = None,
        lane: str = "binary",
        lane_dilation: int = 0,
        class_map: Mapping[str, str | None] | str | None = None,
        unmapped: str = "error",
        box_tolerance: float = 1.0,
        name: str = "bdd100k",
        on_error: str = "raise",
        seed: int = 0,
    ):
        """
        Args:
            layout: "auto" (whichever is found under ``root`` or ``root/bdd100k``), "official"
                (the released zips) or "repacked" (HybridNets/YOLOP).
            drivable: "classes" (background, direct, alternative) or "binary" (background, drivable);
                None = "classes" on the released masks, "binary" on the re-packed ones (all they hold).
            lane: "binary" (background, lane) or "category" (background + the 8 lane categories).
            lane_dilation: widen lane lines by this many pixels on each side (3: the 8-px lines
                HybridNets and YOLOP train on).
            class_map: merge/drop detection classes: a mapping {class: target or null}, or a named
                preset ("vehicle": car, bus, truck, train → vehicle, the rest dropped).
            unmapped: what becomes of classes a mapping does not name: "error" or "drop".
            box_tolerance: pixels a box may exceed its image before it is an error.
        """
        super().__init__(name=name, annotations=annotations, transform=transform, on_error=on_error, seed=seed)
        self.layout = find_bdd100k_layout(root, split, tuple(self.annotations), layout)
        if drivable is None:
            drivable = "binary" if self.layout.kind == "repacked" else "classes"
        self.spec = BddSpec(drivable, lane, lane_dilation, class_map, unmapped, box_tolerance)
        self.spec.check_layout(self.layout.kind)
        items = bdd100k_items(self.layout, tuple(self.annotations))
        self._items = PackedRecords(items)  # 70k images: see PackedRecords
        self.image_ids = list(range(len(items)))
        self.class_names = self.spec.class_names()
        self.cat_ids = list(range(1, len(self.class_names["det"]) + 1))
        self._gt: list[tuple[dict[str, Any], dict[str, np.ndarray]]] | None = None

    def file_name(self, index: int) -> str:
        return str(self._items[index].image)

    def _load(self, index: int) -> dict[str, Any]:
        return load_bdd100k_sample(self._items[index], self.spec, tuple(self.annotations), self.image_ids[index], self.name)

    def _image_targets(self, index: int) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """(COCO image entry, its boxes as training sees them) of an image with a det annotation."""
        item = self._items[index]
        if item.det_file is None:
            return None
        h, w = image_size(item.image)
        frame = item.frame if item.frame is not None else read_repacked_det(item.det_file)
        targets = self.spec.classes.apply(frame_targets(frame, (h, w), self.spec.box_tolerance, item.det_file))
        return {"id": self.image_ids[index], "file_name": str(item.image), "height": h, "width": w}, targets

    def _box_gt_dict(self, annotation: str) -> dict[str, Any]:
        if self._gt is None:  # image headers (and re-packed JSONs) are read once per process
            self._gt = [g for g in self.gt_per_image(self._image_targets) if g is not None]
        return coco_gt_dict(self._gt, self.cat_ids, self.class_names["det"])
