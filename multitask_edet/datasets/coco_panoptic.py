"""COCO panoptic: semantic masks over all categories and boxes of the thing segments, from one
annotation file, so one COCO image trains both heads — readers, and the adapter
``CocoPanopticDataset`` (``coco-panoptic``).

Layout (``coco/`` with panoptic_annotations_trainval2017.zip unpacked in it)::

    annotations/panoptic_{train,val}2017.json
    annotations/panoptic_{train,val}2017/*.png    (where the release's inner zip unpacks, and
                                                  where panopticapi looks by default)
      or panoptic_{train,val}2017/*.png           (beside the image folders, as detectron2 wants)
    {train,val}2017/*.jpg

The JSON holds ``images`` (id, file_name, width, height), ``annotations`` (one per image:
image_id, file_name of its PNG, ``segments_info`` [{id, category_id, iscrowd, bbox, area}])
and ``categories`` [{id, name, isthing, ...}] (133 on COCO: 80 things, 53 stuff). Each PNG
pixel is RGB with segment id = R + 256·G + 256²·B; id 0 is void (unlabeled).

Semantic ("seg"): the categories become contiguous classes 0..C-1 in the JSON's category
order (0..132 on COCO); there is no background class — unlabeled pixels (id 0) are 255
(ignore). Crowd segments keep their category (``seg_crowd="class"``, what panopticapi's
panoptic→semantic converter does) or become 255 (``seg_crowd="ignore"``). A PNG id that
the image's ``segments_info`` does not list, or a listed segment absent from the PNG, is an
error naming the file.

Detection ("det"): the thing categories become contiguous labels 0..T-1 in JSON order
(0..79 on COCO); each thing segment's ``bbox`` [x, y, w, h] becomes xyxy, clipped to the
image; crowd segments become ignore boxes (neither positive nor negative in training, as
the COCO instances adapter does; ``crowd="drop"`` leaves them out). Boxes of zero width or
height are dropped.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, DatasetError
from .dataset import AnnotatedDataset, PackedRecords, coco_gt_dict
from .format_io import check_size, image_sample, read_rgb_png
from .io import IGNORE_INDEX, read_json

PANOPTIC_ANNOTATIONS = {"det": "boxes", "seg": "mask"}
SEG_CROWD_MODES = ("class", "ignore")
CROWD_MODES = ("ignore", "drop")
VOID = 0


def rgb_to_segment_id(rgb: np.ndarray) -> np.ndarray:
    """int64 (H, W) segment ids from an RGB (H, W, 3) panoptic PNG array."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def segment_id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): the inverse of ``rgb_to_segment_id`` (ids 0..2^24-1)."""
    ids = np.asarray(ids, np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


# --------------------------------------------------------------------- categories
@dataclasses.dataclass(frozen=True)
class PanopticCategories:
    ids: tuple[int, ...]  # JSON order
    names: tuple[str, ...]
    isthing: tuple[bool, ...]

    @property
    def seg_classes(self) -> list[str]:
        return list(self.names)

    @property
    def thing_classes(self) -> list[str]:
        return [n for n, t in zip(self.names, self.isthing) if t]

    @property
    def thing_ids(self) -> list[int]:
        """det label → native category id (for writing results back)."""
        return [i for i, t in zip(self.ids, self.isthing) if t]

    def seg_index(self) -> dict[int, int]:
        return {cid: k for k, cid in enumerate(self.ids)}

    def thing_index(self) -> dict[int, int]:
        return {cid: k for k, cid in enumerate(self.thing_ids)}


def parse_categories(data: dict[str, Any], path: str | Path) -> PanopticCategories:
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise DatasetError(f"annotation file {path} has no 'categories' list; is it a COCO panoptic file?")
    ids, names, things = [], [], []
    for c in cats:
        if not isinstance(c, dict) or not {"id", "name", "isthing"} <= c.keys() or not isinstance(c["id"], int):
            raise DatasetError(
                f"annotation file {path}: category entry {str(c)[:80]!r} lacks an int id, name or isthing"
            )
        if c["id"] in ids:
            raise DatasetError(f"annotation file {path}: category id {c['id']} appears twice")
        ids.append(c["id"])
        names.append(str(c["name"]))
        things.append(bool(c["isthing"]))
    if len(ids) > IGNORE_INDEX:
        raise DatasetError(f"annotation file {path} has {len(ids)} categories; a uint8 mask holds at most 255")
    return PanopticCategories(tuple(ids), tuple(names), tuple(things))


# --------------------------------------------------------------------- records
@dataclasses.dataclass(frozen=True)
class PanopticItem:
    image_id: int
    image: Path
    width: int
    height: int
    png: Path | None  # None: the image has no panoptic annotation
    ann_file: Path
    segments: tuple[dict[str, Any], ...] = ()


def _check_segment(seg: Any, path: Path, image: str, cats: dict[int, int]) -> None:
    where = f"annotation file {path}: image {image}"
    if not isinstance(seg, dict) or not isinstance(seg.get("id"), int) or seg["id"] <= VOID:
        raise DatasetError(f"{where}: segment {str(seg)[:80]!r} has no positive int 'id'")
    if seg.get("category_id") not in cats:
        raise DatasetError(
            f"{where}: segment {seg['id']} has category_id {seg.get('category_id')!r}, not in 'categories'"
        )
    bbox = seg.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox
    ):
        raise DatasetError(f"{where}: segment {seg['id']} has bbox {bbox!r}; expected [x, y, width, height] numbers")


