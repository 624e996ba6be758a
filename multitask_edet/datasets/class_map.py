"""Merging a dataset's detection classes into fewer, from config (``{source class: target class}``).

Driving benchmarks often train detection on merged classes — HybridNets and YOLOP train one
"vehicle" class made of BDD100K's car, bus, truck and train. ``ClassMap`` does that for any
adapter whose boxes carry contiguous labels over a known list of source classes:

- a source class mapped to a name joins that target class; several may share one;
- a source class mapped to ``None`` is dropped (its boxes, ignore boxes included, vanish);
- a source class the mapping does not name is an error (``unmapped="error"``, the default),
  so a typo or a forgotten class is reported when the dataset is built, not discovered as a
  silently missing class after training; ``unmapped="drop"`` drops every unnamed class.

Target classes are ordered by the first source class (in source order) that maps to them,
so the result does not depend on the order of the mapping's keys.

Dropping a class makes its objects background for the detector. That is what HybridNets and
YOLOP do for pedestrians and the other non-vehicle classes of BDD100K.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from ..errors import ConfigError

UNMAPPED = ("error", "drop")

#: HybridNets' and YOLOP's single detection class on BDD100K (their configs combine car, bus,
#: truck and train; everything else is dropped)
BDD100K_VEHICLE = {"car": "vehicle", "bus": "vehicle", "truck": "vehicle", "train": "vehicle"}


@dataclasses.dataclass(frozen=True)
class ClassMap:
    source: tuple[str, ...]
    target: tuple[str, ...]
    #: source label → target label, -1 = dropped
    lut: tuple[int, ...]

    @classmethod
    def build(
        cls, source: Sequence[str], mapping: Mapping[str, str | None] | None, unmapped: str = "error"
    ) -> "ClassMap":
        """``mapping=None`` is the identity."""
        source = tuple(source)
        if unmapped not in UNMAPPED:
            raise ConfigError(f"unmapped={unmapped!r}; valid values: {', '.join(UNMAPPED)}")
        if mapping is None:
            return cls(source, source, tuple(range(len(source))))
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"class_map must be a mapping {{source class: target class or null}}, got {mapping!r}")
        unknown = sorted(set(mapping) - set(source))
        if unknown:
            raise ConfigError(f"class_map names unknown source class(es) {unknown}; source classes: {list(source)}")
        for k, v in mapping.items():
            if v is not None and (not isinstance(v, str) or not v):
                raise ConfigError(f"class_map[{k!r}] = {v!r}; a target must be a non-empty class name or null (drop)")
        missing = [s for s in source if s not in mapping]
        if missing and unmapped == "error":
            raise ConfigError(
                f"class_map does not say what becomes of {missing}; map each to a target class or to null "
                "(drop), or set unmapped='drop'"
            )
        target: list[str] = []
        for s in source:
            t = mapping.get(s)
            if t is not None and t not in target:
                target.append(t)
        if not target:
            raise ConfigError("class_map drops every class; keep at least one")
        lut = tuple(target.index(mapping[s]) if mapping.get(s) is not None else -1 for s in source)
        return cls(source, tuple(target), lut)

    @property
    def is_identity(self) -> bool:
        return self.target == self.source

    def apply(self, targets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Relabel {"boxes", "labels", "ignore"} (labels over ``source``); dropped classes vanish."""
        if self.is_identity:
            return targets
        new = np.asarray(self.lut, np.int64)[targets["labels"]] if len(targets["labels"]) else targets["labels"]
        keep = new >= 0
        return {
            "boxes": targets["boxes"][keep],
            "labels": new[keep].astype(np.int64),
            "ignore": targets["ignore"][keep],
        }
