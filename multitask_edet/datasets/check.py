"""Dataset validation behind ``mtedet data check`` (and training's ``data.on_error``).

``check_dataset`` loads every image and annotation of the chosen splits through the same
adapter training uses, so it finds exactly the problems training would hit — corrupt or
truncated images, unreadable JSON/XML, boxes outside their image, unknown categories,
masks of the wrong size or with out-of-range values, split lists naming missing images —
and reports each with its file instead of stopping at the first. It also summarises the
data: images, objects per class (ignored crowd/difficult objects apart), images without
objects, and the masks' class histogram.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError, DatasetError


@dataclasses.dataclass
class Problem:
    split: str
    file: str
    message: str


@dataclasses.dataclass
class BoxStats:
    #: class → number of objects (not ignored) / ignored (crowd, difficult)
    objects: dict[str, int] = dataclasses.field(default_factory=dict)
    ignored: dict[str, int] = dataclasses.field(default_factory=dict)
    #: images whose annotation has no object (kept: they are negatives)
    empty_images: int = 0


@dataclasses.dataclass
class SplitReport:
    split: str
    images: int = 0
    ok: int = 0
    #: per box annotation: objects per class
    boxes: dict[str, BoxStats] = dataclasses.field(default_factory=dict)
    #: per mask annotation: class name (and "ignore") → pixel count
    mask_pixels: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    problems: list[Problem] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class DataReport:
    dataset: str
    root: str | None
    annotations: tuple[str, ...]
    splits: list[SplitReport]

    @property
    def problems(self) -> list[Problem]:
        return [p for s in self.splits for p in s.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"ok": self.ok}


class _Stats(torch.utils.data.Dataset):
    """Per index: the sample's counts per annotation, or the problem loading it (runs in DataLoader workers)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            s = self.dataset.load_sample(i)
        except DatasetError as e:
            return {"file": self.dataset.file_name(i), "error": str(e)}
        except Exception as e:  # noqa: BLE001 — a check lists problems, it never stops at one
            return {"file": _file_name(self.dataset, i),
                    "error": f"unexpected error while loading it ({type(e).__name__}: {e})"}
        out: dict[str, Any] = {}
        for name, kind in self.dataset.annotations.items():
            if name not in s:
                continue
            if kind == "boxes":
                out[name] = (np.asarray(s[name]["labels"]).tolist(), np.asarray(s[name]["ignore"]).tolist())
            else:
                out[name] = np.bincount(np.asarray(s[name]).ravel(), minlength=256)
        return out


def _identity(x):
    return x


def _file_name(dataset, i: int) -> str:
    try:
        return dataset.file_name(i)
    except Exception:  # noqa: BLE001 — the entry naming the file is what is broken
        return f"sample {i} of {dataset!r}"


def _check_split(name: str, root, split: str, annotations, workers: int, options: dict[str, Any]) -> SplitReport:
    from . import build_dataset

    rep = SplitReport(split)
    try:
        # "skip": entries that belong to no image (a duplicate or unknown image id) are listed
        # in ``ds.problems`` instead of stopping the dataset at the first one
        ds = build_dataset(name, root, split, annotations, **{"on_error": "skip", **options})
    except (DatasetError, ConfigError) as e:
        rep.problems.append(Problem(split, str(root or ""), str(e)))
        return rep
    except Exception as e:  # noqa: BLE001 — never a traceback from `data check`
        rep.problems.append(Problem(split, str(root or ""), f"unexpected error reading the split ({type(e).__name__}: {e})"))
        return rep
    for p in getattr(ds, "problems", []):
        rep.problems.append(Problem(split, p["file"], p["reason"]))
    rep.images = len(ds)
    kinds = ds.annotations
    hists = {a: np.zeros(256, np.int64) for a, k in kinds.items() if k == "mask"}
    rep.boxes = {a: BoxStats() for a, k in kinds.items() if k == "boxes"}
    loader = torch.utils.data.DataLoader(_Stats(ds), batch_size=None, num_workers=workers, collate_fn=_identity)
    for r in loader:
        if "error" in r:
            rep.problems.append(Problem(split, r["file"], r["error"]))
            continue
        rep.ok += 1
        for a, value in r.items():
            if a in hists:
                hists[a] += value
                continue
            stats, names = rep.boxes[a], ds.class_names[a]
            labels, ignore = value
            stats.empty_images += not labels
            for label, ign in zip(labels, ignore):
                counts = stats.ignored if ign else stats.objects
                counts[names[label]] = counts.get(names[label], 0) + 1
    for a, hist in hists.items():
        pixels = {n: int(hist[i]) for i, n in enumerate(ds.class_names[a])}
        rep.mask_pixels[a] = pixels | {"ignore": int(hist[255])}
    for a, stats in rep.boxes.items():
        names = ds.class_names[a]
        stats.objects = {n: stats.objects[n] for n in names if n in stats.objects}
        stats.ignored = {n: stats.ignored[n] for n in names if n in stats.ignored}
    return rep


def check_dataset(
    name: str,
    root: str | Path | None = None,
    splits: str | Sequence[str] = ("train", "val"),
    annotations: str | Sequence[str] = ("det",),
    workers: int = 0,
    **options: Any,
) -> DataReport:
    """Validate every image and annotation of ``splits``; never raises for a data problem."""
    split_list = [splits] if isinstance(splits, str) else list(splits)
    a = tuple(t.strip() for t in annotations.split(",") if t.strip()) if isinstance(annotations, str) else tuple(annotations)
    reports = [_check_split(name, root, s, a, workers, options) for s in split_list]
    return DataReport(name, None if root is None else str(root), a, reports)


def _fmt_counts(counts: dict[str, int], extra: dict[str, int] | None = None) -> str:
    parts = []
    for n, c in counts.items():
        ign = (extra or {}).get(n)
        parts.append(f"{n} {c}" + (f" (+{ign} ignored)" if ign else ""))
    for n, c in (extra or {}).items():
        if n not in counts:
            parts.append(f"{n} 0 (+{c} ignored)")
    return ", ".join(parts) or "none"


def format_report(report: DataReport, max_problems: int = 50) -> str:
    lines = [f"dataset {report.dataset}  root {report.root or '(default)'}  annotations {','.join(report.annotations)}"]
    for s in report.splits:
        lines.append(f"split {s.split}: {s.images} images, {s.ok} ok, {len(s.problems)} with problems")
        for a, stats in s.boxes.items():
            if s.ok:
                lines.append(f"  {a} objects: {_fmt_counts(stats.objects, stats.ignored)}")
                lines.append(f"  {a} images without objects: {stats.empty_images}")
        for a, pixels in s.mask_pixels.items():
            total = sum(pixels.values()) or 1
            hist = ", ".join(f"{n} {100.0 * c / total:.1f}%" for n, c in pixels.items() if c)
            lines.append(f"  {a} mask pixels: {hist}")
    problems = report.problems
    if problems:
        lines.append(f"problems ({len(problems)}):")
        for p in problems[:max_problems]:
            lines.append(f"  [{p.split}] {p.file}: {p.message}")
        if len(problems) > max_problems:
            lines.append(f"  ... and {len(problems) - max_problems} more")
    else:
        lines.append("no problems found")
    return "\n".join(lines)
