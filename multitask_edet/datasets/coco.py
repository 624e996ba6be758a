"""COCO adapter: instances JSON + image folder → boxes and/or semantic masks (paper §5.1, §5.2).

Detection: category ids (1..90 with gaps on COCO) map to contiguous labels 0..C-1 and back
through ``cat_ids``; crowd objects become ``ignore=True`` boxes (anchors matched to them are
neither positive nor negative); boxes smaller than ``min_box_size`` (zero width/height) are
dropped and counted in the log; images without objects are kept unless ``drop_empty``.

Segmentation ("COCO semantic"): instance polygons and RLEs (compressed or not) are
rasterised with pycocotools.mask into one class-index mask per image, background 0 and
class c at c+1. Overlaps are resolved deterministically: objects are painted in order of
decreasing pixel area (ties: annotation id), so a smaller object lying on a larger one
keeps its pixels. Crowd regions are painted 255 (ignore) *before* the objects, so an
instance annotated inside a crowd keeps its label; ``seg_crowd="class"`` paints them with
their class instead. ``voc_classes=True`` keeps only the 20 VOC classes (the usual COCO→VOC
pre-training): other objects are painted as background and their boxes dropped.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from ..errors import ConfigError, DatasetError
from .dataset import AnnotatedDataset, PackedRecords
from .io import IGNORE_INDEX, exif_hint, read_image, read_json
from .voc import VOC_CLASSES

log = logging.getLogger(__name__)

#: COCO 2017's 80 categories: native id → name (ids 1..90 with gaps)
COCO_CLASSES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}  # fmt: skip

#: VOC class name → COCO category name (the 20 VOC classes are a subset of COCO's 80)
VOC_TO_COCO_NAME = {
    "aeroplane": "airplane", "bicycle": "bicycle", "bird": "bird", "boat": "boat",
    "bottle": "bottle", "bus": "bus", "car": "car", "cat": "cat", "chair": "chair",
    "cow": "cow", "diningtable": "dining table", "dog": "dog", "horse": "horse",
    "motorbike": "motorcycle", "person": "person", "pottedplant": "potted plant",
    "sheep": "sheep", "sofa": "couch", "train": "train", "tvmonitor": "tv",
}  # fmt: skip

CROWD_MODES = ("ignore", "drop")
SEG_CROWD_MODES = ("ignore", "class")


class CocoDataset(AnnotatedDataset):
    ANNOTATIONS = {"det": "boxes", "seg": "mask"}

    def __init__(
        self,
        ann_file: str | Path,
        img_dir: str | Path,
        annotations: str | Sequence[str] = ("det",),
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        name: str = "coco",
        drop_empty: bool = False,
        min_box_size: float = 1.0,
        crowd: str = "ignore",
        seg_crowd: str = "ignore",
        voc_classes: bool = False,
        box_tolerance: float = 1.0,
        on_error: str = "raise",
        seed: int = 0,
    ):
        """
        Args:
            drop_empty: drop images without a usable (non-crowd) box — for detection training
                only; ignored when the "seg" masks are loaded (an all-background mask is data).
            min_box_size: boxes narrower or lower than this (pixels) are dropped and counted.
            crowd: "ignore" keeps crowd boxes with ``ignore=True``; "drop" removes them.
            seg_crowd: "ignore" paints crowd regions 255; "class" paints them with their class.
            voc_classes: keep the 20 VOC classes only (class names and order of VOC).
            box_tolerance: pixels a box may exceed its image before it is an error.
        """
        super().__init__(name=name, annotations=annotations, transform=transform, on_error=on_error, seed=seed)
        if crowd not in CROWD_MODES:
            raise ConfigError(f"crowd={crowd!r}; valid values: {', '.join(CROWD_MODES)}")
        if seg_crowd not in SEG_CROWD_MODES:
            raise ConfigError(f"seg_crowd={seg_crowd!r}; valid values: {', '.join(SEG_CROWD_MODES)}")
        self.ann_file = Path(ann_file)
        self.img_dir = Path(img_dir)
        if not self.img_dir.is_dir():
            raise DatasetError(f"image folder {self.img_dir} (for {self.ann_file}) does not exist")
        self.min_box_size = float(min_box_size)
        self.crowd = crowd
        self.seg_crowd = seg_crowd
        self.voc_classes = voc_classes
        self.box_tolerance = float(box_tolerance)

        data = read_json(self.ann_file)
        self._validate_top_level(data)
        self._categories = {int(c["id"]): c for c in data["categories"]}
        self._set_classes()
        #: entries left out because they cannot belong to one image (file + reason each)
        self.problems: list[dict[str, str]] = []
        valid_images, valid_anns = self._screen_entries(data, on_error)
        images = sorted(valid_images, key=lambda im: im["id"])
        anns: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for ann in valid_anns:
            anns[ann.get("image_id")].append(ann)
        self._log_small_boxes(anns)
        if drop_empty and "seg" not in self.annotations:
            images = [im for im in images if self._has_usable_box(anns.get(im["id"], ()))]
        self.image_ids = [int(im["id"]) for im in images]
        # (image entry, its annotations) per index, packed: see PackedRecords
        self._records = PackedRecords([(im, anns.get(im["id"], [])) for im in images])

    # ----------------------------------------------------------------- setup
    def _validate_top_level(self, d: Any) -> None:
        if not isinstance(d, dict) or not isinstance(d.get("images"), list):
            raise DatasetError(f"annotation file {self.ann_file} has no 'images' list; is it a COCO instances file?")
        if not isinstance(d.get("categories"), list):
            raise DatasetError(f"annotation file {self.ann_file} has no 'categories' list")
        if not isinstance(d.get("annotations", []), list):
            raise DatasetError(f"annotation file {self.ann_file}: 'annotations' is not a list")
        for im in d["images"]:
            if not isinstance(im, dict) or not {"id", "file_name", "width", "height"} <= im.keys():
                raise DatasetError(
                    f"annotation file {self.ann_file}: image entry {im!r} lacks one of id, file_name, width, height"
                )
        seen_categories = set()
        for c in d["categories"]:
            if not isinstance(c, dict) or not {"id", "name"} <= c.keys():
                raise DatasetError(f"annotation file {self.ann_file}: category entry {c!r} lacks id or name")
            if not _is_int(c["id"]) or not isinstance(c["name"], str):
                raise DatasetError(f"annotation file {self.ann_file}: category entry {c!r} needs an integer "
                                   "'id' and a text 'name'")
            if c["id"] in seen_categories:
                raise DatasetError(f"annotation file {self.ann_file}: category id {c['id']} is listed twice")
            seen_categories.add(c["id"])

    def _screen_entries(self, d: dict[str, Any], on_error: str) -> tuple[list[dict], list[dict]]:
        """Image entries with a unique integer id, and annotations that point at one of them.

        An image id used twice makes its annotations ambiguous; an annotation whose image_id
        names no image belongs to nothing. Under ``on_error="raise"`` either stops the dataset
        with the first problem; under "skip" the entries are left out and listed in
        ``self.problems`` (and the log). Field values of valid entries are checked per sample.
        """
        where = f"annotation file {self.ann_file}"
        counts: dict[Any, int] = defaultdict(int)
        for im in d["images"]:
            if _is_int(im["id"]):
                counts[im["id"]] += 1
        images = []
        for im in d["images"]:
            if not _is_int(im["id"]):
                self._problem(f"{where}: image entry {im.get('file_name')!r} has id {im['id']!r}; ids must be integers")
            elif counts[im["id"]] > 1:
                self._problem(f"{where}: image id {im['id']} is used by {counts[im['id']]} image entries "
                              f"({im.get('file_name')!r} is one); image ids must be unique")
            else:
                images.append(im)
        known = {im["id"] for im in images}
        anns = []
        for k, ann in enumerate(d.get("annotations", [])):
            if not isinstance(ann, dict):
                self._problem(f"{where}: annotation #{k} is {ann!r}, not an object")
                continue
            image_id = ann.get("image_id")
            if _is_int(image_id) and image_id in known:
                anns.append(ann)
            elif not (_is_int(image_id) and counts.get(image_id, 0) > 1):  # duplicates are reported above
                self._problem(f"{where}: annotation {ann.get('id')!r} has image_id {image_id!r}, which is not the "
                              "id of any image entry")
        if self.problems and on_error == "raise":
            more = f" (and {len(self.problems) - 1} more such problem(s))" if len(self.problems) > 1 else ""
            raise DatasetError(self.problems[0]["reason"] + more + "; fix the file, or pass --on-error skip to leave "
                               "these entries out")
        for p in self.problems:
            log.warning("%s (left out)", p["reason"])
        return images, anns

    def _problem(self, reason: str) -> None:
        self.problems.append({"file": str(self.ann_file), "reason": reason})

    def _set_classes(self) -> None:
        if self.voc_classes:
            by_name = {c["name"]: cid for cid, c in self._categories.items()}
            missing = [v for v, c in VOC_TO_COCO_NAME.items() if c not in by_name]
            if missing:
                raise DatasetError(
                    f"voc_classes=True but {self.ann_file} lacks the COCO categories for {missing}; "
                    "it needs COCO's category names (airplane, bicycle, ..., tv)"
                )
            self.cat_ids = [by_name[VOC_TO_COCO_NAME[v]] for v in VOC_CLASSES]
            names = list(VOC_CLASSES)
        else:
            self.cat_ids = sorted(self._categories)
            names = [self._categories[c]["name"] for c in self.cat_ids]
        # native id → contiguous label; valid categories outside the kept set → None (background)
        self._label_of: dict[int, int | None] = {cid: None for cid in self._categories}
        self._label_of.update({cid: i for i, cid in enumerate(self.cat_ids)})
        self.class_names = {"det": names, "seg": ["background", *names]}

    def _is_small(self, ann: dict[str, Any]) -> bool:
        bbox = ann.get("bbox")
        # a malformed box is not "small": it is reported when its image is loaded
        return _is_box(bbox) and (bbox[2] < self.min_box_size or bbox[3] < self.min_box_size)

    def _log_small_boxes(self, anns: dict[int, list[dict[str, Any]]]) -> None:
        if "det" not in self.annotations:
            return
        n = sum(self._is_small(a) for image_anns in anns.values() for a in image_anns)
        if n:
            log.info("%s: dropped %d boxes narrower or lower than %g px", self.ann_file, n, self.min_box_size)

    def _has_usable_box(self, anns) -> bool:
        return any(
            not a.get("iscrowd", 0) and not self._is_small(a) and _is_int(a.get("category_id"))
            and self._label_of.get(a.get("category_id")) is not None
            for a in anns
        )

    # ----------------------------------------------------------------- samples
    def file_name(self, index: int) -> str:
        return str(self.img_dir / self._records[index][0]["file_name"])

    def _load(self, index: int) -> dict[str, Any]:
        info, anns = self._records[index]
        self._check_image_entry(info)
        path = self.img_dir / info["file_name"]
        image = read_image(path)
        h, w = image.shape[:2]
        if (h, w) != (int(info["height"]), int(info["width"])):
            raise DatasetError(
                f"image {path} is {w}x{h} but {self.ann_file} says {info['width']}x{info['height']} "
                f"(image id {info['id']}); fix the JSON or the image"
                + exif_hint(path, (int(info["height"]), int(info["width"])))
            )
        sample: dict[str, Any] = {
            "image": image,
            "image_id": int(info["id"]),
            "file_name": str(path),
            "orig_size": (h, w),
            "dataset": self.name,
        }
        for ann in anns:
            self._check_annotation(ann, info)
        if "det" in self.annotations:
            sample["det"] = self._det_targets(anns, h, w)
        if "seg" in self.annotations:
            sample["seg"] = self._rasterise(anns, info)
        return sample

    def _check_image_entry(self, info: dict[str, Any]) -> None:
        problem = self._image_problem(info)
        if problem:
            raise DatasetError(problem)

    def _image_problem(self, info: dict[str, Any]) -> str | None:
        """What is wrong with an image entry's fields (None: nothing)."""
        where = f"{self.ann_file}: image entry id {info.get('id')!r}"
        if not isinstance(info.get("file_name"), str) or not info["file_name"]:
            return f"{where} has file_name {info.get('file_name')!r}; expected the image's file name"
        for key in ("width", "height"):
            v = info.get(key)
            if not _is_number(v) or not float(v).is_integer() or v <= 0:
                return f"{where} ({info['file_name']}) has {key} {v!r}; expected a positive whole number of pixels"
        return None

    def _check_annotation(self, ann: dict[str, Any], info: dict[str, Any]) -> None:
        problem = self._annotation_problem(ann, info)
        if problem:
            raise DatasetError(problem)

    def _annotation_problem(self, ann: dict[str, Any], info: dict[str, Any]) -> str | None:
        """What is wrong with an annotation's fields (None: nothing). NaN and inf fail every check."""
        where = f"{self.ann_file}: annotation {ann.get('id')} of image {info['file_name']}"
        cat = ann.get("category_id")
        if not _is_int(cat) or cat not in self._categories:
            return (f"{where} has category_id {cat!r}, which is not among the file's "
                    f"categories {sorted(self._categories)}")
        bbox = ann.get("bbox")
        if not _is_box(bbox):
            return f"{where} has bbox {bbox!r}; expected [x, y, width, height], four finite numbers"
        x, y, bw, bh = bbox
        W, H, t = float(info["width"]), float(info["height"]), self.box_tolerance
        if bw < 0 or bh < 0 or x < -t or y < -t or x + bw > W + t or y + bh > H + t:
            return f"{where} has box [x, y, w, h] = {list(bbox)} outside its {info['width']}x{info['height']} image"
        if ann.get("iscrowd", 0) not in (0, 1):
            return f"{where} has iscrowd {ann.get('iscrowd')!r}; expected 0 or 1"
        if "area" in ann and (not _is_number(ann["area"]) or ann["area"] < 0):
            return f"{where} has area {ann['area']!r}; expected a finite number >= 0"
        return None

    def _det_targets(self, anns: list[dict[str, Any]], h: int, w: int) -> dict[str, np.ndarray]:
        boxes, labels, ignore = [], [], []
        for ann in anns:
            label = self._label_of[ann["category_id"]]
            crowd = bool(ann.get("iscrowd", 0))
            if label is None or self._is_small(ann) or (crowd and self.crowd == "drop"):
                continue
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            boxes.append([max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)])
            labels.append(label)
            ignore.append(crowd)
        return {
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, dtype=np.int64),
            "ignore": np.asarray(ignore, dtype=bool),
        }

    def _rle(self, ann: dict[str, Any], info: dict[str, Any]):
        """The annotation's region as one RLE, or None when it has no area."""
        h, w = int(info["height"]), int(info["width"])
        seg = ann.get("segmentation")
        where = f"{self.ann_file}: annotation {ann.get('id')} of image {info['file_name']}"
        try:
            if isinstance(seg, list):
                # Parts with fewer than 3 points have no area (and pycocotools would read a
                # 4-number part as a box); odd lengths are malformed.
                if any(not isinstance(p, list) or len(p) % 2 for p in seg):
                    raise DatasetError(f"{where}: a polygon has an odd number of coordinates")
                if not all(_is_number(v) for p in seg for v in p):
                    raise DatasetError(f"{where}: segmentation holds a coordinate that is not a finite number")
                parts = [p for p in seg if len(p) >= 6]
                if not parts:
                    return None
                return mask_utils.merge(mask_utils.frPyObjects(parts, h, w))
            if isinstance(seg, dict) and "counts" in seg and "size" in seg:
                if list(seg["size"]) != [h, w]:
                    raise DatasetError(f"{where}: RLE size {seg['size']} differs from the image's [{h}, {w}]")
                if isinstance(seg["counts"], list):  # uncompressed RLE (crowd objects)
                    return mask_utils.frPyObjects(seg, h, w)
                counts = seg["counts"]
                return {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
        except DatasetError:
            raise
        except (TypeError, ValueError, OverflowError) as e:
            raise DatasetError(f"{where}: unreadable segmentation ({e})") from None
        raise DatasetError(f"{where}: segmentation {str(seg)[:80]!r} is neither polygons nor RLE")

    def _rasterise(self, anns: list[dict[str, Any]], info: dict[str, Any]) -> np.ndarray:
        h, w = int(info["height"]), int(info["width"])
        mask = np.zeros((h, w), dtype=np.uint8)
        crowds, objects = [], []
        for ann in anns:
            rle = self._rle(ann, info)
            if rle is None:
                continue
            label = self._label_of[ann["category_id"]]
            value = 0 if label is None else label + 1
            if ann.get("iscrowd", 0) and self.seg_crowd == "ignore":
                crowds.append(rle)
            else:
                objects.append((-float(mask_utils.area(rle)), ann.get("id", 0), value, rle))
        for rle in crowds:
            mask[mask_utils.decode(rle).astype(bool)] = IGNORE_INDEX
        for _, _, value, rle in sorted(objects, key=lambda o: (o[0], o[1])):
            mask[mask_utils.decode(rle).astype(bool)] = value
        return mask

    # ----------------------------------------------------------------- GT
    def _box_gt_dict(self, annotation: str) -> dict[str, Any]:
        keep_imgs = set(self.image_ids)
        keep_cats = set(self.cat_ids)
        data = read_json(self.ann_file)  # re-read: the dataset keeps only a packed copy
        # entries that fail validation never reach pycocotools (a NaN box would score as a match);
        # their images fail to load too, so they are reported (raise) or skipped (skip)
        images = {im["id"]: im for im in data["images"] if _is_int(im["id"]) and im["id"] in keep_imgs
                  and self._image_problem(im) is None}
        data["images"] = list(images.values())
        data["categories"] = [c for c in data["categories"] if c["id"] in keep_cats]
        data["annotations"] = [
            a
            for a in data.get("annotations", [])
            if isinstance(a, dict) and _is_int(a.get("image_id")) and a["image_id"] in images
            and _is_int(a.get("category_id")) and a["category_id"] in keep_cats
            and self._annotation_problem(a, images[a["image_id"]]) is None
        ]
        return data


# --------------------------------------------------------------------- field checks
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite int or float (JSON's NaN and Infinity, and booleans, are not)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_box(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 4 and all(_is_number(x) for x in v)


# --------------------------------------------------------------------- builders
def _fill_split(path: str | Path, split: str, root: Path | None) -> Path:
    p = Path(str(path).replace("{split}", split))
    return root / p if root is not None and not p.is_absolute() else p


def build_coco(
    root: str | Path,
    split: str = "train",
    annotations: str | Sequence[str] = ("det",),
    transform: Callable[..., dict[str, Any]] | None = None,
    *,
    ann_file: str | Path | None = None,
    img_dir: str | Path | None = None,
    year: str = "2017",
    name: str = "coco",
    **options: Any,
) -> CocoDataset:
    """COCO 2017 from ``root`` (``annotations/instances_{split}2017.json`` + ``{split}2017/``).

    ``root`` may be the COCO folder itself or a data root holding ``coco/``. ``ann_file`` and
    ``img_dir`` override the layout (relative paths are resolved against ``root``; the text
    ``{split}`` in them is replaced by the split).
    """
    root = Path(root)
    if ann_file is not None:
        ann = _fill_split(ann_file, split, root)
        if img_dir is None:
            raise ConfigError(f"ann_file={ann_file!r} given without img_dir; pass the folder of its images too")
        return CocoDataset(ann, _fill_split(img_dir, split, root), annotations, transform, name=name, **options)
    tag = split if split[-4:].isdigit() else f"{split}{year}"
    looked = []
    for base in (root, root / "coco", root / "COCO"):
        ann = base / "annotations" / f"instances_{tag}.json"
        looked.append(str(ann))
        if ann.is_file():
            return CocoDataset(ann, base / (img_dir or tag), annotations, transform, name=name, **options)
    raise DatasetError(
        f"COCO split {split!r} not found: looked for {', '.join(looked)}. Point --data-root (or the "
        "MTEDET_DATA environment variable) at the folder that holds annotations/ and "
        f"{tag}/ (or coco/), or pass ann_file= and img_dir="
    )


def build_coco_format(
    root: str | Path | None,
    split: str = "train",
    annotations: str | Sequence[str] = ("det",),
    transform: Callable[..., dict[str, Any]] | None = None,
    *,
    ann_file: str | Path | None = None,
    img_dir: str | Path | None = None,
    name: str = "coco-format",
    **options: Any,
) -> CocoDataset:
    """Any dataset in COCO format: ``ann_file`` + ``img_dir`` (``{split}`` is substituted)."""
    if ann_file is None or img_dir is None:
        raise ConfigError(
            "dataset 'coco-format' needs ann_file= and img_dir= (e.g. ann_file='annotations/{split}.json', "
            "img_dir='images/{split}')"
        )
    base = Path(root) if root is not None else None
    return CocoDataset(
        _fill_split(ann_file, split, base), _fill_split(img_dir, split, base), annotations, transform, name=name, **options
    )