def panoptic_items(data: Any, path: str | Path, img_dir: str | Path, png_dir: str | Path) -> list[PanopticItem]:
    """Images sorted by id with their PNG and checked ``segments_info``."""
    path, img_dir, png_dir = Path(path), Path(img_dir), Path(png_dir)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise DatasetError(f"annotation file {path} lacks the 'images' and 'annotations' lists of COCO panoptic")
    cats = parse_categories(data, path).seg_index()
    anns: dict[int, dict[str, Any]] = {}
    for a in data["annotations"]:
        if not isinstance(a, dict) or not isinstance(a.get("image_id"), int) or not isinstance(a.get("file_name"), str):
            raise DatasetError(f"annotation file {path}: annotation {str(a)[:80]!r} lacks image_id or file_name")
        if not isinstance(a.get("segments_info"), list):
            raise DatasetError(
                f"annotation file {path}: annotation of image {a['image_id']} has no 'segments_info' list"
            )
        if a["image_id"] in anns:
            raise DatasetError(f"annotation file {path}: image {a['image_id']} has two annotations")
        anns[a["image_id"]] = a
    items = []
    for im in sorted(data["images"], key=lambda im: im.get("id", 0) if isinstance(im, dict) else 0):
        if not isinstance(im, dict) or not {"id", "file_name", "width", "height"} <= im.keys():
            raise DatasetError(
                f"annotation file {path}: image entry {str(im)[:80]!r} lacks id, file_name, width or height"
            )
        a = anns.get(im["id"])
        segments: tuple[dict[str, Any], ...] = ()
        if a is not None:
            for seg in a["segments_info"]:
                _check_segment(seg, path, im["file_name"], cats)
            segments = tuple(a["segments_info"])
        items.append(
            PanopticItem(
                int(im["id"]),
                img_dir / im["file_name"],
                int(im["width"]),
                int(im["height"]),
                png_dir / a["file_name"] if a is not None else None,
                path,
                segments,
            )
        )
    return items


# --------------------------------------------------------------------- targets
def panoptic_semantic(
    ids: np.ndarray, item: PanopticItem, cats: PanopticCategories, seg_crowd: str = "class"
) -> np.ndarray:
    """uint8 class mask (JSON category order, void 255) from the PNG's segment ids."""
    if seg_crowd not in SEG_CROWD_MODES:
        raise ConfigError(f"seg_crowd={seg_crowd!r}; valid values: {', '.join(SEG_CROWD_MODES)}")
    index = cats.seg_index()
    value_of = {VOID: IGNORE_INDEX}
    for seg in item.segments:
        crowd = bool(seg.get("iscrowd", 0)) and seg_crowd == "ignore"
        value_of[seg["id"]] = IGNORE_INDEX if crowd else index[seg["category_id"]]
    present = np.unique(ids)  # hash-based; an inverse would need a full sort
    unknown = [int(v) for v in present if int(v) not in value_of]
    if unknown:
        raise DatasetError(
            f"panoptic PNG {item.png} holds segment id(s) {unknown[:10]} that the image's segments_info does not list"
        )
    absent = sorted(set(value_of) - {VOID} - {int(v) for v in present})
    if absent:
        raise DatasetError(f"panoptic PNG {item.png} lacks segment id(s) {absent[:10]} listed in segments_info")
    lut = np.asarray([value_of[int(v)] for v in present], np.uint8)
    return lut[np.searchsorted(present, ids)]


