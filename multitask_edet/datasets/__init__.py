"""Dataset adapters by name: ``build_dataset("voc2012", root, "train_aug", ("seg",))``.

Built-in names: ``coco`` (COCO 2017), ``voc2012``, ``voc2007``, ``voc0712`` (07+12
detection), ``shapes`` (the built-in synthetic sample, generated on first use),
``coco-format`` (any COCO-format dataset: ``ann_file=`` + ``img_dir=``), and the multi-task
datasets ``bdd100k`` (det boxes, drivable and lane masks; released or HybridNets/YOLOP
layout), ``cityscapes`` (19-class seg, boxes of the 8 thing classes) and ``coco-panoptic``
(133-class seg and thing boxes from the panoptic annotations). Each returns a
torch Dataset with ``annotations`` (name → kind), ``class_names``, ``cat_ids``, ``image_ids``,
``box_gt()`` and ``load_sample(i)`` (see dataset.py); its samples follow the schema of base.py.

A user's own adapter plugs in with ``register_dataset(name, builder, adapter=Class)``: the
builder is called as ``builder(root, split, annotations, transform, **options)``.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from ..registry import Registry
from .base import collate, normalize_images
from .bdd100k import Bdd100kDataset
from .cityscapes import CityscapesDataset
from .coco import CocoDataset, build_coco, build_coco_format
from .coco_panoptic import CocoPanopticDataset
from .dataset import AnnotatedDataset
from .sample import build_shapes, write_shapes
from .voc import VOC_CLASSES, VocDataset, build_voc0712, build_voc2007, build_voc2012, voc2012_train_split

DATA_ENV = "MTEDET_DATA"


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    builder: Callable[..., AnnotatedDataset]
    #: the adapter class whose keyword options the builder forwards (for option validation)
    adapter: type | None = None
    #: the training split when none is configured: ``fn(root, annotations, options) -> split``
    default_train_split: Callable[..., str] | None = None
    #: what ``mtedet data check`` loads by default (None = every annotation the adapter supplies)
    check_annotations: tuple[str, ...] | None = None

    def annotations(self) -> tuple[str, ...]:
        """The annotations checked by default: ``check_annotations``, else all the adapter's."""
        if self.check_annotations is not None:
            return self.check_annotations
        return tuple(getattr(self.adapter, "ANNOTATIONS", None) or ("det",))

    def valid_options(self) -> list[str]:
        names = set()
        for fn in (self.builder, self.adapter.__init__ if self.adapter else None):
            if fn is None:
                continue
            for p in inspect.signature(fn).parameters.values():
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                    names.add(p.name)
        return sorted(names - {"self", "root", "split", "annotations", "transform", "items", "name"})

    def accepts_any(self) -> bool:
        """A builder with ``**options`` and no adapter declared takes anything."""
        params = inspect.signature(self.builder).parameters.values()
        return self.adapter is None and any(p.kind is p.VAR_KEYWORD for p in params)


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(
    name: str,
    builder: Callable[..., AnnotatedDataset],
    *,
    adapter: type | None = None,
    default_train_split: Callable[..., str] | None = None,
    check_annotations: Sequence[str] | None = None,
    override: bool = False,
) -> Callable[..., AnnotatedDataset]:
    entry = DatasetEntry(builder, adapter, default_train_split, tuple(check_annotations) if check_annotations else None)
    DATASETS.register(name, entry, override=override)
    return builder


def default_train_split(name: str, root: str | Path | None, annotations: Sequence[str], options: dict[str, Any]) -> str:
    """The dataset's training split when none is configured ("train" unless its adapter says otherwise)."""
    try:
        entry = DATASETS.get(name)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from None
    if entry.default_train_split is None:
        return "train"
    return entry.default_train_split(Path(root) if root is not None else default_data_root(), tuple(annotations), options)


def default_data_root() -> Path:
    """$MTEDET_DATA, else ./data."""
    return Path(os.environ.get(DATA_ENV) or "data")


def build_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    annotations: str | Sequence[str] = ("det",),
    transform: Callable[..., dict[str, Any]] | None = None,
    **options: Any,
) -> AnnotatedDataset:
    """Build a registered dataset.

    Args:
        name: coco | voc2012 | voc2007 | voc0712 | shapes | coco-format | bdd100k | cityscapes |
            coco-panoptic | a registered name.
        root: data root (default ``$MTEDET_DATA``, then ``./data``; shapes: its cache).
        split: train, val, trainval, test, train_aug (voc2012 seg) ...
        annotations: which annotations to load by name ("det", "seg" or both; ``"det,seg"``
            accepted); ``DATASETS.get(name).adapter.ANNOTATIONS`` lists what an adapter supplies.
        transform: ``transforms.train_transforms(...)`` / ``eval_transforms(...)`` or None (raw).
        options: adapter options, e.g. on_error="skip", difficult="drop", voc_classes=True,
            drop_empty=True, ann_file=..., img_dir=...; an unknown one is a ConfigError.
    """
    try:
        entry = DATASETS.get(name)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from None
    if not entry.accepts_any():
        valid = entry.valid_options()
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(
                f"dataset {name!r}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(valid)}"
            )
    if root is None and name != "shapes":
        root = default_data_root()
    return entry.builder(root, split, annotations, transform, **options)


register_dataset("coco", build_coco, adapter=CocoDataset)
register_dataset("coco-format", build_coco_format, adapter=CocoDataset)
register_dataset("voc2012", build_voc2012, adapter=VocDataset, default_train_split=voc2012_train_split)
# the VOC detection benchmark trains on trainval and is checked for boxes
register_dataset("voc2007", build_voc2007, adapter=VocDataset, default_train_split=lambda *a: "trainval",
                 check_annotations=("det",))
register_dataset("shapes", build_shapes, adapter=VocDataset)
register_dataset("voc0712", build_voc0712, adapter=VocDataset, default_train_split=lambda *a: "trainval",
                 check_annotations=("det",))
# the multi-task datasets: the adapter classes are their own builders
register_dataset("bdd100k", Bdd100kDataset, adapter=Bdd100kDataset)
register_dataset("cityscapes", CityscapesDataset, adapter=CityscapesDataset)
register_dataset("coco-panoptic", CocoPanopticDataset, adapter=CocoPanopticDataset)

__all__ = [
    "DATASETS",
    "AnnotatedDataset",
    "Bdd100kDataset",
    "CityscapesDataset",
    "CocoDataset",
    "CocoPanopticDataset",
    "VOC_CLASSES",
    "VocDataset",
    "build_dataset",
    "collate",
    "default_train_split",
    "default_data_root",
    "normalize_images",
    "register_dataset",
    "write_shapes",
]
