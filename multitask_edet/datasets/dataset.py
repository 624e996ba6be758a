"""What every dataset adapter shares: annotation selection, on_error handling, seeding, COCO-format GT.

An adapter (coco.py, voc.py) declares the annotations it can supply (``ANNOTATIONS``: name →
kind, datasets/base.py) and implements ``_load(i)`` — the raw sample of datasets/base.py with
the requested annotations — and ``file_name(i)``; this base class adds the torch ``Dataset``
behaviour:

- ``__getitem__`` = ``load_sample`` + transform, with a per-sample seed derived from
  (seed, epoch, index), so augmentation is reproducible for any number of DataLoader workers
  and a resumed run sees the same crops as an uninterrupted one (call ``set_epoch``).
- ``on_error="skip"``: a sample that raises ``DatasetError`` is replaced by the next valid
  index (deterministic), recorded in ``dataset.skipped`` (file + reason) and on the
  replacement sample (raw key ``skipped``, moved to ``meta["skipped"]`` by the transforms)
  so that a trainer running DataLoader workers can list it too. Never silently dropped.
"""
from __future__ import annotations

import contextlib
import io
import logging
import pickle
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO

from ..errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")


def select_annotations(requested: str | Sequence[str], available: Mapping[str, str], dataset: str) -> dict[str, str]:
    """``"det,seg"`` or a sequence of annotation names → {name: kind} of those ``available`` supplies.

    An annotation the dataset lacks is an error listing what it has.
    """
    names = [t.strip() for t in requested.split(",") if t.strip()] if isinstance(requested, str) else list(requested)
    if not names:
        raise ConfigError(f"dataset {dataset!r}: no annotation requested; it supplies {describe_annotations(available)}")
    missing = [n for n in names if n not in available]
    if missing:
        raise ConfigError(
            f"dataset {dataset!r} has no {', '.join(repr(m) for m in missing)} annotation; it supplies "
            f"{describe_annotations(available)} (a task reads the annotation named by its `source`, by default "
            "its own name: e.g. --set lane.source=seg)"
        )
    return {n: available[n] for n in dict.fromkeys(names)}


def describe_annotations(available: Mapping[str, str]) -> str:
    return ", ".join(f"{n} ({k})" for n, k in available.items())


