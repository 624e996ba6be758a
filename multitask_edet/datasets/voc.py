"""Pascal VOC adapters: detection (VOC 2007, 2012, 07+12) and segmentation (2012, SBD train_aug).

Layout: ``VOCdevkit/VOC{year}/{JPEGImages, Annotations, SegmentationClass,
ImageSets/{Main,Segmentation}}``. XML boxes are 1-based inclusive pixel indices and become
0-based continuous xyxy as (xmin - 1, ymin - 1, xmax, ymax). ``difficult`` objects are
kept as a flag: in training they are ``ignore=True`` boxes by default (or dropped, or kept
as normal boxes), and ``box_gt()`` marks them ``iscrowd=1, ignore=1`` so COCOeval does not
count them, as the VOC protocol does.

Segmentation masks are palette PNGs whose palette index is the class (0 background, 1..20,
255 void). ``train_aug`` (paper §5.2, the standard VOC segmentation protocol) is
VOC 2012 seg train ∪ SBD (train + val) minus VOC 2012 seg val — 10,582 images on the full
data. SBD masks come from ``cls/*.mat`` (GTcls.Segmentation) or from a pre-converted
``SegmentationClassAug/*.png`` folder; an image that has an official VOC mask uses it
(it carries the 255 void borders SBD lacks).

With annotations ("det", "seg") the Segmentation lists are read and an image that also has an
XML yields boxes and mask; one without an XML yields only its mask and is left out of
``box_gt()``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, DatasetError
from .dataset import AnnotatedDataset, select_annotations
from .io import check_mask, exif_hint, image_size, read_image, read_mask, read_sbd_mat, read_split_list, read_xml

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

DIFFICULT_MODES = ("ignore", "drop", "keep")
TRAIN_AUG = ("train_aug", "trainaug")


@dataclasses.dataclass(frozen=True)
class VocItem:
    """One image of a split: where its files are and which list named it."""

    id: str
    image: Path
    list_file: Path
    xml: Path | None = None
    mask: Path | None = None


class VocDataset(AnnotatedDataset):
    ANNOTATIONS = {"det": "boxes", "seg": "mask"}

    def __init__(
        self,
        items: Sequence[VocItem],
        annotations: str | Sequence[str] = ("det",),
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        name: str = "voc2012",
        classes: Sequence[str] = VOC_CLASSES,
        difficult: str = "ignore",
        drop_empty: bool = False,
        box_tolerance: float = 1.0,
        on_error: str = "raise",
        seed: int = 0,
    ):
        """
        Args:
            items: the split's images (see ``voc_items``).
            classes: object class names in label order (default VOC's 20); seg adds background.
            difficult: training treatment of difficult objects: "ignore" (ignore=True box),
                "drop", or "keep" (a normal box). box_gt() always marks them ignored.
            drop_empty: drop images without a non-ignored box (detection only; parses every XML).
            box_tolerance: pixels a box may exceed its image before it is an error.
        """
        super().__init__(name=name, annotations=annotations, transform=transform, on_error=on_error, seed=seed)
        if difficult not in DIFFICULT_MODES:
            raise ConfigError(f"difficult={difficult!r}; valid values: {', '.join(DIFFICULT_MODES)}")
        self.items = list(items)
        self.classes = tuple(classes)
        self._label_of = {c: i for i, c in enumerate(self.classes)}
        self.class_names = {"det": list(self.classes), "seg": ["background", *self.classes]}
        self.cat_ids = list(range(1, len(self.classes) + 1))
        self.difficult = difficult
        self.box_tolerance = float(box_tolerance)
        self._xml_cache: dict[int, dict[str, Any]] = {}
        if drop_empty and "seg" not in self.annotations:
            self.items = [it for i, it in enumerate(self.items) if self._has_usable_box(i)]
            self._xml_cache.clear()
        self.image_ids = list(range(len(self.items)))

    # ----------------------------------------------------------------- XML
    def _parse_xml(self, index: int) -> dict[str, Any]:
        """{"size": (H, W) | None, "objects": [(label, x0, y0, x1, y1, difficult)]}, validated."""
        if index in self._xml_cache:
            return self._xml_cache[index]
        path = self.items[index].xml
        root = read_xml(path)
        size = None
        s = root.find("size")
        if s is not None and s.findtext("width") and s.findtext("height"):
            try:
                size = (int(float(s.findtext("height"))), int(float(s.findtext("width"))))
            except (ValueError, OverflowError):  # "abc", nan, inf
                raise DatasetError(f"annotation file {path}: <size> <width>{s.findtext('width')}</width> "
                                   f"<height>{s.findtext('height')}</height> is not a pair of whole numbers") from None
        objects = []
        for k, obj in enumerate(root.iter("object")):
            name = (obj.findtext("name") or "").strip()
            if name not in self._label_of:
                raise DatasetError(
                    f"annotation file {path}: object {k} has class {name!r}, not one of {list(self.classes)}"
                )
            bb = obj.find("bndbox")
            try:
                xmin, ymin, xmax, ymax = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                raise DatasetError(f"annotation file {path}: object {k} ({name}) has no valid <bndbox>") from None
            for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (xmin, ymin, xmax, ymax)):
                if not math.isfinite(v):  # float() reads "nan" and "inf", and NaN passes every range check
                    raise DatasetError(f"annotation file {path}: object {k} ({name}) has <{tag}>{bb.findtext(tag)}"
                                       f"</{tag}>; expected a finite pixel coordinate")
            if xmax < xmin or ymax < ymin:
                raise DatasetError(
                    f"annotation file {path}: object {k} ({name}) has box xmin={xmin} ymin={ymin} "
                    f"xmax={xmax} ymax={ymax} with max < min"
                )
            diff = (obj.findtext("difficult") or "0").strip() in ("1", "true", "True")
            # 1-based inclusive pixel indices → 0-based continuous coordinates
            objects.append((self._label_of[name], xmin - 1.0, ymin - 1.0, xmax, ymax, diff))
        parsed = {"size": size, "objects": objects}
        self._xml_cache[index] = parsed
        return parsed

    def _objects(self, index: int, hw: tuple[int, int]) -> list[tuple]:
        """The XML's objects, checked against the image size ``hw`` and clipped to it."""
        parsed = self._parse_xml(index)
        path = self.items[index].xml
        if parsed["size"] is not None and parsed["size"] != tuple(hw):
            raise DatasetError(
                f"annotation file {path} gives size {parsed['size'][1]}x{parsed['size'][0]} (WxH) but image "
                f"{self.items[index].image} is {hw[1]}x{hw[0]}" + exif_hint(self.items[index].image, parsed["size"])
            )
        h, w = hw
        t = self.box_tolerance
        out = []
        for label, x0, y0, x1, y1, diff in parsed["objects"]:
            if x0 < -t or y0 < -t or x1 > w + t or y1 > h + t:
                raise DatasetError(
                    f"annotation file {path}: {self.classes[label]} box (xmin, ymin, xmax, ymax) = "
                    f"({x0 + 1:g}, {y0 + 1:g}, {x1:g}, {y1:g}) lies outside its {w}x{h} image"
                )
            out.append((label, max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h)), diff))
        return out

    def _has_usable_box(self, index: int) -> bool:
        if self.items[index].xml is None:
            return False
        try:
            objects = self._parse_xml(index)["objects"]
        except DatasetError:
            return True  # keep it: loading it will report the problem
        return any(not d or self.difficult == "keep" for *_, d in objects)

    # ----------------------------------------------------------------- samples
    def file_name(self, index: int) -> str:
        return str(self.items[index].image)

    def _load(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        if not item.image.is_file():
            raise DatasetError(f"split list {item.list_file} names image {item.id!r}, but {item.image} does not exist")
        image = read_image(item.image)
        hw = image.shape[:2]
        sample: dict[str, Any] = {
            "image": image,
            "image_id": self.image_ids[index],
            "file_name": str(item.image),
            "orig_size": tuple(hw),
            "dataset": self.name,
        }
        if "det" in self.annotations and item.xml is not None:
            sample["det"] = self._det_targets(index, hw)
        if "seg" in self.annotations and item.mask is not None:
            mask = read_sbd_mat(item.mask) if item.mask.suffix == ".mat" else read_mask(item.mask)
            check_mask(mask, len(self.classes) + 1, item.mask, hw, item.image)
            sample["seg"] = mask
        return sample

    def _det_targets(self, index: int, hw: tuple[int, int]) -> dict[str, np.ndarray]:
        objs = self._objects(index, hw)
        if self.difficult == "drop":
            objs = [o for o in objs if not o[5]]
        return {
            "boxes": np.asarray([o[1:5] for o in objs], dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray([o[0] for o in objs], dtype=np.int64),
            "ignore": np.asarray([o[5] and self.difficult == "ignore" for o in objs], dtype=bool),
        }

    # ----------------------------------------------------------------- GT
    def _box_gt_dict(self, annotation: str) -> dict[str, Any]:
        images, anns = [], []
        for i, item in enumerate(self.items):
            if item.xml is None:
                continue  # no detection annotation: not part of the detection GT
            try:
                size = self._parse_xml(i)["size"] or image_size(item.image)
                objects = self._objects(i, size)
            except DatasetError as e:
                if self.on_error == "raise":
                    raise
                # under "skip" the image is left out of the ground truth and of the samples alike
                # (dataset.py: a recorded index is never loaded), so it is neither a miss nor scored
                self.record_skipped(i, str(e))
                continue
            images.append({"id": self.image_ids[i], "file_name": str(item.image), "height": size[0], "width": size[1]})
            for label, x0, y0, x1, y1, diff in objects:
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": self.image_ids[i],
                        "category_id": self.cat_ids[label],
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": int(diff),
                        "ignore": int(diff),
                    }
                )
        categories = [{"id": cid, "name": n} for cid, n in zip(self.cat_ids, self.classes)]
        return {"images": images, "annotations": anns, "categories": categories}