def panoptic_boxes(
    item: PanopticItem, cats: PanopticCategories, tolerance: float = 1.0, crowd: str = "ignore", with_area: bool = False
) -> dict[str, np.ndarray]:
    """{"boxes", "labels", "ignore"} of the thing segments (crowd → ignore, or dropped with
    ``crowd="drop"``); ``with_area`` adds "area", the segments' pixel counts from the JSON."""
    if crowd not in CROWD_MODES:
        raise ConfigError(f"crowd={crowd!r}; valid values: {', '.join(CROWD_MODES)}")
    index = cats.thing_index()
    boxes, labels, ignore, areas = [], [], [], []
    w, h = float(item.width), float(item.height)
    for seg in item.segments:
        label = index.get(seg["category_id"])
        if label is None:
            continue  # stuff
        x, y, bw, bh = (float(v) for v in seg["bbox"])
        if bw < 0 or bh < 0 or x < -tolerance or y < -tolerance or x + bw > w + tolerance or y + bh > h + tolerance:
            raise DatasetError(
                f"annotation file {item.ann_file}: segment {seg['id']} of image {item.image.name} has bbox "
                f"[x, y, w, h] = {list(seg['bbox'])} outside its {item.width}x{item.height} image"
            )
        is_crowd = bool(seg.get("iscrowd", 0))
        if bw == 0 or bh == 0 or (is_crowd and crowd == "drop"):
            continue
        boxes.append((max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)))
        labels.append(label)
        ignore.append(is_crowd)
        areas.append(float(seg.get("area", bw * bh)))
    out = {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, np.int64),
        "ignore": np.asarray(ignore, bool),
    }
    if with_area:
        out["area"] = np.asarray(areas, np.float64)
    return out


# --------------------------------------------------------------------- layout
@dataclasses.dataclass(frozen=True)
class PanopticLayout:
    ann_file: Path
    png_dir: Path
    img_dir: Path


def find_panoptic_layout(root: str | Path, split: str, year: str = "2017") -> PanopticLayout:
    """The split's JSON, PNG folder and image folder under ``root`` (COCO folder or a root holding coco/)."""
    tag = split if split[-4:].isdigit() else f"{split}{year}"
    root = Path(root)
    looked = []
    for base in (root, root / "coco", root / "COCO"):
        ann = base / "annotations" / f"panoptic_{tag}.json"
        looked.append(str(ann))
        if not ann.is_file():
            continue
        pngs = [base / "annotations" / f"panoptic_{tag}", base / f"panoptic_{tag}"]
        png_dir = next((d for d in pngs if d.is_dir()), None)
        if png_dir is None:
            raise DatasetError(
                f"COCO panoptic {split!r}: {ann} found but not its PNG folder ({pngs[0]} or {pngs[1]}); unzip "
                f"annotations/panoptic_{tag}.zip"
            )
        img_dir = base / tag
        if not img_dir.is_dir():
            raise DatasetError(f"COCO panoptic {split!r}: image folder {img_dir} (for {ann}) does not exist")
        return PanopticLayout(ann, png_dir, img_dir)
    raise DatasetError(
        f"COCO panoptic split {split!r} not found: looked for {', '.join(looked)}. Point --data-root at the folder "
        f"that holds annotations/panoptic_{tag}.json (or coco/)"
    )


def read_panoptic(layout: PanopticLayout) -> tuple[PanopticCategories, list[PanopticItem]]:
    """The split's categories and images (one read of its JSON)."""
    data = read_json(layout.ann_file)
    items = panoptic_items(data, layout.ann_file, layout.img_dir, layout.png_dir)
    return parse_categories(data, layout.ann_file), items