def coco_from_dict(data: dict[str, Any]) -> COCO:
    """A pycocotools COCO object from an in-memory dataset dict (without its stdout chatter)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class PackedRecords:
    """A list of picklable records stored as one byte buffer.

    Thousands of small Python dicts in a dataset are copied page by page into every forked
    DataLoader worker as reference counts change (copy-on-write); one numpy buffer is not,
    which keeps COCO-sized annotation sets from multiplying memory by the worker count.
    """

    def __init__(self, records: Sequence[Any]):
        blobs = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in records]
        self._offsets = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
        self._buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> Any:
        return pickle.loads(self._buffer[self._offsets[i] : self._offsets[i + 1]].tobytes())


def coco_gt_dict(
    images: Sequence[tuple[dict[str, Any], Mapping[str, np.ndarray]]],
    cat_ids: Sequence[int],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """COCO-format ground truth from per-image box targets (datasets/base.py schema).

    ``images``: (COCO image entry {id, file_name, height, width}, {"boxes" xyxy, "labels",
    "ignore"[, "area"]}). Label k becomes category ``cat_ids[k]``; an ignore box becomes
    ``iscrowd=1, ignore=1`` (COCOeval neither rewards nor penalises detections on it); ``area``
    is the targets' own (e.g. a segment's pixel count) or else the box area.
    """
    anns = []
    for info, t in images:
        boxes = np.asarray(t["boxes"], np.float64).reshape(-1, 4)
        areas = t.get("area")
        for k, ((x0, y0, x1, y1), label, ign) in enumerate(zip(boxes.tolist(), t["labels"].tolist(), t["ignore"].tolist())):
            area = float(areas[k]) if areas is not None else (x1 - x0) * (y1 - y0)
            anns.append({"id": len(anns) + 1, "image_id": info["id"], "category_id": int(cat_ids[label]),
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": area, "iscrowd": int(ign), "ignore": int(ign)})
    categories = [{"id": int(c), "name": n} for c, n in zip(cat_ids, class_names)]
    return {"images": [dict(info) for info, _ in images], "annotations": anns, "categories": categories}


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class AnnotatedDataset(torch.utils.data.Dataset):
    """Base of the adapters. Subclasses set ``ANNOTATIONS``, ``class_names``, ``cat_ids``, ``image_ids``."""

    #: every annotation the adapter can supply: name → kind ("boxes" or "mask")
    ANNOTATIONS: ClassVar[dict[str, str]] = {}
    #: annotation name → class names (boxes: no background; mask: index = class, 0 = background)
    class_names: dict[str, list[str]]
    #: contiguous box label → dataset-native category id (of the box annotation)
    cat_ids: list[int]
    #: per index, the int image id used in samples and in ``box_gt()``
    image_ids: list[int]

    def __init__(
        self,
        *,
        name: str,
        annotations: str | Sequence[str],
        transform: Callable[..., dict[str, Any]] | None = None,
        on_error: str = "raise",
        seed: int = 0,
    ):
        if on_error not in ON_ERROR:
            raise ConfigError(f"on_error={on_error!r}; valid values: {', '.join(ON_ERROR)}")
        self.name = name
        #: the annotations this instance loads: name → kind
        self.annotations = select_annotations(annotations, self.ANNOTATIONS, name)
        self.transform = transform
        self.on_error = on_error
        self.seed = seed
        self.epoch = 0
        self._skipped: dict[int, dict[str, Any]] = {}

    # ----------------------------------------------------------------- subclass API
    def _load(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def file_name(self, index: int) -> str:
        raise NotImplementedError

    def _box_gt_dict(self, annotation: str) -> dict[str, Any]:
        raise NotImplementedError

    # ----------------------------------------------------------------- public API
    def __len__(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, annotations={list(self.annotations)}, images={len(self)})"

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """Samples replaced because of ``on_error="skip"``: dicts of index, file, reason."""
        return [self._skipped[i] for i in sorted(self._skipped)]

    def set_epoch(self, epoch: int) -> None:
        """Changes the augmentation seeds; call before each epoch (non-persistent workers)."""
        self.epoch = int(epoch)

    def load_sample(self, index: int) -> dict[str, Any]:
        """The raw sample (datasets/base.py schema), without transform; errors always raise."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {self!r}")
        return self._load(index % len(self))

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        sample = self._load_or_replace(index)
        if self.transform is not None:
            seed = None if self.seed is None else sample_seed(self.seed, self.epoch, index)
            sample = self.transform(sample, seed=seed)
        return sample

    def gt_per_image(self, read: Callable[[int], Any]) -> list[Any]:
        """``read(i)`` for every index, for building ``box_gt``: under ``on_error="skip"`` an image
        whose annotation fails to read is left out (None; it is not evaluated either), otherwise
        the error propagates."""
        out = []
        for i in range(len(self)):
            try:
                out.append(read(i))
            except DatasetError as e:
                if self.on_error != "skip":
                    raise
                log.warning("ground truth of %s left out: %s", self.file_name(i), e)
                out.append(None)
        return out

    def box_gt(self, annotation: str = "det") -> COCO:
        """pycocotools COCO of the split's ground truth of a box annotation (native category ids)."""
        if self.annotations.get(annotation) != "boxes":
            boxes = [n for n, k in self.annotations.items() if k == "boxes"]
            raise ConfigError(
                f"{self!r} has no box annotation {annotation!r} loaded (box annotations loaded: {boxes or 'none'})"
            )
        return coco_from_dict(self._box_gt_dict(annotation))

    def record_skipped(self, index: int, reason: str) -> dict[str, Any]:
        """Note that sample ``index`` is bad (``on_error="skip"``): it is never loaded, and is listed in ``skipped``."""
        entry = {"index": index, "file": self.file_name(index), "reason": reason}
        if index not in self._skipped:
            log.warning("skipping %s: %s", entry["file"], reason)
        self._skipped[index] = entry
        return entry

    # ----------------------------------------------------------------- internals
    def _load_or_replace(self, index: int) -> dict[str, Any]:
        n = len(self)
        if self.on_error == "raise":
            return self.load_sample(index)
        replaced: list[dict[str, Any]] = []
        for step in range(n):
            j = (index + step) % n
            if j in self._skipped:
                replaced.append(self._skipped[j])
                continue
            try:
                sample = self._load(j)
            except DatasetError as e:
                replaced.append(self.record_skipped(j, str(e)))
                continue
            if replaced:
                sample["skipped"] = replaced
            return sample
        raise DatasetError(f"{self!r}: every sample failed to load; first problem: {replaced[0]['reason']}")