# --------------------------------------------------------------------- locating files
def _where_hint() -> str:
    return "Point --data-root (or the MTEDET_DATA environment variable) at the folder that contains VOCdevkit/"


def find_voc_dir(root: str | Path, year: str) -> Path:
    """``root``/VOCdevkit/VOC{year}, ``root``/VOC{year}, or ``root`` itself."""
    root = Path(root)
    candidates = [root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root]
    for c in candidates:
        if (c / "JPEGImages").is_dir() and (c / "ImageSets").is_dir():
            return c
    raise DatasetError(
        f"VOC{year} not found: looked in {', '.join(map(str, candidates))} for JPEGImages/ and ImageSets/. "
        + _where_hint()
    )


def _list_file(voc_dir: Path, kind: str, split: str) -> Path:
    path = voc_dir / "ImageSets" / kind / f"{split}.txt"
    if not path.is_file():
        folder = path.parent
        have = sorted(p.stem for p in folder.glob("*.txt") if "_" not in p.stem) if folder.is_dir() else []
        raise DatasetError(
            f"split list {path} does not exist; splits available in {folder}: {have or 'none'}"
        )
    return path


def _items_from_list(voc_dir: Path, list_file: Path, annotations: Sequence[str], seg_list: bool) -> list[VocItem]:
    items = []
    for id_ in read_split_list(list_file):
        xml = voc_dir / "Annotations" / f"{id_}.xml"
        if seg_list:  # joint: boxes where an XML exists
            xml = xml if ("det" in annotations and xml.is_file()) else None
        mask = voc_dir / "SegmentationClass" / f"{id_}.png" if "seg" in annotations else None
        items.append(VocItem(id_, voc_dir / "JPEGImages" / f"{id_}.jpg", list_file, xml, mask))
    return items