def load_panoptic_sample(
    item: PanopticItem,
    cats: PanopticCategories,
    annotations: Sequence[str],
    seg_crowd: str = "class",
    box_tolerance: float = 1.0,
    dataset: str = "coco-panoptic",
    crowd: str = "ignore",
) -> dict[str, Any]:
    """The raw sample: image, ids, and "det" boxes / "seg" mask when the image has an annotation."""
    unknown = [a for a in annotations if a not in PANOPTIC_ANNOTATIONS]
    if unknown:
        raise ConfigError(f"COCO panoptic annotations {unknown}: choose among {', '.join(PANOPTIC_ANNOTATIONS)}")
    sample = image_sample(item.image, item.image_id, dataset)
    hw = sample["orig_size"]
    if hw != (item.height, item.width):
        raise DatasetError(
            f"image {item.image} is {hw[1]}x{hw[0]} but {item.ann_file} says {item.width}x{item.height}"
        )
    if item.png is None:
        return sample
    if "det" in annotations:
        sample["det"] = panoptic_boxes(item, cats, box_tolerance, crowd)
    if "seg" in annotations:
        rgb = read_rgb_png(item.png, "panoptic PNG")
        check_size(rgb, item.png, hw, item.image)
        sample["seg"] = panoptic_semantic(rgb_to_segment_id(rgb), item, cats, seg_crowd)
    return sample


# --------------------------------------------------------------------- adapter
class CocoPanopticDataset(AnnotatedDataset):
    """COCO panoptic: "seg" (every category, JSON order, void 255) and "det" (thing boxes) from one file.

    Registered as ``coco-panoptic``: ``build_dataset("coco-panoptic", root, "val", "det,seg")``.
    Image ids are COCO's; ``cat_ids`` maps det labels back to COCO category ids (the thing ids,
    1..90 on COCO), so detection results JSONs are COCO's. ``box_gt("det")`` comes from
    ``segments_info`` (no PNG is read): crowd segments ``iscrowd=1``, ``area`` = the segment's.
    """

    ANNOTATIONS = PANOPTIC_ANNOTATIONS

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        annotations: str | Sequence[str] = ("det",),
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        year: str = "2017",
        seg_crowd: str = "class",
        crowd: str = "ignore",
        box_tolerance: float = 1.0,
        name: str = "coco-panoptic",
        on_error: str = "raise",
        seed: int = 0,
    ):
        """
        Args:
            seg_crowd: crowd segments in the masks keep their category ("class") or are 255 ("ignore").
            crowd: crowd thing segments as ignore boxes ("ignore") or left out ("drop").
            box_tolerance: pixels a segment's bbox may exceed its image before it is an error.
        """
        super().__init__(name=name, annotations=annotations, transform=transform, on_error=on_error, seed=seed)
        for key, value, valid in (("seg_crowd", seg_crowd, SEG_CROWD_MODES), ("crowd", crowd, CROWD_MODES)):
            if value not in valid:
                raise ConfigError(f"{key}={value!r}; valid values: {', '.join(valid)}")
        self.seg_crowd, self.crowd, self.box_tolerance = seg_crowd, crowd, float(box_tolerance)
        self.layout = find_panoptic_layout(root, split, year)
        self.categories, items = read_panoptic(self.layout)
        self._items = PackedRecords(items)  # 118k images on train2017: see PackedRecords
        self.image_ids = [it.image_id for it in items]
        self.class_names = {"det": self.categories.thing_classes, "seg": self.categories.seg_classes}
        self.cat_ids = self.categories.thing_ids

    def file_name(self, index: int) -> str:
        return str(self._items[index].image)

    def _load(self, index: int) -> dict[str, Any]:
        return load_panoptic_sample(self._items[index], self.categories, tuple(self.annotations), self.seg_crowd,
                                    self.box_tolerance, self.name, self.crowd)

    def _image_targets(self, index: int) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        item = self._items[index]
        if item.png is None:
            return None  # no panoptic annotation: not part of the ground truth
        info = {"id": item.image_id, "file_name": str(item.image), "height": item.height, "width": item.width}
        return info, panoptic_boxes(item, self.categories, self.box_tolerance, self.crowd, with_area=True)

    def _box_gt_dict(self, annotation: str) -> dict[str, Any]:
        gt = [g for g in self.gt_per_image(self._image_targets) if g is not None]
        return coco_gt_dict(gt, self.cat_ids, self.class_names["det"])