def find_sbd_dir(root: Path, voc_dir: Path, sbd_root: str | Path | None = None) -> Path:
    """A folder with SBD's ``cls/`` (+ train.txt/val.txt) or ``SegmentationClassAug/`` (+ train_aug.txt)."""
    if sbd_root is not None:
        candidates = [Path(sbd_root), Path(sbd_root) / "dataset"]
    else:
        candidates = [
            root / "SBD", root / "sbd", root / "benchmark_RELEASE" / "dataset",
            root / "SBD" / "benchmark_RELEASE" / "dataset", root / "SBD" / "dataset", voc_dir,
        ]  # fmt: skip
    for c in candidates:
        if (c / "cls").is_dir() or (c / "SegmentationClassAug").is_dir():
            return c
    raise DatasetError(
        "split 'train_aug' needs SBD (the Semantic Boundaries Dataset): looked for cls/ or "
        f"SegmentationClassAug/ in {', '.join(map(str, candidates))}. Put SBD's benchmark_RELEASE/dataset "
        "there (or pass sbd_root=...), or train on split 'train'"
    )


def sbd_ids(sbd_dir: Path, voc_dir: Path) -> tuple[list[str], Path]:
    """SBD's image ids (its train + val lists, else a train_aug.txt) and the list they came from."""
    lists = [sbd_dir / "train.txt", sbd_dir / "val.txt"]
    if any(p.is_file() for p in lists):
        ids = [i for p in lists if p.is_file() for i in read_split_list(p)]
        return ids, sbd_dir / "train.txt"
    for p in (sbd_dir / "train_aug.txt", voc_dir / "ImageSets" / "Segmentation" / "train_aug.txt"):
        if p.is_file():
            return read_split_list(p), p
    raise DatasetError(
        f"SBD at {sbd_dir} has no image list: expected train.txt/val.txt (SBD release) or train_aug.txt "
        f"(there or in {voc_dir / 'ImageSets' / 'Segmentation'})"
    )


def train_aug_items(
    root: Path, voc_dir: Path, annotations: Sequence[str], sbd_root: str | Path | None = None
) -> list[VocItem]:
    """VOC seg train ∪ SBD (train + val) − VOC seg val, sorted by id."""
    sbd = find_sbd_dir(root, voc_dir, sbd_root)
    extra, sbd_list = sbd_ids(sbd, voc_dir)
    train_list = _list_file(voc_dir, "Segmentation", "train")
    val = set(read_split_list(_list_file(voc_dir, "Segmentation", "val")))
    train = set(read_split_list(train_list))
    items = []
    for id_ in sorted((train | set(extra)) - val):
        image = voc_dir / "JPEGImages" / f"{id_}.jpg"
        if not image.is_file() and (sbd / "img" / f"{id_}.jpg").is_file():
            image = sbd / "img" / f"{id_}.jpg"
        xml = voc_dir / "Annotations" / f"{id_}.xml"
        xml = xml if ("det" in annotations and xml.is_file()) else None
        mask = None
        if "seg" in annotations:
            for cand in (
                voc_dir / "SegmentationClass" / f"{id_}.png",
                sbd / "SegmentationClassAug" / f"{id_}.png",
                voc_dir / "SegmentationClassAug" / f"{id_}.png",
                sbd / "cls" / f"{id_}.mat",
            ):
                if cand.is_file():
                    mask = cand
                    break
            else:
                mask = sbd / "cls" / f"{id_}.mat"  # missing: loading it names the file
        items.append(VocItem(id_, image, train_list if id_ in train else sbd_list, xml, mask))
    return items


def voc_items(
    root: str | Path, year: str, split: str, annotations: Sequence[str], sbd_root: str | Path | None = None
) -> list[VocItem]:
    """The split's items: Main lists for detection only, Segmentation lists when seg is asked."""
    root = Path(root)
    voc_dir = find_voc_dir(root, year)
    if split in TRAIN_AUG:
        if "seg" not in annotations:
            raise ConfigError("split 'train_aug' is a segmentation split; ask for the 'seg' masks or use 'trainval'")
        return train_aug_items(root, voc_dir, annotations, sbd_root)
    if "seg" in annotations:
        return _items_from_list(voc_dir, _list_file(voc_dir, "Segmentation", split), annotations, seg_list=True)
    return _items_from_list(voc_dir, _list_file(voc_dir, "Main", split), annotations, seg_list=False)


# --------------------------------------------------------------------- builders
def voc2012_train_split(root: Path, annotations: Sequence[str], options: dict[str, Any]) -> str:
    """``train_aug`` for segmentation when SBD is found (paper §5.2, standard VOC practice), else ``train``."""
    if "seg" in annotations:
        try:
            find_sbd_dir(root, find_voc_dir(root, "2012"), options.get("sbd_root"))
            return "train_aug"
        except DatasetError:
            log.info("SBD not found under %s: training segmentation on VOC 2012 'train' (not train_aug)", root)
    return "train"


def build_voc(
    root: str | Path,
    split: str = "train",
    annotations: str | Sequence[str] = ("det",),
    transform: Callable[..., dict[str, Any]] | None = None,
    *,
    year: str = "2012",
    name: str | None = None,
    sbd_root: str | Path | None = None,
    **options: Any,
) -> VocDataset:
    name = name or f"voc{year}"
    a = tuple(select_annotations(annotations, VocDataset.ANNOTATIONS, name))
    items = voc_items(root, year, split, a, sbd_root)
    return VocDataset(items, a, transform, name=name, **options)


def build_voc2012(
    root: str | Path,
    split: str = "train",
    annotations: str | Sequence[str] = ("det",),
    transform: Callable[..., dict[str, Any]] | None = None,
    *,
    sbd_root: str | Path | None = None,
    **options: Any,
) -> VocDataset:
    """VOC 2012: Main lists for detection; Segmentation lists (and ``train_aug``) for seg."""
    return build_voc(root, split, annotations, transform, year="2012", sbd_root=sbd_root, **options)


def build_voc2007(
    root: str | Path,
    split: str = "trainval",
    annotations: str | Sequence[str] = ("det",),
    transform: Callable[..., dict[str, Any]] | None = None,
    **options: Any,
) -> VocDataset:
    """VOC 2007 (the detection benchmark's ``test`` split is 2007's)."""
    return build_voc(root, split, annotations, transform, year="2007", **options)


def build_voc0712(
    root: str | Path,
    split: str = "trainval",
    annotations: str | Sequence[str] = ("det",),
    transform: Callable[..., dict[str, Any]] | None = None,
    **options: Any,
) -> VocDataset:
    """VOC 2007 + 2012 detection: ``trainval``/``train``/``val`` join both years; ``test`` is 2007's."""
    a = tuple(select_annotations(annotations, VocDataset.ANNOTATIONS, "voc0712"))
    if "seg" in a:
        raise ConfigError("voc0712 is a detection dataset; use voc2012 (train / train_aug) for segmentation")
    years = ("2007",) if split == "test" else ("2007", "2012")
    items = [it for y in years for it in voc_items(root, y, split, a)]
    return VocDataset(items, a, transform, name="voc0712", **options)
